//! `Idempotency-Key` on the routes that make something (SPEC §2): create, trigger, retry and
//! the bulk routes. The key and a fingerprint of the request travel in the command
//! (`Command::Idempotent`), so the first request's effect and what it got are written in one
//! log entry; a repeat through any node, after any leader change, is answered from that.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};

use crate::core::idempotency::{Fingerprint, Lookup, Recall};
use crate::core::{Command, CommandResult};
use crate::replicated::ReplicaState;

use super::{now_ms, ApiError, ApiState, Consistency};

/// The response header that marks an answer given again for a repeated request.
pub(super) const REPLAYED: &str = "idempotent-replayed";

/// A request's idempotency key and the fingerprint of what it asks.
#[derive(Debug, Clone)]
pub struct Key {
    key: String,
    fingerprint: Fingerprint,
}

impl Key {
    /// The request's `Idempotency-Key`, if any, checked (`400` when not 1–255 visible ASCII
    /// characters), with the fingerprint of `method route body` (a JSON body in a canonical
    /// form: keys sorted, no spaces).
    pub fn of(
        headers: &HeaderMap,
        method: &str,
        route: &str,
        body: &[u8],
    ) -> Result<Option<Key>, ApiError> {
        let Some(value) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| crate::core::validate::idempotency_key(k).is_ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "Idempotency-Key",
                    "an Idempotency-Key is 1 to 255 visible ASCII characters",
                )
            })?;
        let canonical = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| serde_json::to_vec(&v).ok());
        let mut h = Sha256::new();
        h.update(method.as_bytes());
        h.update(b" ");
        h.update(route.as_bytes());
        h.update(b"\n");
        h.update(canonical.as_deref().unwrap_or(body));
        Ok(Some(Key {
            key: key.to_owned(),
            fingerprint: h.finalize().into(),
        }))
    }

    /// `cmd` under this key.
    pub fn wrap(&self, cmd: Command) -> Command {
        Command::Idempotent {
            key: self.key.clone(),
            fingerprint: self.fingerprint,
            now_ms: now_ms(),
            command: Box::new(cmd),
        }
    }
}

/// What a proposal under a key came to: a result to answer as usual, or the answer to a
/// repeat.
pub enum Keyed {
    Result(Box<CommandResult>),
    Answer(Response),
}

/// Proposes `cmd`, under `key` if there is one, and answers a repeat from what the first
/// request got.
pub async fn propose(state: &ApiState, key: Option<&Key>, cmd: Command) -> Result<Keyed, ApiError> {
    let cmd = match key {
        Some(k) => k.wrap(cmd),
        None => cmd,
    };
    match state.propose(cmd).await? {
        CommandResult::Recalled { recall } => Ok(Keyed::Answer(replay(state, recall).await?)),
        CommandResult::KeyReused => Err(reused()),
        other => Ok(Keyed::Result(Box::new(other))),
    }
}

/// For a request made of many commands (a bulk request): its earlier answer under `key` (if it
/// has one), read after a barrier, if the same request came before.
pub async fn earlier(state: &ApiState, key: Option<&Key>) -> Result<Option<Response>, ApiError> {
    let Some(key) = key else {
        return Ok(None);
    };
    state.read_barrier(Consistency::Linearizable).await?;
    let lookup = state
        .replica
        .state()
        .idempotency(&key.key, &key.fingerprint, now_ms())?;
    match lookup {
        Lookup::Fresh => Ok(None),
        Lookup::Reused => Err(reused()),
        Lookup::Repeat(recall) => Ok(Some(replay(state, recall).await?)),
    }
}

/// Remembers `answer` (status 200) as what the request under `key` got, and returns what to
/// send: `answer`, or the first answer if a repeat finished before it.
pub async fn remember(
    state: &ApiState,
    key: &Key,
    answer: serde_json::Value,
) -> Result<Response, ApiError> {
    let cmd = Command::Remember {
        key: key.key.clone(),
        fingerprint: key.fingerprint,
        now_ms: now_ms(),
        status: 200,
        body: answer.to_string(),
    };
    match state.propose(cmd).await? {
        CommandResult::Recalled { recall } => replay(state, recall).await,
        CommandResult::KeyReused => Err(reused()),
        _ => Ok(Json(answer).into_response()),
    }
}

fn reused() -> ApiError {
    ApiError::new_invalid(
        "idempotency_key_reused",
        "Idempotency-Key",
        "this Idempotency-Key was used for another request in the last 24 hours",
    )
}

/// The answer to a repeat: the job or run the first request made, as they are now, or the
/// first request's refusal or whole answer; marked `Idempotent-Replayed: true`.
async fn replay(state: &ApiState, recall: Recall) -> Result<Response, ApiError> {
    let answer = match recall {
        Recall::Job { id, created } => {
            state.read_barrier(Consistency::Linearizable).await?;
            let Some(job) = state.replica.state().get_job(&id)? else {
                return Err(ApiError::not_found(format!(
                    "job {id:?}, made by the first request with this Idempotency-Key, is gone"
                )));
            };
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            super::jobs::job_response(status, job)
        }
        Recall::Run { id } => {
            state.read_barrier(Consistency::Linearizable).await?;
            let Some(run) = state.replica.state().get_run(&id)? else {
                return Err(ApiError::not_found(format!(
                    "run {id:?}, made by the first request with this Idempotency-Key, is gone"
                )));
            };
            super::runs::accepted_run(run)
        }
        Recall::NotRetryable { id, status } => return Err(super::runs::not_retryable(&id, status)),
        Recall::NotFound => return Err(ApiError::not_found("no such job or run")),
        Recall::Conflict => {
            return Err(ApiError::conflict(
                "a job with this id exists with another definition",
            ))
        }
        Recall::Rejected { field, message } => return Err(ApiError::invalid(&field, message)),
        Recall::Answer { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            (status, Json(body)).into_response()
        }
        Recall::Done => Json(serde_json::json!({})).into_response(),
    };
    let mut answer = answer;
    answer
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    Ok(answer)
}

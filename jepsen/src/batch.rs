//! Batches of jobs for the workload faults (black hole, overload): many creates, later many
//! deletes, by a few concurrent clients spread over the nodes. Every request is an operation of
//! the history like any other (so the checkers judge these jobs too), and each job is retried
//! until it has a definite answer or the deadline passes: a create whose outcome is unknown is
//! repeated with the same id and definition (a safe retry), a delete until it is acknowledged —
//! a batch job must not outlive its window. `429 overloaded` is a definite refusal (`fail`), as
//! `client::classify_write` says; it is retried after a short pause.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{classify_write, Api, Reply, OP_TIMEOUT};
use crate::history::{now_us, Recorder, Type};

/// Pause after a refusal (`429`, `503`, connection refused) before the same job is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Process ids of batch clients start here (the workload's, the readers', the nemesis's and the
/// final reads' are all far below); each batch gets its own block of `BLOCK`.
const PROCESS_BASE: u64 = 1_000_000;
const BLOCK: u64 = 100_000;
/// After an `info` a client continues under a new process id this far up.
const INFO_STEP: u64 = 1_000;

/// What a batch got back.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Jobs acknowledged (created, or deleted / already gone).
    pub done: Vec<String>,
    /// "429", "201", "info", "refused"… → count, over every request of the batch.
    pub statuses: BTreeMap<String, u64>,
}

/// Creates (`f` = "create": `POST /v1/jobs` with each body) or deletes (`f` = "delete") the
/// jobs with `clients` concurrent clients, round-robin over the nodes, until each has a definite
/// answer or `deadline_us`. `batch` numbers the batch (process ids).
pub async fn run(
    api: &Api,
    rec: &Recorder,
    batch: u64,
    f: &'static str,
    jobs: Vec<(String, Value)>,
    clients: usize,
    deadline_us: i64,
) -> Outcome {
    let nodes: Vec<u64> = api.order();
    let queue = Arc::new(Mutex::new(jobs));
    let out = Arc::new(Mutex::new(Outcome::default()));
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let (api, rec, queue, out, nodes) = (
            api.clone(),
            rec.clone(),
            queue.clone(),
            out.clone(),
            nodes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut process = PROCESS_BASE + batch * BLOCK + c as u64;
            let mut turn = c;
            loop {
                let Some((id, body)) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    return;
                };
                // Bounded by the deadline, and by a count far above what it allows.
                for _ in 0..10_000 {
                    if now_us() >= deadline_us {
                        break;
                    }
                    let node = nodes[turn % nodes.len().max(1)];
                    turn += 1;
                    let (method, path, req_body) = if f == "create" {
                        (Method::POST, "/v1/jobs".to_owned(), Some(body.clone()))
                    } else {
                        (Method::DELETE, format!("/v1/jobs/{id}"), None)
                    };
                    let p = rec.invoke(
                        process,
                        f,
                        Some(&id),
                        node,
                        req_body.clone().unwrap_or(Value::Null),
                    );
                    let reply = api
                        .call(node, method, &path, req_body.as_ref(), OP_TIMEOUT)
                        .await;
                    let typ = classify_write(&reply);
                    let (key, result) = match &reply {
                        Reply::Status(s, v) => {
                            let mut r = json!({"status": s});
                            if let Some(code) = v["error"]["code"].as_str() {
                                r["error"] = json!(code);
                            }
                            (s.to_string(), r)
                        }
                        Reply::Refused(e) => (
                            "refused".to_owned(),
                            json!({"error": format!("refused: {e}")}),
                        ),
                        Reply::Unknown(e) => (
                            "timeout".to_owned(),
                            json!({"error": format!("unknown: {e}")}),
                        ),
                    };
                    rec.complete(p, typ, result);
                    if let Ok(mut o) = out.lock() {
                        *o.statuses.entry(format!("{f} {key}")).or_default() += 1;
                    }
                    match (typ, reply.status()) {
                        (Type::Ok, _) => {
                            if let Ok(mut o) = out.lock() {
                                o.done.push(id.clone());
                            }
                            break;
                        }
                        // A definite refusal for a reason that a retry cannot change.
                        (Type::Fail, Some(s)) if s != 429 && s != 408 => break,
                        (Type::Info, s) => {
                            process += INFO_STEP;
                            if s.is_some() {
                                // A 5xx (no leader, say): the node answered at once.
                                tokio::time::sleep(RETRY_PAUSE).await;
                            }
                        }
                        _ => tokio::time::sleep(RETRY_PAUSE).await,
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let o = out.lock().map(|o| o.clone()).unwrap_or_default();
    o
}

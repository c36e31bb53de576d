//! The API of a node with several shards (SPEC §8): one router per shard (`api::router` over
//! that shard's `Replica`) behind this front, which sends each request where it belongs and
//! merges what several shards answer. Clients see one API, as with one shard:
//!
//! - a job's routes go to its shard (`shards::shard_of` of the id; a create without an id gets
//!   one here, so it is known before the request is routed);
//! - lists (`GET /v1/jobs`, `GET /v1/runs`, `GET /v1/targets`) ask every shard for the same
//!   page and merge the answers in order, up to the first place a shard that has more stopped
//!   at (`merge_page`), so a page never skips or repeats an item and costs each shard one page;
//! - bulk actions and the retry of failed runs act on every shard and add up the counts;
//! - a run's retry goes to the shard that has the run (its id does not name its job);
//! - the cluster-wide settings (notifications, target policies, the upgrade's finalize) are
//!   written to every shard: each shard's `apply` routes its own runs' events, and each shard's
//!   dispatcher enforces its share of a target's limits; they are read from shard 0;
//! - `/readyz` and `/healthz` answer for every shard; `GET /v1/stats` adds up the shards'
//!   leaders' series (the lateness percentiles are the highest of them).
//!
//! Everything else (the cluster view, which lists every shard, the console, the OpenAPI
//! document, metrics) is shard 0's. A node with one shard is its router alone.

use std::cmp::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

use super::ApiError;
use crate::core::query::RunCursor;
use crate::limits::REQUEST_BODY_BYTES_MAX;
use crate::replicated::Replica;
use crate::shards::shard_of;

struct Front {
    shards: Vec<Router>,
    replicas: Arc<Vec<Arc<Replica>>>,
}

/// The API of a node whose shards' routers are `shards` (shard `k` at index `k`) over the
/// shards' `replicas`.
pub fn router(mut shards: Vec<Router>, replicas: Arc<Vec<Arc<Replica>>>) -> Router {
    if shards.len() <= 1 {
        return shards.pop().unwrap_or_default();
    }
    Router::new()
        .fallback(route)
        .with_state(Arc::new(Front { shards, replicas }))
}

/// Where a request goes, by its method and path.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// Shard `k` alone.
    Shard(u32),
    /// A job create: to the shard of the id in its body (given one here if it has none).
    Create,
    /// A list merged across the shards, in the order of `Order`.
    List(Order),
    /// A bulk action on every shard; the answers' counts are added up.
    Bulk,
    /// A run of unknown shard: the first shard that does not answer `404`.
    FirstFound,
    /// A cluster-wide write: to every shard, shard 0's answer unless another one failed. Shard
    /// 0 first, so what it refuses goes nowhere else; or (`shard0_last`: a node's removal, which
    /// stops a node once shard 0 has applied it) last.
    Everywhere { shard0_last: bool },
    /// Every shard answers; `200` only when every one does (`/readyz`, `/healthz`).
    AllOk,
    /// Every shard leader's series added up.
    Stats,
    /// A backup of every shard in one file (`hookd_raft::archive`).
    Backup,
}

/// How a merged list is ordered, and what names an item's place in it.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Order {
    /// Jobs by id, ascending.
    Jobs,
    /// Runs by due instant and id, newest first (`after` is `due_ms:run_id`).
    Runs,
    /// Targets by `host:port`, ascending, the shards' entries for one target combined.
    Targets,
}

impl Order {
    fn items(self) -> &'static str {
        match self {
            Order::Jobs => "jobs",
            Order::Runs => "runs",
            Order::Targets => "targets",
        }
    }
}

/// The route of `method` `path` on a node of `count` shards.
fn route_of(method: &Method, path: &str, count: u32) -> Route {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let job = |id: &str| {
        let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
        Route::Shard(shard_of(&id, count))
    };
    match (method, parts.as_slice()) {
        (&Method::GET, ["v1", "jobs"]) => Route::List(Order::Jobs),
        (&Method::POST, ["v1", "jobs"]) => Route::Create,
        (&Method::POST, ["v1", "jobs", "bulk"]) => Route::Bulk,
        (_, ["v1", "jobs", id, ..]) => job(id),
        (&Method::GET, ["v1", "runs"]) => Route::List(Order::Runs),
        (&Method::POST, ["v1", "runs", "retry"]) => Route::Bulk,
        (_, ["v1", "runs", _, "retry"]) => Route::FirstFound,
        (&Method::GET, ["v1", "targets"]) => Route::List(Order::Targets),
        (&Method::PUT | &Method::DELETE, ["v1", "targets", _, "policy"]) => {
            Route::Everywhere { shard0_last: false }
        }
        (&Method::PUT | &Method::DELETE, ["v1", "notifications", _]) => {
            Route::Everywhere { shard0_last: false }
        }
        (&Method::POST, ["v1", "cluster", "upgrade", "finalize"]) => {
            Route::Everywhere { shard0_last: false }
        }
        (&Method::GET, ["v1", "stats"]) => Route::Stats,
        (&Method::POST, ["v1", "cluster", "members"]) => Route::Everywhere { shard0_last: false },
        (&Method::DELETE, ["v1", "cluster", "members", _]) => {
            Route::Everywhere { shard0_last: true }
        }
        (&Method::GET, ["v1", "snapshot"]) => Route::Backup,
        (&Method::GET, ["readyz"] | ["healthz"]) => Route::AllOk,
        _ => Route::Shard(0),
    }
}

async fn route(State(f): State<Arc<Front>>, req: Request) -> Response {
    let count = f.shards.len() as u32;
    let (parts, body) = req.into_parts();
    let route = route_of(&parts.method, parts.uri.path(), count);
    match route {
        Route::Shard(k) => return f.send(k, Request::from_parts(parts, body)).await,
        Route::Backup => {
            // Shard 0's router decides who may take a backup, as it would for its own.
            let mut probe = Request::from_parts(parts, body);
            probe.extensions_mut().insert(super::snapshot::AuthProbe);
            let allowed = f.send(0, probe).await;
            if !allowed.status().is_success() {
                return allowed;
            }
            return f.backup().await.unwrap_or_else(IntoResponse::into_response);
        }
        _ => {}
    }
    // Every other route may send the request more than once: its body is read first.
    let body = match axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(e) if is_too_large(&e) => {
            return ApiError::payload_too_large(REQUEST_BODY_BYTES_MAX).into_response()
        }
        Err(e) => {
            return ApiError::malformed(format!("the request body could not be read: {e}"))
                .into_response()
        }
    };
    let copy = |body: Bytes| {
        let mut r = Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .version(parts.version)
            .body(Body::from(body))
            .unwrap_or_default();
        *r.headers_mut() = parts.headers.clone();
        r.extensions_mut().clone_from(&parts.extensions);
        r
    };
    match route {
        Route::Shard(_) | Route::Backup => unreachable_shard(),
        Route::Create => {
            let key = parts.headers.get("idempotency-key").map(|v| v.as_bytes());
            let (shard, body) = with_job_id(body, count, key);
            let mut req = copy(body.clone());
            if let Ok(len) = HeaderValue::from_str(&body.len().to_string()) {
                req.headers_mut().insert(header::CONTENT_LENGTH, len);
            }
            f.send(shard, req).await
        }
        Route::List(order) => {
            let answers = f.each(|_| copy(body.clone())).await;
            let limit = limit_of(parts.uri.query());
            merged(answers, |pages| merge_page(order, pages, limit)).await
        }
        Route::Bulk => {
            let answers = f.each(|_| copy(body.clone())).await;
            merged(answers, |pages| Ok(add_counts(pages))).await
        }
        Route::Stats => {
            let answers = f.each(|_| copy(body.clone())).await;
            merged(answers, |pages| Ok(add_series(pages))).await
        }
        Route::FirstFound => {
            let mut last = None;
            for k in 0..count {
                let answer = f.send(k, copy(body.clone())).await;
                if answer.status() != StatusCode::NOT_FOUND {
                    return answer;
                }
                last = Some(answer);
            }
            last.unwrap_or_else(unreachable_shard)
        }
        Route::Everywhere { shard0_last } => {
            let order: Vec<u32> = if shard0_last {
                (0..count).rev().collect()
            } else {
                (0..count).collect()
            };
            let mut first = None;
            for k in order {
                // Each shard once it has a leader (one may be electing after a node was lost:
                // a membership change is sent to the leader it knows).
                if let Some(r) = f.replicas.get(k as usize) {
                    let _ = r.read_barrier().await;
                }
                let answer = f.send(k, copy(body.clone())).await;
                // What the first refuses (bad input, no token) goes nowhere else.
                if !answer.status().is_success() {
                    return answer;
                }
                if k == 0 {
                    first = Some(answer);
                }
            }
            first.unwrap_or_else(unreachable_shard)
        }
        Route::AllOk => {
            let answers = f.each(|_| copy(body.clone())).await;
            let mut first = None;
            for a in answers {
                if !a.status().is_success() {
                    return a;
                }
                first.get_or_insert(a);
            }
            first.unwrap_or_else(unreachable_shard)
        }
    }
}

impl Front {
    async fn send(&self, k: u32, req: Request) -> Response {
        match self.shards.get(k as usize) {
            Some(r) => r.clone().oneshot(req).await.into_response(),
            None => unreachable_shard(),
        }
    }

    /// A backup of every shard: after a barrier on each, each shard's backup (its own barrier
    /// and a snapshot covering it), archived into one owner-only temporary file that is
    /// streamed and gone once sent.
    async fn backup(&self) -> Result<Response, ApiError> {
        for r in self.replicas.iter() {
            r.read_barrier().await?;
        }
        let mut files = Vec::with_capacity(self.replicas.len());
        let mut index = 0;
        for (k, r) in self.replicas.iter().enumerate() {
            let (meta, file) = r.backup().await.map_err(super::snapshot::backup_error)?;
            if k == 0 {
                index = meta.last_log_id.map_or(0, |l| l.index);
            }
            files.push(file.into_std().await);
        }
        let tmp = tempfile::NamedTempFile::new()
            .map_err(|e| ApiError::unavailable(format!("no room for the backup: {e}")))?;
        let path = tmp.path().to_path_buf();
        tokio::task::spawn_blocking(move || hookd_raft::archive::write(files, &path))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(|e| ApiError::unavailable(format!("cannot write the backup: {e}")))?;
        let file = tmp
            .reopen()
            .map_err(|e| ApiError::unavailable(format!("cannot read the backup: {e}")))?;
        drop(tmp);
        Ok(super::snapshot::file_response(
            tokio::fs::File::from_std(file),
            index,
        ))
    }

    /// Sends `make(k)` to every shard at once; the answers in shard order.
    async fn each(&self, make: impl Fn(u32) -> Request) -> Vec<Response> {
        let all = (0..self.shards.len() as u32).map(|k| self.send(k, make(k)));
        futures::future::join_all(all).await
    }
}

/// Whether reading a body failed on its length limit.
fn is_too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn unreachable_shard() -> Response {
    ApiError::unavailable("no such shard on this node".to_string()).into_response()
}

/// The create's body with an id (one made here if it had none, as a lone shard would), and
/// the shard of that id. A body that is no JSON object goes to shard 0 as it is, which refuses
/// it as a lone node would. Under an `Idempotency-Key`, the id made is the key's own (a UUID
/// of its SHA-256), so a repeat reaches the shard that remembers the first request.
fn with_job_id(body: Bytes, count: u32, key: Option<&[u8]>) -> (u32, Bytes) {
    let Ok(Value::Object(mut job)) = serde_json::from_slice::<Value>(&body) else {
        return (0, body);
    };
    let id = match job.get("id") {
        Some(Value::String(id)) => id.clone(),
        Some(_) => return (0, body),
        None => {
            let id = match key {
                Some(key) => {
                    use sha2::Digest;
                    let sum = sha2::Sha256::new()
                        .chain_update(b"hookd job id of an idempotency key\0")
                        .chain_update(key)
                        .finalize();
                    let mut bytes = [0u8; 16];
                    bytes.copy_from_slice(&sum[..16]);
                    uuid::Builder::from_custom_bytes(bytes).into_uuid()
                }
                None => uuid::Uuid::now_v7(),
            }
            .to_string();
            job.insert("id".into(), Value::String(id.clone()));
            id
        }
    };
    let body = serde_json::to_vec(&job).map_or(body, Bytes::from);
    (shard_of(&id, count), body)
}

/// The `limit` of a list's query string, as the lists take it (default 100, at most 1,000).
fn limit_of(query: Option<&str>) -> usize {
    query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
        .and_then(|n| n.parse().ok())
        .map_or(crate::limits::LIST_LIMIT_DEFAULT, |n: usize| {
            n.clamp(1, crate::limits::LIST_LIMIT_MAX)
        })
}

/// The shards' answers, combined by `combine` when every one is a `200` with a JSON body;
/// otherwise the first that is not (every shard validates the same request alike).
async fn merged(
    answers: Vec<Response>,
    combine: impl FnOnce(Vec<Value>) -> Result<Value, String>,
) -> Response {
    let mut bodies = Vec::with_capacity(answers.len());
    let mut failed = None;
    for a in answers {
        if a.status() != StatusCode::OK && failed.is_none() {
            failed = Some(a);
        } else {
            bodies.push(a);
        }
    }
    if let Some(f) = failed {
        return f;
    }
    // Replays of a keyed request on every shard are one replay (`api::idempotency`).
    let replayed = !bodies.is_empty()
        && bodies
            .iter()
            .all(|b| b.headers().contains_key(super::idempotency::REPLAYED));
    // The answers are in memory already (the shards' routers built them).
    let mut pages = Vec::with_capacity(bodies.len());
    for b in bodies {
        let bytes = axum::body::to_bytes(b.into_body(), usize::MAX).await;
        pages.push(bytes.ok().and_then(|b| serde_json::from_slice(&b).ok()));
    }
    let Some(pages) = pages.into_iter().collect::<Option<Vec<Value>>>() else {
        return ApiError::unavailable("a shard answered no JSON".to_string()).into_response();
    };
    match combine(pages) {
        Ok(v) if replayed => (
            [(
                super::idempotency::REPLAYED,
                HeaderValue::from_static("true"),
            )],
            axum::Json(v),
        )
            .into_response(),
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => ApiError::unavailable(e).into_response(),
    }
}

/// An item's place in a merged list: comparing two gives their order in it.
fn key(order: Order, item: &Value) -> (i64, String) {
    match order {
        Order::Jobs => (0, item["id"].as_str().unwrap_or_default().to_owned()),
        Order::Targets => (0, item["target"].as_str().unwrap_or_default().to_owned()),
        Order::Runs => {
            let due = item["scheduled_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map_or(0, |t| t.timestamp_millis());
            (due, item["id"].as_str().unwrap_or_default().to_owned())
        }
    }
}

/// The place a `next` cursor names.
fn cursor_key(order: Order, next: &str) -> (i64, String) {
    match order {
        Order::Jobs | Order::Targets => (0, next.to_owned()),
        Order::Runs => {
            RunCursor::parse(next).map_or((0, next.to_owned()), |c| (c.due_ms, c.run_id))
        }
    }
}

fn cursor_text(order: Order, key: &(i64, String)) -> String {
    match order {
        Order::Jobs | Order::Targets => key.1.clone(),
        Order::Runs => RunCursor {
            due_ms: key.0,
            run_id: key.1.clone(),
        }
        .to_string(),
    }
}

/// Whether place `a` comes before `b` in `order`'s lists.
fn before(order: Order, a: &(i64, String), b: &(i64, String)) -> Ordering {
    match order {
        Order::Jobs | Order::Targets => a.1.cmp(&b.1),
        // Newest first.
        Order::Runs => b.cmp(a),
    }
}

/// One page of `limit` items out of the shards' pages for the same request: every item up to
/// the first place a shard that has more stopped at (its `next`; items past it may have
/// company from that shard on the next page), in order, at most `limit`; `next` is the place
/// of the last item given when anything is left.
fn merge_page(order: Order, pages: Vec<Value>, limit: usize) -> Result<Value, String> {
    let field = order.items();
    let mut bound: Option<(i64, String)> = None;
    let mut items: Vec<Value> = Vec::new();
    for mut page in pages {
        if let Some(next) = page["next"].as_str() {
            let k = cursor_key(order, next);
            if bound
                .as_ref()
                .is_none_or(|b| before(order, &k, b) == Ordering::Less)
            {
                bound = Some(k);
            }
        }
        match page.get_mut(field).map(Value::take) {
            Some(Value::Array(a)) => items.extend(a),
            _ => return Err(format!("a shard's page has no {field}")),
        }
    }
    if order == Order::Targets {
        items = combine_targets(items);
    }
    items.sort_by(|a, b| before(order, &key(order, a), &key(order, b)));
    if let Some(b) = &bound {
        items.retain(|i| before(order, &key(order, i), b) != Ordering::Greater);
    }
    let more = bound.is_some() || items.len() > limit;
    items.truncate(limit);
    let next = match items.last() {
        Some(last) if more => Value::String(cursor_text(order, &key(order, last))),
        _ => Value::Null,
    };
    Ok(json!({ field: items, "next": next }))
}

/// The shards' entries for each target as one: attempts in flight and waiting added up, the
/// worst circuit (open, then half open), the latest open-until, the most failures in a row,
/// a last error if any shard has one.
fn combine_targets(items: Vec<Value>) -> Vec<Value> {
    let mut by: std::collections::BTreeMap<String, Value> = Default::default();
    let rank = |c: &Value| match c.as_str() {
        Some("open") => 2,
        Some("half_open") => 1,
        _ => 0,
    };
    for t in items {
        let name = t["target"].as_str().unwrap_or_default().to_owned();
        let Some(have) = by.get_mut(&name) else {
            by.insert(name, t);
            continue;
        };
        for n in ["in_flight", "waiting"] {
            let sum = have[n].as_u64().unwrap_or(0) + t[n].as_u64().unwrap_or(0);
            have[n] = json!(sum);
        }
        if rank(&t["circuit"]) > rank(&have["circuit"]) {
            have["circuit"] = t["circuit"].clone();
        }
        if t["open_until"].as_str() > have["open_until"].as_str() {
            have["open_until"] = t["open_until"].clone();
        }
        let failures = have["consecutive_failures"]
            .as_u64()
            .max(t["consecutive_failures"].as_u64());
        have["consecutive_failures"] = json!(failures.unwrap_or(0));
        if have["last_error"].is_null() {
            have["last_error"] = t["last_error"].clone();
        }
        if have["policy"].is_null() {
            have["policy"] = t["policy"].clone();
        }
    }
    by.into_values().collect()
}

/// A bulk answer of every shard: the counts added up, `sample` the first 100 ids in order.
fn add_counts(pages: Vec<Value>) -> Value {
    let mut out = Map::new();
    let mut sample: Option<Vec<Value>> = None;
    for page in pages {
        let Value::Object(page) = page else { continue };
        for (k, v) in page {
            match (k.as_str(), v) {
                ("sample", Value::Array(ids)) => sample.get_or_insert_default().extend(ids),
                (_, Value::Number(n)) => {
                    let sum =
                        out.get(&k).and_then(Value::as_u64).unwrap_or(0) + n.as_u64().unwrap_or(0);
                    out.insert(k, json!(sum));
                }
                (_, v) => {
                    out.entry(k).or_insert(v);
                }
            }
        }
    }
    if let Some(mut sample) = sample {
        sample.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        sample.truncate(super::bulk::SAMPLE_MAX);
        out.insert("sample".into(), Value::Array(sample));
    }
    Value::Object(out)
}

/// The shards' leaders' per-second series as one: the counts added up, the lateness
/// percentiles the highest of any shard's that second. Each shard's window is placed by its
/// own `from` (its leader's clock), onto shard 0's.
fn add_series(pages: Vec<Value>) -> Value {
    let mut pages = pages.into_iter();
    let Some(mut out) = pages.next() else {
        return Value::Null;
    };
    let secs = |p: &Value| {
        p["from"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp())
    };
    let from = secs(&out);
    for page in pages {
        let shift = secs(&page) - from;
        let Some(series) = page["series"].as_object() else {
            continue;
        };
        for (name, values) in series {
            let Some(values) = values.as_array() else {
                continue;
            };
            let Some(into) = out["series"][name].as_array_mut() else {
                continue;
            };
            let highest = name.starts_with("lateness");
            for (i, v) in values.iter().enumerate() {
                let Some(slot) = usize::try_from(i as i64 + shift)
                    .ok()
                    .and_then(|at| into.get_mut(at))
                else {
                    continue;
                };
                *slot = match (slot.as_u64(), v.as_u64()) {
                    (a, None) => a.map_or(Value::Null, |a| json!(a)),
                    (None, Some(b)) => json!(b),
                    (Some(a), Some(b)) if highest => json!(a.max(b)),
                    (Some(a), Some(b)) => json!(a + b),
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_to_the_jobs_shard_or_every_shard_by_their_route() {
        let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
        let job = |id: &str| Route::Shard(shard_of(id, 6));
        let cases = [
            ("GET", "/v1/jobs", Route::List(Order::Jobs)),
            ("POST", "/v1/jobs", Route::Create),
            ("POST", "/v1/jobs/bulk", Route::Bulk),
            ("GET", "/v1/jobs/invoice-42", job("invoice-42")),
            ("PATCH", "/v1/jobs/invoice-42", job("invoice-42")),
            ("POST", "/v1/jobs/invoice-42/pause", job("invoice-42")),
            ("GET", "/v1/jobs/a%3Ab/runs", job("a:b")),
            ("GET", "/v1/runs", Route::List(Order::Runs)),
            ("POST", "/v1/runs/retry", Route::Bulk),
            ("POST", "/v1/runs/run_1_2/retry", Route::FirstFound),
            ("GET", "/v1/targets", Route::List(Order::Targets)),
            (
                "PUT",
                "/v1/targets/a.test:443/policy",
                Route::Everywhere { shard0_last: false },
            ),
            (
                "PUT",
                "/v1/notifications/n1",
                Route::Everywhere { shard0_last: false },
            ),
            (
                "DELETE",
                "/v1/notifications/n1",
                Route::Everywhere { shard0_last: false },
            ),
            ("GET", "/v1/notifications/n1", Route::Shard(0)),
            (
                "POST",
                "/v1/cluster/upgrade/finalize",
                Route::Everywhere { shard0_last: false },
            ),
            ("GET", "/v1/cluster", Route::Shard(0)),
            (
                "POST",
                "/v1/cluster/members",
                Route::Everywhere { shard0_last: false },
            ),
            ("GET", "/v1/snapshot", Route::Backup),
            (
                "DELETE",
                "/v1/cluster/members/4",
                Route::Everywhere { shard0_last: true },
            ),
            ("GET", "/v1/stats", Route::Stats),
            ("GET", "/readyz", Route::AllOk),
            ("GET", "/ui/app.js", Route::Shard(0)),
        ];
        for (method, path, want) in cases {
            assert_eq!(route_of(&m(method), path, 6), want, "{method} {path}");
        }
    }

    #[test]
    fn a_create_without_an_id_gets_one_and_goes_to_its_shard() {
        let anon = || Bytes::from_static(br#"{"url": "http://a.test/"}"#);
        let id_of = |body: &Bytes| {
            let v: Value = serde_json::from_slice(body).unwrap();
            v["id"].as_str().expect("an id").to_owned()
        };
        let (k, body) = with_job_id(anon(), 6, None);
        assert_eq!(k, shard_of(&id_of(&body), 6));
        let (_, again) = with_job_id(anon(), 6, None);
        assert_ne!(id_of(&body), id_of(&again), "a new id each time");
        // Under a key, the same id for every repeat, and another for another key.
        let keyed = |key: &[u8]| id_of(&with_job_id(anon(), 6, Some(key)).1);
        assert_eq!(keyed(b"k-1"), keyed(b"k-1"));
        assert_ne!(keyed(b"k-1"), keyed(b"k-2"));
        assert!(uuid::Uuid::parse_str(&keyed(b"k-1")).is_ok());
        let (k, body) = with_job_id(Bytes::from_static(br#"{"id": "x-1"}"#), 6, Some(b"k"));
        assert_eq!(k, shard_of("x-1", 6));
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["id"], "x-1");
        let (k, body) = with_job_id(Bytes::from_static(b"not json"), 6, None);
        assert_eq!(
            (k, &body[..]),
            (0, &b"not json"[..]),
            "refused by shard 0 as it is"
        );
    }

    fn jobs(ids: &[&str], next: Option<&str>) -> Value {
        json!({"jobs": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(), "next": next})
    }

    fn ids(v: &Value, field: &str) -> Vec<String> {
        v[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn merged_pages_stop_where_a_shard_with_more_stopped_and_never_skip_or_repeat() {
        // Shard 0 has more after "c"; shard 1 is done: "d" and "e" of shard 1 wait for the
        // next page, which starts after "c".
        let page = merge_page(
            Order::Jobs,
            vec![jobs(&["a", "c"], Some("c")), jobs(&["b", "d", "e"], None)],
            10,
        )
        .unwrap();
        assert_eq!(ids(&page, "jobs"), ["a", "b", "c"]);
        assert_eq!(page["next"], "c");
        // The limit cuts, and the next page starts after the last given.
        let page = merge_page(
            Order::Jobs,
            vec![jobs(&["a", "c"], None), jobs(&["b", "d"], None)],
            3,
        )
        .unwrap();
        assert_eq!(ids(&page, "jobs"), ["a", "b", "c"]);
        assert_eq!(page["next"], "c");
        // Nothing left anywhere: no next.
        let page = merge_page(Order::Jobs, vec![jobs(&["a"], None), jobs(&[], None)], 3).unwrap();
        assert_eq!(page["next"], Value::Null);
        // A shard that scanned past what it ruled out stops there, with nothing to show.
        let page = merge_page(
            Order::Jobs,
            vec![jobs(&[], Some("m")), jobs(&["b", "x"], None)],
            10,
        )
        .unwrap();
        assert_eq!(ids(&page, "jobs"), ["b"]);
        assert_eq!(page["next"], "b");

        // Runs: newest first; the cursor is `due_ms:id`.
        let run = |due: &str, id: &str| json!({"id": id, "scheduled_at": due});
        let a = json!({"runs": [run("2026-12-07T10:00:03Z", "r3"), run("2026-12-07T10:00:01Z", "r1")],
                       "next": "1796637601000:r1"});
        let b = json!({"runs": [run("2026-12-07T10:00:02Z", "r2"), run("2026-12-07T10:00:00Z", "r0")],
                       "next": null});
        let page = merge_page(Order::Runs, vec![a, b], 10).unwrap();
        assert_eq!(ids(&page, "runs"), ["r3", "r2", "r1"]);
        assert_eq!(page["next"], "1796637601000:r1");
    }

    #[test]
    fn a_targets_entries_from_every_shard_are_one() {
        let t = |in_flight: u64, circuit: &str| {
            json!({"target": "a.test:443", "in_flight": in_flight, "waiting": 1, "circuit": circuit,
                   "open_until": null, "consecutive_failures": 2, "last_error": null, "policy": null})
        };
        let page = merge_page(
            Order::Targets,
            vec![
                json!({"targets": [t(2, "closed")], "next": null}),
                json!({"targets": [t(3, "open")], "next": null}),
            ],
            10,
        )
        .unwrap();
        let one = &page["targets"][0];
        assert_eq!(page["targets"].as_array().unwrap().len(), 1);
        assert_eq!(
            (one["in_flight"].as_u64(), one["waiting"].as_u64()),
            (Some(5), Some(2))
        );
        assert_eq!(one["circuit"], "open");
    }

    #[test]
    fn bulk_counts_add_up_and_the_sample_is_the_first_ids_in_order() {
        let v = add_counts(vec![
            json!({"matched": 2, "changed": 1, "sample": ["b", "d"], "dry_run": false}),
            json!({"matched": 1, "changed": 1, "sample": ["a"], "dry_run": false}),
        ]);
        assert_eq!(
            v,
            json!({"matched": 3, "changed": 2, "sample": ["a", "b", "d"], "dry_run": false})
        );
        let v = add_counts(vec![
            json!({"matched": 2, "retried": 0, "dry_run": true}),
            json!({"matched": 5, "retried": 0, "dry_run": true}),
        ]);
        assert_eq!(v, json!({"matched": 7, "retried": 0, "dry_run": true}));
    }

    #[test]
    fn the_shards_series_add_up_second_by_second_and_lateness_takes_the_highest() {
        let s = |from: &str, due: Vec<u64>, p99: Vec<Option<u64>>| json!({"from": from, "step_s": 1, "series": {"due": due, "lateness_p99_ms": p99}});
        let v = add_series(vec![
            s(
                "2026-12-07T10:00:00Z",
                vec![1, 2, 3],
                vec![Some(4), None, Some(1)],
            ),
            s(
                "2026-12-07T10:00:01Z",
                vec![10, 20, 30],
                vec![Some(9), Some(2), None],
            ),
        ]);
        assert_eq!(v["series"]["due"], json!([1, 12, 23]));
        assert_eq!(v["series"]["lateness_p99_ms"], json!([4, 9, 2]));
    }
}

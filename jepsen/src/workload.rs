//! The workload: a few concurrent logical clients, each single-threaded, some pinned to one node
//! and some picking any node, issuing creates (one-shot `at` jobs 2–20 s ahead, `every` jobs of
//! 1–5 s, cron jobs with a seconds step), reads, lists, pauses, resumes and deletes until a
//! deadline. Job ids are client-generated and never reused, so a retried create is harmless and
//! every delivery is attributable. After an `info` a client continues under a new process id.
//!
//! Beside them, one more client creates the *overlap jobs* (`overlap_job_body`): every
//! `overlap_every` a job firing every 1 s with `overlap: skip`, `overlap_fires` fires long, whose
//! runs the sink holds open for up to ~3 s (`sink::overlap_answer`), so later runs fall due while
//! one is open. They are never paused or deleted; the `overlap` checker reads all their runs.
//! They carry callbacks too (`on_success`, `on_failure`: `Sink::event_url`, under `/events/`,
//! which the sink records apart from run deliveries); the `events` checker matches the events
//! delivered against those runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::{classify_read, classify_write, Api, Reply, OP_TIMEOUT};
use crate::history::{now_us, rfc3339_us, Recorder, Type};
use crate::sink::{Sink, ON_FAILURE, ON_SUCCESS};

/// Knobs of the workload.
#[derive(Debug, Clone)]
pub struct Config {
    pub clients: usize,
    /// Extra read-only clients, one pinned to each node, reading mostly the newest jobs: stale
    /// reads show up as soon as a node serves its local state (a follower right after a write,
    /// an isolated node) rather than only when a writer happens to read.
    pub readers: usize,
    /// Creates stop (and deletes take their turn) above this many jobs believed alive.
    pub live_max: usize,
    pub think_ms: (u64, u64),
    pub seed: u64,
    /// Prefix of job ids (unique per run).
    pub tag: String,
    /// A new overlap job this often (None: none).
    pub overlap_every: Option<Duration>,
    /// Fires of each overlap job (1 s apart; kept below hookd's default run retention of 100, so
    /// every run of the job is still listed at the end).
    pub overlap_fires: u32,
}

/// The infix of overlap jobs' ids: `{tag}-ovl-{n}`.
pub const OVERLAP_INFIX: &str = "-ovl-";

/// Process ids of the overlap jobs' creates (above every other client's).
const OVERLAP_PROCESS: u64 = 1_000_000;

#[derive(Default)]
struct Pool {
    ids: Vec<String>,
    live: usize,
    seq: u64,
}

/// A job's request body, as the workload creates them. `now` in µs.
pub fn job_body(rng: &mut StdRng, id: &str, url: &str, now: i64) -> Value {
    let kind = rng.random_range(0..100);
    let schedule = if kind < 30 {
        let at = now + rng.random_range(2_000..20_000) * 1000;
        json!({"at": rfc3339_us(at - at % 1000)})
    } else if kind < 75 {
        let period = rng.random_range(1..=5);
        let start = (now / 1_000_000 + 3) * 1_000_000;
        json!({"every": format!("{period}s"), "start_at": rfc3339_us(start)})
    } else {
        let step = [2, 3, 4, 5, 6].choose(rng).copied().unwrap_or(3);
        json!({"cron": format!("*/{step} * * * * *")})
    };
    let mut body = json!({
        "id": id,
        "url": url,
        "method": "POST",
        "body": "{}",
        "schedule": schedule,
        // Short timeout and backoff: the sink's faults hit attempts 1-2 only, so every run
        // succeeds within seconds.
        "timeout": "2s",
        "retry": {"max_attempts": 5, "initial_backoff": "500ms", "max_backoff": "2s"},
    });
    // Half the jobs carry labels, so creates in both log formats (with and without the fields
    // format 4 added) meet every fault.
    if kind % 2 == 0 {
        body["labels"] = json!({"workload": "chaos", "kind": schedule_kind(&body["schedule"])});
    }
    body
}

/// An overlap job's request body: every 1 s from the second after next, `fires` fires (its
/// `end_at` half a second after the last), `overlap: skip`, answered by the sink's overlap rule;
/// 5 attempts as the workload's jobs, but backoff 1-2 s, so a run the sink fails twice stays
/// open ~3 s. Each finished run calls back: `on_success` / `on_failure` (the sink's event URLs).
pub fn overlap_job_body(
    id: &str,
    url: &str,
    on_success: &str,
    on_failure: &str,
    now: i64,
    fires: u32,
) -> Value {
    let start = (now / 1_000_000 + 2) * 1_000_000;
    let end = start + (i64::from(fires.max(1)) - 1) * 1_000_000 + 500_000;
    json!({
        "id": id,
        "url": url,
        "method": "POST",
        "body": "{}",
        "schedule": {"every": "1s", "start_at": rfc3339_us(start), "end_at": rfc3339_us(end)},
        "overlap": "skip",
        "timeout": "2s",
        "retry": {"max_attempts": 5, "initial_backoff": "1s", "max_backoff": "2s"},
        "labels": {"workload": "chaos", "kind": "overlap"},
        "on_success": {"url": on_success},
        "on_failure": {"url": on_failure},
    })
}

/// Creates an overlap job every `every` until `deadline_us` (each create retried, with the same
/// body, until acknowledged or refused for good, at most 10 times).
async fn overlap_client(
    cfg: Config,
    every: Duration,
    api: Api,
    sink: Sink,
    rec: Recorder,
    deadline_us: i64,
) {
    let mut process = OVERLAP_PROCESS;
    for n in 0..10_000u64 {
        if now_us() >= deadline_us - 5_000_000 {
            break;
        }
        let next = tokio::time::Instant::now() + every;
        let id = format!("{}{OVERLAP_INFIX}{n}", cfg.tag);
        let body = overlap_job_body(
            &id,
            &sink.overlap_url(&id),
            &sink.event_url(&id, ON_SUCCESS),
            &sink.event_url(&id, ON_FAILURE),
            now_us(),
            cfg.overlap_fires,
        );
        for attempt in 0..10u64 {
            let order = api.order();
            let node = order
                .get((n + attempt) as usize % order.len().max(1))
                .copied()
                .unwrap_or(1);
            let path = "/v1/jobs".to_owned();
            let typ = write(
                &api,
                &rec,
                process,
                node,
                "create",
                &id,
                Method::POST,
                path,
                Some(body.clone()),
            )
            .await;
            if typ == Type::Info {
                process += 1;
            }
            if typ == Type::Ok || now_us() >= deadline_us {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// `at`, `every` or `cron`: which kind a schedule is.
fn schedule_kind(schedule: &Value) -> &'static str {
    ["at", "every", "cron"]
        .into_iter()
        .find(|k| schedule.get(*k).is_some())
        .unwrap_or("other")
}

/// Runs the clients until `deadline_us`; returns when all stopped.
pub async fn run(
    cfg: Config,
    api: Api,
    sink: Sink,
    rec: Recorder,
    deadline_us: i64,
) -> anyhow::Result<()> {
    let pool = Arc::new(Mutex::new(Pool::default()));
    let mut tasks = Vec::new();
    for c in 0..cfg.clients {
        let (cfg, api, sink, rec, pool) = (
            cfg.clone(),
            api.clone(),
            sink.clone(),
            rec.clone(),
            pool.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client(c, cfg, api, sink, rec, pool, deadline_us).await
        }));
    }
    if let Some(every) = cfg.overlap_every {
        let (cfg, api, sink, rec) = (cfg.clone(), api.clone(), sink.clone(), rec.clone());
        tasks.push(tokio::spawn(async move {
            overlap_client(cfg, every, api, sink, rec, deadline_us).await
        }));
    }
    for r in 0..cfg.readers {
        let (cfg, api, rec, pool) = (cfg.clone(), api.clone(), rec.clone(), pool.clone());
        tasks.push(tokio::spawn(async move {
            reader(r, cfg, api, rec, pool, deadline_us).await
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

async fn reader(
    r: usize,
    cfg: Config,
    api: Api,
    rec: Recorder,
    pool: Arc<Mutex<Pool>>,
    deadline_us: i64,
) {
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(57).wrapping_add(1000 + r as u64));
    // Reader `r` reads from the member at position `r` (looked up per read: a replacement
    // takes its predecessor's place).
    let members = api.order().len().max(1);
    // Process ids of readers sit above every writer's.
    let mut process = 1_000 + r as u64;
    for _ in 0..1_000_000 {
        if now_us() >= deadline_us {
            break;
        }
        let ids = match pool.lock() {
            Ok(p) => p.ids.clone(),
            Err(_) => break,
        };
        let newest = ids.len().saturating_sub(8);
        let target = if rng.random_bool(0.7) {
            ids[newest..].choose(&mut rng).cloned()
        } else {
            ids.choose(&mut rng).cloned()
        };
        let typ = match (target, api.at(r % members)) {
            (Some(t), Some(node)) => read(&api, &rec, process, node, &t).await,
            _ => Type::Ok,
        };
        if typ == Type::Info {
            process += 100;
        }
        let think = rng.random_range(20..=60);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}

async fn client(
    c: usize,
    cfg: Config,
    api: Api,
    sink: Sink,
    rec: Recorder,
    pool: Arc<Mutex<Pool>>,
    deadline_us: i64,
) {
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(c as u64));
    // The first clients are pinned to the member at their position (looked up per op: a
    // replacement takes its predecessor's place); the others pick one at random each time.
    let pinned = c < api.order().len();
    let mut process = c as u64;
    // Bounded by the deadline and by a count far above what the deadline allows.
    for _ in 0..1_000_000 {
        if now_us() >= deadline_us {
            break;
        }
        let node = if pinned {
            api.at(c).unwrap_or(1)
        } else {
            *api.order().choose(&mut rng).unwrap_or(&1)
        };
        let (ids, live, seq) = match pool.lock() {
            Ok(p) => (p.ids.clone(), p.live, p.seq),
            Err(_) => break,
        };
        let pick = rng.random_range(0..100);
        let target = ids.choose(&mut rng).cloned();
        let typ = if pick < 35 || target.is_none() {
            if live >= cfg.live_max {
                match target {
                    Some(t) => delete(&api, &rec, process, node, &t, &pool).await,
                    None => Type::Ok,
                }
            } else {
                let id = format!("{}-c{c}-{seq}", cfg.tag);
                if let Ok(mut p) = pool.lock() {
                    p.seq += 1;
                    p.ids.push(id.clone());
                    p.live += 1;
                }
                let body = job_body(&mut rng, &id, &sink.url(&id), now_us());
                write(
                    &api,
                    &rec,
                    process,
                    node,
                    "create",
                    &id,
                    Method::POST,
                    "/v1/jobs".into(),
                    Some(body),
                )
                .await
            }
        } else if let Some(t) = target {
            match pick {
                35..=59 => read(&api, &rec, process, node, &t).await,
                60..=64 => list(&api, &rec, process, node, &ids, &mut rng).await,
                65..=74 => {
                    write(
                        &api,
                        &rec,
                        process,
                        node,
                        "pause",
                        &t,
                        Method::POST,
                        format!("/v1/jobs/{t}/pause"),
                        None,
                    )
                    .await
                }
                75..=84 => {
                    write(
                        &api,
                        &rec,
                        process,
                        node,
                        "resume",
                        &t,
                        Method::POST,
                        format!("/v1/jobs/{t}/resume"),
                        None,
                    )
                    .await
                }
                _ => delete(&api, &rec, process, node, &t, &pool).await,
            }
        } else {
            Type::Ok
        };
        if typ == Type::Info {
            process += cfg.clients as u64;
        }
        let think = rng.random_range(cfg.think_ms.0..=cfg.think_ms.1);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}

/// The parts of a job the checkers need.
fn job_summary(v: &Value) -> Value {
    json!({"paused": v["paused"].as_bool().unwrap_or(v["state"] == "paused"), "state": v["state"]})
}

fn result_of(reply: &Reply) -> Value {
    match reply {
        Reply::Status(s, v) => {
            let mut r = json!({"status": s});
            if (200..300).contains(s) && v.is_object() && v.get("id").is_some() {
                r["job"] = job_summary(v);
            } else if let Some(code) = v["error"]["code"].as_str() {
                r["error"] = json!(code);
            }
            r
        }
        Reply::Refused(e) => json!({"error": format!("refused: {e}")}),
        Reply::Unknown(e) => json!({"error": format!("unknown: {e}")}),
    }
}

#[allow(clippy::too_many_arguments)]
async fn write(
    api: &Api,
    rec: &Recorder,
    process: u64,
    node: u64,
    f: &str,
    job: &str,
    method: Method,
    path: String,
    body: Option<Value>,
) -> Type {
    let p = rec.invoke(
        process,
        f,
        Some(job),
        node,
        body.clone().unwrap_or(Value::Null),
    );
    let reply = api
        .call(node, method, &path, body.as_ref(), OP_TIMEOUT)
        .await;
    let typ = classify_write(&reply);
    rec.complete(p, typ, result_of(&reply));
    typ
}

async fn delete(
    api: &Api,
    rec: &Recorder,
    process: u64,
    node: u64,
    job: &str,
    pool: &Mutex<Pool>,
) -> Type {
    let typ = write(
        api,
        rec,
        process,
        node,
        "delete",
        job,
        Method::DELETE,
        format!("/v1/jobs/{job}"),
        None,
    )
    .await;
    if typ != Type::Fail {
        if let Ok(mut p) = pool.lock() {
            let before = p.ids.len();
            p.ids.retain(|i| i != job);
            if p.ids.len() < before {
                p.live = p.live.saturating_sub(1);
            }
        }
    }
    typ
}

async fn read(api: &Api, rec: &Recorder, process: u64, node: u64, job: &str) -> Type {
    let p = rec.invoke(process, "get", Some(job), node, Value::Null);
    let reply = api
        .call(
            node,
            Method::GET,
            &format!("/v1/jobs/{job}"),
            None,
            OP_TIMEOUT,
        )
        .await;
    let typ = classify_read(&reply);
    rec.complete(p, typ, result_of(&reply));
    typ
}

/// One page of `GET /v1/jobs`, starting after a random known id (or at the start).
async fn list(
    api: &Api,
    rec: &Recorder,
    process: u64,
    node: u64,
    ids: &[String],
    rng: &mut StdRng,
) -> Type {
    let after = if rng.random_bool(0.3) {
        None
    } else {
        ids.choose(rng).cloned()
    };
    let limit = 50;
    list_page(api, rec, process, node, after.as_deref(), limit, "")
        .await
        .0
}

/// Reads one list page and records it as a `list` op with the range it covers. Returns the
/// outcome and the `next` cursor.
pub async fn list_page(
    api: &Api,
    rec: &Recorder,
    process: u64,
    node: u64,
    after: Option<&str>,
    limit: usize,
    query_extra: &str,
) -> (Type, Option<String>, Vec<(String, bool)>) {
    let value = json!({"after": after, "limit": limit, "extra": query_extra});
    let p = rec.invoke(process, "list", None, node, value);
    let mut path = format!("/v1/jobs?limit={limit}{query_extra}");
    if let Some(a) = after {
        path.push_str(&format!("&after={a}"));
    }
    let reply = api.call(node, Method::GET, &path, None, OP_TIMEOUT).await;
    let typ = classify_read(&reply);
    let mut jobs = Vec::new();
    let mut next = None;
    let result = match &reply {
        Reply::Status(200, v) => {
            for j in v["jobs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(id) = j["id"].as_str() {
                    let paused = j["paused"].as_bool().unwrap_or(j["state"] == "paused");
                    jobs.push((id.to_owned(), paused));
                }
            }
            next = v["next"].as_str().map(str::to_owned);
            json!({"status": 200, "next": next, "jobs": jobs})
        }
        other => result_of(other),
    };
    rec.complete(p, typ, result);
    (typ, next, jobs)
}

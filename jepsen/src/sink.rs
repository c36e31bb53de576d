//! The webhook sink: the ground truth of what was delivered. A small HTTP/1.1 server (written
//! directly on tokio rather than axum, because one of its faults is closing the connection after
//! reading a request without answering, which a framework does not let a handler do) that appends
//! one JSONL line per request to `deliveries.jsonl` *before* it answers.
//!
//! Faults (set by the nemesis): answer 5xx, delay the answer past the job's timeout, or drop the
//! connection after reading — each for a fraction of requests, and only for attempts 1 and 2, so
//! that every run still succeeds by its third attempt and a miss is hookd's, not the sink's.
//!
//! Jobs made to overlap (`Sink::overlap_url`, the `overlap` checker's jobs) are answered by a rule
//! of their own, fixed per run by its webhook id (`overlap_answer`): at once, 503 to attempt 1,
//! 503 to attempts 1 and 2, or 200 after `OVERLAP_SLOW_MS` — so a run stays open for a moment
//! to ~3 s and later runs of the job fall due meanwhile. Attempts 3 and later are answered 200
//! at once, so these runs too succeed by their third attempt.
//!
//! Event deliveries (hookd's callbacks: the overlap jobs' `on_success` / `on_failure` URLs,
//! `Sink::event_url`, under `/events/`) are kept apart from run deliveries: they are recorded
//! in `events.jsonl` and `Sink::events` (never in `deliveries.jsonl`, so the delivery,
//! duplicates, overlap and isolation checkers never see them), with the parts of their JSON body
//! the `events` checker reads. They are answered by a rule of their own (`event_answer`): 200,
//! except a 503 to attempt 1 of one event in eight (by its event id), to exercise event
//! retries; the nemesis's sink faults do not apply to them. At most `EVENTS_MAX` are kept (the
//! rest are only counted, `Sink::events_dropped`), each field clipped to `EVENT_FIELD_MAX`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::history::{now_us, parse_rfc3339_us};

/// Requests the sink fails on purpose only up to this attempt.
pub const FAULTY_ATTEMPTS_MAX: u32 = 2;
/// The query a job's URL carries to be answered by the overlap rule (`overlap_answer`).
pub const OVERLAP_QUERY: &str = "answer=overlap";
/// How long the overlap rule holds a slow answer: past the next due instant of a job every 1 s,
/// within the 2 s job timeout.
pub const OVERLAP_SLOW_MS: u64 = 1200;
/// Path prefix of the callback URLs (`Sink::event_url`): requests under it are event
/// deliveries, not run deliveries.
pub const EVENTS_PATH: &str = "/events/";
/// The `?on=` of the `on_success` and `on_failure` URLs.
pub const ON_SUCCESS: &str = "success";
pub const ON_FAILURE: &str = "failure";
/// Event deliveries kept (memory and `events.jsonl`); more are only counted. A smoke sees a few
/// hundred, a 30 min soak a few thousand.
pub const EVENTS_MAX: usize = 50_000;
/// Each recorded string of an event delivery is clipped to this many bytes.
pub const EVENT_FIELD_MAX: usize = 200;
const HEADERS_BYTES_MAX: usize = 64 * 1024;
const BODY_BYTES_MAX: usize = 1 << 20;
const IDLE: Duration = Duration::from_secs(30);

/// One request as received, and what the sink did with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    pub webhook_id: String,
    pub job_id: String,
    /// `hookd-scheduled-at`, µs.
    pub scheduled_at: i64,
    pub attempt: u32,
    /// Receipt time at the sink, µs (the run's clock).
    pub recv: i64,
    /// The node that sent it, from the source address (netns mode only).
    pub from: Option<u64>,
    /// "200", "503", "drop", "delay:200".
    pub response: String,
    /// Whether the sender can have seen a 2xx in time.
    pub ok: bool,
}

/// One event delivery (a callback) as received, and what the sink answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EventDelivery {
    /// `webhook-id`: the event id, the same on every attempt.
    pub webhook_id: String,
    /// `hookd-event-type`.
    pub event_type: String,
    /// `hookd-job-id`.
    pub job_header: String,
    /// The job id in the URL's path (`/events/{job}`).
    pub path_job: String,
    /// Which callback URL it came to: its `?on=` (`success` or `failure`).
    pub callback: String,
    /// `hookd-attempt`.
    pub attempt: u32,
    /// Receipt time at the sink, µs.
    pub recv: i64,
    /// The node that sent it, from the source address (netns mode only).
    pub from: Option<u64>,
    /// "200" or "503".
    pub response: String,
    /// Whether it was answered 2xx.
    pub ok: bool,
    /// What its JSON body said; None when the body was not a JSON object.
    pub body: Option<EventBody>,
}

/// The parts of an event's JSON body the `events` checker reads (absent fields are empty).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EventBody {
    /// `id`.
    pub id: String,
    /// `type`.
    #[serde(rename = "type")]
    pub typ: String,
    /// `job.id`.
    pub job_id: String,
    /// `node_id`.
    pub node_id: Option<u64>,
    /// `run.id`.
    pub run_id: String,
    /// `run.job_id`.
    pub run_job_id: String,
    /// `run.status`.
    pub run_status: String,
    /// `run.scheduled_at`, µs.
    pub run_scheduled_at: Option<i64>,
    /// How many attempts `run.attempts` lists.
    pub run_attempts: usize,
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(EVENT_FIELD_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Reads an event's body; None unless it is a JSON object.
pub fn parse_event_body(body: &[u8]) -> Option<EventBody> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.as_object()?;
    let s = |x: &serde_json::Value| clip(x.as_str().unwrap_or_default());
    let run = &v["run"];
    Some(EventBody {
        id: s(&v["id"]),
        typ: s(&v["type"]),
        job_id: s(&v["job"]["id"]),
        node_id: v["node_id"].as_u64(),
        run_id: s(&run["id"]),
        run_job_id: s(&run["job_id"]),
        run_status: s(&run["status"]),
        run_scheduled_at: run["scheduled_at"].as_str().and_then(parse_rfc3339_us),
        run_attempts: run["attempts"].as_array().map_or(0, Vec::len),
    })
}

/// What the sink does to (a fraction of) requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum SinkFault {
    None,
    Error5xx {
        fraction: f64,
    },
    /// Answer only after `ms`, longer than the jobs' timeout.
    Delay {
        fraction: f64,
        ms: u64,
    },
    DropAfterRead {
        fraction: f64,
    },
}

struct State {
    fault: SinkFault,
    rng: StdRng,
    out: Option<BufWriter<File>>,
    got: Vec<Delivery>,
    events_out: Option<BufWriter<File>>,
    events: Vec<EventDelivery>,
    events_dropped: u64,
}

/// A running sink.
#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

enum Action {
    Answer(u16),
    Delay(u64),
    Drop,
}

impl Sink {
    /// Binds `ip:0` and serves until the process ends. `who` maps a source address to a node.
    /// Run deliveries are logged to `out`, event deliveries to `events_out`.
    pub async fn start(
        ip: IpAddr,
        out: Option<&Path>,
        events_out: Option<&Path>,
        seed: u64,
        who: Arc<dyn Fn(IpAddr) -> Option<u64> + Send + Sync>,
    ) -> anyhow::Result<Sink> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let create = |p: Option<&Path>| -> anyhow::Result<Option<BufWriter<File>>> {
            Ok(match p {
                Some(p) => Some(BufWriter::new(File::create(p)?)),
                None => None,
            })
        };
        let state = Arc::new(Mutex::new(State {
            fault: SinkFault::None,
            rng: StdRng::seed_from_u64(seed),
            out: create(out)?,
            got: Vec::new(),
            events_out: create(events_out)?,
            events: Vec::new(),
            events_dropped: 0,
        }));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, from)) = listener.accept().await {
                let st = st.clone();
                let node = who(from.ip());
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(600), serve(conn, node, st)).await;
                });
            }
        });
        Ok(Sink { addr, state })
    }

    /// The URL a job should call.
    pub fn url(&self, job_id: &str) -> String {
        format!("http://{}/hook/{job_id}", self.addr)
    }

    /// The URL of a job whose runs the sink holds open for a while (`overlap_answer`).
    pub fn overlap_url(&self, job_id: &str) -> String {
        format!("{}?{OVERLAP_QUERY}", self.url(job_id))
    }

    /// A callback URL of a job (`on` is `ON_SUCCESS` or `ON_FAILURE`): its requests are event
    /// deliveries, kept apart from run deliveries.
    pub fn event_url(&self, job_id: &str, on: &str) -> String {
        format!("http://{}{EVENTS_PATH}{job_id}?on={on}", self.addr)
    }

    pub fn set_fault(&self, fault: SinkFault) {
        if let Ok(mut s) = self.state.lock() {
            s.fault = fault;
        }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().map(|s| s.got.clone()).unwrap_or_default()
    }

    /// Event deliveries so far (at most `EVENTS_MAX`).
    pub fn events(&self) -> Vec<EventDelivery> {
        self.state
            .lock()
            .map(|s| s.events.clone())
            .unwrap_or_default()
    }

    /// Event deliveries received beyond `EVENTS_MAX` (not recorded).
    pub fn events_dropped(&self) -> u64 {
        self.state.lock().map(|s| s.events_dropped).unwrap_or(0)
    }

    /// Deliveries of `job_id` so far.
    pub fn of(&self, job_id: &str) -> Vec<Delivery> {
        self.state
            .lock()
            .map(|s| {
                s.got
                    .iter()
                    .filter(|d| d.job_id == job_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Lateness (receipt − due, µs) of the requests of jobs whose id starts with `prefix`
    /// received since `since_us` (newest first; cheap: it walks back from the end).
    pub fn lateness_since(&self, prefix: &str, since_us: i64) -> Vec<i64> {
        self.state
            .lock()
            .map(|s| {
                s.got
                    .iter()
                    .rev()
                    .take_while(|d| d.recv >= since_us)
                    .filter(|d| d.job_id.starts_with(prefix))
                    .map(|d| d.recv - d.scheduled_at)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn flush(&self) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(out) = s.out.as_mut() {
                let _ = out.flush();
            }
            if let Some(out) = s.events_out.as_mut() {
                let _ = out.flush();
            }
        }
    }
}

/// Serves one keep-alive connection: request by request, each logged before it is answered.
async fn serve(conn: TcpStream, node: Option<u64>, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(conn);
    loop {
        let head = match tokio::time::timeout(IDLE, read_head(&mut reader)).await {
            Ok(Some(h)) => h,
            _ => return,
        };
        let len = header(&head, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if len > BODY_BYTES_MAX {
            return;
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let attempt = header(&head, "hookd-attempt")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let path = header(&head, PATH).unwrap_or_default();
        if let Some(rest) = path.strip_prefix(EVENTS_PATH) {
            let status = record_event(&head, rest, &body, attempt, node, &state);
            if !answer(&mut reader, status).await {
                return;
            }
            continue;
        }
        let d = Delivery {
            webhook_id: header(&head, "webhook-id").unwrap_or_default().to_owned(),
            job_id: header(&head, "hookd-job-id").unwrap_or_default().to_owned(),
            scheduled_at: header(&head, "hookd-scheduled-at")
                .and_then(parse_rfc3339_us)
                .unwrap_or(i64::MIN),
            attempt,
            recv: now_us(),
            from: node,
            response: String::new(),
            ok: true,
        };
        let overlap = path.contains(OVERLAP_QUERY);
        let action = {
            let Ok(mut s) = state.lock() else { return };
            let faulty = attempt <= FAULTY_ATTEMPTS_MAX;
            let fault = s.fault;
            let (action, response, ok) = match fault {
                SinkFault::Error5xx { fraction } if faulty && s.rng.random_bool(fraction) => {
                    (Action::Answer(503), "503".to_owned(), false)
                }
                SinkFault::Delay { fraction, ms } if faulty && s.rng.random_bool(fraction) => {
                    (Action::Delay(ms), "delay:200".to_owned(), false)
                }
                SinkFault::DropAfterRead { fraction } if faulty && s.rng.random_bool(fraction) => {
                    (Action::Drop, "drop".to_owned(), false)
                }
                _ if overlap => match overlap_answer(&d.webhook_id, attempt) {
                    OverlapAnswer::Ok => (Action::Answer(200), "200".to_owned(), true),
                    OverlapAnswer::Unavailable => (Action::Answer(503), "503".to_owned(), false),
                    OverlapAnswer::Slow => (
                        Action::Delay(OVERLAP_SLOW_MS),
                        format!("slow:{OVERLAP_SLOW_MS}:200"),
                        true,
                    ),
                },
                _ => (Action::Answer(200), "200".to_owned(), true),
            };
            let d = Delivery { response, ok, ..d };
            if let Some(out) = s.out.as_mut() {
                if let Ok(line) = serde_json::to_string(&d) {
                    let _ = writeln!(out, "{line}");
                }
            }
            s.got.push(d);
            action
        };
        let status = match action {
            Action::Drop => return,
            Action::Delay(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                200
            }
            Action::Answer(s) => s,
        };
        if !answer(&mut reader, status).await {
            return;
        }
    }
}

/// Writes an empty response; false if the connection is gone.
async fn answer(reader: &mut BufReader<TcpStream>, status: u16) -> bool {
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let resp = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n");
    reader.get_mut().write_all(resp.as_bytes()).await.is_ok()
}

/// Records an event delivery (`rest`: the path after `EVENTS_PATH`) before it is answered, and
/// returns the status to answer (`event_answer`).
fn record_event(
    head: &[(String, String)],
    rest: &str,
    body: &[u8],
    attempt: u32,
    node: Option<u64>,
    state: &Mutex<State>,
) -> u16 {
    let (job, query) = rest.split_once('?').unwrap_or((rest, ""));
    let callback = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("on="))
        .unwrap_or_default();
    let webhook_id = header(head, "webhook-id").unwrap_or_default();
    let status = event_answer(webhook_id, attempt);
    let e = EventDelivery {
        webhook_id: clip(webhook_id),
        event_type: clip(header(head, "hookd-event-type").unwrap_or_default()),
        job_header: clip(header(head, "hookd-job-id").unwrap_or_default()),
        path_job: clip(job),
        callback: clip(callback),
        attempt,
        recv: now_us(),
        from: node,
        response: status.to_string(),
        ok: (200..300).contains(&status),
        body: parse_event_body(body),
    };
    if let Ok(mut s) = state.lock() {
        if s.events.len() >= EVENTS_MAX {
            s.events_dropped += 1;
        } else {
            if let Some(out) = s.events_out.as_mut() {
                if let Ok(line) = serde_json::to_string(&e) {
                    let _ = writeln!(out, "{line}");
                }
            }
            s.events.push(e);
        }
    }
    status
}

/// FNV-1a: stable across builds and platforms.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The event rule: 200, except a 503 to attempt 1 of one event in eight (by a hash of its
/// event id, so fixed per event: a re-send by a new leader is answered as before). Every event
/// is acknowledged by its second attempt. (The hash's top bits: FNV's low bits follow only the
/// low bits of the input bytes, and event ids differ in few of them.)
pub fn event_answer(event_id: &str, attempt: u32) -> u16 {
    if attempt == 1 && fnv(event_id) >> 61 == 3 {
        503
    } else {
        200
    }
}

/// What the overlap rule answers an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapAnswer {
    Ok,
    Unavailable,
    /// 200 after `OVERLAP_SLOW_MS`.
    Slow,
}

/// The overlap rule: by a hash of the run's webhook id, one run in four is answered at once, one
/// gets a 503 to attempt 1, one 503s to attempts 1 and 2, one a 200 after `OVERLAP_SLOW_MS` on
/// attempt 1. Fixed per run, so a run re-sent by a new leader is answered as before, and every
/// run succeeds by attempt 3.
pub fn overlap_answer(webhook_id: &str, attempt: u32) -> OverlapAnswer {
    match (fnv(webhook_id) % 4, attempt) {
        (1, 1) | (2, 1 | 2) => OverlapAnswer::Unavailable,
        (3, 1) => OverlapAnswer::Slow,
        _ => OverlapAnswer::Ok,
    }
}

/// The pseudo-header under which `read_head` keeps the request target.
const PATH: &str = ":path";

/// Reads a request line and headers (lowercased names; the request target as `:path`); None at
/// EOF or on garbage.
async fn read_head(reader: &mut BufReader<TcpStream>) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::new();
    let mut total = 0usize;
    let mut first = true;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).await.ok()?;
        if n == 0 {
            return None;
        }
        total += n;
        if total > HEADERS_BYTES_MAX {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if first {
            first = false;
            if line.is_empty() {
                first = true; // tolerate a stray CRLF between requests
                continue;
            }
            // The request line: only the target is kept.
            if let Some(target) = line.split_whitespace().nth(1) {
                headers.push((PATH.to_owned(), target.to_owned()));
            }
            continue;
        }
        if line.is_empty() {
            return Some(headers);
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
}

fn header<'a>(head: &'a [(String, String)], name: &str) -> Option<&'a str> {
    head.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, attempt: u32) -> Result<u16, String> {
        post_as(url, "run_1_1000", attempt, 500).await
    }

    async fn post_as(url: &str, id: &str, attempt: u32, timeout_ms: u64) -> Result<u16, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(timeout_ms))
            .build()
            .unwrap();
        http.post(url)
            .header("webhook-id", id)
            .header("hookd-job-id", "j1")
            .header("hookd-scheduled-at", "2025-01-01T00:00:01.000Z")
            .header("hookd-attempt", attempt.to_string())
            .body("{}")
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn records_every_request_and_applies_faults_to_early_attempts_only() {
        let sink = Sink::start(
            "127.0.0.1".parse().unwrap(),
            None,
            None,
            1,
            Arc::new(|_| Some(9)),
        )
        .await
        .unwrap();
        let url = sink.url("j1");
        assert_eq!(post(&url, 1).await, Ok(200));
        sink.set_fault(SinkFault::Error5xx { fraction: 1.0 });
        assert_eq!(post(&url, 1).await, Ok(503));
        assert_eq!(post(&url, 3).await, Ok(200), "attempt 3 is never faulted");
        sink.set_fault(SinkFault::DropAfterRead { fraction: 1.0 });
        assert!(post(&url, 2).await.is_err());
        sink.set_fault(SinkFault::Delay {
            fraction: 1.0,
            ms: 2000,
        });
        assert!(post(&url, 1).await.is_err(), "times out");
        let got = sink.of("j1");
        assert_eq!(got.len(), 5);
        assert_eq!(got[0].webhook_id, "run_1_1000");
        assert_eq!(got[0].scheduled_at, 1_735_689_601_000_000);
        assert_eq!(got[0].from, Some(9));
        let resp: Vec<(&str, bool)> = got.iter().map(|d| (d.response.as_str(), d.ok)).collect();
        assert_eq!(
            resp,
            vec![
                ("200", true),
                ("503", false),
                ("200", true),
                ("drop", false),
                ("delay:200", false)
            ]
        );
    }

    /// The overlap rule is fixed per run, comes in its four kinds, leaves attempts 3 and later
    /// alone, and applies only to URLs that ask for it.
    #[tokio::test]
    async fn the_overlap_rule_holds_runs_open_by_their_id() {
        let ids: Vec<String> = (0..400).map(|i| format!("run_ovl_{i}")).collect();
        let kind = |id: &str| {
            (
                overlap_answer(id, 1),
                overlap_answer(id, 2),
                overlap_answer(id, 3),
            )
        };
        use OverlapAnswer::*;
        let kinds = [
            (Ok, Ok, Ok),
            (Unavailable, Ok, Ok),
            (Unavailable, Unavailable, Ok),
            (Slow, Ok, Ok),
        ];
        for k in kinds {
            let n = ids.iter().filter(|id| kind(id) == k).count();
            assert!((50..=150).contains(&n), "{k:?}: {n} of 400");
        }
        assert!(ids.iter().all(|id| kinds.contains(&kind(id))));
        assert!(ids
            .iter()
            .all(|id| (3..8).all(|n| overlap_answer(id, n) == Ok)));

        let sink = Sink::start(
            "127.0.0.1".parse().unwrap(),
            None,
            None,
            1,
            Arc::new(|_| None),
        )
        .await
        .unwrap();
        let pick = |k| ids.iter().find(|id| kind(id) == k).unwrap().clone();
        let (twice, slow) = (pick(kinds[2]), pick(kinds[3]));
        let url = sink.overlap_url("j1");
        assert!(url.ends_with("/hook/j1?answer=overlap"), "{url}");
        assert_eq!(post_as(&url, &twice, 1, 500).await, Result::Ok(503));
        assert_eq!(post_as(&url, &twice, 2, 500).await, Result::Ok(503));
        assert_eq!(post_as(&url, &twice, 3, 500).await, Result::Ok(200));
        let t = std::time::Instant::now();
        assert_eq!(post_as(&url, &slow, 1, 3000).await, Result::Ok(200));
        assert!(t.elapsed() >= Duration::from_millis(OVERLAP_SLOW_MS));
        // The plain URL: answered at once whatever the run.
        assert_eq!(
            post_as(&sink.url("j1"), &twice, 1, 500).await,
            Result::Ok(200)
        );
        let resp: Vec<(String, bool)> = sink
            .of("j1")
            .into_iter()
            .map(|d| (d.response, d.ok))
            .collect();
        let want = [
            ("503", false),
            ("503", false),
            ("200", true),
            ("slow:1200:200", true),
            ("200", true),
        ];
        assert_eq!(resp, want.map(|(r, ok)| (r.to_owned(), ok)).to_vec());
    }

    /// Event deliveries go to their own record (and file), never among the run deliveries; the
    /// body's parts are read; the event rule answers 503 to attempt 1 of one event in eight.
    #[tokio::test]
    async fn event_deliveries_are_recorded_apart_and_answered_by_their_rule() {
        // Ids as hookd makes them: one job's runs a second apart, and their attempt counts.
        let ids: Vec<String> = (0..800u64)
            .map(|i| {
                format!(
                    "evt_run_60004_{:x}_{}",
                    0x1a2_4fcf_a8f8 + 1000 * i,
                    1 + i % 3
                )
            })
            .collect();
        let refused = ids.iter().filter(|id| event_answer(id, 1) == 503).count();
        assert!((50..=150).contains(&refused), "{refused} of 800");
        assert!(ids
            .iter()
            .all(|id| (2..6).all(|n| event_answer(id, n) == 200)));
        let once = ids
            .iter()
            .find(|id| event_answer(id, 1) == 503)
            .unwrap()
            .clone();

        let dir = tempfile::tempdir().unwrap();
        let (runs, events) = (dir.path().join("d.jsonl"), dir.path().join("e.jsonl"));
        let sink = Sink::start(
            "127.0.0.1".parse().unwrap(),
            Some(&runs),
            Some(&events),
            1,
            Arc::new(|_| Some(2)),
        )
        .await
        .unwrap();
        let url = sink.event_url("j1", ON_FAILURE);
        assert!(url.ends_with("/events/j1?on=failure"), "{url}");
        let body = serde_json::json!({
            "id": once, "type": "run.failed", "at": "2025-01-01T00:00:05.000Z", "node_id": 1,
            "job": {"id": "j1", "labels": {}},
            "run": {"id": "run_1", "job_id": "j1", "scheduled_at": "2025-01-01T00:00:01.000Z",
                    "status": "failed", "attempts": [{"n": 1}, {"n": 2}]},
        });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let send = |attempt: u32, body: String| {
            http.post(&url)
                .header("content-type", "application/json")
                .header("webhook-id", once.as_str())
                .header("hookd-event-type", "run.failed")
                .header("hookd-job-id", "j1")
                .header("hookd-attempt", attempt.to_string())
                .body(body)
                .send()
        };
        assert_eq!(send(1, body.to_string()).await.unwrap().status(), 503);
        assert_eq!(send(2, body.to_string()).await.unwrap().status(), 200);
        assert_eq!(send(3, "not json".into()).await.unwrap().status(), 200);
        // A run delivery on the same connection pool still goes to the run record.
        assert_eq!(post(&sink.url("j1"), 1).await, Ok(200));
        sink.flush();
        assert_eq!(sink.deliveries().len(), 1);
        let got = sink.events();
        assert_eq!(got.len(), 3);
        let e = &got[0];
        assert_eq!(
            (
                e.webhook_id.as_str(),
                e.event_type.as_str(),
                e.job_header.as_str()
            ),
            (once.as_str(), "run.failed", "j1")
        );
        assert_eq!(
            (e.path_job.as_str(), e.callback.as_str()),
            ("j1", ON_FAILURE)
        );
        assert_eq!(
            (e.attempt, e.from, e.response.as_str(), e.ok),
            (1, Some(2), "503", false)
        );
        let b = e.body.clone().unwrap();
        assert_eq!(
            (b.id.as_str(), b.typ.as_str()),
            (once.as_str(), "run.failed")
        );
        assert_eq!(
            (b.job_id.as_str(), b.run_id.as_str(), b.run_job_id.as_str()),
            ("j1", "run_1", "j1")
        );
        assert_eq!(
            (b.run_status.as_str(), b.run_attempts, b.node_id),
            ("failed", 2, Some(1))
        );
        assert_eq!(b.run_scheduled_at, Some(1_735_689_601_000_000));
        assert!(got[1].ok && got[2].body.is_none());
        assert_eq!(sink.events_dropped(), 0);
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!((lines(&runs), lines(&events)), (1, 3));
    }
}

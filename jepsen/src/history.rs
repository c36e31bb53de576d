//! The run's one clock and its client history: every API operation as an `invoke` line followed
//! by an `ok | fail | info` line in `history.jsonl`, and the same operations paired in memory for
//! the checkers.
//!
//! Times are microseconds on a wall-clock scale that only moves forward: the wall time read once
//! at start plus a monotonic `Instant` offset. The sink, the clients and the nemesis all live in
//! this process and read this clock, so their times compare directly (one host, one clock).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

static BASE: OnceLock<(Instant, i64)> = OnceLock::new();

/// Microseconds since the unix epoch, never going backwards within this process.
pub fn now_us() -> i64 {
    let (at, wall) = BASE.get_or_init(|| (Instant::now(), chrono::Utc::now().timestamp_micros()));
    wall + at.elapsed().as_micros() as i64
}

/// RFC 3339 with milliseconds, UTC, for a time in microseconds.
pub fn rfc3339_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Parses RFC 3339 into microseconds.
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// The kind of an operation line, Jepsen's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Invoke,
    /// Definitely happened.
    Ok,
    /// Definitely did not happen.
    Fail,
    /// Unknown: timeout, reset, 5xx on a write.
    Info,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    pub process: u64,
    #[serde(rename = "type")]
    pub typ: Type,
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub node: u64,
    pub t: i64,
    #[serde(default)]
    pub value: Value,
}

/// An operation with its completion: what the checkers read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub process: u64,
    pub f: String,
    pub job: Option<String>,
    pub node: u64,
    pub invoke: i64,
    /// Completion time; for `info` the time the client gave up (the op may take effect later).
    pub complete: i64,
    pub typ: Type,
    /// What was asked (request body or parameters).
    pub value: Value,
    /// What came back (status and the parts of the body the checkers need).
    pub result: Value,
}

impl Op {
    pub fn ok(&self) -> bool {
        self.typ == Type::Ok
    }
    pub fn status(&self) -> u64 {
        self.result["status"].as_u64().unwrap_or(0)
    }
}

struct Inner {
    out: Option<BufWriter<File>>,
    next_index: u64,
    ops: Vec<Op>,
}

/// Appends events to `history.jsonl` and keeps the paired operations.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
}

/// An invoked operation waiting for its completion.
#[derive(Debug)]
pub struct Pending {
    process: u64,
    f: String,
    job: Option<String>,
    node: u64,
    invoke: i64,
    value: Value,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let out = BufWriter::new(File::create(path)?);
        Ok(Recorder {
            inner: Arc::new(Mutex::new(Inner {
                out: Some(out),
                next_index: 0,
                ops: Vec::new(),
            })),
        })
    }

    /// A recorder that keeps operations in memory only (tests).
    pub fn in_memory() -> Recorder {
        Recorder {
            inner: Arc::new(Mutex::new(Inner {
                out: None,
                next_index: 0,
                ops: Vec::new(),
            })),
        }
    }

    fn write(inner: &mut Inner, e: &mut Event) {
        e.index = inner.next_index;
        inner.next_index += 1;
        if let Some(out) = inner.out.as_mut() {
            if let Ok(line) = serde_json::to_string(e) {
                let _ = writeln!(out, "{line}");
            }
        }
    }

    pub fn invoke(
        &self,
        process: u64,
        f: &str,
        job: Option<&str>,
        node: u64,
        value: Value,
    ) -> Pending {
        let t = now_us();
        let mut e = Event {
            index: 0,
            process,
            typ: Type::Invoke,
            f: f.to_owned(),
            job: job.map(str::to_owned),
            node,
            t,
            value: value.clone(),
        };
        if let Ok(mut inner) = self.inner.lock() {
            Self::write(&mut inner, &mut e);
        }
        Pending {
            process,
            f: f.to_owned(),
            job: job.map(str::to_owned),
            node,
            invoke: t,
            value,
        }
    }

    pub fn complete(&self, p: Pending, typ: Type, result: Value) -> Op {
        let t = now_us();
        let mut e = Event {
            index: 0,
            process: p.process,
            typ,
            f: p.f.clone(),
            job: p.job.clone(),
            node: p.node,
            t,
            value: result.clone(),
        };
        let op = Op {
            process: p.process,
            f: p.f,
            job: p.job,
            node: p.node,
            invoke: p.invoke,
            complete: t,
            typ,
            value: p.value,
            result,
        };
        if let Ok(mut inner) = self.inner.lock() {
            Self::write(&mut inner, &mut e);
            inner.ops.push(op.clone());
        }
        op
    }

    pub fn ops(&self) -> Vec<Op> {
        self.inner.lock().map(|i| i.ops.clone()).unwrap_or_default()
    }

    pub fn flush(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            if let Some(out) = inner.out.as_mut() {
                let _ = out.flush();
            }
        }
    }
}

/// Reads `history.jsonl` back into paired operations (for `hookd-jepsen check DIR`). An invoke
/// without a completion (the harness died) becomes `info`.
pub fn load(path: &Path) -> anyhow::Result<Vec<Op>> {
    let file = BufReader::new(File::open(path)?);
    let mut open: std::collections::HashMap<u64, Event> = Default::default();
    let mut ops = Vec::new();
    for line in file.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Event = serde_json::from_str(&line)?;
        if e.typ == Type::Invoke {
            open.insert(e.process, e);
        } else if let Some(inv) = open.remove(&e.process) {
            ops.push(Op {
                process: e.process,
                f: inv.f,
                job: inv.job,
                node: inv.node,
                invoke: inv.t,
                complete: e.t,
                typ: e.typ,
                value: inv.value,
                result: e.value,
            });
        }
    }
    for (_, inv) in open {
        ops.push(Op {
            process: inv.process,
            f: inv.f,
            job: inv.job,
            node: inv.node,
            invoke: inv.t,
            complete: i64::MAX,
            typ: Type::Info,
            value: inv.value,
            result: Value::Null,
        });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_clock_moves_forward_and_round_trips_rfc3339() {
        let a = now_us();
        let b = now_us();
        assert!(b >= a);
        let s = rfc3339_us(1_700_000_000_123_000);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339_us(&s), Some(1_700_000_000_123_000));
    }

    #[test]
    fn a_written_history_loads_back_paired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let rec = Recorder::create(&path).unwrap();
        let p = rec.invoke(1, "get", Some("a"), 2, json!({}));
        rec.complete(p, Type::Ok, json!({"status": 404}));
        let _dangling = rec.invoke(2, "delete", Some("a"), 1, json!({}));
        rec.flush();
        let ops = load(&path).unwrap();
        assert_eq!(ops.len(), 2);
        let get = ops.iter().find(|o| o.f == "get").unwrap();
        assert_eq!(get.status(), 404);
        assert!(get.ok());
        let del = ops.iter().find(|o| o.f == "delete").unwrap();
        assert_eq!(del.typ, Type::Info);
    }
}

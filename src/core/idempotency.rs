//! Idempotency keys (`Idempotency-Key`, SPEC §2): what the first request with a key got, kept
//! in the replicated state for 24 hours, so a repeat through any node and across leader
//! changes gets the same answer without acting again.
//!
//! `Table::Idempotency` holds, in one keyspace each:
//! - `k` + key → `Remembered` (compact): the request's fingerprint, when, its queue number and
//!   what it got (`Recall`: a reference to the job or run it made, or a small answer);
//! - `q` + number (8 bytes BE) → key: the keys in the order they were remembered;
//! - `h` and `n` → the first and the next queue number.
//!
//! Every command that remembers a key first forgets a bounded number of keys from the front of
//! the queue: the expired ones, and beyond `IDEMPOTENCY_KEYS_MAX` the oldest. `apply` cannot
//! scan, so the queue is how it finds them.

use serde::{Deserialize, Serialize};

use super::command::{CommandResult, RunStatus, UnixMs};
use super::records::{compact, decode, StateFault, Table, Tables, TxResult};
use crate::limits::{IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_TTL_MS};

/// Keys forgotten per command at most.
const FORGET_PER_COMMAND: usize = 16;

/// A SHA-256 of the request: method, route and body.
pub type Fingerprint = [u8; 32];

/// What a request with a key got, as a repeat is answered: the job or run it made, read again
/// when the repeat comes; or its refusal or whole answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recall {
    Job {
        id: String,
        created: bool,
    },
    Run {
        id: String,
    },
    NotRetryable {
        id: String,
        status: RunStatus,
    },
    NotFound,
    Conflict,
    Rejected {
        field: String,
        message: String,
    },
    /// A whole answer (a bulk request's): status and JSON body.
    Answer {
        status: u16,
        body: String,
    },
    Done,
}

impl Recall {
    /// What `result` is remembered as.
    pub fn of(result: &CommandResult) -> Recall {
        match result {
            CommandResult::Job { job, created, .. } => Recall::Job {
                id: job.id.clone(),
                created: *created,
            },
            CommandResult::Run { run } => Recall::Run { id: run.id.clone() },
            CommandResult::NotRetryable { run } => Recall::NotRetryable {
                id: run.id.clone(),
                status: run.status,
            },
            CommandResult::NotFound => Recall::NotFound,
            CommandResult::Conflict { .. } => Recall::Conflict,
            CommandResult::Rejected { field, message } => Recall::Rejected {
                field: field.clone(),
                message: message.clone(),
            },
            _ => Recall::Done,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Remembered {
    fingerprint: Fingerprint,
    at_ms: UnixMs,
    number: u64,
    recall: Recall,
}

/// What a key holds for a request with `fingerprint` at `now_ms`.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Not remembered (or expired): the request acts.
    Fresh,
    /// The same request came before: its answer.
    Repeat(Recall),
    /// The key was used for another request.
    Reused,
}

pub(super) fn record_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(b'k');
    k.extend_from_slice(key.as_bytes());
    k
}

fn queue_key(number: u64) -> [u8; 9] {
    let mut k = [b'q'; 9];
    k[1..].copy_from_slice(&number.to_be_bytes());
    k
}

fn counter<T: Tables>(t: &T, name: &[u8]) -> TxResult<T, u64> {
    Ok(t.get(Table::Idempotency, name)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

fn remembered<T: Tables>(t: &T, key: &str) -> TxResult<T, Option<Remembered>> {
    match t.get(Table::Idempotency, &record_key(key))? {
        None => Ok(None),
        Some(b) => Ok(Some(decode(Table::Idempotency, &b)?)),
    }
}

/// Whether a record made at `at_ms` still holds at `now_ms`.
fn live(at_ms: UnixMs, now_ms: UnixMs) -> bool {
    now_ms < at_ms.saturating_add(IDEMPOTENCY_TTL_MS)
}

/// What `key` holds for a request with `fingerprint` at `now_ms`.
pub fn lookup<T: Tables>(
    t: &T,
    key: &str,
    fingerprint: &Fingerprint,
    now_ms: UnixMs,
) -> TxResult<T, Lookup> {
    let stored = t.get(Table::Idempotency, &record_key(key))?;
    Ok(judge(stored.as_deref(), fingerprint, now_ms)?)
}

/// What a key's stored record (`stored`) means for a request with `fingerprint` at `now_ms`.
pub(super) fn judge(
    stored: Option<&[u8]>,
    fingerprint: &Fingerprint,
    now_ms: UnixMs,
) -> Result<Lookup, StateFault> {
    let record: Option<Remembered> = stored.map(|b| decode(Table::Idempotency, b)).transpose()?;
    Ok(match record {
        Some(r) if live(r.at_ms, now_ms) && r.fingerprint == *fingerprint => {
            Lookup::Repeat(r.recall)
        }
        Some(r) if live(r.at_ms, now_ms) => Lookup::Reused,
        _ => Lookup::Fresh,
    })
}

/// Remembers that the request `fingerprint` with `key` got `recall` at `now_ms` (after
/// forgetting what is due to go).
pub fn remember<T: Tables>(
    t: &T,
    key: &str,
    fingerprint: Fingerprint,
    now_ms: UnixMs,
    recall: Recall,
) -> TxResult<T, ()> {
    let next = counter(t, b"n")?;
    let record = Remembered {
        fingerprint,
        at_ms: now_ms,
        number: next,
        recall,
    };
    t.put(Table::Idempotency, &record_key(key), compact(&record))?;
    t.put(
        Table::Idempotency,
        &queue_key(next),
        key.as_bytes().to_vec(),
    )?;
    t.put(
        Table::Idempotency,
        b"n",
        next.saturating_add(1).to_be_bytes().to_vec(),
    )
}

/// Forgets up to `FORGET_PER_COMMAND` keys from the front of the queue: expired at `now_ms`,
/// or over `IDEMPOTENCY_KEYS_MAX`. A queue entry whose key was remembered again later (a
/// newer number) only leaves the queue.
pub fn forget_due<T: Tables>(t: &T, now_ms: UnixMs) -> TxResult<T, ()> {
    let (mut head, next) = (counter(t, b"h")?, counter(t, b"n")?);
    let start = head;
    while head < next && head - start < FORGET_PER_COMMAND as u64 {
        let over = next - head > IDEMPOTENCY_KEYS_MAX;
        let entry = queue_key(head);
        if let Some(key) = t.get(Table::Idempotency, &entry)? {
            let key = String::from_utf8_lossy(&key).into_owned();
            match remembered(t, &key)? {
                Some(r) if r.number == head => {
                    if live(r.at_ms, now_ms) && !over {
                        break;
                    }
                    t.del(Table::Idempotency, &record_key(&key))?;
                }
                _ => {}
            }
            t.del(Table::Idempotency, &entry)?;
        }
        head += 1;
    }
    if head != start {
        t.put(Table::Idempotency, b"h", head.to_be_bytes().to_vec())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::mem::MemTables;

    const DAY: UnixMs = IDEMPOTENCY_TTL_MS;

    #[test]
    fn a_key_recalls_its_request_refuses_another_and_expires_after_a_day() {
        let t = MemTables::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(lookup(&t, "k1", &a, 1000).unwrap(), Lookup::Fresh);
        let recall = Recall::Run { id: "run_1".into() };
        remember(&t, "k1", a, 1000, recall.clone()).unwrap();
        assert_eq!(
            lookup(&t, "k1", &a, 1000 + DAY - 1).unwrap(),
            Lookup::Repeat(recall)
        );
        assert_eq!(lookup(&t, "k1", &b, 2000).unwrap(), Lookup::Reused);
        assert_eq!(lookup(&t, "k1", &b, 1000 + DAY).unwrap(), Lookup::Fresh);
        assert_eq!(lookup(&t, "k2", &a, 2000).unwrap(), Lookup::Fresh);
    }

    /// Expired keys leave the table a bounded number per command, oldest first; a key
    /// remembered again keeps its newer record when its old queue entry goes.
    #[test]
    fn expired_keys_are_forgotten_from_the_front_of_the_queue_in_bounded_steps() {
        let t = MemTables::default();
        for i in 0..40 {
            remember(&t, &format!("k{i}"), [0; 32], i, Recall::Done).unwrap();
        }
        // k0 again, later: its first queue entry must not take the new record with it.
        remember(&t, "k0", [9; 32], 100, Recall::Done).unwrap();
        let stored = |key: &str| remembered(&t, key).unwrap().is_some();
        forget_due(&t, 20 + DAY).unwrap();
        assert!(stored("k0"), "remembered again at 100");
        assert!(!stored("k1") && !stored("k15"));
        assert!(stored("k16"), "at most 16 per command");
        forget_due(&t, 20 + DAY).unwrap();
        assert!(
            !stored("k20") && stored("k21"),
            "stops at the first live key"
        );
        forget_due(&t, 1000 + DAY).unwrap();
        forget_due(&t, 1000 + DAY).unwrap();
        assert!((0..40).skip(1).all(|i| !stored(&format!("k{i}"))));
        assert!(!stored("k0"), "its second entry expired too");
        assert_eq!(counter(&t, b"h").unwrap(), counter(&t, b"n").unwrap());
    }
}

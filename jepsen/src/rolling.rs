//! Rolling restarts of a `LocalCluster` under writes and a ticking job: the planned rolling
//! restart of `hookd-scale-bench` and the upgrade test (`hookd-upgrade-test`), which also
//! swaps the binary of each node it restarts.
//!
//! A `Writer` creates a job through every node that is up, one after another, every 20 ms; a
//! node is marked down before it is stopped and up once it is ready again, so every refused
//! write was refused by a node that was up. `ticks` checks a job firing every period against
//! the first request a target got for each due instant.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::local::{http, LocalCluster, LEADER_WITHIN};

/// How long a restarted node may take to be ready again.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM (it promises 10 s).
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Refused writes described in `Writes::refusals`.
const REFUSALS_KEPT: usize = 8;

/// What the writes got.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Writes {
    pub writes: usize,
    /// Writes to a node that was up that did not get 201.
    pub refused: usize,
    /// The first `REFUSALS_KEPT` of them: when, which node, and what it answered.
    pub refusals: Vec<String>,
    /// The ids of the jobs whose create got 201.
    #[serde(skip)]
    pub acknowledged: Vec<String>,
}

/// Creates jobs `{prefix}{n}` through the nodes that are up until stopped.
pub struct Writer {
    up: Arc<Vec<AtomicBool>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<Writes>,
}

impl Writer {
    pub fn start(c: &LocalCluster, prefix: &str) -> Writer {
        let up: Arc<Vec<AtomicBool>> =
            Arc::new((0..c.nodes.len()).map(|_| AtomicBool::new(true)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let urls: Vec<String> = (0..c.nodes.len()).map(|i| c.url(i, "/v1/jobs")).collect();
        let (prefix, task_up, task_stop) = (prefix.to_owned(), up.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let (http, mut got, mut n) = (http(), Writes::default(), 0u64);
            while !task_stop.load(Ordering::Acquire) {
                for (i, url) in urls.iter().enumerate() {
                    if !task_up[i].load(Ordering::Acquire) {
                        continue;
                    }
                    n += 1;
                    let id = format!("{prefix}{n}");
                    let body = json!({"id": id, "url": "http://127.0.0.1:9/h",
                                      "schedule": {"after": "24h"}});
                    let sent_ms = crate::local::now_ms();
                    let answer = match http.post(url).json(&body).send().await {
                        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                        Err(e) => (0, e.to_string()),
                    };
                    got.writes += 1;
                    // `200`: the job exists as sent (SPEC §2, a safe retry). A leader of the
                    // previous release answers so when a node of this release sends it again
                    // a create whose first leader went away; a leader of this release still
                    // answers `201` (`state::same_job`).
                    if answer.0 == 201 || answer.0 == 200 {
                        got.acknowledged.push(id);
                    } else {
                        got.refused += 1;
                        if got.refusals.len() < REFUSALS_KEPT {
                            let (status, text) = answer;
                            let at = crate::local::rfc3339(sent_ms);
                            got.refusals
                                .push(format!("{at} node index {i}: {status} {text}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            got
        });
        Writer { up, stop, task }
    }

    fn set_up(&self, i: usize, up: bool) {
        self.up[i].store(up, Ordering::Release);
    }

    pub async fn stop(self) -> anyhow::Result<Writes> {
        self.stop.store(true, Ordering::Release);
        Ok(self.task.await?)
    }
}

/// Restarts every node in turn, followers first and the leader last: marked down for
/// `writer`, SIGTERMed, down for `down`, started again (with `binary`, when given) and
/// waited for until ready. Returns the order, as node indexes.
pub async fn roll(
    c: &mut LocalCluster,
    writer: &Writer,
    binary: Option<&Path>,
    down: Duration,
) -> anyhow::Result<Vec<usize>> {
    let leader = c.await_leader(&http(), LEADER_WITHIN).await?;
    let mut order: Vec<usize> = (0..c.nodes.len()).filter(|i| *i != leader).collect();
    order.push(leader);
    for &i in &order {
        restart(c, writer, i, binary, down).await?;
    }
    Ok(order)
}

/// Restarts node `i` as `roll` does.
pub async fn restart(
    c: &mut LocalCluster,
    writer: &Writer,
    i: usize,
    binary: Option<&Path>,
    down: Duration,
) -> anyhow::Result<()> {
    writer.set_up(i, false);
    c.terminate(i, STOP_WITHIN)?;
    tokio::time::sleep(down).await;
    if let Some(b) = binary {
        c.hookd = b.to_path_buf();
    }
    c.spawn(i)?;
    c.await_ready(&http(), i, READY_WITHIN).await?;
    writer.set_up(i, true);
    Ok(())
}

/// A job firing every `period_ms` from `start_ms`, checked up to `end_ms`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Ticks {
    pub runs: usize,
    pub missed: usize,
    pub max_lateness_ms: i64,
}

/// `Ticks` of the due instants `start_ms + k·period_ms` up to `end_ms`, given the first request
/// for each due instant (due → received, ms).
pub fn ticks(first: &HashMap<i64, i64>, start_ms: i64, period_ms: i64, end_ms: i64) -> Ticks {
    let dues: Vec<i64> = (0..)
        .map(|k| start_ms + k * period_ms)
        .take_while(|d| *d <= end_ms)
        .collect();
    Ticks {
        runs: dues.len(),
        missed: dues.iter().filter(|d| !first.contains_key(d)).count(),
        max_lateness_ms: dues
            .iter()
            .filter_map(|d| first.get(d).map(|r| r - d))
            .max()
            .unwrap_or(0),
    }
}

/// The first receipt of each due instant among `(received, due)` pairs, both ms.
pub fn first_by_due(requests: impl IntoIterator<Item = (i64, i64)>) -> HashMap<i64, i64> {
    let mut first: HashMap<i64, i64> = HashMap::new();
    for (recv, due) in requests {
        let e = first.entry(due).or_insert(recv);
        *e = (*e).min(recv);
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_count_every_due_instant_up_to_the_end_and_the_first_receipt_of_each() {
        let first = first_by_due([
            (1_010, 1_000),
            (1_005, 1_000),
            (3_400, 3_000),
            (9_000, 9_000),
        ]);
        assert_eq!(first[&1_000], 1_005, "the first receipt counts");
        let t = ticks(&first, 1_000, 1_000, 3_500);
        assert_eq!(
            (t.runs, t.missed, t.max_lateness_ms),
            (3, 1, 400),
            "2_000 missed"
        );
        let none = ticks(&HashMap::new(), 1_000, 1_000, 999);
        assert_eq!((none.runs, none.missed), (0, 0));
    }
}

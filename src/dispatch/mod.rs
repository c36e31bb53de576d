//! Leader-only dispatch (DESIGN.md §3): one task per leadership epoch claims due runs through
//! Raft ahead of time, sends each at its due instant behind the lease gate, and records
//! outcomes and retries through Raft, so a new leader continues where the old one stopped.
//!
//! - `crate::core::plan`: pure decisions (what to claim, misfire policy, retry policy);
//! - `targets.rs`: pure per-target queues, caps, fair sharing and circuit breakers;
//! - `runner.rs`: the epoch task that executes them;
//! - `delivery.rs`: one bounded HTTP attempt with the SPEC §3 headers and signature;
//! - `stats.rs`: the figures per second behind `GET /v1/stats`.

mod announce;
pub mod delivery;
mod doubt;
mod index;
mod pace;
mod runner;
pub mod stats;
pub mod targets;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookd_raft::LeaderTerm;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::replicated::Replica;

pub use delivery::{Deliver, Deliverer};
use targets::TargetStatus;

/// One page of `GET /v1/targets`: the targets and the key to continue after.
pub type TargetsPage = (Vec<TargetStatus>, Option<String>);

/// A request for a page of targets, answered by the epoch task of this node.
pub struct TargetsQuery {
    pub after: Option<String>,
    pub limit: usize,
    pub reply: oneshot::Sender<TargetsPage>,
}

/// Where the current epoch task takes its queries from; held by one epoch at a time.
type Queries = Arc<tokio::sync::Mutex<mpsc::Receiver<TargetsQuery>>>;

/// How long a targets query may wait for the dispatcher's loop.
const QUERY_WITHIN: Duration = Duration::from_secs(2);

/// The figures of the leadership this node's dispatcher serves, if any: set when an epoch
/// task starts, kept while it is restarted in the same epoch, cleared when leadership ends.
type StatsSlot = Arc<Mutex<Option<(LeaderTerm, stats::Recorder)>>>;

/// The API's handle on this node's dispatcher.
#[derive(Clone)]
pub struct DispatchHandle {
    queries: mpsc::Sender<TargetsQuery>,
    stats: StatsSlot,
}

impl DispatchHandle {
    /// A page of this node's targets, or None when it does not dispatch (not the leader) or
    /// its dispatcher did not answer in time.
    pub async fn targets(&self, after: Option<String>, limit: usize) -> Option<TargetsPage> {
        let (reply, answer) = oneshot::channel();
        let query = TargetsQuery {
            after,
            limit,
            reply,
        };
        tokio::time::timeout(QUERY_WITHIN, async {
            self.queries.send(query).await.ok()?;
            answer.await.ok()
        })
        .await
        .ok()
        .flatten()
    }

    /// The last `seconds` complete seconds of this leadership's figures (`stats.rs`), or None
    /// when this node does not dispatch. Read under a lock the dispatcher holds only for a few
    /// writes, so it needs no turn of its loop.
    pub fn stats(&self, seconds: u32) -> Option<stats::Window> {
        let recorder = lock(&self.stats).as_ref().map(|(_, r)| r.clone());
        recorder.map(|r| r.window(seconds))
    }
}

/// A lock whose holder panicked still guards a valid value: the figures are written whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the dispatcher reads the time (unix milliseconds): the system clock, or a test's.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(|| chrono::Utc::now().timestamp_millis()))
    }

    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

/// Tuning of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Runs due within this horizon are claimed ahead, so the Raft round trip is off the
    /// critical path.
    pub horizon: Duration,
    /// Bound on deliveries in flight at once on this node (`--deliveries-max`).
    pub in_flight_max: usize,
    /// Bound on deliveries in flight at once per target host:port (`--host-concurrency`).
    pub host_max: usize,
    /// Runs kept per job.
    pub retention: u32,
    pub clock: Clock,
    /// The cluster's shard count: per-target limits are cluster-wide, so this shard's
    /// dispatcher enforces its part of each (`targets::share`).
    pub shards: u32,
    /// This dispatcher's shard. Shard 0's alone announces cluster events (`core::events`), so
    /// each is told once; the node's gauges add up every shard's figures (`metrics`).
    pub shard: u32,
}

/// Starts the supervisor that runs one dispatcher per leadership epoch of this node. It stops
/// when `shutdown` is cancelled; deliveries in flight then finish on their own.
pub fn spawn<D: Deliver>(
    replica: Arc<Replica>,
    deliverer: D,
    config: DispatchConfig,
    shutdown: CancellationToken,
) -> (JoinHandle<()>, DispatchHandle) {
    let (queries, rx) = mpsc::channel(16);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let stats = StatsSlot::default();
    let task = tokio::spawn(supervise(
        replica,
        deliverer,
        config,
        rx,
        stats.clone(),
        shutdown,
    ));
    (task, DispatchHandle { queries, stats })
}

/// The recorder of `epoch`'s figures, published in `slot`: the one already there if it is of the
/// same epoch (a restarted epoch task goes on counting), else a new, empty one.
fn epoch_stats(slot: &StatsSlot, epoch: LeaderTerm, clock: &Clock) -> stats::Recorder {
    let mut slot = lock(slot);
    match slot.as_ref() {
        Some((e, recorder)) if *e == epoch => recorder.clone(),
        _ => {
            let recorder = stats::Recorder::new(clock.clone());
            *slot = Some((epoch, recorder.clone()));
            recorder
        }
    }
}

/// The message a panic carried, for the log.
pub(crate) fn panic_cause(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The pause before restarting an epoch task that ended by itself for the `n`th time in a row
/// (`n` ≥ 1): 100 ms, doubling, at most 10 s. Pure.
pub fn restart_pause(n: u32) -> Duration {
    hookd_raft::pause::doubling(Duration::from_millis(100), Duration::from_secs(10), n)
}

/// Runs one epoch task while this node leads, and restarts it (after `restart_pause`) if it
/// ends by itself, a panic included (SPEC §7 "Supervision"): the node never silently stops
/// dispatching.
async fn supervise<D: Deliver>(
    replica: Arc<Replica>,
    deliverer: D,
    config: DispatchConfig,
    queries: Queries,
    stats: StatsSlot,
    shutdown: CancellationToken,
) {
    let mut epochs = replica.leadership().epochs();
    let mut current: Option<(LeaderTerm, CancellationToken, JoinHandle<()>)> = None;
    let mut restarts = 0u32;
    loop {
        let epoch = *epochs.borrow_and_update();
        if current.as_ref().map(|c| c.0) != epoch {
            if let Some((old, token, task)) = current.take() {
                tracing::info!(term = old.term, "leadership lost: stopping dispatch");
                token.cancel();
                let _ = task.await;
            }
            if epoch.is_none() {
                *lock(&stats) = None; // no longer leading: its figures go with it
            }
            if let Some(epoch) = epoch {
                tracing::info!(term = epoch.term, "leadership gained: starting dispatch");
                let token = shutdown.child_token();
                let task = tokio::spawn(runner::run_epoch(
                    replica.clone(),
                    deliverer.clone(),
                    config.clone(),
                    epoch,
                    queries.clone(),
                    epoch_stats(&stats, epoch, &config.clock),
                    token.clone(),
                ));
                current = Some((epoch, token, task));
            }
        }
        // The epoch task ending by itself (a panic included); never, while none runs.
        let task_ended = async {
            match current.as_mut() {
                Some((_, _, task)) => task.await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = epochs.changed() => { if changed.is_err() { break } None }
            ended = task_ended => Some(ended),
        };
        let Some(ended) = ended else {
            restarts = 0;
            continue;
        };
        let Some((epoch, _, _)) = current.take() else {
            continue;
        };
        restarts = restarts.saturating_add(1);
        match ended {
            Err(e) if e.is_panic() => {
                crate::metrics::task_panicked("epoch");
                tracing::error!(term = epoch.term, cause = %panic_cause(e.into_panic()), "the dispatcher panicked; restarting it");
            }
            _ => tracing::error!(
                term = epoch.term,
                "the dispatcher stopped by itself; restarting it"
            ),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(restart_pause(restarts)) => {}
        }
    }
    *lock(&stats) = None;
    if let Some((_, token, task)) = current {
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod restart_tests {
    use super::*;

    #[test]
    fn a_dispatcher_that_keeps_ending_is_restarted_ever_later_up_to_a_bound() {
        let cases = [
            (1, 100),
            (2, 200),
            (3, 400),
            (7, 6_400),
            (8, 10_000),
            (40, 10_000),
        ];
        for (n, ms) in cases {
            assert_eq!(restart_pause(n), Duration::from_millis(ms), "restart {n}");
        }
        assert_eq!(restart_pause(0), Duration::from_millis(100));
    }
}

//! Leader-only dispatch (DESIGN.md §3): one task per leadership epoch claims due runs through
//! Raft ahead of time, sends each at its due instant behind the lease gate, and records
//! outcomes and retries through Raft, so a new leader continues where the old one stopped.
//!
//! - `plan.rs`: pure decisions (what to claim, misfire policy, retry policy);
//! - `runner.rs`: the epoch task that executes them;
//! - `delivery.rs`: one HTTP attempt with the SPEC §3 headers and signature.

pub mod delivery;
pub mod plan;
mod runner;

use std::sync::Arc;
use std::time::Duration;

use hookd_raft::command::Epoch;
use hookd_raft::Replica;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use delivery::Deliverer;

/// Tuning of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Runs due within this horizon are claimed ahead, so the Raft round trip is off the
    /// critical path.
    pub horizon: Duration,
    /// Bound on deliveries in flight at once.
    pub in_flight_max: usize,
    /// Runs kept per job.
    pub retention: u32,
}

/// Starts the supervisor that runs one dispatcher per leadership epoch of this node. It stops
/// when `shutdown` is cancelled; deliveries in flight then finish on their own.
pub fn spawn(
    replica: Arc<Replica>,
    deliverer: Deliverer,
    config: DispatchConfig,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(supervise(replica, deliverer, config, shutdown))
}

async fn supervise(
    replica: Arc<Replica>,
    deliverer: Deliverer,
    config: DispatchConfig,
    shutdown: CancellationToken,
) {
    let mut epochs = replica.leadership().epochs();
    let mut current: Option<(Epoch, CancellationToken, JoinHandle<()>)> = None;
    loop {
        let epoch = *epochs.borrow_and_update();
        if current.as_ref().map(|c| c.0) != epoch {
            if let Some((old, token, task)) = current.take() {
                tracing::info!(term = old.term, "leadership lost: stopping dispatch");
                token.cancel();
                let _ = task.await;
            }
            if let Some(epoch) = epoch {
                tracing::info!(term = epoch.term, "leadership gained: starting dispatch");
                let token = shutdown.child_token();
                let task = tokio::spawn(runner::run_epoch(
                    replica.clone(),
                    deliverer.clone(),
                    config.clone(),
                    epoch,
                    token.clone(),
                ));
                current = Some((epoch, token, task));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = epochs.changed() => if changed.is_err() { break },
        }
    }
    if let Some((_, token, task)) = current {
        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}

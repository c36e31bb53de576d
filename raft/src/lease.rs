//! Leadership as the dispatcher needs it: which epoch this node leads, and whether its quorum
//! lease is still fresh enough to act.
//!
//! openraft 0.9 computes `millis_since_quorum_ack` when it publishes metrics. A value read later
//! is older than it says, and after a SIGSTOP/SIGCONT no new metrics may have been published
//! yet. So the watcher stamps each published value with the instant it arrived, and the lease
//! age is that value plus the time since — a paused process sees its lease as expired.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;

use crate::command::Epoch;
use crate::typ::{NodeId, RaftMetrics};

#[derive(Debug, Clone, Copy)]
struct Observed {
    at: Instant,
    epoch: Option<Epoch>,
    ack_ms: Option<u64>,
}

/// Shared view of this node's leadership, fed by a watcher of openraft's metrics.
#[derive(Clone)]
pub struct Leadership {
    observed: Arc<Mutex<Observed>>,
    epoch_tx: Arc<watch::Sender<Option<Epoch>>>,
    /// A lease older than this is not trusted.
    max_ack_age: Duration,
}

impl Leadership {
    /// `max_ack_age` must stay below the election timeout minus the metrics tick, so that no
    /// other node can have been elected while this one still acts.
    pub fn new(max_ack_age: Duration) -> Leadership {
        Leadership {
            observed: Arc::new(Mutex::new(Observed {
                at: Instant::now(),
                epoch: None,
                ack_ms: None,
            })),
            epoch_tx: Arc::new(watch::channel(None).0),
            max_ack_age,
        }
    }

    /// Follows openraft's metrics until they end (Raft shut down).
    pub async fn watch(self, mut rx: watch::Receiver<RaftMetrics>, me: NodeId) {
        loop {
            let (epoch, ack_ms) = {
                let m = rx.borrow_and_update();
                let leading = m.state == ServerState::Leader
                    && m.current_leader == Some(me)
                    && m.vote.is_committed();
                let epoch = leading.then_some(Epoch {
                    term: m.vote.leader_id().term,
                    node_id: me,
                });
                (epoch, m.millis_since_quorum_ack)
            };
            *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = Observed {
                at: Instant::now(),
                epoch,
                ack_ms,
            };
            self.epoch_tx.send_if_modified(|cur| {
                let changed = *cur != epoch;
                *cur = epoch;
                changed
            });
            if rx.changed().await.is_err() {
                self.epoch_tx.send_replace(None);
                return;
            }
        }
    }

    /// The epoch this node leads, changing on every gain or loss of leadership.
    pub fn epochs(&self) -> watch::Receiver<Option<Epoch>> {
        self.epoch_tx.subscribe()
    }

    /// True while this node leads `epoch` and a quorum acknowledged it recently enough that no
    /// other leader can exist.
    pub fn may_act(&self, epoch: Epoch) -> bool {
        let o = *self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ack_ms) = o.ack_ms else {
            return false;
        };
        let age = Duration::from_millis(ack_ms) + o.at.elapsed();
        o.epoch == Some(epoch) && age < self.max_ack_age
    }
}

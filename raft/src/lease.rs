//! Leadership as the dispatcher needs it: which epoch this node leads, and whether its quorum
//! lease is still fresh enough to act.
//!
//! The lease is measured from this node's own clock at the moment it *sent* each AppendEntries
//! that a peer then accepted (`Acks`, fed by the peer transport). A follower that accepted a
//! request cannot vote for another leader until an election timeout after it received it, so
//! while a quorum's newest accepted requests were sent less than `max_ack_age` ago (below the
//! shortest election timeout), no other leader can exist.
//!
//! openraft's own `millis_since_quorum_ack` is not used for this: it is computed when metrics
//! are published, and a value published just before a SIGSTOP is read after the SIGCONT as if it
//! were fresh, which opened the gate for runs that fell due while the node was stopped and a new
//! leader was already sending them (found by the harness's pause-leader fault).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::watch;

use crate::typ::{NodeId, RaftMetrics};

/// A leadership epoch: the term and node id of a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaderTerm {
    pub term: u64,
    pub node_id: NodeId,
}

/// For each peer, the leader it last accepted an AppendEntries from and when that request was
/// sent. Shared by the peer transport (which records) and `Leadership` (which reads).
#[derive(Clone, Default)]
pub struct Acks(Arc<Mutex<BTreeMap<NodeId, (LeaderTerm, Instant)>>>);

impl Acks {
    /// `peer` accepted a request of `leader` sent at `sent`.
    pub fn record(&self, peer: NodeId, leader: LeaderTerm, sent: Instant) {
        let mut acks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Terms only grow, and one term has one leader: order by (term, sent).
        let newer = acks
            .get(&peer)
            .is_none_or(|(e, at)| (e.term, *at) < (leader.term, sent));
        if newer {
            acks.insert(peer, (leader, sent));
        }
    }

    #[cfg(test)]
    fn snapshot(&self) -> BTreeMap<NodeId, (LeaderTerm, Instant)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// True when, in every configuration of the (possibly joint) membership, a majority of voters
/// accepted a request of `epoch` sent less than `max_age` before `now`; `me` (the leader) counts
/// as accepting.
fn lease_holds(
    configs: &[BTreeSet<NodeId>],
    me: NodeId,
    epoch: LeaderTerm,
    acks: &BTreeMap<NodeId, (LeaderTerm, Instant)>,
    now: Instant,
    max_age: Duration,
) -> bool {
    let fresh = |id: &NodeId| {
        *id == me
            || acks.get(id).is_some_and(|(e, sent)| {
                *e == epoch && now.saturating_duration_since(*sent) < max_age
            })
    };
    !configs.is_empty()
        && configs
            .iter()
            .all(|c| c.iter().filter(|id| fresh(id)).count() * 2 > c.len())
}

#[derive(Debug, Clone)]
struct Observed {
    epoch: Option<LeaderTerm>,
    /// The voter sets of the membership in effect (two while a change is joint).
    configs: Vec<BTreeSet<NodeId>>,
}

/// Shared view of this node's leadership, fed by a watcher of openraft's metrics and by the
/// acknowledgements the peer transport records.
#[derive(Clone)]
pub struct Leadership {
    me: NodeId,
    observed: Arc<Mutex<Observed>>,
    acks: Acks,
    epoch_tx: Arc<watch::Sender<Option<LeaderTerm>>>,
    /// A request sent longer ago than this proves nothing.
    max_ack_age: Duration,
    /// Set while this node hands its leadership over (`Replica::hand_over`): it acts no more.
    aside: Arc<std::sync::atomic::AtomicBool>,
}

impl Leadership {
    /// `max_ack_age` must stay below the shortest election timeout, so that no other node can
    /// have been elected while this one still acts.
    pub fn new(me: NodeId, max_ack_age: Duration) -> Leadership {
        Leadership {
            me,
            observed: Arc::new(Mutex::new(Observed {
                epoch: None,
                configs: Vec::new(),
            })),
            acks: Acks::default(),
            epoch_tx: Arc::new(watch::channel(None).0),
            max_ack_age,
            aside: Arc::default(),
        }
    }

    /// While `aside`, `may_act` is false whatever the acks say.
    pub(crate) fn set_aside(&self, aside: bool) {
        self.aside.store(aside, std::sync::atomic::Ordering::SeqCst);
    }

    /// Where the peer transport records accepted AppendEntries.
    pub fn acks(&self) -> Acks {
        self.acks.clone()
    }

    /// For each peer, when the latest request of `epoch` it accepted was sent (a peer that
    /// accepted none is absent).
    pub fn heard_from(&self, epoch: LeaderTerm) -> BTreeMap<NodeId, Instant> {
        let acks = self.acks.0.lock().unwrap_or_else(|p| p.into_inner());
        acks.iter()
            .filter(|(_, (e, _))| *e == epoch)
            .map(|(id, (_, sent))| (*id, *sent))
            .collect()
    }

    /// Whether this node is handing its leadership over (`set_aside`): what it still has to
    /// record should go now, before it goes quiet.
    pub fn is_aside(&self) -> bool {
        self.aside.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Follows openraft's metrics until they end (Raft shut down).
    pub async fn watch(self, mut rx: watch::Receiver<RaftMetrics>) {
        loop {
            let observed = {
                let m = rx.borrow_and_update();
                let leading = m.state == ServerState::Leader
                    && m.current_leader == Some(self.me)
                    && m.vote.is_committed();
                Observed {
                    epoch: leading.then_some(LeaderTerm {
                        term: m.vote.leader_id().term,
                        node_id: self.me,
                    }),
                    configs: m.membership_config.membership().get_joint_config().clone(),
                }
            };
            let epoch = observed.epoch;
            *self.observed.lock().unwrap_or_else(|p| p.into_inner()) = observed;
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
    pub fn epochs(&self) -> watch::Receiver<Option<LeaderTerm>> {
        self.epoch_tx.subscribe()
    }

    /// True while this node leads `epoch` and a quorum accepted its requests recently enough
    /// that no other leader can exist.
    pub fn may_act(&self, epoch: LeaderTerm) -> bool {
        if self.is_aside() {
            return false;
        }
        // Called before every attempt: read under the locks, no copies. Lock order: observed,
        // then acks (`watch` and `Acks::record` each take only one).
        let o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        if o.epoch != Some(epoch) {
            return false;
        }
        let acks = self.acks.0.lock().unwrap_or_else(|p| p.into_inner());
        lease_holds(
            &o.configs,
            self.me,
            epoch,
            &acks,
            Instant::now(),
            self.max_ack_age,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_millis(150);

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn epoch(term: u64, node_id: NodeId) -> LeaderTerm {
        LeaderTerm { term, node_id }
    }

    #[test]
    fn the_lease_needs_a_quorum_of_fresh_acks_of_this_epoch() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mine = epoch(3, 1);
        let three = vec![set(&[1, 2, 3])];
        let five = vec![set(&[1, 2, 3, 4, 5])];
        type Case = (
            &'static str,
            Vec<BTreeSet<NodeId>>,
            Vec<(NodeId, LeaderTerm, Duration)>,
            Duration,
            bool,
        );
        let cases: Vec<Case> = vec![
            ("no acks at all", three.clone(), vec![], ms(10), false),
            (
                "one fresh ack makes two of three",
                three.clone(),
                vec![(2, mine, ms(0))],
                ms(149),
                true,
            ),
            (
                "an ack sent max_age ago proves nothing",
                three.clone(),
                vec![(2, mine, ms(0))],
                ms(150),
                false,
            ),
            (
                // A stopped process reads its acks after the SIGCONT: they are as old as the
                // clock says, whatever openraft published before the stop.
                "acks from before a 3 s stop",
                three.clone(),
                vec![(2, mine, ms(0)), (3, mine, ms(5))],
                ms(3_005),
                false,
            ),
            (
                "an ack of an earlier term does not count",
                three.clone(),
                vec![(2, epoch(2, 1), ms(100)), (3, epoch(2, 1), ms(100))],
                ms(110),
                false,
            ),
            (
                "five voters need two fresh acks",
                five.clone(),
                vec![(2, mine, ms(100)), (3, mine, ms(0))],
                ms(160),
                false,
            ),
            (
                "five voters with two fresh acks",
                five.clone(),
                vec![(2, mine, ms(100)), (3, mine, ms(90))],
                ms(160),
                true,
            ),
            (
                "a joint change needs a quorum of each side",
                vec![set(&[1, 2, 3]), set(&[3, 4, 5])],
                vec![(2, mine, ms(100))],
                ms(110),
                false,
            ),
            (
                "a joint change with both quorums",
                vec![set(&[1, 2, 3]), set(&[3, 4, 5])],
                vec![(3, mine, ms(100)), (4, mine, ms(100))],
                ms(110),
                true,
            ),
            (
                "a single voter leads alone",
                vec![set(&[1])],
                vec![],
                ms(0),
                true,
            ),
            ("no membership known yet", vec![], vec![], ms(0), false),
        ];
        for (name, configs, acks, now, want) in cases {
            let acks = acks
                .into_iter()
                .map(|(id, e, sent)| (id, (e, t0 + sent)))
                .collect();
            let got = lease_holds(&configs, 1, mine, &acks, t0 + now, AGE);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_peer_keeps_its_newest_ack() {
        let acks = Acks::default();
        let t0 = Instant::now();
        let e3 = epoch(3, 1);
        acks.record(2, e3, t0 + Duration::from_millis(50));
        // A slow answer to an older request arrives later: it must not age the lease.
        acks.record(2, e3, t0);
        assert_eq!(acks.snapshot()[&2], (e3, t0 + Duration::from_millis(50)));
        // A later term's ack replaces the old one whatever its instant, and a late answer to a
        // request of an earlier term never replaces it.
        let e4 = epoch(4, 1);
        acks.record(2, e4, t0);
        assert_eq!(acks.snapshot()[&2], (e4, t0));
        acks.record(2, e3, t0 + Duration::from_millis(90));
        assert_eq!(acks.snapshot()[&2], (e4, t0));
    }

    #[tokio::test]
    async fn may_act_follows_recorded_acks_not_published_metrics() {
        let l = Leadership::new(1, AGE);
        let e = epoch(3, 1);
        *l.observed.lock().unwrap() = Observed {
            epoch: Some(e),
            configs: vec![set(&[1, 2, 3])],
        };
        assert!(!l.may_act(e), "no ack recorded");
        l.acks().record(3, e, Instant::now());
        assert!(l.may_act(e));
        assert!(!l.may_act(epoch(4, 1)), "another epoch");
        l.acks()
            .record(3, e, Instant::now() - Duration::from_millis(10));
        assert!(l.may_act(e), "an older ack never replaces a newer one");
    }
}

//! Membership changes (SPEC §6), the decisions: whether an add or a removal may go ahead
//! (`check_add`, `check_remove`), whether a node's applied membership says it was removed
//! (`removed_by`), whether a learner has caught up (`catch_up`), and the types the API and the
//! peer port carry. Pure and tested below; `members.rs` carries the changes out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::typ::{LogId, Node, NodeId};

/// How long a new learner may take to catch up before the add answers `NotCaughtUp` (SPEC §2:
/// 60 s; it stays a learner).
pub const CATCH_UP_WITHIN: Duration = Duration::from_secs(60);
/// The whole of a forwarded change on the leader: catching up plus the two membership entries.
pub const CHANGE_WITHIN: Duration = Duration::from_secs(75);

/// A node to add: its id, peer address, API address, and whether it becomes a voter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMember {
    pub id: NodeId,
    pub peer_addr: String,
    pub api_addr: Option<String>,
    pub voter: bool,
}

/// A node to remove; `force` allows leaving a single voter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveMember {
    pub id: NodeId,
    pub force: bool,
}

/// Why a membership change was refused or did not finish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum MemberError {
    #[error("node {0} is already a member")]
    IdTaken(NodeId),
    #[error("peer address {addr} is already node {id}'s")]
    AddrTaken { addr: String, id: NodeId },
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    #[error(
        "removing node {id} would leave {left} voter(s), and a cluster of fewer than 2 voters \
         loses quorum with any failure; add a node first, or pass force=true"
    )]
    TooFewVoters { id: NodeId, left: usize },
    #[error("node {0} is the only voter; a cluster cannot remove its last voter")]
    LastVoter(NodeId),
    #[error("another membership change is in progress; retry when it is done")]
    InProgress,
    #[error(
        "node {id} did not catch up within {secs} s and stays a learner; \
         check that it runs with --join and is reachable, then add it again"
    )]
    NotCaughtUp { id: NodeId, secs: u64 },
    #[error(
        "node {id} runs {theirs} shard group(s) and this cluster has {ours}: start it again \
         with --shards {ours} and an empty data dir, then add it"
    )]
    ShardCount { id: NodeId, theirs: u32, ours: u32 },
    #[error("no leader reachable: {0}")]
    NoLeader(String),
    #[error("the membership change did not complete: {0}")]
    Failed(String),
}

/// The membership as the checks need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub voters: BTreeSet<NodeId>,
    /// Every member, learners included, with its peer address.
    pub nodes: BTreeMap<NodeId, String>,
    /// A joint configuration: a change is half done.
    pub joint: bool,
}

impl Members {
    pub fn of(m: &openraft::Membership<NodeId, Node>) -> Members {
        Members {
            voters: m.voter_ids().collect(),
            nodes: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
            joint: m.get_joint_config().len() > 1,
        }
    }
}

/// What an accepted add does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addition {
    /// A node new to the cluster.
    New,
    /// The same id at the same address is a learner already (an earlier add that did not
    /// catch up in time, or a non-voter): carry on from there.
    Resume,
}

/// Whether `add` may go ahead: a member's id or peer address may not be reused (remove first;
/// an address never changes in place), except that repeating an add of a learner resumes it.
pub fn check_add(m: &Members, add: &AddMember) -> Result<Addition, MemberError> {
    if m.joint {
        return Err(MemberError::InProgress);
    }
    if let Some(addr) = m.nodes.get(&add.id) {
        let learner = !m.voters.contains(&add.id);
        return if *addr == add.peer_addr && learner {
            Ok(Addition::Resume)
        } else {
            Err(MemberError::IdTaken(add.id))
        };
    }
    if let Some((id, _)) = m.nodes.iter().find(|(_, a)| **a == add.peer_addr) {
        return Err(MemberError::AddrTaken {
            addr: add.peer_addr.clone(),
            id: *id,
        });
    }
    Ok(Addition::New)
}

/// What an accepted removal takes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Voter,
    Learner,
}

/// Whether removing `id` may go ahead: it must be a member, and at least 2 voters must remain
/// unless `force` (never none).
pub fn check_remove(m: &Members, id: NodeId, force: bool) -> Result<Removal, MemberError> {
    if m.joint {
        return Err(MemberError::InProgress);
    }
    if !m.nodes.contains_key(&id) {
        return Err(MemberError::NotMember(id));
    }
    if !m.voters.contains(&id) {
        return Ok(Removal::Learner);
    }
    let left = m.voters.len() - 1;
    if left == 0 {
        return Err(MemberError::LastVoter(id));
    }
    if left < 2 && !force {
        return Err(MemberError::TooFewVoters { id, left });
    }
    Ok(Removal::Voter)
}

/// Whether this node's membership, as applied, shows it removed: it was a member once (the
/// data dir holds a membership) and the applied one no longer names it.
pub fn removed_by(applied: &Members, me: NodeId) -> bool {
    !applied.nodes.is_empty() && !applied.nodes.contains_key(&me)
}

/// Where a new learner stands, from the leader's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    Waiting,
    /// Its log holds the leader's up to the target index.
    Done,
    /// This node no longer leads (it has no replication state).
    NotLeader,
    /// The learner left the membership.
    Gone,
}

/// Whether learner `id` holds the leader's log up to `target`: `replication` is the leader's
/// replication state (`None` off the leader), and in it the learner's matched log id.
pub fn catch_up(
    m: &Members,
    replication: Option<Option<Option<LogId>>>,
    id: NodeId,
    target: Option<u64>,
) -> CatchUp {
    if !m.nodes.contains_key(&id) {
        return CatchUp::Gone;
    }
    let Some(matched) = replication else {
        return CatchUp::NotLeader;
    };
    if matched.flatten().map(|l| l.index) >= target {
        CatchUp::Done
    } else {
        CatchUp::Waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(voters: &[NodeId], learners: &[NodeId]) -> Members {
        let addr = |id: &NodeId| format!("10.0.0.{id}:7201");
        Members {
            voters: voters.iter().copied().collect(),
            nodes: voters
                .iter()
                .chain(learners)
                .map(|id| (*id, addr(id)))
                .collect(),
            joint: false,
        }
    }

    fn add(id: NodeId, addr: &str) -> AddMember {
        AddMember {
            id,
            peer_addr: addr.into(),
            api_addr: None,
            voter: true,
        }
    }

    #[test]
    fn adds_are_refused_for_a_taken_id_or_address_and_resumed_for_the_same_learner() {
        let m = members(&[1, 2, 3], &[4]);
        let cases = [
            (add(5, "10.0.0.5:7201"), Ok(Addition::New)),
            (add(4, "10.0.0.4:7201"), Ok(Addition::Resume)),
            (add(4, "10.0.0.9:7201"), Err(MemberError::IdTaken(4))),
            (add(2, "10.0.0.2:7201"), Err(MemberError::IdTaken(2))),
            (
                add(6, "10.0.0.3:7201"),
                Err(MemberError::AddrTaken {
                    addr: "10.0.0.3:7201".into(),
                    id: 3,
                }),
            ),
        ];
        for (a, want) in cases {
            assert_eq!(check_add(&m, &a), want, "{a:?}");
        }
        let joint = Members {
            joint: true,
            ..m.clone()
        };
        assert_eq!(
            check_add(&joint, &add(5, "10.0.0.5:7201")),
            Err(MemberError::InProgress)
        );
    }

    #[test]
    fn removals_keep_two_voters_unless_forced_and_never_remove_the_last() {
        let three = members(&[1, 2, 3], &[4]);
        let two = members(&[1, 2], &[]);
        let one = members(&[1], &[2]);
        let cases = [
            (&three, 3, false, Ok(Removal::Voter)),
            (&three, 4, false, Ok(Removal::Learner)),
            (&three, 9, false, Err(MemberError::NotMember(9))),
            (
                &two,
                2,
                false,
                Err(MemberError::TooFewVoters { id: 2, left: 1 }),
            ),
            (&two, 2, true, Ok(Removal::Voter)),
            (&one, 1, true, Err(MemberError::LastVoter(1))),
            (&one, 2, false, Ok(Removal::Learner)),
        ];
        for (m, id, force, want) in cases {
            assert_eq!(
                check_remove(m, id, force),
                want,
                "remove {id} force {force}"
            );
        }
        let joint = Members {
            joint: true,
            ..three.clone()
        };
        assert_eq!(check_remove(&joint, 3, false), Err(MemberError::InProgress));
    }

    #[test]
    fn a_node_is_removed_only_once_it_was_a_member_and_is_no_longer_named() {
        assert!(!removed_by(&Members::default(), 4), "not yet added");
        assert!(!removed_by(&members(&[1, 2, 3], &[4]), 4), "a learner");
        assert!(!removed_by(&members(&[1, 2, 4], &[]), 4), "a voter");
        assert!(removed_by(&members(&[1, 2, 3], &[]), 4), "gone");
    }

    #[test]
    fn a_learner_has_caught_up_once_its_matched_index_reaches_the_target() {
        let m = members(&[1, 2, 3], &[4]);
        let at = |index| Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index));
        let cases = [
            // (replication on the leader: None off it; the learner's matched id), target
            (None, Some(30), CatchUp::NotLeader),
            (Some(None), Some(30), CatchUp::Waiting), // not replicated to yet
            (Some(Some(None)), Some(30), CatchUp::Waiting),
            (Some(Some(at(29))), Some(30), CatchUp::Waiting),
            (Some(Some(at(30))), Some(30), CatchUp::Done),
            (Some(Some(at(31))), Some(30), CatchUp::Done),
            (Some(None), None, CatchUp::Done), // an empty log
        ];
        for (replication, target, want) in cases {
            assert_eq!(
                catch_up(&m, replication, 4, target),
                want,
                "{replication:?} towards {target:?}"
            );
        }
        assert_eq!(
            catch_up(&members(&[1, 2, 3], &[]), Some(Some(at(30))), 4, Some(30)),
            CatchUp::Gone
        );
    }
}

//! The cluster as this node sees it, in this crate's own terms (`Replica::status`): callers
//! never walk openraft's metrics. Deciding each member's role is pure and tested below.

use std::collections::BTreeSet;

use crate::typ::{NodeId, RaftMetrics, ServerState};

/// A member's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub peer_addr: String,
    pub voter: bool,
    pub role: Role,
    /// On the leader: the last log index this member is known to hold (none before its first
    /// answer); the leader's own last index for itself. None on other nodes.
    pub matched: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    /// The last log index this node applied.
    pub applied_index: u64,
    /// The last index in this node's log.
    pub last_log_index: u64,
    /// Members in id order.
    pub members: Vec<MemberStatus>,
    /// Why the replicated core stopped, once a fatal error (a storage failure) stopped it.
    pub failed: Option<String>,
}

impl ClusterStatus {
    pub fn of(me: NodeId, m: &RaftMetrics) -> ClusterStatus {
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership
            .get_joint_config()
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect();
        let candidate = m.state == ServerState::Candidate;
        let last_log_index = m.last_log_index.unwrap_or(0);
        let matched = |id: &NodeId| match &m.replication {
            Some(_) if *id == me => Some(last_log_index),
            Some(r) => r.get(id).copied().flatten().map(|l| l.index),
            None => None,
        };
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let voter = voters.contains(id);
                MemberStatus {
                    id: *id,
                    peer_addr: node.addr.clone(),
                    voter,
                    role: role(*id, me, m.current_leader, candidate, voter),
                    matched: matched(id),
                }
            })
            .collect();
        ClusterStatus {
            node_id: me,
            leader_id: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            last_log_index,
            members,
            failed: m.running_state.as_ref().err().map(ToString::to_string),
        }
    }
}

/// Member `id`'s role, as node `me` sees it: the leader it knows, itself while it campaigns,
/// else a voter follows and any other member learns.
fn role(id: NodeId, me: NodeId, leader: Option<NodeId>, candidate: bool, voter: bool) -> Role {
    if Some(id) == leader {
        Role::Leader
    } else if id == me && candidate {
        Role::Candidate
    } else if voter {
        Role::Follower
    } else {
        Role::Learner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_known_leader_this_nodes_campaign_and_the_voter_set() {
        let cases = [
            // (id, me, leader, me campaigning, voter) → role
            ((1, 2, Some(1), false, true), Role::Leader),
            ((2, 2, Some(1), false, true), Role::Follower),
            ((2, 2, None, true, true), Role::Candidate),
            // Only this node's own campaign is known to it.
            ((3, 2, None, true, true), Role::Follower),
            ((4, 2, Some(1), false, false), Role::Learner),
            ((4, 4, None, true, false), Role::Candidate),
            // The leader counts as leader even while a joint change lists it as learner.
            ((1, 2, Some(1), false, false), Role::Leader),
        ];
        for ((id, me, leader, candidate, voter), want) in cases {
            assert_eq!(
                role(id, me, leader, candidate, voter),
                want,
                "{id} {me} {leader:?}"
            );
        }
        assert_eq!(Role::Learner.as_str(), "learner");
    }
}

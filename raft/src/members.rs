//! Membership changes (SPEC §6), carried out: a node started with `--join` is added as a
//! learner, catches up, then becomes a voter; a node is removed with one joint change. Whether a
//! change may go ahead is decided in `membership.rs`; the leader carries it out here with
//! openraft's `add_learner` and `change_membership`, and any node forwards the request to the
//! leader. A removed node learns it (the leader tells it, or it sees the applied membership
//! without itself), records it in its data dir, and stops (`Replica::removed`).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use tokio::time::Instant;

use crate::machine::Machine;
use crate::membership::*;
use crate::network::{
    Encoding, TransportError, PATH_MEMBERS_ADD, PATH_MEMBERS_REMOVE, PATH_REMOVED,
};
use crate::replica::{Replica, REQUEST_DEADLINE};
use crate::typ::{ClientWriteError, Node, NodeId, RaftError, RaftMetrics};
use serde::Serialize;

/// How long the leader waits to hear how many groups a node being added runs.
const GROUPS_ASK_WITHIN: Duration = Duration::from_secs(2);

/// How long the leader tries to tell a removed node, which may well be down.
const TELL_REMOVED_WITHIN: Duration = Duration::from_secs(2);

fn change_error(e: RaftError<ClientWriteError>) -> MemberError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            use openraft::error::ChangeMembershipError as C;
            match e {
                C::InProgress(_) => MemberError::InProgress,
                other => MemberError::Failed(other.to_string()),
            }
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            MemberError::NoLeader("leadership moved during the change; retry".into())
        }
        RaftError::Fatal(f) => MemberError::Failed(f.to_string()),
    }
}

impl<M: Machine> Replica<M> {
    /// Adds a node (SPEC §6), on the leader: forwarded there from any other node.
    pub async fn add_member(&self, add: AddMember) -> Result<(), MemberError> {
        match self.member_leader().await? {
            None => self.add_member_local(add).await,
            Some((leader, addr)) => {
                self.forward_member(leader, &addr, PATH_MEMBERS_ADD, &add)
                    .await
            }
        }
    }

    /// Removes a node (SPEC §6), on the leader: forwarded there from any other node.
    pub async fn remove_member(&self, remove: RemoveMember) -> Result<(), MemberError> {
        match self.member_leader().await? {
            None => self.remove_member_local(remove).await,
            Some((leader, addr)) => {
                self.forward_member(leader, &addr, PATH_MEMBERS_REMOVE, &remove)
                    .await
            }
        }
    }

    /// `None` when this node leads, else the leader to forward to.
    async fn member_leader(&self) -> Result<Option<(NodeId, String)>, MemberError> {
        let (leader, addr) = self
            .leader_within(Instant::now() + REQUEST_DEADLINE)
            .await
            .map_err(|e| MemberError::NoLeader(e.to_string()))?;
        Ok((leader != self.id()).then_some((leader, addr)))
    }

    async fn forward_member<B: Serialize>(
        &self,
        leader: NodeId,
        addr: &str,
        path: &str,
        body: &B,
    ) -> Result<(), MemberError> {
        let answer: Result<Result<(), MemberError>, TransportError> = self
            .peers()
            .forward(leader, addr, path, body, CHANGE_WITHIN)
            .await;
        answer.map_err(|e| MemberError::Failed(format!("forwarding to the leader: {e}")))?
    }

    /// The leader's part of an add: record the API address, add the learner, wait for it to
    /// catch up (`CATCH_UP_WITHIN`), then make it a voter.
    pub(crate) async fn add_member_local(&self, add: AddMember) -> Result<(), MemberError> {
        let members = Members::of(self.metrics().membership_config.membership());
        check_add(&members, &add)?;
        self.check_groups_of(&add).await?;
        if let Some(api) = &add.api_addr {
            self.propose(M::record_node(add.id, api.clone()))
                .await
                .map_err(|e| MemberError::Failed(e.to_string()))?;
        }
        let node = Node {
            addr: add.peer_addr.clone(),
        };
        let deadline = Instant::now() + CATCH_UP_WITHIN;
        // Not openraft's blocking add: it returns once the learner lags by less than
        // `replication_lag_threshold` entries (5,000), so at once on a young cluster, even for
        // a learner that is not running.
        self.raft()
            .add_learner(add.id, node, false)
            .await
            .map_err(change_error)?;
        // Everything the leader holds once the learner is in its membership.
        let target = self.metrics().last_log_index;
        let state = |m: &RaftMetrics| {
            catch_up(
                &Members::of(m.membership_config.membership()),
                m.replication.as_ref().map(|r| r.get(&add.id).copied()),
                add.id,
                target,
            )
        };
        let within = deadline.saturating_duration_since(Instant::now());
        let waited = self
            .raft()
            .wait(Some(within))
            .metrics(|m| state(m) != CatchUp::Waiting, "learner caught up")
            .await;
        match waited.as_ref().map(state) {
            Ok(CatchUp::Done) => {}
            Ok(CatchUp::NotLeader) => {
                return Err(MemberError::NoLeader(
                    "leadership moved while the learner caught up; retry".into(),
                ))
            }
            Ok(CatchUp::Gone) => {
                return Err(MemberError::Failed(format!(
                    "node {} was removed while it caught up",
                    add.id
                )))
            }
            Ok(CatchUp::Waiting) | Err(_) => {
                return Err(MemberError::NotCaughtUp {
                    id: add.id,
                    secs: CATCH_UP_WITHIN.as_secs(),
                })
            }
        }
        tracing::info!(id = add.id, addr = %add.peer_addr, "learner added and caught up");
        if add.voter {
            let ids = BTreeSet::from([add.id]);
            self.raft()
                .change_membership(ChangeMembers::AddVoterIds(ids), true)
                .await
                .map_err(change_error)?;
            tracing::info!(id = add.id, "learner promoted to voter");
        }
        Ok(())
    }

    /// Refuses a node that runs another number of Raft groups than this one (a shard count of
    /// its own: its data would be placed by another hash). A node that cannot be asked yet (not
    /// started, or of a release that does not say) is added as before; it catches up or not.
    async fn check_groups_of(&self, add: &AddMember) -> Result<(), MemberError> {
        let ours = self.groups();
        let asked = self
            .peers()
            .node_info(add.id, &add.peer_addr, GROUPS_ASK_WITHIN)
            .await;
        match asked.map(|info| info.groups) {
            Ok(Some(theirs)) if theirs != ours => Err(MemberError::ShardCount {
                id: add.id,
                theirs,
                ours,
            }),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::info!(id = add.id, error = %e, "could not ask the new node how many groups it runs; adding it anyway");
                Ok(())
            }
        }
    }

    /// The leader's part of a removal: one membership change without the node (a leader
    /// removing itself keeps leading until that is committed, then steps down and stops), then
    /// the removed node is told, if it can be reached.
    pub(crate) async fn remove_member_local(
        &self,
        remove: RemoveMember,
    ) -> Result<(), MemberError> {
        let membership = self.metrics().membership_config.membership().clone();
        let members = Members::of(&membership);
        let kind = check_remove(&members, remove.id, remove.force)?;
        let addr = members.nodes.get(&remove.id).cloned().unwrap_or_default();
        let ids = BTreeSet::from([remove.id]);
        let change = match kind {
            Removal::Voter => ChangeMembers::RemoveVoters(ids),
            Removal::Learner => ChangeMembers::RemoveNodes(ids),
        };
        self.raft()
            .change_membership(change, false)
            .await
            .map_err(change_error)?;
        tracing::info!(id = remove.id, "node removed from the cluster");
        if remove.id == self.id() {
            // Its own word as leader: a node that joined with `--join` believes no applied
            // membership about itself (`watch_removal`), and no leader will tell it.
            self.notice_removed("it removed itself from the cluster as leader".into());
        } else {
            let told: Result<(), TransportError> = self
                .peers()
                .post(
                    remove.id,
                    &addr,
                    PATH_REMOVED,
                    &(),
                    Encoding::Json,
                    TELL_REMOVED_WITHIN,
                )
                .await;
            if let Err(e) = told {
                tracing::info!(id = remove.id, error = %e, "could not tell the removed node; it stops when it learns otherwise");
            }
        }
        Ok(())
    }
}

//! Where the members' public APIs listen, as far as this node knows. Each node records its own
//! API address in the replicated state once a leader exists (`Replica::announce`), but a node's
//! egress policy must keep jobs off every member's API from the first request it serves (SPEC
//! §3), before those records are applied here. So a member with no record yet is asked directly
//! over the peer port (`PATH_NODE`, once it proved it holds the peer secret), at most once per
//! `ASK_AGAIN`; the record, once applied, wins over the answer. The decisions are pure (below,
//! tested); `Replica::learn_api_addrs` does the asking.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::typ::NodeId;

/// A member is asked again for its API address this long after the last try at the earliest.
pub const ASK_AGAIN: Duration = Duration::from_secs(5);
/// One ask gets this long.
pub const ASK_WITHIN: Duration = Duration::from_secs(1);

/// Where the members serve, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAddrs {
    /// Every member's peer address.
    pub peers: Vec<(NodeId, String)>,
    /// Every member's API address known here: recorded, or answered when asked.
    pub apis: Vec<(NodeId, String)>,
    /// The peer addresses of the other members whose API address is not known here.
    pub api_unknown: Vec<String>,
}

/// What asking members told this node: by id, the peer address asked, the API address it
/// answered (None: no answer yet), and when it was last asked.
#[derive(Debug, Default)]
pub struct Learned(BTreeMap<NodeId, (String, Option<String>, Instant)>);

impl Learned {
    /// The members to ask now: those (other than `me`) with no recorded API address whose
    /// answer at their current peer address is not known and was not asked for lately.
    pub fn to_ask(
        &self,
        me: NodeId,
        peers: &[(NodeId, String)],
        recorded: &BTreeSet<NodeId>,
        now: Instant,
    ) -> Vec<(NodeId, String)> {
        peers
            .iter()
            .filter(|(id, _)| *id != me && !recorded.contains(id))
            .filter(|(id, peer)| match self.0.get(id) {
                Some((asked, answer, at)) if asked == peer => {
                    answer.is_none() && now.saturating_duration_since(*at) >= ASK_AGAIN
                }
                _ => true,
            })
            .cloned()
            .collect()
    }

    /// Records the outcome of asking `id` at `peer`.
    pub fn note(&mut self, id: NodeId, peer: String, answer: Option<String>, now: Instant) {
        self.0.insert(id, (peer, answer, now));
    }

    /// Every member's API address: the recorded ones, and for members without a record the
    /// one they answered at their current peer address.
    pub fn merge(
        &self,
        peers: &[(NodeId, String)],
        recorded: Vec<(NodeId, String)>,
    ) -> Vec<(NodeId, String)> {
        let with_record: BTreeSet<NodeId> = recorded.iter().map(|(id, _)| *id).collect();
        let answered = peers.iter().filter_map(|(id, peer)| {
            let (asked, answer, _) = self.0.get(id)?;
            let answer = answer
                .as_ref()
                .filter(|_| !with_record.contains(id) && asked == peer);
            Some((*id, answer?.clone()))
        });
        let mut all: Vec<_> = recorded.into_iter().chain(answered).collect();
        all.sort();
        all
    }

    /// The peer addresses of the members (other than `me`) whose API address is unknown.
    pub fn unknown(
        &self,
        me: NodeId,
        peers: &[(NodeId, String)],
        known: &[(NodeId, String)],
    ) -> Vec<String> {
        let known: BTreeSet<NodeId> = known.iter().map(|(id, _)| *id).collect();
        peers
            .iter()
            .filter(|(id, _)| *id != me && !known.contains(id))
            .map(|(_, peer)| peer.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<(NodeId, String)> {
        vec![
            (1, "h1:7201".into()),
            (2, "h2:7202".into()),
            (3, "h3:7203".into()),
        ]
    }

    #[test]
    fn members_without_a_record_are_asked_unless_answered_or_asked_lately() {
        let t0 = Instant::now();
        let mut l = Learned::default();
        let recorded = BTreeSet::from([3]);
        // Never ask oneself or a member whose record is applied.
        assert_eq!(
            l.to_ask(1, &peers(), &recorded, t0),
            vec![(2, "h2:7202".into())]
        );
        // No answer: not again within ASK_AGAIN, then again.
        l.note(2, "h2:7202".into(), None, t0);
        assert!(l
            .to_ask(1, &peers(), &recorded, t0 + ASK_AGAIN / 2)
            .is_empty());
        assert_eq!(l.to_ask(1, &peers(), &recorded, t0 + ASK_AGAIN).len(), 1);
        // Answered: never again at that address...
        l.note(2, "h2:7202".into(), Some("h2:7102".into()), t0);
        assert!(l
            .to_ask(1, &peers(), &recorded, t0 + ASK_AGAIN * 10)
            .is_empty());
        // ...but a member at a new peer address (removed and added again) is asked at once.
        let moved = vec![(2, "h9:7202".into())];
        assert_eq!(l.to_ask(1, &moved, &recorded, t0), moved);
    }

    #[test]
    fn a_record_wins_over_an_answer_and_answers_count_only_at_the_address_asked() {
        let t0 = Instant::now();
        let mut l = Learned::default();
        l.note(2, "h2:7202".into(), Some("h2:7102".into()), t0);
        l.note(3, "h3:7203".into(), Some("answered:1".into()), t0);
        let known = l.merge(&peers(), vec![(1, "h1:7101".into()), (3, "h3:7103".into())]);
        assert_eq!(
            known,
            vec![
                (1, "h1:7101".into()),
                (2, "h2:7102".into()),
                (3, "h3:7103".into())
            ]
        );
        assert!(l.unknown(1, &peers(), &known).is_empty());
        // Node 2 moved: its old answer no longer counts and its new address is unknown.
        let moved = vec![(1, "h1:7201".into()), (2, "h9:7202".into())];
        let known = l.merge(&moved, vec![(1, "h1:7101".into())]);
        assert_eq!(known, vec![(1, "h1:7101".into())]);
        assert_eq!(l.unknown(1, &moved, &known), vec!["h9:7202".to_owned()]);
        // A node never counts as unknown to itself.
        assert!(l.unknown(2, &moved, &known).is_empty());
    }
}

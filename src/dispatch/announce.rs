//! Which cluster events the leader announces (`Command::Announce`, `core::events`): pure
//! decisions over what it observes and what the replicated state says was already told.
//! `apply` tells each change once (`ClusterMemory::note`), so announcing one twice (a
//! proposal retried, a new leader that saw it too) is harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use std::time::Instant;

use crate::core::command::NodeId;
use crate::core::events::Announcement;

/// A member the leader has not heard from for this long is `node.unreachable` (SPEC §3a).
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(10);

/// The node events due at `now` for a leader leading since `since`: each member other than
/// `me` it has not heard from for `UNREACHABLE_AFTER` (counted from `since` for one it has not
/// heard from at all) and not told unreachable yet; and each member told unreachable that it
/// heard from since.
pub fn node_events(
    now: Instant,
    since: Instant,
    me: NodeId,
    members: &BTreeSet<NodeId>,
    heard: &BTreeMap<NodeId, Instant>,
    told: &BTreeSet<NodeId>,
) -> Vec<Announcement> {
    let mut out = Vec::new();
    for &id in members.iter().filter(|id| **id != me) {
        let last = heard.get(&id).copied().unwrap_or(since).max(since);
        let lost = now.saturating_duration_since(last) >= UNREACHABLE_AFTER;
        match (lost, told.contains(&id)) {
            (true, false) => out.push(Announcement::NodeUnreachable { node_id: id }),
            (false, true) if heard.contains_key(&id) => {
                out.push(Announcement::NodeRecovered { node_id: id })
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_silent_for_ten_seconds_is_told_unreachable_once_and_recovered_when_heard() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let none = BTreeSet::new();
        let told_2: BTreeSet<NodeId> = [2].into();
        let heard = |pairs: &[(NodeId, u64)]| -> BTreeMap<NodeId, Instant> {
            pairs.iter().map(|(id, at)| (*id, s(*at))).collect()
        };
        let cases = [
            (
                "all heard recently",
                s(20),
                heard(&[(2, 15), (3, 19)]),
                &none,
                vec![],
            ),
            (
                "2 silent 10 s",
                s(20),
                heard(&[(2, 10), (3, 19)]),
                &none,
                vec![Announcement::NodeUnreachable { node_id: 2 }],
            ),
            (
                "2 silent 9.9 s is not yet",
                s(20) - Duration::from_millis(100),
                heard(&[(2, 10), (3, 19)]),
                &none,
                vec![],
            ),
            (
                "already told",
                s(30),
                heard(&[(2, 10), (3, 29)]),
                &told_2,
                vec![],
            ),
            (
                "told and heard again",
                s(30),
                heard(&[(2, 29), (3, 29)]),
                &told_2,
                vec![Announcement::NodeRecovered { node_id: 2 }],
            ),
            (
                "never heard: counted from the start of leading",
                s(9),
                heard(&[]),
                &none,
                vec![],
            ),
            (
                "never heard for 10 s",
                s(10),
                heard(&[(3, 9)]),
                &none,
                vec![Announcement::NodeUnreachable { node_id: 2 }],
            ),
            (
                "told, not heard by this leader yet: not recovered",
                s(5),
                heard(&[(3, 4)]),
                &told_2,
                vec![],
            ),
        ];
        for (name, now, heard, told, want) in cases {
            assert_eq!(
                node_events(now, t0, 1, &members, &heard, told),
                want,
                "{name}"
            );
        }
    }
}

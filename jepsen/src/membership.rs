//! The decisions of the membership fault (`nemesis::Kind::Membership`), as pure functions so
//! they are table-tested: which node to replace and which id its successor gets, which node to
//! remove and re-add, what an answer of the membership API means, how a removed node's exit
//! is judged, and which nodes owe what at the end when ids change.
//!
//! The fault, in one window (SPEC §6 "Membership", "Replacing a node"; Jepsen's etcd tests do
//! the same):
//! 1. **replace**: a random member (the leader included) is replaced by a node with a new id,
//!    started with `--join` and an empty data dir in the spare slot (`net::Occupancy`), added
//!    through `POST /v1/cluster/members` (a voter once caught up); then the old one is removed
//!    with `DELETE /v1/cluster/members/{id}` and must stop by itself with exit 0; its slot
//!    becomes the spare.
//! 2. **remove, then re-add**: a random follower is removed, must exit 0 by itself, and comes
//!    back with the same id, an empty data dir and `--join`, added again.
//!
//! Every step is bounded; a step that fails ends the fault with outcome `failed` after undoing
//! what it can (a new node that could not be added is removed and stopped), and the checkers
//! hold the end state to three voters, the same everywhere (`check::cluster::convergence`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::check::NodeView;
use crate::client::Reply;
use crate::cluster::Departure;

/// The time the nemesis reserves for the fault when scheduling it.
pub const NEED: Duration = Duration::from_secs(30);
/// What the whole fault took at most in the runs measured (6-9.3 s on a 2-core machine), with
/// some margin: the smoke's fault time is sized with it.
pub const TYPICAL_MAX: Duration = Duration::from_secs(12);
/// Every step of one fault ends by this long after its start (a failing add or removal is
/// retried until then).
pub const WITHIN: Duration = Duration::from_secs(75);
/// A removed node must have exited by itself this long after its removal was acknowledged:
/// hookd tells it within 2 s, it goes on 1 s, then shuts down gracefully within 8 s (its API
/// server waits for the requests in flight: the workload's clients still talk to a node being
/// re-added, so exits 4-8 s after the removal are common, 1 s without clients).
pub const EXIT_WITHIN: Duration = Duration::from_secs(15);
/// A node started with `--join` gets this long to answer its API before it is added anyway.
pub const UP_WITHIN: Duration = Duration::from_secs(10);

/// The member to replace: any of them, the leader included (its removal hands leadership over).
pub fn replace_target(members: &[u64], pick: usize) -> Option<u64> {
    (!members.is_empty()).then(|| members[pick % members.len()])
}

/// The id of a new node: above every id the run has had, so a replacement never reuses one.
pub fn next_id(ever: &[u64]) -> u64 {
    ever.iter().copied().max().unwrap_or(0) + 1
}

/// The member to remove and re-add: a follower (removing the leader is what `replace` may do).
/// None without a known leader among the members, or without a follower.
pub fn readd_target(members: &[u64], leader: Option<u64>, pick: usize) -> Option<u64> {
    let leader = leader.filter(|l| members.contains(l))?;
    let followers: Vec<u64> = members.iter().copied().filter(|m| *m != leader).collect();
    (!followers.is_empty()).then(|| followers[pick % followers.len()])
}

/// The node to send a membership request to: the leader unless it is one of `avoid` (the node
/// being removed or added), else the first other live member.
pub fn via(live: &[u64], leader: Option<u64>, avoid: &[u64]) -> Option<u64> {
    leader
        .filter(|l| live.contains(l) && !avoid.contains(l))
        .or_else(|| live.iter().copied().find(|n| !avoid.contains(n)))
}

/// What an answer to a membership request means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `201` to an add (a voter now), `200` to a removal.
    Done,
    /// `404` to a removal: the node is no member (a removal that went through before).
    NotMember,
    /// Anything else: look at the membership, then try again while time is left (a repeated
    /// add of a learner resumes it; `409` may be another change in progress).
    Retry(String),
}

pub fn answer(reply: &Reply, done: u16) -> Answer {
    match reply {
        Reply::Status(s, _) if *s == done => Answer::Done,
        Reply::Status(404, _) if done == 200 => Answer::NotMember,
        Reply::Status(s, v) => Answer::Retry(format!(
            "{s} {}",
            v["error"]["message"]
                .as_str()
                .or(v["message"].as_str())
                .unwrap_or("")
        )),
        Reply::Refused(e) => Answer::Retry(format!("refused: {e}")),
        Reply::Unknown(e) => Answer::Retry(format!("no answer: {e}")),
    }
}

/// The members and voters a `GET /v1/cluster` body names.
pub fn members_of(v: &Value) -> Option<(BTreeSet<u64>, BTreeSet<u64>)> {
    let ms = v["members"].as_array()?;
    let mut all = BTreeSet::new();
    let mut voters = BTreeSet::new();
    for m in ms {
        let id = m["id"].as_u64()?;
        all.insert(id);
        if m["voter"].as_bool() == Some(true) {
            voters.insert(id);
        }
    }
    Some((all, voters))
}

/// How a removed node's exit went, for the fault's detail: Ok when it exited 0 by itself.
pub fn judge_exit(departure: Option<&Departure>, removed_at: i64) -> Result<String, String> {
    let secs = |t: i64| (t - removed_at) as f64 / 1e6;
    match departure {
        Some(d) if d.clean => Ok(format!("exited 0 {:.1} s after its removal", secs(d.t))),
        Some(d) => Err(format!(
            "exited with {} {:.1} s after its removal (must be 0)",
            d.status,
            secs(d.t)
        )),
        None => Err(format!(
            "still running {} s after its removal (a removed node stops by itself); SIGKILLed",
            EXIT_WITHIN.as_secs()
        )),
    }
}

/// The nodes that owe every acknowledged job at the end, with their final view (None: not
/// read): the members at the end (`members`, the harness's table) — a node that was replaced or
/// removed owes nothing, and a node that joined owes everything, as a member must hold the
/// whole state. A run stored before membership changes existed has no `members`: then every
/// node read.
pub fn owed_nodes<'a>(
    members: &[u64],
    views: &'a BTreeMap<u64, NodeView>,
) -> Vec<(u64, Option<&'a NodeView>)> {
    if members.is_empty() {
        return views.iter().map(|(n, v)| (*n, Some(v))).collect();
    }
    let mut owed: Vec<u64> = members.to_vec();
    owed.sort_unstable();
    owed.dedup();
    owed.into_iter().map(|n| (n, views.get(&n))).collect()
}

/// What is wrong with the membership at the end: every node read must name the same voters,
/// those must be the harness's members, and there must be `expected` of them (0: unchecked, as
/// in runs stored before membership changes existed).
pub fn membership_problems(
    members: &[u64],
    views: &BTreeMap<u64, NodeView>,
    expected: usize,
) -> Vec<Value> {
    let mut out = Vec::new();
    if members.is_empty() {
        return out;
    }
    let want: Vec<u64> = members
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if expected > 0 && want.len() != expected {
        out.push(serde_json::json!({"members_at_end": want, "expected": expected}));
    }
    for (node, view) in views {
        match &view.voters {
            Some(v) if *v != want => out
                .push(serde_json::json!({"node": node, "names_voters": v, "members_at_end": want})),
            Some(_) => {}
            None => out.push(serde_json::json!({"node": node, "voters_unread": true})),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_node_to_replace_is_any_member_and_its_successor_gets_a_fresh_id() {
        let table: &[(&[u64], usize, Option<u64>)] = &[
            (&[1, 2, 3], 0, Some(1)),
            (&[1, 2, 3], 2, Some(3)),
            (&[1, 2, 3], 4, Some(2)),
            (&[1, 3, 4], 1, Some(3)),
            (&[], 0, None),
        ];
        for (members, pick, want) in table {
            assert_eq!(replace_target(members, *pick), *want, "{members:?} {pick}");
        }
        assert_eq!(next_id(&[1, 2, 3]), 4);
        // A replaced id (2) is never given again, nor one re-added (3).
        assert_eq!(next_id(&[1, 2, 3, 4]), 5);
        assert_eq!(next_id(&[3, 1, 7, 4]), 8);
        assert_eq!(next_id(&[]), 1);
    }

    #[test]
    fn the_node_to_remove_and_re_add_is_a_follower_of_a_known_leader() {
        type Row<'a> = (&'a [u64], Option<u64>, usize, Option<u64>);
        let table: &[Row] = &[
            (&[1, 2, 3], Some(1), 0, Some(2)),
            (&[1, 2, 3], Some(1), 1, Some(3)),
            (&[1, 2, 3], Some(2), 1, Some(3)),
            (&[1, 3, 4], Some(4), 0, Some(1)),
            (&[1, 3, 4], Some(4), 3, Some(3)),
            // No leader, or a leader that is no member (just replaced): nothing to aim at.
            (&[1, 2, 3], None, 0, None),
            (&[1, 3, 4], Some(2), 0, None),
            (&[1], Some(1), 0, None),
        ];
        for (members, leader, pick, want) in table {
            assert_eq!(
                readd_target(members, *leader, *pick),
                *want,
                "{members:?} {leader:?} {pick}"
            );
        }
    }

    #[test]
    fn requests_go_to_the_leader_unless_it_is_the_node_concerned() {
        assert_eq!(via(&[1, 2, 3], Some(2), &[4]), Some(2));
        assert_eq!(via(&[1, 2, 3], Some(2), &[2]), Some(1));
        assert_eq!(via(&[1, 2, 3], None, &[1]), Some(2));
        // A leader that is not live (paused, killed) is not asked.
        assert_eq!(via(&[1, 3], Some(2), &[]), Some(1));
        assert_eq!(via(&[2], Some(2), &[2]), None);
    }

    #[test]
    fn answers_are_done_gone_or_worth_another_look() {
        let s = |c: u16| Reply::Status(c, json!({"error": {"message": "m"}}));
        assert_eq!(answer(&s(201), 201), Answer::Done);
        assert_eq!(answer(&s(200), 200), Answer::Done);
        assert_eq!(answer(&s(404), 200), Answer::NotMember);
        // 404 to an add is no success.
        assert!(matches!(answer(&s(404), 201), Answer::Retry(_)));
        assert_eq!(answer(&s(504), 201), Answer::Retry("504 m".into()));
        assert!(matches!(answer(&s(409), 201), Answer::Retry(_)));
        assert!(matches!(answer(&s(200), 201), Answer::Retry(_)));
        assert!(matches!(
            answer(&Reply::Unknown("t".into()), 200),
            Answer::Retry(_)
        ));
        assert!(matches!(
            answer(&Reply::Refused("r".into()), 201),
            Answer::Retry(_)
        ));
    }

    #[test]
    fn members_and_voters_come_from_the_cluster_view() {
        let v = json!({"members": [
            {"id": 1, "voter": true, "role": "leader"},
            {"id": 3, "voter": true, "role": "follower"},
            {"id": 4, "voter": false, "role": "learner"},
        ]});
        let (all, voters) = members_of(&v).unwrap();
        assert_eq!(all.into_iter().collect::<Vec<_>>(), [1, 3, 4]);
        assert_eq!(voters.into_iter().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(members_of(&json!({})), None);
        assert_eq!(members_of(&json!({"members": [{"voter": true}]})), None);
    }

    #[test]
    fn a_removed_node_must_exit_zero_by_itself() {
        let d = |status: &str, clean| Departure {
            node: 2,
            t: 2_500_000,
            status: status.into(),
            clean,
        };
        assert_eq!(
            judge_exit(Some(&d("exit status: 0", true)), 1_000_000),
            Ok("exited 0 1.5 s after its removal".into())
        );
        let e = judge_exit(Some(&d("exit status: 1", false)), 1_000_000).unwrap_err();
        assert!(e.contains("exit status: 1"), "{e}");
        let e = judge_exit(None, 0).unwrap_err();
        assert!(e.contains("still running"), "{e}");
    }

    fn view(voters: Option<&[u64]>) -> NodeView {
        NodeView {
            jobs: Some(BTreeMap::new()),
            leader: Some((1, 1)),
            voters: voters.map(<[u64]>::to_vec),
        }
    }

    #[test]
    fn owed_nodes_are_the_members_at_the_end() {
        let views: BTreeMap<u64, NodeView> =
            [(1, view(None)), (3, view(None)), (4, view(None))].into();
        let ids = |o: Vec<(u64, Option<&NodeView>)>| {
            o.into_iter()
                .map(|(n, v)| (n, v.is_some()))
                .collect::<Vec<_>>()
        };
        // 2 was replaced by 4: 4 owes everything, 2 nothing.
        assert_eq!(
            ids(owed_nodes(&[1, 3, 4], &views)),
            [(1, true), (3, true), (4, true)]
        );
        // A member whose view is missing is still owed (and shows as unread).
        assert_eq!(
            ids(owed_nodes(&[4, 1, 5], &views)),
            [(1, true), (4, true), (5, false)]
        );
        // A view of a node that is no member owes nothing.
        assert_eq!(ids(owed_nodes(&[1, 3], &views)), [(1, true), (3, true)]);
        // An older run without members: every node read.
        assert_eq!(
            ids(owed_nodes(&[], &views)),
            [(1, true), (3, true), (4, true)]
        );
    }

    #[test]
    fn the_membership_at_the_end_is_three_voters_named_alike() {
        let good: BTreeMap<u64, NodeView> = [
            (1, view(Some(&[1, 3, 4]))),
            (3, view(Some(&[1, 3, 4]))),
            (4, view(Some(&[1, 3, 4]))),
        ]
        .into();
        assert!(membership_problems(&[4, 1, 3], &good, 3).is_empty());
        // Four members (a removal that never happened).
        assert_eq!(membership_problems(&[1, 2, 3, 4], &good, 3).len(), 4);
        // One node names other voters.
        let mut bad = good.clone();
        bad.insert(3, view(Some(&[1, 2, 3])));
        let p = membership_problems(&[1, 3, 4], &bad, 3);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0]["node"], 3);
        // Unread voters are a problem; an older run (no members) is unchecked.
        bad.insert(3, view(None));
        assert_eq!(membership_problems(&[1, 3, 4], &bad, 3).len(), 1);
        assert!(membership_problems(&[], &bad, 3).is_empty());
    }
}

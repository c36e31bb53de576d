//! Checker 1, durability: every job whose create was acknowledged and that no delete may have
//! removed is present at the end on every node that is a member then (`owed_nodes`: a node
//! that joined owes everything, one that was removed nothing) (Jepsen's set checker: lost vs recovered). Jobs
//! whose create had an unknown outcome may be present ("recovered") or absent. A job present that
//! nobody ever tried to create is a phantom.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::model::Timeline;
use super::{Input, Verdict};
use crate::membership::owed_nodes;

pub fn check(input: &Input, timelines: &BTreeMap<String, Timeline>) -> Verdict {
    let mut v = Verdict::new("durability");
    let (mut lost, mut recovered, mut acked, mut phantom) = (0u64, 0u64, 0u64, 0u64);
    let created: BTreeSet<&str> = input
        .ops
        .iter()
        .filter(|o| o.f == "create")
        .filter_map(|o| o.job.as_deref())
        .collect();
    if input.final_state.nodes.is_empty() {
        v.unknown();
        v.summary = "no final state was read".into();
        return v;
    }
    // Owed by the members at the end (ids change with the membership fault).
    for (node, view) in owed_nodes(&input.final_state.members, &input.final_state.nodes) {
        let Some(jobs) = view.and_then(|view| view.jobs.as_ref()) else {
            v.unknown();
            v.example(json!({"node": node, "problem": "final read failed"}));
            continue;
        };
        for (id, tl) in timelines {
            let present = jobs.contains_key(id);
            if tl.created_ok.is_some() && tl.delete_maybe.is_none() {
                acked += 1;
                if !present {
                    lost += 1;
                    v.invalid();
                    v.example(json!({"lost": id, "node": node, "create_acked_at": tl.created_ok}));
                }
            } else if tl.created_info && present {
                recovered += 1;
            }
        }
        for id in jobs.keys() {
            if !created.contains(id.as_str()) {
                phantom += 1;
                v.invalid();
                v.example(json!({"phantom": id, "node": node}));
            }
        }
    }
    v.count("acknowledged_checks", acked);
    v.count("lost", lost);
    v.count("recovered_unacknowledged", recovered);
    v.count("phantom", phantom);
    v.summary = format!(
        "{lost} lost of {acked} (job, node) pairs owed; {recovered} unacknowledged creates recovered; {phantom} phantoms"
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::model::timelines;
    use crate::check::testkit::*;
    use crate::check::{NodeView, Validity};
    use crate::history::Type;

    fn with_final(ops: Vec<crate::history::Op>, sets: &[(u64, &[&str])]) -> Input {
        let mut i = input(ops, vec![], T0 + 100 * S);
        for (n, ids) in sets {
            i.final_state.nodes.insert(
                *n,
                NodeView {
                    jobs: Some(ids.iter().map(|s| (s.to_string(), false)).collect()),
                    leader: Some((1, 1)),
                    voters: None,
                },
            );
        }
        i
    }

    #[test]
    fn present_everywhere_is_valid_and_an_unacked_create_may_vanish() {
        let ops = vec![
            create_every("a", T0, T0, 1),
            create_at("b", T0, T0 + 5 * S, Type::Info),
        ];
        let i = with_final(ops.clone(), &[(1, &["a"]), (2, &["a", "b"])]);
        let v = check(&i, &timelines(&ops));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["recovered_unacknowledged"], 1);
    }

    #[test]
    fn an_acknowledged_job_missing_on_one_node_is_lost() {
        let ops = vec![create_every("a", T0, T0, 1)];
        let i = with_final(ops.clone(), &[(1, &["a"]), (2, &[])]);
        let v = check(&i, &timelines(&ops));
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.counts["lost"], 1);
    }

    /// Node 2 was replaced by node 4: 4 owes every acknowledged job, 2 (not a member, maybe
    /// still read) nothing; a member never read is unknown, not passed.
    #[test]
    fn the_members_at_the_end_owe_every_acknowledged_job() {
        let ops = vec![create_every("a", T0, T0, 1), create_every("b", T0, T0, 1)];
        let tl = timelines(&ops);
        let mut i = with_final(
            ops.clone(),
            &[
                (1, &["a", "b"]),
                (2, &[]),
                (3, &["a", "b"]),
                (4, &["a", "b"]),
            ],
        );
        i.final_state.members = vec![1, 3, 4];
        let v = check(&i, &tl);
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["acknowledged_checks"], 6);
        // The new node lacks a job: lost.
        let mut j = with_final(
            ops.clone(),
            &[(1, &["a", "b"]), (3, &["a", "b"]), (4, &["a"])],
        );
        j.final_state.members = vec![1, 3, 4];
        let v = check(&j, &tl);
        assert_eq!(
            (v.valid, v.counts["lost"].clone()),
            (Validity::Invalid, 1.into())
        );
        // A member with no final view.
        j.final_state.members = vec![1, 3, 5];
        j.final_state.nodes.remove(&4);
        assert_eq!(check(&j, &tl).valid, Validity::Unknown);
    }

    #[test]
    fn a_deleted_job_may_be_gone_and_a_phantom_is_caught() {
        let ops = vec![
            create_every("a", T0, T0, 1),
            op(
                "delete",
                "a",
                T0 + S,
                T0 + 2 * S,
                Type::Info,
                serde_json::json!({}),
            ),
        ];
        let i = with_final(ops.clone(), &[(1, &[])]);
        assert_eq!(check(&i, &timelines(&ops)).valid, Validity::Valid);
        let i = with_final(ops.clone(), &[(1, &["zzz"])]);
        assert_eq!(check(&i, &timelines(&ops)).valid, Validity::Invalid);
    }
}

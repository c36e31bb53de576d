//! Checkers 7-9, about the run as a whole. Convergence: after healing there is one leader that
//! every node names, every node holds the same job set, every node names the same voters — the
//! harness's members, three of them (membership changes heal) — and a fresh job fires. Coverage: the
//! required faults were really installed, no fault failed to install, and the run carried enough
//! load — otherwise the run is rejected, not passed. Crashes: no node panicked, exited on its
//! own, or failed to stop cleanly on SIGTERM.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::model::Timeline;
use super::{Input, Verdict};
use crate::history::Type;

pub fn convergence(input: &Input) -> Verdict {
    let mut v = Verdict::new("convergence");
    let f = &input.final_state;
    let leaders: BTreeSet<Option<u64>> =
        f.nodes.values().map(|n| n.leader.map(|(l, _)| l)).collect();
    let one_leader = leaders.len() == 1 && leaders.iter().all(Option::is_some);
    if !one_leader {
        v.invalid();
        v.example(json!({"leaders_named": leaders.iter().collect::<Vec<_>>()}));
    }
    let sets: Vec<Option<&BTreeMap<String, bool>>> =
        f.nodes.values().map(|n| n.jobs.as_ref()).collect();
    let all_read = !sets.is_empty() && sets.iter().all(Option::is_some);
    let same = all_read && sets.windows(2).all(|w| w[0] == w[1]);
    if !all_read {
        v.unknown();
    } else if !same {
        v.invalid();
        let sizes: Vec<usize> = sets.iter().flatten().map(|s| s.len()).collect();
        v.example(json!({"job_sets_differ": sizes}));
    }
    match f.stale_sets_equal {
        Some(true) => {}
        Some(false) => {
            v.invalid();
            v.example(json!({"local_state_differs": f.stale_sets_detail}));
        }
        None => v.unknown(),
    }
    // Membership: the same voters named everywhere, the harness's members, three of them.
    let membership =
        crate::membership::membership_problems(&f.members, &f.nodes, f.expected_voters);
    let membership_ok = membership.is_empty();
    for p in membership {
        v.invalid();
        v.example(json!({"membership": p}));
    }
    let fresh_ok = f.fresh_created && f.fresh_delivered_after_us.is_some();
    if !fresh_ok {
        v.invalid();
        v.example(json!({"fresh_job": f.fresh_job, "created": f.fresh_created, "delivered": f.fresh_delivered_after_us.is_some()}));
    }
    v.count("one_leader", one_leader);
    v.count("members", json!(f.members));
    v.count("membership_agrees", membership_ok);
    v.count("job_sets_equal", same);
    v.count("local_sets_equal", json!(f.stale_sets_equal));
    v.count(
        "fresh_job_delivered_after_ms",
        json!(f.fresh_delivered_after_us.map(|x| x / 1000)),
    );
    v.summary = format!(
        "one leader: {one_leader}; same jobs everywhere: {same} (local: {:?}); voters {:?} named alike: {membership_ok}; fresh job fired: {fresh_ok}",
        f.stale_sets_equal, f.members
    );
    v
}

pub fn coverage(input: &Input, timelines: &BTreeMap<String, Timeline>) -> Verdict {
    let mut v = Verdict::new("coverage");
    let mut installed: BTreeMap<String, u64> = BTreeMap::new();
    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0u64;
    for e in input.nemesis.iter().filter(|e| e.phase == "start") {
        match e.outcome.as_str() {
            "installed" => *installed.entry(e.fault.name()).or_default() += 1,
            "failed" => {
                failed += 1;
                v.invalid();
                v.example(json!({"fault_failed": e.fault.name(), "detail": e.detail}));
            }
            _ => *skipped.entry(e.fault.name()).or_default() += 1,
        }
    }
    // A fault that started but could not finish what it does (a membership change that did
    // not go through) fails the run as one that could not be installed.
    for e in input
        .nemesis
        .iter()
        .filter(|e| e.phase == "stop" && e.outcome == "failed")
    {
        failed += 1;
        v.invalid();
        v.example(json!({"fault_failed": e.fault.name(), "detail": e.detail}));
    }
    for k in &input.params.required_faults {
        if !installed.contains_key(&k.name()) {
            v.invalid();
            v.example(json!({"required_fault_never_installed": k.name()}));
        }
    }
    let ok_ops = input.ops.iter().filter(|o| o.typ == Type::Ok).count();
    if ok_ops < input.params.min_ok_ops {
        v.invalid();
        v.example(json!({"too_few_ok_ops": ok_ops, "floor": input.params.min_ok_ops}));
    }
    let runs: BTreeSet<&str> = input
        .deliveries
        .iter()
        .map(|d| d.webhook_id.as_str())
        .collect();
    if runs.len() < input.params.min_due_runs {
        v.invalid();
        v.example(
            json!({"too_few_runs_delivered": runs.len(), "floor": input.params.min_due_runs}),
        );
    }
    let mut by_f: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for o in &input.ops {
        let e = by_f.entry(o.f.clone()).or_default();
        match o.typ {
            Type::Ok => e[0] += 1,
            Type::Fail => e[1] += 1,
            _ => e[2] += 1,
        }
    }
    v.count("installed", json!(installed));
    v.count("skipped", json!(skipped));
    v.count("failed_to_install", failed);
    v.count("ok_ops", ok_ops as u64);
    v.count("ops_ok_fail_info", json!(by_f));
    v.count("jobs", timelines.len() as u64);
    v.count("runs_delivered", runs.len() as u64);
    v.count("network", json!(input.final_state.network));
    v.summary = format!(
        "installed {installed:?}; skipped {skipped:?}; {failed} failed; {ok_ops} ok ops; {} runs delivered; network: {}",
        runs.len(),
        input.final_state.network
    );
    v
}

pub fn crashes(input: &Input) -> Verdict {
    let mut v = Verdict::new("crashes");
    let c = &input.crashes;
    for (node, line) in c.panics.iter() {
        v.invalid();
        v.example(json!({"panic": node, "line": line}));
    }
    for e in &c.unexpected_exits {
        v.invalid();
        v.example(json!({"exited_on_its_own": e.node, "status": e.status, "t": crate::history::rfc3339_us(e.t)}));
    }
    for (node, why) in &c.unclean_stops {
        v.invalid();
        v.example(json!({"unclean_stop": node, "why": why}));
    }
    for (node, why) in &c.not_stopped_after_removal {
        v.invalid();
        v.example(json!({"not_stopped_after_removal": node, "why": why}));
    }
    v.count("panics", c.panics.len() as u64);
    v.count("unexpected_exits", c.unexpected_exits.len() as u64);
    v.count("unclean_stops", c.unclean_stops.len() as u64);
    v.count(
        "not_stopped_after_removal",
        c.not_stopped_after_removal.len() as u64,
    );
    v.summary = format!(
        "{} panics, {} unexpected exits, {} unclean stops, {} removed nodes not stopped",
        c.panics.len(),
        c.unexpected_exits.len(),
        c.unclean_stops.len(),
        c.not_stopped_after_removal.len()
    );
    v
}

/// Finds panic lines in a node log.
pub fn panics_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("panicked at"))
        .take(16)
        .map(|l| l.chars().take(300).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::model::timelines;
    use crate::check::testkit::*;
    use crate::check::{NodeView, Params, Validity};
    use crate::cluster::UnexpectedExit;
    use crate::nemesis::{Event, Kind};

    fn healthy() -> Input {
        let mut i = input(vec![], vec![], T0);
        for n in 1..=3 {
            i.final_state.nodes.insert(
                n,
                NodeView {
                    jobs: Some([("a".to_string(), false)].into_iter().collect()),
                    leader: Some((2, 5)),
                    voters: Some(vec![1, 2, 3]),
                },
            );
        }
        i.final_state.stale_sets_equal = Some(true);
        i.final_state.fresh_created = true;
        i.final_state.fresh_delivered_after_us = Some(2_100_000);
        i.final_state.members = vec![1, 2, 3];
        i.final_state.expected_voters = 3;
        i
    }

    #[test]
    fn convergence_needs_one_leader_same_sets_and_a_fresh_fire() {
        assert_eq!(convergence(&healthy()).valid, Validity::Valid);
        let mut i = healthy();
        i.final_state.nodes.get_mut(&3).unwrap().leader = Some((3, 6));
        assert_eq!(convergence(&i).valid, Validity::Invalid);
        let mut i = healthy();
        i.final_state.nodes.get_mut(&1).unwrap().jobs = Some(BTreeMap::new());
        assert_eq!(convergence(&i).valid, Validity::Invalid);
        let mut i = healthy();
        i.final_state.fresh_delivered_after_us = None;
        assert_eq!(convergence(&i).valid, Validity::Invalid);
        // A node naming other voters (a membership change seen by only some), or a run ending
        // with two members (a re-add that never happened).
        let mut i = healthy();
        i.final_state.nodes.get_mut(&2).unwrap().voters = Some(vec![1, 3, 4]);
        assert_eq!(convergence(&i).valid, Validity::Invalid);
        let mut i = healthy();
        i.final_state.members = vec![1, 3];
        i.final_state.nodes.remove(&2);
        for n in i.final_state.nodes.values_mut() {
            n.voters = Some(vec![1, 3]);
        }
        assert_eq!(convergence(&i).valid, Validity::Invalid);
    }

    fn started(fault: Kind, outcome: &str) -> Event {
        Event {
            fault,
            phase: "start".into(),
            outcome: outcome.into(),
            targets: vec![1],
            leader: Some(1),
            t: T0,
            detail: String::new(),
            new_leader_after_us: None,
            load: None,
        }
    }

    #[test]
    fn coverage_rejects_a_run_missing_a_required_fault() {
        let mut i = healthy();
        i.params = Params {
            min_ok_ops: 0,
            min_due_runs: 0,
            ..Params::default()
        };
        i.nemesis = Kind::REQUIRED
            .iter()
            .map(|k| started(*k, "installed"))
            .collect();
        assert_eq!(coverage(&i, &timelines(&i.ops)).valid, Validity::Valid);
        i.nemesis[1].outcome = "skipped".into();
        assert_eq!(coverage(&i, &timelines(&i.ops)).valid, Validity::Invalid);
        i.nemesis[1].outcome = "installed".into();
        i.params.min_ok_ops = 10;
        assert_eq!(coverage(&i, &timelines(&i.ops)).valid, Validity::Invalid);
        // A membership fault that started but failed on the way.
        i.params.min_ok_ops = 0;
        i.nemesis.push(started(Kind::Membership, "installed"));
        assert_eq!(coverage(&i, &timelines(&i.ops)).valid, Validity::Valid);
        let mut stop = started(Kind::Membership, "failed");
        stop.phase = "stop".into();
        i.nemesis.push(stop);
        let v = coverage(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.counts["failed_to_install"], 1);
    }

    #[test]
    fn crashes_are_panics_and_exits_nobody_asked_for() {
        let mut i = healthy();
        assert_eq!(crashes(&i).valid, Validity::Valid);
        let log = "INFO ok\nthread 'tokio-runtime-worker' panicked at src/x.rs:1:2:\nboom\n";
        let p = panics_in(log);
        assert_eq!(p.len(), 1);
        i.crashes.panics.push((2, p[0].clone()));
        assert_eq!(crashes(&i).valid, Validity::Invalid);
        let mut i = healthy();
        i.crashes.unexpected_exits.push(UnexpectedExit {
            node: 1,
            t: T0,
            status: "exit status: 1".into(),
        });
        assert_eq!(crashes(&i).valid, Validity::Invalid);
        let mut i = healthy();
        i.crashes
            .not_stopped_after_removal
            .push((2, "still running".into()));
        assert_eq!(crashes(&i).valid, Validity::Invalid);
    }
}

//! Checker 4, duplicates. Every repeat delivery of a webhook-id is classified: a *retry* when no
//! earlier delivery of that run got a 2xx (the sink failed, delayed or dropped it), else
//! *spurious*. Spurious ones outside fault windows are violations; inside they are counted per
//! fault type (a leader change may re-send a run whose outcome was not yet recorded).
//!
//! It also looks for two dispatchers at once — guarantee 5, the lease: with the sender known
//! from its address, deliveries from node A, then B, then A again within `split_brain_span` mean
//! two nodes were sending concurrently; a legitimate hand-over needs an election (longer than
//! that span) each way. And a leader hit by a pause or an isolation must not send a run that fell
//! due after it lost its lease, before it could have been re-elected — what a leader without the
//! lease gate does right after SIGCONT.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::{Input, Verdict};
use crate::history::rfc3339_us;
use crate::nemesis::Kind;
use crate::sink::Delivery;

/// A stopped process decides nothing; this covers clock granularity.
const PAUSE_EPS: i64 = 5_000;
/// The lease lasts less than the election timeout minimum (200 ms; hookd's ends 100 ms after
/// the last quorum ack): a run due this long after the cut must not be sent by the isolated
/// node, however late its send (the gate is checked at or after the due instant).
const LEASE_MAX: i64 = 250_000;
/// A deposed node needs at least an election timeout to lead again.
const REELECT_MIN: i64 = 200_000;

/// How often, in `seq` (one shard's deliveries by receipt time), a node delivered again within
/// `span` of its last delivery after another node's turn came in between: two dispatchers at
/// once. Each is an example in `v`, which turns invalid.
fn interleavings(seq: &[&Delivery], span: i64, v: &mut Verdict) -> u64 {
    let mut split = 0u64;
    let mut last_by_node: HashMap<u64, i64> = HashMap::new();
    let mut prev: Option<&Delivery> = None;
    for d in seq {
        let (Some(from), Some(p)) = (d.from, prev) else {
            prev = Some(d);
            if let Some(f) = d.from {
                last_by_node.insert(f, d.recv);
            }
            continue;
        };
        if p.from != Some(from) {
            // Switching back to `from`: did it deliver shortly before the other node's turn?
            if let Some(&mine) = last_by_node.get(&from) {
                if d.recv - mine <= span && p.recv > mine {
                    split += 1;
                    v.invalid();
                    v.example(json!({
                        "two_dispatchers": [from, p.from],
                        "a_at": rfc3339_us(mine), "b_at": rfc3339_us(p.recv), "a_again_at": rfc3339_us(d.recv),
                        "a_again_run": d.webhook_id, "b_run": p.webhook_id,
                    }));
                }
            }
        }
        last_by_node.insert(from, d.recv);
        prev = Some(d);
    }
    split
}

pub fn check(input: &Input) -> Verdict {
    let mut v = Verdict::new("duplicates");
    let mut by_id: HashMap<&str, Vec<&Delivery>> = HashMap::new();
    for d in &input.deliveries {
        by_id.entry(d.webhook_id.as_str()).or_default().push(d);
    }
    let (mut retries, mut spurious_quiet) = (0u64, 0u64);
    let mut spurious_by_fault: BTreeMap<String, u64> = BTreeMap::new();
    for ds in by_id.values_mut() {
        ds.sort_by_key(|d| d.recv);
        for i in 1..ds.len() {
            let d = ds[i];
            if !ds[..i].iter().any(|e| e.ok) {
                retries += 1;
                continue;
            }
            match input.fault_at(d.recv) {
                Some(w) => *spurious_by_fault.entry(w.fault.name()).or_default() += 1,
                None => {
                    spurious_quiet += 1;
                    v.invalid();
                    v.example(json!({
                        "spurious_outside_faults": d.webhook_id,
                        "first_at": rfc3339_us(ds[0].recv), "first_from": ds[0].from,
                        "again_at": rfc3339_us(d.recv), "again_from": d.from, "attempt": d.attempt,
                    }));
                }
            }
        }
    }
    // Two dispatchers of one shard at once: A, B, A within the span (the shards' leaders send
    // side by side; each shard has one dispatcher at a time).
    let mut by_shard: BTreeMap<u32, Vec<&Delivery>> = BTreeMap::new();
    for d in input.deliveries.iter().filter(|d| d.from.is_some()) {
        let shard = super::shard_of(&d.job_id, input.params.shards);
        by_shard.entry(shard).or_default().push(d);
    }
    let span = input.params.split_brain_span;
    let mut split = 0u64;
    for seq in by_shard.values_mut() {
        seq.sort_by_key(|d| d.recv);
        split += interleavings(seq, span, &mut v);
    }
    // A deposed leader sending: the node hit by a pause or an isolation delivers a run that fell
    // due after it had lost its lease (paused: after the stop; isolated: a lease after the cut),
    // before it could have won an election again (`REELECT_MIN` after the heal). Such a run can
    // only have been decided without the lease gate.
    let mut stale = 0u64;
    for w in &input.windows {
        let (due_after, sent_before) = match w.fault {
            Kind::PauseLeader => (w.start + PAUSE_EPS, w.end + REELECT_MIN),
            Kind::PartitionLeader => (w.start + LEASE_MAX, w.end + REELECT_MIN),
            _ => continue,
        };
        let Some(&target) = w.targets.first() else {
            continue;
        };
        for d in &input.deliveries {
            if d.from == Some(target)
                && d.attempt == 1
                && d.scheduled_at > due_after
                && d.recv >= w.start
                && d.recv < sent_before
            {
                stale += 1;
                v.invalid();
                v.example(json!({
                    "deposed_leader_sent": target, "fault": w.fault.name(),
                    "fault_at": rfc3339_us(w.start), "healed_at": rfc3339_us(w.end),
                    "run": d.webhook_id, "scheduled_at": rfc3339_us(d.scheduled_at), "recv": rfc3339_us(d.recv),
                }));
            }
        }
    }
    let spurious_in_faults: u64 = spurious_by_fault.values().sum();
    v.count("retries", retries);
    v.count("spurious_outside_faults", spurious_quiet);
    v.count("spurious_in_faults", spurious_in_faults);
    v.count("spurious_by_fault", json!(spurious_by_fault));
    v.count("two_dispatchers_at_once", split);
    v.count("deposed_leader_sends", stale);
    v.count("distinct_runs", by_id.len() as u64);
    v.summary = format!(
        "{retries} retries; spurious: {spurious_quiet} outside faults, {spurious_in_faults} in faults {spurious_by_fault:?}; {split} two-dispatcher interleavings; {stale} sends by a deposed leader"
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testkit::*;
    use crate::check::Validity;
    use crate::nemesis::Window;

    fn win(start: i64, end: i64) -> Window {
        window(Kind::PauseLeader, &[1], start, end, None)
    }

    #[test]
    fn a_retry_after_a_failure_is_fine() {
        let mut a = delivery("j", T0, T0 + 1000, false, 1);
        a.attempt = 1;
        let mut b = delivery("j", T0, T0 + S, true, 1);
        b.attempt = 2;
        let i = input(vec![], vec![a, b], T0 + 60 * S);
        let v = check(&i);
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["retries"], 1);
    }

    #[test]
    fn a_repeat_after_a_2xx_is_spurious_outside_faults_and_counted_inside() {
        let a = delivery("j", T0, T0 + 1000, true, 1);
        let b = delivery("j", T0, T0 + 2 * S, true, 2);
        let mut i = input(vec![], vec![a, b], T0 + 60 * S);
        assert_eq!(check(&i).valid, Validity::Invalid);
        i.windows.push(win(T0 + S, T0 + 3 * S));
        let v = check(&i);
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        assert_eq!(v.counts["spurious_by_fault"]["pause-leader"], 1);
    }

    #[test]
    fn an_isolated_leader_sending_a_run_due_after_its_lease_is_caught() {
        let mut i = input(vec![], vec![], T0 + 60 * S);
        i.windows.push(Window {
            fault: Kind::PartitionLeader,
            ..win(T0, T0 + 3 * S)
        });
        // Due within the lease (100 ms after the cut): the isolated node may still send it.
        i.deliveries
            .push(delivery("a", T0 + 100_000, T0 + 101_000, true, 1));
        assert_eq!(check(&i).valid, Validity::Valid, "{:?}", check(&i));
        // Due 280 ms after the cut, claimed before it: sending it needs a lease it lost.
        i.deliveries
            .push(delivery("b", T0 + 280_000, T0 + 281_000, true, 1));
        let v = check(&i);
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.counts["deposed_leader_sends"], 1);
    }

    #[test]
    fn a_paused_leader_sending_a_run_due_during_its_pause_is_caught() {
        let mut i = input(vec![], vec![], T0 + 60 * S);
        i.windows.push(win(T0, T0 + 3 * S)); // pause-leader of node 1
                                             // Due before the stop, arriving late (in flight across the pause): allowed.
        i.deliveries
            .push(delivery("a", T0 - 1000, T0 + 3 * S + 1000, true, 1));
        // The new leader (2) delivering during the pause: fine.
        i.deliveries
            .push(delivery("b", T0 + S, T0 + S + 2000, true, 2));
        assert_eq!(check(&i).valid, Validity::Valid, "{:?}", check(&i));
        // Node 1 sends a run due during its pause right after SIGCONT.
        i.deliveries
            .push(delivery("c", T0 + 2 * S, T0 + 3 * S + 2000, true, 1));
        let v = check(&i);
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.counts["deposed_leader_sends"], 1);
    }

    #[test]
    fn two_nodes_sending_interleaved_are_two_dispatchers() {
        let mut ds = vec![
            delivery("a", T0, T0 + 1000, true, 1),
            delivery("b", T0, T0 + 20_000, true, 2),
            delivery("c", T0, T0 + 40_000, true, 1),
        ];
        let mut i = input(vec![], ds.clone(), T0 + 60 * S);
        i.windows.push(win(T0, T0 + S));
        let v = check(&i);
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.counts["two_dispatchers_at_once"], 1);
        // A clean hand-over (1 → 2, with an election between) is fine.
        ds[2].from = Some(2);
        ds[1].recv = T0 + 700_000;
        ds[2].recv = T0 + 720_000;
        let i = input(vec![], ds, T0 + 60 * S);
        assert_eq!(check(&i).valid, Validity::Valid);
    }

    #[test]
    fn the_leaders_of_two_shards_sending_side_by_side_are_not_two_dispatchers() {
        // Jobs of two different shards (of three), sent by their own leaders, interleaved.
        let (a, b) = ("s00", "s01");
        let shard = |id| crate::check::shard_of(id, 3);
        assert_ne!(shard(a), shard(b));
        let ds = vec![
            delivery(a, T0, T0 + 1000, true, 1),
            delivery(b, T0, T0 + 20_000, true, 2),
            delivery(a, T0 + 10, T0 + 40_000, true, 1),
        ];
        let mut i = input(vec![], ds.clone(), T0 + 60 * S);
        i.params.shards = 3;
        let v = check(&i);
        assert_eq!(v.counts["two_dispatchers_at_once"], 0, "{v:?}");
        // The same deliveries of one shard's jobs are two dispatchers.
        i.params.shards = 1;
        assert_eq!(check(&i).counts["two_dispatchers_at_once"], 1);
    }
}

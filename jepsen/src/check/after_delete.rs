//! Checker 5, after-delete: no attempt of a job starts after its delete or pause was
//! acknowledged (SPEC §4.4). An attempt's arrival at the sink stands for its start, with
//! `after_ack_tol` for the trip. After a pause, the ban lasts until a resume that may have taken
//! effect is invoked (a resume concurrent with the pause lifts it). A run *due* after an
//! acknowledged delete can only have been decided by a stale leader, however early it arrives.

use std::collections::BTreeMap;

use serde_json::json;

use super::model::Timeline;
use super::{Input, Verdict};
use crate::history::rfc3339_us;

pub fn check(input: &Input, timelines: &BTreeMap<String, Timeline>) -> Verdict {
    let mut v = Verdict::new("after_delete");
    let tol = input.params.after_ack_tol;
    let mut by_job: BTreeMap<&str, Vec<&crate::sink::Delivery>> = BTreeMap::new();
    for d in &input.deliveries {
        by_job.entry(d.job_id.as_str()).or_default().push(d);
    }
    let (mut after_delete, mut after_pause, mut due_in_pause, mut bans) = (0u64, 0u64, 0u64, 0u64);
    for tl in timelines.values() {
        let ds = by_job.get(tl.id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(a) = tl.deleted_ok {
            bans += 1;
            for d in ds {
                if d.recv > a + tol || d.scheduled_at > a {
                    after_delete += 1;
                    v.invalid();
                    v.example(json!({
                        "after_delete": tl.id, "delete_acked_at": rfc3339_us(a),
                        "recv": rfc3339_us(d.recv), "scheduled_at": rfc3339_us(d.scheduled_at),
                        "attempt": d.attempt, "from": d.from,
                    }));
                }
            }
        }
        for (p, lifted) in tl.paused_intervals() {
            bans += 1;
            for d in ds {
                let sent_while_paused = d.recv > p + tol && d.recv < lifted;
                // SPEC: runs that fall due while paused are never delivered, not even later.
                let due_while_paused = d.scheduled_at > p && d.scheduled_at < lifted;
                if sent_while_paused || due_while_paused {
                    if sent_while_paused {
                        after_pause += 1;
                    } else {
                        due_in_pause += 1;
                    }
                    v.invalid();
                    v.example(json!({
                        "after_pause": tl.id, "pause_acked_at": rfc3339_us(p),
                        "lifted_at": (lifted != i64::MAX).then(|| rfc3339_us(lifted)),
                        "recv": rfc3339_us(d.recv), "scheduled_at": rfc3339_us(d.scheduled_at),
                        "attempt": d.attempt, "from": d.from,
                        "why": if sent_while_paused { "sent while paused" } else { "due while paused, sent after the resume" },
                    }));
                }
            }
        }
    }
    v.count("acknowledged_deletes_and_pauses", bans);
    v.count("after_delete", after_delete);
    v.count("after_pause", after_pause);
    v.count("due_while_paused_delivered", due_in_pause);
    v.summary = format!(
        "{after_delete} attempts after an acknowledged delete, {after_pause} after an acknowledged pause, {due_in_pause} runs due while paused delivered after the resume ({bans} checked)"
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::model::timelines;
    use crate::check::testkit::*;
    use crate::check::Validity;
    use crate::history::Type;
    use serde_json::json;

    #[test]
    fn attempts_before_the_ack_pass_and_after_it_fail() {
        let mut ops = vec![create_every("a", T0, T0, 1)];
        ops.push(op(
            "delete",
            "a",
            T0 + 5 * S,
            T0 + 5 * S + 1000,
            Type::Ok,
            json!({"status": 204}),
        ));
        let ok = vec![
            delivery("a", T0 + 4 * S, T0 + 4 * S + 1000, true, 1),
            delivery("a", T0 + 5 * S, T0 + 5 * S + 2000, true, 1), // in flight at the ack
        ];
        let i = input(ops.clone(), ok, T0 + 60 * S);
        assert_eq!(check(&i, &timelines(&i.ops)).valid, Validity::Valid);
        let bad = vec![delivery("a", T0 + 6 * S, T0 + 6 * S + 1000, true, 1)];
        let i = input(ops, bad, T0 + 60 * S);
        let v = check(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Invalid);
        assert_eq!(v.counts["after_delete"], 1);
    }

    #[test]
    fn a_run_due_while_paused_must_not_arrive_after_the_resume() {
        let mut ops = vec![create_every("a", T0, T0, 1)];
        ops.push(op(
            "pause",
            "a",
            T0 + 5 * S,
            T0 + 5 * S + 1000,
            Type::Ok,
            json!({"status": 200}),
        ));
        ops.push(op(
            "resume",
            "a",
            T0 + 9 * S,
            T0 + 9 * S + 1000,
            Type::Ok,
            json!({"status": 200}),
        ));
        let bad = vec![delivery("a", T0 + 6 * S, T0 + 9 * S + 2000, true, 1)];
        let i = input(ops, bad, T0 + 60 * S);
        let v = check(&i, &timelines(&i.ops));
        assert_eq!(v.counts["due_while_paused_delivered"], 1);
        assert_eq!(v.valid, Validity::Invalid);
    }

    #[test]
    fn a_pause_bans_attempts_until_the_resume() {
        let mut ops = vec![create_every("a", T0, T0, 1)];
        ops.push(op(
            "pause",
            "a",
            T0 + 5 * S,
            T0 + 5 * S + 1000,
            Type::Ok,
            json!({"status": 200}),
        ));
        ops.push(op(
            "resume",
            "a",
            T0 + 9 * S,
            T0 + 9 * S + 1000,
            Type::Ok,
            json!({"status": 200}),
        ));
        let ok = vec![delivery("a", T0 + 10 * S, T0 + 10 * S + 1000, true, 1)];
        let i = input(ops.clone(), ok, T0 + 60 * S);
        assert_eq!(check(&i, &timelines(&i.ops)).valid, Validity::Valid);
        let bad = vec![delivery("a", T0 + 7 * S, T0 + 7 * S + 1000, true, 2)];
        let i = input(ops, bad, T0 + 60 * S);
        let v = check(&i, &timelines(&i.ops));
        assert_eq!(v.counts["after_pause"], 1);
        assert_eq!(v.valid, Validity::Invalid);
    }

    /// Regression (false "sent while paused" in soak-…-s340149): a resume concurrent with a
    /// pause, answered 1 ms before it, was applied after it; the job stayed active.
    #[test]
    fn a_resume_concurrent_with_the_pause_may_have_lifted_it() {
        let pause = |invoke, complete| {
            op(
                "pause",
                "a",
                invoke,
                complete,
                Type::Ok,
                json!({"status": 200}),
            )
        };
        let resume = |invoke, complete| {
            op(
                "resume",
                "a",
                invoke,
                complete,
                Type::Ok,
                json!({"status": 200}),
            )
        };
        let sent = vec![delivery("a", T0 + 7 * S, T0 + 7 * S + 1000, true, 1)];
        let concurrent = vec![
            create_every("a", T0, T0, 1),
            pause(T0 + 5 * S, T0 + 5 * S + 80_000),
            resume(T0 + 5 * S + 6_000, T0 + 5 * S + 79_000),
        ];
        let i = input(concurrent, sent.clone(), T0 + 60 * S);
        let v = check(&i, &timelines(&i.ops));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
        // A resume over before the pause began lifts nothing.
        let before = vec![
            create_every("a", T0, T0, 1),
            resume(T0 + 4 * S, T0 + 4 * S + 1000),
            pause(T0 + 5 * S, T0 + 5 * S + 80_000),
        ];
        let i = input(before, sent, T0 + 60 * S);
        assert_eq!(check(&i, &timelines(&i.ops)).counts["after_pause"], 1);
    }
}

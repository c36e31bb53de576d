//! Checker 6, linearizable API: per job id, the history of creates, reads, pauses, resumes,
//! deletes — and each list page, read as "present/absent" for every known id in the range the
//! page covers — must be linearizable against a register model (absent | present(paused)).
//! The search is Wing & Gong's with Lowe's memoization: an op may be linearized next only if it
//! was invoked before the earliest completion among the ops not yet linearized. `info` ops
//! complete at infinity and may be left out; `fail` ops and unanswered reads are dropped. Each
//! key has a step budget; exhausting it gives `unknown`, never `valid`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde_json::{json, Value};

use super::{Input, Verdict};
use crate::history::{rfc3339_us, Op, Type};

const BUDGET_STEPS: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum St {
    Absent,
    Present { paused: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eff {
    /// 201: there was nothing.
    Created,
    /// 200: the same definition existed.
    CreateExisted,
    CreateMaybe,
    Read(St),
    /// Some(true) = 204, Some(false) = 404, None = unknown.
    Delete(Option<bool>),
    /// Pause (true) or resume (false); found as for delete.
    SetPaused(bool, Option<bool>),
}

#[derive(Debug, Clone)]
pub struct LinOp {
    pub invoke: i64,
    /// `i64::MAX` for an op whose outcome is unknown.
    pub complete: i64,
    pub eff: Eff,
    pub optional: bool,
    pub label: String,
}

pub fn step(s: St, e: Eff) -> Option<St> {
    use St::*;
    match (e, s) {
        (Eff::Created, Absent) => Some(Present { paused: false }),
        (Eff::Created, _) => None,
        (Eff::CreateExisted, Present { .. }) => Some(s),
        (Eff::CreateExisted, Absent) => None,
        (Eff::CreateMaybe, Absent) => Some(Present { paused: false }),
        (Eff::CreateMaybe, _) => Some(s),
        (Eff::Read(x), _) => (x == s).then_some(s),
        (Eff::Delete(Some(true)), Present { .. }) => Some(Absent),
        (Eff::Delete(Some(true)), Absent) => None,
        (Eff::Delete(Some(false)), Absent) => Some(Absent),
        (Eff::Delete(Some(false)), _) => None,
        (Eff::Delete(None), _) => Some(Absent),
        (Eff::SetPaused(p, Some(true)), Present { .. }) => Some(Present { paused: p }),
        (Eff::SetPaused(_, Some(true)), Absent) => None,
        (Eff::SetPaused(_, Some(false)), Absent) => Some(Absent),
        (Eff::SetPaused(_, Some(false)), _) => None,
        (Eff::SetPaused(p, None), Present { .. }) => Some(Present { paused: p }),
        (Eff::SetPaused(_, None), Absent) => Some(Absent),
    }
}

/// Some(true) linearizable, Some(false) not, None budget exhausted.
pub fn linearizable(ops: &[LinOp], budget: usize) -> Option<bool> {
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let mut memo: HashSet<(Vec<u64>, St)> = HashSet::new();
    let required = ops.iter().filter(|o| !o.optional).count();
    let mut steps = 0usize;
    // Explicit stack of (done set, state, required done count).
    let mut stack: Vec<(Vec<u64>, St, usize)> = vec![(vec![0; words], St::Absent, 0)];
    while let Some((done, s, req_done)) = stack.pop() {
        if req_done == required {
            return Some(true);
        }
        steps += 1;
        if steps > budget {
            return None;
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        let min_complete = (0..n)
            .filter(|&i| !is_done(i))
            .map(|i| ops[i].complete)
            .min()
            .unwrap_or(i64::MAX);
        for (i, op) in ops.iter().enumerate() {
            if is_done(i) || op.invoke > min_complete {
                continue;
            }
            if let Some(s2) = step(s, op.eff) {
                let mut d2 = done.clone();
                d2[i / 64] |= 1 << (i % 64);
                if memo.insert((d2.clone(), s2)) {
                    stack.push((d2, s2, req_done + usize::from(!op.optional)));
                }
            }
        }
    }
    Some(false)
}

fn found(op: &Op, yes: u64) -> Option<bool> {
    match (op.typ, op.status()) {
        (Type::Ok, s) if s == yes => Some(true),
        (Type::Ok, 404) => Some(false),
        _ => None,
    }
}

fn read_state(v: &Value) -> St {
    St::Present {
        paused: v["paused"].as_bool().unwrap_or(false),
    }
}

/// Turns the history into per-key operations.
pub fn per_key(ops: &[Op]) -> BTreeMap<String, Vec<LinOp>> {
    let keys: BTreeSet<String> = ops
        .iter()
        .filter(|o| o.f == "create")
        .filter_map(|o| o.job.clone())
        .collect();
    let mut out: BTreeMap<String, Vec<LinOp>> = BTreeMap::new();
    for op in ops {
        if op.typ == Type::Fail || (op.typ == Type::Info && matches!(op.f.as_str(), "get" | "list"))
        {
            continue;
        }
        let complete = if op.typ == Type::Info {
            i64::MAX
        } else {
            op.complete
        };
        let label = format!("{} {}", op.f, op.result);
        if op.f == "list" {
            if op.status() != 200 {
                continue;
            }
            let page: Vec<(String, bool)> = op.result["jobs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| Some((e[0].as_str()?.to_owned(), e[1].as_bool()?)))
                        .collect()
                })
                .unwrap_or_default();
            let after = op.value["after"].as_str().map(str::to_owned);
            let upper = if op.result["next"].is_null() {
                None
            } else {
                match page.last() {
                    Some((last, _)) => Some(last.clone()),
                    None => continue,
                }
            };
            for k in &keys {
                if after.as_ref().is_some_and(|a| k <= a) || upper.as_ref().is_some_and(|u| k > u) {
                    continue;
                }
                let st = match page.iter().find(|(id, _)| id == k) {
                    Some((_, paused)) => St::Present { paused: *paused },
                    None => St::Absent,
                };
                out.entry(k.clone()).or_default().push(LinOp {
                    invoke: op.invoke,
                    complete,
                    eff: Eff::Read(st),
                    optional: false,
                    label: format!("list(node {}) → {st:?}", op.node),
                });
            }
            continue;
        }
        let Some(job) = &op.job else { continue };
        let eff = match op.f.as_str() {
            "create" => match (op.typ, op.status()) {
                (Type::Ok, 201) => Eff::Created,
                (Type::Ok, 200) => Eff::CreateExisted,
                (Type::Ok, _) => continue,
                _ => Eff::CreateMaybe,
            },
            "get" => match op.status() {
                200 => Eff::Read(read_state(&op.result["job"])),
                404 => Eff::Read(St::Absent),
                _ => continue,
            },
            "delete" => Eff::Delete(found(op, 204)),
            "pause" => Eff::SetPaused(true, found(op, 200)),
            "resume" => Eff::SetPaused(false, found(op, 200)),
            _ => continue,
        };
        out.entry(job.clone()).or_default().push(LinOp {
            invoke: op.invoke,
            complete,
            eff,
            optional: op.typ == Type::Info,
            label: format!("{label} (node {})", op.node),
        });
    }
    for v in out.values_mut() {
        v.sort_by_key(|o| o.invoke);
    }
    out
}

pub fn check(input: &Input) -> Verdict {
    let mut v = Verdict::new("linearizable_api");
    let keys = per_key(&input.ops);
    let (mut ok, mut bad, mut unknown, mut n_ops) = (0u64, 0u64, 0u64, 0u64);
    for (k, ops) in &keys {
        n_ops += ops.len() as u64;
        match linearizable(ops, BUDGET_STEPS) {
            Some(true) => ok += 1,
            Some(false) => {
                bad += 1;
                v.invalid();
                let trace: Vec<Value> = ops
                    .iter()
                    .take(40)
                    .map(|o| {
                        json!(format!(
                            "[{} .. {}] {}",
                            rfc3339_us(o.invoke),
                            if o.complete == i64::MAX {
                                "?".into()
                            } else {
                                rfc3339_us(o.complete)
                            },
                            o.label
                        ))
                    })
                    .collect();
                v.example(json!({"job": k, "ops": trace}));
            }
            None => {
                unknown += 1;
                v.unknown();
            }
        }
    }
    v.count("keys", keys.len() as u64);
    v.count("ops", n_ops);
    v.count("linearizable", ok);
    v.count("not_linearizable", bad);
    v.count("budget_exhausted", unknown);
    v.summary = format!(
        "{ok} of {} keys linearizable, {bad} not, {unknown} unknown ({n_ops} ops)",
        keys.len()
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testkit::*;
    use crate::check::Validity;
    use serde_json::json;

    fn get(job: &str, a: i64, b: i64, present: Option<bool>) -> Op {
        match present {
            Some(p) => op(
                "get",
                job,
                a,
                b,
                Type::Ok,
                json!({"status": 200, "job": {"paused": p}}),
            ),
            None => op("get", job, a, b, Type::Ok, json!({"status": 404})),
        }
    }

    #[test]
    fn a_sequential_valid_history_passes() {
        let ops = vec![
            create_every("a", T0, T0, 1), // ok at T0+10ms
            get("a", T0 + S, T0 + S + 10, Some(false)),
            op(
                "pause",
                "a",
                T0 + 2 * S,
                T0 + 2 * S + 10,
                Type::Ok,
                json!({"status": 200}),
            ),
            get("a", T0 + 3 * S, T0 + 3 * S + 10, Some(true)),
            op(
                "delete",
                "a",
                T0 + 4 * S,
                T0 + 4 * S + 10,
                Type::Ok,
                json!({"status": 204}),
            ),
            get("a", T0 + 5 * S, T0 + 5 * S + 10, None),
        ];
        let v = check(&input(ops, vec![], T0 + 10 * S));
        assert_eq!(v.valid, Validity::Valid, "{v:?}");
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_create_is_caught() {
        let ops = vec![
            create_every("a", T0, T0, 1),
            get("a", T0 + S, T0 + S + 10, None),
        ];
        let v = check(&input(ops, vec![], T0 + 10 * S));
        assert_eq!(v.valid, Validity::Invalid);
        // Concurrent with the create, either answer is fine.
        let ops = vec![
            create_every("a", T0, T0, 1),
            get("a", T0 + 5, T0 + 20_000, None),
        ];
        assert_eq!(
            check(&input(ops, vec![], T0 + 10 * S)).valid,
            Validity::Valid
        );
    }

    #[test]
    fn a_read_of_a_pause_that_was_never_acknowledged_is_fine_and_a_lost_pause_is_not() {
        let ops = vec![
            create_every("a", T0, T0, 1),
            op("pause", "a", T0 + S, T0 + 2 * S, Type::Info, json!({})),
            get("a", T0 + 3 * S, T0 + 3 * S + 10, Some(false)),
            get("a", T0 + 4 * S, T0 + 4 * S + 10, Some(true)),
        ];
        assert_eq!(
            check(&input(ops, vec![], T0 + 10 * S)).valid,
            Validity::Valid
        );
        let ops = vec![
            create_every("a", T0, T0, 1),
            op(
                "pause",
                "a",
                T0 + S,
                T0 + 2 * S,
                Type::Ok,
                json!({"status": 200}),
            ),
            get("a", T0 + 3 * S, T0 + 3 * S + 10, Some(false)),
        ];
        assert_eq!(
            check(&input(ops, vec![], T0 + 10 * S)).valid,
            Validity::Invalid
        );
    }

    #[test]
    fn list_pages_read_every_known_key_in_their_range() {
        let mut list = op(
            "list",
            "",
            T0 + S,
            T0 + S + 10,
            Type::Ok,
            json!({"status": 200, "next": null, "jobs": [["b", false]]}),
        );
        list.job = None;
        list.value = json!({"after": null});
        let ops = vec![
            create_every("a", T0, T0, 1),
            create_every("b", T0, T0, 1),
            list.clone(),
        ];
        let v = check(&input(ops, vec![], T0 + 10 * S));
        assert_eq!(
            v.valid,
            Validity::Invalid,
            "a is missing from a page that covers it"
        );
        list.value = json!({"after": "a"});
        let ops = vec![
            create_every("a", T0, T0, 1),
            create_every("b", T0, T0, 1),
            list,
        ];
        assert_eq!(
            check(&input(ops, vec![], T0 + 10 * S)).valid,
            Validity::Valid
        );
    }

    #[test]
    fn the_budget_gives_unknown_not_valid() {
        let ops: Vec<LinOp> = (0..20)
            .map(|i| LinOp {
                invoke: i,
                complete: 1000,
                eff: Eff::SetPaused(i % 2 == 0, None),
                optional: false,
                label: String::new(),
            })
            .collect();
        let mut all = vec![LinOp {
            invoke: 0,
            complete: 1,
            eff: Eff::Created,
            optional: false,
            label: String::new(),
        }];
        all.extend(ops);
        all.push(LinOp {
            invoke: 2000,
            complete: 2001,
            eff: Eff::Read(St::Absent),
            optional: false,
            label: String::new(),
        });
        assert_eq!(linearizable(&all, 50), None);
    }
}

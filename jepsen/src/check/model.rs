//! What the checkers know about each job from the client history alone: its schedule (and so its
//! due instants), when its create was acknowledged, and the windows in which hookd owed it runs
//! (between an acknowledged create or resume and the next pause or delete that may have taken
//! effect). An `info` pause or delete may take effect at any later time, so from its invocation
//! on nothing more is owed.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::history::{parse_rfc3339_us, Op, Type};

const S: i64 = 1_000_000;

/// A job's schedule, as the workload writes them.
#[derive(Debug, Clone, PartialEq)]
pub enum Sched {
    At(i64),
    Every {
        start: i64,
        period: i64,
        /// `end_at`: no fire after it.
        end: Option<i64>,
    },
    /// `*/N * * * * *`: every whole second divisible by N (N divides 60).
    CronSecStep(i64),
}

fn parse_secs(s: &str) -> Option<i64> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<i64>().ok().map(|v| v * 1000);
    }
    s.strip_suffix('s')?.parse::<i64>().ok().map(|v| v * S)
}

impl Sched {
    pub fn from_json(v: &Value) -> Option<Sched> {
        if let Some(at) = v["at"].as_str() {
            return parse_rfc3339_us(at).map(Sched::At);
        }
        if let Some(every) = v["every"].as_str() {
            let period = parse_secs(every)?;
            let start = parse_rfc3339_us(v["start_at"].as_str()?)?;
            let end = match v["end_at"].as_str() {
                Some(e) => Some(parse_rfc3339_us(e)?),
                None => None,
            };
            return (period > 0).then_some(Sched::Every { start, period, end });
        }
        if let Some(cron) = v["cron"].as_str() {
            let mut fields = cron.split_whitespace();
            let step = fields.next()?.strip_prefix("*/")?.parse::<i64>().ok()?;
            let rest: Vec<&str> = fields.collect();
            if rest.len() == 5 && rest.iter().all(|f| *f == "*") && step > 0 && 60 % step == 0 {
                return Some(Sched::CronSecStep(step));
            }
        }
        None
    }

    /// Due instants in `[lo, hi]`, µs.
    pub fn dues(&self, lo: i64, hi: i64) -> Vec<i64> {
        let mut out = Vec::new();
        if lo > hi {
            return out;
        }
        match *self {
            Sched::At(t) => {
                if (lo..=hi).contains(&t) {
                    out.push(t);
                }
            }
            Sched::Every { start, period, end } => {
                let hi = hi.min(end.unwrap_or(i64::MAX));
                let k0 = if lo <= start {
                    0
                } else {
                    (lo - start + period - 1) / period
                };
                let mut t = start + k0 * period;
                while t <= hi && out.len() < 1_000_000 {
                    out.push(t);
                    t += period;
                }
            }
            Sched::CronSecStep(step) => {
                let p = step * S;
                let mut t = (lo + p - 1).div_euclid(p) * p;
                while t <= hi && out.len() < 1_000_000 {
                    out.push(t);
                    t += p;
                }
            }
        }
        out
    }

    /// Whether `t` is one of the schedule's instants at all (ms precision).
    pub fn is_due(&self, t: i64) -> bool {
        let ms = |x: i64| x.div_euclid(1000);
        match *self {
            Sched::At(a) => ms(a) == ms(t),
            Sched::Every { start, period, end } => {
                t >= start && (t - start) % period < 1000 && end.is_none_or(|e| ms(t) <= ms(e))
            }
            Sched::CronSecStep(step) => t.rem_euclid(step * S) < 1000,
        }
    }
}

/// One job's history.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub id: String,
    pub sched: Option<Sched>,
    /// The URL of its first create.
    pub url: Option<String>,
    /// Completion of the first acknowledged create.
    pub created_ok: Option<i64>,
    /// A create whose outcome is unknown (and none acknowledged).
    pub created_info: bool,
    /// Pause/resume/delete ops in invocation order.
    pub changes: Vec<Op>,
    /// Windows in which runs were owed (before the head start / drain are applied).
    pub owed: Vec<(i64, i64)>,
    /// Acknowledged delete completion.
    pub deleted_ok: Option<i64>,
    /// A delete that may have taken effect (ok or info): its invocation.
    pub delete_maybe: Option<i64>,
}

impl Timeline {
    /// A job aimed at the black-hole target: it is never delivered, and owes the sink nothing.
    pub fn is_blackhole(&self) -> bool {
        self.url
            .as_deref()
            .is_some_and(|u| u.contains(crate::blackhole::PATH))
    }

    /// Intervals from an acknowledged pause to the invocation of the next resume that may have
    /// taken effect (a resume concurrent with the pause makes the interval empty).
    pub fn paused_intervals(&self) -> Vec<(i64, i64)> {
        self.changes
            .iter()
            .filter(|o| o.f == "pause" && o.typ == Type::Ok && o.status() == 200)
            .filter_map(|pause| {
                let p = pause.complete;
                // Any resume not over before the pause began may have taken effect after it.
                let lifted = self
                    .changes
                    .iter()
                    .filter(|o| o.f == "resume" && o.typ != Type::Fail && o.complete > pause.invoke)
                    .map(|o| o.invoke)
                    .min()
                    .unwrap_or(i64::MAX);
                (lifted > p).then_some((p, lifted))
            })
            .collect()
    }
}

/// Builds timelines for every job that appears in a create.
pub fn timelines(ops: &[Op]) -> BTreeMap<String, Timeline> {
    let mut by_job: BTreeMap<String, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if let Some(j) = &op.job {
            by_job.entry(j.clone()).or_default().push(op);
        }
    }
    let mut out = BTreeMap::new();
    for (id, mut ops) in by_job {
        ops.sort_by_key(|o| o.invoke);
        let creates: Vec<&&Op> = ops.iter().filter(|o| o.f == "create").collect();
        let Some(first) = creates.first() else {
            continue;
        };
        let sched = Sched::from_json(&first.value["schedule"]);
        let url = first.value["url"].as_str().map(str::to_owned);
        let created_ok = creates
            .iter()
            .filter(|o| o.typ == Type::Ok)
            .map(|o| o.complete)
            .min();
        let created_info = created_ok.is_none() && creates.iter().any(|o| o.typ == Type::Info);
        let changes: Vec<Op> = ops
            .iter()
            .filter(|o| matches!(o.f.as_str(), "pause" | "resume" | "delete"))
            .map(|o| (*o).clone())
            .collect();
        let deleted_ok = changes
            .iter()
            .filter(|o| o.f == "delete" && o.typ == Type::Ok && o.status() == 204)
            .map(|o| o.complete)
            .min();
        let delete_maybe = changes
            .iter()
            .filter(|o| o.f == "delete" && o.typ != Type::Fail)
            .map(|o| o.invoke)
            .min();
        let mut owed = Vec::new();
        if let Some(c) = created_ok {
            let mut open: Option<i64> = Some(c);
            // Completion of the latest pause that may have applied: a resume invoked before it
            // is concurrent with it and may have been applied first, so it reopens nothing.
            let mut pause_done = i64::MIN;
            for ch in &changes {
                if ch.typ == Type::Fail || (ch.typ == Type::Ok && ch.status() == 404) {
                    continue;
                }
                match (ch.f.as_str(), ch.typ) {
                    ("delete", _) => {
                        if let Some(s) = open.take() {
                            owed.push((s, ch.invoke));
                        }
                        open = None;
                        break;
                    }
                    ("pause", Type::Ok) => {
                        if let Some(s) = open.take() {
                            owed.push((s, ch.invoke));
                        }
                        pause_done = pause_done.max(ch.complete);
                    }
                    ("pause", _) => {
                        // Unknown pause: may apply any time later; nothing more is owed.
                        if let Some(s) = open.take() {
                            owed.push((s, ch.invoke));
                        }
                        open = None;
                        break;
                    }
                    ("resume", Type::Ok) if open.is_none() && ch.invoke > pause_done => {
                        open = Some(ch.complete)
                    }
                    _ => {}
                }
            }
            if let Some(s) = open {
                owed.push((s, i64::MAX));
            }
        }
        out.insert(
            id.clone(),
            Timeline {
                id,
                sched,
                url,
                created_ok,
                created_info,
                changes,
                owed,
                deleted_ok,
                delete_maybe,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{timelines, Sched};
    use crate::check::testkit::*;
    use crate::history::Type;
    use serde_json::json;

    #[test]
    fn schedules_parse_and_enumerate_their_instants() {
        let every =
            Sched::from_json(&json!({"every": "2s", "start_at": "2023-11-14T22:14:00.000Z"}))
                .unwrap();
        let start = 1_700_000_040 * S;
        assert_eq!(
            every,
            Sched::Every {
                start,
                period: 2 * S,
                end: None
            }
        );
        assert_eq!(
            every.dues(start - S, start + 4 * S),
            vec![start, start + 2 * S, start + 4 * S]
        );
        assert_eq!(every.dues(start + 1, start + 3 * S), vec![start + 2 * S]);
        assert!(every.is_due(start + 4 * S) && !every.is_due(start + 3 * S));
        // `end_at` bounds it (the overlap jobs end half a period after their last fire).
        let bounded = Sched::from_json(&json!({"every": "2s", "start_at": "2023-11-14T22:14:00.000Z", "end_at": "2023-11-14T22:14:05.000Z"}))
            .unwrap();
        assert_eq!(
            bounded.dues(start - S, start + 60 * S),
            vec![start, start + 2 * S, start + 4 * S]
        );
        assert!(bounded.is_due(start + 4 * S) && !bounded.is_due(start + 6 * S));
        let cron = Sched::from_json(&json!({"cron": "*/3 * * * * *"})).unwrap();
        assert_eq!(
            cron.dues(start + 1, start + 6 * S),
            vec![start + 3 * S, start + 6 * S]
        );
        assert!(Sched::from_json(&json!({"cron": "*/7 * * * * *"})).is_none());
        let at = Sched::from_json(&json!({"at": "2023-11-14T22:14:00.000Z"})).unwrap();
        assert_eq!(at.dues(start, start), vec![start]);
    }

    #[test]
    fn owed_windows_close_at_pause_and_delete_and_reopen_at_resume() {
        let t = T0;
        let mut ops = vec![create_every("a", t, t, 1)];
        ops.push(op(
            "pause",
            "a",
            t + 5 * S,
            t + 6 * S,
            Type::Ok,
            json!({"status": 200}),
        ));
        ops.push(op(
            "resume",
            "a",
            t + 8 * S,
            t + 9 * S,
            Type::Ok,
            json!({"status": 200}),
        ));
        ops.push(op(
            "delete",
            "a",
            t + 20 * S,
            t + 21 * S,
            Type::Info,
            json!({}),
        ));
        let tl = timelines(&ops);
        let a = &tl["a"];
        assert_eq!(
            a.owed,
            vec![(t + 10_000, t + 5 * S), (t + 9 * S, t + 20 * S)]
        );
        assert_eq!(a.delete_maybe, Some(t + 20 * S));
        assert_eq!(a.deleted_ok, None);
    }

    /// Regression (false "missed" in smoke-…-s862932): a pause invoked on a partitioned node
    /// completed only after a resume that was invoked later but finished first. The resume may
    /// have applied first, leaving the job paused, so nothing is owed after it.
    #[test]
    fn a_resume_concurrent_with_a_pause_reopens_nothing() {
        let t = T0;
        let mut ops = vec![create_every("a", t, t, 1)];
        let ok = json!({"status": 200});
        ops.push(op("pause", "a", t + 5 * S, t + 8 * S, Type::Ok, ok.clone()));
        ops.push(op(
            "resume",
            "a",
            t + 6 * S,
            t + 6 * S + 3,
            Type::Ok,
            ok.clone(),
        ));
        ops.push(op("resume", "a", t + 20 * S, t + 21 * S, Type::Ok, ok));
        let tl = timelines(&ops);
        assert_eq!(
            tl["a"].owed,
            vec![(t + 10_000, t + 5 * S), (t + 21 * S, i64::MAX)]
        );
    }
}

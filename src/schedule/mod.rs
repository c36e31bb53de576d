//! Schedule kinds and next-fire computation — pure code: no clock reads, no I/O.
//!
//! This module owns the four `schedule` shapes of the job contract (`at`,
//! `after`, `every`, `cron`) once their JSON has been decoded elsewhere:
//! validating them into a [`Schedule`] and answering "when does this job fire
//! next?". The cron dialect and its daylight-saving rules live in
//! [`cron`](self::cron), the fixed-interval arithmetic in [`every`].

mod cron;
mod every;
pub mod spec;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

pub use self::cron::{describe as describe_cron, CronSchedule};
pub use self::every::EVERY_MIN;
pub use self::spec::ScheduleSpec;

/// A schedule input that cannot be accepted, with the JSON path it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ScheduleError {
    /// JSON path of the offending input: "schedule.cron", "schedule.timezone",
    /// "schedule.every", "schedule.after", ...
    pub field: &'static str,
    /// A sentence meant for the user who wrote the schedule.
    pub message: String,
}

impl ScheduleError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Most instants [`Schedule::fires_after`] computes in one call, so a preview
/// request cannot ask for unbounded work.
pub const FIRES_AFTER_MAX: usize = 1000;

/// When a job fires.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Fires once, at this instant.
    Once(DateTime<Utc>),
    /// Fires at anchor + k·period for every integer k ≥ 0 (only instants
    /// strictly after the query count). Nothing fires before the anchor: it is
    /// the `start_at` of the job, or the moment its create was accepted.
    Every {
        anchor: DateTime<Utc>,
        period: Duration,
    },
    /// Fires whenever the wall clock of its time zone matches the expression.
    Cron(CronSchedule),
}

impl Schedule {
    /// `{"at": RFC3339}`: once, at that instant.
    pub fn at(instant: DateTime<Utc>) -> Self {
        Self::Once(instant)
    }

    /// `{"after": DURATION}`: once, `delay` after `accepted_at` (the moment the
    /// create was accepted — passed in, because this module reads no clock).
    pub fn after(accepted_at: DateTime<Utc>, delay: Duration) -> Result<Self, ScheduleError> {
        TimeDelta::from_std(delay)
            .ok()
            .and_then(|delta| accepted_at.checked_add_signed(delta))
            .map(Self::Once)
            .ok_or_else(|| {
                ScheduleError::new("schedule.after", "\"after\" is too far in the future")
            })
    }

    /// `{"every": DURATION, "start_at": RFC3339?}`: `anchor` is `start_at`, or
    /// the moment the create was accepted when `start_at` is absent.
    pub fn every(anchor: DateTime<Utc>, period: Duration) -> Result<Self, ScheduleError> {
        every::validate_period(period)?;
        Ok(Self::Every { anchor, period })
    }

    /// `{"cron": EXPR, "timezone": IANA?}`.
    pub fn cron(expr: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        CronSchedule::parse(expr, timezone).map(Self::Cron)
    }

    /// The first fire instant strictly after `after` (None: never again).
    /// Cheap (microseconds): it runs once per fire on the hot path.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Once(at) => (*at > after).then_some(*at),
            Self::Every { anchor, period } => every::next_after(*anchor, *period, after),
            Self::Cron(cron) => cron.next_after(after),
        }
    }

    /// For an interval schedule, its fires strictly between `after` and `before` counted
    /// without visiting them: (count, first, last), None when there is none. None for the
    /// other kinds too (a one-shot fires once; cron is visited fire by fire).
    pub fn interval_fires_between(
        &self,
        after: DateTime<Utc>,
        before: DateTime<Utc>,
    ) -> Option<(u64, DateTime<Utc>, DateTime<Utc>)> {
        match self {
            Self::Every { anchor, period } => every::between(*anchor, *period, after, before),
            Self::Once(_) | Self::Cron(_) => None,
        }
    }

    /// Up to `count` (capped at [`FIRES_AFTER_MAX`]) successive fires strictly
    /// after `from`, strictly increasing — for the preview route.
    pub fn fires_after(&self, from: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let count = count.min(FIRES_AFTER_MAX);
        let mut fires = Vec::with_capacity(count);
        let mut cursor = from;
        while fires.len() < count {
            match self.next_after(cursor) {
                // Every kind guarantees `next > cursor`; re-checking keeps a
                // bug there from turning into an endless preview loop.
                Some(next) if next > cursor => {
                    fires.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        fires
    }
}

/// The schedule of a job as stored, resolved against `base_ms`: the instant its create (or the
/// last replace that changed the schedule) was accepted. A one-shot in the past is due at `base`;
/// an interval without `start_at` first fires one period after `base`.
pub fn resolve(spec: &ScheduleSpec, base_ms: i64) -> Option<Schedule> {
    let base = DateTime::<Utc>::from_timestamp_millis(base_ms)?;
    match spec {
        ScheduleSpec::At { at_ms } => {
            let at = DateTime::<Utc>::from_timestamp_millis(*at_ms)?;
            Some(Schedule::at(at.max(base)))
        }
        ScheduleSpec::After { after_ms } => {
            Schedule::after(base, Duration::from_millis(*after_ms)).ok()
        }
        ScheduleSpec::Every {
            every_ms,
            start_at_ms,
        } => {
            let period = Duration::from_millis(*every_ms);
            let anchor = match start_at_ms {
                Some(ms) => DateTime::<Utc>::from_timestamp_millis(*ms)?,
                None => base.checked_add_signed(TimeDelta::from_std(period).ok()?)?,
            };
            Schedule::every(anchor, period).ok()
        }
        ScheduleSpec::Cron { expr, timezone } => Schedule::cron(expr, Some(timezone)).ok(),
    }
}

/// A resolved schedule as the dispatcher's index keeps one per job: the one-shot and interval
/// kinds inline in 16 bytes (they depend on the job's base instant, so nothing is shared, and an
/// `Arc<Schedule>` each cost ~70 bytes of heap: 63 MiB at 1M interval jobs), cron schedules
/// shared ([`CronCache`]).
#[derive(Debug, Clone)]
pub enum Compact {
    Once { at_ms: i64 },
    Every { anchor_ms: i64, period_ms: u64 },
    Cron(Arc<Schedule>),
}

impl Compact {
    /// The schedule itself (rebuilt from milliseconds, which is how every stored schedule is
    /// given, so nothing is lost).
    pub fn schedule(&self) -> Option<Cow<'_, Schedule>> {
        Some(match self {
            Self::Once { at_ms } => Cow::Owned(Schedule::Once(
                DateTime::<Utc>::from_timestamp_millis(*at_ms)?,
            )),
            Self::Every {
                anchor_ms,
                period_ms,
            } => Cow::Owned(Schedule::Every {
                anchor: DateTime::<Utc>::from_timestamp_millis(*anchor_ms)?,
                period: Duration::from_millis(*period_ms),
            }),
            Self::Cron(s) => Cow::Borrowed(s),
        })
    }

    /// The compact form of `s` (every stored schedule is in whole milliseconds).
    fn of(s: Schedule) -> Option<Self> {
        Some(match s {
            Schedule::Once(at) => Self::Once {
                at_ms: at.timestamp_millis(),
            },
            Schedule::Every { anchor, period } => Self::Every {
                anchor_ms: anchor.timestamp_millis(),
                period_ms: u64::try_from(period.as_millis()).ok()?,
            },
            s @ Schedule::Cron(_) => Self::Cron(Arc::new(s)),
        })
    }
}

/// Parsed schedules shared between jobs: jobs with the same cron expression and time zone get
/// one `Schedule` (it does not depend on the job, and a parsed cron schedule is the largest part
/// of the dispatcher's entry for a job: 200k jobs of one expression took the leader from 190 to
/// 460 MiB unshared). The other kinds are small and depend on the job's base instant.
#[derive(Default)]
pub struct CronCache {
    crons: HashMap<(String, String), Weak<Schedule>>,
}

impl CronCache {
    /// `resolve(spec, base_ms)`, shared with every live job of the same cron schedule.
    pub fn resolve(&mut self, spec: &ScheduleSpec, base_ms: i64) -> Option<Compact> {
        let ScheduleSpec::Cron { expr, timezone } = spec else {
            return resolve(spec, base_ms).and_then(Compact::of);
        };
        let key = (expr.clone(), timezone.clone());
        if let Some(shared) = self.crons.get(&key).and_then(Weak::upgrade) {
            return Some(Compact::Cron(shared));
        }
        let parsed = Arc::new(resolve(spec, base_ms)?);
        self.crons.insert(key, Arc::downgrade(&parsed));
        Some(Compact::Cron(parsed))
    }

    /// Drops the entries of schedules no job holds any more.
    pub fn forget_unused(&mut self) {
        self.crons.retain(|_, s| s.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron_arc(c: Option<Compact>) -> Arc<Schedule> {
        match c {
            Some(Compact::Cron(s)) => s,
            other => panic!("not a cron schedule: {other:?}"),
        }
    }

    #[test]
    fn jobs_of_one_cron_schedule_share_it_and_others_do_not() {
        let cron = |expr: &str, tz: &str| ScheduleSpec::Cron {
            expr: expr.into(),
            timezone: tz.into(),
        };
        let mut shared = CronCache::default();
        let a = cron_arc(shared.resolve(&cron("0 9 * * 1-5", "Europe/Berlin"), 1));
        let b = cron_arc(shared.resolve(&cron("0 9 * * 1-5", "Europe/Berlin"), 2));
        assert!(Arc::ptr_eq(&a, &b));
        let other_tz = cron_arc(shared.resolve(&cron("0 9 * * 1-5", "UTC"), 1));
        assert!(!Arc::ptr_eq(&a, &other_tz));
        assert!(
            shared.resolve(&cron("0 0 30 2 *", "UTC"), 0).is_none(),
            "never fires"
        );

        drop((a, b));
        shared.forget_unused();
        assert_eq!(shared.crons.len(), 1, "only the UTC one is still held");
        let again = shared.resolve(&cron("0 9 * * 1-5", "Europe/Berlin"), 3);
        assert!(again.is_some(), "parsed anew");
    }

    #[test]
    fn the_compact_form_fires_exactly_as_the_resolved_schedule() {
        let base = 1_764_547_200_123; // 2025-12-01T00:00:00.123Z
        let specs = [
            ScheduleSpec::At {
                at_ms: base + 5_000,
            },
            ScheduleSpec::At {
                at_ms: base - 5_000,
            }, // in the past: due at base
            ScheduleSpec::After { after_ms: 90_001 },
            ScheduleSpec::Every {
                every_ms: 1_000,
                start_at_ms: None,
            },
            ScheduleSpec::Every {
                every_ms: 86_400_007,
                start_at_ms: Some(base - 3_600_001),
            },
            ScheduleSpec::Cron {
                expr: "*/5 * * * *".into(),
                timezone: "Europe/Berlin".into(),
            },
        ];
        let mut shared = CronCache::default();
        let from = DateTime::<Utc>::from_timestamp_millis(base - 10_000).unwrap();
        for spec in &specs {
            let full = resolve(spec, base).unwrap();
            let compact = shared.resolve(spec, base).unwrap();
            let back = compact.schedule().unwrap();
            assert_eq!(
                back.fires_after(from, 50),
                full.fires_after(from, 50),
                "{spec:?}"
            );
            let shared_kind = matches!(compact, Compact::Cron(_));
            assert_eq!(shared_kind, matches!(spec, ScheduleSpec::Cron { .. }));
        }
        assert!(std::mem::size_of::<Compact>() <= 24);
    }
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn once_fires_only_strictly_after() {
        let at = utc(2025, 6, 1, 12, 0, 0);
        let once = Schedule::at(at);
        assert_eq!(once.next_after(at - TimeDelta::seconds(1)), Some(at));
        assert_eq!(once.next_after(at), None);
        assert_eq!(once.next_after(at + TimeDelta::seconds(1)), None);
        assert_eq!(once.fires_after(utc(2000, 1, 1, 0, 0, 0), 5), vec![at]);
    }

    #[test]
    fn after_adds_the_delay_to_the_acceptance_instant() {
        let accepted = utc(2025, 6, 1, 12, 0, 0);
        let once = Schedule::after(accepted, Duration::from_secs(90)).unwrap();
        assert_eq!(once.next_after(accepted), Some(utc(2025, 6, 1, 12, 1, 30)));
        let err = Schedule::after(accepted, Duration::from_secs(u64::MAX)).unwrap_err();
        assert_eq!(err.field, "schedule.after");
    }

    #[test]
    fn every_constructor_validates_the_period() {
        let anchor = utc(2025, 1, 1, 0, 0, 0);
        let err = Schedule::every(anchor, Duration::from_millis(999)).unwrap_err();
        assert_eq!(err.field, "schedule.every");
        assert!(Schedule::every(anchor, EVERY_MIN).is_ok());
    }

    #[test]
    fn cron_constructor_reports_field_paths() {
        let err = Schedule::cron("* * * *", None).unwrap_err();
        assert_eq!(err.field, "schedule.cron");
        let err = Schedule::cron("* * * * *", Some("Mars/Base")).unwrap_err();
        assert_eq!(err.field, "schedule.timezone");
    }

    #[test]
    fn fires_after_is_strictly_increasing_and_respects_count() {
        let from = utc(2025, 3, 8, 0, 0, 0);
        let schedules = [
            Schedule::every(from, Duration::from_secs(7)).unwrap(),
            Schedule::cron("*/20 * * * *", Some("America/New_York")).unwrap(),
            Schedule::cron("30 2 * * *", Some("America/New_York")).unwrap(),
            Schedule::at(from + TimeDelta::hours(1)),
        ];
        for schedule in &schedules {
            for count in [0, 1, 3, 200] {
                let fires = schedule.fires_after(from, count);
                assert!(fires.len() <= count, "{schedule:?}");
                assert!(fires.first().is_none_or(|f| *f > from));
                assert!(fires.windows(2).all(|w| w[0] < w[1]), "{schedule:?}");
                if !matches!(schedule, Schedule::Once(_)) {
                    assert_eq!(fires.len(), count, "{schedule:?}");
                }
            }
        }
        let huge = schedules[0].fires_after(from, usize::MAX);
        assert_eq!(huge.len(), FIRES_AFTER_MAX);
    }
}

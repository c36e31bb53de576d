//! Fixed-interval schedules (`{"every": DURATION, "start_at": RFC3339?}`):
//! period validation and the anchor + k·period arithmetic.
//!
//! The arithmetic runs in `i128` nanoseconds so that any anchor, any query
//! instant and any `Duration` chrono can represent stay exact and cannot
//! overflow; an instant beyond chrono's range means "never again".

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::ScheduleError;

/// Shortest accepted `every` period.
pub const EVERY_MIN: Duration = Duration::from_secs(1);

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Rejects periods shorter than [`EVERY_MIN`].
pub(super) fn validate_period(period: Duration) -> Result<(), ScheduleError> {
    if period < EVERY_MIN {
        return Err(ScheduleError::new(
            "schedule.every",
            format!("\"every\" must be at least 1s (got {period:?})"),
        ));
    }
    Ok(())
}

/// First `anchor + k·period` (k ≥ 0) strictly after `after`.
pub(super) fn next_after(
    anchor: DateTime<Utc>,
    period: Duration,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if after < anchor {
        return Some(anchor);
    }
    let period_nanos = i128::try_from(period.as_nanos()).ok()?;
    if period_nanos == 0 {
        // Unreachable through `Schedule::every`; a zero period fires only once.
        return None;
    }
    let elapsed = nanos(after) - nanos(anchor);
    let k = elapsed / period_nanos + 1;
    from_nanos(nanos(anchor) + k * period_nanos)
}

/// The fires `anchor + k·period` strictly after `after` and strictly before `before`: how many,
/// the first and the last (None when there is none). Arithmetic, however many there are.
pub(super) fn between(
    anchor: DateTime<Utc>,
    period: Duration,
    after: DateTime<Utc>,
    before: DateTime<Utc>,
) -> Option<(u64, DateTime<Utc>, DateTime<Utc>)> {
    let first = next_after(anchor, period, after)?;
    if first >= before {
        return None;
    }
    let period_nanos = i128::try_from(period.as_nanos()).ok().filter(|p| *p > 0)?;
    let (a, f, b) = (nanos(anchor), nanos(first), nanos(before));
    // The last k with a + k·p < b, and the first one's k.
    let k_last = (b - a - 1).div_euclid(period_nanos);
    let k_first = (f - a).div_euclid(period_nanos);
    let count = u64::try_from(k_last - k_first + 1).ok()?;
    Some((count, first, from_nanos(a + k_last * period_nanos)?))
}

fn nanos(instant: DateTime<Utc>) -> i128 {
    i128::from(instant.timestamp()) * NANOS_PER_SEC + i128::from(instant.timestamp_subsec_nanos())
}

fn from_nanos(total: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(total.div_euclid(NANOS_PER_SEC)).ok()?;
    let subsec = u32::try_from(total.rem_euclid(NANOS_PER_SEC)).ok()?;
    DateTime::from_timestamp(secs, subsec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn before_the_anchor_yields_the_anchor() {
        let anchor = utc(2025, 1, 1, 0, 0, 0);
        let period = Duration::from_secs(3600);
        assert_eq!(
            next_after(anchor, period, utc(2024, 1, 1, 0, 0, 0)),
            Some(anchor)
        );
        let just_before = anchor - TimeDelta::nanoseconds(1);
        assert_eq!(next_after(anchor, period, just_before), Some(anchor));
    }

    #[test]
    fn exactly_on_a_fire_yields_the_next_one() {
        let anchor = utc(2025, 1, 1, 0, 0, 0);
        let period = Duration::from_secs(3600);
        assert_eq!(
            next_after(anchor, period, anchor),
            Some(utc(2025, 1, 1, 1, 0, 0))
        );
        let on_third = utc(2025, 1, 1, 3, 0, 0);
        assert_eq!(
            next_after(anchor, period, on_third),
            Some(utc(2025, 1, 1, 4, 0, 0))
        );
    }

    #[test]
    fn fires_stay_aligned_to_the_anchor() {
        let anchor = utc(2025, 1, 1, 0, 0, 7);
        let period = Duration::from_millis(1500);
        let after = utc(2025, 1, 1, 0, 0, 10);
        // 7 s + 3 × 1.5 s = 11.5 s is the first fire past 10 s.
        let expected = utc(2025, 1, 1, 0, 0, 11) + TimeDelta::milliseconds(500);
        assert_eq!(next_after(anchor, period, after), Some(expected));
        let mid = utc(2025, 1, 1, 0, 0, 11);
        assert_eq!(next_after(anchor, period, mid), Some(expected));
    }

    #[test]
    fn large_k_does_not_overflow() {
        let anchor = utc(1970, 1, 1, 0, 0, 0);
        let period = EVERY_MIN;
        let far = utc(9999, 12, 31, 23, 59, 58);
        assert_eq!(
            next_after(anchor, period, far),
            Some(far + TimeDelta::seconds(1))
        );
        // The next fire lies beyond chrono's range: never again, no panic.
        assert_eq!(next_after(anchor, period, DateTime::<Utc>::MAX_UTC), None);
        let huge = Duration::from_secs(u64::MAX);
        assert_eq!(next_after(anchor, huge, anchor), None);
        let min = DateTime::<Utc>::MIN_UTC;
        assert_eq!(
            next_after(min, Duration::new(u64::MAX, 999_999_999), min),
            None
        );
    }

    #[test]
    fn periods_below_one_second_are_rejected() {
        assert!(validate_period(Duration::ZERO).is_err());
        assert!(validate_period(Duration::from_millis(999)).is_err());
        assert!(validate_period(Duration::from_secs(1)).is_ok());
        let err = validate_period(Duration::from_millis(10)).unwrap_err();
        assert_eq!(err.field, "schedule.every");
        assert!(err.message.contains("at least 1s"), "{}", err.message);
    }
}

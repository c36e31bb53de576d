//! Cron schedules (`{"cron": EXPR, "timezone": IANA?}`): the crontab dialect of
//! the job contract, adapted onto the `cron` crate, and the daylight-saving
//! rules of the contract.
//!
//! Dialect: 5 fields (minute hour day-of-month month day-of-week) or 6 with
//! seconds first; `*`, lists, ranges, `*/step` and `a-b/step`; month names
//! jan..dec and weekday names sun..sat (any case); weekday `0` and `7` are
//! Sunday; when day-of-month and day-of-week are both restricted (neither
//! starts with `*`) a day matches if either matches (Vixie cron); the
//! `@yearly`-style shorthands. Validation is done here, field by field, so
//! that errors read well; the normalised expression is then parsed by the
//! `cron` crate, which computes every fire time.
//!
//! The `cron` crate differs from that dialect (seconds required, Sunday = 1,
//! day fields AND-ed) and has no usable DST story, so it only ever walks the
//! *wall clock* (naive local time, presented to it as UTC where no time is
//! missing or repeated). This module maps wall-clock fires to instants:
//! - a wall time inside a spring-forward gap fires at the first instant after
//!   the gap (several gap times collapse into that one fire);
//! - a wall time inside a fall-back overlap fires at both of its instants when
//!   the hour field is `*` or a step, otherwise once, at the first.
//!
//! All searches start from a strictly increasing UTC cursor, so the answer is
//! always the first fire strictly after the query.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeDelta,
    TimeZone, Utc,
};
use chrono_tz::Tz;

use super::ScheduleError;

const CRON_FIELD: &str = "schedule.cron";
const TIMEZONE_FIELD: &str = "schedule.timezone";

/// The `cron` crate only knows the years 1970..=2100; a wall clock past this
/// never fires again (and stays clear of chrono's range limits).
const LAST_YEAR: i32 = 2100;

/// 1969-01-01T00:00:00Z: earlier queries start here (see `candidate_after`).
const FIRST_QUERY: i64 = -365 * 24 * 3600;

/// How far a gap search looks ahead. Real zones skip at most a day
/// (Pacific/Apia, 2011-12-30), so two days leave a margin.
const GAP_SEARCH_SECONDS: i64 = 2 * 24 * 3600;

/// A parsed, validated cron schedule in its time zone.
#[derive(Clone)]
pub struct CronSchedule {
    expr: String,
    tz: Tz,
    /// Wall-clock schedules whose union is the job: one, or two when
    /// day-of-month and day-of-week are OR-ed (day-of-month only, day-of-week
    /// only), since the `cron` crate AND-s them.
    wall: Vec<::cron::Schedule>,
    /// Whether a fall-back overlap fires twice (hour field `*` or a step).
    repeats_in_fold: bool,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronSchedule")
            .field("expr", &self.expr)
            .field("tz", &self.tz)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

impl Eq for CronSchedule {}

impl CronSchedule {
    /// Parses a crontab expression in a timezone (None = UTC). Errors carry
    /// field "schedule.cron" or "schedule.timezone".
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<CronSchedule, ScheduleError> {
        let tz = parse_timezone(timezone)?;
        let fields = Fields::parse(expr).map_err(|m| ScheduleError::new(CRON_FIELD, m))?;
        let wall = fields
            .wall_expressions()
            .iter()
            .map(|text| parse_with_cron_crate(text))
            .collect::<Result<Vec<_>, _>>()?;
        let schedule = CronSchedule {
            expr: expr.trim().to_owned(),
            tz,
            wall,
            repeats_in_fold: fields.hour_repeats(),
        };
        schedule.reject_if_never_fires()?;
        Ok(schedule)
    }

    /// The expression as written (trimmed).
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone whose wall clock the expression reads.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire strictly after `after`, following the DST rules of the
    /// module header; None when the schedule never fires again (past 2100).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = self.candidate_after(after)?;
        // The mapping below is strictly increasing by construction; should a
        // time zone ever break its assumptions, skip ahead rather than hand
        // the scheduler a fire that is not in the future.
        if next > after {
            return Some(next);
        }
        self.candidate_after(after + TimeDelta::seconds(1))
            .filter(|t| *t > after)
    }

    fn candidate_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if after.year() > LAST_YEAR {
            return None;
        }
        // Nothing fires before 1970 (the `cron` crate's first year); clamping
        // also keeps the local time of extreme instants representable.
        let after = after.max(DateTime::from_timestamp(FIRST_QUERY, 0)?);
        let wall = after.with_timezone(&self.tz).naive_local();
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Ambiguous(first, second) => {
                let fold = Fold::around(&self.tz, &first, &second);
                if after < second.with_timezone(&Utc) {
                    self.next_in_first_pass(wall, &fold)
                } else {
                    self.next_in_second_pass(wall, &fold)
                }
            }
            _ => self.wall_next(wall).map(|w| self.resolve(w)),
        }
    }

    /// `after` is on the first pass through a fall-back overlap: the rest of
    /// this pass comes first, then (for repeating jobs) the second pass.
    fn next_in_first_pass(&self, wall: NaiveDateTime, fold: &Fold) -> Option<DateTime<Utc>> {
        let next = self.wall_next(wall);
        if let Some(w) = next.filter(|w| *w < fold.end) {
            return Some(self.earlier(w));
        }
        if self.repeats_in_fold {
            if let Some(w) = self.wall_next_from(fold.start).filter(|w| *w < fold.end) {
                return Some(self.later(w));
            }
        }
        next.map(|w| self.resolve(w))
    }

    /// `after` is on the second pass through a fall-back overlap: a repeating
    /// job continues its rhythm, any other job already fired on the first pass.
    fn next_in_second_pass(&self, wall: NaiveDateTime, fold: &Fold) -> Option<DateTime<Utc>> {
        if !self.repeats_in_fold {
            return self.wall_next_from(fold.end).map(|w| self.resolve(w));
        }
        let w = self.wall_next(wall)?;
        Some(if w < fold.end {
            self.later(w)
        } else {
            self.resolve(w)
        })
    }

    /// The instant a wall-clock fire happens at, first time round.
    fn resolve(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
            LocalResult::None => gap_end(&self.tz, wall),
        }
    }

    fn earlier(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        self.resolve(wall)
    }

    fn later(&self, wall: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Ambiguous(_, t) => t.with_timezone(&Utc),
            _ => self.resolve(wall),
        }
    }

    /// The next matching wall-clock time strictly after `wall`.
    fn wall_next(&self, wall: NaiveDateTime) -> Option<NaiveDateTime> {
        if wall.year() > LAST_YEAR {
            return None;
        }
        // Before 1970 the `cron` crate finds nothing (it casts the year to
        // u32), so start such queries just before its first year instead.
        let probe = DateTime::from_timestamp(-1, 0)
            .filter(|first| first.naive_utc() > wall)
            .unwrap_or_else(|| Utc.from_utc_datetime(&wall));
        self.wall
            .iter()
            .filter_map(|s| s.after(&probe).next())
            .min()
            .map(|t| t.naive_utc())
    }

    /// The next matching wall-clock time at or after a whole-second `wall`.
    fn wall_next_from(&self, wall: NaiveDateTime) -> Option<NaiveDateTime> {
        let just_before = wall
            .checked_sub_signed(TimeDelta::nanoseconds(1))
            .unwrap_or(wall);
        self.wall_next(just_before)
    }

    /// An expression that matches no date (`0 0 30 2 *`) is refused. Every
    /// firing expression fires within 28 years of any date (the weekday
    /// pattern of leap days repeats after 28 years until 2100), and the
    /// `cron` crate stops at 2100, so this search is bounded and short.
    fn reject_if_never_fires(&self) -> Result<(), ScheduleError> {
        let origin = NaiveDate::from_ymd_opt(2000, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap_or_default();
        match self.wall_next_from(origin) {
            Some(_) => Ok(()),
            None => Err(ScheduleError::new(
                CRON_FIELD,
                "cron expression never fires: no date matches its day-of-month, month and \
                 day-of-week fields",
            )),
        }
    }
}

/// The repeated wall-clock range `[start, end)` of a fall-back overlap.
struct Fold {
    start: NaiveDateTime,
    end: NaiveDateTime,
}

impl Fold {
    /// The overlap containing the wall time whose two instants are given.
    fn around(tz: &Tz, first: &DateTime<Tz>, second: &DateTime<Tz>) -> Fold {
        let before = first.offset().fix();
        let after = second.offset().fix();
        let change = transition_between(tz, first.timestamp(), second.timestamp(), after);
        Fold {
            start: change.with_timezone(&after).naive_local(),
            end: change.with_timezone(&before).naive_local(),
        }
    }
}

/// The first whole second in `(lo, hi]` whose offset is `target`, given that
/// `lo` is before the clock change and `hi` after it (bisection: ~12 steps
/// for an hour's change, and only on days whose clock goes back).
fn transition_between(tz: &Tz, mut lo: i64, mut hi: i64, target: FixedOffset) -> DateTime<Utc> {
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let offset = DateTime::from_timestamp(mid, 0)
            .map(|t| tz.offset_from_utc_datetime(&t.naive_utc()).fix());
        if offset == Some(target) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0).unwrap_or_default()
}

/// The first instant after the spring-forward gap that swallows `wall`: the
/// instant of the first wall time past the gap that exists.
fn gap_end(tz: &Tz, wall: NaiveDateTime) -> DateTime<Utc> {
    let exists = |secs: i64| {
        tz.from_local_datetime(&(wall + TimeDelta::seconds(secs)))
            .earliest()
    };
    let (mut lo, mut hi) = (0, GAP_SEARCH_SECONDS);
    if exists(hi).is_none() {
        // No real zone gets here; read the wall time with the offset in force
        // after the search window rather than fail.
        let later = Utc.from_utc_datetime(&(wall + TimeDelta::seconds(hi)));
        let offset = tz.offset_from_utc_datetime(&later.naive_utc()).fix();
        return Utc.from_utc_datetime(&(wall - offset));
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if exists(mid).is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    exists(hi)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn parse_timezone(timezone: Option<&str>) -> Result<Tz, ScheduleError> {
    let Some(name) = timezone else {
        return Ok(Tz::UTC);
    };
    // IANA names are matched exactly, as spelled in the tz database.
    Tz::from_str(name)
        .map_err(|_| ScheduleError::new(TIMEZONE_FIELD, format!("unknown timezone {name:?}")))
}

fn parse_with_cron_crate(text: &str) -> Result<::cron::Schedule, ScheduleError> {
    // Fields::parse already validated everything the `cron` crate checks, so
    // this only fails if the two disagree; say so rather than hide it.
    ::cron::Schedule::from_str(text).map_err(|e| {
        ScheduleError::new(
            CRON_FIELD,
            format!("cron expression could not be parsed ({text}): {e}"),
        )
    })
}

/// What a field accepts.
struct FieldKind {
    label: &'static str,
    min: u32,
    max: u32,
    /// Names for `min`, `min + 1`, ... (empty: names not allowed).
    names: &'static [&'static str],
    /// A name that means another value at the end of a range.
    range_end_alias: Option<(&'static str, u32)>,
}

const SECOND: FieldKind = FieldKind {
    label: "second",
    min: 0,
    max: 59,
    names: &[],
    range_end_alias: None,
};
const MINUTE: FieldKind = FieldKind {
    label: "minute",
    min: 0,
    max: 59,
    names: &[],
    range_end_alias: None,
};
const HOUR: FieldKind = FieldKind {
    label: "hour",
    min: 0,
    max: 23,
    names: &[],
    range_end_alias: None,
};
const DAY_OF_MONTH: FieldKind = FieldKind {
    label: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    range_end_alias: None,
};
const MONTH: FieldKind = FieldKind {
    label: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    range_end_alias: None,
};
/// 0..=7 with both ends Sunday, as in crontab(5). `sun` closing a range is
/// 7, so that `mon-sun` and `fri-sun` read as written (as croner does).
const DAY_OF_WEEK: FieldKind = FieldKind {
    label: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    range_end_alias: Some(("sun", 7)),
};

/// One comma-separated element of a field: `*`, `v`, `a-b`, `*/s` or `a-b/s`.
struct Item {
    star: bool,
    lo: u32,
    hi: u32,
    step: Option<u32>,
}

impl Item {
    fn parse(kind: &FieldKind, text: &str) -> Result<Item, String> {
        let (base, step) = match text.split_once('/') {
            Some((base, step)) => (base, Some(parse_step(kind, step)?)),
            None => (text, None),
        };
        let item = if base == "*" {
            Item {
                star: true,
                lo: kind.min,
                hi: kind.max,
                step,
            }
        } else if let Some((lo, hi)) = base.split_once('-') {
            let (lo, hi) = (parse_value(kind, lo)?, parse_range_end(kind, hi)?);
            if lo > hi {
                return Err(format!("range {base} runs backwards"));
            }
            Item {
                star: false,
                lo,
                hi,
                step,
            }
        } else {
            if step.is_some() {
                return Err(format!(
                    "a step needs `*` or a range before the slash (write {base}-{}/… \
                     or */… instead of {text})",
                    kind.max
                ));
            }
            let value = parse_value(kind, base)?;
            Item {
                star: false,
                lo: value,
                hi: value,
                step: None,
            }
        };
        Ok(item)
    }

    /// The values this item selects, as bits.
    fn mask(&self) -> u64 {
        let step = self.step.unwrap_or(1) as usize;
        (self.lo..=self.hi)
            .step_by(step)
            .fold(0, |mask, v| mask | 1 << v)
    }

    /// Numeric text the `cron` crate reads the same way.
    fn render(&self) -> String {
        // A one-value range keeps its dash: to the `cron` crate `33/8` means
        // 33-59/8.
        let base = match (self.star, self.lo == self.hi && self.step.is_none()) {
            (true, _) => "*".to_owned(),
            (false, true) => self.lo.to_string(),
            (false, false) => format!("{}-{}", self.lo, self.hi),
        };
        match self.step {
            Some(step) => format!("{base}/{step}"),
            None => base,
        }
    }
}

fn parse_step(kind: &FieldKind, text: &str) -> Result<u32, String> {
    let step = parse_number(text).ok_or_else(|| format!("step {text:?} is not a number"))?;
    // The `cron` crate refuses steps above the field's maximum; they could
    // only ever select the first value anyway.
    if step == 0 || step > kind.max {
        return Err(format!("step {text} must be between 1 and {}", kind.max));
    }
    Ok(step)
}

fn parse_range_end(kind: &FieldKind, text: &str) -> Result<u32, String> {
    match kind.range_end_alias {
        Some((name, value)) if text.eq_ignore_ascii_case(name) => Ok(value),
        _ => parse_value(kind, text),
    }
}

fn parse_value(kind: &FieldKind, text: &str) -> Result<u32, String> {
    if text.is_empty() {
        return Err("a value is missing".to_owned());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return parse_number(text)
            .filter(|v| (kind.min..=kind.max).contains(v))
            .ok_or_else(|| {
                format!(
                    "{text} is out of range (allowed: {}-{})",
                    kind.min, kind.max
                )
            });
    }
    let lower = text.to_ascii_lowercase();
    match kind.names.iter().position(|n| *n == lower) {
        Some(index) => Ok(kind.min + index as u32),
        None if kind.names.is_empty() => Err(format!(
            "{text:?} is not a number (names are only allowed in the month and day-of-week fields)"
        )),
        None => Err(format!(
            "{text:?} is not a valid {} name (use {}..{})",
            kind.label,
            kind.names[0],
            kind.names[kind.names.len() - 1]
        )),
    }
}

fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One validated field.
struct Field {
    text: String,
    items: Vec<Item>,
}

impl Field {
    fn parse(kind: &FieldKind, text: &str) -> Result<Field, String> {
        Self::parse_items(kind, text)
            .map(|items| Field {
                text: text.to_owned(),
                items,
            })
            .map_err(|problem| format!("cron {} field {text:?}: {problem}", kind.label))
    }

    fn parse_items(kind: &FieldKind, text: &str) -> Result<Vec<Item>, String> {
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/')))
        {
            return Err(format!(
                "unsupported character {c:?} (allowed: digits, names, `*`, `,`, `-` and `/`)"
            ));
        }
        text.split(',')
            .map(|item| match item {
                "" => Err("a list item is empty".to_owned()),
                item => Item::parse(kind, item),
            })
            .collect()
    }

    /// Vixie cron: a day field counts as unrestricted when it starts with `*`.
    fn starts_with_star(&self) -> bool {
        self.text.starts_with('*')
    }

    fn render(&self) -> String {
        let items: Vec<String> = self.items.iter().map(Item::render).collect();
        items.join(",")
    }

    /// Day-of-week for the `cron` crate (Sunday = 1 … Saturday = 7), as an
    /// explicit list: ranges and steps over crontab's 0..=7 do not translate
    /// item by item (`5-7` wraps, `*/2` must start on Sunday).
    fn render_day_of_week(&self) -> String {
        let mask = self
            .items
            .iter()
            .fold(0u64, |mask, item| mask | item.mask());
        let sundays = (mask & 1) | (mask >> 7 & 1);
        let days: Vec<String> = (0..7u32)
            .filter(|d| {
                if *d == 0 {
                    sundays != 0
                } else {
                    mask >> d & 1 != 0
                }
            })
            .map(|d| (d + 1).to_string())
            .collect();
        days.join(",")
    }
}

/// All fields of an expression, seconds included.
struct Fields {
    second: Field,
    minute: Field,
    hour: Field,
    day_of_month: Field,
    month: Field,
    day_of_week: Field,
}

impl Fields {
    fn parse(expr: &str) -> Result<Fields, String> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Err("cron expression is empty".to_owned());
        }
        let expanded;
        let text = if expr.starts_with('@') {
            expanded = expand_shorthand(expr)?;
            expanded.as_str()
        } else {
            expr
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        let parts = match parts.len() {
            5 => [&["0"], parts.as_slice()].concat(),
            6 => parts,
            n => {
                return Err(format!(
                    "cron expression has {n} field{}; expected 5 (minute hour day-of-month \
                     month day-of-week) or 6 (seconds first)",
                    if n == 1 { "" } else { "s" }
                ))
            }
        };
        Ok(Fields {
            second: Field::parse(&SECOND, parts[0])?,
            minute: Field::parse(&MINUTE, parts[1])?,
            hour: Field::parse(&HOUR, parts[2])?,
            day_of_month: Field::parse(&DAY_OF_MONTH, parts[3])?,
            month: Field::parse(&MONTH, parts[4])?,
            day_of_week: Field::parse(&DAY_OF_WEEK, parts[5])?,
        })
    }

    /// The spec's fall-back rule: hour `*` or a step keeps its rhythm through
    /// the repeated hour; a job at fixed hours fires once.
    fn hour_repeats(&self) -> bool {
        self.hour.items.iter().all(|i| i.step.is_some() || i.star)
    }

    /// Expressions for the `cron` crate, whose union is this job. Both day
    /// fields restricted means OR (Vixie): one schedule per day field.
    fn wall_expressions(&self) -> Vec<String> {
        let time = format!(
            "{} {} {}",
            self.second.render(),
            self.minute.render(),
            self.hour.render()
        );
        let month = self.month.render();
        let dom = self.day_of_month.render();
        let dow = self.day_of_week.render_day_of_week();
        if self.day_of_month.starts_with_star() || self.day_of_week.starts_with_star() {
            vec![format!("{time} {dom} {month} {dow}")]
        } else {
            vec![
                format!("{time} {dom} {month} *"),
                format!("{time} * {month} {dow}"),
            ]
        }
    }
}

fn expand_shorthand(expr: &str) -> Result<String, String> {
    let expanded = match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => {
            return Err(
                "@reboot is not supported: a scheduled job has no reboot to run at; \
                        use a time-based schedule"
                    .to_owned(),
            )
        }
        _ => {
            return Err(format!(
                "unknown cron shorthand {expr:?}; expected one of @yearly, @annually, \
                 @monthly, @weekly, @daily, @midnight, @hourly"
            ))
        }
    };
    Ok(expanded.to_owned())
}

mod describe;
pub use describe::describe;

#[cfg(test)]
mod tests;

//! The cron dialect against fixed tables and an independent implementation (croner).

use super::*;
use chrono::SecondsFormat;

fn instant(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

/// The next `n` fires of `expr` in `tz` after `from`, as RFC 3339 UTC.
fn fires(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
    let schedule = CronSchedule::parse(expr, Some(tz)).unwrap();
    let mut cursor = instant(from);
    let mut out = Vec::new();
    for _ in 0..n {
        let Some(next) = schedule.next_after(cursor) else {
            break;
        };
        assert!(next > cursor, "{expr} in {tz}: {next} after {cursor}");
        out.push(next.to_rfc3339_opts(SecondsFormat::Secs, true));
        cursor = next;
    }
    out
}

fn parse_err(expr: &str) -> String {
    let err = CronSchedule::parse(expr, None).unwrap_err();
    assert_eq!(err.field, "schedule.cron", "{expr}");
    err.message
}

// ---- DST table tests ------------------------------------------------

#[test]
fn dst_edges() {
    #[rustfmt::skip]
    let table: &[(&str, &str, &str, &[&str])] = &[
        // New York, 2025-03-09: 02:00 EST jumps to 03:00 EDT (07:00Z).
        ("30 2 * * *", "America/New_York", "2025-03-08T12:00:00Z",
         &["2025-03-09T07:00:00Z", "2025-03-10T06:30:00Z"]),
        // Several times of one job in the gap: a single fire after it.
        ("*/20 2 * * *", "America/New_York", "2025-03-08T12:00:00Z",
         &["2025-03-09T07:00:00Z", "2025-03-10T06:00:00Z"]),
        ("* * 2 * * *", "America/New_York", "2025-03-09T06:00:00Z",
         &["2025-03-09T07:00:00Z", "2025-03-10T06:00:00Z"]),
        // The gap fire and the 03:00 fire are the same instant: once.
        ("*/15 * * * *", "America/New_York", "2025-03-09T06:50:00Z",
         &["2025-03-09T07:00:00Z", "2025-03-09T07:15:00Z", "2025-03-09T07:30:00Z"]),
        // New York, 2025-11-02: 02:00 EDT falls back to 01:00 EST (06:00Z).
        ("30 1 * * *", "America/New_York", "2025-11-02T00:00:00Z",
         &["2025-11-02T05:30:00Z", "2025-11-03T06:30:00Z"]),
        ("30 1 * * *", "America/New_York", "2025-11-02T05:45:00Z",
         &["2025-11-03T06:30:00Z"]),
        ("30 1 * * *", "America/New_York", "2025-11-02T06:10:00Z",
         &["2025-11-03T06:30:00Z"]),
        ("*/30 * * * *", "America/New_York", "2025-11-02T04:45:00Z",
         &["2025-11-02T05:00:00Z", "2025-11-02T05:30:00Z", "2025-11-02T06:00:00Z",
           "2025-11-02T06:30:00Z", "2025-11-02T07:00:00Z"]),
        ("0 * * * *", "America/New_York", "2025-11-02T04:30:00Z",
         &["2025-11-02T05:00:00Z", "2025-11-02T06:00:00Z", "2025-11-02T07:00:00Z"]),
        // Resuming from inside either pass keeps the rhythm.
        ("*/30 * * * *", "America/New_York", "2025-11-02T05:45:00Z",
         &["2025-11-02T06:00:00Z", "2025-11-02T06:30:00Z", "2025-11-02T07:00:00Z"]),
        ("*/30 * * * *", "America/New_York", "2025-11-02T06:15:00Z",
         &["2025-11-02T06:30:00Z", "2025-11-02T07:00:00Z"]),
        // A stepped hour repeats too; a list of hours does not.
        ("45 1-3/2 * * *", "America/New_York", "2025-11-02T04:00:00Z",
         &["2025-11-02T05:45:00Z", "2025-11-02T06:45:00Z", "2025-11-02T08:45:00Z"]),
        ("0,30 1,2 * * *", "America/New_York", "2025-11-02T04:00:00Z",
         &["2025-11-02T05:00:00Z", "2025-11-02T05:30:00Z", "2025-11-02T07:00:00Z"]),
        // Berlin, 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00Z).
        ("30 2 * * *", "Europe/Berlin", "2025-03-29T12:00:00Z",
         &["2025-03-30T01:00:00Z", "2025-03-31T00:30:00Z"]),
        // Berlin, 2025-10-26: 03:00 CEST falls back to 02:00 CET (01:00Z).
        ("30 2 * * *", "Europe/Berlin", "2025-10-25T12:00:00Z",
         &["2025-10-26T00:30:00Z", "2025-10-27T01:30:00Z"]),
        ("*/30 * * * *", "Europe/Berlin", "2025-10-26T00:15:00Z",
         &["2025-10-26T00:30:00Z", "2025-10-26T01:00:00Z", "2025-10-26T01:30:00Z",
           "2025-10-26T02:00:00Z"]),
        // Lord Howe, 2025-10-05: 02:00 (+10:30) jumps to 02:30 (+11), 15:30Z.
        ("15 2 * * *", "Australia/Lord_Howe", "2025-10-04T00:00:00Z",
         &["2025-10-04T15:30:00Z", "2025-10-05T15:15:00Z"]),
        ("*/10 2 * * *", "Australia/Lord_Howe", "2025-10-04T15:00:00Z",
         &["2025-10-04T15:30:00Z", "2025-10-04T15:40:00Z", "2025-10-04T15:50:00Z"]),
        // Lord Howe, 2025-04-06: 02:00 (+11) falls back to 01:30 (+10:30), 15:00Z.
        ("45 1 * * *", "Australia/Lord_Howe", "2025-04-05T12:00:00Z",
         &["2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z"]),
        ("*/15 * * * *", "Australia/Lord_Howe", "2025-04-05T14:20:00Z",
         &["2025-04-05T14:30:00Z", "2025-04-05T14:45:00Z", "2025-04-05T15:00:00Z",
           "2025-04-05T15:15:00Z", "2025-04-05T15:30:00Z", "2025-04-05T15:45:00Z"]),
    ];
    for (expr, tz, from, expected) in table {
        let got = fires(expr, tz, from, expected.len());
        assert_eq!(got, *expected, "{expr} in {tz} after {from}");
    }
}

#[test]
fn sub_second_queries_and_range_ends() {
    let every_second = CronSchedule::parse("* * * * * *", None).unwrap();
    let after = instant("2025-01-01T10:00:00.5Z");
    assert_eq!(
        every_second.next_after(after),
        Some(instant("2025-01-01T10:00:01Z"))
    );
    // The `cron` crate stops at 2100; never again, and no panic near MAX.
    assert_eq!(
        every_second.next_after(instant("2101-01-01T00:00:00Z")),
        None
    );
    assert_eq!(every_second.next_after(DateTime::<Utc>::MAX_UTC), None);
    let first = every_second.next_after(DateTime::<Utc>::MIN_UTC);
    assert_eq!(first, Some(instant("1970-01-01T00:00:00Z")));
    let nyc = CronSchedule::parse("0 0 * * *", Some("America/New_York")).unwrap();
    assert_eq!(nyc.next_after(DateTime::<Utc>::MAX_UTC), None);
    assert!(nyc.next_after(DateTime::<Utc>::MIN_UTC).is_some());
}

// ---- parsing --------------------------------------------------------

#[test]
fn five_and_six_fields() {
    let from = "2025-06-02T00:00:00Z";
    assert_eq!(
        fires("*/20 * * * * *", "UTC", from, 3),
        [
            "2025-06-02T00:00:20Z",
            "2025-06-02T00:00:40Z",
            "2025-06-02T00:01:00Z"
        ]
    );
    assert_eq!(
        fires("5 4 * * *", "UTC", from, 2),
        ["2025-06-02T04:05:00Z", "2025-06-03T04:05:00Z"]
    );
    // Whitespace is free-form.
    assert_eq!(
        fires("  5\t4 *  * * ", "UTC", from, 1),
        ["2025-06-02T04:05:00Z"]
    );
    let schedule = CronSchedule::parse(" 5 4 * * * ", Some("Europe/Berlin")).unwrap();
    assert_eq!(schedule.expr(), "5 4 * * *");
    assert_eq!(schedule.timezone(), chrono_tz::Europe::Berlin);
    assert_eq!(
        CronSchedule::parse("* * * * *", None).unwrap().timezone(),
        Tz::UTC
    );
}

#[test]
fn names_and_sundays() {
    let from = "2025-06-02T00:00:00Z"; // a Monday
    let sunday = ["2025-06-08T12:00:00Z"];
    for expr in ["0 12 * * 0", "0 12 * * 7", "0 12 * * sun", "0 12 * * SUN"] {
        assert_eq!(fires(expr, "UTC", from, 1), sunday, "{expr}");
    }
    assert_eq!(
        fires("0 0 1 Jan-mar,DEC *", "UTC", from, 4),
        [
            "2025-12-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
            "2026-02-01T00:00:00Z",
            "2026-03-01T00:00:00Z"
        ]
    );
    assert_eq!(
        fires("0 0 * * mon-fri", "UTC", "2025-06-06T12:00:00Z", 2),
        ["2025-06-09T00:00:00Z", "2025-06-10T00:00:00Z"]
    );
}

#[test]
fn day_of_week_ranges_and_steps() {
    let from = "2025-06-02T00:00:00Z"; // a Monday
    let table: &[(&str, &[&str])] = &[
        // Friday, Saturday, Sunday (7).
        (
            "0 0 * * 5-7",
            &["2025-06-06", "2025-06-07", "2025-06-08", "2025-06-13"],
        ),
        // Steps count from Sunday = 0: Sun, Tue, Thu, Sat.
        (
            "0 0 * * */2",
            &["2025-06-03", "2025-06-05", "2025-06-07", "2025-06-08"],
        ),
        // Mon, Thu, Sun (7).
        (
            "0 0 * * 1-7/3",
            &["2025-06-05", "2025-06-08", "2025-06-09", "2025-06-12"],
        ),
        (
            "0 0 * * 0-6",
            &["2025-06-03", "2025-06-04", "2025-06-05", "2025-06-06"],
        ),
        // `sun` ends a range as 7.
        (
            "0 0 * * fri-sun",
            &["2025-06-06", "2025-06-07", "2025-06-08", "2025-06-13"],
        ),
        (
            "0 0 * * sun-tue",
            &["2025-06-03", "2025-06-08", "2025-06-09", "2025-06-10"],
        ),
        (
            "0 0 * * sat,0",
            &["2025-06-07", "2025-06-08", "2025-06-14", "2025-06-15"],
        ),
    ];
    for (expr, days) in table {
        let got = fires(expr, "UTC", from, days.len());
        let want: Vec<String> = days.iter().map(|d| format!("{d}T00:00:00Z")).collect();
        assert_eq!(got, want, "{expr}");
    }
}

#[test]
fn day_fields_or_when_both_restricted() {
    // Every 13th and every Friday (Vixie cron).
    let got = fires("0 0 13 * fri", "UTC", "2025-06-01T00:00:00Z", 8);
    let days = [
        "06-06", "06-13", "06-20", "06-27", "07-04", "07-11", "07-13", "07-18",
    ];
    let want: Vec<String> = days.iter().map(|d| format!("2025-{d}T00:00:00Z")).collect();
    assert_eq!(got, want);
    // A day field starting with `*` leaves them AND-ed: odd-day Mondays.
    let got = fires("0 0 */2 * 1", "UTC", "2025-06-01T00:00:00Z", 4);
    let days = ["06-09", "06-23", "07-07", "07-21"];
    let want: Vec<String> = days.iter().map(|d| format!("2025-{d}T00:00:00Z")).collect();
    assert_eq!(got, want);
}

#[test]
fn shorthands() {
    let from = "2025-06-04T10:30:00Z"; // a Wednesday
    let table: &[(&str, &str)] = &[
        ("@hourly", "2025-06-04T11:00:00Z"),
        ("@HOURLY", "2025-06-04T11:00:00Z"),
        ("@daily", "2025-06-05T00:00:00Z"),
        ("@midnight", "2025-06-05T00:00:00Z"),
        ("@weekly", "2025-06-08T00:00:00Z"),
        ("@monthly", "2025-07-01T00:00:00Z"),
        ("@yearly", "2026-01-01T00:00:00Z"),
        ("@annually", "2026-01-01T00:00:00Z"),
    ];
    for (expr, next) in table {
        assert_eq!(fires(expr, "UTC", from, 1), [*next], "{expr}");
    }
    // @hourly keeps its rhythm through a repeated hour.
    assert_eq!(
        fires("@hourly", "America/New_York", "2025-11-02T05:30:00Z", 2),
        ["2025-11-02T06:00:00Z", "2025-11-02T07:00:00Z"]
    );
    let msg = parse_err("@reboot");
    assert!(msg.contains("@reboot is not supported"), "{msg}");
    let msg = parse_err("@fortnightly");
    assert!(msg.contains("unknown cron shorthand"), "{msg}");
}

#[test]
fn rejects_wrong_field_counts() {
    assert_eq!(
        parse_err("* * * *"),
        "cron expression has 4 fields; expected 5 (minute hour day-of-month month \
         day-of-week) or 6 (seconds first)"
    );
    assert!(parse_err("*").contains("has 1 field;"));
    assert!(parse_err("0 0 0 * * * 2025").contains("has 7 fields"));
    assert_eq!(parse_err("   "), "cron expression is empty");
}

#[test]
fn rejects_bad_values() {
    let table: &[(&str, &str)] = &[
        (
            "60 * * * *",
            "cron minute field \"60\": 60 is out of range (allowed: 0-59)",
        ),
        ("* 24 * * *", "cron hour field \"24\""),
        ("* * 0 * *", "cron day-of-month field \"0\""),
        ("* * 32 * *", "out of range (allowed: 1-31)"),
        ("* * * 13 *", "cron month field \"13\""),
        ("* * * * 8", "out of range (allowed: 0-7)"),
        ("60 * * * * *", "cron second field"),
        (
            "* * * foo *",
            "\"foo\" is not a valid month name (use jan..dec)",
        ),
        (
            "* * * * funday",
            "not a valid day-of-week name (use sun..sat)",
        ),
        (
            "jan * * * *",
            "names are only allowed in the month and day-of-week",
        ),
        ("10-5 * * * *", "range 10-5 runs backwards"),
        ("* * * * sat-fri", "range sat-fri runs backwards"),
        ("*/0 * * * *", "step 0 must be between 1 and 59"),
        ("*/60 * * * *", "step 60 must be between 1 and 59"),
        ("5/15 * * * *", "a step needs `*` or a range"),
        ("1,,2 * * * *", "a list item is empty"),
        ("1- * * * *", "a value is missing"),
        ("* * L * *", "\"L\" is not a number"),
        ("* * ? * *", "unsupported character '?'"),
        ("* * * * 5#2", "unsupported character '#'"),
        ("99999999999 * * * *", "out of range"),
        ("* * * * 1-5/99", "step 99 must be between 1 and 7"),
    ];
    for (expr, fragment) in table {
        let msg = parse_err(expr);
        assert!(msg.contains(fragment), "{expr}: {msg}");
    }
}

#[test]
fn rejects_unknown_timezones() {
    let err = CronSchedule::parse("* * * * *", Some("Mars/Base")).unwrap_err();
    assert_eq!(err.field, "schedule.timezone");
    assert_eq!(err.message, "unknown timezone \"Mars/Base\"");
    assert!(CronSchedule::parse("* * * * *", Some("")).is_err());
    assert!(CronSchedule::parse("* * * * *", Some("Asia/Kolkata")).is_ok());
}

#[test]
fn never_firing_expressions_are_rejected_and_leap_days_accepted() {
    for expr in [
        "0 0 30 2 *",
        "0 0 31 4 *",
        "0 0 31 2,4,6,9,11 *",
        "0 0 30,31 2 */2",
    ] {
        let msg = parse_err(expr);
        assert!(
            msg.starts_with("cron expression never fires"),
            "{expr}: {msg}"
        );
    }
    assert_eq!(
        fires("0 0 29 2 *", "UTC", "2025-01-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
    );
    // Leap days that are also Sundays: rare, but they exist (2032, 2060).
    assert_eq!(
        fires("0 0 29 2 */7", "UTC", "2025-01-01T00:00:00Z", 2),
        ["2032-02-29T00:00:00Z", "2060-02-29T00:00:00Z"]
    );
    // OR-ed day fields: February 30th never comes, Mondays in February do.
    assert!(CronSchedule::parse("0 0 30 2 mon", None).is_ok());
}

#[test]
fn garbage_never_panics() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    const ALPHABET: &[&str] = &[
        "*",
        "/",
        "-",
        ",",
        " ",
        " ",
        "0",
        "1",
        "7",
        "9",
        "59",
        "60",
        "99999999999999999999",
        "@",
        "@hourly",
        "@reboot",
        "jan",
        "SUN",
        "L",
        "W",
        "#",
        "?",
        "+",
        "é",
        "日",
        "\t",
        "\u{0}",
        "mon-fri",
        "*/",
        "/0",
        "--",
        "2",
        "31",
        "30",
    ];
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..3000 {
        let len = rng.random_range(0..14);
        let expr: String = (0..len)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
            .collect();
        if let Ok(schedule) = CronSchedule::parse(&expr, None) {
            let from = instant("2025-01-01T00:00:00Z");
            let next = schedule.next_after(from);
            assert!(next.is_none_or(|n| n > from), "{expr:?}");
        }
    }
    for tz in [
        "",
        " ",
        "UTC ",
        "../etc",
        "Europe/",
        "\u{0}",
        "America/New_York",
    ] {
        let _ = CronSchedule::parse("* * * * *", Some(tz));
    }
}

// ---- property test against croner ------------------------------------

/// Compares the adapter with `croner` over random expressions, zones and
/// start instants. Croner and the SPEC agree everywhere except at DST
/// transitions, where croner decides by "fixed-time job" (seconds, minute
/// and hour each a single value) instead of by the hour field, and skips
/// gap times of non-fixed jobs. Only there is a disagreement excused, and
/// there the SPEC is asserted instead, through `spec_fires`: croner walking
/// the (DST-free) wall clock, mapped to instants by the SPEC rules.
mod oracle {
    use super::super::super::Schedule;
    use super::*;
    use chrono::Timelike;
    use croner::parser::{CronParser, Seconds};
    use croner::Cron;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    const CASES: usize = 2500;
    const FIRES: usize = 6;
    const ZONES: [Tz; 7] = [
        Tz::UTC,
        chrono_tz::America::New_York,
        chrono_tz::Europe::Berlin,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::Asia::Kolkata,
        chrono_tz::America::Sao_Paulo,
        chrono_tz::Pacific::Chatham,
    ];
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

    /// A random crontab field over `lo..=hi`; `names[v - lo]` may stand
    /// for a value.
    fn field(rng: &mut StdRng, lo: u32, hi: u32, names: &[&str]) -> String {
        let value = |rng: &mut StdRng, v: u32| match names.get((v - lo) as usize) {
            Some(name) if rng.random_bool(0.3) => (*name).to_owned(),
            _ => v.to_string(),
        };
        match rng.random_range(0..10) {
            0..=2 => return "*".to_owned(),
            3 => return format!("*/{}", rng.random_range(1..=hi.min(12))),
            _ => {}
        }
        let items = rng.random_range(1..=3);
        let mut out = Vec::new();
        for _ in 0..items {
            let a = rng.random_range(lo..=hi);
            let b = rng.random_range(a..=hi);
            out.push(match rng.random_range(0..4) {
                0 | 1 => value(rng, a),
                2 => format!("{}-{}", value(rng, a), value(rng, b)),
                _ => format!(
                    "{}-{}/{}",
                    value(rng, a),
                    value(rng, b),
                    rng.random_range(1..=hi.min(10))
                ),
            });
        }
        out.join(",")
    }

    /// An hour field that selects `hour`, in one of the shapes the fall-back
    /// rule tells apart.
    fn hour_field(rng: &mut StdRng, hour: u32) -> String {
        let lo = rng.random_range(0..=hour);
        match rng.random_range(0..6) {
            0 => "*".to_owned(),
            1 => hour.to_string(),
            2 => format!("{hour},{}", (hour + 5) % 24),
            3 => format!("{lo}-{hour}"),
            4 => "*/1".to_owned(),
            _ => format!("{lo}-23/{}", (hour - lo).max(1)),
        }
    }

    /// An every-day expression firing in `hour`, so that clock changes
    /// really meet fires.
    fn dst_expression(rng: &mut StdRng, hour: u32) -> String {
        let second = if rng.random_bool(0.2) {
            format!("{} ", field(rng, 0, 59, &[]))
        } else {
            String::new()
        };
        let minute = field(rng, 0, 59, &[]);
        format!("{second}{minute} {} * * *", hour_field(rng, hour))
    }

    fn expression(rng: &mut StdRng) -> String {
        const SHORTHANDS: [&str; 5] = ["@hourly", "@daily", "@weekly", "@monthly", "@yearly"];
        if rng.random_bool(0.03) {
            return SHORTHANDS[rng.random_range(0..SHORTHANDS.len())].to_owned();
        }
        // Mostly small second/minute sets keep the six fires spread out.
        let mut fields = Vec::new();
        if rng.random_bool(0.3) {
            fields.push(field(rng, 0, 59, &[]));
        }
        fields.push(field(rng, 0, 59, &[]));
        fields.push(field(rng, 0, 23, &[]));
        let last_day = if rng.random_bool(0.9) { 28 } else { 31 };
        fields.push(field(rng, 1, last_day, &[]));
        fields.push(field(rng, 1, 12, &MONTHS));
        fields.push(field(rng, 0, 7, &DAYS));
        fields.join(" ")
    }

    /// Croner's spelling of the same schedule: it OR-s the day fields
    /// unless one is exactly `*`, while Vixie cron (and the SPEC) AND-s
    /// them when one merely starts with `*`; `+` asks croner for AND.
    fn croner_expression(expr: &str) -> String {
        let mut parts: Vec<String> = expr.split_whitespace().map(str::to_owned).collect();
        let n = parts.len();
        if n >= 5 {
            let (dom, dow) = (&parts[n - 3], &parts[n - 1]);
            let and = dom.starts_with('*') || dow.starts_with('*');
            if and && dom != "*" && dow != "*" {
                parts[n - 1] = format!("+{dow}");
            }
        }
        parts.join(" ")
    }

    /// The SPEC's fall-back rule, read off the expression text.
    fn hour_repeats(expr: &str) -> bool {
        if expr.starts_with('@') {
            return expr == "@hourly";
        }
        let parts: Vec<&str> = expr.split_whitespace().collect();
        let hour = parts[parts.len() - 4];
        hour.split(',')
            .all(|item| item == "*" || item.contains('/'))
    }

    fn croner_fires(cron: &Cron, tz: Tz, start: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut cursor = start.with_timezone(&tz);
        let mut out = Vec::new();
        while out.len() < FIRES {
            let Ok(next) = cron.find_next_occurrence(&cursor, false) else {
                break;
            };
            out.push(next.with_timezone(&Utc));
            cursor = next;
        }
        out
    }

    /// SPEC instants of one wall-clock fire, computed the slow, obvious way.
    fn spec_instants(tz: Tz, wall: NaiveDateTime, repeats: bool) -> Vec<DateTime<Utc>> {
        match tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(a, b) if repeats => {
                vec![a.with_timezone(&Utc), b.with_timezone(&Utc)]
            }
            LocalResult::Ambiguous(a, _) => vec![a.with_timezone(&Utc)],
            LocalResult::None => {
                // Modern gaps end on a whole minute: walk minute by minute.
                let mut probe = wall.with_second(0).unwrap_or(wall);
                loop {
                    probe += TimeDelta::minutes(1);
                    if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                        return vec![t.with_timezone(&Utc)];
                    }
                }
            }
        }
    }

    fn spec_fires(naive: &Cron, tz: Tz, repeats: bool, start: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        // Two hours of look-back (longer than any repeated range of the
        // test zones) catch second passes of earlier wall times.
        let mut wall = start.with_timezone(&tz).naive_local() - TimeDelta::hours(2);
        let mut found = BTreeSet::new();
        for _ in 0..100_000 {
            let Ok(next) = naive.find_next_occurrence(&wall, false) else {
                break;
            };
            wall = next;
            let instants = spec_instants(tz, wall, repeats);
            // The earliest instant of a wall time grows with the wall time,
            // so once it passes the FIRES-th instant found, nothing earlier
            // can turn up.
            if found.len() >= FIRES && instants[0] > *found.iter().nth(FIRES - 1).unwrap() {
                break;
            }
            found.extend(instants.into_iter().filter(|t| *t > start));
        }
        found.into_iter().take(FIRES).collect()
    }

    /// Clock changes of `tz` in 2010..2040, to the minute.
    fn transitions(tz: Tz) -> Vec<DateTime<Utc>> {
        let offset = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        let mut out = Vec::new();
        let mut t = instant("2010-01-01T00:00:00Z");
        let end = instant("2040-01-01T00:00:00Z");
        while t < end {
            let next = t + TimeDelta::hours(6);
            if offset(t) != offset(next) {
                let mut lo = t;
                while offset(lo) == offset(t) {
                    lo += TimeDelta::minutes(1);
                }
                out.push(lo);
            }
            t = next;
        }
        out
    }

    /// Whether a clock change lies within a day of the compared window.
    fn near_transition(changes: &[DateTime<Utc>], from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        let (from, to) = (from - TimeDelta::days(1), to + TimeDelta::days(1));
        changes.iter().any(|t| (from..=to).contains(t))
    }

    /// A start instant, and for one near a clock change the local hour
    /// that the change skips or repeats.
    fn start_instant(
        rng: &mut StdRng,
        tz: Tz,
        changes: &[DateTime<Utc>],
    ) -> (DateTime<Utc>, Option<u32>) {
        if !changes.is_empty() && rng.random_bool(0.5) {
            let change = changes[rng.random_range(0..changes.len())];
            let start = change + TimeDelta::seconds(rng.random_range(-4 * 3600..4 * 3600));
            // Gap: the hour after the last wall time before the change;
            // fold: the hour the clock shows at the change.
            let before = (change - TimeDelta::seconds(1)).with_timezone(&tz);
            let skipped = (before.naive_local() + TimeDelta::seconds(1)).hour();
            let repeated = change.with_timezone(&tz).hour();
            let hour = if rng.random_bool(0.5) {
                skipped
            } else {
                repeated
            };
            return (start, Some(hour));
        }
        let lo = instant("2015-01-01T00:00:00Z").timestamp();
        let hi = instant("2031-01-01T00:00:00Z").timestamp();
        (
            DateTime::from_timestamp(rng.random_range(lo..hi), 0).unwrap(),
            None,
        )
    }

    #[test]
    fn agrees_with_croner() {
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let changes: Vec<Vec<DateTime<Utc>>> = ZONES.iter().map(|z| transitions(*z)).collect();
        let mut rng = StdRng::seed_from_u64(0x5eed_c0de);
        let (mut compared, mut never, mut near_dst, mut excused) = (0, 0, 0, 0);
        for case in 0..CASES {
            let zone = rng.random_range(0..ZONES.len());
            let tz = ZONES[zone];
            let (start, dst_hour) = start_instant(&mut rng, tz, &changes[zone]);
            let expr = match dst_hour {
                Some(hour) if rng.random_bool(0.6) => dst_expression(&mut rng, hour),
                _ => expression(&mut rng),
            };
            let ctx = format!("case {case}: {expr:?} in {tz} after {start}");
            let schedule = match CronSchedule::parse(&expr, Some(tz.name())) {
                Ok(s) => s,
                Err(e) if e.message.contains("never fires") => {
                    never += 1;
                    continue;
                }
                Err(e) => panic!("{ctx}: {e}"),
            };
            let cron = parser
                .parse(&croner_expression(&expr))
                .unwrap_or_else(|e| panic!("{ctx}: croner: {e}"));
            let ours = Schedule::Cron(schedule).fires_after(start, FIRES);
            let theirs = croner_fires(&cron, tz, start);
            assert_eq!(ours.len(), FIRES, "{ctx}");
            compared += 1;
            let last = ours[FIRES - 1].max(*theirs.last().unwrap_or(&start));
            let near = near_transition(&changes[zone], start, last);
            if near {
                near_dst += 1;
                let spec = spec_fires(&cron, tz, hour_repeats(&expr), start);
                assert_eq!(ours, spec, "{ctx}: SPEC");
            }
            if ours != theirs {
                // Explicit exclusion: croner's DST rule differs from the
                // SPEC's, and only near a clock change.
                assert!(
                    near,
                    "{ctx}: away from DST\n ours   {ours:?}\n croner {theirs:?}"
                );
                excused += 1;
            }
        }
        eprintln!(
            "compared {compared}, never-firing {never}, near DST {near_dst}, excused {excused}"
        );
        // The comparison must have been real and exercised DST.
        assert!(
            compared >= 2000,
            "compared {compared}, never-firing {never}"
        );
        assert!(near_dst >= 300, "only {near_dst} cases near DST");
        assert!(excused * 10 < compared, "{excused} of {compared} excused");
    }
}

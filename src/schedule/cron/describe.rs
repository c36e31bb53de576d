//! A cron schedule in plain words, for people (the console's job view, `hookd jobs list`, the
//! preview's `description`): `At 09:00, Monday through Friday (Europe/Berlin)`.
//!
//! The sentence comes from the `cronspeak` crate (small, no dependencies, 24-hour clock on
//! request), fed an expression this module first reads with hookd's own parser: so names,
//! shorthands and `sun` ending a range mean what they mean to the scheduler, and the crate only
//! ever sees plain numbers in five fields. What the crate does not know, this module adds or
//! declines: a seconds field (hookd's sixth, first) is put in words here; and when a day
//! field is restricted but starts with `*` (`*/2`), Vixie cron ANDs the day fields where the
//! crate would say "or", so such an expression is not put in words. Anything not put in
//! words reads `cron EXPR (TZ)`, never wrongly.

use cronspeak::{Options, TimeFormat};

use super::{Field, Fields, Item};

/// `expr` in its time zone (UTC when none) in words, or `cron EXPR (TZ)` when it cannot be put
/// in words (an expression hookd refuses included). Never panics.
pub fn describe(expr: &str, timezone: Option<&str>) -> String {
    let tz = timezone.unwrap_or("UTC");
    match words(expr) {
        Some(words) => format!("{words} ({tz})"),
        None => format!("cron {} ({tz})", expr.trim()),
    }
}

/// The sentence without the time zone, if there is one to say.
fn words(expr: &str) -> Option<String> {
    let fields = Fields::parse(expr).ok()?;
    let (dom, dow) = (&fields.day_of_month, &fields.day_of_week);
    if restricted(dom) && restricted(dow) && (dom.starts_with_star() || dow.starts_with_star()) {
        return None; // ANDed by Vixie cron, ORed by the crate
    }
    let five = format!(
        "{} {} {} {} {}",
        fields.minute.render(),
        fields.hour.render(),
        dom.render(),
        fields.month.render(),
        dow.render(),
    );
    let options = Options::new().time_format(TimeFormat::H24);
    let rest = cronspeak::describe_with(&five, &options).ok()?;
    let second = &fields.second;
    if is_value(second, 0) {
        return Some(rest);
    }
    let seconds = seconds_phrase(second)?;
    Some(match rest.strip_prefix("Every minute") {
        // "Every 10 seconds", "At second 30 of every minute", "Every second, between …".
        Some(more) if seconds.starts_with("every") => capitalized(&seconds) + more,
        Some(more) => capitalized(&seconds) + " of every minute" + more,
        None => format!("{}, {}", capitalized(&seconds), lowercased(&rest)),
    })
}

/// Whether a day field restricts the days, as the crate reads it: anything but every value.
fn restricted(field: &Field) -> bool {
    !matches!(
        field.items.as_slice(),
        [Item {
            star: true,
            step: None | Some(1),
            ..
        }]
    )
}

/// Whether a field is the one value `v`.
fn is_value(field: &Field, v: u32) -> bool {
    matches!(field.items.as_slice(), [i] if !i.star && i.lo == v && i.hi == v && i.step.is_none())
}

/// The seconds field in words, lower case: `every second`, `every 10 seconds`, `at second 30`,
/// `at seconds 0, 20 and 40`, `at seconds 10 through 20`, `every 5 seconds from 10 through 40`.
fn seconds_phrase(field: &Field) -> Option<String> {
    let phrase = match field.items.as_slice() {
        [Item {
            star: true,
            step: None | Some(1),
            ..
        }] => "every second".to_owned(),
        [Item {
            star: true,
            step: Some(n),
            ..
        }] => format!("every {n} seconds"),
        [Item {
            lo,
            hi,
            step: Some(n),
            ..
        }] => format!("every {n} seconds from {lo} through {hi}"),
        [Item {
            lo, hi, step: None, ..
        }] if lo != hi => format!("at seconds {lo} through {hi}"),
        [Item { lo, step: None, .. }] => format!("at second {lo}"),
        items => {
            let values = items
                .iter()
                .map(|i| (!i.star && i.lo == i.hi && i.step.is_none()).then_some(i.lo))
                .collect::<Option<Vec<u32>>>()?;
            format!("at seconds {}", in_english(&values))
        }
    };
    Some(phrase)
}

/// `1`, `1 and 2`, `1, 2 and 3`.
fn in_english(values: &[u32]) -> String {
    let text: Vec<String> = values.iter().map(u32::to_string).collect();
    match text.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => text.concat(),
    }
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_ascii_uppercase().to_string() + chars.as_str()
    })
}

fn lowercased(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_ascii_lowercase().to_string() + chars.as_str()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_hookd_accepts_read_as_words_in_their_zone() {
        let berlin = Some("Europe/Berlin");
        let cases = [
            (
                "0 9 * * 1-5",
                berlin,
                "At 09:00, Monday through Friday (Europe/Berlin)",
            ),
            (
                "0 9 * * mon-fri",
                berlin,
                "At 09:00, Monday through Friday (Europe/Berlin)",
            ),
            (
                "0 9 * * MON-FRI",
                None,
                "At 09:00, Monday through Friday (UTC)",
            ),
            ("*/15 * * * *", None, "Every 15 minutes (UTC)"),
            ("* * * * *", None, "Every minute (UTC)"),
            ("30 14 * * *", None, "At 14:30 (UTC)"),
            ("0 0,12 * * *", None, "At 00:00 and 12:00 (UTC)"),
            (
                "0 0 1,15 * *",
                None,
                "At 00:00, on days 1 and 15 of the month (UTC)",
            ),
            (
                "*/15 9-17 * * 1-5",
                None,
                "Every 15 minutes, between 09:00 and 17:59, Monday through Friday (UTC)",
            ),
            (
                "0 0 1 jan *",
                None,
                "At 00:00, on day 1 of the month, only in January (UTC)",
            ),
            (
                "@yearly",
                None,
                "At 00:00, on day 1 of the month, only in January (UTC)",
            ),
            ("@DAILY", None, "At 00:00 (UTC)"),
            ("@hourly", None, "At 0 minutes past the hour (UTC)"),
            ("@weekly", None, "At 00:00, only on Sunday (UTC)"),
            ("0 0 * * 7", None, "At 00:00, only on Sunday (UTC)"),
            (
                "0 0 * * fri-sun",
                None,
                "At 00:00, Friday through Sunday (UTC)",
            ),
            ("0 0 * * 5-7", None, "At 00:00, Friday through Sunday (UTC)"),
            // Vixie: both day fields restricted, either matches.
            (
                "0 0 13 * fri",
                None,
                "At 00:00, on day 13 of the month or on Friday (UTC)",
            ),
            // Seconds first.
            (
                "0 0 9 * * 1-5",
                berlin,
                "At 09:00, Monday through Friday (Europe/Berlin)",
            ),
            ("* * * * * *", None, "Every second (UTC)"),
            ("*/10 * * * * *", None, "Every 10 seconds (UTC)"),
            ("30 * * * * *", None, "At second 30 of every minute (UTC)"),
            (
                "0,20,40 * * * * *",
                None,
                "At seconds 0, 20 and 40 of every minute (UTC)",
            ),
            (
                "*/5 * 9 * * *",
                None,
                "Every 5 seconds, between 09:00 and 09:59 (UTC)",
            ),
            ("30 0 9 * * *", None, "At second 30, at 09:00 (UTC)"),
            (
                "10-20 */5 * * * *",
                None,
                "At seconds 10 through 20, every 5 minutes (UTC)",
            ),
            (
                "10-40/5 0 * * * *",
                None,
                "Every 5 seconds from 10 through 40, at 0 minutes past the hour (UTC)",
            ),
            // Not put in words: ANDed day fields, a mixed seconds list, what hookd refuses.
            ("0 0 */2 * 1", None, "cron 0 0 */2 * 1 (UTC)"),
            (
                "0 0 1-7 * */2",
                berlin,
                "cron 0 0 1-7 * */2 (Europe/Berlin)",
            ),
            ("1,5-9 * * * * *", None, "cron 1,5-9 * * * * * (UTC)"),
            ("0 0 L * *", None, "cron 0 0 L * * (UTC)"),
            (" @reboot ", None, "cron @reboot (UTC)"),
            ("", None, "cron  (UTC)"),
        ];
        for (expr, tz, want) in cases {
            assert_eq!(describe(expr, tz), want, "{expr:?}");
        }
    }

    #[test]
    fn any_expression_hookd_accepts_or_not_is_described_without_a_panic() {
        let fields = [
            "*",
            "*/1",
            "*/2",
            "*/7",
            "*/59",
            "0",
            "1",
            "7",
            "23",
            "59",
            "0-59",
            "1-5",
            "5-5",
            "1-5/2",
            "0-23/3",
            "1,2,3",
            "1-3,5",
            "jan",
            "dec",
            "jan-dec/2",
            "sun",
            "mon-sun",
            "fri-sun",
            "SAT",
            "0,7",
            "L",
            "?",
            "",
            "1-",
            "-1",
            "*/0",
            "99",
        ];
        let mut described = 0;
        let mut x = 7u64;
        for _ in 0..20_000 {
            let n = if x % 3 == 0 { 6 } else { 5 };
            let mut pick = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                fields[(x % fields.len() as u64) as usize]
            };
            let expr: Vec<&str> = (0..n).map(|_| pick()).collect();
            let expr = expr.join(" ");
            let out = describe(&expr, Some("Asia/Kolkata"));
            assert!(out.ends_with(" (Asia/Kolkata)"), "{expr}: {out}");
            if !out.starts_with("cron ") {
                described += 1;
                assert!(
                    !out.contains(" AM") && !out.contains(" PM"),
                    "{expr}: {out}"
                );
            }
        }
        // Most random picks are refused by hookd (names out of place, `L`, …): they must not
        // panic either.
        assert!(described > 300, "{described} described");
    }
}

//! How durations and instants are written for people: in API answers, delivery headers and
//! error messages. Pure.

use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};

use super::command::UnixMs;

/// Renders milliseconds as a compact duration (`1h30m`, `500ms`, `0s`).
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_millis(ms))
        .to_string()
        .replace(' ', "")
}

/// Renders unix milliseconds as RFC 3339 UTC with milliseconds (empty outside chrono's range).
pub fn format_instant(ms: UnixMs) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_instants_are_written_compactly() {
        assert_eq!(format_duration_ms(0), "0s");
        assert_eq!(format_duration_ms(5_400_000), "1h30m");
        assert_eq!(format_duration_ms(500), "500ms");
        assert_eq!(format_instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_instant(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(format_instant(i64::MAX), "");
    }
}

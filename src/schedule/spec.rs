//! A schedule as a job carries it: part of the replicated command and state formats (see
//! `crate::core::command` for the rules of those formats), compiled into a [`Schedule`](super::Schedule) by
//! [`resolve`](super::resolve).

use serde::{Deserialize, Serialize};

/// Unix time in milliseconds (UTC), as `crate::core::command::UnixMs`.
type UnixMs = i64;

/// A schedule as the user gave it, with durations and instants normalised to milliseconds.
/// Parsing and validation (cron syntax, time zones) happen before proposing; the replicated core
/// treats the schedule as opaque data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum ScheduleSpec {
    /// Once, at this instant.
    At { at_ms: UnixMs },
    /// Once, this long after the create was accepted.
    After { after_ms: u64 },
    /// Every `every_ms`, starting at `start_at_ms` (or one period after creation).
    Every {
        every_ms: u64,
        start_at_ms: Option<UnixMs>,
    },
    /// A crontab expression evaluated in an IANA time zone.
    Cron { expr: String, timezone: String },
}

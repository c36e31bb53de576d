//! `GET /v1/stats`: figures per second from the leader for the console's plots (SPEC §2, §9):
//! runs due, delivered, failed, skipped, the first attempts' lateness (p50, p99) and client
//! writes, over a window of up to the last hour. The leader keeps them in memory
//! (`dispatch::stats`), so a follower asks the leader (`leader.rs`).

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::model::{format_instant, parse_duration};
use super::{query, Api, ApiError};
use crate::dispatch::stats::{Window, KEPT_S};
use crate::dispatch::DispatchHandle;

/// The leader's peer-port route for a follower's query.
pub(super) const PEER_PATH: &str = "/forward/stats";
/// The window when none is asked for: what the console plots.
const WINDOW_DEFAULT_S: u32 = 15 * 60;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// How far back: a duration such as `90s`, `15m` or `1h`, in whole seconds from 1s to 1h.
    /// [default: 15m]
    #[param(example = "15m")]
    window: Option<String>,
}

/// One entry per second of the window, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Series {
    /// Runs whose first attempt fell due that second (scheduled runs and manual triggers).
    due: Vec<u64>,
    /// Attempts that succeeded.
    delivered: Vec<u64>,
    /// Runs that failed for good: their last attempt failed.
    failed: Vec<u64>,
    /// Runs recorded skipped (misfires, overlap).
    skipped: Vec<u64>,
    /// Median lateness of the first attempts that started that second (start minus due, ms,
    /// within 1/16); null for a second without one.
    lateness_p50_ms: Vec<Option<u64>>,
    /// 99th percentile of the same; null for a second without one.
    lateness_p99_ms: Vec<Option<u64>>,
    /// Client write commands the leader applied.
    writes: Vec<u64>,
}

/// Figures per second, from the leader's memory: the last hour at most, and only since it
/// became leader (a new leader starts with zeros).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"from": "2026-12-07T09:00:00.000Z", "step_s": 1, "series": {
    "due": [3, 2], "delivered": [3, 1], "failed": [0, 1], "skipped": [0, 0],
    "lateness_p50_ms": [2, null], "lateness_p99_ms": [4, null], "writes": [1, 0]}}))]
struct Stats {
    /// The first second of the window (RFC 3339); the last is the last complete second.
    from: String,
    /// Seconds per entry: always 1.
    step_s: u32,
    series: Series,
}

impl From<Window> for Stats {
    fn from(w: Window) -> Stats {
        let s = w.series;
        Stats {
            from: format_instant(w.from_s.saturating_mul(1000)),
            step_s: 1,
            series: Series {
                due: s.due,
                delivered: s.delivered,
                failed: s.failed,
                skipped: s.skipped,
                lateness_p50_ms: s.lateness_p50_ms,
                lateness_p99_ms: s.lateness_p99_ms,
                writes: s.writes,
            },
        }
    }
}

/// Per-second series from the leader for plots: due, delivered, failed, skipped, lateness
/// p50/p99 and writes, ending with the last complete second.
#[utoipa::path(get, operation_id = "getStats", path = "/stats", tag = "stats", params(Params),
    responses((status = 200, description = "the window's figures, one entry per second", body = Stats)))]
pub async fn stats(
    state: Api,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let seconds = window_seconds(params.window.as_deref())?;
    super::leader::ask(&state, PEER_PATH, PeerQuery { seconds }, window).await
}

/// The `window` parameter in seconds: a duration as the API writes them, whole seconds from
/// 1 s to the hour kept; the default when absent; else a `400` naming `window`.
fn window_seconds(window: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = window else {
        return Ok(WINDOW_DEFAULT_S);
    };
    let refuse = |message: String| ApiError::bad_request("window", message);
    let d = parse_duration("window", text).map_err(|e| refuse(e.message))?;
    if d.subsec_nanos() != 0 {
        return Err(refuse(format!(
            "{text:?} is not a whole number of seconds (figures are per second)"
        )));
    }
    match u32::try_from(d.as_secs()) {
        Ok(s) if (1..=KEPT_S as u32).contains(&s) => Ok(s),
        _ => Err(refuse(format!(
            "{text:?} is out of range: the window is 1s to 1h (the leader keeps an hour)"
        ))),
    }
}

/// What a follower asks the leader's peer port for.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PeerQuery {
    seconds: u32,
}

/// This node's dispatcher's figures as JSON; None when it does not dispatch.
pub(super) async fn window(dispatch: DispatchHandle, q: PeerQuery) -> Option<serde_json::Value> {
    let window = dispatch.stats(q.seconds)?;
    serde_json::to_value(Stats::from(window)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_whole_seconds_from_one_to_an_hour() {
        let cases = [
            (None, Ok(900)),
            (Some("15m"), Ok(900)),
            (Some("1h"), Ok(3600)),
            (Some("90s"), Ok(90)),
            (Some("1s"), Ok(1)),
            (Some(" 30s "), Ok(30)),
            (Some("1m30s"), Ok(90)),
            (Some("2h"), Err("out of range")),
            (Some("3601s"), Err("out of range")),
            (Some("0s"), Err("out of range")),
            (Some("500ms"), Err("whole number of seconds")),
            (Some("1500ms"), Err("whole number of seconds")),
            (Some("abc"), Err("not a duration")),
            (Some(""), Err("not a duration")),
            (Some("-5m"), Err("not a duration")),
            (Some("99999999999999999999h"), Err("not a duration")),
            (Some("1000000000h"), Err("out of range")),
        ];
        for (window, want) in cases {
            match (window_seconds(window), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{window:?}"),
                (Err(e), Err(part)) => {
                    assert_eq!(e.status.as_u16(), 400, "{window:?}");
                    assert_eq!(e.code, "invalid_parameter", "{window:?}");
                    assert_eq!(e.field.as_deref(), Some("window"), "{window:?}");
                    assert!(e.message.contains(part), "{window:?}: {}", e.message);
                }
                (got, want) => panic!("{window:?}: {:?} for {want:?}", got.map_err(|e| e.message)),
            }
        }
    }
}

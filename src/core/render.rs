//! How a run looks to users: in the API's answers and in the body of its events
//! (`core::events`), alike.

use serde::Serialize;

use super::command::{Run, RunStatus, SkipReason};
use super::format::format_instant;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    n: u32,
    started_at: String,
    duration_ms: u64,
    status_code: Option<u16>,
    error: Option<String>,
    node_id: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SkippedView {
    count: u64,
    first_scheduled_at: String,
    last_scheduled_at: String,
}

/// A run as returned by the API.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunView {
    id: String,
    job_id: String,
    /// The instant the schedule named (for a manual run, when it was made).
    scheduled_at: String,
    /// When it was due: `scheduled_at` plus the job's jitter offset for it.
    due_at: String,
    /// For a skipped run: `misfire` or `overlap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    skip_reason: Option<&'static str>,
    /// Why the run ended without a last attempt of its own: `superseded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[schema(value_type = String)]
    status: &'static str,
    attempts: Vec<AttemptView>,
    next_attempt_at: Option<String>,
    manual: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<SkippedView>,
}

impl RunView {
    /// Renders `run`. An open run whose attempt time has passed is shown `in_flight`: the leader
    /// is attempting it (attempt starts are not written through Raft, only outcomes).
    pub fn new(run: Run, now_ms: i64) -> RunView {
        let status = match run.status {
            RunStatus::Pending | RunStatus::Retrying
                if run.next_attempt_at_ms.is_some_and(|t| t <= now_ms) =>
            {
                RunStatus::InFlight
            }
            s => s,
        };
        RunView {
            id: run.id,
            job_id: run.job_id,
            scheduled_at: format_instant(run.scheduled_at_ms),
            due_at: format_instant(run.ext.due_ms.unwrap_or(run.scheduled_at_ms)),
            skip_reason: (run.status == RunStatus::Skipped).then_some(match run.ext.skip_reason {
                Some(SkipReason::Overlap) => "overlap",
                None => "misfire",
            }),
            error: run.ext.ended_by.clone(),
            status: status.as_str(),
            attempts: run
                .attempts
                .into_iter()
                .map(|a| AttemptView {
                    n: a.n,
                    started_at: format_instant(a.started_at_ms),
                    duration_ms: a.duration_ms,
                    status_code: a.status_code,
                    error: a.error,
                    node_id: a.node_id,
                })
                .collect(),
            next_attempt_at: run.next_attempt_at_ms.map(format_instant),
            manual: run.manual,
            skipped: run.skipped.map(|s| SkippedView {
                count: s.count,
                first_scheduled_at: format_instant(s.first_ms),
                last_scheduled_at: format_instant(s.last_ms),
            }),
        }
    }
}

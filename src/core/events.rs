//! Events (SPEC §3a): a run's final outcome, a circuit opened or closed, a member lost or back,
//! a new leader, delivered to a job's callbacks (`on_success`, `on_failure`) and to the
//! notifications subscribed to them.
//!
//! An event is written by `apply` in the same entry as what caused it (an attempt's outcome, a
//! claim's skip, an overlap decision, a leader's `Command::Announce`): one delivery record per
//! destination in `Table::Events`, keyed `{event id}.{n}`. The leader's dispatcher sends each
//! like a run's attempt (same per-target queues, limits, breakers and egress policy, the
//! default retry policy), and its outcome, recorded by `RecordAttempts`, removes the record once
//! delivered or failed for good. So a leader change neither loses an event (its record is
//! replicated with its cause) nor invents one (its id is derived from its cause), and an event's
//! own delivery, which is no run, causes no event.
//!
//! `Table::Notifications` holds each notification (JSON) by id; `Misc`'s `NOTIFY_INDEX_KEY` the
//! list `apply` reads to find who takes an event (it cannot scan), and `CLUSTER_EVENTS_KEY`
//! what cluster events already said (`ClusterMemory`), so an announcement repeated by a new
//! leader is not another event.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::command::{AttemptOutcome, AttemptResult, Endpoint, Job, NodeId, Run, RunStatus};
use super::command::{
    CommandResult, JobExt, JobSpec, MisfirePolicy, MisfireSpec, RetrySpec, ScheduleSpec, UnixMs,
};
use super::filter;
use super::format::format_instant;
use super::records::{get_job, get_record, put_json, Table, Tables, TxResult};
use super::render::RunView;
use super::state::{Position, Touched};
use crate::limits::{
    CLUSTER_EVENT_TARGETS_MAX, DELIVERY_TIMEOUT_DEFAULT, MISFIRE_CATCHUP_WINDOW_DEFAULT,
    MISFIRE_GRACE_DEFAULT, NOTIFICATIONS_MAX, RETRY_ATTEMPTS_DEFAULT,
    RETRY_INITIAL_BACKOFF_DEFAULT, RETRY_JITTER_DEFAULT, RETRY_MAX_BACKOFF_DEFAULT,
    RETRY_MULTIPLIER_DEFAULT,
};

/// The first characters of every event id, and so of every delivery key: how `RecordAttempts`
/// tells a delivery's outcome from a run's (run ids start with `run_`).
pub const EVENT_PREFIX: &str = "evt_";
/// `Misc` key of the notifications' index.
pub const NOTIFY_INDEX_KEY: &[u8] = b"notify_index";
/// `Misc` key of `ClusterMemory`.
pub const CLUSTER_EVENTS_KEY: &[u8] = b"cluster_events";

/// The kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub enum EventType {
    #[serde(rename = "run.succeeded")]
    RunSucceeded,
    #[serde(rename = "run.failed")]
    RunFailed,
    #[serde(rename = "run.skipped")]
    RunSkipped,
    #[serde(rename = "target.circuit_opened")]
    CircuitOpened,
    #[serde(rename = "target.circuit_closed")]
    CircuitClosed,
    #[serde(rename = "node.unreachable")]
    NodeUnreachable,
    #[serde(rename = "node.recovered")]
    NodeRecovered,
    #[serde(rename = "leader.changed")]
    LeaderChanged,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::RunSucceeded,
        EventType::RunFailed,
        EventType::RunSkipped,
        EventType::CircuitOpened,
        EventType::CircuitClosed,
        EventType::NodeUnreachable,
        EventType::NodeRecovered,
        EventType::LeaderChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::RunSucceeded => "run.succeeded",
            EventType::RunFailed => "run.failed",
            EventType::RunSkipped => "run.skipped",
            EventType::CircuitOpened => "target.circuit_opened",
            EventType::CircuitClosed => "target.circuit_closed",
            EventType::NodeUnreachable => "node.unreachable",
            EventType::NodeRecovered => "node.recovered",
            EventType::LeaderChanged => "leader.changed",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// The event of a run that ended with `status`; none while it is open.
    pub fn of_run(status: RunStatus) -> Option<EventType> {
        match status {
            RunStatus::Succeeded => Some(EventType::RunSucceeded),
            RunStatus::Failed => Some(EventType::RunFailed),
            RunStatus::Skipped => Some(EventType::RunSkipped),
            RunStatus::Pending | RunStatus::InFlight | RunStatus::Retrying => None,
        }
    }
}

/// A subscription to events (`PUT /v1/notifications/{id}`): where they go, which kinds, and
/// for run events, which jobs (a label selector; cluster events ignore it). Positional in
/// postcard (`Command::SetNotification`): no field may be skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
pub struct NotificationSpec {
    pub to: Endpoint,
    /// Sorted, each once, at least one.
    pub events: Vec<EventType>,
    pub selector: Option<String>,
}

/// A notification as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: String,
    pub spec: NotificationSpec,
    pub created_at_ms: UnixMs,
    pub updated_at_ms: UnixMs,
    /// Starts at 1 and increments on every change.
    pub version: u64,
}

/// What `apply` reads of a notification to route an event to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Indexed {
    id: String,
    events: Vec<EventType>,
    selector: Option<String>,
}

/// One event on its way to one destination (`Table::Events`, JSON), until delivered or failed
/// for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The `webhook-id` of every attempt.
    pub event_id: String,
    pub kind: EventType,
    pub to: Endpoint,
    /// The event as JSON, fixed when it happened: every attempt sends the same body.
    pub body: String,
    /// The job a run event is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub created_at_ms: UnixMs,
    pub next_attempt_at_ms: UnixMs,
    /// Attempts made so far.
    pub attempts: u32,
}

impl Delivery {
    /// The request this delivery sends, as the job the dispatcher attempts: a `POST` of the
    /// event as JSON with the destination's headers, the default timeout and retry policy.
    /// Its schedule and misfire policy are never used.
    pub fn request(&self) -> Job {
        let mut headers = self.to.headers.clone();
        headers.insert("content-type".into(), "application/json".into());
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        Job {
            id: self.job_id.clone().unwrap_or_default(),
            spec: JobSpec {
                url: self.to.url.clone(),
                method: "POST".into(),
                headers,
                body: Some(self.body.clone()),
                schedule: ScheduleSpec::At {
                    at_ms: self.created_at_ms,
                },
                retry: RetrySpec {
                    max_attempts: RETRY_ATTEMPTS_DEFAULT,
                    initial_backoff_ms: ms(RETRY_INITIAL_BACKOFF_DEFAULT),
                    max_backoff_ms: ms(RETRY_MAX_BACKOFF_DEFAULT),
                    multiplier: RETRY_MULTIPLIER_DEFAULT,
                    jitter: RETRY_JITTER_DEFAULT,
                },
                timeout_ms: ms(DELIVERY_TIMEOUT_DEFAULT),
                misfire: MisfireSpec {
                    policy: MisfirePolicy::FireOnce,
                    grace_ms: ms(MISFIRE_GRACE_DEFAULT),
                    catchup_window_ms: ms(MISFIRE_CATCHUP_WINDOW_DEFAULT),
                },
                paused: false,
                secret_headers: self.to.secret_headers.clone(),
                ext: JobExt::default(),
            },
            incarnation: 0,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.created_at_ms,
            version: 1,
            schedule_base_ms: self.created_at_ms,
            cursor_ms: self.created_at_ms,
        }
    }
}

/// What a cluster event is about (`Command::Announce`, proposed by the leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Announcement {
    CircuitOpened { target: String },
    CircuitClosed { target: String },
    NodeUnreachable { node_id: NodeId },
    NodeRecovered { node_id: NodeId },
    LeaderChanged { term: u64, node_id: NodeId },
}

impl Announcement {
    pub fn kind(&self) -> EventType {
        match self {
            Announcement::CircuitOpened { .. } => EventType::CircuitOpened,
            Announcement::CircuitClosed { .. } => EventType::CircuitClosed,
            Announcement::NodeUnreachable { .. } => EventType::NodeUnreachable,
            Announcement::NodeRecovered { .. } => EventType::NodeRecovered,
            Announcement::LeaderChanged { .. } => EventType::LeaderChanged,
        }
    }
}

/// What cluster events have said so far, so that each change is told once whichever leader
/// announces it: the last leader's term, the members said unreachable, the circuits said open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMemory {
    #[serde(default)]
    pub leader_term: u64,
    #[serde(default)]
    pub unreachable: BTreeSet<NodeId>,
    #[serde(default)]
    pub open_circuits: BTreeSet<String>,
}

impl ClusterMemory {
    /// As stored under `CLUSTER_EVENTS_KEY` (nothing told yet when absent).
    pub fn from_record(bytes: Option<&[u8]>) -> ClusterMemory {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    /// Whether `a` tells something new; if so, it is remembered. A circuit said closed must
    /// have been said open; beyond `CLUSTER_EVENT_TARGETS_MAX` open circuits, an opening is
    /// still told but not remembered (its closing then is not told).
    pub fn note(&mut self, a: &Announcement) -> bool {
        match a {
            Announcement::LeaderChanged { term, .. } => {
                let new = *term > self.leader_term;
                self.leader_term = self.leader_term.max(*term);
                new
            }
            Announcement::NodeUnreachable { node_id } => self.unreachable.insert(*node_id),
            Announcement::NodeRecovered { node_id } => self.unreachable.remove(node_id),
            Announcement::CircuitOpened { target } => {
                if self.open_circuits.contains(target) {
                    return false;
                }
                if self.open_circuits.len() < CLUSTER_EVENT_TARGETS_MAX {
                    self.open_circuits.insert(target.clone());
                }
                true
            }
            Announcement::CircuitClosed { target } => self.open_circuits.remove(target),
        }
    }
}

/// The id of the event of `run`'s outcome: its run and how many attempts it had then, so the
/// outcome of a run retried later (`POST /v1/runs/{id}/retry`) is another event.
pub fn run_event_id(run: &Run) -> String {
    format!("{EVENT_PREFIX}{}_{}", run.id, run.attempts.len())
}

/// The id of the cluster event announced by the command numbered `seq`.
pub fn cluster_event_id(seq: u64) -> String {
    format!("{EVENT_PREFIX}c{seq:x}")
}

#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: EventType,
    at: String,
    node_id: NodeId,
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<JobRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<RunView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<NodeRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<LeaderRef>,
}

#[derive(Serialize)]
struct JobRef<'a> {
    id: &'a str,
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct NodeRef {
    id: NodeId,
}

#[derive(Serialize)]
struct LeaderRef {
    id: NodeId,
    term: u64,
}

/// Who takes an event of `kind` about a job with `labels` (none: a cluster event): the
/// notifications subscribed to it, in id order.
fn subscribers<T: Tables>(
    t: &T,
    kind: EventType,
    labels: Option<&BTreeMap<String, String>>,
) -> TxResult<T, Vec<Endpoint>> {
    let mut out = Vec::new();
    for n in notify_index(t)? {
        if !n.events.contains(&kind) {
            continue;
        }
        let selected = match (&n.selector, labels) {
            (Some(sel), Some(labels)) => {
                filter::parse_selector(sel).is_ok_and(|reqs| reqs.iter().all(|r| r.matches(labels)))
            }
            _ => true,
        };
        if !selected {
            continue;
        }
        let found: Option<Notification> = get_record(t, Table::Notifications, &n.id)?;
        if let Some(found) = found {
            out.push(found.spec.to);
        }
    }
    Ok(out)
}

fn notify_index<T: Tables>(t: &T) -> TxResult<T, Vec<Indexed>> {
    Ok(index_of(t.get(Table::Misc, NOTIFY_INDEX_KEY)?.as_deref()))
}

fn index_of(record: Option<&[u8]>) -> Vec<Indexed> {
    record
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default()
}

/// The event types some notification takes, from the record under `NOTIFY_INDEX_KEY`.
pub fn subscribed(record: Option<&[u8]>) -> BTreeSet<EventType> {
    index_of(record)
        .into_iter()
        .flat_map(|n| n.events)
        .collect()
}

/// Writes one delivery of event `event_id` per destination, due at once.
#[allow(clippy::too_many_arguments)]
fn emit<T: Tables>(
    t: &T,
    event_id: &str,
    kind: EventType,
    body: &Body<'_>,
    job_id: Option<&str>,
    at_ms: UnixMs,
    to: Vec<Endpoint>,
    touched: &mut Touched,
) -> TxResult<T, ()> {
    if to.is_empty() {
        return Ok(());
    }
    // Our own plain data always serializes.
    let body = serde_json::to_string(body).unwrap_or_default();
    for (n, to) in to.into_iter().enumerate() {
        let key = format!("{event_id}.{n}");
        let delivery = Delivery {
            event_id: event_id.to_owned(),
            kind,
            to,
            body: body.clone(),
            job_id: job_id.map(str::to_owned),
            created_at_ms: at_ms,
            next_attempt_at_ms: at_ms,
            attempts: 0,
        };
        put_json(t, Table::Events, key.as_bytes(), &delivery)?;
        touched.runs.push(key);
    }
    Ok(())
}

/// The event of `run`'s final outcome, reached at `at_ms` in the entry at `at`: to its job's
/// callback for it and to the notifications subscribed. Nothing while the run is open.
pub fn run_ended<T: Tables>(
    t: &T,
    at: &Position,
    run: &Run,
    at_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, ()> {
    let Some(kind) = EventType::of_run(run.status) else {
        return Ok(());
    };
    let job: Option<Job> = get_job(t, &run.job_id)?;
    let job = job.filter(|j| j.incarnation == run.incarnation);
    let no_labels = BTreeMap::new();
    let labels = job.as_ref().map_or(&no_labels, |j| &j.spec.ext.labels);
    let callback = job.as_ref().and_then(|j| match kind {
        EventType::RunSucceeded => j.spec.ext.on_success.clone(),
        EventType::RunFailed => j.spec.ext.on_failure.clone(),
        _ => None,
    });
    let mut to: Vec<Endpoint> = callback.into_iter().collect();
    to.extend(subscribers(t, kind, Some(labels))?);
    if to.is_empty() {
        return Ok(());
    }
    let id = run_event_id(run);
    let body = Body {
        id: &id,
        kind,
        at: format_instant(at_ms),
        node_id: at.epoch.node_id,
        job: Some(JobRef {
            id: &run.job_id,
            labels,
        }),
        run: Some(RunView::new(run.clone(), at_ms)),
        target: None,
        node: None,
        leader: None,
    };
    emit(t, &id, kind, &body, Some(&run.job_id), at_ms, to, touched)
}

/// A leader's announcement (`Command::Announce`) numbered `seq`: an event to the notifications
/// subscribed, if it tells something new (`ClusterMemory::note`).
pub fn announce<T: Tables>(
    t: &T,
    at: &Position,
    seq: u64,
    a: &Announcement,
    at_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let record = t.get(Table::Misc, CLUSTER_EVENTS_KEY)?;
    let mut memory = ClusterMemory::from_record(record.as_deref());
    if !memory.note(a) {
        return Ok(CommandResult::Done);
    }
    put_json(t, Table::Misc, CLUSTER_EVENTS_KEY, &memory)?;
    let kind = a.kind();
    let to = subscribers(t, kind, None)?;
    let id = cluster_event_id(seq);
    let (target, node, leader) = match a {
        Announcement::CircuitOpened { target } | Announcement::CircuitClosed { target } => {
            (Some(target.as_str()), None, None)
        }
        Announcement::NodeUnreachable { node_id } | Announcement::NodeRecovered { node_id } => {
            (None, Some(NodeRef { id: *node_id }), None)
        }
        Announcement::LeaderChanged { term, node_id } => (
            None,
            None,
            Some(LeaderRef {
                id: *node_id,
                term: *term,
            }),
        ),
    };
    let body = Body {
        id: &id,
        kind,
        at: format_instant(at_ms),
        node_id: at.epoch.node_id,
        job: None,
        run: None,
        target,
        node,
        leader,
    };
    emit(t, &id, kind, &body, None, at_ms, to, touched)?;
    Ok(CommandResult::Done)
}

/// An attempt of delivery `outcome.run_id`: the record goes once delivered or failed for good,
/// else waits for its next attempt. A delivery already gone (a report repeated by a former
/// leader) is left alone. Never an event.
pub fn record_attempt<T: Tables>(t: &T, outcome: &AttemptOutcome) -> TxResult<T, ()> {
    let key = outcome.run_id.as_bytes();
    let found: Option<Delivery> = get_record(t, Table::Events, &outcome.run_id)?;
    let Some(mut d) = found else {
        return Ok(());
    };
    match outcome.result {
        AttemptResult::Succeeded | AttemptResult::Failed => t.del(Table::Events, key),
        AttemptResult::RetryAt(at) => {
            d.attempts = d.attempts.max(outcome.attempt.n);
            d.next_attempt_at_ms = at;
            put_json(t, Table::Events, key, &d)
        }
    }
}

/// Creates, replaces (`spec` some) or deletes notification `id`.
pub fn set_notification<T: Tables>(
    t: &T,
    id: &str,
    spec: Option<&NotificationSpec>,
    now_ms: UnixMs,
) -> TxResult<T, CommandResult> {
    let old: Option<Notification> = get_record(t, Table::Notifications, id)?;
    let mut index = notify_index(t)?;
    let Some(spec) = spec else {
        let Some(old) = old else {
            return Ok(CommandResult::NotFound);
        };
        t.del(Table::Notifications, id.as_bytes())?;
        index.retain(|n| n.id != id);
        put_index(t, &index)?;
        return Ok(CommandResult::Notification {
            notification: old,
            created: false,
        });
    };
    // A masked secret keeps the stored value (the API checked the origin).
    let to = match spec.to.unmask(old.as_ref().map(|n| &n.spec.to)) {
        Ok(to) => to,
        Err(name) => {
            return Ok(super::state::masked_without_value(&format!(
                "headers.{name}"
            )))
        }
    };
    let spec = NotificationSpec { to, ..spec.clone() };
    if old.is_none() && index.len() >= NOTIFICATIONS_MAX {
        return Ok(CommandResult::Rejected {
            field: "id".into(),
            message: format!("at most {NOTIFICATIONS_MAX} notifications; delete one first"),
        });
    }
    let created = old.is_none();
    let notification = match old {
        Some(old) if old.spec == spec => old,
        Some(old) => Notification {
            spec,
            updated_at_ms: old.updated_at_ms.max(now_ms),
            version: old.version.saturating_add(1),
            ..old
        },
        None => Notification {
            id: id.to_owned(),
            spec,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            version: 1,
        },
    };
    put_json(t, Table::Notifications, id.as_bytes(), &notification)?;
    index.retain(|n| n.id != id);
    index.push(Indexed {
        id: id.to_owned(),
        events: notification.spec.events.clone(),
        selector: notification.spec.selector.clone(),
    });
    index.sort_by(|a, b| a.id.cmp(&b.id));
    put_index(t, &index)?;
    Ok(CommandResult::Notification {
        notification,
        created,
    })
}

fn put_index<T: Tables>(t: &T, index: &[Indexed]) -> TxResult<T, ()> {
    put_json(t, Table::Misc, NOTIFY_INDEX_KEY, index)
}

/// Whether an attempt's outcome names an event's delivery rather than a run.
pub fn is_delivery(id: &str) -> bool {
    id.starts_with(EVENT_PREFIX)
}

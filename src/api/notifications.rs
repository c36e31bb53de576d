//! `/v1/notifications`: subscriptions to events (SPEC §3a, `core::events`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::jobs::{check_egress, ReadParams};
use super::model::{format_instant, parse_json, validate_id, EndpointRequest, EndpointView};
use super::{json_body, list_limit, now_ms, query, Api, ApiError, Consistency};
use crate::core::events::{EventType, Notification, NotificationSpec};
use crate::core::{Command, CommandResult};
use crate::replicated::ReplicaState;

/// A notification as sent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "url": "https://ops.example.com/hookd-events",
    "headers": {"authorization": "Bearer s3cret"},
    "secret_headers": ["authorization"],
    "events": ["run.failed", "target.circuit_opened", "leader.changed"],
    "selector": "team=payments"
}))]
pub struct NotificationRequest {
    pub url: String,
    pub headers: Option<BTreeMap<String, String>>,
    pub secret_headers: Option<Vec<String>>,
    /// At least one of `run.succeeded`, `run.failed`, `run.skipped`, `target.circuit_opened`,
    /// `target.circuit_closed`, `node.unreachable`, `node.recovered`, `leader.changed`.
    pub events: Vec<String>,
    /// Run events only of jobs this label selector matches (cluster events ignore it).
    pub selector: Option<String>,
    /// Accepted and ignored (as returned by a read), like the other server-side fields below.
    #[serde(rename = "id")]
    #[schema(value_type = Option<serde_json::Value>)]
    _id: Option<IgnoredAny>,
    #[serde(rename = "created_at")]
    #[schema(value_type = Option<serde_json::Value>)]
    _created_at: Option<IgnoredAny>,
    #[serde(rename = "updated_at")]
    #[schema(value_type = Option<serde_json::Value>)]
    _updated_at: Option<IgnoredAny>,
    #[serde(rename = "version")]
    #[schema(value_type = Option<serde_json::Value>)]
    _version: Option<IgnoredAny>,
}

impl NotificationRequest {
    /// Validates every field and builds the replicated form.
    fn into_spec(self) -> Result<NotificationSpec, ApiError> {
        let to = EndpointRequest {
            url: self.url,
            headers: self.headers,
            secret_headers: self.secret_headers,
        }
        .into_endpoint("")?;
        let mut events = Vec::with_capacity(self.events.len());
        for name in &self.events {
            let kind = EventType::parse(name).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                ApiError::invalid(
                    "events",
                    format!("{name:?} is not one of {}", known.join(", ")),
                )
            })?;
            events.push(kind);
        }
        events.sort();
        events.dedup();
        let spec = NotificationSpec {
            to,
            events,
            selector: self.selector,
        };
        // The gate forwarded commands pass too: at least one type, a selector that parses.
        crate::core::validate::notification(&spec)?;
        Ok(spec)
    }
}

/// A notification as returned: secrets masked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    id: String,
    #[serde(flatten)]
    to: EndpointView,
    events: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    selector: Option<String>,
    created_at: String,
    updated_at: String,
    version: u64,
}

impl NotificationView {
    fn new(n: Notification) -> NotificationView {
        NotificationView {
            to: EndpointView::new(&n.spec.to),
            events: n.spec.events.iter().map(|t| t.as_str()).collect(),
            selector: n.spec.selector,
            created_at: format_instant(n.created_at_ms),
            updated_at: format_instant(n.updated_at_ms),
            version: n.version,
            id: n.id,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationsPage {
    notifications: Vec<NotificationView>,
    next: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// [default: 100]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
    #[serde(default)]
    consistency: Consistency,
}

/// Create or replace a notification: events of the listed types (run events only of jobs its
/// selector matches) are delivered to its URL.
#[utoipa::path(put, operation_id = "putNotification", path = "/notifications/{id}", tag = "notifications",
    request_body = NotificationRequest,
    params(("id" = String, Path, description = "notification id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses(
        (status = 201, description = "created", body = NotificationView),
        (status = 200, description = "replaced (or unchanged)", body = NotificationView)))]
pub async fn put(
    state: Api,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    validate_id("id", &id)?;
    let body = json_body(&headers, body)?;
    let mut spec = parse_json::<NotificationRequest>(&body)?.into_spec()?;
    check_egress(&state, "url", &spec.to.url).await?;
    if spec.to.has_masked() {
        // A secret sent back as `***` is kept only for the same origin (as for jobs).
        state.read_barrier(Consistency::Linearizable).await?;
        let stored = state.replica.state().get_notification(&id)?;
        spec.to = spec
            .to
            .keep_secrets_from(stored.as_ref().map(|n| &n.spec.to), "")
            .map_err(|(field, message)| ApiError::invalid(&field, message))?;
    }
    let cmd = Command::SetNotification {
        id,
        spec: Some(spec),
        now_ms: now_ms(),
    };
    match state.propose(cmd).await? {
        CommandResult::Notification {
            notification,
            created,
        } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(NotificationView::new(notification))).into_response())
        }
        other => Err(unexpected(other)),
    }
}

/// List notifications, ordered by id.
#[utoipa::path(get, operation_id = "listNotifications", path = "/notifications", tag = "notifications",
    params(ListParams),
    responses((status = 200, description = "a page of notifications", body = NotificationsPage)))]
pub async fn list(
    state: Api,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let limit = list_limit(params.limit)?;
    state.read_barrier(params.consistency).await?;
    let (found, more) = state
        .replica
        .state()
        .list_notifications(params.after.as_deref(), limit)?;
    let next = found.last().map(|n| n.id.clone()).filter(|_| more);
    let notifications = found.into_iter().map(NotificationView::new).collect();
    Ok(Json(NotificationsPage {
        notifications,
        next,
    })
    .into_response())
}

/// Read one notification.
#[utoipa::path(get, operation_id = "getNotification", path = "/notifications/{id}", tag = "notifications",
    params(("id" = String, Path, description = "notification id", pattern = r"^[A-Za-z0-9._:-]{1,128}$"), ReadParams),
    responses((status = 200, description = "the notification", body = NotificationView)))]
pub async fn get_one(
    state: Api,
    Path(id): Path<String>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    validate_id("id", &id)?;
    state.read_barrier(params.consistency).await?;
    match state.replica.state().get_notification(&id)? {
        Some(n) => Ok(Json(NotificationView::new(n)).into_response()),
        None => Err(not_found(&id)),
    }
}

/// Delete a notification: events not yet delivered to it still are.
#[utoipa::path(delete, operation_id = "deleteNotification", path = "/notifications/{id}", tag = "notifications",
    params(("id" = String, Path, description = "notification id", pattern = r"^[A-Za-z0-9._:-]{1,128}$")),
    responses((status = 204, description = "deleted")))]
pub async fn delete(state: Api, Path(id): Path<String>) -> Result<Response, ApiError> {
    validate_id("id", &id)?;
    let cmd = Command::SetNotification {
        id: id.clone(),
        spec: None,
        now_ms: now_ms(),
    };
    match state.propose(cmd).await? {
        CommandResult::Notification { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        CommandResult::NotFound => Err(not_found(&id)),
        other => Err(unexpected(other)),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no notification {id:?}"))
}

fn unexpected(result: CommandResult) -> ApiError {
    match result {
        CommandResult::Rejected { field, message } => ApiError::invalid(&field, message),
        other => {
            tracing::error!(?other, "unexpected result of a notification command");
            ApiError::unavailable("unexpected result of a notification command")
        }
    }
}

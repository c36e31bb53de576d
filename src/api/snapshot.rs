//! `GET /v1/snapshot`: a consistent point-in-time backup of the whole state, streamed (SPEC §6).

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hookd_raft::backup::BackupError;

use super::{Api, ApiError};

/// Header naming the log index the snapshot holds the state at.
pub const SNAPSHOT_INDEX_HEADER: &str = "hookd-snapshot-index";

#[utoipa::path(get, operation_id = "getSnapshot", path = "/snapshot", tag = "cluster",
    responses((status = 200, description = "the snapshot file", body = Vec<u8>, content_type = "application/octet-stream")))]
/// The newest snapshot file after a linearizable barrier (built now if older), as it is on disk:
/// the same versioned, checksummed format the nodes send each other.
pub async fn snapshot(state: Api, ext: axum::http::Extensions) -> Result<Response, ApiError> {
    if ext.get::<AuthProbe>().is_some() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let (meta, file) = state.replica.backup().await.map_err(backup_error)?;
    Ok(file_response(file, meta.last_log_id.map_or(0, |l| l.index)))
}

/// Marks a request the API front sends to shard 0 to learn whether the caller may take a
/// backup: it passes the token check as a backup would, and is answered at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct AuthProbe;

pub(super) fn backup_error(e: BackupError) -> ApiError {
    match e {
        BackupError::Replica(e) => ApiError::from(e),
        other => ApiError::unavailable(other.to_string()),
    }
}

/// A backup file as the answer, streamed; `index` is the log index it holds (shard 0's).
pub(super) fn file_response(file: tokio::fs::File, index: u64) -> Response {
    let name = format!("attachment; filename=\"hookd-{index}.snap\"");
    let mut resp = (
        StatusCode::OK,
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(SNAPSHOT_INDEX_HEADER, HeaderValue::from(index));
    resp
}

//! The OpenAPI 3.1 description of the API (`GET /openapi.json`) and a browsable page of it
//! (`GET /docs`), generated from the handlers' annotations as the router is built
//! (`utoipa-axum`), so a route cannot be served without being described.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error: `{"error": {"code", "message", "field"}}`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorDetail {
    /// e.g. `invalid_schedule`, `not_found`, `no_leader`, `overloaded`.
    code: String,
    message: String,
    /// The offending input, as a JSON path such as `schedule.cron`.
    field: Option<String>,
    /// With `412`: the job's version as it stands (null when there is no job).
    #[schema(required = false)]
    current_version: Option<u64>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookd",
        description = "A self-hosted, replicated webhook scheduler. Any node answers any \
                       request; writes and reads are forwarded to the leader; reads are \
                       linearizable unless `consistency=stale`.",
    ),
    components(schemas(ErrorBody, ErrorDetail, super::Consistency)),
    tags(
        (name = "jobs"), (name = "runs"), (name = "schedules"), (name = "cluster"),
        (name = "targets"), (name = "notifications"), (name = "node"), (name = "docs"),
        (name = "stats"),
    )
)]
pub struct ApiDoc;

/// The errors any `/v1` route may answer, besides its own: a bad parameter or body, a missing
/// or insufficient token, a missing job, an oversized or non-JSON body, shedding, no leader.
const COMMON_ERRORS: &[(&str, &str)] = &[
    ("400", "malformed JSON or an invalid parameter"),
    ("401", "missing or wrong API token"),
    ("403", "a read token may only read"),
    ("404", "no such job, run, member or route"),
    ("405", "method not allowed on this route"),
    ("409", "conflict with the current state"),
    ("413", "request body too large"),
    ("415", "request body is not JSON"),
    ("422", "well-formed but invalid"),
    ("429", "overloaded: retry after Retry-After"),
    ("503", "no leader reachable, or this node cannot serve now"),
];

/// Adds `COMMON_ERRORS` to every `/v1` operation (applied once the router has collected the
/// paths).
pub struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let error = || {
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build()
        };
        for (path, item) in api.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let ops: [&mut Option<Operation>; 5] = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                for (status, description) in COMMON_ERRORS {
                    op.responses
                        .responses
                        .entry((*status).to_string())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(*description)
                                    .content("application/json", error())
                                    .build(),
                            )
                        });
                }
            }
        }
    }
}

/// The description, built once with the first router.
static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Keeps the description the router was built with, as JSON.
pub fn publish(api: &utoipa::openapi::OpenApi) {
    DOC.get_or_init(|| api.to_pretty_json().unwrap_or_default());
}

/// Where the page loads Redoc from: this node, never another origin.
pub const REDOC_PATH: &str = "/docs/redoc.standalone.js";

/// Redoc's standalone bundle, vendored by `scripts/vendor-redoc.sh` (version and digest in
/// `assets/redoc.VERSION`).
const REDOC_JS: &[u8] = include_bytes!("assets/redoc.standalone.js");

/// The browsable page: Redoc, from this node, rendering `/openapi.json`; no font, script or
/// style from another origin.
const DOCS_PAGE: &str = concat!(
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
    "<title>hookd API</title>\n</head>\n<body>\n",
    "<redoc spec-url=\"/openapi.json\"></redoc>\n",
    "<script src=\"/docs/redoc.standalone.js\"></script>\n</body>\n</html>\n"
);

/// Only this origin (Redoc sets inline styles and runs its search in a worker from a blob).
const DOCS_CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; worker-src 'self' blob:";

/// This description, as JSON.
#[utoipa::path(get, operation_id = "getOpenApi", path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "the OpenAPI 3.1 description", body = serde_json::Value)))]
pub async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    let json = DOC.get().cloned().unwrap_or_default();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}

/// A browsable page of this description (Redoc).
#[utoipa::path(get, operation_id = "getDocs", path = "/docs", tag = "docs",
    responses((status = 200, description = "an HTML page", body = String, content_type = "text/html")))]
pub async fn docs() -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, DOCS_CSP),
        ],
        DOCS_PAGE,
    )
        .into_response()
}

/// Redoc's bundle for the page (cached: its content changes only with the binary).
pub async fn redoc_js() -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        REDOC_JS,
    )
        .into_response()
}

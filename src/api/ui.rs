//! The console (`/ui`, SPEC §9): a page and its scripts and styles, built into the binary. It
//! runs in the browser and uses only the public API of the node that served it; nothing comes
//! from another origin, and `Content-Security-Policy: default-src 'self'` forbids inline
//! script and style, so the page holds none.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Api, ApiError};

/// The policy of every console answer: this origin only.
pub const CSP: &str = "default-src 'self'";

/// The page. `{{AUTH}}` becomes `token` when the nodes want one, so the page asks for it
/// before its first request instead of learning it from a refusal.
const PAGE: &str = include_str!("ui/index.html");

/// The files the page loads: name under `/ui/`, content type, content.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_bytes!("ui/dom.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("ui/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("ui/favicon.svg"),
    ),
];

/// The console.
#[utoipa::path(get, operation_id = "getConsole", path = "/ui", tag = "docs",
    responses((status = 200, description = "the console, an HTML page", body = String, content_type = "text/html")))]
pub async fn page(State(state): Api) -> Response {
    let auth = if state.needs_token() { "token" } else { "none" };
    answer(
        "text/html; charset=utf-8",
        PAGE.replace("{{AUTH}}", auth).into_bytes(),
    )
}

/// One of the page's files; `404` for any other name.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => answer(kind, body.to_vec()),
        None => ApiError::not_found(format!("no console file {name:?}")).into_response(),
    }
}

fn answer(kind: &'static str, body: Vec<u8>) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change only with the binary; a short cache keeps an upgrade visible.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads only files that exist here, by absolute `/ui/` paths (so no request
    /// leaves the origin), holds no inline script or style, and the console stays small.
    #[test]
    fn the_page_loads_only_its_own_files_and_holds_no_inline_code() {
        for src in PAGE
            .split(['"', '\''])
            .filter(|s| s.starts_with("/ui/"))
            .map(|s| &s["/ui/".len()..])
        {
            assert!(
                ASSETS.iter().any(|(n, _, _)| *n == src),
                "{src} is not served"
            );
        }
        assert!(
            !PAGE.contains("<style") && !PAGE.contains("style="),
            "inline style"
        );
        assert!(
            PAGE.matches("<script").count() == PAGE.matches("<script type=\"module\" src=").count(),
            "inline script"
        );
        for (name, kind, body) in ASSETS {
            let text = String::from_utf8_lossy(body);
            if kind.starts_with("text/css") {
                assert!(
                    !text.contains("url(") && !text.contains("@import"),
                    "{name} loads"
                );
            }
            for import in text.lines().filter(|l| l.starts_with("import ")) {
                let from = import
                    .rsplit("from '")
                    .next()
                    .unwrap_or("")
                    .trim_end_matches("';");
                let file = from.trim_start_matches("./");
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == file),
                    "{name} imports {from}"
                );
            }
        }
        let total: usize = ASSETS.iter().map(|(_, _, b)| b.len()).sum::<usize>() + PAGE.len();
        assert!(
            total <= 300 << 10,
            "the console is {total} bytes; at most 300 KiB"
        );
    }
}

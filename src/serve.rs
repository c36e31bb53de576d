//! The HTTP servers of a node (the API and the peer port), over hyper directly so that every
//! connection is bounded (SPEC §7):
//!
//! - a header-read timeout: a request whose head is not complete within it is cut, and since
//!   hyper starts that clock whenever it waits for a head, a connection idle that long between
//!   requests is closed too;
//! - a cap on open connections: at the cap the connection idle the longest is closed to make
//!   room, and a new one is refused only when every connection is busy;
//! - a body deadline and size: the whole request body is read before the handler runs, and
//!   must arrive within `body_read` (else `408`) and fit `body_max` (a larger `Content-Length`
//!   gets `413` before a byte of the body is read; the rest of a refused body is discarded,
//!   boundedly, so that the client reads the answer instead of a reset). A connection waiting
//!   on a slow body counts as idle, not busy: at the cap it is closed like any idle one;
//! - a request timeout: a handler still running after it is answered `503`.
//!
//! With TLS the handshake runs in the connection's task, bounded by the header-read timeout,
//! with the certificate in force at accept time (`hookd_raft::tls::Reloading`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hookd_raft::tls::{Reload, Reloading};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    /// How long a request's body may take to arrive, from the end of its head.
    pub body_read: Duration,
    /// Largest request body read.
    pub body_max: usize,
    pub request: Duration,
    pub connections_max: usize,
}

/// A connection as the accept loop sees it (a clone shares its state).
#[derive(Clone)]
struct Tracked {
    /// Requests being handled now.
    busy: Arc<AtomicUsize>,
    /// Milliseconds since `epoch` when the last request ended (or the connection opened).
    idle_since_ms: Arc<AtomicU64>,
    close: CancellationToken,
}

/// How often refused TLS handshakes are logged at most.
const REFUSALS_LOG_EVERY_MS: u64 = 10_000;

/// Refused TLS handshakes since the last log line.
#[derive(Default)]
struct Refusals {
    /// (when the last line was logged, refusals since, both in one lock).
    state: Mutex<(Option<u64>, u64)>,
}

impl Refusals {
    /// Counts one refusal at `now_ms`; returns how many to report when a line is due.
    fn count(&self, now_ms: u64) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 += 1;
        let due =
            s.0.is_none_or(|last| now_ms.saturating_sub(last) >= REFUSALS_LOG_EVERY_MS);
        due.then(|| {
            let n = s.1;
            *s = (Some(now_ms), 0);
            n
        })
    }
}

/// Which connection to close to make room for a new one: the one idle the longest, if any is
/// idle. Pure; `(id, busy, idle_since_ms)` per open connection.
pub fn evict(conns: impl IntoIterator<Item = (u64, usize, u64)>) -> Option<u64> {
    conns
        .into_iter()
        .filter(|(_, busy, _)| *busy == 0)
        .min_by_key(|(id, _, since)| (*since, *id))
        .map(|(id, _, _)| id)
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop`, then lets the connections
/// finish their requests.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    limits: Limits,
    tls: Option<Arc<Reloading>>,
) {
    let epoch = Instant::now();
    let now_ms = move || epoch.elapsed().as_millis() as u64;
    let conns: Arc<Mutex<HashMap<u64, Tracked>>> = Arc::default();
    let refusals = Arc::new(Refusals::default());
    let tasks = TaskTracker::new();
    let mut next_id = 0u64;
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: back off a little instead of spinning.
                    tracing::warn!(server = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let tracked = {
            let mut open = conns.lock().unwrap_or_else(|p| p.into_inner());
            if open.len() >= limits.connections_max {
                let victim = evict(open.iter().map(|(id, t)| {
                    (
                        *id,
                        t.busy.load(Ordering::Relaxed),
                        t.idle_since_ms.load(Ordering::Relaxed),
                    )
                }));
                match victim.and_then(|v| open.remove(&v)) {
                    Some(v) => v.close.cancel(),
                    None => {
                        tracing::warn!(
                            server = name,
                            "connection cap reached and every connection busy; refusing one"
                        );
                        continue; // dropping the stream closes it
                    }
                }
            }
            let t = Tracked {
                busy: Arc::default(),
                idle_since_ms: Arc::new(AtomicU64::new(now_ms())),
                close: stop.child_token(),
            };
            open.insert(id, t.clone());
            t
        };
        let (app, conns, refusals) = (app.clone(), conns.clone(), refusals.clone());
        let acceptor = tls
            .as_ref()
            .map(|t| TlsAcceptor::from(t.current().server.clone()));
        tasks.spawn(async move {
            match acceptor {
                None => serve_connection(stream, app, &tracked, limits, now_ms).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(limits.header_read, acceptor.accept(stream));
                    let outcome = tokio::select! {
                        r = handshake => r,
                        _ = tracked.close.cancelled() => Ok(Err(std::io::ErrorKind::ConnectionAborted.into())),
                    };
                    match outcome {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, app, &tracked, limits, now_ms).await
                        }
                        // Plain HTTP, a certificate of another CA, or no certificate where one is
                        // required. Worth seeing on the peer port, where it means a misconfigured
                        // node, but at most once per `REFUSALS_LOG_EVERY_MS`: a scanner gets no more.
                        Ok(Err(e)) if name == "peer" => {
                            if let Some(n) = refusals.count(now_ms()) {
                                tracing::warn!(server = name, error = %e, refused = n, "TLS handshakes refused")
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(server = name, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::debug!(server = name, "TLS handshake timed out"),
                    }
                }
            }
            conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn serve_connection<I>(
    stream: I,
    app: Router,
    tracked: &Tracked,
    limits: Limits,
    now_ms: impl Fn() -> u64 + Clone + Send + Sync + 'static,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (busy, idle_since) = (tracked.busy.clone(), tracked.idle_since_ms.clone());
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let (app, busy, idle_since, now_ms) = (
            app.clone(),
            busy.clone(),
            idle_since.clone(),
            now_ms.clone(),
        );
        async move {
            // Until its body is in, the connection waits on its client: not busy.
            let req = match read_body(req, limits).await {
                Ok(req) => req,
                Err(refused) => return Ok::<_, Infallible>(refused),
            };
            busy.fetch_add(1, Ordering::Relaxed);
            let response = match tokio::time::timeout(limits.request, app.oneshot(req)).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => timed_out(limits.request),
            };
            idle_since.store(now_ms(), Ordering::Relaxed);
            busy.fetch_sub(1, Ordering::Relaxed);
            Ok(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = tracked.close.cancelled() => {
            // Idle connections close at once; one mid-request gets to finish it, briefly.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.request, conn).await;
        }
    }
}

/// How often certificate and key files are checked for a change.
const TLS_CHECK: Duration = Duration::from_secs(1);

/// Re-reads each listener's TLS files about once a second until `stop`: a change that loads is
/// used for every new connection (and by the peer client), one that does not is logged once and
/// the old material stays. Keeps the expiry gauge current.
pub async fn follow_tls_files(tls: Vec<(&'static str, Arc<Reloading>)>, stop: CancellationToken) {
    for (name, t) in &tls {
        crate::metrics::tls_expiry(name, t.current().not_after);
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TLS_CHECK) => {}
        }
        for (name, t) in &tls {
            let t2 = t.clone();
            let Ok(outcome) = tokio::task::spawn_blocking(move || t2.reload()).await else {
                continue;
            };
            match outcome {
                Reload::Loaded => {
                    let not_after = t.current().not_after;
                    tracing::info!(listener = name, cert = %t.files().cert.display(), not_after, "TLS certificate reloaded");
                    crate::metrics::tls_expiry(name, not_after);
                }
                Reload::Failed(e) => {
                    tracing::error!(listener = name, error = %e, "TLS files changed but do not load; still serving the previous certificate")
                }
                Reload::Unchanged | Reload::StillFailed => {}
            }
        }
    }
}

/// How long, and how many bytes, a refused oversized body is still read and discarded after its
/// `413` has been sent (nginx's "lingering close"). Closing a socket with unread bytes in it
/// resets the connection, and a client still writing its body then loses the answer.
const LINGER_FOR: Duration = Duration::from_secs(5);
const LINGER_BYTES: u64 = 64 << 20;

/// Reads the whole body of `req` within `limits.body_read` and `limits.body_max`; the request
/// with its body in memory, or the answer that refuses it.
async fn read_body(
    req: Request<hyper::body::Incoming>,
    limits: Limits,
) -> Result<Request<Body>, Response<Body>> {
    use http_body_util::BodyExt;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are at most {} bytes", limits.body_max),
        )
    };
    let (parts, mut body) = req.into_parts();
    if declared.is_some_and(|n| n > limits.body_max as u64) {
        linger(body);
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + limits.body_read;
    let mut read = Vec::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if read.len() + data.len() > limits.body_max {
                    linger(body);
                    return Err(too_large());
                }
                read.extend_from_slice(&data);
            }
            Ok(Some(Err(e))) => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    "malformed",
                    format!("the request body could not be read: {e}"),
                ))
            }
            Err(_) => {
                return Err(json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "the request body did not arrive within {:?}",
                        limits.body_read
                    ),
                ))
            }
        }
    }
    Ok(Request::from_parts(parts, Body::from(read)))
}

/// Reads and discards what is left of a refused body, at most `LINGER_BYTES` within
/// `LINGER_FOR`, while the answer goes out; then drops it, and the connection closes.
fn linger(mut body: hyper::body::Incoming) {
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        let mut left = LINGER_BYTES;
        let _ = tokio::time::timeout(LINGER_FOR, async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                left = left.saturating_sub(n);
                if left == 0 {
                    return;
                }
            }
        })
        .await;
    });
}

/// An error answer in the API's JSON shape.
fn json_error(status: StatusCode, code: &str, message: String) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp = resp.header(header::RETRY_AFTER, "1");
    }
    if status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body may still be on its way: the connection is not reused.
        resp = resp.header(header::CONNECTION, "close");
    }
    resp.body(Body::from(body.to_string())).unwrap_or_default()
}

fn timed_out(limit: Duration) -> Response<Body> {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        format!("the request took longer than {limit:?}"),
    )
}

/// Raises the soft open-file limit to the hard one (SPEC §7) and returns the soft limit now in
/// force, from which the connection caps are derived.
pub fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            1024
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_handshakes_are_logged_at_most_once_per_interval_with_their_count() {
        let r = Refusals::default();
        assert_eq!(r.count(0), Some(1), "the first is logged");
        assert_eq!(r.count(1), None);
        assert_eq!(r.count(REFUSALS_LOG_EVERY_MS - 1), None);
        assert_eq!(
            r.count(REFUSALS_LOG_EVERY_MS),
            Some(3),
            "with the ones held back"
        );
        assert_eq!(r.count(REFUSALS_LOG_EVERY_MS + 5), None);
    }

    #[test]
    fn the_connection_idle_longest_is_closed_first_and_busy_ones_never() {
        // (id, busy, idle since) per connection → the one to close.
        type Conns = Vec<(u64, usize, u64)>;
        let cases: Vec<(Conns, Option<u64>)> = vec![
            (vec![], None),
            (vec![(1, 1, 0), (2, 3, 5)], None),
            (vec![(1, 1, 0), (2, 0, 50), (3, 0, 20)], Some(3)),
            (vec![(7, 0, 10), (4, 0, 10)], Some(4)),
        ];
        for (conns, want) in cases {
            assert_eq!(evict(conns.clone()), want, "{conns:?}");
        }
    }
}

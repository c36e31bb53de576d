//! A webhook sink for tests: an axum server on 127.0.0.1:0 that records every request it
//! receives and answers as told per job.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// One request as the sink saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub wall_ms: i64,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn webhook_id(&self) -> &str {
        self.header("webhook-id")
    }
    pub fn job_id(&self) -> &str {
        self.header("hookd-job-id")
    }
    /// `hookd-scheduled-at` as unix milliseconds.
    pub fn scheduled_ms(&self) -> i64 {
        chrono::DateTime::parse_from_rfc3339(self.header("hookd-scheduled-at"))
            .map(|t| t.timestamp_millis())
            .unwrap_or(i64::MIN)
    }
}

/// How the sink answers one job's requests.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<&'static str>,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    replies: HashMap<String, Reply>,
}

#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Sink {
    pub async fn start() -> Sink {
        Sink::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A sink on a given loopback address (port 0: one the system picks), e.g. a port a test
    /// kept refusing connections on until now.
    pub async fn start_on(addr: SocketAddr) -> Sink {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind sink");
        let addr = listener.local_addr().expect("sink addr");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().fallback(record).with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sink { addr, inner }
    }

    /// Every request received so far, in arrival order.
    pub fn all(&self) -> Vec<Received> {
        self.inner.lock().expect("sink lock").received.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers requests of `job_id` with `reply` from now on.
    pub fn reply(&self, job_id: &str, reply: Reply) {
        self.inner
            .lock()
            .expect("sink lock")
            .replies
            .insert(job_id.into(), reply);
    }

    /// Everything received for `job_id`, in arrival order.
    pub fn of(&self, job_id: &str) -> Vec<Received> {
        let inner = self.inner.lock().expect("sink lock");
        inner
            .received
            .iter()
            .filter(|r| r.job_id() == job_id)
            .cloned()
            .collect()
    }

    /// Polls until `job_id` has at least `n` requests, or panics after `within`.
    pub async fn wait_for(&self, job_id: &str, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.of(job_id);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "sink got {} of {n} requests for {job_id} within {within:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn record(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = inner.lock().expect("sink lock");
    let job = headers
        .get("hookd-job-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let reply = inner.replies.get(&job).cloned().unwrap_or(Reply {
        status: 200,
        retry_after: None,
    });
    inner.received.push(Received {
        at: Instant::now(),
        wall_ms: chrono::Utc::now().timestamp_millis(),
        method,
        path: uri.path().to_owned(),
        headers,
        body,
    });
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    match reply.retry_after {
        Some(ra) => (status, [("retry-after", ra)], "").into_response(),
        None => (status, "").into_response(),
    }
}

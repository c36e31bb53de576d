//! Sending one attempt of a run: the job's request plus the headers of SPEC §3, signed the
//! Standard Webhooks way when a signing secret is set. One shared, pooled client; no redirects.
//!
//! An attempt's cost is bounded whatever the target does: connecting takes at most
//! `min(timeout, DELIVERY_CONNECT_TIMEOUT)` (the client's connect timeout inside the job's
//! total timeout), the status line, headers and body read all count toward the job's timeout,
//! hyper refuses responses with more than 100 headers or ~400 KiB of head, and at most
//! `RESPONSE_BODY_BYTES_MAX` of a body is read before the connection is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::command::NodeId;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use sha2::Sha256;

use crate::core::command::{Attempt, Job};
use crate::core::events::EventType;
use crate::core::plan::HttpOutcome;
use crate::egress::{self, Resolver, UrlCheck};
use crate::limits::{DELIVERY_CONNECT_TIMEOUT, RESPONSE_BODY_BYTES_MAX};
/// Longest error text kept in a run's history.
const ERROR_CHARS_MAX: usize = 300;

/// What sends an attempt to its target: the node's HTTP client (`Deliverer`), or a test's
/// fake target. The answer says how it went; it never fails otherwise.
pub trait Deliver: Clone + Send + Sync + 'static {
    fn attempt(
        &self,
        req: &AttemptRequest<'_>,
    ) -> impl std::future::Future<Output = (Attempt, HttpOutcome)> + Send;
}

impl Deliver for Deliverer {
    fn attempt(
        &self,
        req: &AttemptRequest<'_>,
    ) -> impl std::future::Future<Output = (Attempt, HttpOutcome)> + Send {
        Deliverer::attempt(self, req)
    }
}

/// The delivery client of one node.
#[derive(Clone)]
pub struct Deliverer {
    http: reqwest::Client,
    resolver: Resolver,
    signing_key: Option<Vec<u8>>,
    node_id: NodeId,
}

/// Decodes a `whsec_…` secret into its key bytes.
pub fn signing_key(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// What one attempt is about.
pub struct AttemptRequest<'a> {
    pub job: &'a Job,
    /// The `webhook-id`: the run's id, or an event's.
    pub run_id: &'a str,
    pub scheduled_at_ms: i64,
    pub n: u32,
    /// For an event's delivery (`core::events`), its type.
    pub event: Option<EventType>,
}

impl Deliverer {
    pub fn new(
        signing_secret: Option<&str>,
        node_id: NodeId,
        resolver: Resolver,
    ) -> anyhow::Result<Deliverer> {
        let http = reqwest::Client::builder()
            .connect_timeout(DELIVERY_CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(resolver.clone()))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()?;
        let signing_key = match signing_secret {
            Some(s) => Some(
                signing_key(s)
                    .ok_or_else(|| anyhow::anyhow!("signing secret is not whsec_<base64>"))?,
            ),
            None => None,
        };
        Ok(Deliverer {
            http,
            resolver,
            signing_key,
            node_id,
        })
    }

    fn headers(&self, req: &AttemptRequest<'_>, timestamp: i64, body: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in &req.job.spec.headers {
            // Validated at create; a value that no longer parses is skipped, not sent broken.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                h.insert(n, v);
            }
        }
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(HeaderName::from_static(name), v);
            }
        };
        set("webhook-id", req.run_id.to_owned());
        set("webhook-timestamp", timestamp.to_string());
        if let Some(key) = &self.signing_key {
            set(
                "webhook-signature",
                signature(key, req.run_id, timestamp, body),
            );
        }
        if !req.job.id.is_empty() {
            set("hookd-job-id", req.job.id.clone());
        }
        match req.event {
            Some(kind) => set("hookd-event-type", kind.as_str().to_owned()),
            None => set(
                "hookd-scheduled-at",
                crate::core::format::format_instant(req.scheduled_at_ms),
            ),
        }
        set("hookd-attempt", req.n.to_string());
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("hookd/", env!("CARGO_PKG_VERSION"))),
        );
        h
    }

    /// Makes one attempt and reports it.
    pub async fn attempt(&self, req: &AttemptRequest<'_>) -> (Attempt, HttpOutcome) {
        let spec = &req.job.spec;
        let started_at = chrono::Utc::now();
        let timestamp = started_at.timestamp();
        let body = spec.body.clone().unwrap_or_default();
        let method =
            reqwest::Method::from_bytes(spec.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let clock = Instant::now();
        // Parsed once: checked against the egress policy, then sent to.
        // Only an http(s) URL with a host is sent to (the URL is left out of the error: it may
        // carry credentials); a job stored before this rule, or replicated from a hostile peer,
        // fails its run for good instead of holding a delivery slot.
        let checked = match reqwest::Url::parse(&spec.url) {
            Ok(url) => match crate::core::validate::deliverable(&url) {
                Ok(()) => self.resolver.check_url(&url).await.map(|p| (url, p)),
                Err(e) => Err(UrlCheck::Undeliverable(format!(
                    "invalid url: {}",
                    e.message
                ))),
            },
            Err(e) => Err(UrlCheck::Undeliverable(format!("invalid url: {e}"))),
        };
        let timeout = Duration::from_millis(spec.timeout_ms).clamp(
            Duration::from_millis(1),
            crate::limits::DELIVERY_TIMEOUT_MAX,
        );
        let sent = match checked {
            // The connect uses exactly the addresses just checked.
            Ok((url, pinned)) => Ok(pinned
                .scope(
                    self.http
                        .request(method, url)
                        .headers(self.headers(req, timestamp, &body))
                        .timeout(timeout)
                        .body(body)
                        .send(),
                )
                .await),
            Err(stop) => Err(stop),
        };
        let mut denied = false;
        let (status, retry_after, error) = match sent {
            Ok(Ok(mut resp)) => {
                let status = resp.status().as_u16();
                let retry_after = if matches!(status, 429 | 503) {
                    resp.headers().get(RETRY_AFTER).and_then(parse_retry_after)
                } else {
                    None
                };
                // Read a bounded prefix of the body (a short body lets the connection be
                // reused); the request's timeout bounds the time. Dropping a response whose body
                // is not finished closes its connection.
                read_prefix(&mut resp, RESPONSE_BODY_BYTES_MAX).await;
                (Some(status), retry_after, None)
            }
            Ok(Err(e)) => match egress::find_denied(&e) {
                // Denied at connect (a lookup outside the pinned addresses).
                Some(d) => {
                    denied = true;
                    (None, None, Some(d.to_string()))
                }
                // Without the URL: it may carry credentials (SPEC §7), and the run names its job.
                None => (None, None, Some(describe(&e.without_url()))),
            },
            Err(UrlCheck::Denied(d)) => {
                denied = true;
                (None, None, Some(d.to_string()))
            }
            Err(UrlCheck::Undeliverable(e)) => {
                denied = true;
                (None, None, Some(e))
            }
            Err(UrlCheck::Unresolved(e)) => (None, None, Some(format!("connect error: {e}"))),
        };
        let error = error.map(|e| e.chars().take(ERROR_CHARS_MAX).collect());
        let attempt = Attempt {
            n: req.n,
            started_at_ms: started_at.timestamp_millis(),
            duration_ms: clock.elapsed().as_millis() as u64,
            status_code: status,
            error,
            node_id: self.node_id,
        };
        (
            attempt,
            HttpOutcome {
                status,
                retry_after,
                denied,
            },
        )
    }
}

/// Reads at most about `max` bytes of a response body, chunk by chunk, and returns how much was
/// read. Stops early at the end of the body or on an error (a timeout included).
async fn read_prefix(resp: &mut reqwest::Response, max: usize) -> usize {
    let mut read = 0;
    while read < max {
        match resp.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
    read
}

/// `Retry-After` in seconds or as an HTTP date.
fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(s).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text.chars().take(ERROR_CHARS_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_reference_implementation() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let key = signing_key(secret).expect("valid secret");
        let (id, ts, body) = ("run_1_2", 1_700_000_000i64, r#"{"a":1}"#);
        let sig = signature(&key, id, ts, body);
        let wh = standardwebhooks::Webhook::new(secret).expect("reference accepts the secret");
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", id.parse().expect("header"));
        headers.insert("webhook-timestamp", ts.to_string().parse().expect("header"));
        headers.insert("webhook-signature", sig.parse().expect("header"));
        // The reference checks the timestamp against its clock; sign a fresh one for that.
        let now = chrono::Utc::now().timestamp();
        headers.insert(
            "webhook-timestamp",
            now.to_string().parse().expect("header"),
        );
        headers.insert(
            "webhook-signature",
            signature(&key, id, now, body).parse().expect("header"),
        );
        wh.verify(body.as_bytes(), &headers)
            .expect("signature verifies");
        assert!(sig.starts_with("v1,"));
        assert_ne!(signature(&key, id, ts, "other body"), sig);
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
        let in_a_minute = (chrono::Utc::now() + chrono::TimeDelta::seconds(60)).to_rfc2822();
        let d =
            parse_retry_after(&HeaderValue::from_str(&in_a_minute).expect("header")).expect("date");
        assert!(d > Duration::from_secs(50) && d <= Duration::from_secs(60));
    }
}

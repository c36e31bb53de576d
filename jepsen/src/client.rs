//! HTTP access to the nodes' public API: one pooled client with a per-request timeout, the
//! outcome classification (ok / fail / info) and leader discovery. Only addresses of the run's
//! node table are ever contacted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::history::Type;

/// Longer than hookd's own 4 s request deadline, so a leaderless node is seen as its `503`.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// What came back from one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16, Value),
    /// The connection could not be made: the request was never sent.
    Refused(String),
    /// Sent (or maybe sent) and no answer: timeout, reset.
    Unknown(String),
}

impl Reply {
    pub fn status(&self) -> Option<u16> {
        match self {
            Reply::Status(s, _) => Some(*s),
            _ => None,
        }
    }
}

/// Outcome of a write: 2xx ok; 4xx a definite no; 5xx and silence unknown.
pub fn classify_write(r: &Reply) -> Type {
    match r {
        Reply::Status(s, _) if (200..300).contains(s) => Type::Ok,
        Reply::Status(404, _) => Type::Ok, // a definite answer: there was nothing to change
        Reply::Status(s, _) if (400..500).contains(s) => Type::Fail,
        Reply::Status(..) => Type::Info,
        Reply::Refused(_) => Type::Fail,
        Reply::Unknown(_) => Type::Info,
    }
}

/// Outcome of a read: 2xx and 404 are answers; anything else changed nothing, so `fail`, except
/// silence, which stays `info` (it changes nothing either; the checkers ignore it).
pub fn classify_read(r: &Reply) -> Type {
    match r {
        Reply::Status(s, _) if (200..300).contains(s) || *s == 404 => Type::Ok,
        Reply::Unknown(_) => Type::Info,
        _ => Type::Fail,
    }
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    pub nodes: Vec<(u64, SocketAddr)>,
}

impl Api {
    pub fn new(nodes: Vec<(u64, SocketAddr)>) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(OP_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(2)) // below hookd's 5 s idle cut
            .build()?;
        Ok(Api { http, nodes })
    }

    fn addr(&self, node: u64) -> Option<SocketAddr> {
        self.nodes
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, a)| *a)
    }

    pub async fn call(
        &self,
        node: u64,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Reply {
        let Some(addr) = self.addr(node) else {
            return Reply::Refused(format!("node {node} is not in the node table"));
        };
        let mut req = self
            .http
            .request(method, format!("http://{addr}{path}"))
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let v = serde_json::from_str(&text).unwrap_or(Value::Null);
                Reply::Status(status, v)
            }
            Err(e) if e.is_connect() => Reply::Refused(e.to_string()),
            Err(e) => Reply::Unknown(e.to_string()),
        }
    }

    /// `GET /v1/cluster` of one node, quickly.
    pub async fn cluster(&self, node: u64) -> Option<Value> {
        match self
            .call(
                node,
                Method::GET,
                "/v1/cluster",
                None,
                Duration::from_millis(800),
            )
            .await
        {
            Reply::Status(200, v) => Some(v),
            _ => None,
        }
    }

    /// The leader as the asked nodes see it: the node reporting itself leader with the highest
    /// term, confirmed by at least one other asked node if more than one answered.
    pub async fn leader(&self, among: &[u64]) -> Option<(u64, u64)> {
        let mut views = Vec::new();
        for &n in among {
            if let Some(v) = self.cluster(n).await {
                if let (Some(l), Some(t)) = (v["leader_id"].as_u64(), v["term"].as_u64()) {
                    views.push((n, l, t));
                }
            }
        }
        let best = views.iter().map(|(_, _, t)| *t).max()?;
        let leaders: Vec<u64> = views
            .iter()
            .filter(|(_, _, t)| *t == best)
            .map(|(_, l, _)| *l)
            .collect();
        let first = *leaders.first()?;
        if leaders.iter().all(|l| *l == first) && among.contains(&first) {
            Some((first, best))
        } else {
            None
        }
    }

    /// Polls until the nodes in `among` agree on a leader among them, or `within` passes.
    pub async fn await_leader(&self, among: &[u64], within: Duration) -> Option<(u64, u64)> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(l) = self.leader(among).await {
                return Some(l);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes_follow_what_the_server_could_have_done() {
        let s = |c| Reply::Status(c, json!({}));
        assert_eq!(classify_write(&s(201)), Type::Ok);
        assert_eq!(classify_write(&s(204)), Type::Ok);
        assert_eq!(classify_write(&s(404)), Type::Ok);
        assert_eq!(classify_write(&s(409)), Type::Fail);
        assert_eq!(classify_write(&s(503)), Type::Info);
        assert_eq!(classify_write(&Reply::Refused("x".into())), Type::Fail);
        assert_eq!(classify_write(&Reply::Unknown("x".into())), Type::Info);
        assert_eq!(classify_read(&s(503)), Type::Fail);
        assert_eq!(classify_read(&s(404)), Type::Ok);
        assert_eq!(classify_read(&Reply::Unknown("x".into())), Type::Info);
    }
}

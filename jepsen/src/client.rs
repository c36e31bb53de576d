//! HTTP access to the nodes' public API: one pooled client with a per-request timeout, the
//! outcome classification (ok / fail / info) and leader discovery. Only addresses of the run's
//! node table are ever contacted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
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

/// The nodes the harness may call, and the members in the clients' order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Every node ever registered, by id (a removed one just stops answering).
    pub addrs: BTreeMap<u64, SocketAddr>,
    /// The members in a stable order: workload client `c` talks to `order[c]`, and a node that
    /// replaces another takes its place, so the clients stay spread over the members.
    pub order: Vec<u64>,
}

impl Table {
    /// `new` takes `old`'s place in the order (`new` must be registered). False when `old` has
    /// no place or `new` has one already.
    pub fn replace(&mut self, old: u64, new: u64) -> bool {
        if self.order.contains(&new) || !self.addrs.contains_key(&new) {
            return false;
        }
        match self.order.iter_mut().find(|id| **id == old) {
            Some(slot) => {
                *slot = new;
                true
            }
            None => false,
        }
    }
}

/// The nodes' API, shared by every clone: membership changes show to all clients at once.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    table: Arc<RwLock<Table>>,
}

impl Api {
    pub fn new(nodes: Vec<(u64, SocketAddr)>) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(OP_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(2)) // below hookd's 5 s idle cut
            .build()?;
        let table = Table {
            addrs: nodes.iter().copied().collect(),
            order: nodes.iter().map(|(id, _)| *id).collect(),
        };
        Ok(Api {
            http,
            table: Arc::new(RwLock::new(table)),
        })
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // A poisoned lock only means a panic elsewhere; the table is still usable.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The members in the clients' order.
    pub fn order(&self) -> Vec<u64> {
        self.table().order.clone()
    }

    /// The member at position `pos` of the clients' order.
    pub fn at(&self, pos: usize) -> Option<u64> {
        self.table().order.get(pos).copied()
    }

    /// Makes node `id` callable at `addr` (a node that joins).
    pub fn register(&self, id: u64, addr: SocketAddr) {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        t.addrs.insert(id, addr);
    }

    /// `new` takes `old`'s place in the clients' order (see `Table::replace`).
    pub fn replace(&self, old: u64, new: u64) -> bool {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        t.replace(old, new)
    }

    fn addr(&self, node: u64) -> Option<SocketAddr> {
        self.table().addrs.get(&node).copied()
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
    fn a_replacement_takes_its_predecessors_place_in_the_clients_order() {
        let a = |p: u16| SocketAddr::from(([10, 77, 0, 11], p));
        let mut t = Table {
            addrs: [(1, a(1)), (2, a(2)), (3, a(3))].into_iter().collect(),
            order: vec![1, 2, 3],
        };
        // Not registered yet: refused.
        assert!(!t.replace(2, 4));
        t.addrs.insert(4, a(4));
        assert!(t.replace(2, 4));
        assert_eq!(t.order, [1, 4, 3]);
        // 2 has no place any more; 4 has one already.
        assert!(!t.replace(2, 5));
        t.addrs.insert(5, a(5));
        assert!(!t.replace(1, 4));
        assert!(t.replace(4, 5));
        assert_eq!(t.order, [1, 5, 3]);
        // The removed ones stay callable (they just stop answering).
        assert!(t.addrs.contains_key(&2) && t.addrs.contains_key(&4));
    }

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

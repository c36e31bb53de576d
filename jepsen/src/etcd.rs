//! The reference system for writes: a three-member etcd 3.4 (Debian's `etcd-server`) on
//! loopback, with its defaults (fsync on every WAL write), started beside hookd in the same run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// Three etcd members. Dropping it kills them.
pub struct EtcdCluster {
    pub client_urls: Vec<String>,
    children: Vec<Child>,
}

impl EtcdCluster {
    /// Starts three members with data dirs and logs under `dir`, and waits until one leads.
    pub async fn start(dir: &Path, http: &reqwest::Client) -> anyhow::Result<EtcdCluster> {
        // etcd binds its addresses itself (it takes no inherited listeners), so the ports are
        // chosen by binding port 0 and released for it: all six held at once, so they differ,
        // and released just before the members start. Another process could take one in that
        // moment; the member then fails to listen and the leader wait below reports it.
        let held = (0..6)
            .map(|_| crate::local::loopback_listener())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let urls = held
            .iter()
            .map(|l| Ok(format!("http://{}", l.local_addr()?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (clients, peers) = (urls[..3].to_vec(), urls[3..].to_vec());
        let initial = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}={p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            client_urls: clients.clone(),
            children: Vec::new(),
        };
        drop(held);
        for i in 0..3 {
            let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log")))?;
            let child = Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-m{i}")))
                .args(["--listen-client-urls", &clients[i]])
                .args(["--advertise-client-urls", &clients[i]])
                .args(["--listen-peer-urls", &peers[i]])
                .args(["--initial-advertise-peer-urls", &peers[i]])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "hookd-bench"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("start etcd (Debian package `etcd-server`)")?;
            cluster.children.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.leader(http).await.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "etcd elected no leader within 30 s (logs in {})",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(cluster)
    }

    /// The index of the member that leads, if one says it does.
    pub async fn leader(&self, http: &reqwest::Client) -> Option<usize> {
        for (i, url) in self.client_urls.iter().enumerate() {
            let Ok(r) = http
                .post(format!("{url}/v3/maintenance/status"))
                .body("{}")
                .send()
                .await
            else {
                continue;
            };
            let Ok(v) = r.json::<Value>().await else {
                continue;
            };
            if v["leader"].as_str().is_some() && v["leader"] == v["header"]["member_id"] {
                return Some(i);
            }
        }
        None
    }

    /// How many keys start with `prefix`, read linearizably from the leader.
    pub async fn count(&self, http: &reqwest::Client, prefix: &str) -> anyhow::Result<u64> {
        let end = {
            let mut b = prefix.as_bytes().to_vec();
            *b.last_mut().context("empty prefix")? += 1;
            b
        };
        let v: Value = http
            .post(format!("{}/v3/kv/range", self.client_urls[0]))
            .json(&serde_json::json!({
                "key": b64(prefix.as_bytes()),
                "range_end": b64(&end),
                "count_only": true,
            }))
            .send()
            .await?
            .json()
            .await?;
        // The gateway renders int64 as a string and leaves out zero values.
        Ok(match &v["count"] {
            Value::String(s) => s.parse()?,
            Value::Null => 0,
            other => bail!("etcd range answered {other}"),
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Standard base64 with padding (etcd's JSON gateway wants keys and values so).
fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

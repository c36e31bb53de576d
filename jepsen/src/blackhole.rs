//! The black-hole target: a second listener next to the sink (root namespace, reachable from
//! the nodes like the sink) that accepts every TCP connection, reads what it is sent and never
//! answers. A webhook aimed at it holds a delivery slot until the job's timeout. It records one
//! line per connection in `blackhole.jsonl` (who connected, when, when the sender gave up, the
//! first request's run): the ground truth of how many attempts were in flight to it at once.
//! Nothing it receives is a delivery: the sink alone decides what counts as delivered.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::history::{now_us, parse_rfc3339_us};

/// Path prefix of every black-hole URL, so the checkers know a black-hole job from its create.
pub const PATH: &str = "/blackhole/";
/// Connections held at once; beyond this a new one is closed at once (and counted).
const HELD_MAX: usize = 8192;
/// A connection is dropped by us after this long at the latest (senders give up far sooner:
/// a job timeout is at most 60 s).
const HOLD_MAX: Duration = Duration::from_secs(90);
const HEAD_BYTES_MAX: usize = 64 * 1024;

/// One connection to the black hole.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Conn {
    /// The node that connected (netns mode only).
    pub from: Option<u64>,
    /// Accepted, µs.
    pub opened: i64,
    /// The sender closed it (or we did, after `HOLD_MAX` or at the end of the run), µs.
    pub closed: i64,
    /// From the first request's headers, when one arrived.
    #[serde(default)]
    pub job_id: String,
    #[serde(default)]
    pub webhook_id: String,
    #[serde(default)]
    pub scheduled_at: Option<i64>,
    #[serde(default)]
    pub attempt: u32,
    /// Closed by us at once because `HELD_MAX` connections were held.
    #[serde(default)]
    pub refused: bool,
}

struct State {
    out: Option<BufWriter<File>>,
    got: Vec<Conn>,
}

/// A running black hole.
#[derive(Clone)]
pub struct BlackHole {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    held: Arc<AtomicUsize>,
}

impl BlackHole {
    /// Binds `ip:0` and swallows connections until the process ends. `who` maps a source
    /// address to a node.
    pub async fn start(
        ip: IpAddr,
        out: Option<&Path>,
        who: Arc<dyn Fn(IpAddr) -> Option<u64> + Send + Sync>,
    ) -> anyhow::Result<BlackHole> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let addr = listener.local_addr()?;
        let out = match out {
            Some(p) => Some(BufWriter::new(File::create(p)?)),
            None => None,
        };
        let bh = BlackHole {
            addr,
            state: Arc::new(Mutex::new(State {
                out,
                got: Vec::new(),
            })),
            held: Arc::default(),
        };
        let me = bh.clone();
        tokio::spawn(async move {
            while let Ok((conn, peer)) = listener.accept().await {
                let opened = now_us();
                let from = who(peer.ip());
                if me.held.fetch_add(1, Ordering::SeqCst) >= HELD_MAX {
                    me.held.fetch_sub(1, Ordering::SeqCst);
                    drop(conn);
                    me.record(Conn {
                        from,
                        opened,
                        closed: opened,
                        job_id: String::new(),
                        webhook_id: String::new(),
                        scheduled_at: None,
                        attempt: 0,
                        refused: true,
                    });
                    continue;
                }
                let me = me.clone();
                tokio::spawn(async move {
                    let mut c = Conn {
                        from,
                        opened,
                        closed: 0,
                        job_id: String::new(),
                        webhook_id: String::new(),
                        scheduled_at: None,
                        attempt: 0,
                        refused: false,
                    };
                    let _ = tokio::time::timeout(HOLD_MAX, swallow(conn, &mut c)).await;
                    c.closed = now_us();
                    me.held.fetch_sub(1, Ordering::SeqCst);
                    me.record(c);
                });
            }
        });
        Ok(bh)
    }

    /// The URL a black-hole job calls.
    pub fn url(&self, job_id: &str) -> String {
        format!("http://{}{PATH}{job_id}", self.addr)
    }

    fn record(&self, c: Conn) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(out) = s.out.as_mut() {
                if let Ok(line) = serde_json::to_string(&c) {
                    let _ = writeln!(out, "{line}");
                }
            }
            s.got.push(c);
        }
    }

    /// Connections that ended so far, plus the ones still held (closed = now, not recorded).
    pub fn conns(&self) -> Vec<Conn> {
        self.state.lock().map(|s| s.got.clone()).unwrap_or_default()
    }

    /// Connections held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    pub fn flush(&self) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(out) = s.out.as_mut() {
                let _ = out.flush();
            }
        }
    }
}

/// Reads (and forgets) everything the sender writes until it closes; notes the first request's
/// run from its headers. Never writes a byte back.
async fn swallow(mut conn: TcpStream, c: &mut Conn) {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let mut parsed = false;
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if parsed {
            continue;
        }
        head.extend_from_slice(&buf[..n]);
        let end = head.windows(4).position(|w| w == b"\r\n\r\n");
        if end.is_some() || head.len() >= HEAD_BYTES_MAX {
            parsed = true;
            let text = String::from_utf8_lossy(&head[..end.unwrap_or(head.len())]).into_owned();
            for line in text.lines().skip(1) {
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                let v = v.trim();
                match k.trim().to_ascii_lowercase().as_str() {
                    "hookd-job-id" => c.job_id = v.to_owned(),
                    "webhook-id" => c.webhook_id = v.to_owned(),
                    "hookd-scheduled-at" => c.scheduled_at = parse_rfc3339_us(v),
                    "hookd-attempt" => c.attempt = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
            head = Vec::new();
        }
    }
}

/// The most connections open at once from each sender (None: unknown sender) between `from`
/// and `to`. A connection counts from its accept until `close_tol` before we saw it closed:
/// our reader notices a close a little after the sender's next connect can already be
/// accepted, and without the tolerance a sender exactly at its cap would look one over it.
pub fn peak_open(
    conns: &[Conn],
    from: i64,
    to: i64,
    close_tol: i64,
) -> std::collections::BTreeMap<Option<u64>, usize> {
    let mut by: std::collections::BTreeMap<Option<u64>, Vec<(i64, i32)>> = Default::default();
    for c in conns.iter().filter(|c| !c.refused) {
        let end = (c.closed - close_tol).max(c.opened);
        if end < from || c.opened > to {
            continue;
        }
        let e = by.entry(c.from).or_default();
        e.push((c.opened, 1));
        e.push((end, -1));
    }
    by.into_iter()
        .map(|(k, mut ev)| {
            // Closes before opens at the same instant.
            ev.sort();
            let (mut cur, mut peak) = (0i32, 0i32);
            for (_, d) in ev {
                cur += d;
                peak = peak.max(cur);
            }
            (k, peak.max(0) as usize)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn accepts_reads_and_never_answers() {
        let bh = BlackHole::start("127.0.0.1".parse().unwrap(), None, Arc::new(|_| Some(2)))
            .await
            .unwrap();
        let mut s = TcpStream::connect(bh.addr).await.unwrap();
        s.write_all(
            b"POST /blackhole/j1 HTTP/1.1\r\nhookd-job-id: j1\r\nwebhook-id: run_1_2\r\n\
              hookd-scheduled-at: 2025-01-01T00:00:01.000Z\r\nhookd-attempt: 2\r\n\
              content-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(read.is_err(), "the black hole must not answer");
        assert_eq!(bh.held(), 1);
        drop(s);
        for _ in 0..100 {
            if !bh.conns().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = bh.conns();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].job_id, "j1");
        assert_eq!(got[0].webhook_id, "run_1_2");
        assert_eq!(got[0].scheduled_at, Some(1_735_689_601_000_000));
        assert_eq!(got[0].attempt, 2);
        assert_eq!(got[0].from, Some(2));
        assert!(got[0].closed >= got[0].opened);
        assert_eq!(bh.held(), 0);
        assert!(bh.url("x").ends_with("/blackhole/x"));
    }

    #[test]
    fn peak_counts_overlapping_connections_per_sender() {
        let c = |from, opened, closed| Conn {
            from,
            opened,
            closed,
            job_id: String::new(),
            webhook_id: String::new(),
            scheduled_at: None,
            attempt: 1,
            refused: false,
        };
        let conns = vec![
            c(Some(1), 0, 100),
            c(Some(1), 10, 200),
            c(Some(1), 95, 300), // opened 5 before the first was seen closed: within tolerance
            c(Some(2), 0, 1000),
            c(None, 50, 100),
        ];
        let p = peak_open(&conns, 0, 1000, 10);
        assert_eq!(p[&Some(1)], 2);
        assert_eq!(p[&Some(2)], 1);
        assert_eq!(p[&None], 1);
        let p = peak_open(&conns, 0, 1000, 0);
        assert_eq!(p[&Some(1)], 3);
        // Only connections overlapping the span count.
        let p = peak_open(&conns, 400, 1000, 0);
        assert_eq!(p.get(&Some(1)), None);
    }
}

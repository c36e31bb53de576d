//! The fallback partition mechanism: a userspace TCP proxy in front of each node's Raft port.
//! Every peer dials the proxy of its destination (the `--initial-cluster` lists proxy
//! addresses). The proxy learns which node opened a connection by finding the connecting
//! socket's inode in `/proc/net/tcp` among the open files of the node processes, so it can cut
//! a pair of nodes in both directions: bytes of a cut pair are read and discarded (a blackhole,
//! connections stay open, as in a silent packet drop). Connections whose origin is unknown pass.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::net::NodeNet;

#[derive(Default)]
struct State {
    blocked: BTreeSet<(u64, u64)>,
    pids: HashMap<u64, u32>,
}

/// One proxy per node, sharing the cut table.
#[derive(Clone)]
pub struct Proxies {
    state: Arc<Mutex<State>>,
    addrs: HashMap<u64, SocketAddr>,
}

impl Proxies {
    pub async fn start(nodes: &[NodeNet]) -> anyhow::Result<Proxies> {
        let state = Arc::new(Mutex::new(State::default()));
        let mut addrs = HashMap::new();
        for node in nodes {
            let listener = TcpListener::bind(SocketAddr::new(node.ip, 0))
                .await
                .context("bind proxy")?;
            addrs.insert(node.id, listener.local_addr()?);
            let dst = node.id;
            let target = node.peer_listen;
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((conn, from)) = listener.accept().await {
                    let state = state.clone();
                    tokio::spawn(async move {
                        let src = identify(&state, from).await;
                        if let Ok(Ok(up)) =
                            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target))
                                .await
                        {
                            pipe(conn, up, src, dst, state).await;
                        }
                    });
                }
            });
        }
        Ok(Proxies { state, addrs })
    }

    pub fn advertised(&self, id: u64) -> Option<SocketAddr> {
        self.addrs.get(&id).copied()
    }

    /// Tells the proxies which process is which node (called on every (re)start).
    pub fn set_pid(&self, id: u64, pid: u32) {
        if let Ok(mut s) = self.state.lock() {
            s.pids.insert(id, pid);
        }
    }

    pub fn block(&self, a: u64, b: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.blocked.insert((a.min(b), a.max(b)));
        }
    }

    pub fn heal(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.blocked.clear();
        }
    }
}

fn is_blocked(state: &Mutex<State>, src: Option<u64>, dst: u64) -> bool {
    match src {
        Some(s) => state
            .lock()
            .map(|st| st.blocked.contains(&(s.min(dst), s.max(dst))))
            .unwrap_or(false),
        None => false,
    }
}

/// Copies both ways, discarding bytes while the pair is cut.
async fn pipe(a: TcpStream, b: TcpStream, src: Option<u64>, dst: u64, state: Arc<Mutex<State>>) {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let s1 = state.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match ar.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !is_blocked(&s1, src, dst) && bw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = bw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match br.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !is_blocked(&state, src, dst) && aw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = aw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Which node process owns the socket connected from `from`.
async fn identify(state: &Mutex<State>, from: SocketAddr) -> Option<u64> {
    let pids: Vec<(u64, u32)> = state
        .lock()
        .ok()?
        .pids
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    tokio::task::spawn_blocking(move || {
        let inode = socket_inode(from)?;
        let needle = format!("socket:[{inode}]");
        for (id, pid) in pids {
            let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
            for entry in dir.flatten() {
                if let Ok(target) = std::fs::read_link(entry.path()) {
                    if target.to_string_lossy() == needle {
                        return Some(id);
                    }
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The inode of the local TCP socket bound to `addr` (IPv4), from `/proc/net/tcp`.
fn socket_inode(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    parse_inode(&table, &want)
}

fn parse_inode(table: &str, local: &str) -> Option<u64> {
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() > 9 && cols[1] == local {
            return cols[9].parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_inode_of_a_local_address() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0B00007F:1C84 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_inode(table, "0B00007F:1C84"), Some(12345));
        assert_eq!(parse_inode(table, "0B00007F:1C85"), None);
    }

    #[tokio::test]
    async fn identifies_our_own_socket_and_blackholes_a_cut_pair() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (_server, from) = listener.accept().await.unwrap();
        let state = Mutex::new(State::default());
        state.lock().unwrap().pids.insert(7, std::process::id());
        assert_eq!(identify(&state, from).await, Some(7));
        drop(client);
        state.lock().unwrap().blocked.insert((3, 7));
        assert!(is_blocked(&state, Some(7), 3));
        assert!(!is_blocked(&state, Some(7), 2));
        assert!(!is_blocked(&state, None, 3));
    }
}

//! The fallback partition mechanism: a userspace TCP proxy in front of each node's Raft port.
//! It knows *slots* (`net.rs`): one listener per slot, a slot's process registered on every
//! start (`set_pid`), cuts and counts per slot pair; `Net` maps node ids to slots.
//!
//! **Why the proxy must look at processes.** hookd dials a peer at the address recorded for it in
//! the replicated Raft membership (openraft hands the membership's `Node { addr }` to the
//! network factory; `--initial-cluster` only seeds the membership of a new data dir), so every
//! node dials the same address for a given destination: a listener per (source, destination)
//! pair cannot be arranged. Nor can hookd be told which local address to dial from, and on
//! loopback the kernel picks 127.0.0.1 (the route's `src`) for every node: the source address
//! says nothing either. What is left is the connecting socket itself.
//!
//! **How a connection is attributed.** The `--initial-cluster` lists the proxies' addresses, one
//! listener per destination node on that node's IP, forwarding to the node's `--peer-listen`.
//! On accept, before any byte passes, the proxy looks up the client end of the connection in
//! `/proc/net/tcp` by its full address pair (local = the connection's peer address, remote =
//! the proxy's address), takes its inode, and finds which registered node process (`set_pid`,
//! on every start; hookd is spawned directly, so the pid is hookd's) holds that socket among its
//! open files. Two mistakes of the first version let partitions leak, each through a pooled
//! connection that then stayed uncut for the rest of the run: it matched the local address
//! alone, but Linux shares one ephemeral port among connections to different destinations,
//! across processes too, so the row found could be another node's socket; and the fd scan
//! gave up at the first registered pid that had no `/proc` entry (a killed node), leaving the
//! connection unattributed, and unattributed connections passed. Now a connection that cannot
//! be attributed (after three tries) is closed and counted, never passed: hookd redials, and a
//! failure shows up in the counts and as peer errors, never as a cut that silently does not
//! happen.
//!
//! **Cuts.** While a pair is cut, the bytes of its connections, old and new, in both directions,
//! are read and discarded (a blackhole, like a DROP rule: the sender sees a silent peer and
//! times out). A connection that lost bytes is closed when its pair heals, since its byte
//! stream is broken (TCP under DROP would have retransmitted). `stats` (printed at teardown)
//! counts connections per ordered pair, discarded bytes per direction, closes, and connections
//! that could not be attributed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::net::NodeNet;

/// What the proxies did, for the run's summary and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections attributed, per (source node, destination node).
    pub connections: BTreeMap<(u64, u64), u64>,
    /// Connections whose client end is open but in no node process (closed at once; should
    /// stay 0).
    pub unattributed: u64,
    /// Connections whose client had closed them before they could be attributed (closed at
    /// once; hookd gives up on a peer request after as little as 50 ms).
    pub gone: u64,
    /// Bytes discarded by cuts, per direction (from, to).
    pub discarded: BTreeMap<(u64, u64), u64>,
    /// Connections closed at heal because a cut had discarded some of their bytes.
    pub closed_at_heal: u64,
    /// The longest time from accept to attribution (no byte passes before it).
    pub slowest_attribution: Duration,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = |m: &BTreeMap<(u64, u64), u64>| {
            m.iter()
                .map(|((a, b), n)| format!("{a}->{b} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "connections [{}], {} unattributed (closed), {} closed by the client before attribution; \
             slowest attribution {} ms; bytes discarded in cuts [{}]; {} closed at heal",
            pairs(&self.connections),
            self.unattributed,
            self.gone,
            self.slowest_attribution.as_millis(),
            pairs(&self.discarded),
            self.closed_at_heal
        )
    }
}

#[derive(Default)]
struct State {
    /// Cut pairs, as (min, max).
    cut: BTreeSet<(u64, u64)>,
    pids: BTreeMap<u64, u32>,
    stats: Stats,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every heal; connections that lost bytes then close.
    heals: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the tables are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_cut(&self, a: u64, b: u64) -> bool {
        self.lock().cut.contains(&(a.min(b), a.max(b)))
    }

    /// True (and counted, and `lost` set) when `n` bytes from `from` to `to` must be dropped.
    /// Under the lock, so a heal that follows sees `lost`.
    fn discard(&self, from: u64, to: u64, n: usize, lost: &AtomicBool) -> bool {
        let mut s = self.lock();
        if !s.cut.contains(&(from.min(to), from.max(to))) {
            return false;
        }
        *s.stats.discarded.entry((from, to)).or_default() += n as u64;
        lost.store(true, Ordering::SeqCst);
        true
    }
}

/// One proxy per node, sharing the cut table.
#[derive(Clone)]
pub struct Proxies {
    shared: Arc<Shared>,
    addrs: BTreeMap<u64, SocketAddr>,
}

impl Proxies {
    pub async fn start(nodes: &[NodeNet]) -> anyhow::Result<Proxies> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            heals: watch::channel(0).0,
        });
        let mut addrs = BTreeMap::new();
        for node in nodes {
            let listener = TcpListener::bind(SocketAddr::new(node.ip, 0))
                .await
                .context("bind proxy")?;
            addrs.insert(node.slot, listener.local_addr()?);
            let dst = node.slot;
            let target = node.peer_listen;
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((conn, _)) => {
                            tokio::spawn(serve(conn, dst, target, shared.clone()));
                        }
                        // Out of fds, say: keep the proxy alive.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            });
        }
        Ok(Proxies { shared, addrs })
    }

    pub fn advertised(&self, id: u64) -> Option<SocketAddr> {
        self.addrs.get(&id).copied()
    }

    /// Tells the proxies which process is which node (called on every (re)start).
    pub fn set_pid(&self, id: u64, pid: u32) {
        self.shared.lock().pids.insert(id, pid);
    }

    /// Cuts `a` and `b` apart, both ways, on open connections as well as new ones.
    pub fn block(&self, a: u64, b: u64) {
        self.shared.lock().cut.insert((a.min(b), a.max(b)));
    }

    /// Removes every cut; connections that lost bytes close.
    pub fn heal(&self) {
        self.shared.lock().cut.clear();
        self.shared.heals.send_modify(|n| *n += 1);
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }
}

/// One accepted connection: attribute it, then relay it to the node.
async fn serve(conn: TcpStream, dst: u64, target: SocketAddr, shared: Arc<Shared>) {
    let (Ok(peer), Ok(local)) = (conn.peer_addr(), conn.local_addr()) else {
        return;
    };
    let pids: Vec<(u64, u32)> = shared.lock().pids.iter().map(|(k, v)| (*k, *v)).collect();
    let accepted = std::time::Instant::now();
    let mut found = Err(Miss::NotANode);
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pids = pids.clone();
        found = tokio::task::spawn_blocking(move || origin(peer, local, &pids))
            .await
            .unwrap_or(Err(Miss::NotANode));
        if found.is_ok() {
            break;
        }
    }
    let src = match found {
        Ok(src) => {
            let mut s = shared.lock();
            s.stats.slowest_attribution = s.stats.slowest_attribution.max(accepted.elapsed());
            src
        }
        Err(miss) => {
            let mut s = shared.lock();
            match miss {
                Miss::Gone => s.stats.gone += 1,
                Miss::NotANode => s.stats.unattributed += 1,
            }
            return; // dropping `conn` closes it
        }
    };
    *shared
        .lock()
        .stats
        .connections
        .entry((src, dst))
        .or_default() += 1;
    let Ok(Ok(up)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await
    else {
        return;
    };
    let _ = conn.set_nodelay(true);
    let _ = up.set_nodelay(true);
    relay(conn, up, src, dst, shared).await;
}

/// Copies both ways, discarding bytes while the pair is cut; closes both ends when either side
/// closes, or at the heal after a loss.
async fn relay(client: TcpStream, up: TcpStream, src: u64, dst: u64, shared: Arc<Shared>) {
    let lost = AtomicBool::new(false);
    let mut heals = shared.heals.subscribe();
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    let both = async {
        tokio::join!(
            copy(cr, uw, src, dst, &shared, &lost),
            copy(ur, cw, dst, src, &shared, &lost)
        )
    };
    let broken_at_heal = async {
        loop {
            if heals.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if lost.load(Ordering::SeqCst) && !shared.is_cut(src, dst) {
                // Counted before the close, so whoever sees the close sees the count.
                shared.lock().stats.closed_at_heal += 1;
                break;
            }
        }
    };
    // Whichever ends first; dropping the other closes both connections.
    tokio::select! {
        _ = both => {}
        _ = broken_at_heal => {}
    }
}

async fn copy(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    from: u64,
    to: u64,
    shared: &Shared,
    lost: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.discard(from, to, n, lost) {
            continue;
        }
        // Bytes went missing earlier: the stream is broken, close it.
        if lost.load(Ordering::SeqCst) || w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// The client end is closed already (no row, or an orphan row without an inode).
    Gone,
    /// The client end is open in no registered node process (or /proc is unreadable).
    NotANode,
}

/// The node whose process holds the client end of the connection from `peer` to `local`.
fn origin(peer: SocketAddr, local: SocketAddr, pids: &[(u64, u32)]) -> Result<u64, Miss> {
    let table = match peer {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let table = std::fs::File::open(table).map_err(|_| Miss::NotANode)?;
    let inode = socket_inode(std::io::BufReader::new(table), peer, local).ok_or(Miss::Gone)?;
    let needle = format!("socket:[{inode}]");
    // Every registered process is looked at; one that is gone (a killed node) is skipped.
    pids.iter()
        .find_map(|&(id, pid)| {
            let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
            dir.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .any(|t| t.as_os_str() == std::ffi::OsStr::new(&needle))
                .then_some(id)
        })
        .ok_or(Miss::NotANode)
}

/// The address as `/proc/net/tcp{,6}` prints it: the address in 32-bit words of host byte
/// order, then the port, all hex.
fn proc_hex(addr: SocketAddr) -> String {
    let octets: Vec<u8> = match addr {
        SocketAddr::V4(a) => a.ip().octets().to_vec(),
        SocketAddr::V6(a) => a.ip().octets().to_vec(),
    };
    let mut s = String::new();
    for word in octets.chunks(4) {
        let w = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
        s.push_str(&format!("{w:08X}"));
    }
    format!("{s}:{:04X}", addr.port())
}

/// The inode of the socket with exactly this local and remote address (rows without an inode,
/// such as TIME_WAIT, are skipped). Reads only up to the match: the kernel formats the table
/// as it is read, thousands of rows during cuts.
fn socket_inode(table: impl BufRead, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (l, r) = (proc_hex(local), proc_hex(remote));
    table
        .lines()
        .skip(1)
        .map_while(Result::ok)
        .find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[1] == l && cols[2] == r {
                cols[9].parse().ok().filter(|i| *i != 0)
            } else {
                None
            }
        })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::time::Instant;

    use tokio::sync::mpsc;

    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    #[test]
    fn finds_the_socket_by_its_full_address_pair() {
        // Two sockets share the local address 127.0.0.1:7300 (0x1C84), towards 127.0.0.11:40000
        // and 127.0.0.12:40000 (0x9C40); a TIME_WAIT row (inode 0) shares it too.
        let table = format!(
            "{HEADER}   0: 0100007F:1C84 0B00007F:9C40 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000\n   1: 0100007F:1C84 0C00007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1\n   2: 0100007F:1C84 0B00007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 20 4 30 10 -1\n"
        );
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            socket_inode(table.as_bytes(), a("127.0.0.1:7300"), a("127.0.0.11:40000")),
            Some(111)
        );
        assert_eq!(
            socket_inode(table.as_bytes(), a("127.0.0.1:7300"), a("127.0.0.12:40000")),
            Some(222)
        );
        assert_eq!(
            socket_inode(table.as_bytes(), a("127.0.0.1:7300"), a("127.0.0.13:40000")),
            None
        );
        if cfg!(target_endian = "little") {
            assert_eq!(proc_hex(a("127.0.0.1:7300")), "0100007F:1C84");
            assert_eq!(
                proc_hex(a("[::1]:80")),
                "00000000000000000000000001000000:0050"
            );
        }
    }

    /// Set in the environment of a copy of this test binary that plays a node process.
    const CHILD_ENV: &str = "HOOKD_JEPSEN_PROXY_TEST_PEER";

    /// A node process for `cut_pairs_go_silent_both_ways_and_heal_restores` (a no-op in normal
    /// test runs). Reads commands on stdin: `connect NAME ADDR LOCAL_PORT` (bound with
    /// SO_REUSEADDR, 0 = any; answers `@@connected NAME PORT`) and `send NAME TEXT` (a line).
    /// Echoes whatever a connection receives and, when it closes, says `@@closed NAME BYTES`.
    #[test]
    fn peer_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let say = |line: String| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "@@{line}");
            let _ = out.flush();
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let mut conns = BTreeMap::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.unwrap();
            match line.split(' ').collect::<Vec<_>>()[..] {
                ["connect", name, addr, port] => {
                    let addr: SocketAddr = addr.parse().unwrap();
                    let local = SocketAddr::new(addr.ip(), port.parse().unwrap());
                    let stream = rt
                        .block_on(async {
                            let s = tokio::net::TcpSocket::new_v4()?;
                            s.set_reuseaddr(true)?;
                            s.bind(local)?;
                            s.connect(addr).await?.into_std()
                        })
                        .unwrap();
                    stream.set_nonblocking(false).unwrap();
                    say(format!(
                        "connected {name} {}",
                        stream.local_addr().unwrap().port()
                    ));
                    let (mut r, mut w) = (stream.try_clone().unwrap(), stream.try_clone().unwrap());
                    let label = name.to_owned();
                    std::thread::spawn(move || {
                        let (mut buf, mut total) = ([0u8; 1024], 0);
                        while let Ok(n @ 1..) = r.read(&mut buf) {
                            total += n;
                            if w.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        say(format!("closed {label} {total}"));
                    });
                    conns.insert(name.to_owned(), stream);
                }
                ["send", name, text] => {
                    let _ = conns
                        .get_mut(name)
                        .unwrap()
                        .write_all(format!("{text}\n").as_bytes());
                }
                _ => panic!("bad command {line:?}"),
            }
        }
    }

    /// A copy of this test binary running `peer_child`, as one node's process.
    struct Peer {
        child: Child,
        stdin: ChildStdin,
        lines: mpsc::UnboundedReceiver<String>,
    }

    impl Peer {
        fn spawn() -> Peer {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "proxy::tests::peer_child", "--nocapture"])
                .args(["--test-threads", "1"])
                .env(CHILD_ENV, "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            let (tx, lines) = mpsc::unbounded_channel();
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    // libtest may print "test NAME ... " in front of the first line.
                    if let Some((_, l)) = line.split_once("@@") {
                        let _ = tx.send(l.to_owned());
                    }
                }
            });
            Peer {
                child,
                stdin,
                lines,
            }
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        fn tell(&mut self, cmd: &str) {
            self.stdin.write_all(format!("{cmd}\n").as_bytes()).unwrap();
            self.stdin.flush().unwrap();
        }

        /// The next line the child says, within 10 s.
        async fn hear(&mut self) -> String {
            tokio::time::timeout(Duration::from_secs(10), self.lines.recv())
                .await
                .expect("the peer child said nothing for 10 s")
                .expect("the peer child is gone")
        }

        /// Connects `name` to `addr` from `local_port` (0: any); returns the local port.
        async fn connect(&mut self, name: &str, addr: SocketAddr, local_port: u16) -> u16 {
            self.tell(&format!("connect {name} {addr} {local_port}"));
            let line = self.hear().await;
            let port = line.strip_prefix(&format!("connected {name} "));
            port.and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("unexpected {line:?}"))
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    async fn accept(l: &TcpListener) -> TcpStream {
        tokio::time::timeout(Duration::from_secs(10), l.accept())
            .await
            .expect("the proxy relayed no connection within 10 s")
            .unwrap()
            .0
    }

    async fn read_line(s: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !got.ends_with(b"\n") {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout_at(deadline.into(), s.read(&mut b))
                .await
                .expect("no line within 10 s")
                .unwrap();
            assert_eq!(n, 1, "closed after {got:?}");
            got.push(b[0]);
        }
        String::from_utf8(got).unwrap()
    }

    /// Everything `s` still delivers until it is closed, within 10 s.
    async fn rest(s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("not closed within 10 s")
            .unwrap();
        got
    }

    /// `text` from the child up connection `name` to the node end `u`, and back down.
    async fn round_trip(peer: &mut Peer, name: &str, u: &mut TcpStream, text: &str) {
        peer.tell(&format!("send {name} {text}"));
        assert_eq!(read_line(u).await, format!("{text}\n"));
        u.write_all(b"echo\n").await.unwrap();
        assert_eq!(read_line(u).await, "echo\n");
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Node processes are real processes here (copies of this test binary); the node ends are
    /// plain listeners. Nodes 1 and 3 dial; node 2's registered process is dead.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_pairs_go_silent_both_ways_and_heal_restores() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut nodes = Vec::new();
        let mut upstream = BTreeMap::new();
        for id in 1..=3 {
            let l = TcpListener::bind(SocketAddr::new(lo, 0)).await.unwrap();
            nodes.push(NodeNet {
                slot: id,
                ip: lo,
                api: SocketAddr::new(lo, 0),
                peer_listen: l.local_addr().unwrap(),
                peer_advertised: SocketAddr::new(lo, 0),
                netns: None,
            });
            upstream.insert(id, l);
        }
        let proxies = Proxies::start(&nodes).await.unwrap();
        let proxy = |id| proxies.advertised(id).unwrap();
        let (mut n1, mut n3) = (Peer::spawn(), Peer::spawn());
        let mut dead = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "no-such-test"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        dead.wait().unwrap();
        proxies.set_pid(1, n1.pid());
        proxies.set_pid(2, dead.id());
        proxies.set_pid(3, n3.pid());

        // a: 1->2 and e: 3->1 from the same local port (the kernel does this on its own with
        // ephemeral ports); b: 1->3.
        let port = n1.connect("a", proxy(2), 0).await;
        let mut ua = accept(&upstream[&2]).await;
        assert_eq!(n3.connect("e", proxy(1), port).await, port);
        let mut ue = accept(&upstream[&1]).await;
        n1.connect("b", proxy(3), 0).await;
        let mut ub = accept(&upstream[&3]).await;
        round_trip(&mut n1, "a", &mut ua, "hello").await;
        round_trip(&mut n3, "e", &mut ue, "hello").await;
        round_trip(&mut n1, "b", &mut ub, "hello").await;
        let want = BTreeMap::from([((1, 2), 1), ((1, 3), 1), ((3, 1), 1)]);
        assert_eq!(proxies.stats().connections, want);

        proxies.block(1, 2);
        // Down the connection opened before the cut (2->1), and up it (1->2).
        ua.write_all(b"down\n").await.unwrap();
        until("5 bytes 2->1 discarded", || {
            proxies.stats().discarded.get(&(2, 1)) == Some(&5)
        })
        .await;
        n1.tell("send a up");
        until("3 bytes 1->2 discarded", || {
            proxies.stats().discarded.get(&(1, 2)) == Some(&3)
        })
        .await;
        // A connection opened during the cut goes silent too.
        n1.connect("c", proxy(2), 0).await;
        let mut uc = accept(&upstream[&2]).await;
        n1.tell("send c new");
        until("4 more bytes 1->2 discarded", || {
            proxies.stats().discarded.get(&(1, 2)) == Some(&7)
        })
        .await;
        // The other pairs still talk, both ways.
        round_trip(&mut n3, "e", &mut ue, "during").await;
        round_trip(&mut n1, "b", &mut ub, "during").await;

        proxies.heal();
        // The connections that lost bytes close; nothing sent during the cut ever arrived.
        assert_eq!(rest(&mut ua).await, b"");
        assert_eq!(rest(&mut uc).await, b"");
        let mut closed = vec![n1.hear().await, n1.hear().await];
        closed.sort();
        // Before the cut, a received "echo\n" (5 bytes); "down\n" never reached it.
        assert_eq!(closed, ["closed a 5", "closed c 0"]);
        assert_eq!(proxies.stats().closed_at_heal, 2);
        // A new connection of the healed pair works both ways; the others were never touched.
        n1.connect("d", proxy(2), 0).await;
        let mut ud = accept(&upstream[&2]).await;
        round_trip(&mut n1, "d", &mut ud, "after").await;
        round_trip(&mut n3, "e", &mut ue, "after").await;

        let s = proxies.stats();
        let want = BTreeMap::from([((1, 2), 3), ((1, 3), 1), ((3, 1), 1)]);
        assert_eq!(s.connections, want);
        assert_eq!(s.unattributed, 0);
        assert_eq!(s.discarded, BTreeMap::from([((1, 2), 7), ((2, 1), 5)]));
    }

    #[tokio::test]
    async fn a_connection_from_an_unknown_process_is_closed() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let target = TcpListener::bind(SocketAddr::new(lo, 0)).await.unwrap();
        let node = NodeNet {
            slot: 1,
            ip: lo,
            api: SocketAddr::new(lo, 0),
            peer_listen: target.local_addr().unwrap(),
            peer_advertised: SocketAddr::new(lo, 0),
            netns: None,
        };
        let proxies = Proxies::start(&[node]).await.unwrap();
        // This test process is no node.
        let mut s = TcpStream::connect(proxies.advertised(1).unwrap())
            .await
            .unwrap();
        assert_eq!(rest(&mut s).await, b"");
        assert_eq!(proxies.stats().unattributed, 1);
    }
}

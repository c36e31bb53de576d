//! The hosts and the wires between them. Preferred: four network namespaces `hj-n1..4` joined by
//! veth pairs to a bridge `hj-br0` in the root namespace (10.77.0.1 = bridge, where the sink and
//! the clients live; slots 10.77.0.11-14), with partitions as iptables DROP rules inside the
//! nodes' namespaces — where they apply whether or not bridged traffic passes netfilter.
//! Fallback (not root, or namespaces/iptables fail the probe): slots on 127.0.0.11-14 with every
//! peer link routed through the userspace proxy of `proxy.rs`. The mechanism used is recorded in
//! the report; a fault is never skipped silently.
//!
//! **Slots and ids.** A *slot* is a host: a namespace (or loopback address), its ports and its
//! disk. A node *id* is hookd's `--node-id`. They start equal (ids 1-3 in slots 1-3, slot 4
//! spare) and part when the membership fault replaces a node: the new id joins in the free slot
//! and the old one's slot becomes the spare (`Occupancy`). Everything the rest of the harness
//! asks of the network is by node id (`node`, `cut`, `node_of_ip`); the slot behind it is looked
//! up at that moment.
//!
//! Every external command runs with a timeout, and the harness only ever targets addresses of
//! its own node table.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::proxy::Proxies;

pub const BRIDGE: &str = "hj-br0";
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const API_PORT: u16 = 7100;
const PEER_PORT: u16 = 7200;
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// Hosts for nodes: the initial members' and one spare, where a replacement joins.
pub const SLOTS: u64 = 4;
/// Members at the start (ids 1..=INITIAL in slots 1..=INITIAL) and at the end of every run.
pub const INITIAL: u64 = 3;

pub fn netns_name(id: u64) -> String {
    format!("hj-n{id}")
}
fn veth_name(id: u64) -> String {
    format!("hj-v{id}")
}
pub fn node_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + id as u8)
}

/// How nodes are separated and partitions are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    NetnsIptables,
    LoopbackProxy,
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mechanism::NetnsIptables => "network namespaces + iptables DROP",
            Mechanism::LoopbackProxy => "127.0.0.x loopback + userspace peer proxy (FALLBACK)",
        })
    }
}

/// One slot's addresses (a host for one node at a time).
#[derive(Debug, Clone)]
pub struct NodeNet {
    pub slot: u64,
    pub ip: IpAddr,
    /// Public API, as clients reach it.
    pub api: SocketAddr,
    /// Where the node's Raft port listens.
    pub peer_listen: SocketAddr,
    /// The peer address the other nodes dial (the proxy's, in proxy mode).
    pub peer_advertised: SocketAddr,
    /// The namespace the node runs in, if any.
    pub netns: Option<String>,
}

/// Which node id occupies which slot. Pure bookkeeping, so it is table-tested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// slot → node id.
    by_slot: std::collections::BTreeMap<u64, u64>,
}

impl Occupancy {
    /// Ids 1..=n in slots 1..=n.
    pub fn initial(n: u64) -> Occupancy {
        Occupancy {
            by_slot: (1..=n).map(|k| (k, k)).collect(),
        }
    }

    pub fn slot_of(&self, id: u64) -> Option<u64> {
        self.by_slot
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(s, _)| *s)
    }

    pub fn id_at(&self, slot: u64) -> Option<u64> {
        self.by_slot.get(&slot).copied()
    }

    /// Puts `id` in `slot`; refused when the slot is taken or the id already sits elsewhere.
    pub fn occupy(&mut self, slot: u64, id: u64) -> anyhow::Result<()> {
        if let Some(other) = self.id_at(slot) {
            bail!("slot {slot} is node {other}'s");
        }
        if let Some(s) = self.slot_of(id) {
            bail!("node {id} sits in slot {s} already");
        }
        self.by_slot.insert(slot, id);
        Ok(())
    }

    /// Frees the slot of `id`; returns it.
    pub fn vacate(&mut self, id: u64) -> Option<u64> {
        let slot = self.slot_of(id)?;
        self.by_slot.remove(&slot);
        Some(slot)
    }

    /// The lowest slot of 1..=slots nobody occupies.
    pub fn free(&self, slots: u64) -> Option<u64> {
        (1..=slots).find(|s| !self.by_slot.contains_key(s))
    }

    /// The ids placed, ascending.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.by_slot.values().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// The topology of one run.
pub struct Net {
    pub mechanism: Mechanism,
    /// Every slot (`SLOTS`), by slot number.
    pub slots: Vec<NodeNet>,
    occupancy: Mutex<Occupancy>,
    /// Where the sink binds; nodes reach it.
    pub host_ip: IpAddr,
    /// Why the fallback was taken, if it was.
    pub fallback_reason: Option<String>,
    pub proxies: Option<Proxies>,
    cuts: Mutex<BTreeSet<(u64, u64)>>,
}

/// Runs a command with a deadline; returns stdout, or an error with stderr.
pub fn run_cmd(args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let (prog, rest) = args.split_first().context("empty command")?;
    let mut child = Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", args.join(" ")))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            if status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            bail!(
                "`{}` failed ({status}): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{}` timed out after {timeout:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes namespaces, veths and the bridge left by this harness (idempotent; errors ignored,
/// since most of them only say "does not exist").
pub fn cleanup_stale(n: u64) {
    for id in 1..=n {
        let _ = run_cmd(&["ip", "netns", "del", &netns_name(id)], CMD_TIMEOUT);
        let _ = run_cmd(&["ip", "link", "del", &veth_name(id)], CMD_TIMEOUT);
    }
    let _ = run_cmd(&["ip", "link", "del", BRIDGE], CMD_TIMEOUT);
}

fn setup_netns(n: u64) -> anyhow::Result<Vec<NodeNet>> {
    cleanup_stale(n);
    let host = format!("{HOST_IP}/24");
    run_cmd(
        &["ip", "link", "add", BRIDGE, "type", "bridge"],
        CMD_TIMEOUT,
    )?;
    run_cmd(&["ip", "addr", "add", &host, "dev", BRIDGE], CMD_TIMEOUT)?;
    run_cmd(&["ip", "link", "set", BRIDGE, "up"], CMD_TIMEOUT)?;
    let mut nodes = Vec::new();
    for id in 1..=n {
        let ns = netns_name(id);
        let veth = veth_name(id);
        let ip = node_ip(id);
        run_cmd(&["ip", "netns", "add", &ns], CMD_TIMEOUT)?;
        run_cmd(
            &[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            CMD_TIMEOUT,
        )?;
        run_cmd(&["ip", "link", "set", &veth, "master", BRIDGE], CMD_TIMEOUT)?;
        run_cmd(&["ip", "link", "set", &veth, "up"], CMD_TIMEOUT)?;
        run_cmd(
            &[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ],
            CMD_TIMEOUT,
        )?;
        run_cmd(&["ip", "-n", &ns, "link", "set", "eth0", "up"], CMD_TIMEOUT)?;
        run_cmd(&["ip", "-n", &ns, "link", "set", "lo", "up"], CMD_TIMEOUT)?;
        // The probe: a rule must be addable and removable inside the namespace.
        iptables(&ns, &["-A", "INPUT", "-s", "10.77.0.254", "-j", "DROP"])?;
        iptables(&ns, &["-F", "INPUT"])?;
        nodes.push(NodeNet {
            slot: id,
            ip: IpAddr::V4(ip),
            api: SocketAddr::new(IpAddr::V4(ip), API_PORT),
            peer_listen: SocketAddr::new(IpAddr::V4(ip), PEER_PORT),
            peer_advertised: SocketAddr::new(IpAddr::V4(ip), PEER_PORT),
            netns: Some(ns),
        });
    }
    // The bridge must actually carry traffic: ping each node from the root namespace.
    for node in &nodes {
        run_cmd(
            &["ping", "-c", "1", "-W", "2", &node.ip.to_string()],
            CMD_TIMEOUT,
        )
        .or_else(|_| {
            // `ping` may be missing; a TCP connect to a closed port that is refused proves
            // reachability just as well.
            match std::net::TcpStream::connect_timeout(&node.api, Duration::from_secs(2)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(String::new()),
                Ok(_) => Ok(String::new()),
                Err(e) => Err(anyhow::anyhow!("slot {} unreachable: {e}", node.slot)),
            }
        })?;
    }
    Ok(nodes)
}

fn iptables(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns, "iptables", "-w", "5"];
    full.extend_from_slice(args);
    run_cmd(&full, CMD_TIMEOUT)
}

/// Effective uid 0, read from /proc (no extra nix features needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(SocketAddr::new(ip, 0))?
        .local_addr()?
        .port())
}

impl Net {
    /// Builds the topology of `n` slots (ids 1..=`INITIAL` placed in the first ones):
    /// namespaces if possible (and wanted), else the loopback proxy.
    pub async fn setup(n: u64, force_proxy: bool) -> anyhow::Result<Net> {
        let reason = if force_proxy {
            "--net proxy was asked for".to_owned()
        } else if !is_root() {
            "not running as root".to_owned()
        } else {
            match tokio::task::spawn_blocking(move || setup_netns(n)).await? {
                Ok(nodes) => {
                    return Ok(Net {
                        mechanism: Mechanism::NetnsIptables,
                        slots: nodes,
                        occupancy: Mutex::new(Occupancy::initial(INITIAL.min(n))),
                        host_ip: IpAddr::V4(HOST_IP),
                        fallback_reason: None,
                        proxies: None,
                        cuts: Mutex::default(),
                    })
                }
                Err(e) => {
                    cleanup_stale(n);
                    format!("namespace setup failed: {e:#}")
                }
            }
        };
        // Fallback: loopback addresses, peers dial a proxy per destination node.
        let mut nodes = Vec::new();
        for id in 1..=n {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + id as u8));
            nodes.push(NodeNet {
                slot: id,
                ip,
                api: SocketAddr::new(ip, free_port(ip)?),
                peer_listen: SocketAddr::new(ip, free_port(ip)?),
                peer_advertised: SocketAddr::new(ip, 0),
                netns: None,
            });
        }
        let proxies = Proxies::start(&nodes).await?;
        for node in &mut nodes {
            node.peer_advertised = proxies.advertised(node.slot).context("proxy address")?;
        }
        Ok(Net {
            mechanism: Mechanism::LoopbackProxy,
            slots: nodes,
            occupancy: Mutex::new(Occupancy::initial(INITIAL.min(n))),
            host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            fallback_reason: Some(reason),
            proxies: Some(proxies),
            cuts: Mutex::default(),
        })
    }

    /// `--initial-cluster` value: the initial members, ids 1..=`INITIAL` in their slots.
    pub fn initial_cluster(&self) -> String {
        self.slots
            .iter()
            .filter(|n| n.slot <= INITIAL)
            .map(|n| format!("{}={}", n.slot, n.peer_advertised))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn occupancy(&self) -> std::sync::MutexGuard<'_, Occupancy> {
        // A poisoned lock only means a panic elsewhere; the table is still usable.
        self.occupancy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slot number `slot`.
    pub fn slot(&self, slot: u64) -> Option<&NodeNet> {
        self.slots.iter().find(|n| n.slot == slot)
    }

    /// The addresses of the slot node `id` occupies now.
    pub fn node(&self, id: u64) -> Option<NodeNet> {
        let slot = self.occupancy().slot_of(id)?;
        self.slot(slot).cloned()
    }

    /// The slot node `id` occupies now.
    pub fn slot_of(&self, id: u64) -> Option<u64> {
        self.occupancy().slot_of(id)
    }

    /// The lowest slot nobody occupies.
    pub fn free_slot(&self) -> Option<u64> {
        self.occupancy().free(self.slots.len() as u64)
    }

    /// Places `id` in `slot` (the slot must be free).
    pub fn occupy(&self, slot: u64, id: u64) -> anyhow::Result<()> {
        if self.slot(slot).is_none() {
            bail!("no slot {slot}");
        }
        self.occupancy().occupy(slot, id)
    }

    /// Frees the slot of `id` (its process must be gone); returns it.
    pub fn vacate(&self, id: u64) -> Option<u64> {
        self.occupancy().vacate(id)
    }

    /// Which node an address belongs to, now (the sink uses it to tell who delivered; a slot
    /// changes hands only after its last occupant has exited, so its connections are gone).
    pub fn node_of_ip(&self, ip: IpAddr) -> Option<u64> {
        if self.mechanism == Mechanism::LoopbackProxy {
            return None; // every node sends from 127.0.0.1 there
        }
        let slot = self.slots.iter().find(|n| n.ip == ip)?.slot;
        self.occupancy().id_at(slot)
    }

    /// Cuts the link between nodes `a` and `b` in both directions. Only nodes of our table.
    pub fn cut(&self, a: u64, b: u64) -> anyhow::Result<()> {
        let (na, nb) = match (self.node(a), self.node(b)) {
            (Some(x), Some(y)) if a != b => (x, y),
            _ => bail!("cut {a}-{b}: not two distinct nodes of this run"),
        };
        match self.mechanism {
            Mechanism::NetnsIptables => {
                for (me, other) in [(&na, &nb), (&nb, &na)] {
                    let ns = me.netns.as_deref().context("namespace")?;
                    let ip = other.ip.to_string();
                    iptables(ns, &["-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
                    iptables(ns, &["-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
                }
            }
            Mechanism::LoopbackProxy => {
                if let Some(p) = &self.proxies {
                    p.block(na.slot, nb.slot);
                }
            }
        }
        if let Ok(mut cuts) = self.cuts.lock() {
            cuts.insert((a.min(b), a.max(b)));
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> anyhow::Result<()> {
        match self.mechanism {
            Mechanism::NetnsIptables => {
                let mut first_err = None;
                for n in &self.slots {
                    if let Some(ns) = &n.netns {
                        for chain in ["INPUT", "OUTPUT"] {
                            if let Err(e) = iptables(ns, &["-F", chain]) {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                }
                if let Some(e) = first_err {
                    return Err(e);
                }
            }
            Mechanism::LoopbackProxy => {
                if let Some(p) = &self.proxies {
                    p.heal();
                }
            }
        }
        if let Ok(mut cuts) = self.cuts.lock() {
            cuts.clear();
        }
        Ok(())
    }

    /// The links cut right now (node id pairs), as the harness believes.
    pub fn cuts(&self) -> Vec<(u64, u64)> {
        self.cuts
            .lock()
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default()
    }

    /// What the peer proxies did (proxy mode only): connections per pair, bytes cut.
    pub fn proxy_stats(&self) -> Option<crate::proxy::Stats> {
        self.proxies.as_ref().map(|p| p.stats())
    }

    pub fn teardown(&self) {
        let _ = self.heal();
        if let Some(stats) = self.proxy_stats() {
            eprintln!("peer proxy: {stats}");
        }
        if self.mechanism == Mechanism::NetnsIptables {
            cleanup_stale(self.slots.len() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_maps_ids_to_slots_as_a_replacement_moves_them() {
        let mut o = Occupancy::initial(3);
        assert_eq!(o.ids(), [1, 2, 3]);
        assert_eq!(o.free(SLOTS), Some(4));
        // Replace 2 by 4: 4 joins in the spare slot, then 2 leaves and frees slot 2.
        o.occupy(4, 4).unwrap();
        assert_eq!(o.free(SLOTS), None);
        assert_eq!(o.vacate(2), Some(2));
        assert_eq!(
            (o.slot_of(4), o.id_at(2), o.free(SLOTS)),
            (Some(4), None, Some(2))
        );
        // The next new id takes the freed slot; ids and slots no longer match.
        o.occupy(2, 5).unwrap();
        assert_eq!(o.ids(), [1, 3, 4, 5]);
        assert_eq!(
            (o.id_at(2), o.slot_of(5), o.slot_of(2)),
            (Some(5), Some(2), None)
        );
        // A taken slot, or an id placed twice, is refused.
        assert!(o.occupy(2, 6).is_err());
        assert!(o.occupy(4, 1).is_err());
        o.vacate(4);
        assert!(o.occupy(4, 1).is_err(), "1 sits in slot 1");
        // Remove-then-re-add: the same id back in the same slot.
        assert_eq!(o.vacate(3), Some(3));
        assert_eq!(o.free(SLOTS), Some(3));
        o.occupy(3, 3).unwrap();
        assert_eq!(o.vacate(99), None);
    }
}

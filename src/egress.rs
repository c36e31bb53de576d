//! Egress policy (SPEC §3): which addresses a delivery may connect to, checked against the
//! resolved address, and the DNS resolver deliveries use.
//!
//! - Denied by default: every cluster member's API and peer address (host and port),
//!   `169.254.0.0/16` (cloud metadata, link-local), `fe80::/10` and `fd00:ec2::254`.
//! - `--egress-deny` adds ranges, `--egress-allow` opens ranges. Between the two the most
//!   specific range wins (a tie denies), and either wins over the defaults; neither ever opens
//!   a member's address.
//! - Every textual form of an address counts as that address: an IPv4-mapped (`::ffff:a.b.c.d`),
//!   IPv4-compatible (`::a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address is judged as the
//!   IPv4 address it embeds.
//! - A member on this node's host (loopback, every interface, or one of the host's own
//!   addresses) is reachable through any of those, so each of them counts as its address too.
//!
//! Where it is enforced: a job whose URL names a denied literal address is refused at create;
//! before every attempt the URL's host is resolved and every address checked with its port; and
//! the attempt's request runs with those checked addresses *pinned* (a task-local), so the
//! resolver reqwest connects through returns exactly them instead of asking DNS again: an answer
//! that changes between the check and the connect (DNS rebinding) is never used. A lookup
//! outside a pinned attempt (none is expected) cannot see the port, so it also drops every
//! address a member serves on. Lookups are asynchronous (hickory), off the blocking pool that
//! fsync uses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

/// Ranges denied unless an `--egress-allow` opens them.
pub const DEFAULT_DENY: [&str; 3] = ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"];

/// Why an address may not be reached, for the attempt's error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "egress_denied: {}", self.0)
    }
}

impl std::error::Error for Denied {}

/// The node's egress rules and the cluster's member addresses.
#[derive(Debug)]
pub struct EgressPolicy {
    /// `--egress-allow` (true) and `--egress-deny` (false) ranges.
    user: Vec<(IpNet, bool)>,
    defaults: Vec<IpNet>,
    members: RwLock<Vec<SocketAddr>>,
    /// Hosts of members whose API address is not known here yet (any port of theirs may be it).
    unsure: RwLock<Vec<IpAddr>>,
    /// Counts member refreshes; `refresh_now` waits for the next.
    refreshes: tokio::sync::watch::Sender<u64>,
    /// Asks the refresher (`refresh_wanted`) for a refresh now.
    wanted: tokio::sync::Notify,
    /// This host's own interface addresses.
    local: Vec<IpAddr>,
}

/// The address `ip` stands for: an IPv6 form that embeds an IPv4 address (mapped, compatible,
/// or NAT64's well-known prefix `64:ff9b::/96`) is that IPv4 address. `::` and `::1` stay.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let seg = v6.segments();
    let embedded = || {
        IpAddr::V4(Ipv4Addr::from(
            (u32::from(seg[6]) << 16) | u32::from(seg[7]),
        ))
    };
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return embedded();
    }
    if seg[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
        return embedded();
    }
    ip
}

/// This host's interface addresses (none if they cannot be read).
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .map(canonical)
        .collect()
}

/// Parses `CIDR,CIDR,…` (a bare address is a single-address range).
pub fn parse_ranges(flag: &str, list: &str) -> anyhow::Result<Vec<IpNet>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| anyhow::anyhow!("{flag}: {s:?} is not an address range (CIDR)"))
        })
        .collect()
}

impl EgressPolicy {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> EgressPolicy {
        let user = allow
            .into_iter()
            .map(|n| (n, true))
            .chain(deny.into_iter().map(|n| (n, false)))
            .collect();
        let defaults = DEFAULT_DENY.iter().filter_map(|s| s.parse().ok()).collect();
        EgressPolicy {
            user,
            defaults,
            members: RwLock::new(Vec::new()),
            unsure: RwLock::new(Vec::new()),
            refreshes: tokio::sync::watch::Sender::new(0),
            wanted: tokio::sync::Notify::new(),
            local: host_addresses(),
        }
    }

    /// This policy with `local` as the host's own addresses (for tests).
    pub fn with_host_addresses(mut self, local: Vec<IpAddr>) -> EgressPolicy {
        self.local = local.into_iter().map(canonical).collect();
        self
    }

    /// Replaces the member addresses (every member's API and peer address, resolved) and the
    /// hosts of members whose API address is unknown.
    pub fn set_members(&self, members: Vec<SocketAddr>, unsure: Vec<IpAddr>) {
        *self.members.write().unwrap_or_else(|p| p.into_inner()) = members;
        *self.unsure.write().unwrap_or_else(|p| p.into_inner()) = unsure;
        self.refreshes.send_modify(|n| *n += 1);
    }

    /// Whether `ip` may be the host of a member whose API address is not known yet: then
    /// `refresh_now` before judging an address on it.
    pub fn unsure_of(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let unsure = self.unsure.read().unwrap_or_else(|p| p.into_inner());
        unsure.iter().any(|h| self.same_host(canonical(*h), ip))
    }

    /// Asks for the members' addresses to be refreshed now and waits for it, at most `within`.
    pub async fn refresh_now(&self, within: std::time::Duration) {
        let mut done = self.refreshes.subscribe();
        done.mark_unchanged();
        self.wanted.notify_one();
        let _ = tokio::time::timeout(within, done.changed()).await;
    }

    /// Resolves when a refresh is asked for (`refresh_now`).
    pub async fn refresh_wanted(&self) {
        self.wanted.notified().await
    }

    /// Whether a member at `member` serves on `ip`: the same address, or both on this host.
    fn same_host(&self, member: IpAddr, ip: IpAddr) -> bool {
        let on_this_host =
            |ip: IpAddr| ip.is_loopback() || ip.is_unspecified() || self.local.contains(&ip);
        member == ip || (on_this_host(member) && on_this_host(ip))
    }

    /// The user's verdict for `ip`: the most specific matching range, a tie denying.
    fn user_verdict(&self, ip: IpAddr) -> Option<bool> {
        self.user
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, allow)| (net.prefix_len(), !allow))
            .map(|(_, allow)| *allow)
    }

    /// May `ip` be reached on some port? Ranges only; see `check` for members' ports.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Denied> {
        let ip = canonical(ip);
        match self.user_verdict(ip) {
            Some(true) => Ok(()),
            Some(false) => Err(Denied(format!("{ip} is in an --egress-deny range"))),
            None if self.defaults.iter().any(|n| n.contains(&ip)) => Err(Denied(format!(
                "{ip} is link-local or a cloud metadata address (open it with --egress-allow)"
            ))),
            None => Ok(()),
        }
    }

    /// May `ip` be reached whatever the port? `check_ip`, and not the address of any member.
    pub fn check_ip_any_port(&self, ip: IpAddr) -> Result<(), Denied> {
        let ports: Vec<u16> = {
            let members = self.members.read().unwrap_or_else(|p| p.into_inner());
            members.iter().map(SocketAddr::port).collect()
        };
        ports
            .into_iter()
            .try_for_each(|port| self.check(SocketAddr::new(ip, port)))
            .and_then(|()| self.check_ip(ip))
    }

    /// May `addr` be reached? Never a member's address (whatever `--egress-allow` says), then
    /// the ranges.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Denied> {
        let ip = canonical(addr.ip());
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        let member = members
            .iter()
            .find(|m| m.port() == addr.port() && self.same_host(canonical(m.ip()), ip));
        if let Some(m) = member {
            return Err(Denied(format!(
                "{} is the address of a cluster member ({m})",
                SocketAddr::new(ip, addr.port())
            )));
        }
        drop(members);
        self.check_ip(ip)
    }
}

/// The URL's host as an IP address, when it is a literal one.
pub fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// The resolver of deliveries: hickory (asynchronous, with its own cache) plus the policy.
#[derive(Clone)]
pub struct Resolver {
    dns: hickory_resolver::TokioResolver,
    policy: Arc<EgressPolicy>,
}

impl Resolver {
    /// The system's resolver configuration (`/etc/resolv.conf`, `/etc/hosts`); without one,
    /// the hosts file only.
    pub fn new(policy: Arc<EgressPolicy>) -> Resolver {
        use hickory_resolver::config::{ResolveHosts, ResolverConfig};
        use hickory_resolver::name_server::TokioConnectionProvider;
        let mut builder = hickory_resolver::TokioResolver::builder_tokio().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no system DNS configuration; deliveries resolve from the hosts file only");
            hickory_resolver::TokioResolver::builder_with_config(
                ResolverConfig::new(),
                TokioConnectionProvider::default(),
            )
        });
        builder.options_mut().use_hosts_file = ResolveHosts::Always;
        Resolver {
            dns: builder.build(),
            policy,
        }
    }

    pub fn policy(&self) -> &Arc<EgressPolicy> {
        &self.policy
    }

    /// Every address of `host`.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        match self.dns.lookup_ip(host).await {
            Ok(found) => Ok(found.iter().collect()),
            Err(e) => Err(format!("cannot resolve {host}: {e}")),
        }
    }

    /// Resolves `HOST:PORT` addresses of cluster members and makes them the policy's members,
    /// with the hosts of the `unsure` ones (members' peer addresses whose API address is not
    /// known yet). A name that does not resolve now is skipped (and tried again at the next
    /// refresh).
    pub async fn refresh_members(
        &self,
        addrs: impl IntoIterator<Item = String>,
        unsure: impl IntoIterator<Item = String>,
    ) {
        let mut members = Vec::new();
        for a in addrs {
            members.extend(self.resolve_addr(&a).await);
        }
        members.sort();
        members.dedup();
        let mut hosts = Vec::new();
        for a in unsure {
            hosts.extend(self.resolve_addr(&a).await.iter().map(SocketAddr::ip));
        }
        hosts.sort();
        hosts.dedup();
        self.policy.set_members(members, hosts);
    }

    /// Every address of a `HOST:PORT` (none if it does not parse or resolve).
    async fn resolve_addr(&self, a: &str) -> Vec<SocketAddr> {
        if let Ok(sa) = a.parse::<SocketAddr>() {
            return vec![sa];
        }
        let Some((host, port)) = a.rsplit_once(':') else {
            return Vec::new();
        };
        let Ok(port) = port.parse::<u16>() else {
            return Vec::new();
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ips = self.lookup(host).await.unwrap_or_default();
        ips.into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
    }

    /// Checks every address `url` leads to, with its port, before an attempt; what passed is
    /// to be pinned (`Pinned::scope`) while the attempt's request runs.
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<Pinned, UrlCheck> {
        let port = url.port_or_known_default().unwrap_or(80);
        let (host, ips) = match (literal_ip(url), url.host_str()) {
            (Some(ip), _) => (None, vec![ip]),
            (None, Some(host)) => {
                let ips = self.lookup(host).await.map_err(UrlCheck::Unresolved)?;
                (Some(host.to_ascii_lowercase()), ips)
            }
            (None, None) => return Err(UrlCheck::Unresolved("url has no host".into())),
        };
        for ip in &ips {
            self.policy
                .check(SocketAddr::new(*ip, port))
                .map_err(UrlCheck::Denied)?;
        }
        Ok(Pinned { host, ips })
    }
}

/// The addresses an attempt checked for its URL's host (`None` for a literal address, which
/// reqwest never resolves).
#[derive(Debug, Clone)]
pub struct Pinned {
    host: Option<String>,
    ips: Vec<IpAddr>,
}

tokio::task_local! {
    static PINNED: Pinned;
}

impl Pinned {
    /// Runs `f` (the attempt's request) with these addresses pinned for the resolver.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        PINNED.scope(self, f).await
    }

    /// The pinned addresses of `host`, when the current task pinned them.
    fn of(host: &str) -> Option<Vec<IpAddr>> {
        PINNED
            .try_with(|p| {
                p.host
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(host))
                    .then(|| p.ips.clone())
            })
            .ok()
            .flatten()
    }
}

/// Why a URL may not be tried now.
#[derive(Debug)]
pub enum UrlCheck {
    /// Denied by the policy: final, never retried.
    Denied(Denied),
    /// The name did not resolve: an ordinary failed attempt, retried.
    Unresolved(String),
    /// Not an http(s) URL with a host: final, never retried.
    Undeliverable(String),
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        // Read now, on the attempt's task: the returned future may finish elsewhere.
        let pinned = Pinned::of(name.as_str());
        Box::pin(async move {
            if let Some(ips) = pinned {
                let addrs = ips.into_iter().map(|ip| SocketAddr::new(ip, 0));
                return Ok(Box::new(addrs.collect::<Vec<_>>().into_iter()) as reqwest::dns::Addrs);
            }
            let host = name.as_str();
            tracing::debug!(host, "a delivery lookup without pinned addresses");
            let ips = this
                .lookup(host)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            let mut denied = None;
            let allowed: Vec<SocketAddr> = ips
                .into_iter()
                .filter(|ip| match this.policy.check_ip_any_port(*ip) {
                    Ok(()) => true,
                    Err(d) => {
                        denied = Some(d);
                        false
                    }
                })
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            match (allowed.is_empty(), denied) {
                (true, Some(d)) => Err(Box::new(d) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The egress denial that `e` is or was caused by, if any.
pub fn find_denied<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Denied> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<Denied>() {
            return Some(d);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_members_and_user_ranges_decide_in_order() {
        let p = EgressPolicy::new(
            parse_ranges("--egress-allow", "169.254.10.0/24, 10.1.2.3, 127.0.0.0/8").unwrap(),
            parse_ranges("--egress-deny", "10.0.0.0/8,192.168.0.0/16").unwrap(),
        )
        .with_host_addresses(vec!["172.30.0.9".parse().unwrap()]);
        p.set_members(
            vec![
                addr("127.0.0.1:7101"),
                addr("127.0.0.1:7201"),
                addr("10.77.0.12:7100"),
            ],
            vec![],
        );
        let cases = [
            // The metadata address and link-local ranges, also IPv4-mapped.
            ("169.254.169.254:80", false),
            ("[::ffff:169.254.169.254]:80", false),
            ("[fe80::1]:80", false),
            ("[fd00:ec2::254]:80", false),
            // Opened by --egress-allow, more specific than the default.
            ("169.254.10.7:80", true),
            // Members: the exact address, and any loopback or unspecified address for a member
            // on loopback; another port of theirs is fine.
            // (--egress-allow 127.0.0.0/8 opens no member's address.)
            ("127.0.0.1:7101", false),
            ("127.0.0.2:7201", false),
            ("0.0.0.0:7201", false),
            ("[::1]:7101", false),
            ("127.0.0.1:8080", true),
            ("10.77.0.12:7100", false),
            ("10.77.0.12:7101", false), // in 10.0.0.0/8, denied by the user
            // The most specific user range wins.
            ("10.1.2.3:443", true),
            ("10.1.2.4:443", false),
            ("192.168.1.1:80", false),
            // Anything else is allowed.
            ("93.184.216.34:443", true),
            ("[2001:db8::1]:443", true),
            // Every textual form of an address counts: IPv4-compatible and NAT64 too.
            ("[::127.0.0.1]:7101", false),
            ("[::a9fe:a9fe]:80", false),
            ("[64:ff9b::a9fe:a9fe]:80", false),
            ("[64:ff9b::7f00:1]:7201", false),
            ("[::5db8:d822]:443", true),
            // A member on this host is reached through each of the host's addresses.
            ("172.30.0.9:7101", false),
            ("172.30.0.9:7102", true),
        ];
        for (a, want) in cases {
            assert_eq!(
                p.check(addr(a)).is_ok(),
                want,
                "{a}: {:?}",
                p.check(addr(a))
            );
        }
        // A tie between allow and deny denies.
        let tie = EgressPolicy::new(
            parse_ranges("a", "10.0.0.0/8").unwrap(),
            parse_ranges("d", "10.0.0.0/8").unwrap(),
        );
        assert!(tie.check(addr("10.0.0.1:80")).is_err());
        assert!(parse_ranges("--egress-deny", "10.0.0.0/33").is_err());
        assert!(parse_ranges("--egress-deny", "nope").is_err());
    }

    #[tokio::test]
    async fn hosts_of_members_with_an_unknown_api_are_unsure_and_a_refresh_can_be_awaited() {
        let p = Arc::new(
            EgressPolicy::new(vec![], vec![])
                .with_host_addresses(vec!["172.30.0.9".parse().unwrap()]),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        p.set_members(vec![], vec![ip("127.0.0.1"), ip("10.77.0.13")]);
        for (a, want) in [
            ("127.0.0.1", true),
            ("127.0.0.5", true),
            ("::1", true),
            ("0.0.0.0", true),
            ("172.30.0.9", true),
            ("::ffff:10.77.0.13", true),
            ("10.77.0.12", false),
            ("93.184.216.34", false),
        ] {
            assert_eq!(p.unsure_of(ip(a)), want, "{a}");
        }
        // `refresh_now` returns once the refresher has set the members again...
        let refresher = {
            let p = p.clone();
            tokio::spawn(async move {
                p.refresh_wanted().await;
                p.set_members(vec![], vec![]);
            })
        };
        p.refresh_now(std::time::Duration::from_secs(30)).await;
        refresher.await.unwrap();
        assert!(!p.unsure_of(ip("127.0.0.1")));
        // ...and within its bound when nothing refreshes.
        let bounded = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            p.refresh_now(std::time::Duration::from_millis(50)),
        );
        assert!(bounded.await.is_ok());
    }

    #[test]
    fn a_denial_is_found_through_error_sources() {
        #[derive(Debug)]
        struct Wrapper(Denied);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "connect failed")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let w = Wrapper(Denied("x".into()));
        assert_eq!(find_denied(&w), Some(&Denied("x".into())));
        assert!(find_denied(&std::io::Error::other("plain")).is_none());
        assert_eq!(Denied("x".into()).to_string(), "egress_denied: x");
    }

    async fn resolve(r: &Resolver, host: &str) -> Result<Vec<SocketAddr>, String> {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = host.parse().unwrap();
        r.resolve(name)
            .await
            .map(|addrs| addrs.collect())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn the_connect_uses_the_checked_addresses_and_nothing_else() {
        let policy = Arc::new(EgressPolicy::new(vec![], vec![]));
        policy.set_members(vec![addr("127.0.0.1:7201")], vec![]);
        let r = Resolver::new(policy);
        // `localhost` resolves from the hosts file to loopback, where a member serves.
        let url = reqwest::Url::parse("http://LocalHost:8080/hook").unwrap();
        let pinned = r
            .check_url(&url)
            .await
            .expect("127.0.0.1:8080 is no member's");
        let checked: Vec<SocketAddr> = pinned
            .ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, 0))
            .collect();
        assert!(!checked.is_empty());
        // Within the attempt the resolver answers the checked addresses, without asking DNS
        // again (whatever the name would resolve to now), matching the host in any case.
        let within = pinned
            .clone()
            .scope(async { resolve(&r, "localhost").await })
            .await;
        assert_eq!(within, Ok(checked));
        let rebound = Pinned {
            host: Some("rebind.invalid".into()),
            ips: vec!["93.184.216.34".parse().unwrap()],
        };
        let got = rebound
            .scope(async { resolve(&r, "REBIND.invalid").await })
            .await;
        assert_eq!(got, Ok(vec![addr("93.184.216.34:0")]));
        // Another host in the same attempt is not pinned.
        let other = pinned
            .scope(async { resolve(&r, "rebind.invalid").await })
            .await;
        assert!(other.is_err(), "{other:?}");
        // Outside an attempt the port is unknown: an address a member serves on is refused.
        let outside = resolve(&r, "localhost").await;
        assert!(
            outside.as_ref().is_err_and(|e| e.contains("egress_denied")),
            "{outside:?}"
        );
    }
}

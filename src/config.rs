//! Configuration: raw values from flags, the environment and a TOML file are merged (flag > env >
//! file > default) and validated into a `Config`. Nothing downstream sees unvalidated input.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use hookd_raft::tls::TlsFiles;
use hookd_raft::Secret;
use ipnet::IpNet;

use serde::Deserialize;

use crate::egress::parse_ranges;

/// Flags of `hookd serve`. Each also reads `HOOKD_<NAME>` from the environment, and the same key
/// in snake_case from `--config FILE`.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML file with the same keys in snake_case.
    #[arg(long, env = "HOOKD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id, as named in --initial-cluster.
    #[arg(long, env = "HOOKD_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address of the public HTTP API [default: 127.0.0.1:7101].
    #[arg(long, env = "HOOKD_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Address for Raft traffic and forwarding between nodes [default: 127.0.0.1:7201].
    #[arg(long, env = "HOOKD_PEER_LISTEN", value_name = "HOST:PORT")]
    pub peer_listen: Option<String>,
    /// Directory holding this node's data.
    #[arg(long, env = "HOOKD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members as ID=HOST:PORT,… (peer addresses). Used only for a new data dir.
    #[arg(long, env = "HOOKD_INITIAL_CLUSTER", value_name = "ID=HOST:PORT,...")]
    pub initial_cluster: Option<String>,
    /// Run a single-node cluster with a temporary data dir, for trying things out.
    #[arg(long, env = "HOOKD_DEV", num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
    /// With an empty data dir and no --initial-cluster: wait to be added to a running cluster
    /// with POST /v1/cluster/members.
    #[arg(long, env = "HOOKD_JOIN", num_args = 0..=1, default_missing_value = "true")]
    pub join: Option<bool>,
    /// Require `Authorization: Bearer TOKEN` on every /v1 request; this token may do everything.
    /// Repeat it (or separate with commas) to accept several, e.g. while rotating.
    #[arg(
        long,
        env = "HOOKD_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_delimiter = ',',
        action = clap::ArgAction::Append
    )]
    pub api_token: Vec<String>,
    /// A token that may only read (GET, and POST /v1/schedules/preview); repeatable like
    /// --api-token.
    #[arg(
        long,
        env = "HOOKD_READ_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_delimiter = ',',
        action = clap::ArgAction::Append
    )]
    pub read_token: Vec<String>,
    /// Shared secret authenticating node-to-node traffic.
    #[arg(
        long,
        env = "HOOKD_PEER_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub peer_secret: Option<String>,
    /// Start even though peers are not all on loopback and peer traffic is not authenticated
    /// (no --peer-secret, no peer TLS). For test labs only.
    #[arg(long, env = "HOOKD_INSECURE_PEER", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_peer: Option<bool>,
    /// Serve the API on an address off loopback without any --api-token. For test labs only.
    #[arg(long, env = "HOOKD_INSECURE_API", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_api: Option<bool>,
    /// Serve the API over HTTPS with this certificate (PEM, leaf first); re-read when it changes.
    #[arg(long, env = "HOOKD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "HOOKD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Also require API clients to present a certificate signed by this CA (PEM).
    #[arg(long, env = "HOOKD_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Mutual TLS between nodes: this node's certificate (PEM), naming its peer address.
    #[arg(long, env = "HOOKD_PEER_TLS_CERT", value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// The private key of --peer-tls-cert (PEM).
    #[arg(long, env = "HOOKD_PEER_TLS_KEY", value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// The CA every node's peer certificate must chain to (PEM).
    #[arg(long, env = "HOOKD_PEER_TLS_CA", value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Default signing key for deliveries (Standard Webhooks, whsec_…).
    #[arg(
        long,
        env = "HOOKD_SIGNING_SECRET",
        hide_env_values = true,
        value_name = "whsec_…"
    )]
    pub signing_secret: Option<String>,
    /// Name of the cluster. A data dir of another cluster is refused. Default: chosen by the
    /// first leader.
    #[arg(long, env = "HOOKD_CLUSTER_ID", value_name = "ID")]
    pub cluster_id: Option<String>,
    /// API address other nodes report for this node in /v1/cluster [default: the listen address].
    #[arg(long, env = "HOOKD_ADVERTISE_API", value_name = "HOST:PORT")]
    pub advertise_api: Option<String>,
    /// Log filter (tracing EnvFilter syntax) [default: info,openraft=warn,sled=warn].
    #[arg(long, env = "HOOKD_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Snapshot the state once N log entries were applied since the last snapshot and the commands applied since amount to its size (the log keeps N/5 behind it) [default: 5000].
    #[arg(long, env = "HOOKD_SNAPSHOT_LOGS", value_name = "N")]
    pub snapshot_logs: Option<u64>,
    /// Runs kept per job; older finished runs are dropped [default: 100].
    #[arg(long, env = "HOOKD_RUN_RETENTION", value_name = "N")]
    pub run_retention: Option<u32>,
    /// Deliveries in flight at once on the leader, shared fairly between targets [default: 1024].
    #[arg(long, env = "HOOKD_DELIVERIES_MAX", value_name = "N")]
    pub deliveries_max: Option<usize>,
    /// Deliveries in flight at once per target host:port [default: 64].
    #[arg(long, env = "HOOKD_HOST_CONCURRENCY", value_name = "N")]
    pub host_concurrency: Option<usize>,
    /// Address ranges deliveries may never reach, added to the defaults (CIDR,…).
    #[arg(long, env = "HOOKD_EGRESS_DENY", value_name = "CIDR,...")]
    pub egress_deny: Option<String>,
    /// Address ranges deliveries may reach even where the defaults deny (CIDR,…).
    #[arg(long, env = "HOOKD_EGRESS_ALLOW", value_name = "CIDR,...")]
    pub egress_allow: Option<String>,
    /// Client writes get `429 overloaded` while the leader has more than N writes waiting
    /// (queued or not yet applied) [default: 4096].
    #[arg(long, env = "HOOKD_WRITE_BACKLOG_MAX", value_name = "N")]
    pub write_backlog_max: Option<usize>,
    /// Raft groups the jobs are spread over, 1 to 64; read only when the cluster is created
    /// (a data dir keeps its count) [default: 6].
    #[arg(long, env = "HOOKD_SHARDS", value_name = "S")]
    pub shards: Option<u32>,
}

/// The config file: the same keys as the flags, in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    listen: Option<String>,
    peer_listen: Option<String>,
    data_dir: Option<PathBuf>,
    initial_cluster: Option<String>,
    dev: Option<bool>,
    join: Option<bool>,
    api_token: Option<Tokens>,
    read_token: Option<Tokens>,
    peer_secret: Option<String>,
    insecure_peer: Option<bool>,
    insecure_api: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    peer_tls_cert: Option<PathBuf>,
    peer_tls_key: Option<PathBuf>,
    peer_tls_ca: Option<PathBuf>,
    signing_secret: Option<String>,
    cluster_id: Option<String>,
    advertise_api: Option<String>,
    log: Option<String>,
    snapshot_logs: Option<u64>,
    run_retention: Option<u32>,
    deliveries_max: Option<usize>,
    host_concurrency: Option<usize>,
    write_backlog_max: Option<usize>,
    egress_deny: Option<String>,
    egress_allow: Option<String>,
    shards: Option<u32>,
}

/// Tokens in the config file: a comma-separated string, as in the environment, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Tokens {
    Joined(String),
    List(Vec<String>),
}

impl Tokens {
    fn into_vec(self) -> Vec<String> {
        match self {
            Tokens::Joined(s) => s.split(',').map(str::to_owned).collect(),
            Tokens::List(v) => v,
        }
    }
}

/// Where the node keeps its data.
#[derive(Debug)]
pub enum DataDir {
    Path(PathBuf),
    /// `--dev`: removed when the node exits.
    Temp(tempfile::TempDir),
}

impl DataDir {
    pub fn path(&self) -> &std::path::Path {
        match self {
            DataDir::Path(p) => p,
            DataDir::Temp(t) => t.path(),
        }
    }
}

/// Validated configuration of a node.
#[derive(Debug)]
pub struct Config {
    pub node_id: u64,
    pub listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub data_dir: DataDir,
    /// Node id → peer address. Empty when the data dir already holds a cluster.
    pub initial_cluster: BTreeMap<u64, String>,
    pub dev: bool,
    /// A new data dir waits to be added to a running cluster.
    pub join: bool,
    /// `--insecure-peer`: unauthenticated peer traffic off loopback is accepted.
    pub insecure_peer: bool,
    /// `--insecure-api`: an API off loopback without an api token is accepted.
    pub insecure_api: bool,
    /// Tokens that may do everything; with none of either kind, /v1 is open.
    pub api_tokens: Vec<Secret>,
    /// Tokens that may only read.
    pub read_tokens: Vec<Secret>,
    pub peer_secret: Option<Secret>,
    /// API TLS (`ca`: client certificates required).
    pub api_tls: Option<TlsFiles>,
    /// Peer mutual TLS (`ca` always set).
    pub peer_tls: Option<TlsFiles>,
    pub signing_secret: Option<Secret>,
    pub cluster_id: Option<String>,
    pub advertise_api: Option<String>,
    pub log: String,
    pub snapshot_logs: u64,
    pub run_retention: u32,
    pub deliveries_max: usize,
    pub host_concurrency: usize,
    pub write_backlog_max: usize,
    pub egress_deny: Vec<IpNet>,
    pub egress_allow: Vec<IpNet>,
    /// Shards of a cluster this node creates (`shards.rs`); a data dir keeps its own count.
    pub shards: u32,
}

/// openraft and sled log routine events at info; keep them to warnings by default.
const DEFAULT_LOG: &str = "info,openraft=warn,sled=warn";
const DEFAULT_SNAPSHOT_LOGS: u64 = 5_000;
const DEFAULT_LISTEN: &str = "127.0.0.1:7101";
const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:7201";

impl ServeArgs {
    /// Merges flags and environment (already merged by clap) with the config file and defaults,
    /// and validates the result.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parse config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let dev = self.dev.or(file.dev).unwrap_or(false);
        let node_id = match self.node_id.or(file.node_id) {
            Some(id) => id,
            None if dev => 1,
            None => {
                bail!("--node-id is required (or HOOKD_NODE_ID, or node_id in the config file)")
            }
        };
        let listen = parse_addr(
            "--listen",
            &self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
        )?;
        let peer_listen = parse_addr(
            "--peer-listen",
            &self
                .peer_listen
                .or(file.peer_listen)
                .unwrap_or_else(|| DEFAULT_PEER_LISTEN.into()),
        )?;
        let data_dir = match self.data_dir.or(file.data_dir) {
            Some(p) => DataDir::Path(p),
            None if dev => DataDir::Temp(
                tempfile::Builder::new()
                    .prefix("hookd-dev-")
                    .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .tempdir()
                    .context("create a temporary data dir")?,
            ),
            None => {
                bail!("--data-dir is required (or HOOKD_DATA_DIR, or data_dir in the config file)")
            }
        };
        let initial_cluster = match self.initial_cluster.or(file.initial_cluster) {
            Some(spec) => parse_initial_cluster(&spec)?,
            None if dev => BTreeMap::from([(node_id, peer_listen.to_string())]),
            None => BTreeMap::new(),
        };
        let join = self.join.or(file.join).unwrap_or(false);
        if join && (dev || !initial_cluster.is_empty()) {
            bail!("--join starts a node that waits to be added to a running cluster; it goes with neither --initial-cluster nor --dev");
        }
        if !initial_cluster.is_empty() && !initial_cluster.contains_key(&node_id) {
            bail!("--initial-cluster does not name this node ({node_id}); list every initial member, this one included");
        }
        let signing_secret = self.signing_secret.or(file.signing_secret);
        if let Some(s) = &signing_secret {
            validate_signing_secret(s)?;
        }
        let signing_secret = signing_secret.map(Secret::new);
        let api_tokens = tokens("--api-token", self.api_token, file.api_token)?;
        let read_tokens = tokens("--read-token", self.read_token, file.read_token)?;
        let peer_secret =
            non_empty("--peer-secret", self.peer_secret.or(file.peer_secret))?.map(Secret::new);
        let api_tls = match (
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
            self.tls_client_ca.or(file.tls_client_ca),
        ) {
            (Some(cert), Some(key), ca) => Some(TlsFiles { cert, key, ca }),
            (None, None, None) => None,
            (None, None, Some(_)) => bail!("--tls-client-ca needs --tls-cert and --tls-key"),
            _ => bail!("--tls-cert and --tls-key go together: give both or neither"),
        };
        let peer_tls = match (
            self.peer_tls_cert.or(file.peer_tls_cert),
            self.peer_tls_key.or(file.peer_tls_key),
            self.peer_tls_ca.or(file.peer_tls_ca),
        ) {
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
                cert,
                key,
                ca: Some(ca),
            }),
            (None, None, None) => None,
            _ => bail!(
                "--peer-tls-cert, --peer-tls-key and --peer-tls-ca go together: give all three or none"
            ),
        };
        let insecure_peer = self.insecure_peer.or(file.insecure_peer).unwrap_or(false);
        if peer_secret.is_none() && peer_tls.is_none() && !insecure_peer {
            // A joining node's peers are not known yet; its own address says where they are.
            let own = join.then(|| peer_listen.to_string());
            if let Some(addr) = initial_cluster
                .values()
                .chain(&own)
                .find(|a| !is_loopback(a))
            {
                bail!(
                    "peer address {addr} is not on loopback, so node-to-node traffic can leave this machine: \
                     authenticate it with --peer-secret (HOOKD_PEER_SECRET) or with mutual TLS \
                     (--peer-tls-cert, --peer-tls-key, --peer-tls-ca), \
                     or pass --insecure-peer for a test lab"
                );
            }
        }
        let cluster_id = non_empty("--cluster-id", self.cluster_id.or(file.cluster_id))?;
        let advertise_api = self.advertise_api.or(file.advertise_api);
        let snapshot_logs = self
            .snapshot_logs
            .or(file.snapshot_logs)
            .unwrap_or(DEFAULT_SNAPSHOT_LOGS);
        if snapshot_logs < 10 {
            bail!("--snapshot-logs must be at least 10");
        }
        let run_retention = self.run_retention.or(file.run_retention).unwrap_or(100);
        if !(1..=crate::limits::RUN_RETENTION_MAX).contains(&run_retention) {
            bail!("--run-retention must be between 1 and 100000");
        }
        let deliveries_max = self.deliveries_max.or(file.deliveries_max).unwrap_or(1024);
        if !(1..=65_536).contains(&deliveries_max) {
            bail!("--deliveries-max must be between 1 and 65536");
        }
        let host_concurrency = self
            .host_concurrency
            .or(file.host_concurrency)
            .unwrap_or(64);
        if !(1..=65_536).contains(&host_concurrency) {
            bail!("--host-concurrency must be between 1 and 65536");
        }
        let write_backlog_max = self
            .write_backlog_max
            .or(file.write_backlog_max)
            .unwrap_or(4096);
        let shards = self
            .shards
            .or(file.shards)
            .unwrap_or(crate::shards::SHARDS_DEFAULT);
        if !(1..=crate::shards::SHARDS_MAX).contains(&shards) {
            bail!(
                "--shards must be between 1 and {}",
                crate::shards::SHARDS_MAX
            );
        }
        let egress_deny = parse_ranges(
            "--egress-deny",
            &self.egress_deny.or(file.egress_deny).unwrap_or_default(),
        )?;
        let egress_allow = parse_ranges(
            "--egress-allow",
            &self.egress_allow.or(file.egress_allow).unwrap_or_default(),
        )?;
        Ok(Config {
            node_id,
            listen,
            peer_listen,
            data_dir,
            initial_cluster,
            dev,
            join,
            insecure_peer,
            insecure_api: self.insecure_api.or(file.insecure_api).unwrap_or(false),
            api_tokens,
            read_tokens,
            peer_secret,
            api_tls,
            peer_tls,
            signing_secret,
            cluster_id,
            advertise_api,
            log: self.log.or(file.log).unwrap_or_else(|| DEFAULT_LOG.into()),
            snapshot_logs,
            run_retention,
            deliveries_max,
            host_concurrency,
            write_backlog_max,
            egress_deny,
            egress_allow,
            shards,
        })
    }
}

fn parse_addr(flag: &str, value: &str) -> anyhow::Result<SocketAddr> {
    value
        .parse()
        .with_context(|| format!("{flag} {value:?} is not an IP:PORT address"))
}

/// Tokens from flags/env (already split at commas by clap), else from the file.
fn tokens(flag: &str, given: Vec<String>, file: Option<Tokens>) -> anyhow::Result<Vec<Secret>> {
    let all = if given.is_empty() {
        file.map(Tokens::into_vec).unwrap_or_default()
    } else {
        given
    };
    all.into_iter()
        .map(|t| {
            let t = t.trim();
            if t.is_empty() {
                bail!("{flag} must not be empty");
            }
            Ok(Secret::new(t))
        })
        .collect()
}

/// True when a `HOST:PORT` peer address is certainly on this machine: a loopback IP or
/// `localhost`. Any other name may resolve elsewhere.
/// Refuses addresses the node would serve unauthenticated off this machine (SPEC §1): the API
/// with no api token unless `--insecure-api`, and the peer port with neither a peer secret nor
/// peer TLS unless `--insecure-peer`. A wildcard address (`0.0.0.0`, `[::]`) counts as off
/// loopback. `api` and `peer` are the addresses actually bound (flags or socket activation).
pub fn check_exposure(config: &Config, api: SocketAddr, peer: SocketAddr) -> anyhow::Result<()> {
    if !api.ip().is_loopback() && config.api_tokens.is_empty() && !config.insecure_api {
        bail!(
            "the API listens on {api}, off loopback, and no --api-token (HOOKD_API_TOKEN) is set: \
             anyone who reaches it could change every job. Set --api-token, listen on loopback, \
             or pass --insecure-api for a test lab"
        );
    }
    let peer_authenticated = config.peer_secret.is_some() || config.peer_tls.is_some();
    if !peer.ip().is_loopback() && !peer_authenticated && !config.insecure_peer {
        bail!(
            "the peer port listens on {peer}, off loopback, and node-to-node traffic is not \
             authenticated: set --peer-secret (HOOKD_PEER_SECRET) or mutual TLS (--peer-tls-cert, \
             --peer-tls-key, --peer-tls-ca), or pass --insecure-peer for a test lab"
        );
    }
    Ok(())
}

pub(crate) fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn non_empty(flag: &str, value: Option<String>) -> anyhow::Result<Option<String>> {
    match value {
        Some(v) if v.is_empty() => bail!("{flag} must not be empty"),
        v => Ok(v),
    }
}

/// Parses `1=host:port,2=host:port,…`.
pub fn parse_initial_cluster(spec: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().with_context(|| {
            format!("--initial-cluster entry {part:?}: node id is not a number")
        })?;
        let addr = addr.trim();
        let valid_port = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid_port {
            bail!("--initial-cluster entry {part:?}: address is not HOST:PORT");
        }
        if members.insert(id, addr.to_owned()).is_some() {
            bail!("--initial-cluster names node {id} twice");
        }
    }
    if members.is_empty() {
        bail!("--initial-cluster is empty");
    }
    Ok(members)
}

/// A Standard Webhooks secret: `whsec_` followed by base64 of at least 24 bytes.
fn validate_signing_secret(secret: &str) -> anyhow::Result<()> {
    let Some(b64) = secret.strip_prefix("whsec_") else {
        bail!("--signing-secret must start with whsec_");
    };
    let ok = !b64.is_empty()
        && b64.len() % 4 == 0
        && b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !ok || b64.len() < 32 {
        bail!("--signing-secret must be whsec_ followed by base64 of at least 24 random bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_parses_and_rejects_bad_entries() {
        let m = parse_initial_cluster("1=127.0.0.1:7201, 2=127.0.0.1:7202,3=node3:7203").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&3], "node3:7203");
        for bad in [
            "",
            "1",
            "1=",
            "x=1.2.3.4:5",
            "1=host",
            "1=host:0",
            "1=a:1,1=b:2",
            "1=:80",
        ] {
            assert!(
                parse_initial_cluster(bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn flag_beats_file_and_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hookd.toml");
        std::fs::write(
            &file,
            "node_id = 2\nlisten = \"127.0.0.1:9101\"\ndata_dir = \"/tmp/x\"\ninitial_cluster = \"2=127.0.0.1:9201\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:9999".into()),
            ..Default::default()
        };
        let c = args.into_config().unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.peer_listen.to_string(), DEFAULT_PEER_LISTEN);

        std::fs::write(&file, "node_idd = 2\n").unwrap();
        let err = ServeArgs {
            config: Some(file),
            ..Default::default()
        }
        .into_config()
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("node_idd"),
            "unknown keys are named: {err:#}"
        );
    }

    #[test]
    fn tokens_come_from_flags_or_the_file_as_a_list_or_comma_separated() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hookd.toml");
        let base = "node_id = 1\ndata_dir = \"/tmp/x\"\n";
        let load = |extra: &str, flags: Vec<String>| {
            std::fs::write(&file, format!("{base}{extra}")).unwrap();
            ServeArgs {
                config: Some(file.clone()),
                api_token: flags,
                ..Default::default()
            }
            .into_config()
        };
        let c = load("api_token = \"a1, a2\"\nread_token = [\"r1\"]\n", vec![]).unwrap();
        assert_eq!(c.api_tokens.len(), 2);
        assert!(c.api_tokens[1].matches(b"a2") && c.read_tokens[0].matches(b"r1"));
        // Flags win over the file.
        let c = load("api_token = \"a1\"\n", vec!["f1".into()]).unwrap();
        assert!(c.api_tokens.len() == 1 && c.api_tokens[0].matches(b"f1"));
        assert!(
            load("api_token = \"a1,,a2\"\n", vec![]).is_err(),
            "empty token"
        );
        assert!(format!("{c:?}").contains("Secret(***)") && !format!("{c:?}").contains("f1"));
        let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let c = load(&format!("signing_secret = \"{whsec}\"\n"), vec![]).unwrap();
        assert_eq!(c.signing_secret.as_ref().map(Secret::expose), Some(whsec));
        assert!(
            !format!("{c:?}").contains("MfKQ9r8"),
            "the signing secret never prints"
        );
    }

    #[test]
    fn tls_flags_go_together_and_peer_tls_authenticates_peers() {
        let f = |s: &str| Some(PathBuf::from(s));
        let remote = || ServeArgs {
            node_id: Some(1),
            data_dir: f("/tmp/x"),
            initial_cluster: Some("1=10.0.0.1:7201,2=10.0.0.2:7201".into()),
            ..Default::default()
        };
        let err = remote().into_config().unwrap_err().to_string();
        for flag in [
            "--peer-secret",
            "--peer-tls-cert",
            "--peer-tls-key",
            "--peer-tls-ca",
        ] {
            assert!(err.contains(flag), "the error names {flag}: {err}");
        }
        let c = ServeArgs {
            peer_tls_cert: f("c"),
            peer_tls_key: f("k"),
            peer_tls_ca: f("ca"),
            tls_cert: f("ac"),
            tls_key: f("ak"),
            ..remote()
        }
        .into_config()
        .unwrap();
        assert_eq!(c.peer_tls.unwrap().ca, f("ca"));
        assert_eq!(
            c.api_tls.unwrap().ca,
            None,
            "no client CA: no client certificates"
        );
        let refused: Vec<(ServeArgs, &str)> = vec![
            (
                ServeArgs {
                    peer_tls_cert: f("c"),
                    peer_tls_key: f("k"),
                    ..remote()
                },
                "--peer-tls-ca",
            ),
            (
                ServeArgs {
                    tls_cert: f("c"),
                    ..remote()
                },
                "--tls-key",
            ),
            (
                ServeArgs {
                    tls_client_ca: f("ca"),
                    ..remote()
                },
                "--tls-cert",
            ),
        ];
        for (args, named) in refused {
            let err = args.into_config().unwrap_err().to_string();
            assert!(err.contains(named), "{err}");
        }
    }

    #[test]
    fn join_goes_alone_and_a_joining_node_off_loopback_needs_peer_authentication() {
        let join = || ServeArgs {
            node_id: Some(4),
            data_dir: Some(PathBuf::from("/tmp/x")),
            join: Some(true),
            ..Default::default()
        };
        let c = join().into_config().unwrap();
        assert!(c.join && c.initial_cluster.is_empty());
        for args in [
            ServeArgs {
                initial_cluster: Some("4=127.0.0.1:7204".into()),
                ..join()
            },
            ServeArgs {
                dev: Some(true),
                ..join()
            },
        ] {
            let err = args.into_config().unwrap_err().to_string();
            assert!(err.contains("--join"), "{err}");
        }
        let remote = || ServeArgs {
            peer_listen: Some("10.0.0.4:7201".into()),
            ..join()
        };
        let err = remote().into_config().unwrap_err().to_string();
        assert!(err.contains("--peer-secret"), "{err}");
        let c = ServeArgs {
            peer_secret: Some("s3cret-s3cret".into()),
            ..remote()
        }
        .into_config()
        .unwrap();
        assert!(c.join);
    }

    #[test]
    fn an_address_off_loopback_needs_its_authentication_or_the_insecure_flag() {
        let base = || ServeArgs {
            node_id: Some(1),
            data_dir: Some(PathBuf::from("/tmp/x")),
            ..Default::default()
        };
        let config = |args: ServeArgs| args.into_config().expect("config");
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let (lo_api, lo_peer) = (addr("127.0.0.1:7101"), addr("127.0.0.1:7201"));
        let cases: Vec<(&str, ServeArgs, SocketAddr, SocketAddr, Option<&str>)> = vec![
            ("all on loopback", base(), lo_api, lo_peer, None),
            (
                "API on a wildcard",
                base(),
                addr("0.0.0.0:7101"),
                lo_peer,
                Some("--api-token"),
            ),
            (
                "API on [::]",
                base(),
                addr("[::]:7101"),
                lo_peer,
                Some("--api-token"),
            ),
            (
                "API off loopback with a token",
                ServeArgs {
                    api_token: vec!["t0ken".into()],
                    ..base()
                },
                addr("10.0.0.1:7101"),
                lo_peer,
                None,
            ),
            (
                "a read token alone is not enough",
                ServeArgs {
                    read_token: vec!["t0ken".into()],
                    ..base()
                },
                addr("10.0.0.1:7101"),
                lo_peer,
                Some("--api-token"),
            ),
            (
                "API off loopback, --insecure-api",
                ServeArgs {
                    insecure_api: Some(true),
                    ..base()
                },
                addr("10.0.0.1:7101"),
                lo_peer,
                None,
            ),
            (
                "peer port on a wildcard",
                base(),
                lo_api,
                addr("0.0.0.0:7201"),
                Some("--peer-secret"),
            ),
            (
                "peer port off loopback with a secret",
                ServeArgs {
                    peer_secret: Some("s3cret-s3cret".into()),
                    ..base()
                },
                lo_api,
                addr("0.0.0.0:7201"),
                None,
            ),
            (
                "peer port off loopback, --insecure-peer",
                ServeArgs {
                    insecure_peer: Some(true),
                    ..base()
                },
                lo_api,
                addr("0.0.0.0:7201"),
                None,
            ),
        ];
        for (what, args, api, peer, refused_naming) in cases {
            let got = check_exposure(&config(args), api, peer);
            match refused_naming {
                None => assert!(got.is_ok(), "{what}: {got:?}"),
                Some(flag) => {
                    let err = got.expect_err(what).to_string();
                    assert!(err.contains(flag), "{what}: {err}");
                }
            }
        }
    }

    #[test]
    fn loopback_peer_addresses_are_told_apart() {
        for (addr, want) in [
            ("127.0.0.1:7201", true),
            ("127.9.9.9:1", true),
            ("localhost:7201", true),
            ("[::1]:7201", true),
            ("10.0.0.1:7201", false),
            ("node2:7201", false),
            ("[fe80::1]:7201", false),
        ] {
            assert_eq!(is_loopback(addr), want, "{addr}");
        }
    }

    #[test]
    fn signing_secret_format_is_checked() {
        assert!(validate_signing_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(validate_signing_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(validate_signing_secret("whsec_short").is_err());
    }
}

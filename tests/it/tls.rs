//! TLS (SPEC §1): the API over HTTPS with client certificates and mutual TLS between nodes. A
//! cluster forms, forwards, installs a snapshot on a lagging node and reports expiry over TLS;
//! plain HTTP, missing and foreign certificates are refused; certificates rotate on disk without
//! a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hookd_raft::tls::{not_after, Reloading, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use reqwest::Method;
use tempfile::TempDir;

use crate::cluster::{catch_up_by_snapshot, others, ELECTION_WITHIN};
use crate::harness::{eventually, job, metric, metrics_text, TestCluster};
use crate::security::run_briefly;

/// notAfter of the first certificates, and of the rotated ones (Unix seconds).
const FIRST: i64 = 2_000_000_000;
const ROTATED: i64 = 2_100_000_000;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).expect("self-signed").pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for 127.0.0.1 valid until `not_after`: (certificate PEM, key PEM).
    fn leaf(&self, not_after: i64) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after as u64);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// Replaces a file the way a secret manager does: write aside, then rename over it.
fn put(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).expect("write");
    std::fs::rename(&aside, path).expect("rename");
}

/// The certificates of a test cluster: the API's (from one CA, clients from another) and the
/// peers' (one CA; every node shares a certificate for 127.0.0.1).
struct Pki {
    dir: TempDir,
    api_ca: Ca,
    client_ca: Ca,
    peer_ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("tempdir"),
            api_ca: Ca::new("api ca"),
            client_ca: Ca::new("client ca"),
            peer_ca: Ca::new("peer ca"),
        };
        put(&pki.path("client-ca.pem"), &pki.client_ca.pem);
        put(&pki.path("peer-ca.pem"), &pki.peer_ca.pem);
        pki.issue(FIRST);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// (Re)writes the API and peer certificates and keys, valid until `not_after`.
    fn issue(&self, not_after: i64) {
        for (name, ca) in [("api", &self.api_ca), ("peer", &self.peer_ca)] {
            let (cert, key) = ca.leaf(not_after);
            // The key first: a reader between the two sees a pair that does not match and keeps
            // what it had.
            put(&self.path(&format!("{name}.key")), &key);
            put(&self.path(&format!("{name}.crt")), &cert);
        }
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        let mut args = vec![
            "--tls-cert".into(),
            p("api.crt"),
            "--tls-key".into(),
            p("api.key"),
            "--tls-client-ca".into(),
            p("client-ca.pem"),
            "--peer-tls-cert".into(),
            p("peer.crt"),
            "--peer-tls-key".into(),
            p("peer.key"),
            "--peer-tls-ca".into(),
            p("peer-ca.pem"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// An HTTPS client trusting `server_ca`, presenting a certificate of `client` if given.
    fn client(server_ca: &Ca, client: Option<&Ca>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(server_ca.pem.as_bytes()).expect("ca"),
            );
        if let Some(ca) = client {
            let (cert, key) = ca.leaf(FIRST);
            b = b.identity(
                reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).expect("id"),
            );
        }
        b.build().expect("client")
    }

    /// The API client of the tests: trusts the API CA, presents a client certificate.
    fn api_client(&self) -> reqwest::Client {
        Self::client(&self.api_ca, Some(&self.client_ca))
    }

    /// The notAfter of the certificate the listener at `addr` (the peer port if `peer`) serves
    /// to a new connection that presents a certificate the listener accepts.
    async fn served_not_after(&self, addr: std::net::SocketAddr, peer: bool) -> Option<i64> {
        let (server_ca, client_ca) = if peer {
            (&self.peer_ca, &self.peer_ca)
        } else {
            (&self.api_ca, &self.client_ca)
        };
        let (cert, key) = client_ca.leaf(FIRST);
        let dir = tempfile::tempdir().ok()?;
        let write = |n: &str, t: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, t).map(|_| p)
        };
        let files = TlsFiles {
            cert: write("c.pem", &cert).ok()?,
            key: write("k.pem", &key).ok()?,
            ca: Some(write("ca.pem", &server_ca.pem).ok()?),
        };
        let config = Reloading::load(files).ok()?.current().client.clone()?;
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .ok()?;
        let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
        not_after(&der).ok()
    }
}

fn tls_cluster(pki: &Pki, n: u64, extra: &[&str]) -> TestCluster {
    let args = pki.args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = TestCluster::start_with(n, &args);
    c.http = pki.api_client();
    c.scheme = "https";
    c
}

/// The value of the expiry gauge for `listener` in node `i`'s `/metrics`.
async fn expiry_gauge(c: &TestCluster, i: usize, listener: &str) -> Option<i64> {
    let series = format!("hookd_tls_cert_expiry_timestamp_seconds{{listener=\"{listener}\"}}");
    metric(&metrics_text(c, i).await?, &series).map(|v| v as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_forms_forwards_and_catches_up_a_lagging_node_by_snapshot() {
    let pki = Pki::new();
    let mut c = tls_cluster(&pki, 3, &["--snapshot-logs", "20"]);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let follower = others(leader)[0];
    // A write through a follower goes to the leader over the peer port's mutual TLS.
    let (s, body) = c
        .post(follower, "/v1/jobs", &job("over-tls"))
        .await
        .expect("create");
    assert_eq!(s, 201, "{body}");
    // So does a follower's question for the leaders' dispatcher state (once every shard has
    // settled on its leader: right after the start some are still being handed over).
    let body = eventually(Duration::from_secs(10), "the targets", || async {
        c.get(follower, "/v1/targets")
            .await
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    })
    .await;
    assert!(body["targets"].is_array(), "{body}");
    for i in 0..3 {
        assert_eq!(expiry_gauge(&c, i, "api").await, Some(FIRST), "node {i}");
        assert_eq!(expiry_gauge(&c, i, "peer").await, Some(FIRST), "node {i}");
    }
    // The CLI reaches an API that requires client certificates with --client-cert/-key.
    let (cert, key) = pki.client_ca.leaf(FIRST);
    put(&pki.path("client.crt"), &cert);
    put(&pki.path("client.key"), &key);
    put(&pki.path("api-ca.pem"), &pki.api_ca.pem);
    let p = |n: &str| pki.path(n).display().to_string();
    let addr = c.nodes[follower].api.to_string();
    let api_ca = p("api-ca.pem");
    let base = ["--addr", &addr, "--ca-cert", &api_ca, "-o", "json"];
    let cli = |extra: Vec<String>| {
        std::process::Command::new(crate::harness::HOOKD)
            .args(base)
            .args(extra)
            .args(["jobs", "get", "over-tls"])
            .env_remove("HOOKD_CLIENT_CERT")
            .env_remove("HOOKD_CLIENT_KEY")
            .output()
            .expect("hookd jobs get")
    };
    let with = cli(vec![
        "--client-cert".into(),
        p("client.crt"),
        "--client-key".into(),
        p("client.key"),
    ]);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(String::from_utf8_lossy(&with.stdout).contains("over-tls"));
    let without = cli(vec![]);
    assert_eq!(
        without.status.code(),
        Some(1),
        "refused without a certificate"
    );
    catch_up_by_snapshot(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_refuse_plain_http_and_missing_or_foreign_certificates() {
    let pki = Pki::new();
    let c = tls_cluster(&pki, 1, &[]);
    c.wait_leader(&[0], ELECTION_WITHIN).await;
    let (api, peer) = (c.nodes[0].api, c.nodes[0].peer);
    let (s, _) = c
        .get(0, "/v1/jobs")
        .await
        .expect("the right client is served");
    assert_eq!(s, 200);

    let foreign = Ca::new("foreign ca");
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("client");
    let refused = [
        (
            "plain HTTP to the API",
            plain.get(format!("http://{api}/v1/jobs")),
        ),
        (
            "no client certificate",
            Pki::client(&pki.api_ca, None).get(format!("https://{api}/v1/jobs")),
        ),
        (
            "a client certificate of another CA",
            Pki::client(&pki.api_ca, Some(&foreign)).get(format!("https://{api}/v1/jobs")),
        ),
        (
            "a peer certificate on the API",
            Pki::client(&pki.api_ca, Some(&pki.peer_ca)).get(format!("https://{api}/v1/jobs")),
        ),
        (
            "plain HTTP to the peer port",
            plain.post(format!("http://{peer}/forward/read-index")),
        ),
        (
            "no certificate on the peer port",
            Pki::client(&pki.peer_ca, None).post(format!("https://{peer}/forward/read-index")),
        ),
        (
            "a certificate of another CA on the peer port",
            Pki::client(&pki.peer_ca, Some(&foreign))
                .post(format!("https://{peer}/forward/read-index")),
        ),
        (
            "an API client certificate on the peer port",
            Pki::client(&pki.peer_ca, Some(&pki.client_ca))
                .post(format!("https://{peer}/forward/read-index")),
        ),
    ];
    for (what, req) in refused {
        let got = req.header("hookd-target-node", "1").json(&()).send().await;
        assert!(
            got.is_err(),
            "{what}: answered {:?}",
            got.map(|r| r.status())
        );
    }
    // A peer with the peer CA's certificate gets an HTTP answer.
    let ok = Pki::client(&pki.peer_ca, Some(&pki.peer_ca))
        .post(format!("https://{peer}/forward/read-index"))
        .header("hookd-target-node", "1")
        .json(&())
        .send()
        .await
        .expect("a peer certificate is accepted");
    assert_eq!(ok.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_disk_without_a_restart() {
    let pki = Pki::new();
    let mut c = tls_cluster(&pki, 3, &[]);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    for i in 0..3 {
        assert_eq!(
            pki.served_not_after(c.nodes[i].api, false).await,
            Some(FIRST)
        );
        assert_eq!(
            pki.served_not_after(c.nodes[i].peer, true).await,
            Some(FIRST)
        );
    }
    pki.issue(ROTATED);
    eventually(
        Duration::from_secs(10),
        "every listener serving the new certificates",
        || async {
            for i in 0..3 {
                let api = pki.served_not_after(c.nodes[i].api, false).await?;
                let peer = pki.served_not_after(c.nodes[i].peer, true).await?;
                (api == ROTATED && peer == ROTATED).then_some(())?;
            }
            Some(())
        },
    )
    .await;
    for i in 0..3 {
        assert_eq!(expiry_gauge(&c, i, "api").await, Some(ROTATED), "node {i}");
        assert_eq!(expiry_gauge(&c, i, "peer").await, Some(ROTATED), "node {i}");
    }
    // The cluster goes on with the new certificates: a leader change (new peer connections, the
    // peer client rebuilt with the new certificate), a write through a follower, and the old
    // leader, restarted, catching up.
    c.kill(leader);
    let rest = others(leader);
    let new_leader = c.wait_leader(&rest, ELECTION_WITHIN).await;
    let follower = *rest.iter().find(|i| **i != new_leader).expect("follower");
    let (s, body) = c
        .post(follower, "/v1/jobs", &job("after-rotation"))
        .await
        .expect("create");
    assert_eq!(s, 201, "{body}");
    c.spawn(leader);
    eventually(
        Duration::from_secs(15),
        "the restarted node to hold the job written after the rotation",
        || async {
            let (s, _) = c
                .send(
                    leader,
                    Method::GET,
                    "/v1/jobs/after-rotation?consistency=stale",
                    None,
                )
                .await?;
            (s == 200).then_some(())
        },
    )
    .await;
}

#[test]
fn peer_tls_authenticates_peers_off_loopback_and_bad_files_stop_the_node_naming_them() {
    let pki = Pki::new();
    let p = |n: &str| pki.path(n).display().to_string();
    // 10.255.255.1 is never contacted: the only member never dials itself.
    let off = ["--node-id", "1", "--initial-cluster", "1=10.255.255.1:7201"];
    let peer_tls = [
        "--peer-tls-cert",
        &p("peer.crt"),
        "--peer-tls-key",
        &p("peer.key"),
        "--peer-tls-ca",
        &p("peer-ca.pem"),
    ];
    let (code, out) = run_briefly(&[&off[..], &peer_tls[..]].concat(), Duration::from_secs(2));
    assert_eq!(code, None, "peer TLS authenticates peers: {out}");

    // Files that do not load: the node exits at once and names the file.
    std::fs::write(pki.path("garbage.pem"), "not a certificate").expect("write");
    let on = ["--node-id", "1", "--initial-cluster", "1=127.0.0.1:7201"];
    let cases: [(&[&str], &str); 3] = [
        (
            &["--tls-cert", &p("missing.crt"), "--tls-key", &p("api.key")],
            "missing.crt",
        ),
        (
            &["--tls-cert", &p("api.crt"), "--tls-key", &p("peer.key")],
            "peer.key",
        ),
        (
            &[
                "--peer-tls-cert",
                &p("peer.crt"),
                "--peer-tls-key",
                &p("peer.key"),
                "--peer-tls-ca",
                &p("garbage.pem"),
            ],
            "garbage.pem",
        ),
    ];
    for (args, named) in cases {
        let (code, out) = run_briefly(&[&on[..], args].concat(), Duration::from_secs(10));
        assert!(
            code.is_some_and(|c| c != 0),
            "{args:?} must stop the node: {out}"
        );
        assert!(out.contains(named), "the error names {named}: {out}");
    }
}

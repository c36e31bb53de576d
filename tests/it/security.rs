//! Security (SPEC §1, §7): token scopes, peer authentication required off loopback, secret
//! headers, reserved headers, credentials in attempt errors, data dir mode.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{eventually, job, single, TestCluster, HOOKD};
use crate::sink::Sink;

/// (status, error code) of a request with `token`.
async fn call(c: &TestCluster, method: Method, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = c.http.request(method.clone(), c.url(0, path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if method == Method::POST {
        let body = if path.ends_with("/preview") {
            json!({"schedule": {"every": "1m"}, "count": 2})
        } else {
            job("scoped")
        };
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn api_tokens_rotate_and_a_read_token_only_reads() {
    let c = TestCluster::start_with(
        1,
        &[
            "--api-token",
            "write-old",
            "--api-token",
            "write-new",
            "--read-token",
            "read-only",
        ],
    );
    eventually(Duration::from_secs(10), "ready", || async {
        let s = c.http.get(c.url(0, "/readyz")).send().await.ok()?.status();
        (s == 200).then_some(())
    })
    .await;
    let cases: &[(Method, &str, Option<&str>, u16)] = &[
        (Method::GET, "/v1/jobs", None, 401),
        (Method::GET, "/v1/jobs", Some("nope"), 401),
        (Method::GET, "/v1/jobs", Some("read-only"), 200),
        (
            Method::POST,
            "/v1/schedules/preview",
            Some("read-only"),
            200,
        ),
        (Method::POST, "/v1/jobs", Some("read-only"), 403),
        (Method::DELETE, "/v1/jobs/scoped", Some("read-only"), 403),
        // A backup holds the secret headers' values: not for a read token.
        (Method::GET, "/v1/snapshot", Some("read-only"), 403),
        (Method::POST, "/v1/cluster/members", Some("read-only"), 403),
        (Method::POST, "/v1/jobs", Some("write-old"), 201),
        (Method::GET, "/v1/jobs/scoped", Some("write-new"), 200),
        (Method::DELETE, "/v1/jobs/scoped", Some("write-new"), 204),
    ];
    for (method, path, token, want) in cases {
        let (status, body) = call(&c, method.clone(), path, *token).await;
        assert_eq!(status, *want, "{method} {path} with {token:?}: {body}");
        match status {
            401 => assert_eq!(body["error"]["code"], "unauthorized"),
            403 => assert_eq!(body["error"]["code"], "forbidden"),
            _ => {}
        }
    }
    // The scheme is case-insensitive (RFC 9110); the token is not.
    for (value, want) in [
        ("bearer write-new", 200),
        ("BEARER read-only", 200),
        ("Bearer WRITE-NEW", 401),
        ("Basic write-new", 401),
        ("bearer", 401),
    ] {
        let resp = c
            .http
            .get(c.url(0, "/v1/jobs"))
            .header("authorization", value)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), want, "Authorization: {value}");
    }
    let log = c.log_of(0);
    assert!(
        !log.contains("write-old") && !log.contains("read-only"),
        "tokens in the log"
    );
}

/// Runs `hookd serve` with `args` until it exits (or `within` passes); its exit code and output.
pub fn run_briefly(args: &[&str], within: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(HOOKD)
        .arg("serve")
        .args(["--data-dir", &dir.path().join("d").display().to_string()])
        .args(["--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("HOOKD_PEER_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hookd");
    let deadline = Instant::now() + within;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("output");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (code, text)
}

#[test]
fn peers_off_loopback_without_authentication_are_refused() {
    // 10.255.255.1 is never contacted: the node refuses before it starts, or (allowed) is the
    // only member, which never dials itself.
    let off = ["--node-id", "1", "--initial-cluster", "1=10.255.255.1:7201"];
    let (code, out) = run_briefly(&off, Duration::from_secs(10));
    assert!(code.is_some_and(|c| c != 0), "must refuse: {code:?} {out}");
    for flag in ["--peer-secret", "--insecure-peer"] {
        assert!(out.contains(flag), "the error names {flag}: {out}");
    }
    // Loopback needs nothing; a secret or the explicit override lets it start.
    let on = ["--node-id", "1", "--initial-cluster", "1=127.0.0.1:7201"];
    for args in [
        on.to_vec(),
        [&off[..], &["--peer-secret", "s3cret-peer"]].concat(),
        [&off[..], &["--insecure-peer"]].concat(),
    ] {
        let (code, out) = run_briefly(&args, Duration::from_secs(2));
        assert_eq!(code, None, "must keep running with {args:?}: {out}");
    }
}

#[tokio::test]
async fn secret_headers_are_masked_kept_on_put_delivered_intact_and_never_logged() {
    let sink = Sink::start().await;
    let c = single(&[]).await;
    let body = json!({
        "id": "sec",
        "url": sink.url("/hook"),
        "headers": {"Authorization": "Bearer tok-9f8e7d", "x-plain": "visible"},
        "secret_headers": ["Authorization"],
        "schedule": {"every": "1s"},
    });
    let (s, created) = c.post(0, "/v1/jobs", &body).await.expect("create");
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["headers"]["authorization"], "***");
    assert_eq!(created["headers"]["x-plain"], "visible");
    assert_eq!(created["secret_headers"], json!(["authorization"]));
    // GET → PUT round trip with the mask: no change, the value is kept.
    let (_, got) = c.get(0, "/v1/jobs/sec").await.expect("get");
    assert_eq!(got["headers"]["authorization"], "***");
    let (s, put) = c
        .send(0, Method::PUT, "/v1/jobs/sec", Some(&got))
        .await
        .expect("put");
    assert_eq!((s, &put["version"]), (200, &got["version"]), "{put}");
    let received = sink.wait_for("sec", 1, Duration::from_secs(10)).await;
    assert_eq!(received[0].header("authorization"), "Bearer tok-9f8e7d");
    // A masked value with nothing stored to keep is refused, naming the header.
    let mut fresh = body.clone();
    fresh["id"] = json!("sec2");
    fresh["headers"]["Authorization"] = json!("***");
    let (s, err) = c.post(0, "/v1/jobs", &fresh).await.expect("create");
    assert_eq!(s, 422, "{err}");
    assert_eq!(err["error"]["field"], "headers.authorization");
    // Listing a header that is not there is refused too.
    let mut wrong = body.clone();
    wrong["id"] = json!("sec3");
    wrong["secret_headers"] = json!(["x-missing"]);
    let (s, err) = c.post(0, "/v1/jobs", &wrong).await.expect("create");
    assert_eq!((s, &err["error"]["field"]), (422, &json!("secret_headers")));
    // The stored value is kept only while the URL's origin stays: moving the job to another
    // host with the mask is refused (else anyone with write access could send the secret to
    // a host of theirs without knowing it).
    let mut moved = got.clone();
    moved["url"] = json!("http://127.0.0.9:9/elsewhere");
    let (s, err) = c
        .send(0, Method::PUT, "/v1/jobs/sec", Some(&moved))
        .await
        .expect("put");
    assert_eq!(
        (s, &err["error"]["field"]),
        (422, &json!("headers.authorization")),
        "{err}"
    );
    // Another path on the same origin keeps it.
    let mut same = got.clone();
    same["url"] = json!(sink.url("/other-path"));
    let (s, put) = c
        .send(0, Method::PUT, "/v1/jobs/sec", Some(&same))
        .await
        .expect("put");
    assert_eq!(s, 200, "{put}");

    // A URL's password is shown as the mask, and kept by a round trip on the same origin.
    let with_password = sink
        .url("/pw")
        .replace("http://", "http://alice:pw-5c4b3a@");
    let body = json!({"id": "pw", "url": with_password, "schedule": {"every": "1h"}});
    let (s, created) = c.post(0, "/v1/jobs", &body).await.expect("create");
    assert_eq!(s, 201, "{created}");
    let shown = created["url"].as_str().expect("url");
    assert!(
        shown.contains("alice:***@") && !shown.contains("pw-5c4b3a"),
        "{shown}"
    );
    let (s, echoed) = c
        .send(0, Method::PUT, "/v1/jobs/pw", Some(&created))
        .await
        .expect("put");
    assert_eq!(
        (s, &echoed["version"]),
        (200, &created["version"]),
        "an unchanged round trip: {echoed}"
    );
    let mut elsewhere = created.clone();
    elsewhere["url"] = json!(shown.replace("127.0.0.1", "127.0.0.9"));
    let (s, err) = c
        .send(0, Method::PUT, "/v1/jobs/pw", Some(&elsewhere))
        .await
        .expect("put");
    assert_eq!((s, &err["error"]["field"]), (422, &json!("url")), "{err}");
    let (s, run) = c
        .send(0, Method::POST, "/v1/jobs/pw/trigger", None)
        .await
        .expect("trigger");
    assert_eq!(s, 202, "{run}");
    let received = sink.wait_for("pw", 1, Duration::from_secs(10)).await;
    assert_eq!(
        received[0].header("authorization"),
        format!("Basic {}", base64_of("alice:pw-5c4b3a")),
        "delivered with the stored password"
    );
    assert!(!c.log_of(0).contains("tok-9f8e7d"), "secret in the log");
    assert!(!c.log_of(0).contains("pw-5c4b3a"), "password in the log");
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn hookd_headers_are_reserved_and_url_credentials_stay_out_of_errors() {
    let c = single(&[]).await;
    for name in ["hookd-target-node", "Hookd-Anything", "webhook-id"] {
        let mut body = job("reserved");
        body["headers"] = json!({ name: "x" });
        let (s, err) = c.post(0, "/v1/jobs", &body).await.expect("create");
        assert_eq!(s, 422, "{name}: {err}");
        assert_eq!(err["error"]["field"], format!("headers.{name}"));
    }
    // A closed port: every attempt fails with a connection error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let body = json!({
        "id": "creds",
        "url": format!("http://alice:pw-5c4b3a@127.0.0.1:{port}/x"),
        "schedule": {"after": "0s"},
        "retry": {"max_attempts": 1},
    });
    let (s, v) = c.post(0, "/v1/jobs", &body).await.expect("create");
    assert_eq!(s, 201, "{v}");
    let error = eventually(Duration::from_secs(10), "a failed attempt", || async {
        let (_, v) = c.get(0, "/v1/jobs/creds/runs").await?;
        let e = v["runs"][0]["attempts"][0]["error"].as_str()?.to_owned();
        Some(e)
    })
    .await;
    assert!(!error.contains("pw-5c4b3a"), "{error}");
    assert!(!c.log_of(0).contains("pw-5c4b3a"), "credentials in the log");
}

#[tokio::test]
async fn the_data_dir_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let c = single(&[]).await;
    let mode = std::fs::metadata(&c.nodes[0].data_dir)
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// SPEC §7: data dirs are owner only, the temporary one of `--dev` too.
#[test]
fn the_dev_data_dir_is_owner_only() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let mut child = Command::new(HOOKD)
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .env_remove("HOOKD_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hookd serve --dev");
    let stderr = child.stderr.take().expect("stderr");
    let dir = BufReader::new(stderr)
        .lines()
        .take(200)
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("data_dir=").map(str::to_owned))
        });
    let top = dir.as_deref().and_then(|dir| {
        std::path::Path::new(dir)
            .ancestors()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("hookd-dev-"))
            })
            .map(std::path::Path::to_owned)
    });
    let mode = top
        .as_ref()
        .and_then(|top| std::fs::metadata(top).ok())
        .map(|m| m.permissions().mode() & 0o777);
    // SIGTERM: the node removes its temporary data dir as it stops, and it stops although its
    // stderr is closed by now (a failed log write used to panic the signal task, so SIGTERM
    // was never acted on).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let stopped = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            _ if Instant::now() > deadline => break None,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if stopped.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(mode, Some(0o700), "{top:?} (logged data dir {dir:?})");
    assert!(
        stopped.is_some_and(|s| s.success()),
        "SIGTERM with a closed stderr: {stopped:?}"
    );
    assert!(
        top.is_some_and(|t| !t.exists()),
        "the temporary data dir is removed"
    );
}

/// SPEC §7: `--help` never prints a secret taken from the environment.
#[test]
fn help_never_prints_a_secret_from_the_environment() {
    let secrets = [
        ("HOOKD_API_TOKEN", "api-token-value-1"),
        ("HOOKD_READ_TOKEN", "read-token-value-2"),
        ("HOOKD_PEER_SECRET", "peer-secret-value-3"),
        (
            "HOOKD_SIGNING_SECRET",
            "whsec_c2lnbmluZy1zZWNyZXQtdmFsdWUtNA==",
        ),
    ];
    let out = Command::new(HOOKD)
        .args(["serve", "--help"])
        .envs(secrets)
        .output()
        .expect("hookd serve --help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HOOKD_API_TOKEN"), "{text}");
    for (var, value) in secrets {
        assert!(!text.contains(value), "{var}'s value is printed:\n{text}");
    }
}

/// SPEC §1: an API off loopback needs an api token (or `--insecure-api`), and a peer port off
/// loopback needs peer authentication, even when every `--initial-cluster` address is loopback.
#[test]
fn a_wildcard_listener_without_authentication_is_refused() {
    for (args, flag) in [
        (
            ["--listen", "0.0.0.0:0", "--peer-listen", "127.0.0.1:0"],
            "--api-token",
        ),
        (
            ["--listen", "127.0.0.1:0", "--peer-listen", "0.0.0.0:0"],
            "--peer-secret",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(HOOKD)
            .args([
                "serve",
                "--node-id",
                "1",
                "--initial-cluster",
                "1=127.0.0.1:7201",
            ])
            .args(["--data-dir", &dir.path().join("d").display().to_string()])
            .args(args)
            .env_remove("HOOKD_PEER_SECRET")
            .env_remove("HOOKD_API_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("hookd serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn egress_to_metadata_and_the_clusters_own_ports_is_refused() {
    // Loopback is denied but for one address, the sink's (an allow opens the defaults too, so
    // it must not cover the node's own addresses).
    let sink = Sink::start_on("127.0.0.3:0".parse().expect("addr")).await;
    let c = single(&[
        "--egress-deny",
        "127.0.0.0/8",
        "--egress-allow",
        "127.0.0.3/32",
    ])
    .await;
    let (api, peer) = (c.nodes[0].api, c.nodes[0].peer);
    // Literal addresses are refused at create, naming the url.
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::ffff:169.254.169.254]/".to_owned(),
        format!("http://{api}/v1/jobs"),
        format!("http://{peer}/forward/write"),
        format!("http://127.0.0.2:{}/x", sink.addr.port()),
    ] {
        let mut body = job("egress");
        body["url"] = json!(url);
        let (s, err) = c.post(0, "/v1/jobs", &body).await.expect("create");
        assert_eq!(s, 422, "{url}: {err}");
        assert_eq!(err["error"]["field"], "url", "{url}");
    }
    // A name is checked when it resolves, at the attempt: final, not retried.
    let body = json!({
        "id": "by-name",
        "url": format!("http://localhost:{}/v1/jobs", api.port()),
        "schedule": {"after": "0s"},
        "retry": {"max_attempts": 5, "initial_backoff": "100ms"},
    });
    let (s, v) = c.post(0, "/v1/jobs", &body).await.expect("create");
    assert_eq!(s, 201, "{v}");
    let run = eventually(Duration::from_secs(10), "the run to fail", || async {
        let (_, v) = c.get(0, "/v1/jobs/by-name/runs").await?;
        (v["runs"][0]["status"] == "failed").then(|| v["runs"][0].clone())
    })
    .await;
    let attempts = run["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "never retried: {run}");
    let error = attempts[0]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("egress_denied"), "{error}");
    // An address the allow list opens inside a denied range is delivered to.
    let body = json!({"id": "allowed", "url": sink.url("/ok"), "schedule": {"after": "0s"}});
    let (s, v) = c.post(0, "/v1/jobs", &body).await.expect("create");
    assert_eq!(s, 201, "{v}");
    sink.wait_for("allowed", 1, Duration::from_secs(10)).await;
}

/// SPEC §3, holes an outside trial found: every textual form of an address counts (IPv4-
/// compatible and NAT64 IPv6 forms were accepted), and `--egress-allow` never reopens a
/// member's own ports (allowing 127.0.0.0/8 let a job call the node's own API).
#[tokio::test]
async fn no_address_form_or_allow_range_reaches_a_member_or_the_metadata_service() {
    let c = single(&["--egress-allow", "127.0.0.0/8"]).await;
    let (api, peer) = (c.nodes[0].api, c.nodes[0].peer);
    for url in [
        format!("http://{api}/v1/jobs"),
        format!("http://[::127.0.0.1]:{}/v1/jobs", api.port()),
        format!("http://[::ffff:127.0.0.1]:{}/", peer.port()),
        format!("http://[64:ff9b::7f00:1]:{}/", peer.port()),
        format!("http://127.0.0.5:{}/v1/jobs", api.port()),
        "http://[::a9fe:a9fe]/".to_owned(),
        "http://[64:ff9b::a9fe:a9fe]/".to_owned(),
    ] {
        let mut body = job("egress");
        body["url"] = json!(url);
        let (s, err) = c.post(0, "/v1/jobs", &body).await.expect("create");
        assert_eq!(s, 422, "{url}: {err}");
        assert_eq!(err["error"]["field"], "url", "{url}");
    }
}

/// SPEC §3, a hole an outside trial found: right after a cluster started, a job aimed at
/// another member's API was accepted, since that member had not recorded its API address in
/// the replicated state yet. Two of five initial members run (no quorum: nothing is ever
/// recorded), and node 1 still refuses such a job at once (it asks node 3 over the peer port),
/// while a URL on the same host that is no member's gets past the check to the write, which
/// finds no leader.
#[tokio::test]
async fn a_members_api_is_denied_before_any_address_is_recorded() {
    let mut c = TestCluster::new(5, &[]);
    c.spawn(0);
    c.spawn(2);
    let api3 = c.nodes[2].api;
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    for (url, member) in [
        (format!("http://{api3}/v1/jobs"), true),
        (
            format!("http://[::127.0.0.1]:{}/v1/jobs", api3.port()),
            true,
        ),
        (
            format!("http://{}/x", elsewhere.local_addr().expect("addr")),
            false,
        ),
    ] {
        let mut body = job("early");
        body["url"] = json!(url);
        let (s, err) = eventually(Duration::from_secs(20), "node 1 to answer", || {
            c.post(0, "/v1/jobs", &body)
        })
        .await;
        if member {
            assert_eq!(s, 422, "{url}: {err}");
            assert_eq!(err["error"]["field"], "url", "{url}");
        } else {
            assert_eq!(s, 503, "{url}: no leader without a quorum: {err}");
        }
    }
}

#[tokio::test]
async fn a_name_is_delivered_to_the_addresses_checked_for_it() {
    // The node serves on loopback, so a connect-time lookup that could not see the port would
    // refuse every loopback address; a delivery by name works only because the connect uses the
    // addresses the attempt checked with their port.
    let sink = Sink::start().await;
    let c = single(&[]).await;
    let url = format!("http://localhost:{}/by-name", sink.addr.port());
    let body = json!({"id": "by-name-ok", "url": url, "schedule": {"after": "0s"}});
    let (s, v) = c.post(0, "/v1/jobs", &body).await.expect("create");
    assert_eq!(s, 201, "{v}");
    let got = sink
        .wait_for("by-name-ok", 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        got[0].header("host"),
        format!("localhost:{}", sink.addr.port())
    );
}

/// A node started under `wrapper` (e.g. `prlimit`), on ports chosen by the system; returns it
/// with its API address, read from its log.
struct Node {
    child: std::process::Child,
    api: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(wrapper: &[&str], extra: &[&str]) -> Node {
        use std::io::{BufRead, BufReader};
        let dir = tempfile::tempdir().expect("tempdir");
        let (program, pre) = match wrapper.split_first() {
            Some((p, rest)) => (*p, [rest, &[HOOKD]].concat()),
            None => (HOOKD, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(pre)
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .args(["--peer-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("d"))
            .args(extra)
            .env("HOOKD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hookd");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let api = loop {
            let line = lines.next().expect("hookd exited").expect("log line");
            if let Some(rest) = line.split("api_addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                break addr.parse().expect("api_addr");
            }
        };
        // Keep draining the log so the node never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Node {
            child,
            api,
            _dir: dir,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_half_sent_request_is_cut_within_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Node::start(&[], &[]);
    let mut s = tokio::net::TcpStream::connect(node.api)
        .await
        .expect("connect");
    s.write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 512];
    // The server either closes at once or answers 408 and closes; both end the read.
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "still open after 20 s");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "cut after {took:?}, the header timeout is 5 s"
    );
}

/// Writes `head` on a new connection to `addr`, then `trickle` one byte every `every`, and
/// returns the status of the answer and how long after the head it came (None: closed without
/// one within 30 s).
async fn slow_request(
    addr: std::net::SocketAddr,
    head: String,
    trickle: usize,
    every: Duration,
) -> (Option<u16>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..trickle {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        std::future::pending::<()>().await;
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let status = String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    (status, started.elapsed())
}

/// SPEC §7, defects an outside trial found: a body that never completed held its connection
/// (answered `503` after 80 s), an oversized `Content-Length` got no early `413`, and
/// connections busy with slow bodies were never evicted, so 70 of them took a node's peer port.
#[tokio::test]
async fn slow_bodies_get_408_oversized_ones_413_at_once_and_neither_holds_the_cap() {
    // 512 open files for the node: its connection cap is 128.
    let node = Node::start(&["prlimit", "--nofile=512:512"], &[]);
    let head = |len: u64| {
        format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {len}\r\n\r\n"
        )
    };
    eventually(Duration::from_secs(10), "the node to answer", || async {
        tokio::net::TcpStream::connect(node.api).await.ok()
    })
    .await;
    // A body that keeps trickling is cut at the body deadline (10 s) with 408.
    let slow = tokio::spawn(slow_request(
        node.api,
        head(1000),
        100,
        Duration::from_secs(2),
    ));
    // An oversized Content-Length is refused before any of the body is sent.
    let (status, took) = slow_request(node.api, head(99_999_999_999_999), 0, Duration::ZERO).await;
    assert_eq!(status, Some(413));
    assert!(took < Duration::from_secs(2), "413 after {took:?}");
    let (status, took) = slow.await.expect("join");
    assert_eq!(status, Some(408), "after {took:?}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "408 after {took:?}; the body deadline is 10 s"
    );

    // Twice the cap in connections stuck in their bodies: a fresh request is still served.
    let mut stuck = Vec::new();
    for _ in 0..256 {
        let mut s = tokio::net::TcpStream::connect(node.api)
            .await
            .expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut s, format!("{}x", head(1000)).as_bytes())
            .await
            .expect("write");
        stuck.push(s);
    }
    create_on_a_new_connection_within_2s(node.api, "past-the-slow-bodies").await;
    drop(stuck);
}

/// An oversized body sent whole, as a plain client sends it (no `Expect: 100-continue`), is
/// answered `413` and the client reads that answer: the node discards the rest of the body
/// before it closes instead of resetting a connection whose client is still writing. Known
/// length through reqwest, chunked by hand; 8 rounds each on fresh connections.
#[tokio::test]
async fn an_oversized_body_sent_whole_is_answered_413_not_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = single(&[]).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let body = vec![b'x'; 4 << 20];
    for round in 0..8 {
        let sent = http
            .post(c.url(0, "/v1/jobs"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let status = sent.as_ref().map(|r| r.status().as_u16());
        assert!(
            matches!(status, Ok(413)),
            "round {round}, known length: {sent:?}"
        );

        let mut s = tokio::net::TcpStream::connect(c.nodes[0].api)
            .await
            .expect("connect");
        let head = "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        let mut wrote = s.write_all(head.as_bytes()).await;
        for _ in 0..64 {
            if wrote.is_err() {
                break;
            }
            let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
            wrote = s.write_all(chunk.as_bytes()).await;
        }
        if wrote.is_ok() {
            wrote = s.write_all(b"0\r\n\r\n").await;
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "round {round}, chunked: wrote {wrote:?}, read {read:?}: {answer:?}"
        );
    }
}

/// Creates job `id` through the API at `api` on a connection of its own, expecting `201`
/// within 2 s.
async fn create_on_a_new_connection_within_2s(api: std::net::SocketAddr, id: &str) {
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let started = Instant::now();
    let resp = fresh
        .post(format!("http://{api}/v1/jobs"))
        .json(&job(id))
        .send()
        .await
        .expect("a create is answered");
    assert_eq!(resp.status().as_u16(), 201);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn many_idle_connections_do_not_stop_a_create() {
    // 512 open files for the node: its connection cap is 128.
    let node = Node::start(&["prlimit", "--nofile=512:512"], &[]);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("http://{}/v1/jobs", node.api);
    eventually(Duration::from_secs(10), "the node to answer", || async {
        let s = http.get(&url).send().await.ok()?.status();
        (s == 200).then_some(())
    })
    .await;
    // Four times the cap in idle connections, held open.
    let mut idle = Vec::new();
    for _ in 0..512 {
        idle.push(
            tokio::net::TcpStream::connect(node.api)
                .await
                .expect("connect"),
        );
    }
    // A new connection (the readiness probe's may still be pooled).
    create_on_a_new_connection_within_2s(node.api, "through").await;
    drop(idle);
}

#[tokio::test]
async fn healthz_turns_503_once_storage_fails() {
    let c = single(&[]).await;
    let (s, _) = c.get(0, "/healthz").await.expect("healthz");
    assert_eq!(s, 200);
    // Debug builds only: makes every flush of this node fail, in every shard's database.
    let data = &c.nodes[0].data_dir;
    let shards = std::fs::read_dir(data.join("shards"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path());
    for dir in std::iter::once(data.clone()).chain(shards) {
        std::fs::write(dir.join("db/hookd-test-storage-fault"), b"").expect("fault file");
    }
    let _ = c.post(0, "/v1/jobs", &job("doomed")).await;
    let body = eventually(Duration::from_secs(10), "healthz 503", || async {
        let (s, v) = c.get(0, "/healthz").await?;
        (s == 503).then_some(v)
    })
    .await;
    assert_eq!(body["status"], "failed", "{body}");
}

/// A command as a node forwards it to the leader's peer port (`/forward/write`), and the
/// leader's answer: `Ok` with the command's result, or `Err`.
async fn forward(c: &TestCluster, cmd: &Value) -> Value {
    forward_path(c, "/forward/write", cmd).await
}

/// `body` posted to the leader's peer port at `path`, and its JSON answer (`200` expected).
async fn forward_path(c: &TestCluster, path: &str, body: &Value) -> Value {
    let (status, answer) = forward_status(c, path, body).await;
    assert_eq!(status, 200, "the peer port answers: {answer}");
    answer
}

/// `body` posted to the leader's peer port at `path`: the status and the JSON answer (`null`
/// when it is not JSON).
async fn forward_status(c: &TestCluster, path: &str, body: &Value) -> (u16, Value) {
    let resp = c
        .http
        .post(format!("http://{}{path}", c.nodes[0].peer))
        .header("hookd-target-node", c.nodes[0].id.to_string())
        .json(body)
        .send()
        .await
        .expect("forward");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// SPEC §7: commands arriving over the peer port are validated exactly as the API validates
/// them, and nothing a peer sends makes a node panic or hold a delivery slot. The first payload
/// panicked the dispatcher (an overflow in the lateness metric) and left `in_flight: 1` on its
/// target for good; the others were stored although the API refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_what_the_api_refuses_and_nothing_it_sends_holds_a_slot() {
    let sink = Sink::start().await;
    let c = single(&["--host-concurrency", "1"]).await;
    let now = chrono::Utc::now().timestamp_millis();
    let spec = |url: &str, timeout_ms: u64| {
        json!({"url": url, "method": "POST", "headers": {}, "body": null,
               "schedule": {"every": {"every_ms": 1000, "start_at_ms": null}},
               "retry": {"max_attempts": 1, "initial_backoff_ms": 1000, "max_backoff_ms": 1000,
                         "multiplier": 2.0, "jitter": 0.0},
               "timeout_ms": timeout_ms,
               "misfire": {"policy": "fire_once", "grace_ms": 60000, "catchup_window_ms": 60000},
               "paused": false, "secret_headers": []})
    };
    let ok_url = sink.url("/ok");
    // The victim: a job of the same target, which must keep firing.
    let (s, _) = c
        .post(
            0,
            "/v1/jobs",
            &json!({"id": "victim", "url": ok_url, "schedule": {"every": "1s"}}),
        )
        .await
        .expect("create");
    assert_eq!(s, 201);
    let create =
        |id: &str, spec: Value| json!({"create_job": {"id": id, "spec": spec, "now_ms": now}});
    let poisons = [
        (
            json!({"trigger_job": {"id": "victim", "now_ms": i64::MIN, "retention": 100}}),
            "now_ms",
        ),
        (create("a/..", spec(&ok_url, 1000)), "id"),
        (create(&"a".repeat(5000), spec(&ok_url, 1000)), "id"),
        (create("file", spec("file:///etc/passwd", 1000)), "url"),
        (create("forever", spec(&ok_url, u64::MAX)), "timeout"),
    ];
    for (cmd, field) in &poisons {
        let answer = forward(&c, cmd).await;
        assert_eq!(
            answer["Ok"]["rejected"]["field"], *field,
            "refused like the API refuses it: {cmd} -> {answer}"
        );
    }
    // The route itself works: a valid command is applied.
    let answer = forward(&c, &create("through-peer", spec(&ok_url, 1000))).await;
    assert_eq!(answer["Ok"]["job"]["job"]["id"], "through-peer", "{answer}");
    // The same in one batch of forwarded writes: each refused as on its own, in order, and the
    // valid one beside them applied.
    let mut batch: Vec<Value> = poisons.iter().map(|(cmd, _)| cmd.clone()).collect();
    batch.insert(2, create("through-batch", spec(&ok_url, 1000)));
    let answers = forward_path(&c, "/forward/writes", &json!(batch)).await;
    let answers = answers.as_array().expect("one answer per write");
    assert_eq!(answers.len(), batch.len(), "{answers:?}");
    assert_eq!(answers[2]["Ok"]["job"]["job"]["id"], "through-batch");
    let refused: Vec<&Value> = answers[..2].iter().chain(&answers[3..]).collect();
    for ((cmd, field), answer) in poisons.iter().zip(refused) {
        assert_eq!(
            answer["Ok"]["rejected"]["field"], *field,
            "refused in a batch like the API refuses it: {cmd} -> {answer}"
        );
    }
    // More writes in one request than a node sends at once: refused whole.
    let too_many = vec![create("too-many", spec(&ok_url, 1000)); 257];
    let (s, _) = forward_status(&c, "/forward/writes", &json!(too_many)).await;
    assert_eq!(s, 413);

    let (_, list) = c.get(0, "/v1/jobs").await.expect("list");
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["through-batch", "through-peer", "victim"],
        "nothing refused was stored"
    );
    // The victim keeps firing through its target's single slot, and no slot stays taken.
    let before = sink.of("victim").len();
    sink.wait_for("victim", before + 3, Duration::from_secs(10))
        .await;
    let (_, targets) = c.get(0, "/v1/targets").await.expect("targets");
    let log = c.log_of(0);
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        targets["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .all(|t| t["in_flight"].as_u64() <= Some(1)),
        "{targets}"
    );
}

/// SPEC §7, a defect an outside trial found: with an api token, adding a member at any
/// address made the leader send it every log entry (secret header values included) with the
/// peer secret in an `Authorization` header, 1,000–3,000 requests a second against a listener
/// answering garbage. Now the secret never travels, nothing but a challenge goes to an address
/// that has not proven it holds the secret, and a peer answering nonsense is backed off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_cannot_prove_the_peer_secret_gets_no_log_and_no_secret() {
    const PEER_SECRET: &str = "peer-secret-for-the-test-0123456789";
    let fake = Sink::start().await;
    let c = TestCluster::start_with(3, &["--peer-secret", PEER_SECRET]);
    let leader = c
        .wait_leader(&[0, 1, 2], crate::cluster::ELECTION_WITHIN)
        .await;
    let mut with_secret = job("with-secret");
    with_secret["headers"] = json!({"authorization": "Bearer job-secret-value-42"});
    with_secret["secret_headers"] = json!(["authorization"]);
    let (s, v) = c
        .post(leader, "/v1/jobs", &with_secret)
        .await
        .expect("create");
    assert_eq!(s, 201, "{v}");
    // A member's address goes through the egress policy like a target's.
    let (s, v) = c
        .post(
            leader,
            "/v1/cluster/members",
            &json!({"id": 12, "peer_addr": "169.254.169.254:7201", "voter": false}),
        )
        .await
        .expect("answer");
    assert_eq!((s, &v["error"]["field"]), (422, &json!("peer_addr")), "{v}");
    let fake_addr = fake.addr.to_string();
    let add = {
        let (http, url) = (c.http.clone(), c.url(leader, "/v1/cluster/members"));
        let body = json!({"id": 11, "peer_addr": fake_addr, "voter": false});
        tokio::spawn(async move { http.post(url).json(&body).send().await })
    };
    let watched = Duration::from_secs(6);
    tokio::time::sleep(watched).await;
    let seen = fake.all();
    assert!(
        !seen.is_empty(),
        "the leader asked the new member to prove itself"
    );
    for r in &seen {
        assert_eq!(
            r.path, "/raft/hello",
            "only a challenge went out: {}",
            r.path
        );
        let text = format!("{:?} {}", r.headers, String::from_utf8_lossy(&r.body));
        assert!(
            !text.contains(PEER_SECRET) && !text.contains("job-secret-value-42"),
            "a secret reached the fake member: {text}"
        );
    }
    // Backed off: a handful of challenges, not thousands.
    assert!(seen.len() <= 60, "{} requests in {watched:?}", seen.len());
    add.abort();
    // The nodes themselves still talk: a write commits.
    let (s, v) = c
        .post(leader, "/v1/jobs", &job("after"))
        .await
        .expect("create");
    assert_eq!(s, 201, "{v}");
}

//! Node lifecycle: graceful shutdown, restart from the data dir, refusing foreign data dirs.

use std::process::Command;
use std::time::Duration;

use crate::harness::{eventually, job, TestCluster, HOOKD};

#[tokio::test]
async fn sigterm_exits_cleanly_and_a_restart_keeps_the_jobs() {
    let mut c = TestCluster::start(1);
    c.wait_leader(&[0], Duration::from_secs(10)).await;
    let (s, _) = c.post(0, "/v1/jobs", &job("kept")).await.expect("create");
    assert_eq!(s, 201);
    let status = c.terminate(0);
    assert!(
        status.success(),
        "SIGTERM exits 0, got {status:?}\n{}",
        c.logs()
    );
    c.spawn(0);
    c.wait_leader(&[0], Duration::from_secs(10)).await;
    let (s, body) = eventually(Duration::from_secs(10), "the job after restart", || async {
        c.get(0, "/v1/jobs/kept").await.filter(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!((s, &body["id"]), (200, &serde_json::json!("kept")));
}

#[tokio::test]
async fn a_data_dir_of_another_node_is_refused_with_a_clear_error() {
    let mut c = TestCluster::start(1);
    c.wait_leader(&[0], Duration::from_secs(10)).await;
    c.terminate(0);
    let out = Command::new(HOOKD)
        .args([
            "serve",
            "--node-id",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&c.nodes[0].data_dir)
        .args(["--initial-cluster", "2=127.0.0.1:1"])
        .output()
        .expect("run hookd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("belongs to node 1, not node 2"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn bad_configuration_is_refused_before_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 4] = [
        (
            &["serve", "--listen", "127.0.0.1:0"],
            "--node-id is required",
        ),
        (
            &["serve", "--node-id", "1", "--initial-cluster", "1=x"],
            "--data-dir is required",
        ),
        (
            &[
                "serve",
                "--node-id",
                "4",
                "--data-dir",
                "D",
                "--initial-cluster",
                "1=127.0.0.1:1",
            ],
            "does not name this node",
        ),
        (
            &[
                "serve",
                "--node-id",
                "1",
                "--data-dir",
                "D",
                "--initial-cluster",
                "1=127.0.0.1:1",
                "--signing-secret",
                "nope",
            ],
            "whsec_",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if *a == "D" {
                    dir.path().display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        let out = Command::new(HOOKD).args(&args).output().expect("run hookd");
        assert!(!out.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: stderr {stderr}");
    }
}

#[tokio::test]
async fn environment_variables_configure_a_node_and_flags_beat_them() {
    let mut c = TestCluster::start(1);
    c.wait_leader(&[0], Duration::from_secs(10)).await;
    c.terminate(0);
    let data_dir = c.nodes[0].data_dir.display().to_string();
    // HOOKD_NODE_ID is read: node 2 may not open node 1's data dir.
    let out = Command::new(HOOKD)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .env("HOOKD_NODE_ID", "2")
        .env("HOOKD_DATA_DIR", &data_dir)
        .env("HOOKD_INITIAL_CLUSTER", "2=127.0.0.1:1")
        .output()
        .expect("run hookd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("belongs to node 1, not node 2"),
        "stderr: {stderr}"
    );
    // A config file is read, and the environment beats it.
    let file = c.nodes[0].data_dir.with_extension("toml");
    std::fs::write(&file, format!("node_id = 3\ndata_dir = {data_dir:?}\n")).expect("write config");
    let out = Command::new(HOOKD)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&file)
        .env("HOOKD_NODE_ID", "2")
        .output()
        .expect("run hookd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("belongs to node 1, not node 2"),
        "env beats file: {stderr}"
    );
    // The flag beats the environment: node 1 starts on its own data dir.
    let mut child = Command::new(HOOKD)
        .args([
            "serve",
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .env("HOOKD_NODE_ID", "2")
        .env("HOOKD_DATA_DIR", &data_dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn hookd");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let started = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("hookd node started") => break line,
            Ok(_) => continue,
            Err(_) => panic!("node with --node-id 1 did not start"),
        }
    };
    assert!(started.contains("node_id=1"), "{started}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Copies the directory tree `from` to `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

#[tokio::test]
async fn a_data_dir_written_by_schema_1_opens_with_everything_in_it() {
    opens_with_everything_in_it("schema-1", "fixture-v1").await;
}

#[tokio::test]
async fn a_data_dir_written_by_schema_2_opens_with_everything_in_it() {
    opens_with_everything_in_it("schema-2", "fixture-v2").await;
}

#[tokio::test]
async fn a_data_dir_written_by_format_3_opens_with_everything_in_it() {
    opens_with_everything_in_it("schema-3", "fixture-v3").await;
}

/// The ids `GET {path}` lists.
async fn listed(c: &TestCluster, path: &str) -> Vec<String> {
    let (s, v) = c.get(0, path).await.expect("list");
    assert_eq!(s, 200, "{path}: {v}");
    v["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect()
}

/// Opens a copy of `tests/fixtures/{name}/node1` (see the README there: what it holds and why
/// it is never regenerated) and checks everything in it, then that the node goes on.
async fn opens_with_everything_in_it(name: &str, cluster_id: &str) {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join("node1");
    let mut c = TestCluster::new(1, &["--cluster-id", cluster_id]);
    copy_dir(&fixture, &c.nodes[0].data_dir);
    c.spawn(0);
    c.wait_leader(&[0], Duration::from_secs(10)).await;

    let (s, v) = c.get(0, "/v1/cluster").await.expect("cluster");
    assert_eq!(
        (s, &v["cluster_id"]),
        (200, &serde_json::json!(cluster_id)),
        "{v}"
    );
    let (s, v) = c.get(0, "/v1/jobs").await.expect("list");
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, ["cron-berlin", "every-1s", "once", "paused"], "{v}");

    let (_, cron) = c.get(0, "/v1/jobs/cron-berlin").await.expect("get");
    assert_eq!(cron["schedule"]["cron"], "0 9 * * 1-5");
    assert_eq!(cron["schedule"]["timezone"], "Europe/Berlin");
    assert_eq!(cron["method"], "PUT");
    assert_eq!(cron["headers"]["x-team"], "ops");
    assert_eq!(cron["body"], "{\"hello\":1}");
    assert_eq!(cron["paused"], false);

    let (_, every) = c.get(0, "/v1/jobs/every-1s").await.expect("get");
    assert_eq!(every["headers"]["authorization"], "***");
    assert_eq!(
        every["secret_headers"],
        serde_json::json!(["authorization"])
    );
    assert_eq!(every["paused"], true);
    let (_, runs) = c
        .get(0, "/v1/jobs/every-1s/runs?limit=100")
        .await
        .expect("runs");
    let runs = runs["runs"].as_array().expect("runs").clone();
    assert!(runs.len() >= 5, "{runs:?}");
    for r in &runs {
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["attempts"].as_array().map(Vec::len), Some(2), "{r}");
    }
    let (_, once) = c.get(0, "/v1/jobs/once/runs").await.expect("runs");
    assert_eq!(once["runs"][0]["status"], "failed", "{once}");
    let (_, paused) = c.get(0, "/v1/jobs/paused").await.expect("get");
    assert_eq!(paused["paused"], true);
    let (s, _) = c.get(0, "/v1/jobs/deleted").await.expect("get");
    assert_eq!(s, 404, "a deleted job stays deleted");
    // The job index was built at open: the filters served from it see every old job.
    assert_eq!(
        listed(&c, "/v1/jobs?state=paused").await,
        ["every-1s", "paused"]
    );
    assert_eq!(
        listed(&c, "/v1/jobs?target=127.0.0.1:9").await,
        ["cron-berlin", "every-1s", "once", "paused"]
    );

    // And the node goes on: a new job, and the paused one resumes.
    let mut labelled = job("after-upgrade");
    labelled["labels"] = serde_json::json!({"team": "ops"});
    let (s, v) = c.post(0, "/v1/jobs", &labelled).await.expect("create");
    assert_eq!(s, 201, "{v}");
    let (s, v) = c
        .post(0, "/v1/jobs/paused/resume", &serde_json::json!({}))
        .await
        .expect("resume");
    assert_eq!((s, &v["paused"]), (200, &serde_json::json!(false)), "{v}");
    assert_eq!(listed(&c, "/v1/jobs?state=paused").await, ["every-1s"]);
    assert_eq!(
        listed(&c, "/v1/jobs?selector=team=ops").await,
        ["after-upgrade"]
    );
}

/// The shipped systemd units pass `systemd-analyze verify` without a warning (with `ExecStart`
/// pointed at the binary under test), and every variable the environment template sets or
/// suggests is one `hookd serve` reads.
#[test]
fn the_systemd_units_verify_and_the_environment_template_names_real_flags() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/systemd");
    let dir = tempfile::tempdir().expect("tempdir");
    let service = std::fs::read_to_string(shipped.join("hookd.service")).expect("service");
    assert!(service.contains("ExecStart=/usr/local/bin/hookd serve"));
    std::fs::write(
        dir.path().join("hookd.service"),
        service.replace("/usr/local/bin/hookd", HOOKD),
    )
    .expect("write");
    std::fs::copy(
        shipped.join("hookd.socket"),
        dir.path().join("hookd.socket"),
    )
    .expect("copy");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("hookd.socket"))
        .arg(dir.path().join("hookd.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");

    let help = Command::new(HOOKD)
        .args(["serve", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    let env = std::fs::read_to_string(shipped.join("hookd.env")).expect("env template");
    let names: Vec<&str> = env
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| k.starts_with("HOOKD_"))
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            help.contains(&format!("[env: {name}")),
            "{name} is no flag of hookd serve"
        );
    }
}

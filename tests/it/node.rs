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
    assert!(status.success(), "SIGTERM exits 0, got {status:?}\n{}", c.logs());
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
        .args(["serve", "--node-id", "2", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&c.nodes[0].data_dir)
        .args(["--initial-cluster", "2=127.0.0.1:1"])
        .output()
        .expect("run hookd");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to node 1, not node 2"), "stderr: {stderr}");
}

#[tokio::test]
async fn bad_configuration_is_refused_before_starting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 4] = [
        (&["serve", "--listen", "127.0.0.1:0"], "--node-id is required"),
        (&["serve", "--node-id", "1", "--initial-cluster", "1=x"], "--data-dir is required"),
        (&["serve", "--node-id", "4", "--data-dir", "D", "--initial-cluster", "1=127.0.0.1:1"], "does not name this node"),
        (&["serve", "--node-id", "1", "--data-dir", "D", "--initial-cluster", "1=127.0.0.1:1", "--signing-secret", "nope"], "whsec_"),
    ];
    for (args, expected) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|a| if *a == "D" { dir.path().display().to_string() } else { a.to_string() })
            .collect();
        let out = Command::new(HOOKD).args(&args).output().expect("run hookd");
        assert!(!out.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: stderr {stderr}");
    }
}

//! The command-line client against live nodes (SPEC §6): jobs and cluster commands through
//! several `--addr` values with one down, exit statuses, notifications and a job's hooks, and a
//! backup saved from a live cluster, checked, and restored into a new cluster.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::ELECTION_WITHIN;
use crate::harness::{create, eventually, single, TestCluster, HOOKD};

/// Runs `hookd ARGS` with no terminal; (exit status, stdout, stderr).
async fn hookd(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(HOOKD)
            .args(&args)
            .env_remove("HOOKD_ADDR")
            .env_remove("HOOKD_TOKEN")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run hookd");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

/// `hookd --addr ADDR ARGS`.
async fn hookd_at(addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--addr", addr];
    all.extend_from_slice(args);
    hookd(&all).await
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_uses_the_first_node_that_answers_and_exits_by_outcome() {
    let c = TestCluster::start(3);
    c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    // Nothing listens on port 1: the client moves on to the next address.
    let addr = format!("127.0.0.1:1,http://{},{}", c.nodes[1].api, c.nodes[2].api);
    let run = |args: &[&str]| {
        let mut all = vec!["--addr", addr.as_str()];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            hookd(&refs).await
        }
    };

    let (code, out, err) = run(&[
        "jobs",
        "create",
        "--id",
        "cli-1",
        "--url",
        "http://127.0.0.1:9/h",
        "--every",
        "1h",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["id"], "cli-1");
    assert_eq!(json(&out)["schedule"]["every"], "1h");

    let (code, out, err) = run(&["jobs", "get", "cli-1"]).await;
    assert_eq!(
        (code, json(&out)["id"].as_str()),
        (0, Some("cli-1")),
        "{err}"
    );
    let (code, _, err) = run(&["jobs", "get", "nope"]).await;
    assert_eq!(code, 1, "a missing job is an API error");
    assert!(err.contains("404") && err.contains("not_found"), "{err}");

    let (code, out, _) = run(&["jobs", "list"]).await;
    assert_eq!(code, 0);
    let ids: Vec<String> = json(&out)["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect();
    assert!(ids.contains(&"cli-1".to_string()), "{out}");

    let (code, out, _) = run(&["cluster", "status"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        json(&out)["members"].as_array().map(Vec::len),
        Some(3),
        "{out}"
    );

    let (code, out, _) = run(&["-o", "table", "jobs", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("ID") && out.contains("cli-1"), "{out}");
    // Tables are for people: the schedule in words, the next fire exact and relative.
    assert!(out.contains("every 1h") && out.contains("(in "), "{out}");
    assert!(!out.contains(r#"{"every""#), "no schedule JSON: {out}");

    // A run sent where nothing listens: the table shows its attempts as a count and the last
    // outcome, not as a JSON array; the JSON output keeps the array.
    let (code, _, err) = run(&["jobs", "trigger", "cli-1"]).await;
    assert_eq!(code, 0, "{err}");
    let table = eventually(
        Duration::from_secs(20),
        "an attempt in the runs table",
        || async {
            let (_, out, _) = run(&["-o", "table", "runs", "list", "--job", "cli-1"]).await;
            out.contains(" (last").then_some(out)
        },
    )
    .await;
    assert!(
        table.starts_with("RUN") && table.contains("ATTEMPTS"),
        "{table}"
    );
    assert!(
        !table.contains("[{") && !table.contains("status_code"),
        "{table}"
    );
    let (code, out, _) = run(&["runs", "list", "--job", "cli-1"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["runs"][0]["attempts"][0]["n"], 1, "{out}");

    // Edit: --set and --unset as a merge patch; --if-match a stale version is refused.
    let (code, out, err) = run(&[
        "jobs",
        "edit",
        "cli-1",
        "--set",
        "labels.team=ops",
        "--set",
        "retry.max_attempts:=2",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let edited = json(&out);
    assert_eq!(
        (&edited["labels"]["team"], &edited["retry"]["max_attempts"]),
        (&serde_json::json!("ops"), &serde_json::json!(2)),
        "{out}"
    );
    let stale = (edited["version"].as_u64().expect("version") - 1).to_string();
    let (code, _, err) = run(&[
        "jobs",
        "edit",
        "cli-1",
        "--unset",
        "labels.team",
        "--if-match",
        &stale,
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("412 precondition_failed"), "{err}");

    // Bulk: a dry run counts; without --yes off a terminal it asks (usage error) and changes
    // nothing; with --yes it acts.
    let (code, out, err) = run(&["jobs", "bulk", "pause", "--prefix", "cli-", "--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (
            json(&out)["matched"].as_u64(),
            json(&out)["changed"].as_u64()
        ),
        (Some(1), Some(0)),
        "{out}"
    );
    let (code, _, err) = run(&["jobs", "bulk", "pause", "--prefix", "cli-"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("pause 1 jobs (first: cli-1)") && err.contains("--yes"),
        "{err}"
    );
    let (code, out, err) = run(&["jobs", "bulk", "pause", "--prefix", "cli-", "--yes"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["changed"], 1, "{out}");
    let (_, out, _) = run(&["jobs", "get", "cli-1"]).await;
    assert_eq!(json(&out)["state"], "paused", "{out}");
    let (code, _, err) = run(&["jobs", "bulk", "resume"]).await;
    assert_eq!(code, 1, "no filter: the API's 422");
    assert!(err.contains("422"), "{err}");
    let (code, out, err) = run(&["runs", "retry", "--all", "--job", "cli-1", "--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["retried"], 0, "{out}");
    let (code, _, err) = run(&["runs", "retry"]).await;
    assert_eq!(code, 2, "a run id or --all: {err}");

    // A target's policy, set and removed.
    let (code, out, err) = run(&[
        "targets",
        "set-policy",
        "example.com:443",
        "--rate-per-s",
        "2.5",
        "--burst",
        "3",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["policy"]["rate_per_s"], 2.5, "{out}");
    let (code, _, err) = run(&["targets", "delete-policy", "example.com:443"]).await;
    assert_eq!(code, 0, "{err}");

    // Usage errors exit 2: two schedules, or a delete without --yes off a terminal.
    let (code, _, err) = run(&["jobs", "create", "--every", "1s", "--after", "1m"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["jobs", "delete", "cli-1"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
    let (code, _, _) = run(&["jobs", "delete", "cli-1", "--yes"]).await;
    assert_eq!(code, 0);
    let (code, _, _) = run(&["jobs", "get", "cli-1"]).await;
    assert_eq!(code, 1, "deleted");

    // No node answering at all is an error, not a hang.
    let (code, _, err) = hookd(&["--addr", "127.0.0.1:1", "cluster", "status"]).await;
    assert_eq!(code, 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_put_listed_and_deleted_and_jobs_carry_their_hooks() {
    let c = single(&[]).await;
    let addr = c.nodes[0].api.to_string();
    let put = [
        "notifications",
        "put",
        "ops",
        "--url",
        "http://127.0.0.1:9/events",
        "--header",
        "authorization=Bearer s3cr3t",
        "--secret-header",
        "authorization",
        "--header",
        "x-team: ops",
        "--event",
        "run.failed",
        "--selector",
        "team=ops",
    ];

    // Created, then replaced under the same id: one notification, a newer version.
    let (code, out, err) = hookd_at(&addr, &put).await;
    assert_eq!(code, 0, "{err}");
    let created = json(&out);
    assert_eq!(
        (&created["id"], &created["events"]),
        (
            &serde_json::json!("ops"),
            &serde_json::json!(["run.failed"])
        ),
        "{out}"
    );
    assert_eq!(created["headers"]["authorization"], "***", "{out}");
    assert!(!out.contains("s3cr3t"), "{out}");
    let mut again = put.to_vec();
    again.extend(["--event", "target.circuit_opened"]);
    let (code, out, err) = hookd_at(&addr, &again).await;
    assert_eq!(code, 0, "{err}");
    let replaced = json(&out);
    assert_eq!(
        replaced["events"],
        serde_json::json!(["run.failed", "target.circuit_opened"]),
        "{out}"
    );
    assert_eq!(replaced["created_at"], created["created_at"], "{out}");
    assert!(
        replaced["version"].as_u64() > created["version"].as_u64(),
        "{out}"
    );

    // Read back: the secret stays a secret; the JSON output is the API's answer.
    let (code, out, err) = hookd_at(&addr, &["notifications", "get", "ops"]).await;
    assert_eq!(code, 0, "{err}");
    let got = json(&out);
    assert_eq!(
        (
            &got["headers"]["authorization"],
            &got["headers"]["x-team"],
            &got["secret_headers"],
            &got["selector"],
        ),
        (
            &serde_json::json!("***"),
            &serde_json::json!("ops"),
            &serde_json::json!(["authorization"]),
            &serde_json::json!("team=ops"),
        ),
        "{out}"
    );
    let (code, out, _) = hookd_at(&addr, &["-o", "table", "notifications", "get", "ops"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("events") && l.ends_with("run.failed,target.circuit_opened")),
        "{out}"
    );

    // From a file, sent as it is; flags with the file are a usage error, as is no --event.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("nodes.json");
    std::fs::write(
        &file,
        r#"{"url": "http://127.0.0.1:9/nodes", "events": ["node.unreachable", "node.recovered"]}"#,
    )
    .expect("write");
    let f = file.to_str().expect("utf-8");
    let (code, out, err) = hookd_at(&addr, &["notifications", "put", "nodes", "-f", f]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["url"], "http://127.0.0.1:9/nodes", "{out}");
    let (code, _, err) = hookd_at(
        &addr,
        &[
            "notifications",
            "put",
            "nodes",
            "-f",
            f,
            "--url",
            "http://127.0.0.1:9/x",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = hookd_at(
        &addr,
        &["notifications", "put", "x", "--url", "http://127.0.0.1:9/x"],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = hookd_at(
        &addr,
        &[
            "notifications",
            "put",
            "x",
            "--url",
            "http://127.0.0.1:9/x",
            "--event",
            "run.exploded",
        ],
    )
    .await;
    assert_eq!(code, 1, "the server refuses an unknown event type: {err}");

    // Listed: JSON for scripts, a table for people.
    let (code, out, err) = hookd_at(&addr, &["notifications", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let listed = json(&out);
    let ids: Vec<&str> = listed["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["nodes", "ops"], "{out}");
    let (code, out, err) = hookd_at(&addr, &["notifications", "list", "--limit", "1"]).await;
    assert_eq!(code, 0, "{err}");
    let first = json(&out);
    assert_eq!(first["notifications"][0]["id"], "nodes", "{out}");
    let next = first["next"].as_str().expect("a next page");
    let (code, out, err) = hookd_at(&addr, &["notifications", "list", "--after", next]).await;
    assert_eq!(code, 0, "{err}");
    let rest = json(&out);
    assert_eq!(
        (
            rest["notifications"].as_array().map(Vec::len),
            &rest["notifications"][0]["id"]
        ),
        (Some(1), &serde_json::json!("ops")),
        "{out}"
    );
    let (code, out, _) = hookd_at(&addr, &["-o", "table", "notifications", "list"]).await;
    assert_eq!(code, 0);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["ID", "EVENTS", "SELECTOR", "URL"],
            vec![
                "nodes",
                "node.unreachable,node.recovered",
                "-",
                "http://127.0.0.1:9/nodes"
            ],
            vec![
                "ops",
                "run.failed,target.circuit_opened",
                "team=ops",
                "http://127.0.0.1:9/events"
            ],
        ],
        "{out}"
    );

    // Deleted: gone, and a missing one is the API's 404.
    let (code, _, err) = hookd_at(&addr, &["notifications", "delete", "ops"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = hookd_at(&addr, &["notifications", "get", "ops"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404") && err.contains("not_found"), "{err}");

    // A job's hooks from flags, shown as the API returns them and, in a table, as their URLs.
    let (code, _, err) = hookd_at(
        &addr,
        &[
            "jobs",
            "create",
            "--id",
            "hooked",
            "--url",
            "http://127.0.0.1:9/h",
            "--every",
            "1h",
            "--on-failure",
            "http://127.0.0.1:9/failed",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = hookd_at(&addr, &["jobs", "get", "hooked", "--output", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let job = json(&out);
    assert_eq!(
        job["on_failure"]["url"], "http://127.0.0.1:9/failed",
        "{out}"
    );
    assert!(job["on_success"].is_null(), "{out}");
    let (code, out, _) = hookd_at(&addr, &["jobs", "get", "hooked", "--output", "table"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l
            .split_whitespace()
            .eq(["on_failure", "http://127.0.0.1:9/failed"])),
        "{out}"
    );
}

fn flip_byte(src: &Path, dst: &Path) {
    let mut bytes = std::fs::read(src).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(dst, bytes).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_live_cluster_restores_into_a_new_cluster_and_a_bad_file_is_refused() {
    backup_and_restore(1).await;
}

/// The same with three shards: one file holds every shard, and each is restored into its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_every_shard_restores_into_a_new_cluster_of_as_many_shards() {
    backup_and_restore(3).await;
}

async fn backup_and_restore(shards: u32) {
    let old = TestCluster::start_with(3, &["--shards", &shards.to_string()]);
    let leader = old.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    for i in 0..40 {
        create(
            &old,
            leader,
            serde_json::json!({"id": format!("b{i:02}"), "url": "http://127.0.0.1:9/h",
                               "schedule": {"every": "1h"},
                               "headers": {"authorization": "Bearer s3cr3t"},
                               "secret_headers": ["authorization"]}),
        )
        .await;
    }
    let old_id = old.get(0, "/v1/cluster").await.expect("cluster").1["cluster_id"].clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("backup.snap");
    let f = file.to_str().expect("utf-8");
    let follower = (0..3).find(|i| *i != leader).expect("follower");
    let addr = old.nodes[follower].api.to_string();
    let (code, out, err) = hookd(&["--addr", &addr, "snapshot", "save", f]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["jobs"], 40, "{out}");
    // It holds secret header values: owner only (SPEC §7).
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file).expect("backup").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "backup mode {mode:o}");

    let (code, out, _) = hookd(&["snapshot", "inspect", f]).await;
    assert_eq!(code, 0);
    let info = json(&out);
    assert_eq!(info["jobs"], 40);
    assert_eq!(info["format"], 2);
    if shards > 1 {
        let per = info["shards"].as_array().expect("shards");
        assert_eq!(per.len(), shards as usize, "{out}");
        assert!(per.iter().all(|s| s["jobs"].as_u64() > Some(0)), "{out}");
    }
    assert_eq!(
        info["members"].as_object().map(|m| m.len()),
        Some(3),
        "{out}"
    );
    // Shard 0 holds its part of the jobs (all of them with one shard).
    let at_least = 40 / u64::from(shards);
    assert!(
        info["last_applied"]["index"].as_u64() > Some(at_least),
        "{out}"
    );

    // A corrupt file and a foreign one are refused, and nothing is written.
    let corrupt = dir.path().join("corrupt.snap");
    flip_byte(&file, &corrupt);
    let foreign = dir.path().join("foreign.snap");
    std::fs::write(&foreign, b"PK\x03\x04 not a snapshot at all").expect("write");
    for (bad, says) in [(&corrupt, "corrupt"), (&foreign, "not a hookd snapshot")] {
        let b = bad.to_str().expect("utf-8");
        let (code, _, err) = hookd(&["snapshot", "inspect", b]).await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(says), "{err}");
        let target = dir.path().join("never");
        let (code, _, err) = hookd(&[
            "snapshot",
            "restore",
            b,
            "--data-dir",
            target.to_str().expect("utf-8"),
            "--node-id",
            "1",
            "--initial-cluster",
            "1=127.0.0.1:1",
        ])
        .await;
        assert_eq!(code, 1, "{err}");
        assert!(!target.exists(), "a refused restore writes nothing");
    }

    // Every member of a new cluster is restored from the same file, then started.
    let mut new = TestCluster::new(3, &[]);
    let mut restored_ids = Vec::new();
    for i in 0..3 {
        let (code, out, err) = hookd(&[
            "snapshot",
            "restore",
            f,
            "--data-dir",
            new.nodes[i].data_dir.to_str().expect("utf-8"),
            "--node-id",
            &new.nodes[i].id.to_string(),
            "--initial-cluster",
            new.initial_cluster(),
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        restored_ids.push(json(&out)["cluster_id"].clone());
    }
    assert_ne!(restored_ids[0], old_id, "a new cluster id");
    assert!(
        restored_ids.iter().all(|id| *id == restored_ids[0]),
        "one id for every member: {restored_ids:?}"
    );
    let (code, _, err) = hookd(&[
        "snapshot",
        "restore",
        f,
        "--data-dir",
        new.nodes[0].data_dir.to_str().expect("utf-8"),
        "--node-id",
        "1",
        "--initial-cluster",
        new.initial_cluster(),
    ])
    .await;
    assert_eq!(code, 1, "a data dir in use is refused: {err}");
    for i in 0..3 {
        new.spawn(i);
    }
    let l = new.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    let (s, v) = new.get(l, "/v1/jobs?limit=1000").await.expect("list");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["jobs"].as_array().map(Vec::len), Some(40), "{v}");
    assert_eq!(
        v["jobs"][0]["headers"]["authorization"], "***",
        "still a secret: {v}"
    );
    let mut cluster_ids = Vec::new();
    for i in 0..3 {
        let v = eventually(Duration::from_secs(10), "a cluster view", || async {
            new.get(i, "/v1/cluster").await.filter(|(s, _)| *s == 200)
        })
        .await
        .1;
        cluster_ids.push(v["cluster_id"].clone());
        assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
        assert_eq!(
            v["shards"].as_array().map(Vec::len),
            Some(shards as usize),
            "the restored count: {v}"
        );
    }
    assert!(
        cluster_ids.iter().all(|id| *id == restored_ids[0]),
        "the new cluster runs with the restored id: {cluster_ids:?} vs {restored_ids:?}"
    );
    create(&new, l, crate::harness::job("after-restore")).await;
}

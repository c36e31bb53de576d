//! The OpenAPI description (SPEC §2): a valid 3.1 document naming every route of SPEC §2, its
//! browsable page, and schemathesis (an independent fuzzer, from PyPI) run against a live node:
//! no server error, every answer's status, content type and body as described.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use crate::harness::{single, HOOKD};

/// Every route of SPEC §2, as (method, path).
const SPEC_ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("put", "/v1/jobs/{id}"),
    ("get", "/v1/jobs/{id}"),
    ("delete", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/pause"),
    ("post", "/v1/jobs/{id}/resume"),
    ("post", "/v1/jobs/{id}/trigger"),
    ("get", "/v1/jobs/{id}/runs"),
    ("get", "/v1/runs"),
    ("post", "/v1/runs/{run_id}/retry"),
    ("post", "/v1/schedules/preview"),
    ("get", "/v1/cluster"),
    ("post", "/v1/cluster/members"),
    ("delete", "/v1/cluster/members/{id}"),
    ("post", "/v1/cluster/upgrade/finalize"),
    ("get", "/v1/targets"),
    ("get", "/v1/snapshot"),
    ("post", "/v1/jobs/bulk"),
    ("patch", "/v1/jobs/{id}"),
    ("put", "/v1/targets/{target}/policy"),
    ("delete", "/v1/targets/{target}/policy"),
    ("post", "/v1/runs/retry"),
    ("get", "/v1/notifications"),
    ("put", "/v1/notifications/{id}"),
    ("get", "/v1/notifications/{id}"),
    ("delete", "/v1/notifications/{id}"),
    ("get", "/v1/stats"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
    ("get", "/ui"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => {
                        out.insert(r.clone());
                    }
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_and_its_errors() {
    let c = single(&[]).await;
    let (s, doc) = c.get(0, "/openapi.json").await.expect("openapi.json");
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in SPEC_ROUTES {
        let op = &paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not described"))[*method];
        assert!(op.is_object(), "{method} {path} is not described");
        let responses = op["responses"].as_object().expect("responses");
        if path.starts_with("/v1/") {
            for status in ["400", "401", "404", "422", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} lacks {status}"
                );
            }
        }
    }
    let served: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |o| o.len()))
        .sum();
    assert_eq!(served, SPEC_ROUTES.len(), "exactly the routes of SPEC §2");
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} does not resolve"
        );
    }

    // Every operation has its own readable id (code generators need them unique).
    let mut ids = BTreeSet::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().expect("operations") {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && id.chars().all(|c| c.is_ascii_alphanumeric()),
                "{method} {path}: operationId {id:?} is not a camelCase name"
            );
            assert!(ids.insert(id.to_owned()), "operationId {id} is not unique");
        }
    }
    validate_with_openapi_spec_validator(&doc);

    let resp = c.http.get(c.url(0, "/docs")).send().await.expect("docs");
    assert_eq!(resp.status(), 200);
    let kind = resp.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(kind.starts_with("text/html"), "{kind}");
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    let page = resp.text().await.expect("page");
    // Everything the page loads comes from the node itself (SPEC §9: air-gapped clusters).
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"),
        "the page names another origin: {page}"
    );
    assert!(page.contains("spec-url=\"/openapi.json\""), "{page}");
    let script = page
        .split("<script src=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the page loads a script");
    let resp = c.http.get(c.url(0, script)).send().await.expect("script");
    assert_eq!(resp.status(), 200, "{script}");
    let js = resp.bytes().await.expect("body");
    assert!(
        js.len() > 100_000,
        "Redoc's bundle is served: {} bytes",
        js.len()
    );
}

/// Runs openapi-spec-validator (PyPI, installed by `scripts/check.sh` in a venv under `target/`
/// unless `HOOKD_OPENAPI_VALIDATOR` names the executable) on `doc`.
fn validate_with_openapi_spec_validator(doc: &Value) {
    let validator = std::env::var_os("HOOKD_OPENAPI_VALIDATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/openapi-validator/bin/openapi-spec-validator")
        });
    assert!(
        validator.exists(),
        "{} is missing: scripts/check.sh installs it",
        validator.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).expect("write the document");
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator rejects /openapi.json:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where `scripts/check.sh` installs schemathesis (a venv under `target/`), unless
/// `HOOKD_SCHEMATHESIS` names the executable.
fn schemathesis() -> PathBuf {
    std::env::var_os("HOOKD_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis/bin/schemathesis")
        })
}

/// Runs a node and schemathesis in a network namespace of their own (only loopback), so the jobs the fuzzer creates can reach nothing outside it.
/// `POST /v1/cluster/members` is left out: a made-up member makes each call wait 60 s for a
/// learner that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_every_answer_matches_the_description() {
    let st = schemathesis();
    assert!(
        st.exists(),
        "{} is missing: scripts/check.sh installs it (python3 -m venv target/schemathesis && \
         target/schemathesis/bin/pip install schemathesis)",
        st.display()
    );
    let script = format!(
        r#"set -e
ip link set lo up
data=$(mktemp -d)
"{hookd}" serve --dev --listen 127.0.0.1:7101 --peer-listen 127.0.0.1:7201 --data-dir "$data/d" >"$data/log" 2>&1 &
node=$!
for i in $(seq 100); do
  "{hookd}" --addr 127.0.0.1:7101 -o json cluster status 2>/dev/null | grep -q '"leader_id": 1' && break
  sleep 0.1
done
set +e
cd "$data"  # schemathesis keeps a cache in its working directory
timeout 240 "{st}" run http://127.0.0.1:7101/openapi.json \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /v1/cluster/members -n 25 --generation-deterministic --no-color
code=$?
kill $node
wait $node
exit $code"#,
        hookd = HOOKD,
        st = st.display()
    );
    // Root (as in CI) makes the namespace directly; anyone else through a user namespace.
    let root =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("proc")) == 0;
    let isolate: &[&str] = if root {
        &["--net"]
    } else {
        &["--user", "--map-root-user", "--net"]
    };
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("unshare")
            .args(isolate)
            .args(["bash", "-c", &script])
            .output()
            .expect("unshare (util-linux) and bash")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    let tested = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<usize>().ok());
    assert!(
        tested >= Some(31),
        "operations tested: {tested:?}\n{stdout}"
    );
    assert!(stdout.contains(" passed"), "{stdout}");
}

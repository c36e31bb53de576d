//! The public API on a one-node cluster: CRUD semantics, validation, error format.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{job, now_ms, rfc3339, single, three_failing_runs_each, TestCluster};

/// Asserts an error response: status, code and (when given) field.
fn assert_error(
    got: Option<(u16, Value)>,
    status: u16,
    code: &str,
    field: Option<&str>,
    what: &str,
) {
    let (s, body) = got.unwrap_or_else(|| panic!("{what}: no response"));
    assert_eq!(s, status, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    if let Some(f) = field {
        assert_eq!(body["error"]["field"], f, "{what}: {body}");
    }
}

#[tokio::test]
async fn invalid_input_of_each_kind_gets_the_right_4xx_and_json_error() {
    let c = single(&[]).await;
    let with = |patch: Value| {
        let mut j = job("x");
        for (k, v) in patch.as_object().expect("object") {
            j[k] = v.clone();
        }
        j
    };
    let cases: Vec<(Value, u16, &str, &str, &str)> = vec![
        (
            with(json!({"url": "ftp://example.com/x"})),
            422,
            "invalid_field",
            "url",
            "bad URL scheme",
        ),
        (
            with(json!({"url": "not a url"})),
            422,
            "invalid_field",
            "url",
            "unparseable URL",
        ),
        (
            with(json!({"schedule": {"cron": "61 * * * *"}})),
            422,
            "invalid_schedule",
            "schedule.cron",
            "bad cron",
        ),
        (
            with(json!({"schedule": {"cron": "0 0 30 2 *"}})),
            422,
            "invalid_schedule",
            "schedule.cron",
            "cron that never fires",
        ),
        (
            with(json!({"schedule": {"cron": "0 9 * * *", "timezone": "Mars/Base"}})),
            422,
            "invalid_schedule",
            "schedule.timezone",
            "bad timezone",
        ),
        (
            with(json!({"schedule": {"rrule": "FREQ=DAILY"}})),
            422,
            "invalid_schedule",
            "schedule.rrule",
            "unknown schedule kind",
        ),
        (
            with(json!({"schedule": {}})),
            422,
            "invalid_schedule",
            "schedule",
            "no schedule kind",
        ),
        (
            with(json!({"schedule": {"every": "1s", "after": "1s"}})),
            422,
            "invalid_schedule",
            "schedule",
            "two schedule kinds",
        ),
        (
            with(json!({"schedule": {"every": "500ms"}})),
            422,
            "invalid_schedule",
            "schedule.every",
            "interval under 1 s",
        ),
        (
            with(json!({"schedule": {"at": "tomorrow"}})),
            422,
            "invalid_schedule",
            "schedule.at",
            "bad instant",
        ),
        (
            with(json!({"schedule": {"after": "5 parsecs"}})),
            422,
            "invalid_schedule",
            "schedule.after",
            "bad duration",
        ),
        (
            with(json!({"method": "TRACE"})),
            422,
            "invalid_field",
            "method",
            "bad method",
        ),
        (
            with(json!({"id": "has space"})),
            422,
            "invalid_field",
            "id",
            "bad id",
        ),
        (
            with(json!({"timeout": "61s"})),
            422,
            "invalid_field",
            "timeout",
            "timeout over 60 s",
        ),
        (
            with(json!({"retry": {"max_attempts": 0}})),
            422,
            "invalid_field",
            "retry.max_attempts",
            "zero attempts",
        ),
        (
            with(json!({"retry": {"jitter": 1.5}})),
            422,
            "invalid_field",
            "retry.jitter",
            "jitter over 1",
        ),
        (
            with(json!({"misfire": {"policy": "sometimes"}})),
            422,
            "invalid_field",
            "misfire.policy",
            "bad misfire policy",
        ),
        (
            with(json!({"headers": {"webhook-id": "mine"}})),
            422,
            "invalid_field",
            "headers.webhook-id",
            "reserved header",
        ),
        (
            with(json!({"body": "x".repeat(300 * 1024)})),
            422,
            "invalid_field",
            "body",
            "body over 256 KiB",
        ),
        (
            with(json!({"url": 42})),
            422,
            "invalid_field",
            "url",
            "wrong JSON type",
        ),
        (
            with(json!({"colour": "blue"})),
            422,
            "invalid_field",
            "colour",
            "unknown field",
        ),
        (
            json!({"schedule": {"after": "1s"}}),
            422,
            "invalid_field",
            "url",
            "missing url",
        ),
    ];
    for (body, status, code, field, what) in cases {
        let got = c.post(0, "/v1/jobs", &body).await;
        assert_error(got, status, code, Some(field), what);
    }

    // Malformed JSON, wrong content type, oversized body.
    let raw = |body: Vec<u8>, ct: &'static str| {
        c.http
            .post(c.url(0, "/v1/jobs"))
            .header("content-type", ct)
            .body(body)
    };
    let send = |req: reqwest::RequestBuilder| async move {
        let resp = req.send().await.ok()?;
        let s = resp.status().as_u16();
        Some((s, resp.json::<Value>().await.unwrap_or(Value::Null)))
    };
    assert_error(
        send(raw(b"{\"url\": ".to_vec(), "application/json")).await,
        400,
        "malformed_json",
        None,
        "truncated JSON",
    );
    assert_error(
        send(raw(b"not json".to_vec(), "application/json")).await,
        400,
        "malformed_json",
        None,
        "not JSON",
    );
    assert_error(
        send(raw(job("ct").to_string().into_bytes(), "text/plain")).await,
        415,
        "unsupported_media_type",
        None,
        "wrong content type",
    );
    let huge = format!(
        "{{\"id\": \"big\", \"body\": \"{}\"}}",
        "x".repeat(1100 * 1024)
    );
    assert_error(
        send(raw(huge.into_bytes(), "application/json")).await,
        413,
        "payload_too_large",
        None,
        "body over 1 MiB",
    );

    // Unknown ids, bad paths and query parameters.
    assert_error(
        c.get(0, "/v1/jobs/nope").await,
        404,
        "not_found",
        None,
        "unknown id",
    );
    assert_error(
        c.send(0, Method::DELETE, "/v1/jobs/nope", None).await,
        404,
        "not_found",
        None,
        "delete unknown",
    );
    assert_error(
        c.send(0, Method::POST, "/v1/jobs/nope/pause", None).await,
        404,
        "not_found",
        None,
        "pause unknown",
    );
    assert_error(
        c.get(0, "/v1/nothing").await,
        404,
        "not_found",
        None,
        "unknown route",
    );
    assert_error(
        c.get(0, "/v1/jobs?limit=0").await,
        400,
        "invalid_parameter",
        Some("limit"),
        "limit 0",
    );
    assert_error(
        c.get(0, "/v1/jobs?limit=abc").await,
        400,
        "invalid_parameter",
        None,
        "limit not a number",
    );
    assert_error(
        c.get(0, "/v1/jobs/x?consistency=maybe").await,
        400,
        "invalid_parameter",
        None,
        "bad consistency",
    );
    assert_error(
        c.send(0, Method::PATCH, "/v1/jobs", None).await,
        405,
        "method_not_allowed",
        None,
        "wrong method",
    );

    // Nothing invalid was stored.
    let (_, list) = c.get(0, "/v1/jobs").await.expect("list");
    assert_eq!(
        list["jobs"],
        json!([]),
        "rejected jobs are not stored: {list}"
    );
}

#[tokio::test]
async fn create_is_idempotent_put_replaces_and_delete_pause_resume_work() {
    let c = single(&[]).await;
    // A day ahead, whole seconds: the job is still pending whatever the day the test runs.
    let at_ms = (now_ms() / 1000 + 86_400) * 1000;
    let body = json!({
        "id": "invoice-42-reminder",
        "url": "https://example.com/hooks/remind",
        "method": "POST",
        "headers": {"Content-Type": "application/json"},
        "body": "{\"invoice\": 42}",
        "schedule": {"at": rfc3339(at_ms).replace(".000Z", "Z")},
        "retry": {"max_attempts": 5, "initial_backoff": "1s", "max_backoff": "1h", "multiplier": 2.0, "jitter": 0.2},
        "timeout": "10s",
        "misfire": {"policy": "fire_once", "grace": "60s", "catchup_window": "24h"},
        "paused": false
    });
    let (s, created) = c.post(0, "/v1/jobs", &body).await.expect("create");
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["schedule"]["at"], rfc3339(at_ms));
    assert_eq!(created["headers"]["content-type"], "application/json");
    assert_eq!(created["state"], "active");
    assert_eq!(created["next_fire_at"], rfc3339(at_ms));
    assert_eq!(created["misfire"]["grace"], "1m");
    assert!(created["created_at"].is_string() && created["updated_at"].is_string());

    // The same definition again (durations spelled differently) is a safe retry.
    let mut same = body.clone();
    same["misfire"]["grace"] = json!("1m");
    let (s, again) = c.post(0, "/v1/jobs", &same).await.expect("retry");
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["version"], 1);
    assert_eq!(again["created_at"], created["created_at"]);

    let mut other = body.clone();
    other["url"] = json!("https://example.com/other");
    let got = c.post(0, "/v1/jobs", &other).await;
    let (s, err) = got.expect("conflict");
    assert_eq!(
        (s, err["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{err}"
    );

    // PUT replaces (200, version 2); the returned job can be sent back as is.
    let (s, replaced) = c
        .send(0, Method::PUT, "/v1/jobs/invoice-42-reminder", Some(&other))
        .await
        .expect("put");
    assert_eq!(s, 200, "{replaced}");
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["url"], "https://example.com/other");
    let (s, echoed) = c
        .send(
            0,
            Method::PUT,
            "/v1/jobs/invoice-42-reminder",
            Some(&replaced),
        )
        .await
        .expect("put back");
    assert_eq!(
        (s, &echoed["version"]),
        (200, &json!(2)),
        "an unchanged PUT is a no-op: {echoed}"
    );
    let (s, _) = c
        .send(
            0,
            Method::PUT,
            "/v1/jobs/new-by-put",
            Some(&job("new-by-put")),
        )
        .await
        .expect("put new");
    assert_eq!(s, 201);
    let got = c
        .send(0, Method::PUT, "/v1/jobs/mismatch", Some(&job("other-id")))
        .await;
    assert_error(
        got,
        422,
        "invalid_field",
        Some("id"),
        "PUT with another id in the body",
    );

    // Pause and resume.
    let (s, paused) = c
        .send(0, Method::POST, "/v1/jobs/invoice-42-reminder/pause", None)
        .await
        .expect("pause");
    assert_eq!(
        (s, &paused["state"], &paused["next_fire_at"]),
        (200, &json!("paused"), &Value::Null)
    );
    let (s, resumed) = c
        .send(0, Method::POST, "/v1/jobs/invoice-42-reminder/resume", None)
        .await
        .expect("resume");
    assert_eq!(
        (s, &resumed["state"], &resumed["version"]),
        (200, &json!("active"), &json!(4))
    );

    // Generated ids are UUIDv7 and unique.
    let mut no_id = job("x");
    no_id.as_object_mut().expect("object").remove("id");
    let (_, a) = c.post(0, "/v1/jobs", &no_id).await.expect("create a");
    let (_, b) = c.post(0, "/v1/jobs", &no_id).await.expect("create b");
    let a = uuid::Uuid::parse_str(a["id"].as_str().expect("id")).expect("uuid");
    let b = uuid::Uuid::parse_str(b["id"].as_str().expect("id")).expect("uuid");
    assert_ne!(a, b);
    assert_eq!(a.get_version_num(), 7);

    // Delete, then 404.
    let (s, _) = c
        .send(0, Method::DELETE, "/v1/jobs/new-by-put", None)
        .await
        .expect("delete");
    assert_eq!(s, 204);
    assert_error(
        c.get(0, "/v1/jobs/new-by-put").await,
        404,
        "not_found",
        None,
        "deleted job",
    );
}

#[tokio::test]
async fn list_pages_through_jobs_in_id_order() {
    let c = single(&[]).await;
    let mut ids: Vec<String> = (0..25).map(|k| format!("job-{k:02}")).collect();
    for id in ids.iter().rev() {
        let (s, _) = c.post(0, "/v1/jobs", &job(id)).await.expect("create");
        assert_eq!(s, 201);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut path = "/v1/jobs?limit=10".to_string();
    loop {
        let (s, page) = c.get(0, &path).await.expect("list");
        assert_eq!(s, 200, "{page}");
        let jobs = page["jobs"].as_array().expect("jobs");
        assert!(jobs.len() <= 10);
        seen.extend(
            jobs.iter()
                .map(|j| j["id"].as_str().expect("id").to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/jobs?limit=10&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn api_token_is_required_on_v1_when_set() {
    let c = TestCluster::start_with(1, &["--api-token", "s3cret"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let authed = |req: reqwest::RequestBuilder| req.bearer_auth("s3cret");
    loop {
        let ready = c
            .http
            .get(c.url(0, "/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if ready.ok() == Some(200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = c
        .http
        .get(c.url(0, "/v1/jobs"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "unauthorized");
    let resp = c
        .http
        .get(c.url(0, "/v1/jobs"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = authed(c.http.post(c.url(0, "/v1/jobs")).json(&job("t")))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 201);
    let resp = c
        .http
        .get(c.url(0, "/healthz"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200, "health checks need no token");
}

/// Ids of every page of `GET /v1/jobs?{query}` at `limit`, following `next`.
async fn all_ids(c: &TestCluster, query: &str, limit: usize) -> Vec<String> {
    let (mut ids, mut after) = (Vec::new(), String::new());
    for _ in 0..100 {
        let path = format!("/v1/jobs?{query}&limit={limit}{after}");
        let (s, v) = c.get(0, &path).await.expect("list");
        assert_eq!(s, 200, "{path}: {v}");
        let page = v["jobs"].as_array().expect("jobs");
        assert!(page.len() <= limit, "{path}");
        ids.extend(
            page.iter()
                .map(|j| j["id"].as_str().unwrap_or_default().to_owned()),
        );
        match v["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return ids,
        }
    }
    panic!("{query}: more than 100 pages");
}

#[tokio::test]
async fn labels_are_stored_and_every_filter_lists_exactly_its_jobs_in_pages() {
    let c = single(&[]).await;
    // 30 jobs: team a/b/c by i mod 3, env=prod every 5th, paused every 4th, at one of two
    // targets by i mod 2; ids job-00..job-29.
    let mut want_all = Vec::new();
    for i in 0..30 {
        let id = format!("job-{i:02}");
        let mut body = job(&id);
        body["url"] = json!(if i % 2 == 0 {
            "http://127.0.0.1:9/x"
        } else {
            "http://Localhost:8081/y"
        });
        let env = if i % 5 == 0 { "prod" } else { "dev" };
        let team = ["a", "b", "c"][i % 3];
        body["labels"] = json!({"team": team, "env": env});
        body["paused"] = json!(i % 4 == 0);
        let (s, v) = c
            .send(0, Method::PUT, &format!("/v1/jobs/{id}"), Some(&body))
            .await
            .expect("put");
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["labels"]["team"], team, "{v}");
        want_all.push((i, id));
    }
    let ids = |f: &dyn Fn(usize) -> bool| -> Vec<String> {
        want_all
            .iter()
            .filter(|(i, _)| f(*i))
            .map(|(_, id)| id.clone())
            .collect()
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("selector=team%3Da", ids(&|i| i % 3 == 0)),
        (
            "selector=team%20in%20(a,b),env%3Dprod",
            ids(&|i| i % 3 != 2 && i % 5 == 0),
        ),
        ("selector=env!%3Ddev", ids(&|i| i % 5 == 0)),
        ("selector=!env", vec![]),
        ("state=paused", ids(&|i| i % 4 == 0)),
        (
            "state=active&selector=team%3Db",
            ids(&|i| i % 4 != 0 && i % 3 == 1),
        ),
        ("target=localhost:8081", ids(&|i| i % 2 == 1)),
        (
            "target=127.0.0.1:9&state=paused",
            ids(&|i| i % 2 == 0 && i % 4 == 0),
        ),
        ("prefix=job-1", ids(&|i| (10..20).contains(&i))),
        (
            "prefix=job-2&selector=team%3Dc",
            ids(&|i| i >= 20 && i % 3 == 2),
        ),
    ];
    for (query, want) in &cases {
        for limit in [100, 4, 1] {
            assert_eq!(
                &all_ids(&c, query, limit).await,
                want,
                "{query} limit {limit}"
            );
        }
    }
    // A change moves the job between filters; a delete takes it out of all of them.
    let mut body = job("job-00");
    body["labels"] = json!({"team": "z"});
    let (s, v) = c
        .send(0, Method::PUT, "/v1/jobs/job-00", Some(&body))
        .await
        .expect("put");
    assert_eq!(s, 200, "{v}");
    assert_eq!(all_ids(&c, "selector=team%3Dz", 10).await, ["job-00"]);
    assert!(!all_ids(&c, "selector=team%3Da", 10)
        .await
        .contains(&"job-00".to_owned()));
    assert!(!all_ids(&c, "state=paused", 10)
        .await
        .contains(&"job-00".to_owned()));
    let (s, _) = c
        .post(0, "/v1/jobs/job-00/pause", &json!({}))
        .await
        .expect("pause");
    assert_eq!(s, 200);
    assert!(all_ids(&c, "state=paused", 10)
        .await
        .contains(&"job-00".to_owned()));
    let (s, _) = c
        .send(0, Method::DELETE, "/v1/jobs/job-00", None)
        .await
        .expect("delete");
    assert_eq!(s, 204);
    assert!(all_ids(&c, "selector=team%3Dz", 10).await.is_empty());

    // Bad filters and labels: 422 naming the field.
    for (query, field) in [
        ("selector=team%3D%3D%3D", "selector"),
        ("selector=Team", "selector"),
        ("selector=a%20in%20b", "selector"),
        ("state=running", "state"),
        ("target=nohost", "target"),
        ("prefix=%20x", "prefix"),
    ] {
        let got = c.get(0, &format!("/v1/jobs?{query}")).await;
        assert_error(got, 422, "invalid_field", Some(field), query);
    }
    for labels in [
        json!({"Team": "a"}),
        json!({"team": "a\u{1}"}),
        json!({"t": "v".repeat(257)}),
        json!((0..33)
            .map(|i| (format!("k{i}"), json!("")))
            .collect::<serde_json::Map<_, _>>()),
    ] {
        let mut body = job("bad-labels");
        body["labels"] = labels.clone();
        let got = c.post(0, "/v1/jobs", &body).await;
        assert_error(
            got,
            422,
            "invalid_field",
            Some("labels"),
            &labels.to_string(),
        );
    }
}

#[tokio::test]
async fn runs_are_filtered_by_job_labels_target_job_and_time_and_paged_with_next() {
    let c = single(&[]).await;
    three_failing_runs_each(&c, &[("fail-x", "x"), ("fail-y", "y")]).await;
    let failed = |v: &Value| -> Vec<(String, String)> {
        v["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| {
                (
                    r["job_id"].as_str().unwrap().to_owned(),
                    r["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let all = crate::harness::eventually(Duration::from_secs(20), "six failed runs", || async {
        let (_, v) = c.get(0, "/v1/runs?status=failed").await?;
        let runs = failed(&v);
        (runs.len() == 6).then_some(runs)
    })
    .await;
    let of = |job: &str| -> Vec<(String, String)> {
        all.iter().filter(|(j, _)| j == job).cloned().collect()
    };
    let get = |path: String| {
        let c = &c;
        async move {
            let (s, v) = c.get(0, &path).await.expect("runs");
            assert_eq!(s, 200, "{path}: {v}");
            v
        }
    };
    assert_eq!(
        failed(&get("/v1/runs?job_selector=team%3Dx".into()).await),
        of("fail-x")
    );
    assert_eq!(
        failed(&get("/v1/runs?job_selector=team%20in%20(y)&target=127.0.0.1:9".into()).await),
        of("fail-y")
    );
    assert_eq!(
        failed(&get("/v1/runs?job_id=fail-y".into()).await),
        of("fail-y")
    );
    assert!(failed(&get("/v1/runs?target=example.com:443".into()).await).is_empty());
    let later = rfc3339(now_ms() + 3_600_000);
    assert!(failed(&get(format!("/v1/runs?since={later}")).await).is_empty());
    assert_eq!(failed(&get(format!("/v1/runs?until={later}")).await), all);
    // One run per page: every run once, newest first, then `next` is null.
    let (mut paged, mut after) = (Vec::new(), String::new());
    for _ in 0..10 {
        let v = get(format!("/v1/runs?limit=1{after}")).await;
        paged.extend(failed(&v));
        match v["next"].as_str() {
            Some(n) => after = format!("&after={}", n.replace(':', "%3A")),
            None => break,
        }
    }
    assert_eq!(paged, all);
    for (query, field) in [
        ("after=nonsense", "after"),
        ("job_selector=Team", "job_selector"),
        ("since=yesterday", "since"),
        ("job_id=%20", "job_id"),
    ] {
        let got = c.get(0, &format!("/v1/runs?{query}")).await;
        assert_error(got, 422, "invalid_field", Some(field), query);
    }
}

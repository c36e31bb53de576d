//! The console (SPEC §9) in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, through fantoccini) against a live three-node cluster run with tokens and
//! holding real jobs. Every view is opened and photographed (PNG files under
//! `target/ui-screenshots/<timestamp>/`, the path is printed); what a person does is done
//! through the page: log in, filter by label, bulk-pause the filtered jobs, trigger a job and
//! see its run, pause and resume it, retry a failed run, create a notification and see the
//! API's error next to its field. A read token finds no action button; the header is reached
//! by keyboard; the views fit 360 px; once the node serving the page stops, the page says so.
//! All along: no error in the browser's console and no request leaving the page's origin.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/check.sh` installs them).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::cluster::ELECTION_WITHIN;
use crate::harness::{create, eventually, runs, TestCluster};
use crate::sink::{Reply, Sink};

const API_TOKEN: &str = "ui-api-token-1";
const READ_TOKEN: &str = "ui-read-token-2";
/// For what the page does at once or by its next refresh (every 2 s).
const WITHIN: Duration = Duration::from_secs(10);
/// The whole scenario; a WebDriver command that hangs fails the test instead of holding CI.
const SCENARIO_WITHIN: Duration = Duration::from_secs(240);
const INSTALL: &str = "the console test drives Chromium through chromedriver: install Debian's \
     packages with `apt-get install chromium chromium-driver` (scripts/check.sh does so when \
     either is missing)";
/// The overview drawn: three members, and the plots or why there are none (a node without
/// `/v1/stats`).
const OVERVIEW: &str =
    "document.querySelectorAll('main section:first-of-type tbody tr').length === 3 \
     && (document.querySelectorAll('main svg.plot').length === 3 \
       || document.querySelector('main .plots p.muted')?.textContent.startsWith('No figures'))";
/// What a read token must not be offered, on any view.
const ACTIONS: &[&str] = &[
    "Trigger now",
    "Pause",
    "Resume",
    "Edit",
    "Delete",
    "Retry",
    "Retry all matching…",
    "Apply to all matching…",
    "Set a policy…",
    "Edit policy",
    "Remove policy",
    "New notification…",
];

#[tokio::test]
async fn the_console_works_in_a_real_browser() {
    let started = Instant::now();
    let out = screenshots_dir();
    say(&format!("console test: screenshots in {}", out.display()));
    let driver = Driver::start(&out.join("chromedriver.log")).await;
    let sink = Sink::start().await;
    for id in ["b-fail-1", "b-fail-2"] {
        sink.reply(
            id,
            Reply {
                status: 500,
                retry_after: None,
            },
        );
    }
    let mut c = TestCluster::start_with(3, &["--api-token", API_TOKEN, "--read-token", READ_TOKEN]);
    c.authorize(API_TOKEN);
    let leader = c.wait_leader(&[0, 1, 2], ELECTION_WITHIN).await;
    // The page comes from a follower: stopping it at the end leaves the dispatching leader be.
    let page = (leader + 1) % 3;
    let mut browser = Browser::start(&driver, format!("http://{}", c.nodes[page].api), out).await;
    // The overview asks for `/v1/stats` (SPEC §2); a node that does not serve it yet answers
    // 404, which the browser logs as an error. Let those through only while the node's own
    // description lacks the route, so the check tightens by itself once it is there.
    let (s, doc) = c.get(0, "/openapi.json").await.expect("openapi.json");
    assert_eq!(s, 200, "{doc}");
    browser.without_stats = doc["paths"].get("/v1/stats").is_none();
    if browser.without_stats {
        say("console test: the node has no /v1/stats; the overview's 404s for it are let through");
    }
    // A target that accepts connections and never answers: it always has an attempt in flight,
    // so the targets view has a row to show (an idle target is not listed).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a silent target");
    let hang = silent.local_addr().expect("its address").to_string();
    let scenario = scenario(&mut c, page, &sink, &hang, browser);
    match tokio::time::timeout(SCENARIO_WITHIN, scenario).await {
        Ok(browser) => {
            let _ = browser.client.close().await;
        }
        Err(_) => panic!("the console scenario took over {SCENARIO_WITHIN:?}"),
    }
    drop(silent);
    say(&format!(
        "console test: done in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}

async fn scenario(
    c: &mut TestCluster,
    page: usize,
    sink: &Sink,
    hang: &str,
    mut b: Browser,
) -> Browser {
    // Real jobs: two teams, two of them ticking every second, two failing at their only attempt.
    let every = |id: &str, team: &str, period: &str| {
        json!({"id": id, "url": sink.url(&format!("/{id}")), "labels": {"team": team},
               "schedule": {"every": period}})
    };
    for body in [
        every("a-tick", "a", "1s"),
        every("a-hourly", "a", "1h"),
        every("b-tick", "b", "1s"),
        every("b-hourly", "b", "1h"),
    ] {
        create(c, 0, body).await;
    }
    for id in ["b-fail-1", "b-fail-2"] {
        create(
            c,
            0,
            json!({"id": id, "url": sink.url(&format!("/{id}")), "labels": {"team": "b"},
                   "schedule": {"after": "0s"}, "retry": {"max_attempts": 1}}),
        )
        .await;
    }
    // At most one run open (overlap skip), each held for the longest timeout.
    create(
        c,
        0,
        json!({"id": "b-hang", "url": format!("http://{hang}/"), "labels": {"team": "b"},
               "schedule": {"every": "1s"}, "overlap": "skip", "timeout": "60s",
               "retry": {"max_attempts": 1}}),
    )
    .await;
    let failed = eventually(WITHIN, "a failed run of each failing job", || async {
        let mut ids = Vec::new();
        for job in ["b-fail-1", "b-fail-2"] {
            let run = runs(c, 0, job).await.into_iter().next()?;
            (run["status"] == "failed").then_some(())?;
            ids.push(run["id"].as_str()?.to_owned());
        }
        Some(ids)
    })
    .await;

    // The login form, then the api token.
    b.open("/").await;
    b.until(
        "the login form",
        "return !!document.querySelector('form[aria-label=\"log in\"] input[name=token]');",
    )
    .await;
    b.shot("login").await;
    b.log_in(API_TOKEN).await;

    // Overview: members, plots.
    b.until(
        "the overview's members and plots",
        &format!("return {OVERVIEW};"),
    )
    .await;
    b.shot("overview").await;

    // Jobs: every job, then the label filter through its form.
    b.open("/jobs").await;
    b.until(
        "every job listed",
        "return document.querySelectorAll('main table tbody tr').length === 7;",
    )
    .await;
    b.shot("jobs").await;
    b.type_into("form.filters input[name=selector]", "team=a")
        .await;
    b.click("//form[@aria-label='filters']//button[normalize-space()='Filter']")
        .await;
    let listed = b
        .until(
            "the jobs of team a",
            // The hash changes at once, the rows once the filtered list came back.
            "if (location.hash !== '#/jobs?selector=team%3Da') return null; \
             const ids = [...document.querySelectorAll('main table tbody tr')] \
               .map((tr) => tr.cells[0].textContent); \
             return ids.length && ids.length !== 7 ? ids : null;",
        )
        .await;
    assert_eq!(
        listed,
        json!(["a-hourly", "a-tick"]),
        "the filter team=a lists exactly team a's jobs"
    );

    // Bulk pause of the filtered jobs: the confirmation counts them.
    b.client
        .find(Locator::Css("#bulk-action"))
        .await
        .expect("the bulk action choice")
        .select_by_value("pause")
        .await
        .expect("choose pause");
    b.click("//main//button[normalize-space()='Apply to all matching…']")
        .await;
    let confirm = b
        .until(
            "the bulk confirmation",
            "const c = document.querySelector('main .confirm'); \
             const yes = c && c.querySelector('button.danger'); \
             return yes ? [c.querySelector('p').textContent, yes.textContent] : null;",
        )
        .await;
    assert_eq!(
        confirm,
        json!(["Pause 2 jobs matching this filter?", "Pause 2"]),
        "the confirmation names the action and the count"
    );
    b.shot("jobs-bulk-confirm").await;
    b.click("//main//div[contains(@class,'confirm')]//button[normalize-space()='Pause 2']")
        .await;
    let outcome = b
        .until(
            "the bulk outcome",
            "const ok = document.querySelector('main .confirm .ok'); return ok && ok.textContent;",
        )
        .await;
    assert_eq!(outcome, "Pause: 2 of 2 changed.", "the bulk outcome");
    assert_eq!(
        job_ids(c, "state=paused").await,
        ["a-hourly", "a-tick"],
        "exactly the filtered jobs are paused"
    );
    b.until(
        "the filtered list showing them paused",
        "const s = [...document.querySelectorAll('main table tbody tr .badge')].map((e) => e.textContent); \
         return s.length === 2 && s.every((x) => x === 'paused');",
    )
    .await;
    b.shot("jobs-filtered-paused").await;

    // One job: trigger, its run appears; pause and resume through the buttons.
    b.open("/jobs/b-hourly").await;
    b.until(
        "job b-hourly, active, with no run",
        "return document.querySelector('main h1 .badge')?.textContent === 'active' \
           && document.querySelector('main section:last-child p.muted')?.textContent === 'No run yet.';",
    )
    .await;
    b.click("//main//button[normalize-space()='Trigger now']")
        .await;
    let run = eventually(WITHIN, "the triggered run in the API", || async {
        let r = runs(c, 0, "b-hourly").await;
        r.first().and_then(|r| r["id"].as_str()).map(str::to_owned)
    })
    .await;
    b.until_with(
        "the triggered run in the job's runs",
        "return [...document.querySelectorAll('main ul.runs code')].some((e) => e.textContent === arguments[0]);",
        vec![json!(run)],
    )
    .await;
    b.shot("job").await;
    b.click("//main//button[normalize-space()='Pause']").await;
    b.until(
        "the job shown paused, with Resume and no next fire",
        "return document.querySelector('main h1 .badge')?.textContent === 'paused' \
           && [...document.querySelectorAll('main button')].some((e) => e.textContent === 'Resume') \
           && document.querySelector('main section:nth-of-type(2) p')?.textContent === 'Paused: no fire until resumed.';",
    )
    .await;
    assert_eq!(
        job_state(c, "b-hourly").await,
        "paused",
        "paused through the page"
    );
    b.click("//main//button[normalize-space()='Resume']").await;
    b.until(
        "the job shown active, with Pause and its next fires",
        "return document.querySelector('main h1 .badge')?.textContent === 'active' \
           && [...document.querySelectorAll('main button')].some((e) => e.textContent === 'Pause') \
           && document.querySelectorAll('main section:nth-of-type(2) ol.fires li').length === 10;",
    )
    .await;
    assert_eq!(
        job_state(c, "b-hourly").await,
        "active",
        "resumed through the page"
    );

    // Runs (failed, the default): retry one; the target now answers 200.
    b.open("/runs").await;
    b.until_with(
        "both failed runs listed",
        "const ids = [...document.querySelectorAll('main table tbody tr code')].map((e) => e.textContent); \
         return arguments[0].every((id) => ids.includes(id));",
        vec![json!(failed)],
    )
    .await;
    b.shot("runs").await;
    sink.reply(
        "b-fail-1",
        Reply {
            status: 200,
            retry_after: None,
        },
    );
    b.click("//main//tr[.//a[@href='#/jobs/b-fail-1']]//button[normalize-space()='Retry']")
        .await;
    eventually(WITHIN, "the retried run delivered again", || async {
        let r = runs(c, 0, "b-fail-1").await;
        let run = r.iter().find(|r| r["id"] == failed[0].as_str())?;
        (run["status"] == "succeeded" && run["attempts"].as_array()?.len() == 2).then_some(())
    })
    .await;
    b.until_with(
        "the retried run gone from the failed runs, the other still there",
        "const ids = [...document.querySelectorAll('main table tbody tr code')].map((e) => e.textContent); \
         return !ids.includes(arguments[0]) && ids.includes(arguments[1]);",
        vec![json!(failed[0]), json!(failed[1])],
    )
    .await;

    // Targets: the silent one listed with its attempt in flight; its policy edited.
    b.open("/targets").await;
    b.until_with(
        "the silent target listed, every count shown (0 too)",
        "const rows = [...document.querySelectorAll('main table tbody tr')]; \
         return rows.some((tr) => tr.cells[0].textContent === arguments[0] && tr.cells[1].textContent === '1') \
           && rows.every((tr) => /^[0-9]+$/.test(tr.cells[1].textContent) && /^[0-9]+$/.test(tr.cells[2].textContent));",
        vec![json!(hang)],
    )
    .await;
    b.click(&format!(
        "//main//tr[td[1][normalize-space()='{hang}']]//button[normalize-space()='Edit policy']"
    ))
    .await;
    b.type_into(
        "form[aria-label='target policy'] input[name=max_concurrency]",
        "4",
    )
    .await;
    b.click("//form[@aria-label='target policy']//button[@type='submit']")
        .await;
    b.until_with(
        "the policy saved and listed",
        "return document.querySelector('main p.ok')?.textContent === `Saved the policy of ${arguments[0]}.` \
           && [...document.querySelectorAll('main table tbody tr')] \
             .some((tr) => tr.cells[0].textContent === arguments[0] && tr.cells[4].textContent === '4 in flight');",
        vec![json!(hang)],
    )
    .await;
    let (s, v) = c.get(0, "/v1/targets?limit=1000").await.expect("targets");
    assert!(
        s == 200
            && v["targets"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|t| t["target"] == hang && t["policy"]["max_concurrency"] == 4)
            }),
        "the policy set through the page is the API's: {v}"
    );
    b.shot("targets").await;

    // Notifications: the API's error shows next to the field it names, then a good one.
    b.open("/notifications").await;
    b.until(
        "the notifications view, with none yet",
        "return [...document.querySelectorAll('main p.muted')].some((p) => p.textContent === 'No notification yet.');",
    )
    .await;
    b.click("//main//button[normalize-space()='New notification…']")
        .await;
    b.until(
        "the notification form",
        "return !!document.querySelector('form[aria-label=notification]');",
    )
    .await;
    b.type_into("form[aria-label=notification] input[name=id]", "ops")
        .await;
    b.type_into("form[aria-label=notification] input[name=url]", "ftp://x")
        .await;
    b.click("//form[@aria-label='notification']//input[@value='run.failed']")
        .await;
    // The browser logs the refused request (422) as an error: drain the log before and take
    // exactly that entry after, so any other error still fails the test.
    b.assert_console_clean("before the invalid notification")
        .await;
    b.click("//form[@aria-label='notification']//button[@type='submit']")
        .await;
    let error = b
        .until(
            "the API's error next to the url field",
            "const e = document.querySelector('form[aria-label=notification] [data-field=url] .error'); \
             return e && !e.hidden && e.textContent \
               ? [e.textContent, document.activeElement.name] : null;",
        )
        .await;
    assert_eq!(error[1], "url", "the field in error has the focus: {error}");
    assert!(
        error[0]
            .as_str()
            .is_some_and(|m| m.contains("ftp") && !m.ends_with("(url)")),
        "the API's message, without the field's name next to that field: {error}"
    );
    b.shot("notification-error").await;
    let logged = b.console().await;
    let severe: Vec<&Value> = logged.iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(
        severe.len() == 1
            && severe[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("/v1/notifications/ops") && m.contains("422")),
        "the invalid notification logs exactly its refused request: {logged:#?}"
    );
    b.type_into(
        "form[aria-label=notification] input[name=url]",
        "http://127.0.0.1:9/ops",
    )
    .await;
    b.click("//form[@aria-label='notification']//button[@type='submit']")
        .await;
    b.until(
        "the notification created and listed",
        "return document.querySelector('main p.ok')?.textContent === 'Created ops.' \
           && [...document.querySelectorAll('main table tbody tr')].some((tr) => tr.cells[0].textContent === 'ops');",
    )
    .await;
    b.shot("notifications").await;

    // Cluster.
    b.open("/cluster").await;
    b.until(
        "the cluster's members",
        "return document.querySelector('main h1')?.textContent === 'Cluster' \
           && document.querySelectorAll('main table tbody tr').length === 3;",
    )
    .await;
    b.shot("cluster").await;

    // Keyboard: from the top of a freshly loaded page, Tab reaches the header's links in order,
    // and Enter follows one.
    b.client.refresh().await.expect("reload");
    b.until(
        "the cluster view after a reload",
        "return document.querySelectorAll('main table tbody tr').length === 3;",
    )
    .await;
    let mut order = Vec::new();
    for _ in 0..9 {
        b.press(&[Key::Tab]).await;
        order.push(
            b.js("return document.activeElement.textContent.trim();")
                .await,
        );
    }
    assert_eq!(
        order,
        [
            "Skip to content",
            "hookd",
            "Overview",
            "Jobs",
            "Runs",
            "Targets",
            "Notifications",
            "Cluster",
            "Log out"
        ],
        "Tab walks the header"
    );
    for _ in 0..5 {
        b.press(&[Key::Shift, Key::Tab]).await;
    }
    let focused = b
        .js("return document.activeElement.textContent.trim();")
        .await;
    assert_eq!(focused, "Jobs", "Shift+Tab walks the header back");
    b.press(&[Key::Enter]).await;
    b.until(
        "Enter on a focused link opens its view",
        "return location.hash === '#/jobs' && document.querySelector('main h1')?.textContent === 'Jobs';",
    )
    .await;
    b.assert_console_clean("with the api token").await;

    // 360 px wide: nothing wider than the screen, on every view.
    b.narrow(360).await;
    for (view, drawn) in [
        ("/", OVERVIEW),
        (
            "/jobs",
            "document.querySelectorAll('main table tbody tr').length === 7",
        ),
        ("/jobs/b-hourly", "!!document.querySelector('main ul.runs')"),
        (
            "/runs",
            "document.querySelectorAll('main table tbody tr').length >= 1",
        ),
        (
            "/targets",
            "document.querySelectorAll('main table tbody tr').length >= 1",
        ),
        (
            "/notifications",
            "document.querySelectorAll('main table tbody tr').length === 1",
        ),
        (
            "/cluster",
            "document.querySelectorAll('main table tbody tr').length === 3",
        ),
    ] {
        b.open(view).await;
        b.until(&format!("{view} at 360 px"), &format!("return {drawn};"))
            .await;
        let width = b
            .js("return [document.documentElement.scrollWidth, window.innerWidth];")
            .await;
        assert!(
            width[0].as_u64() <= width[1].as_u64(),
            "{view} is wider than the 360 px screen: [page, screen] = {width}"
        );
        if view == "/" || view == "/jobs" {
            b.shot(&format!(
                "{}-360px",
                if view == "/" { "overview" } else { "jobs" }
            ))
            .await;
        }
    }
    b.wide().await;

    // A read token: everything readable, no action offered.
    b.open("/").await;
    b.click("//header//button[normalize-space()='Log out']")
        .await;
    b.until(
        "the login form after logging out",
        "return location.hash === '#/login' && !!document.querySelector('form[aria-label=\"log in\"]');",
    )
    .await;
    b.log_in(READ_TOKEN).await;
    b.until(
        "the read-only mark",
        "return document.getElementById('who').textContent.includes('read only');",
    )
    .await;
    // Each view drawn with what the api token was offered actions on (arguments: the failed run
    // left, the silent target).
    let rows = "[...document.querySelectorAll('main table tbody tr')]";
    for (view, drawn) in [
        (
            "/jobs?selector=team%3Da",
            format!("{rows}.length === 2"),
        ),
        (
            "/jobs/b-hourly",
            "!!document.querySelector('main ul.runs') && !!document.querySelector('main h1 .badge')"
                .to_owned(),
        ),
        (
            "/runs",
            format!("{rows}.some((tr) => tr.cells[0].textContent === arguments[0])"),
        ),
        (
            "/targets",
            format!("{rows}.some((tr) => tr.cells[0].textContent === arguments[1])"),
        ),
        (
            "/notifications",
            format!("{rows}.some((tr) => tr.cells[0].textContent === 'ops')"),
        ),
    ] {
        b.open(view).await;
        b.until_with(
            &format!("{view} with the read token"),
            &format!("return {drawn};"),
            vec![json!(failed[1]), json!(hang)],
        )
        .await;
        let offered = b
            .js("return [...document.querySelectorAll('main button, main a, main select')] \
                   .map((e) => e.id === 'bulk-action' ? 'Bulk action' : e.textContent.trim());")
            .await;
        let offered: Vec<&str> = offered
            .as_array()
            .expect("labels")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let bad: Vec<&&str> = offered
            .iter()
            .filter(|l| ACTIONS.contains(l) || **l == "Bulk action")
            .collect();
        assert!(
            bad.is_empty(),
            "{view} offers {bad:?} to a read token (all: {offered:?})"
        );
        if view == "/jobs/b-hourly" {
            b.shot("job-read-only").await;
        }
    }
    b.assert_console_clean("with the read token").await;
    assert!(
        b.requests > 20,
        "the origin check saw {} requests only",
        b.requests
    );

    // The node serving the page stops: the page says so within a few seconds.
    c.terminate(page);
    let banner = b
        .until(
            "the banner saying the node is not answering",
            "const b = document.getElementById('banner'); \
             return !b.hidden && document.querySelector('main.stale') && b.textContent;",
        )
        .await;
    let host = b.origin.trim_start_matches("http://").to_owned();
    assert!(
        banner
            .as_str()
            .is_some_and(|t| t.contains(&format!("{host} is not answering"))),
        "the banner: {banner}"
    );
    b.shot("node-down").await;
    // Now requests fail: that and only that may be logged.
    let after = b.console().await;
    let other: Vec<&Value> = after
        .iter()
        .filter(|e| {
            e["level"] == "SEVERE"
                && !e["message"].as_str().is_some_and(|m| {
                    m.starts_with(&format!("{}/v1/", b.origin))
                        && (m.contains("ERR_CONNECTION_REFUSED")
                            || m.contains("Failed to load resource"))
                })
        })
        .collect();
    assert!(
        other.is_empty(),
        "errors besides failed requests once the node stopped: {other:#?}"
    );
    b
}

/// Writes `line` to the test's stderr even when the harness captures output (as CI's log shows).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `target/ui-screenshots/<UTC timestamp>/`, created.
fn screenshots_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .to_path_buf();
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let dir = target.join("ui-screenshots").join(stamp.to_string());
    std::fs::create_dir_all(&dir).expect("create the screenshots dir");
    dir
}

/// Sorted ids of the jobs `filter` (a query string) lists.
async fn job_ids(c: &TestCluster, filter: &str) -> Vec<String> {
    let (s, v) = c
        .get(0, &format!("/v1/jobs?limit=100&{filter}"))
        .await
        .expect("list jobs");
    assert_eq!(s, 200, "{v}");
    let mut ids: Vec<String> = v["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

async fn job_state(c: &TestCluster, id: &str) -> String {
    let (s, v) = c.get(0, &format!("/v1/jobs/{id}")).await.expect("get job");
    assert_eq!(s, 200, "{v}");
    v["state"].as_str().expect("state").to_owned()
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// chromedriver on a loopback port it picked itself, in a process group of its own that the
/// Chromium it starts joins (`hookd_jepsen::webdriver::Driver`: dropping it, on a panic too,
/// kills them all), and the profile the browser uses.
struct Driver {
    /// Held for its `Drop`.
    _process: hookd_jepsen::webdriver::Driver,
    /// chromedriver's address, ending in `/`.
    url: String,
    chromium: PathBuf,
    /// Chromium's profile, removed after the processes are gone.
    profile: TempDir,
}

impl Driver {
    async fn start(log: &Path) -> Driver {
        let (Some(_), Some(chromium)) = (on_path("chromedriver"), on_path("chromium")) else {
            panic!("chromium or chromedriver is not on PATH: {INSTALL}");
        };
        let inner = tokio::time::timeout(WITHIN, hookd_jepsen::webdriver::Driver::start(log))
            .await
            .unwrap_or_else(|_| panic!("chromedriver did not start within {WITHIN:?}"))
            .unwrap_or_else(|e| panic!("{e:#}; {INSTALL}"));
        Driver {
            url: format!("{}/", inner.url()),
            _process: inner,
            chromium,
            profile: tempfile::tempdir().expect("profile dir"),
        }
    }
}

/// The browser's console messages since the last call (chromedriver's log endpoint).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// A WebDriver session on one node's console.
struct Browser {
    client: Client,
    /// `http://127.0.0.1:PORT`, the node serving the page.
    origin: String,
    out: PathBuf,
    shots: usize,
    /// Requests the origin check has seen.
    requests: usize,
    /// The node does not serve `/v1/stats`: the browser's errors for its 404s are expected.
    without_stats: bool,
}

impl Browser {
    async fn start(driver: &Driver, origin: String, out: PathBuf) -> Browser {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": driver.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", driver.profile.path().display()),
                    "--no-first-run", "--no-default-browser-check", "--disable-default-apps",
                    "--disable-extensions", "--disable-sync", "--disable-background-networking",
                    "--disable-component-update", "--disable-domain-reliability",
                    "--disable-client-side-phishing-detection", "--disable-breakpad",
                    // Anything but loopback goes to a port where nothing listens: the browser
                    // itself reaches nothing outside this machine either.
                    "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"pageLoad": 10_000, "script": 10_000, "implicit": 0},
        });
        let caps = caps.as_object().expect("capabilities").clone();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            WITHIN,
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&driver.url),
        )
        .await
        .unwrap_or_else(|_| panic!("no WebDriver session within {WITHIN:?}"))
        .unwrap_or_else(|e| panic!("WebDriver session: {e}"));
        Browser {
            client,
            origin,
            out,
            shots: 0,
            requests: 0,
            without_stats: false,
        }
    }

    /// Goes to the console's `fragment` (`/jobs?selector=…`).
    async fn open(&self, fragment: &str) {
        let url = format!("{}/ui#{fragment}", self.origin);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    async fn js(&self, script: &str) -> Value {
        self.js_with(script, vec![]).await
    }

    async fn js_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Runs `script` every 50 ms until it returns something other than null or false, and
    /// returns that; after WITHIN, fails with what the page shows (and a screenshot).
    async fn until(&mut self, what: &str, script: &str) -> Value {
        self.until_with(what, script, vec![]).await
    }

    async fn until_with(&mut self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + WITHIN;
        loop {
            let last = match self.client.execute(script, args.clone()).await {
                Ok(Value::Null | Value::Bool(false)) => String::from("nothing yet"),
                Ok(v) => return v,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                self.fail(&format!("{what} (last: {last})")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics with the page's state, after saving a screenshot of it.
    async fn fail(&mut self, what: &str) -> ! {
        let page = self
            .client
            .execute(
                "return [location.hash, document.querySelector('main')?.innerText];",
                vec![],
            )
            .await;
        self.save("failure").await;
        let console = self.console().await;
        panic!(
            "timed out after {WITHIN:?} waiting for {what}; page: {page:?}; console: {console:#?}; \
             screenshots in {}",
            self.out.display()
        )
    }

    /// Clicks the element at `xpath`, as soon as it is there (the views redraw every 2 s, so a
    /// found element may be replaced before the click lands: then it is found again).
    async fn click(&mut self, xpath: &str) {
        let deadline = Instant::now() + WITHIN;
        loop {
            let err = match self.client.find(Locator::XPath(xpath)).await {
                Ok(e) => match e.click().await {
                    Ok(()) => return,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                self.fail(&format!("a click on {xpath} (last: {err})"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the text of the input at `css`.
    async fn type_into(&mut self, css: &str, text: &str) {
        let input = match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => self.fail(&format!("{css}: {e}")).await,
        };
        input.clear().await.expect("clear");
        input.send_keys(text).await.expect("type");
    }

    /// Presses `keys` together (down in order, up in reverse).
    async fn press(&self, keys: &[Key]) {
        let keys: Vec<char> = keys.iter().map(|k| char::from(*k)).collect();
        let mut actions = KeyActions::new("keyboard".into());
        for k in &keys {
            actions = actions.then(KeyAction::Down { value: *k });
        }
        for k in keys.iter().rev() {
            actions = actions.then(KeyAction::Up { value: *k });
        }
        self.client
            .perform_actions(actions)
            .await
            .expect("press keys");
    }

    /// Logs in through the form with `token`, landing on the overview.
    async fn log_in(&mut self, token: &str) {
        self.type_into("form[aria-label=\"log in\"] input[name=token]", token)
            .await;
        self.click("//form[@aria-label='log in']//button[@type='submit']")
            .await;
        self.until(
            "the overview after logging in",
            "return location.hash === '#/' && document.querySelector('main h1')?.textContent === 'Overview' \
               && [...document.querySelectorAll('#who button')].some((e) => e.textContent === 'Log out');",
        )
        .await;
    }

    /// Sets the viewport `width` px wide.
    async fn narrow(&mut self, width: u64) {
        for _ in 0..3 {
            let sizes = self
                .js("return [window.outerWidth, window.innerWidth];")
                .await;
            let (outer, inner) = (
                sizes[0].as_u64().unwrap_or(0),
                sizes[1].as_u64().unwrap_or(0),
            );
            if inner == width {
                return;
            }
            let want = (outer + width).saturating_sub(inner).max(width) as u32;
            self.client
                .set_window_size(want, 900)
                .await
                .expect("resize");
        }
        let inner = self.js("return window.innerWidth;").await;
        panic!("the viewport is {inner} px wide, not {width}");
    }

    async fn wide(&self) {
        self.client
            .set_window_size(1280, 1000)
            .await
            .expect("resize");
    }

    /// Checks that every request of the page so far went to its origin, then saves a screenshot.
    async fn shot(&mut self, name: &str) {
        self.assert_same_origin().await;
        self.save(name).await;
    }

    async fn save(&mut self, name: &str) {
        self.shots += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let file = self.out.join(format!("{:02}-{name}.png", self.shots));
        std::fs::write(&file, png).expect("write the screenshot");
    }

    /// Every request the page made since the last check (the document and every resource and
    /// fetch, from the Resource Timing entries) went to the page's origin.
    async fn assert_same_origin(&mut self) {
        let names = self
            .js("performance.setResourceTimingBufferSize(100000); \
                 const names = [...performance.getEntriesByType('navigation'), \
                   ...performance.getEntriesByType('resource')].map((e) => e.name); \
                 performance.clearResourceTimings(); \
                 return names;")
            .await;
        let prefix = format!("{}/", self.origin);
        for name in names.as_array().expect("names") {
            let name = name.as_str().unwrap_or("");
            assert!(
                name.starts_with(&prefix),
                "the page requested {name}, outside its origin {}",
                self.origin
            );
            self.requests += 1;
        }
    }

    /// The browser's console messages since the last call (less the expected `/v1/stats`
    /// 404s, see `without_stats`).
    async fn console(&self) -> Vec<Value> {
        let mut entries = match self.client.issue_cmd(BrowserLog).await {
            Ok(Value::Array(entries)) => entries,
            other => panic!("the browser's log: {other:?}"),
        };
        let stats = format!("{}/v1/stats?", self.origin);
        entries.retain(|e| {
            let m = e["message"].as_str().unwrap_or("");
            !(self.without_stats && m.starts_with(&stats) && m.contains("status of 404"))
        });
        entries
    }

    /// No error in the console since the last look (warnings are printed, not failed).
    async fn assert_console_clean(&mut self, when: &str) {
        self.assert_same_origin().await;
        let entries = self.console().await;
        for e in entries.iter().filter(|e| e["level"] == "WARNING") {
            say(&format!("console warning {when}: {}", e["message"]));
        }
        let errors: Vec<&Value> = entries.iter().filter(|e| e["level"] == "SEVERE").collect();
        assert!(errors.is_empty(), "console errors {when}: {errors:#?}");
    }
}

//! A minimal WebDriver client for the benchmarks: headless Chromium through Debian's
//! `chromedriver`, spoken to as plain JSON over HTTP (the W3C protocol: new session, navigate,
//! execute a script, delete the session). Each session gets a fresh profile, so every page
//! load starts with a cold cache.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// How long chromedriver may take to say which port it listens on, and a command to answer.
const WITHIN: Duration = Duration::from_secs(30);

/// chromedriver on a loopback port it picked (`--port=0`), in a process group of its own that
/// the browsers it starts join; dropping it kills them all.
pub struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Driver {
    /// Starts `chromedriver` (from PATH), logging to `log`.
    pub async fn start(log: &Path) -> anyhow::Result<Driver> {
        let file = std::fs::File::create(log).context("chromedriver's log")?;
        let child = Command::new("chromedriver")
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .context("start chromedriver (Debian packages chromium and chromium-driver)")?;
        let mut driver = Driver {
            child,
            url: String::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(WITHIN)
                .build()?,
        };
        let deadline = Instant::now() + WITHIN;
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let port = text.lines().find_map(|l| {
                l.split_once("started successfully on port ")
                    .map(|(_, p)| p.trim_end_matches('.').to_owned())
            });
            if let Some(port) = port {
                driver.url = format!("http://127.0.0.1:{port}");
                return Ok(driver);
            }
            if let Ok(Some(status)) = driver.child.try_wait() {
                bail!("chromedriver exited ({status}): {text}");
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not tell its port within {WITHIN:?}: {text}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where chromedriver listens: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new headless browser `width` × `height`, with a fresh profile (cold cache) and nothing
    /// reachable off loopback.
    pub async fn session(&self, width: u32, height: u32) -> anyhow::Result<Session> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                format!("--window-size={width},{height}"),
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
            ]},
            "timeouts": {"pageLoad": 30_000, "script": 30_000},
        }}});
        let answer = self.call("POST", "/session", Some(caps)).await?;
        let id = answer["sessionId"]
            .as_str()
            .context("no session id")?
            .to_owned();
        Ok(Session {
            base: format!("{}/session/{id}", self.url),
            http: self.http.clone(),
        })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        call(&self.http, method, &format!("{}{path}", self.url), body).await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// One browser.
pub struct Session {
    base: String,
    http: reqwest::Client,
}

impl Session {
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", Some(json!({"url": url})))
            .await
            .map(|_| ())
    }

    /// Runs `script` (a function body: `return …`) in the page and gives what it returned.
    pub async fn execute(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls `script` until it returns true, for at most `within`.
    pub async fn wait_for(&self, script: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.execute(script).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("not true within {within:?}: {script}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Ends the browser.
    pub async fn quit(self) -> anyhow::Result<()> {
        call(&self.http, "DELETE", &self.base, None)
            .await
            .map(|_| ())
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        call(&self.http, method, &format!("{}{path}", self.base), body).await
    }
}

async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let mut req = http.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("WebDriver {url}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("WebDriver {url}: {status} {v}");
    }
    Ok(v["value"].clone())
}

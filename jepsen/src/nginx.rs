//! nginx (Debian's package) as the benchmarks' healthy target: answers 200 to everything on
//! 127.0.0.1 and logs `$msec` and the hookd headers of each request.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// nginx on 127.0.0.1 answering 200 to everything and logging each request.
pub struct Nginx {
    child: Child,
    /// Where jobs send their requests.
    pub url: String,
    log: PathBuf,
}

impl Nginx {
    /// Starts `bin` with its files under `dir`.
    pub fn start(bin: &Path, dir: &Path) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = dir.join("access.log");
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  log_format hook '$msec $http_hookd_job_id $http_hookd_scheduled_at';
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp;
  scgi_temp_path {dir}/tmp;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    access_log {log} hook buffer=256k flush=100ms;
    location / {{ return 200 "ok"; }}
  }}
}}
"#,
            dir = dir.display(),
            log = log.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(bin)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen on {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            child,
            url: format!("http://127.0.0.1:{port}/hook"),
            log,
        })
    }

    /// Every logged request: (received ms, job id, scheduled ms).
    pub fn requests(&self) -> Vec<(i64, String, i64)> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let msec: f64 = f.next()?.parse().ok()?;
                let job = f.next()?.to_owned();
                let due = chrono::DateTime::parse_from_rfc3339(f.next()?).ok()?;
                Some(((msec * 1000.0).round() as i64, job, due.timestamp_millis()))
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

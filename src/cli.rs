//! The command-line client (SPEC §6), in the same binary as the node: `hookd jobs …`, `runs`,
//! `schedule`, `cluster`, `targets`, `notifications`, `snapshot`. It speaks the public HTTP API
//! to the first node of `--addr` that answers; `snapshot inspect` and `restore` work on files,
//! offline. Output is a table on a terminal and JSON otherwise (`-o`). Exit status: 0 ok, 1 API
//! error, 2 usage error.

// Printing answers on stdout, and questions and errors on stderr, is what a command-line
// client is for.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::api::model::ScheduleRequest;
use crate::config::{parse_initial_cluster, ServeArgs};

/// Flags every client command takes.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Node URLs, comma-separated (http://HOST:PORT or HOST:PORT); the first that answers is used.
    #[arg(
        long,
        env = "HOOKD_ADDR",
        value_delimiter = ',',
        global = true,
        default_value = "http://127.0.0.1:7101"
    )]
    pub addr: Vec<String>,
    /// API token (sent as Authorization: Bearer TOKEN).
    #[arg(long, env = "HOOKD_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for HTTPS nodes.
    #[arg(long, env = "HOOKD_CA_CERT", global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for nodes that require one (--tls-client-ca); with --client-key.
    #[arg(long, env = "HOOKD_CLIENT_CERT", global = true, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "HOOKD_CLIENT_KEY", global = true, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// Output format [default: table on a terminal, json otherwise].
    #[arg(short = 'o', long = "output", global = true, value_enum)]
    pub output: Option<Output>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

// Parsed once per process: the size of `Create` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// Create a job from the API's job JSON (-f FILE, or - for stdin) and/or flags.
    Create(CreateArgs),
    /// Show one job (exit 1 if it does not exist).
    Get { id: String },
    /// List jobs, ordered by id.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this job id.
        #[arg(long)]
        after: Option<String>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: JobFilterArgs,
    },
    /// Delete a job (asks for --yes when not on a terminal).
    Delete {
        id: String,
        #[arg(long)]
        yes: bool,
    },
    /// Stop firing a job.
    Pause { id: String },
    /// Fire a paused job again.
    Resume { id: String },
    /// Fire a job once now (an extra run).
    Trigger { id: String },
    /// Change some fields of a job (a JSON merge patch): `--set labels.team=payments`,
    /// `--set retry.max_attempts:=3` (`:=` takes JSON), `--unset headers.x-old`, or -f FILE.
    Edit {
        id: String,
        /// PATH=TEXT sets a string, PATH:=JSON any JSON value; PATH is a field, with dots
        /// into objects (labels.team, schedule.every). Repeatable.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Removes the field at PATH. Repeatable.
        #[arg(long = "unset", value_name = "PATH")]
        unset: Vec<String>,
        /// A merge patch as JSON (- reads stdin); --set and --unset apply over it.
        #[arg(short = 'f', long = "file", value_name = "FILE|-")]
        file: Option<String>,
        /// Only if the job still has this version (its ETag).
        #[arg(long, value_name = "VERSION")]
        if_match: Option<u64>,
    },
    /// Pause, resume, delete or trigger every job the filters match (at least one filter).
    /// Shows how many match and asks first, unless --yes.
    Bulk {
        #[arg(value_enum)]
        action: BulkVerb,
        #[command(flatten)]
        filter: JobFilterArgs,
        /// These jobs only (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
        /// Count and show the matching jobs, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        yes: bool,
    },
}

/// What `hookd jobs bulk` does to each matching job.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BulkVerb {
    Pause,
    Resume,
    Delete,
    Trigger,
}

impl BulkVerb {
    fn as_str(self) -> &'static str {
        match self {
            BulkVerb::Pause => "pause",
            BulkVerb::Resume => "resume",
            BulkVerb::Delete => "delete",
            BulkVerb::Trigger => "trigger",
        }
    }
}

#[derive(Debug, Default, Args)]
pub struct CreateArgs {
    /// The job as JSON (as the API takes it); - reads stdin. Flags below override its fields.
    #[arg(short = 'f', long = "file", value_name = "FILE|-")]
    pub file: Option<String>,
    /// Job id [default: generated].
    #[arg(long)]
    pub id: Option<String>,
    /// The URL to call (http or https).
    #[arg(long)]
    pub url: Option<String>,
    /// HTTP method [default: POST].
    #[arg(long)]
    pub method: Option<String>,
    /// Request body sent to the target.
    #[arg(long)]
    pub body: Option<String>,
    /// A header NAME:VALUE (or NAME=VALUE) sent to the target (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Attempt timeout, e.g. 10s.
    #[arg(long)]
    pub timeout: Option<String>,
    /// A URL told of each run that succeeds (the job's on_success).
    #[arg(long, value_name = "URL")]
    pub on_success: Option<String>,
    /// A URL told of each run that fails (the job's on_failure).
    #[arg(long, value_name = "URL")]
    pub on_failure: Option<String>,
}

/// A schedule given by flags: exactly one of --cron, --every, --at, --after.
#[derive(Debug, Default, Clone, Args)]
pub struct ScheduleArgs {
    /// Cron expression (5 fields, or 6 with seconds first).
    #[arg(long)]
    pub cron: Option<String>,
    /// IANA time zone of --cron (default UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Fixed interval, e.g. 30s.
    #[arg(long)]
    pub every: Option<String>,
    /// First fire of --every (RFC 3339).
    #[arg(long)]
    pub start_at: Option<String>,
    /// Once, at this instant (RFC 3339).
    #[arg(long)]
    pub at: Option<String>,
    /// Once, this long after the create, e.g. 10m.
    #[arg(long)]
    pub after: Option<String>,
}

impl ScheduleArgs {
    /// The schedule JSON, if any schedule flag was given.
    fn to_json(&self) -> Result<Option<Value>, CliError> {
        let kinds = [&self.cron, &self.every, &self.at, &self.after]
            .iter()
            .filter(|k| k.is_some())
            .count();
        if kinds > 1 {
            return Err(CliError::Usage(
                "give one of --cron, --every, --at, --after".into(),
            ));
        }
        if self.timezone.is_some() && self.cron.is_none() {
            return Err(CliError::Usage("--timezone goes with --cron".into()));
        }
        if self.start_at.is_some() && self.every.is_none() {
            return Err(CliError::Usage("--start-at goes with --every".into()));
        }
        let s = given([
            ("cron", self.cron.as_ref()),
            ("timezone", self.timezone.as_ref()),
            ("every", self.every.as_ref()),
            ("start_at", self.start_at.as_ref()),
            ("at", self.at.as_ref()),
            ("after", self.after.as_ref()),
        ]);
        Ok((!s.is_empty()).then_some(Value::Object(s)))
    }
}

#[derive(Debug, Subcommand)]
pub enum RunsCmd {
    /// Runs of one job (--job), or across jobs (the dead-letter view with --status failed).
    List {
        #[arg(long)]
        job: Option<String>,
        /// [default: failed, or any with --job]
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// Only runs of jobs this label selector matches.
        #[arg(long)]
        job_selector: Option<String>,
        /// Only runs of jobs delivering to this host:port.
        #[arg(long)]
        target: Option<String>,
        /// Only runs due at or after this RFC 3339 instant.
        #[arg(long)]
        since: Option<String>,
        /// Only runs due at or before this RFC 3339 instant.
        #[arg(long)]
        until: Option<String>,
        /// Continue from the `next` of an earlier page.
        #[arg(long)]
        after: Option<String>,
    },
    /// Deliver a failed run again; or, with --all, every failed run the filters match (asks
    /// first, unless --yes).
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        run_id: Option<String>,
        /// Every failed run matching the filters below (all failed runs without one).
        #[arg(long)]
        all: bool,
        /// Only runs of this job.
        #[arg(long, requires = "all")]
        job: Option<String>,
        /// Only runs of jobs this label selector matches.
        #[arg(long, requires = "all")]
        job_selector: Option<String>,
        /// Only runs of jobs delivering to this host:port.
        #[arg(long, requires = "all")]
        target: Option<String>,
        /// Only runs due at or after this RFC 3339 instant.
        #[arg(long, requires = "all")]
        since: Option<String>,
        /// Only runs due at or before this RFC 3339 instant.
        #[arg(long, requires = "all")]
        until: Option<String>,
        /// Count the matching runs, retry nothing.
        #[arg(long, requires = "all")]
        dry_run: bool,
        #[arg(long)]
        yes: bool,
    },
}

/// The job filters of `GET /v1/jobs` (all given must hold).
#[derive(Debug, clap::Args)]
pub struct JobFilterArgs {
    /// Label selector: `team=payments,env!=dev,tier in (gold,silver),canary,!legacy`.
    #[arg(long)]
    selector: Option<String>,
    /// active, paused or completed.
    #[arg(long)]
    state: Option<String>,
    /// The host:port the job's URL delivers to.
    #[arg(long)]
    target: Option<String>,
    /// Job id prefix.
    #[arg(long)]
    prefix: Option<String>,
}

impl JobFilterArgs {
    fn pairs(&self) -> [(&'static str, Option<String>); 4] {
        [
            ("selector", self.selector.clone()),
            ("state", self.state.clone()),
            ("target", self.target.clone()),
            ("prefix", self.prefix.clone()),
        ]
    }
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// The next fires of a schedule, without creating anything.
    Preview {
        #[command(flatten)]
        schedule: ScheduleArgs,
        /// Fires strictly after this instant (RFC 3339) [default: now].
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Members, roles and the leader.
    Status,
    /// Add a node started with --join: a learner, then a voter once caught up.
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long, value_name = "HOST:PORT")]
        peer_addr: String,
        #[arg(long, value_name = "HOST:PORT")]
        api_addr: Option<String>,
        /// Leave it a learner (no vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node (asks for --yes when not on a terminal).
    Remove {
        id: u64,
        /// Allow leaving fewer than 2 voters.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        yes: bool,
    },
    /// End a rolling upgrade once every member runs this release: the nodes write its formats
    /// from then on, and none can go back to the previous release (asks for --yes when not on a
    /// terminal).
    FinalizeUpgrade {
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TargetsArgs {
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long)]
    pub after: Option<String>,
    #[command(subcommand)]
    pub policy: Option<TargetsCmd>,
}

#[derive(Debug, Subcommand)]
pub enum TargetsCmd {
    /// Set a target's limits, replacing the node defaults (at least one of them).
    SetPolicy {
        /// The target: host:port.
        target: String,
        /// Attempts in flight at most.
        #[arg(long)]
        max_concurrency: Option<u32>,
        /// Attempts started per second at most.
        #[arg(long)]
        rate_per_s: Option<f64>,
        /// How many may start at once (with --rate-per-s).
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Remove a target's limits.
    DeletePolicy { target: String },
}

#[derive(Debug, Subcommand)]
pub enum NotificationsCmd {
    /// List notifications, ordered by id.
    List {
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this notification id.
        #[arg(long)]
        after: Option<String>,
    },
    /// Show one notification (exit 1 if it does not exist).
    Get { id: String },
    /// Create or replace a notification, from flags or from the API's notification JSON
    /// (-f FILE, or - for stdin).
    Put(NotificationArgs),
    /// Delete a notification.
    Delete { id: String },
}

/// A notification given by flags, or by a file instead.
#[derive(Debug, Default, Args)]
pub struct NotificationArgs {
    /// The notification's id.
    pub id: String,
    /// The notification as JSON (as the API takes it); - reads stdin. Not with the flags below.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE|-",
        conflicts_with_all = ["url", "headers", "secret_headers", "events", "selector"]
    )]
    pub file: Option<String>,
    /// The URL the events are sent to (http or https).
    #[arg(long, required_unless_present = "file")]
    pub url: Option<String>,
    /// A header NAME=VALUE (or NAME:VALUE) sent with each event (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// A header whose value is secret: sent, but shown as *** (repeatable).
    #[arg(long = "secret-header", value_name = "NAME")]
    pub secret_headers: Vec<String>,
    /// An event type to send (repeatable): run.succeeded, run.failed, run.skipped,
    /// target.circuit_opened, target.circuit_closed, node.unreachable, node.recovered,
    /// leader.changed.
    #[arg(long = "event", value_name = "TYPE", required_unless_present = "file")]
    pub events: Vec<String>,
    /// A label selector narrowing which events are sent (the syntax of `jobs list --selector`).
    #[arg(long)]
    pub selector: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Save a consistent backup of the whole state from the cluster into FILE.
    Save { file: PathBuf },
    /// Check a backup file and print what it holds.
    Inspect { file: PathBuf },
    /// Prepare the data dir of one member of a new cluster from a backup, offline. Restore every
    /// member from the same file with the same --initial-cluster; they get one new cluster id.
    Restore {
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        node_id: u64,
        #[arg(long, value_name = "ID=HOST:PORT,...")]
        initial_cluster: String,
        /// The new cluster's id [default: derived from the file and the members].
        #[arg(long)]
        cluster_id: Option<String>,
    },
}

/// hookd: a self-hosted, replicated webhook scheduler.
#[derive(Debug, Parser)]
#[command(name = "hookd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
    #[command(flatten)]
    pub client: ClientArgs,
}

// Parsed once per process: the size of `Serve` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run a node.
    Serve(ServeArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

/// The commands that talk to a running cluster through its API.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, read, list, delete, pause, resume and trigger jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// List runs; retry a failed one.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Preview a schedule's next fires.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Cluster status; add and remove nodes.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Per-target delivery state: in flight, waiting, circuit; set or remove a target's limits.
    Targets(TargetsArgs),
    /// Create, read, list and delete notifications: URLs told of runs, circuits, nodes and
    /// leader changes.
    #[command(subcommand)]
    Notifications(NotificationsCmd),
    /// Back up, inspect and restore the whole state.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

/// Why a client command failed, and so its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 2.
    #[error("{0}")]
    Usage(String),
    /// Exit 1: the API answered with an error, no node answered, or a file was bad.
    #[error("{0}")]
    Api(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Api(_) => 1,
        }
    }
}

/// Runs a client command to its end.
pub fn run(args: ClientArgs, cmd: ClientCommand) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Api(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(run_client(args, cmd))
}

async fn run_client(args: ClientArgs, cmd: ClientCommand) -> Result<(), CliError> {
    let out = Printer {
        format: args.output.unwrap_or(if std::io::stdout().is_terminal() {
            Output::Table
        } else {
            Output::Json
        }),
    };
    // Offline commands first: they need no node.
    match &cmd {
        ClientCommand::Snapshot(SnapshotCmd::Inspect { file }) => {
            return out.value(&inspect(file)?);
        }
        ClientCommand::Snapshot(SnapshotCmd::Restore {
            file,
            data_dir,
            node_id,
            initial_cluster,
            cluster_id,
        }) => {
            let members = parse_initial_cluster(initial_cluster)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let to = hookd_raft::backup::RestoreTo {
                data_dir: data_dir.clone(),
                node_id: *node_id,
                members,
                cluster_id: cluster_id.clone(),
            };
            let restored = restore(file, to).await?;
            return out.value(&json!({
                "data_dir": data_dir.display().to_string(),
                "node_id": node_id,
                "cluster_id": restored.cluster_id,
                "index": restored.meta.last_log_id.map(|l| l.index),
                "source_hookd_version": restored.source.hookd_version,
            }));
        }
        _ => {}
    }
    let client = Client::new(&args)?;
    match cmd {
        ClientCommand::Jobs(cmd) => jobs(&client, &out, cmd).await,
        ClientCommand::Runs(RunsCmd::List {
            job,
            status,
            limit,
            job_selector,
            target,
            since,
            until,
            after,
        }) => {
            let limit = limit.map(|l| l.to_string());
            let filtered = [&job_selector, &target, &since, &until, &after]
                .iter()
                .any(|f| f.is_some());
            let (base, q) = match &job {
                Some(id) if !filtered => (
                    format!("/v1/jobs/{}/runs", seg(id)),
                    query(&[("status", status), ("limit", limit)]),
                ),
                _ => (
                    "/v1/runs".to_owned(),
                    query(&[
                        ("status", status),
                        ("job_id", job),
                        ("job_selector", job_selector),
                        ("target", target),
                        ("since", since),
                        ("until", until),
                        ("after", after),
                        ("limit", limit),
                    ]),
                ),
            };
            let v = client.ok(Method::GET, &format!("{base}{q}"), None).await?;
            out.table(&v["runs"], RUN_COLUMNS, &v)
        }
        ClientCommand::Runs(RunsCmd::Retry {
            run_id: Some(run_id),
            ..
        }) => {
            let path = format!("/v1/runs/{}/retry", seg(&run_id));
            let v = client.ok(Method::POST, &path, None).await?;
            out.value(&v)
        }
        ClientCommand::Runs(RunsCmd::Retry {
            run_id: None,
            job,
            job_selector,
            target,
            since,
            until,
            dry_run,
            yes,
            ..
        }) => {
            let body = given([
                ("job_id", job),
                ("job_selector", job_selector),
                ("target", target),
                ("since", since),
                ("until", until),
            ]);
            let v = bulk(&client, "/v1/runs/retry", body, dry_run, yes, |preview| {
                format!("Retry {} failed runs?", preview["matched"])
            })
            .await?;
            out.value(&v)
        }
        ClientCommand::Schedule(ScheduleCmd::Preview {
            schedule,
            from,
            count,
        }) => {
            let schedule = schedule
                .to_json()?
                .ok_or_else(|| CliError::Usage("give --cron, --every, --at or --after".into()))?;
            let mut body = json!({"schedule": schedule});
            if let Some(from) = from {
                body["from"] = json!(from);
            }
            if let Some(count) = count {
                body["count"] = json!(count);
            }
            let v = client
                .ok(Method::POST, "/v1/schedules/preview", Some(body))
                .await?;
            out.instants(&v["fires"], &v)
        }
        ClientCommand::Cluster(cmd) => cluster(&client, &out, cmd).await,
        ClientCommand::Targets(TargetsArgs {
            policy:
                Some(TargetsCmd::SetPolicy {
                    target,
                    max_concurrency,
                    rate_per_s,
                    burst,
                }),
            ..
        }) => {
            let body = given([
                ("max_concurrency", max_concurrency.map(|n| json!(n))),
                ("rate_per_s", rate_per_s.map(|r| json!(r))),
                ("burst", burst.map(|b| json!(b))),
            ]);
            let path = format!("/v1/targets/{}/policy", seg(&target));
            let v = client
                .ok(Method::PUT, &path, Some(Value::Object(body)))
                .await?;
            out.value(&v)
        }
        ClientCommand::Targets(TargetsArgs {
            policy: Some(TargetsCmd::DeletePolicy { target }),
            ..
        }) => {
            let path = format!("/v1/targets/{}/policy", seg(&target));
            client.ok(Method::DELETE, &path, None).await?;
            out.done(&format!("removed the policy of {target}"))
        }
        ClientCommand::Targets(TargetsArgs {
            limit,
            after,
            policy: None,
        }) => {
            let q = query(&[("limit", limit.map(|l| l.to_string())), ("after", after)]);
            let v = client
                .ok(Method::GET, &format!("/v1/targets{q}"), None)
                .await?;
            out.table(&v["targets"], TARGET_COLUMNS, &v)
        }
        ClientCommand::Notifications(cmd) => notifications(&client, &out, cmd).await,
        ClientCommand::Snapshot(SnapshotCmd::Save { file }) => {
            save_snapshot(&client, &file).await?;
            out.value(&inspect(&file)?)
        }
        ClientCommand::Snapshot(_) => Ok(()),
    }
}

async fn jobs(client: &Client, out: &Printer, cmd: JobsCmd) -> Result<(), CliError> {
    match cmd {
        JobsCmd::Create(args) => {
            let body = job_body(&args)?;
            let v = client.ok(Method::POST, "/v1/jobs", Some(body)).await?;
            out.record(&v, JOB_FIELDS)
        }
        JobsCmd::Get { id } => {
            let v = client
                .ok(Method::GET, &format!("/v1/jobs/{}", seg(&id)), None)
                .await?;
            out.record(&v, JOB_FIELDS)
        }
        JobsCmd::List {
            limit,
            after,
            all,
            filter,
        } => {
            let mut after = after;
            let mut jobs = Vec::new();
            let next = loop {
                let mut params = vec![("limit", Some(limit.to_string())), ("after", after.clone())];
                params.extend(filter.pairs());
                let q = query(&params);
                let v = client
                    .ok(Method::GET, &format!("/v1/jobs{q}"), None)
                    .await?;
                jobs.extend(v["jobs"].as_array().cloned().unwrap_or_default());
                after = v["next"].as_str().map(str::to_owned);
                if !all || after.is_none() {
                    break v["next"].clone();
                }
            };
            let page = json!({"jobs": jobs, "next": next});
            out.table(&page["jobs"], JOB_COLUMNS, &page)
        }
        JobsCmd::Delete { id, yes } => {
            confirm(yes, &format!("Delete job {id}?"))?;
            client
                .ok(Method::DELETE, &format!("/v1/jobs/{}", seg(&id)), None)
                .await?;
            out.done(&format!("deleted job {id}"))
        }
        JobsCmd::Pause { id } => job_action(client, out, &id, "pause").await,
        JobsCmd::Resume { id } => job_action(client, out, &id, "resume").await,
        JobsCmd::Trigger { id } => job_action(client, out, &id, "trigger").await,
        JobsCmd::Edit {
            id,
            set,
            unset,
            file,
            if_match,
        } => {
            let base = file.as_deref().map(read_json).transpose()?;
            let patch = edit_patch(base, &set, &unset).map_err(CliError::Usage)?;
            let v = client
                .ok_if(
                    Method::PATCH,
                    &format!("/v1/jobs/{}", seg(&id)),
                    Some(patch),
                    if_match.map(|v| format!("\"{v}\"")),
                )
                .await?;
            out.record(&v, JOB_FIELDS)
        }
        JobsCmd::Bulk {
            action,
            filter,
            ids,
            dry_run,
            yes,
        } => {
            let mut body = given(filter.pairs());
            body.insert("action".into(), json!(action.as_str()));
            if !ids.is_empty() {
                body.insert("ids".into(), json!(ids));
            }
            let v = bulk(client, "/v1/jobs/bulk", body, dry_run, yes, |preview| {
                let sample: Vec<String> = preview["sample"]
                    .as_array()
                    .map(|a| a.iter().take(3).map(text).collect())
                    .unwrap_or_default();
                format!(
                    "{} {} jobs (first: {})?",
                    action.as_str(),
                    preview["matched"],
                    sample.join(", ")
                )
            })
            .await?;
            out.value(&v)
        }
    }
}

/// A bulk route: a dry run when asked for one; otherwise, unless `yes`, a dry run first whose
/// answer `question` turns into what is asked before acting.
async fn bulk(
    client: &Client,
    path: &str,
    mut body: Map<String, Value>,
    dry_run: bool,
    yes: bool,
    question: impl Fn(&Value) -> String,
) -> Result<Value, CliError> {
    if dry_run || !yes {
        body.insert("dry_run".into(), json!(true));
        let preview = client
            .ok(Method::POST, path, Some(Value::Object(body.clone())))
            .await?;
        if dry_run || preview["matched"] == 0 {
            return Ok(preview);
        }
        confirm(false, &question(&preview))?;
        body.remove("dry_run");
    }
    client
        .ok(Method::POST, path, Some(Value::Object(body)))
        .await
}

/// `POST /v1/jobs/{id}/{action}`, printing the job or run it answers with.
async fn job_action(
    client: &Client,
    out: &Printer,
    id: &str,
    action: &str,
) -> Result<(), CliError> {
    let path = format!("/v1/jobs/{}/{action}", seg(id));
    let v = client.ok(Method::POST, &path, None).await?;
    out.value(&v)
}

async fn notifications(
    client: &Client,
    out: &Printer,
    cmd: NotificationsCmd,
) -> Result<(), CliError> {
    match cmd {
        NotificationsCmd::List { limit, after } => {
            let q = query(&[("limit", limit.map(|l| l.to_string())), ("after", after)]);
            let v = client
                .ok(Method::GET, &format!("/v1/notifications{q}"), None)
                .await?;
            out.table(&v["notifications"], NOTIFICATION_COLUMNS, &v)
        }
        NotificationsCmd::Get { id } => {
            let path = format!("/v1/notifications/{}", seg(&id));
            let v = client.ok(Method::GET, &path, None).await?;
            out.record(&v, NOTIFICATION_FIELDS)
        }
        NotificationsCmd::Put(args) => {
            let body = notification_body(&args)?;
            let path = format!("/v1/notifications/{}", seg(&args.id));
            let v = client.ok(Method::PUT, &path, Some(body)).await?;
            out.record(&v, NOTIFICATION_FIELDS)
        }
        NotificationsCmd::Delete { id } => {
            let path = format!("/v1/notifications/{}", seg(&id));
            client.ok(Method::DELETE, &path, None).await?;
            out.done(&format!("deleted notification {id}"))
        }
    }
}

async fn cluster(client: &Client, out: &Printer, cmd: ClusterCmd) -> Result<(), CliError> {
    let v = match cmd {
        ClusterCmd::Status => client.ok(Method::GET, "/v1/cluster", None).await?,
        ClusterCmd::Add {
            id,
            peer_addr,
            api_addr,
            learner,
        } => {
            let mut body = json!({"id": id, "peer_addr": peer_addr, "voter": !learner});
            if let Some(api) = api_addr {
                body["api_addr"] = json!(api);
            }
            client
                .ok(Method::POST, "/v1/cluster/members", Some(body))
                .await?
        }
        ClusterCmd::Remove { id, force, yes } => {
            confirm(yes, &format!("Remove node {id} from the cluster?"))?;
            let q = if force { "?force=true" } else { "" };
            client
                .ok(
                    Method::DELETE,
                    &format!("/v1/cluster/members/{id}{q}"),
                    None,
                )
                .await?
        }
        ClusterCmd::FinalizeUpgrade { yes } => {
            confirm(
                yes,
                "Finalize the upgrade? No node can go back to the previous release after it.",
            )?;
            client
                .ok(Method::POST, "/v1/cluster/upgrade/finalize", None)
                .await?
        }
    };
    out.cluster(&v)
}

/// A JSON object of the fields given a value (`None`s left out).
fn given<V: serde::Serialize>(
    fields: impl IntoIterator<Item = (&'static str, Option<V>)>,
) -> Map<String, Value> {
    fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), json!(v?))))
        .collect()
}

/// The JSON in file `f` (`-`: stdin).
fn read_json(f: &str) -> Result<Value, CliError> {
    let text = if f == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Usage(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(f).map_err(|e| CliError::Usage(format!("cannot read {f}: {e}")))?
    };
    serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("{f} is not JSON: {e}")))
}

/// The merge patch of `jobs edit`: `base` (an object; `{}` when none) with each `--set`
/// (`PATH=TEXT` a string, `PATH:=JSON` any value) and `--unset` (`PATH`, null) applied in
/// order; a dotted PATH reaches into objects.
fn edit_patch(base: Option<Value>, set: &[String], unset: &[String]) -> Result<Value, String> {
    let mut patch = base.unwrap_or_else(|| json!({}));
    if !patch.is_object() {
        return Err("the merge patch must be a JSON object".into());
    }
    let mut put = |path: &str, value: Value| -> Result<(), String> {
        let keys: Vec<&str> = path.split('.').collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(format!("{path:?} is not a field path (a.b.c)"));
        }
        let mut at = &mut patch;
        for k in &keys[..keys.len() - 1] {
            let obj = at
                .as_object_mut()
                .ok_or(format!("{path:?} goes into a non-object"))?;
            at = obj.entry(k.to_string()).or_insert_with(|| json!({}));
            if !at.is_object() {
                return Err(format!("{path:?} goes into a non-object"));
            }
        }
        let obj = at
            .as_object_mut()
            .ok_or(format!("{path:?} goes into a non-object"))?;
        obj.insert(keys[keys.len() - 1].to_string(), value);
        Ok(())
    };
    for s in set {
        let (path, value) = match (s.split_once(":="), s.split_once('=')) {
            (Some((p, json)), Some((q, _))) if p.len() <= q.len() => {
                let v = serde_json::from_str(json)
                    .map_err(|e| format!("--set {s}: the value after := is not JSON: {e}"))?;
                (p, v)
            }
            (_, Some((p, text))) => (p, json!(text)),
            _ => return Err(format!("--set {s}: give PATH=TEXT or PATH:=JSON")),
        };
        put(path, value)?;
    }
    for path in unset {
        put(path, Value::Null)?;
    }
    if patch.as_object().is_some_and(|o| o.is_empty()) {
        return Err("nothing to change: give --set, --unset or -f".into());
    }
    Ok(patch)
}

/// A `--header` flag, `NAME:VALUE` or `NAME=VALUE` (a header name has neither character), as a
/// name and a JSON string, both trimmed.
fn header(h: &str) -> Result<(String, Value), CliError> {
    let (name, value) = h.split_once([':', '=']).ok_or_else(|| {
        CliError::Usage(format!("--header {h:?} is not NAME:VALUE or NAME=VALUE"))
    })?;
    Ok((name.trim().into(), json!(value.trim())))
}

/// The job JSON of `jobs create`: the file's, with the flags' fields over it.
fn job_body(args: &CreateArgs) -> Result<Value, CliError> {
    let mut job = match args.file.as_deref() {
        None => json!({}),
        Some(f) => read_json(f)?,
    };
    let Some(obj) = job.as_object_mut() else {
        return Err(CliError::Usage("the job JSON must be an object".into()));
    };
    obj.extend(given([
        ("id", args.id.as_ref()),
        ("url", args.url.as_ref()),
        ("method", args.method.as_ref()),
        ("body", args.body.as_ref()),
        ("timeout", args.timeout.as_ref()),
    ]));
    let endpoint = |url: &Option<String>| url.as_ref().map(|u| json!({"url": u}));
    obj.extend(given([
        ("on_success", endpoint(&args.on_success)),
        ("on_failure", endpoint(&args.on_failure)),
    ]));
    if !args.headers.is_empty() {
        let headers = obj
            .entry("headers")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| CliError::Usage("headers must be an object".into()))?;
        for h in &args.headers {
            let (name, value) = header(h)?;
            headers.insert(name, value);
        }
    }
    if let Some(schedule) = args.schedule.to_json()? {
        obj.insert("schedule".into(), schedule);
    }
    Ok(job)
}

/// The body of `notifications put`: the file's JSON as it is, or the flags' fields.
fn notification_body(args: &NotificationArgs) -> Result<Value, CliError> {
    if let Some(f) = &args.file {
        return read_json(f);
    }
    let headers = args
        .headers
        .iter()
        .map(String::as_str)
        .map(header)
        .collect::<Result<Map<_, _>, _>>()?;
    Ok(Value::Object(given([
        ("url", args.url.as_ref().map(|u| json!(u))),
        (
            "headers",
            (!headers.is_empty()).then_some(Value::Object(headers)),
        ),
        (
            "secret_headers",
            (!args.secret_headers.is_empty()).then(|| json!(args.secret_headers)),
        ),
        ("events", Some(json!(args.events))),
        ("selector", args.selector.as_ref().map(|s| json!(s))),
    ])))
}

/// Asks before a destructive command: `--yes`, or a `y` on a terminal.
fn confirm(yes: bool, question: &str) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "{question} Not on a terminal: pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Usage("not confirmed".into()))
    }
}

/// A path segment, percent-encoded beyond the unreserved characters.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A query string of the given parameters (`?a=1&b=2`, or empty).
fn query(params: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", seg(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// The API client: the nodes of `--addr` in order, moving on only when one cannot be reached.
struct Client {
    http: reqwest::Client,
    bases: Vec<String>,
    token: Option<String>,
}

/// How long a client request may take; a member add waits for the learner to catch up.
const REQUEST_WITHIN: Duration = Duration::from_secs(90);

impl Client {
    fn new(args: &ClientArgs) -> Result<Client, CliError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(REQUEST_WITHIN)
            .redirect(reqwest::redirect::Policy::none());
        let https = args.ca_cert.is_some() || args.client_cert.is_some();
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        match (&args.client_cert, &args.client_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p)
                        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", p.display())))
                };
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    CliError::Usage(format!("{} and {}: {e}", cert.display(), key.display()))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(CliError::Usage(
                    "--client-cert and --client-key go together".into(),
                ))
            }
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Api(format!("cannot build the HTTP client: {e}")))?;
        let bases = args
            .addr
            .iter()
            .map(|a| a.trim().trim_end_matches('/'))
            .filter(|a| !a.is_empty())
            .map(|a| {
                if a.contains("://") {
                    a.to_owned()
                } else if https {
                    format!("https://{a}")
                } else {
                    format!("http://{a}")
                }
            })
            .collect::<Vec<_>>();
        if bases.is_empty() {
            return Err(CliError::Usage("--addr names no node".into()));
        }
        Ok(Client {
            http,
            bases,
            token: args.token.clone(),
        })
    }

    /// Sends the request to the first node that can be reached.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<reqwest::Response, CliError> {
        let mut failures = Vec::new();
        for base in &self.bases {
            let mut req = self.http.request(method.clone(), format!("{base}{path}"));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(m) = if_match {
                req = req.header(reqwest::header::IF_MATCH, m);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => return Ok(resp),
                // Not sent: the next node may answer.
                Err(e) if e.is_connect() => failures.push(format!("{base}: {e}")),
                Err(e) => return Err(CliError::Api(format!("{base}: {e}"))),
            }
        }
        Err(CliError::Api(format!(
            "no node answered: {}",
            failures.join("; ")
        )))
    }

    /// The JSON answer of a successful request, or the API's error as a `CliError::Api`.
    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        self.ok_if(method, path, body, None).await
    }

    /// `ok` with an `If-Match` header.
    async fn ok_if(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<String>,
    ) -> Result<Value, CliError> {
        let resp = self
            .send(method, path, body.as_ref(), if_match.as_deref())
            .await?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CliError::Api(format!("reading the answer: {e}")))?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(v);
        }
        let e = &v["error"];
        let mut message = format!(
            "{} {}: {}",
            status.as_u16(),
            e["code"].as_str().unwrap_or("error"),
            e["message"]
                .as_str()
                .map_or_else(|| v.to_string(), str::to_owned)
        );
        if let Some(field) = e["field"].as_str() {
            message.push_str(&format!(" (field {field})"));
        }
        Err(CliError::Api(message))
    }
}

/// `snapshot restore`: the data dir of a member of a new cluster from a backup: of one
/// snapshot file, or of an archive of several shards' (each shard restored into its place,
/// all with one cluster id: the one given, or one derived from the archive and the members).
async fn restore(
    file: &Path,
    mut to: hookd_raft::backup::RestoreTo,
) -> Result<hookd_raft::backup::Restored, CliError> {
    let failed = |e: &dyn std::fmt::Display| CliError::Api(e.to_string());
    let machine = || Arc::new(crate::replicated::Hookd::default());
    if !hookd_raft::archive::is_archive(file).map_err(|e| failed(&e))? {
        return hookd_raft::backup::restore(file, &to, machine())
            .await
            .map_err(|e| failed(&e));
    }
    let parts = tempfile::tempdir().map_err(|e| failed(&e))?;
    let files = hookd_raft::archive::split(file, parts.path())
        .map_err(|e| failed(&format!("{}: {e}", file.display())))?;
    if to.cluster_id.is_none() {
        let sum = hookd_raft::archive::checksum(file).map_err(|e| failed(&e))?;
        to.cluster_id = Some(hookd_raft::backup::derived_cluster_id(&sum, &to.members));
    }
    let base = to.data_dir.clone();
    let mut first = None;
    for (k, part) in (0u32..).zip(&files) {
        let shard = hookd_raft::backup::RestoreTo {
            data_dir: crate::shards::data_dir_of(&base, k),
            ..to.clone()
        };
        let restored = hookd_raft::backup::restore(part, &shard, machine())
            .await
            .map_err(|e| failed(&e))?;
        if k == 0 {
            // Before the other shards: a data dir with a database and no count is one shard's.
            crate::shards::record_count(&base, files.len() as u32).map_err(|e| failed(&e))?;
        }
        first.get_or_insert(restored);
    }
    first.ok_or_else(|| failed(&"the archive holds no shard"))
}

/// Streams `GET /v1/snapshot` into `file` (through a temporary file, synced, then renamed).
async fn save_snapshot(client: &Client, file: &Path) -> Result<(), CliError> {
    let mut resp = client.send(Method::GET, "/v1/snapshot", None, None).await?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        return Err(CliError::Api(format!("{status}: {text}")));
    }
    let tmp = file.with_extension("partial");
    let io = |e: std::io::Error| CliError::Api(format!("{}: {e}", tmp.display()));
    // Owner only: a backup holds the jobs' secret header values.
    let mut out = hookd_raft::store::snapfile::create_private(&tmp).map_err(io)?;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| CliError::Api(format!("receiving the snapshot: {e}")))?
    {
        out.write_all(&chunk).map_err(io)?;
    }
    out.sync_all().map_err(io)?;
    drop(out);
    if let Err(e) = inspect(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::Api(format!(
            "the received snapshot is bad: {e:?}"
        )));
    }
    std::fs::rename(&tmp, file).map_err(|e| CliError::Api(format!("{}: {e}", file.display())))?;
    Ok(())
}

/// `snapshot inspect`: the file checked through, as JSON. A backup of several shards (an
/// archive of their snapshot files) is shard 0's description with every shard's jobs counted,
/// its own size and checksum, and each shard's index and jobs.
fn inspect(file: &Path) -> Result<Value, CliError> {
    let failed = |e: &dyn std::fmt::Display| CliError::Api(format!("{}: {e}", file.display()));
    if !hookd_raft::archive::is_archive(file).map_err(|e| failed(&e))? {
        return inspect_snapshot(file);
    }
    let parts = tempfile::tempdir().map_err(|e| failed(&e))?;
    let files = hookd_raft::archive::split(file, parts.path()).map_err(|e| failed(&e))?;
    let shards = files
        .iter()
        .map(|f| inspect_snapshot(f))
        .collect::<Result<Vec<Value>, CliError>>()?;
    let mut all = shards.first().cloned().unwrap_or_default();
    let jobs: u64 = shards.iter().filter_map(|s| s["jobs"].as_u64()).sum();
    all["file"] = json!(file.display().to_string());
    all["jobs"] = json!(jobs);
    all["bytes"] = json!(std::fs::metadata(file).map_err(|e| failed(&e))?.len());
    all["sha256"] = json!(hookd_raft::archive::checksum(file).map_err(|e| failed(&e))?);
    all["shards"] = shards
        .iter()
        .map(|s| json!({"last_applied": s["last_applied"], "jobs": s["jobs"]}))
        .collect();
    Ok(all)
}

/// `inspect` of one snapshot file.
fn inspect_snapshot(file: &Path) -> Result<Value, CliError> {
    let jobs = crate::core::state::Table::Jobs as usize;
    let i = hookd_raft::backup::inspect(file, jobs)
        .map_err(|e| CliError::Api(format!("{}: {e}", file.display())))?;
    let meta = &i.header.meta;
    let membership = meta.last_membership.membership();
    let members: BTreeMap<String, Value> = membership
        .nodes()
        .map(|(id, n)| {
            let voter = membership.voter_ids().any(|v| v == *id);
            (id.to_string(), json!({"peer_addr": n.addr, "voter": voter}))
        })
        .collect();
    Ok(json!({
        "file": file.display().to_string(),
        "hookd_version": i.header.hookd_version,
        "format": i.format,
        "last_applied": meta.last_log_id.map(|l| json!({"term": l.leader_id.term, "index": l.index})),
        "members": members,
        "jobs": i.rows,
        "bytes": i.bytes,
        "sha256": i.sha256,
    }))
}

/// The clock reading that a table's relative times count from: read once per table by the
/// printer, passed to the pure cell writers below.
type Now = DateTime<Utc>;

/// How wide an error may be in a cell before its middle is cut.
const ERROR_WIDTH: usize = 60;
/// How wide a job's labels may be in a cell before their end is cut.
const LABELS_WIDTH: usize = 40;

/// A table column: its header, how a row's cell is written for people at `now`, and whether it
/// is left out when it is empty in every row.
struct Column {
    header: &'static str,
    cell: fn(&Value, Now) -> String,
    optional: bool,
}

const fn column(header: &'static str, cell: fn(&Value, Now) -> String) -> Column {
    Column {
        header,
        cell,
        optional: false,
    }
}

const JOB_COLUMNS: &[Column] = &[
    column("ID", |r, _| text(&r["id"])),
    column("STATE", |r, _| text(&r["state"])),
    column("SCHEDULE", |r, now| schedule_words(&r["schedule"], now)),
    column("NEXT", |r, now| instant(&r["next_fire_at"], now)),
    column("URL", |r, _| text(&r["url"])),
    Column {
        optional: true,
        ..column("LABELS", |r, _| labels(&r["labels"]))
    },
];
const RUN_COLUMNS: &[Column] = &[
    column("RUN", |r, _| text(&r["id"])),
    column("JOB", |r, _| text(&r["job_id"])),
    column("STATUS", |r, _| run_status(r)),
    column("SCHEDULED", |r, now| instant(&r["scheduled_at"], now)),
    column("ATTEMPTS", |r, _| attempts(&r["attempts"])),
    Column {
        optional: true,
        ..column("NEXT_ATTEMPT", |r, now| instant(&r["next_attempt_at"], now))
    },
];
const TARGET_COLUMNS: &[Column] = &[
    column("TARGET", |r, _| text(&r["target"])),
    column("IN_FLIGHT", |r, _| text(&r["in_flight"])),
    column("WAITING", |r, _| text(&r["waiting"])),
    column("CIRCUIT", circuit),
    column("LAST_ERROR", |r, _| error(&r["last_error"])),
    Column {
        optional: true,
        ..column("POLICY", |r, _| policy(r))
    },
];
const NOTIFICATION_COLUMNS: &[Column] = &[
    column("ID", |r, _| text(&r["id"])),
    column("EVENTS", |r, _| joined(&r["events"])),
    column("SELECTOR", |r, _| match text(&r["selector"]) {
        s if s.is_empty() => "-".into(),
        s => s,
    }),
    column("URL", |r, _| text(&r["url"])),
];
const MEMBER_COLUMNS: &[Column] = &[
    column("ID", |r, _| text(&r["id"])),
    column("ROLE", |r, _| text(&r["role"])),
    column("VOTER", |r, _| text(&r["voter"])),
    column("PEER", |r, _| text(&r["peer_addr"])),
    column("API", |r, _| text(&r["api_addr"])),
    column("VERSION", |r, _| text(&r["version"])),
];

const SHARD_COLUMNS: &[Column] = &[
    column("SHARD", |r, _| text(&r["id"])),
    column("LEADER", |r, _| text(&r["leader_id"])),
    column("TERM", |r, _| text(&r["term"])),
    column("COMMIT", |r, _| text(&r["commit_index"])),
];

/// `cluster status` for people: the cluster line, its members, and with several shards, each
/// shard's leader, term and commit index.
fn render_cluster(v: &Value, now: Now) -> String {
    let mut out = format!(
        "cluster {}  leader {}  term {}  commit {}  format {}\n",
        text(&v["cluster_id"]),
        text(&v["leader_id"]),
        text(&v["term"]),
        text(&v["commit_index"]),
        text(&v["format_version"])
    );
    let rows = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    out.push_str(&render_table(&rows("members"), MEMBER_COLUMNS, now));
    let shards = rows("shards");
    if shards.len() > 1 {
        out.push('\n');
        out.push_str(&render_table(&shards, SHARD_COLUMNS, now));
    }
    out
}

/// A field of one object shown as `key  value` lines, written for people by its own function
/// rather than as [`text`].
type Field = (&'static str, fn(&Value) -> String);

const JOB_FIELDS: &[Field] = &[("on_success", hook), ("on_failure", hook)];
const NOTIFICATION_FIELDS: &[Field] = &[("events", joined), ("secret_headers", joined)];

/// Prints answers as tables or JSON.
struct Printer {
    format: Output,
}

/// A value as text: strings as they are, nothing for null (or absent), anything else as compact
/// JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 instant in UTC, written exactly: fractions of a second only when there are any.
fn exact_instant(t: &str) -> Option<(Now, String)> {
    let t = DateTime::parse_from_rfc3339(t).ok()?.with_timezone(&Utc);
    Some((t, t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
}

/// An RFC 3339 instant as `2026-12-07T09:00:00Z (in 4m)`: exact, then relative to `now`.
/// Anything else as [`text`].
fn instant(v: &Value, now: Now) -> String {
    match v.as_str().and_then(exact_instant) {
        Some((t, exact)) => format!("{exact} ({})", relative(t, now)),
        None => text(v),
    }
}

/// `in 4m30s`, `2d3h ago`, `now`: the two largest units, rounded down.
fn relative(t: Now, now: Now) -> String {
    let ms = (t - now).num_milliseconds();
    if ms.unsigned_abs() < 1000 {
        return "now".into();
    }
    let span = span(ms.unsigned_abs() / 1000);
    if ms > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// Seconds as the two largest of days, hours, minutes, seconds: `3h`, `4m30s`, `12d5h`.
fn span(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let first = UNITS.iter().position(|(u, _)| secs >= *u).unwrap_or(3);
    let (unit, name) = UNITS[first];
    let mut out = format!("{}{name}", secs / unit);
    if let Some((next, next_name)) = UNITS.get(first + 1) {
        let rest = secs % unit / next;
        if rest > 0 {
            out += &format!("{rest}{next_name}");
        }
    }
    out
}

/// A job's schedule in words, as the API's preview says it (`api::model::describe_schedule`):
/// `every 5m`, `every 1h from 2026-12-07T09:00:00Z (in 3h)`, `at 2026-12-07T09:00:00Z (in
/// 3h)`, `after 30s`, `At 09:00, Monday through Friday (Europe/Berlin)`. A shape it does not
/// know is shown as its JSON, so nothing is lost.
fn schedule_words(v: &Value, now: Now) -> String {
    let Ok(s) = serde_json::from_value::<ScheduleRequest>(v.clone()) else {
        return text(v);
    };
    let when = |t: &str| instant(&Value::String(t.to_owned()), now);
    crate::api::model::describe_schedule(&s, when).unwrap_or_else(|| text(v))
}

/// A run's attempts as a count and the last outcome: `0`, `1 (last 200)`,
/// `3 (last 503: …)`, `2 (last: timeout: …)`. Anything but a list is shown as [`text`].
fn attempts(v: &Value) -> String {
    let Some(list) = v.as_array() else {
        return text(v);
    };
    let Some(last) = list.last() else {
        return "0".into();
    };
    let outcome = match (last["status_code"].as_u64(), last["error"].as_str()) {
        (Some(code), Some(e)) => format!(" {code}: {}", ellipsize(e, ERROR_WIDTH)),
        (Some(code), None) => format!(" {code}"),
        (None, Some(e)) => format!(": {}", ellipsize(e, ERROR_WIDTH)),
        (None, None) => return list.len().to_string(),
    };
    format!("{} (last{outcome})", list.len())
}

/// A run's status, with how many fires a skipped entry stands for, and whether it was triggered
/// by hand: `failed`, `skipped 12 from 2026-12-07T09:00:00Z`, `succeeded (manual)`.
fn run_status(run: &Value) -> String {
    let mut out = text(&run["status"]);
    let skipped = &run["skipped"];
    if let Some(count) = skipped["count"].as_u64().filter(|c| *c > 1) {
        out += &format!(" {count} from ");
        let first = &skipped["first_scheduled_at"];
        out += &first
            .as_str()
            .and_then(exact_instant)
            .map_or_else(|| text(first), |(_, exact)| exact);
    }
    if run["skip_reason"] == "overlap" {
        out += " (overlap)";
    }
    if let Some(why) = run["error"].as_str() {
        out += &format!(" ({why})");
    }
    if run["manual"] == Value::Bool(true) {
        out += " (manual)";
    }
    out
}

/// A list of strings joined by commas: `run.failed,run.skipped`. Anything but a list is shown as
/// [`text`].
fn joined(v: &Value) -> String {
    match v.as_array() {
        Some(list) => list.iter().map(text).collect::<Vec<_>>().join(","),
        None => text(v),
    }
}

/// A job's `on_success` or `on_failure`: its URL, and the names of the headers sent to it:
/// `https://example.com/failed (headers: authorization)`. Without a URL it is shown as [`text`].
fn hook(v: &Value) -> String {
    let Some(url) = v["url"].as_str() else {
        return text(v);
    };
    match v["headers"].as_object().filter(|h| !h.is_empty()) {
        Some(headers) => {
            let names: Vec<&str> = headers.keys().map(String::as_str).collect();
            format!("{url} (headers: {})", names.join(", "))
        }
        None => url.to_owned(),
    }
}

/// A target's policy: `50/s burst 10, 4 in flight`; empty without one.
fn policy(target: &Value) -> String {
    let p = &target["policy"];
    let mut parts = Vec::new();
    if let Some(rate) = p["rate_per_s"].as_f64() {
        let burst = p["burst"].as_u64().unwrap_or(1);
        parts.push(format!("{rate}/s burst {burst}"));
    }
    if let Some(n) = p["max_concurrency"].as_u64() {
        parts.push(format!("{n} in flight"));
    }
    parts.join(", ")
}

/// A target's circuit: `closed`, `closed (2 failures)`, `open until 2026-… (in 20s)`,
/// `half_open`.
fn circuit(target: &Value, now: Now) -> String {
    let state = text(&target["circuit"]);
    let failures = target["consecutive_failures"].as_u64().unwrap_or(0);
    match &target["open_until"] {
        Value::Null if failures == 1 => format!("{state} (1 failure)"),
        Value::Null if failures > 1 => format!("{state} ({failures} failures)"),
        Value::Null => state,
        until => format!("{state} until {}", instant(until, now)),
    }
}

/// An error message, its middle cut to fit [`ERROR_WIDTH`].
fn error(v: &Value) -> String {
    ellipsize(&text(v), ERROR_WIDTH)
}

/// A job's labels as `k=v,k2=v2` (in key order), cut to [`LABELS_WIDTH`]; nothing when absent
/// or empty.
fn labels(v: &Value) -> String {
    let Some(map) = v.as_object() else {
        return text(v);
    };
    let all: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    let all = all.join(",");
    if all.chars().count() <= LABELS_WIDTH {
        return all;
    }
    let head: String = all.chars().take(LABELS_WIDTH - 1).collect();
    head + "…"
}

/// `s` cut to at most `max` characters by putting ` … ` in place of its middle: the start says
/// what kind of error it is, the end its cause. Cuts at a word's edge when one is near.
fn ellipsize(s: &str, max: usize) -> String {
    const SLACK: usize = 8;
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= max {
        return s.to_owned();
    }
    let keep = max.saturating_sub(3);
    let mut head = &chars[..keep / 3];
    let mut tail = &chars[chars.len() - (keep - keep / 3)..];
    if !chars[head.len()].is_whitespace() {
        if let Some(i) = head
            .iter()
            .rposition(|c| c.is_whitespace())
            .filter(|i| head.len() - i <= SLACK)
        {
            head = &head[..i];
        }
    }
    if !chars[chars.len() - tail.len() - 1].is_whitespace() {
        if let Some(i) = tail
            .iter()
            .position(|c| c.is_whitespace())
            .filter(|i| *i < SLACK)
        {
            tail = &tail[i + 1..];
        }
    }
    let head: String = head.iter().collect();
    let tail: String = tail.iter().collect();
    format!("{} … {}", head.trim_end(), tail.trim_start())
}

/// An object as `key  value` lines, keys padded to the longest; the fields named in `fields`
/// written by their function, the others as [`text`].
fn render_record(obj: &Map<String, Value>, fields: &[Field]) -> String {
    let width = obj.keys().map(String::len).max().unwrap_or(0);
    obj.iter()
        .map(|(k, v)| {
            let cell = fields
                .iter()
                .find(|(name, _)| name == k)
                .map_or(text as fn(&Value) -> String, |(_, cell)| *cell);
            format!("{k:<width$}  {}\n", cell(v))
        })
        .collect()
}

/// Rows under headers, columns padded to their widest cell; an optional column empty in every
/// row is left out. Times are written relative to `now`.
fn render_table(rows: &[Value], columns: &[Column], now: Now) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| (c.cell)(r, now)).collect())
        .collect();
    let shown: Vec<usize> = (0..columns.len())
        .filter(|i| !columns[*i].optional || cells.iter().any(|r| !r[*i].is_empty()))
        .collect();
    let widths: Vec<usize> = shown
        .iter()
        .map(|i| {
            cells
                .iter()
                .map(|r| r[*i].chars().count())
                .chain([columns[*i].header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cols: Vec<&str>| {
        let padded: Vec<String> = cols
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(shown.iter().map(|i| columns[*i].header).collect())];
    out.extend(
        cells
            .iter()
            .map(|r| line(shown.iter().map(|i| r[*i].as_str()).collect())),
    );
    out.join("\n") + "\n"
}

impl Printer {
    fn json(&self, v: &Value) -> Result<(), CliError> {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
        Ok(())
    }

    /// One object: `key  value` lines on a terminal.
    fn value(&self, v: &Value) -> Result<(), CliError> {
        self.record(v, &[])
    }

    /// One object: `key  value` lines on a terminal, the fields named in `fields` written by
    /// their function ([`render_record`]).
    fn record(&self, v: &Value, fields: &[Field]) -> Result<(), CliError> {
        match (self.format, v.as_object()) {
            (Output::Table, Some(obj)) => {
                print!("{}", render_record(obj, fields));
                Ok(())
            }
            _ => self.json(v),
        }
    }

    /// A list as a table on a terminal; the whole answer as JSON otherwise.
    fn table(&self, rows: &Value, columns: &[Column], whole: &Value) -> Result<(), CliError> {
        match self.format {
            Output::Table => {
                let rows = rows.as_array().cloned().unwrap_or_default();
                print!("{}", render_table(&rows, columns, Utc::now()));
                if let Some(next) = whole["next"].as_str() {
                    println!("(more after {next}: --after {next})");
                }
                Ok(())
            }
            Output::Json => self.json(whole),
        }
    }

    /// Instants, one a line (exact and relative) on a terminal; the whole answer as JSON
    /// otherwise.
    fn instants(&self, items: &Value, whole: &Value) -> Result<(), CliError> {
        match self.format {
            Output::Table => {
                let now = Utc::now();
                for i in items.as_array().into_iter().flatten() {
                    println!("{}", instant(i, now));
                }
                Ok(())
            }
            Output::Json => self.json(whole),
        }
    }

    fn cluster(&self, v: &Value) -> Result<(), CliError> {
        match self.format {
            Output::Table => {
                print!("{}", render_cluster(v, Utc::now()));
                Ok(())
            }
            Output::Json => self.json(v),
        }
    }

    fn done(&self, message: &str) -> Result<(), CliError> {
        match self.format {
            Output::Table => println!("{message}"),
            Output::Json => println!("{}", json!({"ok": true, "message": message})),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_status_lists_the_shards_when_there_are_several() {
        let member = json!({"id": 1, "role": "leader", "voter": true, "peer_addr": "p:1",
                            "api_addr": "a:1", "version": "0.2.0"});
        let shard = |id: u32, leader: u64| {
            json!({"id": id, "leader_id": leader, "term": 3,
                                                  "commit_index": 40 + id})
        };
        let cluster = |shards: Vec<Value>| {
            json!({"cluster_id": "c", "leader_id": 1, "term": 3,
            "commit_index": 40, "format_version": 5, "members": [member.clone()],
            "shards": shards})
        };
        let now = Utc::now();
        let two = render_cluster(&cluster(vec![shard(0, 1), shard(1, 2)]), now);
        let lines: Vec<&str> = two.lines().collect();
        assert_eq!(lines[0], "cluster c  leader 1  term 3  commit 40  format 5");
        assert!(
            lines[1].starts_with("ID  ROLE") && lines[2].starts_with("1   leader"),
            "{two}"
        );
        assert_eq!(lines[4], "SHARD  LEADER  TERM  COMMIT", "{two}");
        assert_eq!(lines[5], "0      1       3     40", "{two}");
        assert_eq!(lines[6], "1      2       3     41", "{two}");
        let one = render_cluster(&cluster(vec![shard(0, 1)]), now);
        assert!(
            !one.contains("SHARD"),
            "one shard is the cluster line: {one}"
        );
    }

    #[test]
    fn edit_flags_build_a_merge_patch() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (base, set, unset, want) in [
            (
                None,
                vec![
                    "labels.team=payments",
                    "retry.max_attempts:=3",
                    "paused:=true",
                ],
                vec!["headers.x-old"],
                Ok(
                    json!({"labels": {"team": "payments"}, "retry": {"max_attempts": 3},
                          "paused": true, "headers": {"x-old": null}}),
                ),
            ),
            (
                None,
                vec!["body={\"a\": 1}", "url=http://x/?q=a:=b"],
                vec![],
                Ok(json!({"body": "{\"a\": 1}", "url": "http://x/?q=a:=b"})),
            ),
            (
                Some(json!({"schedule": {"every": "5m"}})),
                vec!["schedule.start_at=2030-01-01T00:00:00Z"],
                vec!["schedule.cron"],
                Ok(
                    json!({"schedule": {"every": "5m", "start_at": "2030-01-01T00:00:00Z",
                                       "cron": null}}),
                ),
            ),
            (None, vec!["paused:=yes"], vec![], Err(())),
            (None, vec!["novalue"], vec![], Err(())),
            (None, vec!["a..b=1"], vec![], Err(())),
            (None, vec!["body=x", "body.y=1"], vec![], Err(())),
            (None, vec![], vec![], Err(())),
            (Some(json!([1])), vec!["a=1"], vec![], Err(())),
        ] {
            let got = edit_patch(base, &strings(&set), &strings(&unset)).map_err(|_| ());
            assert_eq!(got, want, "{set:?} {unset:?}");
        }
    }

    #[test]
    fn create_flags_override_the_file_and_build_the_schedule() {
        let args = CreateArgs {
            id: Some("a".into()),
            url: Some("http://x/h".into()),
            headers: vec!["X-Key: v".into()],
            schedule: ScheduleArgs {
                cron: Some("*/5 * * * *".into()),
                timezone: Some("Europe/Berlin".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            job_body(&args).unwrap(),
            json!({"id": "a", "url": "http://x/h", "headers": {"X-Key": "v"},
                   "schedule": {"cron": "*/5 * * * *", "timezone": "Europe/Berlin"}})
        );
        let two = ScheduleArgs {
            every: Some("1s".into()),
            at: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert!(matches!(two.to_json(), Err(CliError::Usage(_))));
        let tz_alone = ScheduleArgs {
            timezone: Some("UTC".into()),
            ..Default::default()
        };
        assert!(matches!(tz_alone.to_json(), Err(CliError::Usage(_))));
        assert_eq!(ScheduleArgs::default().to_json().unwrap(), None);
    }

    #[test]
    fn create_flags_set_the_job_hooks_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("job.json");
        std::fs::write(
            &file,
            r#"{"id": "a", "on_success": {"url": "http://old/ok", "headers": {"x": "1"}},
                "on_failure": {"url": "http://kept/failed"}}"#,
        )
        .expect("write");
        let args = CreateArgs {
            file: Some(file.to_str().expect("utf-8").into()),
            on_success: Some("http://x/ok".into()),
            ..Default::default()
        };
        assert_eq!(
            job_body(&args).unwrap(),
            json!({"id": "a", "on_success": {"url": "http://x/ok"},
                   "on_failure": {"url": "http://kept/failed"}})
        );
        let args = CreateArgs {
            on_failure: Some("http://x/failed".into()),
            ..Default::default()
        };
        assert_eq!(
            job_body(&args).unwrap(),
            json!({"on_failure": {"url": "http://x/failed"}})
        );
    }

    #[test]
    fn headers_are_name_colon_or_equals_value() {
        for (flag, want) in [
            ("X-Key: v", ("X-Key", "v")),
            ("authorization=Bearer a:b", ("authorization", "Bearer a:b")),
            ("x-sig: a=b", ("x-sig", "a=b")),
            ("x-empty:", ("x-empty", "")),
        ] {
            let (name, value) = header(flag).expect(flag);
            assert_eq!((name.as_str(), value), (want.0, json!(want.1)), "{flag}");
        }
        assert!(matches!(header("novalue"), Err(CliError::Usage(_))));
    }

    #[test]
    fn notification_flags_build_the_body_and_a_file_is_sent_as_it_is() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let args = NotificationArgs {
            id: "n1".into(),
            url: Some("https://example.com/events".into()),
            headers: strings(&["authorization=Bearer s3cr3t", "x-team: ops"]),
            secret_headers: strings(&["authorization"]),
            events: strings(&["run.failed", "target.circuit_opened"]),
            selector: Some("team=ops".into()),
            ..Default::default()
        };
        assert_eq!(
            notification_body(&args).unwrap(),
            json!({"url": "https://example.com/events",
                   "headers": {"authorization": "Bearer s3cr3t", "x-team": "ops"},
                   "secret_headers": ["authorization"],
                   "events": ["run.failed", "target.circuit_opened"],
                   "selector": "team=ops"})
        );
        let bare = NotificationArgs {
            url: Some("http://x/e".into()),
            events: strings(&["leader.changed"]),
            ..Default::default()
        };
        assert_eq!(
            notification_body(&bare).unwrap(),
            json!({"url": "http://x/e", "events": ["leader.changed"]}),
            "no empty headers, secret_headers or selector"
        );
        let bad = NotificationArgs {
            headers: strings(&["nothing"]),
            ..bare
        };
        assert!(matches!(notification_body(&bad), Err(CliError::Usage(_))));

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("n.json");
        let raw = json!({"url": "http://x/e", "events": ["run.skipped"], "extra": [1]});
        std::fs::write(&file, raw.to_string()).expect("write");
        let from_file = NotificationArgs {
            file: Some(file.to_str().expect("utf-8").into()),
            ..Default::default()
        };
        assert_eq!(notification_body(&from_file).unwrap(), raw);
    }

    #[test]
    fn notification_put_takes_flags_or_a_file_not_both() {
        use clap::error::ErrorKind;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["hookd", "notifications", "put"].iter().chain(args))
                .map(|_| ())
                .map_err(|e| e.kind())
        };
        assert_eq!(
            parse(&["n1", "--url", "http://x/e", "--event", "run.failed"]),
            Ok(())
        );
        assert_eq!(parse(&["n1", "-f", "n.json"]), Ok(()));
        assert_eq!(parse(&["n1", "-f", "-"]), Ok(()));
        assert_eq!(
            parse(&["n1", "-f", "n.json", "--url", "http://x/e"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            parse(&["n1", "-f", "n.json", "--event", "run.failed"]),
            Err(ErrorKind::ArgumentConflict)
        );
        assert_eq!(
            parse(&["n1", "--url", "http://x/e"]),
            Err(ErrorKind::MissingRequiredArgument),
            "at least one --event"
        );
        assert_eq!(
            parse(&["n1", "--event", "run.failed"]),
            Err(ErrorKind::MissingRequiredArgument),
            "a --url"
        );
    }

    #[test]
    fn segments_and_queries_are_encoded() {
        assert_eq!(seg("job-1.a:b_c"), "job-1.a:b_c");
        assert_eq!(seg("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(query(&[("a", None), ("b", None)]), "");
        assert_eq!(
            query(&[
                ("status", Some("failed".into())),
                ("x", None),
                ("limit", Some("5".into()))
            ]),
            "?status=failed&limit=5"
        );
    }

    /// The fixed instant the table tests count from.
    fn now() -> Now {
        DateTime::parse_from_rfc3339("2026-12-07T08:56:00Z")
            .expect("instant")
            .with_timezone(&Utc)
    }

    #[test]
    fn tables_pad_columns_and_leave_out_optional_ones_empty_everywhere() {
        const COLUMNS: &[Column] = &[
            column("ID", |r, _| text(&r["id"])),
            column("STATE", |r, _| text(&r["state"])),
            column("N", |r, _| text(&r["n"])),
            Column {
                optional: true,
                ..column("EXTRA", |r, _| text(&r["extra"]))
            },
        ];
        let rows = vec![
            json!({"id": "a", "state": "active", "n": 1}),
            json!({"id": "longer-id", "state": null, "n": {"k": 2}}),
        ];
        assert_eq!(
            render_table(&rows, COLUMNS, now()),
            "ID         STATE   N\na          active  1\nlonger-id          {\"k\":2}\n"
        );
        let rows = vec![json!({"id": "a", "extra": "x…y"}), json!({"id": "b"})];
        assert_eq!(
            render_table(&rows, COLUMNS, now()),
            "ID  STATE  N  EXTRA\na             x…y\nb\n"
        );
    }

    #[test]
    fn times_are_exact_then_relative_to_now() {
        for (t, want) in [
            ("2026-12-07T09:00:00.000Z", "2026-12-07T09:00:00Z (in 4m)"),
            ("2026-12-07T08:54:00.000Z", "2026-12-07T08:54:00Z (2m ago)"),
            ("2026-12-07T08:56:00.400Z", "2026-12-07T08:56:00.400Z (now)"),
            ("2026-12-07T08:55:59.000Z", "2026-12-07T08:55:59Z (1s ago)"),
            (
                "2026-12-07T12:26:45.000Z",
                "2026-12-07T12:26:45Z (in 3h30m)",
            ),
            (
                "2026-12-07T11:56:59.999Z",
                "2026-12-07T11:56:59.999Z (in 3h)",
            ),
            (
                "2026-12-19T13:00:00.000Z",
                "2026-12-19T13:00:00Z (in 12d4h)",
            ),
            (
                "2025-12-07T08:56:00.000Z",
                "2025-12-07T08:56:00Z (365d ago)",
            ),
            ("2026-12-07T10:56:00+02:00", "2026-12-07T08:56:00Z (now)"),
        ] {
            assert_eq!(instant(&json!(t), now()), want, "{t}");
        }
        assert_eq!(instant(&Value::Null, now()), "");
        assert_eq!(
            instant(&json!("soon"), now()),
            "soon",
            "not an instant: as is"
        );
    }

    #[test]
    fn schedules_are_written_in_words() {
        for (schedule, want) in [
            (json!({"every": "5m"}), "every 5m"),
            (
                json!({"every": "1h30m", "start_at": "2026-12-07T12:00:00.000Z"}),
                "every 1h30m from 2026-12-07T12:00:00Z (in 3h4m)",
            ),
            (
                json!({"at": "2026-12-07T09:00:00.000Z"}),
                "at 2026-12-07T09:00:00Z (in 4m)",
            ),
            (json!({"after": "30s"}), "after 30s"),
            (
                json!({"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}),
                "At 09:00, Monday through Friday (Europe/Berlin)",
            ),
            (json!({"cron": "*/5 * * * *"}), "Every 5 minutes (UTC)"),
            (
                json!({"cron": "0 9 * * *", "timezone": "UTC", "start_at": "2026-12-07T12:00:00.000Z",
                       "end_at": "2026-12-08T12:00:00.000Z", "max_runs": 3}),
                "At 09:00 (UTC) from 2026-12-07T12:00:00Z (in 3h4m) \
                 until 2026-12-08T12:00:00Z (in 1d3h), first 3 runs",
            ),
            // An expression without words keeps its text.
            (
                json!({"cron": "0 0 */2 * 1", "timezone": "UTC"}),
                "cron 0 0 */2 * 1 (UTC)",
            ),
            (
                json!({"every": "1m", "max_runs": 1}),
                "every 1m, first run only",
            ),
            // Shapes it does not know keep every field, as JSON.
            (
                json!({"every": "5m", "timezone": "UTC"}),
                r#"{"every":"5m","timezone":"UTC"}"#,
            ),
            (json!({"hourly": true}), r#"{"hourly":true}"#),
            (json!("weird"), "weird"),
            (Value::Null, ""),
        ] {
            assert_eq!(schedule_words(&schedule, now()), want, "{schedule}");
        }
    }

    #[test]
    fn attempts_are_a_count_and_the_last_outcome() {
        let attempt = |code: Value, error: Value| {
            json!({"n": 1, "started_at": "2026-12-07T08:55:00.000Z", "duration_ms": 12,
                   "status_code": code, "error": error, "node_id": 1})
        };
        let refused = "connect error: error sending request: client error (Connect): \
                       tcp connect error: Connection refused (os error 111)";
        for (list, want) in [
            (json!([]), "0".to_owned()),
            (
                json!([attempt(json!(200), Value::Null)]),
                "1 (last 200)".into(),
            ),
            (
                json!([
                    attempt(Value::Null, json!("timeout")),
                    attempt(json!(500), Value::Null),
                    attempt(json!(503), json!("status 503"))
                ]),
                "3 (last 503: status 503)".into(),
            ),
            (
                json!([attempt(Value::Null, json!(refused))]),
                "1 (last: connect error: … Connection refused (os error 111))".into(),
            ),
            (json!([attempt(Value::Null, Value::Null)]), "1".into()),
            (Value::Null, String::new()),
        ] {
            assert_eq!(attempts(&list), want, "{list}");
        }
    }

    #[test]
    fn long_errors_lose_their_middle_and_labels_their_end() {
        assert_eq!(ellipsize("short", 10), "short");
        assert_eq!(ellipsize("abcdefghijklmnopqrstuvwxyz", 10), "ab … vwxyz");
        assert_eq!(
            ellipsize("one two three four five six seven eight nine ten", 30),
            "one two … eight nine ten"
        );
        for s in [
            "x".repeat(200),
            "é ".repeat(100),
            "a b c d e f g h i j k l".into(),
        ] {
            for max in 10..40 {
                assert!(ellipsize(&s, max).chars().count() <= max, "{s:?} at {max}");
            }
        }
        assert_eq!(
            labels(&json!({"team": "billing", "env": "prod"})),
            "env=prod,team=billing"
        );
        assert_eq!(labels(&json!({})), "");
        assert_eq!(labels(&Value::Null), "", "absent");
        let many = labels(&json!({"a": "x".repeat(30), "b": "y".repeat(30)}));
        assert_eq!(many.chars().count(), LABELS_WIDTH);
        assert!(many.starts_with("a=xxx") && many.ends_with('…'), "{many}");
    }

    #[test]
    fn job_run_and_target_tables_read_as_words() {
        let jobs = vec![
            json!({"id": "standup", "state": "active", "url": "https://example.com/h",
                   "schedule": {"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
                   "next_fire_at": "2026-12-08T08:00:00.000Z", "labels": {"team": "ops"}}),
            json!({"id": "once", "state": "completed", "url": "http://127.0.0.1:9/h",
                   "schedule": {"at": "2026-12-07T08:00:00.000Z"}, "next_fire_at": null}),
        ];
        assert_eq!(
            render_table(&jobs, JOB_COLUMNS, now()),
            "\
ID       STATE      SCHEDULE                                         NEXT                             URL                    LABELS
standup  active     At 09:00, Monday through Friday (Europe/Berlin)  2026-12-08T08:00:00Z (in 23h4m)  https://example.com/h  team=ops
once     completed  at 2026-12-07T08:00:00Z (56m ago)                                                 http://127.0.0.1:9/h
"
        );
        let no_labels = render_table(&jobs[1..], JOB_COLUMNS, now());
        assert!(!no_labels.contains("LABELS"), "{no_labels}");

        let runs = vec![
            json!({"id": "run_1_a", "job_id": "standup", "status": "retrying", "manual": false,
                   "scheduled_at": "2026-12-07T08:54:00.000Z",
                   "next_attempt_at": "2026-12-07T08:56:30.000Z",
                   "attempts": [{"n": 1, "status_code": 503, "error": null}]}),
            json!({"id": "run_1_b", "job_id": "standup", "status": "skipped", "manual": false,
                   "scheduled_at": "2026-12-07T08:00:00.000Z", "next_attempt_at": null,
                   "attempts": [], "skipped": {"count": 12,
                   "first_scheduled_at": "2026-12-07T07:00:00.000Z",
                   "last_scheduled_at": "2026-12-07T08:00:00.000Z"}}),
            json!({"id": "run_1_c", "job_id": "standup", "status": "succeeded", "manual": true,
                   "scheduled_at": "2026-12-07T06:56:00.000Z", "next_attempt_at": null,
                   "attempts": [{"n": 1, "status_code": 200, "error": null}]}),
            json!({"id": "run_1_d", "job_id": "standup", "status": "skipped", "manual": false,
                   "scheduled_at": "2026-12-07T06:55:00.000Z", "skip_reason": "overlap",
                   "attempts": []}),
            json!({"id": "run_1_e", "job_id": "standup", "status": "failed", "manual": false,
                   "scheduled_at": "2026-12-07T06:54:00.000Z", "error": "superseded",
                   "attempts": [{"n": 1, "status_code": 503, "error": null}]}),
        ];
        assert_eq!(
            render_table(&runs, RUN_COLUMNS, now()),
            "\
RUN      JOB      STATUS                                SCHEDULED                        ATTEMPTS      NEXT_ATTEMPT
run_1_a  standup  retrying                              2026-12-07T08:54:00Z (2m ago)    1 (last 503)  2026-12-07T08:56:30Z (in 30s)
run_1_b  standup  skipped 12 from 2026-12-07T07:00:00Z  2026-12-07T08:00:00Z (56m ago)   0
run_1_c  standup  succeeded (manual)                    2026-12-07T06:56:00Z (2h ago)    1 (last 200)
run_1_d  standup  skipped (overlap)                     2026-12-07T06:55:00Z (2h1m ago)  0
run_1_e  standup  failed (superseded)                   2026-12-07T06:54:00Z (2h2m ago)  1 (last 503)
"
        );

        let targets = vec![
            json!({"target": "example.com:443", "in_flight": 0, "waiting": 3,
                   "circuit": "open", "open_until": "2026-12-07T08:56:20.000Z",
                   "consecutive_failures": 0, "last_error": "timeout"}),
            json!({"target": "127.0.0.1:9", "in_flight": 1, "waiting": 0,
                   "circuit": "closed", "open_until": null,
                   "consecutive_failures": 2, "last_error": null,
                   "policy": {"rate_per_s": 2.5, "burst": 3, "max_concurrency": 4}}),
        ];
        assert_eq!(
            render_table(&targets, TARGET_COLUMNS, now()),
            "\
TARGET           IN_FLIGHT  WAITING  CIRCUIT                                   LAST_ERROR  POLICY
example.com:443  0          3        open until 2026-12-07T08:56:20Z (in 20s)  timeout
127.0.0.1:9      1          0        closed (2 failures)                                   2.5/s burst 3, 4 in flight
"
        );
    }

    #[test]
    fn jobs_show_their_hooks_and_notifications_their_events_as_words() {
        let job = json!({"id": "standup", "url": "https://example.com/h",
                         "on_success": {"url": "https://example.com/ok"},
                         "on_failure": {"url": "https://example.com/failed",
                                        "headers": {"authorization": "***", "x-team": "ops"},
                                        "secret_headers": ["authorization"]}});
        assert_eq!(
            render_record(job.as_object().expect("object"), JOB_FIELDS),
            "\
id          standup
on_failure  https://example.com/failed (headers: authorization, x-team)
on_success  https://example.com/ok
url         https://example.com/h
"
        );
        assert_eq!(hook(&json!({"headers": {}})), r#"{"headers":{}}"#, "no URL");
        assert_eq!(hook(&Value::Null), "");

        let notification = json!({"id": "n1", "url": "https://example.com/events",
                                  "headers": {"authorization": "***"},
                                  "secret_headers": ["authorization"],
                                  "events": ["run.failed", "run.skipped"], "version": 2});
        assert_eq!(
            render_record(
                notification.as_object().expect("object"),
                NOTIFICATION_FIELDS
            ),
            "\
events          run.failed,run.skipped
headers         {\"authorization\":\"***\"}
id              n1
secret_headers  authorization
url             https://example.com/events
version         2
"
        );
        assert_eq!(joined(&json!([])), "");
        assert_eq!(joined(&json!("run.failed")), "run.failed", "not a list");

        let notifications = vec![
            notification,
            json!({"id": "all-nodes", "url": "http://127.0.0.1:9/e",
                   "events": ["node.unreachable", "node.recovered"], "selector": "team=ops"}),
        ];
        assert_eq!(
            render_table(&notifications, NOTIFICATION_COLUMNS, now()),
            "\
ID         EVENTS                           SELECTOR  URL
n1         run.failed,run.skipped           -         https://example.com/events
all-nodes  node.unreachable,node.recovered  team=ops  http://127.0.0.1:9/e
"
        );
    }
}

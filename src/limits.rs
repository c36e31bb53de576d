//! Every bound on what a client or a peer may send (sizes, counts, ranges), the defaults of the
//! job fields SPEC names, and the timings SPEC promises, in one place, named with the unit last.
//! Tuning constants of one subsystem (dispatcher pacing, target queues, peer timeouts, retry
//! pauses) live beside the code they tune.

use std::time::Duration;

/// Largest request body the public API reads; larger ones get `413`.
pub const REQUEST_BODY_BYTES_MAX: usize = 1 << 20;
/// How long a request body may take to arrive (API, and peer port with its larger bodies);
/// then `408`.
pub const API_BODY_READ: Duration = Duration::from_secs(10);
pub const PEER_BODY_READ: Duration = Duration::from_secs(30);
/// Largest webhook body a job may carry.
pub const JOB_BODY_BYTES_MAX: usize = 256 << 10;
/// Job ids: `[A-Za-z0-9._:-]{1,128}`.
pub const JOB_ID_CHARS_MAX: usize = 128;
pub const URL_BYTES_MAX: usize = 8 << 10;
pub const HEADERS_COUNT_MAX: usize = 64;
pub const HEADER_BYTES_MAX: usize = 8 << 10;
pub const CRON_EXPR_BYTES_MAX: usize = 256;
/// Instants a user may give: 1970 to the end of 9999, in unix milliseconds.
pub const INSTANT_MAX_MS: i64 = 253_402_300_799_999;
/// Run ids (`run_…`) are far shorter; anything longer is not one.
pub const RUN_ID_BYTES_MAX: usize = 512;
/// Runs kept per job (`--run-retention`).
pub const RUN_RETENTION_MAX: u32 = 100_000;
/// Most runs one claim command carries, and most attempts one record command carries.
pub const CLAIM_ITEMS_MAX: usize = 512;
pub const RECORD_ITEMS_MAX: usize = 256;
/// Most ids one part of a bulk request (one `Bulk` command, one log entry) carries. 512 made
/// followers slow to apply each part on 2 cores (AppendEntries timeouts, other writes' p99
/// 162 ms during a 100k pause); 128 kept it at 44 ms for 6 % more time
/// (docs/performance.md#bulk-pause).
pub const BULK_PART_IDS_MAX: usize = 128;
/// How long an `Idempotency-Key` is remembered, and how many are at most (beyond that the
/// oldest are forgotten early).
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;
pub const IDEMPOTENCY_KEYS_MAX: u64 = 1_000_000;
/// `Idempotency-Key`: 1 to this many visible ASCII characters.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// Largest answer remembered whole for a key (a bulk request's).
pub const IDEMPOTENT_ANSWER_BYTES_MAX: usize = 16 << 10;
/// Bounds of a target policy, and of a target's `host:port`.
pub const TARGET_CONCURRENCY_MAX: u32 = 10_000;
/// In thousandths of an attempt a second.
pub const TARGET_RATE_MAX_MILLI: u64 = 1_000_000_000;
pub const TARGET_BURST_MAX: u32 = 1_000_000;
pub const TARGET_BYTES_MAX: usize = 300;
/// Notifications (`/v1/notifications`) a cluster keeps at most.
pub const NOTIFICATIONS_MAX: usize = 100;
/// Open circuits cluster events remember, so as to tell their closing.
pub const CLUSTER_EVENT_TARGETS_MAX: usize = 10_000;
/// A job's `jitter` is at most this (and at most its schedule's period).
pub const JITTER_MAX: Duration = Duration::from_secs(3600);
/// A schedule's `max_runs` is at most this.
pub const MAX_RUNS_MAX: u32 = 100_000;
/// Most versions an `If-Match` header may list.
pub const IF_MATCH_VERSIONS_MAX: usize = 16;
/// Most ids a bulk request may list by name (`ids`).
pub const BULK_IDS_MAX: usize = 10_000;
/// Longest error text an attempt records.
pub const ATTEMPT_ERROR_BYTES_MAX: usize = 4 << 10;
/// Longest node address or cluster id a command may record.
pub const NODE_TEXT_BYTES_MAX: usize = 1024;
/// How far a forwarded command's time stamp may lie from the clock of the node that checks it.
pub const COMMAND_CLOCK_SKEW_MAX: Duration = Duration::from_secs(24 * 3600);

pub const DELIVERY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
pub const DELIVERY_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// Longest connect of a delivery (inside its total timeout, so `min(timeout, this)`).
pub const DELIVERY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most of a target's response body a delivery reads; then the connection is closed.
pub const RESPONSE_BODY_BYTES_MAX: usize = 64 << 10;

pub const RETRY_ATTEMPTS_DEFAULT: u32 = 5;
pub const RETRY_ATTEMPTS_MAX: u32 = 100;
pub const RETRY_INITIAL_BACKOFF_DEFAULT: Duration = Duration::from_secs(1);
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(10);
pub const RETRY_MAX_BACKOFF_DEFAULT: Duration = Duration::from_secs(3600);
pub const RETRY_MAX_BACKOFF_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
pub const RETRY_MULTIPLIER_DEFAULT: f64 = 2.0;
pub const RETRY_MULTIPLIER_MAX: f64 = 100.0;
pub const RETRY_JITTER_DEFAULT: f64 = 0.2;

pub const MISFIRE_GRACE_DEFAULT: Duration = Duration::from_secs(60);
pub const MISFIRE_GRACE_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MISFIRE_CATCHUP_WINDOW_DEFAULT: Duration = Duration::from_secs(24 * 3600);
pub const MISFIRE_CATCHUP_WINDOW_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Longest `after` or `every` accepted (ten years).
pub const SCHEDULE_SPAN_MAX: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

pub const LIST_LIMIT_DEFAULT: usize = 100;
pub const LIST_LIMIT_MAX: usize = 1000;

pub const PREVIEW_COUNT_DEFAULT: usize = 10;
pub const PREVIEW_COUNT_MAX: usize = 1000;

/// Time allowed for a graceful shutdown before the process exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Runs due within this horizon are claimed through Raft ahead of their instant.
pub const DISPATCH_HORIZON: Duration = Duration::from_millis(300);

/// Labels a job may carry, and their sizes (keys in ASCII, values in characters).
pub const LABELS_COUNT_MAX: usize = 32;
pub const LABEL_KEY_CHARS_MAX: usize = 63;
pub const LABEL_VALUE_CHARS_MAX: usize = 256;
/// A label selector's size, requirements, and values in one `in (…)` set.
pub const SELECTOR_BYTES_MAX: usize = 4096;
pub const SELECTOR_REQUIREMENTS_MAX: usize = 32;
pub const SELECTOR_VALUES_MAX: usize = 64;
/// Index entries and records one filtered page may read before it answers with what it found
/// and a cursor to go on from.
pub const PAGE_SCAN_BUDGET: usize = 4096;

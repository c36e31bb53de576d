//! Prometheus metrics: the recorder is installed once per process; `/metrics` renders it.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::core::command::{Attempt, AttemptResult};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Lateness buckets in seconds, from 1 ms to 1 min.
const LATENESS_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0,
];

/// Installs the recorder (first call) and returns the handle that renders it.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("hookd_delivery_lateness_seconds".into()),
                    &LATENESS_BUCKETS,
                )
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .as_ref()
}

/// Records one delivery attempt; first attempts also record their lateness.
pub fn attempt(a: &Attempt, due_ms: i64, n: u32) {
    let outcome = match a.status_code {
        Some(s) if (200..300).contains(&s) => "success",
        Some(_) => "http_error",
        None => "transport_error",
    };
    counter!("hookd_attempts_total", "outcome" => outcome).increment(1);
    if let Some(late_ms) = lateness_ms(a, due_ms, n) {
        histogram!("hookd_delivery_lateness_seconds").record(late_ms as f64 / 1000.0);
    }
}

/// How late attempt `n` of a run started, if it is the first (due at `due_ms`); later attempts
/// start when their backoff says, so only the first tells how late the dispatcher is. One
/// definition for `/metrics` and `GET /v1/stats`.
pub fn lateness_ms(a: &Attempt, due_ms: i64, n: u32) -> Option<u64> {
    (n == 1).then(|| a.started_at_ms.saturating_sub(due_ms).max(0) as u64)
}

/// Counts a panic caught in one of the node's tasks (`attempt`, …).
pub fn task_panicked(task: &'static str) {
    counter!("hookd_task_panics_total", "task" => task).increment(1);
}

/// Records what an attempt meant for its run.
pub fn run_result(r: &AttemptResult) {
    match r {
        AttemptResult::Succeeded => counter!("hookd_runs_delivered_total").increment(1),
        AttemptResult::Failed => counter!("hookd_runs_failed_total").increment(1),
        AttemptResult::RetryAt(_) => counter!("hookd_retries_scheduled_total").increment(1),
    }
}

/// Records runs skipped by the misfire policy.
pub fn skipped(count: u64) {
    counter!("hookd_runs_skipped_total").increment(count);
}

/// Totals over the dispatcher's targets (no label per target, so cardinality stays fixed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetTotals {
    pub targets: usize,
    pub in_flight: usize,
    pub waiting: usize,
    pub open: usize,
    pub half_open: usize,
}

/// What one shard's dispatcher last reported for the node's gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ShardGauges {
    totals: TargetTotals,
    claim_rate: f64,
}

/// The latest figures of each shard's dispatcher on this node: the gauges are their sums, so
/// no shard's report overwrites another's.
static SHARD_GAUGES: Mutex<BTreeMap<u32, ShardGauges>> = Mutex::new(BTreeMap::new());

/// The node's figures: the sum of its shards'. A target several shards send to counts once
/// per shard in `targets`.
fn node_gauges<'a>(shards: impl Iterator<Item = &'a ShardGauges>) -> ShardGauges {
    shards.fold(ShardGauges::default(), |sum, g| ShardGauges {
        totals: TargetTotals {
            targets: sum.totals.targets + g.totals.targets,
            in_flight: sum.totals.in_flight + g.totals.in_flight,
            waiting: sum.totals.waiting + g.totals.waiting,
            open: sum.totals.open + g.totals.open,
            half_open: sum.totals.half_open + g.totals.half_open,
        },
        claim_rate: sum.claim_rate + g.claim_rate,
    })
}

/// Updates shard `shard`'s figures and sets the node's gauges.
fn report(shard: u32, update: impl FnOnce(&mut ShardGauges)) {
    let node = {
        let mut all = SHARD_GAUGES.lock().unwrap_or_else(|p| p.into_inner());
        update(all.entry(shard).or_default());
        node_gauges(all.values())
    };
    let t = node.totals;
    gauge!("hookd_targets").set(t.targets as f64);
    gauge!("hookd_deliveries_in_flight").set(t.in_flight as f64);
    gauge!("hookd_runs_waiting").set(t.waiting as f64);
    gauge!("hookd_target_circuits", "state" => "open").set(t.open as f64);
    gauge!("hookd_target_circuits", "state" => "half_open").set(t.half_open as f64);
    gauge!("hookd_dispatch_claim_rate").set(node.claim_rate);
}

/// Deliveries in flight from shard `shard`'s dispatcher.
pub fn in_flight(shard: u32, n: usize) {
    report(shard, |g| g.totals.in_flight = n);
}

/// Shard `shard`'s dispatcher's target totals.
pub fn targets(shard: u32, t: &TargetTotals) {
    report(shard, |g| g.totals = *t);
}

/// Runs per second shard `shard`'s dispatcher may claim now (adapts to the claims' commit
/// latency).
pub fn claim_rate(shard: u32, per_s: f64) {
    report(shard, |g| g.claim_rate = per_s);
}

/// Runs whose claim committed only after they were due (their Raft round was late).
pub fn claimed_late(n: u64) {
    counter!("hookd_runs_claimed_late_total").increment(n);
}

/// The lease gate closed while attempts were ready to start (this node could not confirm it
/// still leads within the lease): each closure pauses delivery until a quorum acks again.
pub fn lease_gate_closed() {
    counter!("hookd_dispatch_lease_gate_closed_total").increment(1);
}

/// A target's circuit opened.
pub fn circuit_opened() {
    counter!("hookd_target_circuit_opened_total").increment(1);
}

/// The notAfter (Unix seconds) of the certificate a listener serves (`api` or `peer`).
pub fn tls_expiry(listener: &'static str, not_after: i64) {
    gauge!("hookd_tls_cert_expiry_timestamp_seconds", "listener" => listener).set(not_after as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_s_gauges_add_up_its_shards_figures() {
        let shard = |in_flight, waiting, open, claim_rate| ShardGauges {
            totals: TargetTotals {
                targets: 2,
                in_flight,
                waiting,
                open,
                half_open: 0,
            },
            claim_rate,
        };
        let shards = [shard(3, 10, 1, 100.0), shard(5, 0, 0, 50.5)];
        let node = node_gauges(shards.iter());
        assert_eq!(
            node.totals,
            TargetTotals {
                targets: 4,
                in_flight: 8,
                waiting: 10,
                open: 1,
                half_open: 0
            }
        );
        assert_eq!(node.claim_rate, 150.5);
        assert_eq!(node_gauges([].iter()), ShardGauges::default());
    }
}

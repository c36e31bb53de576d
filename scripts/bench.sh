#!/usr/bin/env bash
# Measures the release build on this machine: fresh-cluster election, create latency with 1, 32
# and 64 clients, creates beside a three-member etcd 3.4 (Debian's etcd-server, fsync on) with
# the same client (wrk), connections (1 and 64) and value, with hookd/etcd ratios; leader
# SIGKILL → first successful write; fire lateness at 100 and 1,000 due
# runs/s and leader SIGKILL → first delivery by the new leader; then the workload faults of SPEC
# §5 with nginx (Debian's package) as the healthy target: healthy lateness quiet and beside a
# black-holed target (2,000 runs/s aimed at it), the leader's RSS growth under endless-body
# targets, the sustainable rate (the highest of SUSTAINABLE_RATES delivered in full with p99
# lateness ≤ 100 ms), and overload at 2× that rate (or OVERLOAD_RATE) for 30 s; then scale:
# SCALE_JOBS jobs (default 1M) created at 64 clients (rate over time, RSS, disk), a restart of
# every node (time to ready) and SCALE_HERD one-shot jobs (default 100k) due at one instant;
# then operations beside OPS_JOBS jobs (default 100k): backup save, restore into a new cluster,
# adding and removing a node, a rolling restart (writes refused, runs missed, lateness).
# Prints a report; JSON summaries go to target/bench/. Every phase is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light) # the healthy target
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)  # the reference for writes
command -v wrk >/dev/null 2>&1 || missing+=(wrk)           # the one client for both
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bench.sh: installing ${missing[*]}" >&2
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release --locked -p hookd -p hookd-jepsen
mkdir -p target/bench
target/release/hookd-bench --hookd target/release/hookd --out target/bench/api.json
target/release/hookd-dispatch-bench --hookd target/release/hookd --out target/bench/dispatch.json
target/release/hookd-isolation-bench --hookd target/release/hookd --nginx "$(command -v nginx)" \
    --sustainable-rates "${SUSTAINABLE_RATES:-1000,2000,2500,3000,3500,4000,4500,5000,6000}" \
    --overload-rate "${OVERLOAD_RATE:-0}" --out target/bench/isolation.json
target/release/hookd-scale-bench --hookd target/release/hookd --nginx "$(command -v nginx)" \
    --jobs "${SCALE_JOBS:-1000000}" --herd "${SCALE_HERD:-100000}" --out target/bench/scale.json
target/release/hookd-scale-bench --hookd target/release/hookd --nginx "$(command -v nginx)" \
    --jobs "${OPS_JOBS:-100000}" --herd 0 --ops --out target/bench/ops.json

#!/usr/bin/env bash
# Measures the release build on this machine: fresh-cluster election, create latency with 1, 32
# and 64 clients, leader SIGKILL → first successful write; then fire lateness at 100 and 1,000 due
# runs/s and leader SIGKILL → first delivery by the new leader. Prints a report; JSON summaries go
# to target/bench/. Bounded: a few thousand requests, 10 s per rate, five failovers each.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p hookd -p hookd-jepsen
mkdir -p target/bench
target/release/hookd-bench --hookd target/release/hookd --out target/bench/api.json
target/release/hookd-dispatch-bench --hookd target/release/hookd --out target/bench/dispatch.json

#!/usr/bin/env bash
# Measures the release build on this machine: fresh-cluster election, create latency with 1, 32
# and 64 clients, and leader SIGKILL → first successful write. Prints a report; the JSON summary
# goes to target/bench/report.json. Bounded: a few thousand requests and five failovers.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p hookd -p hookd-jepsen
mkdir -p target/bench
exec target/release/hookd-bench --hookd target/release/hookd --out target/bench/report.json "$@"

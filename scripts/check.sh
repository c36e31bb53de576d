#!/usr/bin/env bash
# The one gate: formatting, lints, every test, then the chaos smoke run. CI runs exactly this
# (see .ci/run); run it before you push. Needs the Rust toolchain; the smoke run installs
# iptables/iproute2 from Debian's packages when missing and uses network namespaces as root.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
# The packaging test runs systemd-analyze (Debian package systemd); the API test runs
# schemathesis (PyPI) from a venv under target/, in a network namespace (unshare, iproute2).
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v ip >/dev/null || missing+=(iproute2)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -x target/schemathesis/bin/schemathesis ]; then
    rm -rf target/schemathesis
    python3 -m venv target/schemathesis
    timeout 600 target/schemathesis/bin/pip install -q schemathesis==4.32.5
fi
cargo test --workspace --locked

step "chaos smoke run (scripts/jepsen.sh smoke)"
bash scripts/jepsen.sh smoke

#!/usr/bin/env bash
# The one gate: formatting, lints, every test, the upgrade test, then the chaos smoke runs. CI
# runs exactly this (see .ci/run); run it before you push. Needs the Rust toolchain; the smoke run installs
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
# schemathesis and openapi-spec-validator (PyPI) from venvs under target/, in a network namespace (unshare, iproute2);
# the console test (tests/it/ui.rs) drives headless Chromium through chromedriver (Debian packages
# chromium and chromium-driver) and leaves its screenshots in target/ui-screenshots/.
missing=()
command -v systemd-analyze >/dev/null || missing+=(systemd)
{ command -v chromium && command -v chromedriver; } >/dev/null || missing+=(chromium chromium-driver)
command -v ip >/dev/null || missing+=(iproute2)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -x target/schemathesis/bin/schemathesis ]; then
    rm -rf target/schemathesis
    python3 -m venv target/schemathesis
    timeout 600 target/schemathesis/bin/pip install -q schemathesis==4.32.5
fi
# openapi-spec-validator (PyPI), an independent check of /openapi.json, in a venv of its own.
if [ ! -x target/openapi-validator/bin/openapi-spec-validator ]; then
    rm -rf target/openapi-validator
    python3 -m venv target/openapi-validator
    timeout 600 target/openapi-validator/bin/pip install -q openapi-spec-validator==0.9.0
fi
# Every test binary runs even when one fails, and the smoke runs after failed tests too, so one
# gate run reports every failure; the gate still exits non-zero if anything failed.
failed=()
cargo test --workspace --locked --no-fail-fast || failed+=("cargo test")

step "upgrade test (scripts/upgrade-test.sh)"
# Builds the previous release from its tag (about 5 min the first time, then kept in
# target/previous-release) and upgrades, rolls back and upgrades a cluster of it (about 30 s).
bash scripts/upgrade-test.sh || failed+=("upgrade test")

step "chaos smoke runs (scripts/jepsen.sh smoke: six shards, the default; then one)"
# About 5 min each. Six shards is what a new cluster gets; one is what a cluster made by v0.1.0
# keeps after its upgrade.
bash scripts/jepsen.sh smoke || failed+=("chaos smoke, six shards")
bash scripts/jepsen.sh smoke --shards 1 || failed+=("chaos smoke, one shard")

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\ncheck.sh: FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi

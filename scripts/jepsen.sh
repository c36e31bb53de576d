#!/usr/bin/env bash
# The chaos harness (CHAOS.md): builds what it needs and runs a profile against a three-node
# cluster of the release hookd binary in network namespaces (falls back to loopback + a
# userspace proxy when not root or namespaces fail, and says so in the report).
#
#   scripts/jepsen.sh smoke   [hookd-jepsen run flags...]   95 s of faults (one membership change), <= 3 min wall
#   scripts/jepsen.sh soak    [flags...]                    30 min of faults
#   scripts/jepsen.sh planted [flags...]                    smoke once per planted bug; each must fail
#   scripts/jepsen.sh check DIR                             re-run the checkers on a stored run
#
# Run folders go to jepsen/store/<run>/ (REPORT.md, results.json, histories, node logs).
# The last line of smoke/soak is `N passed, N failed`; the exit code is non-zero on any invalid
# verdict. Every fault heals itself; namespaces are removed at start and on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-smoke}"
shift || true
# Binaries come from $CARGO_TARGET_DIR (default target/); the planted hookd from its own dir.
tgt="${CARGO_TARGET_DIR:-target}"
planted_tgt="${JEPSEN_PLANTED_TARGET_DIR:-target/planted}"

# iptables and iproute2 from Debian's packages, if missing (we run as root in CI).
ensure_tools() {
    if [ "$(id -u)" != 0 ]; then
        echo "jepsen.sh: not root — the harness will use its loopback proxy fallback" >&2
        return
    fi
    local missing=()
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "jepsen.sh: installing ${missing[*]}" >&2
        timeout 300 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

build() {
    # The harness and the normal release hookd share target/; the planted hookd lives in its
    # own target dir so the normal release binary is never rebuilt with bugs in it.
    cargo build --release --locked -p hookd -p hookd-jepsen --bin hookd --bin hookd-jepsen
}

cleanup() {
    [ -x "$tgt/release/hookd-jepsen" ] && timeout 60 "$tgt/release/hookd-jepsen" cleanup >/dev/null 2>&1 || true
}

case "$profile" in
    smoke | soak)
        ensure_tools
        build
        trap cleanup EXIT INT TERM
        cleanup
        limit=300
        [ "$profile" = soak ] && limit=4200
        timeout --signal=INT --kill-after=30 "$limit" \
            "$tgt/release/hookd-jepsen" run --profile "$profile" --hookd "$tgt/release/hookd" "$@"
        ;;
    planted)
        ensure_tools
        build
        CARGO_TARGET_DIR="$planted_tgt" cargo build --release --locked -p hookd --features planted --bin hookd
        trap cleanup EXIT INT TERM
        caught=0
        total=0
        summary=""
        # Each planted bug must be caught by the checker(s) its bug class belongs to, so an
        # unrelated failure (a real hookd bug) does not count as catching it.
        declare -A expect=(
            [lease_gate]="duplicates after_delete"
            [ack_before_flush]="durability linearizable_api"
            [ignore_open_claims]="delivery timeliness"
            [stale_follower_reads]="linearizable_api"
            [global_queue]="isolation"
        )
        for plant in lease_gate ack_before_flush ignore_open_claims stale_follower_reads global_queue; do
            total=$((total + 1))
            cleanup
            log="$(mktemp)"
            set +e
            timeout --signal=INT --kill-after=30 300 \
                "$tgt/release/hookd-jepsen" run --profile smoke --hookd "$planted_tgt/release/hookd" \
                --plant "$plant" "$@" 2>&1 | tee "$log"
            rc=${PIPESTATUS[0]}
            set -e
            dir="$(grep -m1 '^jepsen/store/' "$log" || true)"
            failed_checkers="$(grep -E '^  (INVALID|unknown)' "$log" | awk '{print $2}' | paste -sd, - || true)"
            rm -f "$log"
            hit=""
            for c in ${expect[$plant]}; do
                case ",$failed_checkers," in *",$c,"*) hit="$c" ;; esac
            done
            if [ "$rc" = 1 ] && [ -n "$hit" ]; then
                caught=$((caught + 1))
                summary+="  caught    $plant by ${failed_checkers} ($dir)"$'\n'
            else
                summary+="  MISSED    $plant (expected ${expect[$plant]}; failed: ${failed_checkers:-none}; $dir)"$'\n'
            fi
        done
        printf '\nplanted bugs:\n%s' "$summary"
        # The harness passes when it catches every planted bug.
        echo "$caught passed, $((total - caught)) failed"
        [ "$caught" = "$total" ]
        ;;
    check)
        cargo build --release --locked -p hookd-jepsen --bin hookd-jepsen
        "$tgt/release/hookd-jepsen" check "$@"
        ;;
    *)
        echo "usage: scripts/jepsen.sh smoke|soak|planted|check [args...]" >&2
        exit 2
        ;;
esac

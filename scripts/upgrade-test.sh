#!/usr/bin/env bash
# The upgrade test (SPEC §5, §6): builds the newest release named in CHANGELOG.md from its git
# tag (debug, in a target dir of its own, kept while the tag's commit is the same), then runs
# `hookd-upgrade-test`: a cluster of that release under writes and a ticking job is upgraded
# node by node to the tree's build, rolled back node by node, upgraded again and finalized.
# `--build-only` stops after the builds.
set -euo pipefail
cd "$(dirname "$0")/.."

# The newest released heading ("## vX.Y.Z (date, commit abc1234)"), and its commit: by the tag,
# or by the commit the heading names in a clone that did not bring the tags.
heading=$(grep -m1 -E '^## v[0-9]+\.[0-9]+\.[0-9]+' CHANGELOG.md)
tag=$(grep -oE 'v[0-9]+\.[0-9]+\.[0-9]+' <<<"$heading" | head -1)
named=$(grep -oE 'commit [0-9a-f]{7,40}' <<<"$heading" | cut -d' ' -f2 || true)
commit=$(git rev-parse -q --verify "$tag^{commit}" 2>/dev/null ||
    git rev-parse -q --verify "${named:-none}^{commit}" 2>/dev/null) || {
    echo "upgrade-test: neither tag $tag nor commit ${named:-?} is in this clone" >&2
    exit 1
}

dir=target/previous-release
previous=$dir/target/debug/hookd
if [ "$(cat "$dir/built-from" 2>/dev/null)" != "$commit" ] || [ ! -x "$previous" ]; then
    echo "upgrade-test: building $tag ($commit) in $dir"
    rm -rf "$dir/src" "$dir/built-from"
    mkdir -p "$dir/src"
    git archive "$commit" | tar -x -C "$dir/src"
    started=$(date +%s)
    # No debug info: the binary is only run, and the build is a third faster without it.
    (cd "$dir/src" && CARGO_TARGET_DIR=../target CARGO_PROFILE_DEV_DEBUG=0 \
        cargo build --locked --bin hookd)
    echo "$commit" >"$dir/built-from"
    echo "upgrade-test: built $tag in $(($(date +%s) - started)) s"
fi
cargo build --locked --bin hookd -p hookd -p hookd-jepsen --bin hookd-upgrade-test
[ "${1:-}" = "--build-only" ] && exit 0

exec target/debug/hookd-upgrade-test --previous "$previous" --previous-version "${tag#v}" \
    --current target/debug/hookd

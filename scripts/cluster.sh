#!/usr/bin/env bash
# A local three-node hookd cluster on 127.0.0.1, for trying things out.
#
#   scripts/cluster.sh up       build the release binary if needed, start nodes 1-3
#   scripts/cluster.sh status   show which nodes run and who leads
#   scripts/cluster.sh down     stop the nodes (SIGTERM), keep their data
#   scripts/cluster.sh clean    stop the nodes and delete their data
#
# Node N serves the API on 127.0.0.1:710N and Raft on 127.0.0.1:720N; data and logs live in
# .cluster/ (override with HOOKD_CLUSTER_DIR). Extra `hookd serve` flags: HOOKD_ARGS="...".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${HOOKD_CLUSTER_DIR:-$root/.cluster}
bin=$root/target/release/hookd
initial="1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203"

build() {
  if [[ ! -x $bin ]] || [[ -n $(find src raft/src Cargo.toml Cargo.lock -newer "$bin" -print -quit) ]]; then
    echo "building the release binary (first build takes several minutes)..."
    cargo build --release --locked -p hookd
  fi
}

pid_of() { cat "$dir/node$1.pid" 2>/dev/null || true; }
running() { local p; p=$(pid_of "$1"); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

up() {
  build
  mkdir -p "$dir"
  for n in 1 2 3; do
    if running "$n"; then echo "node $n already running (pid $(pid_of "$n"))"; continue; fi
    # shellcheck disable=SC2086
    nohup "$bin" serve --node-id "$n" \
      --listen "127.0.0.1:710$n" --peer-listen "127.0.0.1:720$n" \
      --data-dir "$dir/node$n" --initial-cluster "$initial" ${HOOKD_ARGS:-} \
      >>"$dir/node$n.log" 2>&1 &
    echo $! >"$dir/node$n.pid"
    echo "node $n started (pid $!), API http://127.0.0.1:710$n, log $dir/node$n.log"
  done
  for _ in $(seq 100); do
    if leader=$(curl -fsS 127.0.0.1:7101/v1/cluster 2>/dev/null | grep -o '"leader_id":[0-9]*'); then
      echo "cluster ready: ${leader/\"leader_id\":/leader is node }"
      return 0
    fi
    sleep 0.1
  done
  echo "no leader after 10 s; see $dir/node*.log" >&2
  return 1
}

status() {
  for n in 1 2 3; do
    if running "$n"; then
      echo "node $n: running (pid $(pid_of "$n")) $(curl -fsS -m 2 "127.0.0.1:710$n/readyz" 2>/dev/null || echo '(not answering)')"
    else
      echo "node $n: stopped"
    fi
  done
}

down() {
  for n in 1 2 3; do
    if running "$n"; then kill -TERM "$(pid_of "$n")"; fi
  done
  for n in 1 2 3; do
    for _ in $(seq 100); do running "$n" || break; sleep 0.1; done
    if running "$n"; then echo "node $n did not stop; killing"; kill -KILL "$(pid_of "$n")"; fi
    rm -f "$dir/node$n.pid"
  done
  echo "stopped"
}

case "${1:-}" in
  up) up ;;
  status) status ;;
  down) down ;;
  clean) down; rm -rf "$dir"; echo "removed $dir" ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac

#!/usr/bin/env bash
# How long after a worker's `kill -9` do its tasks run again elsewhere?
# RUNS times, with the release binaries on loopback: a master
# (--heartbeat-interval 0.3 --heartbeat-timeout 1.5 --lost-after LOST), worker
# A running TASKS `sleep 300` tasks (--runtime process), worker B idle; A
# is killed with SIGKILL and stays down. Per run, and then as median and
# max: the time from the kill to the last of its tasks being placed on B
# (the assignment time the master records), against LOST + 1 s.
#
#   benches/requeue-after-kill.sh [RUNS] [TASKS] [LOST]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
TASKS=${2:-3}
LOST=${3:-4}
cargo build -q --release -p cloudai-examples
MASTER=$PWD/target/release/cloudai-master
WORKER=$PWD/target/release/cloudai-worker
export CLOUDAI_TOKEN=bench-requeue-$$
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # The runs' supervisors outlive a killed worker until their lease runs out.
  pkill -9 -f "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

now_ms() { python3 -c 'import time; print(int(time.time() * 1000))'; }
field() { python3 -c 'import json, sys; v = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

results=()
for run in $(seq "$RUNS"); do
  dir=$work/run-$run
  mkdir -p "$dir"
  "$MASTER" --listen 127.0.0.1:0 --log-json --heartbeat-interval 0.3 --heartbeat-timeout 1.5 \
    --lost-after "$LOST" 2>"$dir/master.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '"master listening"' "$dir/master.log" 2>/dev/null && break; sleep 0.1; done
  addr=$(grep '"master listening"' "$dir/master.log" | head -1 | sed 's/.*"address":"\([^"]*\)".*/\1/')
  M=("$MASTER" --master "$addr" --json)
  worker() {
    "$WORKER" --master "$addr" --listen 127.0.0.1:0 --id "$1" --state-dir "$dir/state-$1" \
      --runtime process --cpu "$TASKS" --mem 8 --max-grace 1 >/dev/null 2>"$dir/$1.log" &
    pids+=($!)
  }
  active() { "${M[@]}" workers | field "sum(1 for w in v if w['id'] == '$1' and w['health'] == 'active')"; }
  worker a
  a_pid=$!
  until [[ $(active a) == 1 ]]; do sleep 0.1; done
  for _ in $(seq "$TASKS"); do "${M[@]}" task --cpu 1 busybox -- sleep 300 >/dev/null; done
  until [[ $("${M[@]}" tasks | field "sum(1 for t in v if t['status'] == 'running')") == "$TASKS" ]]; do sleep 0.1; done
  worker b
  until [[ $(active b) == 1 ]]; do sleep 0.1; done
  killed=$(now_ms)
  kill -9 "$a_pid"
  wait "$a_pid" 2>/dev/null || true
  until [[ $("${M[@]}" tasks | field "sum(1 for t in v if t['status'] == 'running' and t['worker'] == 'b')") == "$TASKS" ]]; do
    sleep 0.1
  done
  placed=$("${M[@]}" tasks | field "max(t['assigned_at'] for t in v)")
  took=$(python3 -c "print(($placed - $killed) / 1000)")
  echo "run $run: the $TASKS tasks run on b ${took} s after the kill (lost-after ${LOST} s)"
  results+=("$took")
  "${M[@]}" cancel --all --force >/dev/null || true
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
  pkill -9 -f "$dir" 2>/dev/null || true
done
python3 - "$LOST" "${results[@]}" <<'PY'
import statistics, sys
lost, runs = float(sys.argv[1]), [float(x) for x in sys.argv[2:]]
print(f"kill -9 -> running elsewhere: median {statistics.median(runs):.2f} s, max {max(runs):.2f} s "
      f"over {len(runs)} runs (target: <= lost-after + 1 s = {lost + 1:.1f} s)")
PY

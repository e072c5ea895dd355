#!/usr/bin/env bash
# Does a deep queue of tasks that cannot run slow the ones that can?
# nodesim (memory store, WORKERS simulated workers) submits TASKS runnable
# tasks into an empty queue, then into one holding PARKED tasks pinned to
# a worker that never answers, RUNS times each, alternating; prints the
# medians of the submit rate and the completion rate and their ratios.
#
#   benches/queue-depth.sh [TASKS] [PARKED] [RUNS] [WORKERS] [extra nodesim flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-20000}
PARKED=${2:-100000}
RUNS=${3:-3}
WORKERS=${4:-100}
shift $(( $# < 4 ? $# : 4 ))
cargo build -q --release -p cloudai-examples -p cloudai-bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$RUNS"); do
  for p in 0 "$PARKED"; do
    target/release/nodesim --workers "$WORKERS" --tasks "$TASKS" --parked "$p" \
      --idle-secs 0 --json "$@" | tee -a "$out"
  done
done
python3 - "$out" "$PARKED" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(parked, key):
    return statistics.median(r[key] for r in runs if r["parked"] == parked)
deep = int(sys.argv[2])
for key, name in [("submits_per_s", "submit rate"), ("tasks_per_s", "completion rate")]:
    e, d = med(0, key), med(deep, key)
    print(f"{name}: empty queue {e:.0f}/s, {deep} parked {d:.0f}/s, ratio {d/e:.2f}x (medians)")
PY

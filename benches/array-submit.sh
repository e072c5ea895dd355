#!/usr/bin/env bash
# One array submit of TASKS tasks (`task --array 1-TASKS`: one call, one
# store batch) against TASKS single submits (16 in flight), through a real
# master with WORKERS simulated workers (nodesim, memory store or STORE),
# RUNS times each, alternating: medians of the submit time and of the
# end-to-end completion rate.
#
#   benches/array-submit.sh [TASKS] [RUNS] [WORKERS] [STORE]
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-10000}
RUNS=${2:-3}
WORKERS=${3:-100}
STORE=${4:-memory}
cargo build -q --release -p cloudai-examples -p cloudai-bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$RUNS"); do
  for mode in "" "--array"; do
    # shellcheck disable=SC2086
    target/release/nodesim --workers "$WORKERS" --tasks "$TASKS" --concurrency 16 \
      --idle-secs 0 --store "$STORE" --json $mode | tee -a "$out"
  done
done
python3 - "$out" "$TASKS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
n = int(sys.argv[2])
def med(array, key):
    return statistics.median(r[key] for r in runs if r["array"] == array)
single, arr = n / med(False, "submits_per_s"), n / med(True, "submits_per_s")
print(f"submit {n} tasks: singles {single:.2f} s, one array {arr:.2f} s, {single/arr:.1f}x faster (medians)")
print(f"completed: singles {med(False, 'tasks_per_s'):.0f} tasks/s, array {med(True, 'tasks_per_s'):.0f} tasks/s (medians)")
PY

#!/usr/bin/env bash
# Pipelines at the speed of independent work. nodesim (memory store,
# WORKERS simulated workers) runs TASKS tasks as one array, then as a
# two-stage pipeline (an array of half, then an array of the other half
# `--after-corr` the first), RUNS times each, alternating; then submits
# TASKS tasks one call each with no dependents parked, and with DEPENDENTS
# waiting on a parked task. Prints the medians and their ratios.
#
#   benches/pipeline.sh [TASKS] [DEPENDENTS] [RUNS] [WORKERS] [extra nodesim flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-20000}
DEPENDENTS=${2:-100000}
RUNS=${3:-3}
WORKERS=${4:-100}
shift $(( $# < 4 ? $# : 4 ))
cargo build -q --release -p cloudai-examples -p cloudai-bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$RUNS"); do
  for shape in --array --pipeline; do
    target/release/nodesim --workers "$WORKERS" --tasks "$TASKS" "$shape" \
      --idle-secs 0 --json "$@" | tee -a "$out"
  done
  for d in 0 "$DEPENDENTS"; do
    target/release/nodesim --workers "$WORKERS" --tasks "$TASKS" --dependents "$d" \
      --idle-secs 0 --json "$@" | tee -a "$out"
  done
done
python3 - "$out" "$DEPENDENTS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(pred, key):
    return statistics.median(r[key] for r in runs if pred(r))
flat = med(lambda r: r["array"], "tasks_per_s")
pipe = med(lambda r: r["pipeline"], "tasks_per_s")
print(f"completion rate: one array {flat:.0f}/s, two-stage after-corr pipeline {pipe:.0f}/s, ratio {pipe/flat:.2f}x (medians; target >= 0.8x)")
d = int(sys.argv[2])
single = lambda r: not r["array"] and not r["pipeline"]
none = med(lambda r: single(r) and r["dependents"] == 0, "submits_per_s")
deep = med(lambda r: single(r) and r["dependents"] == d, "submits_per_s")
print(f"submit rate: no dependents {none:.0f}/s, {d} dependents waiting {deep:.0f}/s, ratio {deep/none:.2f}x (medians; target >= 0.8x)")
PY

#!/usr/bin/env bash
# Does the master keep its pace as the cluster grows? nodesim (memory
# store, heartbeats every second) with 10 simulated workers, then with
# WORKERS, RUNS times each, alternating: medians of tasks/s, their ratio,
# submit->running p99, and the master's CPU while the big swarm only
# heartbeats.
#
#   benches/swarm-scale.sh [TASKS] [WORKERS] [RUNS] [extra nodesim flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-20000}
WORKERS=${2:-10000}
RUNS=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
cargo build -q --release -p cloudai-examples -p cloudai-bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$RUNS"); do
  for w in 10 "$WORKERS"; do
    target/release/nodesim --workers "$w" --tasks "$TASKS" --idle-secs 10 --json "$@" | tee -a "$out"
  done
done
python3 - "$out" "$WORKERS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
big = int(sys.argv[2])
def med(w, f):
    return statistics.median(f(r) for r in runs if r["workers"] == w)
small_rate = med(10, lambda r: r["tasks_per_s"])
big_rate = med(big, lambda r: r["tasks_per_s"])
print(f"tasks/s: 10 workers {small_rate:.0f}, {big} workers {big_rate:.0f}, ratio {big_rate/small_rate:.2f}x (medians)")
print(f"submit->running p99 with {big} workers: {med(big, lambda r: r['to_running_ms']['p99']):.1f} ms (median)")
print(f"{big} workers idle: {med(big, lambda r: r['idle']['heartbeats_per_s']):.0f} heartbeats/s, "
      f"master CPU {med(big, lambda r: r['idle']['master_cpu_percent']):.1f}% of a core (medians)")
print(f"master RSS after the run with {big} workers: {med(big, lambda r: r['master_rss_mib']):.0f} MiB (median)")
PY

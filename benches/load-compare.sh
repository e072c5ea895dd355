#!/usr/bin/env bash
# Trivial tasks per second through the dev cluster (`cloudai-master --dev`,
# local processes, tasks submitted by the load driver), optionally with
# PARKED tasks waiting for a worker that never answers, against
# `seq N | xargs -P16 -n1 sh -c true` in the same run. Each side runs RUNS
# times; the medians are printed with their ratio.
#
#   benches/load-compare.sh [TASKS] [PARKED] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-2000}
PARKED=${2:-0}
RUNS=${3:-3}
cargo build -q --release -p cloudai-examples -p cloudai-bench
rates=()
base=()
for _ in $(seq "$RUNS"); do
  out=$(target/release/load --tasks "$TASKS" --concurrency 16 --parked "$PARKED")
  echo "$out"
  rates+=("$(echo "$out" | sed 's/.* = \([0-9.]*\) tasks\/s/\1/')")
  start=$(date +%s.%N)
  seq "$TASKS" | xargs -P16 -n1 sh -c true
  end=$(date +%s.%N)
  b=$(python3 -c "import sys; print(f'{int(sys.argv[3])/(float(sys.argv[2])-float(sys.argv[1])):.1f}')" "$start" "$end" "$TASKS")
  echo "xargs -P16 sh -c true: $TASKS in $(python3 -c "print(f'{$end-$start:.2f}')") s = $b tasks/s"
  base+=("$b")
done
python3 - "${rates[*]}" "${base[*]}" "$TASKS" "$PARKED" <<'PY'
import statistics, sys
r = statistics.median(map(float, sys.argv[1].split()))
b = statistics.median(map(float, sys.argv[2].split()))
print(f"median: CloudAI-rs {r:.1f} tasks/s ({sys.argv[4]} parked), xargs {b:.1f} tasks/s, ratio {r/b:.2f}x ({sys.argv[3]} tasks)")
PY

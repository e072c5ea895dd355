#!/usr/bin/env bash
# What do events, metrics, spans and the timing decorators cost the
# master? nodesim (memory store, WORKERS simulated workers, TASKS tasks)
# against this tree's master and against BASELINE_MASTER, a master binary
# built from an earlier commit, RUNS times each, alternating; prints the
# medians of the submit and completion rates, the master's idle CPU, and
# the ratios (this tree / baseline).
#
#   git worktree add /tmp/base 722afbf && (cd /tmp/base && cargo build --release -p cloudai-examples --bin cloudai-master)
#   benches/observability-overhead.sh /tmp/base/target/release/cloudai-master [TASKS] [RUNS] [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
BASELINE=${1:?usage: benches/observability-overhead.sh BASELINE_MASTER [TASKS] [RUNS] [WORKERS]}
TASKS=${2:-20000}
RUNS=${3:-3}
WORKERS=${4:-1000}
cargo build -q --release -p cloudai-examples -p cloudai-bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$RUNS"); do
  for which in baseline head; do
    bin=target/release/cloudai-master
    [[ $which == baseline ]] && bin=$BASELINE
    target/release/nodesim --workers "$WORKERS" --tasks "$TASKS" --idle-secs 5 \
      --master-bin "$bin" --json | python3 -c "
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1]); r['which'] = '$which'; print(json.dumps(r))" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def med(which, f):
    return statistics.median(f(r) for r in runs if r["which"] == which)
for name, f in [("submits/s", lambda r: r["submits_per_s"]), ("tasks/s", lambda r: r["tasks_per_s"]),
                ("idle master CPU %", lambda r: r["idle"]["master_cpu_percent"])]:
    b, h = med("baseline", f), med("head", f)
    print(f"{name}: baseline {b:.1f}, this tree {h:.1f}, ratio {h / b:.2f} (medians of {len(runs) // 2})")
PY

#!/usr/bin/env bash
# Short tasks through the binaries an operator runs: a release master and
# one release worker on the process runtime (supervised runs, default flags
# and logging), one array of N `true` tasks at 2 slots (`--cpu 1` on a
# 2-CPU worker) and at 16 slots (`--cpu 0.125`), against `xargs -P<slots>
# -n1 true` in the same run, RUNS times alternating. Prints the medians of
# tasks/s and their ratio to xargs, CPU per task (master, worker, the
# supervisor of the worker's runs, and the tasks), and, from the records, the
# latency from a run's end (as its worker saw it) to the master storing it
# and from a run's end to the next start on the worker (p50/p99).
#
#   benches/slots.sh [N] [RUNS] [SLOTS...]
#
# The worker's state directory (its runs' records) is made under $TMPDIR
# (default /tmp): point it at the file system an operator's would be on.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
RUNS=${2:-3}
shift $(( $# < 2 ? $# : 2 ))
SLOTS=("$@")
[[ ${#SLOTS[@]} -gt 0 ]] || SLOTS=(2 16)
cargo build -q --release -p cloudai-examples
# BIN=<dir> runs the cloudai-master and cloudai-worker found there (a
# baseline built from an earlier commit) instead of this tree's.
BIN=${BIN:-$PWD/target/release}
MASTER=$BIN/cloudai-master
WORKER=$BIN/cloudai-worker
export CLOUDAI_TOKEN=bench-slots-$$
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-slots.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ticks() { # utime+stime, and the children's, of pid $1, in clock ticks
  awk '{print $14 + $15, $16 + $17}' "/proc/$1/stat"
}

out=$work/results
for run in $(seq "$RUNS"); do
  for slots in "${SLOTS[@]}"; do
    # xargs first, then CloudAI-rs, each from a cold start of its own.
    begin=$(date +%s.%N)
    seq "$N" | xargs -P"$slots" -n1 true
    end=$(date +%s.%N)
    echo "{\"system\":\"xargs\",\"slots\":$slots,\"secs\":$(python3 -c "print($end - $begin)")}" >>"$out"

    dir=$work/run-$run-$slots
    mkdir -p "$dir"
    port=$((20000 + RANDOM % 20000))
    "$MASTER" --listen 127.0.0.1:0 --log-json --http-listen "$port" 2>"$dir/master.log" &
    mpid=$!
    pids+=("$mpid")
    for _ in $(seq 100); do grep -q '"master listening"' "$dir/master.log" 2>/dev/null && break; sleep 0.1; done
    addr=$(grep '"master listening"' "$dir/master.log" | head -1 | sed 's/.*"address":"\([^"]*\)".*/\1/')
    "$WORKER" --master "$addr" --listen 127.0.0.1:0 --id slots --state-dir "$dir/state" \
      --runtime process --cpu 2 --mem 8 2>"$dir/worker.log" &
    wpid=$!
    pids+=("$wpid")
    M=("$MASTER" --master "$addr" --json)
    until "${M[@]}" workers | python3 -c 'import json,sys; sys.exit(0 if any(w["health"] == "active" for w in json.load(sys.stdin)) else 1)'; do
      sleep 0.1
    done
    cpu=$(python3 -c "print(2 / $slots)")
    read -r m0 _ < <(ticks "$mpid")
    read -r w0 c0 < <(ticks "$wpid")
    begin=$(date +%s.%N)
    "${M[@]}" task --array "1-$N" --cpu "$cpu" --mem 0.01 busybox -- true >/dev/null
    metric='cloudai_tasks{status="completed"}'
    until [[ $(curl -s -H "Authorization: Bearer $CLOUDAI_TOKEN" "http://127.0.0.1:$port/metrics" \
      | awk -v m="$metric" '$1 == m {print int($2)}') == "$N" ]]; do
      sleep 0.2
    done
    read -r m1 _ < <(ticks "$mpid")
    read -r w1 c1 < <(ticks "$wpid")
    # The supervisor of the worker's runs (a process of its own, which
    # reaps the tasks) lives while the worker does.
    spid=$(pgrep -f -- "__supervise $dir/state/runs" | head -1)
    read -r s1 t1 < <(ticks "$spid")
    "${M[@]}" tasks --all --status completed >"$dir/tasks.json"
    python3 - "$dir/tasks.json" "$slots" "$begin" "$((m1 - m0))" "$((w1 - w0))" "$((s1 + c1 - c0))" "$t1" "$N" >>"$out" <<'PY'
import json, os, sys
path, slots, begin, m, w, s, tk, n = sys.argv[1:]
tasks = json.load(open(path))
hz = os.sysconf("SC_CLK_TCK")
# Until the last result was stored (not when the poll above saw it).
end = max(t["finished_at"] for t in tasks) / 1000
ends = sorted((t["history"][-1]["ended_at"], t["finished_at"]) for t in tasks)
starts = sorted(t["history"][-1]["started_at"] for t in tasks)
stored = sorted(f - e for e, f in ends)
# After each end, the next start on the worker (its slots are full).
import bisect
gaps = sorted(starts[i] - e for e, _ in ends if (i := bisect.bisect_left(starts, e)) < len(starts))
pct = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else None
print(json.dumps({
    "system": "cloudai", "slots": int(slots), "secs": float(end) - float(begin),
    "ms_per_task": {k: int(v) * 1000 / hz / int(n) for k, v in (("master", m), ("worker", w), ("supervisor", s), ("tasks", tk))},
    "end_to_stored_ms": [pct(stored, 0.5), pct(stored, 0.99)],
    "end_to_next_start_ms": [pct(gaps, 0.5), pct(gaps, 0.99)],
}))
PY
    kill "$wpid" "$mpid" 2>/dev/null || true
    wait "$wpid" "$mpid" 2>/dev/null || true
    pids=()
  done
done
python3 - "$out" "$N" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
n = int(sys.argv[2])
for slots in sorted({r["slots"] for r in runs}):
    rate = lambda s: statistics.median(n / r["secs"] for r in runs if r["system"] == s and r["slots"] == slots)
    ours = [r for r in runs if r["system"] == "cloudai" and r["slots"] == slots]
    med = lambda f: statistics.median(f(r) for r in ours)
    x, c = rate("xargs"), rate("cloudai")
    print(f"{slots} slots: xargs {x:.0f} tasks/s, CloudAI-rs {c:.0f} tasks/s, {c / x:.2f}x (medians of {len(ours)})")
    cpu = lambda k: med(lambda r: r["ms_per_task"][k])
    print(f"  CPU per task: master {cpu('master'):.2f} ms, worker {cpu('worker'):.2f} ms, supervisor {cpu('supervisor'):.2f} ms "
          f"(together {cpu('master') + cpu('worker') + cpu('supervisor'):.2f} ms), tasks {cpu('tasks'):.2f} ms")
    print(f"  run end -> stored: p50 {med(lambda r: r['end_to_stored_ms'][0]):.0f} ms, p99 {med(lambda r: r['end_to_stored_ms'][1]):.0f} ms; "
          f"run end -> next start: p50 {med(lambda r: r['end_to_next_start_ms'][0]):.0f} ms, p99 {med(lambda r: r['end_to_next_start_ms'][1]):.0f} ms")
PY

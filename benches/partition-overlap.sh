#!/usr/bin/env bash
# Does a task ever run twice at once when its worker is cut off? The
# scenario of examples/tests/partition.rs, RUNS times, with the release
# binaries: two network namespaces of this script's own joined by a veth
# pair, the master and worker A on one side, worker B on the other
# (--runtime process; master --heartbeat-interval 0.3 --heartbeat-timeout
# 1.5 --lost-after 4, workers --max-grace 1, so B fences itself 2.3 s after
# its last answered heartbeat). A task runs on B, appending a timestamp
# every 50 ms to a file per attempt; once it has run 3.3 s the link is cut
# both ways with iptables in B's namespace, and the master runs the task
# again on A. Per run, and then as max and median: the overlap of the two
# attempts (0 if none; the gap is attempt 2's first stamp minus attempt 1's
# last, negative when they overlap), and the time from the cut to attempt
# 1's last stamp, to the master declaring B lost, and to the requeued task
# completing. Needs root, ip and iptables (Debian's iproute2, iptables).
#
#   benches/partition-overlap.sh [RUNS]
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
RUNS=${1:-5}
if [[ $(id -u) != 0 ]] || ! command -v ip >/dev/null || ! command -v iptables >/dev/null; then
  echo "partition-overlap: needs root, ip and iptables (apt-get install iproute2 iptables)" >&2
  exit 1
fi
cargo build -q --release -p cloudai-examples
MASTER=$PWD/target/release/cloudai-master
WORKER=$PWD/target/release/cloudai-worker
export CLOUDAI_TOKEN=bench-partition-$$
NA=cloudai-bench-$$-a
NB=cloudai-bench-$$-b
NET=10.232.$(($$ % 254 + 1))
A=$NET.1
B=$NET.2
work=$(mktemp -d)

# Only what this script started runs in its namespaces.
kill_inside() {
  local ns pid
  for ns in "$NA" "$NB"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for _ in $(seq 50); do
    [[ -z "$(ip netns pids "$NA" 2>/dev/null)$(ip netns pids "$NB" 2>/dev/null)" ]] && break
    sleep 0.1
  done
}
cleanup() {
  kill_inside
  ip netns delete "$NA" 2>/dev/null || true
  ip netns delete "$NB" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$NA"
ip netns add "$NB"
ip link add "cb$$a" netns "$NA" type veth peer name "cb$$b" netns "$NB"
ip -n "$NA" addr add "$A/24" dev "cb$$a"
ip -n "$NB" addr add "$B/24" dev "cb$$b"
ip -n "$NA" link set lo up
ip -n "$NB" link set lo up
ip -n "$NA" link set "cb$$a" up
ip -n "$NB" link set "cb$$b" up

# cut_rules -A cuts the link both ways (in B's namespace); -D heals it.
cut_rules() {
  ip netns exec "$NB" iptables -w 5 "$1" INPUT -s "$A" -j DROP
  ip netns exec "$NB" iptables -w 5 "$1" OUTPUT -d "$A" -j DROP
}

field() { python3 -c 'import json, sys; v = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

# worker NS IP ID: starts worker ID of the run in $dir against the master at $addr.
worker() {
  ip netns exec "$1" "$WORKER" --master "$addr" --listen "$2:0" --id "$3" \
    --state-dir "$dir/state-$3" --runtime process --cpu 2 --mem 8 --max-grace 1 \
    --heartbeat-interval 0.3 >/dev/null 2>"$dir/$3.log" &
}

# active ID: waits until the master lists worker ID active.
active() {
  for _ in $(seq 200); do
    [[ $("${M[@]}" --json workers | field "[w['health'] for w in v if w['id'] == '$1']") = "['active']" ]] && return 0
    sleep 0.1
  done
  echo "worker $1 did not become active" >&2
  return 1
}

TASK='f=$DIR/$CLOUDAI_ATTEMPT; n=20; [ "$CLOUDAI_ATTEMPT" = 1 ] && n=600; i=0; while [ $i -lt $n ]; do date +%s.%N >> "$f"; sleep 0.05; i=$((i+1)); done'

# one N: run N; prints "gap cut->last1 cut->lost cut->completed status" (seconds).
one() {
  local t status cut
  dir=$work/run-$1
  mkdir -p "$dir"
  ip netns exec "$NA" "$MASTER" --listen "$A:0" --log-json --heartbeat-interval 0.3 \
    --heartbeat-timeout 1.5 --lost-after 4 >/dev/null 2>"$dir/master.log" &
  for _ in $(seq 100); do grep -q '"master listening"' "$dir/master.log" 2>/dev/null && break; sleep 0.1; done
  addr=$(grep '"master listening"' "$dir/master.log" | head -1 | sed 's/.*"address":"\([^"]*\)".*/\1/')
  M=(ip netns exec "$NA" "$MASTER" --master "$addr")
  worker "$NB" "$B" b
  active b
  t=$("${M[@]}" --json task --cpu 1 --mem 0.1 --grace 1 --env "DIR=$dir" busybox -- sh -c "$TASK" |
    field 'v["task_id"]')
  until [[ $(wc -l <"$dir/1" 2>/dev/null || echo 0) -ge 1 ]]; do sleep 0.05; done
  worker "$NA" "$A" a
  active a
  # As in the test, attempt 1 first runs past the lease it started with.
  sleep "$(python3 -c 'import sys, time; print(max(0.0, float(sys.argv[1]) + 3.3 - time.time()))' "$(head -1 "$dir/1")")"
  cut=$(date +%s.%N)
  cut_rules -A
  for _ in $(seq 400); do
    "${M[@]}" --json show "$t" >"$dir/show.json"
    status=$(field 'v["task"]["status"]' <"$dir/show.json")
    [[ $status = completed || $status = failed ]] && break
    sleep 0.05
  done
  cut_rules -D
  kill_inside
  python3 - "$dir" "$cut" <<'PY'
import json, sys
d, cut = sys.argv[1], float(sys.argv[2])
v = json.load(open(f"{d}/show.json"))
def stamps(n):
    try:
        return [float(l) for l in open(f"{d}/{n}") if l.strip()]
    except FileNotFoundError:
        return []
one, two = stamps(1), stamps(2)
nan = float("nan")
last1 = one[-1] if one else nan
first2 = two[0] if two else nan
hist = v["task"].get("history") or []
lost = hist[0]["ended_at"] / 1000 if hist else nan
done = v["result"]["finished_at"] / 1000 if v.get("result") else nan
print(f"{first2 - last1:.3f} {last1 - cut:.3f} {lost - cut:.3f} {done - cut:.3f} {v['task']['status']}")
PY
}

: >"$work/runs"
for i in $(seq "$RUNS"); do
  r=$(one "$i")
  read -r gap last lost done status <<<"$r"
  overlap=$(python3 -c 'import sys; print(f"{max(0.0, -float(sys.argv[1])):.3f}")' "$gap")
  echo "run $i: overlap $overlap s (gap $gap s); from the cut: attempt 1's last stamp $last s, B declared lost $lost s, task $status $done s"
  echo "$r" >>"$work/runs"
done
python3 - "$work/runs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
gaps = [float(r[0]) for r in rows]
cols = {
    "overlap of the attempts": [max(0.0, -g) for g in gaps],
    "gap between the attempts": gaps,
    "cut -> attempt 1's last stamp": [float(r[1]) for r in rows],
    "cut -> B declared lost": [float(r[2]) for r in rows],
    "cut -> requeued task completed": [float(r[3]) for r in rows],
}
for name, xs in cols.items():
    print(f"{name:31} max {max(xs):6.3f} s   median {statistics.median(xs):6.3f} s   min {min(xs):6.3f} s")
print(f"{len(rows)} runs; task outcomes: {', '.join(sorted({r[4] for r in rows}))}")
PY

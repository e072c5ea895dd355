#!/usr/bin/env bash
# Master memory with finished tasks kept, and with them expiring: two
# masters (memory store), one keeping finished tasks for ever and one with
# --retention RETENTION seconds, each loaded by nodesim with TASKS tasks,
# then again once the retention has passed; RSS (from /proc) after each
# round. The allocator keeps memory freed by expired tasks for reuse, so
# the figure that shows bounded state is the second round's.
#
#   benches/retention-rss.sh [TASKS] [RETENTION]
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-100000}
RETENTION=${2:-20}
cargo build -q --release -p cloudai-examples -p cloudai-bench
export CLOUDAI_TOKEN=retention-rss-token
rss() { awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' "/proc/$1/status"; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
declare -A addr pid
for keep in 0 "$RETENTION"; do
  log=$(mktemp)
  target/release/cloudai-master --listen 127.0.0.1:0 --log-json --heartbeat-interval 1 \
    --retention "$keep" 2>"$log" &
  pid[$keep]=$!
  pids+=($!)
  until grep -q '"master listening"' "$log"; do sleep 0.1; done
  addr[$keep]=$(grep -o '"address":"[^"]*"' "$log" | head -1 | cut -d'"' -f4)
  target/release/nodesim --master "${addr[$keep]}" --master-pid "${pid[$keep]}" \
    --workers 100 --tasks "$TASKS" --idle-secs 0 --id-prefix "keep$keep-" >/dev/null
  echo "retention ${keep}s (0: for ever), round 1 ($TASKS tasks run): master RSS $(rss "${pid[$keep]}")"
done
for round in 2 3; do
  sleep $((RETENTION + 10))
  for keep in 0 "$RETENTION"; do
    target/release/nodesim --master "${addr[$keep]}" --master-pid "${pid[$keep]}" \
      --workers 100 --tasks "$TASKS" --idle-secs 0 --id-prefix "keep$keep-$round-" >/dev/null
    left=$(target/release/cloudai-master --master "${addr[$keep]}" tasks --limit 1 | head -1)
    echo "retention ${keep}s, round $round ($((round * TASKS)) tasks run): master RSS $(rss "${pid[$keep]}"); $left"
  done
done

#!/usr/bin/env bash
# How long cancelling `sh -c 'sleep 300'` on Docker takes with the daemon's
# init (the default) and with --no-init: a release master and two release
# workers with --runtime docker, one each way; ROUNDS cancels on each with a
# GRACE-second grace, each timed from the `cancel` command to the run's end
# recorded (its exit code in `show`). Prints every cancel and the medians.
# Without an init the command is PID 1 and ignores SIGTERM, so its cancel
# waits out the grace and ends by SIGKILL (137); with it, it ends at once (143).
#
#   benches/docker-cancel.sh [ROUNDS] [GRACE]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
GRACE=${2:-10}
IMAGE=cloudai-test-busybox:latest
scripts/docker-test-image.sh
cargo build -q --release -p cloudai-examples
export CLOUDAI_TOKEN=bench-$$
log=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; for w in init no-init; do docker ps -aq --filter label=cloudai.worker_id=bench-cancel-$w | xargs -r docker rm -f >/dev/null; done; rm -rf "$log"' EXIT
target/release/cloudai-master --listen 127.0.0.1:0 --log-json 2>"$log/master" &
for _ in $(seq 100); do grep -q '"master listening"' "$log/master" 2>/dev/null && break; sleep 0.1; done
ADDR=$(grep '"master listening"' "$log/master" | head -1 | sed 's/.*"address":"\([^"]*\)".*/\1/')
M=(target/release/cloudai-master --master "$ADDR")
for w in init no-init; do
  flags=()
  [ "$w" = no-init ] && flags=(--no-init)
  target/release/cloudai-worker --master "$ADDR" --listen 127.0.0.1:0 --id "bench-cancel-$w" \
    --state-dir "$log/state-$w" --runtime docker --cpu 1 --mem 4 "${flags[@]}" 2>"$log/worker-$w" &
done
for w in init no-init; do
  for _ in $(seq 100); do "${M[@]}" workers 2>/dev/null | grep -q "bench-cancel-$w" && break; sleep 0.1; done
done

field() { python3 -c 'import json, sys; v = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

# One cancel on worker bench-cancel-$1: prints its seconds and exit code.
one() {
  local t start end v
  t=$("${M[@]}" --json task --on "bench-cancel-$1" --cpu 0.1 --mem 0.1 --grace "$GRACE" \
    "$IMAGE" -- sh -c 'sleep 300' | field 'v["task_id"]')
  until [ -n "$(docker ps -q --filter "label=cloudai.task_id=$t")" ]; do sleep 0.05; done
  start=$(date +%s.%N)
  "${M[@]}" cancel "$t" >/dev/null
  until v=$("${M[@]}" --json show "$t") && [ "$(field 'v["result"] is not None and v["result"]["exit_code"] is not None' <<<"$v")" = True ]; do
    sleep 0.02
  done
  end=$(date +%s.%N)
  echo "$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$start" "$end") $(field 'v["result"]["exit_code"]' <<<"$v")"
}

for w in init no-init; do
  : >"$log/times-$w"
  for i in $(seq "$ROUNDS"); do
    r=$(one "$w")
    echo "$w: cancel $i: ${r% *} s, exit code ${r#* }"
    echo "$r" >>"$log/times-$w"
  done
done
python3 - "$log" "$GRACE" <<'PY'
import statistics, sys
log, grace = sys.argv[1], sys.argv[2]
for w in ("init", "no-init"):
    rows = [l.split() for l in open(f"{log}/times-{w}") if l.strip()]
    times = [float(r[0]) for r in rows]
    codes = sorted({r[1] for r in rows})
    print(f"{w:8} median cancel {statistics.median(times):.3f} s over {len(times)} "
          f"(min {min(times):.3f}, max {max(times):.3f}; exit codes {', '.join(codes)}; grace {grace} s)")
PY

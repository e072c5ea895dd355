#!/usr/bin/env bash
# Containers per second: through CloudAI-rs (a release master and one
# release worker with --runtime docker, tasks submitted by the load driver)
# versus plain `docker run --rm` at the same concurrency (the worker has room
# for exactly CONCURRENCY tasks of 0.1 CPU at once).
#
#   benches/docker-compare.sh [TASKS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-200}
CONC=${2:-8}
IMAGE=cloudai-test-busybox:latest
scripts/docker-test-image.sh
cargo build -q --release -p cloudai-examples -p cloudai-bench
export CLOUDAI_TOKEN=bench-$$
log=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; docker ps -aq --filter label=cloudai.worker_id=bench-docker | xargs -r docker rm -f >/dev/null; rm -rf "$log"' EXIT
target/release/cloudai-master --listen 127.0.0.1:0 --log-json 2>"$log/master" &
for _ in $(seq 100); do grep -q '"master listening"' "$log/master" 2>/dev/null && break; sleep 0.1; done
ADDR=$(grep '"master listening"' "$log/master" | head -1 | sed 's/.*"address":"\([^"]*\)".*/\1/')
target/release/cloudai-worker --master "$ADDR" --listen 127.0.0.1:0 --id bench-docker --runtime docker --cpu "$(python3 -c "print($CONC * 0.1)")" --mem 64 2>"$log/worker" &
sleep 1
echo "CloudAI-rs, --runtime docker:"
target/release/load --master "$ADDR" --tasks "$TASKS" --concurrency "$CONC" --image "$IMAGE" --cpu 0.1
echo "plain docker run --rm, concurrency $CONC:"
start=$(date +%s.%N)
seq "$TASKS" | xargs -P "$CONC" -I{} docker run --rm "$IMAGE" true
end=$(date +%s.%N)
python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); n=int(sys.argv[3]); print(f'{n} containers in {t:.2f} s = {n/t:.1f} containers/s')" "$start" "$end" "$TASKS"

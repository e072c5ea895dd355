#!/usr/bin/env bash
# CPU of the master and the worker while `run` follows one task that writes
# MB megabytes of numbered lines, with a release build of this checkout
# and, if given, with the release binaries in BASELINE (a directory holding
# an older checkout's cloudai-master and cloudai-worker). Each set runs
# ROUNDS times; the medians are printed, with the bytes `run` printed.
#
#   benches/output-follow.sh [MB] [process|docker] [BASELINE] [ROUNDS]
#
# "worker" is the worker process itself; "children" is what it reaped
# (each run's supervisor and the task, on the process runtime).
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-50}
RUNTIME=${2:-process}
BASELINE=${3:-}
ROUNDS=${4:-3}
cargo build -q --release -p cloudai-examples
[ "$RUNTIME" = docker ] && scripts/docker-test-image.sh >/dev/null
python3 - "$MB" "$RUNTIME" "$ROUNDS" "target/release" ${BASELINE:+"$BASELINE"} <<'PY'
import os, re, statistics, subprocess, sys, tempfile, time

mb, runtime, rounds, *dirs = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:]
lines = int(mb) * 1_000_000 // 23  # "numbered line NNNNNNNN\n"
script = "awk 'BEGIN { for (i = 1; i <= %d; i++) printf \"numbered line %%08d\\n\", i }'" % lines
tick = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    own = (int(f[11]) + int(f[12])) / tick
    children = (int(f[13]) + int(f[14])) / tick
    return own, children

def one(bin_dir):
    env = dict(os.environ, CLOUDAI_TOKEN=f"bench-{os.getpid()}")
    logs = tempfile.mkdtemp()
    master = subprocess.Popen([f"{bin_dir}/cloudai-master", "--listen", "127.0.0.1:0", "--log-json"],
                              env=env, stderr=open(f"{logs}/master", "w"))
    addr = None
    for _ in range(100):
        m = re.search(r'"master listening".*?"address":"([^"]+)"', open(f"{logs}/master").read())
        if m:
            addr = m.group(1)
            break
        time.sleep(0.1)
    state = tempfile.mkdtemp()
    worker = subprocess.Popen([f"{bin_dir}/cloudai-worker", "--master", addr, "--listen", "127.0.0.1:0",
                               "--id", "bench-output", "--runtime", runtime, "--state-dir", state],
                              env=env, stderr=open(f"{logs}/worker", "w"))
    time.sleep(1.5)
    m0, w0 = cpu(master.pid), cpu(worker.pid)
    started = time.time()
    image = "cloudai-test-busybox:latest" if runtime == "docker" else "busybox"
    run = subprocess.run(f"{bin_dir}/cloudai-master --master {addr} run --cpu 0.5 --mem 0.1 {image} -- sh -c \"$SCRIPT\" | wc -c",
                         shell=True, env=dict(env, SCRIPT=script), capture_output=True, text=True)
    took = time.time() - started
    time.sleep(1)
    m1, w1 = cpu(master.pid), cpu(worker.pid)
    for p in (worker, master):
        p.terminate()
        p.wait()
    return (m1[0] - m0[0], w1[0] - w0[0], w1[1] - w0[1], int(run.stdout.strip() or 0), took)

for d in dirs:
    got = [one(d) for _ in range(rounds)]
    med = lambda i: statistics.median(g[i] for g in got)
    print(f"{d}: {mb} MB on {runtime}, median of {rounds}: master {med(0):.2f} s CPU, "
          f"worker {med(1):.2f} s, children {med(2):.2f} s; run printed {med(3):.0f} of {lines * 23} bytes "
          f"in {med(4):.1f} s")
PY

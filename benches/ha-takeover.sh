#!/usr/bin/env bash
# Master takeover under load (HA): two `cloudai-master --ha --lease-ttl TTL`
# on loopback on one nx-27017 database (a MongoDB-wire server,
# scripts/mongo-test-server.sh; a fresh database each run), 1,000 simulated
# workers (nodesim) following the leader among both, and a submitter in
# nodesim at 20 submits/s (a request id each, retried under it, at most
# 2,000 tasks non-final; tasks run RUN_MS). Each run faults the leader (found
# by /readyz) once: `kill -9`, SIGSTOP for 3×TTL then SIGCONT, or SIGTERM,
# RUNS of each, alternating; a killed master is restarted and must come back
# as a follower. Prints per kind, medians and maxima over the runs:
#   takeover: the signal → the first submit acknowledged by the new leader
#     (a task of a higher term; median ≤ 1.5×TTL, max ≤ 2×TTL; SIGTERM ≤ 2 s);
#   submit gap: the longest stretch with no submit acknowledged
#     (≤ that run's takeover + 1 s);
#   SIGSTOP: SIGCONT → the resumed master's /readyz says follower (≤ TTL/3);
# and over all runs: acknowledged submits missing from the store, double
# starts (a (task, attempt) started twice by the workers), tasks without
# exactly one terminal state (not final, two accepted ends, or stored as
# other than the completion a worker reported) — all 0. Then one run with
# PENDING (100,000) pending tasks, submitted as arrays of PENDING_ARRAY
# with no worker registered (nothing can run them, so all stay non-final
# and every one is raised and loaded): SIGTERM to the leader, and the new
# leader's fence raise and load from its `leading` log lines (run with
# --log-json), whether it keeps leading, and every take-office and
# step-down of both masters. With SS_RUNS > 0, a steady-state line:
# nodesim tasks/s on nx-27017, one master with --ha and without,
# alternating, SS_RUNS each.
#
# It builds nothing: build first with
#   cargo build --release -p cloudai-examples -p cloudai-bench
#
#   benches/ha-takeover.sh [RUNS] [TTL]
#   (environment: WORKERS=1000 RATE=20 RUN_MS=2000 STEADY=3 TAIL=5
#    PENDING=100000 PENDING_ARRAY=10000 PENDING_WAIT=120 SS_RUNS=0
#    SS_TASKS=5000 KINDS="kill9 stop term")
#   SUMMARIZE=/tmp/ha-takeover.X/runs.jsonl benches/ha-takeover.sh [RUNS] [TTL]
#     prints the table of an earlier run's records.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10}
TTL=${2:-5}
WORKERS=${WORKERS:-1000}
RATE=${RATE:-20}
RUN_MS=${RUN_MS:-2000}
STEADY=${STEADY:-3}
TAIL=${TAIL:-5}
PENDING=${PENDING:-100000}
PENDING_ARRAY=${PENDING_ARRAY:-10000}
PENDING_WAIT=${PENDING_WAIT:-120}
SS_RUNS=${SS_RUNS:-0}
SS_TASKS=${SS_TASKS:-5000}
KINDS=${KINDS:-"kill9 stop term"}
MASTER=target/release/cloudai-master
NODESIM=target/release/nodesim
TOKEN=ha-takeover-token
# One run's line: takeover (the signal -> the first ack of a task of a
# higher term than any acked before it), gap and totals.
RUN_LINE='
import json, sys
r = json.loads(sys.stdin.read()); s = r["sim"]; t = r["t_signal"]
acks = s.get("acks", [])
pre = max([a[2] for a in acks if a[1] < t] or [0])
new = [a[1] for a in acks if a[1] >= t and a[2] > pre]
tk = (min(new) - t) / 1000 if new else None
gap = s.get("longest_gap_ms", 0) / 1000
keys = ["submits", "lost", "double_assignments", "bad_terminal", "moves", "stale_calls", "submit_errors"]
kind, run, rc = r["kind"], r["run"], r["nodesim_rc"]
print(f"  {kind} #{run}: takeover {tk} s, gap {gap} s, "
      + ", ".join(f"{k} {s.get(k)}" for k in keys) + f", nodesim rc {rc}")
if s.get("errors"):
    print("    errors:", s["errors"][:3])
'
for b in "$MASTER" "$NODESIM"; do
  [[ -x $b ]] || { echo "no $b: cargo build --release -p cloudai-examples -p cloudai-bench" >&2; exit 1; }
done

now_ms() { date +%s%3N; }
free_ports() {
  python3 -c 'import socket
ss=[socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))'
}
# What a master's /readyz says: 200 (leads), F (follower), 503 (other), 000.
probe() {
  local body code
  body=$(curl -s -m 0.5 -w '\n%{http_code}' "http://127.0.0.1:$1/readyz" 2>/dev/null || true)
  code=${body##*$'\n'}
  [[ -z $code ]] && code=000
  if [[ $code == 503 && $body == *follower* ]]; then echo F; else echo "$code"; fi
}
# Waits until probe $1 says $2, for at most $3 seconds: prints when (ms),
# or "null".
wait_probe() {
  local until=$(( $(now_ms) + $3 * 1000 ))
  while (( $(now_ms) < until )); do
    if [[ $(probe "$1") == "$2" ]]; then now_ms; return; fi
    sleep 0.02
  done
  echo null
}
# start_master ID PORT HTTP_PORT DB LOG: starts a master (a child of this
# shell, so that its exit status can be read); its pid in $started.
start_master() {
  "$MASTER" --ha --lease-ttl "$TTL" --store "$uri" --mongo-db "$4" --id "$1" \
    --listen "127.0.0.1:$2" --advertise "127.0.0.1:$2" \
    --http-listen "127.0.0.1:$3" --http-open-probes --log-json --token "$TOKEN" \
    --heartbeat-interval 1 --heartbeat-timeout 30 --lost-after 120 \
    </dev/null >>"$5" 2>&1 &
  started=$!
  pids+=("$started")
}
stop_pid() {
  kill -CONT "$1" 2>/dev/null || true
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}
# Two masters, a leading and b following: sets ids, ports, pids.
start_pair() {
  local dir=$1 db=$2
  read -r pa pb ha hb < <(free_ports)
  start_master ma "$pa" "$ha" "$db" "$dir/ma.log"; pid_a=$started
  [[ $(wait_probe "$ha" 200 30) != null ]] || { echo "master a never led ($dir/ma.log)" >&2; return 1; }
  start_master mb "$pb" "$hb" "$db" "$dir/mb.log"; pid_b=$started
  [[ $(wait_probe "$hb" F 30) != null ]] || { echo "master b never followed ($dir/mb.log)" >&2; return 1; }
}

one_run() {
  local kind=$1 i=$2 dir=$work/$1-$2 db="hatk_$$_$1_$2"
  mkdir -p "$dir"
  start_pair "$dir" "$db"
  "$NODESIM" --master "127.0.0.1:$pa,127.0.0.1:$pb" --token "$TOKEN" --workers "$WORKERS" \
    --rate "$RATE" --max-pending 2000 --run-ms "$RUN_MS" --idle-secs 0 \
    --stop-file "$dir/stop" --ready-file "$dir/ready" \
    --check-store "$uri" --check-db "$db" --json >"$dir/nodesim.json" 2>"$dir/nodesim.err" &
  local sim=$!; pids+=("$sim")
  local until=$(( $(now_ms) + 90000 ))
  while [[ ! -f $dir/ready ]]; do
    kill -0 "$sim" 2>/dev/null || { echo "nodesim ended early: $(tail -3 "$dir/nodesim.err")" >&2; return 1; }
    (( $(now_ms) < until )) || { echo "nodesim never got ready" >&2; return 1; }
    sleep 0.1
  done
  sleep "$STEADY"
  # The leader, by /readyz.
  local old_pid old_id old_port old_http new_http
  if [[ $(probe "$ha") == 200 ]]; then
    old_pid=$pid_a old_id=ma old_port=$pa old_http=$ha new_http=$hb
  elif [[ $(probe "$hb") == 200 ]]; then
    old_pid=$pid_b old_id=mb old_port=$pb old_http=$hb new_http=$ha
  else
    echo "no master leads before the fault" >&2; return 1
  fi
  local t_signal t_new t_cont=null t_follower=null t_restart=null t_restart_follower=null
  t_signal=$(now_ms)
  case $kind in
    kill9) kill -9 "$old_pid" ;;
    stop) kill -STOP "$old_pid" ;;
    term) kill -TERM "$old_pid" ;;
  esac
  # (SIGSTOP: only until the SIGCONT is due.)
  local new_wait=$(( 12 * TTL ))
  [[ $kind == stop ]] && new_wait=$(( 3 * TTL ))
  t_new=$(wait_probe "$new_http" 200 "$new_wait")
  if [[ $kind == stop ]]; then
    local cont_at=$(( t_signal + 3 * TTL * 1000 ))
    while (( $(now_ms) < cont_at )); do sleep 0.01; done
    t_cont=$(now_ms)
    kill -CONT "$old_pid"
    t_follower=$(wait_probe "$old_http" F $(( 3 * TTL )))
    # Stays a follower?
    sleep 1
    echo "after SIGCONT + 1 s: /readyz of the resumed master: $(probe "$old_http")" >>"$dir/notes"
  else
    # Restarted, it must follow.
    while kill -0 "$old_pid" 2>/dev/null && (( $(now_ms) < t_signal + 60000 )); do sleep 0.02; done
    t_restart=$(now_ms)
    local status=0
    { wait "$old_pid"; } 2>/dev/null || status=$?
    local ready_after=never
    [[ $t_new != null ]] && ready_after="$(( t_new - t_signal )) ms"
    echo "old leader $old_id exited (status $status) $(( t_restart - t_signal )) ms after the signal; new leader's /readyz 200 after $ready_after" >>"$dir/notes"
    start_master "$old_id" "$old_port" "$old_http" "$db" "$dir/$old_id.restart.log"
    t_restart_follower=$(wait_probe "$old_http" F 30)
    [[ $old_id == ma ]] && pid_a=$started || pid_b=$started
  fi
  sleep "$TAIL"
  local t_stop; t_stop=$(now_ms)
  touch "$dir/stop"
  local rc=0
  wait "$sim" || rc=$?
  local a_now b_now; a_now=$(probe "$ha"); b_now=$(probe "$hb")
  stop_pid "$pid_a"; stop_pid "$pid_b"
  python3 - "$dir/nodesim.json" "$kind" "$i" "$TTL" "$t_signal" "$t_new" "$t_cont" "$t_follower" \
    "$t_restart" "$t_restart_follower" "$t_stop" "$rc" "$old_id" "$a_now" "$b_now" "$dir" >>"$out" <<'PY'
import json, sys
(f, kind, i, ttl, t_signal, t_new, t_cont, t_follower, t_restart, t_restart_follower, t_stop,
 rc, old, a_now, b_now, d) = sys.argv[1:]
num = lambda s: None if s == "null" else int(s)
try:
    sim = json.loads([l for l in open(f) if l.startswith("{")][-1])
except Exception as e:
    sim = {"error": f"no nodesim report: {e}"}
print(json.dumps({"kind": kind, "run": int(i), "ttl": float(ttl), "t_signal": int(t_signal),
                  "t_new_ready": num(t_new), "t_cont": num(t_cont), "t_follower": num(t_follower),
                  "t_restart": num(t_restart), "t_restart_follower": num(t_restart_follower),
                  "t_stop": int(t_stop), "nodesim_rc": int(rc), "old": old,
                  "end_probes": [a_now, b_now], "dir": d, "sim": sim}))
PY
  tail -1 "$out" | python3 -c "$RUN_LINE" >&2
}

pending_run() {
  local dir=$work/pending db="hatk_$$_pending"
  mkdir -p "$dir"
  start_pair "$dir" "$db"
  echo "== $PENDING pending tasks, arrays of $PENDING_ARRAY, no workers" >&2
  timeout 600 "$NODESIM" --master "127.0.0.1:$pa,127.0.0.1:$pb" --token "$TOKEN" --workers 0 \
    --submit-pending "$PENDING" --array-size "$PENDING_ARRAY" --leader-wait-secs 60 \
    >"$dir/nodesim.json" 2>"$dir/nodesim.err" \
    || echo "  submitting the pending tasks failed: $(tail -1 "$dir/nodesim.err")" >&2
  # SIGTERM to whichever leads now; the other takes over.
  local lead_pid=$pid_a other_http=$hb t_signal t_new held=0
  if [[ $(probe "$hb") == 200 ]]; then lead_pid=$pid_b other_http=$ha; fi
  t_signal=$(now_ms)
  kill -TERM "$lead_pid"
  t_new=$(wait_probe "$other_http" 200 "$PENDING_WAIT")
  # Does it keep leading? /readyz every 0.5 s for 10 s.
  if [[ $t_new != null ]]; then
    for _ in $(seq 20); do [[ $(probe "$other_http") == 200 ]] && held=$((held + 1)); sleep 0.5; done
  fi
  stop_pid "$pid_a"; stop_pid "$pid_b"
  python3 - "$dir" "$t_signal" "$t_new" "$held" >>"$out" <<'PY2'
import datetime, json, sys
d, t_signal, t_new, held = sys.argv[1:]
ms = lambda ts: int(datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
try:
    sim = json.loads([l for l in open(f"{d}/nodesim.json") if l.startswith("{")][-1])
except (IndexError, ValueError):
    sim = {"error": open(f"{d}/nodesim.err").read()[-500:]}
events = []
for name in ("ma", "mb"):
    for l in open(f"{d}/{name}.log"):
        try:
            v = json.loads(l)
        except ValueError:
            continue
        fl = v.get("fields", {})
        m = fl.get("message")
        if m in ("leading", "stopped acting", "released the lease"):
            events.append({"master": name, "message": m, "at": ms(v["timestamp"]), "term": fl.get("term"),
                           "raised": fl.get("raised"), "raise": fl.get("raise"), "load": fl.get("load")})
events.sort(key=lambda e: e["at"])
print(json.dumps({"kind": "pending", "t_signal": int(t_signal),
                  "t_new_ready": None if t_new == "null" else int(t_new), "held_of_20": int(held),
                  "sim": sim, "events": events, "dir": d}))
PY2
  tail -1 "$out" | python3 -c 'import json, sys
r = json.loads(sys.stdin.read()); t = r["t_signal"]
for e in r["events"]:
    at = (e["at"] - t) / 1000
    print(f"  {at:+.1f} s", e["master"], e["message"], "term", e["term"], "raised", e["raised"],
          "raise", e["raise"], "load", e["load"])' >&2 || true
}

steady_state() {
  for r in $(seq "$SS_RUNS"); do
    for which in plain ha; do
      local extra=()
      [[ $which == ha ]] && extra=(--master-arg=--ha "--master-arg=--lease-ttl=$TTL")
      echo "== steady state $r/$SS_RUNS: $which" >&2
      "$NODESIM" --workers "$WORKERS" --tasks "$SS_TASKS" --idle-secs 0 --store "$uri" \
        "${extra[@]}" --json 2>>"$work/steady.err" | python3 -c "
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1]); r['which'] = '$which'; r['kind'] = 'steady'; print(json.dumps(r))" >>"$out"
      tail -1 "$out" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print("  ", r["which"], round(r["tasks_per_s"]), "tasks/s", file=sys.stderr)'
    done
  done
}

summarize() {
  python3 - "$1" "$TTL" "$RUNS" "$PENDING" <<'PY'
import json, re, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ttl, n_runs, pending = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = []

def row(what, values, target="", ok=None, unit="s"):
    vals = [v for v in values if v is not None]
    missing = len(values) - len(vals)
    if not vals:
        rows.append((what, "-", "-", target, "FAIL (no data)" if ok else ""))
        return
    f = (lambda v: f"{v:.3f} s") if unit == "s" else (lambda v: f"{v:g}")
    med, top = statistics.median(vals), max(vals)
    verdict = "" if ok is None else ("pass" if ok(vals, med, top) and not missing else "FAIL")
    if missing:
        verdict += f" ({missing} runs without a value)"
    rows.append((what, f(med), f(top), target, verdict))

def total(what, values, target="0"):
    s = sum(values)
    rows.append((what, f"{s:g}", "", target, "pass" if s == 0 else "FAIL"))

def takeover(r):
    s, t = r["sim"], r["t_signal"]
    acks = s.get("acks", [])
    pre = max([a[2] for a in acks if a[1] < t] or [0])
    new = [a[1] for a in acks if a[1] >= t and a[2] > pre]
    return (min(new) - t) / 1000 if new else None

names = {"kill9": "kill -9", "stop": f"SIGSTOP {3 * ttl:g} s", "term": "SIGTERM"}
faults = [r for r in runs if r["kind"] in names]
for kind, name in names.items():
    rs = [r for r in faults if r["kind"] == kind]
    if not rs:
        continue
    tk = [takeover(r) for r in rs]
    if kind == "term":
        row(f"{name}: takeover (signal -> first ack by new leader)", tk, "<= 2 s",
            lambda v, m, x: x <= 2.0)
    else:
        row(f"{name}: takeover (signal -> first ack by new leader)", tk,
            f"med <= {1.5 * ttl:g} s, max <= {2 * ttl:g} s",
            lambda v, m, x: m <= 1.5 * ttl and x <= 2 * ttl)
    gaps = [r["sim"].get("longest_gap_ms", 0) / 1000 if "acks" in r["sim"] else None for r in rs]
    row(f"{name}: longest submit gap", gaps, "<= takeover + 1 s (each run)",
        lambda v, m, x: all(g is not None and t is not None and g <= t + 1.0 for g, t in zip(gaps, tk)))
    row(f"  {name}: new leader's /readyz 200 after the signal",
        [(r["t_new_ready"] - r["t_signal"]) / 1000 if r["t_new_ready"] else None for r in rs])
    if kind == "stop":
        row(f"{name}: SIGCONT -> resumed master a follower",
            [(r["t_follower"] - r["t_cont"]) / 1000 if r["t_follower"] and r["t_cont"] else None for r in rs],
            f"<= TTL/3 = {ttl / 3:.3f} s", lambda v, m, x: x <= ttl / 3)
    else:
        row(f"  {name}: old leader's process exited after the signal",
            [(r["t_restart"] - r["t_signal"]) / 1000 if r["t_restart"] else None for r in rs])
        row(f"  {name}: restarted master a follower after",
            [(r["t_restart_follower"] - r["t_restart"]) / 1000 if r["t_restart_follower"] else None for r in rs])
    row(f"  {name}: submits acknowledged per run", [r["sim"].get("submits") for r in rs], unit="")
    row(f"  {name}: workers moved by a higher term, per run", [r["sim"].get("moves") for r in rs], unit="")
    row(f"  {name}: calls refused for a lower term, per run", [r["sim"].get("stale_calls") for r in rs], unit="")
    row(f"  {name}: submit calls failed and sent again, per run", [r["sim"].get("submit_errors") for r in rs], unit="")
if faults:
    sims = [r["sim"] for r in faults]
    total("lost acknowledged submits (all runs)", [s.get("lost", 1) for s in sims])
    total("double starts (all runs)", [s.get("double_assignments", 1) for s in sims])
    total("tasks without exactly one terminal state (all runs)", [s.get("bad_terminal", 1) for s in sims])
    total("  runs not drained / nodesim failed", [int(not s.get("drained", False)) for s in sims])
    total("  final but not completed (every run completes)", [s.get("not_completed", 0) for s in sims])
    rows.append(("  final with no report accepted (its ack lost, or failed by the master)",
                 f"{sum(s.get('reports_not_one', 0) for s in sims) - sum(s.get('not_final', 0) for s in sims):g}", "", "", ""))
    total("  tasks in the store no submit acknowledged", [s.get("extra_tasks", 0) for s in sims])
    total("  submits never acknowledged", [s.get("unacknowledged", 0) for s in sims])
    total("  reports refused", [s.get("refused", 0) for s in sims])

def dur(s):
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", s or "")
    if not m:
        return None
    return float(m.group(1)) * {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]

for r in [r for r in runs if r["kind"] == "pending"]:
    t, sim, ev = r["t_signal"], r["sim"], r["events"]
    if "secs" in sim:
        rows.append((f"{sim['submitted']} pending tasks submitted (arrays)", f"{sim['secs']:.1f} s", "", "", ""))
    else:
        rows.append(("pending tasks submitted", "-", "", "", f"FAIL ({sim.get('error', '')[-200:]})"))
    before = [e for e in ev if e["at"] < t]
    after = [e for e in ev if e["at"] >= t]
    downs = [e for e in before if e["message"] == "stopped acting"]
    if downs:
        rows.append(("  leader stepped down while they were submitted", f"{len(downs)} times", "", "0",
                     "FAIL (lease lost with no fault)"))
    lead = [e for e in after if e["message"] == "leading"]
    for n, e in enumerate(lead[:3]):
        raise_s, load_s = dur(e["raise"]), dur(e["load"])
        per = (10000 / e["raised"]) if e["raised"] else None
        what = "new leader" if n == 0 else f"  take-office #{n + 1}"
        rows.append((f"  {what} {e['master']} (term {e['term']}) at +{(e['at'] - t) / 1000:.1f} s: fences raised on",
                     f"{e['raised']}", "", "", ""))
        rows.append(("    raise_fence", f"{raise_s:.3f} s", f"{raise_s * per:.3f} s/10k" if per else "", "", ""))
        rows.append(("    load", f"{load_s:.3f} s", f"{load_s * per:.3f} s/10k" if per else "", "", ""))
    rows.append(("  take-offices after the SIGTERM (both masters)", f"{len(lead)}", "", "1",
                 "pass" if len(lead) == 1 else "FAIL (stepped down and took office again)"))
    rows.append(("  step-downs after the SIGTERM", f"{sum(e['message'] == 'stopped acting' for e in after)}", "", "", ""))
    rows.append(("  SIGTERM -> new leader's /readyz 200",
                 f"{(r['t_new_ready'] - t) / 1000:.3f} s" if r["t_new_ready"] else "-", "", "",
                 "" if r["t_new_ready"] else "FAIL (never within the wait)"))
    rows.append(("  then /readyz 200 in 10 s of samples", f"{r['held_of_20']}/20", "", "20/20",
                 "pass" if r["held_of_20"] == 20 else "FAIL"))

ss = [r for r in runs if r["kind"] == "steady"]
if ss:
    med = lambda w: statistics.median(r["tasks_per_s"] for r in ss if r["which"] == w)
    p, h = med("plain"), med("ha")
    rows.append((f"steady state on nx-27017 ({len(ss) // 2} runs each): tasks/s without --ha",
                 f"{p:.0f}", "", "", ""))
    rows.append(("  with --ha", f"{h:.0f}", "", "", f"ratio {h / p:.2f}"))

hdr = ("what", "median", "max", "target", "result")
w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(5)]
print(f"\nmaster takeover under load, TTL {ttl:g} s, {n_runs} runs per fault kind (medians and maxima over runs)")
for r in [hdr] + rows:
    print("  ".join(str(c).ljust(w[i]) if i in (0, 3) else str(c).rjust(w[i]) if i < 3 else str(c)
                    for i, c in enumerate(r)))
PY
}

# SUMMARIZE=RUNS.jsonl: only the table of an earlier run's records.
if [[ ${SUMMARIZE:-} ]]; then summarize "$SUMMARIZE"; exit 0; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ha-takeover.XXXXXX")
out=$work/runs.jsonl
pid_file=$work/nx.pid
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  scripts/mongo-test-server.sh --stop "$pid_file" || true
}
trap cleanup EXIT
uri=$(scripts/mongo-test-server.sh --pid-file "$pid_file")
echo "nx-27017 at $uri; logs under $work" >&2

for i in $(seq "$RUNS"); do
  for kind in $KINDS; do
    echo "== run $i/$RUNS: $kind" >&2
    one_run "$kind" "$i" || echo "  run $kind #$i failed (logs in $work/$kind-$i)" >&2
  done
done
if (( PENDING > 0 )); then pending_run || echo "  the pending run failed (logs in $work/pending)" >&2; fi
if (( SS_RUNS > 0 )); then steady_state || echo "  the steady-state runs failed" >&2; fi

summarize "$out"
echo "logs and per-run JSON: $work" >&2

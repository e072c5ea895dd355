#!/usr/bin/env bash
# The master lease (HA): `store --lease` RUNS times on the in-memory store
# and on nx-27017 (a MongoDB-wire server, scripts/mongo-test-server.sh),
# alternating, with a lease TTL of TTL seconds; prints the median and the
# maximum over the runs of each measure against its target:
#   1. renewal latency p99 while a takeover raises the fence on 20,000
#      non-final tasks (≤ TTL/10);
#   2. raise + load (raise_fence + Master::start_term) per 10,000 tasks
#      (≤ 2 s);
#   3. takeover after a crash, from the drop of the leader's keeper to the
#      follower's role Leading (median ≤ 1.25·TTL, max ≤ 1.5·TTL), then
#      its raise and load;
#   4. takeover after a release (≤ TTL/6), then its raise and load;
#   5. contention, memory store runs only: 3 keepers per store, 20 stores,
#      real time with a 60 ms TTL, random releases, crashes, restarts and
#      call delays, ≥ 1,000 handovers: overlapping acting windows and
#      double grants (0).
# See benches/src/store.rs for what each phase does.
#
#   benches/ha-lease.sh [RUNS] [TTL] [extra store flags for both stores…]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
TTL=${2:-2}
shift $(( $# < 2 ? $# : 2 ))
cargo build -q --release -p cloudai-bench --bin store
out=$(mktemp)
pid_file=$(mktemp -u "${TMPDIR:-/tmp}/ha-lease-nx.XXXXXX")
trap 'scripts/mongo-test-server.sh --stop "$pid_file" || true; rm -f "$out"' EXIT
uri=$(scripts/mongo-test-server.sh --pid-file "$pid_file")
for i in $(seq "$RUNS"); do
  echo "== run $i/$RUNS: memory"
  target/release/store --lease --json --ttl "$TTL" --store memory "$@" | tee -a "$out"
  echo "== run $i/$RUNS: nx-27017"
  target/release/store --lease --json --ttl "$TTL" --handovers 0 --store "$uri" "$@" | tee -a "$out"
done
python3 - "$out" "$TTL" "$RUNS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ttl, n_runs = float(sys.argv[2]), int(sys.argv[3])
rows = []

def row(what, store, values, unit, target="", ok=None):
    values = [v for v in values if v is not None]
    if not values:
        rows.append((what, store, "-", "-", target, "FAIL (no data)" if ok else ""))
        return
    def f(v):
        if unit == "ms":
            return f"{v:.3f} ms" if v < 1 else f"{v:.1f} ms"
        if unit == "s":
            return f"{v:.3f} s"
        return f"{v:g}"
    med, top = statistics.median(values), max(values)
    verdict = "" if ok is None else ("pass" if ok(values, med, top) else "FAIL")
    rows.append((what, store, f(med), f(top), target, verdict))

flat = lambda rs, k: [v for r in rs for v in r[k]]
for store, label in [("memory", "memory"), ("mongodb", "nx-27017")]:
    rs = [r for r in runs if r["store"] == store]
    if not rs:
        continue
    tasks = rs[0]["tasks"]
    row(f"renewal p99 under a raise ({tasks} tasks)", label,
        [r["renew_p99_ms"] for r in rs], "ms", f"p99 <= TTL/10 = {ttl * 100:.0f} ms",
        lambda v, m, x: x <= ttl * 100)
    row("  renewals timed during raises, per run", label, [r["renew_n"] for r in rs], "")
    row("raise + load per 10,000 tasks", label,
        [r["raise_load_per_10k_s"] for r in rs], "s", "<= 2 s", lambda v, m, x: x <= 2.0)
    row("  raise_fence per 10,000", label, [r["raise_per_10k_s"] for r in rs], "s")
    row("  Master::start_term per 10,000", label, [r["load_per_10k_s"] for r in rs], "s")
    row("takeover after a crash", label, flat(rs, "crash_s"), "s",
        f"med <= {1.25 * ttl:g} s, max <= {1.5 * ttl:g} s",
        lambda v, m, x: m <= 1.25 * ttl and x <= 1.5 * ttl)
    row("  then raise", label, flat(rs, "crash_raise_s"), "s")
    row("  then load", label, flat(rs, "crash_load_s"), "s")
    row("takeover after a release", label, flat(rs, "release_s"), "s",
        f"<= TTL/6 = {ttl / 6:.3f} s", lambda v, m, x: x <= ttl / 6)
    row("  then raise", label, flat(rs, "release_raise_s"), "s")
    row("  then load", label, flat(rs, "release_load_s"), "s")
    cs = [r["contention"] for r in rs if r.get("contention")]
    if cs:
        gap = cs[0]["ttl_ms"] / 3 - 1
        row(f"contention: handovers per run (TTL {cs[0]['ttl_ms']} ms)", label,
            [c["handovers"] for c in cs], "", ">= 1000 each run",
            lambda v, m, x: min(v) >= 1000)
        row("  overlapping windows (store writes)", label,
            [c["overlaps_store"] for c in cs], "", "0", lambda v, m, x: x == 0)
        row("  overlapping windows (published roles)", label,
            [c["overlaps_roles"] for c in cs], "", "0", lambda v, m, x: x == 0)
        row("  double grants (store writes + roles)", label,
            [c["double_store"] + c["double_roles"] for c in cs], "", "0",
            lambda v, m, x: x == 0)
        row("  Leading still published after release()", label,
            [c["leading_after_release"] for c in cs], "", "0", lambda v, m, x: x == 0)
        row("  closest handover after an expiry (min)", label,
            [c["gap_expiry_ms"] for c in cs], "ms", f">= TTL/3 - 1 ms = {gap:g} ms",
            lambda v, m, x: min(v) >= gap)

w = [max(len(r[i]) for r in rows + [("what", "store", "median", "max", "target", "result")])
     for i in range(6)]
print(f"\nmaster lease, TTL {ttl:g} s, {n_runs} runs per store (medians and maxima over runs)")
for r in [("what", "store", "median", "max", "target", "result")] + rows:
    print("  ".join(c.ljust(w[i]) if i in (0, 1, 4) else c.rjust(w[i]) if i < 4 else c
                    for i, c in enumerate(r)))
PY

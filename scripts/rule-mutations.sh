#!/usr/bin/env bash
# Breaks each core rule in turn and checks that the test suite notices.
# A rule whose mutation survives has no test that can fail: this script
# then exits non-zero. The tree is restored after every mutation.
#
#   scripts/rule-mutations.sh        # all mutations (about 30 s each)
#   PATTERNS_ONLY=1 scripts/rule-mutations.sh   # only check every pattern is still in the code
set -euo pipefail
cd "$(dirname "$0")/.."

survived=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
build() { cargo test -q --no-run -p cloudai-core --all-features; }

# The unmutated tree must build first, or every mutation below would read
# as invalid for a reason that is not the mutation's (a full disk, say).
if [[ -z "${PATTERNS_ONLY:-}" ]] && ! build >"$log" 2>&1; then
  echo "the unmutated cloudai-core tests do not build:" >&2
  tail -n 30 "$log" >&2
  df -h . >&2
  exit 1
fi
mutate() { # file, label, old text, new text
  local file=$1 label=$2 old=$3 new=$4 backup
  backup=$(mktemp)
  cp "$file" "$backup"
  if ! OLD="$old" NEW="$new" python3 - "$file" <<'PY'
import os, sys
p = sys.argv[1]; s = open(p).read(); old = os.environ["OLD"]
if old not in s: sys.exit(1)
open(p, "w").write(s.replace(old, os.environ["NEW"], 1))
PY
  then
    echo "MISSING  $label: pattern not found in $file (update this script)"; survived=1
    rm -f "$backup"; return
  fi
  if [[ -n "${PATTERNS_ONLY:-}" ]]; then
    cp "$backup" "$file"; rm -f "$backup"; return
  fi
  # A mutation that does not compile proves nothing: say so and fail.
  if ! build >"$log" 2>&1; then
    echo "INVALID  $label: the mutated code does not compile (update this script)"; survived=1
    tail -n 15 "$log" | sed 's/^/    /'
    cp "$backup" "$file"; rm -f "$backup"; return
  fi
  # A mutation may make a simulation spin without advancing virtual time:
  # a hang counts as caught, after a bounded wait. One failing test binary
  # is enough: cargo stops there (most are caught by the unit tests,
  # before the minute the fault explorer takes).
  # The fault explorer, by far the slowest, runs last and only if
  # everything else passed.
  if timeout 300 cargo test -q -p cloudai-core --all-features --lib --test invariants \
      --test memory_conformance --test process_runtime --test sim_scenarios \
      --test store_faults --test worker_outbox >/dev/null 2>&1 \
    && timeout 300 cargo test -q -p cloudai-core --all-features --test sim_explorer >/dev/null 2>&1; then
    echo "SURVIVED $label"; survived=1
  else
    echo "caught   $label"
  fi
  cp "$backup" "$file"; rm -f "$backup"
}

mutate cloudai-core/src/output/log.rs "a reader from an offset gets the kept bytes before it again" \
  'let begin = from.max(s.start);' 'let begin = s.start;'
mutate cloudai-core/src/output/log.rs "a run's output is kept past its retention" \
  'let keep_from = self.end.saturating_sub(self.retain);' 'let keep_from = 0;'
mutate cloudai-core/src/events/mod.rs "a cursor older than the event buffer resumes with a gap" \
  'if seq + 1 < oldest {' 'if false {'
mutate cloudai-core/src/events/mod.rs "a cursor from another master run is resumed" \
  'Some(c) if c.epoch != self.epoch => {' 'Some(c) if false => {'
mutate cloudai-core/src/lifecycle/mod.rs "a late report may overwrite cancelled" \
  'const FROM_RUNNING: &[TaskStatus] = &[TaskStatus::Running];' \
  'const FROM_RUNNING: &[TaskStatus] = &[TaskStatus::Running, TaskStatus::Cancelled];'
mutate cloudai-core/src/lifecycle/mod.rs "a cancel may overwrite completed" \
  'const CANCELLABLE: &[TaskStatus] = &[TaskStatus::Pending, TaskStatus::Running];' \
  'const CANCELLABLE: &[TaskStatus] = &[TaskStatus::Pending, TaskStatus::Running, TaskStatus::Completed];'
mutate cloudai-core/src/lifecycle/mod.rs "reports accepted from any worker" \
  'if task.worker.as_ref() != Some(claimed) {' 'if false {'
mutate cloudai-core/src/lifecycle/change.rs "reports about an earlier attempt apply" \
  '            && self.expected_attempt.is_none_or(|a| task.attempt == a)' ''
mutate cloudai-core/src/results.rs "results of an earlier attempt are stored" \
  'if incoming.attempt != task.attempt {' 'if false {'
mutate cloudai-core/src/memory.rs "store ignores the compare-and-set guard" \
  'if !change.admits(task) {' 'if false {'
mutate cloudai-core/src/memory.rs "results not deduplicated" \
  'if results.contains_key(&result.task_id) {' 'if false {'
mutate cloudai-core/src/memory.rs "the memory store's index keeps a task where it no longer is" \
  '        tasks.index.track(&before, false);' ''
mutate cloudai-core/src/memory.rs "a page starts again at the task it ended with" \
  'Some(k) => keys.range(..(k.created_at, k.id.clone())),' 'Some(k) => keys.range(..=(k.created_at, k.id.clone())),'
mutate cloudai-core/src/memory.rs "retention leaves the results of the tasks it removes" \
  '            results.remove(id);' ''
mutate cloudai-core/src/memory.rs "heartbeat time moves backwards" \
  'Some(w) if w.last_heartbeat.is_some_and(|last| last > beat.at) => {}' 'Some(w) if false => {}'
mutate cloudai-core/src/results.rs "stored result keeps the reporter's status" \
  $'        status: task.status,\n        message,\n        ..incoming' $'        message,\n        ..incoming'
mutate cloudai-core/src/ledger.rs "release leaks the allocation" \
  $'            .get_mut(&worker)\n            .and_then(|a| a.remove(task))?;' \
  $'            .get(&worker)\n            .and_then(|a| a.tasks.get(task).map(|h| h.req))?;'
mutate cloudai-core/src/ledger.rs "the free-capacity index misses a freed worker" \
  $'            .and_then(|a| a.remove(task))?;\n        self.refresh(&worker);' '            .and_then(|a| a.remove(task))?;'
mutate cloudai-core/src/placement/mod.rs "placement ignores inactive workers" \
  'candidates.iter().filter(|c| c.active).collect()' 'candidates.iter().collect()'
mutate cloudai-core/src/liveness.rs "inactive one tick late" \
  'let d = past(now, self.config.timeout);' 'let d = past(now, self.config.timeout).saturating_add(Duration::from_millis(1));'

# Service rules, caught by the simulation (scenarios and fault explorer)
# and by the services' unit tests.
mutate cloudai-core/src/master/transitions.rs "master never releases resources" \
  $'                Effect::Release { worker, attempt } => {\n                    st.release_run(&task.id, worker, *attempt);\n                }' \
  'Effect::Release { .. } => {}'
mutate cloudai-core/src/master/transitions.rs "the executor skips sending assignments" \
  'Effect::SendAssignment { worker } => st.owe_send(task.clone(), worker.clone()),' \
  'Effect::SendAssignment { .. } => {}'
mutate cloudai-core/src/master/transitions.rs "the executor skips stops" \
  'st.owe_stop(worker.clone(), run, *grace, now);' 'let _ = (worker, run, grace, now);'
mutate cloudai-core/src/master/state/workers.rs "placement ignores liveness" \
  '&& self.liveness.health(worker, now) == Some(Health::Active)' ''
mutate cloudai-core/src/master/owed_stops.rs "a stop that failed to arrive is never retried" \
  'owed.phase = Phase::Parked(why);' 'let _ = why;'
mutate cloudai-core/src/master/state/workers.rs "a heartbeat does not retry owed stops" \
  '        self.stops.retry(worker);' ''
mutate cloudai-core/src/master/dispatch.rs "a placement cancelled meanwhile keeps its reservation" \
  'Ok(Applied::Refused { .. }) => self.state().unreserve(&id),' 'Ok(Applied::Refused { .. }) => {}'
mutate cloudai-core/src/master/membership.rs "re-registration keeps tasks the worker no longer has" \
  'let absent = |r: &RunningTask| !listed.contains(r) && !st.in_flight(&r.task);' \
  'let absent = |r: &RunningTask| false && !st.in_flight(&r.task);'
mutate cloudai-core/src/worker/runs.rs "a run stopped before its assignment still starts" \
  'if self.tombstones.contains(run) {' 'if false {'
mutate cloudai-core/src/master/membership.rs "a registration from another instance takes a live id" \
  'Ok(Ok(answer)) if answer.id == reg.worker && answer.instance == held => {' 'Ok(Ok(answer)) if false => {'
mutate cloudai-core/src/worker/mod.rs "a worker obeys calls meant for another" \
  'if *worker == cfg.id && instance.is_none_or(|i| *i == cfg.instance) {' 'if true {'
mutate cloudai-core/src/master/state/runs.rs "a freed slot does not wake the tasks waiting for it" \
  $'            self.epoch += 1;\n            self.queue.wake(&worker);' '            self.epoch += 1;'
mutate cloudai-core/src/master/state/queue.rs "a blocked class is tried before it is woken" \
  '.filter(|(_, w)| w.blocked.is_none())' '.filter(|_| true)'
mutate cloudai-core/src/master/state/queue.rs "a joining worker leaves classes no freed slot could fit asleep" \
  '        self.wake_where(worker, |_| true);' '        self.wake_where(worker, |b| !b.needs_worker);'
mutate cloudai-core/src/master/state/workers.rs "tasks are placed on a drained worker" \
  '.is_some_and(|w| !w.unreachable && w.drain.is_none())' '.is_some_and(|w| !w.unreachable)'
mutate cloudai-core/src/master/driver.rs "a drain deadline stops nothing" \
  'store_work.spawn(async move { m.drain_deadline_passed(&worker).await });' 'let _ = (&m, &worker);'
mutate cloudai-core/src/worker/shutdown.rs "a shutting-down worker does not say it is leaving" \
  'let leave = self.inner.master.leave(&me);' 'let leave = async { Ok::<(), crate::Error>(()) };'
mutate cloudai-core/src/worker/shutdown.rs "shutdown leaves containers running" \
  'container.filter(|_| stopping.insert(run.clone()))' 'container.filter(|_| stopping.insert(run.clone()) && false)'

# Work that survives faults: the retry budgets, at most one attempt
# running, the fence, time limits.
mutate cloudai-core/src/attempts.rs "a retry past the budget" \
  'if after.failures > policy.retries {' 'if after.failures > policy.retries + 1 {'
mutate cloudai-core/src/attempts.rs "a requeue past the crash limit" \
  'if limit > 0 && after.losses > limit {' 'if limit > 0 && after.losses > limit + 1 {'
mutate cloudai-core/src/lifecycle/plan.rs "a next attempt placed before the previous ended" \
  $'                let mut c = self.change(TaskStatus::Pending, Assignment::Keep, Some(reason));\n                c.not_before = self.not_before(delay);\n                c\n            }\n        };\n        change.push = Some(Box::new(entry));\n        self.done(change, vec![stop(w, a, grace)])' \
  $'                let mut c = self.change(TaskStatus::Pending, Assignment::Clear, Some(reason));\n                c.not_before = self.not_before(delay);\n                c\n            }\n        };\n        change.push = Some(Box::new(entry));\n        self.done(change, vec![stop(w, a, grace), release(w, a)])'
mutate cloudai-core/src/lifecycle/plan.rs "a cancelled run's resources are freed before its stop lands" \
  'effects.push(stop(w, a, grace));' 'effects.push(stop(w, a, grace));effects.push(release(w, a));'
mutate cloudai-core/src/worker/session.rs "a worker does not fence itself" \
  'session.fence_after = fence_after;' 'session.fence_after = fence_after.filter(|_| false);'
mutate cloudai-core/src/worker/supervise.rs "a timeout loses to a late exit" \
  'let end = match (stop, &exit) {' 'let end = match (stop.filter(|_| exit.is_err()), &exit) {'
mutate cloudai-core/src/master/state/gate.rs "a retry is placed before its delay" \
  'Some(due) if due > now => self.delay(entry, due),' 'Some(due) if false && due > now => self.delay(entry, due),'

# Short tasks: one supervised run, in its state directory's supervisor.
mutate cloudai-core/src/process/one_run.rs "a supervised run outlives its lease" \
  '(now >= lease_until).then(|| {' '(now >= lease_until && false).then(|| {'
mutate cloudai-core/src/process/one_run.rs "a lease renewal does not extend the lease" \
  '*lock(&self.lease) = later(Instant::now(), lease);' 'let _ = later(Instant::now(), lease);'
mutate cloudai-core/src/process/one_run.rs "a supervised run outlives its time limit" \
  '.is_some_and(|limit| now.duration_since(started) >= limit)' '.is_some_and(|_| false)'
mutate cloudai-core/src/process/one_run.rs "a run's exit is recorded before its output is drained" \
  'Some(until) if now >= until || output.ended() => break,' 'Some(_) => break,'
mutate cloudai-core/src/process/one_run.rs "a run's watchers are told before its end is recorded" \
  '    let recorded = status.and_then(|status| {' \
  $'    run.tell(None);\n    let recorded = status.and_then(|status| {'
mutate cloudai-core/src/process/supervisor.rs "a run whose record says it ran is started again" \
  'None if !files.holds_only(first) => {' 'None if false => {'
mutate cloudai-core/src/process/supervisor.rs "a run asked to start again as it starts is started twice" \
  'Some(Claim::Starting(others)) => return others.push(answers),' 'Some(Claim::Starting(_)) => {}'
mutate cloudai-core/src/process/record.rs "half a record's line is read" \
  "let Some(end) = bytes.iter().rposition(|b| *b == b'\\n') else {" \
  'let Some(end) = Some(bytes.len()).filter(|n| *n > 0) else {'
mutate cloudai-core/src/process/record.rs "an append makes a removed run's record again" \
  '            .append(true)
            .open(&self.record)?' '            .append(true)
            .create(true)
            .open(&self.record)?'

# Each task gets its own GPUs.
mutate cloudai-core/src/ledger.rs "a GPU another run holds is handed out again" \
  '.filter(|g| !self.in_use.contains_key(g))' '.filter(|_| true)'
mutate cloudai-core/src/ledger.rs "named GPUs are reserved though another run holds them" \
  'self.devices.binary_search(g).is_ok() && !self.in_use.contains_key(g))' \
  'self.devices.binary_search(g).is_ok())'
mutate cloudai-core/src/ledger.rs "a reconcile gives runs other GPUs than the store names" \
  '.partition(|(_, h)| h.gpus.len() >= h.req.gpus as usize);' '.partition(|_| false);'
mutate cloudai-core/src/process/command.rs "a run without GPUs sees every GPU of its host" \
  'env.insert("CUDA_VISIBLE_DEVICES".into(), devices.clone());' ''

# Each attempt keeps a record of what it used.
mutate cloudai-core/src/worker/supervise.rs "a run's usage is left out of its result" \
  '            finished_at,
            usage,' '            finished_at,
            usage: usage.filter(|_| false),'
mutate cloudai-core/src/model/attempt.rs "an attempt forgets what its run used" \
  'usage: result.usage,' 'usage: None,'

# Container options: applied or refused; mounts only where allowed.
mutate cloudai-core/src/master/state/placement.rs "a task is placed on a worker that does not allow its mounts" \
  'if !self.allows_mounts(id, &class.mounts) || !self.matches(id, &class.constraints) {' \
  'if !self.matches(id, &class.constraints) {'
mutate cloudai-core/src/master/dispatch.rs "a mount no registered worker allows is accepted at submit" \
  '            .mounts_allowed_somewhere(&sources, spec.pin.as_ref())' \
  '            .mounts_allowed_somewhere(&sources, spec.pin.as_ref())
            && false'
mutate cloudai-core/src/worker/supervise.rs "a worker mounts a path that resolves outside what it allows" \
  '            if !Mount::allowed_by(&real, &allowed) {' '            if !Mount::allowed_by(source, &cfg.allow_mounts) {'
mutate cloudai-core/src/runtime.rs "an option a runtime cannot apply is ignored" \
  '    if missing.is_empty() {' '    if true {'

# Master HA, part 1: the lease, fenced writes, acting only within a tenure.
mutate cloudai-core/src/memory.rs "a write lands on a document fenced by a later term" \
  'Some(fence) if fence > writer => Err(Error::Fenced { writer, fence }),' \
  'Some(fence) if false && fence > writer => Err(Error::Fenced { writer, fence }),'
mutate cloudai-core/src/memory.rs "a raise lowers a fence" \
  '                *fence = (*fence).max(term);
                raised += 1;' '                *fence = term;
                raised += 1;'
mutate cloudai-core/src/memory.rs "an adopted task keeps its old fence" \
  '        for id in &below {
            tasks.fences.insert(id.clone(), term);
        }' ''
mutate cloudai-core/src/lease.rs "a candidate takes over without waiting a TTL" \
  'if returned >= s.since.saturating_add(wait) {' 'if true {'
mutate cloudai-core/src/lease.rs "a candidate waits its own TTL, not the holder's longer one" \
  'let wait = self.ttl.max(record.ttl);' 'let wait = self.ttl;'
mutate cloudai-core/src/lease.rs "a leader's acting deadline counts from the renewal's answer" \
  '        Ok(applied.then(|| Lead {
            term: new.term,
            since: sent,
            version: new.version,
            sent,
            until: sent.saturating_add(self.ttl * 2 / 3),' '        Ok(applied.then(|| Lead {
            term: new.term,
            since: sent,
            version: new.version,
            sent,
            until: self.clock.now().saturating_add(self.ttl * 2 / 3),'
mutate cloudai-core/src/master/leadership.rs "a new leader serves without raising the fences" \
  'let raised = office.lease.raise_fence(term).await?;' 'let raised = 0u64;'
mutate cloudai-core/src/master/leadership.rs "tasks an older term stored late are never adopted" \
  'master.adopt_stored(&tasks).await;' 'drop(tasks);'
mutate cloudai-core/src/metrics/store.rs "a master sends writes after its tenure or a fenced write" \
  'if *self.alarm.raised.borrow() || !self.tenure.acting() {' 'if false {'
mutate cloudai-core/src/master/mod.rs "a write that must not be lost retries a fenced write for ever" \
  'Err(e) if matches!(e, crate::Error::Fenced { .. }) || !self.acting() => {' 'Err(e) if false => {'
mutate cloudai-core/src/master/dispatch.rs "a submit stored after its master's tenure is acknowledged" \
  '    pub(super) fn acknowledge<T>(&self, made: T) -> Result<T> {
        if self.acting() {' '    pub(super) fn acknowledge<T>(&self, made: T) -> Result<T> {
        if true {'
mutate cloudai-core/src/master/dispatch.rs "a request id retried with another spec returns the first task" \
  'Some(held) if held.spec_hash != digest =>' 'Some(held) if false =>'
mutate cloudai-core/src/master/dispatch.rs "ids of two terms can collide" \
  '            .saturating_mul(1 << TERM_SHIFT)
            .saturating_add(n)' '            .saturating_mul(0)
            .saturating_add(n)'
mutate cloudai-core/src/lease.rs "a master that lapsed and leads again in its term keeps its old master" \
  'matches!(self, Role::Leading { until, .. } if self.stretch() == Some(stretch) && now < *until)' \
  'matches!(self, Role::Leading { term, until, .. } if *term == stretch.0 && now < *until)'

mutate cloudai-core/src/worker/session.rs "a worker obeys a call of a term below the highest it saw" \
  'if term < session.term {' 'if false {'
mutate cloudai-core/src/worker/session.rs "a higher term's master does not pull the worker over" \
  'let moves = master.term > lock(&self.inner.session).registered;' 'let moves = false;'
mutate cloudai-core/src/master/config.rs "masters under a lease accept timings under which a takeover stops the work" \
  'if stop_margin < self.lease_ttl * 2 {' 'if false {'

mutate cloudai-core/src/master/transitions.rs "a run cut off during a takeover uses its crash budget" \
  'if result.cause != EndCause::CutOff || self.term() == Term::ZERO {' 'if true {'

# Pipelines: dependencies, throttles, constraints, priority.
mutate cloudai-core/src/master/state/gate.rs "a dependent is queued before its parents end" \
  'if entry.waits && !self.gate.met.contains_key(&entry.id) {' 'if false {'
mutate cloudai-core/src/model/dependency.rs "after-ok holds whatever the parent's end" \
  'Condition::AfterOk => ok,' 'Condition::AfterOk => true,'
mutate cloudai-core/src/master/state/gate.rs "a dependency that can never hold leaves its dependent waiting" \
  'self.gate.unmet.push((child, reason));' 'drop((child, reason));'
mutate cloudai-core/src/master/dependencies.rs "a parent that ended before its dependent was registered decides nothing" \
  'st.parent_ended(&p.id, p.status, chain.as_ref(), now);' 'drop(chain);'
mutate cloudai-core/src/master/state/gate.rs "an array throttle admits every member" \
  'if t.admitted.len() < t.limit as usize {' 'if true {'
mutate cloudai-core/src/master/state/placement.rs "a task is placed on a worker its constraints exclude" \
  'if !self.allows_mounts(id, &class.mounts) || !self.matches(id, &class.constraints) {' \
  'if !self.allows_mounts(id, &class.mounts) {'
mutate cloudai-core/src/master/state/queue.rs "the queue ignores priority" \
  '(Reverse(self.priority), self.created_at, id)' '(Reverse(0), self.created_at, id)'

mutate cloudai-core/src/worker/session.rs "a worker's beats wait behind its reports" \
  'self.flush_in_background();' 'self.flush_outbox().await;'
mutate cloudai-core/src/worker/outbox.rs "a report being sent is sent again by a flush" \
  '.filter(|(_, o)| !o.sending)' '.filter(|_| true)'

mutate cloudai-core/src/master/state/gate.rs "a step after-any a task cancelled as unmet runs" \
  'Some(_) => Some(Verdict::Never),' 'Some(_) => condition.verdict(status),'
mutate cloudai-core/src/lifecycle/mod.rs "a dependency cancels a task that already ran" \
  '(TaskEvent::Unmet { .. }, _) if task.attempt > 0 =>' '(TaskEvent::Unmet { .. }, _) if false =>'

exit $survived

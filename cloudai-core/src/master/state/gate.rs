//! The one gate to the queue. Every path that makes a pending task
//! placeable (a submit, a master's load, an adoption, a request-id replay,
//! a requeue, a retry coming due, a dependency resolved) passes here, in
//! this order: its dependencies, its array's throttle, its not-before
//! time. A task held at the gate waits outside the placement queue, so it
//! costs a pass nothing and never blocks other work.
//!
//! Dependencies: a dependent waits until each parent has ended as its
//! condition asks. Parents index their dependents, so a parent's end wakes
//! exactly its own. A condition that can never hold owes the dependent's
//! cancellation (whose own end cancels its dependents in turn, naming the
//! same root). A verdict is taken only on a final status, so a parent
//! waiting for a retry decides nothing, and once a dependent was assigned
//! (attempt 1 or more) its dependencies are known to have held.
//!
//! Throttles: at most `limit` members of an array are admitted (queued,
//! placed, running or waiting out a retry delay) at once; the others wait
//! in (priority, age) order and are admitted as members end.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::queue::{Class, Rank};
use super::State;
use crate::model::{
    never_reason, ArrayId, Condition, Dependency, TaskId, TaskRecord, TaskStatus, Timestamp,
    Verdict,
};

/// What the queue needs of a pending task.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) id: TaskId,
    pub(super) rank: Rank,
    pub(super) class: Class,
    pub(super) not_before: Option<Timestamp>,
    /// Its array and the array's throttle, if it has one.
    throttle: Option<(ArrayId, u32)>,
    /// It waits on parents (never assigned yet, and names some).
    waits: bool,
    /// The parents, while it is on its way to wait for them.
    after: Vec<Dependency>,
}

impl Entry {
    pub(super) fn of(task: &TaskRecord) -> Entry {
        Entry {
            id: task.id.clone(),
            rank: Rank::of(task),
            class: Class::of(task),
            not_before: task.not_before,
            throttle: task
                .array
                .as_ref()
                .and_then(|m| Some((m.id.clone(), m.limit?))),
            waits: task.attempt == 0 && !task.spec.after.is_empty(),
            after: Vec::new(),
        }
    }
}

/// A dependent and the parents it still waits on.
#[derive(Debug)]
struct Waiter {
    unresolved: HashMap<TaskId, Condition>,
    /// Every parent, decided or not.
    parents: Vec<TaskId>,
    entry: Entry,
}

/// One throttled array.
#[derive(Debug)]
struct Throttle {
    limit: u32,
    admitted: HashSet<TaskId>,
    /// Members over the limit, in queue order.
    held: BTreeMap<(std::cmp::Reverse<i32>, Timestamp, TaskId), Entry>,
    held_rank: HashMap<TaskId, Rank>,
}

/// The gate's state.
#[derive(Debug, Default)]
pub(super) struct Gate {
    waiting: HashMap<TaskId, Waiter>,
    /// Parent → dependents that were waiting on it when they registered.
    children: HashMap<TaskId, Vec<TaskId>>,
    /// Dependents whose every condition held, not yet assigned, with
    /// their parents.
    met: HashMap<TaskId, Vec<TaskId>>,
    /// Dependents owed a cancellation, and the task whose end began the
    /// chain.
    roots: HashMap<TaskId, TaskId>,
    /// Cancellations owed: dependents that can never run, with the reason.
    unmet: Vec<(TaskId, String)>,
    arrays: HashMap<ArrayId, Throttle>,
}

impl State {
    /// Passes a pending task through the gate: queued now, at its
    /// not-before time, or held for its parents or its array's throttle.
    pub(in crate::master) fn enqueue_when_due(&mut self, task: &TaskRecord, now: Timestamp) {
        self.enqueue(task, now, None);
    }

    /// [`State::enqueue_when_due`] with a note on why it (re)joined.
    pub(in crate::master) fn enqueue(
        &mut self,
        task: &TaskRecord,
        now: Timestamp,
        note: Option<String>,
    ) {
        let mut entry = Entry::of(task);
        if entry.waits && !self.gate.met.contains_key(&entry.id) {
            entry.after.clone_from(&task.spec.after);
            self.gate.wait(entry);
            return;
        }
        self.admit(entry, now, note);
    }

    /// The gate past the dependencies (held, or found to hold).
    fn admit(&mut self, entry: Entry, now: Timestamp, note: Option<String>) {
        if !self.gate.throttle_admits(&entry) {
            return;
        }
        match entry.not_before {
            Some(due) if due > now => self.delay(entry, due),
            _ => {
                self.queue.insert(entry.id, entry.rank, entry.class, note);
                self.queue_pass = true;
            }
        }
    }

    /// `task` left `pending` (placed, cancelled, ...): the gate forgets
    /// it, but a throttle still counts it until it ends.
    pub(super) fn gate_forget_pending(&mut self, task: &TaskRecord) {
        if !task.spec.after.is_empty() {
            self.gate.waiting.remove(&task.id);
            self.gate.met.remove(&task.id);
        }
        let Some(array) = task.array.as_ref() else {
            return;
        };
        if let Some(t) = self.gate.arrays.get_mut(&array.id) {
            if let Some(rank) = t.held_rank.remove(&task.id) {
                t.held.remove(&(
                    std::cmp::Reverse(rank.priority),
                    rank.created_at,
                    task.id.clone(),
                ));
            }
        }
    }

    /// `task` reached a final status: its dependents are decided and its
    /// array's throttle admits the next member.
    pub(super) fn gate_ended(&mut self, task: &TaskRecord, now: Timestamp) {
        // Most tasks are nobody's parent: no lookups for them.
        let chain = match self.gate.roots.is_empty() {
            true => None,
            false => self.gate.roots.remove(&task.id),
        };
        if !self.gate.children.is_empty() {
            self.parent_ended(&task.id, task.status, chain.as_ref(), now);
        }
        let Some(array) = task.array.as_ref() else {
            return;
        };
        let next = match self.gate.arrays.get_mut(&array.id) {
            Some(t) => {
                t.admitted.remove(&task.id);
                t.next()
            }
            None => Vec::new(),
        };
        // An array none of whose members waits or holds a slot is
        // forgotten (it is made again if one comes back).
        if self
            .gate
            .arrays
            .get(&array.id)
            .is_some_and(|t| t.admitted.is_empty() && t.held.is_empty())
        {
            self.gate.arrays.remove(&array.id);
        }
        for entry in next {
            self.admit(entry, now, None);
        }
    }

    /// `task` is known to be final though this master did not carry out
    /// its transition: the gate forgets it and decides what waited on it
    /// (both safe to repeat).
    pub(in crate::master) fn gate_final(&mut self, task: &TaskRecord, now: Timestamp) {
        self.gate_forget_pending(task);
        self.gate_ended(task, now);
    }

    /// A member of a throttled array holds a slot of its throttle (it runs,
    /// or its run is ending): counted before a load queues the others.
    pub(in crate::master) fn count_admitted(&mut self, task: &TaskRecord) {
        let entry = Entry::of(task);
        if let Some((array, limit)) = entry.throttle {
            self.gate
                .throttle(array, limit)
                .admitted
                .insert(task.id.clone());
        }
    }

    /// `parent` is known to have ended as `status` (from its transition or
    /// from the store): each dependent still waiting on it is decided.
    /// `chain` is the root task when the parent itself was cancelled for a
    /// dependency that could never hold: then none of its subtree ever
    /// starts, whatever the conditions. Idempotent.
    pub(in crate::master) fn parent_ended(
        &mut self,
        parent: &TaskId,
        status: TaskStatus,
        chain: Option<&TaskId>,
        now: Timestamp,
    ) {
        if !status.is_terminal() {
            return;
        }
        let root = chain.unwrap_or(parent);
        for child in self.gate.children.remove(parent).unwrap_or_default() {
            let Some(w) = self.gate.waiting.get_mut(&child) else {
                continue;
            };
            let Some(condition) = w.unresolved.remove(parent) else {
                continue;
            };
            let verdict = match chain {
                Some(_) => Some(Verdict::Never),
                None => condition.verdict(status),
            };
            match verdict {
                Some(Verdict::Met) if w.unresolved.is_empty() => {
                    if let Some(w) = self.gate.waiting.remove(&child) {
                        self.gate.met.insert(child, w.parents);
                        self.admit(w.entry, now, None);
                    }
                }
                Some(Verdict::Met) | None => {}
                Some(Verdict::Never) => {
                    self.gate.waiting.remove(&child);
                    let dependency = Dependency {
                        task: parent.clone(),
                        condition,
                    };
                    let reason = never_reason(&dependency, status, root);
                    self.gate.roots.insert(child.clone(), root.clone());
                    self.gate.unmet.push((child, reason));
                }
            }
        }
    }

    /// A pending task's priority changed: it takes its new place wherever
    /// it waits (the queue, a retry delay, its parents, its throttle).
    pub(in crate::master) fn reprioritize(&mut self, task: &TaskRecord) {
        let rank = Rank::of(task);
        if let Some(w) = self.gate.waiting.get_mut(&task.id) {
            w.entry.rank = rank;
        }
        for t in self.gate.arrays.values_mut() {
            if let Some(old) = t.held_rank.get(&task.id).copied() {
                let key = |r: Rank| (std::cmp::Reverse(r.priority), r.created_at, task.id.clone());
                if let Some(mut entry) = t.held.remove(&key(old)) {
                    entry.rank = rank;
                    t.held.insert(key(rank), entry);
                    t.held_rank.insert(task.id.clone(), rank);
                }
            }
        }
        self.redelay(&task.id, rank);
        if let Some((class, note)) = self.queue.take(&task.id) {
            self.queue.insert(task.id.clone(), rank, class, note);
            self.queue_pass = true;
        }
    }

    /// `parent` no longer exists (retention removed it while no master
    /// led): its dependents cannot be decided, so they are cancelled.
    pub(in crate::master) fn parent_gone(&mut self, parent: &TaskId) {
        for child in self.gate.children.remove(parent).unwrap_or_default() {
            if self.gate.waiting.remove(&child).is_some() {
                let reason = format!("dependency never satisfied: task {parent} no longer exists");
                self.gate.roots.insert(child.clone(), parent.clone());
                self.gate.unmet.push((child, reason));
            }
        }
    }

    /// Parents that ended and decided a dependent which is not placed
    /// yet: retention keeps them, so a master that loads after a restart
    /// can decide the dependent again.
    pub(in crate::master) fn kept_parents(&self) -> Vec<TaskId> {
        let decided = self
            .gate
            .waiting
            .values()
            .flat_map(|w| w.parents.iter().filter(|p| !w.unresolved.contains_key(*p)));
        let mut kept: Vec<TaskId> = decided
            .chain(self.gate.met.values().flatten())
            .cloned()
            .collect();
        kept.sort();
        kept.dedup();
        kept
    }

    /// The parents a waiting dependent still waits on.
    pub(in crate::master) fn unresolved_parents(&self, task: &TaskId) -> Vec<TaskId> {
        self.gate
            .waiting
            .get(task)
            .map(|w| w.unresolved.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Why the gate holds a pending task, if it does.
    pub(super) fn gate_reason(&self, task: &TaskRecord) -> Option<String> {
        if let Some(w) = self.gate.waiting.get(&task.id) {
            let mut parents: Vec<String> = w
                .unresolved
                .iter()
                .map(|(p, c)| format!("{c} {p}"))
                .collect();
            parents.sort();
            let more = parents.len().saturating_sub(3);
            parents.truncate(3);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            return Some(format!(
                "waiting for its dependencies: {}{more}",
                parents.join(", ")
            ));
        }
        let array = task.array.as_ref()?;
        let t = self.gate.arrays.get(&array.id)?;
        t.held_rank.contains_key(&task.id).then(|| {
            format!(
                "array limit: {} of array {}'s members are admitted at once (%{})",
                t.admitted.len(),
                array.id,
                t.limit
            )
        })
    }

    /// Whether cancellations of dependents are owed.
    pub(super) fn owes_unmet(&self) -> bool {
        !self.gate.unmet.is_empty()
    }

    /// Cancellations of dependents whose conditions can never hold.
    pub(in crate::master) fn take_unmet(&mut self) -> Vec<(TaskId, String)> {
        std::mem::take(&mut self.gate.unmet)
    }
}

impl Gate {
    /// Holds a dependent for its parents (kept as it is if already held:
    /// its resolutions so far stand).
    fn wait(&mut self, mut entry: Entry) {
        if self.waiting.contains_key(&entry.id) {
            return;
        }
        let mut unresolved = HashMap::new();
        let mut parents = Vec::new();
        for d in std::mem::take(&mut entry.after) {
            self.children
                .entry(d.task.clone())
                .or_default()
                .push(entry.id.clone());
            parents.push(d.task.clone());
            unresolved.insert(d.task, d.condition);
        }
        self.waiting.insert(
            entry.id.clone(),
            Waiter {
                unresolved,
                parents,
                entry,
            },
        );
    }

    fn throttle(&mut self, array: ArrayId, limit: u32) -> &mut Throttle {
        self.arrays.entry(array).or_insert_with(|| Throttle {
            limit,
            admitted: HashSet::new(),
            held: BTreeMap::new(),
            held_rank: HashMap::new(),
        })
    }

    /// Whether `entry` may pass its array's throttle; holds it if not.
    fn throttle_admits(&mut self, entry: &Entry) -> bool {
        let Some((array, limit)) = &entry.throttle else {
            return true;
        };
        let t = self.throttle(array.clone(), *limit);
        if t.admitted.contains(&entry.id) {
            return true;
        }
        // Already held: it keeps its place (a slot goes to the first held).
        if t.held_rank.contains_key(&entry.id) {
            return false;
        }
        if t.admitted.len() < t.limit as usize {
            t.admitted.insert(entry.id.clone());
            return true;
        }
        let r = entry.rank;
        t.held_rank.insert(entry.id.clone(), r);
        t.held.insert(
            (
                std::cmp::Reverse(r.priority),
                r.created_at,
                entry.id.clone(),
            ),
            entry.clone(),
        );
        false
    }
}

impl Throttle {
    /// The held members that fit under the limit now, admitted.
    fn next(&mut self) -> Vec<Entry> {
        let mut out = Vec::new();
        while self.admitted.len() < self.limit as usize {
            let Some((_, entry)) = self.held.pop_first() else {
                break;
            };
            self.held_rank.remove(&entry.id);
            self.admitted.insert(entry.id.clone());
            out.push(entry);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::config::MasterConfig;
    use crate::model::{ArrayMember, Resources, TaskSpec};

    fn id(s: &str) -> TaskId {
        TaskId::new(s).unwrap()
    }

    fn task(name: &str, after: &[(&str, Condition)]) -> TaskRecord {
        let mut spec = TaskSpec::new(
            "busybox",
            vec!["true".into()],
            Resources::new(1.0, 0.1, 0.0, 0).unwrap(),
        );
        spec.after = after
            .iter()
            .map(|(p, c)| Dependency {
                task: id(p),
                condition: *c,
            })
            .collect();
        TaskRecord::new(id(name), spec, Timestamp::from_millis(1))
    }

    fn ended(name: &str, status: TaskStatus) -> TaskRecord {
        let mut t = task(name, &[]);
        t.status = status;
        t
    }

    const NOW: Timestamp = Timestamp::from_millis(5);

    #[test]
    fn a_dependent_waits_outside_the_queue_until_every_parent_is_met() {
        let mut st = State::new(&MasterConfig::default());
        let c = task(
            "c",
            &[("a", Condition::AfterOk), ("b", Condition::AfterAny)],
        );
        st.enqueue_when_due(&c, NOW);
        assert_eq!(st.queue.len(), 0);
        let why = st.waiting_reason(&c).unwrap();
        assert!(why.starts_with("waiting for its dependencies"), "{why}");
        st.gate_ended(&ended("a", TaskStatus::Completed), NOW);
        st.gate_ended(&ended("a", TaskStatus::Completed), NOW);
        assert_eq!(st.queue.len(), 0, "b has not ended");
        assert_eq!(st.kept_parents(), vec![id("a")], "a decided a waiting task");
        st.gate_ended(&ended("b", TaskStatus::Failed), NOW);
        assert_eq!(st.queue.len(), 1, "after-any holds after a failure");
        assert!(st.take_unmet().is_empty());
        // Requeued before its first placement, it is still met.
        st.queue.remove(&c.id);
        st.enqueue_when_due(&c, NOW);
        assert_eq!(st.queue.len(), 1);
    }

    #[test]
    fn a_condition_that_can_never_hold_owes_a_cancel_naming_the_root() {
        let mut st = State::new(&MasterConfig::default());
        let b = task("b", &[("a", Condition::AfterOk)]);
        let c = task("c", &[("b", Condition::AfterNotOk)]);
        let d = task("d", &[("b", Condition::AfterOk)]);
        for t in [&b, &c, &d] {
            st.enqueue_when_due(t, NOW);
        }
        st.gate_ended(&ended("a", TaskStatus::Failed), NOW);
        let unmet = st.take_unmet();
        assert_eq!(unmet.len(), 1);
        assert_eq!(unmet[0].0, id("b"));
        assert!(
            unmet[0].1.contains("after-ok and task a failed"),
            "{unmet:?}"
        );
        // b's cancellation lands: none of its subtree ever starts, even
        // the after-notok one.
        st.gate_ended(&ended("b", TaskStatus::Cancelled), NOW);
        assert_eq!(st.queue.len(), 0, "c does not run");
        let mut unmet = st.take_unmet();
        unmet.sort();
        assert_eq!(unmet.len(), 2);
        assert_eq!((&unmet[0].0, &unmet[1].0), (&id("c"), &id("d")));
        assert!(
            unmet.iter().all(|(_, r)| r.contains("(root: task a)")),
            "{unmet:?}"
        );
    }

    #[test]
    fn a_throttle_admits_at_most_its_limit_and_the_next_as_members_end() {
        let mut st = State::new(&MasterConfig::default());
        let array = crate::model::ArrayId::new("arr").unwrap();
        let members: Vec<TaskRecord> = (0..5)
            .map(|i| {
                let mut t = task(&format!("m{i}"), &[]);
                t.created_at = Timestamp::from_millis(i);
                t.array = Some(ArrayMember {
                    id: array.clone(),
                    index: i as u32,
                    limit: Some(2),
                });
                t
            })
            .collect();
        for m in &members {
            st.enqueue_when_due(m, NOW);
        }
        assert_eq!(st.queue.len(), 2);
        let why = st.waiting_reason(&members[4]).unwrap();
        assert!(why.starts_with("array limit"), "{why}");
        // m0 is placed (still counted), then ends: m2 is admitted.
        st.queue.remove(&members[0].id);
        st.gate_forget_pending(&members[0]);
        assert_eq!(st.queue.len(), 1);
        let mut done = members[0].clone();
        done.status = TaskStatus::Completed;
        st.gate_ended(&done, NOW);
        assert_eq!(st.queue.len(), 2);
        assert_eq!(st.waiting_reason(&members[2]), None, "m2 is queued");
        assert!(st
            .waiting_reason(&members[3])
            .unwrap()
            .starts_with("array limit"));
        // A held member cancelled while held frees nothing and is gone.
        let mut gone = members[4].clone();
        gone.status = TaskStatus::Cancelled;
        st.gate_forget_pending(&gone);
        st.gate_ended(&gone, NOW);
        assert_eq!(st.queue.len(), 2);
    }

    #[test]
    fn a_new_priority_moves_a_held_member_ahead() {
        let mut st = State::new(&MasterConfig::default());
        let array = crate::model::ArrayId::new("arr").unwrap();
        let members: Vec<TaskRecord> = (0..3)
            .map(|i| {
                let mut t = task(&format!("m{i}"), &[]);
                t.created_at = Timestamp::from_millis(i);
                t.array = Some(ArrayMember {
                    id: array.clone(),
                    index: i as u32,
                    limit: Some(1),
                });
                t
            })
            .collect();
        for m in &members {
            st.enqueue_when_due(m, NOW);
        }
        let mut urgent = members[2].clone();
        urgent.spec.priority = 9;
        st.reprioritize(&urgent);
        let mut done = members[0].clone();
        done.status = TaskStatus::Completed;
        st.queue.remove(&done.id);
        st.gate_forget_pending(&done);
        st.gate_ended(&done, NOW);
        assert_eq!(st.waiting_reason(&members[2]), None, "m2 went ahead of m1");
        assert!(st
            .waiting_reason(&members[1])
            .unwrap()
            .starts_with("array limit"));
    }
}

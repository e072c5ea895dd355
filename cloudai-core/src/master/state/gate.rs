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
    /// Dependents whose every condition held, not yet assigned.
    met: HashSet<TaskId>,
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
        if entry.waits && !self.gate.met.contains(&entry.id) {
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
    pub(super) fn gate_forget_pending(&mut self, task: &TaskId) {
        self.gate.waiting.remove(task);
        self.gate.met.remove(task);
        for t in self.gate.arrays.values_mut() {
            if let Some(rank) = t.held_rank.remove(task) {
                t.held.remove(&(
                    std::cmp::Reverse(rank.priority),
                    rank.created_at,
                    task.clone(),
                ));
            }
        }
    }

    /// `task` reached a final status: its dependents are decided and its
    /// array's throttle admits the next member.
    pub(super) fn gate_ended(&mut self, task: &TaskRecord, now: Timestamp) {
        let root = self.gate.roots.remove(&task.id);
        let root = root.unwrap_or_else(|| task.id.clone());
        self.parent_ended(&task.id, task.status, &root, now);
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
        for entry in next {
            self.admit(entry, now, None);
        }
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
    /// Idempotent.
    pub(in crate::master) fn parent_ended(
        &mut self,
        parent: &TaskId,
        status: TaskStatus,
        root: &TaskId,
        now: Timestamp,
    ) {
        if !status.is_terminal() {
            return;
        }
        for child in self.gate.children.remove(parent).unwrap_or_default() {
            let Some(w) = self.gate.waiting.get_mut(&child) else {
                continue;
            };
            let Some(condition) = w.unresolved.remove(parent) else {
                continue;
            };
            match condition.verdict(status) {
                Some(Verdict::Met) if w.unresolved.is_empty() => {
                    if let Some(w) = self.gate.waiting.remove(&child) {
                        self.gate.met.insert(child);
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
        for d in std::mem::take(&mut entry.after) {
            self.children
                .entry(d.task.clone())
                .or_default()
                .push(entry.id.clone());
            unresolved.insert(d.task, d.condition);
        }
        self.waiting
            .insert(entry.id.clone(), Waiter { unresolved, entry });
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

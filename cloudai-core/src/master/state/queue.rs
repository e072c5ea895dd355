//! The queue of pending tasks, grouped by what they need, so that the cost
//! of scheduling does not grow with the number of tasks waiting.
//!
//! Tasks with the same request and the same pin are interchangeable for
//! placement: if the oldest of them does not fit, none does. They form a
//! *class*. Within a class tasks go by priority (higher first), then age.
//! A placement pass walks the classes' first tasks in that order
//! (priority, then FIFO, with backfill across classes); a class whose oldest task does not
//! fit is *blocked*, with the reason, and is not looked at again until a
//! change that may make room for it *wakes* it: capacity freed on a worker
//! wakes the classes pinned to it and the unpinned ones that only wait for
//! a busy worker; a worker joining, returning or being undrained also
//! wakes the unpinned ones that no worker could hold (or that had no
//! active worker), which no freed slot can help.
//! This is Nomad's blocked evaluations applied to tasks: 100,000 tasks
//! waiting for a worker that never answers cost a pass nothing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use crate::model::{Constraint, Resources, TaskId, Timestamp, WorkerId};

/// What a queued task needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(in crate::master) struct Class {
    pub(in crate::master) resources: Resources,
    pub(in crate::master) pin: Option<WorkerId>,
    /// The host directories its bind mounts need a worker to allow.
    pub(in crate::master) mounts: Vec<String>,
    /// What its worker's labels must satisfy.
    pub(in crate::master) constraints: Vec<Constraint>,
}

impl Class {
    /// The class of `task`.
    pub(in crate::master) fn of(task: &crate::model::TaskRecord) -> Class {
        Class {
            resources: task.spec.resources,
            pin: task.spec.pin.clone(),
            mounts: task.spec.options.sources(),
            constraints: task.spec.constraints.clone(),
        }
    }
}

/// A task's place in the queue: highest priority first, then oldest, ties
/// by id.
type Key = (Reverse<i32>, Timestamp, TaskId);

/// Where a task stands in the queue's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::master) struct Rank {
    pub(in crate::master) priority: i32,
    pub(in crate::master) created_at: Timestamp,
}

impl Rank {
    /// The rank of `task`.
    pub(in crate::master) fn of(task: &crate::model::TaskRecord) -> Rank {
        Rank {
            priority: task.spec.priority,
            created_at: task.created_at,
        }
    }

    fn key(self, id: TaskId) -> Key {
        (Reverse(self.priority), self.created_at, id)
    }
}

/// Why a class waits, and what can end the wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::master) struct Blocked {
    reason: String,
    /// No active worker could ever hold it, or none is active: a freed
    /// slot cannot help, only a worker joining, returning or undrained.
    needs_worker: bool,
}

impl Blocked {
    pub(in crate::master) fn new(reason: String, needs_worker: bool) -> Self {
        Blocked {
            reason,
            needs_worker,
        }
    }
}

/// The tasks of one class.
#[derive(Debug, Default)]
struct Waiting {
    /// Oldest first, each with a note of its own (why it came back).
    tasks: BTreeMap<Key, Option<String>>,
    /// Why the class waits, while blocked: `None` means it is tried in
    /// the next pass.
    blocked: Option<Blocked>,
}

#[derive(Debug, Default)]
pub(in crate::master) struct Queue {
    classes: HashMap<Class, Waiting>,
    /// Each queued task's class and rank.
    members: HashMap<TaskId, (Class, Rank)>,
    /// Classes by pin, for waking.
    by_pin: HashMap<Option<WorkerId>, HashSet<Class>>,
    /// How many queued tasks have each priority, to say when a task waits
    /// behind higher-priority work.
    priorities: BTreeMap<i32, usize>,
}

impl Queue {
    /// How many tasks wait.
    pub(in crate::master) fn len(&self) -> usize {
        self.members.len()
    }

    /// Queues a task. It joins its class: tried in the next pass, unless the
    /// class is blocked (then it cannot fit either).
    pub(in crate::master) fn insert(
        &mut self,
        id: TaskId,
        rank: Rank,
        class: Class,
        note: Option<String>,
    ) {
        self.remove(&id);
        self.by_pin
            .entry(class.pin.clone())
            .or_default()
            .insert(class.clone());
        self.classes
            .entry(class.clone())
            .or_default()
            .tasks
            .insert(rank.key(id.clone()), note);
        *self.priorities.entry(rank.priority).or_default() += 1;
        self.members.insert(id, (class, rank));
    }

    /// Takes a task out; whether it was queued.
    pub(in crate::master) fn remove(&mut self, id: &TaskId) -> bool {
        self.take(id).is_some()
    }

    /// Takes a task out: its class and note, if it was queued.
    pub(in crate::master) fn take(&mut self, id: &TaskId) -> Option<(Class, Option<String>)> {
        let (class, rank) = self.members.remove(id)?;
        if let Some(n) = self.priorities.get_mut(&rank.priority) {
            *n -= 1;
            if *n == 0 {
                self.priorities.remove(&rank.priority);
            }
        }
        let mut note = None;
        if let Some(waiting) = self.classes.get_mut(&class) {
            note = waiting.tasks.remove(&rank.key(id.clone())).flatten();
            if waiting.tasks.is_empty() {
                self.classes.remove(&class);
                if let Some(set) = self.by_pin.get_mut(&class.pin) {
                    set.remove(&class);
                    if set.is_empty() {
                        self.by_pin.remove(&class.pin);
                    }
                }
            }
        }
        Some((class, note))
    }

    /// Why a queued task waits: its class's reason while blocked, else its
    /// own note.
    pub(in crate::master) fn reason(&self, id: &TaskId) -> Option<String> {
        let (class, rank) = self.members.get(id)?;
        let waiting = self.classes.get(class)?;
        match &waiting.blocked {
            Some(b) => {
                let ahead: usize = self
                    .priorities
                    .range(rank.priority.saturating_add(1)..)
                    .map(|(_, n)| n)
                    .sum();
                if ahead == 0 || rank.priority == i32::MAX {
                    return Some(b.reason.clone());
                }
                Some(format!(
                    "{}; behind {ahead} queued tasks of higher priority",
                    b.reason
                ))
            }
            None => waiting.tasks.get(&rank.key(id.clone())).cloned().flatten(),
        }
    }

    /// Room was freed on `worker`: its pinned classes, and the unpinned
    /// ones waiting for a busy worker, are tried again.
    pub(in crate::master) fn wake(&mut self, worker: &WorkerId) {
        self.wake_where(worker, |b| !b.needs_worker);
    }

    /// `worker` joined, came back, or takes tasks again: its pinned
    /// classes and every unpinned one are tried again.
    pub(in crate::master) fn wake_joined(&mut self, worker: &WorkerId) {
        self.wake_where(worker, |_| true);
    }

    /// Unblocks `worker`'s pinned classes, and the unpinned ones whose
    /// block `unpinned` says this ends.
    fn wake_where(&mut self, worker: &WorkerId, unpinned: impl Fn(&Blocked) -> bool) {
        for pin in [None, Some(worker.clone())] {
            for class in self.by_pin.get(&pin).into_iter().flatten() {
                if let Some(w) = self.classes.get_mut(class) {
                    if pin.is_some() || w.blocked.as_ref().is_some_and(&unpinned) {
                        w.blocked = None;
                    }
                }
            }
        }
    }

    /// Anything may fit again (allocations were corrected).
    pub(in crate::master) fn wake_all(&mut self) {
        for w in self.classes.values_mut() {
            w.blocked = None;
        }
    }

    /// A placement pass. `place` is asked for the oldest task of each
    /// class that is not blocked, oldest first; `Ok` takes the task out of
    /// the queue (it was placed), `Err` blocks its class. Returns
    /// the placed tasks in order.
    pub(in crate::master) fn pass(
        &mut self,
        mut place: impl FnMut(&TaskId, &Class) -> Result<(), Blocked>,
    ) -> Vec<TaskId> {
        let mut heads: BinaryHeap<Reverse<(Key, usize)>> = BinaryHeap::new();
        let ready: Vec<Class> = self
            .classes
            .iter()
            .filter(|(_, w)| w.blocked.is_none())
            .map(|(c, _)| c.clone())
            .collect();
        for (i, class) in ready.iter().enumerate() {
            if let Some(key) = self.classes[class].tasks.keys().next() {
                heads.push(Reverse((key.clone(), i)));
            }
        }
        let mut placed = Vec::new();
        while let Some(Reverse(((_, _, id), i))) = heads.pop() {
            let class = &ready[i];
            match place(&id, class) {
                Ok(()) => {
                    self.remove(&id);
                    placed.push(id);
                    let next = self
                        .classes
                        .get(class)
                        .and_then(|w| w.tasks.keys().next().cloned());
                    if let Some(key) = next {
                        heads.push(Reverse((key, i)));
                    }
                }
                Err(reason) => {
                    if let Some(w) = self.classes.get_mut(class) {
                        w.blocked = Some(reason);
                    }
                }
            }
        }
        placed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(i: u64) -> TaskId {
        TaskId::new(format!("t{i:04}")).unwrap()
    }

    fn at(ms: u64) -> Rank {
        Rank {
            priority: 0,
            created_at: Timestamp::from_millis(ms),
        }
    }

    fn busy(reason: &str) -> Blocked {
        Blocked::new(reason.into(), false)
    }

    fn class(cpu: f64, pin: Option<&str>) -> Class {
        Class {
            resources: Resources::new(cpu, 0.0, 0.0, 0).unwrap(),
            pin: pin.map(|p| WorkerId::new(p).unwrap()),
            mounts: Vec::new(),
            constraints: Vec::new(),
        }
    }

    #[test]
    fn a_blocked_class_costs_nothing_until_woken() {
        let mut q = Queue::default();
        for i in 0..1000 {
            q.insert(t(i), at(i), class(1.0, Some("dead")), None);
        }
        q.insert(t(5000), at(5000), class(1.0, None), None);
        let mut asked = 0;
        let placed = q.pass(|_, c| {
            asked += 1;
            if c.pin.is_some() {
                Err(busy("waiting for worker dead"))
            } else {
                Ok(())
            }
        });
        assert_eq!(placed, vec![t(5000)], "the runnable task is not held back");
        assert_eq!(asked, 2, "one question per class, not per task");
        assert_eq!(q.reason(&t(7)).as_deref(), Some("waiting for worker dead"));
        let mut asked = 0;
        q.insert(t(6000), at(6000), class(1.0, Some("dead")), None);
        let _ = q.pass(|_, _| {
            asked += 1;
            Ok(())
        });
        assert_eq!(asked, 0, "a blocked class stays blocked until woken");
        q.wake(&WorkerId::new("other").unwrap());
        let _ = q.pass(|_, _| {
            asked += 1;
            Err(busy("no"))
        });
        assert_eq!(
            asked, 0,
            "room on another worker does not wake a pinned class"
        );
        q.wake(&WorkerId::new("dead").unwrap());
        assert_eq!(q.pass(|_, _| Ok(())).len(), 1001);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn notes_show_until_the_class_is_blocked() {
        let mut q = Queue::default();
        q.insert(t(1), at(1), class(1.0, None), Some("store error".into()));
        assert_eq!(q.reason(&t(1)).as_deref(), Some("store error"));
        let _ = q.pass(|_, _| Err(busy("all busy")));
        assert_eq!(q.reason(&t(1)).as_deref(), Some("all busy"));
        assert!(q.remove(&t(1)));
        assert!(!q.remove(&t(1)));
        assert_eq!(q.reason(&t(1)), None);
    }

    #[test]
    fn a_blocked_task_says_when_higher_priority_work_is_ahead() {
        let mut q = Queue::default();
        let urgent = Rank {
            priority: 5,
            created_at: Timestamp::from_millis(2),
        };
        q.insert(t(1), at(1), class(1.0, None), None);
        q.insert(t(2), urgent, class(2.0, None), None);
        let _ = q.pass(|_, _| Err(busy("all busy")));
        assert_eq!(
            q.reason(&t(1)).as_deref(),
            Some("all busy; behind 1 queued tasks of higher priority")
        );
        assert_eq!(q.reason(&t(2)).as_deref(), Some("all busy"));
        q.remove(&t(2));
        assert_eq!(q.reason(&t(1)).as_deref(), Some("all busy"));
    }

    #[test]
    fn a_freed_slot_does_not_wake_a_class_no_worker_could_hold() {
        let mut q = Queue::default();
        q.insert(t(1), at(1), class(64.0, None), None);
        let mut asked = 0;
        let mut too_big = |_: &TaskId, _: &Class| {
            asked += 1;
            Err(Blocked::new("request exceeds every worker".into(), true))
        };
        let _ = q.pass(&mut too_big);
        q.wake(&WorkerId::new("w1").unwrap());
        let _ = q.pass(&mut too_big);
        assert_eq!(asked, 1, "a release cannot make a worker bigger");
        q.wake_joined(&WorkerId::new("big").unwrap());
        assert_eq!(q.pass(|_, _| Ok(())), vec![t(1)], "a joining worker may");
    }

    /// A naive queue: every pass tries every task, oldest first.
    fn naive_pass(
        tasks: &mut BTreeMap<Key, Class>,
        mut place: impl FnMut(&TaskId, &Class) -> Result<(), Blocked>,
    ) -> Vec<TaskId> {
        let mut placed = Vec::new();
        for ((prio, at, id), class) in tasks.clone() {
            if place(&id, &class).is_ok() {
                tasks.remove(&(prio, at, id.clone()));
                placed.push(id);
            }
        }
        placed
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit {
            cpu: u8,
            pin: Option<u8>,
            priority: i32,
        },
        /// Tasks on the worker end, freeing up to `cpu`.
        Free {
            worker: u8,
            cpu: u8,
        },
        /// The worker comes back bigger.
        Grow {
            worker: u8,
        },
        Pass,
    }

    /// Operations, submits with priorities in `priorities`.
    fn op(priorities: std::ops::Range<i32>) -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..7, proptest::option::of(0u8..3), priorities)
                .prop_map(|(cpu, pin, priority)| Op::Submit { cpu, pin, priority }),
            (0u8..3, 1u8..4).prop_map(|(worker, cpu)| Op::Free { worker, cpu }),
            (0u8..3).prop_map(|worker| Op::Grow { worker }),
            Just(Op::Pass),
        ]
    }

    /// Three workers' capacity and free CPU.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Cluster {
        capacity: [u32; 3],
        free: [u32; 3],
    }

    impl Cluster {
        /// First fit; a request no worker's capacity holds needs a worker.
        fn place(&mut self, class: &Class) -> Result<(), Blocked> {
            let need = u32::try_from(class.resources.cpu_millis / 1000).unwrap();
            let workers: Vec<usize> = match &class.pin {
                Some(p) => vec![p.as_str()[1..].parse().unwrap()],
                None => (0..3).collect(),
            };
            match workers.iter().find(|w| self.free[**w] >= need) {
                Some(w) => {
                    self.free[*w] -= need;
                    Ok(())
                }
                None => {
                    let could = workers.iter().any(|w| self.capacity[*w] >= need);
                    Err(Blocked::new("no room".into(), !could))
                }
            }
        }
    }

    /// Runs `ops` on the grouped queue and on a queue that retries every
    /// task in (priority, age) order, checking they place alike.
    fn differential(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut q = Queue::default();
        let mut naive: BTreeMap<Key, Class> = BTreeMap::new();
        let start = Cluster {
            capacity: [4; 3],
            free: [4; 3],
        };
        let (mut cq, mut cn) = (start, start);
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Submit { cpu, pin, priority } => {
                    let c = class(f64::from(cpu), pin.map(|p| format!("w{p}")).as_deref());
                    let rank = Rank {
                        priority,
                        created_at: Timestamp::from_millis(n as u64),
                    };
                    q.insert(t(n as u64), rank, c.clone(), None);
                    naive.insert(rank.key(t(n as u64)), c);
                }
                Op::Free { worker, cpu } => {
                    let w = usize::from(worker);
                    let freed = u32::from(cpu).min(cq.capacity[w] - cq.free[w]);
                    cq.free[w] += freed;
                    cn.free[w] += freed;
                    q.wake(&WorkerId::new(format!("w{worker}")).unwrap());
                }
                Op::Grow { worker } => {
                    let w = usize::from(worker);
                    for c in [&mut cq, &mut cn] {
                        c.capacity[w] += 2;
                        c.free[w] += 2;
                    }
                    q.wake_joined(&WorkerId::new(format!("w{worker}")).unwrap());
                }
                Op::Pass => {
                    let a = q.pass(|_, c| cq.place(c));
                    let b = naive_pass(&mut naive, |_, c| cn.place(c));
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(cq, cn);
                }
            }
        }
        prop_assert_eq!(q.len(), naive.len());
        Ok(())
    }

    proptest! {
        /// Waking as the master does (a freed slot, a worker that grew),
        /// the grouped queue places exactly what a queue that retries
        /// every task would, in the same order (every priority 0: FIFO).
        #[test]
        fn places_what_a_full_rescan_would(ops in proptest::collection::vec(op(0..1), 1..120)) {
            differential(ops)?;
        }

        /// With priorities, it places what a plain sort by (priority
        /// descending, age) would: a higher-priority task that fits is
        /// never placed after a lower one.
        #[test]
        fn places_by_priority_then_age(ops in proptest::collection::vec(op(-2..3), 1..120)) {
            differential(ops)?;
        }
    }
}

//! The queue of pending tasks, grouped by what they need, so that the cost
//! of scheduling does not grow with the number of tasks waiting.
//!
//! Tasks with the same request and the same pin are interchangeable for
//! placement: if the oldest of them does not fit, none does. They form a
//! *class*. A placement pass walks the classes' oldest tasks in age order
//! (FIFO with backfill across classes); a class whose oldest task does not
//! fit is *blocked*, with the reason, and is not looked at again until a
//! change that may make room for it *wakes* it: capacity freed or added on
//! a worker wakes the unpinned classes and those pinned to that worker.
//! This is Nomad's blocked evaluations applied to tasks: 100,000 tasks
//! waiting for a worker that never answers cost a pass nothing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use crate::model::{Resources, TaskId, Timestamp, WorkerId};

/// What a queued task needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(in crate::master) struct Class {
    pub(in crate::master) resources: Resources,
    pub(in crate::master) pin: Option<WorkerId>,
}

/// A task's place in the queue: oldest first, ties by id.
type Key = (Timestamp, TaskId);

/// The tasks of one class.
#[derive(Debug, Default)]
struct Waiting {
    /// Oldest first, each with a note of its own (why it came back).
    tasks: BTreeMap<Key, Option<String>>,
    /// Why the class waits, while blocked: `None` means it is tried in
    /// the next pass.
    blocked: Option<String>,
}

#[derive(Debug, Default)]
pub(in crate::master) struct Queue {
    classes: HashMap<Class, Waiting>,
    /// Each queued task's class and key.
    members: HashMap<TaskId, (Class, Timestamp)>,
    /// Classes by pin, for waking.
    by_pin: HashMap<Option<WorkerId>, HashSet<Class>>,
}

impl Queue {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.members.len()
    }

    /// Queues a task. It joins its class: tried in the next pass, unless the
    /// class is blocked (then it cannot fit either).
    pub(in crate::master) fn insert(
        &mut self,
        id: TaskId,
        created_at: Timestamp,
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
            .insert((created_at, id.clone()), note);
        self.members.insert(id, (class, created_at));
    }

    /// Takes a task out; whether it was queued.
    pub(in crate::master) fn remove(&mut self, id: &TaskId) -> bool {
        let Some((class, at)) = self.members.remove(id) else {
            return false;
        };
        if let Some(waiting) = self.classes.get_mut(&class) {
            waiting.tasks.remove(&(at, id.clone()));
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
        true
    }

    /// Why a queued task waits: its class's reason while blocked, else its
    /// own note.
    pub(in crate::master) fn reason(&self, id: &TaskId) -> Option<String> {
        let (class, at) = self.members.get(id)?;
        let waiting = self.classes.get(class)?;
        waiting
            .blocked
            .clone()
            .or_else(|| waiting.tasks.get(&(*at, id.clone())).cloned().flatten())
    }

    /// Room may have appeared on `worker`: its pinned classes and the
    /// unpinned ones are tried again.
    pub(in crate::master) fn wake(&mut self, worker: &WorkerId) {
        for pin in [None, Some(worker.clone())] {
            for class in self.by_pin.get(&pin).into_iter().flatten() {
                if let Some(w) = self.classes.get_mut(class) {
                    w.blocked = None;
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
    /// the queue (it was placed), `Err(reason)` blocks its class. Returns
    /// the placed tasks in order.
    pub(in crate::master) fn pass(
        &mut self,
        mut place: impl FnMut(&TaskId, &Class) -> Result<(), String>,
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
        while let Some(Reverse(((_, id), i))) = heads.pop() {
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

    fn class(cpu: f64, pin: Option<&str>) -> Class {
        Class {
            resources: Resources::new(cpu, 0.0, 0.0, 0).unwrap(),
            pin: pin.map(|p| WorkerId::new(p).unwrap()),
        }
    }

    #[test]
    fn a_blocked_class_costs_nothing_until_woken() {
        let mut q = Queue::default();
        for i in 0..1000 {
            q.insert(
                t(i),
                Timestamp::from_millis(i),
                class(1.0, Some("dead")),
                None,
            );
        }
        q.insert(
            t(5000),
            Timestamp::from_millis(5000),
            class(1.0, None),
            None,
        );
        let mut asked = 0;
        let placed = q.pass(|_, c| {
            asked += 1;
            if c.pin.is_some() {
                Err("waiting for worker dead".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(placed, vec![t(5000)], "the runnable task is not held back");
        assert_eq!(asked, 2, "one question per class, not per task");
        assert_eq!(q.reason(&t(7)).as_deref(), Some("waiting for worker dead"));
        let mut asked = 0;
        q.insert(
            t(6000),
            Timestamp::from_millis(6000),
            class(1.0, Some("dead")),
            None,
        );
        let _ = q.pass(|_, _| {
            asked += 1;
            Ok(())
        });
        assert_eq!(asked, 0, "a blocked class stays blocked until woken");
        q.wake(&WorkerId::new("other").unwrap());
        let _ = q.pass(|_, _| {
            asked += 1;
            Err("no".into())
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
        q.insert(
            t(1),
            Timestamp::from_millis(1),
            class(1.0, None),
            Some("store error".into()),
        );
        assert_eq!(q.reason(&t(1)).as_deref(), Some("store error"));
        let _ = q.pass(|_, _| Err("all busy".into()));
        assert_eq!(q.reason(&t(1)).as_deref(), Some("all busy"));
        assert!(q.remove(&t(1)));
        assert!(!q.remove(&t(1)));
        assert_eq!(q.reason(&t(1)), None);
    }

    /// A naive queue: every pass tries every task, oldest first.
    fn naive_pass(
        tasks: &mut BTreeMap<Key, Class>,
        mut place: impl FnMut(&TaskId, &Class) -> Result<(), String>,
    ) -> Vec<TaskId> {
        let mut placed = Vec::new();
        for ((at, id), class) in tasks.clone() {
            if place(&id, &class).is_ok() {
                tasks.remove(&(at, id.clone()));
                placed.push(id);
            }
        }
        placed
    }

    #[derive(Debug, Clone)]
    enum Op {
        Submit { cpu: u8, pin: Option<u8> },
        Free { worker: u8, cpu: u8 },
        Pass,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..4, proptest::option::of(0u8..3)).prop_map(|(cpu, pin)| Op::Submit { cpu, pin }),
            (0u8..3, 1u8..4).prop_map(|(worker, cpu)| Op::Free { worker, cpu }),
            Just(Op::Pass),
        ]
    }

    /// First-fit over three workers' free CPU.
    fn first_fit(free: &mut [u32; 3], class: &Class) -> Result<(), String> {
        let need = u32::try_from(class.resources.cpu_millis / 1000).unwrap();
        let fits = |w: usize, free: &[u32; 3]| free[w] >= need;
        let chosen = match &class.pin {
            Some(p) => {
                let w: usize = p.as_str()[1..].parse().unwrap();
                fits(w, free).then_some(w)
            }
            None => (0..3).find(|w| fits(*w, free)),
        };
        let w = chosen.ok_or_else(|| "no room".to_string())?;
        free[w] -= need;
        Ok(())
    }

    proptest! {
        /// Waking on every freed worker, the grouped queue places exactly
        /// what a queue that retries every task would, in the same order.
        #[test]
        fn places_what_a_full_rescan_would(ops in proptest::collection::vec(op(), 1..120)) {
            let mut q = Queue::default();
            let mut naive: BTreeMap<Key, Class> = BTreeMap::new();
            let (mut free_q, mut free_n) = ([4u32; 3], [4u32; 3]);
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Submit { cpu, pin } => {
                        let c = class(f64::from(cpu), pin.map(|p| format!("w{p}")).as_deref());
                        let at = Timestamp::from_millis(n as u64);
                        q.insert(t(n as u64), at, c.clone(), None);
                        naive.insert((at, t(n as u64)), c);
                    }
                    Op::Free { worker, cpu } => {
                        free_q[usize::from(worker)] += u32::from(cpu);
                        free_n[usize::from(worker)] += u32::from(cpu);
                        q.wake(&WorkerId::new(format!("w{worker}")).unwrap());
                    }
                    Op::Pass => {
                        let a = q.pass(|_, c| first_fit(&mut free_q, c));
                        let b = naive_pass(&mut naive, |_, c| first_fit(&mut free_n, c));
                        prop_assert_eq!(a, b);
                        prop_assert_eq!(free_q, free_n);
                    }
                }
            }
            prop_assert_eq!(q.len(), naive.len());
        }
    }
}

//! Placement: which worker gets a task.
//!
//! [`place`] filters the candidates once (active, with room) and hands only
//! eligible workers to the [`Scheduler`], so no policy can pick an inactive
//! or full worker. When none is eligible, the reason comes back as a value
//! the queue can show to the user.
//!
//! Among thousands of workers, the master ranks only a [`sample`]: the
//! first [`SAMPLE`] workers with room along a walk ([`walk_from`] the
//! worker placed on last), as Nomad limits its candidate nodes, so a
//! decision costs a few dozen visits, not one per worker; [`no_room`]
//! gives the reason when none has room.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::str::FromStr;

use crate::model::{Resources, ValidationError, WorkerId};

mod policies;

pub use policies::{BinPack, LeastLoaded, ResourceAware, RoundRobin};

/// A worker as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The worker.
    pub id: WorkerId,
    /// Whether its heartbeats are current.
    pub active: bool,
    /// Everything it offers.
    pub capacity: Resources,
    /// What is free now.
    pub available: Resources,
}

/// Why a task cannot be placed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoCapacity {
    /// No worker is active.
    NoActiveWorkers,
    /// The request exceeds every active worker's whole capacity; it waits
    /// for a bigger worker to join.
    ExceedsEveryWorker,
    /// Some active worker could run it, but none has room now; it waits for
    /// a task to end.
    AllBusy,
}

impl fmt::Display for NoCapacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoCapacity::NoActiveWorkers => "no active workers",
            NoCapacity::ExceedsEveryWorker => "request exceeds the capacity of every active worker",
            NoCapacity::AllBusy => "no active worker has enough free resources now",
        })
    }
}

/// The outcome of [`place`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Placement {
    /// Run it here.
    On(WorkerId),
    /// Keep it queued, for this reason.
    Wait(NoCapacity),
}

/// A placement policy. It only ranks: [`place`] has already removed
/// inactive workers and workers without room.
pub trait Scheduler: Send + fmt::Debug {
    /// The policy's name, as configured.
    fn name(&self) -> &'static str;

    /// Index into `eligible` (never empty; sorted by worker id) of the
    /// worker to use for `request`.
    fn choose(&mut self, request: &Resources, eligible: &[&Candidate]) -> usize;
}

/// Places `request` among `candidates` with `scheduler`.
pub fn place(
    scheduler: &mut dyn Scheduler,
    request: &Resources,
    candidates: &[Candidate],
) -> Placement {
    let mut active: Vec<&Candidate> = candidates.iter().filter(|c| c.active).collect();
    if active.is_empty() {
        return Placement::Wait(NoCapacity::NoActiveWorkers);
    }
    active.sort_by(|a, b| a.id.cmp(&b.id));
    let eligible: Vec<&Candidate> = active
        .iter()
        .copied()
        .filter(|c| request.fits_within(&c.available))
        .collect();
    if eligible.is_empty() {
        let could_ever = active.iter().any(|c| request.fits_within(&c.capacity));
        return Placement::Wait(if could_ever {
            NoCapacity::AllBusy
        } else {
            NoCapacity::ExceedsEveryWorker
        });
    }
    let i = scheduler.choose(request, &eligible).min(eligible.len() - 1);
    Placement::On(eligible[i].id.clone())
}

/// How many workers with room a sampled placement ranks at most.
pub const SAMPLE: usize = 16;

/// The first [`SAMPLE`] active workers with room for `request` that
/// `walk` yields (empty if none has room). The walk runs to its end only
/// when fewer have room.
pub fn sample(request: &Resources, walk: impl IntoIterator<Item = Candidate>) -> Vec<Candidate> {
    walk.into_iter()
        .filter(|c| c.active && request.fits_within(&c.available))
        .take(SAMPLE)
        .collect()
}

/// The largest of `workers` (by CPU, then memory) when none of them could
/// ever hold `request`, even with nothing running; `None` when one could,
/// or there are none. A submit is refused on it: such a task would wait
/// for ever.
pub fn never_fits<'a>(
    request: &Resources,
    workers: impl IntoIterator<Item = (&'a WorkerId, Resources)>,
) -> Option<(&'a WorkerId, Resources)> {
    let mut largest: Option<(&WorkerId, Resources)> = None;
    for (id, capacity) in workers {
        if request.fits_within(&capacity) {
            return None;
        }
        let bigger = largest.is_none_or(|(_, l)| {
            (capacity.cpu_millis, capacity.memory_mb) > (l.cpu_millis, l.memory_mb)
        });
        if bigger {
            largest = Some((id, capacity));
        }
    }
    largest
}

/// Why `request` fits none of `walk` now, as [`place`] would say over the
/// same workers. The walk stops at the first active worker that could
/// ever hold it (then every one is busy), so in a full cluster this costs
/// one visit; it runs to the end only when no active worker is big enough.
pub fn no_room(request: &Resources, walk: impl IntoIterator<Item = Candidate>) -> NoCapacity {
    let mut any_active = false;
    for c in walk.into_iter().filter(|c| c.active) {
        if request.fits_within(&c.capacity) {
            return NoCapacity::AllBusy;
        }
        any_active = true;
    }
    if any_active {
        NoCapacity::ExceedsEveryWorker
    } else {
        NoCapacity::NoActiveWorkers
    }
}

/// Every worker of `workers` once, starting just after `cursor` and
/// wrapping around, so successive placements start where the last one
/// ended and spread over the cluster.
pub fn walk_from<'a, V>(
    workers: &'a BTreeMap<WorkerId, V>,
    cursor: Option<&'a WorkerId>,
) -> impl Iterator<Item = (&'a WorkerId, &'a V)> + 'a {
    let (after, upto) = match cursor {
        Some(c) => (
            workers.range::<WorkerId, _>((Excluded(c), Unbounded)),
            Some(workers.range::<WorkerId, _>((Unbounded, Included(c)))),
        ),
        None => (workers.range::<WorkerId, _>(..), None),
    };
    after.chain(upto.into_iter().flatten())
}

/// The built-in policies, by name (for configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// [`RoundRobin`].
    RoundRobin,
    /// [`LeastLoaded`].
    LeastLoaded,
    /// [`BinPack`].
    BinPack,
    /// [`ResourceAware`].
    #[default]
    ResourceAware,
}

impl Policy {
    /// Every built-in policy.
    pub const ALL: [Policy; 4] = [
        Policy::RoundRobin,
        Policy::LeastLoaded,
        Policy::BinPack,
        Policy::ResourceAware,
    ];

    /// A fresh scheduler for the policy.
    pub fn build(self) -> Box<dyn Scheduler> {
        match self {
            Policy::RoundRobin => Box::new(RoundRobin::default()),
            Policy::LeastLoaded => Box::new(LeastLoaded),
            Policy::BinPack => Box::new(BinPack),
            Policy::ResourceAware => Box::new(ResourceAware),
        }
    }
}

impl FromStr for Policy {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.build().name() == s)
            .ok_or_else(|| ValidationError::BadCharacter {
                field: "scheduler policy (round-robin, least-loaded, bin-pack, resource-aware)",
                found: s.chars().next().unwrap_or(' '),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_no_worker_could_hold_names_the_largest() {
        let (a, b) = (WorkerId::new("a").unwrap(), WorkerId::new("b").unwrap());
        let small = Resources::new(2.0, 4.0, 10.0, 0).unwrap();
        let big = Resources::new(4.0, 2.0, 10.0, 0).unwrap();
        let ask = |cpu, gpus| Resources::new(cpu, 1.0, 0.0, gpus).unwrap();
        let workers = || [(&a, small), (&b, big)];
        assert_eq!(never_fits(&ask(8.0, 0), workers()), Some((&b, big)));
        assert_eq!(
            never_fits(&ask(1.0, 1), workers()),
            Some((&b, big)),
            "no GPU anywhere"
        );
        assert_eq!(never_fits(&ask(3.0, 0), workers()), None, "b could hold it");
        assert_eq!(never_fits(&ask(8.0, 0), []), None, "no worker: it queues");
    }

    fn cand(id: &str, active: bool, cap: (f64, f64, u32), free: (f64, f64, u32)) -> Candidate {
        Candidate {
            id: WorkerId::new(id).unwrap(),
            active,
            capacity: Resources::new(cap.0, cap.1, 0.0, cap.2).unwrap(),
            available: Resources::new(free.0, free.1, 0.0, free.2).unwrap(),
        }
    }
    fn req(cpu: f64, mem: f64, gpus: u32) -> Resources {
        Resources::new(cpu, mem, 0.0, gpus).unwrap()
    }
    fn on(id: &str) -> Placement {
        Placement::On(WorkerId::new(id).unwrap())
    }

    #[test]
    fn inactive_and_full_workers_are_never_chosen() {
        let cands = [
            cand("a", false, (8.0, 8.0, 0), (8.0, 8.0, 0)),
            cand("b", true, (8.0, 8.0, 0), (0.5, 8.0, 0)),
            cand("c", true, (8.0, 8.0, 0), (4.0, 4.0, 0)),
        ];
        for p in Policy::ALL {
            assert_eq!(
                place(p.build().as_mut(), &req(1.0, 1.0, 0), &cands),
                on("c"),
                "{p:?}"
            );
        }
    }

    #[test]
    fn reasons_distinguish_no_workers_busy_and_too_big() {
        let mut s = RoundRobin::default();
        assert_eq!(
            place(&mut s, &req(1.0, 0.0, 0), &[]),
            Placement::Wait(NoCapacity::NoActiveWorkers)
        );
        let busy = [cand("a", true, (2.0, 2.0, 0), (0.0, 0.0, 0))];
        assert_eq!(
            place(&mut s, &req(1.0, 0.0, 0), &busy),
            Placement::Wait(NoCapacity::AllBusy)
        );
        assert_eq!(
            place(&mut s, &req(4.0, 0.0, 0), &busy),
            Placement::Wait(NoCapacity::ExceedsEveryWorker)
        );
    }

    #[test]
    fn round_robin_rotates_by_id() {
        let cands = [
            cand("b", true, (8.0, 8.0, 0), (8.0, 8.0, 0)),
            cand("a", true, (8.0, 8.0, 0), (8.0, 8.0, 0)),
        ];
        let mut s = RoundRobin::default();
        let picks: Vec<_> = (0..3)
            .map(|_| place(&mut s, &req(1.0, 0.0, 0), &cands))
            .collect();
        assert_eq!(picks, vec![on("a"), on("b"), on("a")]);
    }

    #[test]
    fn least_loaded_spreads_and_bin_pack_packs() {
        let cands = [
            cand("busy", true, (8.0, 8.0, 0), (2.0, 2.0, 0)),
            cand("idle", true, (8.0, 8.0, 0), (8.0, 8.0, 0)),
        ];
        assert_eq!(
            place(&mut LeastLoaded, &req(1.0, 1.0, 0), &cands),
            on("idle")
        );
        assert_eq!(place(&mut BinPack, &req(1.0, 1.0, 0), &cands), on("busy"));
    }

    #[test]
    fn resource_aware_keeps_gpu_workers_for_gpu_tasks() {
        let cands = [
            cand("gpu", true, (8.0, 8.0, 2), (8.0, 8.0, 2)),
            cand("plain", true, (8.0, 8.0, 0), (4.0, 4.0, 0)),
        ];
        assert_eq!(
            place(&mut ResourceAware, &req(1.0, 1.0, 0), &cands),
            on("plain")
        );
        assert_eq!(
            place(&mut ResourceAware, &req(1.0, 1.0, 1), &cands),
            on("gpu")
        );
    }

    #[test]
    fn a_sample_ranks_the_first_workers_with_room_along_the_walk() {
        let ids: BTreeMap<WorkerId, ()> = (0..40)
            .map(|i| (WorkerId::new(format!("w{i:02}")).unwrap(), ()))
            .collect();
        let start = WorkerId::new("w30").unwrap();
        let walked: Vec<&str> = walk_from(&ids, Some(&start))
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(walked.len(), 40, "every worker once");
        assert_eq!((walked[0], walked[9], walked[39]), ("w31", "w00", "w30"));
        // Every third worker is full; the rest have room.
        let cands = || {
            walk_from(&ids, Some(&start))
                .enumerate()
                .map(|(i, (id, _))| {
                    let free = if i % 3 == 0 { 0.0 } else { 4.0 };
                    cand(id.as_str(), true, (4.0, 4.0, 0), (free, free, 0))
                })
        };
        let sample: Vec<Candidate> = cands()
            .filter(|c| req(1.0, 1.0, 0).fits_within(&c.available))
            .take(SAMPLE)
            .collect();
        assert_eq!(super::sample(&req(1.0, 1.0, 0), cands()), sample);
    }

    #[test]
    fn without_room_the_reason_is_the_one_place_gives() {
        let all = [
            cand("a", false, (8.0, 8.0, 0), (8.0, 8.0, 0)),
            cand("b", true, (2.0, 2.0, 0), (0.0, 0.0, 0)),
        ];
        for (request, list) in [
            (req(1.0, 1.0, 0), &all[..1]),
            (req(1.0, 1.0, 0), &all[..]),
            (req(4.0, 1.0, 0), &all[..]),
        ] {
            assert!(sample(&request, list.iter().cloned()).is_empty());
            assert_eq!(
                Placement::Wait(no_room(&request, list.iter().cloned())),
                place(&mut RoundRobin::default(), &request, list)
            );
        }
    }

    #[test]
    fn policies_parse_by_name() {
        for p in Policy::ALL {
            assert_eq!(p.build().name().parse::<Policy>(), Ok(p));
        }
        assert!("fastest".parse::<Policy>().is_err());
    }
}

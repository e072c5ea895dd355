//! The four placement policies, each a [`Scheduler`] that ranks the
//! eligible workers [`super::place`] hands it.

use super::{Candidate, Scheduler};
use crate::model::{Resources, WorkerId};

/// Share of capacity in use after adding `request`, on the most used
/// dimension (dominant share). Dimensions the worker lacks are skipped.
fn dominant_share_after(c: &Candidate, request: &Resources) -> f64 {
    let used = c.capacity.saturating_sub(&c.available);
    let dims = [
        (used.cpu_millis + request.cpu_millis, c.capacity.cpu_millis),
        (used.memory_mb + request.memory_mb, c.capacity.memory_mb),
        (used.storage_mb + request.storage_mb, c.capacity.storage_mb),
        (
            u64::from(used.gpus + request.gpus),
            u64::from(c.capacity.gpus),
        ),
    ];
    dims.iter()
        .filter(|(_, cap)| *cap > 0)
        .map(|(u, cap)| *u as f64 / *cap as f64)
        .fold(0.0, f64::max)
}

/// Index of the first maximum of `key` (ties go to the lowest worker id).
fn argmax(eligible: &[&Candidate], key: impl Fn(&Candidate) -> f64) -> usize {
    let mut best = 0;
    for i in 1..eligible.len() {
        if key(eligible[i]) > key(eligible[best]) {
            best = i;
        }
    }
    best
}

/// Takes eligible workers in turn by id, resuming after the last one used,
/// so the rotation survives workers joining and leaving.
#[derive(Debug, Default)]
pub struct RoundRobin {
    last: Option<WorkerId>,
}

impl Scheduler for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn choose(&mut self, _request: &Resources, eligible: &[&Candidate]) -> usize {
        let i = match &self.last {
            Some(last) => eligible.iter().position(|c| &c.id > last).unwrap_or(0),
            None => 0,
        };
        self.last = Some(eligible[i].id.clone());
        i
    }
}

/// Spreads load: the worker whose dominant share stays lowest.
#[derive(Debug, Default)]
pub struct LeastLoaded;

impl Scheduler for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }

    fn choose(&mut self, request: &Resources, eligible: &[&Candidate]) -> usize {
        argmax(eligible, |c| -dominant_share_after(c, request))
    }
}

/// Packs tightly: the worker whose dominant share becomes highest, leaving
/// other workers whole for large tasks.
#[derive(Debug, Default)]
pub struct BinPack;

impl Scheduler for BinPack {
    fn name(&self) -> &'static str {
        "bin-pack"
    }

    fn choose(&mut self, request: &Resources, eligible: &[&Candidate]) -> usize {
        argmax(eligible, |c| dominant_share_after(c, request))
    }
}

/// The original system's resource-aware policy, made explicit: prefer the worker whose
/// free resources have the shape of the request (alignment of request and
/// free share per dimension, as in Tetris-style packers), and keep GPU
/// workers free for GPU tasks.
#[derive(Debug, Default)]
pub struct ResourceAware;

impl ResourceAware {
    fn score(c: &Candidate, r: &Resources) -> f64 {
        let dims = [
            (r.cpu_millis, c.available.cpu_millis, c.capacity.cpu_millis),
            (r.memory_mb, c.available.memory_mb, c.capacity.memory_mb),
            (r.storage_mb, c.available.storage_mb, c.capacity.storage_mb),
            (
                u64::from(r.gpus),
                u64::from(c.available.gpus),
                u64::from(c.capacity.gpus),
            ),
        ];
        let alignment: f64 = dims
            .iter()
            .filter(|(_, _, cap)| *cap > 0)
            .map(|(req, free, cap)| (*req as f64 / *cap as f64) * (*free as f64 / *cap as f64))
            .sum();
        let strands_gpus = r.gpus == 0 && c.available.gpus > 0;
        alignment - if strands_gpus { 1.0 } else { 0.0 }
    }
}

impl Scheduler for ResourceAware {
    fn name(&self) -> &'static str {
        "resource-aware"
    }

    fn choose(&mut self, request: &Resources, eligible: &[&Candidate]) -> usize {
        argmax(eligible, |c| Self::score(c, request))
    }
}

//! CloudAI-rs benchmarks' shared parts: starting a master binary, the
//! simulated worker swarm, submitting tasks, the swarm's measured run, and
//! its steady load across master takeovers.
//! The binaries (`load`, `nodesim`, `store`) and the CI smoke test use them.

pub mod master_proc;
pub mod measure;
pub mod steady;
pub mod submit;
pub mod swarm;

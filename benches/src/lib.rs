//! CloudAI-rs benchmarks' shared parts: starting a master binary, the
//! simulated worker swarm, submitting tasks, and the swarm's measured run.
//! The binaries (`load`, `nodesim`, `store`) and the CI smoke test use them.

pub mod master_proc;
pub mod measure;
pub mod submit;
pub mod swarm;

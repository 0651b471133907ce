//! The runner: everything around the pure core that touches the world.
//!
//! * [`executor`]: where trial processes run (local processes; SLURM later).
//! * [`storage`]: the files an experiment leaves on disk.
//! * [`report`]: tables, the best trial, and the live console.
//! * [`server`]: the protocol server trials report to (docs/protocol.md).
//!
//! Work in progress, not yet compiled in (they wait for the search space and the ASHA/median
//! scheduler specs): `experiment.rs` (the strict experiment file),
//! `setup.rs` (options to a checked experiment) and `run_loop.rs` (the event loop).

pub mod executor;
pub mod report;
pub mod server;
pub mod storage;

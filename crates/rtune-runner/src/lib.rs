//! The runner: everything around the pure core that touches the world.
//!
//! * [`catalog`]: finding experiments by name under the storage directory, and listing them.
//! * [`experiment`]: the experiment file, read strictly, with `--set` overrides.
//! * [`setup`]: from the command line's options to a checked, ready experiment.
//! * [`run_loop`]: the event loop that owns the experiment's state.
//! * [`executor`]: where trial processes run (local processes, SLURM, or simulated in virtual
//!   time on a benchmark function).
//! * [`claim`]: one head per experiment: the lease in `head_claim.json`, and the fence that
//!   stops a head that lost it from writing anything more.
//! * [`clock`]: the time the run loop sees: real, or virtual under the simulator.
//! * [`server`]: the protocol server trials report to (docs/protocol.md).
//! * [`report_checks`]: checkpoints a report may not hand over.
//! * [`state`]: `experiment_state.json`, what readers see of an experiment.
//! * [`storage`]: the files an experiment leaves on disk.
//! * [`report`]: tables, the best trial, and the live console.
//! * [`lineage`]: PBT's exploits and a trial's policy, as `rtune status --lineage` shows them.
//! * [`submit`]: the SLURM head job (`rtune submit`) and capacity plans (`rtune plan`).

pub mod catalog;
pub mod claim;
pub mod clock;
pub mod executor;
pub mod experiment;
pub mod journal;
pub mod lineage;
pub mod report;
pub mod report_checks;
pub mod results;
pub mod run_loop;
pub mod server;
pub mod setup;
pub mod state;
pub mod storage;
pub mod submit;

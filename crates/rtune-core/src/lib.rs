//! The pure core of rtune.
//!
//! Everything here is deterministic: no files, no sockets, no clock, no threads. Time arrives as
//! values inside events, randomness comes from one seeded RNG owned by the [`Tuner`], so a run can
//! be replayed decision by decision from its event journal and every scheduler can be tested on
//! hand-written scenarios.
//!
//! * [`space`]: search spaces (`uniform`, `loguniform`, `choice`, `grid`, ...) and sampling.
//! * [`searcher`]: what proposes configurations (random, grid, TPE, BOHB).
//! * [`scheduler`]: what decides about running trials (FIFO, ASHA, median stopping, ...).
//! * [`trial`]: trial ids, statuses and the legal transitions between them.
//! * [`synthetic`]: multi-fidelity test functions with known optima (Branin, Hartmann-6).
//! * [`tuner`]: the controller that joins them; the runner feeds it events and carries out what
//!   it asks for.

pub mod placement;
pub mod result;
pub mod scheduler;
pub mod searcher;
pub mod space;
pub mod synthetic;
pub mod trial;
pub mod tuner;

pub use placement::{ExecutorKind, NodeShare, Placement};
pub use result::{Mode, TrialResult};
pub use scheduler::{Action, Budget, Decision, InvalidSetting, Scheduler, SchedulerContext};
pub use searcher::{Searcher, Suggestion};
pub use trial::{CheckpointId, TrialId, TrialStatus};
pub use tuner::Tuner;

/// A trial's configuration: the sampled hyperparameters, possibly nested (`{"model": {"layers": 2}}`).
pub type Config = serde_json::Map<String, serde_json::Value>;

/// The random number generator used for every random choice in the core. ChaCha8 is portable and
/// stable across platforms and crate versions, so a seed means the same thing everywhere.
pub type CoreRng = rand_chacha::ChaCha8Rng;

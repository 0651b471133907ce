//! Searchers propose configurations; they know nothing about running trials.
//!
//! * [`RandomSearcher`]: random samples and grids (Ray Tune's default).
//! * [`FixedSearcher`]: a given list of configurations (replays).
//! * [`TpeSearcher`]: model-based, a tree-structured Parzen estimator (Optuna's TPE) or its
//!   multi-fidelity form (BOHB: fitted on the highest rung with enough observations).
//! * [`GpSearcher`]: a Gaussian process over (config, resource) with expected improvement at the
//!   acquisition rung (MOBSTER-class), for ASHA and every other scheduler.
//!
//! A searcher's state is a function of the calls it received: the same `suggest`,
//! `on_trial_result` and `on_trial_complete` calls in the same order give the same state and the
//! same proposals (the journal replay relies on it). Model-based searchers draw from their own
//! RNG stream per trial, seeded by the experiment's seed, so their proposals do not depend on
//! what the scheduler drew from the tuner's RNG.

mod fixed;
mod gp;
mod parzen;
mod random;
mod spec;
mod tpe;

pub use fixed::FixedSearcher;
pub use gp::{GpSearcher, GpSettings, GpState};
pub use random::RandomSearcher;
pub use spec::{
    BohbConfig, GpConfig, InvalidSearcherSetting, RandomConfig, SearcherContext, SearcherSpec,
    TpeConfig,
};
pub use tpe::{Fidelity, TpeSearcher, TpeSettings};

use crate::{Config, CoreRng, TrialId, TrialResult};

/// A configuration with the reason it was proposed, for the decisions log.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub config: Config,
    /// One sentence: why this config (`random initial config 3 of 10`, `tpe: best of 24
    /// candidates, log l(x)/g(x) = 1.8, ...`).
    pub reason: String,
    /// The numbers behind the reason (model, rung, observations, acquisition value).
    pub details: serde_json::Value,
}

/// What a searcher answers when asked for a configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum Suggestion {
    /// Start a new trial with this configuration.
    Config(Config),
    /// Start a new trial with this configuration, and log why it was chosen.
    Explained(Proposal),
    /// Nothing right now; ask again after a trial completes (a model-based searcher waiting for
    /// results, say).
    NotNow,
    /// The search is over: no more trials.
    Finished,
}

pub trait Searcher: Send {
    /// Short name for logs (`random`, `grid`, ...).
    fn name(&self) -> &'static str;

    /// Propose the configuration of trial `trial`.
    fn suggest(&mut self, trial: TrialId, rng: &mut CoreRng) -> Suggestion;

    /// A trial reported a result (with the tuner's automatic keys filled in). Model-based
    /// searchers learn from intermediate results as they arrive.
    fn on_trial_result(&mut self, _trial: TrialId, _result: &TrialResult) {}

    /// A trial ended (TERMINATED or ERROR); its last result, if it reported any.
    fn on_trial_complete(&mut self, _trial: TrialId, _last: Option<&TrialResult>) {}

    /// How many trials this searcher will propose in all, when known (for progress bars).
    fn total_trials(&self) -> Option<usize> {
        None
    }

    /// A journal replay: trial `trial` was created with `config` (as this searcher, or an
    /// earlier release of it, proposed). Record it as if `suggest` had proposed it, without
    /// computing a proposal. Searchers that keep nothing per proposal keep the default.
    fn on_trial_replayed(&mut self, _trial: TrialId, _config: &Config) {}

    /// The searcher's own state as a value, for the journal's snapshots. Searchers whose
    /// proposals depend only on the trial number (random, grid, fixed) keep the default.
    fn save(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Load a state [`Searcher::save`] wrote into a searcher freshly built from the same
    /// settings.
    fn restore(&mut self, state: serde_json::Value) -> Result<(), String> {
        crate::scheduler::restore_nothing(self.name(), &state)
    }
}

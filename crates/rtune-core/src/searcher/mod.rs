//! Searchers propose configurations; they know nothing about running trials.

mod fixed;
mod random;

pub use fixed::FixedSearcher;
pub use random::RandomSearcher;

use crate::{Config, CoreRng, TrialId, TrialResult};

/// What a searcher answers when asked for a configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum Suggestion {
    /// Start a new trial with this configuration.
    Config(Config),
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

    /// A trial ended; its last result, if it reported any.
    fn on_trial_complete(&mut self, _trial: TrialId, _last: Option<&TrialResult>) {}

    /// How many trials this searcher will propose in all, when known (for progress bars).
    fn total_trials(&self) -> Option<usize> {
        None
    }
}

//! A searcher that hands out a given list of configurations, in order (replays, reruns).

use crate::searcher::{Searcher, Suggestion};
use crate::{Config, CoreRng, TrialId};

pub struct FixedSearcher {
    configs: Vec<Config>,
}

impl FixedSearcher {
    pub fn new(configs: Vec<Config>) -> Self {
        FixedSearcher { configs }
    }
}

impl Searcher for FixedSearcher {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn suggest(&mut self, trial: TrialId, _rng: &mut CoreRng) -> Suggestion {
        match self.configs.get(trial.0 as usize) {
            Some(config) => Suggestion::Config(config.clone()),
            None => Suggestion::Finished,
        }
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.configs.len())
    }
}

//! Random search with grid expansion, after Ray Tune's `BasicVariantGenerator`: the grid's
//! cartesian product repeated `num_samples` times, each trial with fresh samples of the random
//! parameters.

use rand::SeedableRng;

use crate::searcher::{Searcher, Suggestion};
use crate::space::SearchSpace;
use crate::{CoreRng, TrialId};

pub struct RandomSearcher {
    space: SearchSpace,
    total: usize,
    seed: u64,
}

impl RandomSearcher {
    /// `num_samples` x the space's grid size trials; trial `i` gets grid point `i % grid_size`.
    pub fn new(space: SearchSpace, num_samples: usize, seed: u64) -> Self {
        let total = num_samples.saturating_mul(space.grid_size());
        RandomSearcher { space, total, seed }
    }

    pub fn space(&self) -> &SearchSpace {
        &self.space
    }
}

impl Searcher for RandomSearcher {
    fn name(&self) -> &'static str {
        if self.space.is_pure_grid() {
            "grid"
        } else {
            "random"
        }
    }

    /// The tuner's RNG is ignored: each trial's samples come from its own ChaCha8 stream of the
    /// experiment's seed, so trial `i`'s config depends only on the seed and `i`, whatever the
    /// scheduler drew before and in whatever order trials are asked for.
    fn suggest(&mut self, trial: TrialId, _rng: &mut CoreRng) -> Suggestion {
        let index = trial.0 as usize;
        if index >= self.total {
            return Suggestion::Finished;
        }
        let mut rng = CoreRng::seed_from_u64(self.seed);
        rng.set_stream(u64::from(trial.0));
        Suggestion::Config(self.space.sample(index, &mut rng))
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use serde_json::{Value, json};

    fn searcher(space: Value, num_samples: usize, seed: u64) -> RandomSearcher {
        let table = space.as_object().cloned().expect("a JSON object");
        RandomSearcher::new(
            SearchSpace::from_json(&table).expect("a valid space"),
            num_samples,
            seed,
        )
    }

    fn all(searcher: &mut RandomSearcher) -> Vec<Config> {
        // A tuner RNG in a different state for every call: it must not matter.
        let mut configs = Vec::new();
        for i in 0.. {
            let mut unrelated = CoreRng::seed_from_u64(1000 + i);
            match searcher.suggest(TrialId(i as u32), &mut unrelated) {
                Suggestion::Config(c) => configs.push(c),
                Suggestion::Finished => break,
                Suggestion::NotNow | Suggestion::Explained(_) => {
                    panic!("a random searcher always has a plain answer")
                }
            }
        }
        configs
    }

    #[test]
    fn num_samples_times_grid_size_trials_with_grid_point_i_mod_size() {
        let mut s = searcher(
            json!({"wd": {"grid": [0.0, 0.01]}, "lr": {"loguniform": [1e-5, 1e-3]}}),
            3,
            0,
        );
        assert_eq!(s.total_trials(), Some(6));
        assert_eq!(s.name(), "random");
        let configs = all(&mut s);
        assert_eq!(configs.len(), 6);
        for (i, c) in configs.iter().enumerate() {
            let expected = if i % 2 == 0 { 0.0 } else { 0.01 };
            assert_eq!(c["wd"], json!(expected), "trial {i}");
        }
        // Fresh random samples for every repetition of a grid point.
        let lrs: std::collections::BTreeSet<String> =
            configs.iter().map(|c| c["lr"].to_string()).collect();
        assert_eq!(lrs.len(), 6);
    }

    #[test]
    fn a_pure_grid_is_named_grid() {
        let mut s = searcher(
            json!({"a": {"grid": [1, 2, 3]}, "b": {"grid": [true, false]}}),
            1,
            0,
        );
        assert_eq!(s.name(), "grid");
        let configs = all(&mut s);
        let points: Vec<Value> = configs.iter().map(|c| json!([c["a"], c["b"]])).collect();
        assert_eq!(
            points,
            [
                json!([1, true]),
                json!([1, false]),
                json!([2, true]),
                json!([2, false]),
                json!([3, true]),
                json!([3, false])
            ]
        );
        assert_eq!(searcher(json!({"c": 1}), 2, 0).name(), "random");
    }

    #[test]
    fn the_same_seed_gives_the_same_configs() {
        let space = json!({
            "lr": {"loguniform": [1e-5, 1e-3]},
            "model": {"layers": {"randint": [1, 8]}},
            "bs": {"choice": [8, 16, 32]},
        });
        let a = all(&mut searcher(space.clone(), 10, 42));
        let b = all(&mut searcher(space.clone(), 10, 42));
        let c = all(&mut searcher(space.clone(), 10, 43));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Trial i's config does not depend on the order trials are asked for.
        let mut s = searcher(space, 10, 42);
        let mut rng = CoreRng::seed_from_u64(0);
        let Suggestion::Config(fifth) = s.suggest(TrialId(5), &mut rng) else {
            panic!("trial 5 exists");
        };
        assert_eq!(fifth, a[5]);
        assert_eq!(s.suggest(TrialId(10), &mut rng), Suggestion::Finished);
    }

    #[test]
    fn zero_samples_means_no_trials() {
        let mut s = searcher(json!({"x": {"uniform": [0, 1]}}), 0, 0);
        assert_eq!(s.total_trials(), Some(0));
        assert!(all(&mut s).is_empty());
    }
}

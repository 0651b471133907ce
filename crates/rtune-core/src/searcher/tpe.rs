//! Model-based search with a tree-structured Parzen estimator (TPE, as in Optuna), and its
//! multi-fidelity form (BOHB: the model is fitted on the highest rung that has enough
//! observations).
//!
//! Each proposal after the initial ones ranks the observations, takes the best `gamma` fraction
//! as "good", fits one Parzen estimator `l(x)` on the good and one `g(x)` on the rest, draws
//! `n_candidates` configs from `l(x)` and proposes the one with the largest `l(x)/g(x)`.
//!
//! It works asynchronously with every scheduler: a proposal uses whatever has been reported so
//! far, also by trials still running (intermediate results), and never waits. Trials that have
//! nothing to show yet are ignored, or counted as bad (`constant_liar`, as in Optuna) so that
//! parallel proposals spread out.
//!
//! Determinism: every proposal draws from its own ChaCha8 stream (the experiment's seed, stream
//! = trial number), and the state is nothing but the configs proposed and the results received,
//! in order. Replaying the same calls rebuilds the same state and the same proposals.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::searcher::parzen::{Encoding, Parzen};
use crate::searcher::{Proposal, Searcher, Suggestion};
use crate::space::SearchSpace;
use crate::{Config, CoreRng, Mode, TrialId, TrialResult};

/// Which results the model is fitted on.
#[derive(Clone, Debug, PartialEq)]
pub enum Fidelity {
    /// Optuna's TPE: each trial's latest reported value; a trial that trained further (larger
    /// `training_iteration`) ranks above one that stopped earlier, whatever their values (as
    /// Optuna ranks pruned trials), and among trials that got equally far the better value
    /// ranks first.
    Latest,
    /// BOHB: each trial's value where it first reached each rung of `resource_attr`; the model
    /// is fitted on the highest rung with at least `min_points` values. `levels`: the rungs
    /// (the scheduler's milestones); `None`: every distinct value of `resource_attr` is a rung.
    Rungs {
        resource_attr: String,
        levels: Option<Vec<f64>>,
        min_points: usize,
    },
}

/// Everything a [`TpeSearcher`] is configured with (the `[searcher]` keys, already checked).
#[derive(Clone, Debug, PartialEq)]
pub struct TpeSettings {
    pub metric: String,
    pub mode: Mode,
    pub seed: u64,
    /// How many trials to propose in all.
    pub num_samples: usize,
    /// Trials `0..n_initial` are random (after the warm-start points, which count towards it).
    pub n_initial: usize,
    /// The fraction of observations taken as good: `ceil(gamma * n)`, at least 1.
    pub gamma: f64,
    /// Candidates drawn from `l(x)` per proposal.
    pub n_candidates: usize,
    /// One joint kernel per observation (keeps correlations) instead of independent parameters.
    pub multivariate: bool,
    /// Count trials without a result yet as bad observations.
    pub constant_liar: bool,
    /// The share of model-phase proposals drawn at random instead (BOHB uses 1/3).
    pub random_fraction: f64,
    /// The weight of the prior kernel (a broad kernel over the whole domain) in each estimator.
    pub prior_weight: f64,
    /// Configs (possibly partial; missing parameters are drawn at random) to try first.
    pub points_to_evaluate: Vec<Config>,
    pub fidelity: Fidelity,
}

/// A rung level as a map key (levels are finite).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Level(pub(crate) f64);

impl Eq for Level {}

impl PartialOrd for Level {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Level {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// `BTreeMap<Level, f64>` as a list of `[level, score]` pairs (JSON map keys are text).
pub(crate) mod level_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Level;

    pub fn serialize<S: Serializer>(map: &BTreeMap<Level, f64>, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(f64, f64)> = map.iter().map(|(l, v)| (l.0, *v)).collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Level, f64>, D::Error> {
        let pairs: Vec<(f64, f64)> = Vec::deserialize(d)?;
        Ok(pairs.into_iter().map(|(l, v)| (Level(l), v)).collect())
    }
}

/// What the searcher knows of one trial it proposed.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Record {
    /// The config in model coordinates (`None` if it cannot be encoded).
    point: Option<Vec<f64>>,
    finished: bool,
    /// Latest report: (training_iteration, score).
    latest: Option<(u64, f64)>,
    /// Score at each rung, where the trial first reached it.
    #[serde(with = "level_map")]
    rungs: BTreeMap<Level, f64>,
}

/// TPE (`name = "tpe"`) or BOHB (`name = "bohb"`): see the module documentation.
pub struct TpeSearcher {
    name: &'static str,
    settings: TpeSettings,
    space: SearchSpace,
    encoding: Encoding,
    records: BTreeMap<TrialId, Record>,
}

/// The observations a model is fitted on.
struct Data {
    /// Best first.
    ranked: Vec<Vec<f64>>,
    /// The good ones are taken from the first `top` (for BOHB, those at the rung; the others
    /// ended below it).
    top: usize,
    /// Trials without an observation yet (constant liar).
    pending: Vec<Vec<f64>>,
    /// For BOHB: the rung used.
    rung: Option<f64>,
}

impl TpeSearcher {
    /// `Err((parameter, kind))` when the space holds a domain a model cannot handle (`grid`).
    /// The settings are expected to be checked already ([`crate::searcher::SearcherSpec`]).
    pub fn new(
        name: &'static str,
        space: SearchSpace,
        settings: TpeSettings,
    ) -> Result<TpeSearcher, (String, &'static str)> {
        let encoding = Encoding::new(&space)?;
        Ok(TpeSearcher {
            name,
            settings,
            space,
            encoding,
            records: BTreeMap::new(),
        })
    }

    /// The observations to fit on now, or why there are none.
    fn data(&self, asking: TrialId) -> Result<Data, String> {
        let open = |id: &TrialId, r: &Record| *id != asking && !r.finished;
        match &self.settings.fidelity {
            Fidelity::Latest => {
                let mut observed: Vec<(u64, f64, TrialId, &Vec<f64>)> = self
                    .records
                    .iter()
                    .filter_map(|(id, r)| {
                        let (iteration, score) = r.latest?;
                        Some((iteration, score, *id, r.point.as_ref()?))
                    })
                    .collect();
                observed
                    .sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
                let pending = self
                    .records
                    .iter()
                    .filter(|&(id, r)| open(id, r) && r.latest.is_none())
                    .filter_map(|(_, r)| r.point.clone())
                    .collect();
                if observed.len() < 2 {
                    return Err(format!(
                        "{} trial{} reported {} so far, the model needs 2",
                        observed.len(),
                        if observed.len() == 1 { "" } else { "s" },
                        self.settings.metric
                    ));
                }
                let top = observed.len();
                Ok(Data {
                    ranked: observed.into_iter().map(|o| o.3.clone()).collect(),
                    top,
                    pending,
                    rung: None,
                })
            }
            Fidelity::Rungs {
                resource_attr,
                min_points,
                ..
            } => {
                let mut counts: BTreeMap<Level, usize> = BTreeMap::new();
                for r in self.records.values().filter(|r| r.point.is_some()) {
                    for level in r.rungs.keys() {
                        *counts.entry(*level).or_default() += 1;
                    }
                }
                let Some((&level, _)) = counts.iter().rev().find(|(_, n)| **n >= *min_points)
                else {
                    let most = counts.values().copied().max().unwrap_or(0);
                    return Err(format!(
                        "no rung of {resource_attr} has {min_points} results yet (at most {most}), the model needs {min_points}"
                    ));
                };
                let mut observed: Vec<(f64, TrialId, &Vec<f64>)> = self
                    .records
                    .iter()
                    .filter_map(|(id, r)| Some((*r.rungs.get(&level)?, *id, r.point.as_ref()?)))
                    .collect();
                observed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let top = observed.len();
                // Trials that ended below the rung (a scheduler stopped them, or they failed)
                // are worse than every trial that reached it: bad, the furthest first.
                let mut below: Vec<(Level, f64, TrialId, &Vec<f64>)> = self
                    .records
                    .iter()
                    .filter(|(_, r)| r.finished && !r.rungs.contains_key(&level))
                    .filter_map(|(id, r)| {
                        let (reached, score) = r.rungs.iter().next_back()?;
                        Some((*reached, *score, *id, r.point.as_ref()?))
                    })
                    .collect();
                below.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
                let pending = self
                    .records
                    .iter()
                    .filter(|&(id, r)| open(id, r) && !r.rungs.contains_key(&level))
                    .filter_map(|(_, r)| r.point.clone())
                    .collect();
                Ok(Data {
                    ranked: observed
                        .into_iter()
                        .map(|o| o.2.clone())
                        .chain(below.into_iter().map(|o| o.3.clone()))
                        .collect(),
                    top,
                    pending,
                    rung: Some(level.0),
                })
            }
        }
    }

    /// The model's proposal: `(values, ln l/g, details)`.
    fn model_proposal(&self, data: &Data, rng: &mut CoreRng) -> (Vec<Value>, f64, Value) {
        let s = &self.settings;
        let n = data.ranked.len();
        let n_good = ((s.gamma * data.top as f64).ceil() as usize).clamp(1, data.top.min(n - 1));
        let good: Vec<&[f64]> = data.ranked[..n_good].iter().map(Vec::as_slice).collect();
        let mut bad: Vec<&[f64]> = data.ranked[n_good..].iter().map(Vec::as_slice).collect();
        if s.constant_liar {
            bad.extend(data.pending.iter().map(Vec::as_slice));
        }
        let l = Parzen::fit(&self.encoding, &good, s.prior_weight, s.multivariate);
        let g = Parzen::fit(&self.encoding, &bad, s.prior_weight, s.multivariate);
        let mut best: Option<(Vec<Value>, f64)> = None;
        for _ in 0..s.n_candidates.max(1) {
            let values = self.encoding.decode(&l.sample(&self.encoding, rng));
            let refs: Vec<Option<&Value>> = values.iter().map(Some).collect();
            let Some(point) = self.encoding.encode(&refs) else {
                continue;
            };
            let ratio = l.ln_density(&self.encoding, &point) - g.ln_density(&self.encoding, &point);
            if best.as_ref().is_none_or(|(_, b)| ratio > *b) {
                best = Some((values, ratio));
            }
        }
        let (values, ratio) = best.unwrap_or_else(|| {
            let config = self.space.sample(0, rng);
            let values = values_of(&self.space, &config)
                .into_iter()
                .map(|v| v.cloned().unwrap_or(Value::Null))
                .collect();
            (values, f64::NEG_INFINITY)
        });
        let mut details = json!({
            "model": self.name,
            "multivariate": s.multivariate,
            "observations": n,
            "good": n_good,
            "candidates": s.n_candidates,
            "ln_l_over_g": round6(ratio),
        });
        if s.constant_liar {
            details["pending_as_bad"] = json!(data.pending.len());
        }
        if let (Some(rung), Fidelity::Rungs { resource_attr, .. }) = (data.rung, &s.fidelity) {
            details["rung"] = json!(rung);
            details["resource_attr"] = json!(resource_attr);
        }
        (values, ratio, details)
    }
}

/// A value of a warm-start point: by nested path (`{model = {layers = 2}}`) or dotted key
/// (`"model.layers" = 2`).
pub(crate) fn lookup<'a>(point: &'a Config, path: &[String]) -> Option<&'a Value> {
    crate::space::get_path(point, path).or_else(|| point.get(&path.join(".")))
}

/// The random stream of one trial's proposal: the same seed and trial give the same proposal,
/// whatever was proposed before (so proposals replay).
pub(crate) fn proposal_rng(seed: u64, trial: TrialId) -> CoreRng {
    let mut rng = CoreRng::seed_from_u64(seed);
    rng.set_stream(u64::from(trial.0));
    rng
}

/// A config's values in the space's parameter order (what [`Encoding::encode`] takes).
pub(crate) fn values_of<'a>(space: &SearchSpace, config: &'a Config) -> Vec<Option<&'a Value>> {
    space.parameters().iter().map(|p| p.get(config)).collect()
}

/// Warm-start point `index` of `points`, completed with random values for what it leaves out,
/// as a proposal whose reason says so.
pub(crate) fn warm_start_proposal(
    space: &SearchSpace,
    points: &[Config],
    index: usize,
    rng: &mut CoreRng,
) -> Proposal {
    let random = space.sample(0, rng);
    let point = &points[index];
    let mut missing = 0;
    let values: Vec<Value> = space
        .parameters()
        .iter()
        .map(|p| match lookup(point, &p.path) {
            Some(v) => v.clone(),
            None => {
                missing += 1;
                p.get(&random).cloned().unwrap_or(Value::Null)
            }
        })
        .collect();
    let mut reason = format!("warm start: searcher.points_to_evaluate[{index}]");
    if missing > 0 {
        reason.push_str(&format!(
            ", {missing} parameter{} drawn at random",
            if missing == 1 { "" } else { "s" }
        ));
    }
    Proposal {
        config: space.config_from_values(&values),
        reason,
        details: json!({"model": "warm_start", "point": index, "random_parameters": missing}),
    }
}

/// A config drawn at random, `why` naming the cause in the decision's details.
pub(crate) fn random_proposal(
    space: &SearchSpace,
    reason: String,
    rng: &mut CoreRng,
    why: &str,
) -> Proposal {
    Proposal {
        config: space.sample(0, rng),
        reason,
        details: json!({"model": "random", "why": why}),
    }
}

/// A figure for the decisions log, rounded to 6 decimals (null when not finite).
pub(crate) fn round6(x: f64) -> Value {
    if x.is_finite() {
        let rounded = (x * 1e6).round() / 1e6;
        serde_json::Number::from_f64(rounded).map_or(Value::Null, Value::Number)
    } else {
        Value::Null
    }
}

impl Searcher for TpeSearcher {
    fn name(&self) -> &'static str {
        self.name
    }

    fn suggest(&mut self, trial: TrialId, _rng: &mut CoreRng) -> Suggestion {
        let index = trial.0 as usize;
        if index >= self.settings.num_samples {
            return Suggestion::Finished;
        }
        let mut rng = proposal_rng(self.settings.seed, trial);
        let s = &self.settings;
        let proposal = if index < s.points_to_evaluate.len() {
            warm_start_proposal(&self.space, &s.points_to_evaluate, index, &mut rng)
        } else if index < s.n_initial {
            let reason = format!("random initial config {} of {}", index + 1, s.n_initial);
            random_proposal(&self.space, reason, &mut rng, "initial")
        } else if s.random_fraction > 0.0 && rng.random::<f64>() < s.random_fraction {
            let reason = format!(
                "random (a share of {} of the proposals is random)",
                s.random_fraction
            );
            random_proposal(&self.space, reason, &mut rng, "random_fraction")
        } else {
            match self.data(trial) {
                Err(why) => random_proposal(
                    &self.space,
                    format!("random: {why}"),
                    &mut rng,
                    "not_enough_data",
                ),
                Ok(data) => {
                    let (values, ratio, details) = self.model_proposal(&data, &mut rng);
                    let n = data.ranked.len();
                    let good = details["good"].as_u64().unwrap_or(0);
                    let fitted_on = match (data.rung, &s.fidelity) {
                        (Some(rung), Fidelity::Rungs { resource_attr, .. }) => format!(
                            "the {n} results at rung {resource_attr} = {rung} (best {good} good)"
                        ),
                        _ => format!("{n} trials' latest results (best {good} good)"),
                    };
                    let liars = if s.constant_liar && !data.pending.is_empty() {
                        format!(", {} pending trials counted as bad", data.pending.len())
                    } else {
                        String::new()
                    };
                    Proposal {
                        config: self.space.config_from_values(&values),
                        reason: format!(
                            "{}: best of {} candidates from l(x), ln l(x)/g(x) = {:.3}, fitted on {fitted_on}{liars}",
                            self.name, s.n_candidates, ratio
                        ),
                        details,
                    }
                }
            }
        };
        let point = self
            .encoding
            .encode(&values_of(&self.space, &proposal.config));
        self.records.insert(
            trial,
            Record {
                point,
                ..Record::default()
            },
        );
        Suggestion::Explained(proposal)
    }

    fn on_trial_result(&mut self, trial: TrialId, result: &TrialResult) {
        let Some(value) = result.metric(&self.settings.metric) else {
            return;
        };
        let score = self.settings.mode.score(value);
        let Some(record) = self.records.get_mut(&trial) else {
            return;
        };
        match &self.settings.fidelity {
            Fidelity::Latest => record.latest = Some((result.iteration(), score)),
            Fidelity::Rungs {
                resource_attr,
                levels,
                ..
            } => {
                let Some(resource) = result.get(resource_attr).filter(|r| r.is_finite()) else {
                    return;
                };
                match levels {
                    // A result records at the highest rung it has reached, the first time.
                    Some(levels) => {
                        if let Some(&level) = levels.iter().rev().find(|l| **l <= resource + 1e-9) {
                            record.rungs.entry(Level(level)).or_insert(score);
                        }
                    }
                    None => {
                        record.rungs.insert(Level(resource), score);
                    }
                }
            }
        }
    }

    fn on_trial_complete(&mut self, trial: TrialId, _last: Option<&TrialResult>) {
        if let Some(record) = self.records.get_mut(&trial) {
            record.finished = true;
        }
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.settings.num_samples)
    }

    fn on_trial_replayed(&mut self, trial: TrialId, config: &Config) {
        let point = self.encoding.encode(&values_of(&self.space, config));
        self.records.insert(
            trial,
            Record {
                point,
                ..Record::default()
            },
        );
    }

    fn save(&self) -> serde_json::Value {
        crate::scheduler::save_fields(&[("records", serde_json::to_value(&self.records))])
    }

    fn restore(&mut self, mut state: serde_json::Value) -> Result<(), String> {
        self.records = crate::scheduler::load_field(&mut state, "records")?;
        Ok(())
    }
}

//! Gaussian-process search that works with ASHA (MOBSTER-class, as in Syne Tune).
//!
//! One GP models the metric jointly over the configuration and the resource (the rung a result
//! was reported at): inputs are the unit-cube-encoded config (numbers scaled to `[0, 1]`, in log
//! space for log domains, integers on bins of their values, each `choice` one-hot) plus the
//! resource on a log scale in `[0, 1]`. The kernel is Matérn-5/2 with one length scale per input
//! (ARD); its variance, length scales and noise are fitted by maximising the marginal likelihood
//! (plus weak log-normal priors) with Adam from two starting points. A proposal maximises the
//! expected improvement at the *acquisition rung* (the highest rung with at least `min_points`
//! results, else the lowest one that has any, Syne Tune's `resource_acq = "bohb"` rule) over
//! `n_candidates` random configs followed by a local search from the best ones and from the best
//! configs at the highest rung any trial has reached (the incumbents at the highest fidelity seen,
//! see [`INCUMBENT_STARTS`]). With `pruning_aware` (and ASHA) the expected improvement is weighted
//! by the GP's probability that the config passes the lower rungs' cutoffs ([`Gate`]).
//!
//! Asynchronous: a proposal uses every result so far, also from running trials, and never waits.
//! Trials that are running but have no result at the acquisition rung yet are *fantasized*
//! (kriging believer): they enter the GP at that rung with the posterior mean as their value,
//! which shrinks the variance near them so that parallel proposals spread out.
//!
//! Pure and replayable like the other searchers: every proposal draws from its own ChaCha8
//! stream (seed, stream = trial number), and the state is the configs proposed and the results
//! received, in order.

use std::collections::BTreeMap;
use std::f64::consts::{PI, SQRT_2};

use rand::Rng;
use serde_json::{Value, json};

use crate::scheduler::asha::percentile;
use crate::searcher::parzen::{Dim, Encoding, erfc, standard_normal};
use crate::searcher::tpe::{
    Level, proposal_rng, random_proposal, round6, values_of, warm_start_proposal,
};
use crate::searcher::{Proposal, Searcher, Suggestion};
use crate::space::SearchSpace;
use crate::{Config, CoreRng, Mode, TrialId, TrialResult};

/// Everything a [`GpSearcher`] is configured with (the `[searcher]` keys, already checked).
#[derive(Clone, Debug, PartialEq)]
pub struct GpSettings {
    pub metric: String,
    pub mode: Mode,
    pub seed: u64,
    /// How many trials to propose in all.
    pub num_samples: usize,
    /// Trials `0..n_initial` are random (after the warm-start points, which count towards it).
    pub n_initial: usize,
    /// Random candidates scored by expected improvement per proposal (before the local search).
    pub n_candidates: usize,
    /// Results a rung needs to be the acquisition rung.
    pub min_points: usize,
    /// At most this many results enter the GP (the acquisition rung's and higher ones first,
    /// the rest drawn at random); the hyperparameters are fitted on at most [`FIT_POINTS`].
    pub max_observations: usize,
    /// Running trials without a result at the acquisition rung enter the GP at their posterior
    /// mean (kriging believer).
    pub fantasize: bool,
    /// Configs (possibly partial; missing parameters are drawn at random) to try first.
    pub points_to_evaluate: Vec<Config>,
    /// The result key that measures training progress.
    pub resource_attr: String,
    /// The rungs (ASHA's milestones): a result counts at the highest rung it reached, the first
    /// time. `None`: each trial's latest result counts, at its resource.
    pub levels: Option<Vec<f64>>,
    /// ASHA's promotion quantile (`1 - 1/reduction_factor`) when `levels` are its rungs and
    /// `pruning_aware` is on: the expected improvement is weighted by the model's probability
    /// that the config passes the rungs below the acquisition rung (see [`Gate`]).
    pub rung_cutoff_quantile: Option<f64>,
}

/// The hyperparameters are fitted on at most this many results (a random subset, the
/// acquisition rung's first): the fit costs O(n^3) per step.
pub const FIT_POINTS: usize = 80;
/// Adam steps per start when fitting the hyperparameters.
const FIT_STEPS: usize = 30;
/// Local-search steps from each of the best candidates.
const LOCAL_STEPS: usize = 24;
/// Candidates the local search starts from.
const LOCAL_STARTS: usize = 3;
/// Best results the local search also starts from: late in a search the largest expected
/// improvement is usually next to them, where random candidates seldom fall (Optuna's GPSampler
/// starts from its best trials too). They are taken at the highest rung any trial has reached,
/// not at the acquisition rung: early in a search that rung is a low one, whose best configs are
/// often not the best after full training (on lcbench's task 189906, epoch-1 ranks correlate at
/// -0.47 with epoch-52 ranks), and starting there exploits them too soon. The incumbent the user
/// is given is defined at full fidelity too. On lcbench (4 tasks x 3 seeds, docs/benchmarks.md)
/// the two choices are within noise of each other; this one is slightly ahead early.
const INCUMBENT_STARTS: usize = 2;
/// At most this many pending trials are fantasized.
const MAX_PENDING: usize = 32;

/// What the searcher knows of one trial it proposed.
#[derive(Clone, Debug, Default)]
struct Record {
    /// The config in the encoding's coordinates (`None` if it cannot be encoded).
    point: Option<Vec<f64>>,
    finished: bool,
    /// Score (higher is better; `-inf` for NaN or infinite values) at each rung.
    rungs: BTreeMap<Level, f64>,
}

/// `type = "gp"`: see the module documentation.
pub struct GpSearcher {
    settings: GpSettings,
    space: SearchSpace,
    encoding: Encoding,
    /// Input columns: one per numeric parameter, one per choice value, plus the resource.
    columns: usize,
    records: BTreeMap<TrialId, Record>,
}

/// The results a GP is fitted on, in model coordinates.
struct Data {
    x: Vec<Vec<f64>>,
    /// Standardised scores (higher is better).
    y: Vec<f64>,
    /// The acquisition rung and its input coordinate.
    rung: f64,
    rung_coordinate: f64,
    /// The best standardised score at the acquisition rung.
    best: f64,
    /// How many results lie at the acquisition rung, and how many results there are in all
    /// (before `max_observations` was applied).
    at_rung: usize,
    total: usize,
    /// Running trials without a result at the rung, as model inputs at the rung.
    pending: Vec<Vec<f64>>,
    /// Results whose value was NaN or infinite (entered as the worst value seen).
    non_finite: usize,
    /// The rungs below the acquisition rung that a new trial must pass under ASHA.
    gates: Vec<Gate>,
    /// The highest rung any trial has reached, and the configs (encoded) of the best results
    /// there, best first: where the local search also starts.
    incumbent_rung: Option<f64>,
    incumbents: Vec<Vec<f64>>,
}

/// A rung below the acquisition rung, where ASHA stops a trial whose score is below the
/// promotion quantile of the scores recorded there.
///
/// Why: with a minimum resource of 1, most proposals are judged at rungs whose ranking can be
/// far from the acquisition rung's (on some lcbench tasks epoch-1 scores rank configs almost
/// opposite to epoch 52). Expected improvement at the acquisition rung alone then keeps
/// proposing configs that ASHA stops at the first rung, and the search stalls. The proposal
/// maximises `EI * P(pass)`, where `P(pass)` is the smallest, over the gates, of the joint
/// GP's probability that the config scores at least the gate's cutoff: the smallest, because
/// the events are strongly positively correlated (a product would count the same risk
/// several times).
#[derive(Clone, Debug)]
struct Gate {
    level: f64,
    /// The rung as a model input (the resource coordinate).
    coordinate: f64,
    /// The cutoff as a score (higher is better), standardised like the GP's targets.
    cutoff: f64,
    /// The same cutoff before standardisation.
    raw_cutoff: f64,
    /// Scores recorded at the rung.
    recorded: usize,
}

/// How good a candidate is: its acquisition value and the parts it is made of.
#[derive(Clone, Copy, Debug)]
struct Score {
    /// `ei * survival`.
    acquisition: f64,
    ei: f64,
    /// Probability of passing the gates (1 without any).
    survival: f64,
    mean: f64,
    sd: f64,
}

impl GpSearcher {
    /// `Err((parameter, kind))` when the space holds a domain a model cannot handle (`grid`).
    /// The settings are expected to be checked already ([`crate::searcher::SearcherSpec`]).
    pub fn new(
        space: SearchSpace,
        settings: GpSettings,
    ) -> Result<GpSearcher, (String, &'static str)> {
        let encoding = Encoding::new(&space)?;
        let columns = encoding
            .dims
            .iter()
            .map(|d| match d {
                Dim::Numeric { .. } => 1,
                Dim::Categorical { values } => values.len(),
            })
            .sum::<usize>()
            + 1;
        Ok(GpSearcher {
            settings,
            space,
            encoding,
            columns,
            records: BTreeMap::new(),
        })
    }

    /// The model inputs of an encoded config at resource coordinate `r`.
    fn inputs(&self, point: &[f64], r: f64) -> Vec<f64> {
        let mut x = Vec::with_capacity(self.columns);
        for (dim, &u) in self.encoding.dims.iter().zip(point) {
            match dim {
                Dim::Numeric { low, high, .. } => {
                    let width = high - low;
                    x.push(if width > 0.0 {
                        ((u - low) / width).clamp(0.0, 1.0)
                    } else {
                        0.5
                    });
                }
                Dim::Categorical { values } => {
                    for i in 0..values.len() {
                        x.push(if u as usize == i { 1.0 } else { 0.0 });
                    }
                }
            }
        }
        x.push(r);
        x
    }

    /// The results to fit on now, or why there are none.
    fn data(&self, asking: TrialId, rng: &mut CoreRng) -> Result<Data, String> {
        let s = &self.settings;
        // Every (trial, rung, score) with an encodable config.
        let mut results: Vec<(&[f64], f64, f64)> = Vec::new();
        for r in self.records.values() {
            let Some(point) = &r.point else { continue };
            for (level, score) in &r.rungs {
                results.push((point, level.0, *score));
            }
        }
        if results.len() < 2 {
            return Err(format!(
                "{} result{} of {} so far, the model needs 2",
                results.len(),
                if results.len() == 1 { "" } else { "s" },
                s.metric
            ));
        }
        let mut counts: BTreeMap<Level, usize> = BTreeMap::new();
        for (_, level, _) in &results {
            *counts.entry(Level(*level)).or_default() += 1;
        }
        let rung = counts
            .iter()
            .rev()
            .find(|(_, n)| **n >= s.min_points)
            .or_else(|| counts.iter().next())
            .map_or(1.0, |(l, _)| l.0);
        // The resource on a log scale in [0, 1].
        let (r_min, r_max) = match &s.levels {
            Some(levels) => (
                levels.first().copied().unwrap_or(1.0),
                levels.last().copied().unwrap_or(1.0),
            ),
            None => (
                counts.keys().next().map_or(1.0, |l| l.0),
                counts.keys().next_back().map_or(1.0, |l| l.0),
            ),
        };
        let coordinate = |r: f64| {
            if r_max > r_min && r_min > 0.0 && r > 0.0 {
                ((r / r_min).ln() / (r_max / r_min).ln()).clamp(0.0, 1.0)
            } else if r_max > r_min {
                ((r - r_min) / (r_max - r_min)).clamp(0.0, 1.0)
            } else {
                1.0
            }
        };
        let total = results.len();
        // The acquisition rung's results and higher ones first, each group in random order.
        let mut order: Vec<usize> = (0..total).collect();
        for i in (1..total).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        order.sort_by_key(|&i| results[i].1 < rung);
        order.truncate(s.max_observations.max(2));
        let worst = results
            .iter()
            .map(|r| r.2)
            .filter(|v| v.is_finite())
            .min_by(f64::total_cmp);
        let non_finite = order.iter().filter(|&&i| !results[i].2.is_finite()).count();
        let Some(worst) = worst else {
            return Err(format!(
                "every result of {} so far is NaN or infinite",
                s.metric
            ));
        };
        let raw: Vec<f64> = order
            .iter()
            .map(|&i| {
                let v = results[i].2;
                if v.is_finite() { v } else { worst }
            })
            .collect();
        let mean = raw.iter().sum::<f64>() / raw.len() as f64;
        let var = raw.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / raw.len() as f64;
        let sd = if var.sqrt() > 1e-12 * mean.abs().max(1.0) {
            var.sqrt()
        } else {
            1.0
        };
        let y: Vec<f64> = raw.iter().map(|v| (v - mean) / sd).collect();
        let x: Vec<Vec<f64>> = order
            .iter()
            .map(|&i| self.inputs(results[i].0, coordinate(results[i].1)))
            .collect();
        let at_rung_mask: Vec<bool> = order
            .iter()
            .map(|&i| (results[i].1 - rung).abs() <= 1e-9 * rung.abs().max(1.0))
            .collect();
        let best = y
            .iter()
            .zip(&at_rung_mask)
            .filter(|(_, at)| **at)
            .map(|(v, _)| *v)
            .fold(f64::NEG_INFINITY, f64::max);
        let best = if best.is_finite() {
            best
        } else {
            y.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        };
        let rung_coordinate = coordinate(rung);
        let gates = match (&s.levels, s.rung_cutoff_quantile) {
            (Some(levels), Some(quantile)) => levels
                .iter()
                .filter(|&&level| level < rung - 1e-9 * rung.abs().max(1.0))
                .filter_map(|&level| {
                    let scores: Vec<f64> = self
                        .records
                        .values()
                        .filter_map(|r| r.rungs.get(&Level(level)).copied())
                        .collect();
                    let raw_cutoff = percentile(scores.iter().copied(), quantile * 100.0)?;
                    raw_cutoff.is_finite().then(|| Gate {
                        level,
                        coordinate: coordinate(level),
                        cutoff: (raw_cutoff - mean) / sd,
                        raw_cutoff,
                        recorded: scores.len(),
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let incumbent_rung = self
            .records
            .values()
            .filter_map(|r| r.rungs.keys().next_back().copied())
            .max();
        let mut at_top: Vec<(&[f64], f64)> = incumbent_rung
            .map(|top| {
                self.records
                    .values()
                    .filter_map(|r| Some((r.point.as_deref()?, *r.rungs.get(&top)?)))
                    .filter(|(_, score)| score.is_finite())
                    .collect()
            })
            .unwrap_or_default();
        at_top.sort_by(|a, b| b.1.total_cmp(&a.1));
        let incumbents = at_top
            .iter()
            .take(INCUMBENT_STARTS)
            .map(|(point, _)| point.to_vec())
            .collect();
        let incumbent_rung = incumbent_rung.map(|l| l.0);
        let pending = if s.fantasize {
            self.records
                .iter()
                .filter(|&(id, r)| {
                    *id != asking
                        && !r.finished
                        && !r.rungs.keys().any(|l| l.0 >= rung - 1e-9 * rung.abs())
                })
                .filter_map(|(_, r)| r.point.as_ref())
                .take(MAX_PENDING)
                .map(|p| self.inputs(p, rung_coordinate))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Data {
            x,
            y,
            rung,
            rung_coordinate,
            best,
            at_rung: counts.get(&Level(rung)).copied().unwrap_or(0),
            total,
            pending,
            non_finite,
            gates,
            incumbent_rung,
            incumbents,
        })
    }

    /// The model's proposal: `(values, ei, details)`, or why the GP could not be fitted.
    fn model_proposal(
        &self,
        data: &Data,
        rng: &mut CoreRng,
    ) -> Result<(Vec<Value>, Score, Value), String> {
        let p = self.columns;
        let fit_n = data.x.len().min(FIT_POINTS);
        let theta = fit_hyperparameters(&data.x[..fit_n], &data.y[..fit_n], p, rng);
        let mut gp = Gp::fit(data.x.clone(), &data.y, &theta)
            .ok_or("the kernel matrix is not positive definite even with jitter")?;
        let fantasized = data.pending.len();
        if fantasized > 0 {
            let mut x = data.x.clone();
            let mut y = data.y.clone();
            for pending in &data.pending {
                y.push(gp.predict(pending).0);
                x.push(pending.clone());
            }
            if let Some(with) = Gp::fit(x, &y, &theta) {
                gp = with;
            }
        }
        let score = |point: &[f64]| -> Score {
            let (mean, var) = gp.predict(&self.inputs(point, data.rung_coordinate));
            let sd = var.sqrt();
            let ei = expected_improvement(mean, sd, data.best);
            let survival = data
                .gates
                .iter()
                .map(|gate| {
                    let (m, v) = gp.predict(&self.inputs(point, gate.coordinate));
                    normal_cdf((m - gate.cutoff) / v.sqrt())
                })
                .fold(1.0, f64::min);
            Score {
                acquisition: ei * survival,
                ei,
                survival,
                mean,
                sd,
            }
        };
        let better = |a: &Score, b: &Score| {
            // The acquisition first; where it underflows to 0 for both, the optimistic bound
            // (weighted by the chance to pass the gates) decides.
            let optimistic = |s: &Score| (s.mean + 2.0 * s.sd) * s.survival.max(1e-300);
            a.acquisition > b.acquisition
                || (a.acquisition == b.acquisition && optimistic(a) > optimistic(b))
        };
        // Random candidates, scored.
        let mut scored: Vec<(Vec<f64>, Score)> = Vec::new();
        for _ in 0..self.settings.n_candidates.max(1) {
            let config = self.space.sample(0, rng);
            let Some(point) = self.encoding.encode(&values_of(&self.space, &config)) else {
                continue;
            };
            let s = score(&point);
            scored.push((point, s));
        }
        if scored.is_empty() {
            return Err("no candidate config could be encoded".into());
        }
        // Local search from the best few: perturb, snap to the domains, keep improvements.
        let mut starts: Vec<usize> = (0..scored.len()).collect();
        starts.sort_by(|&a, &b| {
            if better(&scored[a].1, &scored[b].1) {
                std::cmp::Ordering::Less
            } else if better(&scored[b].1, &scored[a].1) {
                std::cmp::Ordering::Greater
            } else {
                a.cmp(&b)
            }
        });
        starts.truncate(LOCAL_STARTS);
        for incumbent in &data.incumbents {
            let s = score(incumbent);
            starts.push(scored.len());
            scored.push((incumbent.clone(), s));
        }
        let mut best: Option<(Vec<f64>, Score)> = None;
        for start in starts {
            let (mut point, mut s) = scored[start].clone();
            let mut scale = 0.2;
            for _ in 0..LOCAL_STEPS {
                let Some(next) = self.perturb(&point, scale, rng) else {
                    continue;
                };
                let t = score(&next);
                if better(&t, &s) {
                    point = next;
                    s = t;
                } else {
                    scale = (scale * 0.8).max(0.01);
                }
            }
            if best.as_ref().is_none_or(|(_, b)| better(&s, b)) {
                best = Some((point, s));
            }
        }
        let Some((point, chosen)) = best else {
            return Err("no candidate config could be scored".into());
        };
        let values = self.encoding.decode(&point);
        let (lengthscales, variance, noise) = theta.natural(p);
        let mut details = json!({
            "model": "gp",
            "kernel": "matern52_ard",
            "acquisition": if data.gates.is_empty() {
                "expected_improvement"
            } else {
                "expected_improvement_times_pass_probability"
            },
            "ei": round6(chosen.ei),
            "mean": round6(chosen.mean),
            "sd": round6(chosen.sd),
            "incumbent": round6(data.best),
            "observations": data.total,
            "used": data.x.len(),
            "fitted_on": fit_n,
            "rung": data.rung,
            "rung_results": data.at_rung,
            "resource_attr": self.settings.resource_attr,
            "candidates": self.settings.n_candidates,
            "lengthscales": lengthscales.iter().map(|l| round6(*l)).collect::<Vec<_>>(),
            "signal_variance": round6(variance),
            "noise_variance": round6(noise),
        });
        if let Some(level) = data.incumbent_rung {
            // Where the local search's incumbent starts came from.
            details["incumbent_starts"] = json!({
                "rung": level,
                "configs": data.incumbents.len(),
            });
        }
        if fantasized > 0 {
            details["fantasized"] = json!(fantasized);
        }
        if !data.gates.is_empty() {
            details["pass_probability"] = json!(round6(chosen.survival));
            details["gates"] = data
                .gates
                .iter()
                .map(|g| {
                    json!({
                        "rung": g.level,
                        // In the metric's units (scores are negated in min mode).
                        "cutoff": round6(self.settings.mode.score(g.raw_cutoff)),
                        "recorded": g.recorded,
                    })
                })
                .collect();
        }
        if data.non_finite > 0 {
            details["non_finite_results"] = json!(data.non_finite);
        }
        Ok((values, chosen, details))
    }

    /// A neighbour of `point`: numbers moved by a normal step of `scale` times their range,
    /// each choice changed with probability 1/(number of parameters); snapped to the domains.
    fn perturb(&self, point: &[f64], scale: f64, rng: &mut CoreRng) -> Option<Vec<f64>> {
        let d = self.encoding.dims.len().max(1) as f64;
        let moved: Vec<f64> = self
            .encoding
            .dims
            .iter()
            .zip(point)
            .map(|(dim, &u)| match dim {
                Dim::Numeric { low, high, .. } => {
                    (u + scale * (high - low) * standard_normal(rng)).clamp(*low, *high)
                }
                Dim::Categorical { values } => {
                    if rng.random::<f64>() < 1.0 / d {
                        rng.random_range(0..values.len().max(1)) as f64
                    } else {
                        u
                    }
                }
            })
            .collect();
        let values = self.encoding.decode(&moved);
        let refs: Vec<Option<&Value>> = values.iter().map(Some).collect();
        self.encoding.encode(&refs)
    }
}

/// The standard normal distribution function (1/2 for NaN: no information).
fn normal_cdf(z: f64) -> f64 {
    if z.is_nan() {
        return 0.5;
    }
    0.5 * erfc(-z / SQRT_2)
}

/// Expected improvement over `best` of a normal posterior (maximisation).
fn expected_improvement(mean: f64, sd: f64, best: f64) -> f64 {
    if sd.is_nan() || sd <= 1e-12 {
        return (mean - best).max(0.0);
    }
    let z = (mean - best) / sd;
    let cdf = normal_cdf(z);
    let pdf = (-0.5 * z * z).exp() / (2.0 * PI).sqrt();
    (sd * (z * cdf + pdf)).max(0.0)
}

impl Searcher for GpSearcher {
    fn name(&self) -> &'static str {
        "gp"
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
        } else {
            match self
                .data(trial, &mut rng)
                .and_then(|data| Ok((self.model_proposal(&data, &mut rng)?, data)))
            {
                Err(why) => {
                    random_proposal(&self.space, format!("random: {why}"), &mut rng, "no_model")
                }
                Ok(((values, chosen, details), data)) => {
                    let fantasized = if data.pending.is_empty() {
                        String::new()
                    } else {
                        format!(", {} running trials fantasized", data.pending.len())
                    };
                    let ei = chosen.ei;
                    let gates = if data.gates.is_empty() {
                        String::new()
                    } else {
                        let rungs: Vec<String> =
                            data.gates.iter().map(|g| format!("{}", g.level)).collect();
                        format!(
                            " (times a {:.3} chance to pass the cutoffs of rungs {})",
                            chosen.survival,
                            rungs.join(", ")
                        )
                    };
                    Proposal {
                        config: self.space.config_from_values(&values),
                        reason: format!(
                            "gp: largest expected improvement {ei:.4} (standardised) at rung {} = {}{gates} of {} random candidates and a local search; Matérn-5/2 ARD GP over (config, {}) fitted on {} of {} results{fantasized}",
                            s.resource_attr,
                            data.rung,
                            s.n_candidates,
                            s.resource_attr,
                            data.x.len(),
                            data.total,
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
        let Some(resource) = result
            .get(&self.settings.resource_attr)
            .filter(|r| r.is_finite())
        else {
            return;
        };
        let Some(record) = self.records.get_mut(&trial) else {
            return;
        };
        match &self.settings.levels {
            Some(levels) => {
                if let Some(&level) = levels.iter().rev().find(|l| **l <= resource + 1e-9) {
                    record.rungs.entry(Level(level)).or_insert(score);
                }
            }
            None => {
                record.rungs.clear();
                record.rungs.insert(Level(resource), score);
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
}

/// The GP's hyperparameters in log space: `p` log length scales, log signal variance, log noise
/// variance.
#[derive(Clone, Debug)]
struct Theta(Vec<f64>);

/// Bounds of the log hyperparameters: length scales, signal variance, noise variance (the
/// outputs are standardised and the inputs in the unit cube).
const LN_LENGTHSCALE: (f64, f64) = (-4.0, 4.0);
const LN_VARIANCE: (f64, f64) = (-4.0, 4.0);
const LN_NOISE: (f64, f64) = (-13.8, 0.7);

impl Theta {
    fn natural(&self, p: usize) -> (Vec<f64>, f64, f64) {
        (
            self.0[..p].iter().map(|v| v.exp()).collect(),
            self.0[p].exp(),
            self.0[p + 1].exp(),
        )
    }

    fn clamp(&mut self, p: usize) {
        for (i, v) in self.0.iter_mut().enumerate() {
            let (lo, hi) = if i < p {
                LN_LENGTHSCALE
            } else if i == p {
                LN_VARIANCE
            } else {
                LN_NOISE
            };
            *v = v.clamp(lo, hi);
        }
    }

    /// Weak log-normal priors (log density up to a constant, and its gradient): length scales
    /// around 1, signal variance around 1, noise around 1e-3 of it.
    fn prior(&self, p: usize) -> (f64, Vec<f64>) {
        let mut value = 0.0;
        let mut grad = vec![0.0; self.0.len()];
        for (i, v) in self.0.iter().enumerate() {
            // Length scales and the signal variance around 1, the noise around 1e-3.
            let (mu, sigma) = if i <= p { (0.0, 1.5) } else { (-7.0, 3.0) };
            value -= 0.5 * ((v - mu) / sigma).powi(2);
            grad[i] = -(v - mu) / (sigma * sigma);
        }
        (value, grad)
    }
}

/// Matérn-5/2 with ARD length scales: `variance (1 + sqrt5 r + 5/3 r^2) exp(-sqrt5 r)`.
fn matern52(a: &[f64], b: &[f64], inverse_lengthscales: &[f64], variance: f64) -> f64 {
    let r2: f64 = a
        .iter()
        .zip(b)
        .zip(inverse_lengthscales)
        .map(|((x, y), il)| ((x - y) * il).powi(2))
        .sum();
    let r = r2.sqrt();
    let s5r = 5f64.sqrt() * r;
    variance * (1.0 + s5r + 5.0 / 3.0 * r2) * (-s5r).exp()
}

/// A fitted GP posterior.
struct Gp {
    x: Vec<Vec<f64>>,
    inverse_lengthscales: Vec<f64>,
    variance: f64,
    /// Lower Cholesky factor of K + noise I, row-major n x n.
    chol: Vec<f64>,
    alpha: Vec<f64>,
}

impl Gp {
    fn fit(x: Vec<Vec<f64>>, y: &[f64], theta: &Theta) -> Option<Gp> {
        let p = x.first().map_or(0, Vec::len);
        let (lengthscales, variance, noise) = theta.natural(p);
        let inverse_lengthscales: Vec<f64> = lengthscales.iter().map(|l| 1.0 / l).collect();
        let n = x.len();
        let mut k = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v = matern52(&x[i], &x[j], &inverse_lengthscales, variance);
                k[i * n + j] = v;
                k[j * n + i] = v;
            }
        }
        let chol = cholesky_with_jitter(&k, n, noise, variance)?;
        let alpha = cholesky_solve(&chol, n, y);
        Some(Gp {
            x,
            inverse_lengthscales,
            variance,
            chol,
            alpha,
        })
    }

    /// Posterior mean and variance of the latent function at `x`.
    fn predict(&self, x: &[f64]) -> (f64, f64) {
        let n = self.x.len();
        let k: Vec<f64> = self
            .x
            .iter()
            .map(|xi| matern52(xi, x, &self.inverse_lengthscales, self.variance))
            .collect();
        let mean = k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        let v = forward(&self.chol, n, &k);
        let var = self.variance - v.iter().map(|a| a * a).sum::<f64>();
        (mean, var.max(1e-12))
    }
}

/// Cholesky of `k + noise I`, adding jitter (1e-8, 1e-6, 1e-4 of the variance) if needed.
fn cholesky_with_jitter(k: &[f64], n: usize, noise: f64, variance: f64) -> Option<Vec<f64>> {
    for jitter in [0.0, 1e-8, 1e-6, 1e-4] {
        let mut a = k.to_vec();
        for i in 0..n {
            a[i * n + i] += noise + jitter * variance;
        }
        if cholesky(&mut a, n) {
            return Some(a);
        }
    }
    None
}

/// In-place lower Cholesky factor of a symmetric positive-definite row-major matrix; `false`
/// if it is not (numerically) positive definite.
#[allow(clippy::needless_range_loop)]
fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if !(d > 0.0 && d.is_finite()) {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
        for k in j + 1..n {
            a[j * n + k] = 0.0;
        }
    }
    true
}

/// Solve `L z = b` for lower-triangular `L`.
fn forward(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut z = vec![0.0; n];
    for i in 0..n {
        let row = &l[i * n..i * n + i];
        let s = b[i] - row.iter().zip(&z[..i]).map(|(a, c)| a * c).sum::<f64>();
        z[i] = s / l[i * n + i];
    }
    z
}

/// Solve `L L^T x = b`.
fn cholesky_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let z = forward(l, n, b);
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = z[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

/// Log marginal likelihood plus log prior, and its gradient in the log hyperparameters; `None`
/// where the kernel matrix cannot be factorised.
fn objective(x: &[Vec<f64>], y: &[f64], theta: &Theta, p: usize) -> Option<(f64, Vec<f64>)> {
    let n = x.len();
    let (lengthscales, variance, noise) = theta.natural(p);
    let inverse_lengthscales: Vec<f64> = lengthscales.iter().map(|l| 1.0 / l).collect();
    let mut k = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = matern52(&x[i], &x[j], &inverse_lengthscales, variance);
            k[i * n + j] = v;
            k[j * n + i] = v;
        }
    }
    let l = cholesky_with_jitter(&k, n, noise, variance)?;
    let alpha = cholesky_solve(&l, n, y);
    let log_det: f64 = (0..n).map(|i| l[i * n + i].ln()).sum();
    let fit: f64 = y.iter().zip(&alpha).map(|(a, b)| a * b).sum();
    let lml = -0.5 * fit - log_det - 0.5 * n as f64 * (2.0 * PI).ln();
    // K^-1 from the inverse of L: (L^-1)^T L^-1.
    let mut l_inv = vec![0.0; n * n];
    for c in 0..n {
        for i in c..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for m in c..i {
                s -= l[i * n + m] * l_inv[m * n + c];
            }
            l_inv[i * n + c] = s / l[i * n + i];
        }
    }
    // W = alpha alpha^T - K^-1; d lml / d theta_j = 1/2 sum W .* dK/dtheta_j.
    let mut grad = vec![0.0; p + 2];
    let s5 = 5f64.sqrt();
    for a in 0..n {
        for b in 0..=a {
            let k_inv: f64 = (a..n).map(|m| l_inv[m * n + a] * l_inv[m * n + b]).sum();
            let w = alpha[a] * alpha[b] - k_inv;
            let factor = if a == b { 0.5 } else { 1.0 };
            if a == b {
                grad[p + 1] += factor * w * noise;
            }
            let kf = k[a * n + b];
            grad[p] += factor * w * kf;
            if a != b {
                let mut r2 = 0.0;
                let scaled: Vec<f64> = x[a]
                    .iter()
                    .zip(&x[b])
                    .zip(&inverse_lengthscales)
                    .map(|((u, v), il)| {
                        let t = ((u - v) * il).powi(2);
                        r2 += t;
                        t
                    })
                    .collect();
                let r = r2.sqrt();
                let common = variance * 5.0 / 3.0 * (1.0 + s5 * r) * (-s5 * r).exp();
                for (i, t) in scaled.iter().enumerate() {
                    grad[i] += factor * w * common * t;
                }
            }
        }
    }
    let (prior, prior_grad) = theta.prior(p);
    for (g, pg) in grad.iter_mut().zip(prior_grad) {
        *g += pg;
    }
    Some((lml + prior, grad))
}

/// Maximise the marginal likelihood with Adam from a default start and a random one; the best
/// value seen wins.
fn fit_hyperparameters(x: &[Vec<f64>], y: &[f64], p: usize, rng: &mut CoreRng) -> Theta {
    let mut default = vec![0.0; p + 2];
    default[p + 1] = -7.0;
    let mut random = vec![0.0; p + 2];
    for v in random.iter_mut().take(p) {
        *v = rng.random_range(-2.0..1.0);
    }
    random[p] = rng.random_range(-1.0..1.0);
    random[p + 1] = rng.random_range(-9.0..-3.0);
    let mut best: Option<(f64, Theta)> = None;
    for start in [default, random] {
        let mut theta = Theta(start);
        theta.clamp(p);
        let mut m = vec![0.0; p + 2];
        let mut v = vec![0.0; p + 2];
        let (rate, beta1, beta2) = (0.1, 0.9, 0.999);
        for step in 1..=FIT_STEPS {
            let Some((value, grad)) = objective(x, y, &theta, p) else {
                break;
            };
            if value.is_finite() && best.as_ref().is_none_or(|(b, _)| value > *b) {
                best = Some((value, theta.clone()));
            }
            for i in 0..p + 2 {
                let g = grad[i];
                if !g.is_finite() {
                    continue;
                }
                m[i] = beta1 * m[i] + (1.0 - beta1) * g;
                v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
                let m_hat = m[i] / (1.0 - beta1.powi(step as i32));
                let v_hat = v[i] / (1.0 - beta2.powi(step as i32));
                theta.0[i] += rate * m_hat / (v_hat.sqrt() + 1e-8);
            }
            theta.clamp(p);
        }
        if let Some((value, _)) = objective(x, y, &theta, p)
            && value.is_finite()
            && best.as_ref().is_none_or(|(b, _)| value > *b)
        {
            best = Some((value, theta.clone()));
        }
    }
    best.map_or_else(
        || {
            let mut t = vec![0.0; p + 2];
            t[p + 1] = LN_NOISE.1;
            Theta(t)
        },
        |(_, t)| t,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The analytic gradient matches finite differences.
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn marginal_likelihood_gradient_matches_finite_differences() {
        let mut rng = CoreRng::seed_from_u64(3);
        let p = 3;
        let x: Vec<Vec<f64>> = (0..12)
            .map(|_| (0..p).map(|_| rng.random::<f64>()).collect())
            .collect();
        let y: Vec<f64> = x
            .iter()
            .map(|v| (3.0 * v[0]).sin() + v[1] * v[1] - 0.5 * v[2])
            .collect();
        let theta = Theta(vec![-0.3, 0.2, 0.5, 0.1, -3.0]);
        let (value, grad) = objective(&x, &y, &theta, p).unwrap();
        for i in 0..p + 2 {
            let h = 1e-5;
            let mut plus = theta.clone();
            plus.0[i] += h;
            let mut minus = theta.clone();
            minus.0[i] -= h;
            let numeric = (objective(&x, &y, &plus, p).unwrap().0
                - objective(&x, &y, &minus, p).unwrap().0)
                / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() < 1e-4 * (1.0 + numeric.abs()),
                "parameter {i}: analytic {} numeric {numeric} (value {value})",
                grad[i]
            );
        }
    }

    #[test]
    fn cholesky_solves_and_the_posterior_interpolates() {
        let a = vec![4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
        let mut l = a.clone();
        assert!(cholesky(&mut l, 3));
        let b = [1.0, 2.0, 3.0];
        let x = cholesky_solve(&l, 3, &b);
        for i in 0..3 {
            let back: f64 = (0..3).map(|j| a[i * 3 + j] * x[j]).sum();
            assert!((back - b[i]).abs() < 1e-12);
        }
        let mut not_pd = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky(&mut not_pd, 2));
        let xs = vec![vec![0.1], vec![0.5], vec![0.9]];
        let ys = [1.0, -1.0, 0.5];
        let gp = Gp::fit(xs, &ys, &Theta(vec![-1.0, 0.0, -12.0])).unwrap();
        let (mean, var) = gp.predict(&[0.5]);
        assert!((mean + 1.0).abs() < 1e-3 && var < 1e-3, "{mean} {var}");
        let (_, far) = gp.predict(&[3.0]);
        assert!(far > 0.9, "{far}");
    }

    #[test]
    fn expected_improvement_is_sane() {
        assert_eq!(expected_improvement(1.0, 0.0, 0.5), 0.5);
        assert_eq!(expected_improvement(0.0, 0.0, 0.5), 0.0);
        let at = expected_improvement(0.0, 1.0, 0.0);
        assert!((at - 1.0 / (2.0 * PI).sqrt()).abs() < 1e-6, "{at}");
        assert!(expected_improvement(0.0, 2.0, 0.0) > at);
        assert!(expected_improvement(-40.0, 1.0, 0.0) >= 0.0);
    }
}

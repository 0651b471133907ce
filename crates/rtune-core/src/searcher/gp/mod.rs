//! Gaussian-process search that works with ASHA (MOBSTER-class, as in Syne Tune), judging each
//! config by what ASHA will let it become.
//!
//! One GP models the metric jointly over the configuration and the resource (the rung a result
//! was reported at): inputs are the unit-cube-encoded config (numbers scaled to `[0, 1]`, in log
//! space for log domains, integers on bins of their values, each `choice` one-hot) plus the
//! resource on a log scale in `[0, 1]`. The kernel is Matérn-5/2 with one length scale per input
//! (ARD); its variance, length scales and noise are fitted by maximising the marginal likelihood
//! (plus weak log-normal priors, [`model`]).
//!
//! **The acquisition.** A proposal maximises the expected improvement at the *acquisition rung*
//! (the highest rung with at least `min_points` results, else the lowest one that has any, Syne
//! Tune's `resource_acq = "bohb"` rule), *counted only where the config passes ASHA's cutoffs at
//! the rungs below it* ([`Gate`]): `E[(f_top - best)^+ 1{f_r >= cutoff_r for every lower rung
//! r}]` under the GP's joint posterior over the config's values at those rungs. Why: under ASHA
//! a new config is compared at the first rung long before anyone learns its full-training value.
//! Expected improvement at the top rung alone keeps proposing configs whose top-rung value is
//! uncertain and whose first-rung value the model already knows to be poor; ASHA stops them
//! there, so that uncertainty is never resolved and the same kind of proposal comes again. On
//! lcbench that was the plateau: after a few hundred trials nearly every proposal was stopped
//! at epoch 1 (docs/benchmarks.md). The expectation is computed with the gate values drawn from
//! their joint posterior ([`GATE_DRAWS`] draws shared by every candidate) and, given each draw,
//! the top-rung expected improvement in closed form (the conditional normal), so a config that
//! passes the gates also gets the higher top-rung value that passing implies.
//!
//! The maximisation runs over `n_candidates` random configs followed by a local search from the
//! best ones and from the best configs at the highest rung any trial has reached (the incumbents
//! at the highest fidelity seen, see [`INCUMBENT_STARTS`]).
//!
//! **The targets** are the results' normal scores by rank ([`NormalScores`], a Gaussian copula):
//! diverging trials would otherwise set the scale on which good configs differ. **A share of the
//! proposals is random** (`random_fraction`, 1/3 by default as in BOHB): the model can be
//! confidently wrong about regions it has not seen.
//!
//! **Cost.** The hyperparameters are refitted when the results have grown by [`REFIT_GROWTH`]
//! since the last fit (Syne Tune's `opt_skip_*` idea: refitting is the expensive part, and it
//! changes little from one result to the next) and reused in between; at most
//! `max_observations` results enter the posterior, chosen per rung; the gates are only
//! evaluated for candidates whose plain expected improvement could still win.
//!
//! Asynchronous: a proposal uses every result so far, also from running trials, and never waits.
//! Trials that are running but have no result at the acquisition rung yet are *fantasized*
//! (kriging believer): they enter the GP at that rung with the posterior mean as their value,
//! which shrinks the variance near them so that parallel proposals spread out.
//!
//! Pure and replayable like the other searchers: every proposal draws from its own ChaCha8
//! stream (seed, stream = trial number), and the state ([`GpState`]) is a function of the calls
//! received, in order.

mod model;

use std::collections::BTreeMap;
use std::f64::consts::{PI, SQRT_2};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::scheduler::asha::percentile;
use crate::searcher::parzen::{Dim, Encoding, erfc, standard_normal};
use crate::searcher::tpe::{proposal_rng, random_proposal, round6, values_of, warm_start_proposal};
use crate::searcher::{Proposal, Searcher, Suggestion};
use crate::space::SearchSpace;
use crate::{Config, CoreRng, Mode, TrialId, TrialResult};

use model::{Posterior, Theta, fit_hyperparameters, random_start};

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
    /// Random candidates scored per proposal (before the local search).
    pub n_candidates: usize,
    /// The share of the model-phase proposals drawn at random instead.
    pub random_fraction: f64,
    /// Results a rung needs to be the acquisition rung.
    pub min_points: usize,
    /// At most this many results enter the GP's posterior (the same share of each rung, the
    /// best first); the hyperparameters are fitted on at most [`FIT_POINTS`] of them.
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
    /// `pruning_aware` is on: the expected improvement only counts where the config passes the
    /// rungs below the acquisition rung (see [`Gate`]).
    pub rung_cutoff_quantile: Option<f64>,
}

/// The hyperparameters are fitted on at most this many results (a random subset of those in
/// the posterior): the fit costs O(n^3) per step.
pub const FIT_POINTS: usize = 80;
/// The hyperparameters are refitted once the results have grown by this fraction since the last
/// fit (and at every result while there are fewer than 1 / REFIT_GROWTH).
pub const REFIT_GROWTH: f64 = 0.1;
/// A fit also starts from a random point every this many fits.
const RESTART_EVERY: usize = 3;
/// Local-search steps from each start, and the neighbours scored at each step.
const LOCAL_STEPS: usize = 16;
const NEIGHBOURS: usize = 1;
/// Candidates the local search starts from.
const LOCAL_STARTS: usize = 3;
/// Best results the local search also starts from: late in a search the largest expected
/// improvement is usually next to them, where random candidates seldom fall (Optuna's GPSampler
/// starts from its best trials too). They are taken at the highest rung any trial has reached,
/// not at the acquisition rung: early in a search that rung is a low one, whose best configs are
/// often not the best after full training (on lcbench's task 189906, epoch-1 ranks correlate at
/// -0.47 with epoch-52 ranks). The incumbent the user is given is defined at full fidelity too.
const INCUMBENT_STARTS: usize = 2;
/// At most this many pending trials are fantasized.
const MAX_PENDING: usize = 32;
/// Draws of the gate values per proposal (the same draws for every candidate, so candidates are
/// compared without sampling noise between them).
const GATE_DRAWS: usize = 128;

/// Scores mapped to normal scores by their rank among all results (a Gaussian copula, as in
/// Salinas et al. 2020, "A quantile-based approach for hyperparameter transfer learning"; HEBO
/// warps its outputs for the same reason). Why: the metric's distribution is skewed and
/// heavy-tailed (on lcbench a few diverging configs reach a cross entropy 20 times the best),
/// and standardised as it is, those outliers set the scale: the differences between good
/// configs shrink to a fraction of a standard deviation, the fitted GP is uncertain far from
/// the data on the scale of the outliers, and the expected improvement keeps proposing
/// unexplored configs that ASHA then stops. In ranks the good configs are spread out and an
/// unexplored config is expected to be typical, not possibly the best by a wide margin.
#[derive(Clone, Debug)]
struct NormalScores {
    sorted: Vec<f64>,
}

impl NormalScores {
    fn of(values: impl Iterator<Item = f64>) -> NormalScores {
        let mut sorted: Vec<f64> = values.collect();
        sorted.sort_by(f64::total_cmp);
        NormalScores { sorted }
    }

    /// The normal score of `value`: the inverse normal distribution function of its mid-rank
    /// (ties share one), `(rank + 1/2) / (n + 1)`; between results, the rank in between.
    fn apply(&self, value: f64) -> f64 {
        let below = self.sorted.partition_point(|x| *x < value) as f64;
        let not_above = self.sorted.partition_point(|x| *x <= value) as f64;
        let rank = 0.5 * (below + not_above);
        inverse_normal_cdf((rank + 0.5) / (self.sorted.len() as f64 + 1.0))
    }
}

/// The inverse of the standard normal distribution function for `p` in (0, 1) (Acklam's
/// rational approximation, relative error below 1.2e-9).
fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// What the searcher knows of one trial it proposed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct TrialRecord {
    /// The config in the encoding's coordinates (`None` if it cannot be encoded).
    point: Option<Vec<f64>>,
    finished: bool,
    /// `(rung, score)` in increasing rung order; the score is higher-is-better, `None` for a
    /// NaN or infinite value (it counts as the worst value seen).
    rungs: Vec<(f64, Option<f64>)>,
}

impl TrialRecord {
    fn at(&self, level: f64) -> Option<Option<f64>> {
        self.rungs
            .iter()
            .find(|(l, _)| same_level(*l, level))
            .map(|(_, s)| *s)
    }

    fn highest(&self) -> Option<f64> {
        self.rungs.last().map(|(l, _)| *l)
    }
}

/// A [`TrialRecord`] as rtune 0.2.0 saved it: `[rung, score]` pairs, a NaN or infinite score
/// written as `null`.
#[derive(Deserialize)]
struct TrialRecordV020 {
    point: Option<Vec<f64>>,
    finished: bool,
    rungs: Vec<(f64, Option<f64>)>,
}

impl From<TrialRecordV020> for TrialRecord {
    fn from(old: TrialRecordV020) -> TrialRecord {
        let mut rungs: Vec<(f64, Option<f64>)> = old
            .rungs
            .into_iter()
            .map(|(level, score)| (level, score.filter(|s| s.is_finite())))
            .collect();
        rungs.sort_by(|a, b| a.0.total_cmp(&b.0));
        TrialRecord {
            point: old.point,
            finished: old.finished,
            rungs,
        }
    }
}

/// The hyperparameters fitted last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Fitted {
    theta: Theta,
    /// How many results there were when they were fitted.
    results: usize,
    /// How many fits there have been.
    fits: usize,
}

/// Everything a [`GpSearcher`] has learnt: a function of the calls it received, in order (the
/// same calls give the same state). Kept apart from the settings so that it can be saved and
/// restored as it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpState {
    /// Every trial it proposed, by trial number.
    trials: BTreeMap<TrialId, TrialRecord>,
    /// The hyperparameters in use, refitted when the results grow by [`REFIT_GROWTH`].
    fitted: Option<Fitted>,
}

/// `type = "gp"`: see the module documentation.
pub struct GpSearcher {
    settings: GpSettings,
    space: SearchSpace,
    encoding: Encoding,
    /// Input columns: one per numeric parameter, one per choice value, plus the resource.
    columns: usize,
    state: GpState,
}

fn same_level(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
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
    /// The expected improvement at the acquisition rung counted where the gates are passed
    /// (the plain expected improvement without gates).
    acquisition: f64,
    /// The plain expected improvement at the acquisition rung (an upper bound of
    /// `acquisition`).
    ei: f64,
    /// The share of gate draws that pass every gate (1 without gates).
    pass: f64,
    /// `ei` times each gate's own pass probability: it ranks candidates whose acquisition is 0
    /// for want of a passing draw (a lower bound of the acquisition, as passing one gate makes
    /// passing the others likelier).
    fallback: f64,
    mean: f64,
    sd: f64,
}

impl Score {
    /// The acquisition first; where it is 0 for both (deep in the tails), the fallback, then
    /// the optimistic bound decide.
    fn better_than(&self, other: &Score) -> bool {
        let key = |s: &Score| (s.acquisition, s.fallback, s.mean + 2.0 * s.sd);
        key(self).partial_cmp(&key(other)) == Some(std::cmp::Ordering::Greater)
    }
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
            state: GpState::default(),
        })
    }

    /// What the searcher has learnt (for saving it).
    pub fn state(&self) -> &GpState {
        &self.state
    }

    /// Continues from a saved state: the searcher then proposes what the one that saved it
    /// would have.
    pub fn restore_state(&mut self, state: GpState) {
        self.state = state;
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
        // Every (trial's point, rung, score) with an encodable config.
        let mut results: Vec<(&[f64], f64, Option<f64>)> = Vec::new();
        for r in self.state.trials.values() {
            let Some(point) = &r.point else { continue };
            for (level, score) in &r.rungs {
                results.push((point, *level, *score));
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
        let Some(worst) = results.iter().filter_map(|r| r.2).min_by(f64::total_cmp) else {
            return Err(format!(
                "every result of {} so far is NaN or infinite",
                s.metric
            ));
        };
        // Rungs in increasing order with their result counts.
        let mut counts: Vec<(f64, usize)> = Vec::new();
        for (_, level, _) in &results {
            match counts.iter_mut().find(|(l, _)| same_level(*l, *level)) {
                Some((_, n)) => *n += 1,
                None => counts.push((*level, 1)),
            }
        }
        counts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let rung = counts
            .iter()
            .rev()
            .find(|(_, n)| *n >= s.min_points)
            .or_else(|| counts.first())
            .map_or(1.0, |(l, _)| *l);
        // The resource on a log scale in [0, 1].
        let (r_min, r_max) = match &s.levels {
            Some(levels) => (
                levels.first().copied().unwrap_or(1.0),
                levels.last().copied().unwrap_or(1.0),
            ),
            None => (
                counts.first().map_or(1.0, |c| c.0),
                counts.last().map_or(1.0, |c| c.0),
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
        let chosen = active_set(&results, &counts, rung, s.max_observations.max(2), rng);
        let non_finite = chosen.iter().filter(|&&i| results[i].2.is_none()).count();
        let raw: Vec<f64> = chosen
            .iter()
            .map(|&i| results[i].2.unwrap_or(worst))
            .collect();
        let standardiser = NormalScores::of(results.iter().map(|r| r.2.unwrap_or(worst)));
        let y: Vec<f64> = raw.iter().map(|v| standardiser.apply(*v)).collect();
        let x: Vec<Vec<f64>> = chosen
            .iter()
            .map(|&i| self.inputs(results[i].0, coordinate(results[i].1)))
            .collect();
        let best = chosen
            .iter()
            .zip(&y)
            .filter(|&(&i, _)| same_level(results[i].1, rung))
            .map(|(_, v)| *v)
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
                .filter(|&&level| level < rung && !same_level(level, rung))
                .filter_map(|&level| {
                    let scores: Vec<f64> = self
                        .state
                        .trials
                        .values()
                        .filter_map(|r| r.at(level))
                        .map(|score| score.unwrap_or(f64::NEG_INFINITY))
                        .collect();
                    let raw_cutoff = percentile(scores.iter().copied(), quantile * 100.0)?;
                    raw_cutoff.is_finite().then(|| Gate {
                        level,
                        coordinate: coordinate(level),
                        cutoff: standardiser.apply(raw_cutoff),
                        raw_cutoff,
                        recorded: scores.len(),
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        let incumbent_rung = self
            .state
            .trials
            .values()
            .filter_map(TrialRecord::highest)
            .max_by(f64::total_cmp);
        let mut at_top: Vec<(&[f64], f64)> = incumbent_rung
            .map(|top| {
                self.state
                    .trials
                    .values()
                    .filter_map(|r| Some((r.point.as_deref()?, r.at(top)??)))
                    .collect()
            })
            .unwrap_or_default();
        at_top.sort_by(|a, b| b.1.total_cmp(&a.1));
        let incumbents = at_top
            .iter()
            .take(INCUMBENT_STARTS)
            .map(|(point, _)| point.to_vec())
            .collect();
        let pending = if s.fantasize {
            self.state
                .trials
                .iter()
                .filter(|&(id, r)| {
                    *id != asking
                        && !r.finished
                        && !r
                            .rungs
                            .iter()
                            .any(|(l, _)| *l >= rung || same_level(*l, rung))
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
            at_rung: counts
                .iter()
                .find(|(l, _)| same_level(*l, rung))
                .map_or(0, |c| c.1),
            total,
            pending,
            non_finite,
            gates,
            incumbent_rung,
            incumbents,
        })
    }

    /// The hyperparameters for this proposal: the last fit's while the results have grown by
    /// less than [`REFIT_GROWTH`] since, else a new fit (from the last fit and a random start),
    /// which is remembered.
    fn hyperparameters(&mut self, data: &Data, rng: &mut CoreRng) -> (Theta, bool) {
        if let Some(fitted) = &self.state.fitted
            && fitted.theta.0.len() == self.columns + 2
            && (data.total as f64) < fitted.results as f64 * (1.0 + REFIT_GROWTH)
        {
            return (fitted.theta.clone(), false);
        }
        let fit_n = data.x.len().min(FIT_POINTS);
        // The posterior's results are in random order within each rung's share, so the first
        // FIT_POINTS of a shuffled order are a random subset.
        let mut order: Vec<usize> = (0..data.x.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        order.truncate(fit_n);
        let x: Vec<Vec<f64>> = order.iter().map(|&i| data.x[i].clone()).collect();
        let y: Vec<f64> = order.iter().map(|&i| data.y[i]).collect();
        // From the last fit, and from a random start at every RESTART_EVERY-th fit (and the
        // first): the last fit is usually close, the random start keeps it from staying in a
        // poor local optimum as the data change.
        let fits = self.state.fitted.as_ref().map_or(0, |f| f.fits);
        let mut starts = vec![
            self.state
                .fitted
                .as_ref()
                .map(|f| f.theta.clone())
                .filter(|t| t.0.len() == self.columns + 2)
                .unwrap_or_else(|| Theta::default_for(self.columns)),
        ];
        if fits.is_multiple_of(RESTART_EVERY) {
            starts.push(random_start(self.columns, rng));
        }
        let theta = fit_hyperparameters(&x, &y, starts);
        self.state.fitted = Some(Fitted {
            theta: theta.clone(),
            results: data.total,
            fits: fits + 1,
        });
        (theta, true)
    }

    /// The model's proposal: `(values, score, details)`, or why the GP could not be fitted.
    fn model_proposal(
        &mut self,
        data: &Data,
        rng: &mut CoreRng,
    ) -> Result<(Vec<Value>, Score, Value), String> {
        let (theta, refitted) = self.hyperparameters(data, rng);
        let mut gp = Posterior::fit(&data.x, &data.y, &theta)
            .ok_or("the kernel matrix is not positive definite even with jitter")?;
        let fantasized = if data.pending.is_empty() {
            0
        } else {
            gp.fantasize(&data.pending)
        };
        let acquisition = Acquisition::new(self, &gp, data, rng);
        // Random candidates, scored by their plain expected improvement first (all at once);
        // the gates are only evaluated for those that could still be among the best
        // LOCAL_STARTS.
        let mut points: Vec<Vec<f64>> = Vec::new();
        for _ in 0..self.settings.n_candidates.max(1) {
            let config = self.space.sample(0, rng);
            if let Some(point) = self.encoding.encode(&values_of(&self.space, &config)) {
                points.push(point);
            }
        }
        if points.is_empty() {
            return Err("no candidate config could be encoded".into());
        }
        let plain = acquisition.plain_many(&points);
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by(|&a, &b| plain[b].ei.total_cmp(&plain[a].ei));
        let mut starts: Vec<(Vec<f64>, Score)> = Vec::new();
        for i in order {
            if starts.len() >= LOCAL_STARTS
                && plain[i].ei <= starts[LOCAL_STARTS - 1].1.acquisition
                && plain[i].ei > 0.0
            {
                break;
            }
            let s = acquisition.complete(&points[i], plain[i]);
            starts.push((points[i].clone(), s));
            sort_best_first(&mut starts);
            starts.truncate(LOCAL_STARTS);
        }
        for incumbent in &data.incumbents {
            let plain = acquisition.plain_many(std::slice::from_ref(incumbent))[0];
            starts.push((incumbent.clone(), acquisition.complete(incumbent, plain)));
        }
        // Local search from each start: NEIGHBOURS perturbed copies per step (scored at once),
        // snapped to the domains; move to the best if it improves, else shrink the step.
        let mut best: Option<(Vec<f64>, Score)> = None;
        for (mut point, mut s) in starts {
            let mut scale = 0.2;
            for _ in 0..LOCAL_STEPS {
                let next: Vec<Vec<f64>> = (0..NEIGHBOURS)
                    .filter_map(|_| self.perturb(&point, scale, rng))
                    .collect();
                let plain = acquisition.plain_many(&next);
                let mut order: Vec<usize> = (0..next.len()).collect();
                order.sort_by(|&a, &b| plain[b].ei.total_cmp(&plain[a].ei));
                let mut moved = false;
                for i in order {
                    // The plain expected improvement bounds the acquisition: below the current
                    // point's, the gates cannot make it better.
                    let t = if plain[i].ei < s.acquisition {
                        plain[i]
                    } else {
                        acquisition.complete(&next[i], plain[i])
                    };
                    if t.better_than(&s) {
                        point = next[i].clone();
                        s = t;
                        moved = true;
                    }
                }
                if !moved {
                    scale = (scale * 0.7).max(0.01);
                }
            }
            if best.as_ref().is_none_or(|(_, b)| s.better_than(b)) {
                best = Some((point, s));
            }
        }
        let Some((point, chosen)) = best else {
            return Err("no candidate config could be scored".into());
        };
        let values = self.encoding.decode(&point);
        let (lengthscales, variance, noise) = theta.natural();
        let mut details = json!({
            "model": "gp",
            "kernel": "matern52_ard",
            "acquisition": if data.gates.is_empty() {
                "expected_improvement"
            } else {
                "expected_improvement_where_the_gates_pass"
            },
            "acquisition_value": round6(chosen.acquisition),
            "ei": round6(chosen.ei),
            "mean": round6(chosen.mean),
            "sd": round6(chosen.sd),
            "incumbent": round6(data.best),
            "observations": data.total,
            "used": data.x.len(),
            "refitted": refitted,
            "fitted_at": self.state.fitted.as_ref().map_or(0, |f| f.results),
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
            details["pass_probability"] = json!(round6(chosen.pass));
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

/// Which results enter the posterior: all of them up to `max`; beyond that, the same share of
/// `max` for each rung (what a rung leaves unused goes to the others), and within a rung its
/// best quarter first, the rest at random. Every rung keeps a say (the gates are judged at the
/// low ones, the acquisition at a high one), and the model is most accurate where the good
/// configs are (as Syne Tune's subsampling keeps the best results).
fn active_set(
    results: &[(&[f64], f64, Option<f64>)],
    counts: &[(f64, usize)],
    rung: f64,
    max: usize,
    rng: &mut CoreRng,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..results.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    if results.len() <= max {
        return order;
    }
    // Quotas: rungs from the acquisition rung down get theirs first, as in water filling.
    let mut quota = vec![0usize; counts.len()];
    let mut left = max;
    let mut open: Vec<usize> = (0..counts.len()).collect();
    while left > 0 && !open.is_empty() {
        let share = (left / open.len()).max(1);
        let mut next = Vec::new();
        // Higher rungs (the acquisition rung's side) first when a share does not divide.
        open.sort_by(|&a, &b| {
            let near = |i: usize| (counts[i].0 - rung).abs();
            near(a).total_cmp(&near(b))
        });
        for &i in &open {
            if left == 0 {
                break;
            }
            let room = counts[i].1 - quota[i];
            let take = share.min(room).min(left);
            quota[i] += take;
            left -= take;
            if quota[i] < counts[i].1 {
                next.push(i);
            }
        }
        open = next;
    }
    let mut chosen = Vec::with_capacity(max);
    for (k, &(level, _)) in counts.iter().enumerate() {
        let mut at: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| same_level(results[i].1, level))
            .collect();
        let best_n = quota[k].div_ceil(4);
        // The best quarter of the quota (stable: the random order breaks ties), then at random.
        let mut by_score = at.clone();
        by_score.sort_by(|&a, &b| {
            let s = |i: usize| results[i].2.unwrap_or(f64::NEG_INFINITY);
            s(b).total_cmp(&s(a))
        });
        let best: Vec<usize> = by_score.into_iter().take(best_n).collect();
        at.retain(|i| !best.contains(i));
        chosen.extend(best);
        chosen.extend(at.into_iter().take(quota[k] - best_n.min(quota[k])));
    }
    chosen
}

/// The acquisition function of one proposal.
struct Acquisition<'a> {
    searcher: &'a GpSearcher,
    gp: &'a Posterior,
    data: &'a Data,
    /// Standard normal draws of the gate values, `GATE_DRAWS x gates`.
    draws: Vec<Vec<f64>>,
}

impl<'a> Acquisition<'a> {
    fn new(
        searcher: &'a GpSearcher,
        gp: &'a Posterior,
        data: &'a Data,
        rng: &mut CoreRng,
    ) -> Acquisition<'a> {
        let draws = if data.gates.is_empty() {
            Vec::new()
        } else {
            // Antithetic pairs (z, -z): half the draws' sampling error for the same cost.
            (0..GATE_DRAWS / 2)
                .flat_map(|_| {
                    let z: Vec<f64> = data.gates.iter().map(|_| standard_normal(rng)).collect();
                    let minus = z.iter().map(|v| -v).collect();
                    [z, minus]
                })
                .collect()
        };
        Acquisition {
            searcher,
            gp,
            data,
            draws,
        }
    }

    /// The plain expected improvement at the acquisition rung (the acquisition when there are
    /// no gates, else an upper bound of it) of each point.
    fn plain_many(&self, points: &[Vec<f64>]) -> Vec<Score> {
        let inputs: Vec<Vec<f64>> = points
            .iter()
            .map(|p| self.searcher.inputs(p, self.data.rung_coordinate))
            .collect();
        self.gp
            .predict_many(&inputs)
            .into_iter()
            .map(|(mean, var)| {
                let sd = var.sqrt();
                let ei = expected_improvement(mean, sd, self.data.best);
                Score {
                    acquisition: ei,
                    ei,
                    pass: 1.0,
                    fallback: ei,
                    mean,
                    sd,
                }
            })
            .collect()
    }

    /// The acquisition with the gates: `E[(f_top - best)^+ 1{every gate passed}]`, the gate
    /// values drawn from the joint posterior and the improvement in closed form given them.
    fn complete(&self, point: &[f64], plain: Score) -> Score {
        let gates = &self.data.gates;
        if gates.is_empty() {
            return plain;
        }
        if plain.ei <= 0.0 {
            return Score {
                acquisition: 0.0,
                fallback: 0.0,
                ..plain
            };
        }
        // The joint posterior of (f at each gate, f at the acquisition rung).
        let mut inputs: Vec<Vec<f64>> = gates
            .iter()
            .map(|g| self.searcher.inputs(point, g.coordinate))
            .collect();
        inputs.push(self.searcher.inputs(point, self.data.rung_coordinate));
        let (means, cov) = self.gp.joint(&inputs);
        let k = gates.len();
        // Cholesky of the gates' covariance (jittered if needed), and the top's regression on
        // the standardised gate draws: f_top | z = mean_top + w.z, variance cov_tt - w.w.
        let marginal: f64 = gates
            .iter()
            .enumerate()
            .map(|(i, g)| normal_cdf((means[i] - g.cutoff) / cov[i * (k + 1) + i].sqrt()))
            .product();
        let Some(l) = small_cholesky(&cov, k + 1, k) else {
            return Score {
                acquisition: 0.0,
                pass: 0.0,
                fallback: plain.ei * marginal,
                ..plain
            };
        };
        let mut w = vec![0.0; k];
        for i in 0..k {
            let s: f64 = (0..i).map(|j| l[i * k + j] * w[j]).sum();
            w[i] = (cov[i * (k + 1) + k] - s) / l[i * k + i];
        }
        let top_var = cov[k * (k + 1) + k] - w.iter().map(|v| v * v).sum::<f64>();
        let top_sd = top_var.max(1e-12).sqrt();
        // The share of the expected improvement that lies where every gate passes, from the
        // draws, times the exact expected improvement: a ratio of two sums over the same draws,
        // so their sampling errors largely cancel and the acquisition never exceeds the plain
        // expected improvement (a plain average of the passing draws can, where a few draws in
        // the tail carry the improvement).
        let (mut passing, mut all) = (0.0, 0.0);
        let mut passed = 0usize;
        for z in &self.draws {
            let m = means[k] + w.iter().zip(z).map(|(a, b)| a * b).sum::<f64>();
            let improvement = expected_improvement(m, top_sd, self.data.best);
            all += improvement;
            let pass = gates.iter().enumerate().all(|(i, g)| {
                let f: f64 = means[i] + (0..=i).map(|j| l[i * k + j] * z[j]).sum::<f64>();
                f >= g.cutoff
            });
            if pass {
                passed += 1;
                passing += improvement;
            }
        }
        let n = self.draws.len() as f64;
        let share = if all > 0.0 { passing / all } else { 0.0 };
        Score {
            acquisition: plain.ei * share,
            pass: passed as f64 / n,
            fallback: plain.ei * marginal,
            ..plain
        }
    }
}

/// Lower Cholesky factor (row-major `k x k`) of the leading `k x k` block of a symmetric
/// `size x size` matrix, with jitter added to the diagonal if needed.
fn small_cholesky(cov: &[f64], size: usize, k: usize) -> Option<Vec<f64>> {
    let scale = (0..k)
        .map(|i| cov[i * size + i])
        .fold(0.0f64, f64::max)
        .max(1e-12);
    for jitter in [0.0, 1e-9, 1e-6, 1e-3] {
        let mut l = vec![0.0; k * k];
        let mut ok = true;
        'rows: for i in 0..k {
            for j in 0..=i {
                let mut s = cov[i * size + j];
                for m in 0..j {
                    s -= l[i * k + m] * l[j * k + m];
                }
                if i == j {
                    let d = s + jitter * scale;
                    if !(d > 0.0 && d.is_finite()) {
                        ok = false;
                        break 'rows;
                    }
                    l[i * k + i] = d.sqrt();
                } else {
                    l[i * k + j] = s / l[j * k + j];
                }
            }
        }
        if ok {
            return Some(l);
        }
    }
    None
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
        let proposal = if index < self.settings.points_to_evaluate.len() {
            warm_start_proposal(
                &self.space,
                &self.settings.points_to_evaluate,
                index,
                &mut rng,
            )
        } else if index < self.settings.n_initial {
            let reason = format!(
                "random initial config {} of {}",
                index + 1,
                self.settings.n_initial
            );
            random_proposal(&self.space, reason, &mut rng, "initial")
        } else if self.settings.random_fraction > 0.0
            && rng.random::<f64>() < self.settings.random_fraction
        {
            let reason = format!(
                "random (a share of {} of the proposals is random)",
                self.settings.random_fraction
            );
            random_proposal(&self.space, reason, &mut rng, "random_fraction")
        } else {
            let modelled = self.data(trial, &mut rng).and_then(|data| {
                let proposal = self.model_proposal(&data, &mut rng)?;
                Ok((proposal, data))
            });
            match modelled {
                Err(why) => {
                    random_proposal(&self.space, format!("random: {why}"), &mut rng, "no_model")
                }
                Ok(((values, chosen, details), data)) => Proposal {
                    config: self.space.config_from_values(&values),
                    reason: self.reason(&data, &chosen),
                    details,
                },
            }
        };
        let point = self
            .encoding
            .encode(&values_of(&self.space, &proposal.config));
        self.state.trials.insert(
            trial,
            TrialRecord {
                point,
                ..TrialRecord::default()
            },
        );
        Suggestion::Explained(proposal)
    }

    fn on_trial_result(&mut self, trial: TrialId, result: &TrialResult) {
        let Some(value) = result.metric(&self.settings.metric) else {
            return;
        };
        let score = self.settings.mode.score(value);
        let score = score.is_finite().then_some(score);
        let Some(resource) = result
            .get(&self.settings.resource_attr)
            .filter(|r| r.is_finite())
        else {
            return;
        };
        let Some(record) = self.state.trials.get_mut(&trial) else {
            return;
        };
        match &self.settings.levels {
            Some(levels) => {
                if let Some(&level) = levels.iter().rev().find(|l| **l <= resource + 1e-9)
                    && record.at(level).is_none()
                {
                    record.rungs.push((level, score));
                    record.rungs.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
            }
            None => {
                record.rungs.clear();
                record.rungs.push((resource, score));
            }
        }
    }

    fn on_trial_complete(&mut self, trial: TrialId, _last: Option<&TrialResult>) {
        if let Some(record) = self.state.trials.get_mut(&trial) {
            record.finished = true;
        }
    }

    fn total_trials(&self) -> Option<usize> {
        Some(self.settings.num_samples)
    }

    fn on_trial_replayed(&mut self, trial: TrialId, config: &Config) {
        let point = self.encoding.encode(&values_of(&self.space, config));
        self.state.trials.insert(
            trial,
            TrialRecord {
                point,
                ..TrialRecord::default()
            },
        );
    }

    fn save(&self) -> serde_json::Value {
        crate::scheduler::save_fields(&[("state", serde_json::to_value(&self.state))])
    }

    fn restore(&mut self, mut state: serde_json::Value) -> Result<(), String> {
        if state.get("records").is_some() {
            // rtune 0.2.0 saved the records alone; the hyperparameters are refitted at the next
            // proposal.
            let records: BTreeMap<TrialId, TrialRecordV020> =
                crate::scheduler::load_field(&mut state, "records")?;
            self.state = GpState {
                trials: records
                    .into_iter()
                    .map(|(trial, record)| (trial, record.into()))
                    .collect(),
                fitted: None,
            };
            return Ok(());
        }
        self.state = crate::scheduler::load_field(&mut state, "state")?;
        Ok(())
    }
}

/// Best first, by [`Score::better_than`] (stable).
fn sort_best_first(scored: &mut [(Vec<f64>, Score)]) {
    scored.sort_by(|a, b| {
        if a.1.better_than(&b.1) {
            std::cmp::Ordering::Less
        } else if b.1.better_than(&a.1) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
}

impl GpSearcher {
    /// The decisions log's sentence for a model proposal.
    fn reason(&self, data: &Data, chosen: &Score) -> String {
        let s = &self.settings;
        let fantasized = if data.pending.is_empty() {
            String::new()
        } else {
            format!(", {} running trials fantasized", data.pending.len())
        };
        let gates = if data.gates.is_empty() {
            String::new()
        } else {
            let rungs: Vec<String> = data.gates.iter().map(|g| format!("{}", g.level)).collect();
            format!(
                ", counted where it passes ASHA's cutoffs at rungs {} (it does with probability {:.3}; {:.4} without them)",
                rungs.join(", "),
                chosen.pass,
                chosen.ei,
            )
        };
        format!(
            "gp: largest expected improvement {:.4} (standardised) at rung {} = {}{gates}, of {} random candidates and a local search; Matérn-5/2 ARD GP over (config, {}) on {} of {} results{fantasized}",
            chosen.acquisition,
            s.resource_attr,
            data.rung,
            s.n_candidates,
            s.resource_attr,
            data.x.len(),
            data.total,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state saved as JSON and restored into a fresh searcher gives the same proposals as
    /// the searcher that saved it (non-finite results and the fitted hyperparameters included).
    #[test]
    fn a_restored_state_proposes_what_the_saved_searcher_would() {
        use rand::SeedableRng;
        let table = json!({"x": {"uniform": [0.0, 1.0]}, "k": {"choice": ["a", "b"]}});
        let space = SearchSpace::from_json(table.as_object().unwrap()).unwrap();
        let settings = GpSettings {
            metric: "loss".into(),
            mode: Mode::Min,
            seed: 3,
            num_samples: 100,
            n_initial: 3,
            n_candidates: 16,
            random_fraction: 0.0,
            min_points: 3,
            max_observations: 32,
            fantasize: true,
            points_to_evaluate: Vec::new(),
            resource_attr: "training_iteration".into(),
            levels: Some(vec![1.0, 3.0, 9.0]),
            rung_cutoff_quantile: Some(2.0 / 3.0),
        };
        let mut rng = CoreRng::seed_from_u64(0);
        let mut saved = GpSearcher::new(space.clone(), settings.clone()).unwrap();
        for i in 0..12u32 {
            let id = TrialId(i);
            let Suggestion::Explained(p) = saved.suggest(id, &mut rng) else {
                panic!("a proposal");
            };
            let x = p.config["x"].as_f64().unwrap();
            for r in 1..=(1 + i % 3 * 3) {
                let mut metrics = serde_json::Map::new();
                let loss = if i == 4 {
                    f64::NAN
                } else {
                    (x - 0.3).powi(2) + 1.0 / f64::from(r)
                };
                metrics.insert("loss".into(), json!(loss));
                metrics.insert("training_iteration".into(), json!(r));
                saved.on_trial_result(
                    id,
                    &TrialResult {
                        trial: id,
                        metrics,
                        has_checkpoint: false,
                    },
                );
            }
            // Trial 11 keeps running: it is fantasized.
            if i < 11 {
                saved.on_trial_complete(id, None);
            }
        }
        let text = serde_json::to_string(saved.state()).unwrap();
        let mut restored = GpSearcher::new(space, settings).unwrap();
        restored.restore_state(serde_json::from_str(&text).unwrap());
        assert_eq!(restored.state(), saved.state());
        for i in 12..15u32 {
            let a = saved.suggest(TrialId(i), &mut rng);
            let b = restored.suggest(TrialId(i), &mut rng);
            assert_eq!(a, b);
            let Suggestion::Explained(p) = a else {
                panic!("a proposal")
            };
            assert!(p.reason.starts_with("gp: "), "{}", p.reason);
        }
    }

    #[test]
    fn normal_scores_follow_the_ranks() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_985),
            (0.01, -2.326_347_874),
            (1e-6, -4.753_424_309),
        ] {
            assert!((inverse_normal_cdf(p) - z).abs() < 1e-7, "{p}");
        }
        let scores = NormalScores::of([3.0, 1.0, 2.0, 2.0, 100.0].into_iter());
        // Positions (rank + 1/2) / (n + 1): 1 -> 1/6, the two 2s share 2.5/6, 3 -> 4/6,
        // 100 -> 5/6.
        assert!((scores.apply(1.0) - inverse_normal_cdf(1.0 / 6.0)).abs() < 1e-12);
        assert!((scores.apply(2.0) - inverse_normal_cdf(2.5 / 6.0)).abs() < 1e-12);
        // An outlier is one rank above the next, whatever its size.
        assert_eq!(scores.apply(100.0), -scores.apply(1.0));
        // Between results: the rank in between.
        assert!(scores.apply(2.5) > scores.apply(2.0) && scores.apply(2.5) < scores.apply(3.0));
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

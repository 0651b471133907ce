//! ASHA: asynchronous successive halving, the stopping variant users know from Ray Tune's
//! `AsyncHyperBandScheduler`.
//!
//! Each bracket has rungs at `grace_period * reduction_factor^(k + s)`. When a trial reaches a
//! rung it is compared with every trial recorded there so far: below the `(1 - 1/rf)` quantile
//! of their scores it stops, otherwise it goes on. Nobody waits for anybody, so no checkpoint is
//! needed.
//!
//! Deliberate differences from the reference:
//! * a NaN or infinite metric is the worst possible score, so a diverged trial is stopped as soon
//!   as its rung has a cutoff (the reference never stops a NaN trial). JSON has no NaN, so a
//!   metric reported as `null` or as the string `"NaN"` / `"inf"` counts as such a value (see
//!   [`metric_value`]);
//! * the number of rungs is computed with a tolerance of 1e-9, so `max_t / grace_period` that is
//!   an exact power of the reduction factor does not lose its top rung to rounding.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Budget, Decision, InvalidSetting, Scheduler, SchedulerContext};
use crate::trial::TrialId;
use crate::{Mode, TrialResult};

/// `[scheduler]` with `type = "asha"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AshaConfig {
    /// The result key that measures progress (rungs and `max_t` are in its units).
    pub time_attr: String,
    /// The first rung: no trial is stopped before it has trained this long.
    pub grace_period: f64,
    /// Trials are never trained beyond this (when `stop_last_trials`).
    pub max_t: f64,
    /// Rungs are this factor apart, and `1/reduction_factor` of the trials pass each one.
    pub reduction_factor: f64,
    /// How many brackets (each starting one rung later than the previous one).
    pub brackets: u32,
    /// Stop trials once they reach `max_t`.
    pub stop_last_trials: bool,
}

impl Default for AshaConfig {
    fn default() -> Self {
        AshaConfig {
            time_attr: "training_iteration".into(),
            grace_period: 1.0,
            max_t: 100.0,
            reduction_factor: 4.0,
            brackets: 1,
            stop_last_trials: true,
        }
    }
}

/// One rung: a milestone and the score of every trial recorded there.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Rung {
    milestone: f64,
    recorded: BTreeMap<TrialId, f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Bracket {
    /// Highest milestone first: that is the order in which a result walks them.
    rungs: Vec<Rung>,
}

#[derive(Debug)]
pub struct AshaScheduler {
    config: AshaConfig,
    metric: String,
    mode: Mode,
    brackets: Vec<Bracket>,
    /// Relative probability of each bracket for a new trial.
    bracket_weights: Vec<f64>,
    trial_bracket: BTreeMap<TrialId, usize>,
}

/// How many rungs bracket `s` has: `floor(log_rf(max_t / grace_period) - s + 1)`, at least 0.
fn rung_count(config: &AshaConfig, s: u32) -> i64 {
    let levels = (config.max_t / config.grace_period).ln() / config.reduction_factor.ln();
    // The tolerance keeps exact powers (max_t / grace = rf^k) from losing a rung to rounding.
    ((levels + 1e-9).floor() - f64::from(s) + 1.0).max(0.0) as i64
}

impl AshaScheduler {
    pub fn new(config: AshaConfig, metric: &str, mode: Mode) -> Result<Self, InvalidSetting> {
        if config.time_attr.trim().is_empty() {
            return Err(InvalidSetting::new(
                "time_attr",
                "must name a result key, e.g. \"training_iteration\"",
            ));
        }
        if !(config.grace_period.is_finite() && config.grace_period > 0.0) {
            return Err(InvalidSetting::new(
                "grace_period",
                format!("must be more than 0, got {}", config.grace_period),
            ));
        }
        if !(config.max_t.is_finite() && config.max_t >= config.grace_period) {
            return Err(InvalidSetting::new(
                "max_t",
                format!(
                    "must be at least grace_period ({}), got {}",
                    config.grace_period, config.max_t
                ),
            ));
        }
        if !(config.reduction_factor.is_finite() && config.reduction_factor > 1.0) {
            return Err(InvalidSetting::new(
                "reduction_factor",
                format!(
                    "must be more than 1 (2 keeps half of the trials at each rung), got {}",
                    config.reduction_factor
                ),
            ));
        }
        if config.brackets == 0 {
            return Err(InvalidSetting::new("brackets", "must be at least 1, got 0"));
        }
        let max_rungs = rung_count(&config, 0);
        if max_rungs > 64 {
            return Err(InvalidSetting::new(
                "reduction_factor",
                format!(
                    "gives {max_rungs} rungs between grace_period {} and max_t {}; raise \
                     reduction_factor or grace_period",
                    config.grace_period, config.max_t
                ),
            ));
        }
        let counts: Vec<i64> = (0..config.brackets)
            .map(|s| rung_count(&config, s))
            .collect();
        let brackets = (0..config.brackets)
            .zip(&counts)
            .map(|(s, &count)| Bracket {
                rungs: (0..count)
                    .rev()
                    .map(|k| Rung {
                        milestone: config.grace_period
                            * config.reduction_factor.powf(k as f64 + f64::from(s)),
                        recorded: BTreeMap::new(),
                    })
                    .collect(),
            })
            .collect();
        let most = counts.iter().copied().max().unwrap_or(0);
        let bracket_weights = counts
            .iter()
            .map(|&count| ((count - most) as f64).exp())
            .collect();
        Ok(AshaScheduler {
            config,
            metric: metric.to_string(),
            mode,
            brackets,
            bracket_weights,
            trial_bracket: BTreeMap::new(),
        })
    }

    /// The bracket of a trial, drawn on first sight with probability proportional to
    /// `exp(n_rungs(s) - max n_rungs)`. One bracket draws nothing, so it leaves the RNG alone.
    fn bracket_of(&mut self, ctx: &mut SchedulerContext<'_>, trial: TrialId) -> usize {
        if let Some(&b) = self.trial_bracket.get(&trial) {
            return b;
        }
        let bracket = if self.bracket_weights.len() <= 1 {
            0
        } else {
            let total: f64 = self.bracket_weights.iter().sum();
            let mut draw = ctx.rng.random::<f64>() * total;
            let mut chosen = self.bracket_weights.len() - 1;
            for (b, weight) in self.bracket_weights.iter().enumerate() {
                if draw < *weight {
                    chosen = b;
                    break;
                }
                draw -= weight;
            }
            chosen
        };
        self.trial_bracket.insert(trial, bracket);
        bracket
    }

    /// A metric value for display: scores are negated metrics in min mode.
    fn metric_of(&self, score: f64) -> f64 {
        match self.mode {
            Mode::Max => score,
            Mode::Min => -score,
        }
    }

    /// The milestones of every bracket, highest first (for tests).
    #[cfg(test)]
    fn milestones(&self) -> Vec<Vec<f64>> {
        self.brackets
            .iter()
            .map(|b| b.rungs.iter().map(|r| r.milestone).collect())
            .collect()
    }
}

/// The `q`-th percentile (0..=100) of `values` with linear interpolation between the two
/// nearest ranks (numpy's default), ignoring NaN. `None` when nothing is left.
///
/// Infinite values are allowed: interpolating towards an infinity gives that infinity, and the
/// undefined case (between -inf and +inf) gives the lower one.
pub(crate) fn percentile(values: impl IntoIterator<Item = f64>, q: f64) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
    if values.is_empty() {
        return None;
    }
    let position = (q / 100.0).clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (position.ceil() as usize).min(values.len() - 1);
    let fraction = position - below as f64;
    // The two order statistics by selection, not a sort: a rung of a large experiment holds
    // every trial's value and is looked at on every report (the same values as sorting, since
    // the order is total).
    let (_, &mut low, larger) = values.select_nth_unstable_by(below, f64::total_cmp);
    let high = if above == below {
        low
    } else {
        larger.iter().copied().min_by(f64::total_cmp).unwrap_or(low)
    };
    // Interpolating from -inf stays -inf (and -inf..+inf is taken as the lower end).
    if fraction == 0.0 || low == high || low == f64::NEG_INFINITY {
        Some(low)
    } else if high == f64::INFINITY {
        Some(high)
    } else {
        Some(low + fraction * (high - low))
    }
}

/// A number as people read it: at most 6 significant digits, no trailing zeros.
pub(crate) fn show(value: f64) -> String {
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    let magnitude = value.abs().log10().floor() as i32;
    if (-5..15).contains(&magnitude) {
        let decimals = (5 - magnitude).max(0) as usize;
        let text = format!("{value:.decimals$}");
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        }
    } else {
        format!("{value:.5e}")
    }
}

/// A result's metric value and time, or the reason to let it continue, naming the missing key
/// (`result lacks eval_loss`; the runner logs every reason, so a trial that never reports the
/// metric is visible).
pub(crate) fn value_and_time(
    result: &TrialResult,
    metric: &str,
    time_attr: &str,
) -> Result<(f64, f64), String> {
    match (result.metric(metric), result.get(time_attr)) {
        (Some(value), Some(time)) => Ok((value, time)),
        (None, _) => Err(format!("result lacks {metric}")),
        (Some(_), None) => Err(format!("result lacks {time_attr}")),
    }
}

/// A float as JSON; non-finite values (which JSON cannot hold) become `null`.
pub(crate) fn json_f64(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

impl Scheduler for AshaScheduler {
    fn name(&self) -> &'static str {
        "asha"
    }

    fn time_attr(&self) -> Option<&str> {
        Some(&self.config.time_attr)
    }

    fn budget(&self) -> Option<Budget> {
        self.config.stop_last_trials.then(|| Budget {
            time_attr: self.config.time_attr.clone(),
            max_t: self.config.max_t,
        })
    }

    fn on_trial_add(&mut self, ctx: &mut SchedulerContext<'_>, trial: TrialId) {
        self.bracket_of(ctx, trial);
    }

    fn save(&self) -> Value {
        super::save_fields(&[
            ("brackets", serde_json::to_value(&self.brackets)),
            ("trial_bracket", serde_json::to_value(&self.trial_bracket)),
        ])
    }

    fn restore(&mut self, mut state: Value) -> Result<(), String> {
        let brackets: Vec<Bracket> = super::load_field(&mut state, "brackets")?;
        let shape = |b: &[Bracket]| -> Vec<Vec<f64>> {
            b.iter()
                .map(|b| b.rungs.iter().map(|r| r.milestone).collect())
                .collect()
        };
        if shape(&brackets) != shape(&self.brackets) {
            return Err("its brackets and rungs differ from the experiment file's".into());
        }
        self.brackets = brackets;
        self.trial_bracket = super::load_field(&mut state, "trial_bracket")?;
        Ok(())
    }

    fn on_trial_rollback(
        &mut self,
        _ctx: &mut SchedulerContext<'_>,
        trial: TrialId,
        kept_time: Option<f64>,
    ) {
        // A kept result without the time attribute (NaN) reached no rung.
        let until = kept_time
            .filter(|t| !t.is_nan())
            .unwrap_or(f64::NEG_INFINITY);
        if let Some(&b) = self.trial_bracket.get(&trial) {
            for rung in &mut self.brackets[b].rungs {
                if rung.milestone > until {
                    rung.recorded.remove(&trial);
                }
            }
        }
    }

    fn on_trial_result(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        result: &TrialResult,
    ) -> Decision {
        let id = result.trial;
        let (value, time) = match value_and_time(result, &self.metric, &self.config.time_attr) {
            Ok(found) => found,
            Err(reason) => return Decision::continue_(result.trial, reason),
        };
        if self.config.stop_last_trials && time >= self.config.max_t {
            return Decision::stop(id, format!("reached max_t = {}", show(self.config.max_t)))
                .with_details(json!({
                    "max_t": json_f64(self.config.max_t),
                    "time": json_f64(time),
                }));
        }
        let s = self.bracket_of(ctx, id);
        let score = self.mode.score(value);
        let rf = self.config.reduction_factor;
        let quantile = (1.0 - 1.0 / rf) * 100.0;
        let Some(rung) = self.brackets[s]
            .rungs
            .iter_mut()
            .find(|r| r.milestone <= time && !r.recorded.contains_key(&id))
        else {
            return Decision::continue_(id, "no rung reached");
        };
        let milestone = rung.milestone;
        let cutoff = percentile(rung.recorded.values().copied(), quantile);
        let recorded = rung.recorded.len();
        // Recorded also when stopped: stopped trials shape later cutoffs.
        rung.recorded.insert(id, score);
        let details = json!({
            "rung": json_f64(milestone),
            "bracket": s,
            "cutoff": cutoff.map_or(Value::Null, json_f64),
            "value": json_f64(score),
            "recorded": recorded,
        });
        let metric = &self.metric;
        let rung_name = show(milestone);
        let decision = match cutoff {
            None => Decision::continue_(id, format!("first result at rung {rung_name}")),
            Some(cutoff) if score < cutoff => Decision::stop(
                id,
                format!(
                    "{metric} {} is worse than the rung-{rung_name} cutoff {} (bracket {s}, \
                     {recorded} trials recorded)",
                    show(value),
                    show(self.metric_of(cutoff)),
                ),
            ),
            Some(cutoff) => Decision::continue_(
                id,
                format!(
                    "rung-{rung_name}: {} {} the cutoff {}",
                    show(value),
                    if score > cutoff { "beats" } else { "ties" },
                    show(self.metric_of(cutoff)),
                ),
            ),
        };
        decision.with_details(details)
    }

    fn on_trial_complete(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        trial: TrialId,
        last: Option<&TrialResult>,
    ) {
        let Some(last) = last else { return };
        let (Some(value), Some(time)) =
            (last.metric(&self.metric), last.get(&self.config.time_attr))
        else {
            return;
        };
        // The final score counts at the highest rung it reached and was not judged at yet.
        let s = self.bracket_of(ctx, trial);
        let score = self.mode.score(value);
        if let Some(rung) = self.brackets[s]
            .rungs
            .iter_mut()
            .find(|r| r.milestone <= time && !r.recorded.contains_key(&trial))
        {
            rung.recorded.insert(trial, score);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::CoreRng;
    use crate::scheduler::Action;
    use crate::tuner::Trial;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    /// Drives an ASHA scheduler directly, with `n` trials in the context.
    struct Harness {
        scheduler: AshaScheduler,
        rng: CoreRng,
        trials: Vec<Trial>,
        mode: Mode,
    }

    impl Harness {
        fn new(config: AshaConfig, mode: Mode, n: u32) -> Harness {
            let scheduler = AshaScheduler::new(config, "m", mode).expect("valid settings");
            let trials = (0..n)
                .map(|i| Trial::new_pending(TrialId(i), crate::Config::new()))
                .collect();
            let mut harness = Harness {
                scheduler,
                rng: CoreRng::seed_from_u64(7),
                trials,
                mode,
            };
            for i in 0..n {
                let mut ctx = SchedulerContext::new(&mut harness.rng, &harness.trials);
                harness.scheduler.on_trial_add(&mut ctx, TrialId(i));
            }
            harness
        }

        /// `value` is given as a score-like number in max mode; in min mode the metric the
        /// trial reports is its negation (a mirrored experiment).
        fn metric(&self, value: f64) -> f64 {
            match self.mode {
                Mode::Max => value,
                Mode::Min => -value,
            }
        }

        fn result(&self, trial: u32, time: f64, value: f64) -> TrialResult {
            let mut metrics = serde_json::Map::new();
            metrics.insert("training_iteration".into(), json!(time));
            metrics.insert("m".into(), json!(self.metric(value)));
            TrialResult {
                trial: TrialId(trial),
                metrics,
                has_checkpoint: false,
            }
        }

        fn report(&mut self, trial: u32, time: f64, value: f64) -> Decision {
            let result = self.result(trial, time, value);
            let mut ctx = SchedulerContext::new(&mut self.rng, &self.trials);
            let decision = self.scheduler.on_trial_result(&mut ctx, &result);
            assert!(
                ctx.outbox.is_empty(),
                "ASHA decides only about the reporter"
            );
            decision
        }

        fn complete(&mut self, trial: u32, time: f64, value: f64) {
            let result = self.result(trial, time, value);
            let mut ctx = SchedulerContext::new(&mut self.rng, &self.trials);
            self.scheduler
                .on_trial_complete(&mut ctx, TrialId(trial), Some(&result));
        }
    }

    const BOTH: [Mode; 2] = [Mode::Max, Mode::Min];

    fn config(grace: f64, max_t: f64, rf: f64) -> AshaConfig {
        AshaConfig {
            grace_period: grace,
            max_t,
            reduction_factor: rf,
            ..AshaConfig::default()
        }
    }

    fn actions(decisions: &[Decision]) -> Vec<Action> {
        decisions.iter().map(|d| d.action.clone()).collect()
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = AshaConfig::default();
        assert_eq!(c.time_attr, "training_iteration");
        assert_eq!(
            (c.grace_period, c.max_t, c.reduction_factor),
            (1.0, 100.0, 4.0)
        );
        assert_eq!(c.brackets, 1);
        assert!(c.stop_last_trials);
        let parsed: AshaConfig = serde_json::from_value(json!({"max_t": 5})).unwrap();
        assert_eq!(parsed.max_t, 5.0);
        assert_eq!(parsed.grace_period, 1.0);
        let unknown = serde_json::from_value::<AshaConfig>(json!({"grace": 1}));
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn rungs_follow_the_reference_formula() {
        let s = AshaScheduler::new(config(1.0, 5.0, 2.0), "m", Mode::Min).unwrap();
        assert_eq!(s.milestones(), vec![vec![4.0, 2.0, 1.0]]);
        let s = AshaScheduler::new(config(1.0, 10.0, 2.0), "m", Mode::Min).unwrap();
        assert_eq!(s.milestones(), vec![vec![8.0, 4.0, 2.0, 1.0]]);
        let s = AshaScheduler::new(config(2.5, 10.0, 3.0), "m", Mode::Min).unwrap();
        assert_eq!(s.milestones(), vec![vec![7.5, 2.5]]);
        // An exact power keeps its top rung despite floating-point rounding.
        let s = AshaScheduler::new(config(1.0, 1000.0, 10.0), "m", Mode::Min).unwrap();
        assert_eq!(s.milestones(), vec![vec![1000.0, 100.0, 10.0, 1.0]]);
        let brackets = AshaConfig {
            brackets: 3,
            ..config(1.0, 16.0, 2.0)
        };
        let s = AshaScheduler::new(brackets, "m", Mode::Min).unwrap();
        assert_eq!(
            s.milestones(),
            vec![
                vec![16.0, 8.0, 4.0, 2.0, 1.0],
                vec![16.0, 8.0, 4.0, 2.0],
                vec![16.0, 8.0, 4.0]
            ]
        );
    }

    #[test]
    fn reference_scenario_epoch_one_losses() {
        // Mode min, grace 1, rf 2, max_t 5: eval_loss A=2.0, B=1.5, C=1.8, D=2.5 at epoch 1.
        let mut h = Harness::new(config(1.0, 5.0, 2.0), Mode::Min, 4);
        let a = h.report(0, 1.0, -2.0);
        let b = h.report(1, 1.0, -1.5);
        let c = h.report(2, 1.0, -1.8);
        let d = h.report(3, 1.0, -2.5);
        assert_eq!(
            actions(&[a.clone(), b.clone(), c.clone(), d.clone()]),
            vec![
                Action::Continue,
                Action::Continue,
                Action::Stop,
                Action::Stop
            ]
        );
        assert_eq!(a.reason, "first result at rung 1");
        assert_eq!(b.details["cutoff"], json!(-2.0));
        assert_eq!(c.details["cutoff"], json!(-1.75));
        assert_eq!(
            c.reason,
            "m 1.8 is worse than the rung-1 cutoff 1.75 (bracket 0, 2 trials recorded)"
        );
        assert_eq!(
            c.details,
            json!({"rung": 1.0, "bracket": 0, "cutoff": -1.75, "value": -1.8, "recorded": 2})
        );
        assert_eq!(d.details["cutoff"], json!(-1.8));
        assert_eq!(d.details["recorded"], json!(3));
        assert!(c.reason.contains("rung") && d.reason.contains("rung"));
    }

    /// Ray's scenario: t1 reports (i, 100 i) for i in 0..10, t2 (i, 450) for i in 0..5, both
    /// complete at (10, 1000).
    fn two_finished_trials(h: &mut Harness) {
        for i in 0..10 {
            let d = h.report(0, f64::from(i), 100.0 * f64::from(i));
            assert_eq!(d.action, Action::Continue, "t1 at {i}: {}", d.reason);
        }
        for i in 0..5 {
            let d = h.report(1, f64::from(i), 450.0);
            assert_eq!(d.action, Action::Continue, "t2 at {i}: {}", d.reason);
        }
        h.complete(0, 10.0, 1000.0);
        h.complete(1, 10.0, 1000.0);
    }

    #[test]
    fn reference_scenario_cutoffs_from_finished_trials() {
        for mode in BOTH {
            let mut h = Harness::new(config(1.0, 10.0, 2.0), mode, 3);
            two_finished_trials(&mut h);
            let first = h.report(2, 1.0, 260.0);
            assert_eq!(first.action, Action::Stop, "{mode}");
            assert_eq!(first.details["cutoff"], json!(275.0));
            let second = h.report(2, 2.0, 260.0);
            assert_eq!(second.action, Action::Stop, "{mode}");
            assert_eq!(second.details["cutoff"], json!(325.0));
            assert_eq!(second.details["rung"], json!(2.0));
        }
    }

    #[test]
    fn reference_scenario_grace_2_5_rf_3() {
        for mode in BOTH {
            let mut h = Harness::new(config(2.5, 10.0, 3.0), mode, 3);
            two_finished_trials(&mut h);
            let d1 = h.report(2, 1.0, 10.0);
            let d2 = h.report(2, 2.0, 10.0);
            let d3 = h.report(2, 3.0, 10.0);
            assert_eq!(d1.action, Action::Continue);
            assert_eq!(d1.reason, "no rung reached");
            assert_eq!(d2.action, Action::Continue);
            assert_eq!(d3.action, Action::Stop, "{mode}: {}", d3.reason);
            let cutoff = d3.details["cutoff"].as_f64().unwrap();
            assert!((cutoff - 400.0).abs() < 1e-9, "{cutoff}");
        }
    }

    #[test]
    fn reference_scenario_equal_scores_are_not_stopped() {
        for mode in BOTH {
            let mut h = Harness::new(config(1.0, 10.0, 2.0), mode, 6);
            for t in 0..5 {
                let d = h.report(t, 1.0, 10.0);
                assert_eq!(d.action, Action::Continue, "{mode}: {}", d.reason);
            }
            assert!(h.report(5, 1.0, 5.0).action == Action::Stop);
        }
    }

    #[test]
    fn reference_scenario_without_stop_last_trials() {
        for mode in BOTH {
            let c = AshaConfig {
                stop_last_trials: false,
                ..config(1.0, 3.0, 2.0)
            };
            let mut h = Harness::new(c, mode, 4);
            let at_two: Vec<Decision> = [10.0, 8.0, 6.0, 4.0]
                .into_iter()
                .enumerate()
                .map(|(t, v)| h.report(t as u32, 2.0, v))
                .collect();
            assert_eq!(
                actions(&at_two),
                vec![Action::Continue, Action::Stop, Action::Stop, Action::Stop],
                "{mode}"
            );
            for t in [4.0, 8.0, 14.0] {
                let d = h.report(0, t, 10.0);
                assert_eq!(d.action, Action::Continue, "{mode} at {t}: {}", d.reason);
            }
        }
    }

    #[test]
    fn min_and_max_give_identical_decisions_on_mirrored_metrics() {
        // A longer pseudo-random scenario: every decision and its details must match.
        let run = |mode: Mode| {
            let mut h = Harness::new(config(1.0, 16.0, 2.0), mode, 12);
            let mut out = Vec::new();
            let mut stopped = BTreeSet::new();
            for t in 1..=16 {
                for trial in 0..12u32 {
                    if stopped.contains(&trial) {
                        continue;
                    }
                    let value = ((trial * 7 + t * 3) % 11) as f64 + f64::from(t) * 0.5;
                    let d = h.report(trial, f64::from(t), value);
                    if d.action == Action::Stop {
                        stopped.insert(trial);
                    }
                    out.push((d.trial, d.action, d.details));
                }
            }
            out
        };
        let max = run(Mode::Max);
        assert_eq!(max, run(Mode::Min));
        assert!(max.iter().any(|(_, a, _)| *a == Action::Stop));
        assert!(
            max.iter()
                .any(|(_, a, d)| *a == Action::Continue && d["rung"] == 4.0)
        );
    }

    #[test]
    fn a_jump_is_judged_only_at_the_highest_rung_reached() {
        for mode in BOTH {
            let mut h = Harness::new(config(1.0, 5.0, 2.0), mode, 3);
            h.report(0, 4.0, 10.0);
            h.report(1, 1.0, 1.0);
            // Trial 2 reports at 1 (its rung-1 cutoff is 1: fine), then jumps to 4.
            assert_eq!(h.report(2, 1.0, 5.0).action, Action::Continue);
            let d = h.report(2, 4.0, 5.0);
            assert_eq!(d.action, Action::Stop, "{mode}");
            assert_eq!(d.details["rung"], json!(4.0));
            assert_eq!(d.details["recorded"], json!(1));
            // Rung 2 was skipped: nothing was recorded there.
            assert!(h.scheduler.brackets[0].rungs[1].recorded.is_empty());
        }
    }

    #[test]
    fn stops_at_max_t_when_asked() {
        let mut h = Harness::new(config(1.0, 5.0, 2.0), Mode::Min, 1);
        let d = h.report(0, 5.0, 1.0);
        assert_eq!(d.action, Action::Stop);
        assert_eq!(d.reason, "reached max_t = 5");
        let c = AshaConfig {
            stop_last_trials: false,
            ..config(1.0, 5.0, 2.0)
        };
        let mut h = Harness::new(c, Mode::Min, 1);
        assert_eq!(h.report(0, 5.0, 1.0).action, Action::Continue);
    }

    #[test]
    fn a_nan_metric_is_the_worst_score() {
        for mode in BOTH {
            let mut h = Harness::new(config(1.0, 5.0, 2.0), mode, 3);
            h.report(0, 1.0, 1.0);
            let d = h.report(1, 1.0, f64::NAN);
            assert_eq!(d.action, Action::Stop, "{mode}: {}", d.reason);
            assert_eq!(d.details["value"], Value::Null, "-inf has no JSON form");
            // A NaN recorded at a rung does not poison later cutoffs: it is the worst score.
            let d = h.report(2, 1.0, 0.5);
            assert_eq!(d.action, Action::Continue, "{mode}: {}", d.reason);
        }
    }

    #[test]
    fn diverged_values_in_json_are_the_worst_score() {
        let h = Harness::new(config(1.0, 5.0, 2.0), Mode::Max, 1);
        let mut result = h.result(0, 1.0, 1.0);
        for (reported, expected) in [
            (json!(null), None),
            (json!("NaN"), None),
            (json!("-Infinity"), Some(f64::NEG_INFINITY)),
            (json!("inf"), Some(f64::INFINITY)),
            (json!(2.5), Some(2.5)),
        ] {
            result.metrics.insert("m".into(), reported.clone());
            let value = result.metric("m").expect("a value");
            match expected {
                None => assert!(value.is_nan(), "{reported}"),
                Some(expected) => assert_eq!(value, expected, "{reported}"),
            }
        }
        result.metrics.insert("m".into(), json!("fast"));
        assert_eq!(result.metric("m"), None);
        result.metrics.insert("m".into(), json!(true));
        assert_eq!(result.metric("m"), None);
        // Infinite is the worst in either mode, whatever its sign.
        for mode in BOTH {
            assert_eq!(mode.score(f64::INFINITY), f64::NEG_INFINITY);
            assert_eq!(mode.score(f64::NEG_INFINITY), f64::NEG_INFINITY);
            assert_eq!(mode.score(f64::NAN), f64::NEG_INFINITY);
        }
        // A "+inf accuracy" is stopped at a rung with a cutoff.
        let mut h = Harness::new(config(1.0, 5.0, 2.0), Mode::Max, 2);
        h.report(0, 1.0, 0.5);
        let mut result = h.result(1, 1.0, 0.0);
        result.metrics.insert("m".into(), json!("inf"));
        let mut ctx = SchedulerContext::new(&mut h.rng, &h.trials);
        let d = h.scheduler.on_trial_result(&mut ctx, &result);
        assert_eq!(d.action, Action::Stop, "{}", d.reason);
    }

    #[test]
    fn a_result_without_the_metric_continues_and_says_why() {
        let mut h = Harness::new(config(1.0, 5.0, 2.0), Mode::Min, 1);
        let mut result = h.result(0, 1.0, 1.0);
        result.metrics.remove("m");
        let mut ctx = SchedulerContext::new(&mut h.rng, &h.trials);
        let d = h.scheduler.on_trial_result(&mut ctx, &result);
        assert_eq!(d.action, Action::Continue);
        assert!(d.reason.starts_with("result lacks m"), "{}", d.reason);
        let d = h.scheduler.on_trial_result(&mut ctx, &result);
        assert_eq!(d.reason, "result lacks m");
        result.metrics.remove("training_iteration");
        result.metrics.insert("m".into(), json!(1.0));
        let d = h.scheduler.on_trial_result(&mut ctx, &result);
        assert_eq!(d.reason, "result lacks training_iteration");
    }

    #[test]
    fn completion_records_the_final_score_at_the_highest_open_rung() {
        let mut h = Harness::new(config(1.0, 16.0, 2.0), Mode::Max, 2);
        h.report(0, 1.0, 3.0);
        h.complete(0, 5.0, 9.0);
        let rungs = &h.scheduler.brackets[0].rungs;
        let at = |m: f64| rungs.iter().find(|r| r.milestone == m).unwrap();
        assert_eq!(at(4.0).recorded.get(&TrialId(0)), Some(&9.0));
        assert!(at(2.0).recorded.is_empty());
        // It now sets the rung-4 cutoff for trial 1.
        let d = h.report(1, 4.0, 8.0);
        assert_eq!(d.action, Action::Stop);
        assert_eq!(d.details["cutoff"], json!(9.0));
    }

    #[test]
    fn brackets_are_drawn_in_proportion_to_their_rungs() {
        let c = AshaConfig {
            brackets: 3,
            ..config(1.0, 16.0, 2.0)
        };
        // Rung counts 5, 4, 3: weights 1, e^-1, e^-2.
        let h = Harness::new(c, Mode::Min, 3000);
        let mut counts = [0usize; 3];
        for b in h.scheduler.trial_bracket.values() {
            counts[*b] += 1;
        }
        let total: f64 = 1.0 + (-1.0f64).exp() + (-2.0f64).exp();
        for (b, count) in counts.iter().enumerate() {
            let expected = 3000.0 * (-(b as f64)).exp() / total;
            assert!(
                (*count as f64 - expected).abs() < 0.1 * expected,
                "bracket {b}: {count} trials, expected about {expected}"
            );
        }
        // The same seed gives the same brackets.
        let again = Harness::new(
            AshaConfig {
                brackets: 3,
                ..config(1.0, 16.0, 2.0)
            },
            Mode::Min,
            3000,
        );
        assert_eq!(h.scheduler.trial_bracket, again.scheduler.trial_bracket);
    }

    #[test]
    fn a_later_bracket_judges_only_at_its_own_rungs() {
        let c = AshaConfig {
            brackets: 2,
            ..config(1.0, 8.0, 2.0)
        };
        let mut h = Harness::new(c, Mode::Max, 0);
        // Put trials by hand into bracket 1 (rungs 2, 4).
        for t in 0..2u32 {
            h.trials
                .push(Trial::new_pending(TrialId(t), crate::Config::new()));
            h.scheduler.trial_bracket.insert(TrialId(t), 1);
        }
        h.report(0, 1.0, 10.0);
        assert_eq!(h.report(1, 1.0, 1.0).reason, "no rung reached");
        assert_eq!(h.report(0, 2.0, 10.0).reason, "first result at rung 2");
        let d = h.report(1, 2.0, 1.0);
        assert_eq!(d.action, Action::Stop);
        assert_eq!(d.details["bracket"], json!(1));
    }

    #[test]
    fn percentile_by_selection_equals_percentile_by_sorting() {
        let by_sorting = |values: &[f64], q: f64| {
            let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
            sorted.sort_by(f64::total_cmp);
            let position = (q / 100.0) * (sorted.len() - 1) as f64;
            let (low, high) = (
                sorted[position.floor() as usize],
                sorted[position.ceil() as usize],
            );
            let fraction = position - position.floor();
            if fraction == 0.0 || low == high {
                low
            } else {
                low + fraction * (high - low)
            }
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for size in [1usize, 2, 3, 4, 5, 10, 33, 100, 1000] {
            // Ties and signed zeros too: values from a small set half of the time.
            let values: Vec<f64> = (0..size)
                .map(|i| {
                    if i % 2 == 0 {
                        [0.0, -0.0, 1.0, 2.5][rng.random_range(0..4)]
                    } else {
                        rng.random_range(-5.0..5.0)
                    }
                })
                .collect();
            for q in [0.0, 10.0, 25.0, 50.0, 66.6, 75.0, 90.0, 100.0] {
                let expected = by_sorting(&values, q);
                let got = percentile(values.iter().copied(), q).expect("values");
                assert_eq!(got.to_bits(), expected.to_bits(), "size {size}, q {q}");
            }
        }
    }

    #[test]
    fn percentile_interpolates_linearly_and_ignores_nan() {
        assert_eq!(percentile([], 50.0), None);
        assert_eq!(percentile([f64::NAN], 50.0), None);
        assert_eq!(percentile([3.0, 1.0, f64::NAN, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile([1.0, 2.0], 50.0), Some(1.5));
        assert_eq!(percentile([1.0, 2.0, 3.0, 4.0], 75.0), Some(3.25));
        assert_eq!(
            percentile([f64::NEG_INFINITY, 2.0], 50.0),
            Some(f64::NEG_INFINITY)
        );
        assert_eq!(percentile([1.0, f64::INFINITY], 50.0), Some(f64::INFINITY));
        assert_eq!(
            percentile([f64::NEG_INFINITY, f64::INFINITY], 50.0),
            Some(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn numbers_are_shown_short() {
        assert_eq!(show(5.0), "5");
        assert_eq!(show(1.75), "1.75");
        assert_eq!(show(-1.8000000000000003), "-1.8");
        assert_eq!(show(2e-5), "0.00002");
        assert_eq!(show(123456789.0), "123456789");
        assert_eq!(show(f64::NEG_INFINITY), "-inf");
        assert_eq!(show(1e-9), "1.00000e-9");
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let bad = |c: AshaConfig| AshaScheduler::new(c, "m", Mode::Min).err().unwrap().field;
        assert_eq!(bad(config(0.0, 5.0, 2.0)), "grace_period");
        assert_eq!(bad(config(f64::NAN, 5.0, 2.0)), "grace_period");
        assert_eq!(bad(config(2.0, 1.0, 2.0)), "max_t");
        assert_eq!(bad(config(1.0, 5.0, 1.0)), "reduction_factor");
        assert_eq!(bad(config(1.0, 1e30, 1.01)), "reduction_factor");
        assert_eq!(
            bad(AshaConfig {
                brackets: 0,
                ..config(1.0, 5.0, 2.0)
            }),
            "brackets"
        );
        assert_eq!(
            bad(AshaConfig {
                time_attr: " ".into(),
                ..AshaConfig::default()
            }),
            "time_attr"
        );
        let err = AshaScheduler::new(config(1.0, 5.0, 0.5), "m", Mode::Min)
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("scheduler.reduction_factor: must be more than 1")
        );
    }

    #[test]
    fn a_rolled_back_result_is_forgotten_and_the_new_one_counts() {
        let mut h = Harness::new(config(1.0, 4.0, 2.0), Mode::Max, 2);
        h.report(0, 1.0, 5.0);
        // Trial 1 reports a poor rung-1 result, then its run is lost before a checkpoint.
        assert_eq!(h.report(1, 1.0, 1.0).action, Action::Stop);
        let mut ctx = SchedulerContext::new(&mut h.rng, &h.trials);
        h.scheduler.on_trial_rollback(&mut ctx, TrialId(1), None);
        // Its rerun reaches rung 1 again: judged anew, as if the lost result never happened.
        let again = h.report(1, 1.0, 9.0);
        assert_eq!(again.action, Action::Continue, "{}", again.reason);
        assert_eq!(
            again.details["recorded"], 1,
            "only trial 0's result was there"
        );
    }
}

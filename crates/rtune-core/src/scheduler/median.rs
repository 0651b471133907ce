//! The median stopping rule (Golovin et al. 2017, "Google Vizier"), with Ray Tune's
//! `MedianStoppingRule` semantics: a trial whose best score so far is worse than the median of
//! the other trials' running means, taken at the same point in time, is stopped.
//!
//! On a result at time `t` (in units of `time_attr`):
//! 1. the result is recorded;
//! 2. before `grace_period` nothing is judged;
//! 3. the other trials that have reached `t` (their latest recorded time is `>= t`) each give
//!    the running mean of their scores over results with `grace_period <= time <= t`; with fewer
//!    than `min_samples_required` of them nothing is judged;
//! 4. if this trial's best score so far is below the median of those means, it is stopped
//!    (`hard_stop`) or paused (otherwise: it gives its slot to waiting trials and resumes later).
//!
//! Finished trials keep their results: they stay part of later medians.
//!
//! Deliberate differences from the reference: a NaN or infinite metric is the worst score (see
//! `asha::metric_value` for how such values travel in JSON);
//! a trial with no result inside the `[grace_period, t]` window (one that jumped over it) has no
//! running mean there and is left out of the median and the sample count, rather than making the
//! median NaN (which in the reference silently disables the rule).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::asha::{json_f64, percentile, show, value_and_time};
use super::{Action, Decision, InvalidSetting, Scheduler, SchedulerContext};
use crate::trial::{TrialId, TrialStatus};
use crate::{Mode, TrialResult};

/// `[scheduler]` with `type = "median"` (or `"median_stopping"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MedianStoppingConfig {
    /// The result key that measures progress.
    pub time_attr: String,
    /// No trial is judged before it reaches this much `time_attr`.
    pub grace_period: f64,
    /// How many other trials must have reached the same time before anyone is judged.
    pub min_samples_required: usize,
    /// Stop a trial below the median; `false` pauses it instead, to be resumed later.
    pub hard_stop: bool,
}

impl Default for MedianStoppingConfig {
    fn default() -> Self {
        MedianStoppingConfig {
            time_attr: "time_total_s".into(),
            grace_period: 60.0,
            min_samples_required: 3,
            hard_stop: true,
        }
    }
}

#[derive(Debug)]
pub struct MedianStoppingScheduler {
    config: MedianStoppingConfig,
    metric: String,
    mode: Mode,
    /// Every trial's recorded `(time, score)` results, in the order they arrived.
    results: BTreeMap<TrialId, Vec<(f64, f64)>>,
    /// Trials this scheduler paused (soft stop): they may resume once no new trial waits.
    paused: BTreeSet<TrialId>,
    /// Trials told to pause without a checkpoint once (the tuner warned and kept them running):
    /// later soft stops say so in the reason instead of repeating the warning at every result.
    pause_refused: BTreeSet<TrialId>,
}

impl MedianStoppingScheduler {
    pub fn new(
        config: MedianStoppingConfig,
        metric: &str,
        mode: Mode,
    ) -> Result<Self, InvalidSetting> {
        if config.time_attr.trim().is_empty() {
            return Err(InvalidSetting::new(
                "time_attr",
                "must name a result key, e.g. \"time_total_s\" or \"training_iteration\"",
            ));
        }
        if !(config.grace_period.is_finite() && config.grace_period >= 0.0) {
            return Err(InvalidSetting::new(
                "grace_period",
                format!("must be 0 or more, got {}", config.grace_period),
            ));
        }
        if config.min_samples_required == 0 {
            return Err(InvalidSetting::new(
                "min_samples_required",
                "must be at least 1 (a median of no trials means nothing)",
            ));
        }
        Ok(MedianStoppingScheduler {
            config,
            metric: metric.to_string(),
            mode,
            results: BTreeMap::new(),
            paused: BTreeSet::new(),
            pause_refused: BTreeSet::new(),
        })
    }

    /// The mean score of `trial` over its results with `grace_period <= time <= t`.
    fn running_mean(&self, results: &[(f64, f64)], t: f64) -> Option<f64> {
        let window: Vec<f64> = results
            .iter()
            .filter(|(time, _)| self.config.grace_period <= *time && *time <= t)
            .map(|(_, score)| *score)
            .collect();
        if window.is_empty() {
            return None;
        }
        // An infinite score makes the mean infinite; -inf and +inf together mean "worst".
        let mean = window.iter().sum::<f64>() / window.len() as f64;
        Some(if mean.is_nan() {
            f64::NEG_INFINITY
        } else {
            mean
        })
    }

    fn metric_of(&self, score: f64) -> f64 {
        match self.mode {
            Mode::Max => score,
            Mode::Min => -score,
        }
    }
}

impl Scheduler for MedianStoppingScheduler {
    fn name(&self) -> &'static str {
        "median"
    }

    fn save(&self) -> serde_json::Value {
        super::save_fields(&[
            ("results", serde_json::to_value(&self.results)),
            ("paused", serde_json::to_value(&self.paused)),
            ("pause_refused", serde_json::to_value(&self.pause_refused)),
        ])
    }

    fn restore(&mut self, mut state: serde_json::Value) -> Result<(), String> {
        self.results = super::load_field(&mut state, "results")?;
        self.paused = super::load_field(&mut state, "paused")?;
        self.pause_refused = super::load_field(&mut state, "pause_refused")?;
        Ok(())
    }

    fn time_attr(&self) -> Option<&str> {
        Some(&self.config.time_attr)
    }

    fn on_trial_rollback(
        &mut self,
        _ctx: &mut SchedulerContext<'_>,
        trial: TrialId,
        kept_time: Option<f64>,
    ) {
        let until = kept_time
            .filter(|t| !t.is_nan())
            .unwrap_or(f64::NEG_INFINITY);
        if let Some(results) = self.results.get_mut(&trial) {
            results.retain(|&(time, _)| time <= until);
        }
    }

    fn on_trial_result(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        result: &TrialResult,
    ) -> Decision {
        let id = result.trial;
        self.paused.remove(&id);
        let (value, time) = match value_and_time(result, &self.metric, &self.config.time_attr) {
            Ok(found) => found,
            Err(reason) => return Decision::continue_(result.trial, reason),
        };
        let attr = &self.config.time_attr;
        self.results
            .entry(id)
            .or_default()
            .push((time, self.mode.score(value)));
        if time < self.config.grace_period {
            return Decision::continue_(
                id,
                format!(
                    "in the grace period (until {attr} = {})",
                    show(self.config.grace_period)
                ),
            );
        }
        let means: Vec<f64> = self
            .results
            .iter()
            .filter(|(other, results)| {
                **other != id && results.last().is_some_and(|(latest, _)| *latest >= time)
            })
            .filter_map(|(_, results)| self.running_mean(results, time))
            .collect();
        let required = self.config.min_samples_required;
        if means.len() < required {
            return Decision::continue_(
                id,
                format!(
                    "{} other trial(s) reached {attr} = {}, {required} needed to judge",
                    means.len(),
                    show(time)
                ),
            );
        }
        let best = self
            .results
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(_, score)| *score)
            .fold(f64::NEG_INFINITY, f64::max);
        let Some(median) = percentile(means.iter().copied(), 50.0) else {
            return Decision::continue_(id, "no running means to compare with");
        };
        let details = json!({
            "time": json_f64(time),
            "best": json_f64(best),
            "median": json_f64(median),
            "samples": means.len(),
        });
        let metric = &self.metric;
        let comparison = format!(
            "best {metric} {} is {} the median {} of {} other trials' running means at {attr} {}",
            show(self.metric_of(best)),
            if best < median {
                "worse than"
            } else {
                "not worse than"
            },
            show(self.metric_of(median)),
            means.len(),
            show(time),
        );
        if best >= median {
            return Decision::continue_(id, comparison).with_details(details);
        }
        if self.config.hard_stop {
            Decision::stop(id, comparison).with_details(details)
        } else {
            let has_checkpoint = ctx.trial(id).is_some_and(|t| !t.checkpoints.is_empty());
            if !has_checkpoint && !self.pause_refused.insert(id) {
                return Decision::continue_(
                    id,
                    format!("{comparison}; it has no checkpoint to pause at, so it keeps running"),
                )
                .with_details(details);
            }
            self.paused.insert(id);
            Decision::new(
                id,
                Action::Pause,
                format!("{comparison}; paused, it resumes when no new trial waits"),
            )
            .with_details(details)
        }
    }

    fn on_trial_complete(
        &mut self,
        _ctx: &mut SchedulerContext<'_>,
        trial: TrialId,
        _last: Option<&TrialResult>,
    ) {
        self.paused.remove(&trial);
    }

    fn on_trial_error(&mut self, _ctx: &mut SchedulerContext<'_>, trial: TrialId) {
        self.paused.remove(&trial);
    }

    /// New trials first (oldest first); then the trials this rule paused, oldest first, so a
    /// soft-stopped trial runs on once nothing better is waiting and the experiment can finish.
    fn choose_trial_to_run(&mut self, ctx: &mut SchedulerContext<'_>) -> Option<TrialId> {
        if let Some(id) = super::default_choose_trial_to_run(ctx.trials) {
            return Some(id);
        }
        ctx.trials
            .iter()
            .find(|t| t.status == TrialStatus::Paused && self.paused.contains(&t.id))
            .map(|t| t.id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::CoreRng;
    use crate::tuner::Trial;
    use rand::SeedableRng;

    struct Harness {
        scheduler: MedianStoppingScheduler,
        rng: CoreRng,
        trials: Vec<Trial>,
        mode: Mode,
    }

    impl Harness {
        fn new(config: MedianStoppingConfig, mode: Mode, n: u32) -> Harness {
            Harness {
                scheduler: MedianStoppingScheduler::new(config, "loss", mode)
                    .expect("valid settings"),
                rng: CoreRng::seed_from_u64(1),
                trials: (0..n)
                    .map(|i| Trial::new_pending(TrialId(i), crate::Config::new()))
                    .collect(),
                mode,
            }
        }

        /// `goodness` is larger-is-better; in min mode the trial reports its negation.
        fn report(&mut self, trial: u32, time: f64, goodness: f64) -> Decision {
            let value = match self.mode {
                Mode::Max => goodness,
                Mode::Min => -goodness,
            };
            let mut metrics = serde_json::Map::new();
            metrics.insert("training_iteration".into(), json!(time));
            metrics.insert("loss".into(), json!(value));
            let result = TrialResult {
                trial: TrialId(trial),
                metrics,
                has_checkpoint: true,
            };
            let mut ctx = SchedulerContext::new(&mut self.rng, &self.trials);
            self.scheduler.on_trial_result(&mut ctx, &result)
        }
    }

    fn config(grace: f64, min_samples: usize) -> MedianStoppingConfig {
        MedianStoppingConfig {
            time_attr: "training_iteration".into(),
            grace_period: grace,
            min_samples_required: min_samples,
            hard_stop: true,
        }
    }

    /// Three trials with goodness 1, 2, 3 at times 1..=4; the running means at time t are the
    /// constants themselves, so the median is 2.
    fn three_trials(h: &mut Harness) {
        for t in 1..=4 {
            for (trial, goodness) in [(0, 1.0), (1, 2.0), (2, 3.0)] {
                h.report(trial, f64::from(t), goodness);
            }
        }
    }

    #[test]
    fn defaults_match_the_reference() {
        let c = MedianStoppingConfig::default();
        assert_eq!(c.time_attr, "time_total_s");
        assert_eq!(c.grace_period, 60.0);
        assert_eq!(c.min_samples_required, 3);
        assert!(c.hard_stop);
        let parsed: MedianStoppingConfig =
            serde_json::from_value(json!({"grace_period": 2})).unwrap();
        assert_eq!(parsed.grace_period, 2.0);
        assert!(serde_json::from_value::<MedianStoppingConfig>(json!({"grace": 2})).is_err());
    }

    #[test]
    fn a_trial_below_the_median_is_stopped_in_both_modes() {
        for mode in [Mode::Max, Mode::Min] {
            let mut h = Harness::new(config(1.0, 3), mode, 4);
            three_trials(&mut h);
            let d = h.report(3, 1.0, 1.5);
            assert_eq!(d.action, Action::Stop, "{mode}: {}", d.reason);
            // Details hold scores (larger is better), the same in both modes.
            assert_eq!(d.details["median"], json!(2.0));
            assert_eq!(d.details["samples"], json!(3));
            let shown = |v: f64| if mode == Mode::Max { v } else { -v };
            assert_eq!(
                d.reason,
                format!(
                    "best loss {} is worse than the median {} of 3 other trials' running means \
                     at training_iteration 1",
                    shown(1.5),
                    shown(2.0)
                )
            );
            // Equal to the median is not worse.
            let mut h = Harness::new(config(1.0, 3), mode, 4);
            three_trials(&mut h);
            let d = h.report(3, 1.0, 2.0);
            assert_eq!(d.action, Action::Continue, "{mode}: {}", d.reason);
        }
    }

    #[test]
    fn the_best_score_so_far_counts_not_the_latest() {
        for mode in [Mode::Max, Mode::Min] {
            let mut h = Harness::new(config(1.0, 3), mode, 4);
            three_trials(&mut h);
            assert_eq!(h.report(3, 1.0, 2.5).action, Action::Continue);
            // Worse now, but its best (2.5) still beats the median of the means (2).
            assert_eq!(h.report(3, 2.0, 0.0).action, Action::Continue);
        }
    }

    #[test]
    fn running_means_cover_the_window_from_the_grace_period() {
        for mode in [Mode::Max, Mode::Min] {
            let mut h = Harness::new(config(2.0, 2), mode, 3);
            // Before the grace period values do not count towards the means.
            for (trial, values) in [(0, [100.0, 1.0, 3.0]), (1, [100.0, 2.0, 4.0])] {
                for (t, v) in values.into_iter().enumerate() {
                    h.report(trial, t as f64 + 1.0, v);
                }
            }
            let d = h.report(2, 1.0, -50.0);
            assert_eq!(d.action, Action::Continue, "{}", d.reason);
            assert!(d.reason.starts_with("in the grace period"), "{}", d.reason);
            // At t = 3: means 2 and 3, median 2.5; its best 2.4 loses.
            h.report(2, 2.0, 2.4);
            let d = h.report(2, 3.0, 0.0);
            assert_eq!(d.action, Action::Stop, "{mode}: {}", d.reason);
            let median = d.details["median"].as_f64().unwrap();
            assert!((median - 2.5).abs() < 1e-12, "{median}");
        }
    }

    #[test]
    fn only_trials_that_reached_the_same_time_count_and_min_samples_is_respected() {
        for mode in [Mode::Max, Mode::Min] {
            let mut h = Harness::new(config(1.0, 3), mode, 5);
            // Trials 0 and 1 reached time 5, trial 2 only time 2.
            for t in 1..=5 {
                h.report(0, f64::from(t), 5.0);
                h.report(1, f64::from(t), 5.0);
            }
            h.report(2, 1.0, 5.0);
            h.report(2, 2.0, 5.0);
            let d = h.report(3, 3.0, 0.0);
            assert_eq!(d.action, Action::Continue, "{}", d.reason);
            assert_eq!(
                d.reason,
                "2 other trial(s) reached training_iteration = 3, 3 needed to judge"
            );
            // At time 2 four others have reached it, but trial 3 has no result in [1, 2]: it
            // has no running mean there and does not count.
            let d = h.report(4, 2.0, 0.0);
            assert_eq!(d.action, Action::Stop, "{mode}: {}", d.reason);
            assert_eq!(d.details["samples"], json!(3));
        }
    }

    #[test]
    fn a_trial_that_jumped_over_the_window_is_left_out() {
        let mut h = Harness::new(config(2.0, 1), Mode::Max, 3);
        // Trial 0 reports at 1 (before grace) and then at 10: nothing in [2, 3].
        h.report(0, 1.0, 9.0);
        h.report(0, 10.0, 9.0);
        h.report(1, 3.0, 5.0);
        let d = h.report(2, 3.0, 4.0);
        assert_eq!(d.action, Action::Stop, "{}", d.reason);
        assert_eq!(
            d.details["samples"],
            json!(1),
            "only trial 1 has a mean at 3"
        );
    }

    #[test]
    fn a_nan_metric_is_the_worst() {
        let mut h = Harness::new(config(1.0, 1), Mode::Min, 2);
        h.report(0, 1.0, -5.0);
        let d = h.report(1, 1.0, f64::NAN);
        assert_eq!(d.action, Action::Stop, "{}", d.reason);
    }

    #[test]
    fn soft_stop_pauses_and_resumes_after_new_trials() {
        let c = MedianStoppingConfig {
            hard_stop: false,
            ..config(1.0, 1)
        };
        let mut h = Harness::new(c, Mode::Max, 3);
        h.trials[0].status = TrialStatus::Running;
        h.trials[1].status = TrialStatus::Running;
        h.report(0, 1.0, 5.0);
        let d = h.report(1, 1.0, 1.0);
        assert_eq!(d.action, Action::Pause);
        assert!(d.reason.contains("paused"), "{}", d.reason);
        h.trials[1].status = TrialStatus::Paused;
        h.trials[1].resumable = false;
        let mut ctx = SchedulerContext::new(&mut h.rng, &h.trials);
        assert_eq!(
            h.scheduler.choose_trial_to_run(&mut ctx),
            Some(TrialId(2)),
            "a new trial runs before a paused one"
        );
        h.trials[2].status = TrialStatus::Running;
        let mut ctx = SchedulerContext::new(&mut h.rng, &h.trials);
        assert_eq!(h.scheduler.choose_trial_to_run(&mut ctx), Some(TrialId(1)));
        assert_eq!(
            h.scheduler.choose_trial_to_run(&mut ctx),
            Some(TrialId(1)),
            "asking twice changes nothing"
        );
    }

    #[test]
    fn soft_stopped_trials_are_resumed_so_the_experiment_ends() {
        use crate::searcher::FixedSearcher;
        use crate::tuner::{Exit, Tuner, TunerSettings};
        let c = MedianStoppingConfig {
            hard_stop: false,
            ..config(1.0, 1)
        };
        let scheduler = MedianStoppingScheduler::new(c, "loss", Mode::Min).expect("valid");
        let settings = TunerSettings {
            metric: "loss".into(),
            mode: Mode::Min,
            seed: 1,
            max_failures: 0,
            stop: BTreeMap::from([("training_iteration".to_string(), 4.0)]),
            ..TunerSettings::default()
        };
        let configs = (0..3)
            .map(|i: u32| {
                let mut c = crate::Config::new();
                c.insert("x".into(), i.into());
                c
            })
            .collect();
        let mut tuner = Tuner::new(
            settings,
            Box::new(FixedSearcher::new(configs)),
            Box::new(scheduler),
        );
        let mut pauses = 0;
        let mut now = 0.0;
        // One slot; trial x reports loss x (trial 0 is best), always with a checkpoint.
        while let Some(launch) = tuner.next_to_run(now) {
            loop {
                now += 1.0;
                let loss = launch.config["x"].as_f64().expect("x");
                let mut metrics = serde_json::Map::new();
                metrics.insert("loss".into(), json!(loss));
                let reply = tuner
                    .on_result(launch.trial, metrics, true, now)
                    .expect("running");
                if reply.action != Action::Continue {
                    pauses += usize::from(reply.action == Action::Pause);
                    tuner
                        .on_exit(launch.trial, Exit::Success, now)
                        .expect("exit");
                    break;
                }
            }
            assert!(now < 1000.0, "the experiment does not end");
        }
        assert!(tuner.is_finished());
        assert!(pauses > 0, "worse trials were paused");
        for trial in tuner.trials() {
            assert_eq!(trial.status, TrialStatus::Terminated);
            assert_eq!(trial.iteration, 4, "{}", trial.display_name());
        }
    }

    #[test]
    fn soft_stop_without_checkpoint_asks_once_then_explains() {
        let c = MedianStoppingConfig {
            hard_stop: false,
            ..config(1.0, 1)
        };
        let mut h = Harness::new(c, Mode::Min, 2);
        for t in 1..=3 {
            h.report(0, f64::from(t), 5.0);
        }
        // First time: Pause (the tuner warns and keeps it running).
        assert_eq!(h.report(1, 1.0, 1.0).action, Action::Pause);
        let d = h.report(1, 2.0, 1.0);
        assert_eq!(d.action, Action::Continue);
        assert!(
            d.reason
                .ends_with("no checkpoint to pause at, so it keeps running"),
            "{}",
            d.reason
        );
        // With a checkpoint it is paused.
        h.trials[1].checkpoints.insert(2, 2.0);
        assert_eq!(h.report(1, 3.0, 1.0).action, Action::Pause);
    }

    #[test]
    fn missing_keys_continue_with_the_reason() {
        let mut h = Harness::new(config(1.0, 1), Mode::Max, 1);
        let result = TrialResult {
            trial: TrialId(0),
            metrics: serde_json::Map::new(),
            has_checkpoint: false,
        };
        let mut ctx = SchedulerContext::new(&mut h.rng, &h.trials);
        let d = h.scheduler.on_trial_result(&mut ctx, &result);
        assert_eq!(d.action, Action::Continue);
        assert!(d.reason.starts_with("result lacks loss"));
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let bad = |c: MedianStoppingConfig| {
            MedianStoppingScheduler::new(c, "loss", Mode::Min)
                .err()
                .unwrap()
                .field
        };
        assert_eq!(bad(config(-1.0, 3)), "grace_period");
        assert_eq!(bad(config(f64::INFINITY, 3)), "grace_period");
        assert_eq!(bad(config(1.0, 0)), "min_samples_required");
        assert_eq!(
            bad(MedianStoppingConfig {
                time_attr: String::new(),
                ..MedianStoppingConfig::default()
            }),
            "time_attr"
        );
    }
}

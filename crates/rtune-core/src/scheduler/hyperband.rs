//! Synchronous HyperBand (Li et al. 2018) with Ray Tune's `HyperBandScheduler` semantics.
//!
//! With `eta = reduction_factor`, there are `s_max + 1 = floor(log_eta(max_t)) + 1` kinds of
//! bracket. Bracket `s` takes `n0 = ceil((s_max + 1) / (s + 1) * eta^s)` trials and has rungs at
//! `r0 * eta^k` for `k = 0..s`, `r0 = max_t * eta^-s`, the last one being `max_t`. New trials
//! fill one bracket at a time, starting with the most aggressive (`s = s_max`, many trials,
//! short rungs) and cycling down to `s = 0` (few trials, all trained to `max_t`), then again.
//!
//! A trial runs until it reaches its bracket's current rung, then it is PAUSED (the tuner needs
//! a checkpoint to pause it). Once every trial of the bracket that is still competing has
//! reached the rung, the best `floor(n / eta)` of the `n` (at least one) are resumed towards
//! the next rung and the rest are stopped. At the last rung (`max_t`) trials are stopped
//! (`stop_last_trials`) or left to run on.
//!
//! Every trial is created up front ([`Scheduler::creates_population`]), so bracket membership is
//! known before anything runs; a bracket that the searcher could not fill is complete with the
//! trials it has. Trials that finish on their own, are stopped by the experiment's stop
//! criteria, or fail for good leave their bracket at once, so a bracket never waits for them.
//!
//! Rung judgement uses a trial's score at its first result at or beyond the milestone. A trial
//! that reaches a rung without any checkpoint cannot be paused: the tuner keeps it running and
//! warns. It then waits "on its feet": its later results are answered with continue (or pause,
//! once it has a checkpoint) and do not change its rung score, so it gains no advantage from the
//! extra training when the bracket is judged.
//!
//! Deliberate differences from the reference: rungs are `max_t * eta^-(s-k)` exactly (the
//! reference truncates them to integers, so with `max_t = 5, eta = 2` it never trains anything
//! to 5); brackets start with the most aggressive one, so a small experiment still gets early
//! stopping; and a NaN or infinite metric is the worst score (as in ASHA).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::asha::{json_f64, show, value_and_time};
use super::{Budget, Decision, InvalidSetting, Scheduler, SchedulerContext};
use crate::scheduler::Action;
use crate::trial::{TrialId, TrialStatus};
use crate::{Mode, TrialResult};

/// `[scheduler]` with `type = "hyperband"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HyperBandConfig {
    /// The result key that measures progress (rungs and `max_t` are in its units).
    pub time_attr: String,
    /// The longest any trial trains; the last rung of every bracket.
    pub max_t: f64,
    /// `eta`: rungs are this factor apart and `1/eta` of the trials pass each one.
    pub reduction_factor: f64,
    /// Stop trials once they reach `max_t`.
    pub stop_last_trials: bool,
}

impl Default for HyperBandConfig {
    fn default() -> Self {
        HyperBandConfig {
            time_attr: "training_iteration".into(),
            max_t: 81.0,
            reduction_factor: 3.0,
            stop_last_trials: true,
        }
    }
}

/// A trial's score where it first reached the current rung.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Arrival {
    score: f64,
    value: f64,
    time: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Bracket {
    /// `s`: how many times the bracket halves its trials.
    halvings: u32,
    /// `n0`: how many trials it takes.
    capacity: usize,
    /// `milestones[k] = max_t * eta^-(s-k)` for `k = 0..=s`; the last is `max_t`.
    milestones: Vec<f64>,
    /// Index of the current rung in `milestones`.
    rung: usize,
    members: Vec<TrialId>,
    /// Members still competing: not stopped, finished or failed.
    live: BTreeSet<TrialId>,
    /// Live members that reached the current rung.
    arrived: BTreeMap<TrialId, Arrival>,
}

impl Bracket {
    fn at_last_rung(&self) -> bool {
        self.rung + 1 >= self.milestones.len()
    }

    /// New members join only until the bracket is full or has judged its first rung.
    fn open(&self) -> bool {
        self.members.len() < self.capacity && self.rung == 0
    }

    fn rung_complete(&self) -> bool {
        !self.at_last_rung()
            && !self.live.is_empty()
            && self.live.iter().all(|t| self.arrived.contains_key(t))
    }

    fn waiting_for(&self) -> usize {
        self.live.len().saturating_sub(self.arrived.len())
    }
}

#[derive(Debug)]
pub struct HyperBandScheduler {
    config: HyperBandConfig,
    metric: String,
    mode: Mode,
    /// `s_max`: the most aggressive bracket halves this many times.
    s_max: u32,
    brackets: Vec<Bracket>,
    trial_bracket: BTreeMap<TrialId, usize>,
    /// Paused trials promoted to the next rung, waiting for a slot.
    released: BTreeSet<TrialId>,
}

impl HyperBandScheduler {
    pub fn new(config: HyperBandConfig, metric: &str, mode: Mode) -> Result<Self, InvalidSetting> {
        if config.time_attr.trim().is_empty() {
            return Err(InvalidSetting::new(
                "time_attr",
                "must name a result key, e.g. \"training_iteration\"",
            ));
        }
        if !(config.max_t.is_finite() && config.max_t > 0.0) {
            return Err(InvalidSetting::new(
                "max_t",
                format!("must be more than 0, got {}", config.max_t),
            ));
        }
        let eta = config.reduction_factor;
        if !(eta.is_finite() && eta > 1.0) {
            return Err(InvalidSetting::new(
                "reduction_factor",
                format!(
                    "must be more than 1 (3 keeps a third of the trials at each rung), got {eta}"
                ),
            ));
        }
        // The tolerance keeps exact powers (max_t = eta^k) from losing a bracket to rounding.
        let levels = (config.max_t.ln() / eta.ln() + 1e-9).floor().max(0.0);
        if levels >= 64.0 {
            return Err(InvalidSetting::new(
                "reduction_factor",
                format!(
                    "gives {} brackets for max_t {}; raise reduction_factor",
                    levels + 1.0,
                    config.max_t
                ),
            ));
        }
        Ok(HyperBandScheduler {
            config,
            metric: metric.to_string(),
            mode,
            s_max: levels as u32,
            brackets: Vec::new(),
            trial_bracket: BTreeMap::new(),
            released: BTreeSet::new(),
        })
    }

    /// A new, empty bracket that halves `s` times.
    fn new_bracket(&self, s: u32) -> Bracket {
        let eta = self.config.reduction_factor;
        let n0 = (f64::from(self.s_max + 1) / f64::from(s + 1) * eta.powi(s as i32)).ceil();
        // Dividing by an exact power keeps milestones like 81 / 3^4 = 1 exact.
        let milestones = (0..=s)
            .map(|k| self.config.max_t / eta.powi((s - k) as i32))
            .collect();
        Bracket {
            halvings: s,
            capacity: (n0 as usize).max(1),
            milestones,
            rung: 0,
            members: Vec::new(),
            live: BTreeSet::new(),
            arrived: BTreeMap::new(),
        }
    }

    fn join_bracket(&mut self, trial: TrialId) -> usize {
        if let Some(&b) = self.trial_bracket.get(&trial) {
            return b;
        }
        let open = self.brackets.last().is_some_and(Bracket::open);
        if !open {
            // Cycle from the most aggressive bracket down to s = 0, then start over.
            let s = match self.brackets.last() {
                Some(last) if last.halvings > 0 => last.halvings - 1,
                _ => self.s_max,
            };
            let bracket = self.new_bracket(s);
            self.brackets.push(bracket);
        }
        let b = self.brackets.len() - 1;
        let bracket = &mut self.brackets[b];
        bracket.members.push(trial);
        bracket.live.insert(trial);
        self.trial_bracket.insert(trial, b);
        b
    }

    /// Judge bracket `b`'s complete rung: the best `floor(n / eta)` (at least one) go on, the
    /// rest stop. Returns the decision for `reporting` if it is in the bracket; decisions about
    /// other trials go to the outbox.
    fn judge_rung(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        b: usize,
        reporting: Option<TrialId>,
    ) -> Option<Decision> {
        let eta = self.config.reduction_factor;
        let attr = self.config.time_attr.clone();
        let bracket = &self.brackets[b];
        let milestone = bracket.milestones[bracket.rung];
        let next = bracket.milestones[bracket.rung + 1];
        let next_is_last = bracket.rung + 2 == bracket.milestones.len();
        let halvings = bracket.halvings;
        let mut ranking: Vec<(TrialId, Arrival)> =
            bracket.arrived.iter().map(|(t, a)| (*t, *a)).collect();
        // Best first; equal scores go to the older trial.
        ranking.sort_by(|(ta, a), (tb, b)| b.score.total_cmp(&a.score).then(ta.cmp(tb)));
        let n = ranking.len();
        let keep = ((n as f64 / eta).floor() as usize).max(1);
        let towards = if next_is_last {
            format!("max_t = {}", show(next))
        } else {
            format!("the rung at {attr} {}", show(next))
        };
        let mut own = None;
        let mut stopped = Vec::new();
        for (rank, (trial, arrival)) in ranking.into_iter().enumerate() {
            let details = json!({
                "bracket": b,
                "halvings": halvings,
                "rung": json_f64(milestone),
                "rank": rank + 1,
                "keep": keep,
                "competing": n,
                "score": json_f64(arrival.score),
                "time": json_f64(arrival.time),
            });
            let shown = format!(
                "bracket {b} rung {}: {} {}",
                show(milestone),
                self.metric,
                show(arrival.value)
            );
            let decision = if rank < keep {
                // A running trial that is not being paused goes straight on; the others resume
                // when a slot frees up.
                let goes_straight_on = ctx
                    .trial(trial)
                    .is_some_and(|t| t.status == TrialStatus::Running && t.ending.is_none());
                if !goes_straight_on {
                    self.released.insert(trial);
                }
                Decision::continue_(
                    trial,
                    format!(
                        "{shown} is in the best {keep} of {n}, {} towards {towards}",
                        if goes_straight_on {
                            "continues"
                        } else {
                            "resumes"
                        }
                    ),
                )
            } else {
                stopped.push(trial);
                Decision::stop(
                    trial,
                    format!("{shown} is not in the best {keep} of {n}, stops"),
                )
            }
            .with_details(details);
            if Some(trial) == reporting {
                own = Some(decision);
            } else {
                ctx.outbox.push(decision);
            }
        }
        let bracket = &mut self.brackets[b];
        for trial in stopped {
            bracket.live.remove(&trial);
        }
        bracket.arrived.clear();
        bracket.rung += 1;
        own
    }

    /// A trial left the competition (finished, stopped from outside, failed): its bracket may
    /// now be complete without it.
    fn depart(&mut self, ctx: &mut SchedulerContext<'_>, trial: TrialId) {
        self.released.remove(&trial);
        let Some(&b) = self.trial_bracket.get(&trial) else {
            return;
        };
        let bracket = &mut self.brackets[b];
        if !bracket.live.remove(&trial) {
            return;
        }
        bracket.arrived.remove(&trial);
        if bracket.rung_complete() {
            self.judge_rung(ctx, b, None);
        }
    }

    /// Per bracket: `(halvings, capacity, milestones, members)`, for tests.
    #[cfg(test)]
    fn plan(&self) -> Vec<(u32, usize, Vec<f64>, usize)> {
        self.brackets
            .iter()
            .map(|b| {
                (
                    b.halvings,
                    b.capacity,
                    b.milestones.clone(),
                    b.members.len(),
                )
            })
            .collect()
    }
}

impl Scheduler for HyperBandScheduler {
    fn name(&self) -> &'static str {
        "hyperband"
    }

    fn save(&self) -> serde_json::Value {
        super::save_fields(&[
            ("brackets", serde_json::to_value(&self.brackets)),
            ("trial_bracket", serde_json::to_value(&self.trial_bracket)),
            ("released", serde_json::to_value(&self.released)),
        ])
    }

    fn restore(&mut self, mut state: serde_json::Value) -> Result<(), String> {
        self.brackets = super::load_field(&mut state, "brackets")?;
        self.trial_bracket = super::load_field(&mut state, "trial_bracket")?;
        self.released = super::load_field(&mut state, "released")?;
        Ok(())
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

    fn creates_population(&self) -> bool {
        true
    }

    fn on_trial_add(&mut self, _ctx: &mut SchedulerContext<'_>, trial: TrialId) {
        self.join_bracket(trial);
    }

    fn on_trial_result(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        result: &TrialResult,
    ) -> Decision {
        let id = result.trial;
        self.released.remove(&id);
        let attr = self.config.time_attr.clone();
        let (value, time) = match value_and_time(result, &self.metric, &attr) {
            Ok(found) => found,
            Err(reason) => return Decision::continue_(result.trial, reason),
        };
        let b = self.join_bracket(id);
        let score = self.mode.score(value);
        let max_t = self.config.max_t;
        let stop_last = self.config.stop_last_trials;
        let metric = self.metric.clone();
        let bracket = &mut self.brackets[b];
        if !bracket.live.contains(&id) {
            return Decision::stop(id, format!("bracket {b}: no longer competing"));
        }
        if bracket.at_last_rung() {
            if stop_last && time >= max_t {
                bracket.live.remove(&id);
                return Decision::stop(id, format!("bracket {b}: reached max_t = {}", show(max_t)))
                    .with_details(json!({"bracket": b, "max_t": json_f64(max_t)}));
            }
            return Decision::continue_(
                id,
                format!("bracket {b}: last rung, runs to max_t = {}", show(max_t)),
            );
        }
        let milestone = bracket.milestones[bracket.rung];
        let rung = show(milestone);
        if let Some(arrival) = bracket.arrived.get(&id).copied() {
            // It reached the rung earlier but kept running (no checkpoint to pause at), or it
            // is re-running after a failure. Its rung score stays the one at the milestone.
            let waiting = bracket.waiting_for();
            let details = json!({
                "bracket": b,
                "rung": json_f64(milestone),
                "waiting_for": waiting,
                "score": json_f64(arrival.score),
            });
            let has_checkpoint = ctx.trial(id).is_some_and(|t| !t.checkpoints.is_empty());
            return if has_checkpoint {
                Decision::new(
                    id,
                    Action::Pause,
                    format!(
                        "bracket {b} rung {rung}: waits for {waiting} more trial(s), judged by \
                         its {metric} {} at {attr} {}",
                        show(arrival.value),
                        show(arrival.time)
                    ),
                )
            } else {
                Decision::continue_(
                    id,
                    format!(
                        "bracket {b} rung {rung}: waits for {waiting} more trial(s) but has no \
                         checkpoint to pause at, so it keeps running; it is judged by its \
                         {metric} {} at {attr} {}",
                        show(arrival.value),
                        show(arrival.time)
                    ),
                )
            }
            .with_details(details);
        }
        if time < milestone {
            return Decision::continue_(id, format!("bracket {b}: next rung at {attr} {rung}"));
        }
        bracket.arrived.insert(id, Arrival { score, value, time });
        if bracket.rung_complete() {
            if let Some(decision) = self.judge_rung(ctx, b, Some(id)) {
                return decision;
            }
            return Decision::continue_(id, format!("bracket {b} rung {rung}: judged"));
        }
        let waiting = bracket.waiting_for();
        Decision::new(
            id,
            Action::Pause,
            format!(
                "bracket {b} rung {rung}: reached {attr} {}, waits for {waiting} more trial(s) \
                 of the bracket",
                show(time)
            ),
        )
        .with_details(json!({
            "bracket": b,
            "rung": json_f64(milestone),
            "waiting_for": waiting,
            "score": json_f64(score),
        }))
    }

    fn on_trial_complete(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        trial: TrialId,
        _last: Option<&TrialResult>,
    ) {
        self.depart(ctx, trial);
    }

    fn on_trial_error(&mut self, ctx: &mut SchedulerContext<'_>, trial: TrialId) {
        self.depart(ctx, trial);
    }

    /// Bracket by bracket, oldest first: promoted paused trials, then trials not started yet.
    /// Paused trials that wait for their bracket are never chosen.
    fn choose_trial_to_run(&mut self, ctx: &mut SchedulerContext<'_>) -> Option<TrialId> {
        let status = |id: &TrialId| ctx.status(*id);
        for bracket in &self.brackets {
            let promoted = bracket
                .members
                .iter()
                .find(|id| status(id) == Some(TrialStatus::Paused) && self.released.contains(id));
            let fresh = || {
                bracket
                    .members
                    .iter()
                    .find(|id| status(id) == Some(TrialStatus::Pending))
            };
            if let Some(id) = promoted.or_else(fresh) {
                return Some(*id);
            }
        }
        super::default_choose_trial_to_run(ctx.trials)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::searcher::FixedSearcher;
    use crate::tuner::{Effect, Exit, MissingMetric, Tuner, TunerSettings};
    use crate::{Config, CoreRng};
    use rand::SeedableRng;

    fn hyperband(max_t: f64, eta: f64, mode: Mode) -> HyperBandScheduler {
        let config = HyperBandConfig {
            max_t,
            reduction_factor: eta,
            ..HyperBandConfig::default()
        };
        HyperBandScheduler::new(config, "loss", mode).expect("valid settings")
    }

    /// One thing that happened, in order, for assertions about the sequence.
    #[derive(Clone, Debug, PartialEq)]
    enum Event {
        Launch {
            trial: u32,
            run: u32,
        },
        Report {
            trial: u32,
            iteration: u64,
            action: Action,
        },
    }

    /// A tuner with `n` trials `{"x": i}` and a hand-driven "runner".
    struct Sim {
        tuner: Tuner,
        running: Vec<TrialId>,
        now: f64,
        events: Vec<Event>,
        decisions: Vec<Decision>,
        warnings: Vec<String>,
        mode: Mode,
    }

    impl Sim {
        fn new(scheduler: HyperBandScheduler, n: u32) -> Sim {
            Sim::with_missing_metric(scheduler, n, MissingMetric::Error)
        }

        fn with_missing_metric(
            scheduler: HyperBandScheduler,
            n: u32,
            missing_metric: MissingMetric,
        ) -> Sim {
            let mode = scheduler.mode;
            let settings = TunerSettings {
                metric: "loss".into(),
                mode,
                seed: 11,
                max_failures: 0,
                stop: std::collections::BTreeMap::new(),
                missing_metric,
                ..TunerSettings::default()
            };
            let configs = (0..n)
                .map(|i| {
                    let mut c = Config::new();
                    c.insert("x".into(), i.into());
                    c
                })
                .collect();
            Sim {
                tuner: Tuner::new(
                    settings,
                    Box::new(FixedSearcher::new(configs)),
                    Box::new(scheduler),
                ),
                running: Vec::new(),
                now: 0.0,
                events: Vec::new(),
                decisions: Vec::new(),
                warnings: Vec::new(),
                mode,
            }
        }

        /// Fill up to `slots` running trials.
        fn fill(&mut self, slots: usize) {
            while self.running.len() < slots {
                let Some(launch) = self.tuner.next_to_run(self.now) else {
                    break;
                };
                // HyperBand never restarts a trial from scratch nor from another trial.
                assert!(
                    launch.run == 0 || launch.restore.is_some_and(|c| c.trial == launch.trial),
                    "{launch:?}"
                );
                self.events.push(Event::Launch {
                    trial: launch.trial.0,
                    run: launch.run,
                });
                self.running.push(launch.trial);
                self.collect();
            }
        }

        fn collect(&mut self) {
            for effect in self.tuner.drain_effects() {
                match effect {
                    Effect::Decision(d) => self.decisions.push(d),
                    Effect::EndProcess { trial } => {
                        self.running.retain(|r| *r != trial);
                        self.tuner
                            .on_exit(trial, Exit::Success, self.now)
                            .expect("a running trial exits");
                        self.collect();
                    }
                    Effect::Warning { message, .. } => self.warnings.push(message),
                    _ => {}
                }
            }
        }

        /// `goodness` is larger-is-better; in min mode the trial reports its negation as loss.
        fn report(&mut self, trial: u32, goodness: f64, checkpoint: bool) -> Action {
            self.now += 1.0;
            let id = TrialId(trial);
            let loss = match self.mode {
                Mode::Max => goodness,
                Mode::Min => -goodness,
            };
            let mut metrics = serde_json::Map::new();
            metrics.insert("loss".into(), json!(loss));
            let reply = self
                .tuner
                .on_result(id, metrics, checkpoint, self.now)
                .expect("a running trial reports");
            self.events.push(Event::Report {
                trial,
                iteration: reply.result.iteration(),
                action: reply.action.clone(),
            });
            self.collect();
            if reply.action != Action::Continue && self.running.contains(&id) {
                self.running.retain(|r| *r != id);
                self.tuner
                    .on_exit(id, Exit::Success, self.now)
                    .expect("a running trial exits");
                self.collect();
            }
            reply.action
        }

        fn fail(&mut self, trial: u32) {
            let id = TrialId(trial);
            self.running.retain(|r| *r != id);
            self.tuner
                .on_exit(id, Exit::Failure("exit code 1".into()), self.now)
                .expect("a running trial fails");
            self.collect();
        }

        /// Run everything to the end with `slots` slots; every trial's goodness is
        /// `quality(x) + iteration / 100` and every report has a checkpoint.
        fn run(&mut self, slots: usize, quality: impl Fn(u32) -> f64) {
            for _ in 0..10_000 {
                self.fill(slots);
                let Some(&id) = self.running.iter().min() else {
                    assert!(self.tuner.is_finished(), "nothing runs but trials are left");
                    return;
                };
                let iteration = self.tuner.trial(id).unwrap().iteration + 1;
                self.report(id.0, quality(id.0) + iteration as f64 / 100.0, true);
            }
            panic!("the experiment did not finish");
        }

        fn iteration(&self, trial: u32) -> u64 {
            self.tuner.trial(TrialId(trial)).unwrap().iteration
        }

        fn status(&self, trial: u32) -> TrialStatus {
            self.tuner.trial(TrialId(trial)).unwrap().status
        }
    }

    fn add_trials(scheduler: &mut HyperBandScheduler, n: u32) {
        let mut rng = CoreRng::seed_from_u64(0);
        let trials = Vec::new();
        let mut ctx = SchedulerContext::new(&mut rng, &trials);
        for i in 0..n {
            scheduler.on_trial_add(&mut ctx, TrialId(i));
        }
    }

    #[test]
    fn bracket_sizes_for_max_t_81_eta_3() {
        let mut s = hyperband(81.0, 3.0, Mode::Min);
        add_trials(&mut s, 81 + 34 + 15 + 8 + 5 + 1);
        assert_eq!(
            s.plan(),
            vec![
                (4, 81, vec![1.0, 3.0, 9.0, 27.0, 81.0], 81),
                (3, 34, vec![3.0, 9.0, 27.0, 81.0], 34),
                (2, 15, vec![9.0, 27.0, 81.0], 15),
                (1, 8, vec![27.0, 81.0], 8),
                (0, 5, vec![81.0], 5),
                // Then the cycle starts over with the most aggressive bracket.
                (4, 81, vec![1.0, 3.0, 9.0, 27.0, 81.0], 1),
            ]
        );
    }

    #[test]
    fn bracket_sizes_for_max_t_5_eta_2() {
        let mut s = hyperband(5.0, 2.0, Mode::Min);
        add_trials(&mut s, 10);
        assert_eq!(
            s.plan(),
            vec![
                (2, 4, vec![1.25, 2.5, 5.0], 4),
                (1, 3, vec![2.5, 5.0], 3),
                (0, 3, vec![5.0], 3),
            ]
        );
    }

    /// A quality ranking that is not the trial order: x -> (7 x) mod 10.
    fn quality(x: u32) -> f64 {
        f64::from((x * 7) % 10)
    }

    #[test]
    fn successive_halving_promotes_the_best_of_each_rung() {
        for mode in [Mode::Min, Mode::Max] {
            let mut sim = Sim::new(hyperband(5.0, 2.0, mode), 10);
            sim.run(3, quality);
            // Bracket 0 (trials 0-3, rungs 1.25, 2.5, 5): qualities 0, 7, 4, 1. All reach 2,
            // the best 2 (trials 1, 2) reach 3, the best (trial 1) reaches max_t = 5.
            // Bracket 1 (trials 4-6, rungs 2.5, 5): qualities 8, 5, 2: trial 4 goes on to 5.
            // Bracket 2 (trials 7-9): no halving, all to 5.
            let expected = [2, 5, 3, 2, 5, 3, 3, 5, 5, 5];
            for (trial, want) in expected.into_iter().enumerate() {
                assert_eq!(sim.iteration(trial as u32), want, "{mode}: trial {trial}");
                assert_eq!(sim.status(trial as u32), TrialStatus::Terminated);
            }
            let promoted = sim
                .decisions
                .iter()
                .find(|d| d.trial == TrialId(1) && d.reason.contains("best 2 of 4"))
                .expect("trial 1 promoted at the first rung");
            assert_eq!(
                promoted.reason,
                format!(
                    "bracket 0 rung 1.25: loss {} is in the best 2 of 4, resumes towards the \
                     rung at training_iteration 2.5",
                    show(if mode == Mode::Min { -7.02 } else { 7.02 })
                )
            );
            assert_eq!(promoted.details["rank"], json!(1));
            assert_eq!(promoted.details["keep"], json!(2));
            let stopped = sim
                .decisions
                .iter()
                .find(|d| d.trial == TrialId(0) && d.action == Action::Stop)
                .expect("trial 0 stopped");
            assert!(
                stopped.reason.starts_with("bracket 0 rung 1.25: loss")
                    && stopped.reason.ends_with("is not in the best 2 of 4, stops"),
                "{}",
                stopped.reason
            );
            // (Every resumed trial restarted from its own checkpoint: checked at each launch.)
        }
    }

    #[test]
    fn paused_trials_resume_only_after_their_bracket_reached_the_rung() {
        let mut sim = Sim::new(hyperband(5.0, 2.0, Mode::Min), 10);
        sim.run(2, quality);
        for (members, rung_time) in [(0..4u32, 2u64), (4..7, 3)] {
            // The last report of any member at the rung's time.
            let all_arrived = sim
                .events
                .iter()
                .rposition(|e| {
                    matches!(e, Event::Report { trial, iteration, .. }
                        if members.contains(trial) && *iteration == rung_time)
                })
                .expect("the bracket reached its first rung");
            let first_resume = sim
                .events
                .iter()
                .position(|e| {
                    matches!(e, Event::Launch { trial, run } if members.contains(trial) && *run > 0)
                })
                .expect("someone was resumed");
            assert!(
                first_resume > all_arrived,
                "bracket {members:?}: a trial resumed before all reached the rung"
            );
        }
        // Everyone paused at a rung did pause (checkpoints everywhere): no warnings.
        assert!(sim.warnings.is_empty(), "{:?}", sim.warnings);
    }

    #[test]
    fn min_and_max_modes_decide_the_same_on_mirrored_metrics() {
        let run = |mode: Mode| {
            let mut sim = Sim::new(hyperband(9.0, 3.0, mode), 20);
            sim.run(4, |x| f64::from((x * 13) % 17));
            let decisions: Vec<(TrialId, Action, serde_json::Value)> = sim
                .decisions
                .into_iter()
                .map(|d| (d.trial, d.action, d.details))
                .collect();
            (decisions, sim.events)
        };
        let (min, min_events) = run(Mode::Min);
        let (max, max_events) = run(Mode::Max);
        assert_eq!(min, max);
        assert_eq!(min_events, max_events);
        assert!(min.iter().any(|(_, a, _)| *a == Action::Stop));
    }

    #[test]
    fn a_trial_failing_mid_rung_does_not_hang_the_bracket() {
        // max_t 9, eta 3: the first bracket (rungs 1, 3, 9) takes 9 trials but gets only 3.
        let mut sim = Sim::new(hyperband(9.0, 3.0, Mode::Min), 3);
        sim.fill(3);
        assert_eq!(sim.report(0, 1.0, true), Action::Pause);
        assert_eq!(sim.report(1, 2.0, true), Action::Pause);
        assert!(
            sim.tuner.next_to_run(sim.now).is_none(),
            "paused trials wait for the third"
        );
        sim.fail(2);
        assert_eq!(sim.status(2), TrialStatus::Error);
        // Two trials competed: floor(2 / 3) = 0, but at least one goes on: trial 1.
        assert_eq!(sim.status(0), TrialStatus::Terminated);
        let launch = sim.tuner.next_to_run(sim.now).expect("trial 1 resumes");
        assert_eq!(launch.trial, TrialId(1));
        assert_eq!(launch.restore.map(|c| c.iteration), Some(1));
        sim.running.push(launch.trial);
        sim.collect();
        // Alone in its bracket it passes rung 3 at once and is stopped at max_t = 9.
        for _ in 2..9 {
            assert_eq!(sim.report(1, 2.0, true), Action::Continue);
        }
        assert_eq!(sim.report(1, 2.0, true), Action::Stop);
        assert_eq!(sim.iteration(1), 9);
        assert!(sim.tuner.next_to_run(sim.now).is_none());
        assert!(sim.tuner.is_finished());
    }

    #[test]
    fn a_trial_finishing_on_its_own_leaves_the_bracket() {
        let mut sim = Sim::new(hyperband(9.0, 3.0, Mode::Max), 2);
        sim.fill(2);
        assert_eq!(sim.report(0, 1.0, true), Action::Pause);
        // Trial 1's process ends before it reaches the rung.
        sim.running.retain(|r| *r != TrialId(1));
        sim.tuner
            .on_exit(TrialId(1), Exit::Success, sim.now)
            .expect("exit");
        sim.collect();
        let launch = sim.tuner.next_to_run(sim.now).expect("trial 0 resumes");
        assert_eq!(launch.trial, TrialId(0));
    }

    #[test]
    fn a_trial_without_checkpoint_keeps_running_and_is_judged_at_its_milestone() {
        let mut sim = Sim::new(hyperband(9.0, 3.0, Mode::Min), 2);
        sim.fill(2);
        // Trial 0 reaches rung 1 without a checkpoint: the tuner cannot pause it.
        assert_eq!(sim.report(0, 1.0, false), Action::Continue);
        assert_eq!(sim.warnings.len(), 1, "the tuner says so once");
        assert!(
            sim.warnings[0].contains("no checkpoint"),
            "{:?}",
            sim.warnings
        );
        // It keeps reporting, much better now; no more warnings, and a reason why.
        assert_eq!(sim.report(0, 100.0, false), Action::Continue);
        assert_eq!(sim.warnings.len(), 1);
        let last = sim.decisions.last().expect("a decision");
        assert!(
            last.reason.contains("no checkpoint to pause at") && last.reason.contains("loss -1 "),
            "{}",
            last.reason
        );
        // Trial 1 reaches the rung with 2.0 > 1.0 (its milestone score): trial 0 is stopped
        // although its latest result is better.
        assert_eq!(sim.report(1, 2.0, true), Action::Continue);
        assert_eq!(sim.status(0), TrialStatus::Terminated);
        assert_eq!(sim.iteration(0), 2);
        // Once it has a checkpoint, a waiting trial is paused after all.
        let mut sim = Sim::new(hyperband(9.0, 3.0, Mode::Min), 2);
        sim.fill(2);
        assert_eq!(sim.report(0, 1.0, false), Action::Continue);
        assert_eq!(sim.report(0, 1.0, true), Action::Pause);
        assert_eq!(sim.status(0), TrialStatus::Paused);
    }

    #[test]
    fn a_promoted_trial_that_ran_past_the_next_rung_is_judged_there_next() {
        // Trial 0 keeps running (no checkpoint) beyond rung 3 while the bracket waits.
        let mut sim = Sim::new(hyperband(9.0, 3.0, Mode::Max), 3);
        sim.fill(3);
        sim.report(0, 5.0, false);
        for _ in 0..3 {
            sim.report(0, 5.0, false);
        }
        assert_eq!(sim.iteration(0), 4);
        sim.report(1, 1.0, true);
        // The rung completes with trial 2: trial 0 is the best of 3 and goes straight on.
        assert_eq!(sim.report(2, 0.0, true), Action::Stop);
        assert_eq!(sim.status(1), TrialStatus::Terminated);
        // Its next result (iteration 5 >= 3) is its score at rung 3; alone, it passes.
        assert_eq!(sim.report(0, 5.0, false), Action::Continue);
        let last = sim.decisions.last().expect("a decision");
        assert!(last.reason.contains("best 1 of 1"), "{}", last.reason);
    }

    #[test]
    fn results_without_the_metric_continue() {
        // (With the default missing_metric = "error" the core refuses such a result first.)
        let mut sim =
            Sim::with_missing_metric(hyperband(9.0, 3.0, Mode::Min), 1, MissingMetric::Ignore);
        sim.fill(1);
        let reply = sim
            .tuner
            .on_result(TrialId(0), serde_json::Map::new(), true, 1.0)
            .expect("a running trial");
        assert_eq!(reply.action, Action::Continue);
        sim.collect();
        assert!(sim.decisions[0].reason.starts_with("result lacks loss"));
    }

    #[test]
    fn without_stop_last_trials_the_winners_run_on() {
        let config = HyperBandConfig {
            max_t: 2.0,
            reduction_factor: 2.0,
            stop_last_trials: false,
            ..HyperBandConfig::default()
        };
        let scheduler = HyperBandScheduler::new(config, "loss", Mode::Max).expect("valid");
        let mut sim = Sim::new(scheduler, 2);
        sim.fill(2);
        assert_eq!(sim.report(0, 1.0, true), Action::Pause);
        assert_eq!(sim.report(1, 2.0, true), Action::Continue);
        for _ in 0..5 {
            assert_eq!(sim.report(1, 2.0, true), Action::Continue);
        }
        assert_eq!(sim.iteration(1), 6);
    }

    #[test]
    fn defaults_and_invalid_settings() {
        let c = HyperBandConfig::default();
        assert_eq!(c.time_attr, "training_iteration");
        assert_eq!((c.max_t, c.reduction_factor), (81.0, 3.0));
        assert!(c.stop_last_trials);
        assert!(serde_json::from_value::<HyperBandConfig>(json!({"eta": 3})).is_err());
        let bad = |max_t: f64, eta: f64| {
            let config = HyperBandConfig {
                max_t,
                reduction_factor: eta,
                ..HyperBandConfig::default()
            };
            HyperBandScheduler::new(config, "loss", Mode::Min)
                .err()
                .unwrap()
                .field
        };
        assert_eq!(bad(0.0, 3.0), "max_t");
        assert_eq!(bad(f64::INFINITY, 3.0), "max_t");
        assert_eq!(bad(81.0, 1.0), "reduction_factor");
        assert_eq!(bad(1e30, 1.001), "reduction_factor");
        // A max_t below eta is one bracket that trains everything to max_t.
        let mut s = hyperband(2.0, 3.0, Mode::Min);
        add_trials(&mut s, 2);
        assert_eq!(s.plan(), vec![(0, 1, vec![2.0], 1), (0, 1, vec![2.0], 1)]);
    }
}

//! Population Based Training (Jaderberg et al. 2017), with Ray Tune's semantics where users rely
//! on them and deliberate fixes where Ray Tune hurts them (see
//! docs/experiment-file.md and the reference notes):
//!
//! * explored values are clamped into their distribution's bounds, integers stay integers, and a
//!   `choice` is explored like a list (a neighbour or a resample), never multiplied;
//! * an exploit whose donor has no checkpoint is skipped, with the reason in the decisions log;
//! * a trial that would have to be paused without a checkpoint is not (the tuner keeps it
//!   running and says so), so no trial silently restarts from scratch;
//! * synchronous mode re-checks its barrier when a trial finishes or fails, so it never hangs.
//!
//! Every random choice (donor, resample or perturb, factor, direction) comes from the context's
//! seeded RNG, in a fixed order, so a run is reproducible.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Action, Decision, InvalidSetting, Scheduler, SchedulerContext};
use crate::space::{Domain, SearchSpace};
use crate::trial::{TrialId, TrialStatus};
use crate::{Config, CoreRng, Mode, TrialResult};

/// `[scheduler]` with `type = "pbt"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PbtConfig {
    pub time_attr: String,
    /// A trial is considered for exploitation every this many units of `time_attr`.
    pub perturbation_interval: f64,
    /// No exploitation before this much `time_attr`.
    pub burn_in_period: f64,
    /// Fraction of the population in the lower (exploiting) and upper (donor) quantiles.
    pub quantile_fraction: f64,
    /// Probability of resampling a value instead of perturbing it.
    pub resample_probability: f64,
    /// A perturbed value is multiplied by one of these, chosen at random.
    pub perturbation_factors: Vec<f64>,
    /// What to mutate, in the space's syntax (`lr = { loguniform = [1e-5, 1e-3] }`) or as a list
    /// of values. Empty: every searched parameter of `[space]`.
    pub hyperparam_mutations: Map<String, Value>,
    /// Wait for the whole population at every perturbation point, then exploit together.
    pub synch: bool,
}

impl Default for PbtConfig {
    fn default() -> Self {
        PbtConfig {
            time_attr: "training_iteration".into(),
            perturbation_interval: 1.0,
            burn_in_period: 0.0,
            quantile_fraction: 0.25,
            resample_probability: 0.25,
            perturbation_factors: vec![1.2, 0.8],
            hyperparam_mutations: Map::new(),
            synch: false,
        }
    }
}

/// How one hyperparameter is explored.
#[derive(Clone, Debug, PartialEq)]
enum Mutation {
    /// Resample from the list, or move to a neighbour.
    List(Vec<Value>),
    /// Resample from the distribution, or multiply by a factor and clamp into its bounds.
    Distribution(Domain),
}

#[derive(Clone, Debug, Default)]
struct MemberState {
    /// `time_attr` of the last perturbation check (or the donor's, after an exploit).
    last_perturbation_time: f64,
    /// `time_attr` of the latest result.
    last_train_time: f64,
    /// Score (larger is better) at the latest perturbation check.
    last_score: Option<f64>,
}

pub struct PbtScheduler {
    config: PbtConfig,
    metric: String,
    mode: Mode,
    mutations: Vec<(Vec<String>, Mutation)>,
    members: BTreeMap<TrialId, MemberState>,
    /// Synchronous mode: the time every live trial must reach before the next perturbation.
    next_sync: f64,
    /// Synchronous mode: trials paused at the barrier that it has released.
    released: BTreeSet<TrialId>,
    warned_missing: BTreeSet<TrialId>,
}

impl PbtScheduler {
    pub fn new(
        config: PbtConfig,
        metric: &str,
        mode: Mode,
        space: &SearchSpace,
    ) -> Result<Self, InvalidSetting> {
        if !(config.perturbation_interval.is_finite() && config.perturbation_interval > 0.0) {
            return Err(InvalidSetting::new(
                "perturbation_interval",
                format!("must be more than 0, got {}", config.perturbation_interval),
            ));
        }
        if !(config.burn_in_period.is_finite() && config.burn_in_period >= 0.0) {
            return Err(InvalidSetting::new("burn_in_period", "must be 0 or more"));
        }
        if !(0.0..=0.5).contains(&config.quantile_fraction) {
            return Err(InvalidSetting::new(
                "quantile_fraction",
                format!(
                    "must be between 0 and 0.5 (the lower and upper quantiles cannot overlap), got {}",
                    config.quantile_fraction
                ),
            ));
        }
        if !(0.0..=1.0).contains(&config.resample_probability) {
            return Err(InvalidSetting::new(
                "resample_probability",
                format!(
                    "must be between 0 and 1, got {}",
                    config.resample_probability
                ),
            ));
        }
        if config.perturbation_factors.is_empty()
            || config
                .perturbation_factors
                .iter()
                .any(|f| !(f.is_finite() && *f > 0.0))
        {
            return Err(InvalidSetting::new(
                "perturbation_factors",
                "must be a non-empty list of positive numbers, e.g. [1.2, 0.8]",
            ));
        }
        let mut mutations = Vec::new();
        if config.hyperparam_mutations.is_empty() {
            for parameter in space.parameters() {
                mutations.push((parameter.path.clone(), mutation_of(&parameter.domain)));
            }
        } else {
            parse_mutations(
                &config.hyperparam_mutations,
                &mut Vec::new(),
                &mut mutations,
            )?;
        }
        if mutations.is_empty() {
            return Err(InvalidSetting::new(
                "hyperparam_mutations",
                "nothing to mutate: give hyperparam_mutations or search at least one parameter in [space]",
            ));
        }
        let next_sync = config.perturbation_interval.max(config.burn_in_period);
        Ok(PbtScheduler {
            config,
            metric: metric.to_string(),
            mode,
            mutations,
            members: BTreeMap::new(),
            next_sync,
            released: BTreeSet::new(),
            warned_missing: BTreeSet::new(),
        })
    }

    /// Lower and upper quantiles among unfinished trials that have a score: Ray Tune's rule
    /// (ceil(n * fraction), at most floor(n / 2); nothing with fewer than two trials).
    fn quantiles(&self, ctx: &SchedulerContext<'_>) -> (Vec<TrialId>, Vec<TrialId>) {
        let mut scored: Vec<(TrialId, f64)> = self
            .members
            .iter()
            .filter(|(id, _)| ctx.status(**id).is_some_and(|s| !s.is_finished()))
            .filter_map(|(id, m)| m.last_score.map(|s| (*id, s)))
            .collect();
        if scored.len() <= 1 {
            return (Vec::new(), Vec::new());
        }
        // Ascending score; ties by id, so the order never depends on map iteration.
        scored.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let n = scored.len();
        let mut num = (n as f64 * self.config.quantile_fraction).ceil() as usize;
        num = num.min(n / 2);
        let lower = scored[..num].iter().map(|(id, _)| *id).collect();
        let upper = scored[n - num..].iter().map(|(id, _)| *id).collect();
        (lower, upper)
    }

    /// The exploit decision for `target` from a random member of `upper`, or a continue saying
    /// why there is none.
    fn exploit(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        target: TrialId,
        upper: &[TrialId],
    ) -> Decision {
        let Some(&donor) = upper.choose(ctx.rng) else {
            return Decision::continue_(target, "pbt: no donor in the upper quantile");
        };
        let Some(donor_trial) = ctx.trial(donor) else {
            return Decision::continue_(target, "pbt: the donor is unknown");
        };
        let Some(checkpoint) = donor_trial.latest_checkpoint() else {
            return Decision::continue_(
                target,
                format!(
                    "pbt: exploit skipped: donor {} has no checkpoint yet (it must report one for PBT to copy it)",
                    donor.name()
                ),
            )
            .with_details(json!({ "skipped_exploit": true, "donor": donor.0 }));
        };
        let donor_config = donor_trial.config.clone();
        let old_config = ctx
            .trial(target)
            .map(|t| t.config.clone())
            .unwrap_or_default();
        let (new_config, description) = self.explore(&donor_config, ctx.rng);
        let donor_state = self.members.get(&donor).cloned().unwrap_or_default();
        let target_score = self.members.get(&target).and_then(|m| m.last_score);
        if let Some(state) = self.members.get_mut(&target) {
            state.last_perturbation_time = donor_state.last_perturbation_time;
            state.last_train_time = donor_state.last_train_time;
        }
        let metric = &self.metric;
        let shown = |score: Option<f64>| {
            score.map_or("n/a".to_string(), |s| {
                format!(
                    "{}",
                    match self.mode {
                        Mode::Max => s,
                        Mode::Min => -s,
                    }
                )
            })
        };
        Decision::new(
            target,
            Action::Exploit {
                donor: checkpoint,
                config: new_config.clone(),
                description: description.clone(),
            },
            format!(
                "pbt: {metric} {} is in the lower quantile; restarting from {}'s checkpoint at iteration {} ({metric} {}) with {description}",
                shown(target_score),
                donor.name(),
                checkpoint.iteration,
                shown(donor_state.last_score),
            ),
        )
        .with_details(json!({
            "donor": donor.0,
            "donor_iteration": checkpoint.iteration,
            "value": target_score,
            "donor_value": donor_state.last_score,
            "old_config": old_config,
            "new_config": new_config,
        }))
    }

    /// The donor's config with every mutated key explored; and a short description of the new
    /// values, e.g. `lr=2.4e-05,per_device_bs=2`.
    fn explore(&self, donor: &Config, rng: &mut CoreRng) -> (Config, String) {
        let mut config = donor.clone();
        let mut description = Vec::new();
        for (path, mutation) in &self.mutations {
            let current = get_path(&config, path).cloned();
            let new = match mutation {
                Mutation::List(values) => {
                    let position = current
                        .as_ref()
                        .and_then(|c| values.iter().position(|v| values_equal(v, c)));
                    match position {
                        Some(index) if rng.random::<f64>() >= self.config.resample_probability => {
                            let step: i64 = if rng.random::<bool>() { 1 } else { -1 };
                            let last = values.len() as i64 - 1;
                            let next = (index as i64 + step).clamp(0, last.max(0)) as usize;
                            values.get(next).cloned().unwrap_or(Value::Null)
                        }
                        _ => values.choose(rng).cloned().unwrap_or(Value::Null),
                    }
                }
                Mutation::Distribution(domain) => {
                    let number = current.as_ref().and_then(Value::as_f64);
                    match number {
                        Some(x) if rng.random::<f64>() >= self.config.resample_probability => {
                            let factor = self
                                .config
                                .perturbation_factors
                                .choose(rng)
                                .copied()
                                .unwrap_or(1.0);
                            domain
                                .clamp(x * factor)
                                .unwrap_or_else(|| domain.sample(rng))
                        }
                        _ => domain.sample(rng),
                    }
                }
            };
            description.push(format!("{}={}", path.join("."), short(&new)));
            set_path(&mut config, path, new);
        }
        (config, description.join(","))
    }

    /// Synchronous mode: whether every live trial has reached the barrier.
    fn barrier_complete(&self, ctx: &SchedulerContext<'_>) -> bool {
        ctx.trials
            .iter()
            .filter(|t| !t.status.is_finished())
            .all(|t| {
                self.members
                    .get(&t.id)
                    .is_some_and(|m| m.last_train_time >= self.next_sync)
            })
    }

    /// Synchronous mode: rank everyone at the barrier, exploit the lower quantile, release the
    /// paused. Returns the decision for `reporting`, if that trial is exploited.
    fn perturb_all(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        reporting: Option<TrialId>,
    ) -> Option<Decision> {
        let (lower, upper) = self.quantiles(ctx);
        let mut own = None;
        for target in lower {
            let decision = self.exploit(ctx, target, &upper);
            if Some(target) == reporting {
                own = Some(decision);
            } else {
                ctx.outbox.push(decision);
            }
        }
        let latest = self
            .members
            .values()
            .map(|m| m.last_train_time)
            .fold(f64::NEG_INFINITY, f64::max);
        self.next_sync = (self.next_sync + self.config.perturbation_interval).max(latest);
        for trial in ctx.trials {
            if trial.status == TrialStatus::Paused {
                self.released.insert(trial.id);
            }
        }
        own
    }
}

impl Scheduler for PbtScheduler {
    fn name(&self) -> &'static str {
        "pbt"
    }

    fn creates_population(&self) -> bool {
        true
    }

    fn on_trial_add(&mut self, _ctx: &mut SchedulerContext<'_>, trial: TrialId) {
        self.members.insert(trial, MemberState::default());
    }

    fn on_trial_result(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        result: &TrialResult,
    ) -> Decision {
        let id = result.trial;
        self.released.remove(&id);
        let (Some(value), Some(time)) =
            (result.get(&self.metric), result.get(&self.config.time_attr))
        else {
            let missing = if result.get(&self.metric).is_none() {
                &self.metric
            } else {
                &self.config.time_attr
            };
            let first = self.warned_missing.insert(id);
            return Decision::continue_(
                id,
                format!(
                    "pbt: the result lacks {missing}{}",
                    if first {
                        " (PBT ignores such results)"
                    } else {
                        ""
                    }
                ),
            );
        };
        let score = self.mode.score(value);
        let interval = self.config.perturbation_interval;
        let member = self.members.entry(id).or_default();
        member.last_train_time = time;

        if self.config.synch {
            if time < self.next_sync {
                return Decision::continue_(
                    id,
                    format!(
                        "pbt: the next synchronous perturbation is at {} = {}",
                        self.config.time_attr, self.next_sync
                    ),
                );
            }
            member.last_score = Some(score);
            member.last_perturbation_time = time;
            if !self.barrier_complete(ctx) {
                let waiting = ctx
                    .trials
                    .iter()
                    .filter(|t| !t.status.is_finished() && t.id != id)
                    .filter(|t| {
                        self.members
                            .get(&t.id)
                            .is_none_or(|m| m.last_train_time < self.next_sync)
                    })
                    .count();
                return Decision::new(
                    id,
                    Action::Pause,
                    format!(
                        "pbt (synch): waiting at {} = {} for {waiting} more trial(s)",
                        self.config.time_attr, self.next_sync
                    ),
                );
            }
            let at = self.next_sync;
            return self.perturb_all(ctx, Some(id)).unwrap_or_else(|| {
                Decision::continue_(
                    id,
                    format!(
                        "pbt (synch): the population reached {} = {at}; not in the lower quantile",
                        self.config.time_attr
                    ),
                )
            });
        }

        if time - member.last_perturbation_time < interval {
            return Decision::continue_(
                id,
                format!(
                    "pbt: next perturbation check at {} = {}",
                    self.config.time_attr,
                    member.last_perturbation_time + interval
                ),
            );
        }
        if time < self.config.burn_in_period {
            return Decision::continue_(
                id,
                format!(
                    "pbt: in the burn-in period (until {} = {})",
                    self.config.time_attr, self.config.burn_in_period
                ),
            );
        }
        member.last_score = Some(score);
        member.last_perturbation_time = time;
        let (lower, upper) = self.quantiles(ctx);
        let decision = if lower.contains(&id) {
            self.exploit(ctx, id, &upper)
        } else if upper.contains(&id) {
            Decision::continue_(
                id,
                format!("pbt: {} {value} is in the upper quantile", self.metric),
            )
        } else {
            Decision::continue_(
                id,
                format!("pbt: {} {value} is between the quantiles", self.metric),
            )
        };
        if decision.action != Action::Continue {
            return decision;
        }
        // Time-multiplexing: more trials than slots; at its perturbation point a trial yields.
        let waiting = ctx
            .trials
            .iter()
            .filter(|t| {
                t.id != id
                    && (t.status == TrialStatus::Pending
                        || (t.status == TrialStatus::Paused && t.resumable))
            })
            .count();
        if waiting > 0 {
            return Decision::new(
                id,
                Action::Pause,
                format!(
                    "pbt: {}; pausing to give the slot to {waiting} waiting trial(s)",
                    decision.reason
                ),
            );
        }
        decision
    }

    fn on_trial_complete(
        &mut self,
        ctx: &mut SchedulerContext<'_>,
        _trial: TrialId,
        _last: Option<&TrialResult>,
    ) {
        self.after_departure(ctx);
    }

    fn on_trial_error(&mut self, ctx: &mut SchedulerContext<'_>, _trial: TrialId) {
        self.after_departure(ctx);
    }

    fn choose_trial_to_run(&mut self, ctx: &mut SchedulerContext<'_>) -> Option<TrialId> {
        if let Some(t) = ctx.trials.iter().find(|t| t.status == TrialStatus::Pending) {
            return Some(t.id);
        }
        // The paused trial that is furthest behind runs next.
        ctx.trials
            .iter()
            .filter(|t| {
                t.status == TrialStatus::Paused && (t.resumable || self.released.contains(&t.id))
            })
            .min_by(|a, b| {
                let time = |id: TrialId| self.members.get(&id).map_or(0.0, |m| m.last_train_time);
                time(a.id).total_cmp(&time(b.id)).then(a.id.cmp(&b.id))
            })
            .map(|t| t.id)
    }
}

impl PbtScheduler {
    /// A trial finished or failed: in synchronous mode the others may now all be at the barrier.
    fn after_departure(&mut self, ctx: &mut SchedulerContext<'_>) {
        if !self.config.synch {
            return;
        }
        let someone_waits = ctx
            .trials
            .iter()
            .any(|t| t.status == TrialStatus::Paused && !self.released.contains(&t.id));
        if someone_waits && self.barrier_complete(ctx) {
            self.perturb_all(ctx, None);
        }
    }
}

fn mutation_of(domain: &Domain) -> Mutation {
    match domain {
        Domain::Choice(values) | Domain::Grid(values) => Mutation::List(values.clone()),
        other => Mutation::Distribution(other.clone()),
    }
}

fn parse_mutations(
    table: &Map<String, Value>,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Mutation)>,
) -> Result<(), InvalidSetting> {
    for (key, value) in table {
        prefix.push(key.clone());
        let dotted = format!("hyperparam_mutations.{}", prefix.join("."));
        match value {
            Value::Array(values) if values.is_empty() => {
                return Err(InvalidSetting::new(
                    dotted,
                    "an empty list cannot be explored",
                ));
            }
            Value::Array(values) => out.push((prefix.clone(), Mutation::List(values.clone()))),
            Value::Object(map) => match Domain::parse(&dotted, value) {
                Ok(Some(domain)) => out.push((prefix.clone(), mutation_of(&domain))),
                Ok(None) => parse_mutations(map, prefix, out)?,
                Err(e) => return Err(InvalidSetting::new(dotted, e.message)),
            },
            other => {
                return Err(InvalidSetting::new(
                    dotted,
                    format!(
                        "must be a list of values or a distribution such as {{ loguniform = [1e-5, 1e-3] }}, got {other}"
                    ),
                ));
            }
        }
        prefix.pop();
    }
    Ok(())
}

fn get_path<'a>(config: &'a Config, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = config.get(first)?;
    for key in rest {
        value = value.as_object()?.get(key)?;
    }
    Some(value)
}

fn set_path(config: &mut Config, path: &[String], new: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = config;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry {
            Value::Object(map) => current = map,
            _ => return,
        }
    }
    current.insert(last.clone(), new);
}

/// 1 and 1.0 are the same list entry.
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn short(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            if x != 0.0 && !(1e-3..1e5).contains(&x.abs()) {
                format!("{x:.3e}")
            } else {
                let text = format!("{x:.4}");
                text.trim_end_matches('0').trim_end_matches('.').to_string()
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::searcher::FixedSearcher;
    use crate::tuner::{Exit, Tuner, TunerSettings};
    use rand::SeedableRng;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn space(value: Value) -> SearchSpace {
        SearchSpace::from_json(&object(value)).expect("a valid space")
    }

    fn pbt(config: PbtConfig, mode: Mode, space_json: Value) -> PbtScheduler {
        PbtScheduler::new(config, "score", mode, &space(space_json)).expect("valid settings")
    }

    /// Runs a tuner with `slots` process slots. Every running trial's "process" reports
    /// `metric(config, iteration)` with a checkpoint, in trial order, one round at a time; a
    /// trial told to stop or pause exits. Returns the tuner once every trial is finished.
    fn simulate(
        scheduler: PbtScheduler,
        configs: Vec<Value>,
        slots: usize,
        max_iteration: u64,
        metric: impl Fn(&Config, u64) -> f64,
    ) -> Tuner {
        let settings = TunerSettings {
            metric: "score".into(),
            mode: scheduler.mode,
            seed: 3,
            max_failures: 0,
            stop: std::collections::BTreeMap::from([(
                "training_iteration".to_string(),
                max_iteration as f64,
            )]),
        };
        let configs = configs.into_iter().map(object).collect();
        let mut tuner = Tuner::new(
            settings,
            Box::new(FixedSearcher::new(configs)),
            Box::new(scheduler),
        );
        let mut running: Vec<TrialId> = Vec::new();
        let mut now = 0.0;
        for _round in 0..1000 {
            while running.len() < slots {
                match tuner.next_to_run(now) {
                    Some(launch) => running.push(launch.trial),
                    None => break,
                }
            }
            if running.is_empty() {
                assert!(
                    tuner.is_finished(),
                    "nothing runs but trials are left: a hang"
                );
                return tuner;
            }
            running.sort();
            now += 1.0;
            for id in running.clone() {
                if !running.contains(&id) {
                    continue;
                }
                let trial = tuner.trial(id).expect("trial");
                let value = metric(&trial.config, trial.iteration + 1);
                let reply = tuner
                    .on_result(id, object(json!({ "score": value })), true, now)
                    .expect("a running trial");
                let ended: Vec<TrialId> = tuner
                    .drain_effects()
                    .into_iter()
                    .filter_map(|e| match e {
                        crate::tuner::Effect::EndProcess { trial } => Some(trial),
                        _ => None,
                    })
                    .collect();
                let mut exits = ended;
                if reply.action != Action::Continue {
                    exits.push(id);
                }
                for trial in exits {
                    if let Some(pos) = running.iter().position(|r| *r == trial) {
                        running.remove(pos);
                        tuner.on_exit(trial, Exit::Success, now).expect("exit");
                    }
                }
            }
        }
        panic!("the simulation did not finish in 1000 rounds");
    }

    #[test]
    fn synch_mode_copies_the_best_into_the_rest_and_does_not_hang() {
        // Ray Tune's reference scenario: a in {10, 20, 40}, 3 iterations, interval 1, synch:
        // every trial ends with the best trial's value.
        let config = PbtConfig {
            synch: true,
            resample_probability: 0.0,
            perturbation_factors: vec![1.0],
            hyperparam_mutations: object(json!({ "a": { "uniform": [0.0, 100.0] } })),
            ..PbtConfig::default()
        };
        let scheduler = pbt(config, Mode::Max, json!({}));
        let tuner = simulate(
            scheduler,
            vec![json!({"a": 10.0}), json!({"a": 20.0}), json!({"a": 40.0})],
            3,
            3,
            |c, _| c["a"].as_f64().unwrap_or(0.0),
        );
        for trial in tuner.trials() {
            assert_eq!(trial.config["a"], 40.0, "{}", trial.display_name());
            assert_eq!(trial.status, TrialStatus::Terminated);
            assert_eq!(trial.iteration, 3);
        }
        assert!(tuner.trials()[0].tag.starts_with("@perturbed[a=40"));
    }

    #[test]
    fn synch_mode_goes_on_when_a_trial_fails_at_the_barrier() {
        let config = PbtConfig {
            synch: true,
            hyperparam_mutations: object(json!({ "a": [1, 2, 3] })),
            ..PbtConfig::default()
        };
        let mut scheduler = pbt(config, Mode::Max, json!({}));
        let mut rng = CoreRng::seed_from_u64(0);
        let mut trials = vec![
            crate::tuner::Trial::new_pending(TrialId(0), object(json!({"a": 1}))),
            crate::tuner::Trial::new_pending(TrialId(1), object(json!({"a": 2}))),
        ];
        for t in &mut trials {
            t.status = TrialStatus::Running;
            t.checkpoints.insert(1, 1.0);
        }
        {
            let mut ctx = SchedulerContext::new(&mut rng, &trials);
            scheduler.on_trial_add(&mut ctx, TrialId(0));
            scheduler.on_trial_add(&mut ctx, TrialId(1));
            let result = TrialResult {
                trial: TrialId(0),
                metrics: object(json!({"score": 1.0, "training_iteration": 1})),
                has_checkpoint: true,
            };
            let d = scheduler.on_trial_result(&mut ctx, &result);
            assert_eq!(d.action, Action::Pause, "{}", d.reason);
        }
        trials[0].status = TrialStatus::Paused;
        trials[1].status = TrialStatus::Error;
        let mut ctx = SchedulerContext::new(&mut rng, &trials);
        scheduler.on_trial_error(&mut ctx, TrialId(1));
        assert_eq!(
            scheduler.choose_trial_to_run(&mut ctx),
            Some(TrialId(0)),
            "the barrier is released when the only other trial fails"
        );
    }

    #[test]
    fn time_multiplexing_runs_a_population_larger_than_the_slots() {
        // 4 trials, 2 slots: trials pause at their perturbation points so the others get turns;
        // the lower quantile restarts from donors' checkpoints.
        let config = PbtConfig {
            quantile_fraction: 0.25,
            ..PbtConfig::default()
        };
        let scheduler = pbt(
            config,
            Mode::Min,
            json!({ "lr": { "loguniform": [1e-4, 1e-1] } }),
        );
        let configs = vec![
            json!({"lr": 1e-4}),
            json!({"lr": 1e-3}),
            json!({"lr": 1e-2}),
            json!({"lr": 1e-1}),
        ];
        // Loss falls faster with a larger learning rate.
        let tuner = simulate(scheduler, configs, 2, 4, |c, t| {
            1.0 / (1.0 + c["lr"].as_f64().unwrap_or(0.0) * 100.0 * t as f64)
        });
        assert!(
            tuner
                .trials()
                .iter()
                .all(|t| t.status == TrialStatus::Terminated)
        );
        assert!(tuner.trials().iter().all(|t| t.iteration == 4));
        assert!(tuner.trials().iter().any(|t| t.tag.contains("@perturbed")));
        // Every run after the first restored a checkpoint: nobody restarted from scratch.
        assert!(
            tuner
                .trials()
                .iter()
                .all(|t| t.runs == 1 || t.restore.is_some())
        );
        for t in tuner.trials() {
            let lr = t.config["lr"].as_f64().expect("lr");
            assert!((1e-4..=1e-1).contains(&lr), "{lr} is out of bounds");
        }
    }

    #[test]
    fn quantiles_follow_the_reference_rule() {
        let mut scheduler = pbt(
            PbtConfig::default(),
            Mode::Max,
            json!({ "x": { "uniform": [0, 1] } }),
        );
        let mut rng = CoreRng::seed_from_u64(0);
        let trials: Vec<_> = (0..5)
            .map(|i| {
                let mut t = crate::tuner::Trial::new_pending(TrialId(i), Map::new());
                t.status = TrialStatus::Running;
                t
            })
            .collect();
        for (i, score) in [5.0, 1.0, 4.0, 2.0, 3.0].into_iter().enumerate() {
            scheduler.members.insert(
                TrialId(i as u32),
                MemberState {
                    last_score: Some(score),
                    ..MemberState::default()
                },
            );
        }
        let ctx = SchedulerContext::new(&mut rng, &trials);
        // ceil(5 * 0.25) = 2, not more than floor(5 / 2) = 2.
        let (lower, upper) = scheduler.quantiles(&ctx);
        assert_eq!(lower, vec![TrialId(1), TrialId(3)]);
        assert_eq!(upper, vec![TrialId(2), TrialId(0)]);
        scheduler.config.quantile_fraction = 0.5;
        scheduler.members.remove(&TrialId(4));
        scheduler.members.remove(&TrialId(3));
        // 3 trials: ceil(1.5) = 2 is capped at floor(3 / 2) = 1.
        let (lower, upper) = scheduler.quantiles(&ctx);
        assert_eq!((lower.len(), upper.len()), (1, 1));
    }

    #[test]
    fn explore_keeps_values_in_bounds_integers_whole_and_choices_in_the_list() {
        let space_json = json!({
            "lr": { "loguniform": [1e-5, 1e-3] },
            "layers": { "randint": [1, 9] },
            "bs": { "choice": [1, 2, 4] },
        });
        let config = PbtConfig {
            resample_probability: 0.0,
            perturbation_factors: vec![3.0, 0.1],
            ..PbtConfig::default()
        };
        let scheduler = pbt(config, Mode::Min, space_json);
        let mut rng = CoreRng::seed_from_u64(11);
        let mut saw_neighbour = false;
        for _ in 0..200 {
            let donor = object(json!({"lr": 9e-4, "layers": 7, "bs": 2}));
            let (new, description) = scheduler.explore(&donor, &mut rng);
            let lr = new["lr"].as_f64().expect("lr");
            assert!((1e-5..=1e-3).contains(&lr), "lr {lr} ({description})");
            let layers = new["layers"].as_i64().expect("an integer stays an integer");
            assert!((1..=8).contains(&layers), "layers {layers}");
            let bs = new["bs"].as_i64().expect("bs");
            assert!(
                [1, 4].contains(&bs),
                "a neighbour of 2, never 2 * factor: {bs}"
            );
            saw_neighbour = true;
        }
        assert!(saw_neighbour);
    }

    #[test]
    fn a_list_value_not_in_the_list_is_resampled() {
        let config = PbtConfig {
            resample_probability: 0.0,
            hyperparam_mutations: object(json!({ "bs": [8, 16] })),
            ..PbtConfig::default()
        };
        let scheduler = pbt(config, Mode::Min, json!({}));
        let mut rng = CoreRng::seed_from_u64(1);
        let (new, _) = scheduler.explore(&object(json!({"bs": 3})), &mut rng);
        assert!([8, 16].contains(&new["bs"].as_i64().expect("bs")));
    }

    #[test]
    fn a_donor_without_checkpoint_is_not_copied() {
        let mut scheduler = pbt(
            PbtConfig::default(),
            Mode::Max,
            json!({ "x": { "uniform": [0, 1] } }),
        );
        let mut rng = CoreRng::seed_from_u64(0);
        let trials: Vec<_> = (0..2)
            .map(|i| {
                let mut t = crate::tuner::Trial::new_pending(TrialId(i), object(json!({"x": 0.5})));
                t.status = TrialStatus::Running;
                t
            })
            .collect();
        let mut ctx = SchedulerContext::new(&mut rng, &trials);
        let d = scheduler.exploit(&mut ctx, TrialId(0), &[TrialId(1)]);
        assert_eq!(d.action, Action::Continue);
        assert!(d.reason.contains("has no checkpoint"), "{}", d.reason);
    }

    #[test]
    fn nothing_is_exploited_during_burn_in_or_between_intervals() {
        let config = PbtConfig {
            burn_in_period: 3.0,
            perturbation_interval: 2.0,
            ..PbtConfig::default()
        };
        let mut scheduler = pbt(config, Mode::Max, json!({ "x": { "uniform": [0, 1] } }));
        let mut rng = CoreRng::seed_from_u64(0);
        let mut trials: Vec<_> = (0..2)
            .map(|i| {
                let mut t = crate::tuner::Trial::new_pending(TrialId(i), object(json!({"x": 0.5})));
                t.status = TrialStatus::Running;
                t.checkpoints.insert(1, 1.0);
                t
            })
            .collect();
        trials[1].checkpoints.insert(2, 2.0);
        let mut ctx = SchedulerContext::new(&mut rng, &trials);
        scheduler.on_trial_add(&mut ctx, TrialId(0));
        scheduler.on_trial_add(&mut ctx, TrialId(1));
        let result = |trial: u32, t: u64, score: f64| TrialResult {
            trial: TrialId(trial),
            metrics: object(json!({"score": score, "training_iteration": t})),
            has_checkpoint: true,
        };
        for t in 1..=3 {
            let d1 = scheduler.on_trial_result(&mut ctx, &result(1, t, 10.0));
            let d0 = scheduler.on_trial_result(&mut ctx, &result(0, t, 1.0));
            assert_eq!(d1.action, Action::Continue, "t={t}: {}", d1.reason);
            assert_eq!(d0.action, Action::Continue, "t={t}: {}", d0.reason);
        }
        let d1 = scheduler.on_trial_result(&mut ctx, &result(1, 4, 10.0));
        assert_eq!(d1.action, Action::Continue);
        let d0 = scheduler.on_trial_result(&mut ctx, &result(0, 4, 1.0));
        assert!(matches!(d0.action, Action::Exploit { .. }), "{}", d0.reason);
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let bad = |config: PbtConfig| {
            PbtScheduler::new(
                config,
                "m",
                Mode::Min,
                &space(json!({"x": {"uniform": [0, 1]}})),
            )
            .err()
            .map(|e| e.field)
        };
        assert_eq!(
            bad(PbtConfig {
                quantile_fraction: 0.7,
                ..PbtConfig::default()
            })
            .as_deref(),
            Some("quantile_fraction")
        );
        assert_eq!(
            bad(PbtConfig {
                perturbation_factors: vec![],
                ..PbtConfig::default()
            })
            .as_deref(),
            Some("perturbation_factors")
        );
        assert!(
            PbtScheduler::new(PbtConfig::default(), "m", Mode::Min, &space(json!({}))).is_err()
        );
    }
}

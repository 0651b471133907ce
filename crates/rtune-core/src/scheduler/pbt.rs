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

use super::asha::show;
use super::asha::value_and_time;
use super::{Action, Decision, InvalidSetting, Scheduler, SchedulerContext};
use crate::space::{Domain, SearchSpace, get_path, set_path};
use crate::trial::{TrialId, TrialStatus};
use crate::tuner::{Ending, Trial};
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

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MemberState {
    /// `time_attr` of the last perturbation check (or the donor's, after an exploit).
    last_perturbation_time: f64,
    /// `time_attr` of the latest result.
    last_train_time: f64,
    /// Score (larger is better) at the latest perturbation check.
    last_score: Option<f64>,
    /// The metric's value at the latest perturbation check, as reported (for reasons).
    last_value: Option<f64>,
}

#[derive(Debug)]
pub struct PbtScheduler {
    config: PbtConfig,
    metric: String,
    mode: Mode,
    mutations: Vec<(Vec<String>, Mutation)>,
    members: BTreeMap<TrialId, MemberState>,
    /// Synchronous mode: the time every live trial must reach before the next perturbation.
    next_sync: f64,
    /// Synchronous mode: trials waiting at a barrier that has since been completed; they may run.
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
        let target_value = self.members.get(&target).and_then(|m| m.last_value);
        let Some(checkpoint) = donor_trial.latest_checkpoint() else {
            return Decision::continue_(
                target,
                format!(
                    "pbt: {} {} is in the lower quantile, but the exploit is skipped because the donor {} has no checkpoint yet (a trial must report checkpoints for PBT to copy it)",
                    self.metric,
                    shown(target_value),
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
        Decision::new(
            target,
            Action::Exploit {
                donor: checkpoint,
                config: new_config.clone(),
                description: description.clone(),
            },
            format!(
                "pbt: {metric} {} is in the lower quantile; restarting from {}'s checkpoint at iteration {} ({metric} {}) with {description}",
                shown(target_value),
                donor.name(),
                checkpoint.iteration,
                shown(donor_state.last_value),
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
        // Everyone waiting at the barrier goes on: the paused, and those told to pause whose
        // process has not exited yet (still RUNNING until it has; they become PAUSED later and
        // must find themselves released then).
        for trial in ctx.trials {
            if trial.status == TrialStatus::Paused || waits_to_pause(trial) {
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

    fn time_attr(&self) -> Option<&str> {
        Some(&self.config.time_attr)
    }

    fn creates_population(&self) -> bool {
        true
    }

    fn save(&self) -> Value {
        super::save_fields(&[
            ("members", serde_json::to_value(&self.members)),
            ("next_sync", serde_json::to_value(self.next_sync)),
            ("released", serde_json::to_value(&self.released)),
            ("warned_missing", serde_json::to_value(&self.warned_missing)),
        ])
    }

    fn restore(&mut self, mut state: Value) -> Result<(), String> {
        self.members = super::load_field(&mut state, "members")?;
        self.next_sync = super::load_field(&mut state, "next_sync")?;
        self.released = super::load_field(&mut state, "released")?;
        self.warned_missing = super::load_field(&mut state, "warned_missing")?;
        Ok(())
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
        let (value, time) = match value_and_time(result, &self.metric, &self.config.time_attr) {
            Ok(found) => found,
            Err(lacks) => {
                let first = self.warned_missing.insert(id);
                let note = if first {
                    " (PBT ignores such results)"
                } else {
                    ""
                };
                return Decision::continue_(id, format!("pbt: the {lacks}{note}"));
            }
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
                        self.config.time_attr,
                        show(self.next_sync)
                    ),
                );
            }
            member.last_score = Some(score);
            member.last_value = Some(value);
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
                        self.config.time_attr,
                        show(self.next_sync)
                    ),
                );
            }
            let at = self.next_sync;
            return self.perturb_all(ctx, Some(id)).unwrap_or_else(|| {
                Decision::continue_(
                    id,
                    format!(
                        "pbt (synch): the population reached {} = {}; not in the lower quantile",
                        self.config.time_attr,
                        show(at)
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
                    show(member.last_perturbation_time + interval)
                ),
            );
        }
        if time < self.config.burn_in_period {
            return Decision::continue_(
                id,
                format!(
                    "pbt: in the burn-in period (until {} = {})",
                    self.config.time_attr,
                    show(self.config.burn_in_period)
                ),
            );
        }
        member.last_score = Some(score);
        member.last_value = Some(value);
        member.last_perturbation_time = time;
        let (lower, upper) = self.quantiles(ctx);
        let decision = if lower.contains(&id) {
            self.exploit(ctx, id, &upper)
        } else if upper.contains(&id) {
            Decision::continue_(
                id,
                format!(
                    "pbt: {} {} is in the upper quantile",
                    self.metric,
                    show(value)
                ),
            )
        } else if lower.is_empty() {
            Decision::continue_(
                id,
                format!(
                    "pbt: {} {} has too few other scores to compare with",
                    self.metric,
                    show(value)
                ),
            )
        } else {
            Decision::continue_(
                id,
                format!(
                    "pbt: {} {} is between the quantiles",
                    self.metric,
                    show(value)
                ),
            )
        };
        if decision.action != Action::Continue {
            return decision;
        }
        // Time-multiplexing: more trials than slots; at its perturbation point a trial yields.
        let waiting = ctx
            .trials
            .iter()
            .filter(|t| t.id != id && self.may_run(t))
            .count();
        if waiting > 0 {
            return Decision::new(
                id,
                Action::Pause,
                format!(
                    "{}; pausing to give the slot to {waiting} waiting trial(s)",
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
        // The waiting trial that is furthest behind runs next (a trial that never ran has no
        // training time, so the population starts before anyone resumes); ties by id.
        ctx.trials
            .iter()
            .filter(|t| self.may_run(t))
            .min_by(|a, b| {
                let time = |id: TrialId| self.members.get(&id).map_or(0.0, |m| m.last_train_time);
                time(a.id).total_cmp(&time(b.id)).then(a.id.cmp(&b.id))
            })
            .map(|t| t.id)
    }
}

impl PbtScheduler {
    /// Whether a PENDING or PAUSED trial may be started now. In asynchronous mode a paused trial
    /// only waits for a free slot; in synchronous mode it waits for the barrier to release it
    /// (or for an exploit, which marks it resumable).
    fn may_run(&self, trial: &Trial) -> bool {
        match trial.status {
            TrialStatus::Pending => true,
            TrialStatus::Paused => {
                !self.config.synch || trial.resumable || self.released.contains(&trial.id)
            }
            _ => false,
        }
    }

    /// A trial finished or failed: in synchronous mode the others may now all be at the barrier.
    fn after_departure(&mut self, ctx: &mut SchedulerContext<'_>) {
        if !self.config.synch {
            return;
        }
        let someone_waits = ctx.trials.iter().any(|t| {
            (t.status == TrialStatus::Paused || waits_to_pause(t)) && !self.released.contains(&t.id)
        });
        if someone_waits && self.barrier_complete(ctx) {
            self.perturb_all(ctx, None);
        }
    }
}

/// A running trial that was told to pause and whose process has not exited yet.
fn waits_to_pause(trial: &Trial) -> bool {
    trial.status == TrialStatus::Running && trial.ending == Some(Ending::Pause)
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

/// A metric value for a reason (6 significant digits), or `n/a`.
fn shown(value: Option<f64>) -> String {
    value.map_or("n/a".to_string(), show)
}

/// 1 and 1.0 are the same list entry.
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

pub(super) fn short(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            if x != 0.0 && !(1e-3..1e5).contains(&x.abs()) {
                // 2.4e-5, not 2.400e-5.
                let text = format!("{x:.3e}");
                match text.split_once('e') {
                    Some((mantissa, exponent)) => format!(
                        "{}e{exponent}",
                        mantissa.trim_end_matches('0').trim_end_matches('.')
                    ),
                    None => text,
                }
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
    /// trial told to stop or pause exits, and after its report at iteration `i` trial `t`'s
    /// process ends on its own with `exits(t, i)` if that is `Some`. Returns the tuner once every
    /// trial is finished, and every decision the tuner logged.
    fn simulate_with_exits(
        scheduler: PbtScheduler,
        configs: Vec<Value>,
        slots: usize,
        max_iteration: u64,
        metric: impl Fn(&Config, u64) -> f64,
        exits: impl Fn(TrialId, u64) -> Option<Exit>,
    ) -> (Tuner, Vec<Decision>) {
        simulate_processes(
            scheduler,
            configs,
            slots,
            max_iteration,
            metric,
            exits,
            false,
        )
    }

    /// [`simulate_with_exits`]; with `lagging_exits`, a process told to pause or stop exits only
    /// at the end of the round, after the other running trials reported (real processes take a
    /// moment to exit, and other reports arrive meanwhile).
    fn simulate_processes(
        scheduler: PbtScheduler,
        configs: Vec<Value>,
        slots: usize,
        max_iteration: u64,
        metric: impl Fn(&Config, u64) -> f64,
        exits: impl Fn(TrialId, u64) -> Option<Exit>,
        lagging_exits: bool,
    ) -> (Tuner, Vec<Decision>) {
        let settings = TunerSettings {
            metric: "score".into(),
            mode: scheduler.mode,
            seed: 3,
            max_failures: 0,
            stop: std::collections::BTreeMap::from([(
                "training_iteration".to_string(),
                max_iteration as f64,
            )]),
            ..TunerSettings::default()
        };
        let configs = configs.into_iter().map(object).collect();
        let mut tuner = Tuner::new(
            settings,
            Box::new(FixedSearcher::new(configs)),
            Box::new(scheduler),
        );
        let mut decisions = Vec::new();
        let mut running: Vec<TrialId> = Vec::new();
        let mut now = 0.0;
        for _round in 0..1000 {
            while running.len() < slots {
                match tuner.next_to_run(now) {
                    Some(launch) => {
                        // Every run after the first restores a checkpoint: nobody restarts
                        // from scratch.
                        assert!(launch.run == 0 || launch.restore.is_some(), "{launch:?}");
                        running.push(launch.trial)
                    }
                    None => break,
                }
            }
            if running.is_empty() {
                assert!(
                    tuner.is_finished(),
                    "nothing runs but trials are left: a hang"
                );
                collect_decisions(&mut tuner, &mut decisions);
                return (tuner, decisions);
            }
            running.sort();
            now += 1.0;
            let mut exiting: Vec<(TrialId, Exit)> = Vec::new();
            for id in running.clone() {
                if !running.contains(&id) || exiting.iter().any(|(t, _)| *t == id) {
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
                        crate::tuner::Effect::Decision(d) => {
                            decisions.push(d);
                            None
                        }
                        _ => None,
                    })
                    .collect();
                let mut ends: Vec<(TrialId, Exit)> =
                    ended.into_iter().map(|t| (t, Exit::Success)).collect();
                if reply.action != Action::Continue {
                    ends.push((id, Exit::Success));
                } else if let Some(exit) = exits(id, reply.result.iteration()) {
                    ends.push((id, exit));
                }
                if lagging_exits {
                    exiting.extend(ends);
                    continue;
                }
                for (trial, exit) in ends {
                    if let Some(pos) = running.iter().position(|r| *r == trial) {
                        running.remove(pos);
                        tuner.on_exit(trial, exit, now).expect("exit");
                        collect_decisions(&mut tuner, &mut decisions);
                    }
                }
            }
            for (trial, exit) in exiting {
                if let Some(pos) = running.iter().position(|r| *r == trial) {
                    running.remove(pos);
                    tuner.on_exit(trial, exit, now).expect("exit");
                    collect_decisions(&mut tuner, &mut decisions);
                }
            }
        }
        panic!("the simulation did not finish in 1000 rounds");
    }

    fn collect_decisions(tuner: &mut Tuner, decisions: &mut Vec<Decision>) {
        for effect in tuner.drain_effects() {
            if let crate::tuner::Effect::Decision(d) = effect {
                decisions.push(d);
            }
        }
    }

    /// Reasons are one readable sentence.
    fn assert_readable(decisions: &[Decision]) {
        for d in decisions {
            assert!(!d.reason.is_empty());
            assert!(!d.reason.contains("pbt: pbt"), "{}", d.reason);
            assert!(!d.reason.contains('\n'), "{}", d.reason);
            assert!(
                !d.reason.contains(". "),
                "more than one sentence: {}",
                d.reason
            );
            // Numbers are shown short (6 significant digits), not as 0.30000000000000004.
            let most_significant_digits = d
                .reason
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .map(|number| number.replace('.', "").trim_start_matches('0').len())
                .max()
                .unwrap_or(0);
            assert!(most_significant_digits <= 6, "a long number: {}", d.reason);
        }
    }

    /// `n` trials with config `{"x": 0.5}`, RUNNING, each with a checkpoint at iteration 1.
    fn running_trials(n: u32) -> Vec<Trial> {
        (0..n)
            .map(|i| {
                let mut t = Trial::new_pending(TrialId(i), object(json!({"x": 0.5})));
                t.status = TrialStatus::Running;
                t.checkpoints.insert(1, 1.0);
                t
            })
            .collect()
    }

    fn result(trial: u32, time: u64, score: f64) -> TrialResult {
        TrialResult {
            trial: TrialId(trial),
            metrics: object(json!({"score": score, "training_iteration": time})),
            has_checkpoint: true,
        }
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
        let (tuner, decisions) = simulate_with_exits(
            scheduler,
            vec![json!({"a": 10.0}), json!({"a": 20.0}), json!({"a": 40.0})],
            3,
            3,
            |c, _| c["a"].as_f64().unwrap_or(0.0),
            |_, _| None,
        );
        for trial in tuner.trials() {
            assert_eq!(trial.config["a"], 40.0, "{}", trial.display_name());
            assert_eq!(trial.status, TrialStatus::Terminated);
            assert_eq!(trial.iteration, 3);
        }
        assert!(tuner.trials()[0].tag.starts_with("@perturbed[a=40"));
        assert!(decisions.iter().any(|d| d.reason.contains("waiting at")));
        assert_readable(&decisions);
    }

    #[test]
    fn synch_mode_releases_a_trial_whose_process_was_still_exiting_at_the_barrier() {
        // 4 trials, 2 slots, processes that take a moment to exit: trial A is told to wait at
        // the barrier, and before its process has exited trial B completes the barrier. A must
        // be released too, or the population waits for it forever.
        let config = PbtConfig {
            synch: true,
            hyperparam_mutations: object(json!({ "lr": { "loguniform": [1e-4, 1e-1] } })),
            ..PbtConfig::default()
        };
        let scheduler = pbt(config, Mode::Min, json!({}));
        let configs = [1e-4, 1e-3, 1e-2, 1e-1]
            .iter()
            .map(|lr| json!({ "lr": lr }))
            .collect();
        let (tuner, decisions) = simulate_processes(
            scheduler,
            configs,
            2,
            6,
            |c, t| 1.0 / (1.0 + c["lr"].as_f64().unwrap_or(0.0) * 100.0 * t as f64),
            |_, _| None,
            true,
        );
        for trial in tuner.trials() {
            assert_eq!(trial.status, TrialStatus::Terminated, "{}", trial.id);
            assert_eq!(trial.iteration, 6, "{}", trial.id);
        }
        assert!(decisions.iter().any(|d| d.reason.contains("waiting at")));
        assert!(
            decisions
                .iter()
                .any(|d| matches!(d.action, Action::Exploit { .. }))
        );
        assert_readable(&decisions);
    }

    #[test]
    fn synch_mode_goes_on_when_a_trial_finishes_or_fails_between_barriers() {
        // Trial 1's process ends on its own at iteration 3 while the others wait at the
        // barrier at 4: the barrier must be released without it.
        for exit in [Exit::Success, Exit::Failure("exit code 1".into())] {
            let config = PbtConfig {
                synch: true,
                perturbation_interval: 2.0,
                hyperparam_mutations: object(json!({ "a": [1, 2, 3, 4] })),
                ..PbtConfig::default()
            };
            let scheduler = pbt(config, Mode::Max, json!({}));
            let (tuner, decisions) = simulate_with_exits(
                scheduler,
                vec![json!({"a": 1}), json!({"a": 2}), json!({"a": 3})],
                3,
                6,
                |c, t| c["a"].as_f64().unwrap_or(0.0) * t as f64,
                |trial, iteration| (trial == TrialId(1) && iteration == 3).then(|| exit.clone()),
            );
            let expected = match exit {
                Exit::Success => TrialStatus::Terminated,
                Exit::Failure(_) | Exit::Lost(_) => TrialStatus::Error,
            };
            assert_eq!(tuner.trials()[1].status, expected);
            assert_eq!(tuner.trials()[1].iteration, 3);
            for id in [0, 2] {
                let trial = &tuner.trials()[id];
                assert_eq!(trial.status, TrialStatus::Terminated, "{exit:?}");
                assert_eq!(
                    trial.iteration,
                    6,
                    "{} ran to the end",
                    trial.display_name()
                );
            }
            assert_readable(&decisions);
        }
    }

    #[test]
    fn synch_mode_releases_a_trial_whose_pause_is_still_under_way() {
        // Trial 1 reaches the barrier first and is told to pause; trial 0 completes the barrier
        // before trial 1's process has exited (it is still RUNNING then). Once both have
        // exited, both must be runnable again: the run goes on instead of hanging.
        let config = PbtConfig {
            synch: true,
            resample_probability: 0.0,
            ..PbtConfig::default()
        };
        let scheduler = pbt(config, Mode::Max, json!({ "a": { "grid": [1, 2] } }));
        let settings = TunerSettings {
            metric: "score".into(),
            mode: Mode::Max,
            seed: 1,
            max_failures: 0,
            stop: std::collections::BTreeMap::new(),
            ..TunerSettings::default()
        };
        let configs = vec![object(json!({"a": 1})), object(json!({"a": 2}))];
        let mut tuner = Tuner::new(
            settings,
            Box::new(FixedSearcher::new(configs)),
            Box::new(scheduler),
        );
        let a = tuner.next_to_run(0.0).expect("trial 0").trial;
        let b = tuner.next_to_run(0.0).expect("trial 1").trial;
        let mut score = serde_json::Map::new();
        score.insert("score".into(), json!(2.0));
        let reply = tuner.on_result(b, score.clone(), true, 1.0).expect("b");
        assert_eq!(reply.action, Action::Pause);
        score.insert("score".into(), json!(1.0));
        let reply = tuner.on_result(a, score, true, 1.0).expect("a");
        assert_eq!(reply.action, Action::Pause, "a exploits b");
        tuner.on_exit(a, Exit::Success, 2.0).expect("a exits");
        tuner.on_exit(b, Exit::Success, 2.0).expect("b exits");
        let first = tuner.next_to_run(3.0).expect("one resumes").trial;
        let second = tuner.next_to_run(3.0).expect("the other resumes").trial;
        assert_ne!(first, second);
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
        let mut trials = running_trials(2);
        {
            let mut ctx = SchedulerContext::new(&mut rng, &trials);
            scheduler.on_trial_add(&mut ctx, TrialId(0));
            scheduler.on_trial_add(&mut ctx, TrialId(1));
            let d = scheduler.on_trial_result(&mut ctx, &result(0, 1, 1.0));
            assert_eq!(d.action, Action::Pause, "{}", d.reason);
            assert_eq!(
                d.reason,
                "pbt (synch): waiting at training_iteration = 1 for 1 more trial(s)"
            );
        }
        trials[0].status = TrialStatus::Paused;
        trials[0].resumable = false;
        {
            let mut ctx = SchedulerContext::new(&mut rng, &trials);
            assert_eq!(
                scheduler.choose_trial_to_run(&mut ctx),
                None,
                "a trial waiting at the barrier stays paused"
            );
        }
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
        let (tuner, decisions) = simulate_with_exits(
            scheduler,
            configs,
            2,
            4,
            |c, t| 1.0 / (1.0 + c["lr"].as_f64().unwrap_or(0.0) * 100.0 * t as f64),
            |_, _| None,
        );
        assert!(
            tuner
                .trials()
                .iter()
                .all(|t| t.status == TrialStatus::Terminated)
        );
        assert!(tuner.trials().iter().all(|t| t.iteration == 4));
        assert!(tuner.trials().iter().any(|t| t.tag.contains("@perturbed")));
        assert!(decisions.iter().any(|d| d.action == Action::Pause));
        // (Every run after the first restored a checkpoint: checked at each launch.)
        for t in tuner.trials() {
            let lr = t.config["lr"].as_f64().expect("lr");
            assert!((1e-4..=1e-1).contains(&lr), "{lr} is out of bounds");
        }
        assert_readable(&decisions);
    }

    #[test]
    fn at_its_perturbation_point_a_trial_yields_to_the_waiting_trial_furthest_behind() {
        let mut scheduler = pbt(
            PbtConfig::default(),
            Mode::Max,
            json!({ "x": { "uniform": [0, 1] } }),
        );
        let mut rng = CoreRng::seed_from_u64(0);
        let mut trials = running_trials(4);
        {
            let mut ctx = SchedulerContext::new(&mut rng, &trials);
            for i in 0..4 {
                scheduler.on_trial_add(&mut ctx, TrialId(i));
            }
            // Trials 0 and 1 ran to times 4 and 2 and their scores are in.
            for (trial, time) in [(0, 4), (1, 2)] {
                let d = scheduler.on_trial_result(&mut ctx, &result(trial, time, 5.0));
                assert_eq!(d.action, Action::Continue, "nobody waits yet: {}", d.reason);
            }
        }
        trials[0].status = TrialStatus::Paused;
        trials[1].status = TrialStatus::Paused;
        let mut ctx = SchedulerContext::new(&mut rng, &trials);
        // Trial 2 reaches its perturbation point (between the quantiles) while two trials wait.
        let d = scheduler.on_trial_result(&mut ctx, &result(2, 1, 5.0));
        assert_eq!(d.action, Action::Pause, "{}", d.reason);
        assert!(
            d.reason
                .ends_with("pausing to give the slot to 2 waiting trial(s)"),
            "{}",
            d.reason
        );
        // Trial 1 (time 2) is further behind than trial 0 (time 4): it runs next, and choosing
        // twice gives the same answer.
        assert_eq!(scheduler.choose_trial_to_run(&mut ctx), Some(TrialId(1)));
        assert_eq!(scheduler.choose_trial_to_run(&mut ctx), Some(TrialId(1)));
    }

    #[test]
    fn a_trial_between_perturbation_points_keeps_its_slot() {
        let mut scheduler = pbt(
            PbtConfig {
                perturbation_interval: 3.0,
                ..PbtConfig::default()
            },
            Mode::Max,
            json!({ "x": { "uniform": [0, 1] } }),
        );
        let mut rng = CoreRng::seed_from_u64(0);
        let mut trials = running_trials(2);
        trials[1].status = TrialStatus::Paused;
        let mut ctx = SchedulerContext::new(&mut rng, &trials);
        scheduler.on_trial_add(&mut ctx, TrialId(0));
        scheduler.on_trial_add(&mut ctx, TrialId(1));
        let d = scheduler.on_trial_result(&mut ctx, &result(0, 2, 1.0));
        assert_eq!(d.action, Action::Continue, "{}", d.reason);
        assert_eq!(
            d.reason,
            "pbt: next perturbation check at training_iteration = 3"
        );
        let d = scheduler.on_trial_result(&mut ctx, &result(0, 3, 1.0));
        assert_eq!(d.action, Action::Pause, "{}", d.reason);
    }

    #[test]
    fn quantiles_follow_the_reference_rule() {
        let mut scheduler = pbt(
            PbtConfig::default(),
            Mode::Max,
            json!({ "x": { "uniform": [0, 1] } }),
        );
        let mut rng = CoreRng::seed_from_u64(0);
        let mut trials = running_trials(5);
        for (i, score) in [5.0, 1.0, 4.0, 2.0, 3.0].into_iter().enumerate() {
            scheduler.members.insert(
                TrialId(i as u32),
                MemberState {
                    last_score: Some(score),
                    ..MemberState::default()
                },
            );
        }
        {
            let ctx = SchedulerContext::new(&mut rng, &trials);
            // ceil(5 * 0.25) = 2, not more than floor(5 / 2) = 2.
            let (lower, upper) = scheduler.quantiles(&ctx);
            assert_eq!(lower, vec![TrialId(1), TrialId(3)]);
            assert_eq!(upper, vec![TrialId(2), TrialId(0)]);
        }
        {
            // A finished trial does not count: 4 left, ceil(4 * 0.25) = 1.
            trials[1].status = TrialStatus::Terminated;
            let ctx = SchedulerContext::new(&mut rng, &trials);
            let (lower, upper) = scheduler.quantiles(&ctx);
            assert_eq!(lower, vec![TrialId(3)]);
            assert_eq!(upper, vec![TrialId(0)]);
            trials[1].status = TrialStatus::Running;
        }
        scheduler.config.quantile_fraction = 0.5;
        scheduler.members.remove(&TrialId(4));
        scheduler.members.remove(&TrialId(3));
        {
            // 3 trials: ceil(1.5) = 2 is capped at floor(3 / 2) = 1.
            let ctx = SchedulerContext::new(&mut rng, &trials);
            let (lower, upper) = scheduler.quantiles(&ctx);
            assert_eq!((lower, upper), (vec![TrialId(1)], vec![TrialId(0)]));
        }
        // A trial without a score yet does not count; one scored trial gives no quantiles.
        scheduler.members.insert(TrialId(2), MemberState::default());
        scheduler.members.remove(&TrialId(1));
        let ctx = SchedulerContext::new(&mut rng, &trials);
        assert_eq!(scheduler.quantiles(&ctx), (vec![], vec![]));
        scheduler.members.clear();
        assert_eq!(scheduler.quantiles(&ctx), (vec![], vec![]));
    }

    #[test]
    fn quantiles_rank_by_score_in_both_modes() {
        for (mode, best) in [(Mode::Max, TrialId(1)), (Mode::Min, TrialId(0))] {
            let mut scheduler = pbt(
                PbtConfig::default(),
                mode,
                json!({ "x": { "uniform": [0, 1] } }),
            );
            let mut rng = CoreRng::seed_from_u64(0);
            let trials = running_trials(2);
            let mut ctx = SchedulerContext::new(&mut rng, &trials);
            scheduler.on_trial_add(&mut ctx, TrialId(0));
            scheduler.on_trial_add(&mut ctx, TrialId(1));
            let first = scheduler.on_trial_result(&mut ctx, &result(0, 1, 1.0));
            assert!(
                first.reason.contains("too few other scores"),
                "{}",
                first.reason
            );
            let d = scheduler.on_trial_result(&mut ctx, &result(1, 1, 2.0));
            if best == TrialId(1) {
                assert!(d.reason.contains("upper quantile"), "{mode}: {}", d.reason);
            } else {
                assert!(
                    matches!(d.action, Action::Exploit { .. }),
                    "{mode}: {}",
                    d.reason
                );
                assert_eq!(
                    d.details["donor"],
                    json!(0),
                    "{mode}: the trial with loss 1 is the donor"
                );
                assert!(
                    d.reason
                        .starts_with("pbt: score 2 is in the lower quantile"),
                    "{}",
                    d.reason
                );
            }
        }
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
        let mut seen_bs = BTreeSet::new();
        let mut seen_layers = BTreeSet::new();
        for _ in 0..200 {
            let donor = object(json!({"lr": 9e-4, "layers": 7, "bs": 2}));
            let (new, description) = scheduler.explore(&donor, &mut rng);
            let lr = new["lr"].as_f64().expect("lr");
            assert!((1e-5..=1e-3).contains(&lr), "lr {lr} ({description})");
            assert!(
                lr == 1e-3 || (lr - 9e-5).abs() < 1e-12,
                "9e-4 x 3 clamped, or x 0.1: {lr}"
            );
            let layers = new["layers"].as_i64().expect("an integer stays an integer");
            seen_layers.insert(layers);
            let bs = new["bs"].as_i64().expect("bs");
            seen_bs.insert(bs);
        }
        // 7 x 3 = 21 is clamped to 8 (randint's high is excluded); 7 x 0.1 = 0.7 to 1.
        assert_eq!(seen_layers, BTreeSet::from([1, 8]));
        // A neighbour of 2, never 2 x factor (6 or 0.2).
        assert_eq!(seen_bs, BTreeSet::from([1, 4]));
    }

    #[test]
    fn explore_of_a_list_moves_to_a_neighbour_clamped_at_the_ends_or_resamples() {
        let list = json!(["a", "b", "c", "d", "e"]);
        let explore_many = |resample_probability: f64, current: &str| {
            let config = PbtConfig {
                resample_probability,
                hyperparam_mutations: object(json!({ "opt": list })),
                ..PbtConfig::default()
            };
            let scheduler = pbt(config, Mode::Min, json!({}));
            let mut rng = CoreRng::seed_from_u64(5);
            (0..300)
                .map(|_| {
                    let (new, _) = scheduler.explore(&object(json!({"opt": current})), &mut rng);
                    new["opt"]
                        .as_str()
                        .expect("a string from the list")
                        .to_string()
                })
                .collect::<BTreeSet<String>>()
        };
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(explore_many(0.0, "c"), set(&["b", "d"]));
        assert_eq!(
            explore_many(0.0, "a"),
            set(&["a", "b"]),
            "clamped at the start"
        );
        assert_eq!(
            explore_many(0.0, "e"),
            set(&["d", "e"]),
            "clamped at the end"
        );
        assert_eq!(explore_many(1.0, "c"), set(&["a", "b", "c", "d", "e"]));
        // The default 0.25: mostly neighbours, sometimes a resample.
        let mixed = explore_many(0.25, "c");
        assert!(mixed.contains("a") || mixed.contains("e"), "{mixed:?}");
    }

    #[test]
    fn a_list_value_not_in_the_list_is_resampled() {
        let config = PbtConfig {
            resample_probability: 0.0,
            hyperparam_mutations: object(json!({ "bs": [8, 16, 32] })),
            ..PbtConfig::default()
        };
        let scheduler = pbt(config, Mode::Min, json!({}));
        let mut rng = CoreRng::seed_from_u64(1);
        let mut explore_many = |current: Value| {
            (0..100)
                .map(|_| {
                    let (new, _) = scheduler.explore(&object(json!({ "bs": current })), &mut rng);
                    new["bs"].as_i64().expect("bs")
                })
                .collect::<BTreeSet<i64>>()
        };
        assert_eq!(explore_many(json!(3)), BTreeSet::from([8, 16, 32]));
        // 32.0 is the list's 32: only neighbour moves (8 would be a resample).
        assert_eq!(explore_many(json!(32.0)), BTreeSet::from([16, 32]));
    }

    #[test]
    fn explore_of_a_distribution_perturbs_by_a_factor_or_resamples() {
        let space_json = json!({
            "x": { "uniform": [0, 100] },
            "n": { "lograndint": [1, 1000] },
            "q": { "qrandint": [0, 100, 5] },
            "nested": { "lr": { "loguniform": [1e-5, 1e-1] } },
        });
        let perturbing = pbt(
            PbtConfig {
                resample_probability: 0.0,
                perturbation_factors: vec![1.2],
                ..PbtConfig::default()
            },
            Mode::Max,
            space_json.clone(),
        );
        let donor =
            object(json!({"x": 50.0, "n": 7, "q": 40, "nested": {"lr": 1e-3}, "keep": "me"}));
        let mut rng = CoreRng::seed_from_u64(2);
        let (new, description) = perturbing.explore(&donor, &mut rng);
        assert_eq!(new["x"], json!(60.0));
        assert_eq!(new["n"], json!(8), "7 x 1.2 = 8.4 rounds to the integer 8");
        assert_eq!(
            new["q"],
            json!(50),
            "40 x 1.2 = 48 rounds to a multiple of 5"
        );
        let lr = new["nested"]["lr"].as_f64().expect("nested lr");
        assert!((lr - 1.2e-3).abs() < 1e-15, "{lr}");
        assert_eq!(
            new["keep"],
            json!("me"),
            "keys that are not mutated are the donor's"
        );
        assert_eq!(description, "x=60,n=8,q=50,nested.lr=0.0012");
        assert_eq!(short(&json!(2.4e-5)), "2.4e-5");
        assert_eq!(short(&json!(1e-4)), "1e-4");
        assert_eq!(short(&json!(0.25)), "0.25");
        assert_eq!(short(&json!(7)), "7");
        assert_eq!(short(&json!("adamw")), "adamw");

        let resampling = pbt(
            PbtConfig {
                resample_probability: 1.0,
                perturbation_factors: vec![1.2],
                ..PbtConfig::default()
            },
            Mode::Max,
            space_json,
        );
        let xs: Vec<f64> = (0..200)
            .map(|_| {
                resampling.explore(&donor, &mut rng).0["x"]
                    .as_f64()
                    .expect("x")
            })
            .collect();
        assert!(xs.iter().all(|x| (0.0..100.0).contains(x)));
        assert!(xs.iter().any(|x| *x < 20.0) && xs.iter().any(|x| *x > 80.0));
        let ns: Vec<Value> = (0..50)
            .map(|_| resampling.explore(&donor, &mut rng).0["n"].clone())
            .collect();
        assert!(
            ns.iter().all(|n| n.is_i64()),
            "resampled integers are integers"
        );
    }

    #[test]
    fn a_donor_without_checkpoint_is_not_copied() {
        let mut scheduler = pbt(
            PbtConfig::default(),
            Mode::Max,
            json!({ "x": { "uniform": [0, 1] } }),
        );
        let mut rng = CoreRng::seed_from_u64(0);
        let mut trials = running_trials(2);
        trials[1].checkpoints.clear();
        let mut ctx = SchedulerContext::new(&mut rng, &trials);
        scheduler.on_trial_add(&mut ctx, TrialId(0));
        scheduler.on_trial_add(&mut ctx, TrialId(1));
        scheduler.on_trial_result(&mut ctx, &result(1, 1, 10.0));
        let d = scheduler.on_trial_result(&mut ctx, &result(0, 1, 1.0));
        assert_eq!(d.action, Action::Continue);
        assert_eq!(
            d.reason,
            "pbt: score 1 is in the lower quantile, but the exploit is skipped because the donor trial_00001 has no checkpoint yet (a trial must report checkpoints for PBT to copy it)"
        );
        assert_eq!(d.details["skipped_exploit"], json!(true));
        assert_readable(std::slice::from_ref(&d));
    }

    #[test]
    fn a_skipped_exploit_reaches_the_decisions_log_through_the_tuner() {
        // The better trial (1) never reports a checkpoint, so the worse one cannot copy it.
        let settings = TunerSettings {
            metric: "score".into(),
            mode: Mode::Max,
            seed: 0,
            max_failures: 0,
            stop: Default::default(),
            ..TunerSettings::default()
        };
        let scheduler = pbt(
            PbtConfig::default(),
            Mode::Max,
            json!({ "x": { "uniform": [0, 1] } }),
        );
        let configs = vec![object(json!({"x": 0.1})), object(json!({"x": 0.9}))];
        let mut tuner = Tuner::new(
            settings,
            Box::new(FixedSearcher::new(configs)),
            Box::new(scheduler),
        );
        let a = tuner.next_to_run(0.0).expect("trial 0").trial;
        let b = tuner.next_to_run(0.0).expect("trial 1").trial;
        tuner
            .on_result(b, object(json!({"score": 9.0})), false, 1.0)
            .expect("running");
        let reply = tuner
            .on_result(a, object(json!({"score": 1.0})), true, 1.0)
            .expect("running");
        assert_eq!(reply.action, Action::Continue);
        let logged = tuner.drain_effects().into_iter().any(|e| {
            matches!(e, crate::tuner::Effect::Decision(d)
                if d.trial == a && d.reason.contains("the exploit is skipped"))
        });
        assert!(logged, "the skipped exploit is in the decisions log");
        assert!(tuner.trial(a).expect("a").tag.is_empty(), "not perturbed");
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
        let mut trials = running_trials(2);
        for t in &mut trials {
            for i in 2..=6 {
                t.checkpoints.insert(i, i as f64);
            }
        }
        let mut ctx = SchedulerContext::new(&mut rng, &trials);
        scheduler.on_trial_add(&mut ctx, TrialId(0));
        scheduler.on_trial_add(&mut ctx, TrialId(1));
        // t = 2 is a perturbation interval after 0, but still in the burn-in period.
        for t in 1..=2 {
            let d1 = scheduler.on_trial_result(&mut ctx, &result(1, t, 10.0));
            let d0 = scheduler.on_trial_result(&mut ctx, &result(0, t, 1.0));
            assert_eq!(d1.action, Action::Continue, "t={t}: {}", d1.reason);
            assert_eq!(d0.action, Action::Continue, "t={t}: {}", d0.reason);
        }
        let d0 = scheduler.on_trial_result(&mut ctx, &result(0, 2, 1.0));
        assert!(d0.reason.contains("burn-in"), "{}", d0.reason);
        // t = 3: burn-in over and an interval since 0: the worse trial copies the better one.
        let d1 = scheduler.on_trial_result(&mut ctx, &result(1, 3, 10.0));
        assert_eq!(d1.action, Action::Continue, "{}", d1.reason);
        let d0 = scheduler.on_trial_result(&mut ctx, &result(0, 3, 1.0));
        let Action::Exploit { donor, .. } = d0.action else {
            panic!("expected an exploit: {}", d0.reason);
        };
        assert_eq!(donor.trial, TrialId(1));
        // Trial 0 now continues from trial 1's state (last check at 3): nothing at 4.
        let d1 = scheduler.on_trial_result(&mut ctx, &result(1, 4, 10.0));
        let d0 = scheduler.on_trial_result(&mut ctx, &result(0, 4, 1.0));
        assert_eq!(d1.action, Action::Continue, "{}", d1.reason);
        assert_eq!(d0.action, Action::Continue, "{}", d0.reason);
        assert!(
            d0.reason
                .contains("next perturbation check at training_iteration = 5")
        );
        let d1 = scheduler.on_trial_result(&mut ctx, &result(1, 5, 10.0));
        assert_eq!(d1.action, Action::Continue, "{}", d1.reason);
        let d0 = scheduler.on_trial_result(&mut ctx, &result(0, 5, 1.0));
        assert!(matches!(d0.action, Action::Exploit { .. }), "{}", d0.reason);
    }

    #[test]
    fn a_result_without_the_metric_is_ignored_with_a_reason() {
        let mut scheduler = pbt(
            PbtConfig::default(),
            Mode::Max,
            json!({ "x": { "uniform": [0, 1] } }),
        );
        let mut rng = CoreRng::seed_from_u64(0);
        let trials = running_trials(1);
        let mut ctx = SchedulerContext::new(&mut rng, &trials);
        scheduler.on_trial_add(&mut ctx, TrialId(0));
        let r = TrialResult {
            trial: TrialId(0),
            metrics: object(json!({"loss": 1.0, "training_iteration": 1})),
            has_checkpoint: false,
        };
        let d = scheduler.on_trial_result(&mut ctx, &r);
        assert_eq!(d.action, Action::Continue);
        assert_eq!(
            d.reason,
            "pbt: the result lacks score (PBT ignores such results)"
        );
        let d = scheduler.on_trial_result(&mut ctx, &r);
        assert_eq!(d.reason, "pbt: the result lacks score", "said once in full");
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
        assert_eq!(
            bad(PbtConfig {
                perturbation_interval: 0.0,
                ..PbtConfig::default()
            })
            .as_deref(),
            Some("perturbation_interval")
        );
        assert_eq!(
            bad(PbtConfig {
                hyperparam_mutations: object(json!({"lr": {"loguniform": [0, 1]}})),
                ..PbtConfig::default()
            })
            .as_deref(),
            Some("hyperparam_mutations.lr")
        );
        let e = PbtScheduler::new(
            PbtConfig {
                hyperparam_mutations: object(json!({"lr": {"logunifrom": [1e-5, 1e-3]}})),
                ..PbtConfig::default()
            },
            "m",
            Mode::Min,
            &space(json!({})),
        )
        .expect_err("a typo");
        assert!(e.to_string().contains("did you mean `loguniform`"), "{e}");
        assert!(
            PbtScheduler::new(PbtConfig::default(), "m", Mode::Min, &space(json!({}))).is_err()
        );
    }
}

//! Schedulers decide what happens to running trials; they never touch processes.
//!
//! A scheduler answers every result with a [`Decision`] for the reporting trial and may add
//! decisions about other trials to the context's outbox (a synchronous scheduler that releases a
//! barrier, say). The [`crate::Tuner`] applies them and logs each one with its reason.

pub(crate) mod asha;
mod fifo;
mod hyperband;
mod median;
mod pbt;
mod replay;
mod spec;

pub use asha::{AshaConfig, AshaScheduler};
pub use fifo::FifoScheduler;
pub use hyperband::{HyperBandConfig, HyperBandScheduler};
pub use median::{MedianStoppingConfig, MedianStoppingScheduler};
pub use pbt::{PbtConfig, PbtScheduler};
pub use replay::{PolicyReplayScheduler, PolicyStep};
pub use spec::{FifoConfig, SchedulerSpec};

use serde::{Deserialize, Serialize};

use crate::trial::{CheckpointId, TrialId, TrialStatus};
use crate::tuner::Trial;
use crate::{Config, CoreRng, TrialResult};

/// What should happen to a trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Keep running.
    Continue,
    /// End the trial for good (status TERMINATED).
    Stop,
    /// End the process after its latest checkpoint; the trial stays PAUSED until
    /// [`Scheduler::choose_trial_to_run`] picks it again. A trial without a checkpoint is not
    /// paused: the tuner lets it keep running and logs why.
    Pause,
    /// Restart the trial from another trial's checkpoint with a new configuration (PBT).
    Exploit {
        donor: CheckpointId,
        config: Config,
        /// Human-readable description of the change, e.g. `lr=2.4e-05`.
        description: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Continue => "continue",
            Action::Stop => "stop",
            Action::Pause => "pause",
            Action::Exploit { .. } => "exploit",
        }
    }
}

/// A decision about one trial, with the reason a user will read in the decisions log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub trial: TrialId,
    #[serde(flatten)]
    pub action: Action,
    /// One sentence: why. E.g. `eval_loss 1.8 is worse than the rung-1 cutoff 1.75`.
    pub reason: String,
    /// Machine-readable details (rung, cutoff, value, ...), `null` when there are none.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Decision {
    pub fn new(trial: TrialId, action: Action, reason: impl Into<String>) -> Self {
        Decision {
            trial,
            action,
            reason: reason.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn continue_(trial: TrialId, reason: impl Into<String>) -> Self {
        Decision::new(trial, Action::Continue, reason)
    }

    pub fn stop(trial: TrialId, reason: impl Into<String>) -> Self {
        Decision::new(trial, Action::Stop, reason)
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// What a scheduler sees of the experiment, and where it leaves decisions about other trials.
pub struct SchedulerContext<'a> {
    /// The experiment's one seeded RNG.
    pub rng: &'a mut CoreRng,
    /// Every trial of the experiment, indexed by `TrialId.0`.
    pub trials: &'a [Trial],
    /// Decisions about trials other than the reporting one.
    pub outbox: Vec<Decision>,
}

impl<'a> SchedulerContext<'a> {
    pub fn new(rng: &'a mut CoreRng, trials: &'a [Trial]) -> Self {
        SchedulerContext {
            rng,
            trials,
            outbox: Vec::new(),
        }
    }

    pub fn trial(&self, id: TrialId) -> Option<&Trial> {
        self.trials.get(id.0 as usize)
    }

    pub fn status(&self, id: TrialId) -> Option<TrialStatus> {
        self.trial(id).map(|t| t.status)
    }
}

/// The scheduler interface, after Ray Tune's `TrialScheduler`: hooks that return decisions.
///
/// Implementations must be deterministic given the context's RNG: no clock, no I/O.
pub trait Scheduler: Send + std::fmt::Debug {
    /// Short name for logs (`asha`, `fifo`, ...).
    fn name(&self) -> &'static str;

    /// Whether the tuner should create every trial the searcher offers up front (PBT's
    /// population) rather than one whenever a slot is free. With more trials than slots, such a
    /// scheduler time-multiplexes them by pausing and resuming.
    fn creates_population(&self) -> bool {
        false
    }

    /// A trial was created with its configuration.
    fn on_trial_add(&mut self, _ctx: &mut SchedulerContext<'_>, _trial: TrialId) {}

    /// A trial reported a result. Return the decision for that trial.
    fn on_trial_result(&mut self, ctx: &mut SchedulerContext<'_>, result: &TrialResult)
    -> Decision;

    /// A trial finished on its own (its process exited successfully) or was stopped.
    fn on_trial_complete(
        &mut self,
        _ctx: &mut SchedulerContext<'_>,
        _trial: TrialId,
        _last: Option<&TrialResult>,
    ) {
    }

    /// A trial failed for good.
    fn on_trial_error(&mut self, _ctx: &mut SchedulerContext<'_>, _trial: TrialId) {}

    /// A trial's results after its last one that still counts were rolled back: it restarts
    /// from an earlier checkpoint (a lost run, a retry) and will report those iterations again.
    /// `kept_time` is the `time_attr` of that last result (`None`: none counts any more; NaN:
    /// it lacked the key). Forget what was recorded from the others, so nothing is counted twice
    /// and a rolled-back result never counts. The default keeps nothing per result.
    fn on_trial_rollback(
        &mut self,
        _ctx: &mut SchedulerContext<'_>,
        _trial: TrialId,
        _kept_time: Option<f64>,
    ) {
    }

    /// The scheduler's own state as a value, for the journal's snapshots ([`Scheduler::restore`]
    /// reads it back). Stateless schedulers keep the default (`null`).
    fn save(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Load a state [`Scheduler::save`] wrote (possibly an earlier release's) into a scheduler
    /// freshly built from the same settings.
    fn restore(&mut self, state: serde_json::Value) -> Result<(), String> {
        restore_nothing(self.name(), &state)
    }

    /// Which existing PENDING or PAUSED trial to run next, if any. `None` lets the tuner ask the
    /// searcher for a new trial. Must not change state when called twice in a row.
    ///
    /// The default runs PENDING trials first, oldest first, then PAUSED trials that are ready.
    fn choose_trial_to_run(&mut self, ctx: &mut SchedulerContext<'_>) -> Option<TrialId> {
        default_choose_trial_to_run(ctx.trials)
    }

    /// The most any trial may train, when the scheduler fixes it (ASHA and HyperBand with
    /// `stop_last_trials`): the runner refuses a report beyond it. `None`: no fixed end.
    fn budget(&self) -> Option<Budget> {
        None
    }

    /// The result key the scheduler measures progress by, if it reads one: every result must
    /// carry it (the runner refuses a report without it).
    fn time_attr(&self) -> Option<&str> {
        None
    }
}

/// A snapshot of named state fields (`save` of a scheduler or searcher).
pub(crate) fn save_fields(
    fields: &[(&str, serde_json::Result<serde_json::Value>)],
) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in fields {
        // A field that cannot be written leaves a snapshot that does not restore; the runner
        // checks every snapshot by restoring it before it relies on it.
        let value = value.as_ref().map_or(serde_json::Value::Null, Clone::clone);
        map.insert((*name).to_string(), value);
    }
    serde_json::Value::Object(map)
}

/// The default `restore` of schedulers and searchers that keep no state: only `null` fits.
pub(crate) fn restore_nothing(name: &str, state: &serde_json::Value) -> Result<(), String> {
    if state.is_null() {
        Ok(())
    } else {
        Err(format!("{name} keeps no state, but the snapshot has some"))
    }
}

/// One field of a saved state (see [`save_fields`]), for `restore`.
pub(crate) fn load_field<T: serde::de::DeserializeOwned>(
    state: &mut serde_json::Value,
    name: &str,
) -> Result<T, String> {
    let value = state
        .get_mut(name)
        .map(serde_json::Value::take)
        .ok_or_else(|| format!("the saved state has no `{name}`"))?;
    serde_json::from_value(value).map_err(|e| format!("`{name}`: {e}"))
}

/// A scheduler's fixed end of every trial: it stops a trial once `time_attr` reaches `max_t`.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// The result key that measures progress (`training_iteration`, `epoch`, ...).
    pub time_attr: String,
    pub max_t: f64,
}

/// PENDING trials oldest first, then PAUSED trials that are ready to resume.
pub fn default_choose_trial_to_run(trials: &[Trial]) -> Option<TrialId> {
    trials
        .iter()
        .find(|t| t.status == TrialStatus::Pending)
        .or_else(|| {
            trials
                .iter()
                .find(|t| t.status == TrialStatus::Paused && t.resumable)
        })
        .map(|t| t.id)
}

/// A scheduler setting that cannot work (`grace_period = 0`, `quantile_fraction = 0.7`, ...).
/// `field` is the key under `[scheduler]`, so the message can name the place to fix.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("scheduler.{field}: {message}")]
pub struct InvalidSetting {
    pub field: String,
    pub message: String,
}

impl InvalidSetting {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidSetting {
            field: field.into(),
            message: message.into(),
        }
    }
}

//! The tuner: one owner of the experiment's state, driven by inputs.
//!
//! The runner feeds every [`Input`] through [`Tuner::apply`] (a trial may start, a trial
//! reported, a process exited, a run was placed, ...), carries out the [`Effect`]s it drains
//! with [`Tuner::drain_effects`], and journals each input together with the [`Outcome`] the
//! core recorded for it (the trials it created, the trial it started, the decisions it took).
//! Time enters only as the inputs' `now` (seconds since the Unix epoch), randomness only from the
//! seeded RNG, so the same inputs give the same decisions.
//!
//! Resume does not depend on the code deciding the same way again: [`Tuner::snapshot`] is the
//! whole state as a versioned value ([`CoreSnapshot`]), and [`Tuner::replay`] re-applies a
//! journaled input with its recorded outcome forced, so the trials, configs and decisions are
//! the ones that really happened while every scheduler's and searcher's own state is rebuilt by
//! the running code. [`Tuner::replay_divergences`] counts where the running code would have
//! decided otherwise (zero when the same release replays its own journal).

use std::collections::BTreeMap;

use rand::SeedableRng;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::placement::Placement;
use crate::result::json_kind;
use crate::scheduler::{Action, Decision, PolicyStep, Scheduler, SchedulerContext};
use crate::searcher::{Searcher, Suggestion};
use crate::trial::{CheckpointId, TrialId, TrialStatus};
use crate::{Config, CoreRng, Mode, TrialResult};

/// Errors from feeding the tuner inputs that do not fit its state. These come from the runner
/// (a report for an unknown trial, a stale run) or from a journal that does not fit the code,
/// never from a user's input: a user's bad report is a [`ReportRefusal`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TunerError {
    #[error("no trial {0}")]
    UnknownTrial(TrialId),
    #[error("trial {trial} is {status}, not RUNNING: {event} ignored")]
    NotRunning {
        trial: TrialId,
        status: TrialStatus,
        event: &'static str,
    },
    #[error("trial {trial}: run {run} is not its current run ({current})")]
    StaleRun {
        trial: TrialId,
        run: u32,
        current: u32,
    },
    #[error("trial {trial}: report refused: {refusal}")]
    Refused {
        trial: TrialId,
        refusal: ReportRefusal,
    },
    /// A status change the trial state machine does not allow ([`TrialStatus::can_become`]).
    #[error("trial {trial}: {from} cannot become {to}")]
    Transition {
        trial: TrialId,
        from: TrialStatus,
        to: TrialStatus,
    },
    #[error("the core snapshot does not fit this experiment: {0}")]
    Snapshot(String),
}

/// What rtune does with a result that lacks the experiment's metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingMetric {
    /// The first such result ends the experiment (exit 2) and names the keys that were
    /// reported: almost always a misspelled metric name.
    #[default]
    Error,
    /// Such results are recorded; schedulers skip them (for trainables that report the metric
    /// only sometimes, e.g. every few epochs).
    Ignore,
}

/// Experiment-wide limits the core enforces (each one optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// `time_budget_s`: once this many seconds have passed since the experiment began, every
    /// trial is stopped and the experiment ends.
    pub time_budget_s: Option<f64>,
    /// `max_total_results`: after this many results over all trials, every trial is stopped.
    pub max_total_results: Option<u64>,
    /// `fail_fast`: when the first N trials all end in ERROR, the experiment stops.
    pub fail_fast: Option<u32>,
    /// `trial.report_timeout_s`: a run that has not reported for this long is ended and
    /// counted as a failure (retried per `max_failures`).
    pub report_timeout_s: Option<f64>,
}

/// Settings of the tuner that are not the scheduler's or the searcher's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunerSettings {
    pub metric: String,
    pub mode: Mode,
    pub seed: u64,
    /// How often a failed trial is restarted (from its latest checkpoint) before it is an ERROR.
    pub max_failures: u32,
    /// Stop a trial once a result reaches any of these values (`training_iteration = 5`, ...).
    /// Reached means `>=`.
    pub stop: BTreeMap<String, f64>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub missing_metric: MissingMetric,
    /// A trial whose process exits with status 0 without ever having reported a result is an
    /// ERROR (the trainable never calls `report`), unless this is false.
    #[serde(default = "yes")]
    pub require_report: bool,
}

fn yes() -> bool {
    true
}

impl Default for TunerSettings {
    /// Metric `loss`, minimised, seed 0, no retries, no stop criteria or limits; a trial must
    /// report.
    fn default() -> Self {
        TunerSettings {
            metric: "loss".into(),
            mode: Mode::Min,
            seed: 0,
            max_failures: 0,
            stop: BTreeMap::new(),
            limits: Limits::default(),
            missing_metric: MissingMetric::Error,
            require_report: true,
        }
    }
}

/// Which checkpoints of a trial are kept on disk (`[checkpoint]` in the experiment file).
///
/// A trial's latest checkpoint is always kept (pausing, resuming and retrying need it), and so is
/// any checkpoint that a waiting trial will restart from (a paused trial, or an exploit whose
/// target has not copied the donor's checkpoint yet), whatever these settings say.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointRetention {
    /// Keep at most this many checkpoints per trial; `None` keeps all.
    pub num_to_keep: Option<usize>,
    /// Rank checkpoints by this reported metric (the best are kept) instead of by recency.
    pub score_attribute: Option<String>,
    /// Whether a larger or smaller `score_attribute` is better.
    pub score_mode: Option<Mode>,
}

/// One result of a trial that still counts, as the core keeps it: what the best value and the
/// schedulers' rollbacks need, not the whole result (that lives in the trial's `result.json`).
/// 24 bytes, so a million results cost the core 24 MB.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurvePoint {
    pub iteration: u64,
    /// The experiment's metric, NaN when the result lacked it.
    pub value: f64,
    /// The scheduler's `time_attr` (its progress measure), NaN when it has none or the result
    /// lacked it.
    pub time: f64,
}

impl Serialize for CurvePoint {
    /// `[iteration, value, time]`, with `null` for NaN (JSON has no NaN).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let finite = |v: f64| v.is_finite().then_some(v);
        (self.iteration, finite(self.value), finite(self.time)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CurvePoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (iteration, value, time): (u64, Option<f64>, Option<f64>) =
            Deserialize::deserialize(deserializer)?;
        Ok(CurvePoint {
            iteration,
            value: value.unwrap_or(f64::NAN),
            time: time.unwrap_or(f64::NAN),
        })
    }
}

/// Everything the tuner knows about one trial. The runner and the schedulers read it; only the
/// tuner changes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub id: TrialId,
    pub config: Config,
    pub status: TrialStatus,
    /// Suffix shown after the trial's name, e.g. `@perturbed[lr=2.4e-05]`; empty if none.
    pub tag: String,
    /// The iteration of its latest result (0 before the first).
    pub iteration: u64,
    /// Seconds spent running, over all its runs, as reported with results.
    pub time_total_s: f64,
    /// Its latest result that counts; `None` before the first, and after a rollback or an
    /// exploit until it reports again.
    pub last_result: Option<LastResult>,
    /// Best value of the experiment's metric over its results that count, and the iteration.
    pub best: Option<(f64, u64)>,
    /// Checkpoints this trial has, by iteration, with the total time at each.
    pub checkpoints: BTreeMap<u64, f64>,
    /// The value of the retention's `score_attribute` at each checkpoint that reported it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checkpoint_scores: BTreeMap<u64, f64>,
    /// What the next run starts from: its own latest checkpoint after a pause or failure, a
    /// donor's checkpoint after an exploit, nothing for a fresh start.
    pub restore: Option<CheckpointId>,
    /// How many runs (processes) this trial has had.
    pub runs: u32,
    pub failures: u32,
    /// For a PAUSED trial: whether it may be resumed now. Synchronous schedulers keep paused
    /// trials waiting until their barrier releases them.
    pub resumable: bool,
    /// The last error message, for ERROR trials and retried ones.
    pub error: Option<String>,
    /// Set while the tuner waits for a process it asked to end.
    pub ending: Option<Ending>,
    /// Its configuration by iteration (PBT's policy) once it was exploited; empty before,
    /// which means `config` from iteration 0 (so that no trial holds a second copy of its
    /// config). Read it through [`Trial::policy_steps`].
    #[serde(default)]
    pub policy: Vec<PolicyStep>,
    /// Its results that count, in order of strictly increasing iteration: what `result.json`
    /// holds.
    #[serde(default)]
    pub curve: Vec<CurvePoint>,
    /// Results it ever reported, over all runs, rolled-back ones included.
    #[serde(default)]
    pub results_total: u64,
    /// Where its latest run was placed.
    #[serde(default)]
    pub placement: Option<Box<Placement>>,
    /// When its current run's processes started (`None` while it does not run, or its job
    /// waits in a queue).
    #[serde(default)]
    pub run_started_at: Option<f64>,
    /// When its current run last reported or started: the next result's `time_this_iter_s`
    /// counts from here, and so does `report_timeout_s`.
    #[serde(default)]
    pub last_report_at: Option<f64>,
    /// The experiment's end that stopped it, if one did ([`Tuner::stop_all`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<Box<EndReason>>,
}

impl Trial {
    /// Its configuration by iteration: the recorded policy, or its config from iteration 0
    /// when it was never exploited.
    pub fn policy_steps(&self) -> std::borrow::Cow<'_, [PolicyStep]> {
        if self.policy.is_empty() {
            std::borrow::Cow::Owned(vec![PolicyStep {
                from_iteration: 0,
                config: self.config.clone(),
            }])
        } else {
            std::borrow::Cow::Borrowed(&self.policy)
        }
    }

    /// A fresh PENDING trial (also for scheduler tests that build contexts by hand).
    pub(crate) fn new_pending(id: TrialId, config: Config) -> Trial {
        Trial {
            id,
            config,
            status: TrialStatus::Pending,
            tag: String::new(),
            iteration: 0,
            time_total_s: 0.0,
            last_result: None,
            best: None,
            checkpoints: BTreeMap::new(),
            checkpoint_scores: BTreeMap::new(),
            restore: None,
            runs: 0,
            failures: 0,
            resumable: true,
            error: None,
            ending: None,
            policy: Vec::new(),
            curve: Vec::new(),
            results_total: 0,
            placement: None,
            run_started_at: None,
            last_report_at: None,
            stopped_by: None,
        }
    }

    /// Forget the results after `iteration` (a restart from the checkpoint at `iteration`, or
    /// from scratch with 0; or an exploit that restarts from a donor's checkpoint there) and
    /// recompute what derives from them. Returns whether anything was forgotten.
    fn truncate_after(&mut self, iteration: u64, mode: Mode) -> bool {
        let before = self.curve.len();
        self.curve.retain(|p| p.iteration <= iteration);
        if self.curve.len() == before {
            return false;
        }
        self.last_result = None;
        self.best = best_of(&self.curve, mode);
        true
    }

    /// The trial's name with its tag: `trial_00003@perturbed[lr=2.4e-05]`.
    pub fn display_name(&self) -> String {
        format!("{}{}", self.id.name(), self.tag)
    }

    pub fn latest_checkpoint(&self) -> Option<CheckpointId> {
        self.checkpoints
            .keys()
            .next_back()
            .map(|&iteration| CheckpointId {
                trial: self.id,
                iteration,
            })
    }

    /// Its mean seconds between reports so far, once it has reported.
    pub fn mean_report_interval(&self) -> Option<f64> {
        (self.iteration > 0 && self.time_total_s > 0.0)
            .then(|| self.time_total_s / self.iteration as f64)
    }
}

/// A trial's latest result as the core keeps it: its JSON text in one allocation, not a map of
/// every key (a few hundred bytes per trial instead of about 1.5 KB), read back when a decision
/// needs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastResult {
    /// Every key the trial reported plus the automatic ones, as a JSON object.
    pub metrics: Box<serde_json::value::RawValue>,
    pub has_checkpoint: bool,
}

impl PartialEq for LastResult {
    fn eq(&self, other: &Self) -> bool {
        self.metrics.get() == other.metrics.get() && self.has_checkpoint == other.has_checkpoint
    }
}

impl LastResult {
    fn of(result: &TrialResult) -> Option<LastResult> {
        Some(LastResult {
            metrics: serde_json::value::to_raw_value(&result.metrics).ok()?,
            has_checkpoint: result.has_checkpoint,
        })
    }

    /// The result, read back.
    pub fn result(&self, trial: TrialId) -> TrialResult {
        TrialResult {
            trial,
            metrics: serde_json::from_str(self.metrics.get()).unwrap_or_default(),
            has_checkpoint: self.has_checkpoint,
        }
    }
}

/// The best metric value over a curve, and the iteration it was reached at (the earliest of
/// equal ones).
fn best_of(curve: &[CurvePoint], mode: Mode) -> Option<(f64, u64)> {
    curve
        .iter()
        .filter(|p| !p.value.is_nan())
        .fold(None, |best, p| match best {
            Some((value, _)) if !mode.is_better(p.value, value) => best,
            _ => Some((p.value, p.iteration)),
        })
}

/// Why the tuner asked a running trial's process to end, so its exit is read correctly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// It becomes TERMINATED, whatever its exit code.
    Stop,
    /// It becomes PAUSED.
    Pause,
    /// The experiment is interrupted: PAUSED if it can resume from a checkpoint, else
    /// INTERRUPTED.
    Interrupt,
    /// It reported nothing for `report_timeout_s`: its exit is a failure.
    Timeout,
}

/// What the runner is asked to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    pub trial: TrialId,
    pub config: Config,
    /// Checkpoint to restore from; the runner makes its files available to the process.
    pub restore: Option<CheckpointId>,
    /// 0 for the first run, then 1, 2, ... for every restart.
    pub run: u32,
}

/// How a trial's process ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Success,
    Failure(String),
    /// The run was taken away through no fault of its own (SLURM requeued or preempted its
    /// job, its node failed): the trial restarts as a new run from its latest checkpoint (from
    /// scratch without one), and this is not counted as a failure.
    Lost(String),
}

/// What the runner answers a report with.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The result with its automatic keys, for storage.
    pub result: TrialResult,
    /// What the trial is told: Continue, Stop or Pause (an exploit is a pause whose restart
    /// starts from another checkpoint).
    pub action: Action,
    /// Whether this is the trial's final result (it is told to stop for good).
    pub done: bool,
}

/// Why results stop counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// The trial restarts from an earlier checkpoint (a failure, a lost run, a resume) and will
    /// report those iterations again.
    RolledBack,
    /// A PBT exploit restarts it from a donor's checkpoint at an earlier iteration.
    Exploited,
}

impl Truncation {
    pub fn as_str(self) -> &'static str {
        match self {
            Truncation::RolledBack => "rolled back",
            Truncation::Exploited => "replaced by an exploit",
        }
    }
}

/// Something the runner must do after a call into the tuner.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Log this decision (the decisions log).
    Decision(Decision),
    /// A trial's status changed.
    Status {
        trial: TrialId,
        status: TrialStatus,
        reason: String,
    },
    /// End this trial's running process (the tuner has recorded why).
    EndProcess { trial: TrialId },
    /// Nobody needs this checkpoint any more.
    DeleteCheckpoint(CheckpointId),
    /// Something a user should read: a trial restarting from scratch, a pause skipped, ...
    Warning { trial: TrialId, message: String },
    /// PBT exploited `target` from `donor`: the lineage log's line. The target's new policy is
    /// its [`Trial::policy`].
    Exploited {
        target: TrialId,
        donor: CheckpointId,
        target_iteration: u64,
        old_config: Config,
        new_config: Config,
        change: String,
        details: Value,
    },
    /// The trial's results after `through_iteration` no longer count: its `result.json` keeps
    /// only the results up to there (the others go to `superseded.json`).
    Truncated {
        trial: TrialId,
        through_iteration: u64,
        reason: Truncation,
    },
    /// A model-based searcher proposed this trial's config, for this reason (the decisions log).
    Proposal {
        trial: TrialId,
        searcher: &'static str,
        reason: String,
        details: Value,
    },
    /// The experiment ends early for good: every unfinished trial is being stopped.
    Ended(EndReason),
}

/// What `rtune resume` does with trials that ended in ERROR (Ray Tune's `restart_errored` and
/// `resume_errored`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErroredTrials {
    /// They stay ERROR.
    #[default]
    Keep,
    /// They run again from scratch.
    Restart,
    /// They run again from their latest checkpoint (from scratch without one).
    Resume,
}

/// Why a report is not taken. Refused reports are answered with the message and never
/// recorded; [`ReportRefusal::ends_experiment`] ones also end the experiment (the user's
/// mistake, which would repeat in every trial).
#[derive(Clone, Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum ReportRefusal {
    #[error(
        "{} was told to {} at training_iteration {iteration}; this report is not recorded ({}): the process should exit now",
        trial.name(),
        told_verb(*told),
        told_why(*told)
    )]
    AfterEnding {
        trial: TrialId,
        told: Ending,
        iteration: u64,
    },
    #[error(
        "metric `{key}` is {value} ({json_kind}), but it is {role} and must be a number (or null when there is none); the report is not recorded. Other keys may hold any JSON value and are kept in result.json"
    )]
    NotANumber {
        key: String,
        value: String,
        json_kind: String,
        role: String,
    },
    #[error(
        "the result has no `{metric}`, the experiment's metric; it reported {}\nhint: set `metric` in the experiment file to the key the trainable reports (did you mean {}?), or set missing_metric = \"ignore\" if it reports `{metric}` only in some results",
        show_keys(reported),
        closest(metric, reported)
    )]
    MissingMetric {
        metric: String,
        reported: Vec<String>,
    },
    #[error(
        "the result has no number `{time_attr}`, the scheduler's time_attr (how it measures a trial's progress); it reported {}\nhint: report `{time_attr}` in every result, or set scheduler.time_attr to a key the trial reports (or to training_iteration, which rtune counts)",
        show_keys(reported)
    )]
    MissingTimeAttr {
        time_attr: String,
        reported: Vec<String>,
    },
    #[error(
        "{}'s report at {time_attr} = {value} is past the scheduler's max_t = {max_t}, where the trial's budget ends; it is not recorded: the process should exit (the trial should have stopped at max_t; check that it counts {time_attr} as the experiment does)",
        trial.name()
    )]
    PastMaxT {
        trial: TrialId,
        time_attr: String,
        value: f64,
        max_t: f64,
    },
}

impl ReportRefusal {
    /// Whether this mistake ends the whole experiment (it would repeat in every trial).
    pub fn ends_experiment(&self) -> bool {
        matches!(
            self,
            ReportRefusal::MissingMetric { .. } | ReportRefusal::MissingTimeAttr { .. }
        )
    }
}

fn told_verb(ending: Ending) -> &'static str {
    match ending {
        Ending::Pause => "pause",
        Ending::Stop | Ending::Interrupt | Ending::Timeout => "stop",
    }
}

fn told_why(ending: Ending) -> &'static str {
    match ending {
        Ending::Stop => "the trial is finished",
        Ending::Pause => "it will restart from its latest checkpoint",
        Ending::Interrupt => {
            "the experiment was interrupted; `rtune resume` continues it from its latest checkpoint"
        }
        Ending::Timeout => "it reported nothing for trial.report_timeout_s and counts as failed",
    }
}

fn show_keys(keys: &[String]) -> String {
    if keys.is_empty() {
        "no keys at all".into()
    } else {
        keys.iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The reported key closest to `wanted` (by edit distance), as a suggestion.
fn closest(wanted: &str, keys: &[String]) -> String {
    let distance = |a: &str, b: &str| -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, &cb) in b.iter().enumerate() {
                let substitution = previous + usize::from(ca != cb);
                previous = row[j + 1];
                row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
            }
        }
        row[b.len()]
    };
    keys.iter()
        .min_by_key(|k| distance(wanted, k))
        .map_or_else(|| "a reported key".into(), |k| format!("`{k}`"))
}

/// Why an experiment ends early for good (every unfinished trial is stopped).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EndReason {
    /// `time_budget_s` is used up.
    TimeBudget { seconds: f64 },
    /// `max_total_results` is used up.
    ResultBudget { results: u64 },
    /// `fail_fast`: the first `trials` trials all ended in ERROR; `error` is the first error's
    /// first line.
    FailFast { trials: u32, error: String },
    /// A report showed a mistake in the experiment file (a wrong metric name, a missing
    /// time_attr), which every trial would repeat.
    BadReport { refusal: ReportRefusal },
    /// Anything else, said in words (journals of earlier releases, tests).
    Other { reason: String },
}

impl<'de> Deserialize<'de> for EndReason {
    /// Also reads the plain text reason of earlier journals.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        enum Typed {
            TimeBudget { seconds: f64 },
            ResultBudget { results: u64 },
            FailFast { trials: u32, error: String },
            BadReport { refusal: ReportRefusal },
            Other { reason: String },
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Typed(Typed),
            Text(String),
        }
        Ok(match Either::deserialize(deserializer)? {
            Either::Text(reason) => EndReason::Other { reason },
            Either::Typed(Typed::TimeBudget { seconds }) => EndReason::TimeBudget { seconds },
            Either::Typed(Typed::ResultBudget { results }) => EndReason::ResultBudget { results },
            Either::Typed(Typed::FailFast { trials, error }) => {
                EndReason::FailFast { trials, error }
            }
            Either::Typed(Typed::BadReport { refusal }) => EndReason::BadReport { refusal },
            Either::Typed(Typed::Other { reason }) => EndReason::Other { reason },
        })
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::TimeBudget { seconds } => {
                write!(
                    f,
                    "the time budget of {seconds} s (time_budget_s) is used up"
                )
            }
            EndReason::ResultBudget { results } => write!(
                f,
                "the budget of {results} results (max_total_results) is used up"
            ),
            EndReason::FailFast { trials, error } => write!(
                f,
                "fail_fast: the first {trials} trials all ended in ERROR; the first failed with: {error}"
            ),
            EndReason::BadReport { refusal } => write!(f, "{refusal}"),
            EndReason::Other { reason } => f.write_str(reason),
        }
    }
}

impl EndReason {
    /// Whether the user's experiment file is at fault (the CLI exits 2).
    pub fn is_user_error(&self) -> bool {
        matches!(self, EndReason::BadReport { .. })
    }
}

/// Why an experiment is interrupted (it stops now and can be resumed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InterruptReason {
    /// Ctrl-C (SIGINT).
    CtrlC,
    /// SIGTERM: `scancel`, SLURM's time limit, a system shutdown.
    Sigterm,
    /// SIGHUP: the terminal or ssh session went away.
    Sighup,
    /// SIGUSR1 from SLURM: the head job's time limit is near (`rtune submit --time`).
    TimeLimit,
    /// rtune cannot write its own files (a full disk).
    WriteFailure,
    /// Words from a journal of an earlier release.
    Other(String),
}

impl<'de> Deserialize<'de> for InterruptReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.as_str() {
            "ctrl_c" => InterruptReason::CtrlC,
            "sigterm" => InterruptReason::Sigterm,
            "sighup" => InterruptReason::Sighup,
            "time_limit" => InterruptReason::TimeLimit,
            "write_failure" => InterruptReason::WriteFailure,
            _ => InterruptReason::Other(text),
        })
    }
}

impl std::fmt::Display for InterruptReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InterruptReason::CtrlC => "the experiment was interrupted (Ctrl-C)",
            InterruptReason::Sigterm => {
                "the experiment was interrupted (SIGTERM, e.g. scancel or the SLURM time limit)"
            }
            InterruptReason::Sighup => {
                "the experiment was interrupted (SIGHUP: the terminal or ssh session went away)"
            }
            InterruptReason::TimeLimit => {
                "the experiment was stopped for the job's time limit (SIGUSR1 from SLURM)"
            }
            InterruptReason::WriteFailure => "rtune cannot write its files",
            InterruptReason::Other(text) => text,
        })
    }
}

/// One input to the core. The runner journals each with the [`Outcome`] the core recorded for
/// it before any of its effects are carried out; [`Tuner::replay`] of the journal's lines, in
/// order, rebuilds the whole state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// The experiment begins: its time (`time_budget_s`) counts from `now`.
    Begin { now: f64 },
    /// The runner has room for one more trial ([`Tuner::next_to_run`]).
    Next {
        now: f64,
        /// Journals of earlier releases recorded the started trial here; it is now part of the
        /// line's [`Outcome`].
        #[serde(default, skip_serializing)]
        started: Option<Launch>,
    },
    /// A trial's run reported ([`Tuner::on_result`]).
    Report {
        now: f64,
        trial: TrialId,
        run: u32,
        metrics: serde_json::Map<String, Value>,
        checkpoint: bool,
    },
    /// Where a started run runs (or waits to run). `running` says its processes run now: its
    /// time (`time_this_iter_s`, `report_timeout_s`) counts from `now`; a run whose job waits
    /// in a queue is placed with `running: false` first, and again with `running: true` when it
    /// starts.
    Placed {
        now: f64,
        trial: TrialId,
        run: u32,
        placement: Placement,
        running: bool,
    },
    /// Journals of earlier releases: a queued run started (now [`Input::Placed`]).
    Started { now: f64, trial: TrialId, run: u32 },
    /// A run reported nothing for `report_timeout_s`: it is ended and counts as a failure.
    Timeout { now: f64, trial: TrialId, run: u32 },
    /// A trial's run ended ([`Tuner::on_exit`]).
    Exit {
        now: f64,
        trial: TrialId,
        run: u32,
        exit: Exit,
    },
    /// The experiment is interrupted (a signal, a write error): running trials are ended,
    /// nothing new starts; `Resume` continues.
    Interrupt { now: f64, reason: InterruptReason },
    /// The experiment ends early for good (time budget, a wrong metric name, ...): every
    /// unfinished trial stops.
    StopAll { now: f64, reason: EndReason },
    /// A new head takes over the experiment (`rtune resume`): runs that were going on are lost.
    Resume {
        now: f64,
        #[serde(default)]
        errored: ErroredTrials,
    },
}

impl Input {
    /// The time the input happened.
    pub fn now(&self) -> f64 {
        match self {
            Input::Begin { now }
            | Input::Next { now, .. }
            | Input::Report { now, .. }
            | Input::Placed { now, .. }
            | Input::Started { now, .. }
            | Input::Timeout { now, .. }
            | Input::Exit { now, .. }
            | Input::Interrupt { now, .. }
            | Input::StopAll { now, .. }
            | Input::Resume { now, .. } => *now,
        }
    }
}

/// A trial the core created, with its config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub trial: TrialId,
    pub config: Config,
}

/// A decision the core carried out (every one but "continue").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decided {
    pub trial: TrialId,
    #[serde(flatten)]
    pub action: Action,
}

/// What the core did with one input, as the journal records it: what really happened, so a
/// replay by a later release (which may decide otherwise) still rebuilds the same trials.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outcome {
    /// Trials created, in order, with their configs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<Created>,
    /// The trial started, for [`Input::Next`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<Launch>,
    /// The searcher said it has nothing more.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
    /// Decisions carried out, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decided: Vec<Decided>,
}

impl Outcome {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
            && self.started.is_none()
            && !self.finished
            && self.decided.is_empty()
    }
}

/// What the core answers an [`Input`].
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Launch(Option<Launch>),
    Reply(Reply),
    Done,
}

/// The version of [`CoreSnapshot`]'s layout. A release that changes it reads the older ones.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// The core's whole state as a value: what a journal's snapshot line holds, so a resume loads it
/// and replays only the lines after it. (`Trials` is only replaced to read a snapshot back
/// without holding its trials: [`SnapshotCheck`].)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoreSnapshot<Trials = Vec<Trial>> {
    pub format: u32,
    pub trials: Trials,
    /// The tuner RNG's position (ChaCha8 word position, as decimal text: JSON numbers cannot
    /// hold 128 bits). The seed comes from the experiment file.
    pub rng_word_pos: String,
    pub searcher_finished: bool,
    pub interrupted: bool,
    pub results_received: u64,
    pub started_at: Option<f64>,
    pub ended: Option<EndReason>,
    /// The scheduler's own state ([`Scheduler::save`]).
    pub scheduler: Value,
    /// The searcher's own state ([`Searcher::save`]).
    pub searcher: Value,
}

/// A [`CoreSnapshot`] read back to check it ([`Tuner::matches_snapshot`]): the trials are
/// digested one at a time as they are read, never held, so that checking a compaction does not
/// need memory for a second copy of every trial.
pub type SnapshotCheck = CoreSnapshot<TrialsDigest>;

impl<T> CoreSnapshot<T> {
    /// Its trials, and the rest of it with `trials` in their place.
    fn split_trials<U>(self, trials: U) -> (T, CoreSnapshot<U>) {
        let rest = CoreSnapshot {
            format: self.format,
            trials,
            rng_word_pos: self.rng_word_pos,
            searcher_finished: self.searcher_finished,
            interrupted: self.interrupted,
            results_received: self.results_received,
            started_at: self.started_at,
            ended: self.ended,
            scheduler: self.scheduler,
            searcher: self.searcher,
        };
        (self.trials, rest)
    }
}

/// The trials of a snapshot as [`SnapshotCheck`] keeps them.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialsDigest {
    /// [`trials_digest`] of the trials read.
    digest: u64,
    count: usize,
    /// Whether trial `i` was the `i`-th (a restore refuses a snapshot where it is not).
    in_order: bool,
}

/// A `std::io::Write` into a hasher.
#[derive(Default)]
struct Hashing(std::collections::hash_map::DefaultHasher);

impl Hashing {
    fn finish(&self) -> u64 {
        std::hash::Hasher::finish(&self.0)
    }
}

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        std::hash::Hasher::write(&mut self.0, bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every trial written as JSON, in order, into one digest.
fn trials_digest<'a>(trials: impl IntoIterator<Item = &'a Trial>) -> u64 {
    let mut hashing = Hashing::default();
    for trial in trials {
        // As in `digest_with`: a trial that cannot be written was never written either.
        if serde_json::to_writer(&mut hashing, trial).is_err() {
            return 0;
        }
    }
    hashing.finish()
}

impl<'de> Deserialize<'de> for TrialsDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TrialsDigest, D::Error> {
        deserializer.deserialize_seq(DigestTrials)
    }
}

/// Reads a list of trials into a [`TrialsDigest`].
struct DigestTrials;

impl<'de> serde::de::Visitor<'de> for DigestTrials {
    type Value = TrialsDigest;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of trials")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<TrialsDigest, A::Error> {
        let mut hashing = Hashing::default();
        let mut count = 0;
        let mut in_order = true;
        while let Some(trial) = seq.next_element::<Trial>()? {
            in_order &= trial.id.0 as usize == count;
            serde_json::to_writer(&mut hashing, &trial).map_err(serde::de::Error::custom)?;
            count += 1;
        }
        Ok(TrialsDigest {
            digest: hashing.finish(),
            count,
            in_order,
        })
    }
}

/// A journaled outcome being forced during [`Tuner::replay`].
#[derive(Debug, Default)]
struct Forced {
    created: std::collections::VecDeque<Created>,
    started: Option<Launch>,
    finished: bool,
    /// The recorded decisions, each with whether a decision of the code has claimed it.
    decided: Vec<(Decided, bool)>,
}

pub struct Tuner {
    settings: TunerSettings,
    searcher: Box<dyn Searcher>,
    scheduler: Box<dyn Scheduler>,
    rng: CoreRng,
    trials: Vec<Trial>,
    searcher_finished: bool,
    effects: Vec<Effect>,
    retention: CheckpointRetention,
    /// Set by an interrupt until a resume: nothing new starts.
    interrupted: bool,
    /// Results taken in all, rolled-back ones included (they were trained): what
    /// `max_total_results` counts.
    results_received: u64,
    /// When the experiment began ([`Input::Begin`]).
    started_at: Option<f64>,
    /// Why the experiment ended early, once it did.
    ended: Option<EndReason>,
    /// What the input being applied did, for the journal.
    recording: Outcome,
    /// Set while [`Tuner::replay`] forces a journaled outcome.
    forced: Option<Forced>,
    /// Decisions of the running code that differed from the journal's during replays.
    divergences: u64,
}

impl Tuner {
    pub fn new(
        settings: TunerSettings,
        searcher: Box<dyn Searcher>,
        scheduler: Box<dyn Scheduler>,
    ) -> Self {
        let rng = CoreRng::seed_from_u64(settings.seed);
        Tuner {
            settings,
            searcher,
            scheduler,
            rng,
            trials: Vec::new(),
            searcher_finished: false,
            effects: Vec::new(),
            retention: CheckpointRetention::default(),
            interrupted: false,
            results_received: 0,
            started_at: None,
            ended: None,
            recording: Outcome::default(),
            forced: None,
            divergences: 0,
        }
    }

    /// Feed one input to the core; returns its answer and what it did, which the runner
    /// journals before carrying out any effect.
    pub fn apply(&mut self, input: &Input) -> Result<(Output, Outcome), TunerError> {
        self.recording = Outcome::default();
        let output = self.dispatch(input);
        let outcome = std::mem::take(&mut self.recording);
        Ok((output?, outcome))
    }

    /// Re-apply a journaled input with its recorded outcome: the same trials are created with
    /// the same configs, the same trial starts, the same decisions are carried out, whatever
    /// the running code would decide (where it would decide otherwise,
    /// [`Tuner::replay_divergences`] counts it). The searcher is not asked for proposals; it is
    /// told which configs the trials got.
    pub fn replay(&mut self, input: &Input, outcome: &Outcome) -> Result<Output, TunerError> {
        self.recording = Outcome::default();
        self.forced = Some(Forced {
            created: outcome.created.iter().cloned().collect(),
            started: outcome.started.clone(),
            finished: outcome.finished,
            decided: outcome
                .decided
                .iter()
                .cloned()
                .map(|d| (d, false))
                .collect(),
        });
        let output = self.dispatch(input);
        // Recorded decisions the running code did not make at all are carried out last.
        let unclaimed: Vec<Decided> = self
            .forced
            .take()
            .map(|f| {
                f.decided
                    .into_iter()
                    .filter(|(_, claimed)| !claimed)
                    .map(|(d, _)| d)
                    .collect()
            })
            .unwrap_or_default();
        for decided in unclaimed {
            self.divergences += 1;
            self.apply_decision(
                Decision::new(decided.trial, decided.action, "recorded in the journal"),
                false,
            );
        }
        self.recording = Outcome::default();
        output
    }

    fn dispatch(&mut self, input: &Input) -> Result<Output, TunerError> {
        match input {
            Input::Begin { now } => {
                self.started_at.get_or_insert(*now);
                Ok(Output::Done)
            }
            Input::Next { now, .. } => {
                // Journals of earlier releases have no Begin line: their first input begins
                // the experiment.
                self.started_at.get_or_insert(*now);
                Ok(Output::Launch(self.next_to_run(*now)))
            }
            Input::Report {
                now,
                trial,
                run,
                metrics,
                checkpoint,
            } => {
                self.check_run(*trial, *run)?;
                let reply = self.on_result(*trial, metrics.clone(), *checkpoint, *now)?;
                Ok(Output::Reply(reply))
            }
            Input::Placed {
                now,
                trial,
                run,
                placement,
                running,
            } => {
                self.check_run(*trial, *run)?;
                self.on_placed(*trial, placement.clone(), *running, *now)?;
                Ok(Output::Done)
            }
            Input::Started { now, trial, run } => {
                self.check_run(*trial, *run)?;
                self.on_started(*trial, *now)?;
                Ok(Output::Done)
            }
            Input::Timeout { trial, run, .. } => {
                self.check_run(*trial, *run)?;
                self.on_timeout(*trial)?;
                Ok(Output::Done)
            }
            Input::Exit {
                now,
                trial,
                run,
                exit,
            } => {
                self.check_run(*trial, *run)?;
                self.on_exit(*trial, exit.clone(), *now)?;
                Ok(Output::Done)
            }
            Input::Interrupt { reason, .. } => {
                self.interrupt(reason);
                Ok(Output::Done)
            }
            Input::StopAll { reason, .. } => {
                self.stop_all(reason.clone());
                Ok(Output::Done)
            }
            Input::Resume { now, errored } => {
                self.resume(*errored, *now);
                Ok(Output::Done)
            }
        }
    }

    fn check_run(&self, id: TrialId, run: u32) -> Result<(), TunerError> {
        let trial = self.trial(id).ok_or(TunerError::UnknownTrial(id))?;
        let current = trial.runs.saturating_sub(1);
        if run != current {
            return Err(TunerError::StaleRun {
                trial: id,
                run,
                current,
            });
        }
        Ok(())
    }

    /// Everything the core holds (trials, the scheduler's and the searcher's state, the RNG's
    /// position), as text: two tuners with equal fingerprints make the same decisions from here
    /// on. Replay tests compare these.
    pub fn fingerprint(&self) -> String {
        format!(
            "{:#?}\nrng word {}\nsearcher finished {}\ninterrupted {}\nresults {}\nstarted {:?}\nended {:?}\n{:#?}\n{}",
            self.trials,
            self.rng.get_word_pos(),
            self.searcher_finished,
            self.interrupted,
            self.results_received,
            self.started_at,
            self.ended,
            self.scheduler,
            self.searcher.save()
        )
    }

    /// Hands back the spare capacity of the trial list (a list grown by doubling holds up to
    /// twice what it needs; a compaction calls this before it reads its snapshot back).
    pub fn shrink_to_fit(&mut self) {
        self.trials.shrink_to_fit();
    }

    /// The whole state, for the journal's snapshot lines.
    pub fn snapshot(&self) -> CoreSnapshot {
        CoreSnapshot {
            format: SNAPSHOT_FORMAT,
            trials: self.trials.clone(),
            rng_word_pos: self.rng.get_word_pos().to_string(),
            searcher_finished: self.searcher_finished,
            interrupted: self.interrupted,
            results_received: self.results_received,
            started_at: self.started_at,
            ended: self.ended.clone(),
            scheduler: self.scheduler.save(),
            searcher: self.searcher.save(),
        }
    }

    /// [`Tuner::snapshot`] written as JSON straight from the core's state (no copy of the trials:
    /// a large experiment's snapshot costs no memory but the writer's buffer).
    pub fn write_snapshot(&self, writer: impl std::io::Write) -> serde_json::Result<()> {
        self.write_snapshot_with(&self.trials, writer)
    }

    /// [`Tuner::write_snapshot`] with `trials` in place of the tuner's own.
    fn write_snapshot_with(
        &self,
        trials: &[Trial],
        writer: impl std::io::Write,
    ) -> serde_json::Result<()> {
        /// Serializes exactly as [`CoreSnapshot`].
        #[derive(Serialize)]
        struct SnapshotRef<'a> {
            format: u32,
            trials: &'a [Trial],
            rng_word_pos: String,
            searcher_finished: bool,
            interrupted: bool,
            results_received: u64,
            started_at: Option<f64>,
            ended: &'a Option<EndReason>,
            scheduler: Value,
            searcher: Value,
        }
        serde_json::to_writer(
            writer,
            &SnapshotRef {
                format: SNAPSHOT_FORMAT,
                trials,
                rng_word_pos: self.rng.get_word_pos().to_string(),
                searcher_finished: self.searcher_finished,
                interrupted: self.interrupted,
                results_received: self.results_received,
                started_at: self.started_at,
                ended: &self.ended,
                scheduler: self.scheduler.save(),
                searcher: self.searcher.save(),
            },
        )
    }

    /// A digest of the whole state (its snapshot's JSON), computed without holding the text:
    /// two tuners of one process with equal digests hold the same state (the hash is not stable
    /// across Rust releases; it is never stored).
    pub fn state_digest(&self) -> u64 {
        self.digest_with(&self.trials)
    }

    /// The digest of [`Tuner::write_snapshot_with`]'s text.
    fn digest_with(&self, trials: &[Trial]) -> u64 {
        let mut hashing = Hashing::default();
        // A hasher never fails a write; serialization fails only for a state JSON cannot hold,
        // whose snapshot is never written either.
        if self
            .write_snapshot_with(trials, std::io::BufWriter::new(&mut hashing))
            .is_err()
        {
            return 0;
        }
        hashing.finish()
    }

    /// Whether a snapshot read back holds this tuner's state, checked without a second copy of
    /// the trials: each trial read back was written out again into a digest as it was read
    /// ([`SnapshotCheck`]), which must equal the digest of this tuner's trials written the same
    /// way; the rest (scheduler, searcher, random generator, counters) is restored into `fresh`,
    /// a tuner freshly built from the experiment's file, as a resume would.
    pub fn matches_snapshot(&self, mut fresh: Tuner, read: SnapshotCheck) -> bool {
        let (trials, rest) = read.split_trials(Vec::new());
        if !trials.in_order
            || trials.count != self.trials.len()
            || trials.digest != trials_digest(&self.trials)
        {
            return false;
        }
        fresh.restore_snapshot(rest).is_ok() && fresh.digest_with(&[]) == self.digest_with(&[])
    }

    /// Load a snapshot into a tuner freshly built from the experiment's file (its settings,
    /// searcher and scheduler, with no inputs applied yet).
    pub fn restore_snapshot(&mut self, snapshot: CoreSnapshot) -> Result<(), TunerError> {
        if snapshot.format > SNAPSHOT_FORMAT {
            return Err(TunerError::Snapshot(format!(
                "its format {} is newer than this rtune reads ({SNAPSHOT_FORMAT}): resume it \
                 with the release that wrote it or a later one",
                snapshot.format
            )));
        }
        if !self.trials.is_empty() {
            return Err(TunerError::Snapshot("the tuner already has trials".into()));
        }
        let position: u128 = snapshot
            .rng_word_pos
            .parse()
            .map_err(|e| TunerError::Snapshot(format!("rng_word_pos: {e}")))?;
        if let Some((index, trial)) = snapshot
            .trials
            .iter()
            .enumerate()
            .find(|(index, t)| t.id.0 as usize != *index)
        {
            return Err(TunerError::Snapshot(format!(
                "trial number {index} is {}",
                trial.id.name()
            )));
        }
        self.scheduler.restore(snapshot.scheduler).map_err(|e| {
            TunerError::Snapshot(format!("scheduler {}: {e}", self.scheduler.name()))
        })?;
        self.searcher
            .restore(snapshot.searcher)
            .map_err(|e| TunerError::Snapshot(format!("searcher {}: {e}", self.searcher.name())))?;
        self.rng.set_word_pos(position);
        self.trials = snapshot.trials;
        // Read back at a doubled capacity, which a resumed head would keep.
        self.trials.shrink_to_fit();
        // Snapshots of rtune 0.2.0 hold a one-step policy for every trial: the same as none.
        for trial in &mut self.trials {
            if let [step] = trial.policy.as_slice()
                && step.from_iteration == 0
                && step.config == trial.config
            {
                trial.policy.clear();
            }
        }
        self.searcher_finished = snapshot.searcher_finished;
        self.interrupted = snapshot.interrupted;
        self.results_received = snapshot.results_received;
        self.started_at = snapshot.started_at;
        self.ended = snapshot.ended;
        Ok(())
    }

    /// How often replays ([`Tuner::replay`]) met a recorded decision the running code would not
    /// have made (or made one the journal lacks).
    pub fn replay_divergences(&self) -> u64 {
        self.divergences
    }

    /// How many results the core has taken, over every trial and run (rolled-back ones too).
    pub fn results_received(&self) -> u64 {
        self.results_received
    }

    /// Whether an interrupt is in force (nothing new starts until a resume).
    pub fn is_interrupted(&self) -> bool {
        self.interrupted
    }

    /// When the experiment began (its first input).
    pub fn started_at(&self) -> Option<f64> {
        self.started_at
    }

    /// Why the experiment ended early, if it did.
    pub fn ended(&self) -> Option<&EndReason> {
        self.ended.as_ref()
    }

    /// Keep only some checkpoints of each trial (default: all).
    pub fn with_checkpoint_retention(mut self, retention: CheckpointRetention) -> Self {
        self.retention = retention;
        self
    }

    pub fn settings(&self) -> &TunerSettings {
        &self.settings
    }

    pub fn trials(&self) -> &[Trial] {
        &self.trials
    }

    pub fn trial(&self, id: TrialId) -> Option<&Trial> {
        self.trials.get(id.0 as usize)
    }

    pub fn scheduler_name(&self) -> &'static str {
        self.scheduler.name()
    }

    /// The scheduler's fixed end of every trial, if it has one (see [`Scheduler::budget`]).
    pub fn scheduler_budget(&self) -> Option<crate::scheduler::Budget> {
        self.scheduler.budget()
    }

    /// The result key the scheduler measures progress by, if any (see [`Scheduler::time_attr`]).
    pub fn scheduler_time_attr(&self) -> Option<&str> {
        self.scheduler.time_attr()
    }

    pub fn searcher_name(&self) -> &'static str {
        self.searcher.name()
    }

    /// Total number of trials, when the searcher knows it.
    pub fn total_trials(&self) -> Option<usize> {
        self.searcher.total_trials()
    }

    /// Everything the runner must do since the last call.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// True once the searcher has nothing more and every trial is TERMINATED or ERROR.
    pub fn is_finished(&self) -> bool {
        self.searcher_finished && self.trials.iter().all(|t| t.status.is_finished())
    }

    /// The trial with the best value of the metric over its results that count (Ray Tune's
    /// scope "all"), ties going to the older trial.
    pub fn best_trial(&self) -> Option<&Trial> {
        let mode = self.settings.mode;
        self.trials.iter().filter(|t| t.best.is_some()).fold(
            None,
            |best: Option<&Trial>, t| match (best, t.best) {
                (Some(b), Some((value, _))) => match b.best {
                    Some((bv, _)) if !mode.is_better(value, bv) => Some(b),
                    _ => Some(t),
                },
                (None, _) => Some(t),
                (b, None) => b,
            },
        )
    }

    /// What is due at `now` on the clock alone: the time budget used up, or runs silent for
    /// longer than `report_timeout_s`. The runner asks every tick and feeds what it gets (a
    /// pure question: nothing changes until then).
    pub fn due(&self, now: f64) -> Vec<Input> {
        let mut due = Vec::new();
        if let (Some(budget), Some(started)) = (self.settings.limits.time_budget_s, self.started_at)
            && self.ended.is_none()
            && !self.is_finished()
            && now - started >= budget
        {
            due.push(Input::StopAll {
                now,
                reason: EndReason::TimeBudget { seconds: budget },
            });
        }
        if let Some(timeout) = self.settings.limits.report_timeout_s {
            for trial in &self.trials {
                if trial.status == TrialStatus::Running
                    && trial.ending.is_none()
                    && trial.run_started_at.is_some()
                    && trial
                        .last_report_at
                        .is_some_and(|last| now - last >= timeout)
                {
                    due.push(Input::Timeout {
                        now,
                        trial: trial.id,
                        run: trial.runs.saturating_sub(1),
                    });
                }
            }
        }
        due
    }

    /// Running trials that have reported nothing for much longer than their peers: silent for
    /// more than `SILENT_FACTOR` times the median of the trials' mean time between reports, and
    /// at least `SILENT_MIN_S`. Flagged in tables and the dashboard (`report_timeout_s` is what
    /// ends such a run). Nothing is flagged before some trial has reported.
    pub fn silent_trials(&self, now: f64) -> Vec<TrialId> {
        let mut intervals: Vec<f64> = self
            .trials
            .iter()
            .filter_map(Trial::mean_report_interval)
            .collect();
        if intervals.is_empty() {
            return Vec::new();
        }
        intervals.sort_by(f64::total_cmp);
        let median = intervals[intervals.len() / 2];
        let limit = (SILENT_FACTOR * median).max(SILENT_MIN_S);
        self.trials
            .iter()
            .filter(|t| {
                t.status == TrialStatus::Running
                    && t.ending.is_none()
                    && t.run_started_at.is_some()
                    && t.last_report_at.is_some_and(|last| now - last > limit)
            })
            .map(|t| t.id)
            .collect()
    }

    /// Whether `id`'s current run may report `metrics` now; the one place where report
    /// validity is decided (the runner asks before it touches any file, and [`Tuner::on_result`]
    /// refuses the same reports).
    pub fn check_report(
        &self,
        id: TrialId,
        metrics: &serde_json::Map<String, Value>,
    ) -> Result<(), ReportRefusal> {
        let Some(trial) = self.trial(id) else {
            return Ok(());
        };
        if let Some(told) = trial.ending {
            return Err(ReportRefusal::AfterEnding {
                trial: id,
                told,
                iteration: trial.iteration,
            });
        }
        let reported = || -> Vec<String> { metrics.keys().cloned().collect() };
        let metric = &self.settings.metric;
        let value = number_or_null(
            metrics,
            metric,
            "the scheduler metric (`metric` in the experiment file)",
        )?;
        // Only a result without the key is the misspelled-name mistake. `null` is how clients
        // send NaN or infinity (a diverged trial): recorded, and skipped by the schedulers.
        if value.is_none()
            && !metrics.contains_key(metric)
            && self.settings.missing_metric == MissingMetric::Error
        {
            return Err(ReportRefusal::MissingMetric {
                metric: metric.clone(),
                reported: reported(),
            });
        }
        if let Some(attr) = self.scheduler.time_attr()
            && !AUTOMATIC_KEYS.contains(&attr)
            && number_or_null(
                metrics,
                attr,
                "the scheduler's `time_attr` (its progress measure)",
            )?
            .is_none()
        {
            return Err(ReportRefusal::MissingTimeAttr {
                time_attr: attr.to_string(),
                reported: reported(),
            });
        }
        if let Some(budget) = self.scheduler.budget() {
            let reached = if budget.time_attr == "training_iteration" {
                Some((trial.iteration + 1) as f64)
            } else {
                number_or_null(
                    metrics,
                    &budget.time_attr,
                    "the scheduler's `time_attr` (its progress measure)",
                )?
            };
            if let Some(value) = reached
                && value > budget.max_t
            {
                return Err(ReportRefusal::PastMaxT {
                    trial: id,
                    time_attr: budget.time_attr,
                    value,
                    max_t: budget.max_t,
                });
            }
        }
        Ok(())
    }

    /// The runner has room for one more trial: which one to start, if any. The trial is RUNNING
    /// from now on; if its process cannot be started, report that through [`Tuner::on_exit`].
    pub fn next_to_run(&mut self, now: f64) -> Option<Launch> {
        if self.interrupted {
            return None;
        }
        if self.scheduler.creates_population() {
            while self.create_trial().is_some() {}
        }
        let chosen = {
            let mut ctx = SchedulerContext::new(&mut self.rng, &self.trials);
            let chosen = self.scheduler.choose_trial_to_run(&mut ctx);
            let outbox = ctx.outbox;
            self.apply_decisions(outbox);
            chosen
        };
        let chosen = match &self.forced {
            Some(forced) => {
                let recorded = forced.started.as_ref().map(|l| l.trial);
                if recorded != chosen
                    && recorded.is_some_and(|r| (r.0 as usize) < self.trials.len())
                {
                    self.divergences += 1;
                }
                recorded.filter(|r| (r.0 as usize) < self.trials.len())
            }
            None => chosen,
        };
        let id = match chosen {
            Some(id) => id,
            None => {
                let created = self.create_trial();
                if let Some(forced) = &self.forced
                    && forced.finished
                {
                    self.searcher_finished = true;
                }
                created?
            }
        };
        let trial = self.trials.get_mut(id.0 as usize)?;
        if !matches!(trial.status, TrialStatus::Pending | TrialStatus::Paused) {
            return None;
        }
        let reason = match trial.restore {
            Some(c) if c.trial == id => {
                format!("resumed from its checkpoint at iteration {}", c.iteration)
            }
            Some(c) => format!(
                "started from {}'s checkpoint at iteration {}",
                c.trial.name(),
                c.iteration
            ),
            None if trial.runs > 0 => "restarted from scratch".to_string(),
            None => "started".to_string(),
        };
        trial.resumable = false;
        trial.last_report_at = Some(now);
        trial.run_started_at = None;
        trial.runs += 1;
        let launch = Launch {
            trial: id,
            config: trial.config.clone(),
            restore: trial.restore,
            run: trial.runs - 1,
        };
        if let Some(forced) = &self.forced
            && forced.started.as_ref() != Some(&launch)
        {
            self.divergences += 1;
        }
        self.set_status(id, TrialStatus::Running, reason);
        self.recording.started = Some(launch.clone());
        Some(launch)
    }

    /// Ask the searcher for a new trial (or, replaying, take the journal's next one); `None`
    /// if it has nothing now or is finished.
    fn create_trial(&mut self) -> Option<TrialId> {
        if self.searcher_finished {
            return None;
        }
        let id = TrialId(u32::try_from(self.trials.len()).ok()?);
        let (config, why) = match &mut self.forced {
            Some(forced) => {
                let created = forced.created.pop_front()?;
                if created.trial != id {
                    self.divergences += 1;
                    return None;
                }
                self.searcher.on_trial_replayed(id, &created.config);
                (created.config, None)
            }
            None => match self.searcher.suggest(id, &mut self.rng) {
                Suggestion::Config(config) => (config, None),
                Suggestion::Explained(proposal) => {
                    (proposal.config, Some((proposal.reason, proposal.details)))
                }
                Suggestion::NotNow => return None,
                Suggestion::Finished => {
                    self.searcher_finished = true;
                    self.recording.finished = true;
                    return None;
                }
            },
        };
        self.recording.created.push(Created {
            trial: id,
            config: config.clone(),
        });
        self.trials.push(Trial::new_pending(id, config));
        let mut ctx = SchedulerContext::new(&mut self.rng, &self.trials);
        self.scheduler.on_trial_add(&mut ctx, id);
        let outbox = ctx.outbox;
        self.apply_decisions(outbox);
        let searcher = self.searcher.name();
        let mut reason = format!("created by the {searcher} searcher");
        if let Some((why, details)) = why {
            reason = format!("{reason}: {why}");
            self.effects.push(Effect::Proposal {
                trial: id,
                searcher,
                reason: why,
                details,
            });
        }
        self.effects.push(Effect::Status {
            trial: id,
            status: TrialStatus::Pending,
            reason,
        });
        Some(id)
    }

    /// Change a trial's status, as the trial state machine allows ([`TrialStatus::can_become`]),
    /// and tell the runner. The one place statuses change.
    fn set_status(&mut self, id: TrialId, to: TrialStatus, reason: String) -> bool {
        let Some(trial) = self.trials.get_mut(id.0 as usize) else {
            return false;
        };
        let from = trial.status;
        if !from.can_become(to) {
            let error = TunerError::Transition {
                trial: id,
                from,
                to,
            };
            debug_assert!(false, "{error}");
            self.effects.push(Effect::Warning {
                trial: id,
                message: format!("internal error, the status change was not made: {error}"),
            });
            return false;
        }
        trial.status = to;
        self.effects.push(Effect::Status {
            trial: id,
            status: to,
            reason,
        });
        true
    }

    /// A running trial reported `metrics` at time `now`, with a checkpoint if `checkpoint`.
    pub fn on_result(
        &mut self,
        id: TrialId,
        mut metrics: serde_json::Map<String, Value>,
        checkpoint: bool,
        now: f64,
    ) -> Result<Reply, TunerError> {
        let status = self.trial(id).ok_or(TunerError::UnknownTrial(id))?.status;
        if status != TrialStatus::Running {
            return Err(TunerError::NotRunning {
                trial: id,
                status,
                event: "result",
            });
        }
        self.check_report(id, &metrics)
            .map_err(|refusal| TunerError::Refused { trial: id, refusal })?;
        let time_attr = self.scheduler.time_attr().map(str::to_string);
        let metric = self.settings.metric.clone();
        let mode = self.settings.mode;
        let score_attribute = self.retention.score_attribute.clone();
        let trial = &mut self.trials[id.0 as usize];
        // The automatic keys users know from Ray Tune. Time spent between reports counts; time
        // between runs (queued, paused) does not.
        let since = trial.last_report_at.unwrap_or(now);
        let this_iter = (now - since).max(0.0);
        trial.last_report_at = Some(now);
        trial.iteration += 1;
        trial.time_total_s += this_iter;
        trial.results_total += 1;
        metrics.insert("training_iteration".into(), trial.iteration.into());
        metrics.insert("time_total_s".into(), json_f64(trial.time_total_s));
        metrics.insert("time_this_iter_s".into(), json_f64(this_iter));
        metrics.insert("timestamp".into(), (now.max(0.0) as u64).into());
        metrics.insert("trial_id".into(), id.to_string().into());
        if checkpoint {
            trial
                .checkpoints
                .insert(trial.iteration, trial.time_total_s);
            if let Some(score) = score_attribute
                .as_ref()
                .and_then(|key| metrics.get(key))
                .and_then(Value::as_f64)
            {
                trial.checkpoint_scores.insert(trial.iteration, score);
            }
        }
        // Its own newer checkpoint is what a restart would use from now on: whatever it started
        // from (its older checkpoint, a donor's) is no longer needed by it.
        let released = if checkpoint {
            trial.restore.take()
        } else {
            None
        };
        let result = TrialResult {
            trial: id,
            metrics,
            has_checkpoint: checkpoint,
        };
        let value = result.get(&metric).unwrap_or(f64::NAN);
        if !value.is_nan() {
            let better = match trial.best {
                Some((best, _)) => mode.is_better(value, best),
                None => true,
            };
            if better {
                trial.best = Some((value, trial.iteration));
            }
        }
        let time = match time_attr.as_deref() {
            Some("training_iteration") | None => trial.iteration as f64,
            Some(attr) => result.get(attr).unwrap_or(f64::NAN),
        };
        trial.curve.push(CurvePoint {
            iteration: trial.iteration,
            value,
            time,
        });
        trial.last_result = LastResult::of(&result);
        self.results_received += 1;
        // Model-based searchers learn from every report, intermediate ones included.
        self.searcher.on_trial_result(id, &result);
        if checkpoint {
            self.collect_checkpoints(id);
        }
        if let Some(released) = released {
            self.collect_checkpoints(released.trial);
        }

        let decision = match self.stop_criterion(&result) {
            Some(decision) => decision,
            None => {
                let mut ctx = SchedulerContext::new(&mut self.rng, &self.trials);
                let decision = self.scheduler.on_trial_result(&mut ctx, &result);
                let outbox = ctx.outbox;
                self.apply_decisions(outbox);
                decision
            }
        };
        let mut action = self.decide(decision, true);
        if let Some(budget) = self.settings.limits.max_total_results
            && self.results_received >= budget
            && self.ended.is_none()
        {
            self.stop_all(EndReason::ResultBudget { results: budget });
            if self.trials[id.0 as usize].ending == Some(Ending::Stop) {
                action = Action::Stop;
            }
        }
        let done = action == Action::Stop;
        Ok(Reply {
            result,
            action,
            done,
        })
    }

    fn stop_criterion(&self, result: &TrialResult) -> Option<Decision> {
        self.settings.stop.iter().find_map(|(key, &limit)| {
            let value = result.get(key)?;
            (value >= limit).then(|| {
                Decision::stop(
                    result.trial,
                    format!("stop criterion reached: {key} = {value} >= {limit}"),
                )
            })
        })
    }

    /// Why a pause or exploit of trial `id` must not happen: it was already told to stop, or its
    /// latest result reached a `[stop]` criterion. Restarting such a trial (from a donor's
    /// checkpoint, or its own) would train and report iterations past the end of its budget, or
    /// repeat ones it already reported.
    fn budget_spent(&self, id: TrialId, action: &Action) -> Option<String> {
        if !matches!(action, Action::Pause | Action::Exploit { .. }) {
            return None;
        }
        let verb = if matches!(action, Action::Pause) {
            "paused"
        } else {
            "exploited"
        };
        let trial = self.trials.get(id.0 as usize)?;
        if trial.ending == Some(Ending::Stop) {
            return Some(format!(
                "not {verb}: {} was already told to stop",
                id.name()
            ));
        }
        let reached = trial
            .last_result
            .as_ref()
            .and_then(|result| self.stop_criterion(&result.result(id)))?;
        Some(format!(
            "not {verb}: {} has reached the end of its budget ({})",
            id.name(),
            reached.reason
        ))
    }

    fn apply_decisions(&mut self, decisions: Vec<Decision>) {
        for decision in decisions {
            self.decide(decision, false);
        }
    }

    /// Carry out a decision of the code; while replaying, the journal's decision for that trial
    /// (or none, when the journal has none) is carried out instead.
    fn decide(&mut self, decision: Decision, reporting: bool) -> Action {
        let decision = self.checked(decision);
        let Some(forced) = &mut self.forced else {
            return self.apply_decision(decision, reporting);
        };
        if decision.action == Action::Continue {
            // Never recorded: a recorded decision for this trial the code did not make is
            // carried out at the end of the input.
            return Action::Continue;
        }
        let recorded = forced
            .decided
            .iter_mut()
            .find(|(d, claimed)| !claimed && d.trial == decision.trial);
        let action = match recorded {
            Some((d, claimed)) => {
                *claimed = true;
                d.action.clone()
            }
            None => Action::Continue,
        };
        if action != decision.action {
            self.divergences += 1;
        }
        if action == Action::Continue {
            return Action::Continue;
        }
        let decision = Decision::new(decision.trial, action, decision.reason.clone())
            .with_details(decision.details.clone());
        self.apply_decision(decision, reporting)
    }

    /// A decision as it may be carried out: a pause or exploit of a trial whose budget is spent
    /// becomes a stop, and a pause of a running trial without a checkpoint becomes "continue"
    /// (with a warning: pausing it would throw its work away).
    fn checked(&mut self, mut decision: Decision) -> Decision {
        let id = decision.trial;
        if let Some(why) = self.budget_spent(id, &decision.action) {
            decision = Decision::stop(id, why);
        }
        let Some(trial) = self.trials.get(id.0 as usize) else {
            return decision;
        };
        if matches!(decision.action, Action::Pause)
            && trial.status == TrialStatus::Running
            && trial.checkpoints.is_empty()
        {
            let message = format!(
                "{} has no checkpoint, so it is not paused and keeps running ({})",
                trial.id.name(),
                decision.reason
            );
            self.effects.push(Effect::Warning {
                trial: id,
                message: message.clone(),
            });
            decision = Decision::continue_(id, message);
        }
        decision
    }

    /// Record a decision and change the trial's state; returns the action the trial is told.
    /// `reporting` is true for the trial whose report is being answered: its process learns the
    /// action from the reply, other running trials' processes are ended with an effect.
    fn apply_decision(&mut self, decision: Decision, reporting: bool) -> Action {
        let id = decision.trial;
        let Some(trial) = self.trials.get_mut(id.0 as usize) else {
            return Action::Continue;
        };
        if trial.status.is_finished() {
            return Action::Continue;
        }
        let action = decision.action.clone();
        if action != Action::Continue {
            self.recording.decided.push(Decided {
                trial: id,
                action: action.clone(),
            });
        }
        match &action {
            Action::Continue => {}
            Action::Stop => match trial.status {
                TrialStatus::Running => {
                    trial.ending = Some(Ending::Stop);
                    if !reporting {
                        self.effects.push(Effect::EndProcess { trial: id });
                    }
                }
                _ => {
                    self.set_status(id, TrialStatus::Terminated, decision.reason.clone());
                }
            },
            Action::Pause => {
                if trial.status == TrialStatus::Running {
                    trial.ending = Some(Ending::Pause);
                    trial.restore = trial.latest_checkpoint();
                    trial.resumable = false;
                    if !reporting {
                        self.effects.push(Effect::EndProcess { trial: id });
                    }
                }
            }
            Action::Exploit {
                donor,
                config,
                description,
            } => self.exploit(
                id,
                *donor,
                config,
                description,
                &decision.details,
                reporting,
            ),
        }
        self.effects.push(Effect::Decision(decision));
        match action {
            // The process restarts from the donor; tell it to end now.
            Action::Exploit { .. } => Action::Pause,
            other => other,
        }
    }

    /// PBT's exploit: `id` restarts from `donor`'s checkpoint with `config`. Its results after
    /// the donor's iteration no longer count (the restart reports those iterations again).
    fn exploit(
        &mut self,
        id: TrialId,
        donor: CheckpointId,
        config: &Config,
        description: &str,
        details: &Value,
        reporting: bool,
    ) {
        // A paused target restarts from the donor's checkpoint: its iteration and time are the
        // donor's at that checkpoint from now on.
        let donor_time = self
            .trials
            .get(donor.trial.0 as usize)
            .and_then(|d| d.checkpoints.get(&donor.iteration).copied());
        // The target's policy: the donor's schedule up to the donor's iteration, then the
        // explored config.
        let mut policy: Vec<PolicyStep> = self
            .trials
            .get(donor.trial.0 as usize)
            .map(|d| {
                d.policy_steps()
                    .iter()
                    .filter(|s| s.from_iteration < donor.iteration)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        policy.push(PolicyStep {
            from_iteration: donor.iteration,
            config: config.clone(),
        });
        let mode = self.settings.mode;
        let Some(trial) = self.trials.get_mut(id.0 as usize) else {
            return;
        };
        let old_config = trial
            .policy
            .last()
            .map_or_else(|| trial.config.clone(), |s| s.config.clone());
        self.effects.push(Effect::Exploited {
            target: id,
            donor,
            target_iteration: trial.iteration,
            old_config,
            new_config: config.clone(),
            change: description.to_string(),
            details: details.clone(),
        });
        trial.policy = policy;
        trial.config = config.clone();
        trial.restore = Some(donor);
        // Its own checkpoints belong to the lineage it leaves (all of them, or those after the
        // restart point when it restarts from its own checkpoint, as a policy replay does): a
        // later restart must never pick one of them as "its latest".
        let stale: Vec<CheckpointId> = trial
            .checkpoints
            .keys()
            .filter(|&&iteration| donor.trial != id || iteration > donor.iteration)
            .map(|&iteration| CheckpointId {
                trial: id,
                iteration,
            })
            .collect();
        for c in &stale {
            trial.checkpoints.remove(&c.iteration);
            trial.checkpoint_scores.remove(&c.iteration);
        }
        trial.tag = format!("@perturbed[{description}]");
        trial.resumable = true;
        let truncated = if trial.status == TrialStatus::Running {
            // It ends its process first; its exit rolls back to the donor's iteration.
            trial.ending = Some(Ending::Pause);
            if !reporting {
                self.effects.push(Effect::EndProcess { trial: id });
            }
            false
        } else {
            trial.iteration = donor.iteration;
            if let Some(time) = donor_time {
                trial.time_total_s = time;
            }
            trial.truncate_after(donor.iteration, mode)
        };
        if truncated {
            self.effects.push(Effect::Truncated {
                trial: id,
                through_iteration: donor.iteration,
                reason: Truncation::Exploited,
            });
        }
        for c in stale {
            if !self.is_pinned(c) {
                self.effects.push(Effect::DeleteCheckpoint(c));
            }
        }
    }

    /// Where a run was placed; `running` says its processes run now (see [`Input::Placed`]).
    pub fn on_placed(
        &mut self,
        id: TrialId,
        placement: Placement,
        running: bool,
        now: f64,
    ) -> Result<(), TunerError> {
        let trial = self.running_mut(id, "placement")?;
        trial.placement = Some(Box::new(placement));
        if running && trial.run_started_at.is_none() {
            trial.run_started_at = Some(now);
            trial.last_report_at = Some(now);
        }
        Ok(())
    }

    /// A running trial's processes really started at `now` (its job left SLURM's queue): the
    /// time between its start by the core and `now` was queue time, never training time, so its
    /// next result's `time_this_iter_s` counts from `now`.
    pub fn on_started(&mut self, id: TrialId, now: f64) -> Result<(), TunerError> {
        let trial = self.running_mut(id, "start")?;
        trial.run_started_at = Some(now);
        trial.last_report_at = Some(now);
        Ok(())
    }

    /// A run reported nothing for `report_timeout_s`: end it; its exit is a failure.
    pub fn on_timeout(&mut self, id: TrialId) -> Result<(), TunerError> {
        let trial = self.running_mut(id, "report timeout")?;
        if trial.ending.is_none() {
            trial.ending = Some(Ending::Timeout);
            self.effects.push(Effect::EndProcess { trial: id });
        }
        Ok(())
    }

    fn running_mut(&mut self, id: TrialId, event: &'static str) -> Result<&mut Trial, TunerError> {
        let trial = self
            .trials
            .get_mut(id.0 as usize)
            .ok_or(TunerError::UnknownTrial(id))?;
        if trial.status != TrialStatus::Running {
            return Err(TunerError::NotRunning {
                trial: id,
                status: trial.status,
                event,
            });
        }
        Ok(trial)
    }

    /// A trial's process ended. Returns an error if the trial was not running.
    pub fn on_exit(&mut self, id: TrialId, exit: Exit, _now: f64) -> Result<(), TunerError> {
        let max_failures = self.settings.max_failures;
        let require_report = self.settings.require_report;
        let report_timeout = self.settings.limits.report_timeout_s;
        self.running_mut(id, "exit")?;
        let trial = &mut self.trials[id.0 as usize];
        trial.last_report_at = None;
        trial.run_started_at = None;
        let ending = trial.ending.take();
        // A pause that restarts it from another trial's checkpoint is a PBT exploit decided
        // while it ran (a plain pause restarts from its own): what it reported after the
        // donor's iteration was replaced, not rolled back to be reported again.
        let truncation = match (ending, trial.restore) {
            (Some(Ending::Pause), Some(c)) if c.trial != id => Truncation::Exploited,
            _ => Truncation::RolledBack,
        };
        let exit = match (ending, exit) {
            (Some(Ending::Timeout), _) => Exit::Failure(format!(
                "no report for {} s (trial.report_timeout_s): the run was ended",
                report_timeout.unwrap_or(0.0)
            )),
            (_, exit) => exit,
        };
        // From here on a timed-out run is a failure like any other (its exit is one, so it
        // meets the `Exit::Failure` arm whatever its ending says).
        let (status, reason) = match (ending, &exit) {
            (Some(Ending::Stop), _) => (
                TrialStatus::Terminated,
                match &trial.stopped_by {
                    Some(reason) => format!("stopped: {reason}"),
                    None => "stopped by the scheduler".to_string(),
                },
            ),
            (Some(Ending::Pause), _) => {
                // The decision that paused it said whether it may resume right away.
                (
                    TrialStatus::Paused,
                    "paused after its latest checkpoint".to_string(),
                )
            }
            (Some(Ending::Interrupt), _) => {
                // Its own latest checkpoint; else, after an exploit, the donor's it started from.
                trial.restore = trial.latest_checkpoint().or(trial.restore);
                match trial.restore {
                    Some(c) => {
                        trial.resumable = true;
                        (
                            TrialStatus::Paused,
                            format!(
                                "cut off by an interrupt; it resumes from the checkpoint at \
                                 iteration {}",
                                c.iteration
                            ),
                        )
                    }
                    None => (
                        TrialStatus::Interrupted,
                        "cut off by an interrupt before its first checkpoint".to_string(),
                    ),
                }
            }
            (None | Some(Ending::Timeout), Exit::Success)
                if require_report && trial.results_total == 0 =>
            {
                let message = "its process exited with status 0 without a result that \
                               counts: the trainable never calls `report`, or every report was \
                               refused (see the warnings in events.jsonl)\nhint: call \
                               rtune.report(...) (Python) or Session::report (Rust) once per \
                               epoch, or set trial.require_report = false if it may \
                               legitimately report nothing"
                    .to_string();
                trial.error = Some(message.clone());
                (TrialStatus::Error, format!("failed: {message}"))
            }
            (None | Some(Ending::Timeout), Exit::Success) => {
                (TrialStatus::Terminated, "completed".to_string())
            }
            (_, Exit::Lost(message)) => {
                // Its own latest checkpoint; else, after an exploit, the donor's it started from.
                trial.restore = trial.latest_checkpoint().or(trial.restore);
                let from = match trial.restore {
                    Some(c) => format!("from its checkpoint at iteration {}", c.iteration),
                    None => {
                        self.effects.push(Effect::Warning {
                            trial: id,
                            message: format!(
                                "{}'s run was lost ({message}) before its first checkpoint: it \
                                 restarts from scratch",
                                trial.id.name()
                            ),
                        });
                        "from scratch".to_string()
                    }
                };
                (
                    TrialStatus::Pending,
                    format!(
                        "its run was lost ({message}); it restarts as a new run {from} (not a failure)"
                    ),
                )
            }
            (_, Exit::Failure(message)) => {
                trial.failures += 1;
                trial.error = Some(message.clone());
                if trial.failures <= max_failures {
                    // Its own latest checkpoint; else, after an exploit, the donor's it started
                    // from.
                    trial.restore = trial.latest_checkpoint().or(trial.restore);
                    let from = match trial.restore {
                        Some(c) => format!("from its checkpoint at iteration {}", c.iteration),
                        None => {
                            // No checkpoint: everything it did is lost. Say so loudly.
                            self.effects.push(Effect::Warning {
                                trial: id,
                                message: format!(
                                    "{} failed and has no checkpoint: it restarts from scratch",
                                    trial.id.name()
                                ),
                            });
                            "from scratch".to_string()
                        }
                    };
                    (
                        TrialStatus::Pending,
                        format!(
                            "failed ({message}); retry {} of {max_failures} {from}",
                            trial.failures
                        ),
                    )
                } else {
                    (TrialStatus::Error, format!("failed: {message}"))
                }
            }
        };
        self.set_status(id, status, reason);
        if matches!(
            status,
            TrialStatus::Paused | TrialStatus::Pending | TrialStatus::Interrupted
        ) {
            self.rewind(id, truncation);
        }
        let last = self.trials[id.0 as usize]
            .last_result
            .as_ref()
            .map(|r| r.result(id));
        let mut ctx = SchedulerContext::new(&mut self.rng, &self.trials);
        match status {
            TrialStatus::Terminated => {
                self.scheduler
                    .on_trial_complete(&mut ctx, id, last.as_ref());
            }
            TrialStatus::Error => self.scheduler.on_trial_error(&mut ctx, id),
            _ => {}
        }
        let outbox = ctx.outbox;
        self.apply_decisions(outbox);
        if status.is_finished() {
            self.searcher.on_trial_complete(id, last.as_ref());
        }
        if status == TrialStatus::Error {
            self.check_fail_fast();
        }
        Ok(())
    }

    /// `fail_fast = N`: when the first N trials all ended in ERROR, the experiment stops.
    fn check_fail_fast(&mut self) {
        let Some(n) = self.settings.limits.fail_fast else {
            return;
        };
        if self.ended.is_some() {
            return;
        }
        let first: Vec<&Trial> = self.trials.iter().take(n as usize).collect();
        if first.len() < n as usize || first.iter().any(|t| t.status != TrialStatus::Error) {
            return;
        }
        let error = first
            .first()
            .and_then(|t| t.error.as_deref())
            .and_then(|e| e.lines().next())
            .unwrap_or("")
            .to_string();
        self.stop_all(EndReason::FailFast { trials: n, error });
    }

    /// A trial that will restart: its iteration and time become those of what it restarts from
    /// (its restore checkpoint, or nothing), and results it reported after its restart point
    /// stop counting (for `reason`), so no iteration is stored twice.
    fn rewind(&mut self, id: TrialId, reason: Truncation) {
        let Some(trial) = self.trials.get(id.0 as usize) else {
            return;
        };
        let restore = trial.restore;
        let time = restore.and_then(|c| {
            self.trials
                .get(c.trial.0 as usize)
                .and_then(|donor| donor.checkpoints.get(&c.iteration).copied())
        });
        let mode = self.settings.mode;
        let trial = &mut self.trials[id.0 as usize];
        let point = restore.map_or(0, |c| c.iteration);
        trial.iteration = point;
        trial.time_total_s = match restore {
            Some(_) => time.unwrap_or(trial.time_total_s),
            None => 0.0,
        };
        if trial.truncate_after(point, mode) {
            let kept_time = trial.curve.last().map(|p| p.time);
            self.effects.push(Effect::Truncated {
                trial: id,
                through_iteration: point,
                reason,
            });
            let mut ctx = SchedulerContext::new(&mut self.rng, &self.trials);
            self.scheduler.on_trial_rollback(&mut ctx, id, kept_time);
            let outbox = ctx.outbox;
            self.apply_decisions(outbox);
        }
    }

    /// Ctrl-C, SIGTERM, SIGHUP or a write error: running trials are asked to end (they become
    /// PAUSED when they have a checkpoint, else INTERRUPTED), waiting ones stay as they are, and
    /// nothing new starts until [`Input::Resume`].
    pub fn interrupt(&mut self, reason: &InterruptReason) {
        self.interrupted = true;
        let running: Vec<TrialId> = self
            .trials
            .iter()
            .filter(|t| t.status == TrialStatus::Running)
            .map(|t| t.id)
            .collect();
        for id in running {
            let trial = &mut self.trials[id.0 as usize];
            if trial.ending.is_none() {
                trial.ending = Some(Ending::Interrupt);
            }
            self.effects.push(Effect::EndProcess { trial: id });
            self.effects.push(Effect::Warning {
                trial: id,
                message: format!("{} is ended: {reason}", id.name()),
            });
        }
    }

    /// A new head takes over: runs that were going on when the old one died are lost (their
    /// trials restart from their latest checkpoint, or from scratch with a warning), trials cut
    /// off by an interrupt are queued again, and ERROR trials are kept or rerun per `errored`.
    pub fn resume(&mut self, errored: ErroredTrials, now: f64) {
        self.interrupted = false;
        let ids: Vec<TrialId> = self.trials.iter().map(|t| t.id).collect();
        for id in ids {
            let trial = &mut self.trials[id.0 as usize];
            if trial.status == TrialStatus::Running {
                if trial.ending.is_none() {
                    trial.ending = Some(Ending::Interrupt);
                }
                let _ = self.on_exit(id, Exit::Failure("its head ended".into()), now);
            }
            let trial = &mut self.trials[id.0 as usize];
            let reason = match (trial.status, errored) {
                (TrialStatus::Interrupted, _) => {
                    self.effects.push(Effect::Warning {
                        trial: id,
                        message: format!(
                            "{} had no checkpoint when the experiment was cut off: it restarts \
                             from scratch",
                            id.name()
                        ),
                    });
                    "queued again after the experiment was resumed (from scratch)".to_string()
                }
                (TrialStatus::Error, ErroredTrials::Restart) => {
                    trial.restore = None;
                    let dropped: Vec<u64> = trial.checkpoints.keys().copied().collect();
                    trial.checkpoints.clear();
                    trial.checkpoint_scores.clear();
                    for iteration in dropped {
                        self.effects.push(Effect::DeleteCheckpoint(CheckpointId {
                            trial: id,
                            iteration,
                        }));
                    }
                    "restarted from scratch (rtune resume --restart-errored)".to_string()
                }
                (TrialStatus::Error, ErroredTrials::Resume) => {
                    trial.restore = trial.latest_checkpoint().or(trial.restore);
                    match trial.restore {
                        Some(c) => format!(
                            "resumed from its checkpoint at iteration {} (rtune resume \
                             --resume-errored)",
                            c.iteration
                        ),
                        None => "restarted from scratch: it has no checkpoint (rtune resume \
                                 --resume-errored)"
                            .to_string(),
                    }
                }
                _ => continue,
            };
            if !self.set_status(id, TrialStatus::Pending, reason) {
                continue;
            }
            let trial = &mut self.trials[id.0 as usize];
            trial.failures = 0;
            trial.error = None;
            self.rewind(id, Truncation::RolledBack);
        }
    }

    /// Whether a waiting or running trial will (or may again) restart from this checkpoint.
    fn is_pinned(&self, c: CheckpointId) -> bool {
        self.trials
            .iter()
            .any(|t| !t.status.is_finished() && t.restore == Some(c))
    }

    /// Ask the runner to delete the checkpoints of `id` that the retention does not keep: beyond
    /// `num_to_keep`, never the latest, never a pinned one (see [`CheckpointRetention`]).
    fn collect_checkpoints(&mut self, id: TrialId) {
        let Some(keep) = self.retention.num_to_keep else {
            return;
        };
        let Some(trial) = self.trials.get(id.0 as usize) else {
            return;
        };
        let latest = trial.checkpoints.keys().next_back().copied();
        // Ranked best first: by score when a score attribute is set (checkpoints without a
        // score rank last, newest first among them), else newest first.
        let mut ranked: Vec<u64> = trial.checkpoints.keys().rev().copied().collect();
        if self.retention.score_attribute.is_some() {
            let mode = self.retention.score_mode.unwrap_or(self.settings.mode);
            let score = |iteration: &u64| {
                trial
                    .checkpoint_scores
                    .get(iteration)
                    .map_or(f64::NEG_INFINITY, |&v| mode.score(v))
            };
            ranked.sort_by(|a, b| score(b).total_cmp(&score(a)).then(b.cmp(a)));
        }
        let doomed: Vec<u64> = ranked
            .into_iter()
            .skip(keep)
            .filter(|&iteration| Some(iteration) != latest)
            .filter(|&iteration| {
                !self.is_pinned(CheckpointId {
                    trial: id,
                    iteration,
                })
            })
            .collect();
        if doomed.is_empty() {
            return;
        }
        let Some(trial) = self.trials.get_mut(id.0 as usize) else {
            return;
        };
        for iteration in doomed {
            trial.checkpoints.remove(&iteration);
            trial.checkpoint_scores.remove(&iteration);
            self.effects.push(Effect::DeleteCheckpoint(CheckpointId {
                trial: id,
                iteration,
            }));
        }
    }

    /// End the experiment early for good (a used-up budget, fail-fast, a mistake in the
    /// experiment file): pending and paused trials are terminated, running ones are asked to
    /// end. Nothing new starts afterwards.
    pub fn stop_all(&mut self, reason: EndReason) {
        self.searcher_finished = true;
        if self.ended.is_none() {
            self.ended = Some(reason.clone());
            self.effects.push(Effect::Ended(reason.clone()));
        }
        let ids: Vec<TrialId> = self
            .trials
            .iter()
            .filter(|t| !t.status.is_finished())
            .map(|t| t.id)
            .collect();
        for id in ids {
            self.trials[id.0 as usize].stopped_by = Some(Box::new(reason.clone()));
            self.decide(Decision::stop(id, reason.to_string()), false);
        }
    }
}

/// A running trial is flagged silent after this many times the median time between reports...
pub const SILENT_FACTOR: f64 = 5.0;
/// ...and never before this many seconds without a report.
pub const SILENT_MIN_S: f64 = 30.0;

/// The keys rtune adds to every result itself (docs/file-formats.md).
pub const AUTOMATIC_KEYS: [&str; 5] = [
    "training_iteration",
    "time_total_s",
    "time_this_iter_s",
    "timestamp",
    "trial_id",
];

/// The value of `key` as a number, `None` when missing or null, a refusal for anything else.
fn number_or_null(
    metrics: &serde_json::Map<String, Value>,
    key: &str,
    role: &str,
) -> Result<Option<f64>, ReportRefusal> {
    match metrics.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(ReportRefusal::NotANumber {
            key: key.to_string(),
            value: other.to_string(),
            json_kind: json_kind(other).to_string(),
            role: role.to_string(),
        }),
    }
}

fn json_f64(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests;

//! The tuner: one owner of the experiment's state, driven by events.
//!
//! The runner asks [`Tuner::next_to_run`] whenever it has room for another trial, feeds every
//! report to [`Tuner::on_result`] and every process exit to [`Tuner::on_exit`], and after each call
//! carries out the [`Effect`]s it drains with [`Tuner::drain_effects`]. Time enters only as the
//! `now` argument (seconds since the Unix epoch), randomness only from the seeded RNG, so the
//! same events give the same decisions.

use std::collections::BTreeMap;

use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scheduler::{Action, Decision, PolicyStep, Scheduler, SchedulerContext};
use crate::searcher::{Searcher, Suggestion};
use crate::trial::{CheckpointId, TrialId, TrialStatus};
use crate::{Config, CoreRng, Mode, TrialResult};

/// Errors from feeding the tuner events that do not fit its state. These come from the runner
/// (a report for an unknown trial), never from a user's input.
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

/// Everything the tuner knows about one trial.
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
    pub last_result: Option<TrialResult>,
    /// Best value of the experiment's metric so far, and the iteration it was reached at.
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
    /// Its configuration by iteration: PBT's policy (one step unless it was exploited).
    #[serde(default)]
    pub policy: Vec<PolicyStep>,
    #[serde(skip)]
    last_report_at: Option<f64>,
    /// Every result it has reported that still counts, in order: what result.json holds.
    #[serde(skip)]
    history: Vec<HistoryEntry>,
    /// Where in `history` its current lineage (since its latest exploit) starts: a rollback never
    /// reaches before it.
    #[serde(skip)]
    lineage_start: usize,
}

/// One line of a trial's results as stored: the result, the config it was produced with, and
/// whether it was the trial's last (stopped, paused or exploited there).
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryEntry {
    pub result: TrialResult,
    pub config: Config,
    pub done: bool,
}

impl Trial {
    /// A fresh PENDING trial (also for scheduler tests that build contexts by hand).
    pub(crate) fn new_pending(id: TrialId, config: Config) -> Trial {
        let config_for_policy = config.clone();
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
            policy: vec![PolicyStep {
                from_iteration: 0,
                config: config_for_policy,
            }],
            last_report_at: None,
            history: Vec::new(),
            lineage_start: 0,
        }
    }

    /// Its results that count, in order (rolled-back ones removed): what `result.json` holds.
    pub fn history(&self) -> &[HistoryEntry] {
        &self.history
    }

    /// Forget the results after `iteration` at the end of its history (a restart from the
    /// checkpoint at `iteration`, or from scratch with 0) and recompute what derives from them.
    fn roll_back_to(&mut self, iteration: u64, metric: &str, mode: Mode) -> bool {
        let before = self.history.len();
        while self.history.len() > self.lineage_start
            && self
                .history
                .last()
                .is_some_and(|e| e.result.iteration() > iteration)
        {
            self.history.pop();
        }
        if self.history.len() == before {
            return false;
        }
        self.last_result = self.history.last().map(|e| e.result.clone());
        self.best = None;
        for entry in &self.history {
            if let Some(value) = entry.result.get(metric) {
                let better = match self.best {
                    Some((best, _)) => mode.is_better(value, best),
                    None => true,
                };
                if better {
                    self.best = Some((value, entry.result.iteration()));
                }
            }
        }
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
    /// Results of this trial were rolled back (it restarts from an earlier checkpoint or from
    /// scratch): its stored results must be rewritten from [`Trial::history`].
    RolledBack { trial: TrialId },
    /// A model-based searcher proposed this trial's config, for this reason (the decisions log).
    Proposal {
        trial: TrialId,
        searcher: &'static str,
        reason: String,
        details: Value,
    },
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

/// One input to the core. The runner appends each to the experiment's journal before it takes
/// effect, and [`Tuner::apply`] on the journal's inputs, in order, rebuilds the whole state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// The runner has room for one more trial ([`Tuner::next_to_run`]). `started` is what the
    /// core answered, recorded for readers and checked on replay.
    Next {
        now: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// A trial's run, which waited after it was started (a queued SLURM job), now really runs:
    /// its time (`time_this_iter_s`, `time_total_s`) counts from `now`, not from its start
    /// ([`Tuner::on_started`]). Runs that start at once have no such input.
    Started { now: f64, trial: TrialId, run: u32 },
    /// A trial's run ended ([`Tuner::on_exit`]).
    Exit {
        now: f64,
        trial: TrialId,
        run: u32,
        exit: Exit,
    },
    /// The experiment is interrupted (a signal, a write error): running trials are ended,
    /// nothing new starts; `Resume` continues.
    Interrupt { now: f64, reason: String },
    /// The experiment ends early for good (time budget, fail-fast): every unfinished trial stops.
    StopAll { now: f64, reason: String },
    /// A new head takes over the experiment (`rtune resume`): runs that were going on are lost.
    Resume {
        now: f64,
        #[serde(default)]
        errored: ErroredTrials,
    },
}

/// What the core answers an [`Input`].
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Launch(Option<Launch>),
    Reply(Reply),
    Done,
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
        }
    }

    /// Feed one input (the journal's unit) to the core.
    pub fn apply(&mut self, input: &Input) -> Result<Output, TunerError> {
        match input {
            Input::Next { now, .. } => Ok(Output::Launch(self.next_to_run(*now))),
            Input::Report {
                now,
                trial,
                run,
                metrics,
                checkpoint,
            } => {
                self.check_run(*trial, *run)?;
                let reply = self.on_result(*trial, metrics.clone(), *checkpoint, *now)?;
                self.results_received += 1;
                Ok(Output::Reply(reply))
            }
            Input::Started { now, trial, run } => {
                self.check_run(*trial, *run)?;
                self.on_started(*trial, *now)?;
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
                self.stop_all(reason);
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

    /// Everything the core holds (trials with their histories, the scheduler's rungs, brackets
    /// and populations, the RNG's position), as text: two tuners with equal fingerprints make
    /// the same decisions from here on. Replay tests compare these.
    pub fn fingerprint(&self) -> String {
        format!(
            "{:#?}\nrng word {}\nsearcher finished {}\ninterrupted {}\nresults {}\n{:#?}",
            self.trials,
            self.rng.get_word_pos(),
            self.searcher_finished,
            self.interrupted,
            self.results_received,
            self.scheduler
        )
    }

    /// How many results the core has taken, over every trial and run (rolled-back ones too).
    pub fn results_received(&self) -> u64 {
        self.results_received
    }

    /// Whether an interrupt is in force (nothing new starts until a resume).
    pub fn is_interrupted(&self) -> bool {
        self.interrupted
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

    /// The trial with the best value of the metric over all its results (Ray Tune's scope
    /// "all"), ties going to the older trial.
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
        let id = match chosen {
            Some(id) => id,
            None => self.create_trial()?,
        };
        let trial = self.trials.get_mut(id.0 as usize)?;
        if !matches!(trial.status, TrialStatus::Pending | TrialStatus::Paused) {
            return None;
        }
        trial.status = TrialStatus::Running;
        trial.resumable = false;
        trial.last_report_at = Some(now);
        trial.runs += 1;
        let launch = Launch {
            trial: id,
            config: trial.config.clone(),
            restore: trial.restore,
            run: trial.runs - 1,
        };
        let reason = match trial.restore {
            Some(c) if c.trial == id => {
                format!("resumed from its checkpoint at iteration {}", c.iteration)
            }
            Some(c) => format!(
                "started from {}'s checkpoint at iteration {}",
                c.trial.name(),
                c.iteration
            ),
            None if trial.runs > 1 => "restarted from scratch".to_string(),
            None => "started".to_string(),
        };
        self.effects.push(Effect::Status {
            trial: id,
            status: TrialStatus::Running,
            reason,
        });
        Some(launch)
    }

    /// Ask the searcher for a new trial; `None` if it has nothing now or is finished.
    fn create_trial(&mut self) -> Option<TrialId> {
        if self.searcher_finished {
            return None;
        }
        let id = TrialId(u32::try_from(self.trials.len()).ok()?);
        let (config, why) = match self.searcher.suggest(id, &mut self.rng) {
            Suggestion::Config(config) => (config, None),
            Suggestion::Explained(proposal) => {
                (proposal.config, Some((proposal.reason, proposal.details)))
            }
            Suggestion::NotNow => return None,
            Suggestion::Finished => {
                self.searcher_finished = true;
                return None;
            }
        };
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

    /// A running trial reported `metrics` at time `now`, with a checkpoint if `checkpoint`.
    pub fn on_result(
        &mut self,
        id: TrialId,
        mut metrics: serde_json::Map<String, Value>,
        checkpoint: bool,
        now: f64,
    ) -> Result<Reply, TunerError> {
        let trial = self
            .trials
            .get_mut(id.0 as usize)
            .ok_or(TunerError::UnknownTrial(id))?;
        if trial.status != TrialStatus::Running {
            return Err(TunerError::NotRunning {
                trial: id,
                status: trial.status,
                event: "result",
            });
        }
        let config_now = trial.config.clone();
        // The automatic keys users know from Ray Tune. Time spent between reports counts; time
        // between runs (queued, paused) does not.
        let since = trial.last_report_at.unwrap_or(now);
        let this_iter = (now - since).max(0.0);
        trial.last_report_at = Some(now);
        trial.iteration += 1;
        trial.time_total_s += this_iter;
        metrics.insert("training_iteration".into(), trial.iteration.into());
        metrics.insert("time_total_s".into(), json_f64(trial.time_total_s));
        metrics.insert("time_this_iter_s".into(), json_f64(this_iter));
        metrics.insert("timestamp".into(), (now.max(0.0) as u64).into());
        metrics.insert("trial_id".into(), id.to_string().into());
        // A trial that is about to restart from a donor's checkpoint (an exploit) keeps nothing
        // it reports meanwhile: it belongs to the lineage the exploit replaces.
        let exploit_pending =
            trial.ending.is_some() && trial.restore.is_some_and(|c| c.trial != id);
        let checkpoint = if checkpoint && exploit_pending {
            self.effects.push(Effect::DeleteCheckpoint(CheckpointId {
                trial: id,
                iteration: trial.iteration,
            }));
            false
        } else {
            checkpoint
        };
        if checkpoint {
            trial
                .checkpoints
                .insert(trial.iteration, trial.time_total_s);
            if let Some(score) = self
                .retention
                .score_attribute
                .as_ref()
                .and_then(|key| metrics.get(key))
                .and_then(Value::as_f64)
            {
                trial.checkpoint_scores.insert(trial.iteration, score);
            }
        }
        // Its own newer checkpoint is what a restart would use from now on: whatever it started
        // from (its older checkpoint, a donor's) is no longer needed by it.
        let released = if checkpoint && trial.ending.is_none() {
            trial.restore.take()
        } else {
            None
        };
        let result = TrialResult {
            trial: id,
            metrics,
            has_checkpoint: checkpoint,
        };
        if let Some(value) = result.get(&self.settings.metric) {
            let mode = self.settings.mode;
            let better = match trial.best {
                Some((best, _)) => mode.is_better(value, best),
                None => true,
            };
            if better {
                trial.best = Some((value, trial.iteration));
            }
        }
        trial.last_result = Some(result.clone());
        let ending = trial.ending;
        // Model-based searchers learn from every report, intermediate ones included.
        self.searcher.on_trial_result(id, &result);
        if checkpoint {
            self.collect_checkpoints(id);
        }
        if let Some(released) = released {
            self.collect_checkpoints(released.trial);
        }

        // A trial already asked to end gets the same answer again.
        if let Some(ending) = ending {
            let action = match ending {
                Ending::Stop => Action::Stop,
                Ending::Pause | Ending::Interrupt => Action::Pause,
            };
            self.record(id, &result, config_now, true);
            return Ok(Reply { result, action });
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
        let action = self.apply_decision(decision, true);
        self.record(id, &result, config_now, action != Action::Continue);
        Ok(Reply { result, action })
    }

    fn record(&mut self, id: TrialId, result: &TrialResult, config: Config, done: bool) {
        if let Some(trial) = self.trials.get_mut(id.0 as usize) {
            trial.history.push(HistoryEntry {
                result: result.clone(),
                config,
                done,
            });
        }
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
        let trial = self.trials.get(id.0 as usize)?;
        if trial.ending == Some(Ending::Stop) {
            return Some(format!(
                "not {}: {} was already told to stop",
                if matches!(action, Action::Pause) {
                    "paused"
                } else {
                    "exploited"
                },
                id.name()
            ));
        }
        let reached = trial
            .last_result
            .as_ref()
            .and_then(|result| self.stop_criterion(result))?;
        Some(format!(
            "not {}: {} has reached the end of its budget ({})",
            if matches!(action, Action::Pause) {
                "paused"
            } else {
                "exploited"
            },
            id.name(),
            reached.reason
        ))
    }

    fn apply_decisions(&mut self, decisions: Vec<Decision>) {
        for decision in decisions {
            self.apply_decision(decision, false);
        }
    }

    /// Record a decision and change the trial's state; returns the action the trial is told.
    /// `reporting` is true for the trial whose report is being answered: its process learns the
    /// action from the reply, other running trials' processes are ended with an effect.
    fn apply_decision(&mut self, mut decision: Decision, reporting: bool) -> Action {
        let id = decision.trial;
        if let Some(why) = self.budget_spent(id, &decision.action) {
            decision = Decision::stop(id, why);
        }
        let Some(trial) = self.trials.get_mut(id.0 as usize) else {
            return Action::Continue;
        };
        if trial.status.is_finished() {
            return Action::Continue;
        }
        // Pausing a trial without a checkpoint would throw its work away: never do it silently.
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
        let action = decision.action.clone();
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
                    trial.status = TrialStatus::Terminated;
                    self.effects.push(Effect::Status {
                        trial: id,
                        status: TrialStatus::Terminated,
                        reason: decision.reason.clone(),
                    });
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
            } => {
                // A paused target restarts from the donor's checkpoint: its iteration and time
                // are the donor's at that checkpoint from now on.
                let donor_time = self
                    .trials
                    .get(donor.trial.0 as usize)
                    .and_then(|d| d.checkpoints.get(&donor.iteration).copied());
                // The target's policy: the donor's schedule up to the donor's iteration, then
                // the explored config.
                let mut policy: Vec<PolicyStep> = self
                    .trials
                    .get(donor.trial.0 as usize)
                    .map(|d| {
                        d.policy
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
                let Some(trial) = self.trials.get_mut(id.0 as usize) else {
                    return Action::Continue;
                };
                let old_config = trial
                    .policy
                    .last()
                    .map_or_else(|| trial.config.clone(), |s| s.config.clone());
                self.effects.push(Effect::Exploited {
                    target: id,
                    donor: *donor,
                    target_iteration: trial.iteration,
                    old_config,
                    new_config: config.clone(),
                    change: description.clone(),
                    details: decision.details.clone(),
                });
                trial.policy = policy;
                // Its results so far stay (they are its history); a later rollback stops there.
                // The report being answered, if any, is recorded right after this.
                trial.lineage_start = trial.history.len() + usize::from(reporting);
                if trial.status != TrialStatus::Running {
                    trial.iteration = donor.iteration;
                    if let Some(time) = donor_time {
                        trial.time_total_s = time;
                    }
                }
                trial.config = config.clone();
                trial.restore = Some(*donor);
                // Its own checkpoints belong to the lineage it leaves (all of them, or those after
                // the restart point when it restarts from its own checkpoint, as a policy replay
                // does): a later restart must never pick one of them as "its latest".
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
                for c in stale {
                    if !self.is_pinned(c) {
                        self.effects.push(Effect::DeleteCheckpoint(c));
                    }
                }
                let Some(trial) = self.trials.get_mut(id.0 as usize) else {
                    return Action::Continue;
                };
                // A paused trial simply restarts from the donor's checkpoint when chosen; a
                // running one ends its process first.
                if trial.status == TrialStatus::Running {
                    trial.ending = Some(Ending::Pause);
                    if !reporting {
                        self.effects.push(Effect::EndProcess { trial: id });
                    }
                }
            }
        }
        self.effects.push(Effect::Decision(decision));
        match action {
            // The process restarts from the donor; tell it to end now.
            Action::Exploit { .. } => Action::Pause,
            other => other,
        }
    }

    /// A running trial's processes really started at `now` (its job left SLURM's queue): the
    /// time between its start by the core and `now` was queue time, never training time, so its
    /// next result's `time_this_iter_s` counts from `now`. The runner sends it before the run's
    /// first report.
    pub fn on_started(&mut self, id: TrialId, now: f64) -> Result<(), TunerError> {
        let trial = self
            .trials
            .get_mut(id.0 as usize)
            .ok_or(TunerError::UnknownTrial(id))?;
        if trial.status != TrialStatus::Running {
            return Err(TunerError::NotRunning {
                trial: id,
                status: trial.status,
                event: "start",
            });
        }
        trial.last_report_at = Some(now);
        Ok(())
    }

    /// A trial's process ended. Returns an error if the trial was not running.
    pub fn on_exit(&mut self, id: TrialId, exit: Exit, _now: f64) -> Result<(), TunerError> {
        let max_failures = self.settings.max_failures;
        let trial = self
            .trials
            .get_mut(id.0 as usize)
            .ok_or(TunerError::UnknownTrial(id))?;
        if trial.status != TrialStatus::Running {
            return Err(TunerError::NotRunning {
                trial: id,
                status: trial.status,
                event: "exit",
            });
        }
        trial.last_report_at = None;
        let ending = trial.ending.take();
        let (status, reason) = match (ending, &exit) {
            (Some(Ending::Stop), _) => (
                TrialStatus::Terminated,
                "stopped by the scheduler".to_string(),
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
            (None, Exit::Success) => (TrialStatus::Terminated, "completed".to_string()),
            (None, Exit::Lost(message)) => {
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
            (None, Exit::Failure(message)) => {
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
        trial.status = status;
        if matches!(
            status,
            TrialStatus::Paused | TrialStatus::Pending | TrialStatus::Interrupted
        ) {
            self.rewind(id);
        }
        self.effects.push(Effect::Status {
            trial: id,
            status,
            reason,
        });
        let last = self.trials[id.0 as usize].last_result.clone();
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
        Ok(())
    }

    /// A trial that will restart: its iteration and time become those of what it restarts from
    /// (its restore checkpoint, or nothing), and results it reported after its own restart point
    /// are rolled back, so no iteration is stored twice. Only results since its latest exploit
    /// can be rolled back: what it did before belongs to its history.
    fn rewind(&mut self, id: TrialId) {
        let Some(trial) = self.trials.get(id.0 as usize) else {
            return;
        };
        let restore = trial.restore;
        let time = restore.and_then(|c| {
            self.trials
                .get(c.trial.0 as usize)
                .and_then(|donor| donor.checkpoints.get(&c.iteration).copied())
        });
        let (metric, mode) = (self.settings.metric.clone(), self.settings.mode);
        let trial = &mut self.trials[id.0 as usize];
        trial.iteration = restore.map_or(0, |c| c.iteration);
        trial.time_total_s = match restore {
            Some(_) => time.unwrap_or(trial.time_total_s),
            None => 0.0,
        };
        let point = restore.map_or(0, |c| c.iteration);
        if trial.roll_back_to(point, &metric, mode) {
            let kept = trial.last_result.clone();
            self.effects.push(Effect::RolledBack { trial: id });
            let mut ctx = SchedulerContext::new(&mut self.rng, &self.trials);
            self.scheduler
                .on_trial_rollback(&mut ctx, id, kept.as_ref());
            let outbox = ctx.outbox;
            self.apply_decisions(outbox);
        }
    }

    /// Ctrl-C, SIGTERM, SIGHUP or a write error: running trials are asked to end (they become
    /// PAUSED when they have a checkpoint, else INTERRUPTED), waiting ones stay as they are, and
    /// nothing new starts until [`Input::Resume`].
    pub fn interrupt(&mut self, reason: &str) {
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
            let trial = &mut self.trials[id.0 as usize];
            trial.status = TrialStatus::Pending;
            trial.failures = 0;
            trial.error = None;
            self.rewind(id);
            self.effects.push(Effect::Status {
                trial: id,
                status: TrialStatus::Pending,
                reason,
            });
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

    /// End the experiment early (Ctrl-C, a fatal error): pending and paused trials are
    /// terminated, running ones are asked to end. Nothing new starts afterwards.
    pub fn stop_all(&mut self, reason: &str) {
        self.searcher_finished = true;
        let ids: Vec<TrialId> = self
            .trials
            .iter()
            .filter(|t| !t.status.is_finished())
            .map(|t| t.id)
            .collect();
        for id in ids {
            self.apply_decision(Decision::stop(id, reason), false);
        }
    }
}

fn json_f64(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::FifoScheduler;

    /// A searcher that hands out `n` configs `{"x": i}`.
    struct Counting(u32);

    impl Searcher for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn suggest(&mut self, trial: TrialId, _rng: &mut CoreRng) -> Suggestion {
            if trial.0 < self.0 {
                let mut c = Config::new();
                c.insert("x".into(), trial.0.into());
                Suggestion::Config(c)
            } else {
                Suggestion::Finished
            }
        }
    }

    fn tuner(n: u32, max_failures: u32) -> Tuner {
        let settings = TunerSettings {
            metric: "loss".into(),
            mode: Mode::Min,
            seed: 1,
            max_failures,
            stop: BTreeMap::from([("training_iteration".to_string(), 3.0)]),
        };
        Tuner::new(settings, Box::new(Counting(n)), Box::new(FifoScheduler))
    }

    fn metrics(loss: f64) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("loss".into(), loss.into());
        m
    }

    #[test]
    fn runs_trials_to_the_stop_criterion_and_finds_the_best() {
        let mut t = tuner(2, 0);
        let a = t.next_to_run(0.0).unwrap();
        let b = t.next_to_run(0.0).unwrap();
        assert!(t.next_to_run(0.0).is_none());
        for (i, now) in [1.0, 2.0, 3.0].into_iter().enumerate() {
            let ra = t
                .on_result(a.trial, metrics(5.0 - i as f64), false, now)
                .unwrap();
            let rb = t.on_result(b.trial, metrics(9.0), false, now).unwrap();
            let expected = if i == 2 {
                Action::Stop
            } else {
                Action::Continue
            };
            assert_eq!(ra.action, expected);
            assert_eq!(rb.action, expected);
            assert_eq!(ra.result.iteration(), i as u64 + 1);
        }
        t.on_exit(a.trial, Exit::Success, 4.0).unwrap();
        assert!(!t.is_finished());
        t.on_exit(b.trial, Exit::Failure("killed".into()), 4.0)
            .unwrap();
        assert_eq!(t.trial(b.trial).unwrap().status, TrialStatus::Terminated);
        assert!(t.next_to_run(5.0).is_none());
        assert!(t.is_finished());
        let best = t.best_trial().unwrap();
        assert_eq!(best.id, a.trial);
        assert_eq!(best.best, Some((3.0, 3)));
        assert_eq!(best.time_total_s, 3.0);
    }

    #[test]
    fn a_failed_trial_retries_from_its_checkpoint_then_errors() {
        let mut t = tuner(1, 1);
        let a = t.next_to_run(0.0).unwrap();
        t.on_result(a.trial, metrics(1.0), true, 1.0).unwrap();
        t.on_result(a.trial, metrics(1.0), false, 2.0).unwrap();
        t.on_exit(a.trial, Exit::Failure("exit code 1".into()), 3.0)
            .unwrap();
        assert_eq!(t.trial(a.trial).unwrap().status, TrialStatus::Pending);
        let again = t.next_to_run(4.0).unwrap();
        assert_eq!(again.run, 1);
        assert_eq!(
            again.restore,
            Some(CheckpointId {
                trial: a.trial,
                iteration: 1
            })
        );
        let r = t.on_result(a.trial, metrics(0.5), false, 5.0).unwrap();
        assert_eq!(
            r.result.iteration(),
            2,
            "continues after the checkpoint's iteration"
        );
        t.on_exit(a.trial, Exit::Failure("exit code 1".into()), 6.0)
            .unwrap();
        assert_eq!(t.trial(a.trial).unwrap().status, TrialStatus::Error);
        assert!(t.next_to_run(7.0).is_none());
        assert!(t.is_finished());
    }

    #[test]
    fn a_lost_run_restarts_from_its_checkpoint_without_counting_as_a_failure() {
        // max_failures = 0: a failure would make it an ERROR at once.
        let mut t = tuner(1, 0);
        let a = t.next_to_run(0.0).unwrap();
        t.on_result(a.trial, metrics(1.0), true, 1.0).unwrap();
        t.on_result(a.trial, metrics(1.0), false, 2.0).unwrap();
        t.on_exit(a.trial, Exit::Lost("job 7 requeued".into()), 3.0)
            .unwrap();
        let trial = t.trial(a.trial).unwrap();
        assert_eq!(trial.status, TrialStatus::Pending);
        assert_eq!(trial.failures, 0);
        assert_eq!(trial.iteration, 1, "iteration 2 is rolled back");
        let again = t.next_to_run(4.0).unwrap();
        assert_eq!(again.run, 1);
        assert_eq!(again.restore.map(|c| c.iteration), Some(1));
        for expected in [2, 3] {
            let r = t.on_result(a.trial, metrics(0.5), false, 5.0).unwrap();
            assert_eq!(r.result.iteration(), expected);
        }
        t.on_exit(a.trial, Exit::Success, 6.0).unwrap();
        assert_eq!(t.trial(a.trial).unwrap().status, TrialStatus::Terminated);
        let iterations: Vec<u64> = t
            .trial(a.trial)
            .unwrap()
            .history()
            .iter()
            .map(|h| h.result.iteration())
            .collect();
        assert_eq!(iterations, [1, 2, 3]);
    }

    #[test]
    fn queue_time_before_a_run_starts_is_not_training_time() {
        let mut t = tuner(1, 0);
        let a = t.next_to_run(100.0).unwrap();
        // The job waited in the queue for 50 s, then trained for 3 s.
        t.on_started(a.trial, 150.0).unwrap();
        let r = t.on_result(a.trial, metrics(1.0), false, 153.0).unwrap();
        assert_eq!(r.result.get("time_this_iter_s"), Some(3.0));
        assert_eq!(r.result.get("time_total_s"), Some(3.0));
    }

    #[test]
    fn a_retry_without_checkpoint_is_announced() {
        let mut t = tuner(1, 1);
        let a = t.next_to_run(0.0).unwrap();
        t.drain_effects();
        t.on_exit(a.trial, Exit::Failure("segfault".into()), 1.0)
            .unwrap();
        let effects = t.drain_effects();
        assert!(effects.iter().any(
            |e| matches!(e, Effect::Warning { message, .. } if message.contains("from scratch"))
        ));
    }

    #[test]
    fn stop_all_ends_everything() {
        let mut t = tuner(3, 0);
        let a = t.next_to_run(0.0).unwrap();
        t.drain_effects();
        t.stop_all("interrupted");
        let effects = t.drain_effects();
        assert!(effects.contains(&Effect::EndProcess { trial: a.trial }));
        t.on_exit(a.trial, Exit::Failure("SIGTERM".into()), 1.0)
            .unwrap();
        assert_eq!(t.trial(a.trial).unwrap().status, TrialStatus::Terminated);
        assert!(t.next_to_run(1.0).is_none());
        assert!(t.is_finished());
    }

    fn with_retention(n: u32, keep: usize, score: Option<&str>) -> Tuner {
        tuner(n, 0).with_checkpoint_retention(CheckpointRetention {
            num_to_keep: Some(keep),
            score_attribute: score.map(str::to_string),
            score_mode: None,
        })
    }

    fn deleted(effects: &[Effect]) -> Vec<(u32, u64)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::DeleteCheckpoint(c) => Some((c.trial.0, c.iteration)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn retention_keeps_the_newest_checkpoints() {
        let mut t = with_retention(1, 2, None);
        t.settings.stop.clear();
        let a = t.next_to_run(0.0).expect("a trial");
        for i in 1u32..=4 {
            t.drain_effects();
            t.on_result(a.trial, metrics(1.0), true, f64::from(i))
                .expect("result");
            let expected = if i >= 3 {
                vec![(0, u64::from(i) - 2)]
            } else {
                vec![]
            };
            assert_eq!(deleted(&t.drain_effects()), expected, "after iteration {i}");
        }
        let kept: Vec<u64> = t.trials()[0].checkpoints.keys().copied().collect();
        assert_eq!(kept, vec![3, 4]);
    }

    #[test]
    fn retention_by_score_keeps_the_best_and_always_the_latest() {
        let mut t = with_retention(1, 1, Some("loss"));
        t.settings.stop.clear();
        let a = t.next_to_run(0.0).expect("a trial");
        for (i, loss) in [2.0, 1.0, 3.0].into_iter().enumerate() {
            t.on_result(a.trial, metrics(loss), true, i as f64 + 1.0)
                .expect("result");
        }
        // Best is iteration 2 (loss 1.0); iteration 3 is the latest; iteration 1 goes.
        let kept: Vec<u64> = t.trials()[0].checkpoints.keys().copied().collect();
        assert_eq!(kept, vec![2, 3]);
        t.on_result(a.trial, metrics(0.5), true, 4.0)
            .expect("result");
        let kept: Vec<u64> = t.trials()[0].checkpoints.keys().copied().collect();
        assert_eq!(kept, vec![4], "the new best is also the latest");
    }

    /// Exploits trial 1 from trial 0's latest checkpoint on trial 1's second result.
    #[derive(Debug)]
    struct ExploitOnce;

    impl Scheduler for ExploitOnce {
        fn name(&self) -> &'static str {
            "exploit-once"
        }
        fn on_trial_result(
            &mut self,
            ctx: &mut SchedulerContext<'_>,
            result: &TrialResult,
        ) -> Decision {
            let donor = ctx.trial(TrialId(0)).and_then(Trial::latest_checkpoint);
            match donor {
                Some(donor) if result.trial == TrialId(1) && result.iteration() == 2 => {
                    Decision::new(
                        result.trial,
                        Action::Exploit {
                            donor,
                            config: Config::new(),
                            description: "x=0".into(),
                        },
                        "test exploit",
                    )
                }
                _ => Decision::continue_(result.trial, "go on"),
            }
        }
    }

    #[test]
    fn a_checkpoint_an_exploit_will_restart_from_is_never_deleted() {
        let settings = TunerSettings {
            metric: "loss".into(),
            mode: Mode::Min,
            seed: 1,
            max_failures: 1,
            stop: BTreeMap::new(),
        };
        let mut t = Tuner::new(settings, Box::new(Counting(2)), Box::new(ExploitOnce))
            .with_checkpoint_retention(CheckpointRetention {
                num_to_keep: Some(1),
                ..CheckpointRetention::default()
            });
        let a = t.next_to_run(0.0).expect("trial 0");
        let b = t.next_to_run(0.0).expect("trial 1");
        t.on_result(a.trial, metrics(1.0), true, 1.0).expect("a1");
        t.on_result(b.trial, metrics(5.0), true, 1.0).expect("b1");
        // b exploits a@1: b's own checkpoint 1 is dropped, and b must end its process.
        t.drain_effects();
        let reply = t.on_result(b.trial, metrics(5.0), true, 2.0).expect("b2");
        assert_eq!(reply.action, Action::Pause);
        let effects = t.drain_effects();
        let deleted_now = deleted(&effects);
        assert!(deleted_now.contains(&(1, 1)), "{effects:?}");
        assert!(
            deleted_now.contains(&(1, 2)),
            "the report after the exploit is not kept"
        );
        // a moves on: a@1 is pinned by b's pending restart, so it stays.
        t.on_result(a.trial, metrics(0.9), true, 2.0).expect("a2");
        assert!(!deleted(&t.drain_effects()).contains(&(0, 1)));
        t.on_exit(b.trial, Exit::Success, 3.0).expect("b exits");
        assert_eq!(t.trials()[1].status, TrialStatus::Paused);
        assert_eq!(t.trials()[1].iteration, 1, "b continues from a's iteration");
        let relaunch = t.next_to_run(3.0).expect("b restarts");
        assert_eq!(
            relaunch.restore,
            Some(CheckpointId {
                trial: a.trial,
                iteration: 1
            })
        );
        // b fails before its own first checkpoint: the retry starts from a@1 again, not scratch.
        t.on_exit(b.trial, Exit::Failure("boom".into()), 4.0)
            .expect("b fails");
        assert_eq!(
            t.trials()[1].restore,
            Some(CheckpointId {
                trial: a.trial,
                iteration: 1
            })
        );
        let retry = t.next_to_run(5.0).expect("b retries");
        t.on_result(retry.trial, metrics(0.8), true, 6.0)
            .expect("b's own checkpoint");
        // Now nobody needs a@1: the next collection of a's checkpoints removes it.
        let effects = t.drain_effects();
        assert!(deleted(&effects).contains(&(0, 1)), "{effects:?}");
    }

    /// Drives a tuner only through [`Tuner::apply`], keeping every input as the journal would.
    struct Journaled {
        tuner: Tuner,
        inputs: Vec<Input>,
    }

    impl Journaled {
        fn feed(&mut self, input: Input) -> Output {
            // What is applied is what is written, as the runner does: through the journal's
            // text (a float may not survive it bit for bit otherwise).
            let line = serde_json::to_string(&input).expect("serialize");
            let mut input: Input = serde_json::from_str(&line).expect("parse back");
            let output = self.tuner.apply(&input).expect("input fits the state");
            if let (Input::Next { started, .. }, Output::Launch(launch)) = (&mut input, &output) {
                *started = launch.clone();
            }
            self.inputs.push(input);
            output
        }
    }

    fn exploit_tuner() -> Tuner {
        let settings = TunerSettings {
            metric: "loss".into(),
            mode: Mode::Min,
            seed: 7,
            max_failures: 2,
            stop: BTreeMap::from([("training_iteration".to_string(), 4.0)]),
        };
        Tuner::new(settings, Box::new(Counting(3)), Box::new(ExploitOnce))
    }

    /// Replaying the journal through a fresh core gives the same state, decisions included.
    #[test]
    fn replaying_the_inputs_rebuilds_the_same_state() {
        let mut live = Journaled {
            tuner: exploit_tuner(),
            inputs: Vec::new(),
        };
        let mut now = 0.0;
        let mut running: Vec<(TrialId, u32)> = Vec::new();
        for step in 0..40u32 {
            now += 0.37;
            while running.len() < 2 {
                match live.feed(Input::Next { now, started: None }) {
                    Output::Launch(Some(l)) => running.push((l.trial, l.run)),
                    _ => break,
                }
            }
            if running.is_empty() {
                break;
            }
            let (trial, run) = running[step as usize % running.len()];
            let ending = live.tuner.trial(trial).and_then(|t| t.ending);
            let exit = if ending.is_some() || step % 11 == 10 {
                Some(if step % 11 == 10 {
                    Exit::Failure("crash".into())
                } else {
                    Exit::Success
                })
            } else {
                let out = live.feed(Input::Report {
                    now,
                    trial,
                    run,
                    metrics: metrics(f64::from(step % 5) + f64::from(trial.0)),
                    checkpoint: step % 2 == 0,
                });
                match out {
                    Output::Reply(r) if r.action != Action::Continue => Some(Exit::Success),
                    _ => None,
                }
            };
            if let Some(exit) = exit {
                live.feed(Input::Exit {
                    now,
                    trial,
                    run,
                    exit,
                });
                running.retain(|&(t, _)| t != trial);
            }
            if step == 20 {
                // A head dies here and a new one takes over.
                live.feed(Input::Resume {
                    now,
                    errored: ErroredTrials::Keep,
                });
                running.clear();
            }
        }
        let mut replayed = exploit_tuner();
        for input in &live.inputs {
            let out = replayed.apply(input).expect("replay");
            if let (Input::Next { started, .. }, Output::Launch(launch)) = (input, out) {
                assert_eq!(started, &launch, "the same trials start");
            }
        }
        assert!(live.inputs.len() > 30, "{}", live.inputs.len());
        assert_eq!(live.tuner.fingerprint(), replayed.fingerprint());
    }

    #[test]
    fn a_lost_run_rolls_back_to_its_checkpoint_and_resumes_there() {
        let mut t = tuner(2, 0);
        t.settings.stop.clear();
        let a = t.next_to_run(0.0).expect("a");
        let b = t.next_to_run(0.0).expect("b");
        t.on_result(a.trial, metrics(3.0), true, 1.0).expect("a1");
        t.on_result(a.trial, metrics(2.0), false, 2.0).expect("a2");
        t.on_result(a.trial, metrics(1.0), false, 3.0).expect("a3");
        t.on_result(b.trial, metrics(5.0), false, 1.0).expect("b1");
        t.drain_effects();
        t.resume(ErroredTrials::Keep, 10.0);
        let effects = t.drain_effects();
        let ta = &t.trials()[0];
        assert_eq!(
            ta.status,
            TrialStatus::Paused,
            "it resumes from its checkpoint"
        );
        assert_eq!(ta.iteration, 1);
        assert_eq!(
            ta.history().len(),
            1,
            "results after the checkpoint are gone"
        );
        assert_eq!(ta.best, Some((3.0, 1)), "a rolled-back best does not count");
        let tb = &t.trials()[1];
        assert_eq!(tb.iteration, 0);
        assert!(tb.history().is_empty());
        assert!(effects.contains(&Effect::RolledBack { trial: a.trial }));
        assert!(effects.iter().any(
            |e| matches!(e, Effect::Warning { trial, message } if *trial == b.trial && message.contains("from scratch"))
        ));
        let first = t.next_to_run(11.0).expect("b again, PENDING first");
        assert_eq!((first.trial, first.run, first.restore), (b.trial, 1, None));
        let again = t.next_to_run(11.0).expect("a again");
        assert_eq!((again.trial, again.run), (a.trial, 1));
        assert_eq!(again.restore.map(|c| c.iteration), Some(1));
        let r = t
            .on_result(a.trial, metrics(2.0), false, 12.0)
            .expect("a2 again");
        assert_eq!(r.result.iteration(), 2, "no iteration twice, no gap");
    }

    #[test]
    fn an_interrupt_pauses_checkpointed_trials_and_keeps_the_rest_waiting() {
        let mut t = tuner(3, 0);
        t.settings.stop.clear();
        let a = t.next_to_run(0.0).expect("a");
        let b = t.next_to_run(0.0).expect("b");
        t.on_result(a.trial, metrics(3.0), true, 1.0).expect("a1");
        t.on_result(b.trial, metrics(3.0), false, 1.0).expect("b1");
        t.interrupt("Ctrl-C");
        assert!(
            t.next_to_run(2.0).is_none(),
            "nothing starts while interrupted"
        );
        t.on_exit(a.trial, Exit::Failure("SIGTERM".into()), 2.0)
            .expect("a ends");
        t.on_exit(b.trial, Exit::Failure("SIGTERM".into()), 2.0)
            .expect("b ends");
        assert_eq!(t.trials()[0].status, TrialStatus::Paused);
        assert_eq!(t.trials()[1].status, TrialStatus::Interrupted);
        assert!(!t.is_finished());
        t.resume(ErroredTrials::Keep, 3.0);
        assert_eq!(t.trials()[1].status, TrialStatus::Pending);
        let next: Vec<TrialId> =
            std::iter::from_fn(|| t.next_to_run(4.0).map(|l| l.trial)).collect();
        assert_eq!(next, vec![TrialId(1), TrialId(0), TrialId(2)]);
    }
}

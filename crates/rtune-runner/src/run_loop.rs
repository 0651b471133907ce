//! The run loop: one task that owns the experiment's state and reacts to events.
//!
//! Everything that changes state happens here, in order: the protocol server only forwards
//! reports, executors only forward process exits, timers only send ticks. The loop appends each
//! input to the journal ([`crate::journal`]), feeds it to the pure [`Tuner`], carries out the
//! effects it asks for (files, processes, console), and answers the report. Because of that
//! single owner there are no locks, and the files on disk always describe a state the tuner was
//! really in; because the journal comes first, a new head can rebuild that state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtune_core::tuner::{Effect, ErroredTrials, Exit, Input, Launch, Output, Tuner};
use rtune_core::{Action, CheckpointId, TrialId, TrialStatus};
use rtune_protocol::{Response, TrialAction};
use serde_json::json;
use tokio::sync::mpsc;
// tokio's Instant follows the simulator's virtual clock (a paused runtime), std's would not.
use tokio::time::Instant;

use crate::executor::{Executor, ExecutorEvent, Placement, Resources, TrialLaunch};
use crate::journal::{Journal, JournalError};
use crate::report::Reporter;
use crate::server::{ProtocolServer, ReportEvent};
use crate::storage::{ExperimentDir, ExperimentState, HEARTBEAT_S, HeadInfo};

/// Errors that end a run before or while it runs. Trial failures are not errors of the run: they
/// are recorded on the trial.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error(transparent)]
    Executor(#[from] crate::executor::ExecutorError),
    /// The journal could not be written (a full disk): the trials were stopped; the experiment
    /// can be resumed once there is space.
    #[error(
        "{0}\nthe trials were stopped; everything up to this point is kept and `rtune resume` continues the experiment"
    )]
    Journal(#[from] JournalError),
    #[error(
        "no trial can run: {pending} trial(s) are waiting but the scheduler picks none and nothing is running\nhint: this is a scheduler bug; the state so far is in {dir}"
    )]
    Stuck { pending: usize, dir: PathBuf },
}

/// How the trial processes are started, as the run loop needs to know it.
pub struct TrialTemplate {
    /// Program and arguments; the program is already resolved to a path where needed.
    pub command: Vec<String>,
    /// The user's `[trial.env]`.
    pub env: Vec<(String, String)>,
    pub workers: u32,
    pub resources: Resources,
    /// Where the trial's processes run: its own directory, or one shared directory.
    pub workdir: crate::workdir::TrialWorkdir,
    /// How long a trial told to stop or pause may take to exit before it is signalled, and how
    /// long after SIGTERM it gets SIGKILL.
    pub stop_grace: Duration,
    /// `trial.report_timeout_s`: a run that has not reported for this long is failed (and
    /// retried per `max_failures`).
    pub report_timeout: Option<Duration>,
    /// Directories outside the trial's scratch directory from which it may hand over checkpoints
    /// (`trial.checkpoint_roots`).
    pub checkpoint_roots: Vec<PathBuf>,
}

/// Experiment-wide limits of the run loop (not the core's: they depend on the clock or on
/// outcomes the loop watches).
#[derive(Clone, Debug, Default)]
pub struct RunLimits {
    /// `time_budget_s`: after this many seconds since the experiment started, every trial is
    /// stopped and the experiment ends.
    pub time_budget: Option<Duration>,
    /// `max_total_results`: after this many results over all trials, every trial is stopped
    /// and the experiment ends.
    pub max_total_results: Option<u64>,
    /// `fail_fast`: when the first N trials all end in ERROR, stop the experiment.
    pub fail_fast: Option<u32>,
}

/// Everything the loop needs, assembled by [`crate::setup`].
pub struct RunParts {
    pub tuner: Tuner,
    pub executor: Box<dyn Executor>,
    pub executor_events: mpsc::UnboundedReceiver<ExecutorEvent>,
    pub dir: ExperimentDir,
    pub state: ExperimentState,
    pub template: TrialTemplate,
    pub reporter: Reporter,
    /// Where the protocol server listens, and the host name trials use to reach it.
    pub bind: SocketAddr,
    pub advertise_host: Option<String>,
    pub secret: String,
    /// The journal, open for appending (already replayed into `tuner` when resuming).
    pub journal: Journal,
    /// `Some` when this head resumes an experiment: what to do with its ERROR trials.
    pub resume: Option<ErroredTrials>,
    pub limits: RunLimits,
}

/// What a finished run leaves for the CLI to print or return.
pub struct RunOutcome {
    pub dir: PathBuf,
    pub state: ExperimentState,
    pub interrupted: bool,
    /// The interrupt was SIGUSR1, SLURM's warning that the head job's time limit is near
    /// (`rtune submit` asks for it): the head may submit its successor.
    pub time_limit: bool,
    /// Set when `fail_fast` ended the experiment: the common error of the first trials.
    pub failed_fast: Option<String>,
}

/// The least real time between two snapshots (`experiment_state.json`) while trials run. The
/// ticker runs on tokio's clock, which the simulated executor runs in virtual time: there a
/// tick comes every virtual second, thousands of times per real second, and rewriting the whole
/// snapshot on each made an lcbench run of 3,121 trials take 398 s instead of 11 s. The
/// snapshot only serves `rtune status` and readers of the directory (the journal is what a
/// resume replays), so once per real second is enough; a real run ticks once a second anyway.
const SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_millis(900);

/// Seconds since the Unix epoch: the only clock the core ever sees. It follows tokio's clock,
/// so under the simulator (a paused runtime) it is virtual time (see [`crate::clock`]).
pub fn unix_now() -> f64 {
    crate::clock::unix_now()
}

struct RunningTrial {
    run: u32,
    /// When the core started it (`Input::Next`), in [`unix_now`] seconds.
    submitted_at: f64,
    /// Whether its processes run: false while its job waits in SLURM's queue. Queue time is
    /// neither training time nor silence (`report_timeout_s`).
    started: bool,
    /// When it last reported (or its processes started): for `report_timeout_s`.
    last_report: Instant,
    /// Set once `report_timeout_s` ended it: its exit is a failure with this message.
    timed_out: Option<String>,
}

/// Messages from the loop's own timers.
enum Timer {
    /// A trial told to stop or pause has had its grace period: end its process if it still runs.
    EndDeadline { trial: TrialId, run: u32 },
}

pub async fn run(parts: RunParts) -> Result<RunOutcome, RunError> {
    let RunParts {
        mut tuner,
        mut executor,
        mut executor_events,
        dir,
        mut state,
        template,
        mut reporter,
        bind,
        advertise_host,
        secret,
        journal,
        resume,
        limits,
    } = parts;

    let (report_tx, mut reports) = mpsc::unbounded_channel::<ReportEvent>();
    executor.attach_reports(report_tx.clone());
    let local = ProtocolServer::start(bind, secret.clone(), report_tx).await?;
    let addr = match &advertise_host {
        Some(host) => format!("{host}:{}", local.port()),
        None => local.to_string(),
    };
    tracing::debug!(%addr, "protocol server listening");
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer>();

    let mut lp = Loop {
        tuner: &mut tuner,
        executor: executor.as_mut(),
        dir: &dir,
        state: &mut state,
        template: &template,
        reporter: &mut reporter,
        addr,
        secret,
        running: HashMap::new(),
        timer_tx,
        dirty: true,
        journal,
        maybe_more: true,
        fatal: None,
        limits: limits.clone(),
        failed_fast: None,
        last_write_real: None,
    };
    lp.state.head = Some(HeadInfo {
        pid: std::process::id(),
        host: crate::setup::this_host_name().unwrap_or_else(|_| "unknown".into()),
        heartbeat: unix_now(),
    });

    if let Some(errored) = resume {
        // (A journal that cannot be written shows as `fatal`, handled at the loop's top.)
        lp.feed(Input::Resume {
            now: unix_now(),
            errored,
        });
        lp.apply_effects();
        // The result files become what the journal says counts: rolled-back results go, and
        // results the old head counted but had not written yet come back.
        for trial in lp.tuner.trials() {
            if let Ok(files) = lp.dir.trial(trial.id)
                && let Err(e) = files.rewrite_results(trial.history())
            {
                tracing::error!("{}: {e}", trial.id.name());
            }
        }
    }

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // SIGTERM is how SLURM ends a job (scancel, the time limit), SIGHUP what a dropped ssh
    // session sends: both end the run like Ctrl-C, so the trials are stopped and the state is
    // written (before SLURM's SIGKILL), and `rtune resume` can continue.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let mut sighup = signal(SignalKind::hangup()).ok();
    // SIGUSR1: the head job's time limit is near (`--signal=B:USR1@grace` of `rtune submit`).
    let mut sigusr1 = signal(SignalKind::user_defined1()).ok();
    let mut interrupted = false;
    let mut time_limit = false;

    loop {
        if !interrupted && lp.fatal.is_none() {
            lp.fill_slots();
        }
        if lp.fatal.is_some() {
            // The journal cannot be written: nothing may take effect any more. Stop every trial
            // and leave; the journal so far is consistent and a resume continues from it. What
            // happens from here reaches the core (for the snapshot) but not the journal.
            if let Some(error) = &lp.fatal {
                lp.reporter.on_event(&format!("ERROR {error}"));
            }
            if !interrupted {
                lp.tuner.interrupt("rtune cannot write its journal");
                lp.apply_effects();
            }
            lp.executor.shutdown(lp.template.stop_grace);
            while let Ok(event) = executor_events.try_recv() {
                lp.on_executor_event(event);
            }
            lp.state.finished_at = Some(unix_now());
            if let Err(e) = lp.write_state("interrupted") {
                tracing::error!("{e}");
            }
            if let Some(error) = lp.fatal.take() {
                return Err(error);
            }
        }
        if lp.running.is_empty() {
            if lp.tuner.is_finished() || interrupted {
                break;
            }
            // Nothing runs and nothing could start: with a correct scheduler this only happens
            // when every trial is finished, so anything else would hang forever.
            let waiting = lp
                .tuner
                .trials()
                .iter()
                .filter(|t| !t.status.is_finished())
                .count();
            if waiting > 0 || !lp.tuner.is_finished() {
                lp.write_state("interrupted")?;
                return Err(RunError::Stuck {
                    pending: waiting,
                    dir: lp.dir.path().to_path_buf(),
                });
            }
        }
        tokio::select! {
            Some(report) = reports.recv() => lp.on_report(report),
            Some(event) = executor_events.recv() => lp.on_executor_event(event),
            Some(timer) = timers.recv() => lp.on_timer(timer),
            _ = ticker.tick() => {
                lp.check_limits();
                // Both on the real clock (see SNAPSHOT_MIN_INTERVAL): the heartbeat says the
                // head process is alive, which is a fact of real time even in a simulation.
                let since = lp.last_write_real.map(|at| at.elapsed());
                let snapshot_due = lp.dirty && since.is_none_or(|s| s >= SNAPSHOT_MIN_INTERVAL);
                let heartbeat_due = since.is_none_or(|s| s.as_secs_f64() >= HEARTBEAT_S);
                if (snapshot_due || heartbeat_due)
                    && let Err(e) = lp.write_state("running")
                    && lp.fatal.is_none()
                {
                    // A full disk: stop the trials like for the journal (never leave them
                    // running behind an exited head).
                    lp.fatal = Some(e);
                }
                lp.reporter.tick(unix_now(), lp.state);
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                lp.interrupt("interrupted (Ctrl-C)");
            }
            Some(()) = next_signal(&mut sigterm), if !interrupted => {
                interrupted = true;
                lp.interrupt("interrupted (SIGTERM, e.g. scancel or the SLURM time limit)");
            }
            Some(()) = next_signal(&mut sighup), if !interrupted => {
                interrupted = true;
                lp.interrupt("interrupted (SIGHUP: the terminal or ssh session went away)");
            }
            Some(()) = next_signal(&mut sigusr1), if !interrupted => {
                interrupted = true;
                time_limit = true;
                lp.interrupt("stopped for the job's time limit (SIGUSR1 from SLURM)");
            }
        }
    }
    lp.executor.shutdown(lp.template.stop_grace);
    let status = if interrupted {
        "interrupted"
    } else {
        "finished"
    };
    lp.state.finished_at = Some(unix_now());
    lp.write_state(status)?;
    let failed_fast = lp.failed_fast.take();
    reporter.finish(&state);
    Ok(RunOutcome {
        dir: dir.path().to_path_buf(),
        state,
        interrupted,
        time_limit,
        failed_fast,
    })
}

/// The next delivery of a signal, or never when it could not be installed.
async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal.as_mut() {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

struct Loop<'a> {
    tuner: &'a mut Tuner,
    executor: &'a mut dyn Executor,
    dir: &'a ExperimentDir,
    state: &'a mut ExperimentState,
    template: &'a TrialTemplate,
    reporter: &'a mut Reporter,
    /// `host:port` trials connect to.
    addr: String,
    secret: String,
    running: HashMap<TrialId, RunningTrial>,
    timer_tx: mpsc::UnboundedSender<Timer>,
    /// Whether the state on disk is behind the tuner's.
    dirty: bool,
    journal: Journal,
    /// Whether the tuner may have something new to start: false after it answered "nothing"
    /// until the next input, so idle ticks do not fill the journal.
    maybe_more: bool,
    /// A journal write failed: the loop stops everything and returns this.
    fatal: Option<RunError>,
    limits: RunLimits,
    failed_fast: Option<String>,
    /// When the snapshot was last written, on the machine's real clock (for the heartbeat and
    /// [`SNAPSHOT_MIN_INTERVAL`]).
    last_write_real: Option<std::time::Instant>,
}

impl Loop<'_> {
    /// Append `input` to the journal, then feed it to the core: nothing takes effect that a
    /// replay would not redo. For [`Input::Next`] the core's answer (the trial started, with its
    /// config) is recorded in the same line, written before the process starts. Once the journal
    /// cannot be written the loop is ending: inputs still reach the core (for the final
    /// snapshot) but are not journaled, and a resume treats those runs as lost.
    fn feed(&mut self, input: Input) -> Option<Output> {
        let mut input = Journal::round_trip(&input);
        self.maybe_more = true;
        let journaled = self.fatal.is_none();
        let output = if let Input::Next { now, started } = &mut input {
            let output = self.tuner.apply(&Input::Next {
                now: *now,
                started: None,
            });
            if let Ok(Output::Launch(launch)) = &output {
                started.clone_from(launch);
            }
            if journaled && let Err(e) = self.journal.append(&input) {
                self.fatal = Some(RunError::Journal(e));
            }
            output
        } else {
            if journaled && let Err(e) = self.journal.append(&input) {
                self.fatal = Some(RunError::Journal(e));
                return None;
            }
            self.tuner.apply(&input)
        };
        match output {
            Ok(output) => Some(output),
            Err(e) => {
                // The loop checks runs before it feeds them; a refusal here is a bug, and a
                // replay refuses the same input the same way.
                tracing::error!("{e}");
                None
            }
        }
    }

    /// Start trials while the executor has room and the tuner has something to run.
    fn fill_slots(&mut self) {
        while self.maybe_more
            && self
                .executor
                .has_room(self.template.workers, &self.template.resources)
        {
            let launch = match self.feed(Input::Next {
                now: unix_now(),
                started: None,
            }) {
                Some(Output::Launch(Some(launch))) if self.fatal.is_none() => launch,
                _ => {
                    self.maybe_more = false;
                    self.apply_effects();
                    break;
                }
            };
            self.apply_effects();
            let trial = launch.trial;
            let run = launch.run;
            let submitted_at = unix_now();
            match self.start(launch) {
                Ok(placement) => {
                    self.running.insert(
                        trial,
                        RunningTrial {
                            run,
                            submitted_at,
                            started: !placement.queued,
                            last_report: Instant::now(),
                            timed_out: None,
                        },
                    );
                    self.record_placement(trial, run, placement.description);
                }
                Err(message) => {
                    // The trial could not even start (missing program, unwritable dir): that is
                    // its failure, retried like any other.
                    self.write_error(trial, &message);
                    self.feed(Input::Exit {
                        now: unix_now(),
                        trial,
                        run,
                        exit: Exit::Failure(message),
                    });
                    self.apply_effects();
                }
            }
            self.dirty = true;
        }
    }

    fn start(&mut self, launch: Launch) -> Result<Placement, String> {
        let trial = launch.trial;
        let files = self
            .dir
            .trial(trial)
            .map_err(|e| format!("cannot prepare the trial's directory: {e}"))?;
        files
            .write_params(&launch.config)
            .map_err(|e| e.to_string())?;
        self.write_policy(trial);
        let restore_dir = match launch.restore {
            None => None,
            Some(c) if c.trial == trial => Some(files.checkpoint_dir(c.iteration)),
            Some(c) => {
                // An exploit: the copy of the donor's checkpoint made when the exploit was
                // decided (see `copy_donor_checkpoint`).
                let target = files.exploit_dir(c);
                if !target.is_dir() {
                    self.copy_donor_checkpoint(trial, c)?;
                }
                Some(target)
            }
        };
        let config_json =
            serde_json::to_string(&launch.config).map_err(|e| format!("config: {e}"))?;
        use rtune_protocol::env as e;
        let mut env = vec![
            (e::PROTOCOL.to_string(), rtune_protocol::VERSION.to_string()),
            (e::ADDR.to_string(), self.addr.clone()),
            // This run's token, never the experiment's secret (docs/protocol.md).
            (
                e::SECRET.to_string(),
                crate::server::run_token(&self.secret, trial, launch.run),
            ),
            (e::TRIAL_ID.to_string(), trial.to_string()),
            (e::TRIAL_NAME.to_string(), trial.name()),
            (e::RUN.to_string(), launch.run.to_string()),
            (e::TRIAL_DIR.to_string(), path_string(files.dir())),
            (e::EXPERIMENT_DIR.to_string(), path_string(self.dir.path())),
            (e::CONFIG.to_string(), config_json),
            (
                e::CONFIG_FILE.to_string(),
                path_string(&files.params_path()),
            ),
            (
                e::SCRATCH_DIR.to_string(),
                path_string(&files.scratch_dir()),
            ),
        ];
        env.extend(self.template.workdir.env());
        if let (Some(dir), Some(c)) = (&restore_dir, launch.restore) {
            env.push((e::RESTORE_DIR.to_string(), path_string(dir)));
            env.push((e::RESTORE_ITERATION.to_string(), c.iteration.to_string()));
        }
        env.extend(self.template.env.iter().cloned());
        let placement = self
            .executor
            .start(TrialLaunch {
                trial,
                run: launch.run,
                command: self.template.command.clone(),
                env,
                workers: self.template.workers,
                resources: self.template.resources.clone(),
                cwd: self.template.workdir.for_trial(files.dir()),
                stdout: files.stdout_path(),
                stderr: files.stderr_path(),
            })
            .map_err(|e| e.to_string())?;
        Ok(placement)
    }

    /// An exploit's target gets its own copy of the donor's checkpoint as soon as the exploit is
    /// decided: the donor may train on and replace or delete its checkpoints before the target
    /// restarts, and the target must never touch the donor's files.
    fn copy_donor_checkpoint(&self, target: TrialId, donor: CheckpointId) -> Result<(), String> {
        let files = self
            .dir
            .trial(target)
            .map_err(|e| format!("cannot prepare the trial's directory: {e}"))?;
        let donor_files = self
            .dir
            .trial(donor.trial)
            .map_err(|e| format!("cannot open the donor's directory: {e}"))?;
        files
            .copy_checkpoint(
                &donor_files.checkpoint_dir(donor.iteration),
                &files.exploit_dir(donor),
            )
            .map_err(|e| {
                format!(
                    "cannot copy {}'s checkpoint at iteration {}: {e}",
                    donor.trial.name(),
                    donor.iteration
                )
            })
    }

    fn on_report(&mut self, report: ReportEvent) {
        let response = self.handle_report(&report);
        // The trial may have died meanwhile; nothing to do about an unsent answer.
        let _ = report.reply.send(response);
    }

    fn handle_report(&mut self, report: &ReportEvent) -> Response {
        let trial = report.trial;
        if self.fatal.is_some() {
            return Response::error(
                "rtune cannot write its journal and is stopping every trial; this process should exit",
            );
        }
        match self.running.get_mut(&trial) {
            Some(r) if r.run == report.run => {
                r.last_report = Instant::now();
                if !r.started {
                    // It reported before the executor saw its job start (between two polls):
                    // its time counts from this report on.
                    self.mark_started(trial, report.run, None);
                }
            }
            Some(r) => {
                return Response::error(format!(
                    "{} run {} is not the current run ({}); this process should exit",
                    trial.name(),
                    report.run,
                    r.run
                ));
            }
            None => {
                return Response::error(format!("{} is not running", trial.name()));
            }
        }
        let Some(current) = self.tuner.trial(trial) else {
            return Response::error(format!("no trial {}", trial.name()));
        };
        let budget = self.tuner.scheduler_budget();
        let rules = crate::report_checks::Rules {
            metric: &self.tuner.settings().metric,
            time_attr: self.tuner.scheduler_time_attr(),
            budget: budget.as_ref(),
        };
        if let Err(message) = crate::report_checks::check_report(current, &report.metrics, &rules) {
            return self.refuse(trial, message);
        }
        let iteration = current.iteration + 1;
        let restored_from = current.restore;
        // The config this result was produced with; the decision it triggers may change the
        // trial's config (an exploit), which only applies from the restart on.
        let config = current.config.clone();
        let files = match self.dir.trial(trial) {
            Ok(files) => files,
            Err(e) => return Response::error(format!("rtune cannot write the trial's files: {e}")),
        };
        if let Some(src) = &report.checkpoint
            && let Err(message) = crate::report_checks::confine_checkpoint(
                src,
                &files,
                self.dir.path(),
                &self.template.checkpoint_roots,
            )
        {
            return self.refuse(trial, message);
        }
        // Take the checkpoint over before the tuner counts it, so a checkpoint the tuner knows
        // about always exists on disk.
        let mut has_checkpoint = false;
        if let Some(src) = &report.checkpoint {
            match files.take_checkpoint(src, iteration) {
                Ok(_) => has_checkpoint = true,
                Err(e) => self.warn(
                    trial,
                    &format!(
                        "{}'s checkpoint at iteration {iteration} was not kept: {e}",
                        trial.name()
                    ),
                ),
            }
        }
        let reply = match self.feed(Input::Report {
            now: unix_now(),
            trial,
            run: report.run,
            metrics: report.metrics.clone(),
            checkpoint: has_checkpoint,
        }) {
            Some(Output::Reply(reply)) => reply,
            _ => {
                return Response::error(
                    "rtune could not take this report (see its log); this process should exit",
                );
            }
        };
        // Once it has a checkpoint of its own, the copy of a donor's checkpoint it restarted
        // from (an exploit) is no longer needed: a restart would use its own (the tuner then
        // restores from something else, or from nothing while it runs on). The same report may
        // pause it, pointing its restore at that new checkpoint, so "nothing" is not the test.
        if let Some(c) = restored_from
            && c.trial != trial
            && self
                .tuner
                .trial(trial)
                .is_some_and(|t| t.restore != Some(c))
            && let Err(e) = std::fs::remove_dir_all(files.exploit_dir(c))
        {
            tracing::warn!(
                "{}: cannot remove the donor checkpoint copy: {e}",
                trial.name()
            );
        }
        let done = !matches!(reply.action, Action::Continue);
        if let Err(e) = files.append_result(&reply.result, &config, done) {
            tracing::error!("{}: cannot write result: {e}", trial.name());
        }
        let effects = self.tuner.drain_effects();
        let reason = effects
            .iter()
            .rev()
            .find_map(|effect| match effect {
                Effect::Decision(d) if d.trial == trial => Some(d.reason.clone()),
                _ => None,
            })
            .unwrap_or_default();
        self.apply(effects);
        self.dirty = true;
        let action = match reply.action {
            Action::Continue => TrialAction::Continue,
            Action::Stop => TrialAction::Stop,
            Action::Pause | Action::Exploit { .. } => TrialAction::Pause,
        };
        if action.should_exit() {
            self.schedule_end(trial, report.run);
        }
        self.check_result_budget();
        Response::action(action, reason)
    }

    /// A report refused by [`crate::report_checks`]: logged, answered with the error, never
    /// recorded.
    fn refuse(&mut self, trial: TrialId, message: String) -> Response {
        self.warn(trial, &format!("report refused: {message}"));
        Response::error(message)
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::EndDeadline { trial, run } => {
                // The trial was told to exit and has not: signal its processes.
                if self.running.get(&trial).is_some_and(|r| r.run == run) {
                    tracing::debug!("{} did not exit after its grace period", trial.name());
                    self.executor.stop(trial, self.template.stop_grace);
                }
            }
        }
    }

    /// A trial told to stop or pause gets `stop_grace` to exit by itself; after that its run is
    /// ended, so a trial that ignores the answer cannot hold its slot.
    fn schedule_end(&mut self, trial: TrialId, run: u32) {
        let tx = self.timer_tx.clone();
        let grace = self.template.stop_grace;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = tx.send(Timer::EndDeadline { trial, run });
        });
    }

    fn on_executor_event(&mut self, event: ExecutorEvent) {
        let (trial, run, success, message) = match event {
            ExecutorEvent::Exited {
                trial,
                run,
                success,
                message,
            } => (trial, run, success, message),
            ExecutorEvent::Lost {
                trial,
                run,
                message,
            } => {
                self.on_lost(trial, run, message);
                return;
            }
            ExecutorEvent::Placed {
                trial,
                run,
                description,
                running,
                started_at,
            } => {
                // A queued SLURM job started (or still waits, for a new reason).
                if self.running.get(&trial).is_some_and(|r| r.run == run) {
                    self.record_placement(trial, run, description);
                    self.dirty = true;
                    if running {
                        self.mark_started(trial, run, started_at);
                    }
                }
                return;
            }
        };
        self.executor.release(trial);
        match self.running.get(&trial) {
            Some(r) if r.run == run => {}
            _ => return,
        }
        let timed_out = self.running.remove(&trial).and_then(|r| r.timed_out);
        let exit = match timed_out {
            Some(message) => Exit::Failure(self.failure_message(trial, &message)),
            None if success => Exit::Success,
            None => Exit::Failure(self.failure_message(trial, &message)),
        };
        let ending = self.tuner.trial(trial).and_then(|t| t.ending);
        if let (Exit::Failure(message), None) = (&exit, ending) {
            self.write_error(trial, message);
        }
        self.feed(Input::Exit {
            now: unix_now(),
            trial,
            run,
            exit,
        });
        self.apply_effects();
        self.check_fail_fast();
        self.dirty = true;
    }

    /// SLURM took a run away (requeue, preemption, node failure): the trial restarts as a new
    /// run (a new run number, so the old run's token is refused from now on) from its latest
    /// checkpoint; not a failure. A trial that was being stopped, paused or interrupted ends as
    /// it would have.
    fn on_lost(&mut self, trial: TrialId, run: u32, message: String) {
        self.executor.release(trial);
        if self.running.get(&trial).is_none_or(|r| r.run != run) {
            return;
        }
        let timed_out = self.running.remove(&trial).and_then(|r| r.timed_out);
        self.reporter.on_event(&format!(
            "{}: its run {run} was lost: {message}",
            trial.name()
        ));
        let exit = match timed_out {
            Some(why) => Exit::Failure(self.failure_message(trial, &why)),
            None => Exit::Lost(message),
        };
        self.feed(Input::Exit {
            now: unix_now(),
            trial,
            run,
            exit,
        });
        self.apply_effects();
        self.dirty = true;
    }

    /// A run that waited in the queue really runs now (or at `started_at`, when the executor
    /// knows better and it lies between the run's submission and now): its time and its
    /// `report_timeout_s` count from there. Once per run.
    fn mark_started(&mut self, trial: TrialId, run: u32, started_at: Option<f64>) {
        let now = unix_now();
        let Some(r) = self
            .running
            .get_mut(&trial)
            .filter(|r| r.run == run && !r.started)
        else {
            return;
        };
        r.started = true;
        r.last_report = Instant::now();
        let at = started_at
            .filter(|t| t.is_finite() && *t >= r.submitted_at && *t <= now)
            .unwrap_or(now);
        self.feed(Input::Started {
            now: at,
            trial,
            run,
        });
        self.apply_effects();
    }

    /// Ctrl-C, SIGTERM, SIGHUP: journal the interrupt, end every running trial.
    fn interrupt(&mut self, what: &str) {
        self.reporter
            .on_event(&format!("{what}: stopping every trial"));
        self.feed(Input::Interrupt {
            now: unix_now(),
            reason: format!("the experiment was {what}"),
        });
        self.apply_effects();
        self.executor.shutdown(self.template.stop_grace);
    }

    /// On every tick: runs silent for longer than `report_timeout_s` are ended (and failed),
    /// and a used-up `time_budget_s` stops the experiment.
    fn check_limits(&mut self) {
        if let Some(timeout) = self.template.report_timeout {
            let silent: Vec<TrialId> = self
                .running
                .iter()
                .filter(|(_, r)| {
                    r.started && r.timed_out.is_none() && r.last_report.elapsed() >= timeout
                })
                .map(|(&t, _)| t)
                .collect();
            for trial in silent {
                let message = format!(
                    "no report for {} s (trial.report_timeout_s): the run was ended",
                    timeout.as_secs_f64()
                );
                self.warn(trial, &format!("{}: {message}", trial.name()));
                if let Some(r) = self.running.get_mut(&trial) {
                    r.timed_out = Some(message);
                }
                self.executor.stop(trial, self.template.stop_grace);
            }
        }
        self.check_result_budget();
        if let Some(budget) = self.limits.time_budget
            && !self.tuner.is_finished()
            && self.failed_fast.is_none()
            && unix_now() - self.state.started_at >= budget.as_secs_f64()
        {
            self.limits.time_budget = None;
            self.stop_all_for(format!(
                "the time budget of {} s (time_budget_s) is used up",
                budget.as_secs_f64()
            ));
        }
    }

    /// A used-up budget (`time_budget_s`, `max_total_results`): every trial is stopped for good,
    /// through the journal, and the experiment ends as finished.
    fn stop_all_for(&mut self, reason: String) {
        self.reporter
            .on_event(&format!("{reason}: stopping every trial"));
        self.feed(Input::StopAll {
            now: unix_now(),
            reason,
        });
        self.apply_effects();
    }

    /// `max_total_results`: checked after every result (and on every tick, for a resumed
    /// experiment whose budget was used up before it stopped).
    fn check_result_budget(&mut self) {
        let Some(budget) = self.limits.max_total_results else {
            return;
        };
        if self.tuner.results_received() < budget
            || self.tuner.is_finished()
            || self.failed_fast.is_some()
        {
            return;
        }
        self.limits.max_total_results = None;
        self.stop_all_for(format!(
            "the budget of {budget} results (max_total_results) is used up"
        ));
    }

    /// `fail_fast = N`: when the first N trials all ended in ERROR, the experiment stops and
    /// says what they had in common.
    fn check_fail_fast(&mut self) {
        let Some(n) = self.limits.fail_fast else {
            return;
        };
        let first: Vec<_> = self.tuner.trials().iter().take(n as usize).collect();
        if first.len() < n as usize || first.iter().any(|t| t.status != TrialStatus::Error) {
            return;
        }
        let errors: Vec<&str> = first
            .iter()
            .map(|t| {
                t.error
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            })
            .collect();
        let common = if errors.iter().all(|e| *e == errors[0]) {
            format!("all failed with: {}", errors[0])
        } else {
            format!("the first failed with: {}", errors[0])
        };
        let message = format!(
            "fail_fast: the first {n} trials all ended in ERROR, so the experiment stops; {common}\nsee {}",
            self.dir
                .path()
                .join("trial_00000")
                .join("error.txt")
                .display()
        );
        self.limits.fail_fast = None;
        self.reporter.on_event(&message);
        self.feed(Input::StopAll {
            now: unix_now(),
            reason: "fail_fast: the first trials all failed".into(),
        });
        self.apply_effects();
        self.failed_fast = Some(message);
    }

    /// The exit message plus where to look: the last lines of the trial's stderr.
    fn failure_message(&self, trial: TrialId, message: &str) -> String {
        let Ok(files) = self.dir.trial(trial) else {
            return message.to_string();
        };
        let tail = tail_lines(&files.stderr_path(), 5);
        if tail.is_empty() {
            format!("{message} (stderr.log is empty)")
        } else {
            format!("{message}; stderr.log ends with:\n{tail}")
        }
    }

    fn write_error(&mut self, trial: TrialId, message: &str) {
        if let Ok(files) = self.dir.trial(trial)
            && let Err(e) = files.write_error(message)
        {
            tracing::error!("{}: cannot write error.txt: {e}", trial.name());
        }
    }

    /// Where a run of a trial was placed (or moved to: a queued SLURM job that started): the
    /// state keeps the latest, events.jsonl every one, so a timeline can show each run.
    fn record_placement(&mut self, trial: TrialId, run: u32, description: String) {
        if let Err(e) = self.dir.append_event(&json!({
            "time": unix_now(), "trial": trial.to_string(), "event": "placement",
            "run": run, "placement": description,
        })) {
            tracing::error!("cannot write the events log: {e}");
        }
        self.state.placements.insert(trial.to_string(), description);
    }

    fn warn(&mut self, trial: TrialId, message: &str) {
        // The console line below is the warning; a tracing warning as well would print it twice
        // in a job log, where stdout and stderr meet.
        tracing::debug!("{message}");
        self.reporter.on_event(&format!("WARNING {message}"));
        if let Err(e) = self.dir.append_event(&json!({
            "time": unix_now(), "trial": trial.to_string(), "event": "warning", "message": message,
        })) {
            tracing::error!("cannot write the events log: {e}");
        }
    }

    fn apply_effects(&mut self) {
        let effects = self.tuner.drain_effects();
        self.apply(effects);
    }

    fn apply(&mut self, effects: Vec<Effect>) {
        let now = unix_now();
        for effect in effects {
            match effect {
                Effect::Decision(decision) => {
                    let iteration = self.tuner.trial(decision.trial).map_or(0, |t| t.iteration);
                    if let Err(e) = self.dir.append_decision(&decision, iteration, now) {
                        tracing::error!("cannot write the decisions log: {e}");
                    }
                    if !matches!(decision.action, Action::Continue) {
                        self.reporter.on_event(&format!(
                            "{} {}: {}",
                            decision.trial.name(),
                            decision.action.name(),
                            decision.reason
                        ));
                    }
                }
                Effect::Exploited { target, donor, .. } => {
                    let line = crate::lineage::exploit_line(now, &effect);
                    if let Some(line) = line
                        && let Err(e) = self.dir.append_lineage(&line)
                    {
                        tracing::error!("cannot write the lineage log: {e}");
                    }
                    if let Err(message) = self.copy_donor_checkpoint(target, donor) {
                        // The restart will try the copy again and fail the run if it still
                        // cannot be made.
                        self.warn(target, &message);
                    }
                    self.write_policy(target);
                }
                Effect::RolledBack { trial } => {
                    if let Some(t) = self.tuner.trial(trial)
                        && let Ok(files) = self.dir.trial(trial)
                        && let Err(e) = files.rewrite_results(t.history())
                    {
                        tracing::error!("{}: cannot roll back its results: {e}", trial.name());
                    }
                }
                Effect::Status {
                    trial,
                    status,
                    reason,
                } => {
                    if let Err(e) = self.dir.append_event(&json!({
                        "time": now, "trial": trial.to_string(), "event": "status",
                        "status": status, "reason": reason,
                    })) {
                        tracing::error!("cannot write the events log: {e}");
                    }
                    // A new trial waiting is no news; one that ran before (a retry, a resume) is.
                    let ran_before = self.tuner.trial(trial).is_some_and(|t| t.runs > 0);
                    if status != TrialStatus::Pending || ran_before {
                        self.reporter
                            .on_event(&format!("{} {status}: {reason}", trial.name()));
                    }
                }
                Effect::EndProcess { trial } => {
                    if self.running.contains_key(&trial) {
                        self.executor.stop(trial, self.template.stop_grace);
                    }
                }
                Effect::DeleteCheckpoint(c) => {
                    if let Ok(files) = self.dir.trial(c.trial)
                        && let Err(e) = files.delete_checkpoint(c.iteration)
                    {
                        tracing::warn!("cannot delete a checkpoint of {}: {e}", c.trial.name());
                    }
                }
                Effect::Warning { trial, message } => self.warn(trial, &message),
                Effect::Proposal {
                    trial,
                    searcher,
                    reason,
                    details,
                } => {
                    if let Err(e) = self
                        .dir
                        .append_proposal(trial, searcher, &reason, &details, now)
                    {
                        tracing::error!("cannot write the decisions log: {e}");
                    }
                }
            }
        }
        // `state.trials` is brought up to date when the state is written (`write_state`), not
        // here: copying every trial after every event made the loop quadratic in the number of
        // trials.
    }

    /// policy.json: the trial's config by iteration, as the core keeps it.
    fn write_policy(&self, trial: TrialId) {
        let Some(policy) = self.tuner.trial(trial).map(|t| t.policy.clone()) else {
            return;
        };
        if let Ok(files) = self.dir.trial(trial)
            && let Err(e) = files.write_policy(&policy)
        {
            tracing::error!("{}: cannot write policy.json: {e}", trial.name());
        }
    }

    fn write_state(&mut self, status: &str) -> Result<(), RunError> {
        self.state.status = status.to_string();
        self.state.trials = self.tuner.trials().to_vec();
        let now = unix_now();
        if let Some(head) = &mut self.state.head {
            head.heartbeat = now;
        }
        self.last_write_real = Some(std::time::Instant::now());
        self.dir.write_state(self.state)?;
        self.dirty = false;
        Ok(())
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The last `n` lines of a text file, or nothing if it cannot be read.
fn tail_lines(path: &Path, n: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    //! The run loop on its own: a fake executor whose "processes" are threads speaking the real
    //! protocol (through `rtune-client`) to the loop's server, with scripted behaviour.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rtune_core::scheduler::FifoScheduler;
    use rtune_core::searcher::FixedSearcher;
    use rtune_core::tuner::TunerSettings;
    use rtune_core::{Config, Mode};
    use serde_json::Value;

    use super::*;
    use crate::executor::{CapacityPlan, ExecutorError, Placement};
    use crate::storage::STATE_FORMAT;

    /// Runs each trial as a thread: it reports `epochs` results (`loss = x / epoch`), or fails
    /// at `fail_at` when its config says so, and exits when told to or when stopped.
    struct FakeExecutor {
        slots: usize,
        running: HashMap<TrialId, Arc<AtomicBool>>,
        events: mpsc::UnboundedSender<ExecutorEvent>,
    }

    impl Executor for FakeExecutor {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn check_capacity(&self, _: u32, _: &Resources) -> Result<CapacityPlan, ExecutorError> {
            Ok(CapacityPlan {
                concurrent_trials: self.slots as u32,
                explanation: format!("{} fake slots", self.slots),
            })
        }
        fn has_room(&self, _: u32, _: &Resources) -> bool {
            self.running.len() < self.slots
        }
        fn start(&mut self, launch: TrialLaunch) -> Result<Placement, ExecutorError> {
            let stop = Arc::new(AtomicBool::new(false));
            self.running.insert(launch.trial, stop.clone());
            let events = self.events.clone();
            let env: HashMap<String, String> = launch.env.iter().cloned().collect();
            let (trial, run) = (launch.trial, launch.run);
            std::thread::spawn(move || {
                let success = fake_trial(&env, &stop);
                let message = if success {
                    "exit code 0"
                } else {
                    "exit code 3"
                };
                let _ = events.send(ExecutorEvent::Exited {
                    trial,
                    run,
                    success,
                    message: message.into(),
                });
            });
            Ok(Placement {
                description: "fake".into(),
                queued: false,
            })
        }
        fn stop(&mut self, trial: TrialId, _: Duration) {
            if let Some(flag) = self.running.get(&trial) {
                flag.store(true, Ordering::SeqCst);
            }
        }
        fn release(&mut self, trial: TrialId) {
            self.running.remove(&trial);
        }
        fn shutdown(&mut self, _: Duration) {
            for flag in self.running.values() {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }

    /// One fake trial process; true if it "exits 0".
    fn fake_trial(env: &HashMap<String, String>, stop: &AtomicBool) -> bool {
        let Ok(Some(mut session)) = rtune_client::Session::from_vars(|k| env.get(k).cloned())
        else {
            return false;
        };
        let number = |key: &str| session.config().get(key).and_then(Value::as_f64);
        let x = number("x").unwrap_or(1.0);
        let fail_at = number("fail_at");
        let start = session.restore_iteration().unwrap_or(0);
        if number("hold").is_some() {
            // A trial that never ends by itself: only the run loop's stop ends it, so a test
            // does not depend on how fast the threads of other trials run.
            let mut metrics = serde_json::Map::new();
            metrics.insert("loss".into(), x.into());
            let _ = session.report(&metrics);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            return false;
        }
        for epoch in start + 1..=5 {
            if stop.load(Ordering::SeqCst) || fail_at == Some(epoch as f64) {
                return false;
            }
            let mut metrics = serde_json::Map::new();
            metrics.insert("loss".into(), (x / epoch as f64).into());
            match session.report(&metrics) {
                Ok(action) if action.should_exit() => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        true
    }

    fn config(pairs: &[(&str, f64)]) -> Config {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
            .collect()
    }

    fn tuner(configs: Vec<Config>, max_failures: u32) -> Tuner {
        Tuner::new(
            TunerSettings {
                metric: "loss".into(),
                mode: Mode::Min,
                seed: 3,
                max_failures,
                stop: [("training_iteration".to_string(), 3.0)].into(),
            },
            Box::new(FixedSearcher::new(configs)),
            Box::new(FifoScheduler),
        )
    }

    async fn run_fake(
        dir: &Path,
        configs: Vec<Config>,
        max_failures: u32,
        limits: RunLimits,
    ) -> RunOutcome {
        let executor = |events| -> Box<dyn Executor> {
            Box::new(FakeExecutor {
                slots: 2,
                running: HashMap::new(),
                events,
            })
        };
        run_with(dir, configs, max_failures, limits, executor).await
    }

    async fn run_with(
        dir: &Path,
        configs: Vec<Config>,
        max_failures: u32,
        limits: RunLimits,
        executor: impl FnOnce(mpsc::UnboundedSender<ExecutorEvent>) -> Box<dyn Executor>,
    ) -> RunOutcome {
        let (events_tx, executor_events) = mpsc::unbounded_channel();
        let experiment = ExperimentDir::open(dir);
        let (journal, _) = Journal::open(dir).expect("journal");
        let state = ExperimentState {
            format: STATE_FORMAT,
            name: "fake".into(),
            status: "running".into(),
            metric: "loss".into(),
            mode: Mode::Min,
            scheduler: "fifo".into(),
            searcher: "fixed".into(),
            parameters: vec!["x".into()],
            total_trials: Some(configs.len()),
            started_at: unix_now(),
            finished_at: None,
            trials: Vec::new(),
            placements: Default::default(),
            head: None,
        };
        let parts = RunParts {
            tuner: tuner(configs, max_failures),
            executor: executor(events_tx),
            executor_events,
            dir: experiment,
            state,
            template: TrialTemplate {
                command: vec!["fake".into()],
                env: Vec::new(),
                workers: 1,
                resources: Resources::default(),
                workdir: crate::workdir::TrialWorkdir::Shared(dir.to_path_buf()),
                stop_grace: Duration::from_secs(5),
                report_timeout: None,
                checkpoint_roots: Vec::new(),
            },
            reporter: Reporter::new(false, 3600.0),
            bind: "127.0.0.1:0".parse().expect("addr"),
            advertise_host: None,
            secret: "s3cret".into(),
            journal,
            resume: None,
            limits,
        };
        run(parts).await.expect("the run ends")
    }

    /// Runs each trial in virtual time (a paused tokio clock) as a job that first waits
    /// `queue_wait` in a queue, then reports every `epoch` until told to exit; reports go
    /// straight to the run loop (as the simulator's do).
    struct QueuedExecutor {
        queue_wait: Duration,
        epoch: Duration,
        /// Run 0 of every trial is taken away (as a SLURM requeue) after its first report, and
        /// then tries to report once more; the answers to those stale reports go here.
        lose_first_runs: Option<Arc<std::sync::Mutex<Vec<Response>>>>,
        running: HashMap<TrialId, tokio::task::JoinHandle<()>>,
        events: mpsc::UnboundedSender<ExecutorEvent>,
        reports: Option<mpsc::UnboundedSender<ReportEvent>>,
    }

    impl Executor for QueuedExecutor {
        fn name(&self) -> &'static str {
            "queued"
        }
        fn check_capacity(&self, _: u32, _: &Resources) -> Result<CapacityPlan, ExecutorError> {
            Ok(CapacityPlan {
                concurrent_trials: 2,
                explanation: "2 queued slots".into(),
            })
        }
        fn has_room(&self, _: u32, _: &Resources) -> bool {
            self.running.len() < 2
        }
        fn attach_reports(&mut self, reports: mpsc::UnboundedSender<ReportEvent>) {
            self.reports = Some(reports);
        }
        fn start(&mut self, launch: TrialLaunch) -> Result<Placement, ExecutorError> {
            let Some(reports) = self.reports.clone() else {
                return Err(ExecutorError::Invalid("no report channel".into()));
            };
            let events = self.events.clone();
            let (trial, run) = (launch.trial, launch.run);
            let (queue_wait, epoch) = (self.queue_wait, self.epoch);
            let stale = self.lose_first_runs.clone().filter(|_| run == 0);
            let task = tokio::spawn(async move {
                tokio::time::sleep(queue_wait).await;
                let _ = events.send(ExecutorEvent::Placed {
                    trial,
                    run,
                    description: "fake node".into(),
                    running: true,
                    started_at: None,
                });
                for epoch_no in 1..=5u32 {
                    tokio::time::sleep(epoch).await;
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let mut metrics = serde_json::Map::new();
                    metrics.insert("loss".into(), (1.0 / f64::from(epoch_no)).into());
                    let report = ReportEvent {
                        trial,
                        run,
                        metrics,
                        checkpoint: None,
                        reply,
                    };
                    if reports.send(report).is_err() {
                        break;
                    }
                    let response = answer.await;
                    if let Some(stale) = &stale
                        && epoch_no == 1
                    {
                        let message = "job 7 was requeued by SLURM".to_string();
                        let _ = events.send(ExecutorEvent::Lost {
                            trial,
                            run,
                            message,
                        });
                        tokio::time::sleep(epoch).await;
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        let mut metrics = serde_json::Map::new();
                        metrics.insert("loss".into(), 0.0.into());
                        let report = ReportEvent {
                            trial,
                            run,
                            metrics,
                            checkpoint: None,
                            reply,
                        };
                        if reports.send(report).is_ok()
                            && let Ok(response) = answer.await
                        {
                            stale.lock().expect("lock").push(response);
                        }
                        return;
                    }
                    match response {
                        Ok(response) if response.action.is_some_and(|a| !a.should_exit()) => {}
                        _ => break,
                    }
                }
                let _ = events.send(ExecutorEvent::Exited {
                    trial,
                    run,
                    success: true,
                    message: "exit code 0".into(),
                });
            });
            self.running.insert(trial, task);
            Ok(Placement {
                description: "queued".into(),
                queued: true,
            })
        }
        fn stop(&mut self, _: TrialId, _: Duration) {}
        fn release(&mut self, trial: TrialId) {
            self.running.remove(&trial);
        }
        fn shutdown(&mut self, _: Duration) {}
    }

    #[tokio::test(start_paused = true)]
    async fn time_a_job_waits_in_the_queue_is_not_training_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configs: Vec<Config> = (1..=2).map(|x| config(&[("x", f64::from(x))])).collect();
        let executor = |events| -> Box<dyn Executor> {
            Box::new(QueuedExecutor {
                queue_wait: Duration::from_secs(500),
                epoch: Duration::from_secs(3),
                lose_first_runs: None,
                running: HashMap::new(),
                events,
                reports: None,
            })
        };
        let outcome = run_with(
            dir.path(),
            configs.clone(),
            0,
            RunLimits::default(),
            executor,
        )
        .await;
        assert_eq!(outcome.state.status, "finished");
        let again = replayed(dir.path(), configs, 0);
        for trials in [&outcome.state.trials[..], again.trials()] {
            for trial in trials {
                assert_eq!(trial.status, TrialStatus::Terminated);
                let times: Vec<(f64, f64)> = trial
                    .history()
                    .iter()
                    .map(|h| {
                        let get = |k| h.result.get(k).unwrap_or(f64::NAN);
                        (get("time_this_iter_s"), get("time_total_s"))
                    })
                    .collect();
                // Three epochs of 3 s each; the 500 s in the queue count nowhere.
                let expected = [(3.0, 3.0), (3.0, 6.0), (3.0, 9.0)];
                assert_eq!(times.len(), 3, "{times:?}");
                for ((this, total), (want_this, want_total)) in times.iter().zip(expected) {
                    assert!((this - want_this).abs() < 0.01, "{times:?}");
                    assert!((total - want_total).abs() < 0.01, "{times:?}");
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_run_restarts_as_a_new_run_and_its_old_token_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configs = vec![config(&[("x", 1.0)])];
        let stale = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answers = Arc::clone(&stale);
        let executor = move |events| -> Box<dyn Executor> {
            Box::new(QueuedExecutor {
                queue_wait: Duration::from_secs(1),
                epoch: Duration::from_secs(3),
                lose_first_runs: Some(answers),
                running: HashMap::new(),
                events,
                reports: None,
            })
        };
        // max_failures = 0: counted as a failure, the loss would end the trial in ERROR.
        let outcome = run_with(
            dir.path(),
            configs.clone(),
            0,
            RunLimits::default(),
            executor,
        )
        .await;
        let trial = &outcome.state.trials[0];
        assert_eq!(trial.status, TrialStatus::Terminated, "{:?}", trial.error);
        assert_eq!((trial.runs, trial.failures), (2, 0));
        let iterations: Vec<u64> = trial
            .history()
            .iter()
            .map(|h| h.result.iteration())
            .collect();
        assert_eq!(
            iterations,
            [1, 2, 3],
            "the lost run's result is rolled back"
        );
        let answers = stale.lock().expect("lock");
        assert_eq!(answers.len(), 1);
        assert!(
            !answers[0].ok,
            "the old run's report is refused: {:?}",
            answers[0]
        );
        let again = replayed(dir.path(), configs, 0);
        assert_eq!(
            serde_json::to_string(&outcome.state.trials).expect("json"),
            serde_json::to_string(again.trials()).expect("json")
        );
    }

    fn replayed(dir: &Path, configs: Vec<Config>, max_failures: u32) -> Tuner {
        let mut t = tuner(configs, max_failures);
        let (journal, inputs) = Journal::open(dir).expect("journal");
        crate::journal::replay(&mut t, &inputs, journal.path()).expect("replay");
        t
    }

    #[tokio::test(flavor = "current_thread")]
    async fn trials_run_to_the_stop_criterion_and_the_journal_rebuilds_the_core() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configs: Vec<Config> = (1..=3).map(|x| config(&[("x", f64::from(x))])).collect();
        let outcome = run_fake(dir.path(), configs.clone(), 0, RunLimits::default()).await;
        assert!(!outcome.interrupted);
        assert_eq!(outcome.state.status, "finished");
        assert!(
            outcome
                .state
                .trials
                .iter()
                .all(|t| t.status == TrialStatus::Terminated && t.iteration == 3)
        );
        let live = serde_json::to_string(&outcome.state.trials).expect("json");
        let again = replayed(dir.path(), configs, 0);
        assert_eq!(live, serde_json::to_string(again.trials()).expect("json"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn max_total_results_stops_every_trial_once_the_budget_is_spent() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Three trials of 3 results each, 2 at a time: 9 results without the budget.
        let configs: Vec<Config> = (1..=3).map(|x| config(&[("x", f64::from(x))])).collect();
        let limits = RunLimits {
            max_total_results: Some(4),
            ..RunLimits::default()
        };
        let outcome = run_fake(dir.path(), configs.clone(), 0, limits).await;
        assert_eq!(outcome.state.status, "finished");
        let trials = &outcome.state.trials;
        let results: u64 = trials.iter().map(|t| t.iteration).sum();
        // The other running trial's report may already be on its way when the 4th is taken.
        assert!((4..=5).contains(&results), "{results} results");
        assert!(
            trials.iter().all(|t| t.status.is_finished()),
            "every trial was stopped: {trials:?}"
        );
        assert!(
            trials.iter().skip(2).all(|t| t.iteration == 0),
            "the third trial never trained (the first two spent the budget)"
        );
        let again = replayed(dir.path(), configs, 0);
        assert_eq!(again.results_received(), results);
        assert!(again.is_finished());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn failures_are_retried_and_fail_fast_stops_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let failing = config(&[("x", 1.0), ("fail_at", 2.0)]);
        // Retries go before new trials, so trials 2 and 3 start only once trial 0 or 1 has
        // failed for good; they hold until stopped, so whether one has started when fail_fast
        // fires is up to the threads, but none can end in ERROR unless fail_fast misses it.
        let holding = config(&[("x", 1.0), ("hold", 1.0)]);
        let configs = vec![failing.clone(), failing, holding.clone(), holding];
        let limits = RunLimits {
            fail_fast: Some(2),
            ..RunLimits::default()
        };
        let outcome = run_fake(dir.path(), configs.clone(), 1, limits).await;
        let message = outcome.failed_fast.expect("fail_fast stopped it");
        assert!(
            message.contains("the first 2 trials all ended in ERROR"),
            "{message}"
        );
        let trials = &outcome.state.trials;
        assert_eq!(trials[0].status, TrialStatus::Error);
        assert_eq!(trials[0].runs, 2, "one retry (max_failures = 1)");
        assert!(
            trials
                .iter()
                .skip(2)
                .all(|t| t.status != TrialStatus::Error),
            "later trials were stopped, not run to their failure"
        );
        let again = replayed(dir.path(), configs, 1);
        assert_eq!(
            serde_json::to_string(trials).expect("json"),
            serde_json::to_string(again.trials()).expect("json")
        );
    }
}

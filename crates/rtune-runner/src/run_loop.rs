//! The run loop: one task that owns the experiment's state and reacts to events.
//!
//! Everything that changes state happens here, in order: the protocol server only forwards
//! reports, executors only forward process exits and placements, timers only send ticks. The
//! loop feeds each input to the pure [`Tuner`], appends it with the outcome the core recorded to
//! the journal ([`crate::journal`]), then carries out the effects it asks for (files, processes,
//! console), and answers the report. Because of that single owner there are no locks, and the
//! files on disk always describe a state the tuner was really in; because the journal line is
//! written before any effect, a new head can rebuild that state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtune_core::tuner::Effect;
use rtune_core::tuner::{
    EndReason, ErroredTrials, Exit, Input, InterruptReason, Launch, Output, Tuner,
};
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
use crate::state::{ExperimentState, HEARTBEAT_S, HeadInfo, Projection, RunStatus, StateMeta};
use crate::storage::ExperimentDir;

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
    /// can be resumed once there is space. (Or this head lost its claim: then it says so.)
    #[error("{error}{hint}", error = .0, hint = resume_hint(.0))]
    Journal(#[from] JournalError),
    #[error(
        "no trial can run: {pending} trial(s) are waiting but the scheduler picks none and nothing is running\nhint: this is a scheduler bug; the state so far is in {dir}"
    )]
    Stuck { pending: usize, dir: PathBuf },
    /// rtune could not write what a trial needs to start (its directory, params.json, the copy
    /// of a donor's checkpoint): rtune's failure, not the trial's, so it is not counted against
    /// the trial; the experiment stops like for a journal write failure.
    #[error(
        "{message}\nthe trials were stopped; {} is not counted as failed and `rtune resume` continues the experiment once this is fixed",
        trial.name()
    )]
    TrialFiles { trial: TrialId, message: String },
}

/// Why a trial's run could not start.
enum StartError {
    /// rtune's own files (a full disk, a missing donor checkpoint): not the trial's fault.
    Rtune(String),
    /// The trial's program could not be started (a missing program, a bad working directory):
    /// its failure, retried like any other.
    Trial(String),
}

/// What a user can do after a journal error: resume, unless another head has taken over.
fn resume_hint(error: &JournalError) -> &'static str {
    match error {
        JournalError::Fenced(_) => "",
        _ => {
            "\nthe trials were stopped; everything up to this point is kept and `rtune resume` \
             continues the experiment"
        }
    }
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
    /// Directories outside the trial's scratch directory from which it may hand over checkpoints
    /// (`trial.checkpoint_roots`).
    pub checkpoint_roots: Vec<PathBuf>,
}

/// Everything the loop needs, assembled by [`crate::setup`].
pub struct RunParts {
    pub tuner: Tuner,
    /// Builds a fresh core from the experiment file (no inputs applied): a snapshot is checked
    /// by restoring it into one before the journal relies on it.
    pub fresh_tuner: Box<dyn Fn() -> Option<Tuner>>,
    pub executor: Box<dyn Executor>,
    pub executor_events: mpsc::UnboundedReceiver<ExecutorEvent>,
    pub dir: ExperimentDir,
    pub meta: StateMeta,
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
}

/// What a finished run leaves for the CLI to print or return.
pub struct RunOutcome {
    pub dir: PathBuf,
    /// The final state with the trials worth showing ([`crate::report::final_rows`]); its
    /// counts cover every trial. `experiment_state.json` has them all.
    pub state: ExperimentState,
    pub interrupted: bool,
    /// The interrupt was SIGUSR1, SLURM's warning that the head job's time limit is near
    /// (`rtune submit` asks for it): the head may submit its successor.
    pub time_limit: bool,
    /// Why the experiment ended early for good, if it did (fail-fast, a budget, a wrong metric).
    pub ended: Option<EndReason>,
}

/// The final table's rows: the best trials (all of them in a smaller experiment).
pub const FINAL_TABLE_ROWS: usize = 50;
/// Trials in ERROR listed at the end, with their error files, besides the table's rows.
pub const FINAL_ERRORS_LISTED: usize = 20;

/// The least real time between two snapshots (`experiment_state.json`) while trials run. The
/// ticker runs on tokio's clock, which the simulated executor runs in virtual time: there a
/// tick comes every virtual second, thousands of times per real second, and rewriting the whole
/// snapshot on each made an lcbench run of 3,121 trials take 398 s instead of 11 s. The
/// snapshot only serves `rtune status` and readers of the directory (the journal is what a
/// resume reads), so once per real second is enough; a real run ticks once a second anyway.
const SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_millis(900);

/// Seconds since the Unix epoch: the only clock the core ever sees. It follows tokio's clock,
/// so under the simulator (a paused runtime) it is virtual time (see [`crate::clock`]).
pub fn unix_now() -> f64 {
    crate::clock::unix_now()
}

pub async fn run(parts: RunParts) -> Result<RunOutcome, RunError> {
    let RunParts {
        mut tuner,
        fresh_tuner,
        mut executor,
        mut executor_events,
        dir,
        meta,
        template,
        mut reporter,
        bind,
        advertise_host,
        secret,
        journal,
        resume,
    } = parts;

    let (report_tx, mut reports) = mpsc::unbounded_channel::<ReportEvent>();
    executor.attach_reports(report_tx.clone());
    let local = ProtocolServer::start(bind, secret.clone(), report_tx).await?;
    let addr = match &advertise_host {
        Some(host) => format!("{host}:{}", local.port()),
        None => local.to_string(),
    };
    tracing::debug!(%addr, "protocol server listening");

    let head = HeadInfo {
        pid: std::process::id(),
        host: crate::setup::this_host_name().unwrap_or_else(|_| "unknown".into()),
        heartbeat: unix_now(),
    };
    let mut lp = Loop {
        tuner: &mut tuner,
        fresh_tuner,
        executor: executor.as_mut(),
        dir: &dir,
        meta,
        head,
        template: &template,
        reporter: &mut reporter,
        addr,
        secret,
        running: HashMap::new(),
        end_deadlines: std::collections::BinaryHeap::new(),
        dirty: true,
        journal,
        maybe_more: true,
        fatal: None,
        last_write_real: None,
        warned_silent: Vec::new(),
    };

    match resume {
        Some(errored) => {
            // (A journal that cannot be written shows as `fatal`, handled at the loop's top.)
            lp.feed(Input::Resume {
                now: unix_now(),
                errored,
            });
            lp.apply_effects();
        }
        None if lp.tuner.started_at().is_none() => {
            lp.feed(Input::Begin { now: unix_now() });
        }
        None => {}
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
        lp.still_head();
        if !interrupted && lp.fatal.is_none() {
            lp.fill_slots();
        }
        if matches!(&lp.fatal, Some(RunError::Journal(JournalError::Fenced(_))))
            && let Some(lost) = lp.fatal.take()
        {
            // Another head holds the experiment now: end this head's trial processes and leave
            // without writing anything.
            lp.executor.shutdown(lp.template.stop_grace);
            return Err(lost);
        }
        if lp.fatal.is_some() {
            // The journal cannot be written: nothing may take effect any more. Stop every trial
            // and leave; the journal so far is consistent and a resume continues from it. What
            // happens from here reaches the core (for the snapshot) but not the journal.
            if let Some(error) = &lp.fatal {
                lp.reporter.on_event(&format!("ERROR {error}"));
            }
            if !interrupted {
                lp.tuner.interrupt(&InterruptReason::WriteFailure);
                lp.apply_effects();
            }
            lp.executor.shutdown(lp.template.stop_grace);
            while let Ok(event) = executor_events.try_recv() {
                lp.on_executor_event(event);
            }
            if let Err(e) = lp.write_state(RunStatus::Interrupted, Some(unix_now())) {
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
                lp.write_state(RunStatus::Interrupted, Some(unix_now()))?;
                return Err(RunError::Stuck {
                    pending: waiting,
                    dir: lp.dir.path().to_path_buf(),
                });
            }
        }
        tokio::select! {
            // `still_head`: nothing is handled (or written) once another head took over.
            Some(report) = reports.recv() => if lp.still_head() { lp.on_report(report) },
            Some(event) = executor_events.recv() => if lp.still_head() { lp.on_executor_event(event) },
            () = next_deadline(&lp.end_deadlines) => if lp.still_head() { lp.on_end_deadline() },
            _ = ticker.tick() => if lp.still_head() { lp.on_tick() },
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                lp.interrupt(InterruptReason::CtrlC);
            }
            Some(()) = next_signal(&mut sigterm), if !interrupted => {
                interrupted = true;
                lp.interrupt(InterruptReason::Sigterm);
            }
            Some(()) = next_signal(&mut sighup), if !interrupted => {
                interrupted = true;
                lp.interrupt(InterruptReason::Sighup);
            }
            Some(()) = next_signal(&mut sigusr1), if !interrupted => {
                interrupted = true;
                time_limit = true;
                lp.interrupt(InterruptReason::TimeLimit);
            }
        }
    }
    lp.executor.shutdown(lp.template.stop_grace);
    let status = if interrupted {
        RunStatus::Interrupted
    } else {
        RunStatus::Finished
    };
    // A head that ends cleanly leaves a journal that is one snapshot: the next head (a resume,
    // possibly of a later release) reads nothing else.
    lp.compact();
    // The outcome holds the trials the final table and the error list show, not all of them:
    // a copy of 10,000 trials (and their table text) was the head's peak memory.
    let shown = crate::report::final_rows(lp.tuner, FINAL_TABLE_ROWS, FINAL_ERRORS_LISTED);
    let state = lp
        .write_state(status, Some(unix_now()))?
        .state(|t| shown.contains(&t.id));
    let ended = lp.tuner.ended().cloned();
    reporter.finish(&state, dir.path());
    Ok(RunOutcome {
        dir: dir.path().to_path_buf(),
        state,
        interrupted,
        time_limit,
        ended,
    })
}

/// Runs told to stop or pause, by when they must have exited, earliest first.
type EndDeadlines = std::collections::BinaryHeap<std::cmp::Reverse<(Instant, TrialId, u32)>>;

/// When the earliest end deadline is due (never while there is none).
async fn next_deadline(deadlines: &EndDeadlines) {
    match deadlines.peek() {
        Some(std::cmp::Reverse((at, _, _))) => tokio::time::sleep_until(*at).await,
        None => std::future::pending().await,
    }
}

/// The next delivery of a signal, or never when it could not be installed.
async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal.as_mut() {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// What the loop knows of a running trial's current run beyond the core: the run number its
/// reports and exit must carry.
struct RunningTrial {
    run: u32,
}

struct Loop<'a> {
    tuner: &'a mut Tuner,
    fresh_tuner: Box<dyn Fn() -> Option<Tuner>>,
    executor: &'a mut dyn Executor,
    dir: &'a ExperimentDir,
    meta: StateMeta,
    head: HeadInfo,
    template: &'a TrialTemplate,
    reporter: &'a mut Reporter,
    /// `host:port` trials connect to.
    addr: String,
    secret: String,
    running: HashMap<TrialId, RunningTrial>,
    /// Runs told to stop or pause, by when they must have exited (earliest first): one queue
    /// and one timer in the loop's `select!`, not a task per run.
    end_deadlines: EndDeadlines,
    /// Whether the state on disk is behind the tuner's.
    dirty: bool,
    journal: Journal,
    /// Whether the tuner may have something new to start: false after it answered "nothing"
    /// until the next input, so idle ticks do not fill the journal.
    maybe_more: bool,
    /// A journal write failed: the loop stops everything and returns this.
    fatal: Option<RunError>,
    /// When the snapshot was last written, on the machine's real clock (for the heartbeat and
    /// [`SNAPSHOT_MIN_INTERVAL`]).
    last_write_real: Option<std::time::Instant>,
    /// Trials the console already warned about for being silent (cleared once they report).
    warned_silent: Vec<TrialId>,
}

impl Loop<'_> {
    /// Whether this head still holds its claim on the experiment ([`crate::claim`]). Once it
    /// does not, the loop ends at its top without writing anything more.
    fn still_head(&mut self) -> bool {
        if self.fatal.is_none()
            && let Err(e) = self.journal.check_claim()
        {
            self.fatal = Some(RunError::Journal(e));
        }
        !matches!(
            &self.fatal,
            Some(RunError::Journal(JournalError::Fenced(_)))
        )
    }

    /// Feed `input` to the core, then append it with the outcome the core recorded to the
    /// journal, before any effect is carried out: nothing takes effect that a replay would not
    /// redo. A `next` that changed nothing is not written. Once the journal cannot be written
    /// the loop is ending: inputs still reach the core (for the final snapshot) but are not
    /// journaled, and a resume treats those runs as lost.
    fn feed(&mut self, input: Input) -> Option<Output> {
        let input = Journal::round_trip(&input);
        self.maybe_more = true;
        let (output, outcome) = match self.tuner.apply(&input) {
            Ok(applied) => applied,
            Err(e) => {
                // The loop checks runs before it feeds them; a refusal here is a bug, and a
                // replay refuses the same input the same way.
                tracing::error!("{e}");
                return None;
            }
        };
        let idle_next = matches!(input, Input::Next { .. }) && outcome.is_empty();
        if self.fatal.is_none()
            && !idle_next
            && let Err(e) = self.journal.append(&input, &outcome)
        {
            self.fatal = Some(RunError::Journal(e));
        }
        Some(output)
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
            match self.start(launch) {
                Ok(placement) => {
                    self.running.insert(trial, RunningTrial { run });
                    self.record_placement(trial, run, placement, unix_now());
                }
                Err(StartError::Trial(message)) => {
                    // The trial's program could not even start: that is its failure, retried
                    // like any other.
                    self.write_error(trial, &message);
                    self.feed(Input::Exit {
                        now: unix_now(),
                        trial,
                        run,
                        exit: Exit::Failure(message),
                    });
                    self.apply_effects();
                }
                Err(StartError::Rtune(message)) => {
                    // rtune's own files failed (a full disk): the run is lost through no fault
                    // of the trial, and the experiment stops until this is fixed.
                    self.feed(Input::Exit {
                        now: unix_now(),
                        trial,
                        run,
                        exit: Exit::Lost(format!("rtune could not prepare its run: {message}")),
                    });
                    self.apply_effects();
                    if self.fatal.is_none() {
                        self.fatal = Some(RunError::TrialFiles { trial, message });
                    }
                    break;
                }
            }
            self.dirty = true;
        }
    }

    fn start(&mut self, launch: Launch) -> Result<Placement, StartError> {
        let trial = launch.trial;
        let files = self
            .dir
            .trial(trial)
            .map_err(|e| StartError::Rtune(format!("cannot prepare the trial's directory: {e}")))?;
        files
            .write_params(&launch.config)
            .map_err(|e| StartError::Rtune(e.to_string()))?;
        // policy.json only once PBT changed the trial's config: until then params.json says it
        // all, and a file less per trial is a tenth of a trial's start (docs/benchmarks.md).
        if let Some(policy) = self.tuner.trial(trial).map(|t| &t.policy)
            && !policy.is_empty()
        {
            files
                .write_policy(policy)
                .map_err(|e| StartError::Rtune(e.to_string()))?;
        }
        let restore_dir = match launch.restore {
            None => None,
            Some(c) if c.trial == trial => Some(files.checkpoint_dir(c.iteration)),
            Some(c) => {
                // An exploit: the copy of the donor's checkpoint made when the exploit was
                // decided (see `copy_donor_checkpoint`).
                let target = files.exploit_dir(c);
                if !target.is_dir() {
                    self.copy_donor_checkpoint(trial, c)
                        .map_err(StartError::Rtune)?;
                }
                Some(target)
            }
        };
        let config_json = serde_json::to_string(&launch.config)
            .map_err(|e| StartError::Rtune(format!("config: {e}")))?;
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
        self.executor
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
            .map_err(|e| match e {
                // Its log files could not be opened: rtune's files, not the trial's doing.
                crate::executor::ExecutorError::Io { .. } => StartError::Rtune(e.to_string()),
                other => StartError::Trial(other.to_string()),
            })
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
        match self.running.get(&trial) {
            Some(r) if r.run == report.run => {}
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
        if current.run_started_at.is_none() {
            // It reported before the executor saw its job start (between two polls): its time
            // counts from this report on.
            self.mark_started(trial, report.run);
        }
        if let Err(refusal) = self.tuner.check_report(trial, &report.metrics) {
            let message = refusal.to_string();
            if refusal.ends_experiment() {
                // The user's mistake (a wrong metric name): every trial would repeat it.
                self.reporter.on_event(&format!("ERROR {message}"));
                self.feed(Input::StopAll {
                    now: unix_now(),
                    reason: EndReason::BadReport { refusal },
                });
                self.apply_effects();
                self.dirty = true;
                return Response::error(message);
            }
            return self.refuse(trial, message);
        }
        let Some(current) = self.tuner.trial(trial) else {
            return Response::error(format!("no trial {}", trial.name()));
        };
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
        self.warned_silent.retain(|&t| t != trial);
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
        if let Err(e) = self
            .dir
            .append_result(&reply.result, &config, reply.done, report.run)
        {
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
        Response::action(action, reason)
    }

    /// A report refused by the core's rules or the checkpoint checks: logged, answered with the
    /// error, never recorded.
    fn refuse(&mut self, trial: TrialId, message: String) -> Response {
        self.warn(trial, &format!("report refused: {message}"));
        Response::error(message)
    }

    /// A run told to stop or pause has had its grace period: if it still runs, end it.
    fn on_end_deadline(&mut self) {
        let now = Instant::now();
        while let Some(std::cmp::Reverse((at, trial, run))) = self.end_deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.end_deadlines.pop();
            if self.running.get(&trial).is_some_and(|r| r.run == run) {
                tracing::debug!("{} did not exit after its grace period", trial.name());
                self.executor.stop(trial, self.template.stop_grace);
            }
        }
    }

    /// A trial told to stop or pause gets `stop_grace` to exit by itself; after that its run is
    /// ended, so a trial that ignores the answer cannot hold its slot.
    fn schedule_end(&mut self, trial: TrialId, run: u32) {
        let at = Instant::now() + self.template.stop_grace;
        self.end_deadlines.push(std::cmp::Reverse((at, trial, run)));
    }

    /// About once a second: what is due on the clock (the time budget, report timeouts), the
    /// silent-trial warnings, the snapshot and the heartbeat, the journal's flush and
    /// compaction, and the console.
    fn on_tick(&mut self) {
        let now = unix_now();
        for input in self.tuner.due(now) {
            if let Input::Timeout { trial, .. } = &input {
                let timeout = self.tuner.settings().limits.report_timeout_s.unwrap_or(0.0);
                self.warn(
                    *trial,
                    &format!(
                        "{}: no report for {timeout} s (trial.report_timeout_s): the run is ended",
                        trial.name()
                    ),
                );
            }
            self.feed(input);
            self.apply_effects();
            self.dirty = true;
        }
        for trial in self.tuner.silent_trials(now) {
            if self.warned_silent.contains(&trial) {
                continue;
            }
            self.warned_silent.push(trial);
            let since = self
                .tuner
                .trial(trial)
                .and_then(|t| t.last_report_at)
                .map_or(0.0, |at| now - at);
            self.warn(
                trial,
                &format!(
                    "{} has reported nothing for {:.0} s, much longer than the other trials take \
                     between reports; it may hang (trial.report_timeout_s ends such runs)",
                    trial.name(),
                    since
                ),
            );
            self.dirty = true;
        }
        // Both on the real clock (see SNAPSHOT_MIN_INTERVAL): the heartbeat says the head
        // process is alive, which is a fact of real time even in a simulation.
        let since = self.last_write_real.map(|at| at.elapsed());
        let snapshot_due = self.dirty && since.is_none_or(|s| s >= SNAPSHOT_MIN_INTERVAL);
        let heartbeat_due = since.is_none_or(|s| s.as_secs_f64() >= HEARTBEAT_S);
        if snapshot_due || heartbeat_due {
            let wants_table = self.reporter.wants_table();
            let rows = self.reporter.rows();
            let shown = match self.write_state(RunStatus::Running, None) {
                // Only the rows the console shows (counts and best are over all).
                Ok(projection) => Ok(wants_table.then(|| {
                    let shown = crate::report::live_rows(projection.tuner, rows);
                    projection.state(|t| shown.contains(&t.id))
                })),
                Err(e) => Err(e),
            };
            release_free_memory();
            match shown {
                Ok(Some(state)) => self.reporter.tick(now, &state),
                Ok(None) => {}
                Err(e) if self.fatal.is_none() => {
                    // A full disk: stop the trials like for the journal (never leave them
                    // running behind an exited head).
                    self.fatal = Some(e);
                }
                Err(_) => {}
            }
        }
        self.journal.sync_in_background();
        if self.journal.compaction_due() {
            self.compact();
        }
    }

    /// Rewrite the journal as one snapshot of the core, once the snapshot is known to restore
    /// to the very same state (else the journal keeps growing, and a warning says why). The
    /// snapshot is written straight from the core's state and checked by digest, so a large
    /// experiment's compaction holds no copy of it but the one restored for the check.
    fn compact(&mut self) {
        if self.fatal.is_some() || self.journal.lines_since_snapshot() == 0 {
            return;
        }
        // No spare capacity kept while the check below reads the snapshot back.
        self.tuner.shrink_to_fit();
        let tuner: &Tuner = self.tuner;
        let fresh_tuner = &self.fresh_tuner;
        let compacted = self.journal.compact(
            |out| tuner.write_snapshot(out),
            |snapshot: rtune_core::tuner::SnapshotCheck| {
                fresh_tuner().is_some_and(|fresh| tuner.matches_snapshot(fresh, snapshot))
            },
        );
        release_free_memory();
        match compacted {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "the core's snapshot does not restore to the same state, so the journal is not \
                 compacted (a resume replays it whole)"
            ),
            Err(e) => self.fatal = Some(RunError::Journal(e)),
        }
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
                placement,
                running,
                started_at,
            } => {
                // A queued SLURM job started (or still waits, for a new reason).
                if self.running.get(&trial).is_some_and(|r| r.run == run) {
                    let at = if running {
                        self.start_time(trial, started_at)
                    } else {
                        unix_now()
                    };
                    self.record_placement(trial, run, placement, at);
                    self.dirty = true;
                }
                return;
            }
        };
        self.executor.release(trial);
        match self.running.get(&trial) {
            Some(r) if r.run == run => {}
            _ => return,
        }
        self.running.remove(&trial);
        self.dir.close_trial(trial);
        let exit = if success {
            Exit::Success
        } else {
            Exit::Failure(self.failure_message(trial, &message))
        };
        let failures = self.tuner.trial(trial).map_or(0, |t| t.failures);
        let status = self.tuner.trial(trial).map(|t| t.status);
        self.feed(Input::Exit {
            now: unix_now(),
            trial,
            run,
            exit,
        });
        // The core says whether the exit was the trial's failure (a stop it was told, or an
        // interrupt, is not): error.txt gets every failure's message.
        if let Some(t) = self.tuner.trial(trial)
            && (t.failures > failures
                || (t.status == TrialStatus::Error && status != Some(t.status)))
            && let Some(error) = t.error.clone()
        {
            self.write_error(trial, &error);
        }
        self.apply_effects();
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
        self.running.remove(&trial);
        self.dir.close_trial(trial);
        self.reporter.on_event(&format!(
            "{}: its run {run} was lost: {message}",
            trial.name()
        ));
        self.feed(Input::Exit {
            now: unix_now(),
            trial,
            run,
            exit: Exit::Lost(message),
        });
        self.apply_effects();
        self.dirty = true;
    }

    /// When a run that waited in the queue started: `started_at` when the executor knows it
    /// and it lies between the run's start by the core and now, else now. Its time and its
    /// `report_timeout_s` count from there.
    fn start_time(&self, trial: TrialId, started_at: Option<f64>) -> f64 {
        let now = unix_now();
        let submitted = self
            .tuner
            .trial(trial)
            .and_then(|t| t.last_report_at)
            .unwrap_or(now);
        started_at
            .filter(|at| at.is_finite() && *at >= submitted && *at <= now)
            .unwrap_or(now)
    }

    /// A run reported before the executor saw its queued job start (between two polls): it
    /// runs, and its time counts from now.
    fn mark_started(&mut self, trial: TrialId, run: u32) {
        let Some(mut placement) = self
            .tuner
            .trial(trial)
            .and_then(|t| t.placement.as_deref().cloned())
        else {
            return;
        };
        placement.queued = false;
        self.record_placement(trial, run, placement, unix_now());
    }

    /// Ctrl-C, SIGTERM, SIGHUP: journal the interrupt, end every running trial.
    fn interrupt(&mut self, reason: InterruptReason) {
        self.reporter
            .on_event(&format!("{reason}: stopping every trial"));
        self.feed(Input::Interrupt {
            now: unix_now(),
            reason,
        });
        self.apply_effects();
        self.executor.shutdown(self.template.stop_grace);
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
    /// core keeps the latest (a journaled input), events.jsonl every one, so a timeline can
    /// show each run.
    fn record_placement(&mut self, trial: TrialId, run: u32, placement: Placement, at: f64) {
        if let Err(e) = self.dir.append_event(&json!({
            "time": at, "trial": trial.to_string(), "event": "placement",
            "run": run, "placement": placement,
        })) {
            tracing::error!("cannot write the events log: {e}");
        }
        let running = !placement.queued;
        self.feed(Input::Placed {
            now: at,
            trial,
            run,
            placement,
            running,
        });
        self.apply_effects();
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
        if !self.still_head() {
            return; // the effects of a head that lost its claim are not carried out
        }
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
                Effect::Truncated {
                    trial,
                    through_iteration,
                    reason,
                } => {
                    if let Err(e) = self
                        .dir
                        .truncate_results(trial, through_iteration, reason, now)
                    {
                        tracing::error!("{}: cannot set its results apart: {e}", trial.name());
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
                    if status == TrialStatus::Terminated
                        && let Err(e) = self.dir.mark_last_done(trial)
                    {
                        tracing::error!("{}: cannot mark its final result: {e}", trial.name());
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
                Effect::Ended(reason) => {
                    self.reporter
                        .on_event(&format!("{reason}: stopping every trial"));
                }
            }
        }
        // The projection (`experiment_state.json`) is brought up to date when the state is
        // written (`write_state`), not here: copying every trial after every event made the loop
        // quadratic in the number of trials.
    }

    /// policy.json: the trial's config by iteration, as the core keeps it.
    fn write_policy(&self, trial: TrialId) {
        let Some(policy) = self.tuner.trial(trial).map(|t| t.policy_steps()) else {
            return;
        };
        if let Ok(files) = self.dir.trial(trial)
            && let Err(e) = files.write_policy(&policy)
        {
            tracing::error!("{}: cannot write policy.json: {e}", trial.name());
        }
    }

    /// Write `experiment_state.json`, the projection of the core's state (straight from the
    /// core into the file: a large experiment's state is not copied), and return the projection
    /// for the caller to take what it shows from.
    fn write_state(
        &mut self,
        status: RunStatus,
        finished_at: Option<f64>,
    ) -> Result<Projection<'_>, RunError> {
        self.journal.check_claim()?; // a head that lost its claim writes nothing
        let now = unix_now();
        self.head.heartbeat = now;
        self.last_write_real = Some(std::time::Instant::now());
        self.dirty = false;
        let projection = Projection {
            meta: &self.meta,
            tuner: self.tuner,
            status,
            now,
            head: Some(self.head.clone()),
            finished_at,
        };
        self.dir.write_state_with(|out| projection.write(out))?;
        Ok(projection)
    }
}

/// Hand the memory freed by a large, short-lived allocation (a compaction's check, a state
/// write) back to the system: glibc's allocator keeps it otherwise, and the head's resident size
/// would stay at its peak.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the system; it touches no live data.
    unsafe {
        libc::malloc_trim(0);
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
    use rtune_core::tuner::{Limits, TunerSettings};
    use rtune_core::{Config, ExecutorKind, Mode};
    use serde_json::Value;

    use super::*;
    use crate::executor::{CapacityPlan, ExecutorError, Placement};

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
            Ok(Placement::nowhere(ExecutorKind::Local, "fake"))
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

    fn tuner(configs: Vec<Config>, max_failures: u32, limits: Limits) -> Tuner {
        Tuner::new(
            TunerSettings {
                metric: "loss".into(),
                mode: Mode::Min,
                seed: 3,
                max_failures,
                stop: [("training_iteration".to_string(), 3.0)].into(),
                limits,
                ..TunerSettings::default()
            },
            Box::new(FixedSearcher::new(configs)),
            Box::new(FifoScheduler),
        )
    }

    async fn run_fake(
        dir: &Path,
        configs: Vec<Config>,
        max_failures: u32,
        limits: Limits,
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
        limits: Limits,
        executor: impl FnOnce(mpsc::UnboundedSender<ExecutorEvent>) -> Box<dyn Executor>,
    ) -> RunOutcome {
        let (events_tx, executor_events) = mpsc::unbounded_channel();
        let experiment = ExperimentDir::open(dir);
        let (journal, _) = Journal::open(dir).expect("journal");
        let meta = StateMeta {
            name: "fake".into(),
            metric: "loss".into(),
            mode: Mode::Min,
            parameters: vec!["x".into()],
        };
        let fresh = (configs.clone(), max_failures, limits.clone());
        let parts = RunParts {
            tuner: tuner(configs, max_failures, limits),
            fresh_tuner: Box::new(move || Some(tuner(fresh.0.clone(), fresh.1, fresh.2.clone()))),
            executor: executor(events_tx),
            executor_events,
            dir: experiment,
            meta,
            template: TrialTemplate {
                command: vec!["fake".into()],
                env: Vec::new(),
                workers: 1,
                resources: Resources::default(),
                workdir: crate::workdir::TrialWorkdir::Shared(dir.to_path_buf()),
                stop_grace: Duration::from_secs(5),
                checkpoint_roots: Vec::new(),
            },
            reporter: Reporter::new(false, 3600.0),
            bind: "127.0.0.1:0".parse().expect("addr"),
            advertise_host: None,
            secret: "s3cret".into(),
            journal,
            resume: None,
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
                    placement: Placement::nowhere(ExecutorKind::SlurmJob, "fake node"),
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
            let mut placement = Placement::nowhere(ExecutorKind::SlurmJob, "queued");
            placement.queued = true;
            Ok(placement)
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
        let outcome = run_with(dir.path(), configs.clone(), 0, Limits::default(), executor).await;
        assert_eq!(outcome.state.status, RunStatus::Finished);
        let again = replayed(dir.path(), configs, 0);
        for trial in again.trials() {
            assert_eq!(trial.status, TrialStatus::Terminated);
        }
        for trial in &outcome.state.trials {
            assert_eq!(trial.status, TrialStatus::Terminated);
            {
                let times: Vec<(f64, f64)> = results(dir.path(), trial.id)
                    .iter()
                    .map(|line| {
                        let get = |k| line.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
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
        let outcome = run_with(dir.path(), configs.clone(), 0, Limits::default(), executor).await;
        let trial = &outcome.state.trials[0];
        assert_eq!(trial.status, TrialStatus::Terminated, "{:?}", trial.error);
        assert_eq!((trial.runs, trial.failures), (2, 0));
        let iterations: Vec<u64> = results(dir.path(), trial.id)
            .iter()
            .filter_map(|line| line.get("training_iteration").and_then(Value::as_u64))
            .collect();
        assert_eq!(iterations, [1, 2, 3], "the lost run's result is set apart");
        let superseded = std::fs::read_to_string(dir.path().join("trial_00000/superseded.json"))
            .expect("superseded.json");
        assert_eq!(superseded.lines().count(), 1, "{superseded}");
        let answers = stale.lock().expect("lock");
        assert_eq!(answers.len(), 1);
        assert!(
            !answers[0].ok,
            "the old run's report is refused: {:?}",
            answers[0]
        );
        let again = replayed(dir.path(), configs, 0);
        assert_eq!(outcome.state.trials, projected(&again));
        // The state file, written straight from the core, reads back as the same projection.
        let file = std::fs::read_to_string(dir.path().join("experiment_state.json"))
            .expect("experiment_state.json");
        let file: crate::state::ExperimentState = serde_json::from_str(&file).expect("state");
        assert_eq!(file.trials, projected(&again));
    }

    /// The trials of a tuner as experiment_state.json shows them.
    fn projected(tuner: &Tuner) -> Vec<crate::state::TrialRecord> {
        tuner
            .trials()
            .iter()
            .map(|t| crate::state::TrialRecord::from_trial(t, false))
            .collect()
    }

    /// A trial's result.json lines.
    fn results(dir: &Path, trial: TrialId) -> Vec<serde_json::Map<String, Value>> {
        std::fs::read_to_string(dir.join(trial.name()).join("result.json"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn replayed(dir: &Path, configs: Vec<Config>, max_failures: u32) -> Tuner {
        replayed_with(dir, configs, max_failures, Limits::default())
    }

    fn replayed_with(dir: &Path, configs: Vec<Config>, max_failures: u32, limits: Limits) -> Tuner {
        let mut t = tuner(configs, max_failures, limits);
        let (journal, contents) = Journal::open(dir).expect("journal");
        crate::journal::replay(&mut t, &contents, journal.path()).expect("replay");
        assert_eq!(
            t.replay_divergences(),
            0,
            "the same code replays its own journal"
        );
        t
    }

    #[tokio::test(flavor = "current_thread")]
    async fn trials_run_to_the_stop_criterion_and_the_journal_rebuilds_the_core() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configs: Vec<Config> = (1..=3).map(|x| config(&[("x", f64::from(x))])).collect();
        let outcome = run_fake(dir.path(), configs.clone(), 0, Limits::default()).await;
        assert!(!outcome.interrupted);
        assert_eq!(outcome.state.status, RunStatus::Finished);
        assert!(
            outcome
                .state
                .trials
                .iter()
                .all(|t| t.status == TrialStatus::Terminated && t.iteration == 3)
        );
        let again = replayed(dir.path(), configs, 0);
        assert_eq!(outcome.state.trials, projected(&again));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn max_total_results_stops_every_trial_once_the_budget_is_spent() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Three trials of 3 results each, one at a time (so the order of reports is fixed): 9
        // results without the budget; with it, trial 0's three and trial 1's first.
        let configs: Vec<Config> = (1..=3).map(|x| config(&[("x", f64::from(x))])).collect();
        let limits = Limits {
            max_total_results: Some(4),
            ..Limits::default()
        };
        let executor = |events| -> Box<dyn Executor> {
            Box::new(FakeExecutor {
                slots: 1,
                running: HashMap::new(),
                events,
            })
        };
        let outcome = run_with(dir.path(), configs.clone(), 0, limits.clone(), executor).await;
        assert_eq!(outcome.state.status, RunStatus::Finished);
        let trials = &outcome.state.trials;
        let results: u64 = trials.iter().map(|t| t.iteration).sum();
        assert_eq!(results, 4);
        assert!(
            trials.iter().all(|t| t.status.is_finished()),
            "every trial was stopped: {trials:?}"
        );
        assert!(
            trials.iter().skip(2).all(|t| t.iteration == 0),
            "the third trial never trained (the first two spent the budget)"
        );
        let again = replayed_with(dir.path(), configs, 0, limits);
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
        let limits = Limits {
            fail_fast: Some(2),
            ..Limits::default()
        };
        let outcome = run_fake(dir.path(), configs.clone(), 1, limits.clone()).await;
        let message = outcome.ended.expect("fail_fast stopped it").to_string();
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
        let again = replayed_with(dir.path(), configs, 1, limits);
        assert_eq!(trials, &projected(&again));
    }
}

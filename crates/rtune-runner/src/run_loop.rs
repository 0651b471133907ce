//! The run loop: one task that owns the experiment's state and reacts to events.
//!
//! Everything that changes state happens here, in order: the protocol server only forwards
//! reports, executors only forward process exits, timers only send ticks. The loop feeds each
//! event to the pure [`Tuner`], carries out the effects it asks for (files, processes, console),
//! and answers the report. Because of that single owner there are no locks, and the files on disk
//! always describe a state the tuner was really in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtune_core::scheduler::PolicyStep;
use rtune_core::tuner::{Effect, Exit, Launch, Tuner};
use rtune_core::{Action, CheckpointId, TrialId, TrialStatus};
use rtune_protocol::{Response, TrialAction};
use serde_json::json;
use tokio::sync::mpsc;

use crate::executor::{Executor, ExecutorEvent, Resources, TrialLaunch};
use crate::report::Reporter;
use crate::server::{ProtocolServer, ReportEvent};
use crate::storage::{ExperimentDir, ExperimentState};

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
    pub cwd: PathBuf,
    /// How long a trial told to stop or pause may take to exit before it is signalled, and how
    /// long after SIGTERM it gets SIGKILL.
    pub stop_grace: Duration,
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
}

/// What a finished run leaves for the CLI to print or return.
pub struct RunOutcome {
    pub dir: PathBuf,
    pub state: ExperimentState,
    pub interrupted: bool,
}

/// Seconds since the Unix epoch: the only clock the core ever sees. It follows tokio's clock,
/// so under the simulator (a paused runtime) it is virtual time (see [`crate::clock`]).
pub fn unix_now() -> f64 {
    crate::clock::unix_now()
}

struct RunningTrial {
    run: u32,
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
        policies: HashMap::new(),
        timer_tx,
        dirty: true,
    };

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // SIGTERM is how SLURM ends a job (scancel, the time limit): treat it like Ctrl-C, so the
    // trials are stopped and the state is written before SLURM's SIGKILL.
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let mut interrupted = false;

    loop {
        if !interrupted {
            lp.fill_slots();
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
                if lp.dirty {
                    lp.write_state("running")?;
                }
                lp.reporter.tick(unix_now(), lp.state);
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                lp.reporter.on_event("interrupted (Ctrl-C): stopping every trial");
                lp.tuner.stop_all("the experiment was interrupted");
                lp.apply_effects();
                lp.executor.shutdown(lp.template.stop_grace);
            }
            Some(()) = async {
                match sigterm.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            }, if !interrupted => {
                interrupted = true;
                lp.reporter.on_event("interrupted (SIGTERM, e.g. scancel or the SLURM time limit): stopping every trial");
                lp.tuner.stop_all("the experiment was interrupted");
                lp.apply_effects();
                lp.executor.shutdown(lp.template.stop_grace);
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
    reporter.finish(&state);
    Ok(RunOutcome {
        dir: dir.path().to_path_buf(),
        state,
        interrupted,
    })
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
    /// Each trial's config schedule so far (PBT's policy), for policy.json and replays.
    policies: HashMap<TrialId, Vec<PolicyStep>>,
    timer_tx: mpsc::UnboundedSender<Timer>,
    /// Whether the state on disk is behind the tuner's.
    dirty: bool,
}

impl Loop<'_> {
    /// Start trials while the executor has room and the tuner has something to run.
    fn fill_slots(&mut self) {
        while self
            .executor
            .has_room(self.template.workers, &self.template.resources)
        {
            let Some(launch) = self.tuner.next_to_run(unix_now()) else {
                break;
            };
            self.apply_effects();
            let trial = launch.trial;
            let run = launch.run;
            match self.start(launch) {
                Ok(placement) => {
                    self.running.insert(trial, RunningTrial { run });
                    self.state
                        .placements
                        .insert(trial.to_string(), placement.clone());
                }
                Err(message) => {
                    // The trial could not even start (missing program, unwritable dir): that is
                    // its failure, retried like any other.
                    self.write_error(trial, &message);
                    if let Err(e) = self
                        .tuner
                        .on_exit(trial, Exit::Failure(message), unix_now())
                    {
                        tracing::error!("{e}");
                    }
                    self.apply_effects();
                }
            }
            self.dirty = true;
        }
    }

    fn start(&mut self, launch: Launch) -> Result<String, String> {
        let trial = launch.trial;
        let files = self
            .dir
            .trial(trial)
            .map_err(|e| format!("cannot prepare the trial's directory: {e}"))?;
        files
            .write_params(&launch.config)
            .map_err(|e| e.to_string())?;
        if !self.policies.contains_key(&trial) {
            let policy = vec![PolicyStep {
                from_iteration: 0,
                config: launch.config.clone(),
            }];
            self.write_policy(trial, &policy);
            self.policies.insert(trial, policy);
        }
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
            (e::SECRET.to_string(), self.secret.clone()),
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
                cwd: self.template.cwd.clone(),
                stdout: files.stdout_path(),
                stderr: files.stderr_path(),
            })
            .map_err(|e| e.to_string())?;
        Ok(placement.description)
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
        let iteration = current.iteration + 1;
        let restored_from = current.restore;
        // The config this result was produced with; the decision it triggers may change the
        // trial's config (an exploit), which only applies from the restart on.
        let config = current.config.clone();
        let files = match self.dir.trial(trial) {
            Ok(files) => files,
            Err(e) => return Response::error(format!("rtune cannot write the trial's files: {e}")),
        };
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
        let reply =
            match self
                .tuner
                .on_result(trial, report.metrics.clone(), has_checkpoint, unix_now())
            {
                Ok(reply) => reply,
                Err(e) => return Response::error(e.to_string()),
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
        Response::action(action, reason)
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
            ExecutorEvent::Placed {
                trial,
                run,
                description,
            } => {
                // A queued SLURM job started (or still waits, for a new reason).
                if self.running.get(&trial).is_some_and(|r| r.run == run) {
                    self.state.placements.insert(trial.to_string(), description);
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
        let exit = if success {
            Exit::Success
        } else {
            let message = self.failure_message(trial, &message);
            Exit::Failure(message)
        };
        let ending = self.tuner.trial(trial).and_then(|t| t.ending);
        if let (Exit::Failure(message), None) = (&exit, ending) {
            self.write_error(trial, message);
        }
        if let Err(e) = self.tuner.on_exit(trial, exit, unix_now()) {
            tracing::error!("{e}");
        }
        self.apply_effects();
        self.dirty = true;
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

    fn warn(&mut self, trial: TrialId, message: &str) {
        tracing::warn!("{message}");
        self.reporter.on_event(&format!("WARNING {message}"));
        let _ = self.dir.append_event(&json!({
            "time": unix_now(), "trial": trial.to_string(), "event": "warning", "message": message,
        }));
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
                    if let Action::Exploit {
                        donor,
                        config,
                        description,
                    } = &decision.action
                    {
                        // The config the target trained with until now: its policy's last step.
                        let old_config = self
                            .policies
                            .get(&decision.trial)
                            .and_then(|p| p.last())
                            .map(|s| s.config.clone());
                        let line = json!({
                            "time": now,
                            "target": decision.trial.name(),
                            "donor": donor.trial.name(),
                            "donor_iteration": donor.iteration,
                            "target_iteration": self.tuner.trial(decision.trial).map(|t| t.iteration),
                            "old_config": old_config,
                            "new_config": config,
                            "change": description,
                            "details": decision.details,
                        });
                        if let Err(e) = self.dir.append_lineage(&line) {
                            tracing::error!("cannot write the lineage log: {e}");
                        }
                        if let Err(message) = self.copy_donor_checkpoint(decision.trial, *donor) {
                            // The restart will try the copy again and fail the run if it
                            // still cannot be made.
                            self.warn(decision.trial, &message);
                        }
                        // The target's policy: the donor's schedule up to the donor's iteration,
                        // then the explored config.
                        let mut policy: Vec<PolicyStep> = self
                            .policies
                            .get(&donor.trial)
                            .map(|p| {
                                p.iter()
                                    .filter(|s| s.from_iteration < donor.iteration)
                                    .cloned()
                                    .collect()
                            })
                            .unwrap_or_default();
                        policy.push(PolicyStep {
                            from_iteration: donor.iteration,
                            config: config.clone(),
                        });
                        self.write_policy(decision.trial, &policy);
                        self.policies.insert(decision.trial, policy);
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
                Effect::Status {
                    trial,
                    status,
                    reason,
                } => {
                    let _ = self.dir.append_event(&json!({
                        "time": now, "trial": trial.to_string(), "event": "status",
                        "status": status, "reason": reason,
                    }));
                    if status != TrialStatus::Pending || reason.contains("retry") {
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

    fn write_policy(&self, trial: TrialId, policy: &[PolicyStep]) {
        if let Ok(files) = self.dir.trial(trial)
            && let Err(e) = files.write_policy(policy)
        {
            tracing::error!("{}: cannot write policy.json: {e}", trial.name());
        }
    }

    fn write_state(&mut self, status: &str) -> Result<(), RunError> {
        self.state.status = status.to_string();
        self.state.trials = self.tuner.trials().to_vec();
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

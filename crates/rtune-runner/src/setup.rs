//! From the command line's options to a running experiment: load and check everything that can
//! be checked before anything starts, then create the experiment directory and run the loop.
//!
//! The order matters for users: every mistake in the file, the space, the scheduler or the
//! resources is reported before a directory is created or a process started.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rtune_core::scheduler::{PolicyReplayScheduler, PolicyStep, Scheduler};
use rtune_core::searcher::{FixedSearcher, Searcher, SearcherContext};
use rtune_core::space::SearchSpace;
use rtune_core::tuner::{ErroredTrials, Input, Limits, Output, Tuner, TunerSettings};
use tokio::sync::mpsc;

use crate::claim::{Claim, ClaimError, ClaimSettings, Previous};
use crate::executor::local::{LocalExecutor, LocalExecutorConfig};
use crate::executor::{
    Executor, ExecutorError, ExecutorEvent, SimulatedExecutor, SlurmExecutor, SlurmExecutorConfig,
    SlurmJobsConfig, SlurmJobsExecutor, Supervisor,
};
use crate::experiment::{self, Experiment, ExperimentError};
use crate::journal::{self, Journal, JournalError};
use crate::lineage;
use crate::report::{Reporter, local_time};
use crate::run_loop::{self, RunError, RunOutcome, RunParts, TrialTemplate, unix_now};
use crate::state::{ExperimentState, RunStatus, StateMeta};
use crate::storage::{EXPERIMENT_FILE, ExperimentDir, StorageError, write_durable};
use crate::workdir::TrialWorkdir;

/// What `rtune run` was asked.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub experiment_path: PathBuf,
    /// `--set KEY=VALUE`, in order.
    pub overrides: Vec<String>,
    /// `--name`: overrides `name` in the file.
    pub name: Option<String>,
    /// `--storage`: overrides `[output] storage`.
    pub storage: Option<PathBuf>,
    /// `--executor`: overrides `[executor] type`.
    pub executor: Option<String>,
    /// The running rtune binary: trial programs are looked up next to it first.
    pub rtune_exe: PathBuf,
    /// The shim binary each local trial process runs under (normally `rtune-supervise` next to
    /// `rtune_exe`, or `rtune_exe` itself: `shim::supervisor_program`); None = trial processes
    /// start directly and outlive a SIGKILLed rtune.
    pub supervisor: Option<PathBuf>,
    /// Whether stdout is a terminal (live table) or a log file.
    pub terminal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Experiment(#[from] ExperimentError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Capacity {
        path: PathBuf,
        source: ExecutorError,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(
        "cannot find the storage directory: set [output] storage, --storage or RTUNE_STORAGE (HOME is not set)"
    )]
    NoStorage,
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// `rtune resume` with a file that would make the journal mean something else.
    #[error(
        "{dir}: cannot resume with a changed {field}: it was {old}, now {new}\nhint: only resources, concurrency, executor, output and limits may change on resume; run a new experiment for a different {field}"
    )]
    Changed {
        dir: PathBuf,
        field: &'static str,
        old: String,
        new: String,
    },
    #[error(
        "{dir} is still running (head pid {pid} on {host}, heartbeat {age:.0} s ago)\nhint: stop it first (Ctrl-C or kill {pid}), then resume"
    )]
    StillRunning {
        dir: PathBuf,
        pid: u32,
        host: String,
        age: f64,
    },
    #[error("cannot draw the experiment's secret from the operating system's random source: {0}")]
    Random(getrandom::Error),
    /// One head per experiment ([`crate::claim`]): another head holds it, or the lease setting
    /// is bad, or the claim file cannot be written.
    #[error(transparent)]
    Claim(#[from] ClaimError),
}

impl SetupError {
    /// Whether the user's input is at fault (a bad file, a changed file on resume, a trial that
    /// does not fit): exit code 2, not an internal error.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            SetupError::Experiment(_)
                | SetupError::Invalid { .. }
                | SetupError::Capacity { .. }
                | SetupError::Changed { .. }
                | SetupError::StillRunning { .. }
                | SetupError::NoStorage
                | SetupError::Claim(ClaimError::BadLease { .. })
        )
    }
}

/// What `rtune resume` was asked.
#[derive(Clone, Debug)]
pub struct ResumeOptions {
    /// The experiment's directory (anywhere: it may have been moved since it ran).
    pub dir: PathBuf,
    /// `--set KEY=VALUE`: only resources, concurrency, executor and limits may change.
    pub overrides: Vec<String>,
    /// `--executor`.
    pub executor: Option<String>,
    pub errored: ErroredTrials,
    pub rtune_exe: PathBuf,
    pub terminal: bool,
}

/// Continue an experiment from its journal (see [`ResumeOptions`]) to the end.
pub async fn resume_experiment(options: ResumeOptions) -> Result<RunOutcome, SetupError> {
    let run_options = RunOptions {
        experiment_path: options.dir.join(EXPERIMENT_FILE),
        overrides: options.overrides.clone(),
        name: None,
        storage: None,
        executor: options.executor.clone(),
        rtune_exe: options.rtune_exe.clone(),
        // Resumed trials are supervised like those of `rtune run`.
        supervisor: Some(crate::executor::shim::supervisor_program(
            &options.rtune_exe,
        )),
        terminal: options.terminal,
    };
    let prepared = prepare_with(&run_options, None, Some((&options.dir, options.errored)))?;
    start_virtual_time(&prepared.experiment)?;
    let outcome = run_loop::run(prepared.parts).await?;
    Ok(outcome)
}

/// Refuse a resume whose file changes what the journal's inputs mean: the search space, the
/// metric, the scheduler, anything the core decides with.
fn check_unchanged(
    dir: &Path,
    old: &experiment::ExperimentFile,
    new: &experiment::ExperimentFile,
) -> Result<(), SetupError> {
    let show = |v: serde_json::Value| v.to_string();
    let fields: [(&'static str, serde_json::Value, serde_json::Value); 9] = [
        (
            "metric",
            old.metric.clone().into(),
            new.metric.clone().into(),
        ),
        ("mode", json(&old.mode), json(&new.mode)),
        (
            "num_samples",
            old.num_samples.into(),
            new.num_samples.into(),
        ),
        ("seed", old.seed.into(), new.seed.into()),
        (
            "max_failures",
            old.max_failures.into(),
            new.max_failures.into(),
        ),
        ("stop", json(&old.stop), json(&new.stop)),
        ("search space", json(&old.space), json(&new.space)),
        ("scheduler", json(&old.scheduler), json(&new.scheduler)),
        ("checkpoint", json(&old.checkpoint), json(&new.checkpoint)),
    ];
    for (field, a, b) in fields {
        if a != b {
            return Err(SetupError::Changed {
                dir: dir.to_path_buf(),
                field,
                old: show(a),
                new: show(b),
            });
        }
    }
    Ok(())
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Everything checked and built, not yet started: what `run_experiment` runs.
pub struct Prepared {
    pub experiment: Experiment,
    pub parts: RunParts,
    pub concurrency: String,
}

/// Load the experiment, check it, create its directory and run it to the end.
pub async fn run_experiment(options: RunOptions) -> Result<RunOutcome, SetupError> {
    let prepared = prepare(&options)?;
    start_virtual_time(&prepared.experiment)?;
    let outcome = run_loop::run(prepared.parts).await?;
    Ok(outcome)
}

/// What `rtune replay` was asked: run one trial of an earlier experiment again, from scratch,
/// with the config schedule it ended up with (its `policy.json`).
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The earlier experiment's directory: its `experiment.toml` gives the trial command, the
    /// metric and every other setting.
    pub experiment_dir: PathBuf,
    /// The trial to replay, as users write it: `trial_00002`, `00002` or `2`.
    pub trial: String,
    /// The replay's name; default `<experiment>-replay-<trial>`.
    pub name: Option<String>,
    /// Where the replay's directory is created; default: next to the experiment's directory.
    pub storage: Option<PathBuf>,
    pub rtune_exe: PathBuf,
    /// As in [`RunOptions::supervisor`].
    pub supervisor: Option<PathBuf>,
    pub terminal: bool,
}

/// Replay one trial's policy (see [`ReplayOptions`]) to the end.
pub async fn run_replay(options: ReplayOptions) -> Result<RunOutcome, SetupError> {
    let prepared = prepare_replay(&options)?;
    start_virtual_time(&prepared.experiment)?;
    let outcome = run_loop::run(prepared.parts).await?;
    Ok(outcome)
}

/// With the simulated executor the run happens in virtual time: this pauses the runtime's clock,
/// which then jumps from event to event (see [`crate::executor::simulated`]). That needs a
/// current-thread runtime whose clock is not paused yet (one simulated run per runtime).
fn start_virtual_time(experiment: &Experiment) -> Result<(), SetupError> {
    if experiment.file.executor.kind.as_deref() != Some("simulated") {
        return Ok(());
    }
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    if !matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::CurrentThread)) {
        return Err(SetupError::Invalid {
            path: experiment.path.clone(),
            message: "the simulated executor runs on a current-thread tokio runtime (as the rtune \
                      command does)"
                .into(),
        });
    }
    tokio::time::pause();
    Ok(())
}

/// A replay is an experiment of one trial: the experiment's own file, with a searcher that hands
/// out the policy's first config and a scheduler that switches configs where the policy does
/// (restarting from the trial's own checkpoint each time).
pub fn prepare_replay(options: &ReplayOptions) -> Result<Prepared, SetupError> {
    let dir = options
        .experiment_dir
        .canonicalize()
        .unwrap_or_else(|_| options.experiment_dir.clone());
    let trial = lineage::parse_trial(&options.trial).ok_or_else(|| SetupError::Invalid {
        path: dir.clone(),
        message: format!(
            "`{}` is not a trial; name one as the trials table does, e.g. trial_00002 or 2",
            options.trial
        ),
    })?;
    let policy = lineage::read_policy(&dir, trial)?;
    PolicyReplayScheduler::new(&policy).map_err(|message| SetupError::Invalid {
        path: lineage::policy_path(&dir, trial),
        message,
    })?;
    let experiment_name = dir
        .file_name()
        .map_or("experiment".into(), |n| n.to_string_lossy().into_owned());
    let run_options = RunOptions {
        experiment_path: dir.join(EXPERIMENT_FILE),
        overrides: Vec::new(),
        name: Some(
            options
                .name
                .clone()
                .unwrap_or_else(|| format!("{experiment_name}-replay-{}", trial.name())),
        ),
        storage: Some(
            options
                .storage
                .clone()
                .or_else(|| dir.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from(".")),
        ),
        executor: None,
        rtune_exe: options.rtune_exe.clone(),
        supervisor: options.supervisor.clone(),
        terminal: options.terminal,
    };
    prepare_with(&run_options, Some(&policy), None)
}

/// Everything up to (and including) creating the experiment directory.
pub fn prepare(options: &RunOptions) -> Result<Prepared, SetupError> {
    prepare_with(options, None, None)
}

/// [`prepare`], or with `replay`: one trial that follows that policy.
fn prepare_with(
    options: &RunOptions,
    replay: Option<&[PolicyStep]>,
    resume: Option<(&Path, ErroredTrials)>,
) -> Result<Prepared, SetupError> {
    let mut overrides = options.overrides.clone();
    if let Some(name) = &options.name {
        overrides.push(format!("name={}", toml_string(name)));
    }
    if let Some(kind) = &options.executor {
        overrides.push(format!("executor.type={}", toml_string(kind)));
    }
    let experiment = experiment::load(&options.experiment_path, &overrides)?;
    if let Some((dir, _)) = resume {
        let original = experiment::load(&options.experiment_path, &[])?;
        check_unchanged(dir, &original.file, &experiment.file)?;
    }
    let file = &experiment.file;
    let path = experiment.path.clone();
    let invalid = |message: String| SetupError::Invalid {
        path: path.clone(),
        message,
    };

    let (mut tuner, parameters) = build_tuner(&experiment, replay)?;
    // One head per experiment: the lease setting is checked before anything is created.
    let claim_settings = ClaimSettings::from_env()?;

    let (events_tx, executor_events) = mpsc::unbounded_channel();
    // Trial processes run under the shim (`rtune-supervise`, or `rtune __supervise`), which
    // ends them when rtune dies by any signal.
    let supervisor = options.supervisor.as_ref().map(|program| Supervisor {
        program: program.clone(),
        grace: Duration::from_secs_f64(file.trial.stop_grace_s),
    });
    let kind = executor_kind(
        file.executor.kind.as_deref(),
        std::env::var_os("SLURM_JOB_ID").is_some(),
    );
    let executor =
        build_executor(kind, &file.executor, events_tx, supervisor).map_err(|source| {
            SetupError::Capacity {
                path: path.clone(),
                source,
            }
        })?;
    let plan = executor
        .check_capacity(file.trial.workers, &file.trial.resources)
        .map_err(|source| SetupError::Capacity {
            path: path.clone(),
            source,
        })?;

    let start_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let workdir = TrialWorkdir::new(
        file.trial.cwd.as_deref(),
        file.trial.chdir_to_trial_dir,
        &start_dir,
    )
    .map_err(invalid)?;
    let command = workdir.command(&resolve_command(&file.trial.command, &options.rtune_exe));
    // Simulated trials run inside rtune: there is no program to check.
    if kind != "simulated" {
        check_program(&command, workdir.original()).map_err(invalid)?;
    }
    // Under SLURM the trials run on other nodes: listen on every interface and tell them this
    // machine's name. The secret keeps everyone else out.
    let on_slurm = kind == "slurm" || kind == "slurm-jobs";
    let bind = match (&file.executor.bind, on_slurm) {
        (None, true) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        (bind, _) => bind_address(bind.as_deref()).map_err(invalid)?,
    };
    let advertise_host = match (&file.executor.advertise_host, on_slurm) {
        (None, true) => Some(this_host_name().map_err(invalid)?),
        (host, _) => host.clone(),
    };

    let storage =
        crate::experiment::storage_dir(options.storage.as_deref(), file.output.storage.as_deref())
            .ok_or(SetupError::NoStorage)?;
    // Absolute, so the paths trials get (RTUNE_TRIAL_DIR, ...) hold in their own directories.
    let storage = crate::workdir::absolute(&storage, &start_dir);
    // What a resume rebuilt, and how long it took: the console's first lines say it.
    let mut resumed_from = String::new();
    let (dir, journal) = match resume {
        None => {
            let dir = ExperimentDir::create(&storage, &file.name, &experiment.text_as_run)?;
            // Claimed before journal.jsonl exists: a resume refuses a directory without one
            // (below), so it never takes the claim of a run that is starting.
            let claim = Claim::acquire(dir.path(), claim_settings)?;
            let (mut journal, _) = Journal::open(dir.path())?;
            journal.hold_claim(claim);
            (dir, journal)
        }
        Some((path, _)) => {
            refuse_without_journal(path)?;
            let claim = Claim::acquire(path, claim_settings)?;
            let dir = ExperimentDir::open(path);
            // Without an earlier claim, the snapshot's heartbeat is all there is to tell a live
            // head (of an rtune without claims) from a dead one.
            if *claim.previous() == Previous::Nothing
                && let Ok(old) = ExperimentState::read(path)
                && let Some(head) = &old.head
                && old
                    .dead_head(&this_host_name().unwrap_or_default(), unix_now())
                    .is_none()
                && old.status == RunStatus::Running
            {
                return Err(SetupError::StillRunning {
                    dir: path.to_path_buf(),
                    pid: head.pid,
                    host: head.host.clone(),
                    age: unix_now() - head.heartbeat,
                });
            }
            let replay_started = std::time::Instant::now();
            let (mut journal, contents) = Journal::open(path)?;
            journal.hold_claim(claim);
            let mut exploits = Vec::new();
            let mut tail_results = Vec::new();
            let mut touched = crate::results::Touched::default();
            journal::replay_with(
                &mut tuner,
                &contents,
                journal.path(),
                |entry, output, effects| {
                    let now = entry.input.now();
                    for effect in effects {
                        exploits.extend(lineage::exploit_line(now, &effect));
                    }
                    match &entry.input {
                        Input::Report { trial, run, .. } | Input::Exit { trial, run, .. } => {
                            touched.trials.insert(*trial);
                            if let Output::Reply(reply) = output {
                                tail_results.push((reply.clone(), *run));
                            }
                        }
                        Input::Resume { .. } | Input::StopAll { .. } => touched.all = true,
                        _ => {}
                    }
                    touched
                        .trials
                        .extend(entry.out.decided.iter().map(|d| d.trial));
                },
            )?;
            let restored = lineage::restore_missing(path, &exploits)?;
            if restored > 0 {
                tracing::warn!(
                    "restored {restored} exploit(s) missing from lineage.jsonl (the head was \
                     killed before it wrote them)"
                );
            }
            crate::results::reconcile(&dir, &tuner, &touched, &tail_results, unix_now())?;
            resumed_from = format!(
                "\n  rebuilt from its journal: {}{} line(s) replayed, in {} ms{}",
                match &contents.snapshot {
                    Some((_, release)) => format!("a snapshot (rtune {release}) and "),
                    None => String::new(),
                },
                contents.entries.len(),
                replay_started.elapsed().as_millis(),
                match tuner.replay_divergences() {
                    0 => String::new(),
                    n => format!(
                        "; {n} of the journal's decisions differ from what this release would \
                         decide, and were kept"
                    ),
                }
            );
            if !options.overrides.is_empty() || options.executor.is_some() {
                write_durable(
                    &path.join(EXPERIMENT_FILE),
                    experiment.text_as_run.as_bytes(),
                )?;
            }
            (dir, journal)
        }
    };
    let meta = StateMeta {
        name: file.name.clone(),
        metric: file.metric.clone(),
        mode: file.mode,
        parameters,
    };
    let mut reporter = Reporter::new(options.terminal, file.output.report_interval_s)
        .simulated(kind == "simulated");
    let total = tuner
        .total_trials()
        .map_or("an open number of".to_string(), |n| n.to_string());
    reporter.start(&format!(
        "rtune {}: experiment {} {} at {}\n  {total} trials, searcher {}, scheduler {}, metric {} ({})\n  {}\n  results: {}{resumed_from}",
        env!("CARGO_PKG_VERSION"),
        file.name,
        if resume.is_some() {
            "resumed"
        } else {
            "started"
        },
        local_time(unix_now()),
        tuner.searcher_name(),
        tuner.scheduler_name(),
        file.metric,
        file.mode,
        plan.explanation,
        dir.path().display(),
    ));
    let concurrency = plan.explanation.clone();
    let fresh_experiment = experiment.clone();
    let replay_policy: Option<Vec<PolicyStep>> = replay.map(<[PolicyStep]>::to_vec);
    let parts = RunParts {
        tuner,
        fresh_tuner: Box::new(move || {
            build_tuner(&fresh_experiment, replay_policy.as_deref())
                .ok()
                .map(|(tuner, _)| tuner)
        }),
        executor,
        executor_events,
        dir,
        meta,
        template: TrialTemplate {
            command,
            env: file
                .trial
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            workers: file.trial.workers,
            resources: file.trial.resources.clone(),
            workdir,
            stop_grace: Duration::from_secs_f64(file.trial.stop_grace_s),
            checkpoint_roots: file.trial.checkpoint_roots.clone(),
        },
        reporter,
        bind,
        advertise_host,
        secret: new_secret()?,
        journal,
        resume: resume.map(|(_, errored)| errored),
    };
    Ok(Prepared {
        experiment,
        parts,
        concurrency,
    })
}

/// The core of an experiment as its file describes it (or, with `replay`, one trial following a
/// policy): what a run drives and what a resume replays the journal into.
fn build_tuner(
    experiment: &Experiment,
    replay: Option<&[PolicyStep]>,
) -> Result<(Tuner, Vec<String>), SetupError> {
    let file = &experiment.file;
    let invalid = |message: String| SetupError::Invalid {
        path: experiment.path.clone(),
        message,
    };
    let space =
        SearchSpace::from_json(&experiment.space_json()).map_err(|e| invalid(e.to_string()))?;
    let parameters = space.searched_names();
    let (searcher, scheduler): (Box<dyn Searcher>, Box<dyn Scheduler>) = match replay {
        None => {
            let scheduler = file
                .scheduler
                .build(&file.metric, file.mode, &space)
                .map_err(|e| invalid(e.to_string()))?;
            let searcher = file
                .searcher
                .build(&SearcherContext {
                    space: &space,
                    num_samples: file.num_samples,
                    seed: file.seed,
                    metric: &file.metric,
                    mode: file.mode,
                    scheduler: &file.scheduler,
                })
                .map_err(|e| invalid(e.to_string()))?;
            (searcher, scheduler)
        }
        Some(policy) => {
            let scheduler = PolicyReplayScheduler::new(policy).map_err(&invalid)?;
            let first = policy.first().map(|s| s.config.clone()).unwrap_or_default();
            (
                Box::new(FixedSearcher::new(vec![first])),
                Box::new(scheduler),
            )
        }
    };
    let tuner = Tuner::new(
        TunerSettings {
            metric: file.metric.clone(),
            mode: file.mode,
            seed: file.seed,
            max_failures: file.max_failures,
            stop: file.stop.clone(),
            limits: Limits {
                time_budget_s: file.time_budget_s,
                max_total_results: file.max_total_results,
                fail_fast: file.fail_fast,
                report_timeout_s: file.trial.report_timeout_s,
            },
            missing_metric: file.missing_metric,
            require_report: file.trial.require_report,
        },
        searcher,
        scheduler,
    )
    .with_checkpoint_retention(file.checkpoint.clone());
    Ok((tuner, parameters))
}

/// The state an experiment's journal leads to: its file's core with every journal line replayed
/// (what `rtune resume` starts from; tests compare it with the live snapshot).
pub fn replay_journal(dir: &Path) -> Result<Tuner, SetupError> {
    let experiment = experiment::load(&dir.join(EXPERIMENT_FILE), &[])?;
    let (mut tuner, _) = build_tuner(&experiment, None)?;
    let (journal, contents) = Journal::open(dir)?;
    journal::replay(&mut tuner, &contents, journal.path())?;
    Ok(tuner)
}

/// A directory whose trials ran but whose journal is gone cannot be resumed: replaying nothing
/// would run every trial again and append to their old result files.
fn refuse_without_journal(dir: &Path) -> Result<(), SetupError> {
    let journal = dir.join(journal::JOURNAL_FILE);
    let has_journal = std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0);
    if has_journal {
        return Ok(());
    }
    let trial_dirs = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("trial_"))
                .count()
        })
        .unwrap_or(0);
    if trial_dirs == 0 {
        return Err(SetupError::Invalid {
            path: journal,
            message: "does not exist, so there is nothing to resume: the experiment's first head \
                      ended before it began (or this is not an experiment directory)\nhint: \
                      start it with `rtune run`"
                .into(),
        });
    }
    Err(SetupError::Invalid {
        path: journal,
        message: format!(
            "is missing or empty, but the experiment has {trial_dirs} trial director{}: without \
             its journal rtune cannot know what they did, and resuming would run them again \
             over their old results\nhint: run the experiment again with `rtune run` (into a new \
             directory), or restore journal.jsonl from a backup",
            if trial_dirs == 1 { "y" } else { "ies" }
        ),
    })
}

/// A TOML string literal for an override built from a command-line flag.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// `rtune` means this binary; a bare program name that exists next to this binary (the example
/// trainable, the built-in trainer) is taken from there; anything else is left for PATH.
pub fn resolve_command(command: &[String], rtune_exe: &Path) -> Vec<String> {
    let mut resolved = command.to_vec();
    let Some(program) = resolved.first_mut() else {
        return resolved;
    };
    if program.contains('/') {
        return resolved;
    }
    if program == "rtune" {
        *program = rtune_exe.to_string_lossy().into_owned();
        return resolved;
    }
    if let Some(dir) = rtune_exe.parent() {
        let candidate = dir.join(program.as_str());
        if candidate.is_file() {
            *program = candidate.to_string_lossy().into_owned();
        }
    }
    resolved
}

/// The executor to use: the file's (or `--executor`'s) choice, else `slurm` inside a SLURM job
/// (`SLURM_JOB_ID` set), else `local`.
pub fn executor_kind(configured: Option<&str>, in_slurm_job: bool) -> &str {
    match configured {
        Some(kind) => kind,
        None if in_slurm_job => "slurm",
        None => "local",
    }
}

/// Builds the executor `kind` (`local`, `slurm`, `slurm-jobs` or `simulated`) from `[executor]`.
/// The local executor runs its trial processes under `supervisor` (the shim in the `rtune`
/// binary).
pub fn build_executor(
    kind: &str,
    section: &experiment::ExecutorSection,
    events: mpsc::UnboundedSender<ExecutorEvent>,
    supervisor: Option<Supervisor>,
) -> Result<Box<dyn Executor>, ExecutorError> {
    Ok(match kind {
        "simulated" => {
            let spec = section.benchmark_spec().ok_or_else(|| {
                ExecutorError::Invalid("the simulated executor needs executor.benchmark".into())
            })?;
            let benchmark = spec
                .build()
                .map_err(|e| ExecutorError::Invalid(e.to_string()))?;
            Box::new(SimulatedExecutor::new(
                Arc::from(benchmark),
                section.max_concurrent_trials.unwrap_or(1),
                events,
            )?)
        }
        "slurm" => Box::new(SlurmExecutor::new(
            SlurmExecutorConfig {
                job_id: None,
                reserve_cpus: section.reserve_cpus,
                max_concurrent_trials: section.max_concurrent_trials,
                srun_args: section.srun_args.clone(),
            },
            events,
        )?),
        "slurm-jobs" => Box::new(SlurmJobsExecutor::new(
            SlurmJobsConfig {
                partition: section.partition.clone(),
                time_limit: section.time_limit.clone(),
                account: section.account.clone(),
                sbatch_args: section.sbatch_args.clone(),
                max_concurrent_trials: section.max_concurrent_trials,
                poll_interval: Duration::from_secs_f64(section.poll_interval_s.unwrap_or(2.0)),
            },
            events,
        )?),
        _ => Box::new(LocalExecutor::new(
            LocalExecutorConfig {
                cpus: section.cpus,
                gpus: section.gpus.clone(),
                reserve_cpus: section.reserve_cpus,
                max_concurrent_trials: section.max_concurrent_trials,
                supervisor,
            },
            events,
        )?),
    })
}

/// This machine's host name, which trials on other nodes connect to.
pub fn this_host_name() -> Result<String, String> {
    match gethostname::gethostname().into_string() {
        Ok(name) if !name.is_empty() => Ok(name),
        _ => Err(
            "cannot read this machine's host name for trials on other nodes; \
                  set executor.advertise_host"
                .to_string(),
        ),
    }
}

/// A trial command whose program does not exist would fail every trial: say so before anything
/// starts. A bare name must be on PATH (or next to rtune, already resolved); a path is taken
/// relative to the trials' working directory.
fn check_program(command: &[String], cwd: &Path) -> Result<(), String> {
    let Some(program) = command.first() else {
        return Ok(());
    };
    let found = if program.contains('/') {
        cwd.join(program).is_file()
    } else {
        which::which_in(program, std::env::var_os("PATH"), cwd).is_ok()
    };
    if found {
        Ok(())
    } else if program.contains('/') {
        Err(format!(
            "trial.command: `{program}` does not exist (relative paths are read from {})\nhint: give a path that exists, or set trial.cwd",
            cwd.display()
        ))
    } else {
        Err(format!(
            "trial.command: `{program}` is not on PATH, nor next to the rtune binary\nhint: install it, give its full path, or fix a typo in the name"
        ))
    }
}

/// `[executor] bind`: an IP, `IP:PORT` or a host name; default loopback, any port.
fn bind_address(bind: Option<&str>) -> Result<SocketAddr, String> {
    let Some(text) = bind else {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
    };
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 0));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    (text, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            format!("executor.bind: `{text}` is not an address or a host name this machine knows")
        })
}

/// 128 random bits from the OS, as hex: the experiment's secret.
fn new_secret() -> Result<String, SetupError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(SetupError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_is_chosen_inside_a_slurm_job_unless_the_file_says_otherwise() {
        assert_eq!(executor_kind(None, false), "local");
        assert_eq!(executor_kind(None, true), "slurm");
        assert_eq!(executor_kind(Some("local"), true), "local");
        assert_eq!(executor_kind(Some("slurm-jobs"), false), "slurm-jobs");
    }

    #[test]
    fn programs_next_to_rtune_win_over_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("rtune");
        std::fs::write(dir.path().join("rtune-example"), "").expect("write");
        let cmd = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let resolved = resolve_command(&cmd(&["rtune-example", "--x"]), &exe);
        assert_eq!(
            resolved[0],
            dir.path().join("rtune-example").to_string_lossy()
        );
        assert_eq!(resolved[1], "--x");
        assert_eq!(
            resolve_command(&cmd(&["python", "t.py"]), &exe)[0],
            "python"
        );
        assert_eq!(resolve_command(&cmd(&["./t.sh"]), &exe)[0], "./t.sh");
        assert_eq!(
            resolve_command(&cmd(&["rtune", "train-lm"]), &exe)[0],
            exe.to_string_lossy()
        );
    }

    #[test]
    fn a_missing_program_is_named_before_anything_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cmd = |c: &str| vec![c.to_string()];
        assert!(check_program(&cmd("sh"), dir.path()).is_ok());
        let message = check_program(&cmd("no-such-program-xyz"), dir.path()).expect_err("missing");
        assert!(
            message.contains("`no-such-program-xyz` is not on PATH"),
            "{message}"
        );
        let message = check_program(&cmd("./train.sh"), dir.path()).expect_err("missing");
        assert!(message.contains("does not exist"), "{message}");
        std::fs::write(dir.path().join("train.sh"), "").expect("write");
        assert!(check_program(&cmd("./train.sh"), dir.path()).is_ok());
    }

    #[test]
    fn secrets_differ_and_bind_addresses_parse() {
        let secret = new_secret().expect("secret");
        assert_ne!(secret, new_secret().expect("secret"));
        assert_eq!(secret.len(), 32);
        assert_eq!(
            bind_address(None).expect("default"),
            "127.0.0.1:0".parse().expect("addr")
        );
        assert_eq!(
            bind_address(Some("0.0.0.0")).expect("ip"),
            "0.0.0.0:0".parse().expect("addr")
        );
        assert!(bind_address(Some("no such host.invalid")).is_err());
    }
}

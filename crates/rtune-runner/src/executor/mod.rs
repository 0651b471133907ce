//! Executors start trial processes, report their exits and account for the resources they hold.
//!
//! The run loop asks an executor whether a trial fits (`has_room`), starts it, and later learns
//! of its end through one [`ExecutorEvent::Exited`] per run on the channel given to the
//! executor. Only then does it call [`Executor::release`], so the resources of a trial stay
//! booked until the loop has seen it finish.

pub mod local;
pub mod resources;
pub mod shim;
pub mod simulated;
pub mod slurm;
pub mod slurm_common;
pub mod slurm_jobs;
pub mod trial_env;

use std::path::PathBuf;
use std::time::Duration;

use rtune_core::TrialId;
use serde::{Deserialize, Serialize};

pub use local::{LocalExecutor, LocalExecutorConfig, plan_capacity};
pub use resources::{NodeResources, detect, parse_visible_devices};
pub use shim::Supervisor;
pub use simulated::SimulatedExecutor;
pub use slurm::{Allocation, AllocationNode, SlurmExecutor, SlurmExecutorConfig, plan_allocation};
pub use slurm_jobs::{SlurmJobsConfig, SlurmJobsExecutor};

/// What one worker process of a trial needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// CPUs per worker; fractions allowed.
    pub cpu: f64,
    /// Whole GPUs per worker.
    pub gpu: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpu: 1.0, gpu: 0 }
    }
}

/// Everything needed to start one run of a trial.
#[derive(Clone, Debug)]
pub struct TrialLaunch {
    /// The trial being started.
    pub trial: TrialId,
    /// The run number (a trial restarted from a checkpoint gets a new run); echoed in its
    /// [`ExecutorEvent::Exited`].
    pub run: u32,
    /// Program and arguments; the program is looked up on PATH.
    pub command: Vec<String>,
    /// Extra environment for every worker (on top of rtune's own environment). It replaces
    /// what the executor would set (`RANK`, `CUDA_VISIBLE_DEVICES`, ...); an empty value removes
    /// the variable; the last value of a key counts (see [`trial_env`]).
    pub env: Vec<(String, String)>,
    /// Number of worker processes (e.g. one per GPU for data-parallel training).
    pub workers: u32,
    /// What each worker needs.
    pub resources: Resources,
    /// Working directory of every worker.
    pub cwd: PathBuf,
    /// Standard output of worker 0 (appended); rank k > 0 writes `<stdout>.rank<k>.log`.
    pub stdout: PathBuf,
    /// Standard error of worker 0 (appended); rank k > 0 writes `<stderr>.rank<k>.log`.
    pub stderr: PathBuf,
}

/// Where a trial was placed (typed; see [`rtune_core::Placement`]). `queued` says the run's
/// processes do not run yet (a job waiting in SLURM's queue): the executor sends
/// [`ExecutorEvent::Placed`] with `running: true` once they do, and the run's time counts from
/// then. False for executors whose processes start in `start`.
pub use rtune_core::Placement;

/// What an executor tells the run loop.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecutorEvent {
    /// Every worker of this run has exited (and leftover processes in their process groups
    /// have been killed). Sent exactly once per started run.
    Exited {
        /// The trial.
        trial: TrialId,
        /// The run number given in its [`TrialLaunch`].
        run: u32,
        /// True iff every worker exited with status 0.
        success: bool,
        /// `exit code 0`, `exit code 3`, `killed by signal 15 (SIGTERM)`; prefixed with
        /// `worker <rank>: ` when the trial has several workers.
        message: String,
    },
    /// The run was taken away through no fault of the trial (SLURM requeued or preempted its
    /// job, its node failed) and its processes are gone: sent instead of `Exited`, exactly once.
    /// The run loop restarts the trial as a new run from its latest checkpoint, not counted as
    /// a failure.
    Lost {
        /// The trial.
        trial: TrialId,
        /// The run number given in its [`TrialLaunch`].
        run: u32,
        /// What happened, e.g. `job 12 was requeued by SLURM (...)`.
        message: String,
    },
    /// Where a started run actually runs changed: a job that waited in SLURM's queue started on
    /// its nodes, for example. Only executors whose runs can wait after `start` send it (the
    /// job-per-trial executor); the run loop shows the new description in the trials table.
    Placed {
        /// The trial.
        trial: TrialId,
        /// The run number given in its [`TrialLaunch`].
        run: u32,
        /// The new placement: still queued (with SLURM's reason), or on its nodes.
        placement: Placement,
        /// The run's processes run now (the job left the queue): queue time ends here.
        running: bool,
        /// When they started, in Unix seconds, if the executor knows it more precisely than
        /// the moment it noticed (SLURM's start time of the job).
        started_at: Option<f64>,
    },
}

/// Why an executor could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// A single trial needs more than this node has; the message shows the arithmetic.
    #[error("{0}")]
    NeverFits(String),
    /// `start` was called while the trial does not fit right now (check `has_room` first).
    #[error("no room for trial {trial} right now: {reason}")]
    NoRoom {
        /// The trial.
        trial: TrialId,
        /// What is missing.
        reason: String,
    },
    /// A setting or request makes no sense (negative CPUs, zero workers, empty command, ...).
    #[error("{0}")]
    Invalid(String),
    /// The program could not be started.
    #[error("cannot start `{program}`: {}", describe_spawn_error(.source))]
    Spawn {
        /// The program as given in the command.
        program: String,
        /// The error from the operating system.
        source: std::io::Error,
    },
    /// A SLURM command failed or printed something rtune cannot read; the message names the
    /// command and quotes its error.
    #[error("{0}")]
    Slurm(String),
    /// Another I/O error (opening log files, finding a free port).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. `cannot open /x/stdout.log`.
        what: String,
        /// The error from the operating system.
        source: std::io::Error,
    },
}

/// The error of a failed spawn, with a hint for the usual causes.
fn describe_spawn_error(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => {
            format!("not found: is it on PATH? (or the working directory is missing) ({error})")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("permission denied: is it executable? ({error})")
        }
        _ => error.to_string(),
    }
}

/// How many trials can run at once, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct CapacityPlan {
    /// Trials that fit side by side (`u32::MAX` when nothing limits them).
    pub concurrent_trials: u32,
    /// For example `2 trials at once: 2 CPUs / (1 worker x 1 CPU)`.
    pub explanation: String,
}

/// Runs trial processes somewhere. Methods are called from inside a tokio runtime, from the run
/// loop's task: none of them may block (wait for processes, sleep, run a command to its end).
/// What takes time (escalating to SIGKILL, cancelling jobs) runs in tasks the executor spawns,
/// and its outcome reaches the loop as [`ExecutorEvent`]s, so the loop keeps answering reports.
pub trait Executor: Send {
    /// Short name for logs, e.g. "local".
    fn name(&self) -> &'static str;
    /// Before anything starts: can one trial ever fit? Err(NeverFits) shows the arithmetic.
    fn check_capacity(
        &self,
        workers: u32,
        per_worker: &Resources,
    ) -> Result<CapacityPlan, ExecutorError>;
    /// Whether a trial of this shape fits now, next to the trials that hold resources.
    fn has_room(&self, workers: u32, per_worker: &Resources) -> bool;
    /// Starts every worker of a trial; its end arrives later as [`ExecutorEvent::Exited`].
    fn start(&mut self, launch: TrialLaunch) -> Result<Placement, ExecutorError>;
    /// SIGTERM to the trial's process group(s) now, SIGKILL after `grace` if still alive. Idempotent.
    fn stop(&mut self, trial: TrialId, grace: Duration);
    /// The loop saw its Exited event: free its CPUs/GPUs.
    fn release(&mut self, trial: TrialId);
    /// The run loop's report channel, given once before the first `start`: executors whose
    /// trials run inside rtune (the simulator) report through it instead of the protocol
    /// server. Executors of real processes ignore it.
    fn attach_reports(
        &mut self,
        _reports: tokio::sync::mpsc::UnboundedSender<crate::server::ReportEvent>,
    ) {
    }
    /// Start ending everything still running: what [`Executor::stop`] does, for every trial
    /// (SIGTERM now, SIGKILL after `grace`). Returns at once, without waiting for anything;
    /// each run's end arrives as its usual [`ExecutorEvent::Exited`], so the caller waits for
    /// those (answering reports meanwhile). Idempotent.
    fn shutdown(&mut self, grace: Duration);
}

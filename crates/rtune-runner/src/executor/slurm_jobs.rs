//! The job-per-trial executor: every trial run is its own `sbatch` job with its own resources.
//!
//! rtune may run anywhere `sbatch` works (a login node, or a small head job); capacity follows
//! the queue. Each job runs the trial's tasks with `srun` inside the job, with the same task
//! wrapper and environment as the step executor. One task polls every submitted job with a single
//! `squeue --states=all` call per interval and turns SLURM's job states into what the run loop
//! knows: a queued job keeps the trial's
//! placement at `job 12 PENDING (Resources)` ([`ExecutorEvent::Placed`]), a finished job is
//! one [`ExecutorEvent::Exited`] whose message carries the job's state and reason.
//!
//! There is no accounting database on every cluster (no `sacct`), so the state is read while
//! SLURM still remembers the job (`MinJobAge`, 300 s by default): far longer than a poll
//! interval.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rtune_core::TrialId;
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;

use super::local::{plural, validate_launch, validate_request};
use super::slurm::{count_gpus, slurm_async, slurm_cpus};
use super::slurm_common::{
    check_program, clean_environment, process_environment, run_name, run_slurm_command,
    shell_quote, worker_wrapper,
};
use super::trial_env;
use super::{
    CapacityPlan, Executor, ExecutorError, ExecutorEvent, Placement, Resources, TrialLaunch,
};

/// Locks `mutex`, also after a thread panicked while holding it: every update of the maps and
/// states behind these locks is a single insert, remove or assignment, so what a panicking holder
/// left is still consistent, and dropping it would lose a watched job (its trial would never
/// end).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Job names start with this.
const JOB_PREFIX: &str = "rtune-";

/// Settings of the job-per-trial executor (`[executor]` with `type = "slurm-jobs"`).
#[derive(Clone, Debug, PartialEq)]
pub struct SlurmJobsConfig {
    /// `--partition` of every trial job; None = the cluster's default.
    pub partition: Option<String>,
    /// `--time` of every trial job (`HH:MM:SS`, `D-HH`); None = the partition's default.
    pub time_limit: Option<String>,
    /// `--account`; None = the user's default.
    pub account: Option<String>,
    /// Extra `sbatch` options (e.g. `--qos=short`, `--constraint=a100`).
    pub sbatch_args: Vec<String>,
    /// At most this many trial jobs submitted at once (queued or running); None = no limit.
    pub max_concurrent_trials: Option<u32>,
    /// How often each job's state is read.
    pub poll_interval: Duration,
}

impl Default for SlurmJobsConfig {
    fn default() -> Self {
        SlurmJobsConfig {
            partition: None,
            time_limit: None,
            account: None,
            sbatch_args: Vec::new(),
            max_concurrent_trials: None,
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// What SLURM says about a job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, ...
    pub state: String,
    /// `Resources`, `Priority`, `NonZeroExitCode`, `None`, ...
    pub reason: String,
    /// `exit:signal`, e.g. `3:0` or `0:15`.
    pub exit_code: String,
    /// The job's nodes (`n[1-2]`), `(null)` or empty while pending.
    pub nodes: String,
    /// How often SLURM has requeued the job (`scontrol requeue`, a preemption or a node failure
    /// with requeueing): more than 0 means the run rtune started was taken away.
    pub restarts: u32,
    /// When the job started running, in Unix seconds (None while it waits).
    pub start_time: Option<f64>,
}

impl JobStatus {
    /// The exit code and the number of the signal that ended the job (`exit_code` `3:0` is
    /// (3, 0), `0:9` is (0, 9)).
    pub fn exit(&self) -> (i32, i32) {
        self.exit_code
            .split_once(':')
            .map(|(c, s)| (c.parse::<i32>().unwrap_or(0), s.parse::<i32>().unwrap_or(0)))
            .unwrap_or((0, 0))
    }
}

/// Whether a job in this state will not change any more.
pub fn is_final_state(state: &str) -> bool {
    !matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "STOPPED"
            | "RESV_DEL_HOLD"
    )
}

/// The run's outcome for a job in a final state: success, and the message for the trial.
pub fn job_outcome(job_id: &str, status: &JobStatus) -> (bool, String) {
    let (code, signal) = status.exit();
    let exit = if signal > 0 {
        match signal {
            9 => "killed by signal 9 (SIGKILL)".to_string(),
            15 => "killed by signal 15 (SIGTERM)".to_string(),
            s => format!("killed by signal {s}"),
        }
    } else {
        format!("exit code {code}")
    };
    if status.state == "COMPLETED" && code == 0 && signal == 0 {
        return (true, "exit code 0".to_string());
    }
    let reason = match status.reason.as_str() {
        // A cancelled job keeps the reason it last waited for, which would only mislead.
        _ if status.state == "CANCELLED" => String::new(),
        "None" | "" => String::new(),
        r => format!(" ({r})"),
    };
    let what = match status.state.as_str() {
        "FAILED" | "COMPLETED" => exit,
        "TIMEOUT" => "reached its time limit (executor.time_limit)".to_string(),
        "OUT_OF_MEMORY" => "ran out of memory".to_string(),
        "CANCELLED" => "was cancelled".to_string(),
        "NODE_FAIL" => "lost a node".to_string(),
        "PREEMPTED" => "was preempted by a higher-priority job".to_string(),
        other => other.to_lowercase(),
    };
    (
        false,
        format!("job {job_id} {}{reason}: {what}", status.state),
    )
}

/// Whether the job's run was taken away through no fault of the trial: SLURM requeued the job
/// (it then waits to run the same script again), or it ended preempted or with a failed node.
/// The run loop restarts such a trial as a new run from its checkpoint, not as a failure.
pub fn lost_run(job_id: &str, status: &JobStatus) -> Option<String> {
    if status.restarts > 0 {
        return Some(format!(
            "job {job_id} was requeued by SLURM (scontrol requeue, a preemption or a node \
             failure); rtune cancelled the requeued job"
        ));
    }
    match status.state.as_str() {
        "PREEMPTED" => Some(format!(
            "job {job_id} was preempted by a higher-priority job"
        )),
        "NODE_FAIL" | "BOOT_FAIL" => {
            Some(format!("job {job_id} {}: its node failed", status.state))
        }
        _ => None,
    }
}

/// The exit code of a trial job that SLURM requeued and started again before rtune cancelled it:
/// the script exits at once without running the trial again.
pub const REQUEUED_RERUN_EXIT: i32 = 75;

/// The batch script of one trial run.
///
/// The environment (with the experiment's secret) is not in the script: `sbatch` exports its own
/// environment to the job, and rtune starts `sbatch` with the run's environment.
pub fn sbatch_script(launch: &TrialLaunch, job_name: &str, config: &SlurmJobsConfig) -> String {
    let cw = slurm_cpus(launch.resources.cpu);
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(&format!(
        "# rtune trial {} run {}: written by rtune's slurm-jobs executor\n",
        launch.trial.name(),
        launch.run
    ));
    let mut directive = |option: String| s.push_str(&format!("#SBATCH {option}\n"));
    directive(format!("--job-name={job_name}"));
    directive(format!("--ntasks={}", launch.workers));
    directive(format!("--cpus-per-task={cw}"));
    if launch.resources.gpu > 0 {
        directive(format!("--gpus-per-task={}", launch.resources.gpu));
    }
    directive(format!("--chdir={}", launch.cwd.display()));
    directive(format!("--output={}", launch.stdout.display()));
    directive(format!("--error={}", launch.stderr.display()));
    directive("--open-mode=append".to_string());
    // SLURM may requeue the job (a preemption, a node failure, `scontrol requeue`): rtune sees
    // the job's restart count, cancels the requeued job and starts the trial as a new run (with
    // a new token) from its latest checkpoint, not counted as a failure. A requeued job must
    // never run this run again (it would repeat its iterations with the old run's token): the
    // guard below ends a rerun that starts before rtune has cancelled it. `--requeue` lets
    // `scontrol requeue` work on clusters whose default is not to requeue.
    directive("--requeue".to_string());
    if let Some(partition) = &config.partition {
        directive(format!("--partition={partition}"));
    }
    if let Some(time) = &config.time_limit {
        directive(format!("--time={time}"));
    }
    if let Some(account) = &config.account {
        directive(format!("--account={account}"));
    }
    s.push_str(&format!(
        "if [ \"${{SLURM_RESTART_COUNT:-0}}\" != 0 ]; then\n  \
         echo \"rtune: job $SLURM_JOB_ID was requeued by SLURM; rtune restarts {} as a new run from its checkpoint\" >&2\n  \
         exit {REQUEUED_RERUN_EXIT}\nfi\n",
        launch.trial.name()
    ));
    // Rank 0 runs on the first node, where the batch script runs; the port depends on the job,
    // so jobs sharing a node differ.
    s.push_str(
        "MASTER_ADDR=$(hostname); MASTER_PORT=$((20000 + SLURM_JOB_ID % 40000))\n\
         export MASTER_ADDR MASTER_PORT\n",
    );
    let mut command = vec![
        "exec".to_string(),
        "srun".to_string(),
        "--kill-on-bad-exit=1".to_string(),
        "--input=none".to_string(),
        "sh".to_string(),
        "-c".to_string(),
        shell_quote(&trial_env::with_overrides(
            worker_wrapper(
                launch.workers,
                launch.resources.gpu == 0,
                &launch.stdout,
                &launch.stderr,
            ),
            &launch.env,
        )),
        "rtune-worker".to_string(),
    ];
    command.extend(launch.command.iter().map(|a| shell_quote(a)));
    s.push_str(&command.join(" "));
    s.push('\n');
    s
}

/// Submits each trial run as its own SLURM job.
pub struct SlurmJobsExecutor {
    config: SlurmJobsConfig,
    base_env: Vec<(String, String)>,
    trials: HashMap<TrialId, JobSlot>,
    /// The jobs the poller follows, by job id.
    watched: Arc<std::sync::Mutex<HashMap<String, Watched>>>,
    poller_started: bool,
    events: UnboundedSender<ExecutorEvent>,
}

/// A submitted run, from `start` until `release`.
struct JobSlot {
    shared: Arc<JobShared>,
    stop_requested: bool,
}

/// What the executor and the task watching a job both need.
struct JobShared {
    job_id: String,
    /// The last state seen.
    state: std::sync::Mutex<String>,
    /// Set once the job is in a final state and its Exited event is sent.
    finished: AtomicBool,
}

impl SlurmJobsExecutor {
    /// A new executor; `events` receives one [`ExecutorEvent::Exited`] per submitted run.
    pub fn new(
        config: SlurmJobsConfig,
        events: UnboundedSender<ExecutorEvent>,
    ) -> Result<Self, ExecutorError> {
        if config.max_concurrent_trials == Some(0) {
            return Err(ExecutorError::Invalid(
                "executor.max_concurrent_trials must be at least 1 (leave it out for no limit)"
                    .to_string(),
            ));
        }
        if config.poll_interval.is_zero() {
            return Err(ExecutorError::Invalid(
                "executor.poll_interval_s must be more than 0".to_string(),
            ));
        }
        Ok(SlurmJobsExecutor {
            config,
            base_env: clean_environment(process_environment()),
            trials: HashMap::new(),
            watched: Arc::new(std::sync::Mutex::new(HashMap::new())),
            poller_started: false,
            events,
        })
    }

    /// Replaces the environment jobs start from (default: rtune's own), without inherited SLURM
    /// variables.
    pub fn with_environment(mut self, env: Vec<(String, String)>) -> Self {
        self.base_env = clean_environment(env);
        self
    }

    fn job_env(&self, launch: &TrialLaunch) -> Vec<(String, String)> {
        // [trial.env] replaces or (with an empty value) unsets what rtune would set; the worker
        // wrapper re-applies it after setting RANK & co. and the script's MASTER_ADDR/PORT.
        let mut env = trial_env::merge(&self.base_env, &launch.env);
        if !trial_env::mentions(&launch.env, "OMP_NUM_THREADS") {
            env.push((
                "OMP_NUM_THREADS".to_string(),
                format!("{}", launch.resources.cpu.ceil().max(1.0)),
            ));
        }
        env
    }
}

/// Nodes of a partition as `(name, cpus, gpus)` from `sinfo -N -o '%N|%c|%G'`.
pub fn parse_sinfo_nodes(text: &str) -> Vec<(String, u32, u32)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split('|');
            let name = parts.next()?.trim().to_string();
            let cpus = parts.next()?.trim().parse().ok()?;
            let gres = parts.next().unwrap_or("").trim();
            let gpus = if gres == "(null)" {
                0
            } else {
                count_gpus(gres).unwrap_or(0)
            };
            Some((name, cpus, gpus))
        })
        .collect()
}

impl Executor for SlurmJobsExecutor {
    fn name(&self) -> &'static str {
        "slurm-jobs"
    }

    fn check_capacity(
        &self,
        workers: u32,
        per_worker: &Resources,
    ) -> Result<CapacityPlan, ExecutorError> {
        validate_request(workers, per_worker)?;
        let cw = slurm_cpus(per_worker.cpu);
        let gw = per_worker.gpu;
        let mut args = vec!["-h", "-N", "-o", "%N|%c|%G"];
        if let Some(partition) = &self.config.partition {
            args.extend(["-p", partition.as_str()]);
        }
        let nodes = parse_sinfo_nodes(&run_slurm_command("sinfo", &args)?);
        let where_ = match &self.config.partition {
            Some(p) => format!("partition {p}"),
            None => "the default partitions".to_string(),
        };
        if nodes.is_empty() {
            return Err(ExecutorError::NeverFits(format!(
                "sinfo lists no nodes in {where_}\nhint: check executor.partition (`sinfo -s` \
                 lists the partitions)"
            )));
        }
        let fitting = nodes
            .iter()
            .filter(|(_, c, g)| *c >= cw && *g >= gw)
            .count();
        if fitting == 0 {
            let listed: Vec<String> = nodes
                .iter()
                .map(|(n, c, g)| format!("{n} {c} CPUs {g} GPUs"))
                .collect();
            return Err(ExecutorError::NeverFits(format!(
                "a trial's task needs {cw} {} and {gw} {} on one node, but no node of \
                 {where_} has that ({})\nhint: lower trial.resources, or choose another \
                 executor.partition",
                plural(cw, "CPU", "CPUs"),
                plural(gw, "GPU", "GPUs"),
                listed.join(", ")
            )));
        }
        let limit = match self.config.max_concurrent_trials {
            Some(max) => {
                format!("at most {max} submitted at once (executor.max_concurrent_trials)")
            }
            None => "as many at once as SLURM starts".to_string(),
        };
        Ok(CapacityPlan {
            concurrent_trials: self.config.max_concurrent_trials.unwrap_or(u32::MAX),
            explanation: format!(
                "one SLURM job per trial ({workers} {} x {cw} {}{} each, {fitting} {} of \
                 {where_} can hold a task): {limit}",
                plural(workers, "task", "tasks"),
                plural(cw, "CPU", "CPUs"),
                if gw > 0 {
                    format!(" + {gw} {}", plural(gw, "GPU", "GPUs"))
                } else {
                    String::new()
                },
                plural(u32::try_from(fitting).unwrap_or(u32::MAX), "node", "nodes"),
            ),
        })
    }

    fn has_room(&self, workers: u32, per_worker: &Resources) -> bool {
        validate_request(workers, per_worker).is_ok()
            && self
                .config
                .max_concurrent_trials
                .is_none_or(|max| self.trials.len() < max as usize)
    }

    fn start(&mut self, launch: TrialLaunch) -> Result<Placement, ExecutorError> {
        let program = validate_launch(&launch, self.trials.contains_key(&launch.trial))?;
        if !self.has_room(launch.workers, &launch.resources) {
            return Err(ExecutorError::NoRoom {
                trial: launch.trial,
                reason: format!(
                    "{} trial jobs submitted (executor.max_concurrent_trials)",
                    self.trials.len()
                ),
            });
        }
        let env = self.job_env(&launch);
        check_program(program, &launch.cwd, &env)?;
        let job_name = run_name(JOB_PREFIX, launch.trial, launch.run);
        let script = sbatch_script(&launch, &job_name, &self.config);
        let script_path = launch
            .stdout
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("job-run{}.sbatch", launch.run));
        let io = |what: String| move |source| ExecutorError::Io { what, source };
        if let Some(dir) = script_path.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        }
        std::fs::write(&script_path, script)
            .map_err(io(format!("cannot write {}", script_path.display())))?;

        // Submitting takes milliseconds; the loop waits for it so the job id is known at once.
        let output = std::process::Command::new("sbatch")
            .arg("--parsable")
            .args(&self.config.sbatch_args)
            .arg(&script_path)
            .env_clear()
            .envs(env)
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ExecutorError::Spawn {
                program: "sbatch".to_string(),
                source,
            })?;
        if !output.status.success() {
            return Err(ExecutorError::Slurm(format!(
                "sbatch refused trial {}'s job ({}): {}",
                launch.trial.name(),
                script_path.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        // `--parsable` prints `id` or `id;cluster`.
        let job_id = stdout
            .trim()
            .split(';')
            .next()
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                ExecutorError::Slurm(format!(
                    "sbatch printed no job id for trial {}: {stdout:?}",
                    launch.trial.name()
                ))
            })?
            .to_string();
        let shared = Arc::new(JobShared {
            job_id: job_id.clone(),
            state: std::sync::Mutex::new("PENDING".to_string()),
            finished: AtomicBool::new(false),
        });
        let shape = JobShape {
            cpus: launch.workers * slurm_cpus(launch.resources.cpu),
            gpus: launch.workers * launch.resources.gpu,
        };
        lock(&self.watched).insert(
            job_id.clone(),
            Watched {
                trial: launch.trial,
                run: launch.run,
                shape,
                shared: Arc::clone(&shared),
                last_placement: queued_placement(&job_id, "submitted"),
                misses: 0,
            },
        );
        if !self.poller_started {
            self.poller_started = true;
            tokio::spawn(poll_jobs(
                Arc::clone(&self.watched),
                self.config.poll_interval,
                self.events.clone(),
            ));
        }
        self.trials.insert(
            launch.trial,
            JobSlot {
                shared,
                stop_requested: false,
            },
        );
        Ok(queued_placement(&job_id, "submitted"))
    }

    fn stop(&mut self, trial: TrialId, grace: Duration) {
        let Some(slot) = self.trials.get_mut(&trial) else {
            return;
        };
        if slot.stop_requested || slot.shared.finished.load(Ordering::SeqCst) {
            return;
        }
        slot.stop_requested = true;
        let shared = Arc::clone(&slot.shared);
        tokio::spawn(async move {
            let pending = *lock(&shared.state) == "PENDING";
            if pending {
                // Nothing runs yet: withdraw the job.
                let _ = slurm_async("scancel", &[&shared.job_id]).await;
                return;
            }
            // TERM to the job's steps (the trial's tasks), then the whole job after the grace.
            let _ = slurm_async("scancel", &["--signal=TERM", &shared.job_id]).await;
            tokio::time::sleep(grace).await;
            if !shared.finished.load(Ordering::SeqCst) {
                let _ = slurm_async("scancel", &[&shared.job_id]).await;
            }
        });
    }

    fn release(&mut self, trial: TrialId) {
        self.trials.remove(&trial);
    }

    fn shutdown(&mut self, grace: Duration) {
        // Each stop runs in its own task (TERM now, KILL after the grace); the supervising
        // tasks send the Exited events as the runs end.
        let trials: Vec<TrialId> = self.trials.keys().copied().collect();
        for trial in trials {
            self.stop(trial, grace);
        }
    }
}

/// One submitted run, as the poller follows it.
struct Watched {
    trial: TrialId,
    run: u32,
    /// What the job asked for, for the placement once it runs.
    shape: JobShape,
    shared: Arc<JobShared>,
    last_placement: Placement,
    /// Consecutive polls that did not list the job.
    misses: u32,
}

/// The CPUs and GPUs a job asked for, over all its tasks.
#[derive(Clone, Copy, Debug)]
struct JobShape {
    cpus: u32,
    gpus: u32,
}

/// A job waiting in SLURM's queue, for `reason` (`Resources`, `Priority`, `submitted`).
fn queued_placement(job_id: &str, reason: &str) -> Placement {
    Placement {
        executor: rtune_core::ExecutorKind::SlurmJob,
        queued: true,
        queue_reason: Some(reason.to_string()),
        job_id: Some(job_id.to_string()),
        step_id: None,
        nodes: Vec::new(),
        label: format!("job {job_id} PENDING ({reason})"),
    }
}

/// A job running on `nodes` (squeue's host list); its CPUs and GPUs are shown per job, split
/// evenly over its nodes.
fn running_placement(job_id: &str, nodes: &str, shape: JobShape) -> Placement {
    let hosts =
        super::slurm_common::expand_hostlist(nodes).unwrap_or_else(|_| vec![nodes.to_string()]);
    let count = u32::try_from(hosts.len().max(1)).unwrap_or(1);
    let mut label = format!("job {job_id} {nodes} cpu={}", shape.cpus);
    if shape.gpus > 0 {
        label.push_str(&format!(" gpus={}", shape.gpus));
    }
    Placement {
        executor: rtune_core::ExecutorKind::SlurmJob,
        queued: false,
        queue_reason: None,
        job_id: Some(job_id.to_string()),
        step_id: None,
        nodes: hosts
            .into_iter()
            .map(|node| rtune_core::NodeShare {
                node,
                cpus: shape.cpus / count,
                gpus: Vec::new(),
                gpu_count: shape.gpus / count,
            })
            .collect(),
        label,
    }
}

/// Polls after which a job squeue no longer lists is taken as gone.
const MISSES_BEFORE_GONE: u32 = 5;
/// Consecutive failed polls after which rtune warns that it cannot see its jobs (it keeps
/// asking: a failed squeue says nothing about whether a job ended).
const FAILED_POLLS_BEFORE_WARNING: u32 = 30;

/// What one `squeue --states=all -j LIST` call says.
#[derive(Debug, PartialEq)]
pub enum SqueueAnswer {
    /// The jobs squeue lists (it leaves out those it has forgotten).
    Listed(HashMap<String, JobStatus>),
    /// squeue knows none of the jobs ("Invalid job id"): they ended longer than MinJobAge ago.
    NoneKnown,
    /// squeue could not answer (not started, the controller unreachable): nothing is known.
    Failed(String),
}

/// Reads the outcome of a `squeue -h --states=all -j LIST -O SQUEUE_FORMAT` call.
pub fn read_squeue(output: std::io::Result<std::process::Output>) -> SqueueAnswer {
    match output {
        Ok(out) if out.status.success() => {
            SqueueAnswer::Listed(parse_squeue_jobs(&String::from_utf8_lossy(&out.stdout)))
        }
        // squeue has no exit code for this case: its message is the only sign.
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("Invalid job id") => {
            SqueueAnswer::NoneKnown
        }
        Ok(out) => SqueueAnswer::Failed(format!(
            "squeue failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => SqueueAnswer::Failed(format!("cannot run squeue: {e}")),
    }
}

/// Follows every submitted job with one `squeue` call per interval (one request to the
/// controller however many trials run); sends Placed on changes while a job waits or runs, then
/// its single Exited. Ends when the executor is gone and nothing is left to follow.
async fn poll_jobs(
    watched: Arc<std::sync::Mutex<HashMap<String, Watched>>>,
    interval: Duration,
    events: UnboundedSender<ExecutorEvent>,
) {
    let mut failed_polls = 0u32;
    loop {
        tokio::time::sleep(interval).await;
        let ids: Vec<String> = lock(&watched).keys().cloned().collect();
        if ids.is_empty() {
            // Only this task holds the map: the executor is gone.
            if Arc::strong_count(&watched) == 1 {
                return;
            }
            continue;
        }
        let list = ids.join(",");
        let output = Command::new("squeue")
            .args(["-h", "--states=all", "-j", &list, "-O", SQUEUE_FORMAT])
            // Start times as Unix seconds.
            .env("SLURM_TIME_FORMAT", "%s")
            .stdin(Stdio::null())
            .output()
            .await;
        let statuses = match read_squeue(output) {
            SqueueAnswer::Listed(jobs) => {
                if failed_polls >= FAILED_POLLS_BEFORE_WARNING {
                    tracing::warn!("squeue answers again after {failed_polls} failed polls");
                }
                failed_polls = 0;
                jobs
            }
            SqueueAnswer::NoneKnown => {
                failed_polls = 0;
                HashMap::new()
            }
            SqueueAnswer::Failed(why) => {
                // The jobs may well be running (their trials still report): never take them as
                // ended on this, or their trials would be restarted while the jobs run on.
                failed_polls += 1;
                if failed_polls == FAILED_POLLS_BEFORE_WARNING {
                    tracing::warn!(
                        "cannot read the state of trial jobs {list} for {failed_polls} polls in a \
                         row ({why}); still trying"
                    );
                }
                continue;
            }
        };
        let mut ended: HashMap<String, Ending> = HashMap::new();
        let mut map = lock(&watched);
        for (id, watch) in map.iter_mut() {
            let Some(status) = statuses.get(id) else {
                watch.misses += 1;
                if watch.misses >= MISSES_BEFORE_GONE {
                    ended.insert(
                        id.clone(),
                        Ending::Gone(format!(
                            "job {id} is no longer known to SLURM (it ended more than MinJobAge \
                             ago, before rtune looked)"
                        )),
                    );
                }
                continue;
            };
            watch.misses = 0;
            if let Some(message) = lost_run(id, status) {
                // The run is over; SLURM must not run it again (a requeued job waits for its
                // begin time; the script's guard ends it should it start first).
                if !is_final_state(&status.state) {
                    cancel_requeued(id.clone());
                }
                ended.insert(id.clone(), Ending::Lost(message));
                continue;
            }
            lock(&watch.shared.state).clone_from(&status.state);
            let running = !status.nodes.is_empty() && status.nodes != "(null)";
            let placement = if running {
                running_placement(id, &status.nodes, watch.shape)
            } else {
                let mut placement = queued_placement(id, &status.reason);
                if status.state != "PENDING" {
                    placement.label = format!("job {id} {} ({})", status.state, status.reason);
                }
                placement
            };
            // A short job may start and end between two looks: its placement still says where
            // it ran.
            if placement != watch.last_placement && (!is_final_state(&status.state) || running) {
                watch.last_placement.clone_from(&placement);
                let _ = events.send(ExecutorEvent::Placed {
                    trial: watch.trial,
                    run: watch.run,
                    placement,
                    running,
                    started_at: status.start_time.filter(|_| running),
                });
            }
            if is_final_state(&status.state) {
                ended.insert(id.clone(), Ending::Final(status.clone()));
            }
        }
        drop(map);
        finish_all(&watched, ended, &events);
    }
}

/// How a followed job's run ended.
enum Ending {
    /// The job reached a final state.
    Final(JobStatus),
    /// SLURM took the run away (requeue, preemption, node failure): see [`lost_run`].
    Lost(String),
    /// squeue no longer lists the job.
    Gone(String),
}

/// Cancels a job SLURM requeued, so it never runs its old run again.
fn cancel_requeued(job_id: String) {
    tokio::spawn(async move {
        if let Err(e) = slurm_async("scancel", &[&job_id]).await {
            tracing::warn!("cannot cancel requeued job {job_id}: {e}");
        }
    });
}

/// Sends the Exited (or Lost) events of jobs that ended (or were given up) and stops following
/// them.
fn finish_all(
    watched: &std::sync::Mutex<HashMap<String, Watched>>,
    ended: HashMap<String, Ending>,
    events: &UnboundedSender<ExecutorEvent>,
) {
    let mut map = lock(watched);
    for (id, outcome) in ended {
        let Some(watch) = map.remove(&id) else {
            continue;
        };
        watch.shared.finished.store(true, Ordering::SeqCst);
        let (trial, run) = (watch.trial, watch.run);
        let event = match outcome {
            Ending::Final(status) => {
                let (success, message) = job_outcome(&id, &status);
                ExecutorEvent::Exited {
                    trial,
                    run,
                    success,
                    message,
                }
            }
            Ending::Lost(message) => ExecutorEvent::Lost {
                trial,
                run,
                message,
            },
            Ending::Gone(message) => ExecutorEvent::Exited {
                trial,
                run,
                success: false,
                message,
            },
        };
        let _ = events.send(event);
    }
}

/// Asks squeue once about one job (blocking; for the CLI, which follows a chain of head jobs):
/// its status, None when squeue does not list it (never submitted, or ended longer than
/// MinJobAge ago), or why squeue could not answer.
pub fn query_job(job_id: &str) -> Result<Option<JobStatus>, String> {
    let output = std::process::Command::new("squeue")
        .args(["-h", "--states=all", "-j", job_id, "-O", SQUEUE_FORMAT])
        .env("SLURM_TIME_FORMAT", "%s")
        .stdin(Stdio::null())
        .output();
    match read_squeue(output) {
        SqueueAnswer::Listed(mut jobs) => Ok(jobs.remove(job_id)),
        SqueueAnswer::NoneKnown => Ok(None),
        SqueueAnswer::Failed(why) => Err(why),
    }
}

/// The fields rtune reads from `squeue -O`, `|`-separated.
const SQUEUE_FORMAT: &str =
    "JobID:|,State:|,Reason:|,NodeList:|,exit_code:|,RestartCnt:|,StartTime:|";

/// Parses `squeue -h -O JobID:|,State:|,Reason:|,NodeList:|,exit_code:|,RestartCnt:|,StartTime:|`
/// lines (start times as Unix seconds: `SLURM_TIME_FORMAT=%s`). squeue gives the exit code as a
/// wait status (768 = exit code 3, 9 = killed by signal 9); it becomes `3:0` / `0:9` as
/// `scontrol` writes it.
pub fn parse_squeue_jobs(text: &str) -> HashMap<String, JobStatus> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            if fields.len() < 5 || fields[0].is_empty() {
                return None;
            }
            let wait_status: i32 = fields[4].parse().unwrap_or(0);
            Some((
                fields[0].to_string(),
                JobStatus {
                    state: fields[1].to_string(),
                    reason: fields[2].to_string(),
                    exit_code: format!("{}:{}", (wait_status >> 8) & 0xff, wait_status & 0x7f),
                    nodes: fields[3].to_string(),
                    restarts: fields.get(5).and_then(|f| f.parse().ok()).unwrap_or(0),
                    start_time: fields
                        .get(6)
                        .and_then(|f| f.parse::<f64>().ok())
                        .filter(|t| *t > 0.0),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn status(state: &str, reason: &str, exit: &str) -> JobStatus {
        JobStatus {
            state: state.to_string(),
            reason: reason.to_string(),
            exit_code: exit.to_string(),
            nodes: String::new(),
            restarts: 0,
            start_time: None,
        }
    }

    #[test]
    fn parses_squeue_jobs() {
        let jobs = parse_squeue_jobs(
            "171|FAILED|NonZeroExitCode|n1|768|\n172|COMPLETED|None|n[1-2]|0|\n\
             173|PENDING|Resources|||\n174|FAILED|None|n1|9|\n",
        );
        assert_eq!(
            jobs["171"],
            JobStatus {
                state: "FAILED".into(),
                reason: "NonZeroExitCode".into(),
                exit_code: "3:0".into(),
                nodes: "n1".into(),
                restarts: 0,
                start_time: None,
            }
        );
        assert_eq!(jobs["172"].nodes, "n[1-2]");
        assert_eq!(jobs["173"].state, "PENDING");
        assert_eq!(jobs["173"].exit_code, "0:0");
        assert_eq!(jobs["174"].exit_code, "0:9");
        assert_eq!(jobs.len(), 4);
    }

    #[test]
    fn reads_restart_counts_and_start_times() {
        let jobs = parse_squeue_jobs(
            "180|PENDING|BeginTime||0|1|1795868146|\n181|RUNNING|None|n2|0|0|1795868150|\n\
             182|PENDING|Resources||0|0|N/A|\n",
        );
        assert_eq!(jobs["180"].restarts, 1);
        assert_eq!(jobs["181"].restarts, 0);
        assert_eq!(jobs["181"].start_time, Some(1_795_868_150.0));
        assert_eq!(jobs["182"].start_time, None);
        let lost = lost_run("180", &jobs["180"]).expect("a requeued job's run is lost");
        assert!(lost.contains("requeued"), "{lost}");
        assert_eq!(lost_run("181", &jobs["181"]), None);
        assert!(lost_run("9", &status("PREEMPTED", "None", "0:15")).is_some());
        assert!(lost_run("9", &status("NODE_FAIL", "None", "0:9")).is_some());
        assert_eq!(lost_run("9", &status("FAILED", "None", "3:0")), None);
    }

    #[test]
    fn maps_job_states_to_outcomes() {
        assert_eq!(
            job_outcome("5", &status("COMPLETED", "None", "0:0")),
            (true, "exit code 0".to_string())
        );
        assert_eq!(
            job_outcome("5", &status("FAILED", "NonZeroExitCode", "3:0")),
            (
                false,
                "job 5 FAILED (NonZeroExitCode): exit code 3".to_string()
            )
        );
        assert_eq!(
            job_outcome("5", &status("CANCELLED", "Resources", "0:15")),
            (false, "job 5 CANCELLED: was cancelled".to_string())
        );
        assert_eq!(
            job_outcome("5", &status("TIMEOUT", "TimeLimit", "0:0")).1,
            "job 5 TIMEOUT (TimeLimit): reached its time limit (executor.time_limit)"
        );
        assert_eq!(
            job_outcome("5", &status("FAILED", "None", "0:9")).1,
            "job 5 FAILED: killed by signal 9 (SIGKILL)"
        );
        assert!(!is_final_state("PENDING"));
        assert!(!is_final_state("COMPLETING"));
        assert!(is_final_state("COMPLETED"));
        assert!(is_final_state("OUT_OF_MEMORY"));
    }

    #[test]
    fn writes_the_batch_script() {
        let launch = TrialLaunch {
            trial: TrialId(3),
            run: 2,
            command: vec!["python".into(), "train it.py".into()],
            env: vec![("RTUNE_SECRET".into(), "s3cret".into())],
            workers: 2,
            resources: Resources { cpu: 1.5, gpu: 1 },
            cwd: PathBuf::from("/work"),
            stdout: PathBuf::from("/r/trial_00003/stdout.log"),
            stderr: PathBuf::from("/r/trial_00003/stderr.log"),
        };
        let config = SlurmJobsConfig {
            partition: Some("gpu".into()),
            time_limit: Some("01:00:00".into()),
            ..SlurmJobsConfig::default()
        };
        let script = sbatch_script(&launch, "rtune-trial_00003-run2", &config);
        for line in [
            "#SBATCH --job-name=rtune-trial_00003-run2\n",
            "#SBATCH --ntasks=2\n",
            "#SBATCH --cpus-per-task=2\n",
            "#SBATCH --gpus-per-task=1\n",
            "#SBATCH --chdir=/work\n",
            "#SBATCH --output=/r/trial_00003/stdout.log\n",
            "#SBATCH --open-mode=append\n",
            "#SBATCH --requeue\n",
            "if [ \"${SLURM_RESTART_COUNT:-0}\" != 0 ]; then\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --time=01:00:00\n",
            "exec srun --kill-on-bad-exit=1",
        ] {
            assert!(script.contains(line), "missing {line:?} in\n{script}");
        }
        assert!(
            script.ends_with(" rtune-worker 'python' 'train it.py'\n"),
            "{script}"
        );
        assert!(
            !script.contains("s3cret"),
            "the secret stays out of the script"
        );
        assert!(!script.contains("--account"));
    }

    #[tokio::test]
    async fn a_job_submitted_after_a_panic_poisoned_the_lock_is_still_watched() {
        use std::os::unix::fs::PermissionsExt;
        let fake = tempfile::tempdir().expect("tempdir");
        let sbatch = fake.path().join("sbatch");
        std::fs::write(&sbatch, "#!/bin/sh\necho 999999001\n").expect("write sbatch");
        std::fs::set_permissions(&sbatch, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let (tx, _events) = tokio::sync::mpsc::unbounded_channel();
        let mut executor = SlurmJobsExecutor::new(SlurmJobsConfig::default(), tx)
            .expect("executor")
            .with_environment(vec![(
                "PATH".into(),
                format!("{}:/usr/bin:/bin", fake.path().display()),
            )]);
        let watched = Arc::clone(&executor.watched);
        let _ = std::thread::spawn(move || {
            let _held = watched.lock();
            panic!("a panic while the watched jobs are locked (expected by this test)");
        })
        .join();
        assert!(executor.watched.is_poisoned());
        let work = tempfile::tempdir().expect("tempdir");
        let placement = executor
            .start(TrialLaunch {
                trial: TrialId(0),
                run: 0,
                command: vec!["true".into()],
                env: Vec::new(),
                workers: 1,
                resources: Resources { cpu: 1.0, gpu: 0 },
                cwd: work.path().to_path_buf(),
                stdout: work.path().join("stdout.log"),
                stderr: work.path().join("stderr.log"),
            })
            .expect("submitted");
        assert_eq!(placement.job_id.as_deref(), Some("999999001"));
        assert!(
            lock(&executor.watched).contains_key("999999001"),
            "the job is followed, so its trial will end"
        );
    }

    #[test]
    fn squeue_answers_are_read_without_guessing() {
        use std::os::unix::process::ExitStatusExt;
        let output = |code: i32, stdout: &str, stderr: &str| {
            Ok(std::process::Output {
                status: std::process::ExitStatus::from_raw(code << 8),
                stdout: stdout.as_bytes().to_vec(),
                stderr: stderr.as_bytes().to_vec(),
            })
        };
        let SqueueAnswer::Listed(jobs) = read_squeue(output(0, "7|RUNNING|None|n1|0|\n", ""))
        else {
            panic!("a listing");
        };
        assert_eq!(jobs["7"].state, "RUNNING");
        assert_eq!(
            read_squeue(output(
                1,
                "",
                "slurm_load_jobs error: Invalid job id specified"
            )),
            SqueueAnswer::NoneKnown
        );
        let SqueueAnswer::Failed(why) = read_squeue(output(
            1,
            "",
            "slurm_load_jobs error: Unable to contact slurm controller",
        )) else {
            panic!("a failure");
        };
        assert!(why.contains("Unable to contact"), "{why}");
        assert!(matches!(
            read_squeue(Err(std::io::Error::from(std::io::ErrorKind::NotFound))),
            SqueueAnswer::Failed(_)
        ));
    }

    #[test]
    fn reads_sinfo_nodes() {
        assert_eq!(
            parse_sinfo_nodes("n1|4|gpu:2\nn2|8|(null)\nn3|16|gpu:a100:4(S:0-1)\n"),
            vec![
                ("n1".to_string(), 4, 2),
                ("n2".to_string(), 8, 0),
                ("n3".to_string(), 16, 4)
            ]
        );
    }
}

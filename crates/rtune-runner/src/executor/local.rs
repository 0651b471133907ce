//! The local executor: trial workers are child processes of rtune on this node.
//!
//! Every worker runs in its own process group, so stopping a trial reaches everything it
//! started (data loader processes, shells, `torchrun` children). When a worker exits, whatever
//! it left behind in its process group is killed before the trial is reported as exited: a
//! stray process must not keep using the CPUs and GPUs that are about to go to the next trial.
//!
//! With a [`Supervisor`] (what `rtune run` uses) each worker runs under the supervising shim
//! ([`super::shim`]), which also catches processes that left the process group (`setsid`) and
//! ends the trial when rtune itself dies, even by SIGKILL. The executor then signals the shim,
//! never the worker: [`shim::STOP_SIGNAL`] to stop, [`shim::KILL_SIGNAL`] to kill at once.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rtune_core::TrialId;
use tokio::process::{Child, Command};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::resources::{NodeResources, detect_cpus, detect_gpus};
use super::shim::{self, Supervisor};
use super::slurm_common::check_program;
use super::trial_env;
use super::{
    CapacityPlan, Executor, ExecutorError, ExecutorEvent, Placement, Resources, TrialLaunch,
};

/// Slack for comparing sums of fractional CPU counts (0.1 + 0.2 must fit into 0.3).
const CPU_EPSILON: f64 = 1e-9;
/// How long the other workers of a trial get to exit after one of them failed.
const PEER_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for SIGKILLed processes to disappear before giving up on them (a process
/// stuck in uninterruptible sleep cannot be hurried).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for a process group to empty; the kernel offers no event for it.
const GROUP_POLL: Duration = Duration::from_millis(10);

/// Settings of the local executor (`[executor]` in the experiment file).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalExecutorConfig {
    /// CPUs to hand out; None = detect.
    pub cpus: Option<f64>,
    /// GPU ids to hand out; None = detect (`CUDA_VISIBLE_DEVICES`, else `nvidia-smi`).
    pub gpus: Option<Vec<String>>,
    /// CPUs kept free for rtune itself and everything else on the node.
    pub reserve_cpus: f64,
    /// Upper bound on trials running at once; None = as many as fit.
    pub max_concurrent_trials: Option<u32>,
    /// Run every worker under the supervising shim (see the module docs); None = start the
    /// workers directly (nothing then ends them if rtune is SIGKILLed).
    pub supervisor: Option<Supervisor>,
}

/// Runs trial workers as local child processes and books CPUs and GPUs for them.
pub struct LocalExecutor {
    node: NodeResources,
    reserve_cpus: f64,
    max_concurrent_trials: Option<u32>,
    used_cpus: f64,
    /// Per entry of `node.gpus`: whether a trial holds it.
    gpu_taken: Vec<bool>,
    trials: HashMap<TrialId, TrialSlot>,
    events: UnboundedSender<ExecutorEvent>,
    supervisor: Option<Supervisor>,
}

/// A started trial, from `start` until `release`.
struct TrialSlot {
    cpus: f64,
    gpu_indices: Vec<usize>,
    /// One per worker: the worker's pid, which is also its process group id.
    process_groups: Vec<i32>,
    shared: Arc<TrialShared>,
    stop_requested: bool,
}

/// State shared with the task that supervises a trial's workers.
struct TrialShared {
    /// Set once every worker is reaped and its process group is empty. After that the process
    /// group ids may be reused by unrelated processes, so nothing may signal them any more.
    finished: AtomicBool,
    /// How to end the workers at once: SIGKILL to their groups, or [`shim::KILL_SIGNAL`] to
    /// their shims (a SIGKILLed shim could no longer clean up).
    kill_signal: i32,
}

impl LocalExecutor {
    /// An executor for this node; detects what `config` leaves open. `events` receives one
    /// [`ExecutorEvent::Exited`] per started run.
    pub fn new(
        config: LocalExecutorConfig,
        events: UnboundedSender<ExecutorEvent>,
    ) -> Result<Self, ExecutorError> {
        let cpus = match config.cpus {
            Some(cpus) if !(cpus.is_finite() && cpus > 0.0) => {
                return Err(ExecutorError::Invalid(format!(
                    "executor.cpus must be a positive number, got {cpus}"
                )));
            }
            Some(cpus) => cpus,
            None => detect_cpus(),
        };
        if !(config.reserve_cpus.is_finite() && config.reserve_cpus >= 0.0) {
            return Err(ExecutorError::Invalid(format!(
                "executor.reserve_cpus must be 0 or more, got {}",
                config.reserve_cpus
            )));
        }
        if config.max_concurrent_trials == Some(0) {
            return Err(ExecutorError::Invalid(
                "executor.max_concurrent_trials must be at least 1 (leave it out for no limit)"
                    .to_string(),
            ));
        }
        let gpus = config.gpus.unwrap_or_else(detect_gpus);
        for (i, gpu) in gpus.iter().enumerate() {
            if gpu.trim().is_empty() || gpu.contains(',') {
                return Err(ExecutorError::Invalid(format!(
                    "executor.gpus: {gpu:?} is not a GPU id (use ids like \"0\" or UUIDs)"
                )));
            }
            if gpus[..i].contains(gpu) {
                return Err(ExecutorError::Invalid(format!(
                    "executor.gpus lists GPU {gpu} twice"
                )));
            }
        }
        Ok(LocalExecutor {
            gpu_taken: vec![false; gpus.len()],
            node: NodeResources { cpus, gpus },
            reserve_cpus: config.reserve_cpus,
            max_concurrent_trials: config.max_concurrent_trials,
            used_cpus: 0.0,
            trials: HashMap::new(),
            events,
            supervisor: config.supervisor,
        })
    }

    /// The resources this executor hands out.
    pub fn node(&self) -> &NodeResources {
        &self.node
    }

    /// Why a trial of this shape does not fit now; None if it does.
    fn missing_room(&self, workers: u32, per_worker: &Resources) -> Option<String> {
        if workers == 0 {
            return Some("a trial needs at least one worker".to_string());
        }
        if let Some(max) = self.max_concurrent_trials
            && self.trials.len() >= max as usize
        {
            return Some(format!(
                "{} trials hold resources (executor.max_concurrent_trials = {max})",
                self.trials.len()
            ));
        }
        let need_cpus = f64::from(workers) * per_worker.cpu;
        let free_cpus = self.node.cpus - self.reserve_cpus - self.used_cpus;
        if need_cpus > free_cpus + CPU_EPSILON {
            return Some(format!(
                "needs {} CPUs, {} free",
                fmt_num(need_cpus),
                fmt_num(free_cpus.max(0.0))
            ));
        }
        let need_gpus = workers as usize * per_worker.gpu as usize;
        let free_gpus = self.gpu_taken.iter().filter(|taken| !**taken).count();
        if need_gpus > free_gpus {
            return Some(format!("needs {need_gpus} GPUs, {free_gpus} free"));
        }
        None
    }

    /// Spawns every worker of `launch` on the given GPUs; on failure the workers already
    /// started are killed.
    fn spawn_workers(
        &self,
        launch: &TrialLaunch,
        gpu_indices: &[usize],
    ) -> Result<Vec<(u32, Child, i32)>, ExecutorError> {
        let master_port = free_port()?;
        let gpus_per_worker = launch.resources.gpu as usize;
        let mut started: Vec<(u32, Child, i32)> = Vec::new();
        for rank in 0..launch.workers {
            let first = rank as usize * gpus_per_worker;
            let worker_gpus: Vec<&str> = gpu_indices[first..first + gpus_per_worker]
                .iter()
                .map(|&i| self.node.gpus[i].as_str())
                .collect();
            match spawn_worker(
                launch,
                rank,
                &worker_gpus,
                master_port,
                self.supervisor.as_ref(),
            ) {
                Ok((child, pgid)) => started.push((rank, child, pgid)),
                Err(error) => {
                    for (_, _, pgid) in &started {
                        signal_group(*pgid, libc::SIGKILL);
                    }
                    // Dropped children are reaped by tokio in the background.
                    return Err(error);
                }
            }
        }
        Ok(started)
    }
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn check_capacity(
        &self,
        workers: u32,
        per_worker: &Resources,
    ) -> Result<CapacityPlan, ExecutorError> {
        plan_capacity(
            &self.node,
            self.reserve_cpus,
            self.max_concurrent_trials,
            workers,
            per_worker,
        )
    }

    fn has_room(&self, workers: u32, per_worker: &Resources) -> bool {
        self.missing_room(workers, per_worker).is_none()
    }

    fn start(&mut self, launch: TrialLaunch) -> Result<Placement, ExecutorError> {
        validate_launch(&launch, self.trials.contains_key(&launch.trial))?;
        if let Some(reason) = self.missing_room(launch.workers, &launch.resources) {
            return Err(ExecutorError::NoRoom {
                trial: launch.trial,
                reason,
            });
        }
        let need_gpus = launch.workers as usize * launch.resources.gpu as usize;
        let gpu_indices: Vec<usize> = (0..self.node.gpus.len())
            .filter(|&i| !self.gpu_taken[i])
            .take(need_gpus)
            .collect();
        let workers = self.spawn_workers(&launch, &gpu_indices)?;

        let cpus = f64::from(launch.workers) * launch.resources.cpu;
        self.used_cpus += cpus;
        for &i in &gpu_indices {
            self.gpu_taken[i] = true;
        }
        let process_groups: Vec<i32> = workers.iter().map(|(_, _, pgid)| *pgid).collect();
        let shared = Arc::new(TrialShared {
            finished: AtomicBool::new(false),
            kill_signal: if self.supervisor.is_some() {
                shim::KILL_SIGNAL
            } else {
                libc::SIGKILL
            },
        });
        tokio::spawn(supervise(
            launch.trial,
            launch.run,
            workers,
            Arc::clone(&shared),
            self.events.clone(),
        ));
        self.trials.insert(
            launch.trial,
            TrialSlot {
                cpus,
                gpu_indices: gpu_indices.clone(),
                process_groups,
                shared,
                stop_requested: false,
            },
        );

        let mut label = format!("local cpu={}", fmt_num(cpus));
        if !gpu_indices.is_empty() {
            let ids: Vec<&str> = gpu_indices
                .iter()
                .map(|&i| self.node.gpus[i].as_str())
                .collect();
            label.push_str(&format!(" gpu={}", ids.join(",")));
        }
        if launch.workers > 1 {
            label.push_str(&format!(" workers={}", launch.workers));
        }
        Ok(Placement {
            executor: rtune_core::ExecutorKind::Local,
            queued: false,
            queue_reason: None,
            job_id: None,
            step_id: None,
            nodes: vec![rtune_core::NodeShare {
                node: "localhost".into(),
                cpus: cpus.ceil() as u32,
                gpus: gpu_indices.iter().map(|&i| i as u32).collect(),
                gpu_count: gpu_indices.len() as u32,
            }],
            label,
        })
    }

    fn stop(&mut self, trial: TrialId, grace: Duration) {
        let Some(slot) = self.trials.get_mut(&trial) else {
            return;
        };
        if slot.stop_requested || slot.shared.finished.load(Ordering::SeqCst) {
            return;
        }
        slot.stop_requested = true;
        for &pgid in &slot.process_groups {
            signal_group(pgid, libc::SIGTERM);
        }
        tokio::spawn(kill_after(
            grace,
            slot.process_groups.clone(),
            Arc::clone(&slot.shared),
        ));
    }

    fn release(&mut self, trial: TrialId) {
        let Some(slot) = self.trials.remove(&trial) else {
            return;
        };
        self.used_cpus -= slot.cpus;
        if self.trials.is_empty() || self.used_cpus < 0.0 {
            // Forget the rounding drift of fractional CPU sums.
            self.used_cpus = 0.0;
        }
        for i in slot.gpu_indices {
            self.gpu_taken[i] = false;
        }
    }

    fn shutdown(&mut self, grace: Duration) {
        let trials: Vec<TrialId> = self.trials.keys().copied().collect();
        for trial in trials {
            // SIGTERM now, SIGKILL after the grace from a timer task; the supervising tasks
            // send the Exited events as the workers go.
            self.stop(trial, grace);
        }
    }
}

/// How many trials of this shape fit on `node` at once, or why not even one does.
///
/// A trial needs `workers x per_worker.cpu` CPUs out of `node.cpus - reserve_cpus` and
/// `workers x per_worker.gpu` distinct GPUs; `max_concurrent_trials` caps the result.
pub fn plan_capacity(
    node: &NodeResources,
    reserve_cpus: f64,
    max_concurrent_trials: Option<u32>,
    workers: u32,
    per_worker: &Resources,
) -> Result<CapacityPlan, ExecutorError> {
    validate_request(workers, per_worker)?;
    let w = workers;
    let need_cpus = f64::from(w) * per_worker.cpu;
    if reserve_cpus + need_cpus > node.cpus + CPU_EPSILON {
        return Err(ExecutorError::NeverFits(format!(
            "a trial needs {w} {} x {} {} = {} CPUs, but this node has {}{}:\n  \
             reserve + trials x workers x CPUs per worker <= node CPUs: {} + 1 x {w} x {} = {} > {}\n\
             hint: lower trial.resources.cpu or trial.workers, set executor.cpus, or lower executor.reserve_cpus",
            plural(w, "worker", "workers"),
            fmt_num(per_worker.cpu),
            if per_worker.cpu == 1.0 { "CPU" } else { "CPUs" },
            fmt_num(need_cpus),
            fmt_num(node.cpus),
            if reserve_cpus > 0.0 {
                format!(" ({} reserved)", fmt_num(reserve_cpus))
            } else {
                String::new()
            },
            fmt_num(reserve_cpus),
            fmt_num(per_worker.cpu),
            fmt_num(reserve_cpus + need_cpus),
            fmt_num(node.cpus),
        )));
    }
    let need_gpus = w as usize * per_worker.gpu as usize;
    let node_gpus = node.gpus.len();
    if need_gpus > node_gpus {
        let listed = if node.gpus.is_empty() {
            "none".to_string()
        } else {
            node.gpus.join(",")
        };
        return Err(ExecutorError::NeverFits(format!(
            "a trial needs {w} {} x {} {} = {need_gpus} GPUs, but this node has {node_gpus} ({listed}):\n  \
             trials x workers x GPUs per worker <= node GPUs: 1 x {w} x {} = {need_gpus} > {node_gpus}\n\
             hint: lower trial.resources.gpu or trial.workers, or list more GPUs in executor.gpus",
            plural(w, "worker", "workers"),
            per_worker.gpu,
            plural(per_worker.gpu, "GPU", "GPUs"),
            per_worker.gpu,
        )));
    }

    // Each limit: how many trials it allows and how that follows from the numbers.
    let shape = |amount: String, unit: &str| {
        format!("({w} {} x {amount} {unit})", plural(w, "worker", "workers"))
    };
    let mut limits: Vec<(u32, String)> = Vec::new();
    if need_cpus > CPU_EPSILON {
        let available = node.cpus - reserve_cpus;
        let count = ((available + CPU_EPSILON) / need_cpus)
            .floor()
            .min(f64::from(u32::MAX)) as u32;
        let reserved = if reserve_cpus > 0.0 {
            format!(
                " ({} minus {} reserved)",
                fmt_num(node.cpus),
                fmt_num(reserve_cpus)
            )
        } else {
            String::new()
        };
        limits.push((
            count,
            format!(
                "{} CPUs{reserved} / {}",
                fmt_num(available),
                shape(
                    fmt_num(per_worker.cpu),
                    if per_worker.cpu == 1.0 { "CPU" } else { "CPUs" }
                )
            ),
        ));
    }
    if let Some(fitting) = node_gpus.checked_div(need_gpus) {
        let count = u32::try_from(fitting).unwrap_or(u32::MAX);
        limits.push((
            count,
            format!(
                "{node_gpus} GPUs / {}",
                shape(
                    per_worker.gpu.to_string(),
                    plural(per_worker.gpu, "GPU", "GPUs")
                )
            ),
        ));
    }
    if let Some(max) = max_concurrent_trials {
        limits.push((max, format!("executor.max_concurrent_trials = {max}")));
    }
    let Some(binding) = (0..limits.len()).min_by_key(|&i| limits[i].0) else {
        return Ok(CapacityPlan {
            concurrent_trials: u32::MAX,
            explanation: "no limit on trials at once: they need no CPUs or GPUs and \
                          executor.max_concurrent_trials is not set"
                .to_string(),
        });
    };
    let (count, reason) = &limits[binding];
    let mut explanation = format!(
        "{count} {} at once: {reason}",
        plural(*count, "trial", "trials")
    );
    let others: Vec<String> = limits
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != binding)
        .map(|(_, (n, why))| format!("{why} allows {n}"))
        .collect();
    if !others.is_empty() {
        explanation.push_str(&format!(" (also: {})", others.join("; ")));
    }
    Ok(CapacityPlan {
        concurrent_trials: *count,
        explanation,
    })
}

/// Rejects requests that make no sense whatever the node.
/// The checks every executor's `start` makes first: a program to run, a request that makes
/// sense, and no earlier run of this trial still holding resources. Returns the program.
pub(crate) fn validate_launch(
    launch: &TrialLaunch,
    already_running: bool,
) -> Result<&str, ExecutorError> {
    let Some(program) = launch.command.first() else {
        return Err(ExecutorError::Invalid(
            "the trial command is empty".to_string(),
        ));
    };
    validate_request(launch.workers, &launch.resources)?;
    if already_running {
        return Err(ExecutorError::Invalid(format!(
            "trial {} is already running (or not released)",
            launch.trial
        )));
    }
    Ok(program)
}

pub(crate) fn validate_request(workers: u32, per_worker: &Resources) -> Result<(), ExecutorError> {
    if workers == 0 {
        return Err(ExecutorError::Invalid(
            "trial.workers must be at least 1".to_string(),
        ));
    }
    if !(per_worker.cpu.is_finite() && per_worker.cpu >= 0.0) {
        return Err(ExecutorError::Invalid(format!(
            "trial.resources.cpu must be 0 or more, got {}",
            per_worker.cpu
        )));
    }
    Ok(())
}

pub(crate) fn plural(n: u32, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// A CPU count for messages: `4`, `0.5`, and `0.3` rather than `0.30000000000000004`.
pub(crate) fn fmt_num(x: f64) -> String {
    let rounded = (x * 1e6).round() / 1e6;
    format!("{rounded}")
}

/// A TCP port on loopback that is free right now, for `MASTER_PORT`.
fn free_port() -> Result<u16, ExecutorError> {
    let io = |source| ExecutorError::Io {
        what: "cannot find a free port for MASTER_PORT".to_string(),
        source,
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io)?;
    let port = listener.local_addr().map_err(io)?.port();
    Ok(port)
}

/// `dir/stdout.log` -> `dir/stdout.rank2.log`.
fn rank_log_path(path: &Path, rank: u32) -> PathBuf {
    if rank == 0 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".to_string());
    path.with_file_name(format!("{stem}.rank{rank}.log"))
}

pub(crate) fn open_log(path: &Path) -> Result<std::fs::File, ExecutorError> {
    let io = |source| ExecutorError::Io {
        what: format!("cannot open {}", path.display()),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)
}

/// Starts one worker in its own process group (under the shim when `supervisor` is given);
/// returns the child and its process group id.
fn spawn_worker(
    launch: &TrialLaunch,
    rank: u32,
    gpus: &[&str],
    master_port: u16,
    supervisor: Option<&Supervisor>,
) -> Result<(Child, i32), ExecutorError> {
    let program = &launch.command[0];
    let mut command = match supervisor {
        None => {
            let mut command = Command::new(program);
            command.args(&launch.command[1..]);
            command
        }
        Some(supervisor) => {
            // The shim could only report a missing program as a failed run: say it here, as
            // a direct start would.
            let path = launch
                .env
                .iter()
                .rev()
                .find(|(key, _)| key == "PATH")
                .map(|(_, value)| value.clone())
                .or_else(|| std::env::var("PATH").ok())
                .unwrap_or_default();
            check_program(program, &launch.cwd, &[("PATH".to_string(), path)])?;
            let mut command = Command::new(&supervisor.program);
            command.args(supervisor.args(std::process::id(), &launch.command));
            command
        }
    };
    let stdout = open_log(&rank_log_path(&launch.stdout, rank))?;
    let stderr = open_log(&rank_log_path(&launch.stderr, rank))?;
    command
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(false);
    for (key, value) in &launch.env {
        if value.is_empty() {
            command.env_remove(key); // `KEY = ""` in [trial.env] unsets it
        } else {
            command.env(key, value);
        }
    }
    // What the executor sets itself, unless the launch environment sets or unsets it: a
    // complete torch.distributed set for every trial, one worker included (what torchrun gives a
    // single process too; accelerate reads LOCAL_RANK as "distributed" and then needs the rest).
    let world = launch.workers.to_string();
    let threads = launch.resources.cpu.ceil().max(1.0);
    let defaults = [
        // An empty list hides every GPU, so a CPU-only trial cannot grab one by accident.
        ("CUDA_VISIBLE_DEVICES", gpus.join(",")),
        ("OMP_NUM_THREADS", format!("{threads}")),
        ("RANK", rank.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("WORLD_SIZE", world.clone()),
        ("LOCAL_WORLD_SIZE", world),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", master_port.to_string()),
    ];
    for (key, value) in defaults {
        if !trial_env::mentions(&launch.env, key) {
            command.env(key, value);
        }
    }
    let child = command.spawn().map_err(|source| ExecutorError::Spawn {
        program: match supervisor {
            Some(supervisor) => supervisor.program.display().to_string(),
            None => program.clone(),
        },
        source,
    })?;
    let pgid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .unwrap_or(0);
    Ok((child, pgid))
}

/// Waits for every worker of one run, stops the others when one fails, cleans up leftovers
/// in the process groups and sends the single Exited event.
async fn supervise(
    trial: TrialId,
    run: u32,
    workers: Vec<(u32, Child, i32)>,
    shared: Arc<TrialShared>,
    events: UnboundedSender<ExecutorEvent>,
) {
    let several = workers.len() > 1;
    let groups: Vec<i32> = workers.iter().map(|(_, _, pgid)| *pgid).collect();
    let (exits_tx, mut exits) = unbounded_channel();
    for (rank, mut child, _) in workers {
        let exits_tx = exits_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exits_tx.send((rank, status));
        });
    }
    drop(exits_tx);

    let mut first_failure: Option<String> = None;
    while let Some((rank, status)) = exits.recv().await {
        let (success, message) = match status {
            Ok(status) => describe_exit(status),
            Err(error) => (false, format!("cannot wait for the process: {error}")),
        };
        if !success && first_failure.is_none() {
            first_failure = Some(if several {
                format!("worker {rank}: {message}")
            } else {
                message
            });
            if several {
                // The others cannot finish without this one (collectives would hang).
                for &pgid in &groups {
                    signal_group(pgid, libc::SIGTERM);
                }
                tokio::spawn(kill_after(
                    PEER_STOP_GRACE,
                    groups.clone(),
                    Arc::clone(&shared),
                ));
            }
        }
    }

    for &pgid in &groups {
        if group_has_live_members(pgid) {
            signal_group(pgid, libc::SIGKILL);
            let deadline = Instant::now() + KILL_WAIT;
            while group_has_live_members(pgid) && Instant::now() < deadline {
                tokio::time::sleep(GROUP_POLL).await;
            }
        }
    }
    shared.finished.store(true, Ordering::SeqCst);

    let success = first_failure.is_none();
    let message = first_failure.unwrap_or_else(|| {
        if several {
            format!("all {} workers: exit code 0", groups.len())
        } else {
            "exit code 0".to_string()
        }
    });
    // The loop may be gone (shutting down); nobody is left to tell.
    let _ = events.send(ExecutorEvent::Exited {
        trial,
        run,
        success,
        message,
    });
}

/// After `grace`, unless the trial has finished by then: SIGKILL to the groups (or the kill
/// request to their shims, and SIGKILL to a shim that has not ended `KILL_WAIT` later).
async fn kill_after(grace: Duration, groups: Vec<i32>, shared: Arc<TrialShared>) {
    tokio::time::sleep(grace).await;
    if shared.finished.load(Ordering::SeqCst) {
        return;
    }
    for &pgid in &groups {
        signal_group(pgid, shared.kill_signal);
    }
    if shared.kill_signal == libc::SIGKILL {
        return;
    }
    tokio::time::sleep(KILL_WAIT).await;
    if shared.finished.load(Ordering::SeqCst) {
        return;
    }
    tracing::warn!("a trial's supervising shim did not end its processes; killing the shim");
    for pgid in groups {
        signal_group(pgid, libc::SIGKILL);
    }
}

/// `exit code 3` or `killed by signal 15 (SIGTERM)`, and whether it counts as success.
pub(crate) fn describe_exit(status: ExitStatus) -> (bool, String) {
    if let Some(code) = status.code() {
        return (code == 0, format!("exit code {code}"));
    }
    if let Some(signal) = status.signal() {
        let message = match signal_name(signal) {
            Some(name) => format!("killed by signal {signal} ({name})"),
            None => format!("killed by signal {signal}"),
        };
        return (false, message);
    }
    (false, status.to_string())
}

fn signal_name(signal: i32) -> Option<&'static str> {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return None,
    };
    Some(name)
}

/// Sends `signal` to every process in group `pgid`; errors (group already gone) are ignored.
pub(crate) fn signal_group(pgid: i32, signal: i32) {
    // 0 and 1 would address our own group or every process we may signal.
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether any process of group `pgid` is still running (zombies count as gone: they hold
/// no CPU, memory or GPU).
pub(crate) fn group_has_live_members(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(-pgid, 0) } != 0 {
        // ESRCH: gone. EPERM: no longer ours to manage.
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        matches!(shim::parse_proc_stat(&stat), Some(p) if p.pgrp == pgid && !p.is_zombie())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tokio::sync::mpsc::UnboundedReceiver;

    fn node(cpus: f64, gpus: &[&str]) -> NodeResources {
        NodeResources {
            cpus,
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn res(cpu: f64, gpu: u32) -> Resources {
        Resources { cpu, gpu }
    }

    fn executor(
        cpus: f64,
        gpus: &[&str],
        max: Option<u32>,
    ) -> (LocalExecutor, UnboundedReceiver<ExecutorEvent>) {
        let (tx, rx) = unbounded_channel();
        let config = LocalExecutorConfig {
            cpus: Some(cpus),
            gpus: Some(gpus.iter().map(|g| g.to_string()).collect()),
            reserve_cpus: 0.0,
            max_concurrent_trials: max,
            supervisor: None,
        };
        (LocalExecutor::new(config, tx).expect("valid config"), rx)
    }

    /// A launch of `sh -c script` with 1 CPU per worker, logs in `dir`.
    fn launch(dir: &Path, trial: u32, script: &str) -> TrialLaunch {
        TrialLaunch {
            trial: TrialId(trial),
            run: 1,
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: Vec::new(),
            workers: 1,
            resources: res(1.0, 0),
            cwd: dir.to_path_buf(),
            stdout: dir.join(format!("t{trial}/stdout.log")),
            stderr: dir.join(format!("t{trial}/stderr.log")),
        }
    }

    /// The next event; the timeout only turns a bug into a failure instead of a hang.
    async fn next_exit(rx: &mut UnboundedReceiver<ExecutorEvent>) -> (TrialId, u32, bool, String) {
        let event = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("an event within 60 s")
            .expect("channel open");
        match event {
            ExecutorEvent::Exited {
                trial,
                run,
                success,
                message,
            } => (trial, run, success, message),
            other => panic!("the local executor sent {other:?}"),
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("readable file")
    }

    fn env_file(path: &Path) -> BTreeMap<String, String> {
        read(path)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A named pipe: the child writes to it, the test blocks reading it until the child got
    /// that far. Synchronises without sleeping.
    fn fifo(path: &Path) {
        let c_path = std::ffi::CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
        // SAFETY: c_path is a valid NUL-terminated string.
        let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo");
    }

    /// Dead, or a zombie waiting for its new parent to reap it.
    fn is_gone(pid: i32) -> bool {
        // SAFETY: signal 0 only checks existence.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        shim::parse_proc_stat(&stat).is_none_or(|p| p.is_zombie())
    }

    #[test]
    fn capacity_by_cpus() {
        let plan = plan_capacity(&node(2.0, &[]), 0.0, None, 1, &res(1.0, 0)).expect("fits");
        assert_eq!(plan.concurrent_trials, 2);
        assert_eq!(
            plan.explanation,
            "2 trials at once: 2 CPUs / (1 worker x 1 CPU)"
        );

        let plan = plan_capacity(&node(8.0, &[]), 2.0, None, 2, &res(1.5, 0)).expect("fits");
        assert_eq!(plan.concurrent_trials, 2);
        assert_eq!(
            plan.explanation,
            "2 trials at once: 6 CPUs (8 minus 2 reserved) / (2 workers x 1.5 CPUs)"
        );

        // Fractions that do not add up exactly in binary still fit.
        let plan = plan_capacity(&node(0.3, &[]), 0.0, None, 1, &res(0.1, 0)).expect("fits");
        assert_eq!(plan.concurrent_trials, 3);
    }

    #[test]
    fn capacity_by_gpus_and_max() {
        let plan = plan_capacity(
            &node(16.0, &["0", "1", "2", "3"]),
            0.0,
            Some(8),
            1,
            &res(1.0, 2),
        )
        .expect("fits");
        assert_eq!(plan.concurrent_trials, 2);
        assert_eq!(
            plan.explanation,
            "2 trials at once: 4 GPUs / (1 worker x 2 GPUs) (also: 16 CPUs / (1 worker x 1 CPU) \
             allows 16; executor.max_concurrent_trials = 8 allows 8)"
        );
        let plan = plan_capacity(&node(16.0, &[]), 0.0, Some(3), 1, &res(1.0, 0)).expect("fits");
        assert_eq!(plan.concurrent_trials, 3);
        assert!(
            plan.explanation
                .starts_with("3 trials at once: executor.max_concurrent_trials = 3")
        );

        let plan = plan_capacity(&node(1.0, &[]), 0.0, None, 1, &res(0.0, 0)).expect("fits");
        assert_eq!(plan.concurrent_trials, u32::MAX);
        assert!(plan.explanation.starts_with("no limit"));
    }

    #[test]
    fn never_fits_shows_the_arithmetic() {
        let err = plan_capacity(&node(8.0, &["0", "1"]), 0.0, None, 1, &res(1.0, 3))
            .expect_err("too many GPUs");
        assert!(matches!(err, ExecutorError::NeverFits(_)));
        assert_eq!(
            err.to_string(),
            "a trial needs 1 worker x 3 GPUs = 3 GPUs, but this node has 2 (0,1):\n  \
             trials x workers x GPUs per worker <= node GPUs: 1 x 1 x 3 = 3 > 2\n\
             hint: lower trial.resources.gpu or trial.workers, or list more GPUs in executor.gpus"
        );
        let err =
            plan_capacity(&node(2.0, &[]), 0.0, None, 1, &res(4.0, 0)).expect_err("too many CPUs");
        assert_eq!(
            err.to_string(),
            "a trial needs 1 worker x 4 CPUs = 4 CPUs, but this node has 2:\n  \
             reserve + trials x workers x CPUs per worker <= node CPUs: 0 + 1 x 1 x 4 = 4 > 2\n\
             hint: lower trial.resources.cpu or trial.workers, set executor.cpus, or lower \
             executor.reserve_cpus"
        );
        let err = plan_capacity(&node(4.0, &[]), 1.0, None, 2, &res(2.0, 0))
            .expect_err("reserve leaves too little");
        assert!(
            err.to_string()
                .contains("but this node has 4 (1 reserved):\n  reserve + trials x workers x CPUs per worker <= node CPUs: 1 + 1 x 2 x 2 = 5 > 4"),
            "{err}"
        );
        let err = plan_capacity(&node(4.0, &[]), 0.0, None, 1, &res(1.0, 1)).expect_err("no GPUs");
        assert!(err.to_string().contains("this node has 0 (none)"), "{err}");
        assert!(matches!(
            plan_capacity(&node(4.0, &[]), 0.0, None, 0, &res(1.0, 0)),
            Err(ExecutorError::Invalid(_))
        ));
        assert!(matches!(
            plan_capacity(&node(4.0, &[]), 0.0, None, 1, &res(-1.0, 0)),
            Err(ExecutorError::Invalid(_))
        ));
    }

    #[test]
    fn rejects_bad_config() {
        let (tx, _rx) = unbounded_channel();
        let bad = [
            LocalExecutorConfig {
                cpus: Some(0.0),
                ..Default::default()
            },
            LocalExecutorConfig {
                cpus: Some(1.0),
                reserve_cpus: -1.0,
                ..Default::default()
            },
            LocalExecutorConfig {
                cpus: Some(1.0),
                max_concurrent_trials: Some(0),
                ..Default::default()
            },
            LocalExecutorConfig {
                cpus: Some(1.0),
                gpus: Some(vec!["0".into(), "0".into()]),
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(
                matches!(
                    LocalExecutor::new(config.clone(), tx.clone()),
                    Err(ExecutorError::Invalid(_))
                ),
                "{config:?}"
            );
        }
    }

    #[tokio::test]
    async fn has_room_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(2.0, &[], None);
        let one = res(1.0, 0);
        assert!(ex.has_room(1, &one));
        assert!(!ex.has_room(1, &res(3.0, 0)));
        ex.start(launch(dir.path(), 0, "exit 0")).expect("start 0");
        assert!(ex.has_room(1, &one));
        assert!(!ex.has_room(2, &one));
        ex.start(launch(dir.path(), 1, "exit 0")).expect("start 1");
        assert!(!ex.has_room(1, &one));
        assert!(ex.has_room(1, &res(0.0, 0)));
        let err = ex.start(launch(dir.path(), 2, "exit 0")).expect_err("full");
        assert!(matches!(err, ExecutorError::NoRoom { .. }), "{err}");

        // Exited does not free anything: only release does.
        let mut seen = vec![next_exit(&mut rx).await.0, next_exit(&mut rx).await.0];
        seen.sort();
        assert_eq!(seen, vec![TrialId(0), TrialId(1)]);
        assert!(!ex.has_room(1, &one));
        ex.release(TrialId(0));
        assert!(ex.has_room(1, &one));
        ex.release(TrialId(0)); // twice is harmless
        assert!(!ex.has_room(2, &one));
        ex.release(TrialId(1));
        assert!(ex.has_room(2, &one));
    }

    #[tokio::test]
    async fn max_concurrent_trials_caps_running_trials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(8.0, &[], Some(1));
        ex.start(launch(dir.path(), 0, "exit 0")).expect("start");
        assert!(!ex.has_room(1, &res(1.0, 0)));
        next_exit(&mut rx).await;
        ex.release(TrialId(0));
        assert!(ex.has_room(1, &res(1.0, 0)));
    }

    #[tokio::test]
    async fn gpus_are_assigned_distinctly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(16.0, &["0", "1", "2", "3", "4"], None);
        let script = "echo \"$CUDA_VISIBLE_DEVICES\" > gpus_${TRIAL_}_$RANK";
        let mut placements = Vec::new();
        for trial in 0..2 {
            let mut l = launch(dir.path(), trial, script);
            l.workers = 2;
            l.resources = res(1.0, 1);
            l.env.push(("TRIAL_".into(), trial.to_string()));
            placements.push(ex.start(l).expect("start").label);
        }
        assert_eq!(placements[0], "local cpu=2 gpu=0,1 workers=2");
        assert_eq!(placements[1], "local cpu=2 gpu=2,3 workers=2");
        assert!(!ex.has_room(2, &res(1.0, 1)));
        assert!(ex.has_room(1, &res(1.0, 1)));
        for _ in 0..2 {
            let (_, _, success, message) = next_exit(&mut rx).await;
            assert!(success, "{message}");
        }
        let seen: Vec<String> = ["0_0", "0_1", "1_0", "1_1"]
            .iter()
            .map(|s| {
                read(&dir.path().join(format!("gpus_{s}")))
                    .trim()
                    .to_string()
            })
            .collect();
        assert_eq!(seen, vec!["0", "1", "2", "3"]);

        ex.release(TrialId(0));
        let mut l = launch(dir.path(), 2, "exit 0");
        l.resources = res(1.0, 2);
        assert_eq!(ex.start(l).expect("start").label, "local cpu=1 gpu=0,1");
        next_exit(&mut rx).await;
    }

    #[tokio::test]
    async fn environment_seen_by_the_child() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(4.0, &["0"], None);
        let mut l = launch(
            dir.path(),
            0,
            "env > env.txt; pwd > pwd.txt; echo out; echo err >&2",
        );
        l.resources = res(1.5, 0);
        l.env.push(("RTUNE_TEST_VALUE".into(), "a b=c".into()));
        ex.start(l).expect("start");
        let (trial, run, success, message) = next_exit(&mut rx).await;
        assert_eq!((trial, run, success), (TrialId(0), 1, true));
        assert_eq!(message, "exit code 0");
        let env = env_file(&dir.path().join("env.txt"));
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "");
        assert_eq!(env["OMP_NUM_THREADS"], "2");
        assert_eq!(env["RANK"], "0");
        assert_eq!(env["LOCAL_RANK"], "0");
        assert_eq!(env["WORLD_SIZE"], "1");
        assert_eq!(env["LOCAL_WORLD_SIZE"], "1");
        assert_eq!(env["RTUNE_TEST_VALUE"], "a b=c");
        // One worker gets the whole torch.distributed set, as from torchrun.
        assert_eq!(env["MASTER_ADDR"], "127.0.0.1");
        assert!(env["MASTER_PORT"].parse::<u16>().is_ok());
        assert!(env.contains_key("PATH"), "rtune's environment is inherited");
        let pwd = PathBuf::from(read(&dir.path().join("pwd.txt")).trim());
        assert_eq!(
            pwd.canonicalize().expect("pwd"),
            dir.path().canonicalize().expect("dir")
        );
        assert_eq!(read(&dir.path().join("t0/stdout.log")), "out\n");
        assert_eq!(read(&dir.path().join("t0/stderr.log")), "err\n");
        ex.release(TrialId(0));

        // The launch env wins for OMP_NUM_THREADS; logs are appended to.
        let mut l = launch(dir.path(), 0, "env > env.txt; echo again");
        l.env.push(("OMP_NUM_THREADS".into(), "7".into()));
        l.resources = res(1.0, 1);
        ex.start(l).expect("start");
        assert!(next_exit(&mut rx).await.2);
        let env = env_file(&dir.path().join("env.txt"));
        assert_eq!(env["OMP_NUM_THREADS"], "7");
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0");
        assert_eq!(read(&dir.path().join("t0/stdout.log")), "out\nagain\n");
    }

    #[tokio::test]
    async fn trial_env_overrides_and_unsets_what_the_executor_sets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(4.0, &["0"], None);
        let mut l = launch(dir.path(), 0, "env > env.txt");
        l.resources = res(1.0, 1);
        for (key, value) in [
            ("LOCAL_RANK", ""),
            ("MASTER_PORT", "29555"),
            ("CUDA_VISIBLE_DEVICES", ""),
            ("PATH_UNSET_BY_TEST", "x"),
            ("PATH_UNSET_BY_TEST", ""),
            ("HOME", ""),
        ] {
            l.env.push((key.into(), value.into()));
        }
        ex.start(l).expect("start");
        assert!(next_exit(&mut rx).await.2);
        let env = env_file(&dir.path().join("env.txt"));
        assert!(!env.contains_key("LOCAL_RANK"), "{env:?}");
        assert!(!env.contains_key("CUDA_VISIBLE_DEVICES"), "{env:?}");
        assert!(!env.contains_key("PATH_UNSET_BY_TEST"), "{env:?}");
        assert!(
            !env.contains_key("HOME"),
            "inherited variables can be unset too"
        );
        assert_eq!(env["MASTER_PORT"], "29555");
        assert_eq!(env["RANK"], "0");
        assert_eq!(env["MASTER_ADDR"], "127.0.0.1");
    }

    #[tokio::test]
    async fn multi_worker_ranks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(8.0, &[], None);
        let mut l = launch(
            dir.path(),
            0,
            "echo \"$RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT\" \
             > rank_$RANK; echo hello from $RANK",
        );
        l.workers = 3;
        ex.start(l).expect("start");
        let (_, _, success, message) = next_exit(&mut rx).await;
        assert!(success, "{message}");
        assert_eq!(message, "all 3 workers: exit code 0");
        let lines: Vec<Vec<String>> = (0..3)
            .map(|r| {
                read(&dir.path().join(format!("rank_{r}")))
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        let port = lines[0][5].clone();
        assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{port}");
        for (r, fields) in lines.iter().enumerate() {
            let expected = [
                r.to_string(),
                r.to_string(),
                "3".into(),
                "3".into(),
                "127.0.0.1".into(),
                port.clone(),
            ];
            assert_eq!(fields, &expected);
        }
        let t0 = dir.path().join("t0");
        assert_eq!(read(&t0.join("stdout.log")), "hello from 0\n");
        assert_eq!(read(&t0.join("stdout.rank1.log")), "hello from 1\n");
        assert_eq!(read(&t0.join("stdout.rank2.log")), "hello from 2\n");
        assert!(t0.join("stderr.rank2.log").exists());
    }

    #[tokio::test]
    async fn exit_codes_and_signals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(8.0, &[], None);
        let cases = [
            ("exit 3", false, "exit code 3"),
            ("true", true, "exit code 0"),
            ("kill -TERM $$", false, "killed by signal 15 (SIGTERM)"),
            ("kill -KILL $$", false, "killed by signal 9 (SIGKILL)"),
        ];
        for (i, (script, success, message)) in cases.iter().enumerate() {
            let trial = u32::try_from(i).expect("small");
            let mut l = launch(dir.path(), trial, script);
            l.run = 7;
            ex.start(l).expect("start");
            let event = next_exit(&mut rx).await;
            assert_eq!(
                event,
                (TrialId(trial), 7, *success, message.to_string()),
                "{script}"
            );
            ex.release(TrialId(trial));
        }
    }

    #[tokio::test]
    async fn failing_worker_stops_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(8.0, &[], None);
        let mut l = launch(
            dir.path(),
            0,
            "if [ \"$RANK\" = 1 ]; then exit 3; fi; exec sleep 1000",
        );
        l.workers = 2;
        ex.start(l).expect("start");
        let (_, _, success, message) = next_exit(&mut rx).await;
        assert!(!success);
        assert_eq!(message, "worker 1: exit code 3");
    }

    #[tokio::test]
    async fn spawn_error_names_the_program() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, _rx) = executor(1.0, &[], None);
        let mut l = launch(dir.path(), 0, "");
        l.command = vec!["rtune-no-such-program-xyz".into()];
        let err = ex.start(l).expect_err("cannot spawn");
        assert!(matches!(err, ExecutorError::Spawn { .. }));
        let text = err.to_string();
        assert!(text.contains("`rtune-no-such-program-xyz`"), "{text}");
        assert!(text.contains("not found: is it on PATH?"), "{text}");
        assert!(ex.has_room(1, &res(1.0, 0)), "nothing stays booked");

        let mut l = launch(dir.path(), 0, "");
        l.command.clear();
        assert!(matches!(ex.start(l), Err(ExecutorError::Invalid(_))));
    }

    #[tokio::test]
    async fn stop_kills_the_process_group_with_grandchildren() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(8.0, &[], None);
        let pipe = dir.path().join("pid.fifo");
        fifo(&pipe);
        ex.start(launch(
            dir.path(),
            0,
            "sleep 1000 & echo $! > pid.fifo; wait",
        ))
        .expect("start");
        let grandchild: i32 = read(&pipe).trim().parse().expect("pid");
        assert!(!is_gone(grandchild));
        ex.stop(TrialId(0), Duration::from_secs(1000));
        ex.stop(TrialId(0), Duration::from_secs(1000)); // idempotent
        let (_, _, success, message) = next_exit(&mut rx).await;
        assert!(!success);
        assert_eq!(message, "killed by signal 15 (SIGTERM)");
        assert!(is_gone(grandchild), "grandchild {grandchild} survived");
        ex.stop(TrialId(0), Duration::from_secs(1)); // after exit: nothing happens
        ex.release(TrialId(0));
        ex.stop(TrialId(0), Duration::from_secs(1)); // unknown trial: nothing happens
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(8.0, &[], None);
        let pipe = dir.path().join("ready.fifo");
        fifo(&pipe);
        ex.start(launch(
            dir.path(),
            0,
            "trap '' TERM; echo ready > ready.fifo; sleep 1000",
        ))
        .expect("start");
        assert_eq!(read(&pipe).trim(), "ready");
        ex.stop(TrialId(0), Duration::from_millis(50));
        let (_, _, success, message) = next_exit(&mut rx).await;
        assert!(!success);
        assert_eq!(message, "killed by signal 9 (SIGKILL)");
    }

    #[tokio::test]
    async fn leftovers_of_a_finished_trial_are_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(8.0, &[], None);
        ex.start(launch(dir.path(), 0, "sleep 1000 & echo $! > pid.txt"))
            .expect("start");
        let (_, _, success, message) = next_exit(&mut rx).await;
        assert!(success, "{message}");
        let leftover: i32 = read(&dir.path().join("pid.txt"))
            .trim()
            .parse()
            .expect("pid");
        assert!(is_gone(leftover), "leftover {leftover} survived");
    }

    #[tokio::test]
    async fn shutdown_ends_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(8.0, &[], None);
        let pipe = dir.path().join("ready.fifo");
        fifo(&pipe);
        ex.start(launch(dir.path(), 0, "exec sleep 1000"))
            .expect("start");
        ex.start(launch(
            dir.path(),
            1,
            "trap '' TERM; echo ready > ready.fifo; sleep 1000",
        ))
        .expect("start");
        assert_eq!(read(&pipe).trim(), "ready");
        ex.shutdown(Duration::from_millis(100));
        let mut events = [next_exit(&mut rx).await, next_exit(&mut rx).await];
        events.sort_by_key(|e| e.0);
        assert_eq!(events[0].3, "killed by signal 15 (SIGTERM)");
        assert_eq!(events[1].3, "killed by signal 9 (SIGKILL)");
        ex.shutdown(Duration::from_millis(100)); // again: nothing left, returns at once
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut ex, mut rx) = executor(8.0, &[], None);
        let pipe = dir.path().join("ready.fifo");
        fifo(&pipe);
        ex.start(launch(dir.path(), 0, "exec sleep 1000"))
            .expect("start");
        ex.start(launch(
            dir.path(),
            1,
            "trap '' TERM; echo ready > ready.fifo; sleep 1000",
        ))
        .expect("start");
        assert_eq!(read(&pipe).trim(), "ready");
        // A blocking shutdown would return only after an hour; this one returns at once, and
        // the runtime (a single thread here) goes on: trial 0 ends by the SIGTERM.
        ex.shutdown(Duration::from_secs(3600));
        let event = next_exit(&mut rx).await;
        assert_eq!(
            event,
            (
                TrialId(0),
                1,
                false,
                "killed by signal 15 (SIGTERM)".to_string()
            )
        );
        // Trial 1 ignores SIGTERM and its SIGKILL is an hour away: it still runs.
        assert!(rx.try_recv().is_err());
        let group = ex.trials[&TrialId(1)].process_groups[0];
        assert!(group_has_live_members(group));
        signal_group(group, libc::SIGKILL);
        assert_eq!(next_exit(&mut rx).await.3, "killed by signal 9 (SIGKILL)");
    }
}

//! The SLURM step executor: inside an allocation (`salloc`, `sbatch`), every trial run is its own
//! job step, started with `srun --exact` on the nodes rtune chose for it.
//!
//! rtune reads the allocation's nodes, CPUs and GPUs once (`scontrol show job -d`), books them
//! per node as trials start and end, and tells `srun` exactly what each step gets: the nodes
//! (`--nodelist`, one entry per task with `--distribution=arbitrary`), `--ntasks`,
//! `--cpus-per-task` and `--gpus-per-task`. SLURM then binds the GPUs
//! (`CUDA_VISIBLE_DEVICES` of each task) and keeps concurrent steps apart.
//!
//! Stopping a trial signals its step through SLURM (`scancel --signal=TERM <job>.<step>`, then
//! `--signal=KILL` after the grace period), so every task on every node gets the signal, not only
//! the local `srun`. After `srun` exits, rtune checks that the step is gone and kills it if not,
//! before it reports the run as exited: no step outlives its trial.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rtune_core::TrialId;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;

use super::local::{
    describe_exit, open_log, plural, signal_group, validate_launch, validate_request,
};
use super::slurm_common::{
    check_program, clean_environment, expand_hostlist, expand_id_list, field, key_values,
    master_port, parse_srun_task_line, process_environment, run_name, run_slurm_command,
    slurm_command_result, worker_wrapper,
};
use super::trial_env;
use super::{
    CapacityPlan, Executor, ExecutorError, ExecutorEvent, Placement, Resources, TrialLaunch,
};

/// Step names start with this, so rtune finds its steps in `squeue -s`.
const STEP_PREFIX: &str = "rtune-";
/// How long to wait for a killed step to leave SLURM's books.
const STEP_GONE_WAIT: Duration = Duration::from_secs(15);
/// Poll interval while waiting for a step to disappear; SLURM offers no event for it.
const STEP_POLL: Duration = Duration::from_millis(100);
/// How long `stop` looks for a run's step before it asks srun to end it instead.
const STEP_LOOKUP_RETRY: Duration = Duration::from_secs(3);

/// One node of the allocation, as far as rtune hands it out.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocationNode {
    /// SLURM's node name (`n1`), used with `--nodelist`.
    pub name: String,
    /// The address other nodes reach it at (`NodeAddr`), used for `MASTER_ADDR`.
    pub addr: String,
    /// CPUs of the allocation on this node.
    pub cpus: u32,
    /// GPUs of the allocation on this node.
    pub gpus: u32,
    /// Memory of the allocation on this node in MiB, when the job has a memory limit.
    pub mem_mb: Option<u64>,
}

/// The allocation rtune runs in.
#[derive(Clone, Debug, PartialEq)]
pub struct Allocation {
    /// `SLURM_JOB_ID`.
    pub job_id: String,
    /// Its nodes, in SLURM's order.
    pub nodes: Vec<AllocationNode>,
}

impl Allocation {
    /// Reads an allocation from `scontrol show job -d <job_id>` and the node addresses from
    /// `scontrol show node`.
    pub fn query(job_id: &str) -> Result<Allocation, ExecutorError> {
        let text =
            run_slurm_command("scontrol", &["show", "job", "-d", "-o", job_id]).map_err(|e| {
                ExecutorError::Slurm(format!(
                    "cannot read the allocation of SLURM job {job_id}: {e}\nhint: run rtune \
                     inside a running allocation (salloc, sbatch, `rtune submit`)"
                ))
            })?;
        let mut nodes = parse_job_allocation(&text).map_err(|e| {
            ExecutorError::Slurm(format!(
                "cannot read the allocation of job {job_id} from `scontrol show job -d`: {e}"
            ))
        })?;
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let node_text = run_slurm_command("scontrol", &["show", "node", "-o", &names.join(",")])?;
        let addrs = parse_node_addresses(&node_text);
        for node in &mut nodes {
            if let Some(addr) = addrs.get(&node.name) {
                node.addr = addr.clone();
            }
        }
        Ok(Allocation {
            job_id: job_id.to_string(),
            nodes,
        })
    }
}

/// The nodes of an allocation from `scontrol show job -d` (one-line or multi-line form): every
/// `Nodes=<list> CPU_IDs=<ids> Mem=<MiB> GRES=<gres>` group names nodes with the same share.
pub fn parse_job_allocation(text: &str) -> Result<Vec<AllocationNode>, String> {
    let fields = key_values(text);
    if let Some(state) = field(&fields, "JobState")
        && state != "RUNNING"
    {
        return Err(format!(
            "the job is {state}, not RUNNING (run rtune inside the allocation)"
        ));
    }
    let mut nodes = Vec::new();
    let mut i = 0;
    while i < fields.len() {
        if fields[i].0 != "Nodes" {
            i += 1;
            continue;
        }
        let names = expand_hostlist(fields[i].1)?;
        let mut cpus = None;
        let mut gpus = 0;
        let mut mem_mb = None;
        let mut j = i + 1;
        while j < fields.len() && ["CPU_IDs", "Mem", "GRES"].contains(&fields[j].0) {
            match fields[j].0 {
                "CPU_IDs" => {
                    cpus = Some(u32::try_from(expand_id_list(fields[j].1)?.len()).unwrap_or(0))
                }
                "Mem" => {
                    let mem: u64 = fields[j]
                        .1
                        .parse()
                        .map_err(|_| format!("Mem={} is not a number of MiB", fields[j].1))?;
                    mem_mb = (mem > 0).then_some(mem);
                }
                _ => gpus = count_gpus(fields[j].1)?,
            }
            j += 1;
        }
        let cpus = cpus.ok_or_else(|| format!("Nodes={} has no CPU_IDs", fields[i].1))?;
        for name in names {
            nodes.push(AllocationNode {
                addr: name.clone(),
                name,
                cpus,
                gpus,
                mem_mb,
            });
        }
        i = j;
    }
    if nodes.is_empty() {
        return Err("no `Nodes=... CPU_IDs=...` lines (is this a running job?)".to_string());
    }
    Ok(nodes)
}

/// GPUs in a `GRES=` value of `scontrol show job -d`: `gpu:2(IDX:0-1)`,
/// `gpu:a100:1(IDX:3),mps:0` -> 2, 1.
pub fn count_gpus(gres: &str) -> Result<u32, String> {
    let mut total = 0u32;
    let mut depth = 0usize;
    let mut start = 0;
    let mut entries = Vec::new();
    for (i, c) in gres.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                entries.push(&gres[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(&gres[start..]);
    for entry in entries {
        if !(entry.starts_with("gpu:") || entry.starts_with("gpu(")) {
            continue;
        }
        if let Some(idx) = entry
            .split_once("(IDX:")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
        {
            if idx == "N/A" {
                continue;
            }
            total += u32::try_from(expand_id_list(idx)?.len()).unwrap_or(0);
        } else {
            let count = entry.split('(').next().unwrap_or(entry);
            let count = count.rsplit(':').next().unwrap_or("0");
            total += count
                .parse::<u32>()
                .map_err(|_| format!("cannot read the GPU count in GRES `{entry}`"))?;
        }
    }
    Ok(total)
}

/// `NodeName -> NodeAddr` from `scontrol show node -o`.
pub fn parse_node_addresses(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let fields = key_values(line);
            Some((
                field(&fields, "NodeName")?.to_string(),
                field(&fields, "NodeAddr")?.to_string(),
            ))
        })
        .collect()
}

/// How many workers of a trial go to one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeShare {
    /// Index into the allocation's nodes.
    pub node: usize,
    /// Workers (tasks) on that node.
    pub workers: u32,
}

/// CPUs SLURM gives a task asking for `cpu` CPUs: whole CPUs, at least one.
pub fn slurm_cpus(cpu: f64) -> u32 {
    cpu.ceil().max(1.0).min(f64::from(u32::MAX)) as u32
}

/// Where a trial's workers go, given what is free on each node (`(cpus, gpus)`), or None if it
/// does not fit now.
///
/// A trial that fits on one node goes to the node with room for the most such workers (the
/// lowest index among equals), so trials spread over the nodes and a node's CPUs and memory
/// bandwidth are shared by as few trials as possible. A trial too big for any one node takes
/// workers from the nodes with the most room first.
pub fn place_trial(
    free: &[(u32, u32)],
    workers: u32,
    cpus_per_worker: u32,
    gpus_per_worker: u32,
) -> Option<Vec<NodeShare>> {
    let room = |&(cpus, gpus): &(u32, u32)| -> u32 {
        let by_cpu = cpus.checked_div(cpus_per_worker).unwrap_or(u32::MAX);
        let by_gpu = gpus.checked_div(gpus_per_worker).unwrap_or(u32::MAX);
        by_cpu.min(by_gpu)
    };
    let rooms: Vec<u32> = free.iter().map(room).collect();
    let mut order: Vec<usize> = (0..free.len()).collect();
    // Stable: among equals the lower index comes first.
    order.sort_by_key(|&i| std::cmp::Reverse(rooms[i]));
    let &best = order.first()?;
    if rooms[best] >= workers {
        return Some(vec![NodeShare {
            node: best,
            workers,
        }]);
    }
    let mut shares = Vec::new();
    let mut left = workers;
    for i in order {
        if left == 0 || rooms[i] == 0 {
            break;
        }
        let take = rooms[i].min(left);
        shares.push(NodeShare {
            node: i,
            workers: take,
        });
        left -= take;
    }
    (left == 0).then_some(shares)
}

/// How many trials of this shape run at once in `nodes`, with the arithmetic per node; or
/// NeverFits with the arithmetic when not even one does. `reserve[i]` CPUs of node i stay free
/// (rtune's own node).
pub fn plan_allocation(
    nodes: &[AllocationNode],
    reserve: &[u32],
    max_concurrent_trials: Option<u32>,
    workers: u32,
    per_worker: &Resources,
) -> Result<CapacityPlan, ExecutorError> {
    validate_request(workers, per_worker)?;
    let cw = slurm_cpus(per_worker.cpu);
    let gw = per_worker.gpu;
    let reserve_of = |i: usize| reserve.get(i).copied().unwrap_or(0);
    let mut free: Vec<(u32, u32)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.cpus.saturating_sub(reserve_of(i)), n.gpus))
        .collect();
    let shape = format!(
        "{workers} {} x {cw} {}{}",
        plural(workers, "worker", "workers"),
        plural(cw, "CPU", "CPUs"),
        if gw > 0 {
            format!(" + {gw} {}", plural(gw, "GPU", "GPUs"))
        } else {
            String::new()
        }
    );
    // Per node: trials with workers there, and those workers.
    let mut trials_on = vec![0u32; nodes.len()];
    let mut workers_on = vec![0u32; nodes.len()];
    let mut trials = 0u32;
    while max_concurrent_trials.is_none_or(|max| trials < max) {
        let Some(shares) = place_trial(&free, workers, cw, gw) else {
            break;
        };
        for share in shares {
            free[share.node].0 -= share.workers * cw;
            free[share.node].1 -= share.workers * gw;
            trials_on[share.node] += 1;
            workers_on[share.node] += share.workers;
        }
        trials += 1;
        if cw == 0 && gw == 0 && trials >= 100_000 {
            break;
        }
    }
    let node_line = |i: usize, t: u32, w: u32| {
        let node = &nodes[i];
        let used = if w == t * workers {
            format!("{t} x {workers}")
        } else {
            format!("{w} workers")
        };
        let cpu_total = reserve_of(i) + w * cw;
        let gpu_total = w * gw;
        let cmp = |a: u32, b: u32| if a <= b { "<=" } else { ">" };
        format!(
            "  {}: {t} {}: CPUs: reserve + trials x workers x CPUs per worker <= node CPUs: \
             {} + {used} x {cw} = {cpu_total} {} {}; GPUs: trials x workers x GPUs per worker \
             <= node GPUs: {used} x {gw} = {gpu_total} {} {}",
            node.name,
            plural(t, "trial", "trials"),
            reserve_of(i),
            cmp(cpu_total, node.cpus),
            node.cpus,
            cmp(gpu_total, node.gpus),
            node.gpus,
        )
    };
    if trials == 0 {
        let total_cpus: u32 = free.iter().map(|f| f.0).sum();
        let total_gpus: u32 = free.iter().map(|f| f.1).sum();
        let mut message = format!(
            "a trial needs {shape} = {} {} and {} {}, but the allocation's {} {} \
             {} {total_cpus} CPUs and {total_gpus} GPUs for trials:\n",
            workers * cw,
            plural(workers * cw, "CPU", "CPUs"),
            workers * gw,
            plural(workers * gw, "GPU", "GPUs"),
            nodes.len(),
            plural(
                u32::try_from(nodes.len()).unwrap_or(u32::MAX),
                "node",
                "nodes"
            ),
            if nodes.len() == 1 { "has" } else { "have" },
        );
        for i in 0..nodes.len() {
            message.push_str(&node_line(i, 1, workers));
            message.push('\n');
        }
        message.push_str(
            "hint: lower trial.resources or trial.workers, lower executor.reserve_cpus, or ask \
             SLURM for more (--nodes, --cpus-per-task / --cpus-per-node, --gpus-per-node)",
        );
        return Err(ExecutorError::NeverFits(message));
    }
    let used_nodes = trials_on.iter().filter(|&&t| t > 0).count();
    let mut explanation = format!(
        "{trials} {} at once on {used_nodes} of {} {} ({shape} each{})",
        plural(trials, "trial", "trials"),
        nodes.len(),
        plural(
            u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            "node",
            "nodes"
        ),
        match max_concurrent_trials {
            Some(max) if trials == max => format!(", executor.max_concurrent_trials = {max}"),
            _ => String::new(),
        }
    );
    for i in 0..nodes.len() {
        explanation.push('\n');
        explanation.push_str(&node_line(i, trials_on[i], workers_on[i]));
    }
    Ok(CapacityPlan {
        concurrent_trials: trials,
        explanation,
    })
}

/// Settings of the step executor (`[executor]` with `type = "slurm"`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlurmExecutorConfig {
    /// The allocation; None = `SLURM_JOB_ID` of rtune's environment.
    pub job_id: Option<String>,
    /// CPUs kept free on the node rtune itself runs on (when that node is in the allocation).
    pub reserve_cpus: f64,
    /// Upper bound on trials running at once; None = as many as fit.
    pub max_concurrent_trials: Option<u32>,
    /// Extra `srun` options for every step (e.g. `--mpi=none`).
    pub srun_args: Vec<String>,
}

/// Runs each trial run as a job step of the allocation.
pub struct SlurmExecutor {
    allocation: Allocation,
    reserve: Vec<u32>,
    max_concurrent_trials: Option<u32>,
    srun_args: Vec<String>,
    /// Per node: CPUs and GPUs free for trials.
    free: Vec<(u32, u32)>,
    /// The environment steps start from (rtune's, without inherited SLURM variables).
    base_env: Vec<(String, String)>,
    trials: HashMap<TrialId, StepSlot>,
    events: UnboundedSender<ExecutorEvent>,
}

/// A started trial run, from `start` until `release`.
struct StepSlot {
    shares: Vec<NodeShare>,
    cpus_per_worker: u32,
    gpus_per_worker: u32,
    shared: Arc<StepShared>,
    stop_requested: bool,
}

/// What the executor and the task supervising a step both need.
struct StepShared {
    job_id: String,
    step_name: String,
    /// `srun`'s pid, also its process group id.
    srun_group: i32,
    /// Set once srun has exited and the step is gone.
    finished: AtomicBool,
    /// Set when rtune asked the run to end (stop, shutdown).
    stop_requested: AtomicBool,
}

impl SlurmExecutor {
    /// An executor for the allocation `config.job_id` (default: `SLURM_JOB_ID`).
    pub fn new(
        config: SlurmExecutorConfig,
        events: UnboundedSender<ExecutorEvent>,
    ) -> Result<Self, ExecutorError> {
        let job_id = match &config.job_id {
            Some(id) => id.clone(),
            None => std::env::var("SLURM_JOB_ID").map_err(|_| {
                ExecutorError::Invalid(
                    "the slurm executor runs inside a SLURM allocation, but SLURM_JOB_ID is not \
                     set\nhint: start rtune inside `salloc` or an sbatch script (or use `rtune \
                     submit`), or use --executor slurm-jobs to submit one job per trial"
                        .to_string(),
                )
            })?,
        };
        let allocation = Allocation::query(&job_id)?;
        let head = std::env::var("SLURMD_NODENAME").ok();
        Self::with_allocation(allocation, head.as_deref(), config, events)
    }

    /// An executor for an allocation already read; `head_node` is the node rtune runs on, where
    /// `reserve_cpus` stay free.
    pub fn with_allocation(
        allocation: Allocation,
        head_node: Option<&str>,
        config: SlurmExecutorConfig,
        events: UnboundedSender<ExecutorEvent>,
    ) -> Result<Self, ExecutorError> {
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
        let reserve: Vec<u32> = allocation
            .nodes
            .iter()
            .map(|n| {
                if head_node == Some(n.name.as_str()) {
                    config.reserve_cpus.ceil() as u32
                } else {
                    0
                }
            })
            .collect();
        let free = allocation
            .nodes
            .iter()
            .zip(&reserve)
            .map(|(n, r)| (n.cpus.saturating_sub(*r), n.gpus))
            .collect();
        Ok(SlurmExecutor {
            allocation,
            reserve,
            max_concurrent_trials: config.max_concurrent_trials,
            srun_args: config.srun_args,
            free,
            base_env: clean_environment(process_environment()),
            trials: HashMap::new(),
            events,
        })
    }

    /// Replaces the environment steps start from (default: rtune's own). Inherited SLURM
    /// variables are removed from it as from rtune's.
    pub fn with_environment(mut self, env: Vec<(String, String)>) -> Self {
        self.base_env = clean_environment(env);
        self
    }

    /// The allocation this executor hands out.
    pub fn allocation(&self) -> &Allocation {
        &self.allocation
    }

    fn place(&self, workers: u32, per_worker: &Resources) -> Result<Vec<NodeShare>, String> {
        if let Some(max) = self.max_concurrent_trials
            && self.trials.len() >= max as usize
        {
            return Err(format!(
                "{} trials hold resources (executor.max_concurrent_trials = {max})",
                self.trials.len()
            ));
        }
        place_trial(
            &self.free,
            workers,
            slurm_cpus(per_worker.cpu),
            per_worker.gpu,
        )
        .ok_or_else(|| {
            let free: Vec<String> = self
                .allocation
                .nodes
                .iter()
                .zip(&self.free)
                .map(|(n, (c, g))| format!("{} {c} CPUs {g} GPUs", n.name))
                .collect();
            format!("free: {}", free.join(", "))
        })
    }

    fn describe(&self, shares: &[NodeShare], cw: u32, gw: u32, workers: u32) -> String {
        let parts: Vec<String> = shares
            .iter()
            .map(|s| {
                let node = &self.allocation.nodes[s.node].name;
                let mut part = format!("{node} cpu={}", s.workers * cw);
                if gw > 0 {
                    part.push_str(&format!(" gpus={}", s.workers * gw));
                }
                part
            })
            .collect();
        let mut description = parts.join(" + ");
        if workers > 1 {
            description.push_str(&format!(" workers={workers}"));
        }
        description
    }

    /// The `srun` command line (without the program) for a run placed on `shares`.
    fn srun_args(
        &self,
        launch: &TrialLaunch,
        shares: &[NodeShare],
        step_name: &str,
    ) -> Vec<String> {
        let cw = slurm_cpus(launch.resources.cpu);
        let mut hosts = Vec::new();
        for share in shares {
            let name = &self.allocation.nodes[share.node].name;
            hosts.extend(std::iter::repeat_n(name.clone(), share.workers as usize));
        }
        let mut args = vec![
            format!("--jobid={}", self.allocation.job_id),
            format!("--job-name={step_name}"),
            "--exact".to_string(),
            format!("--nodes={}", shares.len()),
            format!("--ntasks={}", launch.workers),
            format!("--nodelist={}", hosts.join(",")),
            "--distribution=arbitrary".to_string(),
            format!("--cpus-per-task={cw}"),
            "--kill-on-bad-exit=1".to_string(),
            "--input=none".to_string(),
        ];
        if launch.resources.gpu > 0 {
            args.push(format!("--gpus-per-task={}", launch.resources.gpu));
        } else {
            // A step that asks for no GRES gets all of the job's GPUs on its nodes (seen on
            // SLURM 22.05, with --exact too) and would keep GPU trials from starting.
            args.push("--gres=none".to_string());
        }
        // With memory as a consumable resource, a step that names no memory asks for all of
        // the job's memory on its nodes and waits for every other step to end. Each step gets
        // the job's memory per CPU instead, so steps share a node as its CPUs allow.
        let mem_per_cpu = shares
            .iter()
            .filter_map(|s| {
                let node = &self.allocation.nodes[s.node];
                Some(node.mem_mb? / u64::from(node.cpus.max(1)))
            })
            .min();
        if let Some(mem) = mem_per_cpu
            && mem > 0
        {
            args.push(format!("--mem-per-cpu={mem}M"));
        }
        args.extend(self.srun_args.iter().cloned());
        args.push("sh".to_string());
        args.push("-c".to_string());
        args.push(trial_env::with_overrides(
            worker_wrapper(
                launch.workers,
                launch.resources.gpu == 0,
                &launch.stdout,
                &launch.stderr,
            ),
            &launch.env,
        ));
        args.push("rtune-worker".to_string());
        args.extend(launch.command.iter().cloned());
        args
    }

    /// The environment of a run's tasks.
    fn step_env(&self, launch: &TrialLaunch, shares: &[NodeShare]) -> Vec<(String, String)> {
        // [trial.env] replaces or (with an empty value) unsets what rtune would set; RANK & co.
        // are set by the worker wrapper, which re-applies [trial.env] last (trial_env).
        let mut env = trial_env::merge(&self.base_env, &launch.env);
        let mut defaults = vec![(
            "OMP_NUM_THREADS",
            format!("{}", launch.resources.cpu.ceil().max(1.0)),
        )];
        if let Some(first) = shares.first() {
            let job_key = self.allocation.job_id.parse::<u64>().unwrap_or(0);
            defaults.push((
                "MASTER_ADDR",
                self.allocation.nodes[first.node].addr.clone(),
            ));
            defaults.push((
                "MASTER_PORT",
                master_port(job_key, launch.trial, launch.run).to_string(),
            ));
        }
        for (key, value) in defaults {
            if !trial_env::mentions(&launch.env, key) {
                env.push((key.to_string(), value));
            }
        }
        env
    }
}

impl Executor for SlurmExecutor {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn check_capacity(
        &self,
        workers: u32,
        per_worker: &Resources,
    ) -> Result<CapacityPlan, ExecutorError> {
        let mut plan = plan_allocation(
            &self.allocation.nodes,
            &self.reserve,
            self.max_concurrent_trials,
            workers,
            per_worker,
        )?;
        plan.explanation = format!("SLURM job {}: {}", self.allocation.job_id, plan.explanation);
        Ok(plan)
    }

    fn has_room(&self, workers: u32, per_worker: &Resources) -> bool {
        validate_request(workers, per_worker).is_ok() && self.place(workers, per_worker).is_ok()
    }

    fn start(&mut self, launch: TrialLaunch) -> Result<Placement, ExecutorError> {
        let program = validate_launch(&launch, self.trials.contains_key(&launch.trial))?;
        let shares = self
            .place(launch.workers, &launch.resources)
            .map_err(|reason| ExecutorError::NoRoom {
                trial: launch.trial,
                reason,
            })?;
        let env = self.step_env(&launch, &shares);
        check_program(program, &launch.cwd, &env)?;
        let step_name = run_name(STEP_PREFIX, launch.trial, launch.run);
        let args = self.srun_args(&launch, &shares, &step_name);
        let stdout = open_log(&launch.stdout)?;
        // srun's own messages ("task 1: Exited with exit code 3") go to the trial's stderr.
        let srun_log = open_log(&launch.stderr)?;
        let mut command = Command::new("srun");
        command
            .args(&args)
            .env_clear()
            .envs(env)
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|source| ExecutorError::Spawn {
            program: "srun".to_string(),
            source,
        })?;
        let srun_group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .unwrap_or(0);
        let stderr = child.stderr.take();

        let cw = slurm_cpus(launch.resources.cpu);
        let gw = launch.resources.gpu;
        for share in &shares {
            self.free[share.node].0 -= share.workers * cw;
            self.free[share.node].1 -= share.workers * gw;
        }
        let shared = Arc::new(StepShared {
            job_id: self.allocation.job_id.clone(),
            step_name,
            srun_group,
            finished: AtomicBool::new(false),
            stop_requested: AtomicBool::new(false),
        });
        tokio::spawn(supervise(
            launch.trial,
            launch.run,
            launch.workers,
            child,
            stderr,
            tokio::fs::File::from_std(srun_log),
            Arc::clone(&shared),
            self.events.clone(),
        ));
        let label = self.describe(&shares, cw, gw, launch.workers);
        let nodes = shares
            .iter()
            .map(|s| rtune_core::NodeShare {
                node: self.allocation.nodes[s.node].name.clone(),
                cpus: s.workers * cw,
                gpus: Vec::new(),
                gpu_count: s.workers * gw,
            })
            .collect();
        self.trials.insert(
            launch.trial,
            StepSlot {
                shares,
                cpus_per_worker: cw,
                gpus_per_worker: gw,
                shared,
                stop_requested: false,
            },
        );
        Ok(Placement {
            executor: rtune_core::ExecutorKind::SlurmStep,
            queued: false,
            queue_reason: None,
            job_id: Some(self.allocation.job_id.clone()),
            step_id: None,
            nodes,
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
        slot.shared.stop_requested.store(true, Ordering::SeqCst);
        tokio::spawn(stop_step(Arc::clone(&slot.shared), grace));
    }

    fn release(&mut self, trial: TrialId) {
        let Some(slot) = self.trials.remove(&trial) else {
            return;
        };
        for share in slot.shares {
            self.free[share.node].0 += share.workers * slot.cpus_per_worker;
            self.free[share.node].1 += share.workers * slot.gpus_per_worker;
        }
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

/// TERM to the step's tasks now, KILL after `grace` if the run has not ended by then.
async fn stop_step(shared: Arc<StepShared>, grace: Duration) {
    signal_step(&shared, "TERM").await;
    tokio::time::sleep(grace).await;
    if !shared.finished.load(Ordering::SeqCst) {
        signal_step(&shared, "KILL").await;
    }
}

/// Sends a signal to every task of the run's step. Without a step yet (srun still waits for
/// resources) srun itself gets SIGTERM, which withdraws its request (or cancels the step).
async fn signal_step(shared: &StepShared, signal: &str) {
    let mut ids = step_ids(&shared.job_id, &shared.step_name).await;
    // A busy controller may miss a request: look again for a while before falling back to srun.
    let deadline = Instant::now() + STEP_LOOKUP_RETRY;
    while ids.is_empty() && Instant::now() < deadline && !shared.finished.load(Ordering::SeqCst) {
        tokio::time::sleep(STEP_POLL).await;
        ids = step_ids(&shared.job_id, &shared.step_name).await;
    }
    if ids.is_empty() {
        tracing::warn!(
            "step {} of job {} not found; asking srun to end it",
            shared.step_name,
            shared.job_id
        );
        if !shared.finished.load(Ordering::SeqCst) {
            signal_group(shared.srun_group, libc::SIGTERM);
        }
        return;
    }
    for id in ids {
        if let Err(e) = slurm_async("scancel", &[&format!("--signal={signal}"), &id]).await {
            tracing::warn!("cannot signal step {id}: {e}");
        }
    }
}

/// The ids of the job's steps called `step_name` (normally one, none once it has ended).
async fn step_ids(job_id: &str, step_name: &str) -> Vec<String> {
    match slurm_async("squeue", &["-h", "-s", "-j", job_id, "-o", "%i|%j"]).await {
        Ok(text) => super::slurm_common::parse_step_list(&text)
            .into_iter()
            .filter(|(_, name)| name == step_name)
            .map(|(id, _)| id)
            .collect(),
        Err(e) => {
            tracing::warn!("cannot list the steps of job {job_id}: {e}");
            Vec::new()
        }
    }
}

/// [`run_slurm_command`] without blocking the runtime.
pub(crate) async fn slurm_async(program: &str, args: &[&str]) -> Result<String, ExecutorError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await;
    slurm_command_result(program, args, output)
}

/// Waits for srun, copies its messages to the trial's stderr, makes sure the step is gone and
/// sends the run's single Exited event.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    trial: TrialId,
    run: u32,
    workers: u32,
    mut child: tokio::process::Child,
    stderr: Option<tokio::process::ChildStderr>,
    mut log: tokio::fs::File,
    shared: Arc<StepShared>,
    events: UnboundedSender<ExecutorEvent>,
) {
    // srun's first report of a failed task names the culprit; later ones are usually the
    // others being killed because of it.
    let mut first_failure: Option<(u32, String)> = None;
    if let Some(stderr) = stderr {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            if first_failure.is_none()
                && let Some((task, message)) = parse_srun_task_line(&line)
            {
                first_failure = Some((task, message));
            }
        }
    }
    let _ = log.flush().await;
    let status = child.wait().await;

    // A step whose srun died (SIGKILL, a crash) can outlive it; end it before telling the loop
    // that the trial's resources are free.
    let deadline = Instant::now() + STEP_GONE_WAIT;
    loop {
        let ids = step_ids(&shared.job_id, &shared.step_name).await;
        if ids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for id in &ids {
            let _ = slurm_async("scancel", &["--signal=KILL", id]).await;
            let _ = slurm_async("scancel", &[id]).await;
        }
        tokio::time::sleep(STEP_POLL).await;
    }
    shared.finished.store(true, Ordering::SeqCst);

    let several = workers > 1;
    let (success, message) = match (first_failure, status) {
        (Some((task, message)), _) => (
            false,
            if several {
                format!("worker {task}: {message}")
            } else {
                message
            },
        ),
        // srun ends the step itself when it gets SIGTERM (rtune's fallback when it cannot find
        // the step) and then exits 0 without a word about the tasks: not a success.
        (None, Ok(status)) if status.success() && shared.stop_requested.load(Ordering::SeqCst) => {
            (false, "stopped: srun ended the step".to_string())
        }
        (None, Ok(status)) if status.success() => (
            true,
            if several {
                format!("all {workers} workers: exit code 0")
            } else {
                "exit code 0".to_string()
            },
        ),
        (None, Ok(status)) => {
            let (_, message) = describe_exit(status);
            (false, format!("srun: {message}"))
        }
        (None, Err(error)) => (false, format!("cannot wait for srun: {error}")),
    };
    let _ = events.send(ExecutorEvent::Exited {
        trial,
        run,
        success,
        message,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpus: u32, gpus: u32) -> AllocationNode {
        AllocationNode {
            name: name.to_string(),
            addr: name.to_string(),
            cpus,
            gpus,
            mem_mb: None,
        }
    }

    fn res(cpu: f64, gpu: u32) -> Resources {
        Resources { cpu, gpu }
    }

    #[test]
    fn reads_the_allocation_from_scontrol() {
        let text = "JobId=2 JobName=probe\n   JobState=RUNNING Reason=None\n   NodeList=n[1-2]\n   \
                    JOB_GRES=gpu:4\n     Nodes=n[1-2] CPU_IDs=0-3 Mem=0 GRES=gpu:2(IDX:0-1)\n   \
                    MinCPUsNode=4\n";
        let nodes = parse_job_allocation(text).expect("valid");
        assert_eq!(nodes, vec![node("n1", 4, 2), node("n2", 4, 2)]);

        let one_line = "JobId=3 JobState=RUNNING NodeList=n[2,5] JOB_GRES=gpu:1   Nodes=n2 \
                        CPU_IDs=0-1 Mem=2048 GRES=gpu:a100:1(IDX:1)   Nodes=n5 CPU_IDs=0,4-6 \
                        Mem=4096 GRES= MinCPUsNode=2";
        let nodes = parse_job_allocation(one_line).expect("valid");
        assert_eq!(nodes.len(), 2);
        assert_eq!(
            (nodes[0].cpus, nodes[0].gpus, nodes[0].mem_mb),
            (2, 1, Some(2048))
        );
        assert_eq!(
            (nodes[1].cpus, nodes[1].gpus, nodes[1].mem_mb),
            (4, 0, Some(4096))
        );

        let err =
            parse_job_allocation("JobId=4 JobState=PENDING Reason=Resources").expect_err("pending");
        assert!(err.contains("PENDING"), "{err}");
        assert!(parse_job_allocation("JobId=4 JobState=RUNNING").is_err());
    }

    #[test]
    fn counts_gpus_in_gres() {
        assert_eq!(count_gpus("gpu:2(IDX:0-1)"), Ok(2));
        assert_eq!(count_gpus("gpu:a100:1(IDX:3),mps:100(IDX:0)"), Ok(1));
        assert_eq!(count_gpus("gpu:4"), Ok(4));
        assert_eq!(count_gpus(""), Ok(0));
        assert_eq!(count_gpus("gpu:1(IDX:0,2)"), Ok(2));
    }

    #[test]
    fn reads_node_addresses() {
        let text = "NodeName=n1 Arch=x86_64 NodeAddr=10.0.0.1 NodeHostName=a\n\
                    NodeName=n2 NodeAddr=n2.cluster NodeHostName=b\n";
        let addrs = parse_node_addresses(text);
        assert_eq!(addrs["n1"], "10.0.0.1");
        assert_eq!(addrs["n2"], "n2.cluster");
    }

    #[test]
    fn places_trials_on_the_node_with_most_room() {
        // Equal nodes: the first; then the other one, which now has more room.
        assert_eq!(
            place_trial(&[(4, 2), (4, 2)], 1, 1, 1),
            Some(vec![NodeShare {
                node: 0,
                workers: 1
            }])
        );
        assert_eq!(
            place_trial(&[(3, 1), (4, 2)], 1, 1, 1),
            Some(vec![NodeShare {
                node: 1,
                workers: 1
            }])
        );
        // GPUs bind: no GPU left on node 0.
        assert_eq!(
            place_trial(&[(4, 0), (1, 1)], 1, 1, 1),
            Some(vec![NodeShare {
                node: 1,
                workers: 1
            }])
        );
        assert_eq!(place_trial(&[(4, 0), (0, 2)], 1, 1, 1), None);
        // Too big for one node: spans nodes, the roomiest first.
        assert_eq!(
            place_trial(&[(2, 2), (4, 2)], 3, 1, 1),
            Some(vec![
                NodeShare {
                    node: 0,
                    workers: 2
                },
                NodeShare {
                    node: 1,
                    workers: 1
                }
            ])
        );
        assert_eq!(place_trial(&[(2, 1), (4, 1)], 3, 1, 1), None);
        // Needs nothing: always fits.
        assert!(place_trial(&[(0, 0)], 2, 0, 0).is_some());
        assert_eq!(place_trial(&[], 1, 1, 0), None);
    }

    #[test]
    fn srun_command_line_pins_nodes_and_resources() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut nodes = vec![node("n1", 4, 2), node("n2", 4, 2)];
        nodes[0].mem_mb = Some(8000);
        nodes[1].mem_mb = Some(16000);
        let allocation = Allocation {
            job_id: "77".into(),
            nodes,
        };
        let ex = SlurmExecutor::with_allocation(
            allocation,
            Some("n1"),
            SlurmExecutorConfig {
                reserve_cpus: 1.0,
                srun_args: vec!["--mpi=none".into()],
                ..Default::default()
            },
            tx,
        )
        .expect("valid")
        .with_environment(vec![
            ("PATH".into(), "/bin".into()),
            ("SLURM_GPUS_PER_NODE".into(), "2".into()),
        ]);
        // The reserve applies on rtune's own node only.
        assert_eq!(ex.free, vec![(3, 2), (4, 2)]);
        let launch = TrialLaunch {
            trial: TrialId(3),
            run: 2,
            command: vec!["python".into(), "t.py".into()],
            env: vec![("RTUNE_SECRET".into(), "s".into())],
            workers: 3,
            resources: Resources { cpu: 1.5, gpu: 1 },
            cwd: "/w".into(),
            stdout: "/r/stdout.log".into(),
            stderr: "/r/stderr.log".into(),
        };
        let shares = vec![
            NodeShare {
                node: 1,
                workers: 2,
            },
            NodeShare {
                node: 0,
                workers: 1,
            },
        ];
        let args = ex.srun_args(&launch, &shares, "rtune-trial_00003-run2");
        let head: Vec<&str> = args.iter().take(13).map(String::as_str).collect();
        assert_eq!(
            head,
            [
                "--jobid=77",
                "--job-name=rtune-trial_00003-run2",
                "--exact",
                "--nodes=2",
                "--ntasks=3",
                "--nodelist=n2,n2,n1",
                "--distribution=arbitrary",
                "--cpus-per-task=2",
                "--kill-on-bad-exit=1",
                "--input=none",
                "--gpus-per-task=1",
                // The job's memory per CPU on the tighter node: 8000 MiB / 4 CPUs.
                "--mem-per-cpu=2000M",
                "--mpi=none",
            ]
        );
        assert_eq!(&args[13..15], ["sh", "-c"]);
        assert_eq!(&args[16..], ["rtune-worker", "python", "t.py"]);
        let env = ex.step_env(&launch, &shares);
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("SLURM_GPUS_PER_NODE"), None);
        assert_eq!(get("RTUNE_SECRET"), Some("s"));
        assert_eq!(get("OMP_NUM_THREADS"), Some("2"));
        assert_eq!(get("MASTER_ADDR"), Some("n2"));
        assert_eq!(
            get("MASTER_PORT"),
            Some(master_port(77, TrialId(3), 2).to_string().as_str())
        );
        assert_eq!(
            ex.describe(&shares, 2, 1, 3),
            "n2 cpu=4 gpus=2 + n1 cpu=2 gpus=1 workers=3"
        );

        // [trial.env] replaces or (empty) unsets what the executor sets, in the step's
        // environment and, for the variables the task wrapper sets itself, after it.
        let mut launch = launch;
        for (key, value) in [
            ("MASTER_PORT", "29500"),
            ("OMP_NUM_THREADS", ""),
            ("LOCAL_RANK", ""),
            ("HOME", ""),
        ] {
            launch.env.push((key.into(), value.into()));
        }
        let env = ex.step_env(&launch, &shares);
        let has = |k: &str| env.iter().any(|(n, _)| n == k);
        assert!(!has("OMP_NUM_THREADS") && !has("LOCAL_RANK") && !has("HOME"));
        assert!(env.iter().any(|(k, v)| k == "MASTER_PORT" && v == "29500"));
        assert!(!env.iter().any(|(k, v)| k == "MASTER_PORT" && v != "29500"));
        let args = ex.srun_args(&launch, &shares, "rtune-trial_00003-run2");
        let wrapper = &args[15];
        assert!(
            wrapper.ends_with(
                "unset LOCAL_RANK\nexport MASTER_PORT='29500'\nunset OMP_NUM_THREADS\nexec \"$@\"\n"
            ),
            "{wrapper}"
        );
    }

    #[test]
    fn cpu_requests_become_whole_cpus() {
        assert_eq!(slurm_cpus(0.0), 1);
        assert_eq!(slurm_cpus(0.5), 1);
        assert_eq!(slurm_cpus(2.0), 2);
        assert_eq!(slurm_cpus(2.1), 3);
    }

    #[test]
    fn plans_with_the_arithmetic_per_node() {
        let nodes = [node("n1", 4, 2), node("n2", 4, 2)];
        let plan = plan_allocation(&nodes, &[1, 0], None, 1, &res(1.0, 1)).expect("fits");
        assert_eq!(plan.concurrent_trials, 4);
        assert_eq!(
            plan.explanation,
            "4 trials at once on 2 of 2 nodes (1 worker x 1 CPU + 1 GPU each)\n  \
             n1: 2 trials: CPUs: reserve + trials x workers x CPUs per worker <= node CPUs: \
             1 + 2 x 1 x 1 = 3 <= 4; GPUs: trials x workers x GPUs per worker <= node GPUs: \
             2 x 1 x 1 = 2 <= 2\n  \
             n2: 2 trials: CPUs: reserve + trials x workers x CPUs per worker <= node CPUs: \
             0 + 2 x 1 x 1 = 2 <= 4; GPUs: trials x workers x GPUs per worker <= node GPUs: \
             2 x 1 x 1 = 2 <= 2"
        );
        // CPUs bind.
        let plan = plan_allocation(&nodes, &[0, 0], None, 1, &res(3.0, 0)).expect("fits");
        assert_eq!(plan.concurrent_trials, 2);
        // The cap.
        let plan = plan_allocation(&nodes, &[0, 0], Some(3), 1, &res(1.0, 0)).expect("fits");
        assert_eq!(plan.concurrent_trials, 3);
        assert!(
            plan.explanation
                .contains("executor.max_concurrent_trials = 3")
        );
        // A trial spanning both nodes.
        let plan = plan_allocation(&nodes, &[0, 0], None, 3, &res(1.0, 1)).expect("fits");
        assert_eq!(plan.concurrent_trials, 1);
        assert!(plan.explanation.contains("n1: 1 trial: CPUs: reserve + trials x workers x CPUs per worker <= node CPUs: 0 + 2 workers x 1 = 2 <= 4"), "{}", plan.explanation);
    }

    #[test]
    fn never_fits_shows_the_arithmetic() {
        let nodes = [node("n1", 4, 2), node("n2", 4, 2)];
        let err = plan_allocation(&nodes, &[0, 0], None, 1, &res(1.0, 3)).expect_err("3 GPUs");
        let text = err.to_string();
        assert!(matches!(err, ExecutorError::NeverFits(_)));
        assert!(
            text.starts_with(
                "a trial needs 1 worker x 1 CPU + 3 GPUs = 1 CPU and 3 GPUs, but the \
                 allocation's 2 nodes have 8 CPUs and 4 GPUs for trials:"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "GPUs: trials x workers x GPUs per worker <= node GPUs: 1 x 1 x 3 = 3 > 2"
            ),
            "{text}"
        );
        assert!(text.contains("hint:"), "{text}");
        assert!(plan_allocation(&nodes, &[0, 0], None, 0, &res(1.0, 0)).is_err());
    }
}

//! The job-per-trial executor: every trial run is its own `sbatch` job with its own resources.
//!
//! rtune may run anywhere `sbatch` works (a login node, or a small head job); capacity follows
//! the queue. Each job runs the trial's tasks with `srun` inside the job, with the same task
//! wrapper and environment as the step executor. A task per job polls `scontrol show job` and
//! turns SLURM's job states into what the run loop knows: a queued job keeps the trial's
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
use std::time::{Duration, Instant};

use rtune_core::TrialId;
use tokio::process::Command;
use tokio::sync::Mutex;
use tokio::sync::mpsc::UnboundedSender;

use super::local::{plural, validate_request};
use super::slurm::{count_gpus, slurm_async, slurm_cpus};
use super::slurm_common::{
    check_program, clean_environment, field, key_values, process_environment, run_name,
    run_slurm_command, shell_quote, worker_wrapper,
};
use super::{
    CapacityPlan, Executor, ExecutorError, ExecutorEvent, Placement, Resources, TrialLaunch,
};

/// Job names start with this.
const JOB_PREFIX: &str = "rtune-";
/// How long `shutdown` waits for cancelled jobs to end after the grace period.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

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

/// What `scontrol show job` says about a job.
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
}

/// Reads `scontrol show job -o <id>`; None when the text is not a job.
pub fn parse_job_status(text: &str) -> Option<JobStatus> {
    let fields = key_values(text);
    Some(JobStatus {
        state: field(&fields, "JobState")?.to_string(),
        reason: field(&fields, "Reason").unwrap_or("None").to_string(),
        exit_code: field(&fields, "ExitCode").unwrap_or("0:0").to_string(),
        nodes: field(&fields, "NodeList").unwrap_or("").to_string(),
    })
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
    let (code, signal) = status
        .exit_code
        .split_once(':')
        .map(|(c, s)| (c.parse::<i32>().unwrap_or(0), s.parse::<i32>().unwrap_or(0)))
        .unwrap_or((0, 0));
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
        other => other.to_lowercase(),
    };
    (
        false,
        format!("job {job_id} {}{reason}: {what}", status.state),
    )
}

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
    if let Some(partition) = &config.partition {
        directive(format!("--partition={partition}"));
    }
    if let Some(time) = &config.time_limit {
        directive(format!("--time={time}"));
    }
    if let Some(account) = &config.account {
        directive(format!("--account={account}"));
    }
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
        shell_quote(&worker_wrapper(
            launch.workers,
            launch.resources.gpu == 0,
            &launch.stdout,
            &launch.stderr,
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
    state: Mutex<String>,
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
        let mut env = self.base_env.clone();
        env.extend(launch.env.iter().cloned());
        if !launch.env.iter().any(|(k, _)| k == "OMP_NUM_THREADS") {
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
                if listed.is_empty() {
                    "sinfo lists no nodes".to_string()
                } else {
                    listed.join(", ")
                }
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
        let Some(program) = launch.command.first() else {
            return Err(ExecutorError::Invalid(
                "the trial command is empty".to_string(),
            ));
        };
        validate_request(launch.workers, &launch.resources)?;
        if self.trials.contains_key(&launch.trial) {
            return Err(ExecutorError::Invalid(format!(
                "trial {} is already running (or not released)",
                launch.trial
            )));
        }
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
            state: Mutex::new("PENDING".to_string()),
            finished: AtomicBool::new(false),
        });
        let shape = format!(
            "cpu={}{}",
            launch.workers * slurm_cpus(launch.resources.cpu),
            if launch.resources.gpu > 0 {
                format!(" gpus={}", launch.workers * launch.resources.gpu)
            } else {
                String::new()
            }
        );
        tokio::spawn(watch_job(
            launch.trial,
            launch.run,
            shape,
            Arc::clone(&shared),
            self.config.poll_interval,
            self.events.clone(),
        ));
        self.trials.insert(
            launch.trial,
            JobSlot {
                shared,
                stop_requested: false,
            },
        );
        Ok(Placement {
            description: format!("job {job_id} PENDING (submitted)"),
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
        let shared = Arc::clone(&slot.shared);
        tokio::spawn(async move {
            let pending = *shared.state.lock().await == "PENDING";
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
        let jobs: Vec<String> = self
            .trials
            .values_mut()
            .filter(|slot| !slot.shared.finished.load(Ordering::SeqCst))
            .map(|slot| {
                slot.stop_requested = true;
                slot.shared.job_id.clone()
            })
            .collect();
        if jobs.is_empty() {
            return;
        }
        let list = jobs.join(",");
        // Blocking, like the local executor's shutdown: the runtime may be single-threaded.
        let _ = run_slurm_command("scancel", &["--state=PENDING", &list]);
        let _ = run_slurm_command("scancel", &["--signal=TERM", &list]);
        let all_final = || {
            jobs.iter().all(|id| {
                run_slurm_command("scontrol", &["show", "job", "-o", id])
                    .ok()
                    .and_then(|text| parse_job_status(&text))
                    .is_none_or(|status| is_final_state(&status.state))
            })
        };
        let deadline = Instant::now() + grace;
        while !all_final() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = run_slurm_command("scancel", &[&list]);
        let deadline = Instant::now() + CANCEL_WAIT;
        while !all_final() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        // The watching tasks send the Exited events once the runtime runs again.
    }
}

/// Polls one job until it is final; sends Placed on changes while it waits or runs, then the
/// single Exited.
async fn watch_job(
    trial: TrialId,
    run: u32,
    shape: String,
    shared: Arc<JobShared>,
    interval: Duration,
    events: UnboundedSender<ExecutorEvent>,
) {
    let id = shared.job_id.clone();
    let mut last_description = format!("job {id} PENDING (submitted)");
    let mut failures_in_a_row = 0u32;
    let (success, message) = loop {
        let status = match Command::new("scontrol")
            .args(["show", "job", "-o", &id])
            .stdin(Stdio::null())
            .output()
            .await
        {
            Ok(out) if out.status.success() => {
                parse_job_status(&String::from_utf8_lossy(&out.stdout))
            }
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                if err.contains("Invalid job id") {
                    break (
                        false,
                        format!(
                            "job {id} is no longer known to SLURM (it ended more than MinJobAge \
                             ago, before rtune looked)"
                        ),
                    );
                }
                None
            }
            Err(_) => None,
        };
        match status {
            None => {
                failures_in_a_row += 1;
                if failures_in_a_row >= 30 {
                    break (
                        false,
                        format!("cannot read the state of job {id} with scontrol"),
                    );
                }
            }
            Some(status) => {
                failures_in_a_row = 0;
                *shared.state.lock().await = status.state.clone();
                if is_final_state(&status.state) {
                    // A short job may have started and ended between two looks: still say where
                    // it ran.
                    if !status.nodes.is_empty() && status.nodes != "(null)" {
                        let description = format!("job {id} {} {shape}", status.nodes);
                        if description != last_description {
                            let _ = events.send(ExecutorEvent::Placed {
                                trial,
                                run,
                                description,
                            });
                        }
                    }
                    break job_outcome(&id, &status);
                }
                let description = match status.state.as_str() {
                    "PENDING" => format!("job {id} PENDING ({})", status.reason),
                    "RUNNING" | "COMPLETING" => format!("job {id} {} {shape}", status.nodes),
                    other => format!("job {id} {other} ({})", status.reason),
                };
                if description != last_description {
                    last_description = description.clone();
                    let _ = events.send(ExecutorEvent::Placed {
                        trial,
                        run,
                        description,
                    });
                }
            }
        }
        tokio::time::sleep(interval).await;
    };
    shared.finished.store(true, Ordering::SeqCst);
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
    use std::path::PathBuf;

    fn status(state: &str, reason: &str, exit: &str) -> JobStatus {
        JobStatus {
            state: state.to_string(),
            reason: reason.to_string(),
            exit_code: exit.to_string(),
            nodes: String::new(),
        }
    }

    #[test]
    fn parses_job_status() {
        let text = "JobId=12 JobName=x UserId=root(0) JobState=PENDING Reason=Resources \
                    Dependency=(null) ExitCode=0:0 NodeList=(null)";
        assert_eq!(
            parse_job_status(text),
            Some(JobStatus {
                state: "PENDING".into(),
                reason: "Resources".into(),
                exit_code: "0:0".into(),
                nodes: "(null)".into()
            })
        );
        assert_eq!(
            parse_job_status("slurm_load_jobs error: Invalid job id"),
            None
        );
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

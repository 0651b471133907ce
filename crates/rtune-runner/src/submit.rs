//! `rtune submit` and `rtune plan`: the head job of an experiment on SLURM, and how many trials
//! an allocation of a given shape runs at once.
//!
//! The head job is one allocation of `nodes x (cpus, gpus)`; `rtune run --executor slurm` runs
//! in its batch step and starts every trial as a job step of that allocation. Its log begins with
//! `===== JOB <id> START : <time> =====` and ends with `===== JOB <id> FINISH : <time> =====`,
//! after the final table and the best trial that `rtune run` prints.

use std::path::{Path, PathBuf};

use crate::executor::slurm_common::shell_quote;
use crate::executor::{AllocationNode, CapacityPlan, ExecutorError, Resources, plan_allocation};

/// The shape of the allocation asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct AllocationShape {
    /// `--nodes`.
    pub nodes: u32,
    /// CPUs on each node (`--cpus-per-task` with one task per node).
    pub cpus_per_node: u32,
    /// `--gpus-per-node`.
    pub gpus_per_node: u32,
}

/// The capacity plan for an allocation of this shape: rtune runs on the first node, where
/// `reserve_cpus` stay free.
pub fn plan_for_shape(
    shape: &AllocationShape,
    reserve_cpus: f64,
    max_concurrent_trials: Option<u32>,
    workers: u32,
    per_worker: &Resources,
) -> Result<CapacityPlan, ExecutorError> {
    if shape.nodes == 0 || shape.cpus_per_node == 0 {
        return Err(ExecutorError::Invalid(
            "--nodes and --cpus-per-node must be at least 1".to_string(),
        ));
    }
    let nodes: Vec<AllocationNode> = (1..=shape.nodes)
        .map(|i| AllocationNode {
            name: format!("node{i}"),
            addr: format!("node{i}"),
            cpus: shape.cpus_per_node,
            gpus: shape.gpus_per_node,
            mem_mb: None,
        })
        .collect();
    let mut reserve = vec![0u32; nodes.len()];
    reserve[0] = reserve_cpus.ceil().max(0.0) as u32;
    plan_allocation(&nodes, &reserve, max_concurrent_trials, workers, per_worker)
}

/// Everything the head job script needs.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadJob {
    /// `--job-name`.
    pub job_name: String,
    pub shape: AllocationShape,
    /// `--time`; None leaves the partition's default limit.
    pub time: Option<String>,
    /// More sbatch options, each a whole option as sbatch reads it (`--partition=gpu`,
    /// `--exclusive`, `--mail-type=END`), written as `#SBATCH` lines in this order.
    pub sbatch_options: Vec<String>,
    /// The job's log; `%j` stands for the job id.
    pub log: PathBuf,
    /// The directory `rtune run` runs in.
    pub workdir: PathBuf,
    /// The rtune binary.
    pub rtune: PathBuf,
    /// The experiment file (absolute).
    pub experiment: PathBuf,
    /// The trial layout: `slurm` (trials are job steps of this job) or `slurm-jobs` (this job
    /// runs rtune only; every trial run is its own job).
    pub executor: String,
    /// Arguments after `rtune run EXPERIMENT --executor EXECUTOR` (`--set`, `--name`,
    /// `--storage`).
    pub run_args: Vec<String>,
    /// Time-limit chaining; None: the experiment ends with the job's time limit.
    pub chain: Option<Chain>,
}

/// How a head job continues past its time limit: SLURM warns it `grace_s` seconds before the
/// limit (`--signal=B:USR1@grace_s`), rtune pauses the trials, writes the state and submits
/// `resume_script`, which runs `rtune resume` on the experiment's directory in a new job with the
/// same options.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    /// Seconds before the time limit at which SLURM sends SIGUSR1.
    pub grace_s: u32,
    /// How many more head jobs may follow this one; None: until the experiment is done.
    pub max_resubmits: Option<u32>,
    /// The experiment's directory (what the next jobs resume).
    pub experiment_dir: PathBuf,
    /// The script of the next jobs (written next to the first job's script).
    pub resume_script: PathBuf,
}

/// Seconds of a SLURM time limit as `--time` takes it: `minutes`, `minutes:seconds`,
/// `hours:minutes:seconds`, `days-hours`, `days-hours:minutes`, `days-hours:minutes:seconds`.
/// None for anything else (`UNLIMITED`, a typo: sbatch then says what is wrong).
pub fn time_limit_seconds(time: &str) -> Option<u64> {
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (days, rest) = match time.trim().split_once('-') {
        Some((d, rest)) => (Some(number(d)?), rest),
        None => (None, time.trim()),
    };
    let parts: Vec<u64> = rest.split(':').map(number).collect::<Option<_>>()?;
    let seconds = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some(seconds)
}

/// The warning's lead before the time limit: `given` (`--signal-grace`), which must be shorter
/// than the limit, else 300 s, but at most a fifth of the limit, so a short job still works for
/// most of its time.
pub fn signal_grace(given: Option<u32>, time: &str) -> Result<u32, String> {
    let limit = time_limit_seconds(time);
    match (given, limit) {
        (Some(grace), Some(limit)) if u64::from(grace) >= limit => Err(format!(
            "--signal-grace {grace} is not shorter than the time limit --time {time} ({limit} s): \
             give a smaller --signal-grace"
        )),
        (Some(grace), _) => Ok(grace),
        (None, Some(limit)) => Ok(u32::try_from((limit / 5).min(300)).unwrap_or(300)),
        (None, None) => Ok(300),
    }
}

/// The exit status of rtune (and its head job) when it stopped for the job's time limit and
/// submitted the next head job: the experiment goes on there. Not 0 (it is not done here) and
/// not an error: EX_TEMPFAIL, "try again later", which the next job does.
pub const CONTINUED_EXIT: u8 = 75;

/// The file in which a head job that resubmitted names its successor, for its log's FINISH line.
pub fn next_job_file(slurm_dir: &Path, job_id: &str) -> PathBuf {
    slurm_dir.join(format!("job-{job_id}.next"))
}

/// Checks an sbatch option given on the command line: one option (starting with `-`), one line.
pub fn check_sbatch_option(option: &str) -> Result<(), String> {
    if !option.starts_with('-') {
        return Err(format!(
            "{option:?} is not an sbatch option: give it as sbatch reads it, e.g. \
             --sbatch-arg=--reservation=big or --sbatch-arg=-C=a100"
        ));
    }
    if option.contains(['\n', '\r']) {
        return Err(format!(
            "{option:?} spans several lines: give one option per --sbatch-arg"
        ));
    }
    Ok(())
}

/// The shell functions both the generated head job and slurm/rtune.sbatch use for the first and
/// the last line of the log.
pub const STAMP_FUNCTION: &str = "stamp() { date '+%Y-%m-%d %H:%M:%S %:::z'; }";

/// SLURM ends a job (scancel, the time limit) with SIGTERM to every process of it. rtune then
/// stops its trials and writes its state; the shell must outlive it to write the FINISH line,
/// so it traps SIGTERM (a trap, unlike an ignored signal, is not inherited by rtune).
pub const TERM_TRAP: &str = "trap 'echo \"received SIGTERM; rtune is stopping the trials\"' TERM";

/// The head job's batch script: `rtune run` (the first job of a chain).
pub fn head_job_script(job: &HeadJob) -> String {
    let mut command = vec![
        shell_quote(&job.rtune.display().to_string()),
        "run".to_string(),
        shell_quote(&job.experiment.display().to_string()),
        "--executor".to_string(),
        job.executor.clone(),
    ];
    command.extend(job.run_args.iter().map(|a| shell_quote(a)));
    job_script(job, &command, false)
}

/// The script of the jobs that continue a chain: `rtune resume` on the experiment's directory,
/// with the first job's options. Its arguments: how many more jobs may follow (`unlimited` or a
/// number) and the previous job's id.
pub fn resume_job_script(job: &HeadJob) -> Option<String> {
    let chain = job.chain.as_ref()?;
    let command = vec![
        shell_quote(&job.rtune.display().to_string()),
        "resume".to_string(),
        shell_quote(&chain.experiment_dir.display().to_string()),
        "--executor".to_string(),
        job.executor.clone(),
    ];
    Some(job_script(job, &command, true))
}

fn job_script(job: &HeadJob, rtune_command: &[String], continues: bool) -> String {
    let mut s = String::from("#!/bin/bash\n");
    s.push_str("# The head job of an rtune experiment, written by `rtune submit`.\n");
    let mut directive = |option: String| s.push_str(&format!("#SBATCH {option}\n"));
    directive(format!("--job-name={}", job.job_name));
    directive(format!("--nodes={}", job.shape.nodes));
    directive("--ntasks-per-node=1".to_string());
    directive(format!("--cpus-per-task={}", job.shape.cpus_per_node));
    if job.shape.gpus_per_node > 0 {
        directive(format!("--gpus-per-node={}", job.shape.gpus_per_node));
    }
    if let Some(time) = &job.time {
        directive(format!("--time={time}"));
    }
    for option in &job.sbatch_options {
        directive(option.clone());
    }
    directive(format!("--output={}", job.log.display()));
    // Never overwrite an earlier job's log (--open-mode=append keeps a requeued job's lines).
    directive("--open-mode=append".to_string());
    directive(format!("--chdir={}", job.workdir.display()));
    let Some(chain) = &job.chain else {
        s.push_str(STAMP_FUNCTION);
        s.push('\n');
        s.push_str(TERM_TRAP);
        s.push('\n');
        s.push_str("echo \"===== JOB $SLURM_JOB_ID START : $(stamp) =====\"\n");
        s.push_str(&rtune_command.join(" "));
        s.push_str("\nstatus=$?\n");
        s.push_str("echo \"rtune exited with status $status\"\n");
        s.push_str("echo \"===== JOB $SLURM_JOB_ID FINISH : $(stamp) =====\"\n");
        s.push_str("exit $status\n");
        return s;
    };
    // `B:` sends the warning to this shell only; it passes it on to rtune.
    directive(format!("--signal=B:USR1@{}", chain.grace_s));
    s.push_str(STAMP_FUNCTION);
    s.push('\n');
    s.push_str(TERM_TRAP);
    s.push('\n');
    let limit = chain
        .max_resubmits
        .map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    if continues {
        s.push_str("resubmits_left=$1\nprevious=$2\n");
    } else {
        s.push_str(&format!("resubmits_left={limit}\nprevious=\n"));
    }
    s.push_str(
        "echo \"===== JOB $SLURM_JOB_ID START : $(stamp) =====${previous:+ (continues job $previous)}\"\n",
    );
    let next_file = next_job_file(
        chain.resume_script.parent().unwrap_or(Path::new(".")),
        "$SLURM_JOB_ID",
    );
    let mut command = rtune_command.to_vec();
    command.extend([
        "--resubmit".to_string(),
        shell_quote(&chain.resume_script.display().to_string()),
        "--resubmits-left".to_string(),
        "\"$resubmits_left\"".to_string(),
    ]);
    // rtune starts with SIGUSR1 ignored, so a warning that comes before it listens cannot kill
    // it; it runs in the background so that this shell can pass the warning on.
    s.push_str("trap '' USR1\n");
    s.push_str(&command.join(" "));
    s.push_str(" &\npid=$!\n");
    s.push_str(
        "trap 'echo \"received SIGUSR1: the time limit is near; rtune pauses the trials and submits the next job\"; kill -USR1 $pid 2>/dev/null' USR1\n",
    );
    // `wait` returns early for every trapped signal: wait until rtune has really exited.
    s.push_str("while kill -0 $pid 2>/dev/null; do wait $pid; done\nwait $pid\nstatus=$?\n");
    s.push_str("echo \"rtune exited with status $status\"\n");
    s.push_str(&format!(
        "next=$(cat {} 2>/dev/null)\n",
        shell_quote(&next_file.display().to_string())
            .replace("$SLURM_JOB_ID", "'\"$SLURM_JOB_ID\"'")
    ));
    s.push_str(
        "echo \"===== JOB $SLURM_JOB_ID FINISH : $(stamp) =====${next:+ (continued by job $next)}\"\n",
    );
    s.push_str("exit $status\n");
    s
}

/// The log path with the job id in place of `%j`.
pub fn log_path(pattern: &Path, job_id: &str) -> PathBuf {
    PathBuf::from(pattern.display().to_string().replace("%j", job_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_for_a_shape_with_the_reserve_on_the_head_node() {
        let shape = AllocationShape {
            nodes: 2,
            cpus_per_node: 8,
            gpus_per_node: 4,
        };
        let plan =
            plan_for_shape(&shape, 1.0, None, 1, &Resources { cpu: 2.0, gpu: 1 }).expect("fits");
        // node1: (8 - 1) / 2 = 3 by CPUs, 4 by GPUs -> 3; node2: 4 by either.
        assert_eq!(plan.concurrent_trials, 7, "{}", plan.explanation);
        assert!(plan.explanation.contains(
            "node1: 3 trials: CPUs: reserve + trials x workers x CPUs per worker <= node CPUs: 1 + 3 x 1 x 2 = 7 <= 8; GPUs: trials x workers x GPUs per worker <= node GPUs: 3 x 1 x 1 = 3 <= 4"
        ), "{}", plan.explanation);
        assert!(
            plan.explanation.contains("node2: 4 trials"),
            "{}",
            plan.explanation
        );

        let err = plan_for_shape(&shape, 0.0, None, 1, &Resources { cpu: 1.0, gpu: 5 })
            .expect_err("5 GPUs per worker");
        assert!(err.to_string().contains("1 x 1 x 5 = 5 > 4"), "{err}");
        assert!(
            plan_for_shape(
                &AllocationShape { nodes: 0, ..shape },
                0.0,
                None,
                1,
                &Resources::default()
            )
            .is_err()
        );
    }

    #[test]
    fn writes_the_head_job_script() {
        let job = HeadJob {
            job_name: "rtune-asha".into(),
            shape: AllocationShape {
                nodes: 2,
                cpus_per_node: 4,
                gpus_per_node: 2,
            },
            time: Some("01:00:00".into()),
            sbatch_options: vec![
                "--partition=gpu".into(),
                "--qos=short".into(),
                "--exclusive".into(),
            ],
            log: PathBuf::from("/logs/rtune-asha-%j.log"),
            workdir: PathBuf::from("/work"),
            rtune: PathBuf::from("/opt/rtune/bin/rtune"),
            experiment: PathBuf::from("/work/asha.toml"),
            executor: "slurm".into(),
            run_args: vec!["--set".into(), "space.lr.loguniform=[1e-5, 1e-4]".into()],
            chain: None,
        };
        let script = head_job_script(&job);
        for line in [
            "#SBATCH --nodes=2\n",
            "#SBATCH --ntasks-per-node=1\n",
            "#SBATCH --cpus-per-task=4\n",
            "#SBATCH --gpus-per-node=2\n",
            "#SBATCH --time=01:00:00\n",
            "#SBATCH --partition=gpu\n#SBATCH --qos=short\n#SBATCH --exclusive\n",
            "#SBATCH --output=/logs/rtune-asha-%j.log\n#SBATCH --open-mode=append\n",
            "echo \"===== JOB $SLURM_JOB_ID START : $(stamp) =====\"\n",
            "'/opt/rtune/bin/rtune' run '/work/asha.toml' --executor slurm '--set' \
             'space.lr.loguniform=[1e-5, 1e-4]'\n",
            "echo \"===== JOB $SLURM_JOB_ID FINISH : $(stamp) =====\"\nexit $status\n",
        ] {
            assert!(script.contains(line), "missing {line:?} in\n{script}");
        }
        assert!(!script.contains("--account"));
        assert_eq!(
            log_path(&job.log, "42"),
            PathBuf::from("/logs/rtune-asha-42.log")
        );
        let no_time = head_job_script(&HeadJob {
            time: None,
            executor: "slurm-jobs".into(),
            ..job
        });
        assert!(!no_time.contains("--time"), "{no_time}");
        assert!(no_time.contains("--executor slurm-jobs"), "{no_time}");
    }

    #[test]
    fn reads_time_limits_and_chooses_the_warning() {
        assert_eq!(time_limit_seconds("1"), Some(60));
        assert_eq!(time_limit_seconds("30:15"), Some(1815));
        assert_eq!(time_limit_seconds("04:00:00"), Some(14400));
        assert_eq!(time_limit_seconds("2-12"), Some(216_000));
        assert_eq!(time_limit_seconds("1-00:30"), Some(88200));
        assert_eq!(time_limit_seconds("1-00:00:10"), Some(86410));
        assert_eq!(time_limit_seconds("UNLIMITED"), None);
        assert_eq!(time_limit_seconds("1:2:3:4"), None);
        assert_eq!(time_limit_seconds(""), None);
        assert_eq!(signal_grace(None, "04:00:00"), Ok(300));
        assert_eq!(signal_grace(None, "00:05:00"), Ok(60));
        assert_eq!(signal_grace(Some(40), "1"), Ok(40));
        let err = signal_grace(Some(60), "1").expect_err("not shorter");
        assert!(err.contains("--signal-grace 60"), "{err}");
        assert_eq!(signal_grace(None, "UNLIMITED"), Ok(300));
    }

    #[test]
    fn sbatch_options_are_single_options() {
        assert!(check_sbatch_option("--reservation=big").is_ok());
        assert!(check_sbatch_option("-C").is_ok());
        assert!(check_sbatch_option("reservation=big").is_err());
        assert!(check_sbatch_option("--x=1\n#SBATCH --y").is_err());
    }
}

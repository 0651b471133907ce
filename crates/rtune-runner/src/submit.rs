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

/// The head job's batch script.
pub fn head_job_script(job: &HeadJob) -> String {
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
    s.push_str(STAMP_FUNCTION);
    s.push('\n');
    s.push_str(TERM_TRAP);
    s.push('\n');
    s.push_str("echo \"===== JOB $SLURM_JOB_ID START : $(stamp) =====\"\n");
    let mut command = vec![
        shell_quote(&job.rtune.display().to_string()),
        "run".to_string(),
        shell_quote(&job.experiment.display().to_string()),
        "--executor".to_string(),
        job.executor.clone(),
    ];
    command.extend(job.run_args.iter().map(|a| shell_quote(a)));
    s.push_str(&command.join(" "));
    s.push_str("\nstatus=$?\n");
    s.push_str("echo \"rtune exited with status $status\"\n");
    s.push_str("echo \"===== JOB $SLURM_JOB_ID FINISH : $(stamp) =====\"\n");
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
    fn sbatch_options_are_single_options() {
        assert!(check_sbatch_option("--reservation=big").is_ok());
        assert!(check_sbatch_option("-C").is_ok());
        assert!(check_sbatch_option("reservation=big").is_err());
        assert!(check_sbatch_option("--x=1\n#SBATCH --y").is_err());
    }
}

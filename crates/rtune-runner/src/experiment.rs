//! The experiment file (TOML): reading it strictly, applying `--set` overrides, and saying
//! exactly where a mistake is. docs/experiment-file.md describes every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rtune_core::scheduler::SchedulerSpec;
use rtune_core::searcher::SearcherSpec;
use rtune_core::tuner::{CheckpointRetention, MissingMetric};
use rtune_core::{Config, Mode};
use serde::{Deserialize, Serialize};

use crate::executor::Resources;

/// The whole experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    /// The experiment's directory name under the storage directory.
    pub name: String,
    /// The reported metric that schedulers and the best trial go by.
    pub metric: String,
    pub mode: Mode,
    /// How many configurations to sample (times the number of grid points).
    #[serde(default = "one")]
    pub num_samples: usize,
    #[serde(default)]
    pub seed: u64,
    /// How often a failed trial is restarted (from its latest checkpoint) before it is an ERROR.
    #[serde(default)]
    pub max_failures: u32,
    /// Stop a trial once a result reaches any of these values, e.g. `training_iteration = 5`.
    #[serde(default)]
    pub stop: BTreeMap<String, f64>,
    /// Seconds after the experiment's start when every trial is stopped and it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_budget_s: Option<f64>,
    /// Results (over all trials) after which every trial is stopped and the experiment ends:
    /// a budget of epochs when each result is one (Syne Tune's `max_num_evaluations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_results: Option<u64>,
    /// When the first `fail_fast` trials all end in ERROR, stop the experiment and show their
    /// error instead of running every sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<u32>,
    /// What a result without `metric` does: "error" (default) ends the experiment at the first
    /// one and names the keys that were reported; "ignore" records it (for trainables that
    /// report the metric only sometimes).
    #[serde(default)]
    pub missing_metric: MissingMetric,
    /// Required except with the simulated executor, whose trials are not processes.
    #[serde(default)]
    pub trial: TrialSection,
    /// The search space, kept as a table: [`rtune_core::space::SearchSpace`] parses it.
    #[serde(default)]
    pub space: toml::Table,
    #[serde(default)]
    pub scheduler: SchedulerSpec,
    /// `[searcher]`: what proposes configurations (random search by default).
    #[serde(default)]
    pub searcher: SearcherSpec,
    /// `[checkpoint]`: which checkpoints of each trial are kept.
    #[serde(default)]
    pub checkpoint: CheckpointRetention,
    #[serde(default)]
    pub executor: ExecutorSection,
    #[serde(default)]
    pub output: OutputSection,
}

fn one() -> usize {
    1
}

/// `[trial]`: how a trial's processes are started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialSection {
    /// Program and arguments. A bare program name is looked up next to the rtune binary first
    /// (built-in trainables), then on PATH. Not used (and may be left out) with the simulated
    /// executor.
    #[serde(default)]
    pub command: Vec<String>,
    /// Extra environment variables for every trial process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Resources of each worker process.
    #[serde(default)]
    pub resources: Resources,
    /// Processes per trial (distributed data parallel); rank 0 reports.
    #[serde(default = "one_u32")]
    pub workers: u32,
    /// Working directory of every trial process; default: each trial's own directory (see
    /// [`crate::workdir`]).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Each trial in its own directory (default true, as Ray Tune); false: every trial in the
    /// directory rtune was started in, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chdir_to_trial_dir: Option<bool>,
    /// Seconds a trial told to stop gets to exit before SIGTERM, and between SIGTERM and SIGKILL.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_s: f64,
    /// A run that has not reported for this many seconds is ended and counts as a failure
    /// (retried per `max_failures`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_timeout_s: Option<f64>,
    /// Directories (besides the trial's scratch directory) a trial may hand checkpoints over
    /// from, e.g. a node-local or scratch file system.
    #[serde(default)]
    pub checkpoint_roots: Vec<PathBuf>,
    /// A trial whose process exits with status 0 without ever reporting is an ERROR (the
    /// trainable never calls `report`); false accepts such trials as TERMINATED.
    #[serde(default = "yes")]
    pub require_report: bool,
}

fn yes() -> bool {
    true
}

impl Default for TrialSection {
    fn default() -> Self {
        TrialSection {
            command: Vec::new(),
            env: BTreeMap::new(),
            resources: Resources::default(),
            workers: 1,
            cwd: None,
            chdir_to_trial_dir: None,
            stop_grace_s: default_stop_grace(),
            report_timeout_s: None,
            checkpoint_roots: Vec::new(),
            require_report: true,
        }
    }
}

fn one_u32() -> u32 {
    1
}

fn default_stop_grace() -> f64 {
    10.0
}

/// `[executor]`: where trials run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorSection {
    /// `local`, `slurm` (job steps inside the allocation rtune runs in) or `slurm-jobs` (one
    /// sbatch job per trial run). Default: `slurm` when `SLURM_JOB_ID` is set, else `local`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// CPUs rtune may use; default: all of this machine's.
    pub cpus: Option<f64>,
    /// GPU ids rtune may use; default: CUDA_VISIBLE_DEVICES, else what nvidia-smi lists.
    pub gpus: Option<Vec<String>>,
    /// CPUs kept free for rtune itself and the system.
    pub reserve_cpus: f64,
    /// At most this many trials at once.
    pub max_concurrent_trials: Option<u32>,
    /// Address the protocol server listens on (default 127.0.0.1, any port).
    pub bind: Option<String>,
    /// Host name trials use to reach rtune (default: the bind address; under SLURM this
    /// machine's host name).
    pub advertise_host: Option<String>,
    /// `slurm`: extra `srun` options for every step.
    pub srun_args: Vec<String>,
    /// `slurm-jobs`: partition of the trial jobs.
    pub partition: Option<String>,
    /// `slurm-jobs`: time limit of each trial job (`--time`, e.g. "02:00:00").
    pub time_limit: Option<String>,
    /// `slurm-jobs`: account of the trial jobs.
    pub account: Option<String>,
    /// `slurm-jobs`: extra `sbatch` options for every trial job.
    pub sbatch_args: Vec<String>,
    /// `slurm-jobs`: seconds between looks at each job's state (default 2).
    pub poll_interval_s: Option<f64>,
    /// `simulated`: the benchmark function trials run on: `lcbench`, `mf-branin`,
    /// `mf-hartmann6`, `yahpo` (a YAHPO Gym scenario through yahpo_gym) or `command` (a program
    /// answering rtune's benchmark protocol) (crate rtune-bench).
    pub benchmark: Option<String>,
    /// `simulated`: the benchmark's instance; for lcbench the OpenML task id, e.g. "3945"; for
    /// `yahpo` the scenario's instance.
    pub instance: Option<String>,
    /// `simulated`, `benchmark = "command"`: the program and its arguments.
    pub benchmark_command: Vec<String>,
    /// `simulated`, `benchmark = "yahpo"`: the scenario, e.g. "rbv2_xgboost".
    pub scenario: Option<String>,
    /// `simulated`, `benchmark = "yahpo"`: the Python interpreter with yahpo_gym (default
    /// `python3`).
    pub python: Option<String>,
    /// `simulated`, `benchmark = "yahpo"`: the directory with the surrogate data.
    pub data_path: Option<String>,
    /// `simulated`, `benchmark = "yahpo"`: iterations of a full run.
    pub iterations: Option<u32>,
}

impl ExecutorSection {
    /// The simulated executor's benchmark, as its keys name it (paths with `~` expanded).
    pub fn benchmark_spec(&self) -> Option<rtune_bench::BenchmarkSpec> {
        let path = |p: &Option<String>| {
            p.as_ref()
                .map(|p| expand_tilde(Path::new(p)).to_string_lossy().into_owned())
        };
        Some(rtune_bench::BenchmarkSpec {
            name: self.benchmark.clone()?,
            instance: self.instance.clone(),
            command: self.benchmark_command.clone(),
            scenario: self.scenario.clone(),
            python: path(&self.python),
            data_path: path(&self.data_path),
            iterations: self.iterations,
        })
    }
}

/// `[output]`: where results go and how the console reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSection {
    /// Directory holding experiment directories; default ~/rtune_results.
    pub storage: Option<PathBuf>,
    /// Seconds between full tables when the console is not a terminal (a log file).
    pub report_interval_s: f64,
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            storage: None,
            report_interval_s: 30.0,
        }
    }
}

/// A loaded experiment: the typed file and the text that was run.
#[derive(Clone, Debug)]
pub struct Experiment {
    pub file: ExperimentFile,
    /// Where it was read from.
    pub path: PathBuf,
    /// The experiment file as run: the original text, or with overrides the effective file.
    pub text_as_run: String,
}

impl Experiment {
    /// The search space as JSON, the form the core reads.
    pub fn space_json(&self) -> Config {
        match serde_json::to_value(&self.file.space) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => Config::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("cannot read the experiment file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("--set {arg}: {message}")]
    Override { arg: String, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// Read an experiment file and apply `--set KEY=VALUE` overrides.
pub fn load(path: &Path, overrides: &[String]) -> Result<Experiment, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text, overrides)
}

/// [`load`] on text already read.
pub fn parse(path: &Path, text: &str, overrides: &[String]) -> Result<Experiment, ExperimentError> {
    let parse_error = |e: toml::de::Error| ExperimentError::Parse {
        path: path.to_path_buf(),
        message: with_hint(&e.to_string()),
    };
    let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
    for arg in overrides {
        apply_override(&mut table, arg)?;
    }
    check_required(path, &table)?;
    let file: ExperimentFile = match toml::Value::Table(table.clone()).try_into() {
        Ok(file) => file,
        Err(e) => {
            // The same mistake in the file itself: report it there, with its line.
            if let Err(in_file) = toml::from_str::<ExperimentFile>(text)
                && in_file.message() == e.message()
            {
                if let Some(located) = locate_unknown_key(path, text, in_file.message()) {
                    return Err(located);
                }
                return Err(parse_error(in_file));
            }
            let message = with_hint(e.message());
            return Err(ExperimentError::Parse {
                path: path.to_path_buf(),
                message: if overrides.is_empty() {
                    message
                } else {
                    format!("{message} (after the --set overrides)")
                },
            });
        }
    };
    let mut file = file;
    file.output.storage = file.output.storage.as_deref().map(expand_tilde);
    file.trial.cwd = file.trial.cwd.as_deref().map(expand_tilde);
    for root in &mut file.trial.checkpoint_roots {
        *root = expand_tilde(root);
    }
    validate(path, &file)?;
    let text_as_run = if overrides.is_empty() {
        text.to_string()
    } else {
        let mut header = format!(
            "# {} with overrides:\n",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        for arg in overrides {
            header.push_str(&format!("#   --set {arg}\n"));
        }
        header + &toml::to_string(&table).unwrap_or_default()
    };
    Ok(Experiment {
        file,
        path: path.to_path_buf(),
        text_as_run,
    })
}

/// The environment variable naming the storage directory when neither `--storage` nor the
/// experiment file does (clusters: results on a scratch file system).
pub const STORAGE_ENV: &str = "RTUNE_STORAGE";

/// Where experiment directories go: `--storage` (`option`), else `[output] storage` (`file`),
/// else `$RTUNE_STORAGE`, else `~/rtune_results`; `~` expanded. None when nothing names one and
/// `HOME` is not set.
pub fn storage_dir(option: Option<&Path>, file: Option<&Path>) -> Option<PathBuf> {
    let from_env = std::env::var_os(STORAGE_ENV)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    let chosen = option
        .map(Path::to_path_buf)
        .or_else(|| file.map(Path::to_path_buf))
        .or(from_env)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join("rtune_results"))
        })?;
    Some(expand_tilde(&chosen))
}

/// `~` and `~/...` as the user's home directory (`HOME`), as a shell would expand them; any other
/// path is returned as it is. Paths in the experiment file and options given as `--opt=~/x` (which
/// the shell leaves alone) go through this, so `~` never becomes a directory named `~`.
pub fn expand_tilde(path: &Path) -> PathBuf {
    let Ok(rest) = path.strip_prefix("~") else {
        return path.to_path_buf();
    };
    match std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        Some(home) => PathBuf::from(home).join(rest),
        None => path.to_path_buf(),
    }
}

/// Whether `text` can be a name (of the experiment, a metric, a parameter): not empty or only
/// spaces, one line, no control characters. Returns what is wrong.
pub fn check_name(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{text:?} is empty or only spaces"));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{text:?} contains the control character {c:?}; a name is one line of printable \
             characters"
        ));
    }
    if text.trim() != text {
        return Err(format!("{text:?} starts or ends with spaces; remove them"));
    }
    Ok(())
}

/// The checks `rtune run` makes before anything starts that need the core: the search space
/// parses and the scheduler's settings work with it. `rtune plan` and `rtune submit` run these
/// too, so a job never fails in the queue on what could be checked at submission.
pub fn check_search(experiment: &Experiment) -> Result<(), ExperimentError> {
    // Both errors name their key (`space.lr: ...`, `scheduler.max_t: ...`).
    let invalid = |message: String| ExperimentError::Parse {
        path: experiment.path.clone(),
        message,
    };
    let space = rtune_core::space::SearchSpace::from_json(&experiment.space_json())
        .map_err(|e| invalid(e.to_string()))?;
    let file = &experiment.file;
    file.scheduler
        .build(&file.metric, file.mode, &space)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// Checks serde cannot express. Each names the key to fix.
fn validate(path: &Path, file: &ExperimentFile) -> Result<(), ExperimentError> {
    let invalid = |field: &str, message: String| ExperimentError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    check_name(&file.name).map_err(|message| invalid("name", message))?;
    check_name(&file.metric).map_err(|message| invalid("metric", message))?;
    for key in file.space.keys() {
        check_name(key).map_err(|message| invalid(&format!("space.{key}"), message))?;
    }
    for key in file.stop.keys() {
        check_name(key).map_err(|message| invalid(&format!("stop.{key}"), message))?;
    }
    if let Some(time_attr) = scheduler_time_attr(&file.scheduler) {
        check_name(time_attr).map_err(|message| invalid("scheduler.time_attr", message))?;
    }
    if file.name.is_empty() || file.name.contains(['/', '\\']) || file.name.starts_with('.') {
        return Err(invalid(
            "name",
            format!(
                "`{}` cannot be a directory name; use letters, digits, `-` and `_`",
                file.name
            ),
        ));
    }
    if file.metric.is_empty() {
        return Err(invalid(
            "metric",
            "must name the metric the trials report, e.g. metric = \"eval_loss\"".into(),
        ));
    }
    if file.num_samples == 0 || file.num_samples > MAX_SAMPLES {
        return Err(invalid(
            "num_samples",
            format!("must be from 1 to {MAX_SAMPLES}, got {}", file.num_samples),
        ));
    }
    if let SchedulerSpec::Pbt(_) = file.scheduler
        && file.num_samples > MAX_POPULATION
    {
        return Err(invalid(
            "num_samples",
            format!(
                "PBT creates its whole population at once: at most {MAX_POPULATION} trials, got {}",
                file.num_samples
            ),
        ));
    }
    if file.max_failures > MAX_FAILURES {
        return Err(invalid(
            "max_failures",
            format!(
                "must be from 0 to {MAX_FAILURES}, got {}",
                file.max_failures
            ),
        ));
    }
    let simulated = file.executor.kind.as_deref() == Some("simulated");
    if !simulated && file.trial.command.first().is_none_or(|p| p.is_empty()) {
        return Err(invalid(
            "trial.command",
            "must name a program, e.g. command = [\"python\", \"train.py\"]".into(),
        ));
    }
    if file.trial.workers == 0 || file.trial.workers > MAX_WORKERS {
        return Err(invalid(
            "trial.workers",
            format!(
                "must be from 1 to {MAX_WORKERS}, got {}",
                file.trial.workers
            ),
        ));
    }
    let r = &file.trial.resources;
    if !(r.cpu.is_finite() && r.cpu > 0.0 && r.cpu <= MAX_CPUS) {
        return Err(invalid(
            "trial.resources.cpu",
            format!(
                "must be more than 0 and at most {MAX_CPUS} (fractions such as 0.5 are fine), got {}",
                r.cpu
            ),
        ));
    }
    if r.gpu > MAX_GPUS {
        return Err(invalid(
            "trial.resources.gpu",
            format!("must be from 0 to {MAX_GPUS}, got {}", r.gpu),
        ));
    }
    if !(file.trial.stop_grace_s.is_finite()
        && (0.0..=MAX_STOP_GRACE_S).contains(&file.trial.stop_grace_s))
    {
        return Err(invalid(
            "trial.stop_grace_s",
            format!(
                "must be a number of seconds from 0 to {MAX_STOP_GRACE_S}, got {}",
                file.trial.stop_grace_s
            ),
        ));
    }
    for (field, value) in [
        ("trial.report_timeout_s", file.trial.report_timeout_s),
        ("time_budget_s", file.time_budget_s),
    ] {
        if let Some(v) = value
            && !(v.is_finite() && v > 0.0 && v <= MAX_SECONDS)
        {
            return Err(invalid(
                field,
                format!(
                    "must be a number of seconds, more than 0 and at most {MAX_SECONDS:e} \
                     (about 31 years); got {v}"
                ),
            ));
        }
    }
    if file.max_total_results == Some(0) {
        return Err(invalid(
            "max_total_results",
            "must be 1 or more (results over all trials); leave it out for no such budget".into(),
        ));
    }
    if file.fail_fast == Some(0) {
        return Err(invalid(
            "fail_fast",
            "must be 1 or more (the number of first trials that must all fail); leave it out to \
             run every trial whatever happens"
                .into(),
        ));
    }
    if let Some(kind) = &file.executor.kind
        && !["local", "slurm", "slurm-jobs", "simulated"].contains(&kind.as_str())
    {
        return Err(invalid(
            "executor.type",
            format!(
                "`{kind}` is not an executor; use \"local\", \"slurm\", \"slurm-jobs\" or \"simulated\""
            ),
        ));
    }
    match (&file.executor.benchmark, simulated) {
        (None, true) => {
            return Err(invalid(
                "executor.benchmark",
                "the simulated executor needs a benchmark: \"lcbench\" (with executor.instance, an \
                 OpenML task id such as \"3945\"), \"mf-branin\", \"mf-hartmann6\", \"yahpo\" \
                 (with executor.scenario and executor.data_path) or \"command\" (with \
                 executor.benchmark_command)"
                    .into(),
            ));
        }
        (Some(_), true) => {
            let spec = file.executor.benchmark_spec().unwrap_or_default();
            if let Err(e) = spec.check() {
                let (field, message) = match e {
                    rtune_bench::BenchError::Unknown(_) => ("executor.benchmark", e.to_string()),
                    rtune_bench::BenchError::Setting { key, message } => (key, message),
                    _ => ("executor.instance", e.to_string()),
                };
                return Err(invalid(field, message));
            }
        }
        (Some(_), false) => {
            return Err(invalid(
                "executor.benchmark",
                "is for the simulated executor; set executor.type = \"simulated\" or remove it"
                    .into(),
            ));
        }
        (None, false) => {}
    }
    let e = &file.executor;
    let benchmark_keys = [
        (
            "executor.benchmark_command",
            !e.benchmark_command.is_empty(),
        ),
        ("executor.scenario", e.scenario.is_some()),
        ("executor.python", e.python.is_some()),
        ("executor.data_path", e.data_path.is_some()),
        ("executor.iterations", e.iterations.is_some()),
    ];
    if let Some((key, _)) = benchmark_keys.iter().find(|(_, set)| *set) {
        let wanted = match *key {
            "executor.benchmark_command" => "command",
            _ => "yahpo",
        };
        if e.benchmark.as_deref() != Some(wanted) {
            return Err(invalid(
                key,
                format!(
                    "is for the simulated executor with benchmark = \"{wanted}\"; set that or \
                     remove it"
                ),
            ));
        }
    }
    let kind = file.executor.kind.as_deref().unwrap_or("local");
    if kind != "local" && (file.executor.cpus.is_some() || file.executor.gpus.is_some()) {
        return Err(invalid(
            "executor.cpus",
            format!(
                "executor.cpus and executor.gpus are for the local executor; with `{kind}` SLURM \
                 decides (ask for CPUs and GPUs with salloc/sbatch or `rtune submit`)"
            ),
        ));
    }
    if let Some(interval) = file.executor.poll_interval_s
        && !(interval.is_finite() && interval > 0.0 && interval <= MAX_INTERVAL_S)
    {
        return Err(invalid(
            "executor.poll_interval_s",
            format!("must be more than 0 and at most {MAX_INTERVAL_S} seconds, got {interval}"),
        ));
    }
    if let Some(cpus) = file.executor.cpus
        && !(cpus.is_finite() && cpus > 0.0)
    {
        return Err(invalid(
            "executor.cpus",
            format!("must be more than 0, got {cpus}"),
        ));
    }
    if !(file.executor.reserve_cpus.is_finite() && file.executor.reserve_cpus >= 0.0) {
        return Err(invalid("executor.reserve_cpus", "must be 0 or more".into()));
    }
    if file.executor.max_concurrent_trials == Some(0) {
        return Err(invalid(
            "executor.max_concurrent_trials",
            "must be at least 1 (leave it out for no limit)".into(),
        ));
    }
    if !(file.output.report_interval_s.is_finite()
        && file.output.report_interval_s > 0.0
        && file.output.report_interval_s <= MAX_INTERVAL_S)
    {
        return Err(invalid(
            "output.report_interval_s",
            format!(
                "must be a positive number of seconds, at most {MAX_INTERVAL_S}; got {}",
                file.output.report_interval_s
            ),
        ));
    }
    for root in &file.trial.checkpoint_roots {
        if !root.is_absolute() {
            return Err(invalid(
                "trial.checkpoint_roots",
                format!(
                    "{} is not an absolute path (or ~/...); trials run in other directories",
                    root.display()
                ),
            ));
        }
    }
    if file.checkpoint.num_to_keep == Some(0) {
        return Err(invalid(
            "checkpoint.num_to_keep",
            "must be at least 1 (leave it out to keep every checkpoint)".into(),
        ));
    }
    for (key, value) in &file.stop {
        if !value.is_finite() {
            return Err(invalid(
                &format!("stop.{key}"),
                "must be a finite number".into(),
            ));
        }
    }
    Ok(())
}

/// The most trials an experiment may have (`num_samples` times the grid points are created one
/// at a time; this bounds what a typo can ask for).
pub const MAX_SAMPLES: usize = 10_000_000;
/// PBT creates its population at once.
pub const MAX_POPULATION: usize = 100_000;
/// The most retries of a failed trial.
pub const MAX_FAILURES: u32 = 10_000;
/// The most worker processes per trial.
pub const MAX_WORKERS: u32 = 4096;
/// The most CPUs and GPUs per worker.
pub const MAX_CPUS: f64 = 100_000.0;
pub const MAX_GPUS: u32 = 4096;
/// The longest time budget or report timeout: about 31 years.
pub const MAX_SECONDS: f64 = 1e9;
/// The longest grace period a trial gets to exit: a day.
pub const MAX_STOP_GRACE_S: f64 = 86_400.0;
/// The longest interval between polls or console tables: a day.
pub const MAX_INTERVAL_S: f64 = 86_400.0;

/// The scheduler's `time_attr`, for those that have one.
fn scheduler_time_attr(spec: &SchedulerSpec) -> Option<&str> {
    match spec {
        SchedulerSpec::Fifo(_) => None,
        SchedulerSpec::Asha(c) => Some(&c.time_attr),
        SchedulerSpec::Median(c) => Some(&c.time_attr),
        SchedulerSpec::HyperBand(c) => Some(&c.time_attr),
        SchedulerSpec::Pbt(c) => Some(&c.time_attr),
    }
}

/// `space.lr.loguniform=[1e-5,2e-4]`: set a (nested) key. The value is read as TOML (numbers,
/// arrays, booleans, inline tables, quoted strings), else taken as a plain string.
pub fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ExperimentError> {
    let err = |message: String| ExperimentError::Override {
        arg: arg.to_string(),
        message,
    };
    let Some((key, raw)) = arg.split_once('=') else {
        return Err(err("expected KEY=VALUE, e.g. --set num_samples=20".into()));
    };
    let key = key.trim();
    // `+space.x=...` adds a parameter the file does not have; without `+` a space key must
    // exist, so a misspelt or renamed parameter is an error instead of a new parameter.
    let (adding, key) = match key.strip_prefix('+') {
        Some(rest) => (true, rest.trim()),
        None => (false, key),
    };
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err(format!("`{key}` is not a key path such as space.lr")));
    }
    if let ["space", parameter, ..] = parts.as_slice() {
        let existing: Vec<&str> = table
            .get("space")
            .and_then(toml::Value::as_table)
            .map(|space| space.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let exists = existing.contains(parameter);
        if !exists && !adding {
            let hint = match nearest(parameter, &existing) {
                Some(near) => format!("did you mean `space.{near}`? "),
                None => String::new(),
            };
            return Err(err(format!(
                "the experiment has no parameter `{parameter}` in [space] (it has: {}); {hint}\
                 to add a new parameter, write --set +{key}=...",
                if existing.is_empty() {
                    "none".to_string()
                } else {
                    existing.join(", ")
                }
            )));
        }
        if exists && adding && parts.len() == 2 {
            return Err(err(format!(
                "`+` adds a new parameter, but `{parameter}` is already in [space]; drop the `+` \
                 to change it"
            )));
        }
    }
    let value = parse_value(raw.trim());
    let Some((last, parents)) = parts.split_last() else {
        return Err(err("empty key".into()));
    };
    let mut current = table;
    let mut walked = Vec::new();
    for part in parents {
        walked.push(*part);
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            other => {
                return Err(err(format!(
                    "`{}` is a {}, not a table, so it has no key `{}`",
                    walked.join("."),
                    other.type_str(),
                    parts[walked.len()]
                )));
            }
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Add "did you mean" to serde's unknown-field and unknown-variant messages.
/// The keys every experiment file needs, said with what to write (serde would say "missing
/// field" at line 1, column 1).
fn check_required(path: &Path, table: &toml::Table) -> Result<(), ExperimentError> {
    let missing = |field: &str, message: &str| ExperimentError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        message: message.to_string(),
    };
    if !table.contains_key("name") {
        return Err(missing(
            "name",
            "is missing: add name = \"my-experiment\" (the experiment's directory name)",
        ));
    }
    if !table.contains_key("metric") {
        return Err(missing(
            "metric",
            "is missing: add metric = \"<the key your trainable reports>\", e.g. metric = \"eval_loss\"",
        ));
    }
    if !table.contains_key("mode") {
        return Err(missing(
            "mode",
            "is missing: add mode = \"min\" when lower values of the metric are better (a \
             loss), or mode = \"max\" when higher are (an accuracy)",
        ));
    }
    Ok(())
}

/// serde reads a table such as `[scheduler]` as a whole, so its "unknown field" error points at
/// the table's header. This finds the line of the unknown key in that table instead.
fn locate_unknown_key(path: &Path, text: &str, message: &str) -> Option<ExperimentError> {
    let unknown = message.split_once("unknown field `")?.1.split_once('`')?.0;
    let mut section = String::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            section = header.trim().to_string();
            continue;
        }
        let key = trimmed
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        if key == unknown && trimmed.contains('=') && !section.is_empty() {
            let number = index + 1;
            return Some(ExperimentError::Parse {
                path: path.to_path_buf(),
                message: with_hint(&format!(
                    "line {number}, in [{section}]:\n  |\n{number} | {line}\n  |\n{message}"
                )),
            });
        }
    }
    None
}

fn with_hint(message: &str) -> String {
    let Some(suggestion) = nearest_in_message(message) else {
        return message.to_string();
    };
    format!("{}\nhint: did you mean `{suggestion}`?", message.trim_end())
}

/// From "unknown field `num_smaples`, expected one of `name`, `num_samples`": `num_samples`.
fn nearest_in_message(message: &str) -> Option<String> {
    let rest = message
        .split_once("unknown field `")
        .or_else(|| message.split_once("unknown variant `"))?
        .1;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected")?.1;
    let candidates: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter_map(|(i, part)| (i % 2 == 1).then_some(part))
        .collect();
    nearest(unknown, &candidates)
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub fn nearest(word: &str, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), *c))
        .filter(|(distance, c)| *distance <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"name = "squad-asha"
metric = "eval_loss"
mode = "min"
num_samples = 12
seed = 42

[trial]
command = ["python", "train.py"]
resources = { cpu = 2, gpu = 1 }
workers = 1

[space]
lr = { loguniform = [5e-6, 2e-4] }
per_device_bs = { choice = [1, 2] }
wd = { choice = [0.0, 0.01] }

[scheduler]
type = "asha"
grace_period = 1
max_t = 5
reduction_factor = 2
"#;

    fn parse_ok(text: &str, overrides: &[&str]) -> Experiment {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        parse(Path::new("exp.toml"), text, &overrides).expect("valid experiment")
    }

    fn parse_err(text: &str, overrides: &[&str]) -> String {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        parse(Path::new("exp.toml"), text, &overrides)
            .expect_err("an error")
            .to_string()
    }

    #[test]
    fn the_issue_example_reads() {
        let e = parse_ok(FILE, &[]);
        assert_eq!(e.file.num_samples, 12);
        assert_eq!(e.file.trial.resources.gpu, 1);
        assert_eq!(e.file.scheduler.name(), "asha");
        assert_eq!(e.text_as_run, FILE);
        let space = e.space_json();
        assert_eq!(space["lr"]["loguniform"][1], 2e-4);
        let keys: Vec<&String> = space.keys().collect();
        assert_eq!(keys, ["lr", "per_device_bs", "wd"], "file order is kept");
    }

    #[test]
    fn overrides_set_nested_values_and_plain_strings() {
        let e = parse_ok(
            FILE,
            &[
                "space.lr.loguniform=[1e-5,2e-4]",
                "num_samples=20",
                "name=other",
                "trial.env.HF_HOME=/tmp/hf",
                "scheduler.max_t = 9",
            ],
        );
        assert_eq!(e.file.num_samples, 20);
        assert_eq!(e.file.name, "other");
        assert_eq!(e.space_json()["lr"]["loguniform"][0], 1e-5);
        assert_eq!(e.file.trial.env["HF_HOME"], "/tmp/hf");
        assert!(e.text_as_run.starts_with("# exp.toml with overrides:"));
        let again = parse_ok(&e.text_as_run, &[]);
        assert_eq!(again.file, e.file, "the file as run reads back the same");
    }

    #[test]
    fn an_unknown_key_names_its_line_and_the_nearest_key() {
        let text = FILE.replace("num_samples = 12", "num_smaples = 12");
        let message = parse_err(&text, &[]);
        assert!(message.contains("line 4"), "{message}");
        assert!(message.contains("did you mean `num_samples`"), "{message}");

        let text = FILE.replace("reduction_factor", "reduction_fator");
        let message = parse_err(&text, &[]);
        assert!(
            message.contains("did you mean `reduction_factor`"),
            "{message}"
        );

        let message = parse_err(FILE, &["scheduler.grace_perod=2"]);
        assert!(message.contains("did you mean `grace_period`"), "{message}");
        assert!(message.contains("after the --set overrides"), "{message}");
    }

    #[test]
    fn the_searcher_section_reads_with_its_keys_and_names_typos() {
        use rtune_core::searcher::SearcherSpec;
        assert_eq!(parse_ok(FILE, &[]).file.searcher.name(), "random");
        let text = format!(
            "{FILE}\n[searcher]\ntype = \"tpe\"\nn_initial = 5\ngamma = 0.2\nmultivariate = false\npoints_to_evaluate = [{{ lr = 1e-4, wd = 0.01 }}, {{ per_device_bs = 2 }}]\n"
        );
        let e = parse_ok(&text, &[]);
        let SearcherSpec::Tpe(tpe) = &e.file.searcher else {
            panic!("not tpe: {:?}", e.file.searcher);
        };
        assert_eq!(
            (tpe.n_initial, tpe.gamma, tpe.multivariate),
            (5, 0.2, false)
        );
        assert_eq!(tpe.n_candidates, 24, "defaults for the keys not given");
        assert_eq!(tpe.points_to_evaluate.len(), 2);
        assert_eq!(tpe.points_to_evaluate[0]["lr"], 1e-4);
        let e = parse_ok(FILE, &["searcher.type=\"bohb\"", "searcher.min_points=5"]);
        assert_eq!(e.file.searcher.name(), "bohb");
        let typo = text.replace("n_initial", "n_intial");
        let message = parse_err(&typo, &[]);
        assert!(message.contains("did you mean `n_initial`"), "{message}");
        // The line of the misspelt key, not of the `[searcher]` header (serde reads a tagged
        // table as a whole, so its own error points at the header).
        let line = typo
            .lines()
            .position(|l| l.starts_with("n_intial"))
            .expect("the line")
            + 1;
        assert!(message.contains(&format!("line {line},")), "{message}");
        let message = parse_err(FILE, &["searcher.type=\"tpee\""]);
        assert!(message.contains("did you mean `tpe`"), "{message}");
    }

    #[test]
    fn a_missing_mode_or_metric_says_what_to_write() {
        let message = parse_err(&FILE.replace("mode = \"min\"\n", ""), &[]);
        assert!(message.contains("mode: is missing"), "{message}");
        assert!(
            message.contains("mode = \"min\"") && message.contains("mode = \"max\""),
            "{message}"
        );
        assert!(!message.contains("line 1, column 1"), "{message}");
        let message = parse_err(&FILE.replace("metric = \"eval_loss\"\n", ""), &[]);
        assert!(message.contains("metric: is missing"), "{message}");
    }

    #[test]
    fn a_typo_inside_a_table_names_the_key_line_not_the_header() {
        let typo = FILE.replace("reduction_factor", "reduction_factr");
        let message = parse_err(&typo, &[]);
        let line = typo
            .lines()
            .position(|l| l.starts_with("reduction_factr"))
            .expect("the line")
            + 1;
        assert!(
            message.contains(&format!("line {line}, in [scheduler]")),
            "{message}"
        );
        assert!(
            message.contains("did you mean `reduction_factor`"),
            "{message}"
        );
    }

    #[test]
    fn extreme_numbers_are_refused_with_their_range() {
        for (set, field) in [
            ("trial.stop_grace_s=1e30", "trial.stop_grace_s"),
            ("time_budget_s=1e300", "time_budget_s"),
            ("trial.report_timeout_s=1e20", "trial.report_timeout_s"),
            ("num_samples=1000000000000", "num_samples"),
            ("trial.workers=100000", "trial.workers"),
            ("trial.resources.cpu=1e9", "trial.resources.cpu"),
            ("max_failures=4000000000", "max_failures"),
            ("output.report_interval_s=1e12", "output.report_interval_s"),
        ] {
            let message = parse_err(FILE, &[set]);
            assert!(message.contains(&format!("{field}:")), "{set}: {message}");
            assert!(
                message.contains("at most") || message.contains(" to "),
                "{set}: {message}"
            );
        }
        let pbt = FILE.replace("type = \"asha\"", "type = \"pbt\"");
        let pbt = pbt
            .lines()
            .filter(|l| {
                !l.starts_with("grace_period")
                    && !l.starts_with("max_t")
                    && !l.starts_with("reduction_factor")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let message = parse_err(&pbt, &["num_samples=1000000"]);
        assert!(
            message.contains("PBT creates its whole population at once"),
            "{message}"
        );
    }

    #[test]
    fn a_wrong_mode_suggests_the_valid_one() {
        let message = parse_err(&FILE.replace("\"min\"", "\"mni\""), &[]);
        assert!(message.contains("did you mean `min`"), "{message}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let message = parse_err(FILE, &["num_samples=0"]);
        assert!(
            message.contains("num_samples: must be from 1 to"),
            "{message}"
        );
        let message = parse_err(FILE, &["trial.command=[]"]);
        assert!(message.contains("trial.command"), "{message}");
        let message = parse_err(FILE, &["name=a/b"]);
        assert!(message.contains("name:"), "{message}");
        let message = parse_err(FILE, &["seed.x=1"]);
        assert!(
            message.contains("`seed` is a integer, not a table"),
            "{message}"
        );
        let message = parse_err(FILE, &["num_samples"]);
        assert!(message.contains("expected KEY=VALUE"), "{message}");
    }

    #[test]
    fn executor_types_and_their_keys() {
        let e = parse_ok(
            FILE,
            &[
                "executor.type=\"slurm-jobs\"",
                "executor.partition=\"gpu\"",
                "executor.poll_interval_s=0.5",
            ],
        );
        assert_eq!(e.file.executor.kind.as_deref(), Some("slurm-jobs"));
        assert_eq!(e.file.executor.partition.as_deref(), Some("gpu"));
        let message = parse_err(FILE, &["executor.type=\"kubernetes\""]);
        assert!(
            message.contains("executor.type") && message.contains("\"slurm-jobs\""),
            "{message}"
        );
        let message = parse_err(FILE, &["executor.type=\"slurm\"", "executor.cpus=4"]);
        assert!(message.contains("SLURM decides"), "{message}");
        let message = parse_err(FILE, &["executor.poll_interval_s=0"]);
        assert!(message.contains("executor.poll_interval_s"), "{message}");
    }

    #[test]
    fn a_space_key_must_exist_unless_added_with_plus() {
        let message = parse_err(FILE, &["space.learning_rate.loguniform=[1e-5,1e-4]"]);
        assert!(
            message.contains("no parameter `learning_rate` in [space]")
                && message.contains("lr, per_device_bs, wd")
                && message.contains("--set +space.learning_rate"),
            "{message}"
        );
        let message = parse_err(FILE, &["space.wdd=0.1"]);
        assert!(message.contains("did you mean `space.wd`"), "{message}");
        let e = parse_ok(
            FILE,
            &["+space.epochs=3", "space.lr.loguniform=[1e-5,1e-4]"],
        );
        assert_eq!(e.space_json()["epochs"], 3);
        assert_eq!(e.space_json()["lr"]["loguniform"][0], 1e-5);
        let message = parse_err(FILE, &["+space.lr=0.1"]);
        assert!(message.contains("already in [space]"), "{message}");
        // Keys outside [space] are checked by the file's schema, with or without `+`.
        assert_eq!(parse_ok(FILE, &["max_failures=2"]).file.max_failures, 2);
    }

    #[test]
    fn names_are_non_empty_printable_single_lines() {
        for (set, field) in [
            ("name=\"a\\nb\"", "name:"),
            ("name=\"   \"", "name:"),
            ("name=\"\"", "name:"),
            ("metric=\" \"", "metric:"),
            ("metric=\"loss\\t\"", "metric:"),
            ("scheduler.time_attr=\"\"", "scheduler.time_attr:"),
        ] {
            let message = parse_err(FILE, &[set]);
            assert!(message.contains(field), "{set}: {message}");
        }
    }

    #[test]
    fn a_tilde_is_the_home_directory_in_every_path() {
        let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
            return;
        };
        let home = PathBuf::from(home);
        assert_eq!(expand_tilde(Path::new("~")), home);
        assert_eq!(expand_tilde(Path::new("~/x/y")), home.join("x/y"));
        assert_eq!(expand_tilde(Path::new("/a/~")), PathBuf::from("/a/~"));
        assert_eq!(
            expand_tilde(Path::new("~other/x")),
            PathBuf::from("~other/x")
        );
        let e = parse_ok(
            FILE,
            &[
                "output.storage=\"~/results\"",
                "trial.cwd=\"~/work\"",
                "trial.checkpoint_roots=[\"~/ckpt\"]",
            ],
        );
        assert_eq!(e.file.output.storage, Some(home.join("results")));
        assert_eq!(e.file.trial.cwd, Some(home.join("work")));
        assert_eq!(e.file.trial.checkpoint_roots, vec![home.join("ckpt")]);
        let message = parse_err(FILE, &["trial.checkpoint_roots=[\"rel\"]"]);
        assert!(message.contains("trial.checkpoint_roots"), "{message}");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let message = parse_err("name = \"x\"\nmetric = \n", &[]);
        assert!(message.contains("line 2"), "{message}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Keys of the experiment file (and some that are not), as dotted paths.
        const KEYS: &[&str] = &[
            "name",
            "metric",
            "mode",
            "num_samples",
            "seed",
            "max_failures",
            "stop.loss",
            "trial.command",
            "trial.workers",
            "trial.resources",
            "trial.resources.cpu",
            "trial.stop_grace_s",
            "trial.cwd",
            "trial.env.X",
            "trial.checkpoint_roots",
            "space.lr",
            "space.lr.loguniform",
            "space.bs.choice",
            "space.m.layers.grid",
            "scheduler.type",
            "scheduler.max_t",
            "scheduler.grace_period",
            "scheduler.time_attr",
            "scheduler.reduction_factor",
            "scheduler.perturbation_interval",
            "scheduler.hyperparam_mutations.lr",
            "checkpoint.num_to_keep",
            "executor.type",
            "executor.cpus",
            "executor.bind",
            "output.storage",
            "bogus",
        ];

        /// TOML values, well-formed or not.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                "[a-z~/ ]{0,8}".prop_map(|s| format!("{s:?}")),
                Just("\"asha\"".to_string()),
                Just("\"pbt\"".to_string()),
                Just("[1e-5, 1e-3]".to_string()),
                Just("[1e-3, 1e-5]".to_string()),
                Just("[]".to_string()),
                Just("[\"python\", \"t.py\"]".to_string()),
                Just("{ loguniform = [0, 1] }".to_string()),
                Just("{ choice = [] }".to_string()),
                Just("{ uniform = [1, 2], choice = [3] }".to_string()),
                Just("nan".to_string()),
                Just("-inf".to_string()),
                ".{0,10}",
            ]
        }

        fn dotted_line() -> impl Strategy<Value = String> {
            (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            #[test]
            fn any_text_is_read_or_refused_without_a_panic(text in ".{0,300}") {
                let _ = parse(Path::new("p.toml"), &text, &[]);
            }

            #[test]
            fn any_mix_of_keys_and_values_is_checked_without_a_panic(
                lines in prop::collection::vec(dotted_line(), 0..12)
            ) {
                let text = lines.join("\n");
                if let Ok(experiment) = parse(Path::new("p.toml"), &text, &[]) {
                    let _ = check_search(&experiment);
                }
                // The same lines as --set overrides of a valid file.
                let sets: Vec<String> = lines.iter().map(|l| l.replacen(" = ", "=", 1)).collect();
                if let Ok(experiment) = parse(Path::new("p.toml"), FILE, &sets) {
                    let _ = check_search(&experiment);
                }
            }

            #[test]
            fn any_override_is_applied_or_refused_without_a_panic(
                arg in prop_oneof![".{0,40}", "[+]?[a-z_.+ ]{0,20}=.{0,20}"]
            ) {
                let result = parse(Path::new("p.toml"), FILE, std::slice::from_ref(&arg));
                if let Err(e) = result {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    /// The simulator's benchmark keys: each is checked without starting a benchmark program,
    /// and a key that belongs to another benchmark is named.
    #[test]
    fn the_simulator_s_benchmark_keys_are_checked_and_named() {
        let sim = |extra: &str| {
            format!(
                "{}\n[executor]\ntype = \"simulated\"\n{extra}\n",
                FILE.replace("command = [\"python\", \"train.py\"]", "")
            )
        };
        let spec = parse_ok(
            &sim("benchmark = \"command\"\nbenchmark_command = [\"python3\", \"b.py\"]"),
            &[],
        )
        .file
        .executor
        .benchmark_spec()
        .unwrap();
        assert_eq!(spec.name, "command");
        assert_eq!(spec.command, ["python3", "b.py"]);
        let spec = parse_ok(
            &sim("benchmark = \"yahpo\"\nscenario = \"nb301\"\ndata_path = \"~/yahpo_data\""),
            &[],
        )
        .file
        .executor
        .benchmark_spec()
        .unwrap();
        assert!(!spec.data_path.unwrap().starts_with('~'));
        for (extra, expected) in [
            (
                "benchmark = \"command\"",
                "executor.benchmark_command: benchmark = \"command\" needs",
            ),
            (
                "benchmark = \"yahpo\"\ndata_path = \"d\"",
                "executor.scenario: benchmark = \"yahpo\" needs",
            ),
            (
                "benchmark = \"yahpo\"\nscenario = \"lcbench\"",
                "executor.data_path: benchmark = \"yahpo\" needs",
            ),
            (
                "benchmark = \"yahpo\"\nscenario = \"lcbench\"\ndata_path = \"d\"\niterations = 0",
                "executor.iterations: must be at least 1",
            ),
            (
                "benchmark = \"lcbench\"\ninstance = \"3945\"\nscenario = \"lcbench\"",
                "executor.scenario: is for the simulated executor with benchmark = \"yahpo\"",
            ),
            (
                "benchmark = \"yahpo\"\nscenario = \"x\"\ndata_path = \"d\"\nbenchmark_command = [\"a\"]",
                "executor.benchmark_command: is for the simulated executor with benchmark = \"command\"",
            ),
            (
                "benchmark = \"lcbench\"\ninstance = \"167083\"",
                "executor.instance: lcbench: unknown task",
            ),
            (
                "benchmark = \"nope\"",
                "executor.benchmark: unknown benchmark `nope`",
            ),
        ] {
            let message = parse_err(&sim(extra), &[]);
            assert!(message.contains(expected), "{extra}: {message}");
        }
    }
}

//! The experiment file (TOML): reading it strictly, applying `--set` overrides, and saying
//! exactly where a mistake is. docs/experiment-file.md describes every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rtune_core::scheduler::SchedulerSpec;
use rtune_core::searcher::SearcherSpec;
use rtune_core::tuner::CheckpointRetention;
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
    /// Working directory of the trial processes; default: where rtune was started.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Seconds a trial told to stop gets to exit before SIGTERM, and between SIGTERM and SIGKILL.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_s: f64,
}

impl Default for TrialSection {
    fn default() -> Self {
        TrialSection {
            command: Vec::new(),
            env: BTreeMap::new(),
            resources: Resources::default(),
            workers: 1,
            cwd: None,
            stop_grace_s: default_stop_grace(),
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
    /// `simulated`: the benchmark function trials run on: `lcbench`, `mf-branin` or
    /// `mf-hartmann6` (crate rtune-bench).
    pub benchmark: Option<String>,
    /// `simulated`: the benchmark's instance; for lcbench the OpenML task id, e.g. "3945".
    pub instance: Option<String>,
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
    let file: ExperimentFile = match toml::Value::Table(table.clone()).try_into() {
        Ok(file) => file,
        Err(e) => {
            // The same mistake in the file itself: report it there, with its line.
            if let Err(in_file) = toml::from_str::<ExperimentFile>(text)
                && in_file.message() == e.message()
            {
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

/// Checks serde cannot express. Each names the key to fix.
fn validate(path: &Path, file: &ExperimentFile) -> Result<(), ExperimentError> {
    let invalid = |field: &str, message: String| ExperimentError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
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
    if file.num_samples == 0 {
        return Err(invalid("num_samples", "must be at least 1".into()));
    }
    let simulated = file.executor.kind.as_deref() == Some("simulated");
    if !simulated && file.trial.command.first().is_none_or(|p| p.is_empty()) {
        return Err(invalid(
            "trial.command",
            "must name a program, e.g. command = [\"python\", \"train.py\"]".into(),
        ));
    }
    if file.trial.workers == 0 {
        return Err(invalid("trial.workers", "must be at least 1".into()));
    }
    let r = &file.trial.resources;
    if !(r.cpu.is_finite() && r.cpu > 0.0) {
        return Err(invalid(
            "trial.resources.cpu",
            format!(
                "must be more than 0 (fractions such as 0.5 are fine), got {}",
                r.cpu
            ),
        ));
    }
    if !(file.trial.stop_grace_s.is_finite() && file.trial.stop_grace_s >= 0.0) {
        return Err(invalid(
            "trial.stop_grace_s",
            "must be a number of seconds, 0 or more".into(),
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
                 OpenML task id such as \"3945\"), \"mf-branin\" or \"mf-hartmann6\""
                    .into(),
            ));
        }
        (Some(name), true) => {
            if let Err(e) = rtune_bench::by_name(name, file.executor.instance.as_deref()) {
                let field = match e {
                    rtune_bench::BenchError::Unknown(_) => "executor.benchmark",
                    _ => "executor.instance",
                };
                return Err(invalid(field, e.to_string()));
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
        && !(interval.is_finite() && interval > 0.0)
    {
        return Err(invalid(
            "executor.poll_interval_s",
            format!("must be more than 0 seconds, got {interval}"),
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
    if !(file.output.report_interval_s.is_finite() && file.output.report_interval_s > 0.0) {
        return Err(invalid(
            "output.report_interval_s",
            "must be a positive number of seconds".into(),
        ));
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
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err(format!("`{key}` is not a key path such as space.lr")));
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
    fn a_wrong_mode_suggests_the_valid_one() {
        let message = parse_err(&FILE.replace("\"min\"", "\"mni\""), &[]);
        assert!(message.contains("did you mean `min`"), "{message}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let message = parse_err(FILE, &["num_samples=0"]);
        assert!(
            message.contains("num_samples: must be at least 1"),
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
    fn a_syntax_error_names_its_line() {
        let message = parse_err("name = \"x\"\nmetric = \n", &[]);
        assert!(message.contains("line 2"), "{message}");
    }
}

//! Benchmark functions of (config, fidelity) for rtune's simulator executor and for judging
//! searchers: the YAHPO Gym `lcbench` surrogate ([`lcbench`], evaluated by a small ONNX
//! interpreter, [`onnx`]) and synthetic multi-fidelity functions with known optima
//! ([`synthetic`]).
//!
//! A benchmark gives a config's learning curve: for each iteration 1..=max, the simulated
//! seconds since the start of training and the metrics a trial would report. The simulator
//! turns the curve into reports in virtual time.

pub mod external;
pub mod lcbench;
pub mod onnx;
pub mod synthetic;

use rtune_core::synthetic::SyntheticFunction;
use serde_json::{Map, Value};

pub use external::External;
pub use lcbench::LcBench;
pub use synthetic::Synthetic;

/// One iteration of a simulated training run.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Simulated seconds from the start of training to the end of this iteration. A surrogate
    /// may predict a curve that is not monotone; the simulator never lets time go backwards.
    pub elapsed_s: f64,
    /// The metrics reported after this iteration.
    pub metrics: Map<String, Value>,
}

/// Why a benchmark cannot be built or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "unknown benchmark `{0}`; known: lcbench, mf-branin, mf-hartmann6, yahpo (YAHPO Gym's \
         scenarios through yahpo_gym) and command (your own benchmark program)"
    )]
    Unknown(String),
    #[error("lcbench: unknown task `{task}`; the tasks are the OpenML task ids {known}")]
    UnknownTask { task: String, known: String },
    #[error("lcbench needs a task: the OpenML task id, e.g. \"3945\"")]
    NoTask,
    #[error("{benchmark}: the config has no `{parameter}` ({expected})")]
    Missing {
        benchmark: &'static str,
        parameter: String,
        expected: String,
    },
    #[error("{benchmark}: `{parameter}` = {value} is not {expected}")]
    Invalid {
        benchmark: &'static str,
        parameter: String,
        /// The value as written in the config (JSON).
        value: String,
        expected: String,
    },
    #[error("the surrogate model cannot be run: {0}")]
    Model(Box<onnx::OnnxError>),
    /// The benchmark program failed or broke the protocol.
    #[error("benchmark program `{command}`: {message}")]
    Worker { command: String, message: String },
    /// The benchmark program answered that it cannot evaluate the request.
    #[error("{benchmark}: {message}")]
    Rejected { benchmark: String, message: String },
    /// A setting of the benchmark is missing or wrong.
    #[error("{key}: {message}")]
    Setting { key: &'static str, message: String },
}

/// A benchmark function of (config, fidelity).
pub trait Benchmark: Send + Sync {
    /// For logs: `lcbench task 3945`, `mf-branin`.
    fn describe(&self) -> String;
    /// Iterations of a full training run (the highest fidelity).
    fn max_iterations(&self) -> u32;
    /// The config at iteration `iteration` (1..=max_iterations): the simulated seconds of
    /// training up to the end of that iteration and the metrics reported there. An error names
    /// a missing or out-of-range parameter.
    fn evaluate(&self, config: &Map<String, Value>, iteration: u32) -> Result<Step, BenchError>;
    /// The config's whole learning curve, iterations 1..=max_iterations.
    fn curve(&self, config: &Map<String, Value>) -> Result<Vec<Step>, BenchError> {
        (1..=self.max_iterations())
            .map(|i| self.evaluate(config, i))
            .collect()
    }
    /// The search space the benchmark is defined on, in the experiment file's `[space]` syntax
    /// (JSON form), for documentation and for the benchmark script.
    fn space(&self) -> Value;
}

/// How an experiment names its benchmark (the simulated executor's keys, docs/experiment-file.md).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BenchmarkSpec {
    /// `lcbench`, `mf-branin`, `mf-hartmann6`, `yahpo` or `command`.
    pub name: String,
    /// lcbench's OpenML task id; a YAHPO Gym scenario's instance.
    pub instance: Option<String>,
    /// `command`: the benchmark program and its arguments.
    pub command: Vec<String>,
    /// `yahpo`: the scenario (`lcbench`, `rbv2_xgboost`, `nb301`, ...).
    pub scenario: Option<String>,
    /// `yahpo`: the Python interpreter with yahpo_gym (default `python3`).
    pub python: Option<String>,
    /// `yahpo`: the directory with the scenarios' surrogate data (YAHPO Gym's `yahpo_data`).
    pub data_path: Option<String>,
    /// `yahpo`: iterations of a full run (the fidelity's range is cut into these).
    pub iterations: Option<u32>,
}

impl BenchmarkSpec {
    /// Checks the settings without starting a benchmark program: a built-in benchmark is built
    /// (cheap), `command` and `yahpo` only have their keys checked.
    pub fn check(&self) -> Result<(), BenchError> {
        let setting = |key, message: &str| {
            Err(BenchError::Setting {
                key,
                message: message.to_string(),
            })
        };
        match self.name.as_str() {
            "command" => {
                if self.command.first().is_none_or(|p| p.is_empty()) {
                    return setting(
                        "executor.benchmark_command",
                        "benchmark = \"command\" needs the program that answers, e.g. \
                         benchmark_command = [\"python3\", \"my_benchmark.py\"]",
                    );
                }
                Ok(())
            }
            "yahpo" => {
                if self.scenario.as_deref().is_none_or(str::is_empty) {
                    return setting(
                        "executor.scenario",
                        "benchmark = \"yahpo\" needs a YAHPO Gym scenario, e.g. \"lcbench\" or \
                         \"rbv2_xgboost\"",
                    );
                }
                if self.data_path.as_deref().is_none_or(str::is_empty) {
                    return setting(
                        "executor.data_path",
                        "benchmark = \"yahpo\" needs the directory with the scenarios' \
                         surrogate data (YAHPO Gym's yahpo_data; rtune ships lcbench's in \
                         benchmarks/yahpo)",
                    );
                }
                if self.iterations == Some(0) {
                    return setting("executor.iterations", "must be at least 1");
                }
                Ok(())
            }
            _ => by_name(&self.name, self.instance.as_deref()).map(|_| ()),
        }
    }

    /// The benchmark; for `command` and `yahpo` this starts its program.
    pub fn build(&self) -> Result<Box<dyn Benchmark>, BenchError> {
        self.check()?;
        match self.name.as_str() {
            "command" => Ok(Box::new(External::start(
                &self.command,
                self.command.join(" "),
            )?)),
            "yahpo" => {
                let python = self.python.as_deref().unwrap_or("python3");
                let scenario = self.scenario.as_deref().unwrap_or_default();
                let command = external::yahpo::command(
                    python,
                    scenario,
                    self.instance.as_deref(),
                    self.data_path.as_deref().unwrap_or_default(),
                    self.iterations,
                );
                let label = format!("the YAHPO Gym worker ({python}, scenario {scenario})");
                Ok(Box::new(External::start(&command, label)?))
            }
            _ => by_name(&self.name, self.instance.as_deref()),
        }
    }
}

/// The built-in benchmark called `name` (`lcbench`, `mf-branin`, `mf-hartmann6`); `instance`
/// is lcbench's OpenML task id.
pub fn by_name(name: &str, instance: Option<&str>) -> Result<Box<dyn Benchmark>, BenchError> {
    match name {
        "lcbench" => Ok(Box::new(LcBench::new(instance.ok_or(BenchError::NoTask)?)?)),
        "mf-branin" => Ok(Box::new(Synthetic(SyntheticFunction::Branin))),
        "mf-hartmann6" => Ok(Box::new(Synthetic(SyntheticFunction::Hartmann6))),
        other => Err(BenchError::Unknown(other.to_string())),
    }
}

/// A numeric parameter of a config, with an error naming it.
impl From<onnx::OnnxError> for BenchError {
    fn from(e: onnx::OnnxError) -> Self {
        BenchError::Model(Box::new(e))
    }
}

pub(crate) fn number(
    benchmark: &'static str,
    config: &Map<String, Value>,
    parameter: &str,
    expected: &str,
) -> Result<f64, BenchError> {
    let value = config.get(parameter).ok_or_else(|| BenchError::Missing {
        benchmark,
        parameter: parameter.to_string(),
        expected: expected.to_string(),
    })?;
    value
        .as_f64()
        .filter(|v| v.is_finite())
        .ok_or_else(|| BenchError::Invalid {
            benchmark,
            parameter: parameter.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        })
}

//! Benchmarks answered by another program: a long-lived worker process that speaks JSON lines
//! on its standard input and output (the user's own tabular or surrogate benchmark), and YAHPO
//! Gym's scenarios through `yahpo_gym` in a Python worker that rtune ships ([`yahpo`]).
//!
//! The protocol (docs/experiment-file.md, "Your own benchmark"): rtune writes one request per
//! line and reads one answer line per request.
//!
//! * `{"op": "describe"}` → `{"max_iterations": 52, "description": "...", "space": {...}}`
//!   (`space`, the search space in the experiment file's syntax, is optional).
//! * `{"op": "evaluate", "config": {...}, "from": 1, "to": 52}` →
//!   `{"steps": [{"elapsed_s": 1.5, "metrics": {...}}, ...]}` with one step per iteration
//!   `from..=to`: the simulated seconds since the start of training at the end of that
//!   iteration and the metrics reported there; or `{"error": "..."}` (a config the benchmark
//!   cannot evaluate: the trial fails with that message).
//!
//! The worker ends when its standard input closes. Its standard error is passed through; its
//! standard output carries nothing but answers.
//!
//! A trial asks for its iterations one at a time; the first request for a config asks for the
//! rest of its curve in one go and keeps it ([`CACHED_CURVES`] configs), so a worker is called
//! about once per trial.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::{BenchError, Benchmark, Step};

/// Curves kept for configs that were evaluated (one per running trial is enough; a few more
/// cover restarts).
const CACHED_CURVES: usize = 256;

/// A benchmark whose evaluations come from a worker process.
pub struct External {
    description: String,
    max_iterations: u32,
    space: Value,
    worker: Mutex<Worker>,
}

struct Worker {
    /// The command line, for messages.
    label: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// (config as JSON text, first iteration, its steps), most recent last.
    curves: VecDeque<(String, u32, Vec<Step>)>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing stdin ends a well-behaved worker; kill one that is not.
        let _ = self.stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    /// Sends one request and reads its answer line (an `error` answer becomes `Err`).
    fn ask(&mut self, request: &Value) -> Result<Map<String, Value>, BenchError> {
        let fail = |message: String| BenchError::Worker {
            command: self.label.clone(),
            message,
        };
        writeln!(self.stdin, "{request}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| fail(format!("cannot write to it: {e}")))?;
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| fail(format!("cannot read its answer: {e}")))?;
        if read == 0 {
            let status = self
                .child
                .try_wait()
                .ok()
                .flatten()
                .map_or_else(|| "still running".to_string(), |s| s.to_string());
            return Err(fail(format!(
                "it closed its output without answering ({status}); its standard error above says why"
            )));
        }
        let answer: Value = serde_json::from_str(line.trim()).map_err(|e| {
            fail(format!(
                "its answer is not one JSON object per line ({e}): {}",
                line.trim()
            ))
        })?;
        let Value::Object(answer) = answer else {
            return Err(fail(format!(
                "its answer is not a JSON object: {}",
                line.trim()
            )));
        };
        if let Some(error) = answer.get("error") {
            return Err(BenchError::Rejected {
                benchmark: self.label.clone(),
                message: error
                    .as_str()
                    .map_or_else(|| error.to_string(), str::to_string),
            });
        }
        Ok(answer)
    }
}

impl External {
    /// Starts `command` (program and arguments) and asks it to describe itself; `label` names
    /// it in messages.
    pub fn start(command: &[String], label: String) -> Result<External, BenchError> {
        let (program, args) = command.split_first().ok_or_else(|| BenchError::Worker {
            command: label.clone(),
            message: "no command given".into(),
        })?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| BenchError::Worker {
                command: label.clone(),
                message: format!("cannot start it: {e}"),
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(BenchError::Worker {
                command: label,
                message: "no pipes to it".into(),
            });
        };
        let mut worker = Worker {
            label,
            child,
            stdin,
            stdout: BufReader::new(stdout),
            curves: VecDeque::new(),
        };
        let answer = worker.ask(&json!({"op": "describe"}))?;
        let bad = |message: String| BenchError::Worker {
            command: worker.label.clone(),
            message,
        };
        let max_iterations = answer
            .get("max_iterations")
            .and_then(Value::as_u64)
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| {
                bad(format!(
                    "its describe answer needs \"max_iterations\", a whole number from 1 to \
                     1000000; got {}",
                    Value::Object(answer.clone())
                ))
            })? as u32;
        let description = answer
            .get("description")
            .and_then(Value::as_str)
            .map_or_else(|| worker.label.clone(), str::to_string);
        let space = answer.get("space").cloned().unwrap_or(Value::Null);
        Ok(External {
            description,
            max_iterations,
            space,
            worker: Mutex::new(worker),
        })
    }
}

/// One step of an evaluate answer.
fn parse_step(value: &Value, label: &str, iteration: u32) -> Result<Step, BenchError> {
    let bad = |what: &str| BenchError::Worker {
        command: label.to_string(),
        message: format!("step of iteration {iteration}: {what}; got {value}"),
    };
    let elapsed_s = value
        .get("elapsed_s")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| bad("\"elapsed_s\" must be a number of seconds, 0 or more"))?;
    let metrics = value
        .get("metrics")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| bad("\"metrics\" must be an object"))?;
    Ok(Step { elapsed_s, metrics })
}

impl Benchmark for External {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn max_iterations(&self) -> u32 {
        self.max_iterations
    }

    fn evaluate(&self, config: &Map<String, Value>, iteration: u32) -> Result<Step, BenchError> {
        let key = Value::Object(config.clone()).to_string();
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        let cached = worker.curves.iter().find_map(|(k, from, steps)| {
            (k == &key && iteration >= *from)
                .then(|| steps.get((iteration - from) as usize).cloned())
                .flatten()
        });
        if let Some(step) = cached {
            return Ok(step);
        }
        let to = self.max_iterations.max(iteration);
        let answer = worker.ask(&json!({
            "op": "evaluate",
            "config": config,
            "from": iteration,
            "to": to,
        }))?;
        let steps = answer
            .get("steps")
            .and_then(Value::as_array)
            .filter(|s| s.len() == (to - iteration + 1) as usize)
            .ok_or_else(|| BenchError::Worker {
                command: worker.label.clone(),
                message: format!(
                    "its evaluate answer needs \"steps\", {} of them (iterations {iteration} to {to})",
                    to - iteration + 1
                ),
            })?;
        let steps: Vec<Step> = steps
            .iter()
            .zip(iteration..)
            .map(|(s, i)| parse_step(s, &worker.label, i))
            .collect::<Result<_, _>>()?;
        let first = steps[0].clone();
        worker.curves.retain(|(k, _, _)| k != &key);
        if worker.curves.len() >= CACHED_CURVES {
            worker.curves.pop_front();
        }
        worker.curves.push_back((key, iteration, steps));
        Ok(first)
    }

    fn space(&self) -> Value {
        self.space.clone()
    }
}

/// The YAHPO Gym worker: a Python program (shipped inside rtune, run with `python -c`) that
/// answers the protocol above with `yahpo_gym.BenchmarkSet` for one scenario and instance.
pub mod yahpo {
    /// The worker's source.
    pub const WORKER: &str = include_str!("yahpo_worker.py");

    /// The command that runs the worker: `python -c WORKER --scenario ... --data-path ...`.
    pub fn command(
        python: &str,
        scenario: &str,
        instance: Option<&str>,
        data_path: &str,
        fidelity_iterations: Option<u32>,
    ) -> Vec<String> {
        let mut command = vec![
            python.to_string(),
            "-c".to_string(),
            WORKER.to_string(),
            "--scenario".to_string(),
            scenario.to_string(),
            "--data-path".to_string(),
            data_path.to_string(),
        ];
        if let Some(instance) = instance {
            command.extend(["--instance".to_string(), instance.to_string()]);
        }
        if let Some(n) = fidelity_iterations {
            command.extend(["--iterations".to_string(), n.to_string()]);
        }
        command
    }
}

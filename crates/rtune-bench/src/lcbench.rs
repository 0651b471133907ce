//! YAHPO Gym's `lcbench` surrogate (v1.0.2): 34 OpenML tasks x 52 epochs of a funnel-shaped
//! MLP trained by Auto-PyTorch, predicted by a small residual network. The model and encoding
//! are the files in `benchmarks/yahpo/lcbench/` (Apache-2.0, see PROVENANCE.md there), embedded
//! in the binary.
//!
//! All preprocessing is inside the graph: the inputs are the task's index from `encoding.json`
//! and the eight raw values (epoch and the seven hyperparameters).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::onnx::{Model, Tensor};
use crate::{BenchError, Benchmark, Step, number};

const MODEL: &[u8] = include_bytes!("../../../benchmarks/yahpo/lcbench/model.onnx");
const ENCODING: &str = include_str!("../../../benchmarks/yahpo/lcbench/encoding.json");
const CONFIG_SPACE: &str = include_str!("../../../benchmarks/yahpo/lcbench/config_space.json");

/// Epochs of a full training run.
pub const EPOCHS: u32 = 52;

/// The hyperparameters, in the order the model reads them after `epoch`, with their ranges.
pub const PARAMETERS: [(&str, &str); 7] = [
    ("batch_size", "an integer in [16, 512]"),
    ("learning_rate", "a number in [1e-4, 0.1]"),
    ("momentum", "a number in [0.1, 0.99]"),
    ("weight_decay", "a number in [1e-5, 0.1]"),
    ("num_layers", "an integer in [1, 5]"),
    ("max_units", "an integer in [64, 1024]"),
    ("max_dropout", "a number in [0, 1]"),
];

/// The model's outputs, in order.
pub const OBJECTIVES: [&str; 6] = [
    "time",
    "val_accuracy",
    "val_cross_entropy",
    "val_balanced_accuracy",
    "test_cross_entropy",
    "test_balanced_accuracy",
];

/// The parsed model and task encoding, shared by every instance.
struct Surrogate {
    model: Model,
    tasks: BTreeMap<String, i64>,
}

fn surrogate() -> Result<&'static Surrogate, BenchError> {
    static SURROGATE: OnceLock<Result<Surrogate, String>> = OnceLock::new();
    let loaded = SURROGATE.get_or_init(|| {
        let model = Model::from_bytes(MODEL).map_err(|e| e.to_string())?;
        let encoding: BTreeMap<String, BTreeMap<String, i64>> =
            serde_json::from_str(ENCODING).map_err(|e| format!("encoding.json: {e}"))?;
        let mut tasks = encoding
            .get("OpenML_task_id")
            .cloned()
            .ok_or("encoding.json has no OpenML_task_id")?;
        // The benchmark's tasks are the 34 of config_space.json (the encoding also knows a
        // 35th the data set left out).
        let space: Value =
            serde_json::from_str(CONFIG_SPACE).map_err(|e| format!("config_space.json: {e}"))?;
        let choices: Vec<String> = space["hyperparameters"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["name"] == "OpenML_task_id"))
            .and_then(|h| h["choices"].as_array())
            .map(|c| {
                c.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or("config_space.json has no OpenML_task_id choices")?;
        tasks.retain(|task, _| choices.contains(task));
        Ok(Surrogate { model, tasks })
    });
    loaded.as_ref().map_err(|message| {
        BenchError::from(crate::onnx::OnnxError::Tensor {
            name: "lcbench".into(),
            message: message.clone(),
        })
    })
}

/// The OpenML task ids lcbench knows.
pub fn tasks() -> Result<Vec<String>, BenchError> {
    Ok(surrogate()?.tasks.keys().cloned().collect())
}

/// One lcbench task.
#[derive(Clone, Debug)]
pub struct LcBench {
    task: String,
    index: i64,
}

impl LcBench {
    /// The task with this OpenML id, e.g. `"3945"`.
    pub fn new(task: &str) -> Result<LcBench, BenchError> {
        let s = surrogate()?;
        let index = *s.tasks.get(task).ok_or_else(|| BenchError::UnknownTask {
            task: task.to_string(),
            known: s.tasks.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        Ok(LcBench {
            task: task.to_string(),
            index,
        })
    }

    pub fn task(&self) -> &str {
        &self.task
    }

    /// Evaluates rows of the eight raw inputs (epoch, batch_size, learning_rate, momentum,
    /// weight_decay, num_layers, max_units, max_dropout) and returns the six objectives per row.
    pub fn evaluate_rows(&self, rows: &[[f32; 8]]) -> Result<Vec<[f32; 6]>, BenchError> {
        let s = surrogate()?;
        let n = rows.len();
        let inputs = vec![
            (
                "x_cat".to_string(),
                Tensor::I64 {
                    shape: vec![n, 1],
                    data: vec![self.index; n],
                },
            ),
            (
                "x_cont".to_string(),
                Tensor::F32 {
                    shape: vec![n, 8],
                    data: rows.iter().flatten().copied().collect(),
                },
            ),
        ];
        let outputs = s.model.run(inputs)?;
        let out = outputs
            .first()
            .and_then(|t| {
                t.as_f32()
                    .filter(|d| t.shape() == [n, 6] && d.len() == n * 6)
            })
            .ok_or_else(|| {
                BenchError::from(crate::onnx::OnnxError::MissingOutput(
                    "output [n, 6]".into(),
                ))
            })?;
        Ok(out
            .chunks_exact(6)
            .map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]])
            .collect())
    }

    /// The seven hyperparameters of a config, checked against their ranges.
    pub fn hyperparameters(config: &Map<String, Value>) -> Result<[f32; 7], BenchError> {
        let mut values = [0f32; 7];
        for (slot, (name, expected)) in values.iter_mut().zip(PARAMETERS) {
            let v = number("lcbench", config, name, expected)?;
            let (low, high) = match name {
                "batch_size" => (16.0, 512.0),
                "learning_rate" => (1e-4, 0.1),
                "momentum" => (0.1, 0.99),
                "weight_decay" => (1e-5, 0.1),
                "num_layers" => (1.0, 5.0),
                "max_units" => (64.0, 1024.0),
                _ => (0.0, 1.0),
            };
            // A little slack for values written in decimal.
            if v < low * (1.0 - 1e-9) - 1e-12 || v > high * (1.0 + 1e-9) + 1e-12 {
                return Err(BenchError::Invalid {
                    benchmark: "lcbench",
                    parameter: name.to_string(),
                    value: config.get(name).map_or_else(String::new, Value::to_string),
                    expected: expected.to_string(),
                });
            }
            *slot = v as f32;
        }
        Ok(values)
    }
}

/// One epoch's outputs as a step: `time` is the elapsed time; every output is a metric.
fn step(epoch: u32, out: &[f32; 6]) -> Step {
    let mut metrics = Map::new();
    metrics.insert("epoch".into(), json!(epoch));
    for (name, value) in OBJECTIVES.iter().zip(out) {
        metrics.insert((*name).into(), json!(f64::from(*value)));
    }
    Step {
        elapsed_s: f64::from(out[0]),
        metrics,
    }
}

impl Benchmark for LcBench {
    fn describe(&self) -> String {
        format!("lcbench task {}", self.task)
    }

    fn max_iterations(&self) -> u32 {
        EPOCHS
    }

    fn evaluate(&self, config: &Map<String, Value>, iteration: u32) -> Result<Step, BenchError> {
        let h = Self::hyperparameters(config)?;
        let epoch = iteration.clamp(1, EPOCHS);
        let row = [epoch as f32, h[0], h[1], h[2], h[3], h[4], h[5], h[6]];
        let out = self.evaluate_rows(&[row])?;
        Ok(step(epoch, &out[0]))
    }

    /// All 52 epochs in one batch. `time` is the surrogate's cumulative training time; it is
    /// not always increasing, so the elapsed time is its running maximum.
    fn curve(&self, config: &Map<String, Value>) -> Result<Vec<Step>, BenchError> {
        let h = Self::hyperparameters(config)?;
        let rows: Vec<[f32; 8]> = (1..=EPOCHS)
            .map(|epoch| [epoch as f32, h[0], h[1], h[2], h[3], h[4], h[5], h[6]])
            .collect();
        let outputs = self.evaluate_rows(&rows)?;
        let mut elapsed = 0f64;
        Ok(outputs
            .iter()
            .zip(1..)
            .map(|(out, epoch)| {
                let mut s = step(epoch, out);
                elapsed = elapsed.max(s.elapsed_s);
                s.elapsed_s = elapsed;
                s
            })
            .collect())
    }

    fn space(&self) -> Value {
        json!({
            "batch_size": {"lograndint": [16, 513]},
            "learning_rate": {"loguniform": [1e-4, 0.1]},
            "momentum": {"uniform": [0.1, 0.99]},
            "weight_decay": {"uniform": [1e-5, 0.1]},
            "num_layers": {"randint": [1, 6]},
            "max_units": {"lograndint": [64, 1025]},
            "max_dropout": {"uniform": [0.0, 1.0]},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Map<String, Value> {
        match json!({"batch_size": 64, "learning_rate": 0.01, "momentum": 0.5,
            "weight_decay": 0.01, "num_layers": 3, "max_units": 256, "max_dropout": 0.3})
        {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn a_curve_has_52_epochs_and_matches_yahpo_on_one_config() {
        let bench = LcBench::new("3945").expect("task");
        let curve = bench.curve(&config()).expect("curve");
        assert_eq!(curve.len(), 52);
        assert!(curve.windows(2).all(|w| w[0].elapsed_s <= w[1].elapsed_s));
        // yahpo_gym 1.0.2 + onnxruntime on this config (benchmarks/yahpo/reference.py).
        let last = &curve[51].metrics;
        let ce = last["val_cross_entropy"].as_f64().expect("number");
        assert!((ce - 0.297_474_2).abs() < 1e-4, "{ce}");
        let acc = curve[0].metrics["val_accuracy"].as_f64().expect("number");
        assert!((acc - 37.333_538).abs() < 1e-2, "{acc}");
        assert!((curve[51].elapsed_s - 172.886_6).abs() < 0.05);
    }

    #[test]
    fn bad_tasks_and_configs_are_named() {
        let err = LcBench::new("42").expect_err("unknown");
        assert!(err.to_string().contains("unknown task `42`"), "{err}");
        assert!(err.to_string().contains("3945"), "{err}");
        let bench = LcBench::new("3945").expect("task");
        let mut c = config();
        c.remove("momentum");
        let err = bench.curve(&c).expect_err("missing");
        assert!(err.to_string().contains("no `momentum`"), "{err}");
        let mut c = config();
        c.insert("batch_size".into(), json!(4096));
        let err = bench.curve(&c).expect_err("range");
        assert!(err.to_string().contains("`batch_size` = 4096"), "{err}");
        assert_eq!(tasks().expect("tasks").len(), 34);
    }
}

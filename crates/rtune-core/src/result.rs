//! What a trial reports, and how a metric is turned into a score.

use serde::{Deserialize, Serialize};

use crate::trial::TrialId;

/// Whether the metric is minimised or maximised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Min,
    Max,
}

impl Mode {
    /// The score of a metric value: larger is always better. NaN and infinities become `-inf`,
    /// the worst possible score, in either mode: they mean a diverged trial, never a good one.
    /// (Ray Tune never stops a NaN trial; rtune deliberately treats a diverged trial as the worst.)
    pub fn score(self, value: f64) -> f64 {
        if !value.is_finite() {
            return f64::NEG_INFINITY;
        }
        match self {
            Mode::Max => value,
            Mode::Min => -value,
        }
    }

    /// Whether `a` is a better metric value than `b` under this mode.
    pub fn is_better(self, a: f64, b: f64) -> bool {
        self.score(a) > self.score(b)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Min => "min",
            Mode::Max => "max",
        })
    }
}

/// One report of a trial, with rtune's automatic keys already filled in by the [`crate::Tuner`]:
/// `training_iteration`, `time_total_s`, `time_this_iter_s`, `timestamp`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    pub trial: TrialId,
    /// Every key the trial reported plus the automatic ones.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Whether this report came with a checkpoint (stored under the result's iteration).
    pub has_checkpoint: bool,
}

impl TrialResult {
    /// A numeric metric, if the trial reported it as a number (booleans and strings are not).
    pub fn get(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).and_then(serde_json::Value::as_f64)
    }

    /// The value of a metric as the schedulers read it. A number is itself; `null` and the
    /// strings `"nan"`, `"inf"`, `"-inf"`, `"infinity"` (any case), which is how a diverged metric
    /// travels in JSON, are NaN or infinite (so [`Mode::score`] ranks them worst). `None`: the key
    /// is missing or holds something else.
    pub fn metric(&self, key: &str) -> Option<f64> {
        match self.metrics.get(key)? {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::Null => Some(f64::NAN),
            serde_json::Value::String(text) => {
                let lower = text.trim().to_ascii_lowercase();
                let unsigned = lower.trim_start_matches(['+', '-']);
                if matches!(unsigned, "nan" | "inf" | "infinity") {
                    lower.parse::<f64>().ok()
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// `training_iteration`, which the tuner always sets.
    pub fn iteration(&self) -> u64 {
        self.metrics
            .get("training_iteration")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }
}

/// How a JSON value's kind reads in an error message ("a string", "an array", ...).
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

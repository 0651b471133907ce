//! The dashboard's reading of an experiment directory's files (docs/file-formats.md), in one
//! place: every format detail the dashboard relies on is here, so that a change of a file's
//! layout is adapted here only. Parsing is lenient: unknown keys are ignored and missing ones
//! take defaults, so a newer rtune's files still show.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const STATE_FILE: &str = "experiment_state.json";
pub const DECISIONS_FILE: &str = "decisions.jsonl";
pub const EVENTS_FILE: &str = "events.jsonl";
pub const LINEAGE_FILE: &str = "lineage.jsonl";
pub const RESULT_FILE: &str = "result.json";
/// Files of a trial directory the dashboard links to (and serves; nothing else is served).
pub const TRIAL_FILES: &[&str] = &[
    "params.json",
    "result.json",
    "progress.csv",
    "stdout.log",
    "stderr.log",
    "error.txt",
    "policy.json",
];

/// A trial's directory name: `trial_00003`.
pub fn trial_dir_name(id: u32) -> String {
    format!("trial_{id:05}")
}

/// Whether the metric is minimised or maximised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Min,
    Max,
}

impl Mode {
    /// Larger is better.
    pub fn score(self, value: f64) -> f64 {
        match self {
            Mode::Min => -value,
            Mode::Max => value,
        }
    }
}

/// `experiment_state.json`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct StateFile {
    pub format: u32,
    pub name: String,
    pub status: String,
    pub metric: String,
    pub mode: Mode,
    pub scheduler: String,
    pub searcher: String,
    pub parameters: Vec<String>,
    pub total_trials: Option<usize>,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub trials: Vec<TrialState>,
    pub placements: BTreeMap<String, String>,
}

/// One trial in `experiment_state.json`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct TrialState {
    pub id: u32,
    pub config: Map<String, Value>,
    pub status: String,
    pub tag: String,
    pub iteration: u64,
    pub time_total_s: f64,
    #[serde(deserialize_with = "best_any")]
    pub best: Option<(f64, u64)>,
    pub runs: u32,
    pub failures: u32,
    pub error: Option<String>,
    /// Format 3: where its latest run was placed (typed; `label` is display text).
    pub placement: Option<Value>,
}

/// `best` as format 3 writes it (`{"value", "iteration"}`) or format 2 did (`[value, iteration]`).
fn best_any<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<(f64, u64)>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Object(map)) => map
            .get("value")
            .and_then(Value::as_f64)
            .zip(map.get("iteration").and_then(Value::as_u64)),
        Some(Value::Array(pair)) => pair
            .first()
            .and_then(Value::as_f64)
            .zip(pair.get(1).and_then(Value::as_u64)),
        _ => None,
    })
}

/// A placement's display text: format 3's typed placement (its `label`), or format 2's text.
pub fn placement_label(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Object(map) => map.get("label").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl StateFile {
    pub fn parse(text: &str) -> Result<StateFile, serde_json::Error> {
        let mut state: StateFile = serde_json::from_str(text)?;
        // Format 3 keeps each trial's placement on the trial.
        for trial in &state.trials {
            if let Some(label) = trial.placement.as_ref().and_then(placement_label) {
                state.placements.insert(format!("{:05}", trial.id), label);
            }
        }
        Ok(state)
    }
}

/// The value at a dotted path (`optimizer.lr`) of a nested config, or a key that contains dots.
pub fn dotted<'a>(config: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = config.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = config.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// One line of a trial's `result.json`, as far as the dashboard uses it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResultPoint {
    pub iteration: u64,
    /// The experiment's metric; NaN when this report did not include it.
    pub value: f64,
    pub time_total_s: f64,
    pub timestamp: f64,
}

impl ResultPoint {
    pub fn parse(line: &str, metric: &str) -> Result<ResultPoint, String> {
        // Most lines carry the metric at the top level: read only the four keys used and skip
        // the rest (a result line often repeats the whole config), without building a tree.
        let mut de = serde_json::Deserializer::from_str(line);
        let fast = serde::de::DeserializeSeed::deserialize(FastPoint { metric }, &mut de)
            .and_then(|p| de.end().map(|()| p));
        match fast {
            Ok(p) if p.iteration.is_some() && (p.value.is_some() || !metric.contains('.')) => {
                Ok(ResultPoint {
                    iteration: p.iteration.unwrap_or(0.0).max(0.0) as u64,
                    value: p.value.unwrap_or(f64::NAN),
                    time_total_s: p.time_total_s.unwrap_or(f64::NAN),
                    timestamp: p.timestamp.unwrap_or(f64::NAN),
                })
            }
            // A dotted metric inside a nested object, or a line without training_iteration:
            // the general reading below finds it or says what is wrong.
            _ => Self::parse_tree(line, metric),
        }
    }

    fn parse_tree(line: &str, metric: &str) -> Result<ResultPoint, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let object = value.as_object().ok_or("not a JSON object")?;
        let number = |key: &str| dotted(object, key).and_then(Value::as_f64);
        Ok(ResultPoint {
            iteration: number("training_iteration")
                .ok_or("no training_iteration")?
                .max(0.0) as u64,
            value: number(metric).unwrap_or(f64::NAN),
            time_total_s: number("time_total_s").unwrap_or(f64::NAN),
            timestamp: number("timestamp").unwrap_or(f64::NAN),
        })
    }
}

/// What [`ResultPoint::parse`]'s fast path found in a result line: the numbers of its keys.
#[derive(Default)]
struct FastFields {
    iteration: Option<f64>,
    value: Option<f64>,
    time_total_s: Option<f64>,
    timestamp: Option<f64>,
}

/// Reads a result line's object, keeping the numbers of `training_iteration`, `time_total_s`,
/// `timestamp` and the metric (a top-level key), skipping every other value unparsed.
struct FastPoint<'m> {
    metric: &'m str,
}

#[derive(Clone, Copy)]
enum FastKey {
    Iteration,
    Metric,
    TimeTotal,
    Timestamp,
    Other,
}

struct FastKeySeed<'m>(&'m str);

impl<'de> serde::de::DeserializeSeed<'de> for FastKeySeed<'_> {
    type Value = FastKey;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<FastKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for FastKeySeed<'_> {
    type Value = FastKey;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<FastKey, E> {
        Ok(match key {
            k if k == self.0 => FastKey::Metric,
            "training_iteration" => FastKey::Iteration,
            "time_total_s" => FastKey::TimeTotal,
            "timestamp" => FastKey::Timestamp,
            _ => FastKey::Other,
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for FastPoint<'_> {
    type Value = FastFields;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<FastFields, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FastPoint<'_> {
    type Value = FastFields;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FastFields, A::Error> {
        let mut out = FastFields::default();
        while let Some(key) = map.next_key_seed(FastKeySeed(self.metric))? {
            let slot = match key {
                FastKey::Iteration => &mut out.iteration,
                FastKey::Metric => &mut out.value,
                FastKey::TimeTotal => &mut out.time_total_s,
                FastKey::Timestamp => &mut out.timestamp,
                FastKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            // A number, or anything else (null, a string) that is not one.
            *slot = map.next_value::<Value>()?.as_f64();
        }
        Ok(out)
    }
}

/// The kind of a scheduler decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Continue,
    Stop,
    Pause,
    Exploit,
}

/// One line of `decisions.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionLine {
    pub trial: u32,
    pub action: Action,
    pub reason: String,
    pub time: f64,
    pub iteration: u64,
    /// The donor trial and iteration of an exploit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub donor: Option<(u32, u64)>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

#[derive(Deserialize)]
struct RawDecision {
    trial: u32,
    action: Action,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    time: f64,
    #[serde(default)]
    training_iteration: u64,
    #[serde(default)]
    donor: Option<RawCheckpoint>,
    #[serde(default)]
    details: Value,
}

#[derive(Deserialize)]
struct RawCheckpoint {
    trial: u32,
    iteration: u64,
}

impl DecisionLine {
    pub fn parse(line: &str) -> Result<DecisionLine, String> {
        let raw: RawDecision = serde_json::from_str(line).map_err(|e| e.to_string())?;
        Ok(DecisionLine {
            trial: raw.trial,
            action: raw.action,
            reason: raw.reason,
            time: raw.time,
            iteration: raw.training_iteration,
            donor: raw.donor.map(|d| (d.trial, d.iteration)),
            details: raw.details,
        })
    }

    /// Worth showing: every stop, pause and exploit, and continues that carry numbers (an ASHA
    /// rung passed). Plain "keep running" decisions are only counted.
    pub fn is_notable(&self) -> bool {
        self.action != Action::Continue || !self.details.is_null()
    }
}

/// One line of `events.jsonl`: a status change, a run's placement or a warning.
#[derive(Clone, Debug, Serialize)]
pub struct EventLine {
    pub time: f64,
    pub trial: Option<u32>,
    /// `status`, `placement` or `warning`.
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The run of a `placement` event (each start of a trial is a new run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<u32>,
    /// Where the run was placed (`n1 cpu=2 gpus=1`, `job 12 PENDING (Resources)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// The reason of a status change, the message of a warning.
    pub message: String,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    time: f64,
    #[serde(default)]
    trial: Option<Value>,
    #[serde(default)]
    event: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    run: Option<u32>,
    #[serde(default)]
    placement: Option<Value>,
}

/// A trial named as `00003`, `3` or `trial_00003`.
pub fn trial_number(value: &Value) -> Option<u32> {
    match value {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim_start_matches("trial_").parse().ok(),
        _ => None,
    }
}

impl EventLine {
    pub fn parse(line: &str) -> Result<EventLine, String> {
        let raw: RawEvent = serde_json::from_str(line).map_err(|e| e.to_string())?;
        Ok(EventLine {
            time: raw.time,
            trial: raw.trial.as_ref().and_then(trial_number),
            event: raw.event,
            status: raw.status,
            run: raw.run,
            placement: raw.placement.as_ref().and_then(placement_label),
            message: raw.reason.or(raw.message).unwrap_or_default(),
        })
    }
}

/// One line of `lineage.jsonl`: a PBT exploit.
#[derive(Clone, Debug, Serialize)]
pub struct LineageLine {
    pub time: f64,
    pub target: u32,
    pub donor: u32,
    pub donor_iteration: u64,
    pub target_iteration: u64,
    pub change: String,
    pub old_config: Value,
    pub new_config: Value,
}

#[derive(Deserialize)]
struct RawLineage {
    #[serde(default)]
    time: f64,
    target: Value,
    donor: Value,
    #[serde(default)]
    donor_iteration: u64,
    #[serde(default)]
    target_iteration: u64,
    #[serde(default)]
    change: String,
    #[serde(default)]
    old_config: Value,
    #[serde(default)]
    new_config: Value,
}

impl LineageLine {
    pub fn parse(line: &str) -> Result<LineageLine, String> {
        let raw: RawLineage = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let target = trial_number(&raw.target).ok_or("`target` is not a trial")?;
        let donor = trial_number(&raw.donor).ok_or("`donor` is not a trial")?;
        Ok(LineageLine {
            time: raw.time,
            target,
            donor,
            donor_iteration: raw.donor_iteration,
            target_iteration: raw.target_iteration,
            change: raw.change,
            old_config: raw.old_config,
            new_config: raw.new_config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_lines() -> Result<(), String> {
        let d = DecisionLine::parse(
            r#"{"trial":2,"action":"stop","reason":"eval_loss 1.8 is worse","details":{"rung":1.0},"time":1764010000.1,"training_iteration":1}"#,
        )?;
        assert_eq!((d.trial, d.action, d.iteration), (2, Action::Stop, 1));
        assert!(d.is_notable());
        let e = DecisionLine::parse(
            r#"{"trial":2,"action":"exploit","donor":{"trial":1,"iteration":4},"config":{},"description":"lr=1","reason":"r","time":1.0,"training_iteration":4}"#,
        )?;
        assert_eq!(e.donor, Some((1, 4)));
        let c = DecisionLine::parse(
            r#"{"trial":0,"action":"continue","reason":"ok","time":1.0,"training_iteration":3}"#,
        )?;
        assert!(!c.is_notable());
        let ev = EventLine::parse(
            r#"{"time":1764010000.2,"trial":"00002","event":"status","status":"TERMINATED","reason":"stopped by the scheduler"}"#,
        )?;
        assert_eq!(ev.trial, Some(2));
        assert_eq!(ev.message, "stopped by the scheduler");
        let pl = EventLine::parse(
            r#"{"time":1764010000.3,"trial":"00002","event":"placement","run":2,"placement":"n1 cpu=2 gpus=1"}"#,
        )?;
        assert_eq!(
            (pl.event.as_str(), pl.run, pl.placement.as_deref()),
            ("placement", Some(2), Some("n1 cpu=2 gpus=1"))
        );
        let l = LineageLine::parse(
            r#"{"time":1.0,"target":"trial_00002","donor":"trial_00001","donor_iteration":1,"target_iteration":1,"old_config":{"lr":2.0},"new_config":{"lr":7.0},"change":"lr=7"}"#,
        )?;
        assert_eq!((l.target, l.donor), (2, 1));
        let p = ResultPoint::parse(
            r#"{"eval_loss":1.5,"training_iteration":3,"time_total_s":0.6,"timestamp":17,"trial_id":"00001","done":false}"#,
            "eval_loss",
        )?;
        assert_eq!((p.iteration, p.value), (3, 1.5));
        assert!(ResultPoint::parse("[1]", "x").is_err());
        assert!(ResultPoint::parse(r#"{"loss":1}"#, "loss").is_err());
        assert!(ResultPoint::parse(r#"{"training_iteration":1} x"#, "loss").is_err());
        // A metric nested in an object, named by its dotted path; a missing one is NaN.
        let nested = ResultPoint::parse(
            r#"{"eval":{"loss":0.25},"training_iteration":2,"cfg":{"training_iteration":9}}"#,
            "eval.loss",
        )?;
        assert_eq!((nested.iteration, nested.value), (2, 0.25));
        let missing = ResultPoint::parse(r#"{"training_iteration":2,"loss":null}"#, "loss")?;
        assert!(missing.value.is_nan() && missing.timestamp.is_nan());
        Ok(())
    }

    #[test]
    fn state_tolerates_missing_and_unknown_keys() -> Result<(), serde_json::Error> {
        let s = StateFile::parse(
            r#"{"format":2,"name":"x","metric":"m","mode":"max","new_key":1,"trials":[{"id":3,"config":{"a":{"b":1}},"status":"RUNNING","best":[0.5,2]}]}"#,
        )?;
        assert_eq!(s.mode, Mode::Max);
        assert_eq!(s.trials[0].best, Some((0.5, 2)));
        assert_eq!(dotted(&s.trials[0].config, "a.b"), Some(&Value::from(1)));
        Ok(())
    }
}

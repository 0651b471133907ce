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
/// A trial's results that stopped counting (docs/file-formats.md).
pub const SUPERSEDED_FILE: &str = "superseded.json";
/// The experiment file as run, with the search space.
pub const EXPERIMENT_FILE: &str = "experiment.toml";
/// Files of a trial directory the dashboard links to (and serves; nothing else is served).
pub const TRIAL_FILES: &[&str] = &[
    "params.json",
    "result.json",
    "superseded.json",
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

/// `experiment_state.json`: format 2 and format 3 (docs/file-formats.md) both read.
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
    /// Format 2 only: each trial's latest placement by trial id (format 3 has it per trial).
    pub placements: BTreeMap<String, PlacementField>,
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
    pub best: Option<BestField>,
    pub runs: u32,
    pub failures: u32,
    pub error: Option<String>,
    /// Format 3: where the trial's latest run was placed.
    pub placement: Option<PlacementField>,
    /// Format 3: Unix time of the trial's latest report.
    pub last_report_at: Option<f64>,
    /// Format 3: no report for much longer than its peers (the runner's rule).
    pub silent: bool,
}

impl StateFile {
    pub fn parse(text: &str) -> Result<StateFile, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// A trial's best value: `{"value": v, "iteration": i}` (format 3) or `[v, i]` (format 2).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum BestField {
    Object { value: f64, iteration: u64 },
    Pair(f64, u64),
}

impl BestField {
    /// (value, iteration).
    pub fn pair(self) -> (f64, u64) {
        match self {
            BestField::Object { value, iteration } | BestField::Pair(value, iteration) => {
                (value, iteration)
            }
        }
    }
}

/// Where a run of a trial was placed (`events.jsonl`'s `placement` events and
/// `experiment_state.json`'s `trials[].placement`): the runner's own type. Its `label` is display
/// text only; nothing here decides on it.
pub use rtune_core::{ExecutorKind, NodeShare, Placement};

/// A placement as a file holds it: typed, or (files written before placements were typed) text,
/// or something this rtune cannot read (a newer executor), which is shown as no placement.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PlacementField {
    Typed(Placement),
    Legacy(String),
    Unreadable(Value),
}

impl PlacementField {
    pub fn into_placement(self) -> Option<Placement> {
        match self {
            PlacementField::Typed(p) => Some(p),
            PlacementField::Legacy(text) => Some(legacy::placement(&text)),
            PlacementField::Unreadable(_) => None,
        }
    }
}

/// LEGACY: reading placements that files written before typed placements hold as text
/// (`local cpu=1 gpu=0`, `n1 cpu=2 gpus=1 + n2 cpu=2 gpus=1`, `job 12 PENDING (Resources)`,
/// `job 12 n1 cpu=2 gpus=1`, `simulated ...`). Used only for such old files: current ones carry
/// the typed [`Placement`], read as it is. Remove once no such experiment directories matter.
pub mod legacy {
    use super::{ExecutorKind, NodeShare, Placement};

    /// The old text form made typed.
    pub fn placement(text: &str) -> Placement {
        let trimmed = text.trim();
        let mut p = Placement::nowhere(ExecutorKind::SlurmStep, text);
        if let Some(rest) = trimmed.strip_prefix("job ") {
            p.executor = ExecutorKind::SlurmJob;
            let (id, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            p.job_id = Some(id.to_string());
            // `PENDING (Resources)`: a state in capitals, then the reason in parentheses.
            let state = rest.split(' ').next().unwrap_or("");
            if !state.is_empty()
                && state.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && rest[state.len()..].trim_start().starts_with('(')
            {
                p.queued = true;
                p.queue_reason = rest[state.len()..]
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .map(str::to_string);
            } else {
                p.nodes = nodes(rest);
            }
        } else if trimmed == "local" || trimmed.starts_with("local ") {
            p.executor = ExecutorKind::Local;
            p.nodes = nodes(trimmed);
        } else if trimmed.starts_with("simulated") {
            p.executor = ExecutorKind::Simulated;
        } else {
            p.nodes = nodes(trimmed);
        }
        p
    }

    /// `n1 cpu=2 gpus=1 + n2 cpu=2 gpus=1 workers=2`, `local cpu=1 gpu=0,1`.
    fn nodes(text: &str) -> Vec<NodeShare> {
        text.split(" + ")
            .filter_map(|part| {
                let mut words = part.split_whitespace();
                let mut node = NodeShare {
                    node: words.next()?.to_string(),
                    ..NodeShare::default()
                };
                for word in words {
                    match word.split_once('=') {
                        Some(("cpu", n)) => {
                            node.cpus = n.parse::<f64>().map_or(0, |c| c.ceil() as u32);
                        }
                        Some(("gpu", ids)) => {
                            node.gpus = ids.split(',').filter_map(|i| i.parse().ok()).collect();
                            node.gpu_count = node.gpus.len() as u32;
                        }
                        Some(("gpus", n)) => node.gpu_count = n.parse().unwrap_or(0),
                        _ => {}
                    }
                }
                Some(node)
            })
            .collect()
    }
}

/// How a searched parameter's values lie on an axis: from its distribution in the experiment's
/// `[space]`, never guessed from the values.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "scale", rename_all = "lowercase")]
pub enum ParamScale {
    /// Numbers from `low` to `high` (the largest value the domain can give).
    Linear { low: f64, high: f64, integer: bool },
    /// Positive numbers on a log axis (`loguniform`, `qloguniform`, `lograndint`).
    Log { low: f64, high: f64, integer: bool },
    /// One of the values (`choice`, `grid`), in the order written.
    Categorical { values: Vec<Value> },
}

/// A searched parameter of the experiment's `[space]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpaceParam {
    /// The dotted name, as in the state's `parameters`.
    pub name: String,
    /// The distribution as written: `loguniform`, `choice`, ...
    pub distribution: &'static str,
    #[serde(flatten)]
    pub scale: ParamScale,
}

/// Why the search space could not be read from `experiment.toml`.
#[derive(Debug, thiserror::Error)]
pub enum SpaceFileError {
    #[error("{path} is not TOML: {message}")]
    Toml { path: String, message: String },
    #[error("{path}: {source}")]
    Space {
        path: String,
        source: rtune_core::space::SpaceError,
    },
}

/// The searched parameters of an experiment file's `[space]` (`experiment.toml` in the
/// experiment directory, with the `--set` overrides applied), parsed by the same code that ran
/// the experiment. `path` names the file in errors.
pub fn read_space(text: &str, path: &str) -> Result<Vec<SpaceParam>, SpaceFileError> {
    use rtune_core::space::{Domain, SearchSpace};
    let table: toml::Table = toml::from_str(text).map_err(|e| SpaceFileError::Toml {
        path: path.to_string(),
        message: e.message().to_string(),
    })?;
    let space = match table.get("space").map(serde_json::to_value) {
        Some(Ok(Value::Object(space))) => space,
        _ => Map::new(),
    };
    let space = SearchSpace::from_json(&space).map_err(|source| SpaceFileError::Space {
        path: path.to_string(),
        source,
    })?;
    Ok(space
        .parameters()
        .iter()
        .map(|p| {
            let scale = match &p.domain {
                Domain::Uniform { low, high } | Domain::QUniform { low, high, .. } => {
                    ParamScale::Linear {
                        low: *low,
                        high: *high,
                        integer: false,
                    }
                }
                Domain::LogUniform { low, high } | Domain::QLogUniform { low, high, .. } => {
                    ParamScale::Log {
                        low: *low,
                        high: *high,
                        integer: false,
                    }
                }
                // `high` is excluded by randint and lograndint, included by qrandint.
                Domain::RandInt { low, high } => ParamScale::Linear {
                    low: *low as f64,
                    high: (*high - 1) as f64,
                    integer: true,
                },
                Domain::QRandInt { low, high, .. } => ParamScale::Linear {
                    low: *low as f64,
                    high: *high as f64,
                    integer: true,
                },
                Domain::LogRandInt { low, high } => ParamScale::Log {
                    low: *low as f64,
                    high: (*high - 1) as f64,
                    integer: true,
                },
                Domain::Choice(values) | Domain::Grid(values) => ParamScale::Categorical {
                    values: values.clone(),
                },
            };
            SpaceParam {
                name: p.name(),
                distribution: p.domain.kind(),
                scale,
            }
        })
        .collect())
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

/// One line of a trial's `result.json` (or `superseded.json`), as far as the dashboard uses it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultLine {
    pub iteration: u64,
    /// The experiment's metric; NaN when this report did not include it as a number.
    pub value: f64,
    /// Unix seconds; NaN when missing.
    pub timestamp: f64,
    /// The run of the trial that reported it (absent in files written before runs were logged).
    pub run: Option<u32>,
    /// Every other top-level key with a number value (`time_total_s`, `train_loss`, ...), in the
    /// line's order: the keys the learning curves can plot besides the metric.
    pub numbers: Vec<(String, f64)>,
    /// A `superseded.json` line: why it stopped counting (rolled back, replaced by an exploit).
    pub superseded: Option<String>,
}

/// Keys of a result line that are not curves of their own.
const NOT_CURVES: [&str; 3] = ["training_iteration", "timestamp", "run"];

impl ResultLine {
    pub fn parse(line: &str, metric: &str) -> Result<ResultLine, String> {
        // Most lines carry the metric at the top level: read the numbers and skip the rest (a
        // result line often repeats the whole config) without building a tree.
        let mut de = serde_json::Deserializer::from_str(line);
        let fast = serde::de::DeserializeSeed::deserialize(FastLine { metric }, &mut de)
            .and_then(|p| de.end().map(|()| p));
        match fast {
            Ok(p) if p.iteration.is_some() && (p.value.is_some() || !metric.contains('.')) => {
                Ok(ResultLine {
                    iteration: p.iteration.unwrap_or(0.0).max(0.0) as u64,
                    value: p.value.unwrap_or(f64::NAN),
                    timestamp: p.timestamp.unwrap_or(f64::NAN),
                    run: p.run.and_then(whole),
                    numbers: p.numbers,
                    superseded: p.superseded,
                })
            }
            // A dotted metric inside a nested object, or a line without training_iteration:
            // the general reading below finds it or says what is wrong.
            _ => Self::parse_tree(line, metric),
        }
    }

    fn parse_tree(line: &str, metric: &str) -> Result<ResultLine, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let object = value.as_object().ok_or("not a JSON object")?;
        let number = |key: &str| dotted(object, key).and_then(Value::as_f64);
        Ok(ResultLine {
            iteration: number("training_iteration")
                .ok_or("no training_iteration")?
                .max(0.0) as u64,
            value: number(metric).unwrap_or(f64::NAN),
            timestamp: number("timestamp").unwrap_or(f64::NAN),
            run: number("run").and_then(whole),
            numbers: object
                .iter()
                .filter(|(k, _)| *k != metric && !NOT_CURVES.contains(&k.as_str()))
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect(),
            superseded: object
                .get("superseded")
                .and_then(|s| s.get("reason"))
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }
}

/// A run number written as a JSON number.
fn whole(x: f64) -> Option<u32> {
    (x.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&x)).then_some(x as u32)
}

/// What [`ResultLine::parse`]'s fast path found in a line.
#[derive(Default)]
struct FastFields {
    iteration: Option<f64>,
    value: Option<f64>,
    timestamp: Option<f64>,
    run: Option<f64>,
    numbers: Vec<(String, f64)>,
    superseded: Option<String>,
}

/// Reads a result line's object: the numbers of its top-level keys, `superseded.reason`, and
/// nothing of any other value (skipped unparsed).
struct FastLine<'m> {
    metric: &'m str,
}

enum FastKey {
    Iteration,
    Metric,
    Timestamp,
    Run,
    Superseded,
    Other(String),
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
            "timestamp" => FastKey::Timestamp,
            "run" => FastKey::Run,
            "superseded" => FastKey::Superseded,
            other => FastKey::Other(other.to_string()),
        })
    }
}

/// A JSON value read as a number if it is one; anything else (a string, an object, `true`) is
/// skipped without building it.
struct NumberOrSkip;

impl<'de> serde::de::DeserializeSeed<'de> for NumberOrSkip {
    type Value = Option<f64>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NumberOrSkip {
    type Value = Option<f64>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_f64<E>(self, v: f64) -> Result<Option<f64>, E> {
        Ok(Some(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Option<f64>, E> {
        Ok(Some(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Option<f64>, E> {
        Ok(Some(v as f64))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<f64>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<f64>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<f64>, E> {
        Ok(None)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<f64>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<f64>, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(None)
    }
}

/// `superseded.json`'s `superseded` object, as far as it is shown.
#[derive(Deserialize)]
struct SupersededInfo {
    #[serde(default)]
    reason: String,
}

impl<'de> serde::de::DeserializeSeed<'de> for FastLine<'_> {
    type Value = FastFields;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<FastFields, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FastLine<'_> {
    type Value = FastFields;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FastFields, A::Error> {
        let mut out = FastFields::default();
        while let Some(key) = map.next_key_seed(FastKeySeed(self.metric))? {
            // A number, or anything else (null, a string) that is not one.
            let number = || NumberOrSkip;
            match key {
                FastKey::Iteration => out.iteration = map.next_value_seed(number())?,
                FastKey::Metric => out.value = map.next_value_seed(number())?,
                FastKey::Timestamp => out.timestamp = map.next_value_seed(number())?,
                FastKey::Run => out.run = map.next_value_seed(number())?,
                FastKey::Superseded => {
                    out.superseded = map
                        .next_value::<Option<SupersededInfo>>()?
                        .map(|s| s.reason);
                }
                FastKey::Other(name) => {
                    if let Some(x) = map.next_value_seed(number())? {
                        out.numbers.push((name, x));
                    }
                }
            }
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
    /// Where the run was placed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
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
    placement: Option<PlacementField>,
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
            placement: raw.placement.and_then(PlacementField::into_placement),
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
        // A typed placement, and (LEGACY) the text form of older files.
        let typed = EventLine::parse(
            r#"{"time":1.0,"trial":"00002","event":"placement","run":2,"placement":{"executor":"local","queued":false,"queue_reason":null,"job_id":null,"step_id":null,"nodes":[{"node":"local","cpus":2,"gpus":[0,1],"gpu_count":2}],"label":"local cpu=2 gpu=0,1"}}"#,
        )?;
        let p = typed.placement.ok_or("no placement")?;
        assert_eq!(
            (p.executor, p.nodes[0].gpus.clone()),
            (ExecutorKind::Local, vec![0, 1])
        );
        let old = EventLine::parse(
            r#"{"time":1.0,"trial":"00002","event":"placement","run":2,"placement":"n1 cpu=2 gpus=1 + n2 cpu=2 gpus=1 workers=2"}"#,
        )?;
        let p = old.placement.ok_or("no placement")?;
        assert_eq!(p.executor, ExecutorKind::SlurmStep);
        let nodes: Vec<(&str, u32)> = p
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.gpu_count))
            .collect();
        assert_eq!(nodes, [("n1", 1), ("n2", 1)]);
        let queued = legacy::placement("job 12 PENDING (Resources)");
        assert!(queued.queued);
        assert_eq!(queued.job_id.as_deref(), Some("12"));
        assert_eq!(queued.queue_reason.as_deref(), Some("Resources"));
        let running = legacy::placement("job 12 n3 cpu=2 gpus=1");
        assert!(!running.queued);
        assert_eq!(running.nodes[0].node, "n3");
        let local = legacy::placement("local cpu=1 gpu=0,3");
        assert_eq!(local.nodes[0].gpus, [0, 3]);
        assert_eq!(
            legacy::placement("simulated lcbench").executor,
            ExecutorKind::Simulated
        );
        let l = LineageLine::parse(
            r#"{"time":1.0,"target":"trial_00002","donor":"trial_00001","donor_iteration":1,"target_iteration":1,"old_config":{"lr":2.0},"new_config":{"lr":7.0},"change":"lr=7"}"#,
        )?;
        assert_eq!((l.target, l.donor), (2, 1));
        let p = ResultLine::parse(
            r#"{"eval_loss":1.5,"training_iteration":3,"time_total_s":0.6,"timestamp":17,"trial_id":"00001","done":false,"train_loss":2,"config":{"lr":0.1},"run":1}"#,
            "eval_loss",
        )?;
        assert_eq!((p.iteration, p.value, p.run), (3, 1.5, Some(1)));
        // Every other top-level number is a curve of its own; strings, booleans and the
        // config are not.
        assert_eq!(
            p.numbers,
            [
                ("time_total_s".to_string(), 0.6),
                ("train_loss".to_string(), 2.0)
            ]
        );
        assert!(ResultLine::parse("[1]", "x").is_err());
        assert!(ResultLine::parse(r#"{"loss":1}"#, "loss").is_err());
        assert!(ResultLine::parse(r#"{"training_iteration":1} x"#, "loss").is_err());
        // A metric nested in an object, named by its dotted path; a missing one is NaN.
        let nested = ResultLine::parse(
            r#"{"eval":{"loss":0.25},"training_iteration":2,"cfg":{"training_iteration":9},"acc":0.5}"#,
            "eval.loss",
        )?;
        assert_eq!((nested.iteration, nested.value), (2, 0.25));
        assert_eq!(nested.numbers, [("acc".to_string(), 0.5)]);
        let missing = ResultLine::parse(r#"{"training_iteration":2,"loss":null}"#, "loss")?;
        assert!(missing.value.is_nan() && missing.timestamp.is_nan());
        assert_eq!(missing.run, None);
        // A superseded.json line says why it stopped counting.
        let gone = ResultLine::parse(
            r#"{"loss":0.7,"training_iteration":3,"run":1,"superseded":{"reason":"rolled back after a failure","time":5.0}}"#,
            "loss",
        )?;
        assert_eq!(
            gone.superseded.as_deref(),
            Some("rolled back after a failure")
        );
        Ok(())
    }

    #[test]
    fn state_tolerates_missing_and_unknown_keys() -> Result<(), serde_json::Error> {
        let s = StateFile::parse(
            r#"{"format":2,"name":"x","metric":"m","mode":"max","new_key":1,"trials":[{"id":3,"config":{"a":{"b":1}},"status":"RUNNING","best":[0.5,2]}]}"#,
        )?;
        assert_eq!(s.mode, Mode::Max);
        assert_eq!(s.trials[0].best.map(BestField::pair), Some((0.5, 2)));
        assert_eq!(dotted(&s.trials[0].config, "a.b"), Some(&Value::from(1)));
        // Format 3: best as an object, the placement typed in the trial, the silent flag.
        let s = StateFile::parse(
            r#"{"format":3,"name":"x","metric":"m","trials":[{"id":0,"status":"RUNNING","best":{"value":0.25,"iteration":4},"placement":{"executor":"slurm_job","queued":true,"queue_reason":"Priority","job_id":"77","nodes":[],"label":"job 77 queued"},"silent":true,"last_report_at":12.5,"runs":2}]}"#,
        )?;
        let t = &s.trials[0];
        assert_eq!(t.best.map(BestField::pair), Some((0.25, 4)));
        assert!(t.silent);
        let p = t.placement.clone().and_then(PlacementField::into_placement);
        assert_eq!(
            p.map(|p| (p.executor, p.queued)),
            Some((ExecutorKind::SlurmJob, true))
        );
        // A placement this rtune cannot read is no placement, not an unreadable state.
        let s = StateFile::parse(
            r#"{"format":3,"trials":[{"id":0,"placement":{"executor":"kubernetes","label":"pod x"}}]}"#,
        )?;
        let p = s.trials[0].placement.clone();
        assert_eq!(p.and_then(PlacementField::into_placement), None);
        Ok(())
    }

    #[test]
    fn the_space_comes_from_the_domains() -> Result<(), SpaceFileError> {
        let space = read_space(
            r#"
name = "x"
[space]
lr = { loguniform = [1e-5, 1e-2] }
max_dropout = { uniform = [0.0, 0.5] }
weight_decay = { uniform = [0.0001, 0.1] }
bs = { choice = [1, 2] }
layers = { randint = [1, 5] }
units = { lograndint = [16, 1025] }
epochs = 5
[space.opt]
momentum = { quniform = [0.8, 0.99, 0.01] }
"#,
            "experiment.toml",
        )?;
        let scales: Vec<(&str, &ParamScale)> =
            space.iter().map(|p| (p.name.as_str(), &p.scale)).collect();
        assert_eq!(
            scales,
            [
                (
                    "lr",
                    &ParamScale::Log {
                        low: 1e-5,
                        high: 1e-2,
                        integer: false
                    }
                ),
                (
                    "max_dropout",
                    &ParamScale::Linear {
                        low: 0.0,
                        high: 0.5,
                        integer: false
                    }
                ),
                (
                    "weight_decay",
                    &ParamScale::Linear {
                        low: 0.0001,
                        high: 0.1,
                        integer: false
                    }
                ),
                (
                    "bs",
                    &ParamScale::Categorical {
                        values: vec![Value::from(1), Value::from(2)]
                    }
                ),
                (
                    "layers",
                    &ParamScale::Linear {
                        low: 1.0,
                        high: 4.0,
                        integer: true
                    }
                ),
                (
                    "units",
                    &ParamScale::Log {
                        low: 16.0,
                        high: 1024.0,
                        integer: true
                    }
                ),
                (
                    "opt.momentum",
                    &ParamScale::Linear {
                        low: 0.8,
                        high: 0.99,
                        integer: false
                    }
                ),
            ]
        );
        let json = serde_json::to_value(&space[0]).map_err(|e| SpaceFileError::Toml {
            path: e.to_string(),
            message: String::new(),
        })?;
        assert_eq!(
            json,
            serde_json::json!({"name": "lr", "distribution": "loguniform", "scale": "log", "low": 1e-5, "high": 1e-2, "integer": false})
        );
        // Bad input names the file and the place.
        let bad = read_space(
            "[space]\nlr = { logunifrom = [1, 2] }\n",
            "dir/experiment.toml",
        );
        let message = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("dir/experiment.toml") && message.contains("space.lr"),
            "{message}"
        );
        assert!(read_space("not toml [", "f").is_err());
        assert_eq!(read_space("name = \"x\"\n", "f")?.len(), 0);
        Ok(())
    }
}

//! Reports the run loop refuses before anything is recorded or moved (docs/protocol.md,
//! "Refused reports").
//!
//! The protocol server checks a request's form and token; these checks need the trial's state
//! and files: a report after the trial was told to stop or pause, past the scheduler's `max_t`, with
//! a scheduler metric that is not a number, or with a checkpoint directory that is not the trial's
//! to hand over. A refused report gets `ok: false` with the message, and nothing of it reaches the
//! tuner or the trial's files.

use std::path::{Path, PathBuf};

use rtune_core::Budget;
use rtune_core::tuner::{Ending, Trial};
use serde_json::{Map, Value};

use crate::storage::TrialFiles;

/// The keys rtune adds to every result itself (docs/file-formats.md).
const AUTOMATIC_KEYS: [&str; 5] = [
    "training_iteration",
    "time_total_s",
    "time_this_iter_s",
    "timestamp",
    "trial_id",
];

/// What the run loop checks a report against.
pub struct Rules<'a> {
    /// The experiment's metric.
    pub metric: &'a str,
    /// The result key the scheduler measures progress by, if it reads one.
    pub time_attr: Option<&'a str>,
    /// The scheduler's fixed end of a trial, if any.
    pub budget: Option<&'a Budget>,
}

/// Whether `trial` may report `metrics` now.
pub fn check_report(
    trial: &Trial,
    metrics: &Map<String, Value>,
    rules: &Rules<'_>,
) -> Result<(), String> {
    let Rules {
        metric,
        time_attr,
        budget,
    } = *rules;
    let name = trial.id.name();
    if let Some(ending) = trial.ending {
        let (told, why) = match ending {
            Ending::Stop => ("stop", "the trial is finished"),
            Ending::Pause => ("pause", "it will restart from its latest checkpoint"),
            Ending::Interrupt => (
                "stop",
                "the experiment was interrupted; `rtune resume` continues it from its latest checkpoint",
            ),
        };
        return Err(format!(
            "{name} was told to {told} at training_iteration {}; this report is not recorded \
             ({why}): the process should exit now",
            trial.iteration
        ));
    }
    number_or_null(
        metrics,
        metric,
        "the scheduler metric (`metric` in the experiment file)",
    )?;
    if let Some(attr) = time_attr
        && !AUTOMATIC_KEYS.contains(&attr)
        && number_or_null(
            metrics,
            attr,
            "the scheduler's `time_attr` (its progress measure)",
        )?
        .is_none()
    {
        return Err(format!(
            "the report has no number `{attr}`, the scheduler's time_attr (how it measures a \
             trial's progress); it is not recorded. Report `{attr}` in every result, or set \
             scheduler.time_attr to a key the trial reports (or to training_iteration, which \
             rtune counts)"
        ));
    }
    if let Some(budget) = budget {
        let reached = if budget.time_attr == "training_iteration" {
            Some((trial.iteration + 1) as f64)
        } else {
            number_or_null(
                metrics,
                &budget.time_attr,
                "the scheduler's `time_attr` (its progress measure)",
            )?
        };
        if let Some(value) = reached
            && value > budget.max_t
        {
            return Err(format!(
                "{name}'s report at {} = {value} is past the scheduler's max_t = {}, where the \
                 trial's budget ends; it is not recorded: the process should exit (the trial \
                 should have stopped at max_t; check that it counts {} as the experiment does)",
                budget.time_attr, budget.max_t, budget.time_attr
            ));
        }
    }
    Ok(())
}

/// The value of `key` as a number, `None` when missing or null, an error for anything else.
fn number_or_null(
    metrics: &Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<f64>, String> {
    match metrics.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(format!(
            "metric `{key}` is {other} ({}), but it is {what} and must be a number (or null \
             when there is none); the report is not recorded. Other keys may hold any JSON \
             value and are kept in result.json",
            kind(other)
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether the directory `src`, reported as a checkpoint, may be moved into the trial's
/// `checkpoints/`: it must exist, be a directory, and lie inside the trial's scratch directory
/// or inside one of `roots` (`trial.checkpoint_roots`), and never be, contain or lie in the
/// experiment's files outside the trial's scratch directory (another trial's directory, the
/// trial's own `checkpoints/`, ...). Returns the path to move.
pub fn confine_checkpoint(
    src: &Path,
    files: &TrialFiles,
    experiment_dir: &Path,
    roots: &[PathBuf],
) -> Result<PathBuf, String> {
    let refuse = |why: String| {
        Err(format!(
            "checkpoint {}: {why}; nothing was moved and the report is not recorded. Report a \
             fresh directory inside RTUNE_SCRATCH_DIR (the clients' new_checkpoint_dir() makes \
             one){}",
            src.display(),
            if roots.is_empty() {
                ""
            } else {
                " or inside trial.checkpoint_roots"
            }
        ))
    };
    let meta = match std::fs::metadata(src) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refuse("does not exist (was it written completely before the report?)".into());
        }
        Err(e) => return refuse(format!("cannot be read: {e}")),
    };
    if !meta.is_dir() {
        return refuse("is not a directory: report the directory that holds the checkpoint".into());
    }
    let real = match src.canonicalize() {
        Ok(real) => real,
        Err(e) => return refuse(format!("cannot be resolved: {e}")),
    };
    let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let strictly_inside = |path: &Path, dir: &Path| path != dir && path.starts_with(dir);
    let scratch = canonical(&files.scratch_dir());
    let experiment = canonical(experiment_dir);
    let trial_dir = canonical(files.dir());
    if strictly_inside(&real, &scratch) {
        return Ok(src.to_path_buf());
    }
    if experiment.starts_with(&real) {
        return refuse("is or contains the experiment directory".into());
    }
    if real.starts_with(&experiment) {
        let why = if real == scratch {
            "is RTUNE_SCRATCH_DIR itself, not a directory inside it".to_string()
        } else if real.starts_with(canonical(&files.checkpoints_dir())) {
            "is inside the trial's own checkpoints/, which rtune manages".to_string()
        } else if trial_dir.starts_with(&real) || real.starts_with(&trial_dir) {
            "is the trial's own directory or one of rtune's files in it".to_string()
        } else {
            let other = real
                .strip_prefix(&experiment)
                .ok()
                .and_then(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            if other.starts_with("trial_") {
                format!("is inside another trial's directory ({other})")
            } else {
                format!("is inside the experiment directory ({other}), outside the trial's scratch")
            }
        };
        return refuse(why);
    }
    if roots
        .iter()
        .map(|root| canonical(root))
        .any(|root| strictly_inside(&real, &root))
    {
        return Ok(src.to_path_buf());
    }
    refuse(format!(
        "is outside the trial's scratch directory {}{}",
        scratch.display(),
        if roots.is_empty() {
            String::new()
        } else {
            format!(
                " and outside every trial.checkpoint_roots ({})",
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ))
}

//! After a resume's replay: each trial's `result.json` says what the journal says counts.
//!
//! A head writes a result line right after journaling the report, and cuts lines apart right
//! after journaling the rollback or exploit; a head killed in between left the files behind the
//! journal, and a power loss (appends are flushed about once a second) can leave them ahead of
//! it. The journal is the truth: lines it does not count go to `superseded.json`, and results of
//! the journal's tail that the file lacks are written from the replay.

use std::collections::BTreeSet;

use rtune_core::tuner::{Reply, Trial, Truncation, Tuner};
use rtune_core::{Config, TrialId, TrialStatus};
use serde_json::Value;

use crate::storage::{ExperimentDir, StorageError};

/// The trials a journal tail may have changed files of: every trial when it holds an input that
/// touches many (a resume, the end of an experiment), else those it names.
#[derive(Debug, Default)]
pub struct Touched {
    pub all: bool,
    pub trials: BTreeSet<TrialId>,
}

/// Bring the result files of the touched trials in line with the core. `tail` holds the replies
/// to the tail's reports, in order, with their run numbers.
pub fn reconcile(
    dir: &ExperimentDir,
    tuner: &Tuner,
    touched: &Touched,
    tail: &[(Reply, u32)],
    now: f64,
) -> Result<(), StorageError> {
    for trial in tuner.trials() {
        if !touched.all && !touched.trials.contains(&trial.id) {
            continue;
        }
        reconcile_trial(dir, trial, tail, now)?;
    }
    Ok(())
}

fn reconcile_trial(
    dir: &ExperimentDir,
    trial: &Trial,
    tail: &[(Reply, u32)],
    now: f64,
) -> Result<(), StorageError> {
    let files = dir.trial(trial.id)?;
    let on_disk: Vec<u64> = std::fs::read_to_string(files.result_path())
        .map(|text| {
            text.lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter_map(|v| v.get("training_iteration").and_then(Value::as_u64))
                .collect()
        })
        .unwrap_or_default();
    let counted: Vec<u64> = trial.curve.iter().map(|p| p.iteration).collect();
    let agreeing = on_disk
        .iter()
        .zip(&counted)
        .take_while(|(a, b)| a == b)
        .count();
    if agreeing < on_disk.len() {
        let through = agreeing.checked_sub(1).map_or(0, |i| counted[i]);
        dir.truncate_results(trial.id, through, Truncation::RolledBack, now)?;
    }
    for &iteration in &counted[agreeing..] {
        // The latest reply for that iteration (an earlier one may have been rolled back).
        let Some((reply, run)) = tail
            .iter()
            .rev()
            .find(|(r, _)| r.result.trial == trial.id && r.result.iteration() == iteration)
        else {
            tracing::warn!(
                "{}: its result at iteration {iteration} counts but is in neither result.json \
                 nor the journal's tail",
                trial.id.name()
            );
            break;
        };
        dir.append_result(
            &reply.result,
            &config_at(trial, iteration),
            reply.done,
            *run,
        )?;
    }
    dir.repair_progress(trial.id)?;
    if trial.status == TrialStatus::Terminated {
        dir.mark_last_done(trial.id)?;
    }
    Ok(())
}

/// The config a trial ran with when it reported `iteration`: its policy's step in force then.
fn config_at(trial: &Trial, iteration: u64) -> Config {
    // An empty policy (never exploited) finds nothing: the config, as policy_steps would say.
    trial
        .policy
        .iter()
        .rev()
        .find(|step| step.from_iteration < iteration)
        .map_or_else(|| trial.config.clone(), |step| step.config.clone())
}

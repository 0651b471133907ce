//! `experiment_state.json`: what readers see of an experiment (`rtune status`, `rtune best`,
//! `rtune list`, the dashboard, Python's `ResultGrid`), also while it runs.
//!
//! It is a projection of the core's state with its own versioned schema (docs/file-formats.md),
//! not the core's internal [`Trial`]: the core may change without changing this file, and the
//! file is never read back by a head (the journal is the truth).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rtune_core::scheduler::PolicyStep;
use rtune_core::tuner::{EndReason, Trial, Tuner};
use rtune_core::{CheckpointId, Config, Mode, Placement, TrialId, TrialStatus};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::storage::{STATE_FILE, StorageError};

/// The version of `experiment_state.json`'s layout (3: its own schema, typed placements;
/// 2: the core's trials, placements as text).
pub const STATE_FORMAT: u32 = 3;

/// Whether an experiment runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    /// Every trial finished (or the experiment ended early for good: see `ended`).
    Finished,
    /// Stopped before the end; `rtune resume` continues it.
    Interrupted,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Interrupted => "interrupted",
        })
    }
}

/// The snapshot of an experiment that readers use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentState {
    pub format: u32,
    pub name: String,
    pub status: RunStatus,
    pub metric: String,
    pub mode: Mode,
    pub scheduler: String,
    pub searcher: String,
    /// Dotted names of the searched parameters: the table's parameter columns.
    pub parameters: Vec<String>,
    /// How many trials the searcher will create, when known.
    pub total_trials: Option<usize>,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub finished_at: Option<f64>,
    /// Why the experiment ended early for good, if it did (a budget, fail-fast, a wrong metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<EndReason>,
    /// How many trials have each status.
    #[serde(default)]
    pub counts: BTreeMap<TrialStatus, usize>,
    pub trials: Vec<TrialRecord>,
    /// The process running the experiment, and when it last wrote this file: a reader can tell
    /// a live experiment from one whose head died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadInfo>,
}

/// One trial as readers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub id: TrialId,
    /// `trial_00003`.
    #[serde(default)]
    pub name: String,
    pub status: TrialStatus,
    pub config: Config,
    /// Suffix shown after the name, e.g. `@perturbed[lr=2.4e-05]`.
    #[serde(default)]
    pub tag: String,
    pub iteration: u64,
    pub time_total_s: f64,
    /// Its latest result that counts (every reported key plus the automatic ones).
    #[serde(default, deserialize_with = "last_result_any")]
    pub last_result: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "best_any")]
    pub best: Option<BestValue>,
    /// Iterations at which it has a checkpoint.
    #[serde(default, deserialize_with = "checkpoints_any")]
    pub checkpoints: Vec<u64>,
    /// What its next run starts from.
    #[serde(default)]
    pub restore: Option<CheckpointId>,
    pub runs: u32,
    pub failures: u32,
    #[serde(default)]
    pub error: Option<String>,
    /// Its config by iteration (PBT's policy).
    #[serde(default)]
    pub policy: Vec<PolicyStep>,
    /// Where its latest run runs or ran.
    #[serde(default)]
    pub placement: Option<Placement>,
    /// When its current run's processes started.
    #[serde(default)]
    pub started_at: Option<f64>,
    /// When its current run last reported (or started).
    #[serde(default)]
    pub last_report_at: Option<f64>,
    /// It has reported nothing for much longer than its peers (see docs/file-formats.md).
    #[serde(default)]
    pub silent: bool,
}

/// A trial's best value of the metric and the iteration it was reached at.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestValue {
    pub value: f64,
    pub iteration: u64,
}

impl TrialRecord {
    pub fn from_trial(trial: &Trial, silent: bool) -> TrialRecord {
        TrialRecord {
            id: trial.id,
            name: trial.id.name(),
            status: trial.status,
            config: trial.config.clone(),
            tag: trial.tag.clone(),
            iteration: trial.iteration,
            time_total_s: trial.time_total_s,
            last_result: trial
                .last_result
                .as_ref()
                .and_then(|r| serde_json::from_str(r.metrics.get()).ok()),
            best: trial
                .best
                .map(|(value, iteration)| BestValue { value, iteration }),
            checkpoints: trial.checkpoints.keys().copied().collect(),
            restore: trial.restore,
            runs: trial.runs,
            failures: trial.failures,
            error: trial.error.clone(),
            policy: trial.policy_steps().into_owned(),
            placement: trial.placement.as_deref().cloned(),
            started_at: trial.run_started_at,
            last_report_at: trial.last_report_at,
            silent,
        }
    }

    /// The trial's name with its tag: `trial_00003@perturbed[lr=2.4e-05]`.
    pub fn display_name(&self) -> String {
        format!("{}{}", self.id.name(), self.tag)
    }

    /// A numeric key of its latest result.
    pub fn last(&self, key: &str) -> Option<f64> {
        self.last_result.as_ref()?.get(key)?.as_f64()
    }

    /// Whether its run waits in a queue (a SLURM job not started yet): shown as PENDING.
    pub fn queued(&self) -> bool {
        self.status == TrialStatus::Running && self.placement.as_ref().is_some_and(|p| p.queued)
    }
}

/// Who runs an experiment: `rtune status` says "not running" when this process is gone or its
/// heartbeat is old.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadInfo {
    pub pid: u32,
    pub host: String,
    /// Unix time of the latest write of the snapshot; rewritten at least every
    /// [`HEARTBEAT_S`] seconds while the experiment runs.
    pub heartbeat: f64,
}

/// How often a running head rewrites the snapshot even when nothing changed.
pub const HEARTBEAT_S: f64 = 10.0;

/// What the projection takes from the experiment file rather than from the core.
#[derive(Clone, Debug)]
pub struct StateMeta {
    pub name: String,
    pub metric: String,
    pub mode: Mode,
    pub parameters: Vec<String>,
}

/// What a projection says besides its trials.
pub struct Projection<'a> {
    pub meta: &'a StateMeta,
    pub tuner: &'a Tuner,
    pub status: RunStatus,
    pub now: f64,
    pub head: Option<HeadInfo>,
    pub finished_at: Option<f64>,
}

impl Projection<'_> {
    fn counts(&self) -> BTreeMap<TrialStatus, usize> {
        let mut counts = BTreeMap::new();
        for trial in self.tuner.trials() {
            *counts.entry(trial.status).or_insert(0) += 1;
        }
        counts
    }

    /// The state with the trials `keep` selects (all: the file's content; a few: what a live
    /// console shows), counts and best over all of them.
    pub fn state(&self, keep: impl Fn(&Trial) -> bool) -> ExperimentState {
        let silent = self.tuner.silent_trials(self.now);
        ExperimentState {
            format: STATE_FORMAT,
            name: self.meta.name.clone(),
            status: self.status,
            metric: self.meta.metric.clone(),
            mode: self.meta.mode,
            scheduler: self.tuner.scheduler_name().to_string(),
            searcher: self.tuner.searcher_name().to_string(),
            parameters: self.meta.parameters.clone(),
            total_trials: self.tuner.total_trials(),
            started_at: self.tuner.started_at().unwrap_or(self.now),
            finished_at: self.finished_at,
            ended: self.tuner.ended().cloned(),
            counts: self.counts(),
            trials: self
                .tuner
                .trials()
                .iter()
                .filter(|t| keep(t))
                .map(|t| TrialRecord::from_trial(t, silent.contains(&t.id)))
                .collect(),
            head: self.head.clone(),
        }
    }

    /// The state file's JSON written straight from the core (the trials are not copied), as
    /// [`Projection::state`] with every trial serializes.
    pub fn write(&self, out: &mut dyn std::io::Write) -> serde_json::Result<()> {
        let silent = self.tuner.silent_trials(self.now);
        let trials = TrialsRef {
            trials: self.tuner.trials(),
            silent: &silent,
        };
        let state = StateRef {
            format: STATE_FORMAT,
            name: &self.meta.name,
            status: self.status,
            metric: &self.meta.metric,
            mode: self.meta.mode,
            scheduler: self.tuner.scheduler_name(),
            searcher: self.tuner.searcher_name(),
            parameters: &self.meta.parameters,
            total_trials: self.tuner.total_trials(),
            started_at: self.tuner.started_at().unwrap_or(self.now),
            finished_at: self.finished_at,
            ended: self.tuner.ended(),
            counts: self.counts(),
            trials,
            head: self.head.as_ref(),
        };
        serde_json::to_writer(out, &state)
    }
}

/// Serializes exactly as [`ExperimentState`], borrowing from the core.
#[derive(Serialize)]
struct StateRef<'a> {
    format: u32,
    name: &'a str,
    status: RunStatus,
    metric: &'a str,
    mode: Mode,
    scheduler: &'a str,
    searcher: &'a str,
    parameters: &'a [String],
    total_trials: Option<usize>,
    started_at: f64,
    finished_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<&'a EndReason>,
    counts: BTreeMap<TrialStatus, usize>,
    trials: TrialsRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<&'a HeadInfo>,
}

struct TrialsRef<'a> {
    trials: &'a [Trial],
    silent: &'a [TrialId],
}

impl Serialize for TrialsRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.trials
                .iter()
                .map(|t| TrialRecordRef::new(t, self.silent.contains(&t.id))),
        )
    }
}

/// Serializes exactly as [`TrialRecord`], borrowing from the core's trial.
#[derive(Serialize)]
struct TrialRecordRef<'a> {
    id: TrialId,
    name: String,
    status: TrialStatus,
    config: &'a Config,
    tag: &'a str,
    iteration: u64,
    time_total_s: f64,
    last_result: Option<&'a serde_json::value::RawValue>,
    best: Option<BestValue>,
    #[serde(serialize_with = "keys_of")]
    checkpoints: &'a BTreeMap<u64, f64>,
    restore: Option<CheckpointId>,
    runs: u32,
    failures: u32,
    error: Option<&'a str>,
    #[serde(serialize_with = "policy_of")]
    policy: &'a Trial,
    placement: Option<&'a Placement>,
    started_at: Option<f64>,
    last_report_at: Option<f64>,
    silent: bool,
}

impl<'a> TrialRecordRef<'a> {
    fn new(trial: &'a Trial, silent: bool) -> Self {
        TrialRecordRef {
            id: trial.id,
            name: trial.id.name(),
            status: trial.status,
            config: &trial.config,
            tag: &trial.tag,
            iteration: trial.iteration,
            time_total_s: trial.time_total_s,
            last_result: trial.last_result.as_ref().map(|r| &*r.metrics),
            best: trial
                .best
                .map(|(value, iteration)| BestValue { value, iteration }),
            checkpoints: &trial.checkpoints,
            restore: trial.restore,
            runs: trial.runs,
            failures: trial.failures,
            error: trial.error.as_deref(),
            policy: trial,
            placement: trial.placement.as_deref(),
            started_at: trial.run_started_at,
            last_report_at: trial.last_report_at,
            silent,
        }
    }
}

/// A trial's policy as [`Trial::policy_steps`] gives it, without copying the config of a trial
/// that was never exploited (this runs for every trial at every state write).
fn policy_of<S: serde::Serializer>(trial: &&Trial, serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct FirstStep<'a> {
        from_iteration: u64,
        config: &'a rtune_core::Config,
    }
    if trial.policy.is_empty() {
        let first = FirstStep {
            from_iteration: 0,
            config: &trial.config,
        };
        serializer.collect_seq([first])
    } else {
        serializer.collect_seq(&trial.policy)
    }
}

fn keys_of<S: serde::Serializer>(
    map: &&BTreeMap<u64, f64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.keys())
}

impl ExperimentState {
    /// The projection of `tuner` at `now`, every trial in it.
    pub fn project(
        meta: &StateMeta,
        tuner: &Tuner,
        status: RunStatus,
        now: f64,
        head: Option<HeadInfo>,
        finished_at: Option<f64>,
    ) -> ExperimentState {
        Projection {
            meta,
            tuner,
            status,
            now,
            head,
            finished_at,
        }
        .state(|_| true)
    }

    /// Read `experiment_state.json` from an experiment directory (or the file itself). Reads
    /// format 2 (earlier releases) too.
    pub fn read(dir: &Path) -> Result<ExperimentState, StorageError> {
        let path = if dir.is_dir() {
            dir.join(STATE_FILE)
        } else {
            dir.to_path_buf()
        };
        let text = fs::read_to_string(&path).map_err(|source| StorageError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let mut state: ExperimentState =
            serde_json::from_str(&text).map_err(|e| StorageError::BadState {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if state.format < 3 {
            // Format 2 kept placements as text in a top-level map: show them as labels.
            if let Ok(Value::Object(old)) = serde_json::from_str::<Value>(&text)
                && let Some(Value::Object(placements)) = old.get("placements")
            {
                for trial in &mut state.trials {
                    if let Some(Value::String(label)) = placements.get(&trial.id.to_string()) {
                        trial.placement = Some(Placement::nowhere(
                            rtune_core::ExecutorKind::Local,
                            label.clone(),
                        ));
                    }
                }
            }
            for trial in &mut state.trials {
                trial.name = trial.id.name();
                *state.counts.entry(trial.status).or_insert(0) += 1;
            }
        }
        Ok(state)
    }

    /// For a `running` snapshot: why its head is not running any more, if it is not (the
    /// process is gone from this host, or the heartbeat is older than three periods).
    pub fn dead_head(&self, this_host: &str, now: f64) -> Option<String> {
        if self.status != RunStatus::Running {
            return None;
        }
        let head = self.head.as_ref()?;
        let age = now - head.heartbeat;
        let gone = head.host == this_host && !process_alive(head.pid);
        if gone || age > 3.0 * HEARTBEAT_S {
            Some(format!(
                "the experiment is NOT running: its head (pid {} on {}) {}; its last heartbeat \
                 was {:.0} s ago\nhint: continue it with `rtune resume <dir>`",
                head.pid,
                head.host,
                if gone { "is gone" } else { "stopped writing" },
                age.max(0.0)
            ))
        } else {
            None
        }
    }

    /// How many trials have `status`.
    pub fn count(&self, status: TrialStatus) -> usize {
        self.counts.get(&status).copied().unwrap_or(0)
    }

    /// The state file's path in an experiment directory.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }
}

/// Whether a process with this pid exists (signal 0 checks without sending anything).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `last_result` as format 3 writes it (the metrics) or as format 2 did (`{"metrics": ...}`).
fn last_result_any<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Map<String, Value>>, D::Error> {
    Ok(match Option::<Map<String, Value>>::deserialize(d)? {
        Some(mut map) if map.contains_key("has_checkpoint") && map.contains_key("metrics") => {
            match map.remove("metrics") {
                Some(Value::Object(metrics)) => Some(metrics),
                _ => None,
            }
        }
        other => other,
    })
}

/// `best` as `{"value", "iteration"}` (format 3) or `[value, iteration]` (format 2).
fn best_any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BestValue>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        New(BestValue),
        Old((f64, u64)),
    }
    Ok(Option::<Either>::deserialize(d)?.map(|e| match e {
        Either::New(best) => best,
        Either::Old((value, iteration)) => BestValue { value, iteration },
    }))
}

/// `checkpoints` as a list of iterations (format 3) or `{"iteration": time}` (format 2).
fn checkpoints_any<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        New(Vec<u64>),
        Old(BTreeMap<u64, f64>),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        Some(Either::New(list)) => list,
        Some(Either::Old(map)) => map.into_keys().collect(),
        None => Vec::new(),
    })
}

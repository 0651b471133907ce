//! The files an experiment leaves on disk (docs/file-formats.md is the user-facing description).
//!
//! ```text
//! <storage>/<name>/
//!   experiment.toml          the experiment file as run (overrides applied)
//!   experiment_state.json    the state snapshot: every trial, written atomically
//!   decisions.jsonl          every scheduler decision and searcher proposal, with its reason
//!   events.jsonl             status changes, placements of runs and warnings
//!   lineage.jsonl            PBT exploits (only when there are any)
//!   trial_00000/
//!     params.json  result.json  progress.csv  stdout.log  stderr.log  error.txt  policy.json
//!     checkpoints/checkpoint_000003/ ...
//! ```
//!
//! Logs are appended line by line, so a crash loses at most the line being written; snapshots
//! (`experiment_state.json`, `params.json`, `policy.json`) are written to a temporary file and
//! renamed over the old one, so they are never half-written.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rtune_core::scheduler::PolicyStep;
use rtune_core::tuner::{HistoryEntry, Trial};
use rtune_core::{CheckpointId, Config, Decision, Mode, TrialId, TrialResult};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// File names inside an experiment directory.
pub const EXPERIMENT_FILE: &str = "experiment.toml";
pub const STATE_FILE: &str = "experiment_state.json";
pub const DECISIONS_FILE: &str = "decisions.jsonl";
pub const EVENTS_FILE: &str = "events.jsonl";
pub const LINEAGE_FILE: &str = "lineage.jsonl";
/// Inside a trial directory: the trial's config by iteration.
pub const POLICY_FILE: &str = "policy.json";

/// The version of `experiment_state.json`'s layout (2: `head`, INTERRUPTED, `policy`).
pub const STATE_FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} is not an rtune experiment state ({message})\nhint: `rtune status` and `rtune best` take an experiment directory, e.g. ~/rtune_results/<name>"
    )]
    BadState { path: PathBuf, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
    /// A write failed for lack of space: says how much was needed and how much is free.
    #[error(
        "cannot write {path}: {source} (needed {needed} more bytes; {free} bytes are free there)\nhint: free some space, then `rtune resume` the experiment"
    )]
    NoSpace {
        path: PathBuf,
        needed: usize,
        free: u64,
        source: io::Error,
    },
}

/// A write error, told as [`StorageError::NoSpace`] when the disk is full.
fn write_error(path: &Path, needed: usize, source: io::Error) -> StorageError {
    // tempfile wraps the OS error with the path, which keeps the kind but not the errno.
    if source.raw_os_error() == Some(libc::ENOSPC) || source.kind() == io::ErrorKind::StorageFull {
        return StorageError::NoSpace {
            path: path.to_path_buf(),
            needed,
            free: crate::journal::free_bytes(path).unwrap_or(0),
            source,
        };
    }
    io_error("write", path)(source)
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshot of an experiment that `rtune status` and `rtune best` read, also while it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentState {
    pub format: u32,
    pub name: String,
    /// `running`, `finished` or `interrupted`.
    pub status: String,
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
    pub trials: Vec<Trial>,
    /// Where each trial's latest run was placed (`local cpu=1 gpu=0`, a SLURM step, ...).
    #[serde(default)]
    pub placements: BTreeMap<String, String>,
    /// The process running the experiment, and when it last wrote this file: a reader can tell
    /// a live experiment from one whose head died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadInfo>,
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

impl ExperimentState {
    /// For a `running` snapshot: why its head is not running any more, if it is not (the
    /// process is gone from this host, or the heartbeat is older than three periods).
    pub fn dead_head(&self, this_host: &str, now: f64) -> Option<String> {
        if self.status != "running" {
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
}

/// Whether a process with this pid exists (signal 0 checks without sending anything).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks the pid.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl ExperimentState {
    /// Read `experiment_state.json` from an experiment directory (or the file itself).
    pub fn read(dir: &Path) -> Result<ExperimentState, StorageError> {
        let path = if dir.is_dir() {
            dir.join(STATE_FILE)
        } else {
            dir.to_path_buf()
        };
        let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
        serde_json::from_str(&text).map_err(|e| StorageError::BadState {
            path,
            message: e.to_string(),
        })
    }
}

/// An experiment's directory.
#[derive(Clone, Debug)]
pub struct ExperimentDir {
    path: PathBuf,
}

/// A file in an experiment directory that `rtune submit` made for a run yet to start: the run
/// (`ExperimentDir::create`) takes the directory and removes the file.
pub const RESERVED_MARK: &str = ".reserved-by-rtune-submit";

impl ExperimentDir {
    /// Creates `<storage>/<name>` (or `<name>-2`, ...) for a run that will start later, marked so
    /// that the first [`ExperimentDir::create`] with that name takes it. Returns its path.
    pub fn reserve(storage: &Path, name: &str) -> Result<PathBuf, StorageError> {
        fs::create_dir_all(storage).map_err(io_error("create", storage))?;
        let mut attempt = 1u32;
        loop {
            let candidate = if attempt == 1 {
                storage.join(name)
            } else {
                storage.join(format!("{name}-{attempt}"))
            };
            match fs::create_dir(&candidate) {
                Ok(()) => {
                    let mark = candidate.join(RESERVED_MARK);
                    fs::write(&mark, b"").map_err(io_error("write", &mark))?;
                    return Ok(candidate);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => attempt += 1,
                Err(e) => return Err(io_error("create", &candidate)(e)),
            }
        }
    }

    /// Create `<storage>/<name>`; when that exists already (an earlier run), `<name>-2`, `-3`, ...
    /// so nothing earlier is overwritten. Writes the experiment file as run.
    pub fn create(
        storage: &Path,
        name: &str,
        experiment_text: &str,
    ) -> Result<ExperimentDir, StorageError> {
        fs::create_dir_all(storage).map_err(io_error("create", storage))?;
        let mut attempt = 1u32;
        let path = loop {
            let candidate = if attempt == 1 {
                storage.join(name)
            } else {
                storage.join(format!("{name}-{attempt}"))
            };
            match fs::create_dir(&candidate) {
                Ok(()) => break candidate,
                // Reserved by `rtune submit` for this run (its job script and log are there):
                // the run that removes the mark takes it.
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && fs::remove_file(candidate.join(RESERVED_MARK)).is_ok() =>
                {
                    break candidate;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => attempt += 1,
                Err(e) => return Err(io_error("create", &candidate)(e)),
            }
        };
        let dir = ExperimentDir { path };
        write_atomic(&dir.path.join(EXPERIMENT_FILE), experiment_text.as_bytes())?;
        Ok(dir)
    }

    /// An existing experiment directory.
    pub fn open(path: &Path) -> ExperimentDir {
        ExperimentDir {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A trial's files; creates its directory if needed.
    pub fn trial(&self, id: TrialId) -> Result<TrialFiles, StorageError> {
        let dir = self.path.join(id.name());
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        Ok(TrialFiles { dir })
    }

    /// Append a decision, with the iteration of the trial it was made at, to decisions.jsonl.
    pub fn append_decision(
        &self,
        decision: &Decision,
        iteration: u64,
        now: f64,
    ) -> Result<(), StorageError> {
        let mut line = match serde_json::to_value(decision) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        line.insert("time".into(), json_f64(now));
        line.insert("training_iteration".into(), iteration.into());
        append_json_line(&self.path.join(DECISIONS_FILE), &Value::Object(line))
    }

    /// Append a searcher's proposal of a trial's config, with why, to decisions.jsonl
    /// (`"action": "propose"`).
    pub fn append_proposal(
        &self,
        trial: TrialId,
        searcher: &str,
        reason: &str,
        details: &Value,
        now: f64,
    ) -> Result<(), StorageError> {
        let line = serde_json::json!({
            "trial": trial,
            "action": "propose",
            "searcher": searcher,
            "reason": reason,
            "details": details,
            "time": json_f64(now),
            "training_iteration": 0,
        });
        append_json_line(&self.path.join(DECISIONS_FILE), &line)
    }

    pub fn append_event(&self, event: &Value) -> Result<(), StorageError> {
        append_json_line(&self.path.join(EVENTS_FILE), event)
    }

    pub fn append_lineage(&self, line: &Value) -> Result<(), StorageError> {
        append_json_line(&self.path.join(LINEAGE_FILE), line)
    }

    /// Write the state snapshot atomically.
    pub fn write_state(&self, state: &ExperimentState) -> Result<(), StorageError> {
        let path = self.path.join(STATE_FILE);
        let text = serde_json::to_vec(state).map_err(|e| StorageError::BadState {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &text)
    }
}

/// The files of one trial.
#[derive(Clone, Debug)]
pub struct TrialFiles {
    dir: PathBuf,
}

impl TrialFiles {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn params_path(&self) -> PathBuf {
        self.dir.join("params.json")
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }

    pub fn result_path(&self) -> PathBuf {
        self.dir.join("result.json")
    }

    pub fn progress_path(&self) -> PathBuf {
        self.dir.join("progress.csv")
    }

    /// Where a trial may write a checkpoint before reporting it. On the same file system as
    /// `checkpoints/`, so taking the checkpoint over is a rename.
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    pub fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// The trial's own checkpoint taken at `iteration`.
    pub fn checkpoint_dir(&self, iteration: u64) -> PathBuf {
        self.checkpoints_dir()
            .join(format!("checkpoint_{iteration:06}"))
    }

    /// The copy of a donor's checkpoint this trial restarts from after an exploit.
    pub fn exploit_dir(&self, donor: CheckpointId) -> PathBuf {
        self.checkpoints_dir().join(format!(
            "from_{}_{:06}",
            donor.trial.name(),
            donor.iteration
        ))
    }

    pub fn write_params(&self, config: &Config) -> Result<(), StorageError> {
        let text = serde_json::to_vec_pretty(config).unwrap_or_default();
        write_atomic(&self.params_path(), &text)
    }

    pub fn write_policy(&self, policy: &[PolicyStep]) -> Result<(), StorageError> {
        let text = serde_json::to_vec_pretty(policy).unwrap_or_default();
        write_atomic(&self.dir.join(POLICY_FILE), &text)
    }

    /// Append a failure to error.txt (a trial retried several times keeps every message).
    pub fn write_error(&self, message: &str) -> Result<(), StorageError> {
        let path = self.dir.join("error.txt");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error("open", &path))?;
        writeln!(file, "{message}").map_err(io_error("write", &path))
    }

    /// Move the directory a trial reported into `checkpoints/` under `iteration`. A rename when
    /// possible; a copy (then removal) across file systems.
    pub fn take_checkpoint(&self, src: &Path, iteration: u64) -> Result<PathBuf, StorageError> {
        let meta = fs::metadata(src).map_err(|e| StorageError::Checkpoint {
            path: src.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        if !meta.is_dir() {
            return Err(StorageError::Checkpoint {
                path: src.to_path_buf(),
                message: "is not a directory: report the directory that holds the checkpoint"
                    .into(),
            });
        }
        // Moving a directory that contains the trial's own files would move them away.
        if let Ok(src_abs) = src.canonicalize()
            && let Ok(dir_abs) = self.dir.canonicalize()
            && dir_abs.starts_with(&src_abs)
        {
            return Err(StorageError::Checkpoint {
                path: src.to_path_buf(),
                message: "contains the trial's own directory; write checkpoints into \
                          RTUNE_SCRATCH_DIR or a fresh directory"
                    .into(),
            });
        }
        let target = self.checkpoint_dir(iteration);
        let parent = self.checkpoints_dir();
        fs::create_dir_all(&parent).map_err(io_error("create", &parent))?;
        if target.exists() {
            fs::remove_dir_all(&target).map_err(io_error("replace", &target))?;
        }
        match fs::rename(src, &target) {
            Ok(()) => Ok(target),
            Err(_) => {
                copy_dir_atomic(src, &target)?;
                fs::remove_dir_all(src).map_err(io_error("remove", src))?;
                Ok(target)
            }
        }
    }

    /// Copy a checkpoint directory (a donor's) to `target`, replacing what is there.
    pub fn copy_checkpoint(&self, from: &Path, target: &Path) -> Result<(), StorageError> {
        if target.exists() {
            fs::remove_dir_all(target).map_err(io_error("replace", target))?;
        }
        copy_dir_atomic(from, target)
    }

    pub fn delete_checkpoint(&self, iteration: u64) -> Result<(), StorageError> {
        let path = self.checkpoint_dir(iteration);
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("delete", &path)(e)),
        }
    }

    /// Rewrite result.json and progress.csv from a trial's history (what the journal says it
    /// reported and what still counts): after a resume, rolled-back results are gone and results
    /// the old head counted but had not written yet are there.
    pub fn rewrite_results(&self, history: &[HistoryEntry]) -> Result<(), StorageError> {
        let mut json = String::new();
        for entry in history {
            let mut line = entry.result.metrics.clone();
            line.insert("done".into(), entry.done.into());
            line.insert("config".into(), Value::Object(entry.config.clone()));
            json.push_str(&Value::Object(line).to_string());
            json.push('\n');
        }
        let mut csv = String::new();
        if let Some(first) = history.first() {
            let mut columns: Vec<String> = first.result.metrics.keys().cloned().collect();
            columns.push("done".into());
            csv.push_str(&csv_line(&columns));
            for entry in history {
                csv.push_str(&csv_row(&columns, &entry.result, entry.done));
            }
        }
        write_atomic(&self.result_path(), json.as_bytes())?;
        write_atomic(&self.progress_path(), csv.as_bytes())
    }

    /// Append one result to result.json (JSON lines with `done` and `config`) and progress.csv.
    pub fn append_result(
        &self,
        result: &TrialResult,
        config: &Config,
        done: bool,
    ) -> Result<(), StorageError> {
        let mut line = result.metrics.clone();
        line.insert("done".into(), done.into());
        line.insert("config".into(), Value::Object(config.clone()));
        append_json_line(&self.result_path(), &Value::Object(line))?;
        self.append_progress(result, done)
    }

    /// progress.csv: the columns are fixed by the first row (later new keys are left out, as a
    /// CSV cannot grow columns); nested values are written as JSON.
    fn append_progress(&self, result: &TrialResult, done: bool) -> Result<(), StorageError> {
        let path = self.progress_path();
        // The header may hold quoted newlines, so it is read as a CSV record, not as a line.
        let existing_header = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_path(&path)
            .ok()
            .and_then(|mut reader| reader.records().next()?.ok())
            .map(|record| record.iter().map(str::to_string).collect::<Vec<_>>())
            .filter(|columns| !columns.is_empty());
        let mut text = String::new();
        let columns: Vec<String> = match existing_header {
            Some(columns) => columns,
            None => {
                let mut columns: Vec<String> = result.metrics.keys().cloned().collect();
                columns.push("done".into());
                text.push_str(&csv_line(&columns));
                columns
            }
        };
        text.push_str(&csv_row(&columns, result, done));
        append_text(&path, &text)
    }
}

/// One progress.csv line (with its newline) for these columns.
fn csv_row(columns: &[String], result: &TrialResult, done: bool) -> String {
    let row: Vec<String> = columns
        .iter()
        .map(|c| match c.as_str() {
            "done" => done.to_string(),
            _ => result.metrics.get(c).map(csv_value).unwrap_or_default(),
        })
        .collect();
    csv_line(&row)
}

fn json_f64(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

/// One CSV record with its newline, quoted where a field needs it (RFC 4180, as the csv crate
/// writes it).
pub fn csv_line<T: AsRef<[u8]>>(fields: &[T]) -> String {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing into memory cannot fail, and every field is UTF-8 text, so neither fallback is
    // ever taken; they only keep a panic out of the write path.
    if writer.write_record(fields).is_err() {
        return "\n".to_string();
    }
    writer
        .into_inner()
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| "\n".to_string())
}

/// A metric value as CSV text: strings as they are, anything else as JSON; null is empty.
fn csv_value(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn append_text(path: &Path, text: &str) -> Result<(), StorageError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error("open", path))?;
    let before = file.metadata().map_err(io_error("open", path))?.len();
    // One write call per line, so concurrent readers never see a line's first half only.
    if let Err(e) = file.write_all(text.as_bytes()) {
        // A full disk: leave no half line behind.
        let _ = file.set_len(before);
        return Err(write_error(path, text.len(), e));
    }
    Ok(())
}

fn append_json_line(path: &Path, value: &Value) -> Result<(), StorageError> {
    let mut text = value.to_string();
    text.push('\n');
    append_text(path, &text)
}

/// Write a file so that readers see either the old or the new content, never a part: write a
/// temporary file next to it (`.<name>.<random>.tmp`), flush it to disk, rename it over the
/// target. On any error the temporary file is removed (tempfile's drop), so none is left.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), StorageError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| write_error(path, content.len(), e))?;
    // Through the plain file, so an error keeps its errno (ENOSPC names the free space).
    tmp.as_file_mut()
        .write_all(content)
        .and_then(|()| tmp.as_file().sync_data())
        .map_err(|e| write_error(path, content.len(), e))?;
    tmp.persist(path)
        .map_err(|e| io_error("replace", path)(e.error))?;
    Ok(())
}

/// Copy a directory tree to `target` via a temporary sibling, so `target` appears complete or
/// not at all.
fn copy_dir_atomic(from: &Path, target: &Path) -> Result<(), StorageError> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.partial"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_error("remove", &tmp))?;
    }
    copy_tree(from, &tmp)?;
    fs::rename(&tmp, target).map_err(io_error("rename", target))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), StorageError> {
    fs::create_dir_all(to).map_err(io_error("create", to))?;
    for entry in fs::read_dir(from).map_err(io_error("read", from))? {
        let entry = entry.map_err(io_error("read", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io_error("read", &src))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(io_error("copy", &src))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(trial: u32, pairs: &[(&str, Value)]) -> TrialResult {
        TrialResult {
            trial: TrialId(trial),
            metrics: pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
            has_checkpoint: false,
        }
    }

    #[test]
    fn a_second_run_of_the_same_name_gets_its_own_directory() {
        let storage = tempfile::tempdir().expect("tempdir");
        let a = ExperimentDir::create(storage.path(), "exp", "name = 1").expect("first");
        let b = ExperimentDir::create(storage.path(), "exp", "name = 2").expect("second");
        assert_eq!(a.path(), storage.path().join("exp"));
        assert_eq!(b.path(), storage.path().join("exp-2"));
        let text = fs::read_to_string(b.path().join(EXPERIMENT_FILE)).expect("read");
        assert_eq!(text, "name = 2");
    }

    #[test]
    fn results_go_to_json_lines_and_a_csv_with_stable_columns() {
        let storage = tempfile::tempdir().expect("tempdir");
        let dir = ExperimentDir::create(storage.path(), "exp", "").expect("create");
        let files = dir.trial(TrialId(3)).expect("trial dir");
        let mut config = Config::new();
        config.insert("lr".into(), json!(0.1));
        let r1 = result(
            3,
            &[
                ("loss", json!(1.5)),
                ("note", json!("a,b")),
                ("training_iteration", json!(1)),
            ],
        );
        let r2 = result(
            3,
            &[
                ("loss", json!(1.0)),
                ("extra", json!(7)),
                ("training_iteration", json!(2)),
            ],
        );
        files.append_result(&r1, &config, false).expect("r1");
        files.append_result(&r2, &config, true).expect("r2");
        let lines: Vec<Value> = fs::read_to_string(files.result_path())
            .expect("result.json")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["done"], true);
        assert_eq!(lines[1]["config"]["lr"], 0.1);
        let csv = fs::read_to_string(files.progress_path()).expect("progress.csv");
        assert_eq!(
            csv,
            "loss,note,training_iteration,done\n1.5,\"a,b\",1,false\n1.0,,2,true\n"
        );
    }

    #[test]
    fn csv_columns_with_commas_quotes_and_newlines_survive_appends() {
        let storage = tempfile::tempdir().expect("tempdir");
        let dir = ExperimentDir::create(storage.path(), "exp", "").expect("create");
        let files = dir.trial(TrialId(0)).expect("trial dir");
        let config = Config::new();
        let odd = [("a \"b\"", json!(1)), ("c,\nd", json!("x\ny"))];
        files
            .append_result(&result(0, &odd), &config, false)
            .expect("first");
        // The second append must read the existing header back as the same two columns.
        files
            .append_result(&result(0, &odd), &config, true)
            .expect("second");
        let text = fs::read_to_string(files.progress_path()).expect("progress.csv");
        let rows: Vec<Vec<String>> = csv::Reader::from_reader(text.as_bytes())
            .records()
            .map(|r| r.expect("record").iter().map(str::to_string).collect())
            .collect();
        assert_eq!(
            rows,
            vec![vec!["1", "x\ny", "false"], vec!["1", "x\ny", "true"]]
        );
        let header = csv::Reader::from_reader(text.as_bytes())
            .headers()
            .expect("header")
            .clone();
        assert_eq!(
            header.iter().collect::<Vec<_>>(),
            ["a \"b\"", "c,\nd", "done"]
        );
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").expect("first");
        write_atomic(&path, b"new").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        let missing = dir.path().join("no-such-dir").join("x.json");
        assert!(write_atomic(&missing, b"x").is_err());
    }

    #[test]
    fn checkpoints_are_taken_over_copied_and_deleted() {
        let storage = tempfile::tempdir().expect("tempdir");
        let dir = ExperimentDir::create(storage.path(), "exp", "").expect("create");
        let files = dir.trial(TrialId(0)).expect("trial dir");
        let scratch = files.scratch_dir().join("ckpt");
        fs::create_dir_all(scratch.join("sub")).expect("mkdir");
        fs::write(scratch.join("sub/w.bin"), b"weights").expect("write");
        let kept = files.take_checkpoint(&scratch, 2).expect("take");
        assert!(!scratch.exists());
        assert_eq!(fs::read(kept.join("sub/w.bin")).expect("read"), b"weights");

        let other = dir.trial(TrialId(1)).expect("trial dir");
        let donor = CheckpointId {
            trial: TrialId(0),
            iteration: 2,
        };
        let target = other.exploit_dir(donor);
        other.copy_checkpoint(&kept, &target).expect("copy");
        assert_eq!(
            fs::read(target.join("sub/w.bin")).expect("read"),
            b"weights"
        );

        files.delete_checkpoint(2).expect("delete");
        assert!(!kept.exists());
        files.delete_checkpoint(2).expect("deleting twice is fine");
    }

    #[test]
    fn a_checkpoint_that_is_not_a_directory_or_holds_the_trial_is_refused() {
        let storage = tempfile::tempdir().expect("tempdir");
        let dir = ExperimentDir::create(storage.path(), "exp", "").expect("create");
        let files = dir.trial(TrialId(0)).expect("trial dir");
        let file = files.dir().join("ckpt.bin");
        fs::write(&file, b"x").expect("write");
        assert!(files.take_checkpoint(&file, 1).is_err());
        assert!(files.take_checkpoint(dir.path(), 1).is_err());
        assert!(dir.path().join("trial_00000").is_dir());
        assert!(
            files
                .take_checkpoint(&files.dir().join("missing"), 1)
                .is_err()
        );
    }

    #[test]
    fn state_round_trips_and_a_foreign_file_is_a_clear_error() {
        let storage = tempfile::tempdir().expect("tempdir");
        let dir = ExperimentDir::create(storage.path(), "exp", "").expect("create");
        let state = ExperimentState {
            format: STATE_FORMAT,
            name: "exp".into(),
            status: "running".into(),
            metric: "loss".into(),
            mode: Mode::Min,
            scheduler: "fifo".into(),
            searcher: "random".into(),
            parameters: vec!["lr".into()],
            total_trials: Some(3),
            started_at: 1.0,
            finished_at: None,
            trials: Vec::new(),
            placements: BTreeMap::new(),
            head: None,
        };
        dir.write_state(&state).expect("write");
        assert_eq!(ExperimentState::read(dir.path()).expect("read"), state);
        fs::write(dir.path().join(STATE_FILE), "{}").expect("write");
        let err = ExperimentState::read(dir.path()).expect_err("bad state");
        assert!(err.to_string().contains("not an rtune experiment state"));
    }
}

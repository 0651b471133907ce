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
//!     params.json  result.json  progress.csv  stdout.log  stderr.log  error.txt
//!     policy.json  (only once PBT changed the trial's config)
//!     checkpoints/checkpoint_000003/ ...
//! ```
//!
//! Logs are appended line by line (one `write` per line, through files kept open while the head
//! runs), so a crash loses at most the line being written; snapshots (`experiment_state.json`,
//! `params.json`, `policy.json`) are written to a temporary file and renamed over the old one, so
//! they are never half-written. None of them is fsynced: the journal is what a resume trusts
//! (see [`crate::journal`]), and these files are rebuilt or cut back to what it says.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rtune_core::scheduler::PolicyStep;
use rtune_core::tuner::Truncation;
use rtune_core::{CheckpointId, Config, Decision, TrialId, TrialResult};
use serde_json::{Map, Value};

use crate::state::ExperimentState;

/// File names inside an experiment directory.
pub const EXPERIMENT_FILE: &str = "experiment.toml";
pub const STATE_FILE: &str = "experiment_state.json";
pub const DECISIONS_FILE: &str = "decisions.jsonl";
pub const EVENTS_FILE: &str = "events.jsonl";
pub const LINEAGE_FILE: &str = "lineage.jsonl";
/// Inside a trial directory: the trial's config by iteration, once PBT changed it.
pub const POLICY_FILE: &str = "policy.json";
/// Inside a trial directory: the config its current run started with.
pub const PARAMS_FILE: &str = "params.json";
/// Inside a trial directory: results that stopped counting (rolled back, replaced by an
/// exploit), as they were written, each with why.
pub const SUPERSEDED_FILE: &str = "superseded.json";

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

/// An experiment's directory.
#[derive(Clone, Debug)]
pub struct ExperimentDir {
    path: PathBuf,
    /// Append-only files kept open, and the trial directories known to exist.
    open: Arc<Mutex<OpenFiles>>,
}

/// Files kept open for appending while the head runs: one `open` per file rather than one per
/// line. The experiment's logs stay open; a trial's result files are closed when its run ends
/// ([`ExperimentDir::close_trial`]), so the number open is bounded by the running trials.
#[derive(Debug, Default)]
struct OpenFiles {
    files: HashMap<PathBuf, File>,
    /// progress.csv's columns by file (fixed by its first row).
    csv_columns: HashMap<PathBuf, Vec<String>>,
    made: HashSet<TrialId>,
    /// Trials whose directory this head created and that have no result yet: there is no
    /// progress.csv header to read back.
    without_results: HashSet<TrialId>,
    /// Trials whose last result line, as this head appended it, says `done`; a trial whose
    /// lines were cut back is not among them (its last line is then read from result.json).
    last_line_done: HashSet<TrialId>,
}

impl OpenFiles {
    fn append(&mut self, path: &Path, text: &str) -> Result<(), StorageError> {
        if !self.files.contains_key(path) {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io_error("open", path))?;
            self.files.insert(path.to_path_buf(), file);
        }
        let Some(file) = self.files.get_mut(path) else {
            return Ok(());
        };
        // One write call per line, so concurrent readers never see a line's first half only.
        if let Err(e) = file.write_all(text.as_bytes()) {
            // A full disk: leave no half line behind.
            let written = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.set_len(written.saturating_sub(text.len() as u64));
            self.files.remove(path);
            return Err(write_error(path, text.len(), e));
        }
        Ok(())
    }

    /// Close every file under `dir` (before it is rewritten, or when its trial stops running).
    fn close_under(&mut self, dir: &Path) {
        self.files.retain(|path, _| !path.starts_with(dir));
        self.csv_columns.retain(|path, _| !path.starts_with(dir));
    }
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
        let dir = ExperimentDir::open(&path);
        // A resume needs it; the only file besides the journal that is fsynced.
        write_durable(&dir.path.join(EXPERIMENT_FILE), experiment_text.as_bytes())?;
        Ok(dir)
    }

    /// An existing experiment directory.
    pub fn open(path: &Path) -> ExperimentDir {
        ExperimentDir {
            path: path.to_path_buf(),
            open: Arc::default(),
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, OpenFiles> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append_json_line(&self, path: &Path, value: &Value) -> Result<(), StorageError> {
        let mut text = value.to_string();
        text.push('\n');
        self.files().append(path, &text)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A trial's files; creates its directory if needed.
    pub fn trial(&self, id: TrialId) -> Result<TrialFiles, StorageError> {
        let dir = self.path.join(id.name());
        let mut open = self.files();
        if !open.made.contains(&id) {
            match fs::create_dir(&dir) {
                Ok(()) => {
                    open.without_results.insert(id);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(_) => fs::create_dir_all(&dir).map_err(io_error("create", &dir))?,
            }
            open.made.insert(id);
        }
        Ok(TrialFiles { dir })
    }

    /// Close a trial's result files (its run ended; they reopen on its next result).
    pub fn close_trial(&self, id: TrialId) {
        self.files().close_under(&self.path.join(id.name()));
    }

    /// Append one result to the trial's result.json (JSON lines with `config`, `done` and `run`)
    /// and progress.csv.
    pub fn append_result(
        &self,
        result: &TrialResult,
        config: &Config,
        done: bool,
        run: u32,
    ) -> Result<(), StorageError> {
        let files = self.trial(result.trial)?;
        let line = result_line(&result.metrics, config, done, run);
        self.append_json_line(&files.result_path(), &Value::Object(line.clone()))?;
        let path = files.progress_path();
        let mut open = self.files();
        if done {
            open.last_line_done.insert(result.trial);
        } else {
            open.last_line_done.remove(&result.trial);
        }
        let mut text = String::new();
        if !open.csv_columns.contains_key(&path) {
            let no_file_yet = open.without_results.remove(&result.trial);
            let header = if no_file_yet {
                None
            } else {
                read_csv_header(&path)
            };
            let columns = match header {
                Some(columns) => columns,
                None => {
                    let columns: Vec<String> =
                        line.keys().filter(|k| *k != "config").cloned().collect();
                    text.push_str(&csv_line(&columns));
                    columns
                }
            };
            open.csv_columns.insert(path.clone(), columns);
        }
        if let Some(columns) = open.csv_columns.get(&path) {
            text.push_str(&csv_row(columns, &line));
        }
        open.append(&path, &text)
    }

    /// The trial's results after `through_iteration` stop counting: result.json and
    /// progress.csv keep the lines up to there, and the others are appended to superseded.json
    /// with why. Lines are in increasing iteration, so what stays is a prefix.
    pub fn truncate_results(
        &self,
        trial: TrialId,
        through_iteration: u64,
        reason: Truncation,
        now: f64,
    ) -> Result<(), StorageError> {
        let files = self.trial(trial)?;
        self.close_trial(trial);
        self.files().last_line_done.remove(&trial);
        let path = files.result_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let kept = lines
            .iter()
            .take_while(|line| {
                serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v.get("training_iteration").and_then(Value::as_u64))
                    .is_some_and(|i| i <= through_iteration)
            })
            .count();
        if kept == lines.len() {
            return Ok(());
        }
        let mut superseded = String::new();
        for line in &lines[kept..] {
            let mut value: Map<String, Value> = serde_json::from_str(line).unwrap_or_default();
            value.insert(
                "superseded".into(),
                serde_json::json!({"reason": reason.as_str(), "time": json_f64(now)}),
            );
            superseded.push_str(&Value::Object(value).to_string());
            superseded.push('\n');
        }
        self.files()
            .append(&files.dir.join(SUPERSEDED_FILE), &superseded)?;
        let mut json: String = lines[..kept].iter().map(|l| format!("{l}\n")).collect();
        if kept == 0 {
            json.clear();
        }
        write_atomic(&path, json.as_bytes())?;
        rewrite_csv_rows(&files.progress_path(), kept)
    }

    /// Make progress.csv hold one row per line of result.json (a head killed between the two
    /// appends left it a row short): rebuilt from result.json when the counts differ.
    pub fn repair_progress(&self, trial: TrialId) -> Result<(), StorageError> {
        let files = self.trial(trial)?;
        self.close_trial(trial);
        let lines: Vec<Map<String, Value>> = fs::read_to_string(files.result_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let path = files.progress_path();
        if read_csv_rows(&path).len() == lines.len() {
            return Ok(());
        }
        let mut csv = String::new();
        if let Some(first) = lines.first() {
            let columns: Vec<String> = read_csv_header(&path)
                .unwrap_or_else(|| first.keys().filter(|k| *k != "config").cloned().collect());
            csv.push_str(&csv_line(&columns));
            for line in &lines {
                csv.push_str(&csv_row(&columns, line));
            }
        }
        write_atomic(&path, csv.as_bytes())
    }

    /// Mark the trial's last result as its final one (`done: true`): it completed on its own,
    /// after a report whose answer could not know it was the last.
    pub fn mark_last_done(&self, trial: TrialId) -> Result<(), StorageError> {
        let files = self.trial(trial)?;
        self.close_trial(trial);
        // Most trials end on a result whose answer already said so: nothing to read back.
        if self.files().last_line_done.remove(&trial) {
            return Ok(());
        }
        let path = files.result_path();
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(());
        };
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let Some(last) = lines.last_mut() else {
            return Ok(());
        };
        let Ok(Value::Object(mut value)) = serde_json::from_str::<Value>(last) else {
            return Ok(());
        };
        if value.get("done") == Some(&Value::Bool(true)) {
            return Ok(());
        }
        value.insert("done".into(), Value::Bool(true));
        *last = Value::Object(value).to_string();
        let mut json = lines.join("\n");
        json.push('\n');
        write_atomic(&path, json.as_bytes())?;
        // progress.csv's last row, in its `done` column.
        let csv_path = files.progress_path();
        let Some(columns) = read_csv_header(&csv_path) else {
            return Ok(());
        };
        let Some(done_column) = columns.iter().position(|c| c == "done") else {
            return Ok(());
        };
        let mut rows = read_csv_rows(&csv_path);
        if let Some(row) = rows.last_mut()
            && let Some(cell) = row.get_mut(done_column)
        {
            *cell = "true".into();
        }
        let mut csv = csv_line(&columns);
        for row in &rows {
            csv.push_str(&csv_line(row));
        }
        write_atomic(&csv_path, csv.as_bytes())
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
        self.append_json_line(&self.path.join(DECISIONS_FILE), &Value::Object(line))
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
        self.append_json_line(&self.path.join(DECISIONS_FILE), &line)
    }

    pub fn append_event(&self, event: &Value) -> Result<(), StorageError> {
        self.append_json_line(&self.path.join(EVENTS_FILE), event)
    }

    pub fn append_lineage(&self, line: &Value) -> Result<(), StorageError> {
        self.append_json_line(&self.path.join(LINEAGE_FILE), line)
    }

    /// Write the state snapshot atomically.
    pub fn write_state(&self, state: &ExperimentState) -> Result<(), StorageError> {
        self.write_state_with(|out| serde_json::to_writer(out, state))
    }

    /// Write the state file from `write`, which serializes it straight into the file (a large
    /// experiment's state is never held as text).
    pub fn write_state_with(
        &self,
        write: impl FnOnce(&mut dyn Write) -> serde_json::Result<()>,
    ) -> Result<(), StorageError> {
        let path = self.path.join(STATE_FILE);
        write_atomic_with(&path, |out| {
            write(out).map_err(|e| io::Error::other(e.to_string()))
        })
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
        self.dir.join(PARAMS_FILE)
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
}

/// One result.json line: the result's keys, then `config`, `done` and `run`.
fn result_line(
    metrics: &Map<String, Value>,
    config: &Config,
    done: bool,
    run: u32,
) -> Map<String, Value> {
    let mut line = metrics.clone();
    line.insert("config".into(), Value::Object(config.clone()));
    line.insert("done".into(), done.into());
    line.insert("run".into(), run.into());
    line
}

/// One progress.csv line (with its newline) for these columns.
fn csv_row(columns: &[String], line: &Map<String, Value>) -> String {
    let row: Vec<String> = columns
        .iter()
        .map(|c| line.get(c).map(csv_value).unwrap_or_default())
        .collect();
    csv_line(&row)
}

/// progress.csv's header, if it has one. The header may hold quoted newlines, so it is read as
/// a CSV record, not as a line.
fn read_csv_header(path: &Path) -> Option<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .ok()
        .and_then(|mut reader| reader.records().next()?.ok())
        .map(|record| record.iter().map(str::to_string).collect::<Vec<_>>())
        .filter(|columns| !columns.is_empty())
}

/// progress.csv's rows, without the header.
fn read_csv_rows(path: &Path) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map(|mut reader| {
            reader
                .records()
                .filter_map(Result::ok)
                .map(|r| r.iter().map(str::to_string).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// Keep progress.csv's header and its first `rows` rows.
fn rewrite_csv_rows(path: &Path, rows: usize) -> Result<(), StorageError> {
    let Some(columns) = read_csv_header(path) else {
        return Ok(());
    };
    let mut csv = String::new();
    if rows > 0 {
        csv.push_str(&csv_line(&columns));
        for row in read_csv_rows(path).iter().take(rows) {
            csv.push_str(&csv_line(row));
        }
    }
    write_atomic(path, csv.as_bytes())
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

/// Write a file so that readers see either the old or the new content, never a part: write a
/// temporary file next to it (`.<name>.<random>.tmp`), rename it over the target. On any error
/// the temporary file is removed (tempfile's drop), so none is left. Not fsynced: what it writes
/// can be rebuilt from the journal.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), StorageError> {
    write_file(path, content, false)
}

/// [`write_atomic`], flushed to the disk before the rename: for files a resume needs.
pub fn write_durable(path: &Path, content: &[u8]) -> Result<(), StorageError> {
    write_file(path, content, true)
}

/// [`write_atomic`] of what `write` writes into the file (through a buffer), for large files.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), StorageError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| write_error(path, 0, e))?;
    let mut out = io::BufWriter::with_capacity(1 << 16, tmp);
    write(&mut out).map_err(|e| write_error(path, 0, e))?;
    let tmp = out
        .into_inner()
        .map_err(|e| write_error(path, 0, e.into_error()))?;
    tmp.persist(path)
        .map_err(|e| io_error("replace", path)(e.error))?;
    Ok(())
}

fn write_file(path: &Path, content: &[u8], durable: bool) -> Result<(), StorageError> {
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
        .and_then(|()| {
            if durable {
                tmp.as_file().sync_data()
            } else {
                Ok(())
            }
        })
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
        dir.append_result(&r1, &config, false, 0).expect("r1");
        dir.append_result(&r2, &config, true, 1).expect("r2");
        let lines = json_lines(&files.result_path());
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["done"], true);
        assert_eq!(lines[1]["run"], 1);
        assert_eq!(lines[1]["config"]["lr"], 0.1);
        let csv = fs::read_to_string(files.progress_path()).expect("progress.csv");
        assert_eq!(
            csv,
            "loss,note,training_iteration,done,run\n1.5,\"a,b\",1,false,0\n1.0,,2,true,1\n"
        );
        // A second head (a resume) appends under the same header, not a second one.
        let resumed = ExperimentDir::open(dir.path());
        resumed
            .append_result(&r1, &config, false, 2)
            .expect("after resume");
        let csv = fs::read_to_string(files.progress_path()).expect("progress.csv");
        assert_eq!(csv.matches("loss,").count(), 1, "{csv}");
    }

    fn json_lines(path: &Path) -> Vec<Value> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    fn at(iteration: u64, loss: f64) -> TrialResult {
        result(
            0,
            &[
                ("loss", json!(loss)),
                ("training_iteration", json!(iteration)),
            ],
        )
    }

    #[test]
    fn results_that_stop_counting_move_to_superseded_json_with_why() {
        let storage = tempfile::tempdir().expect("tempdir");
        let dir = ExperimentDir::create(storage.path(), "exp", "").expect("create");
        let files = dir.trial(TrialId(0)).expect("trial dir");
        let config = Config::new();
        for i in 1..=4 {
            dir.append_result(&at(i, 1.0 / i as f64), &config, false, 0)
                .expect("append");
        }
        dir.truncate_results(TrialId(0), 2, Truncation::RolledBack, 10.0)
            .expect("truncate");
        // The restarted run reports iterations 3 and 4 again.
        dir.append_result(&at(3, 0.2), &config, false, 1)
            .expect("again");
        let iterations: Vec<u64> = json_lines(&files.result_path())
            .iter()
            .map(|l| l["training_iteration"].as_u64().expect("iteration"))
            .collect();
        assert_eq!(iterations, [1, 2, 3]);
        let superseded = json_lines(&files.dir().join(SUPERSEDED_FILE));
        assert_eq!(superseded.len(), 2);
        assert_eq!(superseded[0]["training_iteration"], 3);
        assert_eq!(superseded[0]["run"], 0);
        assert_eq!(superseded[0]["superseded"]["reason"], "rolled back");
        let csv = fs::read_to_string(files.progress_path()).expect("progress.csv");
        assert_eq!(csv.lines().count(), 4, "header and 3 rows: {csv}");
        assert!(csv.ends_with(",false,1\n"), "{csv}");
        // Everything rolled back (a restart from scratch): empty files.
        dir.truncate_results(TrialId(0), 0, Truncation::RolledBack, 11.0)
            .expect("truncate all");
        assert!(json_lines(&files.result_path()).is_empty());
    }

    #[test]
    fn the_final_result_of_a_completed_trial_is_marked_done() {
        let storage = tempfile::tempdir().expect("tempdir");
        let dir = ExperimentDir::create(storage.path(), "exp", "").expect("create");
        let files = dir.trial(TrialId(0)).expect("trial dir");
        for i in 1..=2 {
            dir.append_result(&at(i, 1.0), &Config::new(), false, 0)
                .expect("append");
        }
        dir.mark_last_done(TrialId(0)).expect("mark");
        let done: Vec<bool> = json_lines(&files.result_path())
            .iter()
            .map(|l| l["done"].as_bool().expect("done"))
            .collect();
        assert_eq!(done, [false, true]);
        let csv = fs::read_to_string(files.progress_path()).expect("progress.csv");
        assert!(csv.ends_with("true,0\n"), "{csv}");
    }

    #[test]
    fn a_later_head_reads_back_what_it_did_not_write_itself() {
        let storage = tempfile::tempdir().expect("tempdir");
        let first = ExperimentDir::create(storage.path(), "exp", "").expect("create");
        let files = first.trial(TrialId(0)).expect("trial dir");
        first
            .append_result(&at(1, 1.0), &Config::new(), false, 0)
            .expect("append");
        // A resume: the directory exists, so progress.csv's header is read back, not repeated.
        let second = ExperimentDir::open(first.path());
        second
            .append_result(&at(2, 0.5), &Config::new(), false, 1)
            .expect("append");
        let csv = fs::read_to_string(files.progress_path()).expect("progress.csv");
        assert_eq!(csv.lines().count(), 3, "one header, two rows: {csv}");
        let done = || -> Vec<bool> {
            json_lines(&files.result_path())
                .iter()
                .map(|l| l["done"].as_bool().expect("done"))
                .collect()
        };
        // A final line cut back: the line left last is read back and marked.
        second
            .append_result(&at(3, 0.4), &Config::new(), true, 1)
            .expect("append");
        second
            .truncate_results(TrialId(0), 2, Truncation::RolledBack, 5.0)
            .expect("truncate");
        second.mark_last_done(TrialId(0)).expect("mark");
        assert_eq!(done(), [false, true]);
        // A line appended as final stays as it is.
        second
            .append_result(&at(3, 0.4), &Config::new(), true, 2)
            .expect("append");
        second.mark_last_done(TrialId(0)).expect("mark");
        assert_eq!(done(), [false, true, true]);
    }

    #[test]
    fn csv_columns_with_commas_quotes_and_newlines_survive_appends() {
        let storage = tempfile::tempdir().expect("tempdir");
        let dir = ExperimentDir::create(storage.path(), "exp", "").expect("create");
        let files = dir.trial(TrialId(0)).expect("trial dir");
        let config = Config::new();
        let odd = [("a \"b\"", json!(1)), ("c,\nd", json!("x\ny"))];
        dir.append_result(&result(0, &odd), &config, false, 0)
            .expect("first");
        // A new head's first append must read the existing header back as the same columns.
        ExperimentDir::open(dir.path())
            .append_result(&result(0, &odd), &config, true, 0)
            .expect("second");
        let text = fs::read_to_string(files.progress_path()).expect("progress.csv");
        let rows: Vec<Vec<String>> = csv::Reader::from_reader(text.as_bytes())
            .records()
            .map(|r| r.expect("record").iter().map(str::to_string).collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec!["1", "x\ny", "false", "0"],
                vec!["1", "x\ny", "true", "0"]
            ]
        );
        let header = csv::Reader::from_reader(text.as_bytes())
            .headers()
            .expect("header")
            .clone();
        assert_eq!(
            header.iter().collect::<Vec<_>>(),
            ["a \"b\"", "c,\nd", "done", "run"]
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
            format: crate::state::STATE_FORMAT,
            name: "exp".into(),
            status: crate::state::RunStatus::Running,
            metric: "loss".into(),
            mode: rtune_core::Mode::Min,
            scheduler: "fifo".into(),
            searcher: "random".into(),
            parameters: vec!["lr".into()],
            total_trials: Some(3),
            started_at: 1.0,
            finished_at: None,
            ended: None,
            counts: Default::default(),
            trials: Vec::new(),
            head: None,
        };
        dir.write_state(&state).expect("write");
        assert_eq!(ExperimentState::read(dir.path()).expect("read"), state);
        fs::write(dir.path().join(STATE_FILE), "{}").expect("write");
        let err = ExperimentState::read(dir.path()).expect_err("bad state");
        assert!(err.to_string().contains("not an rtune experiment state"));
    }
}

//! The experiment's journal (`journal.jsonl`): the source of truth of an experiment.
//!
//! ```text
//! {"journal":2,"rtune":"0.2.0"}                          header
//! {"snapshot":{...core state...},"rtune":"0.2.0"}         the core's state (after compaction)
//! {"input":"next","now":...,"out":{"created":[...],"started":{...}}}
//! {"input":"report","now":...,"trial":3,"run":0,"metrics":{...},"checkpoint":true}
//! ...
//! ```
//!
//! Every input to the core is appended with the outcome the core recorded for it (the trials it
//! created, the trial it started, the decisions it took) before any of its effects is carried
//! out. A resume loads the latest snapshot and replays the lines after it with their recorded
//! outcomes forced ([`Tuner::replay`]), so an experiment resumes under a later release even if
//! that release would decide differently. Every [`COMPACT_EVERY`] lines, and when a head ends
//! cleanly, the journal is compacted: rewritten as the header and one snapshot, so a resume reads
//! a bounded tail whatever the experiment's length.
//!
//! A line is written with one `write` of the whole line; a crash can leave at most a partial
//! last line, which [`Journal::open`] cuts off. A write that fails (a full disk) is undone by
//! truncating the file back to where it was, so no half line is ever left behind.
//!
//! Durability: appends are not fsynced one by one (a killed head loses nothing: the data is in
//! the page cache); [`Journal::sync_in_background`] flushes them to the disk at most once a
//! second off the loop, so a power loss costs at most about a second of inputs, and the resume
//! then treats the result files' extra lines as not counting. A compaction fsyncs the new file
//! before renaming it over the old one, and then the directory.
//!
//! Journals of earlier releases (format 1: no header, no outcomes) are replayed by running the
//! code and checking that each started trial is the one recorded.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rtune_core::tuner::{CoreSnapshot, Effect, Input, Outcome, Output, Tuner, TunerError};
use serde::{Deserialize, Serialize};

/// The journal's file name inside the experiment directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// The version of the journal's layout (1: inputs only, before headers existed).
pub const JOURNAL_FORMAT: u32 = 2;

/// The journal is compacted to one snapshot after this many input lines.
pub const COMPACT_EVERY: u64 = 20_000;

/// The rtune release writing the journal.
pub const RTUNE_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {action} {path}: {source}{}", space_hint(source, *needed, path))]
    Io {
        action: &'static str,
        path: PathBuf,
        /// Bytes that were being written, if a write failed.
        needed: usize,
        source: io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// This head lost its claim on the experiment ([`crate::claim`]): it must write nothing
    /// more.
    #[error(transparent)]
    Fenced(#[from] crate::claim::Lost),
    #[error(
        "{path}, line {line}: replaying it gives a different state than the experiment had ({message})\nhint: was the experiment file changed since the experiment ran?"
    )]
    Diverged {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{path} was written by a newer rtune (journal format {found}; this rtune {RTUNE_VERSION} reads up to {JOURNAL_FORMAT})\nhint: resume it with that release or a later one"
    )]
    TooNew { path: PathBuf, found: u32 },
}

impl JournalError {
    /// The underlying OS error, for telling a full disk from other failures.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            JournalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// For a failed write: how much was needed and how much the file system has.
fn space_hint(source: &io::Error, needed: usize, path: &Path) -> String {
    if needed == 0 {
        return String::new();
    }
    match free_bytes(path) {
        Some(free) => format!(
            " (needed {needed} more bytes; {free} bytes are free on that file system{})",
            if source.raw_os_error() == Some(libc::ENOSPC) {
                ": free some space, then `rtune resume` the experiment"
            } else {
                ""
            }
        ),
        None => format!(" (needed {needed} more bytes)"),
    }
}

/// Free bytes (for unprivileged users) on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = if path.is_dir() { path } else { path.parent()? };
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid C string; stat is a valid, writable statvfs.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    let available: u64 = stat.f_bavail;
    let block: u64 = stat.f_frsize;
    (status == 0).then(|| available.saturating_mul(block))
}

/// The first line of a journal.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    journal: u32,
    rtune: String,
}

/// A snapshot line.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotLine<S = CoreSnapshot> {
    snapshot: S,
    /// The release that wrote it.
    rtune: String,
}

/// One input line: the input and what the core did with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub input: Input,
    #[serde(default, skip_serializing_if = "Outcome::is_empty")]
    pub out: Outcome,
}

/// What [`Journal::open`] read.
#[derive(Debug, Default)]
pub struct Contents {
    /// The journal's format (1 for journals of earlier releases).
    pub format: u32,
    /// The latest snapshot, if there is one, and the release that wrote it.
    pub snapshot: Option<(CoreSnapshot, String)>,
    /// The input lines after the latest snapshot (all of them when there is none), with their
    /// line numbers.
    pub entries: Vec<(usize, Entry)>,
}

impl Contents {
    /// Whether the journal holds anything of an experiment.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty()
    }
}

/// The journal of a running experiment, open for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// The file's length: where the next line starts.
    len: u64,
    /// Input lines since the last snapshot.
    since_snapshot: u64,
    /// Whether lines were appended since the last [`Journal::sync_in_background`].
    unsynced: bool,
    /// Test hook: fail the append after this many more lines (an injected write failure).
    fail_after: Option<u64>,
    /// The head's claim on the experiment ([`crate::claim`]): checked before every write, and
    /// released when the journal is dropped (at the end of the run, whichever way it ends).
    claim: Option<crate::claim::Claim>,
}

/// The error of a failed `action` on `path` (not a full disk: `needed` is 0), for `map_err`.
fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |source| JournalError::Io {
        action,
        path,
        needed: 0,
        source,
    }
}

impl Journal {
    /// Open (or create) `dir/journal.jsonl` and read what it holds. A partial last line (a crash
    /// in the middle of a write) is cut off, so the next line starts cleanly. A new journal gets
    /// its header.
    pub fn open(dir: &Path) -> Result<(Journal, Contents), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let io = |action: &'static str| io_error(action, &path);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io("open"))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io("read"))?;
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            tracing::warn!(
                "{}: cutting off a partial last line ({} bytes) left by a crash",
                path.display(),
                text.len() - complete
            );
            file.set_len(complete as u64).map_err(io("truncate"))?;
        }
        let contents = parse(&path, &text[..complete])?;
        let fail_after = std::env::var("RTUNE_TEST_JOURNAL_FAIL_AFTER")
            .ok()
            .and_then(|v| v.parse().ok());
        let mut journal = Journal {
            path,
            file,
            len: complete as u64,
            since_snapshot: contents.entries.len() as u64,
            unsynced: false,
            fail_after,
            claim: None,
        };
        if complete == 0 {
            let header = Header {
                journal: JOURNAL_FORMAT,
                rtune: RTUNE_VERSION.to_string(),
            };
            journal.append_line(&header)?;
        }
        Ok((journal, contents))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every write check `claim` first; the journal holds it until it is dropped.
    pub fn hold_claim(&mut self, claim: crate::claim::Claim) {
        self.claim = Some(claim);
    }

    /// Whether this head still holds its claim (always, without one).
    pub fn check_claim(&self) -> Result<(), JournalError> {
        match &self.claim {
            Some(claim) => Ok(claim.check()?),
            None => Ok(()),
        }
    }

    /// The input as it will be replayed: serialized and parsed back, so the live core sees
    /// exactly what a replay will (floats included).
    pub fn round_trip(input: &Input) -> Input {
        serde_json::to_string(input)
            .ok()
            .and_then(|line| serde_json::from_str(&line).ok())
            .unwrap_or_else(|| input.clone())
    }

    /// Append one input with its outcome.
    pub fn append(&mut self, input: &Input, out: &Outcome) -> Result<(), JournalError> {
        #[derive(Serialize)]
        struct EntryRef<'a> {
            #[serde(flatten)]
            input: &'a Input,
            #[serde(skip_serializing_if = "Outcome::is_empty")]
            out: &'a Outcome,
        }
        self.append_line(&EntryRef { input, out })?;
        self.since_snapshot += 1;
        Ok(())
    }

    /// Whether enough lines have been written since the last snapshot that a compaction pays.
    pub fn compaction_due(&self) -> bool {
        self.since_snapshot >= COMPACT_EVERY
    }

    /// Input lines since the last snapshot.
    pub fn lines_since_snapshot(&self) -> u64 {
        self.since_snapshot
    }

    /// Rewrite the journal as its header and one snapshot of the core, which `write_snapshot`
    /// writes (the core's state after every line so far). The new journal is written to a
    /// temporary file and fsynced; `verify` then gets the snapshot as read back from that file
    /// (as `S`: the core's [`rtune_core::tuner::SnapshotCheck`] reads it without holding the
    /// trials) and says whether it restores to the same state: only then is the file renamed over the
    /// journal (and the directory fsynced), so a crash leaves the old journal or the new one,
    /// and a snapshot that would not restore is never relied on. Returns whether it compacted.
    pub fn compact<S: serde::de::DeserializeOwned>(
        &mut self,
        write_snapshot: impl FnOnce(&mut dyn Write) -> serde_json::Result<()>,
        verify: impl FnOnce(S) -> bool,
    ) -> Result<bool, JournalError> {
        self.check_claim()?;
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let tmp_path = dir.join(format!("{JOURNAL_FILE}.compacting"));
        let written = (|| -> Result<(), JournalError> {
            let file = File::create(&tmp_path).map_err(io_error("create", &tmp_path))?;
            let mut out = io::BufWriter::new(file);
            let header = Header {
                journal: JOURNAL_FORMAT,
                rtune: RTUNE_VERSION.to_string(),
            };
            serde_json::to_writer(&mut out, &header).map_err(|e| self.malformed(e))?;
            out.write_all(b"\n{\"snapshot\":")
                .map_err(io_error("write", &tmp_path))?;
            write_snapshot(&mut out).map_err(|e| self.malformed(e))?;
            let rtune = serde_json::to_string(RTUNE_VERSION).map_err(|e| self.malformed(e))?;
            writeln!(out, ",\"rtune\":{rtune}}}").map_err(io_error("write", &tmp_path))?;
            let file = out
                .into_inner()
                .map_err(|e| io_error("write", &tmp_path)(e.into_error()))?;
            file.sync_data().map_err(io_error("write", &tmp_path))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(e);
        }
        let read_back = File::open(&tmp_path)
            .ok()
            .and_then(|file| {
                let mut lines = io::BufReader::new(file);
                let mut header = String::new();
                io::BufRead::read_line(&mut lines, &mut header).ok()?;
                serde_json::from_reader::<_, SnapshotLine<S>>(lines).ok()
            })
            .map(|line| line.snapshot);
        if !read_back.is_some_and(verify) {
            let _ = std::fs::remove_file(&tmp_path);
            return Ok(false);
        }
        std::fs::rename(&tmp_path, &self.path).map_err(io_error("replace", &self.path))?;
        if let Ok(dir) = File::open(&dir) {
            let _ = dir.sync_all();
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io_error("open", &self.path))?;
        self.len = self
            .file
            .metadata()
            .map_err(io_error("read", &self.path))?
            .len();
        self.since_snapshot = 0;
        self.unsynced = false;
        Ok(true)
    }

    /// Flush what was appended since the last call to the disk, on a blocking thread (never on
    /// the run loop). At most once a second is enough (see the module documentation).
    pub fn sync_in_background(&mut self) {
        if !self.unsynced {
            return;
        }
        self.unsynced = false;
        if let Ok(file) = self.file.try_clone() {
            let path = self.path.clone();
            let sync = move || {
                if let Err(e) = file.sync_data() {
                    tracing::warn!("cannot flush {} to disk: {e}", path.display());
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(sync);
                }
                Err(_) => sync(),
            }
        }
    }

    fn malformed(&self, e: serde_json::Error) -> JournalError {
        JournalError::Malformed {
            path: self.path.clone(),
            line: 0,
            message: e.to_string(),
        }
    }

    /// Append one JSON line with one write. On failure the file is cut back to its previous
    /// length.
    fn append_line<T: Serialize>(&mut self, value: &T) -> Result<(), JournalError> {
        self.check_claim()?;
        let mut line = serde_json::to_vec(value).map_err(|e| self.malformed(e))?;
        line.push(b'\n');
        let injected = match &mut self.fail_after {
            Some(0) => Some(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(n) => {
                *n -= 1;
                None
            }
            None => None,
        };
        let result = match injected {
            Some(e) => Err(e),
            None => self.file.write_all(&line),
        };
        if let Err(source) = result {
            // Leave no half line: cut back to where this line began.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::End(0));
            return Err(JournalError::Io {
                action: "append to",
                path: self.path.clone(),
                needed: line.len(),
                source,
            });
        }
        self.len += line.len() as u64;
        self.unsynced = true;
        Ok(())
    }
}

/// The journal's lines: its format, the latest snapshot, and the input lines after it.
fn parse(path: &Path, text: &[u8]) -> Result<Contents, JournalError> {
    let malformed = |line: usize, message: String| JournalError::Malformed {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut contents = Contents {
        format: 1,
        ..Contents::default()
    };
    for (index, line) in text.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.starts_with(b"{\"journal\"") {
            let header: Header =
                serde_json::from_slice(line).map_err(|e| malformed(number, e.to_string()))?;
            if header.journal > JOURNAL_FORMAT {
                return Err(JournalError::TooNew {
                    path: path.to_path_buf(),
                    found: header.journal,
                });
            }
            contents.format = header.journal;
        } else if line.starts_with(b"{\"snapshot\"") {
            let snapshot: SnapshotLine =
                serde_json::from_slice(line).map_err(|e| malformed(number, e.to_string()))?;
            contents.snapshot = Some((snapshot.snapshot, snapshot.rtune));
            contents.entries.clear();
        } else {
            let entry: Entry =
                serde_json::from_slice(line).map_err(|e| malformed(number, e.to_string()))?;
            contents.entries.push((number, entry));
        }
    }
    Ok(contents)
}

/// Rebuild the core from a journal's contents: load its snapshot, then replay the lines after
/// it. Effects are dropped: they happened when the input was live.
pub fn replay(tuner: &mut Tuner, contents: &Contents, path: &Path) -> Result<(), JournalError> {
    replay_with(tuner, contents, path, |_, _, _| {})
}

/// [`replay`], handing every line's output and effects to `seen` with the input: a head killed
/// between a journal line and its effects (a result line, the lineage log) left them undone,
/// and a resume redoes those that are not on disk.
pub fn replay_with(
    tuner: &mut Tuner,
    contents: &Contents,
    path: &Path,
    mut seen: impl FnMut(&Entry, &Output, Vec<Effect>),
) -> Result<(), JournalError> {
    if let Some((snapshot, _)) = &contents.snapshot {
        tuner
            .restore_snapshot(snapshot.clone())
            .map_err(|e: TunerError| JournalError::Diverged {
                path: path.to_path_buf(),
                line: 2,
                message: e.to_string(),
            })?;
    }
    for (number, entry) in &contents.entries {
        let diverged = |message: String| JournalError::Diverged {
            path: path.to_path_buf(),
            line: *number,
            message,
        };
        let output = if contents.format >= 2 {
            tuner
                .replay(&entry.input, &entry.out)
                .map_err(|e| diverged(e.to_string()))?
        } else {
            replay_legacy(tuner, &entry.input).map_err(diverged)?
        };
        let effects = tuner.drain_effects();
        seen(entry, &output, effects);
    }
    let divergences = tuner.replay_divergences();
    if divergences > 0 {
        tracing::warn!(
            "{}: {divergences} decision(s) of the journal's tail differ from what this rtune \
             ({RTUNE_VERSION}) would decide; the recorded ones were kept",
            path.display()
        );
    }
    Ok(())
}

/// A line of a format-1 journal (no recorded outcome): the running code decides, and the
/// trial it starts must be the one the journal recorded.
fn replay_legacy(tuner: &mut Tuner, input: &Input) -> Result<Output, String> {
    let (output, _) = tuner.apply(input).map_err(|e| e.to_string())?;
    // Compared as the journal holds it: through JSON text, like `started` itself.
    let as_written = |launch: &Option<rtune_core::tuner::Launch>| {
        serde_json::to_string(launch)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    };
    if let (Input::Next { started, .. }, Output::Launch(launch)) = (input, &output)
        && as_written(started) != as_written(launch)
    {
        return Err(format!(
            "the journal started {}, the core starts {}",
            describe(started.as_ref()),
            describe(launch.as_ref())
        ));
    }
    Ok(output)
}

fn describe(launch: Option<&rtune_core::tuner::Launch>) -> String {
    match launch {
        None => "nothing".into(),
        Some(l) => format!(
            "{} run {} with {}",
            l.trial.name(),
            l.run,
            serde_json::Value::Object(l.config.clone())
        ),
    }
}

//! The experiment's journal (`journal.jsonl`): every input to the core, one JSON line each,
//! appended before it takes effect. It is the source of truth: [`replay`] feeds its lines, in
//! order, to a fresh [`Tuner`] built from the same experiment file and gets the state the
//! experiment had, which is how `rtune resume` continues after any death of the head.
//!
//! A line is written with one `write` of the whole line; a crash can leave at most a partial
//! last line, which [`Journal::open`] cuts off. A write that fails (a full disk) is undone by
//! truncating the file back to where it was, so no half line is ever left behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rtune_core::tuner::{Effect, Input, Output, Tuner, TunerError};

/// The journal's file name inside the experiment directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";

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
    /// This head lost its claim on the experiment (issue 21): it must write nothing more.
    #[error(transparent)]
    Fenced(#[from] crate::claim::Lost),
    #[error(
        "{path}, line {line}: replaying it gives a different state than the experiment had ({message})\nhint: was the experiment file, or rtune, changed since the experiment ran?"
    )]
    Diverged {
        path: PathBuf,
        line: usize,
        message: String,
    },
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

/// The journal of a running experiment, open for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// The file's length: where the next line starts.
    len: u64,
    /// Test hook: fail the append after this many more lines (an injected write failure).
    fail_after: Option<u64>,
    /// The head's claim on the experiment (`crate::claim`): checked before every append, and
    /// released when the journal is dropped (at the end of the run, whichever way it ends).
    claim: Option<crate::claim::Claim>,
}

impl Journal {
    /// Open (or create) `dir/journal.jsonl` and read what it holds. A partial last line (a crash
    /// in the middle of a write) is cut off, so the next line starts cleanly.
    pub fn open(dir: &Path) -> Result<(Journal, Vec<Input>), JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| JournalError::Io {
                action,
                path,
                needed: 0,
                source,
            }
        };
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
        let mut inputs = Vec::new();
        for (index, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let input: Input =
                serde_json::from_slice(line).map_err(|e| JournalError::Malformed {
                    path: path.clone(),
                    line: index + 1,
                    message: e.to_string(),
                })?;
            inputs.push(input);
        }
        let fail_after = std::env::var("RTUNE_TEST_JOURNAL_FAIL_AFTER")
            .ok()
            .and_then(|v| v.parse().ok());
        Ok((
            Journal {
                path,
                file,
                len: complete as u64,
                fail_after,
                claim: None,
            },
            inputs,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every append check `claim` first; the journal holds it until it is dropped.
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

    /// Append one input as one line, and hand it to the OS before returning. On failure the
    /// file is cut back to its previous length.
    pub fn append(&mut self, input: &Input) -> Result<(), JournalError> {
        self.check_claim()?;
        let mut line = serde_json::to_vec(input).map_err(|e| JournalError::Malformed {
            path: self.path.clone(),
            line: 0,
            message: e.to_string(),
        })?;
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
            None => self.file.write_all(&line).and_then(|()| self.file.flush()),
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
        Ok(())
    }
}

/// Feed `inputs` to `tuner` in order, as the live run did, checking that every trial started
/// is the one the journal recorded. Effects are dropped: they happened when the input was live.
pub fn replay(tuner: &mut Tuner, inputs: &[Input], path: &Path) -> Result<(), JournalError> {
    replay_with(tuner, inputs, path, |_, _| {})
}

/// [`replay`], handing every effect to `effect` with the time of the input that caused it: a
/// head killed between a journal line and its effects (the lineage log, say) left them undone,
/// and a resume redoes those that are not on disk.
pub fn replay_with(
    tuner: &mut Tuner,
    inputs: &[Input],
    path: &Path,
    mut effect: impl FnMut(f64, Effect),
) -> Result<(), JournalError> {
    for (index, input) in inputs.iter().enumerate() {
        let diverged = |message: String| JournalError::Diverged {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let output = tuner
            .apply(input)
            .map_err(|e: TunerError| diverged(e.to_string()))?;
        // Compared as the journal holds it: through JSON text, like `started` itself.
        let as_written = |launch: &Option<rtune_core::tuner::Launch>| {
            serde_json::to_string(launch)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        };
        if let (Input::Next { started, .. }, Output::Launch(launch)) = (input, &output)
            && as_written(started) != as_written(launch)
        {
            return Err(diverged(format!(
                "the journal started {}, the core starts {}",
                describe(started.as_ref()),
                describe(launch.as_ref())
            )));
        }
        let now = input_time(input);
        for e in tuner.drain_effects() {
            effect(now, e);
        }
    }
    Ok(())
}

fn input_time(input: &Input) -> f64 {
    match input {
        Input::Next { now, .. }
        | Input::Report { now, .. }
        | Input::Started { now, .. }
        | Input::Exit { now, .. }
        | Input::Interrupt { now, .. }
        | Input::StopAll { now, .. }
        | Input::Resume { now, .. } => *now,
    }
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

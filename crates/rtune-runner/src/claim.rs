//! One head per experiment: the claim file `head_claim.json` in the experiment directory.
//!
//! `flock` is not enough where experiments live on NFS or Lustre (locks may be local to a node,
//! or not supported), so the claim is a lease held in a plain file, with fencing:
//!
//! * **Taking it.** A head creates `head_claim.json` with `O_EXCL` (atomic on local file systems,
//!   NFSv3+ and Lustre) and writes who it is ([`ClaimRecord`]: host, boot id, pid namespace, pid
//!   and the pid's start time, start time, a random nonce, the generation number, the lease). The
//!   file's modification time is the lease's last renewal.
//! * **Renewing it.** A thread of the head checks every `trust / 2` that the path still holds
//!   its own claim (same nonce and generation) and then renews the lease by touching its own open
//!   file descriptor (`futimens`): after a takeover that touches the old, renamed file, never the
//!   new claim. It is a thread, not the run loop's tick, so that file-system latency never blocks
//!   the loop and a long synchronous step of the loop (a checkpoint copy) does not let the lease
//!   run out.
//! * **Fencing.** Before every journal append (and every event the run loop handles) the head
//!   calls [`Claim::check`]: a verification younger than `trust` (a third of the lease) is
//!   trusted, an older one is redone by reading the file. The age is measured on
//!   `CLOCK_BOOTTIME`, which keeps running while the process is stopped (SIGSTOP, a frozen node)
//!   and while the machine sleeps, so a head that wakes up after a long stop always looks again
//!   and finds out that it was taken over; it then writes nothing more ([`Lost`]).
//! * **Taking over.** A claim is stale when its holder ran on this host (same host name, boot id
//!   and pid namespace) and its process is gone (or the pid now belongs to another process), or
//!   when its lease expired: its last renewal is more than `lease_s` ago by this machine's wall
//!   clock. A stale claim is renamed to a name unique to the taker, checked to be the very file
//!   that was judged (else it is put back), and a new claim with the next generation is created
//!   with `O_EXCL`, so of two takers racing exactly one wins. When the old holder may still be
//!   alive (an expired lease), the taker then waits the old holder's `trust_s` before it returns:
//!   any verification the old head made before the takeover has run out by then, so from then on
//!   it can only see that it lost. Clock skew between hosts therefore never lets two heads write
//!   at once; it can only make a takeover come early or late.
//! * **Releasing it.** On every exit of `run`/`resume` (the journal that holds the claim is
//!   dropped, whatever the path: success, an error, the time limit of a head job, a panic) the
//!   claim is renamed to `head_claim.released.json`, if it is still this head's. A head job that
//!   stopped for its time limit releases before it submits its successor, so the successor never
//!   finds its predecessor's claim. A SIGKILLed head leaves its claim: on the same host the next
//!   head takes it over at once, elsewhere once the lease has expired.
//!
//! What remains: a process stopped exactly between a check and the write that follows it (a few
//! instructions) can still write once after it wakes. Only storage that checks a token on every
//! write could close that window.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The claim's file name inside the experiment directory.
pub const CLAIM_FILE: &str = "head_claim.json";
/// Where a head moves its claim when it ends: the last head's record, and the generation the
/// next head continues from.
pub const RELEASED_FILE: &str = "head_claim.released.json";
/// The environment variable that sets the lease, in seconds.
pub const LEASE_ENV: &str = "RTUNE_CLAIM_LEASE_S";
/// The lease when [`LEASE_ENV`] is not set.
pub const DEFAULT_LEASE_S: f64 = 30.0;
/// The range [`LEASE_ENV`] may take.
pub const LEASE_RANGE_S: (f64, f64) = (0.5, 3600.0);
/// How long a verification is trusted, as a fraction of the lease.
const TRUST_FRACTION: f64 = 1.0 / 3.0;
/// The version of the claim file's layout.
const CLAIM_FORMAT: u32 = 1;
/// How long [`Claim::acquire`] waits for a claim that another head is writing, and how often it
/// looks.
const SETTLE_WAIT: Duration = Duration::from_millis(500);
const SETTLE_POLL: Duration = Duration::from_millis(5);
/// How often [`Claim::acquire`] starts over after losing a race with another taker.
const ACQUIRE_ATTEMPTS: usize = 5;

/// What `head_claim.json` holds. Its modification time is the last renewal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub format: u32,
    /// The holder's host name.
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id` of the holder's machine ("" when unknown).
    #[serde(default)]
    pub boot_id: String,
    /// The holder's pid namespace (`pid:[4026531836]`; "" when unknown): a pid means nothing
    /// in another container on the same machine.
    #[serde(default)]
    pub pid_namespace: String,
    pub pid: u32,
    /// The holder's start time in clock ticks since boot (`/proc/<pid>/stat`, field 22; 0 when
    /// unknown): tells the holder from a later process that got the same pid.
    #[serde(default)]
    pub pid_start: u64,
    /// Unix time the holder took the claim.
    pub started_at: f64,
    /// 1 for the experiment's first head, one more for each head after it.
    pub generation: u64,
    /// 64 random bits, hex: this claim and no other.
    pub nonce: String,
    /// How long after its last renewal the claim may be taken over.
    pub lease_s: f64,
    /// How long the holder trusts a verification of its claim: a taker waits this long after a
    /// takeover of an expired lease.
    pub trust_s: f64,
    pub rtune_version: String,
}

impl ClaimRecord {
    fn holder(&self) -> String {
        format!(
            "pid {} on host {} (generation {})",
            self.pid, self.host, self.generation
        )
    }
}

/// The lease a head takes: from [`LEASE_ENV`], range-checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClaimSettings {
    pub lease_s: f64,
}

impl ClaimSettings {
    /// [`LEASE_ENV`] if set (checked), else [`DEFAULT_LEASE_S`].
    pub fn from_env() -> Result<ClaimSettings, ClaimError> {
        match std::env::var(LEASE_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(ClaimSettings {
                lease_s: DEFAULT_LEASE_S,
            }),
            Err(std::env::VarError::NotUnicode(value)) => Err(ClaimError::BadLease {
                value: value.to_string_lossy().into_owned(),
            }),
            Ok(value) => ClaimSettings::parse(&value),
        }
    }

    /// A lease given as text, in seconds.
    pub fn parse(value: &str) -> Result<ClaimSettings, ClaimError> {
        let (low, high) = LEASE_RANGE_S;
        match value.trim().parse::<f64>() {
            Ok(lease_s) if (low..=high).contains(&lease_s) => Ok(ClaimSettings { lease_s }),
            _ => Err(ClaimError::BadLease {
                value: value.to_string(),
            }),
        }
    }

    fn trust_s(&self) -> f64 {
        self.lease_s * TRUST_FRACTION
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another head holds a live claim.
    #[error(
        "{dir} is being run by another head: {holder}, since {since}; it renewed its claim {renewed_ago:.1} s ago (lease {lease_s} s)\nhint: wait for it to end, or stop it (Ctrl-C, or kill {pid} on {host}); a head that died leaves a claim that the next `rtune resume` takes over at once on the same host, or {lease_s} s after its last renewal elsewhere"
    )]
    Held {
        dir: PathBuf,
        holder: String,
        pid: u32,
        host: String,
        since: String,
        renewed_ago: f64,
        lease_s: f64,
    },
    /// A claim file that cannot be read as a claim, not old enough to be taken over.
    #[error(
        "{path} is not a claim rtune can read, and it was changed {age:.1} s ago: another head may be starting\nhint: try again in a few seconds; once it is older than the lease ({lease_s} s) it is taken over"
    )]
    Unreadable {
        path: PathBuf,
        age: f64,
        lease_s: f64,
    },
    #[error(
        "{dir}: other heads kept taking the claim while this one tried ({ACQUIRE_ATTEMPTS} attempts)\nhint: start one head per experiment"
    )]
    Contended { dir: PathBuf },
    #[error(
        "{LEASE_ENV}={value:?} is not a lease rtune can use: give seconds from {} to {}",
        LEASE_RANGE_S.0,
        LEASE_RANGE_S.1
    )]
    BadLease { value: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// This head no longer holds the experiment: another head took it over (or the claim vanished,
/// or cannot be confirmed). Nothing may be written any more.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "this head (pid {pid}, generation {generation}) no longer holds {dir}: {why}\nit stopped its trials and wrote nothing more\nhint: the head that holds it now continues the experiment; if none does, `rtune resume` continues it"
)]
pub struct Lost {
    pub dir: PathBuf,
    pub pid: u32,
    pub generation: u64,
    pub why: String,
}

/// What was in the experiment directory before this head's claim.
#[derive(Clone, Debug, PartialEq)]
pub enum Previous {
    /// No claim and no released claim: the first head (or an experiment from an rtune without
    /// claims).
    Nothing,
    /// The last head released its claim when it ended.
    Released(ClaimRecord),
    /// A stale claim was taken over; the text says why it was stale.
    TakenOver { record: ClaimRecord, why: String },
}

/// The claim of this head on an experiment directory. Dropping it releases it.
pub struct Claim {
    shared: Arc<Shared>,
    previous: Previous,
    stop_renewing: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    path: PathBuf,
    record: ClaimRecord,
    /// The claim file this head created, kept open: renewals touch it (and never a newer
    /// claim at the same path).
    file: File,
    state: Mutex<ClaimState>,
}

struct ClaimState {
    /// `CLOCK_BOOTTIME` seconds at the start of the latest successful verification.
    verified_at: f64,
    /// Set for good once the claim is known to be lost.
    lost: Option<Lost>,
}

impl Claim {
    /// Takes the claim on `dir`, taking over a stale one (see the module's documentation). A
    /// live claim of another head is [`ClaimError::Held`]. When the stale claim's holder may
    /// still be alive, this waits the old holder's trust period before returning.
    pub fn acquire(dir: &Path, settings: ClaimSettings) -> Result<Claim, ClaimError> {
        let path = dir.join(CLAIM_FILE);
        let me = Identity::of_this_process();
        let mut previous = match read_record(&dir.join(RELEASED_FILE)) {
            Ok(Some((record, _))) => Previous::Released(record),
            _ => Previous::Nothing,
        };
        let mut generation = match &previous {
            Previous::Released(record) => record.generation,
            _ => 0,
        };
        let nonce = new_nonce()?;
        // The longest trust period of a taken-over holder that may still be alive.
        let mut wait_s: f64 = 0.0;
        for _ in 0..ACQUIRE_ATTEMPTS {
            let record = ClaimRecord {
                format: CLAIM_FORMAT,
                host: me.host.clone(),
                boot_id: me.boot_id.clone(),
                pid_namespace: me.pid_namespace.clone(),
                pid: std::process::id(),
                pid_start: me.pid_start,
                started_at: wall_now(),
                generation: generation + 1,
                nonce: nonce.clone(),
                lease_s: settings.lease_s,
                trust_s: settings.trust_s(),
                rtune_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            match create_claim(&path, &record) {
                Ok(file) => {
                    // Renewed from now on, also while it waits.
                    let claim = Claim::start(dir, path, record, file, previous);
                    if wait_s > 0.0 {
                        tracing::warn!(
                            "waiting {wait_s:.1} s for the previous head to notice the takeover"
                        );
                        std::thread::sleep(Duration::from_secs_f64(wait_s));
                    }
                    return Ok(claim);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(ClaimError::Io {
                        action: "create",
                        path,
                        source,
                    });
                }
            }
            // Someone's claim is there: whose, and is it stale?
            let (existing, meta) = match read_settled_claim(&path, settings.lease_s) {
                Ok(Some(found)) => found,
                // Released or taken over meanwhile: try again.
                Ok(None) => continue,
                Err(source) => {
                    return Err(ClaimError::Io {
                        action: "read",
                        path,
                        source,
                    });
                }
            };
            let age = wall_now() - meta.renewed_at;
            let (why, may_live) = match &existing {
                Some(record) => {
                    generation = generation.max(record.generation);
                    match judge(record, &me, age) {
                        Verdict::Live => {
                            return Err(ClaimError::Held {
                                dir: dir.to_path_buf(),
                                holder: record.holder(),
                                pid: record.pid,
                                host: record.host.clone(),
                                since: crate::report::local_time(record.started_at),
                                renewed_ago: age.max(0.0),
                                lease_s: record.lease_s,
                            });
                        }
                        Verdict::Stale { why, may_live } => (why, may_live),
                    }
                }
                None if age > settings.lease_s => (
                    format!(
                        "its file could not be read as a claim and was last changed {age:.1} s ago"
                    ),
                    true,
                ),
                None => {
                    return Err(ClaimError::Unreadable {
                        path,
                        age,
                        lease_s: settings.lease_s,
                    });
                }
            };
            if may_live {
                let trust = existing
                    .as_ref()
                    .map(|r| r.trust_s)
                    .filter(|t| t.is_finite())
                    .map_or(settings.trust_s(), |t| t.clamp(0.0, LEASE_RANGE_S.1));
                wait_s = wait_s.max(trust);
            }
            // Move the stale claim out of the way under a name only this head uses, then make
            // sure it is the file that was judged: another taker may have replaced it since.
            let aside = dir.join(format!("{CLAIM_FILE}.stale-{nonce}"));
            match std::fs::rename(&path, &aside) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(ClaimError::Io {
                        action: "move aside",
                        path,
                        source,
                    });
                }
            }
            let moved = std::fs::metadata(&aside).map(|m| (m.dev(), m.ino()));
            if moved.as_ref().ok() != Some(&(meta.dev, meta.ino)) {
                // Not what was judged: put it back unless a newer claim is there already (its
                // holder then finds out it lost, and writes nothing).
                if let Err(e) = std::fs::hard_link(&aside, &path)
                    && e.kind() != io::ErrorKind::AlreadyExists
                {
                    tracing::warn!("cannot put {} back: {e}", path.display());
                }
                let _ = std::fs::remove_file(&aside);
                continue;
            }
            let _ = std::fs::remove_file(&aside);
            if let Some(record) = existing {
                tracing::warn!(
                    "took over {} from the head {}: {why}",
                    dir.display(),
                    record.holder()
                );
                previous = Previous::TakenOver { record, why };
            } else {
                tracing::warn!("took over {}: {why}", dir.display());
            }
        }
        Err(ClaimError::Contended {
            dir: dir.to_path_buf(),
        })
    }

    fn start(
        dir: &Path,
        path: PathBuf,
        record: ClaimRecord,
        file: File,
        previous: Previous,
    ) -> Claim {
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            path,
            record,
            file,
            state: Mutex::new(ClaimState {
                verified_at: boottime_now(),
                lost: None,
            }),
        });
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let period = Duration::from_secs_f64(shared.record.trust_s / 2.0);
        let renewing = Arc::clone(&shared);
        let renewer = std::thread::Builder::new()
            .name("rtune-claim".into())
            .spawn(move || {
                // Until the claim is dropped (a message or a closed channel) or lost.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(period) {
                    match renewing.verify() {
                        Ok(()) => {}
                        Err(Verification::Lost(lost)) => {
                            tracing::debug!("{lost}");
                            break;
                        }
                        // Tried again at the next period; `check` refuses writes meanwhile
                        // once the last verification is too old.
                        Err(Verification::Unconfirmed(e)) => {
                            tracing::warn!("cannot renew the claim: {e}");
                        }
                    }
                }
            });
        let renewer = match renewer {
            Ok(handle) => Some(handle),
            Err(e) => {
                // `check` still verifies by itself when a verification is too old.
                tracing::warn!("cannot start the claim's renewal thread: {e}");
                None
            }
        };
        Claim {
            shared,
            previous,
            stop_renewing: Some(stop_tx),
            renewer,
        }
    }

    /// The claim this head holds.
    pub fn record(&self) -> &ClaimRecord {
        &self.shared.record
    }

    /// What was there before this head's claim.
    pub fn previous(&self) -> &Previous {
        &self.previous
    }

    /// Ok while this head holds its claim: at once when the last verification is younger than
    /// the trust period, else after reading the claim file again. Once lost, always [`Lost`].
    pub fn check(&self) -> Result<(), Lost> {
        self.shared.check()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        drop(self.stop_renewing.take());
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        self.shared.release();
    }
}

enum Verification {
    Lost(Lost),
    /// The claim file could not be read: maybe still ours.
    Unconfirmed(io::Error),
}

impl Shared {
    fn check(&self) -> Result<(), Lost> {
        {
            let state = self.lock_state();
            if let Some(lost) = &state.lost {
                return Err(lost.clone());
            }
            if boottime_now() - state.verified_at < self.record.trust_s {
                return Ok(());
            }
        }
        match self.verify() {
            Ok(()) => Ok(()),
            Err(Verification::Lost(lost)) => Err(lost),
            Err(Verification::Unconfirmed(e)) => {
                let lost = self.lost(format!(
                    "its claim could not be confirmed for longer than {:.1} s ({e})",
                    self.record.trust_s
                ));
                Err(self.set_lost(lost))
            }
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, ClaimState> {
        // A panic while holding the lock leaves plain data behind; go on with it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lost(&self, why: String) -> Lost {
        Lost {
            dir: self.dir.clone(),
            pid: self.record.pid,
            generation: self.record.generation,
            why,
        }
    }

    /// Records the loss for good (the first reason wins) and returns it.
    fn set_lost(&self, lost: Lost) -> Lost {
        self.lock_state().lost.get_or_insert(lost).clone()
    }

    /// Reads the claim file: still this head's claim (then renews the lease), or not.
    fn verify(&self) -> Result<(), Verification> {
        let started = boottime_now();
        if let Some(lost) = &self.lock_state().lost {
            return Err(Verification::Lost(lost.clone()));
        }
        let why = match read_claim_file(&self.path) {
            Ok(Some((Some(record), _)))
                if record.nonce == self.record.nonce
                    && record.generation == self.record.generation =>
            {
                if let Err(e) = touch(&self.file) {
                    // The verification holds; others see an older renewal.
                    tracing::warn!("cannot renew the claim {}: {e}", self.path.display());
                }
                let mut state = self.lock_state();
                if state.lost.is_none() {
                    state.verified_at = state.verified_at.max(started);
                }
                return Ok(());
            }
            Ok(Some((Some(record), _))) => format!(
                "it was taken over by the head {}, which claimed it at {}",
                record.holder(),
                crate::report::local_time(record.started_at)
            ),
            Ok(Some((None, _))) => format!(
                "{} now holds something else than this head's claim (another head is taking it)",
                self.path.display()
            ),
            Ok(None) => match read_record(&self.dir.join(RELEASED_FILE)) {
                Ok(Some((record, _))) if record.generation > self.record.generation => format!(
                    "it was taken over by the head {}, which claimed it at {} and has ended \
                     since",
                    record.holder(),
                    crate::report::local_time(record.started_at)
                ),
                _ => format!(
                    "{} was removed (by another head, or by hand)",
                    self.path.display()
                ),
            },
            Err(e) => return Err(Verification::Unconfirmed(e)),
        };
        Err(Verification::Lost(self.set_lost(self.lost(why))))
    }

    /// Moves the claim to [`RELEASED_FILE`] if it is still this head's.
    fn release(&self) {
        if self.lock_state().lost.is_some() {
            return;
        }
        match read_claim_file(&self.path) {
            Ok(Some((Some(record), _))) if record.nonce == self.record.nonce => {
                if let Err(e) = std::fs::rename(&self.path, self.dir.join(RELEASED_FILE)) {
                    tracing::warn!("cannot release the claim {}: {e}", self.path.display());
                }
            }
            _ => tracing::debug!(
                "{} is no longer this head's claim; left as it is",
                self.path.display()
            ),
        }
    }
}

/// Who this process is, for a claim and for judging one.
struct Identity {
    host: String,
    boot_id: String,
    pid_namespace: String,
    pid_start: u64,
}

impl Identity {
    fn of_this_process() -> Identity {
        Identity {
            host: crate::setup::this_host_name().unwrap_or_else(|_| "unknown".into()),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pid_start: process_start(std::process::id()).unwrap_or(0),
        }
    }

    /// Whether `record`'s pid means the same process table as this process's.
    fn shares_pids_with(&self, record: &ClaimRecord) -> bool {
        record.host == self.host
            && !self.boot_id.is_empty()
            && record.boot_id == self.boot_id
            && !self.pid_namespace.is_empty()
            && record.pid_namespace == self.pid_namespace
    }
}

enum Verdict {
    Live,
    /// `may_live`: the holder's process may still run (an expired lease): wait its trust period.
    Stale {
        why: String,
        may_live: bool,
    },
}

/// Whether the claim `record`, last renewed `age` seconds ago, may be taken over.
fn judge(record: &ClaimRecord, me: &Identity, age: f64) -> Verdict {
    if me.shares_pids_with(record) {
        let gone = match process_start(record.pid) {
            None => true,
            // Another process got the pid since (or the holder's start was unknown).
            Some(start) => record.pid_start != 0 && start != record.pid_start,
        };
        if gone {
            return Verdict::Stale {
                why: format!(
                    "its process {} is gone from this host (last renewal {:.1} s ago)",
                    record.pid,
                    age.max(0.0)
                ),
                may_live: false,
            };
        }
    }
    if age > record.lease_s || !record.lease_s.is_finite() {
        return Verdict::Stale {
            why: format!(
                "its lease expired: it was last renewed {age:.1} s ago, and the lease is {} s",
                record.lease_s
            ),
            may_live: true,
        };
    }
    Verdict::Live
}

/// The start time (clock ticks since boot) of a live, non-zombie process; None when there is
/// no such process.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3); the start time is field 22.
    let state = fields.first()?.chars().next()?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The claim file's identity and last renewal, as its holder left them.
struct ClaimMeta {
    dev: u64,
    ino: u64,
    /// Unix seconds of the last modification: the last renewal.
    renewed_at: f64,
}

/// Opens and reads the claim at `path` (an open, so NFS revalidates it: close-to-open). None:
/// no file; `Some((None, _))`: a file that is not a claim (being written, or damaged).
fn read_claim_file(path: &Path) -> io::Result<Option<(Option<ClaimRecord>, ClaimMeta)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let mut text = String::new();
    // A file that is not UTF-8 is not a claim either.
    let record = match file.read_to_string(&mut text) {
        Ok(_) => serde_json::from_str::<ClaimRecord>(&text).ok(),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => None,
        Err(e) => return Err(e),
    };
    Ok(Some((
        record,
        ClaimMeta {
            dev: meta.dev(),
            ino: meta.ino(),
            renewed_at: meta.mtime() as f64 + meta.mtime_nsec() as f64 * 1e-9,
        },
    )))
}

/// [`read_claim_file`], waiting a little (at most [`SETTLE_WAIT`]) while the file is a fresh one
/// that is not a claim yet: another head created it and is writing it.
fn read_settled_claim(
    path: &Path,
    lease_s: f64,
) -> io::Result<Option<(Option<ClaimRecord>, ClaimMeta)>> {
    let give_up = boottime_now() + SETTLE_WAIT.as_secs_f64();
    loop {
        let found = read_claim_file(path)?;
        let being_written =
            matches!(&found, Some((None, meta)) if wall_now() - meta.renewed_at <= lease_s);
        if !being_written || boottime_now() >= give_up {
            return Ok(found);
        }
        std::thread::sleep(SETTLE_POLL);
    }
}

fn read_record(path: &Path) -> io::Result<Option<(ClaimRecord, ClaimMeta)>> {
    Ok(read_claim_file(path)?.and_then(|(record, meta)| Some((record?, meta))))
}

/// Creates the claim file with `O_EXCL` and writes `record`, synced so that other hosts
/// (NFS) read it whole. A failed write removes the file again.
fn create_claim(path: &Path, record: &ClaimRecord) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    let text = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let written = file
        .write_all(&text)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// Sets the file's modification time to now (on NFS, the server's now): a renewal.
fn touch(file: &File) -> io::Result<()> {
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    };
    let times = [now, now];
    // SAFETY: a valid descriptor and a pointer to two timespecs.
    let rc = unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn new_nonce() -> Result<String, ClaimError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| ClaimError::Io {
        action: "draw a nonce from",
        path: PathBuf::from("the operating system's random source"),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(hex::encode(bytes))
}

fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds on `CLOCK_BOOTTIME`: monotonic, and running while the process is stopped and while
/// the machine sleeps (`CLOCK_MONOTONIC` stops during suspend).
fn boottime_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        // Never on Linux; a clock that does not move would trust forever, so never trust.
        return f64::INFINITY;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lease_s: f64) -> ClaimSettings {
        ClaimSettings { lease_s }
    }

    fn record(dir: &Path, name: &str) -> ClaimRecord {
        read_record(&dir.join(name))
            .expect("read")
            .expect("a claim")
            .0
    }

    /// Ends the claim's renewal thread, as if the head had stopped.
    fn stop_renewing(claim: &mut Claim) {
        drop(claim.stop_renewing.take());
        if let Some(renewer) = claim.renewer.take() {
            renewer.join().expect("the renewal thread ends");
        }
    }

    /// Sets the claim file's modification time `seconds` into the past: a lease that ran out
    /// without waiting for it.
    fn age_claim(dir: &Path, seconds: i64) {
        let file = File::options()
            .write(true)
            .open(dir.join(CLAIM_FILE))
            .expect("open");
        let then = libc::timespec {
            tv_sec: (wall_now() as i64) - seconds,
            tv_nsec: 0,
        };
        // SAFETY: a valid descriptor and two timespecs.
        let rc = unsafe { libc::futimens(file.as_raw_fd(), [then, then].as_ptr()) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn a_live_claim_is_refused_with_its_holder_and_a_released_one_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Claim::acquire(dir.path(), settings(30.0)).expect("first claim");
        assert_eq!(first.record().generation, 1);
        assert_eq!(first.previous(), &Previous::Nothing);
        let err = Claim::acquire(dir.path(), settings(30.0))
            .err()
            .expect("a second head is refused");
        let message = err.to_string();
        assert!(matches!(err, ClaimError::Held { .. }), "{message}");
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("generation 1"), "{message}");
        assert!(first.check().is_ok());
        drop(first);
        assert!(!dir.path().join(CLAIM_FILE).exists());
        assert_eq!(record(dir.path(), RELEASED_FILE).generation, 1);
        let second = Claim::acquire(dir.path(), settings(30.0)).expect("after release");
        assert_eq!(second.record().generation, 2);
        assert!(matches!(second.previous(), Previous::Released(r) if r.generation == 1));
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_the_old_head_is_fenced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut old = Claim::acquire(dir.path(), settings(0.5)).expect("claim");
        // Stop the old head's renewals, as a SIGSTOP would, and let its lease run out.
        stop_renewing(&mut old);
        age_claim(dir.path(), 10);
        let new = Claim::acquire(dir.path(), settings(0.5)).expect("takeover");
        assert_eq!(new.record().generation, 2);
        match new.previous() {
            Previous::TakenOver { record, why } => {
                assert_eq!(record.generation, 1);
                assert!(why.contains("lease expired"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // The taker waited the old head's trust period, so the old head's last verification
        // is too old now: it reads the file and finds it lost.
        let lost = old.check().expect_err("fenced");
        assert!(lost.why.contains("taken over"), "{lost}");
        assert!(lost.why.contains("generation 2"), "{lost}");
        // Dropping the old claim leaves the new one alone.
        drop(old);
        assert_eq!(record(dir.path(), CLAIM_FILE).generation, 2);
        assert!(new.check().is_ok());
    }

    #[test]
    fn a_claim_of_a_gone_process_on_this_host_is_taken_over_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = Identity::of_this_process();
        // A process that ran and is gone: its pid is free (reaped).
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        let dead = ClaimRecord {
            format: CLAIM_FORMAT,
            host: me.host.clone(),
            boot_id: me.boot_id.clone(),
            pid_namespace: me.pid_namespace.clone(),
            pid,
            pid_start: 1,
            started_at: wall_now(),
            generation: 7,
            nonce: "00".into(),
            lease_s: 3600.0,
            trust_s: 1200.0,
            rtune_version: "0".into(),
        };
        create_claim(&dir.path().join(CLAIM_FILE), &dead).expect("write");
        let claim = Claim::acquire(dir.path(), settings(30.0)).expect("takeover");
        assert_eq!(claim.record().generation, 8);
        match claim.previous() {
            Previous::TakenOver { why, .. } => assert!(why.contains("is gone"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unreadable_claim_is_left_alone_until_it_is_older_than_the_lease() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CLAIM_FILE), "{").expect("write");
        let err = Claim::acquire(dir.path(), settings(30.0))
            .err()
            .expect("refused");
        assert!(matches!(err, ClaimError::Unreadable { .. }), "{err}");
        age_claim(dir.path(), 60);
        let claim = Claim::acquire(dir.path(), settings(0.5)).expect("taken over");
        assert_eq!(claim.record().generation, 1);
    }

    #[test]
    fn a_removed_claim_fences_its_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let claim = Claim::acquire(dir.path(), settings(30.0)).expect("claim");
        std::fs::remove_file(dir.path().join(CLAIM_FILE)).expect("remove");
        // Force a verification now instead of waiting out the trust period.
        let lost = match claim.shared.verify() {
            Err(Verification::Lost(lost)) => lost,
            _ => panic!("not fenced"),
        };
        assert!(lost.why.contains("was removed"), "{lost}");
        assert!(claim.check().is_err(), "lost for good");
    }

    #[test]
    fn two_takers_racing_for_a_stale_claim_give_one_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        for round in 0..20 {
            let mut old = Claim::acquire(dir.path(), settings(0.5)).expect("claim");
            stop_renewing(&mut old);
            age_claim(dir.path(), 10);
            // Drop the old claim without releasing it (a head that died on another host).
            old.shared.set_lost(old.shared.lost("test".into()));
            drop(old);
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let takers: Vec<_> = (0..2)
                .map(|_| {
                    let barrier = Arc::clone(&barrier);
                    let dir = dir.path().to_path_buf();
                    std::thread::spawn(move || {
                        barrier.wait();
                        // A lease far longer than the race: with 0.5 s, a loaded machine that
                        // keeps the winner's renewal thread off a core for 0.5 s made its fresh
                        // claim stale, and the loser then took it over (CI saw 2 holders).
                        Claim::acquire(&dir, settings(30.0))
                    })
                })
                .collect();
            let results: Vec<_> = takers
                .into_iter()
                .map(|t| t.join().expect("join"))
                .collect();
            let holders: Vec<&Claim> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(holders.len(), 1, "round {round}: exactly one holder");
            let on_disk = record(dir.path(), CLAIM_FILE);
            assert_eq!(on_disk.nonce, holders[0].record().nonce, "round {round}");
            for result in &results {
                if let Err(e) = result {
                    assert!(matches!(e, ClaimError::Held { .. }), "round {round}: {e}");
                }
            }
            drop(results);
        }
    }

    #[test]
    fn leases_are_range_checked() {
        assert_eq!(ClaimSettings::parse("2").expect("ok").lease_s, 2.0);
        for bad in ["0", "0.1", "1e9", "nan", "inf", "-1", "soon", ""] {
            let err = ClaimSettings::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(LEASE_ENV), "{err}");
        }
    }

    #[test]
    fn process_start_times_tell_processes_apart() {
        let me = process_start(std::process::id()).expect("this process");
        assert!(me > 0);
        assert_eq!(process_start(u32::MAX), None);
    }
}

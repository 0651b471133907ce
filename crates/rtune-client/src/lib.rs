//! The Rust client of the trial protocol (docs/protocol.md): what a trial process links to read
//! the config rtune chose, report metrics and checkpoints, and learn whether to go on.
//!
//! ```no_run
//! # fn train_one_epoch(_: &serde_json::Map<String, serde_json::Value>) -> f64 { 0.0 }
//! # fn main() -> Result<(), rtune_client::ClientError> {
//! let Some(mut session) = rtune_client::Session::from_env()? else {
//!     return Ok(()); // not started by rtune
//! };
//! let config = session.config().clone();
//! loop {
//!     let loss = train_one_epoch(&config);
//!     let dir = session.new_checkpoint_dir()?;
//!     // ... write the model into `dir` ...
//!     let mut metrics = serde_json::Map::new();
//!     metrics.insert("loss".into(), loss.into());
//!     if session.report_with_checkpoint(&metrics, &dir)?.should_exit() {
//!         return Ok(()); // stopped or paused: exit with status 0
//!     }
//! }
//! # }
//! ```
//!
//! The client is blocking (std::net) and keeps one TCP connection open for the whole trial. In a
//! multi-process trial only rank 0 (environment `RANK` unset or `0`) talks to rtune; the other
//! ranks' reports return [`TrialAction::Continue`] at once, and the trial must make them follow
//! rank 0's decision itself (for example by broadcasting it).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rtune_protocol::{MAX_LINE_BYTES, Request, RequestBody, Response, VERSION, env};
use serde_json::{Map, Value};

pub use rtune_protocol::TrialAction;

/// The environment variable that names a process's rank in a multi-process trial.
pub const RANK_VAR: &str = "RANK";

/// How long to wait for a TCP connection to rtune.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for rtune's answer to a report, unless [`Session::set_reply_timeout`] says
/// otherwise. rtune answers once the scheduler has decided and a reported checkpoint has been
/// moved, normally within milliseconds.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long writing a request may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An environment variable rtune sets is missing or unreadable.
    #[error("{var}: {message}")]
    Env { var: &'static str, message: String },
    #[error("cannot connect to rtune at {addr} (RTUNE_ADDR): {message}")]
    Connect { addr: String, message: String },
    #[error(
        "lost the connection to rtune at {addr} (RTUNE_ADDR), also after reconnecting once: {source}"
    )]
    Connection {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "rtune at {addr} (RTUNE_ADDR) did not answer within {seconds} s; see Session::set_reply_timeout"
    )]
    Timeout { addr: String, seconds: u64 },
    /// rtune answered the request with an error.
    #[error("rtune at {addr} refused the report: {message}")]
    Refused { addr: String, message: String },
    #[error("rtune at {addr} sent an answer this client cannot read: {message}")]
    BadAnswer { addr: String, message: String },
    #[error("checkpoint directory {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    #[error("cannot create a checkpoint directory in {} (RTUNE_SCRATCH_DIR): {source}", path.display())]
    ScratchDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A trial's connection to rtune: its config and directories from the environment, and a kept
/// open connection for reports (opened at the first report).
pub struct Session {
    config: Map<String, Value>,
    trial_id: String,
    trial_name: String,
    run: u32,
    rank: u32,
    trial_dir: PathBuf,
    experiment_dir: Option<PathBuf>,
    scratch_dir: PathBuf,
    restore_dir: Option<PathBuf>,
    restore_iteration: Option<u64>,
    addr: String,
    secret: String,
    reply_timeout: Duration,
    connection: Option<BufReader<TcpStream>>,
    /// Suffix of the next checkpoint directory name.
    next_checkpoint: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Session")
            .field("trial_name", &self.trial_name)
            .field("run", &self.run)
            .field("rank", &self.rank)
            .field("addr", &self.addr)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

/// Why one attempt at a request failed.
enum Attempt {
    /// The connection broke: worth one reconnect.
    Broken(std::io::Error),
    /// Anything else: final.
    Failed(ClientError),
}

impl Session {
    /// Reads the environment rtune set for this process. `Ok(None)` when not started by rtune
    /// (`RTUNE_ADDR` unset or empty); an error names the variable that is missing or wrong.
    pub fn from_env() -> Result<Option<Session>, ClientError> {
        Self::from_lookup(|name| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(ClientError::Env {
                var: static_name(name),
                message: "is not valid UTF-8".into(),
            }),
        })
    }

    /// Like [`Session::from_env`], reading the variables through `vars` instead of the process
    /// environment (for tests and for launchers that pass the variables another way).
    pub fn from_vars(
        vars: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Session>, ClientError> {
        Self::from_lookup(|name| Ok(vars(name)))
    }

    fn from_lookup(
        lookup: impl Fn(&str) -> Result<Option<String>, ClientError>,
    ) -> Result<Option<Session>, ClientError> {
        let Some(addr) = lookup(env::ADDR)?.filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        check_addr(&addr)?;
        let required = |var: &'static str| -> Result<String, ClientError> {
            match lookup(var)? {
                Some(value) if !value.is_empty() => Ok(value),
                Some(_) => Err(env_error(var, "is empty; rtune sets it for every trial")),
                None => Err(env_error(
                    var,
                    "is not set, but RTUNE_ADDR is: was this process started by rtune?",
                )),
            }
        };
        if let Some(version) = lookup(env::PROTOCOL)?
            && version != VERSION.to_string()
        {
            return Err(env_error(
                env::PROTOCOL,
                format!(
                    "protocol version {version:?} is not supported: this client speaks version {VERSION}; use a client as new as rtune"
                ),
            ));
        }
        let secret = required(env::SECRET)?;
        let trial_id = required(env::TRIAL_ID)?;
        if !trial_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(env_error(
                env::TRIAL_ID,
                format!("{trial_id:?} is not a trial id (digits like 00003)"),
            ));
        }
        let trial_name = match lookup(env::TRIAL_NAME)? {
            Some(name) if !name.is_empty() => name,
            _ => format!("trial_{trial_id}"),
        };
        let run_text = required(env::RUN)?;
        let run = run_text.parse::<u32>().map_err(|_| {
            env_error(
                env::RUN,
                format!("{run_text:?} is not a run number (0, 1, 2, ...)"),
            )
        })?;
        let rank = match lookup(RANK_VAR)? {
            None => 0,
            Some(text) if text.is_empty() => 0,
            Some(text) => text.parse::<u32>().map_err(|_| {
                env_error(
                    RANK_VAR,
                    format!("{text:?} is not a process rank (0, 1, 2, ...)"),
                )
            })?,
        };
        let trial_dir = PathBuf::from(required(env::TRIAL_DIR)?);
        let scratch_dir = PathBuf::from(required(env::SCRATCH_DIR)?);
        let experiment_dir = lookup(env::EXPERIMENT_DIR)?
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let config = read_config(&lookup)?;
        let restore_dir = lookup(env::RESTORE_DIR)?
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let restore_iteration = match lookup(env::RESTORE_ITERATION)?.filter(|t| !t.is_empty()) {
            None => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                env_error(
                    env::RESTORE_ITERATION,
                    format!("{text:?} is not an iteration number"),
                )
            })?),
        };
        if restore_iteration.is_some() && restore_dir.is_none() {
            return Err(env_error(
                env::RESTORE_ITERATION,
                "is set but RTUNE_RESTORE_DIR is not: both describe the checkpoint to restore",
            ));
        }
        Ok(Some(Session {
            config,
            trial_id,
            trial_name,
            run,
            rank,
            trial_dir,
            experiment_dir,
            scratch_dir,
            restore_dir,
            restore_iteration,
            addr,
            secret,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
            connection: None,
            next_checkpoint: 0,
        }))
    }

    /// The configuration rtune chose for this trial.
    pub fn config(&self) -> &Map<String, Value> {
        &self.config
    }

    /// `RTUNE_TRIAL_ID`, e.g. `00003`.
    pub fn trial_id(&self) -> &str {
        &self.trial_id
    }

    /// `RTUNE_TRIAL_NAME`, e.g. `trial_00003`.
    pub fn trial_name(&self) -> &str {
        &self.trial_name
    }

    /// Which run of the trial this process is: 0, then 1, 2, ... after pauses and retries.
    pub fn run(&self) -> u32 {
        self.run
    }

    /// This process's rank in a multi-process trial (`RANK`; 0 when unset). Only rank 0 reports.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// The trial's directory (params.json, result.json, checkpoints/, logs).
    pub fn trial_dir(&self) -> &Path {
        &self.trial_dir
    }

    /// The experiment's directory, when rtune said (`RTUNE_EXPERIMENT_DIR`).
    pub fn experiment_dir(&self) -> Option<&Path> {
        self.experiment_dir.as_deref()
    }

    /// The checkpoint to restore from: set when the trial resumes after a pause, is retried
    /// after a failure with a checkpoint, or continues another trial's checkpoint (PBT).
    pub fn restore_dir(&self) -> Option<&Path> {
        self.restore_dir.as_deref()
    }

    /// The iteration (number of reports) at which the restored checkpoint was taken; the next
    /// report of this run is counted as iteration `restore_iteration + 1`.
    pub fn restore_iteration(&self) -> Option<u64> {
        self.restore_iteration
    }

    /// `host:port` of rtune's protocol server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How long a report waits for rtune's answer (default [`DEFAULT_REPLY_TIMEOUT`]).
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
        if let Some(conn) = &self.connection
            && conn.get_ref().set_read_timeout(Some(timeout)).is_err()
        {
            // A connection that cannot take the new timeout is replaced at the next report.
            self.connection = None;
        }
    }

    /// A fresh empty directory under `RTUNE_SCRATCH_DIR` to write a checkpoint into before
    /// reporting it with [`Session::report_with_checkpoint`]. It is on the same file system as
    /// the trial's `checkpoints/`, so rtune takes it over with a rename.
    pub fn new_checkpoint_dir(&mut self) -> Result<PathBuf, ClientError> {
        let scratch_error = |source| ClientError::ScratchDir {
            path: self.scratch_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.scratch_dir).map_err(scratch_error)?;
        loop {
            let dir = self.scratch_dir.join(format!(
                "checkpoint_run{}_rank{}_{:05}",
                self.run, self.rank, self.next_checkpoint
            ));
            self.next_checkpoint += 1;
            // `create_dir` fails on an existing directory, so the directory is really fresh
            // (another process or an earlier one may have left directories here).
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(ClientError::ScratchDir {
                        path: self.scratch_dir.clone(),
                        source: e,
                    });
                }
            }
        }
    }

    /// Reports metrics (one iteration) and returns what to do next. On `Stop` or `Pause` exit
    /// with status 0. On ranks other than 0 this returns `Continue` without contacting rtune.
    pub fn report(&mut self, metrics: &Map<String, Value>) -> Result<TrialAction, ClientError> {
        self.send_report(metrics, None)
    }

    /// Like [`Session::report`], handing over the checkpoint in `dir` (taken at this point).
    /// rtune moves the directory into the trial's `checkpoints/` before it answers, so `dir` is
    /// gone afterwards. On ranks other than 0 nothing is sent and `dir` is left alone.
    pub fn report_with_checkpoint(
        &mut self,
        metrics: &Map<String, Value>,
        dir: &Path,
    ) -> Result<TrialAction, ClientError> {
        if self.rank != 0 {
            return Ok(TrialAction::Continue);
        }
        let checkpoint_error = |message: String| ClientError::Checkpoint {
            path: dir.to_path_buf(),
            message,
        };
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(checkpoint_error(
                    "is not a directory: report the directory that holds the checkpoint".into(),
                ));
            }
            Err(e) => return Err(checkpoint_error(format!("cannot read it: {e}"))),
        }
        // rtune does not run in this process's working directory.
        let absolute = std::path::absolute(dir)
            .map_err(|e| checkpoint_error(format!("cannot make the path absolute: {e}")))?;
        let text = absolute
            .to_str()
            .ok_or_else(|| {
                checkpoint_error("the path is not valid UTF-8, which JSON cannot carry".into())
            })?
            .to_string();
        self.send_report(metrics, Some(text))
    }

    fn send_report(
        &mut self,
        metrics: &Map<String, Value>,
        checkpoint: Option<String>,
    ) -> Result<TrialAction, ClientError> {
        if self.rank != 0 {
            return Ok(TrialAction::Continue);
        }
        let request = Request {
            v: VERSION,
            secret: self.secret.clone(),
            trial: self.trial_id.clone(),
            run: self.run,
            body: RequestBody::Report {
                metrics: metrics.clone(),
                checkpoint,
            },
        };
        let mut line = serde_json::to_vec(&request).map_err(|e| ClientError::BadAnswer {
            addr: self.addr.clone(),
            message: format!("cannot encode the report: {e}"),
        })?;
        line.push(b'\n');
        let response = self.exchange(&line)?;
        if !response.ok {
            return Err(ClientError::Refused {
                addr: self.addr.clone(),
                message: response
                    .error
                    .unwrap_or_else(|| "no reason given".to_string()),
            });
        }
        response.action.ok_or_else(|| ClientError::BadAnswer {
            addr: self.addr.clone(),
            message: "the answer to a report has no `action`".into(),
        })
    }

    /// Sends one request line and reads its answer, reconnecting once if the kept connection
    /// turns out to be broken.
    fn exchange(&mut self, line: &[u8]) -> Result<Response, ClientError> {
        if let Some(conn) = &self.connection
            && !still_open(conn)
        {
            self.connection = None;
        }
        match self.attempt(line) {
            Ok(response) => return Ok(response),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::Broken(_)) => self.connection = None,
        }
        match self.attempt(line) {
            Ok(response) => Ok(response),
            Err(Attempt::Failed(e)) => Err(e),
            Err(Attempt::Broken(source)) => {
                self.connection = None;
                Err(ClientError::Connection {
                    addr: self.addr.clone(),
                    source,
                })
            }
        }
    }

    fn attempt(&mut self, line: &[u8]) -> Result<Response, Attempt> {
        if self.connection.is_none() {
            self.connection = Some(self.connect().map_err(Attempt::Failed)?);
        }
        let addr = self.addr.clone();
        let timeout = self.reply_timeout;
        let Some(conn) = self.connection.as_mut() else {
            return Err(Attempt::Broken(ErrorKind::NotConnected.into()));
        };
        let timed_out =
            |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
        // One write for the whole line, so the request leaves in one segment.
        if let Err(e) = conn.get_mut().write_all(line) {
            return Err(if timed_out(&e) {
                Attempt::Failed(ClientError::Timeout {
                    addr,
                    seconds: WRITE_TIMEOUT.as_secs(),
                })
            } else {
                Attempt::Broken(e)
            });
        }
        let mut answer = Vec::new();
        let read = conn
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut answer);
        match read {
            Ok(0) => {
                return Err(Attempt::Broken(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "rtune closed the connection",
                )));
            }
            Ok(_) => {}
            Err(e) if timed_out(&e) => {
                // rtune may still be working on the report: resending could count it twice.
                self.connection = None;
                return Err(Attempt::Failed(ClientError::Timeout {
                    addr,
                    seconds: timeout.as_secs(),
                }));
            }
            Err(e) => return Err(Attempt::Broken(e)),
        }
        if answer.last() != Some(&b'\n') {
            self.connection = None;
            return Err(Attempt::Failed(ClientError::BadAnswer {
                addr,
                message: if answer.len() > MAX_LINE_BYTES {
                    "the answer is longer than 1 MiB".into()
                } else {
                    "the connection ended in the middle of the answer".into()
                },
            }));
        }
        serde_json::from_slice::<Response>(&answer).map_err(|e| {
            Attempt::Failed(ClientError::BadAnswer {
                addr,
                message: e.to_string(),
            })
        })
    }

    fn connect(&self) -> Result<BufReader<TcpStream>, ClientError> {
        let connect_error = |message: String| ClientError::Connect {
            addr: self.addr.clone(),
            message,
        };
        let addrs: Vec<SocketAddr> = self
            .addr
            .to_socket_addrs()
            .map_err(|e| connect_error(format!("cannot resolve the address: {e}")))?
            .collect();
        let mut last_error = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let setup = stream
                        .set_nodelay(true)
                        .and_then(|()| stream.set_read_timeout(Some(self.reply_timeout)))
                        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)));
                    setup.map_err(|e| connect_error(e.to_string()))?;
                    return Ok(BufReader::new(stream));
                }
                Err(e) => last_error = Some(format!("{addr}: {e}")),
            }
        }
        Err(connect_error(last_error.unwrap_or_else(|| {
            "the name resolves to no address".to_string()
        })))
    }
}

/// Whether a kept connection can still carry a request: rtune has not closed it (it does after
/// refusing a request) and no stray bytes wait in it.
fn still_open(conn: &BufReader<TcpStream>) -> bool {
    if !conn.buffer().is_empty() {
        return false;
    }
    let stream = conn.get_ref();
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = matches!(stream.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && open
}

fn check_addr(addr: &str) -> Result<(), ClientError> {
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if port_ok {
        Ok(())
    } else {
        Err(env_error(
            env::ADDR,
            format!("{addr:?} is not host:port (like 127.0.0.1:40123)"),
        ))
    }
}

fn read_config(
    lookup: &impl Fn(&str) -> Result<Option<String>, ClientError>,
) -> Result<Map<String, Value>, ClientError> {
    let (var, text) = match lookup(env::CONFIG)?.filter(|c| !c.is_empty()) {
        Some(text) => (env::CONFIG, text),
        None => match lookup(env::CONFIG_FILE)?.filter(|c| !c.is_empty()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| env_error(env::CONFIG_FILE, format!("cannot read {path}: {e}")))?;
                (env::CONFIG_FILE, text)
            }
            None => {
                return Err(env_error(
                    env::CONFIG,
                    "neither RTUNE_CONFIG nor RTUNE_CONFIG_FILE is set, but RTUNE_ADDR is: was \
                     this process started by rtune?",
                ));
            }
        },
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(config)) => Ok(config),
        Ok(_) => Err(env_error(var, "is not a JSON object")),
        Err(e) => Err(env_error(var, format!("is not valid JSON: {e}"))),
    }
}

fn env_error(var: &'static str, message: impl Into<String>) -> ClientError {
    ClientError::Env {
        var,
        message: message.into(),
    }
}

/// The `'static` name of a variable this client reads (for error values).
fn static_name(name: &str) -> &'static str {
    [
        env::PROTOCOL,
        env::ADDR,
        env::SECRET,
        env::TRIAL_ID,
        env::TRIAL_NAME,
        env::RUN,
        env::TRIAL_DIR,
        env::EXPERIMENT_DIR,
        env::CONFIG,
        env::CONFIG_FILE,
        env::RESTORE_DIR,
        env::RESTORE_ITERATION,
        env::SCRATCH_DIR,
        RANK_VAR,
    ]
    .into_iter()
    .find(|known| *known == name)
    .unwrap_or("environment variable")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            (env::PROTOCOL, "1".to_string()),
            (env::ADDR, "127.0.0.1:1".to_string()),
            (env::SECRET, "s3cret".to_string()),
            (env::TRIAL_ID, "00004".to_string()),
            (env::TRIAL_NAME, "trial_00004".to_string()),
            (env::RUN, "2".to_string()),
            (env::TRIAL_DIR, "/tmp/exp/trial_00004".to_string()),
            (env::SCRATCH_DIR, "/tmp/exp/trial_00004/scratch".to_string()),
            (
                env::CONFIG,
                r#"{"lr":0.01,"model":{"layers":2}}"#.to_string(),
            ),
        ])
    }

    fn session(vars: &HashMap<&'static str, String>) -> Result<Option<Session>, ClientError> {
        Session::from_vars(|name| vars.get(name).cloned())
    }

    fn error(vars: &HashMap<&'static str, String>) -> String {
        match session(vars) {
            Err(e) => e.to_string(),
            Ok(s) => panic!("expected an error, got {s:?}"),
        }
    }

    #[test]
    fn a_complete_environment_gives_a_session() {
        let mut vars = base();
        vars.insert(
            env::RESTORE_DIR,
            "/tmp/exp/trial_00004/checkpoints/c".into(),
        );
        vars.insert(env::RESTORE_ITERATION, "6".into());
        let s = session(&vars).unwrap().unwrap();
        assert_eq!(s.trial_id(), "00004");
        assert_eq!(s.trial_name(), "trial_00004");
        assert_eq!(s.run(), 2);
        assert_eq!(s.rank(), 0);
        assert_eq!(s.config()["model"]["layers"], 2);
        assert_eq!(s.trial_dir(), Path::new("/tmp/exp/trial_00004"));
        assert_eq!(
            s.restore_dir(),
            Some(Path::new("/tmp/exp/trial_00004/checkpoints/c"))
        );
        assert_eq!(s.restore_iteration(), Some(6));
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "Debug shows the secret"
        );
    }

    #[test]
    fn without_rtune_addr_there_is_no_session() {
        assert!(Session::from_vars(|_| None).unwrap().is_none());
        let mut vars = base();
        vars.insert(env::ADDR, String::new());
        assert!(session(&vars).unwrap().is_none());
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: Vec<(&str, Option<&str>, &str)> = vec![
            (env::SECRET, None, "RTUNE_SECRET: is not set"),
            (env::TRIAL_ID, None, "RTUNE_TRIAL_ID: is not set"),
            (
                env::TRIAL_ID,
                Some("trial_3"),
                "RTUNE_TRIAL_ID: \"trial_3\"",
            ),
            (env::RUN, None, "RTUNE_RUN: is not set"),
            (
                env::RUN,
                Some("-1"),
                "RTUNE_RUN: \"-1\" is not a run number",
            ),
            (env::TRIAL_DIR, Some(""), "RTUNE_TRIAL_DIR: is empty"),
            (env::SCRATCH_DIR, None, "RTUNE_SCRATCH_DIR: is not set"),
            (
                env::ADDR,
                Some("localhost"),
                "RTUNE_ADDR: \"localhost\" is not host:port",
            ),
            (env::ADDR, Some(":80"), "RTUNE_ADDR"),
            (
                env::PROTOCOL,
                Some("2"),
                "RTUNE_PROTOCOL: protocol version \"2\"",
            ),
            (
                env::CONFIG,
                Some("[1]"),
                "RTUNE_CONFIG: is not a JSON object",
            ),
            (env::CONFIG, Some("{"), "RTUNE_CONFIG: is not valid JSON"),
            (
                env::CONFIG,
                None,
                "RTUNE_CONFIG: neither RTUNE_CONFIG nor RTUNE_CONFIG_FILE",
            ),
            (RANK_VAR, Some("one"), "RANK: \"one\" is not a process rank"),
            (
                env::RESTORE_ITERATION,
                Some("x"),
                "RTUNE_RESTORE_ITERATION: \"x\"",
            ),
            (
                env::RESTORE_ITERATION,
                Some("3"),
                "RTUNE_RESTORE_ITERATION: is set but RTUNE_RESTORE_DIR is not",
            ),
        ];
        for (var, value, expected) in cases {
            let mut vars = base();
            match value {
                Some(v) => vars.insert(var, v.to_string()),
                None => vars.remove(var),
            };
            let message = error(&vars);
            assert!(
                message.starts_with(expected),
                "{var}={value:?}: {message:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn the_config_file_is_read_when_the_variable_is_absent() {
        let dir = std::env::temp_dir().join(format!("rtune-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("params.json");
        std::fs::write(&file, r#"{"lr":0.5}"#).unwrap();
        let mut vars = base();
        vars.remove(env::CONFIG);
        vars.insert(env::CONFIG_FILE, file.to_string_lossy().into_owned());
        let s = session(&vars).unwrap().unwrap();
        assert_eq!(s.config()["lr"], 0.5);
        vars.insert(
            env::CONFIG_FILE,
            dir.join("missing.json").to_string_lossy().into(),
        );
        let message = error(&vars);
        assert!(
            message.starts_with("RTUNE_CONFIG_FILE: cannot read"),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checkpoint_dirs_are_fresh_and_under_the_scratch_dir() {
        let dir = std::env::temp_dir().join(format!("rtune-client-ckpt-{}", std::process::id()));
        let scratch = dir.join("scratch");
        let mut vars = base();
        vars.insert(env::SCRATCH_DIR, scratch.to_string_lossy().into_owned());
        // A directory left by an earlier process with the same run must not be reused.
        std::fs::create_dir_all(scratch.join("checkpoint_run2_rank0_00000")).unwrap();
        let mut s = session(&vars).unwrap().unwrap();
        let a = s.new_checkpoint_dir().unwrap();
        let b = s.new_checkpoint_dir().unwrap();
        assert_ne!(a, b);
        for d in [&a, &b] {
            assert!(d.starts_with(&scratch) && d.is_dir());
            assert_eq!(
                std::fs::read_dir(d).unwrap().count(),
                0,
                "{d:?} is not empty"
            );
        }
        assert_ne!(a, scratch.join("checkpoint_run2_rank0_00000"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reporting_a_missing_checkpoint_names_it() {
        let mut s = session(&base()).unwrap().unwrap();
        let missing = Path::new("/nonexistent/rtune/ckpt");
        let message = s
            .report_with_checkpoint(&Map::new(), missing)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("checkpoint directory /nonexistent/rtune/ckpt: cannot read it"),
            "{message}"
        );
    }

    #[test]
    fn an_unreachable_rtune_names_the_address() {
        // Bind then drop a listener: nothing listens on that port now.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut vars = base();
        vars.insert(env::ADDR, format!("127.0.0.1:{port}"));
        let mut s = session(&vars).unwrap().unwrap();
        let message = s.report(&Map::new()).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "cannot connect to rtune at 127.0.0.1:{port} (RTUNE_ADDR)"
            )),
            "{message}"
        );
    }

    /// A stand-in for rtune that answers `per_connection[i]` requests on its i-th connection and
    /// then closes it. Returns the request lines per connection.
    /// Send on the returned channel once the client is done: the stand-in then checks that no
    /// further connection was made.
    fn fake_rtune(
        per_connection: Vec<usize>,
    ) -> (
        String,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<Vec<Vec<String>>>,
    ) {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answers in per_connection {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut lines = Vec::new();
                for _ in 0..answers {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    lines.push(line);
                    (&stream)
                        .write_all(b"{\"ok\":true,\"action\":\"continue\",\"reason\":\"\"}\n")
                        .unwrap();
                }
                seen.push(lines);
            }
            // Whoever has connected by now is a connection too many.
            done_rx.recv().unwrap();
            listener.set_nonblocking(true).unwrap();
            assert!(listener.accept().is_err(), "one connection too many");
            seen
        });
        (addr, done_tx, thread)
    }

    #[test]
    fn one_connection_is_kept_and_a_closed_one_is_replaced_once() {
        let (addr, done, fake) = fake_rtune(vec![2, 1]);
        let mut vars = base();
        vars.insert(env::ADDR, addr);
        let mut s = session(&vars).unwrap().unwrap();
        for loss in [3, 2, 1] {
            let mut metrics = Map::new();
            metrics.insert("loss".into(), loss.into());
            assert_eq!(s.report(&metrics).unwrap(), TrialAction::Continue);
        }
        done.send(()).unwrap();
        let seen = fake.join().unwrap();
        assert_eq!(seen.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
        let last: Value = serde_json::from_str(&seen[1][0]).unwrap();
        assert_eq!(last["metrics"]["loss"], 1);
        assert_eq!(last["trial"], "00004");
        assert_eq!(last["secret"], "s3cret");
    }

    #[test]
    fn a_connection_that_breaks_twice_is_an_error_naming_the_address() {
        // Both connections are closed without an answer.
        let (addr, done, fake) = fake_rtune(vec![0, 0]);
        let mut vars = base();
        vars.insert(env::ADDR, addr.clone());
        let mut s = session(&vars).unwrap().unwrap();
        // Safety net: a third attempt would wait for an answer that never comes.
        s.set_reply_timeout(Duration::from_secs(10));
        let message = s.report(&Map::new()).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "lost the connection to rtune at {addr} (RTUNE_ADDR), also after reconnecting once"
            )),
            "{message}"
        );
        done.send(()).unwrap();
        fake.join().unwrap();
    }
}

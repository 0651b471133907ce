//! The protocol server: trials connect over TCP and send one JSON request per line
//! (docs/protocol.md).
//!
//! The server owns no experiment state. It checks each request (secret, version, shape), turns a
//! valid report into a [`ReportEvent`] for the run loop, waits for the loop's answer and writes
//! it back. Every request line gets exactly one answer line, so a client can keep one connection
//! open for a whole trial. Per connection the cost is one small task and one read buffer: a
//! thousand trials reporting a few times each cost the loop nothing but the reports themselves.
//!
//! Connections are bounded ([`ConnectionLimits`]), so that whatever connects to the port, the
//! head keeps file descriptors for its journal, its state and the trials' files. A connection
//! is *authenticated* once it sent a request with a valid run token; a trial's connection is,
//! from its first report on, and may then stay idle for as long as the trial trains between
//! reports. A connection that has not authenticated within
//! [`ConnectionLimits::authenticate_within`] of being accepted is closed. At the limit, a new
//! connection evicts the oldest unauthenticated one; when every connection is authenticated,
//! new ones wait in the kernel's accept queue until one closes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rtune_core::TrialId;
use rtune_core::result::json_kind;
use rtune_protocol::{MAX_LINE_BYTES, Request, RequestBody, Response, VERSION};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};

/// A valid report, forwarded to the run loop. The loop must answer through `reply`; the trial
/// waits for that answer.
#[derive(Debug)]
pub struct ReportEvent {
    pub trial: TrialId,
    pub run: u32,
    pub metrics: serde_json::Map<String, Value>,
    /// An absolute path to a directory holding a checkpoint taken at this report.
    pub checkpoint: Option<PathBuf>,
    pub reply: oneshot::Sender<Response>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "cannot listen on {addr}: {source}\nhint: check executor.bind in the experiment file (an address of this machine, and a port that is free or 0)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The answer to every request once the run loop has gone.
pub const SHUTTING_DOWN: &str = "rtune is shutting down";

/// How long the accept loop waits after a failed accept (for example when out of file
/// descriptors) before it tries again, so a persistent failure does not spin a core.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// How long a new connection may take to send a request with a valid run token. Both clients
/// connect when they report and send the report at once.
pub const AUTHENTICATE_WITHIN: Duration = Duration::from_secs(5);
/// The most connections the server holds open, whatever the file-descriptor limit.
pub const MAX_CONNECTIONS: usize = 4096;

/// How many connections the server holds and how long they may stay unauthenticated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub authenticate_within: Duration,
}

impl ConnectionLimits {
    /// From this process's file-descriptor limit (`RLIMIT_NOFILE`, soft): a quarter of it (at
    /// least 64) stays free for everything else the head opens, the rest may be connections, up
    /// to [`MAX_CONNECTIONS`]. Under the usual limit of 1,024 that is 768 connections.
    pub fn for_this_process() -> ConnectionLimits {
        // SAFETY: rlimit is plain data that getrlimit fills in.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to an rlimit.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            limit.rlim_cur
        } else {
            1024
        };
        ConnectionLimits::for_descriptor_limit(soft)
    }

    fn for_descriptor_limit(soft: u64) -> ConnectionLimits {
        let reserved = (soft / 4).max(64);
        let usable = usize::try_from(soft.saturating_sub(reserved)).unwrap_or(usize::MAX);
        ConnectionLimits {
            max_connections: usable.clamp(1, MAX_CONNECTIONS),
            authenticate_within: AUTHENTICATE_WITHIN,
        }
    }
}

pub struct ProtocolServer;

impl ProtocolServer {
    /// Listens on `bind` and serves connections on the current tokio runtime until `reports`'
    /// receiver is dropped, within [`ConnectionLimits::for_this_process`]. Returns the address
    /// it listens on (the real port when `bind` asked for port 0).
    pub async fn start(
        bind: SocketAddr,
        secret: String,
        reports: mpsc::UnboundedSender<ReportEvent>,
    ) -> Result<SocketAddr, ServerError> {
        ProtocolServer::start_with(bind, secret, reports, ConnectionLimits::for_this_process())
            .await
    }

    /// [`ProtocolServer::start`] with the given limits.
    pub async fn start_with(
        bind: SocketAddr,
        secret: String,
        reports: mpsc::UnboundedSender<ReportEvent>,
        limits: ConnectionLimits,
    ) -> Result<SocketAddr, ServerError> {
        let bind_error = |source| ServerError::Bind { addr: bind, source };
        let listener = TcpListener::bind(bind).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let secret: Arc<str> = Arc::from(secret);
        let gate = Arc::new(Gate::new(limits.max_connections));
        tokio::spawn(accept_loop(listener, secret, reports, gate, limits));
        Ok(local)
    }
}

/// The connections the server holds: how many, and which have not authenticated yet (oldest
/// first), each with the sender that closes it.
struct Gate {
    limit: usize,
    state: Mutex<GateState>,
    /// Signalled whenever a connection ends.
    freed: Notify,
}

#[derive(Default)]
struct GateState {
    open: usize,
    next_id: u64,
    unauthenticated: BTreeMap<u64, oneshot::Sender<()>>,
}

impl Gate {
    fn new(limit: usize) -> Gate {
        Gate {
            limit,
            state: Mutex::new(GateState::default()),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is counters and senders; a panic elsewhere leaves them usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether one more connection may be accepted now: below the limit, or after evicting the
    /// oldest unauthenticated connection (which then closes).
    fn make_room(&self) -> bool {
        let mut state = self.lock();
        if state.open < self.limit {
            return true;
        }
        match state.unauthenticated.pop_first() {
            Some((_, evict)) => {
                state.open -= 1;
                let _ = evict.send(());
                true
            }
            None => false,
        }
    }

    /// Counts a new, unauthenticated connection; returns its id and what evicts it.
    fn admit(&self) -> (u64, oneshot::Receiver<()>) {
        let (evict_tx, evict_rx) = oneshot::channel();
        let mut state = self.lock();
        state.open += 1;
        let id = state.next_id;
        state.next_id += 1;
        state.unauthenticated.insert(id, evict_tx);
        (id, evict_rx)
    }

    /// The connection sent a valid token: it can no longer be evicted. False if it was evicted
    /// already.
    fn authenticate(&self, id: u64) -> bool {
        self.lock().unauthenticated.remove(&id).is_some()
    }

    /// The connection ended (not by eviction, which counted it out already).
    fn close(&self, id: u64, authenticated: bool) {
        {
            let mut state = self.lock();
            if authenticated || state.unauthenticated.remove(&id).is_some() {
                state.open -= 1;
            }
        }
        self.freed.notify_one();
    }
}

async fn accept_loop(
    listener: TcpListener,
    secret: Arc<str>,
    reports: mpsc::UnboundedSender<ReportEvent>,
    gate: Arc<Gate>,
    limits: ConnectionLimits,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("protocol server: cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
            // The run loop is gone: stop listening, so late trials get "connection refused".
            () = reports.closed() => break,
        };
        // At the limit with every connection authenticated, this one waits (unread) until one
        // closes, and later ones wait in the kernel's accept queue: one descriptor over the limit
        // at most.
        while !gate.make_room() {
            tokio::select! {
                () = gate.freed.notified() => {}
                () = reports.closed() => return,
            }
        }
        // Let an evicted connection close (and free its descriptor) before the next accept.
        tokio::task::yield_now().await;
        let (id, evicted) = gate.admit();
        let connection = Connection {
            peer,
            id,
            gate: Arc::clone(&gate),
            deadline: tokio::time::Instant::now() + limits.authenticate_within,
            evicted,
            authenticated: false,
        };
        tokio::spawn(serve_connection(
            stream,
            connection,
            secret.clone(),
            reports.clone(),
        ));
    }
}

/// One accepted connection's place in the [`Gate`].
struct Connection {
    peer: SocketAddr,
    id: u64,
    gate: Arc<Gate>,
    /// Until it authenticates: when it is closed.
    deadline: tokio::time::Instant,
    /// Fires when a newer connection needs its place (only while unauthenticated).
    evicted: oneshot::Receiver<()>,
    authenticated: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.gate.close(self.id, self.authenticated);
    }
}

enum LineRead {
    /// A line (without its newline) is in the buffer.
    Line,
    /// The line exceeded [`MAX_LINE_BYTES`].
    TooLong,
    /// The client closed the connection.
    Closed,
}

/// Reads one line into `line`, reading at most one byte past the cap.
async fn read_line(
    conn: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    line.clear();
    let cap = MAX_LINE_BYTES as u64 + 1;
    let n = (&mut *conn).take(cap).read_until(b'\n', line).await?;
    if n == 0 {
        return Ok(LineRead::Closed);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(LineRead::Line);
    }
    if line.len() > MAX_LINE_BYTES {
        return Ok(LineRead::TooLong);
    }
    // The client closed the connection after a last line without a newline: answer it anyway.
    Ok(LineRead::Line)
}

async fn serve_connection(
    stream: TcpStream,
    mut connection: Connection,
    secret: Arc<str>,
    reports: mpsc::UnboundedSender<ReportEvent>,
) {
    let peer = connection.peer;
    // Each request and answer is one small write; without this, Nagle's algorithm could hold
    // an answer back waiting for an ACK the client delays.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("protocol server: {peer}: cannot set TCP_NODELAY: {e}");
    }
    let mut conn = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        let read = if connection.authenticated {
            read_line(&mut conn, &mut line).await
        } else {
            tokio::select! {
                read = read_line(&mut conn, &mut line) => read,
                () = tokio::time::sleep_until(connection.deadline) => {
                    tracing::debug!(
                        "protocol server: {peer}: no request with a valid token within the time \
                         allowed; closing the connection"
                    );
                    return;
                }
                _ = &mut connection.evicted => {
                    tracing::debug!(
                        "protocol server: {peer}: closed (unauthenticated) to make room for a \
                         new connection"
                    );
                    return;
                }
            }
        };
        let (response, keep_open) = match read {
            Ok(LineRead::Line) => {
                let (response, keep_open, authenticated) =
                    handle_line(&line, &secret, &reports).await;
                if authenticated && !connection.authenticated {
                    if !connection.gate.authenticate(connection.id) {
                        // Evicted while its request was being checked: its place is gone.
                        return;
                    }
                    connection.authenticated = true;
                }
                (response, keep_open)
            }
            Ok(LineRead::TooLong) => (
                Response::error(format!(
                    "request line longer than {MAX_LINE_BYTES} bytes (1 MiB); the connection is \
                     closed. Send large data (checkpoints) as a directory path, not inline"
                )),
                false,
            ),
            Ok(LineRead::Closed) => return,
            Err(e) => {
                tracing::debug!("protocol server: {peer}: read failed: {e}");
                return;
            }
        };
        if let Err(e) = write_response(conn.get_mut(), &response).await {
            tracing::debug!("protocol server: {peer}: cannot answer: {e}");
            return;
        }
        if !keep_open {
            // Let the client read the answer before the connection goes.
            let _ = conn.get_mut().shutdown().await;
            return;
        }
    }
}

async fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes).await
}

/// Checks one request line and, for a valid report, waits for the run loop's answer. Returns
/// the answer, whether the connection stays open, and whether the request carried a valid run
/// token.
async fn handle_line(
    line: &[u8],
    secret: &str,
    reports: &mpsc::UnboundedSender<ReportEvent>,
) -> (Response, bool, bool) {
    let event = match check_request(line, secret) {
        Ok(checked) => checked,
        Err(Rejection {
            message,
            close,
            authenticated,
        }) => return (Response::error(message), !close, authenticated),
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    let event = ReportEvent {
        trial: event.trial,
        run: event.run,
        metrics: event.metrics,
        checkpoint: event.checkpoint,
        reply: reply_tx,
    };
    if reports.send(event).is_err() {
        return (Response::error(SHUTTING_DOWN), false, true);
    }
    match reply_rx.await {
        Ok(response) => (response, true, true),
        // The loop dropped the report unanswered: it is ending.
        Err(_) => (Response::error(SHUTTING_DOWN), false, true),
    }
}

/// A report that passed every check, before it gets its reply channel.
struct CheckedReport {
    trial: TrialId,
    run: u32,
    metrics: serde_json::Map<String, Value>,
    checkpoint: Option<PathBuf>,
}

struct Rejection {
    message: String,
    /// Whether to close the connection after answering (wrong secret).
    close: bool,
    /// Whether the request carried a valid run token (it was refused for something else).
    authenticated: bool,
}

fn reject(message: impl Into<String>) -> Rejection {
    Rejection {
        message: message.into(),
        close: false,
        authenticated: false,
    }
}

/// A refusal of a request whose run token was valid.
fn reject_authenticated(message: impl Into<String>) -> Rejection {
    Rejection {
        authenticated: true,
        ..reject(message)
    }
}

fn check_request(line: &[u8], secret: &str) -> Result<CheckedReport, Rejection> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Err(reject(
            "empty line: send one JSON object per line (see docs/protocol.md)",
        ));
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        let hint = if contains_non_finite_literal(line) {
            "; JSON has no NaN or Infinity: send null for a metric that is not a finite number"
        } else {
            ""
        };
        reject(format!("the request is not valid JSON: {e}{hint}"))
    })?;
    let Value::Object(object) = value else {
        return Err(reject(format!(
            "a request is a JSON object, got {}",
            json_kind(&value)
        )));
    };

    // The token first: nothing else about the request matters if it is not from this trial's
    // current process. It is checked against the trial and run the request names, so a token
    // only ever speaks for the run it was made for.
    let given = match object.get("secret") {
        Some(Value::String(given)) => given,
        Some(other) => {
            return Err(Rejection {
                message: format!(
                    "`secret` must be a string (RTUNE_SECRET), got {}; closing the connection",
                    json_kind(other)
                ),
                close: true,
                authenticated: false,
            });
        }
        None => {
            return Err(Rejection {
                message: "missing `secret`: every request carries RTUNE_SECRET; closing the \
                          connection"
                    .into(),
                close: true,
                authenticated: false,
            });
        }
    };
    let claimed_trial = object
        .get("trial")
        .and_then(Value::as_str)
        .and_then(parse_trial_id);
    let claimed_run = object
        .get("run")
        .and_then(Value::as_u64)
        .and_then(|run| u32::try_from(run).ok());
    let (Some(claimed_trial), Some(claimed_run)) = (claimed_trial, claimed_run) else {
        return Err(reject(
            "`trial` (the digits of RTUNE_TRIAL_ID, like \"00003\") and `run` (RTUNE_RUN, a \
             number) are needed to check RTUNE_SECRET, which is made for one trial and run",
        ));
    };
    if !token_matches(secret, claimed_trial, claimed_run, given) {
        return Err(Rejection {
            message: format!(
                "wrong secret for {} run {claimed_run}: send the RTUNE_SECRET this process was \
                 started with; it is valid only for that trial and run (a process of another \
                 trial, run or experiment?); closing the connection",
                claimed_trial.name()
            ),
            close: true,
            authenticated: false,
        });
    }

    match object.get("v") {
        Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
        Some(v) => {
            return Err(reject_authenticated(format!(
                "protocol version {v} is not supported: this rtune speaks version {VERSION} \
                 (RTUNE_PROTOCOL)"
            )));
        }
        None => {
            return Err(reject_authenticated(format!(
                "missing `v`: the protocol version, {VERSION} (RTUNE_PROTOCOL)"
            )));
        }
    }

    let request: Request = serde_json::from_value(Value::Object(object))
        .map_err(|e| reject_authenticated(format!("bad request: {e} (see docs/protocol.md)")))?;
    let trial = parse_trial_id(&request.trial).ok_or_else(|| {
        reject_authenticated(format!(
            "`trial` must be the digits of RTUNE_TRIAL_ID (like \"00003\"), got {:?}",
            request.trial
        ))
    })?;
    match request.body {
        RequestBody::Report {
            metrics,
            checkpoint,
        } => {
            let checkpoint = match checkpoint {
                None => None,
                Some(path) => Some(check_checkpoint_path(&path)?),
            };
            Ok(CheckedReport {
                trial,
                run: request.run,
                metrics,
                checkpoint,
            })
        }
    }
}

/// Checked after the token: a refusal here is of an authenticated request.
fn check_checkpoint_path(path: &str) -> Result<PathBuf, Rejection> {
    if path.is_empty() {
        return Err(reject_authenticated(
            "`checkpoint` is empty: send the path of the directory holding the checkpoint, or \
             leave the field out",
        ));
    }
    if !Path::new(path).is_absolute() {
        return Err(reject_authenticated(format!(
            "`checkpoint` {path:?} is a relative path: send an absolute path (rtune does not run \
             in the trial's working directory)"
        )));
    }
    Ok(PathBuf::from(path))
}

/// `"00003"` -> trial 3. Only ASCII digits; leading zeros are optional.
fn parse_trial_id(text: &str) -> Option<TrialId> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().map(TrialId)
}

/// Domain separation for run tokens: a token is never valid as anything else.
const TOKEN_CONTEXT: &[u8] = b"rtune run token v1";

fn token_mac(secret: &str, trial: TrialId, run: u32) -> Hmac<Sha256> {
    // HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(TOKEN_CONTEXT);
    mac.update(&[0]);
    mac.update(&trial.0.to_be_bytes());
    mac.update(&run.to_be_bytes());
    mac
}

/// The token of one run of one trial: HMAC-SHA256 of the trial id and run number, keyed with
/// the experiment's secret, as 64 hex digits. Trials get their token as `RTUNE_SECRET` and never
/// see the experiment's secret, so a trial cannot make the token of another trial or run.
pub fn run_token(secret: &str, trial: TrialId, run: u32) -> String {
    hex::encode(token_mac(secret, trial, run).finalize().into_bytes())
}

/// Whether `given` is the token of `trial`'s run `run`. The comparison takes the same time
/// however much of a guess is right (the hmac crate's constant-time verify).
fn token_matches(secret: &str, trial: TrialId, run: u32, given: &str) -> bool {
    let Ok(bytes) = hex::decode(given) else {
        return false;
    };
    token_mac(secret, trial, run).verify_slice(&bytes).is_ok()
}

fn contains_non_finite_literal(line: &[u8]) -> bool {
    [b"NaN".as_slice(), b"Infinity".as_slice()]
        .iter()
        .any(|word| line.windows(word.len()).any(|w| w == *word))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<CheckedReport, Rejection>) -> (String, bool) {
        match result {
            Ok(_) => panic!("expected a rejection"),
            Err(r) => (r.message, r.close),
        }
    }

    /// The token of trial 3 run 0 under the experiment secret "s".
    fn t3() -> String {
        run_token("s", TrialId(3), 0)
    }

    #[test]
    fn a_token_is_valid_only_for_its_trial_run_and_experiment() {
        let token = run_token("s", TrialId(3), 1);
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(token, run_token("s", TrialId(3), 1), "deterministic");
        assert!(token_matches("s", TrialId(3), 1, &token));
        assert!(token_matches("s", TrialId(3), 1, &token.to_uppercase()));
        assert!(!token_matches("s", TrialId(4), 1, &token), "another trial");
        assert!(!token_matches("s", TrialId(3), 2, &token), "another run");
        assert!(
            !token_matches("t", TrialId(3), 1, &token),
            "another experiment"
        );
        assert!(
            !token_matches("s", TrialId(3), 1, "s"),
            "the experiment secret"
        );
        assert!(!token_matches("s", TrialId(3), 1, &token[..62]));
        assert!(!token_matches("s", TrialId(3), 1, ""));
        assert!(!token_matches("s", TrialId(3), 1, "zz"));
        // Trial 1 run 23 and trial 12 run 3 must not share a token.
        assert_ne!(
            run_token("s", TrialId(1), 23),
            run_token("s", TrialId(12), 3)
        );
    }

    #[test]
    fn the_connection_limit_leaves_descriptors_for_the_head() {
        let limit = |soft| ConnectionLimits::for_descriptor_limit(soft).max_connections;
        assert_eq!(limit(1024), 768);
        assert_eq!(limit(256), 192);
        assert_eq!(limit(100), 36);
        assert_eq!(limit(10), 1);
        assert_eq!(limit(1 << 20), MAX_CONNECTIONS);
        assert_eq!(limit(u64::MAX), MAX_CONNECTIONS);
    }

    #[test]
    fn only_refusals_after_the_token_check_authenticate_a_connection() {
        let before = [
            "{not json".to_string(),
            r#"{"v":1,"secret":"x","trial":"3","run":0}"#.to_string(),
        ];
        for line in before {
            let Err(rejection) = check_request(line.as_bytes(), "s") else {
                panic!("{line} accepted");
            };
            assert!(!rejection.authenticated, "{line}");
        }
        let after = format!(r#"{{"v":2,"secret":"{}","trial":"3","run":0}}"#, t3());
        let Err(rejection) = check_request(after.as_bytes(), "s") else {
            panic!("{after} accepted");
        };
        assert!(rejection.authenticated, "{}", rejection.message);
    }

    #[test]
    fn trial_ids_are_digits() {
        assert_eq!(parse_trial_id("00003"), Some(TrialId(3)));
        assert_eq!(parse_trial_id("12"), Some(TrialId(12)));
        assert_eq!(parse_trial_id(""), None);
        assert_eq!(parse_trial_id("trial_00003"), None);
        assert_eq!(parse_trial_id("-1"), None);
        assert_eq!(parse_trial_id("+1"), None);
        assert_eq!(parse_trial_id("99999999999"), None);
    }

    #[test]
    fn a_valid_report_is_checked_into_its_parts() {
        let line = format!(
            r#"{{"v":1,"secret":"{}","trial":"00007","run":2,"type":"report","metrics":{{"loss":0.5}},"checkpoint":"/tmp/ck"}}"#,
            run_token("s", TrialId(7), 2)
        );
        let Ok(report) = check_request(line.as_bytes(), "s") else {
            panic!("valid report rejected");
        };
        assert_eq!(report.trial, TrialId(7));
        assert_eq!(report.run, 2);
        assert_eq!(report.metrics["loss"], 0.5);
        assert_eq!(report.checkpoint, Some(PathBuf::from("/tmp/ck")));
    }

    #[test]
    fn a_trial_cannot_report_as_another_trial_or_run() {
        // Trial 3's token, naming trial 4 or run 1: refused, and the connection closes.
        for (trial, run) in [("00004", 0), ("3", 1)] {
            let line = format!(
                r#"{{"v":1,"secret":"{}","trial":"{trial}","run":{run},"type":"report","metrics":{{}}}}"#,
                t3()
            );
            let (text, closes) = message(check_request(line.as_bytes(), "s"));
            assert!(text.contains("wrong secret for trial_0000"), "{text}");
            assert!(closes);
        }
        // The experiment's secret itself is no longer accepted from a trial.
        let line = br#"{"v":1,"secret":"s","trial":"3","run":0,"type":"report","metrics":{}}"#;
        assert!(message(check_request(line, "s")).0.contains("wrong secret"));
    }

    #[test]
    fn each_problem_is_named() {
        let t = t3();
        let cases: Vec<(String, &str, bool)> = vec![
            (String::new(), "empty line", false),
            ("{not json".into(), "not valid JSON", false),
            (
                r#"{"v":1,"secret":"s","metrics":{"l":NaN}}"#.into(),
                "JSON has no NaN",
                false,
            ),
            ("[1,2]".into(), "got an array", false),
            (r#"{"v":1}"#.into(), "missing `secret`", true),
            (
                r#"{"v":1,"secret":7}"#.into(),
                "`secret` must be a string",
                true,
            ),
            (
                r#"{"v":1,"secret":"x"}"#.into(),
                "are needed to check RTUNE_SECRET",
                false,
            ),
            (
                r#"{"v":1,"secret":"x","trial":"3","run":0}"#.into(),
                "wrong secret",
                true,
            ),
            (
                format!(r#"{{"secret":"{t}","trial":"3","run":0}}"#),
                "missing `v`",
                false,
            ),
            (
                format!(r#"{{"v":2,"secret":"{t}","trial":"3","run":0}}"#),
                "version 2 is not supported",
                false,
            ),
            (
                format!(
                    r#"{{"v":1,"secret":"{t}","trial":"t3","run":0,"type":"report","metrics":{{}}}}"#
                ),
                "RTUNE_TRIAL_ID",
                false,
            ),
            (
                format!(
                    r#"{{"v":1,"secret":"{t}","trial":"3","run":0,"type":"report","metrics":{{}},"checkpoint":"ck"}}"#
                ),
                "relative path",
                false,
            ),
        ];
        for (line, expected, close) in cases {
            let (text, closes) = message(check_request(line.as_bytes(), "s"));
            assert!(
                text.contains(expected),
                "{line:?}: {text:?} should contain {expected:?}"
            );
            assert_eq!(closes, close, "{text}");
        }
        let (text, _) = message(check_request(
            format!(r#"{{"v":1,"secret":"{t}","trial":"3","run":0,"type":"hello"}}"#).as_bytes(),
            "s",
        ));
        assert!(
            text.contains("bad request") && text.contains("hello"),
            "{text}"
        );
        let (text, _) = message(check_request(
            format!(r#"{{"v":1,"secret":"{t}","trial":"3","type":"report","metrics":{{}}}}"#)
                .as_bytes(),
            "s",
        ));
        assert!(text.contains("run"), "{text}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, a few levels deep.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A request object whose every field is absent, plausible or arbitrary.
        fn request() -> impl Strategy<Value = Value> {
            let field = |plausible: Value| {
                prop_oneof![
                    2 => Just(Some(plausible)),
                    1 => Just(None),
                    1 => json().prop_map(Some),
                ]
            };
            let token = Value::String(run_token("s", TrialId(3), 0));
            (
                field(Value::from(1)),
                field(token),
                field(Value::from("00003")),
                field(Value::from(0)),
                field(Value::from("report")),
                field(serde_json::json!({"loss": 0.5})),
                field(Value::from("/tmp/ck")),
            )
                .prop_map(|(v, secret, trial, run, ty, metrics, checkpoint)| {
                    let mut object = serde_json::Map::new();
                    for (key, value) in [
                        ("v", v),
                        ("secret", secret),
                        ("trial", trial),
                        ("run", run),
                        ("type", ty),
                        ("metrics", metrics),
                        ("checkpoint", checkpoint),
                    ] {
                        if let Some(value) = value {
                            object.insert(key.to_string(), value);
                        }
                    }
                    Value::Object(object)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            #[test]
            fn any_bytes_are_answered_without_a_panic(
                line in prop::collection::vec(any::<u8>(), 0..300)
            ) {
                if let Err(rejection) = check_request(&line, "s") {
                    prop_assert!(!rejection.message.is_empty());
                }
            }

            #[test]
            fn any_request_object_is_answered_without_a_panic(request in request()) {
                let line = serde_json::to_vec(&request).unwrap_or_default();
                match check_request(&line, "s") {
                    // Accepted only with the token of the trial and run it names.
                    Ok(report) => prop_assert_eq!((report.trial, report.run), (TrialId(3), 0)),
                    Err(rejection) => prop_assert!(!rejection.message.is_empty()),
                }
            }
        }
    }
}

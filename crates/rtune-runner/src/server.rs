//! The protocol server: trials connect over TCP and send one JSON request per line
//! (docs/protocol.md).
//!
//! The server owns no experiment state. It checks each request (secret, version, shape), turns a
//! valid report into a [`ReportEvent`] for the run loop, waits for the loop's answer and writes
//! it back. Every request line gets exactly one answer line, so a client can keep one connection
//! open for a whole trial. Per connection the cost is one small task and one read buffer: a
//! thousand trials reporting a few times each cost the loop nothing but the reports themselves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rtune_core::TrialId;
use rtune_protocol::{MAX_LINE_BYTES, Request, RequestBody, Response, VERSION};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

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

pub struct ProtocolServer;

impl ProtocolServer {
    /// Listens on `bind` and serves connections on the current tokio runtime until `reports`'
    /// receiver is dropped. Returns the address it listens on (the real port when `bind` asked
    /// for port 0).
    pub async fn start(
        bind: SocketAddr,
        secret: String,
        reports: mpsc::UnboundedSender<ReportEvent>,
    ) -> Result<SocketAddr, ServerError> {
        let bind_error = |source| ServerError::Bind { addr: bind, source };
        let listener = TcpListener::bind(bind).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let secret: Arc<str> = Arc::from(secret);
        tokio::spawn(accept_loop(listener, secret, reports));
        Ok(local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    secret: Arc<str>,
    reports: mpsc::UnboundedSender<ReportEvent>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(stream, peer, secret.clone(), reports.clone()));
                }
                Err(e) => {
                    tracing::warn!("protocol server: cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
            // The run loop is gone: stop listening, so late trials get "connection refused".
            () = reports.closed() => break,
        }
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
    peer: SocketAddr,
    secret: Arc<str>,
    reports: mpsc::UnboundedSender<ReportEvent>,
) {
    // Each request and answer is one small write; without this, Nagle's algorithm could hold
    // an answer back waiting for an ACK the client delays.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("protocol server: {peer}: cannot set TCP_NODELAY: {e}");
    }
    let mut conn = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        let (response, keep_open) = match read_line(&mut conn, &mut line).await {
            Ok(LineRead::Line) => handle_line(&line, &secret, &reports).await,
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
/// the answer and whether the connection stays open.
async fn handle_line(
    line: &[u8],
    secret: &str,
    reports: &mpsc::UnboundedSender<ReportEvent>,
) -> (Response, bool) {
    let event = match check_request(line, secret) {
        Ok(checked) => checked,
        Err(Rejection { message, close }) => return (Response::error(message), !close),
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
        return (Response::error(SHUTTING_DOWN), false);
    }
    match reply_rx.await {
        Ok(response) => (response, true),
        // The loop dropped the report unanswered: it is ending.
        Err(_) => (Response::error(SHUTTING_DOWN), false),
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
}

fn reject(message: impl Into<String>) -> Rejection {
    Rejection {
        message: message.into(),
        close: false,
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

    // The secret first: nothing else about the request matters if it is not from this
    // experiment's trials.
    let given = match object.get("secret") {
        Some(Value::String(given)) => given,
        Some(other) => {
            return Err(Rejection {
                message: format!(
                    "`secret` must be a string (RTUNE_SECRET), got {}; closing the connection",
                    json_kind(other)
                ),
                close: true,
            });
        }
        None => {
            return Err(Rejection {
                message: "missing `secret`: every request carries RTUNE_SECRET; closing the \
                          connection"
                    .into(),
                close: true,
            });
        }
    };
    if !secrets_match(given.as_bytes(), secret.as_bytes()) {
        return Err(Rejection {
            message: "wrong secret: send the RTUNE_SECRET this trial was started with (a process \
                      from another experiment?); closing the connection"
                .into(),
            close: true,
        });
    }

    match object.get("v") {
        Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
        Some(v) => {
            return Err(reject(format!(
                "protocol version {v} is not supported: this rtune speaks version {VERSION} \
                 (RTUNE_PROTOCOL)"
            )));
        }
        None => {
            return Err(reject(format!(
                "missing `v`: the protocol version, {VERSION} (RTUNE_PROTOCOL)"
            )));
        }
    }

    let request: Request = serde_json::from_value(Value::Object(object))
        .map_err(|e| reject(format!("bad request: {e} (see docs/protocol.md)")))?;
    let trial = parse_trial_id(&request.trial).ok_or_else(|| {
        reject(format!(
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

fn check_checkpoint_path(path: &str) -> Result<PathBuf, Rejection> {
    if path.is_empty() {
        return Err(reject(
            "`checkpoint` is empty: send the path of the directory holding the checkpoint, or \
             leave the field out",
        ));
    }
    if !Path::new(path).is_absolute() {
        return Err(reject(format!(
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

/// Compares in time that depends only on the expected secret's length, so the answer time says
/// nothing about how much of a guess was right.
fn secrets_match(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = usize::from(given.len() != expected.len());
    for (i, &byte) in expected.iter().enumerate() {
        let other = given.get(i).copied().unwrap_or(!byte);
        difference |= usize::from(byte ^ other);
    }
    std::hint::black_box(difference) == 0
}

fn contains_non_finite_literal(line: &[u8]) -> bool {
    [b"NaN".as_slice(), b"Infinity".as_slice()]
        .iter()
        .any(|word| line.windows(word.len()).any(|w| w == *word))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
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

    #[test]
    fn secrets_compare_exactly() {
        assert!(secrets_match(b"abc123", b"abc123"));
        assert!(!secrets_match(b"abc124", b"abc123"));
        assert!(!secrets_match(b"abc12", b"abc123"));
        assert!(!secrets_match(b"abc1234", b"abc123"));
        assert!(!secrets_match(b"", b"abc123"));
        assert!(secrets_match(b"", b""));
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
        let line = br#"{"v":1,"secret":"s","trial":"00007","run":2,"type":"report","metrics":{"loss":0.5},"checkpoint":"/tmp/ck"}"#;
        let Ok(report) = check_request(line, "s") else {
            panic!("valid report rejected");
        };
        assert_eq!(report.trial, TrialId(7));
        assert_eq!(report.run, 2);
        assert_eq!(report.metrics["loss"], 0.5);
        assert_eq!(report.checkpoint, Some(PathBuf::from("/tmp/ck")));
    }

    #[test]
    fn each_problem_is_named() {
        let cases: [(&[u8], &str, bool); 11] = [
            (b"", "empty line", false),
            (b"{not json", "not valid JSON", false),
            (
                br#"{"v":1,"secret":"s","metrics":{"l":NaN}}"#,
                "JSON has no NaN",
                false,
            ),
            (b"[1,2]", "got an array", false),
            (br#"{"v":1}"#, "missing `secret`", true),
            (br#"{"v":1,"secret":7}"#, "`secret` must be a string", true),
            (br#"{"v":1,"secret":"x"}"#, "wrong secret", true),
            (br#"{"secret":"s"}"#, "missing `v`", false),
            (br#"{"v":2,"secret":"s"}"#, "version 2 is not supported", false),
            (
                br#"{"v":1,"secret":"s","trial":"t3","run":0,"type":"report","metrics":{}}"#,
                "RTUNE_TRIAL_ID",
                false,
            ),
            (
                br#"{"v":1,"secret":"s","trial":"3","run":0,"type":"report","metrics":{},"checkpoint":"ck"}"#,
                "relative path",
                false,
            ),
        ];
        for (line, expected, close) in cases {
            let (text, closes) = message(check_request(line, "s"));
            assert!(
                text.contains(expected),
                "{:?}: {text:?} should contain {expected:?}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(closes, close, "{text}");
        }
        let (text, _) = message(check_request(
            br#"{"v":1,"secret":"s","trial":"3","run":0,"type":"hello"}"#,
            "s",
        ));
        assert!(
            text.contains("bad request") && text.contains("hello"),
            "{text}"
        );
        let (text, _) = message(check_request(
            br#"{"v":1,"secret":"s","trial":"3","type":"report","metrics":{}}"#,
            "s",
        ));
        assert!(text.contains("run"), "{text}");
    }
}

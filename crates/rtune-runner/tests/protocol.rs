//! The protocol server against the Rust client, the Python client and raw TCP.
//!
//! The server runs in a current-thread tokio runtime on its own thread, as in rtune; a task
//! there plays the run loop and answers each report as the test says.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rtune_client::{ClientError, Session, TrialAction};
use rtune_core::TrialId;
use rtune_protocol::{MAX_LINE_BYTES, Response};
use rtune_runner::server::{
    ConnectionLimits, ProtocolServer, ReportEvent, SHUTTING_DOWN, run_token,
};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The token (`RTUNE_SECRET`) of trial `trial`'s run `run` in the test experiment.
fn token(trial: u32, run: u32) -> String {
    run_token(SECRET, TrialId(trial), run)
}

/// A report as the answering task saw it, including the files of a reported checkpoint as they
/// were when the report arrived (rtune takes the directory over before it answers).
#[derive(Debug)]
struct Received {
    trial: TrialId,
    run: u32,
    metrics: Map<String, Value>,
    checkpoint: Option<PathBuf>,
    checkpoint_files: HashMap<String, String>,
}

type Answer = Box<dyn FnMut(&ReportEvent, usize) -> Response + Send>;

struct Server {
    addr: SocketAddr,
    received: std_mpsc::Receiver<Received>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// `answer(report, n)`: the response to the `n`-th report (from 0) of that trial.
    fn start(answer: Answer) -> Server {
        Server::start_with(answer, ConnectionLimits::for_this_process())
    }

    /// [`Server::start`] with the given connection limits.
    fn start_with(mut answer: Answer, limits: ConnectionLimits) -> Server {
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let (received_tx, received) = std_mpsc::channel();
        let (shutdown, mut shutdown_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let (tx, mut reports) = mpsc::unbounded_channel();
                let bind: SocketAddr = "127.0.0.1:0".parse().expect("address");
                let addr = ProtocolServer::start_with(bind, SECRET.to_string(), tx, limits)
                    .await
                    .expect("server starts");
                addr_tx.send(addr).expect("test waits for the address");
                let mut counts: HashMap<TrialId, usize> = HashMap::new();
                loop {
                    tokio::select! {
                        Some(event) = reports.recv() => {
                            let n = counts.entry(event.trial).or_default();
                            let response = answer(&event, *n);
                            *n += 1;
                            let checkpoint_files = event
                                .checkpoint
                                .as_deref()
                                .map(read_files)
                                .unwrap_or_default();
                            let _ = received_tx.send(Received {
                                trial: event.trial,
                                run: event.run,
                                metrics: event.metrics.clone(),
                                checkpoint: event.checkpoint.clone(),
                                checkpoint_files,
                            });
                            let _ = event.reply.send(response);
                        }
                        _ = &mut shutdown_rx => break,
                    }
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server address");
        Server {
            addr,
            received,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// The next report the answering task saw (a safety-net timeout fails the test).
    fn next(&self) -> Received {
        self.received
            .recv_timeout(Duration::from_secs(30))
            .expect("a report reached the run loop")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_files(dir: &Path) -> HashMap<String, String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    (name, text)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn trial_env(
    addr: &str,
    trial: &str,
    run: u32,
    dir: &Path,
    config: &Value,
) -> HashMap<&'static str, String> {
    use rtune_protocol::env;
    let trial_dir = dir.join(format!("trial_{trial}"));
    HashMap::from([
        (env::PROTOCOL, "1".to_string()),
        (env::ADDR, addr.to_string()),
        (
            env::SECRET,
            token(trial.parse().expect("trial id digits"), run),
        ),
        (env::TRIAL_ID, trial.to_string()),
        (env::TRIAL_NAME, format!("trial_{trial}")),
        (env::RUN, run.to_string()),
        (env::TRIAL_DIR, trial_dir.to_string_lossy().into_owned()),
        (env::EXPERIMENT_DIR, dir.to_string_lossy().into_owned()),
        (
            env::SCRATCH_DIR,
            trial_dir.join("scratch").to_string_lossy().into_owned(),
        ),
        (env::CONFIG, config.to_string()),
    ])
}

fn session(vars: &HashMap<&'static str, String>) -> Session {
    Session::from_vars(|name| vars.get(name).cloned())
        .expect("environment is complete")
        .expect("RTUNE_ADDR is set")
}

fn metrics(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("metrics must be an object, got {other}"),
    }
}

fn scripted(actions: &'static [(TrialAction, &'static str)]) -> Answer {
    Box::new(move |_, n| {
        let (action, reason) = actions
            .get(n)
            .copied()
            .unwrap_or((TrialAction::Stop, "end"));
        Response::action(action, reason)
    })
}

#[test]
fn the_rust_client_reports_and_hands_over_a_checkpoint() {
    let server = Server::start(scripted(&[
        (TrialAction::Continue, "no rung reached"),
        (TrialAction::Pause, "pbt: exploit"),
    ]));
    let dir = tempfile::tempdir().expect("tempdir");
    let vars = trial_env(
        &server.addr.to_string(),
        "00003",
        2,
        dir.path(),
        &json!({"lr": 0.1}),
    );
    let mut s = session(&vars);
    assert_eq!(s.config()["lr"], 0.1);

    let first = s
        .report(&metrics(json!({"loss": 1.5, "diverged": f64::NAN})))
        .expect("first report");
    assert_eq!(first, TrialAction::Continue);
    let got = server.next();
    assert_eq!((got.trial, got.run), (TrialId(3), 2));
    assert_eq!(got.metrics["loss"], 1.5);
    assert_eq!(got.metrics["diverged"], Value::Null, "NaN travels as null");
    assert_eq!(got.checkpoint, None);

    let ckpt = s.new_checkpoint_dir().expect("checkpoint dir");
    std::fs::write(ckpt.join("weights.bin"), "step-2").expect("write checkpoint");
    let second = s
        .report_with_checkpoint(&metrics(json!({"loss": 1.0})), &ckpt)
        .expect("second report");
    assert_eq!(second, TrialAction::Pause);
    assert!(second.should_exit());
    let got = server.next();
    assert_eq!(got.checkpoint.as_deref(), Some(ckpt.as_path()));
    assert_eq!(got.checkpoint_files["weights.bin"], "step-2");
}

#[test]
fn a_relative_checkpoint_path_is_sent_absolute() {
    let server = Server::start(scripted(&[(TrialAction::Continue, "")]));
    let dir = tempfile::tempdir().expect("tempdir");
    let vars = trial_env(&server.addr.to_string(), "1", 0, dir.path(), &json!({}));
    let mut s = session(&vars);
    // The test's working directory is the crate; make a checkpoint dir relative to it.
    let relative = PathBuf::from(format!("target/rtune-test-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&relative).expect("mkdir");
    let action = s
        .report_with_checkpoint(&Map::new(), &relative)
        .expect("report");
    assert_eq!(action, TrialAction::Continue);
    let got = server.next();
    let sent = got.checkpoint.expect("checkpoint forwarded");
    assert!(sent.is_absolute(), "{sent:?}");
    assert_eq!(
        sent.canonicalize().expect("exists"),
        relative.canonicalize().expect("exists")
    );
    std::fs::remove_dir_all(&relative).expect("cleanup");
}

#[test]
fn a_wrong_secret_is_refused_and_nothing_reaches_the_loop() {
    let server = Server::start(scripted(&[(TrialAction::Continue, "")]));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vars = trial_env(&server.addr.to_string(), "00001", 0, dir.path(), &json!({}));
    vars.insert(rtune_protocol::env::SECRET, "not-the-secret".to_string());
    let mut s = session(&vars);
    for _ in 0..2 {
        // rtune closes the connection after refusing; the second report reconnects.
        match s.report(&Map::new()) {
            Err(ClientError::Refused { message, .. }) => {
                assert!(message.contains("wrong secret"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // The right secret on the same server works, and is the first report the loop sees.
    vars.insert(rtune_protocol::env::SECRET, token(1, 0));
    let mut good = session(&vars);
    assert_eq!(
        good.report(&metrics(json!({"x": 1}))).expect("report"),
        TrialAction::Continue
    );
    assert_eq!(server.next().metrics["x"], 1);
    assert!(server.received.try_recv().is_err());
}

fn send_line(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, line: &str) -> Value {
    stream.write_all(line.as_bytes()).expect("write");
    stream.write_all(b"\n").expect("write");
    let mut answer = String::new();
    reader.read_line(&mut answer).expect("read answer");
    serde_json::from_str(&answer).expect("answer is JSON")
}

fn raw_connection(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    (stream, reader)
}

#[test]
fn malformed_lines_are_answered_and_the_connection_stays_usable() {
    let server = Server::start(scripted(&[(TrialAction::Stop, "reached max_t = 1")]));
    let (mut stream, mut reader) = raw_connection(server.addr);

    let answer = send_line(&mut stream, &mut reader, "{not json");
    assert_eq!(answer["ok"], false);
    let error = answer["error"].as_str().expect("error text");
    assert!(error.contains("not valid JSON"), "{error}");

    let t = token(1, 0);
    let v2 = format!(r#"{{"v":2,"secret":"{t}","trial":"1","run":0}}"#);
    let answer = send_line(&mut stream, &mut reader, &v2);
    let error = answer["error"].as_str().expect("error text");
    assert!(error.contains("version 2 is not supported"), "{error}");

    let bad_id = format!(
        r#"{{"v":1,"secret":"{t}","trial":"trial_00001","run":0,"type":"report","metrics":{{}}}}"#
    );
    let answer = send_line(&mut stream, &mut reader, &bad_id);
    let error = answer["error"].as_str().expect("error text");
    assert!(error.contains("RTUNE_TRIAL_ID"), "{error}");

    let no_metrics = format!(r#"{{"v":1,"secret":"{t}","trial":"1","run":0,"type":"report"}}"#);
    let answer = send_line(&mut stream, &mut reader, &no_metrics);
    let error = answer["error"].as_str().expect("error text");
    assert!(error.contains("metrics"), "{error}");

    // The documented line format, on the same connection.
    let t4 = token(1, 4);
    let report = format!(
        r#"{{"v":1,"secret":"{t4}","trial":"00001","run":4,"type":"report","metrics":{{"loss":0.25}}}}"#
    );
    let answer = send_line(&mut stream, &mut reader, &report);
    assert_eq!(
        answer,
        json!({"ok": true, "action": "stop", "reason": "reached max_t = 1"})
    );
    let got = server.next();
    assert_eq!((got.trial, got.run), (TrialId(1), 4));
    assert_eq!(got.metrics["loss"], 0.25);
}

#[test]
fn a_wrong_secret_closes_a_raw_connection() {
    let server = Server::start(scripted(&[]));
    let (mut stream, mut reader) = raw_connection(server.addr);
    let answer = send_line(
        &mut stream,
        &mut reader,
        r#"{"v":1,"secret":"guess","trial":"1","run":0,"type":"report","metrics":{}}"#,
    );
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"]
            .as_str()
            .expect("text")
            .contains("wrong secret")
    );
    let mut rest = String::new();
    assert_eq!(reader.read_line(&mut rest).expect("read"), 0, "closed");
}

#[test]
fn a_line_over_one_mebibyte_is_refused_and_the_connection_closed() {
    let server = Server::start(scripted(&[]));
    let (mut stream, mut reader) = raw_connection(server.addr);
    // Exactly one byte over the cap and no newline: the server reads all of it, so closing
    // afterwards cannot reset the connection before the answer is read.
    stream
        .write_all(&vec![b'a'; MAX_LINE_BYTES + 1])
        .expect("write");
    let mut answer = String::new();
    reader.read_line(&mut answer).expect("read");
    let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
    assert!(
        answer["error"].as_str().expect("text").contains("1 MiB"),
        "{answer}"
    );
    let mut rest = String::new();
    assert_eq!(reader.read_line(&mut rest).expect("read"), 0, "closed");
}

#[test]
fn ranks_other_than_zero_never_connect() {
    // Nothing listens on this port: any connection attempt would fail the report.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut vars = trial_env(
        &format!("127.0.0.1:{port}"),
        "00002",
        0,
        dir.path(),
        &json!({}),
    );
    vars.insert(rtune_client::RANK_VAR, "1".to_string());
    let mut s = session(&vars);
    assert_eq!(s.rank(), 1);
    assert_eq!(
        s.report(&Map::new()).expect("rank 1"),
        TrialAction::Continue
    );
    assert_eq!(
        s.report_with_checkpoint(&Map::new(), Path::new("/nonexistent"))
            .expect("rank 1"),
        TrialAction::Continue
    );
    // Rank 0 with the same environment does try, and names the address.
    vars.insert(rtune_client::RANK_VAR, "0".to_string());
    let message = session(&vars).report(&Map::new()).unwrap_err().to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
}

#[test]
fn once_the_loop_is_gone_reports_are_told_rtune_is_shutting_down() {
    let (addr_tx, addr_rx) = std_mpsc::channel();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let (tx, mut reports) = mpsc::unbounded_channel::<ReportEvent>();
            let addr =
                ProtocolServer::start("127.0.0.1:0".parse().expect("addr"), SECRET.into(), tx)
                    .await
                    .expect("start");
            addr_tx.send(addr).expect("send addr");
            let event = reports.recv().await.expect("first report");
            // The loop ends before it answers: the answer arrives after the receiver is gone.
            drop(reports);
            let _ = event
                .reply
                .send(Response::action(TrialAction::Continue, "ok"));
            // Keep serving the open connection until the test has its answer.
            let _ = done_rx.await;
        });
    });
    let addr: SocketAddr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("address");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = session(&trial_env(
        &addr.to_string(),
        "00001",
        0,
        dir.path(),
        &json!({}),
    ));
    assert_eq!(s.report(&Map::new()).expect("first"), TrialAction::Continue);
    match s.report(&Map::new()) {
        Err(ClientError::Refused { message, .. }) => assert_eq!(message, SHUTTING_DOWN),
        other => panic!("expected the shutdown answer, got {other:?}"),
    }
    let _ = done_tx.send(());
    thread.join().expect("server thread");
}

/// A valid report line of trial `trial`, run 0.
fn report_line(trial: u32) -> String {
    json!({"v": 1, "secret": token(trial, 0), "trial": format!("{trial:05}"), "run": 0,
           "type": "report", "metrics": {"loss": 1.0}})
    .to_string()
}

/// Whether the server closed `reader`'s connection (EOF) within the read timeout.
fn closed_by_server(reader: &mut BufReader<TcpStream>) -> bool {
    let mut rest = String::new();
    matches!(reader.read_line(&mut rest), Ok(0))
}

#[test]
fn connections_without_a_valid_token_are_closed_and_authenticated_ones_stay_open() {
    let server = Server::start_with(
        scripted(&[(TrialAction::Continue, ""), (TrialAction::Continue, "")]),
        ConnectionLimits {
            max_connections: 64,
            authenticate_within: Duration::from_millis(200),
        },
    );
    // A trial's connection: authenticated by its first report.
    let (mut trial, mut trial_reader) = raw_connection(server.addr);
    let answer = send_line(&mut trial, &mut trial_reader, &report_line(1));
    assert_eq!(answer["action"], "continue", "{answer}");
    // Idle connections, one that sends garbage, one that sends only half a line.
    let mut idle: Vec<(TcpStream, BufReader<TcpStream>)> =
        (0..20).map(|_| raw_connection(server.addr)).collect();
    let (mut garbage, mut garbage_reader) = raw_connection(server.addr);
    let answer = send_line(&mut garbage, &mut garbage_reader, "{not json");
    assert!(answer["error"].as_str().is_some(), "{answer}");
    let (mut half, half_reader) = raw_connection(server.addr);
    half.write_all(b"{\"v\":1,").expect("write");
    idle.push((garbage, garbage_reader));
    idle.push((half, half_reader));
    for (_, reader) in &mut idle {
        assert!(
            closed_by_server(reader),
            "an unauthenticated connection stays open"
        );
    }
    // The trial's connection has been idle longer than that, and is still served.
    let answer = send_line(&mut trial, &mut trial_reader, &report_line(1));
    assert_eq!(answer["action"], "continue", "{answer}");
    assert_eq!(server.next().trial, TrialId(1));
    assert_eq!(server.next().trial, TrialId(1));
}

#[test]
fn at_the_limit_a_new_connection_evicts_the_oldest_unauthenticated_one() {
    let server = Server::start_with(
        scripted(&[(TrialAction::Continue, "")]),
        ConnectionLimits {
            max_connections: 4,
            authenticate_within: Duration::from_secs(600),
        },
    );
    let mut idle: Vec<(TcpStream, BufReader<TcpStream>)> =
        (0..4).map(|_| raw_connection(server.addr)).collect();
    // A fifth connection, from a trial: it takes the place of the oldest idle one at once.
    let dir = tempfile::tempdir().expect("tempdir");
    let vars = trial_env(&server.addr.to_string(), "00002", 0, dir.path(), &json!({}));
    let mut s = session(&vars);
    assert_eq!(
        s.report(&metrics(json!({"loss": 0.5}))).expect("report"),
        TrialAction::Continue
    );
    assert_eq!(server.next().trial, TrialId(2));
    assert!(
        closed_by_server(&mut idle[0].1),
        "the oldest idle one was closed"
    );
    // The rest were not needed and stay.
    for (stream, _) in &idle[1..] {
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
    }
    for (_, reader) in &mut idle[1..] {
        let mut rest = String::new();
        assert!(
            reader.read_line(&mut rest).is_err(),
            "still open (the read timed out)"
        );
    }
}

#[test]
fn when_every_connection_is_authenticated_a_new_one_waits_for_a_free_place() {
    let server = Server::start_with(
        Box::new(|_, _| Response::action(TrialAction::Continue, "")),
        ConnectionLimits {
            max_connections: 2,
            authenticate_within: Duration::from_secs(600),
        },
    );
    let mut trials: Vec<(TcpStream, BufReader<TcpStream>)> =
        (1..=2).map(|_| raw_connection(server.addr)).collect();
    for (n, (stream, reader)) in trials.iter_mut().enumerate() {
        let answer = send_line(stream, reader, &report_line(n as u32 + 1));
        assert_eq!(answer["action"], "continue", "{answer}");
    }
    // A third trial connects (the kernel queues it) and reports: not served while both stay.
    let (mut third, mut third_reader) = raw_connection(server.addr);
    third
        .write_all(format!("{}\n", report_line(3)).as_bytes())
        .expect("write");
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut answer = String::new();
    assert!(third_reader.read_line(&mut answer).is_err(), "{answer}");
    // One trial ends: the third is served.
    drop(trials.remove(0));
    third
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    third_reader.read_line(&mut answer).expect("answered");
    let answer: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(answer["action"], "continue", "{answer}");
}

/// `python3`, or None (with a note) where it is missing.
fn python3() -> Option<Command> {
    match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => Some(Command::new("python3")),
        _ => {
            eprintln!("NOTE: python3 not found; skipping the Python client test");
            None
        }
    }
}

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python")
}

const PYTHON_REPORTS: &str = r#"
import os, sys
import rtune_client as rc

s = rc.session()
assert s is not None
assert s.config == {"lr": 0.01, "model": {"layers": 2}}, s.config
assert (s.trial_id, s.trial_name, s.run, s.rank) == ("00005", "trial_00005", 1, 0)
assert s.restore_dir is None and s.restore_iteration is None
assert s.report({"loss": 1.5, "acc": float("nan")}) == "continue"
assert s.last_reason == "first result at rung 1", s.last_reason
ckpt = s.new_checkpoint_dir()
assert ckpt.startswith(os.environ["RTUNE_SCRATCH_DIR"]) and os.listdir(ckpt) == []
with open(os.path.join(ckpt, "model.txt"), "w") as f:
    f.write("weights at 2")
assert s.report({"loss": 1.0}, checkpoint_dir=ckpt) == "continue"
assert s.report({"loss": 0.5}) == "stop"
try:
    s.report([1, 2])
    raise SystemExit("a list was accepted as metrics")
except rc.RtuneError as e:
    assert "metrics must be a dict" in str(e)
try:
    s.report({"bad": object()})
    raise SystemExit("an object was sent as a metric")
except rc.RtuneError as e:
    assert "cannot be sent as JSON" in str(e), e
assert rc.session({}) is None
env = dict(os.environ)
del env["RTUNE_SECRET"]
try:
    rc.session(env)
    raise SystemExit("a missing secret was accepted")
except rc.RtuneError as e:
    assert str(e).startswith("RTUNE_SECRET: is not set"), e
print("reports ok")
"#;

const PYTHON_CALLBACK: &str = r#"
import json, os, sys, types
try:
    import transformers  # the real one, if installed
except ImportError:
    fake = types.ModuleType("transformers")
    class TrainerCallback:
        pass
    fake.TrainerCallback = TrainerCallback
    sys.modules["transformers"] = fake

import rtune_client
from rtune_client import RtuneCallback

class State:
    global_step = 10
    def save_to_json(self, path):
        with open(path, "w") as f:
            json.dump({"global_step": self.global_step}, f)

class Control:
    should_training_stop = False
    should_save = True

class Trainer:
    optimizer = None
    lr_scheduler = None
    def save_model(self, path):
        with open(os.path.join(path, "model.safetensors"), "w") as f:
            f.write("model")

callback = RtuneCallback(Trainer())
state, control = State(), Control()
callback.on_evaluate(None, state, control, metrics={"eval_loss": 2.0, "epoch": 1.0})
assert not control.should_training_stop and callback.action == "continue"
state.global_step = 20
callback.on_evaluate(None, state, control, metrics={"eval_loss": 1.0, "epoch": 2.0})
assert control.should_training_stop and not control.should_save
assert callback.action == "pause", callback.action
# A later evaluation (trainer.evaluate() after train()) reports nothing more.
callback.on_evaluate(None, state, control, metrics={"eval_loss": 0.5})
print("callback ok")
"#;

fn run_python(
    python: &mut Command,
    script: &str,
    vars: &HashMap<&'static str, String>,
) -> std::process::Output {
    python
        .arg("-c")
        .arg(script)
        .env_remove("RANK")
        .env("PYTHONPATH", python_dir())
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("python3 runs")
}

#[test]
fn the_python_client_reports_and_its_trainer_callback_stops_training() {
    let Some(mut python) = python3() else {
        return;
    };
    let server = Server::start(Box::new(|event, n| match (event.trial, n) {
        (TrialId(5), 0) => Response::action(TrialAction::Continue, "first result at rung 1"),
        (TrialId(5), 1) => Response::action(TrialAction::Continue, ""),
        (TrialId(6), 0) => Response::action(TrialAction::Continue, ""),
        (TrialId(6), 1) => Response::action(TrialAction::Pause, "pbt: exploit"),
        _ => Response::action(TrialAction::Stop, "done"),
    }));
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = server.addr.to_string();

    let vars = trial_env(
        &addr,
        "00005",
        1,
        dir.path(),
        &json!({"lr": 0.01, "model": {"layers": 2}}),
    );
    let out = run_python(&mut python, PYTHON_REPORTS, &vars);
    assert!(
        out.status.success(),
        "python client failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Received> = (0..3).map(|_| server.next()).collect();
    assert!(reports.iter().all(|r| r.trial == TrialId(5) && r.run == 1));
    assert_eq!(reports[0].metrics["loss"], 1.5);
    assert_eq!(
        reports[0].metrics["acc"],
        Value::Null,
        "NaN travels as null"
    );
    let scratch = dir.path().join("trial_00005/scratch");
    let ckpt = reports[1].checkpoint.as_ref().expect("checkpoint");
    assert!(ckpt.starts_with(&scratch), "{ckpt:?}");
    assert_eq!(reports[1].checkpoint_files["model.txt"], "weights at 2");
    assert_eq!(reports[2].metrics["loss"], 0.5);

    let vars = trial_env(&addr, "00006", 0, dir.path(), &json!({}));
    let Some(mut python) = python3() else {
        return;
    };
    let out = run_python(&mut python, PYTHON_CALLBACK, &vars);
    assert!(
        out.status.success(),
        "callback test failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first = server.next();
    assert_eq!(first.trial, TrialId(6));
    assert_eq!(first.metrics["eval_loss"], 2.0);
    assert_eq!(first.metrics["global_step"], 10);
    assert_eq!(first.checkpoint_files["model.safetensors"], "model");
    assert_eq!(
        first.checkpoint_files["trainer_state.json"],
        r#"{"global_step": 10}"#
    );
    let second = server.next();
    assert_eq!(second.metrics["global_step"], 20);
    // Reports are recorded before they are answered and the script has exited: a third report
    // would be here.
    assert!(server.received.try_recv().is_err(), "reported after pause");
}

/// The Python block of docs/protocol.md that follows the marker naming this test.
fn documented_example() -> String {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md"),
    )
    .expect("docs/protocol.md");
    let after_marker = doc
        .split_once("the_documented_python_example_runs")
        .expect("the example's marker is in docs/protocol.md")
        .1;
    let block = after_marker
        .split_once("```python\n")
        .expect("a python block follows the marker")
        .1;
    block
        .split_once("```")
        .expect("the block ends")
        .0
        .to_string()
}

#[test]
fn the_documented_python_example_runs() {
    let Some(mut python) = python3() else {
        return;
    };
    let server = Server::start(Box::new(|event, n| match (event.run, n) {
        (0, 0 | 1) => Response::action(TrialAction::Continue, ""),
        (0, _) => Response::action(TrialAction::Pause, "pbt: exploit"),
        _ => Response::action(TrialAction::Stop, "reached max_t = 4"),
    }));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = json!({"x0": 3.0, "lr": 0.1});
    let example = documented_example();
    let mut vars = trial_env(&server.addr.to_string(), "00007", 0, dir.path(), &config);
    let out = run_python(&mut python, &example, &vars);
    assert!(
        out.status.success(),
        "the documented example failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Received> = (0..3).map(|_| server.next()).collect();
    let losses: Vec<f64> = reports
        .iter()
        .map(|r| r.metrics["loss"].as_f64().expect("loss is a number"))
        .collect();
    // x <- x - 0.1 * 2x = 0.8x from 3.0: 2.4, 1.92, 1.536.
    for (loss, x) in losses.iter().zip([2.4_f64, 1.92, 1.536]) {
        assert!((loss - x * x).abs() < 1e-9, "{losses:?}");
    }
    let last = reports[2].checkpoint.as_ref().expect("checkpoint");
    assert!(last.ends_with("run0_step3"), "{last:?}");
    assert_eq!(reports[2].checkpoint_files["x.json"].trim(), "1.536");

    // Run 1 restores from the paused checkpoint and continues at iteration 4.
    let mut python = python3().expect("python3 was there a moment ago");
    vars.insert(rtune_protocol::env::RUN, "1".to_string());
    vars.insert(rtune_protocol::env::SECRET, token(7, 1));
    vars.insert(
        rtune_protocol::env::RESTORE_DIR,
        last.to_string_lossy().into_owned(),
    );
    vars.insert(rtune_protocol::env::RESTORE_ITERATION, "3".to_string());
    let out = run_python(&mut python, &example, &vars);
    assert!(
        out.status.success(),
        "the restored run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed = server.next();
    assert_eq!(resumed.run, 1);
    let expected = 1.536_f64 * 0.8;
    let loss = resumed.metrics["loss"].as_f64().expect("number");
    assert!((loss - expected * expected).abs() < 1e-9, "{loss}");
    let ckpt = resumed.checkpoint.as_ref().expect("checkpoint");
    assert!(ckpt.ends_with("run1_step4"), "{ckpt:?}");
}

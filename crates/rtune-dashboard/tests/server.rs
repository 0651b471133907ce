//! `serve` over real HTTP: the page, the experiments list, the server-sent-events stream (a
//! snapshot, then a line appended to a trial's result.json arriving as an update), the trial
//! files, and the token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::Path;
use std::time::Duration;

use rtune_dashboard::{ServeOptions, serve};
use serde_json::{Value, json};

fn write_experiment(dir: &Path) {
    let state = json!({
        "format": 1, "name": "fixture", "status": "running", "metric": "loss", "mode": "min",
        "scheduler": "asha", "searcher": "random", "parameters": ["lr"], "total_trials": 2,
        "started_at": 1000.0, "finished_at": null,
        "placements": {"00000": "local cpu=1 gpu=0"},
        "trials": [
            {"id": 0, "config": {"lr": 0.1}, "status": "RUNNING", "tag": "", "iteration": 2,
             "time_total_s": 2.0, "best": [0.5, 2], "runs": 1, "failures": 0, "error": null},
            {"id": 1, "config": {"lr": 0.01}, "status": "ERROR", "tag": "", "iteration": 0,
             "time_total_s": 0.0, "best": null, "runs": 1, "failures": 1, "error": "exit status 1"}
        ]
    });
    std::fs::write(dir.join("experiment_state.json"), state.to_string()).expect("write state");
    std::fs::write(
        dir.join("experiment.toml"),
        "name = \"fixture\"\n[space]\nlr = { loguniform = [0.001, 1.0] }\nepochs = 3\n",
    )
    .expect("write experiment.toml");
    std::fs::create_dir_all(dir.join("trial_00000")).expect("mkdir");
    std::fs::write(
        dir.join("trial_00000/result.json"),
        "{\"loss\":0.9,\"training_iteration\":1,\"time_total_s\":1.0,\"timestamp\":1001}\n\
         {\"loss\":0.5,\"training_iteration\":2,\"time_total_s\":2.0,\"timestamp\":1002}\n",
    )
    .expect("write results");
    std::fs::write(dir.join("trial_00000/stderr.log"), "warming up\nepoch 2\n").expect("stderr");
    std::fs::write(
        dir.join("decisions.jsonl"),
        "{\"trial\":0,\"action\":\"continue\",\"reason\":\"ok\",\"time\":1001.5,\"training_iteration\":1}\n",
    )
    .expect("decisions");
}

/// A GET request; returns the status line, headers and (for non-streams) the body.
fn get(port: u16, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.to_string(), body.to_string())
}

/// Reads one server-sent event (`event:` and `data:` lines up to a blank line).
fn next_event(reader: &mut impl BufRead) -> (String, String) {
    let (mut event, mut data) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read an event line");
        assert!(n > 0, "the stream ended");
        let line = line.trim_end();
        // Chunked transfer: skip the chunk-size lines.
        if let Some(rest) = line.strip_prefix("event:") {
            event = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("data:") {
            data.push_str(rest.trim_start());
        } else if line.is_empty() && !event.is_empty() {
            return (event, data);
        }
    }
}

fn start(dir: &Path, token: Option<String>) -> u16 {
    let options = ServeOptions {
        dirs: vec![dir.to_path_buf()],
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        interval: Duration::from_millis(20),
        token,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = runtime.block_on(serve(
            options,
            |url| {
                let _ = tx.send(url.to_string());
            },
            std::future::pending(),
        ));
        if let Err(e) = result {
            panic!("serve failed: {e}");
        }
    });
    let url = rx.recv().expect("the server reports its URL");
    url.trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a URL with a port: {url}"))
}

#[test]
fn serves_the_page_the_stream_and_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_experiment(dir.path());
    let port = start(dir.path(), None);

    let (head, body) = get(port, "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("<title>rtune: fixture</title>"),
        "the page names the experiment"
    );
    assert!(body.contains("uPlot"), "the chart library is inlined");
    assert!(
        !body.contains("src=\"http"),
        "nothing is fetched from elsewhere"
    );

    let (_, body) = get(port, "/api/experiments");
    let list: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list[0]["name"], "fixture");

    // The stream: the snapshot first.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET /api/events/0 HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .expect("send");
    let mut reader = BufReader::new(stream);
    let (event, data) = next_event(&mut reader);
    assert_eq!(event, "snapshot");
    let snapshot: Value = serde_json::from_str(&data).expect("snapshot JSON");
    assert_eq!(snapshot["curves"]["0"]["v"], json!([0.9, 0.5]));
    // A format-2 placement (text) reaches the page typed, its label kept for display.
    let placement = &snapshot["trials"][0]["placement"];
    assert_eq!(placement["label"], "local cpu=1 gpu=0");
    assert_eq!(placement["nodes"][0]["gpus"], json!([0]));
    // The search space from experiment.toml.
    assert_eq!(
        snapshot["header"]["space"],
        json!([{"name": "lr", "distribution": "loguniform", "scale": "log", "low": 0.001, "high": 1.0, "integer": false}])
    );
    assert_eq!(snapshot["trials"][1]["error"], "exit status 1");
    assert_eq!(snapshot["continue_decisions"], 1);

    // A result appended by the trial arrives as an update carrying only the new point.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("trial_00000/result.json"))
        .expect("open");
    writeln!(
        f,
        "{{\"loss\":0.25,\"training_iteration\":3,\"time_total_s\":3.0,\"timestamp\":1003}}"
    )
    .expect("append");
    let (event, data) = next_event(&mut reader);
    assert_eq!(event, "update");
    let update: Value = serde_json::from_str(&data).expect("update JSON");
    assert_eq!(update["points"]["0"]["it"], json!([3]), "{update}");
    assert_eq!(update["points"]["0"]["v"], json!([0.25]));

    // result.json rewritten with a superseded line moved out (the runner's rename): the trial's
    // whole curve replaces the page's, and superseded.json's line arrives apart.
    let trial = dir.path().join("trial_00000");
    std::fs::write(
        trial.join("superseded.json"),
        "{\"loss\":0.25,\"training_iteration\":3,\"run\":0,\"superseded\":{\"reason\":\"rolled back after a failure\",\"time\":1004}}\n",
    )
    .expect("superseded");
    std::fs::write(
        trial.join("result.json.tmp"),
        "{\"loss\":0.9,\"training_iteration\":1,\"run\":0,\"train_loss\":1.1}\n\
         {\"loss\":0.5,\"training_iteration\":2,\"run\":0,\"train_loss\":0.7}\n\
         {\"loss\":0.4,\"training_iteration\":3,\"run\":1,\"train_loss\":0.6}\n",
    )
    .expect("rewrite");
    std::fs::rename(trial.join("result.json.tmp"), trial.join("result.json")).expect("rename");
    let mut replaced = Value::Null;
    let mut superseded = Value::Null;
    // Both may come in one update or two.
    while replaced.is_null() || superseded.is_null() {
        let (event, data) = next_event(&mut reader);
        assert_eq!(event, "update");
        let update: Value = serde_json::from_str(&data).expect("update JSON");
        if !update["curves"]["0"].is_null() {
            replaced = update["curves"]["0"].clone();
        }
        if !update["superseded"]["0"].is_null() {
            superseded = update["superseded"]["0"].clone();
        }
    }
    assert_eq!(replaced["it"], json!([1, 2, 3]));
    assert_eq!(replaced["v"], json!([0.9, 0.5, 0.4]));
    assert_eq!(replaced["m"]["train_loss"], json!([1.1, 0.7, 0.6]));
    assert_eq!(superseded["why"], json!(["rolled back after a failure"]));

    // Trial files: the ones the page links to, and nothing else.
    let (head, body) = get(port, "/files/0/0/stderr.log");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "warming up\nepoch 2\n");
    let (head, _) = get(port, "/files/0/0/..%2Fexperiment_state.json");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let (_, body) = get(port, "/api/trial/0/0");
    let info: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(info["stderr_tail"], "warming up\nepoch 2\n");

    let (_, body) = get(port, "/api/importance/0");
    let imp: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        imp["importance"].is_null(),
        "one trial with a value is too few: {imp}"
    );
}

#[test]
fn a_token_is_required_when_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_experiment(dir.path());
    let port = start(dir.path(), Some("s3cret".into()));
    let (head, body) = get(port, "/");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("token"), "{body}");
    let (head, body) = get(port, "/?token=s3cret");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("\"token\":\"s3cret\""),
        "the page sends it along"
    );
    let (head, _) = get(port, "/api/experiments?token=wrong");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[test]
fn a_directory_without_state_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = rtune_dashboard::experiment::Experiment::open(dir.path())
        .err()
        .expect("no state: an error");
    let message = err.to_string();
    assert!(message.contains("experiment_state.json"), "{message}");
    assert!(message.contains("hint"), "{message}");
}

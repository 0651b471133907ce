//! The report port under many idle connections, with a real `rtune run`: with its limit of open
//! files at 256, a head that 300 idle connections (more than the limit) reach still writes its
//! journal, results and state and finishes, and its trial's connection is served. Before
//! connections were bounded, 1,100 idle connections under a limit of 1,024 made the head fail to
//! write its state and end the experiment (issue 21).

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use common::procs::{wait_for_exit, wait_until};
use common::{json_lines, rtune, toml_string};

const LIMIT: Duration = Duration::from_secs(120);
/// The head's limit of open files, and how many idle connections the test opens.
const OPEN_FILES: u64 = 256;
const IDLE_CONNECTIONS: usize = 300;

#[test]
fn idle_connections_beyond_the_file_limit_do_not_stop_the_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr_file = dir.path().join("addr");
    let go = dir.path().join("GO");
    // The trial tells the test where rtune listens, then waits until the test has connected.
    let script = r#"echo "$RTUNE_ADDR" > "$ADDR_FILE.tmp" && mv "$ADDR_FILE.tmp" "$ADDR_FILE"
while [ ! -e "$GO" ]; do sleep 0.02; done
exec "$EXAMPLE""#;
    let experiment = format!(
        r#"name = "idle"
metric = "eval_loss"
mode = "min"
num_samples = 1
seed = 1

[trial]
command = ["sh", "-c", {script}]

[trial.env]
ADDR_FILE = {addr}
GO = {go}
EXAMPLE = {example}

[space]
epochs = 3
sleep_ms = 0

[scheduler]
type = "fifo"
"#,
        script = toml_string(script),
        addr = toml_string(&addr_file.display().to_string()),
        go = toml_string(&go.display().to_string()),
        example = toml_string(env!("CARGO_BIN_EXE_rtune-example")),
    );
    let file = dir.path().join("idle.toml");
    std::fs::write(&file, experiment).expect("write the experiment");
    let mut command = rtune();
    command
        .args(["run", "--storage"])
        .arg(dir.path().join("results"))
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("out")).expect("stdout"))
        .stderr(std::fs::File::create(dir.path().join("err")).expect("stderr"));
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: OPEN_FILES,
                rlim_max: OPEN_FILES,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut head = command.spawn().expect("rtune starts");
    let stderr = || std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
    assert!(
        wait_until(LIMIT, || addr_file.exists()),
        "the trial did not start\n{}",
        stderr()
    );
    let addr = std::fs::read_to_string(&addr_file).expect("address");
    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|_| TcpStream::connect(addr.trim()).expect("connect"))
        .collect();
    std::fs::write(&go, "").expect("GO");

    let status = wait_for_exit(&mut head, LIMIT).unwrap_or_else(|| {
        let _ = head.kill();
        panic!("the head did not finish\n{}", stderr())
    });
    assert!(status.success(), "{status:?}\n{}", stderr());
    let experiment_dir = dir.path().join("results/idle");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(experiment_dir.join("experiment_state.json")).expect("state"),
    )
    .expect("state JSON");
    assert_eq!(state["status"], "finished");
    assert_eq!(
        json_lines(&experiment_dir.join("trial_00000/result.json")).len(),
        3
    );
    // The oldest idle connections were closed to make room: the server read nothing from them.
    let first = &idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut line = String::new();
    assert_eq!(
        BufReader::new(first).read_line(&mut line).ok(),
        Some(0),
        "{line}"
    );
}

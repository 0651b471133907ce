//! Cluster life on a real SLURM cluster: a trial job that SLURM requeues restarts from its
//! checkpoint as a new run, and an experiment outlives its head job's time limit by chaining
//! head jobs (`rtune submit --time 1`: SIGUSR1 before the limit, pause, resubmit, resume).
//!
//! They run when `SLURM_CONF` names a cluster that answers `sinfo` and say they were skipped
//! otherwise, unless `RTUNE_REQUIRE_SLURM=1` (CI), where a missing cluster fails them.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{cluster_available, example, json_lines, run_ok, text};

static CLUSTER: Mutex<()> = Mutex::new(());

fn rtune_exe() -> &'static str {
    env!("CARGO_BIN_EXE_rtune")
}

fn state(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("experiment_state.json")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Every `training_iteration` of a trial's result.json, in order.
fn iterations(trial_dir: &Path) -> Vec<u64> {
    json_lines(&trial_dir.join("result.json"))
        .iter()
        .map(|r| {
            r["training_iteration"]
                .as_u64()
                .expect("training_iteration")
        })
        .collect()
}

/// Polls `done` every 200 ms until it holds; panics with `what` after `limit`.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_requeued_trial_job_restarts_from_its_checkpoint_as_a_new_run() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("a_requeued_trial_job_restarts") {
        return;
    }
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = storage.path().join("requeue");
    let log = std::fs::File::create(storage.path().join("rtune.log")).expect("log");
    // One trial of 8 epochs of 1 s with a checkpoint each; max_failures = 0, so a requeue
    // counted as a failure would end it in ERROR.
    let mut child = Command::new(rtune_exe())
        .args([
            "run",
            &example("fifo.toml"),
            "--executor",
            "slurm-jobs",
            "--name",
            "requeue",
        ])
        .arg("--storage")
        .arg(storage.path())
        .args(["--set", "num_samples=1", "--set", "space.epochs=8"])
        .args([
            "--set",
            "space.sleep_ms=1000",
            "--set",
            "executor.poll_interval_s=0.2",
        ])
        .args(["--set", "max_failures=0"])
        .env_remove("SLURM_JOB_ID")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("rtune starts");
    let trial_dir = dir.join("trial_00000");
    // Mid-trial: 3 epochs reported.
    wait_for(Duration::from_secs(120), "3 results", || {
        std::fs::read_to_string(trial_dir.join("result.json")).is_ok_and(|t| t.lines().count() >= 3)
    });
    let table = run_ok(
        Command::new(rtune_exe())
            .arg("status")
            .arg(&dir)
            .args(["--format", "json"]),
    );
    let rows: Value = serde_json::from_slice(&table.stdout).expect("JSON table");
    // The typed placement names the trial's SLURM job.
    let placement = &rows[0]["placement"];
    assert_eq!(placement["executor"], "slurm_job", "{placement}");
    let job = placement["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("placement without a job: {placement}"))
        .to_string();
    run_ok(Command::new("scontrol").args(["requeue", &job]));

    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rtune did not finish after the requeue");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(storage.path().join("rtune.log")).unwrap_or_default();
    assert!(status.success(), "{status}\n{output}");
    let s = state(&dir);
    let trial = &s["trials"][0];
    assert_eq!(trial["status"], "TERMINATED", "{output}");
    assert_eq!(trial["failures"], 0, "a requeue is no failure: {output}");
    assert_eq!(trial["runs"], 2, "the requeue made a new run: {output}");
    // Iterations 1..8 once each: nothing repeated, nothing past the end.
    assert_eq!(
        iterations(&trial_dir),
        (1..=8).collect::<Vec<u64>>(),
        "{output}"
    );
    // The new run continued from the checkpoint before its first result.
    let rows = json_lines(&trial_dir.join("result.json"));
    let restored = rows
        .iter()
        .find(|r| r.get("restored_epoch").is_some())
        .unwrap_or_else(|| panic!("no restored run in {rows:?}"));
    assert_eq!(
        restored["restored_epoch"].as_u64().map(|e| e + 1),
        restored["training_iteration"].as_u64(),
        "{restored}"
    );
    assert!(output.contains("was requeued by SLURM"), "{output}");
    let events = std::fs::read_to_string(dir.join("events.jsonl")).expect("events");
    assert!(events.contains("not a failure"), "{events}");
}

/// A head job log's `===== JOB <id> START : ... =====` line: the id and the job it continues.
fn start_line(log: &str) -> (String, Option<String>) {
    let first = log.lines().next().unwrap_or("");
    let rest = first
        .strip_prefix("===== JOB ")
        .unwrap_or_else(|| panic!("first line {first:?}"));
    let id = rest.split(' ').next().unwrap_or("").to_string();
    let previous = first
        .split_once("(continues job ")
        .map(|(_, p)| p.trim_end_matches(")").to_string());
    (id, previous)
}

/// The FINISH line: the job it names as its successor, if any.
fn finish_line(log: &str) -> Option<Option<String>> {
    let last = log.lines().rev().find(|l| l.contains(" FINISH : "))?;
    Some(
        last.split_once("(continued by job ")
            .map(|(_, n)| n.trim_end_matches(")").to_string()),
    )
}

#[test]
fn an_experiment_spans_several_head_jobs_past_their_time_limits() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("an_experiment_spans_several_head_jobs") {
        return;
    }
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = storage.path().join("chain");
    // Four trials of 55 epochs x 2 s (110 s each, side by side) with one-minute head jobs warned
    // 40 s before their limit: a head job trains for at most ~50 s (SLURM looks at time limits
    // every 30 s), so at least three head jobs are needed.
    // `submit --wait` follows the chain of head jobs to the last and exits with its status
    // (coreutils' timeout keeps a broken chain from hanging the test).
    let output = run_ok(
        Command::new("timeout")
            .args(["600", rtune_exe()])
            .args([
                "submit",
                &example("fifo.toml"),
                "--executor",
                "slurm-jobs",
                "--wait",
            ])
            .args([
                "--time",
                "1",
                "--signal-grace",
                "40",
                "--max-resubmits",
                "10",
            ])
            .args(["--name", "chain", "--set", "num_samples=2"])
            .args(["--set", "space.epochs=55", "--set", "space.sleep_ms=2000"])
            .args([
                "--set",
                "executor.poll_interval_s=0.5",
                "--set",
                "trial.stop_grace_s=2",
            ])
            .arg("--storage")
            .arg(storage.path())
            .env_remove("SLURM_JOB_ID")
            .stdin(Stdio::null()),
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let chain: Vec<String> = stdout
        .lines()
        .filter_map(|l| {
            l.strip_prefix("submitted job ")
                .or_else(|| l.strip_prefix("the experiment continues in job "))
        })
        .map(str::to_string)
        .collect();
    let slurm = dir.join("slurm");
    let log_of = |id: &str| slurm.join(format!("rtune-chain-{id}.log"));
    assert!(chain.len() >= 3, "head jobs {chain:?}");
    // Every log names its neighbours.
    for (i, id) in chain.iter().enumerate() {
        let log = std::fs::read_to_string(log_of(id)).expect("log");
        let (started, previous) = start_line(&log);
        assert_eq!(&started, id, "{log}");
        assert_eq!(
            previous.as_ref(),
            i.checked_sub(1).map(|p| &chain[p]),
            "{log}"
        );
        let next = finish_line(&log).expect("FINISH line");
        assert_eq!(next.as_ref(), chain.get(i + 1), "{log}");
        let exit = if i + 1 < chain.len() { 75 } else { 0 };
        assert!(
            log.contains(&format!("rtune exited with status {exit}\n")),
            "job {id}:\n{log}"
        );
    }
    let s = state(&dir);
    assert_eq!(s["status"], "finished", "{s}");
    let mut best: Option<(f64, String)> = None;
    let trials = s["trials"].as_array().expect("trials");
    // num_samples = 2 x the grid of 2 wd values.
    assert_eq!(trials.len(), 4);
    for (i, trial) in trials.iter().enumerate() {
        assert_eq!(trial["status"], "TERMINATED", "{trial}");
        let name = format!("trial_{i:05}");
        let trial_dir = dir.join(&name);
        assert_eq!(
            iterations(&trial_dir),
            (1..=55).collect::<Vec<u64>>(),
            "{name}: every iteration once"
        );
        for row in json_lines(&trial_dir.join("result.json")) {
            let loss = row["eval_loss"].as_f64().expect("eval_loss");
            if best.as_ref().is_none_or(|(b, _)| loss < *b) {
                best = Some((loss, name.clone()));
            }
        }
    }
    let best = best.expect("results");
    let answer = run_ok(
        Command::new(rtune_exe())
            .arg("best")
            .arg(&dir)
            .arg("--json"),
    );
    let json: Value = serde_json::from_slice(&answer.stdout).expect("JSON");
    assert_eq!(
        json["trial_dir"].as_str(),
        Some(best.1.as_str()),
        "{}",
        text(&answer)
    );
    assert_eq!(json["value"].as_f64(), Some(best.0), "{json}");
}

//! Durable experiments, end to end with real processes: the journal rebuilds the state, a killed
//! or interrupted experiment is resumed, write failures stop cleanly, exit codes tell the truth.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{example, rtune, text};
use serde_json::Value;

fn state(dir: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(dir.join("experiment_state.json")).expect("state"),
    )
    .expect("state json")
}

fn statuses(dir: &Path) -> Vec<String> {
    state(dir)["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|t| t["status"].as_str().expect("status").to_string())
        .collect()
}

fn run_args(file: &str, storage: &Path, name: &str, sets: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        example(file),
        "--storage".into(),
        storage.display().to_string(),
        "--name".into(),
        name.into(),
    ];
    for s in sets {
        args.push("--set".into());
        args.push((*s).to_string());
    }
    args
}

fn journal_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("journal.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits (polling the file another process writes) until the journal has `n` lines.
fn wait_for_journal(dir: &Path, n: usize, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal_lines(dir) < n {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the head ended early"
        );
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn replaying_the_journal_of_a_finished_experiment_gives_its_state() {
    let storage = tempfile::tempdir().expect("tempdir");
    for (file, name) in [("asha.toml", "asha"), ("pbt.toml", "pbt")] {
        let args = run_args(file, storage.path(), name, &["space.sleep_ms=5"]);
        common::run_ok(rtune().args(&args));
        let dir = storage.path().join(name);
        let replayed = rtune_runner::setup::replay_journal(&dir).expect("replay");
        let live = state(&dir);
        // Both through JSON text, as experiment_state.json is: the projection of the core.
        let projected: Vec<rtune_runner::state::TrialRecord> = replayed
            .trials()
            .iter()
            .map(|t| rtune_runner::state::TrialRecord::from_trial(t, false))
            .collect();
        let replayed: Value =
            serde_json::from_str(&serde_json::to_string(&projected).expect("serialize"))
                .expect("parse");
        assert_eq!(
            live["trials"], replayed,
            "{name}: replay equals the live state"
        );
        // The results on disk are the replayed history.
        for trial in live["trials"].as_array().expect("trials") {
            let id = trial["id"].as_u64().expect("id");
            let lines = common::json_lines(&dir.join(format!("trial_{id:05}/result.json")));
            assert_eq!(
                lines.last().and_then(|l| l["training_iteration"].as_u64()),
                trial["iteration"].as_u64().filter(|&i| i > 0),
                "{name}: trial {id}"
            );
        }
    }
}

#[test]
fn sighup_interrupts_and_resume_finishes_with_nothing_twice() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = storage.path().join("hup");
    let args = run_args(
        "asha.toml",
        storage.path(),
        "hup",
        &["space.sleep_ms=40", "num_samples=6"],
    );
    let mut child = rtune()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    wait_for_journal(&dir, 12, &mut child);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGHUP);
    }
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(130), "{}", text(&output));
    assert_eq!(state(&dir)["status"], "interrupted");
    let cut = statuses(&dir);
    assert!(
        cut.iter().all(|s| s != "RUNNING"),
        "no trial of an interrupted experiment is RUNNING: {cut:?}"
    );
    assert!(
        cut.iter()
            .any(|s| s == "PAUSED" || s == "INTERRUPTED" || s == "PENDING"),
        "cut-off trials are not TERMINATED: {cut:?}"
    );
    let output = rtune()
        .args(["resume", &dir.display().to_string()])
        .output()
        .expect("resume");
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(state(&dir)["status"], "finished");
    for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
        if !entry.file_name().to_string_lossy().starts_with("trial_") {
            continue;
        }
        let its: Vec<u64> = common::json_lines(&entry.path().join("result.json"))
            .iter()
            .map(|l| l["training_iteration"].as_u64().expect("iteration"))
            .collect();
        let expected: Vec<u64> = (1..=its.len() as u64).collect();
        assert_eq!(its, expected, "{:?}", entry.path());
    }
}

#[test]
fn a_killed_head_is_shown_as_not_running_and_resumes() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = storage.path().join("killed");
    let args = run_args(
        "fifo.toml",
        storage.path(),
        "killed",
        &["space.sleep_ms=40", "num_samples=2"],
    );
    let mut child = rtune()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    // Wait for a snapshot that shows trials running, then kill the head outright.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = std::fs::read_to_string(dir.join("experiment_state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|s| {
                s["trials"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t["status"] == "RUNNING"))
            });
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "no trial ever ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let output = rtune()
        .args(["status", &dir.display().to_string()])
        .output()
        .expect("status");
    let shown = text(&output);
    assert!(shown.contains("NOT running"), "{shown}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("RUNNING"),
        "{shown}"
    );
    let output = rtune()
        .args(["resume", &dir.display().to_string()])
        .output()
        .expect("resume");
    assert!(output.status.success(), "{}", text(&output));
    assert!(statuses(&dir).iter().all(|s| s == "TERMINATED"));
}

#[test]
fn a_failed_journal_write_stops_cleanly_and_resume_continues() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = storage.path().join("full");
    let args = run_args(
        "asha.toml",
        storage.path(),
        "full",
        &["space.sleep_ms=5", "num_samples=4"],
    );
    // An injected ENOSPC on the 15th journal line.
    let output = rtune()
        .args(&args)
        .env("RTUNE_TEST_JOURNAL_FAIL_AFTER", "14")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("journal.jsonl"), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains("rtune resume"), "{stderr}");
    let journal = std::fs::read_to_string(dir.join("journal.jsonl")).expect("journal");
    assert!(journal.ends_with('\n'), "no half line");
    assert_eq!(journal.lines().count(), 14);
    assert_eq!(state(&dir)["status"], "interrupted");
    let output = rtune()
        .args(["resume", &dir.display().to_string()])
        .output()
        .expect("resume");
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(state(&dir)["status"], "finished");
}

#[test]
fn a_torn_last_journal_line_is_cut_off_on_resume() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = storage.path().join("torn");
    let args = run_args(
        "fifo.toml",
        storage.path(),
        "torn",
        &["space.sleep_ms=5", "num_samples=1", "space.epochs=3"],
    );
    let output = rtune()
        .args(&args)
        .env("RTUNE_TEST_JOURNAL_FAIL_AFTER", "4")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    // A crash in the middle of a write leaves half a line.
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("journal.jsonl"))
        .expect("journal");
    std::io::Write::write_all(&mut journal, b"{\"input\":\"report\",\"now\":17").expect("tear");
    drop(journal);
    let output = rtune()
        .args(["resume", &dir.display().to_string()])
        .output()
        .expect("resume");
    assert!(output.status.success(), "{}", text(&output));
    let journal = std::fs::read_to_string(dir.join("journal.jsonl")).expect("journal");
    assert!(
        journal
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
}

#[test]
fn every_trial_in_error_exits_3_and_lists_the_error_files() {
    let storage = tempfile::tempdir().expect("tempdir");
    let args = run_args(
        "fifo.toml",
        storage.path(),
        "fails",
        &[
            "space.sleep_ms=1",
            "num_samples=2",
            "+space.fail_at_epoch=1",
        ],
    );
    let output = rtune().args(&args).output().expect("run");
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("trials ended in ERROR"), "{stderr}");
    assert!(stderr.contains("error.txt"), "{stderr}");
}

#[test]
fn fail_fast_stops_after_the_first_failures_with_their_error() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = storage.path().join("ff");
    let args = run_args(
        "fifo.toml",
        storage.path(),
        "ff",
        &[
            "space.sleep_ms=1",
            "num_samples=10",
            "+space.fail_at_epoch=1",
            "fail_fast=2",
            "executor.max_concurrent_trials=1",
        ],
    );
    let output = rtune().args(&args).output().expect("run");
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fail_fast"), "{stderr}");
    assert!(
        stderr.contains("exit"),
        "the common error is shown: {stderr}"
    );
    let trials = statuses(&dir);
    assert!(trials.len() < 20, "not every sample ran: {trials:?}");
}

#[test]
fn a_changed_search_space_is_refused_on_resume_and_resources_are_not() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = storage.path().join("changed");
    let args = run_args(
        "fifo.toml",
        storage.path(),
        "changed",
        &["space.sleep_ms=1", "num_samples=1", "space.epochs=2"],
    );
    common::run_ok(rtune().args(&args));
    let d = dir.display().to_string();
    let output = rtune()
        .args(["resume", &d, "--set", "space.lr.loguniform=[1e-5,1e-3]"])
        .output()
        .expect("resume");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("changed search space"),
        "{}",
        text(&output)
    );
    let output = rtune()
        .args(["resume", &d, "--set", "executor.max_concurrent_trials=1"])
        .output()
        .expect("resume");
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn a_trial_that_stops_reporting_is_failed_by_the_report_timeout() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = storage.path().join("hang");
    // One epoch takes 3 s; the timeout is 1 s.
    let args = run_args(
        "fifo.toml",
        storage.path(),
        "hang",
        &[
            "space.sleep_ms=3000",
            "num_samples=1",
            "space.epochs=2",
            "trial.report_timeout_s=1",
            "trial.stop_grace_s=1",
        ],
    );
    let output = rtune().args(&args).output().expect("run");
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let error = std::fs::read_to_string(dir.join("trial_00000/error.txt")).expect("error.txt");
    assert!(error.contains("report_timeout_s"), "{error}");
}

/// A real full disk (a 256 KiB tmpfs; needs root to mount, skipped otherwise): the head stops
/// the trials, names the file and the space, leaves no half line and no temporary file, and
/// `rtune resume` finishes the experiment once there is space.
#[test]
fn a_full_disk_stops_the_head_cleanly_and_resume_finishes_after_space_is_freed() {
    let storage = tempfile::tempdir().expect("tempdir");
    let mount = storage.path().join("small");
    std::fs::create_dir_all(&mount).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let dir = mount.join("full");
    let args = run_args(
        "asha.toml",
        &mount,
        "full",
        &[
            "space.sleep_ms=2",
            "num_samples=8",
            "space.epochs=30",
            "scheduler.max_t=30",
        ],
    );
    let output = rtune().args(&args).output().expect("run");
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains("bytes are free"), "{stderr}");
    let journal = std::fs::read(dir.join("journal.jsonl")).expect("journal");
    assert!(journal.ends_with(b"\n"), "no half line in the journal");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary snapshot is left: {leftovers:?}"
    );
    // rtune's own failed writes (a trial's params.json, its directory) are never counted as a
    // trial's failure: no error.txt blames them.
    for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
        let error = std::fs::read_to_string(entry.path().join("error.txt")).unwrap_or_default();
        for rtunes_own in ["params.json", "policy.json", "cannot prepare", "stdout.log"] {
            assert!(
                !error.contains(rtunes_own),
                "{}: a failure of rtune's own write counted against the trial: {error}",
                entry.path().display()
            );
        }
    }
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted, "cannot make space");
    // Trials that could not write their own checkpoint failed meanwhile: run them again too.
    let output = rtune()
        .args(["resume", &dir.display().to_string(), "--resume-errored"])
        .output()
        .expect("resume");
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(state(&dir)["status"], "finished");
}

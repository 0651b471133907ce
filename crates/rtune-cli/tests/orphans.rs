//! No trial process outlives `rtune run`: after the head dies by any signal (SIGKILL included),
//! nothing any trial started is left after `trial.stop_grace_s` + 5 s, whatever the trial does
//! (reports, never reports, ignores SIGTERM, starts a `setsid` grandchild, leaves a member in
//! its process group). The trials' processes are found by a unique marker in their environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

mod common;
use common::procs::{
    has_a_line, processes_with_env, send_signal, unique_marker, wait_for_exit, wait_until,
};
use common::{rtune, toml_string};

/// How long the trials may take to start and show that they are ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One trial of each kind; each touches `$READY_DIR/<kind>` once everything it starts runs. The
/// reporting one also writes down the name of its parent, the shim.
const TRIALS_SCRIPT: &str = r#"
case "$RTUNE_CONFIG" in
  *'"report"'*)
    cat "/proc/$PPID/comm" > "$READY_DIR/report.parent"
    touch "$READY_DIR/report"; exec "$EXAMPLE" ;;
  *'"silent"'*)
    touch "$READY_DIR/silent"; exec sleep 1000 ;;
  *'"ignore_term"'*)
    trap '' TERM; touch "$READY_DIR/ignore_term"; sleep 1000 ;;
  *'"setsid"'*)
    setsid sh -c 'trap "" TERM; touch "$READY_DIR/setsid"; exec sleep 1000' &
    exec sleep 1000 ;;
  *'"pgroup"'*)
    sh -c 'trap "" TERM; exec sleep 1000' &
    touch "$READY_DIR/pgroup"; wait ;;
esac
"#;
const KINDS: [&str; 5] = ["report", "silent", "ignore_term", "setsid", "pgroup"];
/// At least this many processes run once every trial is ready: a shim per trial, plus
/// report 1, silent 1, ignore_term 2 (sh, sleep), setsid 2, pgroup 2.
const MIN_PROCESSES: usize = 5 + 8;

struct Experiment {
    dir: tempfile::TempDir,
    marker: (String, String),
    grace_s: f64,
}

impl Experiment {
    /// Five trials side by side, one of each kind, with `stop_grace_s = grace_s`.
    fn new(label: &str, grace_s: f64) -> Experiment {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = unique_marker(label);
        let ready = dir.path().join("ready");
        std::fs::create_dir(&ready).expect("ready dir");
        let text = format!(
            r#"name = "orphans"
metric = "eval_loss"
mode = "min"
num_samples = 1
seed = 1

[trial]
command = ["sh", "-c", {script}]
stop_grace_s = {grace_s}
resources = {{ cpu = 1 }}

[trial.env]
{key} = {value}
READY_DIR = {ready}
EXAMPLE = {example}

[space]
kind = {{ grid = {kinds} }}
epochs = 1000000
sleep_ms = 20
checkpoint = false

[scheduler]
type = "fifo"

[executor]
cpus = 5
"#,
            script = toml_string(TRIALS_SCRIPT),
            key = marker.0,
            value = toml_string(&marker.1),
            ready = toml_string(&ready.display().to_string()),
            example = toml_string(env!("CARGO_BIN_EXE_rtune-example")),
            kinds = serde_json::to_string(&KINDS).expect("json"),
        );
        std::fs::write(dir.path().join("orphans.toml"), text).expect("write the experiment");
        Experiment {
            dir,
            marker,
            grace_s,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `rtune run` in the background, its output in files.
    fn start(&self) -> Child {
        rtune()
            .args(["run", "--storage"])
            .arg(self.path("results"))
            .arg(self.path("orphans.toml"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.path("stdout.txt")).expect("stdout file"))
            .stderr(std::fs::File::create(self.path("stderr.txt")).expect("stderr file"))
            .spawn()
            .expect("rtune starts")
    }

    fn output(&self) -> String {
        let read = |name| std::fs::read_to_string(self.path(name)).unwrap_or_default();
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            read("stdout.txt"),
            read("stderr.txt")
        )
    }

    fn trial_processes(&self) -> Vec<String> {
        processes_with_env(&self.marker.0, &self.marker.1)
    }

    /// Waits until every trial runs what it starts and the reporting one has reported.
    fn wait_until_ready(&self, head: &mut Child) {
        let results = self.path("results/orphans");
        let ready = wait_until(START_TIMEOUT, || {
            let all_touched = KINDS.iter().all(|k| self.path("ready").join(k).exists());
            let reported = trial_dirs(&results)
                .iter()
                .any(|t| has_a_line(&t.join("result.json")));
            all_touched && reported || head.try_wait().ok().flatten().is_some()
        });
        assert!(
            ready && head.try_wait().ok().flatten().is_none(),
            "the trials did not all start\n{}",
            self.output()
        );
        let running = self.trial_processes();
        assert!(
            running.len() >= MIN_PROCESSES,
            "expected at least {MIN_PROCESSES} trial processes, found {running:#?}"
        );
        // The trials run under the small shim binary built next to rtune, not under rtune's
        // own (slower to start) `__supervise` subcommand.
        let parent = std::fs::read_to_string(self.path("ready").join("report.parent"))
            .expect("the reporting trial's parent");
        assert_eq!(parent.trim(), "rtune-supervise");
    }

    /// Asserts that no trial process is left within `trial.stop_grace_s` + 5 s.
    fn assert_no_trial_process_within_grace_plus_5s(&self) {
        let limit = Duration::from_secs_f64(self.grace_s + 5.0);
        let gone = wait_until(limit, || self.trial_processes().is_empty());
        assert!(
            gone,
            "trial processes left {limit:?} after rtune ended: {:#?}\n{}",
            self.trial_processes(),
            self.output()
        );
    }

    fn state_status(&self) -> String {
        let path = self.path("results/orphans/experiment_state.json");
        let text = std::fs::read_to_string(&path).expect("the state file");
        let state: serde_json::Value = serde_json::from_str(&text).expect("state JSON");
        state["status"].as_str().unwrap_or_default().to_string()
    }
}

fn trial_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("trial_"))
        })
        .collect()
}

#[test]
fn sigkill_of_the_head_leaves_no_trial_process() {
    let experiment = Experiment::new("sigkill", 1.0);
    let mut head = experiment.start();
    experiment.wait_until_ready(&mut head);
    head.kill().expect("SIGKILL to rtune");
    head.wait().expect("rtune is reaped");
    experiment.assert_no_trial_process_within_grace_plus_5s();
}

/// SIGTERM and SIGHUP end a run like Ctrl-C: every trial process (setsid grandchildren
/// included) is gone when rtune exits, and the experiment is `interrupted`.
fn a_signal_interrupts_the_run_and_ends_every_trial_process(signal: i32, name: &str) {
    let experiment = Experiment::new(name, 1.0);
    let mut head = experiment.start();
    experiment.wait_until_ready(&mut head);
    send_signal(head.id(), signal);
    let limit = Duration::from_secs_f64(experiment.grace_s + 30.0);
    let status = wait_for_exit(&mut head, limit);
    if status.is_none() {
        let _ = head.kill();
    }
    assert!(
        status.is_some(),
        "rtune did not end {limit:?} after {name}\n{}",
        experiment.output()
    );
    assert_eq!(
        experiment.trial_processes(),
        Vec::<String>::new(),
        "trial processes outlived rtune\n{}",
        experiment.output()
    );
    assert_eq!(
        experiment.state_status(),
        "interrupted",
        "{}",
        experiment.output()
    );
    assert!(
        experiment.output().contains(name),
        "rtune does not say why it stopped\n{}",
        experiment.output()
    );
}

#[test]
fn sigterm_interrupts_the_run_and_ends_every_trial_process() {
    a_signal_interrupts_the_run_and_ends_every_trial_process(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sighup_interrupts_the_run_and_ends_every_trial_process() {
    a_signal_interrupts_the_run_and_ends_every_trial_process(libc::SIGHUP, "SIGHUP");
}

/// While rtune stops its trials after SIGTERM it still answers their reports: a trial that
/// ignores SIGTERM but reports often is told to stop and exits long before the grace period
/// (60 s) would have it killed.
#[test]
fn reports_are_answered_while_the_trials_are_being_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = unique_marker("answers");
    let text = format!(
        r#"name = "answers"
metric = "eval_loss"
mode = "min"
num_samples = 1

[trial]
command = ["sh", "-c", "trap '' TERM; exec \"$EXAMPLE\""]
stop_grace_s = 60

[trial.env]
{key} = {value}
EXAMPLE = {example}

[space]
epochs = 1000000
sleep_ms = 20
checkpoint = false

[scheduler]
type = "fifo"
"#,
        key = marker.0,
        value = toml_string(&marker.1),
        example = toml_string(env!("CARGO_BIN_EXE_rtune-example")),
    );
    std::fs::write(dir.path().join("answers.toml"), text).expect("write the experiment");
    let mut head = rtune()
        .args(["run", "--storage"])
        .arg(dir.path().join("results"))
        .arg(dir.path().join("answers.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rtune starts");
    let result = dir.path().join("results/answers/trial_00000/result.json");
    assert!(
        wait_until(START_TIMEOUT, || has_a_line(&result)),
        "the trial never reported"
    );
    send_signal(head.id(), libc::SIGTERM);
    // Well under the 60 s grace: only an answered report ends the trial this early.
    let status = wait_for_exit(&mut head, Duration::from_secs(30));
    if status.is_none() {
        let _ = head.kill();
    }
    assert!(
        status.is_some(),
        "rtune waited for the grace period instead of answering the trial"
    );
    assert!(processes_with_env(&marker.0, &marker.1).is_empty());
}

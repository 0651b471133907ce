//! One head per experiment (docs/design.md, "One head per experiment"), with real `rtune`
//! processes: a second head is refused while the first one lives, whenever it comes (two resumes
//! at once, a resume right after `rtune run` started, a resume after `experiment_state.json` was
//! deleted), and a head that was stopped past its lease while another took over wakes up, writes
//! nothing and exits 6. Nothing is ever duplicated, and the journal still resumes.
//!
//! The trials wait for a file (`GO`) before they train, so a head is still running while the
//! test starts the next one: the outcome does not depend on how fast the machine is.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime};

use common::procs::{send_signal, wait_for_exit, wait_until};
use common::{json_lines, rtune, toml_string};

/// A generous bound for anything to happen; the tests wait on conditions, not on time.
const LIMIT: Duration = Duration::from_secs(120);

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// An experiment of `num_samples` FIFO trials on 2 CPUs whose trials wait for `GO`.
    fn new(num_samples: u32, epochs: u32, sleep_ms: u32) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let go = dir.path().join("GO");
        let text = format!(
            r#"name = "claim"
metric = "eval_loss"
mode = "min"
num_samples = {num_samples}
seed = 3

[trial]
command = ["sh", "-c", "while [ ! -e \"$GO\" ]; do sleep 0.02; done; exec \"$EXAMPLE\""]
resources = {{ cpu = 1 }}

[trial.env]
GO = {go}
EXAMPLE = {example}

[space]
lr = {{ loguniform = [5e-6, 2e-4] }}
epochs = {epochs}
sleep_ms = {sleep_ms}

[scheduler]
type = "fifo"

[executor]
cpus = 2
"#,
            go = toml_string(&go.display().to_string()),
            example = toml_string(env!("CARGO_BIN_EXE_rtune-example")),
        );
        std::fs::write(dir.path().join("claim.toml"), text).expect("write the experiment");
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn experiment(&self) -> PathBuf {
        self.path("results/claim")
    }

    /// Lets the trials train.
    fn go(&self) {
        std::fs::write(self.path("GO"), "").expect("GO");
    }

    /// `rtune ARGS`, its output in `<label>.out` and `<label>.err`.
    fn spawn(&self, label: &str, args: &[&str], lease: Option<&str>) -> Child {
        let mut command = rtune();
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.path(&format!("{label}.out"))).expect("stdout"))
            .stderr(std::fs::File::create(self.path(&format!("{label}.err"))).expect("stderr"));
        match lease {
            Some(lease) => command.env("RTUNE_CLAIM_LEASE_S", lease),
            None => command.env_remove("RTUNE_CLAIM_LEASE_S"),
        };
        command.spawn().expect("rtune starts")
    }

    fn run(&self, label: &str, lease: Option<&str>) -> Child {
        let storage = self.path("results");
        let file = self.path("claim.toml");
        self.spawn(
            label,
            &[
                "run",
                "--storage",
                &storage.display().to_string(),
                &file.display().to_string(),
            ],
            lease,
        )
    }

    fn resume(&self, label: &str, lease: Option<&str>) -> Child {
        let dir = self.experiment();
        self.spawn(label, &["resume", &dir.display().to_string()], lease)
    }

    fn stderr(&self, label: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{label}.err"))).unwrap_or_default()
    }

    /// Waits for `child` to exit; its exit code.
    fn exit_code(&self, child: &mut Child, label: &str) -> i32 {
        let status = wait_for_exit(child, LIMIT).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("{label} did not exit\n{}", self.stderr(label))
        });
        status
            .code()
            .unwrap_or_else(|| panic!("{label} died of a signal: {status:?}"))
    }

    /// A resume now is refused (exit 5) and names `head`; then the trials go, and `head`
    /// finishes the experiment whole.
    fn assert_refused_then_finished(&self, head: &mut Child, trials: u32, epochs: u64) {
        let mut resume = self.resume("resume", None);
        let code = self.exit_code(&mut resume, "resume");
        let message = self.stderr("resume");
        assert_eq!(code, 5, "{message}");
        assert!(message.contains(&format!("pid {}", head.id())), "{message}");
        self.go();
        assert_eq!(self.exit_code(head, "head"), 0, "{}", self.stderr("head"));
        self.assert_whole(trials, epochs);
    }

    fn journal_has(&self, needle: &str) -> bool {
        std::fs::read_to_string(self.experiment().join("journal.jsonl"))
            .is_ok_and(|text| text.contains(needle))
    }

    /// Every trial's results counted once, in order; one header in each progress.csv; and the
    /// journal still resumes (a finished experiment resumes to "nothing to do", exit 0).
    fn assert_whole(&self, trials: u32, epochs: u64) {
        let dir = self.experiment();
        for trial in 0..trials {
            let trial_dir = dir.join(format!("trial_{trial:05}"));
            let iterations: Vec<u64> = json_lines(&trial_dir.join("result.json"))
                .iter()
                .map(|r| r["training_iteration"].as_u64().expect("iteration"))
                .collect();
            assert_eq!(
                iterations,
                (1..=epochs).collect::<Vec<_>>(),
                "{}",
                trial_dir.display()
            );
            let csv = std::fs::read_to_string(trial_dir.join("progress.csv")).expect("csv");
            let header = csv.lines().next().expect("a header");
            assert_eq!(
                csv.lines().filter(|line| *line == header).count(),
                1,
                "one header in {}:\n{csv}",
                trial_dir.display()
            );
        }
        let mut again = self.resume("again", None);
        assert_eq!(
            self.exit_code(&mut again, "again"),
            0,
            "{}",
            self.stderr("again")
        );
    }
}

#[test]
fn of_two_resumes_at_once_one_is_refused_and_nothing_is_duplicated() {
    let setup = Setup::new(4, 3, 20);
    // A first head starts trials (they wait for GO) and is interrupted: a resumable experiment.
    let mut first = setup.run("first", None);
    assert!(
        wait_until(LIMIT, || setup.journal_has("\"started\":{")),
        "no trial started\n{}",
        setup.stderr("first")
    );
    // SIGTERM: its handler is installed before the first trial starts (Ctrl-C's on first wait).
    send_signal(first.id(), libc::SIGTERM);
    assert_eq!(setup.exit_code(&mut first, "first"), 130);

    let mut a = setup.resume("a", None);
    let mut b = setup.resume("b", None);
    // The trials wait for GO, so the winner is still running when the loser is refused.
    let mut exits: Vec<(&str, i32, u32)> = Vec::new();
    assert!(wait_until(LIMIT, || {
        for (label, child) in [("a", &mut a), ("b", &mut b)] {
            if !exits.iter().any(|(l, _, _)| *l == label)
                && let Ok(Some(status)) = child.try_wait()
            {
                exits.push((label, status.code().unwrap_or(-1), child.id()));
            }
        }
        !exits.is_empty()
    }));
    assert_eq!(exits.len(), 1, "only the loser exits: {exits:?}");
    let (loser, code, _) = exits[0];
    let (winner, winner_child) = if loser == "a" {
        ("b", &mut b)
    } else {
        ("a", &mut a)
    };
    let message = setup.stderr(loser);
    assert_eq!(code, 5, "{message}");
    assert!(
        message.contains("is being run by another head")
            && message.contains(&format!("pid {}", winner_child.id())),
        "{message}"
    );
    assert!(message.contains("since"), "says since when: {message}");
    setup.go();
    assert_eq!(
        setup.exit_code(winner_child, winner),
        0,
        "{}",
        setup.stderr(winner)
    );
    setup.assert_whole(4, 3);
}

#[test]
fn a_resume_right_after_run_started_is_refused() {
    let setup = Setup::new(3, 3, 20);
    let mut run = setup.run("head", None);
    // The first moment a resume can find anything to resume: the journal exists.
    assert!(wait_until(LIMIT, || setup
        .experiment()
        .join("journal.jsonl")
        .exists()));
    setup.assert_refused_then_finished(&mut run, 3, 3);
}

#[test]
fn a_directory_without_a_journal_is_not_resumed() {
    let setup = Setup::new(1, 1, 0);
    std::fs::create_dir_all(setup.experiment()).expect("dir");
    std::fs::copy(
        setup.path("claim.toml"),
        setup.experiment().join("experiment.toml"),
    )
    .expect("copy");
    let mut resume = setup.resume("resume", None);
    assert_eq!(setup.exit_code(&mut resume, "resume"), 2);
    let message = setup.stderr("resume");
    assert!(
        message.contains("journal.jsonl") && message.contains("nothing to resume"),
        "{message}"
    );
    assert!(!setup.experiment().join("head_claim.json").exists());
}

#[test]
fn a_resume_is_refused_after_the_state_file_was_deleted_under_a_live_head() {
    let setup = Setup::new(3, 3, 20);
    let mut run = setup.run("head", None);
    let state = setup.experiment().join("experiment_state.json");
    assert!(wait_until(LIMIT, || state.exists()));
    std::fs::remove_file(&state).expect("delete the state");
    setup.assert_refused_then_finished(&mut run, 3, 3);
}

/// Every file of the experiment the heads write, with its contents: what the trials write
/// themselves (their logs, their scratch directories) is left out.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("readable").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "scratch" {
                    pending.push(path);
                }
            } else if !name.ends_with(".log") {
                let bytes = std::fs::read(&path).expect("readable file");
                files.insert(path.strip_prefix(dir).expect("inside").to_path_buf(), bytes);
            }
        }
    }
    files
}

#[test]
fn a_head_stopped_past_its_lease_wakes_up_fenced_and_writes_nothing() {
    let setup = Setup::new(4, 6, 50);
    setup.go();
    // A one-second lease, so that the test does not wait long for it to run out.
    let mut old = setup.run("old", Some("1"));
    assert!(
        wait_until(LIMIT, || setup.journal_has("\"input\":\"report\"")),
        "no report\n{}",
        setup.stderr("old")
    );
    send_signal(old.id(), libc::SIGSTOP);
    // Its lease runs out: its claim is not renewed any more.
    let claim = setup.experiment().join("head_claim.json");
    let renewed_ago = || {
        std::fs::metadata(&claim)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default()
    };
    assert!(wait_until(LIMIT, || renewed_ago() > Duration::from_millis(1500)));
    let mut new = setup.resume("new", Some("1"));
    let new_code = setup.exit_code(&mut new, "new");
    let new_err = setup.stderr("new");
    assert_eq!(new_code, 0, "{new_err}");
    assert!(
        new_err.contains("took over") && new_err.contains("lease expired"),
        "the takeover says why: {new_err}"
    );
    let before = snapshot(&setup.experiment());
    send_signal(old.id(), libc::SIGCONT);
    let old_code = setup.exit_code(&mut old, "old");
    let old_err = setup.stderr("old");
    assert_eq!(old_code, 6, "{old_err}");
    assert!(
        old_err.contains("no longer holds")
            && old_err.contains(&format!("taken over by the head pid {}", new.id())),
        "{old_err}"
    );
    let after = snapshot(&setup.experiment());
    for (path, bytes) in &after {
        assert!(
            before.get(path) == Some(bytes),
            "the fenced head wrote {}",
            path.display()
        );
    }
    assert_eq!(before.len(), after.len(), "the fenced head removed a file");
    setup.assert_whole(4, 6);
}

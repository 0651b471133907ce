//! The crash harness: the head (`rtune run`, a real process running real `rtune-example` trials)
//! is killed with SIGKILL at seeded-random moments of ASHA, HyperBand, PBT and FIFO experiments,
//! `rtune resume` continues after each kill, and at the end every experiment must be whole:
//!
//! * every trial in a final state, the experiment `finished`;
//! * each trial's iterations in result.json (the results that count) increasing and contiguous
//!   from 1, without a gap or a duplicate (a PBT exploit restarts a trial at its donor's
//!   iteration + 1: only there, once per exploit in lineage.jsonl, may they jump ahead);
//! * every report before the trial's last checkpoint present exactly once, progress.csv agreeing;
//! * with the deterministic trainable and FIFO, every trial's results equal an uninterrupted run's.
//!
//! The moments differ from run to run (they are "after the journal has grown by N lines", N from a
//! seeded generator, and the head's speed varies), but what is checked does not depend on them.
//! It prints `kills survived / kills tried`; docs/benchmarks.md records the figure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{example, json_lines, rtune};
use serde_json::Value;

/// splitmix64: a tiny seeded generator, so the kill moments are reproducible in intent.
struct Moments(u64);

impl Moments {
    fn next(&mut self, low: usize, high: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        low + (z % (high - low + 1) as u64) as usize
    }
}

fn journal_lines(dir: &Path) -> usize {
    std::fs::read(dir.join("journal.jsonl"))
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

/// SIGKILL every process started for this experiment (found by the experiment directory in its
/// environment): a killed head cannot end its trials, and the harness must not leak them.
fn kill_trials_of(experiment: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let needle = format!("/{experiment}");
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let ours = environ.split(|&b| b == 0).any(|var| {
            let var = String::from_utf8_lossy(var);
            var.starts_with("RTUNE_EXPERIMENT_DIR=") && var.ends_with(&needle)
        });
        if ours {
            // SAFETY: signalling a pid; at worst it has exited meanwhile.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn spawn(args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    rtune()
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("rtune starts")
}

struct Scenario {
    name: &'static str,
    file: &'static str,
    overrides: Vec<String>,
    kills: usize,
    seed: u64,
    /// Move the experiment directory before this resume (1-based), to show no absolute path is
    /// needed.
    move_before: Option<usize>,
}

struct Outcome {
    tried: usize,
    survived: usize,
    dir: PathBuf,
    _storage: tempfile::TempDir,
}

/// Runs a scenario: start, kill and resume `kills` times, then let the last resume finish.
fn crash_and_resume(s: &Scenario) -> Outcome {
    let storage = tempfile::tempdir().expect("tempdir");
    let unique = format!("{}-{}", s.name, std::process::id());
    let mut dir = storage.path().join(&unique);
    let storage_arg = storage.path().display().to_string();
    let mut args: Vec<String> = vec![
        "run".into(),
        example(s.file),
        "--storage".into(),
        storage_arg,
        "--name".into(),
        unique.clone(),
    ];
    for o in &s.overrides {
        args.push("--set".into());
        args.push(o.clone());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = storage.path().join("head-0.log");
    let mut child = spawn(&argv, &log);
    let mut moments = Moments(s.seed);
    let mut tried = 0;
    for k in 1..=s.kills {
        let target = journal_lines(&dir) + moments.next(2, 14);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut finished = false;
        while journal_lines(&dir) < target {
            if child.try_wait().expect("wait").is_some() {
                finished = true;
                break;
            }
            assert!(Instant::now() < deadline, "{}: no progress", s.name);
            std::thread::sleep(Duration::from_millis(3));
        }
        if finished {
            break;
        }
        child.kill().expect("SIGKILL the head");
        child.wait().expect("reap the head");
        kill_trials_of(&unique);
        tried += 1;
        if s.move_before == Some(k) {
            let moved_name = format!("{unique}-moved");
            let moved = storage.path().join("elsewhere");
            std::fs::create_dir_all(&moved).expect("mkdir");
            let target = moved.join(&moved_name);
            std::fs::rename(&dir, &target).expect("move the experiment");
            dir = target;
        }
        let log = storage.path().join(format!("head-{k}.log"));
        child = spawn(&["resume", &dir.display().to_string()], &log);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the last head never ends",
            s.name
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    kill_trials_of(&unique);
    let last_log = std::fs::read_to_string(storage.path().join(format!("head-{tried}.log")))
        .unwrap_or_default();
    assert!(
        status.success(),
        "{}: the last head failed:\n{last_log}",
        s.name
    );
    let survived = if check_whole(&dir, s.name) { tried } else { 0 };
    Outcome {
        tried,
        survived,
        dir,
        _storage: storage,
    }
}

fn iteration(line: &Value) -> u64 {
    line["training_iteration"]
        .as_u64()
        .expect("training_iteration")
}

/// The end-of-experiment checks; panics with the reason when one fails.
fn check_whole(dir: &Path, name: &str) -> bool {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("experiment_state.json")).expect("state"),
    )
    .expect("state json");
    assert_eq!(state["status"], "finished", "{name}");
    let exploits: Vec<Value> = if dir.join("lineage.jsonl").exists() {
        json_lines(&dir.join("lineage.jsonl"))
    } else {
        Vec::new()
    };
    for trial in state["trials"].as_array().expect("trials") {
        let status = trial["status"].as_str().expect("status");
        let id = trial["id"].as_u64().expect("id");
        let tname = format!("trial_{id:05}");
        assert!(
            status == "TERMINATED" || status == "ERROR",
            "{name}: {tname} is {status}"
        );
        let results = json_lines(&dir.join(&tname).join("result.json"));
        // Where a PBT exploit may restart this trial: its donor's iteration + 1, once each,
        // with the target's iteration when it was exploited.
        let mut restarts: Vec<(Option<u64>, u64)> = exploits
            .iter()
            .filter(|e| e["target"] == tname.as_str())
            .map(|e| {
                (
                    e["target_iteration"].as_u64(),
                    e["donor_iteration"].as_u64().expect("donor_iteration") + 1,
                )
            })
            .collect();
        // result.json holds the results that count, in strictly increasing iterations,
        // contiguous but where an exploit restarted the trial ahead of where it was.
        let mut previous = 0;
        for line in &results {
            let it = iteration(line);
            assert!(
                it > previous,
                "{name}: {tname}'s result.json goes from iteration {previous} to {it}"
            );
            if it != previous + 1 {
                let allowed = restarts.iter().position(|&(_, r)| r == it);
                assert!(
                    allowed.is_some(),
                    "{name}: {tname} jumps from iteration {previous} to {it}"
                );
                if let Some(i) = allowed {
                    restarts.remove(i);
                }
            }
            previous = it;
        }
        // Its current lineage starts after its latest exploit's donor iteration.
        let lineage_start = exploits
            .iter()
            .rfind(|e| e["target"] == tname.as_str())
            .and_then(|e| e["donor_iteration"].as_u64())
            .unwrap_or(0);
        assert_eq!(
            results.last().map_or(0, iteration),
            trial["iteration"].as_u64().expect("iteration"),
            "{name}: {tname}'s last result is its iteration"
        );
        // Every report before its last checkpoint is there once: after the checks above, the
        // last checkpoint's iteration is reached by contiguous iterations from its segment start.
        let csv =
            std::fs::read_to_string(dir.join(&tname).join("progress.csv")).unwrap_or_default();
        let rows = csv.lines().count().saturating_sub(1);
        assert_eq!(rows, results.len(), "{name}: {tname}'s progress.csv agrees");
        // Its last own checkpoint of the current lineage (an exploit drops the ones before).
        if let Some(last) = results
            .iter()
            .rev()
            .filter(|l| iteration(l) > lineage_start)
            .find(|l| l.get("checkpoint_id").is_some())
        {
            let it = iteration(last);
            assert!(
                dir.join(&tname)
                    .join("checkpoints")
                    .join(format!("checkpoint_{it:06}"))
                    .is_dir(),
                "{name}: {tname}'s last checkpoint ({it}) is on disk"
            );
        }
    }
    true
}

/// What each trial reported that the trainable determines: iteration, loss, distance.
fn deterministic_results(dir: &Path) -> BTreeMap<String, Vec<(u64, String, String)>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("trial_") {
            continue;
        }
        let lines = json_lines(&entry.path().join("result.json"));
        out.insert(
            name,
            lines
                .iter()
                .map(|l| {
                    (
                        iteration(l),
                        l["eval_loss"].to_string(),
                        l["distance"].to_string(),
                    )
                })
                .collect(),
        );
    }
    out
}

fn fast(extra: &[&str]) -> Vec<String> {
    // Checkpoints every 3rd epoch: most kills leave results after the latest checkpoint, which
    // the resume must roll back.
    let mut v: Vec<String> = [
        "space.sleep_ms=15",
        "max_failures=0",
        "+space.checkpoint_every=3",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    v.extend(extra.iter().map(|s| (*s).to_string()));
    v
}

#[test]
fn the_head_survives_sigkill_at_random_moments() {
    let scenarios = [
        Scenario {
            name: "crash-asha",
            file: "asha.toml",
            overrides: fast(&["num_samples=8", "space.epochs=6", "scheduler.max_t=6"]),
            kills: 6,
            seed: 1,
            move_before: Some(2),
        },
        Scenario {
            name: "crash-hyperband",
            file: "hyperband.toml",
            overrides: fast(&["num_samples=8", "space.epochs=4"]),
            kills: 6,
            seed: 2,
            move_before: None,
        },
        Scenario {
            name: "crash-pbt",
            file: "pbt.toml",
            overrides: fast(&["num_samples=4", "space.epochs=8"]),
            kills: 6,
            seed: 3,
            move_before: None,
        },
        Scenario {
            name: "crash-fifo",
            file: "fifo.toml",
            overrides: fast(&["num_samples=4", "space.epochs=6"]),
            kills: 5,
            seed: 4,
            move_before: None,
        },
    ];
    let mut tried = 0;
    let mut survived = 0;
    let mut fifo_dir = None;
    let mut outcomes = Vec::new();
    for s in &scenarios {
        let outcome = crash_and_resume(s);
        println!("{}: {} kills", s.name, outcome.tried);
        tried += outcome.tried;
        survived += outcome.survived;
        if s.name == "crash-fifo" {
            fifo_dir = Some(outcome.dir.clone());
        }
        outcomes.push(outcome);
    }
    // FIFO with the deterministic trainable: the same results as a run nobody interrupted.
    let fifo = &scenarios[3];
    let storage = tempfile::tempdir().expect("tempdir");
    let mut args = vec![
        "run".to_string(),
        example(fifo.file),
        "--storage".into(),
        storage.path().display().to_string(),
        "--name".into(),
        "reference".into(),
    ];
    for o in &fifo.overrides {
        args.push("--set".into());
        args.push(o.clone());
    }
    common::run_ok(rtune().args(&args));
    let reference = deterministic_results(&storage.path().join("reference"));
    let crashed = deterministic_results(fifo_dir.as_deref().expect("fifo ran"));
    assert_eq!(
        reference, crashed,
        "FIFO after kills equals an uninterrupted run"
    );
    println!("crash harness: kills survived / kills tried = {survived} / {tried}");
    assert!(tried >= 20, "only {tried} kills happened");
    assert_eq!(survived, tried);
}

//! End-to-end runs of the `rtune` binary with the example trainable as real trial processes.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::{example, json_lines, rtune, run_ok, text};

fn trial_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("experiment dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("trial_"))
        })
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn asha_run_stops_trials_where_the_rungs_say_and_leaves_the_documented_files() {
    let storage = tempfile::tempdir().expect("tempdir");
    let output = run_ok(rtune().args([
        "run",
        &example("asha.toml"),
        "--storage",
        storage.path().to_str().expect("utf-8 path"),
        "--set",
        "space.sleep_ms=0",
    ]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Best trial"), "{}", text(&output));
    assert!(stdout.contains("TERMINATED"), "{}", text(&output));

    let dir = storage.path().join("asha-example");
    for file in [
        "experiment.toml",
        "experiment_state.json",
        "decisions.jsonl",
        "events.jsonl",
    ] {
        assert!(dir.join(file).is_file(), "missing {file}");
    }
    let trials = trial_dirs(&dir);
    assert_eq!(trials.len(), 12);
    for trial in &trials {
        for file in [
            "params.json",
            "result.json",
            "progress.csv",
            "stdout.log",
            "stderr.log",
        ] {
            assert!(
                trial.join(file).is_file(),
                "{} lacks {file}",
                trial.display()
            );
        }
        let results = json_lines(&trial.join("result.json"));
        assert!(!results.is_empty());
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r["training_iteration"], i as u64 + 1);
            for key in [
                "eval_loss",
                "time_total_s",
                "time_this_iter_s",
                "timestamp",
                "trial_id",
                "done",
                "config",
            ] {
                assert!(r.get(key).is_some(), "result lacks {key}: {r}");
            }
        }
        // The last result is marked done, and a trial never reports past max_t.
        assert_eq!(
            results.last().map(|r| r["done"].clone()),
            Some(Value::Bool(true))
        );
        assert!(results.len() <= 5);
    }

    // Every stop decision names its rung and cutoff, and the trial stopped right there: its
    // results end at the iteration the decision was made.
    let decisions = json_lines(&dir.join("decisions.jsonl"));
    let mut stopped_early = 0;
    for d in decisions.iter().filter(|d| d["action"] == "stop") {
        let trial = d["trial"].as_u64().expect("trial id");
        let iteration = d["training_iteration"].as_u64().expect("iteration");
        let results = json_lines(&dir.join(format!("trial_{trial:05}/result.json")));
        assert_eq!(results.len() as u64, iteration, "{d}");
        if iteration < 5 {
            stopped_early += 1;
            let value = d["details"]["value"].as_f64().expect("value");
            let cutoff = d["details"]["cutoff"].as_f64().expect("cutoff");
            // Decisions compare scores (larger is better); eval_loss is minimised.
            assert!(value < cutoff, "{d}");
            assert!(
                d["reason"].as_str().is_some_and(|r| r.contains("rung")),
                "{d}"
            );
        }
    }
    assert!(stopped_early > 0, "ASHA stopped nothing early");

    // The table and the best trial read back from disk.
    let status = run_ok(rtune().args(["status", dir.to_str().expect("utf-8"), "--format", "csv"]));
    let csv = String::from_utf8_lossy(&status.stdout);
    assert_eq!(csv.lines().count(), 13, "{csv}");
    assert!(
        csv.lines()
            .next()
            .is_some_and(|h| h.contains("lr") && h.contains("eval_loss"))
    );
    let best = run_ok(rtune().args(["best", dir.to_str().expect("utf-8"), "--json"]));
    let best: Value = serde_json::from_slice(&best.stdout).expect("best as JSON");
    assert!(best["config"]["lr"].is_number(), "{best}");
}

#[test]
fn a_failed_trial_is_retried_from_its_checkpoint() {
    let storage = tempfile::tempdir().expect("tempdir");
    run_ok(rtune().args([
        "run",
        &example("fifo.toml"),
        "--storage",
        storage.path().to_str().expect("utf-8 path"),
        "--set",
        "num_samples=1",
        "--set",
        "space.sleep_ms=0",
        "--set",
        "+space.fail_at_epoch=3",
        "--set",
        "+space.fail_run=0",
        "--set",
        "max_failures=1",
    ]));
    let dir = storage.path().join("fifo-example");
    for trial in trial_dirs(&dir) {
        // Iterations 1 and 2 from the first run, 3..5 from the retry that resumed at 2.
        let results = json_lines(&trial.join("result.json"));
        let iterations: Vec<u64> = results
            .iter()
            .filter_map(|r| r["training_iteration"].as_u64())
            .collect();
        assert_eq!(iterations, vec![1, 2, 3, 4, 5], "{}", trial.display());
        let epochs: Vec<u64> = results.iter().filter_map(|r| r["epoch"].as_u64()).collect();
        assert_eq!(epochs, vec![1, 2, 3, 4, 5]);
        let error = std::fs::read_to_string(trial.join("error.txt")).expect("error.txt");
        assert!(
            error.contains("exit code 3") || error.contains("status 3"),
            "{error}"
        );
    }
}

#[test]
fn an_unknown_key_is_an_error_naming_the_nearest_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("typo.toml");
    std::fs::write(
        &file,
        "name = \"t\"\nmetric = \"loss\"\nmode = \"min\"\nnum_smaples = 3\n[trial]\ncommand = [\"true\"]\n",
    )
    .expect("write");
    let output = rtune()
        .args(["run", file.to_str().expect("utf-8"), "--storage"])
        .arg(dir.path())
        .output()
        .expect("rtune runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("num_samples"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
}

#[test]
fn a_trial_that_can_never_fit_is_an_error_before_anything_starts() {
    let storage = tempfile::tempdir().expect("tempdir");
    let output = rtune()
        .args(["run", &example("fifo.toml"), "--storage"])
        .arg(storage.path())
        .args([
            "--set",
            "trial.resources.gpu=3",
            "--set",
            "executor.gpus=[\"0\",\"1\"]",
        ])
        .output()
        .expect("rtune runs");
    assert!(!output.status.success(), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains('3') && stderr.contains('2') && stderr.contains("GPU"),
        "{stderr}"
    );
    assert!(!storage.path().join("fifo-example").exists());
}

#[test]
fn each_trial_runs_in_its_own_directory_with_the_commands_paths_from_the_start_directory() {
    let start = tempfile::tempdir().expect("tempdir");
    let storage = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(start.path().join("data")).expect("mkdir");
    std::fs::write(start.path().join("data/in.txt"), "input\n").expect("write");
    // Where it runs, what it was given, and whether the relative input path resolves.
    std::fs::write(
        start.path().join("trial.sh"),
        "{ pwd; echo \"$1\"; cat \"$1\"; echo \"$2\"; echo \"$RTUNE_ORIG_WORKING_DIR\"; \
         echo \"$TUNE_ORIG_WORKING_DIR\"; } > where.txt\n",
    )
    .expect("write");
    std::fs::write(
        start.path().join("exp.toml"),
        "name = \"wd\"\nmetric = \"loss\"\nmode = \"min\"\nnum_samples = 2\n\
         [trial]\ncommand = [\"sh\", \"trial.sh\", \"data/in.txt\", \"--out=out.txt\"]\n\
         require_report = false\n\
         [space]\na = { uniform = [0.0, 1.0] }\n",
    )
    .expect("write");
    let run = |extra: &[&str]| {
        let mut cmd = rtune();
        cmd.args(["run", "exp.toml", "--storage"])
            .arg(storage.path())
            .args(extra)
            .current_dir(start.path());
        cmd.output().expect("rtune runs")
    };
    let output = run(&[]);
    assert!(output.status.success(), "{}", text(&output));
    let start_dir = start.path().canonicalize().expect("start");
    let trials = trial_dirs(&storage.path().join("wd"));
    assert_eq!(trials.len(), 2);
    for trial in &trials {
        let lines: Vec<String> = std::fs::read_to_string(trial.join("where.txt"))
            .expect("the trial wrote where.txt into its own directory")
            .lines()
            .map(String::from)
            .collect();
        let orig = start_dir.to_string_lossy().into_owned();
        let input = start_dir.join("data/in.txt").to_string_lossy().into_owned();
        assert_eq!(
            lines,
            vec![
                trial
                    .canonicalize()
                    .expect("trial")
                    .to_string_lossy()
                    .into_owned(),
                input,
                "input".into(),
                "--out=out.txt".into(),
                orig.clone(),
                orig,
            ]
        );
    }
    assert!(!start.path().join("where.txt").exists());

    // The old behaviour: every trial in the start directory, the command as written.
    let output = run(&[
        "--set",
        "trial.chdir_to_trial_dir=false",
        "--name",
        "shared",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let lines = std::fs::read_to_string(start.path().join("where.txt")).expect("where.txt");
    assert_eq!(lines.lines().nth(1), Some("data/in.txt"), "{lines}");

    let output = run(&[
        "--set",
        "trial.cwd=\"/tmp\"",
        "--set",
        "trial.chdir_to_trial_dir=true",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("trial.cwd and trial.chdir_to_trial_dir = true contradict"),
        "{}",
        text(&output)
    );
}

//! The simulated executor: real experiments (run loop, tuner, ASHA, files) on benchmark
//! functions in virtual time. Each run gets its own current-thread runtime, as `rtune run` does.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rtune_runner::setup::{RunOptions, SetupError, run_experiment};
use serde_json::Value;

const BRANIN_ASHA: &str = r#"
name = "sim"
metric = "value"
mode = "min"
num_samples = 40
seed = 7

[space]
x0 = { uniform = [-5.0, 10.0] }
x1 = { uniform = [0.0, 15.0] }

[scheduler]
type = "asha"
grace_period = 1
max_t = 27
reduction_factor = 3

[executor]
type = "simulated"
benchmark = "mf-branin"
max_concurrent_trials = 4
"#;

fn run(dir: &Path, text: &str, name: &str) -> Result<PathBuf, SetupError> {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let options = RunOptions {
        experiment_path: file,
        overrides: vec![],
        name: Some(name.into()),
        storage: Some(dir.join("results")),
        executor: None,
        rtune_exe: PathBuf::from("/nonexistent/rtune"),
        supervisor: None,
        terminal: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(run_experiment(options))
        .map(|outcome| outcome.dir)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The decisions with their times made relative to the experiment's start (the start itself
/// is the wall clock when the run began).
fn decisions(dir: &Path) -> Vec<(String, String, u64, String, i64)> {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("experiment_state.json")).unwrap())
            .unwrap();
    let start = state["started_at"].as_f64().unwrap();
    lines(&dir.join("decisions.jsonl"))
        .iter()
        .map(|d| {
            (
                d["trial"].as_str().unwrap_or_default().to_string(),
                d["action"].to_string(),
                d["training_iteration"].as_u64().unwrap(),
                d["reason"].as_str().unwrap_or_default().to_string(),
                ((d["time"].as_f64().unwrap() - start) * 10.0).round() as i64,
            )
        })
        .collect()
}

#[test]
fn asha_on_branin_runs_in_virtual_time_and_repeats_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let first = run(tmp.path(), BRANIN_ASHA, "a").expect("simulated run");
    let second = run(tmp.path(), BRANIN_ASHA, "b").expect("simulated run");

    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(first.join("experiment_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["status"], "finished");
    let trials = state["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 40);
    // Virtual time: 40 trials of 1..27 simulated seconds each on 4 workers take minutes of
    // simulated time; a full-fidelity trial alone is 27 s.
    let span = state["finished_at"].as_f64().unwrap() - state["started_at"].as_f64().unwrap();
    assert!(span > 27.0, "simulated span {span}");

    // Every trial has its results, as a real run leaves them; some reached the last rung.
    let mut full = 0;
    for t in 0..40 {
        let results = lines(&first.join(format!("trial_{t:05}/result.json")));
        assert!(!results.is_empty());
        let last = results.last().unwrap();
        assert_eq!(last["done"], true);
        assert_eq!(last["epoch"], last["training_iteration"]);
        if last["epoch"] == 27 {
            full += 1;
        }
    }
    assert!((1..40).contains(&full), "{full} trials ran to the end");

    // Same seed, same benchmark: the same decisions at the same simulated times.
    let a = decisions(&first);
    let b = decisions(&second);
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn lcbench_trials_report_the_surrogate_metrics() {
    let text = r#"
name = "lc"
metric = "val_cross_entropy"
mode = "min"
num_samples = 3
seed = 1

[space]
batch_size = { lograndint = [16, 513] }
learning_rate = { loguniform = [1e-4, 0.1] }
momentum = { uniform = [0.1, 0.99] }
weight_decay = { uniform = [1e-5, 0.1] }
num_layers = { randint = [1, 6] }
max_units = { lograndint = [64, 1025] }
max_dropout = { uniform = [0.0, 1.0] }

[executor]
type = "simulated"
benchmark = "lcbench"
instance = "3945"
max_concurrent_trials = 2
"#;
    let tmp = tempfile::tempdir().unwrap();
    let dir = run(tmp.path(), text, "lc").expect("simulated run");
    let results = lines(&dir.join("trial_00000/result.json"));
    assert_eq!(results.len(), 52);
    for key in [
        "val_accuracy",
        "val_cross_entropy",
        "time",
        "test_balanced_accuracy",
    ] {
        assert!(results[51][key].is_number(), "{key} missing");
    }
    // The time between reports is the surrogate's epoch time.
    let t1 = results[1]["time_this_iter_s"].as_f64().unwrap();
    let d1 = results[1]["time"].as_f64().unwrap() - results[0]["time"].as_f64().unwrap();
    assert!((t1 - d1).abs() < 0.01, "{t1} vs {d1}");
}

#[test]
fn a_config_without_the_benchmark_parameters_fails_its_trials_with_a_clear_error() {
    let text = BRANIN_ASHA
        .replace("x1 = { uniform = [0.0, 15.0] }", "y = 1")
        .replace("num_samples = 40", "num_samples = 2");
    let tmp = tempfile::tempdir().unwrap();
    let dir = run(tmp.path(), &text, "bad").expect("the run itself completes");
    let error = std::fs::read_to_string(dir.join("trial_00000/error.txt")).unwrap();
    assert!(
        error.contains("mf-branin: the config has no `x1`"),
        "{error}"
    );

    let missing = BRANIN_ASHA.replace("benchmark = \"mf-branin\"", "benchmark = \"nope\"");
    let err = run(tmp.path(), &missing, "nope").expect_err("unknown benchmark");
    assert!(
        err.to_string().contains("unknown benchmark `nope`"),
        "{err}"
    );
    assert!(err.to_string().contains("executor.benchmark"), "{err}");
}

#[test]
fn max_total_results_ends_the_experiment_when_the_budget_is_spent() {
    let tmp = tempfile::tempdir().unwrap();
    // One worker: results arrive one at a time, so exactly the budget is taken. 40 trials
    // would take more than 60 results (every trial reports at least one).
    let text = BRANIN_ASHA
        .replace("seed = 7", "seed = 7\nmax_total_results = 60")
        .replace("max_concurrent_trials = 4", "max_concurrent_trials = 1");
    let dir = run(tmp.path(), &text, "budget").expect("simulated run");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("experiment_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["status"], "finished");
    let mut results = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path().join("result.json");
        if path.exists() {
            results += lines(&path).len();
        }
    }
    assert_eq!(results, 60);
    // Why it ended is part of the core's state (in the journal's snapshot) and of the
    // projection readers see.
    assert_eq!(state["ended"]["kind"], "result_budget", "{state}");
    assert_eq!(state["ended"]["results"], 60, "{state}");
    let journal = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    assert!(
        journal.contains("\"result_budget\""),
        "the stop is in the journal"
    );

    let zero = BRANIN_ASHA.replace("seed = 7", "seed = 7\nmax_total_results = 0");
    let err = run(tmp.path(), &zero, "zero").expect_err("a budget of 0 results");
    assert!(err.to_string().contains("max_total_results"), "{err}");
}

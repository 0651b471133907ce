//! The simulator on benchmarks answered by another program: the user's own (a table, through
//! examples/benchmark/table_worker.py) and YAHPO Gym's scenarios through yahpo_gym. The
//! examples' paths are relative to the repository root, where these tests run (every test in
//! this file sets the same working directory).
//!
//! The YAHPO Gym test needs `.venv-yahpo` (`.ci/run` creates it); without it that test is
//! skipped with a message, unless `RTUNE_REQUIRE_YAHPO=1` (set by CI).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use rtune_runner::setup::{RunOptions, SetupError, run_experiment};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Runs the experiment file `file` with `overrides`, from the repository root.
fn run(dir: &Path, file: &Path, overrides: &[&str]) -> Result<PathBuf, SetupError> {
    std::env::set_current_dir(repo_root()).unwrap();
    let options = RunOptions {
        experiment_path: file.to_path_buf(),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        name: None,
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

/// Every trial's results, by trial directory name.
fn results(exp: &Path) -> Vec<(String, Vec<Value>)> {
    let mut out: Vec<(String, Vec<Value>)> = std::fs::read_dir(exp)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name()?.to_str()?.to_string();
            (name.starts_with("trial_") && path.join("result.json").exists())
                .then(|| (name, lines(&path.join("result.json"))))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The example runs GP + ASHA on a table of learning curves through the table worker: every
/// reported value is the table's, and the same seed gives the same decisions.
#[test]
fn the_table_example_runs_the_search_on_the_user_s_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/simulated-table.toml");
    let exp = run(dir.path(), &example, &[]).unwrap();
    let table = std::fs::read_to_string(repo_root().join("examples/benchmark/curves.csv")).unwrap();
    // (lr, width, dropout, epoch) -> val_loss, as the table has them.
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let lookup = |config: &Value, epoch: u64| -> f64 {
        rows.iter()
            .find(|r| {
                r[0].parse::<f64>().unwrap() == config["lr"].as_f64().unwrap()
                    && r[1].parse::<f64>().unwrap() == config["width"].as_f64().unwrap()
                    && r[2].parse::<f64>().unwrap() == config["dropout"].as_f64().unwrap()
                    && r[3].parse::<u64>().unwrap() == epoch
            })
            .map(|r| r[5].parse().unwrap())
            .unwrap()
    };
    let trials = results(&exp);
    assert_eq!(trials.len(), 60);
    let mut full = 0;
    for (name, results) in &trials {
        let params: Value = serde_json::from_str(
            &std::fs::read_to_string(exp.join(name).join("params.json")).unwrap(),
        )
        .unwrap();
        for r in results {
            let epoch = r["epoch"].as_u64().unwrap();
            assert_eq!(
                r["val_loss"].as_f64().unwrap(),
                lookup(&params, epoch),
                "{name}"
            );
        }
        full += usize::from(results.len() == 9);
    }
    assert!(full >= 3, "ASHA let {full} trials train all 9 epochs");
    let proposals = lines(&exp.join("decisions.jsonl"))
        .into_iter()
        .filter(|d| d["action"] == "propose")
        .filter(|d| d["reason"].as_str().unwrap().starts_with("gp: "))
        .count();
    assert!(proposals > 30, "{proposals} model proposals");
    // The same seed: the same decisions.
    let again = tempfile::tempdir().unwrap();
    let exp2 = run(again.path(), &example, &[]).unwrap();
    let strip = |exp: &Path| -> Vec<Value> {
        lines(&exp.join("decisions.jsonl"))
            .into_iter()
            .map(|mut d| {
                d.as_object_mut().unwrap().remove("time");
                d
            })
            .collect()
    };
    assert_eq!(strip(&exp), strip(&exp2));
}

/// A config the benchmark cannot answer fails its trial with the benchmark's own message; a
/// program that breaks the protocol, or that does not exist, stops the run with an error naming
/// it.
#[test]
fn benchmark_programs_that_refuse_or_break_the_protocol_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/simulated-table.toml");
    // A learning rate the table does not have: every trial fails with the worker's message.
    let exp = run(
        dir.path(),
        &example,
        &[
            "space.lr.choice=[0.005]",
            "num_samples=2",
            "searcher.type=random",
        ],
    );
    let message = match exp {
        Ok(exp) => std::fs::read_to_string(exp.join("trial_00000/error.txt")).unwrap(),
        Err(e) => e.to_string(),
    };
    assert!(
        message.contains("no row of examples/benchmark/curves.csv has the config"),
        "{message}"
    );
    // Not a program; a program that answers nonsense.
    for (command, expected) in [
        (
            "executor.benchmark_command=[\"/nonexistent/worker\"]",
            "benchmark program `/nonexistent/worker`: cannot start it",
        ),
        (
            "executor.benchmark_command=[\"sh\", \"-c\", \"read line; echo hello\"]",
            "its answer is not one JSON object per line",
        ),
        (
            "executor.benchmark_command=[\"sh\", \"-c\", \"read line; echo '{}'\"]",
            "its describe answer needs \"max_iterations\"",
        ),
    ] {
        let err = run(dir.path(), &example, &[command])
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{command}: {err}");
    }
}

/// YAHPO Gym's lcbench through yahpo_gym gives the same curves as rtune's own lcbench
/// evaluation: the same seed and random search give the same configs, and every reported value
/// agrees (to float32 rounding; `time` as the agreement test allows).
#[test]
fn a_yahpo_gym_scenario_runs_through_yahpo_gym_and_matches_rtune_s_lcbench() {
    let required = std::env::var("RTUNE_REQUIRE_YAHPO").is_ok_and(|v| v == "1");
    if !repo_root().join(".venv-yahpo/bin/python").is_file() {
        assert!(
            !required,
            "RTUNE_REQUIRE_YAHPO=1 but there is no .venv-yahpo; .ci/run creates it"
        );
        eprintln!("SKIPPED: no .venv-yahpo with yahpo_gym (see .ci/run)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/simulated-yahpo.toml");
    let small = ["num_samples=12", "searcher.type=random"];
    let yahpo = run(dir.path(), &example, &small).unwrap();
    let mut built_in: Vec<&str> = small.to_vec();
    built_in.extend(["executor.benchmark=lcbench", "name=simulated-lcbench"]);
    // The yahpo-only keys must go for the built-in benchmark: write a copy without them.
    let text = std::fs::read_to_string(&example).unwrap();
    let stripped: String = text
        .lines()
        .filter(|l| {
            !["scenario", "data_path", "python"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let copy = dir.path().join("lcbench.toml");
    std::fs::write(&copy, stripped).unwrap();
    let own = run(dir.path(), &copy, &built_in).unwrap();
    let (a, b) = (results(&yahpo), results(&own));
    assert_eq!(a.len(), 12);
    assert_eq!(a.len(), b.len());
    let mut compared = 0;
    for ((name, ra), (_, rb)) in a.iter().zip(&b) {
        assert_eq!(ra.len(), rb.len(), "{name}");
        for (x, y) in ra.iter().zip(rb) {
            for key in [
                "val_cross_entropy",
                "val_accuracy",
                "test_balanced_accuracy",
            ] {
                let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
                assert!(
                    (u - v).abs() <= 1e-4 * v.abs().max(1.0),
                    "{name} {key}: yahpo_gym {u}, rtune {v}"
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 12 * 3, "{compared}");
}

//! The model-based searchers' examples run end to end with the example trainable, and every
//! proposal is in decisions.jsonl with why.

use serde_json::Value;

mod common;
use common::{example, json_lines, rtune, run_ok, text};

fn run(name: &str, dir_name: &str) -> (std::path::PathBuf, tempfile::TempDir) {
    let storage = tempfile::tempdir().expect("tempdir");
    let output = run_ok(rtune().args([
        "run",
        &example(name),
        "--storage",
        storage.path().to_str().expect("utf-8 path"),
        "--set",
        "space.sleep_ms=0",
    ]));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("Best trial"),
        "{}",
        text(&output)
    );
    (storage.path().join(dir_name), storage)
}

fn proposals(dir: &std::path::Path) -> Vec<Value> {
    json_lines(&dir.join("decisions.jsonl"))
        .into_iter()
        .filter(|d| d["action"] == "propose")
        .collect()
}

#[test]
fn tpe_example_warm_starts_then_explores_at_random_then_models() {
    let (dir, _storage) = run("tpe.toml", "tpe-example");
    let proposals = proposals(&dir);
    assert_eq!(proposals.len(), 24, "one proposal per trial");
    for (i, p) in proposals.iter().enumerate() {
        assert_eq!(p["trial"], i as u64, "{p}");
        assert_eq!(p["searcher"], "tpe", "{p}");
    }
    assert_eq!(
        proposals[0]["reason"],
        "warm start: searcher.points_to_evaluate[0]"
    );
    assert_eq!(proposals[1]["reason"], "random initial config 2 of 10");
    let modelled: Vec<&Value> = proposals
        .iter()
        .filter(|p| p["details"]["model"] == "tpe")
        .collect();
    assert!(modelled.len() >= 10, "{proposals:?}");
    for p in modelled {
        assert!(p["details"]["ln_l_over_g"].is_number(), "{p}");
        let reason = p["reason"].as_str().expect("reason");
        assert!(reason.starts_with("tpe: best of 24 candidates"), "{reason}");
    }
    // The warm-start config is the one trial 0 ran with.
    let params: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("trial_00000/params.json")).expect("params"),
    )
    .expect("json");
    assert_eq!(params["lr"], 1e-4);
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("experiment_state.json")).expect("state"),
    )
    .expect("json");
    assert_eq!(state["searcher"], "tpe");
}

#[test]
fn bohb_example_fits_on_asha_rungs() {
    let (dir, _storage) = run("bohb.toml", "bohb-example");
    let proposals = proposals(&dir);
    assert_eq!(proposals.len(), 30);
    let rungs: Vec<f64> = proposals
        .iter()
        .filter_map(|p| p["details"]["rung"].as_f64())
        .collect();
    assert!(
        !rungs.is_empty(),
        "the model was never fitted: {proposals:?}"
    );
    assert!(
        rungs.iter().all(|r| [1.0, 3.0, 9.0].contains(r)),
        "{rungs:?}"
    );
}

#[test]
fn gp_example_warm_starts_then_proposes_by_expected_improvement_on_asha_rungs() {
    let (dir, _storage) = run("gp.toml", "gp-example");
    let proposals = proposals(&dir);
    assert_eq!(proposals.len(), 30);
    assert_eq!(
        proposals[0]["reason"],
        "warm start: searcher.points_to_evaluate[0]"
    );
    let modelled: Vec<&Value> = proposals
        .iter()
        .filter(|p| p["details"]["model"] == "gp")
        .collect();
    assert!(modelled.len() >= 10, "{proposals:?}");
    for p in modelled {
        assert!(p["details"]["ei"].is_number(), "{p}");
        assert!(
            [1.0, 3.0, 9.0].contains(&p["details"]["rung"].as_f64().expect("rung")),
            "{p}"
        );
        let reason = p["reason"].as_str().expect("reason");
        assert!(
            reason.starts_with("gp: largest expected improvement"),
            "{reason}"
        );
    }
}

#[test]
fn a_bad_searcher_setting_is_named_before_anything_runs() {
    let storage = tempfile::tempdir().expect("tempdir");
    for (set, expected) in [
        (
            "searcher.gamma=2",
            "searcher.gamma: must be a fraction between 0 and 1",
        ),
        (
            "searcher.points_to_evaluate=[{lr=1.0}]",
            "searcher.points_to_evaluate[0].lr: 1.0 is outside the space's loguniform",
        ),
    ] {
        let output = rtune()
            .args([
                "run",
                &example("tpe.toml"),
                "--storage",
                storage.path().to_str().expect("utf-8 path"),
                "--set",
                set,
            ])
            .output()
            .expect("rtune runs");
        assert!(!output.status.success(), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{}", text(&output));
        assert!(stderr.contains("tpe.toml"), "{}", text(&output));
    }
    assert!(
        !storage.path().join("tpe-example").exists(),
        "nothing was created"
    );
}

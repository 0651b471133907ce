//! The trainer as a real rtune trial: rtune's run loop (the library behind `rtune run`) starts
//! `rtune-train-lm` processes, which report through the trial protocol with real checkpoints, and
//! synchronous PBT exploits: the exploited trial must continue from the donor's checkpoint.

use std::path::Path;

use rtune_runner::setup::{RunOptions, run_experiment};
use rtune_trainer::squad::write_synthetic_dataset;
use serde_json::Value;

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[test]
fn pbt_exploits_restart_the_trainer_from_the_donors_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // 24 questions at per_device_bs 4: 6 optimizer steps per epoch.
    write_synthetic_dataset(&data, 24, 8, 3).expect("data");
    let trainer = env!("CARGO_BIN_EXE_rtune-train-lm");
    let experiment = dir.path().join("pbt.toml");
    // Two trials whose learning rates differ 300-fold: after epoch 1 the slow one is clearly
    // worse, and synchronous PBT (deterministic: it ranks only once both reached the epoch)
    // makes it exploit the fast one.
    let text = format!(
        r#"
name = "trainer-pbt"
metric = "eval_loss"
mode = "min"
num_samples = 1
seed = 1

[trial]
command = ["{trainer}", "train", "--data", "{data}", "--init", "random", "--layers", "1",
    "--hidden", "32", "--heads", "2", "--vocab", "300", "--max-length", "64", "--epochs", "3"]
resources = {{ cpu = 1 }}

[space]
lr = {{ grid = [1e-5, 3e-3] }}
per_device_bs = 4

[scheduler]
type = "pbt"
perturbation_interval = 1
synch = true
resample_probability = 0.0

[stop]
training_iteration = 3

[executor]
cpus = 2
"#,
        data = data.display()
    );
    std::fs::write(&experiment, text).expect("write the experiment");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = runtime
        .block_on(run_experiment(RunOptions {
            experiment_path: experiment,
            overrides: Vec::new(),
            name: None,
            storage: Some(dir.path().join("results")),
            executor: None,
            rtune_exe: std::path::PathBuf::from(trainer),
            supervisor: None,
            terminal: false,
        }))
        .expect("the experiment runs");
    let exp = outcome.dir;

    let lineage = json_lines(&exp.join("lineage.jsonl"));
    let exploit = lineage.first().expect("at least one exploit");
    assert_eq!(exploit["target"], "trial_00000", "{exploit}");
    assert_eq!(exploit["donor"], "trial_00001", "{exploit}");
    let donor_iteration = exploit["donor_iteration"].as_u64().expect("iteration");

    let target = json_lines(&exp.join("trial_00000/result.json"));
    let donor = json_lines(&exp.join("trial_00001/result.json"));
    let step_at = |results: &[Value], iteration: u64| {
        results
            .iter()
            .rfind(|r| r["training_iteration"] == iteration)
            .and_then(|r| r["step"].as_u64())
    };
    // The donor's optimizer step at its checkpoint, and the target's first result after the
    // exploit: the trainer restored the donor's step counter, so it is one epoch (6 steps)
    // further, where a fresh start would be at step 6.
    let donor_step = step_at(&donor, donor_iteration).expect("donor step");
    assert_eq!(donor_step, donor_iteration * 6);
    let after = step_at(&target, donor_iteration + 1).expect("a result after the exploit");
    assert_eq!(after, donor_step + 6, "target results: {target:?}");
    // It trained on with the explored config (the donor's, moved to a neighbouring grid value
    // or kept), to the end.
    let last = target.last().expect("results");
    assert_eq!(last["training_iteration"], 3);
    assert_eq!(last["config"], exploit["new_config"]);
    // The trainer reported checkpoints that rtune took over.
    assert!(exp.join("trial_00001/checkpoints").is_dir());
}

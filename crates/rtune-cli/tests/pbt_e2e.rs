//! End-to-end runs of PBT, HyperBand, checkpoint retention, lineage and replay: the `rtune`
//! binary with the example trainable as real trial processes.
//!
//! The example trainable reports its exact training state (`distance`), an id for every
//! checkpoint it writes (`checkpoint_id` = `trial/run/epoch`), and, in the first report after a
//! restore, the id, epoch and distance of the checkpoint it restored. That lets these tests prove
//! where a restarted trial continued from, instead of trusting rtune's own logs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::{example, json_lines, rtune, run_ok};

/// `rtune run FILE --storage STORAGE --set ...`; returns the experiment directory.
fn run_experiment(file: &str, storage: &Path, name: &str, sets: &[&str]) -> PathBuf {
    let mut cmd = rtune();
    cmd.args(["run", &example(file), "--name", name, "--storage"])
        .arg(storage);
    for set in sets {
        cmd.args(["--set", set]);
    }
    run_ok(&mut cmd);
    storage.join(name)
}

fn results(dir: &Path, trial: &str) -> Vec<Value> {
    json_lines(&dir.join(trial).join("result.json"))
}

fn state(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("experiment_state.json")).expect("state");
    serde_json::from_str(&text).expect("state JSON")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300)
}

fn number(value: &Value, key: &str) -> f64 {
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number `{key}` in {value}"))
}

fn iteration(value: &Value) -> u64 {
    value["training_iteration"]
        .as_u64()
        .unwrap_or_else(|| panic!("no training_iteration in {value}"))
}

/// The best (lowest) final eval_loss over an experiment's trials.
fn best_final_loss(dir: &Path) -> f64 {
    let mut best = f64::INFINITY;
    for entry in std::fs::read_dir(dir).expect("experiment dir") {
        let path = entry.expect("entry").path();
        if path.join("result.json").is_file() {
            let lines = json_lines(&path.join("result.json"));
            let last = lines.last().expect("a result");
            best = best.min(number(last, "eval_loss"));
        }
    }
    best
}

/// Every trial of the experiment TERMINATED at `iterations`.
fn assert_all_finished(dir: &Path, iterations: u64) {
    let state = state(dir);
    assert_eq!(state["status"], "finished");
    for trial in state["trials"].as_array().expect("trials") {
        assert_eq!(trial["status"], "TERMINATED", "{trial}");
        assert_eq!(trial["iteration"], iterations, "{trial}");
    }
}

/// Checks every exploit in lineage.jsonl against what the processes themselves reported: the
/// target's first report after the exploit comes from a process that restored exactly the
/// checkpoint the donor wrote at `donor_iteration` (same writer, same epoch, same state), it is
/// counted as `donor_iteration + 1`, and it trains with the new config. Returns the exploits.
fn assert_exploits_continue_from_the_donors_checkpoints(
    dir: &Path,
    last_iteration: u64,
) -> Vec<Value> {
    let lineage = json_lines(&dir.join("lineage.jsonl"));
    for exploit in &lineage {
        let target = exploit["target"].as_str().expect("target");
        let donor = exploit["donor"].as_str().expect("donor");
        let k = exploit["donor_iteration"]
            .as_u64()
            .expect("donor_iteration");
        assert!(k >= 1, "{exploit}");
        if k >= last_iteration {
            // The donor's checkpoint is already at the end: nothing is left to train.
            continue;
        }
        let target_results = results(dir, target);
        let restarted = target_results
            .iter()
            .find(|r| {
                // The result line's config is the one the result was produced with.
                r["restored_epoch"] == k
                    && r["config"] == exploit["new_config"]
                    && close(number(r, "lr"), number(&exploit["new_config"], "lr"))
                    && r["restored_checkpoint"]
                        .as_str()
                        .is_some_and(|id| id.starts_with(&format!("{donor}/")))
            })
            .unwrap_or_else(|| {
                panic!("{target} never continued from {donor}'s checkpoint at {k}: {exploit}")
            });
        // Continued from the donor's iteration, not from 0.
        assert_eq!(iteration(restarted), k + 1, "{restarted}");
        assert_eq!(restarted["epoch"], k + 1, "{restarted}");
        // ... and from the donor's weights: the checkpoint the donor reported at iteration k.
        let checkpoint = restarted["restored_checkpoint"].as_str().expect("an id");
        let donor_results = results(dir, donor);
        let written = donor_results
            .iter()
            .find(|r| r["checkpoint_id"] == checkpoint)
            .unwrap_or_else(|| panic!("{donor} never reported checkpoint {checkpoint}"));
        assert_eq!(iteration(written), k, "{written}");
        assert!(
            close(
                number(restarted, "restored_distance"),
                number(written, "distance")
            ),
            "restored {restarted}\nwritten {written}"
        );
    }
    lineage
}

#[test]
fn pbt_with_4_trials_on_2_slots_exploits_and_continues_from_the_donors_checkpoints() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = run_experiment("pbt.toml", storage.path(), "pbt", &["space.sleep_ms=0"]);
    assert_all_finished(&dir, 8);
    let lineage = assert_exploits_continue_from_the_donors_checkpoints(&dir, 8);
    assert!(!lineage.is_empty(), "PBT exploited nothing");
    for exploit in &lineage {
        // (The explored config may equal the target's old one: the donor's lr times 0.1 can be
        // where the target was. The weights still come from the donor.)
        assert!(exploit["old_config"]["lr"].is_number(), "{exploit}");
        assert!(exploit["target_iteration"].as_u64().is_some(), "{exploit}");
    }
    // Time-multiplexing: with 2 slots, trials paused at their perturbation points and resumed
    // from their own checkpoints, where they had left off.
    let decisions = json_lines(&dir.join("decisions.jsonl"));
    assert!(decisions.iter().any(|d| d["action"] == "pause"));
    for d in &decisions {
        let reason = d["reason"].as_str().expect("reason");
        assert!(
            reason.starts_with("pbt") || reason.starts_with("stop criterion"),
            "{d}"
        );
        // Metric values are shown short (eval_loss 0.0222034, not 0.02220344745480785).
        assert!(
            !reason
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .any(|n| n.replace('.', "").trim_start_matches('0').len() > 6),
            "{reason}"
        );
    }
    let resumed = ["trial_00000", "trial_00001", "trial_00002", "trial_00003"]
        .iter()
        .flat_map(|t| results(&dir, t))
        .filter(|r| {
            r["restored_checkpoint"].as_str().is_some_and(|id| {
                id.starts_with(&format!("trial_{}/", r["trial_id"].as_str().unwrap_or("?")))
            })
        })
        .inspect(|r| assert_eq!(r["restored_epoch"].as_u64(), Some(iteration(r) - 1), "{r}"))
        .count();
    assert!(resumed > 0, "no trial resumed from its own checkpoint");

    // `rtune status --lineage`: the exploits, then one trial's exploits and policy.
    let out = run_ok(rtune().args(["status"]).arg(&dir).arg("--lineage"));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("{} exploit(s)", lineage.len())),
        "{table}"
    );
    assert!(table.contains("lr ") && table.contains(" -> "), "{table}");
    let target = lineage[0]["target"].as_str().expect("target");
    let out =
        run_ok(
            rtune()
                .args(["status"])
                .arg(&dir)
                .args(["--lineage", target, "--format", "json"]),
        );
    let report: Value = serde_json::from_slice(&out.stdout).expect("lineage JSON");
    let exploits = report["exploits"].as_array().expect("exploits");
    assert!(!exploits.is_empty());
    assert!(exploits.iter().all(|e| e["target"] == target));
    let policy = report["policy"].as_array().expect("policy");
    assert!(policy.len() >= 2, "{report}");
    assert_eq!(policy[0]["from_iteration"], 0);
    assert_eq!(policy.last().expect("a step")["iterations"][1], 8);
    let out = run_ok(
        rtune()
            .args(["status"])
            .arg(&dir)
            .args(["--lineage", target]),
    );
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains("Policy") && human.contains("took trial_"),
        "{human}"
    );
}

/// On `changing-lr` the best learning rate falls tenfold every 2 epochs (1e-3, 1e-4, 1e-5,
/// 1e-6), and an epoch removes half of the remaining distance at the best rate but only a sixth
/// at a rate one decade off (a 19th at two decades). Over 8 epochs the best rate sweeps three
/// decades, so any fixed rate is at least a decade off for about half of them: the best fixed
/// rate ends near 0.107, while following the optimum ends at 0.5^8 = 0.004. PBT moves the rate a
/// decade at a time and copies whoever is ahead, so it tracks the falling optimum; random search
/// can only pick fixed rates, so no seed can let it beat that bound. Synchronous PBT makes the
/// run deterministic (decisions at each barrier see the whole population, whatever order the
/// processes report in), and both runs start from the same 4 configurations (same seed, same
/// space) with the same budget of trial-iterations.
#[test]
fn pbt_beats_random_search_with_the_same_budget_on_changing_lr() {
    let storage = tempfile::tempdir().expect("tempdir");
    let pbt = run_experiment(
        "pbt.toml",
        storage.path(),
        "pbt-synch",
        &["space.sleep_ms=0", "scheduler.synch=true"],
    );
    assert_all_finished(&pbt, 8);
    assert_exploits_continue_from_the_donors_checkpoints(&pbt, 8);
    let budget: usize = (0..4)
        .map(|i| results(&pbt, &format!("trial_{i:05}")).len())
        .sum();
    // Each trial reports 8 iterations (counting those it inherited), at most once each.
    assert!(budget <= 32, "PBT used {budget} trial-iterations");

    let random = run_experiment(
        "pbt.toml",
        storage.path(),
        "random",
        &["space.sleep_ms=0", "scheduler={ type = \"fifo\" }"],
    );
    assert_all_finished(&random, 8);
    let random_budget: usize = (0..4)
        .map(|i| results(&random, &format!("trial_{i:05}")).len())
        .sum();
    assert_eq!(random_budget, 32);
    // The same starting configurations.
    for i in 0..4 {
        let trial = format!("trial_{i:05}");
        assert_eq!(
            results(&pbt, &trial)[0]["config"]["lr"],
            results(&random, &trial)[0]["config"]["lr"]
        );
    }

    let pbt_best = best_final_loss(&pbt);
    let random_best = best_final_loss(&random);
    assert!(
        pbt_best < random_best,
        "PBT {pbt_best} vs random search {random_best}"
    );
    // Stronger: PBT beats every fixed learning rate, measured with the trainable itself over a
    // fine grid (20 per decade) of fixed rates from 1e-6 to 1e-2.
    let best_fixed = (0..=80)
        .map(|i| {
            let lr = 10f64.powf(-6.0 + f64::from(i) / 20.0);
            let config = format!(r#"{{"lr": {lr}, "problem": "changing-lr", "epochs": 8}}"#);
            let out = run_ok(
                Command::new(env!("CARGO_BIN_EXE_rtune-example"))
                    .env_remove("RTUNE_ADDR")
                    .args(["--config", &config]),
            );
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let last: Value =
                serde_json::from_str(stdout.lines().last().expect("8 lines")).expect("JSON");
            number(&last, "eval_loss")
        })
        .fold(f64::INFINITY, f64::min);
    assert!(
        pbt_best < best_fixed / 2.0,
        "PBT {pbt_best} vs the best fixed learning rate {best_fixed}"
    );
}

#[test]
fn replay_reproduces_an_exploited_trial_from_scratch_with_its_policy() {
    let storage = tempfile::tempdir().expect("tempdir");
    let pbt = run_experiment(
        "pbt.toml",
        storage.path(),
        "pbt",
        &["space.sleep_ms=0", "scheduler.synch=true"],
    );
    // The best trial, which PBT exploited on its way (its policy has several configs).
    let best: Value =
        serde_json::from_slice(&run_ok(rtune().arg("best").arg(&pbt).arg("--json")).stdout)
            .expect("best JSON");
    let trial = best["trial_dir"].as_str().expect("trial_dir").to_string();
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(pbt.join(&trial).join("policy.json")).expect("policy.json"),
    )
    .expect("policy JSON");
    let steps = policy.as_array().expect("steps");
    assert!(steps.len() >= 2, "{policy}");

    run_ok(
        rtune()
            .arg("replay")
            .arg(&pbt)
            .arg(&trial)
            .args(["--name", "replayed"]),
    );
    let replay = storage.path().join("replayed");
    assert_all_finished(&replay, 8);
    let replayed = results(&replay, "trial_00000");
    // From scratch: its first report is iteration 1 from a fresh process.
    assert_eq!(iteration(&replayed[0]), 1);
    assert!(replayed[0].get("restored_checkpoint").is_none());
    // Each iteration ran with the policy's config for it, switching from its own checkpoints.
    for r in &replayed {
        let t = iteration(r);
        let step = steps
            .iter()
            .rev()
            .find(|s| s["from_iteration"].as_u64().is_some_and(|f| f < t))
            .expect("a step");
        assert!(close(number(r, "lr"), number(&step["config"], "lr")), "{r}");
        if let Some(id) = r["restored_checkpoint"].as_str() {
            assert!(id.starts_with("trial_00000/"), "{r}");
        }
    }
    // The same schedule gives the same training: the replay ends where the original did.
    let original = results(&pbt, &trial);
    let (a, b) = (
        original.last().expect("a result"),
        replayed.last().expect("a result"),
    );
    assert!(
        close(number(a, "distance"), number(b, "distance")),
        "{a}\n{b}"
    );
    let replay_lineage = json_lines(&replay.join("lineage.jsonl"));
    assert_eq!(replay_lineage.len(), steps.len() - 1);
}

#[test]
fn checkpoint_retention_keeps_one_checkpoint_per_trial_and_pbt_still_finds_its_donors() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = run_experiment(
        "pbt.toml",
        storage.path(),
        "keep-one",
        &["space.sleep_ms=0", "checkpoint.num_to_keep=1"],
    );
    assert_all_finished(&dir, 8);
    let lineage = assert_exploits_continue_from_the_donors_checkpoints(&dir, 8);
    assert!(!lineage.is_empty(), "PBT exploited nothing");
    let events = std::fs::read_to_string(dir.join("events.jsonl")).expect("events");
    assert!(!events.contains("cannot copy"), "{events}");
    for i in 0..4 {
        let checkpoints = dir.join(format!("trial_{i:05}/checkpoints"));
        let kept: Vec<String> = std::fs::read_dir(&checkpoints)
            .expect("checkpoints dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !kept.is_empty() && kept.len() <= 2,
            "{}: {kept:?}",
            checkpoints.display()
        );
    }
}

#[test]
fn hyperband_pauses_trials_at_rungs_and_resumes_the_best_of_each_bracket() {
    let storage = tempfile::tempdir().expect("tempdir");
    let dir = run_experiment(
        "hyperband.toml",
        storage.path(),
        "hb",
        &["space.sleep_ms=0"],
    );
    let state = state(&dir);
    assert_eq!(state["status"], "finished");
    let decisions = json_lines(&dir.join("decisions.jsonl"));
    let pauses: Vec<&Value> = decisions
        .iter()
        .filter(|d| d["action"] == "pause")
        .collect();
    assert!(!pauses.is_empty(), "nobody waited at a rung");

    // Each judgement of a (bracket, rung): the kept are better than every stopped one, and
    // their number is floor(n / eta), at least 1.
    let mut judged = std::collections::BTreeMap::<(u64, String), Vec<&Value>>::new();
    for d in &decisions {
        if d["details"]["rank"].is_u64() {
            let bracket = d["details"]["bracket"].as_u64().expect("bracket");
            let rung = d["details"]["rung"].to_string();
            judged.entry((bracket, rung)).or_default().push(d);
        }
    }
    assert!(!judged.is_empty(), "no rung was judged");
    let mut resumed_total = 0;
    for ((bracket, rung), group) in &judged {
        let competing = group[0]["details"]["competing"]
            .as_u64()
            .expect("competing");
        let keep = group[0]["details"]["keep"].as_u64().expect("keep");
        assert_eq!(
            keep,
            (competing / 2).max(1),
            "bracket {bracket} rung {rung}"
        );
        let kept: Vec<f64> = group
            .iter()
            .filter(|d| d["action"] == "continue")
            .map(|d| number(&d["details"], "score"))
            .collect();
        let stopped: Vec<f64> = group
            .iter()
            .filter(|d| d["action"] == "stop")
            .map(|d| number(&d["details"], "score"))
            .collect();
        assert!(kept.len() as u64 <= keep, "bracket {bracket} rung {rung}");
        for k in &kept {
            for s in &stopped {
                assert!(
                    k >= s,
                    "bracket {bracket} rung {rung}: kept {k}, stopped {s}"
                );
            }
        }
        resumed_total += kept.len();
    }
    assert!(resumed_total > 0);

    // A paused trial that resumed continued from its own checkpoint at the rung: iterations
    // without gaps or repeats, and the process says where it started.
    let mut resumes = 0;
    for trial in state["trials"].as_array().expect("trials") {
        let name = format!("trial_{:05}", trial["id"].as_u64().expect("an id"));
        let lines = results(&dir, &name);
        let iterations: Vec<u64> = lines.iter().map(iteration).collect();
        let expected: Vec<u64> = (1..=iterations.len() as u64).collect();
        assert_eq!(iterations, expected, "{name}");
        assert!(iterations.len() <= 4, "{name} trained past max_t");
        for r in lines
            .iter()
            .filter(|r| r["restored_checkpoint"].is_string())
        {
            let t = iteration(r);
            assert_eq!(r["restored_epoch"], t - 1, "{r}");
            assert!(
                r["restored_checkpoint"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&format!("{name}/"))
                        && id.ends_with(&format!("/epoch{}", t - 1))),
                "{r}"
            );
            resumes += 1;
        }
    }
    assert!(resumes > 0, "no trial resumed after a pause");
}

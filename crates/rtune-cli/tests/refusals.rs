//! Reports that must be refused (docs/protocol.md, "Refused reports"), sent by a hand-written
//! trial that speaks the raw protocol and logs every answer it gets: after `stop`, past `max_t`,
//! as another trial, with a checkpoint that is not the trial's to hand over, with a metric that is
//! not a number. Each refusal must leave nothing in the trial's files.

mod common;

use std::path::{Path, PathBuf};

use common::{json_lines, python_available, rtune, run_ok, text};
use serde_json::Value;

/// A trial that does what `config["case"]` says, one fresh connection per report (a refused
/// token closes the connection), logging each request and answer to answers.jsonl.
const LIAR: &str = r#"
import json, os, socket, sys
env = os.environ
cfg = json.loads(env["RTUNE_CONFIG"])
host, _, port = env["RTUNE_ADDR"].rpartition(":")
tid = env["RTUNE_TRIAL_ID"]
tdir = env["RTUNE_TRIAL_DIR"]
exp = env["RTUNE_EXPERIMENT_DIR"]
scratch = env["RTUNE_SCRATCH_DIR"]
log = open(os.path.join(tdir, "answers.jsonl"), "a")

def send(metrics, checkpoint=None, trial=None):
    conn = socket.create_connection((host, int(port)))
    req = {"v": 1, "secret": env["RTUNE_SECRET"], "trial": trial or tid,
           "run": int(env["RTUNE_RUN"]), "type": "report", "metrics": metrics}
    if checkpoint is not None:
        req["checkpoint"] = checkpoint
    conn.sendall((json.dumps(req) + "\n").encode())
    answer = json.loads(conn.makefile("rb").readline())
    conn.close()
    log.write(json.dumps({"metrics": metrics, "checkpoint": checkpoint, "as": trial,
                          "answer": answer}) + "\n")
    log.flush()
    return answer

def fresh(name):
    path = os.path.join(scratch, name)
    os.makedirs(path)
    with open(os.path.join(path, "w.txt"), "w") as f:
        f.write(name)
    return path

case = cfg["case"]
if case == "keep_reporting":
    for i in range(1, 7):
        send({"loss": 1.0 / i, "epoch": i * cfg.get("epoch_step", 1)})
elif case == "impersonate":
    if int(tid) == 0:
        send({"loss": 0.001}, trial="00001")
    send({"loss": 1.0 + int(tid)})
elif case == "checkpoints":
    if int(tid) == 0:
        send({"loss": 0.9}, checkpoint=fresh("first"))
        for bad in [exp, os.path.join(exp, "trial_00001"), tdir,
                    os.path.join(tdir, "checkpoints"),
                    os.path.join(tdir, "checkpoints", "checkpoint_000001"),
                    os.path.join(scratch, "missing"), scratch]:
            send({"loss": 0.5}, checkpoint=bad)
        send({"loss": "abc"})
        send({"loss": 0.4, "note": "abc"})
    else:
        send({"loss": 2.0})
"#;

struct Setup {
    _storage: tempfile::TempDir,
    dir: PathBuf,
    file: PathBuf,
}

fn experiment(case: &str, extra: &str) -> Setup {
    let storage = tempfile::tempdir().expect("tempdir");
    let script = storage.path().join("liar.py");
    std::fs::write(&script, LIAR).expect("write the trial");
    let file = storage.path().join("refusals.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"refusals\"\nmetric = \"loss\"\nmode = \"min\"\n{extra}\n\
             [trial]\ncommand = [\"python3\", {script:?}]\nresources = {{ cpu = 0.5 }}\n\
             stop_grace_s = 30\n\
             [space]\ncase = \"{case}\"\n"
        ),
    )
    .expect("write the experiment");
    let dir = storage.path().join("refusals");
    Setup {
        _storage: storage,
        dir,
        file,
    }
}

fn run(setup: &Setup, sets: &[&str]) -> String {
    let output = run_output(setup, sets);
    assert!(output.status.success(), "{}", text(&output));
    text(&output)
}

fn run_output(setup: &Setup, sets: &[&str]) -> std::process::Output {
    let mut cmd = rtune();
    cmd.arg("run")
        .arg(&setup.file)
        .arg("--storage")
        .arg(setup.dir.parent().expect("storage"));
    for set in sets {
        cmd.args(["--set", set]);
    }
    cmd.output().expect("rtune runs")
}

fn answers(trial: &Path) -> Vec<Value> {
    json_lines(&trial.join("answers.jsonl"))
        .into_iter()
        .map(|line| line["answer"].clone())
        .collect()
}

fn iterations(trial: &Path) -> Vec<u64> {
    json_lines(&trial.join("result.json"))
        .iter()
        .filter_map(|r| r["training_iteration"].as_u64())
        .collect()
}

fn error_of(answer: &Value) -> &str {
    assert_eq!(answer["ok"], false, "{answer}");
    answer["error"].as_str().unwrap_or_default()
}

#[test]
fn reports_after_stop_are_refused_and_never_recorded() {
    if !python_available() {
        return;
    }
    let setup = experiment(
        "keep_reporting",
        "[scheduler]\ntype = \"asha\"\ngrace_period = 1\nmax_t = 2\nreduction_factor = 2\n",
    );
    let console = run(&setup, &[]);
    let trial = setup.dir.join("trial_00000");
    assert_eq!(iterations(&trial), vec![1, 2], "{console}");
    let answers = answers(&trial);
    assert_eq!(answers.len(), 6);
    assert_eq!(answers[0]["action"], "continue");
    assert_eq!(answers[1]["action"], "stop");
    for answer in &answers[2..] {
        let error = error_of(answer);
        assert!(
            error.contains("trial_00000 was told to stop at training_iteration 2"),
            "{error}"
        );
    }
    assert!(console.contains("report refused"), "{console}");
    let best = run_ok(rtune().arg("best").arg(&setup.dir).arg("--json"));
    let best: Value = serde_json::from_slice(&best.stdout).expect("best as JSON");
    assert!(best["training_iteration"].as_u64() <= Some(2), "{best}");
}

#[test]
fn a_report_past_max_t_is_refused() {
    if !python_available() {
        return;
    }
    // Progress is measured by the reported `epoch`, which jumps by 3: the first report (epoch 3)
    // is already past max_t = 2.
    let setup = experiment(
        "keep_reporting",
        "[scheduler]\ntype = \"asha\"\ntime_attr = \"epoch\"\ngrace_period = 1\nmax_t = 2\n\
         reduction_factor = 2\n",
    );
    // Every report was refused, so the trial ends without a result that counts: an ERROR
    // (exit 3) that says so, not a silent success.
    let output = run_output(&setup, &["+space.epoch_step=3"]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let trial = setup.dir.join("trial_00000");
    let answers = answers(&trial);
    let error = error_of(&answers[0]);
    assert!(
        error.contains("epoch = 3 is past the scheduler's max_t = 2"),
        "{error}"
    );
    assert!(!trial.join("result.json").exists() || iterations(&trial).is_empty());
    let error = std::fs::read_to_string(trial.join("error.txt")).expect("error.txt");
    assert!(error.contains("without a result that counts"), "{error}");
}

#[test]
fn no_trial_can_report_as_another() {
    if !python_available() {
        return;
    }
    let setup = experiment("impersonate", "num_samples = 2\n");
    run(&setup, &[]);
    let liar = setup.dir.join("trial_00000");
    let answers = answers(&liar);
    let error = error_of(&answers[0]);
    assert!(error.contains("wrong secret for trial_00001"), "{error}");
    assert_eq!(answers[1]["ok"], true, "its own report still counts");
    let victim = json_lines(&setup.dir.join("trial_00001").join("result.json"));
    let losses: Vec<f64> = victim.iter().filter_map(|r| r["loss"].as_f64()).collect();
    assert_eq!(losses, vec![2.0], "only the victim's own report");
}

#[test]
fn checkpoints_outside_the_scratch_dir_and_non_number_metrics_are_refused() {
    if !python_available() {
        return;
    }
    let setup = experiment("checkpoints", "num_samples = 2\n");
    run(&setup, &[]);
    let trial = setup.dir.join("trial_00000");
    let answers = answers(&trial);
    assert_eq!(answers.len(), 10, "{answers:?}");
    assert_eq!(answers[0]["ok"], true, "a fresh scratch directory is taken");
    let expected = [
        "is or contains the experiment directory",
        "is inside another trial's directory (trial_00001)",
        "is the trial's own directory",
        "is inside the trial's own checkpoints/",
        "is inside the trial's own checkpoints/",
        "does not exist",
        "is RTUNE_SCRATCH_DIR itself",
    ];
    for (answer, why) in answers[1..8].iter().zip(expected) {
        let error = error_of(answer);
        assert!(error.contains(why), "{error} should say {why:?}");
        assert!(error.contains("nothing was moved"), "{error}");
    }
    let error = error_of(&answers[8]);
    assert!(
        error.contains("metric `loss` is \"abc\" (a string)"),
        "{error}"
    );
    assert_eq!(answers[9]["ok"], true);

    // Only the two accepted reports are recorded, the second with its non-number extra key.
    assert_eq!(iterations(&trial), vec![1, 2]);
    let results = json_lines(&trial.join("result.json"));
    assert_eq!(results[1]["note"], "abc");
    // Nothing moved: the sibling keeps its files, the checkpoint is where rtune put it, and no
    // checkpoint directory was nested into another.
    let sibling = setup.dir.join("trial_00001");
    assert!(sibling.join("params.json").is_file());
    assert!(sibling.join("result.json").is_file());
    let kept = trial.join("checkpoints").join("checkpoint_000001");
    assert_eq!(
        std::fs::read_to_string(kept.join("w.txt")).expect("checkpoint kept"),
        "first"
    );
    let entries: Vec<String> = std::fs::read_dir(trial.join("checkpoints"))
        .expect("checkpoints/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec!["checkpoint_000001"]);
    assert!(trial.join("scratch").is_dir(), "the scratch dir stays");
    assert_eq!(
        std::fs::read_dir(&kept).expect("kept").count(),
        1,
        "nothing nested into the kept checkpoint"
    );
}

#[test]
fn a_time_attr_the_trial_never_reports_is_named() {
    if !python_available() {
        return;
    }
    let setup = experiment(
        "keep_reporting",
        "[scheduler]\ntype = \"median\"\ntime_attr = \"bogus\"\n",
    );
    // The first such result ends the experiment (exit 2): every trial would repeat the mistake.
    let output = run_output(&setup, &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no number `bogus`, the scheduler's time_attr")
            && stderr.contains("it reported `loss`, `epoch`"),
        "{stderr}"
    );
    let trial = setup.dir.join("trial_00000");
    assert!(!trial.join("result.json").exists() || iterations(&trial).is_empty());
}

#[test]
fn a_wrong_metric_name_ends_the_experiment_at_the_first_result_and_names_the_keys() {
    if !python_available() {
        return;
    }
    let setup = experiment("keep_reporting", "num_samples = 3\n");
    let output = run_output(&setup, &["metric=\"val_loss\""]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the result has no `val_loss`")
            && stderr.contains("it reported `loss`, `epoch`")
            && stderr.contains("did you mean `loss`"),
        "{stderr}"
    );
    // Nothing trained on: the trials were stopped at once, not run to their end.
    for id in 0..3 {
        let trial = setup.dir.join(format!("trial_{id:05}"));
        assert!(
            !trial.join("result.json").exists() || iterations(&trial).is_empty(),
            "trial {id} recorded results"
        );
    }
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(setup.dir.join("experiment_state.json")).expect("state"),
    )
    .expect("json");
    assert_eq!(state["ended"]["kind"], "bad_report", "{state}");
    // `missing_metric = "ignore"` lets a trainable report the metric only sometimes.
    let setup = experiment(
        "keep_reporting",
        "num_samples = 1\nmissing_metric = \"ignore\"\n",
    );
    let output = run_output(&setup, &["metric=\"val_loss\""]);
    assert!(output.status.success(), "{}", text(&output));
}

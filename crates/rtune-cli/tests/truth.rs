//! Runs that tell the truth early (issue 22), each checked through real `rtune` processes: a
//! trainable that never reports, a trainable that hangs, a NaN metric (a diverged trial, not a
//! wrong metric name), `rtune best` without the metric, the
//! commands a finished run prints, finding experiments by name (`rtune status NAME`, `rtune
//! list`), result files under PBT (`done`, `run`, `superseded.json`), numbers that read back
//! exactly, the simulated executor's console, the live headline, and README's quick start.
//!
//! (A wrong metric name and a missing `time_attr` are checked in refusals.rs; a run ended by
//! `report_timeout_s` in durable.rs.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{example, json_lines, python_available, repo, rtune, run_ok, text, toml_string};
use serde_json::Value;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn state(dir: &Path) -> Value {
    read_json(&dir.join("experiment_state.json"))
}

fn trial_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("experiment dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("trial_"))
        .collect();
    names.sort();
    names
}

/// `rtune run FILE --storage STORAGE --set ...`, not checked.
fn run_file(file: &Path, storage: &Path, sets: &[&str]) -> Output {
    let mut cmd = rtune();
    cmd.arg("run").arg(file).arg("--storage").arg(storage);
    for set in sets {
        cmd.args(["--set", set]);
    }
    cmd.output().expect("rtune runs")
}

/// An experiment file whose trials print to stdout and exit 0 without ever reporting.
fn never_reports(dir: &Path, name: &str) -> PathBuf {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nmetric = \"loss\"\nmode = \"min\"\nnum_samples = 2\n\
             [trial]\ncommand = [\"sh\", \"-c\", \"echo epoch 1 loss 0.5; echo done\"]\n\
             resources = {{ cpu = 0.5 }}\n\
             [space]\nx = {{ uniform = [0, 1] }}\n"
        ),
    )
    .expect("write the experiment");
    file
}

#[test]
fn a_trainable_that_prints_but_never_reports_is_an_error_unless_reports_are_optional() {
    let storage = tempfile::tempdir().expect("tempdir");
    let file = never_reports(storage.path(), "quiet");
    let output = run_file(&file, storage.path(), &[]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let err = stderr(&output);
    assert!(err.contains("2 of 2 trials ended in ERROR"), "{err}");
    assert!(err.contains("without a result that counts"), "{err}");
    let dir = storage.path().join("quiet");
    let state = state(&dir);
    assert_eq!(state["counts"]["ERROR"], 2, "{state}");
    for trial in state["trials"].as_array().expect("trials") {
        assert_eq!(trial["status"], "ERROR", "{trial}");
        assert_eq!(trial["iteration"], 0, "{trial}");
    }
    for name in trial_names(&dir) {
        let error = std::fs::read_to_string(dir.join(&name).join("error.txt")).expect("error.txt");
        assert!(
            error.contains("exited with status 0 without a result that counts")
                && error.contains("never calls `report`")
                && error.contains("trial.require_report = false"),
            "{name}: {error}"
        );
        // What it printed is kept, for the user to see that it ran.
        let out = std::fs::read_to_string(dir.join(&name).join("stdout.log")).expect("stdout");
        assert!(out.contains("epoch 1 loss 0.5"), "{out}");
    }

    // An experiment that says reports are optional accepts such trials.
    let output = run_file(
        &file,
        storage.path(),
        &["name=\"quiet-ok\"", "trial.require_report=false"],
    );
    assert!(output.status.success(), "{}", text(&output));
    let state = self::state(&storage.path().join("quiet-ok"));
    assert_eq!(state["counts"]["TERMINATED"], 2, "{state}");
}

/// A trial script in Python through the repository's one-file client; `case` says what it does.
const OBSERVER: &str = r#"
import json, os, sys, time
sys.path.insert(0, PYTHON_DIR)
import rtune_client
s = rtune_client.session()
case = s.config["case"]
state_file = os.path.join(s.experiment_dir, "experiment_state.json")

def state():
    # Written atomically (a rename): never half a file.
    try:
        with open(state_file) as f:
            return json.load(f)
    except FileNotFoundError:
        return None

def wait_for(what, deadline_s=120):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = what(state())
        if found is not None:
            return found
        time.sleep(0.1)
    sys.exit(f"{s.trial_name}: gave up waiting after {deadline_s} s")

if case == "silent":
    if s.trial_id.endswith("0"):
        for i in range(1, 6):
            s.report({"loss": 1.0 / i})
    else:
        s.report({"loss": 2.0})
        # Hang (as a dead NCCL peer would) until rtune flags this trial as silent.
        def flagged(st):
            mine = [t for t in (st or {}).get("trials", []) if t["name"] == s.trial_name]
            return mine[0] if mine and mine[0]["silent"] else None
        seen = wait_for(flagged)
        with open(os.path.join(s.trial_dir, "seen.json"), "w") as f:
            json.dump(seen, f)
        s.report({"loss": 1.5})
elif case == "diverge":
    # Trial 0 diverges first (the client sends NaN as null), then recovers.
    first = float("nan") if s.trial_id.endswith("0") else 1.0
    for loss in [first, 0.5, 0.25]:
        s.report({"loss": loss})
elif case == "progress":
    if s.trial_id.endswith("0"):
        s.report({"loss": 0.25})
    else:
        # Go on once a snapshot shows a finished trial: that snapshot's headline was printed.
        wait_for(lambda st: True if st and st["counts"].get("TERMINATED", 0) >= 1 else None)
        s.report({"loss": 0.5 + s.config["x"]})
"#;

/// Writes the observer trial and an experiment for it; returns the experiment file.
fn observer_experiment(dir: &Path, name: &str, case: &str, extra: &str) -> PathBuf {
    let python_dir = repo().join("python");
    let script = dir.join("observer.py");
    std::fs::write(
        &script,
        OBSERVER.replace("PYTHON_DIR", &toml_string(&python_dir.to_string_lossy())),
    )
    .expect("write the trial");
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"{name}\"\nmetric = \"loss\"\nmode = \"min\"\n{extra}\n\
             [trial]\ncommand = [\"python3\", {}]\nresources = {{ cpu = 0.5 }}\n\
             [space]\ncase = \"{case}\"\nx = {{ uniform = [0, 1] }}\n\
             [output]\nreport_interval_s = 0.5\n",
            toml_string(&script.to_string_lossy())
        ),
    )
    .expect("write the experiment");
    file
}

/// Runs an observer experiment, which must succeed; returns the storage (removed when dropped),
/// the experiment's directory and the output. None (the test is skipped) without python3.
fn run_observer(
    name: &str,
    case: &str,
    extra: &str,
) -> Option<(tempfile::TempDir, PathBuf, Output)> {
    if !python_available() {
        return None;
    }
    let storage = tempfile::tempdir().expect("tempdir");
    let file = observer_experiment(storage.path(), name, case, extra);
    let output = run_file(&file, storage.path(), &[]);
    assert!(output.status.success(), "{}", text(&output));
    let dir = storage.path().join(name);
    Some((storage, dir, output))
}

/// The silent rule (tuner.rs: SILENT_FACTOR, SILENT_MIN_S) never flags a trial before 30 s
/// without a report, so this test takes about 31 s (it runs beside the others).
#[test]
fn a_hanging_trial_is_flagged_silent_in_the_table_and_the_state_but_not_ended() {
    // Silence is a flag, not a failure: the trial reports again and finishes.
    let Some((_storage, dir, output)) = run_observer(
        "hang",
        "silent",
        "num_samples = 2\n[executor]\nmax_concurrent_trials = 2\n",
    ) else {
        return;
    };
    let out = stdout(&output);

    // The trial itself saw the flag in experiment_state.json while it hung.
    let seen = read_json(&dir.join("trial_00001").join("seen.json"));
    assert_eq!(seen["silent"], true, "{seen}");
    assert_eq!(seen["status"], "RUNNING", "{seen}");
    assert_eq!(seen["iteration"], 1, "{seen}");

    let warning = out
        .lines()
        .find(|l| l.contains("WARNING trial_00001 has reported nothing for"))
        .unwrap_or_else(|| panic!("no silent warning in\n{out}"));
    assert!(
        warning.contains("much longer than the other trials take between reports")
            && warning.contains("trial.report_timeout_s"),
        "{warning}"
    );
    // The live table printed from that very snapshot marks it.
    assert!(
        out.lines()
            .any(|l| l.contains("trial_00001") && l.contains("RUNNING (silent)")),
        "{out}"
    );
    assert!(!out.contains("WARNING trial_00000"), "{out}");
    let events = json_lines(&dir.join("events.jsonl"));
    assert!(
        events.iter().any(|e| e["event"] == "warning"
            && e["trial"] == "00001"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("reported nothing"))),
        "no warning event"
    );
    let state = state(&dir);
    for trial in state["trials"].as_array().expect("trials") {
        assert_eq!(trial["status"], "TERMINATED", "{trial}");
        assert_eq!(trial["silent"], false, "{trial}");
    }
}

/// A wrong metric name ends the experiment at the first result (refusals.rs), but a metric that
/// is NaN (a diverged trial; JSON has no NaN, so clients send `null`) is a result like any other.
#[test]
fn a_nan_metric_is_recorded_and_does_not_end_the_experiment() {
    let Some((_storage, dir, _)) = run_observer("nan", "diverge", "num_samples = 2\n") else {
        return;
    };
    let losses: Vec<Value> = json_lines(&dir.join("trial_00000").join("result.json"))
        .iter()
        .map(|r| r["loss"].clone())
        .collect();
    assert_eq!(losses, vec![Value::Null, 0.5.into(), 0.25.into()]);
    let state = state(&dir);
    assert_eq!(state["counts"]["TERMINATED"], 2, "{state}");
    assert_eq!(state["trials"][0]["best"]["value"], 0.25, "{state}");
}

#[test]
fn the_live_headline_shows_the_best_so_far_and_the_time_left() {
    let Some((_storage, _, output)) = run_observer(
        "headline",
        "progress",
        "num_samples = 3\n[executor]\nmax_concurrent_trials = 1\n",
    ) else {
        return;
    };
    let out = stdout(&output);
    // Trial 1 went on only after a snapshot with trial 0 finished had been written, and every
    // snapshot written while trials run prints a table with its headline (report_interval_s is
    // shorter than the time between snapshots).
    let headline = out
        .lines()
        .find(|l| l.starts_with("== 1 of 3 trials finished"))
        .unwrap_or_else(|| panic!("no headline after the first trial finished in\n{out}"));
    assert!(
        headline.contains("; best loss 0.25 (trial_00000)") && headline.contains(" left"),
        "{headline}"
    );
    assert!(headline.contains("about "), "{headline}");
}

#[test]
fn best_without_the_metric_names_the_metric_and_the_keys_reported() {
    let storage = tempfile::tempdir().expect("tempdir");
    let output = run_file(
        Path::new(&example("fifo.toml")),
        storage.path(),
        &[
            "space.sleep_ms=0",
            "num_samples=2",
            "metric=\"val_loss\"",
            "missing_metric=\"ignore\"",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        stdout(&output).contains("No trial reported val_loss."),
        "{}",
        text(&output)
    );
    let dir = storage.path().join("fifo-example");
    for json in [false, true] {
        let mut cmd = rtune();
        cmd.arg("best").arg(&dir);
        if json {
            cmd.arg("--json");
        }
        let output = cmd.output().expect("rtune best");
        assert!(!output.status.success(), "{}", text(&output));
        let err = stderr(&output);
        assert!(
            err.contains("has reported the metric `val_loss`")
                && err.contains(
                    "they reported `checkpoint_id`, `distance`, `epoch`, `eval_loss`, `lr`"
                )
                && err.contains("`metric` must be one of these keys"),
            "{err}"
        );
    }
}

/// A word a POSIX shell reads back as `text` (quoted when it has to be).
fn quoted(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%~".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// `sh -c LINE` in `cwd`, checked.
fn shell(line: &str, cwd: &Path, envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(line)
        .current_dir(cwd)
        .env_remove("RTUNE_LOG");
    for (key, value) in envs {
        cmd.env(key, value);
    }
    run_ok(&mut cmd)
}

#[test]
fn a_run_ends_with_its_path_and_commands_and_names_find_experiments_under_the_storage_root() {
    let scratch = tempfile::tempdir().expect("tempdir");
    // A storage root with a space, so the printed commands must quote the path to work.
    let root = scratch.path().join("my results");
    let elsewhere = scratch.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    let output = run_ok(
        rtune()
            .args(["run", &example("asha.toml"), "--name", "asha-next"])
            .args(["--set", "space.sleep_ms=0"])
            .env("RTUNE_STORAGE", &root)
            .current_dir(&elsewhere),
    );
    let dir = root.join("asha-next");
    let word = quoted(&dir.to_string_lossy());
    let out = stdout(&output);
    let last: Vec<&str> = out.lines().rev().take(4).collect();
    let binary = quoted(env!("CARGO_BIN_EXE_rtune"));
    assert_eq!(
        last,
        vec![
            format!("  {binary} dashboard {word}"),
            format!("  {binary} best {word}"),
            format!("  {binary} status {word}"),
            format!("Results in {word}"),
        ],
        "{out}"
    );
    // The commands work as printed, pasted into a shell anywhere.
    let status = shell(last[2].trim(), &elsewhere, &[]);
    assert!(stdout(&status).contains("trial_00011"), "{}", text(&status));
    let best = shell(last[1].trim(), scratch.path(), &[]);
    assert!(
        stdout(&best).starts_with("Best trial: trial_"),
        "{}",
        text(&best)
    );

    // NAME under the storage root ($RTUNE_STORAGE), from another directory.
    let under_root = |args: &[&str]| {
        let mut cmd = rtune();
        cmd.args(args)
            .env("RTUNE_STORAGE", &root)
            .current_dir(&elsewhere);
        cmd
    };
    let by_name = run_ok(&mut under_root(&["status", "asha-next"]));
    assert_eq!(stdout(&by_name), stdout(&status));
    let best_by_name = run_ok(&mut under_root(&["best", "asha-next", "--json"]));
    let best: Value = serde_json::from_slice(&best_by_name.stdout).expect("best JSON");

    // A second experiment there, whose trials all end in ERROR.
    let quiet = never_reports(scratch.path(), "quiet");
    let output = run_file(&quiet, &root, &[]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));

    // The storage root is not an experiment: say what it is and what to do.
    let output = rtune()
        .arg("status")
        .arg(&root)
        .output()
        .expect("rtune status");
    // Invalid input (a wrong name on the command line), not an internal error.
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let err = stderr(&output);
    assert!(
        err.contains("is a directory of experiments (2 of them), not one experiment")
            && err.contains(&format!("rtune list {}", root.display())),
        "{err}"
    );
    // A misspelled name gets the near one.
    let output = under_root(&["status", "asha-nxt"])
        .output()
        .expect("rtune status");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        stderr(&output).contains("did you mean `asha-next`?"),
        "{}",
        text(&output)
    );

    // `rtune list`: both, with status, trial counts, ERROR counts and best values.
    let listed = run_ok(&mut under_root(&["list", "--json"]));
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("list JSON");
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let (asha, errors) = (&listed[0], &listed[1]);
    assert_eq!(asha["name"], "asha-next");
    assert_eq!(asha["status"], "finished");
    assert_eq!(asha["trials"], 12);
    assert_eq!(asha["errors"], 0);
    assert_eq!(asha["metric"], "eval_loss");
    assert_eq!(asha["best"], best["value"]);
    assert_eq!(PathBuf::from(asha["path"].as_str().expect("path")), dir);
    assert_eq!(errors["name"], "quiet");
    assert_eq!(errors["trials"], 2);
    assert_eq!(errors["errors"], 2);
    assert_eq!(errors["best"], Value::Null);
    let table = stdout(&run_ok(rtune().arg("list").arg(&root)));
    let row = |name: &str| -> Vec<String> {
        let cells: Vec<String> = table
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no row for {name} in\n{table}"))
            .split(['│', '┆'])
            .map(|cell| cell.trim().to_string())
            .collect();
        // Between the outer borders.
        cells[1..cells.len() - 1].to_vec()
    };
    let header = row("experiment");
    let asha_row = row("asha-next");
    let quiet_row = row("quiet");
    let cell = |row: &[String], column: &str| -> String {
        let index = header
            .iter()
            .position(|h| h == column)
            .unwrap_or_else(|| panic!("no column {column} in {header:?}"));
        row[index].clone()
    };
    assert_eq!(cell(&asha_row, "status"), "finished");
    assert_eq!(cell(&asha_row, "trials"), "12");
    assert_eq!(cell(&asha_row, "ERROR"), "0");
    let shown: f64 = cell(&asha_row, "best").parse().expect("a number");
    let exact = best["value"].as_f64().expect("a value");
    assert!(
        (shown - exact).abs() <= 1e-4 * exact.abs(),
        "{shown} vs {exact}"
    );
    assert_eq!(cell(&quiet_row, "trials"), "2");
    assert_eq!(cell(&quiet_row, "ERROR"), "2");
    assert_eq!(cell(&quiet_row, "best"), "");
}

/// Runs `examples/pbt.toml` with checkpoints only every 2nd epoch, so a donor's latest
/// checkpoint is often older than its target's iteration, until such an exploit happens (PBT's
/// exploits depend on the order the processes report in). Every run's files must hold: one line
/// per iteration that counts, each with its run, `done` only on the final one; lines an exploit
/// replaced are in superseded.json.
#[test]
fn under_pbt_results_count_once_carry_their_run_and_only_the_final_one_is_done() {
    let storage = tempfile::tempdir().expect("tempdir");
    let mut replaced_by_an_exploit = 0;
    let mut runs_after_the_first = 0;
    for seed in 0..10 {
        let name = format!("pbt-{seed}");
        run_ok(
            rtune()
                .args(["run", &example("pbt.toml"), "--name", &name, "--storage"])
                .arg(storage.path())
                .args([
                    "--set",
                    "space.sleep_ms=0",
                    "--set",
                    "+space.checkpoint_every=2",
                ])
                .args(["--set", &format!("seed={seed}")]),
        );
        let dir = storage.path().join(&name);
        for trial in trial_names(&dir) {
            let (results, superseded) = check_result_files(&dir.join(&trial));
            runs_after_the_first += results.iter().filter(|r| r["run"] != 0).count();
            for line in &superseded {
                let reason = line["superseded"]["reason"].as_str().unwrap_or_default();
                assert!(
                    reason == "rolled back" || reason == "replaced by an exploit",
                    "{line}"
                );
                assert!(line["superseded"]["time"].is_f64(), "{line}");
            }
        }
        let lineage = match std::fs::read_to_string(dir.join("lineage.jsonl")) {
            Ok(_) => json_lines(&dir.join("lineage.jsonl")),
            Err(_) => Vec::new(),
        };
        for exploit in &lineage {
            let (k, t) = (
                exploit["donor_iteration"]
                    .as_u64()
                    .expect("donor_iteration"),
                exploit["target_iteration"]
                    .as_u64()
                    .expect("target_iteration"),
            );
            if k >= t {
                continue;
            }
            // The target gave up iterations k+1..=t: its line at t (the latest that counted
            // when the exploit was decided) now sits in superseded.json, marked, with the config
            // it was produced with.
            let target = dir.join(exploit["target"].as_str().expect("target"));
            let superseded = read_lines(&target.join("superseded.json"));
            let found = superseded.iter().any(|line| {
                line["training_iteration"] == t
                    && line["superseded"]["reason"] == "replaced by an exploit"
                    && line["config"] == exploit["old_config"]
            });
            if found {
                replaced_by_an_exploit += 1;
            }
        }
        if replaced_by_an_exploit > 0 {
            break;
        }
    }
    assert!(
        replaced_by_an_exploit > 0,
        "no exploit from a donor behind its target in 10 seeds"
    );
    assert!(runs_after_the_first > 0, "no trial ran more than once");
}

/// The lines of a JSON-lines file, none when it does not exist.
fn read_lines(path: &Path) -> Vec<Value> {
    if path.exists() {
        json_lines(path)
    } else {
        Vec::new()
    }
}

/// Checks a finished trial's result.json against progress.csv and superseded.json: strictly
/// increasing iterations, a run on every line, `done` on the final line only; progress.csv has
/// the same rows; no (iteration, run) is in both files. Returns both files' lines.
fn check_result_files(trial: &Path) -> (Vec<Value>, Vec<Value>) {
    let results = json_lines(&trial.join("result.json"));
    let superseded = read_lines(&trial.join("superseded.json"));
    let name = trial.display();
    let iterations: Vec<u64> = results
        .iter()
        .map(|r| {
            r["training_iteration"]
                .as_u64()
                .expect("training_iteration")
        })
        .collect();
    assert!(
        iterations.windows(2).all(|w| w[0] < w[1]),
        "{name}: iterations {iterations:?}"
    );
    for (index, line) in results.iter().enumerate() {
        assert!(line["run"].is_u64(), "{name}: {line}");
        let last = index + 1 == results.len();
        assert_eq!(
            line["done"],
            last,
            "{name}: line {index} of {}",
            results.len()
        );
    }
    // progress.csv: the same rows (no value here holds a comma or a quote).
    let csv = std::fs::read_to_string(trial.join("progress.csv")).expect("progress.csv");
    let mut rows = csv.lines().map(|l| l.split(',').collect::<Vec<_>>());
    let header = rows.next().expect("a header");
    let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (done, run, iteration) = (column("done"), column("run"), column("training_iteration"));
    let rows: Vec<Vec<&str>> = rows.collect();
    assert_eq!(rows.len(), results.len(), "{name}: {csv}");
    for (row, line) in rows.iter().zip(&results) {
        assert_eq!(row[done], line["done"].to_string(), "{name}: {csv}");
        assert_eq!(row[run], line["run"].to_string(), "{name}: {csv}");
        assert_eq!(
            row[iteration],
            line["training_iteration"].to_string(),
            "{name}"
        );
    }
    let counted: BTreeSet<(u64, u64)> = results
        .iter()
        .map(|r| {
            (
                r["training_iteration"].as_u64().unwrap_or(0),
                r["run"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for line in &superseded {
        let key = (
            line["training_iteration"]
                .as_u64()
                .expect("training_iteration"),
            line["run"].as_u64().expect("run"),
        );
        assert!(
            !counted.contains(&key),
            "{name}: {line} is also in result.json"
        );
    }
    (results, superseded)
}

/// The number's bits: two numbers are the same only when every bit is.
fn bits(value: &Value, what: &str) -> u64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"))
        .to_bits()
}

/// Log-uniform learning rates printed shortest (17 significant digits for many of them) come
/// back bit for bit everywhere rtune reads them: the state, `rtune status --format json`, `rtune
/// best`, the trial's own config and what it reports. (serde_json's default parser, which rtune
/// used before, reads about one such number in nine one bit off.)
#[test]
fn numbers_read_back_exactly_in_every_file_and_command() {
    let storage = tempfile::tempdir().expect("tempdir");
    let file = storage.path().join("exact.toml");
    std::fs::write(
        &file,
        "name = \"exact\"\nmetric = \"eval_loss\"\nmode = \"min\"\nnum_samples = 60\nseed = 7\n\
         [trial]\ncommand = [\"rtune-example\"]\nresources = { cpu = 0.5 }\n\
         [space]\nlr = { loguniform = [1e-6, 1e-2] }\nepochs = 1\n",
    )
    .expect("write the experiment");
    let output = run_file(&file, storage.path(), &[]);
    assert!(output.status.success(), "{}", text(&output));
    let dir = storage.path().join("exact");
    let state = state(&dir);
    let table = run_ok(rtune().arg("status").arg(&dir).args(["--format", "json"]));
    let table: Value = serde_json::from_slice(&table.stdout).expect("status JSON");
    let names = trial_names(&dir);
    assert_eq!(names.len(), 60);
    for (index, name) in names.iter().enumerate() {
        let params = read_json(&dir.join(name).join("params.json"));
        let lr = bits(&params["lr"], "params.json's lr");
        let result = &json_lines(&dir.join(name).join("result.json"))[0];
        for (what, value) in [
            (
                "experiment_state.json",
                &state["trials"][index]["config"]["lr"],
            ),
            ("rtune status --format json", &table[index]["config"]["lr"]),
            ("result.json's config", &result["config"]["lr"]),
            ("the lr the trial read and reported", &result["lr"]),
        ] {
            assert_eq!(
                bits(value, what),
                lr,
                "{name}: {what} has {value}, params.json {}",
                params["lr"]
            );
        }
    }
    let best = run_ok(rtune().arg("best").arg(&dir).arg("--json"));
    let best: Value = serde_json::from_slice(&best.stdout).expect("best JSON");
    let trial = best["trial_dir"].as_str().expect("trial_dir");
    let params = read_json(&dir.join(trial).join("params.json"));
    assert_eq!(
        bits(&best["config"]["lr"], "best's lr"),
        bits(&params["lr"], "lr")
    );
    // The text form prints the very digits params.json holds.
    let block = stdout(&run_ok(rtune().arg("best").arg(&dir)));
    assert!(
        block.contains(&format!("lr = {}", params["lr"])),
        "{block}\nparams.json: {params}"
    );
}

/// The simulated executor runs in virtual time: its console shows durations (a clock time would
/// be a time that never was), and a piped log gets a full table per `report_interval_s` of real
/// time, not of simulated time (which made an lcbench run's log hold 143 tables).
#[test]
fn a_simulated_run_prints_durations_and_a_bounded_number_of_tables() {
    let storage = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let output = run_file(
        Path::new(&example("simulated-lcbench.toml")),
        storage.path(),
        &["num_samples=100", "output.report_interval_s=1"],
    );
    let real_s = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "{}", text(&output));
    let out = stdout(&output);
    let tables = out.lines().filter(|l| l.starts_with("== ")).count();
    // One when it starts, then at most one per real second.
    assert!(
        (1..=2 + real_s as usize).contains(&tables),
        "{tables} tables in {real_s:.1} s:\n{out}"
    );
    let finished = out
        .lines()
        .find(|l| l.starts_with("Experiment simulated-lcbench finished"))
        .unwrap_or_else(|| panic!("no final line in\n{out}"));
    assert!(finished.contains(" of simulated time ("), "{finished}");
    // The final table shows the best 50 of the 100 trials and says what it left out; the state
    // file keeps them all.
    assert!(
        out.contains("\n... and 50 more trials (TERMINATED 100); `rtune status` shows all\n"),
        "{out}"
    );
    let all = state(&storage.path().join("simulated-lcbench"));
    assert_eq!(all["trials"].as_array().map(Vec::len), Some(100));
    // The first line says when the run started (a real time, now); nothing after it shows a clock.
    let clock = |line: &str| {
        line.as_bytes().windows(8).any(|w| {
            w.iter().enumerate().all(|(i, b)| {
                if i == 2 || i == 5 {
                    *b == b':'
                } else {
                    b.is_ascii_digit()
                }
            })
        })
    };
    let mut lines = out.lines();
    assert!(
        lines.next().is_some_and(|l| l.contains(" started at ")),
        "{out}"
    );
    for line in lines {
        assert!(!clock(line), "a clock time in a simulated run: {line}");
    }
}

/// The fenced block after `<!-- quickstart: NAME -->` in README.md.
fn readme_block(readme: &str, name: &str) -> String {
    let marker = format!("<!-- quickstart: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let fence_start = after.find("```").expect("a fenced block");
    let body = &after[fence_start..];
    let body = &body[body.find('\n').expect("a fence line") + 1..];
    body[..body.find("```").expect("the closing fence")].to_string()
}

/// README's "From your script to results", run exactly as written: its script, its experiment
/// file and its command lines, with `rtune` on PATH and the `rtune` Python package importable
/// (what installing the wheel gives).
#[test]
fn the_readme_quick_start_runs_as_written() {
    if !python_available() {
        return;
    }
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let work = tempfile::tempdir().expect("tempdir");
    for name in ["train.py", "tune.toml"] {
        std::fs::write(work.path().join(name), readme_block(&readme, name)).expect("write");
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_rtune"))
        .parent()
        .expect("the binary's directory")
        .to_path_buf();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let storage = work.path().join("results");
    let python = repo().join("python");
    let envs: [(&str, &Path); 3] = [
        ("PATH", Path::new(&path)),
        ("RTUNE_STORAGE", &storage),
        ("PYTHONPATH", &python),
    ];
    let commands = readme_block(&readme, "run");
    let lines: Vec<&str> = commands.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines[0].starts_with("rtune run "), "{commands}");
    let mut outputs = Vec::new();
    for line in &lines {
        outputs.push(shell(line, work.path(), &envs));
    }
    let run = stdout(&outputs[0]);
    assert!(run.contains("Best trial: trial_"), "{run}");
    let dir = storage.join("quickstart");
    let state = state(&dir);
    assert_eq!(state["status"], "finished", "{state}");
    assert_eq!(state["counts"]["ERROR"], Value::Null, "{state}");
    assert!(
        outputs[1..]
            .iter()
            .any(|o| stdout(o).contains("Best trial: trial_")),
        "the README's follow-up commands show the best trial"
    );
}

//! The dashboard and the HTML report in a real browser: headless Chromium (Debian's `chromium`)
//! driven over the DevTools protocol by crates/rtune-dashboard/tests/browser/check-page.mjs
//! (playwright-core from npm). It opens `rtune dashboard` during a running ASHA experiment and
//! after it, a finished PBT experiment, a 300-trial simulated experiment, a failed one next to a
//! same-named one, and `rtune report`'s files; checks that the page logs no errors, that a new
//! result appears without a reload, and that the trial count and best value shown equal
//! `rtune best --json`; does with the mouse and the controls what a person does (hovering and
//! pinning a learning curve, another reported key, the log scale, the full range, comparing two
//! trials, brushing the parallel coordinates, the slice plot) and compares what the page then
//! shows with the experiment's files; and writes a screenshot of each view under
//! target/tmp/dashboard-screenshots/.
//!
//! Without chromium, node or the npm packages the tests are skipped with a message; CI sets
//! RTUNE_REQUIRE_BROWSER=1, which makes a missing browser a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, json_lines, repo, rtune, run_ok, text};
use serde_json::{Map, Value};

fn browser_dir() -> PathBuf {
    repo().join("crates/rtune-dashboard/tests/browser")
}

/// Whether the browser, node and playwright-core are there; without them the test is skipped,
/// unless RTUNE_REQUIRE_BROWSER=1 (CI), where it fails.
fn browser_ready() -> bool {
    let chromium =
        std::env::var("RTUNE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    let mut missing = Vec::new();
    if !Path::new(&chromium).exists() {
        missing.push(format!("{chromium} (apt-get install -y chromium)"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node (apt-get install -y nodejs)".to_string());
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        missing.push(format!(
            "playwright-core (cd {} && npm ci)",
            browser_dir().display()
        ));
    }
    if missing.is_empty() {
        return true;
    }
    let message = format!("browser test needs: {}", missing.join(", "));
    if std::env::var("RTUNE_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("{message} (RTUNE_REQUIRE_BROWSER=1)");
    }
    eprintln!("SKIPPED: {message}");
    false
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

/// Runs check-page.mjs; returns what it printed.
fn check_page(url: &str, prefix: &str, extra: &[&str]) -> Value {
    let output = Command::new("node")
        .arg(browser_dir().join("check-page.mjs"))
        .args(["--url", url, "--prefix", prefix, "--shots"])
        .arg(screenshots())
        .args(extra)
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "check-page failed:\n{}",
        text(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// `rtune dashboard DIR` on a free port; returns the process and the page's URL.
fn start_dashboard(dir: &Path) -> (KillOnDrop, String) {
    let child = rtune()
        .args(["dashboard", "--interval-ms", "200"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("rtune dashboard starts");
    dashboard_url(child)
}

/// The URL a started `rtune dashboard` prints first.
fn dashboard_url(mut child: Child) -> (KillOnDrop, String) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("rtune dashboard prints its URL");
    let url = line
        .strip_prefix("rtune dashboard: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (KillOnDrop(child), url)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until `path` exists: the experiment writes its state file within a second
/// of starting.
fn wait_for_file(path: &Path, run: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        if let Ok(Some(status)) = run.try_wait() {
            panic!(
                "rtune run ended ({status}) before writing {}",
                path.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn best_json(dir: &Path) -> Value {
    let output = run_ok(rtune().args(["best", "--json"]).arg(dir));
    serde_json::from_slice(&output.stdout).expect("rtune best --json prints JSON")
}

fn trial_count(dir: &Path) -> usize {
    let output = run_ok(rtune().args(["status", "--format", "json"]).arg(dir));
    let v: Value = serde_json::from_slice(&output.stdout).expect("status JSON");
    v.as_array()
        .or_else(|| v.get("trials").and_then(Value::as_array))
        .map_or(0, Vec::len)
}

fn assert_matches_best(page: &Value, dir: &Path) {
    let best = best_json(dir);
    let shown = page["best"].as_f64().expect("the page shows a best value");
    let expected = best["value"].as_f64().expect("rtune best has a value");
    assert_eq!(
        shown, expected,
        "best value: page {page} vs rtune best {best}"
    );
    assert_eq!(page["bestTrial"].as_str(), best["trial"].as_str(), "{page}");
    assert_eq!(
        page["count"].as_u64(),
        Some(trial_count(dir) as u64),
        "trial count: {page}"
    );
}

#[test]
fn dashboard_during_and_after_an_asha_run_and_its_report() {
    if !browser_ready() {
        return;
    }
    let storage = tempfile::tempdir().expect("tempdir");
    let mut run = rtune()
        .args(["run", &example("asha.toml"), "--storage"])
        .arg(storage.path())
        // One trial at a time, 0.8 s per iteration: the run lasts long enough (about 20 s) for
        // the page to load while it runs.
        .args(["--set", "space.sleep_ms=800", "--set", "num_samples=8"])
        .args(["--set", "executor.max_concurrent_trials=1"])
        // A uniform parameter over a wide range: drawn linear (it was taken for a log one).
        .args(["--set", "+space.dropout.uniform=[0.001, 0.5]"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rtune run starts");
    let dir = storage.path().join("asha-example");
    wait_for_file(&dir.join("experiment_state.json"), &mut run);
    let (_server, url) = start_dashboard(&dir);
    // During the run: a new result must appear without a reload; then, once the run has
    // finished, the page must agree with `rtune best --json`.
    let page = check_page(
        &url,
        "asha-live",
        &[
            "--expect-new-result",
            "--wait-finished",
            "--timeout-ms",
            "300000",
            "--interact",
        ],
    );
    let status = run.wait().expect("rtune run ends");
    assert!(status.success(), "rtune run failed: {status}");
    assert_matches_best(&page, &dir);
    assert_asha_interactions(&page["interact"], &dir);

    // The report of the finished experiment, opened from disk: the same page, the same views.
    let report = storage.path().join("report.html");
    run_ok(rtune().arg("report").arg(&dir).arg("-o").arg(&report));
    let page = check_page(
        &format!("file://{}", report.display()),
        "asha-report",
        &["--interact"],
    );
    assert_matches_best(&page, &dir);
    assert_asha_interactions(&page["interact"], &dir);
}

/// Runs examples/`name` to its end under a fresh storage directory with `sets` (`--set` values);
/// returns the storage (removed when dropped) and the experiment directory `dir_name` in it.
fn finished_run(name: &str, sets: &[&str], dir_name: &str) -> (tempfile::TempDir, PathBuf) {
    let storage = tempfile::tempdir().expect("tempdir");
    let mut command = rtune();
    command
        .args(["run", &example(name), "--storage"])
        .arg(storage.path());
    for set in sets {
        command.args(["--set", set]);
    }
    run_ok(&mut command);
    let dir = storage.path().join(dir_name);
    (storage, dir)
}

/// The learning curves of check-page.mjs's --curve-values: each trial's points as drawn are its
/// results that count, and the others are marked. Returns how many were marked.
fn assert_curves_draw_the_results_that_count(page: &Value, dir: &Path) -> u64 {
    let metric = state(dir)["metric"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut superseded = 0;
    for (trial, _) in trial_configs(dir) {
        let (expected, replaced) = counting_points(dir, trial, &metric);
        let drawn: Vec<(u64, f64)> = page["curveValues"]["points"][trial.to_string()]
            .as_array()
            .map(|pts| {
                pts.iter()
                    .filter_map(|p| Some((p[0].as_u64()?, p[1].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(drawn, expected, "trial {trial}");
        superseded += replaced as u64;
    }
    assert_eq!(
        page["curveValues"]["superseded"].as_u64(),
        Some(superseded),
        "superseded results marked"
    );
    superseded
}

/// experiment_state.json.
fn state(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("experiment_state.json")).expect("a state file");
    serde_json::from_str(&text).expect("state JSON")
}

fn trial_configs(dir: &Path) -> Vec<(u64, Map<String, Value>)> {
    state(dir)["trials"]
        .as_array()
        .expect("trials")
        .iter()
        .map(|t| {
            let id = t["id"].as_u64().expect("an id");
            (id, t["config"].as_object().cloned().unwrap_or_default())
        })
        .collect()
}

/// A trial's results that count (docs/file-formats.md): result.json's lines with `key`, where a
/// line whose iteration goes back (in files written before such lines were moved to
/// superseded.json) replaces the earlier ones from its iteration on. Also returns how many lines
/// with `key` do not count: those replaced, and superseded.json's.
fn counting_points(dir: &Path, trial: u64, key: &str) -> (Vec<(u64, f64)>, usize) {
    let trial_dir = dir.join(format!("trial_{trial:05}"));
    let mut kept: Vec<(u64, Option<f64>)> = Vec::new();
    let mut replaced = 0;
    for line in json_lines(&trial_dir.join("result.json")) {
        let it = line["training_iteration"].as_u64().expect("an iteration");
        while kept.last().is_some_and(|(i, _)| *i >= it) {
            if kept.pop().is_some_and(|(_, v)| v.is_some()) {
                replaced += 1;
            }
        }
        kept.push((it, line[key].as_f64()));
    }
    let superseded = trial_dir.join("superseded.json");
    if superseded.exists() {
        replaced += json_lines(&superseded)
            .iter()
            .filter(|l| l[key].is_number())
            .count();
    }
    let points = kept
        .into_iter()
        .filter_map(|(i, v)| Some((i, v?)))
        .collect();
    (points, replaced)
}

/// The value at `iteration` among a trial's results that count.
fn value_at(dir: &Path, trial: u64, key: &str, iteration: u64) -> f64 {
    counting_points(dir, trial, key)
        .0
        .into_iter()
        .find(|(i, _)| *i == iteration)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("trial {trial} has no {key} at iteration {iteration}"))
}

fn axis<'a>(interact: &'a Value, id: &str) -> &'a Value {
    interact["parallel"]["axes"]
        .as_array()
        .and_then(|axes| axes.iter().find(|a| a["id"] == id))
        .unwrap_or_else(|| panic!("no axis {id}: {}", interact["parallel"]))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What check-page.mjs's --interact saw on the ASHA example (lr loguniform, per_device_bs and
/// wd choices, dropout uniform), against the experiment's files.
fn assert_asha_interactions(interact: &Value, dir: &Path) {
    let configs = trial_configs(dir);
    let best = interact["best"]["id"].as_u64().expect("the best trial");
    let best_it = interact["best"]["iteration"]
        .as_u64()
        .expect("its iteration");

    // Learning curves: whole-number iteration ticks; the hovered line's trial, config,
    // iteration and value in the tooltip, and the line highlighted; a click pins it.
    for tick in strings(&interact["curvesBefore"]["xTicks"]) {
        assert!(tick.parse::<u64>().is_ok(), "iteration tick {tick:?}");
    }
    let hover = &interact["hover"];
    let tip = hover["text"].as_str().expect("tooltip text");
    assert_eq!(hover["trial"].as_u64(), Some(best), "{hover}");
    assert_eq!(hover["state"]["hovered"].as_u64(), Some(best), "{hover}");
    for part in [
        format!("trial_{best:05}"),
        format!("training_iteration {best_it}: eval_loss = "),
        "lr = ".to_string(),
        "per_device_bs = ".to_string(),
        "dropout = ".to_string(),
    ] {
        assert!(tip.contains(&part), "the tooltip lacks {part:?}: {tip}");
    }
    assert_eq!(
        hover["value"].as_f64(),
        Some(value_at(dir, best, "eval_loss", best_it)),
        "{hover}"
    );
    let pinned: Vec<u64> = interact["pinnedAfterClick"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert!(pinned.contains(&best), "the click pinned {pinned:?}");
    assert!(
        interact["legendPinned"]
            .as_array()
            .is_some_and(|a| a.contains(&Value::from(best))),
        "the legend shows the pin: {}",
        interact["legendPinned"]
    );

    // Any reported key: the trainable's `distance` is plotted from its own values.
    let keys = strings(&interact["keys"]);
    assert_eq!(keys.first().map(String::as_str), Some("eval_loss"));
    assert!(keys.iter().any(|k| k == "distance"), "{keys:?}");
    let other = &interact["otherKey"];
    assert_eq!(other["state"]["key"], "distance");
    assert_eq!(
        other["point"]["value"].as_f64(),
        Some(value_at(dir, best, "distance", best_it)),
        "{other}"
    );
    // The log scale.
    assert_eq!(interact["log"]["distr"], 3, "{}", interact["log"]);
    assert!(
        interact["log"]["range"][0]
            .as_f64()
            .is_some_and(|lo| lo > 0.0)
    );

    // Compare: the pinned trial and one ticked in the table, their curves on one chart, the
    // parameters that differ marked.
    let compare = &interact["compare"];
    let ids: Vec<u64> = compare["trials"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert_eq!(ids.len(), 2, "{compare}");
    assert!(ids.contains(&best), "{compare}");
    assert_eq!(compare["series"], 2, "{compare}");
    let config = |id: u64| &configs.iter().find(|(i, _)| *i == id).expect("a trial").1;
    for param in ["lr", "per_device_bs", "wd", "dropout"] {
        let row = compare["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["row"] == param))
            .unwrap_or_else(|| panic!("no row {param}: {compare}"));
        let differs = config(ids[0]).get(param) != config(ids[1]).get(param);
        assert_eq!(row["differs"].as_bool(), Some(differs), "{param}: {row}");
    }

    // Parallel coordinates: axes from the search space; no "1.5" between the choices 1 and 2;
    // the uniform dropout linear however wide its range; labels that do not overlap.
    assert_eq!(axis(interact, "p:lr")["kind"], "log");
    assert_eq!(axis(interact, "p:dropout")["kind"], "linear");
    assert_eq!(axis(interact, "p:per_device_bs")["kind"], "categorical");
    assert_eq!(axis(interact, "p:wd")["kind"], "categorical");
    let parallel = &interact["parallel"];
    assert_eq!(strings(&parallel["ticks"]["p:per_device_bs"]), ["1", "2"]);
    assert_eq!(strings(&parallel["names"])[0], "lr (log)");
    assert_eq!(strings(&parallel["names"])[3], "dropout");
    assert_eq!(parallel["clashes"]["overlaps"], 0, "{parallel}");
    assert_eq!(parallel["clashes"]["outside"], 0, "{parallel}");

    // Brushing: a brush on per_device_bs = 2 leaves exactly those trials in the table; a click
    // on the axis clears it; a brush on lr leaves the trials whose lr lies in its range.
    let brushed = interact["brushed"].as_array().expect("brushes");
    let with_bs2 = configs
        .iter()
        .filter(|(_, c)| c.get("per_device_bs") == Some(&Value::from(2)))
        .count();
    assert_eq!(brushed[0]["brush"]["values"], serde_json::json!([2]));
    assert_eq!(
        brushed[0]["count"].as_u64(),
        Some(with_bs2 as u64),
        "{}",
        brushed[0]
    );
    assert!(
        strings(&brushed[0]["column"]).iter().all(|v| v == "2"),
        "{}",
        brushed[0]
    );
    assert_eq!(brushed[1]["count"].as_u64(), Some(configs.len() as u64));
    let lo = brushed[2]["brush"]["lo"].as_f64().expect("lo");
    let hi = brushed[2]["brush"]["hi"].as_f64().expect("hi");
    let in_lr = configs
        .iter()
        .filter(|(_, c)| {
            c.get("lr")
                .and_then(Value::as_f64)
                .is_some_and(|x| lo <= x && x <= hi)
        })
        .count();
    assert_eq!(
        brushed[2]["count"].as_u64(),
        Some(in_lr as u64),
        "{}",
        brushed[2]
    );
    assert!(
        in_lr > 0 && in_lr < configs.len(),
        "a brush that selects some: {}",
        brushed[2]
    );

    // The slice plot: one plot per parameter, scaled like its axis, a point per trial.
    let with_best = state(dir)["trials"]
        .as_array()
        .map_or(0, |t| t.iter().filter(|t| !t["best"].is_null()).count());
    let slices = interact["slice"].as_array().expect("slice plots");
    let scales: Vec<(&str, &str)> = slices
        .iter()
        .map(|s| {
            (
                s["param"].as_str().unwrap_or(""),
                s["scale"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        scales,
        [
            ("lr", "log"),
            ("per_device_bs", "categorical"),
            ("wd", "categorical"),
            ("dropout", "linear")
        ]
    );
    for s in slices {
        assert_eq!(s["points"].as_u64(), Some(with_best as u64), "{s}");
    }
}

#[test]
fn dashboard_of_a_finished_pbt_run_shows_its_lineage() {
    if !browser_ready() {
        return;
    }
    let (_storage, dir) = finished_run("pbt.toml", &[], "pbt-example");
    let (_server, url) = start_dashboard(&dir);
    let page = check_page(&url, "pbt", &["--curve-values"]);
    assert_matches_best(&page, &dir);
    assert_eq!(page["status"], "finished");
    // The curves draw the results that count, one point per iteration, and mark the others (a
    // PBT exploit from an earlier checkpoint replaces the target's later results; whether one
    // does depends on the order the trials' reports arrived in).
    assert_curves_draw_the_results_that_count(&page, &dir);
    // Parallel coordinates: the lines run clear of the axes' ends (the best trial's ends at the
    // bottom of the loss axis; it lay on the bottom edge and looked like an axis).
    let margin = page["parallel"]["lineMargin"].as_f64().expect("a margin");
    assert!(margin >= 8.0, "a line {margin} px from an axis's end");
    let lineage = page["views"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["view"] == "lineage"))
        .expect("the lineage view was checked");
    let exploits = common::json_lines(&dir.join("lineage.jsonl")).len();
    assert!(exploits > 0, "the PBT example exploits");
    // One table row per exploit, plus the header row and the graph.
    assert!(
        lineage["elements"].as_u64().unwrap_or(0) >= exploits as u64 + 2,
        "{lineage}"
    );
    // The resource timeline: one bar per run of each trial (4 trials share 2 slots, so trials
    // are paused and resumed), each naming its run.
    let events = common::json_lines(&dir.join("events.jsonl"));
    let mut most = 0;
    for trial in 0..4u32 {
        let placed: Vec<u64> = events
            .iter()
            .filter(|e| e["event"] == "placement" && e["trial"] == format!("{trial:05}"))
            .filter_map(|e| e["run"].as_u64())
            .collect();
        let bars: Vec<u64> = page["timelineBars"][trial.to_string()]
            .as_array()
            .map(|runs| runs.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        assert_eq!(bars, placed, "trial {trial}: bars {page}");
        most = most.max(bars.len());
    }
    assert!(most > 1, "no trial has several runs: {page}");
}

#[test]
fn dashboard_of_300_simulated_trials_has_readable_axes_and_a_robust_range() {
    if !browser_ready() {
        return;
    }
    // The simulated executor runs 300 lcbench trials in virtual time (seconds).
    let (_storage, dir) = finished_run("simulated-lcbench.toml", &[], "simulated-lcbench");
    let (_server, url) = start_dashboard(&dir);
    let page = check_page(&url, "lcbench", &["--interact"]);
    assert_matches_best(&page, &dir);
    let interact = &page["interact"];
    // Each axis as its domain says: uniform momentum, weight_decay and max_dropout linear (they
    // were drawn "(log)" from their values), the log domains log, randint linear.
    for (param, kind) in [
        ("batch_size", "log"),
        ("learning_rate", "log"),
        ("momentum", "linear"),
        ("weight_decay", "linear"),
        ("num_layers", "linear"),
        ("max_units", "log"),
        ("max_dropout", "linear"),
    ] {
        assert_eq!(
            axis(interact, &format!("p:{param}"))["kind"],
            kind,
            "{param}"
        );
    }
    // Whole-number ticks on the integer axis.
    for tick in strings(&interact["parallel"]["ticks"]["p:num_layers"]) {
        assert!(tick.parse::<u64>().is_ok(), "num_layers tick {tick:?}");
    }
    let margin = page["parallel"]["lineMargin"].as_f64().expect("a margin");
    assert!(margin >= 8.0, "a line {margin} px from an axis's end");
    // 300 lines coloured by their value on a scale a colour bar explains (all of them were dark).
    assert_eq!(page["parallel"]["colourBar"], true, "{}", page["parallel"]);
    assert!(page["parallel"]["colourStops"].as_u64() >= Some(9));
    // 300 lines, 8 axes: no label overlaps another or leaves the picture.
    let clashes = &interact["parallel"]["clashes"];
    assert_eq!(clashes["overlaps"], 0, "{clashes}");
    assert_eq!(clashes["outside"], 0, "{clashes}");
    // The learning curves' default range leaves out the few diverged values (marked at the edge);
    // "full range" shows them all.
    let metric = "val_cross_entropy";
    let highest = trial_configs(&dir)
        .iter()
        .flat_map(|(id, _)| counting_points(&dir, *id, metric).0)
        .map(|(_, v)| v)
        .fold(f64::NEG_INFINITY, f64::max);
    let robust = interact["robustRange"]["range"][1]
        .as_f64()
        .expect("a range");
    let full = interact["fullRange"]["range"][1].as_f64().expect("a range");
    assert!(
        interact["outside"].as_u64().is_some_and(|n| n > 0),
        "{interact}"
    );
    assert!(
        robust < highest,
        "robust top {robust} vs highest value {highest}"
    );
    assert!(
        full >= highest,
        "full top {full} vs highest value {highest}"
    );
}

#[test]
fn dashboard_of_a_failed_experiment_and_a_same_named_restarted_one() {
    if !browser_ready() {
        return;
    }
    // Two experiments named asha-example in different storage directories: one whose 12 trials
    // all fail (the trainable exits with status 3 at its first epoch), one that works.
    let root = tempfile::tempdir().expect("tempdir");
    let failed_storage = root.path().join("failing");
    let output = rtune()
        .args(["run", &example("asha.toml"), "--storage"])
        .arg(&failed_storage)
        .args([
            "--set",
            "space.sleep_ms=0",
            "--set",
            "+space.fail_at_epoch=1",
        ])
        .output()
        .expect("rtune runs");
    assert!(!output.status.success(), "{}", text(&output));
    // In the other, every trial fails once at epoch 4 and restarts from its checkpoint of
    // epoch 2: its result of epoch 3 stops counting (moved to superseded.json).
    let (_working_storage, working) = finished_run(
        "asha.toml",
        &[
            "space.sleep_ms=0",
            "+space.fail_at_epoch=4",
            "+space.fail_run=0",
            "+space.checkpoint_every=2",
            "max_failures=1",
        ],
        "asha-example",
    );
    let failed = failed_storage.join("asha-example");
    let trials = trial_count(&failed);
    assert!(
        state(&failed)["trials"]
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["status"] == "ERROR")),
        "every trial failed"
    );

    let check = |page: &Value| {
        // The menu tells them apart by their directories.
        let menu = strings(&page["menu"]);
        assert_eq!(menu.len(), 2, "{menu:?}");
        assert_ne!(menu[0], menu[1], "{menu:?}");
        assert!(menu[0].contains("failing/asha-example"), "{menu:?}");
        let parent = working
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            menu[1].contains(&format!("{parent}/asha-example")),
            "{menu:?}"
        );
        // The failed one is not a plain blue FINISHED: red, with the count of errors.
        let badge = &page["badge"];
        assert_eq!(badge["errorCount"].as_u64(), Some(trials as u64), "{badge}");
        assert_eq!(
            badge["errors"],
            format!("{trials} of {trials} in ERROR"),
            "{badge}"
        );
        assert!(
            badge["className"]
                .as_str()
                .is_some_and(|c| c.split(' ').any(|k| k == "failed")),
            "{badge}"
        );
        assert_ne!(badge["status"], "finished", "{badge}");
    };
    let server = rtune()
        .args(["dashboard", "--interval-ms", "200"])
        .arg(&failed)
        .arg(&working)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("rtune dashboard starts");
    let (_server, url) = dashboard_url(server);
    check(&check_page(&url, "failed", &["--experiment", "0"]));
    // The restarted one's curves: the results that count, the superseded ones marked apart.
    let restarted = check_page(&url, "restarted", &["--experiment", "1", "--curve-values"]);
    assert!(
        assert_curves_draw_the_results_that_count(&restarted, &working) > 0,
        "the trials that reached epoch 4 have a superseded result"
    );
    let report = root.path().join("both.html");
    run_ok(
        rtune()
            .arg("report")
            .arg(&failed)
            .arg(&working)
            .arg("-o")
            .arg(&report),
    );
    check(&check_page(
        &format!("file://{}", report.display()),
        "failed-report",
        &["--experiment", "0"],
    ));
}

#[test]
fn report_help_names_every_format() {
    // Not a browser test: `rtune report --help` says what --format writes, PNG included.
    let output = run_ok(rtune().args(["report", "--help"]));
    let help = String::from_utf8_lossy(&output.stdout);
    let first = help.lines().next().unwrap_or("");
    assert!(first.contains("SVG") && first.contains("PNG"), "{help}");
}

/// An experiment directory in the current file formats (docs/file-formats.md), written here
/// because no example run is sure to produce these: trial 0's runs were placed with typed
/// placements (a local run on GPUs 0 and 1, a SLURM job that waited in the queue and then ran on
/// n2), its result.json holds a run that restarted from iteration 1 (a file written before
/// superseded lines were moved out); trial 1 has a rolled-back result in superseded.json and is
/// flagged silent.
fn write_typed_experiment(dir: &Path) {
    use serde_json::json;
    let lines = |values: &[Value]| values.iter().map(|v| format!("{v}\n")).collect::<String>();
    let state = json!({
        "format": 3, "name": "typed", "status": "finished", "metric": "loss", "mode": "min",
        "scheduler": "fifo", "searcher": "random", "parameters": ["lr"], "total_trials": 2,
        "started_at": 1000.0, "finished_at": 1010.0,
        "trials": [
            {"id": 0, "config": {"lr": 0.01}, "status": "TERMINATED", "tag": "", "iteration": 3,
             "time_total_s": 3.0, "best": {"value": 0.3, "iteration": 3}, "runs": 2, "failures": 1,
             "placement": {"executor": "slurm_job", "queued": false, "job_id": "12",
                           "nodes": [{"node": "n2", "cpus": 2, "gpus": [], "gpu_count": 1}],
                           "label": "job 12 on n2"}},
            {"id": 1, "config": {"lr": 0.001}, "status": "RUNNING", "tag": "", "iteration": 2,
             "time_total_s": 2.0, "best": {"value": 0.5, "iteration": 2}, "runs": 1, "failures": 0,
             "placement": null, "silent": true, "last_report_at": 1002.0}
        ]
    });
    std::fs::write(dir.join("experiment_state.json"), state.to_string()).expect("state");
    std::fs::write(
        dir.join("experiment.toml"),
        "name = \"typed\"\n[space]\nlr = { loguniform = [1e-4, 1e-1] }\n",
    )
    .expect("experiment.toml");
    let point = |it: u64, loss: f64, run: u64| json!({"loss": loss, "training_iteration": it, "run": run, "timestamp": 1000 + it});
    for (id, points) in [
        (
            0,
            vec![
                point(1, 0.9, 0),
                point(2, 0.8, 0),
                point(2, 0.6, 1),
                point(3, 0.3, 1),
            ],
        ),
        (1, vec![point(1, 0.7, 0), point(2, 0.5, 0)]),
    ] {
        let trial = dir.join(format!("trial_{id:05}"));
        std::fs::create_dir_all(&trial).expect("trial dir");
        std::fs::write(trial.join("result.json"), lines(&points)).expect("results");
    }
    std::fs::write(
        dir.join("trial_00001/superseded.json"),
        lines(&[json!({"loss": 0.65, "training_iteration": 2, "run": 0,
                       "superseded": {"reason": "rolled back after a failure", "time": 1004.0}})]),
    )
    .expect("superseded");
    let placement = |run: u64, placement: Value| json!({"time": 1000.5 + run as f64, "trial": "00000", "event": "placement", "run": run, "placement": placement});
    let status = |time: f64, trial: &str, status: &str| json!({"time": time, "trial": trial, "event": "status", "status": status, "reason": ""});
    std::fs::write(
        dir.join("events.jsonl"),
        lines(&[
            status(1000.5, "00000", "RUNNING"),
            placement(0, json!({"executor": "local", "queued": false,
                                "nodes": [{"node": "local", "cpus": 2, "gpus": [0, 1], "gpu_count": 2}],
                                "label": "local cpu=2 gpu=0,1"})),
            status(1002.0, "00000", "PENDING"),
            status(1003.0, "00000", "RUNNING"),
            placement(1, json!({"executor": "slurm_job", "queued": true, "queue_reason": "Resources",
                                "job_id": "12", "nodes": [], "label": "job 12 queued (Resources)"})),
            json!({"time": 1005.0, "trial": "00000", "event": "placement", "run": 1,
                   "placement": {"executor": "slurm_job", "queued": false, "job_id": "12",
                                 "nodes": [{"node": "n2", "cpus": 2, "gpus": [], "gpu_count": 1}],
                                 "label": "job 12 on n2"}}),
            status(1007.0, "00000", "TERMINATED"),
        ]),
    )
    .expect("events");
}

#[test]
fn dashboard_reads_typed_placements_and_draws_the_results_that_count() {
    if !browser_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    write_typed_experiment(dir.path());
    let (_server, url) = start_dashboard(dir.path());
    let page = check_page(&url, "typed", &["--curve-values"]);
    // Trial 0 restarted at iteration 2: its line is 1, then the new 2 and 3; the replaced 2 is
    // marked, and so is trial 1's superseded.json line.
    assert_eq!(
        assert_curves_draw_the_results_that_count(&page, dir.path()),
        2
    );
    assert_eq!(
        page["curveValues"]["points"]["0"],
        serde_json::json!([[1, 0.9], [2, 0.6], [3, 0.3]])
    );
    // One bar per run and lane: run 0 on the local GPUs, run 1 first in the SLURM queue, then on
    // its node (the lanes come from the typed fields, never from the label).
    assert_eq!(page["timelineBars"]["0"], serde_json::json!([0, 1, 1]));
    assert_eq!(
        strings(&page["timelineLanes"]),
        ["SLURM job queue", "local · GPU 0,1", "n2"]
    );
    // A trial the runner flags silent (no report for much longer than its peers) is marked.
    assert_eq!(page["badge"]["silent"], "1 silent", "{}", page["badge"]);
    assert_eq!(strings(&page["badge"]["silentRows"]), ["RUNNING (silent)"]);
}

//! The dashboard and the HTML report in a real browser: headless Chromium (Debian's `chromium`)
//! driven over the DevTools protocol by crates/rtune-dashboard/tests/browser/check-page.mjs
//! (playwright-core from npm). It opens `rtune dashboard` during a running ASHA experiment and
//! after it, a finished PBT experiment, and `rtune report`'s file; checks that the page logs no
//! errors, that a new result appears without a reload, and that the trial count and best value
//! shown equal `rtune best --json`; and writes a screenshot of each view under
//! target/tmp/dashboard-screenshots/.
//!
//! Without chromium, node or the npm packages the tests are skipped with a message; CI sets
//! RTUNE_REQUIRE_BROWSER=1, which makes a missing browser a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, repo, rtune, run_ok, text};
use serde_json::Value;

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
    let mut child = rtune()
        .args(["dashboard", "--interval-ms", "200"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("rtune dashboard starts");
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
        ],
    );
    let status = run.wait().expect("rtune run ends");
    assert!(status.success(), "rtune run failed: {status}");
    assert_matches_best(&page, &dir);

    // The report of the finished experiment, opened from disk.
    let report = storage.path().join("report.html");
    run_ok(rtune().arg("report").arg(&dir).arg("-o").arg(&report));
    let page = check_page(&format!("file://{}", report.display()), "asha-report", &[]);
    assert_matches_best(&page, &dir);
}

#[test]
fn dashboard_of_a_finished_pbt_run_shows_its_lineage() {
    if !browser_ready() {
        return;
    }
    let storage = tempfile::tempdir().expect("tempdir");
    run_ok(
        rtune()
            .args(["run", &example("pbt.toml"), "--storage"])
            .arg(storage.path()),
    );
    let dir = storage.path().join("pbt-example");
    let (_server, url) = start_dashboard(&dir);
    let page = check_page(&url, "pbt", &[]);
    assert_matches_best(&page, &dir);
    assert_eq!(page["status"], "finished");
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

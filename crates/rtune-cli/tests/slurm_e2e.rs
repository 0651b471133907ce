//! `rtune` end to end on a real SLURM cluster: inside an allocation, as a submitted head job,
//! through slurm/rtune.sbatch, and with one job per trial.
//!
//! They run when `SLURM_CONF` names a cluster that answers `sinfo` (scripts/test exports it when
//! the project's local cluster is there; CI starts it with scripts/slurm/start-local-slurm.sh:
//! nodes n1 and n2 with 4 CPUs and 2 fake GPUs each) and say they were skipped otherwise, unless
//! `RTUNE_REQUIRE_SLURM=1` (CI), where a missing cluster fails them. One test uses the cluster
//! at a time.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

mod common;
use common::{cluster_available, example, repo, run_ok, text};

static CLUSTER: Mutex<()> = Mutex::new(());

fn rtune_exe() -> &'static str {
    env!("CARGO_BIN_EXE_rtune")
}

/// `rtune status --format json` of an experiment directory.
fn trials(dir: &Path) -> Vec<Value> {
    let output = run_ok(Command::new(rtune_exe()).args([
        "status",
        dir.to_str().expect("utf-8"),
        "--format",
        "json",
    ]));
    serde_json::from_slice(&output.stdout).expect("JSON table")
}

fn field<'a>(trial: &'a Value, key: &str) -> &'a str {
    trial[key].as_str().unwrap_or("")
}

/// A log line `===== JOB <id> <WORD> : YYYY-MM-DD hh:mm:ss +zz =====`; returns the id.
fn job_marker(line: &str, word: &str) -> Option<String> {
    let rest = line.strip_prefix("===== JOB ")?;
    let (id, rest) = rest.split_once(' ')?;
    let stamp = rest
        .strip_prefix(word)?
        .strip_prefix(" : ")?
        .strip_suffix(" =====")?;
    let parts: Vec<&str> = stamp.split(' ').collect();
    let [date, time, zone] = parts.as_slice() else {
        return None;
    };
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let date_ok = date.split('-').map(str::len).eq([4, 2, 2]) && date.len() == 10;
    let time_ok = time.split(':').all(|p| digits(p, 2)) && time.len() == 8;
    let zone_ok = (zone.starts_with('+') || zone.starts_with('-')) && digits(&zone[1..3], 2);
    (id.bytes().all(|b| b.is_ascii_digit()) && date_ok && time_ok && zone_ok).then(|| id.into())
}

/// The head job's log: START first, FINISH last, the final table and the best trial between.
fn check_job_log(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let first = lines.first().copied().unwrap_or("");
    let last = lines.last().copied().unwrap_or("");
    let id = job_marker(first, "START").unwrap_or_else(|| panic!("first line {first:?}\n{log}"));
    assert_eq!(
        job_marker(last, "FINISH").as_deref(),
        Some(id.as_str()),
        "last line {last:?}\n{log}"
    );
    let best = log.find("Best trial").expect("best trial in the log");
    let table = log.rfind("TERMINATED").expect("final table in the log");
    assert!(best < log.len() - last.len() && table < log.len() - last.len());
    id
}

fn steps_of_rtune(job: &str) -> Vec<String> {
    let out = Command::new("squeue")
        .args(["-h", "-s", "-j", job, "-o", "%i|%j"])
        .output()
        .expect("squeue");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("|rtune-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn asha_inside_an_allocation_runs_trials_as_steps_on_both_nodes() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("asha_inside_an_allocation") {
        return;
    }
    let storage = tempfile::tempdir().expect("tempdir");
    let steps_after = storage.path().join("steps_after.txt");
    // rtune runs inside `salloc` (SLURM_JOB_ID set: the slurm executor without being told); after
    // it the allocation's steps are listed while the allocation still exists.
    let script = format!(
        "\"$RTUNE\" run '{}' --storage '{}' --set space.sleep_ms=20 && \
         squeue -h -s -j \"$SLURM_JOB_ID\" -o '%i|%j' > '{}'",
        example("asha.toml"),
        storage.path().display(),
        steps_after.display()
    );
    let output = run_ok(
        Command::new("salloc")
            .args([
                "-N2",
                "--ntasks-per-node=1",
                "-c4",
                "--gres=gpu:2",
                "sh",
                "-c",
            ])
            .arg(&script)
            .env("RTUNE", rtune_exe())
            .env_remove("SLURM_JOB_ID"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("SLURM job "), "{}", text(&output));
    assert!(
        stdout.contains("8 trials at once on 2 of 2 nodes"),
        "{}",
        text(&output)
    );
    assert!(stdout.contains("Best trial"), "{}", text(&output));

    let dir = storage.path().join("asha-example");
    let rows = trials(&dir);
    assert_eq!(rows.len(), 12);
    let mut nodes = std::collections::BTreeSet::new();
    for row in &rows {
        assert_eq!(field(row, "status"), "TERMINATED", "{row}");
        let placement = &row["placement"];
        assert_eq!(placement["executor"], "slurm_step", "{row}");
        let shares = placement["nodes"].as_array().expect("nodes");
        assert_eq!(shares.len(), 1, "one node per trial: {row}");
        assert_eq!(shares[0]["cpus"], 1, "{row}");
        nodes.insert(shares[0]["node"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(
        nodes.into_iter().collect::<Vec<_>>(),
        vec!["n1", "n2"],
        "trials ran on both nodes"
    );
    // ASHA stopped some trials early, and none of their steps is left.
    let decisions = std::fs::read_to_string(dir.join("decisions.jsonl")).expect("decisions");
    assert!(decisions.contains("rung"), "ASHA stopped trials at a rung");
    let early = rows
        .iter()
        .filter(|r| r["iter"].as_u64().is_some_and(|i| i < 5))
        .count();
    assert!(early > 0, "some trials stopped before max_t");
    let left = std::fs::read_to_string(&steps_after).expect("step list");
    assert!(
        !left.contains("|rtune-"),
        "steps left after the run: {left}"
    );
}

#[test]
fn submit_runs_the_experiment_as_a_job_with_start_and_finish_lines() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("submit_runs_the_experiment_as_a_job") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let storage = work.path().join("results");
    let logs = work.path().join("logs");
    let args = |extra: &[&str]| {
        let mut cmd = Command::new(rtune_exe());
        cmd.args([
            "submit",
            &example("asha.toml"),
            "--nodes",
            "2",
            "--cpus-per-node",
            "4",
            "--gpus-per-node",
            "2",
            "--time",
            "00:05:00",
            "--set",
            "space.sleep_ms=0",
            "--storage",
            storage.to_str().expect("utf-8"),
            "--log-dir",
            logs.to_str().expect("utf-8"),
        ])
        .args(extra)
        .current_dir(work.path())
        .env_remove("SLURM_JOB_ID");
        cmd
    };

    // --dry-run: the plan and the script, nothing submitted.
    let output = run_ok(&mut args(&["--dry-run"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("8 trials at once on 2 of 2 nodes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("node1: 4 trials: CPUs: reserve + trials x workers x CPUs per worker <= node CPUs: 0 + 4 x 1 x 1 = 4 <= 4"),
        "{stdout}"
    );
    assert!(stdout.contains("#SBATCH --nodes=2"), "{stdout}");
    assert!(!logs.exists(), "a dry run writes nothing");

    let output = run_ok(&mut args(&["--wait"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .expect("the job id is printed")
        .to_string();
    let log_path = logs.join(format!("rtune-asha-example-{id}.log"));
    assert!(
        stdout.contains(&format!("log: {}", log_path.display())),
        "{stdout}"
    );
    let log = std::fs::read_to_string(&log_path).expect("job log");
    assert_eq!(check_job_log(&log), id);
    let rows = trials(&storage.join("asha-example"));
    assert_eq!(rows.len(), 12);
    assert!(rows.iter().all(|r| field(r, "status") == "TERMINATED"));
    assert!(steps_of_rtune(&id).is_empty());
}

#[test]
fn submit_with_one_job_per_trial_keeps_its_script_and_plain_log_in_the_experiment_dir() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("submit_with_one_job_per_trial") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let storage = work.path().join("results");
    let submit = || {
        let mut cmd = Command::new(rtune_exe());
        cmd.args([
            "submit",
            &example("asha.toml"),
            "--executor",
            "slurm-jobs",
            "--time",
            "00:05:00",
            "--mail-type",
            "NONE",
            "--sbatch-arg=--comment=rtune-submit-test",
            "--set",
            "space.sleep_ms=0",
            "--set",
            "num_samples=3",
            "--wait",
        ])
        .env("RTUNE_STORAGE", &storage)
        .current_dir(work.path())
        .env_remove("SLURM_JOB_ID");
        cmd
    };
    let output = run_ok(&mut submit());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .expect("the job id is printed")
        .to_string();
    let dir = storage.join("asha-example");
    let log = std::fs::read_to_string(dir.join(format!("slurm/rtune-asha-example-{id}.log")))
        .expect("the log is in the experiment directory");
    assert_eq!(check_job_log(&log), id);
    assert!(!log.contains('\u{1b}'), "no colour codes in a log:\n{log}");
    let script =
        std::fs::read_to_string(dir.join("slurm/rtune-asha-example.sbatch")).expect("script");
    assert!(script.contains("#SBATCH --cpus-per-task=1\n"), "{script}");
    assert!(
        script.contains("#SBATCH --comment=rtune-submit-test\n"),
        "{script}"
    );
    assert!(script.contains("--executor slurm-jobs"), "{script}");
    let rows = trials(&dir);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| field(r, "status") == "TERMINATED"));
    assert!(
        !storage.join("asha-example-2").exists(),
        "the run took the reserved directory"
    );
    assert!(!dir.join(".reserved-by-rtune-submit").exists());
    assert!(
        !work
            .path()
            .join(format!("rtune-asha-example-{id}.log"))
            .exists(),
        "nothing in the current directory"
    );

    // A second submission: its own experiment directory, nothing overwritten.
    run_ok(&mut submit());
    assert!(storage.join("asha-example-2/slurm").is_dir());
    assert_eq!(
        std::fs::read_to_string(dir.join("slurm/rtune-asha-example.sbatch")).expect("script"),
        script
    );
}

#[test]
fn the_sbatch_template_takes_search_space_overrides_from_the_environment() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("the_sbatch_template_takes_overrides") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let storage = work.path().join("results");
    let log = work.path().join("job.log");
    run_ok(
        Command::new("sbatch")
            .args([
                "--wait",
                "--nodes=2",
                "--cpus-per-task=4",
                "--gpus-per-node=2",
                "--time=00:05:00",
            ])
            .arg(format!("--output={}", log.display()))
            .arg(repo().join("slurm/rtune.sbatch"))
            .current_dir(work.path())
            .env_remove("SLURM_JOB_ID")
            .env("EXPERIMENT", example("asha.toml"))
            .env("RTUNE", rtune_exe())
            .env("LR_LOWER", "1e-5")
            .env("LR_UPPER", "2e-5")
            .env("BS_CHOICES", "4,8")
            .env("WD_CHOICES", "0.5")
            .env(
                "RTUNE_SET",
                "space.sleep_ms=0;num_samples=4;name=\"from-template\"",
            )
            .env("RTUNE_ARGS", format!("--storage {}", storage.display())),
    );
    let text = std::fs::read_to_string(&log).expect("job log");
    check_job_log(&text);
    let rows = trials(&storage.join("from-template"));
    assert_eq!(rows.len(), 4, "num_samples from RTUNE_SET");
    for row in &rows {
        let lr = row["config"]["lr"].as_f64().expect("lr");
        assert!(
            (1e-5..=2e-5).contains(&lr),
            "lr {lr} outside LR_LOWER..LR_UPPER"
        );
        let bs = row["config"]["per_device_bs"].as_i64().expect("bs");
        assert!(bs == 4 || bs == 8, "bs {bs} not from BS_CHOICES");
        assert_eq!(row["config"]["wd"].as_f64(), Some(0.5));
    }
}

#[test]
fn job_per_trial_executor_runs_an_experiment_from_outside_any_allocation() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("job_per_trial_executor") {
        return;
    }
    let storage = tempfile::tempdir().expect("tempdir");
    let output = run_ok(
        Command::new(rtune_exe())
            .args([
                "run",
                &example("asha.toml"),
                "--executor",
                "slurm-jobs",
                "--storage",
                storage.path().to_str().expect("utf-8"),
                "--set",
                "space.sleep_ms=0",
                "--set",
                "num_samples=6",
                "--set",
                "executor.poll_interval_s=0.1",
            ])
            .env_remove("SLURM_JOB_ID"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("one SLURM job per trial"),
        "{}",
        text(&output)
    );
    assert!(stdout.contains("Best trial"), "{}", text(&output));
    let rows = trials(&storage.path().join("asha-example"));
    assert_eq!(rows.len(), 6);
    for row in &rows {
        assert_eq!(field(row, "status"), "TERMINATED", "{row}");
        let placement = &row["placement"];
        assert_eq!(placement["executor"], "slurm_job", "{row}");
        assert!(
            placement["job_id"].as_str().is_some_and(|j| !j.is_empty()),
            "the placement names the job: {row}"
        );
        let shares = placement["nodes"].as_array().expect("nodes");
        assert_eq!(shares.len(), 1, "one node per trial: {row}");
        assert_eq!(shares[0]["cpus"], 1, "{row}");
        assert!(
            matches!(shares[0]["node"].as_str(), Some("n1" | "n2")),
            "{row}"
        );
    }
}

#[test]
fn plan_shows_the_arithmetic_and_fails_when_not_even_one_trial_fits() {
    // Pure arithmetic: no cluster needed.
    let output = run_ok(Command::new(rtune_exe()).args([
        "plan",
        &example("asha.toml"),
        "--nodes",
        "2",
        "--cpus-per-node",
        "3",
        "--gpus-per-node",
        "2",
        "--set",
        "trial.resources={cpu = 1, gpu = 1}",
        "--set",
        "executor.reserve_cpus=1",
    ]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("4 trials at once on 2 of 2 nodes (1 worker x 1 CPU + 1 GPU each)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "node1: 2 trials: CPUs: reserve + trials x workers x CPUs per worker <= node CPUs: \
             1 + 2 x 1 x 1 = 3 <= 3; GPUs: trials x workers x GPUs per worker <= node GPUs: \
             2 x 1 x 1 = 2 <= 2"
        ),
        "{stdout}"
    );
    let output = Command::new(rtune_exe())
        .args([
            "plan",
            &example("asha.toml"),
            "--nodes",
            "2",
            "--cpus-per-node",
            "3",
            "--gpus-per-node",
            "2",
            "--set",
            "trial.resources={cpu = 1, gpu = 4}",
        ])
        .output()
        .expect("rtune runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 x 1 x 4 = 4 > 2"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[test]
fn a_cancelled_head_job_stops_its_trials_and_still_finishes_its_log() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("a_cancelled_head_job") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let storage = work.path().join("results");
    let output = run_ok(
        Command::new(rtune_exe())
            .args([
                "submit",
                &example("asha.toml"),
                "--nodes",
                "2",
                "--cpus-per-node",
                "2",
                "--time",
                "00:05:00",
                "--name",
                "cancelled",
                "--set",
                "space.sleep_ms=600000",
                "--set",
                "trial.stop_grace_s=1",
                "--storage",
                storage.to_str().expect("utf-8"),
                "--log-dir",
                work.path().to_str().expect("utf-8"),
            ])
            .env_remove("SLURM_JOB_ID"),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted job "))
        .expect("job id")
        .to_string();
    let log_path = work.path().join(format!("rtune-cancelled-{id}.log"));
    // Wait (bounded) until the head job has started trials as steps: SLURM offers no event.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while steps_of_rtune(&id).len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "no trial steps started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    run_ok(Command::new("scancel").arg(&id));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains(" FINISH : ") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no FINISH line:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(log.contains("interrupted (SIGTERM"), "{log}");
    assert!(
        log.lines()
            .last()
            .is_some_and(|l| job_marker(l, "FINISH").as_deref() == Some(id.as_str())),
        "{log}"
    );
    assert!(steps_of_rtune(&id).is_empty(), "{:?}", steps_of_rtune(&id));
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(storage.join("cancelled/experiment_state.json")).expect("state"),
    )
    .expect("JSON");
    assert_eq!(state["status"], "interrupted");
}

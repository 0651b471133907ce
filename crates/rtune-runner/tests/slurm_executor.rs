//! The SLURM executors against a real SLURM cluster.
//!
//! They run when `SLURM_CONF` names a cluster that answers `sinfo` (scripts/test exports it when
//! the project's local cluster from scripts/slurm/start-local-slurm.sh is there; CI starts that
//! cluster: 2 nodes n1, n2 with 4 CPUs and 2 fake GPUs each). Otherwise each test says it was
//! skipped, unless `RTUNE_REQUIRE_SLURM=1` (CI), where a missing cluster fails them.
//!
//! The tests take the cluster one at a time (a lock), each in its own allocation made with
//! `salloc --no-shell` and cancelled at the end, and await executor events, never sleeps.

#![allow(clippy::unwrap_used)]
// The cluster lock is held for a whole test, awaits included; each test has its own runtime, so
// nothing else waits for it on the same thread.
#![allow(clippy::await_holding_lock)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use rtune_core::TrialId;
use rtune_runner::executor::{
    Executor, ExecutorError, ExecutorEvent, Resources, SlurmExecutor, SlurmExecutorConfig,
    SlurmJobsConfig, SlurmJobsExecutor, TrialLaunch,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

static CLUSTER: Mutex<()> = Mutex::new(());

/// Whether the cluster answers; prints why a test is skipped.
fn cluster_available(test: &str) -> bool {
    let answers = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo")
            .arg("-h")
            .output()
            .is_ok_and(|o| o.status.success());
    if answers {
        return true;
    }
    let why = if std::env::var_os("SLURM_CONF").is_none() {
        "SLURM_CONF is not set (scripts/test sets it when /tmp/slurmtest/etc/slurm.conf exists)"
    } else {
        "`sinfo` does not answer"
    };
    if std::env::var("RTUNE_REQUIRE_SLURM").as_deref() == Ok("1") {
        panic!("{test}: no SLURM cluster but RTUNE_REQUIRE_SLURM=1: {why}");
    }
    eprintln!(
        "SKIPPED {test}: no SLURM cluster ({why}); start one as root with \
         scripts/slurm/start-local-slurm.sh"
    );
    false
}

/// An allocation made for one test; cancelled when dropped.
struct Allocation {
    id: String,
}

impl Allocation {
    fn new(args: &[&str]) -> Allocation {
        let out = Command::new("salloc")
            .arg("--no-shell")
            .arg("--job-name=rtune-test-alloc")
            .args(args)
            .output()
            .expect("salloc runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "salloc failed: {stderr}");
        let id = stderr
            .split("Granted job allocation ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no job id in salloc's output: {stderr}"))
            .to_string();
        Allocation { id }
    }

    /// Names of the allocation's steps that rtune started.
    fn rtune_steps(&self) -> Vec<String> {
        let out = Command::new("squeue")
            .args(["-h", "-s", "-j", &self.id, "-o", "%i|%j"])
            .output()
            .expect("squeue runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("|rtune-"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        let _ = Command::new("scancel").arg(&self.id).status();
    }
}

fn res(cpu: f64, gpu: u32) -> Resources {
    Resources { cpu, gpu }
}

fn launch(dir: &Path, trial: u32, script: &str) -> TrialLaunch {
    TrialLaunch {
        trial: TrialId(trial),
        run: 1,
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("TRIAL_".into(), trial.to_string())],
        workers: 1,
        resources: res(1.0, 0),
        cwd: dir.to_path_buf(),
        stdout: dir.join(format!("t{trial}/stdout.log")),
        stderr: dir.join(format!("t{trial}/stderr.log")),
    }
}

fn steps_executor(job: &Allocation) -> (SlurmExecutor, UnboundedReceiver<ExecutorEvent>) {
    let (tx, rx) = unbounded_channel();
    let config = SlurmExecutorConfig {
        job_id: Some(job.id.clone()),
        ..Default::default()
    };
    (
        SlurmExecutor::new(config, tx).expect("executor for the allocation"),
        rx,
    )
}

/// The next Exited event (Placed events are collected into `placed`).
async fn next_exit(
    rx: &mut UnboundedReceiver<ExecutorEvent>,
    placed: &mut Vec<String>,
) -> (TrialId, u32, bool, String) {
    loop {
        let Ok(event) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await else {
            let steps = Command::new("squeue")
                .args(["-s", "-a"])
                .output()
                .expect("squeue");
            panic!(
                "no executor event within 60 s; steps:\n{}",
                String::from_utf8_lossy(&steps.stdout)
            );
        };
        let event = event.expect("channel open");
        match event {
            ExecutorEvent::Exited {
                trial,
                run,
                success,
                message,
            } => return (trial, run, success, message),
            ExecutorEvent::Lost {
                trial,
                run,
                message,
            } => return (trial, run, false, message),
            ExecutorEvent::Placed { placement, .. } => placed.push(placement.label),
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fifo(path: &Path) -> PathBuf {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
    path.to_path_buf()
}

/// The end of a run stopped with SIGTERM: normally SLURM reports the task killed by it; when a
/// busy controller did not show the step in time, rtune asked srun to end the step instead.
fn stopped_by_term(message: &str) -> bool {
    message == "killed by signal 15 (SIGTERM)" || message == "stopped: srun ended the step"
}

/// Whether a process exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("");
    state != "Z" && state != "X"
}

fn env_file(path: &Path) -> BTreeMap<String, String> {
    read(path)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn steps_spread_over_nodes_with_distinct_gpus_and_stop_leaves_no_step() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("steps_spread_over_nodes_with_distinct_gpus") {
        return;
    }
    let job = Allocation::new(&["-N2", "--ntasks-per-node=1", "-c4", "--gres=gpu:2"]);
    let (mut ex, mut rx) = steps_executor(&job);
    let plan = ex.check_capacity(1, &res(1.0, 1)).expect("fits");
    assert_eq!(plan.concurrent_trials, 4, "{}", plan.explanation);
    assert!(
        plan.explanation.contains("n2: 2 trials"),
        "{}",
        plan.explanation
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut placements = Vec::new();
    let mut ready = Vec::new();
    for trial in 0..4 {
        ready.push(fifo(&dir.path().join(format!("ready{trial}"))));
        let mut l = launch(
            dir.path(),
            trial,
            "echo \"$SLURMD_NODENAME $CUDA_VISIBLE_DEVICES $SLURM_STEP_GPUS\" > ready$TRIAL_; \
             exec sleep 1000",
        );
        l.resources = res(1.0, 1);
        assert!(ex.has_room(1, &res(1.0, 1)));
        placements.push(ex.start(l).expect("start").label);
    }
    assert_eq!(
        placements,
        vec![
            "n1 cpu=1 gpus=1",
            "n2 cpu=1 gpus=1",
            "n1 cpu=1 gpus=1",
            "n2 cpu=1 gpus=1"
        ]
    );
    // The allocation's 4 GPUs are taken: a fifth GPU trial waits; a CPU-only one still fits.
    assert!(!ex.has_room(1, &res(1.0, 1)));
    assert!(ex.has_room(1, &res(1.0, 0)));
    let err = ex
        .start({
            let mut l = launch(dir.path(), 9, "true");
            l.resources = res(1.0, 1);
            l
        })
        .expect_err("full");
    assert!(matches!(err, ExecutorError::NoRoom { .. }), "{err}");

    // All four run at once; on each node the two steps got different GPUs.
    let mut gpus_by_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (trial, pipe) in ready.iter().enumerate() {
        let line = read(pipe);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 3, "trial {trial}: {line:?}");
        assert_eq!(
            fields[1], fields[2],
            "CUDA_VISIBLE_DEVICES = SLURM_STEP_GPUS"
        );
        let expected_node = if trial % 2 == 0 { "n1" } else { "n2" };
        assert_eq!(fields[0], expected_node, "trial {trial}");
        assert!(
            gpus_by_node
                .entry(fields[0].to_string())
                .or_default()
                .insert(fields[1].to_string()),
            "GPU {} of {} given twice",
            fields[1],
            fields[0]
        );
    }
    assert_eq!(job.rtune_steps().len(), 4, "{:?}", job.rtune_steps());

    for trial in 0..4 {
        ex.stop(TrialId(trial), Duration::from_secs(30));
        ex.stop(TrialId(trial), Duration::from_secs(30)); // idempotent
    }
    let mut placed = Vec::new();
    let mut exited = BTreeSet::new();
    for _ in 0..4 {
        let (trial, run, success, message) = next_exit(&mut rx, &mut placed).await;
        assert_eq!(run, 1);
        assert!(!success);
        assert!(stopped_by_term(&message), "trial {trial}: {message}");
        exited.insert(trial);
    }
    assert_eq!(exited.len(), 4);
    assert!(job.rtune_steps().is_empty(), "{:?}", job.rtune_steps());
    for trial in 0..4 {
        ex.release(TrialId(trial));
    }
    assert!(ex.has_room(2, &res(1.0, 2)));
    assert!(placed.is_empty(), "steps send no Placed events");
}

#[tokio::test]
async fn steps_get_exactly_what_they_ask_for_whatever_rtune_inherited() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("steps_get_exactly_what_they_ask_for") {
        return;
    }
    let job = Allocation::new(&[
        "-N1",
        "-w",
        "n1",
        "--ntasks-per-node=1",
        "-c4",
        "--gpus-per-node=2",
    ]);
    let (tx, mut rx) = unbounded_channel();
    // What rtune sees when it runs inside such a job: the job's shape in SLURM_* variables,
    // and the job's GPUs in CUDA_VISIBLE_DEVICES.
    let mut inherited: Vec<(String, String)> = std::env::vars().collect();
    for (k, v) in [
        ("SLURM_JOB_ID", job.id.as_str()),
        ("SLURM_GPUS_PER_NODE", "2"),
        ("SLURM_CPUS_PER_TASK", "4"),
        ("SLURM_NTASKS_PER_NODE", "1"),
        ("SLURM_NTASKS", "1"),
        ("SLURM_TRES_PER_TASK", "cpu:4"),
        ("SLURM_MEM_PER_NODE", "1000"),
        ("CUDA_VISIBLE_DEVICES", "0,1"),
    ] {
        inherited.push((k.to_string(), v.to_string()));
    }
    let config = SlurmExecutorConfig {
        job_id: Some(job.id.clone()),
        ..Default::default()
    };
    let mut ex = SlurmExecutor::new(config, tx)
        .expect("executor")
        .with_environment(inherited);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = launch(dir.path(), 0, "env > env0.txt");
    l.resources = res(2.0, 1);
    assert_eq!(ex.start(l).expect("start").label, "n1 cpu=2 gpus=1");
    let mut l = launch(dir.path(), 1, "env > env1.txt");
    l.resources = res(0.5, 0);
    assert_eq!(ex.start(l).expect("start").label, "n1 cpu=1");
    let mut placed = Vec::new();
    for _ in 0..2 {
        let (trial, _, success, message) = next_exit(&mut rx, &mut placed).await;
        assert!(success, "trial {trial}: {message}");
        assert_eq!(message, "exit code 0");
    }
    let gpu = env_file(&dir.path().join("env0.txt"));
    assert_eq!(gpu["SLURM_CPUS_PER_TASK"], "2");
    assert_eq!(gpu["SLURM_STEP_NUM_TASKS"], "1");
    assert_eq!(
        gpu["CUDA_VISIBLE_DEVICES"].split(',').count(),
        1,
        "one GPU, not the job's two: {}",
        gpu["CUDA_VISIBLE_DEVICES"]
    );
    assert_eq!(gpu["OMP_NUM_THREADS"], "2");
    assert_eq!(gpu["RANK"], "0");
    assert_eq!(gpu["WORLD_SIZE"], "1");
    assert_eq!(gpu["LOCAL_WORLD_SIZE"], "1");
    assert_eq!(gpu["TRIAL_"], "0");
    assert!(!gpu.contains_key("SLURM_GPUS_PER_NODE"));
    let cpu = env_file(&dir.path().join("env1.txt"));
    assert_eq!(
        cpu["CUDA_VISIBLE_DEVICES"], "",
        "a CPU-only step sees no GPU"
    );
    assert_eq!(cpu["SLURM_CPUS_PER_TASK"], "1");
    assert_eq!(cpu["OMP_NUM_THREADS"], "1");
}

#[tokio::test]
async fn multi_worker_trials_span_nodes_with_ranks() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("multi_worker_trials_span_nodes_with_ranks") {
        return;
    }
    // 2 CPUs per node: 3 one-CPU workers cannot share a node.
    let job = Allocation::new(&["-N2", "--ntasks-per-node=1", "-c2"]);
    let (mut ex, mut rx) = steps_executor(&job);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = launch(
        dir.path(),
        0,
        "echo \"$RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT \
         $SLURMD_NODENAME\" > rank_$RANK; echo hello from $RANK",
    );
    l.workers = 3;
    assert_eq!(
        ex.start(l).expect("start").label,
        "n1 cpu=2 + n2 cpu=1 workers=3"
    );
    let mut placed = Vec::new();
    let (_, _, success, message) = next_exit(&mut rx, &mut placed).await;
    assert!(success, "{message}");
    assert_eq!(message, "all 3 workers: exit code 0");
    let ranks: Vec<Vec<String>> = (0..3)
        .map(|r| {
            read(&dir.path().join(format!("rank_{r}")))
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .collect();
    let port = ranks[0][5].clone();
    assert!(port.parse::<u16>().is_ok_and(|p| p >= 20000), "{port}");
    let expected = [
        ["0", "0", "3", "2", "127.0.0.1", &port, "n1"],
        ["1", "1", "3", "2", "127.0.0.1", &port, "n1"],
        ["2", "0", "3", "1", "127.0.0.1", &port, "n2"],
    ];
    for (rank, fields) in ranks.iter().enumerate() {
        assert_eq!(fields, &expected[rank], "rank {rank}");
    }
    let t0 = dir.path().join("t0");
    assert_eq!(read(&t0.join("stdout.log")), "hello from 0\n");
    assert_eq!(read(&t0.join("stdout.rank1.log")), "hello from 1\n");
    assert_eq!(read(&t0.join("stdout.rank2.log")), "hello from 2\n");
    ex.release(TrialId(0));

    // A failing worker fails the trial, names the rank, and the others are ended.
    let mut l = launch(
        dir.path(),
        1,
        "if [ \"$RANK\" = 2 ]; then exit 3; fi; exec sleep 1000",
    );
    l.workers = 3;
    ex.start(l).expect("start");
    let (_, _, success, message) = next_exit(&mut rx, &mut placed).await;
    assert!(!success);
    assert_eq!(message, "worker 2: exit code 3");
    assert!(job.rtune_steps().is_empty(), "{:?}", job.rtune_steps());
}

#[tokio::test]
async fn step_exit_codes_signals_and_missing_programs() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("step_exit_codes_signals_and_missing_programs") {
        return;
    }
    let job = Allocation::new(&["-N1", "-w", "n2", "-c2"]);
    let (mut ex, mut rx) = steps_executor(&job);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut placed = Vec::new();
    let cases = [
        ("exit 3", false, "exit code 3"),
        ("true", true, "exit code 0"),
        ("kill -TERM $$", false, "killed by signal 15 (SIGTERM)"),
    ];
    for (i, (script, success, message)) in cases.iter().enumerate() {
        let trial = u32::try_from(i).expect("small");
        let mut l = launch(dir.path(), trial, script);
        l.run = 4;
        ex.start(l).expect("start");
        let event = next_exit(&mut rx, &mut placed).await;
        assert_eq!(
            event,
            (TrialId(trial), 4, *success, message.to_string()),
            "{script}"
        );
        ex.release(TrialId(trial));
    }

    // A program that cannot be found is an error at start, with nothing booked.
    let mut l = launch(dir.path(), 5, "");
    l.command = vec!["rtune-no-such-program-xyz".into()];
    let err = ex.start(l).expect_err("missing program");
    assert!(
        err.to_string().contains("not found: is it on PATH?"),
        "{err}"
    );
    assert!(ex.has_room(2, &res(1.0, 0)));

    // Stopping a trial reaches the processes its program started, not only the program.
    let pid_pipe = fifo(&dir.path().join("pid"));
    ex.start(launch(dir.path(), 7, "sleep 1000 & echo $! > pid; wait"))
        .expect("start");
    let grandchild: i32 = read(&pid_pipe).trim().parse().expect("pid");
    assert!(is_running(grandchild));
    ex.stop(TrialId(7), Duration::from_secs(30));
    let (_, _, success, message) = next_exit(&mut rx, &mut placed).await;
    assert!(!success, "{message}");
    assert!(stopped_by_term(&message), "{message}");
    assert!(!is_running(grandchild), "grandchild {grandchild} survived");
    ex.release(TrialId(7));

    // A trial that ignores SIGTERM is killed after the grace period; no step remains.
    let ready = fifo(&dir.path().join("ready"));
    ex.start(launch(
        dir.path(),
        6,
        "trap '' TERM; echo ready > ready; exec sleep 1000",
    ))
    .expect("start");
    assert_eq!(read(&ready).trim(), "ready");
    ex.stop(TrialId(6), Duration::from_millis(300));
    let (_, _, success, message) = next_exit(&mut rx, &mut placed).await;
    assert!(!success);
    assert_eq!(message, "killed by signal 9 (SIGKILL)");
    assert!(job.rtune_steps().is_empty(), "{:?}", job.rtune_steps());
}

#[tokio::test]
async fn steps_executor_shutdown_ends_every_step() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("steps_executor_shutdown_ends_every_step") {
        return;
    }
    let job = Allocation::new(&["-N1", "-w", "n1", "-c2"]);
    let (mut ex, mut rx) = steps_executor(&job);
    let dir = tempfile::tempdir().expect("tempdir");
    let ready0 = fifo(&dir.path().join("ready0"));
    let ready1 = fifo(&dir.path().join("ready1"));
    ex.start(launch(dir.path(), 0, "echo r > ready0; exec sleep 1000"))
        .expect("start");
    ex.start(launch(
        dir.path(),
        1,
        "trap '' TERM; echo r > ready1; exec sleep 1000",
    ))
    .expect("start");
    read(&ready0);
    read(&ready1);
    ex.shutdown(Duration::from_millis(300));
    let mut placed = Vec::new();
    let mut events = [
        next_exit(&mut rx, &mut placed).await,
        next_exit(&mut rx, &mut placed).await,
    ];
    events.sort_by_key(|e| e.0);
    assert!(stopped_by_term(&events[0].3), "{}", events[0].3);
    assert_eq!(events[1].3, "killed by signal 9 (SIGKILL)");
    assert!(job.rtune_steps().is_empty(), "{:?}", job.rtune_steps());
}

fn jobs_executor(max: Option<u32>) -> (SlurmJobsExecutor, UnboundedReceiver<ExecutorEvent>) {
    let (tx, rx) = unbounded_channel();
    let config = SlurmJobsConfig {
        max_concurrent_trials: max,
        poll_interval: Duration::from_millis(100),
        ..Default::default()
    };
    (SlurmJobsExecutor::new(config, tx).expect("executor"), rx)
}

fn job_state(id: &str) -> String {
    let out = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .expect("scontrol");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|t| t.strip_prefix("JobState="))
        .unwrap_or("gone")
        .to_string()
}

#[tokio::test]
async fn job_per_trial_runs_fails_and_stops() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("job_per_trial_runs_fails_and_stops") {
        return;
    }
    let (mut ex, mut rx) = jobs_executor(Some(3));
    let plan = ex.check_capacity(2, &res(1.0, 1)).expect("fits");
    assert_eq!(plan.concurrent_trials, 3);
    assert!(
        plan.explanation.contains("one SLURM job per trial"),
        "{}",
        plan.explanation
    );
    let err = ex
        .check_capacity(1, &res(1.0, 3))
        .expect_err("no node has 3 GPUs");
    assert!(err.to_string().contains("n1 4 CPUs 2 GPUs"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    // Two workers with a GPU each, ranks and GPUs from SLURM.
    let mut l = launch(
        dir.path(),
        0,
        "echo \"$RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $CUDA_VISIBLE_DEVICES\" > job_rank_$RANK; \
         env > job_env_$RANK",
    );
    l.workers = 2;
    l.resources = res(1.0, 1);
    l.env.push(("RTUNE_SECRET".into(), "s3cret".into()));
    let placement = ex.start(l).expect("submit");
    assert!(placement.queued, "{placement:?}");
    assert_eq!(placement.queue_reason.as_deref(), Some("submitted"));
    assert!(placement.job_id.is_some(), "{placement:?}");
    let placement = placement.label;
    assert!(
        placement.starts_with("job ") && placement.ends_with(" PENDING (submitted)"),
        "{placement}"
    );
    let mut failing = launch(dir.path(), 1, "echo bad >&2; exit 3");
    failing.run = 2;
    ex.start(failing).expect("submit");
    let ready = fifo(&dir.path().join("ready"));
    ex.start(launch(dir.path(), 2, "echo r > ready; exec sleep 1000"))
        .expect("submit");
    assert!(!ex.has_room(1, &res(1.0, 0)), "max_concurrent_trials = 3");

    let mut placed = Vec::new();
    let mut outcomes = BTreeMap::new();
    for _ in 0..2 {
        let (trial, run, success, message) = next_exit(&mut rx, &mut placed).await;
        outcomes.insert(trial.0, (run, success, message));
    }
    assert_eq!(outcomes[&0], (1, true, "exit code 0".to_string()));
    let (run, success, message) = &outcomes[&1];
    assert_eq!((*run, *success), (2, false));
    assert!(
        message.starts_with("job ") && message.ends_with(" FAILED (NonZeroExitCode): exit code 3"),
        "{message}"
    );
    assert!(read(&dir.path().join("t1/stderr.log")).contains("bad"));
    for rank in 0..2 {
        let line = read(&dir.path().join(format!("job_rank_{rank}")));
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &fields[..3],
            &[rank.to_string().as_str(), "2", "2"],
            "{line}"
        );
        assert_eq!(fields.len(), 4, "one GPU per rank: {line}");
        let env = env_file(&dir.path().join(format!("job_env_{rank}")));
        assert_eq!(
            env["RTUNE_SECRET"], "s3cret",
            "the run's environment reaches the job"
        );
        assert!(env["MASTER_PORT"].parse::<u16>().is_ok());
    }
    assert!(
        placed
            .iter()
            .any(|p| p.contains(" n1 ") || p.contains(" n2 ") || p.contains(" n[")),
        "a Placed event names the nodes: {placed:?}"
    );

    // Stop a running job: TERM reaches the trial, the job ends, nothing of it is left.
    read(&ready);
    ex.stop(TrialId(2), Duration::from_secs(30));
    let (trial, _, success, message) = next_exit(&mut rx, &mut placed).await;
    assert_eq!(trial, TrialId(2));
    assert!(!success, "{message}");
    let id = message
        .strip_prefix("job ")
        .and_then(|m| m.split_whitespace().next())
        .expect("message names the job")
        .to_string();
    assert_ne!(job_state(&id), "RUNNING");
    assert!(
        ["COMPLETED", "FAILED", "CANCELLED", "gone"].contains(&job_state(&id).as_str()),
        "{}",
        job_state(&id)
    );
    for trial in 0..3 {
        ex.release(TrialId(trial));
    }
    assert!(ex.has_room(1, &res(1.0, 0)));
}

#[tokio::test]
async fn a_requeued_trial_job_is_a_lost_run_and_never_runs_again() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("a_requeued_trial_job_is_a_lost_run") {
        return;
    }
    let (mut ex, mut rx) = jobs_executor(None);
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = fifo(&dir.path().join("ready"));
    let placement = ex
        .start(launch(dir.path(), 0, "echo r > ready; exec sleep 1000"))
        .expect("submit");
    let id = placement.job_id.expect("the placement names the job");
    read(&ready);
    // What a preemption with requeue, a node failure or an operator does.
    let out = Command::new("scontrol")
        .args(["requeue", &id])
        .output()
        .expect("scontrol");
    assert!(
        out.status.success(),
        "scontrol requeue {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The run is lost (not failed), exactly once.
    let (trial, run, message) = loop {
        let event = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("an event within 60 s")
            .expect("open");
        match event {
            ExecutorEvent::Lost {
                trial,
                run,
                message,
            } => break (trial, run, message),
            ExecutorEvent::Placed { .. } => {}
            other => panic!("expected Lost, got {other:?}"),
        }
    };
    assert_eq!((trial, run), (TrialId(0), 1), "{message}");
    assert!(message.contains("requeued"), "{message}");
    // rtune cancelled the requeued job: SLURM never runs the old run again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = job_state(&id);
        assert_ne!(state, "RUNNING", "the requeued job ran again");
        if state == "CANCELLED" || state == "gone" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "job {id} is {state}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ex.release(TrialId(0));
}

#[tokio::test]
async fn job_per_trial_waits_in_the_queue_as_pending() {
    let _cluster = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if !cluster_available("job_per_trial_waits_in_the_queue_as_pending") {
        return;
    }
    // Every CPU of the cluster is taken: the trial's job has to queue.
    let blocker = Allocation::new(&["-N2", "--ntasks-per-node=1", "-c4"]);
    let (mut ex, mut rx) = jobs_executor(None);
    let dir = tempfile::tempdir().expect("tempdir");
    ex.start(launch(dir.path(), 0, "true")).expect("submit");
    // The first look may come before the scheduler gave a reason (`PENDING (None)`).
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("an event")
            .expect("open");
        let ExecutorEvent::Placed { placement, .. } = event else {
            panic!("expected Placed, got {event:?}");
        };
        assert!(placement.queued, "{placement:?}");
        if matches!(
            placement.queue_reason.as_deref(),
            Some("Resources" | "Priority")
        ) {
            break;
        }
    }
    // Stopping a queued trial withdraws its job.
    ex.stop(TrialId(0), Duration::from_secs(30));
    let mut placed = Vec::new();
    let (_, _, success, message) = next_exit(&mut rx, &mut placed).await;
    assert!(!success);
    assert!(message.ends_with("CANCELLED: was cancelled"), "{message}");
    drop(blocker);
}

//! The job-per-trial executor when `squeue` fails: a failed look at the queue says nothing
//! about the jobs, so none of them may be taken as ended (their trials would be restarted while
//! the jobs run on). Fake `sbatch`, `squeue` and `scancel` programs on PATH play SLURM; `squeue`
//! fails a given number of times, then lists the job as COMPLETED.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rtune_core::TrialId;
use tokio::sync::mpsc::UnboundedReceiver;

use rtune_runner::executor::{
    Executor, ExecutorEvent, Resources, SlurmJobsConfig, SlurmJobsExecutor, TrialLaunch,
};

fn write_program(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Fake SLURM programs in `dir`; `squeue` fails as often as `dir/fail_first` says.
fn fake_slurm(dir: &Path) {
    let d = dir.display();
    write_program(dir, "sbatch", "echo 4242\n");
    write_program(dir, "scancel", &format!("echo \"$*\" >> {d}/scancel.log\n"));
    write_program(
        dir,
        "squeue",
        &format!(
            "n=$(cat {d}/squeue.count 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {d}/squeue.count\n\
             if [ \"$n\" -le \"$(cat {d}/fail_first)\" ]; then\n\
             echo 'squeue: error: slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2\n\
             exit 1\nfi\n\
             echo '4242|COMPLETED|None|n1|0|'\n"
        ),
    );
}

fn set_failures(dir: &Path, n: u32) {
    std::fs::write(dir.join("fail_first"), n.to_string()).unwrap();
    let _ = std::fs::remove_file(dir.join("squeue.count"));
}

fn squeue_calls(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("squeue.count"))
        .map(|t| t.trim().parse().unwrap())
        .unwrap_or(0)
}

fn launch(dir: &Path, trial: u32) -> TrialLaunch {
    let trial_dir: PathBuf = dir.join(format!("trial_{trial}"));
    TrialLaunch {
        trial: TrialId(trial),
        run: 0,
        command: vec!["true".into()],
        env: Vec::new(),
        workers: 1,
        resources: Resources { cpu: 1.0, gpu: 0 },
        cwd: dir.to_path_buf(),
        stdout: trial_dir.join("stdout.log"),
        stderr: trial_dir.join("stderr.log"),
    }
}

/// A job-per-trial executor that looks at the queue every 5 ms, and its events.
fn polling_every_5_ms() -> (SlurmJobsExecutor, UnboundedReceiver<ExecutorEvent>) {
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let config = SlurmJobsConfig {
        poll_interval: Duration::from_millis(5),
        ..SlurmJobsConfig::default()
    };
    (SlurmJobsExecutor::new(config, tx).unwrap(), events)
}

/// The next run's end: (success, message).
async fn next_exit(events: &mut UnboundedReceiver<ExecutorEvent>) -> (bool, String) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .expect("an event within 120 s")
            .expect("the channel is open");
        if let ExecutorEvent::Exited {
            success, message, ..
        } = event
        {
            return (success, message);
        }
    }
}

#[test]
fn a_failing_squeue_never_ends_a_job() {
    let fake = tempfile::tempdir().unwrap();
    fake_slurm(fake.path());
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // SAFETY: this is the only test of this binary, and no other thread reads the environment
    // yet (the runtimes below start afterwards).
    unsafe { std::env::set_var("PATH", &path) };
    let work = tempfile::tempdir().unwrap();

    // The poller: 35 failed looks in a row (more than the 30 after which the executor used to
    // give every job up as failed), then the job is COMPLETED: the trial succeeded.
    set_failures(fake.path(), 35);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut executor, mut events) = polling_every_5_ms();
        executor.start(launch(work.path(), 0)).unwrap();
        assert_eq!(
            next_exit(&mut events).await,
            (true, "exit code 0".to_string())
        );
        assert!(squeue_calls(fake.path()) > 35);
        executor.release(TrialId(0));
    });

    // Shutdown only starts the ending (scancel) and returns at once; the trial's
    // end still comes from the poller, which must see through 3 failed squeue calls until the
    // job is listed as ended (a failed look used to count as "every job ended").
    set_failures(fake.path(), 3);
    runtime.block_on(async {
        let (mut executor, mut events) = polling_every_5_ms();
        executor.start(launch(work.path(), 1)).unwrap();
        executor.shutdown(Duration::from_secs(60));
        next_exit(&mut events).await;
        let calls = squeue_calls(fake.path());
        assert!(
            calls >= 4,
            "the run ended after {calls} squeue calls: a failed squeue was taken as its end"
        );
    });
    // No squeue answer had said the job runs, so it was withdrawn as a pending one.
    let scancels = std::fs::read_to_string(fake.path().join("scancel.log")).unwrap();
    assert!(scancels.lines().any(|l| l == "4242"), "{scancels}");
}

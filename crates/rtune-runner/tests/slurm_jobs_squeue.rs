//! The job-per-trial executor when `squeue` fails: a failed look at the queue says nothing
//! about the jobs, so none of them may be taken as ended (their trials would be restarted while
//! the jobs run on). Fake `sbatch`, `squeue` and `scancel` programs on PATH play SLURM; `squeue`
//! fails a given number of times, then lists the job as COMPLETED.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rtune_core::TrialId;
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
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let config = SlurmJobsConfig {
            poll_interval: Duration::from_millis(5),
            ..SlurmJobsConfig::default()
        };
        let mut executor = SlurmJobsExecutor::new(config, tx).unwrap();
        executor.start(launch(work.path(), 0)).unwrap();
        let exited = loop {
            let event = tokio::time::timeout(Duration::from_secs(120), events.recv())
                .await
                .expect("an event within 120 s")
                .expect("the channel is open");
            if let ExecutorEvent::Exited {
                success, message, ..
            } = event
            {
                break (success, message);
            }
        };
        assert_eq!(exited, (true, "exit code 0".to_string()));
        assert!(squeue_calls(fake.path()) > 35);
        executor.release(TrialId(0));
    });

    // Shutdown: squeue fails 3 times, then lists the job as ended. Shutdown must keep asking
    // (it used to take the first failure as "every job ended" and return at once).
    set_failures(fake.path(), 3);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (tx, _events) = tokio::sync::mpsc::unbounded_channel();
        let mut executor = SlurmJobsExecutor::new(SlurmJobsConfig::default(), tx).unwrap();
        executor.start(launch(work.path(), 1)).unwrap();
        // Blocking, and the poller cannot run meanwhile on this one-thread runtime: every squeue
        // call counted is shutdown's.
        executor.shutdown(Duration::from_secs(60));
        let calls = squeue_calls(fake.path());
        assert!(
            calls >= 4,
            "shutdown asked squeue {calls} times: it stopped at a failed squeue"
        );
    });
    let scancels = std::fs::read_to_string(fake.path().join("scancel.log")).unwrap();
    assert!(scancels.contains("--signal=TERM 4242"), "{scancels}");
}

//! The trainer's rtune loop against an in-process fake session.

use clap::Parser;
use rtune_trainer::cli::{Cli, Command, TrainArgs, train_with_session};
use rtune_trainer::squad::write_synthetic_dataset;
use rtune_trainer::trial::{Next, TrialError, TrialSession};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Log {
    reports: Vec<(Map<String, Value>, PathBuf)>,
}

struct FakeSession {
    config: Map<String, Value>,
    restore: Option<PathBuf>,
    scratch: PathBuf,
    stop_after: usize,
    log: Arc<Mutex<Log>>,
}

impl TrialSession for FakeSession {
    fn config(&self) -> &Map<String, Value> {
        &self.config
    }
    fn restore_dir(&self) -> Option<PathBuf> {
        self.restore.clone()
    }
    fn new_checkpoint_dir(&mut self) -> Result<PathBuf, TrialError> {
        let count = self.log.lock().expect("lock").reports.len();
        let dir = self.scratch.join(format!("ckpt_{count}"));
        std::fs::create_dir_all(&dir).map_err(|e| TrialError(e.to_string()))?;
        Ok(dir)
    }
    fn report_with_checkpoint(
        &mut self,
        metrics: &Map<String, Value>,
        dir: &Path,
    ) -> Result<Next, TrialError> {
        let mut log = self.log.lock().expect("lock");
        log.reports.push((metrics.clone(), dir.to_path_buf()));
        Ok(if log.reports.len() >= self.stop_after {
            Next::Exit
        } else {
            Next::Continue
        })
    }
}

fn args(data: &Path) -> TrainArgs {
    let cli = Cli::parse_from([
        "rtune-train-lm",
        "train",
        "--data",
        data.to_str().expect("utf-8"),
        "--init",
        "random",
        "--layers",
        "1",
        "--hidden",
        "32",
        "--heads",
        "2",
        "--vocab",
        "300",
        "--epochs",
        "9",
        "--max-length",
        "64",
    ]);
    match cli.command {
        Command::Train(args) => args,
        _ => unreachable!(),
    }
}

fn config() -> Map<String, Value> {
    json!({"lr": 2e-3, "per_device_bs": 4, "wd": 0.01, "epochs": 3, "seed": 5})
        .as_object()
        .expect("object")
        .clone()
}

#[test]
fn reports_checkpoints_each_epoch_stops_when_told_and_resumes_from_restore_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    write_synthetic_dataset(&data, 24, 8, 11).expect("data");
    let log = Arc::new(Mutex::new(Log::default()));
    let session = FakeSession {
        config: config(),
        restore: None,
        scratch: dir.path().join("run1"),
        stop_after: 2,
        log: log.clone(),
    };
    train_with_session(&args(&data), Some(Box::new(session))).expect("run 1");
    let reports = std::mem::take(&mut log.lock().expect("lock").reports);
    assert_eq!(
        reports.len(),
        2,
        "stops when told, before epochs (3) are done"
    );
    assert_eq!(reports[1].0["epoch"], json!(2));
    assert!(
        reports[1].0["eval_loss"]
            .as_f64()
            .expect("eval_loss")
            .is_finite()
    );
    assert!(reports[1].0["train_loss"].as_f64().is_some());
    assert_eq!(reports[1].0["lr"], json!(2e-3), "config overrides --lr");
    for file in [
        "model.safetensors",
        "optimizer.bpk",
        "trainer_state.json",
        "tokenizer.json",
        "config.json",
    ] {
        assert!(reports[1].1.join(file).is_file(), "{file}");
    }

    // A full uninterrupted run for comparison.
    let full_log = Arc::new(Mutex::new(Log::default()));
    let full = FakeSession {
        config: config(),
        restore: None,
        scratch: dir.path().join("full"),
        stop_after: usize::MAX,
        log: full_log.clone(),
    };
    train_with_session(&args(&data), Some(Box::new(full))).expect("full");
    let full_reports = std::mem::take(&mut full_log.lock().expect("lock").reports);
    assert_eq!(full_reports.len(), 3, "epochs from the config");

    // Resume from the epoch-2 checkpoint: epoch 3 must equal the uninterrupted run's.
    let session = FakeSession {
        config: config(),
        restore: Some(reports[1].1.clone()),
        scratch: dir.path().join("run2"),
        stop_after: usize::MAX,
        log: log.clone(),
    };
    train_with_session(&args(&data), Some(Box::new(session))).expect("run 2");
    let resumed = std::mem::take(&mut log.lock().expect("lock").reports);
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        resumed[0].0, full_reports[2].0,
        "resumed epoch 3 equals uninterrupted epoch 3"
    );
}

#[test]
fn bad_trial_config_values_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    write_synthetic_dataset(&data, 8, 4, 1).expect("data");
    let mut bad = config();
    bad.insert("per_device_bs".into(), json!(1.5));
    let session = FakeSession {
        config: bad,
        restore: None,
        scratch: dir.path().join("s"),
        stop_after: 1,
        log: Arc::new(Mutex::new(Log::default())),
    };
    let error = train_with_session(&args(&data), Some(Box::new(session)))
        .expect_err("bad bs")
        .to_string();
    assert!(error.contains("per_device_bs"), "{error}");
}

//! `rtune-example`: a small trainable for examples, tests and benchmarks.
//!
//! It simulates training without doing any: a scalar "distance to the optimum" shrinks each
//! epoch by an amount that depends on the learning rate, and the reported `eval_loss` is that
//! distance plus penalties for the other hyperparameters plus seeded noise. Everything is a
//! deterministic function of the config, the epoch and `seed`, so tests can predict which trials
//! a scheduler keeps.
//!
//! Problems (`problem` in the config, or `--problem`):
//! * `fixed` (default): the best learning rate is 1e-4 at every epoch.
//! * `changing-lr`: the best learning rate falls tenfold every 2 epochs (1e-3, 1e-4, 1e-5, ...),
//!   so a learning-rate schedule (what PBT finds) beats every fixed learning rate.
//!
//! Config keys (all optional): `lr` (default 1e-4), `per_device_bs` (1), `wd` (0.0),
//! `epochs` (5), `problem`, `seed` (0), `sleep_ms` (0: time per epoch), `fail_at_epoch`
//! (exit with status 3 at that epoch, for tests), `fail_run` (only fail in this run number),
//! `checkpoint` (true: whether to save and report a checkpoint each epoch), `checkpoint_every`
//! (1: checkpoint only every N-th epoch, so a restart has results to roll back).
//!
//! Checkpoints: every epoch writes `state.json` (epoch, distance, id) into a fresh checkpoint dir
//! and reports it; a restored run continues from the checkpoint's epoch and distance.
//!
//! Metrics: `eval_loss`, `epoch`, `lr`, `distance` (the exact training state), and with each
//! checkpoint its `checkpoint_id` (`trial_00001/run2/epoch3`: who wrote it, when). The first report
//! of a run that restored a checkpoint also carries `restored_checkpoint` (that checkpoint's id),
//! `restored_epoch` and `restored_distance`, so tests can prove where a restarted trial (a resumed
//! one, or a PBT exploit that copied a donor's checkpoint) really continued from.
//!
//! Outside rtune (no `RTUNE_ADDR`), it reads the config from `--config JSON` and prints one
//! JSON line per epoch.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Map, Value, json};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("rtune-example: error: {message}");
            ExitCode::from(2)
        }
    }
}

struct Params {
    lr: f64,
    per_device_bs: f64,
    wd: f64,
    epochs: u64,
    problem: Problem,
    seed: u64,
    sleep_ms: u64,
    fail_at_epoch: Option<u64>,
    fail_run: Option<u64>,
    checkpoint: bool,
    checkpoint_every: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Problem {
    Fixed,
    ChangingLr,
}

impl Params {
    fn from_config(
        config: &Map<String, Value>,
        problem_flag: Option<&str>,
    ) -> Result<Self, String> {
        let num = |key: &str, default: f64| -> Result<f64, String> {
            match config.get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| format!("config key `{key}` must be a number, got {v}")),
            }
        };
        let int = |key: &str| -> Result<Option<u64>, String> {
            match config.get(key) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                    format!("config key `{key}` must be a non-negative integer, got {v}")
                }),
            }
        };
        let problem = match config
            .get("problem")
            .and_then(Value::as_str)
            .or(problem_flag)
            .unwrap_or("fixed")
        {
            "fixed" => Problem::Fixed,
            "changing-lr" => Problem::ChangingLr,
            other => return Err(format!("unknown problem `{other}` (fixed | changing-lr)")),
        };
        let lr = num("lr", 1e-4)?;
        if lr <= 0.0 {
            return Err(format!("config key `lr` must be > 0, got {lr}"));
        }
        Ok(Params {
            lr,
            per_device_bs: num("per_device_bs", 1.0)?,
            wd: num("wd", 0.0)?,
            epochs: int("epochs")?.unwrap_or(5),
            problem,
            seed: int("seed")?.unwrap_or(0),
            sleep_ms: int("sleep_ms")?.unwrap_or(0),
            fail_at_epoch: int("fail_at_epoch")?,
            fail_run: int("fail_run")?,
            checkpoint: match config.get("checkpoint") {
                None => true,
                Some(v) => v.as_bool().ok_or_else(|| {
                    format!("config key `checkpoint` must be true or false, got {v}")
                })?,
            },
            checkpoint_every: int("checkpoint_every")?.unwrap_or(1).max(1),
        })
    }

    /// The learning rate that makes the most progress at `epoch` (1-based).
    fn best_lr(&self, epoch: u64) -> f64 {
        match self.problem {
            Problem::Fixed => 1e-4,
            Problem::ChangingLr => 1e-3 * 0.1f64.powi(((epoch - 1) / 2) as i32),
        }
    }

    /// Fraction of the remaining distance removed in `epoch`: 0.5 at the best learning rate,
    /// falling off with the squared distance in decades.
    fn progress(&self, epoch: u64) -> f64 {
        let decades = (self.lr.log10() - self.best_lr(epoch).log10()).abs();
        let bs_factor = if self.per_device_bs >= 2.0 { 0.95 } else { 1.0 };
        0.5 * bs_factor / (1.0 + decades * decades * 2.0)
    }

    /// Seeded noise in [-0.005, 0.005), different per epoch and config.
    fn noise(&self, epoch: u64) -> f64 {
        let mut h = self.seed ^ 0x9E37_79B9_7F4A_7C15;
        for bits in [
            self.lr.to_bits(),
            self.per_device_bs.to_bits(),
            self.wd.to_bits(),
            epoch,
        ] {
            h = splitmix64(h ^ bits);
        }
        ((h >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.01
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What a checkpoint holds.
struct State {
    epoch: u64,
    distance: f64,
    /// Who wrote the checkpoint (`checkpoint_id`); empty for a fresh start.
    id: String,
}

fn read_state(dir: &Path) -> Result<State, String> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read checkpoint {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("checkpoint {} is not valid JSON: {e}", path.display()))?;
    // `distance_bits` keeps the exact value (a JSON float may come back one bit off), so a
    // restored run continues exactly as an uninterrupted one would.
    let distance = v["distance_bits"]
        .as_u64()
        .map(f64::from_bits)
        .or_else(|| v["distance"].as_f64());
    match (v["epoch"].as_u64(), distance) {
        (Some(epoch), Some(distance)) => Ok(State {
            epoch,
            distance,
            id: v["id"].as_str().unwrap_or_default().to_string(),
        }),
        _ => Err(format!(
            "checkpoint {} lacks epoch or distance",
            path.display()
        )),
    }
}

fn write_state(dir: &Path, state: &State) -> Result<(), String> {
    let path = dir.join("state.json");
    let text = json!({
        "epoch": state.epoch,
        "distance": state.distance,
        "distance_bits": state.distance.to_bits(),
        "id": state.id,
    })
    .to_string();
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn run() -> Result<ExitCode, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut config_flag = None;
    let mut problem_flag = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--config" => config_flag = iter.next().cloned(),
            "--problem" => problem_flag = iter.next().cloned(),
            "-h" | "--help" => {
                println!("usage: rtune-example [--config JSON] [--problem fixed|changing-lr]");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }

    let mut session = rtune_client::Session::from_env().map_err(|e| e.to_string())?;
    let config = match (&session, &config_flag) {
        (Some(s), _) => s.config().clone(),
        (None, Some(text)) => {
            serde_json::from_str(text).map_err(|e| format!("--config is not a JSON object: {e}"))?
        }
        (None, None) => Map::new(),
    };
    let params = Params::from_config(&config, problem_flag.as_deref())?;
    let run_number = session.as_ref().map_or(0, |s| u64::from(s.run()));

    let restore = session
        .as_ref()
        .and_then(|s| s.restore_dir().map(Path::to_path_buf));
    let mut state = match restore {
        Some(dir) => read_state(&dir)?,
        None => State {
            epoch: 0,
            distance: 1.0,
            id: String::new(),
        },
    };
    let trial_name = session
        .as_ref()
        .map_or("local".to_string(), |s| s.trial_name().to_string());
    // Where this run started from, told with its first report only.
    let mut restored = session.as_ref().and_then(|s| s.restore_dir()).map(|_| {
        json!({
            "restored_checkpoint": state.id,
            "restored_epoch": state.epoch,
            "restored_distance": state.distance,
        })
    });

    while state.epoch < params.epochs {
        let epoch = state.epoch + 1;
        if params.sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(params.sleep_ms));
        }
        if params.fail_at_epoch == Some(epoch) && params.fail_run.is_none_or(|r| r == run_number) {
            eprintln!("rtune-example: failing at epoch {epoch} as configured");
            return Ok(ExitCode::from(3));
        }
        state.distance *= 1.0 - params.progress(epoch);
        state.epoch = epoch;
        let eval_loss = state.distance + params.wd * 0.5 + params.noise(epoch);
        let mut metrics = Map::new();
        metrics.insert("eval_loss".into(), json!(eval_loss));
        metrics.insert("epoch".into(), json!(epoch));
        metrics.insert("lr".into(), json!(params.lr));
        metrics.insert("distance".into(), json!(state.distance));
        if let Some(Value::Object(fields)) = restored.take() {
            metrics.extend(fields);
        }

        let action = match session.as_mut() {
            Some(s) if !params.checkpoint || epoch % params.checkpoint_every != 0 => {
                s.report(&metrics).map_err(|e| e.to_string())?
            }
            Some(s) => {
                let dir = s.new_checkpoint_dir().map_err(|e| e.to_string())?;
                state.id = format!("{trial_name}/run{run_number}/epoch{epoch}");
                metrics.insert("checkpoint_id".into(), json!(state.id));
                write_state(&dir, &state)?;
                s.report_with_checkpoint(&metrics, &dir)
                    .map_err(|e| e.to_string())?
            }
            None => {
                println!("{}", Value::Object(metrics));
                rtune_client::TrialAction::Continue
            }
        };
        if action.should_exit() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

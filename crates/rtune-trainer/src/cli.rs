//! The `rtune-train-lm` command line.

use crate::bench::{BenchConfig, run as run_bench};
use crate::config::BloomConfig;
use crate::data::{Encoded, TextTokenizer, encode_example, training_texts};
use crate::model::Bloom;
use crate::precision::Precision;
use crate::squad::{QaExample, SquadError, load_squad, write_synthetic_dataset};
use crate::train::{EpochResult, Hyperparameters, TrainError, Trainer, files};
use crate::trial::{Next, TrialError, TrialSession, connect};
use crate::weights::load_model;
use burn::prelude::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Errors of the command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Data problem.
    #[error(transparent)]
    Squad(#[from] SquadError),
    /// Training problem.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Protocol problem.
    #[error(transparent)]
    Trial(#[from] TrialError),
    /// Bad usage or config value.
    #[error("{0}")]
    Usage(String),
    /// A bad `RTUNE_TRAINER_ISA`.
    #[error(transparent)]
    Isa(#[from] crate::isa::IsaError),
    /// `--device cuda` without what it needs.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaUnavailable),
}

/// Fine-tune a BLOOM causal LM on SQuAD-format QA data (rtune's built-in trainer).
#[derive(Debug, Parser)]
#[command(name = "rtune-train-lm", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a deterministic synthetic SQuAD v1.1 dataset (train.json, dev.json).
    GenSquad(GenSquadArgs),
    /// Train (as an rtune trial when RTUNE_ADDR is set, else standalone).
    Train(TrainArgs),
    /// Measure training tokens/s and peak RSS on random batches.
    Bench(BenchArgs),
}

/// `gen-squad` options.
#[derive(Debug, Args)]
pub struct GenSquadArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Training questions.
    #[arg(long, default_value_t = 1000)]
    pub train: usize,
    /// Evaluation questions.
    #[arg(long, default_value_t = 100)]
    pub eval: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// How to initialise the model when no `--model-dir` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Init {
    /// Random weights, small config from the flags, BPE tokenizer trained on the train set.
    Random,
}

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DeviceKind {
    /// burn's pure-Rust `flex` CPU backend.
    #[default]
    Cpu,
    /// burn's CUDA backend, GPU 0 (needs a build with `--features cuda`).
    Cuda,
}

/// The autodiff device for `kind`.
pub fn training_device(kind: DeviceKind) -> Result<Device, CliError> {
    match kind {
        DeviceKind::Cpu => {
            // Checked here so that a bad RTUNE_TRAINER_ISA stops the run with its message
            // (the kernels would fall back to the detected level with a warning).
            let isa = crate::isa::from_env()?;
            tracing::info!(isa = isa.name(), "CPU kernels");
            Ok(Device::flex().autodiff())
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            crate::cuda::preflight()?;
            Ok(Device::cuda(0).autodiff())
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => Err(CliError::Usage(
            "--device cuda needs rtune-train-lm built with `--features cuda`".into(),
        )),
    }
}

/// `train` options. Inside rtune, the trial config's `lr`, `per_device_bs`, `wd` (or
/// `weight_decay`), `epochs`, `warmup_ratio`, `grad_accum`, `seed`, `max_grad_norm` and
/// `max_length` override these flags.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Directory with train.json and dev.json (SQuAD v1.1 or v2.0).
    #[arg(long)]
    pub data: PathBuf,
    /// Hugging Face model dir (config.json, model.safetensors, tokenizer.json).
    #[arg(long, conflicts_with = "init")]
    pub model_dir: Option<PathBuf>,
    /// Initialise randomly instead of loading a model dir.
    #[arg(long, value_enum)]
    pub init: Option<Init>,
    /// Blocks (--init random).
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Hidden size (--init random).
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Attention heads (--init random).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Vocabulary size of the trained BPE tokenizer and the model (--init random).
    #[arg(long, default_value_t = 512)]
    pub vocab: usize,
    /// Training questions to use (the first N of train.json; default all).
    #[arg(long)]
    pub train_samples: Option<usize>,
    /// Evaluation questions to use (the first M of dev.json; default all).
    #[arg(long)]
    pub eval_samples: Option<usize>,
    /// Maximum tokens per example (prompt + answer + EOS).
    #[arg(long, default_value_t = 128)]
    pub max_length: usize,
    /// Epochs.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-5)]
    pub lr: f64,
    /// Per-device batch size.
    #[arg(long, default_value_t = 8)]
    pub per_device_bs: usize,
    /// Weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub wd: f64,
    /// Gradient accumulation steps.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Warmup ratio of the linear schedule.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Seed (initialisation and data order).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Standalone: write a checkpoint per epoch under this directory (epoch_N).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Standalone: resume from this checkpoint directory.
    #[arg(long)]
    pub restore: Option<PathBuf>,
    /// Device to train on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Compute precision: f32, or bf16 / f16 over f32 master weights (f16 with dynamic loss
    /// scaling). On the CPU, bf16 multiplies bf16 (AMX or AVX512_BF16 where the CPU has them)
    /// with f32 activations; f16 runs on burn's f16 tensors, slower than f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// `bench` options (defaults: the tiny config).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    /// Heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Vocabulary.
    #[arg(long, default_value_t = 512)]
    pub vocab: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Untimed warmup steps.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Print the loss of every N-th step (counted from the first warmup step; 0: none).
    #[arg(long, default_value_t = 0)]
    pub loss_every: usize,
    /// Device to train on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Compute precision: f32, or bf16 / f16 over f32 master weights (f16 with dynamic loss
    /// scaling). On the CPU, bf16 multiplies bf16 (AMX or AVX512_BF16 where the CPU has them)
    /// with f32 activations; f16 runs on burn's f16 tensors, slower than f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::GenSquad(args) => {
            write_synthetic_dataset(&args.out, args.train, args.eval, args.seed)?;
            eprintln!(
                "wrote {} ({} questions) and {} ({} questions)",
                args.out.join("train.json").display(),
                args.train,
                args.out.join("dev.json").display(),
                args.eval
            );
            Ok(())
        }
        Command::Train(args) => train(&args),
        Command::Bench(args) => {
            let config = BenchConfig {
                layers: args.layers,
                hidden: args.hidden,
                heads: args.heads,
                vocab: args.vocab,
                seq: args.seq,
                batch: args.batch,
                steps: args.steps,
                warmup_steps: args.warmup,
                precision: args.precision,
                loss_every: args.loss_every,
            };
            let result = run_bench(&config, training_device(args.device)?)?;
            println!(
                "bench: layers={} hidden={} heads={} vocab={} seq={} batch={} params={} AdamW precision={} device={:?} threads={} isa={}",
                config.layers,
                config.hidden,
                config.heads,
                config.vocab,
                config.seq,
                config.batch,
                result.parameters,
                args.precision.name(),
                args.device,
                rayon::current_num_threads(),
                match args.device {
                    DeviceKind::Cpu => crate::isa::selected().name(),
                    DeviceKind::Cuda => "n/a",
                }
            );
            for (step, loss) in &result.losses {
                println!("LOSS step={step} loss={loss:.4}");
            }
            println!(
                "RESULT steps={} steps_per_s={:.2} tokens_per_s={:.0} peak_rss_mib={} first_loss={:.4} last_loss={:.4}",
                config.steps,
                result.steps_per_s,
                result.tokens_per_s,
                result
                    .peak_rss_mib
                    .map(|m| format!("{m:.1}"))
                    .unwrap_or_else(|| "n/a".into()),
                result.first_loss,
                result.last_loss
            );
            Ok(())
        }
    }
}

fn config_number(config: &Map<String, Value>, keys: &[&str]) -> Result<Option<f64>, CliError> {
    for key in keys {
        if let Some(value) = config.get(*key) {
            return value.as_f64().map(Some).ok_or_else(|| {
                CliError::Usage(format!("trial config {key} must be a number, got {value}"))
            });
        }
    }
    Ok(None)
}

fn config_count(config: &Map<String, Value>, keys: &[&str]) -> Result<Option<usize>, CliError> {
    match config_number(config, keys)? {
        None => Ok(None),
        Some(v) if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 => Ok(Some(v as usize)),
        Some(v) => Err(CliError::Usage(format!(
            "trial config {} must be a non-negative integer, got {v}",
            keys[0]
        ))),
    }
}

/// Hyperparameters from the flags, overridden by the rtune trial config where it has them.
pub fn hyperparameters(
    args: &TrainArgs,
    config: Option<&Map<String, Value>>,
) -> Result<(Hyperparameters, usize), CliError> {
    let mut hp = Hyperparameters {
        lr: args.lr,
        weight_decay: args.wd,
        per_device_bs: args.per_device_bs,
        grad_accum: args.grad_accum,
        epochs: args.epochs,
        warmup_ratio: args.warmup_ratio,
        seed: args.seed,
        max_grad_norm: args.max_grad_norm,
    };
    let mut max_length = args.max_length;
    if let Some(config) = config {
        if let Some(v) = config_number(config, &["lr", "learning_rate"])? {
            hp.lr = v;
        }
        if let Some(v) = config_number(config, &["wd", "weight_decay"])? {
            hp.weight_decay = v;
        }
        if let Some(v) = config_count(config, &["per_device_bs", "per_device_train_batch_size"])? {
            hp.per_device_bs = v;
        }
        if let Some(v) = config_count(config, &["grad_accum", "gradient_accumulation_steps"])? {
            hp.grad_accum = v;
        }
        if let Some(v) = config_count(config, &["epochs", "num_train_epochs"])? {
            hp.epochs = v;
        }
        if let Some(v) = config_number(config, &["warmup_ratio"])? {
            hp.warmup_ratio = v;
        }
        if let Some(v) = config_count(config, &["seed"])? {
            hp.seed = v as u64;
        }
        if let Some(v) = config_number(config, &["max_grad_norm"])? {
            hp.max_grad_norm = v;
        }
        if let Some(v) = config_count(config, &["max_length"])? {
            max_length = v;
        }
    }
    hp.validate()?;
    Ok((hp, max_length))
}

fn encode_all(
    tokenizer: &TextTokenizer,
    examples: &[QaExample],
    max_length: usize,
) -> Result<Vec<Encoded>, CliError> {
    examples
        .iter()
        .map(|e| encode_example(tokenizer, e, max_length).map_err(|e| CliError::Train(e.into())))
        .collect()
}

fn check_vocab(
    tokenizer: &TextTokenizer,
    config: &BloomConfig,
    origin: &Path,
) -> Result<(), CliError> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(CliError::Usage(format!(
            "{}: tokenizer has {} tokens but the model's vocab_size is {}",
            origin.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    Ok(())
}

/// The `train` subcommand: connects to rtune when started by it, then trains.
pub fn train(args: &TrainArgs) -> Result<(), CliError> {
    train_with_session(args, connect()?)
}

/// Trains with the given trial session (`None`: standalone, one JSON line per epoch on
/// stdout). With a session, the trial config overrides the flags' hyperparameters, the
/// session's restore dir is resumed from, and after every epoch a checkpoint is written into
/// `new_checkpoint_dir()` and reported with the metrics; training ends when rtune says so.
pub fn train_with_session(
    args: &TrainArgs,
    mut session: Option<Box<dyn TrialSession>>,
) -> Result<(), CliError> {
    let (hp, max_length) = hyperparameters(args, session.as_ref().map(|s| s.config()))?;
    let train_examples = load_squad(&args.data.join("train.json"), args.train_samples)?;
    let eval_examples = load_squad(&args.data.join("dev.json"), args.eval_samples)?;
    let device = training_device(args.device)?;
    let restore_dir = session
        .as_ref()
        .and_then(|s| s.restore_dir())
        .or_else(|| args.restore.clone());

    let (mut trainer, tokenizer) = if let Some(dir) = &restore_dir {
        let trainer = Trainer::restore(dir, hp, device)?;
        let tokenizer = TextTokenizer::from_file(
            &dir.join(files::TOKENIZER),
            trainer.config.eos_token_id,
            trainer.config.pad_token_id,
        )
        .map_err(TrainError::from)?;
        eprintln!(
            "restored {} (epoch {}, step {})",
            dir.display(),
            trainer.epoch,
            trainer.step
        );
        (trainer, tokenizer)
    } else if let Some(model_dir) = &args.model_dir {
        let config =
            BloomConfig::from_file(&model_dir.join(files::CONFIG)).map_err(TrainError::from)?;
        let tokenizer = TextTokenizer::from_file(
            &model_dir.join(files::TOKENIZER),
            config.eos_token_id,
            config.pad_token_id,
        )
        .map_err(TrainError::from)?;
        check_vocab(&tokenizer, &config, model_dir)?;
        let model = load_model(&model_dir.join(files::MODEL), &config, &device)
            .map_err(TrainError::from)?;
        (Trainer::new(config, model, hp, device)?, tokenizer)
    } else if args.init == Some(Init::Random) {
        let texts = training_texts(&train_examples);
        let tokenizer =
            TextTokenizer::train_byte_level_bpe(texts.iter().map(String::as_str), args.vocab)
                .map_err(TrainError::from)?;
        let mut config = BloomConfig::new(args.layers, args.hidden, args.heads, args.vocab);
        config.eos_token_id = Some(tokenizer.eos_id);
        config.pad_token_id = Some(tokenizer.pad_id);
        config.validate("--init random").map_err(TrainError::from)?;
        check_vocab(&tokenizer, &config, Path::new("--vocab"))?;
        let model = Bloom::random(&config, hp.seed, &device);
        (Trainer::new(config, model, hp, device)?, tokenizer)
    } else {
        return Err(CliError::Usage(
            "give --model-dir DIR or --init random".into(),
        ));
    };

    trainer.set_precision(args.precision);
    let train_set = encode_all(&tokenizer, &train_examples, max_length)?;
    let eval_set = encode_all(&tokenizer, &eval_examples, max_length)?;
    let pad = tokenizer.pad_id;
    while (trainer.epoch as usize) < trainer.hyperparameters.epochs {
        let result = trainer.run_epoch(&train_set, &eval_set, pad)?;
        let metrics = epoch_metrics(&result, &trainer);
        match session.as_mut() {
            Some(session) => {
                if report(session.as_mut(), &trainer, &tokenizer, &metrics)? == Next::Exit {
                    break;
                }
            }
            None => {
                println!("{}", Value::Object(metrics.clone()));
                if let Some(out) = &args.output_dir {
                    let dir = out.join(format!("epoch_{}", result.epoch));
                    trainer.save_checkpoint(&dir, Some(&tokenizer), metrics)?;
                }
            }
        }
    }
    Ok(())
}

fn epoch_metrics(result: &EpochResult, trainer: &Trainer) -> Map<String, Value> {
    let mut metrics = Map::new();
    metrics.insert("eval_loss".into(), result.eval_loss.into());
    metrics.insert("epoch".into(), result.epoch.into());
    metrics.insert("train_loss".into(), result.train_loss.into());
    metrics.insert("step".into(), result.step.into());
    metrics.insert("lr".into(), trainer.hyperparameters.lr.into());
    if let Some(scaler) = &trainer.loss_scaler {
        // f16: the loss scale now and the steps skipped so far because of overflows.
        metrics.insert("loss_scale".into(), scaler.scale.into());
        metrics.insert("skipped_steps".into(), scaler.skipped_steps.into());
    }
    metrics
}

fn report(
    session: &mut dyn TrialSession,
    trainer: &Trainer,
    tokenizer: &TextTokenizer,
    metrics: &Map<String, Value>,
) -> Result<Next, CliError> {
    let dir = session.new_checkpoint_dir()?;
    trainer.save_checkpoint(&dir, Some(tokenizer), metrics.clone())?;
    Ok(session.report_with_checkpoint(metrics, &dir)?)
}

//! Training: AdamW with HF Trainer's linear schedule, gradient accumulation, global grad-norm
//! clipping, token-weighted evaluation, and checkpoints that resume exactly.

use crate::config::{BloomConfig, ConfigError};
use crate::data::{Batch, Encoded, TextTokenizer, TokenizerError};
use crate::kernels;
use crate::model::{BatchMask, Bloom, param_id, parameter_specs, tensor_values};
use crate::precision::{LossScaler, Precision};
use crate::weights::{WeightsError, load_model, save_model};
use burn::module::{Module, ParamGroup};
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, GradientsAccumulator, GradientsParams,
    LearningRate, ModuleOptimizer, Optimizer,
};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Mixed into the seed of the data-order RNG so it differs from the init RNG.
const DATA_ORDER_SEED_SALT: u64 = 0x0da7_a0de_2024_0001;

/// Batch size used for evaluation, fixed so eval_loss does not depend on per_device_bs.
pub const EVAL_BATCH_SIZE: usize = 8;

/// File names inside a checkpoint directory.
pub mod files {
    /// Weights (f32, HF names).
    pub const MODEL: &str = "model.safetensors";
    /// HF config.
    pub const CONFIG: &str = "config.json";
    /// Tokenizer.
    pub const TOKENIZER: &str = "tokenizer.json";
    /// burn optimizer record (burnpack).
    pub const OPTIMIZER: &str = "optimizer.bpk";
    /// Step, epoch, data-order RNG, hyperparameters.
    pub const STATE: &str = "trainer_state.json";
}

/// Errors while training or checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Model config problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Weights problem.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// Tokenizer problem.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Checkpoint I/O or format problem.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file or directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A hyperparameter is out of range.
    #[error("invalid hyperparameter {name}: {message}")]
    Hyperparameter {
        /// Its name.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error("training diverged: loss is {0} at step {1}")]
    Diverged(f64, u64),
}

/// Training hyperparameters (names as in the rtune config / HF TrainingArguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay (not applied to biases and layer norms, as in HF Trainer).
    pub weight_decay: f64,
    /// Sequences per micro-batch.
    pub per_device_bs: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Fraction of the total steps spent warming up linearly from 0.
    pub warmup_ratio: f64,
    /// Seed for initialisation and data order.
    pub seed: u64,
    /// Global gradient-norm clip (HF default 1.0); 0 disables clipping.
    pub max_grad_norm: f64,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Self {
            lr: 5e-5,
            weight_decay: 0.0,
            per_device_bs: 8,
            grad_accum: 1,
            epochs: 3,
            warmup_ratio: 0.0,
            seed: 42,
            max_grad_norm: 1.0,
        }
    }
}

impl Hyperparameters {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |name, message: String| Err(TrainError::Hyperparameter { name, message });
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(
                "lr",
                format!("must be a finite non-negative number, got {}", self.lr),
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("wd", format!("must be >= 0, got {}", self.weight_decay));
        }
        if self.per_device_bs == 0 {
            return bad("per_device_bs", "must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(
                "warmup_ratio",
                format!("must be in [0, 1], got {}", self.warmup_ratio),
            );
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(
                "max_grad_norm",
                format!("must be >= 0, got {}", self.max_grad_norm),
            );
        }
        Ok(())
    }

    /// Optimizer steps per epoch for `train_examples` examples (a trailing partial
    /// accumulation group still makes a step, as in HF Trainer).
    pub fn steps_per_epoch(&self, train_examples: usize) -> u64 {
        let micro_batches = train_examples.div_ceil(self.per_device_bs);
        micro_batches.div_ceil(self.grad_accum).max(1) as u64
    }

    /// HF's `get_linear_schedule_with_warmup` multiplier at optimizer step `step` (0-based),
    /// with `warmup_steps = ceil(warmup_ratio * total_steps)`.
    pub fn lr_at(&self, step: u64, total_steps: u64) -> f64 {
        let warmup = (self.warmup_ratio * total_steps as f64).ceil() as u64;
        let factor = if step < warmup {
            step as f64 / warmup.max(1) as f64
        } else {
            let remaining = total_steps.saturating_sub(step) as f64;
            (remaining / total_steps.saturating_sub(warmup).max(1) as f64).max(0.0)
        };
        self.lr * factor
    }
}

/// Serializable state of the data-order RNG (ChaCha8: seed, stream, word position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte seed as 64 hex digits.
    pub seed: String,
    /// Stream number.
    pub stream: u64,
    /// Word position, as a decimal string (u128).
    pub word_pos: String,
}

impl RngState {
    fn capture(rng: &ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    fn restore(&self) -> Option<ChaCha8Rng> {
        if self.seed.len() != 64 || !self.seed.is_ascii() {
            return None;
        }
        let mut seed = [0u8; 32];
        for (i, byte) in seed.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).ok()?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().ok()?);
        Some(rng)
    }
}

/// What `trainer_state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Data-order RNG after the last completed epoch.
    pub data_rng: RngState,
    /// Hyperparameters in force when the checkpoint was written (informational: a restored run
    /// uses the ones it is given, e.g. PBT's perturbed ones).
    pub hyperparameters: Hyperparameters,
    /// Metrics of the last epoch.
    #[serde(default)]
    pub last_metrics: serde_json::Map<String, serde_json::Value>,
    /// The compute precision of the run (informational, like `hyperparameters`).
    #[serde(default)]
    pub precision: Precision,
    /// The f16 loss scaler's state, so that a resumed f16 run continues with its scale.
    #[serde(default)]
    pub loss_scaler: Option<LossScaler>,
}

/// Result of one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochResult {
    /// Epoch number (1-based).
    pub epoch: u64,
    /// Mean micro-batch training loss of the epoch.
    pub train_loss: f64,
    /// Token-weighted mean loss on the eval set.
    pub eval_loss: f64,
    /// Optimizer steps done so far.
    pub step: u64,
}

/// Model, optimizer and progress of one training run.
pub struct Trainer {
    /// Architecture.
    pub config: BloomConfig,
    /// The model (on an autodiff device).
    pub model: Bloom,
    /// Hyperparameters in force.
    pub hyperparameters: Hyperparameters,
    /// Optimizer steps done.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Compute precision (see [`crate::precision`]); f32 unless [`Trainer::set_precision`].
    pub precision: Precision,
    /// The dynamic loss scaler of an f16 run.
    pub loss_scaler: Option<LossScaler>,
    optimizer: ModuleOptimizer,
    data_rng: ChaCha8Rng,
    device: Device,
}

/// burn's AdamW with the update of each parameter fused into one pass over its values on the
/// flex CPU backend ([`kernels::adamw_step`]); burn's own step elsewhere. Same state type as
/// burn's AdamW, so optimizer checkpoints have the same contents.
#[derive(Clone)]
struct FusedAdamW {
    inner: AdamW,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl FusedAdamW {
    fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let inner = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self {
            inner,
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let step = kernels::AdamWStep {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time: i32::try_from(time).unwrap_or(i32::MAX),
        };
        let amsgrad = state
            .as_ref()
            .is_some_and(|s| s.momentum.max_moment_2.is_some());
        let moments = state
            .as_ref()
            .map(|s| (&s.momentum.moment_1, &s.momentum.moment_2));
        if !amsgrad
            && let Some((tensor, moment_1, moment_2)) =
                kernels::adamw_step(&tensor, &grad, moments, step)
        {
            let momentum = AdaptiveMomentumState::new(time, moment_1, moment_2);
            return (tensor, Some(AdamWState::new(momentum)));
        }
        self.inner.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
}

fn build_optimizer(config: &BloomConfig, weight_decay: f64) -> ModuleOptimizer {
    // PyTorch AdamW defaults (HF Trainer's too): betas (0.9, 0.999), eps 1e-8.
    let adamw = |weight_decay| FusedAdamW::new(0.9, 0.999, 1e-8, weight_decay);
    let exempt = parameter_specs(config)
        .iter()
        .enumerate()
        .filter(|(_, spec)| spec.exempt_from_weight_decay())
        .map(|(index, _)| param_id(index))
        .collect();
    ModuleOptimizer::from(adamw(weight_decay as f32)).with_group(
        ParamGroup::from_ids(exempt),
        adamw(0.0),
        None,
    )
}

fn checkpoint_error(path: &Path, message: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

impl Trainer {
    /// A fresh run: `model` must live on `device` (an autodiff device for training).
    pub fn new(
        config: BloomConfig,
        model: Bloom,
        hyperparameters: Hyperparameters,
        device: Device,
    ) -> Result<Self, TrainError> {
        hyperparameters.validate()?;
        let optimizer = build_optimizer(&config, hyperparameters.weight_decay);
        let data_rng = ChaCha8Rng::seed_from_u64(hyperparameters.seed ^ DATA_ORDER_SEED_SALT);
        Ok(Self {
            config,
            model,
            hyperparameters,
            step: 0,
            epoch: 0,
            precision: Precision::F32,
            loss_scaler: None,
            optimizer,
            data_rng,
            device,
        })
    }

    /// Trains (and evaluates) in `precision` from now on; the master weights stay f32. A
    /// restored f16 run keeps its loss scale.
    pub fn set_precision(&mut self, precision: Precision) {
        if precision != self.precision || self.loss_scaler.is_none() {
            self.loss_scaler = self
                .loss_scaler
                .take()
                .filter(|_| precision == Precision::F16);
            if self.loss_scaler.is_none() {
                self.loss_scaler = precision.loss_scaler();
            }
        }
        self.precision = precision;
    }

    /// Total optimizer steps of the run for `train_examples` examples.
    pub fn total_steps(&self, train_examples: usize) -> u64 {
        self.hyperparameters.steps_per_epoch(train_examples) * self.hyperparameters.epochs as u64
    }

    /// Scales the accumulated gradients so their global L2 norm is at most `max_norm`
    /// (`torch.nn.utils.clip_grad_norm_`, which HF Trainer applies with 1.0 by default).
    fn clip_global_norm(&self, grads: &mut GradientsParams, max_norm: f64) {
        if max_norm <= 0.0 {
            return;
        }
        let specs = parameter_specs(&self.config);
        let mut total: Option<Tensor<1>> = None;
        for (index, spec) in specs.iter().enumerate() {
            let id = param_id(index);
            let squares = if spec.hf_shape.len() == 1 {
                grads.get::<1>(id).map(|g| g.square().sum())
            } else {
                grads.get::<2>(id).map(|g| g.square().sum())
            };
            if let Some(squares) = squares {
                total = Some(match total {
                    Some(t) => t + squares,
                    None => squares,
                });
            }
        }
        let Some(total) = total else { return };
        let norm = f64::from(tensor_values(total).first().copied().unwrap_or(0.0)).sqrt();
        let scale = max_norm / (norm + 1e-6);
        if scale >= 1.0 {
            return;
        }
        for (index, spec) in specs.iter().enumerate() {
            let id = param_id(index);
            if spec.hf_shape.len() == 1 {
                if let Some(g) = grads.remove::<1>(id) {
                    grads.register(id, g.mul_scalar(scale));
                }
            } else if let Some(g) = grads.remove::<2>(id) {
                grads.register(id, g.mul_scalar(scale));
            }
        }
    }

    fn tensors(&self, batch: &Batch, device: &Device) -> (Tensor<2, Int>, BatchMask) {
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(batch.ids.clone(), [batch.batch, batch.seq]),
            device,
        );
        let mask = BatchMask::new(
            &batch.attention_mask,
            batch.batch,
            batch.seq,
            self.config.n_head,
            device,
        )
        .with_precision(self.precision);
        (ids, mask)
    }

    /// One optimizer step over `micro_batches` (gradient accumulation). Returns the mean
    /// micro-batch loss, or `None` when no micro-batch had a labelled token.
    pub fn train_step(
        &mut self,
        micro_batches: &[Batch],
        total_steps: u64,
    ) -> Result<Option<f64>, TrainError> {
        let accumulation = self.hyperparameters.grad_accum as f64;
        let mut accumulator = GradientsAccumulator::<Bloom>::new();
        let mut losses = Vec::new();
        for batch in micro_batches {
            let (ids, mask) = self.tensors(batch, &self.device);
            let Some(loss) = self.model.loss(ids, &mask, &batch.labels) else {
                continue;
            };
            let value = f64::from(
                tensor_values(loss.clone())
                    .first()
                    .copied()
                    .unwrap_or(f32::NAN),
            );
            if !value.is_finite() {
                return Err(TrainError::Diverged(value, self.step));
            }
            losses.push(value);
            // f16: the loss scaled up before the backward pass (the gradients unscaled below).
            let scale = self.loss_scaler.as_ref().map_or(1.0, |s| s.scale);
            let grads = GradientsParams::from_grads(
                loss.mul_scalar(scale / accumulation).backward(),
                &self.model,
            );
            accumulator.accumulate(&self.model, grads);
        }
        if losses.is_empty() {
            return Ok(None);
        }
        let mut grads = accumulator.grads();
        if let Some(scaler) = self.loss_scaler.as_mut() {
            let finite = scaler.unscale(&mut grads, &self.config);
            if !scaler.update(finite) {
                // Overflow: the step is skipped (the weights and moments stay as they were)
                // but counted, as transformers' Trainer counts it.
                tracing::debug!(
                    scale = scaler.scale,
                    step = self.step,
                    "f16 overflow: step skipped"
                );
                self.step += 1;
                return Ok(Some(losses.iter().sum::<f64>() / losses.len() as f64));
            }
        }
        self.clip_global_norm(&mut grads, self.hyperparameters.max_grad_norm);
        let lr = self.hyperparameters.lr_at(self.step, total_steps);
        let model = self.model.clone();
        self.model = self.optimizer.step(lr, model, grads);
        self.step += 1;
        Ok(Some(losses.iter().sum::<f64>() / losses.len() as f64))
    }

    /// Trains one epoch over `train` (shuffled by the data-order RNG). Returns the mean
    /// micro-batch loss.
    pub fn train_epoch(&mut self, train: &[Encoded], pad_id: u32) -> Result<f64, TrainError> {
        let total_steps = self.total_steps(train.len());
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut self.data_rng);
        let batches: Vec<Batch> = order
            .chunks(self.hyperparameters.per_device_bs)
            .map(|chunk| {
                let examples: Vec<&Encoded> = chunk.iter().map(|&i| &train[i]).collect();
                Batch::collate(&examples, pad_id, None)
            })
            .collect();
        let mut losses = Vec::new();
        for group in batches.chunks(self.hyperparameters.grad_accum) {
            if let Some(loss) = self.train_step(group, total_steps)? {
                losses.push(loss);
            }
        }
        self.epoch += 1;
        Ok(if losses.is_empty() {
            f64::NAN
        } else {
            losses.iter().sum::<f64>() / losses.len() as f64
        })
    }

    /// Token-weighted mean loss over `eval` (no gradients), batches of [`EVAL_BATCH_SIZE`].
    pub fn evaluate(&self, eval: &[Encoded], pad_id: u32) -> f64 {
        let model = self.model.valid();
        let device = self.device.clone().inner();
        let mut sum = 0.0;
        let mut count = 0usize;
        for chunk in eval.chunks(EVAL_BATCH_SIZE) {
            let examples: Vec<&Encoded> = chunk.iter().collect();
            let batch = Batch::collate(&examples, pad_id, None);
            let tokens = batch.labelled_tokens();
            let (ids, mask) = self.tensors(&batch, &device);
            if let Some(loss) = model.loss(ids, &mask, &batch.labels) {
                sum += f64::from(tensor_values(loss).first().copied().unwrap_or(f32::NAN))
                    * tokens as f64;
                count += tokens;
            }
        }
        if count == 0 {
            f64::NAN
        } else {
            sum / count as f64
        }
    }

    /// Trains one epoch and evaluates.
    pub fn run_epoch(
        &mut self,
        train: &[Encoded],
        eval: &[Encoded],
        pad_id: u32,
    ) -> Result<EpochResult, TrainError> {
        let train_loss = self.train_epoch(train, pad_id)?;
        let eval_loss = self.evaluate(eval, pad_id);
        Ok(EpochResult {
            epoch: self.epoch,
            train_loss,
            eval_loss,
            step: self.step,
        })
    }

    /// Writes weights, config, tokenizer, optimizer state and trainer state into `dir` (which
    /// is then also a model dir usable with `--model-dir`).
    pub fn save_checkpoint(
        &self,
        dir: &Path,
        tokenizer: Option<&TextTokenizer>,
        last_metrics: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| checkpoint_error(dir, e))?;
        save_model(&self.model, &self.config, &dir.join(files::MODEL))?;
        let config_path = dir.join(files::CONFIG);
        let config_text = serde_json::to_string_pretty(&self.config.to_hf_json())
            .map_err(|e| checkpoint_error(&config_path, e))?;
        std::fs::write(&config_path, config_text).map_err(|e| checkpoint_error(&config_path, e))?;
        if let Some(tokenizer) = tokenizer {
            tokenizer.save(&dir.join(files::TOKENIZER))?;
        }
        let optimizer_path = dir.join(files::OPTIMIZER);
        self.optimizer
            .save(&optimizer_path)
            .map_err(|e| checkpoint_error(&optimizer_path, e))?;
        let state = TrainerState {
            step: self.step,
            epoch: self.epoch,
            data_rng: RngState::capture(&self.data_rng),
            hyperparameters: self.hyperparameters.clone(),
            last_metrics,
            precision: self.precision,
            loss_scaler: self.loss_scaler.clone(),
        };
        let state_path = dir.join(files::STATE);
        let text =
            serde_json::to_string_pretty(&state).map_err(|e| checkpoint_error(&state_path, e))?;
        std::fs::write(&state_path, text).map_err(|e| checkpoint_error(&state_path, e))?;
        Ok(())
    }

    /// Restores a run from a checkpoint written by [`save_checkpoint`](Self::save_checkpoint),
    /// continuing with `hyperparameters` (which may differ, e.g. after a PBT exploit; the
    /// optimizer moments, step, epoch and data order continue from the checkpoint).
    pub fn restore(
        dir: &Path,
        hyperparameters: Hyperparameters,
        device: Device,
    ) -> Result<Self, TrainError> {
        hyperparameters.validate()?;
        let config = BloomConfig::from_file(&dir.join(files::CONFIG))?;
        let model = load_model(&dir.join(files::MODEL), &config, &device)?;
        let state_path = dir.join(files::STATE);
        let text =
            std::fs::read_to_string(&state_path).map_err(|e| checkpoint_error(&state_path, e))?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| checkpoint_error(&state_path, e))?;
        let data_rng = state
            .data_rng
            .restore()
            .ok_or_else(|| checkpoint_error(&state_path, "data_rng is malformed"))?;
        let optimizer_path = dir.join(files::OPTIMIZER);
        let optimizer = build_optimizer(&config, hyperparameters.weight_decay)
            .load(&optimizer_path)
            .map_err(|e| checkpoint_error(&optimizer_path, e))?;
        Ok(Self {
            config,
            model,
            hyperparameters,
            step: state.step,
            epoch: state.epoch,
            precision: state.precision,
            loss_scaler: state.loss_scaler,
            optimizer,
            data_rng,
            device,
        })
    }
}

//! Mixed precision: the compute dtype of the forward and backward passes, and dynamic loss
//! scaling for float16.
//!
//! The parameters (the master weights) and the optimizer state stay in f32 whatever the
//! precision. With `bf16` on the CPU backend, the fused kernels multiply every matrix product's
//! inputs rounded to bf16 with f32 accumulation and keep the activations in f32
//! ([`crate::model::BatchMask::with_precision`]). Otherwise (`f16`, and `bf16` on CUDA) every
//! weight is cast to that dtype where the forward pass uses it (linear layers, layer norms,
//! embeddings, the tied lm_head), so activations and their gradients are bf16/f16 and the
//! matrix products run in that dtype; the logits are cast back to f32 for the cross entropy.
//! burn's autodiff casts each weight's gradient back to f32 (the backward of a cast), so AdamW
//! updates f32 master weights, as PyTorch's autocast with f32 parameters (and transformers'
//! Trainer with `--fp16` / `--bf16`) does.
//!
//! float16's range is small (largest 65,504, smallest normal 6.1e-5), so with `f16` the loss
//! is multiplied by a dynamic scale before the backward pass and the gradients divided by it
//! afterwards ([`LossScaler`], the policy of PyTorch's `GradScaler`): a step whose gradients
//! overflow is skipped and halves the scale; 2,000 steps in a row without overflow double it.

use crate::config::BloomConfig;
use crate::model::{param_id, parameter_specs, tensor_values};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

/// The dtype of the forward/backward computation (the master weights are f32 in every case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bfloat16 compute over f32 master weights (f32's range; no loss scaling needed).
    Bf16,
    /// float16 compute over f32 master weights, with dynamic loss scaling.
    F16,
}

impl Precision {
    /// The compute dtype.
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::F16 => FloatDType::F16,
        }
    }

    /// The name used in flags, trial configs and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Parses a name as given in a trial config (`f32`, `bf16`, `f16`; `fp32`, `fp16` too).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "f32" | "fp32" => Some(Precision::F32),
            "bf16" => Some(Precision::Bf16),
            "f16" | "fp16" => Some(Precision::F16),
            _ => None,
        }
    }

    /// A loss scaler for this precision (`Some` only for f16).
    pub fn loss_scaler(self) -> Option<LossScaler> {
        (self == Precision::F16).then(LossScaler::default)
    }
}

/// Dynamic loss scaling (PyTorch `GradScaler`'s defaults: initial scale 2^16, growth factor 2
/// after 2,000 overflow-free steps, backoff factor 0.5 on an overflow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The current scale.
    pub scale: f64,
    /// Overflow-free steps since the scale last changed.
    pub good_steps: u32,
    /// Steps skipped because their gradients overflowed (for reports).
    pub skipped_steps: u64,
}

/// Steps without overflow before the scale doubles.
pub const GROWTH_INTERVAL: u32 = 2000;

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
            skipped_steps: 0,
        }
    }
}

impl LossScaler {
    /// Records the outcome of a step: `finite` false halves the scale (the step is skipped),
    /// true counts towards doubling it. Returns `finite`.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(f64::MIN_POSITIVE);
            self.good_steps = 0;
            self.skipped_steps += 1;
        }
        finite
    }

    /// Divides the (scaled) gradients by the scale. Returns false, leaving them as they are,
    /// when any of them is infinite or NaN.
    pub fn unscale(&self, grads: &mut GradientsParams, config: &BloomConfig) -> bool {
        let specs = parameter_specs(config);
        let mut total: Option<Tensor<1>> = None;
        for (index, spec) in specs.iter().enumerate() {
            let id = param_id(index);
            let sum = if spec.hf_shape.len() == 1 {
                grads.get::<1>(id).map(|g| g.abs().sum())
            } else {
                grads.get::<2>(id).map(|g| g.abs().sum())
            };
            if let Some(sum) = sum {
                total = Some(match total {
                    Some(t) => t + sum,
                    None => sum,
                });
            }
        }
        let finite = total.is_none_or(|t| tensor_values(t).first().is_some_and(|v| v.is_finite()));
        if !finite {
            return false;
        }
        let factor = 1.0 / self.scale;
        for (index, spec) in specs.iter().enumerate() {
            let id = param_id(index);
            if spec.hf_shape.len() == 1 {
                if let Some(g) = grads.remove::<1>(id) {
                    grads.register(id, g.mul_scalar(factor));
                }
            } else if let Some(g) = grads.remove::<2>(id) {
                grads.register(id, g.mul_scalar(factor));
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_halves_on_overflow_and_doubles_after_the_growth_interval() {
        let mut scaler = LossScaler::default();
        assert!(!scaler.update(false));
        assert_eq!((scaler.scale, scaler.skipped_steps), (32768.0, 1));
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(scaler.update(true));
        }
        assert_eq!(scaler.scale, 32768.0);
        scaler.update(true);
        assert_eq!((scaler.scale, scaler.good_steps), (65536.0, 0));
    }

    #[test]
    fn names_parse() {
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!(Precision::parse(p.name()), Some(p));
        }
        assert_eq!(Precision::parse("fp16"), Some(Precision::F16));
        assert_eq!(Precision::parse("f8"), None);
        assert_eq!(Precision::F16.loss_scaler(), Some(LossScaler::default()));
        assert_eq!(Precision::Bf16.loss_scaler(), None);
    }
}

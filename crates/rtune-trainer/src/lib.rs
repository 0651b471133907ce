//! Built-in BLOOM causal-LM fine-tuning trainer for rtune.
//!
//! * [`config`] / [`model`] / [`weights`]: BLOOM exactly as Hugging Face's `BloomForCausalLM`,
//!   loaded from and saved to HF safetensors.
//! * [`data`]: SQuAD loading, a synthetic SQuAD generator, causal-LM preprocessing, tokenizers.
//! * [`train`]: AdamW with HF Trainer's linear schedule, gradient accumulation, evaluation and
//!   exact-resume checkpoints.
//! * [`precision`]: f32 / bf16 / f16 compute over f32 master weights, f16 loss scaling.
//! * [`trial`]: the only module that talks to rtune.

pub mod bench;
pub mod cli;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod isa;
pub mod kernels;
pub mod matmul;
pub mod model;
pub mod precision;
pub mod squad;
pub mod train;
pub mod trial;
pub mod weights;

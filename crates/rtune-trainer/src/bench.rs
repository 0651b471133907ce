//! Training-throughput benchmark on random token batches.

use crate::config::BloomConfig;
use crate::data::Batch;
use crate::model::Bloom;
use crate::train::{Hyperparameters, TrainError, Trainer};
use burn::prelude::Device;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// Benchmark shape.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Blocks.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Heads.
    pub heads: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// Sequence length.
    pub seq: usize,
    /// Batch size.
    pub batch: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup_steps: usize,
    /// Compute precision.
    pub precision: crate::precision::Precision,
    /// Record the loss of every N-th step (0: none), for comparing loss curves.
    pub loss_every: usize,
}

/// Figures of one benchmark run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    /// Timed optimizer steps per second.
    pub steps_per_s: f64,
    /// Trained tokens per second (`batch * seq` per step; every position is labelled).
    pub tokens_per_s: f64,
    /// Peak resident set size of the process in MiB (VmHWM), if readable.
    pub peak_rss_mib: Option<f64>,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Parameter count.
    pub parameters: usize,
    /// `(step, loss)` of every `loss_every`-th step, warmup steps included.
    pub losses: Vec<(usize, f64)>,
}

/// Peak RSS of this process in MiB from /proc/self/status (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Runs AdamW (lr 1e-3, wd 0.01, no clipping, constant lr) on random batches, every token
/// labelled, and times `steps` optimizer steps after `warmup_steps`.
pub fn run(bench: &BenchConfig, device: Device) -> Result<BenchResult, TrainError> {
    let config = BloomConfig::new(bench.layers, bench.hidden, bench.heads, bench.vocab);
    config.validate("bench")?;
    let model = Bloom::random(&config, 0, &device);
    let parameters = crate::model::parameter_specs(&config)
        .iter()
        .map(|s| s.hf_shape.iter().product::<usize>())
        .sum();
    let hp = Hyperparameters {
        lr: 1e-3,
        weight_decay: 0.01,
        per_device_bs: bench.batch,
        grad_accum: 1,
        epochs: 1,
        warmup_ratio: 0.0,
        seed: 0,
        max_grad_norm: 0.0,
    };
    let mut trainer = Trainer::new(config, model, hp, device)?;
    trainer.set_precision(bench.precision);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let total = bench.warmup_steps + bench.steps;
    let mut first_loss = f64::NAN;
    let mut last_loss = f64::NAN;
    let mut losses = Vec::new();
    let mut start = Instant::now();
    for step in 0..total {
        if step == bench.warmup_steps {
            start = Instant::now();
        }
        let ids: Vec<i64> = (0..bench.batch * bench.seq)
            .map(|_| rng.random_range(0..bench.vocab as i64))
            .collect();
        let batch = Batch {
            batch: bench.batch,
            seq: bench.seq,
            labels: ids.clone(),
            ids,
            attention_mask: vec![1; bench.batch * bench.seq],
        };
        // A huge total keeps the linear schedule at (almost) the peak lr.
        let loss = trainer
            .train_step(std::slice::from_ref(&batch), u64::MAX / 2)?
            .unwrap_or(f64::NAN);
        if step == 0 {
            first_loss = loss;
        }
        if bench.loss_every > 0 && step % bench.loss_every == 0 {
            losses.push((step, loss));
        }
        last_loss = loss;
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    Ok(BenchResult {
        steps_per_s: bench.steps as f64 / seconds,
        tokens_per_s: (bench.steps * bench.batch * bench.seq) as f64 / seconds,
        peak_rss_mib: peak_rss_mib(),
        first_loss,
        last_loss,
        parameters,
        losses,
    })
}

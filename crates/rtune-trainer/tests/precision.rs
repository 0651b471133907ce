//! Mixed precision on the CPU (burn's flex backend): bf16 and f16 forward passes against the f32
//! one and the numpy reference, training in bf16 and f16 with f32 master weights, and the f16
//! loss scaler skipping a step whose gradients overflow.

use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use rtune_trainer::config::BloomConfig;
use rtune_trainer::data::Batch;
use rtune_trainer::model::{BatchMask, Bloom, tensor_values};
use rtune_trainer::precision::{LossScaler, Precision};
use rtune_trainer::train::{Hyperparameters, Trainer};
use rtune_trainer::weights::load_model;
use serde_json::Value;
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bloom-tiny")
}

/// bloom-tiny's unpadded case: (config, model, ids [2, 16], expected loss from numpy).
fn tiny() -> (BloomConfig, Bloom, Vec<i64>, f64) {
    let device = Device::flex();
    let config = BloomConfig::from_file(&fixture_dir().join("config.json")).expect("config");
    let model =
        load_model(&fixture_dir().join("model.safetensors"), &config, &device).expect("weights");
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected");
    let expected: Value = serde_json::from_str(&text).expect("json");
    let ids: Vec<i64> = expected["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .flat_map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_i64().expect("id"))
        })
        .collect();
    (config, model, ids, expected["loss"].as_f64().expect("loss"))
}

fn forward(precision: Precision) -> (Vec<f32>, f64, DType, f64) {
    let (config, model, ids, expected_loss) = tiny();
    let device = Device::flex();
    let labels = ids.clone();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 16]), &device);
    let mask = BatchMask::new(&[1; 32], 2, 16, config.n_head, &device).with_precision(precision);
    let logits = model.logits(ids.clone(), &mask);
    let dtype = logits.dtype();
    let loss = model.loss(ids, &mask, &labels).expect("labelled");
    let loss = f64::from(tensor_values(loss)[0]);
    (tensor_values(logits), loss, dtype, expected_loss)
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

#[test]
fn bf16_and_f16_forward_passes_stay_close_to_f32_and_numpy() {
    let (f32_logits, f32_loss, f32_dtype, expected) = forward(Precision::F32);
    assert_eq!(f32_dtype, DType::F32);
    assert!(
        (f32_loss - expected).abs() < 1e-4,
        "{f32_loss} vs {expected}"
    );
    // bf16 keeps 8 significant bits (relative error 2^-9 per rounding), f16 11 bits; through
    // two blocks the logits (magnitude up to ~10 here) move by up to a few hundredths.
    for (precision, logit_tolerance, loss_tolerance) in
        [(Precision::Bf16, 0.4, 0.05), (Precision::F16, 0.05, 0.01)]
    {
        let (logits, loss, dtype, _) = forward(precision);
        assert_eq!(dtype, DType::F32, "{precision:?}: logits come back in f32");
        let diff = max_diff(&logits, &f32_logits);
        eprintln!(
            "{precision:?}: max |logit - f32 logit| {diff:.3e}, loss {loss:.5} vs numpy {expected:.5}"
        );
        assert!(diff > 0.0, "{precision:?}: computed in f32 after all?");
        assert!(
            diff < logit_tolerance,
            "{precision:?}: logits off by {diff}"
        );
        assert!(
            (loss - expected).abs() < loss_tolerance,
            "{precision:?}: loss {loss} vs {expected}"
        );
    }
}

fn batch(seed: u64, vocab: usize) -> Batch {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // Four sequences of a repeated 8-token pattern: learnable, so the loss must fall.
    let pattern: Vec<i64> = (0..8).map(|_| rng.random_range(4..vocab as i64)).collect();
    let ids: Vec<i64> = (0..4 * 32).map(|i| pattern[i % 8]).collect();
    Batch {
        batch: 4,
        seq: 32,
        labels: ids.clone(),
        ids,
        attention_mask: vec![1; 4 * 32],
    }
}

fn trainer(precision: Precision) -> Trainer {
    let device = Device::flex().autodiff();
    let config = BloomConfig::new(2, 32, 4, 64);
    let model = Bloom::random(&config, 3, &device);
    let hp = Hyperparameters {
        lr: 1e-2,
        weight_decay: 0.0,
        per_device_bs: 4,
        grad_accum: 1,
        epochs: 1,
        warmup_ratio: 0.0,
        seed: 3,
        max_grad_norm: 1.0,
    };
    let mut trainer = Trainer::new(config, model, hp, device).expect("trainer");
    trainer.set_precision(precision);
    trainer
}

#[test]
fn training_in_bf16_and_f16_lowers_the_loss_with_f32_master_weights() {
    for precision in [Precision::Bf16, Precision::F16] {
        let mut trainer = trainer(precision);
        let data = batch(11, 64);
        let mut losses = Vec::new();
        for _ in 0..12 {
            let loss = trainer
                .train_step(std::slice::from_ref(&data), 1000)
                .expect("step")
                .expect("labelled");
            losses.push(loss);
        }
        eprintln!("{precision:?}: losses {losses:?}");
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!(
            losses[11] < 0.7 * losses[0],
            "{precision:?}: loss did not fall: {losses:?}"
        );
        assert_eq!(
            trainer.model.word_embeddings.val().dtype(),
            DType::F32,
            "master weights stay f32"
        );
        match precision {
            Precision::F16 => {
                let scaler = trainer.loss_scaler.as_ref().expect("f16 has a loss scaler");
                assert_eq!(scaler.skipped_steps, 0, "{scaler:?}");
                assert_eq!(scaler.good_steps, 12);
            }
            _ => assert!(trainer.loss_scaler.is_none()),
        }
    }
}

#[test]
fn an_f16_step_whose_gradients_overflow_is_skipped_and_halves_the_scale() {
    let mut trainer = trainer(Precision::F16);
    // A scale so large that the scaled gradients overflow (f16's largest value is 65,504).
    trainer.loss_scaler = Some(LossScaler {
        scale: 1e30,
        ..LossScaler::default()
    });
    let before = tensor_values(trainer.model.word_embeddings.val());
    let data = batch(5, 64);
    let loss = trainer
        .train_step(std::slice::from_ref(&data), 1000)
        .expect("step")
        .expect("labelled");
    assert!(loss.is_finite(), "the loss itself is unscaled: {loss}");
    let scaler = trainer.loss_scaler.clone().expect("scaler");
    assert_eq!((scaler.scale, scaler.skipped_steps), (5e29, 1));
    assert_eq!(trainer.step, 1, "a skipped step still counts");
    let after = tensor_values(trainer.model.word_embeddings.val());
    assert_eq!(before, after, "weights untouched by the skipped step");
    // With a sane scale the next step updates the weights.
    trainer.loss_scaler = Some(LossScaler::default());
    trainer
        .train_step(std::slice::from_ref(&data), 1000)
        .expect("step");
    assert_ne!(tensor_values(trainer.model.word_embeddings.val()), before);
    assert_eq!(
        trainer.loss_scaler.as_ref().map(|s| s.skipped_steps),
        Some(0)
    );
}

#[test]
fn the_loss_scale_survives_a_checkpoint() {
    let mut trainer = trainer(Precision::F16);
    let data = batch(5, 64);
    trainer
        .train_step(std::slice::from_ref(&data), 1000)
        .expect("step");
    trainer.loss_scaler = Some(LossScaler {
        scale: 1024.0,
        good_steps: 7,
        skipped_steps: 2,
    });
    let dir = tempfile::tempdir().expect("tempdir");
    trainer
        .save_checkpoint(dir.path(), None, serde_json::Map::new())
        .expect("save");
    let hp = trainer.hyperparameters.clone();
    let mut restored =
        Trainer::restore(dir.path(), hp, Device::flex().autodiff()).expect("restore");
    restored.set_precision(Precision::F16);
    assert_eq!(restored.precision, Precision::F16);
    assert_eq!(restored.loss_scaler, trainer.loss_scaler);
    // Switching to bf16 drops the scaler; f32 computes in f32.
    restored.set_precision(Precision::Bf16);
    assert_eq!(restored.loss_scaler, None);
    assert_eq!(Precision::F32.dtype(), FloatDType::F32);
}

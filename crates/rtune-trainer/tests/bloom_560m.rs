//! bloom-560m at full size: a seeded random model in the layout of a bigscience/bloom-560m
//! download (config.json + F16 model.safetensors) is written, loaded back through the path
//! `rtune-train-lm train --model-dir` takes (`BloomConfig::from_file`, `weights::load_model`),
//! and its forward pass on two short sequences (one left-padded) is compared with
//!
//! * the float64 numpy reference `tests/fixtures/bloom_forward.py`, and
//! * transformers' `BloomForCausalLM.from_pretrained` of the same directory (float32), what users
//!   run, when torch and transformers are installed (in CI they are).
//!
//! Compared at every non-padded position: the first and last 16 logits, the sum and the
//! logsumexp of the whole 250,880-entry row, and the causal-LM loss; tolerances [`TOLERANCE`]
//! (logits, loss: 1e-4) and [`ROW_TOLERANCE`] (row sums: 2e-3).
//!
//! The Python side runs with `RTUNE_PYTHON` (else the CI venv `~/.cache/rtune-ci/venv`). Without
//! a Python that has numpy and safetensors the test is skipped with a message, unless
//! `RTUNE_REQUIRE_PYTHON=1` (CI), where that is a failure, as is a missing torch/transformers.
//!
//! Cost: about 1.1 GB on disk (a temporary directory), at most about 4 GiB of memory in either
//! process (they do not overlap; measured peak 3.9 GiB), 73 s of CPU time (user + system, both
//! processes; 6.8 minutes of wall time on the 2-core development machine while four other
//! builds ran, load average 14).

use burn::prelude::*;
use rtune_trainer::config::BloomConfig;
use rtune_trainer::model::{BatchMask, tensor_values};
use rtune_trainer::train::files;
use rtune_trainer::weights::{load_model, write_random_hf_model_dir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Largest accepted absolute difference of a logit or of the loss: rtune computes in f32, the
/// reference in float64 (or float32), through 24 blocks; seen: logits 2.4e-6, loss 1.1e-7. The
/// bloom-tiny tests' tolerance.
const TOLERANCE: f64 = 1e-4;

/// Largest accepted absolute difference of a row's sum or logsumexp over all 250,880 logits
/// (each logit's f32 rounding adds up): seen 6.8e-4.
const ROW_TOLERANCE: f64 = 2e-3;

/// The seed of the random weights and token ids.
const SEED: u64 = 560;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bloom_forward.py")
}

fn python() -> PathBuf {
    match std::env::var_os("RTUNE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("RTUNE_CI_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/rtune-ci"))
                })
                .unwrap_or_default();
            cache.join("venv/bin/python")
        }
    }
}

fn can_import(python: &Path, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn required() -> bool {
    std::env::var("RTUNE_REQUIRE_PYTHON").is_ok_and(|v| v == "1")
}

fn assert_close(what: &str, actual: f64, expected: f64, tolerance: f64, worst: &mut f64) {
    let diff = (actual - expected).abs();
    *worst = worst.max(diff);
    assert!(
        diff <= tolerance,
        "{what}: got {actual}, expected {expected} (|diff| {diff:.3e} > {tolerance:.0e})"
    );
}

/// Compares one side's outputs (`reference`) with rtune's logits `[batch, seq, vocab]` and loss.
fn compare(side: &str, reference: &Value, logits: &[f32], dims: [usize; 3], loss: f64) {
    let slice = 16;
    let vocab = dims[2];
    let positions = reference["positions"].as_array().expect("positions");
    assert!(!positions.is_empty(), "{side}: no positions");
    let mut worst = 0f64;
    let mut worst_summary = 0f64;
    for position in positions {
        let b = position["b"].as_u64().expect("b") as usize;
        let t = position["t"].as_u64().expect("t") as usize;
        let row: Vec<f64> = logits[(b * dims[1] + t) * vocab..(b * dims[1] + t + 1) * vocab]
            .iter()
            .map(|&v| v as f64)
            .collect();
        for (part, start) in [("head", 0), ("tail", vocab - slice)] {
            let expected = position[part].as_array().expect("slice");
            for (k, value) in expected.iter().enumerate() {
                let what = format!("{side} logits[{b},{t},{}]", start + k);
                assert_close(
                    &what,
                    row[start + k],
                    value.as_f64().expect("f64"),
                    TOLERANCE,
                    &mut worst,
                );
            }
        }
        let sum: f64 = row.iter().sum();
        let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = top + row.iter().map(|v| (v - top).exp()).sum::<f64>().ln();
        let what = format!("{side} sum(logits[{b},{t},:])");
        assert_close(
            &what,
            sum,
            position["sum"].as_f64().expect("sum"),
            ROW_TOLERANCE,
            &mut worst_summary,
        );
        let what = format!("{side} logsumexp(logits[{b},{t},:])");
        let expected = position["logsumexp"].as_f64().expect("lse");
        assert_close(&what, lse, expected, ROW_TOLERANCE, &mut worst_summary);
    }
    let expected_loss = reference["loss"].as_f64().expect("loss");
    let loss_diff = (loss - expected_loss).abs();
    eprintln!(
        "against {side}: {} positions, max |diff| logits {worst:.2e}, row sums/logsumexp \
         {worst_summary:.2e}, loss {loss:.6} vs {expected_loss:.6} (|diff| {loss_diff:.2e})",
        positions.len()
    );
    assert!(
        loss_diff <= TOLERANCE,
        "{side}: loss {loss} vs {expected_loss} (|diff| {loss_diff:.3e})"
    );
}

#[test]
fn bloom_560m_written_like_a_download_loads_and_matches_numpy_and_transformers() {
    let python = python();
    if !can_import(&python, "numpy, safetensors") {
        let message = format!(
            "no Python with numpy and safetensors at {} (set RTUNE_PYTHON; .ci/run makes one)",
            python.display()
        );
        assert!(!required(), "{message} but RTUNE_REQUIRE_PYTHON=1");
        eprintln!("SKIPPED: {message}");
        return;
    }
    let with_transformers = can_import(&python, "torch, transformers");
    assert!(
        with_transformers || !required(),
        "RTUNE_REQUIRE_PYTHON=1 but {} cannot import torch and transformers",
        python.display()
    );

    // 1. A model directory as a download has it (the weights, 1.1 GB, written and freed).
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("bloom-560m");
    let config = BloomConfig::bloom_560m();
    write_random_hf_model_dir(&model_dir, &config, SEED).expect("write model directory");
    let size = std::fs::metadata(model_dir.join(files::MODEL))
        .expect("model.safetensors")
        .len();
    // 559,214,592 parameters in F16 plus the header.
    assert!(
        (1_118_000_000..1_120_000_000).contains(&size),
        "size {size}"
    );

    // 2. Two sequences of 10 seeded token ids; row 1 has two padding positions on the left.
    let (batch, seq, pad) = (2usize, 10usize, 2usize);
    let ids: Vec<i64> = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
        (0..batch * seq)
            .map(|_| rng.random_range(0..config.vocab_size as i64))
            .collect()
    };
    let mut mask = vec![1u8; batch * seq];
    mask[seq..seq + pad].fill(0);
    let rows =
        |values: &[i64]| -> Vec<Vec<i64>> { values.chunks(seq).map(<[i64]>::to_vec).collect() };
    let mask_i64: Vec<i64> = mask.iter().map(|&m| m as i64).collect();
    let case = serde_json::json!({ "ids": rows(&ids), "attention_mask": rows(&mask_i64) });
    let case_path = dir.path().join("case.json");
    std::fs::write(&case_path, case.to_string()).expect("write case");

    // 3. The references (before rtune loads the model, so the two processes' peaks do not add).
    let out_path = dir.path().join("reference.json");
    let mut command = Command::new(&python);
    command
        .arg(script())
        .arg(&model_dir)
        .arg(&case_path)
        .arg(&out_path);
    if with_transformers {
        command.arg("--transformers");
    }
    let output = command.output().expect("run python");
    assert!(
        output.status.success(),
        "{} failed: {}",
        script().display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(&out_path).expect("reference written"))
            .expect("reference is JSON");

    // 4. rtune loads the directory as `train --model-dir` does and runs the forward pass.
    let device = Device::flex();
    let loaded = BloomConfig::from_file(&model_dir.join(files::CONFIG)).expect("config.json");
    assert_eq!(
        (
            loaded.n_layer,
            loaded.hidden_size,
            loaded.n_head,
            loaded.vocab_size
        ),
        (24, 1024, 16, 250_880)
    );
    assert_eq!(loaded, config);
    let model = load_model(&model_dir.join(files::MODEL), &loaded, &device).expect("load");
    drop(dir); // the weights are in memory now; free the disk
    let ids_tensor =
        Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [batch, seq]), &device);
    let batch_mask = BatchMask::new(&mask, batch, seq, loaded.n_head, &device);
    let logits = model.logits(ids_tensor.clone(), &batch_mask);
    let dims = logits.dims();
    assert_eq!(dims, [batch, seq, 250_880]);
    let logits = tensor_values(logits);
    // Labels: not on padding, nor on the first real token after it (no real context).
    let labels: Vec<i64> = (0..batch * seq)
        .map(|i| {
            let padded = mask[i] == 0 || (i % seq > 0 && mask[i - 1] == 0);
            if padded { -100 } else { ids[i] }
        })
        .collect();
    let loss = model
        .loss(ids_tensor, &batch_mask, &labels)
        .expect("labelled positions");
    let loss = tensor_values(loss)[0] as f64;

    compare("numpy float64", &reference["numpy"], &logits, dims, loss);
    if with_transformers {
        compare(
            "transformers float32",
            &reference["transformers"],
            &logits,
            dims,
            loss,
        );
    } else {
        eprintln!(
            "transformers comparison SKIPPED: no torch/transformers in {}",
            python.display()
        );
    }
}

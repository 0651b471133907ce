//! The forward pass and loss against an independent numpy float64 reference of HF BLOOM.

use burn::prelude::*;
use rtune_trainer::config::{BloomConfig, alibi_slopes};
use rtune_trainer::model::{BatchMask, Bloom, tensor_values};
use rtune_trainer::weights::load_model;
use serde_json::Value;
use std::path::PathBuf;

const TOLERANCE: f64 = 1e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bloom-tiny")
}

fn read_json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_dir().join(name)).expect("fixture readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn matrix_i64(value: &Value) -> Vec<Vec<i64>> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_i64().expect("integer"))
                .collect()
        })
        .collect()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect()
}

fn load() -> (BloomConfig, Bloom, Device) {
    let device = Device::flex();
    let config = BloomConfig::from_file(&fixture_dir().join("config.json")).expect("config");
    let model =
        load_model(&fixture_dir().join("model.safetensors"), &config, &device).expect("weights");
    (config, model, device)
}

fn assert_close(what: &str, actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let worst = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0, f64::max);
    eprintln!("{what}: max |diff| {worst:.2e}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= TOLERANCE,
            "{what}[{i}]: got {a}, expected {e} (|diff| {})",
            (a - e).abs()
        );
    }
}

struct Case {
    ids: Vec<Vec<i64>>,
    mask: Vec<u8>,
    labels: Vec<i64>,
}

fn run_case(
    case: &Case,
    model: &Bloom,
    config: &BloomConfig,
    device: &Device,
) -> (Vec<f32>, f64, [usize; 3]) {
    let batch = case.ids.len();
    let seq = case.ids[0].len();
    let flat: Vec<i64> = case.ids.iter().flatten().copied().collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [batch, seq]), device);
    let mask = BatchMask::new(&case.mask, batch, seq, config.n_head, device);
    let logits = model.logits(ids.clone(), &mask);
    let dims = logits.dims();
    let loss = model
        .loss(ids, &mask, &case.labels)
        .expect("labelled positions");
    let loss = tensor_values(loss)[0] as f64;
    (tensor_values(logits), loss, dims)
}

fn slice(logits: &[f32], dims: [usize; 3], b: usize, t: usize, n: usize) -> Vec<f64> {
    let start = (b * dims[1] + t) * dims[2];
    logits[start..start + n].iter().map(|&v| v as f64).collect()
}

#[test]
fn alibi_slopes_match_reference_for_six_heads() {
    let expected = read_json("expected.json");
    assert_close("slopes", &alibi_slopes(6), &floats(&expected["slopes"]));
}

#[test]
fn logits_and_loss_match_reference_unpadded() {
    let (config, model, device) = load();
    let expected = read_json("expected.json");
    let ids = matrix_i64(&expected["ids"]);
    let (batch, seq) = (ids.len(), ids[0].len());
    let labels: Vec<i64> = ids.iter().flatten().copied().collect();
    let case = Case {
        ids,
        mask: vec![1; batch * seq],
        labels,
    };
    let (logits, loss, dims) = run_case(&case, &model, &config, &device);
    assert_eq!(dims, [batch, seq, config.vocab_size]);
    assert_close(
        "logits[0,0,:8]",
        &slice(&logits, dims, 0, 0, 8),
        &floats(&expected["logits_0_0_8"]),
    );
    assert_close(
        "logits[1,15,:8]",
        &slice(&logits, dims, 1, 15, 8),
        &floats(&expected["logits_1_15_8"]),
    );
    let expected_loss = expected["loss"].as_f64().expect("loss");
    eprintln!(
        "loss: {loss} vs {expected_loss}, |diff| {:.2e}",
        (loss - expected_loss).abs()
    );
    assert!(
        (loss - expected_loss).abs() <= TOLERANCE,
        "loss {loss} vs {expected_loss}"
    );
}

#[test]
fn logits_and_loss_match_reference_with_left_padding_and_ignored_labels() {
    let (config, model, device) = load();
    let expected = read_json("expected_padded.json");
    let ids = matrix_i64(&expected["ids"]);
    let mask: Vec<u8> = matrix_i64(&expected["attention_mask"])
        .into_iter()
        .flatten()
        .map(|v| v as u8)
        .collect();
    let labels: Vec<i64> = matrix_i64(&expected["labels"])
        .into_iter()
        .flatten()
        .collect();
    let case = Case { ids, mask, labels };
    let (logits, loss, dims) = run_case(&case, &model, &config, &device);
    assert_close(
        "logits[0,3,:8]",
        &slice(&logits, dims, 0, 3, 8),
        &floats(&expected["logits_0_3_8"]),
    );
    assert_close(
        "logits[1,3,:8]",
        &slice(&logits, dims, 1, 3, 8),
        &floats(&expected["logits_1_3_8"]),
    );
    assert_close(
        "logits[1,15,:8]",
        &slice(&logits, dims, 1, 15, 8),
        &floats(&expected["logits_1_15_8"]),
    );
    let expected_loss = expected["loss"].as_f64().expect("loss");
    eprintln!(
        "loss: {loss} vs {expected_loss}, |diff| {:.2e}",
        (loss - expected_loss).abs()
    );
    assert!(
        (loss - expected_loss).abs() <= TOLERANCE,
        "loss {loss} vs {expected_loss}"
    );
}

#[test]
fn saved_weights_reload_identically() {
    let (config, model, device) = load();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.safetensors");
    rtune_trainer::weights::save_model(&model, &config, &path).expect("save");
    let reloaded = load_model(&path, &config, &device).expect("reload");
    let before = model.hf_values(&config);
    let after = reloaded.hf_values(&config);
    assert_eq!(before.len(), after.len());
    for ((spec, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{}", spec.name);
    }
}

#[test]
fn bf16_weights_with_transformer_prefix_load_and_config_aliases_parse() {
    let (config, model, device) = load();
    let values = model.hf_values(&config);
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = values
        .iter()
        .map(|(spec, v)| {
            let bytes = v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect();
            (
                format!("transformer.{}", spec.name),
                spec.hf_shape.clone(),
                bytes,
            )
        })
        .collect();
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = encoded
        .iter()
        .map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::BF16,
                shape.clone(),
                bytes,
            )
            .expect("view");
            (name.clone(), view)
        })
        .collect();
    // An untied-looking lm_head in the file is ignored (BLOOM ties it).
    let lm_head = safetensors::tensor::TensorView::new(
        safetensors::Dtype::BF16,
        values[0].0.hf_shape.clone(),
        &encoded[0].2,
    )
    .expect("view");
    views.push(("lm_head.weight".into(), lm_head));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).expect("write");

    let aliased = r#"{"n_embed": 96, "num_attention_heads": 6, "n_layer": 2, "vocab_size": 300,
        "layer_norm_epsilon": 1e-05, "eos_token_id": 2, "pad_token_id": 3}"#;
    let aliased = BloomConfig::from_json_str(aliased, "config.json").expect("aliases");
    assert_eq!(
        (aliased.hidden_size, aliased.n_head, aliased.eos_token_id),
        (96, 6, Some(2))
    );

    let reloaded = load_model(&path, &aliased, &device).expect("bf16 load");
    for ((spec, original), (_, loaded)) in values.iter().zip(reloaded.hf_values(&aliased)) {
        let expected: Vec<f32> = original
            .iter()
            .map(|x| half::bf16::from_f32(*x).to_f32())
            .collect();
        assert_eq!(loaded, expected, "{}", spec.name);
    }
    let bad = BloomConfig::from_json_str(
        r#"{"n_layer": 2, "hidden_size": 96, "n_head": 5, "vocab_size": 3}"#,
        "bad.json",
    )
    .expect_err("96 % 5");
    assert!(
        bad.to_string().contains("bad.json") && bad.to_string().contains("divisible"),
        "{bad}"
    );
}

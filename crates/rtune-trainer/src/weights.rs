//! Reading and writing BLOOM weights in Hugging Face's safetensors layout.

use crate::config::BloomConfig;
use crate::model::{Bloom, parameter_specs};
use burn::prelude::Device;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Errors reading or writing weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// A tensor is missing or has the wrong shape or type.
    #[error("{path}: {message}")]
    Tensor {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        ),
        Dtype::F64 => Some(
            bytes
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Reads every BLOOM parameter from a safetensors file, in [`parameter_specs`] order and HF
/// layout, converted to f32. Names may carry a `transformer.` prefix; `lm_head.weight` is
/// ignored (tied to the embeddings).
pub fn read_hf_values(path: &Path, config: &BloomConfig) -> Result<Vec<Vec<f32>>, WeightsError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
        path: shown.clone(),
        source,
    })?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|error| WeightsError::Format {
        path: shown.clone(),
        message: error.to_string(),
    })?;
    let mut values = Vec::new();
    for spec in parameter_specs(config) {
        let prefixed = format!("transformer.{}", spec.name);
        let view = tensors
            .tensor(&spec.name)
            .or_else(|_| tensors.tensor(&prefixed))
            .map_err(|_| WeightsError::Tensor {
                path: shown.clone(),
                message: format!(
                    "tensor {} (or {prefixed}) is missing; config.json says n_layer={}",
                    spec.name, config.n_layer
                ),
            })?;
        if view.shape() != spec.hf_shape.as_slice() {
            return Err(WeightsError::Tensor {
                path: shown.clone(),
                message: format!(
                    "tensor {} has shape {:?}, config.json implies {:?}",
                    spec.name,
                    view.shape(),
                    spec.hf_shape
                ),
            });
        }
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| WeightsError::Tensor {
            path: shown.clone(),
            message: format!(
                "tensor {} has dtype {:?}; supported are F32, F16, BF16, F64",
                spec.name,
                view.dtype()
            ),
        })?;
        values.push(data);
    }
    Ok(values)
}

/// Loads a model from `model.safetensors` in f32 on `device`.
pub fn load_model(
    path: &Path,
    config: &BloomConfig,
    device: &Device,
) -> Result<Bloom, WeightsError> {
    let values = read_hf_values(path, config)?;
    Bloom::from_hf_values(config, values, device).map_err(|error| WeightsError::Tensor {
        path: path.display().to_string(),
        message: error.to_string(),
    })
}

/// Writes the model's parameters as f32 safetensors with HF names (no prefix, like
/// bigscience/bloom-560m), so the file loads into transformers' BloomForCausalLM.
pub fn save_model(model: &Bloom, config: &BloomConfig, path: &Path) -> Result<(), WeightsError> {
    let shown = path.display().to_string();
    let entries: Vec<(String, Vec<usize>, Vec<u8>)> = model
        .hf_values(config)
        .into_iter()
        .map(|(spec, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (spec.name, spec.hf_shape, bytes)
        })
        .collect();
    let mut views = Vec::with_capacity(entries.len());
    for (name, shape, bytes) in &entries {
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(
            |error| WeightsError::Format {
                path: shown.clone(),
                message: error.to_string(),
            },
        )?;
        views.push((name.as_str(), view));
    }
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|error| {
        WeightsError::Format {
            path: shown,
            message: error.to_string(),
        }
    })
}

/// Writes a Hugging Face BLOOM model directory with random weights: `config.json` (the config
/// as [`BloomConfig::to_hf_json`] writes it, with `torch_dtype` float16 like
/// bigscience/bloom-560m) and `model.safetensors` in F16 with the names a bigscience/bloom-*
/// download uses (no `transformer.` prefix, no separate `lm_head.weight`).
///
/// The values are seeded (ChaCha8): matrices N(0, 0.02) as HF's `initializer_range`, biases
/// N(0, 0.02), layer norms weight 1 + N(0, 0.1) and bias N(0, 0.1), so that every parameter
/// (biases and norms included) shapes the output. Memory: the F16 bytes of all parameters (2
/// bytes per parameter, 1.1 GB for bloom-560m) until the file is written.
pub fn write_random_hf_model_dir(
    dir: &Path,
    config: &BloomConfig,
    seed: u64,
) -> Result<(), WeightsError> {
    use rand::{Rng, SeedableRng};
    let io = |path: &Path| {
        let shown = path.display().to_string();
        move |source| WeightsError::Io {
            path: shown.clone(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config_path = dir.join(crate::train::files::CONFIG);
    let mut json = config.to_hf_json();
    if let Some(map) = json.as_object_mut() {
        map.insert("torch_dtype".into(), "float16".into());
    }
    let text = serde_json::to_string_pretty(&json).map_err(|error| WeightsError::Format {
        path: config_path.display().to_string(),
        message: error.to_string(),
    })?;
    std::fs::write(&config_path, text).map_err(io(&config_path))?;

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut normal = move |std: f64| {
        let u1: f64 = rng.random::<f64>().max(1e-12);
        let u2: f64 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std
    };
    let entries: Vec<(String, Vec<usize>, Vec<u8>)> = parameter_specs(config)
        .into_iter()
        .map(|spec| {
            let count: usize = spec.hf_shape.iter().product();
            let is_norm = spec.name.contains("layernorm") || spec.name.starts_with("ln_f");
            let (base, std) = match (is_norm, spec.name.ends_with(".weight")) {
                (true, true) => (1.0, 0.1),
                (true, false) => (0.0, 0.1),
                (false, _) => (0.0, 0.02),
            };
            let bytes = (0..count)
                .flat_map(|_| half::f16::from_f64(base + normal(std)).to_le_bytes())
                .collect();
            (spec.name, spec.hf_shape, bytes)
        })
        .collect();
    let model_path = dir.join(crate::train::files::MODEL);
    let shown = model_path.display().to_string();
    let mut views = Vec::with_capacity(entries.len());
    for (name, shape, bytes) in &entries {
        let view = safetensors::tensor::TensorView::new(Dtype::F16, shape.clone(), bytes).map_err(
            |error| WeightsError::Format {
                path: shown.clone(),
                message: error.to_string(),
            },
        )?;
        views.push((name.as_str(), view));
    }
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(metadata), &model_path).map_err(|error| {
        WeightsError::Format {
            path: shown,
            message: error.to_string(),
        }
    })
}

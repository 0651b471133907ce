//! BLOOM model configuration as read from a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Errors reading a model configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid BLOOM config.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The architecture parameters of a BLOOM causal LM.
///
/// Field names follow `transformers.BloomConfig`; the aliases accept the spellings found in
/// published checkpoints (bigscience/bloom-560m writes `n_embed` and `num_attention_heads`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BloomConfig {
    /// Number of transformer blocks.
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    /// Width of the residual stream.
    #[serde(alias = "n_embed")]
    pub hidden_size: usize,
    /// Number of attention heads (need not be a power of two).
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    /// Vocabulary size (rows of the tied embedding / lm_head matrix).
    pub vocab_size: usize,
    /// Epsilon of every layer norm.
    #[serde(default = "default_epsilon")]
    pub layer_norm_epsilon: f64,
    /// When true the residual connections start from the layer-norm output (as in HF).
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: bool,
    /// End-of-sequence token id, if the config names one.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Padding token id, if the config names one.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_epsilon() -> f64 {
    1e-5
}

impl BloomConfig {
    /// A config for a randomly initialised model.
    pub fn new(n_layer: usize, hidden_size: usize, n_head: usize, vocab_size: usize) -> Self {
        Self {
            n_layer,
            hidden_size,
            n_head,
            vocab_size,
            layer_norm_epsilon: default_epsilon(),
            apply_residual_connection_post_layernorm: false,
            eos_token_id: None,
            pad_token_id: None,
        }
    }

    /// The architecture of bigscience/bloom-560m (24 blocks, hidden 1024, 16 heads, vocabulary
    /// 250,880; end-of-sequence id 2, padding id 3), as its `config.json` gives it.
    pub fn bloom_560m() -> Self {
        Self {
            eos_token_id: Some(2),
            pad_token_id: Some(3),
            ..Self::new(24, 1024, 16, 250_880)
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_head.max(1)
    }

    /// Checks the shape invariants the model relies on; `origin` names the source in errors.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        };
        if self.n_layer == 0 || self.hidden_size == 0 || self.n_head == 0 || self.vocab_size == 0 {
            return Err(invalid(format!(
                "n_layer ({}), hidden_size ({}), n_head ({}) and vocab_size ({}) must all be positive",
                self.n_layer, self.hidden_size, self.n_head, self.vocab_size
            )));
        }
        if !self.hidden_size.is_multiple_of(self.n_head) {
            return Err(invalid(format!(
                "hidden_size {} is not divisible by n_head {}",
                self.hidden_size, self.n_head
            )));
        }
        if !self.layer_norm_epsilon.is_finite() || self.layer_norm_epsilon <= 0.0 {
            return Err(invalid(format!(
                "layer_norm_epsilon must be positive, got {}",
                self.layer_norm_epsilon
            )));
        }
        Ok(())
    }

    /// Parses a `config.json` text; `origin` names the source in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: BloomConfig =
            serde_json::from_str(text).map_err(|error| ConfigError::Invalid {
                path: origin.to_string(),
                message: format!("not a BLOOM config.json: {error}"),
            })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads and validates `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// The config as a Hugging Face style `config.json` value (loadable by transformers).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "architectures": ["BloomForCausalLM"],
            "model_type": "bloom",
            "n_layer": self.n_layer,
            "hidden_size": self.hidden_size,
            "n_head": self.n_head,
            "vocab_size": self.vocab_size,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "apply_residual_connection_post_layernorm": self.apply_residual_connection_post_layernorm,
            "tie_word_embeddings": true,
        });
        if let Some(map) = value.as_object_mut() {
            if let Some(eos) = self.eos_token_id {
                map.insert("eos_token_id".into(), eos.into());
            }
            if let Some(pad) = self.pad_token_id {
                map.insert("pad_token_id".into(), pad.into());
            }
        }
        value
    }
}

/// ALiBi slopes exactly as `transformers.models.bloom.build_alibi_tensor` computes them: a
/// geometric sequence for the largest power of two `<= n_head`, then every other slope of the
/// sequence for twice that power for the remaining heads.
pub fn alibi_slopes(n_head: usize) -> Vec<f64> {
    if n_head == 0 {
        return Vec::new();
    }
    let closest_power_of_2 = 1usize << (usize::BITS - 1 - n_head.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((closest_power_of_2 as f64).log2() - 3.0))));
    let mut slopes: Vec<f64> = (1..=closest_power_of_2)
        .map(|power| base.powi(power as i32))
        .collect();
    if closest_power_of_2 != n_head {
        let extra_base = 2f64.powf(-(2f64.powf(-((2.0 * closest_power_of_2 as f64).log2() - 3.0))));
        let remaining = (n_head - closest_power_of_2).min(closest_power_of_2);
        slopes.extend((0..remaining).map(|k| extra_base.powi((1 + 2 * k) as i32)));
    }
    slopes
}

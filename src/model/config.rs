//! The backbone's hyper-parameters, read from a Hugging Face `config.json` (or built from GGUF
//! metadata by [`crate::model::gguf`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The decoder families qrm runs. They share one forward; they differ in which projections
/// carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama 2/3, CodeLlama, Mistral-style and SmolLM2: no biases unless `attention_bias`.
    Llama,
    /// Qwen2: biases on the q, k and v projections.
    Qwen2,
}

/// `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5) of a Hugging Face
/// config: `rope_type` "llama3" or "linear" scale the frequencies, "default" leaves them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type", default = "default_rope_type")]
    pub rope_type: String,
    /// transformers 5 keeps `rope_theta` here rather than at the top level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default = "one")]
    pub factor: f64,
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn default_rope_type() -> String {
    "default".into()
}
fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> usize {
    4096
}

/// The fields of a Hugging Face `config.json` that the backbone and the reward head need.
///
/// Unknown keys are ignored on reading; [`ModelConfig::extra`] keeps them so a checkpoint written
/// back by qrm still carries them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeScaling>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama: biases on q, k, v and o. Qwen2 always has q, k, v biases whatever this says.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: biases on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// OpenRLHF: the name prefix of the reward head's weights (`score` or `value_head`).
    #[serde(default)]
    pub value_head_prefix: Option<String>,
    /// OpenRLHF: when true, rewards are reported as `(r - mean) / std`.
    #[serde(default)]
    pub normalize_reward: bool,
    #[serde(default)]
    pub mean: Option<f64>,
    #[serde(default)]
    pub std: Option<f64>,
    /// Every other key of the file, kept verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ModelConfig {
    /// Reads and checks a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = fs_err::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: ModelConfig = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.to_owned(),
            message: format!("not a model config.json: {e}"),
        })?;
        config.validate().map_err(|message| Error::Format {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// The decoder family, from `model_type` (or `architectures` when the type is unknown).
    pub fn family(&self) -> std::result::Result<Family, String> {
        match self.model_type.as_str() {
            "llama" | "mistral" | "codellama" => Ok(Family::Llama),
            "qwen2" => Ok(Family::Qwen2),
            other => {
                let arch = self.architectures.first().map(String::as_str).unwrap_or("");
                if arch.starts_with("Llama") || arch.starts_with("Mistral") {
                    Ok(Family::Llama)
                } else if arch.starts_with("Qwen2") {
                    Ok(Family::Qwen2)
                } else {
                    Err(format!(
                        "unsupported model_type `{other}` (architectures {:?}); qrm runs llama, mistral and qwen2",
                        self.architectures
                    ))
                }
            }
        }
    }

    /// Key/value heads (grouped-query attention); equal to the query heads when absent.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Checks the shapes fit together and the options are ones the forward implements.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.family()?;
        if self.num_attention_heads == 0 || self.num_kv_heads() == 0 {
            return Err("num_attention_heads and num_key_value_heads must be positive".into());
        }
        if self.num_attention_heads % self.num_kv_heads() != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_size() % 2 != 0 {
            return Err(format!(
                "head size {} must be even for rotary embeddings",
                self.head_size()
            ));
        }
        if let Some(act) = &self.hidden_act {
            if act != "silu" && act != "swish" {
                return Err(format!("hidden_act `{act}` is not supported (only silu)"));
            }
        }
        if let Some(scaling) = self.rope() {
            if !matches!(scaling.rope_type.as_str(), "default" | "linear" | "llama3") {
                return Err(format!(
                    "rope_scaling type `{}` is not supported (default, linear, llama3)",
                    scaling.rope_type
                ));
            }
        }
        Ok(())
    }

    /// The rotary scaling in force: `rope_parameters` (transformers 5) before `rope_scaling`.
    pub fn rope(&self) -> Option<&RopeScaling> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }

    /// The rotary base: `rope_parameters.rope_theta` (transformers 5) before `rope_theta`.
    pub fn rope_base(&self) -> f64 {
        self.rope()
            .and_then(|r| r.rope_theta)
            .unwrap_or(self.rope_theta)
    }

    /// Rotary inverse frequencies `1 / theta^(2i/d)`, i < d/2, with the rope scaling applied.
    pub fn rope_inverse_frequencies(&self) -> Vec<f64> {
        let dim = self.head_size();
        let theta = self.rope_base();
        let base: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / dim as f64))
            .collect();
        let Some(scaling) = self.rope() else {
            return base;
        };
        match scaling.rope_type.as_str() {
            "linear" => base.iter().map(|f| f / scaling.factor).collect(),
            "llama3" => {
                // transformers' `_compute_llama3_parameters`.
                let original = scaling.original_max_position_embeddings.unwrap_or(8192) as f64;
                let low_freq_wavelen = original / scaling.low_freq_factor;
                let high_freq_wavelen = original / scaling.high_freq_factor;
                base.iter()
                    .map(|&freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_freq_wavelen {
                            freq
                        } else if wavelen > low_freq_wavelen {
                            freq / scaling.factor
                        } else {
                            let smooth = (original / wavelen - scaling.low_freq_factor)
                                / (scaling.high_freq_factor - scaling.low_freq_factor);
                            (1.0 - smooth) * freq / scaling.factor + smooth * freq
                        }
                    })
                    .collect()
            }
            _ => base,
        }
    }

    /// Whether the q/k/v projections carry a bias.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.family() == Ok(Family::Qwen2)
    }

    /// Whether the output projection carries a bias.
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.family() == Ok(Family::Llama)
    }

    /// The `(mean, std)` that rewards are normalised with, when `normalize_reward` is set.
    pub fn reward_normalization(&self) -> Option<(f64, f64)> {
        if self.normalize_reward {
            Some((self.mean.unwrap_or(0.0), self.std.unwrap_or(1.0)))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> ModelConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn smollm2_config_reads_as_llama_with_grouped_query_attention() {
        let config = parse(
            r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":576,
            "intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,
            "num_key_value_heads":3,"rms_norm_eps":1e-05,"rope_theta":100000,
            "max_position_embeddings":8192,"vocab_size":49152,"tie_word_embeddings":true,
            "rope_scaling":null,"torch_dtype":"float32"}"#,
        );
        assert_eq!(config.family(), Ok(Family::Llama));
        assert_eq!(config.head_size(), 64);
        assert_eq!(config.num_kv_heads(), 3);
        assert!(!config.qkv_bias());
        assert_eq!(config.extra["torch_dtype"], "float32");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn qwen2_has_qkv_bias_but_no_output_bias() {
        let config = parse(
            r#"{"model_type":"qwen2","hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "vocab_size":100}"#,
        );
        assert!(config.qkv_bias());
        assert!(!config.o_bias());
    }

    #[test]
    fn transformers5_rope_parameters_set_the_rotary_base() {
        let config = parse(
            r#"{"model_type":"llama","hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100,
            "rope_parameters":{"rope_theta":500.0,"rope_type":"default"}}"#,
        );
        assert_eq!(config.rope_base(), 500.0);
        // head 8: inv_freq = 500^(-0/8), 500^(-2/8), ...
        let freqs = config.rope_inverse_frequencies();
        assert!((freqs[1] - 500f64.powf(-0.25)).abs() < 1e-15);
    }

    #[test]
    fn unknown_model_type_is_rejected_with_its_name() {
        let config = parse(
            r#"{"model_type":"gpt2","hidden_size":32,"intermediate_size":64,
            "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}"#,
        );
        assert!(config.validate().unwrap_err().contains("gpt2"));
    }

    #[test]
    fn llama3_rope_scaling_keeps_high_divides_low_and_interpolates_middle() {
        // Reference: transformers 4.x `_compute_llama3_parameters` for Llama 3.1 8B (head 128,
        // theta 500000, factor 8, low 1, high 4, original 8192): inv_freq[0] stays 1.0,
        // inv_freq[63] = 500000^(-126/128) / 8, and the middle band is interpolated.
        let config = parse(
            r#"{"model_type":"llama","hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,
            "vocab_size":128256,"rope_theta":500000.0,"rope_scaling":{"factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,
            "rope_type":"llama3"}}"#,
        );
        let freqs = config.rope_inverse_frequencies();
        assert_eq!(freqs.len(), 64);
        assert_eq!(freqs[0], 1.0);
        let last = 500000f64.powf(-126.0 / 128.0) / 8.0;
        assert!((freqs[63] - last).abs() < 1e-15 * last.max(1.0));
        // Wavelength 2π/f between 2048 and 8192 is interpolated: strictly between f/8 and f.
        let base: Vec<f64> = (0..64)
            .map(|i| 500000f64.powf(-(2 * i) as f64 / 128.0))
            .collect();
        let middle = (0..64)
            .find(|&i| {
                let w = 2.0 * std::f64::consts::PI / base[i];
                w > 2048.0 && w < 8192.0
            })
            .unwrap();
        assert!(freqs[middle] < base[middle] && freqs[middle] > base[middle] / 8.0);
    }
}

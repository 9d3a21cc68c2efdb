//! What a training run writes and caches: the Hugging Face checkpoint directory and the
//! frozen-trunk cache.
//!
//! Checkpoint layout (loadable by `qrm-score` and by transformers as a sequence-classification
//! model when the head is linear):
//! - `model.safetensors`: the whole backbone under Hugging Face names (frozen layers included)
//!   and the head, `score.weight` (1, H) for the linear head — what
//!   `LlamaForSequenceClassification` reads — or `value_head.{0,2,4,6}.*` for the MLP head, which
//!   transformers cannot load;
//! - `config.json`: the backbone's config plus `architectures: ["LlamaForSequenceClassification"]`,
//!   `num_labels: 1`, `pad_token_id`, and OpenRLHF's `value_head_prefix`, `normalize_reward`,
//!   `mean`, `std` (the eval reward distribution);
//! - `tokenizer.json`;
//! - `train_config.json`: every training setting, input hashes and versions.
//!
//! The trunk cache holds, per response, the hidden states after the frozen layers [0, L − K),
//! under `.cache/trunk/<key>/trunk.safetensors`; the key hashes the model file, the template, the
//! EOS policy, K and the pairs file, so BT and Q runs, and every epoch, reuse one computation.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::train::{save_tensors, EncodedPair, EncodedResponse};

/// Hex sha256 of a file's bytes (streamed).
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = fs_err::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Hex sha256 of the parts joined by NUL bytes.
pub fn key_of(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    format!("{:x}", hasher.finalize())
}

/// The frozen-trunk cache of one (model, template, EOS policy, K, data) combination.
pub struct TrunkCache {
    pub directory: PathBuf,
}

impl TrunkCache {
    /// The cache under `root` (usually `.cache/trunk`) for a key from [`key_of`].
    pub fn new(root: &Path, key: &str) -> TrunkCache {
        TrunkCache {
            directory: root.join(key),
        }
    }

    fn file(&self) -> PathBuf {
        self.directory.join("trunk.safetensors")
    }

    /// Loads the cached trunk outputs, or computes them with `compute` (one response at a time,
    /// `(len, H)` each) and stores them. Also checks the cached lengths against `pairs`.
    pub fn load_or_compute(
        &self,
        pairs: &[EncodedPair],
        device: &Device,
        progress: &indicatif::ProgressBar,
        mut compute: impl FnMut(&EncodedResponse) -> Result<Tensor>,
    ) -> Result<Vec<[Tensor; 2]>> {
        let file = self.file();
        if file.exists() {
            let mut tensors = candle_core::safetensors::load(&file, device)?;
            let mut trunk = Vec::with_capacity(pairs.len());
            for (index, pair) in pairs.iter().enumerate() {
                let mut take = |side: &str, response: &EncodedResponse| -> Result<Tensor> {
                    let name = format!("{side}.{index}");
                    let tensor = tensors.remove(&name).ok_or_else(|| Error::Format {
                        path: file.clone(),
                        message: format!("trunk cache lacks `{name}`; delete it to recompute"),
                    })?;
                    if tensor.dim(0)? != response.input_ids.len() {
                        return Err(Error::Format {
                            path: file.clone(),
                            message: format!(
                                "`{name}` has the wrong length; delete it to recompute"
                            ),
                        });
                    }
                    Ok(tensor)
                };
                trunk.push([
                    take("chosen", &pair.chosen)?,
                    take("rejected", &pair.rejected)?,
                ]);
                progress.inc(1);
            }
            tracing::info!("trunk cache hit: {}", file.display());
            return Ok(trunk);
        }
        let mut trunk = Vec::with_capacity(pairs.len());
        let mut named = HashMap::with_capacity(2 * pairs.len());
        for (index, pair) in pairs.iter().enumerate() {
            let chosen = compute(&pair.chosen)?;
            let rejected = compute(&pair.rejected)?;
            named.insert(format!("chosen.{index}"), chosen.clone());
            named.insert(format!("rejected.{index}"), rejected.clone());
            trunk.push([chosen, rejected]);
            progress.inc(1);
        }
        fs_err::create_dir_all(&self.directory).map_err(|e| Error::io(&self.directory, e))?;
        save_tensors(&named, &file)?;
        tracing::info!("trunk cache written: {}", file.display());
        Ok(trunk)
    }
}

/// Adds the sequence-classification and OpenRLHF keys to a backbone config.
///
/// `head_prefix` is `score` for the linear head and `value_head` for the MLP head.
pub fn reward_model_config(
    backbone_config: &Value,
    head_prefix: &str,
    pad_token_id: u32,
    reward_mean: f64,
    reward_std: f64,
) -> Value {
    let mut config = backbone_config.clone();
    if let Value::Object(map) = &mut config {
        let architecture = match map.get("model_type").and_then(Value::as_str) {
            Some("qwen2") => "Qwen2ForSequenceClassification",
            _ => "LlamaForSequenceClassification",
        };
        map.insert("architectures".into(), serde_json::json!([architecture]));
        map.insert("num_labels".into(), serde_json::json!(1));
        map.insert("pad_token_id".into(), serde_json::json!(pad_token_id));
        map.insert("value_head_prefix".into(), serde_json::json!(head_prefix));
        map.insert("normalize_reward".into(), serde_json::json!(false));
        map.insert("mean".into(), serde_json::json!(reward_mean));
        map.insert("std".into(), serde_json::json!(reward_std));
    }
    config
}

/// Writes a checkpoint directory: weights, config, tokenizer (copied) and the training config.
pub fn write_checkpoint(
    directory: &Path,
    tensors: &HashMap<String, Tensor>,
    config: &Value,
    tokenizer_json: Option<&Path>,
    train_config: &Value,
) -> Result<()> {
    fs_err::create_dir_all(directory).map_err(|e| Error::io(directory, e))?;
    save_tensors(tensors, &directory.join("model.safetensors"))?;
    for (name, value) in [("config.json", config), ("train_config.json", train_config)] {
        let path = directory.join(name);
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::Model(e.to_string()))?;
        crate::pipeline::io::write_atomic(&path, |writer| {
            writer
                .write_all(text.as_bytes())
                .map_err(|e| Error::io(&path, e))
        })?;
    }
    if let Some(source) = tokenizer_json {
        let target = directory.join("tokenizer.json");
        fs_err::copy(source, &target).map_err(|e| Error::io(&target, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_gets_sequence_classification_keys() {
        let backbone = serde_json::json!({"model_type": "llama", "hidden_size": 8});
        let config = reward_model_config(&backbone, "score", 2, 0.5, 1.5);
        assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
        assert_eq!(config["num_labels"], 1);
        assert_eq!(config["pad_token_id"], 2);
        assert_eq!(config["value_head_prefix"], "score");
        assert_eq!(config["mean"], 0.5);
        assert_eq!(config["std"], 1.5);
        assert_eq!(config["hidden_size"], 8);
    }

    #[test]
    fn trunk_cache_computes_once_then_loads() {
        let directory = tempfile::tempdir().unwrap();
        let response = |ids: Vec<u32>| EncodedResponse {
            input_ids: ids,
            response_start: 1,
        };
        let pairs = vec![EncodedPair {
            chosen: response(vec![1, 2, 3]),
            rejected: response(vec![1, 4]),
            margin: None,
        }];
        let cache = TrunkCache::new(directory.path(), &key_of(&["model", "template", "1"]));
        let progress = indicatif::ProgressBar::hidden();
        let mut calls = 0;
        let mut compute = |r: &EncodedResponse| {
            calls += 1;
            let values: Vec<f32> = r
                .input_ids
                .iter()
                .flat_map(|&id| [id as f32, 0.5])
                .collect();
            Ok(Tensor::from_vec(
                values,
                (r.input_ids.len(), 2),
                &Device::Cpu,
            )?)
        };
        let first = cache
            .load_or_compute(&pairs, &Device::Cpu, &progress, &mut compute)
            .unwrap();
        let second = cache
            .load_or_compute(&pairs, &Device::Cpu, &progress, &mut compute)
            .unwrap();
        assert_eq!(calls, 2);
        for (a, b) in first[0].iter().zip(&second[0]) {
            assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        }
        // Different data → different key → different directory.
        assert_ne!(
            key_of(&["model", "template", "1"]),
            key_of(&["model", "template", "2"])
        );
    }
}

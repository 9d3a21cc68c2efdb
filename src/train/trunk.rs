//! The frozen-trunk cache and the hashes that key it.
//!
//! With `--train-layers K` only the top K layers, the final norm and the head train; the
//! frozen layers [0, L − K) give the same output every epoch and in every run on the same data,
//! so their output is computed once per response and cached under
//! `.cache/trunk/<key>/trunk.safetensors` (one tensor per distinct response). The key hashes the
//! model file, the template, the EOS policy, K and the pairs file: the BT and the Q runs share
//! one computation.

use std::collections::HashMap;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

use crate::model::template::Encoded;
use crate::train::trainer::{save_tensors, EncodedPair};

/// Part of every cache key: bumped when the cache file's layout changes, so an old cache is
/// recomputed rather than misread.
pub const TRUNK_CACHE_FORMAT: &str = "trunk-v2-distinct-responses";

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
    /// `(len, H)` each) and stores them. A response that appears in several pairs (`qrm-pairs
    /// --reuse`, or a shared chosen solution) is computed and stored once; `progress` is sized
    /// to the distinct responses. Also checks the cached lengths against `pairs`.
    pub fn load_or_compute(
        &self,
        pairs: &[EncodedPair],
        device: &Device,
        progress: &indicatif::ProgressBar,
        mut compute: impl FnMut(&Encoded) -> Result<Tensor>,
    ) -> Result<Vec<[Tensor; 2]>> {
        // Distinct responses in first-seen order; `slots[i]` = (chosen, rejected) of pair i.
        let mut distinct: Vec<&Encoded> = Vec::new();
        let mut index_of: HashMap<&[u32], usize> = HashMap::new();
        let mut slots: Vec<[usize; 2]> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let mut slot = [0; 2];
            for (side, response) in [&pair.chosen, &pair.rejected].into_iter().enumerate() {
                slot[side] = *index_of.entry(&response.input_ids).or_insert_with(|| {
                    distinct.push(response);
                    distinct.len() - 1
                });
            }
            slots.push(slot);
        }
        progress.set_length(distinct.len() as u64);
        let file = self.file();
        let outputs: Vec<Tensor> = if file.exists() {
            let mut tensors = candle_core::safetensors::load(&file, device)?;
            let outputs = distinct
                .iter()
                .enumerate()
                .map(|(index, response)| {
                    let name = format!("response.{index}");
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
                    progress.inc(1);
                    Ok(tensor)
                })
                .collect::<Result<_>>()?;
            tracing::info!("trunk cache hit: {}", file.display());
            outputs
        } else {
            tracing::info!(
                "computing the frozen trunk for {} distinct responses of {} pairs (cached at {})",
                distinct.len(),
                pairs.len(),
                file.display()
            );
            let mut outputs = Vec::with_capacity(distinct.len());
            for response in &distinct {
                outputs.push(compute(response)?);
                progress.inc(1);
            }
            let named: HashMap<String, Tensor> = outputs
                .iter()
                .enumerate()
                .map(|(index, tensor)| (format!("response.{index}"), tensor.clone()))
                .collect();
            fs_err::create_dir_all(&self.directory).map_err(|e| Error::io(&self.directory, e))?;
            save_tensors(&named, &file)?;
            tracing::info!("trunk cache written: {}", file.display());
            outputs
        };
        Ok(slots
            .iter()
            .map(|[chosen, rejected]| [outputs[*chosen].clone(), outputs[*rejected].clone()])
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::io::key_of;

    #[test]
    fn trunk_cache_computes_once_then_loads() {
        let directory = tempfile::tempdir().unwrap();
        let response = |ids: Vec<u32>| Encoded {
            input_ids: ids,
            response_start: 1,
            ..Encoded::default()
        };
        // The second pair reuses the first pair's chosen response.
        let pairs = vec![
            EncodedPair {
                chosen: response(vec![1, 2, 3]),
                rejected: response(vec![1, 4]),
                margin: None,
            },
            EncodedPair {
                chosen: response(vec![1, 2, 3]),
                rejected: response(vec![1, 5, 6, 7]),
                margin: None,
            },
        ];
        let cache = TrunkCache::new(directory.path(), &key_of(&["model", "template", "1"]));
        let progress = indicatif::ProgressBar::hidden();
        let mut calls = 0;
        let mut compute = |r: &Encoded| {
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
        assert_eq!(
            calls, 3,
            "each distinct response once, nothing on the second load"
        );
        for (a, b) in first.iter().flatten().zip(second.iter().flatten()) {
            assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        }
        assert_eq!(second[1][1].dims(), &[4, 2]);
        assert_eq!(
            second[1][0].to_vec2::<f32>().unwrap(),
            second[0][0].to_vec2::<f32>().unwrap()
        );
        // Different data → different key → different directory.
        assert_ne!(
            key_of(&["model", "template", "1"]),
            key_of(&["model", "template", "2"])
        );
    }
}

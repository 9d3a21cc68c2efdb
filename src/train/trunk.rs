//! The frozen-trunk cache and the hashes that key it.
//!
//! With `--train-layers K` only the top K layers, the final norm and the head train; the
//! frozen layers [0, L − K) give the same output every epoch and in every run on the same data,
//! so their output is computed once per response ([`compute_trunks`]: batched, several batches at
//! once on the CPU as in scoring ([`run_plan`]), each prompt's
//! trunk once for the responses that share it) and cached under
//! `.cache/trunk/<key>/trunk.safetensors` (one tensor per distinct response). The key hashes the
//! model file, the template, the EOS policy, K and the pairs file: the BT and the Q runs share
//! one computation.

use std::collections::HashMap;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use indicatif::ProgressBar;

use crate::error::{Error, Result};
use crate::model::batching::{
    batch_lanes, pad_right, plan_sharing_prompts, run_plan, Job, DEFAULT_BATCH_TOKENS,
};
use crate::model::template::Encoded;
use crate::model::transformer::Transformer;
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

    /// Loads the cached trunk outputs, or computes them with `compute` (called once with the
    /// distinct responses and `progress`; returns `(len, H)` for each, in order, usually
    /// [`compute_trunks`]) and stores them. A response that appears in several pairs
    /// (`qrm-pairs --reuse`, or a shared chosen solution) is computed and stored once;
    /// `progress` is sized to the distinct responses. Also checks the cached lengths against
    /// `pairs`.
    pub fn load_or_compute(
        &self,
        pairs: &[EncodedPair],
        device: &Device,
        progress: &ProgressBar,
        compute: impl FnOnce(&[&Encoded], &ProgressBar) -> Result<Vec<Tensor>>,
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
            let outputs = compute(&distinct, progress)?;
            if outputs.len() != distinct.len()
                || outputs
                    .iter()
                    .zip(&distinct)
                    .any(|(output, response)| output.dim(0).ok() != Some(response.input_ids.len()))
            {
                return Err(Error::Model(
                    "the frozen trunk's outputs do not match its responses".into(),
                ));
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

/// Padded tokens (rows × longest row) per batch of the frozen trunk's forward passes: no
/// gradient is kept, so a batch costs what a scoring batch does ([`DEFAULT_BATCH_TOKENS`]).
pub const TRUNK_BATCH_TOKENS: usize = DEFAULT_BATCH_TOKENS;

/// The frozen trunk's output for each response: the hidden state entering layer `depth`,
/// `(len, H)` on the CPU, in the order given. Responses that share an encoded prompt
/// ([`crate::model::batching::prompt_groups`]) run after that prompt's trunk, computed once
/// ([`Transformer::prefill_trunk`]); the others, and each group's continuations, run in
/// length-sorted batches of at most `batch_tokens` padded tokens ([`plan_sharing_prompts`]).
/// Equals running each response alone through layers `0..depth` to float rounding (test).
pub fn compute_trunks(
    transformer: &Transformer,
    depth: usize,
    responses: &[&Encoded],
    batch_tokens: usize,
    progress: &ProgressBar,
) -> Result<Vec<Tensor>> {
    let device = transformer.device();
    let examples: Vec<Encoded> = responses.iter().map(|&response| response.clone()).collect();
    // A trunk of no layers is the embedding: nothing to share.
    let (whole, shared) = plan_sharing_prompts(&examples, batch_tokens, depth > 0);
    let mut outputs: Vec<Option<Tensor>> = vec![None; examples.len()];
    // Each pass's rows, cut to their own lengths and moved to the CPU, in pass order.
    run_plan(
        &whole,
        &shared,
        batch_lanes(device),
        |prompt| {
            let (prompt_hidden, cache) =
                transformer.prefill_trunk(&prompt.prompt_ids(device)?, depth)?;
            Ok((prompt_hidden.squeeze(0)?, cache)) // (prompt_len, H)
        },
        |job| -> Result<Vec<Tensor>> {
            match job {
                Job::AfterPrompt {
                    prompt,
                    batch,
                    cache: (prompt_hidden, cache),
                } => {
                    let prompt = &shared[prompt];
                    let (input_ids, attention_mask) =
                        prompt.pad_after_prompt(&examples, batch, device)?;
                    let hidden =
                        transformer.trunk_with_prefix(&input_ids, &attention_mask, cache)?;
                    let mut rows = Vec::with_capacity(batch.len());
                    for (row, &index) in batch.iter().enumerate() {
                        let own = examples[index].input_ids.len() - prompt.prompt.len();
                        let joined = Tensor::cat(&[prompt_hidden, &hidden.i((row, ..own))?], 0)?;
                        rows.push(joined.to_device(&Device::Cpu)?);
                    }
                    Ok(rows)
                }
                Job::Whole(batch) => {
                    let rows: Vec<&Encoded> = batch.iter().map(|&i| &examples[i]).collect();
                    let (input_ids, attention_mask) = pad_right(&rows, device)?;
                    let embedded = transformer.embed(&input_ids)?;
                    // (B, L, H)
                    let hidden = transformer.run_layers(&embedded, &attention_mask, 0..depth)?;
                    let mut rows = Vec::with_capacity(batch.len());
                    for (row, &index) in batch.iter().enumerate() {
                        let len = examples[index].input_ids.len();
                        rows.push(hidden.i((row, ..len))?.to_device(&Device::Cpu)?.copy()?);
                    }
                    Ok(rows)
                }
            }
        },
        |pass, rows| {
            for (&index, row) in pass.batch().iter().zip(rows) {
                outputs[index] = Some(row);
                progress.inc(1);
            }
            Ok(())
        },
    )?;
    outputs
        .into_iter()
        .zip(&examples)
        .map(|(output, example)| match output {
            Some(output) => Ok(output),
            // `plan_batches` leaves empty responses out: their trunk has no rows.
            None => Ok(Tensor::zeros(
                (example.input_ids.len(), transformer.hidden_size()),
                DType::F32,
                &Device::Cpu,
            )?
            .to_dtype(transformer.dtype())?),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transformer::Kernels;
    use crate::pipeline::io::key_of;
    use crate::testing::relative_diff;

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
        let mut compute = |responses: &[&Encoded], _: &ProgressBar| {
            calls += responses.len();
            responses
                .iter()
                .map(|r| {
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
                })
                .collect()
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

    #[test]
    fn batched_trunks_with_shared_prompts_equal_each_response_run_alone() {
        // Tiny llama (2 layers, vocabulary 100): two responses after one 3-token prompt, one
        // after another prompt, one with no prompt (response_start 0), one of a single prompt
        // token plus one; trunks of depth 0 (the embedding), 1 and 2 (every layer, no final
        // norm), with budgets that put every row alone (1) or together (1000).
        let model = crate::testing::tiny_llama();
        let transformer = model.transformer.clone().with_kernels(Kernels::Fused);
        let encoded = |ids: &[u32], response_start: usize| Encoded {
            input_ids: ids.to_vec(),
            response_start,
            ..Encoded::default()
        };
        let responses = [
            encoded(&[5, 6, 7, 8, 9, 10], 3),
            encoded(&[5, 6, 7, 11], 3),
            encoded(&[12, 13, 14, 15, 16], 2),
            encoded(&[17, 18, 19], 0),
            encoded(&[5, 6, 7, 20, 21, 22, 23, 24], 3),
            encoded(&[25, 26], 1),
        ];
        let refs: Vec<&Encoded> = responses.iter().collect();
        for depth in [0, 1, 2] {
            for batch_tokens in [1, 1000] {
                let progress = ProgressBar::new(responses.len() as u64);
                let trunks =
                    compute_trunks(&transformer, depth, &refs, batch_tokens, &progress).unwrap();
                assert_eq!(progress.position(), responses.len() as u64);
                for (response, trunk) in responses.iter().zip(&trunks) {
                    let ids = Tensor::new(response.input_ids.as_slice(), &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap();
                    let mask = Tensor::ones(ids.dims(), DType::U32, &Device::Cpu).unwrap();
                    let alone = transformer
                        .run_layers(&transformer.embed(&ids).unwrap(), &mask, 0..depth)
                        .unwrap()
                        .squeeze(0)
                        .unwrap();
                    assert_eq!(trunk.dims(), alone.dims());
                    // Relative to the largest |value|: the residual stream before the final
                    // norm grows with depth.
                    let diff = relative_diff(trunk, &alone);
                    assert!(
                        diff < 1e-5,
                        "depth {depth}, budget {batch_tokens}, {:?}: max |Δ| / scale = {diff:e}",
                        response.input_ids
                    );
                }
            }
        }
        // A trunk deeper than the model is refused.
        let error =
            compute_trunks(&transformer, 3, &refs, 1000, &ProgressBar::hidden()).unwrap_err();
        assert!(error.to_string().contains("the model's 2"), "{error}");
    }
}

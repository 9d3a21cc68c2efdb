//! A reward model: the transformer backbone plus a value head. The forward gives every token's
//! hidden state (for Q-values: cosine with a goal state) and every token's reward; a sequence's
//! reward is the reward at its last real token.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarMap;

use crate::model::batching::TokenModel;
use crate::model::checkpoint::{save_reward_model, Checkpoint};
use crate::model::config::ModelConfig;
use crate::model::head::{seed_new_head, HeadKind, ValueHead};
use crate::model::transformer::{attention_mask_rows, Kernels, KvCache, Transformer};
use crate::{Error, Result};

/// Backbone + head.
#[derive(Debug, Clone)]
pub struct RewardModel {
    pub transformer: Transformer,
    pub head: ValueHead,
    pub config: ModelConfig,
    /// `(mean, std)` applied to rewards when the checkpoint says `normalize_reward`.
    pub normalization: Option<(f64, f64)>,
}

/// What [`RewardModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct RewardOutput {
    /// (batch, seq_len, hidden): final hidden state of every token, after the last norm.
    pub hidden: Tensor,
    /// (batch, seq_len): the head's reward at every token (normalised when configured).
    pub token_rewards: Tensor,
}

impl RewardModel {
    /// Loads a reward model for inference from a model directory or `.gguf` file. The head is
    /// the checkpoint's (`score.weight`, `value_head.weight` or the MLP `value_head.{0,2,4,6}`).
    /// A checkpoint without one is an error; use [`RewardModel::with_new_head`] to add one.
    pub fn load(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let checkpoint = Checkpoint::load(path.as_ref(), device, dtype)?;
        Self::from_checkpoint(&checkpoint)
    }

    /// The inference model of a checkpoint that holds a head.
    pub fn from_checkpoint(checkpoint: &Checkpoint) -> Result<Self> {
        let layout = checkpoint.head_layout().ok_or_else(|| Error::Format {
            path: checkpoint.source.clone(),
            message: "no reward head in the checkpoint (looked for value_head.weight, \
                      value_head.{0,2,4,6}.*, score.weight); it is a plain language model"
                .into(),
        })?;
        let vb = checkpoint.var_builder();
        let transformer = Transformer::new(
            &checkpoint.config,
            Checkpoint::backbone(&vb, &checkpoint.backbone_prefix),
        )?;
        let head = ValueHead::load(&layout, checkpoint.config.hidden_size, vb)?;
        Ok(Self {
            transformer,
            head,
            config: checkpoint.config.clone(),
            normalization: checkpoint.config.reward_normalization(),
        })
    }

    /// A model for training. Weights whose checkpoint name satisfies `trainable` become `Var`s in
    /// `varmap`; the head is the checkpoint's when it has one, otherwise a new `kind` head named
    /// `value_head` (always trainable, initialised as in the paper from `seed`). The forward uses
    /// [`Kernels::Differentiable`] so gradients reach every trainable weight.
    pub fn trainable(
        checkpoint: &Checkpoint,
        kind: HeadKind,
        varmap: &VarMap,
        seed: u64,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let layout = checkpoint.head_layout();
        let head_prefix = layout
            .as_ref()
            .map(|l| l.prefix.clone())
            .unwrap_or_else(|| "value_head".into());
        let head_prefix_dot = format!("{head_prefix}.");
        let vb = checkpoint.trainable_var_builder(varmap, |name| {
            name.starts_with(&head_prefix_dot) || trainable(name)
        })?;
        let transformer = Transformer::new(
            &checkpoint.config,
            Checkpoint::backbone(&vb, &checkpoint.backbone_prefix),
        )?
        .with_kernels(Kernels::Differentiable);
        let hidden = checkpoint.config.hidden_size;
        let head = match &layout {
            Some(layout) => ValueHead::load(layout, hidden, vb)?,
            None => {
                let head = ValueHead::new(kind, hidden, vb.pp("value_head"))?;
                seed_new_head(varmap, "value_head", seed)?;
                head
            }
        };
        Ok(Self {
            transformer,
            head,
            config: checkpoint.config.clone(),
            normalization: None,
        })
    }

    /// A checkpoint's backbone (a plain language model, e.g. the GGUF SmolLM2) with a freshly
    /// initialised head, for inference (the head's values come from `varmap`).
    pub fn with_new_head(
        checkpoint: &Checkpoint,
        kind: HeadKind,
        varmap: &VarMap,
        seed: u64,
    ) -> Result<Self> {
        Self::trainable(checkpoint, kind, varmap, seed, |_| false)
            .map(|m| m.with_kernels(Kernels::Fused))
    }

    /// Switches the backbone's kernel set.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.transformer.set_kernels(kernels);
        self
    }

    /// Hidden states and per-token rewards.
    ///
    /// # Shapes
    /// `input_ids` (batch, seq_len) u32, `attention_mask` (batch, seq_len) right-padded 0/1 →
    /// hidden (batch, seq_len, hidden), token_rewards (batch, seq_len).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<RewardOutput> {
        let hidden = self.transformer.forward(input_ids, attention_mask)?;
        let token_rewards = self.rewards_from_hidden(&hidden)?;
        Ok(RewardOutput {
            hidden,
            token_rewards,
        })
    }

    /// Per-token rewards from final hidden states, (batch, seq_len, hidden) → (batch, seq_len),
    /// with `(r − mean) / std` applied when the checkpoint asks for it.
    pub fn rewards_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        let rewards = self.head.forward(hidden)?;
        Ok(match self.normalization {
            Some((mean, std)) => rewards.affine(1.0 / std, -mean / std)?,
            None => rewards,
        })
    }

    /// Writes the model (current weights) as a directory transformers loads: see
    /// [`save_reward_model`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        let backbone: HashMap<String, Tensor> =
            self.transformer.named_tensors()?.into_iter().collect();
        save_reward_model(dir, &self.config, &backbone, &self.head)
    }
}

impl TokenModel for RewardModel {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<RewardOutput> {
        RewardModel::forward(self, input_ids, attention_mask)
    }

    fn device(&self) -> &Device {
        self.transformer.device()
    }

    fn has_prompt_cache(&self) -> bool {
        true
    }

    fn prompt_cache(&self, prompt_ids: &Tensor) -> Result<KvCache> {
        Ok(self.transformer.prefill(prompt_ids, None)?.1)
    }

    fn forward_after(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        prompt: &KvCache,
    ) -> Result<RewardOutput> {
        let hidden = self
            .transformer
            .forward_with_prefix(input_ids, attention_mask, prompt)?;
        let token_rewards = self.rewards_from_hidden(&hidden)?;
        Ok(RewardOutput {
            hidden,
            token_rewards,
        })
    }
}

/// The value at each row's last real token.
///
/// # Shapes
/// `token_values` (batch, seq_len), `attention_mask` (batch, seq_len) right-padded 0/1 → (batch).
pub fn last_token_values(token_values: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let (batch, seq_len) = token_values.dims2()?;
    let lengths = attention_mask_rows(attention_mask, batch, seq_len)?;
    let index: Vec<u32> = lengths.iter().map(|&n| (n - 1) as u32).collect();
    let index = Tensor::from_vec(index, (batch, 1), token_values.device())?;
    Ok(token_values.gather(&index, 1)?.squeeze(1)?) // (batch)
}

/// The hidden state at each row's last real token, (batch, seq_len, hidden) → (batch, hidden).
pub fn last_token_hidden(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let (batch, seq_len, _) = hidden.dims3()?;
    let lengths = attention_mask_rows(attention_mask, batch, seq_len)?;
    let rows = lengths
        .iter()
        .enumerate()
        .map(|(row, &n)| hidden.i((row, n - 1)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one last-token gather (scoring's and training's): the values at positions
    /// `length − 1` of each row, and a gradient of 1 at exactly those positions.
    #[test]
    fn last_token_values_reads_each_rows_last_real_token_and_passes_gradients() {
        let values = candle_core::Var::from_tensor(
            &Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 0, 0]], &Device::Cpu).unwrap();
        let last = last_token_values(values.as_tensor(), &mask).unwrap();
        // Row 0 has 3 real tokens → position 2 (3.); row 1 has 1 → position 0 (4.).
        assert_eq!(last.to_vec1::<f32>().unwrap(), vec![3., 4.]);
        let grads = last.sum_all().unwrap().backward().unwrap();
        let grad = grads.get(values.as_tensor()).unwrap();
        assert_eq!(
            grad.to_vec2::<f32>().unwrap(),
            vec![vec![0., 0., 1.], vec![1., 0., 0.]]
        );
        // A u8 mask (the trainer's old dtype) reads the same rows.
        let mask_u8 = mask.to_dtype(DType::U8).unwrap();
        let again = last_token_values(values.as_tensor(), &mask_u8).unwrap();
        assert_eq!(again.to_vec1::<f32>().unwrap(), vec![3., 4.]);
    }
}

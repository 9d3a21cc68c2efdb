//! Gradient checkpointing (`qrm-train --checkpoint-layers`): layer by layer, exact.
//!
//! Without it a micro-batch's loss graph is built whole, so every intermediate tensor of every
//! trained layer (attention scores, MLP activations, …) lives until the backward pass. With it
//! the trained layers run forward one at a time from a *detached* input, each layer's input is
//! kept and its graph dropped; the loss is built from the top layer's output made a leaf
//! (`Var`), through the final norm, the head and the loss, whose backward gives the gradients
//! of the head and the norm and g = ∂loss/∂(top layer's output). Then, from the top layer
//! down, each layer is re-run from its kept input (a leaf) and the surrogate `sum(out ⊙ g)` is
//! backpropagated: its gradients are exactly the layer's parameter gradients, and the gradient
//! of its input is the next g. When the whole model trains from tokens, the embedding's
//! gradient comes the same way from `sum(embed(ids) ⊙ g)`. Held at once: one input per trained
//! layer plus one layer's graph, instead of every layer's graph; paid: one more forward of the
//! trained layers.
//!
//! The gradients are those of the whole graph (tests in `src/train/run.rs`, to 1e-6) for a
//! cached trunk (`--train-layers K --cache`), from tokens (the frozen bottom runs without any
//! graph), for both objectives (the contrastive loss reads the final-norm hidden states, which
//! come from the leaf), and for LoRA with dropout: the dropout generator's position is saved
//! before each layer's first forward and restored for its re-run, so the re-run draws the same
//! masks, and after the backward it is put where the first forward left it, so the next
//! micro-batch draws what it would have drawn without checkpointing.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{Error, Result};
use crate::model::lora::LoraDropout;
use crate::model::reward_model::{RewardModel, RewardOutput};
use crate::train::trainer::BatchInput;

/// A reward model whose layers `first_layer..`, final norm and head train, as
/// [`crate::train::run::TopLayers`] holds it.
pub struct LayerStack<'a> {
    pub model: &'a RewardModel,
    pub first_layer: usize,
    /// The adapters' dropout, when they drop out.
    pub dropout: Option<&'a LoraDropout>,
}

impl LayerStack<'_> {
    /// One micro-batch's forward and backward with layer checkpointing: `loss` builds the
    /// scalar to differentiate (already weighted) from the model's output, and every gradient
    /// store of the backward passes (the head's and norm's, then one per trained layer from the
    /// top, then the embedding's) goes to `absorb`, which takes the gradients of the trainable
    /// variables out of it; each variable appears in one store only.
    ///
    /// # Shapes
    /// `input` as for [`crate::train::trainer::TrainableRewardModel::forward_batch`].
    pub fn backward(
        &self,
        input: &BatchInput,
        loss: &mut dyn FnMut(&RewardOutput) -> Result<Tensor>,
        absorb: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<()> {
        let transformer = &self.model.transformer;
        let layers = self.first_layer..transformer.num_layers();
        let context = transformer.layer_context(&input.attention_mask)?;
        // The hidden state entering the first trained layer, without a graph.
        let mut hidden = match &input.trunk_hidden {
            Some(trunk) => trunk.to_dtype(transformer.dtype())?.detach(),
            None => {
                let mut xs = transformer.embed(&input.input_ids)?.detach();
                for index in 0..self.first_layer {
                    xs = transformer.run_layer(index, &xs, &context)?.detach();
                }
                xs
            }
        };
        // Forward: keep each trained layer's input and the dropout's position before it.
        let mut kept = Vec::with_capacity(layers.len());
        for index in layers.clone() {
            kept.push((hidden.clone(), self.dropout.map(LoraDropout::state)));
            hidden = transformer.run_layer(index, &hidden, &context)?.detach();
        }
        let after_forward = self.dropout.map(LoraDropout::state);
        // The loss from the top layer's output as a leaf: head and norm gradients, and g.
        let top = Var::from_tensor(&hidden)?;
        drop(hidden);
        let final_hidden = transformer.final_norm(top.as_tensor())?;
        let token_rewards = self.model.rewards_from_hidden(&final_hidden)?;
        let total = loss(&RewardOutput {
            hidden: final_hidden,
            token_rewards,
        })?;
        let mut gradient = {
            let store = total.backward()?;
            absorb(&store)?;
            input_gradient(&store, &top)?
        };
        // Backward: re-run each layer from its input and backpropagate sum(out ⊙ g).
        for (index, (layer_input, dropout_state)) in layers.rev().zip(kept.into_iter().rev()) {
            if let (Some(dropout), Some(state)) = (self.dropout, &dropout_state) {
                dropout.restore(state);
            }
            let leaf = Var::from_tensor(&layer_input)?;
            drop(layer_input);
            let out = transformer.run_layer(index, leaf.as_tensor(), &context)?;
            let store = (out * &gradient)?.sum_all()?.backward()?;
            absorb(&store)?;
            gradient = input_gradient(&store, &leaf)?;
        }
        if let (Some(dropout), Some(state)) = (self.dropout, &after_forward) {
            dropout.restore(state);
        }
        // The embedding trains only with the whole model from tokens.
        if input.trunk_hidden.is_none() && self.first_layer == 0 {
            let embedded = transformer.embed(&input.input_ids)?;
            if embedded.track_op() {
                absorb(&(embedded * &gradient)?.sum_all()?.backward()?)?;
            }
        }
        Ok(())
    }
}

/// The gradient that reached `leaf`, without a graph of its own (zeros when none reached it).
fn input_gradient(store: &GradStore, leaf: &Var) -> Result<Tensor> {
    match store.get(leaf.as_tensor()) {
        Some(gradient) => Ok(gradient.detach()),
        None => Ok(leaf.as_tensor().zeros_like()?),
    }
}

/// The error for a model that cannot be checkpointed layer by layer.
pub fn unsupported() -> Error {
    Error::Usage("--checkpoint-layers: this model cannot be checkpointed layer by layer".into())
}

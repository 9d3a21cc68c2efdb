//! The reward model: transformer backbone, heads, checkpoint loading, prompt encoding and
//! batching — what training ([`crate::train`]) and scoring ([`crate::score`]) share. Nothing
//! here depends on either.
//!
//! - [`Checkpoint::load`] reads a Hugging Face model directory (`config.json`, `*.safetensors`,
//!   sharded or not) or a llama.cpp `.gguf` (dequantised, Q/K permutation undone) into named
//!   tensors; [`gguf::load_tokenizer`] gives the matching tokenizer (`tokenizer.json`, or rebuilt
//!   from the GGUF metadata).
//! - [`Transformer`] (llama / qwen2) returns every token's final hidden state for right-padded
//!   batches; [`Kernels::Fused`] for inference, [`Kernels::Differentiable`] when gradients flow.
//! - [`ValueHead`] (linear or the paper's MLP) and [`RewardModel`] = backbone + head:
//!   `RewardModel::load` for inference, `RewardModel::trainable` with a `VarMap` for training,
//!   `RewardModel::save` writes a directory transformers loads.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! # fn main() -> qrm::Result<()> {
//! let model = qrm::model::RewardModel::load("runs/rm", &Device::Cpu, DType::F32)?;
//! let tokenizer = qrm::model::gguf::load_tokenizer("runs/rm".as_ref())?;
//! let ids = tokenizer.encode("1 + 1 = 2", false).map_err(|e| qrm::Error::Model(e.to_string()))?;
//! let ids = Tensor::new(ids.get_ids(), &Device::Cpu)?.unsqueeze(0)?; // (1, seq_len)
//! let mask = ids.ones_like()?;
//! let out = model.forward(&ids, &mask)?; // hidden (1, seq_len, H), token_rewards (1, seq_len)
//! let reward = qrm::model::last_token_values(&out.token_rewards, &mask)?; // (1)
//! # Ok(()) }
//! ```

pub mod batching;
pub mod checkpoint;
pub mod config;
pub mod cpu_kernels;
pub mod device;
pub mod gguf;
pub mod head;
pub mod loading;
pub mod lora;
pub mod record;
pub mod reward_model;
pub mod template;
pub mod transformer;

pub use checkpoint::Checkpoint;
pub use config::{Family, ModelConfig};
pub use device::{DeviceChoice, DtypeChoice};
pub use head::{HeadKind, HeadLayout, ValueHead};
pub use reward_model::{last_token_hidden, last_token_values, RewardModel, RewardOutput};
pub use transformer::{Kernels, KvCache, Transformer};

//! The reward model: transformer backbone, heads, losses and training.

pub mod batching;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod fit;
pub mod gguf;
pub mod goal;
pub mod head;
pub mod inference;
pub mod loss;
pub mod optim;
pub mod reward_model;
pub mod sampling;
pub mod scoring;
pub mod template;
pub mod train;
pub mod transformer;
pub mod trunk;

pub use checkpoint::Checkpoint;
pub use config::{Family, ModelConfig};
pub use device::DeviceChoice;
pub use head::{HeadKind, HeadLayout, ValueHead};
pub use reward_model::{last_token_hidden, last_token_values, RewardModel, RewardOutput};
pub use transformer::{Kernels, Transformer};

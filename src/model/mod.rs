//! The reward model: transformer backbone, heads, losses and training.
pub mod batching;
pub mod goal;
pub mod scoring;
pub mod template;

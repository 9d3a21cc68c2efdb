//! The reward model: transformer backbone, heads, losses and training.
pub mod batching;
pub mod goal;
pub mod inference;
pub mod scoring;
pub mod template;

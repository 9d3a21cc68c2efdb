//! The reward model: transformer backbone, heads, losses and training.
pub mod batching;
pub mod fit;
pub mod goal;
pub mod loss;
pub mod optim;
pub mod sampling;
pub mod scoring;
pub mod template;
pub mod train;
pub mod trunk;

//! The reward model: transformer backbone, heads, losses and training.
pub mod checkpoint;
pub mod fit;
pub mod loss;
pub mod optim;
pub mod sampling;
pub mod train;

//! The reward model: transformer backbone, heads, losses and training.

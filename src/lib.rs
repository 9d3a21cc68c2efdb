//! qrm: goal-conditioned ("Q-function") reward models as composable tools over Parquet.
//!
//! The library holds everything the `qrm-*` binaries do: [`pipeline`] (data in and out),
//! [`model`] (transformer, heads, loading, encoding, batching), [`train`] (losses, sampling,
//! optimiser, the training loop), [`memory`] (the process's peak resident set), [`score`]
//! (scoring tables, goal states), [`serve`] (the reward-model server), [`metrics`]
//! (statistics), [`plot`] (figures), [`cli`] (what the binaries share) and [`testing`] (what the
//! test suites share).

pub mod cli;
pub mod error;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod plot;
pub mod score;
pub mod serve;
#[doc(hidden)]
pub mod testing;
pub mod train;

pub use error::{Error, Result};

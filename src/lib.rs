//! qrm: goal-conditioned ("Q-function") reward models as composable tools over Parquet.
//!
//! The library holds everything the `qrm-*` binaries do: [`pipeline`] (data in and out),
//! [`model`] (transformer, heads, losses, training), [`metrics`] (statistics) and [`cli`]
//! (what the binaries share).

pub mod cli;
pub mod error;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod plot;

pub use error::{Error, Result};

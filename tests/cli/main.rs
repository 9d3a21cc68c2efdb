//! qrm's integration tests, one test binary (one link step instead of nine): each module
//! drives the release-shaped binaries or the library end to end. Helpers they share live in
//! [`support`] and in `qrm::testing`.

mod support;

mod cli_common;
mod cli_data;
mod lora;
mod metrics_cli;
mod metrics_reference;
mod model;
mod plot_cli;
mod score_cli;
mod serve_cli;
mod synth;
mod train;

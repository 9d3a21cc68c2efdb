//! Statistics over plain slices: AUROC, confidence intervals, filtering, majority voting,
//! calibrated filtering thresholds, within-group (per-question) AUROC.
pub mod auroc;
pub mod calibration;
pub mod checks;
pub mod filter;
pub mod localisation;
pub mod report;
pub mod stats;
pub mod steps;
pub mod within;

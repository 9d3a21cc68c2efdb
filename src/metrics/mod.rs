//! Statistics over plain slices: AUROC, confidence intervals, filtering, majority voting.
pub mod auroc;

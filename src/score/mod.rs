//! Scoring with a trained reward model: rewards, per-token rewards and Q-values for a table of
//! generations ([`scoring`]: batches, resumable chunked runs, shards and their merge), and goal
//! states ([`goal`]: the mean final-token state of chosen responses, paper Eq. 7). Depends on
//! [`crate::model`], not on [`crate::train`].

pub mod goal;
pub mod scoring;

//! Scoring with a trained reward model: rewards, per-token rewards and Q-values for a table of
//! generations ([`rows`]: one row's scores and the columns they become; [`run`]: the resumable
//! chunked run over a table, its partial directory and manifest; [`shards`]: `--shard` and the
//! merge of the parts; [`scoring`] re-exports what callers use), and goal states ([`goal`]: the
//! mean final-token state of chosen responses, paper Eq. 7). Depends on [`crate::model`], not
//! on [`crate::train`].

pub mod goal;
pub mod rows;
pub mod run;
pub mod scoring;
pub mod shards;
#[cfg(test)]
pub(crate) mod test_support;

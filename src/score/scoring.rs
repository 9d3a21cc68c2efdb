//! The scorer's public API in one place, for the binaries and other modules: row scoring
//! ([`crate::score::rows`]), the resumable chunked run ([`crate::score::run`]: [`Scorer`],
//! the partial directory and its manifest) and shards with their merge
//! ([`crate::score::shards`]).

pub use crate::score::rows::{
    score_columns, score_encoded, score_frame, scored_tokens, RowScore, ScoreOptions, ScoreSummary,
};
pub use crate::score::run::{Provenance, RunManifest, RunOptions, Scorer, MANIFEST};
pub use crate::score::shards::{merge_shards, select_shard, Shard, ShardSpec};

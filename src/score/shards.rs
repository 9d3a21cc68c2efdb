//! Shards and their merge: `--shard i/n` scores the rows whose input index is `i` mod `n` and
//! keeps a `row_index` column ([`select_shard`]); [`merge_shards`] joins the parts back into
//! input order, checking that they cover the input exactly.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::pipeline::io::read_table;
use crate::pipeline::schema::ROW_INDEX;

/// `--shard i/n`: the rows whose input index is `i` modulo `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}`: expected i/n, e.g. 0/4"))?;
        let index: usize = index.trim().parse().map_err(|e| format!("`{text}`: {e}"))?;
        let count: usize = count.trim().parse().map_err(|e| format!("`{text}`: {e}"))?;
        if count == 0 || index >= count {
            return Err(format!("`{text}`: need 0 <= i < n"));
        }
        Ok(Shard { index, count })
    }
}

/// Keeps the rows of a shard and adds `row_index` (their input position).
pub fn select_shard(frame: &DataFrame, path: &Path, shard: Shard) -> Result<DataFrame> {
    if frame.column(ROW_INDEX).is_ok() {
        return Err(Error::Format {
            path: path.to_owned(),
            message: format!("the input already has a `{ROW_INDEX}` column"),
        });
    }
    let indices: Vec<u64> = (0..frame.height() as u64)
        .filter(|i| *i % shard.count as u64 == shard.index as u64)
        .collect();
    let take = IdxCa::from_vec(
        PlSmallStr::EMPTY,
        indices.iter().map(|&i| i as IdxSize).collect(),
    );
    let mut selected = frame.take(&take).map_err(|e| Error::table(path, e))?;
    selected
        .with_column(Column::new(ROW_INDEX.into(), indices))
        .map_err(|e| Error::table(path, e))?;
    Ok(selected)
}

/// The frames one after another, rechunked; `None` for no frames.
pub(crate) fn concat_frames(frames: Vec<DataFrame>, path: &Path) -> Result<Option<DataFrame>> {
    let mut frames = frames.into_iter();
    let Some(mut joined) = frames.next() else {
        return Ok(None);
    };
    for frame in frames {
        joined
            .vstack_mut(&frame)
            .map_err(|e| Error::table(path, e))?;
    }
    joined.rechunk_mut();
    Ok(Some(joined))
}

/// Joins shard outputs (each with a `row_index` column) back into input order, checking that
/// every row index from 0 to the total appears exactly once, and drops `row_index`.
pub fn merge_shards(parts: &[PathBuf]) -> Result<DataFrame> {
    let mut frames = Vec::with_capacity(parts.len());
    for part in parts {
        let frame = read_table(part)?;
        if frame.column(ROW_INDEX).is_err() {
            return Err(Error::MissingColumn {
                path: part.clone(),
                column: ROW_INDEX.to_owned(),
                available: frame
                    .get_column_names()
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        frames.push(frame);
    }
    let shown = Path::new("<merged shards>");
    let Some(joined) = concat_frames(frames, shown)? else {
        return Err(Error::Usage("merge needs at least one part".into()));
    };
    let joined = joined
        .sort([ROW_INDEX], SortMultipleOptions::default())
        .map_err(|e| Error::table(shown, e))?;
    let index = joined
        .column(ROW_INDEX)
        .and_then(|c| c.cast(&DataType::UInt64))
        .map_err(|e| Error::table(shown, e))?;
    let index = index.u64().map_err(|e| Error::table(shown, e))?;
    for (expected, found) in index.iter().enumerate() {
        if found != Some(expected as u64) {
            return Err(Error::Format {
                path: shown.to_owned(),
                message: format!(
                    "the parts do not cover the input exactly: row_index {expected} is {}",
                    match found {
                        Some(found) if found < expected as u64 => "duplicated",
                        _ => "missing",
                    }
                ),
            });
        }
    }
    joined.drop(ROW_INDEX).map_err(|e| Error::table(shown, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_spec_parses_and_rejects_out_of_range() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
    }
}

//! Shards and their merge: `--shard i/n` scores the rows whose input index is `i` mod `n` and
//! keeps a `row_index` column ([`select_shard`]); [`merge_shards`] joins the parts back into
//! input order, checking that they cover the input exactly.
//!
//! On a job scheduler `--shard env` ([`ShardSpec::Env`]) reads the shard from the array job's
//! environment ([`Shard::from_env`]): Slurm's `SLURM_ARRAY_TASK_ID` (from
//! `SLURM_ARRAY_TASK_MIN` in steps of `SLURM_ARRAY_TASK_STEP`, so `--array=1-4` works) of
//! `SLURM_ARRAY_TASK_COUNT`, or a
//! Kubernetes Indexed Job's `JOB_COMPLETION_INDEX` of `--shard-count` (the Job's
//! `completions`). docs/sharded-scoring.md has a Slurm script and a Job manifest.

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

/// `--shard`'s value: `i/n`, or `env` for the array index of a scheduler's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    Fixed(Shard),
    Env,
}

impl std::str::FromStr for ShardSpec {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if text == "env" {
            Ok(ShardSpec::Env)
        } else {
            text.parse().map(ShardSpec::Fixed)
        }
    }
}

impl ShardSpec {
    /// The shard: a fixed one as given, `env` from the process environment
    /// ([`Shard::from_env`]). `count` (`--shard-count`) is only for `env`.
    pub fn resolve(self, count: Option<usize>) -> Result<Shard> {
        match self {
            ShardSpec::Fixed(_) if count.is_some() => Err(Error::Usage(
                "--shard-count goes with --shard env only (i/n names its count)".into(),
            )),
            ShardSpec::Fixed(shard) => Ok(shard),
            ShardSpec::Env => Shard::from_env(|name| std::env::var(name).ok(), count),
        }
    }
}

impl Shard {
    /// The shard of an array job from its environment (`var` looks a variable up): Slurm's
    /// `(SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP` (min 0 and step 1
    /// when unset; an `--array=a-b[:step]` range) of `SLURM_ARRAY_TASK_COUNT`
    /// (or `count` when given), else Kubernetes' `JOB_COMPLETION_INDEX` of `count`. Neither
    /// set, an unparsable value or an index outside the count is a usage error.
    pub fn from_env(var: impl Fn(&str) -> Option<String>, count: Option<usize>) -> Result<Shard> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|value| {
                    value.trim().parse::<usize>().map_err(|_| {
                        Error::Usage(format!("--shard env: {name}={value:?} is not a number"))
                    })
                })
                .transpose()
        };
        let (index, count, source) = if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let offset = id.checked_sub(min).ok_or_else(|| {
                Error::Usage(format!(
                    "--shard env: SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                ))
            })?;
            if offset % step != 0 {
                return Err(Error::Usage(format!(
                    "--shard env: SLURM_ARRAY_TASK_ID {id} is not on the array's range \
                     {min}-…:{step}; use --array=a-b[:step]"
                )));
            }
            let index = offset / step;
            let count = match count {
                Some(count) => count,
                None => number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                    Error::Usage(
                        "--shard env: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT \
                         is not; pass --shard-count"
                            .into(),
                    )
                })?,
            };
            (index, count, "SLURM_ARRAY_TASK_ID")
        } else if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = count.ok_or_else(|| {
                Error::Usage(
                    "--shard env with JOB_COMPLETION_INDEX needs --shard-count (the Job's \
                     completions)"
                        .into(),
                )
            })?;
            (index, count, "JOB_COMPLETION_INDEX")
        } else {
            return Err(Error::Usage(
                "--shard env: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set".into(),
            ));
        };
        if count == 0 || index >= count {
            return Err(Error::Usage(format!(
                "--shard env: {source} gives shard {index} of {count}; need 0 <= i < n"
            )));
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
        assert_eq!("env".parse::<ShardSpec>(), Ok(ShardSpec::Env));
        assert_eq!(
            "2/3".parse::<ShardSpec>(),
            Ok(ShardSpec::Fixed(Shard { index: 2, count: 3 }))
        );
        assert!("envy".parse::<ShardSpec>().is_err());
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn shard_from_the_environment_of_slurm_and_kubernetes_array_jobs() {
        let shard = |index, count| Shard { index, count };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(Shard::from_env(&slurm, None).unwrap(), shard(2, 4));
        // --array=1-4: ids 1..=4 are shards 0..=3.
        let from_one = env(&[
            ("SLURM_ARRAY_TASK_ID", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(Shard::from_env(&from_one, None).unwrap(), shard(3, 4));
        // --array=0-15:4: ids 0, 4, 8, 12 are shards 0..=3.
        let stepped = env(&[
            ("SLURM_ARRAY_TASK_ID", "8"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_STEP", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(Shard::from_env(&stepped, None).unwrap(), shard(2, 4));
        // --shard-count overrides the array's count.
        assert_eq!(Shard::from_env(&slurm, Some(8)).unwrap(), shard(2, 8));
        let kubernetes = env(&[("JOB_COMPLETION_INDEX", "0")]);
        assert_eq!(Shard::from_env(&kubernetes, Some(3)).unwrap(), shard(0, 3));
        let usage = |result: Result<Shard>, needle: &str| {
            let error = result.unwrap_err();
            assert!(matches!(error, Error::Usage(_)), "{error}");
            assert!(error.to_string().contains(needle), "{error}");
        };
        usage(Shard::from_env(&kubernetes, None), "needs --shard-count");
        usage(Shard::from_env(env(&[]), Some(2)), "neither");
        usage(
            Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "3")]), Some(3)),
            "shard 3 of 3",
        );
        usage(
            Shard::from_env(env(&[("SLURM_ARRAY_TASK_ID", "x")]), None),
            "is not a number",
        );
        usage(
            Shard::from_env(env(&[("SLURM_ARRAY_TASK_ID", "1")]), None),
            "pass --shard-count",
        );
        usage(
            ShardSpec::Fixed(Shard { index: 0, count: 2 }).resolve(Some(2)),
            "--shard env only",
        );
    }
}

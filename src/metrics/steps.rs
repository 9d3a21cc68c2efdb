//! Step-level items: one item per human-rated step of a scored response (PRM800K), labelled by
//! the step's rating and scored at the step's last token, for `qrm-auroc --steps`.
//!
//! Two layouts of ratings are read:
//!
//! * `step_rating` (one scalar per row, `qrm-import --from prm800k`): the row's response ends
//!   with the rated step, so the item is the row itself and its scores are the row's own:
//!   `reward` and `q_last` (the Q-value at the response's final scored token, the EOS when one
//!   was appended) are exactly "at the end of the rated step".
//! * `step_ratings` (a list per row, aligned with `step_starts`; null entries are unrated
//!   steps): several steps of one response carry ratings. Step k ends at the last scored token
//!   that starts before step k+1 (`token_offsets`, from `qrm-score --emit-tokens`; for the
//!   last step, the final token); its item is the response prefix up to that token:
//!   `token_rewards` and `q_values` cut there, `reward` the value head there. A step with no
//!   scored token (cut away by `--max-len`) is left out and counted.
//!
//! Labels: +1 is positive, −1 negative, 0 (neutral) excluded unless [`NeutralSteps`] says
//! otherwise. Item samples are `{sample}/step{k}` in the list layout (so each item is one
//! generation to the checks and `--compare`); the columns `step` (0-based) and `step_rating`
//! are added.

use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::metrics::report::float_lists;
use crate::pipeline::import::STEP_STARTS;
use crate::pipeline::schema::{
    Columns, IS_CORRECT, Q_VALUES, REWARD, SAMPLE, STEP_INDEX, STEP_RATING, TOKEN_OFFSETS,
    TOKEN_REWARDS,
};

/// List column of per-step ratings aligned with `step_starts` (-1, 0, 1 or null = unrated).
pub const STEP_RATINGS: &str = "step_ratings";
/// Output column of [`step_items`]: the 0-based index of the item's step in its response.
pub const STEP: &str = "step";

/// What a neutral (0) step counts as in step-level AUROC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NeutralSteps {
    /// Left out: good (+1) against bad (−1) steps only.
    #[default]
    Exclude,
    /// With the good steps (no error).
    Positive,
    /// With the bad steps.
    Negative,
}

/// The items and what was left out.
#[derive(Debug)]
pub struct StepItems {
    /// One row per step item: the input's columns, rescored at the step (see the module docs).
    pub frame: DataFrame,
    /// Rated steps seen (before exclusions).
    pub rated: usize,
    /// Neutral steps left out ([`NeutralSteps::Exclude`]).
    pub neutral_excluded: usize,
    /// Steps left out because no scored token falls before the next step (truncation).
    pub unscored: usize,
}

/// The index of the last token of each step: the last token whose start (a char offset in
/// the response) comes before the next step's start; for the last step, the final token.
/// `None` where no token starts inside the step (it was cut away): the last token before the
/// next step then starts in an earlier step. A cut inside the last scored step leaves that
/// step ending at the EOS, which cannot be told apart from a whole step.
pub fn step_end_tokens(token_offsets: &[u32], step_starts: &[u32]) -> Vec<Option<usize>> {
    (0..step_starts.len())
        .map(|k| {
            let next = step_starts.get(k + 1).copied().unwrap_or(u32::MAX);
            let end = token_offsets.iter().rposition(|&start| start < next)?;
            // A step that no scored token starts in (cut by truncation) has no end of its own.
            (token_offsets[end] >= step_starts[k] || k == 0).then_some(end)
        })
        .collect()
}

/// One step item: the input row, the step, its rating and the last token (None: the whole
/// response, the scalar layout).
struct Item {
    row: usize,
    step: i32,
    rating: i8,
    end: Option<usize>,
}

/// Builds the step items of a scores table (see the module docs).
pub fn step_items(frame: &DataFrame, path: &Path, neutral: NeutralSteps) -> Result<StepItems> {
    let columns = Columns::new(frame, path);
    let mut items = Vec::new();
    let mut rated = 0;
    let mut neutral_excluded = 0;
    let mut unscored = 0;
    let keep = |rating: f64, neutral_excluded: &mut usize| -> Option<(i8, bool)> {
        let rating = rating as i8;
        match (rating, neutral) {
            (1, _) => Some((1, true)),
            (-1, _) => Some((-1, false)),
            (_, NeutralSteps::Positive) => Some((0, true)),
            (_, NeutralSteps::Negative) => Some((0, false)),
            _ => {
                *neutral_excluded += 1;
                None
            }
        }
    };
    let mut labels = Vec::new();
    let check_rating = |row: usize, column: &str, value: f64| -> Result<()> {
        if [-1.0, 0.0, 1.0].contains(&value) {
            Ok(())
        } else {
            Err(Error::bad_value(
                path,
                row,
                column,
                format!("rating {value} is not -1, 0 or 1"),
            ))
        }
    };
    let list_layout = columns.has(STEP_RATINGS);
    if list_layout {
        for name in [STEP_STARTS, TOKEN_OFFSETS] {
            if !columns.has(name) {
                return Err(Error::Format {
                    path: path.to_owned(),
                    message: format!(
                        "`{STEP_RATINGS}` needs `{name}` to find where each step ends \
                         (`{TOKEN_OFFSETS}` comes from `qrm-score --emit-tokens`)"
                    ),
                });
            }
        }
        let ratings = float_lists(&columns, STEP_RATINGS)?;
        let starts = float_lists(&columns, STEP_STARTS)?;
        let offsets = float_lists(&columns, TOKEN_OFFSETS)?;
        for row in 0..frame.height() {
            let Some(row_ratings) = &ratings[row] else {
                continue;
            };
            let Some(row_starts) = &starts[row] else {
                return Err(Error::bad_value(path, row, STEP_STARTS, "null"));
            };
            if row_starts.len() != row_ratings.len() {
                return Err(Error::bad_value(
                    path,
                    row,
                    STEP_RATINGS,
                    format!(
                        "{} ratings for {} steps in `{STEP_STARTS}`",
                        row_ratings.len(),
                        row_starts.len()
                    ),
                ));
            }
            let row_starts: Vec<u32> = row_starts.iter().map(|&s| s as u32).collect();
            let ends = match &offsets[row] {
                Some(o) => step_end_tokens(
                    &o.iter().map(|&v| v as u32).collect::<Vec<_>>(),
                    &row_starts,
                ),
                None => vec![None; row_starts.len()],
            };
            for (step, (&value, end)) in row_ratings.iter().zip(ends).enumerate() {
                if value.is_nan() {
                    continue;
                }
                check_rating(row, STEP_RATINGS, value)?;
                rated += 1;
                let Some((rating, label)) = keep(value, &mut neutral_excluded) else {
                    continue;
                };
                let Some(end) = end else {
                    unscored += 1;
                    continue;
                };
                items.push(Item {
                    row,
                    step: step as i32,
                    rating,
                    end: Some(end),
                });
                labels.push(label);
            }
        }
    } else {
        if !columns.has(STEP_RATING) {
            return Err(Error::Format {
                path: path.to_owned(),
                message: format!(
                    "--steps needs step ratings: `{STEP_RATING}` (the last step of each row, \
                     `qrm-import --from prm800k`) or `{STEP_RATINGS}` (a list aligned with \
                     `{STEP_STARTS}`)"
                ),
            });
        }
        let ratings = columns.f64(STEP_RATING)?;
        let steps = if columns.has(STEP_INDEX) {
            Some(columns.f64(STEP_INDEX)?)
        } else {
            None
        };
        for (row, value) in ratings.iter().enumerate() {
            let Some(value) = value else { continue };
            check_rating(row, STEP_RATING, value)?;
            rated += 1;
            let Some((rating, label)) = keep(value, &mut neutral_excluded) else {
                continue;
            };
            let step = steps.as_ref().and_then(|s| s.get(row)).unwrap_or(0.0) as i32;
            items.push(Item {
                row,
                step,
                rating,
                end: None,
            });
            labels.push(label);
        }
    }
    let take = IdxCa::from_vec(
        "index".into(),
        items.iter().map(|item| item.row as IdxSize).collect(),
    );
    let table = |e| Error::table(path, e);
    let mut out = frame.take(&take).map_err(table)?;
    let mut replace = |column: Column| -> Result<()> {
        out.with_column(column).map_err(table)?;
        Ok(())
    };
    replace(Column::new(IS_CORRECT.into(), labels))?;
    replace(Column::new(
        STEP.into(),
        items.iter().map(|item| item.step).collect::<Vec<i32>>(),
    ))?;
    replace(Column::new(
        STEP_RATING.into(),
        items.iter().map(|item| item.rating).collect::<Vec<i8>>(),
    ))?;
    if list_layout {
        let samples: Vec<String> = if columns.has(SAMPLE) {
            let text = frame
                .column(SAMPLE)
                .and_then(|c| c.cast(&DataType::String))
                .map_err(table)?;
            let text = text.str().map_err(table)?.clone();
            items
                .iter()
                .map(|item| format!("{}/step{}", text.get(item.row).unwrap_or("null"), item.step))
                .collect()
        } else {
            items
                .iter()
                .map(|item| format!("{}/step{}", item.row, item.step))
                .collect()
        };
        replace(Column::new(SAMPLE.into(), samples))?;
        let cut = |name: &str| -> Result<Option<Vec<Option<Vec<f64>>>>> {
            if !columns.has(name) {
                return Ok(None);
            }
            let lists = float_lists(&columns, name)?;
            Ok(Some(
                items
                    .iter()
                    .map(|item| {
                        let list = lists[item.row].as_ref()?;
                        let end = item.end?;
                        list.get(..=end).map(<[f64]>::to_vec)
                    })
                    .collect(),
            ))
        };
        for name in [TOKEN_REWARDS, Q_VALUES] {
            let Some(lists) = cut(name)? else { continue };
            if name == TOKEN_REWARDS {
                let rewards: Vec<Option<f64>> = lists
                    .iter()
                    .map(|list| list.as_ref().and_then(|l| l.last().copied()))
                    .collect();
                replace(Column::new(REWARD.into(), rewards))?;
            }
            let series: ListChunked = lists
                .into_iter()
                .map(|list| list.map(|values| Series::new("".into(), values)))
                .collect();
            replace(series.with_name(name.into()).into_series().into_column())?;
        }
        // The per-token columns no longer line up with the cut lists.
        for name in [TOKEN_OFFSETS, "tokens"] {
            if out.column(name).is_ok() {
                out = out.drop(name).map_err(table)?;
            }
        }
    }
    Ok(StepItems {
        frame: out,
        rated,
        neutral_excluded,
        unscored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_ends_are_the_last_token_before_the_next_step() {
        // Response "ab\ncd\nef" (steps at 0, 3, 6), tokens at 0 "ab", 2 "\n", 3 "cd", 5 "\n",
        // 6 "ef", 8 EOS: step 0 ends at the newline token 1, step 1 at token 3, step 2 (the
        // last) at the EOS, token 5.
        let offsets = [0, 2, 3, 5, 6, 8];
        assert_eq!(
            step_end_tokens(&offsets, &[0, 3, 6]),
            [Some(1), Some(3), Some(5)]
        );
        // Cut after "cd" (tokens 0, 2, 3, then the EOS at 8): step 1 ends at token 2 ("cd"),
        // and step 2's only token is the EOS, which cannot tell a cut step from a whole one
        // (hence `qrm-score --truncate skip` for step-level work).
        assert_eq!(
            step_end_tokens(&[0, 2, 3, 8], &[0, 3, 6]),
            [Some(1), Some(2), Some(3)]
        );
        // Cut inside step 0 (tokens 0 then EOS at 8): steps 1 and 2 have no token starting in
        // them before the EOS; step 1's last token before 6 is token 0, in step 0: None.
        assert_eq!(
            step_end_tokens(&[0, 8], &[0, 3, 6]),
            [Some(0), None, Some(1)]
        );
    }

    fn texts(frame: &DataFrame, name: &str) -> Vec<String> {
        let column = frame.column(name).unwrap().str().unwrap();
        column.iter().map(|v| v.unwrap().to_owned()).collect()
    }

    fn flags(frame: &DataFrame, name: &str) -> Vec<bool> {
        let column = frame.column(name).unwrap().bool().unwrap();
        column.iter().map(Option::unwrap).collect()
    }

    fn list_u32(name: &str, rows: &[&[u32]]) -> Column {
        let series: ListChunked = rows
            .iter()
            .map(|values| Some(Series::new("".into(), values.to_vec())))
            .collect();
        series.with_name(name.into()).into_series().into_column()
    }

    fn list_f32(name: &str, rows: &[Option<&[f32]>]) -> Column {
        let series: ListChunked = rows
            .iter()
            .map(|values| values.map(|v| Series::new("".into(), v.to_vec())))
            .collect();
        series.with_name(name.into()).into_series().into_column()
    }

    fn list_i8(name: &str, rows: &[&[Option<i8>]]) -> Column {
        let series: ListChunked = rows
            .iter()
            .map(|values| Some(Series::new("".into(), values.to_vec())))
            .collect();
        series.with_name(name.into()).into_series().into_column()
    }

    #[test]
    fn list_ratings_become_prefix_items_cut_at_each_step_end() {
        // One response "ab\ncd\nef" rated [+1, null, -1] and one "xy" rated [0].
        let frame = DataFrame::new(
            2,
            vec![
                Column::new("question_id".into(), ["q", "q"]),
                Column::new(SAMPLE.into(), ["a", "b"]),
                Column::new(IS_CORRECT.into(), [false, true]),
                Column::new(REWARD.into(), [0.6f32, 0.9]),
                list_u32(STEP_STARTS, &[&[0, 3, 6], &[0]]),
                list_i8(STEP_RATINGS, &[&[Some(1), None, Some(-1)], &[Some(0)]]),
                list_u32(TOKEN_OFFSETS, &[&[0, 2, 3, 5, 6, 8], &[0, 2]]),
                list_f32(
                    TOKEN_REWARDS,
                    &[Some(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), Some(&[0.8, 0.9])],
                ),
                list_f32(Q_VALUES, &[Some(&[1.0, 0.5, 0.4, 0.3, 0.2, 0.1]), None]),
            ],
        )
        .unwrap();
        let path = Path::new("s.parquet");
        let items = step_items(&frame, path, NeutralSteps::Exclude).unwrap();
        assert_eq!(
            (items.rated, items.neutral_excluded, items.unscored),
            (3, 1, 0)
        );
        let out = &items.frame;
        assert_eq!(out.height(), 2);
        let samples = texts(out, SAMPLE);
        assert_eq!(samples, ["a/step0", "a/step2"]);
        let labels = flags(out, IS_CORRECT);
        assert_eq!(labels, [true, false]);
        // Step 0 ends at token 1 (the newline): reward 0.2, q_values [1.0, 0.5].
        let columns = Columns::new(out, path);
        let rewards: Vec<f64> = columns.f64(REWARD).unwrap().into_no_null_iter().collect();
        assert_eq!(rewards, [0.2f32 as f64, 0.6f32 as f64]);
        let q = float_lists(&columns, Q_VALUES).unwrap();
        assert_eq!(q[0].as_deref(), Some(&[1.0, 0.5][..]));
        assert_eq!(q[1].as_ref().map(Vec::len), Some(6));
        assert!(out.column(TOKEN_OFFSETS).is_err());
        let steps: Vec<i32> = out
            .column(STEP)
            .unwrap()
            .i32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(steps, [0, 2]);
        // Neutral as positive: the "xy" step joins, scored at its EOS (0.9).
        let items = step_items(&frame, path, NeutralSteps::Positive).unwrap();
        assert_eq!(items.frame.height(), 3);
        let columns = Columns::new(&items.frame, path);
        assert_eq!(columns.f64(REWARD).unwrap().get(2), Some(0.9f32 as f64));
    }

    #[test]
    fn scalar_ratings_keep_the_row_as_the_item() {
        let frame = DataFrame::new(
            3,
            vec![
                Column::new("question_id".into(), ["q", "q", "r"]),
                Column::new(SAMPLE.into(), ["row0", "row1", "row2"]),
                Column::new(IS_CORRECT.into(), [true, true, false]),
                Column::new(REWARD.into(), [0.5f32, 0.25, 0.125]),
                Column::new(STEP_RATING.into(), [Some(1i8), Some(0), Some(-1)]),
                Column::new(STEP_INDEX.into(), [0i32, 1, 4]),
            ],
        )
        .unwrap();
        let path = Path::new("s.parquet");
        let items = step_items(&frame, path, NeutralSteps::Exclude).unwrap();
        let out = &items.frame;
        assert_eq!(out.height(), 2);
        let samples = texts(out, SAMPLE);
        assert_eq!(samples, ["row0", "row2"]);
        let steps: Vec<i32> = out
            .column(STEP)
            .unwrap()
            .i32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(steps, [0, 4]);
        let columns = Columns::new(out, path);
        let rewards: Vec<f64> = columns.f64(REWARD).unwrap().into_no_null_iter().collect();
        assert_eq!(rewards, [0.5, 0.125]);
        // Neutral as negative: row 1 is a negative item.
        let items = step_items(&frame, path, NeutralSteps::Negative).unwrap();
        let labels = flags(&items.frame, IS_CORRECT);
        assert_eq!(labels, [true, false, false]);
    }

    #[test]
    fn bad_ratings_and_missing_columns_are_errors() {
        let frame = DataFrame::new(1, vec![Column::new(STEP_RATING.into(), [2i8])]).unwrap();
        let error = step_items(&frame, Path::new("s.parquet"), NeutralSteps::Exclude).unwrap_err();
        assert!(error.to_string().contains("rating 2"), "{error}");
        let frame = DataFrame::new(1, vec![Column::new(REWARD.into(), [0.5f32])]).unwrap();
        let error = step_items(&frame, Path::new("s.parquet"), NeutralSteps::Exclude).unwrap_err();
        assert!(error.to_string().contains("step_rating"), "{error}");
    }
}

//! The row checks every metrics tool runs on a scores table before it computes anything:
//! missing or non-finite values (`reward`, `token_rewards`, `q_values`, …), one `rm` label with
//! several model identities (`rm_id`), and duplicated (`question_id`, `sample`, `rm`) rows.
//!
//! One rule for all of `qrm-auroc`, `qrm-filter` and `qrm-plot`: bad rows are an error naming
//! the file, the column and the first rows (1-based) with their count, unless the caller asks
//! to drop them (`--drop-nan`, `--drop-duplicates`), in which case the drops are counted on
//! stderr per column. Model identities are never dropped: pooled models are always an error.
//!
//! Without a `sample` column, row order is the sample: the k-th row of a (`question_id`, `rm`)
//! is its sample k, so such rows are never duplicates of each other. Without `question_id`
//! rows cannot be matched and are not checked for duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};

use crate::pipeline::schema::{Columns, QUESTION_ID, RM, RM_ID, SAMPLE};

/// How many rows an error message lists before it says "and N more".
const LISTED_ROWS: usize = 10;

/// What to do with rows that fail a check (both false: fail).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowChecks {
    /// Drop rows with a missing or non-finite value in a checked column.
    pub drop_nan: bool,
    /// Keep the first of rows sharing (`question_id`, `sample`, `rm`), drop the others.
    pub drop_duplicates: bool,
}

/// `rows` (0-based) as "2, 5, 9 and 3 more" (1-based).
pub fn list_rows(rows: &[usize]) -> String {
    let listed: Vec<String> = rows
        .iter()
        .take(LISTED_ROWS)
        .map(|r| (r + 1).to_string())
        .collect();
    let mut text = listed.join(", ");
    if rows.len() > LISTED_ROWS {
        text.push_str(&format!(" and {} more", rows.len() - LISTED_ROWS));
    }
    text
}

/// Rows (0-based) of `column` that are null or hold a non-finite number. A numeric column is
/// checked cell by cell; a List column is bad where the list is null or any item is null,
/// NaN or ±inf.
pub fn non_finite_rows(frame: &DataFrame, path: &Path, column: &str) -> Result<Vec<usize>> {
    let columns = Columns::new(frame, path);
    let is_list = frame
        .column(column)
        .map(|c| matches!(c.dtype(), DataType::List(_)))
        .unwrap_or(false);
    if !is_list {
        return Ok(columns
            .f64(column)?
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_some_and(f64::is_finite))
            .map(|(row, _)| row)
            .collect());
    }
    let lists = columns.f64_lists(column)?;
    let mut bad = Vec::new();
    for (row, list) in lists.series_iter().enumerate() {
        let finite = match list {
            None => false,
            Some(series) => series
                .f64()
                .map_err(|e| Error::table(path, e))?
                .iter()
                .all(|v| v.is_some_and(f64::is_finite)),
        };
        if !finite {
            bad.push(row);
        }
    }
    Ok(bad)
}

/// Checks `columns` for missing or non-finite values in the rows still in `keep`. Fails naming
/// every bad column with its rows, or under `drop_nan` clears those rows from `keep` and logs
/// how many each column dropped. Returns the number of rows dropped.
pub fn check_finite(
    frame: &DataFrame,
    path: &Path,
    columns: &[&str],
    drop_nan: bool,
    keep: &mut [bool],
) -> Result<usize> {
    let mut problems = Vec::new();
    let mut bad_by_column = Vec::new();
    for &column in columns {
        let bad: Vec<usize> = non_finite_rows(frame, path, column)?
            .into_iter()
            .filter(|&row| keep[row])
            .collect();
        if !bad.is_empty() {
            problems.push(format!(
                "column `{column}` is missing or not finite in {} row(s): {}",
                bad.len(),
                list_rows(&bad)
            ));
            bad_by_column.push((column, bad));
        }
    }
    if problems.is_empty() {
        return Ok(0);
    }
    if !drop_nan {
        return Err(Error::Format {
            path: path.to_owned(),
            message: format!(
                "{} (use --drop-nan to drop those samples)",
                problems.join("; ")
            ),
        });
    }
    let mut dropped = 0;
    for (column, rows) in bad_by_column {
        let newly = rows.iter().filter(|&&row| keep[row]).count();
        for row in rows.iter().copied() {
            keep[row] = false;
        }
        dropped += newly;
        tracing::warn!(
            "{}: dropped {} row(s) with a missing or non-finite `{column}` (--drop-nan)",
            path.display(),
            rows.len()
        );
    }
    Ok(dropped)
}

/// The text of a Utf8-castable column, row by row (null → None).
fn text_column(frame: &DataFrame, path: &Path, name: &str) -> Result<Vec<Option<String>>> {
    let text = frame
        .column(name)
        .and_then(|c| c.cast(&DataType::String))
        .map_err(|e| Error::table(path, e))?;
    let text = text.str().map_err(|e| Error::table(path, e))?;
    Ok(text.iter().map(|v| v.map(str::to_owned)).collect())
}

/// Fails when one `rm` label covers rows with different `rm_id`s (scores of different models
/// that would be pooled). A table without `rm` or `rm_id` passes.
pub fn check_model_identity(frame: &DataFrame, path: &Path, keep: &[bool]) -> Result<()> {
    let columns = Columns::new(frame, path);
    if !columns.has(RM) || !columns.has(RM_ID) {
        return Ok(());
    }
    let labels = text_column(frame, path, RM)?;
    let ids = text_column(frame, path, RM_ID)?;
    let mut ids_by_label: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for row in (0..frame.height()).filter(|&row| keep[row]) {
        ids_by_label
            .entry(labels[row].as_deref().unwrap_or("null"))
            .or_default()
            .insert(ids[row].as_deref().unwrap_or("null"));
    }
    let pooled: Vec<String> = ids_by_label
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(label, ids)| {
            let ids: Vec<&str> = ids.iter().copied().collect();
            format!(
                "`{RM}` `{label}` has {} different `{RM_ID}`s ({})",
                ids.len(),
                ids.join(", ")
            )
        })
        .collect();
    if pooled.is_empty() {
        return Ok(());
    }
    Err(Error::Format {
        path: path.to_owned(),
        message: format!(
            "{}: these are scores of different models under one label and would be pooled; \
             score each model with `qrm-score --rm-name NAME` so that each has its own label",
            pooled.join("; ")
        ),
    })
}

/// The `rm_id` of each `rm` label over the rows in `keep` (the first one met; after
/// [`check_model_identity`] there is one). Empty for a table without `rm` or `rm_id`.
pub fn model_ids(
    frame: &DataFrame,
    path: &Path,
    keep: &[bool],
) -> Result<BTreeMap<String, String>> {
    let columns = Columns::new(frame, path);
    let mut ids = BTreeMap::new();
    if !columns.has(RM) || !columns.has(RM_ID) {
        return Ok(ids);
    }
    let labels = text_column(frame, path, RM)?;
    let row_ids = text_column(frame, path, RM_ID)?;
    for row in (0..frame.height()).filter(|&row| keep[row]) {
        ids.entry(labels[row].clone().unwrap_or_else(|| "null".to_owned()))
            .or_insert_with(|| row_ids[row].clone().unwrap_or_else(|| "null".to_owned()));
    }
    Ok(ids)
}

/// Each row's sample key: the `sample` column as text, or without one the row's position among
/// the rows of its (`question_id`, `rm`) (`#0`, `#1`, …), counting only rows in `keep`.
pub fn sample_keys(frame: &DataFrame, path: &Path, keep: &[bool]) -> Result<Vec<String>> {
    let columns = Columns::new(frame, path);
    if columns.has(SAMPLE) {
        return Ok(text_column(frame, path, SAMPLE)?
            .into_iter()
            .map(|v| v.unwrap_or_else(|| "null".to_owned()))
            .collect());
    }
    let question_ids = text_column(frame, path, QUESTION_ID)?;
    let rms = if columns.has(RM) {
        text_column(frame, path, RM)?
    } else {
        vec![None; frame.height()]
    };
    let mut seen: HashMap<(Option<&str>, Option<&str>), usize> = HashMap::new();
    let mut keys = vec![String::new(); frame.height()];
    for row in (0..frame.height()).filter(|&row| keep[row]) {
        let count = seen
            .entry((question_ids[row].as_deref(), rms[row].as_deref()))
            .or_default();
        keys[row] = format!("#{count}");
        *count += 1;
    }
    Ok(keys)
}

/// Rows in `keep` that repeat an earlier kept row's (`question_id`, `sample`, `rm`): fails
/// naming them, or under `drop_duplicates` keeps the first occurrence and logs the count.
/// Returns the number of rows dropped. A table without `question_id` passes.
pub fn check_duplicates(
    frame: &DataFrame,
    path: &Path,
    drop_duplicates: bool,
    keep: &mut [bool],
) -> Result<usize> {
    let columns = Columns::new(frame, path);
    if !columns.has(QUESTION_ID) || !columns.has(SAMPLE) {
        // Without `sample` every row is its own sample (see `sample_keys`).
        return Ok(0);
    }
    let question_ids = text_column(frame, path, QUESTION_ID)?;
    let samples = text_column(frame, path, SAMPLE)?;
    let rms = if columns.has(RM) {
        text_column(frame, path, RM)?
    } else {
        vec![None; frame.height()]
    };
    // (question_id, sample, rm) → first row holding it.
    type Key<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let mut first: HashMap<Key, usize> = HashMap::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for row in (0..frame.height()).filter(|&row| keep[row]) {
        let key = (
            question_ids[row].as_deref(),
            samples[row].as_deref(),
            rms[row].as_deref(),
        );
        if let Some(&earlier) = first.get(&key) {
            repeats.push((row, earlier));
        } else {
            first.insert(key, row);
        }
    }
    if repeats.is_empty() {
        return Ok(0);
    }
    if !drop_duplicates {
        let examples: Vec<String> = repeats
            .iter()
            .take(3)
            .map(|&(row, earlier)| {
                format!(
                    "row {} repeats row {} ({QUESTION_ID} {:?}, {SAMPLE} {:?}, {RM} {:?})",
                    row + 1,
                    earlier + 1,
                    question_ids[row].as_deref().unwrap_or("null"),
                    samples[row].as_deref().unwrap_or("null"),
                    rms[row].as_deref().unwrap_or("")
                )
            })
            .collect();
        let rows: Vec<usize> = repeats.iter().map(|&(row, _)| row).collect();
        return Err(Error::Format {
            path: path.to_owned(),
            message: format!(
                "{} duplicated ({QUESTION_ID}, {SAMPLE}, {RM}) row(s): {}; {} \
                 (use --drop-duplicates to keep the first of each)",
                rows.len(),
                list_rows(&rows),
                examples.join("; ")
            ),
        });
    }
    for &(row, _) in &repeats {
        keep[row] = false;
    }
    tracing::warn!(
        "{}: dropped {} duplicated ({QUESTION_ID}, {SAMPLE}, {RM}) row(s), kept the first of each \
         (--drop-duplicates)",
        path.display(),
        repeats.len()
    );
    Ok(repeats.len())
}

/// Rows kept and how many each check dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRows {
    pub keep: Vec<bool>,
    pub dropped_nan: usize,
    pub dropped_duplicates: usize,
}

/// The checks in order: non-finite values in `value_columns`, model identity, duplicates.
pub fn check_rows(
    frame: &DataFrame,
    path: &Path,
    value_columns: &[&str],
    options: RowChecks,
) -> Result<CheckedRows> {
    let mut keep = vec![true; frame.height()];
    let dropped_nan = check_finite(frame, path, value_columns, options.drop_nan, &mut keep)?;
    check_model_identity(frame, path, &keep)?;
    let dropped_duplicates = check_duplicates(frame, path, options.drop_duplicates, &mut keep)?;
    Ok(CheckedRows {
        keep,
        dropped_nan,
        dropped_duplicates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(name: &str, rows: &[Option<&[f32]>]) -> Column {
        let series: Vec<Option<Series>> = rows
            .iter()
            .map(|values| values.map(|v| Series::new("".into(), v.to_vec())))
            .collect();
        let mut chunked: ListChunked = series.into_iter().collect();
        chunked.rename(name.into());
        chunked.into_series().into()
    }

    fn frame() -> DataFrame {
        let q: [Option<&[f32]>; 4] = [
            Some(&[0.1, 0.2]),
            Some(&[0.1, f32::NAN]),
            None,
            Some(&[f32::NEG_INFINITY]),
        ];
        let columns = vec![
            Column::new(QUESTION_ID.into(), ["q0", "q0", "q1", "q0"]),
            Column::new(SAMPLE.into(), ["s0", "s1", "s0", "s0"]),
            Column::new(RM.into(), ["a"; 4]),
            Column::new("reward".into(), [0.5f32, 0.1, f32::INFINITY, 0.2]),
            list("q_values", &q),
        ];
        DataFrame::new(4, columns).unwrap()
    }

    #[test]
    fn non_finite_rows_look_inside_lists() {
        let frame = frame();
        let path = Path::new("t.parquet");
        // A NaN inside a response (row 2), a null list (3) and −inf (4) are all bad.
        assert_eq!(
            non_finite_rows(&frame, path, "q_values").unwrap(),
            vec![1, 2, 3]
        );
        assert_eq!(non_finite_rows(&frame, path, "reward").unwrap(), vec![2]);
    }

    #[test]
    fn finite_check_fails_naming_file_column_and_rows_or_drops_them() {
        let frame = frame();
        let path = Path::new("t.parquet");
        let mut keep = vec![true; 4];
        let error =
            check_finite(&frame, path, &["reward", "q_values"], false, &mut keep).unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("t.parquet: "), "{text}");
        assert!(text.contains("`reward` is missing or not finite in 1 row(s): 3"));
        assert!(text.contains("`q_values` is missing or not finite in 3 row(s): 2, 3, 4"));
        assert!(text.contains("--drop-nan"), "{text}");
        // Row 3 is bad in both columns: dropped once.
        assert_eq!(
            check_finite(&frame, path, &["reward", "q_values"], true, &mut keep).unwrap(),
            3
        );
        assert_eq!(keep, vec![true, false, false, false]);
    }

    #[test]
    fn many_rows_are_listed_with_a_count() {
        let rows: Vec<usize> = (0..12).collect();
        assert_eq!(list_rows(&rows), "1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more");
    }

    #[test]
    fn duplicates_fail_or_keep_the_first() {
        // Rows 1 and 4 share (q0, s0, a).
        let frame = frame();
        let path = Path::new("t.parquet");
        let mut keep = vec![true; 4];
        let error = check_duplicates(&frame, path, false, &mut keep).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("1 duplicated"), "{text}");
        assert!(text.contains("row 4 repeats row 1"), "{text}");
        assert!(text.contains("--drop-duplicates"), "{text}");
        assert_eq!(check_duplicates(&frame, path, true, &mut keep).unwrap(), 1);
        assert_eq!(keep, vec![true, true, true, false]);
    }

    #[test]
    fn without_a_sample_column_row_order_is_the_sample() {
        let mut frame = frame();
        frame.drop_in_place(SAMPLE).unwrap();
        let path = Path::new("t");
        let mut keep = vec![true; 4];
        assert_eq!(check_duplicates(&frame, path, false, &mut keep).unwrap(), 0);
        assert_eq!(
            sample_keys(&frame, path, &keep).unwrap(),
            vec!["#0", "#1", "#0", "#2"]
        );
    }

    #[test]
    fn one_label_with_two_model_ids_is_refused() {
        let mut frame = frame();
        let path = Path::new("t");
        let keep = vec![true; 4];
        // No `rm_id` column (older qrm): passes.
        check_model_identity(&frame, path, &keep).unwrap();
        let ids = [
            "a@000000000001",
            "a@000000000001",
            "a@0000000000ff",
            "a@000000000001",
        ];
        frame.with_column(Column::new(RM_ID.into(), ids)).unwrap();
        let text = check_model_identity(&frame, path, &keep)
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("`rm` `a` has 2 different `rm_id`s (a@000000000001, a@0000000000ff)"),
            "{text}"
        );
        assert!(text.contains("qrm-score --rm-name"), "{text}");
        // Without the odd row, one identity: passes.
        check_model_identity(&frame, path, &[true, true, false, true]).unwrap();
    }
}

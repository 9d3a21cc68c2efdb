//! From a scores table to report tables: AUROC per group and percentile ([`auroc`],
//! `qrm-auroc`), Q-filtering, top-K, correlation and localisation summaries ([`filter`],
//! `qrm-filter`) and Q-filtering at calibrated thresholds ([`calibrated`], `qrm-filter
//! --max-false-drop`/`--warmup`); here, what they share (group keys, list columns) and the
//! parsers of their flag values.
//!
//! Rows are grouped by the `by` columns (any type, compared as text); groups come out sorted.

pub mod auroc;
pub mod calibrated;
pub mod filter;

use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::pipeline::schema::Columns;

/// The text of each `by` column, row by row (null → "null").
pub(crate) fn group_keys(
    frame: &DataFrame,
    path: &Path,
    by: &[String],
) -> Result<Vec<Vec<String>>> {
    let columns = Columns::new(frame, path);
    let mut keys = vec![Vec::with_capacity(by.len()); frame.height()];
    for name in by {
        if !columns.has(name) {
            columns.f64(name)?; // the missing-column error, naming the file and columns
        }
        let text = frame
            .column(name)
            .and_then(|c| c.cast(&DataType::String))
            .map_err(|e| Error::table(path, e))?;
        let text = text.str().map_err(|e| Error::table(path, e))?;
        for (key, value) in keys.iter_mut().zip(text.iter()) {
            key.push(value.unwrap_or("null").to_owned());
        }
    }
    Ok(keys)
}

/// A List column of numbers as f64 vectors (null list → None, null item → NaN).
pub(crate) fn float_lists(columns: &Columns, name: &str) -> Result<Vec<Option<Vec<f64>>>> {
    let lists = columns.f64_lists(name)?;
    lists
        .series_iter()
        .map(|list| {
            list.map(|series| {
                series
                    .f64()
                    .map(|values| values.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
            })
            .transpose()
            .map_err(|e| Error::table(columns.path, e))
        })
        .collect()
}

/// A List column of numbers as f32 vectors (null list → None, null item → NaN).
pub(crate) fn float32_lists(columns: &Columns, name: &str) -> Result<Vec<Option<Vec<f32>>>> {
    Ok(float_lists(columns, name)?
        .into_iter()
        .map(|list| list.map(|values| values.into_iter().map(|v| v as f32).collect()))
        .collect())
}

/// One Utf8 column per `by` name from the group keys.
pub(crate) fn key_columns(by: &[String], keys: &[Vec<String>]) -> Vec<Column> {
    by.iter()
        .enumerate()
        .map(|(index, name)| {
            Column::new(
                name.as_str().into(),
                keys.iter().map(|k| k[index].as_str()).collect::<Vec<_>>(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------- flag values

/// The most values one `from:to:step` may give.
pub const MAX_SWEEP_VALUES: usize = 10_000;

/// Parses `from:to:step` into values from `from` to `to` inclusive, rounded to 1e-9 so that
/// `0:0.3:0.1` gives 0, 0.1, 0.2, 0.3. Usage errors: not three finite numbers, `step` ≤ 0,
/// `from` > `to`, more than [`MAX_SWEEP_VALUES`] values.
pub fn parse_sweep(text: &str) -> Result<Vec<f64>> {
    let usage = |why: String| Error::Usage(format!("`{text}`: {why}"));
    let parts: Vec<f64> = text
        .split(':')
        .map(|part| part.trim().parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| usage("expected from:to:step, three numbers".to_owned()))?;
    let [from, to, step] = parts[..] else {
        return Err(usage("expected from:to:step, three numbers".to_owned()));
    };
    if !(from.is_finite() && to.is_finite() && step.is_finite()) {
        return Err(usage("from, to and step must be finite".to_owned()));
    }
    if step <= 0.0 {
        return Err(usage(format!("step must be above 0, got {step}")));
    }
    if from > to {
        return Err(usage(format!("from ({from}) is above to ({to})")));
    }
    let steps = ((to - from) / step + 1e-9).floor();
    if steps + 1.0 > MAX_SWEEP_VALUES as f64 {
        return Err(usage(format!(
            "gives {} values, more than {MAX_SWEEP_VALUES}; use a larger step",
            steps + 1.0
        )));
    }
    Ok((0..=steps as usize)
        .map(|i| ((from + i as f64 * step) * 1e9).round() / 1e9)
        .collect())
}

/// Prefix fractions: `0,0.5,1` or `from:to:step`, every value in [0, 1].
pub fn parse_fractions(text: &str) -> Result<Vec<f64>> {
    let values = if text.contains(':') {
        parse_sweep(text)?
    } else {
        text.split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::Usage(format!("`{text}` is not a list of numbers")))?
    };
    if let Some(bad) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(Error::Usage(format!(
            "{bad} is outside [0, 1] (fractions of a response)"
        )));
    }
    Ok(values)
}

/// An interval level strictly between 0 and 1 (`0.95`).
pub fn parse_level(text: &str) -> Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(level) if level > 0.0 && level < 1.0 => Ok(level),
        _ => Err(Error::Usage(format!(
            "`{text}`: the level must be a number strictly between 0 and 1, e.g. 0.95"
        ))),
    }
}

/// A number strictly between 0 and 1 (a maximum false-drop rate α, a calibration share);
/// `what` names it in the error.
pub fn parse_open_unit(text: &str, what: &str) -> Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(value) if value > 0.0 && value < 1.0 => Ok(value),
        _ => Err(Error::Usage(format!(
            "`{text}`: {what} must be a number strictly between 0 and 1"
        ))),
    }
}

/// `from:to:step` ([`parse_sweep`]) of maximum false-drop rates, each strictly between 0 and 1.
pub fn parse_alpha_sweep(text: &str) -> Result<Vec<f64>> {
    let values = parse_sweep(text)?;
    if let Some(bad) = values.iter().find(|v| !(**v > 0.0 && **v < 1.0)) {
        return Err(Error::Usage(format!(
            "`{text}` gives α = {bad}: a maximum false-drop rate must be strictly between 0 \
             and 1"
        )));
    }
    Ok(values)
}

/// A finite number (a threshold).
pub fn parse_finite(text: &str) -> Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(Error::Usage(format!("`{text}` is not a finite number"))),
    }
}

/// Two different, non-empty `rm` names: `rmA,rmB`.
pub fn parse_compare(text: &str) -> Result<(String, String)> {
    match text.split_once(',') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(',') && a != b => {
            Ok((a.to_owned(), b.to_owned()))
        }
        _ => Err(Error::Usage(format!(
            "expected two different rm names, `rmA,rmB`, got `{text}`"
        ))),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Small scores tables the report tests share.
    use polars::prelude::*;

    use crate::pipeline::schema::{
        IS_CORRECT, QUESTION_ID, Q_VALUES, REWARD, RM, SAMPLE, TOKEN_REWARDS,
    };

    pub(crate) fn list(name: &str, rows: &[&[f32]]) -> Column {
        let series: Vec<Series> = rows
            .iter()
            .map(|values| Series::new("".into(), values.to_vec()))
            .collect();
        Series::new(name.into(), series).into()
    }

    /// Four responses of rm `a` on benchmark `x`; rows 0 and 2 are correct.
    pub(crate) fn frame(rewards: [f32; 4]) -> DataFrame {
        let q_values: [&[f32]; 4] = [
            &[0.5, -0.2, 0.3, 0.4],
            &[0.1, 0.2, -0.5, 0.0],
            &[0.6, 0.7],
            &[-0.1, 0.9, 0.8, 0.7],
        ];
        let columns = vec![
            Column::new(RM.into(), ["a"; 4]),
            Column::new("benchmark".into(), ["x"; 4]),
            Column::new(IS_CORRECT.into(), [true, false, true, false]),
            Column::new(REWARD.into(), rewards),
            list(Q_VALUES, &q_values),
            list(TOKEN_REWARDS, &q_values),
        ];
        DataFrame::new(4, columns).unwrap()
    }

    /// `frame` with `q_values` replaced, and `question_id`/`sample` columns.
    pub(crate) fn frame_with_q(q_values: [&[f32]; 4]) -> DataFrame {
        let mut frame = frame([0.1, 0.2, 0.3, 0.4]);
        frame.with_column(list(Q_VALUES, &q_values)).unwrap();
        frame
            .with_column(Column::new(QUESTION_ID.into(), ["q0", "q0", "q1", "q1"]))
            .unwrap();
        frame
            .with_column(Column::new(SAMPLE.into(), ["s0", "s1", "s0", "s1"]))
            .unwrap();
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_includes_both_ends() {
        assert_eq!(parse_sweep("0:0.3:0.1").unwrap(), vec![0.0, 0.1, 0.2, 0.3]);
        assert_eq!(parse_sweep("-0.2:0:0.1").unwrap(), vec![-0.2, -0.1, 0.0]);
        assert!(parse_sweep("0:1").is_err());
        assert!(parse_sweep("0:1:0").is_err());
    }

    fn usage_text(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(Error::Usage(text)) => text,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn bad_flag_values_are_usage_errors_saying_what_is_wrong() {
        assert!(usage_text(parse_sweep("1:0:0.1")).contains("from (1) is above to (0)"));
        assert!(usage_text(parse_sweep("0:1:-0.1")).contains("step must be above 0"));
        assert!(usage_text(parse_sweep("0:1:nan")).contains("finite"));
        // (1 − 0) / 1e-5 + 1 = 100 001 values > 10 000.
        assert!(usage_text(parse_sweep("0:1:0.00001")).contains("100001 values"));
        assert_eq!(parse_sweep("0:9999:1").unwrap().len(), MAX_SWEEP_VALUES);
        assert!(usage_text(parse_fractions("0,2")).contains("2 is outside [0, 1]"));
        assert!(usage_text(parse_fractions("0,x")).contains("not a list"));
        assert_eq!(parse_fractions("0:1:0.5").unwrap(), vec![0.0, 0.5, 1.0]);
        assert!(usage_text(parse_level("1.5")).contains("between 0 and 1"));
        assert!(usage_text(parse_level("0")).contains("between 0 and 1"));
        assert_eq!(parse_level("0.9").unwrap(), 0.9);
        assert!(usage_text(parse_finite("NaN")).contains("finite"));
        assert!(usage_text(parse_open_unit("1", "α")).contains("α must be a number strictly"));
        assert!(usage_text(parse_open_unit("0", "α")).contains("strictly between 0 and 1"));
        assert_eq!(parse_open_unit("0.1", "α").unwrap(), 0.1);
        assert!(usage_text(parse_alpha_sweep("0:0.2:0.1")).contains("gives α = 0"));
        assert!(usage_text(parse_alpha_sweep("0.5:1:0.5")).contains("gives α = 1"));
        assert_eq!(
            parse_alpha_sweep("0.1:0.3:0.1").unwrap(),
            vec![0.1, 0.2, 0.3]
        );
        assert!(usage_text(parse_compare("a,a")).contains("two different"));
        assert!(usage_text(parse_compare("a")).contains("two different"));
        assert_eq!(
            parse_compare("a,b").unwrap(),
            ("a".to_owned(), "b".to_owned())
        );
    }
}

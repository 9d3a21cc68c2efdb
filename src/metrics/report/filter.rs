//! `qrm-filter`'s reports: Q-value filtering for majority voting (one row per threshold),
//! top-K selection by reward, the Q-value/reward correlation along responses, and where
//! filtering drops wrong samples relative to their first error (localisation).

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::metrics::checks::{check_rows, RowChecks};
use crate::metrics::filter::{
    filter_summary, prefix_index, top_k_summary, FilterOptions, FilterSummary, Sample, VoteRule,
};
use crate::metrics::localisation::{localisation_summary, LocalisationSummary, LocatedSample};
use crate::metrics::report::{float32_lists, float_lists, group_keys, key_columns};
use crate::metrics::stats::{pearson, spearman};
use crate::pipeline::schema::{
    Columns, FIRST_ERROR_CHAR, IS_CORRECT, PREDICTED_ANSWER, QUESTION_ID, Q_VALUES, REWARD,
    TOKEN_OFFSETS, TOKEN_REWARDS,
};

/// Kept rows by `by` key, then by question id (sorted), in row order within a question.
pub(super) type QuestionRows<'a> = BTreeMap<&'a [String], Vec<(&'a str, Vec<usize>)>>;

/// Per-row data that filtering and top-K read, and which rows passed [`check_rows`].
pub(super) struct FilterInput {
    pub(super) keep: Vec<bool>,
    pub(super) keys: Vec<Vec<String>>,
    pub(super) question_ids: Vec<String>,
    labels: Vec<bool>,
    answers: Vec<Option<String>>,
    rewards: Vec<f64>,
    q_values: Vec<Vec<f32>>,
}

impl FilterInput {
    /// Reads the rows; `value_columns` are checked for non-finite values (after a null
    /// `q_values` list, when `need_q`, has failed with its own hint).
    pub(super) fn read(
        frame: &DataFrame,
        path: &Path,
        by: &[String],
        need_q: bool,
        value_columns: &[&str],
        checks: RowChecks,
    ) -> Result<Self> {
        let columns = Columns::new(frame, path);
        let labels = columns
            .bool_not_null(IS_CORRECT)?
            .iter()
            .map(|v| v.unwrap_or(false))
            .collect();
        let question_ids = columns
            .str_not_null(QUESTION_ID)?
            .iter()
            .map(|v| v.unwrap_or_default().to_owned())
            .collect();
        let answers = if columns.has(PREDICTED_ANSWER) {
            columns
                .str(PREDICTED_ANSWER)?
                .iter()
                .map(|v| v.map(str::to_owned))
                .collect()
        } else {
            tracing::warn!("no `{PREDICTED_ANSWER}` column: every answer is null");
            vec![None; frame.height()]
        };
        let rewards = if columns.has(REWARD) {
            columns
                .f64(REWARD)?
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect()
        } else {
            vec![f64::NAN; frame.height()]
        };
        let q_values = if need_q {
            float32_lists(&columns, Q_VALUES)?
                .into_iter()
                .enumerate()
                .map(|(row, list)| {
                    list.ok_or_else(|| {
                        Error::bad_value(path, row, Q_VALUES, "null (score with a goal state)")
                    })
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![Vec::new(); frame.height()]
        };
        let keep = check_rows(frame, path, value_columns, checks)?.keep;
        Ok(Self {
            keep,
            keys: group_keys(frame, path, by)?,
            question_ids,
            labels,
            answers,
            rewards,
            q_values,
        })
    }

    /// Kept rows grouped by `by` key, then by question (sorted by id), in row order within a
    /// question.
    pub(super) fn question_rows(&self) -> QuestionRows<'_> {
        let mut grouped: BTreeMap<&[String], BTreeMap<&str, Vec<usize>>> = BTreeMap::new();
        for row in (0..self.labels.len()).filter(|&row| self.keep[row]) {
            grouped
                .entry(&self.keys[row])
                .or_default()
                .entry(&self.question_ids[row])
                .or_default()
                .push(row);
        }
        grouped
            .into_iter()
            .map(|(key, questions)| (key, questions.into_iter().collect()))
            .collect()
    }

    /// Row `row` as a filtering sample.
    pub(super) fn sample(&self, row: usize) -> Sample<'_> {
        Sample {
            is_correct: self.labels[row],
            answer: self.answers[row].as_deref(),
            q_values: &self.q_values[row],
            reward: self.rewards[row],
        }
    }

    /// Samples grouped by `by` key, then by question.
    fn questions(&self) -> BTreeMap<&[String], Vec<Vec<Sample<'_>>>> {
        self.question_rows()
            .into_iter()
            .map(|(key, questions)| {
                let samples = questions
                    .iter()
                    .map(|(_, rows)| rows.iter().map(|&row| self.sample(row)).collect())
                    .collect();
                (key, samples)
            })
            .collect()
    }
}

/// Table 1 per group and threshold.
///
/// Output columns: the `by` columns, `threshold`, `skip`, `questions`, `samples_per_question`,
/// `accuracy`, `accuracy_filtered`, `proportion_correct`, `proportion_correct_filtered`
/// (fractions), `filtered_pct`, `tokens_saved_pct` (percent), `p_unpaired` (ttest_ind over
/// per-question proportions, filtered vs not, as the reference), `p_paired` (ttest_rel),
/// `vote`, `ties_broken`, `fallback_questions`. `tokens_saved_pct` is the released rule
/// (Σ saved / Σ scored tokens), `tokens_saved_per_question_pct` the mean of each question's
/// ratio; both in either vote mode. Rows are checked first ([`check_rows`] on `q_values`).
pub fn filter_report(
    frame: &DataFrame,
    path: &Path,
    by: &[String],
    options: &FilterOptions,
    thresholds: &[f64],
    checks: RowChecks,
) -> Result<DataFrame> {
    let input = FilterInput::read(frame, path, by, true, &[Q_VALUES], checks)?;
    let mut keys = Vec::new();
    let mut rows = Vec::new();
    for (key, questions) in input.questions() {
        for &threshold in thresholds {
            let options = FilterOptions {
                threshold,
                ..*options
            };
            if let Some(summary) = filter_summary(&questions, &options) {
                keys.push(key.to_vec());
                rows.push((threshold, summary));
            }
        }
    }
    let mut columns = key_columns(by, &keys);
    columns.push(Column::new(
        "threshold".into(),
        rows.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "skip".into(),
        vec![options.skip as u32; rows.len()],
    ));
    let summaries: Vec<&FilterSummary> = rows.iter().map(|(_, s)| s).collect();
    columns.extend(summary_columns(&summaries, options.vote));
    DataFrame::new(rows.len(), columns).map_err(|e| Error::table("<filter report>", e))
}

/// Table 1's columns from `questions` to `fallback_questions`, one row per summary.
pub(super) fn summary_columns(rows: &[&FilterSummary], vote: VoteRule) -> Vec<Column> {
    let float = |name: &str, f: &dyn Fn(&FilterSummary) -> f64| {
        Column::new(name.into(), rows.iter().map(|s| f(s)).collect::<Vec<_>>())
    };
    let mut columns = Vec::new();
    columns.push(Column::new(
        "questions".into(),
        rows.iter().map(|s| s.questions as u32).collect::<Vec<_>>(),
    ));
    columns.push(float("samples_per_question", &|s| s.samples_per_question));
    columns.push(float("accuracy", &|s| s.accuracy));
    columns.push(float("accuracy_filtered", &|s| s.accuracy_filtered));
    columns.push(float("proportion_correct", &|s| s.proportion_correct));
    columns.push(float("proportion_correct_filtered", &|s| {
        s.proportion_correct_filtered
    }));
    columns.push(float("filtered_pct", &|s| s.filtered_pct));
    columns.push(float("tokens_saved_pct", &|s| s.tokens_saved_pct));
    columns.push(float("tokens_saved_per_question_pct", &|s| {
        s.tokens_saved_per_question_pct
    }));
    columns.push(Column::new(
        "p_unpaired".into(),
        rows.iter().map(|s| s.p_unpaired).collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "p_paired".into(),
        rows.iter().map(|s| s.p_paired).collect::<Vec<_>>(),
    ));
    columns.push(Column::new("vote".into(), vec![vote.name(); rows.len()]));
    columns.push(Column::new(
        "ties_broken".into(),
        rows.iter()
            .map(|s| s.ties_broken as u32)
            .collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "fallback_questions".into(),
        rows.iter()
            .map(|s| s.fallback_questions as u32)
            .collect::<Vec<_>>(),
    ));
    columns
}

/// Table 11: majority vote within each question's top K samples by `reward`.
///
/// Output columns: the `by` columns, `top_k`, `questions`, `accuracy`, `proportion_correct`,
/// `vote`, `ties_broken`. Rows are checked first ([`check_rows`] on `reward`).
pub fn top_k_report(
    frame: &DataFrame,
    path: &Path,
    by: &[String],
    ks: &[usize],
    vote: VoteRule,
    seed: u64,
    checks: RowChecks,
) -> Result<DataFrame> {
    let input = FilterInput::read(frame, path, by, false, &[REWARD], checks)?;
    let mut keys = Vec::new();
    let mut rows = Vec::new();
    for (key, questions) in input.questions() {
        for &k in ks {
            if let Some(summary) = top_k_summary(&questions, k, vote, seed) {
                keys.push(key.to_vec());
                rows.push(summary);
            }
        }
    }
    let mut columns = key_columns(by, &keys);
    columns.push(Column::new(
        "top_k".into(),
        rows.iter().map(|s| s.top_k as u32).collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "questions".into(),
        rows.iter().map(|s| s.questions as u32).collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "accuracy".into(),
        rows.iter().map(|s| s.accuracy).collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "proportion_correct".into(),
        rows.iter()
            .map(|s| s.proportion_correct)
            .collect::<Vec<_>>(),
    ));
    columns.push(Column::new("vote".into(), vec![vote.name(); rows.len()]));
    columns.push(Column::new(
        "ties_broken".into(),
        rows.iter()
            .map(|s| s.ties_broken as u32)
            .collect::<Vec<_>>(),
    ));
    DataFrame::new(rows.len(), columns).map_err(|e| Error::table("<top-k report>", e))
}

/// Table 13: Pearson and Spearman correlation, across the group's responses, between the
/// Q-value and the token reward at the token ending each prefix fraction
/// (index `max(floor(n·fraction) − 1, 0)`). Rows are checked first ([`check_rows`] on both
/// lists: a null list or a non-finite value fails, or is dropped under `drop_nan`); empty
/// responses are left out.
///
/// Output columns: the `by` columns, `fraction`, `n`, `pearson`, `spearman`.
pub fn correlation_report(
    frame: &DataFrame,
    path: &Path,
    by: &[String],
    fractions: &[f64],
    checks: RowChecks,
) -> Result<DataFrame> {
    let columns = Columns::new(frame, path);
    let keep = check_rows(frame, path, &[Q_VALUES, TOKEN_REWARDS], checks)?.keep;
    let q_values = float_lists(&columns, Q_VALUES)?;
    let token_rewards = float_lists(&columns, TOKEN_REWARDS)?;
    let keys = group_keys(frame, path, by)?;
    let mut groups: BTreeMap<&[String], Vec<usize>> = BTreeMap::new();
    for (row, key) in keys.iter().enumerate().filter(|(row, _)| keep[*row]) {
        groups.entry(key).or_default().push(row);
    }
    let (mut out_keys, mut out_fraction, mut out_n, mut out_pearson, mut out_spearman) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (key, rows) in groups {
        for &fraction in fractions {
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for &row in &rows {
                let (Some(q), Some(r)) = (&q_values[row], &token_rewards[row]) else {
                    continue;
                };
                let length = q.len().min(r.len());
                let Some(index) = prefix_index(length, fraction) else {
                    continue;
                };
                xs.push(q[index]);
                ys.push(r[index]);
            }
            out_keys.push(key.to_vec());
            out_fraction.push(fraction);
            out_n.push(xs.len() as u32);
            out_pearson.push(pearson(&xs, &ys));
            out_spearman.push(spearman(&xs, &ys));
        }
    }
    let height = out_keys.len();
    let mut columns = key_columns(by, &out_keys);
    columns.push(Column::new("fraction".into(), out_fraction));
    columns.push(Column::new("n".into(), out_n));
    columns.push(Column::new("pearson".into(), out_pearson));
    columns.push(Column::new("spearman".into(), out_spearman));
    DataFrame::new(height, columns).map_err(|e| Error::table("<correlation report>", e))
}

/// The error-localisation table per group and threshold (see [`crate::metrics::localisation`]).
/// Needs `is_correct`, `first_error_char`, `q_values` and `token_offsets` (`qrm-score
/// --emit-tokens`).
///
/// Output columns: the `by` columns, `threshold`, `skip`, `wrong_samples`, `wrong_dropped_pct`,
/// `at_or_after_error_pct`, `median_tokens_after`, `median_tokens_before`, `median_error_token`,
/// `correct_samples`, `correct_dropped_pct`. Rows are checked first ([`check_rows`] on
/// `q_values`, after a null list has failed with its own hint).
pub fn localisation_report(
    frame: &DataFrame,
    path: &Path,
    by: &[String],
    skip: usize,
    thresholds: &[f64],
    checks: RowChecks,
) -> Result<DataFrame> {
    let located = LocatedColumns::read(frame, path)?;
    let columns = Columns::new(frame, path);
    let labels: Vec<bool> = columns
        .bool_not_null(IS_CORRECT)?
        .iter()
        .map(|v| v.unwrap_or(false))
        .collect();
    let q_values = float32_lists(&columns, Q_VALUES)?;
    let mut samples_by_key: BTreeMap<&[String], Vec<(usize, Vec<u32>)>> = BTreeMap::new();
    let keys = group_keys(frame, path, by)?;
    // Under --drop-nan a null list (a row `qrm-score --truncate skip` left unscored) is
    // dropped by the checks below instead.
    if let Some(row) = q_values
        .iter()
        .position(Option::is_none)
        .filter(|_| !checks.drop_nan)
    {
        return Err(Error::bad_value(
            path,
            row,
            Q_VALUES,
            "null (score with a goal state)",
        ));
    }
    let keep = check_rows(frame, path, &[Q_VALUES], checks)?.keep;
    for (row, key) in keys.iter().enumerate().filter(|(row, _)| keep[*row]) {
        let Some(q) = &q_values[row] else {
            continue;
        };
        let row_offsets = located.offsets(path, row, q.len())?;
        samples_by_key
            .entry(key)
            .or_default()
            .push((row, row_offsets));
    }
    let mut out_keys = Vec::new();
    let mut rows = Vec::new();
    for (key, members) in &samples_by_key {
        let samples: Vec<LocatedSample> = members
            .iter()
            .map(|(row, row_offsets)| LocatedSample {
                is_correct: labels[*row],
                first_error_char: located.error_chars[*row],
                q_values: q_values[*row].as_deref().unwrap_or_default(),
                token_offsets: row_offsets,
            })
            .collect();
        for &threshold in thresholds {
            if let Some(summary) = localisation_summary(&samples, skip, threshold) {
                out_keys.push(key.to_vec());
                rows.push((threshold, summary));
            }
        }
    }
    let mut columns = key_columns(by, &out_keys);
    let count = |name: &str, f: &dyn Fn(&LocalisationSummary) -> usize| {
        Column::new(
            name.into(),
            rows.iter().map(|(_, s)| f(s) as u32).collect::<Vec<_>>(),
        )
    };
    let float = |name: &str, f: &dyn Fn(&LocalisationSummary) -> Option<f64>| {
        Column::new(
            name.into(),
            rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>(),
        )
    };
    columns.push(Column::new(
        "threshold".into(),
        rows.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
    ));
    columns.push(Column::new("skip".into(), vec![skip as u32; rows.len()]));
    columns.push(count("wrong_samples", &|s| s.wrong_samples));
    columns.push(float("wrong_dropped_pct", &|s| Some(s.wrong_dropped_pct)));
    columns.push(float("at_or_after_error_pct", &|s| {
        Some(s.at_or_after_error_pct)
    }));
    columns.push(float("median_tokens_after", &|s| s.median_tokens_after));
    columns.push(float("median_tokens_before", &|s| s.median_tokens_before));
    columns.push(float("median_error_token", &|s| s.median_error_token));
    columns.push(count("correct_samples", &|s| s.correct_samples));
    columns.push(float("correct_dropped_pct", &|s| {
        Some(s.correct_dropped_pct)
    }));
    DataFrame::new(rows.len(), columns).map_err(|e| Error::table("<localisation report>", e))
}

/// What error localisation reads besides the Q-values: each row's first error char and its
/// tokens' char offsets.
pub(super) struct LocatedColumns {
    /// `first_error_char` (a negative or null value: not located).
    pub(super) error_chars: Vec<Option<u64>>,
    offsets: Vec<Option<Vec<f64>>>,
}

impl LocatedColumns {
    /// Reads `first_error_char` and `token_offsets`; a missing one fails saying what to run.
    pub(super) fn read(frame: &DataFrame, path: &Path) -> Result<Self> {
        let columns = Columns::new(frame, path);
        for name in [FIRST_ERROR_CHAR, TOKEN_OFFSETS] {
            if !columns.has(name) {
                return Err(Error::Format {
                    path: path.to_owned(),
                    message: format!(
                        "missing column `{name}`: error localisation needs data with \
                         `{FIRST_ERROR_CHAR}` (qrm-synth) scored with `qrm-score --emit-tokens`"
                    ),
                });
            }
        }
        let error_chars = columns
            .f64(FIRST_ERROR_CHAR)?
            .iter()
            .map(|v| v.filter(|c| *c >= 0.0).map(|c| c as u64))
            .collect();
        Ok(Self {
            error_chars,
            offsets: float_lists(&columns, TOKEN_OFFSETS)?,
        })
    }

    /// Row `row`'s token offsets, which must be as many as its `q_count` Q-values.
    pub(super) fn offsets(&self, path: &Path, row: usize, q_count: usize) -> Result<Vec<u32>> {
        let Some(row_offsets) = &self.offsets[row] else {
            return Err(Error::bad_value(path, row, TOKEN_OFFSETS, "null"));
        };
        if row_offsets.len() != q_count {
            return Err(Error::bad_value(
                path,
                row,
                TOKEN_OFFSETS,
                format!("{} offsets for {} Q-values", row_offsets.len(), q_count),
            ));
        }
        Ok(row_offsets.iter().map(|&o| o as u32).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::report::auroc::{auroc_report, AurocOptions};
    use crate::metrics::report::fixtures::frame_with_q;
    use crate::pipeline::schema::{RM, SAMPLE};

    #[test]
    fn filtering_fails_on_an_all_nan_sample_unless_dropped() {
        // Row 3 is all NaN: NaN < 0 is false, so it was never dropped and counted as kept.
        let nan: &[f32] = &[f32::NAN, f32::NAN];
        let frame = frame_with_q([&[0.5, 0.5], &[0.5, -0.5], nan, &[0.5, 0.5]]);
        let options = FilterOptions {
            skip: 0,
            ..FilterOptions::default()
        };
        let by = [RM.to_owned()];
        let error = filter_report(
            &frame,
            Path::new("t"),
            &by,
            &options,
            &[0.0],
            RowChecks::default(),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`q_values` is missing or not finite in 1 row(s): 3"),
            "{error}"
        );
        let checks = RowChecks {
            drop_nan: true,
            ..RowChecks::default()
        };
        let report = filter_report(&frame, Path::new("t"), &by, &options, &[0.0], checks).unwrap();
        // q0: row 2 dropped (1 of 2 → 50 %); q1: only row 4 left, kept (0 %) → mean 25 %.
        let filtered = report.column("filtered_pct").unwrap().f64().unwrap();
        assert_eq!(filtered.get(0), Some(25.0));
    }

    #[test]
    fn duplicated_samples_fail_unless_the_first_is_kept() {
        let mut frame = frame_with_q([&[0.5], &[0.1], &[0.6], &[-0.1]]);
        frame
            .with_column(Column::new(SAMPLE.into(), ["s0", "s1", "s0", "s0"]))
            .unwrap();
        let by = [RM.to_owned()];
        let options = FilterOptions::default();
        let error = filter_report(
            &frame,
            Path::new("t"),
            &by,
            &options,
            &[0.0],
            RowChecks::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("row 4 repeats row 3"), "{error}");
        let checks = RowChecks {
            drop_duplicates: true,
            ..RowChecks::default()
        };
        let report = filter_report(&frame, Path::new("t"), &by, &options, &[0.0], checks).unwrap();
        // 3 samples over 2 questions remain.
        let per_question = report
            .column("samples_per_question")
            .unwrap()
            .f64()
            .unwrap();
        assert_eq!(per_question.get(0), Some(1.5));
        let auroc = AurocOptions {
            drop_duplicates: true,
            ..AurocOptions::default()
        };
        assert_eq!(
            auroc_report(&frame, Path::new("t"), &auroc)
                .unwrap()
                .dropped_duplicates,
            1
        );
    }
}

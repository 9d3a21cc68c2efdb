//! From a scores table to report tables: AUROC per group and percentile (`qrm-auroc`), and
//! Q-filtering, top-K and correlation summaries (`qrm-filter`).
//!
//! Rows are grouped by the `by` columns (any type, compared as text); groups come out sorted.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::metrics::auroc::{auroc, bootstrap_interval, delong, delong_paired};
use crate::metrics::checks::{check_rows, list_rows, sample_keys, RowChecks};
use crate::metrics::filter::{
    filter_summary, prefix_index, top_k_summary, FilterOptions, Sample, VoteRule,
};
use crate::metrics::localisation::{localisation_summary, LocalisationSummary, LocatedSample};
use crate::metrics::stats::{mean_t_interval, pearson, spearman};
use crate::pipeline::schema::{
    Columns, FIRST_ERROR_CHAR, IS_CORRECT, PREDICTED_ANSWER, QUESTION_ID, Q_VALUES, REWARD, RM,
    SAMPLE, TOKEN_OFFSETS, TOKEN_REWARDS,
};

/// How `qrm-auroc` computes confidence intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CiMethod {
    /// DeLong's variance, normal interval clipped to [0, 1].
    Delong,
    /// Stratified percentile bootstrap (`resamples`, `seed`).
    Bootstrap,
    /// One AUROC per `sample` value, then their mean and a t-interval (the paper's Figure 3).
    Samples,
    /// No interval.
    None,
}

impl CiMethod {
    pub fn name(self) -> &'static str {
        match self {
            CiMethod::Delong => "delong",
            CiMethod::Bootstrap => "bootstrap",
            CiMethod::Samples => "samples",
            CiMethod::None => "none",
        }
    }
}

/// Options of [`auroc_report`].
#[derive(Debug, Clone)]
pub struct AurocOptions {
    /// A numeric column (default `reward`), or `q_min` / `q_last` (from `q_values`).
    pub score: String,
    /// Grouping columns.
    pub by: Vec<String>,
    /// Prefix fractions of each response; `None` scores whole responses.
    pub percentiles: Option<Vec<f64>>,
    pub ci: CiMethod,
    pub resamples: usize,
    pub seed: u64,
    /// Interval level, e.g. 0.95.
    pub level: f64,
    /// Two `rm` values scored on the same generations: (A, B).
    pub compare: Option<(String, String)>,
    /// Drop rows with a missing or non-finite score instead of failing.
    pub drop_nan: bool,
    /// Keep the first of rows sharing (`question_id`, `sample`, `rm`) instead of failing.
    pub drop_duplicates: bool,
}

impl Default for AurocOptions {
    fn default() -> Self {
        Self {
            score: REWARD.to_owned(),
            by: vec![RM.to_owned(), "benchmark".to_owned()],
            percentiles: None,
            ci: CiMethod::Delong,
            resamples: 1000,
            seed: 0,
            level: 0.95,
            compare: None,
            drop_nan: false,
            drop_duplicates: false,
        }
    }
}

/// A report and the number of input rows dropped (each drop is also logged).
#[derive(Debug)]
pub struct Report {
    pub frame: DataFrame,
    /// Rows dropped for a missing or non-finite score (`drop_nan`).
    pub dropped_rows: usize,
    /// Rows dropped as repeats of an earlier (`question_id`, `sample`, `rm`)
    /// (`drop_duplicates`).
    pub dropped_duplicates: usize,
}

/// The text of each `by` column, row by row (null → "null").
fn group_keys(frame: &DataFrame, path: &Path, by: &[String]) -> Result<Vec<Vec<String>>> {
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
fn float_lists(columns: &Columns, name: &str) -> Result<Vec<Option<Vec<f64>>>> {
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
fn float32_lists(columns: &Columns, name: &str) -> Result<Vec<Option<Vec<f32>>>> {
    Ok(float_lists(columns, name)?
        .into_iter()
        .map(|list| list.map(|values| values.into_iter().map(|v| v as f32).collect()))
        .collect())
}

/// The score of every row for one percentile (None = whole response); `None` where missing.
fn score_values(
    columns: &Columns,
    score: &str,
    percentile: Option<f64>,
    lists: &mut BTreeMap<&'static str, Vec<Option<Vec<f64>>>>,
) -> Result<Vec<Option<f64>>> {
    let q_based = score == "q_min" || score == "q_last";
    if !q_based && percentile.is_none() {
        return Ok(columns.f64(score)?.iter().collect());
    }
    let list_name = if q_based { Q_VALUES } else { TOKEN_REWARDS };
    if !lists.contains_key(list_name) {
        lists.insert(list_name, float_lists(columns, list_name)?);
    }
    let values = &lists[list_name];
    Ok(values
        .iter()
        .map(|list| {
            let list = list.as_ref()?;
            let index = match percentile {
                Some(fraction) => prefix_index(list.len(), fraction)?,
                None => list.len().checked_sub(1)?,
            };
            if score == "q_min" {
                list[..=index].iter().copied().reduce(f64::min)
            } else {
                Some(list[index])
            }
        })
        .collect())
}

/// Statistics of one group × percentile.
#[derive(Debug, Default)]
struct GroupResult {
    n: u32,
    n_pos: u32,
    auroc: Option<f64>,
    ci_low: Option<f64>,
    ci_high: Option<f64>,
    note: Option<String>,
    auroc_b: Option<f64>,
    delta: Option<f64>,
    delta_ci_low: Option<f64>,
    delta_ci_high: Option<f64>,
    p_value: Option<f64>,
}

fn one_group(
    scores: &[f64],
    scores_b: Option<&[f64]>,
    labels: &[bool],
    sample_sets: Option<&[&str]>,
    options: &AurocOptions,
) -> GroupResult {
    let n_pos = labels.iter().filter(|&&l| l).count();
    let mut result = GroupResult {
        n: labels.len() as u32,
        n_pos: n_pos as u32,
        ..Default::default()
    };
    if labels.is_empty() {
        result.note = Some("empty group".to_owned());
        return result;
    }
    if n_pos == 0 || n_pos == labels.len() {
        result.note = Some(format!(
            "one class only ({n_pos} of {} correct): AUROC undefined",
            labels.len()
        ));
        return result;
    }
    result.auroc = auroc(scores, labels);
    if let Some(scores_b) = scores_b {
        result.auroc_b = auroc(scores_b, labels);
        result.delta = result.auroc.zip(result.auroc_b).map(|(a, b)| a - b);
        result.p_value = delong_paired(scores, scores_b, labels).and_then(|d| d.p_value());
    }
    match options.ci {
        CiMethod::None => {}
        CiMethod::Delong => {
            if let Some(scores_b) = scores_b {
                if let Some(paired) = delong_paired(scores, scores_b, labels) {
                    let (low, high) = paired.a.interval(options.level);
                    let (delta_low, delta_high) = paired.delta_interval(options.level);
                    result.ci_low = Some(low);
                    result.ci_high = Some(high);
                    result.delta_ci_low = Some(delta_low);
                    result.delta_ci_high = Some(delta_high);
                }
            } else if let Some(estimate) = delong(scores, labels) {
                let (low, high) = estimate.interval(options.level);
                result.ci_low = Some(low);
                result.ci_high = Some(high);
            }
            if result.ci_low.is_none() {
                result.note = Some("DeLong variance needs two of each class".to_owned());
            }
        }
        CiMethod::Bootstrap => {
            let interval = |b: Option<&[f64]>| {
                bootstrap_interval(
                    scores,
                    b,
                    labels,
                    options.resamples,
                    options.level,
                    options.seed,
                )
            };
            if let Some((low, high)) = interval(None) {
                result.ci_low = Some(low);
                result.ci_high = Some(high);
            }
            if let Some((low, high)) = scores_b.and_then(|b| interval(Some(b))) {
                result.delta_ci_low = Some(low);
                result.delta_ci_high = Some(high);
            }
        }
        CiMethod::Samples => {
            per_sample_set(scores, scores_b, labels, sample_sets, options, &mut result)
        }
    }
    result
}

/// `--ci samples`: one AUROC per sample set, then the mean and a t-interval across sets.
fn per_sample_set(
    scores: &[f64],
    scores_b: Option<&[f64]>,
    labels: &[bool],
    sample_sets: Option<&[&str]>,
    options: &AurocOptions,
    result: &mut GroupResult,
) {
    let Some(sample_sets) = sample_sets else {
        result.note = Some("--ci samples needs a `sample` column".to_owned());
        return;
    };
    let mut sets: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, &set) in sample_sets.iter().enumerate() {
        sets.entry(set).or_default().push(index);
    }
    let (mut values, mut values_b, mut deltas, mut undefined) = (vec![], vec![], vec![], 0);
    for rows in sets.values() {
        let set_labels: Vec<bool> = rows.iter().map(|&i| labels[i]).collect();
        let pick = |s: &[f64]| rows.iter().map(|&i| s[i]).collect::<Vec<f64>>();
        let Some(value) = auroc(&pick(scores), &set_labels) else {
            undefined += 1;
            continue;
        };
        values.push(value);
        if let Some(value_b) = scores_b.and_then(|b| auroc(&pick(b), &set_labels)) {
            values_b.push(value_b);
            deltas.push(value - value_b);
        }
    }
    let mut note = format!("{} sample sets", values.len());
    if undefined > 0 {
        note.push_str(&format!(", {undefined} with one class skipped"));
    }
    match mean_t_interval(&values, options.level) {
        Some(interval) => {
            result.auroc = Some(interval.mean);
            result.ci_low = Some(interval.low);
            result.ci_high = Some(interval.high);
        }
        None => {
            note.push_str(": fewer than 2, no interval");
            if let [single] = values[..] {
                result.auroc = Some(single);
            }
        }
    }
    if scores_b.is_some() {
        if let Some(interval) = mean_t_interval(&deltas, options.level) {
            result.auroc_b = Some(values_b.iter().sum::<f64>() / values_b.len() as f64);
            result.delta = Some(interval.mean);
            result.delta_ci_low = Some(interval.low);
            result.delta_ci_high = Some(interval.high);
        }
    }
    result.note = Some(note);
}

/// Rows whose score has no value (an empty response), as a message listing the rows.
fn describe_bad_rows(path: &Path, score: &str, rows: &[usize]) -> Error {
    Error::Format {
        path: path.to_owned(),
        message: format!(
            "score `{score}` is missing (empty response) in {} row(s): {} \
             (use --drop-nan to drop them)",
            rows.len(),
            list_rows(rows)
        ),
    }
}

/// The input column a score reads: `q_values` for `q_min`/`q_last`, `token_rewards` for
/// `reward` at percentiles, otherwise the score column itself (which percentiles cannot cut:
/// a usage error).
fn score_source(score: &str, percentiles: bool) -> Result<&str> {
    match score {
        "q_min" | "q_last" => Ok(Q_VALUES),
        REWARD if percentiles => Ok(TOKEN_REWARDS),
        other if percentiles => Err(Error::Usage(format!(
            "--percentiles needs --score reward, q_min or q_last, not `{other}`"
        ))),
        other => Ok(other),
    }
}

/// AUROC of `options.score` against `is_correct` per group (and percentile), with intervals
/// and, with `compare`, the paired difference between two reward models.
///
/// Output columns: the `by` columns (with `compare`, `rm` holds A and `rm_b` B), `score`,
/// `percentile` (null = whole response), `n`, `n_pos`, `auroc`, `ci_low`, `ci_high`,
/// `ci_method`, `note`; with `compare` also `auroc_b`, `delta`, `delta_ci_low`,
/// `delta_ci_high`, `p_value` (DeLong's paired test on the group's rows).
///
/// Rows go through [`check_rows`] first (the score's input column, model identity,
/// duplicates). With `compare`, a name that is not an `rm` of the table is a usage error, and
/// generations are matched by (`question_id`, sample key; see [`sample_keys`]).
pub fn auroc_report(frame: &DataFrame, path: &Path, options: &AurocOptions) -> Result<Report> {
    let columns = Columns::new(frame, path);
    let source = score_source(&options.score, options.percentiles.is_some())?;
    let checked = check_rows(
        frame,
        path,
        &[source],
        RowChecks {
            drop_nan: options.drop_nan,
            drop_duplicates: options.drop_duplicates,
        },
    )?;
    let mut by = options.by.clone();
    if options.compare.is_some() && !by.iter().any(|b| b == RM) {
        by.insert(0, RM.to_owned());
    }
    let scored = Scored::read(frame, path, &by, &checked.keep, options)?;
    let output = match &options.compare {
        None => whole_groups(&scored, options),
        Some((rm_a, rm_b)) => {
            let rm_index = by.iter().position(|b| b == RM).unwrap_or(0);
            // The names first: a wrong name is a usage error whatever else the table lacks.
            check_compared_names(&scored, rm_index, [rm_a, rm_b])?;
            let question_ids = columns.str_not_null(QUESTION_ID)?;
            let question_ids: Vec<&str> =
                question_ids.iter().map(Option::unwrap_or_default).collect();
            let item_samples = sample_keys(frame, path, &checked.keep)?;
            let items = CompareItems {
                question_ids: &question_ids,
                samples: &item_samples,
                rm_index,
            };
            compared_groups(&scored, &items, (rm_a, rm_b), options)?
        }
    };
    let frame = output.into_frame(&by, options)?;
    Ok(Report {
        frame,
        dropped_rows: checked.dropped_nan + scored.empty,
        dropped_duplicates: checked.dropped_duplicates,
    })
}

/// What both kinds of report read, row by row: the labels, the group keys, the sample sets and
/// each percentile's scores, and which rows are left out (failed the checks, or no score).
struct Scored<'a> {
    path: &'a Path,
    labels: Vec<bool>,
    keys: Vec<Vec<String>>,
    sample_text: Option<Vec<Vec<String>>>,
    percentiles: Vec<Option<f64>>,
    scores: Vec<Vec<Option<f64>>>,
    left_out: Vec<bool>,
    /// Rows left out because their score has no value (an empty response), under `drop_nan`.
    empty: usize,
}

impl<'a> Scored<'a> {
    /// Reads the rows `keep` (from [`check_rows`]) passed; a row whose score has no value fails
    /// naming it, unless `drop_nan` leaves it out (logged).
    fn read(
        frame: &DataFrame,
        path: &'a Path,
        by: &[String],
        keep: &[bool],
        options: &AurocOptions,
    ) -> Result<Self> {
        let columns = Columns::new(frame, path);
        let labels: Vec<bool> = columns
            .bool_not_null(IS_CORRECT)?
            .iter()
            .map(|v| v.unwrap_or(false))
            .collect();
        let keys = group_keys(frame, path, by)?;
        let sample_text = if columns.has(SAMPLE) {
            Some(group_keys(frame, path, &[SAMPLE.to_owned()])?)
        } else {
            None
        };
        let percentiles: Vec<Option<f64>> = match &options.percentiles {
            Some(values) => values.iter().copied().map(Some).collect(),
            None => vec![None],
        };
        let mut lists = BTreeMap::new();
        let mut scores = Vec::with_capacity(percentiles.len());
        let mut left_out: Vec<bool> = keep.iter().map(|keep| !keep).collect();
        // Left after the check: rows whose score has no value (an empty response).
        let mut empty = vec![false; frame.height()];
        for &percentile in &percentiles {
            let values = score_values(&columns, &options.score, percentile, &mut lists)?;
            for ((bad, empty), value) in left_out.iter().zip(empty.iter_mut()).zip(&values) {
                *empty |= !bad && !value.is_some_and(f64::is_finite);
            }
            scores.push(values);
        }
        let empty: Vec<usize> = (0..frame.height()).filter(|&i| empty[i]).collect();
        if !empty.is_empty() {
            if !options.drop_nan {
                return Err(describe_bad_rows(path, &options.score, &empty));
            }
            tracing::warn!(
                "{}: dropped {} row(s) whose score `{}` is missing (--drop-nan)",
                path.display(),
                empty.len(),
                options.score
            );
            for &row in &empty {
                left_out[row] = true;
            }
        }
        Ok(Scored {
            path,
            labels,
            keys,
            sample_text,
            percentiles,
            scores,
            left_out,
            empty: empty.len(),
        })
    }

    /// The rows that enter the report, in order.
    fn rows(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.labels.len()).filter(|&row| !self.left_out[row])
    }

    /// The sample set of each row (when the table has `sample`).
    fn sets(&self, rows: impl Iterator<Item = usize>) -> Option<Vec<&str>> {
        self.sample_text
            .as_ref()
            .map(|text| rows.map(|r| text[r][0].as_str()).collect())
    }
}

/// One report row per group and percentile.
fn whole_groups(scored: &Scored, options: &AurocOptions) -> OutputRows {
    let mut output = OutputRows::default();
    let mut groups: BTreeMap<&[String], Vec<usize>> = BTreeMap::new();
    for row in scored.rows() {
        groups.entry(&scored.keys[row]).or_default().push(row);
    }
    for (key, rows) in groups {
        let group_labels: Vec<bool> = rows.iter().map(|&r| scored.labels[r]).collect();
        let sets = scored.sets(rows.iter().copied());
        for (percentile, values) in scored.percentiles.iter().zip(&scored.scores) {
            let scores: Vec<f64> = rows
                .iter()
                .map(|&r| values[r].unwrap_or(f64::NAN))
                .collect();
            let result = one_group(&scores, None, &group_labels, sets.as_deref(), options);
            output.push(key.to_vec(), None, *percentile, result);
        }
    }
    output
}

/// How `--compare` matches generations: by (`question_id`, sample key) within a group whose
/// key, without its `rm` at `rm_index`, is the same.
struct CompareItems<'a> {
    question_ids: &'a [&'a str],
    samples: &'a [String],
    rm_index: usize,
}

/// Group key without rm → item key (question_id, sample) → (row of A, row of B).
type ComparedRows =
    BTreeMap<Vec<String>, BTreeMap<(String, String), (Option<usize>, Option<usize>)>>;

/// `--compare A,B` (names checked by [`check_compared_names`]): one report row per group (keyed
/// by A) and percentile, AUROCs of both models on the generations both scored and DeLong's
/// paired test. A generation scored twice by one model, or labelled differently for the two,
/// is bad data.
fn compared_groups(
    scored: &Scored,
    items: &CompareItems,
    (rm_a, rm_b): (&String, &String),
    options: &AurocOptions,
) -> Result<OutputRows> {
    let groups = pair_generations(scored, items, (rm_a, rm_b))?;
    let mut output = OutputRows::default();
    let mut unmatched = 0usize;
    for (group, pairs) in groups {
        let mut matched = Vec::with_capacity(pairs.len());
        for (row_a, row_b) in pairs.into_values() {
            match (row_a, row_b) {
                (Some(a), Some(b)) => {
                    if scored.labels[a] != scored.labels[b] {
                        return Err(Error::bad_value(
                            scored.path,
                            b,
                            IS_CORRECT,
                            format!("differs from row {} of the same generation", a + 1),
                        ));
                    }
                    matched.push((a, b));
                }
                _ => unmatched += 1,
            }
        }
        let group_labels: Vec<bool> = matched.iter().map(|&(a, _)| scored.labels[a]).collect();
        let sets = scored.sets(matched.iter().map(|&(a, _)| a));
        let mut key = group;
        key.insert(items.rm_index, rm_a.clone());
        for (percentile, values) in scored.percentiles.iter().zip(&scored.scores) {
            let pick = |side: fn(&(usize, usize)) -> usize| -> Vec<f64> {
                matched
                    .iter()
                    .map(|pair| values[side(pair)].unwrap_or(f64::NAN))
                    .collect()
            };
            let scores_a = pick(|pair| pair.0);
            let scores_b = pick(|pair| pair.1);
            let result = one_group(
                &scores_a,
                Some(&scores_b),
                &group_labels,
                sets.as_deref(),
                options,
            );
            output.push(key.clone(), Some(rm_b.clone()), *percentile, result);
        }
    }
    if unmatched > 0 {
        tracing::warn!("{unmatched} generation(s) scored by only one of {rm_a}, {rm_b}: left out");
    }
    Ok(output)
}

/// A usage error when a `--compare` name is not an `rm` of the rows, listing those present.
fn check_compared_names(scored: &Scored, rm_index: usize, names: [&String; 2]) -> Result<()> {
    let present: std::collections::BTreeSet<&str> = scored
        .rows()
        .map(|row| scored.keys[row][rm_index].as_str())
        .collect();
    match names
        .into_iter()
        .find(|name| !present.contains(name.as_str()))
    {
        Some(unknown) => {
            let present: Vec<&str> = present.into_iter().collect();
            Err(Error::Usage(format!(
                "--compare: {}: no `{RM}` named `{unknown}` (present: {})",
                scored.path.display(),
                present.join(", ")
            )))
        }
        None => Ok(()),
    }
}

/// The rows of A and B of each generation, per group; a generation scored twice by one model
/// is bad data.
fn pair_generations(
    scored: &Scored,
    items: &CompareItems,
    (rm_a, rm_b): (&String, &String),
) -> Result<ComparedRows> {
    let mut groups = ComparedRows::new();
    for row in scored.rows() {
        let rm = &scored.keys[row][items.rm_index];
        let is_a = rm == rm_a;
        if !is_a && rm != rm_b {
            continue;
        }
        let mut group = scored.keys[row].clone();
        group.remove(items.rm_index);
        let item = (
            items.question_ids[row].to_owned(),
            items.samples[row].clone(),
        );
        let slot = groups.entry(group).or_default().entry(item).or_default();
        let target = if is_a { &mut slot.0 } else { &mut slot.1 };
        if target.replace(row).is_some() {
            return Err(Error::bad_value(
                scored.path,
                row,
                QUESTION_ID,
                format!("duplicate ({QUESTION_ID}, {SAMPLE}) for rm `{rm}`"),
            ));
        }
    }
    Ok(groups)
}

/// Accumulates report rows column by column.
#[derive(Default)]
struct OutputRows {
    keys: Vec<Vec<String>>,
    rm_b: Vec<Option<String>>,
    percentile: Vec<Option<f64>>,
    results: Vec<GroupResult>,
}

impl OutputRows {
    fn push(
        &mut self,
        key: Vec<String>,
        rm_b: Option<String>,
        percentile: Option<f64>,
        result: GroupResult,
    ) {
        self.keys.push(key);
        self.rm_b.push(rm_b);
        self.percentile.push(percentile);
        self.results.push(result);
    }

    fn into_frame(self, by: &[String], options: &AurocOptions) -> Result<DataFrame> {
        let height = self.results.len();
        let mut columns = key_columns(by, &self.keys);
        if options.compare.is_some() {
            let rm_index = by.iter().position(|b| b == RM).unwrap_or(0);
            columns.insert(rm_index + 1, Column::new("rm_b".into(), self.rm_b));
        }
        let results = &self.results;
        let float = |name: &str, f: fn(&GroupResult) -> Option<f64>| {
            Column::new(name.into(), results.iter().map(f).collect::<Vec<_>>())
        };
        columns.push(Column::new(
            "score".into(),
            vec![options.score.as_str(); height],
        ));
        columns.push(Column::new("percentile".into(), self.percentile));
        columns.push(Column::new(
            "n".into(),
            results.iter().map(|r| r.n).collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            "n_pos".into(),
            results.iter().map(|r| r.n_pos).collect::<Vec<_>>(),
        ));
        columns.push(float("auroc", |r| r.auroc));
        columns.push(float("ci_low", |r| r.ci_low));
        columns.push(float("ci_high", |r| r.ci_high));
        columns.push(Column::new(
            "ci_method".into(),
            vec![options.ci.name(); height],
        ));
        columns.push(Column::new(
            "note".into(),
            results.iter().map(|r| r.note.clone()).collect::<Vec<_>>(),
        ));
        if options.compare.is_some() {
            columns.push(float("auroc_b", |r| r.auroc_b));
            columns.push(float("delta", |r| r.delta));
            columns.push(float("delta_ci_low", |r| r.delta_ci_low));
            columns.push(float("delta_ci_high", |r| r.delta_ci_high));
            columns.push(float("p_value", |r| r.p_value));
        }
        DataFrame::new(height, columns).map_err(|e| Error::table("<auroc report>", e))
    }
}

/// One Utf8 column per `by` name from the group keys.
fn key_columns(by: &[String], keys: &[Vec<String>]) -> Vec<Column> {
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

// ---------------------------------------------------------------- filtering

/// Per-row data that filtering and top-K read, and which rows passed [`check_rows`].
struct FilterInput {
    keep: Vec<bool>,
    keys: Vec<Vec<String>>,
    question_ids: Vec<String>,
    labels: Vec<bool>,
    answers: Vec<Option<String>>,
    rewards: Vec<f64>,
    q_values: Vec<Vec<f32>>,
}

impl FilterInput {
    /// Reads the rows; `value_columns` are checked for non-finite values (after a null
    /// `q_values` list, when `need_q`, has failed with its own hint).
    fn read(
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

    /// Samples grouped by `by` key, then by question.
    fn questions(&self) -> BTreeMap<&[String], Vec<Vec<Sample<'_>>>> {
        let mut grouped: BTreeMap<&[String], BTreeMap<&str, Vec<Sample>>> = BTreeMap::new();
        for row in (0..self.labels.len()).filter(|&row| self.keep[row]) {
            grouped
                .entry(&self.keys[row])
                .or_default()
                .entry(&self.question_ids[row])
                .or_default()
                .push(Sample {
                    is_correct: self.labels[row],
                    answer: self.answers[row].as_deref(),
                    q_values: &self.q_values[row],
                    reward: self.rewards[row],
                });
        }
        grouped
            .into_iter()
            .map(|(key, questions)| (key, questions.into_values().collect()))
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
    let float = |name: &str, f: &dyn Fn(&crate::metrics::filter::FilterSummary) -> f64| {
        Column::new(
            name.into(),
            rows.iter().map(|(_, s)| f(s)).collect::<Vec<_>>(),
        )
    };
    columns.push(Column::new(
        "threshold".into(),
        rows.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "skip".into(),
        vec![options.skip as u32; rows.len()],
    ));
    columns.push(Column::new(
        "questions".into(),
        rows.iter()
            .map(|(_, s)| s.questions as u32)
            .collect::<Vec<_>>(),
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
        rows.iter().map(|(_, s)| s.p_unpaired).collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "p_paired".into(),
        rows.iter().map(|(_, s)| s.p_paired).collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "vote".into(),
        vec![options.vote.name(); rows.len()],
    ));
    columns.push(Column::new(
        "ties_broken".into(),
        rows.iter()
            .map(|(_, s)| s.ties_broken as u32)
            .collect::<Vec<_>>(),
    ));
    columns.push(Column::new(
        "fallback_questions".into(),
        rows.iter()
            .map(|(_, s)| s.fallback_questions as u32)
            .collect::<Vec<_>>(),
    ));
    DataFrame::new(rows.len(), columns).map_err(|e| Error::table("<filter report>", e))
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
    let labels: Vec<bool> = columns
        .bool_not_null(IS_CORRECT)?
        .iter()
        .map(|v| v.unwrap_or(false))
        .collect();
    let error_chars: Vec<Option<u64>> = columns
        .f64(FIRST_ERROR_CHAR)?
        .iter()
        .map(|v| v.filter(|c| *c >= 0.0).map(|c| c as u64))
        .collect();
    let q_values = float32_lists(&columns, Q_VALUES)?;
    let offsets = float_lists(&columns, TOKEN_OFFSETS)?;
    let mut samples_by_key: BTreeMap<&[String], Vec<(usize, Vec<u32>)>> = BTreeMap::new();
    let keys = group_keys(frame, path, by)?;
    if let Some(row) = q_values.iter().position(Option::is_none) {
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
        let Some(row_offsets) = &offsets[row] else {
            return Err(Error::bad_value(path, row, TOKEN_OFFSETS, "null"));
        };
        if row_offsets.len() != q.len() {
            return Err(Error::bad_value(
                path,
                row,
                TOKEN_OFFSETS,
                format!("{} offsets for {} Q-values", row_offsets.len(), q.len()),
            ));
        }
        let row_offsets = row_offsets.iter().map(|&o| o as u32).collect();
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
                first_error_char: error_chars[*row],
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
mod tests {
    use super::*;

    fn list(name: &str, rows: &[&[f32]]) -> Column {
        let series: Vec<Series> = rows
            .iter()
            .map(|values| Series::new("".into(), values.to_vec()))
            .collect();
        Series::new(name.into(), series).into()
    }

    /// Four responses of rm `a` on benchmark `x`; rows 0 and 2 are correct.
    fn frame(rewards: [f32; 4]) -> DataFrame {
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

    fn auroc_of(frame: &DataFrame, options: &AurocOptions) -> Vec<Option<f64>> {
        let report = auroc_report(frame, Path::new("t"), options).unwrap();
        report
            .frame
            .column("auroc")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .collect()
    }

    #[test]
    fn q_scores_read_the_prefix() {
        let frame = frame([0.1, 0.2, 0.3, 0.4]);
        let options = |score: &str, percentiles: Option<Vec<f64>>| AurocOptions {
            score: score.to_owned(),
            percentiles,
            ci: CiMethod::None,
            ..AurocOptions::default()
        };
        // Whole responses. q_min: positives −0.2, 0.6; negatives −0.5, −0.1 → wins 1 + 2 = 3/4.
        assert_eq!(auroc_of(&frame, &options("q_min", None)), vec![Some(0.75)]);
        // q_last: positives 0.4, 0.7; negatives 0.0, 0.7 → 1 + (1 + ½) = 2.5/4.
        assert_eq!(
            auroc_of(&frame, &options("q_last", None)),
            vec![Some(0.625)]
        );
        // At 0.5 the prefix ends at index max(floor(n/2) − 1, 0): 1 for n = 4, 0 for n = 2.
        // q_last: positives −0.2, 0.6; negatives 0.2, 0.9 → 0 + 1 = 1/4.
        // q_min: positives −0.2, 0.6; negatives 0.1, −0.1 → 0 + 2 = 2/4.
        // reward (token_rewards = the same lists) at 0.5 equals q_last.
        let half = Some(vec![0.5]);
        assert_eq!(
            auroc_of(&frame, &options("q_last", half.clone())),
            vec![Some(0.25)]
        );
        assert_eq!(
            auroc_of(&frame, &options("q_min", half.clone())),
            vec![Some(0.5)]
        );
        assert_eq!(auroc_of(&frame, &options(REWARD, half)), vec![Some(0.25)]);
    }

    #[test]
    fn percentiles_need_a_token_score() {
        let options = AurocOptions {
            score: "response_tokens".to_owned(),
            percentiles: Some(vec![0.5]),
            ..AurocOptions::default()
        };
        let error = auroc_report(&frame([0.0; 4]), Path::new("t"), &options).unwrap_err();
        assert!(error.to_string().contains("--percentiles"), "{error}");
    }

    #[test]
    fn all_rows_dropped_leaves_an_empty_report() {
        let frame = frame([f32::NAN, f32::INFINITY, f32::NAN, f32::NEG_INFINITY]);
        let error = auroc_report(&frame, Path::new("t"), &AurocOptions::default()).unwrap_err();
        assert!(
            error.to_string().contains("4 row(s): 1, 2, 3, 4"),
            "{error}"
        );
        let options = AurocOptions {
            drop_nan: true,
            ..AurocOptions::default()
        };
        let report = auroc_report(&frame, Path::new("t"), &options).unwrap();
        assert_eq!((report.frame.height(), report.dropped_rows), (0, 4));
    }

    /// `frame` with `q_values` replaced, and `question_id`/`sample` columns.
    fn frame_with_q(q_values: [&[f32]; 4]) -> DataFrame {
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

    #[test]
    fn q_min_fails_on_a_nan_inside_a_response() {
        // Row 2 has a NaN after its first token; f64::min used to skip it silently.
        let frame = frame_with_q([&[0.5, -0.2], &[0.1, f32::NAN, -0.5], &[0.6], &[-0.1, 0.9]]);
        let options = AurocOptions {
            score: "q_min".to_owned(),
            ci: CiMethod::None,
            ..AurocOptions::default()
        };
        let error = auroc_report(&frame, Path::new("t"), &options).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`q_values` is missing or not finite in 1 row(s): 2"),
            "{error}"
        );
        let options = AurocOptions {
            drop_nan: true,
            ..options
        };
        let report = auroc_report(&frame, Path::new("t"), &options).unwrap();
        assert_eq!(report.dropped_rows, 1);
        // Left: positives −0.2, 0.6 against the negative −0.1 → 1 of 2.
        assert_eq!(
            report.frame.column("auroc").unwrap().f64().unwrap().get(0),
            Some(0.5)
        );
    }

    #[test]
    fn compare_with_an_unknown_rm_is_a_usage_error_listing_the_names() {
        let frame = frame_with_q([&[0.5], &[0.1], &[0.6], &[-0.1]]);
        let options = AurocOptions {
            compare: Some(("a".to_owned(), "bt".to_owned())),
            ..AurocOptions::default()
        };
        match auroc_report(&frame, Path::new("t"), &options) {
            Err(Error::Usage(text)) => {
                assert!(text.contains("no `rm` named `bt` (present: a)"), "{text}")
            }
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

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

    #[test]
    fn empty_group_has_a_note_and_no_auroc() {
        let result = one_group(&[], None, &[], None, &AurocOptions::default());
        assert_eq!((result.n, result.auroc), (0, None));
        assert_eq!(result.note.as_deref(), Some("empty group"));
    }

    #[test]
    fn one_sample_set_has_no_interval() {
        let options = AurocOptions {
            ci: CiMethod::Samples,
            ..AurocOptions::default()
        };
        let result = one_group(
            &[0.9, 0.1],
            None,
            &[true, false],
            Some(&["s0", "s0"]),
            &options,
        );
        assert_eq!((result.auroc, result.ci_low), (Some(1.0), None));
        assert_eq!(
            result.note.as_deref(),
            Some("1 sample sets: fewer than 2, no interval")
        );
    }

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
        assert!(usage_text(parse_compare("a,a")).contains("two different"));
        assert!(usage_text(parse_compare("a")).contains("two different"));
        assert_eq!(
            parse_compare("a,b").unwrap(),
            ("a".to_owned(), "b".to_owned())
        );
    }
}

//! `qrm-auroc`'s report: AUROC per group and percentile, with confidence intervals and, with
//! `--compare`, DeLong's paired test of two reward models on the same generations; with
//! `--within COL`, a second row per group and percentile holding the within-`COL` AUROC
//! (`qrm::metrics::within`: pairs of one question only, cluster-bootstrap interval and paired
//! test).

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::metrics::auroc::{auroc, bootstrap_interval, delong, delong_paired};
use crate::metrics::checks::{check_rows, list_rows, sample_keys, RowChecks};
use crate::metrics::filter::prefix_index;
use crate::metrics::report::{float_lists, group_keys, key_columns};
use crate::metrics::stats::mean_t_interval;
use crate::metrics::within::{within_auroc, within_bootstrap};
use crate::pipeline::schema::{
    Columns, IS_CORRECT, QUESTION_ID, Q_VALUES, REWARD, RM, SAMPLE, TOKEN_REWARDS,
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
    /// A column whose values group the items (e.g. `question_id`): each group × percentile
    /// also gets a within-group AUROC row.
    pub within: Option<String>,
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
            within: None,
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
    /// A within-group row (`--within`), not a pooled one.
    within: bool,
    /// Within rows: groups with both classes.
    n_groups: Option<u32>,
    /// Within rows: Σ_g P_g·N_g (pooled rows: n_pos·n_neg, filled in by the frame).
    n_pairs: Option<u64>,
}

/// `ci_method` of a within row: the cluster bootstrap, unless intervals are off.
fn within_ci_method(ci: CiMethod) -> &'static str {
    match ci {
        CiMethod::None => CiMethod::None.name(),
        _ => "cluster-bootstrap",
    }
}

/// The within-group row of one group × percentile: A_w of `scores` (and of `scores_b`, their
/// difference and its paired cluster-bootstrap p-value) within the `keys` groups. The interval
/// is the cluster bootstrap whatever `ci` is (`resamples`, `seed`, `level`), none with
/// `CiMethod::None`; the p-value is computed either way.
fn within_group(
    scores: &[f64],
    scores_b: Option<&[f64]>,
    labels: &[bool],
    keys: &[&str],
    column: &str,
    options: &AurocOptions,
) -> GroupResult {
    let n_pos = labels.iter().filter(|&&l| l).count();
    let mut result = GroupResult {
        n: labels.len() as u32,
        n_pos: n_pos as u32,
        within: true,
        ..Default::default()
    };
    let estimate = match within_auroc(scores, labels, keys) {
        Ok(estimate) => estimate,
        Err(why) => {
            result.note = Some(format!("within `{column}`: {why}: AUROC undefined"));
            return result;
        }
    };
    result.auroc = Some(estimate.auroc);
    result.n_groups = Some(estimate.informative as u32);
    result.n_pairs = Some(estimate.pairs as u64);
    let single_class = estimate.groups - estimate.informative;
    if single_class > 0 {
        result.note = Some(format!(
            "{single_class} of {} `{column}` groups have one class: no pairs",
            estimate.groups
        ));
    }
    let bootstrap = |b: Option<&[f64]>| {
        within_bootstrap(
            scores,
            b,
            labels,
            keys,
            options.resamples,
            options.level,
            options.seed,
        )
        .ok()
    };
    if options.ci != CiMethod::None {
        if let Some(interval) = bootstrap(None) {
            result.ci_low = Some(interval.low);
            result.ci_high = Some(interval.high);
        }
    }
    if let Some(scores_b) = scores_b {
        result.auroc_b = within_auroc(scores_b, labels, keys).ok().map(|w| w.auroc);
        result.delta = result.auroc.zip(result.auroc_b).map(|(a, b)| a - b);
        if let Some(paired) = bootstrap(Some(scores_b)) {
            result.p_value = paired.p_value;
            if options.ci != CiMethod::None {
                result.delta_ci_low = Some(paired.low);
                result.delta_ci_high = Some(paired.high);
            }
        }
    }
    result
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
/// With `within`: after each such (pooled) row a within-group row of the same group and
/// percentile (`qrm::metrics::within`), and three more columns: `kind` (after `percentile`:
/// `pooled` or `within COL`), `n_groups` and `n_pairs` (after `n_pos`: the `COL` groups with
/// both classes and Σ P_g·N_g; pooled rows: null and n_pos·n_neg). A within row's interval is
/// the cluster bootstrap (`ci_method` `cluster-bootstrap`; none with `CiMethod::None`), its
/// `p_value` the paired cluster bootstrap's; its `note` counts the one-class groups. The
/// `within` column must exist and have no nulls; with `compare` the two rows of a generation
/// must agree on it.
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

/// The pooled rows of a report (all of them when it has no `kind` column, i.e. without
/// `within`): what `qrm-auroc --plot` draws.
pub fn pooled_rows(report: &DataFrame) -> Result<DataFrame> {
    let path = Path::new("<auroc report>");
    if !report
        .get_column_names()
        .iter()
        .any(|c| c.as_str() == "kind")
    {
        return Ok(report.clone());
    }
    let kind = Columns::new(report, path).str("kind")?;
    let mask = kind.equal("pooled");
    report.filter(&mask).map_err(|e| Error::table(path, e))
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
    /// The `--within` key of every row (as text).
    within_keys: Option<Vec<String>>,
}

/// The `within` column of every row as text: a missing column fails naming the file and the
/// columns present, a null fails naming its row.
fn read_within_keys(frame: &DataFrame, path: &Path, name: &str) -> Result<Vec<String>> {
    let keys = group_keys(frame, path, &[name.to_owned()])?;
    let column = frame.column(name).map_err(|e| Error::table(path, e))?;
    if let Some(row) = column
        .is_null()
        .iter()
        .position(|is_null| is_null == Some(true))
    {
        return Err(Error::bad_value(
            path,
            row,
            name,
            "null value: every row needs a --within key",
        ));
    }
    Ok(keys
        .into_iter()
        .map(|key| key.into_iter().next().unwrap_or_default())
        .collect())
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
        let within_keys = options
            .within
            .as_deref()
            .map(|name| read_within_keys(frame, path, name))
            .transpose()?;
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
            within_keys,
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

    /// The `--within` key of each row (with `within`).
    fn within(&self, rows: impl Iterator<Item = usize>) -> Option<Vec<&str>> {
        self.within_keys
            .as_ref()
            .map(|keys| rows.map(|r| keys[r].as_str()).collect())
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
        let within = scored.within(rows.iter().copied());
        for (percentile, values) in scored.percentiles.iter().zip(&scored.scores) {
            let scores: Vec<f64> = rows
                .iter()
                .map(|&r| values[r].unwrap_or(f64::NAN))
                .collect();
            let result = one_group(&scores, None, &group_labels, sets.as_deref(), options);
            output.push(key.to_vec(), None, *percentile, result);
            if let (Some(keys), Some(column)) = (&within, &options.within) {
                let result = within_group(&scores, None, &group_labels, keys, column, options);
                output.push(key.to_vec(), None, *percentile, result);
            }
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
                    if let (Some(keys), Some(column)) = (&scored.within_keys, &options.within) {
                        if keys[a] != keys[b] {
                            return Err(Error::bad_value(
                                scored.path,
                                b,
                                column,
                                format!("differs from row {} of the same generation", a + 1),
                            ));
                        }
                    }
                    matched.push((a, b));
                }
                _ => unmatched += 1,
            }
        }
        let group_labels: Vec<bool> = matched.iter().map(|&(a, _)| scored.labels[a]).collect();
        let sets = scored.sets(matched.iter().map(|&(a, _)| a));
        let within = scored.within(matched.iter().map(|&(a, _)| a));
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
            if let (Some(keys), Some(column)) = (&within, &options.within) {
                let result = within_group(
                    &scores_a,
                    Some(&scores_b),
                    &group_labels,
                    keys,
                    column,
                    options,
                );
                output.push(key.clone(), Some(rm_b.clone()), *percentile, result);
            }
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
        if let Some(column) = &options.within {
            let within = format!("within {column}");
            columns.push(Column::new(
                "kind".into(),
                results
                    .iter()
                    .map(|r| if r.within { within.as_str() } else { "pooled" })
                    .collect::<Vec<_>>(),
            ));
        }
        columns.push(Column::new(
            "n".into(),
            results.iter().map(|r| r.n).collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            "n_pos".into(),
            results.iter().map(|r| r.n_pos).collect::<Vec<_>>(),
        ));
        if options.within.is_some() {
            columns.push(Column::new(
                "n_groups".into(),
                results.iter().map(|r| r.n_groups).collect::<Vec<_>>(),
            ));
            let pairs = |r: &GroupResult| {
                if r.within {
                    r.n_pairs
                } else {
                    Some(u64::from(r.n_pos) * u64::from(r.n - r.n_pos))
                }
            };
            columns.push(Column::new(
                "n_pairs".into(),
                results.iter().map(pairs).collect::<Vec<_>>(),
            ));
        }
        columns.push(float("auroc", |r| r.auroc));
        columns.push(float("ci_low", |r| r.ci_low));
        columns.push(float("ci_high", |r| r.ci_high));
        columns.push(Column::new(
            "ci_method".into(),
            results
                .iter()
                .map(|r| {
                    if r.within {
                        within_ci_method(options.ci)
                    } else {
                        options.ci.name()
                    }
                })
                .collect::<Vec<_>>(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::report::fixtures::{frame, frame_with_q};

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
    fn compare_names_are_checked_before_the_columns_pairing_reads() {
        // `frame` has no question_id: a wrong --compare name is still the usage error.
        let options = AurocOptions {
            compare: Some(("a".to_owned(), "b".to_owned())),
            ..AurocOptions::default()
        };
        let result = auroc_report(&frame([0.1, 0.2, 0.3, 0.4]), Path::new("t"), &options);
        assert!(matches!(result, Err(Error::Usage(_))), "{result:?}");
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
}

//! `qrm-filter --max-false-drop`/`--sweep-alpha`/`--warmup`: Q-filtering at a calibrated
//! threshold (the rules and the guarantee are in [`crate::metrics::calibration`]), with the
//! realised false-drop rate, the share of wrong samples dropped and Table 1 at that threshold.
//!
//! Conformal θ: one per RM (the `rm` label; `rm` must be a `--by` column), from the correct
//! samples of that RM in the calibration source, pooled over its other `--by` groups: a
//! separate scores table (`--calibrate FILE`, read with the same row checks; an `rm` whose
//! `rm_id` differs between the two tables is refused), or a seeded, question-disjoint share of
//! the input's own questions (`--calibrate-fraction F`, `qrm::pipeline::pairs::split_questions`
//! over the distinct `question_id`s, so every RM gets the same split); the report then covers
//! the other questions only. Warm-up θ: per question, from its own first K samples; the report
//! covers every question, the false-drop and wrong-drop rates the samples after the warm-up.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::filter::{summary_columns, FilterInput, LocatedColumns, QuestionRows};
use super::key_columns;
use crate::error::{Error, Result};
use crate::metrics::calibration::{
    conformal_threshold, drop_counts, running_min, warmup_thresholds, ConformalThreshold,
    DropCounts,
};
use crate::metrics::checks::{model_ids, RowChecks};
use crate::metrics::filter::{filter_summary_at, FilterOptions, FilterSummary, Sample};
use crate::metrics::localisation::{localisation_summary_at, LocalisationSummary, LocatedSample};
use crate::metrics::stats::{median, proportion};
use crate::pipeline::pairs::split_questions;
use crate::pipeline::schema::{Q_VALUES, RM};

/// The level of the Wilson intervals on the drop rates.
pub const LEVEL: f64 = 0.95;

/// Where the conformal θ's calibration samples come from.
#[derive(Debug, Clone, Copy)]
pub enum CalibrationSource<'a> {
    /// A separate scores table.
    File {
        frame: &'a DataFrame,
        path: &'a Path,
    },
    /// This share of the input's questions, drawn with `FilterOptions::seed`.
    Split { fraction: f64 },
}

/// How each sample's threshold is chosen.
#[derive(Debug, Clone)]
pub enum Calibration<'a> {
    /// Split-conformal θ per RM, one report row per α.
    Conformal {
        source: CalibrationSource<'a>,
        alphas: Vec<f64>,
    },
    /// Per question: the `percentile`-th percentile of its first `samples` samples.
    Warmup { samples: usize, percentile: f64 },
}

impl Calibration<'_> {
    fn name(&self) -> &'static str {
        match self {
            Calibration::Conformal { .. } => "conformal",
            Calibration::Warmup { .. } => "warmup",
        }
    }
}

/// Settings of [`calibrated_report`].
#[derive(Debug, Clone)]
pub struct CalibratedOptions<'a> {
    /// `skip`, `vote` and `seed` (the tie-breaking coin and the calibration split);
    /// `threshold` is not read.
    pub filter: FilterOptions,
    pub calibration: Calibration<'a>,
    /// Also where wrong samples are dropped relative to their first error (needs
    /// `first_error_char` and `token_offsets`).
    pub localise: bool,
    pub checks: RowChecks,
}

/// How a row's threshold was chosen.
#[derive(Default)]
struct Chosen {
    alpha: Option<f64>,
    threshold: Option<f64>,
    conformal_k: Option<u32>,
    calibration_questions: Option<u32>,
    calibration_correct: Option<u32>,
}

/// One report row.
struct Row {
    key: Vec<String>,
    chosen: Chosen,
    counts: DropCounts,
    summary: FilterSummary,
    localisation: Option<LocalisationSummary>,
}

/// Calibration samples per RM: running minima of correct samples and the question count.
#[derive(Default)]
struct RmCalibration {
    scores: Vec<f32>,
    questions: usize,
}

/// Q-filtering at calibrated thresholds, per `by` group (and α).
///
/// Output columns: the `by` columns, `method` (`conformal` or `warmup`), `alpha`, `warmup`,
/// `warmup_percentile` (the other method's are null), `threshold` (conformal: θ, null when
/// k = 0 and nothing is dropped; warm-up: the median of the questions' θ), `conformal_k` (θ's
/// rank k among the calibration scores), `calibration_questions`, `calibration_correct` (n),
/// `skip`, `correct_samples` (correct samples under a threshold: the test questions', or those
/// after the warm-up), `false_drop_rate` with its 95 % Wilson interval `false_drop_low`,
/// `false_drop_high` (fractions), `wrong_samples`, `wrong_drop_rate`, `wrong_drop_low`,
/// `wrong_drop_high`, then Table 1 over the test questions as [`super::filter::filter_report`]
/// (`questions` … `fallback_questions`); with `localise` also `located_wrong_samples`,
/// `at_or_after_error_pct`, `median_tokens_after`, `median_tokens_before`,
/// `median_error_token` over the samples under a threshold.
///
/// Errors: `rm` not among `by`, an α outside (0, 1) (usage); an RM without a correct
/// calibration sample, naming the calibration file (or the input and the split) and the RM.
pub fn calibrated_report(
    frame: &DataFrame,
    path: &Path,
    by: &[String],
    options: &CalibratedOptions,
) -> Result<DataFrame> {
    let Some(rm_index) = by.iter().position(|name| name == RM) else {
        return Err(Error::Usage(format!(
            "calibrated thresholds are per reward model: `--by` must include `{RM}`"
        )));
    };
    if let Calibration::Conformal { alphas, .. } = &options.calibration {
        if let Some(bad) = alphas.iter().find(|a| !(**a > 0.0 && **a < 1.0)) {
            return Err(Error::Usage(format!(
                "the maximum false-drop rate must be strictly between 0 and 1, got {bad}"
            )));
        }
    }
    let skip = options.filter.skip;
    let input = FilterInput::read(frame, path, by, true, &[Q_VALUES], options.checks)?;
    let located = if options.localise {
        Some(LocatedColumns::read(frame, path)?)
    } else {
        None
    };
    let groups = input.question_rows();

    let pools = match &options.calibration {
        Calibration::Conformal { source, .. } => {
            calibration_pools(frame, path, &input, &groups, rm_index, *source, options)?
        }
        Calibration::Warmup { .. } => Pools::default(),
    };
    let Pools {
        by_rm: calibration,
        held,
        source_text,
        source_path,
    } = pools;
    let source_path = source_path.unwrap_or_else(|| path.to_owned());

    // θ per RM and α, logged once.
    let mut chosen_by_rm: BTreeMap<&str, Vec<ConformalThreshold>> = BTreeMap::new();
    if let Calibration::Conformal { alphas, .. } = &options.calibration {
        for (rm, source) in calibration.iter().filter(|(_, c)| !c.scores.is_empty()) {
            let chosen: Vec<ConformalThreshold> = alphas
                .iter()
                .map(|&alpha| conformal_threshold(&source.scores, alpha))
                .collect();
            for c in &chosen {
                tracing::info!(
                    "{RM} {rm}: θ = {} at α = {} (k = {} of n = {} correct calibration samples)",
                    c.threshold,
                    c.alpha,
                    c.rank,
                    c.calibration
                );
            }
            chosen_by_rm.insert(rm, chosen);
        }
    }

    let mut rows: Vec<Row> = Vec::new();
    for (key, questions) in &groups {
        let test: Vec<&Vec<usize>> = questions
            .iter()
            .filter(|(id, _)| !held.contains(*id))
            .map(|(_, rows)| rows)
            .collect();
        if test.is_empty() {
            continue;
        }
        let samples: Vec<Vec<Sample>> = test
            .iter()
            .map(|rows| rows.iter().map(|&row| input.sample(row)).collect())
            .collect();
        let rm = &key[rm_index];
        let mut push = |thresholds: Vec<Vec<Option<f64>>>, chosen: Chosen| -> Result<()> {
            let Some(summary) = filter_summary_at(&samples, &options.filter, &thresholds) else {
                return Ok(());
            };
            let localisation = match &located {
                Some(located) => localise(&input, located, path, &test, &thresholds, skip)?,
                None => None,
            };
            rows.push(Row {
                key: key.to_vec(),
                chosen,
                counts: drop_counts(&samples, &thresholds, skip),
                summary,
                localisation,
            });
            Ok(())
        };
        match &options.calibration {
            Calibration::Conformal { .. } => {
                let Some(all_chosen) = chosen_by_rm.get(rm.as_str()) else {
                    let known: Vec<&str> = chosen_by_rm.keys().copied().collect();
                    return Err(Error::Format {
                        path: source_path,
                        message: format!(
                            "no correct sample of `{RM}` `{rm}` to calibrate its threshold on \
                             ({source_text}: {} question(s) of `{rm}`, none with a correct \
                             sample; RMs with correct samples: {})",
                            calibration.get(rm.as_str()).map_or(0, |c| c.questions),
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    });
                };
                let questions_there = calibration.get(rm.as_str()).map_or(0, |c| c.questions);
                for chosen in all_chosen {
                    let thresholds = samples
                        .iter()
                        .map(|question| vec![Some(chosen.threshold); question.len()])
                        .collect();
                    push(
                        thresholds,
                        Chosen {
                            alpha: Some(chosen.alpha),
                            threshold: chosen.threshold.is_finite().then_some(chosen.threshold),
                            conformal_k: Some(chosen.rank as u32),
                            calibration_questions: Some(questions_there as u32),
                            calibration_correct: Some(chosen.calibration as u32),
                        },
                    )?;
                }
            }
            Calibration::Warmup {
                samples: warmup,
                percentile,
            } => {
                let thresholds = warmup_thresholds(&samples, *warmup, skip, *percentile);
                let per_question: Vec<f64> = thresholds
                    .iter()
                    .filter_map(|question| question.iter().flatten().next().copied())
                    .filter(|theta| theta.is_finite())
                    .collect();
                push(
                    thresholds,
                    Chosen {
                        threshold: median(&per_question),
                        ..Chosen::default()
                    },
                )?;
            }
        }
    }
    build_frame(by, &rows, options)
}

/// The calibration samples of every RM, and the input's questions they took.
#[derive(Default)]
struct Pools {
    by_rm: BTreeMap<String, RmCalibration>,
    /// Input questions used for calibration (`--calibrate-fraction`), left out of the report.
    held: HashSet<String>,
    /// Where the samples came from, for messages.
    source_text: String,
    /// The calibration file (`None`: the input).
    source_path: Option<PathBuf>,
}

/// Collects the correct calibration samples' running minima per RM from `source`.
fn calibration_pools(
    frame: &DataFrame,
    path: &Path,
    input: &FilterInput,
    groups: &QuestionRows,
    rm_index: usize,
    source: CalibrationSource,
    options: &CalibratedOptions,
) -> Result<Pools> {
    let skip = options.filter.skip;
    let mut pools = Pools::default();
    let input_ids = || {
        (0..input.keep.len())
            .filter(|&row| input.keep[row])
            .map(|row| input.question_ids[row].as_str())
    };
    match source {
        CalibrationSource::Split { fraction } => {
            let ids: Vec<&str> = input_ids().collect();
            pools.held = split_questions(&ids, fraction, options.filter.seed)?;
            pools.source_text = format!(
                "among the calibration questions, --calibrate-fraction {fraction} --seed {}",
                options.filter.seed
            );
            for (key, questions) in groups {
                let entry = pools.by_rm.entry(key[rm_index].clone()).or_default();
                for (_, rows) in questions.iter().filter(|(id, _)| pools.held.contains(*id)) {
                    entry.questions += 1;
                    add_scores(&mut entry.scores, input, rows, skip);
                }
            }
        }
        CalibrationSource::File {
            frame: calibration_frame,
            path: calibration_path,
        } => {
            let by_rm = [RM.to_owned()];
            let calibration = FilterInput::read(
                calibration_frame,
                calibration_path,
                &by_rm,
                true,
                &[Q_VALUES],
                options.checks,
            )?;
            check_same_models(
                frame,
                path,
                input,
                calibration_frame,
                calibration_path,
                &calibration,
            )?;
            pools.source_text = calibration_path.display().to_string();
            pools.source_path = Some(calibration_path.to_owned());
            let mut calibration_ids: HashSet<&str> = HashSet::new();
            for (key, questions) in calibration.question_rows() {
                let entry = pools.by_rm.entry(key[0].clone()).or_default();
                for (id, rows) in &questions {
                    calibration_ids.insert(id);
                    entry.questions += 1;
                    add_scores(&mut entry.scores, &calibration, rows, skip);
                }
            }
            let shared: HashSet<&str> = input_ids()
                .filter(|id| calibration_ids.contains(id))
                .collect();
            if !shared.is_empty() {
                tracing::warn!(
                    "{} question(s) of {} are also in the calibration file {}: the guarantee \
                     assumes calibration and test samples are exchangeable, a question-disjoint \
                     calibration set is the usual choice",
                    shared.len(),
                    path.display(),
                    calibration_path.display()
                );
            }
        }
    }
    Ok(pools)
}

/// Appends the running minima of the correct samples among `rows` of `input`.
fn add_scores(scores: &mut Vec<f32>, input: &FilterInput, rows: &[usize], skip: usize) {
    for &row in rows {
        let sample = input.sample(row);
        if sample.is_correct {
            scores.push(running_min(sample.q_values, skip));
        }
    }
}

/// Refuses an `rm` label whose `rm_id` differs between the input and the calibration table.
fn check_same_models(
    frame: &DataFrame,
    path: &Path,
    input: &FilterInput,
    calibration_frame: &DataFrame,
    calibration_path: &Path,
    calibration: &FilterInput,
) -> Result<()> {
    let ids = model_ids(frame, path, &input.keep)?;
    let calibration_ids = model_ids(calibration_frame, calibration_path, &calibration.keep)?;
    for (label, id) in &ids {
        if let Some(other) = calibration_ids.get(label).filter(|other| *other != id) {
            return Err(Error::Format {
                path: calibration_path.to_owned(),
                message: format!(
                    "`{RM}` `{label}` is `{other}` here but `{id}` in {}: a threshold must be \
                     calibrated on scores of the same model",
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Localisation over the samples under a threshold.
fn localise(
    input: &FilterInput,
    located: &LocatedColumns,
    path: &Path,
    questions: &[&Vec<usize>],
    thresholds: &[Vec<Option<f64>>],
    skip: usize,
) -> Result<Option<LocalisationSummary>> {
    let mut chosen: Vec<(usize, f64)> = Vec::new();
    for (rows, thresholds) in questions.iter().zip(thresholds) {
        for (&row, threshold) in rows.iter().zip(thresholds) {
            if let Some(threshold) = threshold {
                chosen.push((row, *threshold));
            }
        }
    }
    let offsets: Vec<Vec<u32>> = chosen
        .iter()
        .map(|&(row, _)| located.offsets(path, row, input.sample(row).q_values.len()))
        .collect::<Result<_>>()?;
    let samples: Vec<LocatedSample> = chosen
        .iter()
        .zip(&offsets)
        .map(|(&(row, _), offsets)| {
            let sample = input.sample(row);
            LocatedSample {
                is_correct: sample.is_correct,
                first_error_char: located.error_chars[row],
                q_values: sample.q_values,
                token_offsets: offsets,
            }
        })
        .collect();
    let thresholds: Vec<Option<f64>> = chosen.iter().map(|&(_, t)| Some(t)).collect();
    Ok(localisation_summary_at(&samples, skip, &thresholds))
}

fn build_frame(by: &[String], rows: &[Row], options: &CalibratedOptions) -> Result<DataFrame> {
    let keys: Vec<Vec<String>> = rows.iter().map(|r| r.key.clone()).collect();
    let mut columns = key_columns(by, &keys);
    let height = rows.len();
    let (warmup, warmup_percentile) = match options.calibration {
        Calibration::Warmup {
            samples,
            percentile,
        } => (Some(samples as u32), Some(percentile)),
        Calibration::Conformal { .. } => (None, None),
    };
    let optional = |name: &str, f: &dyn Fn(&Row) -> Option<f64>| {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<_>>())
    };
    let count = |name: &str, f: &dyn Fn(&Row) -> Option<u32>| {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<_>>())
    };
    columns.push(Column::new(
        "method".into(),
        vec![options.calibration.name(); height],
    ));
    columns.push(optional("alpha", &|r| r.chosen.alpha));
    columns.push(Column::new("warmup".into(), vec![warmup; height]));
    columns.push(Column::new(
        "warmup_percentile".into(),
        vec![warmup_percentile; height],
    ));
    columns.push(optional("threshold", &|r| r.chosen.threshold));
    columns.push(count("conformal_k", &|r| r.chosen.conformal_k));
    columns.push(count("calibration_questions", &|r| {
        r.chosen.calibration_questions
    }));
    columns.push(count("calibration_correct", &|r| {
        r.chosen.calibration_correct
    }));
    columns.push(Column::new(
        "skip".into(),
        vec![options.filter.skip as u32; height],
    ));
    let rate = |dropped: &dyn Fn(&DropCounts) -> (usize, usize)| {
        rows.iter()
            .map(|r| {
                let (part, whole) = dropped(&r.counts);
                proportion(part as u64, whole as u64, LEVEL)
            })
            .collect::<Vec<_>>()
    };
    for (prefix, total, part) in [
        (
            "false_drop",
            "correct_samples",
            (&|c: &DropCounts| (c.correct_dropped, c.correct)) as &dyn Fn(&DropCounts) -> _,
        ),
        ("wrong_drop", "wrong_samples", &|c: &DropCounts| {
            (c.wrong_dropped, c.wrong)
        }),
    ] {
        columns.push(count(total, &|r| Some(part(&r.counts).1 as u32)));
        let rates = rate(part);
        columns.push(Column::new(
            format!("{prefix}_rate").into(),
            rates.iter().map(|p| p.map(|p| p.value)).collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            format!("{prefix}_low").into(),
            rates.iter().map(|p| p.map(|p| p.low)).collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            format!("{prefix}_high").into(),
            rates.iter().map(|p| p.map(|p| p.high)).collect::<Vec<_>>(),
        ));
    }
    let summaries: Vec<&FilterSummary> = rows.iter().map(|r| &r.summary).collect();
    columns.extend(summary_columns(&summaries, options.filter.vote));
    if options.localise {
        let local = |f: &dyn Fn(&LocalisationSummary) -> Option<f64>| {
            rows.iter()
                .map(|r| r.localisation.as_ref().and_then(f))
                .collect::<Vec<_>>()
        };
        columns.push(Column::new(
            "located_wrong_samples".into(),
            rows.iter()
                .map(|r| r.localisation.as_ref().map(|l| l.wrong_samples as u32))
                .collect::<Vec<_>>(),
        ));
        columns.push(Column::new(
            "at_or_after_error_pct".into(),
            local(&|l| Some(l.at_or_after_error_pct).filter(|v| v.is_finite())),
        ));
        columns.push(Column::new(
            "median_tokens_after".into(),
            local(&|l| l.median_tokens_after),
        ));
        columns.push(Column::new(
            "median_tokens_before".into(),
            local(&|l| l.median_tokens_before),
        ));
        columns.push(Column::new(
            "median_error_token".into(),
            local(&|l| l.median_error_token),
        ));
    }
    DataFrame::new(height, columns).map_err(|e| Error::table("<calibrated filter report>", e))
}

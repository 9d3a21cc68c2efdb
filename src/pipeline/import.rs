//! Importers: real dataset formats into the canonical generations and pairs tables.
//!
//! | format | recognised by columns | produces |
//! |---|---|---|
//! | `zeroeval` | `gold`, `output`, `model` | generations, `sample` = model |
//! | `nemo` | `generated_solution` | generations, `sample` from `output-greedy` / `output-rsN` |
//! | `openmath-pairs` | `question`, `correct`, `incorrect` | pairs |
//! | `hh-rlhf` | `chosen`, `rejected` (no `question`) | pairs, prompt = shared dialogue |
//! | `prm800k` | `instruction`, `next_response`, `rating` | generations, one per rated step |
//! | `generic` | anything else, mapped by [`ColumnMapping`] | generations |
//!
//! Output rows are aligned with input rows (minus counted skips), so every input column an
//! importer does not consume is kept after the canonical ones. The mapping rules are listed
//! in `docs/schemas.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::pipeline::grading::{grade, Tolerance};
use crate::pipeline::io::{concat_tables, display_path, read_table_with, ReadOptions};
use crate::pipeline::pairs::unique_samples;
use crate::pipeline::schema::{
    generations_frame, pairs_frame, Generation, Pair, BENCHMARK, EXPECTED_ANSWER, FIRST_ERROR_CHAR,
    IS_CORRECT, PAIR_ID, PREDICTED_ANSWER, QUESTION, QUESTION_ID, RESPONSE, SAMPLE, STEP_INDEX,
    STEP_RATING,
};

/// The source formats `qrm-import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceFormat {
    /// ZeroEval results: `id, question, gold, model, output, pred, is_correct`.
    Zeroeval,
    /// NeMo-Skills / OpenMathInstruct predictions: `question, generated_solution,
    /// predicted_answer, expected_answer, is_correct`.
    Nemo,
    /// OpenMathInstruct preference rows: `question, correct, incorrect`.
    OpenmathPairs,
    /// Anthropic HH-RLHF: `chosen, rejected` dialogues.
    HhRlhf,
    /// PRM800K step ratings: `instruction, responses, next_response, rating`.
    Prm800k,
    /// Any table, mapped with `--question-col` and friends.
    Generic,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Zeroeval => "zeroeval",
            SourceFormat::Nemo => "nemo",
            SourceFormat::OpenmathPairs => "openmath-pairs",
            SourceFormat::HhRlhf => "hh-rlhf",
            SourceFormat::Prm800k => "prm800k",
            SourceFormat::Generic => "generic",
        }
    }

    /// Which canonical table the format becomes.
    pub fn table(self) -> TableKind {
        match self {
            SourceFormat::OpenmathPairs | SourceFormat::HhRlhf => TableKind::Pairs,
            _ => TableKind::Generations,
        }
    }
}

/// What a PRM800K neutral step (rating 0) becomes (`qrm-import --neutral`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NeutralRating {
    /// `is_correct` true: no error so far (the usual PRM convention).
    #[default]
    Correct,
    /// `is_correct` false, with `first_error_char` at the rated step.
    Incorrect,
    /// Left out (counted): only clearly good (+1) and bad (-1) steps remain.
    Drop,
}

/// The two tables an import can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Generations,
    Pairs,
}

/// Column names for the generic mapping; `None` means the canonical name.
#[derive(Debug, Clone, Default)]
pub struct ColumnMapping {
    /// Question text (default `question`).
    pub question: Option<String>,
    /// Response text (default `response`).
    pub response: Option<String>,
    /// Correctness label (default `is_correct`): Boolean, 0/1 integers, or strings mapped by
    /// [`ColumnMapping::label_values`].
    pub label: Option<String>,
    /// Question id (default `question_id`; without it, a hash of the question text).
    pub id: Option<String>,
    /// Reference answer (default `expected_answer`, optional).
    pub expected: Option<String>,
    /// Columns that each hold one sample (one model's solution): every input row gives one
    /// row per column, with the column name as `sample`. In a struct column, `response`,
    /// `label` and `first_error_step` name fields inside it (`{is_correct, solution}`).
    pub samples: Vec<String>,
    /// 0-based index of the first wrong step of the response (negative or null: none); it
    /// becomes `first_error_char`, the offset where that step starts.
    pub first_error_step: Option<String>,
    /// String labels: the value meaning correct and the one meaning incorrect.
    pub label_values: Option<LabelValues>,
}

/// The two words of a string label column (`--label-values correct,wrong`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelValues {
    pub correct: String,
    pub incorrect: String,
}

impl std::str::FromStr for LabelValues {
    type Err = String;

    /// `CORRECT,INCORRECT`, two different non-empty values.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let usage = || format!("expected CORRECT,INCORRECT (e.g. `correct,wrong`), got `{text}`");
        let (correct, incorrect) = text.split_once(',').ok_or_else(usage)?;
        let (correct, incorrect) = (correct.trim(), incorrect.trim());
        if correct.is_empty() || incorrect.is_empty() || incorrect.contains(',') {
            return Err(usage());
        }
        if correct == incorrect {
            return Err(format!("both label values are `{correct}`"));
        }
        Ok(Self {
            correct: correct.to_owned(),
            incorrect: incorrect.to_owned(),
        })
    }
}

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Force a format instead of detecting it from the columns.
    pub from: Option<SourceFormat>,
    /// Benchmark name for every row, overriding what the format implies.
    pub benchmark: Option<String>,
    /// Compute `is_correct` from the predicted (or extracted) and expected answers.
    pub grade: bool,
    /// Tolerance for numeric answers when grading; `None` compares numbers exactly.
    pub tolerance: Option<Tolerance>,
    /// Skip bad lines and rows (counted) instead of failing.
    pub skip_bad: bool,
    /// PRM800K: what a neutral (0) step rating becomes (`None`: the default,
    /// [`NeutralRating::Correct`]); given for another format, a usage error.
    pub neutral: Option<NeutralRating>,
    pub mapping: ColumnMapping,
}

/// What an import read, wrote and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Input rows (after malformed lines were skipped).
    pub rows_read: usize,
    /// Output rows.
    pub rows_written: usize,
    /// Malformed JSON lines skipped under `skip_bad`.
    pub skipped_lines: usize,
    /// Rows skipped under `skip_bad` for a null in a required column or a null label.
    pub skipped_null_values: usize,
    /// Rows skipped under `skip_bad` whose `(question_id, sample)` repeated an earlier row.
    pub skipped_duplicates: usize,
    /// Rows skipped under `skip_bad` for another malformed value (HH-RLHF dialogues without a
    /// shared assistant turn, identical chosen and rejected, ratings outside {-1, 0, 1}).
    pub skipped_bad_values: usize,
    /// PRM800K rows without a rating, always dropped.
    pub dropped_unrated: usize,
    /// PRM800K rows rated 0 (neutral), dropped under `--neutral drop`.
    pub dropped_neutral: usize,
    /// Rows whose label was computed by grading.
    pub graded: usize,
    /// Graded rows whose computed label differs from the input's own label.
    pub grade_changed: usize,
    /// HH-RLHF pairs whose dialogues diverge before the final assistant turn (kept; the
    /// continuations then hold several turns).
    pub multi_turn_pairs: usize,
    /// Distinct questions in the output.
    pub questions: usize,
    /// Output generations labelled correct.
    pub correct: usize,
}

/// An imported table.
#[derive(Debug)]
pub struct Imported {
    pub format: SourceFormat,
    pub table: TableKind,
    pub frame: DataFrame,
    pub report: ImportReport,
}

impl Imported {
    /// Logs what was imported (info) and every kind of skip (warn) to stderr.
    pub fn log_summary(&self) {
        let report = &self.report;
        match self.table {
            TableKind::Generations => tracing::info!(
                "{}: {} rows read, {} generations over {} questions ({} correct)",
                self.format.name(),
                report.rows_read,
                report.rows_written,
                report.questions,
                report.correct
            ),
            TableKind::Pairs => tracing::info!(
                "{}: {} rows read, {} pairs",
                self.format.name(),
                report.rows_read,
                report.rows_written
            ),
        }
        for (count, what) in [
            (report.skipped_lines, "malformed lines skipped"),
            (
                report.skipped_null_values,
                "rows with a null required value or label skipped",
            ),
            (
                report.skipped_duplicates,
                "rows repeating a (question_id, sample) skipped",
            ),
            (
                report.skipped_bad_values,
                "rows with a malformed value skipped",
            ),
            (report.dropped_unrated, "unrated PRM800K steps dropped"),
            (
                report.dropped_neutral,
                "neutral (0) PRM800K steps dropped (--neutral drop)",
            ),
            (
                report.multi_turn_pairs,
                "pairs whose dialogues diverge before the last turn (kept)",
            ),
        ] {
            if count > 0 {
                tracing::warn!("{count} {what}");
            }
        }
        if report.graded > 0 {
            tracing::info!(
                "graded {} rows; {} differ from the input's own label",
                report.graded,
                report.grade_changed
            );
        }
    }
}

/// Guesses the source format from the columns present.
pub fn detect_format(frame: &DataFrame) -> SourceFormat {
    let has = |name: &str| frame.column(name).is_ok();
    if has("instruction") && has("next_response") && has("rating") {
        SourceFormat::Prm800k
    } else if has("chosen") && has("rejected") && !has(QUESTION) {
        SourceFormat::HhRlhf
    } else if has(QUESTION) && has("correct") && has("incorrect") {
        SourceFormat::OpenmathPairs
    } else if has("gold") && has("output") && has("model") {
        SourceFormat::Zeroeval
    } else if has("generated_solution") {
        SourceFormat::Nemo
    } else {
        SourceFormat::Generic
    }
}

/// A stable short id for a text: the first 16 hex digits of its SHA-256.
pub fn stable_id(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and imports every path (or `-`), all in one format, and concatenates the results.
pub fn import_paths(paths: &[PathBuf], options: &ImportOptions) -> Result<Imported> {
    let read_options = ReadOptions::with_skip_bad(options.skip_bad);
    let mut parts: Vec<(PathBuf, Imported)> = Vec::with_capacity(paths.len());
    for path in paths {
        let (frame, read_report) = read_table_with(path, &read_options)?;
        let mut imported = import_table(&frame, path, options)?;
        imported.report.skipped_lines = read_report.skipped_lines.len();
        if let Some((first_path, first)) = parts.first() {
            if first.format != imported.format {
                return Err(Error::Format {
                    path: display_path(path),
                    message: format!(
                        "looks like {} but {} looks like {}; import them separately or force \
                         one with --from",
                        imported.format.name(),
                        display_path(first_path).display(),
                        first.format.name()
                    ),
                });
            }
        }
        parts.push((path.clone(), imported));
    }
    let mut parts = parts.into_iter();
    let (first_path, mut combined) = parts
        .next()
        .ok_or_else(|| Error::Usage("no input given".to_owned()))?;
    let mut sources = vec![(display_path(&first_path), combined.frame.height())];
    for (path, part) in parts {
        sources.push((display_path(&path), part.frame.height()));
        let top = std::mem::take(&mut combined.frame);
        combined.frame = concat_tables(vec![(top, first_path.clone()), (part.frame, path)])?;
        let report = &mut combined.report;
        let other = part.report;
        report.rows_read += other.rows_read;
        report.skipped_lines += other.skipped_lines;
        report.skipped_null_values += other.skipped_null_values;
        report.skipped_duplicates += other.skipped_duplicates;
        report.skipped_bad_values += other.skipped_bad_values;
        report.dropped_unrated += other.dropped_unrated;
        report.dropped_neutral += other.dropped_neutral;
        report.graded += other.graded;
        report.grade_changed += other.grade_changed;
        report.multi_turn_pairs += other.multi_turn_pairs;
    }
    if sources.len() > 1 {
        combined.frame = dedup_across_inputs(&combined, &sources, options.skip_bad)?;
    }
    combined.report.rows_written = combined.frame.height();
    if combined.table == TableKind::Generations {
        count_questions(&combined.frame, &mut combined.report)?;
    }
    Ok(combined)
}

/// Imports one frame read from `path` (used for names in errors and, for NeMo files, the
/// sample name and benchmark).
pub fn import_table(frame: &DataFrame, path: &Path, options: &ImportOptions) -> Result<Imported> {
    let shown = display_path(path);
    if frame.height() == 0 {
        return Err(Error::EmptyInput { path: shown });
    }
    let format = options.from.unwrap_or_else(|| detect_format(frame));
    if options.grade && matches!(format, SourceFormat::OpenmathPairs | SourceFormat::HhRlhf) {
        return Err(Error::Usage(format!(
            "--grade labels generations; {} input is already a pairs table",
            format.name()
        )));
    }
    if options.neutral.is_some() && format != SourceFormat::Prm800k {
        return Err(Error::Usage(format!(
            "--neutral sets what a PRM800K rating of 0 becomes; {} input has no step ratings",
            format.name()
        )));
    }
    let mut context = Context {
        frame,
        path: &shown,
        options,
        report: ImportReport {
            rows_read: frame.height(),
            ..ImportReport::default()
        },
    };
    let frame_out = match format {
        SourceFormat::Zeroeval => context.zeroeval()?,
        SourceFormat::Nemo => context.nemo(path)?,
        SourceFormat::Generic => context.generic()?,
        SourceFormat::Prm800k => context.prm800k()?,
        SourceFormat::OpenmathPairs => context.openmath_pairs()?,
        SourceFormat::HhRlhf => context.hh_rlhf()?,
    };
    let mut report = context.report;
    report.rows_written = frame_out.height();
    if format.table() == TableKind::Generations {
        count_questions(&frame_out, &mut report)?;
    }
    Ok(Imported {
        format,
        table: format.table(),
        frame: frame_out,
        report,
    })
}

/// The marker that opens an assistant turn in HH-RLHF dialogues.
pub const ASSISTANT_TURN: &str = "\n\nAssistant:";

/// Splits an HH-RLHF pair into the shared prompt and the two differing continuations.
///
/// The prompt is everything up to and including the last `"\n\nAssistant:"` inside the common
/// prefix of the two dialogues; the continuations are what follows, leading whitespace
/// stripped. `None` when the two share no assistant turn.
pub fn split_dialogue<'a>(
    chosen: &'a str,
    rejected: &'a str,
) -> Option<(&'a str, &'a str, &'a str)> {
    let common = chosen
        .char_indices()
        .zip(rejected.chars())
        .find(|((_, a), b)| a != b)
        .map(|((index, _), _)| index)
        .unwrap_or_else(|| chosen.len().min(rejected.len()));
    let end = chosen[..common].rfind(ASSISTANT_TURN)? + ASSISTANT_TURN.len();
    Some((
        &chosen[..end],
        chosen[end..].trim_start(),
        rejected[end..].trim_start(),
    ))
}

/// Per-frame import state.
struct Context<'a> {
    frame: &'a DataFrame,
    path: &'a Path,
    options: &'a ImportOptions,
    report: ImportReport,
}

/// A generation before labels are settled, with the input row it came from.
struct Draft {
    generation: Generation,
    label: Option<bool>,
    source_row: usize,
    /// The label's column when it differs from the format's one (generic sample columns).
    label_column: Option<String>,
}

/// A response column: text, or a list of steps (joined with newlines).
enum Responses {
    Text(StringChunked),
    Steps(ListChunked),
}

/// Output column of the generic mapping for list-of-steps responses: where each step starts in
/// `response`, in characters (List<UInt32>).
pub const STEP_STARTS: &str = "step_starts";

/// Output column of the PRM800K importer: a stable id of the prefix a rated step continues
/// (the problem and the earlier steps), so `qrm-pairs --group-col prefix_id` pairs a good and
/// a bad continuation of one prefix.
pub const PREFIX_ID: &str = "prefix_id";

/// Where each line of `text` starts, in characters: the steps of a text response.
fn line_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(
        text.chars()
            .enumerate()
            .filter(|(_, c)| *c == '\n')
            .map(|(index, _)| index + 1),
    );
    starts
}

/// A ZeroEval id's benchmark prefix (`gsm8k` of `gsm8k-main-test-#0`); `None` for integer
/// ids (MATH level 5 files count from 0).
fn id_prefix(id: &str) -> Option<&str> {
    id.split_once('-')
        .map(|(prefix, _)| prefix)
        .filter(|p| !p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit()))
}

/// A benchmark name from a file name: up to the first `_` or `.`
/// (`math-l5_test_40models.jsonl.gz` → `math-l5`).
fn benchmark_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.split(['_', '.']).next()?;
    (!stem.is_empty()).then(|| stem.to_owned())
}

impl Context<'_> {
    fn missing(&self, column: &str) -> Error {
        Error::MissingColumn {
            path: self.path.to_owned(),
            column: column.to_owned(),
            available: self
                .frame
                .get_column_names()
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.frame.column(name).is_ok()
    }

    /// A column by name, or a field inside a struct column by a dotted path
    /// (`6b_finetuning.solution`; an exact column name wins), with the input column it comes
    /// from. Rows where a struct is null read as null fields.
    fn lookup(&self, path: &str) -> Result<(Column, String)> {
        if let Ok(column) = self.frame.column(path) {
            return Ok((column.clone(), path.to_owned()));
        }
        for (at, _) in path.match_indices('.') {
            let Ok(column) = self.frame.column(&path[..at]) else {
                continue;
            };
            let mut current = column.clone();
            let mut reached = path[..at].to_owned();
            for field in path[at + 1..].split('.') {
                current = self.struct_field(&current, &reached, field, path)?;
                reached = format!("{reached}.{field}");
            }
            return Ok((current, path[..at].to_owned()));
        }
        Err(self.missing(path))
    }

    /// The field `field` of the struct column `reached` (on the way to `path`).
    fn struct_field(
        &self,
        column: &Column,
        reached: &str,
        field: &str,
        path: &str,
    ) -> Result<Column> {
        let DataType::Struct(fields) = column.dtype() else {
            return Err(Error::ColumnType {
                path: self.path.to_owned(),
                column: reached.to_owned(),
                expected: format!("Struct (to reach `{path}`)"),
                found: column.dtype().to_string(),
            });
        };
        if !fields.iter().any(|f| f.name().as_str() == field) {
            return Err(Error::MissingColumn {
                path: self.path.to_owned(),
                column: path.to_owned(),
                available: format!(
                    "`{reached}` has fields {}",
                    fields
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let table = |e| Error::table(self.path, e);
        let series = column
            .struct_()
            .map_err(table)?
            .field_by_name(field)
            .map_err(table)?;
        if column.null_count() == 0 {
            return Ok(series.into_column());
        }
        let rows: IdxCa = IdxCa::from_iter_options(
            "index".into(),
            column
                .is_null()
                .iter()
                .enumerate()
                .map(|(row, null)| (null != Some(true)).then_some(row as IdxSize)),
        );
        Ok(series.take(&rows).map_err(table)?.into_column())
    }

    /// A text column (or struct field); numbers are written as text, an all-null column reads
    /// as nulls.
    fn text(&self, name: &str) -> Result<StringChunked> {
        let (column, _) = self.lookup(name)?;
        let dtype = column.dtype();
        if dtype == &DataType::String {
            return Ok(column
                .str()
                .map_err(|e| Error::table(self.path, e))?
                .clone());
        }
        if dtype == &DataType::Null || dtype.is_primitive_numeric() {
            let cast = column
                .cast(&DataType::String)
                .map_err(|e| Error::table(self.path, e))?;
            return Ok(cast.str().map_err(|e| Error::table(self.path, e))?.clone());
        }
        Err(Error::ColumnType {
            path: self.path.to_owned(),
            column: name.to_owned(),
            expected: "Utf8".to_owned(),
            found: dtype.to_string(),
        })
    }

    /// A response column (or struct field): text, or a list of steps.
    fn responses(&self, name: &str) -> Result<Responses> {
        let (column, _) = self.lookup(name)?;
        if let DataType::List(_) = column.dtype() {
            let steps = column
                .cast(&DataType::List(Box::new(DataType::String)))
                .map_err(|e| Error::table(self.path, e))?;
            return Ok(Responses::Steps(
                steps
                    .list()
                    .map_err(|e| Error::table(self.path, e))?
                    .clone(),
            ));
        }
        self.text(name).map(Responses::Text)
    }

    /// One response and where each of its steps starts (in characters): a list of steps is
    /// joined with `"\n"`; a text's steps are its lines.
    fn response_cell(
        &self,
        responses: &Responses,
        row: usize,
    ) -> Result<Option<(String, Vec<usize>)>> {
        match responses {
            Responses::Text(text) => Ok(text.get(row).map(|t| (t.to_owned(), line_starts(t)))),
            Responses::Steps(lists) => {
                let Some(steps) = lists.get_as_series(row) else {
                    return Ok(None);
                };
                let steps = steps.str().map_err(|e| Error::table(self.path, e))?;
                let mut text = String::new();
                let mut starts = Vec::with_capacity(steps.len());
                let mut length = 0;
                for (index, step) in steps.iter().enumerate() {
                    if index > 0 {
                        text.push('\n');
                        length += 1;
                    }
                    starts.push(length);
                    let step = step.unwrap_or_default();
                    text.push_str(step);
                    length += step.chars().count();
                }
                Ok(Some((text, starts)))
            }
        }
    }

    /// A step index column (or struct field): integers, nulls allowed.
    fn step_indices(&self, name: &str) -> Result<Vec<Option<i64>>> {
        let (column, _) = self.lookup(name)?;
        match column.dtype() {
            DataType::Null => Ok(vec![None; column.len()]),
            dtype if dtype.is_integer() => {
                let cast = column
                    .cast(&DataType::Int64)
                    .map_err(|e| Error::table(self.path, e))?;
                Ok(cast
                    .i64()
                    .map_err(|e| Error::table(self.path, e))?
                    .iter()
                    .collect())
            }
            other => Err(Error::ColumnType {
                path: self.path.to_owned(),
                column: name.to_owned(),
                expected: "integer step index".to_owned(),
                found: other.to_string(),
            }),
        }
    }

    fn optional_text(&self, name: &str) -> Result<Option<StringChunked>> {
        if self.has(name) {
            self.text(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The input's labels. Under `--grade` they are only compared with the computed ones, so
    /// a missing or malformed label column reads as all null instead of failing.
    fn input_labels(&self, name: &str) -> Result<Vec<Option<bool>>> {
        if self.options.grade {
            return Ok(self
                .labels(name)
                .unwrap_or_else(|_| vec![None; self.frame.height()]));
        }
        self.labels(name)
    }

    /// A correctness label column (or struct field): Boolean, integers that are all 0 or 1,
    /// or strings mapped by `--label-values`.
    fn labels(&self, name: &str) -> Result<Vec<Option<bool>>> {
        let (column, _) = self.lookup(name).map_err(|mut error| {
            if let Error::MissingColumn { available, .. } = &mut error {
                available.push_str("; use --grade to compute labels from answers");
            }
            error
        })?;
        match column.dtype() {
            DataType::String => {
                let Some(values) = &self.options.mapping.label_values else {
                    return Err(Error::ColumnType {
                        path: self.path.to_owned(),
                        column: name.to_owned(),
                        expected: "Boolean or 0/1 integers (for string labels, name them with \
                                   --label-values CORRECT,INCORRECT)"
                            .to_owned(),
                        found: DataType::String.to_string(),
                    });
                };
                let strings = column.str().map_err(|e| Error::table(self.path, e))?;
                strings
                    .iter()
                    .enumerate()
                    .map(|(row, value)| match value.map(str::trim) {
                        None => Ok(None),
                        Some(v) if v == values.correct => Ok(Some(true)),
                        Some(v) if v == values.incorrect => Ok(Some(false)),
                        Some(other) => Err(Error::bad_value(
                            self.path,
                            row,
                            name,
                            format!(
                                "label `{other}` is neither `{}` nor `{}` (--label-values)",
                                values.correct, values.incorrect
                            ),
                        )),
                    })
                    .collect()
            }
            DataType::Boolean => Ok(column
                .bool()
                .map_err(|e| Error::table(self.path, e))?
                .iter()
                .collect()),
            DataType::Null => Ok(vec![None; column.len()]),
            dtype if dtype.is_integer() => {
                let cast = column
                    .cast(&DataType::Int64)
                    .map_err(|e| Error::table(self.path, e))?;
                let values = cast.i64().map_err(|e| Error::table(self.path, e))?;
                values
                    .iter()
                    .enumerate()
                    .map(|(row, value)| match value {
                        None => Ok(None),
                        Some(0) => Ok(Some(false)),
                        Some(1) => Ok(Some(true)),
                        Some(other) => Err(Error::bad_value(
                            self.path,
                            row,
                            name,
                            format!("label {other} is neither 0 nor 1"),
                        )),
                    })
                    .collect()
            }
            other => Err(Error::ColumnType {
                path: self.path.to_owned(),
                column: name.to_owned(),
                expected: "Boolean (or 0/1 integers)".to_owned(),
                found: other.to_string(),
            }),
        }
    }

    /// A required cell: its value, `None` to skip the row (counted) under `skip_bad`, or an
    /// error naming the row and column.
    fn required<'v>(
        &mut self,
        value: Option<&'v str>,
        row: usize,
        column: &str,
    ) -> Result<Option<&'v str>> {
        match value {
            Some(v) => Ok(Some(v)),
            None if self.options.skip_bad => {
                self.report.skipped_null_values += 1;
                Ok(None)
            }
            None => Err(Error::bad_value(
                self.path,
                row,
                column,
                "null value (use --skip-bad to skip such rows)",
            )),
        }
    }

    /// A malformed value: skip (counted) under `skip_bad`, else an error.
    fn bad(&mut self, row: usize, column: &str, message: String) -> Result<()> {
        if self.options.skip_bad {
            self.report.skipped_bad_values += 1;
            Ok(())
        } else {
            Err(Error::bad_value(
                self.path,
                row,
                column,
                format!("{message} (use --skip-bad to skip such rows)"),
            ))
        }
    }

    fn benchmark_or(&self, default: impl FnOnce() -> String) -> String {
        self.options.benchmark.clone().unwrap_or_else(default)
    }

    // ------------------------------------------------------------ generations formats

    fn zeroeval(&mut self) -> Result<DataFrame> {
        let id = self.text("id")?;
        let question = self.text(QUESTION)?;
        let gold = self.text("gold")?;
        let model = self.text("model")?;
        let output = self.text("output")?;
        let pred = self.optional_text("pred")?;
        let labels = self.input_labels(IS_CORRECT)?;
        let dataset = self.optional_text("dataset")?;
        let file_benchmark = self.zeroeval_file_benchmark(&id, dataset.as_ref())?;
        let mut drafts = Vec::with_capacity(self.frame.height());
        for row in 0..self.frame.height() {
            let (Some(question_id), Some(question), Some(model), Some(output)) = (
                self.required(id.get(row), row, "id")?,
                self.required(question.get(row), row, QUESTION)?,
                self.required(model.get(row), row, "model")?,
                self.required(output.get(row), row, "output")?,
            ) else {
                continue;
            };
            let benchmark = self.benchmark_or(|| {
                id_prefix(question_id)
                    .or_else(|| dataset.as_ref().and_then(|d| d.get(row)))
                    .or(file_benchmark.as_deref())
                    .unwrap_or_default()
                    .to_owned()
            });
            drafts.push(Draft {
                generation: Generation {
                    question_id: question_id.to_owned(),
                    question: question.to_owned(),
                    response: output.to_owned(),
                    is_correct: false,
                    predicted_answer: pred.as_ref().and_then(|p| p.get(row)).map(str::to_owned),
                    expected_answer: gold.get(row).map(str::to_owned),
                    benchmark,
                    sample: model.to_owned(),
                    first_error_char: None,
                },
                label: labels.get(row).copied().flatten(),
                source_row: row,
                label_column: None,
            });
        }
        let consumed = [
            "id", QUESTION, "gold", "model", "output", "pred", IS_CORRECT,
        ];
        self.finish_generations(drafts, IS_CORRECT, &consumed, Vec::new())
    }

    /// The benchmark of ZeroEval rows whose id names none (integer ids, as in MATH level 5
    /// files) and that have no `dataset`: the file name up to its first `_` or `.`, logged.
    /// `None` when `--benchmark` is given or every id has a prefix; an error on stdin.
    fn zeroeval_file_benchmark(
        &self,
        ids: &StringChunked,
        dataset: Option<&StringChunked>,
    ) -> Result<Option<String>> {
        if self.options.benchmark.is_some() {
            return Ok(None);
        }
        let unnamed = ids.iter().enumerate().find(|(row, id)| {
            id.is_some_and(|id| id_prefix(id).is_none())
                && dataset.and_then(|d| d.get(*row)).is_none()
        });
        let Some((_, Some(example))) = unnamed else {
            return Ok(None);
        };
        let Some(benchmark) = (self.path != Path::new("<stdin>"))
            .then(|| benchmark_from_file_name(self.path))
            .flatten()
        else {
            return Err(Error::Usage(format!(
                "{}: ZeroEval ids such as `{example}` name no benchmark and there is no file \
                 name to take one from; pass --benchmark",
                self.path.display()
            )));
        };
        tracing::info!(
            "{}: ids such as `{example}` name no benchmark; using `{benchmark}` from the file \
             name (--benchmark sets it)",
            self.path.display()
        );
        Ok(Some(benchmark))
    }

    fn nemo(&mut self, source: &Path) -> Result<DataFrame> {
        // OpenMathInstruct-2 names the question `problem` and its origin `problem_source`.
        let question_column = if !self.has(QUESTION) && self.has("problem") {
            "problem"
        } else {
            QUESTION
        };
        let question = self.text(question_column)?;
        let solution = self.text("generated_solution")?;
        let predicted = self.optional_text(PREDICTED_ANSWER)?;
        let expected = self.optional_text(EXPECTED_ANSWER)?;
        let label_column = if self.has(IS_CORRECT) {
            IS_CORRECT
        } else if self.has("symbolic_correct") {
            "symbolic_correct"
        } else {
            IS_CORRECT
        };
        let labels = self.input_labels(label_column)?;
        let id_column = [QUESTION_ID, "id", "idx"].into_iter().find(|c| self.has(c));
        let ids = id_column.map(|c| self.text(c)).transpose()?;
        let dataset_column = ["dataset", "problem_source"]
            .into_iter()
            .find(|c| self.has(c))
            .unwrap_or("dataset");
        let dataset = self.optional_text(dataset_column)?;
        let file_name = source.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let file_sample = file_name
            .strip_prefix("output-")
            .and_then(|rest| rest.split('.').next())
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let directory_benchmark = if file_sample.is_some() {
            source
                .parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .map(str::to_owned)
        } else {
            None
        };
        let mut occurrences: HashMap<String, usize> = HashMap::new();
        let mut drafts = Vec::with_capacity(self.frame.height());
        for row in 0..self.frame.height() {
            let (Some(question_text), Some(response)) = (
                self.required(question.get(row), row, question_column)?,
                self.required(solution.get(row), row, "generated_solution")?,
            ) else {
                continue;
            };
            let benchmark = self.benchmark_or(|| {
                dataset
                    .as_ref()
                    .and_then(|d| d.get(row))
                    .map(str::to_owned)
                    .or_else(|| directory_benchmark.clone())
                    .unwrap_or_else(|| "unknown".to_owned())
            });
            let question_id = match &ids {
                Some(ids) => match self.required(ids.get(row), row, id_column.unwrap_or("id"))? {
                    Some(id) => id.to_owned(),
                    None => continue,
                },
                None => format!("{benchmark}-{}", stable_id(question_text)),
            };
            let sample = match &file_sample {
                Some(sample) => sample.clone(),
                None => {
                    let count = occurrences.entry(question_id.clone()).or_default();
                    *count += 1;
                    (*count - 1).to_string()
                }
            };
            drafts.push(Draft {
                generation: Generation {
                    question_id,
                    question: question_text.to_owned(),
                    response: response.to_owned(),
                    is_correct: false,
                    predicted_answer: predicted
                        .as_ref()
                        .and_then(|p| p.get(row))
                        .map(str::to_owned),
                    expected_answer: expected
                        .as_ref()
                        .and_then(|e| e.get(row))
                        .map(str::to_owned),
                    benchmark,
                    sample,
                    first_error_char: None,
                },
                label: labels.get(row).copied().flatten(),
                source_row: row,
                label_column: None,
            });
        }
        let mut consumed = vec![
            question_column,
            "generated_solution",
            PREDICTED_ANSWER,
            EXPECTED_ANSWER,
            label_column,
        ];
        consumed.extend(id_column);
        self.finish_generations(drafts, label_column, &consumed, Vec::new())
    }

    fn generic(&mut self) -> Result<DataFrame> {
        let mapping = self.options.mapping.clone();
        let question_column = mapping.question.unwrap_or_else(|| QUESTION.to_owned());
        let response_name = mapping.response.unwrap_or_else(|| RESPONSE.to_owned());
        let label_name = mapping.label.unwrap_or_else(|| IS_CORRECT.to_owned());
        let explicit_expected = mapping.expected.is_some();
        let expected_column = mapping
            .expected
            .unwrap_or_else(|| EXPECTED_ANSWER.to_owned());
        let id_column = match mapping.id {
            Some(name) => Some(name),
            None => self.has(QUESTION_ID).then(|| QUESTION_ID.to_owned()),
        };
        let mut consumed: Vec<String> = [PREDICTED_ANSWER, BENCHMARK, SAMPLE, FIRST_ERROR_CHAR]
            .map(str::to_owned)
            .to_vec();
        let (_, question_top) = self.lookup(&question_column)?;
        consumed.push(question_top);
        let question = self.text(&question_column)?;
        let ids = id_column.as_deref().map(|c| self.text(c)).transpose()?;
        consumed.extend(id_column.clone());
        let expected = if explicit_expected || self.has(&expected_column) {
            consumed.push(self.lookup(&expected_column)?.1);
            Some(self.text(&expected_column)?)
        } else {
            None
        };
        let benchmark_column = self.optional_text(BENCHMARK)?;
        let sample_column = self.optional_text(SAMPLE)?;

        // Where each output row's response, label, predicted answer and first error come
        // from: the row itself, or one struct (or text) column per sample.
        let mut sources = Vec::new();
        if mapping.samples.is_empty() {
            sources.push((
                None,
                response_name.clone(),
                label_name.clone(),
                self.has(PREDICTED_ANSWER)
                    .then(|| PREDICTED_ANSWER.to_owned()),
                mapping.first_error_step.clone(),
            ));
        } else {
            for sample in &mapping.samples {
                let (column, _) = self.lookup(sample)?;
                let inside = |field: &str| format!("{sample}.{field}");
                if let DataType::Struct(fields) = column.dtype() {
                    let predicted = fields
                        .iter()
                        .any(|f| f.name().as_str() == PREDICTED_ANSWER)
                        .then(|| inside(PREDICTED_ANSWER));
                    sources.push((
                        Some(sample.clone()),
                        inside(&response_name),
                        inside(&label_name),
                        predicted,
                        mapping.first_error_step.as_deref().map(inside),
                    ));
                } else {
                    // A text (or steps) column is the response itself; labels need --grade.
                    sources.push((
                        Some(sample.clone()),
                        sample.clone(),
                        inside(&label_name),
                        None,
                        None,
                    ));
                }
            }
        }
        struct Source {
            sample: Option<String>,
            responses: Responses,
            response_column: String,
            labels: Vec<Option<bool>>,
            label_column: String,
            predicted: Option<StringChunked>,
            first_error: Option<(String, Vec<Option<i64>>)>,
        }
        let mut loaded = Vec::with_capacity(sources.len());
        for (sample, response, label, predicted, first_error) in sources {
            consumed.push(self.lookup(&response)?.1);
            if let Ok((_, top)) = self.lookup(&label) {
                consumed.push(top);
            }
            let first_error = match first_error {
                Some(column) => {
                    consumed.push(self.lookup(&column)?.1);
                    let steps = self.step_indices(&column)?;
                    Some((column, steps))
                }
                None => None,
            };
            loaded.push(Source {
                sample,
                responses: self.responses(&response)?,
                response_column: response,
                labels: self.input_labels(&label)?,
                label_column: label,
                predicted: predicted.map(|p| self.text(&p)).transpose()?,
                first_error,
            });
        }
        // An all-null column read from JSON Lines has the Null type: no offsets.
        let canonical_first_error = match self.frame.column(FIRST_ERROR_CHAR) {
            Ok(column)
                if column.dtype() != &DataType::Null && mapping.first_error_step.is_none() =>
            {
                Some(
                    crate::pipeline::schema::Columns::new(self.frame, self.path)
                        .f64(FIRST_ERROR_CHAR)?,
                )
            }
            _ => None,
        };
        let mut occurrences: HashMap<String, usize> = HashMap::new();
        let mut drafts = Vec::with_capacity(self.frame.height() * loaded.len());
        // Where each step of a list-of-steps response starts, aligned with `drafts`.
        let any_steps = loaded
            .iter()
            .any(|s| matches!(s.responses, Responses::Steps(_)));
        let mut starts_column: Vec<Option<Series>> = Vec::new();
        for row in 0..self.frame.height() {
            let Some(question_text) = self.required(question.get(row), row, &question_column)?
            else {
                continue;
            };
            let benchmark = self.benchmark_or(|| {
                benchmark_column
                    .as_ref()
                    .and_then(|b| b.get(row))
                    .unwrap_or("unknown")
                    .to_owned()
            });
            let question_id = match (&ids, id_column.as_deref()) {
                (Some(ids), Some(name)) => match self.required(ids.get(row), row, name)? {
                    Some(id) => id.to_owned(),
                    None => continue,
                },
                _ => format!("{benchmark}-{}", stable_id(question_text)),
            };
            for source in &loaded {
                let Some((response_text, step_starts)) =
                    self.response_cell(&source.responses, row)?
                else {
                    self.required(None, row, &source.response_column)?;
                    continue;
                };
                let first_error_char = match &source.first_error {
                    Some((column, steps)) => match steps[row] {
                        Some(step) if step >= 0 => {
                            match usize::try_from(step).ok().and_then(|s| step_starts.get(s)) {
                                Some(&start) => Some(start as i32),
                                None => {
                                    self.bad(
                                        row,
                                        column,
                                        format!(
                                            "first error step {step}, but the response has {} \
                                             steps (0-based)",
                                            step_starts.len()
                                        ),
                                    )?;
                                    continue;
                                }
                            }
                        }
                        _ => None,
                    },
                    None => canonical_first_error
                        .as_ref()
                        .and_then(|f| f.get(row))
                        .map(|v| v as i32),
                };
                let sample = match &source.sample {
                    Some(name) => name.clone(),
                    None => match sample_column.as_ref().and_then(|s| s.get(row)) {
                        Some(sample) => sample.to_owned(),
                        None => {
                            let count = occurrences.entry(question_id.clone()).or_default();
                            *count += 1;
                            (*count - 1).to_string()
                        }
                    },
                };
                if any_steps {
                    starts_column.push(matches!(source.responses, Responses::Steps(_)).then(
                        || {
                            let starts: Vec<u32> = step_starts.iter().map(|&s| s as u32).collect();
                            Series::new("".into(), starts)
                        },
                    ));
                }
                drafts.push(Draft {
                    generation: Generation {
                        question_id: question_id.clone(),
                        question: question_text.to_owned(),
                        response: response_text,
                        is_correct: false,
                        predicted_answer: source
                            .predicted
                            .as_ref()
                            .and_then(|p| p.get(row))
                            .map(str::to_owned),
                        expected_answer: expected
                            .as_ref()
                            .and_then(|e| e.get(row))
                            .map(str::to_owned),
                        benchmark: benchmark.clone(),
                        sample,
                        first_error_char,
                    },
                    label: source.labels.get(row).copied().flatten(),
                    source_row: row,
                    label_column: Some(source.label_column.clone()),
                });
            }
        }
        let consumed: Vec<&str> = consumed.iter().map(String::as_str).collect();
        let mut extras = Vec::new();
        if any_steps {
            let starts: ListChunked = starts_column.into_iter().collect();
            extras.push(
                starts
                    .with_name(STEP_STARTS.into())
                    .into_series()
                    .into_column(),
            );
        }
        self.finish_generations(drafts, &label_name, &consumed, extras)
    }

    fn prm800k(&mut self) -> Result<DataFrame> {
        if self.options.grade {
            return Err(Error::Usage(
                "--grade needs an expected answer; PRM800K rows carry step ratings instead"
                    .to_owned(),
            ));
        }
        let instruction = self.text("instruction")?;
        let next_response = self.text("next_response")?;
        let answer = self.optional_text("answer")?;
        let previous = self
            .frame
            .column("responses")
            .map_err(|_| self.missing("responses"))?;
        let previous = match previous.dtype() {
            DataType::List(inner) if **inner == DataType::String => previous
                .list()
                .map_err(|e| Error::table(self.path, e))?
                .clone(),
            other => {
                return Err(Error::ColumnType {
                    path: self.path.to_owned(),
                    column: "responses".to_owned(),
                    expected: "List<Utf8>".to_owned(),
                    found: other.to_string(),
                })
            }
        };
        let rating = crate::pipeline::schema::Columns::new(self.frame, self.path).f64("rating")?;
        let neutral = self.options.neutral.unwrap_or_default();
        let benchmark = self.benchmark_or(|| "prm800k".to_owned());
        let mut drafts = Vec::with_capacity(self.frame.height());
        let mut step_ratings: Vec<i8> = Vec::with_capacity(self.frame.height());
        let mut step_indices: Vec<i32> = Vec::with_capacity(self.frame.height());
        let mut starts_column: Vec<Series> = Vec::with_capacity(self.frame.height());
        let mut prefix_ids: Vec<String> = Vec::with_capacity(self.frame.height());
        for row in 0..self.frame.height() {
            let steps = previous.get_as_series(row);
            let Some(value) = rating.get(row) else {
                self.report.dropped_unrated += 1;
                continue;
            };
            if ![-1.0, 0.0, 1.0].contains(&value) {
                self.bad(row, "rating", format!("rating {value} is not -1, 0 or 1"))?;
                continue;
            }
            if value == 0.0 && neutral == NeutralRating::Drop {
                self.report.dropped_neutral += 1;
                continue;
            }
            let (Some(problem), Some(step)) = (
                self.required(instruction.get(row), row, "instruction")?,
                self.required(next_response.get(row), row, "next_response")?,
            ) else {
                continue;
            };
            // The same joining as a generic list-of-steps response: steps separated by "\n",
            // `step_starts` the character offset of each, the rated step last.
            let mut response = String::new();
            let mut starts: Vec<u32> = Vec::new();
            let mut length = 0u32;
            if let Some(steps) = steps {
                let steps = steps.str().map_err(|e| Error::table(self.path, e))?;
                for earlier in steps.iter() {
                    let earlier = earlier.unwrap_or_default();
                    starts.push(length);
                    response.push_str(earlier);
                    response.push('\n');
                    length += earlier.chars().count() as u32 + 1;
                }
            }
            step_indices.push(starts.len() as i32);
            let step_start = length as i32;
            // The prefix the rated step continues: the problem and the earlier steps.
            prefix_ids.push(format!(
                "prm800k-{}",
                stable_id(&format!("{problem}\0{response}"))
            ));
            starts.push(length);
            starts_column.push(Series::new("".into(), starts));
            response.push_str(step);
            let rating = value as i8;
            step_ratings.push(rating);
            // A bad step, or a neutral one under `--neutral incorrect`, ends "no error so far".
            let wrong = rating == -1 || (rating == 0 && neutral == NeutralRating::Incorrect);
            drafts.push(Draft {
                generation: Generation {
                    question_id: format!("prm800k-{}", stable_id(problem)),
                    question: problem.to_owned(),
                    response,
                    is_correct: !wrong,
                    predicted_answer: answer.as_ref().and_then(|a| a.get(row)).map(str::to_owned),
                    expected_answer: None,
                    benchmark: benchmark.clone(),
                    sample: format!("row{row}"),
                    first_error_char: wrong.then_some(step_start),
                },
                label: Some(!wrong),
                source_row: row,
                label_column: None,
            });
        }
        let extras = vec![
            Column::new(STEP_RATING.into(), step_ratings),
            Column::new(STEP_INDEX.into(), step_indices),
            Column::new(PREFIX_ID.into(), prefix_ids),
            starts_column
                .into_iter()
                .collect::<ListChunked>()
                .with_name(STEP_STARTS.into())
                .into_series()
                .into_column(),
        ];
        let consumed = [
            "instruction",
            "responses",
            "next_response",
            "rating",
            "answer",
        ];
        self.finish_generations(drafts, "rating", &consumed, extras)
    }

    /// Settles labels (grading or null checks), enforces unique `(question_id, sample)`, builds
    /// the canonical frame, then appends `extras` (aligned with `drafts`) and pass-through
    /// columns.
    fn finish_generations(
        &mut self,
        drafts: Vec<Draft>,
        label_column: &str,
        consumed: &[&str],
        extras: Vec<Column>,
    ) -> Result<DataFrame> {
        let mut settled: Vec<(Generation, usize, usize)> = Vec::with_capacity(drafts.len());
        for (position, draft) in drafts.into_iter().enumerate() {
            let mut generation = draft.generation;
            if self.options.grade {
                let Some(expected) = generation.expected_answer.clone() else {
                    // No reference to grade against: an error, or a counted skip.
                    self.required(None, draft.source_row, EXPECTED_ANSWER)?;
                    continue;
                };
                let graded = grade(
                    generation.predicted_answer.as_deref(),
                    &generation.response,
                    &expected,
                    self.options.tolerance,
                );
                self.report.graded += 1;
                if draft.label.is_some_and(|label| label != graded.is_correct) {
                    self.report.grade_changed += 1;
                }
                generation.predicted_answer = graded.predicted_answer;
                generation.is_correct = graded.is_correct;
            } else {
                match draft.label {
                    Some(label) => generation.is_correct = label,
                    None => {
                        if self.options.skip_bad {
                            self.report.skipped_null_values += 1;
                            continue;
                        }
                        return Err(Error::bad_value(
                            self.path,
                            draft.source_row,
                            draft.label_column.as_deref().unwrap_or(label_column),
                            "null label (use --skip-bad to skip such rows, or --grade to compute labels)",
                        ));
                    }
                }
            }
            settled.push((generation, draft.source_row, position));
        }
        let rows: Vec<Generation> = settled.iter().map(|(g, _, _)| g.clone()).collect();
        let kept = match unique_samples(&rows, self.path, self.options.skip_bad) {
            Ok(kept) => kept,
            Err(Error::BadValue { message, row, .. }) => {
                // Name the input row, not the position among the imported rows.
                let source_row = settled[row - 1].1;
                return Err(Error::bad_value(self.path, source_row, SAMPLE, message));
            }
            Err(other) => return Err(other),
        };
        self.report.skipped_duplicates += rows.len() - kept.len();
        let kept_rows: Vec<Generation> = kept.iter().map(|&i| rows[i].clone()).collect();
        let mut frame = generations_frame(&kept_rows)?;
        let extra_take = indices(kept.iter().map(|&i| settled[i].2));
        let mut added: Vec<Column> = Vec::with_capacity(extras.len());
        for extra in extras {
            added.push(
                extra
                    .take(&extra_take)
                    .map_err(|e| Error::table(self.path, e))?,
            );
        }
        frame = frame
            .hstack(&added)
            .map_err(|e| Error::table(self.path, e))?;
        let source_rows = indices(kept.iter().map(|&i| settled[i].1));
        append_pass_through(&mut frame, self.frame, consumed, &source_rows, self.path)?;
        Ok(frame)
    }

    // ------------------------------------------------------------ pairs formats

    fn openmath_pairs(&mut self) -> Result<DataFrame> {
        let question = self.text(QUESTION)?;
        let correct = self.text("correct")?;
        let incorrect = self.text("incorrect")?;
        let id_column = [QUESTION_ID, "id"].into_iter().find(|c| self.has(c));
        let ids = id_column.map(|c| self.text(c)).transpose()?;
        let dataset = self.optional_text("dataset")?;
        let mut pairs = Vec::with_capacity(self.frame.height());
        let mut source_rows = Vec::with_capacity(self.frame.height());
        let mut occurrences: HashMap<String, usize> = HashMap::new();
        for row in 0..self.frame.height() {
            let (Some(question_text), Some(chosen), Some(rejected)) = (
                self.required(question.get(row), row, QUESTION)?,
                self.required(correct.get(row), row, "correct")?,
                self.required(incorrect.get(row), row, "incorrect")?,
            ) else {
                continue;
            };
            let benchmark = self.benchmark_or(|| {
                dataset
                    .as_ref()
                    .and_then(|d| d.get(row))
                    .unwrap_or("openmath")
                    .to_owned()
            });
            let question_id = match &ids {
                Some(ids) => match self.required(ids.get(row), row, id_column.unwrap_or("id"))? {
                    Some(id) => id.to_owned(),
                    None => continue,
                },
                None => format!("{benchmark}-{}", stable_id(question_text)),
            };
            let count = occurrences.entry(question_id.clone()).or_default();
            *count += 1;
            pairs.push(Pair {
                pair_id: format!("{question_id}#{}", *count - 1),
                question_id,
                question: question_text.to_owned(),
                chosen: chosen.to_owned(),
                rejected: rejected.to_owned(),
                benchmark,
                margin: None,
            });
            source_rows.push(row);
        }
        let mut consumed = vec![QUESTION, "correct", "incorrect"];
        consumed.extend(id_column);
        self.finish_pairs(pairs, source_rows, &consumed)
    }

    fn hh_rlhf(&mut self) -> Result<DataFrame> {
        let chosen = self.text("chosen")?;
        let rejected = self.text("rejected")?;
        let benchmark = self.benchmark_or(|| "hh-rlhf".to_owned());
        let mut pairs = Vec::with_capacity(self.frame.height());
        let mut source_rows = Vec::with_capacity(self.frame.height());
        let mut occurrences: HashMap<String, usize> = HashMap::new();
        for row in 0..self.frame.height() {
            let (Some(chosen_text), Some(rejected_text)) = (
                self.required(chosen.get(row), row, "chosen")?,
                self.required(rejected.get(row), row, "rejected")?,
            ) else {
                continue;
            };
            if chosen_text == rejected_text {
                self.bad(row, "rejected", "identical to `chosen`".to_owned())?;
                continue;
            }
            let Some((prompt, chosen_turn, rejected_turn)) =
                split_dialogue(chosen_text, rejected_text)
            else {
                self.bad(
                    row,
                    "chosen",
                    "the two dialogues share no \"\\n\\nAssistant:\" turn".to_owned(),
                )?;
                continue;
            };
            // Either dialogue has a later assistant turn than the shared prompt.
            let last_turn = |dialogue: &str| dialogue.rfind(ASSISTANT_TURN);
            let prompt_turn = prompt.len() - ASSISTANT_TURN.len();
            if last_turn(chosen_text) != Some(prompt_turn)
                || last_turn(rejected_text) != Some(prompt_turn)
            {
                self.report.multi_turn_pairs += 1;
            }
            let question_id = format!("{benchmark}-{}", stable_id(prompt));
            let count = occurrences.entry(question_id.clone()).or_default();
            *count += 1;
            pairs.push(Pair {
                pair_id: format!("{question_id}#{}", *count - 1),
                question_id,
                question: prompt.to_owned(),
                chosen: chosen_turn.to_owned(),
                rejected: rejected_turn.to_owned(),
                benchmark: benchmark.clone(),
                margin: None,
            });
            source_rows.push(row);
        }
        self.finish_pairs(pairs, source_rows, &["chosen", "rejected"])
    }

    /// Checks pair ids are unique, builds the canonical frame and appends pass-through columns.
    fn finish_pairs(
        &mut self,
        pairs: Vec<Pair>,
        source_rows: Vec<usize>,
        consumed: &[&str],
    ) -> Result<DataFrame> {
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(pairs.len());
        for (pair, &row) in pairs.iter().zip(&source_rows) {
            if let Some(first) = seen.insert(pair.pair_id.as_str(), row) {
                return Err(Error::bad_value(
                    self.path,
                    row,
                    PAIR_ID,
                    format!("pair_id `{}` repeats row {}", pair.pair_id, first + 1),
                ));
            }
        }
        let mut frame = pairs_frame(&pairs)?;
        append_pass_through(
            &mut frame,
            self.frame,
            consumed,
            &indices(source_rows.into_iter()),
            self.path,
        )?;
        Ok(frame)
    }
}

fn indices(values: impl Iterator<Item = usize>) -> IdxCa {
    IdxCa::from_vec("index".into(), values.map(|v| v as IdxSize).collect())
}

/// Appends the input columns that were not consumed and do not clash with an output name,
/// taken at `source_rows`.
fn append_pass_through(
    frame: &mut DataFrame,
    input: &DataFrame,
    consumed: &[&str],
    source_rows: &IdxCa,
    path: &Path,
) -> Result<()> {
    let present: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let keep: Vec<Column> = input
        .columns()
        .iter()
        .filter(|c| {
            let name = c.name().as_str();
            !consumed.contains(&name) && !present.iter().any(|p| p == name)
        })
        .cloned()
        .collect();
    if keep.is_empty() {
        return Ok(());
    }
    let kept = DataFrame::new(input.height(), keep)
        .and_then(|f| f.take(source_rows))
        .map_err(|e| Error::table(path, e))?;
    *frame = frame
        .hstack(kept.columns())
        .map_err(|e| Error::table(path, e))?;
    Ok(())
}

/// After concatenating several inputs: `(question_id, sample)` (generations) or `pair_id`
/// (pairs) must still be unique; under `skip_bad` later repeats are dropped.
fn dedup_across_inputs(
    imported: &Imported,
    sources: &[(PathBuf, usize)],
    skip_bad: bool,
) -> Result<DataFrame> {
    let frame = &imported.frame;
    let locate = |index: usize| -> (PathBuf, usize) {
        let mut start = 0;
        for (path, height) in sources {
            if index < start + height {
                return (path.clone(), index - start + 1);
            }
            start += height;
        }
        (PathBuf::from("<input>"), index + 1)
    };
    let keys: Vec<String> = match imported.table {
        TableKind::Generations => {
            let columns = crate::pipeline::schema::Columns::new(frame, Path::new("<input>"));
            let ids = columns.str(QUESTION_ID)?;
            let samples = columns.str(SAMPLE)?;
            ids.iter()
                .zip(samples.iter())
                .map(|(i, s)| format!("{}\u{0}{}", i.unwrap_or_default(), s.unwrap_or_default()))
                .collect()
        }
        TableKind::Pairs => crate::pipeline::schema::Columns::new(frame, Path::new("<input>"))
            .str(PAIR_ID)?
            .iter()
            .map(|p| p.unwrap_or_default().to_owned())
            .collect(),
    };
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    let mut kept = Vec::with_capacity(keys.len());
    for (index, key) in keys.iter().enumerate() {
        if let Some(&earlier) = first.get(key.as_str()) {
            if skip_bad {
                continue;
            }
            let (path, row) = locate(index);
            let (earlier_path, earlier_row) = locate(earlier);
            return Err(Error::Format {
                path,
                message: format!(
                    "output row {row} repeats the {} of {} output row {earlier_row}: `{}` \
                     (use --skip-bad to keep the first)",
                    match imported.table {
                        TableKind::Generations => "(question_id, sample)",
                        TableKind::Pairs => "pair_id",
                    },
                    earlier_path.display(),
                    key.replace('\u{0}', "`, `"),
                ),
            });
        }
        first.insert(key.as_str(), index);
        kept.push(index);
    }
    if kept.len() == keys.len() {
        return Ok(frame.clone());
    }
    frame
        .take(&indices(kept.into_iter()))
        .map_err(|e| Error::table("<input>", e))
}

fn count_questions(frame: &DataFrame, report: &mut ImportReport) -> Result<()> {
    let columns = crate::pipeline::schema::Columns::new(frame, Path::new("<output>"));
    let ids = columns.str(QUESTION_ID)?;
    let mut unique: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for id in ids.iter().flatten() {
        unique.insert(id);
    }
    report.questions = unique.len();
    report.correct = columns.bool_not_null(IS_CORRECT)?.sum().unwrap_or(0) as usize;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialogue_split_at_last_shared_assistant_turn() {
        let chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No.";
        let rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Sure, one.";
        let (prompt, a, b) = split_dialogue(chosen, rejected).unwrap();
        assert_eq!(
            prompt,
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
        );
        assert_eq!(a, "No.");
        assert_eq!(b, "Sure, one.");
    }

    #[test]
    fn dialogue_split_when_final_turns_share_a_prefix() {
        // The common prefix runs into the final turn ("I th"); the prompt still ends at the
        // assistant marker, not mid-word.
        let chosen = "\n\nHuman: q\n\nAssistant: I think yes";
        let rejected = "\n\nHuman: q\n\nAssistant: I thought no";
        let (prompt, a, b) = split_dialogue(chosen, rejected).unwrap();
        assert_eq!(prompt, "\n\nHuman: q\n\nAssistant:");
        assert_eq!((a, b), ("I think yes", "I thought no"));
    }

    #[test]
    fn dialogue_split_when_dialogues_diverge_earlier() {
        // As in 5 harmless-base test rows: the dialogues differ before the final turn, so the
        // continuation holds several turns.
        let chosen = "\n\nHuman: q\n\nAssistant: A1\n\nHuman: q2\n\nAssistant: A2";
        let rejected = "\n\nHuman: q\n\nAssistant: B1";
        let (prompt, a, b) = split_dialogue(chosen, rejected).unwrap();
        assert_eq!(prompt, "\n\nHuman: q\n\nAssistant:");
        assert_eq!(a, "A1\n\nHuman: q2\n\nAssistant: A2");
        assert_eq!(b, "B1");
    }

    #[test]
    fn dialogue_without_shared_assistant_turn() {
        assert_eq!(split_dialogue("\n\nHuman: a", "\n\nHuman: b"), None);
        assert_eq!(
            split_dialogue("x\n\nAssistant: 1", "y\n\nAssistant: 1"),
            None
        );
    }

    #[test]
    fn dialogue_split_respects_multibyte_characters() {
        let chosen = "\n\nHuman: café?\n\nAssistant: é";
        let rejected = "\n\nHuman: café?\n\nAssistant: è";
        let (_, a, b) = split_dialogue(chosen, rejected).unwrap();
        assert_eq!((a, b), ("é", "è"));
    }

    fn frame_with(columns: &[&str]) -> DataFrame {
        let columns: Vec<Column> = columns
            .iter()
            .map(|name| Column::new((*name).into(), ["x"]))
            .collect();
        DataFrame::new(1, columns).unwrap()
    }

    #[test]
    fn format_detected_from_columns() {
        let cases: [(&[&str], SourceFormat); 7] = [
            (
                &[
                    "id",
                    "question",
                    "gold",
                    "model",
                    "output",
                    "pred",
                    "is_correct",
                ],
                SourceFormat::Zeroeval,
            ),
            (
                &[
                    "question",
                    "generated_solution",
                    "predicted_answer",
                    "is_correct",
                ],
                SourceFormat::Nemo,
            ),
            (
                &["problem", "generated_solution", "expected_answer"],
                SourceFormat::Nemo,
            ),
            (
                &["question", "correct", "incorrect"],
                SourceFormat::OpenmathPairs,
            ),
            (&["chosen", "rejected"], SourceFormat::HhRlhf),
            (
                &["instruction", "responses", "next_response", "rating"],
                SourceFormat::Prm800k,
            ),
            // A canonical generations table goes through the generic mapping unchanged.
            (
                &["question_id", "question", "response", "is_correct"],
                SourceFormat::Generic,
            ),
        ];
        for (columns, expected) in cases {
            assert_eq!(detect_format(&frame_with(columns)), expected, "{columns:?}");
        }
        assert_eq!(SourceFormat::HhRlhf.table(), TableKind::Pairs);
        assert_eq!(SourceFormat::Prm800k.table(), TableKind::Generations);
    }

    #[test]
    fn label_values_parse_two_different_words() {
        let values: LabelValues = " correct , wrong ".parse().unwrap();
        assert_eq!(
            (values.correct.as_str(), values.incorrect.as_str()),
            ("correct", "wrong")
        );
        for bad in ["correct", "a,a", ",b", "a,", "a,b,c"] {
            assert!(bad.parse::<LabelValues>().is_err(), "{bad}");
        }
    }

    #[test]
    fn steps_benchmarks_and_id_prefixes() {
        // "a\n" is 2 characters, "é\n" 2 more (é is one character).
        assert_eq!(line_starts("a\né\nccc"), [0, 2, 4]);
        assert_eq!(line_starts(""), [0]);
        assert_eq!(id_prefix("gsm8k-main-test-#0"), Some("gsm8k"));
        assert_eq!(id_prefix("0"), None);
        assert_eq!(id_prefix("-1"), None);
        assert_eq!(id_prefix("12-3"), None);
        assert_eq!(
            benchmark_from_file_name(Path::new("r/math-l5_test_40models.jsonl.gz")).as_deref(),
            Some("math-l5")
        );
        assert_eq!(
            benchmark_from_file_name(Path::new("gpt-4o.json")).as_deref(),
            Some("gpt-4o")
        );
    }

    #[test]
    fn stable_id_is_sha256_prefix() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(stable_id("abc"), "ba7816bf8f01cfea");
    }
}

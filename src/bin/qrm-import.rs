//! Imports real dataset formats into qrm's canonical generations or pairs table.
//!
//! Detects ZeroEval results, NeMo-Skills / OpenMathInstruct predictions, OpenMathInstruct
//! preference rows, HH-RLHF dialogues and PRM800K step ratings from their columns (`--from`
//! forces one); anything else goes through the generic column mapping, which reaches fields
//! of struct columns (`--response-col 6b_finetuning.solution`), turns several per-model
//! columns into rows (`--sample-cols`), maps string labels (`--label-values correct,wrong`) and
//! joins a list of steps into one response (`--first-error-step-col` then sets
//! `first_error_char`). `--grade` computes `is_correct` from the predicted (or extracted) and
//! expected answers: numbers compare exactly unless `--tolerance` is given. Which rule labels
//! the rows of each `--from` is listed in `docs/grading.md`.
//!
//! PRM800K rows become one generation per rated step: the earlier steps and the rated one
//! joined with newlines (`step_starts` marks each; the rated step is last), `step_rating`,
//! `prefix_id` (the prefix the step continues, for `qrm-pairs --group-col prefix_id`) and
//! `first_error_char` at the rated step when it is rated −1. `--neutral` says what a rating
//! of 0 becomes (default: correct); unrated rows are dropped and counted.
//!
//! ```text
//! qrm-import zeroeval/gsm8k_test_42models.jsonl.gz | qrm-pairs --seed 1 -o pairs.parquet
//! qrm-import prm800k/phase1_train_plus.stepwise-critic.parquet --neutral drop \
//!     | qrm-pairs --group-col prefix_id --reuse -o prm-pairs.parquet
//! qrm-import example_model_solutions.jsonl --question-col question --expected-col ground_truth \
//!     --sample-cols 6b_finetuning,6b_verification,175b_finetuning,175b_verification \
//!     --response-col solution -o gsm8k_examples.parquet
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qrm::pipeline::grading::Tolerance;
use qrm::pipeline::import::{
    import_paths, ColumnMapping, ImportOptions, LabelValues, NeutralRating, SourceFormat,
};

/// How `--tolerance` compares numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ToleranceKind {
    /// `|predicted - expected| <= TOL`.
    Absolute,
    /// `|predicted - expected| <= TOL · |expected|`.
    Relative,
}

/// A tolerance: a finite number >= 0.
fn parse_tolerance(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("expected a finite number >= 0, got `{text}`")),
    }
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Import ZeroEval, NeMo-Skills, OpenMathInstruct, HH-RLHF, PRM800K or any table into qrm's tables"
)]
struct Args {
    /// Input files (`-` for stdin); all must be in the same format.
    #[arg(value_name = "INPUT", default_value = "-")]
    inputs: Vec<PathBuf>,

    /// Source format, instead of detecting it from the columns.
    #[arg(long, value_enum)]
    from: Option<SourceFormat>,

    /// Benchmark name for every row (default: what the format implies).
    #[arg(long)]
    benchmark: Option<String>,

    /// Generic mapping: column holding the question text [default: question].
    #[arg(long, value_name = "COLUMN")]
    question_col: Option<String>,

    /// Generic mapping: column holding the response text, or a list of steps joined with
    /// newlines; `a.b` reaches field `b` of struct column `a` [default: response].
    #[arg(long, value_name = "COLUMN")]
    response_col: Option<String>,

    /// Generic mapping: correctness column: Boolean, 0/1, or strings with --label-values
    /// [default: is_correct].
    #[arg(long, value_name = "COLUMN")]
    label_col: Option<String>,

    /// Generic mapping: string labels, the value meaning correct then the one meaning
    /// incorrect (e.g. `correct,wrong`); other values are errors.
    #[arg(long, value_name = "CORRECT,INCORRECT")]
    label_values: Option<LabelValues>,

    /// Generic mapping: columns that each hold one sample (a model's solution): each input
    /// row gives one row per column, `sample` = the column name. In struct columns
    /// (`{is_correct, solution}`), --response-col, --label-col and --first-error-step-col
    /// name fields inside each.
    #[arg(long, value_name = "COLUMN,...", value_delimiter = ',')]
    sample_cols: Vec<String>,

    /// Generic mapping: 0-based index of the response's first wrong step (negative or null:
    /// none); `first_error_char` becomes the offset where that step starts. The steps are the
    /// list items of a list response, or the lines of a text one.
    #[arg(long, value_name = "COLUMN")]
    first_error_step_col: Option<String>,

    /// Generic mapping: question id column [default: question_id, else a hash of the question].
    #[arg(long, value_name = "COLUMN")]
    id_col: Option<String>,

    /// Generic mapping: reference answer column [default: expected_answer].
    #[arg(long, value_name = "COLUMN")]
    expected_col: Option<String>,

    /// Compute `is_correct` by comparing the predicted answer (or the one extracted from the
    /// response) with the expected answer.
    #[arg(long)]
    grade: bool,

    /// Grading: let numbers that are not both integers differ by up to TOL (absolute unless
    /// --tolerance-kind relative). Without it numbers compare exactly, as rationals.
    #[arg(long, value_name = "TOL", value_parser = parse_tolerance, requires = "grade")]
    tolerance: Option<f64>,

    /// Grading: how --tolerance compares.
    #[arg(long, value_enum, default_value_t = ToleranceKind::Absolute, requires = "tolerance")]
    tolerance_kind: ToleranceKind,

    /// PRM800K: what a neutral step (rating 0) becomes: correct ("no error so far"),
    /// incorrect (an error at that step), or dropped (counted).
    /// [default: correct]
    #[arg(long, value_enum)]
    neutral: Option<NeutralRating>,

    /// Skip malformed lines and bad rows (counted on stderr) instead of failing.
    #[arg(long)]
    skip_bad: bool,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,

    #[command(flatten)]
    output: qrm::cli::OutputArgs,
}

fn main() -> std::process::ExitCode {
    qrm::cli::main(run)
}

fn run(args: Args) -> anyhow::Result<()> {
    let tolerance = args.tolerance.map(|value| match args.tolerance_kind {
        ToleranceKind::Absolute => Tolerance::Absolute(value),
        ToleranceKind::Relative => Tolerance::Relative(value),
    });
    let options = ImportOptions {
        from: args.from,
        benchmark: args.benchmark,
        grade: args.grade,
        tolerance,
        skip_bad: args.skip_bad,
        neutral: args.neutral,
        mapping: ColumnMapping {
            question: args.question_col,
            response: args.response_col,
            label: args.label_col,
            id: args.id_col,
            expected: args.expected_col,
            samples: args.sample_cols,
            first_error_step: args.first_error_step_col,
            label_values: args.label_values,
        },
    };
    // Refuse an unknown output extension before reading anything.
    let output = args.output.output();
    output.resolved_format()?;
    let mut imported = import_paths(&args.inputs, &options)?;
    imported.log_summary();
    output
        .write(&mut imported.frame)
        .context("writing the imported table")?;
    Ok(())
}

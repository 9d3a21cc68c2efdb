//! Imports real dataset formats into qrm's canonical generations or pairs table.
//!
//! Detects ZeroEval results, NeMo-Skills / OpenMathInstruct predictions, OpenMathInstruct
//! preference rows, HH-RLHF dialogues and PRM800K step ratings from their columns (`--from`
//! forces one); anything else goes through the generic column mapping. `--grade` computes
//! `is_correct` from the predicted (or extracted) and expected answers.
//!
//! ```text
//! qrm-import zeroeval/gsm8k_test_42models.jsonl.gz | qrm-pairs --seed 1 -o pairs.parquet
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qrm::pipeline::grading::DEFAULT_TOLERANCE;
use qrm::pipeline::import::{import_paths, ColumnMapping, ImportOptions, SourceFormat};

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

    /// Generic mapping: column holding the response text [default: response].
    #[arg(long, value_name = "COLUMN")]
    response_col: Option<String>,

    /// Generic mapping: Boolean or 0/1 correctness column [default: is_correct].
    #[arg(long, value_name = "COLUMN")]
    label_col: Option<String>,

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

    /// Relative tolerance for numeric answers when grading.
    #[arg(long, default_value_t = DEFAULT_TOLERANCE, requires = "grade")]
    tolerance: f64,

    /// Skip malformed lines and bad rows (counted on stderr) instead of failing.
    #[arg(long)]
    skip_bad: bool,

    /// Only warnings and errors on stderr.
    #[arg(short, long)]
    quiet: bool,

    #[command(flatten)]
    output: qrm::cli::OutputArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    qrm::cli::init_logging(args.quiet);
    qrm::cli::finish(run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    if !(args.tolerance >= 0.0 && args.tolerance.is_finite()) {
        anyhow::bail!(
            "--tolerance must be a non-negative number, got {}",
            args.tolerance
        );
    }
    let options = ImportOptions {
        from: args.from,
        benchmark: args.benchmark,
        grade: args.grade,
        tolerance: args.tolerance,
        skip_bad: args.skip_bad,
        mapping: ColumnMapping {
            question: args.question_col,
            response: args.response_col,
            label: args.label_col,
            id: args.id_col,
            expected: args.expected_col,
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

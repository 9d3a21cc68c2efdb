//! Builds preference pairs from a generations table: a correct (chosen) and an incorrect
//! (rejected) solution of the same question, each solution used once unless `--reuse`.
//!
//! `--group-col COL` pairs only within the rows of a question sharing COL's value (PRM800K's
//! `prefix_id`: chosen = a prefix plus a good step, rejected = the same prefix plus a bad one).
//! `--split-questions F --holdout PATH` first sets aside a seeded fraction of the questions
//! (all their generations, every column kept) so reward models are evaluated on questions
//! they never saw.
//!
//! ```text
//! qrm-import gsm8k.jsonl.gz | qrm-pairs --split-questions 0.3 --seed 1 --holdout held.parquet -o pairs.parquet
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qrm::pipeline::io::{display_path, read_table_with, Output, ReadOptions};
use qrm::pipeline::pairs::{build_pairs, PairingOptions, PairsOptions};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Pair correct and incorrect solutions of the same question"
)]
struct Args {
    /// Generations table (`-` for stdin).
    #[arg(value_name = "INPUT", default_value = "-")]
    input: PathBuf,

    /// Seed for pairing and the question split.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Allow a solution in several pairs: every correct × incorrect combination.
    #[arg(long)]
    reuse: bool,

    /// At most N pairs per question.
    #[arg(long, value_name = "N")]
    max_per_question: Option<usize>,

    /// Hold out this fraction of the questions (written to --holdout, never paired).
    #[arg(long, value_name = "FRACTION", requires = "holdout", value_parser = qrm::cli::parse_fraction)]
    split_questions: Option<f64>,

    /// At most N samples per held-out question (a seeded draw): a cheaper evaluation.
    #[arg(long, value_name = "N", requires = "holdout")]
    holdout_samples: Option<usize>,

    /// Use only N questions of the input (a seeded draw, made before the split): a smaller run
    /// on the same data.
    #[arg(long, value_name = "N")]
    max_questions: Option<usize>,

    /// Where to write the held-out generations.
    #[arg(long, value_name = "PATH", requires = "split_questions")]
    holdout: Option<PathBuf>,

    /// Pair only rows of a question that share this column's value: `prefix_id` (from
    /// `qrm-import --from prm800k`) pairs a good and a bad next step of one solution prefix.
    /// `--max-per-question` still caps each question.
    #[arg(long, value_name = "COLUMN")]
    group_col: Option<String>,

    /// Skip malformed lines and rows repeating a (question_id, sample) instead of failing.
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
    // Refuse an unknown output extension before reading anything.
    let output = args.output.output();
    output.resolved_format()?;
    let holdout_output = args
        .holdout
        .clone()
        .map(|path| Output::new(Some(path), None));
    if let Some(holdout) = &holdout_output {
        holdout.resolved_format()?;
    }
    let read_options = ReadOptions::with_skip_bad(args.skip_bad);
    let (frame, read_report) = read_table_with(&args.input, &read_options)?;
    if !read_report.skipped_lines.is_empty() {
        tracing::warn!(
            "{} malformed lines skipped",
            read_report.skipped_lines.len()
        );
    }
    let options = PairsOptions {
        pairing: PairingOptions {
            seed: args.seed,
            reuse: args.reuse,
            max_per_question: args.max_per_question,
        },
        holdout_fraction: args.split_questions,
        max_questions: args.max_questions,
        holdout_samples: args.holdout_samples,
        skip_bad: args.skip_bad,
        group_col: args.group_col,
    };
    let mut pairs = build_pairs(&frame, &display_path(&args.input), &options)?;
    // `--holdout` requires `--split-questions`, so a holdout path means a held-out table.
    pairs.summary.log(args.holdout.as_deref());
    if let (Some(mut holdout), Some(target)) = (pairs.holdout.take(), holdout_output) {
        target
            .write(&mut holdout)
            .context("writing the held-out generations")?;
    }
    output
        .write(&mut pairs.pairs)
        .context("writing the pairs")?;
    Ok(())
}

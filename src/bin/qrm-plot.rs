//! Figures from qrm's tables: AUROC reports, Q-filtering sweeps, training logs, and one
//! response's tokens coloured by Q-value (the paper's Figure 4). The output extension picks the
//! format: `.png` or `.svg` for charts, `.html` or `.svg` for tokens.
//!
//! `tokens` checks the drawn row's `q_values` with the rule qrm-auroc and qrm-filter follow
//! (`qrm::metrics::checks`): a NaN or ±inf fails naming the file, row and column, unless
//! `--drop-nan` draws those tokens uncoloured and counts them on stderr.
//!
//! `qrm-score scores.parquet ... | qrm-auroc --percentiles 0.25,0.5,1 | qrm-plot auroc - -o auroc.png`

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use qrm::pipeline::io::{display_path, read_table};
use qrm::plot::{self, RowSelector};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Figures from qrm tables: AUROC reports, filter sweeps, training logs, tokens by Q-value"
)]
struct Args {
    #[command(subcommand)]
    figure: Figure,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,
}

#[derive(Debug, Subcommand)]
enum Figure {
    /// AUROC by benchmark and reward model from a `qrm-auroc` report: grouped bars with CI
    /// whiskers for whole responses, lines with CI bands when the report has percentiles.
    Auroc {
        /// The report (any table format; `-` for stdin).
        report: PathBuf,
        /// Figure to write (.png or .svg).
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
    },
    /// Accuracy after filtering and tokens saved against the threshold, from
    /// `qrm-filter --sweep`.
    Filter {
        /// The sweep report (any table format; `-` for stdin).
        report: PathBuf,
        /// Figure to write (.png or .svg).
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
    },
    /// Loss parts and pairwise accuracy against the step, from a `qrm-train` JSONL log.
    Training {
        /// The training log.
        log: PathBuf,
        /// Figure to write (.png or .svg).
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
    },
    /// One response's tokens coloured by Q-value (red below 0, blue above). Needs a scores
    /// table written by `qrm-score --emit-tokens`.
    Tokens {
        /// The scores table (`-` for stdin).
        scores: PathBuf,
        /// The row to draw, counted from 1.
        #[arg(long, value_name = "N", required_unless_present = "question_id")]
        row: Option<usize>,
        /// Draw the row with this question_id (with --sample).
        #[arg(long, conflicts_with = "row", requires = "sample")]
        question_id: Option<String>,
        /// The sample of --question-id to draw.
        #[arg(long, requires = "question_id")]
        sample: Option<String>,
        /// Draw a row whose `q_values` hold NaN or ±inf, those tokens uncoloured (counted on
        /// stderr); without it such a row is an error naming it, as in qrm-auroc and
        /// qrm-filter.
        #[arg(long)]
        drop_nan: bool,
        /// Page to write (.html or .svg).
        #[arg(short, long, value_name = "PATH")]
        output: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    qrm::cli::main(run)
}

fn run(args: Args) -> anyhow::Result<()> {
    let output = match args.figure {
        Figure::Auroc { report, output } => {
            plot::auroc_figure(&read_table(&report)?, &output)?;
            output
        }
        Figure::Filter { report, output } => {
            plot::filter_sweep_figure(&read_table(&report)?, &output)?;
            output
        }
        Figure::Training { log, output } => {
            plot::training_figure(&read_table(&log)?, &output)?;
            output
        }
        Figure::Tokens {
            scores,
            row,
            question_id,
            sample,
            drop_nan,
            output,
        } => {
            let selector = match (row, question_id, sample) {
                (Some(number), _, _) => RowSelector::Number(number),
                (None, Some(question_id), Some(sample)) => RowSelector::Sample {
                    question_id,
                    sample,
                },
                _ => anyhow::bail!("give --row N, or --question-id and --sample"),
            };
            plot::tokens_figure(
                &read_table(&scores)?,
                &display_path(&scores),
                &selector,
                drop_nan,
                &output,
            )?;
            output
        }
    };
    tracing::info!("wrote {}", output.display());
    Ok(())
}

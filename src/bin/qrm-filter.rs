//! Q-value filtering for majority voting (the paper's Table 1), top-K selection by reward
//! (Table 11) and the Q-value/reward correlation along responses (Table 13).
//!
//! Per question, a sample is dropped when any Q-value after the first `--skip` response tokens
//! is below `--threshold`; tokens saved run from that token to the end. A question whose samples
//! are all dropped keeps them all and saves nothing. `--vote reference` is the released code
//! (correct samples pooled, ties count as correct); `--vote answer` buckets by normalised
//! `predicted_answer` and breaks ties with a `--seed`ed coin (counted in `ties_broken`).
//!
//! Output columns (one row per `--by` group and threshold): `rm, benchmark, threshold, skip,
//! questions, samples_per_question, accuracy, accuracy_filtered, proportion_correct,
//! proportion_correct_filtered` (fractions), `filtered_pct` (percent, mean over questions),
//! `tokens_saved_pct` (percent: the released rule, Σ saved / Σ scored tokens over all
//! questions, fallback questions' tokens counted as not saved), `tokens_saved_per_question_pct`
//! (percent, mean over questions of each one's saved / scored; both in either vote mode),
//! `p_unpaired` (the reference's ttest_ind on per-question proportions), `p_paired`
//! (ttest_rel), `vote, ties_broken, fallback_questions`.
//! `--top-k`: `rm, benchmark, top_k, questions, accuracy, proportion_correct, vote,
//! ties_broken`. `--correlation`: `rm, benchmark, fraction, n, pearson, spearman`.
//! `--localise` (qrm-synth data scored with `--emit-tokens`): `rm, benchmark, threshold, skip,
//! wrong_samples, wrong_dropped_pct, at_or_after_error_pct, median_tokens_after,
//! median_tokens_before, median_error_token, correct_samples, correct_dropped_pct`.
//!
//! Rows are checked first (`qrm::metrics::checks`, shared with qrm-auroc and qrm-plot): a
//! missing or non-finite value in a column read (`q_values`; `reward` for `--top-k`; `q_values`
//! and `token_rewards` for `--correlation`) fails naming the rows, unless `--drop-nan` drops
//! those samples (counted per column on stderr). Repeated (`question_id`, `sample`, `rm`) rows
//! fail unless `--drop-duplicates` keeps the first of each; without a `sample` column every row
//! is its own sample. One `rm` label with several `rm_id`s (different models) fails: give each
//! model its own label with `qrm-score --rm-name`; tables without `rm_id` pass. Bad flag values
//! (`--sweep 1:0:0.1`, a step ≤ 0, more than 10 000 thresholds) exit 2.
//!
//! ```text
//! qrm-score -m rm/ --goal goal.safetensors samples.parquet | qrm-filter --sweep -0.5:0.5:0.1 --plot sweep.svg
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qrm::metrics::checks::RowChecks;
use qrm::metrics::filter::{FilterOptions, VoteRule};
use qrm::metrics::report::filter::{
    correlation_report, filter_report, localisation_report, top_k_report,
};
use qrm::metrics::report::{parse_finite, parse_sweep};
use qrm::pipeline::io::{display_path, read_table};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Q-value filtering for majority voting, top-K and correlations"
)]
struct Args {
    /// Scores table (`-` for stdin): `question_id`, `is_correct`, `predicted_answer`,
    /// `q_values` (and `reward` for `--top-k`, `token_rewards` for `--correlation`).
    #[arg(value_name = "INPUT", default_value = "-")]
    input: PathBuf,

    /// Drop a sample when a Q-value after `--skip` tokens is below this.
    #[arg(long, default_value = "0", allow_hyphen_values = true, value_parser = finite)]
    threshold: f64,

    /// Response tokens ignored at the start (the reference code ignores 5).
    #[arg(long, default_value_t = 5)]
    skip: usize,

    /// One row per threshold `from:to:step` (inclusive; step > 0, at most 10 000 values),
    /// instead of `--threshold`.
    #[arg(long, value_name = "FROM:TO:STEP", allow_hyphen_values = true, value_parser = sweep)]
    sweep: Option<Thresholds>,

    /// Majority-vote rule.
    #[arg(long, value_enum, default_value = "answer")]
    vote: VoteRule,

    /// Seed of the tie-breaking coin (`--vote answer`).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Instead of filtering: majority vote within each question's top K samples by `reward`,
    /// comma-separated Ks.
    #[arg(long, value_delimiter = ',', value_name = "K,...", conflicts_with_all = ["sweep", "correlation"])]
    top_k: Option<Vec<usize>>,

    /// Instead of filtering: Pearson and Spearman between `q_values` and `token_rewards` at
    /// 0.2, 0.4, 0.6 and 0.8 of each response.
    #[arg(long, conflicts_with = "sweep")]
    correlation: bool,

    /// Instead of filtering: where each wrong sample is dropped relative to its first error
    /// (`first_error_char`, qrm-synth), and how many correct samples are dropped. Needs
    /// `token_offsets` (`qrm-score --emit-tokens`); `--sweep` gives one row per threshold.
    #[arg(long, conflicts_with_all = ["top_k", "correlation"])]
    localise: bool,

    /// Grouping columns, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "rm,benchmark")]
    by: Vec<String>,

    /// Drop samples with a missing or non-finite value in a column read (counted per column on
    /// stderr) instead of failing.
    #[arg(long)]
    drop_nan: bool,

    /// Keep the first of rows sharing (question_id, sample, rm), counted on stderr, instead of
    /// failing.
    #[arg(long)]
    drop_duplicates: bool,

    /// Also draw accuracy and tokens saved against the threshold (.png or .svg; with --sweep).
    #[arg(long, value_name = "PATH", requires = "sweep")]
    plot: Option<PathBuf>,

    #[command(flatten)]
    output: qrm::cli::OutputArgs,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,
}

fn main() -> std::process::ExitCode {
    qrm::cli::main(run)
}

/// `--sweep` values (a newtype, so that clap takes the list as one value).
#[derive(Debug, Clone)]
struct Thresholds(Vec<f64>);

fn sweep(text: &str) -> Result<Thresholds, String> {
    parse_sweep(text).map(Thresholds).map_err(|e| e.to_string())
}

fn finite(text: &str) -> Result<f64, String> {
    parse_finite(text).map_err(|e| e.to_string())
}

fn run(args: Args) -> anyhow::Result<()> {
    let thresholds = match &args.sweep {
        Some(values) => values.0.clone(),
        None => vec![args.threshold],
    };
    let checks = RowChecks {
        drop_nan: args.drop_nan,
        drop_duplicates: args.drop_duplicates,
    };
    let by: Vec<String> = args.by.into_iter().filter(|b| !b.is_empty()).collect();
    let shown = display_path(&args.input);
    let frame = read_table(&args.input)?;
    let mut report = if let Some(ks) = &args.top_k {
        top_k_report(&frame, &shown, &by, ks, args.vote, args.seed, checks)?
    } else if args.localise {
        localisation_report(&frame, &shown, &by, args.skip, &thresholds, checks)?
    } else if args.correlation {
        correlation_report(&frame, &shown, &by, &[0.2, 0.4, 0.6, 0.8], checks)?
    } else {
        let options = FilterOptions {
            skip: args.skip,
            threshold: args.threshold,
            vote: args.vote,
            seed: args.seed,
        };
        filter_report(&frame, &shown, &by, &options, &thresholds, checks)?
    };
    if let Some(path) = &args.plot {
        qrm::plot::filter_sweep_figure(&report, path)
            .with_context(|| format!("drawing {}", path.display()))?;
        tracing::info!("wrote {}", path.display());
    }
    args.output.output().write(&mut report)?;
    Ok(())
}

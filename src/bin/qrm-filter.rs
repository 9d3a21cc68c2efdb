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
//! **Calibrated thresholds** (a raw cosine means something different for every model):
//! `--max-false-drop α` chooses θ per RM by split conformal prediction from the running minima
//! (smallest Q after `--skip`) of correct calibration samples: with n of them sorted,
//! k = ⌊α(n + 1)⌋ and θ = the k-th smallest (k = 0: θ = −∞, nothing dropped); a new correct
//! sample exchangeable with them is dropped (min Q < θ) with probability ≤ k/(n + 1) ≤ α
//! (`qrm::metrics::calibration` has the proof and the ties). The calibration samples come
//! from `--calibrate FILE` (a scores table of the same RMs, same `rm_id`; e.g. held-out
//! questions of their own) or `--calibrate-fraction F`, a seeded (`--seed`) question-disjoint
//! share of the input's questions, the report then covering the others. `--sweep-alpha
//! FROM:TO:STEP` gives one row per α (and `--plot` draws against α). `--warmup K
//! --warmup-percentile P` is the rule for use while generating: each question's first K samples
//! are kept and set its θ at the P-th percentile of their running minima (a lower P is more
//! conservative). Columns: `rm, benchmark, method, alpha, warmup, warmup_percentile, threshold,
//! conformal_k, calibration_questions, calibration_correct, skip, correct_samples,
//! false_drop_rate, false_drop_low, false_drop_high, wrong_samples, wrong_drop_rate,
//! wrong_drop_low, wrong_drop_high` (rates are fractions of the samples under a threshold,
//! with 95 % Wilson intervals), then Table 1's `questions … fallback_questions`; with
//! `--localise` also `located_wrong_samples, at_or_after_error_pct, median_tokens_after,
//! median_tokens_before, median_error_token`. Exit 2: `rm` not among `--by`, α outside
//! (0, 1), `--max-false-drop`/`--sweep-alpha` without a calibration source or the reverse,
//! calibration combined with `--threshold`, `--sweep`, `--top-k`, `--correlation` or
//! `--warmup`. Exit 1: an RM without a correct calibration sample (naming the file and the
//! RM), or one whose `rm_id` differs between INPUT and the calibration file.
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
//! qrm-filter held.parquet --calibrate-fraction 0.5 --max-false-drop 0.1 --localise
//! qrm-filter test.parquet --calibrate calibration.parquet --sweep-alpha 0.05:0.5:0.05 --plot alpha.svg
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::RangedU64ValueParser;
use clap::{ArgGroup, Parser};
use qrm::metrics::checks::RowChecks;
use qrm::metrics::filter::{FilterOptions, VoteRule};
use qrm::metrics::report::calibrated::{
    calibrated_report, CalibratedOptions, Calibration, CalibrationSource,
};
use qrm::metrics::report::filter::{
    correlation_report, filter_report, localisation_report, top_k_report,
};
use qrm::metrics::report::{parse_alpha_sweep, parse_finite, parse_open_unit, parse_sweep};
use qrm::pipeline::io::{display_path, read_table};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Q-value filtering for majority voting (fixed or calibrated thresholds), top-K and \
             correlations"
)]
#[command(group(ArgGroup::new("source").args(["calibrate", "calibrate_fraction"]).requires("alphas")))]
#[command(group(
    ArgGroup::new("alphas")
        .args(["max_false_drop", "sweep_alpha"])
        .requires("source")
        .conflicts_with_all(["sweep", "threshold", "top_k", "correlation"])
))]
#[command(group(ArgGroup::new("sweeps").args(["sweep", "sweep_alpha"])))]
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

    /// Seed of the tie-breaking coin (`--vote answer`) and of the `--calibrate-fraction` split.
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
    /// With --max-false-drop, --sweep-alpha or --warmup: adds where the calibrated filter drops
    /// wrong samples to that report.
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

    /// Also draw accuracy and tokens saved against the threshold (.png or .svg; with --sweep),
    /// or against α (with --sweep-alpha).
    #[arg(long, value_name = "PATH", requires = "sweeps")]
    plot: Option<PathBuf>,

    /// Calibrate θ per RM on this scores table (same columns; e.g. scores of held-out questions
    /// not in INPUT) for --max-false-drop or --sweep-alpha. The guarantee assumes its correct
    /// samples are exchangeable with INPUT's.
    #[arg(long, value_name = "FILE")]
    calibrate: Option<PathBuf>,

    /// Calibrate on this share of INPUT's questions (question-disjoint, drawn with --seed) and
    /// report on the others, instead of --calibrate FILE. Strictly between 0 and 1.
    #[arg(long, value_name = "F", value_parser = fraction)]
    calibrate_fraction: Option<f64>,

    /// Split-conformal θ per RM such that a new correct sample is dropped with probability at
    /// most α: θ = the ⌊α(n+1)⌋-th smallest running minimum Q of the n correct calibration
    /// samples (none dropped when that rank is 0). Needs --calibrate or --calibrate-fraction;
    /// α strictly between 0 and 1.
    #[arg(long, value_name = "ALPHA", value_parser = alpha)]
    max_false_drop: Option<f64>,

    /// One row per α `from:to:step` (each strictly between 0 and 1), instead of
    /// --max-false-drop.
    #[arg(long, value_name = "FROM:TO:STEP", value_parser = alpha_sweep)]
    sweep_alpha: Option<Alphas>,

    /// Warm-up rule: keep each question's first K samples (row order) and drop a later sample
    /// whose running minimum Q is below the --warmup-percentile of theirs.
    #[arg(long, value_name = "K", value_parser = RangedU64ValueParser::<usize>::new().range(1..),
          conflicts_with_all = ["source", "alphas", "sweep", "threshold", "top_k", "correlation"])]
    warmup: Option<usize>,

    /// The percentile (0–100, NumPy's linear rule) of the warm-up samples' running minima that
    /// sets a question's threshold; lower is more conservative.
    #[arg(long, value_name = "P", default_value = "10", value_parser = percent, requires = "warmup")]
    warmup_percentile: f64,

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

/// `--sweep-alpha` values.
#[derive(Debug, Clone)]
struct Alphas(Vec<f64>);

fn alpha_sweep(text: &str) -> Result<Alphas, String> {
    parse_alpha_sweep(text)
        .map(Alphas)
        .map_err(|e| e.to_string())
}

fn alpha(text: &str) -> Result<f64, String> {
    parse_open_unit(text, "the maximum false-drop rate α").map_err(|e| e.to_string())
}

fn fraction(text: &str) -> Result<f64, String> {
    parse_open_unit(text, "the calibration share").map_err(|e| e.to_string())
}

fn percent(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if (0.0..=100.0).contains(&value) => Ok(value),
        _ => Err(format!("`{text}` is not a percentile in [0, 100]")),
    }
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
    let calibration_shown = args.calibrate.as_deref().map(display_path);
    let calibration_frame = match &args.calibrate {
        Some(path) => Some(read_table(path)?),
        None => None,
    };
    let source = match (
        &calibration_frame,
        &calibration_shown,
        args.calibrate_fraction,
    ) {
        (Some(frame), Some(path), _) => Some(CalibrationSource::File { frame, path }),
        (_, _, Some(fraction)) => Some(CalibrationSource::Split { fraction }),
        _ => None,
    };
    let alphas = match (&args.sweep_alpha, args.max_false_drop) {
        (Some(values), _) => Some(values.0.clone()),
        (None, Some(alpha)) => Some(vec![alpha]),
        (None, None) => None,
    };
    let calibration = match (args.warmup, source, alphas) {
        (Some(samples), _, _) => Some(Calibration::Warmup {
            samples,
            percentile: args.warmup_percentile,
        }),
        (None, Some(source), Some(alphas)) => Some(Calibration::Conformal { source, alphas }),
        _ => None,
    };
    let filter = FilterOptions {
        skip: args.skip,
        threshold: args.threshold,
        vote: args.vote,
        seed: args.seed,
    };
    let mut report = if let Some(calibration) = calibration {
        let options = CalibratedOptions {
            filter,
            calibration,
            localise: args.localise,
            checks,
        };
        calibrated_report(&frame, &shown, &by, &options)?
    } else if let Some(ks) = &args.top_k {
        top_k_report(&frame, &shown, &by, ks, args.vote, args.seed, checks)?
    } else if args.localise {
        localisation_report(&frame, &shown, &by, args.skip, &thresholds, checks)?
    } else if args.correlation {
        correlation_report(&frame, &shown, &by, &[0.2, 0.4, 0.6, 0.8], checks)?
    } else {
        filter_report(&frame, &shown, &by, &filter, &thresholds, checks)?
    };
    if let Some(path) = &args.plot {
        qrm::plot::filter_sweep_figure(&report, path)
            .with_context(|| format!("drawing {}", path.display()))?;
        tracing::info!("wrote {}", path.display());
    }
    args.output.output().write(&mut report)?;
    Ok(())
}

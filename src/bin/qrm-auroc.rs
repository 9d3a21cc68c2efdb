//! AUROC of a reward model's scores against `is_correct`, per reward model and benchmark, with
//! confidence intervals, partial-generation percentiles and paired comparisons of two models.
//!
//! Exact and tie-aware (equal to scikit-learn's `roc_auc_score`). A group with one class gets a
//! null `auroc` and a `note`. Intervals: `--ci delong` (default), `--ci bootstrap` (stratified
//! percentile), `--ci samples` (one AUROC per `sample` value, mean and t-interval: Figure 3).
//! `--percentiles` scores each response by its prefix ending at token
//! `max(floor(n·p) − 1, 0)`; `--score q_min` / `q_last` read `q_values` the same way.
//!
//! Output columns: `rm, benchmark` (the `--by` columns), `score, percentile, n, n_pos, auroc,
//! ci_low, ci_high, ci_method, note`; with `--compare A,B` also `rm_b, auroc_b, delta,
//! delta_ci_low, delta_ci_high, p_value` (DeLong's paired test).
//!
//! ```text
//! qrm-score -m rm/ generations.parquet | qrm-auroc --percentiles 0:1:0.1 --ci samples --plot fig3.png
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qrm::metrics::report::{auroc_report, parse_sweep, AurocOptions, CiMethod};
use qrm::pipeline::io::{display_path, read_table};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "AUROC of reward-model scores against correctness, with CIs"
)]
struct Args {
    /// Scores table (`-` for stdin): `is_correct` plus the score column(s).
    #[arg(value_name = "INPUT", default_value = "-")]
    input: PathBuf,

    /// Score: a numeric column, or `q_min` (lowest Q-value so far) / `q_last` (Q-value at the
    /// prefix's last token).
    #[arg(long, default_value = "reward")]
    score: String,

    /// Grouping columns, comma-separated (empty for one group).
    #[arg(long, value_delimiter = ',', default_value = "rm,benchmark")]
    by: Vec<String>,

    /// Prefix fractions, comma-separated (`0,0.5,1`) or `from:to:step` (`0:1:0.1`).
    #[arg(long)]
    percentiles: Option<String>,

    /// Confidence interval method.
    #[arg(long, value_enum, default_value = "delong")]
    ci: CiMethod,

    /// Interval level.
    #[arg(long, default_value_t = 0.95)]
    level: f64,

    /// Bootstrap resamples (`--ci bootstrap`).
    #[arg(long, default_value_t = 1000)]
    resamples: usize,

    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Compare two reward models scored on the same generations: `rmA,rmB`.
    #[arg(long, value_name = "A,B")]
    compare: Option<String>,

    /// Drop rows whose score is missing or not finite (counted on stderr) instead of failing.
    #[arg(long)]
    drop_nan: bool,

    /// Also draw the report (.png or .svg): bars for whole responses, lines for percentiles.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,

    #[command(flatten)]
    output: qrm::cli::OutputArgs,

    /// Only warnings and errors on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    qrm::cli::init_logging(args.quiet);
    qrm::cli::finish(run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let percentiles = args.percentiles.as_deref().map(parse_list).transpose()?;
    let compare = match args.compare.as_deref() {
        None => None,
        Some(text) => match text.split_once(',') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => Some((a.to_owned(), b.to_owned())),
            _ => anyhow::bail!("--compare expects two rm names, `rmA,rmB`, got `{text}`"),
        },
    };
    if !(args.level > 0.0 && args.level < 1.0) {
        anyhow::bail!("--level must be between 0 and 1, got {}", args.level);
    }
    let options = AurocOptions {
        score: args.score,
        by: args.by.into_iter().filter(|b| !b.is_empty()).collect(),
        percentiles,
        ci: args.ci,
        resamples: args.resamples,
        seed: args.seed,
        level: args.level,
        compare,
        drop_nan: args.drop_nan,
    };
    let shown = display_path(&args.input);
    let frame = read_table(&args.input)?;
    let mut report = auroc_report(&frame, &shown, &options)?;
    if report.dropped_rows > 0 {
        tracing::warn!(
            "dropped {} row(s) with a missing or non-finite score",
            report.dropped_rows
        );
    }
    if let Some(path) = &args.plot {
        qrm::plot::auroc_figure(&report.frame, path)
            .with_context(|| format!("drawing {}", path.display()))?;
        tracing::info!("wrote {}", path.display());
    }
    args.output.output().write(&mut report.frame)?;
    Ok(())
}

/// `0,0.5,1` or `from:to:step`; every value in [0, 1].
fn parse_list(text: &str) -> anyhow::Result<Vec<f64>> {
    let values = if text.contains(':') {
        parse_sweep(text)?
    } else {
        text.split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--percentiles: `{text}` is not a list of numbers"))?
    };
    if let Some(bad) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        anyhow::bail!("--percentiles: {bad} is outside [0, 1]");
    }
    Ok(values)
}

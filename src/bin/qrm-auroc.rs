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
//! `--within COL` (e.g. `--within question_id`) adds, after each row, the within-`COL` AUROC
//! of the same group and percentile (`qrm::metrics::within`): Σ_g U_g / Σ_g P_g·N_g over the
//! `COL` groups, the probability that a correct sample beats a wrong sample *of the same
//! question*, which is what majority voting and Q-filtering depend on; a per-question reward
//! offset moves the pooled AUROC but not this one. Groups with one class contribute no pairs
//! (the `note` counts them). Its interval is a cluster bootstrap (whole groups resampled,
//! `--resamples`, `--seed`, `--level`; `ci_method` `cluster-bootstrap`, none with `--ci
//! none`); with `--compare` the same resamples give the difference's interval and a two-sided
//! bootstrap `p_value`. Columns added: `kind` (`pooled` or `within COL`), `n_groups` (groups
//! with both classes; null on pooled rows) and `n_pairs` (pairs compared; n_pos·n_neg on
//! pooled rows). A missing `COL` or a null in it fails (exit 1); `--plot` draws the pooled
//! rows.
//!
//! `--steps` scores human-rated steps instead of whole responses (PRM800K,
//! `qrm::metrics::steps`): each rated step is one item, labelled by its rating (+1 positive,
//! −1 negative, 0 left out unless `--neutral-steps`) and scored at its last token, with the
//! same scores, groups and intervals. A `step_rating` row (`qrm-import --from prm800k`) rates
//! its response's last step, so its item is the row itself: `--score q_last` is the Q-value at
//! the end of the rated step. A `step_ratings` list aligned with `step_starts` rates several
//! steps; `token_offsets` (`qrm-score --emit-tokens`) then say where each step ends. Output
//! gains nothing; `n` and `n_pos` count steps. `--ci samples` is refused with `--steps`.
//!
//! Rows are checked before anything is computed (`qrm::metrics::checks`, shared with
//! qrm-filter and qrm-plot): a missing or non-finite value in the column the score reads
//! (`reward` or the `--score` column; `token_rewards` with `--percentiles`; anywhere in
//! `q_values` for `q_min`/`q_last`) fails naming the rows, unless `--drop-nan` drops those rows
//! (counted per column on stderr). Repeated (`question_id`, `sample`, `rm`) rows fail, unless
//! `--drop-duplicates` keeps the first of each; without a `sample` column row order is the
//! sample (the k-th row of a question and rm is its sample k, which is also how `--compare`
//! pairs generations). One `rm` label with several `rm_id`s (different models) fails: give
//! each model its own label with `qrm-score --rm-name`. Tables without `rm_id` (older qrm)
//! pass. Exit 2 for bad flag values (`--level 1.5`, `--percentiles 0,2`, `--compare` naming an
//! `rm` the table does not have), 1 for bad data.
//!
//! ```text
//! qrm-score -m rm/ generations.parquet | qrm-auroc --percentiles 0:1:0.1 --ci samples --plot fig3.png
//! qrm-auroc scores.parquet --steps --score q_last --ci bootstrap --format markdown
//! qrm-auroc scores.parquet --compare bt,q --within question_id --format markdown
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qrm::metrics::report::auroc::{auroc_report, pooled_rows, AurocOptions, CiMethod};
use qrm::metrics::report::{parse_compare, parse_fractions, parse_level};
use qrm::metrics::steps::{step_items, NeutralSteps};
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

    /// Prefix fractions in [0, 1], comma-separated (`0,0.5,1`) or `from:to:step` (`0:1:0.1`).
    #[arg(long, value_parser = fractions)]
    percentiles: Option<Fractions>,

    /// Confidence interval method.
    #[arg(long, value_enum, default_value = "delong")]
    ci: CiMethod,

    /// Interval level, strictly between 0 and 1.
    #[arg(long, default_value = "0.95", value_parser = level)]
    level: f64,

    /// Bootstrap resamples (`--ci bootstrap`, and the --within cluster bootstrap).
    #[arg(long, default_value_t = 1000)]
    resamples: usize,

    /// Seed of the bootstrap (and of the --within cluster bootstrap).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Compare two reward models (two different `rm` values of the table) scored on the same
    /// generations: `rmA,rmB`.
    #[arg(long, value_name = "A,B", value_parser = compare)]
    compare: Option<(String, String)>,

    /// Also report the AUROC within groups of this column (e.g. `question_id`): only pairs of
    /// one group are compared; cluster-bootstrap interval (`--resamples`, `--seed`) and, with
    /// --compare, a paired bootstrap p-value. Adds the columns `kind`, `n_groups`, `n_pairs`.
    #[arg(long, value_name = "COL")]
    within: Option<String>,

    /// Drop rows whose score (or any value of the list it reads) is missing or not finite,
    /// counted per column on stderr, instead of failing.
    #[arg(long)]
    drop_nan: bool,

    /// Keep the first of rows sharing (question_id, sample, rm), counted on stderr, instead of
    /// failing.
    #[arg(long)]
    drop_duplicates: bool,

    /// Step-level AUROC: one item per human-rated step (`step_rating`, or a `step_ratings`
    /// list aligned with `step_starts`), scored at the step's last token, against its rating.
    #[arg(long)]
    steps: bool,

    /// With --steps: what a neutral (0) step counts as.
    #[arg(long, value_enum, default_value_t = NeutralSteps::Exclude, requires = "steps")]
    neutral_steps: NeutralSteps,

    /// Also draw the report (.png or .svg): bars for whole responses, lines for percentiles.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,

    #[command(flatten)]
    output: qrm::cli::OutputArgs,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,
}

fn main() -> std::process::ExitCode {
    qrm::cli::main(run)
}

/// `--percentiles` values (a newtype, so that clap takes the list as one value).
#[derive(Debug, Clone)]
struct Fractions(Vec<f64>);

fn fractions(text: &str) -> Result<Fractions, String> {
    parse_fractions(text)
        .map(Fractions)
        .map_err(|e| e.to_string())
}

fn level(text: &str) -> Result<f64, String> {
    parse_level(text).map_err(|e| e.to_string())
}

fn compare(text: &str) -> Result<(String, String), String> {
    parse_compare(text).map_err(|e| e.to_string())
}

fn run(args: Args) -> anyhow::Result<()> {
    let options = AurocOptions {
        score: args.score,
        by: args.by.into_iter().filter(|b| !b.is_empty()).collect(),
        percentiles: args.percentiles.map(|p| p.0),
        ci: args.ci,
        resamples: args.resamples,
        seed: args.seed,
        level: args.level,
        compare: args.compare,
        drop_nan: args.drop_nan,
        drop_duplicates: args.drop_duplicates,
        within: args.within.filter(|w| !w.is_empty()),
    };
    if args.steps && args.ci == CiMethod::Samples {
        return Err(qrm::Error::Usage(
            "--ci samples averages over sample sets; step items have none (use bootstrap or delong)"
                .to_owned(),
        )
        .into());
    }
    let shown = display_path(&args.input);
    let mut frame = read_table(&args.input)?;
    if args.steps {
        let items = step_items(&frame, &shown, args.neutral_steps)?;
        tracing::info!(
            "{} rated steps: {} items, {} neutral left out, {} without a scored token left out",
            items.rated,
            items.frame.height(),
            items.neutral_excluded,
            items.unscored
        );
        frame = items.frame;
    }
    // Drops are logged by the checks, per column.
    let mut report = auroc_report(&frame, &shown, &options)?;
    if let Some(path) = &args.plot {
        let pooled = pooled_rows(&report.frame)?;
        qrm::plot::auroc_figure(&pooled, path)
            .with_context(|| format!("drawing {}", path.display()))?;
        tracing::info!("wrote {}", path.display());
    }
    args.output.output().write(&mut report.frame)?;
    Ok(())
}

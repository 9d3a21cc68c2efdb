//! Trains a reward model on preference pairs: Bradley–Terry (`--objective bt`) or the paper's
//! goal-conditioned Q-function RM (`--objective q`, BT + λ·contrastive), and writes a checkpoint
//! directory that `qrm-score` and transformers load.
//!
//! Micro-batches hold `--micro-batch` pairs, or with `--micro-batch-tokens N` as many pairs as
//! fit N padded tokens; each log row and the closing summary report the process's peak resident
//! set (host memory; on CUDA the device memory is not measured yet).
//!
//! `qrm-train pairs.parquet --model smollm2.gguf --objective q --train-layers 2 -o ckpt/`
//! `qrm-import gen.jsonl | qrm-pairs --reuse | qrm-train - --model smollm2.gguf -o ckpt/`

use std::path::PathBuf;

use clap::Parser;
use qrm::cli::DeviceArgs;
use qrm::model::head::HeadKind;
use qrm::model::template::{parse_template_arg, EosPolicy};
use qrm::train::run::{fit, FitRequest};
use qrm::train::trainer::TrainConfig;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Pairs table (question, chosen, rejected[, question_id, margin]); any supported format,
    /// `-` for stdin (`qrm-pairs … | qrm-train - …`).
    pairs: PathBuf,

    /// Base model: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,

    /// Checkpoint directory to write. Training works in DIR.partial and renames it to DIR when
    /// the checkpoint is complete, so DIR never holds a failed run; an interrupted run stays in
    /// DIR.partial for `--resume`.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,

    /// Eval pairs file; otherwise `--eval-fraction` of the questions is held out.
    #[arg(long)]
    eval_pairs: Option<PathBuf>,

    /// Fraction of questions held out for eval when no `--eval-pairs` is given, in [0, 1].
    #[arg(long, default_value_t = 0.1, value_parser = qrm::cli::parse_fraction)]
    eval_fraction: f64,

    /// Train only the top K layers, the final norm and the head; the frozen trunk's outputs
    /// are computed once and cached under `--cache`.
    #[arg(long, value_name = "K")]
    train_layers: Option<usize>,

    /// Value head: linear (H→1) or mlp (the paper's H→H/2→H/2→H→1).
    #[arg(long, value_enum, default_value = "linear")]
    head: HeadKind,

    /// Prompt template: chatml, nemo, nemo-release, raw, or a file holding `{question}` once
    /// (as in qrm-score, which must use the same one).
    #[arg(long, default_value = "chatml", value_name = "NAME|PATH", value_parser = parse_template_arg)]
    template: String,

    /// append: an EOS closes every response and the reward is read there; none: read at the
    /// last response token. Use the same policy in qrm-score.
    #[arg(long, value_enum, default_value = "append")]
    eos: EosPolicy,

    /// Longest sequence in tokens; longer pairs are skipped and counted.
    #[arg(long, default_value_t = 1024)]
    max_len: usize,

    /// Continue an interrupted run from DIR.partial (or a completed one in DIR with more steps);
    /// refused when the pairs, model or settings differ from the saved run's.
    #[arg(long)]
    resume: bool,

    /// JSONL log of every step.
    #[arg(long, value_name = "PATH")]
    log: Option<PathBuf>,

    /// Frozen-trunk cache root.
    #[arg(long, default_value = ".cache/trunk")]
    cache: PathBuf,

    #[command(flatten)]
    device: DeviceArgs,

    #[command(flatten)]
    config: TrainConfig,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,
}

fn main() -> std::process::ExitCode {
    qrm::cli::main(run)
}

fn run(args: Args) -> anyhow::Result<()> {
    let request = FitRequest {
        pairs: args.pairs,
        eval_pairs: args.eval_pairs,
        eval_fraction: args.eval_fraction,
        model: args.model,
        output: args.output,
        train_layers: args.train_layers,
        head: args.head,
        template: args.template,
        eos: args.eos,
        max_len: args.max_len,
        device: args.device.device,
        resume: args.resume,
        log: args.log,
        cache: args.cache,
        quiet: args.common.quiet,
        config: args.config,
    };
    let summary = fit(&request)?;
    // Host memory only: on CUDA the device memory is not measured yet.
    let peak = qrm::memory::peak_rss_mib().map_or_else(String::new, |mib| {
        format!("; peak resident set {mib:.0} MiB")
    });
    let Some(eval) = summary.eval else {
        tracing::info!("{} steps{peak}", summary.steps);
        return Ok(());
    };
    tracing::info!(
        "{} steps; eval accuracy {:.4}, BT loss {:.4}, contrastive {:.4}{peak}",
        summary.steps,
        eval.accuracy,
        eval.loss_bt,
        eval.loss_contrastive
    );
    if let Some(share) = eval.accuracy_interval() {
        tracing::info!(
            "eval accuracy {}/{} pairs, Wilson 95% CI [{:.3}, {:.3}], exact binomial p = {:.2e} against 0.5",
            eval.wins,
            eval.pairs,
            share.low,
            share.high,
            share.p_value
        );
    }
    Ok(())
}

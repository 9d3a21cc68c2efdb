//! Trains a reward model on preference pairs: Bradley–Terry (`--objective bt`) or the paper's
//! goal-conditioned Q-function RM (`--objective q`, BT + λ·contrastive), and writes a checkpoint
//! directory that `qrm-score` and transformers load.
//!
//! `qrm-train pairs.parquet --model smollm2.gguf --objective q --train-layers 2 -o ckpt/`

use std::path::PathBuf;

use clap::Parser;
use qrm::model::fit::{fit, FitRequest};
use qrm::model::head::HeadKind;
use qrm::model::sampling::Window;
use qrm::model::template::EosPolicy;
use qrm::model::train::{ContrastiveForm, GoalStrategy, Objective, PreferenceLoss, TrainConfig};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Pairs table (question, chosen, rejected[, question_id, margin]); any supported format.
    pairs: PathBuf,

    /// Base model: a Hugging Face directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,

    /// Checkpoint directory to write.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,

    /// bt: Bradley–Terry only; q: BT + λ·contrastive (the paper's method).
    #[arg(long, value_enum, default_value = "q")]
    objective: Objective,

    /// Preference loss: sigmoid (−log σ(r_c − r_r − margin)) or logexp.
    #[arg(long, value_enum, default_value = "sigmoid")]
    loss: PreferenceLoss,

    /// Contrastive weight λ.
    #[arg(long = "lambda", default_value_t = 0.5)]
    lambda: f64,

    /// reference: the released code's loss; paper: Eq. 5.
    #[arg(long, value_enum, default_value = "reference")]
    contrastive: ContrastiveForm,

    /// single (SGS), avg (goals averaged) or random (negative goal from another question).
    #[arg(long, value_enum, default_value = "single")]
    goal_strategy: GoalStrategy,

    /// Positive (source, goal) samples per pair.
    #[arg(long, default_value_t = 16)]
    positives: usize,

    /// Negative (source, goal) samples per pair.
    #[arg(long, default_value_t = 16)]
    negatives: usize,

    /// Where sources are sampled, as fractions of the response (`0.9:1` = the last tenth).
    #[arg(long, default_value = "0:1")]
    source_window: Window,

    /// Where goals are sampled, as fractions of the response.
    #[arg(long, default_value = "0:1")]
    goal_window: Window,

    /// Eval pairs file; otherwise `--eval-fraction` of the questions is held out.
    #[arg(long)]
    eval_pairs: Option<PathBuf>,

    /// Fraction of questions held out for eval when no `--eval-pairs` is given.
    #[arg(long, default_value_t = 0.1)]
    eval_fraction: f64,

    /// Peak learning rate (cosine schedule, 3% warm-up).
    #[arg(long, default_value_t = 9e-6)]
    lr: f64,

    /// AdamW decoupled weight decay (not applied to norms and biases).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,

    /// Pairs per optimiser step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,

    /// Pairs per forward pass (gradients are accumulated over batch-size / micro-batch).
    #[arg(long, default_value_t = 1)]
    micro_batch: usize,

    /// Passes over the training pairs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,

    /// Stop after this many optimiser steps (the schedule spans them).
    #[arg(long)]
    max_steps: Option<usize>,

    /// Train only the top K layers, the final norm and the head; the frozen trunk's outputs
    /// are computed once and cached under `--cache`.
    #[arg(long, value_name = "K")]
    train_layers: Option<usize>,

    /// Value head: linear (H→1) or mlp (the paper's H→H/2→H/2→H→1).
    #[arg(long, value_enum, default_value = "linear")]
    head: HeadKind,

    /// Prompt template (as in qrm-score).
    #[arg(long, default_value = "chatml")]
    template: String,

    /// append: an EOS closes every response and the reward is read there; none: read at the
    /// last response token. Use the same policy in qrm-score.
    #[arg(long, value_enum, default_value = "append")]
    eos: EosPolicy,

    /// Longest sequence in tokens; longer pairs are skipped and counted.
    #[arg(long, default_value_t = 1024)]
    max_len: usize,

    /// Evaluate every N steps (and at the end).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,

    /// Save the resumable state every N steps (and at the end).
    #[arg(long, default_value_t = 0)]
    save_every: usize,

    /// Continue from the state saved in the output directory.
    #[arg(long)]
    resume: bool,

    /// JSONL log of every step.
    #[arg(long, value_name = "PATH")]
    log: Option<PathBuf>,

    /// Frozen-trunk cache root.
    #[arg(long, default_value = ".cache/trunk")]
    cache: PathBuf,

    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,

    /// Only warnings and errors on stderr; no progress bar.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    qrm::cli::init_logging(args.quiet);
    qrm::cli::finish(run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = TrainConfig {
        objective: args.objective,
        loss: args.loss,
        lambda: args.lambda,
        contrastive: args.contrastive,
        goal_strategy: args.goal_strategy,
        positives: args.positives,
        negatives: args.negatives,
        source_window: args.source_window.to_string(),
        goal_window: args.goal_window.to_string(),
        learning_rate: args.lr,
        weight_decay: args.weight_decay,
        batch_size: args.batch_size,
        micro_batch: args.micro_batch,
        epochs: args.epochs,
        max_steps: args.max_steps,
        eval_every: args.eval_every,
        save_every: args.save_every,
        seed: args.seed,
        ..TrainConfig::default()
    };
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
        device: args.device,
        resume: args.resume,
        log: args.log,
        cache: args.cache,
        quiet: args.quiet,
        config,
    };
    let summary = fit(&request)?;
    if let Some(eval) = summary.eval {
        tracing::info!(
            "{} steps; eval accuracy {:.4}, BT loss {:.4}, contrastive {:.4}",
            summary.steps,
            eval.accuracy,
            eval.loss_bt,
            eval.loss_contrastive
        );
    }
    Ok(())
}

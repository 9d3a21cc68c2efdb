//! Trains a reward model on preference pairs: Bradley–Terry (`--objective bt`) or the paper's
//! goal-conditioned Q-function RM (`--objective q`, BT + λ·contrastive), and writes a checkpoint
//! directory that `qrm-score` and transformers load.
//!
//! Micro-batches hold `--micro-batch` pairs, or with `--micro-batch-tokens N` as many pairs as
//! fit N padded tokens; each log row and the closing summary report the process's peak resident
//! set (host memory; on CUDA the device memory is not measured yet).
//!
//! With `--lora-rank R` the trained layers (all, or the top `--train-layers K`) get LoRA
//! adapters (scale `--lora-alpha`/R, on `--lora-targets`, `--lora-dropout` on their input in
//! training) instead of training their weights; the final norm and a linear head train fully,
//! and DIR is a PEFT LoRA directory (`adapter_config.json`, `adapter_model.safetensors`) that
//! qrm-score, qrm-embed and `peft.PeftModel.from_pretrained` load (docs/lora.md).
//! `qrm-train --merge DIR -o OUT` writes the LoRA directory DIR as a plain checkpoint.
//!
//! `--checkpoint-layers` (gradient checkpointing) keeps only each trained layer's input during
//! the forward and recomputes the layer in the backward pass: the same gradients, one more
//! forward of the trained layers, and the memory of one layer's graph instead of all of them
//! (docs/training-speed.md). A run may be resumed with or without it.
//!
//! `--dtype bf16` (the default with `--device cuda`) trains in mixed precision: bf16 weights and
//! activations, f32 master weights, AdamW moments, gradient sums and loss; the checkpoint holds
//! the bf16 weights, the resumable state the f32 masters. `--dtype f32` is the CPU's default.
//!
//! `qrm-train pairs.parquet --model smollm2.gguf --objective q --train-layers 2 -o ckpt/`
//! `qrm-import gen.jsonl | qrm-pairs --reuse | qrm-train - --model smollm2.gguf -o ckpt/`
//! `qrm-train pairs.parquet --model smollm2.gguf --lora-rank 16 --lora-targets all-linear -o lora/`
//! `qrm-train pairs.parquet --model smollm2.gguf --checkpoint-layers --micro-batch 16 -o ckpt/`
//! `qrm-train --merge lora/ -o merged/`

use std::path::PathBuf;

use clap::Parser;
use qrm::cli::DeviceArgs;
use qrm::model::head::HeadKind;
use qrm::model::lora::LoraSpec;
use qrm::model::template::{parse_template_arg, EosPolicy};
use qrm::train::run::{fit, merge_lora, FitRequest};
use qrm::train::trainer::TrainConfig;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Pairs table (question, chosen, rejected[, question_id, margin]); any supported format,
    /// `-` for stdin (`qrm-pairs … | qrm-train - …`).
    #[arg(required_unless_present = "merge")]
    pairs: Option<PathBuf>,

    /// Base model: a Hugging Face directory or a .gguf file.
    #[arg(long, required_unless_present = "merge")]
    model: Option<PathBuf>,

    /// Write the LoRA directory DIR (a `--lora-rank` run's output) as a plain checkpoint
    /// (weights W + alpha/r·B·A) to `-o`, and train nothing.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["pairs", "model", "lora_rank", "resume"])]
    merge: Option<PathBuf>,

    /// Train rank-R LoRA adapters on the trained layers' projections (all layers, or the top
    /// `--train-layers K`) instead of their weights; the final norm and the (linear) head train
    /// fully. The output is a PEFT LoRA directory.
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
    lora_rank: Option<u64>,

    /// LoRA alpha: the adapters' output is scaled by alpha/R (PEFT's lora_alpha).
    #[arg(long, default_value_t = 16.0, requires = "lora_rank", value_name = "A",
          value_parser = qrm::model::lora::parse_alpha)]
    lora_alpha: f64,

    /// The projections that get adapters: a comma list of q,k,v,o,gate,up,down (PEFT's
    /// q_proj, ... also accepted) or all-linear.
    #[arg(long, default_value = "q,v", requires = "lora_rank", value_name = "LIST",
          value_parser = qrm::model::lora::parse_targets)]
    lora_targets: qrm::model::lora::LoraTargets,

    /// Dropout probability on the adapters' input, in training only (PEFT's lora_dropout).
    #[arg(long, default_value_t = 0.0, requires = "lora_rank", value_name = "P",
          value_parser = qrm::model::lora::parse_dropout)]
    lora_dropout: f64,

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
    if let Some(lora) = &args.merge {
        merge_lora(lora, &args.output)?;
        tracing::info!("wrote {}", args.output.display());
        return Ok(());
    }
    let (Some(pairs), Some(model)) = (args.pairs, args.model) else {
        // clap requires both unless --merge.
        return Err(qrm::Error::Usage("PAIRS and --model are required".into()).into());
    };
    let lora = args.lora_rank.map(|rank| LoraSpec {
        rank: rank as usize,
        alpha: args.lora_alpha,
        dropout: args.lora_dropout,
        targets: args.lora_targets.0.clone(),
    });
    let request = FitRequest {
        pairs,
        eval_pairs: args.eval_pairs,
        eval_fraction: args.eval_fraction,
        model,
        output: args.output,
        train_layers: args.train_layers,
        lora,
        head: args.head,
        template: args.template,
        eos: args.eos,
        max_len: args.max_len,
        device: args.device.device,
        dtype: args.device.dtype,
        resume: args.resume,
        log: args.log,
        cache: args.cache,
        quiet: args.common.quiet,
        config: args.config,
    };
    let summary = fit(&request)?;
    let mut peak = qrm::memory::peak_rss_mib().map_or_else(String::new, |mib| {
        format!("; peak resident set {mib:.0} MiB")
    });
    if let Some(mib) = qrm::memory::peak_device_mib() {
        peak.push_str(&format!(", peak GPU memory in use {mib:.0} MiB"));
    }
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

//! Scores generations with a reward model: `reward`, `response_tokens`, `token_rewards` and, with
//! `--goal`, `q_values` (cosine of each response token's hidden state with the goal state),
//! keeping every input column and the input order.
//!
//! `qrm-import gsm8k.jsonl.gz | qrm-score - --rm rm/ --goal goal.safetensors | qrm-auroc`
//!
//! Every row gets `rm` (the model's folder or file name, or `--rm-name`) and `rm_id`,
//! `{rm}@{12 hex}` from the sha256 of the weights, the tokenizer and the goal file, so scores of
//! two different models named alike are not pooled downstream.
//!
//! `--template`, `--eos` and `--max-len` default to what a qrm-train checkpoint's
//! `train_config.json` records (else chatml, append, 1024); a value given that differs from the
//! record's is used, with a warning.
//!
//! Long runs: `--resume` continues an interrupted `-o` file run from `OUTPUT.partial/`, whose
//! `manifest.json` records the sha256 of the input, weights, tokenizer and goal and every option
//! that changes a score; a mismatch is refused, naming what changed (delete `OUTPUT.partial/`
//! to start over). `--shard i/n` scores every n-th row on several machines and
//! `qrm-score merge part*.parquet -o all.parquet` joins the parts; `--shard env` takes i and
//! n from a Slurm array job or a Kubernetes Indexed Job (`--shard-count`), see
//! docs/sharded-scoring.md, and `make score-sharded SHARDS=n` runs n local shards and merges
//! them.
//!
//! Sample sets: rows whose encoded prompts are equal (N responses to one question) are scored
//! after that prompt's keys and values, computed once (`--shared-prompt on`, the default);
//! the scores equal those of the whole sequences. `--shared-prompt off` runs every row whole.
//!
//! A header-only input (columns, no rows) is an error, and so is a model directory that looks
//! like an unfinished `qrm-train` run (no `train_config.json`). Exit codes: 0 ok, 1 bad data or
//! model, 2 bad flags (`--device gpu0`, `--template chatm`, `--batch-tokens 0`, `--max-len`
//! beyond the context, `--resume` over another run's partial output).

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::{NonEmptyStringValueParser, RangedU64ValueParser};
use clap::{Parser, Subcommand};
use qrm::cli::{BatchArgs, OutputArgs};
use qrm::model::loading::{self, EncodingArgs, ModelArgs};
use qrm::pipeline::io::read_table_hashed;
use qrm::score::goal::load_goal_for;
use qrm::score::scoring::{self, Provenance, RunOptions, ScoreOptions, Scorer, ShardSpec};

#[derive(Parser, Debug)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// Generations table (question, response, ...); `-` reads stdin.
    #[arg(default_value = "-")]
    input: PathBuf,

    #[command(flatten)]
    model: Option<ModelArgs>,

    #[command(flatten)]
    encoding: EncodingArgs,

    /// Goal state from qrm-embed; without it q_values is null.
    #[arg(long, value_name = "PATH")]
    goal: Option<PathBuf>,

    /// The `rm` label of the scores (default: the model's folder or file name). `rm_id` adds a
    /// hash of the weights, tokenizer and goal to it.
    #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
    rm_name: Option<String>,

    #[command(flatten)]
    batch: BatchArgs,

    /// Rows scored and written at a time (one Parquet row group each).
    #[arg(long, default_value_t = 4096, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    chunk_rows: usize,

    /// Continue an interrupted `-o` run from OUTPUT.partial/; refused when the input, model,
    /// tokenizer, goal or a scoring option differs from that run's (delete OUTPUT.partial/ to
    /// start over).
    #[arg(long)]
    resume: bool,

    /// Stop after N chunks, leaving OUTPUT.partial/ (for tests of --resume).
    #[arg(long, hide = true, value_name = "N")]
    stop_after_chunks: Option<usize>,

    /// Score only the rows whose index is i mod n, adding a row_index column. `env` reads i
    /// and n from an array job: SLURM_ARRAY_TASK_ID (less SLURM_ARRAY_TASK_MIN) of
    /// SLURM_ARRAY_TASK_COUNT, or Kubernetes' JOB_COMPLETION_INDEX of --shard-count.
    #[arg(long, value_name = "i/n|env")]
    shard: Option<ShardSpec>,

    /// With `--shard env`: the number of shards (a Kubernetes Indexed Job's completions; for
    /// Slurm it overrides SLURM_ARRAY_TASK_COUNT).
    #[arg(long, value_name = "N", requires = "shard",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    shard_count: Option<usize>,

    /// Rows of one prompt (same question and template) are scored after the prompt's cached
    /// keys and values, computed once: `off` runs every row whole (same scores, for
    /// comparison).
    #[arg(long, value_enum, default_value_t = Switch::On, value_name = "on|off")]
    shared_prompt: Switch,

    /// Also write `tokens`, the decoded scored tokens (for qrm-plot tokens), and `token_offsets`,
    /// where each starts in the response (for qrm-filter --localise).
    #[arg(long)]
    emit_tokens: bool,

    #[command(flatten)]
    output: OutputArgs,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Joins `--shard` outputs back into input order.
    Merge {
        /// The shard outputs, in any order.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
        #[command(flatten)]
        output: OutputArgs,
    },
}

fn main() -> std::process::ExitCode {
    // Batches side by side on the CPU, each matmul on its lane's thread (before any thread starts).
    qrm::model::batching::init_cpu_lanes();
    qrm::cli::main(run)
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Merge { parts, output, .. }) = &args.command {
        let mut merged = scoring::merge_shards(parts)?;
        tracing::info!("merged {} parts: {} rows", parts.len(), merged.height());
        return Ok(output.output().write(&mut merged)?);
    }
    let model_args = args.model.context("--rm is required")?;
    let loaded = loading::load(&model_args)?;
    let encoder = loaded.encoder(&args.encoding)?;
    let (goal, goal_sha256) = match &args.goal {
        Some(path) => {
            let (goal, sha256) = load_goal_for(path, &loaded, &encoder)?;
            (Some(goal), Some(sha256))
        }
        None => (None, None),
    };
    let (frame, input_sha256) = read_table_hashed(&args.input)?;
    let rm_name = args.rm_name.clone().unwrap_or_else(|| loaded.name.clone());
    let options = ScoreOptions {
        rm_id: loaded.identity.rm_id(&rm_name, goal_sha256.as_deref()),
        rm_name,
        batch_tokens: args.batch.batch_tokens,
        goal,
        emit_tokens: args.emit_tokens,
        shared_prompt: args.shared_prompt == Switch::On,
    };
    let run = RunOptions {
        chunk_rows: args.chunk_rows,
        resume: args.resume,
        shard: args
            .shard
            .map(|spec| spec.resolve(args.shard_count))
            .transpose()?,
        stop_after_chunks: args.stop_after_chunks,
        provenance: Provenance {
            model: loaded.identity.clone(),
            goal_sha256,
            device: loaded.device.to_string(),
            input_sha256: Some(input_sha256),
        },
    };
    let progress = qrm::cli::progress_bar(frame.height() as u64, "scoring", args.common.quiet);
    let started = std::time::Instant::now();
    let output = args.output.output();
    let scorer = Scorer {
        model: loaded.model.as_ref(),
        encoder: &encoder,
        options,
    };
    let summary = scorer.score_table(frame, &args.input, &output, &run, &progress)?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "scored {} rows ({} resumed, {} total) with {}: {} tokens in {seconds:.1}s \
         ({:.0} tokens/s); template {}, eos {}, max-len {}: {}",
        summary.scored,
        summary.resumed,
        summary.rows,
        scorer.options.rm_id,
        summary.tokens,
        summary.tokens as f64 / seconds.max(1e-9),
        encoder.template.name(),
        encoder.eos.name(),
        encoder.max_len.unwrap_or_default(),
        summary.truncation,
    );
    if loaded.untrained_head {
        tracing::warn!("the value head is untrained: `reward` and `token_rewards` mean nothing");
    }
    Ok(())
}

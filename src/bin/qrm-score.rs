//! Scores generations with a reward model: `reward`, `response_tokens`, `token_rewards` and, with
//! `--goal`, `q_values` (cosine of each response token's hidden state with the goal state),
//! keeping every input column and the input order.
//!
//! `qrm-import gsm8k.jsonl.gz | qrm-score - --rm rm/ --goal goal.safetensors | qrm-auroc`
//!
//! Long runs: `--resume` continues an interrupted `-o` file run; `--shard i/n` scores every n-th
//! row on several machines and `qrm-score merge part*.parquet -o all.parquet` joins the parts.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use qrm::cli::OutputArgs;
use qrm::model::goal::GoalState;
use qrm::model::inference::{self, EncodingArgs, ModelArgs};
use qrm::model::scoring::{self, RunOptions, ScoreOptions, Shard};
use qrm::pipeline::io::read_table;

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

    /// Padded tokens per forward pass (rows × longest row). The default suits a CPU: on 2 cores,
    /// 96 synth generations scored in 44–46 s at 2,048 or 512 and 64–71 s at 8,192 (bigger
    /// batches lose more to padding and cache misses than they gain); raise it on a GPU.
    #[arg(long, default_value_t = 2048, value_name = "N")]
    batch_tokens: usize,

    /// Rows scored and written at a time (one Parquet row group each).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    chunk_rows: usize,

    /// Continue an interrupted run from OUTPUT.partial/.
    #[arg(long)]
    resume: bool,

    /// Score only the rows whose index is i mod n, adding a row_index column.
    #[arg(long, value_name = "i/n")]
    shard: Option<Shard>,

    /// Also write `tokens`, the decoded scored tokens (for qrm-plot tokens), and `token_offsets`,
    /// where each starts in the response (for qrm-filter --localise).
    #[arg(long)]
    emit_tokens: bool,

    #[command(flatten)]
    output: OutputArgs,

    /// Only warnings and errors on stderr, no progress bar.
    #[arg(short, long)]
    quiet: bool,
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
        #[arg(short, long)]
        quiet: bool,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let quiet = match &args.command {
        Some(Command::Merge { quiet, .. }) => *quiet,
        None => args.quiet,
    };
    qrm::cli::init_logging(quiet);
    qrm::cli::finish(run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Merge { parts, output, .. }) = &args.command {
        let mut merged = scoring::merge_shards(parts)?;
        tracing::info!("merged {} parts: {} rows", parts.len(), merged.height());
        return Ok(output.output().write(&mut merged)?);
    }
    let model_args = args.model.context("--rm is required")?;
    let loaded = inference::load(&model_args)?;
    let encoder = loaded.encoder(&args.encoding)?;
    let goal = match &args.goal {
        Some(path) => {
            let goal = GoalState::load(path)?;
            inference::check_goal_matches(&goal, path, &encoder)?;
            let device = loaded.model.device();
            Some(candle_core::Tensor::new(goal.vector.as_slice(), device)?)
        }
        None => None,
    };
    let frame = read_table(&args.input)?;
    let options = ScoreOptions {
        rm_name: loaded.name.clone(),
        batch_tokens: args.batch_tokens,
        goal,
        emit_tokens: args.emit_tokens,
    };
    let run = RunOptions {
        chunk_rows: args.chunk_rows,
        resume: args.resume,
        shard: args.shard,
        stop_after_chunks: None,
    };
    let progress = qrm::cli::progress_bar(frame.height() as u64, "scoring", args.quiet);
    let started = std::time::Instant::now();
    let output = args.output.output();
    let summary = scoring::score_table(
        loaded.model.as_ref(),
        &encoder,
        frame,
        &args.input,
        &output,
        &options,
        &run,
        &progress,
    )?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        "scored {} rows ({} resumed, {} total) with {}: {} tokens in {seconds:.1}s \
         ({:.0} tokens/s); template {}, eos {}, max-len {}: {}",
        summary.scored,
        summary.resumed,
        summary.rows,
        loaded.name,
        summary.tokens,
        summary.tokens as f64 / seconds.max(1e-9),
        encoder.template.name(),
        encoder.eos.name(),
        args.encoding.max_len,
        summary.truncation,
    );
    if loaded.untrained_head {
        tracing::warn!("the value head is untrained: `reward` and `token_rewards` mean nothing");
    }
    Ok(())
}

//! Computes the goal state (paper Eq. 7): the mean last-layer hidden state at the final scored
//! token of the chosen responses of a pairs table, saved with its provenance as safetensors.
//!
//! `qrm-embed pairs.parquet --rm rm/ -o goal.safetensors`
//!
//! `--token random` averages a random response token instead (App. C ablation); `--limit N`
//! uses a seeded random sample of N pairs (App. C sample-size ablation).
//!
//! Pairs of one question share its prompt: the prompt's keys and values are computed once and
//! its chosen responses attend to them (as `qrm-score --shared-prompt on`; the goal is that of
//! the whole sequences to float rounding).
//!
//! `--template`, `--eos` and `--max-len` default to what a qrm-train checkpoint's
//! `train_config.json` records (else chatml, append, 1024), as in qrm-score; the values used are
//! stored in the goal's provenance.
//!
//! The provenance records the model's `rm_sha256` (its weights) and `tokenizer_sha256`;
//! `qrm-score --goal` refuses a goal whose `rm_sha256` is not the scoring model's.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qrm::model::loading::{self, EncodingArgs, ModelArgs};
use qrm::pipeline::io::{display_path, read_table};
use qrm::pipeline::schema::{Columns, CHOSEN, QUESTION};
use qrm::score::goal::{embed_goal, EmbedOptions, GoalProvenance, GoalState, GoalToken};
use rand::seq::index::sample;
use rand::SeedableRng;

/// Computes the goal state of a reward model from the chosen responses of a pairs table.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Pairs table (question, chosen, ...); `-` reads stdin.
    #[arg(default_value = "-")]
    input: PathBuf,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    encoding: EncodingArgs,

    /// Which token of each chosen response contributes: the final scored one, or a random one.
    #[arg(long, value_enum, default_value_t = GoalToken::Last)]
    token: GoalToken,

    /// Use a random sample (seeded by --seed) of N pairs instead of all.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,

    #[command(flatten)]
    batch: qrm::cli::BatchArgs,

    /// The goal-state file to write (safetensors).
    #[arg(short, long, value_name = "PATH")]
    output: PathBuf,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,
}

fn main() -> std::process::ExitCode {
    // Batches side by side on the CPU, each matmul on its lane's thread (before any thread starts).
    qrm::model::batching::init_cpu_lanes();
    qrm::cli::main(run)
}

fn run(args: Args) -> anyhow::Result<()> {
    let loaded = loading::load(&args.model)?;
    let encoder = loaded.encoder(&args.encoding)?;
    let frame = read_table(&args.input)?;
    let shown = display_path(&args.input);
    let columns = Columns::new(&frame, &shown);
    let questions = columns.str_not_null(QUESTION)?;
    let chosen = columns.str_not_null(CHOSEN)?;
    let mut rows: Vec<usize> = (0..frame.height()).collect();
    if let Some(limit) = args.limit.filter(|&limit| limit < frame.height()) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.model.seed);
        rows = sample(&mut rng, frame.height(), limit).into_vec();
        rows.sort_unstable();
    }
    let questions: Vec<&str> = rows
        .iter()
        .map(|&row| questions.get(row).unwrap_or_default())
        .collect();
    let chosen: Vec<&str> = rows
        .iter()
        .map(|&row| chosen.get(row).unwrap_or_default())
        .collect();

    let progress = qrm::cli::progress_bar(rows.len() as u64, "embedding", args.common.quiet);
    let options = EmbedOptions {
        token: args.token,
        seed: args.model.seed,
        batch_tokens: args.batch.batch_tokens,
        shared_prompt: true,
    };
    let (accumulator, truncation) = embed_goal(
        loaded.model.as_ref(),
        &encoder,
        &questions,
        &chosen,
        &options,
        |done| progress.inc(done as u64),
    )?;
    progress.finish_and_clear();
    let vector = accumulator
        .mean()
        .context("no chosen response could be embedded (all skipped by truncation?)")?;
    let provenance = GoalProvenance {
        rm: Some(loaded.name.clone()),
        count: Some(accumulator.count()),
        template: Some(encoder.template.name()),
        token: Some(args.token.name().to_owned()),
        eos: Some(encoder.eos.name().to_owned()),
        max_len: encoder.max_len,
        rm_sha256: Some(loaded.identity.weights_sha256.clone()),
        tokenizer_sha256: Some(loaded.identity.tokenizer_sha256.clone()),
        seed: Some(args.model.seed),
        source: Some(shown.display().to_string()),
    };
    GoalState { vector, provenance }.save(&args.output)?;
    tracing::info!(
        "goal state of {} chosen responses → {}; {truncation}",
        accumulator.count(),
        args.output.display(),
    );
    if loaded.untrained_head {
        tracing::warn!("the value head is untrained (it does not enter the goal state)");
    }
    Ok(())
}

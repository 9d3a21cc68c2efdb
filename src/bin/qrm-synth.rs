//! Writes the embedded default task: procedurally generated multi-step arithmetic word problems
//! with several step-by-step solutions each, a share of which go wrong at a known step
//! (`first_error_char`). Deterministic by `--seed`; `--questions N` is a prefix of any larger N.
//!
//! Example: `qrm-synth --questions 2000 --split id -o train.parquet && qrm-pairs train.parquet`

use clap::Parser;
use qrm::pipeline::synth::{generate_frame, Mistakes, Phrasing, Split, SynthConfig};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Generate synthetic arithmetic word problems with labelled solutions"
)]
struct Args {
    /// Number of questions (`--split both`: the first half rounded up in-distribution).
    #[arg(long, default_value_t = 1000)]
    questions: usize,

    /// Samples (responses) per question.
    #[arg(long, default_value_t = 8)]
    samples: usize,

    /// Mean share of wrong samples, in [0, 1]; the per-question share varies around it.
    #[arg(long, default_value_t = 0.5, value_parser = qrm::cli::parse_fraction)]
    error_rate: f64,

    /// `id`: 2–3 steps, small numbers (benchmark `synth-id`); `ood`: 4–6 steps, larger numbers,
    /// new phrasings (`synth-ood`); `both`.
    #[arg(long, value_enum, default_value_t = Split::Both)]
    split: Split,

    /// Seed of every random stream.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// `subtle`: realistic slips (off by a little, wrong operand, misread number, skipped or
    /// repeated step); `obvious`: arithmetic results far from the truth, which a small LM notices;
    /// `answer`: right work, but the last line states another answer; `copy`: a number copied
    /// wrongly from the question; `carry`: a result carried wrongly into a later computation;
    /// `span`: `copy` and `carry` at equal rates (found by comparing spans, mid-solution).
    #[arg(long, value_enum, default_value_t = Mistakes::Subtle)]
    mistakes: Mistakes,

    /// `sample`: every sample phrases its lines its own way; `question`: a question's samples
    /// share one phrasing, so right and wrong samples differ only from the mistake on (minimal
    /// pairs for training); `restate`: as `question`, and each line first quotes the question's
    /// sentence for its step with the numbers the solution uses ("He gets another 6 marbles, so
    /// he has 14 + 6 = 20 marbles."), where a miscopied number stands in the question's words.
    #[arg(long, value_enum, default_value_t = Phrasing::Sample)]
    phrasing: Phrasing,

    #[command(flatten)]
    output: qrm::cli::OutputArgs,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,
}

fn main() -> std::process::ExitCode {
    qrm::cli::main(run)
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = SynthConfig {
        questions: args.questions,
        samples: args.samples,
        error_rate: args.error_rate,
        split: args.split,
        seed: args.seed,
        mistakes: args.mistakes,
        phrasing: args.phrasing,
    };
    let started = std::time::Instant::now();
    let mut frame = generate_frame(&config)?;
    let wrong = frame.height()
        - frame
            .column(qrm::pipeline::schema::IS_CORRECT)?
            .bool()?
            .sum()
            .unwrap_or(0) as usize;
    tracing::info!(
        "generated {} samples of {} questions ({wrong} wrong) in {:.2?}",
        frame.height(),
        config.questions,
        started.elapsed()
    );
    args.output.output().write(&mut frame)?;
    Ok(())
}

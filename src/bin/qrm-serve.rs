//! Serves a reward model over HTTP for RL trainers: OpenRLHF's remote reward-model protocol
//! (`POST /get_reward`), per-token rewards and Q-values (`POST /score`), `GET /health` and
//! Prometheus `GET /metrics`.
//!
//! `qrm-serve --rm rm/ --goal goal.safetensors --listen 127.0.0.1:5000 &`, then
//! `openrlhf.cli.train_ppo_ray ... --remote_rm_url http://127.0.0.1:5000/get_reward`, or
//! `curl -d '{"items": [{"prompt": "2+2?", "response": "4"}], "per_token": true}' localhost:5000/score`.
//!
//! The model, template, EOS policy and `--max-len` are read as qrm-score reads them (the
//! training record first), so a reply equals offline qrm-score on the same texts. Requests that
//! arrive within `--batch-window-ms` of each other are scored together, up to
//! `--round-tokens`; at most `--max-queue` items wait (then 503 with `Retry-After`); a request
//! not answered within `--request-timeout` gets 504. Every bad request gets a 4xx JSON error
//! that says what is wrong. SIGTERM or Ctrl-C stops accepting connections, answers the requests
//! in flight and exits 0. docs/serving.md has the protocol, the prompt/response split of
//! OpenRLHF's queries and the measured throughput.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::{NonEmptyStringValueParser, RangedU64ValueParser};
use clap::Parser;
use qrm::cli::BatchArgs;
use qrm::model::loading::{EncodingArgs, ModelArgs};
use qrm::serve::{Batching, Limits, ServeConfig};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    encoding: EncodingArgs,

    /// Goal state from qrm-embed: replies carry Q-values (`q_last`, `q_min`, and per token at
    /// `/score`).
    #[arg(long, value_name = "PATH")]
    goal: Option<std::path::PathBuf>,

    /// The `rm` part of the `rm_id` replies name (default: the model's folder or file name).
    #[arg(long, value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
    rm_name: Option<String>,

    /// Address to listen on; port 0 picks a free one (printed on stderr).
    #[arg(long, default_value = "127.0.0.1:5000", value_name = "HOST:PORT")]
    listen: SocketAddr,

    #[command(flatten)]
    batch: BatchArgs,

    /// After a request arrives, wait this long for others to score with it.
    #[arg(long, default_value_t = 5, value_name = "MS")]
    batch_window_ms: u64,

    /// A round of queued requests stops taking more once it holds this many tokens.
    #[arg(long, default_value_t = 16384, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    round_tokens: usize,

    /// Items (texts) that may wait to be scored; beyond, requests get 503 with Retry-After.
    #[arg(long, default_value_t = 4096, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    max_queue: usize,

    /// Seconds a request may wait and be scored before its reply is 504 (under OpenRLHF's
    /// 180 s client timeout, so the client gets an answer it can retry).
    #[arg(long, default_value_t = 170.0, value_name = "S", value_parser = seconds)]
    request_timeout: f64,

    /// Seconds a client may take to send its request body (then 408).
    #[arg(long, default_value_t = 30.0, value_name = "S", value_parser = seconds)]
    read_timeout: f64,

    /// Largest request body accepted (then 413).
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    max_body_bytes: usize,

    /// Threads of the HTTP side (scoring has its own).
    #[arg(long, default_value_t = 2, value_name = "N",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    http_threads: usize,

    #[command(flatten)]
    common: qrm::cli::CommonArgs,
}

/// Clap value parser for a positive number of seconds.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value.is_finite() => Ok(value),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

fn main() -> std::process::ExitCode {
    qrm::cli::main(run)
}

fn run(args: Args) -> anyhow::Result<()> {
    qrm::serve::run(ServeConfig {
        model: args.model,
        encoding: args.encoding,
        goal: args.goal,
        rm_name: args.rm_name,
        listen: args.listen,
        batch_tokens: args.batch.batch_tokens,
        batching: Batching {
            window: Duration::from_millis(args.batch_window_ms),
            round_tokens: args.round_tokens,
        },
        max_queue: args.max_queue,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            read_timeout: Duration::from_secs_f64(args.read_timeout),
            request_timeout: Duration::from_secs_f64(args.request_timeout),
        },
        http_threads: args.http_threads,
    })?;
    Ok(())
}

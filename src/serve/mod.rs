//! qrm-serve: a reward-model server for RL trainers that call a reward model over HTTP
//! (OpenRLHF's `--remote_rm_url` and trainers built like it).
//!
//! [`run`] loads the model once (the loader, template and EOS rules of qrm-score, read from the
//! model's training record), binds the address, serves HTTP on a small tokio runtime in its own
//! thread ([`http`]), and scores on the calling thread ([`queue::run_worker`]): requests that
//! arrive together are scored together under a token budget, each prompt's keys and values
//! once, so 128 clients sending one item each cost about what one offline run of their rows
//! costs. The scores equal offline qrm-score's on the same rows. SIGTERM or Ctrl-C stops
//! accepting connections, finishes the requests in flight and returns.
//!
//! [`protocol`] is the wire format; [`metrics`] the Prometheus counters.

pub mod http;
pub mod metrics;
pub mod protocol;
pub mod queue;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::loading::{self, EncodingArgs, ModelArgs};
use crate::score::goal::load_goal_for;
use crate::score::rows::ScoreOptions;

pub use http::Limits;
pub use queue::Batching;

/// Everything `qrm-serve` is started with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: ModelArgs,
    pub encoding: EncodingArgs,
    /// A goal state from qrm-embed: Q-values in replies.
    pub goal: Option<PathBuf>,
    /// The `rm` part of `rm_id` (default: the model's name).
    pub rm_name: Option<String>,
    /// Where to listen; port 0 picks a free port (the address is printed on stderr).
    pub listen: SocketAddr,
    /// Padded tokens per forward pass (`--batch-tokens`).
    pub batch_tokens: usize,
    pub batching: Batching,
    /// Items that may wait for the worker before requests get 503.
    pub max_queue: usize,
    pub limits: Limits,
    /// Threads of the HTTP runtime.
    pub http_threads: usize,
}

/// Loads the model, serves until SIGTERM or Ctrl-C, and returns once the requests in flight
/// have been answered.
pub fn run(config: ServeConfig) -> Result<()> {
    let loaded = loading::load(&config.model)?;
    let encoder = loaded.encoder(&config.encoding)?;
    let (goal, goal_sha256) = match &config.goal {
        Some(path) => {
            let (goal, sha256) = load_goal_for(path, &loaded, &encoder)?;
            (Some(goal), Some(sha256))
        }
        None => (None, None),
    };
    let rm_name = config
        .rm_name
        .clone()
        .unwrap_or_else(|| loaded.name.clone());
    let model_id = loaded.identity.rm_id(&rm_name, goal_sha256.as_deref());
    if loaded.untrained_head {
        tracing::warn!("the value head is untrained: `reward` and `token_rewards` mean nothing");
    }
    let has_goal = goal.is_some();
    let options = ScoreOptions {
        rm_id: model_id.clone(),
        rm_name,
        batch_tokens: config.batch_tokens,
        goal,
        emit_tokens: false,
        shared_prompt: true,
    };
    let listener = std::net::TcpListener::bind(config.listen)
        .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
        .map_err(|e| Error::Server(format!("cannot listen on {}: {e}", config.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Server(format!("the listening address: {e}")))?;
    let metrics = Arc::new(metrics::Metrics::default());
    let (queue, receiver) = queue::Queue::new(config.max_queue, metrics.clone());
    let state = Arc::new(http::AppState {
        splitter: protocol::Splitter::new(&encoder),
        encoder: encoder.clone(),
        queue,
        metrics: metrics.clone(),
        model_id: model_id.clone(),
        has_goal,
        limits: config.limits,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.http_threads.max(1))
        .thread_name("qrm-serve-http")
        .enable_all()
        .build()
        .map_err(|e| Error::Server(format!("the HTTP runtime: {e}")))?;
    // The HTTP side owns the queue's only sender (in `state`): once it has stopped and its
    // connections are closed, the worker's receiver disconnects and the worker returns.
    let router = http::router(state);
    let grace = config.limits.read_timeout + config.limits.request_timeout;
    let http_metrics = metrics.clone();
    let http = std::thread::Builder::new()
        .name("qrm-serve".into())
        .spawn(move || {
            runtime.block_on(async move {
                let metrics = http_metrics;
                let listener = tokio::net::TcpListener::from_std(listener)?;
                http::serve(listener, router, metrics, shutdown_signal(), grace).await
            })
        })
        .map_err(|e| Error::Server(format!("the HTTP thread: {e}")))?;
    // The one line a client or script waits for, printed whatever the log level.
    eprintln!("qrm-serve: {model_id} listening on http://{address}");
    queue::run_worker(
        loaded.model.as_ref(),
        &encoder,
        &options,
        &receiver,
        config.batching,
        &metrics,
    );
    let served = http
        .join()
        .map_err(|_| Error::Server("the HTTP thread panicked".into()))?;
    served.map_err(|e| Error::Server(format!("serving on {address}: {e}")))?;
    tracing::info!("stopped: every request in flight was answered");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM (Kubernetes', Slurm's and systemd's stop signal).
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot wait for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!("cannot wait for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("stopping: no new connections; finishing the requests in flight");
}

//! qrm-serve's HTTP side (axum on tokio): the routes, reading and checking request bodies,
//! queueing their rows for the scoring worker, and the replies and JSON errors.
//!
//! | route | reply |
//! |---|---|
//! | `POST /get_reward` | OpenRLHF's remote-RM reply ([`RewardReply`]) |
//! | `POST /score` | per-item rewards, and per-token rewards, Q-values and tokens when asked ([`ScoreReply`]) |
//! | `GET /health` | `{"status": "ok", "model": rm_id, "queue_items": n}` |
//! | `GET /metrics` | Prometheus text ([`crate::serve::metrics`]) |
//!
//! Every refusal is a JSON `{"error": {"message", "type", "code"}}` that says what is wrong:
//! 400 malformed JSON or an unreadable body, 404/405 an unknown route or method, 408 a body
//! that did not arrive within `--read-timeout`, 413 a body over `--max-body-bytes` or a request
//! with more items than `--max-queue`, 422 a well-formed request that cannot be scored (a missing
//! field, a wrong type, `prompts` of another length than `query`, a query whose response cannot
//! be found, an item over `--max-len` under `--truncate skip` at `/get_reward`), 503 with
//! `Retry-After` when the queue is full or the server is stopping, 504 when the rows were not
//! scored within `--request-timeout`. None of them stops the server or holds up other clients.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::model::template::{Encoded, Encoder, Truncated};
use crate::score::rows::scored_tokens;
use crate::serve::metrics::Metrics;
use crate::serve::protocol::{
    error_body, truncated_name, RewardReply, RewardRequest, ScoreDatum, ScoreReply, ScoreRequest,
    Splitter, Usage,
};
use crate::serve::queue::{Job, JobError, Queue, Refused, Scored};

/// Bounds on what one request may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a client may take to send its body.
    pub read_timeout: Duration,
    /// How long a request's rows may wait and be scored before the reply is 504.
    pub request_timeout: Duration,
}

/// What every handler shares.
pub struct AppState {
    pub encoder: Encoder,
    pub splitter: Splitter,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    /// The `rm_id` of the scores (as qrm-score's column).
    pub model_id: String,
    pub has_goal: bool,
    pub limits: Limits,
}

/// A refusal: the status and the JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST
            | StatusCode::UNPROCESSABLE_ENTITY
            | StatusCode::PAYLOAD_TOO_LARGE => "invalid_request_error",
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => "not_found_error",
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "timeout_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            _ => "server_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = error_body(&self.message, self.kind(), self.status.as_u16());
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/get_reward", post(get_reward))
        .route("/score", post(score))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests in flight finish (for at most `grace`) and returns.
///
/// hyper's graceful shutdown also waits for connections that were accepted but have sent no
/// request yet, until its 30 s header timeout: once no request is in flight
/// ([`Metrics::in_flight`]) and a short flush time has passed, those are closed instead.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (fired, on_fired) = oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = fired.send(());
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(signal);
    let drained = async move {
        if on_fired.await.is_err() {
            std::future::pending::<()>().await;
        }
        let started = Instant::now();
        while metrics.in_flight.load(Ordering::Acquire) > 0 && started.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The last replies are written after their handlers return.
        tokio::time::sleep(FLUSH_TIME).await;
    };
    tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served,
        () = drained => {
            tracing::info!("every request in flight was answered; closing idle connections");
            Ok(())
        }
    }
}

/// How long a stopping server leaves its last replies to be written.
const FLUSH_TIME: Duration = Duration::from_secs(1);

/// Counts a request in flight while alive (also when the client goes and the handler is
/// dropped).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AppState {
    /// Runs a handler, turns its refusal into a JSON error and counts the reply.
    async fn answer<T: IntoResponse>(
        &self,
        endpoint: &'static str,
        handler: impl Future<Output = Result<T, ApiError>>,
    ) -> Response {
        let started = Instant::now();
        let _in_flight = InFlight::new(&self.metrics);
        let response = match handler.await {
            Ok(reply) => reply.into_response(),
            Err(error) => {
                if error.status.is_server_error() {
                    tracing::warn!("{endpoint}: {} {}", error.status, error.message);
                }
                error.into_response()
            }
        };
        self.metrics
            .request(endpoint, response.status().as_u16(), started.elapsed());
        response
    }

    /// The request body parsed as `T`, within the size and time limits.
    async fn read_json<T: DeserializeOwned>(&self, request: Request) -> Result<T, ApiError> {
        let limit = self.limits.max_body_bytes;
        let too_large = |size: String| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is {size} bytes, over --max-body-bytes {limit}"),
            )
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
        if let Some(length) = declared.filter(|&length| length > limit) {
            return Err(too_large(length.to_string()));
        }
        let reading = axum::body::to_bytes(request.into_body(), limit);
        let bytes = match tokio::time::timeout(self.limits.read_timeout, reading).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within --read-timeout {} s",
                        self.limits.read_timeout.as_secs_f64()
                    ),
                ))
            }
            Ok(Err(error)) if is_length_limit(&error) => {
                return Err(too_large(format!("more than {limit}")))
            }
            Ok(Err(error)) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {error}"),
                ))
            }
            Ok(Ok(bytes)) => bytes,
        };
        serde_json::from_slice(&bytes).map_err(|error| match error.classify() {
            serde_json::error::Category::Data => {
                ApiError::unprocessable(format!("invalid request: {error}"))
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {error}")),
        })
    }

    /// Queues rows for the worker and waits for their scores.
    async fn score_rows(&self, encoded: Vec<Encoded>) -> Result<Scored, ApiError> {
        if encoded.is_empty() {
            return Ok(Scored {
                encoded,
                scores: Vec::new(),
            });
        }
        let timeout = self.limits.request_timeout;
        let (reply, receiver) = oneshot::channel();
        let items = encoded.len();
        let job = Job {
            encoded,
            deadline: Instant::now() + timeout,
            reply,
        };
        self.queue.submit(job).map_err(|refused| match refused {
            Refused::Full => ApiError::unavailable(format!(
                "the queue is full (--max-queue {} items waiting); retry later",
                self.queue.max_items()
            )),
            Refused::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request holds {items} items, more than --max-queue {}; split it",
                    self.queue.max_items()
                ),
            ),
            Refused::Closed => ApiError::unavailable("the server is stopping"),
        })?;
        let timed_out = || {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "not scored within --request-timeout {} s",
                    timeout.as_secs_f64()
                ),
            )
        };
        match tokio::time::timeout(timeout, receiver).await {
            Err(_) => Err(timed_out()),
            Ok(Err(_)) => Err(ApiError::unavailable("the scoring worker stopped")),
            Ok(Ok(Err(JobError::Deadline))) => Err(timed_out()),
            Ok(Ok(Err(JobError::Failed(message)))) => {
                Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message))
            }
            Ok(Ok(Ok(scored))) => Ok(scored),
        }
    }

    fn encode(&self, encoded: crate::Result<Encoded>, item: &str) -> Result<Encoded, ApiError> {
        encoded.map_err(|error| ApiError::unprocessable(format!("{item}: {error}")))
    }
}

/// Whether reading a body failed on the size limit.
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// `q_last` and `q_min` of a row's Q-values.
fn q_summary(q_values: Option<&[f32]>) -> (Option<f32>, Option<f32>) {
    match q_values {
        Some(q) if !q.is_empty() => (
            q.last().copied(),
            Some(q.iter().copied().fold(f32::INFINITY, f32::min)),
        ),
        _ => (None, None),
    }
}

async fn get_reward(State(state): State<Arc<AppState>>, request: Request) -> Response {
    state
        .answer("get_reward", handle_get_reward(&state, request))
        .await
}

async fn handle_get_reward(
    state: &AppState,
    request: Request,
) -> Result<axum::Json<RewardReply>, ApiError> {
    let request: RewardRequest = state.read_json(request).await?;
    if let Some(prompts) = &request.prompts {
        if prompts.len() != request.query.len() {
            return Err(ApiError::unprocessable(format!(
                "`prompts` holds {} texts but `query` {}",
                prompts.len(),
                request.query.len()
            )));
        }
    }
    let mut encoded = Vec::with_capacity(request.query.len());
    for (index, query) in request.query.iter().enumerate() {
        let prompt = request.prompts.as_ref().map(|p| p[index].as_str());
        let item = format!("query[{index}]");
        let (prompt_text, response) = state
            .splitter
            .split(query, prompt)
            .map_err(|message| ApiError::unprocessable(format!("{item}: {message}")))?;
        let example = state.encode(
            state.encoder.encode_prompt_text(prompt_text, response),
            &item,
        )?;
        if example.truncated == Truncated::Skipped {
            return Err(ApiError::unprocessable(format!(
                "{item} is longer than --max-len {} tokens and --truncate skip is set",
                state.encoder.max_len.unwrap_or_default()
            )));
        }
        encoded.push(example);
    }
    let scored = state.score_rows(encoded).await?;
    let mut rewards = Vec::with_capacity(scored.scores.len());
    let (mut q_last, mut q_min) = (Vec::new(), Vec::new());
    for score in &scored.scores {
        rewards.push(score.reward.ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "a row was not scored")
        })?);
        if let (Some(last), Some(min)) = q_summary(score.q_values.as_deref()) {
            q_last.push(last);
            q_min.push(min);
        }
    }
    let mut extra_logs = BTreeMap::new();
    if state.has_goal {
        extra_logs.insert("q_last", q_last);
        extra_logs.insert("q_min", q_min);
    }
    Ok(axum::Json(RewardReply {
        scores: rewards.clone(),
        rewards,
        extra_logs,
    }))
}

async fn score(State(state): State<Arc<AppState>>, request: Request) -> Response {
    state.answer("score", handle_score(&state, request)).await
}

async fn handle_score(
    state: &AppState,
    request: Request,
) -> Result<axum::Json<ScoreReply>, ApiError> {
    let request: ScoreRequest = state.read_json(request).await?;
    let encoded = request
        .items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            state.encode(
                state.encoder.encode(&item.prompt, &item.response),
                &format!("items[{index}]"),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let scored = state.score_rows(encoded).await?;
    let mut data = Vec::with_capacity(scored.scores.len());
    let mut tokens = 0;
    for (index, (example, score)) in scored.encoded.iter().zip(scored.scores).enumerate() {
        tokens += example.input_ids.len();
        let (q_last, q_min) = q_summary(score.q_values.as_deref());
        let per_token = request.per_token && score.reward.is_some();
        let decoded = if per_token {
            Some(scored_tokens(&state.encoder, example).map_err(|error| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
            })?)
        } else {
            None
        };
        data.push(ScoreDatum {
            index,
            object: "reward",
            reward: score.reward,
            response_tokens: example.scored_len(),
            truncated: truncated_name(example.truncated),
            q_last,
            q_min,
            token_rewards: score.token_rewards.filter(|_| per_token),
            q_values: score.q_values.filter(|_| per_token),
            tokens: decoded,
        });
    }
    Ok(axum::Json(ScoreReply {
        object: "list",
        model: state.model_id.clone(),
        data,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "model": state.model_id,
        "queue_items": state.metrics.queued_items.load(Ordering::Relaxed),
    });
    state
        .answer("health", async { Ok::<_, ApiError>(axum::Json(body)) })
        .await
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render();
    let reply = ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text);
    state
        .answer("metrics", async { Ok::<_, ApiError>(reply) })
        .await
}

const ROUTES: &str = "POST /get_reward, POST /score, GET /health, GET /metrics";

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}; the routes are {ROUTES}",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed at {}; the routes are {ROUTES}",
            request.method(),
            request.uri().path()
        ),
    )
}

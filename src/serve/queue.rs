//! The bounded job queue between the HTTP handlers and the one scoring worker, and the worker's
//! dynamic batching.
//!
//! A handler encodes its request's items and submits them as one [`Job`]; the queue refuses a
//! job that would take it over `max_items` waiting items (the handler answers 503 with
//! `Retry-After`). The worker takes the first waiting job, then keeps taking jobs for up to
//! `window` (none when the queue is already deep: waiting jobs are taken at once) until a round
//! holds `round_tokens` tokens. Jobs whose client has gone or whose deadline has passed are
//! dropped unscored; the rest are scored together by [`score_encoded`] — grouped by prompt
//! (each prompt's keys and values once) and in length-bucketed batches of `--batch-tokens`
//! padded tokens — and each job gets its own rows back. The scores are those of offline
//! qrm-score on the same rows: batching does not change them (the batch-invariance tests).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::model::batching::TokenModel;
use crate::model::template::{Encoded, Encoder};
use crate::score::rows::{score_encoded, RowScore, ScoreOptions};
use crate::serve::metrics::Metrics;

/// A request's rows, scored together with other requests' rows.
#[derive(Debug)]
pub struct Job {
    pub encoded: Vec<Encoded>,
    /// When the reply no longer helps the client (the request's deadline).
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Scored, JobError>>,
}

/// Why a job got no scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Its deadline passed while it waited in the queue.
    Deadline,
    /// The model failed on the round the job was in (the message says how).
    Failed(String),
}

impl Job {
    /// Tokens of the job's sequences (no padding).
    pub fn tokens(&self) -> usize {
        self.encoded.iter().map(|e| e.input_ids.len()).sum()
    }
}

/// A job's rows and their scores, in the job's order.
#[derive(Debug)]
pub struct Scored {
    pub encoded: Vec<Encoded>,
    pub scores: Vec<RowScore>,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds too many items; retry later.
    Full,
    /// The job alone holds more items than the queue may.
    TooLarge,
    /// The worker has stopped (shutting down).
    Closed,
}

/// The handlers' end of the queue.
#[derive(Debug, Clone)]
pub struct Queue {
    sender: Sender<Job>,
    metrics: Arc<Metrics>,
    max_items: usize,
}

impl Queue {
    /// A queue of at most `max_items` waiting items and the worker's end of it.
    pub fn new(max_items: usize, metrics: Arc<Metrics>) -> (Self, Receiver<Job>) {
        let (sender, receiver) = mpsc::channel();
        let queue = Queue {
            sender,
            metrics,
            max_items,
        };
        (queue, receiver)
    }

    pub fn max_items(&self) -> usize {
        self.max_items
    }

    /// Queues a job unless that would take the queue over its bound.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        let items = job.encoded.len();
        if items > self.max_items {
            return Err(Refused::TooLarge);
        }
        let queued = &self.metrics.queued_items;
        queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting + items <= self.max_items).then_some(waiting + items)
            })
            .map_err(|_| Refused::Full)?;
        self.sender.send(job).map_err(|_| {
            queued.fetch_sub(items, Ordering::AcqRel);
            Refused::Closed
        })
    }
}

/// How the worker forms rounds.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// How long to wait for more jobs after the first of a round.
    pub window: Duration,
    /// A round stops taking jobs once it holds this many tokens.
    pub round_tokens: usize,
}

/// Scores jobs until every [`Queue`] is dropped, then returns.
pub fn run_worker(
    model: &dyn TokenModel,
    encoder: &Encoder,
    options: &ScoreOptions,
    receiver: &Receiver<Job>,
    batching: Batching,
    metrics: &Metrics,
) {
    while let Some(jobs) = next_round(receiver, batching) {
        let items: usize = jobs.iter().map(|job| job.encoded.len()).sum();
        metrics.queued_items.fetch_sub(items, Ordering::AcqRel);
        let now = Instant::now();
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.reply.is_closed() {
                metrics.dropped("cancelled");
            } else if job.deadline <= now {
                metrics.dropped("deadline");
                let _ = job.reply.send(Err(JobError::Deadline));
            } else {
                live.push(job);
            }
        }
        if live.is_empty() {
            continue;
        }
        score_round(model, encoder, options, live, metrics);
    }
}

/// The next round's jobs (at least one), or `None` once the queue is closed and empty.
fn next_round(receiver: &Receiver<Job>, batching: Batching) -> Option<Vec<Job>> {
    let first = receiver.recv().ok()?;
    let mut tokens = first.tokens();
    let mut jobs = vec![first];
    let until = Instant::now() + batching.window;
    while tokens < batching.round_tokens {
        let now = Instant::now();
        let next = if now >= until {
            receiver.try_recv().ok()
        } else {
            // A timeout ends the round; so does a closed queue (the next round sees it).
            receiver.recv_timeout(until - now).ok()
        };
        let Some(job) = next else { break };
        tokens += job.tokens();
        jobs.push(job);
    }
    Some(jobs)
}

/// Scores the jobs' rows together and sends each job its own.
fn score_round(
    model: &dyn TokenModel,
    encoder: &Encoder,
    options: &ScoreOptions,
    mut jobs: Vec<Job>,
    metrics: &Metrics,
) {
    let counts: Vec<usize> = jobs.iter().map(|job| job.encoded.len()).collect();
    let encoded: Vec<Encoded> = jobs
        .iter_mut()
        .flat_map(|job| std::mem::take(&mut job.encoded))
        .collect();
    let started = Instant::now();
    let result = score_encoded(model, encoder, &encoded, options, |_| {});
    let tokens = encoded.iter().map(|e| e.input_ids.len()).sum();
    metrics.round(encoded.len(), tokens, started.elapsed());
    match result {
        Ok(scores) => {
            let mut scores = scores.into_iter();
            let mut encoded = encoded.into_iter();
            for (job, count) in jobs.into_iter().zip(counts) {
                let scored = Scored {
                    encoded: encoded.by_ref().take(count).collect(),
                    scores: scores.by_ref().take(count).collect(),
                };
                // The client may have gone meanwhile; its reply is dropped.
                let _ = job.reply.send(Ok(scored));
            }
        }
        Err(error) => {
            tracing::error!("scoring failed: {error}");
            for job in jobs {
                let _ = job
                    .reply
                    .send(Err(JobError::Failed(format!("scoring failed: {error}"))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(items: usize) -> (Job, oneshot::Receiver<Result<Scored, JobError>>) {
        let (reply, receiver) = oneshot::channel();
        let encoded = vec![
            Encoded {
                input_ids: vec![1, 2, 3],
                ..Encoded::default()
            };
            items
        ];
        let job = Job {
            encoded,
            deadline: Instant::now() + Duration::from_secs(60),
            reply,
        };
        (job, receiver)
    }

    #[test]
    fn the_queue_refuses_jobs_over_its_bound_and_counts_what_waits() {
        let metrics = Arc::new(Metrics::default());
        let (queue, receiver) = Queue::new(5, metrics.clone());
        assert_eq!(queue.submit(job(3).0), Ok(()));
        // 3 waiting + 3 > 5: refused, nothing counted.
        assert_eq!(queue.submit(job(3).0), Err(Refused::Full));
        assert_eq!(queue.submit(job(6).0), Err(Refused::TooLarge));
        assert_eq!(queue.submit(job(2).0), Ok(()));
        assert_eq!(metrics.queued_items.load(Ordering::Relaxed), 5);
        drop(receiver);
        assert_eq!(queue.submit(job(0).0), Err(Refused::Closed));
        assert_eq!(metrics.queued_items.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_round_takes_waiting_jobs_up_to_its_token_budget() {
        let metrics = Arc::new(Metrics::default());
        let (queue, receiver) = Queue::new(100, metrics);
        for _ in 0..4 {
            queue.submit(job(2).0).unwrap(); // 2 rows × 3 tokens = 6 tokens a job
        }
        let batching = Batching {
            window: Duration::ZERO,
            round_tokens: 12,
        };
        // 6 + 6 reaches 12: two jobs a round.
        assert_eq!(next_round(&receiver, batching).unwrap().len(), 2);
        assert_eq!(next_round(&receiver, batching).unwrap().len(), 2);
        drop(queue);
        assert!(next_round(&receiver, batching).is_none());
    }

    #[test]
    fn the_worker_scores_jobs_as_offline_scoring_does_and_drops_dead_ones() {
        let model = crate::testing::tiny_llama();
        let encoder = crate::testing::tiny_encoder();
        let options = ScoreOptions {
            rm_name: "tiny".into(),
            rm_id: "tiny@0".into(),
            batch_tokens: 64,
            goal: None,
            emit_tokens: false,
            shared_prompt: true,
        };
        let rows = [("2+2?", "4"), ("2+2?", "5"), ("3+3?", "six")];
        let encoded: Vec<Encoded> = rows
            .iter()
            .map(|(q, r)| encoder.encode(q, r).unwrap())
            .collect();
        let offline = score_encoded(&model, &encoder, &encoded, &options, |_| {}).unwrap();

        let metrics = Arc::new(Metrics::default());
        let (queue, receiver) = Queue::new(100, metrics.clone());
        let mut replies = Vec::new();
        for example in &encoded {
            let (reply, receiver) = oneshot::channel();
            let job = Job {
                encoded: vec![example.clone()],
                deadline: Instant::now() + Duration::from_secs(60),
                reply,
            };
            queue.submit(job).unwrap();
            replies.push(receiver);
        }
        let (gone, gone_receiver) = job(1);
        queue.submit(gone).unwrap();
        drop(gone_receiver);
        let (mut late, late_receiver) = job(1);
        late.deadline = Instant::now();
        queue.submit(late).unwrap();
        drop(queue);
        let batching = Batching {
            window: Duration::from_millis(1),
            round_tokens: 1 << 20,
        };
        run_worker(&model, &encoder, &options, &receiver, batching, &metrics);
        for (reply, expected) in replies.into_iter().zip(&offline) {
            let scored = reply.blocking_recv().unwrap().unwrap();
            let got = &scored.scores[0];
            let (a, b) = (got.reward.unwrap(), expected.reward.unwrap());
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let late = late_receiver.blocking_recv().unwrap().unwrap_err();
        assert_eq!(late, JobError::Deadline);
        assert_eq!(metrics.queued_items.load(Ordering::Relaxed), 0);
        let text = metrics.render();
        assert!(text.contains("qrm_serve_dropped_jobs_total{reason=\"cancelled\"} 1"));
        assert!(text.contains("qrm_serve_dropped_jobs_total{reason=\"deadline\"} 1"));
        assert!(text.contains("qrm_serve_scored_rows_total 3"), "{text}");
    }
}

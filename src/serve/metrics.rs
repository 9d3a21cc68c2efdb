//! qrm-serve's counters, rendered as Prometheus text (`GET /metrics`, exposition format
//! 0.0.4): requests by endpoint and status, request latency and round sizes as histograms,
//! queue depth and requests in flight as gauges, rows, tokens and scoring time as counters,
//! and the tokens/s the model has scored at while busy.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the request-latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Upper bounds (rows) of the round-size histogram's buckets.
const ROUND_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A cumulative histogram with fixed bucket bounds (Prometheus' `le` buckets and `+Inf`).
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations ≤ each bound (not cumulative here; summed when rendered).
    counts: Vec<u64>,
    /// Observations above the last bound.
    over: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            over: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        self.sum += value;
        match self.bounds.iter().position(|&bound| value <= bound) {
            Some(bucket) => self.counts[bucket] += 1,
            None => self.over += 1,
        }
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.over
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let separator = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {}",
            self.count()
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

#[derive(Debug)]
struct Inner {
    /// (endpoint, HTTP status) → requests answered.
    requests: BTreeMap<(&'static str, u16), u64>,
    /// endpoint → latency histogram.
    latency: BTreeMap<&'static str, Histogram>,
    rounds: Histogram,
    rows: u64,
    tokens: u64,
    scoring: Duration,
    /// reason → jobs dropped by the worker before scoring (`deadline`, `cancelled`).
    dropped: BTreeMap<&'static str, u64>,
}

/// What the HTTP side and the scoring worker count; shared between them.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Items waiting in the queue (not yet taken by the worker).
    pub queued_items: AtomicUsize,
    /// Requests being handled (body read, queued, scored or replying).
    pub in_flight: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                rounds: Histogram::new(&ROUND_BUCKETS),
                rows: 0,
                tokens: 0,
                scoring: Duration::ZERO,
                dropped: BTreeMap::new(),
            }),
            queued_items: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic elsewhere while holding the lock leaves counters that are still counts.
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut inner)
    }

    /// One answered request.
    pub fn request(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        self.with(|inner| {
            *inner.requests.entry((endpoint, status)).or_default() += 1;
            inner
                .latency
                .entry(endpoint)
                .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
                .observe(elapsed.as_secs_f64());
        });
    }

    /// One scoring round of `rows` rows and `tokens` tokens.
    pub fn round(&self, rows: usize, tokens: usize, elapsed: Duration) {
        self.with(|inner| {
            inner.rounds.observe(rows as f64);
            inner.rows += rows as u64;
            inner.tokens += tokens as u64;
            inner.scoring += elapsed;
        });
    }

    /// A job the worker dropped unscored.
    pub fn dropped(&self, reason: &'static str) {
        self.with(|inner| *inner.dropped.entry(reason).or_default() += 1);
    }

    /// Requests answered with `status` at `endpoint` so far.
    pub fn requests(&self, endpoint: &'static str, status: u16) -> u64 {
        self.with(|inner| {
            inner
                .requests
                .get(&(endpoint, status))
                .copied()
                .unwrap_or(0)
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let queued = self.queued_items.load(Ordering::Relaxed);
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        self.with(|inner| {
            let mut out = String::new();
            let family = |out: &mut String, name: &str, kind: &str, help: &str| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
            };
            family(
                &mut out,
                "qrm_serve_requests_total",
                "counter",
                "Requests answered, by endpoint and HTTP status.",
            );
            for ((endpoint, status), count) in &inner.requests {
                let _ = writeln!(
                    out,
                    "qrm_serve_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
                );
            }
            family(
                &mut out,
                "qrm_serve_request_duration_seconds",
                "histogram",
                "Time from a request's arrival to its reply, by endpoint.",
            );
            for (endpoint, histogram) in &inner.latency {
                histogram.render(
                    &mut out,
                    "qrm_serve_request_duration_seconds",
                    &format!("endpoint=\"{endpoint}\""),
                );
            }
            family(
                &mut out,
                "qrm_serve_queue_items",
                "gauge",
                "Items waiting for the scoring worker.",
            );
            let _ = writeln!(out, "qrm_serve_queue_items {queued}");
            family(
                &mut out,
                "qrm_serve_in_flight_requests",
                "gauge",
                "Requests being handled.",
            );
            let _ = writeln!(out, "qrm_serve_in_flight_requests {in_flight}");
            family(
                &mut out,
                "qrm_serve_round_rows",
                "histogram",
                "Rows scored together in one round of queued requests.",
            );
            inner.rounds.render(&mut out, "qrm_serve_round_rows", "");
            family(
                &mut out,
                "qrm_serve_scored_rows_total",
                "counter",
                "Rows scored.",
            );
            let _ = writeln!(out, "qrm_serve_scored_rows_total {}", inner.rows);
            family(
                &mut out,
                "qrm_serve_scored_tokens_total",
                "counter",
                "Tokens run through the model (prompt and response, no padding).",
            );
            let _ = writeln!(out, "qrm_serve_scored_tokens_total {}", inner.tokens);
            family(
                &mut out,
                "qrm_serve_scoring_seconds_total",
                "counter",
                "Time the model spent scoring.",
            );
            let seconds = inner.scoring.as_secs_f64();
            let _ = writeln!(out, "qrm_serve_scoring_seconds_total {seconds}");
            family(
                &mut out,
                "qrm_serve_tokens_per_second",
                "gauge",
                "Scored tokens per second of scoring time, since the start.",
            );
            let rate = if seconds > 0.0 {
                inner.tokens as f64 / seconds
            } else {
                0.0
            };
            let _ = writeln!(out, "qrm_serve_tokens_per_second {rate}");
            family(
                &mut out,
                "qrm_serve_dropped_jobs_total",
                "counter",
                "Requests dropped before scoring: past their deadline or the client gone.",
            );
            for (reason, count) in &inner.dropped {
                let _ = writeln!(
                    out,
                    "qrm_serve_dropped_jobs_total{{reason=\"{reason}\"}} {count}"
                );
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_with_sum_and_count() {
        let metrics = Metrics::default();
        // Latencies 3 ms, 20 ms, 20 ms and 200 s answered 200, and 1 ms answered 503: the
        // bucket ≤0.005 holds 2 (3 ms, 1 ms), ≤0.025 holds 4 (cumulative), ≤120 still 4, +Inf
        // all 5; the sum is 0.003 + 0.02 + 0.02 + 200 + 0.001 = 200.044.
        for millis in [3, 20, 20, 200_000] {
            metrics.request("score", 200, Duration::from_millis(millis));
        }
        metrics.request("score", 503, Duration::from_millis(1));
        metrics.round(3, 120, Duration::from_millis(500));
        metrics.round(5, 80, Duration::from_millis(500));
        let text = metrics.render();
        for line in [
            "qrm_serve_requests_total{endpoint=\"score\",status=\"200\"} 4",
            "qrm_serve_requests_total{endpoint=\"score\",status=\"503\"} 1",
            "qrm_serve_request_duration_seconds_bucket{endpoint=\"score\",le=\"0.005\"} 2",
            "qrm_serve_request_duration_seconds_bucket{endpoint=\"score\",le=\"0.025\"} 4",
            "qrm_serve_request_duration_seconds_bucket{endpoint=\"score\",le=\"120\"} 4",
            "qrm_serve_request_duration_seconds_bucket{endpoint=\"score\",le=\"+Inf\"} 5",
            "qrm_serve_request_duration_seconds_count{endpoint=\"score\"} 5",
            // Rounds of 3 and 5 rows: ≤4 holds 1, ≤8 holds 2.
            "qrm_serve_round_rows_bucket{le=\"4\"} 1",
            "qrm_serve_round_rows_bucket{le=\"8\"} 2",
            "qrm_serve_round_rows_sum 8",
            "qrm_serve_scored_tokens_total 200",
            // 200 tokens in 1 s of scoring.
            "qrm_serve_tokens_per_second 200",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        let sum = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("qrm_serve_request_duration_seconds_sum{endpoint=\"score\"} ")
            })
            .unwrap();
        assert!(
            (sum.parse::<f64>().unwrap() - 200.044).abs() < 1e-9,
            "{sum}"
        );
        assert_eq!(metrics.requests("score", 200), 4);
    }
}

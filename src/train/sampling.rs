//! Seeded sampling of the token positions the contrastive loss compares.
//!
//! Positions are absolute indices into right-padded rows. A response occupies the tokens
//! `[start, end)` of its row and `end − 1` is the final token (EOS), whose hidden state the value
//! head reads.
//!
//! Two samplers, one per loss form:
//! - [`sample_reference`] reproduces the released `ContrastiveGoalLoss`: for each sample a pair
//!   r₀ ≤ r₁ of sorted uniforms, the source from r₀ and the goal from r₁, counted back from the end
//!   of the row as k = clamp(⌊u·T + 1⌋, 1, end) with u = 1 − r (percentiles 0) and T the number of
//!   response tokens before the final one; the index is `end − k` (the release indexes `−k` in
//!   left-padded rows). The negatives are drawn the same way, sources from the chosen response
//!   and goals from the negative response (INFERRED: the release draws negatives like positives).
//! - [`sample_paper`] follows §3.2 of the paper: positive pairs (i, j) with i < j uniform over the
//!   ordered pairs of the chosen response, negative pairs (m, n) uniform and independent.
//!
//! Both honour a source and a goal [`Window`], fractions of the response that mean what they say:
//! `0.9:1` is the last tenth of the response. The release's percentile flags cannot express that
//! (DIGEST §12 item 3); with the default `0:1` windows the reference sampler is the release's.

use std::str::FromStr;

use rand::Rng;

use crate::error::{Error, Result};
use crate::model::template::Encoded;

/// The tokens of one response inside its (right-padded) row: `[start, end)`, `end − 1` the final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseSpan {
    pub start: usize,
    pub end: usize,
}

impl ResponseSpan {
    /// The response's span in a right-padded row of an encoded sequence.
    pub fn of(encoded: &Encoded) -> ResponseSpan {
        ResponseSpan {
            start: encoded.response_start,
            end: encoded.input_ids.len(),
        }
    }

    /// Number of response tokens, the final one included.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// True when the span holds no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A sub-range of a response as fractions of its length: `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub start: f64,
    pub end: f64,
}

impl Window {
    /// The whole response.
    pub const FULL: Window = Window {
        start: 0.0,
        end: 1.0,
    };

    /// The fraction a uniform draw `r ∈ [0, 1)` maps to: start + (end − start)·r.
    pub fn fraction(&self, r: f64) -> f64 {
        self.start + (self.end - self.start) * r
    }

    /// Inclusive absolute token range `[lo, hi]` the window covers in `span`, at least one token.
    pub fn token_range(&self, span: ResponseSpan) -> (usize, usize) {
        let len = span.len().max(1);
        let last = span.start + len - 1;
        let lo = span.start + (self.start * len as f64).floor() as usize;
        let hi = span.start + ((self.end * len as f64).ceil() as usize).saturating_sub(1);
        let lo = lo.min(last);
        (lo, hi.clamp(lo, last))
    }
}

impl FromStr for Window {
    type Err = Error;

    /// Parses `a:b` with 0 ≤ a < b ≤ 1.
    fn from_str(text: &str) -> Result<Self> {
        let usage = || {
            Error::Usage(format!(
                "window `{text}`: expected a:b with 0 <= a < b <= 1"
            ))
        };
        let (start, end) = text.split_once(':').ok_or_else(usage)?;
        let start: f64 = start.trim().parse().map_err(|_| usage())?;
        let end: f64 = end.trim().parse().map_err(|_| usage())?;
        if !(0.0..1.0).contains(&start) || end <= start || end > 1.0 {
            return Err(usage());
        }
        Ok(Window { start, end })
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}:{}", self.start, self.end)
    }
}

/// How many samples and where from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    pub positives: usize,
    pub negatives: usize,
    pub source_window: Window,
    pub goal_window: Window,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            positives: 16,
            negatives: 16,
            source_window: Window::FULL,
            goal_window: Window::FULL,
        }
    }
}

/// Sampled absolute positions for one example. Positive sources and goals, and negative sources,
/// index the chosen row; negative goals index the row the negative goal comes from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContrastivePositions {
    pub positive_sources: Vec<u32>,
    pub positive_goals: Vec<u32>,
    pub negative_sources: Vec<u32>,
    pub negative_goals: Vec<u32>,
}

/// The release's position for a fraction q of the response (q = r with percentile 0):
/// k = clamp(⌊(1 − q)·T + 1⌋, 1, end), index = end − k, with T = len − 1.
pub fn reference_position(fraction: f64, span: ResponseSpan) -> u32 {
    let tokens = span.len().saturating_sub(1) as f64;
    let offset = ((1.0 - fraction) * tokens + 1.0).floor() as usize;
    let offset = offset.clamp(1, span.end.max(1));
    (span.end - offset) as u32
}

/// Positions from explicit sorted-pair draws, as the release computes them.
///
/// `positive_draws[i] = (r₀, r₁)` with r₀ ≤ r₁ gives the i-th positive source (from r₀) and goal
/// (from r₁), both in `chosen`; `negative_draws` likewise, goals in `negative`.
pub fn reference_positions_from_draws(
    positive_draws: &[(f64, f64)],
    negative_draws: &[(f64, f64)],
    chosen: ResponseSpan,
    negative: ResponseSpan,
    source_window: Window,
    goal_window: Window,
) -> ContrastivePositions {
    let source = |r: f64, span| reference_position(source_window.fraction(r), span);
    let goal = |r: f64, span| reference_position(goal_window.fraction(r), span);
    ContrastivePositions {
        positive_sources: positive_draws
            .iter()
            .map(|&(r0, _)| source(r0, chosen))
            .collect(),
        positive_goals: positive_draws
            .iter()
            .map(|&(_, r1)| goal(r1, chosen))
            .collect(),
        negative_sources: negative_draws
            .iter()
            .map(|&(r0, _)| source(r0, chosen))
            .collect(),
        negative_goals: negative_draws
            .iter()
            .map(|&(_, r1)| goal(r1, negative))
            .collect(),
    }
}

fn sorted_pairs<R: Rng>(rng: &mut R, count: usize) -> Vec<(f64, f64)> {
    (0..count)
        .map(|_| {
            let (a, b): (f64, f64) = (rng.random(), rng.random());
            (a.min(b), a.max(b))
        })
        .collect()
}

/// The release's sampler (see the module docs).
pub fn sample_reference<R: Rng>(
    rng: &mut R,
    chosen: ResponseSpan,
    negative: ResponseSpan,
    config: &SamplingConfig,
) -> ContrastivePositions {
    let positive_draws = sorted_pairs(rng, config.positives);
    let negative_draws = sorted_pairs(rng, config.negatives);
    reference_positions_from_draws(
        &positive_draws,
        &negative_draws,
        chosen,
        negative,
        config.source_window,
        config.goal_window,
    )
}

/// Draws attempted before an ordered pair is built directly.
const ORDERED_PAIR_TRIES: usize = 32;

/// One ordered pair i < j, i in `sources`, j in `goals` (inclusive ranges). Rejection sampling
/// makes it uniform over the valid pairs; when 32 draws all fail (windows that barely overlap),
/// j is drawn among the valid goals and then i below it. When no ordered pair exists (a one-token
/// response, or a goal window entirely before the source window) it returns (lowest source,
/// highest goal), which may not be ordered.
fn ordered_pair<R: Rng>(rng: &mut R, sources: (usize, usize), goals: (usize, usize)) -> (u32, u32) {
    for _ in 0..ORDERED_PAIR_TRIES {
        let source = rng.random_range(sources.0..=sources.1);
        let goal = rng.random_range(goals.0..=goals.1);
        if source < goal {
            return (source as u32, goal as u32);
        }
    }
    let lowest_goal = goals.0.max(sources.0 + 1);
    if lowest_goal > goals.1 {
        return (sources.0 as u32, goals.1 as u32);
    }
    let goal = rng.random_range(lowest_goal..=goals.1);
    let source = rng.random_range(sources.0..=sources.1.min(goal - 1));
    (source as u32, goal as u32)
}

/// The paper's sampler (see the module docs).
pub fn sample_paper<R: Rng>(
    rng: &mut R,
    chosen: ResponseSpan,
    negative: ResponseSpan,
    config: &SamplingConfig,
) -> ContrastivePositions {
    let sources = config.source_window.token_range(chosen);
    let goals = config.goal_window.token_range(chosen);
    let negative_goals = config.goal_window.token_range(negative);
    let mut positions = ContrastivePositions::default();
    for _ in 0..config.positives {
        let (source, goal) = ordered_pair(rng, sources, goals);
        positions.positive_sources.push(source);
        positions.positive_goals.push(goal);
    }
    for _ in 0..config.negatives {
        positions
            .negative_sources
            .push(rng.random_range(sources.0..=sources.1) as u32);
        positions
            .negative_goals
            .push(rng.random_range(negative_goals.0..=negative_goals.1) as u32);
    }
    positions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_of_an_encoding_is_its_scored_positions() {
        let encoded = Encoded {
            input_ids: vec![1, 2, 3, 4, 5],
            response_start: 2,
            ..Encoded::default()
        };
        let span = ResponseSpan::of(&encoded);
        assert_eq!((span.start, span.end), (2, 5));
        assert_eq!(span.len(), encoded.scored_len());
        assert_eq!(Some(span.end - 1), encoded.final_position());
    }
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn window_parses_and_rejects() {
        let window: Window = "0.9:1".parse().unwrap();
        assert_eq!(
            window,
            Window {
                start: 0.9,
                end: 1.0
            }
        );
        for bad in ["1:0.5", "0.5", "a:b", "-0.1:0.5", "0.2:1.5", "0.5:0.5"] {
            assert!(bad.parse::<Window>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn window_token_range_covers_the_last_tenth() {
        // 20 tokens at [10, 30): 0.9·20 = 18 → first index 28; ceil(1·20) − 1 = 19 → 29.
        let span = ResponseSpan { start: 10, end: 30 };
        let late: Window = "0.9:1".parse().unwrap();
        assert_eq!(late.token_range(span), (28, 29));
        assert_eq!(Window::FULL.token_range(span), (10, 29));
        // A one-token response still yields one position.
        assert_eq!(late.token_range(ResponseSpan { start: 4, end: 5 }), (4, 4));
    }

    #[test]
    fn reference_position_matches_release_offsets() {
        // T = len − 1 = 9 for a response at [5, 15). r = 0 → k = ⌊(1 − 0)·9 + 1⌋ = 10 → index 5
        // (first response token); r = 0.95 → k = ⌊0.05·9 + 1⌋ = 1 → index 14 (the final EOS);
        // r = 0.5 → k = ⌊4.5 + 1⌋ = 5 → index 10.
        let span = ResponseSpan { start: 5, end: 15 };
        assert_eq!(reference_position(0.0, span), 5);
        assert_eq!(reference_position(0.95, span), 14);
        assert_eq!(reference_position(0.5, span), 10);
    }

    #[test]
    fn reference_late_goal_window_stays_in_last_tenth() {
        let chosen = ResponseSpan { start: 3, end: 103 };
        let config = SamplingConfig {
            goal_window: "0.9:1".parse().unwrap(),
            ..SamplingConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            let positions = sample_reference(&mut rng, chosen, chosen, &config);
            // k ≤ ⌊0.1·99 + 1⌋ = 10 → index ≥ 93.
            assert!(positions
                .positive_goals
                .iter()
                .all(|goal| (93..103).contains(goal)));
            assert!(positions.positive_sources.iter().all(|&source| source >= 3));
        }
    }

    #[test]
    fn reference_goals_never_precede_their_sources() {
        let chosen = ResponseSpan { start: 0, end: 40 };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let positions = sample_reference(&mut rng, chosen, chosen, &SamplingConfig::default());
        assert_eq!(positions.positive_sources.len(), 16);
        for (source, goal) in positions
            .positive_sources
            .iter()
            .zip(&positions.positive_goals)
        {
            assert!(source <= goal);
        }
    }

    #[test]
    fn paper_pairs_are_strictly_ordered_and_in_windows() {
        let chosen = ResponseSpan { start: 8, end: 48 };
        let rejected = ResponseSpan { start: 8, end: 20 };
        let config = SamplingConfig {
            source_window: "0:0.5".parse().unwrap(),
            goal_window: "0.5:1".parse().unwrap(),
            ..SamplingConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let positions = sample_paper(&mut rng, chosen, rejected, &config);
        for (source, goal) in positions
            .positive_sources
            .iter()
            .zip(&positions.positive_goals)
        {
            assert!(source < goal);
            assert!((8..28).contains(source) && (28..48).contains(goal));
        }
        // Negative goals: second half of the rejected response, [14, 20).
        assert!(positions
            .negative_goals
            .iter()
            .all(|goal| (14..20).contains(goal)));
    }

    #[test]
    fn paper_sampler_is_uniform_over_ordered_pairs() {
        // 4 tokens → 6 ordered pairs, each with probability 1/6.
        let span = ResponseSpan { start: 0, end: 4 };
        let config = SamplingConfig {
            positives: 60_000,
            negatives: 0,
            ..SamplingConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let positions = sample_paper(&mut rng, span, span, &config);
        let mut counts = std::collections::HashMap::new();
        for pair in positions
            .positive_sources
            .iter()
            .zip(&positions.positive_goals)
        {
            *counts.entry(pair).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 6);
        for count in counts.values() {
            assert!((*count as f64 / 10_000.0 - 1.0).abs() < 0.05, "{counts:?}");
        }
    }

    #[test]
    fn same_seed_same_positions() {
        let span = ResponseSpan { start: 2, end: 30 };
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            sample_paper(&mut rng, span, span, &SamplingConfig::default())
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }
}

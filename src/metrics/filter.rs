//! Q-value filtering for majority voting (the paper's Table 1, App. A.2), top-K selection by
//! reward (Table 11) and the Q-value/reward correlation at fractions of a response (Table 13).
//!
//! Everything works on [`Sample`]s grouped by question; `report` builds them from a scores table.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::metrics::stats::{ttest_ind, ttest_rel};

/// One generation of a question, as filtering sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub is_correct: bool,
    /// The extracted final answer; `None` abstains under [`VoteRule::Answer`].
    pub answer: Option<&'a str>,
    /// Q-value of each response token.
    pub q_values: &'a [f32],
    /// Sequence reward, for top-K ranking.
    pub reward: f64,
}

/// How the majority vote buckets samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VoteRule {
    /// The released code: every correct sample joins one bucket, incorrect ones are bucketed by
    /// their raw `predicted_answer`, and a tie between the correct bucket and the largest
    /// incorrect one counts as correct.
    Reference,
    /// Buckets by normalised `predicted_answer` only (null answers abstain); a tie between the
    /// largest buckets is broken by a seeded coin. A bucket is correct when any of its samples is.
    Answer,
}

impl VoteRule {
    pub fn name(self) -> &'static str {
        match self {
            VoteRule::Reference => "reference",
            VoteRule::Answer => "answer",
        }
    }
}

/// The outcome of one majority vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    pub correct: bool,
    /// The largest buckets were tied (reference: the correct bucket tied the largest
    /// incorrect one; answer: a coin decided).
    pub tie: bool,
}

/// A small answer normaliser: trims, drops `$` and `,`, and removes trailing zeros of a decimal
/// number (`"1,000.50"` → `"1000.5"`, `"$12.0"` → `"12"`).
pub fn normalize_answer(answer: &str) -> String {
    let mut text: String = answer
        .trim()
        .chars()
        .filter(|&c| c != '$' && c != ',')
        .collect();
    let numeric = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-');
    if numeric && text.contains('.') {
        let trimmed = text.trim_end_matches('0').trim_end_matches('.');
        text = trimmed.to_owned();
    }
    text
}

/// Majority vote over `samples` under `rule`; `rng` breaks ties under [`VoteRule::Answer`].
/// An empty set (or one where every answer is null, under `Answer`) is incorrect.
pub fn majority_vote<'a>(
    samples: impl IntoIterator<Item = &'a Sample<'a>>,
    rule: VoteRule,
    rng: &mut impl Rng,
) -> Vote {
    match rule {
        VoteRule::Reference => {
            let mut correct = 0usize;
            let mut incorrect: BTreeMap<Option<&str>, usize> = BTreeMap::new();
            for sample in samples {
                if sample.is_correct {
                    correct += 1;
                } else {
                    *incorrect.entry(sample.answer).or_default() += 1;
                }
            }
            let largest_incorrect = incorrect.values().copied().max().unwrap_or(0);
            Vote {
                correct: correct > 0 && correct >= largest_incorrect,
                tie: largest_incorrect > 0 && correct == largest_incorrect,
            }
        }
        VoteRule::Answer => {
            // (count, any correct) per normalised answer, in a fixed (sorted) order.
            let mut buckets: BTreeMap<String, (usize, bool)> = BTreeMap::new();
            for sample in samples {
                if let Some(answer) = sample.answer {
                    let bucket = buckets.entry(normalize_answer(answer)).or_default();
                    bucket.0 += 1;
                    bucket.1 |= sample.is_correct;
                }
            }
            let largest = buckets.values().map(|b| b.0).max().unwrap_or(0);
            let leaders: Vec<bool> = buckets
                .values()
                .filter(|b| b.0 == largest)
                .map(|b| b.1)
                .collect();
            match leaders.len() {
                0 => Vote {
                    correct: false,
                    tie: false,
                },
                1 => Vote {
                    correct: leaders[0],
                    tie: false,
                },
                count => Vote {
                    correct: leaders[rng.random_range(0..count)],
                    tie: true,
                },
            }
        }
    }
}

/// Q-filtering settings.
#[derive(Debug, Clone, Copy)]
pub struct FilterOptions {
    /// Response tokens ignored at the start (the reference code ignores 5).
    pub skip: usize,
    /// A sample is dropped when a Q-value after `skip` is below this.
    pub threshold: f64,
    pub vote: VoteRule,
    /// Seeds the coin of [`VoteRule::Answer`].
    pub seed: u64,
}

impl Default for FilterOptions {
    fn default() -> Self {
        Self {
            skip: 5,
            threshold: 0.0,
            vote: VoteRule::Answer,
            seed: 0,
        }
    }
}

/// Index, within `q_values[skip..]`, of the first Q-value below `threshold`.
///
/// Compares in f32 against the smallest f32 not below `threshold`, which is exact: for an f32
/// `q`, `q < threshold` ⇔ `q < ceil_f32(threshold)`. Scans 32 values at a time so that the
/// test vectorises; the position is searched only in the chunk that has a hit.
pub fn first_below(q_values: &[f32], skip: usize, threshold: f64) -> Option<usize> {
    const CHUNK: usize = 32;
    let tail = &q_values[skip.min(q_values.len())..];
    let bound = f32_at_least(threshold);
    for (index, chunk) in tail.chunks(CHUNK).enumerate() {
        if chunk.iter().fold(false, |hit, &q| hit | (q < bound)) {
            return chunk
                .iter()
                .position(|&q| q < bound)
                .map(|offset| index * CHUNK + offset);
        }
    }
    None
}

/// The smallest f32 that is ≥ `value` (NaN stays NaN, overflow gives infinity).
fn f32_at_least(value: f64) -> f32 {
    let rounded = value as f32;
    if f64::from(rounded) >= value || rounded.is_nan() {
        return rounded;
    }
    // `rounded` is the f32 just below `value`: step one unit up.
    let bits = rounded.to_bits();
    if rounded == 0.0 {
        f32::from_bits(1) // the smallest positive subnormal
    } else if rounded > 0.0 {
        f32::from_bits(bits + 1)
    } else {
        f32::from_bits(bits - 1)
    }
}

/// Table 1 for one group of questions. Fractions are in [0, 1], `*_pct` in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSummary {
    pub questions: usize,
    /// Mean number of samples per question.
    pub samples_per_question: f64,
    /// Majority-vote accuracy over all samples.
    pub accuracy: f64,
    /// Majority-vote accuracy over the kept samples.
    pub accuracy_filtered: f64,
    /// Mean over questions of correct / all samples.
    pub proportion_correct: f64,
    /// Mean over questions of correct / kept samples.
    pub proportion_correct_filtered: f64,
    /// Mean over questions of dropped / all samples, in percent (0 for fallback questions).
    pub filtered_pct: f64,
    /// The released rule: Σ saved / Σ scored tokens (tokens after `skip`) over all questions,
    /// in percent. A fallback question saves nothing but its tokens count.
    pub tokens_saved_pct: f64,
    /// Mean over questions of saved / scored tokens, in percent (0 for fallback questions).
    pub tokens_saved_per_question_pct: f64,
    /// `scipy.stats.ttest_ind(proportion_correct_filtered, proportion_correct)` p, per question
    /// (the reference's test); `None` when undefined.
    pub p_unpaired: Option<f64>,
    /// `scipy.stats.ttest_rel` p over the same per-question proportions.
    pub p_paired: Option<f64>,
    /// Votes decided by a tie (both votes of every question counted).
    pub ties_broken: usize,
    /// Questions where every sample was dropped and all were kept instead.
    pub fallback_questions: usize,
}

/// Filters each question's samples by Q-value and compares majority voting with and without
/// filtering. Tokens saved for a dropped sample = its tokens after `skip` from the first Q-value
/// below the threshold to the end. A question whose samples are all dropped falls back to all
/// of them and saves nothing. `None` when there are no questions.
///
/// Non-finite Q-values must be rejected or dropped before (see [`crate::metrics::finite`]):
/// a NaN compares false, so a sample of NaNs would never be dropped.
pub fn filter_summary(questions: &[Vec<Sample>], options: &FilterOptions) -> Option<FilterSummary> {
    summarise(questions, options, |_, _, sample| {
        first_below(sample.q_values, options.skip, options.threshold)
    })
}

/// [`filter_summary`] with a threshold per sample: `thresholds[q][s]` for sample `s` of
/// question `q` (same shape as `questions`), `None` keeping the sample unconditionally (a
/// warm-up sample, see [`crate::metrics::calibration`]); `options.threshold` is not read.
/// `f64::NEG_INFINITY` drops nothing.
pub fn filter_summary_at(
    questions: &[Vec<Sample>],
    options: &FilterOptions,
    thresholds: &[Vec<Option<f64>>],
) -> Option<FilterSummary> {
    summarise(questions, options, |question, index, sample| {
        thresholds[question][index]
            .and_then(|threshold| first_below(sample.q_values, options.skip, threshold))
    })
}

/// Table 1 where `drop_at(question, sample, &sample)` is the index, within the tokens after
/// `skip`, where that sample is dropped (`None`: kept).
fn summarise(
    questions: &[Vec<Sample>],
    options: &FilterOptions,
    drop_at: impl Fn(usize, usize, &Sample) -> Option<usize>,
) -> Option<FilterSummary> {
    if questions.is_empty() {
        return None;
    }
    let count = questions.len() as f64;
    let (mut samples, mut correct_votes, mut correct_votes_filtered) = (0usize, 0usize, 0usize);
    let (mut filtered_fraction, mut saved_fraction) = (0.0, 0.0);
    let (mut ties, mut fallbacks) = (0usize, 0usize);
    let (mut all_scored_tokens, mut all_saved_tokens) = (0usize, 0usize);
    let mut proportions = Vec::with_capacity(questions.len());
    let mut proportions_filtered = Vec::with_capacity(questions.len());
    let mut kept: Vec<Sample> = Vec::new();
    for (index, question) in questions.iter().enumerate() {
        samples += question.len();
        kept.clear();
        let (mut scored_tokens, mut saved_tokens) = (0usize, 0usize);
        for (position, sample) in question.iter().enumerate() {
            let scored = sample.q_values.len().saturating_sub(options.skip);
            scored_tokens += scored;
            all_scored_tokens += scored;
            match drop_at(index, position, sample) {
                Some(index) => saved_tokens += scored - index,
                None => kept.push(*sample),
            }
        }
        let fallback = kept.is_empty();
        if fallback {
            fallbacks += 1;
            kept.extend_from_slice(question);
        } else {
            filtered_fraction += (question.len() - kept.len()) as f64 / question.len() as f64;
            all_saved_tokens += saved_tokens;
            if scored_tokens > 0 {
                saved_fraction += saved_tokens as f64 / scored_tokens as f64;
            }
        }
        // One coin per question, the same for both votes: when filtering keeps every sample,
        // the filtered vote is the unfiltered one, ties included.
        let mut coin = ChaCha8Rng::seed_from_u64(options.seed);
        coin.set_stream(index as u64);
        let vote = majority_vote(question, options.vote, &mut coin.clone());
        let vote_filtered = majority_vote(&kept, options.vote, &mut coin);
        correct_votes += usize::from(vote.correct);
        correct_votes_filtered += usize::from(vote_filtered.correct);
        ties += usize::from(vote.tie) + usize::from(vote_filtered.tie);
        proportions.push(proportion_correct(question));
        proportions_filtered.push(proportion_correct(&kept));
    }
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    Some(FilterSummary {
        questions: questions.len(),
        samples_per_question: samples as f64 / count,
        accuracy: correct_votes as f64 / count,
        accuracy_filtered: correct_votes_filtered as f64 / count,
        proportion_correct: mean(&proportions),
        proportion_correct_filtered: mean(&proportions_filtered),
        filtered_pct: 100.0 * filtered_fraction / count,
        tokens_saved_pct: if all_scored_tokens > 0 {
            100.0 * all_saved_tokens as f64 / all_scored_tokens as f64
        } else {
            0.0
        },
        tokens_saved_per_question_pct: 100.0 * saved_fraction / count,
        p_unpaired: ttest_ind(&proportions_filtered, &proportions)
            .map(|t| t.p_value)
            .filter(|p| p.is_finite()),
        p_paired: ttest_rel(&proportions_filtered, &proportions)
            .map(|t| t.p_value)
            .filter(|p| p.is_finite()),
        ties_broken: ties,
        fallback_questions: fallbacks,
    })
}

/// Correct / all samples (0 for an empty set).
fn proportion_correct(samples: &[Sample]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().filter(|s| s.is_correct).count() as f64 / samples.len() as f64
}

/// Majority voting within each question's K best samples by reward (Table 11).
#[derive(Debug, Clone, PartialEq)]
pub struct TopKSummary {
    pub top_k: usize,
    pub questions: usize,
    pub accuracy: f64,
    /// Mean over questions of correct / min(K, samples).
    pub proportion_correct: f64,
    pub ties_broken: usize,
}

/// Ranks each question's samples by `reward` (highest first; equal rewards keep input order)
/// and votes within the top `k`. `None` when there are no questions or `k` is 0.
pub fn top_k_summary(
    questions: &[Vec<Sample>],
    k: usize,
    rule: VoteRule,
    seed: u64,
) -> Option<TopKSummary> {
    if questions.is_empty() || k == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut correct_votes, mut ties, mut proportion_sum) = (0usize, 0usize, 0.0);
    for question in questions {
        let mut ranked: Vec<Sample> = question.clone();
        ranked.sort_by(|a, b| b.reward.total_cmp(&a.reward));
        ranked.truncate(k);
        let vote = majority_vote(&ranked, rule, &mut rng);
        correct_votes += usize::from(vote.correct);
        ties += usize::from(vote.tie);
        proportion_sum += proportion_correct(&ranked);
    }
    let count = questions.len() as f64;
    Some(TopKSummary {
        top_k: k,
        questions: questions.len(),
        accuracy: correct_votes as f64 / count,
        proportion_correct: proportion_sum / count,
        ties_broken: ties,
    })
}

/// Index of the token that ends the prefix covering `fraction` of `length` tokens, as the
/// reference's `max(int(length * fraction) - 1, 0)`. `None` for an empty response.
pub fn prefix_index(length: usize, fraction: f64) -> Option<usize> {
    if length == 0 {
        return None;
    }
    let end = (length as f64 * fraction).floor() as usize;
    Some(end.saturating_sub(1).min(length - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(is_correct: bool, answer: &'static str, q_values: &'static [f32]) -> Sample<'static> {
        Sample {
            is_correct,
            answer: Some(answer),
            q_values,
            reward: 0.0,
        }
    }

    #[test]
    fn normalizer_strips_currency_commas_and_trailing_zeros() {
        assert_eq!(normalize_answer(" $1,000.50 "), "1000.5");
        assert_eq!(normalize_answer("12.0"), "12");
        assert_eq!(normalize_answer("x=1.0"), "x=1.0");
    }

    #[test]
    fn reference_vote_pools_correct_samples_and_ties_go_to_correct() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        // Correct: 2 (answers "4" and "4.0" pooled). Incorrect "5": 2. Tie → correct.
        let samples = [
            sample(true, "4", &[]),
            sample(true, "4.0", &[]),
            sample(false, "5", &[]),
            sample(false, "5", &[]),
        ];
        let vote = majority_vote(&samples, VoteRule::Reference, &mut rng);
        assert_eq!(
            vote,
            Vote {
                correct: true,
                tie: true
            }
        );
    }

    #[test]
    fn answer_vote_normalizes_and_breaks_ties_with_the_coin() {
        // "4" and "4.0" form one bucket of 2 against "5" with 1: correct, no tie.
        let samples = [
            sample(true, "4", &[]),
            sample(true, "4.0", &[]),
            sample(false, "5", &[]),
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let vote = majority_vote(&samples, VoteRule::Answer, &mut rng);
        assert_eq!(
            vote,
            Vote {
                correct: true,
                tie: false
            }
        );
        // One "4" against one "5": the coin decides, and over seeds both outcomes occur.
        let tied = [sample(true, "4", &[]), sample(false, "5", &[])];
        let outcomes: Vec<bool> = (0..32)
            .map(|seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let vote = majority_vote(&tied, VoteRule::Answer, &mut rng);
                assert!(vote.tie);
                vote.correct
            })
            .collect();
        assert!(outcomes.contains(&true) && outcomes.contains(&false));
    }

    #[test]
    fn filtering_hand_computed() {
        // skip 1, threshold 0. Question A:
        //   s1 correct, Q = [-1, .5, .5, .5]: the skipped -1 is ignored → kept.
        //   s2 wrong,   Q = [.1, .2, -.3, .4]: first below 0 at tail index 1 of 3 → saves 2 of 3.
        //   s3 wrong "7", Q = [.1, .2, .3]: kept.
        // Scored tokens 3 + 3 + 2 = 8, saved 2 → 25 %; dropped 1 of 3.
        // Votes (reference): all: correct 1 vs "7":1+"9":1 → max 1 → tie → correct;
        //   kept: correct 1 vs "7":1 → tie → correct. Proportions 1/3 and 1/2.
        // Question B: both samples dropped → fallback, saves 0, filtered 0.
        //   s1 wrong "3" Q = [0, -1]; s2 wrong "3" Q = [0, -2]: vote incorrect, proportions 0, 0.
        let question_a = vec![
            sample(true, "2", &[-1.0, 0.5, 0.5, 0.5]),
            sample(false, "9", &[0.1, 0.2, -0.3, 0.4]),
            sample(false, "7", &[0.1, 0.2, 0.3]),
        ];
        let question_b = vec![
            sample(false, "3", &[0.0, -1.0]),
            sample(false, "3", &[0.0, -2.0]),
        ];
        let options = FilterOptions {
            skip: 1,
            threshold: 0.0,
            vote: VoteRule::Reference,
            seed: 0,
        };
        let summary = filter_summary(&[question_a, question_b], &options).unwrap();
        assert_eq!(summary.questions, 2);
        assert_eq!(summary.samples_per_question, 2.5);
        assert_eq!(summary.accuracy, 0.5);
        assert_eq!(summary.accuracy_filtered, 0.5);
        assert!((summary.proportion_correct - (1.0 / 3.0) / 2.0).abs() < 1e-15);
        assert_eq!(summary.proportion_correct_filtered, 0.25);
        assert!((summary.filtered_pct - 100.0 * (1.0 / 3.0) / 2.0).abs() < 1e-12);
        // Per question: (25 % + 0 %) / 2 = 12.5 %. Released totals: B's scored tokens
        // (1 + 1) count, its saved ones do not: 2 / (8 + 2) = 20 %.
        assert_eq!(summary.tokens_saved_per_question_pct, 12.5);
        assert_eq!(summary.tokens_saved_pct, 20.0);
        assert_eq!(summary.fallback_questions, 1);
        assert_eq!(summary.ties_broken, 2);
    }

    #[test]
    fn answer_vote_with_nothing_filtered_is_the_unfiltered_vote_for_every_seed() {
        // Every question is a 1–1 tie between a correct "4" and a wrong "5", and every Q-value
        // is positive, so filtering keeps all samples: the filtered vote must repeat the
        // unfiltered one exactly, tie-break included, whatever the seed.
        let questions: Vec<Vec<Sample>> = (0..20)
            .map(|_| {
                vec![
                    sample(true, "4", &[0.5, 0.5]),
                    sample(false, "5", &[0.5, 0.5]),
                ]
            })
            .collect();
        for seed in 0..20 {
            let options = FilterOptions {
                skip: 0,
                threshold: 0.0,
                vote: VoteRule::Answer,
                seed,
            };
            let summary = filter_summary(&questions, &options).unwrap();
            assert_eq!(summary.filtered_pct, 0.0);
            assert_eq!(summary.accuracy, summary.accuracy_filtered, "seed {seed}");
        }
    }

    #[test]
    fn f32_bound_is_exact() {
        // 0.1 is not an f32: 0.1f32 = 0.100000001490116… > 0.1, so it is the bound itself.
        assert_eq!(f32_at_least(0.1), 0.1f32);
        // -0.1f32 = -0.100000001490116… < -0.1: the bound is the next f32 up.
        let bound = f32_at_least(-0.1);
        assert!(f64::from(bound) >= -0.1 && bound > -0.1f32);
        assert_eq!(f32_at_least(0.0), 0.0);
        // A positive value below the smallest subnormal rounds to 0, then steps up.
        assert_eq!(f32_at_least(1e-50), f32::from_bits(1));
    }

    #[test]
    fn first_below_finds_the_first_hit_past_a_chunk() {
        let mut q_values = vec![0.5f32; 100];
        q_values[70] = -0.1;
        q_values[90] = -0.2;
        assert_eq!(first_below(&q_values, 5, 0.0), Some(65));
        // -0.1f32 is below -0.1 (f64), so it counts at threshold -0.1; -0.2 is first at -0.15.
        assert_eq!(first_below(&q_values, 5, -0.1), Some(65));
        assert_eq!(first_below(&q_values, 5, -0.15), Some(85));
        assert_eq!(first_below(&q_values, 5, -0.3), None);
        assert_eq!(first_below(&q_values[..3], 5, 1.0), None);
    }

    #[test]
    fn no_questions_have_no_summary() {
        assert_eq!(filter_summary(&[], &FilterOptions::default()), None);
    }

    #[test]
    fn top_k_keeps_the_highest_rewards() {
        // Rewards 0.9 (wrong "1"), 0.8 (correct), 0.1 (correct): top-1 is wrong, top-3 is right.
        let mut question = vec![
            sample(false, "1", &[]),
            sample(true, "2", &[]),
            sample(true, "2", &[]),
        ];
        for (sample, reward) in question.iter_mut().zip([0.9, 0.8, 0.1]) {
            sample.reward = reward;
        }
        let questions = [question];
        let top_1 = top_k_summary(&questions, 1, VoteRule::Answer, 0).unwrap();
        assert_eq!((top_1.accuracy, top_1.proportion_correct), (0.0, 0.0));
        let top_3 = top_k_summary(&questions, 3, VoteRule::Answer, 0).unwrap();
        assert_eq!(top_3.accuracy, 1.0);
        assert!((top_3.proportion_correct - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn prefix_index_matches_the_reference_formula() {
        // max(int(10·0.0) − 1, 0) = 0; int(10·0.35) − 1 = 2; int(10·1.0) − 1 = 9.
        assert_eq!(prefix_index(10, 0.0), Some(0));
        assert_eq!(prefix_index(10, 0.35), Some(2));
        assert_eq!(prefix_index(10, 1.0), Some(9));
        assert_eq!(prefix_index(0, 0.5), None);
    }
}

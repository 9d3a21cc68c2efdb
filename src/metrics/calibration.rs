//! Calibrated thresholds for Q-filtering: a θ chosen so that correct samples are rarely dropped,
//! instead of a raw cosine that means something different for every model.
//!
//! A sample's score is its running minimum: the smallest Q-value after the first `skip`
//! response tokens ([`running_min`]; +∞ without such tokens). Filtering drops a sample at θ iff
//! its running minimum is < θ (the rule of [`crate::metrics::filter::first_below`]).
//!
//! **Split-conformal θ** ([`conformal_threshold`]). Given the scores of n correct calibration
//! samples, sorted s₍₁₎ ≤ … ≤ s₍ₙ₎, and a maximum false-drop rate α ∈ (0, 1), let
//! k = ⌊α(n + 1)⌋ and θ = s₍ₖ₎ (θ = −∞ when k = 0: nothing is dropped). Guarantee: for a new
//! correct sample whose score s is exchangeable with the n calibration scores,
//! P(s < θ) ≤ k/(n + 1) ≤ α, the probability taken over the calibration set and the new
//! sample together. Why: s < s₍ₖ₎ means fewer than k calibration scores are ≤ s, so s has
//! rank ≤ k among the n + 1 scores however ties are ordered; with ties broken at random that
//! rank is uniform on {1, …, n + 1} under exchangeability, so the event has probability
//! ≤ k/(n + 1). Ties only make the strict "<" rarer. Without ties P(s < θ) = k/(n + 1)
//! exactly, which is ≥ α − 1/(n + 1): the rule is tight, not merely safe. k ≤ n since α < 1.
//! The guarantee is marginal (on average over calibration sets) and for correct samples only;
//! how many wrong samples are dropped is measured, not promised. Samples of one question are
//! correlated: a question-disjoint split makes questions, not samples, exchangeable, so the
//! statement is exact with one correct sample per question and approximate with several
//! (the realised rate is reported so that it can be checked). k is computed as
//! ⌊α(n + 1) + 10⁻⁹⌋ so that a decimal α such as 0.29 with n + 1 = 100 gives 29, not 28.
//!
//! **Warm-up θ** ([`warmup_thresholds`]), for use while generating (like DeepConf's offline
//! warm-up with token confidence, Fu et al. 2025): a question's first K samples (row order) are
//! kept unconditionally and its θ is the P-th percentile (NumPy's default, linear
//! interpolation) of their running minima; later samples of that question are filtered against
//! it. A lower P is more conservative. Warm-up samples without a scored token are left out of
//! the percentile; with none left θ = −∞. There is no guarantee here: K is small and the
//! warm-up samples mix correct and wrong ones.
//!
//! [`drop_counts`] measures the realised false-drop rate (correct samples dropped) and the
//! share of wrong samples dropped, counting a sample as dropped when the rule drops it, before
//! the all-dropped fallback of [`crate::metrics::filter::filter_summary`].

use crate::metrics::auroc::quantile_sorted;
use crate::metrics::filter::{first_below, Sample};

/// The smallest Q-value after the first `skip`; +∞ when there is none (never dropped).
pub fn running_min(q_values: &[f32], skip: usize) -> f32 {
    q_values
        .iter()
        .skip(skip)
        .copied()
        .fold(f32::INFINITY, f32::min)
}

/// A split-conformal θ and how it was chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConformalThreshold {
    /// Drop a sample iff its running minimum is below this; −∞ when `rank` is 0.
    pub threshold: f64,
    /// k = ⌊α(n + 1)⌋: θ is the k-th smallest calibration score.
    pub rank: usize,
    /// n, the number of calibration scores.
    pub calibration: usize,
    pub alpha: f64,
}

/// The split-conformal θ for `alpha` ∈ (0, 1) from the running minima of correct calibration
/// samples (see the module doc for the rule and its guarantee). Scores must not be NaN.
pub fn conformal_threshold(scores: &[f32], alpha: f64) -> ConformalThreshold {
    let n = scores.len();
    let rank = ((alpha * (n + 1) as f64 + 1e-9).floor() as usize).min(n);
    let threshold = if rank == 0 {
        f64::NEG_INFINITY
    } else {
        let mut sorted = scores.to_vec();
        sorted.sort_by(f32::total_cmp);
        f64::from(sorted[rank - 1])
    };
    ConformalThreshold {
        threshold,
        rank,
        calibration: n,
        alpha,
    }
}

/// The `percentile`-th percentile (0–100) of `values` as `numpy.percentile` (linear
/// interpolation between the order statistics around (m − 1)·p/100). `None` when empty.
pub fn percentile(values: &[f32], percentile: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    sorted.sort_by(f64::total_cmp);
    Some(quantile_sorted(&sorted, percentile / 100.0))
}

/// A question's warm-up θ: the `percentile`-th percentile of the running minima of its first
/// `warmup` samples that have a scored token; −∞ (drop nothing) when none has.
pub fn warmup_threshold(question: &[Sample], warmup: usize, skip: usize, pct: f64) -> f64 {
    let minima: Vec<f32> = question
        .iter()
        .take(warmup)
        .map(|sample| running_min(sample.q_values, skip))
        .filter(|m| m.is_finite())
        .collect();
    percentile(&minima, pct).unwrap_or(f64::NEG_INFINITY)
}

/// Each sample's threshold under the warm-up rule, in the shape of `questions`: `None` for a
/// question's first `warmup` samples (kept), its [`warmup_threshold`] for the others.
pub fn warmup_thresholds(
    questions: &[Vec<Sample>],
    warmup: usize,
    skip: usize,
    pct: f64,
) -> Vec<Vec<Option<f64>>> {
    questions
        .iter()
        .map(|question| {
            let threshold = warmup_threshold(question, warmup, skip, pct);
            (0..question.len())
                .map(|index| (index >= warmup).then_some(threshold))
                .collect()
        })
        .collect()
}

/// Samples under a threshold (`Some`) and how many of them the rule drops, by label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub correct: usize,
    pub correct_dropped: usize,
    pub wrong: usize,
    pub wrong_dropped: usize,
}

/// Counts, over the samples whose threshold is `Some` (same shape as `questions`), those the
/// rule drops (running minimum after `skip` below the threshold), by label.
pub fn drop_counts(
    questions: &[Vec<Sample>],
    thresholds: &[Vec<Option<f64>>],
    skip: usize,
) -> DropCounts {
    let mut counts = DropCounts::default();
    for (question, thresholds) in questions.iter().zip(thresholds) {
        for (sample, threshold) in question.iter().zip(thresholds) {
            let Some(threshold) = *threshold else {
                continue;
            };
            let dropped = first_below(sample.q_values, skip, threshold).is_some();
            if sample.is_correct {
                counts.correct += 1;
                counts.correct_dropped += usize::from(dropped);
            } else {
                counts.wrong += 1;
                counts.wrong_dropped += usize::from(dropped);
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn conformal_threshold_hand_computed() {
        // n = 9, α = 0.2: k = ⌊0.2 · 10⌋ = 2 → θ = the 2nd smallest = 0.1 (input unsorted).
        let scores = [0.5f32, 0.1, 0.9, -0.3, 0.4, 0.2, 0.8, 0.7, 0.6];
        let chosen = conformal_threshold(&scores, 0.2);
        assert_eq!((chosen.rank, chosen.calibration), (2, 9));
        assert_eq!(chosen.threshold, f64::from(0.1f32));
        // α = 0.29, n + 1 = 10: ⌊2.9⌋ = 2 as well; α = 0.3 → ⌊3⌋ = 3 → 0.2.
        assert_eq!(conformal_threshold(&scores, 0.29).rank, 2);
        assert_eq!(
            conformal_threshold(&scores, 0.3).threshold,
            f64::from(0.2f32)
        );
        // 0.29 · 100 is 28.999999999999996 in f64; the allowance gives the intended 29.
        assert_eq!(conformal_threshold(&[0.0; 99], 0.29).rank, 29);
        // α = 0.95: ⌊9.5⌋ = 9 = n → the largest score.
        assert_eq!(
            conformal_threshold(&scores, 0.95).threshold,
            f64::from(0.9f32)
        );
    }

    #[test]
    fn conformal_threshold_below_one_rank_drops_nothing() {
        // n = 3, α = 0.2: k = ⌊0.8⌋ = 0 → θ = −∞; a score of −1e30 is not below it.
        let chosen = conformal_threshold(&[0.1, 0.2, 0.3], 0.2);
        assert_eq!(chosen.rank, 0);
        assert_eq!(chosen.threshold, f64::NEG_INFINITY);
        assert_eq!(first_below(&[-1e30], 0, chosen.threshold), None);
        // n = 0: k = ⌊α⌋ = 0 for every α < 1.
        assert_eq!(conformal_threshold(&[], 0.99).rank, 0);
        // n = 4, α = 0.2: k = ⌊1.0⌋ = 1 → the smallest.
        assert_eq!(
            conformal_threshold(&[0.3, 0.1, 0.2, 0.4], 0.2).threshold,
            f64::from(0.1f32)
        );
    }

    #[test]
    fn ties_at_the_threshold_are_kept() {
        // Scores 0.2, 0.2, 0.2, 0.5 (n = 4), α = 0.5: k = ⌊2.5⌋ = 2 → θ = 0.2. Drop iff
        // min < 0.2: none of the calibration samples is dropped (0 of 4), a new 0.2 is kept
        // and only a strictly smaller score is dropped.
        let scores = [0.2f32, 0.5, 0.2, 0.2];
        let chosen = conformal_threshold(&scores, 0.5);
        assert_eq!((chosen.rank, chosen.threshold), (2, f64::from(0.2f32)));
        assert_eq!(first_below(&[0.2], 0, chosen.threshold), None);
        assert_eq!(first_below(&[0.5, 0.19], 0, chosen.threshold), Some(1));
    }

    #[test]
    fn running_min_skips_and_is_infinite_when_nothing_is_scored() {
        assert_eq!(running_min(&[-1.0, 0.3, 0.1, 0.4], 1), 0.1);
        assert_eq!(running_min(&[-1.0, 0.3], 2), f32::INFINITY);
        // Dropped at θ iff running_min < θ: the two rules agree on either side of the minimum.
        let q = [0.9f32, 0.25, 0.4];
        for threshold in [0.2, 0.25, 0.2500001, 0.3] {
            assert_eq!(
                first_below(&q, 0, threshold).is_some(),
                f64::from(running_min(&q, 0)) < threshold,
                "{threshold}"
            );
        }
    }

    #[test]
    fn percentile_is_numpy_linear() {
        // np.percentile([1, 2, 3, 4], 50) = 2.5; 10 → position 0.3 → 1.3; 0 → 1; 100 → 4.
        let values = [4.0f32, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&values, 50.0), Some(2.5));
        assert!((percentile(&values, 10.0).unwrap() - 1.3).abs() < 1e-12);
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&values, 100.0), Some(4.0));
        assert_eq!(percentile(&[0.5], 37.0), Some(0.5));
        assert_eq!(percentile(&[], 50.0), None);
    }

    fn sample(is_correct: bool, q_values: &[f32]) -> Sample<'_> {
        Sample {
            is_correct,
            answer: Some(if is_correct { "1" } else { "2" }),
            q_values,
            reward: 0.0,
        }
    }

    #[test]
    fn warmup_rule_hand_computed() {
        // skip 1, K = 3, P = 50. Warm-up running minima (after the first token): 0.4, 0.2,
        // and 0.6 → sorted 0.2, 0.4, 0.6 → the median 0.4. Later samples: min 0.3 < 0.4 →
        // dropped; min 0.5 → kept. The second question has 2 ≤ K samples: nothing filtered.
        let q = [
            [-1.0f32, 0.4, 0.9],
            [0.9, 0.2, 0.8],
            [0.9, 0.6, 0.7],
            [0.9, 0.3, 0.9],
            [-5.0, 0.5, 0.9],
        ];
        let first: Vec<Sample> = vec![
            sample(true, &q[0]),
            sample(false, &q[1]),
            sample(true, &q[2]),
            sample(true, &q[3]),
            sample(false, &q[4]),
        ];
        let second = vec![sample(false, &q[1]), sample(true, &q[3])];
        let questions = vec![first, second];
        let thresholds = warmup_thresholds(&questions, 3, 1, 50.0);
        let theta = f64::from(0.4f32);
        assert_eq!(
            thresholds,
            vec![
                vec![None, None, None, Some(theta), Some(theta)],
                vec![None, None],
            ]
        );
        // Only the two later samples are under a threshold: the correct one (min 0.3) is
        // dropped, the wrong one (min 0.5) is not.
        assert_eq!(
            drop_counts(&questions, &thresholds, 1),
            DropCounts {
                correct: 1,
                correct_dropped: 1,
                wrong: 1,
                wrong_dropped: 0,
            }
        );
        // P = 0 → the smallest warm-up minimum, 0.2: nothing later is below it.
        let conservative = warmup_thresholds(&questions, 3, 1, 0.0);
        assert_eq!(drop_counts(&questions, &conservative, 1).correct_dropped, 0);
        // Warm-up samples without scored tokens: θ = −∞.
        let empty = [0.5f32];
        let bare = vec![vec![sample(true, &empty), sample(true, &q[3])]];
        assert_eq!(
            warmup_thresholds(&bare, 1, 1, 50.0),
            vec![vec![None, Some(f64::NEG_INFINITY)]]
        );
    }

    /// Exchangeable data: every correct sample's Q-values are i.i.d. draws; `ties` rounds them
    /// to one decimal so that scores tie often.
    fn synthetic_questions(rng: &mut ChaCha8Rng, questions: usize, ties: bool) -> Vec<Vec<f32>> {
        (0..questions)
            .map(|_| {
                (0..8)
                    .map(|_| {
                        let q: f32 = rng.random_range(-1.0..1.0);
                        if ties {
                            (q * 10.0).round() / 10.0
                        } else {
                            q
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn realised_false_drop_rate_averages_at_most_alpha_over_seeded_splits() {
        // 116 questions with one correct sample each, half (58) calibration: n = 58, α = 0.1
        // → k = ⌊5.9⌋ = 5, so E[false-drop rate] = k/(n + 1) = 5/59 ≈ 0.0847 ≤ 0.1 (exact
        // without ties, lower with them). Over 400 seeded splits of fresh data the mean
        // realised rate on the 58 test samples stays below α, and near 5/59 without ties.
        let alpha = 0.1;
        for ties in [false, true] {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let mut rates = Vec::new();
            for split in 0..400u64 {
                let data = synthetic_questions(&mut rng, 116, ties);
                let ids: Vec<String> = (0..data.len()).map(|i| format!("q{i}")).collect();
                let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let calibration =
                    crate::pipeline::pairs::split_questions(&id_refs, 0.5, split).unwrap();
                let (mut scores, mut test) = (Vec::new(), Vec::new());
                for (id, q) in ids.iter().zip(&data) {
                    if calibration.contains(id) {
                        scores.push(running_min(q, 5));
                    } else {
                        test.push(vec![sample(true, q)]);
                    }
                }
                assert_eq!((scores.len(), test.len()), (58, 58));
                let chosen = conformal_threshold(&scores, alpha);
                assert_eq!(chosen.rank, 5);
                let thresholds = vec![vec![Some(chosen.threshold)]; test.len()];
                let counts = drop_counts(&test, &thresholds, 5);
                rates.push(counts.correct_dropped as f64 / counts.correct as f64);
            }
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            assert!(mean <= alpha, "ties {ties}: mean false-drop rate {mean}");
            if !ties {
                assert!((mean - 5.0 / 59.0).abs() < 0.01, "mean {mean}");
            } else {
                assert!(mean > 0.02, "ties: mean {mean} (the rule still drops)");
            }
        }
    }
}

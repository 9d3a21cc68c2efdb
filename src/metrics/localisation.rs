//! Error localisation: where, relative to a wrong sample's first mistake, does Q-filtering drop
//! it? No peer reports this; it needs data whose first wrong step is known (qrm-synth's
//! `first_error_char`).
//!
//! A sample is dropped at the first token, after `skip`, whose Q-value is below the threshold
//! (the rule of [`crate::metrics::filter`]). Its error token is the token that holds the char
//! `first_error_char`. A drop at or after the error token found the mistake no earlier than it
//! could be seen; a drop before it was a guess (or a reaction to something else).

use crate::metrics::filter::first_below;
use crate::metrics::stats::median;

/// One scored sample with what localisation needs.
#[derive(Debug, Clone, Copy)]
pub struct LocatedSample<'a> {
    pub is_correct: bool,
    /// Char offset of the first wrong line; `None` for correct samples, and for wrong ones whose
    /// mistake is not located (those are left out).
    pub first_error_char: Option<u64>,
    /// Q-value of each scored token.
    pub q_values: &'a [f32],
    /// Char offset where each scored token starts (ascending).
    pub token_offsets: &'a [u32],
}

/// The index of the token that holds char `error_char`: the last token starting at or before
/// it (0 when the first token starts after it).
pub fn error_token(token_offsets: &[u32], error_char: u64) -> usize {
    token_offsets
        .partition_point(|&start| u64::from(start) <= error_char)
        .saturating_sub(1)
}

/// The error-localisation table for one group. Percentages are in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalisationSummary {
    /// Wrong samples with a located first error.
    pub wrong_samples: usize,
    /// Of those, the percentage dropped by the filter.
    pub wrong_dropped_pct: f64,
    /// Of the dropped wrong samples, the percentage dropped at or after the error token.
    pub at_or_after_error_pct: f64,
    /// Median number of tokens from the error token to the drop, over drops at or after it.
    pub median_tokens_after: Option<f64>,
    /// Median number of tokens from the drop to the error token, over drops before it.
    pub median_tokens_before: Option<f64>,
    /// Median position of the error token in the response, in tokens (the scale of the above).
    pub median_error_token: Option<f64>,
    pub correct_samples: usize,
    /// Percentage of correct samples dropped.
    pub correct_dropped_pct: f64,
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        f64::NAN
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Localises the drops of `samples` under (`skip`, `threshold`). `None` when no sample is
/// correct or wrong-and-located.
pub fn localisation_summary(
    samples: &[LocatedSample],
    skip: usize,
    threshold: f64,
) -> Option<LocalisationSummary> {
    summarise(samples, skip, |_| Some(threshold))
}

/// [`localisation_summary`] with a threshold per sample (`thresholds[i]` for `samples[i]`);
/// `None` keeps the sample unconditionally (a warm-up sample), and so does
/// `f64::NEG_INFINITY`. Such samples still count in `wrong_samples`/`correct_samples`.
pub fn localisation_summary_at(
    samples: &[LocatedSample],
    skip: usize,
    thresholds: &[Option<f64>],
) -> Option<LocalisationSummary> {
    summarise(samples, skip, |index| thresholds[index])
}

fn summarise(
    samples: &[LocatedSample],
    skip: usize,
    threshold_of: impl Fn(usize) -> Option<f64>,
) -> Option<LocalisationSummary> {
    let (mut correct, mut correct_dropped) = (0usize, 0usize);
    let (mut wrong, mut wrong_dropped) = (0usize, 0usize);
    let (mut after, mut before, mut error_tokens) = (Vec::new(), Vec::new(), Vec::new());
    for (index, sample) in samples.iter().enumerate() {
        let drop = threshold_of(index)
            .and_then(|threshold| first_below(sample.q_values, skip, threshold))
            .map(|index| skip + index);
        if sample.is_correct {
            correct += 1;
            correct_dropped += usize::from(drop.is_some());
            continue;
        }
        let Some(error_char) = sample.first_error_char else {
            continue;
        };
        wrong += 1;
        let error = error_token(sample.token_offsets, error_char);
        error_tokens.push(error as f64);
        if let Some(drop) = drop {
            wrong_dropped += 1;
            if drop >= error {
                after.push((drop - error) as f64);
            } else {
                before.push((error - drop) as f64);
            }
        }
    }
    if correct + wrong == 0 {
        return None;
    }
    Some(LocalisationSummary {
        wrong_samples: wrong,
        wrong_dropped_pct: percent(wrong_dropped, wrong),
        at_or_after_error_pct: percent(after.len(), wrong_dropped),
        median_tokens_after: median(&after),
        median_tokens_before: median(&before),
        median_error_token: median(&error_tokens),
        correct_samples: correct,
        correct_dropped_pct: percent(correct_dropped, correct),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_token_is_the_token_holding_the_char() {
        // Tokens "ab" "c" "de": starts 0, 2, 3.
        let offsets = [0, 2, 3];
        assert_eq!(error_token(&offsets, 0), 0);
        assert_eq!(error_token(&offsets, 1), 0);
        assert_eq!(error_token(&offsets, 2), 1);
        assert_eq!(error_token(&offsets, 4), 2);
        assert_eq!(error_token(&offsets, 99), 2);
        assert_eq!(error_token(&[3, 5], 1), 0);
    }

    #[test]
    fn summary_counts_drops_before_and_after_the_error_by_hand() {
        let offsets = [0, 10, 20, 30, 40, 50];
        let low = |at: usize| {
            let mut q = vec![0.5f32; 6];
            q[at] = -0.1;
            q
        };
        let never = vec![0.5f32; 6];
        let (q4, q1, q5, q2) = (low(4), low(1), low(5), low(2));
        let samples = [
            // error in token 2 (char 25 → start 20), dropped at 4: 2 tokens after.
            LocatedSample {
                is_correct: false,
                first_error_char: Some(25),
                q_values: &q4,
                token_offsets: &offsets,
            },
            // error in token 3, dropped at 1: 2 tokens before.
            LocatedSample {
                is_correct: false,
                first_error_char: Some(30),
                q_values: &q1,
                token_offsets: &offsets,
            },
            // error in token 1, dropped at 5: 4 after.
            LocatedSample {
                is_correct: false,
                first_error_char: Some(10),
                q_values: &q5,
                token_offsets: &offsets,
            },
            // error in token 0, never dropped.
            LocatedSample {
                is_correct: false,
                first_error_char: Some(0),
                q_values: &never,
                token_offsets: &offsets,
            },
            // wrong without a located error: left out.
            LocatedSample {
                is_correct: false,
                first_error_char: None,
                q_values: &q1,
                token_offsets: &offsets,
            },
            // correct: one dropped of two.
            LocatedSample {
                is_correct: true,
                first_error_char: None,
                q_values: &q2,
                token_offsets: &offsets,
            },
            LocatedSample {
                is_correct: true,
                first_error_char: None,
                q_values: &never,
                token_offsets: &offsets,
            },
        ];
        let summary = localisation_summary(&samples, 0, 0.0).unwrap();
        assert_eq!(summary.wrong_samples, 4);
        assert_eq!(summary.wrong_dropped_pct, 75.0); // 3 of 4
        assert!((summary.at_or_after_error_pct - 200.0 / 3.0).abs() < 1e-12); // 2 of 3
        assert_eq!(summary.median_tokens_after, Some(3.0)); // median(2, 4)
        assert_eq!(summary.median_tokens_before, Some(2.0));
        assert_eq!(summary.median_error_token, Some(1.5)); // median(2, 3, 1, 0)
        assert_eq!(summary.correct_samples, 2);
        assert_eq!(summary.correct_dropped_pct, 50.0);
        // With skip 3 the drops at 1 and 2 are not seen: wrong ones dropped at 4 and 5 remain.
        let skipped = localisation_summary(&samples, 3, 0.0).unwrap();
        assert_eq!(skipped.wrong_dropped_pct, 50.0);
        assert_eq!(skipped.correct_dropped_pct, 0.0);
    }

    #[test]
    fn no_samples_no_summary() {
        assert_eq!(localisation_summary(&[], 0, 0.0), None);
    }
}

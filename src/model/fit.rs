//! `qrm-train` end to end: pairs file → tokenised pairs → (cached frozen trunk) → [`train`] →
//! checkpoint directory.
//!
//! [`train`]: crate::model::train::train

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::model::template::{Encoded, Encoder, Truncated, TruncationCounts};
use crate::model::train::{EncodedPair, EncodedResponse};
use crate::pipeline::schema::Pair;

fn response(encoded: Encoded) -> EncodedResponse {
    EncodedResponse {
        input_ids: encoded.input_ids,
        response_start: encoded.response_start,
    }
}

/// Tokenises pairs with the shared template and EOS policy. A pair is dropped when either side
/// is skipped by the truncation policy or has no token to read a reward at; the counts say how
/// many of each truncation case occurred.
pub fn encode_pairs(
    encoder: &Encoder,
    pairs: &[Pair],
) -> Result<(Vec<EncodedPair>, TruncationCounts)> {
    let mut counts = TruncationCounts::default();
    let mut encoded = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let chosen = encoder.encode(&pair.question, &pair.chosen)?;
        let rejected = encoder.encode(&pair.question, &pair.rejected)?;
        counts.add(chosen.truncated);
        counts.add(rejected.truncated);
        let usable = |e: &Encoded| e.truncated != Truncated::Skipped && e.scored_len() > 0;
        if usable(&chosen) && usable(&rejected) {
            encoded.push(EncodedPair {
                chosen: response(chosen),
                rejected: response(rejected),
                margin: pair.margin,
            });
        }
    }
    Ok((encoded, counts))
}

/// Splits pairs into (train, eval) by question, so no eval question is seen in training:
/// ⌈fraction · questions⌉ questions, drawn with `seed`, go to eval (at least one when the
/// fraction is positive and there are two questions or more).
pub fn split_by_question(pairs: Vec<Pair>, fraction: f64, seed: u64) -> (Vec<Pair>, Vec<Pair>) {
    if fraction <= 0.0 {
        return (pairs, Vec::new());
    }
    let mut questions: Vec<String> = pairs
        .iter()
        .map(|pair| pair.question_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    questions.shuffle(&mut rng);
    let eval_count = ((fraction * questions.len() as f64).ceil() as usize)
        .min(questions.len().saturating_sub(1))
        .max(usize::from(questions.len() > 1));
    let eval_questions: BTreeSet<String> = questions.into_iter().take(eval_count).collect();
    pairs
        .into_iter()
        .partition(|pair| !eval_questions.contains(&pair.question_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(question_id: &str, index: usize) -> Pair {
        Pair {
            pair_id: format!("{question_id}-{index}"),
            question_id: question_id.into(),
            ..Pair::default()
        }
    }

    #[test]
    fn split_keeps_questions_on_one_side() {
        let pairs: Vec<Pair> = (0..40).map(|i| pair(&format!("q{}", i % 10), i)).collect();
        let (train, eval) = split_by_question(pairs, 0.2, 1);
        let train_questions: BTreeSet<_> = train.iter().map(|p| p.question_id.clone()).collect();
        let eval_questions: BTreeSet<_> = eval.iter().map(|p| p.question_id.clone()).collect();
        assert_eq!(eval_questions.len(), 2); // ⌈0.2·10⌉
        assert!(train_questions.is_disjoint(&eval_questions));
        assert_eq!(train.len() + eval.len(), 40);
        assert_eq!(eval.len(), 8);
    }

    #[test]
    fn split_is_seeded() {
        let pairs: Vec<Pair> = (0..30).map(|i| pair(&format!("q{i}"), i)).collect();
        let ids = |seed| {
            let (_, eval) = split_by_question(pairs.clone(), 0.1, seed);
            eval.into_iter().map(|p| p.pair_id).collect::<Vec<_>>()
        };
        assert_eq!(ids(3), ids(3));
        assert_ne!(ids(3), ids(4));
    }
}

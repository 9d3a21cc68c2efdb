//! Within-group (stratified) AUROC: the probability that a random positive beats a random
//! negative **of the same group** (e.g. the same question), with a cluster bootstrap interval
//! and a paired cluster-bootstrap comparison of two scores.
//!
//! `A_w = Σ_g U_g / Σ_g P_g·N_g`, with U_g the Mann–Whitney count of group g (its (positive,
//! negative) pairs with the positive scored higher, ties counting ½; [`auroc::mann_whitney`])
//! and P_g, N_g its positives and negatives. A group with one class has no pairs and contributes
//! nothing; it is counted, not used. Each pair weighs the same, so a group weighs P_g·N_g (not
//! the mean of per-group AUROCs). With one group A_w is the pooled AUROC; a per-group offset
//! added to every score of a group leaves A_w unchanged, which is the point: majority voting
//! and Q-filtering compare samples of one question, and a question-level reward offset (easy
//! questions scoring high) moves the pooled AUROC but not what they depend on.
//!
//! Interval (cluster bootstrap): each resample draws the informative groups (those with both
//! classes) with replacement, as many as there are, and recomputes A_w from their (U_g, P_g·N_g);
//! the interval is the percentile interval at `level` (the quantiles at (1 − level)/2 and
//! (1 + level)/2, linear interpolation: [`auroc::quantile_sorted`]). The generator is
//! `ChaCha8Rng::seed_from_u64(seed)`, as in [`auroc::bootstrap_interval`]. Rows of one group are
//! never split, so the dependence between a question's samples (shared phrasing, repeated
//! texts) is kept in every resample.
//!
//! Paired comparison of scores A and B of the same items: the same resampled groups give
//! Δ* = A_w* − B_w* per resample; the interval is Δ*'s percentile interval and the two-sided
//! p-value is `min(1, 2·(1 + min(#{Δ* ≤ 0}, #{Δ* ≥ 0})) / (B + 1))` (the percentile interval
//! inverted at 0, with the +1 that keeps a finite resample count from claiming p = 0). Two
//! identical scores give Δ* = 0 throughout and p = 1.
//!
//! Every function takes plain slices of equal length n: `scores[i]` (finite; callers reject
//! NaN), `labels[i]` (true = positive) and `groups[i]` (any ordered key).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::metrics::auroc::{self, mann_whitney};

/// Why a within-group AUROC is undefined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Undefined {
    #[error("scores, labels and groups differ in length ({scores}, {labels}, {groups})")]
    Lengths {
        scores: usize,
        labels: usize,
        groups: usize,
    },
    #[error("no group has both classes ({groups} group(s), each all positive or all negative)")]
    NoInformativeGroup { groups: usize },
    #[error("no bootstrap resamples asked for")]
    NoResamples,
}

/// A within-group AUROC and what it was computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WithinAuroc {
    /// Σ_g U_g / Σ_g P_g·N_g.
    pub auroc: f64,
    /// Distinct groups in the input.
    pub groups: usize,
    /// Groups with both classes (the ones that count).
    pub informative: usize,
    /// Σ_g P_g·N_g: the (positive, negative) pairs compared.
    pub pairs: u128,
}

/// A cluster-bootstrap percentile interval; with a second score, of the difference A − B, with
/// its two-sided bootstrap p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WithinInterval {
    pub low: f64,
    pub high: f64,
    /// Paired comparisons only.
    pub p_value: Option<f64>,
}

/// Per informative group, in key order: (2·U_g, P_g·N_g); and the number of groups.
fn group_counts<G: Ord>(
    scores: &[f64],
    labels: &[bool],
    groups: &[G],
) -> Result<(Vec<(u128, u128)>, usize), Undefined> {
    if scores.len() != labels.len() || groups.len() != labels.len() {
        return Err(Undefined::Lengths {
            scores: scores.len(),
            labels: labels.len(),
            groups: groups.len(),
        });
    }
    let mut members: BTreeMap<&G, Vec<usize>> = BTreeMap::new();
    for (index, group) in groups.iter().enumerate() {
        members.entry(group).or_default().push(index);
    }
    let mut counts = Vec::with_capacity(members.len());
    for rows in members.values() {
        let group_scores: Vec<f64> = rows.iter().map(|&i| scores[i]).collect();
        let group_labels: Vec<bool> = rows.iter().map(|&i| labels[i]).collect();
        if let Some(count) = mann_whitney(&group_scores, &group_labels) {
            counts.push((count.twice_u, count.pairs()));
        }
    }
    if counts.is_empty() {
        return Err(Undefined::NoInformativeGroup {
            groups: members.len(),
        });
    }
    Ok((counts, members.len()))
}

/// A_w of `scores` against `labels` within `groups`.
///
/// # Shapes
/// `scores`, `labels`, `groups`: (n,) each → one [`WithinAuroc`].
///
/// Errors: lengths differ; no group has both classes.
pub fn within_auroc<G: Ord>(
    scores: &[f64],
    labels: &[bool],
    groups: &[G],
) -> Result<WithinAuroc, Undefined> {
    let (counts, groups) = group_counts(scores, labels, groups)?;
    let twice_u: u128 = counts.iter().map(|c| c.0).sum();
    let pairs: u128 = counts.iter().map(|c| c.1).sum();
    Ok(WithinAuroc {
        auroc: twice_u as f64 / (2.0 * pairs as f64),
        groups,
        informative: counts.len(),
        pairs,
    })
}

/// Cluster-bootstrap percentile interval of A_w (module doc), or with `scores_b` of
/// A_w(scores) − A_w(scores_b) with its two-sided p-value; `resamples` resamples of the
/// informative groups, seeded by `seed`.
///
/// # Shapes
/// `scores`, `scores_b`, `labels`, `groups`: (n,) each → one [`WithinInterval`]. O(n log n)
/// once, then O(groups) per resample.
///
/// Errors: lengths differ; no group has both classes; `resamples` is 0.
pub fn within_bootstrap<G: Ord>(
    scores: &[f64],
    scores_b: Option<&[f64]>,
    labels: &[bool],
    groups: &[G],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<WithinInterval, Undefined> {
    let (counts_a, _) = group_counts(scores, labels, groups)?;
    // Same labels and groups: the informative groups of B are those of A, in the same order.
    let counts_b = scores_b
        .map(|b| group_counts(b, labels, groups).map(|(counts, _)| counts))
        .transpose()?;
    if resamples == 0 {
        return Err(Undefined::NoResamples);
    }
    let as_f64 = |counts: &[(u128, u128)]| -> Vec<(f64, f64)> {
        counts
            .iter()
            .map(|&(twice_u, pairs)| (twice_u as f64 / 2.0, pairs as f64))
            .collect()
    };
    let a = as_f64(&counts_a);
    let b = counts_b.as_deref().map(as_f64);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut statistics = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let (mut u_a, mut u_b, mut pairs) = (0.0, 0.0, 0.0);
        for _ in 0..a.len() {
            let group = rng.random_range(0..a.len());
            u_a += a[group].0;
            pairs += a[group].1;
            if let Some(b) = &b {
                u_b += b[group].0;
            }
        }
        let mut statistic = u_a / pairs;
        if b.is_some() {
            statistic -= u_b / pairs;
        }
        statistics.push(statistic);
    }
    let p_value = b.is_some().then(|| {
        let at_or_below = statistics.iter().filter(|&&d| d <= 0.0).count();
        let at_or_above = statistics.iter().filter(|&&d| d >= 0.0).count();
        let tail = at_or_below.min(at_or_above) as f64;
        (2.0 * (1.0 + tail) / (resamples as f64 + 1.0)).min(1.0)
    });
    statistics.sort_unstable_by(f64::total_cmp);
    Ok(WithinInterval {
        low: auroc::quantile_sorted(&statistics, (1.0 - level) / 2.0),
        high: auroc::quantile_sorted(&statistics, (1.0 + level) / 2.0),
        p_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::auroc::auroc;

    /// Two groups of different sizes (the example of the tests below).
    /// Group "a": positives 0.9, 0.4; negative 0.5.  Group "b": positive 0.2; negatives 0.1,
    /// 0.0, 0.3.
    fn two_groups() -> (Vec<f64>, Vec<bool>, Vec<&'static str>) {
        let scores = vec![0.9, 0.4, 0.5, 0.2, 0.1, 0.0, 0.3];
        let labels = vec![true, true, false, true, false, false, false];
        let groups = vec!["a", "a", "a", "b", "b", "b", "b"];
        (scores, labels, groups)
    }

    #[test]
    fn hand_computed_two_groups_weigh_by_pairs() {
        let (scores, labels, groups) = two_groups();
        // a: 0.9 > 0.5 wins, 0.4 < 0.5 loses → U_a = 1 of P·N = 2·1 = 2.
        // b: 0.2 beats 0.1 and 0.0, loses to 0.3 → U_b = 2 of 1·3 = 3.
        // A_w = (1 + 2) / (2 + 3) = 0.6 (the mean of per-group AUROCs, (½ + ⅔)/2 ≈ 0.583, is
        // not it).
        let within = within_auroc(&scores, &labels, &groups).unwrap();
        assert_eq!(within.auroc, 0.6);
        assert_eq!((within.groups, within.informative, within.pairs), (2, 2, 5));
        // Pooled: 0.9 beats all 4 negatives, 0.4 beats 0.1, 0.0, 0.3 (3), 0.2 beats 0.1, 0.0
        // (2) → 9 of 3·4 = 12 = 0.75.
        assert_eq!(auroc(&scores, &labels), Some(0.75));
    }

    #[test]
    fn ties_within_a_group_count_one_half() {
        // One group: positive 0.5 tied with negative 0.5, above negative 0.1 → U = ½ + 1 = 1.5
        // of 2 = 0.75.
        let within = within_auroc(&[0.5, 0.5, 0.1], &[true, false, false], &[7, 7, 7]).unwrap();
        assert_eq!(within.auroc, 0.75);
    }

    fn random_items(seed: u64, n: usize, groups: u32) -> (Vec<f64>, Vec<bool>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Multiples of 1/8: exact, so integer offsets below cannot create or break ties.
        let scores: Vec<f64> = (0..n)
            .map(|_| rng.random_range(-40..40) as f64 / 8.0)
            .collect();
        let labels: Vec<bool> = scores
            .iter()
            .map(|&s| rng.random_bool(0.5) ^ (s > 1.0))
            .collect();
        let keys: Vec<u32> = (0..n).map(|_| rng.random_range(0..groups)).collect();
        (scores, labels, keys)
    }

    #[test]
    fn one_group_is_the_pooled_auroc() {
        let (scores, labels, _) = random_items(11, 300, 1);
        let within = within_auroc(&scores, &labels, &vec![0u8; 300]).unwrap();
        assert_eq!(Some(within.auroc), auroc(&scores, &labels));
        assert_eq!((within.groups, within.informative), (1, 1));
    }

    #[test]
    fn a_per_group_offset_leaves_it_unchanged_and_moves_the_pooled_auroc() {
        let (scores, labels, groups) = random_items(5, 400, 12);
        // Group g gets +20 per positive it has: questions with many correct samples (easy
        // ones) score high, so the pooled AUROC rises.
        let mut positives = [0.0; 12];
        for (&label, &g) in labels.iter().zip(&groups) {
            positives[g as usize] += f64::from(u8::from(label));
        }
        let shifted: Vec<f64> = scores
            .iter()
            .zip(&groups)
            .map(|(&s, &g)| s + 20.0 * positives[g as usize])
            .collect();
        let before = within_auroc(&scores, &labels, &groups).unwrap();
        let after = within_auroc(&shifted, &labels, &groups).unwrap();
        assert_eq!(before, after);
        let (pooled_before, pooled_after) = (
            auroc(&scores, &labels).unwrap(),
            auroc(&shifted, &labels).unwrap(),
        );
        assert!(
            (pooled_before - pooled_after).abs() > 0.01,
            "{pooled_before} {pooled_after}"
        );
    }

    #[test]
    fn single_class_groups_are_counted_and_ignored() {
        let (mut scores, mut labels, mut groups) = two_groups();
        // Group "c": all correct, scored far above everything; group "d": all wrong, far below.
        scores.extend([5.0, 6.0, -5.0]);
        labels.extend([true, true, false]);
        groups.extend(["c", "c", "d"]);
        let within = within_auroc(&scores, &labels, &groups).unwrap();
        assert_eq!(within.auroc, 0.6);
        assert_eq!((within.groups, within.informative, within.pairs), (4, 2, 5));
    }

    #[test]
    fn all_single_class_groups_are_an_error() {
        let error =
            within_auroc(&[0.1, 0.2, 0.3], &[true, true, false], &["a", "a", "b"]).unwrap_err();
        assert_eq!(error, Undefined::NoInformativeGroup { groups: 2 });
        assert!(error
            .to_string()
            .contains("no group has both classes (2 group(s)"));
        let bootstrap = within_bootstrap(&[0.1], None, &[true], &[0], 10, 0.95, 0);
        assert_eq!(bootstrap, Err(Undefined::NoInformativeGroup { groups: 1 }));
        assert!(matches!(
            within_auroc(&[0.1], &[true, false], &[0, 0]),
            Err(Undefined::Lengths { .. })
        ));
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_estimate() {
        let (scores, labels, groups) = random_items(3, 200, 25);
        let estimate = within_auroc(&scores, &labels, &groups).unwrap().auroc;
        let first = within_bootstrap(&scores, None, &labels, &groups, 500, 0.95, 9).unwrap();
        let second = within_bootstrap(&scores, None, &labels, &groups, 500, 0.95, 9).unwrap();
        let other = within_bootstrap(&scores, None, &labels, &groups, 500, 0.95, 10).unwrap();
        assert_eq!(first, second);
        assert_ne!(first, other);
        assert!(
            first.low < estimate && estimate < first.high,
            "{first:?} {estimate}"
        );
        assert_eq!(first.p_value, None);
        // A narrower level gives a narrower interval from the same resamples.
        let narrow = within_bootstrap(&scores, None, &labels, &groups, 500, 0.5, 9).unwrap();
        assert!(first.low <= narrow.low && narrow.high <= first.high);
    }

    #[test]
    fn one_informative_group_has_a_point_interval() {
        // "a" (0.9, 0.4 both made positive) and "c" (one row) have one class; only "b" has both
        // (U = 2 of 3). Every resample draws "b": the interval is its AUROC, ⅔.
        let (scores, labels, _) = two_groups();
        let groups = ["a", "a", "c", "b", "b", "b", "b"];
        let labels: Vec<bool> = labels
            .iter()
            .zip(&groups)
            .map(|(&l, &g)| l || g == "c")
            .collect();
        let interval = within_bootstrap(&scores, None, &labels, &groups, 50, 0.95, 0).unwrap();
        assert_eq!((interval.low, interval.high), (2.0 / 3.0, 2.0 / 3.0));
    }

    #[test]
    fn paired_with_itself_is_zero_with_p_one() {
        let (scores, labels, groups) = random_items(8, 120, 10);
        let paired =
            within_bootstrap(&scores, Some(&scores), &labels, &groups, 200, 0.95, 1).unwrap();
        assert_eq!(
            (paired.low, paired.high, paired.p_value),
            (0.0, 0.0, Some(1.0))
        );
    }

    #[test]
    fn paired_difference_of_a_better_score_is_significant() {
        // A ranks every group perfectly (score = label); B is A with a seeded half of the groups
        // inverted. Δ* > 0 in (nearly) every resample → p at its floor 2/(B + 1).
        let (_, labels, groups) = random_items(4, 300, 30);
        let a: Vec<f64> = labels.iter().map(|&l| f64::from(u8::from(l))).collect();
        let b: Vec<f64> = a
            .iter()
            .zip(&groups)
            .map(|(&s, &g)| if g % 2 == 0 { -s } else { s })
            .collect();
        let estimate = within_auroc(&a, &labels, &groups).unwrap().auroc
            - within_auroc(&b, &labels, &groups).unwrap().auroc;
        let paired = within_bootstrap(&a, Some(&b), &labels, &groups, 999, 0.95, 2).unwrap();
        assert!(paired.low > 0.0 && paired.low < estimate && estimate < paired.high);
        assert_eq!(paired.p_value, Some(2.0 / 1000.0));
        // Swapped, the difference changes sign and the p-value is the same.
        let swapped = within_bootstrap(&b, Some(&a), &labels, &groups, 999, 0.95, 2).unwrap();
        assert!(
            (swapped.low + paired.high).abs() < 1e-12,
            "{swapped:?} {paired:?}"
        );
        assert!(
            (swapped.high + paired.low).abs() < 1e-12,
            "{swapped:?} {paired:?}"
        );
        assert_eq!(swapped.p_value, paired.p_value);
    }

    #[test]
    fn no_resamples_is_an_error() {
        let (scores, labels, groups) = two_groups();
        assert_eq!(
            within_bootstrap(&scores, None, &labels, &groups, 0, 0.95, 0),
            Err(Undefined::NoResamples)
        );
    }
}

//! Area under the ROC curve: exact and tie-aware, with DeLong variances, paired DeLong
//! comparisons and stratified bootstrap intervals.
//!
//! Every function takes plain slices: `scores[i]` is the score of item `i`, `labels[i]` whether
//! it is a positive (a correct response). Scores must be finite; callers reject NaN first.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use statrs::distribution::{ContinuousCDF, Normal};

/// AUROC of `scores` against binary `labels` (true = positive), equal to scikit-learn's
/// `roc_auc_score`: the Mann–Whitney U statistic over n_pos·n_neg, ties counting one half.
///
/// Returns `None` when either class is absent (AUROC is undefined) or lengths differ.
/// Scores must be finite; NaNs sort last and are the caller's to reject.
///
/// O(n log n) in general, O(n) in practice: positives and negatives are radix-sorted apart
/// and merged, and U is accumulated in integers (twice U), so the result is exact up to one
/// final division.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    mann_whitney(scores, labels).map(|counts| counts.auroc())
}

/// The Mann–Whitney count of one score: `twice_u` = 2·U, U the number of (positive,
/// negative) pairs with the positive scored higher, ties counting one half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MannWhitney {
    pub twice_u: u128,
    pub positives: usize,
    pub negatives: usize,
}

impl MannWhitney {
    /// positives · negatives.
    pub fn pairs(&self) -> u128 {
        self.positives as u128 * self.negatives as u128
    }

    /// U / (positives · negatives).
    pub fn auroc(&self) -> f64 {
        self.twice_u as f64 / (2.0 * self.positives as f64 * self.negatives as f64)
    }
}

/// The Mann–Whitney count behind [`auroc`]; `None` when a class is absent or lengths differ.
pub fn mann_whitney(scores: &[f64], labels: &[bool]) -> Option<MannWhitney> {
    if scores.len() != labels.len() {
        return None;
    }
    let mut positives = Vec::with_capacity(scores.len() / 2);
    let mut negatives = Vec::with_capacity(scores.len() / 2);
    for (&score, &label) in scores.iter().zip(labels) {
        if label {
            positives.push(sort_key(score));
        } else {
            negatives.push(sort_key(score));
        }
    }
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    radix_sort(&mut positives);
    radix_sort(&mut negatives);
    // twice_u = Σ over positives of (2·#negatives below + #negatives tied).
    let mut twice_u: u128 = 0;
    let mut below = 0usize;
    let mut start = 0;
    while start < positives.len() {
        let key = positives[start];
        let mut end = start + 1;
        while end < positives.len() && positives[end] == key {
            end += 1;
        }
        while below < negatives.len() && negatives[below] < key {
            below += 1;
        }
        let mut tied_end = below;
        while tied_end < negatives.len() && negatives[tied_end] == key {
            tied_end += 1;
        }
        let tied = tied_end - below;
        twice_u += ((end - start) as u128) * ((2 * below + tied) as u128);
        start = end;
    }
    Some(MannWhitney {
        twice_u,
        positives: positives.len(),
        negatives: negatives.len(),
    })
}

/// An order-preserving map from f64 to u64 (ascending keys = ascending scores, -0.0 = 0.0).
fn sort_key(score: f64) -> u64 {
    let bits = (score + 0.0).to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// Least-significant-digit radix sort of u64 keys, 11 bits per pass, skipping passes whose
/// digit is the same for every key (common for the high bits of scores in a narrow range).
fn radix_sort(keys: &mut Vec<u64>) {
    const BITS: usize = 11;
    const BUCKETS: usize = 1 << BITS;
    const PASSES: usize = 64_usize.div_ceil(BITS);
    if keys.len() < 4096 {
        keys.sort_unstable();
        return;
    }
    let mask = (BUCKETS - 1) as u64;
    let mut histograms = vec![[0usize; BUCKETS]; PASSES];
    for &key in keys.iter() {
        for (pass, histogram) in histograms.iter_mut().enumerate() {
            histogram[((key >> (pass * BITS)) & mask) as usize] += 1;
        }
    }
    let mut buffer = vec![0u64; keys.len()];
    for (pass, histogram) in histograms.iter().enumerate() {
        if histogram.contains(&keys.len()) {
            continue;
        }
        let mut offsets = [0usize; BUCKETS];
        let mut total = 0;
        for (offset, &count) in offsets.iter_mut().zip(histogram.iter()) {
            *offset = total;
            total += count;
        }
        for &key in keys.iter() {
            let digit = ((key >> (pass * BITS)) & mask) as usize;
            buffer[offsets[digit]] = key;
            offsets[digit] += 1;
        }
        std::mem::swap(keys, &mut buffer);
    }
}

/// DeLong's structural components of one score (Sun & Xu 2014): for each positive, the
/// fraction of negatives it outranks (ties ½), `v10`; for each negative, the fraction of
/// positives that outrank it, `v01`. Both are in the input order of their class.
#[derive(Debug, Clone, PartialEq)]
pub struct Placements {
    pub auroc: f64,
    pub v10: Vec<f64>,
    pub v01: Vec<f64>,
}

/// The placement values of `scores` (one sort, midranks via tie runs). `None` when a class
/// is absent or lengths differ.
pub fn placements(scores: &[f64], labels: &[bool]) -> Option<Placements> {
    if scores.len() != labels.len() {
        return None;
    }
    let positives = labels.iter().filter(|&&label| label).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Slot of each item within its own class, in input order.
    let mut slot = vec![0usize; labels.len()];
    let (mut next_positive, mut next_negative) = (0, 0);
    for (index, &label) in labels.iter().enumerate() {
        if label {
            slot[index] = next_positive;
            next_positive += 1;
        } else {
            slot[index] = next_negative;
            next_negative += 1;
        }
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by_key(|&index| sort_key(scores[index]));
    let mut v10 = vec![0.0; positives];
    let mut v01 = vec![0.0; negatives];
    let (m, n) = (positives as f64, negatives as f64);
    let (mut positives_below, mut negatives_below) = (0usize, 0usize);
    for run in tie_runs(&order, scores) {
        let tied_positives = run.iter().filter(|&&index| labels[index]).count();
        let tied_negatives = run.len() - tied_positives;
        let positives_above = positives - positives_below - tied_positives;
        let positive_value = (negatives_below as f64 + 0.5 * tied_negatives as f64) / n;
        let negative_value = (positives_above as f64 + 0.5 * tied_positives as f64) / m;
        for &index in run {
            if labels[index] {
                v10[slot[index]] = positive_value;
            } else {
                v01[slot[index]] = negative_value;
            }
        }
        positives_below += tied_positives;
        negatives_below += tied_negatives;
    }
    let auroc = v10.iter().sum::<f64>() / m;
    Some(Placements { auroc, v10, v01 })
}

/// Runs of equal scores in `order` (indices sorted by score).
fn tie_runs<'a>(order: &'a [usize], scores: &'a [f64]) -> impl Iterator<Item = &'a [usize]> {
    order.chunk_by(move |&a, &b| scores[a] + 0.0 == scores[b] + 0.0)
}

/// Sample covariance (ddof = 1) of two equally long slices.
fn covariance(xs: &[f64], ys: &[f64]) -> f64 {
    let count = xs.len() as f64;
    let mean_x = xs.iter().sum::<f64>() / count;
    let mean_y = ys.iter().sum::<f64>() / count;
    xs.iter()
        .zip(ys)
        .map(|(x, y)| (x - mean_x) * (y - mean_y))
        .sum::<f64>()
        / (count - 1.0)
}

/// AUROC with DeLong's variance estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeLong {
    pub auroc: f64,
    pub variance: f64,
}

impl DeLong {
    /// The normal interval `auroc ± z·sqrt(variance)` at `level` (e.g. 0.95), clipped to [0, 1].
    pub fn interval(&self, level: f64) -> (f64, f64) {
        let half_width = normal_quantile(level) * self.variance.sqrt();
        (
            (self.auroc - half_width).max(0.0),
            (self.auroc + half_width).min(1.0),
        )
    }
}

/// Two-sided standard normal quantile for a central interval at `level`.
fn normal_quantile(level: f64) -> f64 {
    Normal::standard().inverse_cdf(0.5 + level / 2.0)
}

/// DeLong's AUROC variance: Var = S10/m + S01/n, with S10 and S01 the sample variances of the
/// placement values of the m positives and n negatives.
///
/// `None` when a class has fewer than two members (the variance is undefined).
pub fn delong(scores: &[f64], labels: &[bool]) -> Option<DeLong> {
    let placements = placements(scores, labels)?;
    let (m, n) = (placements.v10.len(), placements.v01.len());
    if m < 2 || n < 2 {
        return None;
    }
    let variance = covariance(&placements.v10, &placements.v10) / m as f64
        + covariance(&placements.v01, &placements.v01) / n as f64;
    Some(DeLong {
        auroc: placements.auroc,
        variance,
    })
}

/// DeLong's paired comparison of two scores of the same items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedDeLong {
    pub a: DeLong,
    pub b: DeLong,
    /// Cov(AUROC_a, AUROC_b) = S10_ab/m + S01_ab/n.
    pub covariance: f64,
}

impl PairedDeLong {
    /// AUROC_a − AUROC_b.
    pub fn delta(&self) -> f64 {
        self.a.auroc - self.b.auroc
    }

    /// Var(AUROC_a − AUROC_b) = Var_a + Var_b − 2·Cov_ab.
    pub fn delta_variance(&self) -> f64 {
        self.a.variance + self.b.variance - 2.0 * self.covariance
    }

    /// Normal interval of the difference at `level` (not clipped).
    pub fn delta_interval(&self, level: f64) -> (f64, f64) {
        let half_width = normal_quantile(level) * self.delta_variance().max(0.0).sqrt();
        (self.delta() - half_width, self.delta() + half_width)
    }

    /// Two-sided p-value of H0: AUROC_a = AUROC_b, z = delta / sqrt(var). `None` when the
    /// variance of the difference is zero (e.g. identical rankings).
    pub fn p_value(&self) -> Option<f64> {
        let variance = self.delta_variance();
        if variance.is_nan() || variance <= 0.0 {
            return None;
        }
        let z = self.delta().abs() / variance.sqrt();
        Some(2.0 * Normal::standard().sf(z))
    }
}

/// Paired DeLong over two scores of the same items (same labels). `None` when lengths differ
/// or a class has fewer than two members.
pub fn delong_paired(scores_a: &[f64], scores_b: &[f64], labels: &[bool]) -> Option<PairedDeLong> {
    if scores_a.len() != scores_b.len() {
        return None;
    }
    let a = placements(scores_a, labels)?;
    let b = placements(scores_b, labels)?;
    let (m, n) = (a.v10.len() as f64, a.v01.len() as f64);
    if m < 2.0 || n < 2.0 {
        return None;
    }
    let variance = |p: &Placements| covariance(&p.v10, &p.v10) / m + covariance(&p.v01, &p.v01) / n;
    let covariance = covariance(&a.v10, &b.v10) / m + covariance(&a.v01, &b.v01) / n;
    Some(PairedDeLong {
        a: DeLong {
            auroc: a.auroc,
            variance: variance(&a),
        },
        b: DeLong {
            auroc: b.auroc,
            variance: variance(&b),
        },
        covariance,
    })
}

/// Percentile bootstrap of AUROC (or of AUROC_a − AUROC_b when `scores_b` is given),
/// stratified by class as pROC does: each resample draws n_pos positives and n_neg negatives
/// with replacement, so every resample has both classes.
///
/// Returns the `(low, high)` quantiles at (1 − level)/2 and (1 + level)/2 with linear
/// interpolation (NumPy's default). Each resample costs O(n) after one sort per score.
/// `None` when a class is absent, lengths differ or `resamples` is 0.
pub fn bootstrap_interval(
    scores: &[f64],
    scores_b: Option<&[f64]>,
    labels: &[bool],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    if scores.len() != labels.len() || resamples == 0 {
        return None;
    }
    if scores_b.is_some_and(|b| b.len() != labels.len()) {
        return None;
    }
    let positive_items: Vec<usize> = (0..labels.len()).filter(|&i| labels[i]).collect();
    let negative_items: Vec<usize> = (0..labels.len()).filter(|&i| !labels[i]).collect();
    if positive_items.is_empty() || negative_items.is_empty() {
        return None;
    }
    let sorted = |values: &[f64]| {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_unstable_by_key(|&index| sort_key(values[index]));
        order
    };
    let order_a = sorted(scores);
    let order_b = scores_b.map(sorted);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut weights = vec![0u32; labels.len()];
    let mut statistics = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        weights.fill(0);
        for items in [&positive_items, &negative_items] {
            for _ in 0..items.len() {
                weights[items[rng.random_range(0..items.len())]] += 1;
            }
        }
        let mut statistic = weighted_auroc(&order_a, scores, labels, &weights);
        if let (Some(order_b), Some(scores_b)) = (&order_b, scores_b) {
            statistic -= weighted_auroc(order_b, scores_b, labels, &weights);
        }
        statistics.push(statistic);
    }
    statistics.sort_unstable_by(f64::total_cmp);
    Some((
        quantile_sorted(&statistics, (1.0 - level) / 2.0),
        quantile_sorted(&statistics, (1.0 + level) / 2.0),
    ))
}

/// AUROC with integer item weights (bootstrap counts), over indices pre-sorted by score.
fn weighted_auroc(order: &[usize], scores: &[f64], labels: &[bool], weights: &[u32]) -> f64 {
    let (mut twice_u, mut negatives_below, mut positives) = (0u128, 0u64, 0u64);
    for run in tie_runs(order, scores) {
        let (mut tied_positives, mut tied_negatives) = (0u64, 0u64);
        for &index in run {
            if labels[index] {
                tied_positives += u64::from(weights[index]);
            } else {
                tied_negatives += u64::from(weights[index]);
            }
        }
        twice_u += u128::from(tied_positives) * u128::from(2 * negatives_below + tied_negatives);
        negatives_below += tied_negatives;
        positives += tied_positives;
    }
    twice_u as f64 / (2.0 * positives as f64 * negatives_below as f64)
}

/// Quantile `q` of ascending `sorted` values with linear interpolation (NumPy's default,
/// R's type 7).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q * (sorted.len() - 1) as f64;
    let lower = position.floor() as usize;
    let upper = (lower + 1).min(sorted.len() - 1);
    let fraction = position - lower as f64;
    if fraction == 0.0 {
        // On an order statistic: exact, even beside an infinite neighbour (0 · ∞ is NaN).
        return sorted[lower];
    }
    sorted[lower] + fraction * (sorted[upper] - sorted[lower])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_separation_is_one() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
    }

    #[test]
    fn ties_count_one_half() {
        // One positive and one negative, both 0.5: the single pair is tied, U = 0.5, AUROC 0.5.
        // Plus a positive at 0.9 above the negative: U = 0.5 + 1 = 1.5 over 2·1 pairs = 0.75.
        assert_eq!(auroc(&[0.5, 0.5, 0.9], &[true, false, true]), Some(0.75));
    }

    #[test]
    fn one_class_is_undefined() {
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(delong(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(
            bootstrap_interval(&[0.1, 0.2], None, &[true, true], 10, 0.95, 0),
            None
        );
    }

    #[test]
    fn empty_input_is_undefined() {
        assert_eq!(auroc(&[], &[]), None);
        assert_eq!(placements(&[], &[]), None);
    }

    #[test]
    fn all_equal_scores_are_one_half() {
        let labels = [true, false, true, false, false];
        assert_eq!(auroc(&[0.3; 5], &labels), Some(0.5));
        // Every placement is ½, so both variances are 0.
        let delong = delong(&[0.3; 5], &labels).unwrap();
        assert_eq!(delong.auroc, 0.5);
        assert_eq!(delong.variance, 0.0);
    }

    #[test]
    fn negative_zero_ties_with_zero() {
        // -0.0 and 0.0 are the same score: the pair is tied, AUROC ½.
        assert_eq!(auroc(&[-0.0, 0.0], &[true, false]), Some(0.5));
        assert_eq!(auroc(&[0.0, -0.0], &[true, false]), Some(0.5));
    }

    #[test]
    fn radix_path_matches_rank_sum() {
        // 10 000 items take the radix path; compare with the placement (comparison sort) path.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let scores: Vec<f64> = (0..10_000)
            .map(|_| (rng.random_range(-50..50) as f64) / 7.0)
            .collect();
        let labels: Vec<bool> = scores
            .iter()
            .map(|s| rng.random_bool(0.5) ^ (*s > 1.0))
            .collect();
        let fast = auroc(&scores, &labels).unwrap();
        let slow = placements(&scores, &labels).unwrap().auroc;
        assert!((fast - slow).abs() < 1e-12, "{fast} vs {slow}");
    }

    #[test]
    fn delong_hand_computed() {
        // Positives 0.9, 0.6; negatives 0.7, 0.2.
        // v10: 0.9 beats both negatives → 1; 0.6 beats 0.2 only → ½. AUROC = 0.75.
        // v01: 0.7 is beaten by 0.9 → ½; 0.2 by both → 1.
        // S10 = var(1, ½) = 0.125; S01 = 0.125; Var = 0.125/2 + 0.125/2 = 0.125.
        let result = delong(&[0.9, 0.7, 0.6, 0.2], &[true, false, true, false]).unwrap();
        assert_eq!(result.auroc, 0.75);
        assert!((result.variance - 0.125).abs() < 1e-15);
    }

    #[test]
    fn paired_with_itself_has_zero_difference_variance() {
        let scores = [0.9, 0.7, 0.6, 0.2, 0.4];
        let labels = [true, false, true, false, true];
        let paired = delong_paired(&scores, &scores, &labels).unwrap();
        assert_eq!(paired.delta(), 0.0);
        assert!(paired.delta_variance().abs() < 1e-15);
        assert_eq!(paired.p_value(), None);
    }

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_estimate() {
        let scores = [0.9, 0.7, 0.6, 0.2, 0.4, 0.8, 0.1, 0.55];
        let labels = [true, false, true, false, true, true, false, false];
        let first = bootstrap_interval(&scores, None, &labels, 500, 0.95, 3).unwrap();
        let second = bootstrap_interval(&scores, None, &labels, 500, 0.95, 3).unwrap();
        assert_eq!(first, second);
        let estimate = auroc(&scores, &labels).unwrap();
        assert!(
            first.0 <= estimate && estimate <= first.1,
            "{first:?} {estimate}"
        );
    }

    #[test]
    fn weighted_auroc_with_unit_weights_is_auroc() {
        let scores = [0.9, 0.7, 0.6, 0.2, 0.6, 0.8];
        let labels = [true, false, true, false, false, true];
        let mut order: Vec<usize> = (0..6).collect();
        order.sort_unstable_by_key(|&i| sort_key(scores[i]));
        let weighted = weighted_auroc(&order, &scores, &labels, &[1; 6]);
        assert_eq!(Some(weighted), auroc(&scores, &labels));
    }

    #[test]
    fn quantile_interpolates_linearly() {
        // np.quantile([1, 2, 3, 4], 0.25) = 1 + 0.75·(2 − 1) = 1.75.
        assert_eq!(quantile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.25), 1.75);
    }
}

//! Area under the ROC curve, exact and tie-aware.

/// AUROC of `scores` against binary `labels` (true = positive), equal to scikit-learn's
/// `roc_auc_score`: the Mann–Whitney U statistic over n_pos·n_neg, ties counting one half.
///
/// Returns `None` when either class is absent (AUROC is undefined) or lengths differ.
/// Scores must be finite; NaNs sort last and are the caller's to reject.
/// O(n log n): one sort, then average ranks over tied runs.
pub fn auroc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.len() != labels.len() {
        return None;
    }
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = order[start..end].iter().filter(|&&i| labels[i]).count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start = end;
    }
    let positives = positives as f64;
    let u = positive_rank_sum - positives * (positives + 1.0) / 2.0;
    Some(u / (positives * negatives as f64))
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
    }
}

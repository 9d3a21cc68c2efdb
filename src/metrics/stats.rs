//! Classical tests and correlations over plain slices, matching SciPy's defaults.
//!
//! Distributions come from `statrs`; nothing here hand-rolls a special function.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal, StudentsT};

/// A t statistic and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TTest {
    pub statistic: f64,
    pub p_value: f64,
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sum of squared deviations from the mean.
fn squared_deviations(values: &[f64]) -> f64 {
    let center = mean(values);
    values.iter().map(|v| (v - center) * (v - center)).sum()
}

/// Two-sided p-value of `statistic` under Student's t with `freedom` degrees of freedom.
fn t_test(numerator: f64, standard_error: f64, freedom: f64) -> Option<TTest> {
    if freedom <= 0.0 {
        return None;
    }
    if standard_error == 0.0 {
        // SciPy: 0/0 is NaN (no answer); a nonzero difference without spread is certain.
        return (numerator != 0.0).then(|| TTest {
            statistic: numerator.signum() * f64::INFINITY,
            p_value: 0.0,
        });
    }
    let statistic = numerator / standard_error;
    let distribution = StudentsT::new(0.0, 1.0, freedom).ok()?;
    Some(TTest {
        statistic,
        p_value: (2.0 * distribution.sf(statistic.abs())).min(1.0),
    })
}

/// Independent two-sample t-test with pooled variance, as `scipy.stats.ttest_ind(a, b)`:
/// t = (mean_a − mean_b) / sqrt(s²·(1/n_a + 1/n_b)), s² = (SS_a + SS_b)/(n_a + n_b − 2).
///
/// `None` when there are fewer than 3 values in all or the t statistic is 0/0.
pub fn ttest_ind(a: &[f64], b: &[f64]) -> Option<TTest> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (count_a, count_b) = (a.len() as f64, b.len() as f64);
    let freedom = count_a + count_b - 2.0;
    let pooled = (squared_deviations(a) + squared_deviations(b)) / freedom;
    let standard_error = (pooled * (1.0 / count_a + 1.0 / count_b)).sqrt();
    t_test(mean(a) - mean(b), standard_error, freedom)
}

/// Paired t-test, as `scipy.stats.ttest_rel(a, b)`: a one-sample t-test of the differences
/// a − b against 0 with n − 1 degrees of freedom. `None` when lengths differ, n < 2, or all
/// differences are 0.
pub fn ttest_rel(a: &[f64], b: &[f64]) -> Option<TTest> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let count = differences.len() as f64;
    let standard_error = (squared_deviations(&differences) / (count - 1.0) / count).sqrt();
    t_test(mean(&differences), standard_error, count - 1.0)
}

/// The median, as `numpy.median` (the mean of the two middle values for an even count).
/// `None` when empty or when a value is NaN.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    })
}

/// Pearson's correlation coefficient, as `scipy.stats.pearsonr(x, y).statistic`.
/// `None` when lengths differ, n < 2, or either input is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let (mean_x, mean_y) = (mean(x), mean(y));
    let (mut cross, mut sum_xx, mut sum_yy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mean_x, b - mean_y);
        cross += dx * dy;
        sum_xx += dx * dx;
        sum_yy += dy * dy;
    }
    if sum_xx == 0.0 || sum_yy == 0.0 {
        return None;
    }
    Some((cross / (sum_xx.sqrt() * sum_yy.sqrt())).clamp(-1.0, 1.0))
}

/// Ranks from 1, ties sharing their average rank, as `scipy.stats.rankdata(method="average")`.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_unstable_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    for run in order.chunk_by(|&a, &b| values[a] == values[b]) {
        // Ranks start+1 ..= start+len share their mean.
        let average = start as f64 + (run.len() as f64 + 1.0) / 2.0;
        for &index in run {
            ranks[index] = average;
        }
        start += run.len();
    }
    ranks
}

/// Spearman's rank correlation with average ranks for ties, as
/// `scipy.stats.spearmanr(x, y).statistic`.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() {
        return None;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// A mean with a two-sided Student-t interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanInterval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
}

/// Mean of `values` with the t-interval mean ± t_{(1+level)/2, n−1}·s/√n (s with ddof = 1),
/// as `scipy.stats.t.interval(level, n - 1, loc=mean, scale=sem)`. `None` when n < 2.
pub fn mean_t_interval(values: &[f64], level: f64) -> Option<MeanInterval> {
    if values.len() < 2 {
        return None;
    }
    let count = values.len() as f64;
    let center = mean(values);
    let standard_error = (squared_deviations(values) / (count - 1.0) / count).sqrt();
    let distribution = StudentsT::new(0.0, 1.0, count - 1.0).ok()?;
    let half_width = distribution.inverse_cdf(0.5 + level / 2.0) * standard_error;
    Some(MeanInterval {
        mean: center,
        low: center - half_width,
        high: center + half_width,
    })
}

/// A proportion `successes / trials` with its Wilson score interval and the exact two-sided
/// binomial test against a fair coin: how to read an eval pair accuracy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proportion {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    /// Two-sided p-value of `successes` under Binomial(trials, 1/2).
    pub p_value: f64,
}

/// `successes / trials` with the Wilson score interval at `level`, as
/// `scipy.stats.binomtest(k, n).proportion_ci(level, "wilson")`:
/// (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n), z = Φ⁻¹((1 + level)/2); and the exact
/// two-sided test of p = 1/2, as `binomtest(k, n, 0.5).pvalue`: the distribution is symmetric,
/// so p = min(1, 2·P(X ≤ min(k, n − k))). `None` when `trials` is 0 or `successes > trials`.
pub fn proportion(successes: u64, trials: u64, level: f64) -> Option<Proportion> {
    if trials == 0 || successes > trials {
        return None;
    }
    let n = trials as f64;
    let value = successes as f64 / n;
    let z = Normal::standard().inverse_cdf(0.5 + level / 2.0);
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let center = (value + z2 / (2.0 * n)) / denominator;
    let half_width = z * (value * (1.0 - value) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    let tail = Binomial::new(0.5, trials)
        .ok()?
        .cdf(successes.min(trials - successes));
    Some(Proportion {
        value,
        // Exactly 0 and 1 at the ends, where the formula's rounding leaves ~1e-18.
        low: if successes == 0 {
            0.0
        } else {
            (center - half_width).max(0.0)
        },
        high: if successes == trials {
            1.0
        } else {
            (center + half_width).min(1.0)
        },
        p_value: (2.0 * tail).min(1.0),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_counts_as_numpy() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(super::median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5)); // (2 + 3) / 2
        assert_eq!(super::median(&[]), None);
        assert_eq!(super::median(&[1.0, f64::NAN]), None);
    }

    use super::*;

    #[test]
    fn proportion_matches_scipy_binomtest_and_its_wilson_interval() {
        // scipy 1.x: binomtest(k, n).pvalue and .proportion_ci(0.95, "wilson").
        let cases = [
            (
                70,
                95,
                4.271012269463366e-06,
                0.6403397907589585,
                0.8149347523012911,
            ),
            (3, 10, 0.34375, 0.10779126740630102, 0.6032218525388546),
            (0, 10, 0.001953125, 0.0, 0.27753279986288926),
        ];
        for (k, n, p_value, low, high) in cases {
            let result = proportion(k, n, 0.95).unwrap();
            assert!(
                (result.p_value - p_value).abs() <= 1e-9 * p_value.max(1e-3),
                "{k}/{n}"
            );
            assert!((result.low - low).abs() < 1e-9, "{k}/{n}: {}", result.low);
            assert!(
                (result.high - high).abs() < 1e-9,
                "{k}/{n}: {}",
                result.high
            );
        }
        // 50/95: 2·P(X ≤ 45) = 0.6817425059181855.
        let half = proportion(50, 95, 0.95).unwrap();
        assert!((half.p_value - 0.6817425059181855).abs() < 1e-9);
        assert_eq!(proportion(5, 10, 0.95).unwrap().p_value, 1.0);
        assert_eq!(proportion(1, 0, 0.95), None);
        assert_eq!(proportion(11, 10, 0.95), None);
    }

    #[test]
    fn paired_t_hand_computed() {
        // Differences 1, 2, 3: mean 2, s = 1, se = 1/√3, t = 2√3 ≈ 3.4641.
        let result = ttest_rel(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((result.statistic - 2.0 * 3f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn identical_samples_have_no_paired_test() {
        assert_eq!(ttest_rel(&[1.0, 2.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn constant_difference_is_certain() {
        let result = ttest_rel(&[2.0, 3.0], &[1.0, 2.0]).unwrap();
        assert_eq!(result.p_value, 0.0);
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 10.0, 30.0]),
            vec![1.5, 3.0, 1.5, 4.0]
        );
    }

    #[test]
    fn constant_input_has_no_correlation() {
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
    }

    #[test]
    fn monotone_is_spearman_one() {
        let rho = spearman(&[1.0, 2.0, 3.0], &[1.0, 4.0, 9.0]).unwrap();
        assert!((rho - 1.0).abs() < 1e-12, "{rho}");
    }

    #[test]
    fn one_value_has_no_interval() {
        assert_eq!(mean_t_interval(&[0.7], 0.95), None);
    }
}

//! The metrics against scikit-learn, SciPy and the NumPy fast-DeLong reference.
//!
//! Every expected value comes from `tests/fixtures/metrics_reference.json`, written by
//! `tests/fixtures/metrics_reference.py` (numpy 2.4.6, scipy 1.17.1, scikit-learn 1.9.1), e.g.
//!
//! ```python
//! "auroc": float(roc_auc_score(labels, scores)),
//! aucs, cov = fast_delong(preds, m)          # yandexdataschool/roc_comparison
//! ind = scipy.stats.ttest_ind(a, b); rel = scipy.stats.ttest_rel(a, b)
//! scipy.stats.pearsonr(x, y).statistic; scipy.stats.spearmanr(x, y).statistic
//! scipy.stats.t.interval(0.95, n - 1, loc=np.mean(v), scale=scipy.stats.sem(v))
//! reference_filter(questions, threshold)     # the released get_accuracy logic
//! 100 * np.sum(saved_counts) / np.sum(token_counts)   # its tokens saved (totals)
//! ```

use qrm::metrics::auroc::{auroc, delong, delong_paired};
use qrm::metrics::filter::{filter_summary, FilterOptions, Sample, VoteRule};
use qrm::metrics::stats::{mean_t_interval, pearson, spearman, ttest_ind, ttest_rel};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn bools(value: &Value) -> Vec<bool> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect()
}

/// The fixture's array `name`; an empty or missing array fails, since a reference loop over
/// nothing would pass without checking anything.
fn cases(name: &str) -> Vec<Value> {
    non_empty(&fixture()[name], name).to_vec()
}

fn non_empty<'a>(value: &'a Value, name: &str) -> &'a Vec<Value> {
    let cases = value
        .as_array()
        .unwrap_or_else(|| panic!("metrics_reference.json: `{name}` is not an array"));
    assert!(
        !cases.is_empty(),
        "metrics_reference.json: `{name}` is empty"
    );
    cases
}

fn close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: {actual} vs {expected} (|Δ| = {:e})",
        (actual - expected).abs()
    );
}

#[test]
fn auroc_equals_sklearn_roc_auc_score() {
    for case in cases("auroc") {
        let name = case["name"].as_str().unwrap();
        let scores = floats(&case["scores"]);
        let labels = bools(&case["labels"]);
        let value = auroc(&scores, &labels).unwrap();
        close(value, case["auroc"].as_f64().unwrap(), 1e-9, name);
    }
}

#[test]
fn delong_variance_equals_fast_delong_reference() {
    for case in cases("auroc") {
        let name = case["name"].as_str().unwrap();
        let result = delong(&floats(&case["scores"]), &bools(&case["labels"])).unwrap();
        close(
            result.auroc,
            case["delong_auroc"].as_f64().unwrap(),
            1e-9,
            name,
        );
        close(
            result.variance,
            case["delong_variance"].as_f64().unwrap(),
            1e-9,
            name,
        );
    }
}

#[test]
fn paired_delong_equals_fast_delong_reference() {
    for case in cases("delong_paired") {
        let name = case["name"].as_str().unwrap();
        let paired = delong_paired(
            &floats(&case["scores_a"]),
            &floats(&case["scores_b"]),
            &bools(&case["labels"]),
        )
        .unwrap();
        close(
            paired.a.auroc,
            case["auroc_a"].as_f64().unwrap(),
            1e-9,
            name,
        );
        close(
            paired.b.auroc,
            case["auroc_b"].as_f64().unwrap(),
            1e-9,
            name,
        );
        close(
            paired.a.variance,
            case["variance_a"].as_f64().unwrap(),
            1e-9,
            name,
        );
        close(
            paired.b.variance,
            case["variance_b"].as_f64().unwrap(),
            1e-9,
            name,
        );
        close(
            paired.covariance,
            case["covariance"].as_f64().unwrap(),
            1e-9,
            name,
        );
        close(
            paired.p_value().unwrap(),
            case["p_value"].as_f64().unwrap(),
            1e-9,
            name,
        );
    }
}

#[test]
fn t_tests_equal_scipy() {
    for case in cases("ttest") {
        let name = case["name"].as_str().unwrap();
        let (a, b) = (floats(&case["a"]), floats(&case["b"]));
        let independent = ttest_ind(&a, &b).unwrap();
        close(
            independent.statistic,
            case["ind_statistic"].as_f64().unwrap(),
            1e-9,
            name,
        );
        close(
            independent.p_value,
            case["ind_p"].as_f64().unwrap(),
            1e-9,
            name,
        );
        if let Some(expected) = case.get("rel_p") {
            let paired = ttest_rel(&a, &b).unwrap();
            close(
                paired.statistic,
                case["rel_statistic"].as_f64().unwrap(),
                1e-9,
                name,
            );
            close(paired.p_value, expected.as_f64().unwrap(), 1e-9, name);
        }
    }
}

#[test]
fn correlations_equal_scipy() {
    for case in cases("correlation") {
        let name = case["name"].as_str().unwrap();
        let (x, y) = (floats(&case["x"]), floats(&case["y"]));
        close(
            pearson(&x, &y).unwrap(),
            case["pearson"].as_f64().unwrap(),
            1e-12,
            name,
        );
        close(
            spearman(&x, &y).unwrap(),
            case["spearman"].as_f64().unwrap(),
            1e-12,
            name,
        );
    }
}

#[test]
fn t_interval_equals_scipy() {
    for case in cases("t_interval") {
        let name = case["name"].as_str().unwrap();
        let interval = mean_t_interval(&floats(&case["values"]), 0.95).unwrap();
        close(interval.mean, case["mean"].as_f64().unwrap(), 1e-12, name);
        close(interval.low, case["low"].as_f64().unwrap(), 1e-9, name);
        close(interval.high, case["high"].as_f64().unwrap(), 1e-9, name);
    }
}

#[test]
fn reference_vote_filtering_equals_the_released_logic() {
    let fixture = fixture();
    let filter = &fixture["filter"];
    let q_values: Vec<Vec<Vec<f32>>> = filter["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|question| {
            question
                .as_array()
                .unwrap()
                .iter()
                .map(|s| floats(&s["q_values"]).iter().map(|&q| q as f32).collect())
                .collect()
        })
        .collect();
    let questions: Vec<Vec<Sample>> = filter["questions"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&q_values)
        .map(|(question, q_values)| {
            question
                .as_array()
                .unwrap()
                .iter()
                .zip(q_values)
                .map(|(s, q)| Sample {
                    is_correct: s["is_correct"].as_bool().unwrap(),
                    answer: s["answer"].as_str(),
                    q_values: q,
                    reward: 0.0,
                })
                .collect()
        })
        .collect();
    for expected in non_empty(&filter["results"], "filter.results") {
        let threshold = expected["threshold"].as_f64().unwrap();
        let options = FilterOptions {
            skip: filter["skip"].as_u64().unwrap() as usize,
            threshold,
            vote: VoteRule::Reference,
            seed: 0,
        };
        let summary = filter_summary(&questions, &options).unwrap();
        let what = |field: &str| format!("threshold {threshold}: {field}");
        let field = |name: &str| expected[name].as_f64().unwrap();
        close(
            summary.accuracy,
            field("accuracy"),
            1e-12,
            &what("accuracy"),
        );
        close(
            summary.accuracy_filtered,
            field("accuracy_filtered"),
            1e-12,
            &what("accuracy_filtered"),
        );
        close(
            summary.proportion_correct,
            field("proportion_correct"),
            1e-12,
            &what("proportion_correct"),
        );
        close(
            summary.proportion_correct_filtered,
            field("proportion_correct_filtered"),
            1e-12,
            &what("proportion_correct_filtered"),
        );
        close(
            summary.filtered_pct,
            field("filtered_pct"),
            1e-9,
            &what("filtered_pct"),
        );
        // The release's Σ saved / Σ tokens, and the per-question mean qrm reported before.
        close(
            summary.tokens_saved_pct,
            field("tokens_saved_pct"),
            1e-9,
            &what("tokens_saved_pct"),
        );
        close(
            summary.tokens_saved_per_question_pct,
            field("tokens_saved_per_question_pct"),
            1e-9,
            &what("tokens_saved_per_question_pct"),
        );
        close(
            summary.p_unpaired.unwrap(),
            field("p_unpaired"),
            1e-9,
            &what("p_unpaired"),
        );
        close(
            summary.p_paired.unwrap(),
            field("p_paired"),
            1e-9,
            &what("p_paired"),
        );
    }
}

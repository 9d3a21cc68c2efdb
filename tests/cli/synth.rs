//! qrm-synth end to end: wrong solutions are indistinguishable from right ones without doing
//! the arithmetic, the labels are exactly what re-doing the arithmetic finds, and the CLI
//! writes the canonical generations table.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use qrm::metrics::auroc::auroc;
use qrm::pipeline::schema::{generations_from_frame, Generation};
use qrm::pipeline::synth::{generate, Mistakes, Split, SynthConfig};
use regex::Regex;

/// `left sign right = result` as solutions write it.
static EXPRESSION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d+) ([-+*/]) (\d+) = (\d+)").unwrap());
static NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+").unwrap());

fn config(split: Split, questions: usize, error_rate: f64) -> SynthConfig {
    SynthConfig {
        questions,
        samples: 8,
        error_rate,
        split,
        seed: 7,
        mistakes: Mistakes::Subtle,
        phrasing: qrm::pipeline::synth::Phrasing::Sample,
    }
}

// ---------------------------------------------------------------- bag-of-tokens classifier

/// Words, numbers and single punctuation marks; numbers become `<num>` unless `keep_numbers`.
fn tokens(text: &str, keep_numbers: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, out: &mut Vec<String>| {
        if current.is_empty() {
            return;
        }
        let is_number = current.chars().all(|c| c.is_ascii_digit());
        out.push(if is_number && !keep_numbers {
            "<num>".to_owned()
        } else {
            std::mem::take(current)
        });
        current.clear();
    };
    for c in text.chars() {
        let same_kind = current.chars().next().is_none_or(|first| {
            (first.is_ascii_digit() && c.is_ascii_digit())
                || (first.is_alphabetic() && c.is_alphabetic())
        });
        if c.is_whitespace() {
            flush(&mut current, &mut out);
        } else if c.is_alphanumeric() && same_kind {
            current.push(c);
        } else {
            flush(&mut current, &mut out);
            if c.is_alphanumeric() {
                current.push(c);
            } else {
                out.push(c.to_string());
            }
        }
    }
    flush(&mut current, &mut out);
    out
}

/// Sparse token counts over a vocabulary built from the training rows (unseen tokens dropped).
struct Bag {
    vocabulary: HashMap<String, usize>,
    keep_numbers: bool,
}

impl Bag {
    fn fit(texts: &[&str], keep_numbers: bool) -> Bag {
        let mut vocabulary = HashMap::new();
        for text in texts {
            for token in tokens(text, keep_numbers) {
                let next = vocabulary.len();
                vocabulary.entry(token).or_insert(next);
            }
        }
        Bag {
            vocabulary,
            keep_numbers,
        }
    }

    fn features(&self, text: &str) -> Vec<(usize, f64)> {
        let mut counts: HashMap<usize, f64> = HashMap::new();
        for token in tokens(text, self.keep_numbers) {
            if let Some(&index) = self.vocabulary.get(&token) {
                *counts.entry(index).or_default() += 1.0;
            }
        }
        counts.into_iter().collect()
    }
}

/// Sparse rows standardised column-wise (zero mean, unit variance over the training rows)
/// without densifying: `x_std = (x - mean) * scale`, applied inside the products.
struct Standardized<'a> {
    rows: &'a [Vec<(usize, f64)>],
    mean: Vec<f64>,
    /// 1 / standard deviation, or 0 for a constant column (which carries no information).
    scale: Vec<f64>,
}

impl<'a> Standardized<'a> {
    fn new(rows: &'a [Vec<(usize, f64)>], width: usize) -> Self {
        let n = rows.len() as f64;
        let mut mean = vec![0.0; width];
        let mut square = vec![0.0; width];
        for row in rows {
            for &(i, x) in row {
                mean[i] += x / n;
                square[i] += x * x / n;
            }
        }
        let scale = mean
            .iter()
            .zip(&square)
            .map(|(m, s)| {
                let variance: f64 = s - m * m;
                if variance > 1e-12 {
                    1.0 / variance.sqrt()
                } else {
                    0.0
                }
            })
            .collect();
        Standardized { rows, mean, scale }
    }

    /// `X_std w`
    fn times(&self, weights: &[f64]) -> Vec<f64> {
        let shift: f64 = (0..weights.len())
            .map(|j| self.mean[j] * self.scale[j] * weights[j])
            .sum();
        self.rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|&(i, x)| x * self.scale[i] * weights[i])
                    .sum::<f64>()
                    - shift
            })
            .collect()
    }

    /// `X_stdᵀ e`
    fn transposed_times(&self, errors: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.mean.len()];
        for (row, e) in self.rows.iter().zip(errors) {
            for &(i, x) in row {
                out[i] += x * e;
            }
        }
        let total: f64 = errors.iter().sum();
        for (j, value) in out.iter_mut().enumerate() {
            *value = (*value - self.mean[j] * total) * self.scale[j];
        }
        out
    }
}

/// L2-regularised logistic regression on standardised features, fitted by Nesterov-accelerated
/// gradient descent on the mean log loss with step 1/L, where L = λ_max(XᵀX)/(4n) + l2 bounds
/// the Hessian (λ_max by power iteration). 300 steps reach the optimum to 1e-3 in loss (checked
/// against scikit-learn in `logistic_regression_reaches_the_scikit_learn_optimum`).
fn train_logistic(features: &Standardized, labels: &[bool], l2: f64) -> (Vec<f64>, f64) {
    let steps = 300;
    let width = features.mean.len();
    let n = labels.len() as f64;
    let mut direction = vec![1.0; width];
    let mut lipschitz = 1.0;
    for _ in 0..30 {
        let product = features.transposed_times(&features.times(&direction));
        let norm = product.iter().map(|v| v * v).sum::<f64>().sqrt() / n;
        direction = product.iter().map(|v| v / (norm * n).max(1e-12)).collect();
        lipschitz = norm;
    }
    let step = 1.0 / (lipschitz / 4.0 + l2);
    let (mut weights, mut bias) = (vec![0.0; width], 0.0);
    let (mut previous, mut previous_bias) = (weights.clone(), 0.0);
    for k in 0..steps {
        let momentum = k as f64 / (k as f64 + 3.0);
        let look: Vec<f64> = weights
            .iter()
            .zip(&previous)
            .map(|(w, p)| w + momentum * (w - p))
            .collect();
        let look_bias = bias + momentum * (bias - previous_bias);
        let errors: Vec<f64> = features
            .times(&look)
            .iter()
            .zip(labels)
            .map(|(z, &label)| 1.0 / (1.0 + (-(z + look_bias)).exp()) - f64::from(u8::from(label)))
            .collect();
        let gradient = features.transposed_times(&errors);
        previous = std::mem::replace(
            &mut weights,
            look.iter()
                .zip(&gradient)
                .map(|(w, g)| w - step * (g / n + l2 * w))
                .collect(),
        );
        previous_bias = bias;
        bias = look_bias - step * errors.iter().sum::<f64>() / n;
    }
    (weights, bias)
}

/// Held-out AUROC of a bag-of-tokens classifier predicting "wrong" from the response alone,
/// trained on the even-numbered questions and tested on the odd ones (question-disjoint).
fn held_out_auroc(rows: &[Generation], keep_numbers: bool) -> f64 {
    let is_train = |row: &Generation| {
        let number: usize = row
            .question_id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        number % 2 == 0
    };
    let (train, test): (Vec<&Generation>, Vec<&Generation>) =
        rows.iter().partition(|r| is_train(r));
    let texts: Vec<&str> = train.iter().map(|r| r.response.as_str()).collect();
    let bag = Bag::fit(&texts, keep_numbers);
    let rows: Vec<_> = train.iter().map(|r| bag.features(&r.response)).collect();
    let features = Standardized::new(&rows, bag.vocabulary.len());
    let labels: Vec<bool> = train.iter().map(|r| !r.is_correct).collect();
    let (weights, bias) = train_logistic(&features, &labels, 1e-3);
    let test_rows: Vec<_> = test.iter().map(|r| bag.features(&r.response)).collect();
    let scores: Vec<f64> = Standardized {
        rows: &test_rows,
        mean: features.mean.clone(),
        scale: features.scale.clone(),
    }
    .times(&weights)
    .iter()
    .map(|z| z + bias)
    .collect();
    let test_labels: Vec<bool> = test.iter().map(|r| !r.is_correct).collect();
    auroc(&scores, &test_labels).expect("both classes in the test half")
}

#[test]
fn tokens_split_words_numbers_and_punctuation() {
    assert_eq!(
        tokens("So he has 33 + 20 = 53 marbles.", false),
        ["So", "he", "has", "<num>", "+", "<num>", "=", "<num>", "marbles", "."]
    );
    assert_eq!(tokens("is 5 * 4", true), ["is", "5", "*", "4"]);
}

#[test]
fn logistic_regression_reaches_the_scikit_learn_optimum() {
    // tests/fixtures/synth_classifier.py: toy texts with a weak signal, and scikit-learn's
    // optimum of the same objective (standardised counts, mean log loss + l2/2 |w|²).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/synth_classifier.json");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts: Vec<&str> = fixture["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let labels: Vec<bool> = fixture["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_bool().unwrap())
        .collect();
    let l2 = fixture["l2"].as_f64().unwrap();
    let split = fixture["train_count"].as_u64().unwrap() as usize;
    let bag = Bag::fit(&texts[..split], false);
    let rows: Vec<_> = texts[..split].iter().map(|t| bag.features(t)).collect();
    let features = Standardized::new(&rows, bag.vocabulary.len());
    let (weights, bias) = train_logistic(&features, &labels[..split], l2);
    let loss = features
        .times(&weights)
        .iter()
        .zip(&labels[..split])
        .map(|(z, &label)| {
            let margin = if label { z + bias } else { -(z + bias) };
            (1.0 + (-margin).exp()).ln()
        })
        .sum::<f64>()
        / split as f64;
    let objective = loss + l2 / 2.0 * weights.iter().map(|w| w * w).sum::<f64>();
    let reference = fixture["objective"].as_f64().unwrap();
    assert!(
        (objective - reference).abs() < 1e-4,
        "objective {objective} vs scikit-learn {reference}"
    );
    let test_rows: Vec<_> = texts[split..].iter().map(|t| bag.features(t)).collect();
    let scores: Vec<f64> = Standardized {
        rows: &test_rows,
        mean: features.mean.clone(),
        scale: features.scale.clone(),
    }
    .times(&weights);
    let score = auroc(&scores, &labels[split..]).unwrap();
    let reference = fixture["auroc"].as_f64().unwrap();
    assert!(
        (score - reference).abs() < 0.005,
        "AUROC {score} vs {reference}"
    );
}

#[test]
fn classifier_finds_a_planted_tell() {
    // The check below is only meaningful if the classifier can find a leak when there is one:
    // mark every wrong response with a word and it must separate them almost perfectly.
    let mut rows = generate(&config(Split::Id, 300, 0.5)).unwrap();
    for row in rows.iter_mut().filter(|r| !r.is_correct) {
        row.response.push_str(" Hmm.");
    }
    let score = held_out_auroc(&rows, false);
    assert!(score > 0.95, "planted tell not found: AUROC {score:.3}");
}

#[test]
fn bag_of_tokens_cannot_tell_wrong_from_right() {
    for split in [Split::Id, Split::Ood] {
        let rows = generate(&config(split, 1000, 0.5)).unwrap();
        for keep_numbers in [false, true] {
            let score = held_out_auroc(&rows, keep_numbers);
            eprintln!("{split:?} keep_numbers={keep_numbers}: held-out AUROC {score:.4}");
            assert!(
                (0.4..0.6).contains(&score),
                "{split:?} keep_numbers={keep_numbers}: AUROC {score:.3} reveals the label"
            );
        }
    }
}

// ---------------------------------------------------------------- arithmetic checker

/// What a line of a response states.
enum Claim {
    /// `left sign right = result` (one or more per line).
    Computations(Vec<(i64, char, i64, i64)>),
    /// A line without a computation restating the start value.
    Start(i64),
    Answer(i64),
}

fn parse_line(line: &str) -> Claim {
    let number = |text: &str| text.parse::<i64>().expect("a number");
    if let Some(answer) = line
        .strip_prefix("The answer is ")
        .and_then(|rest| rest.strip_suffix('.'))
    {
        return Claim::Answer(number(answer));
    }
    let computations: Vec<_> = EXPRESSION
        .captures_iter(line)
        .map(|c| {
            let sign = c[2].chars().next().expect("a sign");
            (number(&c[1]), sign, number(&c[3]), number(&c[4]))
        })
        .collect();
    if computations.is_empty() {
        let found: Vec<i64> = NUMBER.find_iter(line).map(|m| number(m.as_str())).collect();
        assert_eq!(found.len(), 1, "a restatement states one number: {line:?}");
        Claim::Start(found[0])
    } else {
        Claim::Computations(computations)
    }
}

fn evaluate(left: i64, sign: char, right: i64) -> Option<i64> {
    match sign {
        '+' => Some(left + right),
        '-' => Some(left - right),
        '*' => Some(left * right),
        '/' if right != 0 && left % right == 0 => Some(left / right),
        _ => None,
    }
}

/// Re-does the arithmetic of `response` against the reference values (the results of a right
/// solution of the same question, in order) and returns the char offset of the first line that
/// computes wrongly or states a value the reference does not have at that point.
fn first_error_offset(response: &str, start: i64, reference: &[i64], answer: i64) -> Option<usize> {
    let mut offset = 0;
    let mut expected = reference.iter();
    for line in response.split('\n') {
        let wrong = match parse_line(line) {
            Claim::Start(value) => value != start,
            Claim::Answer(value) => value != answer,
            Claim::Computations(computations) => computations.iter().any(|&(l, s, r, result)| {
                evaluate(l, s, r) != Some(result) || expected.next() != Some(&result)
            }),
        };
        if wrong {
            return Some(offset);
        }
        offset += line.chars().count() + 1;
    }
    None
}

fn computation_results(response: &str) -> Vec<i64> {
    EXPRESSION
        .captures_iter(response)
        .map(|c| c[4].parse().unwrap())
        .collect()
}

#[test]
fn rechecking_the_arithmetic_finds_exactly_the_labelled_first_error() {
    for (split, mistakes) in [
        (Split::Id, Mistakes::Subtle),
        (Split::Ood, Mistakes::Subtle),
        (Split::Id, Mistakes::Obvious),
        (Split::Ood, Mistakes::Obvious),
        (Split::Id, Mistakes::Answer),
        (Split::Ood, Mistakes::Answer),
    ] {
        let rows = generate(&SynthConfig {
            mistakes,
            ..config(split, 400, 0.6)
        })
        .unwrap();
        // Same seed, no errors: the same questions, solved right.
        let references = generate(&config(split, 400, 0.0)).unwrap();
        let reference: HashMap<&str, &Generation> = references
            .iter()
            .filter(|r| r.sample == "s0")
            .map(|r| (r.question_id.as_str(), r))
            .collect();
        let mut wrong = 0;
        for row in &rows {
            let right = reference[row.question_id.as_str()];
            assert_eq!(
                right.question, row.question,
                "questions do not depend on the error rate"
            );
            assert!(right.is_correct);
            let start: i64 = NUMBER
                .find(&row.question)
                .unwrap()
                .as_str()
                .parse()
                .unwrap();
            let values = computation_results(&right.response);
            let answer: i64 = row.expected_answer.as_deref().unwrap().parse().unwrap();
            assert_eq!(
                values.last(),
                Some(&answer),
                "the reference ends at the answer"
            );
            let found = first_error_offset(&row.response, start, &values, answer);
            let last_line = row.response.rsplit('\n').next().unwrap();
            assert_eq!(
                last_line,
                format!(
                    "The answer is {}.",
                    row.predicted_answer.as_deref().unwrap()
                )
            );
            if row.is_correct {
                assert_eq!(
                    found, None,
                    "a right sample has an error:\n{}",
                    row.response
                );
                assert_eq!(row.predicted_answer, row.expected_answer);
                assert_eq!(row.first_error_char, None);
            } else {
                wrong += 1;
                assert_ne!(
                    row.predicted_answer, row.expected_answer,
                    "errors propagate"
                );
                assert_eq!(
                    found,
                    row.first_error_char.map(|c| c as usize),
                    "{} {}:\n{}\nreference:\n{}",
                    row.question_id,
                    row.sample,
                    row.response,
                    right.response
                );
                if mistakes == Mistakes::Answer {
                    // The work is the reference's; only the stated answer (last line) is wrong.
                    let error = row.first_error_char.unwrap() as usize;
                    assert_eq!(error, row.response.rfind('\n').map_or(0, |i| i + 1));
                    assert_eq!(computation_results(&row.response), values);
                }
                if mistakes == Mistakes::Obvious {
                    // The first wrong line miscomputes, and by at least 5.
                    let error = row.first_error_char.unwrap() as usize;
                    let line: String = row.response.chars().skip(error).collect();
                    let line = line.split('\n').next().unwrap();
                    let Claim::Computations(computations) = parse_line(line) else {
                        panic!("not a computation: {line}");
                    };
                    assert!(
                        computations.iter().any(|&(l, s, r, result)| {
                            evaluate(l, s, r).is_some_and(|truth| (truth - result).abs() >= 5)
                        }),
                        "{line}"
                    );
                }
            }
        }
        assert!(
            wrong > rows.len() / 3,
            "{split:?} {mistakes:?}: only {wrong} wrong samples"
        );
    }
}

#[test]
fn right_solutions_only_use_numbers_from_the_question_or_earlier_steps() {
    let rows = generate(&config(Split::Both, 200, 0.0)).unwrap();
    for row in &rows {
        let mut known: BTreeSet<i64> = NUMBER
            .find_iter(&row.question)
            .map(|m| m.as_str().parse().unwrap())
            .collect();
        if row.question.contains("doubles") {
            known.insert(2);
        }
        if row.question.contains("triples") {
            known.insert(3);
        }
        for c in EXPRESSION.captures_iter(&row.response) {
            let [left, right, result] = [&c[1], &c[3], &c[4]].map(|n| n.parse::<i64>().unwrap());
            assert!(
                known.contains(&left) && known.contains(&right),
                "ungrounded operand in {:?} for {:?}",
                &c[0],
                row.question
            );
            known.insert(result);
        }
    }
}

// ---------------------------------------------------------------- CLI

#[test]
fn cli_writes_the_generations_table() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("synth.parquet");
    assert_cmd::Command::cargo_bin("qrm-synth")
        .unwrap()
        .args([
            "--questions",
            "5",
            "--samples",
            "3",
            "--seed",
            "3",
            "-q",
            "-o",
        ])
        .arg(&path)
        .assert()
        .success()
        .stdout("");
    let frame = qrm::pipeline::io::read_table(&path).unwrap();
    let rows = generations_from_frame(&frame, &path).unwrap();
    assert_eq!(rows.len(), 15);
    let expected = generate(&SynthConfig {
        questions: 5,
        samples: 3,
        seed: 3,
        ..SynthConfig::default()
    })
    .unwrap();
    assert_eq!(rows, expected);
    let benchmarks: BTreeSet<&str> = rows.iter().map(|r| r.benchmark.as_str()).collect();
    assert_eq!(benchmarks, BTreeSet::from(["synth-id", "synth-ood"]));
}

#[test]
fn cli_streams_arrow_to_a_pipe_and_rejects_a_bad_error_rate() {
    let output = assert_cmd::Command::cargo_bin("qrm-synth")
        .unwrap()
        .args(["--questions", "2", "--split", "ood", "-q"])
        .output()
        .unwrap();
    assert!(output.status.success());
    // read_table detects the Arrow IPC stream from its bytes.
    let directory = tempfile::tempdir().unwrap();
    let piped = directory.path().join("piped");
    std::fs::write(&piped, &output.stdout).unwrap();
    let frame = qrm::pipeline::io::read_table(&piped).unwrap();
    let rows = generations_from_frame(&frame, &piped).unwrap();
    assert_eq!(rows.len(), 16);
    assert!(rows.iter().all(|r| r.benchmark == "synth-ood"));
    assert_cmd::Command::cargo_bin("qrm-synth")
        .unwrap()
        .args(["--error-rate", "1.5", "-q"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--error-rate"));
}

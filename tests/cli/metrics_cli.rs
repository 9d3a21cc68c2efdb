//! `qrm-auroc` and `qrm-filter` end to end: report shape, one-class groups, NaN rows, paired
//! comparisons, percentiles, sweeps, plots, usage errors, the released tokens-saved rule,
//! model identities, duplicated rows, a pipe from `qrm-import`, step-level AUROC
//! (`--steps`) and within-question AUROC (`--within`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use assert_cmd::cargo::cargo_bin;
use assert_cmd::prelude::*;
use predicates::prelude::*;
use serde_json::{json, Value};

use crate::support::read_jsonl;

/// Writes JSON lines into a temporary directory and returns (dir, path).
fn write_jsonl(rows: &[Value]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scores.jsonl");
    let text: Vec<String> = rows.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    (dir, path)
}

/// Two RMs × two sample sets × 6 questions on `gsm8k`, plus a one-class `math` group.
/// RM `a` ranks perfectly (reward = +1 for correct, −1 otherwise); RM `b` is inverted on
/// question 0, so its AUROC is lower.
fn scores_rows() -> Vec<Value> {
    let mut rows = Vec::new();
    for rm in ["a", "b"] {
        for sample in ["s0", "s1"] {
            for question in 0..6 {
                let correct = question % 2 == 0;
                let mut reward = if correct { 1.0 } else { -1.0 };
                if rm == "b" && question == 0 {
                    reward = -reward;
                }
                let q_values: Vec<f64> = (0..10)
                    .map(|t| if correct || t < 6 { 0.5 } else { -0.5 })
                    .collect();
                let token_rewards: Vec<f64> = (0..10).map(|t| reward * t as f64 / 9.0).collect();
                rows.push(json!({
                    "question_id": format!("q{question}"),
                    "rm": rm,
                    "benchmark": "gsm8k",
                    "sample": sample,
                    "is_correct": correct,
                    "predicted_answer": if correct { "4" } else { "5" },
                    "reward": reward,
                    "token_rewards": token_rewards,
                    "q_values": q_values,
                }));
            }
            rows.push(json!({
                "question_id": "m0", "rm": rm, "benchmark": "math", "sample": sample,
                "is_correct": true, "predicted_answer": "1", "reward": 0.3,
                "token_rewards": [0.1, 0.3], "q_values": [0.2, 0.2],
            }));
        }
    }
    rows
}

#[test]
fn auroc_report_has_one_row_per_group_and_a_note_for_one_class() {
    let (dir, input) = write_jsonl(&scores_rows());
    let output = dir.path().join("report.jsonl");
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .assert()
        .success();
    let rows = read_jsonl(&output);
    assert_eq!(rows.len(), 4); // {a, b} × {gsm8k, math}
    let a_gsm8k = &rows[0];
    assert_eq!(
        (a_gsm8k["rm"].as_str(), a_gsm8k["benchmark"].as_str()),
        (Some("a"), Some("gsm8k"))
    );
    assert_eq!(a_gsm8k["auroc"], json!(1.0));
    assert_eq!(a_gsm8k["n"], json!(12));
    assert_eq!(a_gsm8k["n_pos"], json!(6));
    assert_eq!(a_gsm8k["ci_method"], json!("delong"));
    let a_math = &rows[1];
    assert!(a_math["auroc"].is_null());
    assert!(a_math["note"].as_str().unwrap().contains("one class"));
}

#[test]
fn non_finite_scores_fail_naming_rows_unless_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("nan.csv");
    std::fs::write(
        &input,
        "rm,benchmark,is_correct,reward\na,x,true,0.5\na,x,false,NaN\na,x,true,0.7\na,x,false,0.1\n",
    )
    .unwrap();
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("1 row(s): 2"));
    let output = dir.path().join("report.jsonl");
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .args(["--drop-nan", "-o"])
        .arg(&output)
        .arg(&input)
        .assert()
        .success()
        .stderr(predicate::str::contains("dropped 1 row"));
    // Left: positives 0.5, 0.7 and negative 0.1 → AUROC 1.
    assert_eq!(read_jsonl(&output)[0]["auroc"], json!(1.0));
}

#[test]
fn compare_reports_the_paired_difference() {
    let (dir, input) = write_jsonl(&scores_rows());
    let output = dir.path().join("compare.jsonl");
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .args(["--compare", "a,b", "-o"])
        .arg(&output)
        .arg(&input)
        .assert()
        .success();
    let rows = read_jsonl(&output);
    let gsm8k = rows
        .iter()
        .find(|r| r["benchmark"] == json!("gsm8k"))
        .unwrap();
    // B gives question 0 (correct) reward −1, tied with all 6 negatives, in both sample sets:
    // 4 positives beat 6 negatives (24) + 2 tied positives × 6 × ½ (6) → U = 30 of 36 = 5/6.
    assert_eq!(gsm8k["rm_b"], json!("b"));
    let auroc_b = gsm8k["auroc_b"].as_f64().unwrap();
    assert!((auroc_b - 5.0 / 6.0).abs() < 1e-12, "{auroc_b}");
    assert!((gsm8k["delta"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-12);
    let p_value = gsm8k["p_value"].as_f64().unwrap();
    assert!(p_value > 0.0 && p_value < 1.0);
}

#[test]
fn percentiles_give_one_row_per_group_and_percentile() {
    let (dir, input) = write_jsonl(&scores_rows());
    let output = dir.path().join("partial.jsonl");
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .args(["--percentiles", "0:1:0.5", "--ci", "samples", "-o"])
        .arg(&output)
        .arg(&input)
        .assert()
        .success();
    let rows = read_jsonl(&output);
    assert_eq!(rows.len(), 2 * 2 * 3); // {a, b} × {gsm8k, math} × 3 percentiles
                                       // At percentile 0 every token reward is ±0 (reward·0/9; −0 equals 0): all tied, AUROC ½
                                       // in each sample set.
    assert_eq!(rows[0]["benchmark"], json!("gsm8k"));
    assert_eq!(rows[0]["percentile"], json!(0.0));
    assert_eq!(rows[0]["auroc"], json!(0.5));
    assert!(rows[0]["note"]
        .as_str()
        .unwrap()
        .starts_with("2 sample sets"));
}

#[test]
fn filter_sweep_writes_rows_and_a_figure() {
    let (dir, input) = write_jsonl(&scores_rows());
    let output = dir.path().join("sweep.jsonl");
    let figure = dir.path().join("sweep.svg");
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--sweep", "-0.5:0.5:0.5", "--vote", "reference", "-o"])
        .arg(&output)
        .arg("--plot")
        .arg(&figure)
        .arg(&input)
        .assert()
        .success();
    let rows = read_jsonl(&output);
    assert_eq!(rows.len(), 2 * 2 * 3);
    // a/gsm8k at threshold 0: the 6 incorrect samples drop at token 6 (after skip 5: index 1 of
    // 5 scored tokens → 4 saved); questions with only incorrect samples fall back.
    let row = rows
        .iter()
        .find(|r| {
            r["rm"] == json!("a")
                && r["benchmark"] == json!("gsm8k")
                && r["threshold"] == json!(0.0)
        })
        .unwrap();
    assert_eq!(row["questions"], json!(6));
    assert_eq!(row["accuracy"], json!(0.5));
    assert_eq!(row["fallback_questions"], json!(3));
    assert_eq!(row["filtered_pct"], json!(0.0));
    assert!(std::fs::read_to_string(&figure).unwrap().contains("<svg"));
}

#[test]
fn localise_places_drops_relative_to_the_first_error() {
    // Ten tokens starting every 4 chars. Wrong sample w1: error at char 13 (token 3), Q drops at
    // token 7 → 4 after. w2: error at char 32 (token 8), drop at 6 → 2 before. Correct c1 never
    // drops, c2 drops at 5 (skip 5 makes 5 the first token looked at).
    let offsets: Vec<u32> = (0..10).map(|t| 4 * t).collect();
    let q = |drop: Option<usize>| -> Vec<f64> {
        (0..10)
            .map(|t| {
                if drop.is_some_and(|d| t >= d) {
                    -0.5
                } else {
                    0.5
                }
            })
            .collect()
    };
    let row = |sample: &str, correct: bool, error: Option<u32>, drop: Option<usize>| {
        json!({
            "question_id": "q0", "rm": "a", "benchmark": "synth-id", "sample": sample,
            "is_correct": correct, "first_error_char": error,
            "q_values": q(drop), "token_offsets": offsets,
        })
    };
    let rows = [
        row("w1", false, Some(13), Some(7)),
        row("w2", false, Some(32), Some(6)),
        row("c1", true, None, None),
        row("c2", true, None, Some(5)),
    ];
    let (dir, input) = write_jsonl(&rows);
    let output = dir.path().join("localisation.jsonl");
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--localise", "-o"])
        .arg(&output)
        .arg(&input)
        .assert()
        .success();
    let report = read_jsonl(&output);
    assert_eq!(report.len(), 1);
    let row = &report[0];
    assert_eq!(row["wrong_samples"], json!(2));
    assert_eq!(row["wrong_dropped_pct"], json!(100.0));
    assert_eq!(row["at_or_after_error_pct"], json!(50.0));
    assert_eq!(row["median_tokens_after"], json!(4.0));
    assert_eq!(row["median_tokens_before"], json!(2.0));
    assert_eq!(row["median_error_token"], json!(5.5)); // median(3, 8)
    assert_eq!(row["correct_dropped_pct"], json!(50.0));

    // A row `qrm-score --truncate skip` left unscored (null lists) fails, naming the row,
    // unless --drop-nan drops it; the other rows then give the same table.
    let mut with_unscored = rows.to_vec();
    with_unscored.push(json!({
        "question_id": "q0", "rm": "a", "benchmark": "synth-id", "sample": "long",
        "is_correct": false, "first_error_char": 3, "q_values": null, "token_offsets": null,
    }));
    let (dir, input) = write_jsonl(&with_unscored);
    let dropped = dir.path().join("dropped.jsonl");
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .arg("--localise")
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("row 5"));
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--localise", "--drop-nan", "-o"])
        .arg(&dropped)
        .arg(&input)
        .assert()
        .success();
    assert_eq!(read_jsonl(&dropped), report);

    // Scores without offsets: the error says what to run.
    let (dir, input) = write_jsonl(&scores_rows());
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .arg("--localise")
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("x.jsonl"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--emit-tokens"));
}

#[test]
fn usage_errors_exit_two() {
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .args(["--ci", "jackknife"])
        .assert()
        .code(2);
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--top-k", "1", "--correlation"])
        .assert()
        .code(2);
}

#[test]
fn bad_flag_values_exit_two_saying_what_is_wrong() {
    let (_dir, input) = write_jsonl(&scores_rows());
    let auroc = |args: &[&str], message: &str| {
        Command::cargo_bin("qrm-auroc")
            .unwrap()
            .args(args)
            .arg(&input)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    };
    auroc(&["--level", "1.5"], "strictly between 0 and 1");
    auroc(&["--percentiles", "0,2"], "2 is outside [0, 1]");
    auroc(&["--percentiles", "1:0:0.1"], "from (1) is above to (0)");
    auroc(&["--compare", "a,a"], "two different rm names");
    // A name the table does not have: listed with the names present, not an empty report.
    auroc(&["--compare", "a,zz"], "no `rm` named `zz` (present: a, b)");
    let filter = |args: &[&str], message: &str| {
        Command::cargo_bin("qrm-filter")
            .unwrap()
            .args(args)
            .arg(&input)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    };
    filter(&["--sweep", "1:0:0.1"], "from (1) is above to (0)");
    filter(&["--sweep", "0:1:0"], "step must be above 0");
    filter(&["--sweep", "0:1:1e-9"], "more than 10000");
    filter(&["--threshold", "NaN"], "not a finite number");
}

/// Two questions, skip 5: the release's tokens saved (Σ saved / Σ scored) differs from the
/// mean of the per-question ratios.
#[test]
fn reference_tokens_saved_is_the_released_total_ratio() {
    let row = |question: &str, sample: &str, correct: bool, q_values: Vec<f64>| {
        json!({
            "question_id": question, "rm": "a", "benchmark": "x", "sample": sample,
            "is_correct": correct, "predicted_answer": if correct { "4" } else { "5" },
            "q_values": q_values,
        })
    };
    let negative_from = |length: usize, from: usize| -> Vec<f64> {
        (0..length)
            .map(|t| if t >= from { -0.5 } else { 0.5 })
            .collect()
    };
    let rows = [
        // q0: 10 + 10 tokens, 5 + 5 scored; the wrong one goes negative at token 7 (scored
        // index 2) → 3 saved: 3 / 10 = 30 %.
        row("q0", "s0", true, vec![0.5; 10]),
        row("q0", "s1", false, negative_from(10, 7)),
        // q1: 20 + 6 tokens, 15 + 1 scored; the wrong one's only scored token is negative
        // → 1 saved: 1 / 16 = 6.25 %.
        row("q1", "s0", true, vec![0.5; 20]),
        row("q1", "s1", false, negative_from(6, 5)),
    ];
    let (dir, input) = write_jsonl(&rows);
    let output = dir.path().join("table1.jsonl");
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--vote", "reference", "-o"])
        .arg(&output)
        .arg(&input)
        .assert()
        .success();
    let report = read_jsonl(&output);
    // Release: (3 + 1) / (10 + 16) = 15.3846… %; per question: (30 + 6.25) / 2 = 18.125 %.
    let saved = report[0]["tokens_saved_pct"].as_f64().unwrap();
    assert!((saved - 400.0 / 26.0).abs() < 1e-12, "{saved}");
    assert_eq!(report[0]["tokens_saved_per_question_pct"], json!(18.125));
}

#[test]
fn filter_fails_on_non_finite_q_values_unless_dropped() {
    // An all-NaN sample compares false against every threshold, so it used to be kept.
    let mut rows = scores_rows();
    rows[1]["q_values"] = json!([null, null, null, null, null, null, null]);
    let (dir, input) = write_jsonl(&rows);
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "column `q_values` is missing or not finite in 1 row(s): 2",
        ))
        .stderr(predicate::str::contains("--drop-nan"));
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--drop-nan", "-o"])
        .arg(dir.path().join("x.jsonl"))
        .arg(&input)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "dropped 1 row(s) with a missing or non-finite `q_values`",
        ));
    // --top-k reads `reward`: the same rule.
    let mut rows = scores_rows();
    rows[3]["reward"] = json!(null);
    let (_dir, input) = write_jsonl(&rows);
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--top-k", "1"])
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "column `reward` is missing or not finite in 1 row(s): 4",
        ));
}

#[test]
fn auroc_q_min_fails_on_a_nan_inside_a_response() {
    let mut rows = scores_rows();
    rows[2]["q_values"][3] = json!(null);
    let (_dir, input) = write_jsonl(&rows);
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .args(["--score", "q_min"])
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "column `q_values` is missing or not finite in 1 row(s): 3",
        ));
}

#[test]
fn one_rm_label_with_two_model_ids_is_refused() {
    let mut rows = scores_rows();
    for row in &mut rows {
        let rm = row["rm"].as_str().unwrap().to_owned();
        row["rm_id"] = json!(format!("{rm}@0123456789ab"));
    }
    let (_dir, same) = write_jsonl(&rows);
    for tool in ["qrm-auroc", "qrm-filter"] {
        Command::cargo_bin(tool)
            .unwrap()
            .args(["--format", "csv"])
            .arg(&same)
            .assert()
            .success();
    }
    rows[0]["rm_id"] = json!("a@ffffffffffff");
    let (_dir, pooled) = write_jsonl(&rows);
    for tool in ["qrm-auroc", "qrm-filter"] {
        Command::cargo_bin(tool)
            .unwrap()
            .arg(&pooled)
            .assert()
            .code(1)
            .stderr(predicate::str::contains(
                "`rm` `a` has 2 different `rm_id`s (a@0123456789ab, a@ffffffffffff)",
            ))
            .stderr(predicate::str::contains("qrm-score --rm-name"));
    }
}

#[test]
fn duplicated_rows_fail_unless_the_first_is_kept() {
    let mut rows = scores_rows();
    let repeat = rows[0].clone();
    rows.push(repeat);
    let row_count = rows.len();
    let (dir, input) = write_jsonl(&rows);
    for tool in ["qrm-auroc", "qrm-filter"] {
        Command::cargo_bin(tool)
            .unwrap()
            .arg(&input)
            .assert()
            .code(1)
            .stderr(predicate::str::contains(format!(
                "row {row_count} repeats row 1 (question_id \"q0\", sample \"s0\", rm \"a\")"
            )));
    }
    let output = dir.path().join("report.jsonl");
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .args(["--drop-duplicates", "-o"])
        .arg(&output)
        .arg(&input)
        .assert()
        .success()
        .stderr(predicate::str::contains("dropped 1 duplicated"));
    assert_eq!(read_jsonl(&output)[0]["n"], json!(12));
}

#[test]
fn auroc_reads_a_pipe_from_qrm_import() {
    let import = cargo_bin("qrm-auroc").with_file_name("qrm-import");
    if !import.exists() {
        qrm::testing::skip("qrm-import is not built in this checkout");
        return;
    }
    let rows: Vec<Value> = (0..8)
        .map(|i| {
            json!({"question_id": format!("q{i}"), "question": "1+1", "response": "2",
                   "is_correct": i % 2 == 0, "benchmark": "toy", "reward": if i % 2 == 0 { 1.0 } else { 0.0 }})
        })
        .collect();
    let (dir, input) = write_jsonl(&rows);
    let mut imported = Command::new(&import)
        .arg(&input)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let output = dir.path().join("report.jsonl");
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .args(["--by", "benchmark", "-o"])
        .arg(&output)
        .stdin(imported.stdout.take().unwrap())
        .assert()
        .success();
    assert!(imported.wait().unwrap().success());
    let report = read_jsonl(&output);
    assert_eq!(report[0]["auroc"], json!(1.0));
}

/// A scores row of question `question` whose Q-values are [0.875, `min`, 0.875]: with
/// `--skip 0` its running minimum is `min` and a drop at θ > `min` saves 2 of its 3 tokens.
fn min_q_row(
    rm: &str,
    question: &str,
    sample: &str,
    correct: bool,
    answer: &str,
    min: f64,
) -> Value {
    json!({
        "question_id": question, "rm": rm, "rm_id": format!("{rm}@1"), "benchmark": "x",
        "sample": sample, "is_correct": correct, "predicted_answer": answer,
        "q_values": [0.875, min, 0.875],
    })
}

/// Runs qrm-filter with `args` on `input`, writing JSON lines, and returns the report rows.
fn filter_jsonl(dir: &Path, input: &Path, args: &[&str]) -> Vec<Value> {
    let output = dir.join("report.jsonl");
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(args)
        .arg("-o")
        .arg(&output)
        .arg(input)
        .assert()
        .success();
    read_jsonl(&output)
}

fn close(value: &Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-4)
}

/// Calibration: rm `a`'s correct running minima 0.125, 0.25, 0.375, 0.5 (and a wrong −0.875,
/// ignored), rm `b`'s 0.5, 0.625, 0.75, 0.875 (dyadic, so exact in f32).
fn calibration_rows() -> Vec<Value> {
    let mut rows = Vec::new();
    for (rm, minima) in [
        ("a", [0.125, 0.25, 0.375, 0.5]),
        ("b", [0.5, 0.625, 0.75, 0.875]),
    ] {
        for (i, min) in minima.into_iter().enumerate() {
            rows.push(min_q_row(rm, &format!("c{i}"), "s0", true, "4", min));
        }
        rows.push(min_q_row(rm, "c0", "s1", false, "5", -0.875));
    }
    rows
}

/// The test question t0, the same samples under both RMs: correct minima 0.375, 0.375, 0.125
/// ("4"), wrong 0.0 ("5") and 0.25 ("6").
fn test_rows() -> Vec<Value> {
    let mut rows = Vec::new();
    for rm in ["a", "b"] {
        for (sample, correct, answer, min) in [
            ("s0", true, "4", 0.375),
            ("s1", true, "4", 0.375),
            ("s2", true, "4", 0.125),
            ("s3", false, "5", 0.0),
            ("s4", false, "6", 0.25),
        ] {
            rows.push(min_q_row(rm, "t0", sample, correct, answer, min));
        }
    }
    rows
}

#[test]
fn calibrate_file_sets_a_conformal_threshold_per_rm_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = dir.path().join("calibration.jsonl");
    let text: Vec<String> = calibration_rows().iter().map(Value::to_string).collect();
    std::fs::write(&calibration, text.join("\n") + "\n").unwrap();
    let (_input_dir, input) = write_jsonl(&test_rows());
    let calibration_arg = calibration.to_str().unwrap();
    let report = filter_jsonl(
        dir.path(),
        &input,
        &[
            "--skip",
            "0",
            "--calibrate",
            calibration_arg,
            "--sweep-alpha",
            "0.1:0.4:0.3",
        ],
    );
    assert_eq!(report.len(), 4); // (a, b) × α (0.1, 0.4)
    let row = |rm: &str, alpha: f64| {
        report
            .iter()
            .find(|r| r["rm"] == json!(rm) && close(&r["alpha"], alpha))
            .unwrap()
    };
    // n = 4. α = 0.1: k = ⌊0.1 · 5⌋ = 0 → θ = −∞ (null), nothing dropped.
    let none = row("a", 0.1);
    assert_eq!(none["method"], json!("conformal"));
    assert_eq!(none["conformal_k"], json!(0));
    assert_eq!(none["threshold"], Value::Null);
    assert_eq!(none["false_drop_rate"], json!(0.0));
    assert_eq!(none["filtered_pct"], json!(0.0));
    // α = 0.4: k = ⌊2⌋ = 2 → θ_a = 0.25, the 2nd smallest. Drop iff min < 0.25: the correct
    // 0.125 and the wrong 0.0 go; the wrong 0.25 (a tie) stays.
    let a = row("a", 0.4);
    assert_eq!(a["threshold"], json!(0.25));
    assert_eq!(a["conformal_k"], json!(2));
    assert_eq!(a["calibration_correct"], json!(4));
    assert_eq!(a["calibration_questions"], json!(4));
    assert_eq!(
        (a["correct_samples"].clone(), a["wrong_samples"].clone()),
        (json!(3), json!(2))
    );
    assert!(close(&a["false_drop_rate"], 1.0 / 3.0));
    // Wilson 95 % for 1 of 3: (1/3 + z²/6 ± z·√(2/27 + z²/36)) / (1 + z²/3), z = 1.959964
    // → 0.426916 ± 0.365425 = (0.061491, 0.792341).
    assert!(
        close(&a["false_drop_low"], 0.061491),
        "{}",
        a["false_drop_low"]
    );
    assert!(
        close(&a["false_drop_high"], 0.792341),
        "{}",
        a["false_drop_high"]
    );
    assert_eq!(a["wrong_drop_rate"], json!(0.5));
    // Table 1: all 5 vote "4" 3 : 1 : 1, the kept 3 vote "4" 2 : 1 → both correct; 2 of 5
    // dropped = 40 %, 2 · 2 of 15 tokens saved = 26.67 %; proportions 3/5 and 2/3.
    assert_eq!(
        (a["accuracy"].clone(), a["accuracy_filtered"].clone()),
        (json!(1.0), json!(1.0))
    );
    assert!(close(&a["filtered_pct"], 40.0));
    assert!(close(&a["tokens_saved_pct"], 400.0 / 15.0));
    assert!(close(&a["proportion_correct"], 0.6));
    assert!(close(&a["proportion_correct_filtered"], 2.0 / 3.0));
    // θ_b = 0.625 drops all five: every correct one counts as a false drop (the rule's
    // decision), and the question falls back to all its samples.
    let b = row("b", 0.4);
    assert_eq!(b["threshold"], json!(0.625));
    assert_eq!(b["false_drop_rate"], json!(1.0));
    assert_eq!(b["false_drop_high"], json!(1.0));
    assert_eq!(b["wrong_drop_rate"], json!(1.0));
    assert_eq!(b["fallback_questions"], json!(1));
    assert_eq!(b["filtered_pct"], json!(0.0));

    // A calibration file without a correct sample of rm b fails naming the file and the rm.
    let without_b: Vec<String> = calibration_rows()
        .iter()
        .filter(|r| r["rm"] != json!("b") || r["is_correct"] == json!(false))
        .map(Value::to_string)
        .collect();
    std::fs::write(&calibration, without_b.join("\n") + "\n").unwrap();
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--max-false-drop", "0.4", "--calibrate", calibration_arg])
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(calibration_arg))
        .stderr(predicate::str::contains("no correct sample of `rm` `b`"))
        .stderr(predicate::str::contains("RMs with correct samples: a"));

    // The same label, another model: refused.
    let mut other = calibration_rows();
    for row in &mut other {
        row["rm_id"] = json!(format!("{}@2", row["rm"].as_str().unwrap()));
    }
    let text: Vec<String> = other.iter().map(Value::to_string).collect();
    std::fs::write(&calibration, text.join("\n") + "\n").unwrap();
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--max-false-drop", "0.4", "--calibrate", calibration_arg])
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "`rm` `a` is `a@2` here but `a@1` in",
        ));
}

#[test]
fn calibrate_fraction_splits_questions_and_sweeps_alpha() {
    // scores_rows: correct samples' Q is 0.5 throughout, wrong ones fall to −0.5. Whatever
    // the split, θ = 0.5: every calibration score is 0.5, and with at least one correct
    // question (2 samples) in the calibration set k = ⌊α(n + 1)⌋ ≥ ⌊0.4 · 3⌋ = 1. No correct
    // sample is below it, every wrong one is.
    let (dir, input) = write_jsonl(&scores_rows());
    let figure = dir.path().join("alpha.svg");
    let figure_arg = figure.to_str().unwrap();
    let args = [
        "--calibrate-fraction",
        "0.5",
        "--sweep-alpha",
        "0.4:0.6:0.1",
        "--plot",
        figure_arg,
    ];
    for seed in ["0", "1", "2"] {
        let seeded: Vec<&str> = args.iter().copied().chain(["--seed", seed]).collect();
        let report = filter_jsonl(dir.path(), &input, &seeded);
        assert!(!report.is_empty());
        for row in &report {
            assert_eq!(row["threshold"], json!(0.5));
            assert_eq!(row["false_drop_rate"], json!(0.0));
            if row["wrong_samples"].as_u64().unwrap() > 0 {
                assert_eq!(row["wrong_drop_rate"], json!(1.0));
            }
        }
        // 7 distinct questions (q0–q5, m0), round(3.5) = 4 for calibration: per rm and α,
        // the calibration and test questions partition them, and both RMs get the same split.
        let test_questions = |rm: &str| -> Vec<(Value, Value)> {
            report
                .iter()
                .filter(|r| r["rm"] == json!(rm) && close(&r["alpha"], 0.5))
                .map(|r| {
                    assert_eq!(r["calibration_questions"], json!(4));
                    (r["benchmark"].clone(), r["questions"].clone())
                })
                .collect()
        };
        let total: u64 = test_questions("a")
            .iter()
            .map(|(_, n)| n.as_u64().unwrap())
            .sum();
        assert_eq!(total, 3, "seed {seed}");
        assert_eq!(test_questions("a"), test_questions("b"), "seed {seed}");
        // The same seed, the same split.
        assert_eq!(filter_jsonl(dir.path(), &input, &seeded), report);
    }
    let svg = std::fs::read_to_string(&figure).unwrap();
    assert!(svg.contains("max false-drop α (calibrated)"));

    // Markdown, for reports.
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(["--calibrate-fraction", "0.5", "--max-false-drop", "0.3", "--format", "markdown"])
        .arg(&input)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "| rm | benchmark | method | alpha | warmup | warmup_percentile | threshold | conformal_k |",
        ))
        .stdout(predicate::str::contains("| false_drop_rate | false_drop_low | false_drop_high |"))
        .stdout(predicate::str::contains("| a | gsm8k | conformal | 0.3000 |"));
}

#[test]
fn warmup_keeps_the_first_samples_and_filters_the_rest_by_hand() {
    // skip 0, K = 3, P = 50: warm-up minima 0.375, 0.25, 0.625 → θ = the median 0.375. Later:
    // correct 0.25 dropped, wrong 0.5 kept, wrong 0.125 dropped.
    let rows: Vec<Value> = [
        ("s0", true, "4", 0.375),
        ("s1", false, "5", 0.25),
        ("s2", true, "4", 0.625),
        ("s3", true, "4", 0.25),
        ("s4", false, "5", 0.5),
        ("s5", false, "6", 0.125),
    ]
    .into_iter()
    .map(|(sample, correct, answer, min)| min_q_row("a", "q0", sample, correct, answer, min))
    .collect();
    let (dir, input) = write_jsonl(&rows);
    let args = ["--skip", "0", "--warmup", "3", "--warmup-percentile", "50"];
    let report = filter_jsonl(dir.path(), &input, &args);
    assert_eq!(report.len(), 1);
    let row = &report[0];
    assert_eq!(row["method"], json!("warmup"));
    assert_eq!(
        (row["warmup"].clone(), row["warmup_percentile"].clone()),
        (json!(3), json!(50.0))
    );
    assert_eq!(row["alpha"], Value::Null);
    assert_eq!(row["threshold"], json!(0.375));
    assert_eq!(row["correct_samples"], json!(1));
    assert_eq!(row["false_drop_rate"], json!(1.0));
    assert_eq!(row["wrong_samples"], json!(2));
    assert_eq!(row["wrong_drop_rate"], json!(0.5));
    // Table 1 over all six: 2 of 6 dropped.
    assert!(close(&row["filtered_pct"], 100.0 / 3.0));
}

#[test]
fn localise_adds_where_the_calibrated_filter_drops() {
    // The localisation fixture of `localise_places_drops_relative_to_the_first_error` (skip
    // 5), calibrated on correct minima 0, 0.25, 0.5, 0.75 of rm a: α = 0.4, k = 2 → θ = 0.25,
    // between the fixture's −0.5 and 0.5, so the drops are those at threshold 0 there.
    let offsets: Vec<u32> = (0..10).map(|t| 4 * t).collect();
    let q = |drop: Option<usize>| -> Vec<f64> {
        (0..10)
            .map(|t| {
                if drop.is_some_and(|d| t >= d) {
                    -0.5
                } else {
                    0.5
                }
            })
            .collect()
    };
    let row = |sample: &str, correct: bool, error: Option<u32>, drop: Option<usize>| {
        json!({
            "question_id": "q0", "rm": "a", "benchmark": "synth-id", "sample": sample,
            "is_correct": correct, "first_error_char": error, "predicted_answer": "1",
            "q_values": q(drop), "token_offsets": offsets,
        })
    };
    let rows = [
        row("w1", false, Some(13), Some(7)),
        row("w2", false, Some(32), Some(6)),
        row("c1", true, None, None),
        row("c2", true, None, Some(5)),
    ];
    let (dir, input) = write_jsonl(&rows);
    let calibration = dir.path().join("calibration.jsonl");
    let text: Vec<String> = [0.0, 0.25, 0.5, 0.75]
        .iter()
        .enumerate()
        .map(|(i, min)| {
            json!({"question_id": format!("c{i}"), "rm": "a", "is_correct": true,
                   "q_values": [0.9, 0.9, 0.9, 0.9, 0.9, min]})
            .to_string()
        })
        .collect();
    std::fs::write(&calibration, text.join("\n") + "\n").unwrap();
    let report = filter_jsonl(
        dir.path(),
        &input,
        &[
            "--localise",
            "--max-false-drop",
            "0.4",
            "--calibrate",
            calibration.to_str().unwrap(),
        ],
    );
    let row = &report[0];
    assert_eq!(row["threshold"], json!(0.25));
    assert_eq!(row["false_drop_rate"], json!(0.5));
    assert_eq!(row["wrong_drop_rate"], json!(1.0));
    assert_eq!(row["located_wrong_samples"], json!(2));
    assert_eq!(row["at_or_after_error_pct"], json!(50.0));
    assert_eq!(row["median_tokens_after"], json!(4.0));
    assert_eq!(row["median_tokens_before"], json!(2.0));
}

#[test]
fn calibration_flags_in_bad_combinations_exit_two() {
    let (dir, input) = write_jsonl(&scores_rows());
    let figure = dir.path().join("x.svg");
    let filter = |args: &[&str], message: &str| {
        Command::cargo_bin("qrm-filter")
            .unwrap()
            .args(args)
            .arg(&input)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    };
    filter(&["--max-false-drop", "0.1"], "--calibrate");
    filter(&["--calibrate-fraction", "0.5"], "--max-false-drop");
    filter(
        &["--calibrate-fraction", "0.5", "--max-false-drop", "1.5"],
        "strictly between 0 and 1",
    );
    filter(
        &["--calibrate-fraction", "0.5", "--max-false-drop", "0"],
        "strictly between 0 and 1",
    );
    filter(
        &["--calibrate-fraction", "1", "--max-false-drop", "0.1"],
        "calibration share",
    );
    filter(
        &["--calibrate-fraction", "0.5", "--sweep-alpha", "0:0.5:0.1"],
        "gives α = 0",
    );
    filter(
        &[
            "--calibrate-fraction",
            "0.5",
            "--max-false-drop",
            "0.1",
            "--sweep-alpha",
            "0.1:0.2:0.1",
        ],
        "cannot be used with",
    );
    filter(
        &[
            "--calibrate",
            "x.parquet",
            "--calibrate-fraction",
            "0.5",
            "--max-false-drop",
            "0.1",
        ],
        "cannot be used with",
    );
    filter(
        &[
            "--calibrate-fraction",
            "0.5",
            "--max-false-drop",
            "0.1",
            "--threshold",
            "0.2",
        ],
        "cannot be used with",
    );
    filter(
        &[
            "--warmup",
            "3",
            "--calibrate-fraction",
            "0.5",
            "--max-false-drop",
            "0.1",
        ],
        "cannot be used with",
    );
    filter(&["--warmup", "0"], "--warmup");
    filter(&["--warmup-percentile", "50"], "--warmup");
    filter(
        &["--warmup", "2", "--warmup-percentile", "101"],
        "percentile in [0, 100]",
    );
    filter(
        &[
            "--by",
            "benchmark",
            "--calibrate-fraction",
            "0.5",
            "--max-false-drop",
            "0.1",
        ],
        "`--by` must include `rm`",
    );
    let plot = [
        "--calibrate-fraction",
        "0.5",
        "--max-false-drop",
        "0.1",
        "--plot",
    ];
    Command::cargo_bin("qrm-filter")
        .unwrap()
        .args(plot)
        .arg(&figure)
        .arg(&input)
        .assert()
        .code(2);
}

/// PRM800K-shaped scored rows, each rating its last step: ratings +1, +1, −1, −1, 0 with
/// Q-values at the final token 0.9, 0.2, 0.5, 0.1, 0.3 (earlier tokens at 0.0), `is_correct`
/// = rating ≥ 0 as `qrm-import --from prm800k` writes it.
fn step_rows() -> Vec<Value> {
    [(1, 0.9), (1, 0.2), (-1, 0.5), (-1, 0.1), (0, 0.3)]
        .iter()
        .enumerate()
        .map(|(row, &(rating, q))| {
            json!({
                "question_id": format!("q{}", row % 2),
                "rm": "q",
                "benchmark": "prm800k",
                "sample": format!("row{row}"),
                "is_correct": rating >= 0,
                "step_rating": rating,
                "step_index": row,
                "reward": q,
                "token_rewards": [0.0, q],
                "q_values": [0.0, q],
            })
        })
        .collect()
}

fn auroc_of(input: &Path, args: &[&str]) -> Value {
    let output = Command::cargo_bin("qrm-auroc")
        .unwrap()
        .arg(input)
        .args(args)
        .args(["--ci", "none", "--by", "rm", "--format", "jsonl"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    rows[0].clone()
}

#[test]
fn steps_score_each_rated_step_at_the_end_of_its_row() {
    let (_dir, input) = write_jsonl(&step_rows());
    // +1 {0.9, 0.2} against −1 {0.5, 0.1}: 0.9 beats both, 0.2 beats 0.1 only: 3/4.
    let steps = auroc_of(&input, &["--steps", "--score", "q_last"]);
    assert_eq!(steps["auroc"], json!(0.75));
    assert_eq!(
        (steps["n"].clone(), steps["n_pos"].clone()),
        (json!(4), json!(2))
    );
    // Neutral counted as good adds 0.3 (beats 0.1, not 0.5): (2 + 1 + 1)/6 = 2/3, which is also
    // the row-level
    // AUROC of q_last against is_correct (rating ≥ 0): the row's last token ends its rated step.
    let neutral = auroc_of(
        &input,
        &[
            "--steps",
            "--neutral-steps",
            "positive",
            "--score",
            "q_last",
        ],
    );
    let rows = auroc_of(&input, &["--score", "q_last"]);
    assert_eq!(neutral["auroc"], rows["auroc"]);
    assert!((rows["auroc"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    // The reward column reads the same way.
    assert_eq!(auroc_of(&input, &["--steps"])["auroc"], json!(0.75));
    // Bootstrap intervals work on step items; --ci samples is refused.
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .arg(&input)
        .args(["--steps", "--ci", "samples"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--ci samples"));
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .arg(&input)
        .args(["--neutral-steps", "positive"])
        .assert()
        .code(2);
}

#[test]
fn steps_read_a_list_of_ratings_at_each_step_end() {
    // One response "ab\ncd\nef" (steps at chars 0, 3, 6; tokens at 0, 2 "\n", 3, 5 "\n", 6,
    // 8 EOS) rated [+1, −1, +1] with Q 0.1 .. 0.6 per token: step ends are tokens 1, 3, 5,
    // so the items score 0.2 (+1), 0.4 (−1), 0.6 (+1). A second response "xy" (tokens 0, 2
    // EOS) rated [−1] scores 0.3 at its EOS.
    let rows = vec![
        json!({
            "question_id": "q0", "rm": "q", "sample": "a", "is_correct": true,
            "reward": 0.6, "step_starts": [0, 3, 6], "step_ratings": [1, -1, 1],
            "token_offsets": [0, 2, 3, 5, 6, 8],
            "token_rewards": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "q_values": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        }),
        json!({
            "question_id": "q1", "rm": "q", "sample": "a", "is_correct": false,
            "reward": 0.3, "step_starts": [0], "step_ratings": [-1],
            "token_offsets": [0, 2], "token_rewards": [0.0, 0.3], "q_values": [0.0, 0.3],
        }),
    ];
    let (_dir, input) = write_jsonl(&rows);
    // +1 {0.2, 0.6} against −1 {0.4, 0.3}: 0.6 beats both, 0.2 neither: 2/4.
    let steps = auroc_of(&input, &["--steps", "--score", "q_last"]);
    assert_eq!(steps["auroc"], json!(0.5));
    assert_eq!(
        (steps["n"].clone(), steps["n_pos"].clone()),
        (json!(4), json!(2))
    );
    // q_min over each step's prefix: 0.1, 0.1, 0.1 (+1, −1, +1 of q0) and 0.0 (q1): the +1
    // items {0.1, 0.1} against −1 {0.1, 0.0}: ties count half, (0.5 + 1) · 2 / 4 = 0.75.
    let q_min = auroc_of(&input, &["--steps", "--score", "q_min"]);
    assert_eq!(q_min["auroc"], json!(0.75));
}

/// Two RMs on one benchmark, three questions; `q3` has correct samples only.
/// a: q1 positives 0.9, 0.4, negative 0.5; q2 positive 0.2, negatives 0.1, 0.0, 0.3;
///    q3 positives 0.8, 0.7.
/// b: the same with q1's positives at 0.6, 0.7 (above its negative).
/// Token rewards: 0 at the first token, the reward at the second.
fn within_rows() -> Vec<Value> {
    let a = [0.9, 0.4, 0.5, 0.2, 0.1, 0.0, 0.3, 0.8, 0.7];
    let b = [0.6, 0.7, 0.5, 0.2, 0.1, 0.0, 0.3, 0.8, 0.7];
    let questions = ["q1", "q1", "q1", "q2", "q2", "q2", "q2", "q3", "q3"];
    let correct = [true, true, false, true, false, false, false, true, true];
    let mut rows = Vec::new();
    for (rm, rewards) in [("a", a), ("b", b)] {
        for index in 0..9 {
            rows.push(json!({
                "question_id": questions[index], "rm": rm, "benchmark": "x",
                "sample": index, "is_correct": correct[index], "reward": rewards[index],
                "token_rewards": [0.0, rewards[index]],
            }));
        }
    }
    rows
}

fn auroc_rows(input: &Path, args: &[&str]) -> Vec<Value> {
    let output = Command::cargo_bin("qrm-auroc")
        .unwrap()
        .arg(input)
        .args(args)
        .args(["--format", "jsonl"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn within_adds_a_within_question_row_after_each_pooled_row() {
    let (_dir, input) = write_jsonl(&within_rows());
    let rows = auroc_rows(&input, &["--within", "question_id", "--seed", "3"]);
    assert_eq!(rows.len(), 4); // {a, b} × {pooled, within}
    let (pooled, within) = (&rows[0], &rows[1]);
    assert_eq!(
        (pooled["rm"].as_str(), pooled["kind"].as_str()),
        (Some("a"), Some("pooled"))
    );
    // Pooled a: positives 0.9, 0.4, 0.2, 0.8, 0.7 beat 4, 3, 2, 4, 4 of the 4 negatives → 17/20.
    assert_eq!(pooled["auroc"], json!(0.85));
    assert_eq!(pooled["n_pairs"], json!(20));
    assert!(pooled["n_groups"].is_null());
    assert_eq!(pooled["ci_method"], json!("delong"));
    // Within a: q1 U = 1 of 2·1 (0.9 > 0.5 > 0.4), q2 U = 2 of 1·3 (0.2 beats 0.1 and 0.0),
    // q3 one class → (1 + 2) / (2 + 3) = 0.6 over 2 groups and 5 pairs.
    assert_eq!(within["kind"], json!("within question_id"));
    assert_eq!(within["auroc"], json!(0.6));
    assert_eq!((&within["n"], &within["n_pos"]), (&json!(9), &json!(5)));
    assert_eq!(
        (&within["n_groups"], &within["n_pairs"]),
        (&json!(2), &json!(5))
    );
    assert_eq!(within["ci_method"], json!("cluster-bootstrap"));
    assert_eq!(
        within["note"],
        json!("1 of 3 `question_id` groups have one class: no pairs")
    );
    // Resamples of {q1, q2}: A_w* ∈ {½ (q1 only), 0.6, ⅔ (q2 only)}, so the interval lies in
    // [½, ⅔].
    let (low, high) = (
        within["ci_low"].as_f64().unwrap(),
        within["ci_high"].as_f64().unwrap(),
    );
    assert!(
        (0.5..=0.6).contains(&low) && (0.6..=2.0 / 3.0).contains(&high),
        "{low} {high}"
    );
    // The pooled row is the one qrm-auroc writes without --within.
    let plain = auroc_rows(&input, &[]);
    assert_eq!(plain.len(), 2);
    for key in ["auroc", "ci_low", "ci_high", "n", "n_pos", "note"] {
        assert_eq!(plain[0][key], pooled[key], "{key}");
    }
    assert!(plain[0].get("kind").is_none());
    // Seeded: the same seed gives the same interval.
    let again = auroc_rows(&input, &["--within", "question_id", "--seed", "3"]);
    assert_eq!(again[1]["ci_low"], within["ci_low"]);
    // --ci none: no interval on either kind of row.
    let none = auroc_rows(&input, &["--within", "question_id", "--ci", "none"]);
    assert!(none[1]["ci_low"].is_null());
    assert_eq!(none[1]["ci_method"], json!("none"));
}

#[test]
fn within_compare_gives_the_paired_cluster_bootstrap() {
    let (_dir, input) = write_jsonl(&within_rows());
    let rows = auroc_rows(&input, &["--within", "question_id", "--compare", "a,b"]);
    assert_eq!(rows.len(), 2);
    let within = &rows[1];
    assert_eq!(within["kind"], json!("within question_id"));
    // b: q1 U = 2 of 2, q2 U = 2 of 3 → 4/5; Δ = 0.6 − 0.8 = −0.2.
    assert_eq!(within["auroc"], json!(0.6));
    assert!((within["auroc_b"].as_f64().unwrap() - 0.8).abs() < 1e-12);
    assert!((within["delta"].as_f64().unwrap() + 0.2).abs() < 1e-12);
    // Resamples: Δ* = −½ (q1 only), −0.2, 0 (q2 only, the same in a and b): never above 0,
    // so the tail #{Δ* ≥ 0} is the q2-only resamples (¼ of them, by chance).
    let (low, high) = (
        within["delta_ci_low"].as_f64().unwrap(),
        within["delta_ci_high"].as_f64().unwrap(),
    );
    assert!((-0.5..=-0.2).contains(&low) && high == 0.0, "{low} {high}");
    let p_value = within["p_value"].as_f64().unwrap();
    assert!((0.3..0.7).contains(&p_value), "{p_value}");
    // The pooled row keeps DeLong's test.
    assert_eq!(rows[0]["ci_method"], json!("delong"));
}

#[test]
fn within_needs_its_column_and_no_nulls_in_it() {
    let (_dir, input) = write_jsonl(&within_rows());
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .args(["--within", "question"])
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("missing column `question`"))
        .stderr(predicate::str::contains("scores.jsonl"));
    let mut rows = within_rows();
    rows[4]["question_id"] = Value::Null;
    let (_dir, input) = write_jsonl(&rows);
    Command::cargo_bin("qrm-auroc")
        .unwrap()
        .args(["--within", "question_id"])
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "row 5, column `question_id`: null value",
        ));
}

#[test]
fn within_with_only_one_class_per_question_is_a_noted_null() {
    // Every question has one class: the pooled AUROC exists, the within one does not.
    let rows: Vec<Value> = [("q1", true, 0.9), ("q1", true, 0.8), ("q2", false, 0.1)]
        .iter()
        .enumerate()
        .map(|(i, (q, c, r))| {
            json!({"question_id": q, "rm": "a", "benchmark": "x", "sample": i,
                   "is_correct": c, "reward": r})
        })
        .collect();
    let (_dir, input) = write_jsonl(&rows);
    let rows = auroc_rows(&input, &["--within", "question_id", "--ci", "none"]);
    assert_eq!(rows[0]["auroc"], json!(1.0));
    assert!(rows[1]["auroc"].is_null());
    assert!(rows[1]["note"]
        .as_str()
        .unwrap()
        .contains("no group has both classes (2 group(s)"));
}

#[test]
fn within_plot_draws_the_pooled_rows() {
    let (dir, input) = write_jsonl(&within_rows());
    let figure = dir.path().join("auroc.svg");
    let rows = auroc_rows(
        &input,
        &[
            "--within",
            "question_id",
            "--plot",
            figure.to_str().unwrap(),
        ],
    );
    assert_eq!(rows.len(), 4);
    let svg = std::fs::read_to_string(&figure).unwrap();
    // Pooled a 0.85 and b (q1 0.6, 0.7 above 0.5: 18/20) 0.9 are drawn; within a's 0.6 is not.
    // Bar labels have three decimals.
    assert!(svg.contains("0.850") && svg.contains("0.900"), "{svg}");
    assert!(!svg.contains("0.600"));
}

#[test]
fn within_rows_come_per_percentile() {
    let (_dir, input) = write_jsonl(&within_rows());
    let rows = auroc_rows(
        &input,
        &[
            "--within",
            "question_id",
            "--percentiles",
            "0,1",
            "--by",
            "rm",
        ],
    );
    assert_eq!(rows.len(), 2 * 2 * 2); // {a, b} × {0, 1} × {pooled, within}
                                       // At 0 every score is the first token's 0: all tied, ½ pooled and within.
    let kinds: Vec<(&Value, &Value, &Value)> = rows[..4]
        .iter()
        .map(|r| (&r["percentile"], &r["kind"], &r["auroc"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (&json!(0.0), &json!("pooled"), &json!(0.5)),
            (&json!(0.0), &json!("within question_id"), &json!(0.5)),
            (&json!(1.0), &json!("pooled"), &json!(0.85)),
            (&json!(1.0), &json!("within question_id"), &json!(0.6)),
        ]
    );
}

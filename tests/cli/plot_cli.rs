//! qrm-plot end to end: tables in, figures out, errors that say what to do.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::Path;

fn qrm_plot() -> Command {
    Command::cargo_bin("qrm-plot").unwrap()
}

fn write(path: &Path, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
}

#[test]
fn auroc_report_from_stdin_becomes_a_png() {
    let directory = tempfile::tempdir().unwrap();
    let mut report = String::new();
    for (rm, auroc) in [("baseline", 0.66), ("qrm", 0.71)] {
        let row = serde_json::json!({
            "rm": rm, "benchmark": "gsm8k", "score": "reward", "percentile": null,
            "n": 1319, "n_pos": 900, "auroc": auroc, "ci_low": auroc - 0.03,
            "ci_high": auroc + 0.03, "ci_method": "bootstrap", "note": null,
        });
        report.push_str(&format!("{row}\n"));
    }
    let figure = directory.path().join("auroc.png");
    qrm_plot()
        .args(["-q", "auroc", "-", "-o"])
        .arg(&figure)
        .write_stdin(report)
        .assert()
        .success()
        .stdout(predicate::str::is_empty());
    assert_png(&figure);
}

#[test]
fn training_log_becomes_an_svg_with_its_panels() {
    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("log.jsonl");
    let rows: Vec<serde_json::Value> = (1..=30)
        .map(|step| {
            let mut row = serde_json::json!({
                "step": step, "loss": 0.7 - 0.01 * step as f64, "loss_bt": 0.6 - 0.01 * step as f64,
                "loss_contrastive": 0.2, "accuracy": 0.5 + 0.01 * step as f64,
                "learning_rate": 1e-5, "grad_norm": 1.0,
            });
            if step % 10 == 0 {
                row["eval_accuracy"] = (0.55 + 0.01 * step as f64).into();
                row["eval_loss"] = 0.65.into();
            }
            row
        })
        .collect();
    write(&log, &rows);
    let figure = directory.path().join("training.svg");
    qrm_plot()
        .args(["-q", "training"])
        .arg(&log)
        .arg("-o")
        .arg(&figure)
        .assert()
        .success();
    let svg = std::fs::read_to_string(&figure).unwrap();
    assert!(svg.contains("Pairwise accuracy") && svg.contains("Bradley–Terry"));
}

#[test]
fn tokens_of_a_selected_sample_become_html() {
    let directory = tempfile::tempdir().unwrap();
    let scores = directory.path().join("scores.jsonl");
    write(
        &scores,
        &[
            serde_json::json!({"question_id": "q1", "sample": "0", "rm": "qrm", "reward": 0.5,
                "response": "1 < 2", "tokens": ["1", " <", " 2"], "q_values": [0.9, -0.9, 0.0]}),
            serde_json::json!({"question_id": "q1", "sample": "1", "rm": "qrm", "reward": 0.1,
                "response": "no", "tokens": ["no"], "q_values": [-1.0]}),
        ],
    );
    let page = directory.path().join("tokens.html");
    qrm_plot()
        .args(["-q", "tokens"])
        .arg(&scores)
        .args(["--question-id", "q1", "--sample", "0", "-o"])
        .arg(&page)
        .assert()
        .success();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains(r#"title="token 1: q = -0.900"> &lt;</span>"#),
        "{html}"
    );
}

#[test]
fn tokens_with_a_nan_q_value_fail_naming_the_row_unless_drop_nan() {
    let directory = tempfile::tempdir().unwrap();
    let scores = directory.path().join("scores.jsonl");
    write(
        &scores,
        &[
            serde_json::json!({"question_id": "q1", "sample": "0", "tokens": ["a", "b"],
                "q_values": [0.5, 0.5]}),
            serde_json::json!({"question_id": "q1", "sample": "1", "tokens": ["a", "b"],
                "q_values": [0.5, null]}),
        ],
    );
    let page = directory.path().join("t.html");
    qrm_plot()
        .args(["tokens"])
        .arg(&scores)
        .args(["--row", "2", "-o"])
        .arg(&page)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "column `q_values` is missing or not finite in 1 row(s): 2",
        ));
    qrm_plot()
        .args(["tokens", "--drop-nan"])
        .arg(&scores)
        .args(["--row", "2", "-o"])
        .arg(&page)
        .assert()
        .success()
        .stderr(predicate::str::contains("1 non-finite `q_values` value(s)"));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("q = NaN"), "{html}");
}

#[test]
fn scores_without_tokens_say_how_to_get_them() {
    let directory = tempfile::tempdir().unwrap();
    let scores = directory.path().join("scores.jsonl");
    write(
        &scores,
        &[serde_json::json!({"question_id": "q1", "sample": "0", "q_values": [0.1]})],
    );
    qrm_plot()
        .args(["tokens"])
        .arg(&scores)
        .args(["--row", "1", "-o"])
        .arg(directory.path().join("t.svg"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--emit-tokens"));
}

#[test]
fn tokens_need_a_row_or_a_sample() {
    qrm_plot()
        .args(["tokens", "scores.parquet", "-o", "t.html"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--row"));
}

#[test]
fn unknown_figure_extension_is_an_error() {
    let directory = tempfile::tempdir().unwrap();
    let report = directory.path().join("sweep.jsonl");
    write(
        &report,
        &[
            serde_json::json!({"rm": "qrm", "benchmark": "gsm8k", "threshold": 0.0,
            "accuracy": 0.7, "accuracy_filtered": 0.75, "tokens_saved_pct": 12.0}),
        ],
    );
    qrm_plot()
        .arg("filter")
        .arg(&report)
        .arg("-o")
        .arg(directory.path().join("sweep.pdf"))
        .assert()
        // A bad `-o` value is a usage error (`qrm::Error::Usage`, exit 2).
        .code(2)
        .stderr(predicate::str::contains(".png or .svg"));
}

#[test]
fn report_with_only_null_aurocs_says_why_nothing_is_drawn() {
    let directory = tempfile::tempdir().unwrap();
    let report = directory.path().join("auroc.jsonl");
    write(
        &report,
        &[
            serde_json::json!({"rm": "qrm", "benchmark": "gsm8k", "percentile": null,
            "n": 3, "n_pos": 3, "auroc": null, "ci_low": null, "ci_high": null,
            "note": "only one class"}),
        ],
    );
    qrm_plot()
        .arg("auroc")
        .arg(&report)
        .arg("-o")
        .arg(directory.path().join("auroc.png"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nothing to plot"));
}

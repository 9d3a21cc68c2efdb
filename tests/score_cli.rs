//! CLI tests of `qrm-score` and `qrm-embed`.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use polars::prelude::*;
use qrm::pipeline::io::{read_table, Output};

fn write_parquet(path: &Path, frame: &mut DataFrame) {
    Output::new(Some(path.to_owned()), None)
        .write(frame)
        .unwrap();
}

fn part(rows: &[u64]) -> DataFrame {
    let names: Vec<String> = rows.iter().map(|r| format!("row {r}")).collect();
    df!("name" => names, "row_index" => rows.to_vec()).unwrap()
}

#[test]
fn merge_restores_input_order_and_drops_row_index() {
    let dir = tempfile::tempdir().unwrap();
    let parts: Vec<PathBuf> = [vec![1u64, 3, 5], vec![0, 2, 4]]
        .iter()
        .enumerate()
        .map(|(i, rows)| {
            let path = dir.path().join(format!("part{i}.parquet"));
            write_parquet(&path, &mut part(rows));
            path
        })
        .collect();
    let out = dir.path().join("all.parquet");
    Command::cargo_bin("qrm-score")
        .unwrap()
        .arg("merge")
        .args(&parts)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let merged = read_table(&out).unwrap();
    assert_eq!(merged.get_column_names(), ["name"]);
    let names: Vec<&str> = merged
        .column("name")
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .flatten()
        .collect();
    assert_eq!(
        names,
        ["row 0", "row 1", "row 2", "row 3", "row 4", "row 5"]
    );
}

#[test]
fn merge_refuses_a_missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("part0.parquet");
    write_parquet(&path, &mut part(&[0, 2, 4]));
    Command::cargo_bin("qrm-score")
        .unwrap()
        .arg("merge")
        .arg(&path)
        .arg("-o")
        .arg(dir.path().join("all.parquet"))
        .assert()
        .code(1)
        .stderr(predicates::str::contains("row_index 1 is missing"));
}

#[test]
fn score_without_rm_is_a_usage_error() {
    Command::cargo_bin("qrm-score")
        .unwrap()
        .arg("in.parquet")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--rm"));
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// `qrm-score`/`qrm-embed` with the tiny llama and the character tokenizer.
fn tool(name: &str, template: &str) -> Command {
    let mut command = Command::cargo_bin(name).unwrap();
    command
        .arg("--rm")
        .arg(fixture("tiny-llama"))
        .arg("--tokenizer")
        .arg(fixture("tiny-tokenizer/tokenizer.json"))
        .args(["--template", template, "-q"]);
    command
}

fn generations(dir: &Path, rows: usize) -> PathBuf {
    let questions: Vec<String> = (0..rows).map(|i| format!("What is {i} + {i}?")).collect();
    let responses: Vec<String> = (0..rows)
        .map(|i| format!("{i} + {i} = {}.{}", 2 * i, " Yes.".repeat(i % 6)))
        .collect();
    let correct: Vec<bool> = (0..rows).map(|i| i % 3 != 0).collect();
    let ids: Vec<String> = (0..rows).map(|i| format!("q{}", i % 5)).collect();
    let path = dir.join("generations.parquet");
    let mut frame = df!(
        "question_id" => ids,
        "question" => questions.clone(),
        "response" => responses.clone(),
        "is_correct" => correct
    )
    .unwrap();
    write_parquet(&path, &mut frame);
    let pairs = dir.join("pairs.parquet");
    let mut frame =
        df!("question" => questions, "chosen" => responses.clone(), "rejected" => responses)
            .unwrap();
    write_parquet(&pairs, &mut frame);
    path
}

fn list_column(frame: &DataFrame, name: &str) -> Vec<Vec<f32>> {
    let lists = frame.column(name).unwrap().list().unwrap().clone();
    (0..lists.len())
        .map(|i| {
            lists
                .get_as_series(i)
                .map(|s| s.f32().unwrap().iter().flatten().collect())
                .unwrap_or_default()
        })
        .collect()
}

fn assert_close(a: &DataFrame, b: &DataFrame) {
    assert_eq!(a.height(), b.height());
    for name in ["token_rewards", "q_values"] {
        for (x, y) in list_column(a, name).iter().zip(list_column(b, name)) {
            assert_eq!(x.len(), y.len());
            assert!(
                x.iter().zip(&y).all(|(u, v)| (u - v).abs() < 1e-5),
                "{name}: {x:?} vs {y:?}"
            );
        }
    }
    assert_eq!(a.column("question").unwrap(), b.column("question").unwrap());
}

#[test]
fn embed_then_score_through_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 12);
    let goal = dir.path().join("goal.safetensors");
    tool("qrm-embed", "chatml")
        .arg(dir.path().join("pairs.parquet"))
        .arg("-o")
        .arg(&goal)
        .assert()
        .success();
    let stored = qrm::model::goal::GoalState::load(&goal).unwrap();
    assert_eq!(stored.vector.len(), 32);
    assert_eq!(stored.metadata["count"], "12");
    assert_eq!(stored.metadata["template"], "chatml");
    assert_eq!(stored.metadata["eos"], "append");

    let bytes = std::fs::read(&input).unwrap();
    let output = tool("qrm-score", "chatml")
        .arg("-")
        .arg("--goal")
        .arg(&goal)
        .write_stdin(bytes)
        .assert()
        .success();
    let stdout = output.get_output().stdout.clone();
    let frame = IpcStreamReader::new(std::io::Cursor::new(stdout))
        .finish()
        .unwrap();
    assert_eq!(frame.height(), 12);
    for name in [
        "question_id",
        "is_correct",
        "rm",
        "reward",
        "response_tokens",
        "token_rewards",
        "q_values",
    ] {
        assert!(frame.column(name).is_ok(), "{name}");
    }
    for q_values in list_column(&frame, "q_values") {
        assert!(!q_values.is_empty() && q_values.iter().all(|q| (-1.0..=1.0).contains(q)));
    }
}

#[test]
fn a_goal_made_with_another_template_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 3);
    let goal = dir.path().join("goal.safetensors");
    tool("qrm-embed", "chatml")
        .arg(dir.path().join("pairs.parquet"))
        .arg("-o")
        .arg(&goal)
        .assert()
        .success();
    tool("qrm-score", "raw")
        .arg(&input)
        .arg("--goal")
        .arg(&goal)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("--template chatml"));
}

#[test]
fn batch_size_does_not_change_scores() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 10);
    let goal = dir.path().join("goal.safetensors");
    tool("qrm-embed", "chatml")
        .arg(dir.path().join("pairs.parquet"))
        .arg("-o")
        .arg(&goal)
        .assert()
        .success();
    let mut outputs = Vec::new();
    for batch_tokens in ["1", "100000"] {
        let out = dir.path().join(format!("scores-{batch_tokens}.parquet"));
        tool("qrm-score", "chatml")
            .arg(&input)
            .arg("--goal")
            .arg(&goal)
            .args(["--batch-tokens", batch_tokens, "-o"])
            .arg(&out)
            .assert()
            .success();
        outputs.push(read_table(&out).unwrap());
    }
    assert_close(&outputs[0], &outputs[1]);
}

#[test]
fn shards_then_merge_equal_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 11);
    let full = dir.path().join("full.parquet");
    tool("qrm-score", "chatml")
        .arg(&input)
        .arg("-o")
        .arg(&full)
        .assert()
        .success();
    let mut parts = Vec::new();
    for shard in ["0/3", "1/3", "2/3"] {
        let part = dir.path().join(format!("part{}.parquet", &shard[..1]));
        tool("qrm-score", "chatml")
            .arg(&input)
            .args(["--shard", shard, "--chunk-rows", "2", "-o"])
            .arg(&part)
            .assert()
            .success();
        parts.push(part);
    }
    let merged = dir.path().join("merged.parquet");
    Command::cargo_bin("qrm-score")
        .unwrap()
        .arg("merge")
        .args(&parts)
        .arg("-o")
        .arg(&merged)
        .assert()
        .success();
    let (full, merged) = (read_table(&full).unwrap(), read_table(&merged).unwrap());
    assert_eq!(full.get_column_names(), merged.get_column_names());
    assert_close(&full, &merged);
}

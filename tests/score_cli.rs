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

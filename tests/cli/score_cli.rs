//! CLI tests of `qrm-score` and `qrm-embed`.

use crate::support::tiny_model_dir;
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

pub(crate) fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// `qrm-score`/`qrm-embed` with the tiny llama and the character tokenizer.
pub(crate) fn tool(name: &str, template: &str) -> Command {
    let mut command = Command::cargo_bin(name).unwrap();
    command
        .arg("--rm")
        .arg(fixture("tiny-llama"))
        .arg("--tokenizer")
        .arg(fixture("tiny-tokenizer/tokenizer.json"))
        .args(["--template", template, "-q"]);
    command
}

pub(crate) fn generations(dir: &Path, rows: usize) -> PathBuf {
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

/// `qrm-embed` (chatml) of `dir/pairs.parquet`, as [`generations`] writes it, into
/// `dir/goal.safetensors`.
pub(crate) fn embed_goal(dir: &Path) -> PathBuf {
    let goal = dir.join("goal.safetensors");
    tool("qrm-embed", "chatml")
        .arg(dir.join("pairs.parquet"))
        .arg("-o")
        .arg(&goal)
        .assert()
        .success();
    goal
}

pub(crate) fn list_column(frame: &DataFrame, name: &str) -> Vec<Vec<f32>> {
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
    let goal = embed_goal(dir.path());
    let stored = qrm::score::goal::GoalState::load(&goal).unwrap();
    assert_eq!(stored.vector.len(), 32);
    assert_eq!(stored.provenance.count, Some(12));
    assert_eq!(stored.provenance.template.as_deref(), Some("chatml"));
    assert_eq!(stored.provenance.eos.as_deref(), Some("append"));

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
    let goal = embed_goal(dir.path());
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
    let goal = embed_goal(dir.path());
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
fn shared_prompts_score_as_whole_rows() {
    // 4 questions × 3 samples, interleaved, so the shared path scores sample sets.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("samples.parquet");
    let questions: Vec<String> = (0..12).map(|i| format!("What is {} + 1?", i % 4)).collect();
    let responses: Vec<String> = (0..12)
        .map(|i| format!("{} + 1 = {}.{}", i % 4, i, " Yes.".repeat(i % 5)))
        .collect();
    let mut frame = df!("question" => questions, "response" => responses).unwrap();
    write_parquet(&input, &mut frame);
    generations(dir.path(), 4);
    let goal = embed_goal(dir.path());
    let mut outputs = Vec::new();
    for switch in ["on", "off"] {
        let out = dir.path().join(format!("scores-{switch}.parquet"));
        tool("qrm-score", "chatml")
            .arg(&input)
            .arg("--goal")
            .arg(&goal)
            .args(["--shared-prompt", switch, "-o"])
            .arg(&out)
            .assert()
            .success();
        outputs.push(read_table(&out).unwrap());
    }
    assert_close(&outputs[0], &outputs[1]);
    tool("qrm-score", "chatml")
        .arg(&input)
        .args(["--shared-prompt", "maybe"])
        .assert()
        .code(2);
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
    // Shard 0 given as i/n, shard 1 from a Slurm array (--array=1-3: task 2 is shard 1),
    // shard 2 from a Kubernetes Indexed Job's index with --shard-count.
    let scheduler_vars = [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_STEP",
        "SLURM_ARRAY_TASK_COUNT",
        "JOB_COMPLETION_INDEX",
    ];
    type Flags<'a> = &'a [&'a str];
    type Vars<'a> = &'a [(&'a str, &'a str)];
    let shards: [(Flags, Vars); 3] = [
        (&["--shard", "0/3"], &[]),
        (
            &["--shard", "env"],
            &[
                ("SLURM_ARRAY_TASK_ID", "2"),
                ("SLURM_ARRAY_TASK_MIN", "1"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ],
        ),
        (
            &["--shard", "env", "--shard-count", "3"],
            &[("JOB_COMPLETION_INDEX", "2")],
        ),
    ];
    let mut parts = Vec::new();
    for (index, (flags, vars)) in shards.iter().enumerate() {
        let part = dir.path().join(format!("part{index}.parquet"));
        let mut command = tool("qrm-score", "chatml");
        for var in scheduler_vars {
            command.env_remove(var);
        }
        command
            .envs(vars.iter().copied())
            .arg(&input)
            .args(*flags)
            .args(["--chunk-rows", "2", "-o"])
            .arg(&part)
            .assert()
            .success();
        let rows = read_table(&part).unwrap().height();
        assert_eq!(rows, [4, 4, 3][index], "shard {index}: 11 rows mod 3");
        parts.push(part);
    }
    let mut command = tool("qrm-score", "chatml");
    for var in scheduler_vars {
        command.env_remove(var);
    }
    command
        .arg(&input)
        .args(["--shard", "env"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("neither SLURM_ARRAY_TASK_ID"));
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

/// Copies a fixture model directory to `dir/name`, so two models can share a folder name.
fn model_copy(fixture_name: &str, dir: &Path, name: &str) -> PathBuf {
    let copy = dir.join(name);
    std::fs::create_dir_all(&copy).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(fixture_name).join(file), copy.join(file)).unwrap();
    }
    copy
}

/// `qrm-score` with the character tokenizer and the model at `rm`.
fn score_with(rm: &Path) -> Command {
    let mut command = Command::cargo_bin("qrm-score").unwrap();
    command
        .arg("--rm")
        .arg(rm)
        .arg("--tokenizer")
        .arg(fixture("tiny-tokenizer/tokenizer.json"))
        .args(["--template", "chatml", "-q"]);
    command
}

fn partial(output: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", output.display()))
}

#[test]
fn bad_flag_values_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 2);
    for (flags, message) in [
        (
            &["--device", "gpu0"][..],
            "invalid value 'gpu0' for '--device",
        ),
        (
            &["--batch-tokens", "0"],
            "invalid value '0' for '--batch-tokens",
        ),
        (
            &["--chunk-rows", "0"],
            "invalid value '0' for '--chunk-rows",
        ),
        (&["--shard", "3/3"], "invalid value '3/3' for '--shard"),
        (&["--max-len", "8"], "invalid value '8' for '--max-len"),
        // The tiny models' context is 64 tokens.
        (&["--max-len", "65"], "max_position_embeddings 64"),
    ] {
        tool("qrm-score", "chatml")
            .arg(&input)
            .args(flags)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(message));
    }
}

#[test]
fn a_header_only_or_incomplete_input_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.parquet");
    let mut frame = df!(
        "question" => Vec::<String>::new(),
        "response" => Vec::<String>::new()
    )
    .unwrap();
    write_parquet(&input, &mut frame);
    let out = dir.path().join("scores.parquet");
    tool("qrm-score", "chatml")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("no rows"));
    assert!(!out.exists() && !partial(&out).exists());

    let mut frame = df!("question" => ["What is 1 + 1?"]).unwrap();
    write_parquet(&input, &mut frame);
    tool("qrm-score", "chatml")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("missing column `response`"));
    assert!(!out.exists() && !partial(&out).exists());
}

#[test]
fn truncation_counts_rows_that_lost_their_whole_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 6);
    // --max-len 16 leaves 15 tokens (one per char) for the response: rows 0 ("0 + 0 = 0.", 10)
    // and 1 ("1 + 1 = 2. Yes.", 15) fit after dropping the prompt, rows 2–5 (20–35) are cut
    // too, and every row lost its prompt.
    tool("qrm-score", "chatml")
        .arg(&input)
        .args(["--max-len", "16"])
        .env("RUST_LOG", "info")
        .assert()
        .success()
        .stderr(predicates::str::contains(
            "6 rows lost prompt tokens, 4 had the response cut, 0 skipped",
        ));
}

#[test]
fn models_in_folders_named_alike_get_different_rm_ids() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 3);
    let llama = model_copy("tiny-llama", &dir.path().join("a"), "bt");
    let qwen = model_copy("tiny-qwen2", &dir.path().join("b"), "bt");
    let mut ids = Vec::new();
    for rm in [&llama, &qwen] {
        let out = dir.path().join("scores.parquet");
        score_with(rm)
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        let frame = read_table(&out).unwrap();
        let names = frame.get_column_names();
        let rm_at = names.iter().position(|n| n.as_str() == "rm").unwrap();
        assert_eq!(names[rm_at + 1].as_str(), "rm_id");
        let rm: Vec<_> = frame.column("rm").unwrap().str().unwrap().iter().collect();
        assert_eq!(rm, [Some("bt"); 3]);
        let id = frame
            .column("rm_id")
            .unwrap()
            .str()
            .unwrap()
            .get(0)
            .unwrap();
        assert!(
            id.starts_with("bt@") && id.len() == "bt@".len() + 12,
            "{id}"
        );
        ids.push(id.to_owned());
    }
    assert_ne!(ids[0], ids[1]);

    let out = dir.path().join("named.parquet");
    score_with(&llama)
        .arg(&input)
        .args(["--rm-name", "bt-llama", "-o"])
        .arg(&out)
        .assert()
        .success();
    let frame = read_table(&out).unwrap();
    assert_eq!(
        frame.column("rm").unwrap().str().unwrap().get(0),
        Some("bt-llama")
    );
    let id = frame
        .column("rm_id")
        .unwrap()
        .str()
        .unwrap()
        .get(0)
        .unwrap();
    assert_eq!(id, format!("bt-llama@{}", &ids[0]["bt@".len()..]));
}

#[test]
fn resume_refuses_another_runs_partial_output_and_says_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 7);
    let llama = model_copy("tiny-llama", &dir.path().join("a"), "bt");
    let qwen = model_copy("tiny-qwen2", &dir.path().join("b"), "bt");
    let goal = dir.path().join("goal.safetensors");
    Command::cargo_bin("qrm-embed")
        .unwrap()
        .arg(dir.path().join("pairs.parquet"))
        .arg("--rm")
        .arg(&llama)
        .arg("--tokenizer")
        .arg(fixture("tiny-tokenizer/tokenizer.json"))
        .args(["--template", "chatml", "-q", "-o"])
        .arg(&goal)
        .assert()
        .success();
    let out = dir.path().join("scores.parquet");
    score_with(&llama)
        .arg(&input)
        .arg("--goal")
        .arg(&goal)
        .args(["--chunk-rows", "3", "--stop-after-chunks", "1", "-o"])
        .arg(&out)
        .assert()
        .success();
    assert!(partial(&out).join("manifest.json").exists());

    // Without --resume: refused, saying how to continue or clear.
    score_with(&llama)
        .arg(&input)
        .arg("--goal")
        .arg(&goal)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("pass --resume"))
        .stderr(predicates::str::contains("to start over"));
    let refused = |command: &mut Command, message: &str| {
        command
            .arg("--resume")
            .arg("-o")
            .arg(&out)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(message))
            .stderr(predicates::str::contains("to start over"));
    };
    // Another model in a folder of the same name (the goal is another model's, so it is left out).
    refused(
        score_with(&qwen).arg(&input),
        "the model weights changed (sha256 ",
    );
    refused(
        score_with(&llama)
            .arg(&input)
            .arg("--goal")
            .arg(&goal)
            .args(["--max-len", "32"]),
        "--max-len changed (64 → 32)",
    );
    refused(score_with(&llama).arg(&input), "the goal was dropped");
    let other_input = dir.path().join("other.parquet");
    let mut frame = read_table(&input).unwrap().head(Some(6));
    write_parquet(&other_input, &mut frame);
    refused(
        score_with(&llama)
            .arg(&other_input)
            .arg("--goal")
            .arg(&goal),
        "the input changed (sha256 ",
    );

    // The same run continues and equals a run without interruption.
    score_with(&llama)
        .arg(&input)
        .arg("--goal")
        .arg(&goal)
        .args(["--chunk-rows", "3", "--resume", "-o"])
        .arg(&out)
        .assert()
        .success();
    assert!(!partial(&out).exists());
    let full = dir.path().join("full.parquet");
    score_with(&llama)
        .arg(&input)
        .arg("--goal")
        .arg(&goal)
        .arg("-o")
        .arg(&full)
        .assert()
        .success();
    let (full, resumed) = (read_table(&full).unwrap(), read_table(&out).unwrap());
    assert_eq!(full.get_column_names(), resumed.get_column_names());
    assert_close(&full, &resumed);
}

#[test]
fn a_goal_of_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 3);
    let llama = model_copy("tiny-llama", &dir.path().join("a"), "bt");
    let qwen = model_copy("tiny-qwen2", &dir.path().join("b"), "bt");
    let goal = dir.path().join("goal.safetensors");
    Command::cargo_bin("qrm-embed")
        .unwrap()
        .arg(dir.path().join("pairs.parquet"))
        .arg("--rm")
        .arg(&llama)
        .arg("--tokenizer")
        .arg(fixture("tiny-tokenizer/tokenizer.json"))
        .args(["--template", "chatml", "-q", "-o"])
        .arg(&goal)
        .assert()
        .success();
    let out = dir.path().join("scores.parquet");
    score_with(&qwen)
        .arg(&input)
        .arg("--goal")
        .arg(&goal)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("made with another model"));
    assert!(!partial(&out).exists());
}

#[test]
fn an_unfinished_qrm_training_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = generations(dir.path(), 2);
    let rm = model_copy("tiny-llama", dir.path(), "rm");
    let config_path = rm.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["qrm_head"] = "mlp".into(); // as qrm-train writes it
    std::fs::write(&config_path, config.to_string()).unwrap();
    score_with(&rm)
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("no train_config.json"));
    let record = r#"{"template": "chatml", "eos": "append", "max_len": 64}"#;
    std::fs::write(rm.join("train_config.json"), record).unwrap();
    score_with(&rm).arg(&input).assert().success();
}

/// Six questions with two pairs each in `w` words, as `pairs.jsonl` (question, chosen,
/// rejected) and `generations.jsonl` (question, response: every chosen and rejected one).
fn word_tables(root: &Path) -> (PathBuf, PathBuf) {
    let (mut pairs, mut generations) = (Vec::new(), Vec::new());
    for question in 0..6 {
        for pair in 0..2 {
            let text = format!("w{} w{}", 20 + question, 30 + pair);
            let filler = format!("w{} w{}", 10 + question, 40 + pair);
            let chosen = format!("{filler} w5 w7");
            let rejected = format!("{filler} w6 w7 w8");
            pairs.push(
                serde_json::json!({
                    "pair_id": format!("{question}-{pair}"), "question_id": format!("q{question}"),
                    "question": text, "chosen": chosen, "rejected": rejected,
                })
                .to_string(),
            );
            for response in [chosen, rejected] {
                generations
                    .push(serde_json::json!({"question": text, "response": response}).to_string());
            }
        }
    }
    let paths = (root.join("pairs.jsonl"), root.join("generations.jsonl"));
    std::fs::write(&paths.0, pairs.join("\n")).unwrap();
    std::fs::write(&paths.1, generations.join("\n")).unwrap();
    paths
}

/// The `reward` column of qrm-score's stdout (Arrow IPC stream).
fn rewards(output: &assert_cmd::assert::Assert) -> Vec<Option<f32>> {
    let stdout = output.get_output().stdout.clone();
    let frame = IpcStreamReader::new(std::io::Cursor::new(stdout))
        .finish()
        .unwrap();
    frame
        .column("reward")
        .unwrap()
        .f32()
        .unwrap()
        .iter()
        .collect()
}

#[test]
fn a_checkpoint_trained_with_raw_scores_and_embeds_with_its_recorded_encoding() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let (pairs, generations) = word_tables(root.path());
    let ckpt = root.path().join("ckpt");
    Command::cargo_bin("qrm-train")
        .unwrap()
        .arg(&pairs)
        .arg("--model")
        .arg(&model)
        .args(["--template", "raw", "--eos", "none", "--max-len", "48"])
        .args([
            "--batch-size",
            "4",
            "--micro-batch",
            "2",
            "--max-steps",
            "1",
        ])
        .args(["--eval-fraction", "0.25", "-q", "--cache"])
        .arg(root.path().join("cache"))
        .arg("-o")
        .arg(&ckpt)
        .assert()
        .success();

    // qrm-embed records the encoding it used: the training record's, not chatml/append/1024.
    let goal = root.path().join("goal.safetensors");
    Command::cargo_bin("qrm-embed")
        .unwrap()
        .arg(&pairs)
        .arg("--rm")
        .arg(&ckpt)
        .args(["-q", "-o"])
        .arg(&goal)
        .assert()
        .success();
    let stored = qrm::score::goal::GoalState::load(&goal).unwrap();
    assert_eq!(stored.provenance.template.as_deref(), Some("raw"));
    assert_eq!(stored.provenance.eos.as_deref(), Some("none"));
    assert_eq!(stored.provenance.max_len, Some(48));

    let score = |flags: &[&str]| {
        let mut command = Command::cargo_bin("qrm-score").unwrap();
        command
            .arg(&generations)
            .arg("--rm")
            .arg(&ckpt)
            .arg("-q")
            .args(flags);
        command.assert().success()
    };
    let by_default = score(&[]);
    assert_eq!(by_default.get_output().stderr, b"", "no warning");
    let explicit = score(&["--template", "raw", "--eos", "none", "--max-len", "48"]);
    assert_eq!(explicit.get_output().stderr, b"", "no warning");
    assert_eq!(rewards(&by_default), rewards(&explicit));

    // Another template is used as asked, with a warning naming the recorded one.
    let chatml = score(&["--template", "chatml"]).stderr(predicates::str::contains(
        "--template chatml, but the model was trained with raw",
    ));
    assert_ne!(rewards(&by_default), rewards(&chatml));
}

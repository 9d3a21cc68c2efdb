//! qrm-train end to end on the tiny random llama of tests/fixtures (2 layers, vocabulary 100)
//! with a word-level tokenizer written here: the checkpoint directory, the log, loading the
//! result back for scoring, and usage errors.

use crate::support::{pairs_file, read_json, read_jsonl, tiny_model_dir};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use qrm::model::RewardModel;

fn qrm_train() -> Command {
    Command::cargo_bin("qrm-train").unwrap()
}

#[test]
fn q_run_writes_a_checkpoint_that_loads_and_scores_as_trained() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let pairs = pairs_file(root.path());
    let output = root.path().join("ckpt");
    let log = root.path().join("log.jsonl");
    qrm_train()
        .arg(&pairs)
        .arg("--model")
        .arg(&model)
        .args([
            "--template",
            "raw",
            "--objective",
            "q",
            "--train-layers",
            "1",
        ])
        .args([
            "--batch-size",
            "4",
            "--micro-batch",
            "2",
            "--max-steps",
            "3",
        ])
        .args([
            "--positives",
            "4",
            "--negatives",
            "4",
            "--eval-fraction",
            "0.25",
        ])
        .args(["--lr", "1e-3", "--eval-every", "2", "-q"])
        .arg("--cache")
        .arg(root.path().join("cache"))
        .arg("--log")
        .arg(&log)
        .arg("-o")
        .arg(&output)
        .assert()
        .success();

    for file in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "train_config.json",
        "reward_check.json",
    ] {
        assert!(output.join(file).exists(), "{file} missing");
    }
    let rows = read_jsonl(&log);
    assert_eq!(rows.len(), 3);
    assert!(rows[1]["eval_accuracy"].is_number() && rows[2]["eval_accuracy"].is_number());
    assert!(rows.iter().all(|row| row["loss_contrastive"].is_number()));

    let config = read_json(&output.join("config.json"));
    assert_eq!(config["num_labels"], 1);
    assert!(config["std"].as_f64().unwrap() >= 0.0);
    let train_config = read_json(&output.join("train_config.json"));
    assert_eq!(train_config["config"]["objective"], "q");
    assert_eq!(train_config["train_layers"], 1);
    assert_eq!(train_config["eval_pairs_used"], 6); // ⌈0.25·12⌉ = 3 questions × 2 pairs
    let eval = &train_config["eval"];
    assert_eq!(eval["pairs"], 6);
    let wins = eval["wins"].as_u64().unwrap();
    assert_eq!(eval["accuracy"].as_f64().unwrap(), wins as f64 / 6.0);
    let interval = &train_config["eval_accuracy_interval"];
    let (low, high) = (
        interval["low"].as_f64().unwrap(),
        interval["high"].as_f64().unwrap(),
    );
    assert!(
        low <= wins as f64 / 6.0 && wins as f64 / 6.0 <= high,
        "{interval}"
    );
    assert!(interval["p_value_against_half"].as_f64().unwrap() > 0.0);

    // The checkpoint loads as a reward model (the path qrm-score takes) and gives the rewards
    // the trainer recorded.
    let check = read_json(&output.join("reward_check.json"));
    let loaded = RewardModel::load(&output, &Device::Cpu, DType::F32).unwrap();
    for row in check["rows"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(row["input_ids"].clone()).unwrap();
        let length = ids.len();
        let input = Tensor::from_vec(ids, (1, length), &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, length), DType::U32, &Device::Cpu).unwrap();
        let output = loaded.forward(&input, &mask).unwrap();
        let reward = output.token_rewards.to_vec2::<f32>().unwrap()[0][length - 1] as f64;
        let expected = row["reward"].as_f64().unwrap();
        assert!((reward - expected).abs() < 1e-5, "{reward} vs {expected}");
    }

    // A second run on the same data reuses the trunk cache: the BT baseline.
    qrm_train()
        .arg(&pairs)
        .arg("--model")
        .arg(&model)
        .args([
            "--template",
            "raw",
            "--objective",
            "bt",
            "--train-layers",
            "1",
        ])
        .args([
            "--batch-size",
            "4",
            "--micro-batch",
            "2",
            "--max-steps",
            "2",
        ])
        .args(["--eval-fraction", "0.25", "-q"])
        .arg("--cache")
        .arg(root.path().join("cache"))
        .arg("-o")
        .arg(root.path().join("ckpt-bt"))
        .assert()
        .success();
    let caches = std::fs::read_dir(root.path().join("cache"))
        .unwrap()
        .count();
    assert_eq!(
        caches, 2,
        "train and eval trunk caches, shared by both runs"
    );
}

#[test]
fn batch_size_must_be_a_multiple_of_the_micro_batch() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let pairs = pairs_file(root.path());
    qrm_train()
        .arg(&pairs)
        .arg("--model")
        .arg(&model)
        .args([
            "--template",
            "raw",
            "--batch-size",
            "3",
            "--micro-batch",
            "2",
            "-q",
        ])
        .arg("-o")
        .arg(root.path().join("ckpt"))
        .assert()
        .failure()
        .stderr(predicates::str::contains("multiple of --micro-batch"));
}

#[test]
fn micro_batch_tokens_packs_by_tokens_and_reports_the_peak_memory() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let pairs = pairs_file(root.path());
    let output = root.path().join("ckpt");
    let log = root.path().join("log.jsonl");
    // Pairs of about 8 tokens: 40 padded tokens hold two pairs (4 rows × ~9), not a step of 4.
    let assert = qrm_train()
        .arg(&pairs)
        .arg("--model")
        .arg(&model)
        .args([
            "--template",
            "raw",
            "--objective",
            "q",
            "--train-layers",
            "1",
        ])
        .args([
            "--batch-size",
            "4",
            "--micro-batch-tokens",
            "40",
            "--max-steps",
            "2",
        ])
        .args([
            "--positives",
            "4",
            "--negatives",
            "4",
            "--eval-fraction",
            "0.25",
        ])
        .arg("--cache")
        .arg(root.path().join("cache"))
        .arg("--log")
        .arg(&log)
        .arg("-o")
        .arg(&output)
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("peak resident set"), "{stderr}");
    let rows = read_jsonl(&log);
    assert_eq!(rows.len(), 2);
    if cfg!(target_os = "linux") {
        assert!(rows
            .iter()
            .all(|row| row["peak_rss_mib"].as_f64().unwrap() > 0.0));
    }
    let record = read_json(&output.join("train_config.json"));
    assert_eq!(record["config"]["micro_batch_tokens"], 40);

    // An explicit --micro-batch with it is a usage error; so is a zero budget.
    for flags in [
        ["--micro-batch-tokens", "40", "--micro-batch", "2"],
        ["--micro-batch-tokens", "0", "--batch-size", "4"],
    ] {
        qrm_train()
            .arg(&pairs)
            .arg("--model")
            .arg(&model)
            .args(flags)
            .arg("-o")
            .arg(root.path().join("other"))
            .assert()
            .code(2)
            .stderr(predicates::str::contains("--micro-batch-tokens"));
    }
}

#[test]
fn a_bad_window_is_a_usage_error() {
    qrm_train()
        .args([
            "pairs.jsonl",
            "--model",
            "m",
            "--goal-window",
            "0.9:0.5",
            "-o",
            "x",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("0 <= a < b <= 1"));
}

/// The flags of a small top-layer BT run on the tiny model.
fn small_run(command: &mut Command, model: &Path, cache: &Path) {
    command
        .arg("--model")
        .arg(model)
        .args([
            "--template",
            "raw",
            "--objective",
            "bt",
            "--train-layers",
            "1",
        ])
        .args(["--batch-size", "4", "--micro-batch", "2"])
        .args(["--eval-fraction", "0.25", "-q"])
        .arg("--cache")
        .arg(cache);
}

#[test]
fn pairs_can_come_from_stdin() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let pairs = pairs_file(root.path());
    let output = root.path().join("ckpt");
    let mut command = qrm_train();
    command.arg("-");
    small_run(&mut command, &model, &root.path().join("cache"));
    command
        .args(["--max-steps", "1", "-o"])
        .arg(&output)
        .write_stdin(std::fs::read(&pairs).unwrap())
        .assert()
        .success();
    let record = read_json(&output.join("train_config.json"));
    assert_eq!(record["pairs"], "<stdin>");
    // The hash is of what was read, the same as the file's.
    assert_eq!(
        record["pairs_sha256"].as_str().unwrap(),
        qrm::pipeline::io::file_sha256(&pairs).unwrap()
    );
    // The record reads back as its typed struct; the candle version is the one Cargo.lock pins.
    let typed = qrm::train::run::TrainingRecord::load(&output).unwrap();
    assert_eq!(typed.pairs, PathBuf::from("<stdin>"));
    assert_eq!(
        (
            typed.encoding.template.as_str(),
            typed.encoding.eos.as_str()
        ),
        ("raw", "append")
    );
    let lock =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).unwrap();
    let pinned = format!(
        "name = \"candle-core\"\nversion = \"{}\"",
        typed.candle_version
    );
    assert!(lock.contains(&pinned), "candle {}", typed.candle_version);
}

#[test]
fn an_interrupted_run_leaves_no_checkpoint_and_resumes_only_the_same_work() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let pairs = pairs_file(root.path());
    let cache = root.path().join("cache");
    let output = root.path().join("ckpt");
    let partial = root.path().join("ckpt.partial");

    // A run far longer than the test, saving its state every step, killed once a state exists.
    let binary = assert_cmd::cargo::cargo_bin("qrm-train");
    let mut long_run = std::process::Command::new(&binary);
    long_run.arg(&pairs).arg("--model").arg(&model);
    long_run
        .args([
            "--template",
            "raw",
            "--objective",
            "bt",
            "--train-layers",
            "1",
        ])
        .args([
            "--batch-size",
            "4",
            "--micro-batch",
            "2",
            "--eval-fraction",
            "0.25",
        ])
        .args([
            "--max-steps",
            "100000000",
            "--save-every",
            "1",
            "-q",
            "--cache",
        ])
        .arg(&cache)
        .arg("-o")
        .arg(&output);
    let mut child = long_run.spawn().unwrap();
    let state = partial.join("state/state.json");
    let started = std::time::Instant::now();
    while !state.exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "no state after 120 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !output.exists(),
        "a killed run must not leave a loadable checkpoint"
    );
    assert!(partial.exists());
    // The state file is written atomically, so it is complete even though the run was killed.
    let saved = read_json(&state);
    let step = saved["step"].as_u64().unwrap();

    // Without --resume the partial run is not silently overwritten: the message says what to do.
    let mut again = qrm_train();
    again.arg(&pairs);
    small_run(&mut again, &model, &cache);
    again
        .args(["--max-steps", "2", "-o"])
        .arg(&output)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "pass --resume to continue it, or delete it",
        ));
    // It says so before any work (reading and tokenising the pairs, computing the trunk): even
    // with pairs it could not read, the partial run is the error.
    let mut early = qrm_train();
    early.arg(root.path().join("missing.jsonl"));
    small_run(&mut early, &model, &cache);
    early
        .args(["--max-steps", "2", "-o"])
        .arg(&output)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("pass --resume to continue it"));

    // --resume with other pairs is refused, naming what changed.
    let other_pairs = root.path().join("other.jsonl");
    let text = std::fs::read_to_string(&pairs)
        .unwrap()
        .replace("w5 w7", "w5 w9");
    std::fs::write(&other_pairs, text).unwrap();
    let mut other = qrm_train();
    other.arg(&other_pairs);
    small_run(&mut other, &model, &cache);
    other
        .args(["--max-steps", "100", "--resume", "-o"])
        .arg(&output)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("pairs_sha256 changed"));
    assert!(!output.exists());

    // --resume with the same work completes it, and only then does the checkpoint appear.
    let mut resume = qrm_train();
    resume.arg(&pairs);
    small_run(&mut resume, &model, &cache);
    resume
        .args(["--max-steps", &(step + 1).to_string(), "--resume", "-o"])
        .arg(&output)
        .assert()
        .success();
    assert!(output.join("train_config.json").exists());
    assert!(!partial.exists());
    let record = read_json(&output.join("train_config.json"));
    assert_eq!(record["steps"], step + 1);
}

#[test]
fn a_run_that_fails_before_training_leaves_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let pairs = pairs_file(root.path());
    let output = root.path().join("ckpt");
    // Every pair is longer than 4 tokens, so none is left to train on.
    let mut command = qrm_train();
    command.arg(&pairs);
    small_run(&mut command, &model, &root.path().join("cache"));
    command
        .args(["--max-len", "4", "-o"])
        .arg(&output)
        .assert()
        .failure();
    assert!(!output.exists());
    assert!(!root.path().join("ckpt.partial").exists());
}

#[test]
fn a_bad_device_is_a_usage_error() {
    qrm_train()
        .args(["pairs.jsonl", "--model", "m", "--device", "gpu0", "-o", "x"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("unknown device `gpu0`"));
}

#[test]
fn checkpoint_layers_trains_the_same_steps_and_is_recorded() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let pairs = pairs_file(root.path());
    let run = |name: &str, checkpoint: bool| -> (Vec<serde_json::Value>, serde_json::Value) {
        let output = root.path().join(name);
        let log = root.path().join(format!("{name}.jsonl"));
        let mut command = qrm_train();
        command
            .arg(&pairs)
            .arg("--model")
            .arg(&model)
            .args(["--template", "raw", "--objective", "q", "--lr", "1e-3"])
            .args([
                "--batch-size",
                "4",
                "--micro-batch",
                "2",
                "--max-steps",
                "3",
            ])
            .args([
                "--positives",
                "4",
                "--negatives",
                "4",
                "--eval-fraction",
                "0",
            ])
            .args(["-q", "--log"])
            .arg(&log)
            .arg("-o")
            .arg(&output);
        if checkpoint {
            command.arg("--checkpoint-layers");
        }
        command.assert().success();
        (
            read_jsonl(&log),
            read_json(&output.join("train_config.json")),
        )
    };
    // The whole model from tokens, the Q objective: the embedding, both layers, norm and head.
    let (plain, plain_record) = run("plain", false);
    let (checkpointed, record) = run("checkpointed", true);
    assert_eq!(plain.len(), 3);
    for (a, b) in plain.iter().zip(&checkpointed) {
        for key in ["loss", "loss_contrastive", "grad_norm"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-6, "step {}: {key} {x} vs {y}", a["step"]);
        }
    }
    assert_eq!(record["config"]["checkpoint_layers"], true);
    assert_eq!(plain_record["config"]["checkpoint_layers"], false);
}

#[test]
fn dtype_bf16_trains_in_mixed_precision_and_a_resume_must_keep_it() {
    // The top layer from a cached trunk, BT, 3 steps: f32, then bf16 (mixed precision on the
    // CPU, where candle widens bf16 matmuls to f32).
    let root = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(root.path());
    let pairs = pairs_file(root.path());
    let cache = root.path().join("cache");
    let run = |name: &str, dtype: &str| -> (Vec<serde_json::Value>, serde_json::Value) {
        let output = root.path().join(name);
        let log = root.path().join(format!("{name}.jsonl"));
        let mut command = qrm_train();
        command.arg(&pairs);
        small_run(&mut command, &model, &cache);
        command
            .args(["--max-steps", "3", "--dtype", dtype, "--log"])
            .arg(&log)
            .arg("-o")
            .arg(&output)
            .assert()
            .success();
        (
            read_jsonl(&log),
            read_json(&output.join("train_config.json")),
        )
    };
    let (full, full_record) = run("f32", "f32");
    let (half, half_record) = run("bf16", "bf16");
    assert_eq!(full_record["dtype"], "f32");
    assert_eq!(half_record["dtype"], "bf16");
    // The same first-step loss to bf16's precision (8 bits of mantissa: ~0.4 % a rounding).
    let (a, b) = (
        full[0]["loss"].as_f64().unwrap(),
        half[0]["loss"].as_f64().unwrap(),
    );
    assert!(
        (a - b).abs() < 0.05 * a.max(1.0),
        "loss f32 {a} vs bf16 {b}"
    );
    assert!(half
        .iter()
        .all(|row| row["loss"].as_f64().unwrap().is_finite()));
    // The saved checkpoint loads in f32 for scoring.
    let checkpoint =
        qrm::model::Checkpoint::load(root.path().join("bf16"), &Device::Cpu, DType::F32).unwrap();
    RewardModel::from_checkpoint(&checkpoint).unwrap();

    // Continuing the bf16 run in f32 is other work: refused, naming the dtype.
    let mut resumed = qrm_train();
    resumed.arg(&pairs);
    small_run(&mut resumed, &model, &cache);
    resumed
        .args(["--max-steps", "4", "--dtype", "f32", "--resume", "-o"])
        .arg(root.path().join("bf16"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("dtype changed (bf16 → none)"));

    qrm_train()
        .args(["pairs.jsonl", "--model", "m", "--dtype", "f16", "-o", "x"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("f16"));
}

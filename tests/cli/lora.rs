//! `qrm-train --lora-rank` end to end on the tiny qwen2 (its `score` head, a word-level
//! tokenizer): the PEFT directory it writes, scoring it with qrm-score, `--merge`, and the
//! resume identity.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use qrm::model::RewardModel;

use crate::support::tiny_fixture_dir;

/// Twelve questions with two pairs each, as in `train.rs`: chosen responses hold `w5`.
fn pairs_file(root: &Path) -> PathBuf {
    let path = root.join("pairs.jsonl");
    let mut lines = Vec::new();
    for question in 0..12 {
        for pair in 0..2 {
            let filler = format!("w{} w{}", 10 + question, 40 + pair);
            lines.push(
                serde_json::json!({
                    "pair_id": format!("{question}-{pair}"),
                    "question_id": format!("q{question}"),
                    "question": format!("w{} w{}", 20 + question, 30 + pair),
                    "chosen": format!("{filler} w5 w7"),
                    "rejected": format!("{filler} w6 w7 w8"),
                })
                .to_string(),
            );
        }
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn lora_run(pairs: &Path, model: &Path, root: &Path, rank: &str, output: &Path) -> Command {
    let mut command = Command::cargo_bin("qrm-train").unwrap();
    command
        .arg(pairs)
        .arg("--model")
        .arg(model)
        .args([
            "--template",
            "raw",
            "--objective",
            "q",
            "--train-layers",
            "1",
        ])
        .args(["--lora-rank", rank, "--lora-alpha", "8"])
        .args(["--lora-targets", "v_proj,q,down", "--lora-dropout", "0.1"])
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
        .args(["--lr", "1e-2", "-q"])
        .arg("--cache")
        .arg(root.join("cache"))
        .arg("-o")
        .arg(output);
    command
}

/// The reward at the last token of each `reward_check.json` row, from the model at `dir`.
fn check_rewards(dir: &Path, check: &Path) -> Vec<(f64, f64)> {
    let check: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(check).unwrap()).unwrap();
    let loaded = RewardModel::load(dir, &Device::Cpu, DType::F32).unwrap();
    check["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let ids: Vec<u32> = serde_json::from_value(row["input_ids"].clone()).unwrap();
            let length = ids.len();
            let input = Tensor::from_vec(ids, (1, length), &Device::Cpu).unwrap();
            let mask = Tensor::ones((1, length), DType::U32, &Device::Cpu).unwrap();
            let output = loaded.forward(&input, &mask).unwrap();
            let reward = output.token_rewards.to_vec2::<f32>().unwrap()[0][length - 1] as f64;
            (reward, row["reward"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn a_lora_run_writes_a_peft_directory_that_scores_merges_and_resumes_only_alike() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_fixture_dir(root.path(), "tiny-qwen2");
    let pairs = pairs_file(root.path());
    let output = root.path().join("lora");
    lora_run(&pairs, &model, root.path(), "4", &output)
        .assert()
        .success();

    // The PEFT layout, and no full copy of the weights.
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
        "tokenizer.json",
        "train_config.json",
        "reward_check.json",
    ] {
        assert!(output.join(file).exists(), "{file} missing");
    }
    assert!(!output.join("model.safetensors").exists());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["lora_dropout"], 0.1);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    assert_eq!(config["layers_to_transform"], serde_json::json!([1]));
    assert_eq!(
        config["modules_to_save"],
        serde_json::json!(["model.norm", "classifier", "score"])
    );
    assert_eq!(
        config["base_model_name_or_path"],
        std::fs::canonicalize(&model).unwrap().display().to_string()
    );
    let tensors =
        candle_core::safetensors::load(output.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let names: BTreeSet<String> = tensors.keys().cloned().collect();
    let mut expected: BTreeSet<String> = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
        .iter()
        .flat_map(|module| {
            ["lora_A", "lora_B"]
                .map(|part| format!("base_model.model.model.layers.1.{module}.{part}.weight"))
        })
        .collect();
    expected.insert("base_model.model.model.norm.weight".into());
    expected.insert("base_model.model.score.weight".into());
    assert_eq!(names, expected);
    // Trained: B left zero would make the adapters a no-op.
    let b = &tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"];
    assert!(
        b.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("train_config.json")).unwrap())
            .unwrap();
    assert_eq!(record["lora"]["rank"], 4);
    assert_eq!(
        record["lora"]["targets"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );

    // Loaded (merged at load), the directory gives the rewards the trainer computed with the
    // adapters applied.
    let check = output.join("reward_check.json");
    for (reward, expected) in check_rewards(&output, &check) {
        assert!((reward - expected).abs() < 1e-5, "{reward} vs {expected}");
    }

    // qrm-score scores it.
    let generations = root.path().join("generations.jsonl");
    let rows: Vec<String> = (0..3)
        .map(|i| {
            serde_json::json!({
                "question_id": format!("q{i}"),
                "question": format!("w{} w30", 20 + i),
                "response": format!("w{} w40 w5 w7", 10 + i),
                "is_correct": i != 1,
            })
            .to_string()
        })
        .collect();
    std::fs::write(&generations, rows.join("\n")).unwrap();
    let scored = root.path().join("scored.parquet");
    Command::cargo_bin("qrm-score")
        .unwrap()
        .arg(&generations)
        .arg("--rm")
        .arg(&output)
        .args(["-q", "-o"])
        .arg(&scored)
        .assert()
        .success();
    assert!(scored.exists());

    // --merge writes a plain checkpoint with the same rewards.
    let merged = root.path().join("merged");
    Command::cargo_bin("qrm-train")
        .unwrap()
        .arg("--merge")
        .arg(&output)
        .arg("-o")
        .arg(&merged)
        .arg("-q")
        .assert()
        .success();
    assert!(merged.join("model.safetensors").exists());
    assert!(!merged.join("adapter_config.json").exists());
    for (reward, expected) in check_rewards(&merged, &check) {
        assert!((reward - expected).abs() < 1e-5, "{reward} vs {expected}");
    }

    // Resuming with another rank is other work.
    lora_run(&pairs, &model, root.path(), "2", &output)
        .arg("--resume")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("lora changed"));
}

#[test]
fn lora_flags_are_checked() {
    let root = tempfile::tempdir().unwrap();
    let model = tiny_fixture_dir(root.path(), "tiny-qwen2");
    let pairs = pairs_file(root.path());
    // A target that is not a projection, and alpha without a rank: usage errors.
    Command::cargo_bin("qrm-train")
        .unwrap()
        .arg(&pairs)
        .arg("--model")
        .arg(&model)
        .args(["--lora-rank", "4", "--lora-targets", "q,lm_head", "-o"])
        .arg(root.path().join("x"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("lm_head"));
    Command::cargo_bin("qrm-train")
        .unwrap()
        .arg(&pairs)
        .arg("--model")
        .arg(&model)
        .args(["--lora-alpha", "8", "-o"])
        .arg(root.path().join("y"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--lora-rank"));
    // The tiny llama's head is the paper's MLP: not PEFT's SEQ_CLS `score`.
    let llama = tiny_fixture_dir(root.path(), "tiny-llama");
    lora_run(&pairs, &llama, root.path(), "4", &root.path().join("z"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains("linear `score` head"));
}

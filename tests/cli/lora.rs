//! `qrm-train --lora-rank` end to end on the tiny qwen2 (its `score` head, a word-level
//! tokenizer): the PEFT directory it writes, scoring it with qrm-score, `--merge`, and the
//! resume identity.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::{DType, Device, Tensor};
use qrm::model::RewardModel;

use crate::support::{pairs_file, read_json, tiny_fixture_dir};

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
    let check = read_json(check);
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
    let config = read_json(&output.join("adapter_config.json"));
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
    let record = read_json(&output.join("train_config.json"));
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
    // qrm-embed too (goal states of the chosen responses).
    let goal = root.path().join("goal.safetensors");
    Command::cargo_bin("qrm-embed")
        .unwrap()
        .arg(&pairs)
        .arg("--rm")
        .arg(&output)
        .args(["--template", "raw", "-q", "-o"])
        .arg(&goal)
        .assert()
        .success();
    assert!(goal.exists());

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

    // Adapters on adapters are refused: merge first.
    lora_run(
        &pairs,
        &output,
        root.path(),
        "4",
        &root.path().join("again"),
    )
    .assert()
    .code(2)
    .stderr(predicates::str::contains("merge it first"));

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

// Golden tests against peft 0.21.2 (tests/fixtures/lora_reference.py wrote the reference and
// the adapters it saved, tests/fixtures/lora-{llama,qwen2}/).

use qrm::model::checkpoint::Checkpoint;
use qrm::model::head::HeadKind;
use qrm::model::last_token_values;
use qrm::model::lora::{Adapter, LoraSpec, LoraTarget};
use qrm::train::run::TopLayers;
use qrm::train::trainer::TrainableRewardModel;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn reference(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("lora_reference.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[case].clone()
}

/// The configuration the script gave PEFT for `case`, and the layers qrm trains for it.
fn spec(case: &str) -> (LoraSpec, Option<usize>) {
    use LoraTarget::*;
    match case {
        "llama" => (
            LoraSpec {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: LoraTarget::ALL.to_vec(),
            },
            None,
        ),
        _ => (
            LoraSpec {
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: vec![Q, K, V, O],
            },
            Some(1),
        ),
    }
}

/// The reference batch: (4, 9) right-padded ids and mask.
fn batch(reference: &serde_json::Value) -> (Tensor, Tensor) {
    let rows = |key: &str| -> Tensor {
        let rows: Vec<Vec<u32>> = serde_json::from_value(reference[key].clone()).unwrap();
        let flat: Vec<u32> = rows.concat();
        Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
    };
    (rows("input_ids"), rows("attention_mask"))
}

fn sequence_rewards(token_rewards: &Tensor, mask: &Tensor) -> Tensor {
    last_token_values(token_rewards, mask).unwrap()
}

fn values(tensor: &Tensor) -> Vec<f64> {
    tensor
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// max |a − b| / max(1, max |b|).
fn relative_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// The PEFT adapter of `case` applied (not merged) to its base: a trainable model whose
/// adapters, final norm and head hold PEFT's values.
fn applied(case: &str) -> (TopLayers, Adapter) {
    let adapter =
        Adapter::read(&fixture(&format!("lora-{case}")), &Device::Cpu, DType::F32).unwrap();
    let mut base =
        Checkpoint::load(adapter.base_path().unwrap(), &Device::Cpu, DType::F32).unwrap();
    adapter.replace_saved_modules(&mut base).unwrap();
    let (spec, layers) = spec(case);
    let model = TopLayers::with_lora(
        &base,
        HeadKind::Linear,
        layers,
        Some(&spec),
        0,
        &Device::Cpu,
    )
    .unwrap();
    for (name, var) in model.trainable_variables() {
        let peft = format!("base_model.model.{name}");
        let tensor = adapter
            .tensors
            .get(&peft)
            .unwrap_or_else(|| panic!("no {peft}"));
        var.set(tensor).unwrap();
    }
    (model, adapter)
}

#[test]
fn a_peft_adapter_loads_merged_with_pefts_rewards() {
    for case in ["llama", "qwen2"] {
        let reference = reference(case);
        let (ids, mask) = batch(&reference);
        let expected: Vec<f64> = serde_json::from_value(reference["rewards"].clone()).unwrap();
        let model =
            RewardModel::load(fixture(&format!("lora-{case}")), &Device::Cpu, DType::F32).unwrap();
        let output = model.forward(&ids, &mask).unwrap();
        let got = values(&sequence_rewards(&output.token_rewards, &mask));
        let diff = relative_diff(&got, &expected);
        assert!(diff < 1e-5, "{case}: {got:?} vs {expected:?} ({diff:e})");
    }
}

#[test]
fn lora_gradients_equal_pefts_and_no_base_weight_is_trained() {
    for case in ["llama", "qwen2"] {
        let reference = reference(case);
        let (ids, mask) = batch(&reference);
        let (model, _) = applied(case);
        // Adapters applied: the rewards PEFT gives, so merging (the other test) changes nothing.
        let output = qrm::model::batching::TokenModel::forward(&model, &ids, &mask).unwrap();
        let rewards = sequence_rewards(&output.token_rewards, &mask);
        let expected: Vec<f64> = serde_json::from_value(reference["rewards"].clone()).unwrap();
        let diff = relative_diff(&values(&rewards), &expected);
        assert!(diff < 1e-5, "{case}: rewards {diff:e}");
        // Pairs (0, 2) and (1, 3): mean −log σ(r_chosen − r_rejected), as the script's loss.
        let loss = qrm::train::loss::bradley_terry(
            &rewards.narrow(0, 0, 2).unwrap(),
            &rewards.narrow(0, 2, 2).unwrap(),
            None,
        )
        .unwrap();
        let loss_value = loss.to_scalar::<f32>().unwrap() as f64;
        let expected_loss = reference["loss"].as_f64().unwrap();
        assert!(
            (loss_value - expected_loss).abs() < 1e-5,
            "{loss_value} vs {expected_loss}"
        );
        let store = loss.backward().unwrap();
        let variables = model.trainable_variables();
        for (peft, gradient) in reference["gradients"].as_object().unwrap() {
            let name = peft.strip_prefix("base_model.model.").unwrap();
            let (_, var) = variables
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{case}: {name} is not trained"));
            let got = values(store.get(var).unwrap());
            let expected: Vec<f64> = match gradient {
                serde_json::Value::Array(rows) if rows[0].is_array() => rows
                    .iter()
                    .flat_map(|row| serde_json::from_value::<Vec<f64>>(row.clone()).unwrap())
                    .collect(),
                other => serde_json::from_value(other.clone()).unwrap(),
            };
            let diff = relative_diff(&got, &expected);
            assert!(diff < 1e-5, "{case} {name}: gradient off by {diff:e}");
        }
        // Only adapters, the final norm and the head are variables; the base weights are plain
        // tensors the backward pass gives nothing.
        for (name, _) in &variables {
            assert!(
                name.ends_with(".lora_A.weight")
                    || name.ends_with(".lora_B.weight")
                    || name == "model.norm.weight"
                    || name == "score.weight",
                "{case}: {name} is trained"
            );
        }
        let adapters = variables
            .iter()
            .filter(|(n, _)| n.contains(".lora_"))
            .count();
        assert_eq!(adapters, if case == "llama" { 2 * 7 * 2 } else { 2 * 4 });
        for (name, linear) in model.model.transformer.linears() {
            assert!(
                store.get(linear.weight()).is_none(),
                "{case}: {name} got a gradient"
            );
        }
    }
}

#[test]
fn a_qrm_written_adapter_is_pefts_layout_and_round_trips() {
    for case in ["llama", "qwen2"] {
        let reference = reference(case);
        let (ids, mask) = batch(&reference);
        let expected: Vec<f64> = serde_json::from_value(reference["rewards"].clone()).unwrap();
        let (model, adapter) = applied(case);
        let (spec, _) = spec(case);
        let root = tempfile::tempdir().unwrap();
        let written = root.path().join("lora");
        let layers = (case == "qwen2").then_some(&[1usize][..]);
        let base = adapter.base_path().unwrap();
        qrm::train::run::save_lora(&written, &model.model, &spec, layers, &base).unwrap();

        // adapter_config.json: PEFT's keys and values (target_modules as a set; the base as an
        // absolute path where the fixture's is relative).
        let read = |dir: &Path| read_json(&dir.join("adapter_config.json"));
        let (mut ours, mut peft) = (read(&written), read(&fixture(&format!("lora-{case}"))));
        let as_set = |value: &mut serde_json::Value| -> BTreeSet<String> {
            serde_json::from_value(value["target_modules"].take()).unwrap()
        };
        assert_eq!(as_set(&mut ours), as_set(&mut peft), "{case}");
        let ours_base = ours["base_model_name_or_path"].take();
        peft["base_model_name_or_path"].take();
        assert_eq!(
            ours_base,
            std::fs::canonicalize(&base).unwrap().display().to_string()
        );
        assert_eq!(ours, peft, "{case}: adapter_config.json differs");

        // The tensors: PEFT's names, PEFT's values.
        let load = |dir: &Path| {
            candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
                .unwrap()
        };
        let (ours, peft) = (load(&written), load(&fixture(&format!("lora-{case}"))));
        let names = |t: &std::collections::HashMap<String, Tensor>| -> BTreeSet<String> {
            t.keys().cloned().collect()
        };
        assert_eq!(names(&ours), names(&peft), "{case}: tensor names differ");
        for (name, tensor) in &peft {
            assert_eq!(values(&ours[name]), values(tensor), "{case}: {name}");
        }

        // Loaded back (merged), the same rewards; so is the in-memory model saved whole (every
        // projection merged, W + α/r·B·A).
        let loaded = RewardModel::load(&written, &Device::Cpu, DType::F32).unwrap();
        let got = values(&sequence_rewards(
            &loaded.forward(&ids, &mask).unwrap().token_rewards,
            &mask,
        ));
        assert!(relative_diff(&got, &expected) < 1e-5, "{case}: {got:?}");
        let whole = root.path().join("whole");
        model.model.save(&whole).unwrap();
        let merged = RewardModel::load(&whole, &Device::Cpu, DType::F32).unwrap();
        let got = values(&sequence_rewards(
            &merged.forward(&ids, &mask).unwrap().token_rewards,
            &mask,
        ));
        assert!(
            relative_diff(&got, &expected) < 1e-5,
            "{case}: merged {got:?}"
        );
    }
}

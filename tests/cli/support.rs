//! What the integration tests share: the tiny model directory qrm-train and qrm-score run on, and
//! readers of the JSON and JSON-lines files the tools write.

use std::path::{Path, PathBuf};

/// A model directory: the tiny llama's weights and config, a word-level tokenizer over
/// `w3 … w99` (`<unk>` 0, `<s>` 1, `</s>` 2 = EOS) and a tokenizer_config naming the EOS.
pub fn tiny_model_dir(root: &Path) -> PathBuf {
    tiny_fixture_dir(root, "tiny-llama")
}

/// [`tiny_model_dir`] of the fixture `name` (`tiny-llama`, or `tiny-qwen2` with its `score`
/// head).
pub fn tiny_fixture_dir(root: &Path, name: &str) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join(file), dir.join(file)).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    for (id, token) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert((*token).into(), id.into());
    }
    for id in 3..100 {
        vocab.insert(format!("w{id}"), id.into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "</s>"}"#,
    )
    .unwrap();
    dir
}

/// A JSONL pairs file in `root` over the tiny tokenizer's words: twelve questions with two pairs
/// each; chosen responses contain `w5`, rejected ones `w6` (what qrm-train's tests learn).
pub fn pairs_file(root: &Path) -> PathBuf {
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

/// The rows of a JSON-lines file (a qrm-train log, a JSONL report).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A JSON file (`train_config.json`, `config.json`).
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

//! What the integration tests share: the tiny model directory qrm-train and qrm-score run on.

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

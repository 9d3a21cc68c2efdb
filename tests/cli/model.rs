//! The backbone, heads and loaders against references: tiny random llama/qwen2 reward models
//! whose expected outputs transformers computed (tests/fixtures/make_tiny_models.py), kernel
//! agreement, gradients, padding invariance, checkpoint round trips, and SmolLM2 from GGUF.

use qrm::testing::max_abs_diff;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use qrm::model::{last_token_values, Checkpoint, HeadKind, Kernels, RewardModel, Transformer};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(Deserialize)]
struct Golden {
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u32>>,
    hidden: Vec<Vec<Vec<f64>>>,
    token_rewards: Vec<Vec<f64>>,
    sequence_rewards: Vec<f64>,
}

fn golden(family: &str) -> Golden {
    let text = std::fs::read_to_string(fixtures().join("tiny_golden.json")).unwrap();
    let mut all: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(all[family].take()).unwrap()
}

fn batch(golden: &Golden) -> (Tensor, Tensor) {
    let rows = golden.input_ids.len();
    let cols = golden.input_ids[0].len();
    let ids: Vec<u32> = golden.input_ids.concat();
    let mask: Vec<u32> = golden.attention_mask.concat();
    (
        Tensor::from_vec(ids, (rows, cols), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (rows, cols), &Device::Cpu).unwrap(),
    )
}

/// Largest |actual − expected| over real (unpadded) tokens, with where it happened.
fn max_abs_diff_real(actual: &Tensor, expected: &[Vec<Vec<f64>>], mask: &[Vec<u32>]) -> f64 {
    let actual = actual
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec3::<f64>()
        .unwrap();
    let mut worst = 0f64;
    let mut compared = 0usize;
    for (row, mask_row) in mask.iter().enumerate() {
        for (t, &m) in mask_row.iter().enumerate() {
            if m == 0 {
                continue;
            }
            assert_eq!(
                actual[row][t].len(),
                expected[row][t].len(),
                "row {row} token {t}"
            );
            for (a, e) in actual[row][t].iter().zip(&expected[row][t]) {
                worst = worst.max((a - e).abs());
                compared += 1;
            }
        }
    }
    // An empty or all-padding fixture would compare nothing and pass.
    assert!(
        compared > 0,
        "the golden fixture holds no real token to compare"
    );
    worst
}

fn assert_close(name: &str, max_diff: f64, tolerance: f64) {
    eprintln!("{name}: max |Δ| = {max_diff:.3e} (tolerance {tolerance:.0e})");
    assert!(
        max_diff <= tolerance,
        "{name}: max |Δ| = {max_diff:e} > {tolerance:e}"
    );
}

fn check_golden(family: &str, dir: &str) {
    let golden = golden(family);
    let model = RewardModel::load(fixtures().join(dir), &Device::Cpu, DType::F32).unwrap();
    let (ids, mask) = batch(&golden);
    for kernels in [Kernels::Fused, Kernels::Differentiable] {
        let model = model.clone().with_kernels(kernels);
        let out = model.forward(&ids, &mask).unwrap();
        let hidden_diff = max_abs_diff_real(&out.hidden, &golden.hidden, &golden.attention_mask);
        assert_close(&format!("{family} {kernels:?} hidden"), hidden_diff, 1e-5);
        let rewards = out.token_rewards.unsqueeze(D::Minus1).unwrap();
        let expected: Vec<Vec<Vec<f64>>> = golden
            .token_rewards
            .iter()
            .map(|row| row.iter().map(|&r| vec![r]).collect())
            .collect();
        let reward_diff = max_abs_diff_real(&rewards, &expected, &golden.attention_mask);
        assert_close(
            &format!("{family} {kernels:?} token rewards"),
            reward_diff,
            1e-5,
        );
        let sequence = last_token_values(&out.token_rewards, &mask)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let sequence_diff = sequence
            .iter()
            .zip(&golden.sequence_rewards)
            .map(|(a, e)| (a - e).abs())
            .fold(0f64, f64::max);
        assert_close(
            &format!("{family} {kernels:?} sequence rewards"),
            sequence_diff,
            1e-5,
        );
    }
}

#[test]
fn tiny_llama_with_mlp_head_matches_transformers() {
    check_golden("llama", "tiny-llama");
}

#[test]
fn tiny_qwen2_for_sequence_classification_matches_transformers() {
    check_golden("qwen2", "tiny-qwen2");
}

/// One pad rule for scoring and training: `pad_right` pads with `PAD_ID` (0) and a u32 mask.
/// The old paths padded with the EOS (scoring) or 0 with a u8 mask (training); padding is
/// masked, so all three give the same outputs at real positions and the same sequence rewards.
#[test]
fn the_pad_id_and_mask_dtype_do_not_change_real_outputs() {
    use qrm::model::batching::{pad_right, PAD_ID};
    use qrm::model::template::Encoded;
    let model = RewardModel::load(fixtures().join("tiny-llama"), &Device::Cpu, DType::F32).unwrap();
    let encoded = |input_ids: Vec<u32>| Encoded {
        input_ids,
        ..Encoded::default()
    };
    let (long, short) = (encoded(vec![5, 9, 17, 3, 2]), encoded(vec![7, 11, 2]));
    let (ids, mask) = pad_right(&[&long, &short], &Device::Cpu).unwrap();
    assert_eq!(PAD_ID, 0);
    assert_eq!(
        ids.to_vec2::<u32>().unwrap(),
        vec![vec![5, 9, 17, 3, 2], vec![7, 11, 2, 0, 0]]
    );
    assert_eq!(mask.dtype(), DType::U32);
    let eos_padded = Tensor::new(&[[5u32, 9, 17, 3, 2], [7, 11, 2, 2, 2]], &Device::Cpu).unwrap();
    let mask_u8 = mask.to_dtype(DType::U8).unwrap();
    let now = model.forward(&ids, &mask).unwrap();
    let real = |t: &Tensor| t.narrow(0, 1, 1).unwrap().narrow(1, 0, 3).unwrap();
    for (name, out) in [
        ("EOS padding", model.forward(&eos_padded, &mask).unwrap()),
        ("u8 mask", model.forward(&ids, &mask_u8).unwrap()),
    ] {
        assert_eq!(
            max_abs_diff(&real(&now.hidden), &real(&out.hidden)),
            0.0,
            "{name}"
        );
        let a = last_token_values(&now.token_rewards, &mask).unwrap();
        let b = last_token_values(&out.token_rewards, &mask).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{name}");
    }
}

#[test]
fn a_row_alone_equals_the_same_row_in_a_padded_batch() {
    let golden = golden("llama");
    let model = RewardModel::load(fixtures().join("tiny-llama"), &Device::Cpu, DType::F32).unwrap();
    let (ids, mask) = batch(&golden);
    let batched = model.forward(&ids, &mask).unwrap();
    // Row 1 has 5 real tokens; alone it needs no padding.
    let alone_ids = ids.narrow(0, 1, 1).unwrap().narrow(1, 0, 5).unwrap();
    let alone_mask = mask.narrow(0, 1, 1).unwrap().narrow(1, 0, 5).unwrap();
    let alone = model.forward(&alone_ids, &alone_mask).unwrap();
    let from_batch = batched
        .hidden
        .narrow(0, 1, 1)
        .unwrap()
        .narrow(1, 0, 5)
        .unwrap();
    let diff = max_abs_diff(&alone.hidden, &from_batch);
    // Only float32 summation order differs (the matmuls are blocked differently).
    assert_close("row alone vs in batch", diff as f64, 1e-5);
}

#[test]
fn left_padding_is_rejected() {
    let model = RewardModel::load(fixtures().join("tiny-llama"), &Device::Cpu, DType::F32).unwrap();
    let ids = Tensor::new(&[[0u32, 5, 6]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[0u32, 1, 1]], &Device::Cpu).unwrap();
    let error = model.forward(&ids, &mask).unwrap_err().to_string();
    assert!(error.contains("right-padded"), "{error}");
}

#[test]
fn every_trainable_weight_gets_a_gradient() {
    let golden = golden("qwen2");
    let checkpoint =
        Checkpoint::load(fixtures().join("tiny-qwen2"), &Device::Cpu, DType::F32).unwrap();
    let varmap = VarMap::new();
    let model =
        RewardModel::trainable(&checkpoint, HeadKind::Linear, &varmap, 0, |_| true).unwrap();
    assert_eq!(model.transformer.kernels(), Kernels::Differentiable);
    let (ids, mask) = batch(&golden);
    let out = model.forward(&ids, &mask).unwrap();
    // A loss that touches every real token's reward and hidden state.
    let loss = (last_token_values(&out.token_rewards, &mask)
        .unwrap()
        .sum_all()
        .unwrap()
        + out.hidden.sqr().unwrap().mean_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    // Every checkpoint tensor is trainable here: 2 layers × (4 weights + 3 biases + 3 MLP + 2 norms)
    // + embedding + final norm + score = 27.
    assert_eq!(vars.len(), 27, "{:?}", vars.keys().collect::<Vec<_>>());
    let mut missing = Vec::new();
    for (name, var) in vars.iter() {
        let norm = grads
            .get(var.as_tensor())
            .map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        if norm == 0.0 {
            missing.push(name.clone());
        }
    }
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

#[test]
fn fused_kernels_stop_gradients_that_differentiable_ones_pass() {
    // The reason Kernels::Differentiable exists (candle issue #2168): with fused kernels the
    // q/k projections and norms receive no gradient.
    let golden = golden("llama");
    let checkpoint =
        Checkpoint::load(fixtures().join("tiny-llama"), &Device::Cpu, DType::F32).unwrap();
    let varmap = VarMap::new();
    let model = RewardModel::trainable(&checkpoint, HeadKind::Mlp, &varmap, 0, |_| true)
        .unwrap()
        .with_kernels(Kernels::Fused);
    let (ids, mask) = batch(&golden);
    let out = model.forward(&ids, &mask).unwrap();
    let grads = out.token_rewards.sum_all().unwrap().backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    let q = &vars["model.layers.0.self_attn.q_proj.weight"];
    assert!(grads.get(q.as_tensor()).is_none());
}

#[test]
fn training_only_the_top_layer_from_a_cached_trunk_matches_the_full_forward() {
    let golden = golden("llama");
    let checkpoint =
        Checkpoint::load(fixtures().join("tiny-llama"), &Device::Cpu, DType::F32).unwrap();
    let varmap = VarMap::new();
    let model = RewardModel::trainable(&checkpoint, HeadKind::Mlp, &varmap, 0, |name| {
        name.starts_with("model.layers.1.") || name == "model.norm.weight"
    })
    .unwrap();
    let (ids, mask) = batch(&golden);
    let transformer: &Transformer = &model.transformer;
    let trunk = transformer
        .run_layers(&transformer.embed(&ids).unwrap(), &mask, 0..1)
        .unwrap()
        .detach();
    let top = transformer.forward_from_layer(&trunk, &mask, 1).unwrap();
    let full = transformer.forward(&ids, &mask).unwrap();
    let diff = max_abs_diff_real(
        &top,
        &full.to_dtype(DType::F64).unwrap().to_vec3().unwrap(),
        &golden.attention_mask,
    );
    assert_close("cached trunk + top layer vs full", diff, 1e-6);
    // Only layer 1, the final norm and the head (7 tensors) are Vars.
    let vars = varmap.data().lock().unwrap();
    assert_eq!(
        vars.len(),
        9 + 1 + 7,
        "{:?}",
        vars.keys().collect::<Vec<_>>()
    );
    let grads = model
        .rewards_from_hidden(&top)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let down = &vars["model.layers.1.mlp.down_proj.weight"];
    assert!(grads.get(down.as_tensor()).is_some());
}

#[test]
fn a_saved_reward_model_loads_back_with_the_same_rewards() {
    let golden = golden("llama");
    let (ids, mask) = batch(&golden);
    for kind in [HeadKind::Linear, HeadKind::Mlp] {
        let checkpoint =
            Checkpoint::load(fixtures().join("tiny-qwen2"), &Device::Cpu, DType::F32).unwrap();
        let mut tensors = checkpoint.tensors.clone();
        tensors.remove("score.weight");
        let bare = Checkpoint::from_tensors(checkpoint.config.clone(), tensors, "bare").unwrap();
        let varmap = VarMap::new();
        let model = RewardModel::with_new_head(&bare, kind, &varmap, 0).unwrap();
        assert_eq!(model.head.kind(), kind);
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let loaded = RewardModel::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(loaded.head.kind(), kind);
        // transformers 4 reads the top-level rope_theta, transformers 5 rope_parameters.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["rope_theta"], 1000.0);
        assert_eq!(config["rope_parameters"]["rope_theta"], 1000.0);
        let a = model.forward(&ids, &mask).unwrap().token_rewards;
        let b = loaded.forward(&ids, &mask).unwrap().token_rewards;
        let diff = max_abs_diff(&a, &b);
        assert_eq!(diff, 0.0, "{kind}");
    }
}

/// `qrm-score --head linear --seed S` and `qrm-train`'s new head (`with_new_head(…, S)`) come
/// from one initialiser, so a seed names one head: the loaded model's rewards equal
/// `with_new_head`'s exactly (same backbone, so equal rewards mean equal heads), and another
/// seed gives other rewards.
#[test]
fn the_head_qrm_score_adds_for_a_seed_is_with_new_heads() {
    let golden = golden("qwen2");
    let (ids, mask) = batch(&golden);
    let checkpoint =
        Checkpoint::load(fixtures().join("tiny-qwen2"), &Device::Cpu, DType::F32).unwrap();
    let mut tensors = checkpoint.tensors.clone();
    tensors.remove("score.weight");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir(&base).unwrap();
    candle_core::safetensors::save(&tensors, base.join("model.safetensors")).unwrap();
    std::fs::copy(
        fixtures().join("tiny-qwen2/config.json"),
        base.join("config.json"),
    )
    .unwrap();
    let bare = Checkpoint::from_tensors(checkpoint.config.clone(), tensors, "bare").unwrap();
    let scored = |seed| {
        let args = qrm::model::loading::ModelArgs {
            rm: base.clone(),
            tokenizer: Some(fixtures().join("tiny-tokenizer/tokenizer.json")),
            device: qrm::model::DeviceChoice::Cpu,
            head: Some(HeadKind::Linear),
            seed,
        };
        let loaded = qrm::model::loading::load(&args).unwrap();
        loaded.model.forward(&ids, &mask).unwrap().token_rewards
    };
    let varmap = VarMap::new();
    let trained_from = RewardModel::with_new_head(&bare, HeadKind::Linear, &varmap, 0).unwrap();
    let expected = trained_from.forward(&ids, &mask).unwrap().token_rewards;
    assert_eq!(max_abs_diff(&scored(0), &expected), 0.0);
    assert!(max_abs_diff(&scored(1), &expected) > 0.0);
}

// ---------------------------------------------------------------------------------------------
// SmolLM2-135M-Instruct from its GGUF (installed by scripts/install-model.sh).

fn smollm2_gguf() -> Option<PathBuf> {
    qrm::testing::default_model()
}

fn shared_smollm2_dir() -> Option<PathBuf> {
    qrm::testing::shared_file("models/smollm2-135m-instruct")
}

#[derive(Deserialize)]
struct SmolReference {
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u32>>,
    dims: usize,
    rows: Vec<SmolRow>,
}

#[derive(Deserialize)]
struct SmolRow {
    head: Vec<Vec<f64>>,
    norm: Vec<f64>,
}

/// Max |Δ| of the first `dims` hidden dimensions and max relative |Δ| of the per-token L2 norms.
fn compare_with_smollm2_reference(hidden: &Tensor, reference: &SmolReference) -> (f64, f64) {
    let hidden = hidden
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec3::<f64>()
        .unwrap();
    let (mut head_diff, mut norm_diff) = (0f64, 0f64);
    assert!(
        !reference.rows.is_empty(),
        "the SmolLM2 reference holds no rows"
    );
    for (row, expected) in reference.rows.iter().enumerate() {
        assert!(
            !expected.head.is_empty(),
            "reference row {row} holds no tokens"
        );
        assert_eq!(
            expected.head.len(),
            expected.norm.len(),
            "reference row {row}"
        );
        for (t, (head, norm)) in expected.head.iter().zip(&expected.norm).enumerate() {
            let actual = &hidden[row][t];
            assert_eq!(head.len(), reference.dims, "reference row {row} token {t}");
            for (a, e) in actual[..reference.dims].iter().zip(head) {
                head_diff = head_diff.max((a - e).abs());
            }
            let actual_norm = actual.iter().map(|v| v * v).sum::<f64>().sqrt();
            norm_diff = norm_diff.max((actual_norm - norm).abs() / norm);
        }
    }
    (head_diff, norm_diff)
}

#[test]
fn smollm2_from_gguf_matches_transformers_loading_the_same_gguf() {
    let Some(gguf) = smollm2_gguf() else { return };
    let text = std::fs::read_to_string(fixtures().join("smollm2_reference.json")).unwrap();
    let reference: SmolReference = serde_json::from_str(&text).unwrap();
    let checkpoint = Checkpoint::load(&gguf, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(checkpoint.config.num_hidden_layers, 30);
    assert_eq!(checkpoint.config.num_kv_heads(), 3);
    let transformer = Transformer::new(
        &checkpoint.config,
        Checkpoint::backbone(&checkpoint.var_builder(), &checkpoint.backbone_prefix),
    )
    .unwrap();
    let rows = reference.input_ids.len();
    let cols = reference.input_ids[0].len();
    let ids = Tensor::from_vec(reference.input_ids.concat(), (rows, cols), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(
        reference.attention_mask.concat(),
        (rows, cols),
        &Device::Cpu,
    )
    .unwrap();
    let fused = transformer.forward(&ids, &mask).unwrap();
    let (head_diff, norm_diff) = compare_with_smollm2_reference(&fused, &reference);
    // Hidden values reach ~±30 after 30 layers; f32 vs the f64 reference.
    assert_close("smollm2 gguf fused: first 32 dims", head_diff, 2e-4);
    assert_close("smollm2 gguf fused: relative norm", norm_diff, 1e-5);

    let differentiable = transformer
        .clone()
        .with_kernels(Kernels::Differentiable)
        .forward(&ids, &mask)
        .unwrap();
    let (head_diff, norm_diff) = compare_with_smollm2_reference(&differentiable, &reference);
    assert_close(
        "smollm2 gguf differentiable: first 32 dims",
        head_diff,
        2e-4,
    );
    assert_close(
        "smollm2 gguf differentiable: relative norm",
        norm_diff,
        1e-5,
    );
    let kernel_diff = max_abs_diff(&fused, &differentiable);
    eprintln!("smollm2 fused vs differentiable: max |Δ| = {kernel_diff:.3e} (pads included)");
}

#[test]
fn gguf_rebuilt_tokenizer_encodes_like_the_upstream_tokenizer_json() {
    let Some(gguf) = smollm2_gguf() else { return };
    let Some(dir) = shared_smollm2_dir() else {
        return;
    };
    let rebuilt = qrm::model::gguf::tokenizer_from_gguf(&gguf).unwrap();
    let upstream = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let corpus = [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
        "<|im_start|>user\nWhat is 12345 * 6789?<|im_end|>\n<|im_start|>assistant\n",
        "The answer is $\\boxed{\\frac{3}{4}}$ since 0.75 = 75% and 1,000,000 > 999,999.",
        "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n-1) + fib(n-2)\n",
        "fn main() { let xs: Vec<u32> = (0..10).collect(); println!(\"{xs:?}\"); }",
        "Ünïcödé: café, naïve, 東京, Привет мир, مرحبا, emoji 🎉🚀, math ∑∫√π≈3.14159",
        "  leading spaces,\ttabs,\r\nwindows newlines,\n\n\nand trailing   ",
        "<<48/2=24>> #### 72 <repo_name>x<file_sep>y<|endoftext|>",
        "3.14e-10 -42 +7 0x1F 1e9 2^31-1 = 2147483647",
        "",
    ];
    for text in corpus {
        for add_special in [false, true] {
            let ours = rebuilt.encode(text, add_special).unwrap();
            let theirs = upstream.encode(text, add_special).unwrap();
            assert_eq!(ours.get_ids(), theirs.get_ids(), "text {text:?}");
        }
        let ids = upstream.encode(text, false).unwrap();
        assert_eq!(
            rebuilt.decode(ids.get_ids(), false).unwrap(),
            upstream.decode(ids.get_ids(), false).unwrap()
        );
    }
    assert_eq!(rebuilt.get_vocab_size(true), upstream.get_vocab_size(true));
}

#[test]
fn smollm2_gguf_saved_as_f32_safetensors_loads_back_identically() {
    let Some(gguf) = smollm2_gguf() else { return };
    let checkpoint = Checkpoint::load(&gguf, &Device::Cpu, DType::F32).unwrap();
    let varmap = VarMap::new();
    let model = RewardModel::with_new_head(&checkpoint, HeadKind::Linear, &varmap, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let loaded = RewardModel::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[1u8, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], &Device::Cpu).unwrap();
    let a = model.forward(&ids, &mask).unwrap();
    let b = loaded.forward(&ids, &mask).unwrap();
    let diff = max_abs_diff(&a.hidden, &b.hidden);
    assert_eq!(diff, 0.0);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "LlamaForSequenceClassification");
    assert_eq!(config["value_head_prefix"], "score");

    let tokenizer = qrm::model::gguf::load_tokenizer(&gguf).unwrap();
    qrm::model::checkpoint::save_tokenizer(dir.path(), &tokenizer).unwrap();
    let reloaded = qrm::model::gguf::load_tokenizer(dir.path()).unwrap();
    let text = "<|im_start|>user\n2 + 2 = 4 ✓<|im_end|>";
    assert_eq!(
        reloaded.encode(text, true).unwrap().get_ids(),
        tokenizer.encode(text, true).unwrap().get_ids()
    );
}

#[test]
fn openrlhf_normalize_reward_config_rescales_rewards() {
    let golden = golden("qwen2");
    let (ids, mask) = batch(&golden);
    let mut checkpoint =
        Checkpoint::load(fixtures().join("tiny-qwen2"), &Device::Cpu, DType::F32).unwrap();
    let plain = RewardModel::from_checkpoint(&checkpoint).unwrap();
    checkpoint.config.normalize_reward = true;
    checkpoint.config.mean = Some(0.5);
    checkpoint.config.std = Some(2.0);
    let normalized = RewardModel::from_checkpoint(&checkpoint).unwrap();
    let raw = plain.forward(&ids, &mask).unwrap().token_rewards;
    let scaled = normalized.forward(&ids, &mask).unwrap().token_rewards;
    // (r - 0.5) / 2
    let expected = ((raw - 0.5).unwrap() / 2.0).unwrap();
    let diff = max_abs_diff(&scaled, &expected);
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn sharded_safetensors_with_an_index_load_like_one_file() {
    let golden = golden("llama");
    let (ids, mask) = batch(&golden);
    let source = fixtures().join("tiny-llama");
    let tensors =
        candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(source.join("config.json"), dir.path().join("config.json")).unwrap();
    // Layer 0 in the first shard, everything else in the second, as transformers shards.
    let (first, second): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|(name, _)| name.starts_with("model.layers.0."));
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        for (name, _) in &part {
            weight_map.insert(name.clone(), file.into());
        }
        let part: std::collections::HashMap<String, Tensor> = part.into_iter().collect();
        candle_core::safetensors::save(&part, dir.path().join(file)).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let sharded = RewardModel::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let single = RewardModel::load(&source, &Device::Cpu, DType::F32).unwrap();
    let a = sharded.forward(&ids, &mask).unwrap().token_rewards;
    let b = single.forward(&ids, &mask).unwrap().token_rewards;
    let diff = max_abs_diff(&a, &b);
    assert_eq!(diff, 0.0);
}

#[test]
fn bf16_forward_stays_close_to_transformers() {
    // The GPU path runs in bf16; on the CPU this checks the dtype plumbing (mask, rotary tables,
    // f32 softmax) with bf16's 8-bit mantissa: relative error ~1e-2.
    let golden = golden("qwen2");
    let (ids, mask) = batch(&golden);
    let model =
        RewardModel::load(fixtures().join("tiny-qwen2"), &Device::Cpu, DType::BF16).unwrap();
    for kernels in [Kernels::Fused, Kernels::Differentiable] {
        let out = model
            .clone()
            .with_kernels(kernels)
            .forward(&ids, &mask)
            .unwrap();
        assert_eq!(out.hidden.dtype(), DType::BF16);
        let diff = max_abs_diff_real(&out.hidden, &golden.hidden, &golden.attention_mask);
        let scale = golden
            .hidden
            .iter()
            .flatten()
            .flatten()
            .fold(0f64, |m, v| m.max(v.abs()));
        assert_close(
            &format!("bf16 {kernels:?} hidden / max |hidden| {scale:.2}"),
            diff / scale,
            5e-2,
        );
    }
}

#[test]
fn fused_attention_of_long_padded_rows_is_as_accurate_as_candles_ops() {
    // From FUSED_ATTENTION_MIN_LEN padded tokens on, the CPU forward switches from matmuls
    // around the causal softmax to the fused attention kernel; both must equal the
    // differentiable composition on every real token. Rows of 520 and 300 real tokens.
    let seq_len = qrm::model::cpu_kernels::FUSED_ATTENTION_MIN_LEN + 8;
    let lengths = [seq_len, 300];
    let model = RewardModel::load(fixtures().join("tiny-qwen2"), &Device::Cpu, DType::F32).unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for (row, &length) in lengths.iter().enumerate() {
        for position in 0..seq_len {
            let real = position < length;
            // Deterministic ids spread over the fixture's vocabulary; 0 (pad) after the row.
            ids.push(if real {
                ((position * 7 + row * 13) % 90 + 3) as u32
            } else {
                0
            });
            mask.push(u32::from(real));
        }
    }
    let ids = Tensor::from_vec(ids, (2, seq_len), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, (2, seq_len), &Device::Cpu).unwrap();
    // The reference: the differentiable composition in f64, where rounding is negligible.
    // Over 520 keys f32 rounding reaches ~1e-5 on either f32 path, so each is held to the f64
    // reference and the fused kernel may not be meaningfully worse than candle's ops.
    let reference = RewardModel::load(fixtures().join("tiny-qwen2"), &Device::Cpu, DType::F64)
        .unwrap()
        .with_kernels(Kernels::Differentiable)
        .forward(&ids, &mask)
        .unwrap()
        .hidden
        .to_dtype(DType::F32)
        .unwrap();
    let fused = model.clone().with_kernels(Kernels::Fused);
    let differentiable = model.with_kernels(Kernels::Differentiable);
    let a = fused.forward(&ids, &mask).unwrap().hidden;
    let b = differentiable.forward(&ids, &mask).unwrap().hidden;
    for (row, &length) in lengths.iter().enumerate() {
        let real = |t: &Tensor| t.get(row).unwrap().narrow(0, 0, length).unwrap();
        let fused_error = max_abs_diff(&real(&a), &real(&reference));
        let candle_error = max_abs_diff(&real(&b), &real(&reference));
        eprintln!(
            "row {row} ({length} tokens): fused {fused_error:.3e}, candle {candle_error:.3e}"
        );
        assert_close(
            &format!("row {row} ({length} tokens) fused vs f64"),
            fused_error as f64,
            (2.0 * candle_error as f64).max(1e-5),
        );
    }
}

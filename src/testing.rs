//! What the test suites share: where the public data and the default model are, and a skip
//! notice the test runner shows.
//!
//! A test that needs `../shared/data` or the default model and finds it absent must not end
//! looking like a pass: [`skip`] writes its line straight to the process's standard error, past
//! the harness's output capture, so `cargo test` prints `SKIPPED <test>: <why>` beside the `ok`.
//! Under `CI=true` a missing default model is a failure instead: CI installs it
//! (`scripts/install-model.sh`), so its absence there means the install broke.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The project root (where `Cargo.toml` is).
pub fn project_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The running test's name: libtest names each test's thread after it.
fn test_name() -> String {
    std::thread::current().name().unwrap_or("a test").to_owned()
}

/// Tells the person running the tests that the running test did not run, and why. Written with
/// `std::io::stderr()` directly: `eprintln!` would be captured and hidden for a passing test.
pub fn skip(reason: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "SKIPPED {}: {reason}", test_name());
}

/// `../shared/data` beside the project, or `None` after a [`skip`] notice.
pub fn shared_data() -> Option<PathBuf> {
    let path = project_root().join("../shared/data");
    if path.is_dir() {
        Some(path)
    } else {
        skip("../shared/data not found (the public data sets; see README)");
        None
    }
}

/// A file or folder under `../shared/data`, or `None` after a [`skip`] notice.
pub fn shared_file(relative: &str) -> Option<PathBuf> {
    let data = shared_data()?;
    let path = data.join(relative);
    if path.exists() {
        Some(path)
    } else {
        skip(&format!("{} not found", path.display()));
        None
    }
}

/// True when the tests run under CI (`CI=true`, as `.ci/run` is started).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// The default model's GGUF (`QRM_SMOLLM2_GGUF` overrides the path), or `None` after a
/// [`skip`] notice. Under CI a missing model panics: CI installs it, so the test must run.
pub fn default_model() -> Option<PathBuf> {
    let path = std::env::var_os("QRM_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join(crate::model::checkpoint::DEFAULT_MODEL));
    if path.exists() {
        return Some(path);
    }
    let reason = format!(
        "{} not found (run scripts/install-model.sh)",
        path.display()
    );
    if in_ci() {
        panic!("{reason}; CI installs the default model, so its tests must run");
    }
    skip(&reason);
    None
}

/// A (CPU, f32) tensor of independent Normal(0, std²) draws from a ChaCha8 generator seeded
/// with `seed`: candle's `Tensor::randn` on the CPU cannot be seeded, so a failure it finds
/// would not reproduce.
pub fn seeded_normal(dims: &[usize], std: f32, seed: u64) -> candle_core::Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let normal = rand_distr::Normal::new(0f32, std).expect("a positive, finite std");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let count: usize = dims.iter().product();
    let values: Vec<f32> = (0..count).map(|_| normal.sample(&mut rng)).collect();
    candle_core::Tensor::from_vec(values, dims, &candle_core::Device::Cpu)
        .expect("as many values as the shape holds")
}

/// The tiny llama reward-model fixture (tests/fixtures/tiny-llama: 2 layers, hidden 32,
/// vocabulary 100, MLP head) on the CPU in f32.
pub fn tiny_llama() -> crate::model::RewardModel {
    let path = project_root().join("tests/fixtures/tiny-llama");
    crate::model::RewardModel::load(path, &candle_core::Device::Cpu, candle_core::DType::F32)
        .expect("the tiny llama fixture loads")
}

/// An encoder over the character-level fixture tokenizer
/// (tests/fixtures/make_tiny_tokenizer.py): chatml template, EOS appended, left-prompt
/// truncation, no length limit.
pub fn tiny_encoder() -> crate::model::template::Encoder {
    use crate::model::template::{find_eos_id, Encoder, EosPolicy, Template, Truncation};
    let path = project_root().join("tests/fixtures/tiny-tokenizer/tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(path).expect("the fixture tokenizer loads");
    let eos_id = find_eos_id(&tokenizer, None).expect("the fixture tokenizer has an EOS");
    Encoder {
        tokenizer,
        template: Template::ChatMl,
        eos: EosPolicy::Append,
        eos_id,
        max_len: None,
        truncation: Truncation::LeftPrompt,
    }
}

/// max |a − b| over all elements of two f32 tensors of one shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("two f32 tensors of one shape")
}

/// max |a − b| / max(1, max |b|) over two f32 tensors of one shape: hidden states of real models
/// (and the residual stream before the final norm, which grows with depth) reach magnitudes of
/// tens, where f32 rounding alone is above 1e-5 in absolute terms.
pub fn relative_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    let scale = b
        .abs()
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("an f32 tensor");
    max_abs_diff(a, b) / scale.max(1.0)
}

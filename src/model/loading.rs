//! What `qrm-score` and `qrm-embed` share: the flags that choose the reward model and the
//! encoding, the loading of both into a [`TokenModel`] and an [`Encoder`], and the model's
//! identity (sha256 of its weights and tokenizer) that `rm_id` and `--resume` check.
//!
//! A directory that looks like `qrm-train` output (`qrm_head` in its config.json, a `state/`
//! directory or `reward_check.json`) but has no `train_config.json`, the training record
//! qrm-train writes when it finishes, is refused: its training failed or is still running.
//! Plain transformers/OpenRLHF/TRL reward models, base models with `--head linear` and GGUF
//! files load as they are.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::model::batching::TokenModel;
use crate::model::checkpoint::model_sha256;
use crate::model::device::parse_device;
use crate::model::gguf::tokenizer_from_gguf;
use crate::model::template::{
    find_eos_id, parse_template_arg, Encoder, EosPolicy, Template, Truncation,
};
use crate::model::{Checkpoint, DeviceChoice, HeadKind, RewardModel};
use crate::pipeline::io::{file_sha256, key_of};

use crate::model::record::{STATE_DIR, TRAINING_RECORD};

/// `--max-len` when not given: this, or the model's context when that is shorter.
pub const DEFAULT_MAX_LEN: usize = 1024;

/// The shortest `--max-len`: a chat template and the EOS alone take ~10 tokens, so below 16 a
/// row keeps next to nothing of its response.
pub const MIN_MAX_LEN: usize = 16;

/// `--device` for a tool that runs a model without [`ModelArgs`] (qrm-train), spelled, parsed
/// and documented as ModelArgs' own; a bad name is rejected at parse time (exit 2).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N (gpu means cuda:0).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceChoice,
}

/// `--rm`, `--tokenizer`, `--device`, `--head`, `--seed`.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Reward model: a directory with config.json, safetensors weights and a value head
    /// (as `qrm-train` writes), or a base model directory / GGUF file with `--head linear`.
    #[arg(long, value_name = "PATH")]
    pub rm: PathBuf,

    /// tokenizer.json to use instead of the one beside the model.
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,

    /// cpu, cuda or cuda:N (gpu means cuda:0).
    // Not a flattened DeviceArgs: a nested flatten leaves ModelArgs' arg group empty, and
    // qrm-score's `Option<ModelArgs>` would then never see `--rm`.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceChoice,

    /// Add an untrained value head to a base model (`linear`, seeded by --seed); its rewards
    /// mean nothing, only the hidden states (and so the Q-values) do.
    #[arg(long, value_enum, value_name = "KIND")]
    pub head: Option<HeadKind>,

    /// Seed for an untrained head and for any random choice the tool makes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `--template`, `--eos`, `--max-len`, `--truncate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodingArgs {
    /// Prompt template: chatml (SmolLM2-Instruct; qrm-train's default too), nemo (the paper's,
    /// clean), nemo-release (the released code's indented string), raw, or a file holding
    /// `{question}` once. Use the template the reward model was trained with.
    #[arg(long, default_value = "chatml", value_name = "NAME|PATH", value_parser = parse_template_arg)]
    pub template: String,

    /// append: an EOS token closes the response and the reward is read there (as in
    /// training); none: the reward is read at the last response token.
    #[arg(long, value_enum, default_value_t = EosPolicy::Append)]
    pub eos: EosPolicy,

    /// Longest sequence in tokens (prompt + response + EOS); longer rows are truncated.
    /// Default: 1024, or the model's context (config `max_position_embeddings`) when shorter.
    /// At most the model's context and at least 16 (a chat template and the EOS alone take
    /// ~10 tokens, so below 16 a row keeps next to nothing of its response).
    #[arg(long, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(MIN_MAX_LEN as u64..))]
    pub max_len: Option<usize>,

    /// How to shorten a row longer than --max-len.
    #[arg(long = "truncate", value_enum, default_value_t = Truncation::LeftPrompt)]
    pub truncation: Truncation,
}

/// What a model's scores depend on besides the encoding: the sha256 of its files (each read
/// once per run) and an untrained head's seed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelIdentity {
    /// [`model_sha256`]: of a `.gguf` file, or over a directory's config.json and
    /// `*.safetensors` files' sha256s.
    pub weights_sha256: String,
    /// Of the tokenizer.json used; a GGUF's embedded tokenizer is covered by `weights_sha256`.
    pub tokenizer_sha256: String,
    /// `linear seed=N` for an untrained head (`--head`), else `None`.
    pub untrained_head: Option<String>,
}

/// `rm_id` when no goal is given, in place of the goal file's sha256.
pub const NO_GOAL: &str = "no-goal";

impl ModelIdentity {
    /// `rm_id`: `{rm}@` and the first 12 hex chars of the sha256 over the weights' sha256, the
    /// tokenizer's and the goal file's (or [`NO_GOAL`]), NUL-separated ([`key_of`]); an
    /// untrained head's seed is a fourth part.
    pub fn rm_id(&self, rm: &str, goal_sha256: Option<&str>) -> String {
        let mut parts = vec![
            self.weights_sha256.as_str(),
            self.tokenizer_sha256.as_str(),
            goal_sha256.unwrap_or(NO_GOAL),
        ];
        if let Some(head) = &self.untrained_head {
            parts.push(head);
        }
        format!("{rm}@{}", &key_of(&parts)[..12])
    }
}

/// A loaded reward model with its tokenizer.
pub struct LoadedModel {
    pub model: Box<dyn TokenModel>,
    pub tokenizer: Tokenizer,
    /// The directory holding the model (where `tokenizer_config.json` may name the EOS).
    pub model_dir: Option<PathBuf>,
    /// The name stored in the `rm` column and the goal-state provenance.
    pub name: String,
    /// True when the value head was created untrained (`--head`).
    pub untrained_head: bool,
    /// Width of the hidden states (and of a goal state made with this model).
    pub hidden_size: usize,
    /// The model's context: config `max_position_embeddings`.
    pub max_positions: usize,
    pub device: DeviceChoice,
    pub identity: ModelIdentity,
}

impl LoadedModel {
    /// The encoder for these flags. `--max-len` above the model's context is a usage error.
    pub fn encoder(&self, args: &EncodingArgs) -> Result<Encoder> {
        let max_len = match args.max_len {
            Some(max_len) if max_len > self.max_positions => {
                return Err(Error::Usage(format!(
                    "--max-len {max_len} is longer than the model's context \
                     (max_position_embeddings {}); pass at most that",
                    self.max_positions
                )))
            }
            Some(max_len) => max_len,
            None => DEFAULT_MAX_LEN.min(self.max_positions),
        };
        Ok(Encoder {
            tokenizer: self.tokenizer.clone(),
            template: Template::parse(&args.template)?,
            eos: args.eos,
            eos_id: find_eos_id(&self.tokenizer, self.model_dir.as_deref())?,
            max_len: Some(max_len),
            truncation: args.truncation,
        })
    }
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| Error::Format {
        path: path.to_owned(),
        message: format!("tokenizer: {e}"),
    })
}

/// The tokenizer and the directory it came from: `--tokenizer`, else the one a `.gguf` file
/// embeds, else `tokenizer.json` in the model directory.
pub fn find_tokenizer(args: &ModelArgs) -> Result<(Tokenizer, Option<PathBuf>)> {
    let parent = |path: &Path| path.parent().map(Path::to_owned);
    if let Some(path) = &args.tokenizer {
        return Ok((load_tokenizer(path)?, parent(path)));
    }
    if is_gguf(&args.rm) {
        return Ok((tokenizer_from_gguf(&args.rm)?, parent(&args.rm)));
    }
    let path = args.rm.join("tokenizer.json");
    if !path.exists() {
        return Err(Error::Usage(format!(
            "{}: no tokenizer; pass --tokenizer PATH/tokenizer.json",
            path.display()
        )));
    }
    Ok((load_tokenizer(&path)?, Some(args.rm.clone())))
}

fn is_gguf(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gguf")
}

/// The name of a reward model: its directory or file name.
pub fn model_name(rm: &Path) -> String {
    rm.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| rm.display().to_string())
}

impl TokenModel for RewardModel {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let output = RewardModel::forward(self, input_ids, attention_mask)?;
        Ok((output.hidden, output.token_rewards))
    }

    fn device(&self) -> &Device {
        self.transformer.device()
    }
}

/// A new linear value head `value_head.weight` (1, hidden) drawn from N(0, 1/(H+1)) — the
/// paper's initialisation — with a seeded generator, so untrained-head runs repeat exactly
/// (candle cannot seed its CPU generator).
fn seeded_linear_head(hidden: usize, seed: u64, device: &Device, dtype: DType) -> Result<Tensor> {
    let normal = rand_distr_normal(seed, hidden);
    let std = 1.0 / (hidden as f64 + 1.0);
    let values: Vec<f32> = normal.into_iter().map(|z| (z * std) as f32).collect();
    Ok(Tensor::from_vec(values, (1, hidden), device)?.to_dtype(dtype)?)
}

/// `count` standard normal draws (Box–Muller over a seeded ChaCha8 stream).
fn rand_distr_normal(seed: u64, count: usize) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
            let u2: f64 = rng.random::<f64>();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        })
        .collect()
}

/// Refuses a directory that looks like `qrm-train` output but lacks its [`TRAINING_RECORD`]: a
/// failed, interrupted or still running training.
pub fn check_training_record(rm: &Path) -> Result<()> {
    if !rm.is_dir() || rm.join(TRAINING_RECORD).exists() {
        return Ok(());
    }
    let mut signs = Vec::new();
    if rm.join(STATE_DIR).is_dir() {
        signs.push(format!("a `{STATE_DIR}/` directory"));
    }
    if rm.join("reward_check.json").exists() {
        signs.push("reward_check.json".to_owned());
    }
    let config = rm.join("config.json");
    if let Ok(text) = fs_err::read_to_string(&config) {
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: config.clone(),
            message: format!("not JSON: {e}"),
        })?;
        if value.get("qrm_head").is_some() {
            signs.push("`qrm_head` in config.json".to_owned());
        }
    }
    if signs.is_empty() {
        return Ok(());
    }
    Err(Error::Format {
        path: rm.to_owned(),
        message: format!(
            "looks like qrm-train output ({}) but has no {TRAINING_RECORD}, which qrm-train \
             writes when training is done: the training failed or has not finished. Finish it \
             (qrm-train ... --resume) or score a complete checkpoint",
            signs.join(", ")
        ),
    })
}

/// The sha256 of the tokenizer [`find_tokenizer`] picks; for a GGUF's embedded one, a marker
/// (the GGUF's own sha256 covers it).
fn tokenizer_sha256(args: &ModelArgs) -> Result<String> {
    match &args.tokenizer {
        Some(path) => file_sha256(path),
        None if is_gguf(&args.rm) => Ok("embedded in the GGUF".to_owned()),
        None => file_sha256(&args.rm.join("tokenizer.json")),
    }
}

/// Loads the reward model and tokenizer the flags name.
pub fn load(args: &ModelArgs) -> Result<LoadedModel> {
    let choice = args.device;
    let device = choice.device()?;
    let dtype = choice.dtype();
    check_training_record(&args.rm)?;
    let (tokenizer, model_dir) = find_tokenizer(args)?;
    let model = match &args.head {
        None => RewardModel::load(&args.rm, &device, dtype)?,
        Some(HeadKind::Linear) => {
            let mut checkpoint = Checkpoint::load(&args.rm, &device, dtype)?;
            if let Some(layout) = checkpoint.head_layout() {
                return Err(Error::Usage(format!(
                    "{}: the checkpoint already has a `{}` head; drop --head",
                    args.rm.display(),
                    layout.prefix
                )));
            }
            let hidden = checkpoint.config.hidden_size;
            let head = seeded_linear_head(hidden, args.seed, &device, dtype)?;
            checkpoint.tensors.insert("value_head.weight".into(), head);
            checkpoint.config.value_head_prefix = Some("value_head".into());
            RewardModel::from_checkpoint(&checkpoint)?
        }
        Some(HeadKind::Mlp) => {
            return Err(Error::Usage(
                "--head mlp: only an untrained linear head can be added for scoring".into(),
            ))
        }
    };
    let identity = ModelIdentity {
        weights_sha256: model_sha256(&args.rm)?,
        tokenizer_sha256: tokenizer_sha256(args)?,
        untrained_head: args.head.map(|kind| format!("{kind} seed={}", args.seed)),
    };
    Ok(LoadedModel {
        hidden_size: model.config.hidden_size,
        max_positions: model.config.max_position_embeddings,
        model: Box::new(model),
        tokenizer,
        model_dir,
        name: model_name(&args.rm),
        untrained_head: args.head.is_some(),
        device: choice,
        identity,
    })
}

/// The first 12 hex chars of a sha256 and an ellipsis, for messages.
pub fn short_hash(hash: &str) -> String {
    format!("{}…", &hash[..hash.len().min(12)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rm_id_is_the_name_and_12_hex_of_weights_tokenizer_and_goal() {
        let identity = ModelIdentity {
            weights_sha256: "a".repeat(64),
            tokenizer_sha256: "b".repeat(64),
            untrained_head: None,
        };
        // sha256("a"*64 NUL "b"*64 NUL "no-goal" NUL) = 25652df344cf13a7…  (sha256sum)
        assert_eq!(identity.rm_id("bt", None), "bt@25652df344cf");
        // sha256("a"*64 NUL "b"*64 NUL "d"*64 NUL) = 97301173900a…
        assert_eq!(
            identity.rm_id("bt", Some(&"d".repeat(64))),
            "bt@97301173900a"
        );
        let seeded = ModelIdentity {
            untrained_head: Some("linear seed=1".into()),
            ..identity.clone()
        };
        assert_ne!(seeded.rm_id("bt", None), identity.rm_id("bt", None));
    }

    /// A copy of the tiny llama fixture with `edit` applied to its config.json.
    fn tiny_llama_copy(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
        let copy = dir.join("bt");
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::copy(
            fixture.join("model.safetensors"),
            copy.join("model.safetensors"),
        )
        .unwrap();
        let text = std::fs::read_to_string(fixture.join("config.json")).unwrap();
        let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut config);
        std::fs::write(copy.join("config.json"), config.to_string()).unwrap();
        copy
    }

    #[test]
    fn unfinished_qrm_training_is_refused_and_plain_models_load() {
        let dir = tempfile::tempdir().unwrap();
        let plain = tiny_llama_copy(dir.path(), |_| {});
        check_training_record(&plain).unwrap();

        let unfinished = tiny_llama_copy(&dir.path().join("qrm"), |config| {
            config["qrm_head"] = "mlp".into();
        });
        let error = check_training_record(&unfinished).unwrap_err();
        assert!(
            error.to_string().contains("`qrm_head` in config.json")
                && error.to_string().contains("no train_config.json"),
            "{error}"
        );
        std::fs::create_dir(unfinished.join(STATE_DIR)).unwrap();
        let error = check_training_record(&unfinished).unwrap_err();
        assert!(error.to_string().contains("`state/`"), "{error}");

        std::fs::write(unfinished.join(TRAINING_RECORD), "{}").unwrap();
        check_training_record(&unfinished).unwrap();
        // A GGUF file (or any non-directory) is not qrm-train output.
        check_training_record(&dir.path().join("model.gguf")).unwrap();
    }
}

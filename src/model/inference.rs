//! What `qrm-score` and `qrm-embed` share: the flags that choose the reward model and the
//! encoding, and the loading of both into a [`TokenModel`] and an [`Encoder`].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::model::batching::TokenModel;
use crate::model::gguf::tokenizer_from_gguf;
use crate::model::goal::GoalState;
use crate::model::template::{find_eos_id, Encoder, EosPolicy, Template, Truncation};
use crate::model::{Checkpoint, DeviceChoice, HeadKind, RewardModel};

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

    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,

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
    #[arg(long, default_value = "chatml", value_name = "NAME|PATH")]
    pub template: String,

    /// append: an EOS token closes the response and the reward is read there (as in
    /// training); none: the reward is read at the last response token.
    #[arg(long, value_enum, default_value_t = EosPolicy::Append)]
    pub eos: EosPolicy,

    /// Longest sequence in tokens (prompt + response + EOS); longer rows are truncated.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_len: usize,

    /// How to shorten a row longer than --max-len.
    #[arg(long = "truncate", value_enum, default_value_t = Truncation::LeftPrompt)]
    pub truncation: Truncation,
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
}

impl LoadedModel {
    /// The encoder for these flags.
    pub fn encoder(&self, args: &EncodingArgs) -> Result<Encoder> {
        Ok(Encoder {
            tokenizer: self.tokenizer.clone(),
            template: Template::parse(&args.template)?,
            eos: args.eos,
            eos_id: find_eos_id(&self.tokenizer, self.model_dir.as_deref())?,
            max_len: Some(args.max_len),
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

/// Loads the reward model and tokenizer the flags name.
pub fn load(args: &ModelArgs) -> Result<LoadedModel> {
    let choice: DeviceChoice = args.device.parse()?;
    let device = choice.device()?;
    let dtype = choice.dtype();
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
    Ok(LoadedModel {
        model: Box::new(model),
        tokenizer,
        model_dir,
        name: model_name(&args.rm),
        untrained_head: args.head.is_some(),
    })
}

/// Refuses a goal state made with another template or EOS policy than the scoring run's: the
/// cosine only means something when both come from the same encoding.
pub fn check_goal_matches(goal: &GoalState, path: &Path, encoder: &Encoder) -> Result<()> {
    for (key, now) in [
        ("template", encoder.template.name()),
        ("eos", encoder.eos.name().to_owned()),
    ] {
        if let Some(then) = goal.metadata.get(key) {
            if *then != now {
                return Err(Error::Usage(format!(
                    "{}: the goal state was made with --{key} {then}, this run uses {now}",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

//! What `qrm-score` and `qrm-embed` share: the flags that choose the reward model and the
//! encoding, and the loading of both into a [`TokenModel`] and an [`Encoder`].

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::model::batching::TokenModel;
use crate::model::goal::GoalState;
use crate::model::template::{find_eos_id, Encoder, EosPolicy, Template, Truncation};

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

    /// Add an untrained value head to a base model (`linear`); its rewards mean nothing, only
    /// the hidden states (and so the Q-values) do.
    #[arg(long, value_name = "KIND")]
    pub head: Option<String>,

    /// Seed for an untrained head and for any random choice the tool makes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `--template`, `--eos`, `--max-len`, `--truncate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodingArgs {
    /// Prompt template: nemo (the paper's), chatml (SmolLM2-Instruct), raw, or a file holding
    /// `{question}` once.
    #[arg(long, default_value = "nemo", value_name = "NAME|PATH")]
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

/// The tokenizer: `--tokenizer`, else `tokenizer.json` in the model directory.
pub fn find_tokenizer(args: &ModelArgs) -> Result<Tokenizer> {
    let path = match &args.tokenizer {
        Some(path) => path.clone(),
        None => {
            let dir = model_dir(&args.rm);
            dir.join("tokenizer.json")
        }
    };
    if !path.exists() {
        return Err(Error::Usage(format!(
            "{}: no tokenizer; pass --tokenizer PATH/tokenizer.json",
            path.display()
        )));
    }
    load_tokenizer(&path)
}

fn model_dir(rm: &Path) -> PathBuf {
    if rm.is_dir() {
        rm.to_owned()
    } else {
        rm.parent().map(Path::to_owned).unwrap_or_default()
    }
}

/// The name of a reward model: its directory or file name.
pub fn model_name(rm: &Path) -> String {
    rm.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| rm.display().to_string())
}

/// Loads the reward model and tokenizer the flags name.
pub fn load(args: &ModelArgs) -> Result<LoadedModel> {
    let tokenizer = find_tokenizer(args)?;
    let _ = &tokenizer;
    Err(Error::Model(format!(
        "{}: loading reward models arrives with the `model` branch",
        args.rm.display()
    )))
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

//! What `qrm-score` and `qrm-embed` share: the flags that choose the reward model and the
//! encoding, the loading of both into a [`TokenModel`] and an [`Encoder`], and the model's
//! identity (sha256 of its weights and tokenizer) that `rm_id` and `--resume` check.
//!
//! A directory that looks like `qrm-train` output (`qrm_head` in its config.json, a `state/`
//! directory or `reward_check.json`) but has no `train_config.json`, the training record
//! qrm-train writes when it finishes, is refused: its training failed or is still running.
//! Plain transformers/OpenRLHF/TRL reward models, base models with `--head linear` and GGUF
//! files load as they are. The encoding flags left out are taken from the training record
//! ([`resolve_encoding`]), so a checkpoint is scored with the template, EOS policy and length
//! it was trained with unless asked otherwise.

use std::path::{Path, PathBuf};

use candle_nn::VarMap;
use clap::ValueEnum;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::model::batching::TokenModel;
use crate::model::checkpoint::model_sha256;
use crate::model::device::parse_device;
use crate::model::gguf::tokenizer_from_gguf;
use crate::model::template::{
    find_eos_id, parse_template_arg, Encoder, EosPolicy, Template, Truncation,
};
use crate::model::{Checkpoint, DeviceChoice, DtypeChoice, HeadKind, RewardModel};
use crate::pipeline::io::{file_sha256, key_of};

use crate::model::record::{EncodingRecord, STATE_DIR, TRAINING_RECORD};

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

    /// Weights and activations: auto (f32 on the CPU, bf16 on a GPU), f32, or bf16 (mixed
    /// precision: f32 master weights, optimiser state and loss).
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DtypeChoice,
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

/// `--template` when neither given nor in the model's training record.
pub const DEFAULT_TEMPLATE: &str = "chatml";

/// `--template`, `--eos`, `--max-len`, `--truncate`. The first three default to what the
/// model's training record (`train_config.json`, [`EncodingRecord`]) says it was trained with;
/// a value given that differs from the record's is used, with a warning.
#[derive(Debug, Clone, clap::Args)]
pub struct EncodingArgs {
    /// Prompt template: chatml (SmolLM2-Instruct; qrm-train's default too), nemo (the paper's,
    /// clean), nemo-release (the released code's indented string), raw, or a file holding
    /// `{question}` once. Default: the template in the model's train_config.json (as qrm-train
    /// writes it), else chatml; one that differs from the recorded one is used with a warning.
    #[arg(long, value_name = "NAME|PATH", value_parser = parse_template_arg)]
    pub template: Option<String>,

    /// append: an EOS token closes the response and the reward is read there (as in
    /// training); none: the reward is read at the last response token. Default: the model's
    /// train_config.json, else append.
    #[arg(long, value_enum)]
    pub eos: Option<EosPolicy>,

    /// Longest sequence in tokens (prompt + response + EOS); longer rows are truncated.
    /// Default: the model's train_config.json, else 1024, or the model's context (config
    /// `max_position_embeddings`) when shorter. At most the model's context and at least 16
    /// (a chat template and the EOS alone take ~10 tokens, so below 16 a row keeps next to
    /// nothing of its response).
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
    /// `*.safetensors` files' sha256s (for a LoRA directory, also its adapter_config.json and
    /// its base model's identity).
    pub weights_sha256: String,
    /// Of the tokenizer.json used; a GGUF's embedded tokenizer is covered by `weights_sha256`.
    pub tokenizer_sha256: String,
    /// `linear seed=N init=with_new_head` for an untrained head (`--head`), else `None`. The
    /// `init` part names the initialiser: the hand-written one before it drew other heads for
    /// the same seed, so a `--resume` of such a run is refused instead of mixing two heads.
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
    /// The encoding in the model's training record and that record's path; `None` for a
    /// model not trained by qrm-train.
    pub record: Option<(PathBuf, EncodingRecord)>,
}

/// The encoding flags resolved against a training record.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedEncoding {
    pub template: Template,
    pub eos: EosPolicy,
    pub max_len: usize,
    /// One phrase per flag given with another value than the record's.
    pub differences: Vec<String>,
}

/// `args` with what they leave out taken from `record` (the encoding a model was trained
/// with, read from `record_path`), else the defaults ([`DEFAULT_TEMPLATE`], `append`,
/// [`DEFAULT_MAX_LEN`] or the model's context `max_positions` when shorter). `--max-len` above
/// the model's context is a usage error; a recorded template file that cannot be read or an
/// unknown recorded EOS policy is an error naming the record.
pub fn resolve_encoding(
    args: &EncodingArgs,
    record: Option<(&Path, &EncodingRecord)>,
    max_positions: usize,
) -> Result<ResolvedEncoding> {
    if let Some(max_len) = args.max_len.filter(|&max_len| max_len > max_positions) {
        return Err(Error::Usage(format!(
            "--max-len {max_len} is longer than the model's context \
             (max_position_embeddings {max_positions}); pass at most that"
        )));
    }
    let mut differences = Vec::new();
    let mut differs = |flag: &str, given: String, recorded: &str| {
        if given != recorded {
            differences.push(format!(
                "{flag} {given}, but the model was trained with {recorded}"
            ));
        }
    };
    let Some((path, record)) = record else {
        return Ok(ResolvedEncoding {
            template: Template::parse(args.template.as_deref().unwrap_or(DEFAULT_TEMPLATE))?,
            eos: args.eos.unwrap_or_default(),
            max_len: args
                .max_len
                .unwrap_or_else(|| DEFAULT_MAX_LEN.min(max_positions)),
            differences,
        });
    };
    let recorded = |message: String| Error::Format {
        path: path.to_owned(),
        message,
    };
    let template = match &args.template {
        Some(given) => {
            let template = Template::parse(given)?;
            differs("--template", template.name(), &record.template);
            template
        }
        None => Template::parse(&record.template).map_err(|e| {
            recorded(format!(
                "the recorded template `{}` cannot be used ({e}); pass --template",
                record.template
            ))
        })?,
    };
    let eos = match args.eos {
        Some(given) => {
            differs("--eos", given.name().to_owned(), &record.eos);
            given
        }
        None => EosPolicy::from_str(&record.eos, false)
            .map_err(|e| recorded(format!("the recorded eos `{}` is unknown: {e}", record.eos)))?,
    };
    let max_len = match args.max_len {
        Some(given) => {
            differs("--max-len", given.to_string(), &record.max_len.to_string());
            given
        }
        None => record.max_len.min(max_positions),
    };
    Ok(ResolvedEncoding {
        template,
        eos,
        max_len,
        differences,
    })
}

impl LoadedModel {
    /// The encoder for these flags, resolved against the model's training record
    /// ([`resolve_encoding`]); a flag that differs from the record is warned about and used.
    pub fn encoder(&self, args: &EncodingArgs) -> Result<Encoder> {
        let record = self
            .record
            .as_ref()
            .map(|(path, record)| (path.as_path(), record));
        let resolved = resolve_encoding(args, record, self.max_positions)?;
        for difference in &resolved.differences {
            tracing::warn!(
                "{difference} ({}): using the value given",
                record.map_or_else(String::new, |(path, _)| path.display().to_string())
            );
        }
        Ok(Encoder {
            tokenizer: self.tokenizer.clone(),
            template: resolved.template,
            eos: resolved.eos,
            eos_id: find_eos_id(&self.tokenizer, self.model_dir.as_deref())?,
            max_len: Some(resolved.max_len),
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
            let checkpoint = Checkpoint::load(&args.rm, &device, dtype)?;
            if let Some(layout) = checkpoint.head_layout() {
                return Err(Error::Usage(format!(
                    "{}: the checkpoint already has a `{}` head; drop --head",
                    args.rm.display(),
                    layout.prefix
                )));
            }
            // The one seeded initialiser: the head `qrm-train` starts from for this seed.
            let varmap = VarMap::new();
            RewardModel::with_new_head(&checkpoint, HeadKind::Linear, &varmap, args.seed)?
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
        untrained_head: args
            .head
            .map(|kind| format!("{kind} seed={} init=with_new_head", args.seed)),
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
        record: EncodingRecord::read(&args.rm)?
            .map(|record| (args.rm.join(TRAINING_RECORD), record)),
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

    fn encoding_args(template: Option<&str>, eos: Option<EosPolicy>) -> EncodingArgs {
        EncodingArgs {
            template: template.map(str::to_owned),
            eos,
            max_len: None,
            truncation: Truncation::LeftPrompt,
        }
    }

    #[test]
    fn encoding_flags_default_to_the_training_record_then_to_chatml_append_1024() {
        let record = EncodingRecord {
            template: "raw".into(),
            eos: "none".into(),
            max_len: 64,
        };
        let path = Path::new("ckpt/train_config.json");
        let resolved =
            resolve_encoding(&encoding_args(None, None), Some((path, &record)), 2048).unwrap();
        assert_eq!(
            (resolved.template, resolved.eos, resolved.max_len),
            (Template::Raw, EosPolicy::None, 64)
        );
        assert!(resolved.differences.is_empty());

        // Without a record: chatml, append, 1024 or the context when shorter.
        let plain = resolve_encoding(&encoding_args(None, None), None, 2048).unwrap();
        assert_eq!(
            (plain.template, plain.eos, plain.max_len),
            (Template::ChatMl, EosPolicy::Append, DEFAULT_MAX_LEN)
        );
        let short = resolve_encoding(&encoding_args(None, None), None, 512).unwrap();
        assert_eq!(short.max_len, 512);

        // Given and different: used, and each difference named.
        let mut args = encoding_args(Some("chatml"), Some(EosPolicy::None));
        args.max_len = Some(128);
        let given = resolve_encoding(&args, Some((path, &record)), 2048).unwrap();
        assert_eq!(
            (given.template, given.eos, given.max_len),
            (Template::ChatMl, EosPolicy::None, 128)
        );
        assert_eq!(
            given.differences,
            [
                "--template chatml, but the model was trained with raw",
                "--max-len 128, but the model was trained with 64",
            ]
        );
        args.max_len = Some(4096);
        let error = resolve_encoding(&args, Some((path, &record)), 2048).unwrap_err();
        assert!(matches!(error, Error::Usage(_)), "{error}");

        let unknown = EncodingRecord {
            eos: "always".into(),
            ..record
        };
        let error =
            resolve_encoding(&encoding_args(None, None), Some((path, &unknown)), 2048).unwrap_err();
        assert!(
            error.to_string().contains("ckpt/train_config.json")
                && error.to_string().contains("`always`"),
            "{error}"
        );
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

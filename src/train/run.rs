//! `qrm-train` end to end: pairs file → tokenised pairs → (cached frozen trunk) → [`train`] →
//! checkpoint directory.
//!
//! [`train`]: crate::train::trainer::train

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::record::{EncodingRecord, TRAINING_RECORD};
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::model::batching::{pad_right, TokenModel};
use crate::model::checkpoint::model_sha256;
use crate::model::checkpoint::Checkpoint;
use crate::model::device::{DeviceChoice, DtypeChoice};
use crate::model::head::HeadKind;
use crate::model::lora::{add_adapters, LoraDropout, LoraSpec};
use crate::model::reward_model::{last_token_values, RewardModel, RewardOutput};
use crate::model::template::{
    find_eos_id, Encoded, Encoder, EosPolicy, Template, Truncated, Truncation, TruncationCounts,
};
use crate::model::transformer::{Kernels, Transformer};
use crate::pipeline::io::key_of;
use crate::pipeline::io::{display_path, read_table_hashed, write_atomic};
use crate::pipeline::schema::{pairs_from_frame, Pair};
use crate::train::checkpointing::LayerStack;
use crate::train::trainer::{
    state_directory, train, BatchInput, EncodedPair, EvalMetrics, RunOptions, TrainConfig,
    TrainData, TrainSummary, TrainableRewardModel,
};
use crate::train::trunk::{compute_trunks, TrunkCache, TRUNK_BATCH_TOKENS, TRUNK_CACHE_FORMAT};

/// Tokenises pairs with the shared template and EOS policy. A pair is dropped when either side
/// is skipped by the truncation policy or has no token to read a reward at; the counts say how
/// many of each truncation case occurred.
pub fn encode_pairs(
    encoder: &Encoder,
    pairs: &[Pair],
) -> Result<(Vec<EncodedPair>, TruncationCounts)> {
    let mut counts = TruncationCounts::default();
    let mut encoded = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let chosen = encoder.encode(&pair.question, &pair.chosen)?;
        let rejected = encoder.encode(&pair.question, &pair.rejected)?;
        counts.add(chosen.truncated);
        counts.add(rejected.truncated);
        let usable = |e: &Encoded| e.truncated != Truncated::Skipped && e.scored_len() > 0;
        if usable(&chosen) && usable(&rejected) {
            encoded.push(EncodedPair {
                chosen,
                rejected,
                margin: pair.margin,
            });
        }
    }
    Ok((encoded, counts))
}

/// Splits pairs into (train, eval) by question, so no eval question is seen in training:
/// ⌈fraction · questions⌉ questions, drawn with `seed`, go to eval (at least one when the
/// fraction is positive and there are two questions or more).
pub fn split_by_question(pairs: Vec<Pair>, fraction: f64, seed: u64) -> (Vec<Pair>, Vec<Pair>) {
    if fraction <= 0.0 {
        return (pairs, Vec::new());
    }
    let mut questions: Vec<String> = pairs
        .iter()
        .map(|pair| pair.question_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    questions.shuffle(&mut rng);
    let eval_count = ((fraction * questions.len() as f64).ceil() as usize)
        .min(questions.len().saturating_sub(1))
        .max(usize::from(questions.len() > 1));
    let eval_questions: BTreeSet<String> = questions.into_iter().take(eval_count).collect();
    pairs
        .into_iter()
        .partition(|pair| !eval_questions.contains(&pair.question_id))
}

/// Everything `qrm-train` needs.
#[derive(Debug, Clone)]
pub struct FitRequest {
    pub pairs: PathBuf,
    pub eval_pairs: Option<PathBuf>,
    pub eval_fraction: f64,
    pub model: PathBuf,
    pub output: PathBuf,
    /// Train only the top K layers (with a cached trunk); `None` trains the whole model.
    pub train_layers: Option<usize>,
    /// LoRA adapters on the trained layers instead of their full weights.
    pub lora: Option<LoraSpec>,
    pub head: HeadKind,
    pub template: String,
    pub eos: EosPolicy,
    pub max_len: usize,
    pub device: DeviceChoice,
    /// `--dtype`: bf16 trains in mixed precision (f32 masters in the optimiser).
    pub dtype: DtypeChoice,
    pub resume: bool,
    pub log: Option<PathBuf>,
    pub cache: PathBuf,
    pub quiet: bool,
    pub config: TrainConfig,
}

/// The layer index in a Hugging Face weight name (`model.layers.12.mlp...` → 12).
fn layer_of(name: &str) -> Option<usize> {
    let rest = &name[name.find("layers.")? + "layers.".len()..];
    rest.split('.').next()?.parse().ok()
}

/// A [`RewardModel`] whose layers `first_layer..` (and final norm and head) train; the layers
/// below run either from tokens or, with a cached trunk, not at all.
pub struct TopLayers {
    pub model: RewardModel,
    pub first_layer: usize,
    /// The adapters' settings when the layers train LoRA adapters rather than their weights.
    pub lora: Option<LoraSpec>,
    variables: Vec<(String, Var)>,
    dropout: Option<Arc<LoraDropout>>,
    device: Device,
}

impl TopLayers {
    /// Loads `checkpoint` for training its top `train_layers` layers (all when `None`); a new
    /// head is drawn from `seed`.
    pub fn new(
        checkpoint: &Checkpoint,
        head: HeadKind,
        train_layers: Option<usize>,
        seed: u64,
        device: &Device,
    ) -> Result<TopLayers> {
        Self::with_lora(checkpoint, head, train_layers, None, seed, device)
    }

    /// [`TopLayers::new`], or with `lora` LoRA adapters on the target projections of those
    /// layers (A drawn from `seed`), their base weights frozen: then only the adapters, the
    /// final norm and a linear head train.
    pub fn with_lora(
        checkpoint: &Checkpoint,
        head: HeadKind,
        train_layers: Option<usize>,
        lora: Option<&LoraSpec>,
        seed: u64,
        device: &Device,
    ) -> Result<TopLayers> {
        let layers = checkpoint.config.num_hidden_layers;
        let first_layer = match train_layers {
            Some(k) if k > layers => {
                return Err(Error::Usage(format!(
                    "--train-layers {k}: the model has {layers} layers"
                )))
            }
            Some(k) => layers - k,
            None => 0,
        };
        if lora.is_some() {
            let kind = checkpoint.head_layout().map_or(head, |layout| layout.kind);
            if kind != HeadKind::Linear {
                return Err(Error::Usage(
                    "--lora-rank trains a linear `score` head (PEFT's SEQ_CLS layout); the \
                     model's head or --head is the MLP"
                        .into(),
                ));
            }
        }
        let varmap = VarMap::new();
        let mut model = RewardModel::trainable(checkpoint, head, &varmap, seed, |name| {
            match (layer_of(name), lora) {
                // With adapters no base weight of a layer trains.
                (Some(_), Some(_)) => false,
                (Some(layer), None) => layer >= first_layer,
                // Outside the layers: the final norm trains with the top layers, the embedding
                // only when the whole model trains without adapters.
                (None, _) => {
                    name.ends_with("norm.weight") || (train_layers.is_none() && lora.is_none())
                }
            }
        })?;
        let mut adapters = Vec::new();
        let mut dropout = None;
        if let Some(spec) = lora {
            dropout = (spec.dropout > 0.0).then(|| LoraDropout::new(spec.dropout, seed));
            let prefix = match checkpoint.backbone_prefix.as_str() {
                "" => String::new(),
                prefix => format!("{prefix}."),
            };
            adapters = add_adapters(
                &mut model.transformer,
                spec,
                first_layer..layers,
                seed,
                dropout.clone(),
            )?
            .into_iter()
            .map(|(name, var)| (format!("{prefix}{name}"), var))
            .collect();
        }
        let mut variables: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .map_err(|_| Error::Model("the VarMap's lock is poisoned".into()))?
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect();
        variables.extend(adapters);
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(TopLayers {
            model,
            first_layer,
            lora: lora.cloned(),
            variables,
            dropout,
            device: device.clone(),
        })
    }

    /// The frozen trunk's output for each response: layers `0..first_layer` with the fused
    /// kernels `fused`, (len, H) on the CPU, in order ([`compute_trunks`]: batched, a shared
    /// prompt's trunk once).
    pub fn trunks(
        &self,
        fused: &Transformer,
        responses: &[&Encoded],
        progress: &indicatif::ProgressBar,
    ) -> Result<Vec<Tensor>> {
        compute_trunks(
            fused,
            self.first_layer,
            responses,
            TRUNK_BATCH_TOKENS,
            progress,
        )
    }

    /// [`TopLayers::trunks`] of every pair's (chosen, rejected), for [`TrainData::trunk`]
    /// without a cache.
    pub fn pair_trunks(&self, pairs: &[EncodedPair]) -> Result<Vec<[Tensor; 2]>> {
        let fused = self.model.transformer.clone().with_kernels(Kernels::Fused);
        let responses: Vec<&Encoded> = pairs
            .iter()
            .flat_map(|pair| [&pair.chosen, &pair.rejected])
            .collect();
        let mut trunks = self
            .trunks(&fused, &responses, &indicatif::ProgressBar::hidden())?
            .into_iter();
        let mut next = || {
            trunks
                .next()
                .ok_or_else(|| Error::Model("a pair lacks its trunk output".into()))
        };
        pairs.iter().map(|_| Ok([next()?, next()?])).collect()
    }
}

impl TokenModel for TopLayers {
    /// The whole model from tokens.
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<RewardOutput> {
        self.model.forward(input_ids, attention_mask)
    }

    fn device(&self) -> &Device {
        &self.device
    }
}

impl TrainableRewardModel for TopLayers {
    /// From the cached trunk output when the batch has one: layers `first_layer..` only.
    fn forward_batch(&self, input: &BatchInput) -> Result<RewardOutput> {
        let Some(trunk) = &input.trunk_hidden else {
            return self.forward(&input.input_ids, &input.attention_mask);
        };
        let transformer = &self.model.transformer;
        let hidden = transformer.forward_from_layer(
            &trunk.to_dtype(transformer.dtype())?,
            &input.attention_mask,
            self.first_layer,
        )?; // (B, L, H)
        let token_rewards = self.model.rewards_from_hidden(&hidden)?; // (B, L)
        Ok(RewardOutput {
            hidden,
            token_rewards,
        })
    }

    fn trainable_variables(&self) -> Vec<(String, Var)> {
        self.variables.clone()
    }

    fn set_training_step(&self, step: Option<usize>) {
        if let Some(dropout) = &self.dropout {
            match step {
                Some(step) => dropout.begin_step(step),
                None => dropout.stop(),
            }
        }
    }
    fn layer_stack(&self) -> Option<LayerStack<'_>> {
        Some(LayerStack {
            model: &self.model,
            first_layer: self.first_layer,
            dropout: self.dropout.as_deref(),
        })
    }
}

/// The pairs of a file or `-`, with the sha256 of what was read (the run's identity).
fn read_pairs(path: &Path) -> Result<(Vec<Pair>, String)> {
    let (frame, sha256) = read_table_hashed(path)?;
    Ok((pairs_from_frame(&frame, &display_path(path))?, sha256))
}

/// `DIR.partial`, beside `DIR`: where a run trains and writes its checkpoint until it is complete.
pub fn partial_output(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Without `--resume`, an `output.partial` left by an interrupted or failed run is a usage
/// error that says how to clear it.
fn check_no_leftover_run(output: &Path, resume: bool) -> Result<()> {
    let partial = partial_output(output);
    if !resume && partial.exists() {
        return Err(Error::Usage(format!(
            "{} holds an interrupted or failed training run: pass --resume to continue it, \
             or delete it to start over",
            partial.display()
        )));
    }
    Ok(())
}

/// Chooses the directory a run works in, so that `output` only ever holds a complete checkpoint:
/// `output.partial` (an interrupted run continues there under `--resume`; without it, its
/// presence is an error that says how to clear it), or, for `--resume` of a completed run,
/// `output` itself moved to `output.partial` while training continues.
fn working_directory(output: &Path, resume: bool) -> Result<PathBuf> {
    let partial = partial_output(output);
    if partial.exists() {
        check_no_leftover_run(output, resume)?;
        return Ok(partial);
    }
    if resume && state_directory(output).is_dir() {
        fs_err::rename(output, &partial).map_err(|e| Error::io(output, e))?;
        tracing::info!(
            "continuing the completed run in {} (in {} until done)",
            output.display(),
            partial.display()
        );
        return Ok(partial);
    }
    fs_err::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    Ok(partial)
}

/// Moves a complete checkpoint from `partial` to `output`, replacing a previous one there only
/// after the new one is in place under a temporary name.
fn publish(partial: &Path, output: &Path) -> Result<()> {
    if !output.exists() {
        return fs_err::rename(partial, output).map_err(|e| Error::io(output, e));
    }
    let mut old_name = output.as_os_str().to_owned();
    old_name.push(format!(".old-{}", std::process::id()));
    let old = PathBuf::from(old_name);
    fs_err::rename(output, &old).map_err(|e| Error::io(output, e))?;
    fs_err::rename(partial, output).map_err(|e| Error::io(output, e))?;
    fs_err::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
}

/// The token the checkpoint declares as padding: transformers' sequence classifier reads the
/// reward at the last token that is not `pad_token_id`, so it must differ from the EOS the
/// reward is read at. `<|endoftext|>`, `<pad>` or `<unk>` when the vocabulary has one, else 0.
/// (Also what `benches/score.rs` declares in the model it hands to its PyTorch peer.)
pub fn pad_token_id(tokenizer: &Tokenizer, eos_id: u32) -> u32 {
    [
        "<|endoftext|>",
        "<pad>",
        "<unk>",
        "<|finetune_right_pad_id|>",
    ]
    .iter()
    .filter_map(|token| tokenizer.token_to_id(token))
    .find(|&id| id != eos_id)
    .unwrap_or(if eos_id == 0 { 1 } else { 0 })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Model(e.to_string()))?;
    write_atomic(path, |writer| {
        writer
            .write_all(text.as_bytes())
            .map_err(|e| Error::io(path, e))
    })
}

/// The training record, `train_config.json` in every checkpoint qrm-train writes: what the run
/// trained on (files and their sha256), with which settings, and how it ended. Written last, so
/// a checkpoint directory that has it is complete; `qrm-score` refuses a qrm checkpoint without
/// it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub config: TrainConfig,
    /// The pairs file (`<stdin>` for `-`) and the sha256 of what was read from it.
    pub pairs: PathBuf,
    pub pairs_sha256: String,
    pub eval_pairs: Option<PathBuf>,
    pub eval_pairs_sha256: Option<String>,
    pub eval_fraction: f64,
    pub train_pairs_used: usize,
    pub eval_pairs_used: usize,
    pub model: PathBuf,
    pub model_sha256: String,
    pub train_layers: Option<usize>,
    /// The LoRA adapters' settings; absent for a run that trained the weights themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSpec>,
    pub head: String,
    /// The prompt template, EOS policy and longest sequence the model was trained with.
    #[serde(flatten)]
    pub encoding: EncodingRecord,
    pub device: String,
    /// The dtype weights and activations ran in (`f32`, `bf16`); absent in records written
    /// before `--dtype`, which trained in the device's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    pub steps: usize,
    pub eval: Option<EvalMetrics>,
    pub eval_accuracy_interval: Option<AccuracyInterval>,
    pub qrm_version: String,
    /// The candle-core version this build links, from Cargo.lock.
    pub candle_version: String,
}

/// The eval accuracy's interval in the training record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyInterval {
    pub level: f64,
    pub method: String,
    pub low: f64,
    pub high: f64,
    pub p_value_against_half: f64,
}

impl TrainingRecord {
    /// Reads `train_config.json` from a checkpoint directory.
    pub fn load(directory: &Path) -> Result<TrainingRecord> {
        let path = directory.join(TRAINING_RECORD);
        let text = fs_err::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Format {
            path,
            message: format!("not a qrm training record: {e}"),
        })
    }
}

/// The version of a package in the Cargo.lock this crate was built with.
fn locked_version(package: &str) -> Option<&'static str> {
    const LOCK: &str = include_str!("../../Cargo.lock");
    let name = format!("name = \"{package}\"");
    let mut lines = LOCK.lines();
    lines.find(|line| *line == name)?;
    lines
        .next()?
        .strip_prefix("version = \"")?
        .strip_suffix('"')
}

/// The pairs of a run, split into train and eval, with the sha256 of what was read.
struct RunPairs {
    train: Vec<Pair>,
    eval: Vec<Pair>,
    sha256: String,
    eval_sha256: Option<String>,
}

impl RunPairs {
    /// Reads the pairs (a file or `-`), and the eval pairs from `--eval-pairs` or a
    /// question-disjoint `--eval-fraction` of them.
    fn read(request: &FitRequest) -> Result<RunPairs> {
        let stdin = Path::new("-");
        if request.eval_pairs.as_deref() == Some(stdin) && request.pairs == stdin {
            return Err(Error::Usage(
                "the pairs and --eval-pairs cannot both be read from stdin (`-`)".into(),
            ));
        }
        let (all, sha256) = read_pairs(&request.pairs)?;
        Ok(match &request.eval_pairs {
            Some(path) => {
                let (eval, eval_sha256) = read_pairs(path)?;
                RunPairs {
                    train: all,
                    eval,
                    sha256,
                    eval_sha256: Some(eval_sha256),
                }
            }
            None => {
                let (train, eval) =
                    split_by_question(all, request.eval_fraction, request.config.seed);
                RunPairs {
                    train,
                    eval,
                    sha256,
                    eval_sha256: None,
                }
            }
        })
    }

    /// The sha256 the eval pairs were read with (the training pairs' when split from them).
    fn eval_hash(&self) -> &str {
        self.eval_sha256.as_deref().unwrap_or(&self.sha256)
    }
}

/// The frozen trunk's outputs for the train and eval pairs, from the cache under
/// `request.cache` or computed once (keyed by everything that changes them).
fn cached_trunks(
    request: &FitRequest,
    model: &TopLayers,
    model_hash: &str,
    template: &Template,
    pairs: &RunPairs,
    encoded: [&[EncodedPair]; 2],
) -> Result<[Option<Vec<[Tensor; 2]>>; 2]> {
    let fused = model.model.transformer.clone().with_kernels(Kernels::Fused);
    let mut trunks = [None, None];
    let template_name = template.name();
    let first_layer = model.first_layer.to_string();
    let max_len = request.max_len.to_string();
    let split = format!("{}:{}", request.eval_fraction, request.config.seed);
    let parts = [
        ("train", pairs.sha256.as_str()),
        ("eval", pairs.eval_hash()),
    ];
    for ((slot, (name, pairs_hash)), encoded) in trunks.iter_mut().zip(parts).zip(encoded) {
        let key_parts: Vec<&str> = [
            TRUNK_CACHE_FORMAT,
            model_hash,
            &template_name,
            request.eos.name(),
            &first_layer,
            &max_len,
            pairs_hash,
            name,
            &split,
        ]
        .into_iter()
        .chain(request.dtype_key())
        .collect();
        let key = key_of(&key_parts);
        // Sized by `load_or_compute` to the distinct responses.
        let progress = crate::cli::progress_bar(0, name, request.quiet);
        let cache = TrunkCache::new(&request.cache, &key);
        let trunk = cache.load_or_compute(encoded, &Device::Cpu, &progress, |responses, bar| {
            model.trunks(&fused, responses, bar)
        })?;
        progress.finish_and_clear();
        *slot = Some(trunk);
    }
    Ok(trunks)
}

/// What a run trains on beyond its `TrainConfig`: a resumed run must be the same work
/// ([`train`] compares it with the saved state, naming each difference).
fn run_identity(
    request: &FitRequest,
    pairs: &RunPairs,
    model_hash: &str,
    template: &Template,
) -> BTreeMap<String, String> {
    [
        ("pairs_sha256", pairs.sha256.clone()),
        (
            "eval_pairs_sha256",
            pairs.eval_sha256.clone().unwrap_or_default(),
        ),
        ("eval_fraction", request.eval_fraction.to_string()),
        ("model_sha256", model_hash.to_owned()),
        ("train_layers", format!("{:?}", request.train_layers)),
        ("head", request.head.to_string()),
        ("template", template.name()),
        ("eos", request.eos.name().to_owned()),
        ("max_len", request.max_len.to_string()),
    ]
    .into_iter()
    // Only LoRA runs carry the key, so states saved before it existed still resume.
    .chain(request.lora.as_ref().map(|spec| ("lora", spec.describe())))
    .chain(request.dtype_key().map(|dtype| ("dtype", dtype.to_owned())))
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// The training record of a finished run; `used` counts the train and eval pairs trained and
/// evaluated on (after too-long ones were skipped).
fn training_record(
    request: &FitRequest,
    pairs: &RunPairs,
    used: [usize; 2],
    model_hash: &str,
    template: &Template,
    summary: &TrainSummary,
) -> TrainingRecord {
    TrainingRecord {
        config: request.config.clone(),
        pairs: display_path(&request.pairs),
        pairs_sha256: pairs.sha256.clone(),
        eval_pairs: request.eval_pairs.as_deref().map(display_path),
        eval_pairs_sha256: pairs.eval_sha256.clone(),
        eval_fraction: request.eval_fraction,
        train_pairs_used: used[0],
        eval_pairs_used: used[1],
        model: request.model.clone(),
        model_sha256: model_hash.to_owned(),
        train_layers: request.train_layers,
        lora: request.lora.clone(),
        head: request.head.to_string(),
        encoding: EncodingRecord {
            template: template.name(),
            eos: request.eos.name().to_owned(),
            max_len: request.max_len,
        },
        device: request.device.to_string(),
        dtype: Some(request.dtype().as_str().to_owned()),
        steps: summary.steps,
        eval: summary.eval,
        eval_accuracy_interval: summary.eval.and_then(|eval| eval.accuracy_interval()).map(
            |share| AccuracyInterval {
                level: 0.95,
                method: "wilson".into(),
                low: share.low,
                high: share.high,
                p_value_against_half: share.p_value,
            },
        ),
        qrm_version: env!("CARGO_PKG_VERSION").into(),
        candle_version: locked_version("candle-core").unwrap_or("unknown").into(),
    }
}

impl FitRequest {
    /// The dtype the run trains in: `--dtype`, or the device's own.
    pub fn dtype(&self) -> DType {
        self.device.dtype_for(self.dtype)
    }

    /// The dtype as the resume identity and the trunk-cache key carry it (`bf16`): none for
    /// f32, so states and trunks saved before `--dtype` existed still resume and load.
    fn dtype_key(&self) -> Option<&'static str> {
        let dtype = self.dtype();
        (dtype != DType::F32).then(|| dtype.as_str())
    }
}

/// The model `request` names on `device`, its top `--train-layers` layers (and a new head
/// when it has none) trainable.
fn load_top_layers(request: &FitRequest, device: &Device) -> Result<TopLayers> {
    let config = &request.config;
    if request.lora.is_some() && crate::model::lora::Adapter::is_adapter_dir(&request.model) {
        return Err(Error::Usage(format!(
            "--lora-rank on {}, itself a LoRA directory: merge it first (qrm-train --merge)",
            request.model.display()
        )));
    }
    let checkpoint = Checkpoint::load(&request.model, device, request.dtype())?;
    let model = TopLayers::with_lora(
        &checkpoint,
        request.head,
        request.train_layers,
        request.lora.as_ref(),
        config.seed,
        device,
    )?;
    tracing::info!(
        "training {} tensors ({} parameters) from layer {}",
        model.variables.len(),
        model
            .variables
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum::<usize>(),
        model.first_layer
    );
    Ok(model)
}

/// Reads the pairs, tokenises them, trains, and writes the checkpoint directory.
pub fn fit(request: &FitRequest) -> Result<TrainSummary> {
    let config = &request.config;
    let device = request.device.device()?;
    // Before minutes of tokenising and trunk computation, not after.
    check_no_leftover_run(&request.output, request.resume)?;

    // 1. The pairs, split into train and eval by question.
    let pairs = RunPairs::read(request)?;

    // 2. Tokenised with the template and EOS policy scoring will use; too long pairs skipped.
    let tokenizer = crate::model::gguf::load_tokenizer(&request.model)?;
    let model_dir = request.model.is_dir().then_some(request.model.as_path());
    let eos_id = find_eos_id(&tokenizer, model_dir)?;
    let template = Template::parse(&request.template)?;
    let encoder = Encoder {
        tokenizer: tokenizer.clone(),
        template: template.clone(),
        eos: request.eos,
        eos_id,
        max_len: Some(request.max_len),
        truncation: Truncation::Skip,
    };
    let (train_encoded, _) = encode_pairs(&encoder, &pairs.train)?;
    let (eval_encoded, _) = encode_pairs(&encoder, &pairs.eval)?;
    tracing::info!(
        "{} training pairs ({} skipped as longer than {} tokens), {} eval pairs",
        train_encoded.len(),
        pairs.train.len() - train_encoded.len(),
        request.max_len,
        eval_encoded.len()
    );

    // 3. The model, its top layers trainable.
    let model = load_top_layers(request, &device)?;
    let model_hash = model_sha256(&request.model)?;

    // 4. The frozen trunk's outputs, computed once and cached, when only top layers train.
    let [train_trunk, eval_trunk] = if request.train_layers.is_some() {
        cached_trunks(
            request,
            &model,
            &model_hash,
            &template,
            &pairs,
            [&train_encoded, &eval_encoded],
        )?
    } else {
        [None, None]
    };
    let train_data = TrainData {
        pairs: train_encoded,
        trunk: train_trunk,
    };
    let eval_data = TrainData {
        pairs: eval_encoded,
        trunk: eval_trunk,
    };

    // 5. Train and write the checkpoint in OUTPUT.partial, renamed to OUTPUT when complete, so
    // a failed or interrupted run never leaves a directory that loads as a checkpoint.
    let work = working_directory(&request.output, request.resume)?;
    let written = train(
        &model,
        &train_data,
        (!eval_data.pairs.is_empty()).then_some(&eval_data),
        config,
        RunOptions {
            output: &work,
            resume: request.resume,
            log: request.log.as_deref(),
            quiet: request.quiet,
            on_step: None,
            identity: run_identity(request, &pairs, &model_hash, &template),
        },
    )
    .and_then(|summary| {
        let used = [train_data.pairs.len(), eval_data.pairs.len()];
        let record = training_record(request, &pairs, used, &model_hash, &template, &summary);
        write_checkpoint(
            &model, &tokenizer, eos_id, &summary, &eval_data, &work, &record,
        )?;
        Ok(summary)
    });
    let summary = match written {
        Ok(summary) => summary,
        Err(error) => {
            // Nothing to resume (the run failed before its first saved state): leave nothing
            // behind that would block the next run.
            if !state_directory(&work).join("state.json").exists() {
                let _ = fs_err::remove_dir_all(&work);
            }
            return Err(error);
        }
    };
    publish(&work, &request.output)?;
    Ok(summary)
}

/// Writes the checkpoint into `directory`: weights and config (with the eval reward
/// distribution), tokenizer, a few rewards for the transformers cross-check, and the training
/// record last.
fn write_checkpoint(
    model: &TopLayers,
    tokenizer: &Tokenizer,
    eos_id: u32,
    summary: &TrainSummary,
    eval_data: &TrainData,
    directory: &Path,
    record: &TrainingRecord,
) -> Result<()> {
    let mut reward_model = model.model.clone();
    if let Some(eval) = &summary.eval {
        reward_model.config.mean = Some(eval.reward_mean);
        reward_model.config.std = Some(eval.reward_std);
    }
    reward_model.config.normalize_reward = false;
    reward_model.config.pad_token_id = Some(pad_token_id(tokenizer, eos_id));
    match &model.lora {
        None => reward_model.save(directory)?,
        Some(spec) => {
            let layers = reward_model.config.num_hidden_layers;
            let adapted: Vec<usize> = (model.first_layer..layers).collect();
            let layers = (model.first_layer > 0).then_some(adapted.as_slice());
            save_lora(directory, &reward_model, spec, layers, &record.model)?;
        }
    }
    let tokenizer_path = directory.join("tokenizer.json");
    tokenizer
        .save(&tokenizer_path, false)
        .map_err(|e| Error::Model(format!("{}: {e}", tokenizer_path.display())))?;
    write_reward_check(model, eval_data, &directory.join("reward_check.json"))?;
    let json = serde_json::to_value(record).map_err(|e| Error::Model(e.to_string()))?;
    write_json(&directory.join(TRAINING_RECORD), &json)
}

/// Writes a model with LoRA adapters as a PEFT LoRA directory ([`crate::model::lora`]):
/// `adapter_config.json` (the base named by its absolute path), `adapter_model.safetensors`,
/// and qrm's `config.json` of the reward model (eval reward distribution, pad token), which
/// qrm-score reads with the merged weights.
pub fn save_lora(
    directory: &Path,
    model: &RewardModel,
    spec: &LoraSpec,
    layers: Option<&[usize]>,
    base: &Path,
) -> Result<()> {
    use crate::model::checkpoint::{head_prefix, save_f32_safetensors, save_reward_config};
    use crate::model::lora::{adapter_config, adapter_tensors, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
    fs_err::create_dir_all(directory).map_err(|e| Error::io(directory, e))?;
    let base = fs_err::canonicalize(base).map_err(|e| Error::io(base, e))?;
    let head = model.head.named_tensors(head_prefix(model.head.kind()));
    let tensors = adapter_tensors(&model.transformer, head)?;
    save_f32_safetensors(&directory.join(ADAPTER_WEIGHTS), tensors)?;
    let config = adapter_config(spec, layers, &base.display().to_string());
    write_json(&directory.join(ADAPTER_CONFIG), &config)?;
    save_reward_config(directory, &model.config, model.head.kind())
}

/// `qrm-train --merge`: the LoRA directory `lora` as a plain checkpoint in `output` (weights
/// `W + (α/r) · B A`, its `config.json`), which qrm-score and transformers load, with the
/// tokenizer, reward check and training record copied over.
pub fn merge_lora(lora: &Path, output: &Path) -> Result<()> {
    if !crate::model::lora::Adapter::is_adapter_dir(lora) {
        return Err(Error::Usage(format!(
            "--merge {}: not a LoRA directory (no adapter_config.json)",
            lora.display()
        )));
    }
    let checkpoint = Checkpoint::load(lora, &Device::Cpu, DType::F32)?;
    let model = RewardModel::from_checkpoint(&checkpoint)?;
    let partial = partial_output(output);
    model.save(&partial)?;
    for name in ["tokenizer.json", "reward_check.json", TRAINING_RECORD] {
        let from = lora.join(name);
        if from.exists() {
            let to = partial.join(name);
            fs_err::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    publish(&partial, output)
}

/// Up to four eval responses with the reward qrm computes, for
/// `tests/fixtures/check_checkpoint_transformers.py`.
fn write_reward_check(model: &TopLayers, data: &TrainData, path: &Path) -> Result<()> {
    let transformer = model.model.transformer.clone().with_kernels(Kernels::Fused);
    let mut rows = Vec::new();
    for pair in data.pairs.iter().take(2) {
        for response in [&pair.chosen, &pair.rejected] {
            let (ids, mask) = pad_right(&[response], model.device())?; // (1, L) each
            let hidden = transformer.forward(&ids, &mask)?;
            let values = model.model.head.forward(&hidden)?; // (1, L)
            let reward = last_token_values(&values, &mask)?
                .get(0)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            rows.push(serde_json::json!({"input_ids": response.input_ids, "reward": reward}));
        }
    }
    write_json(path, &serde_json::json!({ "rows": rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(question_id: &str, index: usize) -> Pair {
        Pair {
            pair_id: format!("{question_id}-{index}"),
            question_id: question_id.into(),
            ..Pair::default()
        }
    }

    #[test]
    fn split_keeps_questions_on_one_side() {
        let pairs: Vec<Pair> = (0..40).map(|i| pair(&format!("q{}", i % 10), i)).collect();
        let (train, eval) = split_by_question(pairs, 0.2, 1);
        let train_questions: BTreeSet<_> = train.iter().map(|p| p.question_id.clone()).collect();
        let eval_questions: BTreeSet<_> = eval.iter().map(|p| p.question_id.clone()).collect();
        assert_eq!(eval_questions.len(), 2); // ⌈0.2·10⌉
        assert!(train_questions.is_disjoint(&eval_questions));
        assert_eq!(train.len() + eval.len(), 40);
        assert_eq!(eval.len(), 8);
    }

    #[test]
    fn split_is_seeded() {
        let pairs: Vec<Pair> = (0..30).map(|i| pair(&format!("q{i}"), i)).collect();
        let ids = |seed| {
            let (_, eval) = split_by_question(pairs.clone(), 0.1, seed);
            eval.into_iter().map(|p| p.pair_id).collect::<Vec<_>>()
        };
        assert_eq!(ids(3), ids(3));
        assert_ne!(ids(3), ids(4));
    }

    use crate::train::trainer::{gradient_norms, ContrastiveForm, GoalStrategy, LogRow, Objective};
    use rand::Rng;

    fn tiny(name: &str) -> Checkpoint {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        Checkpoint::load(path, &Device::Cpu, DType::F32).unwrap()
    }

    /// Random pairs over the tiny models' 100-token vocabulary, EOS 2 last.
    fn random_pairs(count: usize, seed: u64) -> Vec<EncodedPair> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let response = |prompt: &[u32], rng: &mut ChaCha8Rng| {
            let mut input_ids = prompt.to_vec();
            input_ids.extend((0..rng.random_range(4..10)).map(|_| rng.random_range(3..100)));
            input_ids.push(2);
            Encoded {
                input_ids,
                response_start: prompt.len(),
                ..Encoded::default()
            }
        };
        (0..count)
            .map(|_| {
                let prompt: Vec<u32> = (0..3).map(|_| rng.random_range(3..100)).collect();
                EncodedPair {
                    chosen: response(&prompt, &mut rng),
                    rejected: response(&prompt, &mut rng),
                    margin: None,
                }
            })
            .collect()
    }

    fn trunk_data(model: &TopLayers, pairs: Vec<EncodedPair>) -> TrainData {
        let trunk = model.pair_trunks(&pairs).unwrap();
        TrainData {
            pairs,
            trunk: Some(trunk),
        }
    }

    /// Trains `model` on `pairs` from tokens (no trunk) into `directory`, continuing a partial
    /// run there when `resume`, and stopping after step `stop` when given (an interrupted run).
    fn train_until(
        model: &TopLayers,
        pairs: &[EncodedPair],
        config: &TrainConfig,
        stop: Option<usize>,
        resume: bool,
        directory: &Path,
    ) {
        let data = TrainData {
            pairs: pairs.to_vec(),
            trunk: None,
        };
        let mut stop_here = |row: &LogRow| stop.is_none_or(|last| row.step < last);
        let options = RunOptions {
            output: directory,
            resume,
            log: None,
            quiet: true,
            on_step: Some(&mut stop_here),
            identity: BTreeMap::new(),
        };
        train(model, &data, None, config, options).unwrap();
    }

    fn tiny_config(objective: Objective) -> TrainConfig {
        TrainConfig {
            objective,
            learning_rate: 1e-3,
            batch_size: 2,
            micro_batch: 2,
            max_steps: Some(4),
            positives: 4,
            negatives: 4,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn every_trainable_weight_of_the_tiny_models_gets_a_gradient() {
        // Both objectives, both heads (tiny-llama holds the MLP head, tiny-qwen2 `score`), the
        // whole model from tokens and the top layer from a cached trunk.
        for name in ["tiny-llama", "tiny-qwen2"] {
            let checkpoint = tiny(name);
            for train_layers in [None, Some(1)] {
                let model =
                    TopLayers::new(&checkpoint, HeadKind::Linear, train_layers, 0, &Device::Cpu)
                        .unwrap();
                let pairs = random_pairs(2, 1);
                let data = match train_layers {
                    Some(_) => trunk_data(&model, pairs),
                    None => TrainData { pairs, trunk: None },
                };
                for objective in [Objective::Bt, Objective::Q] {
                    let norms = gradient_norms(&model, &data, &tiny_config(objective)).unwrap();
                    assert!(
                        norms.len() >= 4,
                        "{name}: only {} trainable tensors",
                        norms.len()
                    );
                    for (weight, norm) in &norms {
                        assert!(
                            *norm > 0.0,
                            "{name} {train_layers:?} {objective:?}: {weight} has no gradient"
                        );
                    }
                    if train_layers.is_some() {
                        // Only layer 1, the final norm and the head train.
                        assert!(norms.iter().all(|(weight, _)| !weight.contains("layers.0.")
                            && !weight.contains("embed")));
                    }
                }
            }
        }
    }

    #[test]
    fn cached_trunk_losses_equal_the_full_forward() {
        let checkpoint = tiny("tiny-llama");
        let model =
            TopLayers::new(&checkpoint, HeadKind::Linear, Some(1), 0, &Device::Cpu).unwrap();
        let pairs = random_pairs(4, 2);
        let config = tiny_config(Objective::Q);
        let plain = crate::train::trainer::evaluate(
            &model,
            &TrainData {
                pairs: pairs.clone(),
                trunk: None,
            },
            &config,
        )
        .unwrap();
        let cached =
            crate::train::trainer::evaluate(&model, &trunk_data(&model, pairs), &config).unwrap();
        assert!(
            (plain.loss_bt - cached.loss_bt).abs() < 1e-5,
            "{plain:?} {cached:?}"
        );
        assert!((plain.loss_contrastive - cached.loss_contrastive).abs() < 1e-5);
        assert!((plain.reward_mean - cached.reward_mean).abs() < 1e-5);
    }

    #[test]
    fn resuming_the_tiny_model_ends_with_the_same_weights() {
        let checkpoint = tiny("tiny-qwen2");
        let mut config = tiny_config(Objective::Q);
        config.contrastive = ContrastiveForm::Paper;
        config.goal_strategy = GoalStrategy::Avg;
        let pairs = random_pairs(8, 3);
        let weights = |model: &TopLayers| -> Vec<Vec<f32>> {
            model
                .trainable_variables()
                .iter()
                .map(|(_, var)| var.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect()
        };
        let run = |stop: Option<usize>, resume: bool, directory: &Path| {
            let model =
                TopLayers::new(&checkpoint, HeadKind::Linear, None, 0, &Device::Cpu).unwrap();
            train_until(&model, &pairs, &config, stop, resume, directory);
            weights(&model)
        };
        let straight = run(None, false, tempfile::tempdir().unwrap().path());
        let interrupted = tempfile::tempdir().unwrap();
        let halfway = run(Some(2), false, interrupted.path());
        assert_ne!(halfway, straight);
        assert_eq!(run(None, true, interrupted.path()), straight);
    }

    #[test]
    fn a_resumed_lora_run_with_dropout_ends_with_the_weights_of_a_straight_one() {
        use crate::model::lora::{LoraSpec, LoraTarget};
        let checkpoint = tiny("tiny-qwen2");
        let config = tiny_config(Objective::Q);
        let pairs = random_pairs(8, 4);
        let spec = |dropout| LoraSpec {
            rank: 2,
            alpha: 4.0,
            dropout,
            targets: vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
        };
        let run = |dropout: f64, stop: Option<usize>, resume: bool, directory: &Path| {
            let lora = spec(dropout);
            let model = TopLayers::with_lora(
                &checkpoint,
                HeadKind::Linear,
                None,
                Some(&lora),
                0,
                &Device::Cpu,
            )
            .unwrap();
            train_until(&model, &pairs, &config, stop, resume, directory);
            model
                .trainable_variables()
                .iter()
                .map(|(name, var)| {
                    let values = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    (name.clone(), values)
                })
                .collect::<Vec<_>>()
        };
        let straight = run(0.3, None, false, tempfile::tempdir().unwrap().path());
        // 2 layers × 3 projections × (A, B), the final norm and the head.
        assert_eq!(straight.len(), 14);
        let b = straight
            .iter()
            .find(|(name, _)| name == "model.layers.0.self_attn.q_proj.lora_B.weight")
            .unwrap();
        assert!(b.1.iter().any(|&v| v != 0.0), "B never left zero");
        // Dropout changes the run (its masks are drawn), yet the same seed draws them again.
        assert_ne!(
            run(0.0, None, false, tempfile::tempdir().unwrap().path()),
            straight
        );
        assert_eq!(
            run(0.3, None, false, tempfile::tempdir().unwrap().path()),
            straight
        );
        let interrupted = tempfile::tempdir().unwrap();
        let halfway = run(0.3, Some(2), false, interrupted.path());
        assert_ne!(halfway, straight);
        assert_eq!(run(0.3, None, true, interrupted.path()), straight);
    }

    #[test]
    fn bf16_training_follows_f32_and_resumes_from_its_f32_masters() {
        // Mixed precision on the CPU (candle widens bf16 matmuls to f32 there): the model runs
        // in bf16, the gradients the optimiser receives are f32 and point where f32's do, and the
        // resumable state holds f32 masters from which an interrupted run continues exactly.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2");
        let half = Checkpoint::load(&path, &Device::Cpu, DType::BF16).unwrap();
        let full = tiny("tiny-qwen2");
        let config = tiny_config(Objective::Q);
        let pairs = random_pairs(8, 5);
        let data = TrainData {
            pairs: pairs.clone(),
            trunk: None,
        };
        let gradients = |checkpoint: &Checkpoint| {
            let model =
                TopLayers::new(checkpoint, HeadKind::Linear, None, 0, &Device::Cpu).unwrap();
            crate::train::trainer::step_gradients(&model, &data, &config, 1).unwrap()
        };
        let (from_half, from_full) = (gradients(&half), gradients(&full));
        assert_eq!(from_half.len(), from_full.len());
        let (mut dot, mut half_norm, mut full_norm) = (0f64, 0f64, 0f64);
        for ((name, g_half), (_, g_full)) in from_half.iter().zip(&from_full) {
            assert_eq!(g_half.dtype(), DType::F32, "{name}");
            let a = g_half.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = g_full.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (x, y) in a.iter().zip(&b) {
                dot += (*x as f64) * (*y as f64);
                half_norm += (*x as f64).powi(2);
                full_norm += (*y as f64).powi(2);
            }
        }
        let cosine = dot / (half_norm.sqrt() * full_norm.sqrt());
        assert!(cosine > 0.99, "bf16 and f32 gradients: cosine {cosine}");

        let masters = |directory: &Path| {
            let file = state_directory(directory).join(crate::train::trainer::STATE_WEIGHTS);
            let mut tensors: Vec<_> = candle_core::safetensors::load(file, &Device::Cpu)
                .unwrap()
                .into_iter()
                .map(|(name, tensor)| {
                    assert_eq!(tensor.dtype(), DType::F32, "{name}");
                    (
                        name,
                        tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    )
                })
                .collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            tensors
        };
        let run = |stop: Option<usize>, resume: bool, directory: &Path| {
            let model = TopLayers::new(&half, HeadKind::Linear, None, 0, &Device::Cpu).unwrap();
            train_until(&model, &pairs, &config, stop, resume, directory);
            assert!(model
                .trainable_variables()
                .iter()
                .all(|(_, var)| var.dtype() == DType::BF16));
            masters(directory)
        };
        let straight_directory = tempfile::tempdir().unwrap();
        let straight = run(None, false, straight_directory.path());
        let interrupted = tempfile::tempdir().unwrap();
        assert_ne!(run(Some(2), false, interrupted.path()), straight);
        assert_eq!(run(None, true, interrupted.path()), straight);
        // The masters carry what bf16 rounds away: some differ from their bf16 rounding.
        let rounded_away = straight.iter().any(|(_, values)| {
            let rounded = Tensor::new(values.as_slice(), &Device::Cpu)
                .and_then(|t| {
                    t.to_dtype(DType::BF16)?
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()
                })
                .unwrap();
            &rounded != values
        });
        assert!(rounded_away, "the masters hold nothing beyond bf16");
    }

    /// The largest |a − b| over every gradient (or weight) of two runs, and the largest |a|.
    fn max_difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f32, f32) {
        assert_eq!(a.len(), b.len());
        let (mut difference, mut largest) = (0f32, 0f32);
        for ((name_a, a), (name_b, b)) in a.iter().zip(b) {
            assert_eq!(name_a, name_b);
            for (x, y) in a.iter().zip(b) {
                difference = difference.max((x - y).abs());
                largest = largest.max(x.abs());
            }
        }
        (difference, largest)
    }

    fn gradients_of(
        model: &TopLayers,
        data: &TrainData,
        config: &TrainConfig,
        checkpoint_layers: bool,
    ) -> Vec<(String, Vec<f32>)> {
        let config = TrainConfig {
            checkpoint_layers,
            ..config.clone()
        };
        crate::train::trainer::step_gradients(model, data, &config, 1)
            .unwrap()
            .into_iter()
            .map(|(name, g)| (name, g.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    }

    fn lora_spec(dropout: f64) -> crate::model::lora::LoraSpec {
        crate::model::lora::LoraSpec {
            rank: 2,
            alpha: 4.0,
            dropout,
            targets: crate::model::lora::LoraTarget::ALL.to_vec(),
        }
    }

    #[test]
    fn checkpointed_layers_give_the_gradients_of_the_whole_graph() {
        // Step 1 of 2-pair steps in micro-batches of one pair: the gradients are sums over two
        // backward passes, and under dropout the second micro-batch's masks follow the first's.
        for name in ["tiny-llama", "tiny-qwen2"] {
            let checkpoint = tiny(name);
            // (label, --train-layers, cached trunk, LoRA dropout, objective)
            let cases = [
                (
                    "BT, top layer from a cached trunk",
                    Some(1),
                    true,
                    None,
                    Objective::Bt,
                ),
                (
                    "BT, every layer from tokens",
                    None,
                    false,
                    None,
                    Objective::Bt,
                ),
                (
                    "BT, top layer from tokens",
                    Some(1),
                    false,
                    None,
                    Objective::Bt,
                ),
                (
                    "Q, every layer from tokens",
                    None,
                    false,
                    None,
                    Objective::Q,
                ),
                (
                    "Q, top layer from a cached trunk",
                    Some(1),
                    true,
                    None,
                    Objective::Q,
                ),
                (
                    "Q, LoRA with dropout, every layer",
                    None,
                    false,
                    Some(0.3),
                    Objective::Q,
                ),
                (
                    "BT, LoRA with dropout, top layer",
                    Some(1),
                    true,
                    Some(0.3),
                    Objective::Bt,
                ),
            ];
            for (label, train_layers, cached, dropout, objective) in cases {
                if dropout.is_some() && name == "tiny-llama" {
                    continue; // its MLP head takes no adapters (PEFT's SEQ_CLS has `score`)
                }
                let lora = dropout.map(lora_spec);
                let model = TopLayers::with_lora(
                    &checkpoint,
                    HeadKind::Linear,
                    train_layers,
                    lora.as_ref(),
                    0,
                    &Device::Cpu,
                )
                .unwrap();
                // B starts at zero, where A gets no gradient: move it off.
                for (weight, var) in model.trainable_variables() {
                    if weight.contains("lora_B") {
                        let moved = Tensor::randn(0f32, 0.1, var.shape(), &Device::Cpu).unwrap();
                        var.set(&moved).unwrap();
                    }
                }
                let pairs = random_pairs(4, 5);
                let data = match cached {
                    true => trunk_data(&model, pairs),
                    false => TrainData { pairs, trunk: None },
                };
                let config = TrainConfig {
                    micro_batch: 1,
                    ..tiny_config(objective)
                };
                let whole = gradients_of(&model, &data, &config, false);
                let checkpointed = gradients_of(&model, &data, &config, true);
                let (difference, largest) = max_difference(&checkpointed, &whole);
                assert!(
                    difference < 1e-6,
                    "{name}, {label}: gradients differ by {difference} (largest {largest})"
                );
                assert!(largest > 1e-3, "{name}, {label}: no gradient ({largest})");
                // Every trainable tensor gets a gradient, the layers' included.
                for (weight, values) in &checkpointed {
                    assert!(
                        values.iter().any(|&v| v != 0.0),
                        "{name}, {label}: {weight} has no gradient"
                    );
                }
            }
        }
    }

    #[test]
    fn a_checkpointed_run_ends_with_the_weights_of_a_plain_one_and_resumes_either_way() {
        let checkpoint = tiny("tiny-qwen2");
        let pairs = random_pairs(8, 6);
        let run = |lora: Option<f64>,
                   checkpoint_layers: bool,
                   stop: Option<usize>,
                   resume: bool,
                   directory: &Path| {
            let spec = lora.map(lora_spec);
            let model = TopLayers::with_lora(
                &checkpoint,
                HeadKind::Linear,
                None,
                spec.as_ref(),
                0,
                &Device::Cpu,
            )
            .unwrap();
            let config = TrainConfig {
                checkpoint_layers,
                micro_batch: 1,
                ..tiny_config(Objective::Q)
            };
            train_until(&model, &pairs, &config, stop, resume, directory);
            model
                .trainable_variables()
                .iter()
                .map(|(name, var)| {
                    (
                        name.clone(),
                        var.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let fresh = || tempfile::tempdir().unwrap();
        for lora in [None, Some(0.3)] {
            let plain = run(lora, false, None, false, fresh().path());
            let checkpointed = run(lora, true, None, false, fresh().path());
            let (difference, _) = max_difference(&checkpointed, &plain);
            assert!(
                difference < 1e-6,
                "{lora:?}: weights differ by {difference}"
            );
            // Half a run without checkpointing, resumed with it: the flag is no part of the
            // run's identity, and the weights are those of the straight run.
            let interrupted = fresh();
            let halfway = run(lora, false, Some(2), false, interrupted.path());
            assert!(max_difference(&halfway, &plain).0 > 1e-4);
            let resumed = run(lora, true, None, true, interrupted.path());
            let (difference, _) = max_difference(&resumed, &plain);
            assert!(
                difference < 1e-6,
                "{lora:?}: resumed weights differ by {difference}"
            );
        }
    }
}

//! LoRA adapters (Hu et al. 2021) on the transformer's projections, read and written in PEFT's
//! layout, so an adapter `qrm-train --lora-rank` writes loads in
//! `peft.PeftModel.from_pretrained` and one PEFT saved loads in qrm.
//!
//! A projection `y = x Wᵀ + b` with an adapter computes `y + (α/r) · dropout(x) Aᵀ Bᵀ`, with A
//! (r, in) drawn Kaiming-uniform as PEFT does (a = √5: U(−1/√in, 1/√in)), B (out, r) zeros, so
//! training starts from the base model. The delta lives in [`Linear`] itself ([`LoraDelta`]),
//! so every projection path (both kernel sets, the cached prompt) applies it. The base weights
//! stay plain tensors; A and B are the `Var`s, and beside them the final norm and the value head
//! train fully (PEFT's `modules_to_save`: `model.norm` and `score`, to which PEFT's SEQ_CLS task
//! adds `classifier`). Dropout, as in PEFT, applies to the adapter's input only, in training only
//! ([`LoraDropout`], its masks drawn from the run's seed and the step).
//!
//! A LoRA directory holds `adapter_config.json` (peft_type LORA, task_type SEQ_CLS, r,
//! lora_alpha, lora_dropout, target_modules, layers_to_transform, modules_to_save,
//! base_model_name_or_path, bias "none", and PEFT 0.21's other keys at their defaults) and
//! `adapter_model.safetensors` (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`,
//! `...lora_B.weight`, `base_model.model.model.norm.weight`, `base_model.model.score.weight`).
//! [`Adapter::merge_into`] folds one into its base checkpoint (`W + (α/r) · B A`), which is how
//! [`crate::model::Checkpoint::load`] reads a LoRA directory: qrm-score and qrm-embed score it
//! as the merged model.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::checkpoint::Checkpoint;
use crate::model::transformer::Transformer;
use crate::{Error, Result};

/// The adapter's configuration file in a LoRA directory.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's weights in a LoRA directory.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The prefix PEFT puts before the wrapped model's own names.
const PEFT_PREFIX: &str = "base_model.model.";
/// What trains fully beside the adapters, as PEFT's `modules_to_save` of a SEQ_CLS model
/// (`classifier` and `score` are the ones PEFT adds for the task).
pub const MODULES_TO_SAVE: [&str; 3] = ["model.norm", "classifier", "score"];

/// A projection an adapter can sit on, named as PEFT's `target_modules` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    /// Every projection of a layer (`all-linear`).
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The module's name (`q_proj`, ..., `down_proj`).
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// `q` or `q_proj`, ..., `down` or `down_proj`.
    fn from_name(name: &str) -> Option<LoraTarget> {
        let short = name.strip_suffix("_proj").unwrap_or(name);
        LoraTarget::ALL
            .into_iter()
            .find(|target| target.module().strip_suffix("_proj") == Some(short))
    }
}

/// The projections of `--lora-targets`, sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraTargets(pub Vec<LoraTarget>);

/// The `--lora-targets` value parser: `all-linear`, or a comma-separated list of `q,k,v,o,gate,
/// up,down` (or PEFT's `q_proj`, ...).
pub fn parse_targets(text: &str) -> std::result::Result<LoraTargets, String> {
    if text.trim() == "all-linear" {
        return Ok(LoraTargets(LoraTarget::ALL.to_vec()));
    }
    let mut targets = BTreeSet::new();
    for part in text.split(',').map(str::trim) {
        let target = LoraTarget::from_name(part).ok_or_else(|| {
            format!("`{part}` is not a projection: use q,k,v,o,gate,up,down (or q_proj, ...) or all-linear")
        })?;
        targets.insert(target);
    }
    Ok(LoraTargets(targets.into_iter().collect()))
}

/// The `--lora-alpha` value parser: a positive number.
pub fn parse_alpha(text: &str) -> std::result::Result<f64, String> {
    let alpha: f64 = text.parse().map_err(|e| format!("not a number: {e}"))?;
    if alpha.is_finite() && alpha > 0.0 {
        Ok(alpha)
    } else {
        Err(format!("{alpha} is not a positive number"))
    }
}

/// The `--lora-dropout` value parser: a probability in [0, 1).
pub fn parse_dropout(text: &str) -> std::result::Result<f64, String> {
    let p: f64 = text.parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is outside [0, 1)"))
    }
}

/// What `qrm-train --lora-rank` trains: rank, α, dropout and the projections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Sorted, no repeats.
    pub targets: Vec<LoraTarget>,
}

impl Serialize for LoraTarget {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.module())
    }
}

impl<'de> Deserialize<'de> for LoraTarget {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        LoraTarget::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("`{name}` is not a projection")))
    }
}

impl LoraSpec {
    /// The adapter's scale α/r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// One line for the resume identity and logs: every setting that changes the run.
    pub fn describe(&self) -> String {
        let targets: Vec<&str> = self.targets.iter().map(|t| t.module()).collect();
        format!(
            "r={} alpha={} dropout={} targets={}",
            self.rank,
            self.alpha,
            self.dropout,
            targets.join(",")
        )
    }

    /// Whether the projection named `layers.{i}.{self_attn|mlp}.{module}` is a target.
    fn targets_linear(&self, name: &str) -> bool {
        let module = name.rsplit('.').next().unwrap_or("");
        self.targets.iter().any(|t| t.module() == module)
    }
}

/// The term a LoRA adapter adds to a projection: `scale · dropout(x) Aᵀ Bᵀ`.
#[derive(Debug, Clone)]
pub struct LoraDelta {
    /// (r, in).
    pub a: Tensor,
    /// (out, r).
    pub b: Tensor,
    pub scale: f64,
    /// Shared by every adapter of a model; `None` when the model never drops out.
    pub dropout: Option<Arc<LoraDropout>>,
}

impl LoraDelta {
    /// The adapter's output for the flattened input.
    ///
    /// # Shapes
    /// `xs` (rows, in) → (rows, out).
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let xs = match &self.dropout {
            Some(dropout) => dropout.apply(xs)?,
            None => xs.clone(),
        };
        // The scale on the (rows, r) factor: one pass over r columns, not over `out`.
        let low = (xs.matmul(&self.a.t()?)? * self.scale)?; // (rows, r)
        low.matmul(&self.b.t()?) // (rows, out)
    }

    /// `weight + scale · B A`, (out, in).
    pub fn merge(&self, weight: &Tensor) -> Result<Tensor> {
        let delta = (self.b.matmul(&self.a)? * self.scale)?.to_dtype(weight.dtype())?;
        Ok((weight + delta)?)
    }
}

/// The dropout of a model's adapters: off until [`LoraDropout::begin_step`], whose masks come
/// from a generator seeded by (seed, step), so a resumed run draws the masks of a straight one;
/// [`LoraDropout::stop`] turns it off (evaluation, inference).
#[derive(Debug)]
pub struct LoraDropout {
    p: f64,
    seed: u64,
    rng: Mutex<Option<ChaCha8Rng>>,
}

impl LoraDropout {
    pub fn new(p: f64, seed: u64) -> Arc<LoraDropout> {
        Arc::new(LoraDropout {
            p,
            seed,
            rng: Mutex::new(None),
        })
    }

    /// Drops out in the forwards that follow, with the masks of training step `step`.
    pub fn begin_step(&self, step: usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x6c6f_7261_u64);
        rng.set_stream(step as u64);
        if let Ok(mut slot) = self.rng.lock() {
            *slot = Some(rng);
        }
    }

    /// No dropout in the forwards that follow.
    pub fn stop(&self) {
        if let Ok(mut slot) = self.rng.lock() {
            *slot = None;
        }
    }

    /// Where the masks stand now (the generator's position, or off).
    pub fn state(&self) -> DropoutState {
        DropoutState(self.rng.lock().ok().and_then(|slot| slot.clone()))
    }

    /// Returns to a [`LoraDropout::state`]: the forwards that follow draw the masks drawn after
    /// it, so gradient checkpointing's recomputed layer sees the masks of its first forward.
    pub fn restore(&self, state: &DropoutState) {
        if let Ok(mut slot) = self.rng.lock() {
            *slot = state.0.clone();
        }
    }

    /// `xs` with each element zeroed with probability p and the rest scaled by 1/(1 − p), or
    /// `xs` itself when stopped.
    fn apply(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut slot = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("the dropout's lock is poisoned".into()))?;
        let Some(rng) = slot.as_mut() else {
            return Ok(xs.clone());
        };
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let mask: Vec<f32> = (0..xs.elem_count())
            .map(|_| {
                if rng.random::<f64>() < self.p {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }
}

/// A position of [`LoraDropout`]'s mask generator (or dropout off), to return to.
#[derive(Debug, Clone)]
pub struct DropoutState(Option<ChaCha8Rng>);

/// Adds adapters to the target projections of `layers` (A Kaiming-uniform from `seed`, drawn
/// projection after projection in [`Transformer::linears`] order; B zeros) and returns the new
/// `Var`s named below the backbone (`layers.{i}.self_attn.q_proj.lora_A.weight`, ...).
pub fn add_adapters(
    transformer: &mut Transformer,
    spec: &LoraSpec,
    layers: std::ops::Range<usize>,
    seed: u64,
    dropout: Option<Arc<LoraDropout>>,
) -> Result<Vec<(String, Var)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(0x6c6f7261); // apart from the head's draws from the same seed
    let mut vars = Vec::new();
    for (name, linear) in transformer.linears_mut() {
        let in_layers = layer_index(&name).is_some_and(|layer| layers.contains(&layer));
        if !in_layers || !spec.targets_linear(&name) {
            continue;
        }
        let weight = linear.weight();
        let (out_dim, in_dim) = weight.dims2()?;
        let (device, dtype) = (weight.device().clone(), weight.dtype());
        let bound = 1.0 / (in_dim as f64).sqrt();
        let values: Vec<f32> = (0..spec.rank * in_dim)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Var::from_tensor(
            &Tensor::from_vec(values, (spec.rank, in_dim), &device)?.to_dtype(dtype)?,
        )?;
        let b = Var::zeros((out_dim, spec.rank), dtype, &device)?;
        linear.set_lora(LoraDelta {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: spec.scale(),
            dropout: dropout.clone(),
        });
        vars.push((format!("{name}.lora_A.weight"), a));
        vars.push((format!("{name}.lora_B.weight"), b));
    }
    if vars.is_empty() {
        return Err(Error::Usage(format!(
            "--lora-targets: no projection of layers {layers:?} is a target"
        )));
    }
    Ok(vars)
}

/// The layer index of `layers.{i}....` (with any prefix before `layers.`).
fn layer_index(name: &str) -> Option<usize> {
    let rest = &name[name.find("layers.")? + "layers.".len()..];
    rest.split('.').next()?.parse().ok()
}

/// PEFT's name of a tensor named `name` in a `*ForSequenceClassification` checkpoint
/// (`model.layers.0...`, `model.norm.weight`, `score.weight`).
pub fn peft_name(name: &str) -> String {
    format!("{PEFT_PREFIX}{name}")
}

/// `adapter_config.json` as PEFT 0.21.2 writes it for a SEQ_CLS LoRA of `spec` on `layers`
/// (`None`: every layer) of the model at `base`.
pub fn adapter_config(spec: &LoraSpec, layers: Option<&[usize]>, base: &str) -> serde_json::Value {
    let targets: Vec<&str> = spec.targets.iter().map(|t| t.module()).collect();
    serde_json::json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": base,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": layers,
        "loftq_config": {},
        // PEFT writes an integer α as an integer.
        "lora_alpha": if spec.alpha.fract() == 0.0 && spec.alpha < 1e15 {
            serde_json::json!(spec.alpha as u64)
        } else {
            serde_json::json!(spec.alpha)
        },
        "lora_bias": false,
        "lora_dropout": spec.dropout,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": MODULES_TO_SAVE,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": spec.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "target_parameters": null,
        "task_type": "SEQ_CLS",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null
    })
}

/// The PEFT tensors of a model with adapters: every adapter's A and B, the final norm and the
/// head (`head` already named as in the checkpoint, e.g. `score.weight`).
pub fn adapter_tensors(
    transformer: &Transformer,
    head: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for (name, linear) in transformer.linears() {
        if let Some(lora) = linear.lora() {
            out.push((
                peft_name(&format!("model.{name}.lora_A.weight")),
                lora.a.clone(),
            ));
            out.push((
                peft_name(&format!("model.{name}.lora_B.weight")),
                lora.b.clone(),
            ));
        }
    }
    let norm = transformer
        .named_tensors()?
        .into_iter()
        .find(|(name, _)| name == "norm.weight")
        .map(|(_, tensor)| tensor)
        .ok_or_else(|| Error::Model("the transformer has no final norm".into()))?;
    out.push((peft_name("model.norm.weight"), norm));
    out.extend(head.into_iter().map(|(name, t)| (peft_name(&name), t)));
    Ok(out)
}

/// The parts of `adapter_config.json` qrm reads.
#[derive(Debug, Clone, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: HashMap<String, serde_json::Value>,
}

/// A LoRA directory read into memory: its config and tensors (PEFT's names).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: AdapterConfig,
    pub tensors: HashMap<String, Tensor>,
    pub dir: PathBuf,
}

impl Adapter {
    /// True for a directory holding `adapter_config.json`.
    pub fn is_adapter_dir(path: &Path) -> bool {
        path.is_dir() && path.join(ADAPTER_CONFIG).is_file()
    }

    /// Reads `dir`'s config and weights onto `device` in `dtype`; refuses what qrm does not
    /// apply (another PEFT type, DoRA, rsLoRA, per-module ranks, transposed weights).
    pub fn read(dir: &Path, device: &Device, dtype: DType) -> Result<Adapter> {
        let path = dir.join(ADAPTER_CONFIG);
        let text = fs_err::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let config: AdapterConfig = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.clone(),
            message: format!("not a PEFT adapter config: {e}"),
        })?;
        let unsupported = [
            (config.peft_type != "LORA", "a peft_type other than LORA"),
            (config.use_dora, "use_dora"),
            (config.use_rslora, "use_rslora"),
            (config.fan_in_fan_out, "fan_in_fan_out"),
            (!config.rank_pattern.is_empty(), "a rank_pattern"),
            (!config.alpha_pattern.is_empty(), "an alpha_pattern"),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(bad, _)| *bad) {
            return Err(Error::Format {
                path,
                message: format!("qrm applies plain LoRA only; this adapter has {what}"),
            });
        }
        let weights = dir.join(ADAPTER_WEIGHTS);
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| Error::Format {
                path: weights.clone(),
                message: format!("cannot read safetensors: {e}"),
            })?
            .into_iter()
            .map(|(name, tensor)| Ok((name, tensor.to_dtype(dtype)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Adapter {
            config,
            tensors,
            dir: dir.to_owned(),
        })
    }

    /// The base model `base_model_name_or_path` names: an absolute path, or a relative one
    /// taken from the adapter directory when it exists there, else from the working directory.
    pub fn base_path(&self) -> Result<PathBuf> {
        let named = self
            .config
            .base_model_name_or_path
            .as_deref()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| Error::Format {
                path: self.dir.join(ADAPTER_CONFIG),
                message: "no base_model_name_or_path: qrm cannot tell which model it adapts".into(),
            })?;
        let path = PathBuf::from(named);
        if path.is_absolute() {
            return Ok(path);
        }
        let beside = self.dir.join(&path);
        Ok(if beside.exists() { beside } else { path })
    }

    /// The adapter's scale α/r.
    pub fn scale(&self) -> f64 {
        self.config.lora_alpha / self.config.r as f64
    }

    /// Folds the adapter into `checkpoint`: each adapted weight becomes `W + (α/r) · B A`, and
    /// the trained modules (`model.norm`, `score`) replace the base's; a `score` head replaces
    /// whatever head the base had.
    pub fn merge_into(&self, checkpoint: &mut Checkpoint) -> Result<()> {
        self.update(checkpoint, true)
    }

    /// Only the trained modules of [`Adapter::merge_into`] (`model.norm`, `score`), the
    /// adapted weights left as they are: the base a model with the adapters applied (not
    /// merged) starts from.
    pub fn replace_saved_modules(&self, checkpoint: &mut Checkpoint) -> Result<()> {
        self.update(checkpoint, false)
    }

    fn update(&self, checkpoint: &mut Checkpoint, merge: bool) -> Result<()> {
        let local = |name: &str| -> Option<String> {
            let name = name.strip_prefix(PEFT_PREFIX)?;
            let name = match (
                checkpoint.backbone_prefix.as_str(),
                name.strip_prefix("model."),
            ) {
                ("", Some(inner)) => inner.to_owned(),
                _ => name.to_owned(),
            };
            Some(name)
        };
        let error = |message: String| Error::Format {
            path: self.dir.join(ADAPTER_WEIGHTS),
            message,
        };
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let mut head = Vec::new();
        let mut merged = 0;
        for peft in names {
            let name = local(peft).ok_or_else(|| error(format!("`{peft}` is not a PEFT name")))?;
            let tensor = &self.tensors[peft];
            if let Some(stem) = name.strip_suffix(".lora_A.weight") {
                merged += 1;
                if !merge {
                    continue;
                }
                let b_name = format!("{}.lora_B.weight", peft.trim_end_matches(".lora_A.weight"));
                let b = self
                    .tensors
                    .get(&b_name)
                    .ok_or_else(|| error(format!("`{peft}` has no `{b_name}` beside it")))?;
                let weight_name = format!("{stem}.weight");
                let weight = checkpoint
                    .tensors
                    .get(&weight_name)
                    .ok_or_else(|| error(format!("the base model has no `{weight_name}`")))?;
                let delta = LoraDelta {
                    a: tensor.clone(),
                    b: b.clone(),
                    scale: self.scale(),
                    dropout: None,
                };
                let updated = delta
                    .merge(weight)
                    .map_err(|e| error(format!("{peft}: {e}")))?;
                checkpoint.tensors.insert(weight_name, updated);
            } else if name.ends_with(".lora_B.weight") {
                continue; // merged with its A
            } else if name.starts_with("score.") {
                head.push((name, tensor.clone()));
            } else {
                if !checkpoint.tensors.contains_key(&name) {
                    return Err(error(format!(
                        "`{peft}` replaces nothing in the base model"
                    )));
                }
                checkpoint.tensors.insert(name, tensor.clone());
            }
        }
        if merged == 0 {
            return Err(error("no lora_A weight in the adapter".into()));
        }
        if !head.is_empty() {
            if let Some(layout) = checkpoint.head_layout() {
                let prefix = format!("{}.", layout.prefix);
                checkpoint
                    .tensors
                    .retain(|name, _| !name.starts_with(&prefix));
            }
            checkpoint.tensors.extend(head);
            checkpoint.config.value_head_prefix = Some("score".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_short_and_peft_names_and_all_linear() {
        use LoraTarget::*;
        assert_eq!(parse_targets("v,q,q_proj").unwrap().0, vec![Q, V]);
        assert_eq!(
            parse_targets("all-linear").unwrap().0,
            LoraTarget::ALL.to_vec()
        );
        assert_eq!(parse_targets("gate_proj,down").unwrap().0, vec![Gate, Down]);
        assert!(parse_alpha("0").is_err());
        assert!(parse_targets("q,lm_head").unwrap_err().contains("lm_head"));
        assert!(parse_dropout("1").is_err());
        assert_eq!(parse_dropout("0.1").unwrap(), 0.1);
    }

    #[test]
    fn dropout_is_off_until_a_step_and_seeded_by_the_step() {
        let dropout = LoraDropout::new(0.5, 7);
        let xs = Tensor::ones((4, 64), DType::F32, &Device::Cpu).unwrap();
        let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(dropout.apply(&xs).unwrap()), values(xs.clone()));
        dropout.begin_step(3);
        let first = values(dropout.apply(&xs).unwrap());
        // Kept elements are scaled by 1/(1 − 0.5) = 2; about half are dropped.
        assert!(first.iter().all(|&v| v == 0.0 || v == 2.0));
        let dropped = first.iter().filter(|&&v| v == 0.0).count();
        assert!((80..176).contains(&dropped), "{dropped} of 256 dropped");
        dropout.begin_step(3);
        assert_eq!(values(dropout.apply(&xs).unwrap()), first);
        dropout.begin_step(4);
        assert_ne!(values(dropout.apply(&xs).unwrap()), first);
        dropout.stop();
        assert_eq!(values(dropout.apply(&xs).unwrap()), values(xs));
    }
}

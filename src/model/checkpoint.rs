//! Model weights in memory, named as in Hugging Face checkpoints, from a model directory
//! (`config.json` + `*.safetensors`, sharded with `model.safetensors.index.json` or not) or from a
//! llama.cpp GGUF file (dequantised on load, see [`crate::model::gguf`]); and qrm's own
//! checkpoints written back in a layout transformers loads.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::model::config::ModelConfig;
use crate::model::head::{HeadKind, HeadLayout, ValueHead};
use crate::model::lora::{Adapter, ADAPTER_CONFIG};
use crate::pipeline::io::{file_sha256, key_of};
use crate::{Error, Result};

/// Where `scripts/install-model.sh` puts the default model (SmolLM2-135M-Instruct, Q4_1 GGUF),
/// relative to the project root.
pub const DEFAULT_MODEL: &str = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A checkpoint's configuration and every tensor it holds (language-model heads excepted),
/// on one device in one dtype.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub config: ModelConfig,
    pub tensors: HashMap<String, Tensor>,
    /// The prefix of the backbone's weights: `model` for `*ForCausalLM` and
    /// `*ForSequenceClassification` checkpoints, empty for a bare `*Model`.
    pub backbone_prefix: String,
    /// The file or directory it came from.
    pub source: PathBuf,
}

/// True for weights a reward model never uses (the language-model head).
fn unused(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with("rotary_emb.inv_freq")
}

/// The safetensors files of a model directory: the shards named by
/// `model.safetensors.index.json` when there is one, else every `*.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = fs_err::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: index.clone(),
            message: format!("not JSON: {e}"),
        })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Format {
                path: index.clone(),
                message: "no `weight_map` object".into(),
            })?;
        let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut files = Vec::new();
    for entry in fs_err::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::Format {
            path: dir.to_owned(),
            message: "no *.safetensors file in the model directory".into(),
        });
    }
    Ok(files)
}

impl Checkpoint {
    /// Loads a model directory or a `.gguf` file onto `device` in `dtype`.
    /// A LoRA directory ([`crate::model::lora`]: `adapter_config.json`) loads as its base model
    /// with the adapter merged in, configured by the directory's own `config.json` when it has
    /// one (qrm-train writes it).
    pub fn load(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let path = path.as_ref();
        if Adapter::is_adapter_dir(path) {
            return Self::load_adapter_dir(path, device, dtype);
        }
        if path.is_dir() {
            Self::load_dir(path, device, dtype)
        } else if path.extension().is_some_and(|e| e == "gguf") {
            let gguf = crate::model::gguf::GgufModel::read(path, device)?;
            let tensors = gguf
                .tensors
                .into_iter()
                .map(|(name, tensor)| Ok((name, tensor.to_dtype(dtype)?)))
                .collect::<Result<HashMap<_, _>>>()?;
            Self::from_tensors(gguf.config, tensors, path)
        } else {
            Err(Error::Format {
                path: path.to_owned(),
                message: "expected a model directory (config.json + *.safetensors) or a .gguf file"
                    .into(),
            })
        }
    }

    fn load_adapter_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let adapter = Adapter::read(dir, device, dtype)?;
        let base = adapter.base_path()?;
        if Adapter::is_adapter_dir(&base) {
            return Err(Error::Format {
                path: dir.join(ADAPTER_CONFIG),
                message: format!("the base model {} is itself an adapter", base.display()),
            });
        }
        let mut checkpoint = Self::load(&base, device, dtype)?;
        let own_config = dir.join("config.json");
        if own_config.exists() {
            checkpoint.config = ModelConfig::from_file(own_config)?;
        }
        adapter.merge_into(&mut checkpoint)?;
        checkpoint.source = dir.to_owned();
        Ok(checkpoint)
    }

    fn load_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = ModelConfig::from_file(dir.join("config.json"))?;
        let mut tensors = HashMap::new();
        for file in safetensors_files(dir)? {
            let loaded =
                candle_core::safetensors::load(&file, device).map_err(|e| Error::Format {
                    path: file.clone(),
                    message: format!("cannot read safetensors: {e}"),
                })?;
            for (name, tensor) in loaded {
                if !unused(&name) {
                    tensors.insert(name, tensor.to_dtype(dtype)?);
                }
            }
        }
        Self::from_tensors(config, tensors, dir)
    }

    /// A checkpoint from tensors already in memory (names as in Hugging Face checkpoints).
    pub fn from_tensors(
        config: ModelConfig,
        tensors: HashMap<String, Tensor>,
        source: impl Into<PathBuf>,
    ) -> Result<Self> {
        let source = source.into();
        let backbone_prefix = if tensors.contains_key("model.embed_tokens.weight") {
            "model"
        } else if tensors.contains_key("embed_tokens.weight") {
            ""
        } else {
            return Err(Error::Format {
                path: source,
                message: "no `model.embed_tokens.weight` (nor `embed_tokens.weight`): not a llama/qwen2 checkpoint"
                    .into(),
            });
        };
        Ok(Self {
            config,
            tensors,
            backbone_prefix: backbone_prefix.to_owned(),
            source,
        })
    }

    /// The reward head the checkpoint holds, if any.
    pub fn head_layout(&self) -> Option<HeadLayout> {
        HeadLayout::detect(
            self.tensors.keys().map(String::as_str),
            self.config.value_head_prefix.as_deref(),
        )
    }

    /// A `VarBuilder` over the checkpoint's tensors (for inference: nothing is trainable).
    pub fn var_builder(&self) -> VarBuilder<'static> {
        let (device, dtype) = self.device_dtype();
        VarBuilder::from_tensors(self.tensors.clone(), dtype, &device)
    }

    /// The backbone's `VarBuilder` (below [`Checkpoint::backbone_prefix`]).
    pub fn backbone(vb: &VarBuilder<'static>, prefix: &str) -> VarBuilder<'static> {
        if prefix.is_empty() {
            vb.clone()
        } else {
            vb.pp(prefix)
        }
    }

    fn device_dtype(&self) -> (Device, DType) {
        self.tensors
            .values()
            .next()
            .map(|t| (t.device().clone(), t.dtype()))
            .unwrap_or((Device::Cpu, DType::F32))
    }

    /// A `VarBuilder` for training: the tensors whose name satisfies `trainable` become `Var`s in
    /// `varmap` (so an optimiser over `varmap.all_vars()` updates them and `varmap` saves them);
    /// the others stay constant. Names the checkpoint lacks (a new head) are created in
    /// `varmap` with the initialisation their builder asks for.
    pub fn trainable_var_builder(
        &self,
        varmap: &VarMap,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<VarBuilder<'static>> {
        let (device, dtype) = self.device_dtype();
        let mut frozen = HashMap::new();
        {
            let mut vars = varmap
                .data()
                .lock()
                .map_err(|_| Error::Model("the VarMap's lock is poisoned".into()))?;
            for (name, tensor) in &self.tensors {
                if trainable(name) {
                    vars.insert(name.clone(), Var::from_tensor(tensor)?);
                } else {
                    frozen.insert(name.clone(), tensor.clone());
                }
            }
        }
        let backend = TrainableBackend {
            frozen: Arc::new(frozen),
            varmap: varmap.clone(),
        };
        Ok(VarBuilder::from_backend(Box::new(backend), dtype, device))
    }
}

/// Constant tensors first, then the `VarMap` (which creates what it lacks).
struct TrainableBackend {
    frozen: Arc<HashMap<String, Tensor>>,
    varmap: VarMap,
}

impl candle_nn::var_builder::SimpleBackend for TrainableBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.frozen.get(name) {
            Some(tensor) => {
                if tensor.shape() != &shape {
                    return Err(candle_core::Error::UnexpectedShape {
                        msg: format!("shape mismatch for {name}"),
                        expected: shape,
                        got: tensor.shape().clone(),
                    }
                    .bt());
                }
                tensor.to_dtype(dtype)?.to_device(device)
            }
            None => self.varmap.get(shape, name, init, dtype, device),
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.frozen.get(name) {
            Some(tensor) => tensor.to_dtype(dtype)?.to_device(device),
            None => {
                let vars =
                    self.varmap.data().lock().map_err(|_| {
                        candle_core::Error::Msg("the VarMap's lock is poisoned".into())
                    })?;
                match vars.get(name) {
                    Some(var) => var.as_tensor().to_dtype(dtype)?.to_device(device),
                    None => Err(candle_core::Error::CannotFindTensor {
                        path: name.to_owned(),
                    }
                    .bt()),
                }
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.frozen.contains_key(name)
            || self
                .varmap
                .data()
                .lock()
                .map(|vars| vars.contains_key(name))
                .unwrap_or(false)
    }
}

/// Writes a reward model as a directory transformers and OpenRLHF load: `config.json` and
/// `model.safetensors` with the backbone below `model.` and the head below its layout's prefix
/// (`score` for a linear head, so `*ForSequenceClassification` reads it; `value_head` for the
/// MLP, the paper's layout). Writes are atomic per file.
///
/// `backbone` holds the backbone's tensors named below the backbone (`layers.0...`,
/// `embed_tokens.weight`, `norm.weight`).
pub fn save_reward_model(
    dir: &Path,
    config: &ModelConfig,
    backbone: &HashMap<String, Tensor>,
    head: &ValueHead,
) -> Result<()> {
    fs_err::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let prefix = head_prefix(head.kind());
    let mut tensors: Vec<(String, Tensor)> = backbone
        .iter()
        .map(|(name, tensor)| (format!("model.{name}"), tensor.clone()))
        .collect();
    tensors.extend(head.named_tensors(prefix));
    save_f32_safetensors(&dir.join("model.safetensors"), tensors)?;
    save_reward_config(dir, config, head.kind())
}

/// The name prefix qrm writes a head under: `score` for a linear head (what
/// `*ForSequenceClassification` reads), `value_head` for the MLP (the paper's layout).
pub fn head_prefix(kind: HeadKind) -> &'static str {
    match kind {
        HeadKind::Linear => "score",
        HeadKind::Mlp => "value_head",
    }
}

/// Writes tensors as float32 safetensors (`format: pt` metadata, as PyTorch's writers),
/// atomically.
pub fn save_f32_safetensors(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let views = tensors
        .into_iter()
        .map(|(name, tensor)| Ok((name, F32View::new(&tensor)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut metadata = HashMap::new();
    metadata.insert("format".to_owned(), "pt".to_owned());
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| Error::Model(format!("cannot serialise safetensors: {e}")))?;
    crate::pipeline::io::write_atomic(path, |w| {
        std::io::Write::write_all(w, &bytes).map_err(|e| Error::io(path, e))
    })
}

/// Writes the `config.json` of a reward model with a `kind` head (a `*ForSequenceClassification`
/// architecture, one label, qrm's head kind), atomically.
pub fn save_reward_config(dir: &Path, config: &ModelConfig, kind: HeadKind) -> Result<()> {
    let prefix = head_prefix(kind);
    let mut config = config.clone();
    let family = config.family().map_err(Error::Model)?;
    let base = match family {
        crate::model::config::Family::Llama => "Llama",
        crate::model::config::Family::Qwen2 => "Qwen2",
    };
    config.architectures = vec![format!("{base}ForSequenceClassification")];
    config.value_head_prefix = Some(prefix.to_owned());
    config.extra.insert("num_labels".into(), 1.into());
    config.extra.remove("id2label");
    config.extra.remove("label2id");
    config
        .extra
        .insert("qrm_head".into(), kind.to_string().into());
    // Keep the top-level `rope_theta` (transformers 4) equal to `rope_parameters` (transformers 5).
    config.rope_theta = config.rope_base();

    let json = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Model(format!("cannot serialise config: {e}")))?;
    let config_path = dir.join("config.json");
    crate::pipeline::io::write_atomic(&config_path, |w| {
        std::io::Write::write_all(w, json.as_bytes()).map_err(|e| Error::io(&config_path, e))
    })?;
    Ok(())
}

/// Writes `tokenizer.json` into a model directory (atomically), so the directory is complete for
/// transformers and for [`crate::model::gguf::load_tokenizer`].
pub fn save_tokenizer(dir: &Path, tokenizer: &tokenizers::Tokenizer) -> Result<()> {
    let path = dir.join("tokenizer.json");
    let json = tokenizer
        .to_string(false)
        .map_err(|e| Error::Model(format!("cannot serialise the tokenizer: {e}")))?;
    crate::pipeline::io::write_atomic(&path, |w| {
        std::io::Write::write_all(w, json.as_bytes()).map_err(|e| Error::io(&path, e))
    })
}

/// A tensor's values as little-endian f32 bytes, for the `safetensors` writer.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32View {
    fn new(tensor: &Tensor) -> Result<Self> {
        let values = tensor
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self {
            shape: tensor.dims().to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }
}

impl safetensors::View for F32View {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Hex sha256 identifying a model: of the file itself, or for a directory of its `config.json`
/// and `*.safetensors` files' hashes, in name order; for a LoRA directory, of those, its
/// `adapter_config.json` and its base model's identity.
pub fn model_sha256(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return file_sha256(path);
    }
    if Adapter::is_adapter_dir(path) {
        let text = fs_err::read_to_string(path.join(ADAPTER_CONFIG))
            .map_err(|e| Error::io(path.join(ADAPTER_CONFIG), e))?;
        let config: crate::model::lora::AdapterConfig =
            serde_json::from_str(&text).map_err(|e| Error::Format {
                path: path.join(ADAPTER_CONFIG),
                message: format!("not a PEFT adapter config: {e}"),
            })?;
        let adapter = Adapter {
            config,
            tensors: HashMap::new(),
            dir: path.to_owned(),
        };
        let base = model_sha256(&adapter.base_path()?)?;
        let own = directory_sha256(path, |name| name == ADAPTER_CONFIG)?;
        return Ok(key_of(&[&own, &base]));
    }
    directory_sha256(path, |_| false)
}

/// The sha256 of a directory's `config.json` and `*.safetensors` (and the names `also` picks)
/// files' hashes, in name order.
fn directory_sha256(path: &Path, also: impl Fn(&str) -> bool) -> Result<String> {
    let mut names: Vec<PathBuf> = fs_err::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|file| {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name == "config.json" || name.ends_with(".safetensors") || also(name)
        })
        .collect();
    names.sort();
    let hashes = names
        .iter()
        .map(|file| file_sha256(file))
        .collect::<Result<Vec<_>>>()?;
    Ok(key_of(
        &hashes.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
}

//! llama.cpp GGUF files: dequantised to dense tensors with Hugging Face names, the config from the
//! metadata, and the tokenizer rebuilt from `tokenizer.ggml.*`.
//!
//! llama.cpp's converter permutes the rows of llama's Q and K projections (so that its rotary
//! kernel can rotate adjacent pairs); [`unpermute_rows`] undoes that so the weights fit the
//! Hugging Face rotate-half layout this crate's forward uses. Qwen2 files are not permuted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tokenizers::Tokenizer;

use crate::model::config::{Family, ModelConfig};
use crate::{Error, Result};

/// A GGUF model read into memory.
#[derive(Debug)]
pub struct GgufModel {
    pub config: ModelConfig,
    /// f32 tensors on the requested device, Hugging Face names (`model.layers.0.self_attn.q_proj.weight`).
    pub tensors: HashMap<String, Tensor>,
}

fn format_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// The GGUF header (metadata and tensor directory) of `path`.
pub fn read_content(path: &Path) -> Result<Content> {
    let mut file = fs_err::File::open(path).map_err(|e| Error::io(path, e))?;
    Content::read(&mut file).map_err(|e| format_error(path, format!("not a GGUF file: {e}")))
}

struct Metadata<'a> {
    path: &'a Path,
    values: &'a HashMap<String, Value>,
}

impl Metadata<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.values
            .get(key)
            .ok_or_else(|| format_error(self.path, format!("GGUF metadata lacks `{key}`")))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let value = self.get(key)?;
        let number = match value {
            Value::U8(v) => *v as u64,
            Value::U16(v) => *v as u64,
            Value::U32(v) => *v as u64,
            Value::U64(v) => *v,
            Value::I8(v) => *v as u64,
            Value::I16(v) => *v as u64,
            Value::I32(v) => *v as u64,
            Value::I64(v) => *v as u64,
            other => {
                return Err(format_error(
                    self.path,
                    format!("GGUF metadata `{key}` is {other:?}, expected an integer"),
                ))
            }
        };
        Ok(number as usize)
    }

    fn f64(&self, key: &str) -> Result<f64> {
        match self.get(key)? {
            Value::F32(v) => Ok(*v as f64),
            Value::F64(v) => Ok(*v),
            other => Err(format_error(
                self.path,
                format!("GGUF metadata `{key}` is {other:?}, expected a float"),
            )),
        }
    }

    fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| format_error(self.path, format!("GGUF metadata `{key}`: {e}")))
    }

    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let values = self
            .get(key)?
            .to_vec()
            .map_err(|e| format_error(self.path, format!("GGUF metadata `{key}`: {e}")))?;
        values
            .iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|e| format_error(self.path, format!("GGUF metadata `{key}`: {e}")))
            })
            .collect()
    }

    fn integers(&self, key: &str) -> Result<Vec<i64>> {
        let values = self
            .get(key)?
            .to_vec()
            .map_err(|e| format_error(self.path, format!("GGUF metadata `{key}`: {e}")))?;
        values
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x as i64),
                Value::U32(x) => Ok(*x as i64),
                Value::I64(x) => Ok(*x),
                Value::U8(x) => Ok(*x as i64),
                Value::I8(x) => Ok(*x as i64),
                other => Err(format_error(
                    self.path,
                    format!("GGUF metadata `{key}` holds {other:?}, expected integers"),
                )),
            })
            .collect()
    }

    fn optional_bool(&self, key: &str) -> Option<bool> {
        self.values.get(key).and_then(|v| v.to_bool().ok())
    }

    fn optional_u32(&self, key: &str) -> Option<u32> {
        self.values.get(key).and_then(|v| v.to_u32().ok())
    }
}

/// The Hugging Face config equivalent to a GGUF file's metadata.
pub fn config_from_metadata(path: &Path, content: &Content) -> Result<ModelConfig> {
    let meta = Metadata {
        path,
        values: &content.metadata,
    };
    let arch = meta.string("general.architecture")?;
    let (model_type, architecture) = match arch {
        "llama" => ("llama", "LlamaForCausalLM"),
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        other => {
            return Err(format_error(
                path,
                format!("GGUF architecture `{other}` is not supported (llama, qwen2)"),
            ))
        }
    };
    let key = |name: &str| format!("{arch}.{name}");
    let hidden_size = meta.usize(&key("embedding_length"))?;
    let num_attention_heads = meta.usize(&key("attention.head_count"))?;
    let num_key_value_heads = match meta.usize(&key("attention.head_count_kv")) {
        Ok(n) => n,
        Err(_) => num_attention_heads,
    };
    let vocab_size = match meta.usize(&key("vocab_size")) {
        Ok(n) => n,
        Err(_) => meta.strings("tokenizer.ggml.tokens")?.len(),
    };
    let head_dim = meta.usize(&key("attention.key_length")).ok();
    let tie = !content.tensor_infos.contains_key("output.weight");
    let config = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": hidden_size,
        "intermediate_size": meta.usize(&key("feed_forward_length"))?,
        "num_hidden_layers": meta.usize(&key("block_count"))?,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "head_dim": head_dim,
        "rms_norm_eps": meta.f64(&key("attention.layer_norm_rms_epsilon"))?,
        "rope_theta": meta.f64(&key("rope.freq_base")).unwrap_or(10_000.0),
        "max_position_embeddings": meta.usize(&key("context_length")).unwrap_or(4096),
        "vocab_size": vocab_size,
        "tie_word_embeddings": tie,
        "hidden_act": "silu",
        "bos_token_id": meta.optional_u32("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.optional_u32("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.optional_u32("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",
    });
    let config: ModelConfig = serde_json::from_value(config)
        .map_err(|e| format_error(path, format!("GGUF metadata gives no valid config: {e}")))?;
    config.validate().map_err(|m| format_error(path, m))?;
    Ok(config)
}

/// The Hugging Face name of a llama.cpp tensor name (`None` for tensors a reward model does not
/// use, such as `output.weight`, the language-model head).
pub fn hf_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let module = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{kind}"))
}

/// Undoes llama.cpp's row permutation of a Q or K projection (weight (rows, cols) or bias (rows)):
/// `w.reshape(n_head, rows/n_head/2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn unpermute_rows(tensor: &Tensor, num_heads: usize) -> Result<Tensor> {
    let dims = tensor.dims().to_vec();
    let rows = dims[0];
    let cols: usize = dims[1..].iter().product();
    if rows % (2 * num_heads) != 0 {
        return Err(Error::Model(format!(
            "cannot unpermute {rows} rows over {num_heads} heads"
        )));
    }
    let out = tensor
        .reshape((num_heads, rows / num_heads / 2, 2, cols))?
        .transpose(1, 2)? // (heads, 2, rows/heads/2, cols)
        .contiguous()?
        .reshape(dims)?;
    Ok(out)
}

impl GgufModel {
    /// Reads and dequantises every tensor of `path` to f32 on `device`.
    pub fn read(path: &Path, device: &Device) -> Result<Self> {
        let mut file = fs_err::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = Content::read(&mut file)
            .map_err(|e| format_error(path, format!("not a GGUF file: {e}")))?;
        let config = config_from_metadata(path, &content)?;
        let permuted = config.family() == Ok(Family::Llama);
        let mut tensors = HashMap::new();
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let Some(hf) = hf_name(name) else { continue };
            let quantized = content
                .tensor(&mut file, name, device)
                .map_err(|e| format_error(path, format!("tensor `{name}`: {e}")))?;
            let mut tensor = quantized.dequantize(device)?.to_dtype(DType::F32)?;
            if permuted && hf.contains("self_attn.q_proj") {
                tensor = unpermute_rows(&tensor, config.num_attention_heads)?;
            } else if permuted && hf.contains("self_attn.k_proj") {
                tensor = unpermute_rows(&tensor, config.num_kv_heads())?;
            }
            tensors.insert(hf, tensor);
        }
        Ok(Self { config, tensors })
    }
}

/// The pre-tokenizer (in `tokenizer.json` form) llama.cpp's `tokenizer.ggml.pre` names.
fn pre_tokenizer(path: &Path, pre: &str) -> Result<serde_json::Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "gpt-2" | "gpt2" | "default" => byte_level(true),
        "llama-bpe" | "llama3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]})
        }
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
        other => {
            return Err(format_error(
                path,
                format!(
                "GGUF pre-tokenizer `{other}` is not supported (smollm, gpt2, llama-bpe, qwen2)"
            ),
            ))
        }
    })
}

/// Rebuilds the Hugging Face tokenizer of a GGUF file from its `tokenizer.ggml.*` metadata
/// (byte-level BPE models, `tokenizer.ggml.model = gpt2`): vocabulary, merges, control tokens
/// as special added tokens, and the pre-tokenizer `tokenizer.ggml.pre` names.
pub fn tokenizer_from_gguf(path: &Path) -> Result<Tokenizer> {
    let content = read_content(path)?;
    tokenizer_from_content(path, &content)
}

fn tokenizer_from_content(path: &Path, content: &Content) -> Result<Tokenizer> {
    let meta = Metadata {
        path,
        values: &content.metadata,
    };
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(format_error(
            path,
            format!(
                "GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            ),
        ));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let types = meta
        .integers("tokenizer.ggml.token_type")
        .unwrap_or_else(|_| vec![1; tokens.len()]);
    let pre = meta
        .string("tokenizer.ggml.pre")
        .unwrap_or("default")
        .to_owned();

    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| ((*token).to_owned(), json!(id)))
        .collect();
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => Err(format_error(path, format!("GGUF merge `{m}` has no space"))),
        })
        .collect::<Result<_>>()?;
    // llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    let added: Vec<serde_json::Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &kind)| kind == 3 || kind == 4)
        .map(|(id, &kind)| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": kind == 4, "special": kind == 3})
        })
        .collect();
    let add_bos = meta
        .optional_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(false);
    let post_processor = match (add_bos, meta.optional_u32("tokenizer.ggml.bos_token_id")) {
        (true, Some(bos)) => {
            let bos_token = tokens.get(bos as usize).copied().unwrap_or_default();
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"SpecialToken": {"id": bos_token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {bos_token: {"id": bos_token, "ids": [bos], "tokens": [bos_token]}}})
        }
        _ => {
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
        }
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(path, &pre)?,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let text = tokenizer.to_string();
    text.parse::<Tokenizer>().map_err(|e| {
        format_error(
            path,
            format!("cannot build the tokenizer from GGUF metadata: {e}"),
        )
    })
}

/// The tokenizer of a model: `tokenizer.json` in a model directory, or rebuilt from a `.gguf`.
pub fn load_tokenizer(model: &Path) -> Result<Tokenizer> {
    if model.is_dir() {
        let file: PathBuf = model.join("tokenizer.json");
        Tokenizer::from_file(&file)
            .map_err(|e| format_error(&file, format!("cannot read the tokenizer: {e}")))
    } else {
        tokenizer_from_gguf(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_map_to_hugging_face_names() {
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight").unwrap(),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("output.weight"), None);
    }

    #[test]
    fn unpermute_undoes_llama_cpp_permute() {
        // llama.cpp's convert: w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols).
        // Two heads of 4 rows: head rows [a0 a1 b0 b1] (halves a, b) become [a0 b0 a1 b1].
        let rows: Vec<f32> = (0..8).map(|r| r as f32).collect();
        let hf = Tensor::from_vec(rows, (8, 1), &Device::Cpu).unwrap();
        let permuted = hf
            .reshape((2, 2, 2, 1))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((8, 1))
            .unwrap();
        assert_eq!(
            permuted.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 2., 1., 3., 4., 6., 5., 7.]
        );
        let back = unpermute_rows(&permuted, 2).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 2., 3., 4., 5., 6., 7.]
        );
    }
}

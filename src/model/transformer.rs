//! The decoder-only transformer (llama and qwen2 families) that returns the final hidden state of
//! every token, for right-padded batches.
//!
//! candle-transformers' models return last-position logits and keep their layers private, so qrm
//! owns this forward. Weight names equal the Hugging Face checkpoint names (`model.layers.{i}...`
//! below the prefix the caller's `VarBuilder` carries), so `vb.pp("model")` on a
//! `*ForCausalLM` or `*ForSequenceClassification` checkpoint finds them.
//!
//! Two kernel sets compute the same function: [`Kernels::Fused`] uses candle-nn's fused
//! rms-norm, softmax and rotary kernels, and on the CPU in f32 qrm's own causal softmax (fused
//! attention from [`cpu_kernels::FUSED_ATTENTION_MIN_LEN`] tokens) and SiLU
//! ([`crate::model::cpu_kernels`]) (fast, inference only: they have no backward pass, and
//! gradients through them silently stop, candle issue #2168); [`Kernels::Differentiable`] writes
//! the same operations as compositions of differentiable tensor ops, for training.
//!
//! A [`KvCache`] holds every layer's keys and values (rotary applied) of a prefix, so a later
//! forward continues it: [`Transformer::prefill`] runs unpadded rows and returns their cache
//! (a prompt once, or one more token for incremental decoding), and
//! [`Transformer::forward_with_prefix`] runs right-padded rows that all continue one cached
//! prefix (the samples of one shared prompt). Positions continue after the prefix (rotary
//! offset) and every query sees the whole prefix, so the hidden states equal those of the full
//! sequences (tests below, to 1e-5).

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Device, Layout, Module, Shape, Tensor, D,
};
use candle_nn::{Embedding, VarBuilder};

use crate::model::config::ModelConfig;
use crate::model::cpu_kernels;
use crate::model::lora::LoraDelta;
use crate::{Error, Result};

/// Which implementation of rms-norm, softmax and rotary embedding the forward uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// candle-nn's fused kernels: fastest, but no gradient flows through them.
    #[default]
    Fused,
    /// Compositions of differentiable ops: use whenever a backward pass follows.
    Differentiable,
}

/// A dense layer `y = x Wᵀ (+ b)` with the weight in PyTorch's `(out, in)` layout, plus, when
/// it carries a LoRA adapter, the adapter's `scale · dropout(x) Aᵀ Bᵀ` ([`LoraDelta`]): every
/// projection path (both kernel sets, the cached prefix) goes through this one forward.
///
/// Unlike `candle_nn::Linear` it flattens leading dimensions into one matmul rather than
/// broadcasting the weight over the batch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraDelta>,
}

impl Linear {
    /// Loads `weight` (out, in) and, when `bias`, `bias` (out) below `vb`.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            lora: None,
        })
    }

    /// A layer from its weight (out, in) and optional bias (out).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    /// Adds (or replaces) the layer's LoRA adapter; the weight itself stays as it is.
    pub fn set_lora(&mut self, lora: LoraDelta) {
        self.lora = Some(lora);
    }

    /// The layer's LoRA adapter, when it has one.
    pub fn lora(&self) -> Option<&LoraDelta> {
        self.lora.as_ref()
    }

    /// The weight, (out, in).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The weight with the LoRA adapter merged in, `W + scale · B A` (the weight itself
    /// without one), (out, in).
    pub fn merged_weight(&self) -> Result<Tensor> {
        match &self.lora {
            Some(lora) => lora.merge(&self.weight),
            None => Ok(self.weight.clone()),
        }
    }

    /// The bias, (out), when there is one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dims = xs.dims().to_vec();
        let (last, leading) = dims.split_last().ok_or_else(|| {
            candle_core::Error::Msg("linear: input must have at least one dimension".into())
        })?;
        let rows: usize = leading.iter().product();
        let xs = xs.reshape((rows, *last))?; // (rows, in)
        let ys = if xs.track_op() && !self.weight.track_op() {
            // A frozen weight under a graph (LoRA, layers above a trained one): no gradient
            // for the weight itself.
            xs.apply_op2(&self.weight.t()?, FrozenMatmul)? // (rows, out)
        } else {
            xs.matmul(&self.weight.t()?)? // (rows, out)
        };
        let ys = match &self.bias {
            Some(bias) => ys.broadcast_add(bias)?,
            None => ys,
        };
        let ys = match &self.lora {
            Some(lora) => (ys + lora.forward(&xs)?)?,
            None => ys,
        };
        let mut out_dims = leading.to_vec();
        out_dims.push(self.weight.dim(0)?);
        ys.reshape(out_dims)
    }
}

/// `x · Wᵀ` for a weight that does not train: the forward is candle's matmul, the backward
/// gives the gradient of `x` only. candle's own matmul backward computes the gradient of both
/// operands whether they train or not, so under LoRA every frozen projection paid a full-size
/// weight-gradient matmul (a third of its backward work) and kept that gradient until the
/// backward pass ended.
///
/// # Shapes
/// `x` (rows, in), `Wᵀ` (in, out) → (rows, out).
struct FrozenMatmul;

impl FrozenMatmul {
    fn dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (rows, inner) = l1.shape().dims2()?;
        let (inner2, out) = l2.shape().dims2()?;
        if inner != inner2 {
            candle_core::bail!("frozen matmul: ({rows}, {inner}) · ({inner2}, {out})");
        }
        Ok((rows, inner, out))
    }
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inner, out) = Self::dims(l1, l2)?;
        let ys = s1.matmul(s2, (1, rows, out, inner), l1, l2)?;
        Ok((ys, Shape::from((rows, out))))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, inner, out) = Self::dims(l1, l2)?;
        let ys = s1.matmul(s2, (1, rows, out, inner), l1, l2)?;
        Ok((ys, Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        _xs: &Tensor,
        weight_t: &Tensor,
        _ys: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(&weight_t.t()?)?), None))
    }
}

/// Root-mean-square norm `x / sqrt(mean(x²) + eps) · w`, computed in f32 for half inputs.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, xs: &Tensor, kernels: Kernels) -> Result<Tensor> {
        Ok(match kernels {
            Kernels::Fused => candle_nn::ops::rms_norm(xs, &self.weight, self.eps)?,
            Kernels::Differentiable => candle_nn::ops::rms_norm_slow(xs, &self.weight, self.eps)?,
        })
    }
}

/// Every layer's keys and values of a prefix that later forwards continue, and the prefix's
/// length. Made by [`Transformer::prefill`] from unpadded rows.
///
/// # Shapes
/// Per layer keys and values (batch, kv_heads, len, head_size), rotary applied at positions
/// `0..len`.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
}

impl KvCache {
    /// Tokens in the prefix (every row has all of them: no padding).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a cache of no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows of the cache: 1 for a shared prompt, which continues into any batch.
    pub fn batch(&self) -> Result<usize> {
        match self.layers.first() {
            Some((keys, _)) => Ok(keys.dim(0)?),
            None => Ok(0),
        }
    }
}

/// What every layer of one forward shares: the attention mask and the rotary tables.
struct Prepared {
    /// Real tokens in each batch row, not counting the cached prefix.
    lengths: Vec<usize>,
    /// Cached tokens before this forward's (0 without a cache).
    prefix: usize,
    /// (batch, 1, seq_len, prefix + seq_len), 0 where a query may attend, the dtype's minimum
    /// elsewhere; `None` when qrm's CPU kernels (causal softmax or fused attention) apply the
    /// mask from `lengths` themselves.
    mask: Option<Tensor>,
    /// (seq_len, head_size / 2), at positions `prefix..prefix + seq_len`.
    cos: Tensor,
    /// (seq_len, head_size / 2).
    sin: Tensor,
}

/// The mask and rotary tables of one batch for [`Transformer::run_layer`] (from
/// [`Transformer::layer_context`]).
pub struct LayerContext(Prepared);

/// Whether the forward uses qrm's CPU kernels ([`cpu_kernels`]): fused kernels, f32, CPU.
fn uses_cpu_kernels(kernels: Kernels, device: &Device, dtype: DType) -> bool {
    kernels == Kernels::Fused && device.is_cpu() && dtype == DType::F32
}

/// Attention weights from raw scores: the mask applied, then a softmax over the keys.
///
/// # Shapes
/// `scores` (batch, heads, seq_len, prefix + seq_len) → the same shape.
fn attention_weights(scores: &Tensor, prepared: &Prepared, kernels: Kernels) -> Result<Tensor> {
    let Some(mask) = &prepared.mask else {
        return cpu_kernels::causal_softmax(
            &scores.contiguous()?,
            &prepared.lengths,
            prepared.prefix,
        );
    };
    let scores = scores.broadcast_add(mask)?;
    let dtype = scores.dtype();
    // Softmax in f32 for half inputs.
    let scores = scores.to_dtype(DType::F32)?;
    let weights = match kernels {
        Kernels::Fused => candle_nn::ops::softmax_last_dim(&scores)?,
        Kernels::Differentiable => candle_nn::ops::softmax(&scores, D::Minus1)?,
    };
    Ok(weights.to_dtype(dtype)?)
}

/// Rotary embedding in the Hugging Face (non-interleaved, rotate-half) layout.
///
/// # Shapes
/// `xs` (batch, heads, seq_len, head_size); `cos`, `sin` (seq_len, head_size / 2).
fn rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor, kernels: Kernels) -> Result<Tensor> {
    Ok(match kernels {
        Kernels::Fused => candle_nn::rotary_emb::rope(&xs.contiguous()?, cos, sin)?,
        Kernels::Differentiable => {
            // x·cos + rotate_half(x)·sin, rotate_half([x1, x2]) = [-x2, x1].
            let half = xs.dim(D::Minus1)? / 2;
            let cos = Tensor::cat(&[cos, cos], D::Minus1)?; // (seq_len, head_size)
            let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
            let x1 = xs.narrow(D::Minus1, 0, half)?;
            let x2 = xs.narrow(D::Minus1, half, half)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            (xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?
        }
    })
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_size: usize,
}

impl Attention {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let head_size = cfg.head_size();
        let num_heads = cfg.num_attention_heads;
        let num_kv_heads = cfg.num_kv_heads();
        let qkv_bias = cfg.qkv_bias();
        Ok(Self {
            q_proj: Linear::new(hidden, num_heads * head_size, qkv_bias, vb.pp("q_proj"))?,
            k_proj: Linear::new(hidden, num_kv_heads * head_size, qkv_bias, vb.pp("k_proj"))?,
            v_proj: Linear::new(hidden, num_kv_heads * head_size, qkv_bias, vb.pp("v_proj"))?,
            o_proj: Linear::new(num_heads * head_size, hidden, cfg.o_bias(), vb.pp("o_proj"))?,
            num_heads,
            num_kv_heads,
            head_size,
        })
    }

    /// The attention output and the keys and values it attended to (`past`'s, then this
    /// forward's), for a caller that keeps them as a cache.
    ///
    /// # Shapes
    /// `xs` (batch, seq_len, hidden); `past` keys and values (1 or batch, kv_heads, prefix,
    /// head_size) → (batch, seq_len, hidden) and keys, values (batch, kv_heads, prefix +
    /// seq_len, head_size).
    fn forward(
        &self,
        xs: &Tensor,
        prepared: &Prepared,
        kernels: Kernels,
        past: Option<&(Tensor, Tensor)>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let (batch, seq_len, _hidden) = xs.dims3()?;
        let q = self
            .q_proj
            .forward(xs)?
            .reshape((batch, seq_len, self.num_heads, self.head_size))?
            .transpose(1, 2)?; // (batch, heads, seq_len, head_size)
        let k = self
            .k_proj
            .forward(xs)?
            .reshape((batch, seq_len, self.num_kv_heads, self.head_size))?
            .transpose(1, 2)?; // (batch, kv_heads, seq_len, head_size)
        let v = self
            .v_proj
            .forward(xs)?
            .reshape((batch, seq_len, self.num_kv_heads, self.head_size))?
            .transpose(1, 2)?
            .contiguous()?; // (batch, kv_heads, seq_len, head_size)
        let q = rotary(&q, &prepared.cos, &prepared.sin, kernels)?;
        let k = rotary(&k, &prepared.cos, &prepared.sin, kernels)?;
        let (k, v) = match past {
            None => (k, v),
            Some((past_k, past_v)) => {
                // A batch-1 prefix (a shared prompt) continues into every row.
                let (_, kv_heads, prefix, head_size) = past_k.dims4()?;
                let shape = (batch, kv_heads, prefix, head_size);
                // `cat` of a broadcast leaves strides the matmul refuses: copy once.
                (
                    Tensor::cat(&[&past_k.broadcast_as(shape)?, &k], 2)?.contiguous()?,
                    Tensor::cat(&[&past_v.broadcast_as(shape)?, &v], 2)?.contiguous()?,
                )
            }
        }; // (batch, kv_heads, prefix + seq_len, head_size)
        let keys = prepared.prefix + seq_len;
        let fused = prepared.mask.is_none() && keys >= cpu_kernels::FUSED_ATTENTION_MIN_LEN;
        let context = if fused {
            // qrm's fused CPU attention: only the visible keys are scored, and no
            // (seq_len, keys) matrix is stored.
            cpu_kernels::causal_attention(
                &q,
                &k.contiguous()?,
                &v.contiguous()?,
                &prepared.lengths,
                prepared.prefix,
            )?
        } else {
            // Grouped-query attention without copying K and V: query head h uses kv head
            // h / group, so the `group` query heads of one kv head are stacked along the
            // sequence axis.
            let group = self.num_heads / self.num_kv_heads;
            let q = (q.contiguous()?.reshape((
                batch,
                self.num_kv_heads,
                group * seq_len,
                self.head_size,
            ))? * (1.0 / (self.head_size as f64).sqrt()))?; // (batch, kv_heads, group·seq_len, head_size)
            let scores = q
                .matmul(&k.t()?)? // (batch, kv_heads, group·seq_len, keys)
                .reshape((batch, self.num_heads, seq_len, keys))?;
            let weights = attention_weights(&scores, prepared, kernels)?; // (batch, heads, seq_len, keys)
            weights
                .reshape((batch, self.num_kv_heads, group * seq_len, keys))?
                .matmul(&v.contiguous()?)? // (batch, kv_heads, group·seq_len, head_size)
                .reshape((batch, self.num_heads, seq_len, self.head_size))?
        }; // (batch, heads, seq_len, head_size)
        let context = context
            .transpose(1, 2)? // (batch, seq_len, heads, head_size)
            .reshape((batch, seq_len, self.num_heads * self.head_size))?;
        Ok((self.o_proj.forward(&context)?, (k, v)))
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, inner, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Linear::new(hidden, inner, bias, vb.pp("gate_proj"))?,
            up_proj: Linear::new(hidden, inner, bias, vb.pp("up_proj"))?,
            down_proj: Linear::new(inner, hidden, bias, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, xs: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?; // (batch, seq_len, inner)
        let gate = if uses_cpu_kernels(kernels, xs.device(), xs.dtype()) {
            cpu_kernels::silu(&gate)?
        } else {
            gate.silu()?
        };
        let up = self.up_proj.forward(xs)?;
        Ok(self.down_proj.forward(&(gate * up)?)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }

    /// The layer's output and the keys and values its attention saw (see
    /// [`Attention::forward`]).
    fn forward(
        &self,
        xs: &Tensor,
        prepared: &Prepared,
        kernels: Kernels,
        past: Option<&(Tensor, Tensor)>,
    ) -> Result<(Tensor, (Tensor, Tensor))> {
        let residual = xs;
        let xs = self.input_layernorm.forward(xs, kernels)?;
        let (attended, kv) = self.self_attn.forward(&xs, prepared, kernels, past)?;
        let xs = (attended + residual)?;
        let residual = &xs;
        let ys = self.post_attention_layernorm.forward(&xs, kernels)?;
        Ok(((self.mlp.forward(&ys, kernels)? + residual)?, kv))
    }
}

/// The decoder stack: token embedding, `num_hidden_layers` pre-norm layers, final norm.
#[derive(Debug, Clone)]
pub struct Transformer {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    inverse_frequencies: Vec<f32>,
    kernels: Kernels,
    hidden_size: usize,
    dtype: DType,
    device: Device,
}

impl Transformer {
    /// Builds the stack from weights named as in Hugging Face checkpoints below `vb`
    /// (`embed_tokens`, `layers.{i}.self_attn.{q,k,v,o}_proj`, `layers.{i}.mlp.{gate,up,down}_proj`,
    /// `layers.{i}.{input,post_attention}_layernorm`, `norm`): pass `vb.pp("model")` for a
    /// `*ForCausalLM` checkpoint.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(Error::Model)?;
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            inverse_frequencies: cfg
                .rope_inverse_frequencies()
                .into_iter()
                .map(|f| f as f32)
                .collect(),
            kernels: Kernels::default(),
            hidden_size: cfg.hidden_size,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// The same model with another kernel set (weights are shared, not copied).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Switches the kernel set in place.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// The kernel set in use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Every projection, named as in a Hugging Face checkpoint below the backbone prefix
    /// (`layers.{i}.self_attn.q_proj`, ..., `layers.{i}.mlp.down_proj`), layer by layer in the
    /// order q, k, v, o, gate, up, down.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::with_capacity(7 * self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let (attn, mlp) = (&layer.self_attn, &layer.mlp);
            for (name, linear) in [
                ("self_attn.q_proj", &attn.q_proj),
                ("self_attn.k_proj", &attn.k_proj),
                ("self_attn.v_proj", &attn.v_proj),
                ("self_attn.o_proj", &attn.o_proj),
                ("mlp.gate_proj", &mlp.gate_proj),
                ("mlp.up_proj", &mlp.up_proj),
                ("mlp.down_proj", &mlp.down_proj),
            ] {
                out.push((format!("layers.{i}.{name}"), linear));
            }
        }
        out
    }

    /// [`Transformer::linears`], mutable (to add LoRA adapters).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(7 * self.layers.len());
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let (attn, mlp) = (&mut layer.self_attn, &mut layer.mlp);
            for (name, linear) in [
                ("self_attn.q_proj", &mut attn.q_proj),
                ("self_attn.k_proj", &mut attn.k_proj),
                ("self_attn.v_proj", &mut attn.v_proj),
                ("self_attn.o_proj", &mut attn.o_proj),
                ("mlp.gate_proj", &mut mlp.gate_proj),
                ("mlp.up_proj", &mut mlp.up_proj),
                ("mlp.down_proj", &mut mlp.down_proj),
            ] {
                out.push((format!("layers.{i}.{name}"), linear));
            }
        }
        out
    }

    /// Every weight, named as in a Hugging Face checkpoint below the backbone prefix
    /// (`embed_tokens.weight`, `layers.0.self_attn.q_proj.weight`, ..., `norm.weight`). The
    /// tensors are the model's own (for trained `Var`s, their current values).
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "embed_tokens.weight".to_owned(),
            self.embed_tokens.embeddings().clone(),
        )];
        for (name, layer) in self.linears() {
            out.push((format!("{name}.weight"), layer.merged_weight()?));
            if let Some(bias) = &layer.bias {
                out.push((format!("{name}.bias"), bias.clone()));
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            out.push((
                format!("layers.{i}.input_layernorm.weight"),
                layer.input_layernorm.weight.clone(),
            ));
            out.push((
                format!("layers.{i}.post_attention_layernorm.weight"),
                layer.post_attention_layernorm.weight.clone(),
            ));
        }
        out.push(("norm.weight".to_owned(), self.norm.weight.clone()));
        Ok(out)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Final hidden state (after the last norm) of every token.
    ///
    /// # Shapes
    /// `input_ids` (batch, seq_len) u32; `attention_mask` (batch, seq_len), any numeric dtype,
    /// 1 for a real token and 0 for padding, padding only at the end of a row (right padding).
    /// Returns (batch, seq_len, hidden). Positions count from 0 in every row; real tokens never
    /// attend to padding; the outputs at padded positions are meaningless.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let hidden = self.embed(input_ids)?;
        self.forward_from_layer(&hidden, attention_mask, 0)
    }

    /// Token embeddings, (batch, seq_len) u32 → (batch, seq_len, hidden).
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(input_ids)?)
    }

    /// Runs layers `first_layer..` and the final norm on the hidden state that enters
    /// `first_layer` (from [`Transformer::embed`] for 0, or from [`Transformer::run_layers`]).
    /// A trainer caches the frozen trunk's output this way and runs only the top layers.
    pub fn forward_from_layer(
        &self,
        hidden: &Tensor,
        attention_mask: &Tensor,
        first_layer: usize,
    ) -> Result<Tensor> {
        let xs = self.run_layers(hidden, attention_mask, first_layer..self.layers.len())?;
        self.norm.forward(&xs, self.kernels)
    }

    /// Runs the given layers (no final norm) on the hidden state entering `layers.start`.
    ///
    /// # Shapes
    /// `hidden` (batch, seq_len, hidden) → (batch, seq_len, hidden).
    pub fn run_layers(
        &self,
        hidden: &Tensor,
        attention_mask: &Tensor,
        layers: Range<usize>,
    ) -> Result<Tensor> {
        if layers.start > layers.end || layers.end > self.layers.len() {
            return Err(Error::Model(format!(
                "layer range {layers:?} is outside the model's {} layers",
                self.layers.len()
            )));
        }
        let (batch, seq_len, _hidden) = hidden.dims3()?;
        let prepared = self.prepare(attention_mask, batch, seq_len, 0)?;
        let mut xs = hidden.clone();
        for layer in &self.layers[layers] {
            xs = layer.forward(&xs, &prepared, self.kernels, None)?.0;
        }
        Ok(xs)
    }

    /// The attention mask and rotary tables of a right-padded batch, shared by the layers that
    /// [`Transformer::run_layer`] runs one at a time (gradient checkpointing).
    ///
    /// # Shapes
    /// `attention_mask` (batch, seq_len) right-padded 0/1.
    pub fn layer_context(&self, attention_mask: &Tensor) -> Result<LayerContext> {
        let (batch, seq_len) = attention_mask.dims2()?;
        Ok(LayerContext(self.prepare(
            attention_mask,
            batch,
            seq_len,
            0,
        )?))
    }

    /// Runs layer `index` alone on the hidden state entering it: one step of
    /// [`Transformer::run_layers`], for a trainer that checkpoints layer by layer.
    ///
    /// # Shapes
    /// `hidden` (batch, seq_len, hidden) → (batch, seq_len, hidden).
    pub fn run_layer(
        &self,
        index: usize,
        hidden: &Tensor,
        context: &LayerContext,
    ) -> Result<Tensor> {
        let layer = self.layers.get(index).ok_or_else(|| {
            Error::Model(format!(
                "layer {index} is outside the model's {} layers",
                self.layers.len()
            ))
        })?;
        Ok(layer.forward(hidden, &context.0, self.kernels, None)?.0)
    }

    /// The final norm on the last layer's output, as [`Transformer::forward_from_layer`] ends.
    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        self.norm.forward(hidden, self.kernels)
    }

    /// Final hidden states of unpadded rows that continue `past` (none: they start at position
    /// 0), and the cache of `past`'s tokens followed by theirs. A prompt run once this way is
    /// the prefix of [`Transformer::forward_with_prefix`]; one more token at a time with the
    /// last cache is incremental decoding.
    ///
    /// # Shapes
    /// `input_ids` (batch, seq_len) u32, every token real; `past` of batch 1 or `batch` →
    /// (batch, seq_len, hidden) and a cache of batch `batch` and length `past.len() + seq_len`.
    pub fn prefill(&self, input_ids: &Tensor, past: Option<&KvCache>) -> Result<(Tensor, KvCache)> {
        let (batch, seq_len) = input_ids.dims2()?;
        let mask = Tensor::ones((batch, seq_len), DType::U32, &self.device)?;
        let (hidden, layers) = self.forward_cached(input_ids, &mask, past, true)?;
        let len = past.map_or(0, KvCache::len) + seq_len;
        Ok((hidden, KvCache { layers, len }))
    }

    /// The hidden state entering layer `depth` (no final norm) for unpadded rows starting at
    /// position 0, and the keys and values of layers `0..depth`: the frozen trunk of a prompt,
    /// which [`Transformer::trunk_with_prefix`] continues. `depth` equal to the layer count
    /// gives the last layer's output before the final norm.
    ///
    /// # Shapes
    /// `input_ids` (batch, seq_len) u32, every token real → (batch, seq_len, hidden) and a
    /// cache of `depth` layers, batch `batch` and length `seq_len`.
    pub fn prefill_trunk(&self, input_ids: &Tensor, depth: usize) -> Result<(Tensor, KvCache)> {
        let (batch, seq_len) = input_ids.dims2()?;
        let mask = Tensor::ones((batch, seq_len), DType::U32, &self.device)?;
        let (hidden, layers) = self.run_cached(input_ids, &mask, None, true, depth)?;
        Ok((
            hidden,
            KvCache {
                layers,
                len: seq_len,
            },
        ))
    }

    /// The hidden state entering layer `prefix`'s depth (its layer count; no final norm) for
    /// right-padded rows that all continue the cached trunk `prefix` from
    /// [`Transformer::prefill_trunk`]: equals the rows of [`Transformer::run_layers`] over
    /// `0..depth` on the prefix followed by each row, at the row's positions.
    ///
    /// # Shapes
    /// `input_ids` (batch, seq_len) u32, `attention_mask` (batch, seq_len) right-padded 0/1;
    /// `prefix` of batch 1 or `batch` → (batch, seq_len, hidden).
    pub fn trunk_with_prefix(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        prefix: &KvCache,
    ) -> Result<Tensor> {
        let depth = prefix.layers.len();
        Ok(self
            .run_cached(input_ids, attention_mask, Some(prefix), false, depth)?
            .0)
    }

    /// Final hidden states of right-padded rows that all continue the cached `prefix`: every
    /// real token attends to the whole prefix and to the row's tokens before it, at positions
    /// `prefix.len()..`. Equals the rows of [`Transformer::forward`] on the prefix followed by
    /// each row, at the row's positions.
    ///
    /// # Shapes
    /// `input_ids` (batch, seq_len) u32, `attention_mask` (batch, seq_len) right-padded 0/1 as
    /// for [`Transformer::forward`]; `prefix` of batch 1 or `batch` → (batch, seq_len, hidden).
    pub fn forward_with_prefix(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        prefix: &KvCache,
    ) -> Result<Tensor> {
        Ok(self
            .forward_cached(input_ids, attention_mask, Some(prefix), false)?
            .0)
    }

    /// The whole stack and the final norm after an optional cached prefix; the keys and values
    /// of every layer (prefix and new tokens) when `keep`, none otherwise.
    fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        past: Option<&KvCache>,
        keep: bool,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (xs, kept) =
            self.run_cached(input_ids, attention_mask, past, keep, self.layers.len())?;
        Ok((self.norm.forward(&xs, self.kernels)?, kept))
    }

    /// Layers `0..depth` (no final norm) after an optional cached prefix of exactly `depth`
    /// layers; their keys and values when `keep`.
    fn run_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        past: Option<&KvCache>,
        keep: bool,
        depth: usize,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (batch, seq_len) = input_ids.dims2()?;
        if depth > self.layers.len() {
            return Err(Error::Model(format!(
                "a trunk of {depth} layers is deeper than the model's {}",
                self.layers.len()
            )));
        }
        if let Some(past) = past {
            let past_batch = past.batch()?;
            if past.layers.len() != depth || (past_batch != 1 && past_batch != batch) {
                return Err(Error::Model(format!(
                    "a cache of {} layers and {past_batch} rows cannot continue {batch} rows \
                     through {depth} layers of a {}-layer model",
                    past.layers.len(),
                    self.layers.len()
                )));
            }
        }
        let prefix = past.map_or(0, KvCache::len);
        let prepared = self.prepare(attention_mask, batch, seq_len, prefix)?;
        let mut xs = self.embed(input_ids)?;
        let mut kept = Vec::with_capacity(if keep { depth } else { 0 });
        for (i, layer) in self.layers[..depth].iter().enumerate() {
            let layer_past = past.map(|p| &p.layers[i]);
            let (out, kv) = layer.forward(&xs, &prepared, self.kernels, layer_past)?;
            xs = out;
            if keep {
                kept.push(kv);
            }
        }
        Ok((xs, kept))
    }

    fn prepare(
        &self,
        attention_mask: &Tensor,
        batch: usize,
        seq_len: usize,
        prefix: usize,
    ) -> Result<Prepared> {
        let lengths = attention_mask_rows(attention_mask, batch, seq_len)?;
        let mask = if uses_cpu_kernels(self.kernels, &self.device, self.dtype) {
            None
        } else {
            Some(additive_mask(&lengths, seq_len, prefix, &self.device)?.to_dtype(self.dtype)?)
        };
        let half = self.inverse_frequencies.len();
        let inverse = Tensor::from_slice(&self.inverse_frequencies, (1, half), &self.device)?;
        let positions = Tensor::arange(prefix as u32, (prefix + seq_len) as u32, &self.device)?
            .to_dtype(DType::F32)?
            .reshape((seq_len, 1))?;
        let angles = positions.broadcast_mul(&inverse)?; // (seq_len, head_size / 2)
        Ok(Prepared {
            lengths,
            prefix,
            mask,
            cos: angles.cos()?.to_dtype(self.dtype)?,
            sin: angles.sin()?.to_dtype(self.dtype)?,
        })
    }
}

/// The additive attention mask of right-padded rows after `prefix` cached keys: query i may
/// see every cached key and its own key j (key index `prefix + j`) when j <= i and key j is a
/// real token (0), otherwise not (f32's minimum). A padded query (i >= length) still sees the
/// real keys before it, so no row of the softmax is empty.
///
/// # Shapes
/// `lengths` (batch) → (batch, 1, seq_len, prefix + seq_len) f32.
pub(crate) fn additive_mask(
    lengths: &[usize],
    seq_len: usize,
    prefix: usize,
    device: &Device,
) -> Result<Tensor> {
    let keys = prefix + seq_len;
    let mut additive = vec![0f32; lengths.len() * seq_len * keys];
    for (row, length) in lengths.iter().enumerate() {
        for i in 0..seq_len {
            let start = (row * seq_len + i) * keys;
            for (j, cell) in additive[start + prefix..start + keys]
                .iter_mut()
                .enumerate()
            {
                if j > i || j >= *length {
                    *cell = f32::MIN;
                }
            }
        }
    }
    Ok(Tensor::from_vec(
        additive,
        (lengths.len(), 1, seq_len, keys),
        device,
    )?)
}

/// The number of real tokens in each row of a right-padded 0/1 mask, checked.
///
/// Every row must be ones followed by zeros, with at least one real token.
pub fn attention_mask_rows(
    attention_mask: &Tensor,
    batch: usize,
    seq_len: usize,
) -> Result<Vec<usize>> {
    let dims = attention_mask.dims();
    if dims != [batch, seq_len] {
        return Err(Error::Model(format!(
            "attention_mask has shape {dims:?}, expected [{batch}, {seq_len}]"
        )));
    }
    let rows = attention_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    rows.iter()
        .enumerate()
        .map(|(row, values)| {
            let length = values.iter().take_while(|&&v| v == 1.0).count();
            if values[length..].iter().any(|&v| v != 0.0) {
                return Err(Error::Model(format!(
                    "attention_mask row {row} is not right-padded ones then zeros: {values:?}"
                )));
            }
            if length == 0 {
                return Err(Error::Model(format!(
                    "attention_mask row {row} has no real token"
                )));
            }
            Ok(length)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Checkpoint;
    use crate::testing::{project_root, relative_diff};
    use candle_core::IndexOp;

    /// A frozen weight under a graph: the same output and input gradient as candle's matmul,
    /// and no gradient for the weight.
    #[test]
    fn a_frozen_weight_passes_the_input_gradient_and_takes_none() {
        let device = Device::Cpu;
        // W (out 2, in 3), x (rows 2, in 3).
        let weight = Tensor::new(&[[1f32, 2., 3.], [-1., 0.5, 2.]], &device).unwrap();
        let x = candle_core::Var::new(&[[0.5f32, -1., 2.], [1., 1., -0.5]], &device).unwrap();
        let linear = Linear::from_parts(weight.clone(), None);
        let ys = linear.forward(x.as_tensor()).unwrap();
        // Row 0: 0.5 − 2 + 6 = 4.5 and −0.5 − 0.5 + 4 = 3; row 1: 1 + 2 − 1.5 = 1.5 and
        // −1 + 0.5 − 1 = −1.5.
        assert_eq!(
            ys.to_vec2::<f32>().unwrap(),
            vec![vec![4.5, 3.], vec![1.5, -1.5]]
        );
        // d sum(ys ⊙ c)/dx = c · W: c = [[1, 2], [0, 1]] → row 0 [1 − 2, 2 + 1, 3 + 4] = [−1, 3, 7],
        // row 1 [−1, 0.5, 2].
        let c = Tensor::new(&[[1f32, 2.], [0., 1.]], &device).unwrap();
        let grads = (ys * &c).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![-1., 3., 7.], vec![-1., 0.5, 2.]]
        );
        assert!(
            grads.get(&weight).is_none(),
            "a gradient for the frozen weight"
        );
    }

    /// Token ids `(seed·7 + i·13) % vocab` for `len` positions, deterministic and varied.
    fn ids(len: usize, seed: usize, vocab: usize) -> Vec<u32> {
        (0..len)
            .map(|i| ((seed * 7 + i * 13 + 1) % vocab) as u32)
            .collect()
    }

    /// The hidden states of `prompt ++ row` run alone, at the row's positions.
    fn full(model: &Transformer, prompt: &[u32], row: &[u32]) -> Tensor {
        let sequence: Vec<u32> = prompt.iter().chain(row).copied().collect();
        let input = Tensor::new(sequence.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mask = Tensor::ones(input.dims(), DType::U32, &Device::Cpu).unwrap();
        model
            .forward(&input, &mask)
            .unwrap()
            .i((0, prompt.len()..))
            .unwrap()
    }

    /// Every row continued from a cached prompt (batch 1), right-padded in one batch, equals
    /// the row's part of the full sequence run alone; so does the prompt's own prefill, and
    /// one token at a time after it (incremental decoding).
    fn cached_prompt_equals_the_full_sequences(
        model: &Transformer,
        prompt_len: usize,
        lengths: &[usize],
        vocab: usize,
        tolerance: f32,
    ) {
        let prompt = ids(prompt_len, 99, vocab);
        let prompt_ids = Tensor::new(prompt.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let (prompt_hidden, cache) = model.prefill(&prompt_ids, None).unwrap();
        assert_eq!((cache.len(), cache.batch().unwrap()), (prompt_len, 1));
        let mask = Tensor::ones(prompt_ids.dims(), DType::U32, &Device::Cpu).unwrap();
        let alone = model.forward(&prompt_ids, &mask).unwrap();
        let diff = relative_diff(&prompt_hidden, &alone);
        assert!(diff < tolerance, "prefill vs forward: max |Δ| = {diff:e}");

        let rows: Vec<Vec<u32>> = lengths
            .iter()
            .enumerate()
            .map(|(r, &n)| ids(n, r, vocab))
            .collect();
        let longest = *lengths.iter().max().unwrap();
        let mut padded = Vec::new();
        let mut mask = Vec::new();
        for row in &rows {
            padded.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(longest),
            );
            mask.extend((0..longest).map(|i| u32::from(i < row.len())));
        }
        let shape = (rows.len(), longest);
        let input = Tensor::from_vec(padded, shape, &Device::Cpu).unwrap();
        let mask = Tensor::from_vec(mask, shape, &Device::Cpu).unwrap();
        let hidden = model.forward_with_prefix(&input, &mask, &cache).unwrap();
        for (r, row) in rows.iter().enumerate() {
            let expected = full(model, &prompt, row);
            let got = hidden.i((r, ..row.len())).unwrap();
            let diff = relative_diff(&got, &expected);
            assert!(diff < tolerance, "row {r}: max |Δ| = {diff:e}");
        }

        // Incremental decoding: row 0 one token at a time after the prompt's cache.
        let mut cache = cache;
        let expected = full(model, &prompt, &rows[0]);
        for (i, &token) in rows[0].iter().enumerate().take(4) {
            let input = Tensor::new(&[[token]], &Device::Cpu).unwrap();
            let (step, next) = model.prefill(&input, Some(&cache)).unwrap();
            assert_eq!(next.len(), prompt_len + i + 1);
            let diff = relative_diff(&step.i((0, 0)).unwrap(), &expected.i(i).unwrap());
            assert!(diff < tolerance, "decoding step {i}: max |Δ| = {diff:e}");
            cache = next;
        }
    }

    fn tiny(name: &str, kernels: Kernels) -> Transformer {
        let path = project_root().join("tests/fixtures").join(name);
        let checkpoint = Checkpoint::load(&path, &Device::Cpu, DType::F32).unwrap();
        let vb = checkpoint.var_builder();
        Transformer::new(
            &checkpoint.config,
            Checkpoint::backbone(&vb, &checkpoint.backbone_prefix),
        )
        .unwrap()
        .with_kernels(kernels)
    }

    #[test]
    fn a_cached_prompt_gives_the_hidden_states_of_the_full_sequence_on_the_tiny_models() {
        // Both fixtures (qwen2 has q/k/v biases), both kernel sets (the CPU kernels and the
        // additive mask), with rows of 1 to 9 tokens after a 6-token prompt, and rows long
        // enough for the fused attention (6 + 510 keys ≥ FUSED_ATTENTION_MIN_LEN).
        for name in ["tiny-llama", "tiny-qwen2"] {
            for kernels in [Kernels::Fused, Kernels::Differentiable] {
                let model = tiny(name, kernels);
                cached_prompt_equals_the_full_sequences(&model, 6, &[9, 1, 5, 9, 2], 100, 1e-5);
            }
            let model = tiny(name, Kernels::Fused);
            cached_prompt_equals_the_full_sequences(&model, 6, &[510, 300], 100, 1e-5);
        }
    }

    #[test]
    fn a_cached_prompt_gives_the_hidden_states_of_the_full_sequence_on_smollm2() {
        let Some(gguf) = crate::testing::default_model() else {
            return;
        };
        let checkpoint = Checkpoint::load(&gguf, &Device::Cpu, DType::F32).unwrap();
        let vb = checkpoint.var_builder();
        let model = Transformer::new(
            &checkpoint.config,
            Checkpoint::backbone(&vb, &checkpoint.backbone_prefix),
        )
        .unwrap();
        cached_prompt_equals_the_full_sequences(&model, 40, &[30, 7, 19], 49_152, 1e-5);
    }

    #[test]
    fn a_cache_of_another_batch_is_refused() {
        let model = tiny("tiny-llama", Kernels::Fused);
        let prompt = Tensor::new(&[[1u32, 2, 3], [4, 5, 6]], &Device::Cpu).unwrap();
        let (_, cache) = model.prefill(&prompt, None).unwrap();
        assert_eq!(cache.batch().unwrap(), 2);
        let rows = Tensor::new(&[[1u32], [2], [3]], &Device::Cpu).unwrap();
        let mask = Tensor::ones((3, 1), DType::U32, &Device::Cpu).unwrap();
        let error = model.forward_with_prefix(&rows, &mask, &cache).unwrap_err();
        assert!(
            error.to_string().contains("2 rows cannot continue 3"),
            "{error}"
        );
    }
}

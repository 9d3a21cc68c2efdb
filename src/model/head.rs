//! Reward ("value") heads: a hidden state → one scalar per token.
//!
//! Layouts read and written (names below the head's prefix):
//! - linear: `weight` (1, hidden), optional `bias` (1). The prefix is `value_head` (the paper's
//!   code and legacy OpenRLHF) or `score` (transformers/TRL `*ForSequenceClassification` and
//!   current OpenRLHF).
//! - MLP (the paper's `--value_head_strategy mlp`): `{0,2,4}.{weight,bias}` and `6.weight`,
//!   hidden → hidden/2 → hidden/2 → hidden → 1 with ReLU between.

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::model::transformer::Linear;
use crate::{Error, Result};

/// The head architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HeadKind {
    /// `Linear(hidden, 1, bias=False)`, the paper's default.
    #[default]
    Linear,
    /// The paper's 4-layer MLP.
    Mlp,
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadKind::Linear => "linear",
            HeadKind::Mlp => "mlp",
        })
    }
}

/// Where a checkpoint keeps its head: the name prefix and the architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadLayout {
    pub prefix: String,
    pub kind: HeadKind,
    /// A linear head with a bias (transformers' `score` has none; some exports add one).
    pub bias: bool,
}

impl HeadLayout {
    /// Finds the head among a checkpoint's tensor names. `preferred` (a config's
    /// `value_head_prefix`) is tried first, then `value_head` and `score`.
    pub fn detect<'a>(
        names: impl IntoIterator<Item = &'a str> + Clone,
        preferred: Option<&str>,
    ) -> Option<HeadLayout> {
        let has = |name: String| names.clone().into_iter().any(|n| n == name);
        let candidates = preferred
            .into_iter()
            .chain(["value_head", "score"])
            .collect::<Vec<_>>();
        for prefix in candidates {
            if has(format!("{prefix}.0.weight")) && has(format!("{prefix}.6.weight")) {
                return Some(HeadLayout {
                    prefix: prefix.to_owned(),
                    kind: HeadKind::Mlp,
                    bias: false,
                });
            }
            if has(format!("{prefix}.weight")) {
                return Some(HeadLayout {
                    prefix: prefix.to_owned(),
                    kind: HeadKind::Linear,
                    bias: has(format!("{prefix}.bias")),
                });
            }
        }
        None
    }
}

/// A reward head.
#[derive(Debug, Clone)]
pub enum ValueHead {
    Linear(Linear),
    /// Layers 0, 2, 4 (with bias, each followed by ReLU) and 6 (no bias).
    Mlp([Linear; 4]),
}

/// `Linear` initialised as the paper's code does: weight N(0, std), bias PyTorch's default
/// U(−1/√in, 1/√in).
fn linear(in_dim: usize, out_dim: usize, bias: bool, std: f64, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints(
        (out_dim, in_dim),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )?;
    let bias = if bias {
        let bound = 1.0 / (in_dim as f64).sqrt();
        Some(vb.get_with_hints(
            out_dim,
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?)
    } else {
        None
    };
    Ok(Linear::from_parts(weight, bias))
}

impl ValueHead {
    /// Builds a head below `vb` (e.g. `vb.pp("value_head")`): loaded when `vb` holds the weights,
    /// initialised as in the paper when `vb` is a `VarMap` without them (linear N(0, 1/(H+1));
    /// MLP layers 0 and 6 N(0, 1/(H+1)), layers 2 and 4 N(0, 1/(H/2+1))).
    pub fn new(kind: HeadKind, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_bias(kind, hidden, false, vb)
    }

    /// As [`ValueHead::new`], for a linear head that carries a bias.
    pub fn with_bias(kind: HeadKind, hidden: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let wide = 1.0 / (hidden as f64 + 1.0);
        Ok(match kind {
            HeadKind::Linear => ValueHead::Linear(linear(hidden, 1, bias, wide, vb)?),
            HeadKind::Mlp => {
                let half = hidden / 2;
                if half == 0 {
                    return Err(Error::Model(format!(
                        "MLP head needs hidden >= 2, got {hidden}"
                    )));
                }
                let narrow = 1.0 / (half as f64 + 1.0);
                ValueHead::Mlp([
                    linear(hidden, half, true, wide, vb.pp("0"))?,
                    linear(half, half, true, narrow, vb.pp("2"))?,
                    linear(half, hidden, true, narrow, vb.pp("4"))?,
                    linear(hidden, 1, false, wide, vb.pp("6"))?,
                ])
            }
        })
    }

    /// Loads the head a checkpoint's [`HeadLayout`] describes from the checkpoint's root `vb`.
    pub fn load(layout: &HeadLayout, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_bias(layout.kind, hidden, layout.bias, vb.pp(&layout.prefix))
    }

    pub fn kind(&self) -> HeadKind {
        match self {
            ValueHead::Linear(_) => HeadKind::Linear,
            ValueHead::Mlp(_) => HeadKind::Mlp,
        }
    }

    /// The head's tensors named as in the checkpoint, below `prefix`.
    pub fn named_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut push = |name: String, layer: &Linear| {
            out.push((format!("{name}.weight"), layer.weight().clone()));
            if let Some(bias) = layer.bias() {
                out.push((format!("{name}.bias"), bias.clone()));
            }
        };
        match self {
            ValueHead::Linear(layer) => push(prefix.to_owned(), layer),
            ValueHead::Mlp(layers) => {
                for (index, layer) in [0, 2, 4, 6].iter().zip(layers) {
                    push(format!("{prefix}.{index}"), layer);
                }
            }
        }
        out
    }

    /// One reward per token.
    ///
    /// # Shapes
    /// `hidden` (batch, seq_len, hidden) → (batch, seq_len).
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let rewards = match self {
            ValueHead::Linear(layer) => layer.forward(hidden)?,
            ValueHead::Mlp([first, second, third, last]) => {
                let xs = first.forward(hidden)?.relu()?; // (batch, seq_len, hidden/2)
                let xs = second.forward(&xs)?.relu()?; // (batch, seq_len, hidden/2)
                let xs = third.forward(&xs)?.relu()?; // (batch, seq_len, hidden)
                last.forward(&xs)? // (batch, seq_len, 1)
            }
        };
        Ok(rewards.squeeze(candle_core::D::Minus1)?)
    }
}

/// Redraws every tensor of a new head below `prefix` in `varmap` from a generator seeded by
/// `seed`, with the distributions of [`ValueHead::new`]: a weight of shape (out, in) from
/// N(0, 1/(in+1)) (which is the paper's 1/(H+1) and 1/(H/2+1) for each layer), a bias from
/// U(−1/√in, 1/√in). Tensors are visited in name order, so a seed fixes the head.
///
/// candle draws `Init::Randn` from an unseeded thread RNG, so without this two identical training
/// runs start from different heads.
pub fn seed_new_head(varmap: &VarMap, prefix: &str, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Model("the VarMap's lock is poisoned".into()))?;
    let mut names: Vec<&String> = data
        .keys()
        .filter(|name| name.starts_with(&format!("{prefix}.")))
        .collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let values: Vec<f32> = if let Some(stem) = name.strip_suffix(".weight") {
            let (_, in_dim) = var.dims2()?;
            let normal = Normal::new(0.0, 1.0 / (in_dim as f32 + 1.0))
                .map_err(|e| Error::Model(format!("{stem}: {e}")))?;
            (0..var.elem_count())
                .map(|_| normal.sample(&mut rng))
                .collect()
        } else if let Some(stem) = name.strip_suffix(".bias") {
            let weight = data
                .get(&format!("{stem}.weight"))
                .ok_or_else(|| Error::Model(format!("{name} has no weight beside it")))?;
            let (_, in_dim) = weight.dims2()?;
            let bound = 1.0 / (in_dim as f32).sqrt();
            let uniform = Uniform::new_inclusive(-bound, bound)
                .map_err(|e| Error::Model(format!("{name}: {e}")))?;
            (0..var.elem_count())
                .map(|_| uniform.sample(&mut rng))
                .collect()
        } else {
            return Err(Error::Model(format!("{name}: not a head weight or bias")));
        };
        let drawn = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&drawn)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn detect_finds_score_value_head_and_mlp_layouts() {
        let score = ["model.norm.weight", "score.weight"];
        assert_eq!(
            HeadLayout::detect(score, None),
            Some(HeadLayout {
                prefix: "score".into(),
                kind: HeadKind::Linear,
                bias: false
            })
        );
        let legacy = ["value_head.weight", "value_head.bias"];
        let found = HeadLayout::detect(legacy, None).unwrap();
        assert_eq!(
            (found.prefix.as_str(), found.kind, found.bias),
            ("value_head", HeadKind::Linear, true)
        );
        let mlp = [
            "value_head.0.weight",
            "value_head.0.bias",
            "value_head.6.weight",
        ];
        assert_eq!(HeadLayout::detect(mlp, None).unwrap().kind, HeadKind::Mlp);
        let custom = ["rm_head.weight", "score.weight"];
        assert_eq!(
            HeadLayout::detect(custom, Some("rm_head")).unwrap().prefix,
            "rm_head"
        );
        assert_eq!(HeadLayout::detect(["model.norm.weight"], None), None);
    }

    #[test]
    fn fresh_linear_head_has_the_papers_init_std() {
        // hidden 4095: std 1/4096; 4095 samples give a sample std within a few % of it.
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let head = ValueHead::new(HeadKind::Linear, 4095, vb.pp("value_head")).unwrap();
        let ValueHead::Linear(layer) = &head else {
            panic!("expected a linear head")
        };
        let values = layer
            .weight()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32;
        let ratio = var.sqrt() * 4096.0;
        assert!((0.95..1.05).contains(&ratio), "std ratio {ratio}");
        assert!(layer.bias().is_none());
    }

    #[test]
    fn seeded_head_is_the_same_for_a_seed_and_keeps_the_papers_std() {
        let draw = |seed| {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let head = ValueHead::new(HeadKind::Mlp, 64, vb.pp("value_head")).unwrap();
            seed_new_head(&varmap, "value_head", seed).unwrap();
            // The head's tensors share storage with the VarMap's, so they see the redraw.
            head.named_tensors("value_head")
                .into_iter()
                .map(|(name, tensor)| {
                    (
                        name,
                        tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let tensors = draw(7);
        let (name, bias) = &tensors[1];
        assert_eq!(name, "value_head.0.bias"); // U(±1/√64 = ±0.125)
        assert!(bias.iter().all(|v| v.abs() <= 0.125));
        let (name, weight) = &tensors[0];
        assert_eq!(name, "value_head.0.weight"); // (32, 64): std 1/65
        let std = (weight.iter().map(|v| v * v).sum::<f32>() / weight.len() as f32).sqrt();
        assert!((std * 65.0 - 1.0).abs() < 0.1, "std·65 = {}", std * 65.0);
    }

    #[test]
    fn mlp_head_maps_tokens_to_one_reward_each_with_named_layers() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let head = ValueHead::new(HeadKind::Mlp, 8, vb.pp("value_head")).unwrap();
        let xs = Tensor::ones((2, 3, 8), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(head.forward(&xs).unwrap().dims(), &[2, 3]);
        let mut names: Vec<String> = head
            .named_tensors("value_head")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "value_head.0.bias",
                "value_head.0.weight",
                "value_head.2.bias",
                "value_head.2.weight",
                "value_head.4.bias",
                "value_head.4.weight",
                "value_head.6.weight"
            ]
        );
    }
}

//! The goal state (paper Eq. 7) and the cosine Q-values computed against it.
//!
//! `h_g = (1/N) Σ h(y_w)`: the mean, over the chosen responses of a pairs table, of the reward
//! model's last hidden state at the final scored token (the EOS under `--eos append`), or at a
//! random response token (`--token random`, the App. C ablation). It is stored in a small
//! safetensors file: tensor `goal_state` of shape `(hidden,)`, F32, with its provenance (reward
//! model, count, template, token choice, EOS policy) in the header metadata.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::model::batching::{run_batches_sharing_prompts, TokenModel};
use crate::model::loading::{short_hash, LoadedModel};
use crate::model::template::{Encoder, TruncationCounts};
use crate::pipeline::io::write_atomic;

/// Name of the tensor in a goal-state file.
pub const GOAL_TENSOR: &str = "goal_state";

/// Which token of a chosen response contributes its hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GoalToken {
    /// The final scored token (the paper's default).
    #[default]
    Last,
    /// A uniformly random scored token of each response (seeded).
    Random,
}

impl GoalToken {
    pub fn name(self) -> &'static str {
        match self {
            GoalToken::Last => "last",
            GoalToken::Random => "random",
        }
    }
}

/// Where a goal state came from, kept as string metadata in its safetensors header. Every
/// field is optional on reading: goal files from older qrm or other tools record less.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GoalProvenance {
    /// The reward model's name (`rm`).
    pub rm: Option<String>,
    /// How many chosen responses were averaged.
    pub count: Option<usize>,
    pub template: Option<String>,
    /// `last` or `random` ([`GoalToken`]).
    pub token: Option<String>,
    pub eos: Option<String>,
    pub max_len: Option<usize>,
    /// sha256 of the model's weights and of its tokenizer (`ModelIdentity`).
    pub rm_sha256: Option<String>,
    pub tokenizer_sha256: Option<String>,
    pub seed: Option<u64>,
    /// The pairs table the chosen responses came from.
    pub source: Option<String>,
}

impl GoalProvenance {
    /// The header metadata: one string per recorded field, under the field's name.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let numbers = [
            ("count", self.count.map(|v| v.to_string())),
            ("max_len", self.max_len.map(|v| v.to_string())),
            ("seed", self.seed.map(|v| v.to_string())),
        ];
        let texts = [
            ("rm", &self.rm),
            ("template", &self.template),
            ("token", &self.token),
            ("eos", &self.eos),
            ("rm_sha256", &self.rm_sha256),
            ("tokenizer_sha256", &self.tokenizer_sha256),
            ("source", &self.source),
        ];
        numbers
            .into_iter()
            .chain(texts.into_iter().map(|(key, value)| (key, value.clone())))
            .filter_map(|(key, value)| Some((key.to_owned(), value?)))
            .collect()
    }

    /// Reads the fields back from header metadata; a number that does not parse is an error
    /// naming the file and key.
    pub fn from_metadata(metadata: &HashMap<String, String>, path: &Path) -> Result<Self> {
        let text = |key: &str| metadata.get(key).cloned();
        fn number<T: std::str::FromStr>(
            metadata: &HashMap<String, String>,
            key: &str,
            path: &Path,
        ) -> Result<Option<T>> {
            metadata
                .get(key)
                .map(|value| {
                    value.parse().map_err(|_| Error::Format {
                        path: path.to_owned(),
                        message: format!("goal metadata `{key}` is `{value}`, not a number"),
                    })
                })
                .transpose()
        }
        Ok(GoalProvenance {
            rm: text("rm"),
            count: number(metadata, "count", path)?,
            template: text("template"),
            token: text("token"),
            eos: text("eos"),
            max_len: number(metadata, "max_len", path)?,
            rm_sha256: text("rm_sha256"),
            tokenizer_sha256: text("tokenizer_sha256"),
            seed: number(metadata, "seed", path)?,
            source: text("source"),
        })
    }
}

/// A goal state and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalState {
    pub vector: Vec<f32>,
    pub provenance: GoalProvenance,
}

impl GoalState {
    /// Refuses a goal state made with another model (hidden size, or weights when the goal
    /// records their sha256), template or EOS policy than the scoring run's: the cosine only
    /// means something when both come from the same model and encoding.
    pub fn check_matches(
        &self,
        path: &Path,
        loaded: &LoadedModel,
        encoder: &Encoder,
    ) -> Result<()> {
        let mismatch = |message: String| Error::Format {
            path: path.to_owned(),
            message,
        };
        if self.vector.len() != loaded.hidden_size {
            return Err(mismatch(format!(
                "the goal state has {} values but the model's hidden size is {}: it was made with \
                 another model",
                self.vector.len(),
                loaded.hidden_size
            )));
        }
        if let Some(then) = &self.provenance.rm_sha256 {
            if *then != loaded.identity.weights_sha256 {
                return Err(mismatch(format!(
                    "the goal state was made with another model (weights sha256 {}, this model's {})",
                    short_hash(then),
                    short_hash(&loaded.identity.weights_sha256)
                )));
            }
        }
        for (key, then, now) in [
            (
                "template",
                &self.provenance.template,
                encoder.template.name(),
            ),
            ("eos", &self.provenance.eos, encoder.eos.name().to_owned()),
        ] {
            if let Some(then) = then {
                if *then != now {
                    return Err(mismatch(format!(
                        "the goal state was made with --{key} {then}, this run uses {now}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Writes `goal_state` (hidden,) F32 and the metadata, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let format = |e: safetensors::SafeTensorError| Error::Format {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let data: Vec<u8> = self.vector.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![self.vector.len()],
            &data,
        )
        .map_err(format)?;
        let metadata = self.provenance.to_metadata();
        let bytes =
            safetensors::serialize([(GOAL_TENSOR, view)], Some(metadata)).map_err(format)?;
        write_atomic(path, |writer| {
            std::io::Write::write_all(writer, &bytes).map_err(|e| Error::io(path, e))
        })
    }

    /// Reads a file written by [`GoalState::save`] (or any safetensors file holding a 1-D or
    /// `(1, hidden)` tensor named `goal_state`).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs_err::read(path).map_err(|e| Error::io(path, e))?;
        let format = |message: String| Error::Format {
            path: path.to_owned(),
            message,
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let tensor = tensors
            .get(GOAL_TENSOR)
            .ok_or_else(|| format(format!("no tensor named `{GOAL_TENSOR}`")))?;
        let vector = tensor
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        if tensor.elem_count() == 0 || tensor.dims().iter().rev().skip(1).any(|&d| d != 1) {
            return Err(format(format!(
                "`{GOAL_TENSOR}` has shape {:?}, expected (hidden,)",
                tensor.dims()
            )));
        }
        let provenance = GoalProvenance::from_metadata(&metadata, path)?;
        Ok(GoalState { vector, provenance })
    }
}

/// The goal state at `path` as a tensor on the model's device, checked against the model and
/// encoding ([`GoalState::check_matches`]), with the file's sha256 (part of `rm_id`). What
/// qrm-score and qrm-serve do with `--goal`.
pub fn load_goal_for(
    path: &Path,
    loaded: &LoadedModel,
    encoder: &Encoder,
) -> Result<(Tensor, String)> {
    let goal = GoalState::load(path)?;
    goal.check_matches(path, loaded, encoder)?;
    let tensor = Tensor::new(goal.vector.as_slice(), loaded.model.device())?;
    Ok((tensor, crate::pipeline::io::file_sha256(path)?))
}

/// Cosine similarity of each row of `xs` with `goal`, in f32.
///
/// `cos(x, g) = x·g / max(‖x‖‖g‖, ε)` with ε = 1e-8, as `torch.nn.functional.cosine_similarity`.
///
/// # Shapes
/// `xs`: (n, hidden), `goal`: (hidden,) → (n,)
pub fn cosine_with_goal(xs: &Tensor, goal: &Tensor) -> Result<Tensor> {
    let xs = xs.to_dtype(DType::F32)?;
    let goal = goal.to_dtype(DType::F32)?.to_device(xs.device())?;
    let dots = xs.matmul(&goal.unsqueeze(1)?)?.squeeze(1)?; // (n,)
    let x_norms = xs.sqr()?.sum(1)?.sqrt()?; // (n,)
    let goal_norm = goal.sqr()?.sum_all()?.sqrt()?; // ()
    let denominator = x_norms.broadcast_mul(&goal_norm)?.maximum(1e-8)?; // (n,)
    Ok(dots.div(&denominator)?)
}

/// Running sum of hidden states, averaged at the end (Eq. 7).
#[derive(Debug, Clone, Default)]
pub struct GoalAccumulator {
    sum: Vec<f64>,
    count: usize,
}

impl GoalAccumulator {
    /// Adds one hidden state of shape (hidden,).
    pub fn add(&mut self, hidden: &[f32]) -> Result<()> {
        if self.sum.is_empty() {
            self.sum = vec![0.0; hidden.len()];
        }
        if hidden.len() != self.sum.len() {
            return Err(Error::Model(format!(
                "hidden size changed from {} to {}",
                self.sum.len(),
                hidden.len()
            )));
        }
        for (total, &value) in self.sum.iter_mut().zip(hidden) {
            *total += f64::from(value);
        }
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The mean, or `None` when nothing was added.
    pub fn mean(&self) -> Option<Vec<f32>> {
        (self.count > 0).then(|| {
            self.sum
                .iter()
                .map(|total| (total / self.count as f64) as f32)
                .collect()
        })
    }
}

/// How [`embed_goal`] picks the hidden states it averages.
#[derive(Debug, Clone, Copy)]
pub struct EmbedOptions {
    pub token: GoalToken,
    /// Seeds the random token choice of [`GoalToken::Random`].
    pub seed: u64,
    /// Padded tokens per batch.
    pub batch_tokens: usize,
    /// Rows of one prompt run after its cached keys and values, computed once (the goal is the
    /// same to float rounding).
    pub shared_prompt: bool,
}

/// Accumulates the goal state over (question, chosen response) rows (Eq. 7): the hidden state at
/// the final scored token of each row, or at a scored token drawn uniformly with the seed (the
/// draws are made in input order, so they do not depend on batching). Rows that truncation
/// skips, and rows with no scored token, are left out. `on_rows` is called with the number of
/// rows each batch finished.
pub fn embed_goal(
    model: &dyn TokenModel,
    encoder: &Encoder,
    questions: &[&str],
    chosen: &[&str],
    options: &EmbedOptions,
    mut on_rows: impl FnMut(usize),
) -> Result<(GoalAccumulator, TruncationCounts)> {
    let encoded = encoder.encode_rows(questions, chosen)?;
    let mut truncation = TruncationCounts::default();
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let positions: Vec<Option<usize>> = encoded
        .iter()
        .map(|example| {
            truncation.add(example.truncated);
            let (start, end) = (example.response_start, example.input_ids.len());
            match options.token {
                _ if end <= start => None,
                GoalToken::Last => Some(end - 1),
                GoalToken::Random => Some(rng.random_range(start..end)),
            }
        })
        .collect();
    let mut accumulator = GoalAccumulator::default();
    run_batches_sharing_prompts(
        model,
        &encoded,
        options.batch_tokens.max(1),
        options.shared_prompt,
        |indices, output, offset| {
            for (row, &index) in indices.iter().enumerate() {
                if let Some(position) = positions[index] {
                    let state = output
                        .hidden
                        .i((row, position - offset))?
                        .to_dtype(DType::F32)?; // (hidden,)
                    accumulator.add(&state.to_vec1::<f32>()?)?;
                }
            }
            on_rows(indices.len());
            Ok(())
        },
    )?;
    Ok((accumulator, truncation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_matches_hand_computation() {
        // rows: (3,4)·(4,3) = 24, norms 5 and 5 → 0.96; (1,0)·(4,3) = 4, norms 1·5 → 0.8;
        // (0,0) → 0 by the ε floor; (-4,-3) → -1.
        let xs = Tensor::new(&[[3f32, 4.], [1., 0.], [0., 0.], [-4., -3.]], &Device::Cpu).unwrap();
        let goal = Tensor::new(&[4f32, 3.], &Device::Cpu).unwrap();
        let cosines = cosine_with_goal(&xs, &goal)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let expected = [0.96f32, 0.8, 0.0, -1.0];
        for (got, want) in cosines.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{cosines:?}");
        }
    }

    #[test]
    fn accumulator_mean_is_elementwise_mean() {
        let mut accumulator = GoalAccumulator::default();
        assert_eq!(accumulator.mean(), None);
        accumulator.add(&[1.0, 2.0]).unwrap();
        accumulator.add(&[3.0, -2.0]).unwrap();
        assert_eq!(accumulator.mean(), Some(vec![2.0, 0.0]));
        assert!(accumulator.add(&[1.0]).is_err());
    }

    #[test]
    fn embed_goal_averages_each_rows_final_hidden_state() {
        use crate::testing::{tiny_encoder, tiny_llama};
        let (model, encoder) = (tiny_llama(), tiny_encoder());
        let questions = ["What is 1 + 1?", "Name a colour.", "2 * 3?"];
        let chosen = ["2", "Blue, like the sky.", "2 * 3 = 6, so the answer is 6."];
        let options = EmbedOptions {
            token: GoalToken::Last,
            seed: 0,
            batch_tokens: 10_000,
            shared_prompt: true,
        };
        let (accumulator, _) =
            embed_goal(&model, &encoder, &questions, &chosen, &options, |_| {}).unwrap();
        assert_eq!(accumulator.count(), 3);
        // By hand: each sequence alone (no padding), hidden state at its last token (the EOS).
        let mut expected = vec![0f64; 32];
        for (question, response) in questions.iter().zip(chosen) {
            let encoded = encoder.encode(question, response).unwrap();
            assert_eq!(encoded.input_ids.last(), Some(&encoder.eos_id));
            let hidden = crate::score::test_support::hidden_alone(&model, &encoded.input_ids);
            let last = hidden.i((0, encoded.input_ids.len() - 1)).unwrap();
            for (total, value) in expected.iter_mut().zip(last.to_vec1::<f32>().unwrap()) {
                *total += f64::from(value) / 3.0;
            }
        }
        for (got, want) in accumulator.mean().unwrap().iter().zip(expected) {
            assert!((f64::from(*got) - want).abs() < 1e-5, "{got} vs {want}");
        }

        // A random token: the same seed gives the same goal whatever the batching.
        let random = |seed, batch_tokens| {
            let options = EmbedOptions {
                token: GoalToken::Random,
                seed,
                batch_tokens,
                shared_prompt: true,
            };
            let (accumulator, _) =
                embed_goal(&model, &encoder, &questions, &chosen, &options, |_| {}).unwrap();
            accumulator.mean().unwrap()
        };
        let (a, b, c) = (random(7, 1), random(7, 10_000), random(8, 10_000));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
        assert!(a.iter().zip(&c).any(|(x, y)| (x - y).abs() > 1e-4));
    }

    #[test]
    fn a_goal_from_shared_prompts_equals_the_goal_from_whole_rows() {
        use crate::testing::{tiny_encoder, tiny_llama};
        let (model, encoder) = (tiny_llama(), tiny_encoder());
        // Two questions with three chosen responses each, and one of its own.
        let questions = [
            "2 + 2?",
            "Name a colour.",
            "2 + 2?",
            "3 * 3?",
            "Name a colour.",
        ];
        let questions = [&questions[..], &["2 + 2?", "Name a colour."]].concat();
        let chosen = [
            "4",
            "Blue.",
            "2 + 2 = 4.",
            "9",
            "Red, I think.",
            "Four.",
            "Green",
        ];
        for token in [GoalToken::Last, GoalToken::Random] {
            let goal = |shared_prompt| {
                let options = EmbedOptions {
                    token,
                    seed: 3,
                    batch_tokens: 40,
                    shared_prompt,
                };
                let (accumulator, _) =
                    embed_goal(&model, &encoder, &questions, &chosen, &options, |_| {}).unwrap();
                assert_eq!(accumulator.count(), 7);
                accumulator.mean().unwrap()
            };
            let (shared, whole) = (goal(true), goal(false));
            let worst = shared
                .iter()
                .zip(&whole)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{token:?}: max |Δ| = {worst:e}");
        }
    }

    #[test]
    fn goal_state_roundtrips_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("goal.safetensors");
        let goal = GoalState {
            vector: vec![0.5, -1.25, 3.0],
            provenance: GoalProvenance {
                rm: Some("tiny".into()),
                count: Some(2),
                rm_sha256: Some("a".repeat(64)),
                ..GoalProvenance::default()
            },
        };
        goal.save(&path).unwrap();
        assert_eq!(GoalState::load(&path).unwrap(), goal);
        // Only the recorded fields are written.
        assert_eq!(goal.provenance.to_metadata().len(), 3);
    }
}

//! The training loop: Bradley–Terry (`bt`) or Bradley–Terry + λ·contrastive (`q`, the paper's).
//!
//! One readable loop in the nanoGPT manner. Each optimiser step takes `batch_size` pairs in
//! micro-batches of `micro_batch` pairs, or packed in data order into micro-batches of at most
//! `micro_batch_tokens` padded tokens ([`plan_in_order`]), sums their gradients, each
//! micro-batch's mean loss weighted by its share of the step's pairs (so every pair weighs the
//! same whatever the packing), clips the global norm at 1, and applies AdamW at the cosine
//! schedule's learning rate. Every `eval_every` steps the eval pairs are scored (accuracy, BT
//! loss, contrastive loss); every `save_every` steps the trainable weights, the optimiser moments
//! and the step are saved, and [`train`] with `resume` continues from them to the same weights as
//! an uninterrupted run.
//!
//! Nothing random is carried between steps: the epoch's pair order comes from (seed, epoch) and
//! the contrastive positions of micro-batch m from (seed, m) (of the step's pair p under a token
//! budget, so the packing changes nothing: [`Draws`]), so a resumed run needs only the step.
//!
//! Each log row carries the process's peak resident set ([`crate::memory::peak_rss_mib`], host
//! memory) and, on CUDA, the peak device memory in use sampled after each micro-batch's backward
//! pass ([`crate::memory::peak_device_mib`]).
//!
//! The model is anything that implements [`TrainableRewardModel`] (a [`TokenModel`] with
//! trainable weights): a [`RewardOutput`] (hidden states after the final norm, per-token values)
//! for a batch right-padded by [`pad_right`], from its token ids or from the cached hidden
//! states of a frozen trunk ([`BatchInput::trunk_hidden`]). Rewards are read at each row's last
//! real token ([`last_token_values`]), as scoring reads them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use clap::builder::RangedU64ValueParser;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::stats::{proportion, Proportion};
use crate::model::batching::{pad_right, plan_in_order, TokenModel};
use crate::model::loading::short_hash;
use crate::model::reward_model::{last_token_values, RewardOutput};
use crate::model::template::Encoded;
use crate::train::checkpointing::{self, LayerStack};
use crate::train::loss;
use crate::train::optim::{clip_gradient_norm, state_dtype, AdamW, AdamWConfig, CosineSchedule};
use crate::train::sampling::{
    sample_paper, sample_reference, ContrastivePositions, ResponseSpan, SamplingConfig, Window,
};

/// What the loss optimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Bradley–Terry preference ranking only (the baseline RM).
    Bt,
    /// Bradley–Terry + λ·contrastive goal-conditioned loss (the paper's Q-function RM).
    Q,
}

/// The preference-ranking term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceLoss {
    /// −log σ(r_c − r_r − margin) (the release's default `PairWiseLoss`).
    Sigmoid,
    /// log(1 + exp(r_r − r_c)) (the release's `LogExpLoss`; ignores the margin).
    Logexp,
}

/// Which contrastive loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ContrastiveForm {
    /// The released code: sorted-pair draws from the end, full cross product, log of mean σ.
    Reference,
    /// The paper's Eq. 5: ordered pairs, mean of the log terms.
    Paper,
}

/// Where goal states come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GoalStrategy {
    /// Single goal state (SGS): each sampled goal is one token (the paper's default).
    Single,
    /// Goals averaged over the samples of each example (App. D.1 AVG; the release's
    /// `cosine_avg`).
    Avg,
    /// Negative goals from a random other pair's response, not the rejected one (App. D.1 RS).
    Random,
}

/// Where negative goals are drawn in the rejected (or random) response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NegativeGoals {
    /// Anywhere in the response, as the paper and the release draw them.
    #[default]
    Anywhere,
    /// Only from the first token where it differs from the chosen response on. Before that
    /// token the two rows hold the same tokens, so causal attention gives them the same states:
    /// a negative goal there is a state of the chosen response itself, and the loss would push a
    /// state away from itself. This matters for minimal pairs (`qrm-synth --phrasing question`);
    /// sampled LLM responses usually differ from their first tokens, where both rules agree.
    AfterDivergence,
}

/// Every setting of a run; the `qrm-train` flags, saved in `train_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// bt: Bradley–Terry only; q: BT + λ·contrastive (the paper's method).
    #[arg(long, value_enum, default_value = "q")]
    pub objective: Objective,
    /// Preference loss: sigmoid (−log σ(r_c − r_r − margin)) or logexp.
    #[arg(long, value_enum, default_value = "sigmoid")]
    pub loss: PreferenceLoss,
    /// Contrastive weight λ.
    #[arg(long = "lambda", default_value_t = 0.5)]
    pub lambda: f64,
    /// Reward-centering weight c: adds c · mean((r_chosen + r_rejected)²) to the loss
    /// (Eisenstein et al. 2023; TRL's `center_rewards_coefficient`, which suggests 0.01), so each
    /// pair's rewards centre on zero and a per-question offset, which the Bradley–Terry term
    /// leaves free, is pulled out. 0 turns it off.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub center_rewards: f64,
    /// Cross-pair weight w: adds w · mean over i ≠ j of −log σ(r_chosen,i − r_rejected,j), the
    /// Bradley–Terry term between every chosen and rejected response of *different* pairs in a
    /// micro-batch ([`loss::cross_pair_bradley_terry`]). For correctness-labelled pairs (a
    /// correct answer beats a wrong one whatever the question), so rewards rank across questions
    /// (the pooled AUROC), which the pair term leaves free. Not in the paper; 0 turns it off.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub cross_pairs: f64,
    /// reference: the released code's loss; paper: Eq. 5.
    #[arg(long, value_enum, default_value = "reference")]
    pub contrastive: ContrastiveForm,
    /// single (SGS), avg (goals averaged per example) or random (negative goal from another
    /// question's response).
    #[arg(long, value_enum, default_value = "single")]
    pub goal_strategy: GoalStrategy,
    /// Positive (source, goal) samples per pair.
    #[arg(long, default_value_t = 16)]
    pub positives: usize,
    /// Negative (source, goal) samples per pair.
    #[arg(long, default_value_t = 16)]
    pub negatives: usize,
    /// anywhere (the paper's and the release's rule) or after-divergence (only where the
    /// negative response differs from the chosen one: the states before are the same).
    #[arg(long, value_enum, default_value = "anywhere")]
    #[serde(default)]
    pub negative_goals: NegativeGoals,
    /// Where sources are sampled, as fractions of the response (`0.9:1` = the last tenth).
    #[arg(long, default_value = "0:1", value_parser = parse_window)]
    pub source_window: String,
    /// Where goals are sampled, as fractions of the response.
    #[arg(long, default_value = "0:1", value_parser = parse_window)]
    pub goal_window: String,
    /// Peak learning rate of the cosine schedule.
    #[arg(long = "lr", default_value_t = 9e-6)]
    pub learning_rate: f64,
    /// AdamW decoupled weight decay (norms and biases are not decayed).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Warm-up steps as a fraction of all steps (rounded up).
    #[arg(long = "warmup", default_value_t = 0.03)]
    pub warmup_fraction: f64,
    /// Global gradient-norm clipping threshold.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Pairs per optimiser step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Pairs per forward pass; gradients accumulate over batch-size / micro-batch passes.
    #[arg(long, default_value_t = 1)]
    pub micro_batch: usize,
    /// Instead of --micro-batch: pack each step's pairs, in data order, into forward passes of
    /// at most N padded tokens (rows × longest row; a pair is its chosen and rejected rows, plus
    /// its random negative under --goal-strategy random); a pair over N on its own goes alone.
    /// Every pair weighs the same whatever the packing, and the contrastive term is taken per
    /// pair, so the loss is that of --micro-batch 1. Eval is packed alike.
    #[arg(long, value_name = "N", conflicts_with = "micro_batch",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    #[serde(default)]
    pub micro_batch_tokens: Option<usize>,
    /// Passes over the training pairs.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many optimiser steps (the schedule spans them).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Evaluate every N steps (and at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Save the resumable state every N steps (and at the end).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Seed of the data order, the eval split and the contrastive positions.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Gradient checkpointing: keep only each trained layer's input during the forward and
    /// recompute the layer in the backward pass (one more forward of the trained layers, much
    /// less memory held); the same gradients. Not part of the resume identity: a run may be
    /// resumed with or without it.
    #[arg(long)]
    #[serde(default)]
    pub checkpoint_layers: bool,
}

/// Checks an `a:b` window flag.
fn parse_window(text: &str) -> std::result::Result<String, String> {
    text.parse::<Window>()
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            objective: Objective::Q,
            loss: PreferenceLoss::Sigmoid,
            lambda: 0.5,
            center_rewards: 0.0,
            cross_pairs: 0.0,
            contrastive: ContrastiveForm::Reference,
            goal_strategy: GoalStrategy::Single,
            positives: 16,
            negatives: 16,
            negative_goals: NegativeGoals::Anywhere,
            source_window: "0:1".into(),
            goal_window: "0:1".into(),
            learning_rate: 9e-6,
            weight_decay: 0.0,
            warmup_fraction: 0.03,
            max_grad_norm: 1.0,
            batch_size: 64,
            micro_batch: 1,
            micro_batch_tokens: None,
            epochs: 1,
            max_steps: None,
            eval_every: 0,
            save_every: 0,
            seed: 42,
            checkpoint_layers: false,
        }
    }
}

impl TrainConfig {
    fn sampling(&self) -> Result<SamplingConfig> {
        Ok(SamplingConfig {
            positives: self.positives,
            negatives: self.negatives,
            source_window: self.source_window.parse::<Window>()?,
            goal_window: self.goal_window.parse::<Window>()?,
        })
    }

    fn validate(&self) -> Result<()> {
        if self.micro_batch_tokens.is_some() && self.micro_batch != 1 {
            return Err(Error::Usage(format!(
                "--micro-batch-tokens packs micro-batches by tokens; it cannot be combined with \
                 --micro-batch {}",
                self.micro_batch
            )));
        }
        if self.micro_batch == 0 || self.batch_size == 0 || self.batch_size % self.micro_batch != 0
        {
            return Err(Error::Usage(format!(
                "--batch-size {} must be a positive multiple of --micro-batch {}",
                self.batch_size, self.micro_batch
            )));
        }
        for (flag, value) in [
            ("--center-rewards", self.center_rewards),
            ("--cross-pairs", self.cross_pairs),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::Usage(format!(
                    "{flag} {value}: a weight must be finite and at least 0"
                )));
            }
        }
        if self.objective == Objective::Q && (self.positives == 0 || self.negatives == 0) {
            return Err(Error::Usage(
                "--positives and --negatives must be at least 1".into(),
            ));
        }
        self.sampling().map(|_| ())
    }

    /// Optimiser steps: `max_steps`, else epochs × ⌊pairs / batch_size⌋ (at least 1), as
    /// OpenRLHF drops the last incomplete batch.
    pub fn total_steps(&self, train_pairs: usize) -> usize {
        self.max_steps
            .unwrap_or_else(|| self.epochs * (train_pairs / self.batch_size).max(1))
    }
}

/// One preference pair, tokenised.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedPair {
    /// Encoded as for scoring ([`Encoder::encode`]): `input_ids[response_start..]` is the
    /// response, its last token the one the reward is read at (EOS under qrm's template policy).
    ///
    /// [`Encoder::encode`]: crate::model::template::Encoder::encode
    pub chosen: Encoded,
    pub rejected: Encoded,
    pub margin: Option<f32>,
}

/// A right-padded batch as the model sees it.
#[derive(Debug, Clone)]
pub struct BatchInput {
    /// (B, L) u32, right-padded by [`pad_right`].
    pub input_ids: Tensor,
    /// (B, L) u32, 1 for real tokens.
    pub attention_mask: Tensor,
    /// (B, L, H): the frozen trunk's output when the trunk is cached, zero-padded.
    pub trunk_hidden: Option<Tensor>,
}

/// What the loop needs from a reward model beyond a [`TokenModel`]'s forward (hidden states
/// after the final norm and per-token values, with differentiable kernels).
pub trait TrainableRewardModel: TokenModel {
    /// The forward of a batch: from `input.trunk_hidden` when it is set and the model caches a
    /// frozen trunk, otherwise from the tokens ([`TokenModel::forward`], the default).
    fn forward_batch(&self, input: &BatchInput) -> Result<RewardOutput> {
        self.forward(&input.input_ids, &input.attention_mask)
    }

    /// The weights the optimiser updates, with stable names.
    fn trainable_variables(&self) -> Vec<(String, Var)>;

    /// Training step `step` begins (`Some`: dropout on, its masks those of the step) or
    /// evaluation does (`None`: no dropout). Models without dropout ignore it.
    fn set_training_step(&self, _step: Option<usize>) {}

    /// The model as a stack of layers for gradient checkpointing (`--checkpoint-layers`,
    /// [`LayerStack::backward`]); `None` (the default) for a model that cannot be checkpointed.
    fn layer_stack(&self) -> Option<LayerStack<'_>> {
        None
    }
}

/// Training data: pairs plus, when the trunk is frozen and cached, each response's trunk output
/// `(L_i, H)` in the order (chosen, rejected).
pub struct TrainData {
    pub pairs: Vec<EncodedPair>,
    pub trunk: Option<Vec<[Tensor; 2]>>,
}

/// One JSONL log row; the eval fields are null except on eval steps, `loss_contrastive` null
/// for the BT objective.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LogRow {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    pub loss_bt: f64,
    pub loss_contrastive: Option<f64>,
    pub accuracy: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub eval_accuracy: Option<f64>,
    /// Eval pairs won (chosen above rejected) and evaluated.
    #[serde(default)]
    pub eval_wins: Option<usize>,
    #[serde(default)]
    pub eval_pairs: Option<usize>,
    pub eval_loss: Option<f64>,
    pub eval_contrastive: Option<f64>,
    pub eval_reward_mean: Option<f64>,
    pub eval_reward_std: Option<f64>,
    /// Pooled AUROC of the eval rewards: every chosen reward against every rejected one.
    #[serde(default)]
    pub eval_auroc: Option<f64>,
    /// The process's peak resident set so far, in MiB ([`crate::memory::peak_rss_mib`]; absent
    /// off Linux). Host memory only.
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    /// On CUDA, the most GPU memory seen in use so far, in MiB, sampled after each micro-batch's
    /// backward pass ([`crate::memory::peak_device_mib`]: total − free, the CUDA context and
    /// other processes included); absent on the CPU.
    #[serde(default)]
    pub peak_device_mib: Option<f64>,
}

/// Eval metrics over a set of pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Share of pairs whose chosen response scores above the rejected one (`wins / pairs`).
    pub accuracy: f64,
    /// Pairs won and pairs evaluated.
    #[serde(default)]
    pub wins: usize,
    #[serde(default)]
    pub pairs: usize,
    pub loss_bt: f64,
    pub loss_contrastive: f64,
    /// Mean and (population) standard deviation of all chosen and rejected rewards, for reward
    /// normalisation as OpenRLHF stores them.
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Pooled AUROC: every eval pair's chosen reward (positive) against every rejected reward
    /// (negative), across pairs, ties ½ ([`crate::metrics::auroc::auroc`]). `accuracy` compares
    /// each chosen response only with its own rejected one; this compares across pairs, as
    /// the pooled AUROC of scored generations does, so a reward offset per question lowers it.
    /// `None` without eval pairs.
    #[serde(default)]
    pub auroc: Option<f64>,
}

impl EvalMetrics {
    /// The accuracy's Wilson 95 % interval and exact binomial p-value against 0.5
    /// ([`proportion`]); `None` without eval pairs.
    pub fn accuracy_interval(&self) -> Option<Proportion> {
        proportion(self.wins as u64, self.pairs as u64, 0.95)
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub last: Option<LogRow>,
    pub eval: Option<EvalMetrics>,
}

pub use crate::model::record::STATE_DIR;
pub(crate) const STATE_WEIGHTS: &str = "trainable.safetensors";
const STATE_OPTIMISER: &str = "optimizer.safetensors";
const STATE_JSON: &str = "state.json";

#[derive(Debug, Serialize, Deserialize)]
struct ResumeState {
    step: usize,
    config: TrainConfig,
    /// What the run trains on (see [`RunOptions::identity`]); empty in states written before it
    /// was recorded.
    #[serde(default)]
    identity: BTreeMap<String, String>,
}

/// Options of one call of [`train`] that are not part of the run's identity.
pub struct RunOptions<'a> {
    pub output: &'a Path,
    pub resume: bool,
    pub log: Option<&'a Path>,
    pub quiet: bool,
    /// Called after every optimiser step (e.g. to stop a run early in tests): `false` stops.
    pub on_step: Option<&'a mut dyn FnMut(&LogRow) -> bool>,
    /// What the run trains on beyond `config` (the pairs' and model's sha256, template, EOS
    /// policy, max length…): saved with the state, and `resume` refuses a state whose identity
    /// differs, naming each difference.
    pub identity: BTreeMap<String, String>,
}

/// The rows of one micro-batch: pair indices into [`TrainData::pairs`], plus for the `random`
/// goal strategy the (pair, side) of each row's random negative response; `first` is the
/// position of its first pair in the step (in the eval pairs when evaluating).
struct MicroBatch {
    first: usize,
    pairs: Vec<usize>,
    random_negatives: Vec<(usize, usize)>,
}

/// Where a micro-batch's contrastive positions are drawn from, and what the reference
/// contrastive loss averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Draws {
    /// Fixed micro-batches (`--micro-batch`): one stream, `micro_rng(seed, stream)`, drawn pair
    /// after pair, and the reference loss's means taken over the whole micro-batch.
    Micro(u64),
    /// Token-budgeted micro-batches: the micro-batch's pair `i` draws from stream `first + i`,
    /// and the reference loss is the mean of each pair's own
    /// ([`loss::contrastive_reference_per_pair`]), so neither depends on the packing. These are
    /// the streams and the loss of `--micro-batch 1`, whose micro-batches are single pairs.
    PerPair(u64),
}

/// The draws of micro-batch `index` (starting at the step's pair `micro.first`) of step `step`.
fn train_draws(config: &TrainConfig, step: usize, index: usize, micro: &MicroBatch) -> Draws {
    match config.micro_batch_tokens {
        None => {
            let accumulation = (config.batch_size / config.micro_batch) as u64;
            Draws::Micro(step as u64 * accumulation + index as u64)
        }
        Some(_) => Draws::PerPair(step as u64 * config.batch_size as u64 + micro.first as u64),
    }
}

fn response(data: &TrainData, pair: usize, side: usize) -> (&Encoded, Option<&Tensor>) {
    let encoded = &data.pairs[pair];
    let response = if side == 0 {
        &encoded.chosen
    } else {
        &encoded.rejected
    };
    (
        response,
        data.trunk.as_ref().map(|trunk| &trunk[pair][side]),
    )
}

/// Right-pads responses into one batch ([`pad_right`]), with their cached trunk outputs
/// zero-padded alike when every row has one.
fn batch_input(rows: &[(&Encoded, Option<&Tensor>)], device: &Device) -> Result<BatchInput> {
    let encoded: Vec<&Encoded> = rows.iter().map(|(response, _)| *response).collect();
    let (input_ids, attention_mask) = pad_right(&encoded, device)?;
    let (_, max_len) = input_ids.dims2()?;
    let trunk_hidden = if rows.iter().all(|(_, trunk)| trunk.is_some()) && !rows.is_empty() {
        let mut padded = Vec::with_capacity(rows.len());
        for (response, trunk) in rows {
            let Some(trunk) = trunk else { continue };
            let pad = max_len - response.input_ids.len();
            let trunk = trunk.to_device(device)?;
            padded.push(trunk.pad_with_zeros(0, 0, pad)?); // (L, H)
        }
        Some(Tensor::stack(&padded, 0)?) // (B, L, H)
    } else {
        None
    };
    Ok(BatchInput {
        input_ids,
        attention_mask,
        trunk_hidden,
    })
}

/// Loss parts of one micro-batch.
struct MicroLoss {
    total: Tensor,
    bt: f64,
    contrastive: Option<f64>,
    chosen_rewards: Vec<f32>,
    rejected_rewards: Vec<f32>,
    tokens: usize,
}

/// Forward and loss (means over its pairs) of one micro-batch; `draws` drive the contrastive
/// positions.
fn micro_batch_loss(
    model: &dyn TrainableRewardModel,
    data: &TrainData,
    micro: &MicroBatch,
    config: &TrainConfig,
    sampling: &SamplingConfig,
    draws: Draws,
) -> Result<MicroLoss> {
    let batch = micro_batch_input(data, micro, model.device())?;
    let output = model.forward_batch(&batch.input)?;
    micro_batch_loss_of(data, micro, config, sampling, draws, &batch, &output)
}

/// The rows of one micro-batch as the model sees them: chosen responses, rejected ones, then
/// the random negatives.
struct MicroInput<'a> {
    input: BatchInput,
    /// Each pair's negative response (the rejected one, or the random one).
    rows: Vec<&'a Encoded>,
    tokens: usize,
}

fn micro_batch_input<'a>(
    data: &'a TrainData,
    micro: &MicroBatch,
    device: &Device,
) -> Result<MicroInput<'a>> {
    let count = micro.pairs.len();
    let mut rows: Vec<(&Encoded, Option<&Tensor>)> = Vec::with_capacity(3 * count);
    rows.extend(micro.pairs.iter().map(|&pair| response(data, pair, 0)));
    rows.extend(micro.pairs.iter().map(|&pair| response(data, pair, 1)));
    rows.extend(
        micro
            .random_negatives
            .iter()
            .map(|&(pair, side)| response(data, pair, side)),
    );
    let tokens = rows.iter().map(|(r, _)| r.input_ids.len()).sum();
    let input = batch_input(&rows, device)?;
    Ok(MicroInput {
        input,
        rows: rows.into_iter().map(|(response, _)| response).collect(),
        tokens,
    })
}

/// The loss of one micro-batch from the model's output on its rows ([`micro_batch_input`]).
fn micro_batch_loss_of(
    data: &TrainData,
    micro: &MicroBatch,
    config: &TrainConfig,
    sampling: &SamplingConfig,
    draws: Draws,
    batch: &MicroInput<'_>,
    output: &RewardOutput, // hidden (R, L, H), token_rewards (R, L)
) -> Result<MicroLoss> {
    let (count, input, rows, tokens) = (micro.pairs.len(), &batch.input, &batch.rows, batch.tokens);
    let token_rewards = output.token_rewards.to_dtype(DType::F32)?;
    let rewards = last_token_values(&token_rewards, &input.attention_mask)?; // (R,)
    let chosen = rewards.narrow(0, 0, count)?; // (B,)
    let rejected = rewards.narrow(0, count, count)?; // (B,)
    let bt = preference_loss(data, micro, config, &chosen, &rejected)?;
    let mut total = bt.clone();
    if config.center_rewards > 0.0 {
        let centering = loss::reward_centering(&chosen, &rejected)?;
        total = (total + (centering * config.center_rewards)?)?;
    }
    if config.cross_pairs > 0.0 {
        let cross = loss::cross_pair_bradley_terry(&chosen, &rejected)?;
        total = (total + (cross * config.cross_pairs)?)?;
    }
    let mut contrastive_value = None;
    if config.objective == Objective::Q {
        let negatives: Vec<&Encoded> = (0..count)
            .map(|index| match config.goal_strategy {
                GoalStrategy::Random => rows[2 * count + index],
                _ => rows[count + index],
            })
            .collect();
        let hidden = output.hidden.to_dtype(DType::F32)?;
        let contrastive =
            contrastive_loss(data, micro, &negatives, &hidden, config, sampling, draws)?;
        contrastive_value = Some(contrastive.to_scalar::<f32>()? as f64);
        total = (total + (contrastive * config.lambda)?)?;
    }
    Ok(MicroLoss {
        bt: bt.to_scalar::<f32>()? as f64,
        total,
        contrastive: contrastive_value,
        chosen_rewards: chosen.to_vec1::<f32>()?,
        rejected_rewards: rejected.to_vec1::<f32>()?,
        tokens,
    })
}

/// The preference term of a micro-batch from its chosen and rejected rewards, (B,) each.
fn preference_loss(
    data: &TrainData,
    micro: &MicroBatch,
    config: &TrainConfig,
    chosen: &Tensor,
    rejected: &Tensor,
) -> Result<Tensor> {
    let margins: Option<Vec<f32>> = micro
        .pairs
        .iter()
        .map(|&pair| data.pairs[pair].margin)
        .collect();
    match config.loss {
        PreferenceLoss::Sigmoid => {
            let margin = margins
                .map(|m| Tensor::from_vec(m, micro.pairs.len(), chosen.device()))
                .transpose()?;
            Ok(loss::bradley_terry(chosen, rejected, margin.as_ref())?)
        }
        PreferenceLoss::Logexp => Ok(loss::log_exp(chosen, rejected)?),
    }
}

/// The part of `negative`'s response from the first token where it differs from `chosen` on
/// (its whole response when they differ from the start; its last token when it is a prefix of
/// `chosen` or equal to it, so a goal can always be drawn).
pub fn divergent_span(chosen: &Encoded, negative: &Encoded) -> ResponseSpan {
    let whole = ResponseSpan::of(negative);
    let common = chosen
        .input_ids
        .iter()
        .zip(&negative.input_ids)
        .take_while(|(a, b)| a == b)
        .count();
    ResponseSpan {
        start: common.clamp(whole.start, whole.end.saturating_sub(1)),
        end: whole.end,
    }
}

/// The contrastive term of a micro-batch: positions drawn as `draws` say in each chosen response
/// and its negative (`negatives[i]`, the row after the chosen ones in `hidden` that holds it:
/// the rejected response, or the random one under [`GoalStrategy::Random`]). The paper form is
/// a mean over pairs already (every pair has the same number of samples); the reference form's
/// means are over the micro-batch, or per pair under [`Draws::PerPair`].
///
/// # Shapes
/// `hidden`: (R, L, H) f32, rows as [`micro_batch_loss`] lays them out → scalar.
fn contrastive_loss(
    data: &TrainData,
    micro: &MicroBatch,
    negatives: &[&Encoded],
    hidden: &Tensor,
    config: &TrainConfig,
    sampling: &SamplingConfig,
    draws: Draws,
) -> Result<Tensor> {
    let count = micro.pairs.len();
    let mut positions: Vec<ContrastivePositions> = Vec::with_capacity(count);
    let first_stream = match draws {
        Draws::Micro(stream) | Draws::PerPair(stream) => stream,
    };
    let mut shared = micro_rng(config.seed, first_stream);
    for (index, (&pair, negative)) in micro.pairs.iter().zip(negatives).enumerate() {
        let mut own;
        let rng = match draws {
            Draws::Micro(_) => &mut shared,
            Draws::PerPair(first) => {
                own = micro_rng(config.seed, first + index as u64);
                &mut own
            }
        };
        let chosen = &data.pairs[pair].chosen;
        let chosen_span = ResponseSpan::of(chosen);
        let negative_span = match config.negative_goals {
            NegativeGoals::Anywhere => ResponseSpan::of(negative),
            NegativeGoals::AfterDivergence => divergent_span(chosen, negative),
        };
        positions.push(match config.contrastive {
            ContrastiveForm::Reference => {
                sample_reference(rng, chosen_span, negative_span, sampling)
            }
            ContrastiveForm::Paper => sample_paper(rng, chosen_span, negative_span, sampling),
        });
    }
    let chosen_hidden = hidden.narrow(0, 0, count)?; // (B, L, H)
    let negative_hidden = match config.goal_strategy {
        GoalStrategy::Random => hidden.narrow(0, 2 * count, count)?,
        _ => hidden.narrow(0, count, count)?,
    }; // (B, L, H)
    let column = |pick: fn(&ContrastivePositions) -> &Vec<u32>| -> Vec<Vec<u32>> {
        positions.iter().map(|p| pick(p).clone()).collect()
    };
    let positive_sources =
        loss::gather_positions(&chosen_hidden, &column(|p| &p.positive_sources))?;
    let mut positive_goals =
        loss::gather_positions(&chosen_hidden, &column(|p| &p.positive_goals))?;
    let negative_sources =
        loss::gather_positions(&chosen_hidden, &column(|p| &p.negative_sources))?;
    let mut negative_goals =
        loss::gather_positions(&negative_hidden, &column(|p| &p.negative_goals))?;
    if config.goal_strategy == GoalStrategy::Avg {
        positive_goals = loss::average_goals(&positive_goals)?; // (B, 1, H)
        negative_goals = loss::average_goals(&negative_goals)?; // (B, 1, H)
    }
    let form: fn(&Tensor, &Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor> =
        match (config.contrastive, draws) {
            (ContrastiveForm::Reference, Draws::Micro(_)) => loss::contrastive_reference,
            (ContrastiveForm::Reference, Draws::PerPair(_)) => {
                |ps, pg, ns, ng| loss::contrastive_reference_per_pair(ps, pg, ns, ng)?.mean_all()
            }
            (ContrastiveForm::Paper, _) => loss::contrastive_paper,
        };
    Ok(form(
        &positive_sources,
        &positive_goals,
        &negative_sources,
        &negative_goals,
    )?)
}

/// The pair order of `epoch`: a permutation seeded by (seed, epoch).
fn epoch_order(pairs: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pairs).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    order.shuffle(&mut rng);
    order
}

/// The RNG of micro-batch `index` (global, counted over the run): seeded by (seed, index).
fn micro_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_0FC0_172A_5700);
    rng.set_stream(index);
    rng
}

/// Each pair's `(rows, longest row)` in a micro-batch: its chosen and rejected responses, and
/// its random negative when `negatives` has one per pair, for [`plan_in_order`].
fn pair_sizes(
    data: &TrainData,
    pairs: &[usize],
    negatives: &[(usize, usize)],
) -> Vec<(usize, usize)> {
    pairs
        .iter()
        .enumerate()
        .map(|(index, &pair)| {
            let encoded = &data.pairs[pair];
            let mut rows = 2;
            let mut longest = encoded
                .chosen
                .input_ids
                .len()
                .max(encoded.rejected.input_ids.len());
            if let Some(&(other, side)) = negatives.get(index) {
                rows += 1;
                longest = longest.max(response(data, other, side).0.input_ids.len());
            }
            (rows, longest)
        })
        .collect()
}

/// The micro-batches of optimiser step `step`: the step's `batch_size` pairs in data order, in
/// runs of `micro_batch` pairs or packed by `micro_batch_tokens`.
fn step_micro_batches(
    data: &TrainData,
    config: &TrainConfig,
    step: usize,
    steps_per_epoch: usize,
) -> Vec<MicroBatch> {
    let data_len = data.pairs.len();
    let epoch = step / steps_per_epoch;
    let order = epoch_order(data_len, config.seed, epoch);
    let first = (step % steps_per_epoch) * config.batch_size;
    let pairs: Vec<usize> = (0..config.batch_size)
        .map(|offset| order[(first + offset) % data_len])
        .collect();
    let mut rng = micro_rng(config.seed, u64::MAX - step as u64);
    let random_negatives: Vec<(usize, usize)> =
        if config.goal_strategy == GoalStrategy::Random && config.objective == Objective::Q {
            pairs
                .iter()
                .map(|&pair| {
                    // Any response of another pair, chosen or rejected.
                    let mut other = rng.random_range(0..data_len);
                    if data_len > 1 && other == pair {
                        other = (other + 1) % data_len;
                    }
                    (other, rng.random_range(0..2))
                })
                .collect()
        } else {
            Vec::new()
        };
    let runs: Vec<std::ops::Range<usize>> = match config.micro_batch_tokens {
        None => (0..config.batch_size / config.micro_batch)
            .map(|micro| micro * config.micro_batch..(micro + 1) * config.micro_batch)
            .collect(),
        Some(budget) => plan_in_order(&pair_sizes(data, &pairs, &random_negatives), budget),
    };
    runs.into_iter()
        .map(|run| MicroBatch {
            first: run.start,
            pairs: pairs[run.clone()].to_vec(),
            random_negatives: random_negatives
                .get(run)
                .map_or_else(Vec::new, <[_]>::to_vec),
        })
        .collect()
}

/// The gradient norm of every trainable weight after one backward pass of the first
/// micro-batch of step 0 (0 where no gradient arrives): a check that gradients reach every
/// weight through the whole forward.
pub fn gradient_norms(
    model: &dyn TrainableRewardModel,
    data: &TrainData,
    config: &TrainConfig,
) -> Result<Vec<(String, f64)>> {
    config.validate()?;
    let steps_per_epoch = (data.pairs.len() / config.batch_size).max(1);
    let micro_batches = step_micro_batches(data, config, 0, steps_per_epoch);
    let Some(micro) = micro_batches.first() else {
        return Ok(Vec::new());
    };
    let draws = train_draws(config, 0, 0, micro);
    model.set_training_step(Some(0));
    let result = micro_batch_loss(model, data, micro, config, &config.sampling()?, draws);
    model.set_training_step(None);
    let store = result?.total.backward()?;
    model
        .trainable_variables()
        .into_iter()
        .map(|(name, var)| {
            let norm = match store.get(&var) {
                Some(gradient) => {
                    crate::train::optim::gradient_norm(std::slice::from_ref(gradient))?
                }
                None => 0.0,
            };
            Ok((name, norm))
        })
        .collect()
}

/// Scores `data` in micro-batches without gradients (positions from a fixed seed, so eval
/// contrastive losses are comparable across steps): chunks of `micro_batch` pairs, or packed by
/// `micro_batch_tokens` with per-pair draws as in training. The means weigh every pair alike.
pub fn evaluate(
    model: &dyn TrainableRewardModel,
    data: &TrainData,
    config: &TrainConfig,
) -> Result<EvalMetrics> {
    let sampling = config.sampling()?;
    model.set_training_step(None);
    let mut eval_config = config.clone();
    if eval_config.goal_strategy == GoalStrategy::Random {
        eval_config.goal_strategy = GoalStrategy::Single;
    }
    let mut rewards = Vec::with_capacity(2 * data.pairs.len());
    let mut labels = Vec::with_capacity(2 * data.pairs.len());
    let (mut wins, mut bt_sum, mut contrastive_sum, mut batches) = (0usize, 0.0, 0.0, 0usize);
    let all: Vec<usize> = (0..data.pairs.len()).collect();
    let runs: Vec<std::ops::Range<usize>> = match config.micro_batch_tokens {
        None => (0..all.len())
            .step_by(config.micro_batch.max(1))
            .map(|start| start..(start + config.micro_batch.max(1)).min(all.len()))
            .collect(),
        Some(budget) => plan_in_order(&pair_sizes(data, &all, &[]), budget),
    };
    for (index, run) in runs.into_iter().enumerate() {
        let micro = MicroBatch {
            first: run.start,
            pairs: run.collect(),
            random_negatives: Vec::new(),
        };
        let chunk = &micro.pairs;
        let draws = match config.micro_batch_tokens {
            None => Draws::Micro(index as u64),
            Some(_) => Draws::PerPair(micro.first as u64),
        };
        let mut measured = eval_config.clone();
        measured.objective = Objective::Q;
        let result = micro_batch_loss(model, data, &micro, &measured, &sampling, draws)?;
        wins += result
            .chosen_rewards
            .iter()
            .zip(&result.rejected_rewards)
            .filter(|(c, r)| c > r)
            .count();
        bt_sum += result.bt * chunk.len() as f64;
        contrastive_sum += result.contrastive.unwrap_or(0.0) * chunk.len() as f64;
        batches += chunk.len();
        rewards.extend(result.chosen_rewards.iter().map(|&r| r as f64));
        rewards.extend(result.rejected_rewards.iter().map(|&r| r as f64));
        labels.extend(std::iter::repeat_n(true, result.chosen_rewards.len()));
        labels.extend(std::iter::repeat_n(false, result.rejected_rewards.len()));
    }
    let count = batches.max(1) as f64;
    let mean = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    let variance =
        rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rewards.len().max(1) as f64;
    Ok(EvalMetrics {
        accuracy: wins as f64 / count,
        wins,
        pairs: batches,
        loss_bt: bt_sum / count,
        loss_contrastive: contrastive_sum / count,
        reward_mean: mean,
        reward_std: variance.sqrt(),
        auroc: crate::metrics::auroc::auroc(&rewards, &labels),
    })
}

fn save_state(
    directory: &Path,
    optimiser: &AdamW,
    step: usize,
    config: &TrainConfig,
    identity: &BTreeMap<String, String>,
) -> Result<()> {
    fs_err::create_dir_all(directory).map_err(|e| Error::io(directory, e))?;
    // The f32 masters of a mixed-precision run, so a resumed run continues exactly.
    save_tensors(&optimiser.weights(), &directory.join(STATE_WEIGHTS))?;
    save_tensors(&optimiser.state(), &directory.join(STATE_OPTIMISER))?;
    let state = ResumeState {
        step,
        config: config.clone(),
        identity: identity.clone(),
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Model(e.to_string()))?;
    let path = directory.join(STATE_JSON);
    crate::pipeline::io::write_atomic(&path, |writer| {
        writer.write_all(&json).map_err(|e| Error::io(&path, e))
    })
}

/// Each key whose value differs between a saved identity and the current one, as
/// "key: saved → now" (a key absent on one side shows as "none").
fn identity_changes(
    saved: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Vec<String> {
    let keys: BTreeSet<&String> = saved.keys().chain(current.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let (was, now) = (saved.get(key), current.get(key));
            (was != now).then(|| {
                let show = |value: Option<&String>| {
                    value.map_or("none".to_owned(), |v| {
                        if v.len() == 64 {
                            short_hash(v)
                        } else {
                            v.clone()
                        }
                    })
                };
                format!("{key} changed ({} → {})", show(was), show(now))
            })
        })
        .collect()
}

/// Writes tensors to a safetensors file atomically (temp file + rename).
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let temporary = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &temporary)?;
    fs_err::rename(&temporary, path).map_err(|e| Error::io(path, e))
}

fn load_state(
    directory: &Path,
    optimiser: &mut AdamW,
    config: &TrainConfig,
    identity: &BTreeMap<String, String>,
) -> Result<usize> {
    let json_path = directory.join(STATE_JSON);
    let text = fs_err::read_to_string(&json_path).map_err(|e| Error::io(&json_path, e))?;
    let state: ResumeState = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: json_path.clone(),
        message: e.to_string(),
    })?;
    let changed = identity_changes(&state.identity, identity);
    if !changed.is_empty() {
        return Err(Error::Usage(format!(
            "{}: --resume would continue different work: {}; delete {} to start over",
            json_path.display(),
            changed.join("; "),
            directory.display()
        )));
    }
    let mut expected = config.clone();
    expected.max_steps = state.config.max_steps;
    expected.eval_every = state.config.eval_every;
    expected.save_every = state.config.save_every;
    // Checkpointing changes the memory held, not the gradients.
    expected.checkpoint_layers = state.config.checkpoint_layers;
    if expected != state.config {
        return Err(Error::Usage(format!(
            "{}: the run being resumed used different settings: {:?}",
            json_path.display(),
            state.config
        )));
    }
    let device = optimiser
        .params()
        .first()
        .map(|(_, var)| var.device().clone())
        .unwrap_or(Device::Cpu);
    let weights = candle_core::safetensors::load(directory.join(STATE_WEIGHTS), &device)?;
    optimiser
        .load_weights(&weights)
        .map_err(|e| Error::Model(format!("{}: {e}", directory.join(STATE_WEIGHTS).display())))?;
    let moments = candle_core::safetensors::load(directory.join(STATE_OPTIMISER), &device)?;
    optimiser.load_state(&moments, state.step)?;
    Ok(state.step)
}

/// The sums over one optimiser step's pairs, for the log row.
#[derive(Debug, Default)]
struct StepTotals {
    loss: f64,
    bt: f64,
    contrastive: f64,
    wins: usize,
    pairs: usize,
    tokens: usize,
}

/// Forward and backward passes over one step's micro-batches: the gradient of each trainable
/// variable (zeros for one the loss does not reach), summed over micro-batches of a loss (a mean
/// over the micro-batch's pairs) scaled by its pairs / batch_size (1/accumulation for
/// `--micro-batch`), so the step is that of the mean loss over the whole batch however the pairs
/// are packed. The totals are sums over pairs (each micro-batch's means times its pairs).
fn accumulate_gradients(
    model: &dyn TrainableRewardModel,
    data: &TrainData,
    config: &TrainConfig,
    sampling: &SamplingConfig,
    step: usize,
    steps_per_epoch: usize,
    optimiser: &AdamW,
) -> Result<(Vec<Tensor>, StepTotals)> {
    let micro_batches = step_micro_batches(data, config, step, steps_per_epoch);
    model.set_training_step(Some(step));
    let mut gradients: Vec<Option<Tensor>> = vec![None; optimiser.params().len()];
    let mut totals = StepTotals::default();
    let stack = match config.checkpoint_layers {
        true => Some(model.layer_stack().ok_or_else(checkpointing::unsupported)?),
        false => None,
    };
    for (index, micro) in micro_batches.iter().enumerate() {
        let draws = train_draws(config, step, index, micro);
        let count = micro.pairs.len() as f64;
        // pairs / batch_size; for `--micro-batch` exactly 1/accumulation (both are 1/k rounded).
        let weight = count / config.batch_size as f64;
        let mut absorb = |store: &candle_core::backprop::GradStore| -> Result<()> {
            // The step's graph and gradients are all alive here: the moment of its peak.
            crate::memory::sample_device_memory(model.device());
            for (slot, (_, var)) in gradients.iter_mut().zip(optimiser.params()) {
                if let Some(gradient) = store.get(var) {
                    // Summed in the optimiser's dtype: f32 for a bf16 model.
                    let gradient = gradient.to_dtype(state_dtype(var.dtype()))?;
                    *slot = Some(match slot.take() {
                        Some(sum) => (sum + gradient)?,
                        None => gradient,
                    });
                }
            }
            Ok(())
        };
        let result = match &stack {
            None => {
                let result = micro_batch_loss(model, data, micro, config, sampling, draws)?;
                absorb(&(&result.total * weight)?.backward()?)?;
                result
            }
            Some(stack) => {
                let batch = micro_batch_input(data, micro, model.device())?;
                let mut result = None;
                let mut loss = |output: &RewardOutput| -> Result<Tensor> {
                    let micro_loss =
                        micro_batch_loss_of(data, micro, config, sampling, draws, &batch, output)?;
                    let weighted = (&micro_loss.total * weight)?;
                    result = Some(micro_loss);
                    Ok(weighted)
                };
                stack.backward(&batch.input, &mut loss, &mut absorb)?;
                result.ok_or_else(|| Error::Model("the checkpointed loss was not built".into()))?
            }
        };
        totals.loss += result.total.to_dtype(DType::F64)?.to_scalar::<f64>()? * count;
        totals.bt += result.bt * count;
        totals.contrastive += result.contrastive.unwrap_or(0.0) * count;
        totals.wins += result
            .chosen_rewards
            .iter()
            .zip(&result.rejected_rewards)
            .filter(|(c, r)| c > r)
            .count();
        totals.pairs += micro.pairs.len();
        totals.tokens += result.tokens;
    }
    let gradients = gradients
        .into_iter()
        .zip(optimiser.params())
        .map(|(gradient, (_, var))| match gradient {
            Some(gradient) => Ok(gradient),
            None => var
                .as_tensor()
                .zeros_like()?
                .to_dtype(state_dtype(var.dtype())),
        })
        .collect::<candle_core::Result<_>>()?;
    Ok((gradients, totals))
}

/// The gradients of training step `step` as the optimiser receives them (summed over the step's
/// micro-batches, before clipping), by trainable variable: what `--checkpoint-layers` must not
/// change.
pub fn step_gradients(
    model: &dyn TrainableRewardModel,
    data: &TrainData,
    config: &TrainConfig,
    step: usize,
) -> Result<Vec<(String, Tensor)>> {
    config.validate()?;
    let optimiser = AdamW::new(model.trainable_variables(), AdamWConfig::default())?;
    let steps_per_epoch = (data.pairs.len() / config.batch_size).max(1);
    let sampling = config.sampling()?;
    let (gradients, _) = accumulate_gradients(
        model,
        data,
        config,
        &sampling,
        step,
        steps_per_epoch,
        &optimiser,
    )?;
    model.set_training_step(None);
    Ok(optimiser
        .params()
        .iter()
        .map(|(name, _)| name.clone())
        .zip(gradients)
        .collect())
}

/// Evaluates on the eval pairs and records the metrics in the step's log row.
fn evaluate_into(
    row: &mut LogRow,
    model: &dyn TrainableRewardModel,
    eval_data: &TrainData,
    config: &TrainConfig,
) -> Result<EvalMetrics> {
    let metrics = evaluate(model, eval_data, config)?;
    row.eval_accuracy = Some(metrics.accuracy);
    row.eval_wins = Some(metrics.wins);
    row.eval_pairs = Some(metrics.pairs);
    row.eval_loss = Some(metrics.loss_bt);
    row.eval_contrastive = Some(metrics.loss_contrastive);
    row.eval_reward_mean = Some(metrics.reward_mean);
    row.eval_reward_std = Some(metrics.reward_std);
    row.eval_auroc = metrics.auroc;
    tracing::info!(
        "step {}: eval accuracy {:.4}, pooled AUROC {:.4}, BT loss {:.4}, contrastive {:.4}",
        row.step,
        metrics.accuracy,
        metrics.auroc.unwrap_or(f64::NAN),
        metrics.loss_bt,
        metrics.loss_contrastive
    );
    Ok(metrics)
}

/// The JSONL step log: appended to when resuming, else started afresh.
struct StepLog {
    writer: std::io::BufWriter<fs_err::File>,
    path: PathBuf,
}

impl StepLog {
    fn open(path: &Path, resume: bool) -> Result<StepLog> {
        let file = fs_err::OpenOptions::new()
            .create(true)
            .append(resume)
            .write(true)
            .truncate(!resume)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(StepLog {
            writer: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
        })
    }

    /// Writes one row and flushes, so the log is complete up to the last finished step.
    fn write(&mut self, row: &LogRow) -> Result<()> {
        let line = serde_json::to_string(row).map_err(|e| Error::Model(e.to_string()))?;
        writeln!(self.writer, "{line}")
            .and_then(|_| self.writer.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// The optimiser over the model's trainable weights and the first step: 0, or with `resume`
/// and a saved state in `state_directory`, the saved step with the saved weights and moments.
fn resume_optimiser(
    model: &dyn TrainableRewardModel,
    config: &TrainConfig,
    options: &RunOptions<'_>,
    state_directory: &Path,
    total_steps: usize,
) -> Result<(AdamW, usize)> {
    let mut optimiser = AdamW::new(
        model.trainable_variables(),
        AdamWConfig {
            weight_decay: config.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let first_step = if options.resume && state_directory.join(STATE_JSON).exists() {
        let step = load_state(state_directory, &mut optimiser, config, &options.identity)?;
        tracing::info!("resuming at step {step} of {total_steps}");
        step
    } else {
        0
    };
    Ok((optimiser, first_step))
}

/// Warns, once for the run, when training pairs are over the token budget on their own (each
/// goes in a micro-batch of its own): their chosen and rejected rows padded to the longer, a
/// random negative (drawn per step) aside.
fn warn_over_budget(data: &TrainData, budget: usize) {
    let all: Vec<usize> = (0..data.pairs.len()).collect();
    let over: Vec<usize> = pair_sizes(data, &all, &[])
        .into_iter()
        .map(|(rows, longest)| rows * longest)
        .filter(|&padded| padded > budget)
        .collect();
    if let Some(largest) = over.iter().max() {
        tracing::warn!(
            "{} of {} training pairs are over --micro-batch-tokens {budget} on their own (the \
             largest {largest} padded tokens); each goes in a micro-batch of its own",
            over.len(),
            data.pairs.len()
        );
    }
}

/// Runs (or resumes) training; writes the resumable state under `options.output/state/`.
pub fn train(
    model: &dyn TrainableRewardModel,
    train_data: &TrainData,
    eval_data: Option<&TrainData>,
    config: &TrainConfig,
    mut options: RunOptions<'_>,
) -> Result<TrainSummary> {
    // Setup: settings, schedule, optimiser, and the saved state when resuming.
    config.validate()?;
    if train_data.pairs.is_empty() {
        return Err(Error::Usage("no training pairs".into()));
    }
    let sampling = config.sampling()?;
    let total_steps = config.total_steps(train_data.pairs.len());
    let steps_per_epoch = (train_data.pairs.len() / config.batch_size).max(1);
    let schedule = CosineSchedule::new(config.learning_rate, total_steps, config.warmup_fraction);
    let state_directory = options.output.join(STATE_DIR);
    let (mut optimiser, first_step) =
        resume_optimiser(model, config, &options, &state_directory, total_steps)?;
    let mut log = options
        .log
        .map(|path| StepLog::open(path, options.resume))
        .transpose()?;
    let progress = crate::cli::progress_bar(total_steps as u64, "training", options.quiet);
    progress.set_position(first_step as u64);
    if let Some(budget) = config.micro_batch_tokens {
        warn_over_budget(train_data, budget);
    }
    let (mut last_row, mut last_eval) = (None, None);

    for step in first_step..total_steps {
        // 1. Forward and backward over the micro-batches, gradients accumulated.
        let started = Instant::now();
        let (mut gradients, totals) = accumulate_gradients(
            model,
            train_data,
            config,
            &sampling,
            step,
            steps_per_epoch,
            &optimiser,
        )?;
        // 2. Clip and step.
        let grad_norm = clip_gradient_norm(&mut gradients, config.max_grad_norm)?;
        let learning_rate = schedule.learning_rate(step);
        optimiser.step(&gradients, learning_rate)?;
        let elapsed = started.elapsed().as_secs_f64();
        let mut row = LogRow {
            step: step + 1,
            epoch: (step + 1) as f64 / steps_per_epoch as f64,
            loss: totals.loss / totals.pairs.max(1) as f64,
            loss_bt: totals.bt / totals.pairs.max(1) as f64,
            loss_contrastive: (config.objective == Objective::Q)
                .then_some(totals.contrastive / totals.pairs.max(1) as f64),
            accuracy: totals.wins as f64 / totals.pairs.max(1) as f64,
            learning_rate,
            grad_norm,
            tokens_per_s: totals.tokens as f64 / elapsed.max(1e-9),
            peak_rss_mib: crate::memory::peak_rss_mib(),
            peak_device_mib: crate::memory::peak_device_mib(),
            ..LogRow::default()
        };
        // 3. Evaluate every `eval_every` steps and at the end; log the step.
        let done = step + 1 == total_steps;
        if let Some(eval_data) = eval_data {
            if done || (config.eval_every > 0 && (step + 1) % config.eval_every == 0) {
                last_eval = Some(evaluate_into(&mut row, model, eval_data, config)?);
            }
        }
        if let Some(log) = log.as_mut() {
            log.write(&row)?;
        }
        // 4. Save the resumable state every `save_every` steps, at the end, and when stopped.
        let keep_going = options
            .on_step
            .as_mut()
            .is_none_or(|callback| callback(&row));
        let periodic = config.save_every > 0 && (step + 1) % config.save_every == 0;
        if done || periodic || !keep_going {
            save_state(
                &state_directory,
                &optimiser,
                step + 1,
                config,
                &options.identity,
            )?;
        }
        progress.set_message(format!("loss {:.4} acc {:.2}", row.loss, row.accuracy));
        progress.inc(1);
        last_row = Some(row);
        if !keep_going {
            break;
        }
    }
    progress.finish_and_clear();
    model.set_training_step(None);
    // Resuming a finished run trains nothing; its summary still evaluates the saved weights, so
    // rewriting train_config.json does not lose the eval metrics.
    if last_row.is_none() && first_step == total_steps {
        if let Some(eval_data) = eval_data {
            last_eval = Some(evaluate(model, eval_data, config)?);
        }
    }
    Ok(TrainSummary {
        steps: last_row.as_ref().map_or(first_step, |row| row.step),
        last: last_row,
        eval: last_eval,
    })
}

/// Directory of the resumable state of a run written to `output`.
pub fn state_directory(output: &Path) -> PathBuf {
    output.join(STATE_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small causal model: hidden_t = tanh(mean(E[x_0..=t])·W), value_t = hidden_t·h.
    /// With a cached trunk, the trunk output is the embedding lookup.
    struct Toy {
        embedding: Var,
        mix: Var,
        head: Var,
        device: Device,
    }

    impl Toy {
        fn new(seed: u64) -> Toy {
            let device = Device::Cpu;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut var = |rows: usize, columns: usize, scale: f32| {
                let values: Vec<f32> = (0..rows * columns)
                    .map(|_| (rng.random::<f32>() - 0.5) * scale)
                    .collect();
                Var::from_tensor(&Tensor::from_vec(values, (rows, columns), &device).unwrap())
                    .unwrap()
            };
            Toy {
                embedding: var(16, 8, 1.0),
                mix: var(8, 8, 1.0),
                head: var(8, 1, 0.2),
                device,
            }
        }

        fn trunk(&self, ids: &[u32]) -> Tensor {
            let ids = Tensor::new(ids, &self.device).unwrap();
            self.embedding.as_tensor().index_select(&ids, 0).unwrap()
        }
    }

    impl Toy {
        fn after_embedding(&self, embedded: &Tensor) -> Result<RewardOutput> {
            let (_, seq_len, _) = embedded.dims3()?; // (B, L, 8)
            let counts = Tensor::arange(1f32, seq_len as f32 + 1.0, &self.device)?
                .reshape((1, seq_len, 1))?;
            let mean = embedded.cumsum(1)?.broadcast_div(&counts)?; // (B, L, 8)
            let hidden = mean.broadcast_matmul(self.mix.as_tensor())?.tanh()?; // (B, L, 8)
            let token_rewards = hidden.broadcast_matmul(self.head.as_tensor())?.squeeze(2)?; // (B, L)
            Ok(RewardOutput {
                hidden,
                token_rewards,
            })
        }
    }

    impl TokenModel for Toy {
        fn forward(&self, input_ids: &Tensor, _attention_mask: &Tensor) -> Result<RewardOutput> {
            let (batch, seq_len) = input_ids.dims2()?;
            let embedded = self
                .embedding
                .as_tensor()
                .index_select(&input_ids.flatten_all()?, 0)?
                .reshape((batch, seq_len, 8))?; // (B, L, 8)
            self.after_embedding(&embedded)
        }

        fn device(&self) -> &Device {
            &self.device
        }
    }

    impl TrainableRewardModel for Toy {
        fn forward_batch(&self, input: &BatchInput) -> Result<RewardOutput> {
            match &input.trunk_hidden {
                Some(hidden) => self.after_embedding(hidden),
                None => self.forward(&input.input_ids, &input.attention_mask),
            }
        }

        fn trainable_variables(&self) -> Vec<(String, Var)> {
            vec![
                ("embed.weight".into(), self.embedding.clone()),
                ("mix.weight".into(), self.mix.clone()),
                ("head.weight".into(), self.head.clone()),
            ]
        }
    }

    /// Chosen responses contain token 5, rejected ones token 6; both end with EOS 2.
    fn easy_pairs(count: usize, seed: u64) -> Vec<EncodedPair> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let response = |prompt: &[u32], marker: u32, rng: &mut ChaCha8Rng| {
            let mut ids = prompt.to_vec();
            let length = rng.random_range(3..9);
            let marker_at = rng.random_range(0..length);
            for position in 0..length {
                ids.push(if position == marker_at {
                    marker
                } else {
                    rng.random_range(7..16)
                });
            }
            ids.push(2);
            Encoded {
                input_ids: ids,
                response_start: prompt.len(),
                ..Encoded::default()
            }
        };
        (0..count)
            .map(|_| {
                let prompt: Vec<u32> = (0..rng.random_range(2..5))
                    .map(|_| rng.random_range(1..5))
                    .collect();
                EncodedPair {
                    chosen: response(&prompt, 5, &mut rng),
                    rejected: response(&prompt, 6, &mut rng),
                    margin: None,
                }
            })
            .collect()
    }

    fn config(objective: Objective) -> TrainConfig {
        TrainConfig {
            objective,
            learning_rate: 0.05,
            batch_size: 4,
            micro_batch: 2,
            max_steps: Some(30),
            positives: 4,
            negatives: 4,
            ..TrainConfig::default()
        }
    }

    fn options(output: &Path) -> RunOptions<'_> {
        RunOptions {
            output,
            resume: false,
            log: None,
            quiet: true,
            on_step: None,
            identity: BTreeMap::new(),
        }
    }

    #[test]
    fn every_trainable_weight_gets_a_gradient_in_both_objectives() {
        let data = TrainData {
            pairs: easy_pairs(4, 1),
            trunk: None,
        };
        for objective in [Objective::Bt, Objective::Q] {
            let model = Toy::new(3);
            let config = config(objective);
            let micro = MicroBatch {
                first: 0,
                pairs: vec![0, 1],
                random_negatives: Vec::new(),
            };
            let result = micro_batch_loss(
                &model,
                &data,
                &micro,
                &config,
                &config.sampling().unwrap(),
                Draws::Micro(0),
            )
            .unwrap();
            let gradients = result.total.backward().unwrap();
            for (name, var) in model.trainable_variables() {
                let gradient = gradients
                    .get(&var)
                    .unwrap_or_else(|| panic!("{name}: no gradient"));
                let norm = gradient
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm > 0.0, "{objective:?}: {name} has a zero gradient");
            }
        }
    }

    #[test]
    fn both_objectives_learn_an_easy_preference() {
        let train_data = TrainData {
            pairs: easy_pairs(64, 2),
            trunk: None,
        };
        let eval_data = TrainData {
            pairs: easy_pairs(32, 3),
            trunk: None,
        };
        for objective in [Objective::Bt, Objective::Q] {
            let model = Toy::new(4);
            let before = evaluate(&model, &eval_data, &config(objective)).unwrap();
            let directory = tempfile::tempdir().unwrap();
            let summary = train(
                &model,
                &train_data,
                Some(&eval_data),
                &config(objective),
                options(directory.path()),
            )
            .unwrap();
            let after = summary.eval.unwrap();
            assert!(
                after.loss_bt < before.loss_bt,
                "{objective:?}: {before:?} → {after:?}"
            );
            assert!(
                after.accuracy >= 0.9,
                "{objective:?}: eval accuracy {}",
                after.accuracy
            );
        }
    }

    /// One micro-batch of four easy pairs on the same toy model, under the plain BT config and
    /// under `other`: (plain, other).
    fn four_pair_losses(other: TrainConfig) -> (MicroLoss, MicroLoss) {
        let data = TrainData {
            pairs: easy_pairs(4, 1),
            trunk: None,
        };
        let micro = MicroBatch {
            first: 0,
            pairs: vec![0, 1, 2, 3],
            random_negatives: Vec::new(),
        };
        let model = Toy::new(3);
        let plain = config(Objective::Bt);
        let sampling = plain.sampling().unwrap();
        let loss = |config: &TrainConfig| {
            micro_batch_loss(&model, &data, &micro, config, &sampling, Draws::Micro(0)).unwrap()
        };
        (loss(&plain), loss(&other))
    }

    #[test]
    fn cross_pairs_adds_the_term_over_different_pairs() {
        let (without, with) = four_pair_losses(TrainConfig {
            cross_pairs: 0.25,
            ..config(Objective::Bt)
        });
        // total = BT + 0.25 · mean over the 12 combinations i ≠ j of log(1 + exp(r_r,j − r_c,i)),
        // from the rewards the micro-batch reports.
        let mut cross = 0.0;
        for (i, c) in without.chosen_rewards.iter().enumerate() {
            for (j, r) in without.rejected_rewards.iter().enumerate() {
                if i != j {
                    cross += (1.0 + ((r - c) as f64).exp()).ln();
                }
            }
        }
        cross /= 12.0;
        let total = with.total.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (total - (without.bt + 0.25 * cross)).abs() < 1e-5,
            "{total} vs {} + 0.25 · {cross}",
            without.bt
        );
        assert_eq!(
            with.bt, without.bt,
            "the logged BT term stays the pair term"
        );
        for weight in [-0.5, f64::NAN] {
            let bad = TrainConfig {
                cross_pairs: weight,
                ..config(Objective::Bt)
            };
            assert!(matches!(bad.validate(), Err(Error::Usage(_))), "{weight}");
        }
    }

    #[test]
    fn center_rewards_adds_its_term_and_centres_the_rewards() {
        let plain = config(Objective::Bt);
        let centred = TrainConfig {
            center_rewards: 0.5,
            ..config(Objective::Bt)
        };
        let (without, with) = four_pair_losses(centred.clone());
        // total = BT + 0.5 · mean (r_c + r_r)², from the rewards the micro-batch reports.
        let centering: f64 = without
            .chosen_rewards
            .iter()
            .zip(&without.rejected_rewards)
            .map(|(c, r)| ((c + r) as f64).powi(2))
            .sum::<f64>()
            / 4.0;
        let total = with.total.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (total - (without.bt + 0.5 * centering)).abs() < 1e-5,
            "{total} vs {} + 0.5 · {centering}",
            without.bt
        );
        // Trained with and without it, on the easy preference: centring pulls the eval rewards'
        // mean toward zero and keeps the ranking.
        let train_data = TrainData {
            pairs: easy_pairs(64, 2),
            trunk: None,
        };
        let eval_data = TrainData {
            pairs: easy_pairs(32, 3),
            trunk: None,
        };
        let mut means = Vec::new();
        for config in [plain, centred] {
            let model = Toy::new(4);
            let directory = tempfile::tempdir().unwrap();
            let summary = train(
                &model,
                &train_data,
                Some(&eval_data),
                &config,
                options(directory.path()),
            )
            .unwrap();
            let eval = summary.eval.unwrap();
            assert!(eval.accuracy >= 0.9, "{config:?}: {eval:?}");
            means.push(eval.reward_mean.abs());
        }
        assert!(means[1] < means[0], "|eval reward mean| {means:?}");
    }

    #[test]
    fn divergent_span_starts_where_the_negative_differs() {
        let row = |ids: &[u32], start: usize| Encoded {
            input_ids: ids.to_vec(),
            response_start: start,
            ..Encoded::default()
        };
        // Prompt [1, 2], responses [3, 4, 5, 2] and [3, 4, 9, 9, 2]: index 4 differs first.
        let chosen = row(&[1, 2, 3, 4, 5, 2], 2);
        let negative = row(&[1, 2, 3, 4, 9, 9, 2], 2);
        assert_eq!(
            divergent_span(&chosen, &negative),
            ResponseSpan { start: 4, end: 7 }
        );
        // Different from the first response token: the whole response.
        let other = row(&[1, 2, 7, 4, 5, 2], 2);
        assert_eq!(
            divergent_span(&chosen, &other),
            ResponseSpan { start: 2, end: 6 }
        );
        // Equal rows, or a negative that is a prefix of the chosen: its last token only.
        assert_eq!(
            divergent_span(&chosen, &chosen),
            ResponseSpan { start: 5, end: 6 }
        );
        let prefix = row(&[1, 2, 3, 4], 2);
        assert_eq!(
            divergent_span(&chosen, &prefix),
            ResponseSpan { start: 3, end: 4 }
        );
        // Sampled negative goals then all lie in the divergent part.
        let config = TrainConfig {
            negatives: 64,
            ..config(Objective::Q)
        };
        let span = divergent_span(&chosen, &negative);
        for form in [sample_reference, sample_paper] {
            let positions = form(
                &mut micro_rng(0, 0),
                ResponseSpan::of(&chosen),
                span,
                &config.sampling().unwrap(),
            );
            assert!(
                positions
                    .negative_goals
                    .iter()
                    .all(|&p| (4..7).contains(&p)),
                "{:?}",
                positions.negative_goals
            );
        }
    }

    #[test]
    fn eval_auroc_pools_chosen_against_rejected_across_pairs() {
        let data = TrainData {
            pairs: easy_pairs(6, 4),
            trunk: None,
        };
        let model = Toy::new(5);
        let config = config(Objective::Bt);
        let metrics = evaluate(&model, &data, &config).unwrap();
        // The same rewards, pair by pair, and the Mann–Whitney count over every (chosen,
        // rejected) combination across pairs, ties ½.
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for index in 0..6 {
            let micro = MicroBatch {
                first: 0,
                pairs: vec![index],
                random_negatives: Vec::new(),
            };
            let result = micro_batch_loss(
                &model,
                &data,
                &micro,
                &config,
                &config.sampling().unwrap(),
                Draws::Micro(0),
            )
            .unwrap();
            chosen.push(result.chosen_rewards[0]);
            rejected.push(result.rejected_rewards[0]);
        }
        let mut wins = 0.0;
        for c in &chosen {
            for r in &rejected {
                wins += if (c - r).abs() < 1e-6 {
                    0.5
                } else if c > r {
                    1.0
                } else {
                    0.0
                };
            }
        }
        let auroc = metrics.auroc.unwrap();
        assert!((auroc - wins / 36.0).abs() < 1e-12, "{auroc} vs {wins}/36");
        let empty = TrainData {
            pairs: Vec::new(),
            trunk: None,
        };
        assert_eq!(evaluate(&model, &empty, &config).unwrap().auroc, None);
    }

    /// Every trainable tensor of `model`, flattened, in `trainable_variables` order.
    fn weights(model: &Toy) -> Vec<Vec<f32>> {
        model
            .trainable_variables()
            .iter()
            .map(|(_, var)| var.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    }

    #[test]
    fn resume_ends_with_the_same_weights_as_a_straight_run() {
        let data = TrainData {
            pairs: easy_pairs(12, 5),
            trunk: None,
        };
        let mut config = config(Objective::Q);
        config.max_steps = Some(6);
        config.goal_strategy = GoalStrategy::Random;
        let straight = Toy::new(6);
        let directory = tempfile::tempdir().unwrap();
        train(&straight, &data, None, &config, options(directory.path())).unwrap();

        let interrupted = tempfile::tempdir().unwrap();
        let first = Toy::new(6);
        let mut stop_at_three = |row: &LogRow| row.step < 3;
        let mut stopping = options(interrupted.path());
        stopping.on_step = Some(&mut stop_at_three);
        let halfway = train(&first, &data, None, &config, stopping).unwrap();
        assert_eq!(halfway.steps, 3);
        assert_ne!(weights(&first), weights(&straight));

        let resumed = Toy::new(99); // different initial weights: everything must come from the state
        let mut resuming = options(interrupted.path());
        resuming.resume = true;
        let summary = train(&resumed, &data, None, &config, resuming).unwrap();
        assert_eq!(summary.steps, 6);
        assert_eq!(weights(&resumed), weights(&straight));
    }

    /// The gradients and log totals of step 0 under `config`.
    fn step_gradients(
        model: &Toy,
        data: &TrainData,
        config: &TrainConfig,
    ) -> (Vec<Vec<f32>>, StepTotals) {
        let optimiser = AdamW::new(model.trainable_variables(), AdamWConfig::default()).unwrap();
        let steps_per_epoch = (data.pairs.len() / config.batch_size).max(1);
        let sampling = config.sampling().unwrap();
        let (gradients, totals) = accumulate_gradients(
            model,
            data,
            config,
            &sampling,
            0,
            steps_per_epoch,
            &optimiser,
        )
        .unwrap();
        let gradients = gradients
            .iter()
            .map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        (gradients, totals)
    }

    fn micro_sizes(data: &TrainData, config: &TrainConfig) -> Vec<usize> {
        let steps_per_epoch = (data.pairs.len() / config.batch_size).max(1);
        step_micro_batches(data, config, 0, steps_per_epoch)
            .iter()
            .map(|micro| micro.pairs.len())
            .collect()
    }

    fn assert_same_step(
        label: &str,
        (gradients, totals): &(Vec<Vec<f32>>, StepTotals),
        (expected, expected_totals): &(Vec<Vec<f32>>, StepTotals),
    ) {
        for (tensor, (got, want)) in gradients.iter().zip(expected).enumerate() {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "{label}: tensor {tensor}: {g} vs {w}");
            }
        }
        for (got, want) in [
            (totals.loss, expected_totals.loss),
            (totals.bt, expected_totals.bt),
            (totals.contrastive, expected_totals.contrastive),
        ] {
            assert!(
                (got - want).abs() < 1e-5,
                "{label}: {totals:?} vs {expected_totals:?}"
            );
        }
        assert_eq!(
            (totals.wins, totals.pairs, totals.tokens),
            (
                expected_totals.wins,
                expected_totals.pairs,
                expected_totals.tokens
            ),
            "{label}"
        );
    }

    /// One step with a token budget that splits the batch unevenly: the same gradients and
    /// log totals as one micro-batch holding the whole batch, and as `--micro-batch 1` (whose
    /// draws and per-pair contrastive loss the token budget uses), for both objectives, both
    /// contrastive forms and random negatives.
    #[test]
    fn a_token_budget_gives_the_step_of_one_whole_batch() {
        let data = TrainData {
            pairs: easy_pairs(12, 11),
            trunk: None,
        };
        let cases = [
            (
                Objective::Bt,
                ContrastiveForm::Reference,
                GoalStrategy::Single,
            ),
            (
                Objective::Q,
                ContrastiveForm::Reference,
                GoalStrategy::Single,
            ),
            (Objective::Q, ContrastiveForm::Paper, GoalStrategy::Single),
            (
                Objective::Q,
                ContrastiveForm::Reference,
                GoalStrategy::Random,
            ),
            (Objective::Q, ContrastiveForm::Paper, GoalStrategy::Avg),
        ];
        for (objective, contrastive, goal_strategy) in cases {
            let label = format!("{objective:?} {contrastive:?} {goal_strategy:?}");
            let single = TrainConfig {
                contrastive,
                goal_strategy,
                center_rewards: 0.1,
                batch_size: 6,
                micro_batch: 1,
                ..config(objective)
            };
            let packed = TrainConfig {
                micro_batch_tokens: Some(PACKED_BUDGET),
                ..single.clone()
            };
            let whole = TrainConfig {
                micro_batch_tokens: Some(100_000),
                ..single.clone()
            };
            assert_eq!(micro_sizes(&data, &whole), vec![6], "{label}");
            let sizes = micro_sizes(&data, &packed);
            assert!(
                sizes.len() > 1 && sizes.iter().any(|&n| n != sizes[0]),
                "{label}: {sizes:?} is not an uneven split"
            );
            let model = Toy::new(12);
            let expected = step_gradients(&model, &data, &whole);
            assert_same_step(&label, &step_gradients(&model, &data, &packed), &expected);
            assert_same_step(&label, &step_gradients(&model, &data, &single), &expected);
            if objective == Objective::Bt {
                // No contrastive term to pool: the fixed micro-batch of all six pairs too.
                let fixed = TrainConfig {
                    micro_batch: 6,
                    ..single.clone()
                };
                assert_same_step(&label, &step_gradients(&model, &data, &fixed), &expected);
            }
        }
    }

    /// Pairs whose chosen and rejected responses have the given lengths in tokens.
    fn sized_pairs(lengths: &[(usize, usize)]) -> TrainData {
        let encoded = |length: usize| Encoded {
            input_ids: (0..length as u32).map(|i| 7 + i % 8).collect(),
            response_start: 1,
            ..Encoded::default()
        };
        TrainData {
            pairs: lengths
                .iter()
                .map(|&(chosen, rejected)| EncodedPair {
                    chosen: encoded(chosen),
                    rejected: encoded(rejected),
                    margin: None,
                })
                .collect(),
            trunk: None,
        }
    }

    #[test]
    fn a_step_is_packed_in_data_order_within_the_token_budget() {
        let data = sized_pairs(&[(4, 6), (3, 3), (10, 2), (2, 5), (5, 5)]);
        let config = TrainConfig {
            batch_size: 5,
            seed: 42,
            micro_batch_tokens: Some(20),
            ..config(Objective::Bt)
        };
        // The step's data order, as without a budget (epoch 0 under seed 42).
        assert_eq!(epoch_order(5, 42, 0), vec![0, 4, 1, 3, 2]);
        let fixed = TrainConfig {
            micro_batch: 5,
            micro_batch_tokens: None,
            ..config.clone()
        };
        assert_eq!(
            step_micro_batches(&data, &fixed, 0, 1)[0].pairs,
            vec![0, 4, 1, 3, 2]
        );
        // (rows, longest) in that order: (2, 6) (2, 5) (2, 3) (2, 5) (2, 10). Budget 20:
        // 0: 12, +4 → 4 × 6 = 24 > 20 | 4: 10, +1 → 4 × 5 = 20 | +3 → 6 × 5 = 30 > 20 |
        // 3: 10, +2 → 4 × 10 = 40 > 20 | 2: 2 × 10 = 20.
        let micro = step_micro_batches(&data, &config, 0, 1);
        let pairs: Vec<Vec<usize>> = micro.iter().map(|m| m.pairs.clone()).collect();
        assert_eq!(pairs, vec![vec![0], vec![4, 1], vec![3], vec![2]]);
        assert_eq!(
            micro.iter().map(|m| m.first).collect::<Vec<_>>(),
            vec![0, 1, 3, 4]
        );
        // Budget 16: pair 2 (20 padded tokens) is over on its own and goes alone.
        let tight = TrainConfig {
            micro_batch_tokens: Some(16),
            ..config.clone()
        };
        let pairs: Vec<Vec<usize>> = step_micro_batches(&data, &tight, 0, 1)
            .iter()
            .map(|m| m.pairs.clone())
            .collect();
        assert_eq!(pairs, vec![vec![0], vec![4], vec![1], vec![3], vec![2]]);

        // Random negatives (drawn per step, pair after pair, as without a budget): 0 → (2,
        // rejected: 2 tokens), 4 → (0, chosen: 4), 1 → (4, chosen: 5), 3 → (0, chosen: 4), 2 →
        // (3, rejected: 5), so (rows, longest) = (3, 6) (3, 5) (3, 5) (3, 5) (3, 10). Budget 45:
        // 0: 18, +4 → 6 × 6 = 36 | +1 → 9 × 6 = 54 > 45 | 1: 15, +3 → 30 | +2 → 9 × 10 = 90 >
        // 45 | 2: 30.
        let random = TrainConfig {
            objective: Objective::Q,
            goal_strategy: GoalStrategy::Random,
            micro_batch_tokens: Some(45),
            ..config.clone()
        };
        let micro = step_micro_batches(&data, &random, 0, 1);
        let pairs: Vec<Vec<usize>> = micro.iter().map(|m| m.pairs.clone()).collect();
        assert_eq!(pairs, vec![vec![0, 4], vec![1, 3], vec![2]]);
        let negatives: Vec<Vec<(usize, usize)>> =
            micro.iter().map(|m| m.random_negatives.clone()).collect();
        assert_eq!(
            negatives,
            vec![vec![(2, 1), (0, 0)], vec![(4, 0), (0, 0)], vec![(3, 1)]]
        );
        let fixed_random = TrainConfig {
            micro_batch: 5,
            micro_batch_tokens: None,
            ..random.clone()
        };
        assert_eq!(
            step_micro_batches(&data, &fixed_random, 0, 1)[0].random_negatives,
            negatives.concat()
        );
    }

    #[test]
    fn a_token_budget_excludes_an_explicit_micro_batch() {
        let config = TrainConfig {
            micro_batch_tokens: Some(512),
            micro_batch: 2,
            ..config(Objective::Bt)
        };
        let error = config.validate().unwrap_err();
        assert!(matches!(error, Error::Usage(_)), "{error}");
        assert!(
            error.to_string().contains("--micro-batch-tokens"),
            "{error}"
        );
    }

    /// A budget that splits `easy_pairs(12, 11)`'s first step unevenly (2, 3 and 1 pairs without
    /// random negatives).
    const PACKED_BUDGET: usize = 70;

    #[test]
    fn resume_under_a_token_budget_continues_and_checks_the_budget() {
        let data = TrainData {
            pairs: easy_pairs(12, 5),
            trunk: None,
        };
        let config = TrainConfig {
            max_steps: Some(6),
            goal_strategy: GoalStrategy::Random,
            micro_batch: 1,
            micro_batch_tokens: Some(PACKED_BUDGET),
            ..config(Objective::Q)
        };
        let straight = Toy::new(6);
        let directory = tempfile::tempdir().unwrap();
        train(&straight, &data, None, &config, options(directory.path())).unwrap();

        let interrupted = tempfile::tempdir().unwrap();
        let mut stop_at_three = |row: &LogRow| row.step < 3;
        let mut stopping = options(interrupted.path());
        stopping.on_step = Some(&mut stop_at_three);
        train(&Toy::new(6), &data, None, &config, stopping).unwrap();

        // Another budget, or none, is another run.
        for other in [Some(PACKED_BUDGET + 10), None] {
            let changed = TrainConfig {
                micro_batch_tokens: other,
                ..config.clone()
            };
            let mut resuming = options(interrupted.path());
            resuming.resume = true;
            let error = train(&Toy::new(6), &data, None, &changed, resuming).unwrap_err();
            assert!(matches!(error, Error::Usage(_)), "{error}");
            assert!(error.to_string().contains("different settings"), "{error}");
        }
        let resumed = Toy::new(99);
        let mut resuming = options(interrupted.path());
        resuming.resume = true;
        assert_eq!(
            train(&resumed, &data, None, &config, resuming)
                .unwrap()
                .steps,
            6
        );
        assert_eq!(weights(&resumed), weights(&straight));
    }

    #[test]
    fn eval_under_a_token_budget_is_eval_of_single_pairs() {
        let data = TrainData {
            pairs: easy_pairs(10, 13),
            trunk: None,
        };
        let model = Toy::new(14);
        let single = TrainConfig {
            micro_batch: 1,
            ..config(Objective::Q)
        };
        let packed = TrainConfig {
            micro_batch_tokens: Some(PACKED_BUDGET),
            ..single.clone()
        };
        assert!(
            plan_in_order(
                &pair_sizes(&data, &(0..10).collect::<Vec<_>>(), &[]),
                PACKED_BUDGET
            )
            .len()
                < 10
        );
        let (a, b) = (
            evaluate(&model, &data, &single).unwrap(),
            evaluate(&model, &data, &packed).unwrap(),
        );
        assert_eq!((a.wins, a.pairs, a.auroc), (b.wins, b.pairs, b.auroc));
        assert!((a.loss_bt - b.loss_bt).abs() < 1e-6, "{a:?} vs {b:?}");
        assert!(
            (a.loss_contrastive - b.loss_contrastive).abs() < 1e-6,
            "{a:?} vs {b:?}"
        );
        assert!(
            (a.reward_mean - b.reward_mean).abs() < 1e-6,
            "{a:?} vs {b:?}"
        );
    }

    #[test]
    fn resuming_a_finished_run_keeps_its_eval() {
        let data = TrainData {
            pairs: easy_pairs(12, 5),
            trunk: None,
        };
        let eval_data = TrainData {
            pairs: easy_pairs(6, 7),
            trunk: None,
        };
        let mut config = config(Objective::Bt);
        config.max_steps = Some(4);
        let directory = tempfile::tempdir().unwrap();
        let finished = train(
            &Toy::new(6),
            &data,
            Some(&eval_data),
            &config,
            options(directory.path()),
        )
        .unwrap();
        let mut resuming = options(directory.path());
        resuming.resume = true;
        let again = train(&Toy::new(99), &data, Some(&eval_data), &config, resuming).unwrap();
        assert_eq!(again.steps, 4);
        let (before, after) = (finished.eval.unwrap(), again.eval.unwrap());
        assert_eq!(before.wins, after.wins);
        assert!(
            (before.loss_bt - after.loss_bt).abs() < 1e-6,
            "{before:?} vs {after:?}"
        );
        assert_eq!(before.auroc, after.auroc);
    }

    #[test]
    fn resume_refuses_a_state_made_from_other_pairs() {
        let data = TrainData {
            pairs: easy_pairs(12, 5),
            trunk: None,
        };
        let mut config = config(Objective::Bt);
        config.max_steps = Some(4);
        let directory = tempfile::tempdir().unwrap();
        let identity = |sha: &str| -> BTreeMap<String, String> {
            [("pairs_sha256".to_owned(), sha.repeat(64))].into()
        };
        let mut stop_at_two = |row: &LogRow| row.step < 2;
        let mut first = options(directory.path());
        first.identity = identity("a");
        first.on_step = Some(&mut stop_at_two);
        train(&Toy::new(6), &data, None, &config, first).unwrap();

        let mut other = options(directory.path());
        other.resume = true;
        other.identity = identity("b");
        let error = train(&Toy::new(6), &data, None, &config, other)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("pairs_sha256 changed (aaaaaaaaaaaa… → bbbbbbbbbbbb…)"),
            "{error}"
        );
        assert!(error.contains("delete"), "{error}");

        let mut same = options(directory.path());
        same.resume = true;
        same.identity = identity("a");
        assert_eq!(
            train(&Toy::new(6), &data, None, &config, same)
                .unwrap()
                .steps,
            4
        );
    }

    /// The trainer pads with the crate's one rule (`pad_right`: id 0, u32 mask, as the old
    /// trainer padded ids and scoring masked) and zero-pads the cached trunk rows alike.
    #[test]
    fn a_training_batch_is_padded_by_pad_right() {
        let model = Toy::new(3);
        let encoded = |input_ids: Vec<u32>| Encoded {
            input_ids,
            ..Encoded::default()
        };
        let (long, short) = (encoded(vec![7, 8, 9]), encoded(vec![5]));
        let (trunk_long, trunk_short) =
            (model.trunk(&long.input_ids), model.trunk(&short.input_ids));
        let rows = [(&long, Some(&trunk_long)), (&short, Some(&trunk_short))];
        let input = batch_input(&rows, &Device::Cpu).unwrap();
        assert_eq!(
            input.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![7, 8, 9], vec![5, 0, 0]]
        );
        assert_eq!(
            input.attention_mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![1, 0, 0]]
        );
        let trunk = input.trunk_hidden.clone().unwrap(); // (2, 3, 8)
        assert_eq!(trunk.dims(), &[2, 3, 8]);
        let padding = trunk.narrow(0, 1, 1).unwrap().narrow(1, 1, 2).unwrap();
        assert_eq!(
            padding
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        // The rewards are read at each row's last real token: row 1 at position 0.
        let output = model.forward_batch(&input).unwrap();
        let rewards = last_token_values(&output.token_rewards, &input.attention_mask).unwrap();
        let alone = model
            .forward(
                &Tensor::new(&[[5u32]], &Device::Cpu).unwrap(),
                &Tensor::new(&[[1u32]], &Device::Cpu).unwrap(),
            )
            .unwrap()
            .token_rewards
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(rewards.to_vec1::<f32>().unwrap()[1], alone[0]);
    }

    #[test]
    fn cached_trunk_gives_the_same_losses_as_tokens() {
        let pairs = easy_pairs(4, 7);
        let model = Toy::new(8);
        let trunk: Vec<[Tensor; 2]> = pairs
            .iter()
            .map(|pair| {
                [
                    model.trunk(&pair.chosen.input_ids),
                    model.trunk(&pair.rejected.input_ids),
                ]
            })
            .collect();
        let config = config(Objective::Q);
        let plain = evaluate(
            &model,
            &TrainData {
                pairs: pairs.clone(),
                trunk: None,
            },
            &config,
        )
        .unwrap();
        let cached = evaluate(
            &model,
            &TrainData {
                pairs,
                trunk: Some(trunk),
            },
            &config,
        )
        .unwrap();
        assert!((plain.loss_bt - cached.loss_bt).abs() < 1e-6);
        assert!((plain.loss_contrastive - cached.loss_contrastive).abs() < 1e-6);
    }

    #[test]
    fn log_rows_are_written_per_step() {
        let data = TrainData {
            pairs: easy_pairs(8, 9),
            trunk: None,
        };
        let eval = TrainData {
            pairs: easy_pairs(4, 10),
            trunk: None,
        };
        let mut config = config(Objective::Q);
        config.max_steps = Some(4);
        config.eval_every = 2;
        let directory = tempfile::tempdir().unwrap();
        let log = directory.path().join("log.jsonl");
        let mut run = options(directory.path());
        run.log = Some(&log);
        train(&Toy::new(1), &data, Some(&eval), &config, run).unwrap();
        let rows: Vec<LogRow> = fs_err::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            rows.iter().map(|r| r.step).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(rows[0].learning_rate, 0.0); // warm-up ⌈0.03·4⌉ = 1 step starts at 0
        assert!(rows[0].eval_accuracy.is_none() && rows[1].eval_accuracy.is_some());
        assert!(rows
            .iter()
            .all(|r| r.loss_contrastive.is_some() && r.tokens_per_s > 0.0));
        if cfg!(target_os = "linux") {
            assert!(rows
                .iter()
                .all(|r| r.peak_rss_mib.is_some_and(|mib| mib > 0.0)));
        }
    }
}

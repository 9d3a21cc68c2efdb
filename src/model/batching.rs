//! Length-bucketed batching for inference.
//!
//! Examples are sorted by length and packed greedily into batches whose padded size
//! (`rows × longest`) stays within a token budget, padded on the right, run through the model,
//! and handed back batch by batch with the input indices so callers can scatter the results to
//! input order. With right padding and causal attention, the outputs at real positions do not
//! depend on the batch or on the padding (a test in `scoring` checks it).
//!
//! [`run_batches_sharing_prompts`] runs the examples of one encoded prompt (sample sets) after
//! that prompt's cached keys and values, computed once.
//!
//! On the CPU, [`run_batches_sharing_prompts`] runs as many batches at once as rayon has
//! threads ([`batch_lanes`]; [`run_plan`]: a lane takes the next batch as soon as it finishes
//! one) and hands the outputs back in the planned order, so callers see exactly the sequential
//! run. A single batch leaves cores idle in its serial steps (zeroing matmul outputs, contiguous
//! copies, element-wise ops): on a 2-core machine two 1-thread processes scored 1.28× the
//! tokens/s of one 2-thread process. qrm-score and qrm-embed also run each matmul on its lane's
//! own thread ([`init_cpu_lanes`]). With both, qrm scored unique prompts at 1.36× PyTorch and
//! the repro-gsm8k sample sets at 1.57–1.73× (`docs/scoring-speed.md`). On CUDA one batch runs
//! at a time.
//!
//! [`pad_right`] is the one padding rule of the crate (scoring, goal states and training):
//! token id [`PAD_ID`] and a u32 mask with 0 at padding positions, which the model masks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::model::reward_model::RewardOutput;
use crate::model::template::Encoded;
use crate::model::transformer::KvCache;

/// The token id at padding positions. Any id would do (padding is masked, so outputs at real
/// positions do not depend on it); 0 is in every vocabulary.
pub const PAD_ID: u32 = 0;

/// A model that maps token ids to per-token hidden states and rewards. `Sync`, because
/// [`run_batches_sharing_prompts`] runs batches on several threads at once.
pub trait TokenModel: Sync {
    /// # Shapes
    /// `input_ids`: (batch, seq_len) u32, `attention_mask`: (batch, seq_len) u32 with 1 on real
    /// tokens, right padding → hidden (batch, seq_len, hidden), token_rewards (batch, seq_len).
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<RewardOutput>;

    /// Where the inputs must live.
    fn device(&self) -> &Device;

    /// Whether [`TokenModel::prompt_cache`] and [`TokenModel::forward_after`] work; a model
    /// without them has its rows run whole.
    fn has_prompt_cache(&self) -> bool {
        false
    }

    /// The cache of one unpadded prompt, (1, prompt_len) u32, for
    /// [`TokenModel::forward_after`].
    fn prompt_cache(&self, _prompt_ids: &Tensor) -> Result<KvCache> {
        Err(crate::Error::Model("this model has no prompt cache".into()))
    }

    /// As [`TokenModel::forward`] for rows that continue the cached `prompt`: the outputs are
    /// those of the prompt followed by each row, at the row's positions.
    fn forward_after(
        &self,
        _input_ids: &Tensor,
        _attention_mask: &Tensor,
        _prompt: &KvCache,
    ) -> Result<RewardOutput> {
        Err(crate::Error::Model("this model has no prompt cache".into()))
    }
}

/// Padded tokens (rows × longest row) per forward pass when nothing else is asked: qrm-score's
/// and qrm-embed's `--batch-tokens` default, chosen on a CPU (`docs/cuda.md`).
pub const DEFAULT_BATCH_TOKENS: usize = 2048;

/// Largest share of a batch's `rows × longest` positions that may be padding; a row that would
/// take the batch over it starts the next batch. A padded position costs the linear layers as
/// much as a real one, and rows of very different lengths (the solutions of 12 models to one
/// question, scored after their shared prompt) padded into one batch wasted about a quarter of
/// the work (`cargo bench --bench score -- --sample-sets`).
pub const MAX_PADDING: f64 = 0.125;

/// Splits example indices into batches: sorted by length (longest first, so memory trouble
/// shows at once), each batch's `rows × longest` at most `batch_tokens` (a single longer
/// example gets a batch of its own) and at most [`MAX_PADDING`] of it padding. Empty examples
/// are left out.
pub fn plan_batches(lengths: &[usize], batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).filter(|&i| lengths[i] > 0).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let (mut longest, mut real) = (0, 0);
    for index in order {
        let length = lengths[index];
        // Longest first: the batch's first row is its longest.
        let positions = (current.len() + 1) * longest.max(length);
        let padding = 1.0 - (real + length) as f64 / positions as f64;
        if !current.is_empty() && (positions > batch_tokens || padding > MAX_PADDING) {
            batches.push(std::mem::take(&mut current));
            (longest, real) = (0, 0);
        }
        longest = longest.max(length);
        real += length;
        current.push(index);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Splits items, kept in order, into consecutive runs whose padded size stays within
/// `budget` tokens: item `i` is `items[i] = (rows, longest)`, that many rows of which the
/// longest has `longest` tokens, and a run's padded size is (its rows) × (its longest row), the
/// measure [`plan_batches`] budgets. Greedy: an item that would take the run over the budget
/// starts the next run; an item over the budget on its own gets a run of its own. Training packs
/// a step's pairs with it (a pair's rows stay together, and the order is the data order).
pub fn plan_in_order(items: &[(usize, usize)], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut rows, mut longest) = (0, 0, 0);
    for (index, &(item_rows, item_longest)) in items.iter().enumerate() {
        let padded = (rows + item_rows) * longest.max(item_longest);
        if index > start && padded > budget {
            runs.push(start..index);
            (start, rows, longest) = (index, 0, 0);
        }
        rows += item_rows;
        longest = longest.max(item_longest);
    }
    if start < items.len() {
        runs.push(start..items.len());
    }
    runs
}

/// Right-padded `(input_ids, attention_mask)` for some examples: ids padded with [`PAD_ID`],
/// the mask 1 on real tokens and 0 on padding.
///
/// # Shapes
/// → (rows, longest) u32 each.
pub fn pad_right(examples: &[&Encoded], device: &Device) -> Result<(Tensor, Tensor)> {
    let longest = examples
        .iter()
        .map(|e| e.input_ids.len())
        .max()
        .unwrap_or(0);
    let mut ids = Vec::with_capacity(examples.len() * longest);
    let mut mask = Vec::with_capacity(examples.len() * longest);
    for example in examples {
        let padding = longest - example.input_ids.len();
        ids.extend_from_slice(&example.input_ids);
        ids.extend(std::iter::repeat_n(PAD_ID, padding));
        mask.extend(std::iter::repeat_n(1u32, example.input_ids.len()));
        mask.extend(std::iter::repeat_n(0u32, padding));
    }
    let shape = (examples.len(), longest);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
    ))
}

/// Examples that share one encoded prompt (the same tokens before the response), in order of
/// first appearance: the groups of two or more examples that have a prompt and a token after
/// it.
pub fn prompt_groups(examples: &[Encoded]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_prompt: HashMap<&[u32], usize> = HashMap::new();
    for (index, example) in examples.iter().enumerate() {
        let start = example.response_start;
        if start == 0 || example.input_ids.len() <= start {
            continue;
        }
        let group = *by_prompt
            .entry(&example.input_ids[..start])
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[group].push(index);
    }
    groups.retain(|group| group.len() > 1);
    groups
}

/// The examples of one shared prompt ([`prompt_groups`]), packed for the forward passes after
/// that prompt's cache.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptBatches {
    /// The shared prompt's tokens.
    pub prompt: Vec<u32>,
    /// Example indices of each forward pass after the prompt, packed by [`plan_batches`] on
    /// the examples' whole lengths (prompt + own tokens), as when they run whole.
    pub batches: Vec<Vec<usize>>,
}

impl PromptBatches {
    /// The prompt as a (1, prompt_len) u32 tensor.
    pub fn prompt_ids(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::new(self.prompt.as_slice(), device)?.unsqueeze(0)?)
    }

    /// Right-padded `(input_ids, attention_mask)` of the batch's own tokens after the prompt
    /// ([`pad_right`] of each example's tokens from `prompt.len()` on).
    ///
    /// # Shapes
    /// → (rows, longest own length) u32 each.
    pub fn pad_after_prompt(
        &self,
        examples: &[Encoded],
        batch: &[usize],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let own: Vec<Encoded> = batch
            .iter()
            .map(|&i| Encoded {
                input_ids: examples[i].input_ids[self.prompt.len()..].to_vec(),
                ..Encoded::default()
            })
            .collect();
        pad_right(&own.iter().collect::<Vec<_>>(), device)
    }
}

/// The forward passes of `examples`: batches of examples run whole ([`plan_batches`] within
/// `batch_tokens`) and, when `share_prompts`, the examples of each shared prompt
/// ([`prompt_groups`]) packed to run after that prompt's cache instead. Every non-empty example
/// is in exactly one batch.
pub fn plan_sharing_prompts(
    examples: &[Encoded],
    batch_tokens: usize,
    share_prompts: bool,
) -> (Vec<Vec<usize>>, Vec<PromptBatches>) {
    let groups = if share_prompts {
        prompt_groups(examples)
    } else {
        Vec::new()
    };
    let mut lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    for &index in groups.iter().flatten() {
        lengths[index] = 0; // run after their prompt's cache
    }
    let shared = groups
        .iter()
        .map(|group| {
            let whole: Vec<usize> = group.iter().map(|&i| examples[i].input_ids.len()).collect();
            let first = &examples[group[0]];
            PromptBatches {
                prompt: first.input_ids[..first.response_start].to_vec(),
                batches: plan_batches(&whole, batch_tokens)
                    .into_iter()
                    .map(|members| members.iter().map(|&m| group[m]).collect())
                    .collect(),
            }
        })
        .collect();
    (plan_batches(&lengths, batch_tokens), shared)
}

/// How many batches [`run_batches_sharing_prompts`] runs at once on `device`: rayon's threads on
/// the CPU (`RAYON_NUM_THREADS`, else the cores), 1 elsewhere (a GPU keeps one batch's kernels
/// in order).
pub fn batch_lanes(device: &Device) -> usize {
    if device.is_cpu() {
        rayon::current_num_threads().max(1)
    } else {
        1
    }
}

/// Sets a process up to run batches side by side on the CPU ([`run_plan`]'s lanes) with every
/// matmul on its lane's own thread, rather than each matmul split over all threads: rayon's
/// global pool gets the machine's threads (`RAYON_NUM_THREADS`, else the logical CPUs), which
/// [`batch_lanes`] then counts, and candle's CPU matmuls run single-threaded. Returns the
/// threads. For tools that run many batches (qrm-score, qrm-embed); a single batch then uses
/// one core for its matmuls.
///
/// Why: a split matmul leaves cores waiting at every join, and gemm blocks and packs a split
/// product differently from a whole one. With two lanes on 2 cores, the sample-set bench scored
/// 724.5 tokens/s this way against 650.5 with split matmuls (`docs/scoring-speed.md`).
///
/// Call it first in `main`, before any other thread starts: candle reads its matmul thread
/// count from the `RAYON_NUM_THREADS` environment variable at every matmul (candle-core 0.11,
/// `utils::get_num_threads`), so this sets that variable to 1 for the rest of the process (and
/// any process it starts), after building rayon's pool. If rayon's pool was already built, its
/// threads are kept.
pub fn init_cpu_lanes() -> usize {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|&threads| threads > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // An error means the pool exists already (an earlier call, or a test harness): keep it.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    // Rust's environment functions take a process-wide lock, and no C code is running on
    // another thread yet (the precondition above), so this write races with no read.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    rayon::current_num_threads()
}

/// One planned forward pass of [`plan_sharing_prompts`]: examples run whole, or examples run
/// after the cache of the shared prompt `shared[prompt]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pass<'a> {
    /// Example indices run whole.
    Whole(&'a [usize]),
    /// Example indices run after the cache of prompt `prompt`.
    AfterPrompt {
        /// Index into the shared prompts.
        prompt: usize,
        /// Example indices.
        batch: &'a [usize],
    },
}

impl<'a> Pass<'a> {
    /// The pass's example indices, whole or after a prompt.
    pub fn batch(&self) -> &'a [usize] {
        match *self {
            Pass::Whole(batch) | Pass::AfterPrompt { batch, .. } => batch,
        }
    }
}

/// One pass as [`run_plan`]'s `forward` gets it: examples run whole, or examples run after the
/// cache of the shared prompt `shared[prompt]`, with that cache.
pub enum Job<'a, C> {
    /// Example indices run whole.
    Whole(&'a [usize]),
    /// Example indices run after `cache`, the cache of prompt `prompt`.
    AfterPrompt {
        /// Index into the shared prompts.
        prompt: usize,
        /// Example indices.
        batch: &'a [usize],
        /// The prompt's cache.
        cache: &'a C,
    },
}

impl<'a, C> Job<'a, C> {
    /// The job's example indices, whole or after a prompt.
    pub fn batch(&self) -> &'a [usize] {
        match *self {
            Job::Whole(batch) | Job::AfterPrompt { batch, .. } => batch,
        }
    }
}

/// Runs the passes of a [`plan_sharing_prompts`] plan, up to `lanes` at a time on rayon's
/// threads (the calling thread is one of them when it is a rayon thread, and otherwise only
/// hands on): `forward(job)` for each pass (an after-prompt job carries its prompt's cache, from
/// `prompt_cache`, computed once per prompt by the lane that takes its first pass and dropped
/// after its last), then `on_output(pass, output)` on the calling thread, one pass after another
/// in the plan's order (whole passes, then each prompt's), whatever `lanes` is, so callers see
/// the sequential run. The first error in plan order stops the run and is returned; the outputs
/// of the passes before it have been handed to `on_output`. The one loop of
/// [`run_batches_sharing_prompts`] (scoring, goal states) and the frozen-trunk cache.
///
/// A lane takes the next pass as soon as it finishes one (no lane waits for the slowest pass
/// of a window: the passes of one prompt differ by up to 8× in rows), at most `2 × lanes`
/// passes ahead of the last one handed on, which bounds the outputs held. Lanes never wait:
/// one with no pass it may take (none left, too far ahead, or the next one's cache still being
/// computed) ends, and is started again when the handing-on catches up. A lane that rayon runs
/// inside another's wait (work stealing) therefore never waits on the lane it interrupted.
pub fn run_plan<C: Send + Sync, O: Send>(
    whole: &[Vec<usize>],
    shared: &[PromptBatches],
    lanes: usize,
    prompt_cache: impl Fn(&PromptBatches) -> Result<C> + Sync,
    forward: impl Fn(Job<'_, C>) -> Result<O> + Sync,
    on_output: impl FnMut(Pass, O) -> Result<()>,
) -> Result<()> {
    let passes: Vec<Pass> = whole
        .iter()
        .map(|batch| Pass::Whole(batch))
        .chain(shared.iter().enumerate().flat_map(|(prompt, batches)| {
            batches
                .batches
                .iter()
                .map(move |batch| Pass::AfterPrompt { prompt, batch })
        }))
        .collect();
    let lanes = lanes.max(1);
    // On one of rayon's threads the calling thread is a lane too; elsewhere (a binary's main
    // thread) it only hands on, and `lanes` lanes run on rayon's threads.
    let runs_passes = rayon::current_thread_index().is_some();
    let plan = Plan {
        state: Mutex::new(PlanState {
            next: 0,
            delivered: 0,
            outputs: BTreeMap::new(),
            caches: shared.iter().map(|_| CacheSlot::NotYet).collect(),
            remaining: shared.iter().map(|prompt| prompt.batches.len()).collect(),
            idle_lanes: if runs_passes { lanes - 1 } else { lanes },
            stopped: false,
        }),
        changed: Condvar::new(),
        ahead: 2 * lanes,
        shared,
        passes: &passes,
        prompt_cache: &prompt_cache,
        forward: &forward,
        runs_passes,
    };
    rayon::in_place_scope(|scope| plan.hand_on(scope, on_output))
}

/// A prompt's cache as the lanes of [`run_plan`] see it.
enum CacheSlot<C> {
    NotYet,
    /// A lane is computing it; the prompt's passes wait.
    Computing,
    Ready(Arc<C>),
    /// The prompt's passes have all run.
    Dropped,
}

/// What the lanes of [`run_plan`] share, behind one lock that is never held while a pass or a
/// cache is computed.
struct PlanState<C, O> {
    /// The next pass a lane may take.
    next: usize,
    /// Passes handed to `on_output` (the plan's first `delivered`).
    delivered: usize,
    /// Finished passes not yet handed on, by pass index.
    outputs: BTreeMap<usize, Result<O>>,
    caches: Vec<CacheSlot<C>>,
    /// Passes of each prompt not yet run: at 0 its cache is dropped.
    remaining: Vec<usize>,
    /// Lanes beside the handing-on thread that are not running.
    idle_lanes: usize,
    /// Set when a pass failed or `on_output` did: no lane takes another pass.
    stopped: bool,
}

/// A pass a lane has taken: its index, and its prompt's cache when an after-prompt pass finds
/// it ready (`None` for a whole pass, or for a prompt's first pass, which computes it).
struct Taken<C> {
    index: usize,
    cache: Option<Arc<C>>,
}

/// One [`run_plan`] run.
struct Plan<'a, C, O, P, F> {
    state: Mutex<PlanState<C, O>>,
    /// Signalled when a pass finishes or a cache is ready.
    changed: Condvar,
    ahead: usize,
    shared: &'a [PromptBatches],
    passes: &'a [Pass<'a>],
    prompt_cache: &'a P,
    forward: &'a F,
    /// Whether the handing-on (calling) thread also runs passes: on a rayon thread, yes.
    runs_passes: bool,
}

fn poisoned() -> crate::Error {
    crate::Error::Model("a batch lane panicked".into())
}

impl<'a, C, O, P, F> Plan<'a, C, O, P, F>
where
    C: Send + Sync,
    O: Send,
    P: Fn(&PromptBatches) -> Result<C> + Sync,
    F: Fn(Job<'_, C>) -> Result<O> + Sync,
{
    fn lock(&self) -> Result<MutexGuard<'_, PlanState<C, O>>> {
        self.state.lock().map_err(|_| poisoned())
    }

    /// Whether a lane could take a pass now, as far as the plan's position goes.
    fn may_take(&self, state: &PlanState<C, O>) -> bool {
        !state.stopped
            && state.next < self.passes.len()
            && state.next < state.delivered + self.ahead
    }

    /// The next pass, if a lane may take it now.
    fn take(&self, state: &mut PlanState<C, O>) -> Option<Taken<C>> {
        if !self.may_take(state) {
            return None;
        }
        let index = state.next;
        let cache = match self.passes[index] {
            Pass::Whole(_) => None,
            Pass::AfterPrompt { prompt, .. } => match &state.caches[prompt] {
                CacheSlot::NotYet => {
                    state.caches[prompt] = CacheSlot::Computing;
                    None
                }
                CacheSlot::Computing => return None,
                CacheSlot::Ready(cache) => Some(Arc::clone(cache)),
                // Passes are taken in order, so a dropped prompt has no pass left.
                CacheSlot::Dropped => return None,
            },
        };
        state.next += 1;
        Some(Taken { index, cache })
    }

    /// Runs a taken pass and records its output; a panic in it becomes its error, so the
    /// handing-on thread, which may be waiting for this output, always gets one.
    fn run(&self, taken: Taken<C>) -> Result<()> {
        let index = taken.index;
        let output =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_pass(taken)))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(crate::Error::Model(format!("a batch panicked: {message}")))
                });
        let mut state = self.lock()?;
        if let Pass::AfterPrompt { prompt, .. } = self.passes[index] {
            state.remaining[prompt] -= 1;
            if state.remaining[prompt] == 0 {
                state.caches[prompt] = CacheSlot::Dropped;
            } else if matches!(state.caches[prompt], CacheSlot::Computing) {
                // The cache failed: the pass's error stops the run when its turn comes.
                state.caches[prompt] = CacheSlot::NotYet;
            }
        }
        state.outputs.insert(index, output);
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// A taken pass's forward, after computing its prompt's cache if it is the prompt's first.
    fn run_pass(&self, Taken { index, cache }: Taken<C>) -> Result<O> {
        match self.passes[index] {
            Pass::Whole(batch) => (self.forward)(Job::Whole(batch)),
            Pass::AfterPrompt { prompt, batch } => {
                let cache = match cache {
                    Some(cache) => cache,
                    None => {
                        let cache = Arc::new((self.prompt_cache)(&self.shared[prompt])?);
                        self.lock()?.caches[prompt] = CacheSlot::Ready(Arc::clone(&cache));
                        self.changed.notify_all();
                        cache
                    }
                };
                (self.forward)(Job::AfterPrompt {
                    prompt,
                    batch,
                    cache: &cache,
                })
            }
        }
    }

    /// A lane beside the handing-on thread: runs passes until none may be taken, then ends.
    fn lane(&self) -> Result<()> {
        loop {
            let taken = {
                let mut state = self.lock()?;
                match self.take(&mut state) {
                    Some(taken) => taken,
                    None => {
                        state.idle_lanes += 1;
                        return Ok(());
                    }
                }
            };
            self.run(taken)?;
        }
    }

    /// The calling thread: starts the other lanes, runs passes itself (on a rayon thread) when
    /// the next output has not arrived, and hands each output on in plan order.
    fn hand_on<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        mut on_output: impl FnMut(Pass, O) -> Result<()>,
    ) -> Result<()> {
        let mut state = self.lock()?;
        loop {
            if state.delivered == self.passes.len() {
                return Ok(());
            }
            while state.idle_lanes > 0 && self.may_take(&state) {
                state.idle_lanes -= 1;
                scope.spawn(move |_| {
                    if self.lane().is_err() {
                        // Only a poisoned lock fails here: wake the handing-on thread, whose
                        // next lock reports it.
                        self.changed.notify_all();
                    }
                });
            }
            let delivered = state.delivered;
            if let Some(output) = state.outputs.remove(&delivered) {
                drop(state);
                let handed = output.and_then(|output| on_output(self.passes[delivered], output));
                state = self.lock()?;
                if let Err(error) = handed {
                    state.stopped = true;
                    return Err(error);
                }
                state.delivered += 1;
                continue;
            }
            if self.runs_passes {
                if let Some(taken) = self.take(&mut state) {
                    drop(state);
                    self.run(taken)?;
                    state = self.lock()?;
                    continue;
                }
            }
            // The next output is being run by a lane: wait for it (or for a cache).
            state = self.changed.wait(state).map_err(|_| poisoned())?;
        }
    }
}

/// As [`run_batches`], but with `share_prompts` (and a model with a prompt cache) the examples
/// of one encoded prompt run after that prompt's cache, computed once (batch 1), in the
/// batches [`plan_sharing_prompts`] packs. `on_batch(indices, output, offset)`: row `r` of
/// `output` belongs to `examples[indices[r]]`, whose position `p` is column `p − offset`
/// (`offset` the cached prompt's length, 0 for examples run whole). The outputs equal those of
/// the whole sequences (to float rounding).
///
/// [`batch_lanes`] passes run at once ([`run_plan`]); `on_batch` is called on the calling
/// thread in the planned order whatever the number of lanes, so callers see the sequential run.
pub fn run_batches_sharing_prompts(
    model: &dyn TokenModel,
    examples: &[Encoded],
    batch_tokens: usize,
    share_prompts: bool,
    mut on_batch: impl FnMut(&[usize], &RewardOutput, usize) -> Result<()>,
) -> Result<()> {
    let device = model.device();
    let (whole, shared) = plan_sharing_prompts(
        examples,
        batch_tokens,
        share_prompts && model.has_prompt_cache(),
    );
    run_plan(
        &whole,
        &shared,
        batch_lanes(device),
        |prompt| model.prompt_cache(&prompt.prompt_ids(device)?),
        |job| match job {
            Job::AfterPrompt {
                prompt,
                batch,
                cache,
            } => {
                let (input_ids, attention_mask) =
                    shared[prompt].pad_after_prompt(examples, batch, device)?;
                model.forward_after(&input_ids, &attention_mask, cache)
            }
            Job::Whole(batch) => {
                let rows: Vec<&Encoded> = batch.iter().map(|&i| &examples[i]).collect();
                let (input_ids, attention_mask) = pad_right(&rows, device)?;
                model.forward(&input_ids, &attention_mask)
            }
        },
        |pass, output| match pass {
            Pass::Whole(batch) => on_batch(batch, &output, 0),
            Pass::AfterPrompt { prompt, batch } => {
                on_batch(batch, &output, shared[prompt].prompt.len())
            }
        },
    )
}

/// Runs every non-empty example through the model in length-sorted batches and calls
/// `on_batch(indices, hidden, token_rewards)` for each, where row `r` of the tensors belongs to
/// `examples[indices[r]]`: [`run_batches_sharing_prompts`] with every example run whole.
///
/// # Shapes
/// `hidden`: (rows, longest, hidden), `token_rewards`: (rows, longest).
pub fn run_batches(
    model: &dyn TokenModel,
    examples: &[Encoded],
    batch_tokens: usize,
    mut on_batch: impl FnMut(&[usize], &Tensor, &Tensor) -> Result<()>,
) -> Result<()> {
    run_batches_sharing_prompts(
        model,
        examples,
        batch_tokens,
        false,
        |indices, output, _| on_batch(indices, &output.hidden, &output.token_rewards),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn batches_respect_the_token_budget_and_cover_every_example_once() {
        let lengths = [5, 0, 3, 9, 4, 4, 12, 1];
        let batches = plan_batches(&lengths, 12);
        // Sorted longest first: 6(12) | 3(9) | 0(5),4(4): 2×5 = 10 ≤ 12 and padding 1/10 ≤
        // 1/8; +5(4) → 15 > 12 | 5(4),2(3): 8 ≤ 12, padding 1/8; +7(1) → 3×4 = 12 fits the
        // budget but its padding (12 − 8)/12 = 1/3 > 1/8 | 7(1).
        assert_eq!(
            batches,
            vec![vec![6], vec![3], vec![0, 4], vec![5, 2], vec![7]]
        );
        for batch in &batches {
            let longest = batch.iter().map(|&i| lengths[i]).max().unwrap();
            let real: usize = batch.iter().map(|&i| lengths[i]).sum();
            assert!(batch.len() == 1 || batch.len() * longest <= 12);
            assert!(1.0 - real as f64 / (batch.len() * longest) as f64 <= MAX_PADDING);
        }
        let mut seen: Vec<usize> = batches.concat();
        seen.sort();
        assert_eq!(seen, vec![0, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn in_order_runs_keep_the_order_and_the_budget() {
        // (rows, longest): budget 20.
        // 0 (2, 4): 8 | +1 (2, 5): 4 × 5 = 20 ≤ 20 | +2 (3, 2): 7 × 5 = 35 > 20 → new run.
        // 2 (3, 2): 6 | +3 (2, 12): 5 × 12 = 60 > 20 → new run.
        // 3 (2, 12): 24 > 20 alone, its own run | +4 would be 4 × 12 = 48 → new run.
        // 4 (2, 3): 6 | +5 (2, 2): 4 × 3 = 12 | +6 (2, 5): 6 × 5 = 30 > 20 → new run | 6.
        let items = [(2, 4), (2, 5), (3, 2), (2, 12), (2, 3), (2, 2), (2, 5)];
        let runs = plan_in_order(&items, 20);
        assert_eq!(runs, vec![0..2, 2..3, 3..4, 4..6, 6..7]);
        // Every item once, in order; every run within the budget unless a single item is over.
        assert_eq!(
            runs.iter().flat_map(|r| r.clone()).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
        for run in &runs {
            let rows: usize = items[run.clone()].iter().map(|i| i.0).sum();
            let longest = items[run.clone()].iter().map(|i| i.1).max().unwrap();
            assert!(run.len() == 1 || rows * longest <= 20, "{run:?}");
        }
        // A budget above everything: one run; nothing in: no runs.
        assert_eq!(plan_in_order(&items, 1000), vec![0..7]);
        assert!(plan_in_order(&[], 10).is_empty());
    }

    #[test]
    fn shared_prompt_plans_run_every_example_once() {
        let encoded = |ids: &[u32], response_start: usize| Encoded {
            input_ids: ids.to_vec(),
            response_start,
            ..Encoded::default()
        };
        // 0, 2 and 3 share the prompt [1, 2]; 1 is alone with its prompt [9]; 4 has no prompt;
        // 5 is only its prompt (no token after it), so it runs whole.
        let examples = [
            encoded(&[1, 2, 3, 4], 2),
            encoded(&[9, 3], 1),
            encoded(&[1, 2, 5], 2),
            encoded(&[1, 2, 6, 7, 8], 2),
            encoded(&[4, 4], 0),
            encoded(&[1, 2], 2),
        ];
        let (whole, shared) = plan_sharing_prompts(&examples, 100, true);
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].prompt, vec![1, 2]);
        // Packed by whole lengths, longest first: 3 (5 tokens), 0 (4): 2 × 5 = 10, padding
        // 1/10 ≤ 1/8; + 2 (3): 3 × 5 = 15, padding 3/15 > 1/8 → its own batch.
        assert_eq!(shared[0].batches, vec![vec![3, 0], vec![2]]);
        let (ids, mask) = shared[0]
            .pad_after_prompt(&examples, &shared[0].batches[0], &Device::Cpu)
            .unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            vec![vec![6, 7, 8], vec![3, 4, 0]]
        );
        assert_eq!(
            mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![1, 1, 0]]
        );
        let mut seen: Vec<usize> = whole.concat();
        seen.extend(shared.iter().flat_map(|p| p.batches.concat()));
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
        // Without sharing every example runs whole.
        let (whole, shared) = plan_sharing_prompts(&examples, 100, false);
        assert!(shared.is_empty());
        assert_eq!(whole, plan_batches(&[4, 2, 3, 5, 2, 2], 100));
    }

    #[test]
    fn batches_run_at_once_hand_back_the_sequential_run_in_order() {
        // 3 questions × 4 responses of different lengths and 2 rows with a question of their
        // own; a small budget makes many passes, so windows of 3 lanes cross from the whole
        // rows into the shared prompts and from one prompt into the next.
        let encoder = crate::testing::tiny_encoder();
        let model = crate::testing::tiny_llama();
        let mut examples = Vec::new();
        for question in ["what is 2+3?", "name a colour", "count to four"] {
            for response in ["5", "it is five", "two and three make five", "no"] {
                examples.push(encoder.encode(question, response).unwrap());
            }
        }
        examples.push(encoder.encode("alone", "by itself").unwrap());
        examples.push(encoder.encode("also alone", "x").unwrap());
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                assert_eq!(batch_lanes(&Device::Cpu), threads);
                let mut seen = Vec::new();
                run_batches_sharing_prompts(
                    &model,
                    &examples,
                    60,
                    true,
                    |indices, output, offset| {
                        let hidden = output.hidden.flatten_all()?.to_vec1::<f32>()?;
                        let rewards = output.token_rewards.flatten_all()?.to_vec1::<f32>()?;
                        seen.push((indices.to_vec(), offset, hidden, rewards));
                        Ok(())
                    },
                )
                .unwrap();
                seen
            })
        };
        let sequential = run(1);
        assert!(sequential.len() > 6, "{} passes", sequential.len());
        assert!(sequential.iter().any(|pass| pass.1 == 0));
        assert!(sequential.iter().any(|pass| pass.1 > 0));
        for threads in [2, 3] {
            let parallel = run(threads);
            assert_eq!(parallel.len(), sequential.len());
            for (p, s) in parallel.iter().zip(&sequential) {
                // Same pass, same order, bitwise the same outputs (a matmul's tiles are each
                // summed by one thread whatever the thread count).
                assert_eq!((&p.0, p.1), (&s.0, s.1));
                assert_eq!(p.2, s.2, "hidden of pass {:?}", p.0);
                assert_eq!(p.3, s.3, "rewards of pass {:?}", p.0);
            }
        }
    }

    /// A fake plan for [`run_plan`]: 3 whole passes, then 3 prompts of 2, 3 and 1 passes;
    /// pass `i`'s "forward" sleeps longest for the early passes so lanes finish out of order.
    fn fake_plan() -> (Vec<Vec<usize>>, Vec<PromptBatches>) {
        let whole = vec![vec![0], vec![1, 2], vec![3]];
        let shared = [
            vec![vec![4], vec![5]],
            vec![vec![6], vec![7], vec![8]],
            vec![vec![9]],
        ]
        .into_iter()
        .enumerate()
        .map(|(prompt, batches)| PromptBatches {
            prompt: vec![prompt as u32],
            batches,
        })
        .collect();
        (whole, shared)
    }

    /// A prompt cache that counts the caches alive.
    struct CountedCache<'a>(u32, &'a AtomicUsize);

    impl Drop for CountedCache<'_> {
        fn drop(&mut self) {
            self.1.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Runs the fake plan on `lanes` lanes; `fail` makes that example's pass fail (an error,
    /// or a panic for example 7). Returns the examples handed on, in order, the prompt caches
    /// made, and the run's result.
    fn run_fake_plan(lanes: usize, fail: Option<usize>) -> (Vec<usize>, usize, Result<()>) {
        let (whole, shared) = fake_plan();
        let alive = AtomicUsize::new(0);
        let made = AtomicUsize::new(0);
        let mut seen = Vec::new();
        let result = run_plan(
            &whole,
            &shared,
            lanes,
            |prompt| {
                made.fetch_add(1, Ordering::SeqCst);
                alive.fetch_add(1, Ordering::SeqCst);
                Ok(CountedCache(prompt.prompt[0], &alive))
            },
            |job| {
                let first = job.batch()[0];
                std::thread::sleep(std::time::Duration::from_millis(2 * (10 - first as u64)));
                if let Job::AfterPrompt { prompt, cache, .. } = job {
                    assert_eq!(cache.0 as usize, prompt, "the job's cache is its prompt's");
                }
                match fail {
                    Some(7) if first == 7 => panic!("example 7"),
                    Some(failing) if first == failing => Err(crate::Error::Model("no".into())),
                    _ => Ok(job.batch().to_vec()),
                }
            },
            |pass, output| {
                assert_eq!(pass.batch(), output.as_slice(), "outputs in plan order");
                seen.extend(output);
                Ok(())
            },
        );
        assert_eq!(alive.load(Ordering::SeqCst), 0, "every cache is dropped");
        (seen, made.load(Ordering::SeqCst), result)
    }

    #[test]
    fn run_plan_hands_on_in_plan_order_and_stops_at_the_first_error() {
        let everything: Vec<usize> = (0..10).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for lanes in [1, 2, 3, 5] {
            // From outside rayon's pool (a binary's main thread) and from one of its threads.
            let outside = run_fake_plan(lanes, None);
            let inside = pool.install(|| run_fake_plan(lanes, None));
            for (seen, made, result) in [outside, inside] {
                result.unwrap();
                assert_eq!(seen, everything, "{lanes} lanes");
                assert_eq!(made, 3, "each prompt's cache is made once");
            }
            // An error at example 5 (prompt 0's second pass): the passes before it are handed
            // on, nothing after it, and the error is returned.
            let (seen, _, result) = pool.install(|| run_fake_plan(lanes, Some(5)));
            assert_eq!(seen, (0..5).collect::<Vec<_>>());
            assert!(result.unwrap_err().to_string().contains("no"));
            // A panicking pass is an error too, and the run does not hang waiting for it.
            let (seen, _, result) = run_fake_plan(lanes, Some(7));
            assert_eq!(seen, (0..7).collect::<Vec<_>>());
            assert!(result.unwrap_err().to_string().contains("example 7"));
        }
    }

    #[test]
    fn padding_is_on_the_right_with_a_zero_mask() {
        let a = Encoded {
            input_ids: vec![7, 8, 9],
            ..Encoded::default()
        };
        let b = Encoded {
            input_ids: vec![5],
            ..Encoded::default()
        };
        let (ids, mask) = pad_right(&[&a, &b], &Device::Cpu).unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            vec![vec![7, 8, 9], vec![5, 0, 0]]
        );
        assert_eq!(
            mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1], vec![1, 0, 0]]
        );
    }
}

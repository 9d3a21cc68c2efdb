//! Scoring generations with a reward model: sequence reward, per-token rewards and Q-values.
//!
//! For each row, `template(question) ++ response ++ [eos]` (see [`crate::model::template`]) goes
//! through the model. The scored positions are the response tokens followed by the EOS when
//! `--eos append`: `token_rewards` and `q_values` hold one value per scored position, so
//! `reward` (read at the final scored token) equals the last element of `token_rewards`, and
//! `response_tokens` is their length. `q_values` is the cosine of each scored position's hidden
//! state with the goal state (null without a goal).
//!
//! [`score_table`] drives a whole table with bounded memory: rows are scored in chunks, each
//! chunk is written to `OUTPUT.partial/` as its own Parquet file (so `--resume` can skip the
//! rows already done), and the chunks are joined into the output at the end, one Parquet row
//! group per chunk. `OUTPUT.partial/manifest.json` ([`RunManifest`]) records what the chunks
//! were made from (sha256 of the input, the model weights, the tokenizer and the goal, and
//! every option that changes a score); `--resume` refuses a partial output of another run and
//! names what changed. The partial directory is created only once setup has passed (columns,
//! a non-empty input), and removed again when this run created it and fails before its first
//! chunk. `--shard i/n` scores the rows whose input index is `i` mod `n` and keeps a
//! `row_index` column; [`merge_shards`] joins the parts back into input order.
//!
//! Every row carries `rm` (the model's name) and `rm_id`, `rm@` plus 12 hex chars of a hash
//! of the weights, tokenizer and goal ([`ModelIdentity::rm_id`]), so two different models in
//! folders of the same name do not pool.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use clap::ValueEnum;
use indicatif::ProgressBar;
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::batching::{run_batches, TokenModel};
use crate::model::loading::{short_hash, ModelIdentity};
use crate::model::template::{Encoded, Encoder, Template, TruncationCounts};
use crate::pipeline::io::key_of;
use crate::pipeline::io::{
    display_path, encode, read_table, require_rows, write_atomic, Format, Output,
};
use crate::pipeline::schema::{
    Columns, QUESTION, Q_VALUES, RESPONSE, RESPONSE_TOKENS, REWARD, RM, RM_ID, ROW_INDEX, TOKENS,
    TOKEN_OFFSETS, TOKEN_REWARDS,
};
use crate::score::goal::cosine_with_goal;

/// What to compute for each row.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// Stored in the `rm` column.
    pub rm_name: String,
    /// Stored in the `rm_id` column: see [`ModelIdentity::rm_id`].
    pub rm_id: String,
    /// Padded tokens per batch (`rows × longest`).
    pub batch_tokens: usize,
    /// The goal state, (hidden,); `q_values` is null without it.
    pub goal: Option<Tensor>,
    /// Also write `tokens` (the decoded scored tokens) and `token_offsets`.
    pub emit_tokens: bool,
}

/// The scores of one row; all `None` for a row skipped by truncation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowScore {
    pub reward: Option<f32>,
    pub token_rewards: Option<Vec<f32>>,
    pub q_values: Option<Vec<f32>>,
    pub tokens: Option<Vec<String>>,
    /// Char offset in the response where each scored token starts.
    pub token_offsets: Option<Vec<u32>>,
}

/// Counts reported after scoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreSummary {
    /// Rows in the (sharded) input.
    pub rows: usize,
    /// Rows scored by this run (not counting rows resumed from a partial output).
    pub scored: usize,
    /// Rows skipped because an earlier run had written them (`--resume`).
    pub resumed: usize,
    /// Tokens run through the model by this run (prompt and response, without padding).
    pub tokens: usize,
    pub truncation: TruncationCounts,
}

/// Scores encoded rows; the result is in the order of `encoded`.
pub fn score_encoded(
    model: &dyn TokenModel,
    encoder: &Encoder,
    encoded: &[Encoded],
    options: &ScoreOptions,
    mut on_tokens: impl FnMut(usize),
) -> Result<Vec<RowScore>> {
    let mut scores = vec![RowScore::default(); encoded.len()];
    let batch_tokens = options.batch_tokens.max(1);
    run_batches(
        model,
        encoded,
        batch_tokens,
        |indices, hidden, token_rewards| {
            let rewards = token_rewards.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let cosines = match &options.goal {
                Some(goal) => {
                    let (rows, seq_len, width) = hidden.dims3()?;
                    if goal.elem_count() != width {
                        return Err(Error::Model(format!(
                            "the goal state has {} values but the model's hidden size is {width}: \
                             it was made with another model",
                            goal.elem_count()
                        )));
                    }
                    let flat = hidden.reshape((rows * seq_len, width))?; // (rows*seq_len, hidden)
                    let cosines = cosine_with_goal(&flat, goal)?; // (rows*seq_len,)
                    Some(cosines.reshape((rows, seq_len))?.to_vec2::<f32>()?)
                }
                None => None,
            };
            let mut tokens = 0;
            for (row, &index) in indices.iter().enumerate() {
                let example = &encoded[index];
                let (start, end) = (example.response_start, example.input_ids.len());
                tokens += end;
                let tokens_text = if options.emit_tokens {
                    let decoded = example.input_ids[start..end]
                        .iter()
                        .map(|&id| {
                            encoder
                                .tokenizer
                                .decode(&[id], false)
                                .map_err(|e| Error::Model(format!("tokenizer: {e}")))
                        })
                        .collect::<Result<Vec<String>>>()?;
                    Some(decoded)
                } else {
                    None
                };
                scores[index] = RowScore {
                    reward: Some(rewards[row][end - 1]),
                    token_rewards: Some(rewards[row][start..end].to_vec()),
                    q_values: cosines.as_ref().map(|c| c[row][start..end].to_vec()),
                    tokens: tokens_text,
                    token_offsets: options
                        .emit_tokens
                        .then(|| example.response_offsets.clone()),
                };
            }
            on_tokens(tokens);
            Ok(())
        },
    )?;
    Ok(scores)
}

/// A List column from one series per row (`None` → a null list), cast to `List<inner>`.
fn list_column(
    name: &str,
    rows: impl Iterator<Item = Option<Series>>,
    inner: DataType,
) -> Result<Column> {
    let lists: ListChunked = rows.collect();
    let lists = lists
        .into_series()
        .cast(&DataType::List(Box::new(inner)))
        .map_err(|e| Error::table("<scores>", e))?;
    Ok(lists.with_name(name.into()).into_column())
}

/// The score columns for some rows: `rm`, `rm_id`, `reward`, `response_tokens`,
/// `token_rewards`, `q_values`, and `tokens` and `token_offsets` when asked.
pub fn score_columns(scores: &[RowScore], options: &ScoreOptions) -> Result<Vec<Column>> {
    let series = |values: Option<&[f32]>| values.map(|v| Series::new(PlSmallStr::EMPTY, v));
    let mut columns = vec![
        Column::new(RM.into(), vec![options.rm_name.as_str(); scores.len()]),
        Column::new(RM_ID.into(), vec![options.rm_id.as_str(); scores.len()]),
        Column::new(
            REWARD.into(),
            scores.iter().map(|s| s.reward).collect::<Vec<_>>(),
        ),
        Column::new(
            RESPONSE_TOKENS.into(),
            scores
                .iter()
                .map(|s| s.token_rewards.as_ref().map_or(0, |t| t.len() as u32))
                .collect::<Vec<u32>>(),
        ),
        list_column(
            TOKEN_REWARDS,
            scores.iter().map(|s| series(s.token_rewards.as_deref())),
            DataType::Float32,
        )?,
        list_column(
            Q_VALUES,
            scores.iter().map(|s| series(s.q_values.as_deref())),
            DataType::Float32,
        )?,
    ];
    if options.emit_tokens {
        columns.push(list_column(
            TOKENS,
            scores.iter().map(|s| {
                s.tokens
                    .as_deref()
                    .map(|t| Series::new(PlSmallStr::EMPTY, t))
            }),
            DataType::String,
        )?);
        columns.push(list_column(
            TOKEN_OFFSETS,
            scores.iter().map(|s| {
                s.token_offsets
                    .as_deref()
                    .map(|o| Series::new(PlSmallStr::EMPTY, o))
            }),
            DataType::UInt32,
        )?);
    }
    Ok(columns)
}

/// Scores every row of a generations frame (columns `question`, `response`), keeping its other
/// columns and replacing any score columns it already had.
pub fn score_frame(
    model: &dyn TokenModel,
    encoder: &Encoder,
    frame: &DataFrame,
    path: &Path,
    options: &ScoreOptions,
    on_tokens: impl FnMut(usize),
) -> Result<(DataFrame, ScoreSummary)> {
    let columns = Columns::new(frame, path);
    let questions: Vec<&str> = columns
        .str_not_null(QUESTION)?
        .iter()
        .map(Option::unwrap_or_default)
        .collect();
    let responses: Vec<&str> = columns
        .str_not_null(RESPONSE)?
        .iter()
        .map(Option::unwrap_or_default)
        .collect();
    let encoded = encoder.encode_rows(&questions, &responses)?;
    let mut summary = ScoreSummary {
        rows: frame.height(),
        scored: frame.height(),
        ..ScoreSummary::default()
    };
    for example in &encoded {
        summary.truncation.add(example.truncated);
        summary.tokens += example.input_ids.len();
    }
    let scores = score_encoded(model, encoder, &encoded, options, on_tokens)?;
    let mut out = frame.clone();
    for name in [
        RM,
        RM_ID,
        REWARD,
        RESPONSE_TOKENS,
        TOKEN_REWARDS,
        Q_VALUES,
        TOKENS,
        TOKEN_OFFSETS,
    ] {
        if out.column(name).is_ok() {
            out = out.drop(name).map_err(|e| Error::table(path, e))?;
        }
    }
    let out = out
        .hstack(&score_columns(&scores, options)?)
        .map_err(|e| Error::table(path, e))?;
    Ok((out, summary))
}

/// `--shard i/n`: the rows whose input index is `i` modulo `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}`: expected i/n, e.g. 0/4"))?;
        let index: usize = index.trim().parse().map_err(|e| format!("`{text}`: {e}"))?;
        let count: usize = count.trim().parse().map_err(|e| format!("`{text}`: {e}"))?;
        if count == 0 || index >= count {
            return Err(format!("`{text}`: need 0 <= i < n"));
        }
        Ok(Shard { index, count })
    }
}

/// How [`score_table`] runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Rows scored and written at a time (one Parquet row group each).
    pub chunk_rows: usize,
    /// Continue from `OUTPUT.partial/` instead of refusing to overwrite it.
    pub resume: bool,
    pub shard: Option<Shard>,
    /// Stop after this many chunks, leaving the partial output (for tests of `--resume`).
    pub stop_after_chunks: Option<usize>,
    /// What the scores come from, recorded in the manifest.
    pub provenance: Provenance,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            chunk_rows: 4096,
            resume: false,
            shard: None,
            stop_after_chunks: None,
            provenance: Provenance::default(),
        }
    }
}

/// What the scores come from besides the input and the encoding: the model's identity, the
/// goal file's sha256 and the device (bf16 on a GPU gives other numbers than f32 on the CPU).
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub model: ModelIdentity,
    /// sha256 of the `--goal` file.
    pub goal_sha256: Option<String>,
    pub device: String,
    /// sha256 of the bytes the input table was read from
    /// ([`crate::pipeline::io::read_table_hashed`]: works for stdin too); `None` for a frame
    /// made in memory, which is hashed through its Arrow IPC encoding.
    pub input_sha256: Option<String>,
}

/// What a partial output was made from (`OUTPUT.partial/manifest.json`): every input and
/// option that changes a score. `--resume` continues only a partial output whose manifest
/// equals the run's. Batch and chunk sizes are not in it: they do not change the scores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunManifest {
    /// Of the bytes the input was read from (a file or stdin).
    pub input_sha256: String,
    pub model_sha256: String,
    pub tokenizer_sha256: String,
    /// `--head` and `--seed` of an untrained head.
    pub head: Option<String>,
    pub goal_sha256: Option<String>,
    pub rm: String,
    pub device: String,
    /// The template's name; for a template file, with the sha256 of its text.
    pub template: String,
    pub eos: String,
    pub eos_id: u32,
    pub max_len: Option<usize>,
    pub truncation: String,
    pub emit_tokens: bool,
    pub shard: Option<String>,
}

/// A `std::io::Write` that hashes what it is given.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The sha256 of a frame that was not read from bytes: of its Arrow IPC stream encoding.
fn frame_sha256(frame: &DataFrame, shown: &Path) -> Result<String> {
    let mut writer = HashWriter(Sha256::new());
    encode(&mut frame.clone(), Format::Stream, &mut writer, shown)?;
    Ok(format!("{:x}", writer.0.finalize()))
}

fn or_none<T: std::fmt::Display>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "none".to_owned(), T::to_string)
}

impl RunManifest {
    /// The manifest of a run over an input whose sha256 is `input_sha256`.
    pub fn new(
        input_sha256: String,
        encoder: &Encoder,
        options: &ScoreOptions,
        run: &RunOptions,
    ) -> Self {
        let provenance = &run.provenance;
        let template = match &encoder.template {
            Template::File { text, .. } => format!(
                "{} (sha256 {})",
                encoder.template.name(),
                short_hash(&key_of(&[text]))
            ),
            template => template.name(),
        };
        RunManifest {
            input_sha256,
            model_sha256: provenance.model.weights_sha256.clone(),
            tokenizer_sha256: provenance.model.tokenizer_sha256.clone(),
            head: provenance.model.untrained_head.clone(),
            goal_sha256: options
                .goal
                .as_ref()
                .map(|_| provenance.goal_sha256.clone().unwrap_or_default()),
            rm: options.rm_name.clone(),
            device: provenance.device.clone(),
            template,
            eos: encoder.eos.name().to_owned(),
            eos_id: encoder.eos_id,
            max_len: encoder.max_len,
            truncation: encoder
                .truncation
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_owned()),
            emit_tokens: options.emit_tokens,
            shard: run.shard.map(|shard| shard.to_string()),
        }
    }

    /// What differs from `then` (an earlier run's manifest) to this one, one phrase each.
    pub fn changes_since(&self, then: &RunManifest) -> Vec<String> {
        let mut changes = Vec::new();
        for (what, old, new) in [
            ("the input", &then.input_sha256, &self.input_sha256),
            ("the model weights", &then.model_sha256, &self.model_sha256),
            (
                "the tokenizer",
                &then.tokenizer_sha256,
                &self.tokenizer_sha256,
            ),
        ] {
            if old != new {
                changes.push(format!(
                    "{what} changed (sha256 {} → {})",
                    short_hash(old),
                    short_hash(new)
                ));
            }
        }
        match (&then.goal_sha256, &self.goal_sha256) {
            (Some(_), None) => changes.push("the goal was dropped (no --goal now)".to_owned()),
            (None, Some(_)) => changes.push("a goal was added (--goal)".to_owned()),
            (Some(old), Some(new)) if old != new => changes.push(format!(
                "the goal changed (sha256 {} → {})",
                short_hash(old),
                short_hash(new)
            )),
            _ => {}
        }
        for (flag, old, new) in [
            ("--rm-name", then.rm.clone(), self.rm.clone()),
            ("--head/--seed", or_none(&then.head), or_none(&self.head)),
            ("--device", then.device.clone(), self.device.clone()),
            ("--template", then.template.clone(), self.template.clone()),
            ("--eos", then.eos.clone(), self.eos.clone()),
            (
                "the EOS token id",
                then.eos_id.to_string(),
                self.eos_id.to_string(),
            ),
            ("--max-len", or_none(&then.max_len), or_none(&self.max_len)),
            (
                "--truncate",
                then.truncation.clone(),
                self.truncation.clone(),
            ),
            (
                "--emit-tokens",
                then.emit_tokens.to_string(),
                self.emit_tokens.to_string(),
            ),
            ("--shard", or_none(&then.shard), or_none(&self.shard)),
        ] {
            if old != new {
                changes.push(format!("{flag} changed ({old} → {new})"));
            }
        }
        changes
    }
}

/// The manifest's file in a partial directory.
pub const MANIFEST: &str = "manifest.json";

/// Keeps the rows of a shard and adds `row_index` (their input position).
pub fn select_shard(frame: &DataFrame, path: &Path, shard: Shard) -> Result<DataFrame> {
    if frame.column(ROW_INDEX).is_ok() {
        return Err(Error::Format {
            path: path.to_owned(),
            message: format!("the input already has a `{ROW_INDEX}` column"),
        });
    }
    let indices: Vec<u64> = (0..frame.height() as u64)
        .filter(|i| *i % shard.count as u64 == shard.index as u64)
        .collect();
    let take = IdxCa::from_vec(
        PlSmallStr::EMPTY,
        indices.iter().map(|&i| i as IdxSize).collect(),
    );
    let mut selected = frame.take(&take).map_err(|e| Error::table(path, e))?;
    selected
        .with_column(Column::new(ROW_INDEX.into(), indices))
        .map_err(|e| Error::table(path, e))?;
    Ok(selected)
}

fn partial_dir(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn chunk_path(dir: &Path, chunk: usize) -> PathBuf {
    dir.join(format!("chunk-{chunk:06}.parquet"))
}

/// The chunk files already in a partial directory, in order, with their row counts.
fn existing_chunks(dir: &Path) -> Result<Vec<(PathBuf, usize)>> {
    let mut chunks = Vec::new();
    while chunk_path(dir, chunks.len()).exists() {
        let path = chunk_path(dir, chunks.len());
        let rows = read_table(&path)?.height();
        chunks.push((path, rows));
    }
    Ok(chunks)
}

/// Opens the partial directory of a file run: continues it under `resume` when its manifest
/// equals `manifest` (returning the chunks already there), else refuses with what changed and
/// how to clear it. A directory without any chunk holds no work and is started over. Returns
/// the chunks done and whether this run created the directory.
fn open_partial(
    dir: &Path,
    manifest: &RunManifest,
    resume: bool,
) -> Result<(Vec<(PathBuf, usize)>, bool)> {
    let manifest_path = dir.join(MANIFEST);
    let clear = format!("delete {}/ to start over", dir.display());
    if dir.exists() {
        let chunks = existing_chunks(dir)?;
        if chunks.is_empty() {
            tracing::warn!("{} holds no scored chunk: starting over", dir.display());
            fs_err::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        } else if !resume {
            return Err(Error::Usage(format!(
                "{} exists (an interrupted run, {} chunks done): pass --resume to continue it, \
                 or {clear}",
                dir.display(),
                chunks.len()
            )));
        } else {
            let then: RunManifest = fs_err::read_to_string(&manifest_path)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "--resume: {} has no readable {MANIFEST} (made by an older qrm-score?), \
                         so what it was made from is unknown; {clear}",
                        dir.display()
                    ))
                })?;
            let changes = manifest.changes_since(&then);
            if !changes.is_empty() {
                return Err(Error::Usage(format!(
                    "--resume: {} was made by a different run: {}; {clear}",
                    dir.display(),
                    changes.join(", ")
                )));
            }
            return Ok((chunks, false));
        }
    }
    fs_err::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| Error::Model(format!("cannot serialise the run manifest: {e}")))?;
    write_atomic(&manifest_path, |w| {
        std::io::Write::write_all(w, text.as_bytes()).map_err(|e| Error::io(&manifest_path, e))
    })?;
    Ok((Vec::new(), true))
}

/// Checks what scoring needs before anything is written: rows, and `question` and `response`
/// as strings without nulls.
fn check_input(frame: &DataFrame, path: &Path) -> Result<()> {
    require_rows(frame, path)?;
    let columns = Columns::new(frame, path);
    columns.str_not_null(QUESTION)?;
    columns.str_not_null(RESPONSE)?;
    Ok(())
}

/// Scores a whole table and writes it to `output`.
///
/// The input is checked first (rows, `question` and `response`): a failure leaves nothing
/// behind. To a file: chunks go to `OUTPUT.partial/chunk-NNNNNN.parquet` (each written
/// atomically) beside `OUTPUT.partial/manifest.json`, and once all are done they are joined
/// into the output — as one Parquet row group per chunk, reading one chunk at a time, for
/// `.parquet` — and the directory is removed. With `resume`, the rows of the chunks already
/// there are skipped, provided the manifest matches. To stdout there is no partial directory
/// and the chunks are joined in memory.
#[allow(clippy::too_many_arguments)]
pub fn score_table(
    model: &dyn TokenModel,
    encoder: &Encoder,
    frame: DataFrame,
    input_path: &Path,
    output: &Output,
    options: &ScoreOptions,
    run: &RunOptions,
    progress: &ProgressBar,
) -> Result<ScoreSummary> {
    let input_shown = display_path(input_path);
    check_input(&frame, &input_shown)?;
    let format = output.resolved_format()?;
    let file = output.path.as_deref().filter(|p| *p != Path::new("-"));
    if run.resume && file.is_none() {
        return Err(Error::Usage(
            "--resume continues an `-o FILE` run; output to stdout has nothing to resume".into(),
        ));
    }
    let partial = file.map(partial_dir);
    let manifest = match partial {
        Some(_) => Some(RunManifest::new(
            match &run.provenance.input_sha256 {
                Some(sha256) => sha256.clone(),
                None => frame_sha256(&frame, &input_shown)?,
            },
            encoder,
            options,
            run,
        )),
        None => None,
    };
    let frame = match run.shard {
        Some(shard) => select_shard(&frame, &input_shown, shard)?,
        None => frame,
    };
    let (mut done_chunks, created) = match (&partial, &manifest) {
        (Some(dir), Some(manifest)) => open_partial(dir, manifest, run.resume)?,
        _ => (Vec::new(), false),
    };
    let result = score_chunks(
        model,
        encoder,
        &frame,
        &input_shown,
        options,
        run,
        progress,
        partial.as_deref(),
        &mut done_chunks,
    );
    let (summary, in_memory, finished) = match (result, &partial) {
        (Err(error), Some(dir)) if created && done_chunks.is_empty() => {
            // Nothing of this run's is worth keeping: leave no partial directory behind.
            let _ = fs_err::remove_dir_all(dir);
            return Err(error);
        }
        (result, _) => result?,
    };
    if !finished {
        return Ok(summary); // stopped by `stop_after_chunks`, the partial output left
    }
    match (&partial, file) {
        (Some(dir), Some(path)) => {
            join_chunks(&done_chunks, path, format)?;
            fs_err::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        _ => {
            let mut joined = concat_frames(in_memory, &input_shown)?
                .unwrap_or_else(|| empty_scores(&frame, options));
            output.write(&mut joined)?;
        }
    }
    Ok(summary)
}

/// The scoring loop of [`score_table`]: scores the rows after those of `done_chunks`, writing
/// each chunk to `partial` (and adding it to `done_chunks`) or keeping it in memory (returned).
/// The flag is false when stopped by `stop_after_chunks`.
#[allow(clippy::too_many_arguments)]
fn score_chunks(
    model: &dyn TokenModel,
    encoder: &Encoder,
    frame: &DataFrame,
    input_shown: &Path,
    options: &ScoreOptions,
    run: &RunOptions,
    progress: &ProgressBar,
    partial: Option<&Path>,
    done_chunks: &mut Vec<(PathBuf, usize)>,
) -> Result<(ScoreSummary, Vec<DataFrame>, bool)> {
    let mut summary = ScoreSummary {
        rows: frame.height(),
        ..ScoreSummary::default()
    };
    let chunk_rows = run.chunk_rows.max(1);
    progress.set_length(frame.height() as u64);
    let started = std::time::Instant::now();
    let mut in_memory: Vec<DataFrame> = Vec::new();
    summary.resumed = done_chunks.iter().map(|(_, rows)| rows).sum();
    if summary.resumed > frame.height() {
        return Err(Error::Usage(format!(
            "the partial output holds {} rows, more than the {} of the input",
            summary.resumed,
            frame.height()
        )));
    }
    progress.set_position(summary.resumed as u64);

    let mut offset = summary.resumed;
    let mut chunks_this_run = 0;
    while offset < frame.height() {
        if run.stop_after_chunks == Some(chunks_this_run) {
            return Ok((summary, in_memory, false));
        }
        let length = chunk_rows.min(frame.height() - offset);
        let chunk = frame.slice(offset as i64, length);
        let mut tokens_so_far = summary.tokens;
        let (mut scored, chunk_summary) =
            score_frame(model, encoder, &chunk, input_shown, options, |tokens| {
                tokens_so_far += tokens;
                let seconds = started.elapsed().as_secs_f64().max(1e-9);
                progress.set_prefix(format!("{:.0} tokens/s", tokens_so_far as f64 / seconds));
            })?;
        summary.scored += chunk_summary.scored;
        summary.tokens += chunk_summary.tokens;
        summary.truncation.merge(chunk_summary.truncation);
        match partial {
            Some(dir) => {
                let path = chunk_path(dir, done_chunks.len());
                write_atomic(&path, |w| encode(&mut scored, Format::Parquet, w, &path))?;
                done_chunks.push((path, length));
            }
            None => in_memory.push(scored),
        }
        offset += length;
        chunks_this_run += 1;
        progress.set_position(offset as u64);
    }
    Ok((summary, in_memory, true))
}

fn empty_scores(frame: &DataFrame, options: &ScoreOptions) -> DataFrame {
    let mut out = frame.clone();
    if let Ok(columns) = score_columns(&[], options) {
        if let Ok(joined) = out.hstack(&columns) {
            out = joined;
        }
    }
    out
}

fn concat_frames(frames: Vec<DataFrame>, path: &Path) -> Result<Option<DataFrame>> {
    let mut frames = frames.into_iter();
    let Some(mut joined) = frames.next() else {
        return Ok(None);
    };
    for frame in frames {
        joined
            .vstack_mut(&frame)
            .map_err(|e| Error::table(path, e))?;
    }
    joined.rechunk_mut();
    Ok(Some(joined))
}

/// Joins chunk files into `path`: Parquet streams one row group per chunk, other formats are
/// assembled in memory.
fn join_chunks(chunks: &[(PathBuf, usize)], path: &Path, format: Format) -> Result<()> {
    if format == Format::Parquet && !chunks.is_empty() {
        return write_atomic(path, |w| {
            let first = read_table(&chunks[0].0)?;
            let mut writer = ParquetWriter::new(w)
                .with_compression(ParquetCompression::Zstd(None))
                .batched(first.schema())
                .map_err(|e| Error::table(path, e))?;
            writer
                .write_batch(&first)
                .map_err(|e| Error::table(path, e))?;
            for (chunk, _) in &chunks[1..] {
                let frame = read_table(chunk)?;
                writer
                    .write_batch(&frame)
                    .map_err(|e| Error::table(path, e))?;
            }
            writer.finish().map_err(|e| Error::table(path, e))?;
            Ok(())
        });
    }
    let frames = chunks
        .iter()
        .map(|(chunk, _)| read_table(chunk))
        .collect::<Result<Vec<_>>>()?;
    let mut joined = concat_frames(frames, path)?.unwrap_or_default();
    Output::new(Some(path.to_owned()), Some(format)).write(&mut joined)
}

/// Joins shard outputs (each with a `row_index` column) back into input order, checking that
/// every row index from 0 to the total appears exactly once, and drops `row_index`.
pub fn merge_shards(parts: &[PathBuf]) -> Result<DataFrame> {
    let mut frames = Vec::with_capacity(parts.len());
    for part in parts {
        let frame = read_table(part)?;
        if frame.column(ROW_INDEX).is_err() {
            return Err(Error::MissingColumn {
                path: part.clone(),
                column: ROW_INDEX.to_owned(),
                available: frame
                    .get_column_names()
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        frames.push(frame);
    }
    let shown = Path::new("<merged shards>");
    let Some(joined) = concat_frames(frames, shown)? else {
        return Err(Error::Usage("merge needs at least one part".into()));
    };
    let joined = joined
        .sort([ROW_INDEX], SortMultipleOptions::default())
        .map_err(|e| Error::table(shown, e))?;
    let index = joined
        .column(ROW_INDEX)
        .and_then(|c| c.cast(&DataType::UInt64))
        .map_err(|e| Error::table(shown, e))?;
    let index = index.u64().map_err(|e| Error::table(shown, e))?;
    for (expected, found) in index.iter().enumerate() {
        if found != Some(expected as u64) {
            return Err(Error::Format {
                path: shown.to_owned(),
                message: format!(
                    "the parts do not cover the input exactly: row_index {expected} is {}",
                    match found {
                        Some(found) if found < expected as u64 => "duplicated",
                        _ => "missing",
                    }
                ),
            });
        }
    }
    joined.drop(ROW_INDEX).map_err(|e| Error::table(shown, e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::template::{EosPolicy, Truncation};
    use candle_core::Device;

    use crate::testing::{tiny_encoder, tiny_llama};

    fn generations(rows: usize) -> DataFrame {
        let questions: Vec<String> = (0..rows)
            .map(|i| format!("Question {i}: what is {i} plus {}?", i * 7))
            .collect();
        let responses: Vec<String> = (0..rows)
            .map(|i| format!("{i} + {} = {}. {}", i * 7, i * 8, "Check. ".repeat(i % 5)))
            .collect();
        let notes: Vec<u32> = (0..rows as u32).collect();
        DataFrame::new(
            rows,
            vec![
                Column::new(QUESTION.into(), questions),
                Column::new(RESPONSE.into(), responses),
                Column::new("note".into(), notes),
            ],
        )
        .unwrap()
    }

    fn options(batch_tokens: usize, goal: bool) -> ScoreOptions {
        let goal = goal.then(|| {
            Tensor::from_iter((0..32).map(|i| (i as f32 - 15.5) / 8.0), &Device::Cpu).unwrap()
        });
        ScoreOptions {
            rm_name: "mock".into(),
            rm_id: "mock@0123456789ab".into(),
            batch_tokens,
            goal,
            emit_tokens: false,
        }
    }

    fn list_values(frame: &DataFrame, name: &str) -> Vec<Option<Vec<f32>>> {
        let lists = frame.column(name).unwrap().list().unwrap().clone();
        (0..lists.len())
            .map(|i| {
                lists
                    .get_as_series(i)
                    .map(|s| s.f32().unwrap().iter().flatten().collect())
            })
            .collect()
    }

    fn assert_frames_close(a: &DataFrame, b: &DataFrame, tolerance: f32) {
        assert_eq!(a.get_column_names(), b.get_column_names());
        assert_eq!(a.height(), b.height());
        for name in [TOKEN_REWARDS, Q_VALUES] {
            for (x, y) in list_values(a, name).iter().zip(list_values(b, name)) {
                let (x, y) = (x.clone().unwrap_or_default(), y.unwrap_or_default());
                assert_eq!(x.len(), y.len());
                for (u, v) in x.iter().zip(&y) {
                    assert!((u - v).abs() <= tolerance, "{name}: {u} vs {v}");
                }
            }
        }
        let rewards = |f: &DataFrame| -> Vec<Option<f32>> {
            f.column(REWARD).unwrap().f32().unwrap().iter().collect()
        };
        for (u, v) in rewards(a).iter().zip(rewards(b)) {
            assert!((u.unwrap() - v.unwrap()).abs() <= tolerance);
        }
        for name in ["note", RESPONSE_TOKENS, QUESTION] {
            assert_eq!(a.column(name).unwrap(), b.column(name).unwrap(), "{name}");
        }
    }

    #[test]
    fn scores_do_not_depend_on_batch_size_or_padding() {
        let encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = generations(13);
        let path = Path::new("<test>");
        let (one, _) =
            score_frame(&model, &encoder, &frame, path, &options(1, true), |_| {}).unwrap();
        let (many, _) = score_frame(
            &model,
            &encoder,
            &frame,
            path,
            &options(100_000, true),
            |_| {},
        )
        .unwrap();
        let (some, _) =
            score_frame(&model, &encoder, &frame, path, &options(150, true), |_| {}).unwrap();
        assert_frames_close(&one, &many, 1e-5);
        assert_frames_close(&one, &some, 1e-5);
    }

    #[test]
    fn reward_is_the_last_token_reward_and_rows_keep_input_order() {
        let encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = generations(9);
        let (scored, summary) = score_frame(
            &model,
            &encoder,
            &frame,
            Path::new("<test>"),
            &options(200, false),
            |_| {},
        )
        .unwrap();
        assert_eq!(summary.rows, 9);
        assert_eq!(
            scored.column("note").unwrap(),
            frame.column("note").unwrap()
        );
        let rewards: Vec<f32> = scored
            .column(REWARD)
            .unwrap()
            .f32()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        let lengths: Vec<u32> = scored
            .column(RESPONSE_TOKENS)
            .unwrap()
            .u32()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        for (row, token_rewards) in list_values(&scored, TOKEN_REWARDS).into_iter().enumerate() {
            let token_rewards = token_rewards.unwrap();
            assert_eq!(token_rewards.last(), Some(&rewards[row]));
            assert_eq!(token_rewards.len(), lengths[row] as usize);
            let response = frame
                .column(RESPONSE)
                .unwrap()
                .str()
                .unwrap()
                .get(row)
                .unwrap();
            let encoded = encoder.encode("q", response).unwrap();
            assert_eq!(lengths[row] as usize, encoded.response_len + 1);
        }
        assert_eq!(scored.column(Q_VALUES).unwrap().null_count(), 9);
    }

    #[test]
    fn q_values_are_cosines_with_the_goal() {
        let mut encoder = tiny_encoder();
        encoder.eos = EosPolicy::None;
        let model = tiny_llama();
        let frame = generations(4);
        let options = options(64, true);
        let (scored, _) = score_frame(
            &model,
            &encoder,
            &frame,
            Path::new("<test>"),
            &options,
            |_| {},
        )
        .unwrap();
        let q_values = list_values(&scored, Q_VALUES);
        for row in q_values.iter().flatten() {
            assert!(row.iter().all(|q| (-1.0..=1.0).contains(q)));
        }
        // Row 2 by hand: hidden states of the lone sequence, cosine in f64.
        let encoded = encoder
            .encode(
                "Question 2: what is 2 plus 14?",
                "2 + 14 = 16. Check. Check. ",
            )
            .unwrap();
        let ids = Tensor::new(encoded.input_ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hidden = model
            .forward(&ids, &ids.ones_like().unwrap())
            .unwrap()
            .hidden;
        let hidden = hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let goal = options.goal.unwrap().to_vec1::<f32>().unwrap();
        let expected: Vec<f64> = hidden[encoded.response_start..]
            .iter()
            .map(|h| {
                let dot: f64 = h
                    .iter()
                    .zip(&goal)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let norm = |v: &[f32]| v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
                dot / (norm(h) * norm(&goal))
            })
            .collect();
        let got = q_values[2].as_ref().unwrap();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert!((f64::from(*g) - e).abs() < 1e-5, "{g} vs {e}");
        }
    }

    #[test]
    fn truncation_cases_are_counted_and_skipped_rows_are_null() {
        let mut encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = generations(10);
        let lengths: Vec<(usize, usize)> = (0..10)
            .map(|i| {
                let questions = frame.column(QUESTION).unwrap().str().unwrap();
                let responses = frame.column(RESPONSE).unwrap().str().unwrap();
                let e = encoder
                    .encode(questions.get(i).unwrap(), responses.get(i).unwrap())
                    .unwrap();
                (e.response_start, e.response_len + 1)
            })
            .collect();
        let scored: Vec<usize> = lengths.iter().map(|(_, r)| *r).collect();
        let max_len = (scored.iter().min().unwrap() + scored.iter().max().unwrap()) / 2;
        let expect_prompt = lengths
            .iter()
            .filter(|(p, r)| p + r > max_len && *r <= max_len)
            .count();
        let expect_response = lengths.iter().filter(|(_, r)| *r > max_len).count();
        assert!(expect_prompt > 0 && expect_response > 0, "{lengths:?}");
        encoder.max_len = Some(max_len);
        let (_, summary) = score_frame(
            &model,
            &encoder,
            &frame,
            Path::new("<t>"),
            &options(100, false),
            |_| {},
        )
        .unwrap();
        // A row whose response is cut lost its whole prompt first, so it counts in both.
        assert_eq!(summary.truncation.prompt, expect_prompt + expect_response);
        assert_eq!(summary.truncation.response, expect_response);
        assert_eq!(summary.truncation.skipped, 0);

        encoder.truncation = Truncation::Skip;
        let (scored, summary) = score_frame(
            &model,
            &encoder,
            &frame,
            Path::new("<t>"),
            &options(100, false),
            |_| {},
        )
        .unwrap();
        assert_eq!(summary.truncation.skipped, expect_prompt + expect_response);
        assert_eq!(
            scored.column(REWARD).unwrap().null_count(),
            expect_prompt + expect_response
        );
    }

    fn run_to(
        model: &crate::model::RewardModel,
        encoder: &Encoder,
        frame: &DataFrame,
        path: &Path,
        run: &RunOptions,
    ) -> Result<ScoreSummary> {
        run_with(model, encoder, frame, path, &options(200, true), run)
    }

    /// [`score_table`] of `frame` as if read from stdin (its manifest hashes the table).
    fn run_with(
        model: &crate::model::RewardModel,
        encoder: &Encoder,
        frame: &DataFrame,
        path: &Path,
        options: &ScoreOptions,
        run: &RunOptions,
    ) -> Result<ScoreSummary> {
        let output = Output::new(Some(path.to_owned()), None);
        score_table(
            model,
            encoder,
            frame.clone(),
            Path::new("-"),
            &output,
            options,
            run,
            &ProgressBar::hidden(),
        )
    }

    fn provenance(weights: &str) -> Provenance {
        Provenance {
            model: ModelIdentity {
                weights_sha256: weights.repeat(64),
                tokenizer_sha256: "c".repeat(64),
                untrained_head: None,
            },
            goal_sha256: Some("d".repeat(64)),
            device: "cpu".into(),
            input_sha256: None,
        }
    }

    #[test]
    fn resume_refuses_a_partial_output_of_another_run_naming_the_change() {
        let model = tiny_llama();
        let encoder = tiny_encoder();
        let frame = generations(7);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.parquet");
        let interrupted = RunOptions {
            chunk_rows: 3,
            stop_after_chunks: Some(1),
            provenance: provenance("a"),
            ..RunOptions::default()
        };
        run_to(&model, &encoder, &frame, &path, &interrupted).unwrap();
        let resume = RunOptions {
            chunk_rows: 3,
            resume: true,
            provenance: provenance("a"),
            ..RunOptions::default()
        };
        let refusal =
            |encoder: &Encoder, frame: &DataFrame, options: &ScoreOptions, run: &RunOptions| {
                let error = run_with(&model, encoder, frame, &path, options, run).unwrap_err();
                assert!(matches!(error, Error::Usage(_)), "{error}");
                let message = error.to_string();
                assert!(message.contains("to start over"), "{message}");
                message
            };
        let with_goal = options(200, true);

        let mut shorter = tiny_encoder();
        shorter.max_len = Some(512);
        let message = refusal(&shorter, &frame, &with_goal, &resume);
        assert!(
            message.contains("--max-len changed (none → 512)"),
            "{message}"
        );

        let message = refusal(&encoder, &frame, &options(200, false), &resume);
        assert!(message.contains("the goal was dropped"), "{message}");

        let other_weights = RunOptions {
            provenance: provenance("b"),
            ..resume.clone()
        };
        let message = refusal(&encoder, &frame, &with_goal, &other_weights);
        assert!(
            message.contains("the model weights changed (sha256 aaaaaaaaaaaa… → bbbbbbbbbbbb…)"),
            "{message}"
        );
        assert!(
            !message.contains("tokenizer"),
            "only what changed: {message}"
        );

        let message = refusal(&encoder, &generations(8), &with_goal, &resume);
        assert!(message.contains("the input changed"), "{message}");

        // The refusals left the partial output as it was: the same run continues it.
        let summary = run_to(&model, &encoder, &frame, &path, &resume).unwrap();
        assert_eq!((summary.resumed, summary.scored), (3, 4));
    }

    #[test]
    fn setup_errors_leave_no_partial_output() {
        let model = tiny_llama();
        let encoder = tiny_encoder();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.parquet");
        let run = RunOptions::default();

        let header_only = generations(3).head(Some(0));
        let error = run_to(&model, &encoder, &header_only, &path, &run).unwrap_err();
        assert!(error.to_string().contains("no rows"), "{error}");
        assert!(!partial_dir(&path).exists());

        let no_response = generations(3).drop(RESPONSE).unwrap();
        let error = run_to(&model, &encoder, &no_response, &path, &run).unwrap_err();
        assert!(matches!(error, Error::MissingColumn { .. }), "{error}");
        assert!(!partial_dir(&path).exists());

        // Found only at the first batch: the directory this run made is removed again.
        let mut bad_goal = options(100, false);
        bad_goal.goal = Some(Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap());
        let error =
            run_with(&model, &encoder, &generations(3), &path, &bad_goal, &run).unwrap_err();
        assert!(error.to_string().contains("hidden size is 32"), "{error}");
        assert!(!partial_dir(&path).exists() && !path.exists());

        // A partial directory without chunks (as an older qrm left) does not block the next run.
        std::fs::create_dir_all(partial_dir(&path)).unwrap();
        run_to(&model, &encoder, &generations(3), &path, &run).unwrap();
        assert!(path.exists() && !partial_dir(&path).exists());
    }

    #[test]
    fn scores_carry_rm_and_rm_id_next_to_it() {
        let (model, encoder) = (tiny_llama(), tiny_encoder());
        let (scored, _) = score_frame(
            &model,
            &encoder,
            &generations(2),
            Path::new("<t>"),
            &options(100, false),
            |_| {},
        )
        .unwrap();
        let names = scored.get_column_names();
        let rm = names.iter().position(|n| n.as_str() == RM).unwrap();
        assert_eq!(names[rm + 1].as_str(), RM_ID);
        let ids: Vec<_> = scored
            .column(RM_ID)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(ids, [Some("mock@0123456789ab"); 2]);
    }

    #[test]
    fn resume_after_an_interruption_equals_a_full_run() {
        let encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = generations(11);
        let dir = tempfile::tempdir().unwrap();
        let full_path = dir.path().join("full.parquet");
        let full_run = RunOptions {
            chunk_rows: 3,
            ..RunOptions::default()
        };
        run_to(&model, &encoder, &frame, &full_path, &full_run).unwrap();
        assert!(!partial_dir(&full_path).exists());

        let path = dir.path().join("resumed.parquet");
        let interrupted = RunOptions {
            chunk_rows: 3,
            stop_after_chunks: Some(2),
            ..RunOptions::default()
        };
        run_to(&model, &encoder, &frame, &path, &interrupted).unwrap();
        assert!(!path.exists() && partial_dir(&path).exists());
        assert!(
            run_to(&model, &encoder, &frame, &path, &full_run).is_err(),
            "needs --resume"
        );
        // A different chunk size on resume is fine: rows, not chunks, are skipped.
        let resume = RunOptions {
            chunk_rows: 4,
            resume: true,
            ..RunOptions::default()
        };
        let summary = run_to(&model, &encoder, &frame, &path, &resume).unwrap();
        assert_eq!((summary.resumed, summary.scored), (6, 5));
        assert!(!partial_dir(&path).exists());
        let full = read_table(&full_path).unwrap();
        let resumed = read_table(&path).unwrap();
        assert_frames_close(&full, &resumed, 1e-5);
    }

    #[test]
    fn shards_merge_back_into_the_full_run() {
        let encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = generations(10);
        let dir = tempfile::tempdir().unwrap();
        let full_path = dir.path().join("full.parquet");
        run_to(&model, &encoder, &frame, &full_path, &RunOptions::default()).unwrap();
        let mut parts = Vec::new();
        for index in 0..3 {
            let part = dir.path().join(format!("part{index}.parquet"));
            let run = RunOptions {
                chunk_rows: 2,
                shard: Some(Shard { index, count: 3 }),
                ..RunOptions::default()
            };
            let summary = run_to(&model, &encoder, &frame, &part, &run).unwrap();
            assert_eq!(summary.rows, [4, 3, 3][index]);
            parts.push(part);
        }
        let merged = merge_shards(&parts).unwrap();
        assert_frames_close(&read_table(&full_path).unwrap(), &merged, 1e-5);
        assert!(
            merge_shards(&parts[..2]).is_err(),
            "a missing shard is an error"
        );
        assert!(merge_shards(&[parts[0].clone(), parts[0].clone()]).is_err());
    }

    #[test]
    fn a_goal_of_another_hidden_size_is_an_error() {
        let (model, encoder) = (tiny_llama(), tiny_encoder());
        let mut options = options(100, false);
        options.goal = Some(Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap());
        let error = score_frame(
            &model,
            &encoder,
            &generations(2),
            Path::new("<t>"),
            &options,
            |_| {},
        )
        .unwrap_err();
        assert!(error.to_string().contains("hidden size is 32"), "{error}");
    }

    #[test]
    fn shard_spec_parses_and_rejects_out_of_range() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
    }
}

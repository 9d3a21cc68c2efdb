//! The resumable chunked run over a whole table: [`Scorer::score_table`] scores rows in chunks
//! with bounded memory, each chunk written to `OUTPUT.partial/` as its own Parquet file (so
//! `--resume` can skip the rows already done), and joins the chunks into the output at the end,
//! one Parquet row group per chunk. `OUTPUT.partial/manifest.json` ([`RunManifest`]) records
//! what the chunks were made from (sha256 of the input, the model weights, the tokenizer and
//! the goal, and every option that changes a score); `--resume` refuses a partial output of
//! another run and names what changed. The partial directory is created only once setup has
//! passed (columns, a non-empty input), and removed again when this run created it and fails
//! before its first chunk. With `--shard` only the shard's rows are scored
//! ([`crate::score::shards`]).

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use indicatif::ProgressBar;
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::batching::TokenModel;
use crate::model::loading::{short_hash, ModelIdentity};
use crate::model::template::{Encoder, Template};
use crate::pipeline::io::{
    display_path, encode, key_of, read_table, require_rows, write_atomic, Format, Output,
};
use crate::pipeline::schema::{Columns, QUESTION, RESPONSE};
use crate::score::rows::{score_columns, score_frame, ScoreOptions, ScoreSummary};
use crate::score::shards::{concat_frames, select_shard, Shard};

/// How [`Scorer::score_table`] runs.
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
    /// `--shared-prompt`, `on` or `off`; a manifest written before the option existed reads
    /// as `off` (every row was run whole).
    #[serde(default = "shared_prompt_off")]
    pub shared_prompt: String,
}

fn shared_prompt_off() -> String {
    "off".to_owned()
}

/// `--shared-prompt`'s value as the manifest records it.
fn on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_owned()
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
            shared_prompt: on_off(options.shared_prompt),
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
            (
                "--shared-prompt",
                then.shared_prompt.clone(),
                self.shared_prompt.clone(),
            ),
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

/// A reward model, the encoding its rows are scored with and what to compute for each row:
/// scores whole tables ([`Scorer::score_table`]).
pub struct Scorer<'a> {
    pub model: &'a dyn TokenModel,
    pub encoder: &'a Encoder,
    pub options: ScoreOptions,
}

impl Scorer<'_> {
    /// Scores a whole table (read from `input`, which names it in messages) and writes it to
    /// `output`.
    ///
    /// The input is checked first (rows, `question` and `response`): a failure leaves nothing
    /// behind. To a file: chunks go to `OUTPUT.partial/chunk-NNNNNN.parquet` (each written
    /// atomically) beside `OUTPUT.partial/manifest.json`, and once all are done they are joined
    /// into the output — as one Parquet row group per chunk, reading one chunk at a time, for
    /// `.parquet` — and the directory is removed. With `resume`, the rows of the chunks already
    /// there are skipped, provided the manifest matches. To stdout there is no partial
    /// directory and the chunks are joined in memory.
    pub fn score_table(
        &self,
        frame: DataFrame,
        input: &Path,
        output: &Output,
        run: &RunOptions,
        progress: &ProgressBar,
    ) -> Result<ScoreSummary> {
        let input_shown = display_path(input);
        check_input(&frame, &input_shown)?;
        let format = output.resolved_format()?;
        let file = output.path.as_deref().filter(|p| *p != Path::new("-"));
        if run.resume && file.is_none() {
            return Err(Error::Usage(
                "--resume continues an `-o FILE` run; output to stdout has nothing to resume"
                    .into(),
            ));
        }
        let partial = file.map(partial_dir);
        let manifest = match partial {
            Some(_) => Some(RunManifest::new(
                match &run.provenance.input_sha256 {
                    Some(sha256) => sha256.clone(),
                    None => frame_sha256(&frame, &input_shown)?,
                },
                self.encoder,
                &self.options,
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
        let result = self.score_chunks(
            &frame,
            &input_shown,
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
                    .unwrap_or_else(|| empty_scores(&frame, &self.options));
                output.write(&mut joined)?;
            }
        }
        Ok(summary)
    }

    /// The scoring loop of [`Scorer::score_table`]: scores the rows after those of
    /// `done_chunks`, writing each chunk to `partial` (and adding it to `done_chunks`) or
    /// keeping it in memory (returned). The flag is false when stopped by `stop_after_chunks`.
    fn score_chunks(
        &self,
        frame: &DataFrame,
        input_shown: &Path,
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
            let on_tokens = |tokens| {
                tokens_so_far += tokens;
                let seconds = started.elapsed().as_secs_f64().max(1e-9);
                progress.set_prefix(format!("{:.0} tokens/s", tokens_so_far as f64 / seconds));
            };
            let (mut scored, chunk_summary) = score_frame(
                self.model,
                self.encoder,
                &chunk,
                input_shown,
                &self.options,
                on_tokens,
            )?;
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::score::shards::merge_shards;
    use crate::score::test_support::{assert_frames_close, generations, options, sample_sets};
    use candle_core::{Device, Tensor};

    use crate::testing::{tiny_encoder, tiny_llama};

    fn run_to(
        model: &crate::model::RewardModel,
        encoder: &Encoder,
        frame: &DataFrame,
        path: &Path,
        run: &RunOptions,
    ) -> Result<ScoreSummary> {
        run_with(model, encoder, frame, path, &options(200, true), run)
    }

    /// [`Scorer::score_table`] of `frame` as if read from stdin (its manifest hashes the table).
    fn run_with(
        model: &crate::model::RewardModel,
        encoder: &Encoder,
        frame: &DataFrame,
        path: &Path,
        options: &ScoreOptions,
        run: &RunOptions,
    ) -> Result<ScoreSummary> {
        let output = Output::new(Some(path.to_owned()), None);
        let scorer = Scorer {
            model,
            encoder,
            options: options.clone(),
        };
        scorer.score_table(
            frame.clone(),
            Path::new("-"),
            &output,
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

        let unshared = ScoreOptions {
            shared_prompt: false,
            ..with_goal.clone()
        };
        let message = refusal(&encoder, &frame, &unshared, &resume);
        assert!(
            message.contains("--shared-prompt changed (on → off)"),
            "{message}"
        );

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
    fn shared_prompts_resumed_and_sharded_equal_the_run_without_sharing() {
        // 3 questions × 5 samples, interleaved: chunks of 4 rows split every sample set, and
        // shards of 2 hold parts of each.
        let encoder = tiny_encoder();
        let model = tiny_llama();
        let frame = sample_sets(3, 5);
        let dir = tempfile::tempdir().unwrap();
        let unshared = ScoreOptions {
            shared_prompt: false,
            ..options(200, true)
        };
        let whole_path = dir.path().join("whole.parquet");
        let default = RunOptions::default();
        run_with(&model, &encoder, &frame, &whole_path, &unshared, &default).unwrap();
        let whole = read_table(&whole_path).unwrap();

        let path = dir.path().join("shared.parquet");
        let interrupted = RunOptions {
            chunk_rows: 4,
            stop_after_chunks: Some(2),
            ..RunOptions::default()
        };
        run_to(&model, &encoder, &frame, &path, &interrupted).unwrap();
        let resume = RunOptions {
            chunk_rows: 4,
            resume: true,
            ..RunOptions::default()
        };
        let summary = run_to(&model, &encoder, &frame, &path, &resume).unwrap();
        assert_eq!((summary.resumed, summary.scored), (8, 7));
        assert_frames_close(&whole, &read_table(&path).unwrap(), 1e-5);

        let mut parts = Vec::new();
        for index in 0..2 {
            let part = dir.path().join(format!("part{index}.parquet"));
            let run = RunOptions {
                shard: Some(Shard { index, count: 2 }),
                ..RunOptions::default()
            };
            run_to(&model, &encoder, &frame, &part, &run).unwrap();
            parts.push(part);
        }
        assert_frames_close(&whole, &merge_shards(&parts).unwrap(), 1e-5);
    }
}

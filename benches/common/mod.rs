//! What the PyTorch-peer benches share (`benches/score.rs`, `benches/train.rs`): the peer process
//! and its line-JSON protocol, medians, the 1024³ matmul peak, forward FLOPs, ZeroEval sample
//! sets, and the f32 reward-model directory both stacks load.
//!
//! Each bench uses part of it, so unused items are allowed here rather than in each bench.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use qrm::model::{Checkpoint, HeadKind, ModelConfig, RewardModel};

/// A peer script under `python3` speaking one JSON object per line: its first line (`ready`)
/// after loading, then one answer line per request line.
pub struct Peer {
    child: Child,
    to_peer: ChildStdin,
    from_peer: Lines<BufReader<ChildStdout>>,
    /// The peer's first line; `torch`, `threads` and `matmul_gflops` at least.
    pub ready: serde_json::Value,
}

impl Peer {
    /// Starts `python3 benches/<script> args…`. `None`, with the reason on stdout, when python3,
    /// torch or transformers is missing: the caller then reports qrm alone.
    pub fn start(script: &str, args: &[&Path]) -> Result<Option<Peer>> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches")
            .join(script);
        let child = Command::new("python3")
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                println!("cannot run python3 ({e}): reporting qrm alone");
                return Ok(None);
            }
        };
        let to_peer = child.stdin.take().context("peer stdin")?;
        let from_peer = BufReader::new(child.stdout.take().context("peer stdout")?).lines();
        let mut peer = Peer {
            child,
            to_peer,
            from_peer,
            ready: serde_json::Value::Null,
        };
        match peer.read() {
            Ok(ready) => {
                peer.ready = ready;
                Ok(Some(peer))
            }
            Err(error) => {
                println!(
                    "the PyTorch peer did not start ({error:#}; `pip install torch transformers`): \
                     reporting qrm alone"
                );
                drop(peer.to_peer);
                peer.child.wait()?;
                Ok(None)
            }
        }
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        let line = self
            .from_peer
            .next()
            .context("the PyTorch peer exited (torch + transformers installed?)")??;
        Ok(serde_json::from_str(&line)?)
    }

    /// Sends one request line and reads its answer.
    pub fn request(&mut self, line: &str) -> Result<serde_json::Value> {
        writeln!(self.to_peer, "{line}")?;
        self.to_peer.flush()?;
        self.read()
    }

    /// `torch <version> (<threads> thr)`.
    pub fn name(&self) -> String {
        format!(
            "torch {} ({} thr)",
            self.ready["torch"].as_str().unwrap_or("?"),
            self.ready["threads"]
        )
    }

    /// Torch's 1024³ f32 matmul rate, GFLOP/s.
    pub fn matmul_gflops(&self) -> f64 {
        self.ready["matmul_gflops"].as_f64().unwrap_or(f64::NAN)
    }

    /// Closes the peer's stdin and waits for it to exit.
    pub fn finish(self) -> Result<()> {
        let Peer {
            mut child, to_peer, ..
        } = self;
        drop(to_peer);
        child.wait()?;
        Ok(())
    }
}

/// The floats of a JSON array field of a peer's answer.
pub fn floats(answer: &serde_json::Value, field: &str) -> Result<Vec<f64>> {
    Ok(answer[field]
        .as_array()
        .with_context(|| format!("the peer gave no {field}"))?
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect())
}

/// The largest |a − b| over rows; a missing value (NaN) on either side, or a missing row,
/// counts as infinite.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let diff = (x - y).abs();
            if diff.is_nan() {
                f64::INFINITY
            } else {
                diff
            }
        })
        .fold(0f64, f64::max)
}

/// Forward FLOPs (multiply-adds × 2) of one batch of `batch` rows × `seq_len` positions after
/// `past` cached positions: the projections and MLP per real-or-padded position, attention scores
/// and context per query-key pair (full score matrices, as both stacks compute them), and the
/// head.
pub fn forward_flops(config: &ModelConfig, batch: usize, seq_len: usize, past: usize) -> f64 {
    let hidden = config.hidden_size as f64;
    let kv = (config.num_kv_heads() * config.head_size()) as f64;
    let inner = config.intermediate_size as f64;
    let per_token = 2.0 * (2.0 * hidden * hidden + 2.0 * hidden * kv + 3.0 * hidden * inner);
    let attention = 2.0 * 2.0 * (seq_len * (past + seq_len)) as f64 * hidden;
    let layers = config.num_hidden_layers as f64;
    batch as f64
        * (layers * (per_token * seq_len as f64 + attention) + 2.0 * hidden * seq_len as f64)
}

/// Candle's 1024³ f32 matmul rate, GFLOP/s, with `side_by_side` matmuls running at once on
/// rayon's threads (1: one matmul, whose work candle splits over its threads; the scoring lanes'
/// count after [`qrm::model::batching::init_cpu_lanes`], where each matmul runs on one thread).
pub fn candle_matmul_gflops(side_by_side: usize) -> Result<f64> {
    use rayon::prelude::*;

    let size = 1024;
    let operands = (0..side_by_side.max(1))
        .map(|_| {
            Ok((
                Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?,
                Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let run = || -> Result<()> {
        operands
            .par_iter()
            .try_for_each(|(a, b)| a.matmul(b).map(drop))?;
        Ok(())
    };
    run()?;
    // The fastest of 20 (the peak: on a shared machine a mean measures the load), as the peer.
    let mut seconds = f64::INFINITY;
    for _ in 0..20 {
        let start = Instant::now();
        run()?;
        seconds = seconds.min(start.elapsed().as_secs_f64());
    }
    Ok(operands.len() as f64 * 2.0 * (size as f64).powi(3) / seconds / 1e9)
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `(question, output)` of the first `per_question` solutions (file order) of ZeroEval
/// questions `#0..#questions`, model-major: row i is question i mod `questions`.
pub fn zeroeval_sample_sets(
    path: &Path,
    questions: usize,
    per_question: usize,
) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut sets: Vec<Vec<(String, String)>> = vec![Vec::new(); questions];
    for line in reader.lines() {
        let row: serde_json::Value = serde_json::from_str(&line?)?;
        let id = row["id"].as_str().unwrap_or_default();
        let Some(number) = id.rsplit('#').next().and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        if number < questions && sets[number].len() < per_question {
            sets[number].push((
                row["question"].as_str().unwrap_or_default().to_owned(),
                row["output"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        if sets.iter().all(|set| set.len() == per_question) {
            break;
        }
    }
    if let Some(short) = sets.iter().position(|set| set.len() < per_question) {
        bail!("question #{short} has fewer than {per_question} solutions");
    }
    Ok((0..per_question)
        .flat_map(|sample| sets.iter().map(move |set| set[sample].clone()))
        .collect())
}

/// Saves `model` as the f32 `LlamaForSequenceClassification` directory both stacks load.
/// SmolLM2's GGUF declares its EOS (`<|im_end|>`) as the padding token, and transformers'
/// sequence classifier reads the reward at the last token that is not padding, so the directory
/// declares the padding token a trained checkpoint does (`qrm::train::run::pad_token_id`,
/// `<|endoftext|>`), returned.
pub fn save_for_peer(
    model: &RewardModel,
    tokenizer: &tokenizers::Tokenizer,
    directory: &Path,
) -> Result<u32> {
    let eos_id = qrm::model::template::find_eos_id(tokenizer, None)?;
    let pad = qrm::train::run::pad_token_id(tokenizer, eos_id);
    let mut model = model.clone();
    model.config.pad_token_id = Some(pad);
    model.save(directory)?;
    Ok(pad)
}

/// The GGUF checkpoint with a new linear head (seed 0), f32, saved for both stacks in
/// `directory` and loaded back from there: (the model, its pad token).
pub fn bench_reward_model(
    gguf: &Path,
    tokenizer: &tokenizers::Tokenizer,
    directory: &Path,
) -> Result<(RewardModel, u32)> {
    let checkpoint = Checkpoint::load(gguf, &Device::Cpu, DType::F32)?;
    let varmap = VarMap::new();
    let with_head = RewardModel::with_new_head(&checkpoint, HeadKind::Linear, &varmap, 0)?;
    let pad = save_for_peer(&with_head, tokenizer, directory)?;
    drop((with_head, checkpoint));
    Ok((RewardModel::load(directory, &Device::Cpu, DType::F32)?, pad))
}

/// One line of results: tokens/s over the median pass, the passes, and the GFLOP/s of the work
/// the stack ran (`flops` a pass) against its own 1024³ matmul rate `peak`. Returns the median.
pub fn report(name: &str, tokens: usize, seconds: &mut [f64], flops: f64, peak: f64) -> f64 {
    let median = median(seconds);
    let rate = flops / median / 1e9;
    println!(
        "{name:<24} {:8.1} tokens/s  median {median:.3} s of {seconds:.3?}  {rate:6.1} GFLOP/s \
         ({:.1} GFLOP a pass; its 1024³ matmul: {peak:.1} GFLOP/s; {:.0}% of it)",
        tokens as f64 / median,
        flops / 1e9,
        100.0 * rate / peak
    );
    median
}

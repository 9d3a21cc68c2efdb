//! Scoring throughput of SmolLM2-135M (f32, CPU) in qrm against PyTorch + transformers on the same
//! machine, the same texts, the same batches, measured in the same run.
//!
//! ```text
//! scripts/install-model.sh
//! cargo bench --profile dev --bench score -- [--batch 8] [--texts 16] [--max-tokens 256] [--repeats 3]
//! ```
//! (`--profile dev` is enough: the dev profile builds candle and gemm at opt-level 3, and the
//! time is spent there.) The bench loads the GGUF, adds a linear head, writes the model as an f32
//! `LlamaForSequenceClassification` directory, loads that directory in both qrm and
//! `benches/score_peer.py`, scores GSM8K test question+answer texts, and prints tokens/s for
//! each (passes alternate between the two stacks so both see the same machine load), their
//! ratio, the achieved GFLOP/s, and a 1024³ f32 matmul rate in each stack. Without python3 it
//! reports qrm alone.
//!
//! `--sample-sets` measures shared-prompt scoring instead (issue 16): 96 ZeroEval GSM8K rows
//! (`../shared/data/zeroeval`; the first 8 questions × the first 12 models' solutions, rows in
//! file order, i.e. interleaved), encoded as qrm-score does (chatml, EOS appended, max-len 1024),
//! scored by `qrm::score::scoring::score_encoded` at qrm-score's default budget (2,048 padded
//! tokens) with the shared prompt on and off in alternating passes. It prints tokens/s (all the
//! rows' tokens over the pass's seconds) and median for each, their ratio, the saving the token
//! counts predict (each prompt run once instead of N times) next to the measured one, and the
//! largest reward difference between the two paths. `--questions` and `--per-question` resize
//! it.
//!
//! Measured 2026-11-27 on the 2-core AMD EPYC dev machine (a shared VM: passes vary by ±15 %, so
//! binaries before and after a change were run back to back, release, 16 texts, 3,251 real
//! tokens, medians of 3 passes). With qrm's own CPU softmax and SiLU (`model::cpu_kernels`),
//! against the build before them: batch 8 519.5 vs 481.3 tokens/s (torch 2.15 in the same runs
//! 591.2 / 597.4: ratio 0.88 vs 0.81; an earlier pair 510.2 vs 486.0); batch 1 461.6 vs 416.0
//! (ratio 0.78 vs 0.75); batch 16 376.5 vs 320.0 (0.70 vs 0.64). Sequence rewards agree with
//! torch to 6.0e-7. qrm is still behind torch, most at batch 16, where attention (full score
//! matrices, no flash kernel) grows with the square of the length.
//!
//! 2026-12-01, same machine, release, idle (docs/scoring-speed.md): batch 8, 16 texts 326.9 vs
//! torch 368.1 tokens/s (0.89); `--sample-sets` shared 400.7 vs whole 315.7 tokens/s (1.27,
//! 21.2 % of the time saved, 25.4 % predicted) once batches hold at most 1/8 padding (before:
//! 355.3 vs 333.6, 6.1 % saved).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use qrm::model::{last_token_values, Checkpoint, HeadKind, ModelConfig, RewardModel};

struct Options {
    batch: usize,
    texts: usize,
    max_tokens: usize,
    repeats: usize,
    /// Under `cargo test`: qrm's side only, no peer.
    smoke: bool,
    /// Shared-prompt scoring of ZeroEval sample sets instead of the torch comparison.
    sample_sets: bool,
    questions: usize,
    per_question: usize,
}

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and
/// then a smoke pass (2 short texts, one repeat, qrm only) checks that the bench still runs
/// without spending CI minutes on a measurement. The PyTorch peer never runs under `cargo test`:
/// the test suite must pass on a machine without torch, and SmolLM2's parity with transformers
/// is pinned by `tests/cli/model.rs` against the committed `tests/fixtures/smollm2_reference.json`.
fn parse_options() -> Result<Options> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut options = if arguments.iter().any(|a| a == "--bench") {
        Options {
            batch: 8,
            texts: 16,
            max_tokens: 256,
            repeats: 3,
            smoke: false,
            sample_sets: false,
            questions: 8,
            per_question: 12,
        }
    } else {
        Options {
            batch: 2,
            texts: 2,
            max_tokens: 64,
            repeats: 1,
            smoke: true,
            sample_sets: false,
            questions: 2,
            per_question: 2,
        }
    };
    let mut args = arguments.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<usize> {
            args.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} needs an integer"))
        };
        match arg.as_str() {
            "--batch" => options.batch = value("--batch")?,
            "--texts" => options.texts = value("--texts")?,
            "--max-tokens" => options.max_tokens = value("--max-tokens")?,
            "--repeats" => options.repeats = value("--repeats")?,
            "--questions" => options.questions = value("--questions")?,
            "--per-question" => options.per_question = value("--per-question")?,
            "--sample-sets" => options.sample_sets = true,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

/// Question + reference solution of the first `count` GSM8K test problems.
fn gsm8k_texts(path: &Path, count: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .take(count)
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line)?;
            Ok(format!(
                "{}\n{}",
                row["question"].as_str().unwrap_or_default(),
                row["answer"].as_str().unwrap_or_default()
            ))
        })
        .collect()
}

/// Right-padded batches of token ids (pad id `pad`).
/// Token ids and attention mask of one padded batch, row-major.
type Batch = (Vec<Vec<u32>>, Vec<Vec<u32>>);

fn batches(encodings: &[Vec<u32>], batch: usize, pad: u32) -> Vec<Batch> {
    encodings
        .chunks(batch)
        .map(|chunk| {
            let width = chunk.iter().map(Vec::len).max().unwrap_or(0);
            let ids = chunk
                .iter()
                .map(|e| {
                    let mut row = e.clone();
                    row.resize(width, pad);
                    row
                })
                .collect();
            let mask = chunk
                .iter()
                .map(|e| (0..width).map(|j| u32::from(j < e.len())).collect())
                .collect();
            (ids, mask)
        })
        .collect()
}

fn to_tensor(rows: &[Vec<u32>]) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        rows.concat(),
        (rows.len(), rows[0].len()),
        &Device::Cpu,
    )?)
}

/// Forward FLOPs (multiply-adds × 2) of one batch: the projections and MLP per real-or-padded
/// token, attention scores and context per query-key pair, and the head.
fn forward_flops(config: &ModelConfig, batch: usize, seq_len: usize) -> f64 {
    let hidden = config.hidden_size as f64;
    let kv = (config.num_kv_heads() * config.head_size()) as f64;
    let inner = config.intermediate_size as f64;
    let per_token = 2.0 * (2.0 * hidden * hidden + 2.0 * hidden * kv + 3.0 * hidden * inner);
    let attention = 2.0 * 2.0 * (seq_len * seq_len) as f64 * hidden;
    let layers = config.num_hidden_layers as f64;
    batch as f64
        * (layers * (per_token * seq_len as f64 + attention) + 2.0 * hidden * seq_len as f64)
}

fn candle_matmul_gflops() -> Result<f64> {
    let size = 1024;
    let a = Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?;
    a.matmul(&b)?;
    let repeats = 20;
    let start = Instant::now();
    for _ in 0..repeats {
        a.matmul(&b)?;
    }
    let seconds = start.elapsed().as_secs_f64() / repeats as f64;
    Ok(2.0 * (size as f64).powi(3) / seconds / 1e9)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `(question, output)` of the first `per_question` solutions (file order) of ZeroEval
/// questions `#0..#questions`, model-major: row i is question i mod `questions`.
fn zeroeval_sample_sets(
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

/// Shared-prompt scoring against whole rows on ZeroEval sample sets (`--sample-sets`).
fn sample_sets_bench(options: &Options, gguf: &Path, model: &RewardModel) -> Result<()> {
    use qrm::model::template::{find_eos_id, Encoder, EosPolicy, Template, Truncation};
    use qrm::score::scoring::{score_encoded, ScoreOptions};
    let Some(zeroeval) = qrm::testing::shared_file("zeroeval/gsm8k_test_42models.jsonl.gz") else {
        return Ok(());
    };
    let tokenizer = qrm::model::gguf::tokenizer_from_gguf(gguf)?;
    let eos_id = find_eos_id(&tokenizer, None)?;
    let encoder = Encoder {
        tokenizer,
        template: Template::ChatMl,
        eos: EosPolicy::Append,
        eos_id,
        max_len: Some(1024),
        truncation: Truncation::LeftPrompt,
    };
    let rows = zeroeval_sample_sets(&zeroeval, options.questions, options.per_question)?;
    let questions: Vec<&str> = rows.iter().map(|(q, _)| q.as_str()).collect();
    let responses: Vec<&str> = rows.iter().map(|(_, r)| r.as_str()).collect();
    let encoded = encoder.encode_rows(&questions, &responses)?;
    let whole_tokens: usize = encoded.iter().map(|e| e.input_ids.len()).sum();
    // Each distinct prompt runs once instead of once per row.
    let mut prompts = std::collections::HashMap::new();
    for example in &encoded {
        *prompts
            .entry(&example.input_ids[..example.response_start])
            .or_insert(0usize) += 1;
    }
    let repeated: usize = prompts.iter().map(|(p, n)| (n - 1) * p.len()).sum();
    let prompt_tokens: usize = prompts.iter().map(|(p, n)| n * p.len()).sum();
    let shared_tokens = whole_tokens - repeated;
    let score_options = |shared_prompt: bool| ScoreOptions {
        rm_name: "bench".into(),
        rm_id: "bench@000000000000".into(),
        batch_tokens: 2048,
        goal: None,
        emit_tokens: false,
        shared_prompt,
    };
    let pass = |shared: bool| -> Result<(f64, Vec<f32>)> {
        let start = Instant::now();
        let scores = score_encoded(model, &encoder, &encoded, &score_options(shared), |_| {})?;
        let seconds = start.elapsed().as_secs_f64();
        Ok((
            seconds,
            scores
                .iter()
                .map(|s| s.reward.unwrap_or(f32::NAN))
                .collect(),
        ))
    };
    println!(
        "workload: {} ZeroEval GSM8K rows ({} questions × {} models), {whole_tokens} tokens \
         ({prompt_tokens} of them prompt tokens, {} distinct prompts); with shared prompts \
         {shared_tokens} tokens run through the model; {} threads",
        encoded.len(),
        options.questions,
        options.per_question,
        prompts.len(),
        candle_core::utils::get_num_threads()
    );
    let (mut shared_seconds, mut whole_seconds) = (Vec::new(), Vec::new());
    let mut max_diff = 0f64;
    for _ in 0..options.repeats {
        let (seconds, shared) = pass(true)?;
        shared_seconds.push(seconds);
        let (seconds, whole) = pass(false)?;
        whole_seconds.push(seconds);
        for (a, b) in shared.iter().zip(&whole) {
            let diff = (f64::from(*a) - f64::from(*b)).abs();
            // A missing (NaN) reward on either side counts as a disagreement.
            max_diff = max_diff.max(if diff.is_nan() { f64::INFINITY } else { diff });
        }
    }
    let report = |name: &str, seconds: &mut Vec<f64>| -> f64 {
        let median = median(seconds);
        println!(
            "{name:<24} {:8.1} tokens/s  median {:.3} s of {:.3?}",
            whole_tokens as f64 / median,
            median,
            seconds
        );
        median
    };
    let shared = report("qrm, shared prompts", &mut shared_seconds);
    let whole = report("qrm, whole rows", &mut whole_seconds);
    println!(
        "shared / whole throughput ratio: {:.2}; time saved: predicted from token counts {:.1}% \
         (1 − {shared_tokens}/{whole_tokens}), measured {:.1}%",
        whole / shared,
        100.0 * repeated as f64 / whole_tokens as f64,
        100.0 * (1.0 - shared / whole)
    );
    println!("sequence rewards, shared vs whole rows: max |Δ| = {max_diff:.2e}");
    if max_diff > 1e-4 {
        bail!("shared-prompt and whole-row rewards disagree: max |Δ| = {max_diff:e}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let options = parse_options()?;
    let Some(gguf) = qrm::testing::default_model() else {
        return Ok(());
    };
    let Some(gsm8k) = qrm::testing::shared_file("gsm8k/test.jsonl") else {
        return Ok(());
    };
    let tokenizer = qrm::model::gguf::tokenizer_from_gguf(&gguf)?;
    let texts = gsm8k_texts(&gsm8k, options.texts)?;
    let mut encodings = texts
        .iter()
        .map(|t| {
            let ids = tokenizer
                .encode(t.as_str(), false)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut ids = ids.get_ids().to_vec();
            ids.truncate(options.max_tokens);
            Ok(ids)
        })
        .collect::<Result<Vec<_>>>()?;
    // Sorting by length keeps padding low, as a scorer would.
    encodings.sort_by_key(Vec::len);
    let checkpoint = Checkpoint::load(&gguf, &Device::Cpu, DType::F32)?;
    let pad = checkpoint.config.pad_token_id.unwrap_or(0);
    let batches = batches(&encodings, options.batch, pad);
    let real_tokens: usize = encodings.iter().map(Vec::len).sum();
    let padded_tokens: usize = batches
        .iter()
        .map(|(ids, _)| ids.len() * ids[0].len())
        .sum();
    let flops: f64 = batches
        .iter()
        .map(|(ids, _)| forward_flops(&checkpoint.config, ids.len(), ids[0].len()))
        .sum();

    // The same f32 reward model for both stacks.
    let varmap = VarMap::new();
    let with_head = RewardModel::with_new_head(&checkpoint, HeadKind::Linear, &varmap, 0)?;
    let dir = tempfile::tempdir()?;
    with_head.save(dir.path())?;
    drop((with_head, checkpoint));
    let model = RewardModel::load(dir.path(), &Device::Cpu, DType::F32)?;
    if options.sample_sets || options.smoke {
        // Under `cargo test` a 2 × 2 smoke pass of the sample-set mode runs too.
        sample_sets_bench(&options, &gguf, &model)?;
        if options.sample_sets {
            return Ok(());
        }
    }

    let tensors = batches
        .iter()
        .map(|(ids, mask)| Ok((to_tensor(ids)?, to_tensor(mask)?)))
        .collect::<Result<Vec<_>>>()?;
    let one_pass = || -> Result<(f64, Vec<f32>)> {
        let start = Instant::now();
        let mut rewards = Vec::new();
        for (ids, mask) in &tensors {
            let out = model.forward(ids, mask)?;
            rewards.extend(last_token_values(&out.token_rewards, mask)?.to_vec1::<f32>()?);
        }
        Ok((start.elapsed().as_secs_f64(), rewards))
    };
    let (_, smoke_rewards) = one_pass()?;
    if options.smoke {
        if smoke_rewards.len() != encodings.len() || smoke_rewards.iter().any(|r| !r.is_finite()) {
            bail!(
                "the smoke pass gave {smoke_rewards:?} for {} texts",
                encodings.len()
            );
        }
        println!(
            "score bench smoke pass: qrm scored {} texts ({real_tokens} tokens); the PyTorch peer \
             runs only under `cargo bench --bench score`",
            encodings.len()
        );
        return Ok(());
    }
    let candle_peak = candle_matmul_gflops()?;
    println!(
        "workload: {} texts, batch {}, {} real tokens ({} with padding), {:.1} GFLOP per pass, {} threads",
        encodings.len(),
        options.batch,
        real_tokens,
        padded_tokens,
        flops / 1e9,
        candle_core::utils::get_num_threads()
    );
    let report = |name: &str, seconds: &mut Vec<f64>, peak: f64| -> f64 {
        let median = median(seconds);
        println!(
            "{name:<22} {:8.1} tokens/s  median {:.3} s of {:.3?}  {:6.1} GFLOP/s  (its 1024³ matmul: {:.1} GFLOP/s; {:.0}% of it)",
            real_tokens as f64 / median,
            median,
            seconds,
            flops / median / 1e9,
            peak,
            100.0 * flops / median / 1e9 / peak
        );
        median
    };

    let batches_path: PathBuf = dir.path().join("batches.json");
    let json = serde_json::json!({"batches": batches.iter().map(|(ids, mask)| {
        serde_json::json!({"input_ids": ids, "attention_mask": mask})
    }).collect::<Vec<_>>()});
    std::fs::write(&batches_path, json.to_string())?;
    let peer_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/score_peer.py");
    let peer = Command::new("python3")
        .arg(&peer_script)
        .arg(dir.path())
        .arg(&batches_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut peer = match peer {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot run python3 ({e}): reporting qrm alone");
            let mut seconds = (0..options.repeats)
                .map(|_| one_pass().map(|(s, _)| s))
                .collect::<Result<Vec<_>>>()?;
            report("qrm (candle)", &mut seconds, candle_peak);
            return Ok(());
        }
    };
    let mut to_peer = peer.stdin.take().context("peer stdin")?;
    let mut from_peer = BufReader::new(peer.stdout.take().context("peer stdout")?).lines();
    let mut read_peer = || -> Result<serde_json::Value> {
        let line = from_peer
            .next()
            .context("the PyTorch peer exited (torch + transformers installed?)")??;
        Ok(serde_json::from_str(&line)?)
    };
    let ready = match read_peer() {
        Ok(ready) => ready,
        Err(error) => {
            println!(
                "the PyTorch peer did not start ({error:#}; `pip install torch transformers`): \
                 reporting qrm alone"
            );
            let mut seconds = (0..options.repeats)
                .map(|_| one_pass().map(|(s, _)| s))
                .collect::<Result<Vec<_>>>()?;
            report("qrm (candle)", &mut seconds, candle_peak);
            return Ok(());
        }
    };
    // Alternate qrm and torch passes so both see the same machine load.
    let (mut qrm_seconds, mut torch_seconds) = (Vec::new(), Vec::new());
    let (mut rewards, mut peer_rewards) = (Vec::new(), Vec::new());
    for _ in 0..options.repeats {
        let (seconds, ours) = one_pass()?;
        qrm_seconds.push(seconds);
        rewards = ours;
        writeln!(to_peer, "pass")?;
        to_peer.flush()?;
        let answer = read_peer()?;
        torch_seconds.push(answer["seconds"].as_f64().context("peer gave no seconds")?);
        peer_rewards = answer["rewards"]
            .as_array()
            .context("peer gave no rewards")?
            .iter()
            .filter_map(|v| v.as_f64())
            .collect();
    }
    drop(to_peer);
    peer.wait()?;
    let qrm_median = report("qrm (candle)", &mut qrm_seconds, candle_peak);
    let torch_median = report(
        &format!(
            "torch {} ({} thr)",
            ready["torch"].as_str().unwrap_or("?"),
            ready["threads"]
        ),
        &mut torch_seconds,
        ready["matmul_gflops"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "qrm / torch throughput ratio: {:.2}",
        torch_median / qrm_median
    );
    let max_diff = rewards
        .iter()
        .zip(&peer_rewards)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0f64, f64::max);
    println!(
        "sequence rewards, qrm vs torch: max |Δ| = {max_diff:.2e} over {} texts",
        peer_rewards.len()
    );
    // f32 through 30 layers in two stacks: parity is ~1e-6; anything near 1e-4 is a bug.
    if peer_rewards.len() != rewards.len() || max_diff > 1e-4 {
        bail!(
            "qrm and torch disagree: max |Δ| = {max_diff:e} over {} of {} texts",
            peer_rewards.len(),
            rewards.len()
        );
    }
    Ok(())
}

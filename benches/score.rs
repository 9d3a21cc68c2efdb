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
//! reports qrm alone. qrm runs its batches through its scoring loop
//! (`model::batching::run_plan`): as many batches at once as rayon has threads, each matmul on
//! its batch's thread (`model::batching::init_cpu_lanes`, called first in `main`), rewards in
//! order — what qrm-score does; torch runs one batch after another with its OpenMP threads, as
//! transformers users do.
//!
//! `--sample-sets` measures shared-prompt scoring instead (issue 16): 96 ZeroEval GSM8K rows
//! (`../shared/data/zeroeval`; the first 8 questions × the first 12 models' solutions, the
//! repro-gsm8k shape, rows in file order, i.e. interleaved), encoded as qrm-score does (chatml,
//! EOS appended, max-len 1024), scored three ways in alternating passes (so all three see the
//! same machine load): `qrm::score::scoring::score_encoded` at qrm-score's default budget (2,048
//! padded tokens) with the shared prompt on, and off (whole rows), and by the PyTorch peer
//! scoring the same encoded rows the usual way: sorted by length in exactly the batches qrm's
//! whole-row path runs (`model::batching::plan_batches`: ≤ 2,048 padded tokens and ≤ 1/8
//! padding a batch), through the same `benches/score_peer.py` protocol. It prints tokens/s (all
//! the rows' tokens over the pass's seconds) and median for each, the ratios shared / torch,
//! whole / torch and shared / whole, the saving the token counts predict (each prompt run once
//! instead of N times) next to the measured one, the GFLOP/s of the work each path ran against
//! its own stack's 1024³ matmul peak, and the largest reward difference of qrm-shared against
//! whole rows and against torch (either above 1e-4 fails the bench). Without torch it reports
//! qrm alone. `--questions` and `--per-question` resize it.
//!
//! Both modes: the matmul peak is the fastest of 20 1024³ f32 matmuls in each stack (in qrm,
//! one per lane at once, each on its thread, as the scoring lanes run them).
//! `RAYON_NUM_THREADS` sets qrm's threads and `OMP_NUM_THREADS` torch's. SmolLM2's GGUF declares
//! its EOS (`<|im_end|>`) as the padding token, and transformers' sequence classifier reads the
//! reward at the last token that is not padding, so the model directory declares the padding
//! token a trained checkpoint does (`qrm::train::run::pad_token_id`, `<|endoftext|>`).
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
//!
//! 2026-12-01 later, same machine shared with training runs (load average 2.8–7; the table is in
//! docs/scoring-speed.md): `--sample-sets` at 1 thread each (`RAYON_NUM_THREADS=1
//! OMP_NUM_THREADS=1`, the fair setting on a loaded machine) qrm shared 239.5, qrm whole 181.8,
//! torch 212.9 tokens/s: shared / torch 1.13 (goal ≥ 1.5), whole / torch 0.85; at the default 2
//! threads 222.0 / 176.0 / 97.9 (2.27, 1.80), where torch's OpenMP threads lose half their speed
//! to the co-tenant. Unique prompts at 1 thread: 0.82 (2 threads, loaded: 1.89). Rewards agree
//! with torch to 3.8e-7.
//!
//! 2026-12-03, same kind of VM, idle, release, after a lane takes the next batch as soon as it
//! finishes one and each matmul runs on its lane's thread (docs/scoring-speed.md): `--sample-sets`
//! shared 704.2, whole 566.6, torch 407.9 tokens/s (1.73, 1.39; an earlier run 1.57, 1.28);
//! unique prompts 501.5 vs 367.4 (1.36).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use common::{
    bench_reward_model, candle_matmul_gflops, forward_flops, max_abs_diff, report,
    zeroeval_sample_sets, Peer,
};
use qrm::model::{last_token_values, RewardModel};

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

/// Token ids and attention mask of one right-padded batch, row-major.
type Batch = (Vec<Vec<u32>>, Vec<Vec<u32>>);

/// One batch of `rows`, right-padded with `pad` to the longest.
fn padded(rows: &[&[u32]], pad: u32) -> Batch {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let ids = rows
        .iter()
        .map(|r| {
            let mut row = r.to_vec();
            row.resize(width, pad);
            row
        })
        .collect();
    let mask = rows
        .iter()
        .map(|r| (0..width).map(|j| u32::from(j < r.len())).collect())
        .collect();
    (ids, mask)
}

fn to_tensor(rows: &[Vec<u32>]) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        rows.concat(),
        (rows.len(), rows[0].len()),
        &Device::Cpu,
    )?)
}

/// Starts `benches/score_peer.py` on `batches` (written to `dir/batches.json`) of the model in
/// `model_dir`, waiting for pass requests; `None` when torch is missing.
fn start_score_peer(model_dir: &Path, dir: &Path, batches: &[Batch]) -> Result<Option<Peer>> {
    let batches_path: PathBuf = dir.join("batches.json");
    let json = serde_json::json!({"batches": batches.iter().map(|(ids, mask)| {
        serde_json::json!({"input_ids": ids, "attention_mask": mask})
    }).collect::<Vec<_>>()});
    std::fs::write(&batches_path, json.to_string())?;
    Peer::start("score_peer.py", &[model_dir, &batches_path])
}

/// One peer pass over all batches: its seconds and the sequence rewards in batch order.
fn peer_pass(peer: &mut Peer) -> Result<(f64, Vec<f64>)> {
    let answer = peer.request("pass")?;
    let seconds = answer["seconds"].as_f64().context("peer gave no seconds")?;
    Ok((seconds, common::floats(&answer, "rewards")?))
}

/// The model files both stacks load, and what the sample-set bench needs to know about them.
struct BenchModel<'a> {
    gguf: &'a Path,
    model: &'a RewardModel,
    /// Where the f32 `LlamaForSequenceClassification` directory was written.
    model_dir: &'a Path,
    /// The `pad_token_id` it declares (transformers reads the reward at the last other token).
    pad: u32,
}

/// Shared-prompt scoring against whole rows and against PyTorch on ZeroEval sample sets
/// (`--sample-sets`).
fn sample_sets_bench(options: &Options, bench: &BenchModel) -> Result<()> {
    use qrm::model::batching::{plan_batches, prompt_groups};
    use qrm::model::template::{find_eos_id, Encoder, EosPolicy, Template, Truncation};
    use qrm::score::scoring::{score_encoded, ScoreOptions};
    let Some(zeroeval) = qrm::testing::shared_file("zeroeval/gsm8k_test_42models.jsonl.gz") else {
        return Ok(());
    };
    let model = bench.model;
    let config = &model.config;
    let tokenizer = qrm::model::gguf::tokenizer_from_gguf(bench.gguf)?;
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
    const BATCH_TOKENS: usize = 2048; // qrm-score's default --batch-tokens
    let score_options = |shared_prompt: bool| ScoreOptions {
        rm_name: "bench".into(),
        rm_id: "bench@000000000000".into(),
        batch_tokens: BATCH_TOKENS,
        goal: None,
        emit_tokens: false,
        shared_prompt,
    };
    let pass = |shared: bool| -> Result<(f64, Vec<f64>)> {
        let start = Instant::now();
        let scores = score_encoded(model, &encoder, &encoded, &score_options(shared), |_| {})?;
        let seconds = start.elapsed().as_secs_f64();
        Ok((
            seconds,
            scores
                .iter()
                .map(|s| s.reward.map_or(f64::NAN, f64::from))
                .collect(),
        ))
    };

    // The batches of qrm's whole-row path, which torch runs too. FLOPs of the work each path
    // does, with the batch plan of `run_batches_sharing_prompts`: whole rows in `plan_batches`
    // batches; with shared prompts each group's prompt once (batch 1), then its rows' own
    // tokens after it, batched by their whole lengths.
    let lengths: Vec<usize> = encoded.iter().map(|e| e.input_ids.len()).collect();
    let whole_plan = plan_batches(&lengths, BATCH_TOKENS);
    let longest = |plan: &[usize], of: &dyn Fn(usize) -> usize| {
        plan.iter().map(|&i| of(i)).max().unwrap_or(0)
    };
    let whole_flops: f64 = whole_plan
        .iter()
        .map(|b| forward_flops(config, b.len(), longest(b, &|i| lengths[i]), 0))
        .sum();
    let padded_tokens: usize = whole_plan
        .iter()
        .map(|b| b.len() * longest(b, &|i| lengths[i]))
        .sum();
    let groups = prompt_groups(&encoded);
    let mut alone = lengths.clone();
    let mut shared_flops = 0.0;
    for group in &groups {
        let prompt_len = encoded[group[0]].response_start;
        shared_flops += forward_flops(config, 1, prompt_len, 0);
        let whole: Vec<usize> = group.iter().map(|&i| lengths[i]).collect();
        for members in plan_batches(&whole, BATCH_TOKENS) {
            let own = longest(&members, &|m| whole[m]) - prompt_len;
            shared_flops += forward_flops(config, members.len(), own, prompt_len);
        }
        for &i in group {
            alone[i] = 0;
        }
    }
    shared_flops += plan_batches(&alone, BATCH_TOKENS)
        .iter()
        .map(|b| forward_flops(config, b.len(), longest(b, &|i| alone[i]), 0))
        .sum::<f64>();

    println!(
        "workload: {} ZeroEval GSM8K rows ({} questions × {} models), {whole_tokens} tokens \
         ({prompt_tokens} of them prompt tokens, {} distinct prompts); with shared prompts \
         {shared_tokens} tokens run through the model; {} threads, one-thread matmuls side by side",
        encoded.len(),
        options.questions,
        options.per_question,
        prompts.len(),
        rayon::current_num_threads()
    );
    let mut peer = None;
    if !options.smoke {
        let torch_batches: Vec<Batch> = whole_plan
            .iter()
            .map(|b| {
                let rows: Vec<&[u32]> =
                    b.iter().map(|&i| encoded[i].input_ids.as_slice()).collect();
                padded(&rows, bench.pad)
            })
            .collect();
        if let Some(row) = encoded
            .iter()
            .position(|e| e.input_ids.last() == Some(&bench.pad))
        {
            bail!(
                "row {} ends with the pad token {}: torch would read its reward elsewhere",
                row + 1,
                bench.pad
            );
        }
        println!(
            "torch batches: the {} batches of qrm's whole-row path (sorted by length, ≤ \
             {BATCH_TOKENS} padded tokens, ≤ 1/8 padding; {padded_tokens} padded tokens)",
            whole_plan.len()
        );
        let dir = tempfile::tempdir()?;
        peer = start_score_peer(bench.model_dir, dir.path(), &torch_batches)?.map(|p| (p, dir));
    }
    let candle_peak =
        candle_matmul_gflops(qrm::model::batching::batch_lanes(&candle_core::Device::Cpu))?;
    // Alternate the passes so all of them see the same machine load.
    let (mut shared_seconds, mut whole_seconds, mut torch_seconds) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut whole_diff, mut torch_diff) = (0f64, 0f64);
    for _ in 0..options.repeats {
        let (seconds, shared) = pass(true)?;
        shared_seconds.push(seconds);
        let (seconds, whole) = pass(false)?;
        whole_seconds.push(seconds);
        whole_diff = whole_diff.max(max_abs_diff(&shared, &whole));
        if let Some((peer, _)) = &mut peer {
            let (seconds, in_batches) = peer_pass(peer)?;
            torch_seconds.push(seconds);
            // Back to row order.
            let mut torch = vec![f64::NAN; encoded.len()];
            for (&row, reward) in whole_plan.iter().flatten().zip(&in_batches) {
                torch[row] = *reward;
            }
            if in_batches.len() != encoded.len() {
                torch.push(f64::NAN); // a length mismatch: counted as a disagreement
            }
            torch_diff = torch_diff.max(max_abs_diff(&shared, &torch));
        }
    }
    let shared_median = report(
        "qrm, shared prompts",
        whole_tokens,
        &mut shared_seconds,
        shared_flops,
        candle_peak,
    );
    let whole_median = report(
        "qrm, whole rows",
        whole_tokens,
        &mut whole_seconds,
        whole_flops,
        candle_peak,
    );
    println!(
        "shared / whole throughput ratio: {:.2}; time saved: predicted from token counts {:.1}% \
         (1 − {shared_tokens}/{whole_tokens}), measured {:.1}%",
        whole_median / shared_median,
        100.0 * repeated as f64 / whole_tokens as f64,
        100.0 * (1.0 - shared_median / whole_median)
    );
    println!("sequence rewards, shared vs whole rows: max |Δ| = {whole_diff:.2e}");
    if let Some((peer, _dir)) = peer {
        let torch_median = report(
            &peer.name(),
            whole_tokens,
            &mut torch_seconds,
            whole_flops,
            peer.matmul_gflops(),
        );
        peer.finish()?;
        println!(
            "throughput ratios: qrm shared / torch {:.2}, qrm whole / torch {:.2}",
            torch_median / shared_median,
            torch_median / whole_median
        );
        println!(
            "sequence rewards, qrm shared vs torch: max |Δ| = {torch_diff:.2e} over {} rows",
            encoded.len()
        );
    }
    // f32 through 30 layers in two stacks: parity is ~1e-6; anything near 1e-4 is a bug.
    if whole_diff > 1e-4 {
        bail!("shared-prompt and whole-row rewards disagree: max |Δ| = {whole_diff:e}");
    }
    if torch_diff > 1e-4 {
        bail!("qrm (shared prompts) and torch disagree: max |Δ| = {torch_diff:e}");
    }
    Ok(())
}

fn main() -> Result<()> {
    // As qrm-score: batches side by side, each matmul on its lane's thread.
    qrm::model::batching::init_cpu_lanes();
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
    // The same f32 reward model for both stacks (`common::bench_reward_model`).
    let dir = tempfile::tempdir()?;
    let (model, pad) = bench_reward_model(&gguf, &tokenizer, dir.path())?;
    if options.sample_sets || options.smoke {
        // Under `cargo test` a 2 × 2 smoke pass of the sample-set mode runs too (qrm only).
        let bench = BenchModel {
            gguf: &gguf,
            model: &model,
            model_dir: dir.path(),
            pad,
        };
        sample_sets_bench(&options, &bench)?;
        if options.sample_sets {
            return Ok(());
        }
    }

    let batches: Vec<Batch> = encodings
        .chunks(options.batch)
        .map(|chunk| {
            let rows: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            padded(&rows, pad)
        })
        .collect();
    let real_tokens: usize = encodings.iter().map(Vec::len).sum();
    let padded_tokens: usize = batches
        .iter()
        .map(|(ids, _)| ids.len() * ids[0].len())
        .sum();
    let config = &model.config;
    let flops: f64 = batches
        .iter()
        .map(|(ids, _)| forward_flops(config, ids.len(), ids[0].len(), 0))
        .sum();
    let tensors = batches
        .iter()
        .map(|(ids, mask)| Ok((to_tensor(ids)?, to_tensor(mask)?)))
        .collect::<Result<Vec<_>>>()?;
    // qrm runs the batches through its scoring loop (`model::batching::run_plan`, as qrm-score
    // does: `batch_lanes` batches at once on the CPU, results in order); pass `i` is batch `i`.
    let plan: Vec<Vec<usize>> = (0..tensors.len()).map(|i| vec![i]).collect();
    let lanes = qrm::model::batching::batch_lanes(&candle_core::Device::Cpu);
    let one_pass = || -> Result<(f64, Vec<f64>)> {
        use qrm::model::batching::run_plan;
        let start = Instant::now();
        let mut rewards = Vec::new();
        run_plan(
            &plan,
            &[],
            lanes,
            |_| Ok(()),
            |job: qrm::model::batching::Job<'_, ()>| {
                let (ids, mask) = &tensors[job.batch()[0]];
                let out = model.forward(ids, mask)?;
                Ok(last_token_values(&out.token_rewards, mask)?.to_vec1::<f32>()?)
            },
            |_, last| {
                rewards.extend(last.into_iter().map(f64::from));
                Ok(())
            },
        )?;
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
    let candle_peak = candle_matmul_gflops(lanes)?;
    println!(
        "workload: {} texts, batch {}, {} real tokens ({} with padding), {:.1} GFLOP per pass, {} threads, \
         qrm {lanes} batches at once, one-thread matmuls",
        encodings.len(),
        options.batch,
        real_tokens,
        padded_tokens,
        flops / 1e9,
        rayon::current_num_threads()
    );
    let Some(mut peer) = start_score_peer(dir.path(), dir.path(), &batches)? else {
        let mut seconds = (0..options.repeats)
            .map(|_| one_pass().map(|(s, _)| s))
            .collect::<Result<Vec<_>>>()?;
        report(
            "qrm (candle)",
            real_tokens,
            &mut seconds,
            flops,
            candle_peak,
        );
        return Ok(());
    };
    // Alternate qrm and torch passes so both see the same machine load.
    let (mut qrm_seconds, mut torch_seconds) = (Vec::new(), Vec::new());
    let mut max_diff = 0f64;
    for _ in 0..options.repeats {
        let (seconds, ours) = one_pass()?;
        qrm_seconds.push(seconds);
        let (seconds, theirs) = peer_pass(&mut peer)?;
        torch_seconds.push(seconds);
        max_diff = max_diff.max(max_abs_diff(&ours, &theirs));
    }
    let qrm_median = report(
        "qrm (candle)",
        real_tokens,
        &mut qrm_seconds,
        flops,
        candle_peak,
    );
    let torch_median = report(
        &peer.name(),
        real_tokens,
        &mut torch_seconds,
        flops,
        peer.matmul_gflops(),
    );
    peer.finish()?;
    println!(
        "qrm / torch throughput ratio: {:.2}",
        torch_median / qrm_median
    );
    println!(
        "sequence rewards, qrm vs torch: max |Δ| = {max_diff:.2e} over {} texts",
        encodings.len()
    );
    // f32 through 30 layers in two stacks: parity is ~1e-6; anything near 1e-4 is a bug.
    if max_diff > 1e-4 {
        bail!("qrm and torch disagree: max |Δ| = {max_diff:e}");
    }
    Ok(())
}

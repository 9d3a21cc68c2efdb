//! Training throughput of SmolLM2-135M (f32, CPU, Bradley–Terry) in qrm against PyTorch +
//! transformers on the same machine, the same pairs, the same initial weights and learning
//! rates, measured in the same run (issue 14).
//!
//! ```text
//! scripts/install-model.sh
//! PATH=/path/to/venv-with-torch/bin:$PATH cargo bench --bench train -- [--pairs 4] [--steps 3] [--repeats 2] [--rows top2,lora-ckpt]
//! ```
//! The workload is one optimiser step on a batch of `--pairs` ZeroEval GSM8K pairs of realistic
//! length (`../shared/data/zeroeval`: for questions #0.. the first model's solution as chosen and
//! the second's as rejected; which is correct does not change the work), encoded as `qrm-train`
//! encodes them (chatml, EOS appended, at most 1,024 tokens), all pairs in one micro-batch. The
//! settings (`--rows KEY,...` runs some of them; all by default):
//! - `cached`: the top 2 layers, the final norm and the head trained from qrm's cached frozen
//!   trunk (`qrm-train --cache`: the frozen layers never run, their output computed once; qrm
//!   only, since transformers has no such mode);
//! - `top2`: the same with the frozen layers run from tokens every step (the work a PyTorch
//!   trainer does);
//! - `lora`: LoRA r 16, α 16 on every projection of every layer (PEFT's `all-linear`), the final
//!   norm and the head trained (PEFT's `modules_to_save`); the peer loads qrm's initial adapters
//!   with `PeftModel.from_pretrained`;
//! - `full`: the whole model;
//! - `top2-ckpt`, `lora-ckpt`, `full-ckpt`: the same with gradient checkpointing
//!   (`qrm-train --checkpoint-layers`; the peer's `gradient_checkpointing_enable(use_reentrant=
//!   False)`, which wraps every decoder layer: for `top2-ckpt` the frozen layers have nothing to
//!   save, so both stacks recompute the two trained layers).
//!
//! qrm's trainer (`qrm::train::trainer::train`, the loop `qrm-train` runs) does `--steps` timed
//! steps after one warm-up step, then `benches/train_peer.py` loads the very weights qrm started
//! from (head and adapters included) and runs the same steps with the learning rates qrm's log
//! gave: forward, BT loss, backward, clipping to 1.0, AdamW (β 0.9/0.95). Runs alternate between
//! the stacks `--repeats` times. It prints tokens/s (the batch's real tokens over the median
//! step), the ratio qrm / torch, each stack's peak resident set during the setting's run (the
//! high-water mark reset before it, [`qrm::memory::reset_peak_rss`]), and the largest difference
//! of the per-step losses and gradient norms of qrm against torch (the first step's loss above
//! 1e-4 fails the bench: the two stacks would not be computing the same thing).
//!
//! `RAYON_NUM_THREADS` sets qrm's threads and `OMP_NUM_THREADS` torch's. Under `cargo test` a
//! smoke pass (one short pair, one step after the warm-up, qrm only: the top 2 layers, and LoRA
//! on them with checkpointing) checks that the bench still runs.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use common::{floats, median, zeroeval_sample_sets, Peer};
use qrm::model::lora::{LoraSpec, LoraTarget};
use qrm::model::template::{find_eos_id, Encoder, EosPolicy, Template, Truncation};
use qrm::model::{Checkpoint, HeadKind};
use qrm::pipeline::schema::Pair;
use qrm::train::run::{encode_pairs, save_lora, TopLayers};
use qrm::train::trainer::{train, LogRow, Objective, RunOptions, TrainConfig, TrainData};

struct Options {
    pairs: usize,
    steps: usize,
    repeats: usize,
    /// The settings to run, by key ([`SETTINGS`]); all when empty.
    rows: Vec<String>,
    /// Under `cargo test`: one short pair, one step, qrm only.
    smoke: bool,
}

fn parse_options() -> Result<Options> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let bench = arguments.iter().any(|a| a == "--bench");
    let mut options = Options {
        pairs: if bench { 4 } else { 1 },
        steps: if bench { 3 } else { 1 },
        repeats: if bench { 2 } else { 1 },
        rows: Vec::new(),
        smoke: !bench,
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
            "--pairs" => options.pairs = value("--pairs")?,
            "--steps" => options.steps = value("--steps")?,
            "--repeats" => options.repeats = value("--repeats")?,
            "--rows" => {
                let list = args.next().context("--rows needs a value")?;
                options.rows = list.split(',').map(|key| key.trim().to_owned()).collect();
                for key in &options.rows {
                    if !SETTINGS.iter().any(|setting| setting.key == key) {
                        let keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
                        bail!("--rows: no setting `{key}` (one of {})", keys.join(", "));
                    }
                }
            }
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    if options.pairs == 0 || options.steps == 0 || options.repeats == 0 {
        bail!("--pairs, --steps and --repeats must be at least 1");
    }
    Ok(options)
}

/// What one setting trains.
#[derive(Clone, Copy)]
struct Setting {
    /// Its name in `--rows`.
    key: &'static str,
    name: &'static str,
    train_layers: Option<usize>,
    cached_trunk: bool,
    /// LoRA r 16, α 16, on every projection of the trained layers (PEFT's `all-linear`).
    lora: bool,
    /// `qrm-train --checkpoint-layers`; the peer's `gradient_checkpointing_enable`.
    checkpoint_layers: bool,
}

const fn setting(
    key: &'static str,
    name: &'static str,
    train_layers: Option<usize>,
    cached_trunk: bool,
    lora: bool,
    checkpoint_layers: bool,
) -> Setting {
    Setting {
        key,
        name,
        train_layers,
        cached_trunk,
        lora,
        checkpoint_layers,
    }
}

/// Every setting, in the order they run: by the memory they take, since memory the allocator
/// keeps after a setting stays resident and counts toward the next one's peak.
const SETTINGS: [Setting; 7] = [
    setting(
        "cached",
        "top 2 layers, cached trunk",
        Some(2),
        true,
        false,
        false,
    ),
    setting(
        "top2-ckpt",
        "top 2 layers, checkpointed",
        Some(2),
        false,
        false,
        true,
    ),
    setting("top2", "top 2 layers", Some(2), false, false, false),
    setting(
        "lora-ckpt",
        "LoRA r16 all-linear, all layers, checkpointed",
        None,
        false,
        true,
        true,
    ),
    setting(
        "full-ckpt",
        "full model, checkpointed",
        None,
        false,
        false,
        true,
    ),
    setting(
        "lora",
        "LoRA r16 all-linear, all layers",
        None,
        false,
        true,
        false,
    ),
    setting("full", "full model", None, false, false, false),
];

/// The adapters of the LoRA settings (PEFT's `LoraConfig(r=16, lora_alpha=16,
/// target_modules="all-linear")`).
fn lora_spec() -> LoraSpec {
    LoraSpec {
        rank: 16,
        alpha: 16.0,
        dropout: 0.0,
        targets: LoraTarget::ALL.to_vec(),
    }
}

/// One qrm run of a setting: the timed steps' seconds, every step's log row, and where its
/// initial weights were saved for the peer.
struct QrmRun {
    seconds: Vec<f64>,
    rows: Vec<LogRow>,
    initial: tempfile::TempDir,
    /// The peak resident set of the run (reset before it), MiB.
    peak_rss_mib: f64,
}

fn qrm_run(
    checkpoint: &Checkpoint,
    tokenizer: &tokenizers::Tokenizer,
    pairs: &[qrm::train::trainer::EncodedPair],
    setting: Setting,
    options: &Options,
) -> Result<QrmRun> {
    qrm::memory::reset_peak_rss();
    let lora = setting.lora.then(lora_spec);
    let model = TopLayers::with_lora(
        checkpoint,
        HeadKind::Linear,
        setting.train_layers,
        lora.as_ref(),
        0,
        &Device::Cpu,
    )?;
    let initial = tempfile::tempdir()?;
    common::save_for_peer(&model.model, tokenizer, initial.path())?;
    if let Some(spec) = &lora {
        // The initial adapters (B zero, A qrm's draw) for the peer to start from.
        save_lora(
            &initial.path().join("lora"),
            &model.model,
            spec,
            None,
            initial.path(),
        )?;
    }
    let trunk = if setting.cached_trunk {
        Some(model.pair_trunks(pairs)?)
    } else {
        None
    };
    let data = TrainData {
        pairs: pairs.to_vec(),
        trunk,
    };
    let config = TrainConfig {
        objective: Objective::Bt,
        batch_size: pairs.len(),
        micro_batch: pairs.len(),
        max_steps: Some(options.steps + 1),
        learning_rate: 1e-5,
        warmup_fraction: 0.0,
        seed: 0,
        checkpoint_layers: setting.checkpoint_layers,
        ..TrainConfig::default()
    };
    let output = tempfile::tempdir()?;
    let mut instants = vec![Instant::now()];
    let mut rows = Vec::new();
    let mut on_step = |row: &LogRow| {
        instants.push(Instant::now());
        rows.push(row.clone());
        true
    };
    train(
        &model,
        &data,
        None,
        &config,
        RunOptions {
            output: output.path(),
            resume: false,
            log: None,
            quiet: true,
            on_step: Some(&mut on_step),
            identity: BTreeMap::new(),
        },
    )?;
    // The first interval holds the warm-up step (and the loop's set-up): not timed.
    let seconds = instants
        .windows(2)
        .skip(1)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    Ok(QrmRun {
        seconds,
        rows,
        initial,
        peak_rss_mib: qrm::memory::peak_rss_mib().unwrap_or(f64::NAN),
    })
}

fn main() -> Result<()> {
    let options = parse_options()?;
    let Some(gguf) = qrm::testing::default_model() else {
        return Ok(());
    };
    let Some(zeroeval) = qrm::testing::shared_file("zeroeval/gsm8k_test_42models.jsonl.gz") else {
        return Ok(());
    };
    let tokenizer = qrm::model::gguf::tokenizer_from_gguf(&gguf)?;
    let eos_id = find_eos_id(&tokenizer, None)?;
    let encoder = Encoder {
        tokenizer: tokenizer.clone(),
        template: Template::ChatMl,
        eos: EosPolicy::Append,
        eos_id,
        max_len: Some(1024),
        truncation: Truncation::Skip,
    };
    let rows = zeroeval_sample_sets(&zeroeval, options.pairs, 2)?;
    let short = |text: &str| -> String {
        if options.smoke {
            text.chars().take(120).collect()
        } else {
            text.to_owned()
        }
    };
    let pairs: Vec<Pair> = (0..options.pairs)
        .map(|i| Pair {
            pair_id: i.to_string(),
            question_id: i.to_string(),
            question: short(&rows[i].0),
            chosen: short(&rows[i].1),
            rejected: short(&rows[options.pairs + i].1),
            benchmark: "gsm8k".into(),
            margin: None,
        })
        .collect();
    let (encoded, _) = encode_pairs(&encoder, &pairs)?;
    if encoded.len() != pairs.len() {
        bail!(
            "{} of {} pairs are over 1,024 tokens",
            pairs.len() - encoded.len(),
            pairs.len()
        );
    }
    let lengths: Vec<usize> = encoded
        .iter()
        .flat_map(|p| [p.chosen.input_ids.len(), p.rejected.input_ids.len()])
        .collect();
    let tokens: usize = lengths.iter().sum();
    let checkpoint = Checkpoint::load(&gguf, &Device::Cpu, DType::F32)?;

    if options.smoke {
        let top2 = SETTINGS
            .into_iter()
            .find(|s| s.key == "top2")
            .context("the top2 setting")?;
        // And LoRA with checkpointing on the same layers: the adapters' and the recompute's path.
        let lora_top2 = setting(
            "",
            "LoRA, top 2 layers, checkpointed",
            Some(2),
            false,
            true,
            true,
        );
        for setting in [top2, lora_top2] {
            let run = qrm_run(&checkpoint, &tokenizer, &encoded, setting, &options)?;
            if run.rows.len() != 2 || run.rows.iter().any(|r| !r.loss.is_finite()) {
                bail!("the smoke run of {} logged {:?}", setting.name, run.rows);
            }
        }
        println!(
            "train bench smoke pass: qrm trained 2 × 2 steps (top 2 layers; LoRA, checkpointed) \
             on {tokens} tokens; the PyTorch peer runs only under `cargo bench --bench train`"
        );
        return Ok(());
    }

    let spec_dir = tempfile::tempdir()?;
    let spec = spec_dir.path().join("spec.json");
    let peer_rows: Vec<&Vec<u32>> = encoded
        .iter()
        .map(|p| &p.chosen.input_ids)
        .chain(encoded.iter().map(|p| &p.rejected.input_ids))
        .collect();
    let pad = qrm::train::run::pad_token_id(&tokenizer, eos_id);
    std::fs::write(
        &spec,
        serde_json::json!({"rows": peer_rows, "pad": pad}).to_string(),
    )?;
    let mut peer = Peer::start("train_peer.py", &[spec.as_path()])?;
    println!(
        "workload: {} GSM8K pairs in one micro-batch, {tokens} real tokens ({} rows padded to {}), \
         BT, f32; {} timed steps after a warm-up step, {} runs alternating; qrm {} threads{}",
        encoded.len(),
        lengths.len(),
        lengths.iter().max().unwrap_or(&0),
        options.steps,
        options.repeats,
        candle_core::utils::get_num_threads(),
        peer.as_ref().map(|p| format!(", {}", p.name())).unwrap_or_default()
    );
    println!(
        "| setting | qrm tokens/s | torch tokens/s | qrm / torch | qrm peak RSS MiB | torch peak RSS MiB | max |Δ loss| | max |Δ grad norm| |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let settings = SETTINGS
        .into_iter()
        .filter(|s| options.rows.is_empty() || options.rows.iter().any(|key| key == s.key));
    let mut first_loss_gap = 0f64;
    for setting in settings {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let (mut loss_gap, mut norm_gap) = (0f64, 0f64);
        let (mut qrm_peak, mut torch_peak) = (0f64, 0f64);
        for _ in 0..options.repeats {
            let run = qrm_run(&checkpoint, &tokenizer, &encoded, setting, &options)?;
            ours.extend(&run.seconds);
            qrm_peak = qrm_peak.max(run.peak_rss_mib);
            let Some(peer) = peer.as_mut().filter(|_| !setting.cached_trunk) else {
                continue;
            };
            let first_layer = setting
                .train_layers
                .map_or(0, |k| checkpoint.config.num_hidden_layers - k);
            let request = serde_json::json!({
                "model_dir": run.initial.path(),
                "first_layer": first_layer,
                "learning_rates": run.rows.iter().map(|r| r.learning_rate).collect::<Vec<_>>(),
                "max_grad_norm": TrainConfig::default().max_grad_norm,
                "lora_dir": setting.lora.then(|| run.initial.path().join("lora")),
                "checkpointing": setting.checkpoint_layers,
            });
            let answer = peer.request(&request.to_string())?;
            theirs.extend(floats(&answer, "seconds")?.into_iter().skip(1));
            torch_peak = torch_peak.max(answer["peak_rss_mib"].as_f64().unwrap_or(f64::NAN));
            let losses = floats(&answer, "losses")?;
            let norms = floats(&answer, "grad_norms")?;
            let qrm_losses: Vec<f64> = run.rows.iter().map(|r| r.loss).collect();
            let qrm_norms: Vec<f64> = run.rows.iter().map(|r| r.grad_norm).collect();
            loss_gap = loss_gap.max(common::max_abs_diff(&qrm_losses, &losses));
            norm_gap = norm_gap.max(common::max_abs_diff(&qrm_norms, &norms));
            first_loss_gap = first_loss_gap.max((qrm_losses[0] - losses[0]).abs());
        }
        let qrm_rate = tokens as f64 / median(&mut ours);
        if theirs.is_empty() {
            println!(
                "| {} | {qrm_rate:.1} | – | – | {qrm_peak:.0} | – | – | – |",
                setting.name
            );
        } else {
            let torch_rate = tokens as f64 / median(&mut theirs);
            println!(
                "| {} | {qrm_rate:.1} | {torch_rate:.1} | {:.2} | {qrm_peak:.0} | {torch_peak:.0} | {loss_gap:.1e} | {norm_gap:.1e} |",
                setting.name,
                qrm_rate / torch_rate
            );
        }
    }
    if let Some(peer) = peer {
        peer.finish()?;
    }
    // The same weights and batch: the first step's loss is one f32 forward in two stacks.
    if first_loss_gap > 1e-4 {
        bail!("qrm and torch disagree on the first step's loss: |Δ| = {first_loss_gap:e}");
    }
    Ok(())
}

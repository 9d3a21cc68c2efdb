//! AUROC over 10 million scores and Q-filtering over 300,000 samples × 400 tokens, against
//! scikit-learn's `roc_auc_score` and a direct NumPy filter on the same data in the same run.
//!
//! ```text
//! cargo bench --bench metrics                      # full sizes (needs python3 + scikit-learn)
//! QRM_BENCH_SCORES=1000000 QRM_BENCH_SAMPLES=30000 cargo bench --bench metrics
//! ```
//!
//! The data are generated here with a fixed seed and written as .npy files that
//! `benches/metrics_peer.py` loads, so both sides see identical inputs. Everything is single
//! threaded; each timing is the median of several runs.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use qrm::metrics::auroc::{auroc, delong};
use qrm::metrics::filter::{filter_summary, FilterOptions, Sample, VoteRule};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SAMPLES_PER_QUESTION: usize = 50;

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median wall time of `runs` calls, and the last result.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut result = None;
    for _ in 0..runs {
        let start = Instant::now();
        result = Some(std::hint::black_box(f()));
        times.push(start.elapsed());
    }
    times.sort();
    (times[runs / 2], result.expect("runs > 0"))
}

/// Writes a little-endian .npy file (format 1.0).
fn write_npy(path: &Path, descr: &str, shape: &[usize], bytes: &[u8]) -> std::io::Result<()> {
    let shape_text = match shape {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(b"\x93NUMPY\x01\x00")?;
    file.write_all(&(header.len() as u16).to_le_bytes())?;
    file.write_all(header.as_bytes())?;
    file.write_all(bytes)?;
    file.flush()
}

fn as_bytes<T: Copy>(values: &[T]) -> &[u8] {
    // Plain numeric data (f64, f32, i32, u8) without padding.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

fn main() -> std::io::Result<()> {
    let scores_count = size("QRM_BENCH_SCORES", 10_000_000);
    let samples = size("QRM_BENCH_SAMPLES", 300_000);
    let tokens = size("QRM_BENCH_TOKENS", 400);
    let dir = tempfile::tempdir()?;
    let mut rng = ChaCha8Rng::seed_from_u64(2024);

    // AUROC data: rewards stored as Float32 (as qrm-score writes them), so some scores tie.
    let labels: Vec<bool> = (0..scores_count).map(|_| rng.random_bool(0.45)).collect();
    let scores: Vec<f64> = labels
        .iter()
        .map(|&l| f64::from((rng.random::<f32>() + if l { 0.3 } else { 0.0 }) * 4.0))
        .collect();
    let label_bytes: Vec<u8> = labels.iter().map(|&l| u8::from(l)).collect();
    write_npy(
        &dir.path().join("scores.npy"),
        "<f8",
        &[scores_count],
        as_bytes(&scores),
    )?;
    write_npy(
        &dir.path().join("labels.npy"),
        "|b1",
        &[scores_count],
        &label_bytes,
    )?;

    // Filter data: correct samples stay ≥ 0; an incorrect one turns negative at a random token.
    // Each question has its own accuracy in [0.05, 0.7]; wrong answers spread over 3 values.
    let mut question_accuracy = 0.0;
    let is_correct: Vec<bool> = (0..samples)
        .map(|row| {
            if row % SAMPLES_PER_QUESTION == 0 {
                question_accuracy = rng.random_range(0.05..0.7);
            }
            rng.random_bool(question_accuracy)
        })
        .collect();
    let answers: Vec<i32> = is_correct
        .iter()
        .map(|&c| if c { 42 } else { rng.random_range(0..3) })
        .collect();
    let mut q_values = vec![0f32; samples * tokens];
    for (row, chunk) in q_values.chunks_mut(tokens).enumerate() {
        let turn = if is_correct[row] {
            tokens
        } else {
            rng.random_range(0..tokens + tokens / 2)
        };
        for (t, q) in chunk.iter_mut().enumerate() {
            let value: f32 = rng.random();
            *q = if t >= turn { value - 1.0 } else { value };
        }
    }
    let correct_bytes: Vec<u8> = is_correct.iter().map(|&c| u8::from(c)).collect();
    write_npy(
        &dir.path().join("q_values.npy"),
        "<f4",
        &[samples, tokens],
        as_bytes(&q_values),
    )?;
    write_npy(
        &dir.path().join("is_correct.npy"),
        "|b1",
        &[samples],
        &correct_bytes,
    )?;
    write_npy(
        &dir.path().join("answers.npy"),
        "<i4",
        &[samples],
        as_bytes(&answers),
    )?;

    // Rust.
    let (auroc_time, auroc_value) = time(5, || auroc(&scores, &labels));
    let (delong_time, _) = time(3, || delong(&scores, &labels));
    let answer_text: Vec<String> = answers.iter().map(|a| a.to_string()).collect();
    let samples_list: Vec<Sample> = (0..samples)
        .map(|row| Sample {
            is_correct: is_correct[row],
            answer: Some(&answer_text[row]),
            q_values: &q_values[row * tokens..(row + 1) * tokens],
            reward: 0.0,
        })
        .collect();
    let questions: Vec<Vec<Sample>> = samples_list
        .chunks(SAMPLES_PER_QUESTION)
        .map(<[Sample]>::to_vec)
        .collect();
    let options = FilterOptions {
        skip: 5,
        threshold: 0.0,
        vote: VoteRule::Reference,
        seed: 0,
    };
    let (filter_time, summary) = time(5, || filter_summary(&questions, &options));
    let summary = summary.expect("questions");

    let per_second = |count: usize, duration: Duration| count as f64 / duration.as_secs_f64();
    println!(
        "machine threads available: {:?}",
        std::thread::available_parallelism().ok()
    );
    println!(
        "qrm auroc        {scores_count} scores: {:>9.1} ms  {:>6.1} M rows/s  (AUROC {:.12})",
        auroc_time.as_secs_f64() * 1e3,
        per_second(scores_count, auroc_time) / 1e6,
        auroc_value.unwrap_or(f64::NAN)
    );
    println!(
        "qrm delong       {scores_count} scores: {:>9.1} ms  {:>6.1} M rows/s",
        delong_time.as_secs_f64() * 1e3,
        per_second(scores_count, delong_time) / 1e6
    );
    println!(
        "qrm filter       {samples} × {tokens}: {:>9.1} ms  {:>6.2} M samples/s  \
         (accuracy {:.6} → {:.6}, tokens saved {:.4} %)",
        filter_time.as_secs_f64() * 1e3,
        per_second(samples, filter_time) / 1e6,
        summary.accuracy,
        summary.accuracy_filtered,
        summary.tokens_saved_pct
    );

    let peer = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/metrics_peer.py"
        ))
        .arg(dir.path())
        .output();
    let peer = match peer {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            println!("peer failed: {}", String::from_utf8_lossy(&output.stderr));
            return Ok(());
        }
        Err(error) => {
            println!("peer not run (python3: {error})");
            return Ok(());
        }
    };
    let text = String::from_utf8_lossy(&peer.stdout);
    let value: serde_json::Value = match serde_json::from_str(text.trim()) {
        Ok(value) => value,
        Err(error) => {
            println!("peer output unreadable ({error}): {text}");
            return Ok(());
        }
    };
    let seconds = |key: &str| value[key].as_f64().unwrap_or(f64::NAN);
    let sklearn = seconds("sklearn_auroc_s");
    let numpy = seconds("numpy_filter_s");
    println!(
        "sklearn auroc    {scores_count} scores: {:>9.1} ms  {:>6.1} M rows/s  (AUROC {:.12})  \
         qrm is {:.1}× faster",
        sklearn * 1e3,
        scores_count as f64 / sklearn / 1e6,
        seconds("sklearn_auroc"),
        sklearn / auroc_time.as_secs_f64()
    );
    println!(
        "numpy filter     {samples} × {tokens}: {:>9.1} ms  {:>6.2} M samples/s  \
         (accuracy {:.6} → {:.6}, tokens saved {:.4} %)  qrm is {:.1}× faster",
        numpy * 1e3,
        samples as f64 / numpy / 1e6,
        seconds("accuracy"),
        seconds("accuracy_filtered"),
        seconds("tokens_saved_pct"),
        numpy / filter_time.as_secs_f64()
    );
    let agree = (seconds("sklearn_auroc") - auroc_value.unwrap_or(f64::NAN)).abs() < 1e-9
        && (seconds("accuracy_filtered") - summary.accuracy_filtered).abs() < 1e-12
        && (seconds("tokens_saved_pct") - summary.tokens_saved_pct).abs() < 1e-6;
    println!("results agree with the peer: {agree}");
    Ok(())
}

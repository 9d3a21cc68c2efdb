//! f32 CPU inference kernels that candle lacks in fused form, all reading the causal and padding
//! mask from each row's length (no mask tensor is built or added):
//! - a causal softmax over attention scores, for the usual lengths, where candle's matmuls
//!   compute the scores and the context;
//! - fused causal attention for long sequences, which scores only the keys each query may see
//!   and never stores a (seq_len, seq_len) matrix, so its memory is O(seq_len);
//! - SiLU.
//!
//! Both attention kernels also take a cached prefix (a [`KvCache`](crate::model::transformer::KvCache)'s
//! keys before the queries' own, seen by every query), so rows scored after a shared prompt
//! are masked exactly as the full sequences.
//!
//! They share a branch-free `exp` the compiler vectorises and run in parallel over rows; the
//! attention and SiLU are built twice, for AVX2 + FMA (chosen at run time when the CPU has them)
//! and for baseline x86-64 or other targets.
//! [`Kernels::Fused`](crate::model::Kernels::Fused) uses them on the CPU in f32; other devices
//! and dtypes keep candle's ops. No backward pass: inference only.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::Result;

/// `eˣ` to about 2 ulp over the f32 range (Cephes `expf`: 2ⁿ·e^r with |r| ≤ ln 2 / 2 and a
/// degree-7 polynomial); inputs are clamped to [−87.3, 88], so it never returns 0 or ∞.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split into a part exact in f32 and the rest (Cody–Waite), so x − n·ln 2 is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer in f32 arithmetic and leaves it in the low
    // mantissa bits, which is cheaper than `round` and vectorises on every x86-64.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let y = p * r * r + r + 1.0;
    // 2ⁿ from the integer left in `shifted`'s mantissa.
    let n = (shifted.to_bits() as i32).wrapping_sub(0x4B40_0000);
    y * f32::from_bits(((n + 127) as u32) << 23)
}

/// The contiguous f32 values of a tensor's storage, or an error naming the op.
fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: f32 only")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// How many keys query `query` of a row with `length` real tokens attends to, after `prefix`
/// cached keys every query sees (a shared prompt, 0 without one): the prefix and the keys
/// j <= i that are real tokens. A padded query sees the row's real keys (its output is never
/// read, but it stays finite).
fn visible_keys(query: usize, length: usize, prefix: usize) -> usize {
    prefix + (query + 1).min(length)
}

/// The unnormalised softmax in place, `xᵢ ← exp(xᵢ − max x)`, returning `1 / Σ exp(xᵢ − max x)`
/// for the caller to normalise with. `xs` must not be empty.
#[inline(always)]
fn exp_relative_to_max(xs: &mut [f32]) -> f32 {
    let largest = max(xs);
    for x in xs.iter_mut() {
        *x = exp(*x - largest);
    }
    1.0 / sum(xs)
}

struct CausalSoftmax<'a> {
    /// Real tokens in each batch row (right padding), not counting the prefix.
    lengths: &'a [usize],
    /// Cached keys before the queries' own, seen by every query.
    prefix: usize,
}

impl CustomOp1 for CausalSoftmax<'_> {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(storage, layout, self.name())?;
        let (batch, heads, queries, keys) = layout.shape().dims4()?;
        if batch != self.lengths.len() || queries + self.prefix != keys {
            bail!(
                "causal-softmax: scores {:?} do not match {} rows of causal attention after {} \
                 cached keys",
                layout.shape(),
                self.lengths.len(),
                self.prefix
            );
        }
        let mut out = vec![0f32; scores.len()];
        // One task per (row, head) matrix.
        out.par_chunks_mut(queries * keys)
            .zip(scores.par_chunks(queries * keys))
            .enumerate()
            .for_each(|(matrix, (out, scores))| {
                let length = self.lengths[matrix / heads];
                for (query, (out, scores)) in
                    out.chunks_mut(keys).zip(scores.chunks(keys)).enumerate()
                {
                    let visible = visible_keys(query, length, self.prefix);
                    let out = &mut out[..visible];
                    out.copy_from_slice(&scores[..visible]);
                    let inverse = exp_relative_to_max(out);
                    for o in out.iter_mut() {
                        *o *= inverse;
                    }
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Softmax over the last axis of attention scores with the causal and right-padding mask
/// applied: query i of batch row b attends to the `prefix` cached keys and to its own keys
/// `j <= i` with `j < lengths[b]`; masked weights are exactly 0. Equals adding the additive
/// mask and taking the softmax, without the mask tensor.
///
/// # Shapes
/// `scores` (batch, heads, seq_len, prefix + seq_len) f32 contiguous on the CPU, `lengths`
/// (batch) → (batch, heads, seq_len, prefix + seq_len).
pub fn causal_softmax(scores: &Tensor, lengths: &[usize], prefix: usize) -> Result<Tensor> {
    Ok(scores.apply_op1_no_bwd(&CausalSoftmax { lengths, prefix })?)
}

/// Multiply–add as the kernels use it: `a·b + c`. [`Fma`] rounds once (a fused instruction where
/// the target has one), [`Separate`] twice; the AVX2 build of a kernel uses the first, the
/// portable build the second, so no target calls a software `fmaf`.
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

struct Fma;

impl MulAdd for Fma {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Accumulator lanes of the reductions: two 8-wide AVX registers, so the adds of consecutive
/// elements are independent and the compiler vectorises them.
const LANES: usize = 16;

/// Folds the lanes pairwise (16 → 8 → 4 → 2 → 1) instead of one long dependent chain.
#[inline(always)]
fn fold_lanes(mut lanes: [f32; LANES], combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for lane in 0..width {
            lanes[lane] = combine(lanes[lane], lanes[lane + width]);
        }
    }
    lanes[0]
}

/// `Σ aᵢ·bᵢ` over equal-length slices.
#[inline(always)]
fn dot<M: MulAdd>(a: &[f32], b: &[f32]) -> f32 {
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .fold(0.0, |sum, (&x, &y)| M::mul_add(x, y, sum));
    let mut lanes = [0f32; LANES];
    for (a, b) in a_chunks.zip(b_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(a).zip(b) {
            *lane = M::mul_add(x, y, *lane);
        }
    }
    fold_lanes(lanes, |x, y| x + y) + tail
}

/// The largest value of a non-empty slice.
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::MIN, f32::max);
    let mut lanes = [f32::MIN; LANES];
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    fold_lanes(lanes, f32::max).max(tail)
}

/// `Σ xᵢ`.
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    let mut lanes = [0f32; LANES];
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x;
        }
    }
    fold_lanes(lanes, |x, y| x + y) + tail
}

/// What every query of one (row, head) of causal attention shares; see [`causal_attention`].
struct AttentionMatrix<'a> {
    /// The row's (prefix + seq_len, head_size) keys of the head's kv head.
    keys: &'a [f32],
    /// The row's (prefix + seq_len, head_size) values of the head's kv head.
    values: &'a [f32],
    head_size: usize,
    /// The row's number of real tokens after the prefix.
    length: usize,
    /// Cached keys before the row's own, seen by every query.
    prefix: usize,
    /// Multiplies the scores before the softmax: 1/√head_size.
    scale: f32,
}

/// Consecutive queries of one (row, head) of causal attention: `queries` and `out` are
/// (block, head_size), starting at position `first_query`.
#[inline(always)]
fn attend<M: MulAdd>(
    out: &mut [f32],
    queries: &[f32],
    first_query: usize,
    matrix: &AttentionMatrix,
) {
    let head_size = matrix.head_size;
    let mut weights = vec![0f32; matrix.prefix + matrix.length];
    for (query, (out, q)) in out
        .chunks_exact_mut(head_size)
        .zip(queries.chunks_exact(head_size))
        .enumerate()
    {
        let visible = visible_keys(first_query + query, matrix.length, matrix.prefix);
        let weights = &mut weights[..visible];
        for (weight, key) in weights.iter_mut().zip(matrix.keys.chunks_exact(head_size)) {
            *weight = dot::<M>(q, key) * matrix.scale;
        }
        let inverse = exp_relative_to_max(weights);
        out.fill(0.0);
        for (&weight, value) in weights.iter().zip(matrix.values.chunks_exact(head_size)) {
            for (o, &v) in out.iter_mut().zip(value) {
                *o = M::mul_add(weight, v, *o);
            }
        }
        for o in out.iter_mut() {
            *o *= inverse;
        }
    }
}

/// [`attend`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    out: &mut [f32],
    queries: &[f32],
    first_query: usize,
    matrix: &AttentionMatrix,
) {
    attend::<Fma>(out, queries, first_query, matrix)
}

/// Whether this CPU runs the AVX2 + FMA builds of the kernels.
fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// From this padded length on, the transformer uses [`causal_attention`] instead of candle's
/// matmuls around [`causal_softmax`]. Measured on a 2-core Zen 4 with SmolLM2's 9 heads of 64:
/// at 200 tokens the matmul path took 1.0–1.1 ms a layer against 1.6–1.8 ms (batch 1) and tied
/// at 16 × 237; at 1,024 tokens the fused kernel took 80–102 ms against 96–104 (batch 2), and at
/// 8 × 2,048 it ran 1.30 s against 1.32–1.38 s with 0.10 GB peak memory against 2.17 GB.
pub const FUSED_ATTENTION_MIN_LEN: usize = 512;

/// Queries per parallel task of [`causal_attention`].
const QUERY_BLOCK: usize = 16;

struct CausalAttention<'a> {
    /// Real tokens in each batch row (right padding), not counting the prefix.
    lengths: &'a [usize],
    /// Cached keys before the queries' own, seen by every query.
    prefix: usize,
    /// Multiplies the scores before the softmax: 1/√head_size.
    scale: f32,
    /// Run the AVX2 + FMA build (checked against the CPU when the op is made).
    avx2_fma: bool,
}

impl CustomOp3 for CausalAttention<'_> {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        queries: &CpuStorage,
        queries_layout: &Layout,
        keys: &CpuStorage,
        keys_layout: &Layout,
        values: &CpuStorage,
        values_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let queries_data = contiguous_f32(queries, queries_layout, name)?;
        let keys = contiguous_f32(keys, keys_layout, name)?;
        let values = contiguous_f32(values, values_layout, name)?;
        let (batch, heads, seq_len, head_size) = queries_layout.shape().dims4()?;
        let (_, kv_heads, _, _) = keys_layout.shape().dims4()?;
        if keys_layout.shape() != values_layout.shape()
            || keys_layout.shape().dims() != [batch, kv_heads, self.prefix + seq_len, head_size]
            || kv_heads == 0
            || heads % kv_heads != 0
            || batch != self.lengths.len()
        {
            bail!(
                "causal-attention: queries {:?}, keys {:?}, values {:?} do not match {} rows \
                 after {} cached keys",
                queries_layout.shape(),
                keys_layout.shape(),
                values_layout.shape(),
                self.lengths.len(),
                self.prefix
            );
        }
        let group = heads / kv_heads;
        let matrix_len = seq_len * head_size;
        let kv_matrix_len = (self.prefix + seq_len) * head_size;
        let mut out = vec![0f32; queries_data.len()];
        // One task per block of QUERY_BLOCK queries of a (row, head) matrix: at batch 1 there
        // are only `heads` matrices, too few to balance over the cores.
        out.par_chunks_mut(matrix_len)
            .zip(queries_data.par_chunks(matrix_len))
            .enumerate()
            .for_each(|(index, (out, queries))| {
                let (row, head) = (index / heads, index % heads);
                let start = (row * kv_heads + head / group) * kv_matrix_len;
                let matrix = AttentionMatrix {
                    keys: &keys[start..start + kv_matrix_len],
                    values: &values[start..start + kv_matrix_len],
                    head_size,
                    length: self.lengths[row],
                    prefix: self.prefix,
                    scale: self.scale,
                };
                let block = QUERY_BLOCK * head_size;
                out.par_chunks_mut(block)
                    .zip(queries.par_chunks(block))
                    .enumerate()
                    .for_each(|(index, (out, queries))| {
                        let first = index * QUERY_BLOCK;
                        #[cfg(target_arch = "x86_64")]
                        if self.avx2_fma {
                            // SAFETY: `avx2_fma` is set only when the CPU reports AVX2 and FMA.
                            unsafe { attend_avx2(out, queries, first, &matrix) };
                            return;
                        }
                        attend::<Separate>(out, queries, first, &matrix);
                    });
            });
        Ok((CpuStorage::F32(out), queries_layout.shape().clone()))
    }
}

/// Causal scaled dot-product attention over right-padded rows, fused: query i of batch row b
/// attends to the `prefix` cached keys (a shared prompt; 0 for none) and to its own keys
/// `j <= i` with `j < lengths[b]`, with weights `softmax(q·k / √head_size)`.
/// Only the visible keys are scored (no mask tensor, and the masked half of the score matrix is
/// never computed), and no (seq_len, seq_len) matrix is stored. Grouped-query attention: query
/// head h reads kv head `h / (heads / kv_heads)`. Equals adding the additive mask, taking the
/// softmax and multiplying by the values.
///
/// # Shapes
/// `queries` (batch, heads, seq_len, head_size), `keys` and `values` (batch, kv_heads,
/// prefix + seq_len, head_size), all f32 contiguous on the CPU; `lengths` (batch) → (batch,
/// heads, seq_len, head_size).
pub fn causal_attention(
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    lengths: &[usize],
    prefix: usize,
) -> Result<Tensor> {
    let head_size = queries.dim(D::Minus1)?;
    let op = CausalAttention {
        lengths,
        prefix,
        scale: 1.0 / (head_size as f32).sqrt(),
        avx2_fma: has_avx2_fma(),
    };
    Ok(queries.apply_op3_no_bwd(keys, values, &op)?)
}

/// `out[i] = silu(xs[i])`.
#[inline(always)]
fn silu_slice(out: &mut [f32], xs: &[f32]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = x / (1.0 + exp(-x));
    }
}

/// [`silu_slice`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_slice_avx2(out: &mut [f32], xs: &[f32]) {
    silu_slice(out, xs)
}

struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "silu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        const CHUNK: usize = 16 * 1024;
        let xs = contiguous_f32(storage, layout, self.name())?;
        let mut out = vec![0f32; xs.len()];
        let avx2_fma = has_avx2_fma();
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(out, xs)| {
                #[cfg(target_arch = "x86_64")]
                if avx2_fma {
                    // SAFETY: `avx2_fma` is set only when the CPU reports AVX2 and FMA.
                    unsafe { silu_slice_avx2(out, xs) };
                    return;
                }
                silu_slice(out, xs);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// SiLU, `x · σ(x) = x / (1 + e⁻ˣ)`, elementwise.
///
/// # Shapes
/// Any shape, f32 contiguous on the CPU; the output has the input's shape.
pub fn silu(xs: &Tensor) -> Result<Tensor> {
    Ok(xs.apply_op1_no_bwd(&Silu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transformer::additive_mask;
    use crate::testing::{max_abs_diff, seeded_normal};
    use candle_core::{DType, Device, D};

    #[test]
    fn exp_is_within_two_ulp_of_std_exp_over_the_range_softmax_and_silu_use() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (fast, exact) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((fast - exact) / exact).abs());
            x += 0.0137;
        }
        // f32 has 2⁻²³ ≈ 1.19e-7 relative spacing; two ulp ≈ 2.4e-7.
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        // Clamped ends: finite, positive, monotone.
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn causal_softmax_equals_the_additive_mask_then_softmax() {
        let (batch, heads, seq_len) = (3, 2, 5);
        let lengths = [5, 3, 1];
        let scores = seeded_normal(&[batch, heads, seq_len, seq_len], 3.0, 1);
        // What the transformer adds before candle's softmax on every other path.
        let mask = additive_mask(&lengths, seq_len, 0, &Device::Cpu).unwrap();
        let expected =
            candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let actual = causal_softmax(&scores, &lengths, 0).unwrap();
        let diff = max_abs_diff(&actual, &expected);
        assert!(diff < 1e-6, "max |Δ| = {diff:e}");
        // Row 1 (length 3), head 0, query 4: keys 3 and 4 are padding, so exactly 0.
        let row = actual.get(1).unwrap().get(0).unwrap().get(4).unwrap();
        let row = row.to_vec1::<f32>().unwrap();
        assert_eq!(&row[3..], &[0.0, 0.0]);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn causal_softmax_after_a_prefix_equals_the_additive_mask_then_softmax() {
        // 4 queries after 3 cached keys: scores (batch, heads, 4, 7).
        let (batch, heads, seq_len, prefix) = (2, 2, 4, 3);
        let lengths = [4, 2];
        let scores = seeded_normal(&[batch, heads, seq_len, prefix + seq_len], 3.0, 11);
        let mask = additive_mask(&lengths, seq_len, prefix, &Device::Cpu).unwrap();
        let expected =
            candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let actual = causal_softmax(&scores, &lengths, prefix).unwrap();
        let diff = max_abs_diff(&actual, &expected);
        assert!(diff < 1e-6, "max |Δ| = {diff:e}");
        // Row 1 (2 real tokens), query 0 sees the 3 cached keys and itself: 4 non-zero weights.
        let row = actual.get(1).unwrap().get(1).unwrap().get(0).unwrap();
        let row = row.to_vec1::<f32>().unwrap();
        assert!(row[..4].iter().all(|&w| w > 0.0), "{row:?}");
        assert_eq!(&row[4..], &[0.0, 0.0, 0.0]);
        // Scores whose key axis is not prefix + queries are refused.
        assert!(causal_softmax(&scores, &lengths, 2).is_err());
    }

    /// The unfused path of the transformer: scale, matmul, additive mask, softmax, matmul, with
    /// each kv head repeated for its query heads.
    fn reference_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        lengths: &[usize],
        prefix: usize,
    ) -> Tensor {
        let (_, heads, seq_len, head_size) = q.dims4().unwrap();
        let group = heads / k.dim(1).unwrap();
        let repeat = |t: &Tensor| {
            let (batch, kv_heads, seq_len, head_size) = t.dims4().unwrap();
            t.unsqueeze(2)
                .unwrap()
                .broadcast_as((batch, kv_heads, group, seq_len, head_size))
                .unwrap()
                .reshape((batch, heads, seq_len, head_size))
                .unwrap()
        };
        let (k, v) = (repeat(k), repeat(v));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (head_size as f64).sqrt()).unwrap();
        let mask = additive_mask(lengths, seq_len, prefix, &Device::Cpu).unwrap();
        let weights =
            candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        weights.matmul(&v.contiguous().unwrap()).unwrap()
    }

    #[test]
    fn causal_attention_equals_masked_softmax_attention_with_grouped_heads() {
        // 4 query heads over 2 kv heads; head size 20 exercises the 16-lane loop and its tail;
        // row lengths 37 (full), 18, 1.
        let (batch, heads, kv_heads, seq_len, head_size) = (3, 4, 2, 37, 20);
        let lengths = [37, 18, 1];
        let q = seeded_normal(&[batch, heads, seq_len, head_size], 2.0, 2);
        let k = seeded_normal(&[batch, kv_heads, seq_len, head_size], 2.0, 3);
        let v = seeded_normal(&[batch, kv_heads, seq_len, head_size], 1.0, 4);
        let actual = causal_attention(&q, &k, &v, &lengths, 0).unwrap();
        let expected = reference_attention(&q, &k, &v, &lengths, 0);
        let diff = max_abs_diff(&actual, &expected);
        assert!(diff < 1e-5, "max |Δ| = {diff:e}");
        // Row 2 has one real token: every query returns that token's value exactly (weight 1).
        let first_value = v.get(2).unwrap().get(0).unwrap().get(0).unwrap();
        let last_query = actual.get(2).unwrap().get(1).unwrap().get(36).unwrap();
        assert_eq!(max_abs_diff(&last_query, &first_value), 0.0);
    }

    #[test]
    fn causal_attention_after_a_prefix_equals_masked_softmax_attention() {
        // 21 queries after 13 cached keys (more than one QUERY_BLOCK), 6 query heads over 2 kv
        // heads; row lengths 21 (full), 9, 1.
        let (batch, heads, kv_heads, seq_len, prefix, head_size) = (3, 6, 2, 21, 13, 20);
        let lengths = [21, 9, 1];
        let q = seeded_normal(&[batch, heads, seq_len, head_size], 2.0, 12);
        let k = seeded_normal(&[batch, kv_heads, prefix + seq_len, head_size], 2.0, 13);
        let v = seeded_normal(&[batch, kv_heads, prefix + seq_len, head_size], 1.0, 14);
        let actual = causal_attention(&q, &k, &v, &lengths, prefix).unwrap();
        let expected = reference_attention(&q, &k, &v, &lengths, prefix);
        let diff = max_abs_diff(&actual, &expected);
        assert!(diff < 1e-5, "max |Δ| = {diff:e}");
        // Keys without room for the prefix are refused.
        assert!(causal_attention(&q, &k, &v, &lengths, prefix + 1).is_err());
    }

    #[test]
    fn causal_attention_portable_build_equals_the_avx2_build() {
        let (seq_len, head_size, length) = (29, 64, 23);
        let q = seeded_normal(&[seq_len, head_size], 2.0, 5);
        let k = seeded_normal(&[seq_len, head_size], 2.0, 6);
        let v = seeded_normal(&[seq_len, head_size], 1.0, 7);
        let [q, k, v] = [q, k, v].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let matrix = AttentionMatrix {
            keys: &k,
            values: &v,
            head_size,
            length,
            prefix: 0,
            scale: 0.125,
        };
        let mut portable = vec![0f32; q.len()];
        attend::<Separate>(&mut portable, &q, 0, &matrix);
        let mut fused = vec![0f32; q.len()];
        attend::<Fma>(&mut fused, &q, 0, &matrix);
        let worst = portable
            .iter()
            .zip(&fused)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Fused and separate multiply–adds differ by rounding only.
        assert!(worst < 1e-5, "max |Δ| = {worst:e}");
        if has_avx2_fma() {
            let mut avx2 = vec![0f32; q.len()];
            // SAFETY: checked just above.
            unsafe { attend_avx2(&mut avx2, &q, 0, &matrix) };
            assert_eq!(
                avx2, fused,
                "the AVX2 build computes the same operations as Fma"
            );
        }
    }

    #[test]
    fn causal_attention_rejects_mismatched_shapes() {
        let q = Tensor::zeros((1, 3, 4, 8), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::zeros((1, 2, 4, 8), DType::F32, &Device::Cpu).unwrap();
        // 3 query heads cannot share 2 kv heads.
        assert!(causal_attention(&q, &k, &k, &[4], 0).is_err());
        // One length for two rows.
        let q = Tensor::zeros((2, 2, 4, 8), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::zeros((2, 2, 4, 8), DType::F32, &Device::Cpu).unwrap();
        assert!(causal_attention(&q, &k, &k, &[4], 0).is_err());
    }

    #[test]
    fn silu_equals_candles_silu() {
        let xs = seeded_normal(&[7, 4099], 4.0, 8);
        let diff = max_abs_diff(&silu(&xs).unwrap(), &xs.silu().unwrap());
        assert!(diff < 1e-5, "max |Δ| = {diff:e}");
        let bf16 = xs.to_dtype(DType::BF16).unwrap();
        assert!(silu(&bf16).is_err(), "non-f32 input must be refused");
    }
}

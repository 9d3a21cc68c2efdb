//! f32 CPU inference kernels that candle lacks in fused form: a causal softmax that reads the
//! mask from each row's length (no mask tensor is built or added, and masked keys are never
//! exponentiated) and SiLU, both over a branch-free `exp` the compiler vectorises, parallel over
//! rows. [`Kernels::Fused`](crate::model::Kernels::Fused) uses them on the CPU in f32; other
//! devices and dtypes keep candle's ops. No backward pass: inference only.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Shape, Tensor};
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

struct CausalSoftmax<'a> {
    /// Real tokens in each batch row (right padding).
    lengths: &'a [usize],
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
        if batch != self.lengths.len() || queries != keys {
            bail!(
                "causal-softmax: scores {:?} do not match {} rows of square attention",
                layout.shape(),
                self.lengths.len()
            );
        }
        let seq_len = keys;
        let mut out = vec![0f32; scores.len()];
        // One task per (row, head) matrix.
        out.par_chunks_mut(seq_len * seq_len)
            .zip(scores.par_chunks(seq_len * seq_len))
            .enumerate()
            .for_each(|(matrix, (out, scores))| {
                let length = self.lengths[matrix / heads];
                for (query, (out, scores)) in out
                    .chunks_mut(seq_len)
                    .zip(scores.chunks(seq_len))
                    .enumerate()
                {
                    // Query i sees keys j <= i that are real tokens; a padded query sees the
                    // row's real keys (its output is never read, but it stays finite).
                    let visible = (query + 1).min(length);
                    let (out, scores) = (&mut out[..visible], &scores[..visible]);
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    for (o, &s) in out.iter_mut().zip(scores) {
                        *o = exp(s - max);
                    }
                    let inverse = 1.0 / out.iter().sum::<f32>();
                    for o in out.iter_mut() {
                        *o *= inverse;
                    }
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Softmax over the last axis of attention scores with the causal and right-padding mask
/// applied: query i of batch row b attends to keys `j <= i` with `j < lengths[b]`; masked
/// weights are exactly 0. Equals adding the additive mask and taking the softmax, without the
/// mask tensor.
///
/// # Shapes
/// `scores` (batch, heads, seq_len, seq_len) f32 contiguous on the CPU, `lengths` (batch) →
/// (batch, heads, seq_len, seq_len).
pub fn causal_softmax(scores: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    Ok(scores.apply_op1_no_bwd(&CausalSoftmax { lengths })?)
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
        out.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(out, xs)| {
                for (o, &x) in out.iter_mut().zip(xs) {
                    *o = x / (1.0 + exp(-x));
                }
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
    use candle_core::{DType, Device, D};

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

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
        let scores =
            Tensor::randn(0f32, 3.0, (batch, heads, seq_len, seq_len), &Device::Cpu).unwrap();
        // What the transformer adds before candle's softmax on every other path.
        let mask = additive_mask(&lengths, seq_len, &Device::Cpu).unwrap();
        let expected =
            candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let actual = causal_softmax(&scores, &lengths).unwrap();
        let diff = max_abs_diff(&actual, &expected);
        assert!(diff < 1e-6, "max |Δ| = {diff:e}");
        // Row 1 (length 3), head 0, query 4: keys 3 and 4 are padding, so exactly 0.
        let row = actual.get(1).unwrap().get(0).unwrap().get(4).unwrap();
        let row = row.to_vec1::<f32>().unwrap();
        assert_eq!(&row[3..], &[0.0, 0.0]);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn silu_equals_candles_silu() {
        let xs = Tensor::randn(0f32, 4.0, (7, 4099), &Device::Cpu).unwrap();
        let diff = max_abs_diff(&silu(&xs).unwrap(), &xs.silu().unwrap());
        assert!(diff < 1e-5, "max |Δ| = {diff:e}");
        let bf16 = xs.to_dtype(DType::BF16).unwrap();
        assert!(silu(&bf16).is_err(), "non-f32 input must be refused");
    }
}

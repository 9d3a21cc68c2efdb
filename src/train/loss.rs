//! Training losses: Bradley–Terry preference ranking and the goal-conditioned contrastive loss.
//!
//! Every function here is a pure function of its tensors, composed only of candle operations that
//! have a backward pass (no fused kernels), so gradients reach every input. Position sampling is
//! separate ([`crate::train::sampling`]); these functions receive hidden states already gathered
//! at the sampled positions ([`gather_positions`]).
//!
//! The contrastive loss comes in two forms:
//! - [`contrastive_reference`] reproduces the released code (`ContrastiveGoalLoss`): cosine over
//!   the full cross product of sampled sources and goals, and the log of the *mean* sigmoid;
//! - [`contrastive_paper`] follows Eq. 5 of the paper: one cosine per sampled (source, goal)
//!   pair and the mean of the log terms.
//!
//! Both return the unweighted L_C; the trainer multiplies by λ. The reference form's mean is
//! over the whole batch, so its value depends on which pairs share a batch;
//! [`contrastive_reference_per_pair`] takes it per pair (the batch's loss is then the mean of
//! its pairs', as for Eq. 5), which token-budgeted micro-batches use.

use candle_core::{DType, Result, Tensor, D};

/// Smallest norm the cosine divides by, as in `torch.nn.functional.cosine_similarity`.
const COSINE_EPS: f64 = 1e-8;

/// Numerically stable log σ(x), element-wise, differentiable everywhere.
///
/// # Formula
/// log σ(x) = min(x, 0) − log(1 + exp(−|x|)), written with min(x, 0) = (x − |x|)/2 so the
/// gradient at x = 0 is the true 1/2 (a `relu` or `minimum` would give 0 there). exp(−|x|) ∈ (0, 1]
/// never overflows; log(1 + e) loses only the relative precision of e when e < 1e-7, an absolute
/// error below 1e-7.
///
/// # Shapes
/// any → same shape.
pub fn log_sigmoid(xs: &Tensor) -> Result<Tensor> {
    let abs = xs.abs()?;
    let min_part = ((xs - &abs)? * 0.5)?;
    let log_one_plus = (abs.neg()?.exp()? + 1.0)?.log()?;
    min_part - log_one_plus
}

/// Bradley–Terry preference loss (Eq. 1; the release's `PairWiseLoss`).
///
/// # Formula
/// L_R = −mean_b log σ(r_chosen,b − r_rejected,b − margin_b), with margin 0 when absent.
///
/// # Shapes
/// chosen: (B,), rejected: (B,), margin: (B,) → scalar.
pub fn bradley_terry(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: Option<&Tensor>,
) -> Result<Tensor> {
    let mut difference = (chosen - rejected)?; // (B,)
    if let Some(margin) = margin {
        difference = (difference - margin)?;
    }
    log_sigmoid(&difference)?.mean_all()?.neg()
}

/// The release's `LogExpLoss`: mean log(1 + exp(r_rejected − r_chosen)).
///
/// Equal to [`bradley_terry`] without margin in exact arithmetic; the release evaluates it as
/// written, which overflows in f32 once r_rejected − r_chosen > 88. Here it is the same stable
/// softplus, log(1 + exp(z)) = −log σ(−z).
///
/// # Shapes
/// chosen: (B,), rejected: (B,) → scalar.
pub fn log_exp(chosen: &Tensor, rejected: &Tensor) -> Result<Tensor> {
    let difference = (chosen - rejected)?; // (B,) = −z
    log_sigmoid(&difference)?.mean_all()?.neg()
}

/// Reward centering (Eisenstein et al. 2023, "Helping or Herding?"; TRL's
/// `center_rewards_coefficient` term): mean (r_chosen + r_rejected)², the squared sum of each
/// pair's rewards. The Bradley–Terry term sees only r_chosen − r_rejected, so it leaves a reward
/// offset per pair (per question) free; this term pulls each pair's mean reward to zero. The
/// trainer multiplies it by `--center-rewards`.
///
/// # Shapes
/// chosen: (B,), rejected: (B,) → scalar.
pub fn reward_centering(chosen: &Tensor, rejected: &Tensor) -> Result<Tensor> {
    (chosen + rejected)?.sqr()?.mean_all()
}

/// Bradley–Terry over every chosen × rejected combination of *different* pairs: mean over
/// i ≠ j of −log σ(r_chosen,i − r_rejected,j). With correctness labels (a chosen response is a
/// correct one, a rejected one wrong) a correct answer to one question should outrank a wrong
/// answer to another too; the pair term alone sees only r_chosen − r_rejected within a pair, so
/// it leaves every question its own reward level and the ranking across questions (the pooled
/// AUROC) free. This term is the pairwise surrogate of the AUROC over the batch's responses. It
/// is 0 for a batch of one pair (there is no combination). The trainer multiplies it by
/// `--cross-pairs`. Not meaningful for preferences between responses to one prompt only
/// (HH-RLHF), where "chosen" says nothing across prompts.
///
/// # Shapes
/// chosen: (B,), rejected: (B,) → scalar.
pub fn cross_pair_bradley_terry(chosen: &Tensor, rejected: &Tensor) -> Result<Tensor> {
    let count = chosen.dim(0)?;
    if count < 2 {
        return Tensor::zeros((), chosen.dtype(), chosen.device());
    }
    let differences = chosen
        .unsqueeze(1)?
        .broadcast_sub(&rejected.unsqueeze(0)?)?; // (B, B): [i, j] = r_c,i − r_r,j
    let off_diagonal: Vec<f32> = (0..count * count)
        .map(|k| if k / count == k % count { 0.0 } else { 1.0 })
        .collect();
    let mask = Tensor::from_vec(off_diagonal, (count, count), chosen.device())?
        .to_dtype(chosen.dtype())?;
    let total = (log_sigmoid(&differences)? * mask)?.sum_all()?;
    total.neg()? / (count * (count - 1)) as f64
}

/// Gathers hidden states at per-example positions.
///
/// # Shapes
/// hidden: (B, L, H), positions: B lists of K indices into the L axis → (B, K, H).
pub fn gather_positions(hidden: &Tensor, positions: &[Vec<u32>]) -> Result<Tensor> {
    let (batch, seq_len, width) = hidden.dims3()?;
    if positions.len() != batch {
        candle_core::bail!(
            "gather_positions: {} position lists for a batch of {batch}",
            positions.len()
        );
    }
    let count = positions.first().map_or(0, Vec::len);
    let mut flat = Vec::with_capacity(batch * count);
    for (row, row_positions) in positions.iter().enumerate() {
        if row_positions.len() != count {
            candle_core::bail!("gather_positions: rows hold different numbers of positions");
        }
        for &position in row_positions {
            if position as usize >= seq_len {
                candle_core::bail!(
                    "gather_positions: position {position} outside a sequence of {seq_len}"
                );
            }
            flat.push((row * seq_len) as u32 + position);
        }
    }
    let indices = Tensor::from_vec(flat, batch * count, hidden.device())?;
    hidden
        .reshape((batch * seq_len, width))? // (B·L, H)
        .index_select(&indices, 0)? // (B·K, H)
        .reshape((batch, count, width)) // (B, K, H)
}

/// Averages goal states per example (the release's `cosine_avg`, the paper's AVG ablation).
///
/// # Shapes
/// goals: (B, K, H) → (B, 1, H).
pub fn average_goals(goals: &Tensor) -> Result<Tensor> {
    goals.mean_keepdim(1)
}

/// Rows scaled to unit length: x / max(‖x‖, eps).
///
/// # Shapes
/// (B, K, H) → (B, K, H).
fn unit_rows(xs: &Tensor) -> Result<Tensor> {
    let squared_norm = xs.sqr()?.sum_keepdim(D::Minus1)?; // (B, K, 1)
    let norm = squared_norm.maximum(COSINE_EPS * COSINE_EPS)?.sqrt()?; // (B, K, 1)
    xs.broadcast_div(&norm)
}

/// Cosine of every source with every goal of the same example.
///
/// # Shapes
/// sources: (B, S, H), goals: (B, G, H) → (B, S, G).
pub fn cosine_cross(sources: &Tensor, goals: &Tensor) -> Result<Tensor> {
    let sources = unit_rows(sources)?;
    let goals = unit_rows(goals)?.transpose(1, 2)?.contiguous()?; // (B, H, G)
    sources.contiguous()?.matmul(&goals) // (B, S, G)
}

/// Cosine of each source with its own goal; a single goal per example (G = 1) is broadcast.
///
/// # Shapes
/// sources: (B, S, H), goals: (B, S, H) or (B, 1, H) → (B, S).
pub fn cosine_paired(sources: &Tensor, goals: &Tensor) -> Result<Tensor> {
    let sources = unit_rows(sources)?;
    let goals = unit_rows(goals)?;
    sources.broadcast_mul(&goals)?.sum(D::Minus1) // (B, S)
}

/// The released contrastive loss (`ContrastiveGoalLoss.forward`, unweighted).
///
/// # Formula
/// C⁺ = cos(sᵢ⁺, gⱼ⁺) over all i, j and the batch; C⁻ likewise;
/// P = mean σ(C⁺), N = mean σ(C⁻);
/// L_C = −log P − log(1 − N).
///
/// 1 − N is computed as mean σ(−C⁻), never as a difference: with cosines in [−1, 1] both means
/// lie in [σ(−1), σ(1)] ≈ [0.269, 0.731], so neither log can underflow and L_C ∈ [0.63, 2.63].
///
/// # Shapes
/// positive_sources: (B, S, H), positive_goals: (B, G, H) (G = S, or 1 when averaged),
/// negative_sources: (B, U, H), negative_goals: (B, V, H) → scalar.
pub fn contrastive_reference(
    positive_sources: &Tensor,
    positive_goals: &Tensor,
    negative_sources: &Tensor,
    negative_goals: &Tensor,
) -> Result<Tensor> {
    let (positive, negative) = reference_sigmoids(
        positive_sources,
        positive_goals,
        negative_sources,
        negative_goals,
    )?;
    let positive_mean = positive.mean_all()?; // P
    let negative_complement = negative.mean_all()?; // 1 − N
    (positive_mean.log()? + negative_complement.log()?)?.neg()
}

/// σ(C⁺) and σ(−C⁻) over the cross products of [`contrastive_reference`], before any mean.
///
/// # Shapes
/// as [`contrastive_reference`] → ((B, S, G), (B, U, V)).
fn reference_sigmoids(
    positive_sources: &Tensor,
    positive_goals: &Tensor,
    negative_sources: &Tensor,
    negative_goals: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let positive = cosine_cross(positive_sources, positive_goals)?; // (B, S, G)
    let negative = cosine_cross(negative_sources, negative_goals)?; // (B, U, V)
    Ok((
        log_sigmoid(&positive)?.exp()?,
        log_sigmoid(&negative.neg()?)?.exp()?,
    ))
}

/// [`contrastive_reference`] of each example on its own: the means P and N over that example's
/// cosines only. The mean of the result over the batch is a mean over pairs, the same however
/// the pairs are split into batches; for one example it equals [`contrastive_reference`].
///
/// # Shapes
/// as [`contrastive_reference`] → (B,).
pub fn contrastive_reference_per_pair(
    positive_sources: &Tensor,
    positive_goals: &Tensor,
    negative_sources: &Tensor,
    negative_goals: &Tensor,
) -> Result<Tensor> {
    let (positive, negative) = reference_sigmoids(
        positive_sources,
        positive_goals,
        negative_sources,
        negative_goals,
    )?;
    let positive_mean = positive.flatten_from(1)?.mean(1)?; // (B,) P
    let negative_complement = negative.flatten_from(1)?.mean(1)?; // (B,) 1 − N
    (positive_mean.log()? + negative_complement.log()?)?.neg()
}

/// The paper's contrastive loss (Eq. 5, negated to be minimised, unweighted).
///
/// # Formula
/// L_C = −mean_{b,i} log σ(cos(sᵢ⁺, gᵢ⁺)) − mean_{b,i} log σ(−cos(sᵢ⁻, gᵢ⁻)),
/// using log(1 − σ(x)) = log σ(−x).
///
/// # Shapes
/// positive_sources: (B, S, H), positive_goals: (B, S, H) or (B, 1, H),
/// negative_sources: (B, U, H), negative_goals: (B, U, H) or (B, 1, H) → scalar.
pub fn contrastive_paper(
    positive_sources: &Tensor,
    positive_goals: &Tensor,
    negative_sources: &Tensor,
    negative_goals: &Tensor,
) -> Result<Tensor> {
    let positive = cosine_paired(positive_sources, positive_goals)?; // (B, S)
    let negative = cosine_paired(negative_sources, negative_goals)?; // (B, U)
    let positive_term = log_sigmoid(&positive)?.mean_all()?;
    let negative_term = log_sigmoid(&negative.neg()?)?.mean_all()?;
    (positive_term + negative_term)?.neg()
}

/// Fraction of pairs whose chosen reward is strictly above the rejected one.
///
/// # Shapes
/// chosen: (B,), rejected: (B,) → f64.
pub fn pair_accuracy(chosen: &Tensor, rejected: &Tensor) -> Result<f64> {
    let wins = chosen.gt(rejected)?.to_dtype(DType::F64)?.mean_all()?;
    wins.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::sampling::{reference_positions_from_draws, ResponseSpan, Window};
    use candle_core::{Device, Var};
    use serde_json::Value;

    const FIXTURE: &str = include_str!("../../tests/fixtures/losses_reference.json");

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).unwrap()
    }

    fn floats(value: &Value) -> Vec<f64> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    fn index_rows(value: &Value) -> Vec<Vec<u32>> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect()
    }

    fn tensor3(value: &Value) -> Tensor {
        let rows: Vec<Vec<Vec<f64>>> = serde_json::from_value(value.clone()).unwrap();
        let (b, l, h) = (rows.len(), rows[0].len(), rows[0][0].len());
        let flat: Vec<f64> = rows.into_iter().flatten().flatten().collect();
        Tensor::from_vec(flat, (b, l, h), &Device::Cpu).unwrap()
    }

    fn scalar(tensor: &Tensor) -> f64 {
        tensor
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn log_sigmoid_matches_numpy_at_extremes() {
        let case = &fixture()["log_sigmoid"];
        let xs = Var::new(floats(&case["x"]), &Device::Cpu).unwrap();
        let values = log_sigmoid(&xs).unwrap();
        let gradients = values.sum_all().unwrap().backward().unwrap();
        let gradients = gradients.get(&xs).unwrap().to_vec1::<f64>().unwrap();
        for ((got, want), (got_gradient, want_gradient)) in values
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .zip(floats(&case["value"]))
            .zip(gradients.iter().zip(floats(&case["gradient"])))
        {
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "{got} vs {want}"
            );
            assert!((got_gradient - want_gradient).abs() < 1e-12);
        }
    }

    #[test]
    fn log_sigmoid_f32_is_finite_at_large_inputs() {
        // log σ(−200) = −200 exactly in f32 (−200 − log(1 + e⁻²⁰⁰)); log(sigmoid(x)) would be −inf.
        let xs = Tensor::new(&[-200f32, 200.0], &Device::Cpu).unwrap();
        let values = log_sigmoid(&xs).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, vec![-200.0, 0.0]);
    }

    #[test]
    fn log_sigmoid_gradient_at_zero_is_one_half() {
        let xs = Var::new(&[0f64], &Device::Cpu).unwrap();
        let gradients = log_sigmoid(&xs)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            gradients.get(&xs).unwrap().to_vec1::<f64>().unwrap(),
            vec![0.5]
        );
    }

    #[test]
    fn reward_centering_hand_case() {
        // Pairs (r_c, r_r) = (1, −1), (2, 1): sums 0 and 3, mean of squares (0 + 9)/2 = 4.5;
        // ∂/∂r_c,b = ∂/∂r_r,b = 2·sum_b/B = (0, 3) for both sides.
        let chosen = Var::new(&[1f64, 2.0], &Device::Cpu).unwrap();
        let rejected = Var::new(&[-1f64, 1.0], &Device::Cpu).unwrap();
        let value = reward_centering(&chosen, &rejected).unwrap();
        assert_eq!(scalar(&value), 4.5);
        let gradients = value.backward().unwrap();
        for var in [&chosen, &rejected] {
            assert_eq!(
                gradients.get(var).unwrap().to_vec1::<f64>().unwrap(),
                vec![0.0, 3.0]
            );
        }
    }

    #[test]
    fn cross_pair_bradley_terry_hand_case() {
        // chosen (0, 1), rejected (0, 1): the combinations of different pairs are
        // r_c,0 − r_r,1 = −1 and r_c,1 − r_r,0 = 1, so the loss is
        // (log(1 + e) + log(1 + e⁻¹))/2 = (1.3132617 + 0.3132617)/2 = 0.8132617 (the two logs
        // differ by exactly 1). ∂/∂r_c,0 = −σ(1)/2 = −0.3655293, ∂/∂r_c,1 = −σ(−1)/2 =
        // −0.1344707; the rejected side gets the opposite signs, r_r,1 paired with r_c,0.
        let chosen = Var::new(&[0f64, 1.0], &Device::Cpu).unwrap();
        let rejected = Var::new(&[0f64, 1.0], &Device::Cpu).unwrap();
        let value = cross_pair_bradley_terry(&chosen, &rejected).unwrap();
        let expected = 0.5 * ((1.0 + 1f64.exp()).ln() + (1.0 + (-1f64).exp()).ln());
        assert!(
            (scalar(&value) - expected).abs() < 1e-12,
            "{}",
            scalar(&value)
        );
        assert!((expected - 0.813_261_7).abs() < 1e-7);
        let sigma = |x: f64| 1.0 / (1.0 + (-x).exp());
        let gradients = value.backward().unwrap();
        let got = |var: &Var| gradients.get(var).unwrap().to_vec1::<f64>().unwrap();
        let want_chosen = [-sigma(1.0) / 2.0, -sigma(-1.0) / 2.0];
        let want_rejected = [sigma(-1.0) / 2.0, sigma(1.0) / 2.0];
        for (g, w) in got(&chosen).iter().zip(want_chosen) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        for (g, w) in got(&rejected).iter().zip(want_rejected) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        // One pair: no combination of different pairs, so 0.
        let one = Tensor::new(&[3f64], &Device::Cpu).unwrap();
        assert_eq!(scalar(&cross_pair_bradley_terry(&one, &one).unwrap()), 0.0);
    }

    #[test]
    fn cross_pair_bradley_terry_is_the_mean_over_different_pairs() {
        // Three pairs: the six combinations i ≠ j, summed by hand-written loops in f64.
        let chosen = [0.3f64, -1.2, 2.0];
        let rejected = [0.7f64, 0.1, -0.4];
        let mut sum = 0.0;
        for (i, c) in chosen.iter().enumerate() {
            for (j, r) in rejected.iter().enumerate() {
                if i != j {
                    sum += (1.0 + (-(c - r)).exp()).ln();
                }
            }
        }
        let value = cross_pair_bradley_terry(
            &Tensor::new(&chosen, &Device::Cpu).unwrap(),
            &Tensor::new(&rejected, &Device::Cpu).unwrap(),
        )
        .unwrap();
        assert!((scalar(&value) - sum / 6.0).abs() < 1e-12);
    }

    #[test]
    fn bradley_terry_hand_case() {
        // One pair, r_c − r_r = 0: −log σ(0) = log 2 = 0.693147…, ∂/∂r_c = −σ(0) = −0.5.
        let chosen = Var::new(&[0.25f64], &Device::Cpu).unwrap();
        let rejected = Tensor::new(&[0.25f64], &Device::Cpu).unwrap();
        let loss = bradley_terry(&chosen, &rejected, None).unwrap();
        assert!((scalar(&loss) - std::f64::consts::LN_2).abs() < 1e-15);
        let gradients = loss.backward().unwrap();
        assert_eq!(
            gradients.get(&chosen).unwrap().to_vec1::<f64>().unwrap(),
            vec![-0.5]
        );
    }

    #[test]
    fn bradley_terry_and_log_exp_match_numpy() {
        let case = &fixture()["bradley_terry"];
        let device = Device::Cpu;
        let chosen = Var::new(floats(&case["chosen"]), &device).unwrap();
        let rejected = Tensor::new(floats(&case["rejected"]), &device).unwrap();
        let margin = Tensor::new(floats(&case["margin"]), &device).unwrap();
        for (margin, loss_key, gradient_key) in [
            (None, "loss", "gradient_chosen"),
            (Some(&margin), "loss_margin", "gradient_chosen_margin"),
        ] {
            let loss = bradley_terry(&chosen, &rejected, margin).unwrap();
            assert!((scalar(&loss) - case[loss_key].as_f64().unwrap()).abs() < 1e-12);
            let gradients = loss.backward().unwrap();
            let got = gradients.get(&chosen).unwrap().to_vec1::<f64>().unwrap();
            for (got, want) in got.iter().zip(floats(&case[gradient_key])) {
                assert!((got - want).abs() < 1e-15, "{got} vs {want}");
            }
        }
        let log_exp = log_exp(&chosen, &rejected).unwrap();
        assert!((scalar(&log_exp) - case["log_exp"].as_f64().unwrap()).abs() < 1e-12);
    }

    #[test]
    fn contrastive_reference_matches_release_formula_for_fixed_draws() {
        let case = &fixture()["contrastive_reference"];
        let chosen_hidden = tensor3(&case["hidden_chosen"]);
        let rejected_hidden = tensor3(&case["hidden_rejected"]);
        let draws = |key: &str| -> Vec<Vec<(f64, f64)>> {
            let rows: Vec<Vec<Vec<f64>>> = serde_json::from_value(case[key].clone()).unwrap();
            rows.iter()
                .map(|row| row[0].iter().zip(&row[1]).map(|(&a, &b)| (a, b)).collect())
                .collect()
        };
        let (positive_draws, negative_draws) = (draws("positive_draws"), draws("negative_draws"));
        let mut positions = Vec::new();
        for row in 0..2 {
            // Right padding: a row of n tokens ends at n; the response's T tokens precede the EOS.
            let span = |lengths: &str, tokens: &str| {
                let end = case[lengths][row].as_u64().unwrap() as usize;
                let tokens = case[tokens][row].as_u64().unwrap() as usize;
                ResponseSpan {
                    start: end - tokens - 1,
                    end,
                }
            };
            positions.push(reference_positions_from_draws(
                &positive_draws[row],
                &negative_draws[row],
                span("lengths_chosen", "tokens_chosen"),
                span("lengths_rejected", "tokens_rejected"),
                Window::FULL,
                Window::FULL,
            ));
        }
        let column = |pick: fn(&crate::train::sampling::ContrastivePositions) -> &Vec<u32>| {
            positions
                .iter()
                .map(|p| pick(p).clone())
                .collect::<Vec<_>>()
        };
        let positive_sources = column(|p| &p.positive_sources);
        let positive_goals = column(|p| &p.positive_goals);
        let negative_sources = column(|p| &p.negative_sources);
        let negative_goals = column(|p| &p.negative_goals);
        assert_eq!(positive_sources, index_rows(&case["positive_sources"]));
        assert_eq!(positive_goals, index_rows(&case["positive_goals"]));
        assert_eq!(negative_sources, index_rows(&case["negative_sources"]));
        assert_eq!(negative_goals, index_rows(&case["negative_goals"]));

        let ps = gather_positions(&chosen_hidden, &positive_sources).unwrap();
        let pg = gather_positions(&chosen_hidden, &positive_goals).unwrap();
        let ns = gather_positions(&chosen_hidden, &negative_sources).unwrap();
        let ng = gather_positions(&rejected_hidden, &negative_goals).unwrap();
        let loss = contrastive_reference(&ps, &pg, &ns, &ng).unwrap();
        assert!((scalar(&loss) - case["loss"].as_f64().unwrap()).abs() < 1e-12);
        let averaged = contrastive_reference(
            &ps,
            &average_goals(&pg).unwrap(),
            &ns,
            &average_goals(&ng).unwrap(),
        )
        .unwrap();
        assert!((scalar(&averaged) - case["loss_avg"].as_f64().unwrap()).abs() < 1e-12);
    }

    #[test]
    fn contrastive_paper_matches_numpy_for_fixed_positions() {
        let all = fixture();
        let case = &all["contrastive_paper"];
        let chosen_hidden = tensor3(&all["contrastive_reference"]["hidden_chosen"]);
        let rejected_hidden = tensor3(&all["contrastive_reference"]["hidden_rejected"]);
        let ps = gather_positions(&chosen_hidden, &index_rows(&case["positive_sources"])).unwrap();
        let pg = gather_positions(&chosen_hidden, &index_rows(&case["positive_goals"])).unwrap();
        let ns = gather_positions(&chosen_hidden, &index_rows(&case["negative_sources"])).unwrap();
        let ng = gather_positions(&rejected_hidden, &index_rows(&case["negative_goals"])).unwrap();
        let loss = contrastive_paper(&ps, &pg, &ns, &ng).unwrap();
        assert!((scalar(&loss) - case["loss"].as_f64().unwrap()).abs() < 1e-12);
        let averaged = contrastive_paper(
            &ps,
            &average_goals(&pg).unwrap(),
            &ns,
            &average_goals(&ng).unwrap(),
        )
        .unwrap();
        assert!((scalar(&averaged) - case["loss_avg"].as_f64().unwrap()).abs() < 1e-12);
    }

    #[test]
    fn contrastive_gradients_match_pytorch_autograd() {
        let all = fixture();
        let chosen =
            Var::from_tensor(&tensor3(&all["contrastive_reference"]["hidden_chosen"])).unwrap();
        let rejected =
            Var::from_tensor(&tensor3(&all["contrastive_reference"]["hidden_rejected"])).unwrap();
        for (key, case, averaged) in [
            ("reference", "contrastive_reference", false),
            ("reference_avg", "contrastive_reference", true),
            ("paper", "contrastive_paper", false),
            ("paper_avg", "contrastive_paper", true),
        ] {
            let case = &all[case];
            let ps = gather_positions(&chosen, &index_rows(&case["positive_sources"])).unwrap();
            let mut pg = gather_positions(&chosen, &index_rows(&case["positive_goals"])).unwrap();
            let ns = gather_positions(&chosen, &index_rows(&case["negative_sources"])).unwrap();
            let mut ng = gather_positions(&rejected, &index_rows(&case["negative_goals"])).unwrap();
            if averaged {
                pg = average_goals(&pg).unwrap();
                ng = average_goals(&ng).unwrap();
            }
            let loss = if key.starts_with("reference") {
                contrastive_reference(&ps, &pg, &ns, &ng).unwrap()
            } else {
                contrastive_paper(&ps, &pg, &ns, &ng).unwrap()
            };
            let expected = &all["torch"][key];
            assert!((scalar(&loss) - expected["loss"].as_f64().unwrap()).abs() < 1e-12);
            let gradients = loss.backward().unwrap();
            for (var, name) in [
                (&chosen, "gradient_chosen"),
                (&rejected, "gradient_rejected"),
            ] {
                let got = gradients
                    .get(var)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                let want = tensor3(&expected[name])
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(worst < 1e-12, "{key} {name}: max |Δ| {worst:e}");
            }
        }
    }

    #[test]
    fn contrastive_reference_per_pair_is_each_pairs_own_loss() {
        let device = Device::Cpu;
        let tensor = |values: &[f32], shape: (usize, usize, usize)| {
            Tensor::from_vec(values.to_vec(), shape, &device).unwrap()
        };
        // Two examples, one source and one goal each, H = 2. Example 0: positive cosine 1
        // (same direction), negative cosine −1; example 1: positive 0, negative 0 (orthogonal).
        let sources = tensor(&[1., 0., 1., 0.], (2, 1, 2));
        let positive_goals = tensor(&[2., 0., 0., 3.], (2, 1, 2));
        let negative_goals = tensor(&[-1., 0., 0., 1.], (2, 1, 2));
        let per_pair =
            contrastive_reference_per_pair(&sources, &positive_goals, &sources, &negative_goals)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
        // Example 0: −log σ(1) − log σ(1) = 2·log(1 + e⁻¹) = 0.626523; example 1:
        // −2·log σ(0) = 2·log 2 = 1.386294.
        assert!((per_pair[0] - 0.626523).abs() < 1e-5, "{per_pair:?}");
        assert!((per_pair[1] - 1.386294).abs() < 1e-5, "{per_pair:?}");
        for (example, own) in per_pair.iter().enumerate() {
            let one = |t: &Tensor| t.narrow(0, example, 1).unwrap();
            let alone = contrastive_reference(
                &one(&sources),
                &one(&positive_goals),
                &one(&sources),
                &one(&negative_goals),
            )
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
            assert!((alone - own).abs() < 1e-6);
        }
        // The batch form pools the means first: P = (σ(1) + σ(0))/2 = 0.615529, 1 − N the same,
        // −2·log 0.615529 = 0.970545, not the mean of the pairs' losses (1.006409).
        let pooled = contrastive_reference(&sources, &positive_goals, &sources, &negative_goals)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((pooled - 0.970545).abs() < 1e-5, "{pooled}");
    }

    #[test]
    fn contrastive_reference_hand_case_bounds() {
        // Identical positives (cos 1) and opposite negatives (cos −1): P = σ(1), 1 − N = σ(1),
        // L = −2 log σ(1) = 2·0.3132617 = 0.6265234 (the minimum). Swapped: −2 log σ(−1) = 2.6265234.
        let device = Device::Cpu;
        let x = Tensor::new(&[[[1f64, 2.0]]], &device).unwrap(); // (1, 1, 2)
        let minus_x = x.neg().unwrap();
        let best = contrastive_reference(&x, &x, &x, &minus_x).unwrap();
        let worst = contrastive_reference(&x, &minus_x, &x, &x).unwrap();
        let log_sigma_one = -(1.0 + (-1f64).exp()).ln();
        assert!((scalar(&best) + 2.0 * log_sigma_one).abs() < 1e-12);
        assert!((scalar(&worst) - (2.0 - 2.0 * log_sigma_one)).abs() < 1e-12);
        // The paper form agrees when each set holds one pair.
        let paper = contrastive_paper(&x, &x, &x, &minus_x).unwrap();
        assert!((scalar(&paper) - scalar(&best)).abs() < 1e-12);
    }

    /// Central finite differences of `loss` at every element of the four inputs.
    fn check_gradients(loss: fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor>) {
        let device = Device::Cpu;
        let shapes = [(2, 3, 4), (2, 3, 4), (2, 2, 4), (2, 2, 4)];
        let vars: Vec<Var> = shapes
            .iter()
            .enumerate()
            .map(|(seed, &shape)| {
                let values: Vec<f64> = (0..shape.0 * shape.1 * shape.2)
                    .map(|i| ((i * 7 + seed * 13) as f64 * 0.61).sin())
                    .collect();
                Var::from_tensor(&Tensor::from_vec(values, shape, &device).unwrap()).unwrap()
            })
            .collect();
        let evaluate =
            |tensors: &[Tensor]| loss(&tensors[0], &tensors[1], &tensors[2], &tensors[3]).unwrap();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let gradients = evaluate(&tensors).backward().unwrap();
        let step = 1e-6;
        for (index, var) in vars.iter().enumerate() {
            let analytic = gradients
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for element in 0..base.len() {
                let shifted = |delta: f64| {
                    let mut values = base.clone();
                    values[element] += delta;
                    let mut inputs = tensors.clone();
                    inputs[index] = Tensor::from_vec(values, shapes[index], &device).unwrap();
                    scalar(&evaluate(&inputs))
                };
                let numeric = (shifted(step) - shifted(-step)) / (2.0 * step);
                assert!(
                    (numeric - analytic[element]).abs() < 1e-7,
                    "input {index} element {element}: numeric {numeric} analytic {}",
                    analytic[element]
                );
            }
        }
    }

    #[test]
    fn contrastive_reference_gradient_matches_finite_differences() {
        check_gradients(contrastive_reference);
    }

    #[test]
    fn contrastive_paper_gradient_matches_finite_differences() {
        check_gradients(contrastive_paper);
    }

    #[test]
    fn pair_accuracy_counts_strict_wins() {
        let device = Device::Cpu;
        let chosen = Tensor::new(&[1f32, 0.0, 2.0, -1.0], &device).unwrap();
        let rejected = Tensor::new(&[0f32, 0.0, 3.0, -2.0], &device).unwrap();
        assert_eq!(pair_accuracy(&chosen, &rejected).unwrap(), 0.5);
    }
}

//! AdamW, the cosine learning-rate schedule with warm-up, and global gradient-norm clipping.
//!
//! candle-nn ships an `AdamW`, but its moment estimates are private, so a checkpoint could not
//! carry them and `--resume` could not continue exactly. This one keeps them in the open; it
//! computes the same update as `torch.optim.AdamW` and DeepSpeed's FusedAdam in AdamW mode.
//!
//! Mixed precision (`qrm-train --dtype bf16`): a variable in a half dtype (bf16, f16) is the
//! model's working copy; the optimiser keeps an f32 master of it and f32 moments, applies the
//! update to the master, and writes the master rounded to the half dtype back into the variable
//! (DeepSpeed's bf16 optimiser, apex's O2). Updates smaller than the half dtype's spacing, which
//! a bf16 weight alone would round away (an lr of 1e-5 on a weight of 1 is 1/780 of bf16's
//! spacing there), accumulate in the master.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};

/// AdamW hyper-parameters; the defaults are the paper's (β 0.9/0.95, no weight decay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Whether a parameter is decayed: not biases and not norm weights (OpenRLHF's
/// `no_decay_name_list`).
pub fn is_decayed(name: &str) -> bool {
    !(name.contains("bias") || name.contains("norm"))
}

/// AdamW over named variables, with its state exposed for checkpoints.
///
/// # Formula (step t ≥ 1, learning rate η, gradient g)
/// θ ← θ·(1 − η·λ_wd) (decayed parameters only);
/// m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
/// θ ← θ − η·(m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε).
pub struct AdamW {
    params: Vec<(String, Var)>,
    /// The f32 master of each variable in a half dtype (None for f32 and f64 variables, which
    /// are their own master).
    masters: Vec<Option<Tensor>>,
    first_moments: Vec<Tensor>,
    second_moments: Vec<Tensor>,
    step: usize,
    config: AdamWConfig,
}

impl AdamW {
    /// A fresh optimiser (step 0, zero moments) over `params`.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let masters = params
            .iter()
            .map(|(_, var)| master_of(var))
            .collect::<Result<Vec<_>>>()?;
        let first_moments = params
            .iter()
            .map(|(_, var)| {
                var.as_tensor()
                    .zeros_like()?
                    .to_dtype(state_dtype(var.dtype()))
            })
            .collect::<Result<Vec<_>>>()?;
        let second_moments = first_moments.clone();
        Ok(AdamW {
            params,
            masters,
            first_moments,
            second_moments,
            step: 0,
            config,
        })
    }

    /// The optimised variables with their names, in order.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The optimised values by name: the f32 master of a half-dtype variable, else the variable
    /// itself (what a resumable state saves).
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .zip(&self.masters)
            .map(|((name, var), master)| {
                let value = master.clone().unwrap_or_else(|| var.as_tensor().clone());
                (name.clone(), value)
            })
            .collect()
    }

    /// Sets every variable (and its master) from `weights` as [`AdamW::weights`] saved them.
    pub fn load_weights(&mut self, weights: &HashMap<String, Tensor>) -> Result<()> {
        for ((name, var), master) in self.params.iter().zip(&mut self.masters) {
            let Some(tensor) = weights.get(name) else {
                candle_core::bail!("resume state lacks weight `{name}`");
            };
            let tensor = tensor.to_device(var.device())?;
            var.set(&tensor.to_dtype(var.dtype())?)?;
            if master.is_some() {
                *master = Some(tensor.to_dtype(state_dtype(var.dtype()))?);
            }
        }
        Ok(())
    }

    /// Number of updates applied so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Applies one update with `gradients[i]` for `params()[i]` at learning rate `learning_rate`.
    pub fn step(&mut self, gradients: &[Tensor], learning_rate: f64) -> Result<()> {
        if gradients.len() != self.params.len() {
            candle_core::bail!(
                "AdamW::step: {} gradients for {} parameters",
                gradients.len(),
                self.params.len()
            );
        }
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let first_correction = 1.0 - beta1.powi(self.step as i32);
        let second_correction = 1.0 - beta2.powi(self.step as i32);
        for (index, ((name, var), gradient)) in self.params.iter().zip(gradients).enumerate() {
            let master = &mut self.masters[index];
            let value = master.clone().unwrap_or_else(|| var.as_tensor().clone());
            let gradient = gradient.to_dtype(value.dtype())?;
            let first = ((&self.first_moments[index] * beta1)? + (&gradient * (1.0 - beta1))?)?;
            let second =
                ((&self.second_moments[index] * beta2)? + (gradient.sqr()? * (1.0 - beta2))?)?;
            let denominator = ((&second / second_correction)?.sqrt()? + eps)?;
            let update = ((&first / first_correction)? / denominator)?;
            let decay = if is_decayed(name) { weight_decay } else { 0.0 };
            let decayed = (value * (1.0 - learning_rate * decay))?;
            let updated = (decayed - (update * learning_rate)?)?;
            match master {
                Some(master) => {
                    var.set(&updated.to_dtype(var.dtype())?)?;
                    *master = updated;
                }
                None => var.set(&updated)?,
            }
            self.first_moments[index] = first;
            self.second_moments[index] = second;
        }
        Ok(())
    }

    /// The moments as named tensors (`first.<name>`, `second.<name>`) for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut state = HashMap::new();
        for (index, (name, _)) in self.params.iter().enumerate() {
            state.insert(format!("first.{name}"), self.first_moments[index].clone());
            state.insert(format!("second.{name}"), self.second_moments[index].clone());
        }
        state
    }

    /// Restores moments saved by [`AdamW::state`] and the step count.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for (index, (name, var)) in self.params.iter().enumerate() {
            for (prefix, slot) in [
                ("first", &mut self.first_moments[index]),
                ("second", &mut self.second_moments[index]),
            ] {
                let key = format!("{prefix}.{name}");
                let Some(tensor) = state.get(&key) else {
                    candle_core::bail!("optimiser state lacks `{key}`");
                };
                *slot = tensor
                    .to_dtype(state_dtype(var.dtype()))?
                    .to_device(var.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The dtype of a variable's master and moments: f32 for a half dtype, else its own.
pub fn state_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// A half-dtype variable's f32 master (None when the variable is its own master).
fn master_of(var: &Var) -> Result<Option<Tensor>> {
    let dtype = state_dtype(var.dtype());
    match dtype == var.dtype() {
        true => Ok(None),
        // A copy, not a view of the variable: the master must not change when it is set.
        false => Ok(Some(var.as_tensor().to_dtype(dtype)?.copy()?)),
    }
}

/// Cosine schedule with linear warm-up, as `transformers.get_cosine_schedule_with_warmup`
/// (which OpenRLHF uses with warm-up ⌈3% of the steps⌉).
///
/// # Formula (update index s = 0, 1, …, S − 1; W warm-up steps)
/// η(s) = η₀·s/W for s < W, else η₀·½(1 + cos(π·(s − W)/(S − W))).
/// Like the library, the first update (s = 0) runs at η = 0 when W > 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl CosineSchedule {
    /// A schedule over `total_steps` updates with ⌈warmup_fraction·total⌉ warm-up steps.
    pub fn new(peak: f64, total_steps: usize, warmup_fraction: f64) -> Self {
        CosineSchedule {
            peak,
            warmup_steps: (warmup_fraction * total_steps as f64).ceil() as usize,
            total_steps,
        }
    }

    /// The learning rate of update `step` (counted from 0).
    pub fn learning_rate(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// The global L2 norm of all gradients: √(Σ g²).
pub fn gradient_norm(gradients: &[Tensor]) -> Result<f64> {
    let mut total = 0.0;
    for gradient in gradients {
        total += gradient
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// Scales all gradients by min(1, max_norm / (norm + 1e-6)) like `torch.nn.utils.clip_grad_norm_`;
/// returns the norm before clipping.
pub fn clip_gradient_norm(gradients: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = gradient_norm(gradients)?;
    let coefficient = max_norm / (norm + 1e-6);
    if coefficient < 1.0 {
        for gradient in gradients.iter_mut() {
            *gradient = (&*gradient * coefficient)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cosine_schedule_warms_up_then_decays() {
        // 100 steps, ⌈3⌉ = 3 warm-up steps: 0, 1/3, 2/3 of the peak, then the cosine from 1.
        let schedule = CosineSchedule::new(1.0, 100, 0.03);
        assert_eq!(schedule.warmup_steps, 3);
        assert_eq!(schedule.learning_rate(0), 0.0);
        assert!((schedule.learning_rate(2) - 2.0 / 3.0).abs() < 1e-12);
        assert!((schedule.learning_rate(3) - 1.0).abs() < 1e-12);
        // The last update s = 100 is past the decay: ½(1 + cos π) = 0.
        assert!(schedule.learning_rate(100).abs() < 1e-12);
        // s = 52: progress (52 − 3)/97, η = ½(1 + cos(π·49/97)).
        let expected = 0.5 * (1.0 + (std::f64::consts::PI * 49.0 / 97.0).cos());
        assert!((schedule.learning_rate(52) - expected).abs() < 1e-12);
        // Warm-up of ⌈0.03·10⌉ = 1 step.
        assert_eq!(CosineSchedule::new(1.0, 10, 0.03).warmup_steps, 1);
    }

    #[test]
    fn clip_scales_to_max_norm() {
        // Gradients (3, 4) and (12): norm √(9 + 16 + 144) = 13; clipped to 1 → ×1/(13 + 1e-6).
        let device = Device::Cpu;
        let mut gradients = vec![
            Tensor::new(&[3f32, 4.0], &device).unwrap(),
            Tensor::new(&[12f32], &device).unwrap(),
        ];
        let norm = clip_gradient_norm(&mut gradients, 1.0).unwrap();
        assert!((norm - 13.0).abs() < 1e-6);
        assert!((gradient_norm(&gradients).unwrap() - 1.0).abs() < 1e-6);
        // Below the threshold nothing changes.
        let mut small = vec![Tensor::new(&[0.3f32, 0.4], &device).unwrap()];
        clip_gradient_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f32>().unwrap(), vec![0.3, 0.4]);
    }

    #[test]
    fn adamw_first_step_by_hand() {
        // Step 1: m = 0.1g, v = 0.05g², m̂ = g, v̂ = g², update = g/(|g| + 1e-8) ≈ sign(g).
        // θ = 1, g = 2, η = 0.1, λ = 0.5: θ·(1 − 0.05) − 0.1·2/(2 + 1e-8) = 0.95 − 0.1 = 0.85.
        // The norm weight is not decayed: 1 − 0.1 = 0.9.
        let device = Device::Cpu;
        let weight = Var::new(&[1f64], &device).unwrap();
        let norm = Var::new(&[1f64], &device).unwrap();
        let config = AdamWConfig {
            weight_decay: 0.5,
            ..AdamWConfig::default()
        };
        let mut optimiser = AdamW::new(
            vec![
                ("w".into(), weight.clone()),
                ("norm.weight".into(), norm.clone()),
            ],
            config,
        )
        .unwrap();
        let gradients = [
            Tensor::new(&[2f64], &device).unwrap(),
            Tensor::new(&[2f64], &device).unwrap(),
        ];
        optimiser.step(&gradients, 0.1).unwrap();
        assert!((weight.to_vec1::<f64>().unwrap()[0] - 0.85).abs() < 1e-9);
        assert!((norm.to_vec1::<f64>().unwrap()[0] - 0.9).abs() < 1e-9);
    }

    #[test]
    fn a_bf16_variable_steps_from_its_f32_master() {
        // θ = (1, −2) in bf16 (spacing 2⁻⁷ = 0.0078 just above 1), η = 1e-4, g = (−1, +1): each
        // AdamW step moves θ by −η·m̂/(√v̂ + ε) = ±1e-4 (m̂ = g and v̂ = g² for a constant
        // gradient), away from zero. Ten steps give the f32 master (1.001, −2.001), which rounds
        // to bf16 (1, −2): a bf16 weight updated in bf16 would stay 1 for ever (1 + 1e-4 rounds
        // to 1), the master keeps every step.
        let device = Device::Cpu;
        let weight = Var::new(&[1f32, -2.0], &device).unwrap();
        let weight = Var::from_tensor(&weight.to_dtype(DType::BF16).unwrap()).unwrap();
        let mut optimiser =
            AdamW::new(vec![("w".into(), weight.clone())], AdamWConfig::default()).unwrap();
        let gradient = Tensor::new(&[-1f32, 1.0], &device)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        for _ in 0..10 {
            optimiser
                .step(std::slice::from_ref(&gradient), 1e-4)
                .unwrap();
        }
        let master = optimiser.weights()["w"].clone();
        assert_eq!(master.dtype(), DType::F32);
        let master = master.to_vec1::<f32>().unwrap();
        assert!((master[0] - 1.001).abs() < 1e-6, "{master:?}");
        assert!((master[1] + 2.001).abs() < 1e-6, "{master:?}");
        // The variable is the master rounded to bf16, still in bf16.
        assert_eq!(weight.dtype(), DType::BF16);
        let rounded = optimiser.weights()["w"]
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(
            weight
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            rounded.to_vec1::<f32>().unwrap()
        );
        // The moments are f32; state and master round-trip into a fresh optimiser, which then
        // takes the same step.
        assert!(optimiser.state().values().all(|t| t.dtype() == DType::F32));
        let copy = Var::from_tensor(&weight.as_tensor().copy().unwrap()).unwrap();
        let mut restored =
            AdamW::new(vec![("w".into(), copy.clone())], AdamWConfig::default()).unwrap();
        restored.load_weights(&optimiser.weights()).unwrap();
        restored
            .load_state(&optimiser.state(), optimiser.step_count())
            .unwrap();
        for _ in 0..200 {
            optimiser
                .step(std::slice::from_ref(&gradient), 1e-4)
                .unwrap();
            restored
                .step(std::slice::from_ref(&gradient), 1e-4)
                .unwrap();
        }
        // 210 steps of 1e-4: 1.021 in the master, which bf16 now shows (1.0234375 = 1 + 3·2⁻⁷).
        let values = |var: &Var| var.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&weight), values(&copy));
        assert_eq!(values(&weight)[0], 1.0234375);
        assert_eq!(
            optimiser.weights()["w"].to_vec1::<f32>().unwrap(),
            restored.weights()["w"].to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn adamw_with_cosine_schedule_matches_pytorch_formula() {
        // tests/fixtures/losses_reference.py: torch.optim.AdamW's update in NumPy, four steps,
        // learning rates from transformers' cosine schedule (warm-up ⌈0.03·10⌉ = 1).
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/losses_reference.json"))
                .unwrap();
        let case = &fixture["adamw"];
        let floats = |value: &serde_json::Value| -> Vec<f64> {
            serde_json::from_value(value.clone()).unwrap()
        };
        let device = Device::Cpu;
        let weight = Var::new(floats(&case["initial"]), &device).unwrap();
        let config = AdamWConfig {
            weight_decay: case["weight_decay"].as_f64().unwrap(),
            ..AdamWConfig::default()
        };
        let mut optimiser = AdamW::new(vec![("weight".into(), weight.clone())], config).unwrap();
        let schedule = CosineSchedule::new(
            case["peak"].as_f64().unwrap(),
            case["total_steps"].as_u64().unwrap() as usize,
            0.03,
        );
        let gradients: Vec<Vec<f64>> = serde_json::from_value(case["gradients"].clone()).unwrap();
        let expected: Vec<Vec<f64>> = serde_json::from_value(case["params"].clone()).unwrap();
        let learning_rates = floats(&case["learning_rates"]);
        for (step, gradient) in gradients.iter().enumerate() {
            let learning_rate = schedule.learning_rate(step);
            assert!((learning_rate - learning_rates[step]).abs() < 1e-15);
            let gradient = Tensor::new(gradient.as_slice(), &device).unwrap();
            optimiser.step(&[gradient], learning_rate).unwrap();
            for (got, want) in weight.to_vec1::<f64>().unwrap().iter().zip(&expected[step]) {
                assert!((got - want).abs() < 1e-12, "step {step}: {got} vs {want}");
            }
        }
        // The state round-trips: a fresh optimiser loaded from it takes the same next step.
        let state = optimiser.state();
        let copy = Var::new(weight.to_vec1::<f64>().unwrap(), &device).unwrap();
        let mut restored = AdamW::new(vec![("weight".into(), copy.clone())], config).unwrap();
        restored.load_state(&state, optimiser.step_count()).unwrap();
        let gradient = Tensor::new(&[0.3f64, -0.2, 0.1], &device).unwrap();
        optimiser
            .step(std::slice::from_ref(&gradient), 0.01)
            .unwrap();
        restored.step(&[gradient], 0.01).unwrap();
        assert_eq!(
            weight.to_vec1::<f64>().unwrap(),
            copy.to_vec1::<f64>().unwrap()
        );
    }
}

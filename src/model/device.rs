//! `--device cpu|cuda[:N]`: the candle device and the dtype the model runs in there (f32 on the
//! CPU, bf16 on a GPU; `--dtype` chooses another). CUDA needs the crate's `cuda` feature.

use std::str::FromStr;

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Where the model runs, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => match text.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(ordinal)) => Ok(DeviceChoice::Cuda(ordinal)),
                _ => Err(Error::Usage(format!(
                    "unknown device `{text}`: expected cpu, cuda or cuda:N"
                ))),
            },
        }
    }
}

/// `--device` as a clap value parser, so a bad name is rejected at parse time (exit 2).
pub fn parse_device(text: &str) -> std::result::Result<DeviceChoice, String> {
    text.parse().map_err(|e: Error| e.to_string())
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

impl DeviceChoice {
    /// Opens the device. CUDA without the `cuda` feature is a usage error that says how to build.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Usage(
                        "--device cuda needs qrm built with `--features cuda`".into(),
                    ));
                }
                Ok(Device::new_cuda(ordinal)?)
            }
        }
    }

    /// The dtype the model runs in on this device: f32 on the CPU, bf16 on a GPU.
    pub fn dtype(self) -> DType {
        match self {
            DeviceChoice::Cpu => DType::F32,
            DeviceChoice::Cuda(_) => DType::BF16,
        }
    }

    /// The dtype `choice` asks for, the device's own ([`DeviceChoice::dtype`]) for `auto`.
    pub fn dtype_for(self, choice: DtypeChoice) -> DType {
        match choice {
            DtypeChoice::Auto => self.dtype(),
            DtypeChoice::F32 => DType::F32,
            DtypeChoice::Bf16 => DType::BF16,
        }
    }
}

/// `--dtype auto|f32|bf16`: the dtype weights and activations run in. In training, bf16 is mixed
/// precision: the optimiser keeps f32 master weights and moments, and the loss is computed in
/// f32 ([`crate::train::optim::AdamW`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DtypeChoice {
    /// f32 on the CPU, bf16 on a GPU.
    #[default]
    Auto,
    F32,
    Bf16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_to_cpu_and_cuda_ordinals() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert_eq!(parse_device("cuda:2"), Ok(DeviceChoice::Cuda(2)));
        assert!(parse_device("gpu0").unwrap_err().contains("gpu0"));
    }

    #[test]
    fn cpu_runs_in_f32_and_gpu_in_bf16() {
        assert_eq!(DeviceChoice::Cpu.dtype(), DType::F32);
        assert_eq!(DeviceChoice::Cuda(0).dtype(), DType::BF16);
        assert!(DeviceChoice::Cpu.device().unwrap().is_cpu());
    }

    #[test]
    fn an_explicit_dtype_overrides_the_devices_own() {
        assert_eq!(DeviceChoice::Cpu.dtype_for(DtypeChoice::Auto), DType::F32);
        assert_eq!(
            DeviceChoice::Cuda(0).dtype_for(DtypeChoice::Auto),
            DType::BF16
        );
        assert_eq!(DeviceChoice::Cpu.dtype_for(DtypeChoice::Bf16), DType::BF16);
        assert_eq!(
            DeviceChoice::Cuda(1).dtype_for(DtypeChoice::F32),
            DType::F32
        );
    }
}

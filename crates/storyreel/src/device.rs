//! Parsing `--device` and `--dtype` flags.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("opening CUDA device 0 (is this binary built with --features cuda?)"),
        other => match other.strip_prefix("cuda:") {
            Some(n) => {
                let n: usize = n.parse().with_context(|| format!("`{other}`: the CUDA ordinal must be a number"))?;
                Device::new_cuda(n)
                    .with_context(|| format!("opening CUDA device {n} (is this binary built with --features cuda?)"))
            }
            None => bail!("unknown device `{other}` (use cpu, cuda or cuda:N)"),
        },
    }
}

/// `f32` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => bail!("unknown dtype `{other}` (use f32 or bf16)"),
    }
}

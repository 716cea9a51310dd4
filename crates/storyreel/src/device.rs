//! Parsing `--device` and `--dtype` flags.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => open_cuda(0),
        other => match other.strip_prefix("cuda:") {
            Some(n) => open_cuda(n.parse().with_context(|| format!("`{other}`: the CUDA ordinal must be a number"))?),
            None => bail!("unknown device `{other}` (use cpu, cuda or cuda:N)"),
        },
    }
}

/// Opens a CUDA device; cudarc panics when libcuda cannot be loaded, which becomes an error here.
fn open_cuda(ordinal: usize) -> Result<Device> {
    let hint = "is this binary built with --features cuda (scripts/build-cuda.sh), on a machine with an NVIDIA driver?";
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(hook);
    match opened {
        Ok(device) => device.with_context(|| format!("opening CUDA device {ordinal} ({hint})")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown failure".into());
            let msg = msg.split(" - searched for").next().unwrap_or(&msg).to_string();
            bail!("opening CUDA device {ordinal}: {msg} ({hint})")
        }
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

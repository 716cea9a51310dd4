//! Choosing and loading the latent ↔ pixel codec of a model folder (`--decoder wan|tiny`).

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use storyreel_nn::codec::VideoCodec;
use storyreel_nn::vae::WanVae;

/// Which autoencoder turns latents into pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DecoderChoice {
    /// The model's full VAE (exact; slow on CPU at full resolution).
    #[value(alias = "full")]
    Wan,
    /// The tiny TAEHV-style decoder (fast preview, low memory).
    Tiny,
}

/// File names the tiny autoencoder is looked for under, in a model folder (a trained tiny
/// decoder's shape file sits beside its weights).
const TINY_FILES: [&str; 5] = [
    "taew2_1.safetensors",
    "taew2_1.pth",
    "tiny_vae.safetensors",
    "tiny_vae/tiny_vae.safetensors",
    "tiny_vae/taew2_1.safetensors",
];

/// The tiny autoencoder's weights file at `path` or inside the folder `path`.
pub fn find_tiny_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    TINY_FILES
        .iter()
        .map(|n| path.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{} has no tiny decoder weights (looked for {})", path.display(), TINY_FILES.join(", ")))
}

/// Loads the chosen codec from a model folder (or a weights file).
pub fn load_codec(model: &Path, which: DecoderChoice, dtype: DType, device: &Device) -> Result<Arc<dyn VideoCodec>> {
    Ok(match which {
        DecoderChoice::Wan => Arc::new(
            WanVae::load(model, dtype, device)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("loading the Wan VAE from {}", model.display()))?,
        ),
        DecoderChoice::Tiny => {
            let file = find_tiny_file(model)?;
            Arc::new(
                storyreel_nn::taehv::TinyVae::load(&file, dtype, device)
                    .map_err(|e| anyhow!(e))
                    .with_context(|| format!("loading the tiny decoder from {}", file.display()))?,
            )
        }
    })
}

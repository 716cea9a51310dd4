//! What a video autoencoder offers the rest of the system, whichever one it is (the Wan VAE or
//! the tiny TAEHV-style decoder): streaming decode of latent frames as they are generated, and
//! encoding of pixel frames back into latents for the context memory.
//!
//! Conventions shared by every implementation:
//! - latents are `[T, 16, h, w]` in the **normalised** latent space the DiT works in;
//! - pixels are `[F, 3, H, W]` f32 in **[−1, 1]**, frame-major, with H = 8h and W = 8w;
//! - a stream's first latent frame decodes to 1 pixel frame and every later one to 4, so T
//!   latents give 1 + 4(T − 1) frames, and a single pixel frame encodes to one latent frame.

use candle_core::Tensor;
use std::sync::Arc;

use crate::error::Result;

/// Incremental decoder state for one clip: feed latent frames in order, get pixel frames back.
pub trait DecodeStream: Send {
    /// Decodes the next latent frames `[T, 16, h, w]`; returns the pixel frames they complete,
    /// `[F, 3, H, W]` in [−1, 1] (F = 4T, or 4T − 3 when the stream starts with this call).
    fn push(&mut self, latents: &Tensor) -> Result<Tensor>;
    /// Latent frames consumed so far.
    fn latents_seen(&self) -> usize;
    /// Bytes held by the stream's caches (for memory reports).
    fn cache_bytes(&self) -> usize;
}

/// A latent ↔ pixel codec with a streaming decoder.
pub trait VideoCodec: Send + Sync {
    /// Short name for logs and CLI choices (`wan`, `tiny`).
    fn name(&self) -> &str;
    /// Latent channels (16 for every Wan2.1-compatible codec).
    fn latent_channels(&self) -> usize;
    /// Pixels per latent along height and width (8 for Wan2.1).
    fn spatial_scale(&self) -> usize;
    /// Starts decoding a new clip.
    fn decode_stream(self: Arc<Self>) -> Box<dyn DecodeStream>;
    /// Encodes a clip of pixel frames `[F, 3, H, W]` (F = 4k + 1) into `[1 + k, 16, h, w]`.
    fn encode(&self, frames: &Tensor) -> Result<Tensor>;

    /// Decodes a whole clip `[T, 16, h, w]` through a fresh stream.
    fn decode(self: Arc<Self>, latents: &Tensor) -> Result<Tensor> {
        self.decode_stream().push(latents)
    }

    /// Encodes each frame of `[F, 3, H, W]` on its own (the path context frames take); returns `[F, 16, h, w]`.
    fn encode_frames(&self, frames: &Tensor) -> Result<Tensor> {
        let n = frames.dim(0)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(self.encode(&frames.narrow(0, i, 1)?)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }
}

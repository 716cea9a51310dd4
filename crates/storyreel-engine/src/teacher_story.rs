//! The conditioning pieces of a story's shots: context frames picked from the story's own
//! earlier decoded shots and encoded one frame each (the pixel round trip of shotstream.md
//! §2.2), the prompts' caption embeddings, and the types a generated story is reported in.
//!
//! They are shared by inference ([`crate::story_stream`]) and training, so that both build the
//! same inputs.

use candle_core::{DType, Device, Tensor};
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::kv_cache::CaptionCache;
use storyreel_nn::text::toy::ToyTextEncoder;
use storyreel_nn::WanModel;

use crate::context::ContextPick;
use crate::error::{EngineError, Result};
use crate::prompt::story_prompts;

/// Context latents `[n, C, h, w]` and their shot flags for the frames `picks` of `shots`
/// (each `[F, 3, H, W]` in [−1, 1]), every frame encoded on its own. No picks give `n` zero
/// latents with flag 0 (the first shot, or dropped context); fewer than `n` picks are preceded
/// by zero latents with flag 0.
pub fn encode_context(
    codec: &dyn VideoCodec,
    shots: &[Tensor],
    picks: &[ContextPick],
    n: usize,
    latent_hw: (usize, usize),
    device: &Device,
) -> Result<(Tensor, Vec<i64>)> {
    encode_context_cached(codec, shots, picks, n, latent_hw, device, &mut ContextLatents::default())
}

/// Latents of a story's frames already encoded as context, by (shot, frame). A frame is
/// encoded on its own, so its latent does not depend on which other frames were picked with
/// it, and a story's later shots can reuse it (dynamic sampling picks many frames again).
#[derive(Debug, Default)]
pub struct ContextLatents {
    latents: std::collections::HashMap<(usize, usize), Tensor>,
}

impl ContextLatents {
    /// Frames held.
    pub fn len(&self) -> usize {
        self.latents.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.latents.is_empty()
    }
}

/// [`encode_context`] that encodes only the frames `cache` does not hold yet and keeps them.
/// The cache belongs to one story whose finished shots never change.
pub fn encode_context_cached(
    codec: &dyn VideoCodec,
    shots: &[Tensor],
    picks: &[ContextPick],
    n: usize,
    latent_hw: (usize, usize),
    device: &Device,
    cache: &mut ContextLatents,
) -> Result<(Tensor, Vec<i64>)> {
    if picks.len() > n {
        return Err(EngineError::Input(format!("{} context frames picked; the model takes {n}", picks.len())));
    }
    let c = codec.latent_channels();
    let pad = n - picks.len();
    let mut latents = Vec::with_capacity(n);
    if pad > 0 {
        latents.push(Tensor::zeros((pad, c, latent_hw.0, latent_hw.1), DType::F32, device)?);
    }
    let mut flags = vec![0i64; pad];
    for p in picks {
        let frames = shots.get(p.shot).ok_or_else(|| EngineError::Input(format!("no finished shot {}", p.shot)))?;
        let len = frames.dim(0)?;
        if p.frame >= len {
            return Err(EngineError::Input(format!("shot {} has {len} frames; frame {} was picked", p.shot, p.frame)));
        }
        let z = match cache.latents.get(&(p.shot, p.frame)) {
            Some(z) => z.clone(),
            None => {
                let z = codec.encode(&frames.narrow(0, p.frame, 1)?)?.to_device(device)?.to_dtype(DType::F32)?;
                cache.latents.insert((p.shot, p.frame), z.clone());
                z
            }
        };
        latents.push(z);
        flags.push(p.shot as i64);
    }
    Ok((Tensor::cat(&latents, 0)?, flags))
}

/// Embeddings `[N, text_len, dim]` of the prompts of shots 0..=k (global caption + `shot{i}:` +
/// caption), differentiable when the encoder is trainable; unknown words follow the encoder's
/// policy (an error naming them, by default).
pub fn caption_embeddings<S: AsRef<str>>(text: &ToyTextEncoder, global: &str, captions: &[S]) -> Result<Tensor> {
    let rows = story_prompts(global, captions)
        .iter()
        .map(|p| Ok(text.encode_one(p)?.embeddings))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// The unconditional caption of CFG: one all-zero embedding, the input caption dropout trains.
pub fn unconditional_caption(model: &WanModel, device: &Device) -> Result<CaptionCache> {
    let cfg = model.config();
    Ok(model.embed_captions(&Tensor::zeros((1, cfg.text_len, cfg.text_dim), DType::F32, device)?)?)
}

/// Latent frames of a shot of `frames` pixel frames (Wan's 4× temporal compression, first alone).
pub fn latent_frames(frames: usize) -> Result<usize> {
    if frames == 0 || !(frames - 1).is_multiple_of(4) {
        return Err(EngineError::Input(format!("a shot of {frames} frames is not 4k+1 frames long")));
    }
    Ok((frames - 1) / 4 + 1)
}

/// One shot to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct ShotRequest {
    /// The shot's caption (without the global caption).
    pub caption: String,
    /// Pixel frames, 4k+1.
    pub frames: usize,
}

/// A finished shot.
pub struct GeneratedShot {
    /// Shot index.
    pub shot: usize,
    /// Decoded frames `[F, 3, H, W]` in [−1, 1].
    pub frames: Tensor,
    /// The earlier frames it was conditioned on.
    pub context: Vec<ContextPick>,
}

/// Where a story's generation time went, in seconds (the caller's callbacks not included).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StoryTimes {
    /// Picking and encoding context frames.
    pub context_s: f64,
    /// Text embedding and the DiT's sampling (the teacher's Euler + CFG steps, the student's
    /// few steps and cache refreshes).
    pub denoise_s: f64,
    /// Decoding latents to pixels.
    pub decode_s: f64,
}

impl std::ops::AddAssign for StoryTimes {
    fn add_assign(&mut self, other: Self) {
        self.context_s += other.context_s;
        self.denoise_s += other.denoise_s;
        self.decode_s += other.decode_s;
    }
}

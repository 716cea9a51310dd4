//! The pixel round trip of ShotStream (§2.2): each denoised chunk is decoded as soon as it is
//! ready, the decoded frames of finished shots are kept, and the next shot's context frames are
//! chosen among those pixels and re-encoded one frame at a time.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use storyreel_media::RgbFrame;
use storyreel_nn::codec::{DecodeStream, VideoCodec};

use crate::error::{EngineError, Result};
use crate::session::{ContextCodec, LatentChunk};

/// Decoded history of a story: a streaming decoder for the running shot, every finished shot's
/// frames `[F, 3, H, W]` in [−1, 1], and the encoder that turns picked frames into context.
pub struct PixelHistory {
    decoder: Arc<dyn VideoCodec>,
    encoder: Arc<dyn VideoCodec>,
    stream: Option<Box<dyn DecodeStream>>,
    running: Vec<Tensor>,
    shots: Vec<Tensor>,
    store: Device,
}

impl PixelHistory {
    /// Decodes with `decoder` and encodes context frames with `encoder` (usually the same Wan
    /// VAE; a tiny decoder can preview while the VAE encodes). History is kept on `store`.
    pub fn new(decoder: Arc<dyn VideoCodec>, encoder: Arc<dyn VideoCodec>, store: Device) -> Result<Self> {
        if decoder.latent_channels() != encoder.latent_channels() || decoder.spatial_scale() != encoder.spatial_scale()
        {
            return Err(EngineError::Config(format!(
                "decoder `{}` ({} channels, ×{}) and encoder `{}` ({} channels, ×{}) disagree on the latent space",
                decoder.name(),
                decoder.latent_channels(),
                decoder.spatial_scale(),
                encoder.name(),
                encoder.latent_channels(),
                encoder.spatial_scale()
            )));
        }
        Ok(Self { decoder, encoder, stream: None, running: Vec::new(), shots: Vec::new(), store })
    }

    /// Decoded frames of finished shot `shot`.
    pub fn shot_frames(&self, shot: usize) -> Option<&Tensor> {
        self.shots.get(shot)
    }

    /// Bytes of decoded frames held (finished shots and the running one) plus decoder caches.
    pub fn bytes(&self) -> usize {
        let frames: usize = self.shots.iter().chain(self.running.iter()).map(|t| t.elem_count() * 4).sum();
        frames + self.stream.as_ref().map_or(0, |s| s.cache_bytes())
    }
}

impl ContextCodec for PixelHistory {
    fn chunk_ready(&mut self, chunk: &LatentChunk) -> Result<Option<Tensor>> {
        if chunk.chunk == 0 {
            self.stream = Some(self.decoder.clone().decode_stream());
            self.running.clear();
        }
        let stream = self.stream.as_mut().ok_or_else(|| {
            EngineError::Input(format!("chunk {} of shot {} arrived before chunk 0", chunk.chunk, chunk.shot))
        })?;
        let frames = stream.push(&chunk.latents)?;
        self.running.push(frames.to_device(&self.store)?);
        Ok(Some(frames))
    }

    fn record_shot(&mut self, latents: &Tensor) -> Result<usize> {
        self.stream = None;
        let frames = if self.running.is_empty() {
            // No chunk was seen (latents came from elsewhere): decode the whole shot now.
            self.decoder.clone().decode(latents)?.to_device(&self.store)?
        } else {
            Tensor::cat(&std::mem::take(&mut self.running), 0)?
        };
        let n = frames.dim(0)?;
        self.shots.push(frames);
        Ok(n)
    }

    fn shot_cancelled(&mut self) {
        self.stream = None;
        self.running.clear();
    }

    fn encode_frame(&mut self, shot: usize, frame: usize) -> Result<Tensor> {
        let frames = self.shots.get(shot).ok_or_else(|| EngineError::Input(format!("no finished shot {shot}")))?;
        let n = frames.dim(0)?;
        if frame >= n {
            return Err(EngineError::Input(format!("shot {shot} has {n} frames; frame {frame} was asked for")));
        }
        let z = self.encoder.encode(&frames.narrow(0, frame, 1)?)?;
        Ok(z.get(0)?)
    }
}

/// Decoded frames `[F, 3, H, W]` in [−1, 1] as 8-bit RGB frames for the media sinks.
pub fn to_rgb_frames(frames: &Tensor) -> Result<Vec<RgbFrame>> {
    let (f, c, h, w) = frames.dims4()?;
    if c != 3 {
        return Err(EngineError::Input(format!("frames must have 3 channels; got {:?}", frames.dims())));
    }
    let data = frames.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let plane = 3 * h * w;
    (0..f)
        .map(|i| {
            RgbFrame::from_f32_chw(&data[i * plane..(i + 1) * plane], w as u32, h as u32)
                .map_err(|e| EngineError::Input(format!("frame {i}: {e}")))
        })
        .collect()
}

/// 8-bit RGB frames back to `[F, 3, H, W]` in [−1, 1] (the inverse of [`to_rgb_frames`] up to
/// rounding), on `device`.
pub fn from_rgb_frames(frames: &[RgbFrame], device: &Device) -> Result<Tensor> {
    let first = frames.first().ok_or_else(|| EngineError::Input("no frames to convert".into()))?;
    let (w, h) = (first.width as usize, first.height as usize);
    let mut data = Vec::with_capacity(frames.len() * 3 * h * w);
    for (i, f) in frames.iter().enumerate() {
        if f.size() != first.size() {
            return Err(EngineError::Input(format!("frame {i} is {}x{}; frame 0 is {w}x{h}", f.width, f.height)));
        }
        for c in 0..3 {
            data.extend(f.data.iter().skip(c).step_by(3).map(|&v| v as f32 / 127.5 - 1.0));
        }
    }
    Ok(Tensor::from_vec(data, (frames.len(), 3, h, w), device)?)
}

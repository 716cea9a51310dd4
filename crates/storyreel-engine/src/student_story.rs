//! A whole story from a causal few-step student, shot by shot: each shot's context is picked
//! from the story's own earlier decoded shots and encoded one frame at a time (§2.2), the
//! context cache is filled at t = 0, and the shot's chunks are denoised in order through the
//! KV caches with the few-step sampler (§3.2, §4.3). Each chunk is decoded through the shot's
//! causal decode stream as soon as it is denoised, so its frames can be shown or written before
//! the next chunk starts. A shot whose latent length is not whole chunks is generated to the
//! next whole chunk and the padding is never decoded.

use std::time::Instant;

use candle_core::Tensor;
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::kv_cache::LocalWindow;

use crate::context::ContextMemory;
use crate::error::{EngineError, Result};
use crate::noise::SeededNoise;
use crate::sampler::FewStepSampler;
use crate::session::{SessionConfig, ShotRun};
use crate::story_model::{ModelKind, StoryModel};
use crate::teacher_story::{caption_embeddings, encode_context, latent_frames, GeneratedShot, ShotRequest, StoryTimes};

/// How to sample a story with a student.
pub struct StudentStoryOptions {
    /// Seed of every chunk's noise.
    pub seed: u64,
    /// Which earlier frames become context.
    pub memory: Box<dyn ContextMemory>,
}

/// Progress of a student story: shot, chunk within it, chunks in the shot.
pub type ChunkProgress<'a> = &'a mut dyn FnMut(usize, usize, usize);

/// What a student story tells its caller while it runs; an error from a callback stops it.
pub struct StudentStoryEvents<'a> {
    /// Each chunk's pixel frames `[F, 3, H, W]` in [−1, 1] the moment they are decoded, with
    /// the shot index (a shot's chunks arrive in order; the first gives 1 + 4·(k−1) frames).
    pub on_frames: &'a mut dyn FnMut(usize, &Tensor) -> Result<()>,
    /// Each finished shot, whole, with the context it was conditioned on.
    pub on_shot: &'a mut dyn FnMut(&GeneratedShot) -> Result<()>,
    /// Progress after each denoised chunk: shot, chunk, chunks in the shot.
    pub on_chunk: ChunkProgress<'a>,
    /// Polled between denoising steps; true stops generation with a cancellation error.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// Generates every shot of a story with a student model, streaming each chunk's frames to
/// `events.on_frames` as soon as they are decoded; returns where the time went.
pub fn generate_student_story(
    model: &StoryModel,
    global: &str,
    shots: &[ShotRequest],
    options: &StudentStoryOptions,
    events: StudentStoryEvents<'_>,
) -> Result<StoryTimes> {
    let StudentStoryEvents { on_frames, on_shot, on_chunk, cancelled } = events;
    let mut times = StoryTimes::default();
    let card = &model.card;
    let student = match (card.kind, &card.student) {
        (ModelKind::Student, Some(s)) => s,
        _ => {
            return Err(EngineError::Config(format!(
                "{} is not a student model (its card says {:?})",
                model.dir.display(),
                card.kind
            )))
        }
    };
    let device = model.dit.device().clone();
    let scale = model.vae.spatial_scale();
    let latent_size = (card.height as usize / scale, card.width as usize / scale);
    let sampler = FewStepSampler::new(&student.steps, student.shift)?;
    let cf = student.chunk_frames;
    let mut noise = SeededNoise::new(options.seed);
    let mut history: Vec<Tensor> = Vec::with_capacity(shots.len());
    let captions: Vec<&str> = shots.iter().map(|s| s.caption.as_str()).collect();
    for (k, request) in shots.iter().enumerate() {
        let f = latent_frames(request.frames)?;
        let padded = f.div_ceil(cf) * cf;
        let cfg = SessionConfig {
            frames_per_shot: padded,
            chunk_frames: cf,
            context_frames: card.context_frames,
            latent_size,
            sampler: sampler.clone(),
            refresh_t: 0.0,
            window: LocalWindow { capacity_frames: padded, sink_frames: 0 },
        };
        let lens: Vec<usize> = history.iter().map(|t| t.dim(0)).collect::<candle_core::Result<_>>()?;
        let picks = options.memory.select(&lens);
        let clock = Instant::now();
        let (context, flags) =
            encode_context(model.vae.as_ref(), &history, &picks, card.context_frames, latent_size, &device)?;
        times.context_s += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let embeddings = caption_embeddings(&model.text, global, &captions[..=k])?;
        let mut run = ShotRun::start(&model.dit, &cfg, k, &embeddings, &context, &flags)?;
        times.denoise_s += clock.elapsed().as_secs_f64();
        let chunks = padded / cf;
        let mut stream = model.vae.clone().decode_stream();
        let mut decoded = Vec::with_capacity(chunks);
        while !run.is_done() {
            let clock = Instant::now();
            let chunk = run.next_chunk(&mut noise, cancelled)?;
            times.denoise_s += clock.elapsed().as_secs_f64();
            on_chunk(k, chunk.chunk, chunks);
            // The padding beyond the shot's own latent frames is generated (the chunk is whole)
            // but never decoded.
            let keep = chunk.latents.dim(0)?.min(f.saturating_sub(chunk.first_frame));
            if keep > 0 {
                let clock = Instant::now();
                let pixels = stream.push(&chunk.latents.narrow(0, 0, keep)?)?.clamp(-1f32, 1f32)?;
                times.decode_s += clock.elapsed().as_secs_f64();
                on_frames(k, &pixels)?;
                decoded.push(pixels);
            }
        }
        drop(run);
        let frames = Tensor::cat(&decoded, 0)?;
        let shot = GeneratedShot { shot: k, frames, context: picks };
        on_shot(&shot)?;
        history.push(shot.frames);
    }
    Ok(times)
}

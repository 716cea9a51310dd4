//! A story generated one shot at a time, the next shot's caption arriving only when it is
//! asked for: the interactive form of ShotStream. The stream keeps the story's decoded shots
//! (the context memory picks from them) and its captions (each shot's prompt routing sees the
//! captions so far); a teacher or a student model generates each shot.
//!
//! A shot that fails or is cancelled leaves the story as it was, so the next shot takes its
//! place. Finished shots can be given back with [`StoryStream::push_finished`], which is how a
//! story saved to disk is resumed.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::kv_cache::{CaptionCache, LocalWindow};

use crate::context::{ContextMemory, ContextPick, ContextQuery};
use crate::error::{EngineError, Result};
use crate::noise::{NoiseSource, SeededNoise};
use crate::sampler::{EulerSampler, FewStepSampler};
use crate::session::{SessionConfig, ShotRun};
use crate::shot_plan::ShotPlan;
use crate::story_model::{ModelKind, StoryModel};
use crate::teacher::{sample_shot, TeacherInputs};
use crate::teacher_story::{
    caption_embeddings, encode_context_cached, latent_frames, unconditional_caption, ContextLatents, GeneratedShot,
    ShotRequest, StoryTimes,
};

/// How a story's shots are sampled.
pub struct StoryOptions {
    /// Seed of every shot's noise (noise is keyed by shot, chunk and step, so a resumed story
    /// draws what an uninterrupted one would).
    pub seed: u64,
    /// Which earlier frames become context.
    pub memory: Box<dyn ContextMemory>,
    /// A teacher's Euler + CFG sampler (ignored by a student, which uses its card's few steps).
    pub sampler: EulerSampler,
    /// Decodes latents to the frames shown and kept (default: the model's, which is its VAE
    /// unless its card names the tiny decoder); the VAE still encodes context frames.
    pub decoder: Option<Arc<dyn VideoCodec>>,
}

/// What a shot tells its caller while it is generated; an error from a callback stops it.
pub struct ShotEvents<'a> {
    /// Once, before denoising: the shot index and the earlier frames picked as its context.
    pub on_start: &'a mut dyn FnMut(usize, &[ContextPick]) -> Result<()>,
    /// Decoded frames `[F, 3, H, W]` in [−1, 1] as soon as they exist (a student's chunk by
    /// chunk, a teacher's whole shot at once).
    pub on_frames: &'a mut dyn FnMut(usize, &Tensor) -> Result<()>,
    /// Progress: shot, units done, units in the shot (a student's chunks, a teacher's steps).
    pub on_progress: &'a mut dyn FnMut(usize, usize, usize),
    /// Polled between denoising steps; true stops the shot with [`EngineError::Cancelled`].
    pub cancelled: &'a dyn Fn() -> bool,
}

/// Units of progress one shot of `frames` pixel frames takes with `model`: a student's chunks,
/// a teacher's Euler steps.
pub fn shot_progress_units(model: &StoryModel, sampler: &EulerSampler, frames: usize) -> Result<usize> {
    Ok(match (&model.card.kind, &model.card.student) {
        (ModelKind::Student, Some(st)) => latent_frames(frames)?.div_ceil(st.chunk_frames.max(1)),
        _ => sampler.timesteps().len(),
    })
}

/// What one shot is conditioned on.
#[derive(Clone, Copy)]
struct ShotInputs<'a> {
    /// The shot's index in the story (its RoPE phase and caption routing).
    shot: usize,
    /// Its latent frames.
    latent_frames: usize,
    /// Caption embeddings of shots 0..=shot.
    embeddings: &'a Tensor,
    /// Context latents and their shot flags.
    context: &'a Tensor,
    flags: &'a [i64],
}

/// A story being generated shot by shot.
pub struct StoryStream<'m> {
    model: &'m StoryModel,
    global: String,
    options: StoryOptions,
    decoder: Arc<dyn VideoCodec>,
    captions: Vec<String>,
    history: Vec<Tensor>,
    /// Latents of history frames already used as context (each is encoded once per story).
    context_latents: ContextLatents,
    times: StoryTimes,
    uncond: Option<CaptionCache>,
}

impl<'m> StoryStream<'m> {
    /// An empty story with `global` as its global caption.
    pub fn new(model: &'m StoryModel, global: &str, options: StoryOptions) -> Result<Self> {
        if model.card.kind == ModelKind::Student && model.card.student.is_none() {
            return Err(EngineError::Config(format!(
                "{}: a student card needs its \"student\" sampling section",
                model.dir.display()
            )));
        }
        let decoder: Arc<dyn VideoCodec> = match &options.decoder {
            Some(d) => {
                if d.latent_channels() != model.vae.latent_channels() || d.spatial_scale() != model.vae.spatial_scale()
                {
                    return Err(EngineError::Config(format!(
                        "decoder {} ({} latent channels, {}× spatial) does not fit the model's VAE ({} channels, {}×)",
                        d.name(),
                        d.latent_channels(),
                        d.spatial_scale(),
                        model.vae.latent_channels(),
                        model.vae.spatial_scale()
                    )));
                }
                d.clone()
            }
            None => model.decoder.clone(),
        };
        Ok(Self {
            model,
            global: global.to_string(),
            options,
            decoder,
            captions: Vec::new(),
            history: Vec::new(),
            context_latents: ContextLatents::default(),
            times: StoryTimes::default(),
            uncond: None,
        })
    }

    /// Finished shots so far (the index the next shot gets).
    pub fn shots_done(&self) -> usize {
        self.history.len()
    }

    /// Where the time of the shots generated by this stream went.
    pub fn times(&self) -> StoryTimes {
        self.times
    }

    /// The decoded frames of every finished shot.
    pub fn history(&self) -> &[Tensor] {
        &self.history
    }

    /// Adds a shot finished earlier (e.g. read back from disk): its caption and decoded frames
    /// `[F, 3, H, W]` in [−1, 1] at the model's size.
    pub fn push_finished(&mut self, caption: &str, frames: Tensor) -> Result<()> {
        let (f, c, h, w) = frames.dims4()?;
        let card = &self.model.card;
        if c != 3 || h != card.height as usize || w != card.width as usize {
            return Err(EngineError::Input(format!(
                "shot {} frames are {:?}; the model makes [F, 3, {}, {}]",
                self.history.len(),
                frames.dims(),
                card.height,
                card.width
            )));
        }
        latent_frames(f)?;
        let frames = frames.to_device(self.model.dit.device())?.to_dtype(candle_core::DType::F32)?;
        self.captions.push(caption.to_string());
        self.history.push(frames);
        Ok(())
    }

    /// Generates the next shot of the story; on success it joins the story's history.
    pub fn generate_shot(&mut self, request: &ShotRequest, events: ShotEvents<'_>) -> Result<GeneratedShot> {
        let k = self.history.len();
        let f = latent_frames(request.frames)?;
        let lens: Vec<usize> = self.history.iter().map(|t| t.dim(0)).collect::<candle_core::Result<_>>()?;
        let mut known = self.captions.clone();
        known.push(request.caption.clone());
        let picks = self.options.memory.select(&ContextQuery::with_captions(&lens, &known).with_global(&self.global));
        (events.on_start)(k, &picks)?;
        let card = &self.model.card;
        let scale = self.model.vae.spatial_scale();
        let latent_hw = (card.height as usize / scale, card.width as usize / scale);
        let device = self.model.dit.device().clone();
        let clock = Instant::now();
        let (context, flags) = encode_context_cached(
            self.model.vae.as_ref(),
            &self.history,
            &picks,
            card.context_frames,
            latent_hw,
            &device,
            &mut self.context_latents,
        )?;
        let mut times = StoryTimes { context_s: clock.elapsed().as_secs_f64(), ..StoryTimes::default() };
        let mut captions: Vec<&str> = self.captions.iter().map(String::as_str).collect();
        captions.push(&request.caption);
        let clock = Instant::now();
        let embeddings = caption_embeddings(&self.model.text, &self.global, &captions)?;
        times.denoise_s += clock.elapsed().as_secs_f64();
        let inputs =
            ShotInputs { shot: k, latent_frames: f, embeddings: &embeddings, context: &context, flags: &flags };
        let frames = match card.kind {
            ModelKind::Student => self.student_shot(&inputs, events, &mut times)?,
            ModelKind::Teacher => self.teacher_shot(&inputs, events, &mut times)?,
        };
        self.times += times;
        self.captions.push(request.caption.clone());
        self.history.push(frames.clone());
        Ok(GeneratedShot { shot: k, frames, context: picks })
    }

    /// A student's shot: the context fill, then each chunk's few steps through the KV caches,
    /// decoded through the shot's causal decode stream as soon as it is denoised. A shot whose
    /// latent length is not whole chunks is generated to the next whole chunk and the padding
    /// is never decoded.
    fn student_shot(&self, inputs: &ShotInputs<'_>, events: ShotEvents<'_>, times: &mut StoryTimes) -> Result<Tensor> {
        let ShotInputs { shot: k, latent_frames: f, embeddings, context, flags } = *inputs;
        let ShotEvents { on_frames, on_progress, cancelled, .. } = events;
        let card = &self.model.card;
        let student = card.student.as_ref().ok_or_else(|| EngineError::Config("no student sampling".into()))?;
        let scale = self.model.vae.spatial_scale();
        let cf = student.chunk_frames;
        let padded = f.div_ceil(cf) * cf;
        let cfg = SessionConfig {
            frames_per_shot: padded,
            chunk_frames: cf,
            context_frames: card.context_frames,
            latent_size: (card.height as usize / scale, card.width as usize / scale),
            sampler: FewStepSampler::new(&student.steps, student.shift)?,
            refresh_t: 0.0,
            window: LocalWindow { capacity_frames: padded, sink_frames: 0 },
        };
        let mut noise = SeededNoise::new(self.options.seed);
        let clock = Instant::now();
        let mut run = ShotRun::start(&self.model.dit, &cfg, k, embeddings, context, flags)?;
        times.denoise_s += clock.elapsed().as_secs_f64();
        let chunks = padded / cf;
        let mut stream = self.decoder.clone().decode_stream();
        let mut decoded = Vec::with_capacity(chunks);
        while !run.is_done() {
            let clock = Instant::now();
            let chunk = run.next_chunk(&mut noise, cancelled)?;
            times.denoise_s += clock.elapsed().as_secs_f64();
            on_progress(k, chunk.chunk + 1, chunks);
            let keep = chunk.latents.dim(0)?.min(f.saturating_sub(chunk.first_frame));
            if keep > 0 {
                let clock = Instant::now();
                let pixels = stream.push(&chunk.latents.narrow(0, 0, keep)?)?.clamp(-1f32, 1f32)?;
                times.decode_s += clock.elapsed().as_secs_f64();
                on_frames(k, &pixels)?;
                decoded.push(pixels);
            }
        }
        Ok(Tensor::cat(&decoded, 0)?)
    }

    /// A teacher's shot: multi-step Euler with CFG over [context ‖ target], then one decode.
    fn teacher_shot(
        &mut self,
        inputs: &ShotInputs<'_>,
        events: ShotEvents<'_>,
        times: &mut StoryTimes,
    ) -> Result<Tensor> {
        let ShotInputs { shot: k, latent_frames: f, embeddings, context, flags } = *inputs;
        let ShotEvents { on_frames, on_progress, cancelled, .. } = events;
        let dit = &self.model.dit;
        let device = dit.device().clone();
        let card = &self.model.card;
        let scale = self.model.vae.spatial_scale();
        let (h, w) = (card.height as usize / scale, card.width as usize / scale);
        let clock = Instant::now();
        if self.uncond.is_none() {
            self.uncond = Some(unconditional_caption(dit, &device)?);
        }
        let caption_cache = dit.embed_captions(embeddings)?;
        let plan = ShotPlan::new(k, flags, k + 1)?;
        let inputs = TeacherInputs {
            plan: &plan,
            captions: &caption_cache,
            uncond: self.uncond.as_ref(),
            context,
            clean_context: card.clean_context,
            context_channels: card.context_channels,
        };
        let x = SeededNoise::new(self.options.seed).noise(k, 0, 0, &[f, dit.config().out_dim, h, w], &device)?;
        let total = self.options.sampler.timesteps().len();
        let mut step = 0usize;
        let mut step_seen = |_: usize, _: &Tensor| -> Result<()> {
            step += 1;
            on_progress(k, step, total);
            Ok(())
        };
        let latents = sample_shot(dit, &inputs, &self.options.sampler, x, &mut step_seen, cancelled)?;
        times.denoise_s += clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let frames = self.decoder.clone().decode(&latents)?.clamp(-1f32, 1f32)?;
        times.decode_s += clock.elapsed().as_secs_f64();
        on_frames(k, &frames)?;
        Ok(frames)
    }
}

/// What a whole story tells its caller while it runs; an error from a callback stops it.
pub struct StoryEvents<'a> {
    /// Decoded frames of shot `k` as soon as they exist (see [`ShotEvents::on_frames`]).
    pub on_frames: &'a mut dyn FnMut(usize, &Tensor) -> Result<()>,
    /// Each finished shot, whole, with the context it was conditioned on.
    pub on_shot: &'a mut dyn FnMut(&GeneratedShot) -> Result<()>,
    /// Progress: shot, units done, units in the shot.
    pub on_progress: &'a mut dyn FnMut(usize, usize, usize),
    /// Polled between denoising steps; true stops generation with a cancellation error.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// Generates every shot of a story with a teacher or a student, in order; returns where the
/// time went.
pub fn generate_story(
    model: &StoryModel,
    global: &str,
    shots: &[ShotRequest],
    options: StoryOptions,
    events: StoryEvents<'_>,
) -> Result<StoryTimes> {
    let StoryEvents { on_frames, on_shot, on_progress, cancelled } = events;
    let mut stream = StoryStream::new(model, global, options)?;
    for request in shots {
        let shot_events = ShotEvents {
            on_start: &mut |_, _| Ok(()),
            on_frames: &mut *on_frames,
            on_progress: &mut *on_progress,
            cancelled,
        };
        let shot = stream.generate_shot(request, shot_events)?;
        on_shot(&shot)?;
    }
    Ok(stream.times())
}

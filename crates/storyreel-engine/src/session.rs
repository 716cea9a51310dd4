//! The streaming multi-shot session: shot k's caption arrives, its chunks stream out.
//!
//! Per shot (shotstream.md §4.4): choose context frames from the finished shots, encode them one
//! frame each, fill the context cache at t = 0, embed captions 0..k, then for each 3-frame chunk
//! run the few-step sampler through the local cache and refresh the chunk's cache slot at t = 0.
//! Caches live only while their shot runs; nothing but the finished shots persists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Tensor};
use storyreel_media::{FrameSink, SinkReport};
use storyreel_nn::kv_cache::{CaptionCache, ContextCache, LocalCache, LocalWindow};
use storyreel_nn::WanModel;

use crate::context::{ContextMemory, ContextQuery};
use crate::error::{EngineError, Result};
use crate::noise::NoiseSource;
use crate::pixels::to_rgb_frames;
use crate::sampler::FewStepSampler;
use crate::shot_plan::ShotPlan;

/// Turns denoised chunks into pixels and finished shots into context latents (the pixel round
/// trip of §2.2).
pub trait ContextCodec: Send {
    /// Sees each chunk as soon as it is denoised; returns its decoded frames `[F, 3, H, W]` in
    /// [−1, 1] when this codec decodes.
    fn chunk_ready(&mut self, chunk: &LatentChunk) -> Result<Option<Tensor>> {
        let _ = chunk;
        Ok(None)
    }
    /// Takes a finished shot's latents `[F, C, H, W]`; returns how many pixel frames it spans.
    fn record_shot(&mut self, latents: &Tensor) -> Result<usize>;
    /// Forgets the partly generated shot (it was cancelled or failed).
    fn shot_cancelled(&mut self) {}
    /// Latent `[C, H, W]` of pixel frame `frame` of finished shot `shot`, encoded on its own.
    fn encode_frame(&mut self, shot: usize, frame: usize) -> Result<Tensor>;
}

/// A stand-in for the VAE round trip when no VAE is loaded: keeps latents and maps pixel frame
/// p to latent frame ⌈p/4⌉ (Wan's 4× temporal compression, first frame alone). Unlike a real
/// single-frame encode, the latent of p > 0 summarises four frames.
#[derive(Debug, Default)]
pub struct LatentHistory {
    shots: Vec<Tensor>,
}

impl ContextCodec for LatentHistory {
    fn record_shot(&mut self, latents: &Tensor) -> Result<usize> {
        let f = latents.dim(0)?;
        self.shots.push(latents.clone());
        Ok(if f == 0 { 0 } else { 1 + 4 * (f - 1) })
    }

    fn encode_frame(&mut self, shot: usize, frame: usize) -> Result<Tensor> {
        let lat = self.shots.get(shot).ok_or_else(|| EngineError::Input(format!("no finished shot {shot}")))?;
        let f = lat.dim(0)?;
        let idx = frame.div_ceil(4);
        if idx >= f {
            return Err(EngineError::Input(format!("shot {shot} has no pixel frame {frame}")));
        }
        Ok(lat.get(idx)?)
    }
}

/// Settings of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Latent frames per shot (21 ↔ 81 pixel frames).
    pub frames_per_shot: usize,
    /// Latent frames per chunk (3).
    pub chunk_frames: usize,
    /// Context frames per shot (6).
    pub context_frames: usize,
    /// Latent height and width.
    pub latent_size: (usize, usize),
    /// The few-step sampler.
    pub sampler: FewStepSampler,
    /// Timestep of the cache-refresh pass after each chunk (0 = clean).
    pub refresh_t: f32,
    /// Local cache window (capacity and sink frames).
    pub window: LocalWindow,
}

impl SessionConfig {
    /// ShotStream's settings for latents of size h×w.
    pub fn shotstream(latent_size: (usize, usize)) -> Self {
        Self {
            frames_per_shot: 21,
            chunk_frames: 3,
            context_frames: 6,
            latent_size,
            sampler: FewStepSampler::shotstream(),
            refresh_t: 0.0,
            window: LocalWindow::default(),
        }
    }

    /// Checks the settings for consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::Config(m));
        if self.chunk_frames == 0 || self.frames_per_shot == 0 {
            return bad("frames per shot and per chunk must be positive".into());
        }
        if !self.frames_per_shot.is_multiple_of(self.chunk_frames) {
            return bad(format!(
                "{} frames per shot is not a multiple of {}-frame chunks",
                self.frames_per_shot, self.chunk_frames
            ));
        }
        if self.frames_per_shot > 10_000 || self.context_frames > 1_000 {
            return bad(format!(
                "{} frames per shot / {} context frames is absurd",
                self.frames_per_shot, self.context_frames
            ));
        }
        if !self.refresh_t.is_finite() || self.refresh_t < 0.0 {
            return bad(format!("refresh timestep {} must be ≥ 0", self.refresh_t));
        }
        Ok(())
    }
}

/// One denoised chunk of latents.
#[derive(Debug, Clone)]
pub struct LatentChunk {
    /// Shot index.
    pub shot: usize,
    /// Chunk index within the shot.
    pub chunk: usize,
    /// First latent frame of the chunk within the shot.
    pub first_frame: usize,
    /// Latents `[chunk_frames, C, H, W]`.
    pub latents: Tensor,
    /// Decoded frames `[F, 3, H, W]` in [−1, 1] when the session decodes (4 per latent frame,
    /// the shot's first latent giving 1).
    pub frames: Option<Tensor>,
    /// Whether this chunk completes its shot.
    pub last_in_shot: bool,
    /// Sinks that failed on this chunk (they are dropped; the others carry on).
    pub sink_errors: Vec<String>,
}

/// Context given explicitly for the next shot instead of the memory policy.
#[derive(Debug, Clone)]
pub struct GivenContext {
    /// Latents `[n, C, H, W]`.
    pub latents: Tensor,
    /// Shot flag of each context frame.
    pub shots: Vec<i64>,
}

/// One shot in progress: its caches and the chunk loop. Dropping it releases the caches.
pub struct ShotRun<'m> {
    model: &'m WanModel,
    plan: ShotPlan,
    captions: CaptionCache,
    context: ContextCache,
    local: LocalCache,
    cfg: SessionConfig,
    next_chunk: usize,
    chunks: Vec<Tensor>,
}

impl<'m> ShotRun<'m> {
    /// Starts shot `shot`: embeds captions `[N, L, text_dim]` (shots 0..=shot) and fills the
    /// context cache with `context_latents` `[n, C, H, W]` whose shot flags are `context_flags`.
    pub fn start(
        model: &'m WanModel,
        cfg: &SessionConfig,
        shot: usize,
        captions: &Tensor,
        context_latents: &Tensor,
        context_flags: &[i64],
    ) -> Result<Self> {
        cfg.validate()?;
        let (h, w) = cfg.latent_size;
        let n_ctx = context_flags.len();
        let want = [n_ctx, model.config().in_dim, h, w];
        if context_latents.dims() != want {
            return Err(EngineError::Input(format!(
                "context latents have shape {:?}; expected {want:?}",
                context_latents.dims()
            )));
        }
        let n_caps = captions
            .dims3()
            .map_err(|_| {
                EngineError::Input(format!("caption embeddings must be [N, L, text_dim]; got {:?}", captions.dims()))
            })?
            .0;
        let plan = ShotPlan::new(shot, context_flags, n_caps)?;
        let device = model.device().clone();
        let captions = model.embed_captions(captions)?;
        let geometry = model.cache_geometry(h, w)?;
        let mut context = ContextCache::new(geometry, n_ctx, &device)?;
        if n_ctx > 0 {
            let x = context_latents.to_device(&device)?.to_dtype(DType::F32)?;
            model.fill_context(&x, &plan.context_frames(), &captions, &mut context)?;
        }
        let local = LocalCache::new(geometry, cfg.window, cfg.chunk_frames, &device)?;
        Ok(Self { model, plan, captions, context, local, cfg: cfg.clone(), next_chunk: 0, chunks: Vec::new() })
    }

    /// The flags and routing in use.
    pub fn plan(&self) -> &ShotPlan {
        &self.plan
    }

    /// Whether every chunk of the shot has been generated.
    pub fn is_done(&self) -> bool {
        self.next_chunk * self.cfg.chunk_frames >= self.cfg.frames_per_shot
    }

    /// Bytes held by this shot's caches.
    pub fn cache_bytes(&self) -> usize {
        self.context.bytes() + self.local.bytes() + self.captions.bytes()
    }

    /// The shot's latents so far, `[frames, C, H, W]`.
    pub fn latents(&self) -> Result<Tensor> {
        Ok(Tensor::cat(&self.chunks, 0)?)
    }

    /// Denoises the next chunk with the few-step sampler, then refreshes its cache slot at
    /// `refresh_t` (skipped after the shot's last chunk, whose caches are dropped anyway).
    pub fn next_chunk(&mut self, noise: &mut dyn NoiseSource, cancelled: &dyn Fn() -> bool) -> Result<LatentChunk> {
        let last_step = self.cfg.sampler.timesteps().len().saturating_sub(1);
        self.next_chunk_to_exit(last_step, noise, cancelled)
    }

    /// Like [`Self::next_chunk`], stopping the few-step sampler at step `exit` (the training
    /// rollout of self-forcing): the chunk is that step's x0 estimate and keeps the autograd
    /// graph of that one model call; the cache refresh runs on a detached copy.
    pub fn next_chunk_to_exit(
        &mut self,
        exit: usize,
        noise: &mut dyn NoiseSource,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<LatentChunk> {
        if self.is_done() {
            return Err(EngineError::Input(format!("shot {} is already complete", self.plan.shot)));
        }
        let cf = self.cfg.chunk_frames;
        let (h, w) = self.cfg.latent_size;
        let shape = [cf, self.model.config().in_dim, h, w];
        let device = self.model.device().clone();
        let chunk = self.next_chunk;
        let start = chunk * cf;
        let shot = self.plan.shot;
        let model = self.model;
        let Self { plan, captions, context, local, cfg, .. } = self;
        let mut flow = |x: &Tensor, t: f32| -> Result<Tensor> {
            Ok(model.forward_chunk(x, &plan.shot_frames(start, cf, t), captions, context, local, start)?)
        };
        let mut draw = |step: usize| noise.noise(shot, chunk, step, &shape, &device);
        let out = cfg.sampler.sample_to_exit(exit, &mut flow, &mut draw, cancelled)?;
        let last = start + cf >= cfg.frames_per_shot;
        if !last {
            if cancelled() {
                return Err(EngineError::Cancelled);
            }
            let clean = out.detach();
            model.forward_chunk(
                &clean,
                &plan.shot_frames(start, cf, cfg.refresh_t),
                captions,
                context,
                local,
                start,
            )?;
        }
        self.next_chunk += 1;
        self.chunks.push(out.clone());
        Ok(LatentChunk {
            shot,
            chunk,
            first_frame: start,
            latents: out,
            frames: None,
            last_in_shot: last,
            sink_errors: Vec::new(),
        })
    }
}

/// A story being generated: push captions, pull chunks.
pub struct Session<'m> {
    model: &'m WanModel,
    cfg: SessionConfig,
    memory: Box<dyn ContextMemory>,
    codec: Box<dyn ContextCodec>,
    noise: Box<dyn NoiseSource>,
    captions: Vec<Tensor>,
    shot_pixel_frames: Vec<usize>,
    finished: Vec<Tensor>,
    given_context: Option<GivenContext>,
    active: Option<ShotRun<'m>>,
    cancel: Arc<AtomicBool>,
    labels: Vec<String>,
    sinks: Vec<(String, Box<dyn FrameSink + Send>)>,
}

impl<'m> Session<'m> {
    /// Starts an empty story.
    pub fn new(
        model: &'m WanModel,
        cfg: SessionConfig,
        memory: Box<dyn ContextMemory>,
        codec: Box<dyn ContextCodec>,
        noise: Box<dyn NoiseSource>,
    ) -> Result<Self> {
        cfg.validate()?;
        let (h, w) = cfg.latent_size;
        model.token_grid(h, w)?;
        cfg.window.check(cfg.chunk_frames)?;
        Ok(Self {
            model,
            cfg,
            memory,
            codec,
            noise,
            captions: Vec::new(),
            shot_pixel_frames: Vec::new(),
            finished: Vec::new(),
            given_context: None,
            active: None,
            cancel: Arc::new(AtomicBool::new(false)),
            labels: Vec::new(),
            sinks: Vec::new(),
        })
    }

    /// The session settings.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// A handle that cancels generation from any thread (checked before every model call).
    pub fn cancel_token(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Sends every decoded frame from now on to `sink` as well (`name` appears in its errors).
    pub fn add_sink(&mut self, name: &str, sink: Box<dyn FrameSink + Send>) {
        self.sinks.push((name.to_string(), sink));
    }

    /// Finishes every sink (trailers written, files moved into place) and removes them.
    pub fn finish_sinks(&mut self) -> Vec<(String, std::result::Result<SinkReport, String>)> {
        std::mem::take(&mut self.sinks)
            .into_iter()
            .map(|(name, mut sink)| {
                let r = sink.finish().map_err(|e| e.to_string());
                (name, r)
            })
            .collect()
    }

    /// Queues the next shot with `label` (its caption text, shown by contact sheets).
    pub fn push_shot_labelled(&mut self, caption: &Tensor, label: &str) -> Result<usize> {
        let shot = self.push_shot(caption)?;
        self.labels.truncate(shot);
        self.labels.resize(shot, String::new());
        self.labels.push(label.to_string());
        Ok(shot)
    }

    /// Queues the next shot's caption embedding `[L, text_dim]`; returns its shot index.
    pub fn push_shot(&mut self, caption: &Tensor) -> Result<usize> {
        let cfg = self.model.config();
        let (l, d) = caption.dims2().map_err(|_| {
            EngineError::Input(format!(
                "a shot's caption embedding must be [tokens, {}]; got {:?}",
                cfg.text_dim,
                caption.dims()
            ))
        })?;
        if d != cfg.text_dim || l == 0 || l > cfg.text_len {
            return Err(EngineError::Input(format!(
                "caption embedding of shape [{l}, {d}] does not fit the model ([1..={}, {}])",
                cfg.text_len, cfg.text_dim
            )));
        }
        let caption = caption.to_dtype(DType::F32)?;
        let caption = if l < cfg.text_len { caption.pad_with_zeros(0, 0, cfg.text_len - l)? } else { caption };
        self.captions.push(caption);
        Ok(self.captions.len() - 1)
    }

    /// Uses `context` for the next shot that starts, instead of the memory policy.
    pub fn set_next_context(&mut self, context: GivenContext) -> Result<()> {
        let n = context.latents.dim(0)?;
        if n != context.shots.len() {
            return Err(EngineError::Input(format!(
                "{n} context latents but {} context shot flags",
                context.shots.len()
            )));
        }
        let (h, w) = self.cfg.latent_size;
        let want = [self.model.config().in_dim, h, w];
        if context.latents.dims()[1..] != want {
            return Err(EngineError::Input(format!(
                "context latents have shape {:?}; each frame must be {want:?}",
                context.latents.dims()
            )));
        }
        if n != self.cfg.context_frames {
            return Err(EngineError::Input(format!(
                "{n} context frames given; the session uses {}",
                self.cfg.context_frames
            )));
        }
        self.given_context = Some(context);
        Ok(())
    }

    /// Shots finished so far.
    pub fn finished_shots(&self) -> usize {
        self.finished.len()
    }

    /// Latents `[F, C, H, W]` of a finished shot.
    pub fn shot_latents(&self, shot: usize) -> Option<&Tensor> {
        self.finished.get(shot)
    }

    /// Whether a shot is in progress.
    pub fn is_generating(&self) -> bool {
        self.active.is_some()
    }

    /// Whether the next call to [`Session::next_chunk`] has work (a shot running or queued).
    pub fn has_work(&self) -> bool {
        self.active.is_some() || self.captions.len() > self.finished.len()
    }

    /// Bytes held by the caches of the running shot (0 between shots).
    pub fn cache_bytes(&self) -> usize {
        self.active.as_ref().map_or(0, ShotRun::cache_bytes)
    }

    /// Drops the running shot (its chunks so far are the caller's) and queued captions after it.
    pub fn cancel(&mut self) {
        if self.active.is_some() {
            self.codec.shot_cancelled();
            // Frames already sent stay in the outputs; the partial shot is closed there.
            self.sinks.retain_mut(|(_, s)| s.end_shot().is_ok());
        }
        self.active = None;
        self.captions.truncate(self.finished.len());
        self.labels.truncate(self.finished.len());
        self.given_context = None;
        self.cancel.store(false, Ordering::SeqCst);
    }

    /// Generates the next chunk; `Ok(None)` when no shot is queued (waiting for a caption).
    pub fn next_chunk(&mut self) -> Result<Option<LatentChunk>> {
        if self.active.is_none() {
            if self.captions.len() <= self.finished.len() {
                return Ok(None);
            }
            self.start_shot()?;
        }
        let result = self.run_chunk();
        if let Err(EngineError::Cancelled) = result {
            self.cancel();
            return Err(EngineError::Cancelled);
        }
        result.map(Some)
    }

    /// Pushes a chunk's frames into every sink; drops and reports the ones that fail.
    fn feed_sinks(&mut self, chunk: &LatentChunk, frames: &Tensor) -> Vec<String> {
        if self.sinks.is_empty() {
            return Vec::new();
        }
        let rgb = match to_rgb_frames(frames) {
            Ok(r) => r,
            Err(e) => return vec![format!("converting frames for the outputs: {e}")],
        };
        let label = self.labels.get(chunk.shot).cloned().unwrap_or_default();
        let mut errors = Vec::new();
        self.sinks.retain_mut(|(name, sink)| {
            let mut step = || -> storyreel_media::Result<()> {
                if chunk.chunk == 0 {
                    sink.begin_shot(chunk.shot, &label)?;
                }
                sink.push_frames(&rgb)?;
                sink.flush()?;
                if chunk.last_in_shot {
                    sink.end_shot()?;
                }
                Ok(())
            };
            match step() {
                Ok(()) => true,
                Err(e) => {
                    errors.push(format!("{name}: {e}"));
                    false
                }
            }
        });
        errors
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancel.load(Ordering::SeqCst) {
            Err(EngineError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn start_shot(&mut self) -> Result<()> {
        let shot = self.finished.len();
        let device = self.model.device().clone();
        let (h, w) = self.cfg.latent_size;
        let c = self.model.config().in_dim;
        let n_ctx = self.cfg.context_frames;
        let (latents, flags) = match self.given_context.take() {
            Some(g) => (g.latents.to_device(&device)?.to_dtype(DType::F32)?, g.shots),
            None => {
                // Labels are the captions' text where the caller gave them; a shot pushed
                // without one leaves the policy to fall back on lengths alone.
                let labelled = self.labels.len() > shot && self.labels[..=shot].iter().all(|l| !l.is_empty());
                let known: &[String] = if labelled { &self.labels[..=shot] } else { &[] };
                let picks = self.memory.select(&ContextQuery::with_captions(&self.shot_pixel_frames, known));
                if picks.is_empty() {
                    (Tensor::zeros((n_ctx, c, h, w), DType::F32, &device)?, vec![0; n_ctx])
                } else {
                    if picks.len() != n_ctx {
                        return Err(EngineError::Config(format!(
                            "context policy `{}` picked {} frames; the session uses {n_ctx}",
                            self.memory.name(),
                            picks.len()
                        )));
                    }
                    let mut frames = Vec::with_capacity(n_ctx);
                    for p in &picks {
                        self.check_cancel()?;
                        frames
                            .push(self.codec.encode_frame(p.shot, p.frame)?.to_device(&device)?.to_dtype(DType::F32)?);
                    }
                    (Tensor::stack(&frames, 0)?, picks.iter().map(|p| p.shot as i64).collect())
                }
            }
        };
        self.check_cancel()?;
        let caps = Tensor::stack(&self.captions[..=shot], 0)?;
        self.active = Some(ShotRun::start(self.model, &self.cfg, shot, &caps, &latents, &flags)?);
        Ok(())
    }

    fn run_chunk(&mut self) -> Result<LatentChunk> {
        let cancel = self.cancel.clone();
        let run = self.active.as_mut().ok_or_else(|| EngineError::Input("no shot is running".into()))?;
        let mut chunk = run.next_chunk(self.noise.as_mut(), &|| cancel.load(Ordering::SeqCst))?;
        chunk.frames = match self.codec.chunk_ready(&chunk) {
            Ok(f) => f,
            Err(e) => {
                // The shot's decoded frames would have a gap; drop it so the next call starts it again.
                self.codec.shot_cancelled();
                self.active = None;
                return Err(e);
            }
        };
        if let Some(frames) = &chunk.frames {
            chunk.sink_errors = self.feed_sinks(&chunk, frames);
        }
        if chunk.last_in_shot {
            let run = self.active.as_mut().ok_or_else(|| EngineError::Input("no shot is running".into()))?;
            let shot_latents = run.latents()?;
            self.active = None; // releases the caches
            let pixel_frames = self.codec.record_shot(&shot_latents)?;
            self.shot_pixel_frames.push(pixel_frames);
            self.finished.push(shot_latents);
        }
        Ok(chunk)
    }
}

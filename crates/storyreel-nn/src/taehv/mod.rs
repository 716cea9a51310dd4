//! The tiny video autoencoder for Wan2.1 latents, weight-compatible with TAEHV's `taew2_1`
//! (wan.md §6): a ~25× cheaper decoder than the Wan VAE, with a streaming decoder and encoder.
//! The same code runs smaller shapes ([`TinyVaeConfig`]) trained for other latent spaces, such
//! as the toy VAE's 8-channel, ×4 latents; a checkpoint names its shape in a
//! `tiny_vae_config.json` beside it (none means taew2_1). Below, 16 and 8 are taew2_1's latent
//! channels and space scale.
//!
//! Conventions (see [`crate::codec`]): latents are the DiT's normalised latents `[T, 16, h, w]`,
//! used as they are; pixels are `[F, 3, 8h, 8w]` in [−1, 1]. The network itself works in [0, 1]:
//! decoded frames are clamped to [0, 1] and mapped by 2y − 1, encoder inputs by (x + 1)/2.
//!
//! Frame alignment:
//! - Decoding: every latent yields 4 frames; a stream drops its first 3 (the reference's
//!   `frames_to_trim`), so T latents give 4T − 3 frames, matching Wan's 1 + 4(T − 1).
//! - Encoding follows the reference `encode_video`: the clip is padded **at the end** by
//!   repeating its last frame up to a multiple of 4, and every 4 frames give one latent. A clip
//!   of F = 4k + 1 frames is padded with 3 copies of its last frame and gives 1 + k latents;
//!   latent j is computed from frames 4j..4j+3 (and, through the MemBlocks, from all earlier
//!   ones). A single frame is repeated 4× and gives exactly one latent.
//!
//! Both stacks process frames independently except in MemBlock, TPool and TGrow (`stack.rs`
//! says how those carry state across calls), so a stream fed any number of frames per call
//! computes what decoding the whole clip at once (the reference's "parallel" mode) computes:
//! the same sums per output value, bit-identical on one thread; with several threads the GEMM
//! may order long sums differently for different call sizes (a few ulps).

mod arch;
mod kernels;
mod load;
mod stack;

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::codec::{DecodeStream, VideoCodec};
use crate::error::{NnError, Result};
pub use arch::TinyVaeConfig;
use arch::{stack_flops, TIME_SCALE};
use kernels::to_signed_pixels_owned;
use stack::{Stack, StackState};

/// Raw decoder frames dropped at the start of every stream (time upscale − 1).
pub const FRAMES_TO_TRIM: usize = TIME_SCALE - 1;

/// File beside a tiny autoencoder's weights that names its shape (absent for taew2_1).
pub const CONFIG_FILE: &str = "tiny_vae_config.json";

/// The tiny autoencoder: a decoder and, when the checkpoint has one, an encoder.
pub struct TinyVae {
    config: TinyVaeConfig,
    decoder: Stack,
    encoder: Option<Stack>,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for TinyVae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TinyVae")
            .field("config", &self.config)
            .field("encoder", &self.encoder.is_some())
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .finish()
    }
}

impl TinyVae {
    /// Loads `taew2_1.pth` / `taew2_1.safetensors` (keys `decoder.<idx>…`, optionally
    /// `encoder.<idx>…`), checking every name and shape, as `dtype` on `device`. A
    /// [`CONFIG_FILE`] in the same folder gives the shape; without one it is taew2_1's.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = Self::config_beside(path)?;
        Self::load_with_config(path, &config, dtype, device)
    }

    /// The shape named by the [`CONFIG_FILE`] beside the weights file `path` (taew2_1's when
    /// there is none).
    pub fn config_beside(path: &Path) -> Result<TinyVaeConfig> {
        let file = path.parent().unwrap_or(Path::new(".")).join(CONFIG_FILE);
        if !file.is_file() {
            return Ok(TinyVaeConfig::taew2_1());
        }
        let bad = |reason: String| NnError::BadCheckpoint { path: file.clone(), reason };
        let text = std::fs::read_to_string(&file).map_err(|e| bad(e.to_string()))?;
        let config: TinyVaeConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        config.validate().map_err(bad)?;
        Ok(config)
    }

    /// Loads weights checked against the shape `config`.
    pub fn load_with_config(path: &Path, config: &TinyVaeConfig, dtype: DType, device: &Device) -> Result<Self> {
        config.validate().map_err(NnError::Config)?;
        let (with_encoder, tensors) = load::read(path, config, dtype, device)?;
        Self::build(config.clone(), with_encoder, tensors, dtype, device)
    }

    /// Builds the model of shape `config` from reference-named tensors (decoder required,
    /// encoder optional), checked like [`TinyVae::load`] checks a file. Tensors already of
    /// `dtype` on `device` are used as they are, so variables stay differentiable.
    pub fn from_tensors(
        config: &TinyVaeConfig,
        tensors: &HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate().map_err(NnError::Config)?;
        let found: BTreeMap<String, Vec<usize>> = tensors.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())).collect();
        let (with_encoder, plan) = load::check(config, &found)?;
        let mut out = HashMap::with_capacity(plan.len());
        for (name, take) in plan {
            let t = tensors[&name].to_device(device)?.to_dtype(dtype)?;
            let t = match take {
                load::Take::All => t,
                load::Take::LastRows(rows) => t.narrow(0, t.dim(0)? - rows, rows)?.contiguous()?,
            };
            out.insert(name, t);
        }
        Self::build(config.clone(), with_encoder, out, dtype, device)
    }

    /// Deterministic random taew2_1 weights (encoder and decoder) for tests and benchmarks:
    /// weights N(0, 1/fan_in), biases N(0, 0.1²).
    pub fn random(seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        Self::random_with(&TinyVaeConfig::taew2_1(), seed, dtype, device)
    }

    /// Deterministic random weights of the shape `config`, drawn as [`TinyVae::random`] does.
    pub fn random_with(config: &TinyVaeConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        config.validate().map_err(NnError::Config)?;
        Self::build(config.clone(), true, random_tensors(config, seed, dtype, device)?, dtype, device)
    }

    fn build(
        config: TinyVaeConfig,
        with_encoder: bool,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut get = |name: &str| -> Result<Tensor> {
            tensors.get(name).cloned().ok_or_else(|| NnError::MissingTensor { name: name.into(), expected: Vec::new() })
        };
        let decoder = Stack::build("decoder", &config.decoder(), &mut get)?;
        let encoder = if with_encoder { Some(Stack::build("encoder", &config.encoder(), &mut get)?) } else { None };
        Ok(Self { config, decoder, encoder, dtype, device: device.clone() })
    }

    /// The model's shape.
    pub fn config(&self) -> &TinyVaeConfig {
        &self.config
    }

    /// Names and shapes of the tensors of a checkpoint of shape `config` in the reference
    /// layout: the decoder's, then the encoder's when `with_encoder`.
    pub fn expected_tensor_shapes(config: &TinyVaeConfig, with_encoder: bool) -> Vec<(String, Vec<usize>)> {
        load::expected_tensors(config, with_encoder)
    }

    /// Names and shapes of this model's tensors (what [`TinyVae::save`] writes).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        Self::expected_tensor_shapes(&self.config, self.has_encoder())
    }

    /// Number of parameters (taew2_1: 11,315,539 with the encoder, 9,844,611 without).
    pub fn param_count(&self) -> usize {
        self.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Whether the weights include an encoder.
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// The same model without its encoder (a decoder-only checkpoint's model).
    pub fn without_encoder(mut self) -> Self {
        self.encoder = None;
        self
    }

    /// Dtype the model computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weights under their reference names and shapes, sorted by name.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v = self.decoder.reference_tensors()?;
        if let Some(e) = &self.encoder {
            v.extend(e.reference_tensors()?);
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    /// Saves the weights in the reference layout: `.safetensors`, or a `torch.save` state dict
    /// for `.pth` / `.pt` (loadable by the reference `TAEHV`). A shape other than taew2_1's is
    /// also written to the [`CONFIG_FILE`] beside them.
    pub fn save(&self, path: &Path) -> Result<()> {
        if !self.config.is_taew2_1() {
            let file = path.parent().unwrap_or(Path::new(".")).join(CONFIG_FILE);
            let text = serde_json::to_string_pretty(&self.config).map_err(|e| NnError::Config(e.to_string()))?;
            std::fs::write(&file, text + "\n")
                .map_err(|e| NnError::BadCheckpoint { path: file.clone(), reason: e.to_string() })?;
        }
        let tensors = self.tensors()?;
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "safetensors" => crate::checkpoint::save_safetensors(path, &tensors.into_iter().collect()),
            "pth" | "pt" => crate::checkpoint::save_pth(path, &tensors, None),
            _ => Err(NnError::BadCheckpoint {
                path: path.to_path_buf(),
                reason: "unknown extension: use .safetensors, .pth or .pt".into(),
            }),
        }
    }

    /// FLOPs (2 per multiply-accumulate) taew2_1's decoder spends per latent frame in steady
    /// state on an `h`×`w` latent grid (4 output frames of 8h×8w).
    pub fn decoder_flops_per_latent(h: usize, w: usize) -> f64 {
        Self::decoder_flops_of(&TinyVaeConfig::taew2_1(), h, w)
    }

    /// FLOPs taew2_1's encoder spends per latent frame (4 input frames of `height`×`width`).
    pub fn encoder_flops_per_latent(height: usize, width: usize) -> f64 {
        stack_flops(&TinyVaeConfig::taew2_1().encoder(), TIME_SCALE as f64, height, width)
    }

    /// FLOPs the decoder of shape `config` spends per latent frame on an `h`×`w` latent grid.
    pub fn decoder_flops_of(config: &TinyVaeConfig, h: usize, w: usize) -> f64 {
        stack_flops(&config.decoder(), 1.0, h, w)
    }

    /// Starts a decode stream (the concrete type behind [`VideoCodec::decode_stream`]).
    pub fn stream(self: &Arc<Self>) -> TinyDecodeStream {
        TinyDecodeStream { vae: Arc::clone(self), state: self.decoder.new_state(), seen: 0, hw: None }
    }

    /// Decodes a clip `[T, 16, h, w]` to `[4T − 3, 3, 8h, 8w]` in [−1, 1]. `parallel` runs all
    /// frames through each layer at once (memory grows with T); otherwise one latent at a time.
    pub fn decode_video(&self, latents: &Tensor, parallel: bool) -> Result<Tensor> {
        let raw = self.decode_raw(latents, parallel)?;
        let f = raw.dim(0)?;
        to_signed_pixels_owned(raw.narrow(0, FRAMES_TO_TRIM, f - FRAMES_TO_TRIM)?.to_dtype(DType::F32)?)
    }

    /// The decoder's raw output for `[T, 16, h, w]`: all 4T frames, untrimmed and unclamped, in
    /// the reference's [0, 1] scale (for comparisons with the reference implementation).
    pub fn decode_raw(&self, latents: &Tensor, parallel: bool) -> Result<Tensor> {
        let (t, _, _) = check_latents(&self.config, latents, None)?;
        let x = latents.to_device(&self.device)?.to_dtype(self.dtype)?;
        let mut state = self.decoder.new_state();
        if parallel {
            return self.decoder.run(&mut state, x)?.ok_or_else(no_output);
        }
        let mut out = Vec::with_capacity(t);
        for i in 0..t {
            out.push(self.decoder.run(&mut state, x.narrow(0, i, 1)?)?.ok_or_else(no_output)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    fn encoder(&self) -> Result<&Stack> {
        self.encoder.as_ref().ok_or_else(|| {
            NnError::Config(
                "this TAEHV checkpoint has only decoder weights (no `encoder.*` tensors): cannot encode".into(),
            )
        })
    }

    /// Starts an encode stream: push pixel frames, get latents as every 4 frames complete.
    pub fn encode_stream(&self) -> Result<TinyEncodeStream<'_>> {
        let enc = self.encoder()?;
        Ok(TinyEncodeStream { vae: self, enc, state: enc.new_state(), frames: 0, last: None, hw: None })
    }

    /// Encodes `[F, 3, H, W]` pixels in [−1, 1] (F ≥ 1, H and W multiples of 8) to f32 latents
    /// `[⌈F/4⌉, 16, H/8, W/8]`, padding the end with copies of the last frame (see the module
    /// docs). `parallel` runs all frames through each layer at once; otherwise 4 at a time.
    pub fn encode_video(&self, frames: &Tensor, parallel: bool) -> Result<Tensor> {
        let enc = self.encoder()?;
        let (f, _, _) = check_frames(&self.config, frames, None)?;
        if !parallel {
            let mut s = self.encode_stream()?;
            let head = s.push(frames)?;
            let tail = s.finish()?;
            return Ok(Tensor::cat(&[head, tail], 0)?);
        }
        let mut x = self.pixels_in(frames)?;
        let pad = (TIME_SCALE - f % TIME_SCALE) % TIME_SCALE;
        if pad > 0 {
            let last = x.narrow(0, f - 1, 1)?;
            x = Tensor::cat(&[x, last.repeat((pad, 1, 1, 1))?], 0)?;
        }
        Ok(enc.run(&mut enc.new_state(), x)?.ok_or_else(no_output)?.to_dtype(DType::F32)?)
    }

    /// [−1, 1] pixels → the encoder's [0, 1] input, in the model's dtype and device.
    fn pixels_in(&self, frames: &Tensor) -> Result<Tensor> {
        Ok(frames.to_device(&self.device)?.to_dtype(self.dtype)?.affine(0.5, 0.5)?)
    }
}

fn no_output() -> NnError {
    NnError::Input("the TAEHV stack produced no frames for a complete input".into())
}

/// Checks latents `[T ≥ 1, C, h, w]` (and their grid against `hw` when given); returns (T, h, w).
fn check_latents(
    config: &TinyVaeConfig,
    latents: &Tensor,
    hw: Option<(usize, usize)>,
) -> Result<(usize, usize, usize)> {
    let channels = config.latent_channels;
    let (t, c, h, w) = latents.dims4().map_err(|_| {
        NnError::Input(format!("tiny decoder latents must be [T, {channels}, h, w]; got {:?}", latents.dims()))
    })?;
    if c != channels {
        return Err(NnError::Input(format!(
            "tiny decoder latents must have {channels} channels; got {c} (shape {:?})",
            latents.dims()
        )));
    }
    if t == 0 || h == 0 || w == 0 {
        return Err(NnError::Input(format!("no latent frames to decode (shape {:?})", latents.dims())));
    }
    if let Some((h0, w0)) = hw {
        if (h, w) != (h0, w0) {
            return Err(NnError::Input(format!(
                "latent grid {h}×{w} differs from the {h0}×{w0} this stream started with"
            )));
        }
    }
    Ok((t, h, w))
}

/// Checks pixel frames `[F ≥ 1, 3, H, W]` with H, W positive multiples of the space scale (and
/// against `hw`).
fn check_frames(config: &TinyVaeConfig, frames: &Tensor, hw: Option<(usize, usize)>) -> Result<(usize, usize, usize)> {
    let scale = config.space_scale();
    let (f, c, h, w) = frames
        .dims4()
        .map_err(|_| NnError::Input(format!("pixel frames must be [F, 3, H, W]; got {:?}", frames.dims())))?;
    if c != 3 {
        return Err(NnError::Input(format!("pixel frames must have 3 channels; got {c} (shape {:?})", frames.dims())));
    }
    if f == 0 {
        return Err(NnError::Input(format!("no pixel frames to encode (shape {:?})", frames.dims())));
    }
    if h == 0 || w == 0 || h % scale != 0 || w % scale != 0 {
        return Err(NnError::Input(format!(
            "frame size {h}×{w} is not a positive multiple of {scale} in both directions"
        )));
    }
    if let Some((h0, w0)) = hw {
        if (h, w) != (h0, w0) {
            return Err(NnError::Input(format!(
                "frame size {h}×{w} differs from the {h0}×{w0} this stream started with"
            )));
        }
    }
    Ok((f, h, w))
}

/// Reference-named random tensors for [`TinyVae::random_with`].
fn random_tensors(config: &TinyVaeConfig, seed: u64, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in load::expected_tensors(config, true) {
        let n: usize = shape.iter().product();
        let std = if shape.len() == 4 { 1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt() } else { 0.1 };
        let data: Vec<f32> = (0..n)
            .map(|_| {
                // Box–Muller from two uniforms keeps this independent of rand_distr.
                let u1: f32 = rng.random_range(1e-7f32..1.0);
                let u2: f32 = rng.random::<f32>();
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        out.insert(name, Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?);
    }
    Ok(out)
}

/// Bytes the largest activations of one latent's decoding may take before a push is split.
const STEP_BUDGET: usize = 256 << 20;

/// Latents a stream decodes per step on an `h`×`w` grid: the whole push when it is small (more
/// frames per convolution keep every core busy), one at a time at full resolution (4 frames of
/// 64 channels at 480×832 already take 400 MB).
fn latents_per_step(config: &TinyVaeConfig, h: usize, w: usize, dtype: DType) -> usize {
    // Last-level phase outputs and their interleaved result: ≈ 2 × 4 frames × width × s²hw.
    let width = config.decoder_widths.iter().rev().take(2).copied().max().unwrap_or(64);
    let scale = config.space_scale();
    let per_latent = 2 * TIME_SCALE * width * (scale * scale) * h * w * dtype.size_in_bytes();
    (STEP_BUDGET / per_latent.max(1)).max(1)
}

/// A decode stream of [`TinyVae`]: one memory frame per MemBlock, the first 3 frames trimmed.
pub struct TinyDecodeStream {
    vae: Arc<TinyVae>,
    state: StackState,
    seen: usize,
    hw: Option<(usize, usize)>,
}

impl DecodeStream for TinyDecodeStream {
    fn push(&mut self, latents: &Tensor) -> Result<Tensor> {
        let (t, h, w) = check_latents(&self.vae.config, latents, self.hw)?;
        self.hw = Some((h, w));
        let x = latents.to_device(&self.vae.device)?.to_dtype(self.vae.dtype)?;
        let step = latents_per_step(&self.vae.config, h, w, self.vae.dtype).min(t);
        let mut out = Vec::with_capacity(t.div_ceil(step));
        for i in (0..t).step_by(step) {
            let n = step.min(t - i);
            let raw = self.vae.decoder.run(&mut self.state, x.narrow(0, i, n)?)?.ok_or_else(no_output)?;
            let skip = if self.seen == 0 { FRAMES_TO_TRIM } else { 0 };
            self.seen += n;
            let f = raw.dim(0)? - skip;
            out.push(to_signed_pixels_owned(raw.narrow(0, skip, f)?.to_dtype(DType::F32)?)?);
        }
        Ok(if out.len() == 1 { out.remove(0) } else { Tensor::cat(&out, 0)? })
    }

    fn latents_seen(&self) -> usize {
        self.seen
    }

    fn cache_bytes(&self) -> usize {
        self.state.bytes()
    }
}

/// An encode stream of [`TinyVae`]: frames in, one latent per 4 frames out.
pub struct TinyEncodeStream<'a> {
    vae: &'a TinyVae,
    enc: &'a Stack,
    state: StackState,
    frames: usize,
    last: Option<Tensor>,
    hw: Option<(usize, usize)>,
}

impl TinyEncodeStream<'_> {
    /// Encodes the next frames `[F, 3, H, W]` in [−1, 1]; returns the latents they complete,
    /// f32 `[k, 16, H/8, W/8]` (k may be 0).
    pub fn push(&mut self, frames: &Tensor) -> Result<Tensor> {
        let (f, h, w) = check_frames(&self.vae.config, frames, self.hw)?;
        self.hw = Some((h, w));
        let x = self.vae.pixels_in(frames)?;
        self.last = Some(x.narrow(0, f - 1, 1)?.force_contiguous()?);
        self.run(x)
    }

    /// Ends the stream: pads with copies of the last frame up to a multiple of 4 and returns
    /// the remaining latents (none when the frame count already was a multiple of 4).
    pub fn finish(mut self) -> Result<Tensor> {
        let pad = (TIME_SCALE - self.frames % TIME_SCALE) % TIME_SCALE;
        match (&self.last, pad) {
            (Some(last), p) if p > 0 => {
                let x = last.repeat((p, 1, 1, 1))?;
                self.run(x)
            }
            _ => self.empty(),
        }
    }

    /// Frames pushed so far.
    pub fn frames_seen(&self) -> usize {
        self.frames
    }

    /// Bytes held by memories and frames waiting for their group.
    pub fn cache_bytes(&self) -> usize {
        self.state.bytes()
    }

    /// Runs encoder-input frames 4 at a time (bounded activations) and collects the latents.
    fn run(&mut self, x: Tensor) -> Result<Tensor> {
        let f = x.dim(0)?;
        let mut out = Vec::new();
        let mut i = 0;
        while i < f {
            // Steps end on group boundaries so each step completes at most one latent.
            let n = (TIME_SCALE - self.frames % TIME_SCALE).min(f - i);
            if let Some(z) = self.enc.run(&mut self.state, x.narrow(0, i, n)?)? {
                out.push(z.to_dtype(DType::F32)?);
            }
            self.frames += n;
            i += n;
        }
        match out.len() {
            0 => self.empty(),
            1 => Ok(out.remove(0)),
            _ => Ok(Tensor::cat(&out, 0)?),
        }
    }

    fn empty(&self) -> Result<Tensor> {
        let (h, w) = self.hw.unwrap_or((0, 0));
        let scale = self.vae.config.space_scale();
        let shape = (0, self.vae.config.latent_channels, h / scale, w / scale);
        Ok(Tensor::zeros(shape, DType::F32, &self.vae.device)?)
    }
}

impl VideoCodec for TinyVae {
    fn name(&self) -> &str {
        "tiny"
    }

    fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    fn spatial_scale(&self) -> usize {
        self.config.space_scale()
    }

    fn decode_stream(self: Arc<Self>) -> Box<dyn DecodeStream> {
        Box::new(self.stream())
    }

    /// Encodes `[F, 3, H, W]` (F = 4k + 1 gives 1 + k latents) by the end-padding rule of the
    /// module docs, 4 frames at a time.
    fn encode(&self, frames: &Tensor) -> Result<Tensor> {
        self.encode_video(frames, false)
    }
}

//! Stage `tiny-decoder`: trains a TAEHV-style tiny decoder ([`TinyVae`] at a small shape) for
//! a VAE's latent space, so generation can decode several times faster than the VAE's causal 3-D
//! decoder while reading the same latents.
//!
//! The VAE's encoder makes the latents of world clips once, up front (a pool); each step
//! decodes some of them with the tiny decoder and compares with the clip's own frames
//! (`target = "pixels"`) or with the VAE decoder's output (`target = "vae"`, pure
//! distillation). With a `student` section, the pool also holds shots that student generated,
//! each with its VAE decoder's frames as the target, so the decoder learns the latents it will
//! actually read. Held-out clips are scored against both as training goes. The output is a
//! decoder-only checkpoint plus its shape file, which `storyreel generate --decoder tiny` loads
//! from a model folder's `tiny_vae/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::taehv::{TinyVae, TinyVaeConfig};
use storyreel_nn::vae::WanVae;
use storyreel_world::rng::{mix64, WorldRng};

use crate::data::{frames_to_tensor, story_options, ClipSource, RenderedClips};
use crate::error::{Result, TrainError};
use crate::log::Progress;
use crate::stage_config::{learning_settings, read_over_defaults};
use crate::stage_vae::{clip_source, trainer_with_held_out_log, ClipData, HeldOut};
use crate::student_shots::{generate_student_shots, StudentShot, StudentShots};
use crate::trainer::TrainConfig;
use crate::vae::psnr_from_mse;

/// What the tiny decoder learns to output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderTarget {
    /// The clip's own frames: the decoder may end up sharper than the VAE's.
    Pixels,
    /// The VAE decoder's reconstruction: a copy of the VAE's decoder, only faster.
    Vae,
}

/// The tiny decoder shape for the toy VAE's latents (8 channels, ×4 space, ×4 time): two
/// levels of two MemBlocks at 48 and 24 channels, ≈ 0.13 GFLOP per 64×64 frame where the toy
/// VAE's decoder spends several times that.
pub fn toy_decoder_shape() -> TinyVaeConfig {
    TinyVaeConfig {
        latent_channels: 8,
        decoder_widths: vec![48, 24, 24],
        time_upscale: vec![true, true],
        mem_blocks: 2,
        encoder_width: 24,
    }
}

/// Everything `storyreel train tiny-decoder --config FILE` reads (JSON or TOML; unknown keys
/// are errors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TinyDecoderStageConfig {
    /// The VAE (model folder or weights file) whose latents the decoder reads.
    pub vae: PathBuf,
    /// The decoder's shape; its latent channels and space scale must match the VAE's.
    pub shape: TinyVaeConfig,
    /// Training clips: whole shots by default (17–33 frames), so the decoder sees every latent
    /// position a shot has; with `whole_shots: false`, windows of `clip_frames` = 1 + 4k.
    pub data: ClipData,
    /// A student whose generated shots join the pool, with its VAE's frames as their target.
    pub student: Option<StudentShots>,
    /// Clips encoded once at the start and drawn from at every step.
    pub pool_clips: usize,
    /// What the decoder is trained to output.
    pub target: DecoderTarget,
    /// Weight of the L1 error of frame-to-frame changes (0 turns it off): it punishes jumps
    /// between latents, which read as cuts.
    pub temporal_weight: f64,
    /// Held-out scoring.
    pub held_out: HeldOut,
    /// Optimisation steps (each of `train.accumulate` clips).
    pub steps: u64,
    /// Seed of the initial weights.
    pub init_seed: u64,
    /// Start from this tiny decoder (weights file; same shape) instead of random weights.
    pub init_from: Option<PathBuf>,
    /// Optimiser, schedule, accumulation (clips per step), checkpoints, output folder.
    pub train: TrainConfig,
}

impl Default for TinyDecoderStageConfig {
    fn default() -> Self {
        let mut train = TrainConfig {
            out_dir: PathBuf::from("runs/tiny-decoder"),
            checkpoint_every: 250,
            schedule: crate::schedule::LrSchedule::warmup_cosine(2e-3, 2e-5, 50),
            clip_norm: Some(1.0),
            accumulate: 2,
            ..Default::default()
        };
        train.optimizer.weight_decay = 0.0;
        Self {
            vae: PathBuf::from("assets/models/toy-student/vae"),
            shape: toy_decoder_shape(),
            // Whole shots: a decoder trained on k-latent windows jumps at latent k + 1 of longer
            // shots (false cuts 9 frames in for 3-latent windows, 17 for 5-latent ones).
            data: ClipData { clip_frames: 17, whole_shots: true, ..ClipData::default() },
            student: None,
            pool_clips: 400,
            target: DecoderTarget::Pixels,
            temporal_weight: 0.0,
            held_out: HeldOut { clips: 24, every: 250, ..HeldOut::default() },
            steps: 1300,
            init_seed: 1,
            init_from: None,
            train,
        }
    }
}

/// Clips in a pool at most (each holds its frames in memory).
const MAX_POOL: usize = 100_000;

impl TinyDecoderStageConfig {
    /// Reads a `.json` or `.toml` config.
    pub fn read(path: &Path) -> Result<Self> {
        read_over_defaults(path, &Self::default())
    }

    /// Checks the settings that do not need the VAE (the trainer's own included).
    pub fn validate(&self) -> Result<()> {
        self.shape.validate().map_err(|e| TrainError::out_of_range("shape", format!("{:?}", self.shape), e))?;
        self.train.validate()?;
        if self.steps == 0 {
            return Err(TrainError::out_of_range("steps", 0, "at least 1"));
        }
        if !(1..=MAX_POOL).contains(&self.pool_clips) {
            return Err(TrainError::out_of_range("pool_clips", self.pool_clips, format!("1..={MAX_POOL}")));
        }
        if !(0.0..=100.0).contains(&self.temporal_weight) {
            return Err(TrainError::out_of_range("temporal_weight", self.temporal_weight, "0..=100"));
        }
        if self.held_out.clips == 0 || self.held_out.every == 0 {
            return Err(TrainError::out_of_range("held_out", format!("{:?}", self.held_out), "clips and every >= 1"));
        }
        if let Some(st) = &self.student {
            if st.stories == 0 || st.held_out_stories == 0 {
                return Err(TrainError::out_of_range(
                    "student",
                    format!("{} stories, {} held out", st.stories, st.held_out_stories),
                    "at least 1 of each",
                ));
            }
            crate::data::check_training_seeds(st.first_seed, st.stories.saturating_add(st.held_out_stories))?;
        }
        Ok(())
    }
}

/// Held-out scores of the tiny decoder at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TinyDecoderScore {
    /// Steps done.
    pub step: u64,
    /// PSNR against the clips' own frames, dB.
    pub psnr_pixels: f64,
    /// PSNR against the VAE decoder's output, dB.
    pub psnr_to_vae: f64,
    /// PSNR against the clips' own frames by latent position in the shot (position 0 is the
    /// first frame, position k ≥ 1 frames 4k − 3 ..= 4k), over the clips that reach it: a
    /// decoder that has not learnt a position shows a drop there.
    pub psnr_by_latent: Vec<f64>,
    /// PSNR against the VAE decoder's output on held-out student shots (with a `student`).
    pub student_psnr_to_vae: Option<f64>,
    /// Mean absolute change from the last frame of a latent to the first of the next, over
    /// the mean change between frames of one latent, on the held-out shots: 1 for smooth
    /// motion, above 1 when the picture jumps between latents.
    pub boundary_jump: f64,
}

/// How a tiny-decoder run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TinyDecoderStageReport {
    /// Steps done in total (resumed ones included).
    pub steps: u64,
    /// What it was trained on.
    pub target: DecoderTarget,
    /// Held-out scores at the end.
    pub held_out: TinyDecoderScore,
    /// Training pairs from the student's shots (0 without a `student`).
    pub student_pairs: usize,
    /// The VAE decoder's own held-out PSNR against the frames, dB (the reference).
    pub vae_psnr_pixels: f64,
    /// The same by latent position (see [`TinyDecoderScore::psnr_by_latent`]).
    pub vae_psnr_by_latent: Vec<f64>,
    /// [`TinyDecoderScore::boundary_jump`] of the VAE's decoder, and of the frames themselves.
    pub vae_boundary_jump: f64,
    /// The same measure on the held-out frames themselves.
    pub frames_boundary_jump: f64,
    /// Held-out scores after each scoring.
    pub curve: Vec<TinyDecoderScore>,
    /// Held-out frames per second of the tiny decoder, one stream, this machine.
    pub tiny_frames_per_s: f64,
    /// The same for the VAE decoder.
    pub vae_frames_per_s: f64,
    /// Seconds this invocation ran (pool encoding included).
    pub wall_seconds: f64,
    /// The EMA decay when the decoder holds the EMA weights (and `held_out` scores them).
    pub ema_decay: Option<f64>,
    /// Parameters of the decoder.
    pub parameters: usize,
    /// Where the decoder was written.
    pub model_dir: PathBuf,
}

/// One clip's latents and the frames the decoder should give for them.
struct DecoderPair {
    /// Normalised latents `[T, z, h, w]`.
    latents: Tensor,
    /// The target frames `[4T − 3, 3, H, W]` in the decoder's [0, 1] scale.
    target: Tensor,
    /// The clip's frames in [−1, 1] (held-out scoring).
    pixels: Tensor,
    /// The VAE decoder's frames in [−1, 1] (held-out scoring).
    vae: Option<Tensor>,
}

/// Encodes `count` clips of `source` (and decodes them again with the VAE when needed).
fn encode_pool(
    vae: &Arc<WanVae>,
    source: &dyn ClipSource,
    count: usize,
    target: DecoderTarget,
    keep_vae: bool,
    progress: bool,
) -> Result<Vec<DecoderPair>> {
    let device = Device::Cpu;
    let bar = Progress::new(count as u64, 0, progress);
    let mut pool = Vec::with_capacity(count);
    for i in 0..count {
        let clip = source.clip(i as u64)?;
        let pixels = frames_to_tensor(&clip.frames, &device)?;
        let latents = vae.encode_clip(&pixels)?.to_dtype(DType::F32)?;
        let vae_frames = if keep_vae || target == DecoderTarget::Vae {
            Some(Arc::clone(vae).decode(&latents)?.to_dtype(DType::F32)?)
        } else {
            None
        };
        let target_frames = match (target, &vae_frames) {
            (DecoderTarget::Vae, Some(v)) => v.clone(),
            _ => pixels.clone(),
        };
        let target = target_frames.affine(0.5, 0.5)?;
        pool.push(DecoderPair { latents, target, pixels, vae: if keep_vae { vae_frames } else { None } });
        bar.update(i as u64 + 1, f64::NAN);
    }
    bar.finish();
    Ok(pool)
}

/// Student shots as training pairs: the VAE's frames are both the target and the reference.
fn student_pairs(shots: Vec<StudentShot>) -> Result<Vec<DecoderPair>> {
    shots
        .into_iter()
        .map(|s| {
            Ok(DecoderPair {
                target: s.frames.affine(0.5, 0.5)?,
                pixels: s.frames.clone(),
                vae: Some(s.frames),
                latents: s.latents,
            })
        })
        .collect()
}

/// The pixel frames latent position `k` decodes to: frame 0 for the first, 4k − 3 ..= 4k after.
fn latent_frame_range(k: usize) -> (usize, usize) {
    if k == 0 {
        (0, 1)
    } else {
        (4 * k - 3, 4)
    }
}

/// Mean PSNR against the clips' frames at each latent position, over the clips reaching it.
fn psnr_by_latent(decoder: &Arc<dyn VideoCodec>, pairs: &[DecoderPair]) -> Result<Vec<f64>> {
    let mut sums: Vec<(f64, usize)> = Vec::new();
    for p in pairs {
        let y = Arc::clone(decoder).decode(&p.latents)?.clamp(-1f32, 1f32)?;
        let t = p.latents.dim(0)?;
        if sums.len() < t {
            sums.resize(t, (0.0, 0));
        }
        for (k, sum) in sums.iter_mut().enumerate().take(t) {
            let (start, len) = latent_frame_range(k);
            let mse = (y.narrow(0, start, len)? - p.pixels.narrow(0, start, len)?)?.sqr()?.mean_all()?;
            sum.0 += psnr_from_mse(mse.to_scalar::<f32>()? as f64);
            sum.1 += 1;
        }
    }
    Ok(sums.into_iter().map(|(s, n)| s / n.max(1) as f64).collect())
}

/// Sums of the mean absolute change between frames across latents and within them.
#[derive(Default)]
struct JumpSums {
    across: (f64, usize),
    within: (f64, usize),
}

impl JumpSums {
    /// Adds the changes between the frames `[F, 3, H, W]` of one shot.
    fn add(&mut self, frames: &Tensor) -> Result<()> {
        let f = frames.dim(0)?;
        if f < 2 {
            return Ok(());
        }
        let change =
            (frames.narrow(0, 1, f - 1)? - frames.narrow(0, 0, f - 1)?)?.abs()?.mean((1, 2, 3))?.to_vec1::<f32>()?;
        // change[i] is frame i → i + 1; latent k ≥ 2 starts at frame 4k − 3 (latent 1 follows
        // the first frame, which is a latent of its own, so that step is left out of both).
        for (i, c) in change.iter().enumerate() {
            let next = i + 1;
            if next == 1 {
                continue;
            }
            let sum = if (next - 1) % 4 == 0 { &mut self.across } else { &mut self.within };
            sum.0 += *c as f64;
            sum.1 += 1;
        }
        Ok(())
    }

    fn ratio(&self) -> f64 {
        (self.across.0 / self.across.1.max(1) as f64) / (self.within.0 / self.within.1.max(1) as f64).max(1e-12)
    }
}

/// [`TinyDecoderScore::boundary_jump`] of `decoder` over `pairs`.
fn boundary_jump(decoder: &Arc<dyn VideoCodec>, pairs: &[DecoderPair]) -> Result<f64> {
    let mut sums = JumpSums::default();
    for p in pairs {
        sums.add(&Arc::clone(decoder).decode(&p.latents)?.clamp(-1f32, 1f32)?)?;
    }
    Ok(sums.ratio())
}

/// The same measure on the pairs' own frames.
fn frames_jump(pairs: &[DecoderPair]) -> Result<f64> {
    let mut sums = JumpSums::default();
    for p in pairs {
        sums.add(&p.pixels)?;
    }
    Ok(sums.ratio())
}

/// The decoder's variables, named as in the reference layout, drawn uniform with variance
/// 1/fan_in (biases 0) from `seed`.
fn decoder_vars(shape: &TinyVaeConfig, varmap: &VarMap, seed: u64) -> Result<()> {
    let device = Device::Cpu;
    let mut rng = WorldRng::new(seed);
    let data = varmap.data();
    let mut vars = data.lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    for (name, dims) in TinyVae::expected_tensor_shapes(shape, false) {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if dims.len() == 1 {
            vec![0.0; n]
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let bound = (3.0 / fan_in as f64).sqrt();
            (0..n).map(|_| rng.range_f(-bound, bound) as f32).collect()
        };
        vars.insert(name, Var::from_tensor(&Tensor::from_vec(values, dims, &device)?)?);
    }
    Ok(())
}

/// The decoder built on the variables' current values (differentiable; rebuilt after every
/// update because the fused kernels are derived from the weights).
fn decoder_from_vars(shape: &TinyVaeConfig, varmap: &VarMap) -> Result<TinyVae> {
    let data = varmap.data().lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    let tensors = data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    Ok(TinyVae::from_tensors(shape, &tensors, DType::F32, &Device::Cpu)?)
}

/// Copies a tiny decoder's weights into the variables (same shape required).
fn load_initial_weights(shape: &TinyVaeConfig, varmap: &VarMap, from: &Path) -> Result<()> {
    let trained = TinyVae::load_with_config(from, shape, DType::F32, &Device::Cpu)
        .map_err(|e| TrainError::File(format!("init_from {}: {e}", from.display())))?;
    let tensors: std::collections::HashMap<String, Tensor> = trained.tensors()?.into_iter().collect();
    let data = varmap.data().lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| TrainError::File(format!("init_from {}: no tensor `{name}`", from.display())))?;
        var.set(t)?;
    }
    Ok(())
}

/// The decoder's raw output for `pair`'s latents with the first 3 frames dropped: the frames
/// that line up with the target, unclamped so gradients reach every pixel.
fn decode_for_loss(decoder: &TinyVae, pair: &DecoderPair) -> Result<Tensor> {
    let raw = decoder.decode_raw(&pair.latents, true)?;
    let trim = storyreel_nn::taehv::FRAMES_TO_TRIM;
    let f = raw.dim(0)? - trim;
    Ok(raw.narrow(0, trim, f)?)
}

/// One clip's loss: L1 + MSE in the [0, 1] scale, plus `temporal` × the L1 error of the
/// frame-to-frame changes, and the clip's PSNR.
fn pair_loss(decoder: &TinyVae, pair: &DecoderPair, temporal: f64) -> Result<(Tensor, f64)> {
    let y = decode_for_loss(decoder, pair)?;
    let diff = (&y - &pair.target)?;
    let mse = diff.sqr()?.mean_all()?;
    let mut loss = (diff.abs()?.mean_all()? + &mse)?;
    let f = diff.dim(0)?;
    if temporal > 0.0 && f > 1 {
        // The per-frame terms leave a jump between latents (every 4th frame) unpunished when
        // both sides are equally far from the target; the change between frames does not.
        let change_error = (diff.narrow(0, 1, f - 1)? - diff.narrow(0, 0, f - 1)?)?;
        loss = (loss + (change_error.abs()?.mean_all()? * temporal)?)?;
    }
    // [0, 1] errors are half of [−1, 1] ones.
    let psnr = psnr_from_mse(4.0 * mse.to_scalar::<f32>()? as f64);
    Ok((loss, psnr))
}

/// Mean PSNR of the decoder's (clamped) frames against `reference(pair)` over `pairs`.
fn mean_psnr(
    decoder: &Arc<TinyVae>,
    pairs: &[DecoderPair],
    reference: impl Fn(&DecoderPair) -> Option<&Tensor>,
) -> Result<f64> {
    let mut total = 0.0;
    for p in pairs {
        let Some(r) = reference(p) else { continue };
        let y = Arc::clone(decoder).decode(&p.latents)?;
        total += psnr_from_mse((y - r)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64);
    }
    Ok(total / pairs.len().max(1) as f64)
}

fn score(
    step: u64,
    decoder: &Arc<TinyVae>,
    held: &[DecoderPair],
    held_student: &[DecoderPair],
) -> Result<TinyDecoderScore> {
    Ok(TinyDecoderScore {
        step,
        psnr_pixels: mean_psnr(decoder, held, |p| Some(&p.pixels))?,
        psnr_to_vae: mean_psnr(decoder, held, |p| p.vae.as_ref())?,
        psnr_by_latent: psnr_by_latent(&(decoder.clone() as Arc<dyn VideoCodec>), held)?,
        boundary_jump: boundary_jump(&(decoder.clone() as Arc<dyn VideoCodec>), held)?,
        student_psnr_to_vae: if held_student.is_empty() {
            None
        } else {
            Some(mean_psnr(decoder, held_student, |p| p.vae.as_ref())?)
        },
    })
}

/// Frames per second of decoding every held-out clip with `codec`, one stream per clip.
fn decode_rate(codec: &Arc<dyn VideoCodec>, held: &[DecoderPair]) -> Result<f64> {
    let started = Instant::now();
    let mut frames = 0;
    for p in held {
        frames += Arc::clone(codec).decode(&p.latents)?.dim(0)?;
    }
    Ok(frames as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Checks that `shape` reads `vae`'s latents.
fn check_shape_fits(shape: &TinyVaeConfig, vae: &WanVae, path: &Path) -> Result<()> {
    let (z, s) = (vae.config().z_dim, vae.config().spatial_scale());
    if shape.latent_channels != z || shape.space_scale() != s {
        return Err(TrainError::out_of_range(
            "shape",
            format!("{} latent channels, ×{} space", shape.latent_channels, shape.space_scale()),
            format!("the VAE {}'s {z} channels and ×{s} space", path.display()),
        ));
    }
    Ok(())
}

/// Trains (or resumes) the tiny decoder and writes `train.out_dir/model/tiny_vae.safetensors`.
pub fn run_tiny_decoder_stage(cfg: &TinyDecoderStageConfig) -> Result<TinyDecoderStageReport> {
    cfg.validate()?;
    let started = Instant::now();
    let device = Device::Cpu;
    let vae = Arc::new(
        WanVae::load(&cfg.vae, DType::F32, &device)
            .map_err(|e| TrainError::File(format!("vae {}: {e}", cfg.vae.display())))?,
    );
    check_shape_fits(&cfg.shape, &vae, &cfg.vae)?;
    if !vae.has_encoder() {
        return Err(TrainError::File(format!("vae {}: has no encoder to make latents with", cfg.vae.display())));
    }
    let source = clip_source(&cfg.data)?;
    let eval_options = story_options(cfg.data.width, cfg.data.height);
    let eval_source = RenderedClips::new(eval_options, cfg.held_out.first_seed, 1_000, cfg.data.clip_frames)?;
    let eval_source = if cfg.data.whole_shots { eval_source.whole_shots() } else { eval_source };
    eprintln!(
        "encoding {} training and {} held-out clips with {}",
        cfg.pool_clips,
        cfg.held_out.clips,
        cfg.vae.display()
    );
    // The student is loaded (and checked) before any encoding, so a bad path fails at once.
    let student = match &cfg.student {
        Some(st) => {
            let model = storyreel_engine::StoryModel::load(&st.model, &device)
                .map_err(|e| TrainError::File(format!("student {}: {e}", st.model.display())))?;
            check_shape_fits(&cfg.shape, &model.vae, &st.model)?;
            Some((st, model))
        }
        None => None,
    };
    let mut pool = encode_pool(&vae, source.as_ref(), cfg.pool_clips, cfg.target, false, cfg.train.progress)?;
    let held = encode_pool(&vae, &eval_source, cfg.held_out.clips, cfg.target, true, false)?;
    let (mut student_pool, held_student) = match student {
        Some((st, model)) => {
            eprintln!(
                "generating {} + {} held-out stories with the student {}",
                st.stories,
                st.held_out_stories,
                st.model.display()
            );
            let train = generate_student_shots(&model, st.first_seed, st.stories, cfg.train.progress)?;
            let held =
                generate_student_shots(&model, st.first_seed + st.stories, st.held_out_stories, cfg.train.progress)?;
            (student_pairs(train)?, student_pairs(held)?)
        }
        None => (Vec::new(), Vec::new()),
    };
    let student_count = student_pool.len();
    pool.append(&mut student_pool);
    let vae_psnr_pixels = held
        .iter()
        .filter_map(|p| p.vae.as_ref().map(|v| (v - &p.pixels).and_then(|d| d.sqr()?.mean_all()?.to_scalar::<f32>())))
        .map(|m| m.map(|m| psnr_from_mse(m as f64)))
        .sum::<candle_core::Result<f64>>()?
        / held.len() as f64;
    let vae_psnr_by_latent = psnr_by_latent(&(vae.clone() as Arc<dyn VideoCodec>), &held)?;
    let vae_boundary_jump = boundary_jump(&(vae.clone() as Arc<dyn VideoCodec>), &held)?;
    let frames_boundary_jump = frames_jump(&held)?;

    let varmap = VarMap::new();
    decoder_vars(&cfg.shape, &varmap, cfg.init_seed)?;
    if let Some(from) = &cfg.init_from {
        load_initial_weights(&cfg.shape, &varmap, from)?;
    }
    let parameters = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    // Initial weights, scoring and paths may change on a resume; the data and loss may not.
    let settings = learning_settings(
        cfg,
        &[
            "train",
            "steps",
            "vae",
            "init_seed",
            "init_from",
            "held_out",
            "data.dataset",
            "student.model",
            "student.held_out_stories",
        ],
    )?;
    let (mut trainer, mut eval_log) = trainer_with_held_out_log(&varmap, &cfg.train, cfg.steps, settings)?;
    let out_dir = cfg.train.out_dir.clone();
    let accumulate = cfg.train.accumulate as u64;
    let mut curve = Vec::new();
    let mut write_score = |s: &TinyDecoderScore| -> Result<()> {
        let line = serde_json::to_string(s).unwrap_or_default();
        writeln!(eval_log, "{line}").map_err(|e| TrainError::File(format!("held_out.jsonl: {e}")))
    };
    if cfg.init_from.is_some() && trainer.step_count() == 0 {
        // Where the starting decoder stands, for comparison with what training makes of it.
        let s = score(0, &Arc::new(decoder_from_vars(&cfg.shape, &varmap)?), &held, &held_student)?;
        write_score(&s)?;
        curve.push(s);
    }
    while trainer.step_count() < cfg.steps {
        let step = trainer.step_count();
        let decoder = decoder_from_vars(&cfg.shape, &varmap)?;
        trainer.step(|micro| {
            let index = step * accumulate + micro as u64;
            let pick = (mix64(cfg.train.seed ^ mix64(index)) % pool.len() as u64) as usize;
            let (loss, psnr) = pair_loss(&decoder, &pool[pick], cfg.temporal_weight)?;
            Ok((loss, vec![("psnr".into(), psnr)]))
        })?;
        let done = trainer.step_count();
        if done % cfg.held_out.every == 0 || done == cfg.steps {
            let s = score(done, &Arc::new(decoder_from_vars(&cfg.shape, &varmap)?), &held, &held_student)?;
            write_score(&s)?;
            curve.push(s);
        }
    }
    trainer.finish();
    let ema_decay = trainer.load_export_weights(&varmap)?;

    // The saved decoder holds plain copies (no graph), so its fast kernels apply.
    let tensors = decoder_from_vars(&cfg.shape, &varmap)?
        .tensors()?
        .into_iter()
        .map(|(k, t)| Ok((k, t.detach().copy()?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    let model = Arc::new(TinyVae::from_tensors(&cfg.shape, &tensors, DType::F32, &device)?);
    // The curve scored the step's own weights; an exported EMA is scored again.
    let last = match curve.last() {
        Some(s) if s.step == trainer.step_count() && ema_decay.is_none() => s.clone(),
        _ => score(trainer.step_count(), &model, &held, &held_student)?,
    };
    let tiny_codec: Arc<dyn VideoCodec> = model.clone();
    let vae_codec: Arc<dyn VideoCodec> = vae.clone();
    let tiny_frames_per_s = decode_rate(&tiny_codec, &held)?;
    let vae_frames_per_s = decode_rate(&vae_codec, &held)?;
    let model_dir = out_dir.join("model");
    std::fs::create_dir_all(&model_dir).map_err(|e| TrainError::File(format!("{}: {e}", model_dir.display())))?;
    model.save(&model_dir.join(TINY_DECODER_FILE))?;
    let report = TinyDecoderStageReport {
        steps: trainer.step_count(),
        target: cfg.target,
        held_out: last,
        student_pairs: student_count,
        vae_psnr_pixels,
        vae_psnr_by_latent,
        vae_boundary_jump,
        frames_boundary_jump,
        curve,
        tiny_frames_per_s,
        vae_frames_per_s,
        wall_seconds: started.elapsed().as_secs_f64(),
        parameters,
        ema_decay,
        model_dir: model_dir.clone(),
    };
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(model_dir.join("training.json"), text + "\n")
        .map_err(|e| TrainError::File(format!("{}: {e}", model_dir.join("training.json").display())))?;
    Ok(report)
}

/// The weights file a trained tiny decoder is written to (beside its shape file).
pub const TINY_DECODER_FILE: &str = "tiny_vae.safetensors";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::Trainer;
    use storyreel_nn::vae::VaeConfig;

    fn toy_vae() -> Arc<WanVae> {
        let cfg = VaeConfig {
            z_dim: 8,
            base_dim: 8,
            dim_mult: vec![1, 2, 2],
            ..crate::stage_vae::ToyVaeShape::default().config()
        };
        Arc::new(WanVae::random(&cfg, true, 3, DType::F32, &Device::Cpu).unwrap())
    }

    fn small_shape() -> TinyVaeConfig {
        TinyVaeConfig { decoder_widths: vec![16, 8, 8], mem_blocks: 1, encoder_width: 8, ..toy_decoder_shape() }
    }

    fn pool(vae: &Arc<WanVae>, target: DecoderTarget) -> Vec<DecoderPair> {
        let options = story_options(32, 32);
        let source = RenderedClips::new(options, 0, 10, 5).unwrap();
        encode_pool(vae, &source, 2, target, true, false).unwrap()
    }

    /// A few optimisation steps on one clip lower its loss: gradients reach the weights through
    /// the same fused decoder that inference runs.
    #[test]
    fn a_few_steps_reduce_the_loss_on_a_fixed_clip() {
        let vae = toy_vae();
        let pairs = pool(&vae, DecoderTarget::Vae);
        assert_eq!(pairs[0].latents.dims(), [2, 8, 8, 8]);
        assert_eq!(pairs[0].target.dims(), [5, 3, 32, 32]);
        let shape = small_shape();
        let varmap = VarMap::new();
        decoder_vars(&shape, &varmap, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut train = TinyDecoderStageConfig::default().train;
        train.out_dir = dir.path().to_path_buf();
        train.accumulate = 1;
        train.progress = false;
        train.schedule = crate::schedule::LrSchedule { base_lr: 3e-3, ..Default::default() };
        let mut trainer = Trainer::new(&varmap, train).unwrap();
        let loss_now = || pair_loss(&decoder_from_vars(&shape, &varmap).unwrap(), &pairs[0], 1.0).unwrap().0;
        let first = loss_now().to_scalar::<f32>().unwrap();
        for _ in 0..15 {
            let decoder = decoder_from_vars(&shape, &varmap).unwrap();
            trainer.step(|_| Ok((pair_loss(&decoder, &pairs[0], 1.0)?.0, Vec::new()))).unwrap();
        }
        let last = loss_now().to_scalar::<f32>().unwrap();
        assert!(last < 0.8 * first, "loss {first} -> {last}");
    }

    /// The VAE target is the VAE decoder's output; the pixel target is the clip itself.
    #[test]
    fn targets_are_what_they_say() {
        let vae = toy_vae();
        for target in [DecoderTarget::Pixels, DecoderTarget::Vae] {
            let p = &pool(&vae, target)[0];
            let want = match target {
                DecoderTarget::Pixels => p.pixels.clone(),
                DecoderTarget::Vae => p.vae.clone().unwrap(),
            };
            let d = (p.target.affine(2.0, -1.0).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        }
    }

    /// Frames that step by 1 between every pair score a jump of 1; frames that also jump by 3
    /// where each latent begins score 4; the first frame's own latent is left out.
    #[test]
    fn boundary_jump_sees_steps_between_latents() {
        let frames = |jump: f32| {
            let mut level = 0f32;
            let values: Vec<f32> = (0..17)
                .map(|i| {
                    if i > 0 {
                        level += if i >= 5 && (i - 1) % 4 == 0 { 1.0 + jump } else { 1.0 };
                    }
                    level / 100.0
                })
                .collect();
            Tensor::from_vec(values, (17, 1, 1, 1), &Device::Cpu).unwrap().repeat((1, 3, 2, 2)).unwrap()
        };
        for (jump, want) in [(0.0, 1.0), (3.0, 4.0)] {
            let mut sums = JumpSums::default();
            sums.add(&frames(jump)).unwrap();
            assert!((sums.ratio() - want).abs() < 1e-4, "jump {jump}: {}", sums.ratio());
        }
    }

    /// The temporal term adds to the loss only where the decoder's change between frames differs
    /// from the target's.
    #[test]
    fn the_temporal_term_costs_only_wrong_changes() {
        let vae = toy_vae();
        let pairs = pool(&vae, DecoderTarget::Vae);
        let shape = small_shape();
        let varmap = VarMap::new();
        decoder_vars(&shape, &varmap, 1).unwrap();
        let decoder = decoder_from_vars(&shape, &varmap).unwrap();
        let plain = pair_loss(&decoder, &pairs[0], 0.0).unwrap().0.to_scalar::<f32>().unwrap();
        let with = pair_loss(&decoder, &pairs[0], 1.0).unwrap().0.to_scalar::<f32>().unwrap();
        let y = decode_for_loss(&decoder, &pairs[0]).unwrap();
        let d = (&y - &pairs[0].target).unwrap();
        let f = d.dim(0).unwrap();
        let change = (d.narrow(0, 1, f - 1).unwrap() - d.narrow(0, 0, f - 1).unwrap()).unwrap();
        let want = change.abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(want > 0.0 && ((with - plain) - want).abs() < 1e-5, "{plain} {with} {want}");
    }

    /// Bad `student` and `temporal_weight` settings are refused by name, and a student folder
    /// that is not there is named before any clip is encoded.
    #[test]
    fn bad_student_settings_are_named() {
        let mut cfg = TinyDecoderStageConfig {
            student: Some(StudentShots { stories: 0, ..StudentShots::default() }),
            ..TinyDecoderStageConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("student") && e.contains("0 stories"), "{e}");
        cfg.student =
            Some(StudentShots { first_seed: storyreel_world::BENCHMARK_SEED_BASE, ..StudentShots::default() });
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("benchmark"), "{e}");
        cfg.student = None;
        cfg.temporal_weight = -1.0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("temporal_weight"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/toy-student");
        let mut cfg = TinyDecoderStageConfig { vae: shipped.join("vae"), ..TinyDecoderStageConfig::default() };
        cfg.train.out_dir = dir.path().to_path_buf();
        cfg.student = Some(StudentShots { model: dir.path().join("no-such-student"), ..StudentShots::default() });
        let e = run_tiny_decoder_stage(&cfg).unwrap_err().to_string();
        assert!(e.contains("no-such-student"), "{e}");
    }

    #[test]
    fn a_shape_that_does_not_read_the_vae_is_named() {
        let vae = toy_vae();
        let mut shape = small_shape();
        shape.latent_channels = 16;
        let e = check_shape_fits(&shape, &vae, Path::new("v")).unwrap_err().to_string();
        assert!(e.contains("16 latent channels") && e.contains("8 channels"), "{e}");
        let mut shape = small_shape();
        shape.time_upscale = vec![true, true, false];
        shape.decoder_widths.push(8);
        let e = check_shape_fits(&shape, &vae, Path::new("v")).unwrap_err().to_string();
        assert!(e.contains("×8 space") && e.contains("×4 space"), "{e}");
    }
}

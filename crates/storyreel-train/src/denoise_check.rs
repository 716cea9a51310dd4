//! From which noise level does a teacher keep a shot's shapes? On held-out stories, each
//! story's last shot (ground truth, with its own context and captions) is noised to a few
//! timesteps and the teacher denoises it twice: in one step (its x0 prediction) and by running
//! the card's sampler down from there (SDEdit). Both are scored against the clean shot, in all
//! and in *structure*: the share of the shot's spatial layout (each frame's latent minus its
//! per-channel mean, so a flat picture of the right colours scores 0) that comes back. A model
//! that draws its characters keeps the structure from high noise; one that draws only a place's
//! colours loses it as soon as the noise hides it, however well its loss falls.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use storyreel_engine::pixels::to_rgb_frames;
use storyreel_engine::shot_plan::ShotPlan;
use storyreel_engine::teacher::{denoise_shot, TeacherInputs};
use storyreel_engine::teacher_story::{caption_embeddings, unconditional_caption};
use storyreel_engine::{EulerSampler, ModelKind, NoiseSource, SeededNoise, StoryModel};
use storyreel_media::{ContactSheet, ContactSheetOptions, RgbFrame};
use storyreel_nn::codec::VideoCodec;

use crate::error::{Result, TrainError};
use crate::held_out::{encode_held_out, validate_check_options};
use crate::log::Progress;

/// Timesteps checked by default: from where the noise hides everything to where it hides
/// only fine detail.
pub const DEFAULT_TIMESTEPS: [f32; 6] = [990.0, 900.0, 750.0, 500.0, 250.0, 100.0];

/// What to check.
#[derive(Debug, Clone)]
pub struct DenoiseCheckOptions {
    /// First story seed.
    pub first_seed: u64,
    /// Stories.
    pub stories: u64,
    /// Timesteps in (0, 1000].
    pub timesteps: Vec<f32>,
    /// Show a progress bar.
    pub progress: bool,
    /// Write a picture here: one row per story (up to `sheet_stories`), the ground truth's
    /// middle frame, then the resampled shot's middle frame from each timestep.
    pub sheet: Option<PathBuf>,
    /// Stories in the picture.
    pub sheet_stories: usize,
    /// Guidance scale (`None`: the card's; 1 turns CFG off).
    pub guidance: Option<f32>,
}

impl Default for DenoiseCheckOptions {
    fn default() -> Self {
        Self {
            first_seed: crate::caption_check::DEFAULT_FIRST_SEED,
            stories: 16,
            timesteps: DEFAULT_TIMESTEPS.to_vec(),
            progress: true,
            sheet: None,
            sheet_stories: 6,
            guidance: None,
        }
    }
}

/// Scores at one timestep, averaged over the stories.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DenoiseCheckRow {
    /// Timestep the shot was noised to.
    pub t: f32,
    /// Latent MSE of the one-step x0 prediction against the clean shot.
    pub one_step_error: f64,
    /// Latent MSE of the shot resampled from this timestep with the card's sampler.
    pub resampled_error: f64,
    /// Share of the clean shot's structure in the one-step prediction.
    pub one_step_structure: f64,
    /// Share of the clean shot's structure in the resampled shot.
    pub resampled_structure: f64,
    /// Sampler steps run from this timestep.
    pub steps: usize,
}

/// The check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DenoiseCheckReport {
    /// Stories measured.
    pub stories: u64,
    /// Latent MSE of a flat shot (each frame its own per-channel mean): what a model that
    /// draws only the right colours scores at best.
    pub flat_error: f64,
    /// Guidance scale used (context guidance is the card's).
    pub guidance: f32,
    /// One row per timestep.
    pub rows: Vec<DenoiseCheckRow>,
}

/// Runs the check on `model`'s held-out stories (see the module docs).
pub fn denoise_check(model: &StoryModel, options: &DenoiseCheckOptions) -> Result<DenoiseCheckReport> {
    validate_check_options(options.first_seed, options.stories, &options.timesteps)?;
    if let Some(dir) = options.sheet.as_ref().and_then(|p| p.parent()).filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(TrainError::File(format!("the picture's folder {} does not exist", dir.display())));
        }
    }
    if model.card.kind != ModelKind::Teacher {
        return Err(TrainError::File(
            "the denoise check runs a teacher's sampler; this model's card says it is a streaming student".into(),
        ));
    }
    let device = Device::Cpu;
    let bar = Progress::new(options.stories * 2, 0, options.progress);
    let stories = encode_held_out(model, options.first_seed, options.stories, &bar)?;
    let card = &model.card;
    let guidance = options.guidance.unwrap_or(card.sampler.guidance);
    let sampler = EulerSampler::new(card.sampler.steps, card.sampler.shift, guidance)
        .and_then(|s| s.with_context_guidance(card.sampler.context_guidance))?;
    let uncond = unconditional_caption(&model.dit, &device)?;
    let k_rows = options.timesteps.len();
    let mut sums = vec![[0f64; 4]; k_rows];
    let mut flat_sum = 0.0;
    let mut sheet_rows: Vec<(String, Vec<RgbFrame>)> = Vec::new();
    for (i, story) in stories.iter().enumerate() {
        let k = story.shots.len() - 1;
        let x0 = &story.shots[k];
        let (c, h, w) = (x0.dim(1)?, x0.dim(2)?, x0.dim(3)?);
        let (context, flags) = match &story.contexts[k] {
            Some((z, f)) => (z.clone(), f.clone()),
            None => (Tensor::zeros((card.context_frames, c, h, w), DType::F32, &device)?, vec![0; card.context_frames]),
        };
        let plan = ShotPlan::new(k, &flags, k + 1)?;
        let captions =
            model.dit.embed_captions(&caption_embeddings(&model.text, &story.global, &story.captions[..=k])?)?;
        let inputs = TeacherInputs {
            plan: &plan,
            captions: &captions,
            uncond: Some(&uncond),
            context: &context,
            clean_context: card.clean_context,
            context_channels: card.context_channels,
        };
        let x0_structure = centred(x0)?;
        // A flat shot misses exactly the structure, so its error is the structure's power.
        let structure_power = mean_square(&x0_structure)?;
        flat_sum += structure_power;
        let structure_var = structure_power.max(1e-12);
        let eps = SeededNoise::new(options.first_seed + i as u64).noise(k, 0, 0, x0.dims(), &device)?;
        let mut resampled_frames = Vec::new();
        for (row, &t) in options.timesteps.iter().enumerate() {
            let sigma = t / 1000.0;
            let x_t = ((x0 * (1.0 - sigma) as f64)? + (&eps * sigma as f64)?)?;
            let (one_step, x) = denoise_shot(&model.dit, &inputs, &sampler, &x_t, sigma)?;
            let structure = |pred: &Tensor| -> Result<f64> {
                Ok(1.0 - mean_square(&(centred(pred)? - &x0_structure)?)? / structure_var)
            };
            let s = &mut sums[row];
            s[0] += mean_square(&(&one_step - x0)?)?;
            s[1] += mean_square(&(&x - x0)?)?;
            s[2] += structure(&one_step)?;
            s[3] += structure(&x)?;
            if i < options.sheet_stories && options.sheet.is_some() {
                resampled_frames.push(x);
            }
        }
        if i < options.sheet_stories && options.sheet.is_some() {
            let mut row = vec![middle_frame(model, x0)?];
            for x in &resampled_frames {
                row.push(middle_frame(model, x)?);
            }
            sheet_rows.push((story.captions[k].clone(), row));
        }
        bar.update(options.stories + i as u64 + 1, f64::NAN);
    }
    bar.finish();
    let n = stories.len() as f64;
    let rows = options
        .timesteps
        .iter()
        .zip(&sums)
        .map(|(&t, s)| DenoiseCheckRow {
            t,
            one_step_error: s[0] / n,
            resampled_error: s[1] / n,
            one_step_structure: s[2] / n,
            resampled_structure: s[3] / n,
            steps: sampler.sigmas_from(t / 1000.0).len(),
        })
        .collect();
    if let Some(path) = &options.sheet {
        let columns: Vec<String> = options.timesteps.iter().map(|t| format!("{t:.0}")).collect();
        let mut sheet = ContactSheet::new(ContactSheetOptions {
            frames_per_row: 1 + options.timesteps.len(),
            thumb_width: Some(128),
            title: Some(format!("ground truth, then resampled from t = {}", columns.join(", "))),
            text_scale: 1,
            ..ContactSheetOptions::default()
        })
        .map_err(media)?;
        for (caption, frames) in &sheet_rows {
            sheet.add_row(caption, frames).map_err(media)?;
        }
        sheet.save(path).map_err(|e| TrainError::File(format!("writing {}: {e}", path.display())))?;
    }
    Ok(DenoiseCheckReport { stories: stories.len() as u64, flat_error: flat_sum / n, guidance, rows })
}

fn media(e: storyreel_media::MediaError) -> TrainError {
    TrainError::File(format!("the check's picture: {e}"))
}

/// Each frame's latent minus its per-channel spatial mean: the layout without the colours.
fn centred(z: &Tensor) -> Result<Tensor> {
    Ok(z.broadcast_sub(&z.mean_keepdim(3)?.mean_keepdim(2)?)?)
}

fn mean_square(z: &Tensor) -> Result<f64> {
    Ok(z.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
}

/// The middle pixel frame of a shot's latents, decoded with the model's VAE.
fn middle_frame(model: &StoryModel, z: &Tensor) -> Result<RgbFrame> {
    let frames = model.vae.clone().decode(z)?;
    let mid = frames.dim(0)? / 2;
    to_rgb_frames(&frames.narrow(0, mid, 1)?)?.pop().ok_or_else(|| TrainError::File("the VAE decoded no frames".into()))
}

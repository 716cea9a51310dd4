//! Does a teacher read its captions? On held-out stories, the flow loss of each story's last
//! shot is measured at a few timesteps three ways, with the same noise and context: with the
//! story's own prompts, with another story's prompts, and unconditionally (the zero caption of
//! CFG). A model that follows text has a clearly lower loss with its own prompts at high noise,
//! where nothing but the caption says what to draw; one that ignores text scores all three
//! alike. A falling training loss cannot show this, so it is the first check of a new recipe.

use candle_core::{Device, Tensor};
use serde::Serialize;
use storyreel_engine::shot_plan::ShotPlan;
use storyreel_engine::teacher::{teacher_flow, TeacherInputs};
use storyreel_engine::teacher_story::{caption_embeddings, unconditional_caption};
use storyreel_engine::{FlowBranch, NoiseSource, SeededNoise, StoryModel};

use crate::error::Result;
use crate::held_out::{encode_held_out, validate_check_options};
use crate::log::Progress;

/// Timesteps checked by default: from pure noise down to the middle of the schedule.
pub const DEFAULT_TIMESTEPS: [f32; 5] = [990.0, 950.0, 900.0, 750.0, 500.0];

/// First story seed checked by default (the toy VAE's held-out range, never trained on).
pub const DEFAULT_FIRST_SEED: u64 = 8_000_000_000;

/// What to check.
#[derive(Debug, Clone)]
pub struct CaptionCheckOptions {
    /// First story seed.
    pub first_seed: u64,
    /// Stories (at least 2: each is also the "other" prompts of its neighbour).
    pub stories: u64,
    /// Timesteps in (0, 1000].
    pub timesteps: Vec<f32>,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for CaptionCheckOptions {
    fn default() -> Self {
        Self { first_seed: DEFAULT_FIRST_SEED, stories: 16, timesteps: DEFAULT_TIMESTEPS.to_vec(), progress: true }
    }
}

/// Mean flow MSE at one timestep under the three prompts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionCheckRow {
    /// Timestep.
    pub t: f32,
    /// With the story's own prompts.
    pub own: f64,
    /// With the next story's prompts.
    pub other: f64,
    /// With the zero caption.
    pub unconditional: f64,
}

/// The check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionCheckReport {
    /// Stories measured.
    pub stories: u64,
    /// One row per timestep.
    pub rows: Vec<CaptionCheckRow>,
    /// `1 − own / other` at the highest timestep: the share of the loss the right caption
    /// removes there (≈ 0 for a model that ignores its text).
    pub caption_gain: f64,
}

/// Measures how much `model` relies on its captions (see the module docs).
pub fn caption_check(model: &StoryModel, options: &CaptionCheckOptions) -> Result<CaptionCheckReport> {
    validate_check_options(options.first_seed, options.stories, &options.timesteps)?;
    let device = Device::Cpu;
    let card = &model.card;
    let n_context = card.context_frames;
    let bar = Progress::new(options.stories * 2, 0, options.progress);
    let stories = encode_held_out(model, options.first_seed, options.stories, &bar)?;
    let uncond = unconditional_caption(&model.dit, &device)?;
    let k_rows = options.timesteps.len();
    let (mut own, mut other, mut none) = (vec![0f64; k_rows], vec![0f64; k_rows], vec![0f64; k_rows]);
    for (i, story) in stories.iter().enumerate() {
        let k = story.shots.len() - 1;
        let x0 = &story.shots[k];
        let (c, h, w) = (x0.dim(1)?, x0.dim(2)?, x0.dim(3)?);
        let (context, flags) = match (&story.contexts[k], card.uses_context) {
            (Some((z, f)), true) => (z.clone(), f.clone()),
            _ => (Tensor::zeros((n_context, c, h, w), candle_core::DType::F32, &device)?, vec![0; n_context]),
        };
        let plan = ShotPlan::new(k, &flags, k + 1)?;
        let neighbour = &stories[(i + 1) % stories.len()];
        let borrowed: Vec<&str> = (0..=k).map(|j| neighbour.captions[j % neighbour.captions.len()].as_str()).collect();
        let own_captions =
            model.dit.embed_captions(&caption_embeddings(&model.text, &story.global, &story.captions[..=k])?)?;
        let other_captions =
            model.dit.embed_captions(&caption_embeddings(&model.text, &neighbour.global, &borrowed)?)?;
        let eps = SeededNoise::new(options.first_seed + i as u64).noise(k, 0, 0, x0.dims(), &device)?;
        let target = (&eps - x0)?;
        for (row, &t) in options.timesteps.iter().enumerate() {
            let sigma = (t / 1000.0) as f64;
            let x_t = ((x0 * (1.0 - sigma))? + (&eps * sigma)?)?;
            let mse = |captions, conditional| -> Result<f64> {
                let inputs = TeacherInputs {
                    plan: &plan,
                    captions,
                    uncond: Some(&uncond),
                    context: &context,
                    clean_context: card.clean_context,
                    context_channels: card.context_channels,
                };
                let v = teacher_flow(&model.dit, &inputs, &x_t, t, conditional)?;
                Ok((v - &target)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
            };
            own[row] += mse(&own_captions, FlowBranch::Conditional)?;
            other[row] += mse(&other_captions, FlowBranch::Conditional)?;
            none[row] += mse(&uncond, FlowBranch::Unconditional)?;
        }
        bar.update(options.stories + i as u64 + 1, f64::NAN);
    }
    bar.finish();
    let n = stories.len() as f64;
    let rows: Vec<CaptionCheckRow> = options
        .timesteps
        .iter()
        .enumerate()
        .map(|(r, &t)| CaptionCheckRow { t, own: own[r] / n, other: other[r] / n, unconditional: none[r] / n })
        .collect();
    let top = rows.iter().max_by(|a, b| a.t.total_cmp(&b.t)).expect("at least one timestep");
    let caption_gain = 1.0 - top.own / top.other.max(1e-12);
    Ok(CaptionCheckReport { stories: options.stories, rows, caption_gain })
}

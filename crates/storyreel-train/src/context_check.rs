//! Does a teacher read its context? On held-out stories, the flow loss of each story's last
//! shot is measured at a few timesteps three ways, with the same noise and prompts: with the
//! shot's own context latents, with another story's context latents (same caption routing and
//! shot phases, other pixels), and with no context (zero latents and flags, as context dropout
//! trains). A model that copies looks from its context has a clearly lower loss with its own
//! context than with another story's, most of all at high noise where nothing in the noisy
//! target shows them; one that ignores context scores all three alike, and one that is misled by
//! it scores `own` above `none`. A training loss cannot show this, as a caption-only model lowers
//! it just as well.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use storyreel_engine::context_channels::real_frames;
use storyreel_engine::shot_plan::ShotPlan;
use storyreel_engine::teacher::{teacher_flow, TeacherInputs};
use storyreel_engine::teacher_story::{caption_embeddings, unconditional_caption};
use storyreel_engine::{FlowBranch, NoiseSource, SeededNoise, StoryModel};

use crate::error::{Result, TrainError};
use crate::held_out::{encode_held_out, validate_check_options};
use crate::log::Progress;
use crate::stage_teacher::EncodedStory;

/// Timesteps checked by default: pure noise, where only context can tell a look, down to the
/// low-noise steps where the target's own pixels show it.
pub const DEFAULT_TIMESTEPS: [f32; 5] = [990.0, 900.0, 750.0, 500.0, 250.0];

/// What to check.
#[derive(Debug, Clone)]
pub struct ContextCheckOptions {
    /// First story seed.
    pub first_seed: u64,
    /// Stories (at least 2: each lends its context to a neighbour).
    pub stories: u64,
    /// Timesteps in (0, 1000].
    pub timesteps: Vec<f32>,
    /// Show a progress bar.
    pub progress: bool,
    /// Measure with the unconditional caption (all zeros, as caption dropout trains) instead
    /// of the shot's captions, so that context is the only thing telling the place and cast:
    /// whether the context path carries anything at all, apart from the looks.
    pub without_captions: bool,
}

impl Default for ContextCheckOptions {
    fn default() -> Self {
        Self {
            first_seed: crate::caption_check::DEFAULT_FIRST_SEED,
            stories: 16,
            timesteps: DEFAULT_TIMESTEPS.to_vec(),
            progress: true,
            without_captions: false,
        }
    }
}

/// Mean flow MSE at one timestep under the three contexts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContextCheckRow {
    /// Timestep.
    pub t: f32,
    /// With the shot's own context.
    pub own: f64,
    /// With another story's context latents.
    pub other: f64,
    /// With no context.
    pub none: f64,
}

/// The check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContextCheckReport {
    /// Stories measured (those with at least two shots).
    pub stories: u64,
    /// One row per timestep.
    pub rows: Vec<ContextCheckRow>,
    /// `1 − Σ own / Σ other` over the rows: the share of the loss the right context removes
    /// (≈ 0 for a model that ignores its context, negative for one it misleads).
    pub context_gain: f64,
    /// `1 − Σ own / Σ none`: what the own context is worth against none at all.
    pub gain_over_none: f64,
    /// Measured with the unconditional caption instead of the shots' captions.
    pub without_captions: bool,
}

/// Measures how much `model` relies on its context (see the module docs).
pub fn context_check(model: &StoryModel, options: &ContextCheckOptions) -> Result<ContextCheckReport> {
    validate_check_options(options.first_seed, options.stories, &options.timesteps)?;
    if !model.card.uses_context {
        return Err(TrainError::File(
            "the model was trained without context (its card says uses_context: false); there is nothing to check"
                .into(),
        ));
    }
    let device = Device::Cpu;
    let bar = Progress::new(options.stories * 2, 0, options.progress);
    let stories = encode_held_out(model, options.first_seed, options.stories, &bar)?;
    let n_context = model.card.context_frames;
    let masks: Vec<Option<Vec<bool>>> = stories.iter().map(padding_mask).collect::<Result<_>>()?;
    let k_rows = options.timesteps.len();
    let (mut own, mut other, mut none) = (vec![0f64; k_rows], vec![0f64; k_rows], vec![0f64; k_rows]);
    let uncond = unconditional_caption(&model.dit, &device)?;
    let branch = if options.without_captions { FlowBranch::Unconditional } else { FlowBranch::Conditional };
    let mut measured = 0u64;
    for (i, story) in stories.iter().enumerate() {
        let k = story.shots.len() - 1;
        let (Some((context, flags)), Some(mask)) = (&story.contexts[k], &masks[i]) else {
            bar.update(options.stories + i as u64 + 1, f64::NAN);
            continue;
        };
        // The lender's mask is `Some`, so its last shot has context.
        let Some((borrowed, _)) =
            lender(&stories, &masks, i, mask).and_then(|j| stories[j].contexts[stories[j].shots.len() - 1].as_ref())
        else {
            bar.update(options.stories + i as u64 + 1, f64::NAN);
            continue;
        };
        let x0 = &story.shots[k];
        let (c, h, w) = (x0.dim(1)?, x0.dim(2)?, x0.dim(3)?);
        let empty = Tensor::zeros((n_context, c, h, w), DType::F32, &device)?;
        let plan = ShotPlan::new(k, flags, k + 1)?;
        let empty_plan = ShotPlan::new(k, &vec![0; n_context], k + 1)?;
        let captions =
            model.dit.embed_captions(&caption_embeddings(&model.text, &story.global, &story.captions[..=k])?)?;
        let eps = SeededNoise::new(options.first_seed + i as u64).noise(k, 0, 0, x0.dims(), &device)?;
        let target = (&eps - x0)?;
        for (row, &t) in options.timesteps.iter().enumerate() {
            let sigma = (t / 1000.0) as f64;
            let x_t = ((x0 * (1.0 - sigma))? + (&eps * sigma)?)?;
            let mse = |plan: &ShotPlan, context: &Tensor| -> Result<f64> {
                let inputs = TeacherInputs {
                    plan,
                    captions: &captions,
                    uncond: Some(&uncond),
                    context,
                    clean_context: model.card.clean_context,
                    context_channels: model.card.context_channels,
                };
                let v = teacher_flow(&model.dit, &inputs, &x_t, t, branch)?;
                Ok((v - &target)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
            };
            own[row] += mse(&plan, context)?;
            other[row] += mse(&plan, borrowed)?;
            none[row] += mse(&empty_plan, &empty)?;
        }
        measured += 1;
        bar.update(options.stories + i as u64 + 1, f64::NAN);
    }
    bar.finish();
    if measured == 0 {
        return Err(TrainError::out_of_range(
            "stories",
            options.stories,
            "enough stories that at least one has two shots and a neighbour with the same context length",
        ));
    }
    let n = measured as f64;
    let rows: Vec<ContextCheckRow> = options
        .timesteps
        .iter()
        .enumerate()
        .map(|(r, &t)| ContextCheckRow { t, own: own[r] / n, other: other[r] / n, none: none[r] / n })
        .collect();
    let sum = |f: fn(&ContextCheckRow) -> f64| rows.iter().map(f).sum::<f64>();
    let context_gain = 1.0 - sum(|r| r.own) / sum(|r| r.other).max(1e-12);
    let gain_over_none = 1.0 - sum(|r| r.own) / sum(|r| r.none).max(1e-12);
    Ok(ContextCheckReport {
        stories: measured,
        rows,
        context_gain,
        gain_over_none,
        without_captions: options.without_captions,
    })
}

/// Which of the last shot's context latents are real frames (`None` for a one-shot story).
fn padding_mask(story: &EncodedStory) -> Result<Option<Vec<bool>>> {
    let Some((z, _)) = &story.contexts[story.shots.len() - 1] else { return Ok(None) };
    Ok(Some(real_frames(z)?))
}

/// The next story after `i` whose last shot has real context frames in the same places, so that
/// swapping contexts changes their pixels and nothing else.
fn lender(stories: &[EncodedStory], masks: &[Option<Vec<bool>>], i: usize, mask: &[bool]) -> Option<usize> {
    (1..stories.len()).map(|d| (i + d) % stories.len()).find(|&j| masks[j].as_deref() == Some(mask))
}

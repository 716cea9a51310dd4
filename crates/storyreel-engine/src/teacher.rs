//! The bidirectional next-shot teacher's sampling (shotstream.md §2.1, §5.2): the context latents
//! are concatenated in front of the noisy target along frames, every frame is embedded at the
//! target's t, all frames attend to all frames, and the context outputs are discarded.

use candle_core::{DType, Tensor};
use storyreel_nn::kv_cache::CaptionCache;
use storyreel_nn::{FrameInfo, WanModel};

use crate::context_channels::{context_mean, join_channels, join_zeros};
use crate::error::{EngineError, Result};
use crate::sampler::{EulerSampler, FlowBranch};
use crate::shot_plan::ShotPlan;

/// Conditioning of one teacher shot.
pub struct TeacherInputs<'a> {
    /// Flags and routing of the context and target frames.
    pub plan: &'a ShotPlan,
    /// Captions of shots 0..k (routed per frame).
    pub captions: &'a CaptionCache,
    /// The unconditional (negative-prompt) caption, a single caption; needed when guidance ≠ 1.
    pub uncond: Option<&'a CaptionCache>,
    /// Context latents `[n, C, H, W]` (clean).
    pub context: &'a Tensor,
    /// Embed the context frames at t = 0 instead of the target's t (the model card's
    /// `clean_context`; ShotStream's teacher embeds them at the target's t).
    pub clean_context: bool,
    /// Join the mean context latent to every target frame's channels (the model card's
    /// `context_channels`; [`crate::context_channels`]).
    pub context_channels: bool,
}

/// Flow of the target frames `x` `[F, C, H, W]` at timestep `t` under the teacher, with the
/// conditioning of `branch`. Dropped context is what training's context dropout shows: zero
/// latents flagged 0.
pub fn teacher_flow(
    model: &WanModel,
    inputs: &TeacherInputs<'_>,
    x: &Tensor,
    t: f32,
    branch: FlowBranch,
) -> Result<Tensor> {
    let n = inputs.context.dim(0)?;
    let f = x.dim(0)?;
    let x = x.to_dtype(DType::F32)?;
    let (context, plan) = match branch {
        FlowBranch::WithoutContext => (inputs.context.zeros_like()?, inputs.plan.without_context()),
        _ => (inputs.context.to_dtype(DType::F32)?, inputs.plan.clone()),
    };
    let full = teacher_input(&context, &x, inputs.context_channels)?;
    let mut frames = teacher_frames(&plan, f, t, inputs.clean_context);
    let captions = if branch == FlowBranch::Unconditional {
        for fr in frames.iter_mut() {
            fr.caption = 0;
        }
        inputs.uncond.ok_or_else(|| EngineError::Input("guidance needs an unconditional caption".into()))?
    } else {
        inputs.captions
    };
    let v = model.forward_bidirectional(&full, &frames, captions)?;
    Ok(v.narrow(0, n, f)?)
}

/// The DiT input of one teacher forward: the context latents in front of the target `x`, with
/// the context channels joined when `context_channels` (zeros behind the context frames, the
/// mean of the real context frames behind the target's).
pub fn teacher_input(context: &Tensor, x: &Tensor, context_channels: bool) -> Result<Tensor> {
    let context = context.to_dtype(DType::F32)?;
    if !context_channels {
        return Ok(Tensor::cat(&[context, x.clone()], 0)?);
    }
    let mean = context_mean(&context)?;
    Ok(Tensor::cat(&[join_zeros(&context)?, join_channels(x, &mean)?], 0)?)
}

/// Whether the inputs carry any context (the first shot, and a shot whose context was dropped,
/// have only zero latents, so dropping them changes nothing).
fn has_context(inputs: &TeacherInputs<'_>) -> Result<bool> {
    if inputs.context.dim(0)? == 0 {
        return Ok(false);
    }
    Ok(inputs.context.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()? > 0.0)
}

/// The frames of one teacher forward: the plan's context frames, then `f` target frames at the
/// target's `t`. ShotStream's teacher embeds its clean context at the target's `t` too, so at
/// the top of the schedule the context tokens get the modulation learned for pure noise;
/// `clean_context` marks them as clean (t = 0), the way the causal student sees its context.
pub fn teacher_frames(plan: &ShotPlan, f: usize, t: f32, clean_context: bool) -> Vec<FrameInfo> {
    let mut frames: Vec<FrameInfo> = plan.context_frames();
    for fr in frames.iter_mut() {
        fr.t = if clean_context { 0.0 } else { t };
    }
    frames.extend(plan.shot_frames(0, f, t));
    frames
}

/// Samples a shot with the teacher from `noise` `[F, C, H, W]`; `on_step(i, x)` sees each step's
/// input (ODE pairs save steps 0, 13, 25, 37 of the 50-step grid). Context guidance is skipped
/// for a shot without context, where it would change nothing.
pub fn sample_shot(
    model: &WanModel,
    inputs: &TeacherInputs<'_>,
    sampler: &EulerSampler,
    noise: Tensor,
    on_step: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Tensor> {
    let mut flow = |x: &Tensor, t: f32, branch: FlowBranch| teacher_flow(model, inputs, x, t, branch);
    shot_sampler(sampler, inputs)?.sample(noise, &mut flow, on_step, cancelled)
}

/// Denoises `x_t`, a shot at noise level `sigma`, with the teacher: its guided x0 prediction
/// in one step, and the shot `sampler` draws when run down from there (SDEdit), with the same
/// guidance rules as [`sample_shot`].
pub fn denoise_shot(
    model: &WanModel,
    inputs: &TeacherInputs<'_>,
    sampler: &EulerSampler,
    x_t: &Tensor,
    sigma: f32,
) -> Result<(Tensor, Tensor)> {
    let mut flow = |x: &Tensor, t: f32, branch: FlowBranch| teacher_flow(model, inputs, x, t, branch);
    let sampler = shot_sampler(sampler, inputs)?;
    let v = sampler.velocity(x_t, sigma * 1000.0, &mut flow)?;
    let one_step = (x_t - (v * sigma as f64)?)?;
    let resampled = sampler.sample_from(x_t.clone(), sigma, &mut flow, &|| false)?;
    Ok((one_step, resampled))
}

/// `sampler`, without context guidance when the shot has no context to guide by.
fn shot_sampler(sampler: &EulerSampler, inputs: &TeacherInputs<'_>) -> Result<EulerSampler> {
    if sampler.context_guidance() > 0.0 && !has_context(inputs)? {
        return sampler.clone().with_context_guidance(0.0);
    }
    Ok(sampler.clone())
}

//! `storyreel bench teacher-step`: the forward and backward pass of one teacher training sample,
//! at the teacher stage's shape (random weights, random latents).
//!
//! Training time on this machine is what limits every trained model, so this is the number to
//! watch when the training kernels change. `--plain-ops` times candle's own ops instead of the
//! fused training kernels (`storyreel_nn::fused_grad`) for an A/B in one binary; inputs and
//! weights are seeded, so the loss and gradient norm printed by both must agree.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use storyreel_engine::teacher::{teacher_flow, TeacherInputs};
use storyreel_engine::{FlowBranch, NoiseSource, SeededNoise, ShotPlan};
use storyreel_train::stage_teacher::{TeacherNetworks, TeacherStageConfig};

use crate::bench::peak_rss_mb;

/// Flags of `bench teacher-step`.
#[derive(clap::Args)]
pub struct TeacherStepArgs {
    /// Latent frames of the target shot (a 25-frame shot is 7).
    #[arg(long, default_value_t = 7)]
    pub target_frames: usize,
    /// Latent channels (the toy VAE's).
    #[arg(long, default_value_t = 8)]
    pub channels: usize,
    /// Latent size HxW (the toy VAE's at 64×64 pixels).
    #[arg(long, default_value = "16x16")]
    pub latent: String,
    /// Latent pixels per DiT token along height and width (the teacher config's `dit.patch`).
    #[arg(long, default_value_t = 2)]
    pub patch: usize,
    /// Time candle's plain ops instead of the fused training kernels.
    #[arg(long)]
    pub plain_ops: bool,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The fourth shot of a story, with two context frames from each earlier shot.
const CONTEXT_FLAGS: [i64; 6] = [0, 0, 1, 1, 2, 2];
/// Latent channels accepted (Wan's VAE has 16).
const MAX_CHANNELS: usize = 64;
/// Tokens accepted: at 8,192 the attention scores of one layer take 1 GiB.
const MAX_TOKENS: usize = 8192;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Runs the benchmark.
pub fn run(a: &TeacherStepArgs) -> Result<()> {
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    if a.target_frames == 0 || a.target_frames > 64 {
        bail!("--target-frames must be in 1..=64, got {}", a.target_frames);
    }
    if a.channels == 0 || a.channels > MAX_CHANNELS {
        bail!("--channels must be in 1..={MAX_CHANNELS}, got {}", a.channels);
    }
    if !(1..=4).contains(&a.patch) {
        bail!("--patch must be in 1..=4, got {}", a.patch);
    }
    let (h, w) = crate::testcase::parse_size(&a.latent).context("--latent")?;
    if !h.is_multiple_of(a.patch) || !w.is_multiple_of(a.patch) {
        bail!("--latent {} is not a multiple of --patch {}", a.latent, a.patch);
    }
    let tokens = (CONTEXT_FLAGS.len() + a.target_frames) * (h / a.patch) * (w / a.patch);
    if tokens > MAX_TOKENS {
        bail!(
            "--latent {} with --target-frames {} makes {tokens} tokens; at most {MAX_TOKENS} fit in memory \
             (the scores of one attention layer grow with the square)",
            a.latent,
            a.target_frames
        );
    }
    storyreel_nn::fused_grad::set_enabled(!a.plain_ops);
    let device = Device::Cpu;
    let mut cfg = TeacherStageConfig::default();
    cfg.dit.patch = a.patch;
    let varmap = VarMap::new();
    let nets = TeacherNetworks::trainable(&cfg, a.channels, &varmap, &device).context("building the teacher")?;
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut seeded = SeededNoise::new(7);
    let mut draw = |i: usize, shape: &[usize]| seeded.noise(i, 0, 0, shape, &device);
    // The head starts at zero, which would stop every gradient short of it; give it small
    // weights so the backward pass reaches every layer, as it does after the first steps.
    for (name, var) in varmap.data().lock().map_err(|_| anyhow::anyhow!("variable map poisoned"))?.iter() {
        if name.contains("head.head.weight") {
            var.set(&(draw(99, var.dims())? * 0.02)?)?;
        }
    }

    let context_flags = CONTEXT_FLAGS;
    let plan = ShotPlan::new(3, &context_flags, 4)?;
    let text = (cfg.text.text_len, cfg.text.dim);
    let embeddings = draw(0, &[4, text.0, text.1])?;
    let context = draw(1, &[context_flags.len(), a.channels, h, w])?;
    let x_t = draw(2, &[a.target_frames, a.channels, h, w])?;
    let target = draw(3, &[a.target_frames, a.channels, h, w])?;

    let vars = varmap.all_vars();
    let mut check = (0f32, 0f64);
    let mut forward_ms = Vec::new();
    let mut backward_ms = Vec::new();
    for i in 0..a.warmup + a.iters {
        let started = Instant::now();
        let captions = nets.dit.embed_captions(&embeddings)?;
        let inputs = TeacherInputs {
            plan: &plan,
            captions: &captions,
            uncond: None,
            context: &context,
            clean_context: false,
            context_channels: false,
        };
        let v = teacher_flow(&nets.dit, &inputs, &x_t, 800.0, FlowBranch::Conditional)?;
        let loss = (v - &target)?.sqr()?.mean_all()?;
        let loss_value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let forward = started.elapsed().as_secs_f64() * 1e3;
        let grads = loss.backward()?;
        let total = started.elapsed().as_secs_f64() * 1e3;
        let grad_norm = storyreel_train::grad_norm(&grads, &vars)?;
        if !(loss_value.is_finite() && grad_norm.is_finite() && grad_norm > 0.0) {
            bail!("the benchmark step produced no usable gradient (loss {loss_value}, gradient norm {grad_norm})");
        }
        check = (loss_value, grad_norm);
        drop(grads);
        if i >= a.warmup {
            forward_ms.push(forward);
            backward_ms.push(total - forward);
        }
    }
    let totals: Vec<f64> = forward_ms.iter().zip(&backward_ms).map(|(f, b)| f + b).collect();
    let (fwd, bwd, total) = (median(forward_ms), median(backward_ms), median(totals));
    let kernels = if a.plain_ops { "candle ops" } else { "fused training kernels" };
    let threads = rayon::current_num_threads();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "teacher-step", "kernels": kernels, "tokens": tokens, "parameters": params,
                "threads": threads, "forward_ms": fwd, "backward_ms": bwd, "step_ms": total,
                "iters": a.iters, "peak_rss_mb": peak_rss_mb(), "loss": check.0, "grad_norm": check.1,
            })
        );
    } else {
        println!(
            "teacher step ({kernels}, {tokens} tokens, {params} parameters, {threads} threads): forward {fwd:.1} ms, \
             backward {bwd:.1} ms, total {total:.1} ms (median of {}); loss {:.6}, gradient norm {:.6}",
            a.iters, check.0, check.1
        );
    }
    Ok(())
}

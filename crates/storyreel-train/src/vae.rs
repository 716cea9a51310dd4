//! Training the toy VAE: the Wan VAE code itself, built on trainable variables, with the
//! reconstruction + KL objective of a β-VAE.
//!
//! The latents the rest of the pipeline sees are normalised with per-channel statistics; during
//! training the VAE's mean/std are 0/1, and [`latent_statistics`] measures the real ones once
//! training is done (as Wan's constants were measured).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use storyreel_nn::vae::{VaeConfig, WanVae};
use storyreel_world::rng::WorldRng;

use crate::error::{Result, TrainError};

/// A VAE whose weights are variables of `varmap` (named as in Wan's layout), initialised like
/// [`WanVae::random`] from `seed`.
///
/// The log-variance half of the posterior (`conv1.bias[z..2z]`) starts at `initial_logvar`.
/// At 0 (σ = 1) the decoder of a short from-scratch run learns from latents drowned in noise
/// and answers with blurred, colour-averaged frames; a low start keeps the latent informative
/// from the first step, and the encoder may still raise it.
pub fn trainable_vae(
    cfg: &VaeConfig,
    varmap: &VarMap,
    seed: u64,
    initial_logvar: f32,
    device: &Device,
) -> Result<WanVae> {
    let mut cfg = cfg.clone();
    cfg.latents_mean = vec![0.0; cfg.z_dim];
    cfg.latents_std = vec![1.0; cfg.z_dim];
    let mut rng = WorldRng::new(seed);
    let mut tensors = HashMap::new();
    let data = varmap.data();
    let mut vars = data.lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    for (name, shape) in cfg.tensor_shapes(true) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with(".gamma") {
            vec![1.0; n]
        } else if name == "conv1.bias" {
            (0..n).map(|i| if i < cfg.z_dim { 0.0 } else { initial_logvar }).collect()
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let fan_in: usize = if shape.len() > 1 { shape[1..].iter().product() } else { shape[0] };
            let bound = (3.0 / fan_in as f64).sqrt();
            (0..n).map(|_| rng.range_f(-bound, bound) as f32).collect()
        };
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?;
        tensors.insert(name.clone(), var.as_tensor().clone());
        vars.insert(name, var);
    }
    Ok(WanVae::from_tensors(cfg, tensors)?)
}

/// One clip's loss and its parts.
#[derive(Debug)]
pub struct VaeLoss {
    /// `l1 + mse + kl_weight · kl`, differentiable.
    pub total: Tensor,
    /// Mean absolute reconstruction error.
    pub l1: f64,
    /// Mean squared reconstruction error.
    pub mse: f64,
    /// Mean KL divergence to N(0, 1) per latent element.
    pub kl: f64,
    /// PSNR of the reconstruction in dB (pixels in [−1, 1], so the peak-to-peak range is 2).
    pub psnr: f64,
}

/// Encodes `frames` (`[F, 3, H, W]` in [−1, 1]), samples latents with noise from `seed`, decodes,
/// and scores the reconstruction. With `train_encoder` false the posterior is detached, so the
/// backward pass stops at the latent and only the decoder side gets gradients.
pub fn vae_loss(vae: &WanVae, frames: &Tensor, kl_weight: f64, seed: u64, train_encoder: bool) -> Result<VaeLoss> {
    let (mu, logvar) = vae.encode_moments(frames)?;
    // A frozen encoder gets no update anyway; detaching saves its half of the backward pass.
    let (mu, logvar) = if train_encoder { (mu, logvar) } else { (mu.detach(), logvar.detach()) };
    let logvar = logvar.clamp(-30f32, 20f32)?;
    let eps = gaussian(mu.dims(), seed, mu.device())?;
    let z = (&mu + (logvar.affine(0.5, 0.0)?.exp()? * eps)?)?;
    let recon = vae.decode_raw(&z)?;
    let diff = (recon - frames)?;
    let l1 = diff.abs()?.mean_all()?;
    let mse = diff.sqr()?.mean_all()?;
    let kl = ((mu.sqr()? + logvar.exp()?)? - 1.0)?.sub(&logvar)?.affine(0.5, 0.0)?.mean_all()?;
    let total = ((&l1 + &mse)? + (&kl * kl_weight)?)?;
    let mse_v = mse.to_scalar::<f32>()? as f64;
    Ok(VaeLoss {
        total,
        l1: l1.to_scalar::<f32>()? as f64,
        mse: mse_v,
        kl: kl.to_scalar::<f32>()? as f64,
        psnr: psnr_from_mse(mse_v),
    })
}

/// A `crop` × `crop` window of `frames` (`[F, 3, H, W]`), the same for every frame, placed by
/// `index` alone (so a resumed run crops alike) at a multiple of `align`, the VAE's spatial
/// scale: the latent grid then falls on the same pixels as in a whole frame.
pub fn random_crop(frames: &Tensor, crop: usize, align: usize, index: u64) -> Result<Tensor> {
    let (_, _, h, w) = frames.dims4()?;
    let align = align.max(1);
    if crop == 0 || crop > h.min(w) || !crop.is_multiple_of(align) {
        let want = format!("a multiple of {align} within the {w}×{h} frames");
        return Err(TrainError::out_of_range("data.crop", crop, &want));
    }
    let mut rng = WorldRng::new(index ^ 0xc4_0b);
    let top = rng.range(0, (h - crop) / align) * align;
    let left = rng.range(0, (w - crop) / align) * align;
    Ok(frames.narrow(2, top, crop)?.narrow(3, left, crop)?)
}

/// PSNR in dB for pixels in [−1, 1].
pub fn psnr_from_mse(mse: f64) -> f64 {
    10.0 * (4.0 / mse.max(1e-12)).log10()
}

/// Standard normal values of `shape` from a seeded Box–Muller stream (the same on every run).
pub fn gaussian(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut rng = WorldRng::new(seed);
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1 = rng.uniform().max(1e-12);
        let u2 = rng.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        v.push((r * (std::f64::consts::TAU * u2).cos()) as f32);
        v.push((r * (std::f64::consts::TAU * u2).sin()) as f32);
    }
    v.truncate(n);
    Ok(Tensor::from_vec(v, shape, device)?.to_dtype(DType::F32)?)
}

/// Per-channel mean and standard deviation of the encoder's latent means over `clips`: the
/// statistics a trained VAE's latents are normalised with.
pub fn latent_statistics(vae: &WanVae, clips: &[Tensor]) -> Result<(Vec<f32>, Vec<f32>)> {
    let z = vae.config().z_dim;
    let (mut sum, mut sq, mut count) = (vec![0f64; z], vec![0f64; z], 0usize);
    for clip in clips {
        let (mu, _) = vae.encode_moments(clip)?;
        let (t, c, h, w) = mu.dims4()?;
        let values = mu.to_dtype(DType::F32)?.permute((1, 0, 2, 3))?.flatten_all()?.to_vec1::<f32>()?;
        let per = t * h * w;
        for ch in 0..c {
            for &v in &values[ch * per..(ch + 1) * per] {
                sum[ch] += v as f64;
                sq[ch] += (v as f64) * (v as f64);
            }
        }
        count += per;
    }
    if count < 2 {
        return Err(TrainError::out_of_range("latent samples", count, "at least 2"));
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / count as f64) as f32).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(q, &m)| ((q / count as f64 - (m as f64).powi(2)).max(1e-12).sqrt()) as f32)
        .collect();
    Ok((mean, std))
}

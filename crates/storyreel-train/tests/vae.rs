//! The toy VAE trains through the Wan VAE code: a few steps on a fixed clip lower the loss,
//! gradients reach every weight, and latent statistics are measured afterwards.

use candle_core::Device;
use candle_nn::{Optimizer, VarMap};
use storyreel_nn::vae::VaeConfig;
use storyreel_train::data::{frames_to_tensor, ClipSource, RenderedClips};
use storyreel_train::stage_vae::ToyVaeShape;
use storyreel_train::vae::{gaussian, latent_statistics, psnr_from_mse, trainable_vae, vae_loss};
use storyreel_world::StoryOptions;

fn toy_config() -> VaeConfig {
    ToyVaeShape { z_dim: 4, base_dim: 8, dim_mult: vec![1, 2, 2], ..ToyVaeShape::default() }.config()
}

#[test]
fn a_few_steps_lower_the_reconstruction_loss() {
    let dev = Device::Cpu;
    let mut options = StoryOptions::default();
    options.format.width = 32;
    options.format.height = 32;
    let clip = RenderedClips::new(options, 11, 4, 5).unwrap().clip(0).unwrap();
    let frames = frames_to_tensor(&clip.frames, &dev).unwrap();
    let varmap = VarMap::new();
    let vae = trainable_vae(&toy_config(), &varmap, 1, -10.0, &dev).unwrap();
    assert_eq!(vae.config().spatial_scale(), 4);
    assert_eq!(vae.config().temporal_scale(), 4);
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW { lr: 3e-3, weight_decay: 0.0, ..Default::default() },
    )
    .unwrap();
    let first = vae_loss(&vae, &frames, 1e-6, 0, true).unwrap();
    // Every weight gets a gradient: the whole VAE is on the autograd path.
    let grads = first.total.backward().unwrap();
    let missing: Vec<String> =
        varmap.data().lock().unwrap().iter().filter(|(_, v)| grads.get(v).is_none()).map(|(n, _)| n.clone()).collect();
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    opt.step(&grads).unwrap();
    let mut last = first.l1 + first.mse;
    for step in 1..12 {
        let loss = vae_loss(&vae, &frames, 1e-6, step, true).unwrap();
        opt.backward_step(&loss.total).unwrap();
        last = loss.l1 + loss.mse;
    }
    assert!(last < 0.7 * (first.l1 + first.mse), "loss {} -> {last}", first.l1 + first.mse);

    let (mean, std) = latent_statistics(&vae, &[frames]).unwrap();
    assert_eq!(mean.len(), 4);
    assert!(std.iter().all(|s| s.is_finite() && *s > 0.0));
}

#[test]
fn a_fresh_vae_starts_with_a_near_deterministic_posterior() {
    let dev = Device::Cpu;
    let mut options = StoryOptions::default();
    options.format.width = 32;
    options.format.height = 32;
    let clip = RenderedClips::new(options, 12, 4, 5).unwrap().clip(0).unwrap();
    let frames = frames_to_tensor(&clip.frames, &dev).unwrap();
    for (start, want) in [(-10.0f32, -10.0f32), (0.0, 0.0)] {
        let varmap = VarMap::new();
        let vae = trainable_vae(&toy_config(), &varmap, 1, start, &dev).unwrap();
        let (_, logvar) = vae.encode_moments(&frames).unwrap();
        let mean = logvar.mean_all().unwrap().to_scalar::<f32>().unwrap();
        // The bias sets the level; the random weights only spread it.
        assert!((mean - want).abs() < 3.0, "initial log-variance {start}: mean {mean}");
    }
}

#[test]
fn psnr_and_noise_helpers() {
    assert!((psnr_from_mse(4.0) - 0.0).abs() < 1e-12);
    assert!((psnr_from_mse(0.04) - 20.0).abs() < 1e-9);
    let a = gaussian(&[1000], 5, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
    let b = gaussian(&[1000], 5, &Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
    let mean = a.iter().sum::<f32>() / 1000.0;
    let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 1000.0;
    assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "mean {mean}, var {var}");
}

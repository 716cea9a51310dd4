//! `storyreel bench vae`: streaming decode speed of the Wan VAE and the tiny decoder.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::taehv::TinyVae;
use storyreel_nn::vae::{VaeConfig, WanVae};

use crate::bench::peak_rss_mb;
use crate::device::{parse_device, parse_dtype};
use crate::testcase::parse_size;

/// Which decoders to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// The Wan2.1 VAE decoder.
    Wan,
    /// The tiny TAEHV-style decoder.
    Tiny,
    /// Both, tiny first.
    Both,
}

/// Flags of `bench vae`.
#[derive(clap::Args)]
pub struct VaeArgs {
    /// Decoder(s) to time.
    #[arg(long, value_enum, default_value = "both")]
    pub decoder: Which,
    /// Output frame size HxW in pixels (multiples of 8).
    #[arg(long, default_value = "480x832")]
    pub size: String,
    /// Base width of the Wan VAE (96 = Wan2.1; smaller for toy VAEs).
    #[arg(long, default_value_t = 96)]
    pub base_dim: usize,
    /// Later latent frames timed after the first (each gives 4 frames).
    #[arg(long, default_value_t = 2)]
    pub latents: usize,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object per decoder instead of text.
    #[arg(long)]
    pub json: bool,
}

/// FLOPs of the tiny decoder for one later latent frame at latent size `h`×`w` (wan.md §6.4).
pub fn tiny_decoder_flops(h: usize, w: usize) -> f64 {
    let hw = (h * w) as f64;
    let macs = 16.0 * 256.0 * 9.0 * hw
        + 3.0 * 1024.0 * 256.0 * 9.0 * hw
        + 256.0 * 256.0 * 4.0 * hw
        + 256.0 * 128.0 * 9.0 * 4.0 * hw
        + 3.0 * 512.0 * 128.0 * 9.0 * 4.0 * hw
        + 128.0 * 256.0 * 16.0 * hw
        + 2.0 * (128.0 * 64.0 * 9.0 * 16.0 * hw + 3.0 * 256.0 * 64.0 * 9.0 * 16.0 * hw)
        + 2.0 * 64.0 * 128.0 * 64.0 * hw
        + 4.0 * (64.0 * 64.0 * 9.0 * 64.0 * hw + 64.0 * 3.0 * 9.0 * 64.0 * hw);
    2.0 * macs
}

fn sync(device: &Device) -> Result<()> {
    device.synchronize()?;
    Ok(())
}

/// Runs `bench vae`.
pub fn run(a: &VaeArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype)?;
    let (hp, wp) = parse_size(&a.size)?;
    if hp % 8 != 0 || wp % 8 != 0 || hp == 0 || wp == 0 {
        bail!("--size {} must be a positive multiple of 8 in both directions", a.size);
    }
    if a.latents == 0 {
        bail!("--latents must be at least 1");
    }
    let (h, w) = (hp / 8, wp / 8);
    let which = match a.decoder {
        // Tiny first: the Wan decoder leaves gigabytes of freed heap behind that slow what follows.
        Which::Both => vec![Which::Tiny, Which::Wan],
        one => vec![one],
    };
    for d in which {
        let (codec, steady_flops): (Arc<dyn VideoCodec>, f64) = match d {
            Which::Wan => {
                let cfg = VaeConfig { base_dim: a.base_dim, ..VaeConfig::wan21() };
                let flops = cfg.decoder_flops(h, w, false);
                (Arc::new(WanVae::random(&cfg, false, 0, dtype, &device)?), flops)
            }
            _ => (Arc::new(TinyVae::random(0, dtype, &device)?), tiny_decoder_flops(h, w)),
        };
        let name = codec.name().to_string();
        let latents = (Tensor::randn(0f32, 1.0, (1 + a.latents, 16, h, w), &device)?.to_dtype(dtype)? * 0.5)?;
        let mut stream = codec.decode_stream();
        let t0 = Instant::now();
        stream.push(&latents.narrow(0, 0, 1)?)?;
        sync(&device)?;
        let first_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut steady = Vec::new();
        for i in 0..a.latents {
            let t = Instant::now();
            let out = stream.push(&latents.narrow(0, 1 + i, 1)?)?;
            sync(&device)?;
            steady.push(t.elapsed().as_secs_f64() * 1e3);
            if out.dims() != [4, 3, hp, wp] {
                bail!("{name} decoder gave {:?} for one latent frame", out.dims());
            }
        }
        steady.sort_by(f64::total_cmp);
        let per_latent_ms = steady[steady.len() / 2];
        let fps = 4.0 / (per_latent_ms / 1e3);
        let gflops = steady_flops / (per_latent_ms / 1e3) / 1e9;
        let cache_mb = stream.cache_bytes() as f64 / (1 << 20) as f64;
        let rss = peak_rss_mb();
        if a.json {
            let v = serde_json::json!({
                "decoder": name, "size": [hp, wp], "latent": [h, w], "dtype": format!("{dtype:?}"),
                "base_dim": if d == Which::Wan { Some(a.base_dim) } else { None },
                "first_latent_ms": first_ms, "per_latent_ms": per_latent_ms, "frames_per_s": fps,
                "tflop_per_latent": steady_flops / 1e12, "gflop_per_s": gflops, "cache_mb": cache_mb,
                "peak_rss_mb": rss,
            });
            println!("{v}");
        } else {
            println!(
                "{name} decoder, {hp}×{wp} ({h}×{w} latents), {dtype:?} on {:?}: first latent {first_ms:.0} ms (1 frame); \
                 later latents {per_latent_ms:.0} ms each (median of {}) = {fps:.2} frames/s, \
                 {:.3} TFLOP per latent = {gflops:.1} GFLOP/s; caches {cache_mb:.0} MiB; peak RSS {}",
                device.location(),
                steady.len(),
                steady_flops / 1e12,
                rss.map(|r| format!("{r:.0} MiB")).unwrap_or_else(|| "n/a".into())
            );
        }
        drop(stream);
    }
    Ok(())
}

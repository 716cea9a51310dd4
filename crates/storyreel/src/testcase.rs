//! `storyreel testcase`: a random model folder plus matching `generate-latents` inputs.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use storyreel_engine::context::dynamic_counts;
use storyreel_engine::NoiseSource;
use storyreel_nn::checkpoint::{save_checkpoint, CheckpointLayout};
use storyreel_nn::dit::random_weights;
use storyreel_nn::taehv::TinyVae;
use storyreel_nn::vae::{VaeConfig, WanVae};
use storyreel_nn::WanConfig;

/// Flags of `testcase`.
#[derive(clap::Args)]
pub struct Args {
    /// Output folder; receives `model/` (config.json + weights) and `inputs.safetensors`.
    #[arg(long)]
    pub out: PathBuf,
    /// Model shape: tiny, bench (dim 512 × 8 layers) or wan-1.3b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Checkpoint layout: wan, shotstream or diffusers.
    #[arg(long, default_value = "wan")]
    pub layout: String,
    /// Weight file format: safetensors or pt.
    #[arg(long, default_value = "safetensors")]
    pub format: String,
    /// Seed of weights, captions, context and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shot index k of the inputs (0 = first shot: zero context).
    #[arg(long, default_value_t = 0)]
    pub shot: usize,
    /// Chunks of 3 latent frames.
    #[arg(long, default_value_t = 7)]
    pub chunks: usize,
    /// Latent size HxW.
    #[arg(long, default_value = "8x12")]
    pub latent: String,
    /// Also write a random small Wan VAE (`vae.safetensors`, base width 8) into the model folder,
    /// so `generate-latents --decode` works (16-channel presets only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub vae: bool,
    /// Also write a random tiny decoder (`taew2_1.safetensors`, 45 MB) for `--decoder tiny`.
    #[arg(long)]
    pub tiny_decoder: bool,
}

/// A model shape by name.
pub fn preset(name: &str) -> Result<WanConfig> {
    Ok(match name {
        "tiny" => WanConfig { in_dim: 16, out_dim: 16, text_len: 16, text_dim: 32, freq_dim: 256, ..WanConfig::tiny() },
        "bench" => WanConfig { dim: 512, ffn_dim: 2048, num_heads: 4, num_layers: 8, ..WanConfig::wan_1_3b() },
        "wan-1.3b" => WanConfig::wan_1_3b(),
        other => bail!("unknown preset `{other}` (tiny, bench, wan-1.3b)"),
    })
}

/// Parses `HxW`.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (h, w) = s.split_once(['x', 'X']).with_context(|| format!("size `{s}` must look like 60x104"))?;
    let h: usize = h.trim().parse().with_context(|| format!("bad height in `{s}`"))?;
    let w: usize = w.trim().parse().with_context(|| format!("bad width in `{s}`"))?;
    if h == 0 || w == 0 || h > 4096 || w > 4096 {
        bail!("size `{s}` is out of range");
    }
    Ok((h, w))
}

fn layout(name: &str) -> Result<CheckpointLayout> {
    Ok(match name {
        "wan" => CheckpointLayout::Wan,
        "shotstream" => CheckpointLayout::ShotStream,
        "diffusers" => CheckpointLayout::Diffusers,
        other => bail!("unknown layout `{other}` (wan, shotstream, diffusers)"),
    })
}

fn gaussian(src: &mut storyreel_engine::SeededNoise, key: usize, shape: &[usize]) -> Result<Tensor> {
    Ok(src.noise(usize::MAX, key, 0, shape, &Device::Cpu)?)
}

/// Runs `testcase`.
pub fn run(args: &Args) -> Result<()> {
    let cfg = preset(&args.preset)?;
    let (h, w) = parse_size(&args.latent)?;
    let layout = layout(&args.layout)?;
    let ext = match args.format.as_str() {
        "safetensors" => "safetensors",
        "pt" | "pth" => "pt",
        other => bail!("unknown format `{other}` (safetensors, pt)"),
    };
    if args.chunks == 0 || args.chunks > 1000 {
        bail!("--chunks must be in 1..=1000");
    }
    let model_dir = args.out.join("model");
    std::fs::create_dir_all(&model_dir).with_context(|| format!("creating {}", model_dir.display()))?;
    std::fs::write(model_dir.join("config.json"), cfg.to_json())?;
    let weights = random_weights(&cfg, args.seed, DType::F32, &Device::Cpu)?;
    let file = match layout {
        CheckpointLayout::Diffusers => format!("diffusion_pytorch_model.{ext}"),
        CheckpointLayout::ShotStream => format!("shotstream.{ext}"),
        CheckpointLayout::Wan => format!("diffusion_pytorch_model.{ext}"),
    };
    save_checkpoint(&model_dir.join(&file), &weights, layout)?;
    if (args.vae || args.tiny_decoder) && cfg.in_dim != 16 {
        bail!("the VAE and tiny decoder need 16 latent channels; preset `{}` has {}", args.preset, cfg.in_dim);
    }
    if args.vae {
        WanVae::random(&VaeConfig::tiny(), true, args.seed ^ 0xfae, DType::F32, &Device::Cpu)?.save(&model_dir)?;
    }
    if args.tiny_decoder {
        TinyVae::random(args.seed ^ 0x7a3, DType::F32, &Device::Cpu)?.save(&model_dir.join("taew2_1.safetensors"))?;
    }

    let mut src = storyreel_engine::SeededNoise::new(args.seed ^ 0x5eed);
    let k = args.shot;
    let n_caps = k + 1;
    // Captions: a random real length per caption, zero rows after it (like T5 output).
    let mut caps = Vec::new();
    for i in 0..n_caps {
        let real = 1 + (i * 7 + 3) % cfg.text_len;
        let c = gaussian(&mut src, 100 + i, &[real, cfg.text_dim])?;
        caps.push(c.pad_with_zeros(0, 0, cfg.text_len - real)?);
    }
    let captions = Tensor::stack(&caps, 0)?;
    let (context, shots) = if k == 0 {
        (Tensor::zeros((6, cfg.in_dim, h, w), DType::F32, &Device::Cpu)?, vec![0i64; 6])
    } else {
        let counts = dynamic_counts(6, k);
        let shots: Vec<i64> = counts.iter().enumerate().flat_map(|(s, &c)| std::iter::repeat_n(s as i64, c)).collect();
        (gaussian(&mut src, 200, &[6, cfg.in_dim, h, w])?, shots)
    };
    let noise = gaussian(&mut src, 300, &[args.chunks, 4, 3, cfg.in_dim, h, w])?;
    let inputs: HashMap<String, Tensor> = [
        ("caption_embeddings".to_string(), captions),
        ("context_latents".to_string(), context),
        ("context_shots".to_string(), Tensor::new(shots.as_slice(), &Device::Cpu)?),
        ("shot_index".to_string(), Tensor::new(&[k as i64], &Device::Cpu)?),
        ("noise".to_string(), noise),
    ]
    .into();
    let inputs_path = args.out.join("inputs.safetensors");
    candle_core::safetensors::save(&inputs, &inputs_path)?;
    eprintln!(
        "wrote {} ({} layout, {} parameters) and {}",
        model_dir.join(&file).display(),
        layout,
        cfg.parameter_count(),
        inputs_path.display()
    );
    Ok(())
}

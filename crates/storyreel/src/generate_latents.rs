//! `storyreel generate-latents`: one shot of the streaming loop from given tensors.
//!
//! Inputs (safetensors): `caption_embeddings` f32 [N, L, text_dim] (captions of shots 0..k),
//! `context_latents` f32 [n, C, H, W], `context_shots` i64 [n], `shot_index` i64 [1],
//! `noise` f32 [chunks, steps, 3, C, H, W] (step 0 = starting noise, step i > 0 = noise
//! re-injected before step i). Output: `latents` f32 [3·chunks, C, H, W].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use storyreel_engine::{FewStepSampler, GivenNoise, SessionConfig, ShotRun};
use storyreel_nn::kv_cache::LocalWindow;
use storyreel_nn::linear::LoraAdapter;
use storyreel_nn::{RopeConfig, WanConfig, WanModel};

use crate::device::{parse_device, parse_dtype};

/// Flags of `generate-latents`.
#[derive(clap::Args)]
pub struct Args {
    /// Model folder: Wan's config.json and the DiT weights (safetensors, sharded, or .pt/.pth).
    #[arg(long)]
    pub model: PathBuf,
    /// Input tensors (safetensors; see `storyreel generate-latents --help` and README).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write `latents` (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute dtype of weights and KV caches: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// LoRA adapters to apply at run time (ShotStream .pt, PEFT folder or safetensors); repeatable.
    #[arg(long)]
    pub lora: Vec<PathBuf>,
    /// Merge the LoRA adapters into the weights instead of running them separately.
    #[arg(long)]
    pub merge_lora: bool,
    /// Denoising steps on the 0–1000 scale, warped through the shifted table.
    #[arg(long, value_delimiter = ',', default_value = "1000,740,500,260")]
    pub steps: Vec<u32>,
    /// Schedule shift.
    #[arg(long, default_value_t = 8.0)]
    pub shift: f32,
    /// Shot-phase step θ of the RoPE indicator, radians per shot flag.
    #[arg(long, default_value_t = 1.0 / 6.0)]
    pub shot_phase: f32,
    /// Switch the RoPE shot-phase indicator off (ablation).
    #[arg(long)]
    pub no_shot_phase: bool,
    /// Local KV cache size in latent frames (default: the whole shot, no eviction).
    #[arg(long)]
    pub local_frames: Option<usize>,
    /// Sink frames kept when the local window slides.
    #[arg(long, default_value_t = 0)]
    pub sink_frames: usize,
    /// Also decode each chunk as it is generated into this output (.mp4, .png contact sheet,
    /// .gif, a folder of PNGs, or .safetensors frames).
    #[arg(long)]
    pub decode: Option<PathBuf>,
    /// Decoder for --decode.
    #[arg(long, value_enum, default_value = "wan")]
    pub decoder: crate::codec::DecoderChoice,
    /// Folder or file with the VAE / tiny decoder for --decode (default: the model folder).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Frames per second of a decoded video.
    #[arg(long, default_value_t = 16.0)]
    pub fps: f64,
}

/// Reads Wan's config.json and the weights of a model folder into a model.
pub fn load_model(
    dir: &Path,
    dtype: DType,
    device: &Device,
    rope: RopeConfig,
    loras: &[PathBuf],
    merge: bool,
) -> Result<WanModel> {
    if !dir.is_dir() {
        bail!("model folder {} does not exist or is not a folder", dir.display());
    }
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        bail!("{} has no config.json (Wan's DiT config is required)", dir.display());
    }
    let cfg = WanConfig::from_json_file(&cfg_path)?;
    let loaded = storyreel_nn::checkpoint::load_dit_checkpoint(dir, &cfg, dtype, device)
        .map_err(|e| anyhow!(e))
        .with_context(|| format!("loading the DiT weights from {}", dir.display()))?;
    let mut tensors = loaded.tensors;
    let mut adapters: HashMap<String, LoraAdapter> = HashMap::new();
    for path in loras {
        let lora = storyreel_nn::checkpoint::read_lora(path, DType::F32, device)
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("reading LoRA {}", path.display()))?;
        if merge {
            storyreel_nn::checkpoint::merge_lora(&mut tensors, &lora)?;
        } else {
            for (name, l) in lora {
                if adapters.insert(name.clone(), LoraAdapter { a: l.a, b: l.b, scale: l.scale }).is_some() {
                    bail!("two LoRA files adapt `{name}`; merge them with --merge-lora");
                }
            }
        }
    }
    let mut model = WanModel::from_tensors(tensors, &cfg, rope, dtype, device)?;
    if !adapters.is_empty() {
        model.set_lora(adapters)?;
    }
    Ok(model)
}

fn take(map: &mut HashMap<String, Tensor>, name: &str, path: &Path) -> Result<Tensor> {
    map.remove(name).ok_or_else(|| anyhow!("{} has no tensor `{name}`", path.display()))
}

fn as_f32(t: Tensor, name: &str) -> Result<Tensor> {
    match t.dtype() {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Ok(t.to_dtype(DType::F32)?),
        other => bail!("`{name}` must be a float tensor, found {other:?}"),
    }
}

fn as_i64(t: &Tensor, name: &str) -> Result<Vec<i64>> {
    match t.dtype() {
        DType::I64 | DType::U32 | DType::U8 | DType::I32 | DType::I16 => {
            Ok(t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?)
        }
        other => bail!("`{name}` must be an integer tensor, found {other:?}"),
    }
}

/// Validated inputs of one shot.
pub struct ShotInputs {
    /// [N, L, text_dim]
    pub captions: Tensor,
    /// [n, C, H, W]
    pub context: Tensor,
    /// Flags of the context frames.
    pub context_shots: Vec<i64>,
    /// Shot index k.
    pub shot: usize,
    /// [chunks, steps, frames, C, H, W]
    pub noise: Tensor,
}

/// Reads and checks the input file.
pub fn read_inputs(path: &Path, cfg: &WanConfig) -> Result<ShotInputs> {
    let mut map = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| anyhow!("cannot read {} as safetensors: {e}", path.display()))?;
    let captions = as_f32(take(&mut map, "caption_embeddings", path)?, "caption_embeddings")?;
    let context = as_f32(take(&mut map, "context_latents", path)?, "context_latents")?;
    let context_shots = as_i64(&take(&mut map, "context_shots", path)?, "context_shots")?;
    let shot = as_i64(&take(&mut map, "shot_index", path)?, "shot_index")?;
    let noise = as_f32(take(&mut map, "noise", path)?, "noise")?;
    if captions.rank() != 3 || captions.dims()[2] != cfg.text_dim || captions.dims()[1] > cfg.text_len {
        bail!("`caption_embeddings` must be [N, L ≤ {}, {}]; found {:?}", cfg.text_len, cfg.text_dim, captions.dims());
    }
    let [k] = shot.as_slice() else { bail!("`shot_index` must hold exactly one value; found {}", shot.len()) };
    if *k < 0 {
        bail!("`shot_index` is negative ({k})");
    }
    let n_caps = captions.dims()[0];
    if n_caps != 1 && n_caps != *k as usize + 1 {
        bail!("`caption_embeddings` holds {n_caps} captions; shot {k} needs {} (shots 0..={k}) or 1", *k + 1);
    }
    if noise.rank() != 6 {
        bail!("`noise` must be [chunks, steps, frames, C, H, W]; found {:?}", noise.dims());
    }
    let nd = noise.dims();
    if nd[3] != cfg.in_dim {
        bail!("`noise` has {} channels; the model takes {}", nd[3], cfg.in_dim);
    }
    if context.rank() != 4 || context.dims()[1..] != nd[3..] {
        bail!("`context_latents` must be [n, {}, {}, {}]; found {:?}", nd[3], nd[4], nd[5], context.dims());
    }
    if context.dims()[0] != context_shots.len() {
        bail!("{} context latents but {} `context_shots`", context.dims()[0], context_shots.len());
    }
    if nd[0] == 0 || nd[0] > 10_000 || nd[2] == 0 {
        bail!("`noise` shape {nd:?} asks for an absurd number of chunks or frames");
    }
    Ok(ShotInputs { captions, context, context_shots, shot: *k as usize, noise })
}

/// Runs `generate-latents`.
pub fn run(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let rope = RopeConfig {
        shot_phase: if args.no_shot_phase { None } else { Some(args.shot_phase) },
        ..RopeConfig::default()
    };
    let model = load_model(&args.model, dtype, &device, rope, &args.lora, args.merge_lora)?;
    let inputs = read_inputs(&args.inputs, model.config())?;
    let nd = inputs.noise.dims().to_vec();
    let (chunks, steps, chunk_frames) = (nd[0], nd[1], nd[2]);
    let sampler = FewStepSampler::new(&args.steps, args.shift)?;
    if sampler.timesteps().len() != steps {
        bail!(
            "`noise` has {steps} steps per chunk but the sampler runs {} ({:?})",
            sampler.timesteps().len(),
            args.steps
        );
    }
    let frames = chunks * chunk_frames;
    let local = args.local_frames.unwrap_or(frames);
    let cfg = SessionConfig {
        frames_per_shot: frames,
        chunk_frames,
        context_frames: inputs.context_shots.len(),
        latent_size: (nd[4], nd[5]),
        sampler,
        refresh_t: 0.0,
        window: LocalWindow { capacity_frames: local, sink_frames: args.sink_frames },
    };
    // Decoder and output are opened before generating, so a bad path fails fast.
    let mut decoding = match &args.decode {
        Some(path) => {
            let codec =
                crate::codec::load_codec(args.vae.as_ref().unwrap_or(&args.model), args.decoder, dtype, &device)?;
            Some((codec.decode_stream(), crate::frames_out::FrameOutput::create(path, args.fps)?))
        }
        None => None,
    };
    let mut decode_error: Option<anyhow::Error> = None;
    let mut noise = GivenNoise::new(inputs.noise.clone())?;
    let mut run = ShotRun::start(&model, &cfg, inputs.shot, &inputs.captions, &inputs.context, &inputs.context_shots)?;
    let bar = indicatif::ProgressBar::new(chunks as u64).with_style(
        indicatif::ProgressStyle::with_template("shot {msg} [{bar:30}] chunk {pos}/{len} {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(inputs.shot.to_string());
    while !run.is_done() {
        let chunk = run.next_chunk(&mut noise, &|| false)?;
        if let (Some((stream, out)), None) = (decoding.as_mut(), decode_error.as_ref()) {
            let step = stream.push(&chunk.latents).map_err(anyhow::Error::from).and_then(|f| out.push(&f));
            decode_error = step.err();
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let latents = run.latents()?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let out: HashMap<String, Tensor> = [("latents".to_string(), latents)].into();
    candle_core::safetensors::save(&out, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} latent frames of shot {} to {}", frames, inputs.shot, args.out.display());
    if let Some(e) = decode_error {
        return Err(e.context(format!("decoding failed (the latents are in {})", args.out.display())));
    }
    if let Some((_, out)) = decoding {
        eprintln!("wrote {}", out.finish()?);
    }
    Ok(())
}

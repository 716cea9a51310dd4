//! `storyreel decode` (latents → video) and `storyreel encode-frames` (frames → latents).

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::codec::{load_codec, DecoderChoice};
use crate::device::{parse_device, parse_dtype};
use crate::frames_out::FrameOutput;

/// Arguments of `storyreel decode`.
#[derive(clap::Args)]
pub struct DecodeArgs {
    /// Safetensors file holding `latents` [F, C, H, W] in the normalised latent space.
    pub latents: PathBuf,
    /// Model folder (or weights file) holding the VAE / tiny decoder.
    #[arg(long)]
    pub model: PathBuf,
    /// Output: `out.mp4`, `frames/` (PNG per frame), `sheet.png` (contact sheet), `preview.gif`,
    /// or `frames.safetensors` (`frames` f32 [F, 3, H, W] in [−1, 1]).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Which decoder turns latents into pixels.
    #[arg(long, value_enum, default_value = "wan")]
    pub decoder: DecoderChoice,
    /// Latent frames decoded per step (3 = one generation chunk).
    #[arg(long, default_value_t = 3)]
    pub chunk: usize,
    /// Frames per second of video outputs.
    #[arg(long, default_value_t = 16.0)]
    pub fps: f64,
    /// Compute dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Arguments of `storyreel encode-frames`.
#[derive(clap::Args)]
pub struct EncodeArgs {
    /// Safetensors file holding `frames` [F, 3, H, W] in [−1, 1] (F = 1 + 4k).
    pub frames: PathBuf,
    /// Model folder (or weights file) holding the VAE / tiny encoder.
    #[arg(long)]
    pub model: PathBuf,
    /// Output safetensors file: `latents` [1 + k, C, H/8, W/8] in the normalised latent space.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Which autoencoder encodes.
    #[arg(long, value_enum, default_value = "wan")]
    pub encoder: DecoderChoice,
    /// Encode every frame on its own (the context-frame path): F frames give F latents.
    #[arg(long)]
    pub per_frame: bool,
    /// Compute dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Reads the float tensor `name` from a safetensors file as f32 on the CPU.
pub fn read_tensor(path: &Path, name: &str) -> Result<Tensor> {
    if !path.is_file() {
        bail!("{} does not exist", path.display());
    }
    let mut map = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .with_context(|| format!("reading {} (expected a safetensors file)", path.display()))?;
    let t = map.remove(name).ok_or_else(|| {
        let mut names: Vec<_> = map.keys().cloned().collect();
        names.sort();
        anyhow!("{} has no tensor `{name}` (it has: {})", path.display(), names.join(", "))
    })?;
    match t.dtype() {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Ok(t.to_dtype(DType::F32)?),
        other => bail!("`{name}` in {} must be a float tensor, found {other:?}", path.display()),
    }
}

/// Writes one tensor to a safetensors file.
pub fn write_tensor(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    let map: HashMap<String, Tensor> = [(name.to_string(), t.to_dtype(DType::F32)?.contiguous()?)].into();
    candle_core::safetensors::save(&map, path).with_context(|| format!("writing {}", path.display()))
}

/// Runs `storyreel decode`.
pub fn run_decode(args: &DecodeArgs) -> Result<()> {
    if args.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let latents = read_tensor(&args.latents, "latents")?.to_device(&device)?;
    if latents.rank() != 4 {
        bail!("`latents` must be [frames, channels, height, width]; got {:?}", latents.dims());
    }
    let codec = load_codec(&args.model, args.decoder, dtype, &device)?;
    let t = latents.dim(0)?;
    let mut out = FrameOutput::create(&args.output, args.fps)?;
    let name = codec.name().to_string();
    let mut stream = codec.decode_stream();
    let bar = ProgressBar::new(t as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} latent frames, {elapsed} elapsed, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("decoding ({name})"));
    let mut start = 0;
    while start < t {
        let n = args.chunk.min(t - start);
        let frames = stream.push(&latents.narrow(0, start, n)?)?;
        out.push(&frames)?;
        start += n;
        bar.set_position(start as u64);
    }
    bar.finish_and_clear();
    let written = out.finish()?;
    eprintln!("wrote {written}");
    Ok(())
}

/// Runs `storyreel encode-frames`.
pub fn run_encode(args: &EncodeArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let frames = read_tensor(&args.frames, "frames")?.to_device(&device)?;
    let codec = load_codec(&args.model, args.encoder, dtype, &device)?;
    let latents = if args.per_frame { codec.encode_frames(&frames)? } else { codec.encode(&frames)? };
    write_tensor(&args.output, "latents", &latents)?;
    eprintln!("wrote {} ({:?})", args.output.display(), latents.dims());
    Ok(())
}

//! `storyreel encode-text`: caption → the embedding the DiT cross-attends to.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use storyreel_nn::text::cache::EmbeddingCache;
use storyreel_nn::text::toy::ToyTextEncoder;
use storyreel_nn::text::umt5_text::Umt5TextEncoder;
use storyreel_nn::text::TextEncoder;

use crate::device::{parse_device, parse_dtype};

/// Arguments of `storyreel encode-text`.
#[derive(clap::Args)]
pub struct Args {
    /// The caption.
    pub text: String,
    /// Text-encoder folder: UMT5 (`tokenizer.json`, weights, optional `config.json`) or the toy
    /// encoder (`vocab.txt`, `toy_text_config.json`, `toy_text.safetensors`).
    #[arg(long)]
    pub model: PathBuf,
    /// Output safetensors: `embeddings` f32 [text_len, dim] (zero rows after the real length) and
    /// `length` i64 [1].
    #[arg(short, long)]
    pub output: PathBuf,
    /// Compute dtype: f32 or bf16 (UMT5 weights stay in their stored dtype).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Embedding cache folder (default: $XDG_CACHE_HOME/storyreel/text or ~/.cache/storyreel/text).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the on-disk embedding cache.
    #[arg(long)]
    pub no_cache: bool,
}

/// The default on-disk embedding cache folder.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("storyreel").join("text"));
    }
    std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache/storyreel/text"))
}

/// Loads the text encoder in `dir`, choosing the kind by the files present.
pub fn load_text_encoder(dir: &Path, compute: DType, device: &Device) -> Result<Box<dyn TextEncoder>> {
    if !dir.is_dir() {
        bail!("text-encoder folder {} does not exist", dir.display());
    }
    if dir.join("vocab.txt").is_file() {
        let enc = ToyTextEncoder::load(dir, device)
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("loading the toy text encoder from {}", dir.display()))?;
        return Ok(Box::new(enc));
    }
    if dir.join("tokenizer.json").is_file() {
        let enc = Umt5TextEncoder::load(dir, DType::BF16, compute, device)
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("loading UMT5 from {}", dir.display()))?;
        return Ok(Box::new(enc));
    }
    bail!("{} holds neither a toy text encoder (vocab.txt) nor UMT5 (tokenizer.json)", dir.display())
}

/// Runs `storyreel encode-text`.
pub fn run(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let compute = parse_dtype(&args.dtype)?;
    let encoder = load_text_encoder(&args.model, compute, &device)?;
    let cache = match (args.no_cache, args.cache_dir.clone().or_else(default_cache_dir)) {
        (false, Some(dir)) => EmbeddingCache::with_dir(&dir, 256 << 20)
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("opening the embedding cache {}", dir.display()))?,
        _ => EmbeddingCache::in_memory(256 << 20),
    };
    let emb = cache.get_or_encode(encoder.as_ref(), &[args.text.as_str()])?.remove(0);
    for w in cache.take_warnings() {
        eprintln!("warning: {w}");
    }
    if emb.truncated {
        eprintln!(
            "warning: the caption was cut to {} tokens; the end of it is not seen by the model",
            encoder.text_len()
        );
    }
    let out: HashMap<String, Tensor> = [
        ("embeddings".to_string(), emb.embeddings.to_dtype(DType::F32)?.to_device(&Device::Cpu)?),
        ("length".to_string(), Tensor::new(&[emb.length as i64], &Device::Cpu)?),
    ]
    .into();
    candle_core::safetensors::save(&out, &args.output).with_context(|| format!("writing {}", args.output.display()))?;
    let s = cache.stats();
    eprintln!(
        "wrote {} ({} real tokens of {}, width {}; {})",
        args.output.display(),
        emb.length,
        encoder.text_len(),
        encoder.dim(),
        if s.memory_hits + s.disk_hits > 0 { "from the cache" } else { "encoded" }
    );
    Ok(())
}

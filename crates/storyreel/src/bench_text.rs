//! `storyreel bench text`: seconds per prompt of the UMT5 encoder (random weights in memory).

use std::time::Instant;

use anyhow::{bail, Result};
use storyreel_nn::text::umt5::{Umt5Config, Umt5Encoder};

use crate::bench::peak_rss_mb;
use crate::device::{parse_device, parse_dtype};

/// Flags of `bench text`.
#[derive(clap::Args)]
pub struct TextArgs {
    /// Prompt length in tokens (EOS included).
    #[arg(long, default_value_t = 512)]
    pub tokens: usize,
    /// Encoder layers (24 = UMT5-XXL; fewer for a quick estimate).
    #[arg(long, default_value_t = 24)]
    pub layers: usize,
    /// Weight dtype held in memory: bf16 (as Wan ships it) or f32.
    #[arg(long, default_value = "bf16")]
    pub weights: String,
    /// Compute dtype: f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed prompts (the median is reported).
    #[arg(long, default_value_t = 2)]
    pub iters: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `bench text`.
pub fn run(a: &TextArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let compute = parse_dtype(&a.dtype)?;
    let weights = parse_dtype(&a.weights)?;
    if a.iters == 0 || a.layers == 0 || a.layers > 64 {
        bail!("--iters must be positive and --layers in 1..=64");
    }
    let cfg = Umt5Config { num_layers: a.layers, ..Umt5Config::umt5_xxl() };
    if a.tokens == 0 || a.tokens > cfg.text_len {
        bail!("--tokens must be in 1..={}", cfg.text_len);
    }
    let t = Instant::now();
    let enc = Umt5Encoder::random(&cfg, 0, weights, compute, &device)?;
    let build_s = t.elapsed().as_secs_f64();
    let ids: Vec<u32> = (0..a.tokens).map(|i| ((i * 7919 + 13) % (cfg.vocab - 3) + 3) as u32).collect();
    let mut times = Vec::new();
    for _ in 0..a.iters {
        let t = Instant::now();
        let out = enc.encode_ids(&ids)?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
        if out.dims() != [cfg.text_len, cfg.dim] {
            bail!("encoder gave {:?}", out.dims());
        }
    }
    times.sort_by(f64::total_cmp);
    let s = times[times.len() / 2];
    let rss = peak_rss_mb();
    if a.json {
        let v = serde_json::json!({
            "layers": a.layers, "tokens": a.tokens, "weights": format!("{weights:?}"),
            "compute": format!("{compute:?}"), "build_s": build_s, "seconds_per_prompt": s,
            "peak_rss_mb": rss,
        });
        println!("{v}");
    } else {
        println!(
            "UMT5 ({} layers, {weights:?} weights, {compute:?} compute) on {:?}: {} tokens in {s:.2} s per prompt \
             (median of {}); random weights built in {build_s:.1} s; peak RSS {}",
            a.layers,
            device.location(),
            a.tokens,
            times.len(),
            rss.map(|r| format!("{r:.0} MiB")).unwrap_or_else(|| "n/a".into())
        );
    }
    Ok(())
}

//! `storyreel bench`: DiT chunk-forward throughput, the machine's matmul peak, and the other
//! benchmarks' entry points.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use storyreel_engine::ShotPlan;
use storyreel_nn::dit::random_weights;
use storyreel_nn::kv_cache::{ContextCache, LocalCache, LocalWindow};
use storyreel_nn::{RopeConfig, WanConfig, WanModel};

use crate::device::{parse_device, parse_dtype};
use crate::testcase::parse_size;

/// What to measure.
#[derive(clap::Subcommand)]
pub enum What {
    /// One causal chunk forward with a filled KV cache (defaults: the acceptance configuration).
    Dit(DitArgs),
    /// Streaming decode of the Wan VAE and the tiny decoder (random weights).
    Vae(crate::bench_vae::VaeArgs),
    /// The UMT5 text encoder on one prompt (random weights, full UMT5-XXL size by default).
    Text(crate::bench_text::TextArgs),
    /// Square f32/bf16 matmul, the reference for achievable GFLOP/s.
    Matmul(MatmulArgs),
    /// The server end to end: append → first frame and streaming rate over HTTP + WebSocket.
    Serve(crate::bench_serve::ServeBenchArgs),
    /// Forward and backward of one teacher training sample at the teacher stage's shape.
    TeacherStep(crate::bench_train::TeacherStepArgs),
}

/// Flags of `bench dit`.
#[derive(clap::Args)]
pub struct DitArgs {
    /// Hidden width.
    #[arg(long, default_value_t = 512)]
    pub dim: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 8)]
    pub layers: usize,
    /// Attention heads (head width = dim / heads).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// FFN width.
    #[arg(long, default_value_t = 2048)]
    pub ffn_dim: usize,
    /// Text-encoder width.
    #[arg(long, default_value_t = 4096)]
    pub text_dim: usize,
    /// Caption tokens.
    #[arg(long, default_value_t = 512)]
    pub text_len: usize,
    /// Latent size HxW (60x104 = 1560 tokens per latent frame at 480×832).
    #[arg(long, default_value = "60x104")]
    pub latent: String,
    /// Latent frames per chunk.
    #[arg(long, default_value_t = 3)]
    pub chunk_frames: usize,
    /// Latent frames already in the KV cache (the context cache).
    #[arg(long, default_value_t = 6)]
    pub cache_frames: usize,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `bench matmul`.
#[derive(clap::Args)]
pub struct MatmulArgs {
    /// Matrix size n (n×n · n×n).
    #[arg(long, default_value_t = 2048)]
    pub n: usize,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed iterations (the best is reported).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs a benchmark.
pub fn run(what: &What) -> Result<()> {
    match what {
        What::Dit(a) => dit(a),
        What::Matmul(a) => matmul(a),
        What::Vae(a) => crate::bench_vae::run(a),
        What::Text(a) => crate::bench_text::run(a),
        What::Serve(a) => crate::bench_serve::run(a),
        What::TeacherStep(a) => crate::bench_train::run(a),
    }
}

/// Peak resident memory of this process in MiB (Linux VmHWM), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// FLOPs of one chunk forward (wan.md §7, generalised): linear layers, self-attention over
/// `lk` keys, cross-attention over the caption, patch embedding and head.
pub fn chunk_flops(cfg: &WanConfig, lq: usize, lk: usize) -> f64 {
    let (d, f, l) = (cfg.dim as f64, cfg.ffn_dim as f64, cfg.num_layers as f64);
    let lq = lq as f64;
    let linear = 2.0 * (6.0 * d * d + 2.0 * d * f) * lq * l;
    let self_attn = 4.0 * lq * lk as f64 * d * l;
    let cross = 4.0 * lq * cfg.text_len as f64 * d * l;
    let io = 2.0 * lq * d * (cfg.in_dim * 4 + cfg.patch_out()) as f64;
    linear + self_attn + cross + io
}

fn sync(device: &Device) -> Result<()> {
    device.synchronize()?;
    Ok(())
}

fn dit(a: &DitArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype)?;
    let (h, w) = parse_size(&a.latent)?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let cfg = WanConfig {
        dim: a.dim,
        ffn_dim: a.ffn_dim,
        num_heads: a.heads,
        num_layers: a.layers,
        text_dim: a.text_dim,
        text_len: a.text_len,
        ..WanConfig::wan_1_3b()
    };
    cfg.validate()?;
    let weights = random_weights(&cfg, 0, dtype, &device)?;
    let model = WanModel::from_tensors(weights, &cfg, RopeConfig::default(), dtype, &device)?;
    let geo = model.cache_geometry(h, w)?;
    let lq = a.chunk_frames * geo.tokens_per_frame;
    let lk = (a.cache_frames + a.chunk_frames) * geo.tokens_per_frame;

    let captions = Tensor::randn(0f32, 1.0, (1, cfg.text_len, cfg.text_dim), &device)?;
    let caps = model.embed_captions(&captions)?;
    let flags: Vec<i64> = vec![0; a.cache_frames];
    let plan = ShotPlan::new(0, &flags, 1)?;
    let mut context = ContextCache::new(geo, a.cache_frames, &device)?;
    let t0 = Instant::now();
    if a.cache_frames > 0 {
        let ctx = Tensor::randn(0f32, 1.0, (a.cache_frames, cfg.in_dim, h, w), &device)?;
        model.fill_context(&ctx, &plan.context_frames(), &caps, &mut context)?;
    }
    sync(&device)?;
    let fill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let window = LocalWindow { capacity_frames: a.chunk_frames, sink_frames: 0 };
    let mut local = LocalCache::new(geo, window, a.chunk_frames, &device)?;
    let x = Tensor::randn(0f32, 1.0, (a.chunk_frames, cfg.in_dim, h, w), &device)?;
    let frames = plan.shot_frames(0, a.chunk_frames, 957.93);
    for _ in 0..a.warmup {
        model.forward_chunk(&x, &frames, &caps, &context, &mut local, 0)?;
        sync(&device)?;
    }
    let mut times = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let t = Instant::now();
        model.forward_chunk(&x, &frames, &caps, &context, &mut local, 0)?;
        sync(&device)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops = chunk_flops(&cfg, lq, lk);
    let gflops = flops / median / 1e9;
    let tokens_per_s = lq as f64 / median;
    let rss = peak_rss_mb();
    if a.json {
        let v = serde_json::json!({
            "bench": "dit",
            "dim": cfg.dim, "layers": cfg.num_layers, "heads": cfg.num_heads, "ffn_dim": cfg.ffn_dim,
            "text_dim": cfg.text_dim, "text_len": cfg.text_len, "latent": [h, w],
            "chunk_frames": a.chunk_frames, "cache_frames": a.cache_frames,
            "query_tokens": lq, "key_tokens": lk, "dtype": a.dtype, "device": a.device,
            "threads": rayon::current_num_threads(), "iters": a.iters,
            "ms_per_chunk": median * 1e3, "ms_all": times.iter().map(|t| t * 1e3).collect::<Vec<_>>(),
            "context_fill_ms": fill_ms, "tokens_per_s": tokens_per_s,
            "tflop_per_chunk": flops / 1e12, "gflops": gflops, "peak_rss_mb": rss,
        });
        println!("{v}");
    } else {
        println!(
            "DiT chunk forward: dim {} × {} layers, {} heads, ffn {}, {} query tokens over {} keys ({} cached frames), {}, {}",
            cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, lq, lk, a.cache_frames, a.dtype, a.device
        );
        println!("  context fill ({} frames): {:.1} ms", a.cache_frames, fill_ms);
        println!(
            "  {:.1} ms per chunk (median of {}), {:.0} tokens/s, {:.3} TFLOP per chunk → {:.1} GFLOP/s",
            median * 1e3,
            a.iters,
            tokens_per_s,
            flops / 1e12,
            gflops
        );
        println!("  peak RSS: {}", rss.map_or("unknown".into(), |m| format!("{m:.0} MiB")));
    }
    Ok(())
}

fn matmul(a: &MatmulArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let dtype = parse_dtype(&a.dtype)?;
    if a.n == 0 || a.n > 32768 || a.iters == 0 {
        bail!("--n must be in 1..=32768 and --iters at least 1");
    }
    let x = Tensor::randn(0f32, 1.0, (a.n, a.n), &device)?.to_dtype(dtype)?;
    let y = Tensor::randn(0f32, 1.0, (a.n, a.n), &device)?.to_dtype(dtype)?;
    x.matmul(&y)?;
    sync(&device)?;
    let mut best = f64::INFINITY;
    for _ in 0..a.iters {
        let t = Instant::now();
        x.matmul(&y)?;
        sync(&device)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let gflops = 2.0 * (a.n as f64).powi(3) / best / 1e9;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bench": "matmul", "n": a.n, "dtype": a.dtype, "device": a.device,
                "threads": rayon::current_num_threads(), "ms": best * 1e3, "gflops": gflops})
        );
    } else {
        println!(
            "matmul {n}×{n}·{n}×{n} {}, {}: {:.2} ms → {:.1} GFLOP/s (best of {})",
            a.dtype,
            a.device,
            best * 1e3,
            gflops,
            a.iters,
            n = a.n
        );
    }
    Ok(())
}

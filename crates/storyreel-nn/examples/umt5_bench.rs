//! Times the UMT5-XXL encoder on one prompt with random weights generated in memory (no file).
//! `cargo run --release -p storyreel-nn --example umt5_bench [tokens=512] [layers=24] [f32|bf16] [runs=2]`
//!
//! Weights are held in bf16 (≈11.4 GB at full size) and computed in f32 (per-matrix conversion)
//! or bf16. Prints seconds per prompt and the peak resident memory (VmHWM).

use candle_core::{DType, Device};
use std::time::Instant;
use storyreel_nn::text::umt5::{Umt5Config, Umt5Encoder};

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(|l| l["VmHWM:".len()..].trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

/// User + system CPU seconds of this process so far (the wall time is noisy on a shared machine).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (field(11) + field(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tokens: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(512);
    let layers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(24);
    let compute = match args.get(2).map(String::as_str) {
        Some("bf16") => DType::BF16,
        _ => DType::F32,
    };
    let runs: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(2);
    let cfg = Umt5Config { num_layers: layers, ..Umt5Config::umt5_xxl() };
    let t = Instant::now();
    let enc = Umt5Encoder::random(&cfg, 0, DType::BF16, compute, &Device::Cpu)?;
    println!(
        "random UMT5-XXL ({layers} layers, bf16 weights) built in {:.1} s; VmHWM {}",
        t.elapsed().as_secs_f64(),
        vm_hwm()
    );
    let ids: Vec<u32> = (0..tokens).map(|i| ((i * 7919 + 13) % (cfg.vocab - 3) + 3) as u32).collect();
    for run in 0..runs {
        let (t, c) = (Instant::now(), cpu_seconds());
        let out = enc.encode_ids(&ids)?;
        let (s, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
        println!(
            "run {run}: {tokens} tokens, compute {compute:?}: {s:.2} s wall ({:.2} s per layer), {cpu:.1} CPU-s; out {:?}; VmHWM {}",
            s / layers as f64,
            out.dims(),
            vm_hwm()
        );
    }
    Ok(())
}

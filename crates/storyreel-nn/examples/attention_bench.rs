//! Times the fused CPU attention on the acceptance shape (4 heads × 128, 4680 queries, 14040 keys).
//! `cargo run --release -p storyreel-nn --example attention_bench [queries] [keys]`

use candle_core::{Device, Tensor};
use std::time::Instant;
use storyreel_nn::attention::{attention, KvSpan, QuerySegment};

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let lq = args.first().copied().unwrap_or(4680);
    let lk = args.get(1).copied().unwrap_or(14040);
    let (h, hd) = (4, 128);
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (h, lq, hd), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (h, lk, hd), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (h, lk, hd), &dev)?;
    let seg = [QuerySegment { rows: 0..lq, spans: vec![KvSpan { k: &k, v: &v, rows: 0..lk }] }];
    attention(&q, &seg, 0.088)?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        attention(&q, &seg, 0.088)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let flops = 4.0 * (lq * lk * h * hd) as f64;
    println!("attention {h}×{lq}×{lk}×{hd}: {:.1} ms, {:.1} GFLOP/s", best * 1e3, flops / best / 1e9);
    Ok(())
}

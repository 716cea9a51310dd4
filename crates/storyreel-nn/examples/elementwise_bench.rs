//! Times the DiT's elementwise work on acceptance-sized activations.
//! `cargo run --release -p storyreel-nn --example elementwise_bench`

use candle_core::{Device, Tensor};
use std::time::Instant;

fn time<F: FnMut() -> anyhow::Result<()>>(name: &str, mut f: F) -> anyhow::Result<()> {
    f()?;
    let t = Instant::now();
    for _ in 0..5 {
        f()?;
    }
    println!("{name}: {:.2} ms", t.elapsed().as_secs_f64() * 1e3 / 5.0);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let h = Tensor::randn(0f32, 1.0, (4680, 2048), &dev)?;
    let x = Tensor::randn(0f32, 1.0, (3, 1560, 512), &dev)?;
    let s = Tensor::randn(0f32, 1.0, (3, 1, 512), &dev)?;
    let w = Tensor::ones(512, candle_core::DType::F32, &dev)?;
    time("gelu [4680, 2048]", || Ok(h.gelu().map(|_| ())?))?;
    time("storyreel gelu [4680, 2048]", || Ok(storyreel_nn::fused::gelu_tanh(&h).map(|_| ())?))?;
    time("broadcast_mul [3,1560,512]", || Ok(x.broadcast_mul(&s).map(|_| ())?))?;
    time("layer_norm [3,1560,512]", || Ok(storyreel_nn::norm::layer_norm(&x, 1e-6).map(|_| ())?))?;
    time("modulated LN [3,1560,512]", || Ok(storyreel_nn::fused::modulated_layer_norm(&x, &s, &s, 1e-6).map(|_| ())?))?;
    time("rms_norm [4680,512]", || Ok(storyreel_nn::norm::rms_norm(&x.reshape((4680, 512))?, &w, 1e-6).map(|_| ())?))?;
    time("to_heads [4680,512]", || {
        Ok(storyreel_nn::dit::block::to_heads(&x.reshape((4680, 512))?, 4, candle_core::DType::F32).map(|_| ())?)
    })?;
    time("gated add [3,1560,512]", || Ok(storyreel_nn::fused::gated_add(&x, &x, &s).map(|_| ())?))?;
    Ok(())
}

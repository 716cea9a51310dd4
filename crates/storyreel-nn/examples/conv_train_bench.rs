//! Times the causal 3-D convolution as VAE training runs it (forward and backward through
//! autograd) against the inference forward, at the toy VAE's shapes.
//!
//! `cargo run --release -p storyreel-nn --example conv_train_bench`
//!
//! GFLOP/s count 2·Cout·Cin·kt·kh·kw multiply-adds per output element; a training step costs
//! three of those (forward, input gradient, weight gradient).

use candle_core::{Device, Tensor, Var};
use std::time::Instant;
use storyreel_nn::conv::{conv3d, ConvGeometry, FrameSource};

fn main() -> anyhow::Result<()> {
    // (frames, Cin, Cout, H, W): the toy VAE's 3×3×3 convolutions at each resolution.
    let shapes = [(5, 16, 16, 64, 64), (3, 32, 32, 32, 32), (2, 64, 64, 16, 16), (5, 32, 16, 64, 64)];
    for &(t, cin, cout, h, w) in &shapes {
        let x = Tensor::randn(0f32, 1.0, (t, cin, h, w), &Device::Cpu)?;
        let wt = Tensor::randn(0f32, 0.05, (cout, cin, 3, 3, 3), &Device::Cpu)?;
        let b = Tensor::zeros(cout, candle_core::DType::F32, &Device::Cpu)?;
        let geo = ConvGeometry::padded(1);
        let flops = 2.0 * (t * cout * h * w * cin * 27) as f64;
        let reps = 5;
        let time = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
            f()?;
            let s = Instant::now();
            for _ in 0..reps {
                f()?;
            }
            Ok(s.elapsed().as_secs_f64() / reps as f64)
        };
        let fwd = time(&mut || {
            conv3d(&FrameSource { lead_zeros: 2, cache: None, x: &x }, &wt, Some(&b), geo)?;
            Ok(())
        })?;
        let xv = Var::from_tensor(&x)?;
        let wv = Var::from_tensor(&wt)?;
        let bv = Var::from_tensor(&b)?;
        let train = time(&mut || {
            let y = conv3d(
                &FrameSource { lead_zeros: 2, cache: None, x: xv.as_tensor() },
                wv.as_tensor(),
                Some(bv.as_tensor()),
                geo,
            )?;
            let g = y.sqr()?.sum_all()?.backward()?;
            anyhow::ensure!(g.get(&wv).is_some() && g.get(&xv).is_some());
            Ok(())
        })?;
        println!(
            "{t}×{cin}→{cout}×{h}×{w}: inference forward {:.1} ms ({:.1} GFLOP/s); training forward+backward {:.1} ms ({:.1} GFLOP/s)",
            fwd * 1e3,
            flops / fwd / 1e9,
            train * 1e3,
            3.0 * flops / train / 1e9
        );
    }
    Ok(())
}

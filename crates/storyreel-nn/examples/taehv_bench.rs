//! Times the tiny autoencoder streaming at 64×64 and 480×832, and the convolution shapes its
//! decoder is made of.
//!
//! `cargo run --release -p storyreel-nn --example taehv_bench [-- --latents N] [--no-shapes] [--alternatives]`
//!
//! GFLOP/s figures divide the nominal cost (wan.md §6.6: 544 GFLOP per latent at 60×104,
//! counting every layer as the reference runs it) by the time taken; the implementation does
//! fewer FLOPs than that (see `taehv::stack`), so it is an effective rate.

use candle_core::{DType, Device, Tensor};
use std::sync::Arc;
use std::time::Instant;
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::conv::{conv2d, conv3d, ConvGeometry, FrameSource, Padding2d};
use storyreel_nn::taehv::TinyVae;

fn rand(shape: &[usize]) -> anyhow::Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?)
}

/// Streams `n` pushes of `chunk` latents after a 1-latent warm-up; prints per-latent figures.
fn decode(vae: &Arc<TinyVae>, h: usize, w: usize, n: usize, chunk: usize) -> anyhow::Result<()> {
    let z = (rand(&[n * chunk + 1, 16, h, w])? * 0.5)?;
    let mut s = vae.clone().decode_stream();
    let t0 = Instant::now();
    let mut frames = s.push(&z.narrow(0, 0, 1)?)?.dim(0)?;
    let first = t0.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        frames += s.push(&z.narrow(0, 1 + i * chunk, chunk)?)?.dim(0)?;
        times.push(t.elapsed().as_secs_f64() / chunk as f64);
    }
    times.sort_by(f64::total_cmp);
    let (best, median) = (times[0], times[times.len() / 2]);
    let gflop = TinyVae::decoder_flops_per_latent(h, w) / 1e9;
    println!(
        "decode {}×{} (latent {h}×{w}), {n} pushes of {chunk} after a first latent ({first:.3} s): \
         median {median:.3} s/latent (best {best:.3}) = {:.2} frames/s, {gflop:.1} GFLOP/latent → {:.1} GFLOP/s; \
         {frames} frames, cache {:.1} MB",
        8 * h,
        8 * w,
        4.0 / median,
        gflop / median,
        s.cache_bytes() as f64 / 1e6
    );
    Ok(())
}

/// Streams `n` groups of 4 frames after a first group; prints per-latent figures.
fn encode(vae: &TinyVae, h: usize, w: usize, n: usize) -> anyhow::Result<()> {
    let x = (rand(&[4 * (n + 1), 3, h, w])? * 0.3)?.clamp(-1f32, 1f32)?;
    let mut s = vae.encode_stream()?;
    s.push(&x.narrow(0, 0, 4)?)?;
    let t = Instant::now();
    for i in 1..=n {
        s.push(&x.narrow(0, 4 * i, 4)?)?;
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    let gflop = TinyVae::encoder_flops_per_latent(h, w) / 1e9;
    println!(
        "encode {h}×{w}: {per:.3} s/latent (4 frames) = {:.2} frames/s, {gflop:.1} GFLOP/latent → {:.1} GFLOP/s",
        4.0 / per,
        gflop / per
    );
    Ok(())
}

/// One convolution call: `frames` × `[cin, h, w]` → `cout`, kernel kt×kh×kw.
struct Case {
    label: String,
    frames: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    kt: usize,
    k: (usize, usize),
    pad: Padding2d,
    stride: (usize, usize),
}

impl Case {
    fn new(label: &str, frames: usize, (cin, cout): (usize, usize), (h, w): (usize, usize), k: usize) -> Self {
        let label = label.to_string();
        Self { label, frames, cin, cout, h, w, kt: 1, k: (k, k), pad: Padding2d::same(k / 2), stride: (1, 1) }
    }

    /// Spatial stride `s`.
    fn stride(mut self, s: usize) -> Self {
        self.stride.1 = s;
        self
    }

    /// Temporal stride `s` (TPool).
    fn stride_t(mut self, s: usize) -> Self {
        self.stride.0 = s;
        self
    }

    fn taps(mut self, kt: usize) -> Self {
        self.kt = kt;
        self
    }

    /// A 2×2 kernel padded above and to the left (one upsampling phase).
    fn phase(mut self) -> Self {
        self.k = (2, 2);
        self.pad = Padding2d { top: 1, bottom: 0, left: 1, right: 0 };
        self
    }

    /// Median seconds of a few runs.
    fn run(&self) -> anyhow::Result<f64> {
        let x = rand(&[self.frames, self.cin, self.h, self.w])?;
        let (kh, kw) = self.k;
        let b = rand(&[self.cout])?;
        let reps = if self.frames * self.cin * self.h * self.w > 20_000_000 { 3 } else { 5 };
        let mut times = Vec::new();
        if self.kt == 1 {
            let wt = rand(&[self.cout, self.cin, kh, kw])?;
            for _ in 0..reps {
                let t = Instant::now();
                conv2d(&x, &wt, Some(&b), self.stride.1, self.pad)?;
                times.push(t.elapsed().as_secs_f64());
            }
        } else {
            let wt = rand(&[self.cout, self.cin, self.kt, kh, kw])?;
            let mem = rand(&[self.kt - 1, self.cin, self.h, self.w])?;
            // A stream's MemBlock reads its memory frame; a TPool's groups are whole.
            let cache = (self.stride.0 == 1).then_some(&mem);
            let src = FrameSource { lead_zeros: 0, cache, x: &x };
            let geo = ConvGeometry { stride_t: self.stride.0.max(1), stride_hw: self.stride.1, pad: self.pad };
            for _ in 0..reps {
                let t = Instant::now();
                conv3d(&src, &wt, Some(&b), geo)?;
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let secs = times[times.len() / 2];
        let (st, ss) = (self.stride.0.max(1), self.stride.1);
        let out_px = self.h.div_ceil(ss) * self.w.div_ceil(ss);
        let out_frames = if self.kt == 1 { self.frames } else { self.frames / st };
        let flops = 2.0 * (out_frames * out_px * self.cout * self.cin * kh * kw * self.kt) as f64;
        let (shape, frames) = (format!("{}→{} {}×{}", self.cin, self.cout, self.h, self.w), self.frames);
        let label = self.label.replace("{shape}", &shape).replace("{f}", &frames.to_string());
        println!("  {label:44} {:8.1} ms  {:6.1} GFLOP/s", secs * 1e3, flops / secs / 1e9);
        Ok(secs)
    }
}

/// The convolutions of one steady-state latent at 480×832, as the implementation runs them.
fn decoder_shapes() -> anyhow::Result<()> {
    println!("decoder convolutions for one latent at 480×832 (median of runs):");
    let cases = [
        (3, Case::new("MemBlock(256) conv0, 2 taps, 60×104", 1, (256, 256), (60, 104), 3).taps(2)),
        (6, Case::new("MemBlock(256) conv2/4 256→256, 60×104", 1, (256, 256), (60, 104), 3)),
        (4, Case::new("TGrow+up+conv 256→128: 2×2 phase, 60×104", 1, (256, 128), (60, 104), 3).phase()),
        (3, Case::new("MemBlock(128) conv0, 120×208", 1, (128, 128), (120, 208), 3).taps(2)),
        (6, Case::new("MemBlock(128) conv2/4, 120×208", 1, (128, 128), (120, 208), 3)),
        (4, Case::new("TGrow+up+conv 128→2·64: phase, 120×208", 1, (128, 128), (120, 208), 3).phase()),
        (3, Case::new("MemBlock(64) conv0, 240×416 ×2", 2, (64, 64), (240, 416), 3).taps(2)),
        (6, Case::new("MemBlock(64) conv2/4, 240×416 ×2", 2, (64, 64), (240, 416), 3)),
        (4, Case::new("TGrow+up+conv 64→2·64: phase, 240×416 ×2", 2, (64, 128), (240, 416), 3).phase()),
        (1, Case::new("final 64→3 3×3, 480×832 ×4", 4, (64, 3), (480, 832), 3)),
    ];
    let mut total = 0.0;
    for (count, case) in &cases {
        total += *count as f64 * case.run()?;
    }
    println!("  sum over the decoder's calls: {total:.2} s per latent");
    Ok(())
}

/// The convolutions of one latent of the encoder at 480×832.
fn encoder_shapes() -> anyhow::Result<()> {
    println!("encoder convolutions for one latent at 480×832 (median of runs):");
    let cases = [
        (1, Case::new("3→64 3×3, 480×832 ×4", 4, (3, 64), (480, 832), 3)),
        (1, Case::new("TPool 2 frames → 1×1 128→64, 480×832 ×2", 2, (128, 64), (480, 832), 1)),
        (1, Case::new("64→64 3×3 stride 2, 480×832 ×2", 2, (64, 64), (480, 832), 3).stride(2)),
        (3, Case::new("MemBlock(64) conv0, 240×416 ×2", 2, (64, 64), (240, 416), 3).taps(2)),
        (6, Case::new("MemBlock(64) conv2/4, 240×416 ×2", 2, (64, 64), (240, 416), 3)),
        (1, Case::new("64→64 3×3 stride 2, 240×416", 1, (64, 64), (240, 416), 3).stride(2)),
    ];
    let mut total = 0.0;
    for (count, case) in &cases {
        total += *count as f64 * case.run()?;
    }
    println!("  sum of these calls: {total:.2} s per latent");
    Ok(())
}

/// Alternatives measured when choosing how to run MemBlock and the upsampling convs.
fn alternatives() -> anyhow::Result<()> {
    println!("MemBlock conv0: two taps in one conv3d vs one conv to [W_x; W_past] (carry W_past·x):");
    for (n, (h, w), f) in [(64, (240, 416), 2), (128, (120, 208), 1), (256, (60, 104), 1)] {
        Case::new("conv3d, 2 taps, {shape} ×{f}", f, (n, n), (h, w), 3).taps(2).run()?;
        Case::new("conv2d {shape} ×{f}", f, (n, 2 * n), (h, w), 3).run()?;
    }
    println!("nearest ×2 + 3×3 conv: at high resolution vs four 2×2 phase convs at low resolution:");
    for ((cin, cout), (h, w), f) in [((64, 64), (240, 416), 4), ((128, 64), (120, 208), 2), ((256, 128), (60, 104), 1)]
    {
        Case::new("3×3 on upsampled {shape} ×{f}", f, (cin, cout), (2 * h, 2 * w), 3).run()?;
        let one = Case::new("one 2×2 phase {shape} ×{f}", f, (cin, cout), (h, w), 3).phase().run()?;
        println!("  {:44} {:8.1} ms", "four phases", 4.0 * one * 1e3);
    }
    println!("TPool(64, 2) at 480×832: 1×1 conv over frame pairs reshaped to 128 channels vs 2 temporal taps:");
    Case::new("1×1 {shape} ×{f}", 2, (128, 64), (480, 832), 1).run()?;
    Case::new("conv3d 2 taps stride 2, {shape} ×{f}", 4, (64, 64), (480, 832), 1).taps(2).stride_t(2).run()?;
    println!("final 64→3 conv: 3×3 vs 1×1 to 27 channels (+ a shift-add pass):");
    Case::new("3×3 {shape} ×{f}", 4, (64, 3), (480, 832), 3).run()?;
    Case::new("1×1 {shape} ×{f}", 4, (64, 27), (480, 832), 1).run()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let n = args.iter().position(|a| a == "--latents").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(3);
    println!("rayon threads: {}", rayon::current_num_threads());
    if flag("--alternatives") {
        return alternatives();
    }
    let vae = Arc::new(TinyVae::random(0, DType::F32, &Device::Cpu)?);
    decode(&vae, 8, 8, 40, 1)?;
    decode(&vae, 8, 8, 14, 3)?;
    decode(&vae, 60, 104, n, 1)?;
    encode(&vae, 64, 64, 20)?;
    encode(&vae, 480, 832, n)?;
    if !flag("--no-shapes") {
        decoder_shapes()?;
        encoder_shapes()?;
    }
    Ok(())
}

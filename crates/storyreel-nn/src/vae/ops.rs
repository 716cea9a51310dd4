//! Elementwise and resampling steps of the Wan VAE over frame-major `[T, C, H, W]` video:
//! channel RMS norm (optionally fused with SiLU), nearest ×2 upsampling, clamping.
//!
//! On CPU with f32 data each is one parallel pass (the norm reads its input twice, the rest
//! once); elsewhere they are the spec's formulas as candle ops.

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;

use crate::attention::exp_nonpositive;
use crate::conv::{CpuF32, SendPtr};
use crate::error::{NnError, Result};

fn fast(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && !t.track_op())
}

/// Pixels handled per task: the per-pixel sums stay in L1 while the channels stream by.
pub(crate) const PIXEL_BLOCK: usize = 2048;

/// y = x / max(‖x‖₂ over channels, 1e-12) · √C · γ per voxel, then SiLU when `silu`;
/// `x` is `[T, C, H, W]` (or `[N, C, H, W]` for per-frame 2-D use) and `gamma` has C elements.
pub fn rms_norm_channels(x: &Tensor, gamma: &Tensor, silu: bool) -> Result<Tensor> {
    let (t, c, h, w) = x.dims4()?;
    if gamma.elem_count() != c {
        return Err(NnError::Input(format!("RMS norm over {c} channels got a gamma of shape {:?}", gamma.dims())));
    }
    if (x.track_op() || gamma.track_op()) && crate::fused_grad::applies_all(&[x, gamma]) {
        return crate::fused_grad::rms_norm_channels(x, gamma, silu);
    }
    if !fast(&[x, gamma]) {
        let g = gamma.flatten_all()?.reshape((1, c, 1, 1))?.to_dtype(x.dtype())?;
        let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        let y = (x.broadcast_div(&norm)? * (c as f64).sqrt())?.broadcast_mul(&g)?;
        return Ok(if silu { candle_nn::ops::silu(&y)? } else { y });
    }
    let xs = CpuF32::new(x)?;
    let gs = CpuF32::new(gamma)?;
    let out = rms_norm_channels_data(xs.slice(), gs.slice(), (t, c, h * w), silu);
    Ok(Tensor::from_vec(out, (t, c, h, w), x.device())?)
}

/// [`rms_norm_channels`] on contiguous data: `x` holds `dims` = (frames, channels, pixels).
pub(crate) fn rms_norm_channels_data(x: &[f32], gamma: &[f32], dims: (usize, usize, usize), silu: bool) -> Vec<f32> {
    let (t, c, plane) = dims;
    let scale = (c as f32).sqrt();
    let g: Vec<f32> = gamma.iter().map(|v| v * scale).collect();
    let mut out = vec![0f32; x.len()];
    let blocks = plane.div_ceil(PIXEL_BLOCK);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..t * blocks).into_par_iter().for_each(|task| {
        let (f, b) = (task / blocks, task % blocks);
        let p0 = b * PIXEL_BLOCK;
        let p1 = (p0 + PIXEL_BLOCK).min(plane);
        let n = p1 - p0;
        let src = &x[f * c * plane..(f + 1) * c * plane];
        let mut inv = [0f32; PIXEL_BLOCK];
        let inv = &mut inv[..n];
        for ch in 0..c {
            let row = &src[ch * plane + p0..ch * plane + p1];
            for (s, v) in inv.iter_mut().zip(row) {
                *s += v * v;
            }
        }
        for s in inv.iter_mut() {
            *s = 1.0 / s.sqrt().max(1e-12);
        }
        for (ch, &gc) in g.iter().enumerate() {
            let row = &src[ch * plane + p0..ch * plane + p1];
            // SAFETY: frame f, channel ch, pixels p0..p1 belong to this task only.
            let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.add(f * c * plane + ch * plane + p0), n) };
            if silu {
                for ((d, v), s) in dst.iter_mut().zip(row).zip(inv.iter()) {
                    *d = silu_f32(v * s * gc);
                }
            } else {
                for ((d, v), s) in dst.iter_mut().zip(row).zip(inv.iter()) {
                    *d = v * s * gc;
                }
            }
        }
    });
    out
}

/// x·σ(x), with σ built from e^(−|x|) so the fast exp (valid for non-positive arguments) serves.
#[inline(always)]
pub(crate) fn silu_f32(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let sig = if x >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
    x * sig
}

/// Nearest-neighbour ×2 upsampling of every `[H, W]` plane: `[N, C, H, W]` → `[N, C, 2H, 2W]`.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if !fast(&[x]) {
        return Ok(x.upsample_nearest2d(2 * h, 2 * w)?);
    }
    let xs = CpuF32::new(x)?;
    let mut out = vec![0f32; n * c * 4 * h * w];
    out.par_chunks_mut(4 * h * w).zip(xs.slice().par_chunks(h * w)).for_each(|(dst, src)| {
        for (r, row) in src.chunks_exact(w).enumerate() {
            let (top, bottom) = dst[2 * r * 2 * w..(2 * r + 2) * 2 * w].split_at_mut(2 * w);
            for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
                pair[0] = v;
                pair[1] = v;
            }
            bottom.copy_from_slice(top);
        }
    });
    Ok(Tensor::from_vec(out, (n, c, 2 * h, 2 * w), x.device())?)
}

/// Clamps every value to [lo, hi].
pub fn clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    Ok(x.clamp(lo, hi)?)
}

/// Single-head attention over each frame's pixels (the VAE's middle block): `qkv` `[T, 3C, H, W]`
/// with q, k, v in channel thirds; returns `[T, C, H, W]`.
pub fn frame_attention(qkv: &Tensor) -> Result<Tensor> {
    if matches!(qkv.device(), Device::Cpu) && qkv.dtype() != DType::F32 {
        // candle has no CPU half-precision matmul: attend in f32.
        return Ok(frame_attention(&qkv.to_dtype(DType::F32)?)?.to_dtype(qkv.dtype())?);
    }
    let (t, c3, h, w) = qkv.dims4()?;
    let c = c3 / 3;
    let scale = 1.0 / (c as f64).sqrt();
    let mut frames = Vec::with_capacity(t);
    for f in 0..t {
        // [3C, HW] → [HW, 3C] so each third is a token-major [HW, C] matrix.
        let tokens = qkv.get(f)?.reshape((c3, h * w))?.t()?.contiguous()?;
        let q = tokens.narrow(D::Minus1, 0, c)?.contiguous()?.unsqueeze(0)?;
        let k = tokens.narrow(D::Minus1, c, c)?.contiguous()?.unsqueeze(0)?;
        let v = tokens.narrow(D::Minus1, 2 * c, c)?.contiguous()?.unsqueeze(0)?;
        let seg = crate::attention::QuerySegment {
            rows: 0..h * w,
            spans: vec![crate::attention::KvSpan { k: &k, v: &v, rows: 0..h * w }],
        };
        let o = crate::attention::attention(&q, &[seg], scale)?; // [HW, C]
        frames.push(o.t()?.reshape((c, h, w))?);
    }
    Ok(Tensor::stack(&frames, 0)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| r.random_range(-3.0f32..3.0)).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_norm_matches_formula() {
        let x = rand(&[2, 5, 3, 700], 1);
        let g = rand(&[5], 2);
        for silu in [false, true] {
            let fast = rms_norm_channels(&x, &g, silu).unwrap();
            let norm = x.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
            let y = (x.broadcast_div(&norm).unwrap() * 5f64.sqrt()).unwrap();
            let y = y.broadcast_mul(&g.reshape((1, 5, 1, 1)).unwrap()).unwrap();
            let y = if silu { candle_nn::ops::silu(&y).unwrap() } else { y };
            assert!(max_diff(&fast, &y) < 1e-5, "silu={silu}: {}", max_diff(&fast, &y));
        }
    }

    #[test]
    fn upsample_matches_candle() {
        let x = rand(&[2, 3, 5, 7], 3);
        let a = upsample_nearest2x(&x).unwrap();
        let b = x.upsample_nearest2d(10, 14).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0);
    }
}

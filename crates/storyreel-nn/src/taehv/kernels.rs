//! Elementwise steps between the convolutions: ReLU, residual add + ReLU, nearest ×2 upsampling
//! and the output mapping.
//!
//! On CPU with f32 data the ReLUs run in place on the convolution's fresh output (one parallel
//! pass, no allocation): at 480×832 a 64-channel activation is 100 MB per frame, so an extra
//! allocate-and-copy per step would cost more than the pass itself. Elsewhere (CUDA, bf16) they
//! are ordinary candle ops.

use candle_core::{CpuStorage, DType, Device, Layout, Tensor};
use rayon::prelude::*;

use crate::conv::CpuF32;
use crate::error::{NnError, Result};

/// Elements per parallel task of an elementwise pass (large enough to amortise scheduling).
const CHUNK: usize = 1 << 16;

fn fast(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && !t.track_op())
}

/// The contiguous f32 range of a CPU storage described by `layout`.
fn f32_range_mut<'a>(s: &'a mut CpuStorage, layout: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("in-place op on a strided tensor".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("in-place op expects f32 storage"),
    }
}

fn f32_range<'a>(s: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let (start, end) =
        layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("in-place op on a strided tensor".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("in-place op expects f32 storage"),
    }
}

struct ReluInPlace;

impl candle_core::InplaceOp1 for ReluInPlace {
    fn name(&self) -> &'static str {
        "taehv-relu"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        f32_range_mut(s, layout)?.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
        Ok(())
    }
}

struct AddReluInPlace;

impl candle_core::InplaceOp2 for AddReluInPlace {
    fn name(&self) -> &'static str {
        "taehv-add-relu"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let dst = f32_range_mut(s1, l1)?;
        let src = f32_range(s2, l2)?;
        if dst.len() != src.len() {
            candle_core::bail!("residual add of {} and {} elements", dst.len(), src.len());
        }
        dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
            for (a, &b) in d.iter_mut().zip(s) {
                *a = (*a + b).max(0.0);
            }
        });
        Ok(())
    }
}

struct OutputInPlace;

impl candle_core::InplaceOp1 for OutputInPlace {
    fn name(&self) -> &'static str {
        "taehv-output"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        f32_range_mut(s, layout)?
            .par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0) * 2.0 - 1.0));
        Ok(())
    }
}

/// Whether `x` is a contiguous f32 CPU tensor that can be rewritten in place.
fn in_place_ok(x: &Tensor) -> bool {
    fast(&[x]) && x.is_contiguous()
}

/// max(x, 0). `x` must own its storage (a fresh convolution output): on CPU it is overwritten.
pub(crate) fn relu_owned(x: Tensor) -> Result<Tensor> {
    if in_place_ok(&x) {
        x.inplace_op1(&ReluInPlace)?;
        Ok(x)
    } else {
        Ok(x.relu()?)
    }
}

/// max(h + x, 0), the MemBlock's residual. `h` must own its storage; on CPU it is overwritten.
pub(crate) fn add_relu_owned(h: Tensor, x: &Tensor) -> Result<Tensor> {
    if in_place_ok(&h) && fast(&[x]) && h.dims() == x.dims() {
        h.inplace_op2(&x.contiguous()?, &AddReluInPlace)?;
        Ok(h)
    } else {
        Ok((h + x)?.relu()?)
    }
}

/// The reference's [0, 1] clamp followed by the codec's [−1, 1] mapping: clamp(y, 0, 1)·2 − 1.
pub(crate) fn to_signed_pixels_owned(y: Tensor) -> Result<Tensor> {
    if in_place_ok(&y) {
        y.inplace_op1(&OutputInPlace)?;
        Ok(y)
    } else {
        Ok(y.to_dtype(DType::F32)?.clamp(0f32, 1f32)?.affine(2.0, -1.0)?)
    }
}

/// Nearest-neighbour ×2 upsampling of every plane: `[N, C, H, W]` → `[N, C, 2H, 2W]`.
pub(crate) fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if !fast(&[x]) {
        return Ok(x.upsample_nearest2d(2 * h, 2 * w)?);
    }
    let xs = CpuF32::new(x)?;
    let mut out = vec![0f32; n * c * 4 * h * w];
    if !out.is_empty() {
        out.par_chunks_mut(4 * h * w).zip(xs.slice().par_chunks(h * w)).for_each(|(dst, src)| {
            for (r, row) in src.chunks_exact(w).enumerate() {
                let (top, bottom) = dst[4 * r * w..4 * (r + 1) * w].split_at_mut(2 * w);
                for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
                    pair[0] = v;
                    pair[1] = v;
                }
                bottom.copy_from_slice(top);
            }
        });
    }
    Ok(Tensor::from_vec(out, (n, c, 2 * h, 2 * w), x.device())?)
}

/// Interleaves the four phase outputs `[N, C, H, W]` (row parity a, column parity b, in the order
/// (0,0), (0,1), (1,0), (1,1)) into `[N, C, 2H, 2W]`, optionally applying max(·, 0).
pub(crate) fn interleave_phases(p: &[Tensor], relu: bool) -> Result<Tensor> {
    let (n, c, h, w) = p[0].dims4()?;
    if p.len() != 4 || p.iter().any(|t| t.dims() != [n, c, h, w]) {
        return Err(NnError::Input("interleaving needs four phase outputs of one shape".into()));
    }
    if !fast(&[&p[0], &p[1], &p[2], &p[3]]) {
        let row = |a: usize| -> Result<Tensor> {
            Ok(Tensor::stack(&[&p[2 * a], &p[2 * a + 1]], 4)?.reshape((n, c, h, 2 * w))?)
        };
        let y = Tensor::stack(&[row(0)?, row(1)?], 3)?.reshape((n, c, 2 * h, 2 * w))?;
        return Ok(if relu { y.relu()? } else { y });
    }
    let src: Vec<CpuF32> = p.iter().map(CpuF32::new).collect::<Result<_>>()?;
    let plane = h * w;
    let mut out = vec![0f32; n * c * 4 * plane];
    if !out.is_empty() {
        out.par_chunks_mut(4 * plane).enumerate().for_each(|(q, dst)| {
            let planes: Vec<&[f32]> = src.iter().map(|s| &s.slice()[q * plane..(q + 1) * plane]).collect();
            for i in 0..h {
                let (top, bottom) = dst[4 * i * w..4 * (i + 1) * w].split_at_mut(2 * w);
                for (a, row) in [top, bottom].into_iter().enumerate() {
                    let (e, o) = (&planes[2 * a][i * w..(i + 1) * w], &planes[2 * a + 1][i * w..(i + 1) * w]);
                    for ((pair, &x0), &x1) in row.chunks_exact_mut(2).zip(e).zip(o) {
                        if relu {
                            pair[0] = x0.max(0.0);
                            pair[1] = x1.max(0.0);
                        } else {
                            pair[0] = x0;
                            pair[1] = x1;
                        }
                    }
                }
            }
        });
    }
    Ok(Tensor::from_vec(out, (n, c, 2 * h, 2 * w), p[0].device())?)
}

/// A compact copy of frames `start..start+len` of `x` (a narrowed view would keep the whole
/// activation alive as long as the copy is held).
pub(crate) fn copy_frames(x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    Ok(x.narrow(0, start, len)?.force_contiguous()?)
}

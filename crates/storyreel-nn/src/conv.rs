//! 2-D and causal 3-D convolution over frame-major video tensors `[T, C, H, W]`.
//!
//! Both VAEs store video frame-major so that a frame is one contiguous `[C, H, W]` image: time
//! caches are a few whole frames, per-frame 2-D steps need no transposes, and a 3-D convolution
//! reads its temporal taps straight from neighbouring frames.
//!
//! On CPU with f32 data a convolution runs as tiled implicit GEMM: for each output frame and each
//! tile of output pixels, the `[Cin·kt·kh·kw, P]` input panel is gathered once into a per-thread
//! buffer and multiplied by the weight matrix `[Cout, Cin·kt·kh·kw]` in one GEMM written straight
//! into the output frame. Leading zero frames (causal padding) and cached frames are read in
//! place, so nothing is concatenated. Under autograd on the CPU the same kernel runs with a
//! GEMM backward ([`crate::fused_grad`]). Elsewhere (CUDA, bf16) the same maths runs as candle
//! `conv2d` calls, one per temporal tap.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;

use crate::error::{NnError, Result};

/// Zero padding around each frame (top, bottom, left, right).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Padding2d {
    /// Rows added above.
    pub top: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Columns added on the right.
    pub right: usize,
}

impl Padding2d {
    /// The same padding `p` on every side.
    pub fn same(p: usize) -> Self {
        Self { top: p, bottom: p, left: p, right: p }
    }
}

/// Geometry of one convolution: strides and spatial padding (time is padded by the caller's
/// choice of leading zero frames and cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Stride along time.
    pub stride_t: usize,
    /// Stride along height and width.
    pub stride_hw: usize,
    /// Spatial zero padding.
    pub pad: Padding2d,
}

impl ConvGeometry {
    /// Stride 1 everywhere with `p` pixels of zero padding on each side.
    pub fn padded(p: usize) -> Self {
        Self { stride_t: 1, stride_hw: 1, pad: Padding2d::same(p) }
    }
}

/// Frames a 3-D convolution reads: `lead_zeros` zero frames, then `cache`, then `x`.
pub struct FrameSource<'a> {
    /// Zero frames in front (causal padding not covered by the cache).
    pub lead_zeros: usize,
    /// Earlier input frames kept from the previous call, `[Tc, Cin, H, W]`.
    pub cache: Option<&'a Tensor>,
    /// The new input frames, `[T, Cin, H, W]`.
    pub x: &'a Tensor,
}

/// 2-D convolution applied to each of `x`'s frames: `x` `[N, Cin, H, W]`, `w` `[Cout, Cin, kh, kw]`.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, pad: Padding2d) -> Result<Tensor> {
    let (cout, cin, kh, kw) = w
        .dims4()
        .map_err(|_| NnError::Input(format!("conv2d weight must be [Cout, Cin, kh, kw]; got {:?}", w.dims())))?;
    let w5 = w.reshape((cout, cin, 1, kh, kw))?;
    conv3d(
        &FrameSource { lead_zeros: 0, cache: None, x },
        &w5,
        bias,
        ConvGeometry { stride_t: 1, stride_hw: stride, pad },
    )
}

/// 3-D convolution over `src`'s frames with weight `w` `[Cout, Cin, kt, kh, kw]`; returns
/// `[Tout, Cout, Ho, Wo]` with `Tout = (frames − kt)/stride_t + 1`.
pub fn conv3d(src: &FrameSource<'_>, w: &Tensor, bias: Option<&Tensor>, geo: ConvGeometry) -> Result<Tensor> {
    let plan = ConvPlan::new(src, w, bias, geo)?;
    let mut ts = vec![src.x, w];
    if let Some(c) = src.cache {
        ts.push(c);
    }
    if let Some(b) = bias {
        ts.push(b);
    }
    if fast_applies(&ts) {
        fused_cpu(&plan, src, w, bias)
    } else if cpu_half(&ts) {
        // candle has no CPU half-precision matmul: compute in f32, store in the input's dtype.
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let (x, cache, w32) = (f(src.x)?, src.cache.map(f).transpose()?, f(w)?);
        let b32 = bias.map(f).transpose()?;
        let src32 = FrameSource { lead_zeros: src.lead_zeros, cache: cache.as_ref(), x: &x };
        Ok(fused_cpu(&plan, &src32, &w32, b32.as_ref())?.to_dtype(src.x.dtype())?)
    } else if training_on_cpu(&ts) && crate::fused_grad::applies(src.x) {
        crate::fused_grad::conv3d_train(&plan, src, w, bias)
    } else if training_on_cpu(&ts) {
        unfold_matmul(&plan, src, w, bias)
    } else {
        composite(&plan, src, w, bias)
    }
}

/// Autograd on the CPU: candle's conv2d backward goes through a direct transposed convolution
/// that is tens of times slower than a matrix product, so training takes the unfold path.
fn training_on_cpu(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32) && ts.iter().any(|t| t.track_op())
}

/// Shapes of one convolution call, checked once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvPlan {
    pub(crate) cin: usize,
    pub(crate) cout: usize,
    pub(crate) kt: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    pub(crate) frames_out: usize,
    pub(crate) geo: ConvGeometry,
}

impl ConvPlan {
    pub(crate) fn new(src: &FrameSource<'_>, w: &Tensor, bias: Option<&Tensor>, geo: ConvGeometry) -> Result<Self> {
        let (t, cin, h, wd) = src
            .x
            .dims4()
            .map_err(|_| NnError::Input(format!("convolution input must be [T, C, H, W]; got {:?}", src.x.dims())))?;
        let dims = w.dims();
        if dims.len() != 5 {
            return Err(NnError::Input(format!("conv3d weight must be [Cout, Cin, kt, kh, kw]; got {dims:?}")));
        }
        let (cout, wcin, kt, kh, kw) = (dims[0], dims[1], dims[2], dims[3], dims[4]);
        if wcin != cin {
            return Err(NnError::Input(format!(
                "convolution expects {wcin} input channels but the input has {cin} (shape {:?})",
                src.x.dims()
            )));
        }
        let mut frames_in = src.lead_zeros + t;
        if let Some(c) = src.cache {
            let (ct, cc, ch, cw) = c.dims4()?;
            if (cc, ch, cw) != (cin, h, wd) {
                return Err(NnError::Input(format!(
                    "convolution cache {:?} does not match input frames {:?}",
                    c.dims(),
                    src.x.dims()
                )));
            }
            frames_in += ct;
        }
        if let Some(b) = bias {
            if b.dims() != [cout] {
                return Err(NnError::Input(format!("convolution bias must be [{cout}]; got {:?}", b.dims())));
            }
        }
        if geo.stride_t == 0 || geo.stride_hw == 0 {
            return Err(NnError::Input("convolution stride must be at least 1".into()));
        }
        let hp = h + geo.pad.top + geo.pad.bottom;
        let wp = wd + geo.pad.left + geo.pad.right;
        if frames_in < kt || hp < kh || wp < kw {
            return Err(NnError::Input(format!(
                "convolution kernel {kt}×{kh}×{kw} is larger than its padded input {frames_in}×{hp}×{wp}"
            )));
        }
        Ok(Self {
            cin,
            cout,
            kt,
            kh,
            kw,
            h,
            w: wd,
            ho: (hp - kh) / geo.stride_hw + 1,
            wo: (wp - kw) / geo.stride_hw + 1,
            frames_out: (frames_in - kt) / geo.stride_t + 1,
            geo,
        })
    }

    pub(crate) fn k(&self) -> usize {
        self.cin * self.kt * self.kh * self.kw
    }

    /// A plain matrix product: the input frame itself is the GEMM operand.
    fn is_pointwise(&self) -> bool {
        self.kt == 1 && self.kh == 1 && self.kw == 1 && self.geo.stride_hw == 1 && self.geo.pad == Padding2d::default()
    }
}

fn cpu_half(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| matches!(t.device(), Device::Cpu) && matches!(t.dtype(), DType::BF16 | DType::F16) && !t.track_op())
}

fn fast_applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && !t.track_op())
}

/// A contiguous f32 CPU tensor kept alive alongside a pointer to its first element.
pub(crate) struct CpuF32 {
    _keep: Tensor,
    ptr: *const f32,
    len: usize,
}

// SAFETY: candle tensors are immutable once built; the pointer targets storage owned by `_keep`.
unsafe impl Send for CpuF32 {}
unsafe impl Sync for CpuF32 {}

impl CpuF32 {
    pub(crate) fn new(t: &Tensor) -> Result<Self> {
        let t = t.contiguous()?;
        let (ptr, len) = {
            let (storage, layout) = t.storage_and_layout();
            match &*storage {
                candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
                    let start = layout.start_offset();
                    (v[start..start + t.elem_count()].as_ptr(), t.elem_count())
                }
                _ => return Err(NnError::Input("CPU kernel expects f32 CPU storage".into())),
            }
        };
        Ok(Self { _keep: t, ptr, len })
    }

    pub(crate) fn slice(&self) -> &[f32] {
        // SAFETY: `ptr..ptr+len` lies in the storage of `_keep`, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Panel budget per thread, in floats (≈ 2 MiB: stays in L2/L3 while the GEMM streams it).
pub(crate) const PANEL_FLOATS: usize = 1 << 19;

thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn fused_cpu(plan: &ConvPlan, src: &FrameSource<'_>, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let p = *plan;
    let x = CpuF32::new(src.x)?;
    let cache = src.cache.map(CpuF32::new).transpose()?;
    let cache_frames = src.cache.map(|c| c.dims()[0]).unwrap_or(0);
    let wt = CpuF32::new(w)?;
    let b = bias.map(CpuF32::new).transpose()?;
    let frame_len = p.cin * p.h * p.w;

    let frame = |vt: usize| -> Option<&[f32]> {
        if vt < src.lead_zeros {
            return None;
        }
        let i = vt - src.lead_zeros;
        if i < cache_frames {
            let c = cache.as_ref().map(|c| c.slice()).unwrap_or(&[]);
            Some(&c[i * frame_len..(i + 1) * frame_len])
        } else {
            let j = i - cache_frames;
            Some(&x.slice()[j * frame_len..(j + 1) * frame_len])
        }
    };
    let out = fused_frames(&p, &frame, wt.slice(), b.as_ref().map(|b| b.slice()));
    Ok(Tensor::from_vec(out, (p.frames_out, p.cout, p.ho, p.wo), src.x.device())?)
}

/// The tiled implicit-GEMM convolution over frames given by `frame` (a virtual frame index to
/// its `[Cin, H, W]` data, or `None` for a zero frame); returns `[Tout, Cout, Ho, Wo]` data.
pub(crate) fn fused_frames<'a, F>(p: &ConvPlan, frame: &F, w: &[f32], b: Option<&[f32]>) -> Vec<f32>
where
    F: Fn(usize) -> Option<&'a [f32]> + Sync,
{
    let p = *p;
    let out_plane = p.ho * p.wo;
    let out_frame = p.cout * out_plane;
    let k = p.k();
    // Tiles of whole output rows when a row fits the budget, else column tiles within a row.
    let tile = (PANEL_FLOATS / k.max(1)).clamp(64, out_plane.max(64)).min(out_plane);
    let tiles_per_frame = out_plane.div_ceil(tile);
    // Small frames give few pixel tiles; split the output channels too so every thread has work
    // (each channel block re-gathers its panel, which is cheap next to the GEMM).
    let threads = rayon::current_num_threads().max(1);
    let pixel_tasks = p.frames_out * tiles_per_frame;
    let m_blocks = if pixel_tasks >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(pixel_tasks).min(p.cout.div_ceil(16)).max(1)
    };
    let m_step = p.cout.div_ceil(m_blocks);
    let mut out = vec![0f32; p.frames_out * out_frame];
    let out_ptr = SendPtr(out.as_mut_ptr());

    (0..pixel_tasks * m_blocks).into_par_iter().for_each(|task| {
        let (task, mb) = (task / m_blocks, task % m_blocks);
        let (to, ti) = (task / tiles_per_frame, task % tiles_per_frame);
        let m0 = mb * m_step;
        let m1 = (m0 + m_step).min(p.cout);
        if m0 >= m1 {
            return;
        }
        let p0 = ti * tile;
        let p1 = (p0 + tile).min(out_plane);
        let n = p1 - p0;
        let dst = out_ptr.add(to * out_frame + m0 * out_plane + p0);
        // Bias first, then the GEMM accumulates onto it.
        if let Some(b) = b {
            for (co, &bv) in b[m0..m1].iter().enumerate() {
                // SAFETY: rows m0..m1, columns p0..p1 of output frame `to` belong to this task only.
                unsafe { std::slice::from_raw_parts_mut(dst.add(co * out_plane), n) }.fill(bv);
            }
        }
        let taps: Vec<Option<&[f32]>> = (0..p.kt).map(|dt| frame(to * p.geo.stride_t + dt)).collect();
        PANEL.with(|cell| {
            let mut panel = cell.borrow_mut();
            let (rhs, rhs_rs): (*const f32, isize) = if p.is_pointwise() {
                match taps[0] {
                    Some(f) => (f[p0..].as_ptr(), (p.h * p.w) as isize),
                    None => return,
                }
            } else {
                if panel.len() < k * n {
                    panel.resize(k * n, 0.0);
                }
                gather_panel(&p, &taps, p0, p1, &mut panel[..k * n]);
                (panel.as_ptr(), n as isize)
            };
            // SAFETY: dst rows are `out_plane` apart and columns p0..p1 belong to this task; lhs is
            // the weight matrix [Cout, K] and rhs the [K, n] panel (or the input frame rows).
            unsafe {
                gemm::gemm(
                    m1 - m0,
                    n,
                    k,
                    dst,
                    1,
                    out_plane as isize,
                    b.is_some(),
                    w[m0 * k..].as_ptr(),
                    1,
                    k as isize,
                    rhs,
                    1,
                    rhs_rs,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    });
    out
}

/// An output buffer shared by parallel tasks that each write their own disjoint region.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint regions of the output buffer.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn add(self, off: usize) -> *mut f32 {
        // SAFETY: callers stay inside the output buffer.
        unsafe { self.0.add(off) }
    }
}

/// Fills `panel` `[Cin·kt·kh·kw, p1−p0]` with the input values each output pixel p0..p1 reads
/// (row order matches the weight layout `[Cin, kt, kh, kw]`); out-of-frame taps read zero.
pub(crate) fn gather_panel(p: &ConvPlan, taps: &[Option<&[f32]>], p0: usize, p1: usize, panel: &mut [f32]) {
    let n = p1 - p0;
    let s = p.geo.stride_hw;
    let plane = p.h * p.w;
    let mut row = 0usize;
    for ci in 0..p.cin {
        for tap in taps {
            for dh in 0..p.kh {
                for dw in 0..p.kw {
                    let dst = &mut panel[row * n..(row + 1) * n];
                    row += 1;
                    let Some(f) = tap else {
                        dst.fill(0.0);
                        continue;
                    };
                    let chan = &f[ci * plane..(ci + 1) * plane];
                    let mut q = p0;
                    while q < p1 {
                        let (oh, ow0) = (q / p.wo, q % p.wo);
                        let ow1 = (p.wo).min(ow0 + (p1 - q));
                        let seg = &mut dst[q - p0..q - p0 + (ow1 - ow0)];
                        let ih = (oh * s + dh) as isize - p.geo.pad.top as isize;
                        if ih < 0 || ih >= p.h as isize {
                            seg.fill(0.0);
                        } else {
                            let src_row = &chan[ih as usize * p.w..(ih as usize + 1) * p.w];
                            copy_row(src_row, seg, ow0, s, dw as isize - p.geo.pad.left as isize);
                        }
                        q += ow1 - ow0;
                    }
                }
            }
        }
    }
}

/// seg[i] = src[(ow0 + i)·s + off], zero where that index falls outside the row.
fn copy_row(src: &[f32], seg: &mut [f32], ow0: usize, s: usize, off: isize) {
    let wlen = src.len() as isize;
    let n = seg.len();
    // First and last i whose source index is inside the row.
    let idx = |i: usize| (ow0 + i) as isize * s as isize + off;
    let mut lo = 0usize;
    while lo < n && idx(lo) < 0 {
        lo += 1;
    }
    let mut hi = n;
    while hi > lo && idx(hi - 1) >= wlen {
        hi -= 1;
    }
    seg[..lo].fill(0.0);
    seg[hi..].fill(0.0);
    if hi > lo {
        let start = idx(lo) as usize;
        if s == 1 {
            seg[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
        } else {
            for (i, d) in seg[lo..hi].iter_mut().enumerate() {
                *d = src[start + i * s];
            }
        }
    }
}

/// The same convolution as unfold + one batched matrix product, built only from ops whose
/// backward is itself a gather or a matrix product: the input's shifted views for every tap are
/// stacked into `[To, Cin·K, Ho·Wo]` columns and multiplied by the weight as `[Cout, Cin·K]`.
fn unfold_matmul(plan: &ConvPlan, src: &FrameSource<'_>, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let p = *plan;
    // index_select needs a contiguous source; an unpadded input can be a strided view.
    let frames = padded_frames(&p, src)?.contiguous()?;
    let dev = src.x.device();
    let s = p.geo.stride_hw;
    let rows = |d: usize, n: usize| Tensor::from_vec((0..n).map(|i| (d + i * s) as u32).collect::<Vec<_>>(), n, dev);
    let mut taps = Vec::with_capacity(p.kt * p.kh * p.kw);
    for dt in 0..p.kt {
        let idx: Vec<u32> = (0..p.frames_out).map(|t| (t * p.geo.stride_t + dt) as u32).collect();
        let input = frames.index_select(&Tensor::from_vec(idx, p.frames_out, dev)?, 0)?;
        for dy in 0..p.kh {
            let band = if s == 1 { input.narrow(2, dy, p.ho)? } else { input.index_select(&rows(dy, p.ho)?, 2)? };
            for dx in 0..p.kw {
                taps.push(if s == 1 { band.narrow(3, dx, p.wo)? } else { band.index_select(&rows(dx, p.wo)?, 3)? });
            }
        }
    }
    let k = taps.len();
    // [To, Cin, K, Ho, Wo]: channel-major then tap, the order of the weight's [Cin, kt, kh, kw].
    let cols = Tensor::stack(&taps, 2)?.reshape((p.frames_out, p.cin * k, p.ho * p.wo))?;
    let w2 = w.reshape((p.cout, p.cin * k))?;
    let mut out = w2.broadcast_matmul(&cols)?.reshape((p.frames_out, p.cout, p.ho, p.wo))?;
    if let Some(b) = bias {
        out = out.broadcast_add(&b.reshape((1, p.cout, 1, 1))?)?;
    }
    Ok(out)
}

/// Zero frames, cache and input back to back, spatially zero-padded.
fn padded_frames(p: &ConvPlan, src: &FrameSource<'_>) -> Result<Tensor> {
    let mut parts = Vec::new();
    if src.lead_zeros > 0 {
        parts.push(Tensor::zeros((src.lead_zeros, p.cin, p.h, p.w), src.x.dtype(), src.x.device())?);
    }
    if let Some(c) = src.cache {
        parts.push(c.clone());
    }
    parts.push(src.x.clone());
    let frames = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 0)? };
    let pad = p.geo.pad;
    Ok(frames.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?)
}

/// The same convolution as candle ops: zero frames and cache concatenated, one conv2d per tap.
fn composite(plan: &ConvPlan, src: &FrameSource<'_>, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let p = *plan;
    let frames = padded_frames(&p, src)?;
    let mut acc: Option<Tensor> = None;
    for dt in 0..p.kt {
        let idx: Vec<u32> = (0..p.frames_out).map(|t| (t * p.geo.stride_t + dt) as u32).collect();
        let idx = Tensor::from_vec(idx, p.frames_out, src.x.device())?;
        let input = frames.index_select(&idx, 0)?;
        let wk = w.narrow(2, dt, 1)?.squeeze(2)?.contiguous()?;
        let y = input.conv2d(&wk, 0, p.geo.stride_hw, 1, 1)?;
        acc = Some(match acc {
            None => y,
            Some(a) => (a + y)?,
        });
    }
    let mut out = acc.ok_or_else(|| NnError::Input("convolution kernel has no temporal taps".into()))?;
    if let Some(b) = bias {
        out = out.broadcast_add(&b.reshape((1, p.cout, 1, 1))?)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// The fused kernel against the candle composite, over strides, paddings, caches and zeros.
    #[test]
    fn fused_matches_composite() {
        let cases = [
            // (T, Cin, Cout, H, W, kt, kh, kw, lead, cache, stride_t, stride_hw, pad)
            (3, 4, 5, 7, 9, 3, 3, 3, 2, 0, 1, 1, Padding2d::same(1)),
            (2, 4, 5, 7, 9, 3, 3, 3, 0, 2, 1, 1, Padding2d::same(1)),
            (1, 4, 5, 7, 9, 3, 3, 3, 1, 1, 1, 1, Padding2d::same(1)),
            (4, 6, 3, 5, 6, 3, 1, 1, 0, 1, 2, 1, Padding2d::default()),
            (2, 6, 7, 8, 10, 1, 3, 3, 0, 0, 1, 2, Padding2d { top: 0, bottom: 1, left: 0, right: 1 }),
            (2, 6, 7, 8, 10, 1, 1, 1, 0, 0, 1, 1, Padding2d::default()),
            (1, 3, 2, 33, 70, 1, 3, 3, 0, 0, 1, 1, Padding2d::same(1)),
        ];
        for (i, &(t, cin, cout, h, w, kt, kh, kw, lead, cache_t, st, sh, pad)) in cases.iter().enumerate() {
            let x = rand(&[t, cin, h, w], i as u64);
            let cache = (cache_t > 0).then(|| rand(&[cache_t, cin, h, w], 100 + i as u64));
            let wt = rand(&[cout, cin, kt, kh, kw], 200 + i as u64);
            let b = rand(&[cout], 300 + i as u64);
            let src = FrameSource { lead_zeros: lead, cache: cache.as_ref(), x: &x };
            let geo = ConvGeometry { stride_t: st, stride_hw: sh, pad };
            let plan = ConvPlan::new(&src, &wt, Some(&b), geo).unwrap();
            let fast = fused_cpu(&plan, &src, &wt, Some(&b)).unwrap();
            let slow = composite(&plan, &src, &wt, Some(&b)).unwrap();
            assert!(max_diff(&fast, &slow) < 1e-4, "case {i}: {}", max_diff(&fast, &slow));
            let nob = fused_cpu(&plan, &src, &wt, None).unwrap();
            let nob_slow = composite(&plan, &src, &wt, None).unwrap();
            assert!(max_diff(&nob, &nob_slow) < 1e-4, "case {i} without bias");
            let unfold = unfold_matmul(&plan, &src, &wt, Some(&b)).unwrap();
            assert!(max_diff(&unfold, &slow) < 1e-4, "case {i}: unfold {}", max_diff(&unfold, &slow));
        }
    }

    /// Both training paths (the GEMM-backward op and the unfold form) give candle's own conv
    /// gradients, for input, cache, weights and bias.
    #[test]
    fn training_gradients_match_composite() {
        use candle_core::Var;
        let cases = [
            (2, 3, 4, 6, 7, 3, 3, 3, 1, 1, 1, 1, Padding2d::same(1)),
            (4, 3, 2, 8, 8, 1, 3, 3, 0, 0, 1, 2, Padding2d { top: 0, bottom: 1, left: 0, right: 1 }),
            (4, 2, 3, 5, 5, 3, 1, 1, 0, 1, 2, 1, Padding2d::default()),
            // Causal padding only: the first output frame reads two zero frames.
            (3, 5, 6, 9, 11, 3, 3, 3, 2, 0, 1, 1, Padding2d::same(1)),
            // More output pixels than one panel tile holds, so the weight gradient sums tiles.
            (2, 16, 3, 40, 70, 3, 3, 3, 2, 0, 1, 1, Padding2d::same(1)),
        ];
        for (i, &(t, cin, cout, h, w, kt, kh, kw, lead, cache_t, st, sh, pad)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&rand(&[t, cin, h, w], i as u64)).unwrap();
            let cache = (cache_t > 0).then(|| Var::from_tensor(&rand(&[cache_t, cin, h, w], 10 + i as u64)).unwrap());
            let wt = Var::from_tensor(&rand(&[cout, cin, kt, kh, kw], 20 + i as u64)).unwrap();
            let b = Var::from_tensor(&rand(&[cout], 30 + i as u64)).unwrap();
            let src = FrameSource { lead_zeros: lead, cache: cache.as_ref().map(|c| c.as_tensor()), x: x.as_tensor() };
            let geo = ConvGeometry { stride_t: st, stride_hw: sh, pad };
            let plan = ConvPlan::new(&src, &wt, Some(&b), geo).unwrap();
            let y_ref = composite(&plan, &src, &wt, Some(&b)).unwrap();
            let probe = rand(y_ref.dims(), 40 + i as u64);
            let g_ref = (&y_ref * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let paths = [
                ("gemm backward", crate::fused_grad::conv3d_train(&plan, &src, &wt, Some(&b)).unwrap()),
                ("unfold", unfold_matmul(&plan, &src, &wt, Some(&b)).unwrap()),
            ];
            for (path, y) in paths {
                assert!(max_diff(&y, &y_ref) < 1e-4, "case {i}, {path}: forward differs by {}", max_diff(&y, &y_ref));
                let g = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let mut checked = vec![(x.as_tensor(), "input"), (wt.as_tensor(), "weight"), (b.as_tensor(), "bias")];
                if let Some(c) = cache.as_ref() {
                    checked.push((c.as_tensor(), "cache"));
                }
                for (v, name) in checked {
                    let (a, r) = (g.get(v).unwrap(), g_ref.get(v).unwrap());
                    assert!(max_diff(a, r) < 1e-3, "case {i}, {path}: {name} gradient differs by {}", max_diff(a, r));
                }
            }
        }
    }

    #[test]
    fn wrong_channels_is_an_error() {
        let x = rand(&[1, 3, 4, 4], 1);
        let w = rand(&[2, 4, 3, 3], 2);
        let err = conv2d(&x, &w, None, 1, Padding2d::same(1)).unwrap_err().to_string();
        assert!(err.contains("4 input channels") && err.contains('3'), "{err}");
    }
}

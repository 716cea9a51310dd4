//! The causal 3-D convolution with its own backward pass, for training on the CPU.
//!
//! Under autograd candle's conv2d backward is a direct transposed convolution, and the unfold
//! form in [`crate::conv`] spends its backward zero-filling one full-size gradient per kernel
//! tap: at the toy VAE's shapes a training step ran at 3–10 GFLOP/s against 60–80 for the
//! inference forward. Here the forward is the inference kernel and the backward is GEMMs over the
//! same gathered input panels: the weight gradient dW = Σ dy·colsᵀ, and the input gradient as the
//! columns Wᵀ·dy scattered back onto the frames they were gathered from.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_inputs, with_f32};
use crate::conv::{fused_frames, gather_panel, ConvPlan, FrameSource, SendPtr, PANEL_FLOATS};
use crate::error::Result;

/// `conv3d` under autograd on the CPU: cache and input become one frame tensor, the leading
/// zero frames stay virtual, and a zero bias stands in when there is none.
pub(crate) fn conv3d_train(
    plan: &ConvPlan,
    src: &FrameSource<'_>,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let frames = match src.cache {
        Some(c) => Tensor::cat(&[c, src.x], 0)?,
        None => src.x.clone(),
    }
    .contiguous()?;
    let bias = match bias {
        Some(b) => b.contiguous()?,
        None => Tensor::zeros(plan.cout, DType::F32, src.x.device())?,
    };
    Ok(frames.apply_op3(&w.contiguous()?, &bias, ConvTrain { plan: *plan, lead_zeros: src.lead_zeros })?)
}

struct ConvTrain {
    plan: ConvPlan,
    lead_zeros: usize,
}

impl ConvTrain {
    /// The `[Cin, H, W]` data of virtual frame `vt`, or `None` for a leading zero frame.
    fn frame<'a>(&self, frames: &'a [f32], vt: usize) -> Option<&'a [f32]> {
        let len = self.plan.cin * self.plan.h * self.plan.w;
        let i = vt.checked_sub(self.lead_zeros)?;
        Some(&frames[i * len..(i + 1) * len])
    }

    fn out_shape(&self) -> Shape {
        let p = &self.plan;
        Shape::from((p.frames_out, p.cout, p.ho, p.wo))
    }

    /// dW `[Cout, K]`: for each output frame and pixel tile, the tile of dy times the transposed
    /// input panel, summed in per-thread accumulators.
    fn weight_grad(&self, frames: &[f32], g: &[f32]) -> Vec<f32> {
        let p = self.plan;
        let k = p.k();
        let plane = p.ho * p.wo;
        let tile = (PANEL_FLOATS / k.max(1)).clamp(64, plane.max(64)).min(plane);
        let tiles = plane.div_ceil(tile);
        let zero = || (vec![0f32; p.cout * k], Vec::<f32>::new());
        (0..p.frames_out * tiles)
            .into_par_iter()
            .fold(zero, |(mut acc, mut panel), task| {
                let (to, ti) = (task / tiles, task % tiles);
                let (p0, p1) = (ti * tile, ((ti + 1) * tile).min(plane));
                let n = p1 - p0;
                let taps: Vec<Option<&[f32]>> =
                    (0..p.kt).map(|dt| self.frame(frames, to * p.geo.stride_t + dt)).collect();
                if taps.iter().all(Option::is_none) {
                    return (acc, panel);
                }
                panel.resize(k * n, 0.0);
                gather_panel(&p, &taps, p0, p1, &mut panel[..k * n]);
                let dy = &g[to * p.cout * plane + p0..];
                // SAFETY: acc is [Cout, K]; dy rows are `plane` apart with n columns each; the panel
                // is [K, n], read transposed (pixel stride 1, row stride n).
                unsafe {
                    gemm::gemm(
                        p.cout,
                        k,
                        n,
                        acc.as_mut_ptr(),
                        1,
                        k as isize,
                        true,
                        dy.as_ptr(),
                        1,
                        plane as isize,
                        panel.as_ptr(),
                        n as isize,
                        1,
                        1.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                (acc, panel)
            })
            .map(|(acc, _)| acc)
            .reduce(
                || vec![0f32; p.cout * k],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            )
    }

    /// dx for the real (not leading-zero) frames: per output frame, the columns Wᵀ·dy `[K, Ho·Wo]`
    /// are added back where the forward gathered them, one input channel per parallel task.
    fn input_grad(&self, frames: &[f32], w: &[f32], g: &[f32]) -> Vec<f32> {
        let p = self.plan;
        let k = p.k();
        let plane = p.ho * p.wo;
        let in_plane = p.h * p.w;
        let frame_len = p.cin * in_plane;
        let mut dx = vec![0f32; frames.len()];
        let mut cols = vec![0f32; k * plane];
        let dx_ptr = SendPtr(dx.as_mut_ptr());
        let threads = rayon::current_num_threads().max(1);
        for to in 0..p.frames_out {
            let reaches_real = (0..p.kt).any(|dt| to * p.geo.stride_t + dt >= self.lead_zeros);
            if !reaches_real {
                continue;
            }
            // SAFETY: cols is [K, plane]; w is [Cout, K] read transposed; dy is [Cout, plane].
            unsafe {
                gemm::gemm(
                    k,
                    plane,
                    p.cout,
                    cols.as_mut_ptr(),
                    1,
                    plane as isize,
                    false,
                    w.as_ptr(),
                    k as isize,
                    1,
                    g[to * p.cout * plane..].as_ptr(),
                    1,
                    plane as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                );
            }
            let cols = &cols;
            (0..p.cin).into_par_iter().for_each(|ci| {
                for dt in 0..p.kt {
                    let Some(f) = (to * p.geo.stride_t + dt).checked_sub(self.lead_zeros) else { continue };
                    let base = f * frame_len + ci * in_plane;
                    // SAFETY: this task alone writes channel `ci` of every frame.
                    let chan = unsafe { std::slice::from_raw_parts_mut(dx_ptr.add(base), in_plane) };
                    for dy in 0..p.kh {
                        for dxk in 0..p.kw {
                            let r = ((ci * p.kt + dt) * p.kh + dy) * p.kw + dxk;
                            scatter_tap(&p, &cols[r * plane..(r + 1) * plane], chan, dy, dxk);
                        }
                    }
                }
            });
        }
        dx
    }
}

/// Adds one tap's column row `[Ho·Wo]` onto the input channel plane it was gathered from.
fn scatter_tap(p: &ConvPlan, row: &[f32], chan: &mut [f32], dy: usize, dx: usize) {
    let s = p.geo.stride_hw;
    let (top, left) = (p.geo.pad.top as isize, p.geo.pad.left as isize);
    // Output columns whose input column (ow·s + dx − left) lies inside the frame.
    let lo = ((left - dx as isize).max(0) as usize).div_ceil(s);
    let hi = if p.w as isize + left - dx as isize <= 0 {
        0
    } else {
        ((p.w as isize + left - dx as isize - 1) as usize / s + 1).min(p.wo)
    };
    if hi <= lo {
        return;
    }
    for oh in 0..p.ho {
        let ih = (oh * s + dy) as isize - top;
        if ih < 0 || ih >= p.h as isize {
            continue;
        }
        let src = &row[oh * p.wo..(oh + 1) * p.wo];
        let dst = &mut chan[ih as usize * p.w..(ih as usize + 1) * p.w];
        let iw0 = (lo * s + dx) as isize - left;
        if s == 1 {
            let d = &mut dst[iw0 as usize..iw0 as usize + (hi - lo)];
            d.iter_mut().zip(&src[lo..hi]).for_each(|(a, b)| *a += b);
        } else {
            for (i, v) in src[lo..hi].iter().enumerate() {
                dst[iw0 as usize + i * s] += v;
            }
        }
    }
}

impl CustomOp3 for ConvTrain {
    fn name(&self) -> &'static str {
        "storyreel-conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [frames, w, b] = f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let out = fused_frames(&self.plan, &|vt| self.frame(frames, vt), w, Some(b));
        Ok((CpuStorage::F32(out), self.out_shape()))
    }

    fn bwd(
        &self,
        frames: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let p = self.plan;
        let (dx, dw, db) = with_f32(self.name(), [frames, w, grad], |[x, wt, g]| {
            let plane = p.ho * p.wo;
            let db: Vec<f32> = (0..p.cout)
                .map(|co| {
                    (0..p.frames_out)
                        .map(|to| g[(to * p.cout + co) * plane..(to * p.cout + co + 1) * plane].iter().sum::<f32>())
                        .sum()
                })
                .collect();
            Ok((self.input_grad(x, wt, g), self.weight_grad(x, g), db))
        })?;
        Ok((
            Some(Tensor::from_vec(dx, frames.shape(), frames.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

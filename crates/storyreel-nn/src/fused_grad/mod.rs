//! CPU kernels with their own backward pass for the ops training spends its time in: the
//! attention softmax and GELU-tanh here, the normalisations in [`norm`] and the scaled residual
//! adds in [`residual`].
//!
//! Under autograd, candle runs softmax as five ops (max, subtract, exp, sum, divide) and GELU-tanh
//! as four; their backward passes add a dozen more full passes, each allocating and zero-filling
//! a gradient the size of the attention scores. Profiling a toy teacher step put 40% of its time
//! there. Each op here is one parallel pass forward and one backward (dx = y·(dy − Σ dy·y) for
//! softmax; dx = dy·gelu′(x) for GELU), registered with candle's autograd as a custom op.
//!
//! The normalisations and residual adds matter for another reason: their modulation, gate, weight
//! and bias broadcast over rows, and candle's gradient for a broadcast is a strided reduction
//! over a full-size temporary. Here those sums are taken in the same pass as the input gradient.
//! The VAE's convolutions get a backward made of GEMMs in [`conv`], and its channel RMS norm a
//! one-pass backward in [`channel_norm`].
//!
//! They apply to f32 tensors on the CPU; elsewhere (CUDA, bf16) callers keep the candle ops.
//! [`set_enabled`] switches them off process-wide so benchmarks can time the plain ops.

mod channel_norm;
mod conv;
mod norm;
mod residual;

pub(crate) use channel_norm::rms_norm_channels;
pub(crate) use conv::conv3d_train;

pub use norm::{modulated_layer_norm, rms_norm};
pub use residual::{bias_add, gated_add};

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::attention::{exp_block, exp_nonpositive};
use crate::error::Result;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused training kernels on or off for the whole process (on by default).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused training kernels serve `t`: enabled, f32 and on the CPU.
pub fn applies(t: &Tensor) -> bool {
    ENABLED.load(Ordering::Relaxed) && matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// Whether the fused training kernels serve all of `ts`.
pub fn applies_all(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| applies(t))
}

/// Elements per parallel task for elementwise kernels.
const ELEMENTWISE_CHUNK: usize = 4096;

/// Runs `f` on the contiguous f32 data of each of `ts` (copying only strided inputs).
fn with_f32<R, const N: usize>(
    what: &str,
    ts: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let owned = ts.iter().map(|t| t.contiguous()).collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(N);
    for (storage, layout) in &guards {
        match &**storage {
            Storage::Cpu(s) => slices.push(contiguous_f32(s, layout, what)?),
            _ => candle_core::bail!("{what} runs on the CPU only"),
        }
    }
    f(std::array::from_fn(|i| slices[i]))
}

/// A parallel pass over `out`, rows of width `d` split evenly into `groups` groups that each
/// share a parameter vector (a frame's modulation, or one weight for all rows). `f(group, rows,
/// out_rows, sums)` handles one chunk of rows inside one group and adds its share of `n_sums`
/// per-group sums (each of width `d`) into `sums`. Returns the sums, `n_sums` vectors of `groups·d`.
fn grouped_pass(
    out: &mut [f32],
    d: usize,
    groups: usize,
    n_sums: usize,
    f: impl Fn(usize, Range<usize>, &mut [f32], &mut [Vec<f32>]) + Sync,
) -> Vec<Vec<f32>> {
    let rows = out.len() / d.max(1);
    let group = rows / groups.max(1);
    let chunk_rows = (ELEMENTWISE_CHUNK / d.max(1)).max(1);
    let mut tasks = Vec::new();
    let mut rest = out;
    for g in 0..groups {
        let mut r = g * group;
        let end = if g + 1 == groups { rows } else { r + group };
        while r < end {
            let e = (r + chunk_rows).min(end);
            let (head, tail) = std::mem::take(&mut rest).split_at_mut((e - r) * d);
            tasks.push((g, r..e, head));
            rest = tail;
            r = e;
        }
    }
    let partials: Vec<(usize, Vec<Vec<f32>>)> = tasks
        .into_par_iter()
        .map(|(g, rows, chunk)| {
            let mut sums = vec![vec![0f32; d]; n_sums];
            f(g, rows, chunk, &mut sums);
            (g, sums)
        })
        .collect();
    let mut totals = vec![vec![0f32; groups * d]; n_sums];
    for (g, sums) in partials {
        for (total, part) in totals.iter_mut().zip(&sums) {
            for (t, p) in total[g * d..(g + 1) * d].iter_mut().zip(part) {
                *t += p;
            }
        }
    }
    totals
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{what} expects f32 input"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} expects a contiguous input"),
    }
}

/// The contiguous f32 data of a custom op's inputs.
fn f32_inputs<'a, const N: usize>(
    what: &str,
    inputs: [(&'a CpuStorage, &Layout); N],
) -> candle_core::Result<[&'a [f32]; N]> {
    let mut out: [&[f32]; N] = [&[]; N];
    for (o, (storage, layout)) in out.iter_mut().zip(inputs) {
        *o = contiguous_f32(storage, layout, what)?;
    }
    Ok(out)
}

/// The two inputs of a backward kernel (a forward tensor and a gradient), which must be the same size.
fn backward_inputs<'a>(
    what: &str,
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(&'a [f32], &'a [f32])> {
    let (a, b) = (contiguous_f32(s1, l1, what)?, contiguous_f32(s2, l2, what)?);
    if a.len() != b.len() {
        candle_core::bail!("{what}: a gradient of shape {:?} for a tensor of shape {:?}", l2.dims(), l1.dims());
    }
    Ok((a, b))
}

fn row_width(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1).max(1)
}

/// Σ over rows of `data` (rows of width `d`), in parallel.
fn column_sums(data: &[f32], d: usize) -> Vec<f32> {
    let d = d.max(1);
    let chunk = (ELEMENTWISE_CHUNK / d).max(1) * d;
    data.par_chunks(chunk)
        .map(|block| {
            let mut sums = vec![0f32; d];
            for row in block.chunks_exact(d) {
                for (s, &v) in sums.iter_mut().zip(row) {
                    *s += v;
                }
            }
            sums
        })
        .reduce(
            || vec![0f32; d],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x += y;
                }
                a
            },
        )
}

/// Softmax over the last dimension with a fused backward; `x` must be f32 on the CPU.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(SoftmaxLastDim)?)
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "storyreel-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let xs = contiguous_f32(storage, layout, self.name())?;
        let d = row_width(layout);
        let mut out = xs.to_vec();
        out.par_chunks_mut(d).for_each(|row| {
            let (_, sum) = exp_block(row, f32::NEG_INFINITY);
            let inv = 1.0 / sum;
            for v in row.iter_mut() {
                *v *= inv;
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&grad, &SOFTMAX_BACKWARD)?))
    }
}

/// dx = y·(dy − Σ dy·y) per row, from the softmax's output y and its gradient dy.
const SOFTMAX_BACKWARD: BackwardKernel =
    BackwardKernel { name: "storyreel-softmax-last-dim-backward", by_row: true, chunk: softmax_backward_row };

fn softmax_backward_row(y: &[f32], g: &[f32], o: &mut [f32]) {
    let dot = dot_lanes(y, g);
    for i in 0..o.len() {
        o[i] = y[i] * (g[i] - dot);
    }
}

/// A backward kernel out = f(forward tensor, gradient), run over matching chunks in parallel:
/// whole rows of the last dimension, or fixed-size chunks for elementwise kernels.
struct BackwardKernel {
    name: &'static str,
    by_row: bool,
    chunk: fn(&[f32], &[f32], &mut [f32]),
}

impl CustomOp2 for BackwardKernel {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (xs, gs) = backward_inputs(self.name, s1, l1, s2, l2)?;
        let n = if self.by_row { row_width(l1) } else { ELEMENTWISE_CHUNK };
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(n).zip(xs.par_chunks(n).zip(gs.par_chunks(n))).for_each(|(o, (x, g))| (self.chunk)(x, g, o));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Σ a·b with independent lane sums, so the loop vectorises.
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            lanes[i] += x[i] * y[i];
        }
    }
    tail + lanes.iter().sum::<f32>()
}

/// √(2/π).
const GELU_C: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
const GELU_A: f32 = 0.044_715;

/// tanh for any x via exp of a non-positive argument (branch-free, vectorisable).
#[inline(always)]
pub(crate) fn tanh_fast(x: f32) -> f32 {
    let e = exp_nonpositive(-2.0 * x.abs());
    let t = (1.0 - e) / (1.0 + e);
    t.copysign(x)
}

/// GELU-tanh of one value: 0.5·u·(1 + tanh(√(2/π)·(u + 0.044715·u³))).
#[inline(always)]
pub(crate) fn gelu_tanh_value(u: f32) -> f32 {
    0.5 * u * (1.0 + tanh_fast(GELU_C * (u + GELU_A * u * u * u)))
}

/// d/du of [`gelu_tanh_value`].
#[inline(always)]
fn gelu_tanh_slope(u: f32) -> f32 {
    let th = tanh_fast(GELU_C * (u + GELU_A * u * u * u));
    0.5 * (1.0 + th) + 0.5 * u * (1.0 - th * th) * GELU_C * (1.0 + 3.0 * GELU_A * u * u)
}

/// GELU-tanh with a fused backward; `u` must be f32 on the CPU.
pub fn gelu_tanh(u: &Tensor) -> Result<Tensor> {
    Ok(u.contiguous()?.apply_op1(GeluTanh)?)
}

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "storyreel-gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let us = contiguous_f32(storage, layout, self.name())?;
        let mut out = vec![0f32; us.len()];
        out.par_chunks_mut(ELEMENTWISE_CHUNK).zip(us.par_chunks(ELEMENTWISE_CHUNK)).for_each(|(o, u)| {
            for (oi, &v) in o.iter_mut().zip(u) {
                *oi = gelu_tanh_value(v);
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad, &GELU_TANH_BACKWARD)?))
    }
}

/// dx = dy·gelu′(u), from the GELU's input u and its output's gradient dy.
const GELU_TANH_BACKWARD: BackwardKernel =
    BackwardKernel { name: "storyreel-gelu-tanh-backward", by_row: false, chunk: gelu_tanh_backward_chunk };

fn gelu_tanh_backward_chunk(u: &[f32], g: &[f32], o: &mut [f32]) {
    for i in 0..o.len() {
        o[i] = g[i] * gelu_tanh_slope(u[i]);
    }
}

/// Helpers the kernels' tests share.
#[cfg(test)]
mod test_util {
    use candle_core::{Tensor, Var};

    /// The largest absolute difference between two tensors.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// op(inputs) and the gradient of Σ w·op(inputs) with respect to every input.
    pub fn grads(inputs: &[&Tensor], w: &Tensor, op: impl Fn(&[Tensor]) -> Tensor) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = op(&ts);
        let store = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
        (y.detach(), vars.iter().map(|v| store.get(v.as_tensor()).expect("a gradient").clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::max_diff;
    use super::*;
    use candle_core::Var;

    /// Value and input gradient of Σ w·op(x), through `op`.
    fn value_and_grad(x: &Tensor, w: &Tensor, op: impl Fn(&Tensor) -> Tensor) -> (Tensor, Tensor) {
        let var = Var::from_tensor(x).unwrap();
        let y = op(var.as_tensor());
        let loss = (&y * w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        (y.detach(), grads.get(var.as_tensor()).expect("a gradient").clone())
    }

    #[test]
    fn softmax_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        // Wide rows with large offsets exercise the max subtraction; a strided input the copy.
        let x = (Tensor::randn(0f32, 3.0, (3, 5, 77), &dev).unwrap() + 40.0).unwrap();
        let x = x.transpose(0, 1).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 3, 77), &dev).unwrap();
        let (y, g) = value_and_grad(&x, &w, |t| softmax_last_dim(t).unwrap());
        let (y_ref, g_ref) = value_and_grad(&x, &w, |t| candle_nn::ops::softmax(t, candle_core::D::Minus1).unwrap());
        assert!(max_diff(&y, &y_ref) < 1e-6, "forward {}", max_diff(&y, &y_ref));
        assert!(max_diff(&g, &g_ref) < 1e-5, "backward {}", max_diff(&g, &g_ref));
        let rows = y.sum(candle_core::D::Minus1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(rows.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }

    #[test]
    fn gelu_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.5, (4, 9000), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 9000), &dev).unwrap();
        let (y, g) = value_and_grad(&x, &w, |t| gelu_tanh(t).unwrap());
        let (y_ref, g_ref) = value_and_grad(&x, &w, |t| t.gelu().unwrap());
        assert!(max_diff(&y, &y_ref) < 1e-5, "forward {}", max_diff(&y, &y_ref));
        assert!(max_diff(&g, &g_ref) < 1e-5, "backward {}", max_diff(&g, &g_ref));
    }

    #[test]
    fn gelu_slope_matches_a_central_difference() {
        for i in -400..400 {
            let u = i as f32 * 0.02;
            let h = 1e-2f64;
            let exact = |v: f64| 0.5 * v * (1.0 + (0.797_884_560_8 * (v + 0.044_715 * v * v * v)).tanh());
            let numeric = ((exact(u as f64 + h) - exact(u as f64 - h)) / (2.0 * h)) as f32;
            assert!((gelu_tanh_slope(u) - numeric).abs() < 1e-4, "{u}: {} vs {numeric}", gelu_tanh_slope(u));
        }
    }

    #[test]
    fn they_apply_to_f32_on_the_cpu_only() {
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(applies(&t));
        assert!(!applies(&t.to_dtype(DType::BF16).unwrap()));
    }
}

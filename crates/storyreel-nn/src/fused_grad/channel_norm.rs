//! The VAE's channel RMS norm (optionally followed by SiLU) with its own backward pass.
//!
//! Under autograd candle runs it as six ops whose backward reduces over the channel axis of a
//! frame-major `[T, C, H, W]` tensor, a strided reduction per op; here the forward is the
//! inference kernel and the backward is one pass per pixel block that also sums γ's gradient.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_inputs, with_f32};
use crate::conv::SendPtr;
use crate::error::{NnError, Result};
use crate::vae::ops::{rms_norm_channels_data, PIXEL_BLOCK};

/// Smallest channel norm divided by, as in the inference kernel.
const NORM_FLOOR: f32 = 1e-12;

/// [`crate::vae::ops::rms_norm_channels`] under autograd on the CPU, f32.
pub(crate) fn rms_norm_channels(x: &Tensor, gamma: &Tensor, silu: bool) -> Result<Tensor> {
    let dims = x.dims4()?;
    if gamma.elem_count() != dims.1 {
        return Err(NnError::Input(format!(
            "RMS norm over {} channels got a gamma of shape {:?}",
            dims.1,
            gamma.dims()
        )));
    }
    let gamma = gamma.flatten_all()?.contiguous()?;
    Ok(x.contiguous()?.apply_op2(&gamma, ChannelNorm { silu })?)
}

struct ChannelNorm {
    silu: bool,
}

/// σ(v), stable for large |v|.
fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

impl ChannelNorm {
    /// (frames, channels, pixels per frame) of a `[T, C, H, W]` layout.
    fn dims(layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (t, c, h, w) = layout.shape().dims4()?;
        Ok((t, c, h * w))
    }

    /// dx and dγ. With n = x/‖x‖ and y = √C·γ·n (then SiLU): dn = √C·γ·dy′,
    /// dx = (dn − n·Σ_c dn·n)/‖x‖, dγ = √C·Σ dy′·n over frames and pixels.
    fn backward(&self, x: &[f32], gamma: &[f32], dz: &[f32], dims: (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
        let (t, c, plane) = dims;
        let scale = (c as f32).sqrt();
        let mut dx = vec![0f32; x.len()];
        let dx_ptr = SendPtr(dx.as_mut_ptr());
        let blocks = plane.div_ceil(PIXEL_BLOCK);
        let partials: Vec<Vec<f32>> = (0..t * blocks)
            .into_par_iter()
            .map(|task| {
                let (f, b) = (task / blocks, task % blocks);
                let (p0, p1) = (b * PIXEL_BLOCK, ((b + 1) * PIXEL_BLOCK).min(plane));
                let n = p1 - p0;
                let base = f * c * plane;
                let mut inv = vec![0f32; n];
                for ch in 0..c {
                    for (s, v) in inv.iter_mut().zip(&x[base + ch * plane + p0..base + ch * plane + p1]) {
                        *s += v * v;
                    }
                }
                // Where the norm is floored, y is linear in x and nothing is projected out.
                let mut projected = vec![true; n];
                for (s, keep) in inv.iter_mut().zip(projected.iter_mut()) {
                    let norm = s.sqrt();
                    *keep = norm >= NORM_FLOOR;
                    *s = 1.0 / norm.max(NORM_FLOOR);
                }
                let mut dgamma = vec![0f32; c];
                let mut dot = vec![0f32; n];
                for (ch, dg) in dgamma.iter_mut().enumerate() {
                    let off = base + ch * plane + p0;
                    let gc = scale * gamma[ch];
                    // SAFETY: frame f, channel ch, pixels p0..p1 belong to this task only.
                    let dn = unsafe { std::slice::from_raw_parts_mut(dx_ptr.add(off), n) };
                    for i in 0..n {
                        let unit = x[off + i] * inv[i];
                        let mut d = dz[off + i];
                        if self.silu {
                            let y = gc * unit;
                            let s = sigmoid(y);
                            d *= s * (1.0 + y * (1.0 - s));
                        }
                        *dg += d * unit * scale;
                        dn[i] = d * gc;
                        dot[i] += dn[i] * unit;
                    }
                }
                for ch in 0..c {
                    let off = base + ch * plane + p0;
                    // SAFETY: as above.
                    let dn = unsafe { std::slice::from_raw_parts_mut(dx_ptr.add(off), n) };
                    for i in 0..n {
                        let unit = x[off + i] * inv[i];
                        let along = if projected[i] { dot[i] * unit } else { 0.0 };
                        dn[i] = (dn[i] - along) * inv[i];
                    }
                }
                dgamma
            })
            .collect();
        let mut dgamma = vec![0f32; c];
        for part in partials {
            dgamma.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
        }
        (dx, dgamma)
    }
}

impl CustomOp2 for ChannelNorm {
    fn name(&self) -> &'static str {
        "storyreel-rms-norm-channels"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [x, gamma] = f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        let out = rms_norm_channels_data(x, gamma, Self::dims(l1)?, self.silu);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = Self::dims(x.layout())?;
        let (dx, dgamma) = with_f32(self.name(), [x, gamma, grad], |[xs, gs, dz]| Ok(self.backward(xs, gs, dz, dims)))?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dgamma, gamma.shape(), gamma.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn reference(x: &Tensor, gamma: &Tensor, silu: bool) -> Tensor {
        let c = x.dim(1).unwrap();
        let g = gamma.reshape((1, c, 1, 1)).unwrap();
        let norm = x.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap().maximum(1e-12).unwrap();
        let y = (x.broadcast_div(&norm).unwrap() * (c as f64).sqrt()).unwrap().broadcast_mul(&g).unwrap();
        if silu {
            candle_nn::ops::silu(&y).unwrap()
        } else {
            y
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Output, input gradient and γ gradient match candle's composite, with and without SiLU,
    /// over pixel counts that span several blocks.
    #[test]
    fn matches_the_composite_forward_and_backward() {
        for (silu, (t, c, h, w)) in [(true, (2, 5, 3, 4)), (false, (3, 4, 50, 45)), (true, (1, 7, 48, 48))] {
            let dev = Device::Cpu;
            let x = Var::randn(0f32, 1.0, (t, c, h, w), &dev).unwrap();
            let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, &dev).unwrap()).unwrap();
            let probe = Tensor::randn(0f32, 1.0, (t, c, h, w), &dev).unwrap();
            let y = rms_norm_channels(x.as_tensor(), gamma.as_tensor(), silu).unwrap();
            let y_ref = reference(x.as_tensor(), gamma.as_tensor(), silu);
            assert!(max_diff(&y, &y_ref) < 1e-4, "forward differs by {}", max_diff(&y, &y_ref));
            let g = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&y_ref * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (v, name) in [(x.as_tensor(), "input"), (gamma.as_tensor(), "gamma")] {
                let (a, r) = (g.get(v).unwrap(), g_ref.get(v).unwrap());
                let tol = 1e-3
                    * (1.0
                        + r.abs()
                            .unwrap()
                            .max_keepdim(0)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .max(0)
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap());
                assert!(
                    max_diff(a, r) < tol,
                    "silu {silu}, {c} channels: {name} gradient differs by {}",
                    max_diff(a, r)
                );
            }
        }
    }

    /// An all-zero pixel (the floored norm, where candle's own gradient is NaN) gets a finite
    /// gradient.
    #[test]
    fn zero_pixel_has_a_finite_gradient() {
        let dev = Device::Cpu;
        let mut xv = vec![0.5f32; 2 * 3 * 4];
        xv[..].iter_mut().step_by(4).for_each(|v| *v = 0.0);
        let x = Var::from_tensor(&Tensor::from_vec(xv, (2, 3, 2, 2), &dev).unwrap()).unwrap();
        let gamma = Var::from_tensor(&Tensor::ones(3, candle_core::DType::F32, &dev).unwrap()).unwrap();
        let y = rms_norm_channels(x.as_tensor(), gamma.as_tensor(), true).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        for v in [x.as_tensor(), gamma.as_tensor()] {
            let all = g.get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(all.iter().all(|v| v.is_finite()), "{all:?}");
        }
    }
}

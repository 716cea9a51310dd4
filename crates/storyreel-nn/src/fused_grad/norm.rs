//! LayerNorm with a modulation and RMSNorm with a weight, each one pass forward and one backward.
//!
//! Candle's composite runs the modulated LayerNorm as ten ops (two means, subtract, square, add,
//! sqrt, divide, add one, multiply, add) and RMSNorm as six, each with its own backward, and the
//! modulation's gradient as a strided reduction over a full-size temporary.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};

use super::{f32_inputs, grouped_pass, with_f32};
use crate::error::{NnError, Result};

/// LN(x)·(1 + scale) + shift over the last dimension, with x `[G, P, D]` and scale, shift
/// `[G, 1, D]` (one modulation per group of P rows), with a fused backward; f32 on the CPU.
pub fn modulated_layer_norm(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    let (g, _p, d) = x.dims3()?;
    if scale.dims() != [g, 1, d] || shift.dims() != [g, 1, d] {
        return Err(NnError::Input(format!(
            "modulation of shapes {:?} and {:?} for tokens {:?}",
            scale.dims(),
            shift.dims(),
            x.dims()
        )));
    }
    Ok(x.contiguous()?.apply_op3(&scale.contiguous()?, &shift.contiguous()?, ModulatedLayerNorm { eps })?)
}

/// RMSNorm over the last dimension, x / √(mean(x²) + eps) · weight, with a fused backward; f32
/// on the CPU.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(0);
    if weight.dims() != [d] {
        return Err(NnError::Input(format!("RMSNorm weight of shape {:?} for rows of width {d}", weight.dims())));
    }
    Ok(x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps })?)
}

/// Mean and 1/σ of one row, accumulated in f64 like the inference kernel.
fn row_stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// 1/√(mean(x²) + eps) of one row.
fn row_inv_rms(x: &[f32], eps: f64) -> f32 {
    let ms = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len().max(1) as f64;
    (1.0 / (ms + eps).sqrt()) as f32
}

struct ModulatedLayerNorm {
    eps: f64,
}

impl ModulatedLayerNorm {
    /// dx, dscale and dshift from the inputs and the output's gradient dy.
    fn backward(&self, x: &Tensor, scale: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (g, p, d) = x.dims3()?;
        let mut dx = vec![0f32; x.elem_count()];
        let sums = with_f32("modulated LayerNorm backward", [x, scale, dy], |[xs, sc, dys]| {
            Ok(grouped_pass(&mut dx, d, g, 2, |grp, rows, out, sums| {
                let sc = &sc[grp * d..(grp + 1) * d];
                let (dsc, dsh) = sums.split_at_mut(1);
                let (dsc, dsh) = (&mut dsc[0], &mut dsh[0]);
                for (i, row) in rows.enumerate() {
                    let (xr, gr) = (&xs[row * d..(row + 1) * d], &dys[row * d..(row + 1) * d]);
                    let (mean, inv) = row_stats(xr, self.eps);
                    let (mut mg, mut mgx) = (0f32, 0f32);
                    for j in 0..d {
                        let xhat = (xr[j] - mean) * inv;
                        let gj = gr[j] * (1.0 + sc[j]);
                        mg += gj;
                        mgx += gj * xhat;
                        dsc[j] += gr[j] * xhat;
                        dsh[j] += gr[j];
                    }
                    let (mg, mgx) = (mg / d as f32, mgx / d as f32);
                    let o = &mut out[i * d..(i + 1) * d];
                    for j in 0..d {
                        let xhat = (xr[j] - mean) * inv;
                        o[j] = inv * (gr[j] * (1.0 + sc[j]) - mg - xhat * mgx);
                    }
                }
            }))
        })?;
        let [dsc, dsh]: [Vec<f32>; 2] =
            sums.try_into().map_err(|_| candle_core::Error::Msg("modulated LayerNorm: two sums expected".into()))?;
        Ok((
            Tensor::from_vec(dx, (g, p, d), &Device::Cpu)?,
            Tensor::from_vec(dsc, (g, 1, d), &Device::Cpu)?,
            Tensor::from_vec(dsh, (g, 1, d), &Device::Cpu)?,
        ))
    }
}

impl CustomOp3 for ModulatedLayerNorm {
    fn name(&self) -> &'static str {
        "storyreel-modulated-layer-norm"
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
        let [xs, sc, sh] = f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let (g, _, d) = l1.shape().dims3()?;
        let mut out = vec![0f32; xs.len()];
        grouped_pass(&mut out, d, g, 0, |grp, rows, out, _| {
            let (sc, sh) = (&sc[grp * d..(grp + 1) * d], &sh[grp * d..(grp + 1) * d]);
            for (i, row) in rows.enumerate() {
                let xr = &xs[row * d..(row + 1) * d];
                let (mean, inv) = row_stats(xr, self.eps);
                let o = &mut out[i * d..(i + 1) * d];
                for j in 0..d {
                    o[j] = (xr[j] - mean) * inv * (1.0 + sc[j]) + sh[j];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _shift: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dsc, dsh) = self.backward(x, scale, grad_res)?;
        Ok((Some(dx), Some(dsc), Some(dsh)))
    }
}

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "storyreel-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [xs, w] = f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        let d = w.len();
        let mut out = vec![0f32; xs.len()];
        grouped_pass(&mut out, d, 1, 0, |_, rows, out, _| {
            for (i, row) in rows.enumerate() {
                let xr = &xs[row * d..(row + 1) * d];
                let inv = row_inv_rms(xr, self.eps);
                for (o, (&xv, &wv)) in out[i * d..(i + 1) * d].iter_mut().zip(xr.iter().zip(w)) {
                    *o = xv * inv * wv;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = weight.elem_count();
        let mut dx = vec![0f32; x.elem_count()];
        let sums = with_f32("RMSNorm backward", [x, weight, grad_res], |[xs, w, dys]| {
            Ok(grouped_pass(&mut dx, d, 1, 1, |_, rows, out, sums| {
                let dw = &mut sums[0];
                for (i, row) in rows.enumerate() {
                    let (xr, gr) = (&xs[row * d..(row + 1) * d], &dys[row * d..(row + 1) * d]);
                    let inv = row_inv_rms(xr, self.eps);
                    let mut m = 0f32;
                    for j in 0..d {
                        m += gr[j] * w[j] * xr[j];
                        dw[j] += gr[j] * xr[j] * inv;
                    }
                    let k = inv * inv * m / d as f32;
                    for (j, o) in out[i * d..(i + 1) * d].iter_mut().enumerate() {
                        *o = inv * (gr[j] * w[j] - xr[j] * k);
                    }
                }
            }))
        })?;
        let dw = sums.into_iter().next().unwrap_or_default();
        Ok((Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?), Some(Tensor::from_vec(dw, d, &Device::Cpu)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{grads, max_diff};
    use super::*;
    use candle_core::D;

    fn plain_layer_norm(x: &Tensor, eps: f64) -> Tensor {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        xc.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap()
    }

    #[test]
    fn modulated_layer_norm_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        // Three groups of rows wide enough to split into several chunks each, off-centre inputs.
        let x = (Tensor::randn(0f32, 2.0, (3, 70, 96), &dev).unwrap() + 5.0).unwrap();
        let sc = Tensor::randn(0f32, 0.5, (3, 1, 96), &dev).unwrap();
        let sh = Tensor::randn(0f32, 0.5, (3, 1, 96), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 70, 96), &dev).unwrap();
        let (y, g) = grads(&[&x, &sc, &sh], &w, |t| modulated_layer_norm(&t[0], &t[1], &t[2], 1e-6).unwrap());
        let (y_ref, g_ref) = grads(&[&x, &sc, &sh], &w, |t| {
            plain_layer_norm(&t[0], 1e-6).broadcast_mul(&(&t[1] + 1.0).unwrap()).unwrap().broadcast_add(&t[2]).unwrap()
        });
        assert!(max_diff(&y, &y_ref) < 1e-5, "forward {}", max_diff(&y, &y_ref));
        for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
            assert_eq!(a.dims(), b.dims());
            assert!(max_diff(a, b) < 2e-4, "gradient {i}: {}", max_diff(a, b));
        }
    }

    #[test]
    fn rms_norm_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (130, 80), &dev).unwrap();
        let wt = Tensor::randn(1f32, 0.3, 80, &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (130, 80), &dev).unwrap();
        let (y, g) = grads(&[&x, &wt], &w, |t| rms_norm(&t[0], &t[1], 1e-6).unwrap());
        let (y_ref, g_ref) = grads(&[&x, &wt], &w, |t| {
            let ms = t[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            t[0].broadcast_div(&(ms + 1e-6).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&t[1]).unwrap()
        });
        assert!(max_diff(&y, &y_ref) < 1e-5, "forward {}", max_diff(&y, &y_ref));
        for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
            assert!(max_diff(a, b) < 2e-4, "gradient {i}: {}", max_diff(a, b));
        }
    }

    #[test]
    fn mismatched_parameters_are_refused() {
        let x = Tensor::zeros((2, 4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let m = Tensor::zeros((2, 1, 7), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(modulated_layer_norm(&x, &m, &m, 1e-6).is_err());
        assert!(rms_norm(&x, &Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap(), 1e-6).is_err());
    }
}

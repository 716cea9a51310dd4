//! Fused elementwise steps of the DiT block: modulated LayerNorm, gated residual add, GELU-tanh.
//!
//! On CPU with f32 inputs and no gradient tracking each is one parallel pass over the tokens
//! (candle would run several single-threaded passes and allocate between them); elsewhere they
//! are the same candle ops as the spec's formulas.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::error::{NnError, Result};
use crate::fused_grad;
use crate::norm;

fn fast(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && !t.track_op())
}

fn f32_data(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.contiguous()?.flatten_all()?.to_vec1::<f32>()?)
}

/// Borrow-free view of a contiguous f32 CPU tensor's data.
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
            let start = layout.start_offset();
            f(&v[start..start + t.elem_count()])
        }
        _ => Err(NnError::Input("fused kernel expects f32 CPU storage".into())),
    }
}

/// LN(x)·(1 + scale) + shift over the last dimension, with x `[F, P, D]` and scale, shift `[F, 1, D]`.
pub fn modulated_layer_norm(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    if !fast(&[x, scale, shift]) {
        if fused_grad::applies_all(&[x, scale, shift]) {
            return fused_grad::modulated_layer_norm(x, scale, shift, eps);
        }
        let h = norm::layer_norm(x, eps)?;
        return Ok(h.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?);
    }
    let (f, p, d) = x.dims3()?;
    if scale.dims() != [f, 1, d] || shift.dims() != [f, 1, d] {
        return Err(NnError::Input(format!("modulation of shape {:?} for tokens {:?}", scale.dims(), x.dims())));
    }
    let scale = f32_data(scale)?;
    let shift = f32_data(shift)?;
    let mut out = vec![0f32; f * p * d];
    with_slice(x, |xs| {
        out.par_chunks_mut(d).zip(xs.par_chunks(d)).enumerate().for_each(|(row, (o, xr))| {
            let frame = row / p;
            let (sc, sh) = (&scale[frame * d..(frame + 1) * d], &shift[frame * d..(frame + 1) * d]);
            let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
            let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = (1.0 / (var + eps).sqrt()) as f32;
            let mean = mean as f32;
            for i in 0..d {
                o[i] = (xr[i] - mean) * inv * (1.0 + sc[i]) + sh[i];
            }
        });
        Ok(())
    })?;
    Ok(Tensor::from_vec(out, (f, p, d), x.device())?)
}

/// x + y·gate with x, y `[F, P, D]` and gate `[F, 1, D]`.
pub fn gated_add(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if !fast(&[x, y, gate]) {
        if fused_grad::applies_all(&[x, y, gate]) {
            return fused_grad::gated_add(x, y, gate);
        }
        return Ok((x + y.broadcast_mul(gate)?)?);
    }
    let (f, p, d) = x.dims3()?;
    if y.dims() != x.dims() || gate.dims() != [f, 1, d] {
        return Err(NnError::Input(format!("gated add of {:?} + {:?}·{:?}", x.dims(), y.dims(), gate.dims())));
    }
    let gate = f32_data(gate)?;
    let ys = y.contiguous()?;
    let mut out = vec![0f32; f * p * d];
    with_slice(x, |xs| {
        with_slice(&ys, |yv| {
            out.par_chunks_mut(d).zip(xs.par_chunks(d).zip(yv.par_chunks(d))).enumerate().for_each(
                |(row, (o, (xr, yr)))| {
                    let g = &gate[(row / p) * d..(row / p + 1) * d];
                    for i in 0..d {
                        o[i] = xr[i] + yr[i] * g[i];
                    }
                },
            );
            Ok(())
        })
    })?;
    Ok(Tensor::from_vec(out, (f, p, d), x.device())?)
}

/// GELU with the tanh approximation: 0.5·u·(1 + tanh(√(2/π)·(u + 0.044715·u³))).
pub fn gelu_tanh(u: &Tensor) -> Result<Tensor> {
    if !fast(&[u]) {
        if fused_grad::applies(u) {
            return fused_grad::gelu_tanh(u);
        }
        return Ok(u.gelu()?);
    }
    let mut out = vec![0f32; u.elem_count()];
    with_slice(u, |us| {
        out.par_chunks_mut(4096).zip(us.par_chunks(4096)).for_each(|(o, ur)| {
            for (oi, &v) in o.iter_mut().zip(ur) {
                *oi = fused_grad::gelu_tanh_value(v);
            }
        });
        Ok(())
    })?;
    Ok(Tensor::from_vec(out, u.shape(), u.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_kernels_match_the_formulas() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 3.0, (2, 5, 16), &dev).unwrap() + 1.0).unwrap();
        let y = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev).unwrap();
        let s = Tensor::randn(0f32, 0.5, (2, 1, 16), &dev).unwrap();
        let b = Tensor::randn(0f32, 0.5, (2, 1, 16), &dev).unwrap();
        // The Var forces the composite (reference) path.
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let reference = modulated_layer_norm(xv.as_tensor(), &s, &b, 1e-6).unwrap();
        assert!(max_diff(&modulated_layer_norm(&x, &s, &b, 1e-6).unwrap(), &reference) < 1e-5);
        let reference = gated_add(xv.as_tensor(), &y, &s).unwrap();
        assert!(max_diff(&gated_add(&x, &y, &s).unwrap(), &reference) < 1e-6);
        let u = Tensor::randn(0f32, 4.0, (3, 1000), &dev).unwrap();
        let uv = candle_core::Var::from_tensor(&u).unwrap();
        assert!(max_diff(&gelu_tanh(&u).unwrap(), &gelu_tanh(uv.as_tensor()).unwrap()) < 2e-6);
        assert!(gated_add(&x, &y.narrow(1, 0, 4).unwrap(), &s).is_err());
    }
}

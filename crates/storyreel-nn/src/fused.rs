//! Fused elementwise steps of the DiT block: modulated LayerNorm, gated residual add, GELU-tanh.
//!
//! On CPU with f32 inputs each is one parallel pass over the tokens (candle would run several
//! single-threaded passes and allocate between them), run by the kernels of
//! [`crate::fused_grad`], which also carry a backward pass for training. Elsewhere (CUDA, bf16,
//! or training with those kernels switched off) they are the same candle ops as the spec's
//! formulas.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::fused_grad;
use crate::norm;

/// Whether our kernels serve these inputs: f32 on the CPU, and, under autograd, only while the
/// training kernels are enabled.
fn ours(ts: &[&Tensor]) -> bool {
    let untracked = ts.iter().all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && !t.track_op());
    untracked || fused_grad::applies_all(ts)
}

/// LN(x)·(1 + scale) + shift over the last dimension, with x `[F, P, D]` and scale, shift `[F, 1, D]`.
pub fn modulated_layer_norm(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    if ours(&[x, scale, shift]) {
        return fused_grad::modulated_layer_norm(x, scale, shift, eps);
    }
    let h = norm::layer_norm(x, eps)?;
    Ok(h.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}

/// x + y·gate with x, y `[F, P, D]` and gate `[F, 1, D]`.
pub fn gated_add(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if ours(&[x, y, gate]) {
        return fused_grad::gated_add(x, y, gate);
    }
    Ok((x + y.broadcast_mul(gate)?)?)
}

/// GELU with the tanh approximation: 0.5·u·(1 + tanh(√(2/π)·(u + 0.044715·u³))).
pub fn gelu_tanh(u: &Tensor) -> Result<Tensor> {
    if ours(&[u]) {
        return fused_grad::gelu_tanh(u);
    }
    Ok(u.gelu()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

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
        // The spec's formulas as plain candle ops.
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let ln = xc.broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap()).unwrap();
        let reference = ln.broadcast_mul(&(&s + 1.0).unwrap()).unwrap().broadcast_add(&b).unwrap();
        assert!(max_diff(&modulated_layer_norm(&x, &s, &b, 1e-6).unwrap(), &reference) < 1e-5);
        let reference = (&x + y.broadcast_mul(&s).unwrap()).unwrap();
        assert!(max_diff(&gated_add(&x, &y, &s).unwrap(), &reference) < 1e-6);
        let u = Tensor::randn(0f32, 4.0, (3, 1000), &dev).unwrap();
        assert!(max_diff(&gelu_tanh(&u).unwrap(), &u.gelu().unwrap()) < 2e-6);
        assert!(gated_add(&x, &y.narrow(1, 0, 4).unwrap(), &s).is_err());
        assert!(modulated_layer_norm(&x, &s.narrow(2, 0, 8).unwrap(), &b, 1e-6).is_err());
    }
}

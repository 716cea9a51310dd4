//! Normalisations in f32: affine-free LayerNorm, affine LayerNorm and RMSNorm.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// LayerNorm over the last dimension without affine parameters.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let d = x.dim(D::Minus1)?;
    if !x.track_op() {
        let ones = Tensor::ones(d, DType::F32, x.device())?;
        let zeros = Tensor::zeros(d, DType::F32, x.device())?;
        return Ok(candle_nn::ops::layer_norm(&x.contiguous()?, &ones, &zeros, eps as f32)?);
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(xc.broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// LayerNorm over the last dimension with weight and bias.
pub fn layer_norm_affine(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    if !x.track_op() && !weight.track_op() && !bias.track_op() {
        return Ok(candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32)?);
    }
    if crate::fused_grad::applies_all(&[&x, weight, bias]) {
        // An affine LayerNorm is a modulated one with a single group: scale = weight − 1.
        let d = x.dim(D::Minus1)?;
        let rows = x.elem_count() / d.max(1);
        let scale = (weight - 1.0)?.reshape((1, 1, d))?;
        let y =
            crate::fused_grad::modulated_layer_norm(&x.reshape((1, rows, d))?, &scale, &bias.reshape((1, 1, d))?, eps)?;
        return Ok(y.reshape(x.shape())?);
    }
    Ok(layer_norm(&x, eps)?.broadcast_mul(weight)?.broadcast_add(bias)?)
}

/// RMSNorm over the last dimension: x / sqrt(mean(x²) + eps) · weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    if !x.track_op() && !weight.track_op() {
        return Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)?);
    }
    if crate::fused_grad::applies_all(&[&x, weight]) {
        return crate::fused_grad::rms_norm(&x, weight, eps);
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(weight)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fast_and_differentiable_norms_agree() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (5, 16), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 16, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let close = |a: Tensor, b: Tensor| {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-5, "{d}");
        };
        close(layer_norm(&x, 1e-6).unwrap(), layer_norm(v.as_tensor(), 1e-6).unwrap());
        close(layer_norm_affine(&x, &w, &b, 1e-6).unwrap(), layer_norm_affine(v.as_tensor(), &w, &b, 1e-6).unwrap());
        close(rms_norm(&x, &w, 1e-6).unwrap(), rms_norm(v.as_tensor(), &w, 1e-6).unwrap());
    }
}

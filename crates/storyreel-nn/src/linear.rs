//! Linear layers in PyTorch layout (`weight` [out, in]) with an optional LoRA adapter.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::error::{NnError, Result};

/// A low-rank update W + scale·B·A applied at run time (not merged).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Down projection `[r, in]`.
    pub a: Tensor,
    /// Up projection `[out, r]`.
    pub b: Tensor,
    /// Multiplier (alpha / r).
    pub scale: f64,
}

/// `y = x·Wᵀ + b (+ scale·x·Aᵀ·Bᵀ)`; inputs and outputs are f32, the product runs in W's dtype.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraAdapter>,
}

impl Linear {
    /// Loads `weight` [out, in] and (optionally) `bias` [out] under `vb`.
    pub fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(out_dim, "bias", candle_nn::Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias, lora: None })
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Attaches a LoRA adapter, checking its shapes against the weight.
    pub fn set_lora(&mut self, name: &str, lora: Option<LoraAdapter>) -> Result<()> {
        if let Some(l) = &lora {
            let (out_dim, in_dim) = self.weight.dims2()?;
            let (r, a_in) = l.a.dims2()?;
            let (b_out, r2) = l.b.dims2()?;
            if a_in != in_dim || b_out != out_dim || r != r2 {
                return Err(NnError::ShapeMismatch {
                    name: format!("{name} (LoRA A·B)"),
                    expected: vec![out_dim, in_dim],
                    found: vec![b_out, r2, r, a_in],
                });
            }
        }
        self.lora = lora;
        Ok(())
    }

    /// Applies the layer to `x` `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().ok_or_else(|| NnError::Input("linear input has no dimensions".into()))?;
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let wd = self.weight.dtype();
        let xw = x2.to_dtype(wd)?;
        let mut y = xw.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = if y.track_op() && crate::fused_grad::applies_all(&[&y, b]) {
                crate::fused_grad::bias_add(&y, b)?
            } else {
                y.broadcast_add(b)?
            };
        }
        if let Some(l) = &self.lora {
            let down = xw.matmul(&l.a.to_dtype(wd)?.t()?)?;
            let up = down.matmul(&l.b.to_dtype(wd)?.t()?)?;
            y = (y + (up * l.scale)?)?;
        }
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.weight.dims()[0];
        }
        Ok(y.to_dtype(DType::F32)?.reshape(out_dims)?)
    }
}

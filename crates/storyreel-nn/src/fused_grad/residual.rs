//! Adds of a broadcast vector: the DiT's gated residual x + y·gate and a linear layer's bias,
//! each one pass forward and one backward that also sums the vector's gradient over its rows.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};

use super::{column_sums, f32_inputs, grouped_pass, with_f32};
use crate::error::{NnError, Result};

/// x + y·gate with x, y `[G, P, D]` and gate `[G, 1, D]`, with a fused backward; f32 on the CPU.
pub fn gated_add(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (g, _p, d) = x.dims3()?;
    if y.dims() != x.dims() || gate.dims() != [g, 1, d] {
        return Err(NnError::Input(format!("gated add of {:?} + {:?}·{:?}", x.dims(), y.dims(), gate.dims())));
    }
    Ok(x.contiguous()?.apply_op3(&y.contiguous()?, &gate.contiguous()?, GatedAdd)?)
}

/// y + bias over rows of y `[…, D]` with bias `[D]`, with a fused backward; f32 on the CPU.
pub fn bias_add(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let d = y.dims().last().copied().unwrap_or(0);
    if bias.dims() != [d] {
        return Err(NnError::Input(format!("bias of shape {:?} for rows of width {d}", bias.dims())));
    }
    Ok(y.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)?)
}

struct GatedAdd;

impl CustomOp3 for GatedAdd {
    fn name(&self) -> &'static str {
        "storyreel-gated-add"
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
        let [xs, ys, gate] = f32_inputs(self.name(), [(s1, l1), (s2, l2), (s3, l3)])?;
        let (g, _, d) = l1.shape().dims3()?;
        let mut out = vec![0f32; xs.len()];
        grouped_pass(&mut out, d, g, 0, |grp, rows, out, _| {
            let gate = &gate[grp * d..(grp + 1) * d];
            let (xs, ys) = (&xs[rows.start * d..rows.end * d], &ys[rows.start * d..rows.end * d]);
            for (o, (xr, yr)) in out.chunks_exact_mut(d).zip(xs.chunks_exact(d).zip(ys.chunks_exact(d))) {
                for j in 0..d {
                    o[j] = xr[j] + yr[j] * gate[j];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        y: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (g, p, d) = y.dims3()?;
        let mut dy = vec![0f32; y.elem_count()];
        let sums = with_f32("gated add backward", [y, gate, grad_res], |[ys, gate, dos]| {
            Ok(grouped_pass(&mut dy, d, g, 1, |grp, rows, out, sums| {
                let gate = &gate[grp * d..(grp + 1) * d];
                let dgate = &mut sums[0];
                for (i, row) in rows.enumerate() {
                    let (yr, gr) = (&ys[row * d..(row + 1) * d], &dos[row * d..(row + 1) * d]);
                    let o = &mut out[i * d..(i + 1) * d];
                    for j in 0..d {
                        o[j] = gr[j] * gate[j];
                        dgate[j] += gr[j] * yr[j];
                    }
                }
            }))
        })?;
        let dgate = sums.into_iter().next().unwrap_or_default();
        Ok((
            Some(grad_res.clone()),
            Some(Tensor::from_vec(dy, (g, p, d), &Device::Cpu)?),
            Some(Tensor::from_vec(dgate, (g, 1, d), &Device::Cpu)?),
        ))
    }
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "storyreel-bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let [ys, bias] = f32_inputs(self.name(), [(s1, l1), (s2, l2)])?;
        let d = bias.len();
        let mut out = vec![0f32; ys.len()];
        grouped_pass(&mut out, d, 1, 0, |_, rows, out, _| {
            for (o, yr) in out.chunks_exact_mut(d).zip(ys[rows.start * d..rows.end * d].chunks_exact(d)) {
                for j in 0..d {
                    o[j] = yr[j] + bias[j];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = bias.elem_count();
        // The input's gradient passes through unchanged; only the bias needs a pass.
        let dbias = with_f32("bias add backward", [grad_res], |[dos]| Ok(column_sums(dos, d)))?;
        Ok((Some(grad_res.clone()), Some(Tensor::from_vec(dbias, d, &Device::Cpu)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{grads, max_diff};
    use super::*;

    #[test]
    fn gated_add_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (4, 50, 120), &dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (4, 50, 120), &dev).unwrap();
        let gate = Tensor::randn(0f32, 1.0, (4, 1, 120), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 50, 120), &dev).unwrap();
        let (o, g) = grads(&[&x, &y, &gate], &w, |t| gated_add(&t[0], &t[1], &t[2]).unwrap());
        let (o_ref, g_ref) = grads(&[&x, &y, &gate], &w, |t| (&t[0] + t[1].broadcast_mul(&t[2]).unwrap()).unwrap());
        assert!(max_diff(&o, &o_ref) < 1e-6);
        for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
            assert_eq!(a.dims(), b.dims());
            assert!(max_diff(a, b) < 1e-4, "gradient {i}: {}", max_diff(a, b));
        }
    }

    #[test]
    fn bias_add_matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        let y = Tensor::randn(0f32, 1.0, (300, 24), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 24, &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (300, 24), &dev).unwrap();
        let (o, g) = grads(&[&y, &b], &w, |t| bias_add(&t[0], &t[1]).unwrap());
        let (o_ref, g_ref) = grads(&[&y, &b], &w, |t| t[0].broadcast_add(&t[1]).unwrap());
        assert!(max_diff(&o, &o_ref) < 1e-6);
        for (i, (a, b)) in g.iter().zip(&g_ref).enumerate() {
            assert!(max_diff(a, b) < 1e-4, "gradient {i}: {}", max_diff(a, b));
        }
    }

    #[test]
    fn mismatched_vectors_are_refused() {
        let x = Tensor::zeros((2, 4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(gated_add(&x, &x, &Tensor::zeros((2, 1, 7), candle_core::DType::F32, &Device::Cpu).unwrap()).is_err());
        assert!(bias_add(&x, &Tensor::zeros(7, candle_core::DType::F32, &Device::Cpu).unwrap()).is_err());
    }
}

//! Small helpers shared by the checkpoint readers and writers.

use crate::error::NnError;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// A `BadCheckpoint` error for `path`.
pub(crate) fn bad(path: &Path, reason: impl Into<String>) -> NnError {
    NnError::BadCheckpoint { path: path.to_path_buf(), reason: reason.into() }
}

/// Short dtype name as used in reports (`f32`, `bf16`, ...).
pub(crate) fn dtype_name(dtype: DType) -> &'static str {
    dtype.as_str()
}

/// The raw little-endian bytes of a tensor (moved to the CPU and made contiguous first).
pub(crate) fn tensor_le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    fn bytes<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * N);
        for x in v {
            out.extend_from_slice(&f(x));
        }
        out
    }
    Ok(match t.dtype() {
        DType::U8 => t.to_vec1::<u8>()?,
        DType::U32 => bytes(t.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::I16 => bytes(t.to_vec1::<i16>()?, i16::to_le_bytes),
        DType::I32 => bytes(t.to_vec1::<i32>()?, i32::to_le_bytes),
        DType::I64 => bytes(t.to_vec1::<i64>()?, i64::to_le_bytes),
        DType::F16 => bytes(t.to_vec1::<half::f16>()?, |x| x.to_bits().to_le_bytes()),
        DType::BF16 => bytes(t.to_vec1::<half::bf16>()?, |x| x.to_bits().to_le_bytes()),
        DType::F32 => bytes(t.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F64 => bytes(t.to_vec1::<f64>()?, f64::to_le_bytes),
        other => candle_core::bail!("cannot serialise tensors of dtype {other:?}"),
    })
}

/// Number of elements of a shape, or `None` on overflow.
pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

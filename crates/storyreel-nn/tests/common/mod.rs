//! Helpers shared by the integration tests.

use candle_core::{DType, Tensor};

/// The f32 bit patterns of a tensor, for bit-exact comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

//! Where the sampler's Gaussian noise comes from: a seeded generator or caller-supplied tensors.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{EngineError, Result};

/// Supplies the starting noise (step 0) and re-injected noise (step i > 0) of each chunk.
pub trait NoiseSource: Send {
    /// Noise of `shape` for (shot, chunk, step).
    fn noise(&mut self, shot: usize, chunk: usize, step: usize, shape: &[usize], device: &Device) -> Result<Tensor>;
}

/// Deterministic noise: each (seed, shot, chunk, step) draws from its own stream, so results do
/// not depend on call order or on how many chunks were generated before.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    seed: u64,
}

impl SeededNoise {
    /// A source for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }
}

fn mix(mut h: u64, v: u64) -> u64 {
    h ^= v.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_add(h << 6).wrapping_add(h >> 2);
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 31)
}

impl NoiseSource for SeededNoise {
    fn noise(&mut self, shot: usize, chunk: usize, step: usize, shape: &[usize], device: &Device) -> Result<Tensor> {
        let key = [shot as u64, chunk as u64, step as u64].iter().fold(mix(0, self.seed), |h, &v| mix(h, v));
        let mut rng = rand::rngs::StdRng::seed_from_u64(key);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        Ok(Tensor::from_vec(data, shape, device)?)
    }
}

/// Noise given by the caller for one shot: `[chunks, steps, frames, C, H, W]`.
#[derive(Debug, Clone)]
pub struct GivenNoise {
    noise: Tensor,
}

impl GivenNoise {
    /// Wraps a `[chunks, steps, frames, C, H, W]` tensor.
    pub fn new(noise: Tensor) -> Result<Self> {
        if noise.rank() != 6 {
            return Err(EngineError::Input(format!(
                "noise must be [chunks, steps, frames, C, H, W]; got shape {:?}",
                noise.dims()
            )));
        }
        Ok(Self { noise })
    }

    /// Number of chunks covered.
    pub fn chunks(&self) -> usize {
        self.noise.dims()[0]
    }
}

impl NoiseSource for GivenNoise {
    fn noise(&mut self, _shot: usize, chunk: usize, step: usize, shape: &[usize], device: &Device) -> Result<Tensor> {
        let d = self.noise.dims();
        if chunk >= d[0] || step >= d[1] {
            return Err(EngineError::Input(format!(
                "the given noise covers {} chunks × {} steps; chunk {chunk} step {step} was asked for",
                d[0], d[1]
            )));
        }
        let t = self.noise.get(chunk)?.get(step)?;
        if t.dims() != shape {
            return Err(EngineError::Input(format!(
                "given noise has shape {:?} per step; the chunk needs {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_device(device)?.to_dtype(candle_core::DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_reproducible_and_keyed() {
        let dev = Device::Cpu;
        let mut a = SeededNoise::new(1);
        let x = a.noise(0, 1, 2, &[2, 3], &dev).unwrap().to_vec2::<f32>().unwrap();
        let y = SeededNoise::new(1).noise(0, 1, 2, &[2, 3], &dev).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(x, y);
        let z = a.noise(0, 1, 3, &[2, 3], &dev).unwrap().to_vec2::<f32>().unwrap();
        assert_ne!(x, z);
        let w = SeededNoise::new(2).noise(0, 1, 2, &[2, 3], &dev).unwrap().to_vec2::<f32>().unwrap();
        assert_ne!(x, w);
    }

    #[test]
    fn given_noise_checks_coverage_and_shape() {
        let dev = Device::Cpu;
        let t = Tensor::arange(0f32, 2.0 * 4.0 * 3.0, &dev).unwrap().reshape((2, 4, 3, 1, 1, 1)).unwrap();
        let mut g = GivenNoise::new(t).unwrap();
        let s = g.noise(0, 1, 2, &[3, 1, 1, 1], &dev).unwrap();
        assert_eq!(s.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![18.0, 19.0, 20.0]);
        assert!(g.noise(0, 2, 0, &[3, 1, 1, 1], &dev).unwrap_err().to_string().contains("covers 2 chunks"));
        assert!(g.noise(0, 0, 0, &[3, 1, 1, 2], &dev).is_err());
        assert!(GivenNoise::new(Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap()).is_err());
    }
}

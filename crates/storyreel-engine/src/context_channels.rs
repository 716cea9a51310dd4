//! Context channels: the mean of a shot's real context latents, joined to every target frame's
//! channels, the way Wan's I2V model joins its conditioning image to the noisy latent.
//!
//! Why: through attention alone, our small teachers read 1–3% of what a story's looks are worth
//! (docs/BENCHMARKS.md, "Does the teacher read its context at all?"). A look is mostly a palette
//! over the frame (sky, ground), and the mean context latent at each position carries it
//! straight to the target's tokens at that position, with no attention pattern to learn first.
//! The context tokens themselves stay in front of the target as in ShotStream; their extra
//! channels are zero, as are a target's when it has no context (first shot, dropped context).

use candle_core::{DType, Tensor};

use crate::error::{EngineError, Result};

/// The mean `[1, C, H, W]` of the real frames among the context latents `[n, C, H, W]`: those
/// not all zero. Padding and dropped context are zero latents; shot flags cannot tell them
/// apart, as frames of the first shot are flagged 0 too. Zeros when no frame is real.
pub fn context_mean(context: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = context.dims4()?;
    let context = context.to_dtype(DType::F32)?;
    let real: Vec<u32> = real_frames(&context)?.iter().enumerate().filter(|(_, &r)| r).map(|(i, _)| i as u32).collect();
    if real.is_empty() {
        return Ok(Tensor::zeros((1, c, h, w), DType::F32, context.device())?);
    }
    let index = Tensor::new(real.as_slice(), context.device())?;
    Ok(context.index_select(&index, 0)?.mean_keepdim(0)?)
}

/// Which of the context latents `[n, C, H, W]` are real frames: those not all zero (padding and
/// dropped context are zero latents).
pub fn real_frames(context: &Tensor) -> Result<Vec<bool>> {
    let (n, c, h, w) = context.dims4()?;
    let peaks = context.abs()?.reshape((n, c * h * w))?.max(1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(peaks.iter().map(|&p| p > 0.0).collect())
}

/// `x` `[F, C, H, W]` with `extra` `[1, C, H, W]` joined to every frame's channels: `[F, 2C, H, W]`.
pub fn join_channels(x: &Tensor, extra: &Tensor) -> Result<Tensor> {
    let (f, c, h, w) = x.dims4()?;
    if extra.dims() != [1, c, h, w] {
        return Err(EngineError::Input(format!(
            "context channels of shape {:?} cannot join latents of shape {:?}",
            extra.dims(),
            x.dims()
        )));
    }
    Ok(Tensor::cat(&[x.clone(), extra.to_dtype(x.dtype())?.broadcast_as((f, c, h, w))?.contiguous()?], 1)?)
}

/// `x` `[F, C, H, W]` with zero channels joined: `[F, 2C, H, W]` (context frames, images).
pub fn join_zeros(x: &Tensor) -> Result<Tensor> {
    Ok(Tensor::cat(&[x.clone(), x.zeros_like()?], 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_mean_counts_only_real_frames_and_joins_behind_the_latent() {
        let dev = Device::Cpu;
        // A padding frame (all zero) in front of two real ones, one of which is zero in one place.
        let context = Tensor::new(&[0f32, 0.0, 1.0, -3.0, 0.0, 5.0], &dev).unwrap().reshape((3, 2, 1, 1)).unwrap();
        let mean = context_mean(&context).unwrap();
        assert_eq!(mean.dims(), [1, 2, 1, 1]);
        assert_eq!(mean.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.5, 1.0]);
        let none = context_mean(&context.zeros_like().unwrap()).unwrap();
        assert_eq!(none.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.0, 0.0]);
        let mean = Tensor::new(&[2f32], &dev).unwrap().reshape((1, 1, 1, 1)).unwrap();

        let x = Tensor::new(&[5f32, 6.0], &dev).unwrap().reshape((2, 1, 1, 1)).unwrap();
        let joined = join_channels(&x, &mean).unwrap();
        assert_eq!(joined.dims(), [2, 2, 1, 1]);
        assert_eq!(joined.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5.0, 2.0, 6.0, 2.0]);
        assert_eq!(join_zeros(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5.0, 0.0, 6.0, 0.0]);
        let wrong = Tensor::zeros((1, 2, 1, 1), DType::F32, &dev).unwrap();
        assert!(join_channels(&x, &wrong).unwrap_err().to_string().contains("cannot join"));
    }
}

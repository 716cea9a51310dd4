//! Pixel fidelity of one video against a reference of the same frames: PSNR per frame and
//! overall, for reconstructions (a VAE round trip) and memorisation checks.

use serde::Serialize;
use storyreel_media::RgbFrame;

use crate::error::{EvalError, Result};

/// PSNR of a video against its reference, on 8-bit RGB.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Fidelity {
    /// Frames compared.
    pub frames: usize,
    /// PSNR of the mean squared error over every frame (dB); infinite when identical.
    pub psnr_db: f64,
    /// Mean of the per-frame PSNRs (dB), each capped at [`PSNR_CAP_DB`].
    pub mean_frame_psnr_db: f64,
    /// The worst frame's PSNR (dB).
    pub min_frame_psnr_db: f64,
    /// Index of the worst frame.
    pub min_frame: usize,
    /// Per-frame PSNR (dB), capped at [`PSNR_CAP_DB`].
    pub per_frame_db: Vec<f64>,
}

/// Identical frames score this instead of infinity in per-frame figures, so means stay finite.
pub const PSNR_CAP_DB: f64 = 100.0;

/// Mean squared error of two frames of the same size, in 8-bit units.
pub fn frame_mse(a: &RgbFrame, b: &RgbFrame) -> Result<f64> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(EvalError::Mismatch(format!(
            "frame sizes differ: {}×{} against {}×{}",
            a.width, a.height, b.width, b.height
        )));
    }
    let n = a.data.len().max(1) as f64;
    let sum: u64 = a.data.iter().zip(&b.data).map(|(&x, &y)| (x as i64 - y as i64).pow(2) as u64).sum();
    Ok(sum as f64 / n)
}

/// PSNR in dB of a mean squared error in 8-bit units.
pub fn psnr_from_mse(mse: f64) -> f64 {
    if mse <= 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Scores `video` against `reference`, frame by frame; they must have the same frame count
/// and size.
pub fn fidelity(reference: &[RgbFrame], video: &[RgbFrame]) -> Result<Fidelity> {
    if reference.len() != video.len() {
        return Err(EvalError::Mismatch(format!(
            "the reference has {} frames and the video {}",
            reference.len(),
            video.len()
        )));
    }
    if reference.is_empty() {
        return Err(EvalError::Mismatch("no frames to compare".into()));
    }
    let mses = reference.iter().zip(video).map(|(a, b)| frame_mse(a, b)).collect::<Result<Vec<_>>>()?;
    let per_frame_db: Vec<f64> = mses.iter().map(|&m| psnr_from_mse(m).min(PSNR_CAP_DB)).collect();
    let (min_frame, &min_frame_psnr_db) =
        per_frame_db.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap_or((0, &PSNR_CAP_DB));
    Ok(Fidelity {
        frames: mses.len(),
        psnr_db: psnr_from_mse(mses.iter().sum::<f64>() / mses.len() as f64),
        mean_frame_psnr_db: per_frame_db.iter().sum::<f64>() / per_frame_db.len() as f64,
        min_frame_psnr_db,
        min_frame,
        per_frame_db,
    })
}

/// Mean squared error pooled by a frame's position inside its shot, in the VAE's temporal
/// chunks: the lone first frame, then groups of four (one latent each). A causal VAE's error
/// grows with every cached chunk, which one whole-video figure hides.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PositionFidelity {
    /// Per chunk: frames pooled and the sum of their MSEs (8-bit units).
    pub chunks: Vec<(usize, f64)>,
}

impl PositionFidelity {
    /// The chunk a shot's `k`-th frame falls in.
    pub fn chunk_of(k: usize) -> usize {
        if k == 0 {
            0
        } else {
            1 + (k - 1) / 4
        }
    }

    /// A label for chunk `c`: "frame 0", "frames 1–4", …
    pub fn label(c: usize) -> String {
        if c == 0 {
            "frame 0".into()
        } else {
            format!("frames {}–{}", 4 * c - 3, 4 * c)
        }
    }

    /// Adds a video's frames, split into shots of `shots` frames, against their reference.
    pub fn add(&mut self, reference: &[RgbFrame], video: &[RgbFrame], shots: &[usize]) -> Result<()> {
        let total: usize = shots.iter().sum();
        if total != reference.len() || total != video.len() {
            return Err(EvalError::Mismatch(format!(
                "shots of {total} frames in all, a reference of {} and a video of {}",
                reference.len(),
                video.len()
            )));
        }
        let mut start = 0;
        for &n in shots {
            for k in 0..n {
                let mse = frame_mse(&reference[start + k], &video[start + k])?;
                let c = Self::chunk_of(k);
                if self.chunks.len() <= c {
                    self.chunks.resize(c + 1, (0, 0.0));
                }
                self.chunks[c].0 += 1;
                self.chunks[c].1 += mse;
            }
            start += n;
        }
        Ok(())
    }

    /// Frames added in all, and the PSNR (dB) of their pooled MSE.
    pub fn pooled_psnr_db(&self) -> (usize, f64) {
        let frames: usize = self.chunks.iter().map(|c| c.0).sum();
        let sum: f64 = self.chunks.iter().map(|c| c.1).sum();
        (frames, psnr_from_mse(sum / frames.max(1) as f64))
    }

    /// PSNR (dB) of each chunk's pooled MSE, with its frame count.
    pub fn psnr_db(&self) -> Vec<(usize, f64)> {
        self.chunks.iter().map(|&(n, sum)| (n, psnr_from_mse(sum / n.max(1) as f64))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(w: u32, h: u32, v: u8) -> RgbFrame {
        RgbFrame { width: w, height: h, data: vec![v; (w * h * 3) as usize] }
    }

    #[test]
    fn known_errors_give_known_psnr() {
        // A uniform error of 16 levels: MSE 256, PSNR 20·log10(255/16) ≈ 24.05 dB.
        let f = fidelity(&[frame(4, 2, 100), frame(4, 2, 0)], &[frame(4, 2, 116), frame(4, 2, 0)]).unwrap();
        assert_eq!(f.frames, 2);
        assert!((f.per_frame_db[0] - 24.048).abs() < 1e-3, "{:?}", f.per_frame_db);
        assert_eq!(f.per_frame_db[1], PSNR_CAP_DB);
        assert_eq!(f.min_frame, 0);
        // Pooled: MSE 128 over both frames.
        assert!((f.psnr_db - psnr_from_mse(128.0)).abs() < 1e-9);
        assert!((f.mean_frame_psnr_db - (24.048 + PSNR_CAP_DB) / 2.0).abs() < 1e-2);
    }

    #[test]
    fn identical_videos_are_infinite_overall() {
        let f = fidelity(&[frame(2, 2, 7)], &[frame(2, 2, 7)]).unwrap();
        assert!(f.psnr_db.is_infinite());
    }

    #[test]
    fn mismatches_are_errors_naming_the_problem() {
        let err = fidelity(&[frame(2, 2, 0)], &[frame(2, 2, 0), frame(2, 2, 0)]).unwrap_err().to_string();
        assert!(err.contains("1 frames") && err.contains("2"), "{err}");
        let err = fidelity(&[frame(2, 2, 0)], &[frame(4, 2, 0)]).unwrap_err().to_string();
        assert!(err.contains("2×2") && err.contains("4×2"), "{err}");
        assert!(fidelity(&[], &[]).is_err());
    }

    #[test]
    fn positions_pool_by_chunk() {
        // One shot of 6 frames: frame 0, frames 1–4, frame 5; errors 0, 16, 16, 16, 16, 32.
        let reference: Vec<RgbFrame> = (0..6).map(|_| frame(2, 2, 100)).collect();
        let video: Vec<RgbFrame> = [100, 116, 116, 116, 116, 132].iter().map(|&v| frame(2, 2, v)).collect();
        let mut p = PositionFidelity::default();
        p.add(&reference, &video, &[6]).unwrap();
        let db = p.psnr_db();
        assert_eq!(db.len(), 3);
        assert!(db[0].1.is_infinite() && db[0].0 == 1);
        assert_eq!(db[1].0, 4);
        assert!((db[1].1 - psnr_from_mse(256.0)).abs() < 1e-9);
        assert!((db[2].1 - psnr_from_mse(1024.0)).abs() < 1e-9);
        let (frames, pooled) = p.pooled_psnr_db();
        assert_eq!(frames, 6);
        assert!((pooled - psnr_from_mse((4.0 * 256.0 + 1024.0) / 6.0)).abs() < 1e-9);
        assert_eq!(PositionFidelity::label(2), "frames 5–8");
        // Shots that do not cover the video are an error.
        assert!(p.add(&reference, &video, &[4]).is_err());
    }
}

//! Dynamic degree (VBench, peers.md §3.5) with block-matching optical flow in place of RAFT.
//!
//! VBench measures flow with RAFT-things; we have no pretrained networks, so flow here comes from
//! exhaustive block matching on downscaled luma. The protocol around it is VBench's: frames
//! sampled at about 8 fps, per pair the mean of the top 5 % flow magnitudes, a clip counts as
//! dynamic when enough pairs beat a resolution-scaled threshold, and the score is the fraction of
//! dynamic clips. Block flow is coarser and blind on textureless areas, so **absolute numbers
//! are not comparable with published dynamic-degree figures**; orderings between our own runs
//! (model A vs model B, setting X vs Y) are what it is for.

use crate::error::{EvalError, Result};
use rayon::prelude::*;
use serde::Serialize;
use storyreel_media::RgbFrame;

/// Block-matching and dynamic-degree settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MotionConfig {
    /// Frames are box-downscaled until the short side is at most this (noise averages out and
    /// the search stays cheap); never upscaled.
    pub max_short_side: u32,
    /// Block edge in downscaled pixels.
    pub block: u32,
    /// Search radius in downscaled pixels: motion beyond it is clipped to the best match within.
    pub search_radius: u32,
    /// Mean absolute luma difference (0–255 scale) a non-zero vector must beat the zero vector by;
    /// keeps sensor-like noise from reading as motion.
    pub zero_bias: f32,
    /// Blocks whose luma variance is below this are textureless: their flow is unknown, not zero.
    pub texture_floor: f32,
    /// Fraction of the largest block magnitudes averaged per pair (VBench: 0.05).
    pub top_fraction: f64,
    /// Pair sampling rate (VBench: 8 fps).
    pub target_fps: f64,
    /// Threshold in pixels at a short side of 256, scaled with the frame (VBench: 6.0).
    pub threshold_at_256: f64,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            max_short_side: 128,
            block: 8,
            search_radius: 8,
            zero_bias: 0.5,
            texture_floor: 4.0,
            top_fraction: 0.05,
            target_fps: 8.0,
            threshold_at_256: 6.0,
        }
    }
}

impl MotionConfig {
    fn validate(&self) -> Result<()> {
        if self.block < 2 {
            return Err(EvalError::out_of_range("motion block size", self.block, "at least 2"));
        }
        if self.max_short_side < self.block {
            return Err(EvalError::out_of_range(
                "motion max_short_side",
                self.max_short_side,
                format!("at least the block size {}", self.block),
            ));
        }
        if !(self.zero_bias.is_finite() && self.zero_bias >= 0.0) {
            return Err(EvalError::out_of_range("motion zero_bias", self.zero_bias, "a finite number ≥ 0"));
        }
        if !(self.texture_floor.is_finite() && self.texture_floor >= 0.0) {
            return Err(EvalError::out_of_range("motion texture_floor", self.texture_floor, "a finite number ≥ 0"));
        }
        if !(self.top_fraction > 0.0 && self.top_fraction <= 1.0) {
            return Err(EvalError::out_of_range("motion top_fraction", self.top_fraction, "in (0, 1]"));
        }
        if !(self.target_fps.is_finite() && self.target_fps > 0.0) {
            return Err(EvalError::out_of_range("motion target_fps", self.target_fps, "a finite number > 0"));
        }
        if !(self.threshold_at_256.is_finite() && self.threshold_at_256 >= 0.0) {
            return Err(EvalError::out_of_range(
                "motion threshold_at_256",
                self.threshold_at_256,
                "a finite number ≥ 0",
            ));
        }
        Ok(())
    }
}

/// Per-block forward flow from one frame to the next, in original-frame pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowField {
    /// Blocks per row.
    pub blocks_x: usize,
    /// Block rows.
    pub blocks_y: usize,
    /// Original-frame pixels per downscaled pixel, horizontally and vertically.
    pub scale: [f64; 2],
    /// Block edge in downscaled pixels (block `(bx, by)` starts at `(bx, by) · block · scale`).
    pub block: u32,
    /// `(dx, dy)` per block, row-major; `None` where the block is too flat to match.
    pub vectors: Vec<Option<[f64; 2]>>,
    /// `|(dx, dy)|` per block, row-major; `None` where the vector is.
    pub magnitudes: Vec<Option<f64>>,
}

impl FlowField {
    /// The vector of block `(bx, by)`; `None` outside the grid or for a textureless block.
    pub fn at(&self, bx: usize, by: usize) -> Option<[f64; 2]> {
        if bx >= self.blocks_x || by >= self.blocks_y {
            return None;
        }
        self.vectors[by * self.blocks_x + bx]
    }

    /// Magnitudes of the blocks whose flow is known.
    pub fn known_magnitudes(&self) -> Vec<f64> {
        self.magnitudes.iter().flatten().copied().collect()
    }
}

/// Motion summary of one clip, VBench-style.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipMotion {
    /// Mean of the top `top_fraction` block magnitudes for each sampled pair, original pixels.
    pub pair_scores: Vec<f64>,
    /// Mean of `pair_scores`; 0 with no pairs.
    pub mean_top_flow: f64,
    /// `threshold_at_256 · min(H, W) / 256`, original pixels.
    pub threshold: f64,
    /// Frame step between the sampled frames, `max(1, round(fps / target_fps))`.
    pub interval: usize,
    /// Pairs that must exceed `threshold`: `max(1, round(4 · n_pairs / 16))`; 0 with no pairs.
    pub required_pairs: usize,
    /// At least `required_pairs` pair scores exceed `threshold` (false with no pairs).
    pub dynamic: bool,
}

/// Block-matching flow from `a` to `b` (where each block of `a` went in `b`).
pub fn block_flow(a: &RgbFrame, b: &RgbFrame, cfg: &MotionConfig) -> Result<FlowField> {
    cfg.validate()?;
    check_same_size(a, b)?;
    Ok(flow_between(&Luma::downscaled(a, cfg.max_short_side)?, &Luma::downscaled(b, cfg.max_short_side)?, cfg))
}

/// Motion of a clip at `fps`: flow on pairs sampled at about `target_fps`, VBench's dynamic test.
///
/// Fewer than 2 sampled frames give no pairs and a clip that is not dynamic, not an error: a
/// one-frame shot is a legitimate (static) output.
pub fn clip_motion(frames: &[RgbFrame], fps: f64, cfg: &MotionConfig) -> Result<ClipMotion> {
    cfg.validate()?;
    if !(fps.is_finite() && fps > 0.0) {
        return Err(EvalError::out_of_range("fps", fps, "a finite number > 0"));
    }
    if let Some(first) = frames.first() {
        for f in frames {
            check_same_size(first, f)?;
        }
    }
    // VBench rounds with Python's round(), which sends halves to even.
    let interval = ((fps / cfg.target_fps).round_ties_even() as usize).max(1);
    let threshold = frames.first().map_or(0.0, |f| cfg.threshold_at_256 * f64::from(f.width.min(f.height)) / 256.0);

    let sampled: Vec<&RgbFrame> = frames.iter().step_by(interval).collect();
    let lumas: Vec<Luma> =
        sampled.par_iter().map(|f| Luma::downscaled(f, cfg.max_short_side)).collect::<Result<_>>()?;
    let pair_scores: Vec<f64> =
        lumas.par_windows(2).map(|w| top_mean(flow_between(&w[0], &w[1], cfg).known_magnitudes(), cfg)).collect();

    let n_pairs = pair_scores.len();
    let mean_top_flow = if n_pairs == 0 { 0.0 } else { pair_scores.iter().sum::<f64>() / n_pairs as f64 };
    let required_pairs =
        if n_pairs == 0 { 0 } else { ((4.0 * n_pairs as f64 / 16.0).round_ties_even() as usize).max(1) };
    let moving = pair_scores.iter().filter(|&&s| s > threshold).count();
    Ok(ClipMotion {
        pair_scores,
        mean_top_flow,
        threshold,
        interval,
        required_pairs,
        dynamic: n_pairs > 0 && moving >= required_pairs,
    })
}

/// Fraction of clips that are dynamic (VBench's dynamic degree, in [0, 1]); 0 for no clips.
pub fn dynamic_degree(clips: &[ClipMotion]) -> f64 {
    if clips.is_empty() {
        return 0.0;
    }
    clips.iter().filter(|c| c.dynamic).count() as f64 / clips.len() as f64
}

/// Mean of the largest `top_fraction` of the magnitudes (at least one); 0 when none are known,
/// since a frame with nothing to track shows no visible motion.
fn top_mean(mut magnitudes: Vec<f64>, cfg: &MotionConfig) -> f64 {
    if magnitudes.is_empty() {
        return 0.0;
    }
    magnitudes.sort_unstable_by(|x, y| y.total_cmp(x));
    let k = ((magnitudes.len() as f64 * cfg.top_fraction) as usize).max(1);
    magnitudes[..k].iter().sum::<f64>() / k as f64
}

fn check_same_size(a: &RgbFrame, b: &RgbFrame) -> Result<()> {
    a.validate()?;
    b.validate()?;
    if a.size() != b.size() {
        return Err(EvalError::Mismatch(format!(
            "frames differ in size: {}x{} vs {}x{}",
            a.width, a.height, b.width, b.height
        )));
    }
    Ok(())
}

/// A downscaled luma plane.
struct Luma {
    width: usize,
    height: usize,
    /// Original pixels per plane pixel, horizontally and vertically.
    scale: [f64; 2],
    data: Vec<f32>,
}

impl Luma {
    /// BT.601 luma, box-averaged down so the short side is at most `max_short_side`.
    fn downscaled(frame: &RgbFrame, max_short_side: u32) -> Result<Luma> {
        frame.validate()?;
        let (w, h) = (frame.width as usize, frame.height as usize);
        let factor = (f64::from(max_short_side) / w.min(h) as f64).min(1.0);
        let ow = ((w as f64 * factor).round() as usize).clamp(1, w);
        let oh = ((h as f64 * factor).round() as usize).clamp(1, h);
        let luma: Vec<f32> = frame
            .data
            .chunks_exact(3)
            .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
            .collect();
        let data = if (ow, oh) == (w, h) {
            luma
        } else {
            // Each output pixel averages the source pixels whose index maps into it; with
            // non-integer ratios neighbouring cells overlap by at most a pixel, which is fine for
            // a flow estimate.
            let span = |o: usize, out: usize, src: usize| {
                let lo = o * src / out;
                let hi = ((o + 1) * src).div_ceil(out).clamp(lo + 1, src);
                lo..hi
            };
            let mut data = Vec::with_capacity(ow * oh);
            for oy in 0..oh {
                let ys = span(oy, oh, h);
                for ox in 0..ow {
                    let xs = span(ox, ow, w);
                    let mut sum = 0.0f32;
                    for y in ys.clone() {
                        sum += luma[y * w + xs.start..y * w + xs.end].iter().sum::<f32>();
                    }
                    data.push(sum / (ys.len() * xs.len()) as f32);
                }
            }
            data
        };
        Ok(Luma { width: ow, height: oh, scale: [w as f64 / ow as f64, h as f64 / oh as f64], data })
    }
}

/// Exhaustive block matching from `a` to `b` (same size: both come from equal-size frames).
fn flow_between(a: &Luma, b: &Luma, cfg: &MotionConfig) -> FlowField {
    let bs = cfg.block as usize;
    let (bx_n, by_n) = (a.width / bs, a.height / bs);
    let radius = cfg.search_radius as isize;
    let area = (bs * bs) as f32;
    let bias = cfg.zero_bias * area;

    let vectors: Vec<Option<[f64; 2]>> = (0..bx_n * by_n)
        .into_par_iter()
        .map(|idx| {
            let (x0, y0) = ((idx % bx_n) * bs, (idx / bx_n) * bs);
            let mut sum = 0.0f32;
            let mut sum_sq = 0.0f32;
            for y in 0..bs {
                for &v in &a.data[(y0 + y) * a.width + x0..][..bs] {
                    sum += v;
                    sum_sq += v * v;
                }
            }
            let mean = sum / area;
            if sum_sq / area - mean * mean < cfg.texture_floor {
                return None;
            }
            let sad = |dx: isize, dy: isize, limit: f32| -> f32 {
                let (bx, by) = (x0 as isize + dx, y0 as isize + dy);
                let mut total = 0.0f32;
                for y in 0..bs {
                    let ra = &a.data[(y0 + y) * a.width + x0..][..bs];
                    let start = (by as usize + y) * b.width + bx as usize;
                    let rb = &b.data[start..start + bs];
                    total += ra.iter().zip(rb).map(|(p, q)| (p - q).abs()).sum::<f32>();
                    // Rows only add: once past the best so far, this candidate cannot win.
                    if total > limit {
                        return total;
                    }
                }
                total
            };
            let zero = sad(0, 0, f32::INFINITY);
            let (mut best, mut best_d, mut best_len) = (zero - bias, (0isize, 0isize), 0isize);
            for dy in -radius..=radius {
                let by = y0 as isize + dy;
                if by < 0 || by as usize + bs > b.height {
                    continue;
                }
                for dx in -radius..=radius {
                    let bx = x0 as isize + dx;
                    if (dx, dy) == (0, 0) || bx < 0 || bx as usize + bs > b.width {
                        continue;
                    }
                    let cost = sad(dx, dy, best);
                    let len = dx * dx + dy * dy;
                    // Ties go to the shorter vector: flat-ish regions should not drift.
                    if cost < best || (cost == best && len < best_len) {
                        (best, best_d, best_len) = (cost, (dx, dy), len);
                    }
                }
            }
            Some([best_d.0 as f64 * a.scale[0], best_d.1 as f64 * a.scale[1]])
        })
        .collect();
    let magnitudes = vectors.iter().map(|v| v.map(|[x, y]| x.hypot(y))).collect();
    FlowField { blocks_x: bx_n, blocks_y: by_n, scale: a.scale, block: cfg.block, vectors, magnitudes }
}

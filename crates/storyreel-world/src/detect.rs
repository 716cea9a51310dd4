//! Shot-boundary (hard-cut) detection without a neural network (peers.md §3.7).
//!
//! Each consecutive frame pair gets a *content score* on a 0..=255 scale: a weighted mean of
//!
//! * the mean absolute difference of the H, S and V channels (PySceneDetect's ContentDetector
//!   signal), with the hue difference taken around the colour circle and scaled by saturation,
//!   because the hue of a grey pixel is noise;
//! * a colour-histogram distance, `1 - intersection` of soft-binned joint HSV histograms, scaled
//!   to 0..=255. It ignores *where* colours are, so motion barely moves it while a change of
//!   framing or of subject does; and
//! * the mean absolute difference of a coarse luma thumbnail normalised to zero mean and unit
//!   spread, which ignores noise (it is coarse) and global lighting changes (it is normalised).
//!
//! Frames are area-averaged down to at most [`DetectorConfig::analysis_size`] pixels on the long
//! side first, so the cost per frame is small and nearly independent of the video size.
//!
//! A cut is declared in the spirit of PySceneDetect's AdaptiveDetector: the pair's score must be
//! at least [`DetectorConfig::adaptive_ratio`] times the mean score of its neighbours (±`window`
//! pairs, truncated at the ends of the video) and at least [`DetectorConfig::min_content`].
//! Continuous change inside a shot (motion, zoom, lighting ramps, noise) raises the neighbours
//! as much as the pair itself, so it does not pass; a cut is an isolated spike. Finally cuts
//! closer than [`DetectorConfig::min_shot_len`] frames to the previous one are merged, keeping
//! the stronger.
//!
//! [`detect_cuts`] works on a whole clip (in parallel); [`ShotDetector`] takes one frame at a
//! time and reports exactly the same cuts, a little later. [`score_cuts`] compares detected cuts
//! with ground truth.

use std::collections::VecDeque;

use rayon::prelude::*;
use serde::Serialize;
use storyreel_media::RgbFrame;

use crate::error::{Result, WorldError};

/// Settings of the detector; every field is public and [`DetectorConfig::validate`] checks them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorConfig {
    /// Long side, in pixels, that frames are area-averaged down to before analysis (default 48:
    /// TransNet V2 looks at 48×27; averaging also suppresses per-pixel noise).
    pub analysis_size: u32,
    /// Long side of the luma thumbnail used by the third score component (default 16).
    pub luma_size: u32,
    /// Weight of the HSV mean-absolute-difference component (default 1.0).
    pub content_weight: f32,
    /// Weight of the histogram-distance component (default 1.0; it ignores motion but follows
    /// lighting ramps closely, so it does not get more).
    pub histogram_weight: f32,
    /// Weight of the normalised luma-thumbnail component (default 2.0: it ignores lighting
    /// ramps, and cuts next to a ramp had the narrowest margins on the story world).
    pub luma_weight: f32,
    /// Hue bins of the joint HSV histogram (default 16).
    pub hue_bins: u32,
    /// Saturation bins of the joint HSV histogram (default 4).
    pub saturation_bins: u32,
    /// Value (brightness) bins of the joint HSV histogram (default 4).
    pub value_bins: u32,
    /// Pairs on each side whose mean score a candidate is compared with (default 2, as
    /// PySceneDetect's AdaptiveDetector).
    pub window: usize,
    /// How many times the neighbours' mean score a pair must reach to be a cut (default 3.0).
    pub adaptive_ratio: f32,
    /// Absolute floor on the score of a cut, on the 0..=255 scale (default 8.0). It rejects
    /// spikes in otherwise still footage, such as an edge snapping by one pixel (about 4–6);
    /// the subtlest cuts of the story world (same place, another framing or subject, at
    /// night) score above 15.
    pub min_content: f32,
    /// Minimum shot length in frames: a cut closer than this to the previous cut (or to frame 0)
    /// is dropped, the stronger of two close cuts winning (default 8: our synthetic shots are at
    /// least 17 frames, and half of that leaves room for shots a little shorter).
    pub min_shot_len: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            analysis_size: 48,
            luma_size: 16,
            content_weight: 1.0,
            histogram_weight: 1.0,
            luma_weight: 2.0,
            hue_bins: 16,
            saturation_bins: 4,
            value_bins: 4,
            window: 2,
            adaptive_ratio: 3.0,
            min_content: 8.0,
            min_shot_len: 8,
        }
    }
}

/// Histograms above this many bins in total cost more than the frames they summarise.
const MAX_HISTOGRAM_BINS: u32 = 4096;

impl DetectorConfig {
    /// Checks every field, naming the first one that is out of range.
    pub fn validate(&self) -> Result<()> {
        if self.analysis_size < 4 || self.analysis_size > 1024 {
            return Err(WorldError::out_of_range("detector analysis_size", self.analysis_size, "4..=1024 pixels"));
        }
        if self.luma_size == 0 || self.luma_size > self.analysis_size {
            return Err(WorldError::out_of_range(
                "detector luma_size",
                self.luma_size,
                format!("1..=analysis_size ({})", self.analysis_size),
            ));
        }
        for (what, w) in [
            ("detector content_weight", self.content_weight),
            ("detector histogram_weight", self.histogram_weight),
            ("detector luma_weight", self.luma_weight),
        ] {
            if !w.is_finite() || w < 0.0 {
                return Err(WorldError::out_of_range(what, w, "a finite weight >= 0"));
            }
        }
        let total = self.content_weight + self.histogram_weight + self.luma_weight;
        if total <= 0.0 || !total.is_finite() {
            return Err(WorldError::out_of_range(
                "detector weights (content + histogram + luma)",
                total,
                "a finite sum > 0 (at least one component must count)",
            ));
        }
        for (what, bins) in [
            ("detector hue_bins", self.hue_bins),
            ("detector saturation_bins", self.saturation_bins),
            ("detector value_bins", self.value_bins),
        ] {
            if bins == 0 || bins > 256 {
                return Err(WorldError::out_of_range(what, bins, "1..=256"));
            }
        }
        let bins = self.hue_bins * self.saturation_bins * self.value_bins;
        if bins > MAX_HISTOGRAM_BINS {
            return Err(WorldError::out_of_range(
                "detector histogram bins (hue × saturation × value)",
                bins,
                format!("at most {MAX_HISTOGRAM_BINS}"),
            ));
        }
        if self.window == 0 || self.window > 1000 {
            return Err(WorldError::out_of_range("detector window", self.window, "1..=1000 pairs"));
        }
        if !self.adaptive_ratio.is_finite() || self.adaptive_ratio <= 0.0 {
            return Err(WorldError::out_of_range("detector adaptive_ratio", self.adaptive_ratio, "a finite ratio > 0"));
        }
        if !self.min_content.is_finite() || self.min_content < 0.0 {
            return Err(WorldError::out_of_range(
                "detector min_content",
                self.min_content,
                "a finite score >= 0 (0..=255 scale)",
            ));
        }
        Ok(())
    }

    /// Weights normalised to sum to 1, so `min_content` keeps its meaning when they change.
    fn normalised_weights(&self) -> [f32; 3] {
        let total = self.content_weight + self.histogram_weight + self.luma_weight;
        [self.content_weight / total, self.histogram_weight / total, self.luma_weight / total]
    }
}

/// What one frame contributes to the scores of the two pairs it belongs to.
#[derive(Debug, Clone)]
struct Features {
    /// Hue in sextants (0..6), saturation and value (0..1), per analysis pixel.
    hsv: Vec<[f32; 3]>,
    /// Joint HSV histogram, normalised to sum to 1.
    histogram: Vec<f32>,
    /// Luma thumbnail, 0..=255.
    luma: Vec<f32>,
}

/// Area-averages `src` (`w × h` pixels of `C` channels) so that its long side is at most
/// `max_side`; an integer block factor keeps every source pixel's weight equal.
fn area_downscale<const C: usize>(src: &[[f32; C]], w: usize, h: usize, max_side: usize) -> (Vec<[f32; C]>, usize) {
    let k = w.max(h).div_ceil(max_side).max(1);
    if k == 1 {
        return (src.to_vec(), w);
    }
    let (ow, oh) = (w.div_ceil(k), h.div_ceil(k));
    let mut sums = vec![[0.0f32; C]; ow * oh];
    let mut counts = vec![0u32; ow * oh];
    for y in 0..h {
        let row = (y / k) * ow;
        for (x, px) in src[y * w..(y + 1) * w].iter().enumerate() {
            let o = row + x / k;
            for c in 0..C {
                sums[o][c] += px[c];
            }
            counts[o] += 1;
        }
    }
    for (s, &n) in sums.iter_mut().zip(&counts) {
        for v in s.iter_mut() {
            *v /= n as f32;
        }
    }
    (sums, ow)
}

/// Like [`area_downscale`] but straight from RGB8 bytes, so a large frame is never converted
/// to floats at full size.
fn downscale_rgb(frame: &RgbFrame, max_side: usize) -> (Vec<[f32; 3]>, usize) {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let k = w.max(h).div_ceil(max_side).max(1);
    let (ow, oh) = (w.div_ceil(k), h.div_ceil(k));
    let mut sums = vec![[0.0f32; 3]; ow * oh];
    let mut counts = vec![0u32; ow * oh];
    for (y, row_px) in frame.data.chunks_exact(w * 3).enumerate() {
        let row = (y / k) * ow;
        for (x, px) in row_px.chunks_exact(3).enumerate() {
            let o = row + x / k;
            sums[o][0] += f32::from(px[0]);
            sums[o][1] += f32::from(px[1]);
            sums[o][2] += f32::from(px[2]);
            counts[o] += 1;
        }
    }
    for (s, &n) in sums.iter_mut().zip(&counts) {
        for v in s.iter_mut() {
            *v /= n as f32;
        }
    }
    (sums, ow)
}

/// RGB in 0..=255 to (hue in sextants 0..6, saturation 0..1, value 0..1).
fn rgb_to_hsv([r, g, b]: [f32; 3]) -> [f32; 3] {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let chroma = max - min;
    let v = max / 255.0;
    if max <= 0.0 || chroma <= 0.0 {
        return [0.0, 0.0, v];
    }
    let s = chroma / max;
    let h = if max == r {
        (g - b) / chroma
    } else if max == g {
        (b - r) / chroma + 2.0
    } else {
        (r - g) / chroma + 4.0
    };
    [h.rem_euclid(6.0), s, v]
}

/// Splits a continuous bin coordinate into (lower bin, upper bin, upper weight), clamped at the
/// edges; soft binning keeps the histogram distance continuous under gradual lighting changes
/// instead of jumping when many pixels cross a bin edge in the same frame.
fn soft_bin(coord: f32, bins: usize) -> (usize, usize, f32) {
    let c = (coord - 0.5).clamp(0.0, (bins - 1) as f32);
    let lo = c.floor() as usize;
    let hi = (lo + 1).min(bins - 1);
    (lo, hi, c - lo as f32)
}

impl Features {
    fn of(frame: &RgbFrame, cfg: &DetectorConfig) -> Self {
        let (rgb, w) = downscale_rgb(frame, cfg.analysis_size as usize);
        let h = rgb.len() / w;
        let hsv: Vec<[f32; 3]> = rgb.iter().map(|&p| rgb_to_hsv(p)).collect();

        let (hb, sb, vb) = (cfg.hue_bins as usize, cfg.saturation_bins as usize, cfg.value_bins as usize);
        let mut histogram = vec![0.0f32; hb * sb * vb];
        for &[hue, s, v] in &hsv {
            // Hue wraps around, so its two bins are neighbours modulo `hb`.
            let hc = hue / 6.0 * hb as f32 - 0.5;
            let h_lo = hc.floor();
            let h_w = hc - h_lo;
            let h0 = (h_lo as i64).rem_euclid(hb as i64) as usize;
            let h1 = (h0 + 1) % hb;
            let (s0, s1, s_w) = soft_bin(s * sb as f32, sb);
            let (v0, v1, v_w) = soft_bin(v * vb as f32, vb);
            for (hi, hw) in [(h0, 1.0 - h_w), (h1, h_w)] {
                for (si, sw) in [(s0, 1.0 - s_w), (s1, s_w)] {
                    for (vi, vw) in [(v0, 1.0 - v_w), (v1, v_w)] {
                        histogram[(hi * sb + si) * vb + vi] += hw * sw * vw;
                    }
                }
            }
        }
        let n = hsv.len() as f32;
        for b in &mut histogram {
            *b /= n;
        }

        let luma_full: Vec<[f32; 1]> = rgb.iter().map(|&[r, g, b]| [0.299 * r + 0.587 * g + 0.114 * b]).collect();
        let (luma, _) = area_downscale(&luma_full, w, h, cfg.luma_size as usize);
        Self { hsv, histogram, luma: normalise_luma(luma.into_iter().map(|[l]| l).collect()) }
    }
}

/// Spread below which a thumbnail counts as flat, so grain on a blank frame is not blown up.
const MIN_LUMA_SPREAD: f32 = 4.0;

/// How far a unit of normalised luma difference counts on the 0..=255 scale: two unrelated
/// images differ by about 1 on average, which then scores like the other components do.
const LUMA_SCALE: f32 = 64.0;

/// Subtracts the mean and divides by the mean absolute deviation, so the thumbnail keeps the
/// frame's structure but forgets its overall brightness and contrast: a lighting ramp, which
/// changes both a little every frame, then barely moves this component while a cut still does.
fn normalise_luma(mut luma: Vec<f32>) -> Vec<f32> {
    let n = luma.len() as f32;
    let mean = luma.iter().sum::<f32>() / n;
    let spread = (luma.iter().map(|l| (l - mean).abs()).sum::<f32>() / n).max(MIN_LUMA_SPREAD);
    for l in &mut luma {
        *l = (*l - mean) / spread;
    }
    luma
}

/// The score of one pair on the 0..=255 scale.
fn pair_score(a: &Features, b: &Features, weights: [f32; 3]) -> f32 {
    let mut content = 0.0f64;
    for (&[h0, s0, v0], &[h1, s1, v1]) in a.hsv.iter().zip(&b.hsv) {
        let dh = (h0 - h1).abs();
        // 3 sextants is the far side of the colour circle: scale that to 1.
        let dh = dh.min(6.0 - dh) / 3.0 * s0.min(s1);
        content += f64::from(dh + (s0 - s1).abs() + (v0 - v1).abs());
    }
    let content = (content / (3.0 * a.hsv.len() as f64)) as f32 * 255.0;

    // Half the L1 distance equals `1 - intersection` for histograms that sum to 1, and is
    // exactly 0 for identical ones, where `1 - sum(min)` would leave rounding residue.
    let l1: f32 = a.histogram.iter().zip(&b.histogram).map(|(x, y)| (x - y).abs()).sum();
    let histogram = (0.5 * l1).clamp(0.0, 1.0) * 255.0;

    let luma = a.luma.iter().zip(&b.luma).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.luma.len() as f32 * LUMA_SCALE;

    weights[0] * content + weights[1] * histogram + weights[2] * luma
}

/// Errors unless `frame` is well formed and the size of the clip's first frame.
fn check_frame(index: usize, frame: &RgbFrame, first: (u32, u32)) -> Result<()> {
    frame.validate()?;
    if frame.size() != first {
        return Err(WorldError::out_of_range(
            format!("size of frame {index}"),
            format!("{}x{}", frame.width, frame.height),
            format!("{}x{} (the size of frame 0; a clip must not change size)", first.0, first.1),
        ));
    }
    Ok(())
}

/// Content score of every consecutive pair: element `i` compares frames `i` and `i + 1`, so the
/// result has `frames.len() - 1` elements (none for 0 or 1 frames).
pub fn frame_scores(frames: &[RgbFrame], cfg: &DetectorConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    let Some(first) = frames.first() else {
        return Ok(Vec::new());
    };
    for (i, f) in frames.iter().enumerate() {
        check_frame(i, f, first.size())?;
    }
    let features: Vec<Features> = frames.par_iter().map(|f| Features::of(f, cfg)).collect();
    let weights = cfg.normalised_weights();
    Ok(features.par_windows(2).map(|p| pair_score(&p[0], &p[1], weights)).collect())
}

/// Whether `scores[j]` passes the adaptive test against its ±`window` neighbours in `scores`
/// (which may be a window of a longer clip, truncated where the clip ends). Shared by the
/// batch and streaming paths so both do identical arithmetic.
fn is_candidate(scores: &[f32], j: usize, cfg: &DetectorConfig) -> bool {
    let score = scores[j];
    if score < cfg.min_content || score <= 0.0 {
        return false;
    }
    let lo = j.saturating_sub(cfg.window);
    let hi = (j + cfg.window).min(scores.len() - 1);
    let (mut sum, mut count) = (0.0f64, 0u32);
    for (k, &s) in scores.iter().enumerate().take(hi + 1).skip(lo) {
        if k != j {
            sum += f64::from(s);
            count += 1;
        }
    }
    let mean = if count == 0 { 0.0 } else { sum / f64::from(count) };
    // A spike over perfectly still neighbours has an infinite ratio; `min_content` decides.
    mean <= 0.0 || f64::from(score) >= f64::from(cfg.adaptive_ratio) * mean
}

/// Applies `min_shot_len` to candidates arriving in frame order, holding the latest one back
/// until no later candidate could be close enough to displace it.
#[derive(Debug, Clone)]
struct CutPicker {
    min_shot_len: usize,
    pending: Option<(usize, f32)>,
}

impl CutPicker {
    fn new(min_shot_len: usize) -> Self {
        Self { min_shot_len, pending: None }
    }

    /// Feeds the decision for the cut at frame `cut` (the start of a would-be shot); returns a
    /// cut that has become final, if any. Cuts must arrive in increasing order, every one of
    /// them, candidate or not, so that pending cuts are released on time.
    fn step(&mut self, cut: usize, candidate: Option<f32>) -> Option<usize> {
        let mut released = None;
        if let Some((p, _)) = self.pending {
            if cut >= p + self.min_shot_len {
                released = Some(p);
                self.pending = None;
            }
        }
        if let Some(score) = candidate {
            // The first shot must be long enough too: frame 0 acts as an unbeatable cut.
            if cut < self.min_shot_len {
                return released;
            }
            match self.pending {
                Some((_, ps)) if score <= ps => {}
                _ => self.pending = Some((cut, score)),
            }
        }
        released
    }

    /// Releases the last pending cut unless it would leave a final shot shorter than
    /// `min_shot_len` (H.264 often jolts the very last frames, which is not a cut).
    fn finish(&mut self, total_frames: usize) -> Option<usize> {
        self.pending.take().map(|(p, _)| p).filter(|&p| total_frames >= p + self.min_shot_len)
    }
}

/// Cut frames from precomputed pair scores (as [`frame_scores`] returns them); useful to sweep
/// thresholds without rescoring the video.
pub fn cuts_from_scores(scores: &[f32], cfg: &DetectorConfig) -> Result<Vec<usize>> {
    cfg.validate()?;
    let mut picker = CutPicker::new(cfg.min_shot_len);
    let mut cuts = Vec::new();
    for j in 0..scores.len() {
        let candidate = is_candidate(scores, j, cfg).then_some(scores[j]);
        cuts.extend(picker.step(j + 1, candidate));
    }
    cuts.extend(picker.finish(scores.len() + 1));
    Ok(cuts)
}

/// Frame indices where a new shot starts (shots `[0,17)`, `[17,34)` give `[17]`), ascending.
pub fn detect_cuts(frames: &[RgbFrame], cfg: &DetectorConfig) -> Result<Vec<usize>> {
    let scores = frame_scores(frames, cfg)?;
    cuts_from_scores(&scores, cfg)
}

/// Shots as half-open frame ranges covering `0..n_frames`; cuts are sorted and deduplicated,
/// and ones at 0 or at/after `n_frames` are ignored.
pub fn cuts_to_ranges(cuts: &[usize], n_frames: usize) -> Vec<(usize, usize)> {
    if n_frames == 0 {
        return Vec::new();
    }
    let mut inner: Vec<usize> = cuts.iter().copied().filter(|&c| c > 0 && c < n_frames).collect();
    inner.sort_unstable();
    inner.dedup();
    let mut ranges = Vec::with_capacity(inner.len() + 1);
    let mut start = 0;
    for c in inner {
        ranges.push((start, c));
        start = c;
    }
    ranges.push((start, n_frames));
    ranges
}

/// Frame-at-a-time detector giving exactly [`detect_cuts`]'s cuts; a cut is reported once
/// `window` more frames have arrived and no stronger cut can follow within `min_shot_len`.
#[derive(Debug, Clone)]
pub struct ShotDetector {
    cfg: DetectorConfig,
    weights: [f32; 3],
    first_size: Option<(u32, u32)>,
    prev: Option<Features>,
    frames_seen: usize,
    /// Scores of pairs `base..base + scores.len()`: just the span the undecided pairs need.
    scores: VecDeque<f32>,
    base: usize,
    /// The next pair (index into the clip's score list) to decide.
    next: usize,
    picker: CutPicker,
}

impl ShotDetector {
    /// A detector with the given settings, after validating them.
    pub fn new(cfg: DetectorConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            weights: cfg.normalised_weights(),
            picker: CutPicker::new(cfg.min_shot_len),
            cfg,
            first_size: None,
            prev: None,
            frames_seen: 0,
            scores: VecDeque::new(),
            base: 0,
            next: 0,
        })
    }

    /// Frames pushed so far.
    pub fn frames_seen(&self) -> usize {
        self.frames_seen
    }

    /// Adds the next frame; returns a cut (frame index of a shot start) that became final.
    pub fn push(&mut self, frame: &RgbFrame) -> Result<Option<usize>> {
        check_frame(self.frames_seen, frame, self.first_size.unwrap_or(frame.size()))?;
        self.first_size = Some(frame.size());
        let features = Features::of(frame, &self.cfg);
        if let Some(prev) = &self.prev {
            self.scores.push_back(pair_score(prev, &features, self.weights));
        }
        self.prev = Some(features);
        self.frames_seen += 1;

        // Pair `next` is decidable once its right-hand window is complete.
        let known = self.base + self.scores.len();
        if self.next + self.cfg.window < known {
            return Ok(self.decide_next(false));
        }
        Ok(None)
    }

    /// Decides the pairs still waiting for their right-hand window (the clip has ended, so it is
    /// truncated) and returns the remaining cuts; the detector is then spent.
    pub fn finish(mut self) -> Vec<usize> {
        let mut cuts = Vec::new();
        while self.next < self.base + self.scores.len() {
            cuts.extend(self.decide_next(true));
        }
        cuts.extend(self.picker.finish(self.frames_seen));
        cuts
    }

    fn decide_next(&mut self, at_end: bool) -> Option<usize> {
        let j = self.next;
        // The slice must look exactly like the batch path's view around `j`: everything from
        // `j - window` up to `j + window`, or to the end of the clip when it has ended.
        let lo = j.saturating_sub(self.cfg.window);
        while self.base < lo {
            self.scores.pop_front();
            self.base += 1;
        }
        let known = self.base + self.scores.len();
        let hi = if at_end { known } else { (j + self.cfg.window + 1).min(known) };
        let view: Vec<f32> = self.scores.iter().take(hi - self.base).copied().collect();
        let local = j - self.base;
        let candidate = is_candidate(&view, local, &self.cfg).then_some(view[local]);
        self.next += 1;
        self.picker.step(j + 1, candidate)
    }
}

/// Detected cuts compared with ground truth (see [`score_cuts`]); counts add up over videos.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CutScore {
    /// Detected cuts matched to a true cut.
    pub true_positives: usize,
    /// Detected cuts matched to nothing.
    pub false_positives: usize,
    /// True cuts matched by nothing.
    pub false_negatives: usize,
    /// `tp / (tp + fp)`; 1 when nothing was detected (no false claim was made).
    pub precision: f64,
    /// `tp / (tp + fn)`; 1 when there was nothing to find.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
}

impl CutScore {
    /// A score from counts, deriving precision, recall and F1.
    pub fn from_counts(true_positives: usize, false_positives: usize, false_negatives: usize) -> Self {
        let ratio = |num: usize, den: usize| if den == 0 { 1.0 } else { num as f64 / den as f64 };
        let precision = ratio(true_positives, true_positives + false_positives);
        let recall = ratio(true_positives, true_positives + false_negatives);
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Self { true_positives, false_positives, false_negatives, precision, recall, f1 }
    }

    /// The two scores' counts added (micro-averaging), derived values recomputed.
    pub fn merge(&self, other: &CutScore) -> CutScore {
        Self::from_counts(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
        )
    }

    /// All scores merged; an empty iterator gives the perfect score of an empty video.
    pub fn total<'a>(scores: impl IntoIterator<Item = &'a CutScore>) -> CutScore {
        scores.into_iter().fold(Self::from_counts(0, 0, 0), |acc, s| acc.merge(s))
    }
}

/// Matches `predicted` cuts to `truth` cuts one to one: a prediction within `tolerance` frames
/// of a true cut may match it. Matching is greedy by distance (closest pairs first, ties to the
/// earlier true cut, then the earlier prediction); each true cut and each prediction is used at
/// most once, so duplicated predictions count as false positives.
pub fn score_cuts(predicted: &[usize], truth: &[usize], tolerance: usize) -> CutScore {
    let (truth_used, _) = match_cuts(predicted, truth, tolerance);
    let tp = truth_used.iter().filter(|&&m| m).count();
    CutScore::from_counts(tp, predicted.len() - tp, truth.len() - tp)
}

/// The matching [`score_cuts`] scores: whether each true cut and each prediction was matched.
pub fn match_cuts(predicted: &[usize], truth: &[usize], tolerance: usize) -> (Vec<bool>, Vec<bool>) {
    let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
    for (ti, &t) in truth.iter().enumerate() {
        for (pi, &p) in predicted.iter().enumerate() {
            let d = t.abs_diff(p);
            if d <= tolerance {
                pairs.push((d, ti, pi));
            }
        }
    }
    pairs.sort_unstable_by_key(|&(d, ti, pi)| (d, truth[ti], ti, predicted[pi], pi));
    let mut truth_used = vec![false; truth.len()];
    let mut pred_used = vec![false; predicted.len()];
    for (_, ti, pi) in pairs {
        if !truth_used[ti] && !pred_used[pi] {
            truth_used[ti] = true;
            pred_used[pi] = true;
        }
    }
    (truth_used, pred_used)
}

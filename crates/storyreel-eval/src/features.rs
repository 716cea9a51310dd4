//! Hand-made image features the probe learns from.
//!
//! Frames are first reduced to [`PROBE_SIZE`]² by area averaging, then divided by their own
//! per-channel mean ("grey world"): the world's lighting is a per-channel gain, so this removes
//! most of it and lets one probe read places and characters by day and by night.

use storyreel_media::RgbFrame;

/// Side of the square the probe looks at.
pub const PROBE_SIZE: usize = 64;
/// Cells per side of the probe's grids (foreground map, colour layout).
pub const GRID: usize = 8;
/// Length of [`global_features`].
pub const GLOBAL_FEATURES: usize = GRID * GRID * 3 + GRID * GRID * 2 + 2 * REGION_FEATURES + 2 + 6;
/// Length of [`region_histogram`] and [`weighted_histogram`].
pub const REGION_FEATURES: usize = CHROMA_BINS * CHROMA_BINS + LUMA_BINS + HUE_BINS;

const CHROMA_BINS: usize = 6;
const LUMA_BINS: usize = 8;
const HUE_BINS: usize = 12;

/// A frame reduced for the probe: raw and lighting-normalised RGB in [0, 1], row-major.
#[derive(Debug, Clone)]
pub struct ProbeImage {
    /// Colours as rendered (after resizing).
    pub raw: Vec<[f32; 3]>,
    /// Colours divided by twice their frame mean per channel, clamped to [0, 1].
    pub normalised: Vec<[f32; 3]>,
    /// Per-channel mean of `raw` (the light, mostly).
    pub channel_mean: [f32; 3],
    /// Per-channel standard deviation of `raw`.
    pub channel_std: [f32; 3],
}

impl ProbeImage {
    /// Area-averages `frame` to [`PROBE_SIZE`]² and normalises its light.
    pub fn new(frame: &RgbFrame) -> Self {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let n = PROBE_SIZE;
        let mut raw = vec![[0.0f32; 3]; n * n];
        for (oy, row) in raw.chunks_mut(n).enumerate() {
            let (y0, y1) = span(oy, n, h);
            for (ox, px) in row.iter_mut().enumerate() {
                let (x0, x1) = span(ox, n, w);
                let mut acc = [0.0f32; 3];
                for y in y0..y1 {
                    let line = &frame.data[(y * w) * 3..(y * w + w) * 3];
                    for x in x0..x1 {
                        for k in 0..3 {
                            acc[k] += line[x * 3 + k] as f32;
                        }
                    }
                }
                let count = ((y1 - y0) * (x1 - x0)).max(1) as f32 * 255.0;
                *px = [acc[0] / count, acc[1] / count, acc[2] / count];
            }
        }
        Self::from_raw(raw)
    }

    /// Builds the normalised view of already-reduced colours.
    pub fn from_raw(raw: Vec<[f32; 3]>) -> Self {
        let count = raw.len().max(1) as f32;
        let mut mean = [0.0f32; 3];
        for p in &raw {
            for k in 0..3 {
                mean[k] += p[k] / count;
            }
        }
        let mut var = [0.0f32; 3];
        for p in &raw {
            for k in 0..3 {
                var[k] += (p[k] - mean[k]).powi(2) / count;
            }
        }
        let normalised = raw
            .iter()
            .map(|p| {
                let mut q = [0.0f32; 3];
                for k in 0..3 {
                    q[k] = (p[k] / (2.0 * mean[k]).max(0.02)).clamp(0.0, 1.0);
                }
                q
            })
            .collect();
        Self { raw, normalised, channel_mean: mean, channel_std: [var[0].sqrt(), var[1].sqrt(), var[2].sqrt()] }
    }
}

/// Source pixel range `[a, b)` covered by output cell `i` of `n` over `len` pixels.
fn span(i: usize, n: usize, len: usize) -> (usize, usize) {
    let a = i * len / n;
    let b = ((i + 1) * len / n).max(a + 1).min(len);
    (a.min(len - 1), b)
}

fn luma(p: [f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// Hue in [0, 1) and saturation in [0, 1] of an RGB colour.
fn hue_saturation(p: [f32; 3]) -> (f32, f32) {
    let max = p[0].max(p[1]).max(p[2]);
    let min = p[0].min(p[1]).min(p[2]);
    let d = max - min;
    if max <= 1e-6 || d <= 1e-6 {
        return (0.0, 0.0);
    }
    let h = if max == p[0] {
        ((p[1] - p[2]) / d).rem_euclid(6.0)
    } else if max == p[1] {
        (p[2] - p[0]) / d + 2.0
    } else {
        (p[0] - p[1]) / d + 4.0
    };
    (h / 6.0, d / max)
}

/// The probe's input vector: colour layout, edge layout, colour histograms and the light.
pub fn global_features(img: &ProbeImage) -> Vec<f32> {
    let n = PROBE_SIZE;
    let cell = n / GRID;
    let mut out = Vec::with_capacity(GLOBAL_FEATURES);
    // Colour layout: where the sky, ground and characters are.
    for gy in 0..GRID {
        for gx in 0..GRID {
            let mut acc = [0.0f32; 3];
            for y in gy * cell..(gy + 1) * cell {
                for x in gx * cell..(gx + 1) * cell {
                    let p = img.normalised[y * n + x];
                    for k in 0..3 {
                        acc[k] += p[k];
                    }
                }
            }
            let c = (cell * cell) as f32;
            out.extend(acc.iter().map(|v| v / c));
        }
    }
    // Edge layout: textures and outlines (grass, windows, stripes, spots).
    let l: Vec<f32> = img.normalised.iter().map(|&p| luma(p)).collect();
    for gy in 0..GRID {
        for gx in 0..GRID {
            let mut acc = 0.0;
            for y in gy * cell..(gy + 1) * cell {
                for x in gx * cell..(gx + 1) * cell {
                    let dx = l[y * n + (x + 1).min(n - 1)] - l[y * n + x];
                    let dy = l[(y + 1).min(n - 1) * n + x] - l[y * n + x];
                    acc += (dx * dx + dy * dy).sqrt();
                }
            }
            out.push(acc / (cell * cell) as f32 * 4.0);
        }
    }
    out.extend(region_histogram(img, None));
    // Salient pixels: the world's backgrounds are layered in rows (sky, sea, ground), so a
    // pixel far from its row's median colour is most likely a character. Their histogram and
    // layout say who is there and where, mostly free of the place's own colours.
    let salience = row_salience(img);
    for gy in 0..GRID {
        for gx in 0..GRID {
            let mut acc = 0.0;
            for y in gy * cell..(gy + 1) * cell {
                for x in gx * cell..(gx + 1) * cell {
                    acc += salience[y * n + x];
                }
            }
            out.push(acc / (cell * cell) as f32);
        }
    }
    out.extend(weighted_histogram(img, &salience));
    // Pattern cues among salient pixels: dark marks (stripes, spots, checks) and edges.
    let (mut weight, mut dark, mut edges) = (0.0f32, 0.0f32, 0.0f32);
    for y in 0..n {
        for x in 0..n {
            let w = salience[y * n + x];
            if w <= 0.0 {
                continue;
            }
            let v = l[y * n + x];
            let dx = l[y * n + (x + 1).min(n - 1)] - v;
            let dy = l[(y + 1).min(n - 1) * n + x] - v;
            weight += w;
            dark += w * (v < 0.25) as u8 as f32;
            edges += w * (dx * dx + dy * dy).sqrt();
        }
    }
    out.push(if weight > 0.0 { dark / weight } else { 0.0 });
    out.push(if weight > 0.0 { edges / weight * 4.0 } else { 0.0 });
    out.extend(img.channel_mean);
    out.extend(img.channel_std);
    out
}

/// Per-pixel salience in [0, 1]: distance from the median colour of the pixel's row.
pub fn row_salience(img: &ProbeImage) -> Vec<f32> {
    let n = PROBE_SIZE;
    let mut out = vec![0.0f32; n * n];
    let mut channel = vec![0.0f32; n];
    for y in 0..n {
        let row = &img.normalised[y * n..(y + 1) * n];
        let mut median = [0.0f32; 3];
        for (k, m) in median.iter_mut().enumerate() {
            for (c, p) in channel.iter_mut().zip(row) {
                *c = p[k];
            }
            channel.sort_by(|a, b| a.total_cmp(b));
            *m = channel[n / 2];
        }
        for (x, p) in row.iter().enumerate() {
            let d = (p[0] - median[0]).abs() + (p[1] - median[1]).abs() + (p[2] - median[2]).abs();
            out[y * n + x] = ((d - 0.12) * 4.0).clamp(0.0, 1.0);
        }
    }
    out
}

/// [`region_histogram`] with a weight per pixel instead of per cell.
pub fn weighted_histogram(img: &ProbeImage, pixel_weights: &[f32]) -> Vec<f32> {
    histogram_with(img, |i| pixel_weights.get(i).copied().unwrap_or(0.0))
}

/// Colour histogram (chromaticity, brightness, saturation-weighted hue) of a region, each part
/// summing to 1. `cell_weights` (GRID² values in [0, 1]) weights each grid cell's pixels; `None`
/// takes the whole frame.
pub fn region_histogram(img: &ProbeImage, cell_weights: Option<&[f32]>) -> Vec<f32> {
    let n = PROBE_SIZE;
    let cell = n / GRID;
    histogram_with(img, |i| match cell_weights {
        Some(cw) => cw.get(((i / n) / cell) * GRID + (i % n) / cell).copied().unwrap_or(0.0),
        None => 1.0,
    })
}

fn histogram_with(img: &ProbeImage, weight_of: impl Fn(usize) -> f32) -> Vec<f32> {
    let n = PROBE_SIZE;
    let mut chroma = [0.0f32; CHROMA_BINS * CHROMA_BINS];
    let mut lum = [0.0f32; LUMA_BINS];
    let mut hue = [0.0f32; HUE_BINS];
    let mut total = 0.0f32;
    let mut hue_total = 0.0f32;
    for y in 0..n {
        for x in 0..n {
            let w = weight_of(y * n + x);
            if w <= 0.0 {
                continue;
            }
            let p = img.normalised[y * n + x];
            let s = p[0] + p[1] + p[2] + 1e-3;
            let (r, g) = (p[0] / s, p[1] / s);
            let bin = |v: f32| ((v * CHROMA_BINS as f32 * 1.4) as usize).min(CHROMA_BINS - 1);
            chroma[bin(r) * CHROMA_BINS + bin(g)] += w;
            lum[((luma(p) * LUMA_BINS as f32) as usize).min(LUMA_BINS - 1)] += w;
            let (h, sat) = hue_saturation(p);
            hue[((h * HUE_BINS as f32) as usize).min(HUE_BINS - 1)] += w * sat;
            hue_total += w * sat;
            total += w;
        }
    }
    let mut out = Vec::with_capacity(REGION_FEATURES);
    let norm = |v: &[f32], t: f32, out: &mut Vec<f32>| out.extend(v.iter().map(|x| if t > 0.0 { x / t } else { 0.0 }));
    norm(&chroma, total, &mut out);
    norm(&lum, total, &mut out);
    norm(&hue, hue_total, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_light_invariance() {
        let frame = RgbFrame::from_fn(96, 80, |x, y| [(x * 2) as u8, (y * 3) as u8, 90]).unwrap();
        let img = ProbeImage::new(&frame);
        assert_eq!(global_features(&img).len(), GLOBAL_FEATURES);
        assert_eq!(region_histogram(&img, None).len(), REGION_FEATURES);
        // Halving every channel changes the light, not the normalised view.
        let dim = RgbFrame::from_fn(96, 80, |x, y| [x as u8, (y * 3 / 2) as u8, 45]).unwrap();
        let a = region_histogram(&img, None);
        let b = region_histogram(&ProbeImage::new(&dim), None);
        let diff: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
        assert!(diff < 0.1, "{diff}");
    }
}

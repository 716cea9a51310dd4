//! Feature-space consistency: cosine similarities between per-frame embeddings (DINO, CLIP, ...).
//!
//! [`vbench_consistency`] is VBench's subject/background consistency formula (peers.md §3.5) for
//! frames within a shot; [`mean_pairwise_cosine`] and [`centroid_cosine`] compare shots.
//!
//! Vectors of different lengths give NaN rather than an error or a truncated dot product: the
//! caller built them all with one encoder, so a mismatch is a wiring bug, and NaN carries through
//! every mean here (the clamps keep it) so it shows up in the report instead of a plausible number.

/// Cosine similarity in f64; 0 when either vector has zero norm, NaN when the lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::NAN;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        // A blank embedding says nothing about similarity; 0 is the neutral value VBench's
        // clamp would produce anyway.
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
}

/// VBench consistency: mean over frames t >= 1 of `(max(0, cos(f_t, f_{t-1})) + max(0, cos(f_t, f_0))) / 2`; `None` below 2 frames.
pub fn vbench_consistency(features: &[Vec<f32>]) -> Option<f64> {
    let first = features.first()?;
    if features.len() < 2 {
        return None;
    }
    let sum: f64 = features
        .windows(2)
        .map(|w| (non_negative(cosine(&w[1], &w[0])) + non_negative(cosine(&w[1], first))) / 2.0)
        .sum();
    Some(sum / (features.len() - 1) as f64)
}

/// Mean cosine over every pair (one vector from `a`, one from `b`); `None` if either is empty.
pub fn mean_pairwise_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<f64> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let sum: f64 = a.iter().map(|x| b.iter().map(|y| cosine(x, y)).sum::<f64>()).sum();
    Some(sum / (a.len() * b.len()) as f64)
}

/// Cosine between the mean vectors of `a` and `b`; `None` if either is empty.
pub fn centroid_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<f64> {
    let (ca, cb) = (centroid(a)?, centroid(b)?);
    Some(cosine(&ca, &cb))
}

/// The mean vector (accumulated in f64); an all-NaN vector when the lengths differ, so that
/// [`cosine`] of it is NaN.
fn centroid(vectors: &[Vec<f32>]) -> Option<Vec<f32>> {
    let dim = vectors.first()?.len();
    if vectors.iter().any(|v| v.len() != dim) {
        return Some(vec![f32::NAN; dim.max(1)]);
    }
    let mut sum = vec![0.0f64; dim];
    for v in vectors {
        for (s, &x) in sum.iter_mut().zip(v) {
            *s += f64::from(x);
        }
    }
    let n = vectors.len() as f64;
    Some(sum.into_iter().map(|s| (s / n) as f32).collect())
}

/// VBench's `max(0, c)`, written so that NaN stays NaN (`f64::max` would turn it into 0).
fn non_negative(c: f64) -> f64 {
    if c < 0.0 {
        0.0
    } else {
        c
    }
}

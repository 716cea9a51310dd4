//! Wan's 3D RoPE on adjacent channel pairs, with ShotStream's shot-phase indicator.
//!
//! A head of width d has d/2 complex pairs split [t, h, w] with h = w = ⌊d/6⌋ and t = d/2 − 2h
//! (22/21/21 at d = 128). Pair j of an axis with n pairs turns by pos·10000^(−2j/(2n)). The
//! temporal angle also gets s·θ, where s is the frame's shot flag: a frequency-independent phase
//! that tells the context cache apart from the current shot (shotstream.md §3.4).

use candle_core::{Device, Tensor};

use crate::error::{NnError, Result};

/// RoPE settings shared by every layer.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Frequency base (10000 in Wan).
    pub theta: f64,
    /// Shot-phase step θ in radians per shot flag; `None` switches the indicator off (ablation).
    pub shot_phase: Option<f32>,
}

impl Default for RopeConfig {
    fn default() -> Self {
        Self { theta: 10000.0, shot_phase: Some(1.0 / 6.0) }
    }
}

/// Where one latent frame sits for RoPE: temporal position and shot flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FramePhase {
    /// Temporal position (contiguous: context 0..5, then the shot's frames 6..).
    pub position: usize,
    /// Shot flag s; the temporal angle gets s·θ.
    pub shot_flag: i64,
}

/// The per-axis frequency tables for one head width.
#[derive(Debug, Clone)]
pub struct Rope {
    cfg: RopeConfig,
    freqs_t: Vec<f64>,
    freqs_h: Vec<f64>,
    freqs_w: Vec<f64>,
}

fn axis_freqs(pairs: usize, theta: f64) -> Vec<f64> {
    let dim = 2 * pairs;
    (0..pairs).map(|j| 1.0 / theta.powf((2 * j) as f64 / dim as f64)).collect()
}

/// Largest position the reference tables cover on any axis.
pub const MAX_POSITIONS: usize = 1024;

impl Rope {
    /// Frequency tables for heads of width `head_dim`.
    pub fn new(head_dim: usize, cfg: RopeConfig) -> Result<Self> {
        if !head_dim.is_multiple_of(2) || head_dim < 6 {
            return Err(NnError::Config(format!("RoPE needs an even head width ≥ 6, got {head_dim}")));
        }
        let pairs = head_dim / 2;
        let hw = head_dim / 6;
        let t = pairs - 2 * hw;
        Ok(Self {
            freqs_t: axis_freqs(t, cfg.theta),
            freqs_h: axis_freqs(hw, cfg.theta),
            freqs_w: axis_freqs(hw, cfg.theta),
            cfg,
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &RopeConfig {
        &self.cfg
    }

    /// Complex pairs per head.
    pub fn pairs(&self) -> usize {
        self.freqs_t.len() + self.freqs_h.len() + self.freqs_w.len()
    }

    /// cos and sin tables `[F·hp·wp, pairs]` for frames on an hp×wp token grid (token order f, h, w).
    pub fn tables(&self, frames: &[FramePhase], hp: usize, wp: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        if hp > MAX_POSITIONS || wp > MAX_POSITIONS {
            return Err(NnError::Input(format!(
                "token grid {hp}×{wp} exceeds the {MAX_POSITIONS}-position RoPE table"
            )));
        }
        let pairs = self.pairs();
        let n = frames.len() * hp * wp;
        let mut cos = Vec::with_capacity(n * pairs);
        let mut sin = Vec::with_capacity(n * pairs);
        let (nt, nh) = (self.freqs_t.len(), self.freqs_h.len());
        let mut row = vec![0f64; pairs];
        for fr in frames {
            if fr.position >= MAX_POSITIONS {
                return Err(NnError::Input(format!(
                    "temporal position {} exceeds the {MAX_POSITIONS}-position RoPE table",
                    fr.position
                )));
            }
            // The reference forms s·θ in f32 and adds it to f64 angles.
            let phase = self.cfg.shot_phase.map_or(0.0, |th| (fr.shot_flag as f32 * th) as f64);
            for (slot, freq) in row.iter_mut().zip(&self.freqs_t) {
                *slot = fr.position as f64 * freq + phase;
            }
            for h in 0..hp {
                for j in 0..nh {
                    row[nt + j] = h as f64 * self.freqs_h[j];
                }
                for w in 0..wp {
                    for j in 0..self.freqs_w.len() {
                        row[nt + nh + j] = w as f64 * self.freqs_w[j];
                    }
                    cos.extend(row.iter().map(|a| a.cos() as f32));
                    sin.extend(row.iter().map(|a| a.sin() as f32));
                }
            }
        }
        Ok((Tensor::from_vec(cos, (n, pairs), device)?, Tensor::from_vec(sin, (n, pairs), device)?))
    }
}

/// Rotates adjacent channel pairs of `x` `[H, L, d]` by the tables `[L, d/2]`.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (h, l, d) = x.dims3()?;
    let cos = cos.to_dtype(x.dtype())?;
    let sin = sin.to_dtype(x.dtype())?;
    if !x.track_op() {
        let x4 = x.contiguous()?.reshape((1, h, l, d))?;
        return Ok(candle_nn::rotary_emb::rope_i(&x4, &cos, &sin)?.reshape((h, l, d))?);
    }
    // Differentiable form of the same rotation (training).
    let xp = x.reshape((h, l, d / 2, 2))?;
    let x0 = xp.narrow(3, 0, 1)?;
    let x1 = xp.narrow(3, 1, 1)?;
    let c = cos.reshape((1, l, d / 2, 1))?;
    let s = sin.reshape((1, l, d / 2, 1))?;
    let r0 = (x0.broadcast_mul(&c)? - x1.broadcast_mul(&s)?)?;
    let r1 = (x0.broadcast_mul(&s)? + x1.broadcast_mul(&c)?)?;
    Ok(Tensor::cat(&[r0, r1], 3)?.reshape((h, l, d))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_split_follows_the_general_formula() {
        let r = Rope::new(128, RopeConfig::default()).unwrap();
        assert_eq!((r.freqs_t.len(), r.freqs_h.len(), r.freqs_w.len()), (22, 21, 21));
        assert!((r.freqs_t[1] - 10000f64.powf(-2.0 / 44.0)).abs() < 1e-15);
        assert!((r.freqs_h[1] - 10000f64.powf(-2.0 / 42.0)).abs() < 1e-15);
        let r = Rope::new(32, RopeConfig::default()).unwrap();
        assert_eq!((r.freqs_t.len(), r.freqs_h.len()), (6, 5));
    }

    #[test]
    fn shot_phase_adds_a_constant_temporal_angle() {
        let dev = Device::Cpu;
        let r = Rope::new(12, RopeConfig::default()).unwrap();
        let a = FramePhase { position: 3, shot_flag: 0 };
        let b = FramePhase { position: 3, shot_flag: 2 };
        let (ca, sa) = r.tables(&[a], 1, 1, &dev).unwrap();
        let (cb, sb) = r.tables(&[b], 1, 1, &dev).unwrap();
        let (ca, sa, cb, sb) = (
            ca.to_vec2::<f32>().unwrap(),
            sa.to_vec2::<f32>().unwrap(),
            cb.to_vec2::<f32>().unwrap(),
            sb.to_vec2::<f32>().unwrap(),
        );
        for j in 0..r.freqs_t.len() {
            let da = sa[0][j].atan2(ca[0][j]);
            let db = sb[0][j].atan2(cb[0][j]);
            let mut d = db - da;
            if d < -std::f32::consts::PI {
                d += 2.0 * std::f32::consts::PI;
            }
            assert!((d - 2.0 / 6.0).abs() < 1e-5, "pair {j}: {d}");
        }
        // Height and width pairs are untouched.
        assert_eq!(ca[0][r.freqs_t.len()..], cb[0][r.freqs_t.len()..]);
    }

    #[test]
    fn differentiable_rotation_matches_the_kernel() {
        let dev = Device::Cpu;
        let r = Rope::new(12, RopeConfig::default()).unwrap();
        let frames: Vec<_> = (0..3).map(|i| FramePhase { position: i, shot_flag: 1 }).collect();
        let (c, s) = r.tables(&frames, 2, 2, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 12, 12), &dev).unwrap();
        let fast = apply(&x, &c, &s).unwrap();
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let slow = apply(var.as_tensor(), &c, &s).unwrap();
        let diff = (fast - slow).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6);
    }
}

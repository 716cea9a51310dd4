//! ShotStream's flow-matching schedule (shotstream.md §4.1–4.2).
//!
//! σ_raw = linspace(1, 0, n+1) without its last element, σ = s·σ_raw / (1 + (s−1)·σ_raw),
//! t = 1000·σ, all in f32 as the reference computes them. x_t = (1−σ)·x0 + σ·ε, v = ε − x0.

/// torch.linspace in f32, with its symmetric two-halves evaluation.
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f32;
            let half = steps / 2;
            (0..steps)
                .map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 })
                .collect()
        }
    }
}

/// A shifted flow-matching table of `n` steps.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSchedule {
    shift: f32,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
}

impl FlowSchedule {
    /// The n-entry table with shift `shift` (ShotStream: n = 1000, shift 8).
    pub fn new(steps: usize, shift: f32) -> Self {
        let raw = linspace_f32(1.0, 0.0, steps + 1);
        let sigmas: Vec<f32> = raw[..steps].iter().map(|&s| shift * s / (1.0 + (shift - 1.0) * s)).collect();
        let timesteps = sigmas.iter().map(|s| s * 1000.0).collect();
        Self { shift, sigmas, timesteps }
    }

    /// ShotStream's training table: 1000 steps, shift 8.
    pub fn shotstream() -> Self {
        Self::new(1000, 8.0)
    }

    /// The shift.
    pub fn shift(&self) -> f32 {
        self.shift
    }

    /// σ per entry.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// t = 1000·σ per entry.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// σ of the entry whose t is nearest to `t` (the reference's argmin lookup).
    pub fn sigma_at(&self, t: f32) -> f32 {
        let mut best = 0;
        for (i, &ti) in self.timesteps.iter().enumerate() {
            if (ti - t).abs() < (self.timesteps[best] - t).abs() {
                best = i;
            }
        }
        self.sigmas[best]
    }

    /// Warps a step list on the 0–1000 scale: entry e ↦ table[n − e], with table[n] = 0.
    pub fn warp(&self, steps: &[u32]) -> Result<Vec<f32>, String> {
        let n = self.timesteps.len();
        steps
            .iter()
            .map(|&e| {
                let e = e as usize;
                if e > n {
                    Err(format!("denoising step {e} is outside 0..={n}"))
                } else if e == 0 {
                    Ok(0.0)
                } else {
                    Ok(self.timesteps[n - e])
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shotstream_four_steps_warp_to_the_spec_values() {
        let s = FlowSchedule::shotstream();
        let t = s.warp(&[1000, 740, 500, 260]).unwrap();
        let want = [1000.0, 957.929, 888.889, 737.589];
        for (a, b) in t.iter().zip(want) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert!((t[1] - 957.928_8).abs() < 1e-3);
        let sig: Vec<f32> = t.iter().map(|&x| s.sigma_at(x)).collect();
        for (a, b) in sig.iter().zip([1.0, 0.95793, 0.88889, 0.73759]) {
            assert!((a - b).abs() < 1e-5);
        }
        assert!(s.warp(&[1001]).is_err());
    }

    #[test]
    fn fifty_step_grid_contains_the_student_steps() {
        let s = FlowSchedule::new(50, 8.0);
        let four = FlowSchedule::shotstream().warp(&[1000, 740, 500, 260]).unwrap();
        for (i, want) in [0usize, 13, 25, 37].iter().zip(four) {
            assert!((s.timesteps()[*i] - want).abs() < 2e-3, "step {i}");
        }
    }

    #[test]
    fn linspace_matches_torch_halves() {
        assert_eq!(linspace_f32(0.0, 80.0, 6), vec![0.0, 16.0, 32.0, 48.0, 64.0, 80.0]);
        assert_eq!(linspace_f32(3.0, 9.0, 1), vec![3.0]);
        assert!(linspace_f32(0.0, 1.0, 0).is_empty());
    }
}

//! Learning-rate schedules: linear warm-up, then constant, cosine or linear decay.

use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// The decay after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Stay at `base_lr`.
    #[default]
    Constant,
    /// Half a cosine from `base_lr` down to `min_lr` at `total_steps`.
    Cosine,
    /// A straight line from `base_lr` down to `min_lr` at `total_steps`.
    Linear,
}

/// A learning-rate schedule; defaults: constant 1e-4, no warm-up, 10 000 steps, `min_lr` 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrSchedule {
    /// The decay after warm-up.
    pub kind: ScheduleKind,
    /// Steps of linear warm-up from `base_lr / warmup_steps` to `base_lr`.
    pub warmup_steps: u64,
    /// The step at which the decay reaches `min_lr` (it stays there afterwards).
    pub total_steps: u64,
    /// The peak rate.
    pub base_lr: f64,
    /// The floor of the decay.
    pub min_lr: f64,
}

impl Default for LrSchedule {
    fn default() -> Self {
        Self { kind: ScheduleKind::Constant, warmup_steps: 0, total_steps: 10_000, base_lr: 1e-4, min_lr: 0.0 }
    }
}

impl LrSchedule {
    /// Linear warm-up to `base_lr`, then half a cosine down to `min_lr` (the stages set
    /// `total_steps` to their step count).
    pub fn warmup_cosine(base_lr: f64, min_lr: f64, warmup_steps: u64) -> Self {
        Self { kind: ScheduleKind::Cosine, warmup_steps, base_lr, min_lr, ..Self::default() }
    }

    /// The rate for optimiser step `step` (0-based). Warm-up uses `(step + 1) / warmup_steps` so
    /// that the first step already moves the weights.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        let progress = if span == 0 { 1.0 } else { ((step - self.warmup_steps) as f64 / span as f64).min(1.0) };
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Cosine => {
                self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            ScheduleKind::Linear => self.base_lr + (self.min_lr - self.base_lr) * progress,
        }
    }

    /// Checks the rates are finite and ordered and warm-up fits in the run.
    pub fn validate(&self) -> Result<()> {
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return Err(TrainError::out_of_range("schedule.base_lr", self.base_lr, "a finite rate > 0"));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.base_lr) {
            return Err(TrainError::out_of_range("schedule.min_lr", self.min_lr, "0 <= min_lr <= base_lr"));
        }
        if self.kind != ScheduleKind::Constant && self.warmup_steps > self.total_steps {
            return Err(TrainError::out_of_range(
                "schedule.warmup_steps",
                self.warmup_steps,
                format!("at most total_steps ({})", self.total_steps),
            ));
        }
        Ok(())
    }
}

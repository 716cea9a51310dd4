//! Context memory: which frames of earlier shots the next shot is conditioned on.

use crate::schedule::linspace_f32;

/// One chosen context frame: pixel frame `frame` of finished shot `shot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextPick {
    /// Index of the earlier shot.
    pub shot: usize,
    /// Pixel-frame index within that shot.
    pub frame: usize,
}

/// A policy choosing context frames from the finished shots' lengths (in pixel frames).
pub trait ContextMemory: Send {
    /// Short name for logs and CLI flags.
    fn name(&self) -> &'static str;
    /// Picks context frames; an empty pick means "no context" (zero latents, flags 0).
    fn select(&self, shot_frames: &[usize]) -> Vec<ContextPick>;
}

/// Frames per previous shot under ShotStream's dynamic sampling (§2.2): ⌊M/P⌋ each, and the
/// last M mod P shots one more, so newer shots are favoured; for P > M the oldest get 0.
pub fn dynamic_counts(max_frames: usize, previous_shots: usize) -> Vec<usize> {
    if previous_shots == 0 {
        return Vec::new();
    }
    let base = max_frames / previous_shots;
    let rem = max_frames % previous_shots;
    let mut counts = vec![base; previous_shots];
    for c in counts.iter_mut().rev().take(rem) {
        *c += 1;
    }
    counts
}

/// Rounds half to even, like torch.round.
fn round_half_even(x: f32) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 { r - x.signum() } else { r };
    r.max(0.0) as usize
}

/// ShotStream's dynamic sampling: `max_frames` frames spread over the earlier shots, evenly
/// spaced within each shot (round(linspace(first, last, count))).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamicSampling {
    /// Context frames in total (6 in ShotStream).
    pub max_frames: usize,
}

impl Default for DynamicSampling {
    fn default() -> Self {
        Self { max_frames: 6 }
    }
}

impl ContextMemory for DynamicSampling {
    fn name(&self) -> &'static str {
        "dynamic"
    }

    fn select(&self, shot_frames: &[usize]) -> Vec<ContextPick> {
        let counts = dynamic_counts(self.max_frames, shot_frames.len());
        let mut picks = Vec::new();
        for (shot, (&len, &count)) in shot_frames.iter().zip(&counts).enumerate() {
            if len == 0 {
                continue;
            }
            for v in linspace_f32(0.0, (len - 1) as f32, count) {
                picks.push(ContextPick { shot, frame: round_half_even(v).min(len - 1) });
            }
        }
        picks
    }
}

/// No context at all: every shot is generated as if it were the first (ablation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoContext;

impl ContextMemory for NoContext {
    fn name(&self) -> &'static str {
        "none"
    }

    fn select(&self, _shot_frames: &[usize]) -> Vec<ContextPick> {
        Vec::new()
    }
}

/// Only the first frame of each earlier shot, newest shots first up to `max_frames` (the
/// first-frame-only ablation: one establishing frame per shot, nothing of how it went on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstFrames {
    /// Context frames at most.
    pub max_frames: usize,
}

impl ContextMemory for FirstFrames {
    fn name(&self) -> &'static str {
        "first-frame"
    }

    fn select(&self, shot_frames: &[usize]) -> Vec<ContextPick> {
        let mut picks: Vec<ContextPick> = shot_frames
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, &len)| len > 0)
            .take(self.max_frames)
            .map(|(shot, _)| ContextPick { shot, frame: 0 })
            .collect();
        picks.reverse();
        picks
    }
}

/// Builds a policy from its CLI name.
pub fn policy_by_name(name: &str, max_frames: usize) -> Option<Box<dyn ContextMemory>> {
    match name {
        "dynamic" => Some(Box::new(DynamicSampling { max_frames })),
        "none" => Some(Box::new(NoContext)),
        "first-frame" => Some(Box::new(FirstFrames { max_frames })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frames_takes_one_frame_per_shot_newest_first() {
        let p = FirstFrames { max_frames: 2 };
        assert!(p.select(&[]).is_empty());
        assert_eq!(p.select(&[17]), vec![ContextPick { shot: 0, frame: 0 }]);
        assert_eq!(
            p.select(&[17, 0, 9, 25]),
            vec![ContextPick { shot: 2, frame: 0 }, ContextPick { shot: 3, frame: 0 }]
        );
        assert_eq!(policy_by_name("first-frame", 6).unwrap().name(), "first-frame");
    }

    #[test]
    fn counts_match_the_spec_table() {
        let table: [&[usize]; 7] =
            [&[6], &[3, 3], &[2, 2, 2], &[1, 1, 2, 2], &[1, 1, 1, 1, 2], &[1, 1, 1, 1, 1, 1], &[0, 1, 1, 1, 1, 1, 1]];
        for (p, want) in table.iter().enumerate() {
            assert_eq!(dynamic_counts(6, p + 1), want.to_vec(), "P = {}", p + 1);
            assert_eq!(dynamic_counts(6, p + 1).iter().sum::<usize>(), 6);
        }
        assert!(dynamic_counts(6, 0).is_empty());
        assert_eq!(dynamic_counts(6, 9)[..3], [0, 0, 0]);
    }

    #[test]
    fn frames_are_spread_like_the_reference() {
        let frames = |shots: &[usize]| -> Vec<(usize, usize)> {
            DynamicSampling::default().select(shots).iter().map(|p| (p.shot, p.frame)).collect()
        };
        assert_eq!(frames(&[81]), vec![(0, 0), (0, 16), (0, 32), (0, 48), (0, 64), (0, 80)]);
        assert_eq!(frames(&[81, 81]), vec![(0, 0), (0, 40), (0, 80), (1, 0), (1, 40), (1, 80)]);
        assert_eq!(frames(&[81, 81, 81]), vec![(0, 0), (0, 80), (1, 0), (1, 80), (2, 0), (2, 80)]);
        assert_eq!(frames(&[81; 4])[..3], [(0, 0), (1, 0), (2, 0)]);
        // count 4 over 81 frames: linspace 0, 26.67, 53.33, 80.
        let four: Vec<usize> = linspace_f32(0.0, 80.0, 4).into_iter().map(round_half_even).collect();
        assert_eq!(four, vec![0, 27, 53, 80]);
        assert_eq!(frames(&[81; 7]).len(), 6);
        assert!(frames(&[81; 7]).iter().all(|&(s, _)| s >= 1));
        assert!(NoContext.select(&[81, 81]).is_empty());
    }

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(round_half_even(4.5), 4);
        assert_eq!(round_half_even(5.5), 6);
        assert_eq!(round_half_even(2.4), 2);
        assert_eq!(round_half_even(2.6), 3);
    }
}

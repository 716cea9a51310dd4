//! Per-frame shot flags, RoPE positions and caption routing of one shot (shotstream.md §2.3–2.4).

use storyreel_nn::{FrameInfo, FramePhase};

use crate::error::{EngineError, Result};

/// Flags and routing for the context frames and the generated frames of shot k.
#[derive(Debug, Clone, PartialEq)]
pub struct ShotPlan {
    /// Index k of the shot being generated.
    pub shot: usize,
    /// Shot flag of each context frame (the shot it was sampled from; 0 for zero context).
    pub context_flags: Vec<i64>,
    /// Caption each context frame attends to.
    pub context_captions: Vec<usize>,
    /// Flag of every generated frame: last context flag + 1 (so 1 on the first shot).
    pub shot_flag: i64,
    /// Caption the generated frames attend to.
    pub shot_caption: usize,
}

impl ShotPlan {
    /// Plans shot `shot` given its context frames' flags and the number of captions (shots 0..k).
    ///
    /// With one caption routing is off (every frame uses caption 0), as in the reference. With
    /// several, context frames use their flag's caption and generated frames use caption k.
    /// The reference routes generated frames by flag, which is the same whenever the context
    /// comes from the previous shots; it differs (routing to caption 1) only for shots past
    /// the first with dropped context, a reference quirk this port deliberately fixes.
    pub fn new(shot: usize, context_flags: &[i64], captions: usize) -> Result<Self> {
        if captions == 0 {
            return Err(EngineError::Input("no captions given".into()));
        }
        if let Some(&bad) = context_flags.iter().find(|&&f| f < 0) {
            return Err(EngineError::Input(format!("context shot flag {bad} is negative")));
        }
        let shot_flag = context_flags.last().copied().unwrap_or(0) + 1;
        let routed = captions > 1;
        if routed && shot >= captions {
            return Err(EngineError::Input(format!(
                "shot {shot} needs caption {shot}, but only {captions} were given"
            )));
        }
        let context_captions = context_flags
            .iter()
            .map(|&f| {
                let c = if routed { f as usize } else { 0 };
                if c >= captions {
                    Err(EngineError::Input(format!("a context frame from shot {f} has no caption ({captions} given)")))
                } else {
                    Ok(c)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            shot,
            context_flags: context_flags.to_vec(),
            context_captions,
            shot_flag,
            shot_caption: if routed { shot } else { 0 },
        })
    }

    /// The same shot with its context dropped, as training's context dropout plans it: every
    /// context frame flagged 0 on caption 0, the generated frames flagged 1 on the same caption.
    pub fn without_context(&self) -> Self {
        let n = self.context_flags.len();
        Self {
            shot: self.shot,
            context_flags: vec![0; n],
            context_captions: vec![0; n],
            shot_flag: 1,
            shot_caption: self.shot_caption,
        }
    }

    /// Frame descriptions of the context fill (t = 0, positions 0..n).
    pub fn context_frames(&self) -> Vec<FrameInfo> {
        self.context_flags
            .iter()
            .zip(&self.context_captions)
            .enumerate()
            .map(|(i, (&s, &c))| FrameInfo { t: 0.0, phase: FramePhase { position: i, shot_flag: s }, caption: c })
            .collect()
    }

    /// Frame descriptions of generated frames `start..start+n` of the shot at timestep `t`.
    pub fn shot_frames(&self, start: usize, n: usize, t: f32) -> Vec<FrameInfo> {
        let base = self.context_flags.len();
        (start..start + n)
            .map(|f| FrameInfo {
                t,
                phase: FramePhase { position: base + f, shot_flag: self.shot_flag },
                caption: self.shot_caption,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_without_context_is_the_dropped_context_plan() {
        for (shot, captions) in [(3, 4), (2, 1)] {
            let p = ShotPlan::new(shot, &[0, 1, 1, 2, 2, 2], captions).unwrap();
            assert_eq!(p.without_context(), ShotPlan::new(shot, &[0; 6], captions).unwrap());
        }
    }

    #[test]
    fn first_shot_generated_frames_carry_flag_one() {
        let p = ShotPlan::new(0, &[0; 6], 1).unwrap();
        assert_eq!(p.shot_flag, 1);
        assert_eq!(p.shot_caption, 0);
        assert!(p.context_captions.iter().all(|&c| c == 0));
        let f = p.shot_frames(3, 3, 900.0);
        assert_eq!(f[0].phase, FramePhase { position: 9, shot_flag: 1 });
    }

    #[test]
    fn later_shots_follow_the_spec_examples() {
        let p = ShotPlan::new(1, &[0; 6], 2).unwrap();
        assert_eq!((p.shot_flag, p.shot_caption), (1, 1));
        let p = ShotPlan::new(2, &[0, 0, 0, 1, 1, 1], 3).unwrap();
        assert_eq!((p.shot_flag, p.shot_caption), (2, 2));
        assert_eq!(p.context_captions, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(p.context_frames()[4].phase, FramePhase { position: 4, shot_flag: 1 });
    }

    #[test]
    fn inconsistent_plans_are_errors() {
        assert!(ShotPlan::new(3, &[0, 1, 2], 2).is_err());
        assert!(ShotPlan::new(1, &[0, 5], 2).is_err());
        assert!(ShotPlan::new(1, &[-1], 2).is_err());
        assert!(ShotPlan::new(0, &[0], 0).is_err());
    }
}

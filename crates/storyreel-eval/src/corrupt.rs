//! Deliberate damage to a ground-truth video, so tests and the benchmark table can show that
//! every metric can fail: each corruption breaks one thing a real generator can get wrong.

use serde::{Deserialize, Serialize};
use storyreel_media::RgbFrame;
use storyreel_world::catalog::LOOKS;
use storyreel_world::rng::WorldRng;
use storyreel_world::{render_story, Story, CHARACTERS};

use crate::error::{EvalError, Result};

/// One kind of damage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corruption {
    /// The shots play in the wrong order (a rotation, so no shot stays in place).
    ShuffledShots,
    /// Every other shot shows different characters (re-rendered).
    SwappedCharacters,
    /// Every other shot shows the same characters and places in other looks (re-rendered): what
    /// a generator that ignores its context does, since captions never name a look.
    ChangedLooks,
    /// Each shot shows only its first frame.
    FrozenFrames,
    /// Every cut comes this many frames late.
    ShiftedCuts(usize),
    /// Gaussian noise of this standard deviation (0–255 levels) on every pixel.
    Noise(f32),
}

impl Corruption {
    /// The corruptions of the benchmark table, in its order.
    pub const TABLE: [Corruption; 6] = [
        Corruption::ShuffledShots,
        Corruption::SwappedCharacters,
        Corruption::ChangedLooks,
        Corruption::FrozenFrames,
        Corruption::ShiftedCuts(4),
        Corruption::Noise(40.0),
    ];

    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Corruption::ShuffledShots => "shuffled shots".into(),
            Corruption::SwappedCharacters => "swapped characters".into(),
            Corruption::ChangedLooks => "changed looks".into(),
            Corruption::FrozenFrames => "frozen frames".into(),
            Corruption::ShiftedCuts(k) => format!("cuts shifted {k} frames"),
            Corruption::Noise(s) => format!("noise sigma {s}"),
        }
    }
}

/// The story's video with `corruption` applied; `frames` is the ground-truth video of `story`.
pub fn corrupt(story: &Story, frames: &[RgbFrame], corruption: Corruption, seed: u64) -> Result<Vec<RgbFrame>> {
    if frames.len() != story.total_frames() {
        return Err(EvalError::Mismatch(format!(
            "corrupting story {}: {} frames given, the story has {}",
            story.id,
            frames.len(),
            story.total_frames()
        )));
    }
    let ranges = story.shot_ranges();
    Ok(match corruption {
        Corruption::ShuffledShots => {
            let n = ranges.len();
            (0..n).flat_map(|i| frames[ranges[(i + 1) % n].0..ranges[(i + 1) % n].1].iter().cloned()).collect()
        }
        Corruption::SwappedCharacters => {
            let mut swapped = story.clone();
            for (i, shot) in swapped.shots.iter_mut().enumerate() {
                if i % 2 == 1 {
                    // +5 is a bijection on the ten characters, so a pair stays a pair.
                    for c in shot.world.characters.iter_mut() {
                        *c = (*c + 5) % CHARACTERS.len();
                    }
                }
            }
            render_story(&swapped)?.frames
        }
        Corruption::ChangedLooks => {
            let mut changed = story.clone();
            for (i, shot) in changed.shots.iter_mut().enumerate() {
                if i % 2 == 1 {
                    let w = &mut shot.world;
                    w.place_look = next_look(w.place_look);
                    w.character_looks = (0..w.characters.len()).map(|k| next_look(w.character_look(k))).collect();
                }
            }
            render_story(&changed)?.frames
        }
        Corruption::FrozenFrames => {
            ranges.iter().flat_map(|&(start, end)| std::iter::repeat_n(frames[start].clone(), end - start)).collect()
        }
        Corruption::ShiftedCuts(k) => {
            // Frame t shows the shot that was on screen k frames earlier (its last frame held
            // when that shot has ended), so every cut lands k frames late.
            let mut out = Vec::with_capacity(frames.len());
            for (i, &(start, end)) in ranges.iter().enumerate() {
                let own_start = if i == 0 { 0 } else { start + k };
                let own_end = if i + 1 == ranges.len() { end } else { end + k };
                let own_end = own_end.min(frames.len());
                for t in own_start.min(own_end)..own_end {
                    let src = if t >= start + k { t - k } else { start };
                    out.push(frames[src.min(end - 1)].clone());
                }
            }
            out.truncate(frames.len());
            out
        }
        Corruption::Noise(sigma) => {
            let mut rng = WorldRng::new(seed);
            frames
                .iter()
                .map(|f| {
                    let data = f
                        .data
                        .iter()
                        .map(|&v| {
                            let g = (rng.uniform() + rng.uniform() + rng.uniform() + rng.uniform() - 2.0) * 1.732;
                            (v as f64 + g * sigma as f64).round().clamp(0.0, 255.0) as u8
                        })
                        .collect();
                    RgbFrame::new(f.width, f.height, data)
                })
                .collect::<std::result::Result<_, _>>()?
        }
    })
}

/// The next look, wrapping round.
fn next_look(look: u8) -> u8 {
    ((look as usize + 1) % LOOKS) as u8
}

//! Checks a parsed story against what the generator can make: parsers only check structure, so
//! one rule set applies whatever format the story came in, and callers choose the limits.

use crate::error::StoryError;
use crate::Story;

/// The largest story the generator accepts (a guard against absurd inputs, not a model limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most shots in one story.
    pub max_shots: usize,
    /// Most characters (Unicode scalar values) in one shot caption.
    pub max_caption_chars: usize,
    /// Most pixel frames in one shot.
    pub max_shot_frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_shots: 64, max_caption_chars: 2000, max_shot_frames: 1001 }
    }
}

/// Checks that `story` has 1..=`max_shots` shots, each with a non-blank caption of at most
/// `max_caption_chars` characters and, when it gives a length, 4k+1 frames in 1..=`max_shot_frames`.
///
/// The global caption is not limited: ShotStream's own demo captions run past 2,000 characters,
/// and the text encoder truncates to its token budget anyway.
pub fn validate(story: &Story, limits: &Limits, origin: &str) -> Result<(), StoryError> {
    if story.shots.is_empty() {
        return Err(StoryError::at_field(origin, "shots", "the story has no shots"));
    }
    if story.shots.len() > limits.max_shots {
        return Err(StoryError::at_field(
            origin,
            "shots",
            format!("{} shots; at most {} are supported", story.shots.len(), limits.max_shots),
        ));
    }
    for (i, shot) in story.shots.iter().enumerate() {
        if shot.caption.trim().is_empty() {
            return Err(StoryError::at_field(origin, format!("shots[{i}].caption"), "the caption is empty"));
        }
        let chars = shot.caption.chars().count();
        if chars > limits.max_caption_chars {
            return Err(StoryError::at_field(
                origin,
                format!("shots[{i}].caption"),
                format!("{chars} characters; at most {} are supported", limits.max_caption_chars),
            ));
        }
        if let Some(f) = shot.frames {
            if f == 0 || (f - 1) % 4 != 0 || f > limits.max_shot_frames {
                return Err(StoryError::at_field(
                    origin,
                    format!("shots[{i}].frames"),
                    format!(
                        "{f} frames; a shot is 4k+1 frames (1, 5, 9, …, 81, …) and at most {}",
                        limits.max_shot_frames
                    ),
                ));
            }
        }
    }
    Ok(())
}

//! StoryMem's story script (`story/black.json`, the ST-Bench scripts):
//! `{"story_overview", "scenes": [{"scene_num", "video_prompts": [...], "first_frame_prompt", "cut"}]}`.
//!
//! Every video prompt of every scene, in order, is a shot; `story_overview` is the global caption.
//! `first_frame_prompt` (keyframe prompts for StoryMem's image model) and `cut` (whether a prompt
//! continues from the previous one's last frame) have no counterpart in our generator, which
//! cuts between every pair of shots, so they and any other keys (e.g. `story_name`) are ignored.
//! StoryMem makes each prompt a five-second clip and gives no lengths, so shots have none.

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::error::StoryError;
use crate::json::decode;
use crate::{Shot, Story};

#[derive(Deserialize)]
#[serde(expecting = "a StoryMem story script object")]
struct Script {
    #[serde(default)]
    story_overview: Option<String>,
    scenes: Vec<Scene>,
}

#[derive(Deserialize)]
#[serde(expecting = "a scene object")]
#[allow(dead_code)]
struct Scene {
    #[serde(default)]
    scene_num: Option<IgnoredAny>,
    video_prompts: Vec<String>,
}

/// Parses one story script.
pub fn parse(text: &str, origin: &str) -> Result<Story, StoryError> {
    let script: Script = decode(text, origin, 1)?;
    if script.scenes.is_empty() {
        return Err(StoryError::at_field(origin, "scenes", "the list is empty; a story has at least one scene"));
    }
    let mut shots = Vec::new();
    for (i, scene) in script.scenes.into_iter().enumerate() {
        if scene.video_prompts.is_empty() {
            return Err(StoryError::at_field(
                origin,
                format!("scenes[{i}].video_prompts"),
                "the list is empty; a scene has at least one prompt",
            ));
        }
        for (k, prompt) in scene.video_prompts.into_iter().enumerate() {
            if prompt.trim().is_empty() {
                return Err(StoryError::at_field(
                    origin,
                    format!("scenes[{i}].video_prompts[{k}]"),
                    "the prompt is empty",
                ));
            }
            shots.push(Shot { caption: prompt, frames: None });
        }
    }
    Ok(Story { id: None, seed: None, global_caption: script.story_overview.unwrap_or_default(), shots })
}

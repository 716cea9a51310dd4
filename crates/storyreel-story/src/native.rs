//! Our native story JSON, version [`NATIVE_VERSION`]:
//! `{"version"?, "id"?, "seed"?, "global_caption"?, "shots": [{"caption", "frames"?, "world"?}],
//! "pattern"?, "format"?}`.
//!
//! Unknown fields are errors so that a typo (`"shot"`, `"captoin"`) cannot silently drop a
//! shot or a length. `world`, `pattern` and `format` are what `storyreel world` writes for its
//! renderer; they are accepted and not interpreted here.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{preview, StoryError};
use crate::json::decode;
use crate::{Shot, Story};

/// The native layout version this build reads (and the one a missing `version` means).
pub const NATIVE_VERSION: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a story object")]
struct NativeStory {
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<IgnoredAny>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    global_caption: Option<String>,
    shots: Vec<NativeShot>,
    #[serde(default)]
    #[allow(dead_code)]
    pattern: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    format: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a shot object")]
struct NativeShot {
    caption: String,
    #[serde(default)]
    frames: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)]
    world: Option<IgnoredAny>,
}

/// Parses one native story.
pub fn parse(text: &str, origin: &str) -> Result<Story, StoryError> {
    // A first, untyped pass: a file of another version must be reported as such rather than as a
    // list of fields this build does not know, and a shot written as an array (which serde would
    // read positionally) must be refused.
    let doc: Value = decode(text, origin, 1)?;
    check_version(doc.get("version"), origin)?;
    if let Some(Value::Array(shots)) = doc.get("shots") {
        if let Some(i) = shots.iter().position(|s| !s.is_object()) {
            return Err(StoryError::at_field(
                origin,
                format!("shots[{i}]"),
                "expected a shot object ({\"caption\": …, \"frames\": …})",
            ));
        }
    }
    let story: NativeStory = decode(text, origin, 1)?;
    if story.shots.is_empty() {
        return Err(StoryError::at_field(origin, "shots", "the story has no shots"));
    }
    let mut shots = Vec::with_capacity(story.shots.len());
    for (i, shot) in story.shots.into_iter().enumerate() {
        if shot.caption.trim().is_empty() {
            return Err(StoryError::at_field(origin, format!("shots[{i}].caption"), "the caption is empty"));
        }
        shots.push(Shot { caption: shot.caption, frames: shot.frames });
    }
    Ok(Story { id: story.id, seed: story.seed, global_caption: story.global_caption.unwrap_or_default(), shots })
}

fn check_version(version: Option<&Value>, origin: &str) -> Result<(), StoryError> {
    let Some(version) = version else { return Ok(()) };
    match version.as_u64() {
        Some(v) if v == u64::from(NATIVE_VERSION) => Ok(()),
        Some(v) => Err(StoryError::at_field(
            origin,
            "version",
            format!("version {v} is not supported: this build reads story version {NATIVE_VERSION}"),
        )),
        None => Err(StoryError::at_field(
            origin,
            "version",
            format!("the version must be a whole number ({NATIVE_VERSION}), found {}", preview(&version.to_string())),
        )),
    }
}

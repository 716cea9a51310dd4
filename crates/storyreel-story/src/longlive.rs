//! LongLive's interactive prompt file (`example/interactive_example.jsonl`): each non-empty line
//! is one JSON object whose `prompts` list is one story, a shot per prompt.
//!
//! Other keys on a line are ignored, as LongLive's loader reads only `prompts`. Lengths are not in
//! the file (LongLive puts `switch_frame_indices` in its YAML config), so shots have none.

use serde::Deserialize;

use crate::error::StoryError;
use crate::json::decode;
use crate::{Shot, Story};

#[derive(Deserialize)]
#[serde(expecting = "an object with a \"prompts\" list")]
struct Line {
    prompts: Vec<String>,
}

/// Parses a JSONL file into one story per non-empty line.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Story>, StoryError> {
    let mut stories = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line = decode(line, origin, line_no)?;
        if parsed.prompts.is_empty() {
            return Err(StoryError::invalid(
                origin,
                crate::error::Location::line(line_no).with_field("prompts"),
                "the list is empty; a story has at least one prompt",
            ));
        }
        let mut shots = Vec::with_capacity(parsed.prompts.len());
        for (k, prompt) in parsed.prompts.into_iter().enumerate() {
            if prompt.trim().is_empty() {
                return Err(StoryError::invalid(
                    origin,
                    crate::error::Location::line(line_no).with_field(format!("prompts[{k}]")),
                    "the prompt is empty",
                ));
            }
            shots.push(Shot { caption: prompt, frames: None });
        }
        stories.push(Story { id: None, seed: None, global_caption: String::new(), shots });
    }
    if stories.is_empty() {
        return Err(StoryError::invalid(
            origin,
            crate::error::Location::whole(),
            "no stories: every line is empty; each line should be {\"prompts\": [\"…\", \"…\"]}",
        ));
    }
    Ok(stories)
}

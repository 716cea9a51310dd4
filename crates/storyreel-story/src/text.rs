//! Plain text, the format of Self-Forcing's and LongLive's prompt files: one shot per non-empty
//! line, surrounding whitespace trimmed. Lines whose first non-blank character is `#` are
//! comments. The first line that is not blank or a comment may be `global: …`, which sets the
//! global caption; `global:` anywhere later is an error rather than a shot, since it is almost
//! certainly a misplaced header. Shots have no lengths.

use crate::error::StoryError;
use crate::{Shot, Story};

const GLOBAL: &str = "global:";

/// Parses one story, a shot per line.
pub fn parse(text: &str, origin: &str) -> Result<Story, StoryError> {
    let mut global_caption = String::new();
    let mut shots = Vec::new();
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix(GLOBAL) {
            if !first {
                return Err(StoryError::at_line(
                    origin,
                    i + 1,
                    "\"global:\" sets the global caption and must be the first line that is not a comment",
                ));
            }
            global_caption = rest.trim().to_string();
        } else {
            shots.push(Shot { caption: line.to_string(), frames: None });
        }
        first = false;
    }
    if shots.is_empty() {
        return Err(StoryError::invalid(
            origin,
            crate::error::Location::whole(),
            "no shots: write one shot caption per line (lines starting with # are comments)",
        ));
    }
    Ok(Story { id: None, seed: None, global_caption, shots })
}

//! The formats a story can come in, their command-line names, and how a file's format is guessed
//! from its name and first bytes when the user does not say.

use std::fmt;
use std::path::Path;

use serde_json::Value;

use crate::holocine;

/// A story file format: ours, or a peer system's prompt format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoryFormat {
    /// Our versioned story JSON (`docs/STORY_FORMATS.md`).
    Native,
    /// ShotStream's per-video caption JSON: `global_caption`, `shot1` … `shotN`.
    ShotStreamJson,
    /// ShotStream's index CSV: one story per row, captions in the JSON each row names.
    ShotStreamCsv,
    /// LongLive's JSONL: one `{"prompts": [...]}` story per line.
    LongLiveJsonl,
    /// HoloCine's structured prompt JSON or its raw `[global caption] … [shot cut] …` string.
    HoloCine,
    /// StoryMem's story script JSON: `story_overview` and `scenes[].video_prompts`.
    StoryMem,
    /// Plain text: one shot per line.
    PlainText,
}

impl StoryFormat {
    /// Every format, in the order of their documentation.
    pub const ALL: [StoryFormat; 7] = [
        StoryFormat::Native,
        StoryFormat::ShotStreamJson,
        StoryFormat::ShotStreamCsv,
        StoryFormat::LongLiveJsonl,
        StoryFormat::HoloCine,
        StoryFormat::StoryMem,
        StoryFormat::PlainText,
    ];

    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            StoryFormat::Native => "native",
            StoryFormat::ShotStreamJson => "shotstream-json",
            StoryFormat::ShotStreamCsv => "shotstream-csv",
            StoryFormat::LongLiveJsonl => "longlive-jsonl",
            StoryFormat::HoloCine => "holocine",
            StoryFormat::StoryMem => "storymem",
            StoryFormat::PlainText => "text",
        }
    }

    /// Parses [`StoryFormat::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for StoryFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Guesses the format of `text` read from `origin` (a path, or `<stdin>`): `.jsonl` is LongLive,
/// `.csv` is a ShotStream index, `.txt` is HoloCine's raw string when it starts with
/// `[global caption]` and plain text otherwise; anything else is judged by its content. Never fails:
/// a JSON object with none of the known keys is taken as native so that its error names what is missing.
pub fn detect_format(origin: &str, text: &str) -> StoryFormat {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let extension = Path::new(origin).extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("jsonl") => StoryFormat::LongLiveJsonl,
        Some("csv") => StoryFormat::ShotStreamCsv,
        Some("txt") if holocine::looks_raw(text) => StoryFormat::HoloCine,
        Some("txt") => StoryFormat::PlainText,
        _ => by_content(text),
    }
}

fn by_content(text: &str) -> StoryFormat {
    let start = text.trim_start();
    if start.starts_with('{') {
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => by_keys(|key| map.contains_key(key), map.keys().any(|k| is_shot_key(k))),
            Ok(_) => StoryFormat::Native,
            // Broken JSON, or several objects one per line (JSONL): the quoted keys still tell.
            Err(_) => by_keys(|key| text.contains(&format!("\"{key}\"")), text.contains("\"shot1\"")),
        };
    }
    if start.starts_with('[') && serde_json::from_str::<Value>(text).is_ok() {
        return StoryFormat::Native;
    }
    if start.lines().next().is_some_and(|l| l.trim().starts_with("shot_num_from_caption")) {
        return StoryFormat::ShotStreamCsv;
    }
    if holocine::looks_raw(text) {
        return StoryFormat::HoloCine;
    }
    StoryFormat::PlainText
}

/// Picks a JSON format from the keys it has; `has_shot_key` says whether any `shotN` key is present.
fn by_keys(has: impl Fn(&str) -> bool, has_shot_key: bool) -> StoryFormat {
    if has("shots") {
        StoryFormat::Native
    } else if has("shot_captions") {
        StoryFormat::HoloCine
    } else if has("scenes") {
        StoryFormat::StoryMem
    } else if has_shot_key {
        StoryFormat::ShotStreamJson
    } else if has("prompts") {
        StoryFormat::LongLiveJsonl
    } else if has("prompt") {
        StoryFormat::HoloCine
    } else {
        StoryFormat::Native
    }
}

/// Whether `key` is a ShotStream `shotN` key (N a positive whole number).
pub(crate) fn is_shot_key(key: &str) -> bool {
    key.strip_prefix("shot").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in StoryFormat::ALL {
            assert_eq!(StoryFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(StoryFormat::from_name("json"), None);
    }

    #[test]
    fn content_decides_without_an_extension() {
        let cases = [
            (r#"{"shots": []}"#, StoryFormat::Native),
            (r#"{"global_caption": "g", "shot_captions": ["a"]}"#, StoryFormat::HoloCine),
            (r#"{"story_overview": "o", "scenes": []}"#, StoryFormat::StoryMem),
            (r#"{"global_caption": "g", "shot1": "a"}"#, StoryFormat::ShotStreamJson),
            ("{\"prompts\": [\"a\"]}\n{\"prompts\": [\"b\"]}\n", StoryFormat::LongLiveJsonl),
            (r#"{"prompt": "[global caption] g [per shot caption] a"}"#, StoryFormat::HoloCine),
            (r#"{"nothing": 1}"#, StoryFormat::Native),
            ("{\"shots\": [", StoryFormat::Native),
            ("shot_num_from_caption,json_path,frame_number\n", StoryFormat::ShotStreamCsv),
            ("[global caption] g [per shot caption] a", StoryFormat::HoloCine),
            ("A fox runs.\nA rabbit hops.\n", StoryFormat::PlainText),
            ("", StoryFormat::PlainText),
        ];
        for (text, want) in cases {
            assert_eq!(detect_format("<stdin>", text), want, "{text:?}");
        }
    }
}

//! Feeds arbitrary bytes, as lossy UTF-8, to format detection and to every story parser, and
//! validates whatever parses. Any panic, hang or runaway allocation is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use storyreel_story::{detect_format, parse_stories_with, validate, Limits, StoryError, StoryFormat};

/// A valid caption file for index rows; rows naming other files get the input itself, so the
/// caption parser is fuzzed through the index too. Nothing touches the disk.
const CAPTIONS: &str = r#"{"global_caption": "g", "shot1": "a", "shot2": "b", "shot3": "c"}"#;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for origin in ["<stdin>", "s.json", "s.jsonl", "s.csv", "s.txt"] {
        let _ = detect_format(origin, &text);
    }
    let mut load = |path: &str| -> Result<(String, String), StoryError> {
        let body = if path.len().is_multiple_of(2) { CAPTIONS.to_string() } else { text.to_string() };
        Ok((path.to_string(), body))
    };
    for format in StoryFormat::ALL {
        if let Ok(stories) = parse_stories_with(&text, format, "fuzz", &mut load) {
            assert!(!stories.is_empty(), "{format} returned no stories");
            for story in &stories {
                assert!(!story.shots.is_empty(), "{format} returned a story without shots");
                assert!(story.shots.iter().all(|s| !s.caption.trim().is_empty()), "{format} returned a blank caption");
                let _ = validate(story, &Limits::default(), "fuzz");
            }
        }
    }
});

//! Every example story in `examples/stories` parses, validates, and is detected as the format it
//! is written in; the readings match what the files say.

mod common;

use std::path::Path;

use common::{example_files, examples_dir};
use storyreel_story::{detect_format, parse_stories, read_stories, validate, Limits, StoryFormat};

/// The format each example is written in, by its path under `examples/stories`.
fn expected_format(relative: &str) -> StoryFormat {
    match relative {
        "rabbit-and-fox.json" | "formats/world-story.json" => StoryFormat::Native,
        "formats/rabbit-and-fox.txt" => StoryFormat::PlainText,
        "formats/longlive.jsonl" => StoryFormat::LongLiveJsonl,
        "formats/holocine.json" | "formats/holocine.txt" => StoryFormat::HoloCine,
        "formats/storymem.json" => StoryFormat::StoryMem,
        "formats/shotstream/caption.json" | "formats/shotstream/owl.json" => StoryFormat::ShotStreamJson,
        "formats/shotstream/index.csv" => StoryFormat::ShotStreamCsv,
        other => panic!("add {other} to expected_format"),
    }
}

fn relative(path: &Path) -> String {
    path.strip_prefix(examples_dir()).unwrap().to_string_lossy().replace('\\', "/")
}

#[test]
fn every_example_parses_and_validates() {
    let files = example_files();
    assert!(files.len() >= 10, "found only {files:?}");
    for path in files {
        let stories = read_stories(&path, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(!stories.is_empty(), "{}", path.display());
        for story in &stories {
            validate(story, &Limits::default(), &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
            assert!(story.id.is_some(), "{} has no id", path.display());
        }
    }
}

#[test]
fn detection_picks_each_examples_format() {
    let mut seen = std::collections::HashSet::new();
    for path in example_files() {
        let rel = relative(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        let want = expected_format(&rel);
        assert_eq!(detect_format(&path.display().to_string(), &text), want, "{rel} by name and content");
        // Piped in, only the content is there to go by; it must still be enough.
        assert_eq!(detect_format("<stdin>", &text), want, "{rel} by content alone");
        seen.insert(want);
    }
    assert_eq!(seen.len(), StoryFormat::ALL.len(), "an example for every format: {seen:?}");
}

#[test]
fn every_example_parses_as_its_named_format() {
    for path in example_files() {
        let rel = relative(&path);
        let format = expected_format(&rel);
        read_stories(&path, Some(format)).unwrap_or_else(|e| panic!("{rel} as {format}: {e}"));
    }
}

fn read(rel: &str) -> Vec<storyreel_story::Story> {
    read_stories(&examples_dir().join(rel), None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn native_examples_read_as_written() {
    let stories = read("rabbit-and-fox.json");
    let s = &stories[0];
    assert_eq!(s.id.as_deref(), Some("rabbit-and-fox"), "id defaults to the file stem");
    assert_eq!(s.seed, Some(7));
    assert_eq!(s.shots.len(), 4);
    assert!(s.shots.iter().all(|shot| shot.frames == Some(25)));
    assert_eq!(s.shots[0].caption, "A pink rabbit walks right in a meadow in daylight, wide shot.");

    let world = &read("formats/world-story.json")[0];
    assert_eq!(world.id.as_deref(), Some("world-000000"), "the file's own id wins over the stem");
    assert_eq!(world.seed, Some(0));
    assert_eq!(world.shots.iter().map(|s| s.frames.unwrap()).sum::<usize>(), 96);
}

#[test]
fn plain_text_example() {
    let s = &read("formats/rabbit-and-fox.txt")[0];
    assert_eq!(
        s.global_caption,
        "A story in 4 shots about the pink rabbit and the red fox, in the meadow and in the city."
    );
    assert_eq!(s.shots.len(), 4);
    assert_eq!(s.shots[3].caption, "The same red fox walks left in the same city at night, wide shot.");
    assert!(s.shots.iter().all(|shot| shot.frames.is_none()));
    // The plain text example tells the same story as the native one.
    let native = &read("rabbit-and-fox.json")[0];
    assert_eq!(s.global_caption, native.global_caption);
    let captions = |st: &storyreel_story::Story| st.shots.iter().map(|s| s.caption.clone()).collect::<Vec<_>>();
    assert_eq!(captions(s), captions(native));
}

#[test]
fn longlive_example_holds_two_stories() {
    let stories = read("formats/longlive.jsonl");
    assert_eq!(stories.len(), 2);
    assert_eq!(stories[0].id.as_deref(), Some("longlive-1"));
    assert_eq!(stories[1].id.as_deref(), Some("longlive-2"));
    assert_eq!(stories[1].shots.len(), 3);
    assert_eq!(stories[1].shots[1].caption, "A striped purple fish jumps on the same beach at dusk, medium shot.");
}

#[test]
fn holocine_examples() {
    let s = &read("formats/holocine.json")[0];
    assert_eq!(s.shots.len(), 4);
    assert_eq!(s.shots.iter().map(|s| s.frames).collect::<Vec<_>>(), vec![Some(41); 4]);
    assert!(s.global_caption.contains("the checkered yellow bear and the striped orange fox"));
    assert_eq!(s.shots[0].caption, "A checkered yellow bear walks right on a snowfield at dusk, wide shot.",);

    let raw = &read("formats/holocine.txt")[0];
    assert_eq!(raw.shots.len(), 3);
    assert_eq!(
        raw.global_caption,
        "A story in 3 shots about the spotted white rabbit and the striped brown bear, in the desert."
    );
    assert_eq!(raw.shots[1].caption, "A striped brown bear jumps in the same desert in daylight, medium shot.");
    assert!(raw.shots.iter().all(|shot| shot.frames.is_none()));
}

#[test]
fn storymem_example_flattens_scenes() {
    let s = &read("formats/storymem.json")[0];
    assert!(s.global_caption.starts_with("A story about the blue owl and the striped purple fish"));
    assert_eq!(s.shots.len(), 3);
    assert_eq!(s.shots[2].caption, "The same blue owl, now at night, turns around in a forest, close-up.");
}

#[test]
fn shotstream_index_reads_ranges_and_totals() {
    let stories = read("formats/shotstream/index.csv");
    assert_eq!(stories.len(), 2);
    assert_eq!(stories[0].id.as_deref(), Some("index-1"));
    assert_eq!(stories[0].shots.iter().map(|s| s.frames).collect::<Vec<_>>(), vec![Some(81); 3]);
    assert_eq!(stories[1].shots.iter().map(|s| s.frames).collect::<Vec<_>>(), vec![Some(25); 2]);
    assert_eq!(stories[1].shots[0].caption, "A spotted blue owl walks left in a city at night, wide shot.");
    // The caption file alone is the same story without lengths.
    let alone = &read("formats/shotstream/caption.json")[0];
    assert_eq!(alone.global_caption, stories[0].global_caption);
    assert!(alone.shots.iter().all(|s| s.frames.is_none()));
}

#[test]
fn parse_stories_matches_read_stories_for_single_file_formats() {
    for rel in ["rabbit-and-fox.json", "formats/holocine.json", "formats/storymem.json", "formats/rabbit-and-fox.txt"] {
        let path = examples_dir().join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut parsed = parse_stories(&text, expected_format(rel), rel).unwrap();
        let read = read_stories(&path, None).unwrap();
        // Only the id differs: read_stories fills it from the file stem.
        parsed[0].id = read[0].id.clone();
        assert_eq!(parsed, read, "{rel}");
    }
}

//! Randomized robustness: the example files, mutated thousands of ways (byte flips, truncations,
//! insertions, duplicated and deleted chunks), go through every parser, detection and validation.
//! Each must return `Ok` or `Err`, never panic. A small seeded PRNG keeps every run identical, so
//! a failure names a case that reproduces; `fuzz/` runs the same check open-ended.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{example_files, examples_dir};

use storyreel_story::{detect_format, parse_stories_with, read_stories, validate, Limits, StoryError, StoryFormat};

/// SplitMix64: tiny, fast, and good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Fragments that steer mutations toward the parsers' interesting paths.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "\n",
    "\r\n",
    "#",
    " ",
    "\\",
    "\\u0000",
    "\u{feff}",
    "é",
    "🦊",
    "null",
    "true",
    "-1",
    "0",
    "1e999",
    "99999999999999999999",
    "18446744073709551615",
    "4294967297",
    "\"shots\"",
    "\"caption\"",
    "\"frames\"",
    "\"version\"",
    "\"shot1\"",
    "\"shot0\"",
    "\"shot99999999999\"",
    "\"global_caption\"",
    "\"prompts\"",
    "\"prompt\"",
    "\"shot_captions\"",
    "\"num_frames\"",
    "\"shot_cut_frames\"",
    "\"scenes\"",
    "\"video_prompts\"",
    "[global caption]",
    "[per shot caption]",
    "[shot cut]",
    "global:",
    "shot_num_from_caption,json_path,frame_number\n",
    "\"[[0, 81], [81, 162]]\"",
    ",,,\n",
    "\"\"",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = bytes.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                bytes[at] = rng.next() as u8;
            }
            2 => bytes.truncate(rng.below(len + 1)),
            3 => {
                let at = rng.below(len + 1);
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                bytes.splice(at..at, token.iter().copied());
            }
            4 if len > 0 => {
                // Duplicate a chunk somewhere else.
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let chunk = bytes[start..end].to_vec();
                let at = rng.below(len + 1);
                bytes.splice(at..at, chunk);
            }
            5 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                bytes.drain(start..end);
            }
            _ => {
                let at = rng.below(len + 1);
                let random: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                bytes.splice(at..at, random);
            }
        }
    }
    bytes
}

/// Runs everything a caller could run on `text`; a panic anywhere is the failure.
fn exercise(text: &str, caption_json: &str) {
    let mut load = |path: &str| -> Result<(String, String), StoryError> {
        if path.len().is_multiple_of(2) {
            Ok((path.to_string(), caption_json.to_string()))
        } else {
            Ok((path.to_string(), text.to_string()))
        }
    };
    for origin in ["<stdin>", "s.json", "s.jsonl", "s.csv", "s.txt"] {
        let _ = detect_format(origin, text);
    }
    for format in StoryFormat::ALL {
        if let Ok(stories) = parse_stories_with(text, format, "fuzz", &mut load) {
            assert!(!stories.is_empty(), "{format} returned no stories");
            for story in &stories {
                assert!(!story.shots.is_empty(), "{format} returned a story without shots");
                assert!(story.shots.iter().all(|s| !s.caption.trim().is_empty()), "{format} returned a blank caption");
                let _ = validate(story, &Limits::default(), "fuzz");
                let _ = serde_json::to_string(story);
            }
        }
    }
}

fn check(case: &str, bytes: &[u8], caption_json: &str) {
    let text = String::from_utf8_lossy(bytes);
    let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&text, caption_json)));
    if outcome.is_err() {
        panic!("{case} panicked on input {text:?}");
    }
}

#[test]
fn mutated_examples_never_panic() {
    let files = example_files();
    let originals: Vec<(String, Vec<u8>)> =
        files.iter().map(|p| (p.display().to_string(), std::fs::read(p).unwrap())).collect();
    let caption_json = std::fs::read_to_string(examples_dir().join("formats/shotstream/caption.json")).unwrap();
    let mut rng = Rng(0x5EED_0F57_021E_5EED);
    let mut cases = 0;
    for (name, original) in &originals {
        check(name, original, &caption_json);
        for i in 0..1000 {
            let mutated = mutate(&mut rng, original);
            check(&format!("{name} mutation {i}"), &mutated, &caption_json);
            cases += 1;
        }
    }
    // Cross-over: one file's head on another's tail, the shape of a botched copy-paste.
    for i in 0..500 {
        let (_, a) = &originals[rng.below(originals.len())];
        let (_, b) = &originals[rng.below(originals.len())];
        let mut joined = a[..rng.below(a.len() + 1)].to_vec();
        joined.extend_from_slice(&b[rng.below(b.len() + 1)..]);
        check(&format!("cross-over {i}"), &joined, &caption_json);
        cases += 1;
    }
    assert!(cases >= 10_000, "only {cases} cases");
}

#[test]
fn pathological_inputs_never_panic() {
    let deep_array = "[".repeat(100_000);
    let deep_object = "{\"shots\":".repeat(50_000);
    let deep_world =
        format!("{{\"shots\": [{{\"caption\": \"a\", \"world\": {}1{}}}]}}", "[".repeat(10_000), "]".repeat(10_000));
    let many_cuts = format!("[global caption] g [per shot caption] {}", "a [shot cut] ".repeat(50_000));
    let huge_numbers = r#"{"global_caption": "g", "shot_captions": ["a", "b"], "num_frames": 18446744073709551615, "shot_cut_frames": [18446744073709551614]}"#;
    let huge_total = "shot_num_from_caption,json_path,frame_number\n1,a.json,18446744073709551615\n18446744073709551615,b.json,\"[[0, 18446744073709551615]]\"\n";
    let even_huge = r#"{"global_caption": "g", "shot_captions": ["a", "b", "c"], "num_frames": 18446744073709551615}"#;
    let inputs = [
        deep_array.as_str(),
        deep_object.as_str(),
        deep_world.as_str(),
        many_cuts.as_str(),
        huge_numbers,
        huge_total,
        even_huge,
        "\u{feff}",
        "\0\0\0",
        "\r\r\r\n\n",
        "global:",
        "#",
        "[global caption]",
        "[global caption][per shot caption]",
        "[global caption] [per shot caption] a [shot cut]",
        "{\"shot1\": \"a\", \"global_caption\": \"g\", \"shot18446744073709551616\": \"b\"}",
    ];
    for (i, input) in inputs.iter().enumerate() {
        check(&format!("pathological input {i}"), input.as_bytes(), "{}");
    }
}

#[test]
fn mutated_files_read_from_disk_never_panic() {
    // read_stories sees raw bytes, so invalid UTF-8 reaches its own check rather than a lossy copy.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(42);
    for (k, original) in example_files().iter().enumerate() {
        let bytes = std::fs::read(original).unwrap();
        let name = original.file_name().unwrap();
        for i in 0..40 {
            let path = dir.path().join(format!("{k}-{i}-{}", name.to_string_lossy()));
            std::fs::write(&path, mutate(&mut rng, &bytes)).unwrap();
            let outcome = catch_unwind(|| read_stories(&path, None).map(|_| ()));
            assert!(outcome.is_ok(), "read_stories panicked on {}", path.display());
        }
    }
}

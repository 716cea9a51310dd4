//! Malformed inputs of every format are rejected with messages that name the input, the line or
//! field at fault, and what is wrong.

use std::collections::HashMap;

use storyreel_story::{
    parse_stories, parse_stories_with, read_stories, validate, Limits, Shot, Story, StoryError, StoryFormat,
};

/// The message of parsing `text` as `format` from `origin`; panics if it parses.
fn error(format: StoryFormat, origin: &str, text: &str) -> String {
    match parse_stories(text, format, origin) {
        Ok(stories) => panic!("{origin} parsed: {stories:?}"),
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with(origin), "{message:?} does not start with {origin}");
            message
        }
    }
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

// ---- native ----

#[test]
fn native_typo_in_a_top_level_field_is_named_with_its_line() {
    let text = "{\n  \"version\": 1,\n  \"shot\": [{\"caption\": \"A fox.\"}]\n}\n";
    let m = error(StoryFormat::Native, "story.json", text);
    assert_contains(&m, &["story.json: line 3", "shot: unknown field `shot`", "`shots`"]);
}

#[test]
fn native_typo_in_a_shot_field_names_the_path() {
    let text = r#"{"shots": [{"caption": "A fox."}, {"caption": "A bear."}, {"captoin": "An owl."}]}"#;
    let m = error(StoryFormat::Native, "story.json", text);
    assert_contains(&m, &["line 1, column", "shots[2].captoin", "unknown field `captoin`"]);
}

#[test]
fn native_other_version_is_named() {
    let m = error(StoryFormat::Native, "story.json", r#"{"version": 2, "shots": [{"caption": "A"}], "new": 1}"#);
    assert_contains(&m, &["story.json: version: version 2 is not supported", "version 1"]);
    let m = error(StoryFormat::Native, "story.json", r#"{"version": "1", "shots": [{"caption": "A"}]}"#);
    assert_contains(&m, &["version: the version must be a whole number"]);
}

#[test]
fn native_syntax_error_gives_line_and_column() {
    let text = "{\n  \"shots\": [\n    {\"caption\": \"A fox.\" \"frames\": 25}\n  ]\n}\n";
    let m = error(StoryFormat::Native, "story.json", text);
    assert_contains(&m, &["story.json: line 3, column", "expected `,` or `}`"]);
}

#[test]
fn native_wrong_types_and_values_name_the_field() {
    let m = error(StoryFormat::Native, "s.json", r#"{"shots": [{"caption": 5}]}"#);
    assert_contains(&m, &["shots[0].caption", "invalid type: integer `5`, expected a string"]);
    let m = error(StoryFormat::Native, "s.json", r#"{"shots": [{"caption": "A", "frames": -3}]}"#);
    assert_contains(&m, &["shots[0].frames", "-3"]);
    let m = error(StoryFormat::Native, "s.json", r#"{"seed": 99999999999999999999999, "shots": [{"caption": "A"}]}"#);
    assert_contains(&m, &["seed"]);
    let m = error(StoryFormat::Native, "s.json", r#"{"shots": ["A fox."]}"#);
    assert_contains(&m, &["shots[0]: expected a shot object"]);
    let m = error(StoryFormat::Native, "s.json", r#"["A fox."]"#);
    assert_contains(&m, &["line 1, column 1: expected a JSON object"]);
}

#[test]
fn native_needs_shots_with_captions() {
    let m = error(StoryFormat::Native, "s.json", r#"{"global_caption": "g"}"#);
    assert_contains(&m, &["missing field `shots`"]);
    let m = error(StoryFormat::Native, "s.json", r#"{"shots": []}"#);
    assert_contains(&m, &["s.json: shots: the story has no shots"]);
    let m = error(StoryFormat::Native, "s.json", r#"{"shots": [{"caption": "A"}, {"caption": "  "}]}"#);
    assert_contains(&m, &["s.json: shots[1].caption: the caption is empty"]);
}

#[test]
fn native_accepts_what_storyreel_world_writes() {
    let text = r#"{"version": 1, "id": "w", "seed": 3, "pattern": "composable", "format": {"width": 64},
        "global_caption": "g", "shots": [{"caption": "A", "frames": 21, "world": {"place": "meadow", "characters": [1]}}]}"#;
    let stories = parse_stories(text, StoryFormat::Native, "w.json").unwrap();
    assert_eq!(stories[0].shots, vec![Shot { caption: "A".into(), frames: Some(21) }]);
    assert_eq!(stories[0].id.as_deref(), Some("w"));
}

// ---- ShotStream caption JSON ----

#[test]
fn shotstream_json_gap_in_shot_keys_names_the_missing_key() {
    let m = error(StoryFormat::ShotStreamJson, "01.json", r#"{"global_caption": "g", "shot1": "a", "shot3": "c"}"#);
    assert_contains(&m, &["01.json: shot2: missing", "shot3"]);
}

#[test]
fn shotstream_json_rejects_unknown_duplicate_and_non_string_keys() {
    let m = error(StoryFormat::ShotStreamJson, "01.json", r#"{"global_caption": "g", "shot1": "a", "shto2": "b"}"#);
    assert_contains(&m, &["01.json: shto2: unknown key \"shto2\""]);
    let m = error(StoryFormat::ShotStreamJson, "01.json", r#"{"global_caption": "g", "shot01": "a"}"#);
    assert_contains(&m, &["shot01: unknown key"]);
    let m = error(
        StoryFormat::ShotStreamJson,
        "01.json",
        "{\"global_caption\": \"g\",\n \"shot1\": \"a\",\n \"shot1\": \"b\"}",
    );
    assert_contains(&m, &["01.json: line 3", "duplicate key \"shot1\""]);
    let m = error(StoryFormat::ShotStreamJson, "01.json", r#"{"global_caption": "g", "shot1": ["a"]}"#);
    assert_contains(&m, &["01.json: shot1: expected a caption string, found an array"]);
    let m = error(StoryFormat::ShotStreamJson, "01.json", r#"{"shot1": "a"}"#);
    assert_contains(&m, &["01.json: global_caption: missing"]);
    let m = error(StoryFormat::ShotStreamJson, "01.json", r#"{"global_caption": "g", "shot1": ""}"#);
    assert_contains(&m, &["01.json: shot1: the caption is empty"]);
}

// ---- ShotStream index CSV ----

/// Parses an index whose caption files are the given in-memory texts.
fn csv_error(index: &str, files: &[(&str, &str)]) -> StoryError {
    let files: HashMap<String, String> = files.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut load = |path: &str| match files.get(path) {
        Some(text) => Ok((path.to_string(), text.clone())),
        None => Err(StoryError::Read {
            origin: path.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such caption file"),
        }),
    };
    match parse_stories_with(index, StoryFormat::ShotStreamCsv, "index.csv", &mut load) {
        Ok(stories) => panic!("parsed: {stories:?}"),
        Err(e) => e,
    }
}

const CAPTIONS_3: &str = r#"{"global_caption": "g", "shot1": "a", "shot2": "b", "shot3": "c"}"#;

#[test]
fn csv_shot_count_larger_than_the_caption_file_names_the_row() {
    let index =
        "shot_num_from_caption,json_path,frame_number\n3,a.json,\"[[0, 81], [81, 162], [162, 243]]\"\n4,a.json,\n";
    let e = csv_error(index, &[("a.json", CAPTIONS_3)]);
    assert_eq!(e.line(), Some(3));
    assert_contains(&e.to_string(), &["index.csv: line 3: row 2: shot_num_from_caption is 4 but a.json holds only 3"]);
}

#[test]
fn csv_takes_the_first_shots_like_shotstream_does() {
    // ShotStream's demo 01.json holds six captions under a row of five; its loader uses five.
    let index = "shot_num_from_caption,json_path,frame_number\n2,a.json,\"[[0, 81], [81, 162]]\"\n";
    let mut load = |_: &str| Ok(("a.json".to_string(), CAPTIONS_3.to_string()));
    let stories = parse_stories_with(index, StoryFormat::ShotStreamCsv, "index.csv", &mut load).unwrap();
    assert_eq!(stories[0].shots.len(), 2);
}

#[test]
fn csv_bad_frame_numbers_name_the_row() {
    let header = "shot_num_from_caption,json_path,frame_number\n";
    let cases = [
        ("3,a.json,\"[[0, 81], [81, 162]]\"", "frame_number has 2 ranges but shot_num_from_caption is 3"),
        ("3,a.json,\"[[0, 81], [81, 81], [81, 162]]\"", "frame_number range 2 is [81, 81), which holds no frame"),
        ("3,a.json,many", "frame_number must be a total frame count"),
        ("3,a.json,\"[[0, 81, 5]]\"", "frame_number must be a total frame count"),
        ("3,a.json,2", "frame_number 2 is less than one frame for each of 3 shots"),
        ("three,a.json,81", "shot_num_from_caption must be a whole number, found \"three\""),
        ("0,a.json,81", "shot_num_from_caption is 0"),
        ("3,,81", "json_path is empty"),
    ];
    for (row, want) in cases {
        let e = csv_error(&format!("{header}{row}\n"), &[("a.json", CAPTIONS_3)]);
        assert_eq!(e.line(), Some(2), "{row}");
        assert_contains(&e.to_string(), &["index.csv: line 2: row 1: ", want]);
    }
}

#[test]
fn csv_errors_in_a_caption_file_name_the_row_and_the_file() {
    let index = "shot_num_from_caption,json_path,frame_number\n2,bad.json,\"[[0, 81], [81, 162]]\"\n";
    let e = csv_error(index, &[("bad.json", r#"{"global_caption": "g", "shot1": "a", "shot3": "c"}"#)]);
    assert_contains(&e.to_string(), &["index.csv: line 2 (row 1): bad.json: shot2: missing"]);
    assert_eq!(e.field(), Some("shot2"));
    let e = csv_error(index, &[]);
    assert_contains(&e.to_string(), &["index.csv: line 2 (row 1): bad.json: cannot read: no such caption file"]);
}

#[test]
fn csv_structure_errors_name_the_line() {
    let e = csv_error("json_path,frame_number\na.json,81\n", &[]);
    assert_contains(&e.to_string(), &["index.csv: line 1: the header has no shot_num_from_caption column"]);
    let e = csv_error("shot_num_from_caption,json_path,frame_number\n3,a.json\n", &[]);
    assert_contains(&e.to_string(), &["index.csv: line 2: the row has 2 fields but the header has 3"]);
    let e = csv_error("shot_num_from_caption,json_path,frame_number\n", &[]);
    assert_contains(&e.to_string(), &["index.csv: line 1: the index has a header but no rows"]);
    let e = csv_error("", &[]);
    assert_contains(&e.to_string(), &["index.csv: line 1: the header has no shot_num_from_caption column"]);
}

#[test]
fn csv_reads_the_world_datasets_layout() {
    // `storyreel world generate` writes a video_path column (empty without videos).
    let index = "shot_num_from_caption,json_path,video_path,frame_number\n2,captions/w.json,,\"[[0, 29], [29, 54]]\"\n";
    let mut load = |_: &str| Ok(("captions/w.json".to_string(), CAPTIONS_3.to_string()));
    let stories = parse_stories_with(index, StoryFormat::ShotStreamCsv, "shotstream.csv", &mut load).unwrap();
    assert_eq!(stories[0].shots.iter().map(|s| s.frames).collect::<Vec<_>>(), vec![Some(29), Some(25)]);
}

// ---- LongLive JSONL ----

#[test]
fn longlive_errors_name_the_line() {
    let ok = "{\"prompts\": [\"A fox.\"]}\n";
    let m = error(StoryFormat::LongLiveJsonl, "p.jsonl", &format!("{ok}\n{{\"prompts\": [\"A\", ]}}\n"));
    assert_contains(&m, &["p.jsonl: line 3, column"]);
    let m = error(StoryFormat::LongLiveJsonl, "p.jsonl", &format!("{ok}{{\"prompt\": [\"A\"]}}\n"));
    assert_contains(&m, &["p.jsonl: line 2, column", "missing field `prompts`"]);
    let m = error(StoryFormat::LongLiveJsonl, "p.jsonl", &format!("{ok}{ok}{{\"prompts\": [\"A\", 7]}}\n"));
    assert_contains(&m, &["p.jsonl: line 3, column", "prompts[1]", "expected a string"]);
    let m = error(StoryFormat::LongLiveJsonl, "p.jsonl", &format!("{ok}{{\"prompts\": []}}\n"));
    assert_contains(&m, &["p.jsonl: line 2: prompts: the list is empty"]);
    let m = error(StoryFormat::LongLiveJsonl, "p.jsonl", &format!("{ok}{{\"prompts\": [\"A\", \" \"]}}\n"));
    assert_contains(&m, &["p.jsonl: line 2: prompts[1]: the prompt is empty"]);
    let m = error(StoryFormat::LongLiveJsonl, "p.jsonl", "\n  \n");
    assert_contains(&m, &["p.jsonl: no stories"]);
    let m = error(StoryFormat::LongLiveJsonl, "p.jsonl", &format!("{ok}[\"A\"]\n"));
    assert_contains(&m, &["p.jsonl: line 2, column 1: expected a JSON object"]);
}

// ---- HoloCine ----

#[test]
fn holocine_raw_errors_name_the_line() {
    let m = error(StoryFormat::HoloCine, "h.txt", "# comment\n[global caption] A fox.\n[shot cut] It jumps.\n");
    assert_contains(&m, &["h.txt: line 3: [shot cut] before [per shot caption]"]);
    let m = error(StoryFormat::HoloCine, "h.txt", "[global caption] A fox.\nIt jumps.\n");
    assert_contains(&m, &["h.txt: line 3: [per shot caption] is missing"]);
    let m = error(
        StoryFormat::HoloCine,
        "h.txt",
        "[global caption] g\n[per shot caption] A fox walks.\n[shot cut]\n[shot cut] It jumps.\n",
    );
    assert_contains(&m, &["h.txt: line 3: shot 2 is empty"]);
    let m = error(StoryFormat::HoloCine, "h.txt", "# c\nA fox walks.\n");
    assert_contains(&m, &["h.txt: line 2: a HoloCine prompt starts with [global caption]"]);
    let m = error(StoryFormat::HoloCine, "h.txt", "[global caption] g [per shot caption] a\n[global caption] h\n");
    assert_contains(&m, &["h.txt: line 2: a second [global caption]"]);
}

#[test]
fn holocine_json_errors_name_the_field() {
    let base = r#""global_caption": "g", "shot_captions": ["a", "b", "c"]"#;
    let m = error(StoryFormat::HoloCine, "h.json", &format!("{{{base}, \"shot_cut_frames\": [37]}}"));
    assert_contains(&m, &["h.json: shot_cut_frames: 1 cuts for 3 shots"]);
    let m = error(StoryFormat::HoloCine, "h.json", &format!("{{{base}, \"shot_cut_frames\": [81, 41]}}"));
    assert_contains(&m, &["h.json: shot_cut_frames[1]: cut 2 at frame 41"]);
    let m = error(
        StoryFormat::HoloCine,
        "h.json",
        &format!("{{{base}, \"num_frames\": 81, \"shot_cut_frames\": [41, 121]}}"),
    );
    assert_contains(&m, &["shot_cut_frames[1]", "before the end of the video (81 frames)"]);
    let m = error(StoryFormat::HoloCine, "h.json", &format!("{{{base}, \"num_frames\": 5}}"));
    assert_contains(&m, &["h.json: num_frames: 5 frames are too few for 3 shots"]);
    let m = error(StoryFormat::HoloCine, "h.json", &format!("{{{base}, \"num_frames\": 0}}"));
    assert_contains(&m, &["h.json: num_frames: num_frames is 0"]);
    let m = error(StoryFormat::HoloCine, "h.json", &format!("{{{base}, \"num_frame\": 81}}"));
    assert_contains(&m, &["h.json: line 1, column", "num_frame: unknown field `num_frame`"]);
    let m = error(StoryFormat::HoloCine, "h.json", &format!("{{{base}, \"prompt\": \"[global caption] g\"}}"));
    assert_contains(&m, &["h.json: prompt: give either"]);
    let m = error(StoryFormat::HoloCine, "h.json", r#"{"global_caption": "g"}"#);
    assert_contains(&m, &["h.json: shot_captions: missing"]);
    let m = error(StoryFormat::HoloCine, "h.json", r#"{"global_caption": "g", "shot_captions": []}"#);
    assert_contains(&m, &["h.json: shot_captions: the list is empty"]);
    let m = error(StoryFormat::HoloCine, "h.json", r#"{"global_caption": "g", "shot_captions": ["a", ""]}"#);
    assert_contains(&m, &["h.json: shot_captions[1]: the caption is empty"]);
    let m = error(StoryFormat::HoloCine, "h.json", r#"{"prompt": "[global caption] g a b"}"#);
    assert_contains(&m, &["h.json: prompt: [per shot caption] is missing"]);
}

#[test]
fn holocine_frames_follow_its_rules() {
    let captions = r#""global_caption": "g", "shot_captions": ["a", "b", "c", "d", "e", "f"]"#;
    let text = format!("{{{captions}, \"num_frames\": 241, \"shot_cut_frames\": [37, 73, 113, 169, 205]}}");
    let s = &parse_stories(&text, StoryFormat::HoloCine, "h.json").unwrap()[0];
    let frames: Vec<usize> = s.shots.iter().map(|s| s.frames.unwrap()).collect();
    assert_eq!(frames, vec![37, 37, 41, 57, 37, 37]);
    // Evenly spaced: 241 / 6 ≈ 40.2 per shot, cuts rounded to 4k+1 as HoloCine does.
    let text = format!("{{{captions}, \"num_frames\": 241}}");
    let s = &parse_stories(&text, StoryFormat::HoloCine, "h.json").unwrap()[0];
    assert!(s.shots.iter().all(|s| matches!(s.frames, Some(f) if f % 4 == 1 && (37..=45).contains(&f))), "{s:?}");
    let text = r#"{"prompt": "[global caption] g [per shot caption] a [shot cut] b", "seed": 4}"#;
    let s = &parse_stories(text, StoryFormat::HoloCine, "h.json").unwrap()[0];
    assert_eq!((s.shots.len(), s.seed, s.shots[0].frames), (2, Some(4), None));
}

// ---- StoryMem ----

#[test]
fn storymem_errors_name_the_field() {
    let m = error(StoryFormat::StoryMem, "s.json", r#"{"story_overview": "o", "scenes": []}"#);
    assert_contains(&m, &["s.json: scenes: the list is empty"]);
    let m = error(
        StoryFormat::StoryMem,
        "s.json",
        r#"{"story_overview": "o", "scenes": [{"scene_num": 1, "video_prompts": ["a"]}, {"scene_num": 2, "video_prompts": [""]}]}"#,
    );
    assert_contains(&m, &["s.json: scenes[1].video_prompts[0]: the prompt is empty"]);
    let m = error(StoryFormat::StoryMem, "s.json", "{\"story_overview\": \"o\",\n \"scenes\": [{\"scene_num\": 1}]}");
    assert_contains(&m, &["s.json: line 2, column", "scenes[0]: missing field `video_prompts`"]);
    let m = error(StoryFormat::StoryMem, "s.json", r#"{"story_overview": "o", "scenes": [{"video_prompts": []}]}"#);
    assert_contains(&m, &["s.json: scenes[0].video_prompts: the list is empty"]);
    let m = error(StoryFormat::StoryMem, "s.json", r#"{"story_overview": 3, "scenes": []}"#);
    assert_contains(&m, &["s.json: line 1, column", "story_overview: invalid type"]);
}

// ---- plain text ----

#[test]
fn text_errors_name_the_line() {
    let m = error(StoryFormat::PlainText, "s.txt", "# c\nA fox walks.\n\nglobal: late\n");
    assert_contains(&m, &["s.txt: line 4: \"global:\" sets the global caption"]);
    let m = error(StoryFormat::PlainText, "s.txt", "# only comments\n\nglobal: g\n");
    assert_contains(&m, &["s.txt: no shots"]);
    let m = error(StoryFormat::PlainText, "<stdin>", "");
    assert_contains(&m, &["<stdin>: no shots"]);
}

// ---- validation ----

fn story(captions: &[&str], frames: Option<usize>) -> Story {
    Story { shots: captions.iter().map(|c| Shot { caption: c.to_string(), frames }).collect(), ..Story::default() }
}

#[test]
fn validation_names_the_field() {
    let limits = Limits::default();
    assert_eq!(limits, Limits { max_shots: 64, max_caption_chars: 2000, max_shot_frames: 1001 });
    let cases = [
        (story(&[], None), "s.json: shots: the story has no shots"),
        (story(&["a"; 65], None), "s.json: shots: 65 shots; at most 64"),
        (story(&["a", " "], None), "s.json: shots[1].caption: the caption is empty"),
        (story(&["a", &"é".repeat(2001)], None), "s.json: shots[1].caption: 2001 characters; at most 2000"),
        (story(&["a"], Some(26)), "s.json: shots[0].frames: 26 frames; a shot is 4k+1"),
        (story(&["a"], Some(0)), "s.json: shots[0].frames: 0 frames"),
        (story(&["a"], Some(1005)), "s.json: shots[0].frames: 1005 frames"),
    ];
    for (s, want) in cases {
        let m = validate(&s, &limits, "s.json").unwrap_err().to_string();
        assert!(m.starts_with(want), "{m:?} should start with {want:?}");
    }
    // 2,000 two-byte characters are 2,000 characters, not 4,000.
    validate(&story(&[&"é".repeat(2000)], Some(1001)), &limits, "s.json").unwrap();
    validate(&story(&["a"; 64], Some(1)), &limits, "s.json").unwrap();
}

// ---- files ----

#[test]
fn read_stories_reports_invalid_utf8_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.txt");
    std::fs::write(&path, b"A fox walks.\nA bear \xff jumps.\n").unwrap();
    let m = read_stories(&path, None).unwrap_err().to_string();
    assert_contains(&m, &["bad.txt: line 2, column 8: byte 20 is not UTF-8"]);
}

#[test]
fn read_stories_reports_a_missing_file() {
    let e = read_stories(std::path::Path::new("/nonexistent/story.json"), None).unwrap_err();
    assert!(matches!(e, StoryError::Read { .. }));
    assert_contains(&e.to_string(), &["/nonexistent/story.json: cannot read"]);
}

#[test]
fn read_stories_resolves_caption_files_next_to_the_index() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("json")).unwrap();
    std::fs::write(dir.path().join("json/a.json"), CAPTIONS_3).unwrap();
    std::fs::write(dir.path().join("set.csv"), "shot_num_from_caption,json_path,frame_number\n3,json/a.json,243\n")
        .unwrap();
    let stories = read_stories(&dir.path().join("set.csv"), None).unwrap();
    assert_eq!(stories[0].id.as_deref(), Some("set"));
    assert_eq!(stories[0].shots.iter().map(|s| s.frames).collect::<Vec<_>>(), vec![Some(81); 3]);

    std::fs::write(dir.path().join("set.csv"), "shot_num_from_caption,json_path,frame_number\n3,json/none.json,243\n")
        .unwrap();
    let m = read_stories(&dir.path().join("set.csv"), None).unwrap_err().to_string();
    assert_contains(&m, &["set.csv: line 2 (row 1): json/none.json: cannot read: no such caption file", "none.json"]);
}

#[test]
fn a_byte_order_mark_is_ignored() {
    let stories = parse_stories("\u{feff}{\"shots\": [{\"caption\": \"A\"}]}", StoryFormat::Native, "s.json").unwrap();
    assert_eq!(stories[0].shots.len(), 1);
}

//! ShotStream's CSV + caption JSON layout: parsing, strict range checks, writers and the
//! end-to-end split of a real MP4 into shots.

use std::path::{Path, PathBuf};

use storyreel_media::{write_mp4, EncodeOptions, RgbFrame};
use storyreel_world::shotstream::{
    format_frame_number, parse_frame_number, range_problems, read_caption_json, read_index_csv, read_index_csv_with,
    validate_ranges, write_caption_json, write_index_csv, CaptionFile, RangePolicy, RangeProblem, ShotRange,
    ShotStreamDataset, ShotStreamRow,
};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

fn ranges(pairs: &[(usize, usize)]) -> Vec<ShotRange> {
    pairs.iter().map(|&(s, e)| ShotRange::new(s, e)).collect()
}

/// The error message of reading a CSV whose line 3 has `frame_number` = `bad` (line 2 is fine).
fn bad_row_error(shots: usize, bad: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = format!(
        "shot_num_from_caption,json_path,video_path,frame_number\n2,a.json,a.mp4,\"[[0, 81], [81, 162]]\"\n\
         {shots},b.json,b.mp4,\"{bad}\"\n"
    );
    let path = write(dir.path(), "index.csv", &csv);
    let err = read_index_csv(&path).expect_err(bad).to_string();
    assert!(err.contains("index.csv"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    err
}

fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "expected {part:?} in: {text}");
    }
}

#[test]
fn reads_a_plain_csv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "sample.csv",
        "shot_num_from_caption,json_path,video_path,frame_number\n\
         2,json/01.json,videos/01.mp4,\"[[0, 81], [81, 162]]\"\n\
         3,json/02.json,videos/02.mp4,\"[[0,10],[10,20],[20,30]]\"\n",
    );
    let rows = read_index_csv(&path).expect("read");
    assert_eq!(
        rows,
        vec![
            ShotStreamRow {
                shot_num_from_caption: 2,
                json_path: "json/01.json".into(),
                video_path: Some("videos/01.mp4".into()),
                frame_number: ranges(&[(0, 81), (81, 162)]),
            },
            ShotStreamRow {
                shot_num_from_caption: 3,
                json_path: "json/02.json".into(),
                video_path: Some("videos/02.mp4".into()),
                frame_number: ranges(&[(0, 10), (10, 20), (20, 30)]),
            },
        ]
    );
}

#[test]
fn reads_swapped_columns_crlf_quotes_and_no_video_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "\u{feff}frame_number,json_path,shot_num_from_caption\r\n\
                \"[[0, 81],\r\n [81, 162]]\",\"json/a \"\"quoted\"\", b.json\",2\r\n\
                \"[ [0,81] , [81,162] , ]\",\"json/c.json\",2\r\n\r\n\r\n";
    let path = write(dir.path(), "testset.csv", text);
    let index = read_index_csv_with(&path, RangePolicy::Strict).expect("read");
    assert_eq!(index.rows.len(), 2);
    assert_eq!(index.rows[0].json_path, "json/a \"quoted\", b.json");
    assert_eq!(index.rows[0].video_path, None);
    assert_eq!(index.rows[0].frame_number, ranges(&[(0, 81), (81, 162)]));
    assert_eq!(index.rows[1].frame_number, ranges(&[(0, 81), (81, 162)]));
    // The first record spans lines 2-3 because of the quoted newline.
    assert_eq!(index.lines, vec![2, 4]);
    assert!(index.warnings.is_empty());
}

#[test]
fn empty_video_path_cells_are_none_and_extra_columns_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "x.csv",
        ",shot_num_from_caption,json_path,video_path,frame_number\n0,1,a.json,,\"[[0, 5]]\"\n",
    );
    let rows = read_index_csv(&path).expect("read");
    assert_eq!(rows[0].video_path, None);
    assert_eq!(rows[0].frame_number, ranges(&[(0, 5)]));
}

#[test]
fn frame_number_syntax() {
    assert_eq!(parse_frame_number(" [ [0 , 81],[81,162] ] ").expect("ok"), ranges(&[(0, 81), (81, 162)]));
    assert_eq!(parse_frame_number("[]").expect("ok"), vec![]);
    for bad in
        ["[[0, 81], [81]]", "[[0, 81], [81, 162]", "abc", "[[0, -1]]", "[(0, 81)]", "[[0, 81, 3]]", "[[0, 81]] x"]
    {
        let err = parse_frame_number(bad).expect_err(bad).to_string();
        assert!(err.contains(&format!("{bad:?}")), "message should quote {bad:?}: {err}");
    }
    assert_eq!(format_frame_number(&ranges(&[(0, 81), (81, 162)])), "[[0, 81], [81, 162]]");
}

#[test]
fn bad_frame_number_names_line_and_column() {
    let err = bad_row_error(2, "[[0, 81], [81 162]]");
    assert_contains(&err, &["column frame_number", "[[0, 81], [81 162]]"]);
}

#[test]
fn empty_range_is_rejected() {
    let err = bad_row_error(2, "[[0, 81], [81, 81]]");
    assert_contains(&err, &["shot 2 [81, 81) is empty"]);
}

#[test]
fn late_start_is_rejected() {
    let err = bad_row_error(2, "[[5, 81], [81, 162]]");
    assert_contains(&err, &["shot 1 [5, 81) starts at 5 instead of 0"]);
}

#[test]
fn demo_gap_155_170_is_rejected() {
    let err = bad_row_error(3, "[[0, 81], [81, 155], [170, 251]]");
    assert_contains(
        &err,
        &["line 3: shot 2 [81, 155) ends at 155 but shot 3 [170, 251) starts at 170", "gaps misalign every later shot"],
    );
}

#[test]
fn overlap_is_rejected() {
    let err = bad_row_error(2, "[[0, 81], [80, 162]]");
    assert_contains(&err, &["shot 1 [0, 81) overlaps shot 2 [80, 162)"]);
}

#[test]
fn unsorted_is_rejected() {
    let err = bad_row_error(2, "[[81, 162], [0, 81]]");
    assert_contains(&err, &["shot 2 [0, 81) starts before shot 1 [81, 162)"]);
}

#[test]
fn shot_count_mismatch_is_rejected() {
    let err = bad_row_error(3, "[[0, 81], [81, 162]]");
    assert_contains(&err, &["2 shot range(s) but shot_num_from_caption is 3"]);
    let err = bad_row_error(0, "[]");
    assert_contains(&err, &["no shot ranges"]);
}

#[test]
fn past_end_of_video_is_rejected() {
    let r = ranges(&[(0, 81), (81, 162)]);
    let problem = validate_ranges(&r, 2, RangePolicy::Strict, Some(150)).expect_err("past end");
    assert_eq!(problem, RangeProblem::PastEnd { shot: 2, range: ShotRange::new(81, 162), frame_count: 150 });
    assert_contains(&problem.to_string(), &["shot 2 [81, 162)", "150 frames"]);
    assert!(validate_ranges(&r, 2, RangePolicy::Strict, Some(162)).expect("fits").is_empty());
}

#[test]
fn allow_gaps_warns_but_still_rejects_overlaps() {
    let r = ranges(&[(0, 81), (81, 155), (170, 251)]);
    let warnings = validate_ranges(&r, 3, RangePolicy::AllowGaps, None).expect("gaps allowed");
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].is_gap());
    let overlap = ranges(&[(0, 81), (80, 162)]);
    assert!(validate_ranges(&overlap, 2, RangePolicy::AllowGaps, None).is_err());
    assert_eq!(range_problems(&ranges(&[(5, 10), (12, 10)]), 3, None).len(), 4);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "demo.csv",
        "shot_num_from_caption,json_path,video_path,frame_number\n\
         3,a.json,a.mp4,\"[[0, 81], [81, 155], [170, 251]]\"\n",
    );
    assert!(read_index_csv(&path).is_err());
    let index = read_index_csv_with(&path, RangePolicy::AllowGaps).expect("lenient");
    assert_eq!(index.warnings.len(), 1);
    assert_contains(&index.warnings[0], &["demo.csv: line 2", "[81, 155)", "[170, 251)", "AllowGaps"]);
}

#[test]
fn csv_structure_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "shot_num_from_caption,json_path,frame_number\ntwo,a.json,\"[[0, 1]]\"\n",
            "line 2, column shot_num_from_caption",
        ),
        ("shot_num_from_caption,frame_number\n1,\"[[0, 1]]\"\n", "no json_path column"),
        ("shot_num_from_caption,json_path,frame_number\n1,a.json\n", "line 2"),
        ("shot_num_from_caption,json_path,frame_number\n1,a.json,\"[[0, 1]]\n", "never closed"),
        ("shot_num_from_caption,json_path,frame_number\n1,a\"b.json,\"[[0, 1]]\"\n", "stray"),
        ("", "empty"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("bad{i}.csv"), text);
        let err = read_index_csv(&path).expect_err(text).to_string();
        assert_contains(&err, &[&format!("bad{i}.csv"), needle]);
    }
    let missing = dir.path().join("missing.csv");
    assert_contains(&read_index_csv(&missing).expect_err("missing").to_string(), &["missing.csv"]);
}

#[test]
fn caption_json_good_and_bad() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(
        dir.path(),
        "good.json",
        r#"{"shot2": "b", "global_caption": "g", "shot1": "a", "video_path": "v.mp4", "notes": 3, "shots": 2}"#,
    );
    let captions = read_caption_json(&good).expect("good");
    assert_eq!(
        captions,
        CaptionFile {
            global_caption: "g".into(),
            shots: vec!["a".into(), "b".into()],
            video_path: Some("v.mp4".into())
        }
    );
    assert_eq!(captions.prompt(1).as_deref(), Some("gshot1:b"));
    assert_eq!(captions.prompt(2), None);

    let cases = [
        (r#"{"global_caption": "g", "shot1": "a", "shot3": "c"}"#, "missing shot2"),
        (r#"{"global_caption": "g", "shot0": "z", "shot1": "a"}"#, "shot0"),
        (r#"{"global_caption": "g", "shot01": "a"}"#, "shot01"),
        (r#"{"global_caption": "g", "shot1": 5}"#, "shot1"),
        (r#"{"global_caption": "g"}"#, "no shot captions"),
        (r#"{"shot1": "a"}"#, "global_caption"),
        (r#"["g", "a"]"#, "JSON object"),
        (r#"{"global_caption": "g", "#, "EOF while parsing"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("bad{i}.json"), text);
        let err = read_caption_json(&path).expect_err(text).to_string();
        assert_contains(&err, &[&format!("bad{i}.json"), needle]);
    }
    let missing = dir.path().join("nope.json");
    assert_contains(&read_caption_json(&missing).expect_err("missing").to_string(), &["nope.json"]);
}

#[test]
fn caption_json_round_trip_keeps_key_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let captions = CaptionFile {
        global_caption: "A fox \"Rua\" in a snowy wood. ".into(),
        shots: (1..=11).map(|i| format!("shot text {i}\nline two")).collect(),
        video_path: None,
    };
    let path = dir.path().join("story.json");
    write_caption_json(&path, &captions).expect("write");
    let text = std::fs::read_to_string(&path).expect("read text");
    let positions: Vec<usize> = std::iter::once("\"global_caption\"".to_string())
        .chain((1..=11).map(|i| format!("\"shot{i}\"")))
        .map(|k| text.find(&k).expect("key present"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "key order: {text}");
    assert_eq!(read_caption_json(&path).expect("read back"), captions);
    let empty = CaptionFile { global_caption: "g".into(), shots: vec![], video_path: None };
    assert!(write_caption_json(dir.path().join("empty.json"), &empty).is_err());
    // The refused write leaves nothing behind, not even its temporary file.
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
}

#[test]
fn index_csv_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = vec![
        ShotStreamRow {
            shot_num_from_caption: 2,
            json_path: "json/01.json".into(),
            video_path: Some("videos/01.mp4".into()),
            frame_number: ranges(&[(0, 81), (81, 162)]),
        },
        ShotStreamRow {
            shot_num_from_caption: 1,
            json_path: "json/odd, \"name\".json".into(),
            video_path: None,
            frame_number: ranges(&[(0, 7)]),
        },
    ];
    let path = dir.path().join("out.csv");
    write_index_csv(&path, &rows).expect("write");
    let text = std::fs::read_to_string(&path).expect("text");
    assert!(text.starts_with(
        "shot_num_from_caption,json_path,video_path,frame_number\n2,json/01.json,videos/01.mp4,\"[[0, 81], [81, 162]]\"\n"
    ));
    assert_eq!(read_index_csv(&path).expect("read back"), rows);

    let gap = vec![ShotStreamRow { frame_number: ranges(&[(0, 81), (90, 162)]), ..rows[0].clone() }];
    let err = write_index_csv(dir.path().join("gap.csv"), &gap).expect_err("gap").to_string();
    assert_contains(&err, &["row 1", "[0, 81)", "[90, 162)"]);
    assert!(!dir.path().join("gap.csv").exists());
}

const RED: [u8; 3] = [200, 50, 40];
const BLUE: [u8; 3] = [40, 70, 210];

/// A folder with `clip.mp4` (9 red then 9 blue 64x64 frames), `captions.json` and `index.csv`
/// whose row has `frame_number` = `ranges_text`.
fn dataset_dir(ranges_text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut frames = vec![RgbFrame::filled(64, 64, RED).expect("frame"); 9];
    frames.extend(vec![RgbFrame::filled(64, 64, BLUE).expect("frame"); 9]);
    std::fs::create_dir(dir.path().join("videos")).expect("mkdir");
    write_mp4(dir.path().join("videos/clip.mp4"), &frames, EncodeOptions::default()).expect("encode");
    let captions = CaptionFile {
        global_caption: "Two rooms. ".into(),
        shots: vec!["A red room.".into(), "A blue room.".into()],
        video_path: Some("videos/clip.mp4".into()),
    };
    write_caption_json(dir.path().join("captions.json"), &captions).expect("json");
    write(
        dir.path(),
        "index.csv",
        &format!("shot_num_from_caption,json_path,video_path,frame_number\n2,captions.json,videos/clip.mp4,\"{ranges_text}\"\n"),
    );
    dir
}

fn mean_colour(frame: &RgbFrame) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for px in frame.data.chunks_exact(3) {
        for c in 0..3 {
            sum[c] += f64::from(px[c]);
        }
    }
    let n = (frame.data.len() / 3) as f64;
    sum.map(|s| s / n)
}

fn assert_colour(frames: &[RgbFrame], want: [u8; 3]) {
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!((frame.width, frame.height), (64, 64));
        let got = mean_colour(frame);
        for c in 0..3 {
            assert!((got[c] - f64::from(want[c])).abs() < 10.0, "frame {i}: mean {got:?}, want {want:?}");
        }
    }
}

#[test]
fn dataset_splits_a_video_into_shots() {
    let dir = dataset_dir("[[0, 9], [9, 18]]");
    let dataset = ShotStreamDataset::open(dir.path().join("index.csv"), RangePolicy::Strict).expect("open");
    assert_eq!(dataset.len(), 1);
    assert!(dataset.warnings().is_empty());
    let story = dataset.story(0).expect("story");
    assert_eq!(story.line, 2);
    assert_eq!(story.json_path, dir.path().join("captions.json"));
    assert_eq!(story.video_path.as_deref(), Some(dir.path().join("videos/clip.mp4").as_path()));
    assert_eq!(story.ranges, ranges(&[(0, 9), (9, 18)]));
    assert_eq!(story.captions.prompt(0).as_deref(), Some("Two rooms. shot0:A red room."));
    assert!(dataset.story(1).is_err());

    let shots = dataset.read_shots(0).expect("read shots");
    assert_eq!(shots.iter().map(Vec::len).collect::<Vec<_>>(), vec![9, 9]);
    assert_colour(&shots[0], RED);
    assert_colour(&shots[1], BLUE);
}

#[test]
fn dataset_with_allowed_gap_skips_gap_frames() {
    let dir = dataset_dir("[[0, 7], [11, 18]]");
    let csv = dir.path().join("index.csv");
    let err = ShotStreamDataset::open(&csv, RangePolicy::Strict).expect_err("strict").to_string();
    assert_contains(&err, &["line 2", "[0, 7)", "[11, 18)"]);
    let dataset = ShotStreamDataset::open(&csv, RangePolicy::AllowGaps).expect("lenient");
    assert_eq!(dataset.warnings().len(), 1);
    let shots = dataset.read_shots(0).expect("read shots");
    assert_eq!(shots.iter().map(Vec::len).collect::<Vec<_>>(), vec![7, 7]);
    assert_colour(&shots[0], RED);
    assert_colour(&shots[1], BLUE);
}

#[test]
fn ranges_past_the_decoded_video_name_the_video() {
    let dir = dataset_dir("[[0, 9], [9, 20]]");
    let dataset = ShotStreamDataset::open(dir.path().join("index.csv"), RangePolicy::Strict).expect("open");
    let err = dataset.read_shots(0).expect_err("past end").to_string();
    assert_contains(&err, &["clip.mp4", "shot 2 [9, 20)", "18 frames", "line 2"]);
}

#[test]
fn missing_files_are_named() {
    let dir = dataset_dir("[[0, 9], [9, 18]]");
    std::fs::remove_file(dir.path().join("videos/clip.mp4")).expect("rm");
    let dataset = ShotStreamDataset::open(dir.path().join("index.csv"), RangePolicy::Strict).expect("open");
    let err = dataset.read_shots(0).expect_err("missing video").to_string();
    assert_contains(&err, &["videos/clip.mp4", "not found"]);

    std::fs::remove_file(dir.path().join("captions.json")).expect("rm");
    let err = ShotStreamDataset::open(dir.path().join("index.csv"), RangePolicy::Strict).expect_err("json").to_string();
    assert_contains(&err, &["captions.json"]);
}

#[test]
fn caption_count_must_match_the_row() {
    let dir = dataset_dir("[[0, 6], [6, 12], [12, 18]]");
    let text = std::fs::read_to_string(dir.path().join("index.csv")).expect("csv");
    write(dir.path(), "index.csv", &text.replace("\n2,", "\n3,"));
    let err =
        ShotStreamDataset::open(dir.path().join("index.csv"), RangePolicy::Strict).expect_err("count").to_string();
    assert_contains(&err, &["line 2", "captions.json has 2 shot caption(s)", "shot_num_from_caption is 3"]);
}

#[test]
fn caption_only_rows_have_no_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let captions = CaptionFile { global_caption: "g".into(), shots: vec!["a".into()], video_path: None };
    write_caption_json(dir.path().join("01.json"), &captions).expect("json");
    write(dir.path(), "t.csv", "shot_num_from_caption,json_path,frame_number\n1,01.json,\"[[0, 81]]\"\n");
    let dataset = ShotStreamDataset::open(dir.path().join("t.csv"), RangePolicy::Strict).expect("open");
    assert_eq!(dataset.story(0).expect("story").video_path, None);
    assert_contains(&dataset.read_shots(0).expect_err("no video").to_string(), &["no video_path"]);
}

//! `storyreel world` end to end: a small dataset, renders of one story, the vocabulary, the
//! detector scored against the story, and clear errors for bad inputs.

use std::path::Path;
use std::process::Command;

fn storyreel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_storyreel")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn generate_render_vocab_detect() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    let (ok, out, err) = storyreel(&["world", "generate", "--stories", "2", "--out", s(&set), "--seed", "3"]);
    assert!(ok, "{err}");
    assert!(out.contains("2 stories"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(set.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["totals"]["stories"], 2);
    assert_eq!(manifest["benchmark"], false);
    let story = set.join(manifest["stories"][0]["story"].as_str().unwrap());
    for key in ["story", "video", "truth", "captions"] {
        let file = set.join(manifest["stories"][1][key].as_str().unwrap());
        assert!(file.is_file(), "{}", file.display());
    }
    assert!(set.join("shotstream.csv").is_file());

    // Generating again into the same dataset folder is allowed; into a foreign one it is not.
    let (ok, _, err) = storyreel(&["world", "generate", "--stories", "1", "--out", s(&set), "--no-videos"]);
    assert!(ok, "{err}");
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("keep.txt"), "x").unwrap();
    let (ok, _, err) = storyreel(&["world", "generate", "--stories", "1", "--out", s(&foreign)]);
    assert!(!ok);
    assert!(err.contains(s(&foreign)) && err.contains("--force"), "{err}");
    let (ok, _, err) = storyreel(&["world", "generate", "--stories", "1", "--out", s(&foreign), "--force"]);
    assert!(ok, "{err}");
    let (ok, _, err) =
        storyreel(&["world", "generate", "--stories", "2", "--out", s(&tmp.path().join("b")), "--seed", "9000000000"]);
    assert!(!ok);
    assert!(err.contains("benchmark"), "{err}");

    // The first dataset was overwritten with one story (seed 0) and no videos; its story file is still valid.
    let story_file = set.join("stories/world-000000.json");
    assert!(story_file.is_file());
    assert!(!story.is_file(), "the overwrite removed the earlier stories ({})", story.display());

    let mp4 = tmp.path().join("one.mp4");
    let (ok, out, err) = storyreel(&["world", "render", "--story", s(&story_file), "--out", s(&mp4)]);
    assert!(ok, "{err}");
    assert!(out.contains("world-000000"), "{out}");
    assert!(std::fs::metadata(&mp4).unwrap().len() > 0);
    let png = tmp.path().join("one.png");
    let (ok, _, err) = storyreel(&["world", "render", "--story", s(&story_file), "--out", s(&png)]);
    assert!(ok, "{err}");
    assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    let (ok, _, err) =
        storyreel(&["world", "render", "--story", s(&story_file), "--out", s(&tmp.path().join("x.avi"))]);
    assert!(!ok);
    assert!(err.contains(".mp4 or .png"), "{err}");

    let vocab = tmp.path().join("vocab.txt");
    let (ok, _, err) = storyreel(&["world", "vocab", "--out", s(&vocab)]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&vocab).unwrap();
    assert!(text.starts_with("<pad>\n</s>\n<unk>\n"), "{text}");
    assert!(text.lines().any(|w| w == "bear"));

    let (ok, out, err) = storyreel(&["world", "detect", "--video", s(&mp4), "--story", s(&story_file), "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let story: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&story_file).unwrap()).unwrap();
    let frames: u64 = story["shots"].as_array().unwrap().iter().map(|s| s["frames"].as_u64().unwrap()).sum();
    assert_eq!(report["frames"], frames);
    assert_eq!(report["truth_cuts"].as_array().unwrap().len(), story["shots"].as_array().unwrap().len() - 1);
    for key in ["precision", "recall", "f1"] {
        let v = report["score"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    let (ok, out, err) = storyreel(&["world", "detect", "--video", s(&mp4)]);
    assert!(ok, "{err}");
    assert!(out.contains("cut(s) at"), "{out}");
}

#[test]
fn bad_story_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.json");
    let out = tmp.path().join("out.mp4");
    let (ok, _, err) = storyreel(&["world", "render", "--story", s(&missing), "--out", s(&out)]);
    assert!(!ok);
    assert!(err.contains(s(&missing)), "{err}");

    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"version\": 1, \"id\": ").unwrap();
    let (ok, _, err) = storyreel(&["world", "render", "--story", s(&bad), "--out", s(&out)]);
    assert!(!ok);
    assert!(err.contains(s(&bad)), "{err}");
    assert!(!out.exists());

    let (ok, _, err) = storyreel(&["world", "detect", "--video", s(&tmp.path().join("none.mp4")), "--story", s(&bad)]);
    assert!(!ok);
    assert!(err.contains(s(&bad)), "{err}");
    let (ok, _, err) = storyreel(&["world", "detect", "--video", s(&tmp.path().join("none.mp4"))]);
    assert!(!ok);
    assert!(err.contains("none.mp4"), "{err}");
    let (ok, _, err) =
        storyreel(&["world", "generate", "--stories", "1", "--out", s(&tmp.path().join("p")), "--pattern", "epic"]);
    assert!(!ok);
    assert!(err.contains("epic"), "{err}");
}

#[test]
fn context_relevance_compares_policies_on_a_dataset_and_names_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    let (ok, _, err) = storyreel(&["world", "generate", "--stories", "6", "--out", s(&set), "--no-videos"]);
    assert!(ok, "{err}");
    let (ok, out, err) = storyreel(&["world", "context-relevance", "--stories", s(&set), "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["stories"], 6);
    let names: Vec<&str> =
        report["policies"].as_array().unwrap().iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["dynamic", "caption", "first-frame"]);
    // The stories/ folder itself works as well, and the table names the policies asked for.
    let (ok, out, err) =
        storyreel(&["world", "context-relevance", "--stories", s(&set.join("stories")), "--context", "none"]);
    assert!(ok, "{err}");
    assert!(out.contains("over 6 stories") && out.contains("none"), "{out}");

    let (ok, _, err) = storyreel(&["world", "context-relevance", "--stories", s(&set), "--context", "psychic"]);
    assert!(!ok);
    assert!(err.contains("psychic") && err.contains("caption"), "{err}");
    let (ok, _, err) = storyreel(&["world", "context-relevance", "--stories", s(&set), "--frames", "0"]);
    assert!(!ok);
    assert!(err.contains("--frames 0"), "{err}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, err) = storyreel(&["world", "context-relevance", "--stories", s(&empty)]);
    assert!(!ok);
    assert!(err.contains("no story JSON"), "{err}");
    std::fs::write(empty.join("bad.json"), "{").unwrap();
    let (ok, _, err) = storyreel(&["world", "context-relevance", "--stories", s(&empty)]);
    assert!(!ok);
    assert!(err.contains("bad.json"), "{err}");
}

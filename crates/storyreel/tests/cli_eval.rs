//! `storyreel eval` end to end: one video against its story (files written, one JSON object
//! with --json), a folder, two runs side by side, and clear errors.

use std::path::Path;
use std::process::Command;

fn storyreel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_storyreel")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const METRICS: [&str; 13] = [
    "shot_cut_accuracy",
    "intra_shot_consistency",
    "inter_shot_character_consistency",
    "inter_shot_place_consistency",
    "character_look_agreement",
    "place_look_agreement",
    "prompt_adherence",
    "adherence_place",
    "adherence_framing",
    "adherence_characters",
    "dynamic_degree",
    "mean_motion",
    "quality_fd",
];

#[test]
fn evaluate_one_a_folder_and_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("set");
    let (ok, _, err) =
        storyreel(&["world", "generate", "--stories", "2", "--out", s(&set), "--seed", "40", "--min-shots", "3"]);
    assert!(ok, "{err}");
    let story = set.join("stories/world-000040.json");
    let video = set.join("videos/world-000040.mp4");

    let out = tmp.path().join("one");
    let (ok, stdout, err) =
        storyreel(&["eval", "--video", s(&video), "--story", s(&story), "--out", s(&out), "--json"]);
    assert!(ok, "{err}");
    assert_eq!(stdout.trim().lines().count(), 1, "--json prints one object: {stdout}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for key in METRICS {
        assert!(report["metrics"].get(key).is_some(), "{key} missing: {}", report["metrics"]);
    }
    // The ground-truth video (after H.264) is read as its story says.
    assert!(report["metrics"]["prompt_adherence"].as_f64().unwrap() > 0.8, "{}", report["metrics"]);
    assert!(report["metrics"]["shot_cut_accuracy"].as_f64().unwrap() > 0.9, "{}", report["metrics"]);
    for file in ["report.json", "report.md", "contact.png"] {
        assert!(out.join(file).is_file(), "{file} not written");
    }

    let batch = tmp.path().join("batch");
    let (ok, stdout, err) = storyreel(&["eval", "--dir", s(&set), "--out", s(&batch)]);
    assert!(ok, "{err}");
    assert!(stdout.contains("prompt_adherence"), "{stdout}");
    assert!(batch.join("report.json").is_file() && batch.join("world-000041/contact.png").is_file());

    let (ok, stdout, err) = storyreel(&["eval", "--compare", s(&out), s(&batch.join("report.json"))]);
    assert!(ok, "{err}");
    assert!(stdout.contains("| `shot_cut_accuracy` |"), "{stdout}");
    let (ok, stdout, err) = storyreel(&["eval", "--compare", s(&out), s(&batch), "--json"]);
    assert!(ok, "{err}");
    let cmp: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(cmp["metrics"]["prompt_adherence"]["delta"].is_number(), "{cmp}");
    assert!(cmp.get("paired").is_none(), "a story report has no stories to pair: {cmp}");

    // Two batch reports of the same stories are also paired story by story; a run against
    // itself differs by exactly 0 on every story.
    let (ok, stdout, err) = storyreel(&["eval", "--compare", s(&batch), s(&batch), "--from-shot", "2", "--json"]);
    assert!(ok, "{err}");
    let cmp: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(cmp["paired"]["from_shot"], 2, "{cmp}");
    let rows = cmp["paired"]["differences"].as_array().unwrap();
    assert_eq!(rows.len(), 7, "{cmp}");
    let adherence = rows.iter().find(|r| r["metric"] == "adherence").unwrap();
    assert_eq!(adherence["stories"], 2, "{cmp}");
    assert_eq!((adherence["mean"].as_f64(), adherence["standard_error"].as_f64()), (Some(0.0), Some(0.0)));
    let (ok, stdout, err) = storyreel(&["eval", "--compare", s(&batch), s(&batch)]);
    assert!(ok && stdout.contains("Paired per-story differences, B − A (all shots)"), "{err}{stdout}");
    let (ok, _, err) = storyreel(&["eval", "--compare", s(&out), s(&batch), "--from-shot", "4"]);
    assert!(!ok && err.contains("--from-shot needs two batch reports"), "{err}");

    // Several pairs (e.g. one per training seed) are pooled story by story.
    let pooled = ["eval", "--compare", s(&batch), s(&batch), "--compare", s(&batch), s(&batch)];
    let (ok, stdout, err) = storyreel(&[&pooled[..], &["--json"]].concat());
    assert!(ok, "{err}");
    let cmp: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(cmp["pairs"].as_array().map(Vec::len), Some(2), "{cmp}");
    let adherence = cmp["pooled"].as_array().unwrap().iter().find(|r| r["metric"] == "adherence").unwrap().clone();
    assert_eq!((adherence["stories"].as_u64(), adherence["mean"].as_f64()), (Some(2), Some(0.0)), "{cmp}");
    assert_eq!(adherence["per_pair"].as_array().map(Vec::len), Some(2), "{cmp}");
    let (ok, stdout, err) = storyreel(&pooled);
    assert!(ok && stdout.contains("pooled over 2 pairs"), "{err}{stdout}");
    let (ok, _, err) = storyreel(&["eval", "--compare", s(&batch), s(&batch), "--compare", s(&out), s(&batch)]);
    assert!(!ok && err.contains("needs batch reports"), "{err}");

    // Errors name the problem.
    let other = set.join("stories/world-000041.json");
    let (ok, _, err) = storyreel(&["eval", "--video", s(&video), "--story", s(&other)]);
    let frames_differ = std::fs::read_to_string(&other).unwrap() != std::fs::read_to_string(&story).unwrap();
    if frames_differ {
        assert!(!ok);
        assert!(err.contains("frames"), "{err}");
    }
    let (ok, _, err) = storyreel(&["eval", "--video", s(&tmp.path().join("nope.mp4")), "--story", s(&story)]);
    assert!(!ok && err.contains("nope.mp4"), "{err}");
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"version\": 1,").unwrap();
    let (ok, _, err) = storyreel(&["eval", "--video", s(&video), "--story", s(&bad)]);
    assert!(!ok && err.contains("bad.json"), "{err}");
    let (ok, _, err) = storyreel(&["eval", "--compare", s(&bad), s(&out)]);
    assert!(!ok && err.contains("bad.json"), "{err}");
    let (ok, _, err) = storyreel(&["eval"]);
    assert!(!ok && err.contains("--video"), "{err}");
    let (ok, _, err) = storyreel(&["eval", "--dir", s(tmp.path())]);
    assert!(!ok && err.contains("stories"), "{err}");
    let (ok, _, err) = storyreel(&["eval", "table", "--dir", s(&tmp.path().join("none"))]);
    assert!(!ok && err.contains("none"), "{err}");
    let (ok, _, err) = storyreel(&["eval", "--video", s(&video), "--story", s(&story), "--fps", "0"]);
    assert!(!ok && err.contains("fps"), "{err}");
    let (ok, _, err) =
        storyreel(&["eval", "--video", s(&video), "--story", s(&story), "--probe", s(&tmp.path().join("np"))]);
    assert!(!ok && err.contains("no probe weights"), "{err}");
    let (ok, _, err) = storyreel(&["eval", "fit-probe", "--out", s(&tmp.path().join("p")), "--stories", "0"]);
    assert!(!ok && err.contains("probe samples"), "{err}");
}

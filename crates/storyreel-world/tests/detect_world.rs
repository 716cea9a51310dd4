//! The shot detector on the story world itself: F1 over a seeded set of rendered stories, and
//! over H.264 round trips of some of them (the videos a dataset holds).

use storyreel_media::{read_mp4, write_mp4, EncodeOptions};
use storyreel_world::detect::{detect_cuts, score_cuts, CutScore, DetectorConfig};
use storyreel_world::{generate_story, render_story, StoryOptions};

#[test]
fn detector_f1_on_rendered_stories() {
    let cfg = DetectorConfig::default();
    let scores: Vec<CutScore> = (0..60u64)
        .map(|seed| {
            let story = generate_story(50_000 + seed, &StoryOptions::default()).unwrap();
            let rendered = render_story(&story).unwrap();
            score_cuts(&detect_cuts(&rendered.frames, &cfg).unwrap(), &rendered.cuts, 1)
        })
        .collect();
    let total = CutScore::total(scores.iter());
    assert!(total.true_positives + total.false_negatives > 200, "{total:?}");
    assert!(total.f1 >= 0.98, "{total:?}");
}

#[test]
fn detector_f1_after_h264() {
    let cfg = DetectorConfig::default();
    let dir = tempfile::tempdir().unwrap();
    let mut scores = Vec::new();
    for seed in 0..12u64 {
        let story = generate_story(60_000 + seed, &StoryOptions::default()).unwrap();
        let rendered = render_story(&story).unwrap();
        let path = dir.path().join(format!("{seed}.mp4"));
        write_mp4(&path, &rendered.frames, EncodeOptions::default()).unwrap();
        let (_, decoded) = read_mp4(&path).unwrap();
        assert_eq!(decoded.len(), rendered.frames.len());
        scores.push(score_cuts(&detect_cuts(&decoded, &cfg).unwrap(), &rendered.cuts, 1));
    }
    let total = CutScore::total(scores.iter());
    assert!(total.f1 >= 0.95, "{total:?}");
}

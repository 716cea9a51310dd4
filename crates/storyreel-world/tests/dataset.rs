//! World datasets on disk: every file written and readable back (ours and ShotStream's view),
//! refusals that protect foreign folders and the held-out benchmark, and the benchmark itself.

use std::collections::BTreeMap;

use storyreel_world::dataset::{vocabulary_text, MANIFEST_FILE};
use storyreel_world::shotstream::ShotRange;
use storyreel_world::*;

fn small_spec(first_seed: u64, stories: usize) -> DatasetSpec {
    DatasetSpec {
        first_seed,
        stories,
        options: StoryOptions {
            format: VideoFormat { width: 32, height: 32, fps: 16 },
            min_shots: 2,
            max_shots: 4,
            min_shot_frames: 5,
            max_shot_frames: 13,
            ..StoryOptions::default()
        },
        ..DatasetSpec::default()
    }
}

#[test]
fn writes_every_file_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("set");
    let spec = small_spec(10, 3);
    let mut calls = Vec::new();
    let manifest = generate_dataset(&dir, &spec, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(calls, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(manifest.stories.len(), 3);
    assert_eq!(manifest.generator, "storyreel-world");
    assert!(!manifest.benchmark);
    assert_eq!(manifest.totals.stories, 3);
    assert_eq!(manifest.totals.patterns.values().sum::<usize>(), 3);

    for (i, entry) in manifest.stories.iter().enumerate() {
        assert_eq!(entry.seed, 10 + i as u64);
        for file in [&entry.story, entry.video.as_ref().unwrap(), &entry.truth, &entry.captions] {
            assert!(dir.join(file).is_file(), "{file} missing");
        }
    }
    for file in ["shotstream.csv", "vocab.txt", "manifest.json"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    // No temporary file survives a finished run.
    for sub in ["", "stories", "videos", "truth", "captions"] {
        for f in std::fs::read_dir(dir.join(sub)).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains("partial"), "{sub}/{name} left behind");
        }
    }

    let vocab = std::fs::read_to_string(dir.join("vocab.txt")).unwrap();
    let lines: Vec<&str> = vocab.lines().collect();
    assert_eq!(&lines[..3], &["<pad>", "</s>", "<unk>"]);
    assert_eq!(lines[3..].iter().map(|s| s.to_string()).collect::<Vec<_>>(), caption_vocabulary());
    assert_eq!(vocab, vocabulary_text());

    let opened = WorldDataset::open(&dir).unwrap();
    assert_eq!(opened.manifest(), &manifest, "manifest round trip");
    let shotstream = opened.shotstream().unwrap();
    assert_eq!(shotstream.len(), 3);
    let mut shots = 0;
    let mut frames_total = 0;
    for i in 0..opened.len() {
        let story = opened.story(i).unwrap();
        assert_eq!(story, spec.story(i).unwrap());
        let frames = opened.frames(i).unwrap();
        assert_eq!(frames.len(), story.total_frames());
        assert_eq!(frames[0].size(), (32, 32));
        let truth = opened.truth(i).unwrap();
        assert_eq!(truth.len(), frames.len(), "one truth line per frame");
        assert_eq!(truth, render_story(&story).unwrap().truth);

        let row = shotstream.story(i).unwrap();
        let want: Vec<ShotRange> = story.shot_ranges().into_iter().map(|(s, e)| ShotRange::new(s, e)).collect();
        assert_eq!(row.ranges, want);
        assert_eq!(
            row.ranges.iter().map(ShotRange::len).collect::<Vec<_>>(),
            story.shots.iter().map(|s| s.frames).collect::<Vec<_>>()
        );
        assert_eq!(row.captions.global_caption, story.global_caption);
        assert_eq!(row.captions.shots, story.shots.iter().map(|s| s.caption.clone()).collect::<Vec<_>>());
        let decoded = shotstream.read_shots(i).unwrap();
        assert_eq!(decoded.iter().map(Vec::len).sum::<usize>(), frames.len());
        shots += story.shots.len();
        frames_total += frames.len();
    }
    assert_eq!(manifest.totals.shots, shots);
    assert_eq!(manifest.totals.frames, frames_total);

    // A previous dataset may be overwritten without --force, and stale stories disappear.
    let manifest2 = generate_dataset(&dir, &small_spec(20, 1), &mut |_, _| {}).unwrap();
    assert_eq!(manifest2.stories.len(), 1);
    assert_eq!(std::fs::read_dir(dir.join("stories")).unwrap().count(), 1);
    assert_eq!(WorldDataset::open(&dir).unwrap().len(), 1);
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = DatasetSpec { write_videos: false, ..small_spec(100, 4) };
    let many = generate_dataset(&tmp.path().join("many"), &spec, &mut |_, _| {}).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let one = pool.install(|| generate_dataset(&tmp.path().join("one"), &spec, &mut |_, _| {}).unwrap());
    assert_eq!(many, one);
    for file in ["manifest.json", "shotstream.csv", "stories/world-000102.json", "truth/world-000103.jsonl"] {
        let a = std::fs::read(tmp.path().join("many").join(file)).unwrap();
        let b = std::fs::read(tmp.path().join("one").join(file)).unwrap();
        assert_eq!(a, b, "{file} differs");
    }
    // Without videos the CSV's video_path is empty and the captions carry none.
    let ds = WorldDataset::open(tmp.path().join("many")).unwrap();
    assert!(ds.manifest().stories.iter().all(|e| e.video.is_none()));
    assert!(!tmp.path().join("many/videos").exists());
    let err = ds.frames(0).unwrap_err().to_string();
    assert!(err.contains("without videos"), "{err}");
    assert!(ds.shotstream().unwrap().stories().iter().all(|s| s.video_path.is_none()));
}

#[test]
fn refuses_a_foreign_non_empty_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mine");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "keep me").unwrap();
    let spec = DatasetSpec { write_videos: false, ..small_spec(0, 1) };
    let err = generate_dataset(&dir, &spec, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert!(!dir.join("manifest.json").exists());

    // --force writes anyway and leaves the foreign file alone.
    let forced = DatasetSpec { overwrite: true, ..spec };
    generate_dataset(&dir, &forced, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("notes.txt")).unwrap(), "keep me");
    assert_eq!(WorldDataset::open(&dir).unwrap().len(), 1);
}

#[test]
fn refuses_benchmark_seeds_for_training_sets() {
    let tmp = tempfile::tempdir().unwrap();
    for (first, n) in [(BENCHMARK_SEED_BASE, 1), (BENCHMARK_SEED_BASE - 5, 6), (BENCHMARK_SEED_BASE + 63, 10)] {
        let spec = DatasetSpec { write_videos: false, ..small_spec(first, n) };
        let err = generate_dataset(&tmp.path().join("x"), &spec, &mut |_, _| {}).unwrap_err().to_string();
        assert!(err.contains("benchmark"), "{err}");
    }
    assert!(!tmp.path().join("x").exists(), "nothing is written for a refused spec");
    // Right below and right above the benchmark range is fine.
    assert!(DatasetSpec { ..small_spec(BENCHMARK_SEED_BASE - 5, 5) }.validate().is_ok());
    assert!(DatasetSpec { ..small_spec(BENCHMARK_SEED_BASE + 64, 5) }.validate().is_ok());
    assert!(DatasetSpec { benchmark: true, ..small_spec(BENCHMARK_SEED_BASE, 3) }.validate().is_ok());
    assert!(is_benchmark_seed(BENCHMARK_SEED_BASE + 63));
    assert!(!is_benchmark_seed(BENCHMARK_SEED_BASE + 64));
    assert!(!is_benchmark_seed(0));
    assert!(DatasetSpec { ..small_spec(u64::MAX, 2) }.validate().is_err(), "seed overflow");
}

#[test]
fn open_names_missing_and_malformed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("set");
    let spec = DatasetSpec { write_videos: false, ..small_spec(5, 2) };
    let manifest = generate_dataset(&dir, &spec, &mut |_, _| {}).unwrap();

    let truth = dir.join(&manifest.stories[1].truth);
    std::fs::write(&truth, "{\"shot\": 0}\n").unwrap();
    let err = WorldDataset::open(&dir).unwrap().truth(1).unwrap_err().to_string();
    assert!(err.contains(&truth.display().to_string()), "{err}");

    let story = dir.join(&manifest.stories[0].story);
    std::fs::remove_file(&story).unwrap();
    let err = WorldDataset::open(&dir).unwrap_err().to_string();
    assert!(err.contains(&story.display().to_string()), "{err}");

    std::fs::write(dir.join(MANIFEST_FILE), "{ not json").unwrap();
    let err = WorldDataset::open(&dir).unwrap_err().to_string();
    assert!(err.contains("manifest.json"), "{err}");
}

#[test]
fn benchmark_is_fixed_and_balanced() {
    let a = benchmark_stories().unwrap();
    let b = benchmark_stories().unwrap();
    assert_eq!(a, b, "deterministic");
    assert_eq!(a.len(), BENCHMARK_STORIES);
    let mut patterns: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, story) in a.iter().enumerate() {
        assert!(story.shots.len() >= 5, "{} has {} shots", story.id, story.shots.len());
        assert!(story.shots.len() <= 8);
        assert_eq!(story.seed, BENCHMARK_SEED_BASE + i as u64);
        assert!(is_benchmark_seed(story.seed));
        assert_eq!(story.pattern, StoryPattern::ALL[i % 3]);
        assert_eq!((story.format.width, story.format.height, story.format.fps), (64, 64, 16));
        *patterns.entry(story.pattern.name()).or_default() += 1;
    }
    assert_eq!(patterns["main_subject"], 22);
    assert_eq!(patterns["insert_recall"], 21);
    assert_eq!(patterns["composable"], 21);
    let spec = benchmark_spec();
    assert!(spec.benchmark && spec.write_videos && spec.validate().is_ok());
    assert_eq!(benchmark_options().min_shots, 5);
}

//! Training clips: chosen by index alone, true to the world, and never from the benchmark.

use candle_core::Device;
use storyreel_train::data::{batch, frames_to_tensor, tensor_to_frames, ClipSource, DatasetClips, RenderedClips};
use storyreel_world::{benchmark_spec, generate_dataset, DatasetSpec, StoryOptions};

#[test]
fn rendered_clips_are_reproducible_and_true() {
    let source = RenderedClips::new(StoryOptions::default(), 100, 50, 9).unwrap();
    let a = source.clip(7).unwrap();
    let b = source.clip(7).unwrap();
    assert_eq!(a.frames, b.frames);
    assert_eq!(a.frames.len(), 9);
    assert_eq!(a.truth.len(), 9);
    assert!(a.truth.iter().all(|t| t.shot == a.shot));
    let facts = storyreel_world::parse_caption(&a.caption);
    assert_eq!(Some(a.truth[0].place), facts.place);
    let clips = batch(&source, 3, 4).unwrap();
    assert_eq!(clips.len(), 4);
    assert_eq!(clips[0].frames, source.clip(12).unwrap().frames);
    let distinct =
        (0..20).map(|i| source.clip(i).unwrap().frames[0].data.clone()).collect::<std::collections::HashSet<_>>();
    assert!(distinct.len() > 15, "only {} distinct clips of 20", distinct.len());
    assert!(source.describe().contains("seeds 100..=149"));
}

/// Whole-shot sources give each clip its shot's every frame, in the shot's order: a rendered
/// clip is the shot rendered on its own, a dataset clip the shot's range of the story's video.
#[test]
fn whole_shot_clips_are_whole_shots() {
    let options = StoryOptions::default();
    let source = RenderedClips::new(options.clone(), 100, 50, 9).unwrap().whole_shots();
    assert!(source.describe().contains("whole shots"), "{}", source.describe());
    let mut lengths = std::collections::HashSet::new();
    for i in 0..12 {
        let clip = source.clip(i).unwrap();
        let story = storyreel_world::generate_story(clip.story.trim_start_matches("world-").parse().unwrap(), &options)
            .unwrap();
        let spec = &story.shots[clip.shot];
        assert_eq!(clip.frames.len(), spec.frames);
        assert_eq!(
            clip.frames,
            storyreel_world::render_shot(&spec.world, clip.shot, spec.frames, story.format).unwrap().0
        );
        assert!(clip.truth.iter().all(|t| t.shot == clip.shot));
        lengths.insert(clip.frames.len());
    }
    assert!(lengths.len() > 1, "every shot had the same length: {lengths:?}");

    let dir = tempfile::tempdir().unwrap();
    let spec = DatasetSpec { first_seed: 3, stories: 2, ..DatasetSpec::default() };
    generate_dataset(dir.path(), &spec, &mut |_, _| {}).unwrap();
    let source = DatasetClips::open(dir.path(), 9).unwrap().whole_shots();
    for i in 0..6 {
        let clip = source.clip(i).unwrap();
        assert!(clip.frames.len() >= 17 && clip.frames.len() % 4 == 1, "{} frames", clip.frames.len());
        assert!(clip.truth.iter().all(|t| t.shot == clip.shot));
    }
}

#[test]
fn bad_sources_are_refused() {
    let opts = StoryOptions::default();
    let err = RenderedClips::new(opts.clone(), 9_000_000_010, 5, 9).unwrap_err().to_string();
    assert!(err.contains("benchmark"), "{err}");
    let err = RenderedClips::new(opts.clone(), 8_999_999_990, 100, 9).unwrap_err().to_string();
    assert!(err.contains("benchmark"), "{err}");
    let err = RenderedClips::new(opts.clone(), 0, 10, 8).unwrap_err().to_string();
    assert!(err.contains("1 + 4k"), "{err}");
    let err = RenderedClips::new(opts.clone(), 0, 10, 21).unwrap_err().to_string();
    assert!(err.contains("shortest shot"), "{err}");
    assert!(RenderedClips::new(opts, 0, 0, 9).is_err());
}

#[test]
fn tensors_round_trip_frames() {
    let clip = RenderedClips::new(StoryOptions::default(), 5, 3, 5).unwrap().clip(1).unwrap();
    let t = frames_to_tensor(&clip.frames, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[5, 3, 64, 64]);
    let (lo, hi) = (t.min_all().unwrap().to_scalar::<f32>().unwrap(), t.max_all().unwrap().to_scalar::<f32>().unwrap());
    assert!(lo >= -1.0 && hi <= 1.0);
    assert_eq!(tensor_to_frames(&t).unwrap(), clip.frames);
}

#[test]
fn dataset_clips_read_the_folder_and_refuse_the_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DatasetSpec { first_seed: 3, stories: 2, ..DatasetSpec::default() };
    generate_dataset(dir.path(), &spec, &mut |_, _| {}).unwrap();
    let source = DatasetClips::open(dir.path(), 9).unwrap();
    let clip = source.clip(4).unwrap();
    assert_eq!(clip.frames.len(), 9);
    assert_eq!(source.clip(4).unwrap().frames, clip.frames);
    assert!(clip.story.starts_with("world-00000"));
    let err = DatasetClips::open(dir.path(), 10).err().unwrap().to_string();
    assert!(err.contains("1 + 4k"), "{err}");

    let bench = tempfile::tempdir().unwrap();
    let mut spec = benchmark_spec();
    spec.stories = 1;
    spec.write_videos = false;
    generate_dataset(bench.path(), &spec, &mut |_, _| {}).unwrap();
    let err = DatasetClips::open(bench.path(), 9).err().unwrap().to_string();
    assert!(err.contains("held-out benchmark"), "{err}");
}

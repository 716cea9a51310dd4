//! A story generated one shot at a time (on the shipped toy student): resuming from finished
//! frames and cancelling a shot leave the story exactly as an uninterrupted one.

use std::path::Path;

use candle_core::{Device, Tensor};
use storyreel_engine::context::DynamicSampling;
use storyreel_engine::{EngineError, EulerSampler, ShotEvents, ShotRequest, StoryModel, StoryOptions, StoryStream};

const GLOBAL: &str = "A story about the pink rabbit and the red fox.";

fn model() -> StoryModel {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/toy-student");
    StoryModel::load(&dir, &Device::Cpu).unwrap()
}

fn options() -> StoryOptions {
    StoryOptions {
        seed: 21,
        memory: Box::new(DynamicSampling { max_frames: 6 }),
        sampler: EulerSampler::new(2, 8.0, 1.0).unwrap(),
        decoder: None,
    }
}

fn shot(caption: &str) -> ShotRequest {
    ShotRequest { caption: caption.into(), frames: 5 }
}

fn generate(stream: &mut StoryStream<'_>, request: &ShotRequest, cancel: bool) -> storyreel_engine::Result<Tensor> {
    let events = ShotEvents {
        on_start: &mut |_, _| Ok(()),
        on_frames: &mut |_, _| Ok(()),
        on_progress: &mut |_, _, _| {},
        cancelled: &|| cancel,
    };
    Ok(stream.generate_shot(request, events)?.frames)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn resumed_and_cancelled_stories_continue_as_the_uninterrupted_one() {
    let m = model();
    let first = shot("A pink rabbit walks right in a meadow in daylight, wide shot.");
    let second = shot("A red fox jumps in a city in daylight, medium shot.");

    let mut straight = StoryStream::new(&m, GLOBAL, options()).unwrap();
    let f0 = generate(&mut straight, &first, false).unwrap();
    let f1 = generate(&mut straight, &second, false).unwrap();
    assert_eq!(straight.shots_done(), 2);

    // Resumed from the first shot's frames, the story's second shot is the same.
    let mut resumed = StoryStream::new(&m, GLOBAL, options()).unwrap();
    resumed.push_finished(&first.caption, f0.clone()).unwrap();
    assert_eq!(max_diff(&generate(&mut resumed, &second, false).unwrap(), &f1), 0.0);

    // A cancelled shot leaves no trace: the next shot is the story's second, unchanged.
    let mut cancelled = StoryStream::new(&m, GLOBAL, options()).unwrap();
    generate(&mut cancelled, &first, false).unwrap();
    let err = generate(&mut cancelled, &shot("The same pink rabbit turns around."), true).unwrap_err();
    assert!(matches!(err, EngineError::Cancelled), "{err}");
    assert_eq!(cancelled.shots_done(), 1);
    assert_eq!(max_diff(&generate(&mut cancelled, &second, false).unwrap(), &f1), 0.0);

    // Frames of the wrong size or length are refused, naming the shot.
    let wrong = Tensor::zeros((5, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = resumed.push_finished("x", wrong).unwrap_err().to_string();
    assert!(err.contains("shot 2") && err.contains("64"), "{err}");
    let short = Tensor::zeros((4, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(resumed.push_finished("x", short).is_err());
}

#[test]
fn context_frames_are_encoded_once_per_story_and_reused_exactly() {
    use storyreel_engine::context::ContextPick;
    use storyreel_engine::teacher_story::{encode_context, encode_context_cached, ContextLatents};
    let model = model();
    let device = Device::Cpu;
    let shots: Vec<Tensor> =
        (0..2).map(|i| Tensor::rand(-1f32, 1f32, (5 + 4 * i, 3, 64, 64), &device).unwrap()).collect();
    let hw = (16, 16);
    let pick = |shot, frame| ContextPick { shot, frame };
    let mut cache = ContextLatents::default();
    let vae = model.vae.as_ref();
    // Two shots' context, the second picking two frames again (as dynamic sampling does).
    let first = [pick(0, 0), pick(0, 4)];
    let second = [pick(0, 0), pick(0, 4), pick(1, 0), pick(1, 8)];
    for picks in [&first[..], &second[..]] {
        let (want, want_flags) = encode_context(vae, &shots, picks, 6, hw, &device).unwrap();
        let (got, flags) = encode_context_cached(vae, &shots, picks, 6, hw, &device, &mut cache).unwrap();
        assert_eq!(max_diff(&want, &got), 0.0);
        assert_eq!(flags, want_flags);
    }
    assert_eq!(cache.len(), 4, "each distinct frame is encoded once");
    // A held frame is not encoded again: with the pixels gone, the cache still gives the
    // latents of the frames it saw.
    let (want, _) = encode_context(vae, &shots, &second, 6, hw, &device).unwrap();
    let blank: Vec<Tensor> = shots.iter().map(|s| s.zeros_like().unwrap()).collect();
    let (got, _) = encode_context_cached(vae, &blank, &second, 6, hw, &device, &mut cache).unwrap();
    assert_eq!(max_diff(&want, &got), 0.0);
}

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

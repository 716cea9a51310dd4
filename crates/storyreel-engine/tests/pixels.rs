//! The session decodes each chunk as it is denoised and takes context from decoded pixels.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use storyreel_engine::{ContextCodec, DynamicSampling, PixelHistory, SeededNoise, Session, SessionConfig};

use storyreel_nn::codec::VideoCodec;
use storyreel_nn::dit::random_weights;
use storyreel_nn::vae::{VaeConfig, WanVae};
use storyreel_nn::{RopeConfig, WanConfig, WanModel};

fn model() -> WanModel {
    // Wan latents have 16 channels; the tiny DiT is widened to match the VAE.
    let cfg = WanConfig { in_dim: 16, out_dim: 16, ..WanConfig::tiny() };
    let w = random_weights(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    WanModel::from_tensors(w, &cfg, RopeConfig::default(), DType::F32, &Device::Cpu).unwrap()
}

fn caption(seed: u64) -> Tensor {
    let d = WanConfig::tiny().text_dim;
    Tensor::randn(0f32, 1.0, (5, d), &Device::Cpu).unwrap().affine(1.0, seed as f64 * 0.01).unwrap()
}

fn vae() -> Arc<WanVae> {
    Arc::new(WanVae::random(&VaeConfig::tiny(), true, 5, DType::F32, &Device::Cpu).unwrap())
}

#[test]
fn chunks_arrive_decoded_and_context_comes_from_pixels() {
    let m = model();
    let v = vae();
    let history = PixelHistory::new(v.clone(), v.clone(), Device::Cpu).unwrap();
    let cfg = SessionConfig { frames_per_shot: 6, ..SessionConfig::shotstream((4, 6)) };
    let mut s =
        Session::new(&m, cfg, Box::new(DynamicSampling::default()), Box::new(history), Box::new(SeededNoise::new(1)))
            .unwrap();
    s.push_shot(&caption(0)).unwrap();
    let mut frames = Vec::new();
    while let Some(c) = s.next_chunk().unwrap() {
        let f = c.frames.expect("the pixel history decodes every chunk");
        // The shot's first latent gives one frame, every later one four.
        let expect = if c.chunk == 0 { 1 + 4 * 2 } else { 12 };
        assert_eq!(f.dims(), &[expect, 3, 32, 48]);
        frames.push(f);
    }
    let streamed = Tensor::cat(&frames, 0).unwrap();
    // Chunk-by-chunk decoding equals decoding the finished shot in one go.
    let whole = v.clone().decode(s.shot_latents(0).unwrap()).unwrap();
    let d = (&streamed - &whole).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-5);

    // The second shot's context: 6 frames of shot 0's decoded pixels, each re-encoded alone.
    let mut reference = PixelHistory::new(v.clone(), v.clone(), Device::Cpu).unwrap();
    assert_eq!(reference.record_shot(s.shot_latents(0).unwrap()).unwrap(), 21);
    let picked = reference.encode_frame(0, 20).unwrap();
    let direct = v.encode(&whole.narrow(0, 20, 1).unwrap()).unwrap().get(0).unwrap();
    let d = (&picked - &direct).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    assert!(reference.encode_frame(0, 21).is_err());
    assert!(reference.encode_frame(1, 0).is_err());

    s.push_shot(&caption(1)).unwrap();
    let mut n = 0;
    while let Some(c) = s.next_chunk().unwrap() {
        assert_eq!(c.shot, 1);
        assert!(c.frames.is_some());
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn frames_reach_every_sink_and_a_failing_sink_is_dropped_alone() {
    use std::sync::Mutex;
    use storyreel_media::{read_mp4, CallbackSink, EncodeOptions, Mp4FileSink};
    let m = model();
    let v = vae();
    let history = PixelHistory::new(v.clone(), v, Device::Cpu).unwrap();
    let cfg = SessionConfig { frames_per_shot: 6, ..SessionConfig::shotstream((4, 6)) };
    let mut s =
        Session::new(&m, cfg, Box::new(DynamicSampling::default()), Box::new(history), Box::new(SeededNoise::new(2)))
            .unwrap();
    let seen: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let log = seen.clone();
    s.add_sink(
        "callback",
        Box::new(CallbackSink::new(move |shot, frames| {
            log.lock().unwrap().push((shot, frames.len()));
            Ok(())
        })),
    );
    let mut calls = 0;
    s.add_sink(
        "flaky",
        Box::new(CallbackSink::new(move |_, _| {
            calls += 1;
            if calls == 2 {
                Err("disk full".into())
            } else {
                Ok(())
            }
        })),
    );
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("story.mp4");
    s.add_sink("mp4", Box::new(Mp4FileSink::create(&mp4, EncodeOptions::default()).unwrap()));
    let mut errors = Vec::new();
    for shot in 0..2 {
        s.push_shot_labelled(&caption(shot), &format!("shot {shot}")).unwrap();
        while let Some(c) = s.next_chunk().unwrap() {
            errors.extend(c.sink_errors);
        }
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("flaky") && errors[0].contains("disk full"));
    assert_eq!(*seen.lock().unwrap(), vec![(0, 9), (0, 12), (1, 9), (1, 12)]);
    let reports = s.finish_sinks();
    assert_eq!(reports.len(), 2);
    for (name, r) in &reports {
        assert!(r.is_ok(), "{name}: {r:?}");
    }
    let (info, frames) = read_mp4(&mp4).unwrap();
    assert_eq!(frames.len(), 42);
    assert_eq!((info.width, info.height), (48, 32));
}

//! The streaming Session end to end on a tiny random model.

use std::sync::atomic::Ordering;

use candle_core::{DType, Device, Tensor};
use storyreel_engine::{
    DynamicSampling, EngineError, GivenNoise, LatentHistory, NoContext, SeededNoise, Session, SessionConfig, ShotRun,
};
use storyreel_nn::dit::random_weights;
use storyreel_nn::{RopeConfig, WanConfig, WanModel};

fn model() -> WanModel {
    let cfg = WanConfig::tiny();
    let w = random_weights(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    WanModel::from_tensors(w, &cfg, RopeConfig::default(), DType::F32, &Device::Cpu).unwrap()
}

fn config() -> SessionConfig {
    SessionConfig { frames_per_shot: 6, ..SessionConfig::shotstream((4, 6)) }
}

fn caption(seed: u64) -> Tensor {
    let cfg = WanConfig::tiny();
    let mut s = seed;
    let data: Vec<f32> = (0..5 * cfg.text_dim)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 41) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(data, (5, cfg.text_dim), &Device::Cpu).unwrap()
}

fn session(m: &WanModel, seed: u64) -> Session<'_> {
    Session::new(
        m,
        config(),
        Box::new(DynamicSampling::default()),
        Box::new(LatentHistory::default()),
        Box::new(SeededNoise::new(seed)),
    )
    .unwrap()
}

fn run_story(m: &WanModel, seed: u64) -> Vec<Tensor> {
    let mut s = session(m, seed);
    let mut out = Vec::new();
    for shot in 0..2 {
        s.push_shot(&caption(shot)).unwrap();
        while let Some(c) = s.next_chunk().unwrap() {
            out.push(c.latents);
        }
    }
    out
}

#[test]
fn chunks_stream_as_captions_arrive_and_caches_are_released() {
    let m = model();
    let mut s = session(&m, 1);
    assert!(s.next_chunk().unwrap().is_none(), "no caption yet, no chunk");
    assert_eq!(s.push_shot(&caption(0)).unwrap(), 0);
    let c0 = s.next_chunk().unwrap().unwrap();
    assert_eq!((c0.shot, c0.chunk, c0.first_frame, c0.last_in_shot), (0, 0, 0, false));
    assert_eq!(c0.latents.dims(), &[3, 4, 4, 6]);
    assert!(s.cache_bytes() > 0);
    // The next shot's caption may arrive while shot 0 is still streaming.
    s.push_shot(&caption(1)).unwrap();
    let c1 = s.next_chunk().unwrap().unwrap();
    assert!(c1.last_in_shot);
    assert_eq!(s.cache_bytes(), 0, "caches must be released at shot end");
    assert_eq!(s.finished_shots(), 1);
    let d = s.next_chunk().unwrap().unwrap();
    assert_eq!((d.shot, d.chunk), (1, 0));
    let d = s.next_chunk().unwrap().unwrap();
    assert!(d.last_in_shot);
    assert!(s.next_chunk().unwrap().is_none());
    assert_eq!(s.shot_latents(1).unwrap().dims(), &[6, 4, 4, 6]);
    let finite = s.shot_latents(1).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(finite.is_finite() && finite > 0.0);
}

#[test]
fn same_seed_same_latents_and_context_matters() {
    let m = model();
    let a = run_story(&m, 5);
    let b = run_story(&m, 5);
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
    }
    let c = run_story(&m, 6);
    assert_ne!(
        a[0].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        c[0].flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // Shot 1 with the `none` policy differs from dynamic context (the context is used).
    let mut s = Session::new(
        &m,
        config(),
        Box::new(NoContext),
        Box::new(LatentHistory::default()),
        Box::new(SeededNoise::new(5)),
    )
    .unwrap();
    let mut none = Vec::new();
    for shot in 0..2 {
        s.push_shot(&caption(shot)).unwrap();
        while let Some(c) = s.next_chunk().unwrap() {
            none.push(c.latents);
        }
    }
    let same0 = (&none[0] - &a[0]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(same0, 0.0, "shot 0 never has context");
    let diff2 = (&none[2] - &a[2]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff2 > 1e-5, "shot 1 ignored its context");
}

#[test]
fn shot_run_with_given_noise_matches_the_session() {
    let m = model();
    let cfg = config();
    let seeded = run_story(&m, 9);
    // Rebuild shot 0's noise tensor [chunks, steps, 3, C, H, W] from the same seeded source.
    let mut src = SeededNoise::new(9);
    let mut chunks = Vec::new();
    for c in 0..2 {
        let steps: Vec<Tensor> = (0..4)
            .map(|s| storyreel_engine::NoiseSource::noise(&mut src, 0, c, s, &[3, 4, 4, 6], &Device::Cpu).unwrap())
            .collect();
        chunks.push(Tensor::stack(&steps, 0).unwrap());
    }
    let mut given = GivenNoise::new(Tensor::stack(&chunks, 0).unwrap()).unwrap();
    let caps = caption(0).pad_with_zeros(0, 0, WanConfig::tiny().text_len - 5).unwrap().unsqueeze(0).unwrap();
    let ctx = Tensor::zeros((6, 4, 4, 6), DType::F32, &Device::Cpu).unwrap();
    let mut run = ShotRun::start(&m, &cfg, 0, &caps, &ctx, &[0; 6]).unwrap();
    for want in &seeded[..2] {
        let got = run.next_chunk(&mut given, &|| false).unwrap();
        let d = (&got.latents - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
    }
    assert!(run.is_done());
    assert!(run.next_chunk(&mut given, &|| false).is_err());
}

#[test]
fn cancel_stops_a_shot_and_the_session_recovers() {
    let m = model();
    let mut s = session(&m, 2);
    s.push_shot(&caption(0)).unwrap();
    s.next_chunk().unwrap();
    s.cancel_token().store(true, Ordering::SeqCst);
    assert!(matches!(s.next_chunk(), Err(EngineError::Cancelled)));
    assert_eq!(s.cache_bytes(), 0);
    assert!(!s.has_work());
    s.push_shot(&caption(0)).unwrap();
    let c = s.next_chunk().unwrap().unwrap();
    assert_eq!((c.shot, c.chunk), (0, 0));
    s.cancel();
    assert!(s.next_chunk().unwrap().is_none());
}

#[test]
fn malformed_inputs_are_clear_errors() {
    let m = model();
    let mut s = session(&m, 2);
    let wrong_width = Tensor::zeros((5, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(s.push_shot(&wrong_width).unwrap_err().to_string().contains("does not fit"));
    let too_long = Tensor::zeros((100, WanConfig::tiny().text_dim), DType::F32, &Device::Cpu).unwrap();
    assert!(s.push_shot(&too_long).is_err());
    let rank3 = Tensor::zeros((1, 5, 24), DType::F32, &Device::Cpu).unwrap();
    assert!(s.push_shot(&rank3).is_err());
    let bad = SessionConfig { frames_per_shot: 7, ..config() };
    let err =
        Session::new(&m, bad, Box::new(NoContext), Box::new(LatentHistory::default()), Box::new(SeededNoise::new(0)));
    assert!(err.err().unwrap().to_string().contains("multiple"));
    let odd = SessionConfig { latent_size: (5, 6), ..config() };
    assert!(Session::new(
        &m,
        odd,
        Box::new(NoContext),
        Box::new(LatentHistory::default()),
        Box::new(SeededNoise::new(0))
    )
    .is_err());
    let ctx = Tensor::zeros((5, 4, 4, 6), DType::F32, &Device::Cpu).unwrap();
    let caps = Tensor::zeros((1, 8, 24), DType::F32, &Device::Cpu).unwrap();
    let err = ShotRun::start(&m, &config(), 0, &caps, &ctx, &[0; 6]).err().expect("must fail");
    assert!(err.to_string().contains("context latents"), "{err}");
}

#[test]
fn teacher_sampling_runs_bidirectionally_with_cfg() {
    use storyreel_engine::teacher::{sample_shot, teacher_flow, TeacherInputs};
    use storyreel_engine::{EulerSampler, FlowBranch, ShotPlan};
    let m = model();
    let plan = ShotPlan::new(1, &[0; 6], 2).unwrap();
    let cfg = WanConfig::tiny();
    let caps = Tensor::randn(0f32, 1.0, (2, cfg.text_len, cfg.text_dim), &Device::Cpu).unwrap();
    let neg = Tensor::randn(0f32, 1.0, (1, cfg.text_len, cfg.text_dim), &Device::Cpu).unwrap();
    let (c, u) = (m.embed_captions(&caps).unwrap(), m.embed_captions(&neg).unwrap());
    let ctx = Tensor::randn(0f32, 1.0, (6, 4, 4, 6), &Device::Cpu).unwrap();
    let inputs = TeacherInputs {
        plan: &plan,
        captions: &c,
        uncond: Some(&u),
        context: &ctx,
        clean_context: false,
        context_channels: false,
    };
    let noise = Tensor::randn(0f32, 1.0, (3, 4, 4, 6), &Device::Cpu).unwrap();
    // Bidirectional: the flow of target frame 0 depends on target frame 2 (not so in the student).
    let v = teacher_flow(&m, &inputs, &noise, 500.0, FlowBranch::Conditional).unwrap();
    let mut other = noise.clone();
    other = other
        .slice_assign(&[2..3, 0..4, 0..4, 0..6], &Tensor::zeros((1, 4, 4, 6), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    let v2 = teacher_flow(&m, &inputs, &other, 500.0, FlowBranch::Conditional).unwrap();
    let d =
        (v.get(0).unwrap() - v2.get(0).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d > 1e-5);
    let mut steps = Vec::new();
    let s = EulerSampler::new(3, 8.0, 6.0).unwrap();
    let out = sample_shot(
        &m,
        &inputs,
        &s,
        noise.clone(),
        &mut |i, _| {
            steps.push(i);
            Ok(())
        },
        &|| false,
    )
    .unwrap();
    assert_eq!(steps, vec![0, 1, 2]);
    assert_eq!(out.dims(), noise.dims());
    let no_uncond = TeacherInputs { uncond: None, ..inputs };
    assert!(sample_shot(&m, &no_uncond, &s, noise, &mut |_, _| Ok(()), &|| false).is_err());
}

#[test]
fn a_clean_context_is_embedded_at_t0_while_the_target_keeps_its_t() {
    use storyreel_engine::teacher::{teacher_flow, teacher_frames, TeacherInputs};
    use storyreel_engine::{FlowBranch, ShotPlan};
    let m = model();
    let dev = Device::Cpu;
    let cfg = WanConfig::tiny();
    let plan = ShotPlan::new(1, &[0, 0, 0, 1, 1, 1], 2).unwrap();
    let clean = teacher_frames(&plan, 3, 800.0, true);
    let shotstream = teacher_frames(&plan, 3, 800.0, false);
    let times = |frames: &[storyreel_nn::FrameInfo]| frames.iter().map(|f| f.t).collect::<Vec<_>>();
    assert_eq!(times(&clean), [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 800.0, 800.0, 800.0]);
    assert_eq!(times(&shotstream), [800.0; 9]);
    for (a, b) in clean.iter().zip(&shotstream) {
        assert_eq!((a.phase, a.caption), (b.phase, b.caption), "only the timestep changes");
    }

    // The flow is the DiT's over exactly those frames, and the context's timestep matters.
    let caps = Tensor::randn(0f32, 1.0, (2, cfg.text_len, cfg.text_dim), &dev).unwrap();
    let c = m.embed_captions(&caps).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (6, 4, 4, 6), &dev).unwrap();
    let noise = Tensor::randn(0f32, 1.0, (3, 4, 4, 6), &dev).unwrap();
    let inputs = TeacherInputs {
        plan: &plan,
        captions: &c,
        uncond: None,
        context: &ctx,
        clean_context: true,
        context_channels: false,
    };
    let v = teacher_flow(&m, &inputs, &noise, 800.0, FlowBranch::Conditional).unwrap();
    let full = Tensor::cat(&[&ctx, &noise], 0).unwrap();
    let want = m.forward_bidirectional(&full, &clean, &c).unwrap().narrow(0, 6, 3).unwrap();
    let max_diff =
        |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(max_diff(&v, &want), 0.0);
    let at_target = TeacherInputs { clean_context: false, ..inputs };
    let v_target = teacher_flow(&m, &at_target, &noise, 800.0, FlowBranch::Conditional).unwrap();
    assert!(max_diff(&v, &v_target) > 1e-5, "the context's timestep must reach the flow");
}

#[test]
fn context_guidance_pushes_away_from_the_dropped_context() {
    use storyreel_engine::teacher::{sample_shot, teacher_flow, TeacherInputs};
    use storyreel_engine::{EulerSampler, FlowBranch, ShotPlan};
    let m = model();
    let dev = Device::Cpu;
    let cfg = WanConfig::tiny();
    let caps = Tensor::randn(0f32, 1.0, (3, cfg.text_len, cfg.text_dim), &dev).unwrap();
    let c = m.embed_captions(&caps).unwrap();
    let plan = ShotPlan::new(2, &[0, 0, 1, 1, 1, 1], 3).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (6, 4, 4, 6), &dev).unwrap();
    let noise = Tensor::randn(0f32, 1.0, (3, 4, 4, 6), &dev).unwrap();
    let inputs = TeacherInputs {
        plan: &plan,
        captions: &c,
        uncond: None,
        context: &ctx,
        clean_context: false,
        context_channels: false,
    };
    // The context-free branch is exactly the dropped-context input training shows.
    let without = teacher_flow(&m, &inputs, &noise, 700.0, FlowBranch::WithoutContext).unwrap();
    let dropped_plan = ShotPlan::new(2, &[0; 6], 3).unwrap();
    let zeros = ctx.zeros_like().unwrap();
    let dropped = TeacherInputs {
        plan: &dropped_plan,
        captions: &c,
        uncond: None,
        context: &zeros,
        clean_context: false,
        context_channels: false,
    };
    let want = teacher_flow(&m, &dropped, &noise, 700.0, FlowBranch::Conditional).unwrap();
    let max_diff =
        |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(max_diff(&without, &want), 0.0);
    let with = teacher_flow(&m, &inputs, &noise, 700.0, FlowBranch::Conditional).unwrap();
    assert!(max_diff(&with, &without) > 1e-5, "the context must matter to this model");

    // Guided sampling differs from plain sampling when there is context, and only then.
    let plain = EulerSampler::new(2, 8.0, 1.0).unwrap();
    let guided = plain.clone().with_context_guidance(2.0).unwrap();
    let run = |inputs: &TeacherInputs<'_>, s: &EulerSampler| {
        sample_shot(&m, inputs, s, noise.clone(), &mut |_, _| Ok(()), &|| false).unwrap()
    };
    assert!(max_diff(&run(&inputs, &plain), &run(&inputs, &guided)) > 1e-5);
    assert_eq!(max_diff(&run(&dropped, &plain), &run(&dropped, &guided)), 0.0);
}

//! Invariants of the DiT's two modes (ARCHITECTURE.md §3, issue 2 tests).

use candle_core::{DType, Device, Tensor};
use storyreel_nn::dit::random_weights;
use storyreel_nn::kv_cache::{ContextCache, LocalCache, LocalWindow};
use storyreel_nn::{FrameInfo, FramePhase, RopeConfig, WanConfig, WanModel};

const H: usize = 4;
const W: usize = 6;

fn model(cfg: &WanConfig, rope: RopeConfig) -> WanModel {
    let w = random_weights(cfg, 7, DType::F32, &Device::Cpu).unwrap();
    WanModel::from_tensors(w, cfg, rope, DType::F32, &Device::Cpu).unwrap()
}

fn latents(frames: usize, seed: u64) -> Tensor {
    // Deterministic pseudo-random latents without touching the global RNG.
    let n = frames * 4 * H * W;
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(data, (frames, 4, H, W), &Device::Cpu).unwrap()
}

fn captions(n: usize) -> Tensor {
    let cfg = WanConfig::tiny();
    Tensor::randn(0f32, 1.0, (n, cfg.text_len, cfg.text_dim), &Device::Cpu).unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let m = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    d / m
}

fn frame(t: f32, position: usize, shot_flag: i64, caption: usize) -> FrameInfo {
    FrameInfo { t, phase: FramePhase { position, shot_flag }, caption }
}

fn context_frames() -> Vec<FrameInfo> {
    [0i64, 0, 0, 1, 1, 1].iter().enumerate().map(|(i, &s)| frame(0.0, i, s, s as usize)).collect()
}

#[test]
fn cached_chunks_equal_one_pass_block_causal_forward() {
    cached_chunks_match_one_pass(false);
}

#[test]
fn cached_chunks_equal_one_pass_with_spatial_position() {
    cached_chunks_match_one_pass(true);
}

fn cached_chunks_match_one_pass(spatial_position: bool) {
    let cfg = WanConfig { spatial_position, ..WanConfig::tiny() };
    let m = model(&cfg, RopeConfig::default());
    let caps = m.embed_captions(&captions(3)).unwrap();
    let ctx = latents(6, 1);
    let chunks: Vec<Tensor> = (0..3).map(|i| latents(3, 10 + i)).collect();
    let ts = [957.93f32, 888.89, 0.0];
    let geo = m.cache_geometry(H, W).unwrap();

    let mut context = ContextCache::new(geo, 6, &Device::Cpu).unwrap();
    m.fill_context(&ctx, &context_frames(), &caps, &mut context).unwrap();
    let mut local = LocalCache::new(geo, LocalWindow::default(), 3, &Device::Cpu).unwrap();
    let mut cached = Vec::new();
    for (i, x) in chunks.iter().enumerate() {
        let frames: Vec<_> = (0..3).map(|j| frame(ts[i], 6 + 3 * i + j, 2, 2)).collect();
        // A first pass on other data at another t, as the denoising steps do: the slot is
        // rewritten, and only the last write may count.
        let noisy: Vec<_> = frames.iter().map(|f| FrameInfo { t: 1000.0, ..*f }).collect();
        m.forward_chunk(&latents(3, 99 + i as u64), &noisy, &caps, &context, &mut local, 3 * i).unwrap();
        cached.push(m.forward_chunk(x, &frames, &caps, &context, &mut local, 3 * i).unwrap());
    }

    let mut all = vec![ctx];
    all.extend(chunks.iter().cloned());
    let x = Tensor::cat(&all, 0).unwrap();
    let mut frames = context_frames();
    let mut blocks = vec![0; 6];
    for (i, t) in ts.iter().enumerate() {
        for j in 0..3 {
            frames.push(frame(*t, 6 + 3 * i + j, 2, 2));
            blocks.push(i + 1);
        }
    }
    let one_pass = m.forward_block_causal(&x, &frames, &blocks, &caps).unwrap();
    for (i, c) in cached.iter().enumerate() {
        let want = one_pass.narrow(0, 6 + 3 * i, 3).unwrap();
        let e = rel_err(c, &want);
        assert!(e <= 1e-4, "chunk {i}: relative error {e}");
    }
}

#[test]
fn sliding_window_keeps_sinks_and_drops_the_oldest_chunk() {
    let cfg = WanConfig::tiny();
    let m = model(&cfg, RopeConfig::default());
    let caps = m.embed_captions(&captions(3)).unwrap();
    let geo = m.cache_geometry(H, W).unwrap();
    let ctx = latents(6, 1);
    let mut context = ContextCache::new(geo, 6, &Device::Cpu).unwrap();
    m.fill_context(&ctx, &context_frames(), &caps, &mut context).unwrap();
    let window = LocalWindow { capacity_frames: 6, sink_frames: 3 };
    let mut local = LocalCache::new(geo, window, 3, &Device::Cpu).unwrap();
    let chunks: Vec<Tensor> = (0..3).map(|i| latents(3, 20 + i)).collect();
    let fr = |i: usize| -> Vec<FrameInfo> { (0..3).map(|j| frame(0.0, 6 + 3 * i + j, 2, 2)).collect() };
    let mut last = None;
    for (i, x) in chunks.iter().enumerate() {
        last = Some(m.forward_chunk(x, &fr(i), &caps, &context, &mut local, 3 * i).unwrap());
    }
    // Chunk 2 sees the context, the sink chunk 0 and itself, not chunk 1.
    let x = Tensor::cat(&[ctx, chunks[0].clone(), chunks[2].clone()], 0).unwrap();
    let mut frames = context_frames();
    frames.extend(fr(0));
    frames.extend(fr(2));
    let blocks = [vec![0; 6], vec![1; 3], vec![2; 3]].concat();
    let want = m.forward_block_causal(&x, &frames, &blocks, &caps).unwrap().narrow(0, 9, 3).unwrap();
    let e = rel_err(last.as_ref().unwrap(), &want);
    assert!(e <= 1e-4, "relative error {e}");
}

fn bidirectional(m: &WanModel, flags: &[i64], caps: &storyreel_nn::kv_cache::CaptionCache, x: &Tensor) -> Tensor {
    let frames: Vec<_> = flags.iter().enumerate().map(|(i, &s)| frame(500.0, i, s, 0)).collect();
    m.forward_bidirectional(x, &frames, caps).unwrap()
}

#[test]
fn shifting_every_shot_phase_leaves_the_output_unchanged() {
    let cfg = WanConfig::tiny();
    let m = model(&cfg, RopeConfig::default());
    let caps = m.embed_captions(&captions(1)).unwrap();
    let x = latents(9, 3);
    let flags = [0, 0, 0, 1, 1, 1, 2, 2, 2];
    let base = bidirectional(&m, &flags, &caps, &x);
    let shifted: Vec<i64> = flags.iter().map(|s| s + 5).collect();
    let e = rel_err(&bidirectional(&m, &shifted, &caps, &x), &base);
    assert!(e < 1e-5, "a common phase shift changed the output by {e}");
    let mut one = flags;
    one[1] = 1;
    let e = rel_err(&bidirectional(&m, &one, &caps, &x), &base);
    assert!(e > 1e-4, "changing one context frame's phase did not change the output ({e})");
    // With the indicator off, flags do not matter at all.
    let off = model(&cfg, RopeConfig { shot_phase: None, ..RopeConfig::default() });
    let a = bidirectional(&off, &flags, &caps, &x);
    let b = bidirectional(&off, &one, &caps, &x);
    assert!(rel_err(&a, &b) < 1e-6);
}

#[test]
fn shot_phase_is_relative_in_the_cached_path_too() {
    let cfg = WanConfig::tiny();
    let m = model(&cfg, RopeConfig::default());
    let caps = m.embed_captions(&captions(1)).unwrap();
    let geo = m.cache_geometry(H, W).unwrap();
    let run = |offset: i64| {
        let mut context = ContextCache::new(geo, 6, &Device::Cpu).unwrap();
        let cf: Vec<_> = (0..6).map(|i| frame(0.0, i, offset + (i / 3) as i64, 0)).collect();
        m.fill_context(&latents(6, 5), &cf, &caps, &mut context).unwrap();
        let mut local = LocalCache::new(geo, LocalWindow::default(), 3, &Device::Cpu).unwrap();
        let fr: Vec<_> = (0..3).map(|j| frame(737.59, 6 + j, offset + 2, 0)).collect();
        m.forward_chunk(&latents(3, 6), &fr, &caps, &context, &mut local, 0).unwrap()
    };
    let e = rel_err(&run(3), &run(0));
    assert!(e < 1e-5, "{e}");
}

#[test]
fn each_frame_sees_only_its_own_caption() {
    let cfg = WanConfig { num_layers: 1, ..WanConfig::tiny() };
    let m = model(&cfg, RopeConfig::default());
    let x = latents(6, 4);
    let routing = [0usize, 0, 1, 1, 2, 2];
    let frames: Vec<_> = routing.iter().enumerate().map(|(i, &c)| frame(300.0, i, c as i64, c)).collect();
    let caps = captions(3);
    let base = m.forward_bidirectional(&x, &frames, &m.embed_captions(&caps).unwrap()).unwrap();
    for j in 0..3 {
        let mut changed = caps.clone();
        let noise = Tensor::randn(0f32, 1.0, (1, cfg.text_len, cfg.text_dim), &Device::Cpu).unwrap();
        changed = changed.slice_assign(&[j..j + 1, 0..cfg.text_len, 0..cfg.text_dim], &noise).unwrap();
        let out = m.forward_bidirectional(&x, &frames, &m.embed_captions(&changed).unwrap()).unwrap();
        for (f, &c) in routing.iter().enumerate() {
            let e = rel_err(&out.narrow(0, f, 1).unwrap(), &base.narrow(0, f, 1).unwrap());
            if c == j {
                assert!(e > 1e-4, "frame {f} routed to caption {j} did not change ({e})");
            } else {
                assert!(e == 0.0, "frame {f} (caption {c}) changed when caption {j} changed ({e})");
            }
        }
    }
}

#[test]
fn bf16_weights_run_close_to_f32() {
    bf16_runs_close_to_f32(false);
}

#[test]
fn bf16_weights_run_close_to_f32_with_spatial_position() {
    bf16_runs_close_to_f32(true);
}

fn bf16_runs_close_to_f32(spatial_position: bool) {
    let cfg = WanConfig { spatial_position, ..WanConfig::tiny() };
    let w = random_weights(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
    let m32 = WanModel::from_tensors(w.clone(), &cfg, RopeConfig::default(), DType::F32, &Device::Cpu).unwrap();
    let m16 = WanModel::from_tensors(w, &cfg, RopeConfig::default(), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(m16.dtype(), DType::BF16);
    let caps = captions(1);
    let x = latents(3, 8);
    let frames: Vec<_> = (0..3).map(|i| frame(888.89, i, 1, 0)).collect();
    let a = m32.forward_bidirectional(&x, &frames, &m32.embed_captions(&caps).unwrap()).unwrap();
    let b = m16.forward_bidirectional(&x, &frames, &m16.embed_captions(&caps).unwrap()).unwrap();
    assert_eq!(b.dtype(), DType::F32);
    let e = rel_err(&b, &a);
    assert!(e < 5e-2, "bf16 is {e} from f32");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let cfg = WanConfig::tiny();
    let m = model(&cfg, RopeConfig::default());
    let caps = m.embed_captions(&captions(1)).unwrap();
    let x = latents(3, 1);
    let frames: Vec<_> = (0..3).map(|i| frame(0.0, i, 1, 0)).collect();
    let err = m.forward_bidirectional(&x, &frames[..2], &caps).unwrap_err().to_string();
    assert!(err.contains("2 frame descriptions for 3"), "{err}");
    let routed: Vec<_> = frames.iter().map(|f| FrameInfo { caption: 1, ..*f }).collect();
    let err = m.forward_bidirectional(&x, &routed, &caps).unwrap_err().to_string();
    assert!(err.contains("caption 1"), "{err}");
    let odd = Tensor::zeros((3, 4, 5, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(m.forward_bidirectional(&odd, &frames, &caps).unwrap_err().to_string().contains("patch"));
    let wrong_c = Tensor::zeros((3, 5, 4, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(m.forward_bidirectional(&wrong_c, &frames, &caps).unwrap_err().to_string().contains("channels"));
    let long = Tensor::zeros((1, cfg.text_len + 1, cfg.text_dim), DType::F32, &Device::Cpu).unwrap();
    assert!(m.embed_captions(&long).unwrap_err().to_string().contains("at most"));
    let geo = m.cache_geometry(H, W).unwrap();
    assert!(LocalCache::new(geo, LocalWindow { capacity_frames: 7, sink_frames: 0 }, 3, &Device::Cpu).is_err());
    let context = ContextCache::new(geo, 6, &Device::Cpu).unwrap();
    let mut local = LocalCache::new(geo, LocalWindow::default(), 3, &Device::Cpu).unwrap();
    let err = m.forward_chunk(&x, &frames, &caps, &context, &mut local, 0).unwrap_err().to_string();
    assert!(err.contains("not been filled"), "{err}");
}

#[test]
fn separate_frames_equal_one_forward_per_frame() {
    // Image batches of the teacher stage: each frame alone, with its own t and caption; the
    // position and shot flag of a lone frame cancel out of its attention.
    let cfg = WanConfig::tiny();
    let m = model(&cfg, RopeConfig::default());
    let caps = m.embed_captions(&captions(3)).unwrap();
    let x = latents(3, 5);
    let frames = [frame(990.0, 0, 1, 0), frame(500.0, 4, 3, 1), frame(20.0, 0, 1, 2)];
    let batched = m.forward_separate_frames(&x, &frames, &caps).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let own = FrameInfo { phase: FramePhase { position: 9, shot_flag: 5 }, ..*f };
        let alone = m.forward_bidirectional(&x.narrow(0, i, 1).unwrap(), &[own], &caps).unwrap();
        let e = rel_err(&batched.narrow(0, i, 1).unwrap(), &alone);
        assert!(e <= 1e-5, "frame {i}: relative error {e}");
    }
    // Not the bidirectional forward over all three: there frames see each other.
    let joint = m.forward_bidirectional(&x, &frames, &caps).unwrap();
    assert!(rel_err(&batched, &joint) > 1e-3);
}

#[test]
fn separate_samples_equal_one_forward_per_sample() {
    // Batched context samples of the teacher stage: each sample (context frames + target) sees
    // only its own frames, with its own captions and timestep.
    let cfg = WanConfig::tiny();
    let m = model(&cfg, RopeConfig::default());
    let caps = m.embed_captions(&captions(4)).unwrap();
    let x = latents(5, 11);
    let frames = [
        frame(900.0, 0, 0, 0),
        frame(900.0, 1, 1, 1),
        frame(900.0, 2, 1, 1),
        frame(250.0, 0, 0, 2),
        frame(250.0, 1, 1, 3),
    ];
    let batched = m.forward_separate_samples(&x, &frames, &[3, 2], &caps).unwrap();
    for (start, n) in [(0, 3), (3, 2)] {
        let alone = m.forward_bidirectional(&x.narrow(0, start, n).unwrap(), &frames[start..start + n], &caps).unwrap();
        let e = rel_err(&batched.narrow(0, start, n).unwrap(), &alone);
        assert!(e <= 1e-5, "sample at {start}: relative error {e}");
    }
    let joint = m.forward_bidirectional(&x, &frames, &caps).unwrap();
    assert!(rel_err(&batched, &joint) > 1e-3);
    for bad in [&[3usize, 1][..], &[3, 0, 2], &[6]] {
        let err = m.forward_separate_samples(&x, &frames, bad, &caps).unwrap_err().to_string();
        assert!(err.contains("do not split"), "{err}");
    }
}

/// Spread of a frame's output over its tokens: the largest deviation of any latent pixel from
/// the mean of the pixels at the same place within every 2×2 patch of its frame and channel.
fn spatial_spread(y: &Tensor) -> f32 {
    let (f, c, h, w) = y.dims4().unwrap();
    let patches = y.reshape((f, c, h / 2, 2, w / 2, 2)).unwrap();
    let mean = patches.mean_keepdim(4).unwrap().mean_keepdim(2).unwrap();
    patches.broadcast_sub(&mean).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn only_spatial_position_lets_a_flat_input_become_a_layout() {
    // A flat latent makes every token alike; RoPE's relative angles then weight identical
    // values, so a Wan DiT cannot put anything in one place rather than another. The
    // position embedding gives each token its own start.
    let flat = Tensor::full(0.3f32, (2, 4, H, W), &Device::Cpu).unwrap();
    let caps_in = captions(1);
    let out = |spatial_position: bool| {
        let cfg = WanConfig { spatial_position, ..WanConfig::tiny() };
        let m = model(&cfg, RopeConfig::default());
        let caps = m.embed_captions(&caps_in).unwrap();
        let frames = [frame(990.0, 0, 0, 0), frame(990.0, 1, 0, 0)];
        m.forward_bidirectional(&flat, &frames, &caps).unwrap()
    };
    let (without, with) = (out(false), out(true));
    assert!(spatial_spread(&without) < 1e-4, "RoPE alone spread a flat input by {}", spatial_spread(&without));
    assert!(spatial_spread(&with) > 1e-2, "the position embedding left the output flat ({})", spatial_spread(&with));
}

#[test]
fn spatial_position_adds_no_weights_and_stays_out_of_wan_configs() {
    let plain = WanConfig::tiny();
    let with = WanConfig { spatial_position: true, ..WanConfig::tiny() };
    let names = |cfg: &WanConfig| {
        let mut k: Vec<String> = random_weights(cfg, 7, DType::F32, &Device::Cpu).unwrap().into_keys().collect();
        k.sort();
        k
    };
    assert_eq!(names(&plain), names(&with));
    let text = serde_json::to_string(&plain).unwrap();
    assert!(!text.contains("spatial_position"), "{text}");
    let back = WanConfig::from_json_str(&serde_json::to_string(&with).unwrap()).unwrap();
    assert!(back.spatial_position);
    let odd = WanConfig { dim: 66, num_heads: 1, spatial_position: true, ..WanConfig::tiny() };
    assert!(odd.validate().is_err());
}

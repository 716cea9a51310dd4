//! The Wan VAE: streaming decode equals whole-clip decode, frame counts, both checkpoint
//! layouts, and clear errors for bad inputs and checkpoints.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

use storyreel_nn::checkpoint::{save_pth, save_safetensors};
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::vae::{VaeConfig, VaeLayout, WanVae};

fn tiny_vae(seed: u64) -> Arc<WanVae> {
    Arc::new(WanVae::random(&VaeConfig::tiny(), true, seed, DType::F32, &Device::Cpu).unwrap())
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut r)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn streaming_decode_equals_whole_clip_decode() {
    let vae = tiny_vae(1);
    // Scaled down so that the random decoder does not saturate the clamp everywhere.
    let latents = (randn(&[5, 16, 3, 4], 2) * 0.5).unwrap();
    let whole = vae.clone().decode(&latents).unwrap();
    assert_eq!(whole.dims(), &[17, 3, 24, 32]);
    for pushes in [vec![1, 1, 1, 1, 1], vec![1, 3, 1], vec![2, 3], vec![3, 2]] {
        let mut stream = vae.clone().decode_stream();
        let mut frames = Vec::new();
        let mut start = 0;
        for (i, n) in pushes.iter().enumerate() {
            let out = stream.push(&latents.narrow(0, start, *n).unwrap()).unwrap();
            let expect = if i == 0 { 1 + 4 * (n - 1) } else { 4 * n };
            assert_eq!(out.dim(0).unwrap(), expect, "pushes {pushes:?}");
            frames.push(out);
            start += n;
        }
        assert_eq!(stream.latents_seen(), 5);
        assert!(stream.cache_bytes() > 0);
        let streamed = Tensor::cat(&frames, 0).unwrap();
        let d = max_abs_diff(&whole, &streamed);
        assert!(d < 1e-5, "pushes {pushes:?}: max |Δ| = {d}");
    }
    let min = whole.flatten_all().unwrap().min(0).unwrap().to_scalar::<f32>().unwrap();
    let max = whole.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!((-1.0..=1.0).contains(&min) && (-1.0..=1.0).contains(&max));
}

#[test]
fn encode_decode_shapes() {
    let vae = tiny_vae(3);
    for (f, t) in [(1, 1), (5, 2), (9, 3)] {
        let frames = randn(&[f, 3, 16, 24], f as u64).clamp(-1f32, 1f32).unwrap();
        let z = vae.encode(&frames).unwrap();
        assert_eq!(z.dims(), &[t, 16, 2, 3], "{f} frames");
        let back = vae.clone().decode(&z).unwrap();
        assert_eq!(back.dims(), &[f, 3, 16, 24]);
    }
    // Each frame encoded alone, the context-frame path.
    let frames = randn(&[3, 3, 16, 24], 9);
    let z = vae.encode_frames(&frames).unwrap();
    assert_eq!(z.dims(), &[3, 16, 2, 3]);
    let z1 = vae.encode(&frames.narrow(0, 1, 1).unwrap()).unwrap();
    assert_eq!(max_abs_diff(&z.narrow(0, 1, 1).unwrap(), &z1), 0.0);
}

#[test]
fn chunked_encode_equals_one_pass() {
    // The reference encodes 1, 4, 4, … frames per call; a single pass over 9 frames must agree.
    let vae = tiny_vae(4);
    let frames = randn(&[9, 3, 16, 16], 5).clamp(-1f32, 1f32).unwrap();
    let whole = vae.encode(&frames).unwrap();
    let first = vae.encode(&frames.narrow(0, 0, 5).unwrap()).unwrap();
    // Causality: the first 5 frames' latents do not depend on later frames.
    let d = max_abs_diff(&whole.narrow(0, 0, 2).unwrap(), &first);
    assert!(d < 1e-5, "{d}");
}

fn write_layouts(vae: &WanVae, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let wan = dir.join("Wan2.1_VAE.pth");
    let mut named: Vec<(String, Tensor)> = vae.tensors_in_layout(VaeLayout::Wan).into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    save_pth(&wan, &named, None).unwrap();
    let diff = dir.join("diffusion_pytorch_model.safetensors");
    save_safetensors(&diff, &vae.tensors_in_layout(VaeLayout::Diffusers)).unwrap();
    (wan, diff)
}

#[test]
fn both_layouts_load_to_identical_outputs() {
    let vae = tiny_vae(6);
    let dir = tempfile::tempdir().unwrap();
    let (wan, diff) = write_layouts(&vae, dir.path());
    let a = Arc::new(WanVae::load(&wan, DType::F32, &Device::Cpu).unwrap());
    let b = Arc::new(WanVae::load(&diff, DType::F32, &Device::Cpu).unwrap());
    assert_eq!(a.config(), vae.config());
    assert_eq!(b.config(), vae.config());
    let latents = randn(&[2, 16, 2, 3], 7);
    let ra = a.clone().decode(&latents).unwrap();
    let rb = b.clone().decode(&latents).unwrap();
    let r0 = vae.clone().decode(&latents).unwrap();
    assert_eq!(max_abs_diff(&ra, &rb), 0.0);
    assert_eq!(max_abs_diff(&ra, &r0), 0.0);
    let frames = randn(&[5, 3, 16, 24], 8);
    assert_eq!(max_abs_diff(&a.encode(&frames).unwrap(), &b.encode(&frames).unwrap()), 0.0);
    // Our own save format round-trips too, including a non-Wan latent normalisation.
    let cfg = VaeConfig { latents_mean: vec![0.5; 16], latents_std: vec![2.0; 16], ..VaeConfig::tiny() };
    let custom = WanVae::random(&cfg, false, 9, DType::F32, &Device::Cpu).unwrap();
    custom.save(&dir.path().join("toy")).unwrap();
    let back = WanVae::load(&dir.path().join("toy"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.config(), &cfg);
    assert!(!back.has_encoder());
    let err = back.encode(&randn(&[1, 3, 16, 16], 1)).unwrap_err().to_string();
    assert!(err.contains("no encoder"), "{err}");
}

#[test]
fn smaller_widths_are_read_from_the_checkpoint() {
    let cfg = VaeConfig {
        base_dim: 4,
        dim_mult: vec![1, 2, 2],
        num_res_blocks: 1,
        temporal_downsample: vec![true, true],
        ..VaeConfig::wan21()
    };
    let vae = WanVae::random(&cfg, true, 1, DType::F32, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (wan, _) = write_layouts(&vae, dir.path());
    let back = Arc::new(WanVae::load(&wan, DType::F32, &Device::Cpu).unwrap());
    assert_eq!(back.config(), &cfg);
    // Two level transitions: ×4 in space.
    let out = back.clone().decode(&randn(&[2, 16, 3, 3], 2)).unwrap();
    assert_eq!(out.dims(), &[5, 3, 12, 12]);
}

#[test]
fn bad_checkpoints_name_the_tensor() {
    let vae = tiny_vae(1);
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = vae.tensors_in_layout(VaeLayout::Wan);
    tensors.insert(
        "decoder.upsamples.4.residual.6.weight".into(),
        Tensor::zeros((16, 16, 3, 3, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("bad_shape.safetensors");
    save_safetensors(&p, &tensors).unwrap();
    let err = WanVae::load(&p, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("decoder.upsamples.4.residual.6.weight"), "{err}");

    let mut tensors = vae.tensors_in_layout(VaeLayout::Wan);
    tensors.remove("decoder.middle.1.proj.bias");
    let p = dir.path().join("missing.safetensors");
    save_safetensors(&p, &tensors).unwrap();
    let err = WanVae::load(&p, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("decoder.middle.1.proj.bias") && err.contains("missing"), "{err}");

    let mut tensors: HashMap<String, Tensor> = vae.tensors_in_layout(VaeLayout::Wan);
    tensors.insert("decoder.extra.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    let p = dir.path().join("extra.safetensors");
    save_safetensors(&p, &tensors).unwrap();
    let err = WanVae::load(&p, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("decoder.extra.weight"), "{err}");

    let err = WanVae::load(&dir.path().join("nope.pth"), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("nope.pth"), "{err}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let vae = tiny_vae(2);
    let mut s = vae.clone().decode_stream();
    let err = s.push(&randn(&[1, 15, 2, 2], 1)).unwrap_err().to_string();
    assert!(err.contains("16") && err.contains("15"), "wrong channels: {err}");
    let err = s.push(&Tensor::zeros((0, 16, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("no frames"), "zero frames: {err}");
    let err = vae.encode(&randn(&[1, 3, 17, 16], 1)).unwrap_err().to_string();
    assert!(err.contains("multiple of 8"), "odd size: {err}");
    let err = vae.encode(&randn(&[4, 3, 16, 16], 1)).unwrap_err().to_string();
    assert!(err.contains("1 + 4k"), "frame count: {err}");
    let err = vae.encode(&randn(&[1, 4, 16, 16], 1)).unwrap_err().to_string();
    assert!(err.contains("RGB"), "channels: {err}");
    let err = vae.encode(&Tensor::zeros((0, 3, 16, 16), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
    assert!(err.contains("no frames"), "zero frames: {err}");
}

#[test]
fn bf16_weights_decode_close_to_f32() {
    let vae = tiny_vae(11);
    let dir = tempfile::tempdir().unwrap();
    let (wan, _) = write_layouts(&vae, dir.path());
    let half = Arc::new(WanVae::load(&wan, DType::BF16, &Device::Cpu).unwrap());
    assert_eq!(half.dtype(), DType::BF16);
    let latents = (randn(&[2, 16, 2, 3], 12) * 0.5).unwrap();
    let a = vae.clone().decode(&latents).unwrap();
    let b = half.clone().decode(&latents).unwrap();
    assert_eq!(b.dtype(), DType::F32);
    let d = max_abs_diff(&a, &b);
    assert!(d < 0.1, "bf16 vs f32: {d}");
    let z = half.encode(&randn(&[1, 3, 16, 24], 13).clamp(-1f32, 1f32).unwrap()).unwrap();
    assert_eq!(z.dims(), &[1, 16, 2, 3]);
}

#[test]
fn bad_latent_statistics_files_are_clear_errors() {
    let vae = tiny_vae(14);
    let dir = tempfile::tempdir().unwrap();
    vae.save(dir.path()).unwrap();
    let cfg = dir.path().join("vae_config.json");
    std::fs::write(&cfg, "{ not json").unwrap();
    let err = WanVae::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("vae_config.json"), "{err}");
    std::fs::write(&cfg, r#"{"latents_mean": [0.0, 0.0, 0.0], "latents_std": [1.0, 1.0, 1.0]}"#).unwrap();
    let err = WanVae::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("16 entries"), "{err}");
    let std16 = vec!["0.0"; 16].join(",");
    std::fs::write(&cfg, format!(r#"{{"latents_mean": [{std16}], "latents_std": [{std16}]}}"#)).unwrap();
    let err = WanVae::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("positive"), "{err}");
}

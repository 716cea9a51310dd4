//! The tiny autoencoder (taew2_1 layout): streaming == parallel, frame counts, checkpoint layouts
//! and formats, and clear errors for bad inputs and bad checkpoints.

mod common;

use candle_core::{DType, Device, Tensor};
use common::bits;
use std::collections::HashMap;
use std::sync::Arc;
use storyreel_nn::checkpoint::{save_pth, save_safetensors};
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::taehv::{TinyVae, TinyVaeConfig, CONFIG_FILE};
use storyreel_nn::NnError;

fn vae() -> Arc<TinyVae> {
    Arc::new(TinyVae::random(7, DType::F32, &Device::Cpu).unwrap())
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.random_range(-1.0f32..1.0) * 1.7).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn latents(t: usize) -> Tensor {
    randn(&[t, 16, 4, 6], 11)
}

fn pixels(f: usize) -> Tensor {
    (randn(&[f, 3, 32, 48], 12) / 1.7).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Same values up to float summation order: chunked runs give the same per-frame convolutions,
/// but the GEMM underneath may sum long rows in a different order depending on how a call's
/// frames are spread over threads (a few ulps; bit-identical with one thread).
fn assert_close(a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims());
    let d = max_abs(&(a - b).unwrap());
    assert!(d <= 1e-5 * max_abs(b).max(1.0), "max |Δ| = {d}");
}

#[test]
fn parameter_counts_and_tensor_list() {
    let v = TinyVae::random(1, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(v.param_count(), 11_315_539);
    let shapes = v.tensor_shapes();
    let (enc, dec): (Vec<_>, Vec<_>) = shapes.iter().partition(|(n, _)| n.starts_with("encoder."));
    assert_eq!(enc.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(), 1_470_928);
    assert_eq!(dec.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(), 9_844_611);
    let find = |name: &str| shapes.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone());
    assert_eq!(find("decoder.3.conv.0.weight"), Some(vec![256, 512, 3, 3]));
    assert_eq!(find("decoder.7.conv.weight"), Some(vec![256, 256, 1, 1]));
    assert_eq!(find("decoder.22.bias"), Some(vec![3]));
    assert_eq!(find("encoder.2.conv.weight"), Some(vec![64, 128, 1, 1]));
    assert_eq!(find("encoder.12.conv.weight"), Some(vec![64, 64, 1, 1]));
    assert_eq!(find("encoder.17.weight"), Some(vec![16, 64, 3, 3]));
    // What the model holds is exactly what it lists.
    let held: Vec<(String, Vec<usize>)> =
        v.tensors().unwrap().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
    let mut listed = shapes.clone();
    listed.sort();
    assert_eq!(held, listed);
    let d = v.without_encoder();
    assert!(!d.has_encoder());
    assert_eq!(d.param_count(), 9_844_611);
}

#[test]
fn decoder_stream_equals_parallel_for_any_push_sizes() {
    let v = vae();
    let z = latents(6);
    let parallel = v.decode_video(&z, true).unwrap();
    assert_eq!(parallel.dims(), [21, 3, 32, 48]);
    // Random weights must still leave most values inside the clamp, or equality is trivial.
    let inside = parallel.abs().unwrap().lt(0.999f32).unwrap().to_dtype(DType::F32).unwrap().mean_all().unwrap();
    assert!(inside.to_scalar::<f32>().unwrap() > 0.5);

    let mut s = v.clone().decode_stream();
    let mut parts = Vec::new();
    let mut start = 0;
    for (n, frames) in [(1, 1), (3, 12), (2, 8)] {
        let out = s.push(&z.narrow(0, start, n).unwrap()).unwrap();
        assert_eq!(out.dims(), [frames, 3, 32, 48]);
        parts.push(out);
        start += n;
        assert_eq!(s.latents_seen(), start);
    }
    assert!(s.cache_bytes() > 0);
    let streamed = Tensor::cat(&parts, 0).unwrap();
    assert_close(&streamed, &parallel);
    // The raw (untrimmed, unclamped) outputs agree too.
    let a = v.decode_raw(&z, true).unwrap();
    let b = v.decode_raw(&z, false).unwrap();
    assert_eq!(a.dims(), [24, 3, 32, 48]);
    assert_close(&a, &b);
    // The trait's whole-clip decode is the same stream.
    assert_eq!(bits(&v.clone().decode(&z).unwrap()), bits(&parallel));
}

#[test]
fn encoder_stream_equals_parallel() {
    let v = vae();
    let x = pixels(9);
    let parallel = v.encode_video(&x, true).unwrap();
    assert_eq!(parallel.dims(), [3, 16, 4, 6]);
    let mut s = v.encode_stream().unwrap();
    let mut parts = Vec::new();
    let mut start = 0;
    for (n, latents) in [(1, 0), (4, 1), (3, 1), (1, 0)] {
        let out = s.push(&x.narrow(0, start, n).unwrap()).unwrap();
        assert_eq!(out.dim(0).unwrap(), latents, "after {} frames", start + n);
        parts.push(out);
        start += n;
    }
    assert_eq!(s.frames_seen(), 9);
    let tail = s.finish().unwrap();
    assert_eq!(tail.dim(0).unwrap(), 1);
    parts.push(tail);
    assert_close(&Tensor::cat(&parts, 0).unwrap(), &parallel);
    assert_close(&v.encode(&x).unwrap(), &parallel);
}

#[test]
fn encode_then_decode_frame_counts() {
    let v = vae();
    for (f, t) in [(1, 1), (5, 2), (9, 3)] {
        let z = v.encode(&pixels(f)).unwrap();
        assert_eq!(z.dims(), [t, 16, 4, 6], "{f} frames");
        let y = v.clone().decode(&z).unwrap();
        assert_eq!(y.dims(), [f, 3, 32, 48], "{f} frames");
        assert!(max_abs(&y) <= 1.0);
    }
    // A single frame is padded to 4 copies of itself; 4k + 1 frames with 3 copies of the last.
    let one = pixels(1);
    let four = one.repeat((4, 1, 1, 1)).unwrap();
    assert_eq!(bits(&v.encode(&one).unwrap()), bits(&v.encode_video(&four, true).unwrap()));
    let five = pixels(5);
    let padded = Tensor::cat(&[five.clone(), five.narrow(0, 4, 1).unwrap().repeat((3, 1, 1, 1)).unwrap()], 0).unwrap();
    assert_eq!(bits(&v.encode(&five).unwrap()), bits(&v.encode_video(&padded, true).unwrap()));
    // Per-frame encoding (the context path) gives one latent per frame.
    assert_eq!(v.encode_frames(&pixels(3)).unwrap().dims(), [3, 16, 4, 6]);
}

#[test]
fn pth_and_safetensors_load_to_identical_outputs() {
    let v = vae();
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("taew2_1.safetensors");
    let pth = dir.path().join("taew2_1.pth");
    v.save(&st).unwrap();
    v.save(&pth).unwrap();
    let z = latents(2);
    let x = pixels(4);
    let want_d = v.decode_video(&z, false).unwrap();
    let want_e = v.encode(&x).unwrap();
    for path in [&st, &pth] {
        let w = TinyVae::load(path, DType::F32, &Device::Cpu).unwrap();
        assert!(w.has_encoder());
        assert_eq!(bits(&w.decode_video(&z, false).unwrap()), bits(&want_d), "{}", path.display());
        assert_eq!(bits(&w.encode(&x).unwrap()), bits(&want_e), "{}", path.display());
    }
    // f16 storage (as the released file has) loads and decodes close to f32.
    let half: Vec<(String, Tensor)> =
        v.tensors().unwrap().into_iter().map(|(n, t)| (n, t.to_dtype(DType::F16).unwrap())).collect();
    let p16 = dir.path().join("f16.pth");
    save_pth(&p16, &half, None).unwrap();
    let w = TinyVae::load(&p16, DType::F32, &Device::Cpu).unwrap();
    let d = max_abs(&(w.decode_video(&z, false).unwrap() - &want_d).unwrap());
    assert!(d < 0.05, "{d}");
}

#[test]
fn decoder_only_checkpoint_loads_and_refuses_to_encode() {
    let v = vae();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dec.safetensors");
    let dec: HashMap<String, Tensor> =
        v.tensors().unwrap().into_iter().filter(|(n, _)| n.starts_with("decoder.")).collect();
    save_safetensors(&path, &dec).unwrap();
    let d = Arc::new(TinyVae::load(&path, DType::F32, &Device::Cpu).unwrap());
    assert!(!d.has_encoder());
    let z = latents(2);
    assert_eq!(bits(&d.clone().decode(&z).unwrap()), bits(&v.clone().decode(&z).unwrap()));
    let err = d.encode(&pixels(1)).unwrap_err().to_string();
    assert!(err.contains("decoder") && err.contains("encode"), "{err}");
    assert!(d.encode_stream().is_err());
}

#[test]
fn oversized_tgrow_keeps_its_last_rows() {
    let v = vae();
    let mut t: HashMap<String, Tensor> = v.tensors().unwrap().into_iter().collect();
    let w = t["decoder.7.conv.weight"].clone();
    let extra = randn(&[256, 256, 1, 1], 5);
    t.insert("decoder.7.conv.weight".into(), Tensor::cat(&[extra, w], 0).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    save_safetensors(&path, &t).unwrap();
    let u = Arc::new(TinyVae::load(&path, DType::F32, &Device::Cpu).unwrap());
    let z = latents(2);
    assert_eq!(bits(&u.clone().decode(&z).unwrap()), bits(&v.clone().decode(&z).unwrap()));
}

fn broken_checkpoint(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> NnError {
    let mut t: HashMap<String, Tensor> = vae().tensors().unwrap().into_iter().collect();
    edit(&mut t);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    save_safetensors(&path, &t).unwrap();
    TinyVae::load(&path, DType::F32, &Device::Cpu).unwrap_err()
}

#[test]
fn checkpoint_errors_name_the_tensor() {
    let e = broken_checkpoint(|t| {
        t.insert("decoder.9.conv.2.weight".into(), Tensor::zeros((128, 64, 3, 3), DType::F32, &Device::Cpu).unwrap());
    });
    assert!(matches!(&e, NnError::ShapeMismatch { name, .. } if name == "decoder.9.conv.2.weight"), "{e}");
    assert!(e.to_string().contains("decoder.9.conv.2.weight") && e.to_string().contains("[128, 128, 3, 3]"), "{e}");

    let e = broken_checkpoint(|t| {
        t.remove("encoder.14.conv.4.bias");
    });
    assert!(matches!(&e, NnError::MissingTensor { name, .. } if name == "encoder.14.conv.4.bias"), "{e}");

    let e = broken_checkpoint(|t| {
        t.remove("decoder.1.weight");
    });
    assert!(e.to_string().contains("decoder.1.weight"), "{e}");

    let e = broken_checkpoint(|t| {
        t.insert("decoder.23.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    });
    assert!(matches!(&e, NnError::UnexpectedTensors { first, .. } if first == "decoder.23.weight"), "{e}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let v = vae();
    let msg = |r: storyreel_nn::Result<Tensor>| r.unwrap_err().to_string();

    let e = msg(v.clone().decode(&randn(&[2, 15, 4, 6], 1)));
    assert!(e.contains("16 channels") && e.contains("15"), "{e}");
    let e = msg(v.clone().decode(&Tensor::zeros((0, 16, 4, 6), DType::F32, &Device::Cpu).unwrap()));
    assert!(e.contains("no latent frames"), "{e}");
    let e = msg(v.clone().decode(&randn(&[16, 4, 6], 1)));
    assert!(e.contains("[T, 16, h, w]"), "{e}");

    // A stream keeps its latent grid.
    let mut s = v.clone().decode_stream();
    s.push(&latents(1)).unwrap();
    let e = s.push(&randn(&[1, 16, 4, 5], 1)).unwrap_err().to_string();
    assert!(e.contains("4×5") && e.contains("4×6"), "{e}");

    let e = msg(v.encode(&randn(&[1, 3, 30, 48], 1)));
    assert!(e.contains("30×48") && e.contains("multiple of 8"), "{e}");
    let e = msg(v.encode(&Tensor::zeros((0, 3, 32, 48), DType::F32, &Device::Cpu).unwrap()));
    assert!(e.contains("no pixel frames"), "{e}");
    let e = msg(v.encode(&randn(&[1, 4, 32, 48], 1)));
    assert!(e.contains("3 channels"), "{e}");
}

fn toy_shape() -> TinyVaeConfig {
    TinyVaeConfig {
        latent_channels: 8,
        decoder_widths: vec![24, 16, 16],
        time_upscale: vec![true, true],
        mem_blocks: 1,
        encoder_width: 16,
    }
}

/// A smaller shape (the toy VAE's 8 channels, ×4 space) streams like taew2_1, saves its shape
/// beside its weights, and a checkpoint of another shape is a named error.
#[test]
fn a_toy_shape_streams_saves_its_shape_and_checks_it() {
    let cfg = toy_shape();
    let v = Arc::new(TinyVae::random_with(&cfg, 3, DType::F32, &Device::Cpu).unwrap());
    assert_eq!((v.latent_channels(), v.spatial_scale()), (8, 4));
    let z = randn(&[4, 8, 4, 6], 9);
    let parallel = v.decode_video(&z, true).unwrap();
    assert_eq!(parallel.dims(), [13, 3, 16, 24]);
    let mut s = v.clone().decode_stream();
    let parts = [s.push(&z.narrow(0, 0, 1).unwrap()).unwrap(), s.push(&z.narrow(0, 1, 3).unwrap()).unwrap()];
    assert_close(&Tensor::cat(&parts, 0).unwrap(), &parallel);
    assert_eq!(v.encode(&(randn(&[5, 3, 16, 24], 2) / 1.7).unwrap()).unwrap().dims(), [2, 8, 4, 6]);
    let e = v.clone().decode(&latents(1)).unwrap_err().to_string();
    assert!(e.contains("8 channels") && e.contains("16"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny_vae.safetensors");
    v.save(&path).unwrap();
    assert!(dir.path().join(CONFIG_FILE).is_file());
    assert_eq!(TinyVae::config_beside(&path).unwrap(), cfg);
    let back = Arc::new(TinyVae::load(&path, DType::F32, &Device::Cpu).unwrap());
    assert_eq!(bits(&back.decode(&z).unwrap()), bits(&parallel));

    // The same weights read as taew2_1 (no shape file) name the first tensor that differs.
    std::fs::remove_file(dir.path().join(CONFIG_FILE)).unwrap();
    let e = TinyVae::load(&path, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("decoder.1.weight"), "{e}");
    // A broken shape file is named.
    std::fs::write(dir.path().join(CONFIG_FILE), "{\"latent_channels\": 8}").unwrap();
    let e = TinyVae::load(&path, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains(CONFIG_FILE), "{e}");
    let mut odd = cfg;
    odd.time_upscale = vec![false, true];
    std::fs::write(dir.path().join(CONFIG_FILE), serde_json::to_string(&odd).unwrap()).unwrap();
    let e = TinyVae::load(&path, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("2×") && e.contains("4×"), "{e}");
}

#[test]
fn save_rejects_unknown_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let e = vae().save(&dir.path().join("x.onnx")).unwrap_err().to_string();
    assert!(e.contains(".safetensors"), "{e}");
}

/// Half-precision weights (the non-f32 paths, as on CUDA) follow f32, for decode and encode.
#[test]
fn half_precision_follows_f32() {
    let v32 = vae();
    let t: HashMap<String, Tensor> = v32.tensors().unwrap().into_iter().collect();
    let z = randn(&[2, 16, 2, 3], 3);
    let x = (randn(&[5, 3, 16, 24], 4) / 1.7).unwrap();
    let (a, za) = (v32.clone().decode(&z).unwrap(), v32.encode(&x).unwrap());
    for dtype in [DType::F16, DType::BF16] {
        let v = Arc::new(TinyVae::from_tensors(v32.config(), &t, dtype, &Device::Cpu).unwrap());
        let b = v.clone().decode(&z).unwrap();
        assert_eq!(b.dtype(), DType::F32);
        let d = max_abs(&(&a - b).unwrap());
        assert!(d < 0.1, "{dtype:?} decode: {d}");
        let zb = v.encode(&x).unwrap();
        assert_eq!(zb.dtype(), DType::F32);
        let d = max_abs(&(&za - zb).unwrap()) / max_abs(&za);
        assert!(d < 0.1, "{dtype:?} encode: {d}");
    }
}

/// Against the reference implementation (madebyollin/taehv `taehv.py`) on seeded random weights.
/// Needs the files its script writes, so it runs by hand:
/// `TAEHV_PARITY_DIR=/path/to/out cargo test --release -p storyreel-nn --test taehv -- --ignored --nocapture`
#[test]
#[ignore = "needs reference outputs: set TAEHV_PARITY_DIR"]
fn parity_with_reference() {
    let dir = std::path::PathBuf::from(std::env::var("TAEHV_PARITY_DIR").expect("set TAEHV_PARITY_DIR"));
    let io = storyreel_nn::checkpoint::TensorFiles::open(&dir.join("io.safetensors")).unwrap();
    let get = |n: &str| io.load(n, DType::F32, &Device::Cpu).unwrap();
    let signed = |t: Tensor| t.affine(2.0, -1.0).unwrap();
    let rel = |name: &str, ours: &Tensor, reference: &Tensor| {
        assert_eq!(ours.dims(), reference.dims(), "{name}");
        let d = max_abs(&(ours - reference).unwrap()) / max_abs(reference);
        println!("{name:44} max|Δ|/max|ref| = {d:.2e}");
        assert!(d <= 1e-4, "{name}: {d}");
    };
    let (z, x) = (get("latents"), signed(get("frames")));
    for file in ["taew2_1.pth", "taew2_1.safetensors", "taew2_1_big.pth"] {
        let v = Arc::new(TinyVae::load(&dir.join(file), DType::F32, &Device::Cpu).unwrap());
        rel(&format!("{file}: decoder raw, parallel"), &v.decode_raw(&z, true).unwrap(), &get("dec_raw_parallel"));
        rel(
            &format!("{file}: decoder raw, one latent at a time"),
            &v.decode_raw(&z, false).unwrap(),
            &get("dec_raw_sequential"),
        );
        rel(
            &format!("{file}: decode_video parallel"),
            &v.decode_video(&z, true).unwrap(),
            &signed(get("dec_parallel")),
        );
        let mut s = v.clone().decode_stream();
        let a = s.push(&z.narrow(0, 0, 2).unwrap()).unwrap();
        let b = s.push(&z.narrow(0, 2, 1).unwrap()).unwrap();
        rel(
            &format!("{file}: stream (2 + 1 latents)"),
            &Tensor::cat(&[a, b], 0).unwrap(),
            &signed(get("dec_streaming")),
        );
        rel(&format!("{file}: encode_video parallel"), &v.encode_video(&x, true).unwrap(), &get("enc_parallel"));
        rel(&format!("{file}: encode (streaming)"), &v.encode(&x).unwrap(), &get("enc_streaming"));
        rel(&format!("{file}: encode one frame"), &v.encode(&x.narrow(0, 0, 1).unwrap()).unwrap(), &get("enc_single"));
        // For the reverse check: the reference loads what we save.
        v.save(&dir.join(format!("saved_by_storyreel_from_{file}.pth"))).unwrap();
    }
}

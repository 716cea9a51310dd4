//! `storyreel decode`, `encode-frames` and `generate-latents --decode` end to end.

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};

fn storyreel(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_storyreel")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A random model folder with a small VAE, and one generated shot decoded to MP4 on the way.
fn generated(dir: &Path) {
    let (ok, err) = storyreel(&["testcase", "--out", p(dir), "--chunks", "2", "--latent", "4x6", "--shot", "1"]);
    assert!(ok, "{err}");
    let (ok, err) = storyreel(&[
        "generate-latents",
        "--model",
        p(&dir.join("model")),
        "--inputs",
        p(&dir.join("inputs.safetensors")),
        "--out",
        p(&dir.join("latents.safetensors")),
        "--decode",
        p(&dir.join("shot.mp4")),
    ]);
    assert!(ok, "{err}");
}

fn ffprobe(path: &Path) -> Option<String> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries"])
        .args(["stream=codec_name,width,height,r_frame_rate,nb_read_frames", "-of", "csv=p=0", p(path)])
        .output()
        .ok()?;
    assert!(out.stderr.is_empty(), "ffprobe warnings: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn decode_writes_every_output_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generated(dir);
    let model = dir.join("model");
    let latents = dir.join("latents.safetensors");
    for out in ["again.mp4", "sheet.png", "preview.gif", "frames.safetensors", "pngs"] {
        let (ok, err) = storyreel(&["decode", p(&latents), "--model", p(&model), "-o", p(&dir.join(out))]);
        assert!(ok, "{out}: {err}");
    }
    // 6 latent frames → 1 + 4·5 = 21 frames of 32×48.
    let frames = candle_core::safetensors::load(dir.join("frames.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(frames["frames"].dims(), &[21, 3, 32, 48]);
    assert_eq!(std::fs::read_dir(dir.join("pngs")).unwrap().count(), 21);
    let (info, decoded) = storyreel_media::read_mp4(dir.join("shot.mp4")).unwrap();
    assert_eq!((decoded.len(), info.width, info.height, info.fps), (21, 48, 32, 16.0));
    // The MP4 decoded while generating equals the one decoded afterwards.
    let (_, again) = storyreel_media::read_mp4(dir.join("again.mp4")).unwrap();
    assert!(decoded.iter().zip(&again).all(|(a, b)| a.data == b.data));
    match ffprobe(&dir.join("shot.mp4")) {
        Some(line) => assert_eq!(line, "h264,48,32,16/1,21"),
        None if std::env::var("STORYREEL_REQUIRE_FFPROBE").is_ok() => panic!("ffprobe is required but missing"),
        None => eprintln!("note: ffprobe not found; skipping the ffprobe check"),
    }
}

#[test]
fn encode_frames_round_trips_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generated(dir);
    let model = dir.join("model");
    let (ok, err) = storyreel(&[
        "decode",
        p(&dir.join("latents.safetensors")),
        "--model",
        p(&model),
        "-o",
        p(&dir.join("frames.safetensors")),
    ]);
    assert!(ok, "{err}");
    let (ok, err) = storyreel(&[
        "encode-frames",
        p(&dir.join("frames.safetensors")),
        "--model",
        p(&model),
        "-o",
        p(&dir.join("z.safetensors")),
    ]);
    assert!(ok, "{err}");
    let z = candle_core::safetensors::load(dir.join("z.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(z["latents"].dims(), &[6, 16, 4, 6]);
    // A single frame encodes to a single latent frame.
    let one = Tensor::zeros((1, 3, 32, 48), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("frames".to_string(), one)].into_iter().collect(), dir.join("one.safetensors"))
        .unwrap();
    let (ok, err) = storyreel(&[
        "encode-frames",
        p(&dir.join("one.safetensors")),
        "--model",
        p(&model),
        "-o",
        p(&dir.join("z1.safetensors")),
    ]);
    assert!(ok, "{err}");
    let z1 = candle_core::safetensors::load(dir.join("z1.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(z1["latents"].dims(), &[1, 16, 4, 6]);
}

#[test]
fn bad_inputs_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    generated(dir);
    let model = dir.join("model");
    let latents = dir.join("latents.safetensors");
    let (ok, err) = storyreel(&["decode", p(&latents), "--model", p(&model), "-o", p(&dir.join("x.avi"))]);
    assert!(!ok && err.contains(".avi"), "{err}");
    let (ok, err) =
        storyreel(&["decode", p(&dir.join("none.safetensors")), "--model", p(&model), "-o", p(&dir.join("x.mp4"))]);
    assert!(!ok && err.contains("none.safetensors"), "{err}");
    let (ok, err) =
        storyreel(&["decode", p(&latents), "--model", p(&dir.join("nomodel")), "-o", p(&dir.join("x.mp4"))]);
    assert!(!ok && err.contains("nomodel"), "{err}");
    let (ok, err) =
        storyreel(&["decode", p(&latents), "--model", p(&model), "--decoder", "tiny", "-o", p(&dir.join("x.mp4"))]);
    assert!(!ok && err.contains("tiny decoder"), "{err}");
    // Wrong channel count.
    let bad = Tensor::zeros((2, 15, 4, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("latents".to_string(), bad)].into_iter().collect(), dir.join("bad.safetensors"))
        .unwrap();
    let (ok, err) =
        storyreel(&["decode", p(&dir.join("bad.safetensors")), "--model", p(&model), "-o", p(&dir.join("b.mp4"))]);
    assert!(!ok && err.contains("15"), "{err}");
    assert!(!dir.join("b.mp4").exists(), "no partial file is left behind");
    // Odd frame size for the encoder.
    let odd = Tensor::zeros((1, 3, 30, 48), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("frames".to_string(), odd)].into_iter().collect(), dir.join("odd.safetensors"))
        .unwrap();
    let (ok, err) = storyreel(&[
        "encode-frames",
        p(&dir.join("odd.safetensors")),
        "--model",
        p(&model),
        "-o",
        p(&dir.join("z.safetensors")),
    ]);
    assert!(!ok && err.contains("multiple of 8"), "{err}");
}

#[test]
fn bench_flags_are_checked_before_any_work() {
    let (ok, err) = storyreel(&["bench", "vae", "--size", "30x30"]);
    assert!(!ok && err.contains("multiple of 8"), "{err}");
    let (ok, err) = storyreel(&["bench", "vae", "--size", "64x64", "--latents", "0"]);
    assert!(!ok && err.contains("--latents"), "{err}");
    let (ok, err) = storyreel(&["bench", "text", "--tokens", "0"]);
    assert!(!ok && err.contains("--tokens"), "{err}");
    let (ok, err) = storyreel(&["decode", "x.safetensors", "--model", "m", "-o", "o.mp4", "--chunk", "0"]);
    assert!(!ok && err.contains("--chunk"), "{err}");
}

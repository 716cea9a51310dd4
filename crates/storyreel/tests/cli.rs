//! The `storyreel` binary end to end on tiny random checkpoints written by the tests.

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};

fn storyreel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_storyreel")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn testcase(dir: &Path, layout: &str, format: &str, shot: &str) {
    let (ok, _, err) = storyreel(&[
        "testcase",
        "--out",
        dir.to_str().unwrap(),
        "--layout",
        layout,
        "--format",
        format,
        "--shot",
        shot,
        "--chunks",
        "3",
        "--latent",
        "4x6",
        "--seed",
        "3",
    ]);
    assert!(ok, "{err}");
}

fn generate(dir: &Path, inputs: &Path, out: &Path) -> Tensor {
    let (ok, _, err) = storyreel(&[
        "generate-latents",
        "--model",
        dir.join("model").to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    candle_core::safetensors::load(out, &Device::Cpu).unwrap().remove("latents").unwrap()
}

#[test]
fn all_layouts_and_formats_give_identical_latents() {
    let tmp = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for (layout, format) in [
        ("wan", "safetensors"),
        ("wan", "pt"),
        ("shotstream", "pt"),
        ("shotstream", "safetensors"),
        ("diffusers", "safetensors"),
    ] {
        let dir = tmp.path().join(format!("{layout}-{format}"));
        testcase(&dir, layout, format, "2");
        // Every case reads the inputs of the first one, so only the weights' files differ.
        let inputs = tmp.path().join("wan-safetensors/inputs.safetensors");
        let lat = generate(&dir, &inputs, &dir.join("out.safetensors"));
        assert_eq!(lat.dims(), &[9, 16, 4, 6]);
        outputs.push((format!("{layout}/{format}"), lat));
    }
    let (_, first) = &outputs[0];
    for (name, lat) in &outputs[1..] {
        let d = (lat - first).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{name} differs by {d}");
    }
    let (ok, out, _) = storyreel(&["inspect", tmp.path().join("diffusers-safetensors/model").to_str().unwrap()]);
    assert!(ok);
    assert!(out.to_lowercase().contains("diffusers"), "{out}");
}

#[test]
fn first_and_later_shots_run_and_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("first");
    let b = tmp.path().join("later");
    testcase(&a, "wan", "safetensors", "0");
    testcase(&b, "wan", "safetensors", "2");
    let la = generate(&a, &a.join("inputs.safetensors"), &a.join("out.safetensors"));
    let lb = generate(&b, &b.join("inputs.safetensors"), &b.join("out.safetensors"));
    let m = la.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(m.is_finite() && m > 0.0);
    let d = (la - lb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d > 1e-4);
}

#[test]
fn bad_inputs_and_checkpoints_are_reported_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("case");
    testcase(&dir, "wan", "safetensors", "1");
    let model = dir.join("model");
    let out = tmp.path().join("out.safetensors");
    let run = |inputs: &Path, model: &Path| {
        storyreel(&[
            "generate-latents",
            "--model",
            model.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // Inputs missing a tensor.
    let mut map = candle_core::safetensors::load(dir.join("inputs.safetensors"), &Device::Cpu).unwrap();
    map.remove("noise");
    let partial = tmp.path().join("partial.safetensors");
    candle_core::safetensors::save(&map, &partial).unwrap();
    let (ok, _, err) = run(&partial, &model);
    assert!(!ok && err.contains("noise"), "{err}");
    // Not a safetensors file.
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not tensors").unwrap();
    let (ok, _, err) = run(&junk, &model);
    assert!(!ok && err.contains("junk.safetensors"), "{err}");
    // A truncated weights file.
    let weights = model.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = run(&dir.join("inputs.safetensors"), &model);
    assert!(!ok && err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    // A missing model folder and a wrong number of noise steps.
    let (ok, _, err) = run(&dir.join("inputs.safetensors"), &tmp.path().join("nope"));
    assert!(!ok && err.contains("does not exist"), "{err}");
    std::fs::write(&weights, &bytes).unwrap();
    let mut map = candle_core::safetensors::load(dir.join("inputs.safetensors"), &Device::Cpu).unwrap();
    let noise = map.remove("noise").unwrap().narrow(1, 0, 3).unwrap();
    map.insert("noise".into(), noise);
    let three = tmp.path().join("three.safetensors");
    candle_core::safetensors::save(&map, &three).unwrap();
    let (ok, _, err) = run(&three, &model);
    assert!(!ok && err.contains("3 steps"), "{err}");
    // Unknown flag values.
    let (ok, _, err) = storyreel(&["bench", "matmul", "--dtype", "f8"]);
    assert!(!ok && err.contains("f8"), "{err}");
    let (ok, _, err) = storyreel(&["inspect", "/nonexistent/file.pt"]);
    assert!(!ok && err.contains("/nonexistent/file.pt"), "{err}");
}

#[test]
fn bench_teacher_step_fused_kernels_match_candle_ops() {
    let run = |extra: &[&str]| {
        let mut args =
            vec!["bench", "teacher-step", "--latent", "4x4", "--target-frames", "2", "--iters", "1", "--warmup", "0"];
        args.extend_from_slice(extra);
        args.push("--json");
        let (ok, out, err) = storyreel(&args);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let fused = run(&[]);
    let plain = run(&["--plain-ops"]);
    assert_eq!(fused["kernels"], "fused training kernels");
    assert_eq!(plain["kernels"], "candle ops");
    assert_eq!(fused["tokens"], 32);
    // One latent pixel per token: four times the tokens of the same latents.
    assert_eq!(run(&["--patch", "1"])["tokens"], 128);
    for key in ["loss", "grad_norm"] {
        let (a, b) = (fused[key].as_f64().unwrap(), plain[key].as_f64().unwrap());
        assert!(a > 0.0 && (a - b).abs() <= 1e-4 * b, "{key}: fused {a} against candle's {b}");
    }
    for key in ["forward_ms", "backward_ms", "step_ms"] {
        assert!(fused[key].as_f64().unwrap() > 0.0, "{key}");
    }
    for (bad, named) in [
        (&["--target-frames", "0"][..], "--target-frames"),
        (&["--channels", "0"][..], "--channels"),
        (&["--channels", "100000"][..], "--channels"),
        (&["--latent", "512x512"][..], "8192"),
        (&["--latent", "3x5"][..], "not a multiple of --patch 2"),
        (&["--latent", "abc"][..], "--latent"),
        (&["--patch", "0"][..], "--patch"),
        (&["--patch", "3"][..], "--patch 3"),
    ] {
        let mut args = vec!["bench", "teacher-step", "--iters", "1", "--warmup", "0"];
        args.extend_from_slice(bad);
        let (ok, _, err) = storyreel(&args);
        assert!(!ok && err.contains(named), "{bad:?}: {err}");
    }
}

#[test]
fn bench_prints_machine_readable_json() {
    let (ok, out, err) = storyreel(&["bench", "matmul", "--n", "64", "--iters", "2", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["gflops"].as_f64().unwrap() > 0.0);
    let (ok, out, err) = storyreel(&[
        "bench",
        "dit",
        "--dim",
        "64",
        "--layers",
        "1",
        "--heads",
        "2",
        "--ffn-dim",
        "64",
        "--text-dim",
        "16",
        "--text-len",
        "8",
        "--latent",
        "4x6",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in ["gflops", "ms_per_chunk", "tokens_per_s", "peak_rss_mb"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}");
    }
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    use std::process::Stdio;
    // `storyreel … | head -1`: the pipe closes after the first read; the CLI must stop without
    // a panic and its backtrace.
    let mut child = Command::new(env!("CARGO_BIN_EXE_storyreel"))
        .args(["train", "default-config", "dmd-long"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

//! `storyreel encode-text` end to end with a toy text encoder written by the test.

use std::path::Path;
use std::process::Command;

use candle_core::Device;
use storyreel_nn::text::toy::{ToyTextConfig, ToyTextEncoder, ToyTokenizer};

fn storyreel(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_storyreel")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn encode_text_writes_embeddings_and_caches_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("toy");
    let tok = ToyTokenizer::from_texts(["a red fox walks in the snow", "shot1: the same fox at night"]).unwrap();
    let cfg = ToyTextConfig { dim: 16, text_len: 12, layers: 1, heads: 2, ffn_dim: 32 };
    ToyTextEncoder::random(cfg, tok, 7, &Device::Cpu).unwrap().save(&model).unwrap();
    let cache = tmp.path().join("cache");
    let run = |out: &str| {
        storyreel(&[
            "encode-text",
            "A red fox walks in the snow. shot1: the same fox",
            "--model",
            p(&model),
            "-o",
            p(&tmp.path().join(out)),
            "--cache-dir",
            p(&cache),
        ])
    };
    let (ok, err) = run("a.safetensors");
    assert!(ok && err.contains("encoded"), "{err}");
    let (ok, err) = run("b.safetensors");
    assert!(ok && err.contains("from the cache"), "{err}");
    let a = candle_core::safetensors::load(tmp.path().join("a.safetensors"), &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(tmp.path().join("b.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(a["embeddings"].dims(), &[12, 16]);
    assert_eq!(a["length"].to_vec1::<i64>().unwrap(), [12]);
    let d = (&a["embeddings"] - &b["embeddings"]).unwrap().abs().unwrap().sum_all().unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    assert!(err.contains("12 real tokens"), "{err}");

    let (ok, err) = storyreel(&[
        "encode-text",
        "a purple fox",
        "--model",
        p(&model),
        "-o",
        p(&tmp.path().join("c.safetensors")),
        "--no-cache",
    ]);
    assert!(!ok && err.contains("\"purple\""), "{err}");
    let (ok, err) = storyreel(&[
        "encode-text",
        "x",
        "--model",
        p(&tmp.path().join("none")),
        "-o",
        p(&tmp.path().join("d.safetensors")),
    ]);
    assert!(!ok && err.contains("does not exist"), "{err}");
}

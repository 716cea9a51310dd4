//! `storyreel train vae` from the command line: a tiny run writes a model folder; bad configs
//! and unknown stages are clear errors.

use std::process::Command;

fn storyreel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_storyreel")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn tiny_vae_run_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "[vae]\nz_dim = 4\nbase_dim = 4\n[data]\nwidth = 32\nheight = 32\n[held_out]\nclips = 1\nevery = 2\n\
         [train]\nprogress = false\ncheckpoint_every = 0\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let (ok, stdout, err) =
        storyreel(&["train", "vae", "--config", cfg.to_str().unwrap(), "--steps", "2", "--out", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["steps"], 2);
    assert!(out.join("model/vae.safetensors").is_file() && out.join("model/vae_config.json").is_file());
    assert!(out.join("train.jsonl").is_file());

    std::fs::write(&cfg, "[vae]\nz_dimm = 4\n").unwrap();
    let (ok, _, err) = storyreel(&["train", "vae", "--config", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("tiny.toml") && err.contains("z_dimm"), "{err}");
    let (ok, _, err) = storyreel(&["train", "default-config", "teacherx"]);
    assert!(!ok && err.contains("teacherx"), "{err}");
}

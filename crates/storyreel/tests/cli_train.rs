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

/// `train tiny-decoder` on the shipped toy VAE: a short run writes a decoder `generate
/// --decoder tiny` can load; a shape that does not read the VAE is named.
#[test]
fn tiny_decoder_run_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let vae = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/models/toy-student/vae");
    let student = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/models/toy-student");
    let cfg = dir.path().join("tiny.toml");
    let body = |channels: usize| {
        format!(
            "vae = \"{vae}\"\npool_clips = 2\n[shape]\nlatent_channels = {channels}\ndecoder_widths = [8, 8, 8]\n\
             time_upscale = [true, true]\nmem_blocks = 1\nencoder_width = 8\n[data]\nclip_frames = 5\n\
             [held_out]\nclips = 1\nevery = 2\n[train]\nprogress = false\ncheckpoint_every = 0\naccumulate = 1\n\
             [student]\nmodel = \"{student}\"\nstories = 1\nheld_out_stories = 1\n"
        )
    };
    std::fs::write(&cfg, body(8)).unwrap();
    let out = dir.path().join("run");
    let args =
        ["train", "tiny-decoder", "--config", cfg.to_str().unwrap(), "--steps", "2", "--out", out.to_str().unwrap()];
    let (ok, stdout, err) = storyreel(&args);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["steps"], 2);
    assert!(report["held_out"]["psnr_pixels"].as_f64().unwrap() > 0.0);
    // Whole shots (17 frames at least) score 5 latent positions or more; the student's shots
    // joined the pool and are scored on their own.
    assert!(report["held_out"]["psnr_by_latent"].as_array().unwrap().len() >= 5, "{stdout}");
    assert!(report["student_pairs"].as_u64().unwrap() >= 2, "{stdout}");
    assert!(report["held_out"]["student_psnr_to_vae"].as_f64().unwrap() > 0.0, "{stdout}");
    assert!(out.join("model/tiny_vae.safetensors").is_file() && out.join("model/tiny_vae_config.json").is_file());

    // The decoder decodes latents from the command line.
    let latents = dir.path().join("z.safetensors");
    let z = candle_core::Tensor::zeros((2, 8, 16, 16), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    z.save_safetensors("latents", &latents).unwrap();
    let video = dir.path().join("x.png");
    let (ok, _, err) = storyreel(&[
        "decode",
        latents.to_str().unwrap(),
        "--model",
        out.join("model").to_str().unwrap(),
        "--decoder",
        "tiny",
        "-o",
        video.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");

    // Ground truth through the VAE's encoder and the tiny decoder (a reference row for eval).
    let world = dir.path().join("world");
    let (ok, _, err) =
        storyreel(&["world", "generate", "--stories", "1", "--out", world.to_str().unwrap(), "--no-videos"]);
    assert!(ok, "{err}");
    let story = std::fs::read_dir(world.join("stories")).unwrap().next().unwrap().unwrap().path();
    let through = dir.path().join("through.mp4");
    let render_with = |tiny: &std::path::Path| {
        storyreel(&[
            "world",
            "render",
            "--story",
            story.to_str().unwrap(),
            "--out",
            through.to_str().unwrap(),
            "--vae",
            vae,
            "--tiny-decoder",
            tiny.to_str().unwrap(),
        ])
    };
    let (ok, _, err) = render_with(&out.join("model"));
    assert!(ok && through.is_file(), "{err}");
    // A tiny decoder that is not there, or one for another latent space, is named.
    let missing = dir.path().join("no-such-decoder");
    let (ok, _, err) = render_with(&missing);
    assert!(!ok && err.contains("no-such-decoder"), "{err}");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let shape = serde_json::json!({"latent_channels": 16, "decoder_widths": [8, 8, 8],
        "time_upscale": [true, true], "mem_blocks": 1, "encoder_width": 8});
    std::fs::write(other.join("tiny_vae_config.json"), shape.to_string()).unwrap();
    let cfg16: storyreel_nn::taehv::TinyVaeConfig = serde_json::from_value(shape).unwrap();
    storyreel_nn::taehv::TinyVae::random_with(&cfg16, 1, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap()
        .without_encoder()
        .save(&other.join("tiny_vae.safetensors"))
        .unwrap();
    let (ok, _, err) = render_with(&other);
    assert!(!ok && err.contains("16 channels") && err.contains("makes 8"), "{err}");

    std::fs::write(&cfg, body(16)).unwrap();
    let (ok, _, err) = storyreel(&args);
    assert!(!ok && err.contains("16 latent channels") && err.contains("8 channels"), "{err}");
}

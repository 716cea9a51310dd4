//! Stage `vae` end to end at a tiny size: trains, scores held-out PSNR, writes a model folder
//! that loads as a VAE, resumes exactly where it stopped, and reads its config from JSON or TOML.

use candle_core::{DType, Device};
use storyreel_nn::vae::WanVae;
use storyreel_train::stage_vae::{run_vae_stage, ToyVaeShape, VaeStageConfig};

fn tiny(out: &std::path::Path, steps: u64) -> VaeStageConfig {
    let mut cfg = VaeStageConfig {
        vae: ToyVaeShape { z_dim: 4, base_dim: 4, ..ToyVaeShape::default() },
        steps,
        ..VaeStageConfig::default()
    };
    cfg.data.width = 32;
    cfg.data.height = 32;
    cfg.held_out.clips = 2;
    cfg.held_out.every = 3;
    cfg.train.out_dir = out.to_path_buf();
    cfg.train.checkpoint_every = 3;
    cfg.train.progress = false;
    cfg.train.schedule.warmup_steps = 2;
    cfg
}

#[test]
fn trains_writes_a_loadable_model_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let report = run_vae_stage(&tiny(dir.path(), 6)).unwrap();
    assert_eq!(report.steps, 6);
    assert_eq!(report.psnr_curve.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 6]);
    assert!(report.held_out_psnr.is_finite() && report.held_out_psnr > 0.0);
    let vae = WanVae::load(&report.model_dir, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.config().z_dim, 4);
    assert!(vae.config().latents_std.iter().all(|s| *s > 0.0), "latent statistics were measured");
    assert!(report.model_dir.join("training.json").is_file());

    // A run interrupted after its step-3 checkpoint resumes there and ends with the same model.
    let first = std::fs::read(report.model_dir.join("vae.safetensors")).unwrap();
    std::fs::remove_dir_all(dir.path().join("checkpoints/step-6")).unwrap();
    std::fs::remove_dir_all(&report.model_dir).unwrap();
    let resumed = run_vae_stage(&tiny(dir.path(), 6)).unwrap();
    assert_eq!(resumed.steps, 6);
    assert_eq!(resumed.psnr_curve.iter().map(|p| p.0).collect::<Vec<_>>(), [6]);
    assert_eq!(std::fs::read(resumed.model_dir.join("vae.safetensors")).unwrap(), first, "resume is not exact");
    let log = std::fs::read_to_string(dir.path().join("train.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6, "{log}");
    let scores = std::fs::read_to_string(dir.path().join("held_out.jsonl")).unwrap();
    assert_eq!(scores.lines().count(), 2, "held-out scores at steps 3 and 6 once each: {scores}");

    // A changed recipe does not silently continue an old run: neither the trainer's settings
    // nor the stage's own (the data, the loss), which the error names.
    let err = run_vae_stage(&tiny(dir.path(), 8)).unwrap_err().to_string();
    assert!(err.contains("config hash"), "{err}");
    let mut cropped = tiny(dir.path(), 6);
    cropped.data.crop = Some(16);
    let err = run_vae_stage(&cropped).unwrap_err().to_string();
    assert!(err.contains("data.crop: null → 16"), "{err}");
    let mut heavier = tiny(dir.path(), 6);
    heavier.kl_weight *= 2.0;
    let err = run_vae_stage(&heavier).unwrap_err().to_string();
    assert!(err.contains("kl_weight"), "{err}");
    // Scoring is not part of the recipe: a resume may change it.
    let mut scored = tiny(dir.path(), 6);
    scored.held_out.clips = 1;
    assert_eq!(run_vae_stage(&scored).unwrap().steps, 6);
}

/// On whole shots (17–33 frames, so every latent position a shot has) the stage trains and
/// scores clips of the shots' own lengths.
#[test]
fn trains_on_whole_shots() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(dir.path(), 2);
    cfg.data.whole_shots = true;
    cfg.train.checkpoint_every = 0;
    let report = run_vae_stage(&cfg).unwrap();
    assert_eq!(report.steps, 2);
    assert!(report.held_out_psnr.is_finite() && report.held_out_psnr > 0.0);
    let log = std::fs::read_to_string(dir.path().join("train.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
}

/// Training on crops of whole shots: the stage trains on the windows, scores whole held-out
/// frames, and refuses a crop the VAE cannot run on or the frames cannot hold.
#[test]
fn trains_on_crops_of_whole_shots() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(dir.path(), 2);
    cfg.data.whole_shots = true;
    cfg.data.crop = Some(16);
    cfg.train.checkpoint_every = 0;
    let report = run_vae_stage(&cfg).unwrap();
    assert_eq!(report.steps, 2);
    assert!(report.held_out_psnr.is_finite() && report.held_out_psnr > 0.0);
    let vae = WanVae::load(&report.model_dir, DType::F32, &Device::Cpu).unwrap();
    let frames = candle_core::Tensor::zeros((5, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(vae.encode_clip(&frames).unwrap().dims(), [2, 4, 8, 8], "the model runs on whole frames");

    for bad in [0, 6, 48] {
        cfg.data.crop = Some(bad);
        let err = run_vae_stage(&cfg).unwrap_err().to_string();
        assert!(err.contains("data.crop"), "{bad}: {err}");
    }
}

#[test]
fn crops_are_aligned_inside_the_frame_and_fixed_by_the_index() {
    use storyreel_train::vae::random_crop;
    let (f, h, w) = (5, 24, 40);
    let values: Vec<f32> = (0..f * 3 * h * w).map(|i| i as f32).collect();
    let frames = candle_core::Tensor::from_vec(values, (f, 3, h, w), &Device::Cpu).unwrap();
    let mut corners = std::collections::BTreeSet::new();
    for index in 0..64 {
        let crop = random_crop(&frames, 16, 4, index).unwrap();
        assert_eq!(crop.dims(), [f, 3, 16, 16]);
        let again = random_crop(&frames, 16, 4, index).unwrap();
        let first = crop.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(first, again.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "the index fixes the window");
        // The window's top-left value tells where it is; every frame has the same window.
        let at = first[0] as usize;
        let (top, left) = (at / w, at % w);
        assert!(top % 4 == 0 && left % 4 == 0 && top + 16 <= h && left + 16 <= w, "{top},{left}");
        let last_frame = crop.get(f - 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as usize;
        assert_eq!(last_frame, (f - 1) * 3 * h * w + at);
        corners.insert((top, left));
    }
    assert!(corners.len() >= 8, "windows move from clip to clip: {corners:?}");
    assert!(random_crop(&frames, 28, 4, 0).is_err(), "taller than the frame");
    assert!(random_crop(&frames, 10, 4, 0).is_err(), "off the latent grid");
}

#[test]
fn configs_read_from_json_and_toml_and_reject_typos() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("vae.json");
    std::fs::write(&json, r#"{"steps": 10, "vae": {"z_dim": 4}, "train": {"accumulate": 2}}"#).unwrap();
    let cfg = VaeStageConfig::read(&json).unwrap();
    assert_eq!((cfg.steps, cfg.vae.z_dim, cfg.train.accumulate, cfg.vae.base_dim), (10, 4, 2, 16));
    let toml = dir.path().join("vae.toml");
    std::fs::write(&toml, "steps = 12\nkl_weight = 0.0\n[data]\nclip_frames = 9\n").unwrap();
    let cfg = VaeStageConfig::read(&toml).unwrap();
    assert_eq!((cfg.steps, cfg.data.clip_frames), (12, 9));
    cfg.validate().unwrap();
    std::fs::write(&toml, "stepz = 12\n").unwrap();
    let err = VaeStageConfig::read(&toml).unwrap_err().to_string();
    assert!(err.contains("vae.toml") && err.contains("stepz"), "{err}");
    let err = VaeStageConfig::read(&dir.path().join("missing.json")).unwrap_err().to_string();
    assert!(err.contains("missing.json"), "{err}");
    let bad = VaeStageConfig { steps: 0, ..VaeStageConfig::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("steps"));
}

#[test]
fn init_from_starts_from_a_trained_vae_of_the_same_shape() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_vae_stage(&tiny(&dir.path().join("a"), 2)).unwrap();
    let mut cfg = tiny(&dir.path().join("b"), 1);
    // A vanishing rate: one step cannot move a weight by more than ~1e-30.
    cfg.train.schedule.base_lr = 1e-30;
    cfg.train.schedule.min_lr = 0.0;
    cfg.init_from = Some(first.model_dir.clone());
    let second = run_vae_stage(&cfg).unwrap();
    let a = WanVae::load(&first.model_dir, DType::F32, &Device::Cpu).unwrap();
    let b = WanVae::load(&second.model_dir, DType::F32, &Device::Cpu).unwrap();
    for (name, t) in a.tensors() {
        let diff = (t - b.tensors().get(name).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-20, "{name} differs from the init_from weights");
    }

    // reset_logvar replaces only the posterior's log-variance bias.
    let mut reset = cfg.clone();
    reset.train.out_dir = dir.path().join("d");
    reset.reset_logvar = Some(-12.0);
    let third = run_vae_stage(&reset).unwrap();
    let c = WanVae::load(&third.model_dir, DType::F32, &Device::Cpu).unwrap();
    let bias = c.tensors()["conv1.bias"].to_vec1::<f32>().unwrap();
    let (z, old) = (bias.len() / 2, a.tensors()["conv1.bias"].to_vec1::<f32>().unwrap());
    assert_eq!(&bias[..z], &old[..z]);
    assert!(bias[z..].iter().all(|&v| (v + 12.0).abs() < 1e-6), "{bias:?}");
    reset.init_from = None;
    assert!(reset.validate().unwrap_err().to_string().contains("reset_logvar"));

    let mut wrong = tiny(&dir.path().join("c"), 1);
    wrong.vae.base_dim = 8;
    wrong.init_from = Some(first.model_dir.clone());
    let err = run_vae_stage(&wrong).unwrap_err().to_string();
    assert!(err.contains("init_from") && err.contains("needs"), "{err}");
}

/// A tiny random VAE's variables and the gradients of one loss on random frames.
fn tiny_vae_gradients(train_encoder: bool) -> (candle_nn::VarMap, candle_core::backprop::GradStore) {
    use storyreel_train::vae::{trainable_vae, vae_loss};
    let cfg = ToyVaeShape { z_dim: 4, base_dim: 4, ..ToyVaeShape::default() }.config();
    let varmap = candle_nn::VarMap::new();
    let vae = trainable_vae(&cfg, &varmap, 3, -10.0, &Device::Cpu).unwrap();
    let frames = candle_core::Tensor::randn(0f32, 0.5, (5, 3, 16, 16), &Device::Cpu).unwrap();
    let grads = vae_loss(&vae, &frames, 1e-3, 1, train_encoder).unwrap().total.backward().unwrap();
    (varmap, grads)
}

#[test]
fn every_vae_weight_receives_a_gradient() {
    // Regression: the middle block's attention once had no gradient to its queries and keys.
    let (varmap, grads) = tiny_vae_gradients(true);
    let mut dead: Vec<String> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, var)| {
            !grads
                .get(var.as_tensor())
                .map(|g| g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0)
                .unwrap_or(false)
        })
        .map(|(name, _)| name.clone())
        .collect();
    dead.sort();
    assert!(dead.is_empty(), "weights without a gradient: {dead:?}");
}

/// A decoder-only fine-tune (encoder and posterior conv frozen) leaves the latent space exactly
/// as it was, statistics included, so latents encoded before it still decode, while the decoder
/// moves.
#[test]
fn decoder_only_fine_tune_keeps_the_latent_space() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_vae_stage(&tiny(&dir.path().join("a"), 2)).unwrap();
    let mut cfg = tiny(&dir.path().join("b"), 2);
    cfg.init_from = Some(first.model_dir.clone());
    cfg.data.whole_shots = true;
    cfg.train.freeze = vec!["encoder.*".into(), "conv1.*".into()];
    let second = run_vae_stage(&cfg).unwrap();
    let a = WanVae::load(&first.model_dir, DType::F32, &Device::Cpu).unwrap();
    let b = WanVae::load(&second.model_dir, DType::F32, &Device::Cpu).unwrap();
    let mut decoder_moved = false;
    for (name, t) in a.tensors() {
        let same = t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.tensors()[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if name.starts_with("encoder.") || name.starts_with("conv1.") {
            assert!(same, "frozen `{name}` changed");
        } else if !same {
            decoder_moved = true;
        }
    }
    assert!(decoder_moved, "no decoder weight moved");
    assert_eq!(a.config().latents_mean, b.config().latents_mean);
    assert_eq!(a.config().latents_std, b.config().latents_std);
}

#[test]
fn a_detached_encoder_gets_no_gradient() {
    let (varmap, grads) = tiny_vae_gradients(false);
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let has = grads.get(var.as_tensor()).is_some();
        let encoder_side = name.starts_with("encoder.") || name.starts_with("conv1.");
        assert_eq!(has, !encoder_side, "`{name}`: gradient {has}");
    }
}

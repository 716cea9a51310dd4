//! The training core on a tiny MLP: convergence, exact resume, freezing, clipping, accumulation,
//! schedules, EMA maths, checkpoint verification and log truncation.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use storyreel_train::log::{read_log, truncate_after};
use storyreel_train::state::MODEL_FILE;
use storyreel_train::{
    clip_grad_norm, grad_norm, Ema, EmaConfig, GradAccumulator, LrSchedule, NamedParams, Result, ScheduleKind,
    TrainConfig, TrainError, Trainer,
};

/// Deterministic values in [-1, 1) from a seed (splitmix64), so runs agree bit for bit.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Mlp {
    layers: Vec<candle_nn::Linear>,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.tanh()?;
            }
        }
        Ok(h)
    }
}

/// A model with `dims` layer widths whose weights come from `seed`, not candle's RNG.
fn model(dims: &[usize], seed: u64) -> (VarMap, Mlp) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let layers = dims
        .windows(2)
        .enumerate()
        .map(|(i, w)| candle_nn::linear(w[0], w[1], vb.pp(format!("l{}", i + 1))).unwrap())
        .collect();
    reseed(&varmap, seed);
    (varmap, Mlp { layers })
}

fn reseed(varmap: &VarMap, seed: u64) {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let vals: Vec<f32> = values(seed * 1000 + i as u64, var.elem_count()).iter().map(|v| v * 0.5).collect();
        var.set(&Tensor::from_vec(vals, var.shape(), &Device::Cpu).unwrap()).unwrap();
    }
}

/// Batch `(step, micro)` of `b` samples: inputs and a fixed smooth target.
fn batch(step: u64, micro: usize, b: usize, d: usize) -> (Tensor, Tensor) {
    let x = Tensor::from_vec(values(step * 97 + micro as u64 + 7, b * d), (b, d), &Device::Cpu).unwrap();
    let w: Vec<f32> = (0..d).map(|i| 0.3 * (i as f32 + 1.0) - 0.5).collect();
    let w = Tensor::from_vec(w, (d, 1), &Device::Cpu).unwrap();
    let y = (x.matmul(&w).unwrap().sin().unwrap() + 0.1).unwrap();
    (x, y)
}

fn mse(model: &Mlp, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(model.forward(x)?.sub(y)?.sqr()?.mean_all()?)
}

fn weights(varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn config(out: &Path) -> TrainConfig {
    TrainConfig { out_dir: out.to_path_buf(), progress: false, checkpoint_every: 0, ..TrainConfig::default() }
}

fn lr_config(out: &Path, lr: f64) -> TrainConfig {
    let mut c = config(out);
    c.schedule.base_lr = lr;
    c
}

#[test]
fn steps_reduce_the_loss_on_a_fixed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (varmap, mlp) = model(&[4, 16, 1], 1);
    let mut trainer = Trainer::new(&varmap, lr_config(dir.path(), 1e-2)).unwrap();
    let (x, y) = batch(0, 0, 32, 4);
    let mut losses = Vec::new();
    for _ in 0..40 {
        let report = trainer.step(|_| Ok((mse(&mlp, &x, &y)?, vec![]))).unwrap();
        assert!(report.grad_norm.is_finite() && !report.skipped);
        losses.push(report.loss);
    }
    assert!(losses[39] < 0.3 * losses[0], "loss went {} -> {}", losses[0], losses[39]);
    let log = read_log(&trainer.log_path()).unwrap();
    assert_eq!(log.len(), 40);
    assert_eq!(log[0].step, 1);
    assert_eq!(log[39].loss, losses[39]);
}

/// A config exercising every stateful piece: warm-up + cosine, clipping, accumulation, EMA.
fn resume_config(out: &Path) -> TrainConfig {
    let mut c = lr_config(out, 5e-3);
    c.schedule =
        LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 3, total_steps: 10, base_lr: 5e-3, min_lr: 1e-4 };
    c.clip_norm = Some(0.5);
    c.accumulate = 2;
    c.ema = Some(EmaConfig { decay: 0.9, start_step: 2 });
    c.checkpoint_every = 5;
    c.keep_checkpoints = 1;
    c
}

fn run_step(trainer: &mut Trainer, mlp: &Mlp) -> f64 {
    let step = trainer.step_count();
    trainer.set_rng_state(vec![step * 11, 42]);
    let report = trainer
        .step(|micro| {
            let (x, y) = batch(step, micro, 8, 4);
            let loss = mse(mlp, &x, &y)?;
            let mae = mlp.forward(&x)?.sub(&y)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
            Ok((loss, vec![("mae".to_string(), mae)]))
        })
        .unwrap();
    assert_eq!(report.step, step + 1);
    report.loss
}

/// A [4, 8, 1] MLP from `seed` and its trainer under `config`, after `steps` steps of [`run_step`].
fn trained(config: TrainConfig, seed: u64, steps: usize) -> (VarMap, Trainer) {
    let (map, mlp) = model(&[4, 8, 1], seed);
    let mut trainer = Trainer::new(&map, config).unwrap();
    for _ in 0..steps {
        run_step(&mut trainer, &mlp);
    }
    (map, trainer)
}

#[test]
fn resume_reproduces_the_uninterrupted_run_exactly() {
    let whole_dir = tempfile::tempdir().unwrap();
    let (whole_map, whole_mlp) = model(&[4, 8, 1], 2);
    let mut whole = Trainer::new(&whole_map, resume_config(whole_dir.path())).unwrap();
    let whole_losses: Vec<f64> = (0..10).map(|_| run_step(&mut whole, &whole_mlp)).collect();

    let dir = tempfile::tempdir().unwrap();
    {
        let (_, first) = trained(resume_config(dir.path()), 2, 7);
        // Steps 6 and 7 happened after the checkpoint and will be redone.
        assert_eq!(read_log(&first.log_path()).unwrap().len(), 7);
    }
    let (map, mlp) = model(&[4, 8, 1], 99);
    let mut resumed = Trainer::new(&map, resume_config(dir.path())).unwrap();
    let from = resumed.resume_latest(dir.path()).unwrap().expect("a checkpoint");
    assert!(from.ends_with("step-5"));
    assert_eq!(resumed.step_count(), 5);
    assert_eq!(resumed.rng_state(), &[44, 42]);
    assert_eq!(resumed.optimizer().steps(), 5);
    let log = read_log(&resumed.log_path()).unwrap();
    assert_eq!(log.iter().map(|r| r.step).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);

    let resumed_losses: Vec<f64> = (0..5).map(|_| run_step(&mut resumed, &mlp)).collect();
    assert_eq!(&whole_losses[5..], &resumed_losses[..], "losses of steps 6..10 differ");
    assert_eq!(weights(&whole_map), weights(&map), "weights after step 10 differ");
    let ema = |t: &Trainer| -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<_> =
            t.ema_tensors().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(ema(&whole), ema(&resumed));

    let log = read_log(&resumed.log_path()).unwrap();
    assert_eq!(log.iter().map(|r| r.step).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    // serde_json's default float parser may be one ulp off, so the log is compared loosely.
    for (record, loss) in log.iter().zip(&whole_losses) {
        assert!((record.loss - loss).abs() <= 1e-12 * loss.abs(), "step {}: {} vs {loss}", record.step, record.loss);
    }
    assert!(log.iter().all(|r| r.losses.contains_key("mae")));
    // keep_checkpoints = 1: only step-10 is left.
    let left = storyreel_train::state::list_checkpoints(&resumed.checkpoint_root()).unwrap();
    assert_eq!(left.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![10]);
}

#[test]
fn resume_with_different_maths_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (map, _) = trained(resume_config(dir.path()), 2, 5);
    let mut changed = resume_config(dir.path());
    changed.clip_norm = Some(1.0);
    let mut second = Trainer::new(&map, changed).unwrap();
    let err = second.resume_latest(dir.path()).unwrap_err().to_string();
    assert!(err.contains("config hash"), "{err}");
}

/// The stage's own settings travel in the checkpoint: a resume under others is refused with
/// the changed ones named, the same ones resume, and a checkpoint that predates them still does.
#[test]
fn resume_under_other_stage_settings_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let settings = serde_json::json!({"data": {"crop": 32, "whole_shots": true}, "kl_weight": 1e-6});
    let (map, mlp) = model(&[4, 8, 1], 2);
    let mut first = Trainer::new(&map, resume_config(dir.path())).unwrap().with_stage_settings(settings.clone());
    for _ in 0..5 {
        run_step(&mut first, &mlp);
    }

    let other = serde_json::json!({"data": {"crop": 48, "whole_shots": true}, "kl_weight": 1e-6});
    let mut changed = Trainer::new(&map, resume_config(dir.path())).unwrap().with_stage_settings(other);
    let err = changed.resume_latest(dir.path()).unwrap_err().to_string();
    assert!(err.contains("data.crop: 32 → 48"), "{err}");
    assert!(!err.contains("kl_weight"), "only the changed setting is named: {err}");

    let mut same = Trainer::new(&map, resume_config(dir.path())).unwrap().with_stage_settings(settings);
    assert!(same.resume_latest(dir.path()).unwrap().is_some());
    assert_eq!(same.step_count(), 5);

    // A checkpoint written without stage settings (before they were kept) resumes as before.
    let old_dir = tempfile::tempdir().unwrap();
    let (old_map, _) = trained(resume_config(old_dir.path()), 2, 5);
    let mut newer = Trainer::new(&old_map, resume_config(old_dir.path()))
        .unwrap()
        .with_stage_settings(serde_json::json!({"anything": 1}));
    assert!(newer.resume_latest(old_dir.path()).unwrap().is_some());
}

#[test]
fn frozen_parameters_stay_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (varmap, mlp) = model(&[4, 8, 1], 3);
    let mut c = lr_config(dir.path(), 1e-2);
    c.freeze = vec!["l1.*".into(), "l2.bias".into()];
    let before = weights(&varmap);
    let mut trainer = Trainer::new(&varmap, c).unwrap();
    let frozen: Vec<&str> = trainer.params().frozen().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(frozen, vec!["l1.bias", "l1.weight", "l2.bias"]);
    for step in 0..3 {
        let (x, y) = batch(step, 0, 8, 4);
        trainer.step(|_| Ok((mse(&mlp, &x, &y)?, vec![]))).unwrap();
    }
    let after = weights(&varmap);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        if name == "l2.weight" {
            assert_ne!(a, b, "{name} should have trained");
        } else {
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{name} changed"
            );
        }
    }

    let mut bad = lr_config(dir.path(), 1e-2);
    bad.freeze = vec!["l1.*".into(), "blocks.*.self_attn.*".into()];
    let err = Trainer::new(&varmap, bad).unwrap_err();
    assert!(matches!(err, TrainError::OutOfRange { .. }));
    assert!(err.to_string().contains("blocks.*.self_attn.*"), "{err}");

    let mut all = lr_config(dir.path(), 1e-2);
    all.freeze = vec!["l".into()];
    assert!(Trainer::new(&varmap, all).is_err(), "freezing everything leaves nothing to train");
}

#[test]
fn clipping_reports_the_pre_clip_norm_and_caps_the_update() {
    let (varmap, mlp) = model(&[4, 8, 1], 4);
    let params = NamedParams::from_varmap(&varmap);
    let vars: Vec<_> = params.trainable().iter().map(|p| p.var.clone()).collect();
    let (x, y) = batch(0, 0, 16, 4);
    let y = (y * 10.0).unwrap();
    let mut grads = mse(&mlp, &x, &y).unwrap().backward().unwrap();
    let norm = grad_norm(&grads, &vars).unwrap();
    assert!(norm > 1.0);
    let reported = clip_grad_norm(&mut grads, &vars, 0.25).unwrap();
    assert_eq!(reported, norm);
    let clipped = grad_norm(&grads, &vars).unwrap();
    assert!((clipped - 0.25).abs() < 1e-5, "clipped norm {clipped}");
    // Under the cap nothing changes.
    assert_eq!(clip_grad_norm(&mut grads, &vars, 10.0).unwrap(), clipped);

    // With eps = 1 and beta1 = 0, AdamW's first update is lr * g / (|g| + 1) element-wise, so its
    // norm is at most lr * ||g||: clipping must bound it by lr * clip_norm.
    let update_norm = |clip: Option<f64>| -> (f64, bool, f64) {
        let dir = tempfile::tempdir().unwrap();
        let (varmap, mlp) = model(&[4, 8, 1], 4);
        let before = weights(&varmap);
        let mut c = lr_config(dir.path(), 0.1);
        c.optimizer.eps = 1.0;
        c.optimizer.beta1 = 0.0;
        c.optimizer.weight_decay = 0.0;
        c.clip_norm = clip;
        let mut trainer = Trainer::new(&varmap, c).unwrap();
        let report = trainer.step(|_| Ok((mse(&mlp, &x, &y)?, vec![]))).unwrap();
        let after = weights(&varmap);
        let sq: f64 = before
            .iter()
            .zip(&after)
            .flat_map(|((_, b), (_, a))| b.iter().zip(a).map(|(b, a)| ((a - b) as f64).powi(2)))
            .sum();
        (sq.sqrt(), report.clipped, report.grad_norm)
    };
    let (free, free_clipped, free_norm) = update_norm(None);
    let (capped, was_clipped, capped_norm) = update_norm(Some(0.25));
    assert!(!free_clipped && was_clipped);
    assert_eq!(free_norm, capped_norm, "the report gives the norm before clipping");
    assert!(capped <= 0.1 * 0.25 * (1.0 + 1e-4), "update norm {capped}");
    assert!(free > 2.0 * capped, "unclipped {free} vs clipped {capped}");
}

#[test]
fn a_non_finite_gradient_skips_the_update() {
    let dir = tempfile::tempdir().unwrap();
    let (varmap, mlp) = model(&[4, 8, 1], 5);
    let mut c = lr_config(dir.path(), 1e-2);
    c.ema = Some(EmaConfig::default());
    let mut trainer = Trainer::new(&varmap, c).unwrap();
    let before = weights(&varmap);
    let (x, y) = batch(0, 0, 4, 4);
    let report = trainer.step(|_| Ok(((mse(&mlp, &x, &y)? * f64::NAN)?, vec![]))).unwrap();
    assert!(report.skipped && report.grad_norm.is_nan());
    assert_eq!(weights(&varmap), before);
    assert_eq!((trainer.step_count(), trainer.skipped_steps(), trainer.optimizer().steps()), (1, 1, 0));
    let report = trainer.step(|_| Ok((mse(&mlp, &x, &y)?, vec![]))).unwrap();
    assert!(!report.skipped);
    let log = read_log(&trainer.log_path()).unwrap();
    assert!(log[0].skipped && log[0].grad_norm.is_nan() && !log[1].skipped);
}

#[test]
fn accumulating_micro_batches_equals_one_big_batch() {
    let (k, b, d) = (3usize, 4usize, 5usize);
    let xs: Vec<(Tensor, Tensor)> = (0..k).map(|i| batch(9, i, b, d)).collect();
    let x_all = Tensor::cat(&xs.iter().map(|(x, _)| x.clone()).collect::<Vec<_>>(), 0).unwrap();
    let y_all = Tensor::cat(&xs.iter().map(|(_, y)| y.clone()).collect::<Vec<_>>(), 0).unwrap();

    // Gradients: the accumulator's mean against the full batch's.
    let (varmap, lin) = model(&[d, 1], 6);
    let params = NamedParams::from_varmap(&varmap);
    let vars: Vec<_> = params.trainable().iter().map(|p| p.var.clone()).collect();
    let mut acc = GradAccumulator::new(vars.clone());
    for (x, y) in &xs {
        acc.add(&mse(&lin, x, y).unwrap().backward().unwrap()).unwrap();
    }
    assert_eq!(acc.count(), k);
    let mean = acc.finish().unwrap();
    let full = mse(&lin, &x_all, &y_all).unwrap().backward().unwrap();
    for var in &vars {
        let a = mean.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let f = full.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, f) in a.iter().zip(&f) {
            assert!((a - f).abs() < 1e-6, "{a} vs {f}");
        }
    }

    // Whole steps through the trainer.
    let run = |accumulate: usize| -> (Vec<(String, Vec<f32>)>, f64) {
        let dir = tempfile::tempdir().unwrap();
        let (varmap, lin) = model(&[d, 1], 6);
        let mut c = lr_config(dir.path(), 1e-2);
        c.accumulate = accumulate;
        let mut trainer = Trainer::new(&varmap, c).unwrap();
        let mut loss = 0.0;
        for _ in 0..3 {
            loss = trainer
                .step(|i| {
                    let (x, y) = if accumulate == 1 { (&x_all, &y_all) } else { (&xs[i].0, &xs[i].1) };
                    Ok((mse(&lin, x, y)?, vec![]))
                })
                .unwrap()
                .loss;
        }
        (weights(&varmap), loss)
    };
    let (w_acc, loss_acc) = run(k);
    let (w_full, loss_full) = run(1);
    assert!((loss_acc - loss_full).abs() < 1e-6);
    for ((name, a), (_, f)) in w_acc.iter().zip(&w_full) {
        for (a, f) in a.iter().zip(f) {
            assert!((a - f).abs() < 1e-6, "{name}: {a} vs {f}");
        }
    }
}

#[test]
fn schedules_warm_up_then_decay() {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
    let cosine =
        LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 10, total_steps: 110, base_lr: 1.0, min_lr: 0.1 };
    assert!(close(cosine.lr_at(0), 0.1));
    assert!(close(cosine.lr_at(4), 0.5));
    assert!(close(cosine.lr_at(9), 1.0));
    assert!(close(cosine.lr_at(10), 1.0));
    assert!(close(cosine.lr_at(35), 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())));
    assert!(close(cosine.lr_at(60), 0.55));
    assert!(close(cosine.lr_at(110), 0.1));
    assert!(close(cosine.lr_at(1000), 0.1));
    let linear = LrSchedule { kind: ScheduleKind::Linear, ..cosine.clone() };
    assert!(close(linear.lr_at(35), 0.775));
    assert!(close(linear.lr_at(110), 0.1));
    let constant = LrSchedule { kind: ScheduleKind::Constant, warmup_steps: 0, ..cosine.clone() };
    assert!(close(constant.lr_at(0), 1.0) && close(constant.lr_at(10_000), 1.0));

    let parsed: LrSchedule = serde_json::from_str(r#"{"kind": "cosine", "warmup_steps": 10}"#).unwrap();
    assert_eq!(parsed.kind, ScheduleKind::Cosine);
    assert_eq!(parsed.total_steps, LrSchedule::default().total_steps);
    assert!(serde_json::from_str::<LrSchedule>(r#"{"kind": "cosine", "warmup": 10}"#).is_err());
    assert!(LrSchedule { min_lr: 2.0, ..cosine.clone() }.validate().is_err());

    let c: TrainConfig = serde_json::from_str(r#"{"accumulate": 4, "ema": {"decay": 0.99}}"#).unwrap();
    assert_eq!((c.accumulate, c.ema.unwrap().decay, c.keep_checkpoints), (4, 0.99, 3));
    assert!(serde_json::from_str::<TrainConfig>(r#"{"acumulate": 4}"#).is_err());
    let only_schedule: TrainConfig = serde_json::from_str(r#"{"schedule": {"base_lr": 1e-5}}"#).unwrap();
    only_schedule.validate().unwrap();
    assert!(
        serde_json::from_str::<TrainConfig>(r#"{"optimizer": {"lr": 1e-5}}"#).is_err(),
        "the rate lives in the schedule"
    );
    assert!(TrainConfig { accumulate: 0, ..TrainConfig::default() }.validate().is_err());
}

#[test]
fn ema_follows_the_known_sequence() {
    let varmap = VarMap::new();
    varmap.get((1,), "w", candle_nn::Init::Const(0.0), DType::F32, &Device::Cpu).unwrap();
    let params = NamedParams::from_varmap(&varmap);
    let set = |x: f32| params.get("w").unwrap().var.set(&Tensor::new(&[x], &Device::Cpu).unwrap()).unwrap();
    let value = |ema: &Ema| ema.tensors()[0].1.to_vec1::<f32>().unwrap()[0];

    let mut ema = Ema::new(&params, EmaConfig { decay: 0.5, start_step: 0 }).unwrap();
    let mut seen = Vec::new();
    for (step, x) in [1.0f32, 2.0, 3.0].into_iter().enumerate() {
        set(x);
        ema.update(&params, step as u64 + 1).unwrap();
        seen.push(value(&ema));
    }
    assert_eq!(seen, vec![0.5, 1.25, 2.125]);

    let mut late = Ema::new(&params, EmaConfig { decay: 0.5, start_step: 3 }).unwrap();
    let mut seen = Vec::new();
    for (step, x) in [1.0f32, 2.0, 4.0, 8.0].into_iter().enumerate() {
        set(x);
        late.update(&params, step as u64 + 1).unwrap();
        seen.push(value(&late));
    }
    // Steps 1 and 2 just track the weights; averaging starts at step 3.
    assert_eq!(seen, vec![1.0, 2.0, 3.0, 5.5]);

    let target = VarMap::new();
    let t = target.get((1,), "w", candle_nn::Init::Const(0.0), DType::F32, &Device::Cpu).unwrap();
    late.copy_into(&target).unwrap();
    assert_eq!(t.to_vec1::<f32>().unwrap(), vec![5.5]);
    assert!(Ema::new(&params, EmaConfig { decay: 1.5, start_step: 0 }).is_err());
}

#[test]
fn export_weights_are_the_ema_and_the_last_step_stays_resumable() {
    let dir = tempfile::tempdir().unwrap();
    // 7 steps with checkpoints every 5: the last step has none of its own yet.
    let (map, trainer) = trained(resume_config(dir.path()), 7, 7);
    let raw = weights(&map);
    let mut average: Vec<(String, Vec<f32>)> = trainer
        .ema_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    average.sort_by(|a, b| a.0.cmp(&b.0));
    assert_ne!(raw, average, "after 7 steps the average must differ from the weights");

    assert_eq!(trainer.load_export_weights(&map).unwrap(), Some(0.9));
    assert_eq!(weights(&map), average, "the exported weights are the EMA");

    // The step's own weights were checkpointed first, so a resume continues from them.
    let (resumed_map, _) = model(&[4, 8, 1], 99);
    let mut resumed = Trainer::new(&resumed_map, resume_config(dir.path())).unwrap();
    let from = resumed.resume_latest(dir.path()).unwrap().expect("a checkpoint");
    assert!(from.ends_with("step-7"), "resumed from {}", from.display());
    assert_eq!(weights(&resumed_map), raw);

    // Without an EMA the weights stay as trained and no checkpoint is added.
    let plain_dir = tempfile::tempdir().unwrap();
    let mut plain_config = resume_config(plain_dir.path());
    plain_config.ema = None;
    let (plain_map, plain) = trained(plain_config, 7, 7);
    let before = weights(&plain_map);
    assert_eq!(plain.load_export_weights(&plain_map).unwrap(), None);
    assert_eq!(weights(&plain_map), before);
    let left = storyreel_train::state::list_checkpoints(&plain.checkpoint_root()).unwrap();
    assert_eq!(left.len(), 1, "only the step-5 checkpoint: {left:?}");
}

#[test]
fn corrupt_checkpoints_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (varmap, mlp) = model(&[4, 8, 1], 7);
    let mut c = lr_config(dir.path(), 1e-2);
    c.checkpoint_every = 2;
    let mut trainer = Trainer::new(&varmap, c.clone()).unwrap();
    for step in 0..2 {
        let (x, y) = batch(step, 0, 4, 4);
        trainer.step(|_| Ok((mse(&mlp, &x, &y)?, vec![]))).unwrap();
    }
    let ckpt = storyreel_train::latest_checkpoint(&trainer.checkpoint_root()).unwrap().unwrap();

    // A model whose l2 is wider: the shape mismatch names l2.weight.
    let (wide, _) = model(&[4, 8, 2], 7);
    let before = weights(&wide);
    let mut other = Trainer::new(&wide, c.clone()).unwrap();
    let err = other.resume_from(&ckpt).unwrap_err().to_string();
    assert!(err.contains("l2.bias") || err.contains("l2.weight"), "{err}");
    assert!(err.contains("shape"), "{err}");
    assert_eq!(weights(&wide), before, "a failed load changes nothing");

    // A model file missing a tensor.
    let path = ckpt.join(MODEL_FILE);
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("l1.bias");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let (fresh, _) = model(&[4, 8, 1], 8);
    let mut other = Trainer::new(&fresh, c.clone()).unwrap();
    let err = other.resume_from(&ckpt).unwrap_err().to_string();
    assert!(err.contains("l1.bias") && err.contains("missing"), "{err}");

    // An extra tensor is named too.
    tensors.insert("l1.bias".into(), Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap());
    tensors.insert("l3.weight".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = other.resume_from(&ckpt).unwrap_err().to_string();
    assert!(err.contains("l3.weight"), "{err}");

    // Garbage in the file names the file.
    std::fs::write(&path, b"not safetensors").unwrap();
    let err = other.resume_from(&ckpt).unwrap_err().to_string();
    assert!(err.contains(MODEL_FILE), "{err}");
}

#[test]
fn log_truncation_keeps_lines_up_to_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    let line = |s: u64| {
        format!(
            r#"{{"step":{s},"loss":0.5,"lr":0.1,"grad_norm":null,"step_time_s":0.1,"samples_per_s":1.0,"wall_time_s":1.0}}"#
        )
    };
    let text = format!("{}\n{}\n{}\n{}\n{{\"step\":5,\"lo", line(1), line(2), line(3), line(4));
    std::fs::write(&path, text).unwrap();
    assert_eq!(truncate_after(&path, 2).unwrap(), 3);
    let log = read_log(&path).unwrap();
    assert_eq!(log.iter().map(|r| r.step).collect::<Vec<_>>(), vec![1, 2]);
    assert!(log[0].grad_norm.is_nan());
    assert_eq!(truncate_after(&path, 2).unwrap(), 0);
    // A torn last line is dropped even when every whole line is kept.
    std::fs::write(&path, format!("{}\n{{\"st", line(1))).unwrap();
    assert_eq!(truncate_after(&path, 10).unwrap(), 1);
    assert_eq!(read_log(&path).unwrap().len(), 1);
    assert_eq!(truncate_after(&dir.path().join("absent.jsonl"), 0).unwrap(), 0);
}

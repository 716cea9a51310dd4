//! Stage `dmd` at a tiny size: the training rollout is the inference path (same chunks for the
//! same noise), its gradient reaches every generator weight, a generator step changes only the
//! generator and a critic step only the critic, and a resumed run ends bit-identical.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::{assert_model_is_the_checkpoint_ema, student_copy, tiny_dmd_config, tiny_teacher};
use storyreel_engine::session::LatentHistory;
use storyreel_engine::teacher_story::caption_embeddings;
use storyreel_engine::{FewStepSampler, GivenContext, NoContext, SeededNoise, Session, SessionConfig, StoryModel};
use storyreel_nn::kv_cache::LocalWindow;
use storyreel_train::stage_dmd::{dmd_loss, rollout, run_dmd_stage, DmdConfig, ShotConditioning};
use storyreel_train::stage_ode_init::trainable_dit;

fn conditioning(model: &StoryModel) -> ShotConditioning {
    let context = Tensor::randn(0f32, 1.0, (6, 4, 8, 8), &Device::Cpu).unwrap();
    let embeddings = caption_embeddings(&model.text, "", &["a red fox walks in a meadow"]).unwrap();
    ShotConditioning { shot: 0, context, flags: vec![0; 6], embeddings, frames: 6 }
}

#[test]
fn the_training_rollout_is_the_inference_session() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher(dir.path());
    let student_dir = student_copy(&teacher, dir.path());
    let student = StoryModel::load(&student_dir, &Device::Cpu).unwrap();
    let cond = conditioning(&student);
    let sampler = FewStepSampler::shotstream();

    // Training: trainable weights (autograd's attention path), exit at the last step.
    let vars = candle_nn::VarMap::new();
    let generator = trainable_dit(&student, true, &vars, &Device::Cpu).unwrap();
    let trained = rollout(&generator, &sampler, 3, &cond, 3, &mut SeededNoise::new(9)).unwrap();

    // Inference: the streaming session on the loaded weights, same context and noise.
    let cfg = SessionConfig {
        frames_per_shot: 6,
        chunk_frames: 3,
        context_frames: 6,
        latent_size: (8, 8),
        sampler: sampler.clone(),
        refresh_t: 0.0,
        window: LocalWindow { capacity_frames: 6, sink_frames: 0 },
    };
    let mut session = Session::new(
        &student.dit,
        cfg,
        Box::new(NoContext),
        Box::new(LatentHistory::default()),
        Box::new(SeededNoise::new(9)),
    )
    .unwrap();
    session.set_next_context(GivenContext { latents: cond.context.clone(), shots: cond.flags.clone() }).unwrap();
    session.push_shot(&cond.embeddings.get(0).unwrap()).unwrap();
    let mut chunks = Vec::new();
    while let Some(c) = session.next_chunk().unwrap() {
        chunks.push(c.latents);
    }
    let streamed = Tensor::cat(&chunks, 0).unwrap();
    let d = (trained - streamed).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-4, "training and inference rollouts differ by {d}");

    // An earlier exit is that step's estimate, not the finished sample.
    let early = rollout(&generator, &sampler, 3, &cond, 1, &mut SeededNoise::new(9)).unwrap();
    let full = rollout(&generator, &sampler, 3, &cond, 3, &mut SeededNoise::new(9)).unwrap();
    let d = (early - full).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d > 1e-3);
    assert!(rollout(&generator, &sampler, 3, &cond, 4, &mut SeededNoise::new(9)).is_err());
}

#[test]
fn the_dmd_gradient_reaches_every_generator_weight_through_the_caches() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher(dir.path());
    let student = StoryModel::load(&student_copy(&teacher, dir.path()), &Device::Cpu).unwrap();
    let cond = conditioning(&student);
    let vars = candle_nn::VarMap::new();
    let generator = trainable_dit(&student, true, &vars, &Device::Cpu).unwrap();
    for exit in [0, 2] {
        let x_hat =
            rollout(&generator, &FewStepSampler::shotstream(), 3, &cond, exit, &mut SeededNoise::new(3)).unwrap();
        let real = Tensor::randn(0f32, 1.0, x_hat.dims(), &Device::Cpu).unwrap();
        let fake = Tensor::randn(0f32, 1.0, x_hat.dims(), &Device::Cpu).unwrap();
        let (loss, g) = dmd_loss(&x_hat, &real, &fake).unwrap();
        assert!(g > 0.0);
        let grads = loss.backward().unwrap();
        let data = vars.data().lock().unwrap();
        let mut missing: Vec<&String> = data
            .iter()
            .filter(|(_, v)| {
                grads
                    .get(v.as_tensor())
                    .is_none_or(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0)
            })
            .map(|(n, _)| n)
            .collect();
        missing.sort();
        assert!(missing.is_empty(), "exit {exit}: no gradient for {missing:?}");
    }
}

fn tiny_dmd(teacher: &Path, student: &Path, out: &Path, steps: u64) -> DmdConfig {
    tiny_dmd_config(DmdConfig::default(), teacher, student, out, steps)
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn max_change(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f32 {
    a.iter()
        .map(|(n, t)| (t - &b[n]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
        .fold(0.0, f32::max)
}

#[test]
fn each_step_trains_only_its_network_and_a_resumed_run_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher(dir.path());
    let student = student_copy(&teacher, dir.path());
    let out = dir.path().join("dmd");
    let report = run_dmd_stage(&tiny_dmd(&teacher, &student, &out, 3)).unwrap();
    assert_eq!((report.steps, report.generator_steps), (3, 2));

    // Steps 0 and 2 train the generator, step 1 the critic (checkpoints after every step).
    let g = |n: u64| weights(&out.join(format!("generator/checkpoints/step-{n}/model.safetensors")));
    let c = |n: u64| weights(&out.join(format!("critic/checkpoints/step-{n}/model.safetensors")));
    let g1 = g(1);
    let g2 = g(2);
    let c1 = c(1);
    assert!(max_change(&g1, &g2) > 0.0, "the second generator step moved it");
    // Step 1 (the critic's) leaves the generator alone: step 2 is the next generator step, so
    // its checkpoint after step 1 is still step-1; and the generator steps leave the critic.
    let student_w = weights(&student.join("dit/model.safetensors"));
    let g1_dit: HashMap<String, Tensor> =
        g1.iter().map(|(n, t)| (n.trim_start_matches("dit.").to_string(), t.clone())).collect();
    assert!(max_change(&g1_dit, &student_w) > 0.0, "the first generator step moved it");
    let teacher_w = weights(&teacher.join("dit/model.safetensors"));
    let c1_dit: HashMap<String, Tensor> =
        c1.iter().map(|(n, t)| (n.trim_start_matches("dit.").to_string(), t.clone())).collect();
    assert!(max_change(&c1_dit, &teacher_w) > 0.0, "the critic step moved the critic");
    let log = |who: &str| std::fs::read_to_string(out.join(format!("{who}/train.jsonl"))).unwrap().lines().count();
    assert_eq!((log("generator"), log("critic")), (2, 1));

    // Interrupted after step 2 (drop the generator's step-2 checkpoint and the critic's is the
    // same point), the run resumes and ends bit-identical.
    let final_model = std::fs::read(report.model_dir.join("dit/model.safetensors")).unwrap();
    std::fs::remove_dir_all(out.join("generator/checkpoints/step-2")).unwrap();
    std::fs::remove_dir_all(&report.model_dir).unwrap();
    let again = run_dmd_stage(&tiny_dmd(&teacher, &student, &out, 3)).unwrap();
    assert_eq!(again.steps, 3);
    assert_eq!(std::fs::read(again.model_dir.join("dit/model.safetensors")).unwrap(), final_model);
    let loaded = StoryModel::load(&again.model_dir, &Device::Cpu).unwrap();
    assert_eq!(loaded.card.kind, storyreel_engine::ModelKind::Student);
}

#[test]
fn with_a_generator_ema_the_student_is_the_average_and_the_last_step_is_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher(dir.path());
    let student = student_copy(&teacher, dir.path());
    let out = dir.path().join("dmd");
    let mut cfg = tiny_dmd(&teacher, &student, &out, 3);
    cfg.checkpoint_every = 2;
    cfg.generator.ema = Some(storyreel_train::EmaConfig { decay: 0.5, start_step: 0 });
    let report = run_dmd_stage(&cfg).unwrap();
    assert_eq!(report.ema_decay, Some(0.5));
    // Step 3 is not a multiple of checkpoint_every (2), so it was checkpointed before the export.
    // Checkpoints count each network's own steps: the loop's, after step 2, were the generator's
    // step-1 and the critic's step-1; step 3 is the generator's second (step-2).
    assert_model_is_the_checkpoint_ema(&report.model_dir, &out.join("generator/checkpoints/step-2"), 0.5);
}

#[test]
fn bad_dmd_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher(dir.path());
    let cfg = DmdConfig { t_range: [980.0, 20.0], ..DmdConfig::default() };
    assert!(cfg.validate().unwrap_err().to_string().contains("t_range"));
    let cfg = DmdConfig { generator_every: 1, ..DmdConfig::default() };
    assert!(cfg.validate().is_err());
    // A teacher is not a student to distil into.
    let cfg = tiny_dmd(&teacher, &teacher, &dir.path().join("dmd"), 1);
    let err = run_dmd_stage(&cfg).unwrap_err().to_string();
    assert!(err.contains("not a student"), "{err}");
}

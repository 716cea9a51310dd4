//! Stage `dmd-long` (inter-shot self-forcing) and LoRA at a tiny size: the stage walks whole
//! stories shot by shot with its own decoded shots as history, trains only the adapters, saves
//! the history with each checkpoint so that a resumed run ends bit-identical, and the merged
//! model equals the adapted one.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{student_copy, tiny_dmd_config, tiny_teacher};
use storyreel_engine::teacher_story::caption_embeddings;
use storyreel_engine::{FewStepSampler, ModelKind, SeededNoise, StoryModel};
use storyreel_train::lora::{lora_dit, merge_lora_model, save_lora_folder, LoraSpec, LORA_PREFIX};
use storyreel_train::stage_dmd::{rollout, run_dmd_stage, DmdConfig, History, ShotConditioning};

fn tiny_long(teacher: &Path, student: &Path, out: &Path, steps: u64) -> DmdConfig {
    let base = DmdConfig { lora: Some(LoraSpec { rank: 2, alpha: 4.0 }), ..DmdConfig::inter_shot() };
    tiny_dmd_config(base, teacher, student, out, steps)
}

#[test]
fn stage_four_walks_stories_on_its_own_history_trains_only_adapters_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher(dir.path());
    let student = student_copy(&teacher, dir.path());
    let out = dir.path().join("long");
    assert_eq!(DmdConfig::inter_shot().history, History::SelfGenerated);
    let report = run_dmd_stage(&tiny_long(&teacher, &student, &out, 4)).unwrap();
    assert_eq!((report.steps, report.generator_steps), (4, 2));

    // Each checkpoint keeps the decoded shots of the story in progress: one tensor per earlier
    // shot, [F, 3, 32, 32] (a story at its first shot has nothing to keep).
    let saved: Vec<_> = std::fs::read_dir(out.join("history")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(!saved.is_empty() && saved.len() <= 3, "{saved:?}");
    for path in &saved {
        let pixels = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        assert!(!pixels.is_empty());
        for k in 0..pixels.len() {
            assert_eq!(&pixels[&format!("shot.{k}")].dims()[1..], &[3, 32, 32], "{path:?}");
        }
    }

    // Only adapters are trained: the checkpoints hold lora.* variables and nothing else.
    let g = candle_core::safetensors::load(out.join("generator/checkpoints/step-2/model.safetensors"), &Device::Cpu)
        .unwrap();
    assert!(!g.is_empty());
    assert!(g.keys().all(|k| k.starts_with(&format!("{LORA_PREFIX}."))), "{:?}", g.keys().collect::<Vec<_>>());
    let moved = g
        .iter()
        .filter(|(k, _)| k.ends_with(".b"))
        .any(|(_, t)| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    assert!(moved, "the generator steps moved the adapters' B from zero");
    assert!(out.join("generator-lora/adapter_model.safetensors").is_file());
    assert!(out.join("critic-lora/adapter_config.json").is_file());
    let merged = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    assert_eq!(merged.card.kind, ModelKind::Student);
    assert!(merged.card.description.contains("stage 4"), "{}", merged.card.description);

    // Interrupted after step 3 (the critic's step-2 checkpoint removed, so both trainers stand at
    // step 3), the run resumes from the saved history and ends bit-identical.
    let final_model = std::fs::read(report.model_dir.join("dit/model.safetensors")).unwrap();
    std::fs::remove_dir_all(out.join("critic/checkpoints/step-2")).unwrap();
    std::fs::remove_dir_all(&report.model_dir).unwrap();
    let again = run_dmd_stage(&tiny_long(&teacher, &student, &out, 4)).unwrap();
    assert_eq!(again.steps, 4);
    assert_eq!(std::fs::read(again.model_dir.join("dit/model.safetensors")).unwrap(), final_model);

    // Without the history of the step it resumes from, the run says what is missing.
    assert!(out.join("history/step-3.safetensors").is_file(), "step 3 is inside a story");
    std::fs::remove_dir_all(out.join("critic/checkpoints/step-2")).unwrap();
    std::fs::remove_file(out.join("history/step-3.safetensors")).unwrap();
    let err = run_dmd_stage(&tiny_long(&teacher, &student, &out, 4)).unwrap_err().to_string();
    assert!(err.contains("step-3.safetensors") && err.contains("history"), "{err}");
}

#[test]
fn the_lora_merge_equals_the_adapted_model() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher(dir.path());
    let student_dir = student_copy(&teacher, dir.path());
    let student = StoryModel::load(&student_dir, &Device::Cpu).unwrap();
    let spec = LoraSpec { rank: 3, alpha: 6.0 };
    let vars = candle_nn::VarMap::new();
    let mut adapted = lora_dit(&student, &spec, 5, &vars, &Device::Cpu).unwrap();
    let targets = adapted.lora_targets().len();
    // A fresh adapter is zero (B = 0); give every B a value so the merge has work to do.
    for (name, var) in vars.data().lock().unwrap().iter() {
        if name.ends_with(".b") {
            var.set(&Tensor::randn(0f32, 0.2, var.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    let lora_dir = dir.path().join("adapters");
    save_lora_folder(&vars, &spec, &lora_dir).unwrap();
    let out = dir.path().join("merged");
    let report = merge_lora_model(&student_dir, &lora_dir, &out, None).unwrap();
    assert_eq!(report.merged, targets);
    let merged = StoryModel::load(&out, &Device::Cpu).unwrap();
    assert_eq!(merged.card.student, student.card.student);

    let context = Tensor::randn(0f32, 1.0, (6, 4, 8, 8), &Device::Cpu).unwrap();
    let embeddings = caption_embeddings(&student.text, "", &["a red fox walks in a meadow"]).unwrap();
    let cond = ShotConditioning { shot: 0, context, flags: vec![0; 6], embeddings, frames: 3 };
    let sampler = FewStepSampler::shotstream();
    let run = |m: &storyreel_nn::WanModel| rollout(m, &sampler, 3, &cond, 3, &mut SeededNoise::new(4)).unwrap();
    let (a, m, base) = (run(&adapted), run(&merged.dit), run(&student.dit));
    let diff = |x: &Tensor, y: &Tensor| (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff(&a, &base) > 1e-3, "the adapters change the model");
    assert!(diff(&a, &m) < 1e-4, "merged and adapted differ by {}", diff(&a, &m));

    // Merging into the base's own folder, or a folder of non-adapter tensors, is refused.
    assert!(merge_lora_model(&student_dir, &lora_dir, &student_dir, None).is_err());
    let err =
        merge_lora_model(&student_dir, &student_dir.join("dit"), &dir.path().join("x"), None).unwrap_err().to_string();
    assert!(err.contains("LoRA"), "{err}");
}

#[test]
fn stage_four_conditions_on_its_own_decoded_shots_picked_as_at_inference() {
    use storyreel_engine::context::{ContextMemory, ContextQuery, DynamicSampling};
    use storyreel_engine::teacher_story::encode_context;
    use storyreel_train::stage_dmd::{self_conditioning, DmdDraw};
    let dir = tempfile::tempdir().unwrap();
    let teacher = StoryModel::load(&tiny_teacher(dir.path()), &Device::Cpu).unwrap();
    let embeddings = caption_embeddings(&teacher.text, "", &["a red fox walks", "the same red fox jumps"]).unwrap();
    let truth = ShotConditioning {
        shot: 1,
        context: Tensor::ones((6, 4, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
        flags: vec![1; 6],
        embeddings,
        frames: 3,
    };
    let history = vec![Tensor::randn(0f32, 0.5, (9, 3, 32, 32), &Device::Cpu).unwrap().clamp(-1f32, 1f32).unwrap()];
    let memory = DynamicSampling { max_frames: 6 };
    let mut draw = DmdDraw { story: 0, shot: 1, exit: 0, t: 500.0, context_dropped: false, noise_seed: 1 };
    let own = self_conditioning(&teacher, &truth, &draw, &history, &[], "", &memory).unwrap();
    let picks = memory.select(&ContextQuery::lengths(&[9]));
    let (want, flags) = encode_context(teacher.vae.as_ref(), &history, &picks, 6, (8, 8), &Device::Cpu).unwrap();
    assert_eq!(own.flags, flags);
    let d = (&own.context - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0, "the context is the walk's own frames, not the ground truth");
    assert_eq!((own.shot, own.frames), (1, 3));
    // Dropped context (or no earlier shot) is zeros with flags 0, as in stage 3.
    draw.context_dropped = true;
    let dropped = self_conditioning(&teacher, &truth, &draw, &history, &[], "", &memory).unwrap();
    assert_eq!(dropped.flags, vec![0; 6]);
    assert_eq!(dropped.context.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    draw.context_dropped = false;
    let first = self_conditioning(&teacher, &truth, &draw, &[], &[], "", &memory).unwrap();
    assert_eq!(first.flags, vec![0; 6]);
}

#[test]
fn bad_lora_settings_are_clear_errors() {
    let cfg = DmdConfig { lora: Some(LoraSpec { rank: 0, alpha: 1.0 }), ..DmdConfig::inter_shot() };
    assert!(cfg.validate().unwrap_err().to_string().contains("lora.rank"));
    let cfg = DmdConfig { lora: Some(LoraSpec { rank: 4, alpha: f64::NAN }), ..DmdConfig::inter_shot() };
    assert!(cfg.validate().unwrap_err().to_string().contains("lora.alpha"));
    // A rank wider than the model's narrowest linear is refused when the adapters are made.
    let dir = tempfile::tempdir().unwrap();
    let teacher = StoryModel::load(&tiny_teacher(dir.path()), &Device::Cpu).unwrap();
    let err = lora_dit(&teacher, &LoraSpec { rank: 4096, alpha: 1.0 }, 1, &candle_nn::VarMap::new(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lora.rank") && err.contains("narrowest"), "{err}");
}

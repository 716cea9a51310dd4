//! Stage `dmd-long` (inter-shot self-forcing) and LoRA at a tiny size: the stage walks whole
//! stories shot by shot with its own decoded shots as history, trains only the adapters, saves
//! the history with each checkpoint so that a resumed run ends bit-identical, and the merged
//! model equals the adapted one.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{student_copy, tiny_teacher};
use storyreel_engine::teacher_story::caption_embeddings;
use storyreel_engine::{FewStepSampler, ModelKind, SeededNoise, StoryModel};
use storyreel_train::lora::{lora_dit, merge_lora_model, save_lora_folder, LoraSpec, LORA_PREFIX};
use storyreel_train::stage_dmd::{rollout, run_dmd_stage, DmdConfig, History, ShotConditioning};
use storyreel_train::stage_teacher::TeacherData;

fn tiny_long(teacher: &Path, student: &Path, out: &Path, steps: u64) -> DmdConfig {
    let mut cfg = DmdConfig {
        teacher: teacher.to_path_buf(),
        student: student.to_path_buf(),
        data: TeacherData { first_seed: 50, stories: 2, width: 32, height: 32 },
        generator_every: 2,
        steps,
        checkpoint_every: 1,
        lora: Some(LoraSpec { rank: 2, alpha: 4.0 }),
        out_dir: out.to_path_buf(),
        progress: false,
        ..DmdConfig::inter_shot()
    };
    cfg.generator.schedule.warmup_steps = 1;
    cfg.critic.schedule.warmup_steps = 1;
    cfg
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
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

    // After two steps the walk is on shot 2 of its first story with shots 0 and 1 decoded, or
    // (a two-shot story) at the start of the next story with nothing kept.
    let state = json(&out.join("history/step-2.json"));
    if state["cursor"] == 0 {
        assert_eq!(state["shot"], 2, "{state}");
        let pixels = candle_core::safetensors::load(out.join("history/step-2.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(pixels.len(), 2);
        assert_eq!(&pixels["shot.1"].dims()[1..], &[3, 32, 32]);
    } else {
        assert_eq!((state["cursor"].as_u64(), state["shot"].as_u64()), (Some(1), Some(0)), "{state}");
    }
    assert!(!out.join("history/step-1.json").exists(), "only the newest three saves are kept");

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
    std::fs::remove_dir_all(out.join("critic/checkpoints/step-2")).unwrap();
    std::fs::remove_file(out.join("history/step-3.json")).unwrap();
    let err = run_dmd_stage(&tiny_long(&teacher, &student, &out, 4)).unwrap_err().to_string();
    assert!(err.contains("step-3.json") && err.contains("history"), "{err}");
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

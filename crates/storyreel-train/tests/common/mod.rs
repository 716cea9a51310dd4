//! Tiny models the distillation tests share.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use storyreel_engine::{StoryModel, StudentSampling};
use storyreel_nn::text::toy::ToyTextConfig;
use storyreel_nn::vae::WanVae;
use storyreel_train::stage_ode_init::{trainable_dit, write_student_model};
use storyreel_train::stage_teacher::{run_teacher_stage, TeacherData, TeacherStageConfig, ToyDitShape};
use storyreel_train::stage_vae::ToyVaeShape;

/// A tiny teacher (32×32 frames, 4 latent channels) under `dir/teacher`, with random DiT weights:
/// two training steps write the folder, but leave the zero-initialised head near zero, and a
/// teacher whose every trajectory stays at its noise has nothing to distil.
pub fn tiny_teacher(dir: &Path) -> PathBuf {
    tiny_teacher_with(dir, false)
}

/// The DiT shape of the tiny teachers: width 32, one block, Wan's patch, no position embedding.
pub fn tiny_dit() -> ToyDitShape {
    ToyDitShape { dim: 32, ffn_dim: 64, freq_dim: 32, num_heads: 2, num_layers: 1, patch: 2, spatial_position: false }
}

/// [`tiny_teacher`] with the DiT's `spatial_position` set as given.
pub fn tiny_teacher_with(dir: &Path, spatial_position: bool) -> PathBuf {
    let cfg = ToyVaeShape { z_dim: 4, base_dim: 4, ..ToyVaeShape::default() }.config();
    WanVae::random(&cfg, true, 3, DType::F32, &Device::Cpu).unwrap().save(&dir.join("vae")).unwrap();
    let mut cfg = TeacherStageConfig {
        vae: dir.join("vae"),
        dit: ToyDitShape { spatial_position, ..tiny_dit() },
        text: ToyTextConfig { dim: 16, text_len: 64, layers: 1, heads: 2, ffn_dim: 32 },
        data: TeacherData { first_seed: 21, stories: 2, width: 32, height: 32 },
        steps: 2,
        ..TeacherStageConfig::default()
    };
    cfg.train.out_dir = dir.join("teacher");
    cfg.train.progress = false;
    cfg.train.schedule.warmup_steps = 1;
    let model = run_teacher_stage(&cfg).unwrap().model_dir;
    let wan = storyreel_nn::WanConfig::from_json_file(&model.join("dit/config.json")).unwrap();
    let weights = storyreel_nn::dit::random_weights(&wan, 7, DType::F32, &Device::Cpu).unwrap();
    storyreel_nn::checkpoint::save_safetensors(&model.join("dit/model.safetensors"), &weights).unwrap();
    model
}

/// A student folder under `dir/student` that starts as a copy of `teacher` (ShotStream's 4 steps,
/// 3-frame chunks).
pub fn student_copy(teacher: &Path, dir: &Path) -> PathBuf {
    let model = StoryModel::load(teacher, &Device::Cpu).unwrap();
    let vars = candle_nn::VarMap::new();
    trainable_dit(&model, true, &vars, &Device::Cpu).unwrap();
    let sampling = StudentSampling { steps: vec![1000, 740, 500, 260], shift: 8.0, chunk_frames: 3 };
    let out = dir.join("student");
    write_student_model(&model, &vars, sampling, true, "a copy of the teacher", &out).unwrap();
    out
}

/// A DMD config over `base` for the tiny models: 2 training stories at 32×32, a generator step
/// every other step, a checkpoint after every step.
pub fn tiny_dmd_config(
    base: storyreel_train::stage_dmd::DmdConfig,
    teacher: &Path,
    student: &Path,
    out: &Path,
    steps: u64,
) -> storyreel_train::stage_dmd::DmdConfig {
    let mut cfg = storyreel_train::stage_dmd::DmdConfig {
        teacher: teacher.to_path_buf(),
        student: student.to_path_buf(),
        data: TeacherData { first_seed: 50, stories: 2, width: 32, height: 32 },
        generator_every: 2,
        steps,
        checkpoint_every: 1,
        out_dir: out.to_path_buf(),
        progress: false,
        ..base
    };
    cfg.generator.schedule.warmup_steps = 1;
    cfg.critic.schedule.warmup_steps = 1;
    cfg
}

/// Asserts that the story model in `model_dir` names an EMA of `decay` on its card and holds the
/// DiT average saved in the stage checkpoint `checkpoint` (`dit.`-prefixed), and that the average
/// differs from that step's own weights.
pub fn assert_model_is_the_checkpoint_ema(model_dir: &Path, checkpoint: &Path, decay: f64) {
    let model = StoryModel::load(model_dir, &Device::Cpu).unwrap();
    let note = format!("EMA weights (decay {decay})");
    assert!(model.card.description.contains(&note), "{}", model.card.description);
    assert!(checkpoint.is_dir(), "{} was not written", checkpoint.display());
    let load = |p: &Path| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let exported = load(&model_dir.join("dit/model.safetensors"));
    let average = load(&checkpoint.join(storyreel_train::state::EMA_FILE));
    let own = load(&checkpoint.join(storyreel_train::state::MODEL_FILE));
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut differs = false;
    for (name, tensor) in &exported {
        let key = format!("dit.{name}");
        assert_eq!(values(tensor), values(&average[&key]), "{name} is not the EMA");
        differs |= values(tensor) != values(&own[&key]);
    }
    assert!(differs, "the average must differ from the last step's weights");
}

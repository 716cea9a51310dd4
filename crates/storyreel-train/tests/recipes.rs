//! The training recipes shipped under `examples/recipes/` read and validate with the current
//! stages, and each stage starts from what the one before it writes, so a documented recipe
//! cannot drift out of step with the config format.

use std::path::{Path, PathBuf};

use storyreel_train::stage_teacher::TeacherStageConfig;
use storyreel_train::stage_vae::VaeStageConfig;

fn recipe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/recipes").join(name)
}

#[test]
fn the_budget_recipe_reads_validates_and_chains() {
    let clips = VaeStageConfig::read(&recipe("budget/vae-clips.json")).unwrap();
    let whole = VaeStageConfig::read(&recipe("budget/vae-whole-shots.json")).unwrap();
    let teacher = TeacherStageConfig::read(&recipe("budget/teacher.json")).unwrap();
    clips.validate().unwrap();
    whole.validate().unwrap();
    teacher.validate().unwrap();

    assert_eq!(whole.init_from.as_deref(), Some(clips.train.out_dir.join("model").as_path()));
    assert_eq!(teacher.vae, whole.train.out_dir.join("model"));
    assert!(whole.data.whole_shots && whole.data.crop == Some(32), "the whole-shot stage trains on 32×32 crops");
    assert_eq!((clips.steps, whole.steps, teacher.steps), (1200, 4000, 8000), "the steps BENCHMARKS timed");
    assert!(teacher.dit.spatial_position && teacher.use_context);
    assert_eq!((teacher.sampler.shift, teacher.sampler.guidance), (3.0, 8.0));
}

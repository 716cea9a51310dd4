//! Stages `ode-pairs` and `ode-init` at a tiny size: pairs are the teacher's own trajectory
//! (same noise, same end point), a stopped pair run resumes to the same files, the regression
//! loss falls on a fixed sample, and the ODE init writes a student model that generates a story.

mod common;

use std::path::Path;

use common::{student_copy, tiny_teacher, tiny_teacher_with};

use candle_core::{Device, Tensor};
use storyreel_engine::context::DynamicSampling;
use storyreel_engine::shot_plan::ShotPlan;
use storyreel_engine::teacher::{sample_shot, TeacherInputs};
use storyreel_engine::teacher_story::{caption_embeddings, unconditional_caption};
use storyreel_engine::{
    generate_story, EulerSampler, FewStepSampler, ModelKind, NoiseSource, SeededNoise, ShotRequest, StoryEvents,
    StoryModel, StoryOptions,
};
use storyreel_train::ode_pairs::{load_ode_pair_folders, load_ode_pairs, make_ode_pairs, OdePairsConfig};
use storyreel_train::stage_ode_init::{
    draw_ode_sample, ode_regression_loss, run_ode_init_stage, trainable_dit, OdeDraw, OdeInitConfig, PreparedPair,
};
use storyreel_train::stage_teacher::TeacherData;
use storyreel_train::{AdamW, AdamWConfig, NamedParams};
use storyreel_world::rng::mix64;

fn pairs_config(teacher: &Path, out: &Path) -> OdePairsConfig {
    OdePairsConfig {
        teacher: teacher.to_path_buf(),
        data: TeacherData { first_seed: 40, stories: 3, width: 32, height: 32 },
        steps: 50,
        guidance: Some(2.0),
        shard_stories: 2,
        out_dir: out.to_path_buf(),
        progress: false,
        ..OdePairsConfig::default()
    }
}

#[test]
fn pairs_are_the_teachers_trajectory_and_a_stopped_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher(dir.path());
    let out = dir.path().join("pairs");
    let cfg = pairs_config(&teacher, &out);
    let report = make_ode_pairs(&cfg).unwrap();
    assert!(report.pairs >= 6, "three stories of ≥ 2 shots: {}", report.pairs);
    let (index, pairs) = load_ode_pairs(&out).unwrap();
    assert_eq!(index.shards.len(), 2);
    assert_eq!(index.timesteps.len(), 4);
    assert_eq!(pairs.len(), report.pairs);

    // Pair 1 (story 40, shot 1) is exactly what the teacher samples from the same noise and
    // context, and its first state is that noise (t = 1000).
    let model = StoryModel::load(&teacher, &Device::Cpu).unwrap();
    let p = pairs.iter().find(|p| p.shot == 1).unwrap();
    assert_eq!(p.x0.dim(0).unwrap() % 3, 0, "whole chunks");
    let dims = p.x0.dims().to_vec();
    let noise = SeededNoise::new(mix64(cfg.seed ^ p.story_seed)).noise(1, 0, 0, &dims, &Device::Cpu).unwrap();
    let first = (p.states.get(0).unwrap() - &noise).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(first.to_scalar::<f32>().unwrap(), 0.0);
    let captions = model.dit.embed_captions(&caption_embeddings(&model.text, &p.global, &p.captions).unwrap()).unwrap();
    let uncond = unconditional_caption(&model.dit, &Device::Cpu).unwrap();
    let plan = ShotPlan::new(1, &p.flags, 2).unwrap();
    let inputs = TeacherInputs {
        plan: &plan,
        captions: &captions,
        uncond: Some(&uncond),
        context: &p.context,
        clean_context: false,
        context_channels: false,
    };
    let sampler = EulerSampler::new(50, 8.0, 2.0).unwrap();
    let mut seen = Vec::new();
    let x0 = sample_shot(
        &model.dit,
        &inputs,
        &sampler,
        noise,
        &mut |i, x| {
            if [13, 25, 37].contains(&i) {
                seen.push(x.clone());
            }
            Ok(())
        },
        &|| false,
    )
    .unwrap();
    let d = (x0 - &p.x0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "{d}");
    for (i, s) in seen.iter().enumerate() {
        let d = (s - p.states.get(i + 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
    }
    // Context came from the story's earlier shot (the teacher trained with context).
    assert!(
        p.flags.iter().all(|&f| f == 0)
            && p.context.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0
    );

    // A run stopped after its first shard finishes the second to the same bytes.
    let second = std::fs::read(out.join("shard-00001.safetensors")).unwrap();
    let mut idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ode_pairs.json")).unwrap()).unwrap();
    let first_shard_pairs =
        serde_json::from_str::<Vec<serde_json::Value>>(&std::fs::read_to_string(out.join("shard-00000.json")).unwrap())
            .unwrap()
            .len();
    idx["shards"] = serde_json::json!(["shard-00000"]);
    idx["pairs"] = serde_json::json!(first_shard_pairs);
    std::fs::write(out.join("ode_pairs.json"), idx.to_string()).unwrap();
    std::fs::remove_file(out.join("shard-00001.safetensors")).unwrap();
    let resumed = make_ode_pairs(&cfg).unwrap();
    assert_eq!(resumed.pairs, report.pairs);
    assert_eq!(resumed.new_pairs, report.pairs - first_shard_pairs);
    assert_eq!(std::fs::read(out.join("shard-00001.safetensors")).unwrap(), second);

    // Other settings never mix into the same folder.
    let other = OdePairsConfig { seed: 5, ..cfg.clone() };
    let err = make_ode_pairs(&other).unwrap_err().to_string();
    assert!(err.contains("another teacher or other settings"), "{err}");
}

#[test]
fn bad_pair_settings_and_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = pairs_config(&dir.path().join("no-teacher"), &dir.path().join("pairs"));
    let err = make_ode_pairs(&cfg).unwrap_err().to_string();
    assert!(err.contains("no-teacher"), "{err}");
    let cfg = OdePairsConfig { student_steps: vec![500, 740], ..OdePairsConfig::default() };
    assert!(cfg.validate().unwrap_err().to_string().contains("decreasing"));
    let cfg = OdePairsConfig {
        data: TeacherData { first_seed: storyreel_world::BENCHMARK_SEED_BASE, ..TeacherData::default() },
        ..OdePairsConfig::default()
    };
    assert!(cfg.validate().is_err(), "benchmark seeds are refused");
    let err = load_ode_pairs(&dir.path().join("nothing")).unwrap_err().to_string();
    assert!(err.contains("ode-pairs"), "{err}");
    // A folder whose shard is damaged names the file.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("ode_pairs.json"),
        r#"{"key": "k", "timesteps": [1000.0], "student_steps": [1000], "shift": 8.0, "chunk_frames": 3,
            "shards": ["shard-00000"], "pairs": 1, "seconds": 0.0}"#,
    )
    .unwrap();
    std::fs::write(broken.join("shard-00000.json"), "[{\"story_seed\": ").unwrap();
    let err = load_ode_pairs(&broken).unwrap_err().to_string();
    assert!(err.contains("shard-00000.json"), "{err}");
    std::fs::write(broken.join("ode_pairs.json"), "not json").unwrap();
    assert!(load_ode_pairs(&broken).unwrap_err().to_string().contains("ode_pairs.json"));
}

#[test]
fn ode_init_regresses_the_pairs_and_writes_a_student_that_generates() {
    let dir = tempfile::tempdir().unwrap();
    let teacher_dir = tiny_teacher(dir.path());
    let pairs_dir = dir.path().join("pairs");
    let cfg = OdePairsConfig {
        steps: 50,
        data: TeacherData { stories: 2, ..pairs_config(&teacher_dir, &pairs_dir).data },
        ..pairs_config(&teacher_dir, &pairs_dir)
    };
    make_ode_pairs(&cfg).unwrap();
    let (index, pairs) = load_ode_pairs(&pairs_dir).unwrap();
    let teacher = StoryModel::load(&teacher_dir, &Device::Cpu).unwrap();
    let prepared: Vec<PreparedPair> = pairs
        .into_iter()
        .map(|pair| {
            let embeddings = caption_embeddings(&teacher.text, &pair.global, &pair.captions).unwrap();
            PreparedPair { pair, embeddings }
        })
        .collect();

    // Draws: every chunk index in range, never all clean, captions dropped at about the rate.
    let mut dropped = 0;
    for i in 0..2000 {
        let d = draw_ode_sample(3, i, &prepared, 3, 4, 0.1);
        assert_eq!(d.states.len() * 3, prepared[d.pair].pair.x0.dim(0).unwrap());
        assert!(d.states.iter().all(|&s| s <= 4) && d.states.iter().any(|&s| s < 4));
        dropped += d.caption_dropped as usize;
    }
    assert!((150..250).contains(&dropped), "{dropped}");

    // A few AdamW steps on one sample lower its loss.
    let varmap = candle_nn::VarMap::new();
    let student = trainable_dit(&teacher, true, &varmap, &Device::Cpu).unwrap();
    let sampler = FewStepSampler::new(&index.student_steps, index.shift).unwrap();
    let draw = draw_ode_sample(0, 0, &prepared, 3, 4, 0.0);
    let mut opt = AdamW::new(&NamedParams::from_varmap(&varmap), AdamWConfig::default()).unwrap();
    let (_, before) = ode_regression_loss(&student, &prepared[draw.pair], &draw, &sampler, 3).unwrap();
    for _ in 0..15 {
        let (loss, _) = ode_regression_loss(&student, &prepared[draw.pair], &draw, &sampler, 3).unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, 3e-3).unwrap();
    }
    let (_, after) = ode_regression_loss(&student, &prepared[draw.pair], &draw, &sampler, 3).unwrap();
    assert!(after < 0.7 * before, "{before} -> {after}");

    // The stage writes a student model folder that streams a two-shot story with context.
    let mut init = OdeInitConfig {
        teacher: teacher_dir.clone(),
        pairs: vec![pairs_dir.clone()],
        steps: 3,
        ..OdeInitConfig::default()
    };
    init.train.out_dir = dir.path().join("ode-init");
    init.train.progress = false;
    let report = run_ode_init_stage(&init).unwrap();
    assert_eq!(report.steps, 3);
    let student = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    assert_eq!(student.card.kind, ModelKind::Student);
    assert_eq!(student.card.student.as_ref().unwrap().steps, vec![1000, 740, 500, 260]);
    let shots = vec![
        ShotRequest { caption: "a red fox walks in a meadow".into(), frames: 17 },
        ShotRequest { caption: "the same red fox jumps".into(), frames: 9 },
    ];
    let got = std::cell::RefCell::new(Vec::new());
    let events = std::cell::RefCell::new(Vec::new());
    let streamed = std::cell::RefCell::new(Vec::new());
    let options = StoryOptions {
        seed: 1,
        memory: Box::new(DynamicSampling { max_frames: 6 }),
        sampler: EulerSampler::new(2, 8.0, 2.0).unwrap(),
        decoder: None,
    };
    generate_story(
        &student,
        "",
        &shots,
        options,
        StoryEvents {
            on_frames: &mut |shot, frames| {
                events.borrow_mut().push(format!("frames {shot} {}", frames.dim(0).unwrap()));
                streamed.borrow_mut().push(frames.clone());
                Ok(())
            },
            on_shot: &mut |s| {
                events.borrow_mut().push(format!("shot {}", s.shot));
                got.borrow_mut().push((s.frames.dims().to_vec(), s.context.len()));
                // The streamed chunks are the shot, frame for frame.
                let parts: Vec<Tensor> = streamed.borrow_mut().drain(..).collect();
                let joined = Tensor::cat(&parts, 0).unwrap();
                let d = (joined - &s.frames).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert_eq!(d, 0.0);
                Ok(())
            },
            on_progress: &mut |shot, chunk, n| events.borrow_mut().push(format!("chunk {shot} {chunk}/{n}")),
            cancelled: &|| false,
        },
    )
    .unwrap();
    assert_eq!(got.into_inner(), vec![(vec![17, 3, 32, 32], 0), (vec![9, 3, 32, 32], 6)]);
    // Each chunk's frames are out before the next chunk is denoised: 17 frames = 5 latents in
    // two 3-latent chunks (1 + 4·2 = 9 frames, then 4·2 = 8; the padding latent is not
    // decoded); 9 frames = 3 latents in one chunk.
    assert_eq!(
        events.into_inner(),
        ["chunk 0 1/2", "frames 0 9", "chunk 0 2/2", "frames 0 8", "shot 0", "chunk 1 1/1", "frames 1 9", "shot 1"]
    );
    assert!(student.card.shot_phase && student.dit.rope().config().shot_phase.is_some());

    // The no-phase ablation: the card says so and the loaded DiT turns no shot phase, so the
    // same pair's loss no longer depends on the context's shot flags.
    let mut ablation = OdeInitConfig { shot_phase: Some(false), ..init.clone() };
    ablation.train.out_dir = dir.path().join("ode-init-no-phase");
    let no_phase = StoryModel::load(&run_ode_init_stage(&ablation).unwrap().model_dir, &Device::Cpu).unwrap();
    assert!(!no_phase.card.shot_phase && no_phase.dit.rope().config().shot_phase.is_none());
    assert!(no_phase.card.description.contains("without the RoPE shot phase"));
    let flagged = prepared.iter().position(|p| p.pair.flags.iter().any(|&f| f != 0)).unwrap();
    let draw = OdeDraw {
        pair: flagged,
        states: vec![0; prepared[flagged].pair.x0.dim(0).unwrap() / 3],
        caption_dropped: false,
    };
    let mut unflagged =
        PreparedPair { pair: prepared[flagged].pair.clone(), embeddings: prepared[flagged].embeddings.clone() };
    unflagged.pair.flags.iter_mut().for_each(|f| *f = 0);
    let loss_of = |model: &StoryModel, p: &PreparedPair| {
        let vars = candle_nn::VarMap::new();
        let dit = trainable_dit(model, model.card.shot_phase, &vars, &Device::Cpu).unwrap();
        ode_regression_loss(&dit, p, &draw, &sampler, 3).unwrap().1
    };
    assert_eq!(loss_of(&no_phase, &prepared[flagged]), loss_of(&no_phase, &unflagged));
    assert_ne!(loss_of(&student, &prepared[flagged]), loss_of(&student, &unflagged));
}

#[test]
fn a_student_keeps_its_teachers_spatial_position() {
    // The embedding has no weights, so only the DiT config carries it from teacher to student.
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher_with(dir.path(), true);
    let student = StoryModel::load(&student_copy(&teacher, dir.path()), &Device::Cpu).unwrap();
    assert_eq!(student.card.kind, ModelKind::Student);
    assert!(student.dit.config().spatial_position);
    let vars = candle_nn::VarMap::new();
    assert!(trainable_dit(&student, true, &vars, &Device::Cpu).unwrap().config().spatial_position);
}

#[test]
fn malformed_shot_phase_and_pairs_settings_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ode-init.json");
    std::fs::write(&path, r#"{"shot_phase": "no"}"#).unwrap();
    let err = OdeInitConfig::read(&path).unwrap_err().to_string();
    assert!(err.contains("ode-init.json") && err.contains("expected a boolean"), "{err}");
    std::fs::write(&path, r#"{"shot_phase": false}"#).unwrap();
    assert_eq!(OdeInitConfig::read(&path).unwrap().shot_phase, Some(false));
    // `pairs` must be a path or a list of paths, and a list must name at least one.
    for bad in [r#"{"pairs": 3}"#, r#"{"pairs": [1, 2]}"#] {
        std::fs::write(&path, bad).unwrap();
        let err = OdeInitConfig::read(&path).unwrap_err().to_string();
        assert!(err.contains("ode-init.json") && err.contains("a pair folder path or a list"), "{bad}: {err}");
    }
    std::fs::write(&path, r#"{"pairs": []}"#).unwrap();
    let err = OdeInitConfig::read(&path).unwrap().validate().unwrap_err().to_string();
    assert!(err.contains("`pairs` lists no ODE pair folder"), "{err}");
}

#[test]
fn pair_folders_made_side_by_side_train_one_student_and_foreign_pairs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = tiny_teacher(&dir.path().join("a"));
    let one_story = |teacher: &Path, name: &str, first_seed: u64| {
        let out = dir.path().join(name);
        let base = pairs_config(teacher, &out);
        let cfg = OdePairsConfig { data: TeacherData { first_seed, stories: 1, ..base.data.clone() }, ..base };
        make_ode_pairs(&cfg).unwrap();
        out
    };
    let (first, second) = (one_story(&teacher, "p40", 40), one_story(&teacher, "p41", 41));
    let (_, a) = load_ode_pairs(&first).unwrap();
    let (_, b) = load_ode_pairs(&second).unwrap();
    let (index, both) = load_ode_pair_folders(&[first.clone(), second.clone()]).unwrap();
    assert_eq!(both.len(), a.len() + b.len());
    assert_eq!(index.timesteps.len(), 4);

    // The same shots twice would count twice.
    let err = load_ode_pair_folders(&[first.clone(), first.clone()]).unwrap_err().to_string();
    assert!(err.contains("in both"), "{err}");
    // Pairs of another teacher (same shapes, other weights) are named as such.
    let other_teacher = tiny_teacher_with(&dir.path().join("b"), true);
    let foreign = one_story(&other_teacher, "p42", 42);
    let err = load_ode_pair_folders(&[first.clone(), foreign.clone()]).unwrap_err().to_string();
    assert!(err.contains("different teachers"), "{err}");
    let mut init =
        OdeInitConfig { teacher: teacher.clone(), pairs: vec![foreign], steps: 1, ..OdeInitConfig::default() };
    init.train.out_dir = dir.path().join("ode-init-foreign");
    init.train.progress = false;
    let err = run_ode_init_stage(&init).unwrap_err().to_string();
    assert!(err.contains("were made from"), "{err}");

    // A config names one folder or a list; the stage trains on every pair of the list.
    let cfg_path = dir.path().join("init.json");
    std::fs::write(&cfg_path, format!("{{\"pairs\": {:?}}}", first.display().to_string())).unwrap();
    assert_eq!(OdeInitConfig::read(&cfg_path).unwrap().pairs, vec![first.clone()]);
    let list = serde_json::json!({ "pairs": [first, second] });
    std::fs::write(&cfg_path, list.to_string()).unwrap();
    let listed = OdeInitConfig::read(&cfg_path).unwrap().pairs;
    assert_eq!(listed.len(), 2);
    let mut init = OdeInitConfig { teacher, pairs: listed, steps: 1, ..OdeInitConfig::default() };
    init.train.out_dir = dir.path().join("ode-init");
    init.train.progress = false;
    assert_eq!(run_ode_init_stage(&init).unwrap().pairs, both.len());
}

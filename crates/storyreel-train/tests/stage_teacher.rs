//! Stage `teacher` at a tiny size: the loss falls on a fixed sample, dropout rates are what the
//! config says, a run writes a story model folder that generates a story, and resuming from a
//! checkpoint reproduces the uninterrupted run exactly.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use common::assert_model_is_the_checkpoint_ema;
use storyreel_engine::context::{CaptionMatch, ContextMemory, ContextQuery, NoContext};
use storyreel_engine::FlowSchedule;
use storyreel_engine::{generate_story, EulerSampler, ShotRequest, StoryEvents, StoryModel, StoryOptions};
use storyreel_nn::text::toy::ToyTextConfig;
use storyreel_nn::vae::WanVae;
use storyreel_train::stage_teacher::{
    draw_images, draw_sample, image_loss, run_teacher_stage, teacher_loss, timestep_weights, EncodedStory, ImageSample,
    ImageSource, TeacherCorpus, TeacherData, TeacherNetworks, TeacherSample, TeacherStageConfig, TimestepWeighting,
};
use storyreel_train::stage_vae::ToyVaeShape;
use storyreel_train::{AdamW, AdamWConfig, NamedParams};

/// A random toy VAE (4 latent channels, 4× spatial) saved under `dir`.
fn write_vae(dir: &Path) -> WanVae {
    let cfg = ToyVaeShape { z_dim: 4, base_dim: 4, ..ToyVaeShape::default() }.config();
    let vae = WanVae::random(&cfg, true, 3, DType::F32, &Device::Cpu).unwrap();
    vae.save(dir).unwrap();
    vae
}

fn tiny(vae: &Path, out: &Path, steps: u64) -> TeacherStageConfig {
    let mut cfg = TeacherStageConfig {
        vae: vae.to_path_buf(),
        dit: common::tiny_dit(),
        text: ToyTextConfig { dim: 16, text_len: 64, layers: 1, heads: 2, ffn_dim: 32 },
        data: TeacherData { first_seed: 11, stories: 3, width: 32, height: 32 },
        steps,
        ..TeacherStageConfig::default()
    };
    cfg.sampler.steps = 2;
    cfg.train.out_dir = out.to_path_buf();
    cfg.train.checkpoint_every = 2;
    cfg.train.progress = false;
    cfg.train.schedule.warmup_steps = 1;
    cfg
}

/// Progress reports of a generation: (shot, step, steps).
type StepReports = Vec<(usize, usize, usize)>;

/// Generates a two-shot story (5 and 9 frames) with `model` and `memory`: each shot's frame
/// dimensions, and every (shot, step, steps) progress report.
fn generate_two_shots(model: &StoryModel, memory: Box<dyn ContextMemory>) -> (Vec<Vec<usize>>, StepReports) {
    let shots = vec![
        ShotRequest { caption: "a red fox walks in a meadow".into(), frames: 5 },
        ShotRequest { caption: "the same red fox jumps".into(), frames: 9 },
    ];
    let options = StoryOptions { seed: 1, sampler: EulerSampler::new(2, 8.0, 2.0).unwrap(), memory, decoder: None };
    let (mut got, mut steps) = (Vec::new(), Vec::new());
    generate_story(
        model,
        "",
        &shots,
        options,
        StoryEvents {
            on_frames: &mut |_, _| Ok(()),
            on_shot: &mut |s| {
                got.push(s.frames.dims().to_vec());
                Ok(())
            },
            on_progress: &mut |shot, step, n| steps.push((shot, step, n)),
            cancelled: &|| false,
        },
    )
    .unwrap();
    (got, steps)
}

/// A trained two-step tiny teacher under `dir/first`, with its VAE under `dir/vae`.
fn first_teacher(dir: &Path) -> (std::path::PathBuf, storyreel_train::stage_teacher::TeacherStageReport) {
    let vae_dir = dir.join("vae");
    write_vae(&vae_dir);
    let first = run_teacher_stage(&tiny(&vae_dir, &dir.join("first"), 2)).unwrap();
    (vae_dir, first)
}

/// The tiny stage's encoded corpus and fresh networks (z = 4) on one set of variables.
fn tiny_networks() -> (TeacherCorpus, VarMap, TeacherNetworks) {
    let dir = tempfile::tempdir().unwrap();
    let vae = write_vae(&dir.path().join("vae"));
    let cfg = tiny(&dir.path().join("vae"), &dir.path().join("run"), 1);
    let corpus = TeacherCorpus::encode(&vae, &cfg.data, cfg.context_frames, &cfg.context_policy, false).unwrap();
    let varmap = VarMap::new();
    let nets = TeacherNetworks::trainable(&cfg, 4, &varmap, &Device::Cpu).unwrap();
    (corpus, varmap, nets)
}

/// [`tiny_networks`] with a non-zero output head, so that gradients below it are not all zero.
fn tiny_networks_with_a_live_head() -> (TeacherCorpus, VarMap, TeacherNetworks) {
    let (corpus, varmap, nets) = tiny_networks();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.contains("head.head.weight") {
            var.set(&(var.as_tensor().ones_like().unwrap() * 0.05).unwrap()).unwrap();
        }
    }
    (corpus, varmap, nets)
}

/// A sample of shot 1 of `story` with its context and caption, at table index `table_index`.
fn second_shot(story: &EncodedStory, table_index: usize, noise_seed: u64) -> TeacherSample<'_> {
    TeacherSample {
        story,
        shot: 1,
        table_index,
        caption_dropped: false,
        context_dropped: false,
        target_frames: None,
        noise_seed,
    }
}

#[test]
fn timestep_weights_follow_the_recipe() {
    let schedule = FlowSchedule::new(1000, 8.0);
    let w = timestep_weights(schedule.timesteps());
    let mean = w.iter().map(|&x| x as f64).sum::<f64>() / w.len() as f64;
    assert!((mean - 1.0).abs() < 1e-4, "mean {mean}");
    assert!(w.iter().cloned().fold(f32::INFINITY, f32::min).abs() < 1e-6, "the minimum is subtracted");
    let peak = schedule.timesteps().iter().zip(&w).max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    assert!((peak - 500.0).abs() < 5.0, "weights peak at t = 500, found {peak}");
    assert_eq!(TimestepWeighting::Shotstream.weights(schedule.timesteps()), w);
    assert!(TimestepWeighting::Uniform.weights(schedule.timesteps()).iter().all(|&x| x == 1.0));
}

#[test]
fn dropout_rates_are_respected() {
    let shots = [2usize, 5, 8, 3];
    let n = 20_000u64;
    let (mut caption, mut context) = (0usize, 0usize);
    let mut seen_shot = [false; 8];
    for i in 0..n {
        let (story, shot, t, c, x) = draw_sample(7, i, &shots, 1000, 0.1, 0.25);
        assert!(story < shots.len() && shot < shots[story] && t < 1000);
        seen_shot[shot] = true;
        caption += c as usize;
        context += x as usize;
    }
    let (pc, px) = (caption as f64 / n as f64, context as f64 / n as f64);
    // Three standard deviations of a binomial at n = 20 000 are under 0.01.
    assert!((pc - 0.1).abs() < 0.01, "caption dropout {pc}");
    assert!((px - 0.25).abs() < 0.01, "context dropout {px}");
    assert!(seen_shot.iter().all(|&s| s), "every target shot index is drawn");
    assert_eq!(draw_sample(7, 123, &shots, 1000, 0.1, 0.1), draw_sample(7, 123, &shots, 1000, 0.1, 0.1));
    for i in 0..1000 {
        let (_, _, _, c, x) = draw_sample(7, i, &shots, 1000, 0.0, 0.0);
        assert!(!c && !x, "zero rates never drop");
    }
}

#[test]
fn a_few_steps_reduce_the_loss_on_a_fixed_sample() {
    let (corpus, varmap, nets) = tiny_networks();
    let schedule = FlowSchedule::new(1000, 8.0);
    let weights = timestep_weights(schedule.timesteps());
    let story = corpus.stories.iter().find(|s| s.shots.len() > 1).expect("a story with two shots");
    let sample = second_shot(story, 400, 5);
    let mut opt = AdamW::new(&NamedParams::from_varmap(&varmap), AdamWConfig::default()).unwrap();
    let first = teacher_loss(&nets, &sample, &schedule, &weights, 6).unwrap();
    let mut last = first.mse;
    for _ in 0..15 {
        let loss = teacher_loss(&nets, &sample, &schedule, &weights, 6).unwrap();
        last = loss.mse;
        let grads = loss.total.backward().unwrap();
        opt.step(&grads, 3e-3).unwrap();
    }
    assert!(last < first.mse * 0.8, "loss {} -> {last}", first.mse);
}

#[test]
fn image_samples_are_single_frames_under_their_own_shot_prompt() {
    let (corpus, varmap, nets) = tiny_networks();
    let images = corpus.images().unwrap();
    let shots: usize = corpus.stories.iter().map(|s| s.shots.len()).sum();
    let first: Vec<_> = images.iter().filter(|i| i.source == ImageSource::FirstFrame).collect();
    assert_eq!(first.len(), shots, "every shot's first latent");
    assert!(images.len() > shots, "context latents are images too");
    for image in &images {
        let z = corpus.image_latent(image).unwrap();
        assert_eq!(z.dim(0).unwrap(), 1);
        let nonzero = z.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0;
        assert!(nonzero, "padding is not an image: {image:?}");
        assert!(image.shot < corpus.stories[image.story].captions.len());
        if let ImageSource::Context { target, .. } = image.source {
            assert!(image.shot < target, "a context frame comes from an earlier shot");
        }
    }

    // Draws are pure, in range, and drop captions at the configured rate.
    let draws = draw_images(3, 9, 20_000, images.len(), 1000, 0.1);
    assert_eq!(draws, draw_images(3, 9, 20_000, images.len(), 1000, 0.1));
    assert!(draws.iter().all(|&(i, t, _)| i < images.len() && t < 1000));
    let dropped = draws.iter().filter(|d| d.2).count() as f64 / draws.len() as f64;
    assert!((dropped - 0.1).abs() < 0.01, "caption dropout {dropped}");

    // A batch is the mean of its samples run one by one, and a few steps lower it.
    let schedule = FlowSchedule::new(1000, 8.0);
    let latents: Vec<_> = images.iter().take(3).map(|i| corpus.image_latent(i).unwrap()).collect();
    let samples: Vec<ImageSample<'_>> = images
        .iter()
        .take(3)
        .zip(&latents)
        .enumerate()
        .map(|(j, (i, latent))| ImageSample {
            latent,
            story: &corpus.stories[i.story],
            shot: i.shot,
            caption_dropped: j == 1,
            table_index: 300 * j + 50,
            noise_seed: j as u64,
        })
        .collect();
    let (_, batched) = image_loss(&nets, &samples, &schedule).unwrap();
    let alone: f64 =
        samples.iter().map(|s| image_loss(&nets, std::slice::from_ref(s), &schedule).unwrap().1).sum::<f64>() / 3.0;
    assert!((batched - alone).abs() < 1e-5 * alone.max(1.0), "batched {batched}, one by one {alone}");
    let mut opt = AdamW::new(&NamedParams::from_varmap(&varmap), AdamWConfig::default()).unwrap();
    let mut last = batched;
    for _ in 0..15 {
        let (loss, value) = image_loss(&nets, &samples, &schedule).unwrap();
        last = value;
        opt.step(&loss.backward().unwrap(), 3e-3).unwrap();
    }
    assert!(last < batched * 0.8, "loss {batched} -> {last}");
    assert!(image_loss(&nets, &[], &schedule).is_err());
}

#[test]
fn a_run_writes_a_story_model_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let out = dir.path().join("run");
    let report = run_teacher_stage(&tiny(&dir.path().join("vae"), &out, 4)).unwrap();
    assert_eq!(report.steps, 4);
    assert!(report.final_loss.is_finite());
    let log = std::fs::read_to_string(out.join("train.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 4);

    // The folder is a story model that generates a two-shot story from its own context.
    let model = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    assert!(model.card.uses_context && model.card.shot_phase);
    let (got, steps) = generate_two_shots(&model, Box::new(NoContext));
    assert_eq!(steps, vec![(0, 1, 2), (0, 2, 2), (1, 1, 2), (1, 2, 2)]);
    assert_eq!(got, vec![vec![5, 3, 32, 32], vec![9, 3, 32, 32]]);

    // Interrupted after the step-2 checkpoint, the run resumes there and ends bit-identical.
    let weights = std::fs::read(report.model_dir.join("dit/model.safetensors")).unwrap();
    let text = std::fs::read(report.model_dir.join("text/toy_text.safetensors")).unwrap();
    std::fs::remove_dir_all(out.join("checkpoints/step-4")).unwrap();
    std::fs::remove_dir_all(&report.model_dir).unwrap();
    let resumed = run_teacher_stage(&tiny(&dir.path().join("vae"), &out, 4)).unwrap();
    assert_eq!(resumed.steps, 4);
    assert_eq!(std::fs::read(resumed.model_dir.join("dit/model.safetensors")).unwrap(), weights, "DiT differs");
    assert_eq!(std::fs::read(resumed.model_dir.join("text/toy_text.safetensors")).unwrap(), text, "text differs");
    let log: Vec<String> =
        std::fs::read_to_string(out.join("train.jsonl")).unwrap().lines().map(String::from).collect();
    assert_eq!(log.len(), 4, "{log:?}");
}

#[test]
fn with_an_ema_the_model_is_the_average_and_the_last_step_is_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let out = dir.path().join("run");
    let mut cfg = tiny(&dir.path().join("vae"), &out, 3);
    cfg.train.ema = Some(storyreel_train::EmaConfig { decay: 0.5, start_step: 0 });
    let report = run_teacher_stage(&cfg).unwrap();
    assert_eq!(report.ema_decay, Some(0.5));
    // Step 3 is not a multiple of checkpoint_every (2), so the export wrote it first.
    assert_model_is_the_checkpoint_ema(&report.model_dir, &out.join("checkpoints/step-3"), 0.5);
}

#[test]
fn a_caption_policy_run_picks_context_by_caption_and_says_so_on_its_card() {
    let dir = tempfile::tempdir().unwrap();
    let vae = write_vae(&dir.path().join("vae"));
    let mut cfg = tiny(&dir.path().join("vae"), &dir.path().join("run"), 1);
    cfg.data.stories = 4;
    cfg.context_policy = "caption".into();
    let caption = TeacherCorpus::encode(&vae, &cfg.data, cfg.context_frames, "caption", false).unwrap();
    let dynamic = TeacherCorpus::encode(&vae, &cfg.data, cfg.context_frames, "dynamic", false).unwrap();
    let policy = CaptionMatch { max_frames: cfg.context_frames };
    let options = storyreel_train::data::story_options(cfg.data.width, cfg.data.height);
    let mut differ = 0;
    for (i, (enc, dyn_enc)) in caption.stories.iter().zip(&dynamic.stories).enumerate() {
        let story = storyreel_world::generate_story(cfg.data.first_seed + i as u64, &options).unwrap();
        for k in 1..story.shots.len() {
            let lens: Vec<usize> = story.shots[..k].iter().map(|s| s.frames).collect();
            let want: Vec<i64> = policy
                .select(&ContextQuery::with_captions(&lens, &enc.captions[..=k]).with_global(&enc.global))
                .iter()
                .map(|p| p.shot as i64)
                .collect();
            let got = &enc.contexts[k].as_ref().unwrap().1;
            assert_eq!(got, &want, "story {i} shot {k}: {:?}", &enc.captions[..=k]);
            differ += usize::from(got != &dyn_enc.contexts[k].as_ref().unwrap().1);
        }
    }
    assert!(differ > 0, "caption matching picked as dynamic sampling on every shot");

    // A run's card carries the policy, so `generate` picks the same way by default.
    let report = run_teacher_stage(&cfg).unwrap();
    let model = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    assert_eq!(model.card.context_policy, "caption");
    assert_eq!(model.card.default_context_policy(), "caption");
    let card_text = std::fs::read_to_string(report.model_dir.join("storyreel_model.json")).unwrap();
    assert!(card_text.contains(r#""context_policy": "caption""#), "{card_text}");
    // The corpus is keyed by policy: the same run dir with dynamic sampling encodes afresh.
    let key_text = std::fs::read_to_string(dir.path().join("run/latents/latents.json")).unwrap();
    assert!(key_text.contains("policy:caption r2"), "corpus key does not name the policy and its revision");
    let mut no_ctx = cfg.clone();
    no_ctx.use_context = false;
    no_ctx.train.out_dir = dir.path().join("run-noctx");
    let report = run_teacher_stage(&no_ctx).unwrap();
    let card = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap().card;
    assert_eq!(card.default_context_policy(), "none", "a model trained without context runs without");
    let mut bad = cfg.clone();
    bad.context_policy = "first-frame".into();
    assert!(bad.validate().unwrap_err().to_string().contains("context_policy"));
}

#[test]
fn a_clean_context_teacher_trains_with_its_context_at_t0_and_says_so_on_its_card() {
    let (corpus, varmap, mut nets) = tiny_networks();
    assert!(!nets.clean_context, "ShotStream's teacher is the default");
    let schedule = FlowSchedule::new(1000, 8.0);
    let weights = timestep_weights(schedule.timesteps());
    let story = corpus.stories.iter().find(|s| s.shots.len() > 1).expect("a story with two shots");
    let sample = second_shot(story, 900, 3);
    // A fresh teacher's output head is zero, so train a little before comparing flows.
    let mut opt = AdamW::new(&NamedParams::from_varmap(&varmap), AdamWConfig::default()).unwrap();
    for _ in 0..3 {
        let grads = teacher_loss(&nets, &sample, &schedule, &weights, 6).unwrap().total.backward().unwrap();
        opt.step(&grads, 3e-3).unwrap();
    }
    let at_target = teacher_loss(&nets, &sample, &schedule, &weights, 6).unwrap().mse;
    nets.clean_context = true;
    let clean = teacher_loss(&nets, &sample, &schedule, &weights, 6).unwrap().mse;
    assert!((clean - at_target).abs() > 1e-7, "the training loss must see the context's timestep");

    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let mut cfg = tiny(&dir.path().join("vae"), &dir.path().join("run"), 1);
    cfg.clean_context = true;
    let report = run_teacher_stage(&cfg).unwrap();
    assert!(StoryModel::load(&report.model_dir, &Device::Cpu).unwrap().card.clean_context);
    let card_text = std::fs::read_to_string(report.model_dir.join("storyreel_model.json")).unwrap();
    assert!(card_text.contains(r#""clean_context": true"#), "{card_text}");
}

/// A story whose target shot is one colour that only its context shows: `(context, x0)` with
/// every latent of both the per-channel colour drawn from `seed`.
fn one_colour_story(seed: u64, frames: usize) -> (candle_core::Tensor, candle_core::Tensor) {
    use storyreel_engine::{NoiseSource, SeededNoise};
    let colour = SeededNoise::new(seed).noise(0, 0, 0, &[1, 4, 1, 1], &Device::Cpu).unwrap();
    (
        colour.broadcast_as((6, 4, 4, 4)).unwrap().contiguous().unwrap(),
        colour.broadcast_as((frames, 4, 4, 4)).unwrap().contiguous().unwrap(),
    )
}

#[test]
fn the_teacher_learns_to_copy_what_only_its_context_shows() {
    // The whole context path (concatenation, RoPE phases and positions, caption routing, the
    // flow head) must be able to carry a look from the context frames to the target: here the
    // target is a colour that nothing else gives away, so at t = 990 a model that reads its
    // context removes most of the loss and one that cannot is stuck at the colours' variance.
    use storyreel_engine::teacher::{teacher_flow, TeacherInputs};
    use storyreel_engine::{FlowBranch, NoiseSource, SeededNoise, ShotPlan};
    for clean_context in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny(&dir.path().join("vae"), &dir.path().join("run"), 1);
        cfg.clean_context = clean_context;
        let varmap = VarMap::new();
        let nets = TeacherNetworks::trainable(&cfg, 4, &varmap, &Device::Cpu).unwrap();
        let plan = ShotPlan::new(1, &[0; 6], 2).unwrap();
        let text = nets.dit.config().text_dim;
        let blank = candle_core::Tensor::zeros((2, cfg.text.text_len, text), DType::F32, &Device::Cpu).unwrap();
        let captions = nets.dit.embed_captions(&blank).unwrap();
        let loss_at = |story: u64, context_of: u64, t: f32| {
            let (_, x0) = one_colour_story(story, 2);
            let (context, _) = one_colour_story(context_of, 2);
            let eps = SeededNoise::new(story ^ 0x5eed).noise(0, 0, 0, x0.dims(), &Device::Cpu).unwrap();
            let sigma = t as f64 / 1000.0;
            let x_t = ((&x0 * (1.0 - sigma)).unwrap() + (&eps * sigma).unwrap()).unwrap();
            let inputs = TeacherInputs {
                plan: &plan,
                captions: &captions,
                uncond: None,
                context: &context,
                clean_context,
                context_channels: false,
            };
            let v = teacher_flow(&nets.dit, &inputs, &x_t, t, FlowBranch::Conditional).unwrap();
            (v - (eps - x0).unwrap()).unwrap().sqr().unwrap().mean_all().unwrap()
        };
        let mut opt = AdamW::new(&NamedParams::from_varmap(&varmap), AdamWConfig::default()).unwrap();
        for step in 0..300u64 {
            let t = 800.0 + (step % 20) as f32 * 10.0;
            let grads = loss_at(step, step, t).backward().unwrap();
            opt.step(&grads, 3e-3).unwrap();
        }
        let mean = |context_shift: u64| {
            (0..32u64)
                .map(|i| loss_at(10_000 + i, 10_000 + i + context_shift, 990.0).to_scalar::<f32>().unwrap())
                .sum::<f32>()
                / 32.0
        };
        let (own, other) = (mean(0), mean(1));
        assert!(own < 0.5 * other, "clean_context {clean_context}: own context {own}, another story's {other}");
    }
}

#[test]
fn bad_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = tiny(&dir.path().join("no-vae"), &dir.path().join("run"), 2);
    let err = run_teacher_stage(&missing).unwrap_err().to_string();
    assert!(err.contains("no-vae"), "{err}");
    let mut bench = tiny(&dir.path().join("vae"), &dir.path().join("run"), 2);
    bench.data.first_seed = storyreel_world::BENCHMARK_SEED_BASE + 3;
    assert!(bench.validate().unwrap_err().to_string().contains("benchmark"));
    let mut p = tiny(&dir.path().join("vae"), &dir.path().join("run"), 2);
    p.caption_dropout = 1.5;
    assert!(p.validate().unwrap_err().to_string().contains("caption_dropout"));
    p.caption_dropout = 0.1;
    p.low_noise_shift = Some(-3.0);
    assert!(p.validate().unwrap_err().to_string().contains("low_noise_shift"));
    p.low_noise_shift = Some(3.0);
    p.low_noise_share = 2.0;
    assert!(p.validate().unwrap_err().to_string().contains("low_noise_share"));
    p.low_noise_share = 0.5;
    p.image_shift = 0.0;
    assert!(p.validate().unwrap_err().to_string().contains("image_shift"));
    p.image_shift = 8.0;
    p.image_samples = 100_000;
    assert!(p.validate().unwrap_err().to_string().contains("image_samples"));
    p.image_samples = 4;
    p.image_weight = f64::NAN;
    assert!(p.validate().unwrap_err().to_string().contains("image_weight"));
    let typo = dir.path().join("t.json");
    std::fs::write(&typo, r#"{"context_dropuot": 0.2}"#).unwrap();
    assert!(TeacherStageConfig::read(&typo).unwrap_err().to_string().contains("context_dropuot"));
    let toml = dir.path().join("t.toml");
    std::fs::write(&toml, "steps = 7\ncaption_dropout = 0.2\n[data]\nstories = 5\n").unwrap();
    let cfg = TeacherStageConfig::read(&toml).unwrap();
    assert_eq!((cfg.steps, cfg.caption_dropout, cfg.data.stories), (7, 0.2, 5));
    // Keys left out keep the stage's defaults, also inside a table the file only partly sets.
    std::fs::write(&toml, "[train]\nprogress = false\n").unwrap();
    let cfg = TeacherStageConfig::read(&toml).unwrap();
    assert!(!cfg.train.progress);
    assert_eq!(cfg.train.schedule, TeacherStageConfig::default().train.schedule);
    std::fs::write(&toml, "timestep_weighting = \"shotstream\"\n").unwrap();
    assert_eq!(TeacherStageConfig::read(&toml).unwrap().timestep_weighting, TimestepWeighting::Shotstream);
    std::fs::write(&toml, "timestep_weighting = \"sigmoid\"\n").unwrap();
    assert!(TeacherStageConfig::read(&toml).unwrap_err().to_string().contains("sigmoid"));
}

#[test]
fn every_teacher_weight_receives_a_gradient() {
    // Regression: a fused softmax without a backward once cut the gradient to every query and
    // key weight, and the loss still fell (values and FFNs trained), so only this check shows it.
    let (corpus, varmap, nets) = tiny_networks_with_a_live_head();
    let schedule = FlowSchedule::new(1000, 8.0);
    let weights = vec![1.0; 1000];
    let story = corpus.stories.iter().find(|s| s.shots.len() > 1).expect("a story with two shots");
    let sample = TeacherSample {
        story,
        shot: 1,
        table_index: 500,
        caption_dropped: false,
        context_dropped: false,
        target_frames: None,
        noise_seed: 2,
    };
    let grads = teacher_loss(&nets, &sample, &schedule, &weights, 6).unwrap().total.backward().unwrap();
    let mut dead = Vec::new();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        // Key biases shift every score of a query alike, so softmax makes their gradient zero.
        if name.ends_with("k.bias") || name.contains("qkv.bias") {
            continue;
        }
        let moved = grads
            .get(var.as_tensor())
            .map(|g| g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0)
            .unwrap_or(false);
        if !moved {
            dead.push(name.clone());
        }
    }
    dead.sort();
    assert!(dead.is_empty(), "weights without a gradient: {dead:?}");
}

#[test]
fn the_caption_check_tells_a_text_blind_model_from_a_reading_one() {
    use storyreel_train::caption_check::{caption_check, CaptionCheckOptions};
    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let report = run_teacher_stage(&tiny(&dir.path().join("vae"), &dir.path().join("run"), 4)).unwrap();
    let options =
        CaptionCheckOptions { stories: 2, timesteps: vec![990.0, 500.0], progress: false, ..Default::default() };
    let model = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    let reading = caption_check(&model, &options).unwrap();
    assert_eq!(reading.rows.len(), 2);
    assert!(reading.rows.iter().any(|r| r.own != r.other), "prompts change the flow: {reading:?}");

    // Zero every cross-attention output: the text can no longer reach the flow.
    let weights = report.model_dir.join("dit/model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name.contains("cross_attn.o.") {
            *t = t.zeros_like().unwrap();
        }
    }
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let blind = caption_check(&StoryModel::load(&report.model_dir, &Device::Cpu).unwrap(), &options).unwrap();
    assert!(blind.rows.iter().all(|r| r.own == r.other && r.own == r.unconditional), "{blind:?}");
    assert_eq!(blind.caption_gain, 0.0);

    let one = CaptionCheckOptions { stories: 1, ..options.clone() };
    assert!(caption_check(&model, &one).unwrap_err().to_string().contains("stories"));
    let bad_t = CaptionCheckOptions { timesteps: vec![1500.0], ..options };
    assert!(caption_check(&model, &bad_t).unwrap_err().to_string().contains("timestep"));
}

#[test]
fn the_context_check_tells_a_context_blind_model_from_a_reading_one() {
    use storyreel_train::context_check::{context_check, ContextCheckOptions};
    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let report = run_teacher_stage(&tiny(&dir.path().join("vae"), &dir.path().join("run"), 4)).unwrap();
    let options =
        ContextCheckOptions { stories: 4, timesteps: vec![990.0, 500.0], progress: false, ..Default::default() };
    let model = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    let reading = context_check(&model, &options).unwrap();
    assert!(reading.stories >= 1, "{reading:?}");
    assert_eq!(reading.rows.len(), 2);
    assert!(reading.rows.iter().all(|r| r.own != r.other && r.own != r.none), "context changes the flow: {reading:?}");
    assert!(!reading.without_captions);
    // Without captions the same stories and noise go through the unconditional caption.
    let uncaptioned = ContextCheckOptions { without_captions: true, ..options.clone() };
    let bare = context_check(&model, &uncaptioned).unwrap();
    assert!(bare.without_captions);
    assert_eq!(bare.stories, reading.stories);
    assert!(bare.rows.iter().zip(&reading.rows).all(|(b, r)| b.own != r.own), "captions change the flow: {bare:?}");
    assert!(bare.rows.iter().all(|r| r.own != r.other && r.own != r.none), "{bare:?}");

    // Zero every self-attention output: no token sees another, so context cannot reach the target.
    let weights = report.model_dir.join("dit/model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name.contains("self_attn.o.") {
            *t = t.zeros_like().unwrap();
        }
    }
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let blind = context_check(&StoryModel::load(&report.model_dir, &Device::Cpu).unwrap(), &options).unwrap();
    assert!(blind.rows.iter().all(|r| r.own == r.other && r.own == r.none), "{blind:?}");
    assert_eq!(blind.context_gain, 0.0);
    let blind_bare = context_check(&StoryModel::load(&report.model_dir, &Device::Cpu).unwrap(), &uncaptioned).unwrap();
    assert!(blind_bare.rows.iter().all(|r| r.own == r.other && r.own == r.none), "{blind_bare:?}");

    assert!(context_check(&model, &ContextCheckOptions { stories: 1, ..options.clone() })
        .unwrap_err()
        .to_string()
        .contains("stories"));
    // A no-context ablation has nothing to check.
    let mut ablation = tiny(&dir.path().join("vae"), &dir.path().join("ablation"), 1);
    ablation.use_context = false;
    let ablation = run_teacher_stage(&ablation).unwrap();
    let err = context_check(&StoryModel::load(&ablation.model_dir, &Device::Cpu).unwrap(), &options).unwrap_err();
    assert!(err.to_string().contains("without context"), "{err}");
}

#[test]
fn a_teacher_can_start_from_a_trained_one_and_refuses_a_mismatched_one() {
    use storyreel_train::stage_teacher::load_initial_teacher;
    let dir = tempfile::tempdir().unwrap();
    let (vae_dir, first) = first_teacher(dir.path());
    let trained = candle_core::safetensors::load(first.model_dir.join("dit/model.safetensors"), &Device::Cpu).unwrap();

    // A fresh network set takes every DiT weight of the trained teacher.
    let cfg = tiny(&vae_dir, &dir.path().join("second"), 1);
    let varmap = VarMap::new();
    let nets = TeacherNetworks::trainable(&cfg, 4, &varmap, &Device::Cpu).unwrap();
    load_initial_teacher(&varmap, &first.model_dir, &vae_dir, &nets.text, &Device::Cpu).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if let Some(n) = name.strip_prefix("dit.") {
            let diff = (var.as_tensor() - &trained[n]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
        }
    }
    // The stage runs from it.
    let mut from = tiny(&vae_dir, &dir.path().join("third"), 1);
    from.init_from = Some(first.model_dir.clone());
    run_teacher_stage(&from).unwrap();

    // Another VAE: refused, named.
    let other_vae = dir.path().join("other-vae");
    let cfg_other = ToyVaeShape { z_dim: 4, base_dim: 4, ..ToyVaeShape::default() }.config();
    WanVae::random(&cfg_other, true, 99, DType::F32, &Device::Cpu).unwrap().save(&other_vae).unwrap();
    let err = load_initial_teacher(&varmap, &first.model_dir, &other_vae, &nets.text, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("another VAE"), "{err}");

    // Another DiT width: refused, naming a tensor.
    let mut wide = tiny(&vae_dir, &dir.path().join("wide"), 1);
    wide.dit.dim = 48;
    wide.dit.num_heads = 2;
    let wide_vars = VarMap::new();
    let wide_nets = TeacherNetworks::trainable(&wide, 4, &wide_vars, &Device::Cpu).unwrap();
    let err = load_initial_teacher(&wide_vars, &first.model_dir, &vae_dir, &wide_nets.text, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("needs"), "{err}");
    // A missing folder.
    let err =
        load_initial_teacher(&varmap, &dir.path().join("nowhere"), &vae_dir, &nets.text, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[test]
fn context_samples_are_cropped_later_shots_with_their_context() {
    use storyreel_train::stage_teacher::draw_context_samples;
    let shots = [1, 5, 2, 1];
    let a = draw_context_samples(7, 3, 50, &shots, 1000, 0.1).unwrap();
    assert_eq!(a, draw_context_samples(7, 3, 50, &shots, 1000, 0.1).unwrap(), "pure in (seed, index)");
    assert_ne!(a, draw_context_samples(7, 4, 50, &shots, 1000, 0.1).unwrap());
    assert_eq!(a.len(), 50);
    for &(story, shot, t, _) in &a {
        assert!(story == 1 || story == 2, "one-shot stories have no context: {story}");
        assert!(shot >= 1 && shot < shots[story] && t < 1000);
    }
    assert!(a.iter().any(|d| d.0 == 1) && a.iter().any(|d| d.0 == 2));
    assert!(draw_context_samples(7, 3, 5, &[1, 1], 1000, 0.1).is_none());

    // A cropped sample keeps the target's first frames and its context.
    let (corpus, _varmap, nets) = tiny_networks();
    let schedule = FlowSchedule::new(1000, 8.0);
    let weights = timestep_weights(schedule.timesteps());
    let story = &corpus.stories[0];
    let shot = 1;
    let sample = |target_frames| TeacherSample {
        story,
        shot,
        table_index: 400,
        caption_dropped: false,
        context_dropped: false,
        target_frames,
        noise_seed: 5,
    };
    let whole = teacher_loss(&nets, &sample(None), &schedule, &weights, 6).unwrap();
    let cropped = teacher_loss(&nets, &sample(Some(2)), &schedule, &weights, 6).unwrap();
    assert!(cropped.mse.is_finite() && cropped.mse != whole.mse);
    let all = story.shots[shot].dim(0).unwrap();
    let past_end = teacher_loss(&nets, &sample(Some(all + 10)), &schedule, &weights, 6).unwrap();
    assert_eq!(past_end.mse, whole.mse, "a crop longer than the shot is the whole shot");

    // The stage trains with them and logs their loss; the no-context ablation refuses them.
    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let mut cfg = tiny(&dir.path().join("vae"), &dir.path().join("run"), 2);
    cfg.context_samples = 2;
    run_teacher_stage(&cfg).unwrap();
    let log = std::fs::read_to_string(dir.path().join("run/train.jsonl")).unwrap();
    assert!(log.lines().all(|l| l.contains("context_mse")), "{log}");
    cfg.use_context = false;
    assert!(run_teacher_stage(&cfg).unwrap_err().to_string().contains("context_samples"));
    cfg.use_context = true;
    cfg.context_sample_frames = 0;
    assert!(run_teacher_stage(&cfg).unwrap_err().to_string().contains("context_sample_frames"));
}

#[test]
fn batched_samples_give_the_mean_of_the_single_losses_and_its_gradient() {
    use storyreel_train::stage_teacher::batched_teacher_loss;
    let (corpus, varmap, nets) = tiny_networks();
    let schedule = FlowSchedule::new(1000, 8.0);
    let weights = timestep_weights(schedule.timesteps());
    // Different stories, shots, crops, timesteps and dropouts in one batch.
    let samples: Vec<TeacherSample<'_>> = [(0, 1, Some(2), 100, false, false), (1, 0, None, 700, true, false)]
        .iter()
        .chain(&[(0, 2, Some(1), 950, false, true)])
        .enumerate()
        .map(|(j, &(story, shot, target_frames, table_index, caption_dropped, context_dropped))| TeacherSample {
            story: &corpus.stories[story],
            shot: shot.min(corpus.stories[story].shots.len() - 1),
            table_index,
            caption_dropped,
            context_dropped,
            target_frames,
            noise_seed: 40 + j as u64,
        })
        .collect();
    let singles: Vec<_> = samples.iter().map(|s| teacher_loss(&nets, s, &schedule, &weights, 6).unwrap()).collect();
    let (batched, mse) = batched_teacher_loss(&nets, &samples, &schedule, &weights, 6).unwrap();
    let n = samples.len() as f64;
    let mean_total: f64 = singles.iter().map(|l| l.total.to_scalar::<f32>().unwrap() as f64).sum::<f64>() / n;
    let mean_mse: f64 = singles.iter().map(|l| l.mse).sum::<f64>() / n;
    let got = batched.to_scalar::<f32>().unwrap() as f64;
    assert!((got - mean_total).abs() <= 1e-5 * mean_total.abs().max(1.0), "{got} vs {mean_total}");
    assert!((mse - mean_mse).abs() <= 1e-5 * mean_mse.max(1.0), "{mse} vs {mean_mse}");

    // The same gradient as the mean of the single losses.
    let mut sum = singles[0].total.clone();
    for l in &singles[1..] {
        sum = (sum + &l.total).unwrap();
    }
    let single_grads = (sum / n).unwrap().backward().unwrap();
    let batched_grads = batched.backward().unwrap();
    let mut compared = 0;
    for var in varmap.all_vars() {
        let (Some(a), Some(b)) = (single_grads.get(var.as_tensor()), batched_grads.get(var.as_tensor())) else {
            continue;
        };
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        assert!(diff <= 1e-3 * scale, "gradient differs by {diff} (scale {scale})");
        compared += 1;
    }
    assert!(compared > 10, "only {compared} gradients compared");
    assert!(batched_teacher_loss(&nets, &[], &schedule, &weights, 6).is_err());
}

#[test]
fn the_look_check_reads_a_run_corpus_and_names_a_missing_or_stale_one() {
    use storyreel_train::look_ceiling::corpus_look_ceiling;
    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let mut cfg = tiny(&dir.path().join("vae"), &dir.path().join("run"), 1);
    cfg.data.stories = 8;
    let err = corpus_look_ceiling(&cfg).unwrap_err().to_string();
    assert!(err.contains("no encoded corpus") && err.contains("storyreel train teacher"), "{err}");

    run_teacher_stage(&cfg).unwrap();
    let c = corpus_look_ceiling(&cfg).unwrap();
    let corpus_shots: usize = (0..8)
        .map(|i| {
            storyreel_world::generate_story(11 + i, &storyreel_world::StoryOptions::default()).unwrap().shots.len()
        })
        .sum();
    assert!(c.shots > 0 && c.shots <= corpus_shots, "{} of {corpus_shots}", c.shots);
    assert_eq!(c.per_place.iter().map(|r| r.shots).sum::<usize>(), c.shots);
    assert!(c.mse_place_mean.is_finite() && c.mse_look_mean.is_finite());

    // A corpus encoded for other data is not read as this config's.
    cfg.data.first_seed = 12;
    assert!(corpus_look_ceiling(&cfg).unwrap_err().to_string().contains("no encoded corpus"));
}

#[test]
fn context_channels_start_from_a_teacher_without_them_and_carry_the_context_mean() {
    use storyreel_engine::context::DynamicSampling;
    use storyreel_engine::teacher::{teacher_flow, TeacherInputs};
    use storyreel_engine::{FlowBranch, NoiseSource, SeededNoise, ShotPlan};
    use storyreel_train::stage_teacher::load_initial_teacher;
    let dir = tempfile::tempdir().unwrap();
    let (vae_dir, first) = first_teacher(dir.path());
    let narrow = StoryModel::load(&first.model_dir, &Device::Cpu).unwrap();
    assert!(!narrow.card.context_channels);

    let mut cfg = tiny(&vae_dir, &dir.path().join("wide"), 3);
    cfg.context_channels = true;
    cfg.init_from = Some(first.model_dir.clone());
    // Widened from the first teacher, the new channels have zero weight: the same flow.
    let varmap = VarMap::new();
    let nets = TeacherNetworks::trainable(&cfg, 4, &varmap, &Device::Cpu).unwrap();
    assert_eq!((nets.dit.config().in_dim, nets.dit.config().out_dim), (8, 4));
    load_initial_teacher(&varmap, &first.model_dir, &vae_dir, &nets.text, &Device::Cpu).unwrap();
    let noise = |seed: u64, frames: usize| SeededNoise::new(seed).noise(0, 0, 0, &[frames, 4, 8, 8], &Device::Cpu);
    // Two padding frames in front of four real ones, as a second shot's context.
    let real = noise(1, 4).unwrap();
    let context = candle_core::Tensor::cat(&[real.zeros_like().unwrap().narrow(0, 0, 2).unwrap(), real], 0).unwrap();
    let x = noise(2, 3).unwrap();
    let plan = ShotPlan::new(1, &[0, 0, 0, 0, 0, 0], 2).unwrap();
    let blank = candle_core::Tensor::zeros((2, cfg.text.text_len, cfg.text.dim), DType::F32, &Device::Cpu).unwrap();
    let flow = |dit: &storyreel_nn::WanModel, context: &candle_core::Tensor, context_channels: bool| {
        let captions = dit.embed_captions(&blank).unwrap();
        let inputs = TeacherInputs {
            plan: &plan,
            captions: &captions,
            uncond: None,
            context,
            clean_context: false,
            context_channels,
        };
        teacher_flow(dit, &inputs, &x, 700.0, FlowBranch::Conditional).unwrap()
    };
    let max_diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    };
    assert!(max_diff(&flow(&narrow.dit, &context, false), &flow(&nets.dit, &context, true)) < 1e-5);
    // A model without context channels is refused the wider input.
    let captions = narrow.dit.embed_captions(&blank).unwrap();
    let wrong = TeacherInputs {
        plan: &plan,
        captions: &captions,
        uncond: None,
        context: &context,
        clean_context: false,
        context_channels: true,
    };
    assert!(teacher_flow(&narrow.dit, &wrong, &x, 700.0, FlowBranch::Conditional).is_err());

    // Trained, the new channels carry weight and the card says so.
    let wide = run_teacher_stage(&cfg).unwrap();
    let model = StoryModel::load(&wide.model_dir, &Device::Cpu).unwrap();
    assert!(model.card.context_channels);
    let card_text = std::fs::read_to_string(wide.model_dir.join("storyreel_model.json")).unwrap();
    assert!(card_text.contains(r#""context_channels": true"#), "{card_text}");
    let weights = candle_core::safetensors::load(wide.model_dir.join("dit/model.safetensors"), &Device::Cpu).unwrap();
    let patch = &weights["patch_embedding.weight"];
    assert_eq!(patch.dims()[1], 8);
    let added = patch.narrow(1, 4, 4).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(added > 0.0, "the context channels' weights stayed zero");
    // It generates a story with context, and the causal student refuses it for now.
    let (got, _) = generate_two_shots(&model, Box::new(DynamicSampling { max_frames: 6 }));
    // A card that forgets the setting, or puts it on a student, is refused on load.
    let card_path = wide.model_dir.join("storyreel_model.json");
    let edited = |from: &str, to: &str| {
        std::fs::write(&card_path, card_text.replace(from, to)).unwrap();
        StoryModel::load(&wide.model_dir, &Device::Cpu).err().unwrap().to_string()
    };
    let forgot = edited(r#""context_channels": true,"#, "");
    assert!(forgot.contains("takes 8 / gives 4"), "{forgot}");
    let student = edited(
        r#""kind": "teacher""#,
        r#""kind": "student", "student": {"steps": [1000, 740, 500, 260], "shift": 5.0, "chunk_frames": 3}"#,
    );
    assert!(student.contains("context_channels"), "{student}");
    std::fs::write(&card_path, &card_text).unwrap();
    assert_eq!(got, vec![vec![5, 3, 32, 32], vec![9, 3, 32, 32]]);
    let mut init = storyreel_train::stage_ode_init::OdeInitConfig {
        teacher: wide.model_dir.clone(),
        pairs: vec![dir.path().join("no-pairs")],
        ..Default::default()
    };
    init.train.out_dir = dir.path().join("ode-init");
    let err = storyreel_train::stage_ode_init::run_ode_init_stage(&init).unwrap_err().to_string();
    assert!(err.contains("context_channels"), "{err}");
    let pairs = storyreel_train::ode_pairs::OdePairsConfig {
        teacher: wide.model_dir.clone(),
        out_dir: dir.path().join("pairs"),
        ..Default::default()
    };
    let err = storyreel_train::ode_pairs::make_ode_pairs(&pairs).unwrap_err().to_string();
    assert!(err.contains("context_channels"), "{err}");
    assert!(!dir.path().join("pairs").exists(), "refused before any work");

    // Without context there is nothing to join.
    let mut ablation = tiny(&vae_dir, &dir.path().join("ablation"), 1);
    ablation.use_context = false;
    ablation.context_channels = true;
    assert!(ablation.validate().unwrap_err().to_string().contains("context_channels"));
}

/// For every weight tensor, the loss's change along that tensor's gradient direction, by a
/// central difference, against the gradient's norm (what the slope along it must be if the
/// gradient is right). Tensors whose gradient norm is below `floor` are skipped: their slope
/// drowns in f32 rounding. Returns how many tensors were checked and the mismatches.
fn gradient_mismatches(varmap: &VarMap, loss: &dyn Fn() -> candle_core::Tensor, floor: f32) -> (usize, Vec<String>) {
    let grads = loss().backward().unwrap();
    let vars: Vec<(String, candle_core::Var)> =
        varmap.data().lock().unwrap().iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    let value = |l: candle_core::Tensor| l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let (mut checked, mut bad) = (0, Vec::new());
    for (name, var) in vars {
        let Some(g) = grads.get(var.as_tensor()) else { continue };
        let norm = g.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        if norm < floor {
            continue;
        }
        let original = var.as_tensor().copy().unwrap();
        // A large step drowns a steep slope's curvature less in rounding; a small one follows a
        // sharply curved direction (the zero-padded caption tokens' keys, RMS-normed from near
        // zero) that a large one overshoots. A right gradient agrees at one of them.
        let slopes: Vec<f64> = [1e-2, 1e-3]
            .iter()
            .map(|&h| {
                let step = g.affine(h / norm as f64, 0.0).unwrap();
                var.set(&(&original + &step).unwrap()).unwrap();
                let up = value(loss());
                var.set(&(&original - &step).unwrap()).unwrap();
                let down = value(loss());
                var.set(&original).unwrap();
                (up - down) / (2.0 * h)
            })
            .collect();
        checked += 1;
        if slopes.iter().all(|s| (s / norm as f64 - 1.0).abs() > 0.05) {
            bad.push(format!("{name}: slopes {slopes:?} along a gradient of norm {norm:.3e}"));
        }
    }
    (checked, bad)
}

#[test]
fn the_teacher_gradient_is_the_slope_of_its_loss() {
    // Every training path's backward (fused norms and residuals, the segment attention, the
    // differentiable RoPE, caption routing) against the loss itself: a wrong gradient still
    // lowers a loss, only more slowly, so a falling loss cannot show one.
    let (corpus, varmap, nets) = tiny_networks_with_a_live_head();
    let schedule = FlowSchedule::new(1000, 8.0);
    let weights = vec![1.0; 1000];
    let story = corpus.stories.iter().find(|s| s.shots.len() > 1).expect("a story with two shots");
    let shot = second_shot(story, 500, 2);
    let (checked, bad) =
        gradient_mismatches(&varmap, &|| teacher_loss(&nets, &shot, &schedule, &weights, 6).unwrap().total, 1e-3);
    assert!(checked > 20, "only {checked} tensors had a gradient to check");
    assert!(bad.is_empty(), "one shot: gradients that are not the loss's slope: {bad:#?}");

    // The batched forward (each sample attends to itself only) and the image samples.
    use storyreel_train::stage_teacher::batched_teacher_loss;
    let samples = [second_shot(story, 300, 3), second_shot(story, 800, 4)];
    let (checked, bad) = gradient_mismatches(
        &varmap,
        &|| batched_teacher_loss(&nets, &samples, &schedule, &weights, 6).unwrap().0,
        1e-3,
    );
    assert!(checked > 20 && bad.is_empty(), "batched ({checked} checked): {bad:#?}");
    let images = corpus.images().unwrap();
    let latents: Vec<_> = images.iter().take(2).map(|i| corpus.image_latent(i).unwrap()).collect();
    let image_samples: Vec<ImageSample<'_>> = images
        .iter()
        .zip(&latents)
        .enumerate()
        .map(|(j, (i, latent))| ImageSample {
            latent,
            story: &corpus.stories[i.story],
            shot: i.shot,
            caption_dropped: false,
            table_index: 400 + 200 * j,
            noise_seed: j as u64,
        })
        .collect();
    let (checked, bad) =
        gradient_mismatches(&varmap, &|| image_loss(&nets, &image_samples, &schedule).unwrap().0, 1e-3);
    assert!(checked > 20 && bad.is_empty(), "images ({checked} checked): {bad:#?}");
}

#[test]
fn the_denoise_check_scores_what_comes_back_from_each_noise_level() {
    use storyreel_train::denoise_check::{denoise_check, DenoiseCheckOptions};
    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let report = run_teacher_stage(&tiny(&dir.path().join("vae"), &dir.path().join("run"), 2)).unwrap();
    let sheet = dir.path().join("sheet.png");
    let options = DenoiseCheckOptions {
        stories: 3,
        timesteps: vec![990.0, 500.0, 1.0],
        progress: false,
        sheet: Some(sheet.clone()),
        sheet_stories: 2,
        ..Default::default()
    };
    let model = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    let trained = denoise_check(&model, &options).unwrap();
    assert_eq!(trained.stories, 3);
    assert_eq!(trained.rows.len(), 3);
    assert!(trained.flat_error > 0.0);
    // The card's 2-step table has σ = 1 and 8/9: none below 0.5, so t = 500 takes one step.
    assert_eq!(trained.rows.iter().map(|r| r.steps).collect::<Vec<_>>(), vec![2, 1, 1]);
    // From t = 1 nearly everything is still there.
    let last = &trained.rows[2];
    assert!(last.resampled_structure > 0.99 && last.resampled_error < 1e-3, "{last:?}");
    let picture = storyreel_media::load_image(&sheet).unwrap();
    assert!(picture.size().1 > 2 * 16, "two rows of thumbnails: {:?}", picture.size());

    // A zero flow changes nothing: both denoisings return the noisy shot, whose error grows
    // with the noise.
    let weights = report.model_dir.join("dit/model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name.starts_with("head.head.") {
            *t = t.zeros_like().unwrap();
        }
    }
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let still = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    let options = DenoiseCheckOptions { sheet: None, ..options };
    let frozen = denoise_check(&still, &options).unwrap();
    for r in &frozen.rows {
        assert!((r.one_step_error - r.resampled_error).abs() < 1e-6 * r.one_step_error.max(1e-3), "{r:?}");
    }
    assert!(frozen.rows[0].one_step_error > frozen.rows[1].one_step_error);
    assert!(frozen.rows[1].one_step_error > frozen.rows[2].one_step_error);
    assert_eq!(frozen.flat_error, trained.flat_error, "the same ground truth");

    for bad in [
        DenoiseCheckOptions { stories: 1, ..options.clone() },
        DenoiseCheckOptions { timesteps: vec![0.0], ..options.clone() },
    ] {
        assert!(denoise_check(&model, &bad).is_err());
    }
    assert!(denoise_check(&model, &DenoiseCheckOptions { guidance: Some(f32::NAN), ..options.clone() }).is_err());
    // Without guidance the check runs the conditional flow alone, and says so.
    let plain = denoise_check(&model, &DenoiseCheckOptions { guidance: Some(1.0), ..options.clone() }).unwrap();
    assert_eq!(plain.guidance, 1.0);
    assert_ne!(
        plain.rows[0].resampled_error, trained.rows[0].resampled_error,
        "CFG {} changes the shot",
        trained.guidance
    );
    let nowhere = DenoiseCheckOptions { sheet: Some(dir.path().join("missing/sheet.png")), ..options.clone() };
    let err = denoise_check(&model, &nowhere).unwrap_err().to_string();
    assert!(err.contains("missing") && err.contains("does not exist"), "{err}");
    let mut student = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    student.card.kind = storyreel_engine::ModelKind::Student;
    assert!(denoise_check(&student, &options).unwrap_err().to_string().contains("student"));
}

#[test]
fn a_teacher_with_spatial_position_saves_it_and_generates_with_it() {
    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let mut cfg = tiny(&dir.path().join("vae"), &dir.path().join("run"), 2);
    cfg.dit.spatial_position = true;
    let report = run_teacher_stage(&cfg).unwrap();
    let saved = std::fs::read_to_string(report.model_dir.join("dit").join("config.json")).unwrap();
    assert!(saved.contains("\"spatial_position\": true"), "{saved}");
    let model = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    assert!(model.dit.config().spatial_position);
    let (got, _) = generate_two_shots(&model, Box::new(NoContext));
    assert_eq!(got, vec![vec![5, 3, 32, 32], vec![9, 3, 32, 32]]);
}

#[test]
fn a_teacher_with_one_latent_pixel_per_token_trains_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    write_vae(&dir.path().join("vae"));
    let mut cfg = tiny(&dir.path().join("vae"), &dir.path().join("run"), 2);
    cfg.dit.patch = 1;
    let report = run_teacher_stage(&cfg).unwrap();
    let model = StoryModel::load(&report.model_dir, &Device::Cpu).unwrap();
    assert_eq!(model.dit.config().patch_size, [1, 1, 1]);
    let (got, _) = generate_two_shots(&model, Box::new(NoContext));
    assert_eq!(got, vec![vec![5, 3, 32, 32], vec![9, 3, 32, 32]]);
    for patch in [0, 5] {
        cfg.dit.patch = patch;
        assert!(run_teacher_stage(&cfg).unwrap_err().to_string().contains("dit.patch"), "patch {patch}");
    }
}

//! Stages 3 and 4 of ShotStream (shotstream.md §5.4–5.5): distribution matching distillation
//! with intra-shot self-forcing (ground-truth context), then inter-shot self-forcing (context
//! from the generator's own earlier shots).
//!
//! Three networks: the generator (the causal student, from its ODE init), the real score (the
//! teacher, frozen, with CFG) and the fake score or critic (a trainable bidirectional copy of
//! the teacher). Every step rolls a shot out with the generator through the real KV-cache
//! inference path ([`ShotRun::next_chunk_to_exit`]: one random exit step shared by all chunks,
//! gradient only through it, a t = 0 cache refresh without gradient), conditioned on
//! ground-truth context. Generator steps (one in `generator_every`) follow the normalised DMD
//! gradient (fake − real x0 at a random noise level); the other steps train the critic's flow
//! loss on a fresh rollout.
//!
//! Stage 4 ([`History::SelfGenerated`]) walks whole stories shot by shot, one step per shot:
//! shot 0 has no context, and each later shot's context is picked (dynamic sampling, §2.2) from
//! the story's earlier rollouts, decoded to pixels and re-encoded one frame at a time, exactly
//! as at inference. With `lora` set, generator and critic train rank-r adapters over frozen
//! weights (the critic restarting from the teacher); the adapters are saved as PEFT folders and
//! merged into `OUT/model`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use storyreel_engine::context::{ContextMemory, ContextQuery};
use storyreel_engine::session::{SessionConfig, ShotRun};
use storyreel_engine::shot_plan::ShotPlan;
use storyreel_engine::teacher::{teacher_flow, TeacherInputs};
use storyreel_engine::teacher_story::{caption_embeddings, encode_context, unconditional_caption};
use storyreel_engine::{FewStepSampler, FlowBranch, FlowSchedule, NoiseSource, SeededNoise, StoryModel};
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::kv_cache::LocalWindow;
use storyreel_nn::WanModel;
use storyreel_world::rng::{mix64, WorldRng};

use crate::error::{Result, TrainError};
use crate::log::Progress;
use crate::lora::{lora_dit, merge_lora_model, save_lora_folder, LoraSpec};
use crate::model_files::{ema_note, write_text};
use crate::stage_config::{learning_settings, read_over_defaults};
use crate::stage_ode_init::{trainable_dit, write_student_model};
use crate::stage_teacher::{context_memory, corpus_key, EncodedStory, TeacherCorpus, TeacherData};
use crate::trainer::{TrainConfig, Trainer};

/// Settings of `storyreel train dmd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DmdConfig {
    /// The teacher's story model folder: the real score, the critic's first weights, the text
    /// encoder and the VAE.
    pub teacher: PathBuf,
    /// The student to distil into (the ODE-init model folder).
    pub student: PathBuf,
    /// Stories that give the ground-truth context and the captions.
    pub data: TeacherData,
    /// Real-score guidance in ShotStream's form: real = cond + g·(cond − uncond) (3).
    pub real_guidance: f32,
    /// The generator is updated on steps that are multiples of this, the critic on the others (6).
    pub generator_every: u64,
    /// Range the DMD and critic timesteps are clamped to ([20, 980]).
    pub t_range: [f32; 2],
    /// Shift of the table those timesteps are drawn from (8).
    pub shift: f32,
    /// Probability of zeroing a sample's context (10%).
    pub context_dropout: f64,
    /// Steps, generator and critic together.
    pub steps: u64,
    /// Save both networks every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// The generator's optimiser and schedule (its `out_dir` is `OUT/generator`).
    pub generator: TrainConfig,
    /// The critic's optimiser and schedule (its `out_dir` is `OUT/critic`).
    pub critic: TrainConfig,
    /// Where each shot's context comes from: ground truth (stage 3) or the generator's own
    /// earlier shots of the same story (stage 4).
    pub history: History,
    /// Train rank-r adapters over frozen weights instead of every weight (stage 4: on).
    pub lora: Option<LoraSpec>,
    /// With a self-generated history, give the real and fake scores the ground-truth context
    /// instead of the generator's (ShotStream's `real_fake_use_gt_context`, off).
    pub scores_use_gt_context: bool,
    /// Output folder: `latents/`, `generator/`, `critic/`, `history/`, `model/` (and with LoRA
    /// `generator-lora/`, `critic-lora/`).
    pub out_dir: PathBuf,
    /// Seed of the data draws and the noise.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
}

/// Where a DMD stage's context frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum History {
    /// Ground-truth frames of the earlier shots (stage 3, intra-shot self-forcing).
    GroundTruth,
    /// The generator's own rollouts of the earlier shots, decoded and re-encoded (stage 4,
    /// inter-shot self-forcing).
    SelfGenerated,
}

impl Default for DmdConfig {
    fn default() -> Self {
        let optimiser = |lr: f64| {
            let mut t = TrainConfig {
                schedule: crate::schedule::LrSchedule::warmup_cosine(lr, lr / 10.0, 20),
                clip_norm: Some(1.0),
                ..TrainConfig::default()
            };
            t.optimizer.beta1 = 0.0;
            t.optimizer.weight_decay = 0.01;
            t
        };
        let mut critic = optimiser(1e-4);
        critic.clip_norm = Some(10.0);
        Self {
            teacher: PathBuf::from("runs/toy-teacher/model"),
            student: PathBuf::from("runs/toy-ode-init/model"),
            data: TeacherData { first_seed: 0, stories: 400, ..TeacherData::default() },
            real_guidance: 3.0,
            generator_every: 6,
            t_range: [20.0, 980.0],
            shift: 8.0,
            context_dropout: 0.1,
            steps: 3000,
            checkpoint_every: 300,
            generator: optimiser(2e-5),
            critic,
            history: History::GroundTruth,
            lora: None,
            scores_use_gt_context: false,
            out_dir: PathBuf::from("runs/toy-dmd"),
            seed: 0,
            progress: true,
        }
    }
}

impl DmdConfig {
    /// Stage 4's defaults: stage 3's hyper-parameters, a self-generated history, LoRA on
    /// generator and critic, starting from the stage-3 student.
    pub fn inter_shot() -> Self {
        Self {
            student: PathBuf::from("runs/toy-dmd/model"),
            history: History::SelfGenerated,
            lora: Some(LoraSpec::default()),
            steps: 1200,
            out_dir: PathBuf::from("runs/toy-dmd-long"),
            ..Self::default()
        }
    }

    /// Reads a `.json` or `.toml` config over the defaults.
    pub fn read(path: &Path) -> Result<Self> {
        read_over_defaults(path, &Self::default())
    }

    /// Reads a `.json` or `.toml` config over stage 4's defaults.
    pub fn read_inter_shot(path: &Path) -> Result<Self> {
        read_over_defaults(path, &Self::inter_shot())
    }

    /// Checks the settings that do not need the models.
    pub fn validate(&self) -> Result<()> {
        self.generator.validate()?;
        self.critic.validate()?;
        if self.steps == 0 {
            return Err(TrainError::out_of_range("steps", 0, "at least 1"));
        }
        if self.generator_every < 2 {
            return Err(TrainError::out_of_range("generator_every", self.generator_every, "at least 2"));
        }
        let [lo, hi] = self.t_range;
        if !(lo > 0.0 && lo < hi && hi < 1000.0) {
            return Err(TrainError::out_of_range("t_range", format!("{:?}", self.t_range), "0 < low < high < 1000"));
        }
        if !(self.shift > 0.0 && self.shift.is_finite()) {
            return Err(TrainError::out_of_range("shift", self.shift, "a positive number"));
        }
        if !self.real_guidance.is_finite() {
            return Err(TrainError::out_of_range("real_guidance", self.real_guidance, "a finite number"));
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        if !(0.0..=1.0).contains(&self.context_dropout) {
            return Err(TrainError::out_of_range("context_dropout", self.context_dropout, "a probability in [0, 1]"));
        }
        crate::data::check_training_seeds(self.data.first_seed, self.data.stories)
    }
}

/// What one DMD step draws (pure in the seed and the step, so that a resumed run sees the same).
#[derive(Debug, Clone, PartialEq)]
pub struct DmdDraw {
    /// Story index.
    pub story: usize,
    /// Target shot.
    pub shot: usize,
    /// Exit step of the rollout, shared by every chunk.
    pub exit: usize,
    /// Timestep of the score evaluation.
    pub t: f32,
    /// Context zeroed.
    pub context_dropped: bool,
    /// Seed of the rollout's and the scores' noise.
    pub noise_seed: u64,
}

/// Draws step `step`'s sample.
pub fn draw_dmd_sample(
    cfg: &DmdConfig,
    step: u64,
    shots_per_story: &[usize],
    exits: usize,
    table: &FlowSchedule,
) -> DmdDraw {
    let mut rng = WorldRng::derived(mix64(cfg.seed ^ 0xd3d_5e1f), step);
    let story = rng.range(0, shots_per_story.len() - 1);
    let shot = rng.range(0, shots_per_story[story].saturating_sub(1));
    let exit = rng.range(0, exits - 1);
    let t = table.timesteps()[rng.range(0, table.timesteps().len() - 1)].clamp(cfg.t_range[0], cfg.t_range[1]);
    let context_dropped = rng.chance(cfg.context_dropout);
    DmdDraw { story, shot, exit, t, context_dropped, noise_seed: mix64(cfg.seed ^ step.wrapping_mul(0x9e37_79b9)) }
}

/// A shot's conditioning: context latents and flags, and caption embeddings of shots 0..=k.
#[derive(Clone)]
pub struct ShotConditioning {
    /// Target shot index.
    pub shot: usize,
    /// Context latents `[n, C, h, w]`.
    pub context: Tensor,
    /// Their shot flags.
    pub flags: Vec<i64>,
    /// Caption embeddings `[shot + 1, L, D]` from the frozen text encoder.
    pub embeddings: Tensor,
    /// Latent frames to generate (whole chunks).
    pub frames: usize,
}

/// The self-forcing rollout of one shot through the inference path: every chunk runs the
/// few-step sampler to `exit` and keeps that call's graph; returns `[frames, C, h, w]`.
pub fn rollout(
    generator: &WanModel,
    sampler: &FewStepSampler,
    chunk_frames: usize,
    cond: &ShotConditioning,
    exit: usize,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let (_, _, h, w) = cond.context.dims4()?;
    let cfg = SessionConfig {
        frames_per_shot: cond.frames,
        chunk_frames,
        context_frames: cond.flags.len(),
        latent_size: (h, w),
        sampler: sampler.clone(),
        refresh_t: 0.0,
        window: LocalWindow { capacity_frames: cond.frames, sink_frames: 0 },
    };
    let mut run = ShotRun::start(generator, &cfg, cond.shot, &cond.embeddings, &cond.context, &cond.flags)?;
    while !run.is_done() {
        run.next_chunk_to_exit(exit, noise, &|| false)?;
    }
    Ok(run.latents()?)
}

/// The scores' view of a rolled-out shot at timestep `t`.
pub struct ScoreInputs<'a> {
    /// The conditioning.
    pub cond: &'a ShotConditioning,
    /// The noised rollout `x_t`.
    pub x_t: &'a Tensor,
    /// Timestep.
    pub t: f32,
    /// Whether the teacher (and so its copy, the critic) embeds context at t = 0 (its card).
    pub clean_context: bool,
    /// Whether the teacher (and the critic) takes context channels (its card).
    pub context_channels: bool,
}

/// x0 of the real score (the teacher with CFG: cond + g·(cond − uncond)).
pub fn real_x0(teacher: &WanModel, inputs: &ScoreInputs<'_>, guidance: f32) -> Result<Tensor> {
    let device = teacher.device().clone();
    let plan = ShotPlan::new(inputs.cond.shot, &inputs.cond.flags, inputs.cond.shot + 1)?;
    let captions = teacher.embed_captions(&inputs.cond.embeddings)?;
    let uncond = unconditional_caption(teacher, &device)?;
    let ti = TeacherInputs {
        plan: &plan,
        captions: &captions,
        uncond: Some(&uncond),
        context: &inputs.cond.context,
        clean_context: inputs.clean_context,
        context_channels: inputs.context_channels,
    };
    let c = teacher_flow(teacher, &ti, inputs.x_t, inputs.t, FlowBranch::Conditional)?;
    let u = teacher_flow(teacher, &ti, inputs.x_t, inputs.t, FlowBranch::Unconditional)?;
    let v = (&c + ((&c - u)? * guidance as f64)?)?;
    let sigma = inputs.t as f64 / 1000.0;
    Ok((inputs.x_t - (v * sigma)?)?.detach())
}

/// The critic's conditional flow at `x_t` (with its graph).
pub fn critic_flow(critic: &WanModel, inputs: &ScoreInputs<'_>) -> Result<Tensor> {
    let plan = ShotPlan::new(inputs.cond.shot, &inputs.cond.flags, inputs.cond.shot + 1)?;
    let captions = critic.embed_captions(&inputs.cond.embeddings)?;
    let ti = TeacherInputs {
        plan: &plan,
        captions: &captions,
        uncond: None,
        context: &inputs.cond.context,
        clean_context: inputs.clean_context,
        context_channels: inputs.context_channels,
    };
    Ok(teacher_flow(critic, &ti, inputs.x_t, inputs.t, FlowBranch::Conditional)?)
}

/// The generator's DMD loss for a rollout `x_hat` (with graph) and its noised copy: returns the
/// loss 0.5·MSE(x̂, stopgrad(x̂ − g)) with g = (fake − real) / mean|x̂ − real|, and |g|'s mean.
pub fn dmd_loss(x_hat: &Tensor, real: &Tensor, fake: &Tensor) -> Result<(Tensor, f64)> {
    let x = x_hat.detach();
    let scale = (&x - real)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    let g = ((fake - real)? / scale.max(1e-12))?;
    // A NaN normaliser (an all-equal rollout) would poison the step; the reference zeroes it.
    let g = if g.sum_all()?.to_scalar::<f32>()?.is_finite() { g } else { g.zeros_like()? };
    let target = (&x - &g)?.detach();
    let loss = ((x_hat - target)?.sqr()?.mean_all()? * 0.5)?;
    let g_mean = g.abs()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok((loss, g_mean))
}

/// What a finished DMD stage reports (also `OUT/model/training.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DmdReport {
    /// Steps, generator and critic together.
    pub steps: u64,
    /// Generator steps.
    pub generator_steps: u64,
    /// Mean generator loss over its last 50 steps.
    pub generator_loss: f64,
    /// Mean critic loss over its last 50 steps.
    pub critic_loss: f64,
    /// Wall time of this invocation.
    pub wall_seconds: f64,
    /// The EMA decay when the generator's exported weights are its EMA; none: the last step's.
    pub ema_decay: Option<f64>,
    /// The model folder written.
    pub model_dir: PathBuf,
}

/// Runs (or resumes) stage 3 or, with a self-generated history, stage 4, and writes
/// `OUT/model`, the distilled student.
pub fn run_dmd_stage(cfg: &DmdConfig) -> Result<DmdReport> {
    cfg.validate()?;
    let started = Instant::now();
    let device = Device::Cpu;
    let teacher = StoryModel::load(&cfg.teacher, &device)?;
    let student = StoryModel::load(&cfg.student, &device)?;
    let sampling = student.card.student.clone().ok_or_else(|| {
        TrainError::File(format!(
            "{}: not a student model (train one with `storyreel train ode-init`)",
            cfg.student.display()
        ))
    })?;
    if student.dit.config() != teacher.dit.config() || student.card.context_frames != teacher.card.context_frames {
        return Err(TrainError::File(format!(
            "the student {} and the teacher {} differ in shape or context size",
            cfg.student.display(),
            cfg.teacher.display()
        )));
    }
    let sampler = FewStepSampler::new(&sampling.steps, sampling.shift)?;
    let cf = sampling.chunk_frames;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| TrainError::File(format!("{}: {e}", cfg.out_dir.display())))?;

    let vae_dir = cfg.teacher.join(storyreel_engine::story_model::VAE_DIR);
    let data = TeacherData { width: teacher.card.width, height: teacher.card.height, ..cfg.data.clone() };
    let policy = teacher.card.context_policy.clone();
    let key = corpus_key(&vae_dir, &data, teacher.card.context_frames, &policy)?;
    let corpus_dir = cfg.out_dir.join("latents");
    let corpus = match TeacherCorpus::load(&corpus_dir, &key)? {
        Some(c) => c,
        None => {
            let c = TeacherCorpus::encode(&teacher.vae, &data, teacher.card.context_frames, &policy, cfg.progress)?;
            c.save(&corpus_dir, &key)?;
            c
        }
    };
    let shots_per_story = corpus.shots_per_story();

    let g_vars = VarMap::new();
    let c_vars = VarMap::new();
    let (generator, critic) = match &cfg.lora {
        Some(spec) => (
            lora_dit(&student, spec, cfg.seed ^ 0x6e, &g_vars, &device)?,
            lora_dit(&teacher, spec, cfg.seed ^ 0xc7, &c_vars, &device)?,
        ),
        None => (
            trainable_dit(&student, student.card.shot_phase, &g_vars, &device)?,
            trainable_dit(&teacher, teacher.card.shot_phase, &c_vars, &device)?,
        ),
    };
    let mut g_cfg = cfg.generator.clone();
    let mut c_cfg = cfg.critic.clone();
    let g_total = cfg.steps.div_ceil(cfg.generator_every);
    for (t, dir, total) in [(&mut g_cfg, "generator", g_total), (&mut c_cfg, "critic", cfg.steps - g_total)] {
        t.out_dir = cfg.out_dir.join(dir);
        t.checkpoint_every = 0;
        t.progress = false;
        t.schedule.total_steps = total.max(1);
        t.schedule.warmup_steps = t.schedule.warmup_steps.min(total.max(1));
    }
    // The two trainers' own tables are hashed by the trainer; paths and cadences may change.
    let settings = learning_settings(
        cfg,
        &["generator", "critic", "steps", "teacher", "student", "out_dir", "progress", "checkpoint_every"],
    )?;
    let mut g_trainer = Trainer::new(&g_vars, g_cfg)?.with_stage_settings(settings.clone());
    let mut c_trainer = Trainer::new(&c_vars, c_cfg)?.with_stage_settings(settings);
    g_trainer.resume_latest(&cfg.out_dir.join("generator"))?;
    c_trainer.resume_latest(&cfg.out_dir.join("critic"))?;
    let mut step = g_trainer.step_count() + c_trainer.step_count();
    if g_trainer.step_count() != step.div_ceil(cfg.generator_every) {
        return Err(TrainError::File(format!(
            "{}: the generator ({} steps) and critic ({} steps) checkpoints are from different points of the run; \
             remove the newer one's last checkpoint",
            cfg.out_dir.display(),
            g_trainer.step_count(),
            c_trainer.step_count()
        )));
    }
    let history_dir = cfg.out_dir.join("history");
    let mut walk = match cfg.history {
        History::GroundTruth => None,
        History::SelfGenerated => Some(StoryWalk::resume(&history_dir, step, cfg.seed, &shots_per_story, &device)?),
    };
    let memory = context_memory(&policy, teacher.card.context_frames)?;
    let table = FlowSchedule::new(1000, cfg.shift);
    let clean_context = teacher.card.clean_context;
    let context_channels = teacher.card.context_channels;
    let bar = Progress::new(cfg.steps, step, cfg.progress);
    let (mut g_recent, mut c_recent) = (Vec::new(), Vec::new());
    while step < cfg.steps {
        let mut draw = draw_dmd_sample(cfg, step, &shots_per_story, sampler.timesteps().len(), &table);
        if let Some(w) = &walk {
            draw.story = w.story;
            draw.shot = w.shot;
        }
        let story = &corpus.stories[draw.story];
        let truth = conditioning(&teacher, story, &draw, cf, &device)?;
        let (cond, scores) = match &walk {
            None => (truth.clone(), truth),
            Some(w) => {
                let own = self_conditioning(
                    &teacher,
                    &truth,
                    &draw,
                    &w.history,
                    &story.captions,
                    &story.global,
                    memory.as_ref(),
                )?;
                let scores = if cfg.scores_use_gt_context { truth } else { own.clone() };
                (own, scores)
            }
        };
        let mut noise = SeededNoise::new(draw.noise_seed);
        let is_generator = step.is_multiple_of(cfg.generator_every);
        let mut rolled: Option<Tensor> = None;
        let report = if is_generator {
            g_trainer.step(|_| {
                let x_hat = rollout(&generator, &sampler, cf, &cond, draw.exit, &mut noise)?;
                rolled = Some(x_hat.detach());
                let eps = score_noise(draw.noise_seed, x_hat.dims(), &device)?;
                let x_t = noised(&x_hat.detach(), &eps, draw.t)?;
                let inputs = ScoreInputs { cond: &scores, x_t: &x_t, t: draw.t, clean_context, context_channels };
                let real = real_x0(&teacher.dit, &inputs, cfg.real_guidance)?;
                let v_fake = critic_flow(&critic, &inputs)?.detach();
                let fake = (&x_t - (v_fake * (draw.t as f64 / 1000.0))?)?;
                let (loss, g_mean) = dmd_loss(&x_hat, &real, &fake)?;
                Ok((loss, vec![("dmd_grad".into(), g_mean), ("t".into(), draw.t as f64)]))
            })?
        } else {
            c_trainer.step(|_| {
                let x_hat = rollout(&generator, &sampler, cf, &cond, draw.exit, &mut noise)?.detach();
                rolled = Some(x_hat.clone());
                let eps = score_noise(draw.noise_seed, x_hat.dims(), &device)?;
                let x_t = noised(&x_hat, &eps, draw.t)?;
                let inputs = ScoreInputs { cond: &scores, x_t: &x_t, t: draw.t, clean_context, context_channels };
                let v = critic_flow(&critic, &inputs)?;
                let loss = (v - (&eps - &x_hat)?)?.sqr()?.mean_all()?;
                Ok((loss, vec![("t".into(), draw.t as f64)]))
            })?
        };
        if let (Some(w), Some(x_hat)) = (&mut walk, rolled) {
            let f = story.shots[draw.shot].dim(0)?;
            let pixels = teacher.vae.clone().decode(&x_hat.narrow(0, 0, f)?)?.clamp(-1f32, 1f32)?;
            w.advance(pixels, cfg.seed, &shots_per_story);
        }
        let recent = if is_generator { &mut g_recent } else { &mut c_recent };
        recent.push(report.loss);
        if recent.len() > 50 {
            recent.remove(0);
        }
        step += 1;
        bar.update(step, report.loss);
        if cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every) {
            g_trainer.save_checkpoint()?;
            c_trainer.save_checkpoint()?;
            if let Some(w) = &walk {
                w.save(&history_dir, step)?;
            }
        }
    }
    bar.finish();
    g_trainer.finish();
    c_trainer.finish();
    // The export replaces the generator's weights by its EMA, so the last step's own weights
    // are checkpointed first (with the critic and the walk, as the loop does) to stay resumable.
    if g_trainer.ema().is_some() && cfg.checkpoint_every > 0 && step > 0 && !step.is_multiple_of(cfg.checkpoint_every) {
        g_trainer.save_checkpoint()?;
        c_trainer.save_checkpoint()?;
        if let Some(w) = &walk {
            w.save(&history_dir, step)?;
        }
    }
    let ema_decay = g_trainer.load_export_weights(&g_vars)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let model_dir = cfg.out_dir.join("model");
    let stage = match cfg.history {
        History::GroundTruth => "DMD stage 3 (intra-shot self-forcing)",
        History::SelfGenerated => "DMD stage 4 (inter-shot self-forcing)",
    };
    let description = format!(
        "toy causal student, {stage}: {} steps ({} generator{}) from {}{}",
        cfg.steps,
        g_trainer.step_count(),
        cfg.lora.map(|l| format!(", LoRA rank {} merged", l.rank)).unwrap_or_default(),
        cfg.student.display(),
        ema_note(ema_decay)
    );
    match &cfg.lora {
        Some(spec) => {
            let g_lora = cfg.out_dir.join("generator-lora");
            save_lora_folder(&g_vars, spec, &g_lora)?;
            save_lora_folder(&c_vars, spec, &cfg.out_dir.join("critic-lora"))?;
            merge_lora_model(&cfg.student, &g_lora, &model_dir, Some(&description))?;
            // The merged folder keeps the base's card; the student's sampling comes with it.
        }
        None => write_student_model(&student, &g_vars, sampling, student.card.shot_phase, &description, &model_dir)?,
    }
    let report = DmdReport {
        steps: step,
        generator_steps: g_trainer.step_count(),
        generator_loss: mean(&g_recent),
        critic_loss: mean(&c_recent),
        wall_seconds: started.elapsed().as_secs_f64(),
        ema_decay,
        model_dir: model_dir.clone(),
    };
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    write_text(&model_dir.join("training.json"), &(text + "\n"))?;
    Ok(report)
}

/// The story stage 4 walks as its `cursor`-th: drawn from the seed alone, so a resumed run
/// walks the same stories.
fn walk_story(seed: u64, cursor: u64, stories: usize) -> usize {
    WorldRng::derived(mix64(seed ^ 0x5705_7a1c), cursor).range(0, stories.saturating_sub(1))
}

/// Where stage 4 is in its walk over whole stories: which story, which shot next, and the
/// decoded pixels `[F, 3, H, W]` of the story's shots rolled out so far.
pub struct StoryWalk {
    /// How many stories were started before this one.
    pub cursor: u64,
    /// The story in progress.
    pub story: usize,
    /// The next shot of it.
    pub shot: usize,
    /// Its earlier shots, decoded.
    pub history: Vec<Tensor>,
}

impl StoryWalk {
    /// The walk at `step`: the position follows from the seed and the story lengths (one step
    /// per shot, stories in `walk_story` order); the decoded shots of the story in progress come
    /// from `dir/step-N.safetensors`, saved with that step's checkpoint.
    pub fn resume(dir: &Path, step: u64, seed: u64, shots_per_story: &[usize], device: &Device) -> Result<Self> {
        let (mut cursor, mut left) = (0u64, step);
        let mut story = walk_story(seed, 0, shots_per_story.len());
        while left >= shots_per_story[story].max(1) as u64 {
            left -= shots_per_story[story].max(1) as u64;
            cursor += 1;
            story = walk_story(seed, cursor, shots_per_story.len());
        }
        let shot = left as usize;
        let mut history = Vec::with_capacity(shot);
        if shot > 0 {
            let pixels = dir.join(format!("step-{step}.safetensors"));
            let tensors = candle_core::safetensors::load(&pixels, device).map_err(|e| {
                TrainError::File(format!(
                    "{}: {e} (the self-generated history of the story in progress at step {step} is needed to resume)",
                    pixels.display()
                ))
            })?;
            for k in 0..shot {
                let t = tensors
                    .get(&format!("shot.{k}"))
                    .ok_or_else(|| TrainError::File(format!("{}: no pixels for shot {k}", pixels.display())))?;
                history.push(t.clone());
            }
        }
        Ok(Self { cursor, story, shot, history })
    }

    /// Records the shot just rolled out; after the story's last shot the next story begins.
    pub fn advance(&mut self, pixels: Tensor, seed: u64, shots_per_story: &[usize]) {
        self.history.push(pixels);
        self.shot += 1;
        if self.shot >= shots_per_story[self.story] {
            self.cursor += 1;
            self.story = walk_story(seed, self.cursor, shots_per_story.len());
            self.shot = 0;
            self.history.clear();
        }
    }

    /// Saves the decoded shots of the story in progress for a checkpoint at `step` (nothing
    /// when it is at its first shot), keeping the newest three saves, so a run can also resume
    /// from an older checkpoint when the newest is removed.
    pub fn save(&self, dir: &Path, step: u64) -> Result<()> {
        if self.history.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|e| TrainError::File(format!("{}: {e}", dir.display())))?;
        let tensors: std::collections::HashMap<String, Tensor> =
            self.history.iter().enumerate().map(|(k, t)| (format!("shot.{k}"), t.clone())).collect();
        storyreel_nn::checkpoint::save_safetensors(&dir.join(format!("step-{step}.safetensors")), &tensors)?;
        let mut saved: Vec<u64> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().to_string();
                        name.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse::<u64>().ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        saved.sort_unstable();
        for old in &saved[..saved.len().saturating_sub(3)] {
            let _ = std::fs::remove_file(dir.join(format!("step-{old}.safetensors")));
        }
        Ok(())
    }
}

/// The drawn shot's conditioning with context picked from the walk's own earlier shots
/// (dropped → zeros, like ground truth); `captions` and `global` are the story's, for
/// caption-aware policies (empty: lengths only).
pub fn self_conditioning(
    teacher: &StoryModel,
    truth: &ShotConditioning,
    draw: &DmdDraw,
    history: &[Tensor],
    captions: &[String],
    global: &str,
    memory: &dyn ContextMemory,
) -> Result<ShotConditioning> {
    if draw.context_dropped || !teacher.card.uses_context || history.is_empty() {
        let context = truth.context.zeros_like()?;
        return Ok(ShotConditioning { context, flags: vec![0; truth.flags.len()], ..truth.clone() });
    }
    let (_, _, h, w) = truth.context.dims4()?;
    let lens: Vec<usize> = history.iter().map(|t| t.dim(0)).collect::<candle_core::Result<_>>()?;
    let known = captions.get(..=history.len()).unwrap_or(&[]);
    let picks = memory.select(&ContextQuery::with_captions(&lens, known).with_global(global));
    let (context, flags) =
        encode_context(teacher.vae.as_ref(), history, &picks, truth.flags.len(), (h, w), truth.context.device())?;
    Ok(ShotConditioning { context, flags, ..truth.clone() })
}

/// The noise of the score evaluation: its own stream, apart from the rollout's.
fn score_noise(seed: u64, dims: &[usize], device: &Device) -> Result<Tensor> {
    Ok(SeededNoise::new(mix64(seed ^ 0x5c0e)).noise(0, 0, 0, dims, device)?)
}

fn noised(x0: &Tensor, eps: &Tensor, t: f32) -> Result<Tensor> {
    let sigma = t as f64 / 1000.0;
    Ok(((x0 * (1.0 - sigma))? + (eps * sigma)?)?)
}

/// Ground-truth context (or zeros when dropped or absent) and the captions of a drawn shot.
fn conditioning(
    teacher: &StoryModel,
    story: &EncodedStory,
    draw: &DmdDraw,
    chunk_frames: usize,
    device: &Device,
) -> Result<ShotConditioning> {
    let n = teacher.card.context_frames;
    let target = &story.shots[draw.shot];
    let (f, c, h, w) = target.dims4()?;
    let (context, flags) = match (&story.contexts[draw.shot], draw.context_dropped || !teacher.card.uses_context) {
        (Some((z, fl)), false) => (z.clone(), fl.clone()),
        _ => (Tensor::zeros((n, c, h, w), DType::F32, device)?, vec![0; n]),
    };
    let embeddings = caption_embeddings(&teacher.text, &story.global, &story.captions[..=draw.shot])?;
    Ok(ShotConditioning {
        shot: draw.shot,
        context,
        flags,
        embeddings,
        frames: f.div_ceil(chunk_frames) * chunk_frames,
    })
}

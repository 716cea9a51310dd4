//! Stage 3 of ShotStream (shotstream.md §5.4): distribution matching distillation with
//! intra-shot self-forcing.
//!
//! Three networks: the generator (the causal student, from its ODE init), the real score (the
//! teacher, frozen, with CFG) and the fake score or critic (a trainable bidirectional copy of
//! the teacher). Every step rolls a shot out with the generator through the real KV-cache
//! inference path ([`ShotRun::next_chunk_to_exit`]: one random exit step shared by all chunks,
//! gradient only through it, a t = 0 cache refresh without gradient), conditioned on
//! ground-truth context. Generator steps (one in `generator_every`) follow the normalised DMD
//! gradient (fake − real x0 at a random noise level); the other steps train the critic's flow
//! loss on a fresh rollout.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use storyreel_engine::session::{SessionConfig, ShotRun};
use storyreel_engine::shot_plan::ShotPlan;
use storyreel_engine::teacher::{teacher_flow, TeacherInputs};
use storyreel_engine::teacher_story::{caption_embeddings, unconditional_caption};
use storyreel_engine::{FewStepSampler, FlowSchedule, NoiseSource, SeededNoise, StoryModel};
use storyreel_nn::kv_cache::LocalWindow;
use storyreel_nn::WanModel;
use storyreel_world::rng::{mix64, WorldRng};

use crate::error::{Result, TrainError};
use crate::log::Progress;
use crate::model_files::write_text;
use crate::stage_ode_init::{trainable_dit, write_student_model};
use crate::stage_teacher::{corpus_key, EncodedStory, TeacherCorpus, TeacherData};
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
    /// Output folder: `latents/`, `generator/`, `critic/`, `model/`.
    pub out_dir: PathBuf,
    /// Seed of the data draws and the noise.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
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
            out_dir: PathBuf::from("runs/toy-dmd"),
            seed: 0,
            progress: true,
        }
    }
}

impl DmdConfig {
    /// Reads a `.json` or `.toml` config over the defaults.
    pub fn read(path: &Path) -> Result<Self> {
        crate::stage_config::read_over_defaults(path, &Self::default())
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
}

/// x0 of the real score (the teacher with CFG: cond + g·(cond − uncond)).
pub fn real_x0(teacher: &WanModel, inputs: &ScoreInputs<'_>, guidance: f32) -> Result<Tensor> {
    let device = teacher.device().clone();
    let plan = ShotPlan::new(inputs.cond.shot, &inputs.cond.flags, inputs.cond.shot + 1)?;
    let captions = teacher.embed_captions(&inputs.cond.embeddings)?;
    let uncond = unconditional_caption(teacher, &device)?;
    let ti = TeacherInputs { plan: &plan, captions: &captions, uncond: Some(&uncond), context: &inputs.cond.context };
    let c = teacher_flow(teacher, &ti, inputs.x_t, inputs.t, true)?;
    let u = teacher_flow(teacher, &ti, inputs.x_t, inputs.t, false)?;
    let v = (&c + ((&c - u)? * guidance as f64)?)?;
    let sigma = inputs.t as f64 / 1000.0;
    Ok((inputs.x_t - (v * sigma)?)?.detach())
}

/// The critic's conditional flow at `x_t` (with its graph).
pub fn critic_flow(critic: &WanModel, inputs: &ScoreInputs<'_>) -> Result<Tensor> {
    let plan = ShotPlan::new(inputs.cond.shot, &inputs.cond.flags, inputs.cond.shot + 1)?;
    let captions = critic.embed_captions(&inputs.cond.embeddings)?;
    let ti = TeacherInputs { plan: &plan, captions: &captions, uncond: None, context: &inputs.cond.context };
    Ok(teacher_flow(critic, &ti, inputs.x_t, inputs.t, true)?)
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
    /// The model folder written.
    pub model_dir: PathBuf,
}

/// Runs (or resumes) stage 3 and writes `OUT/model`, the distilled student.
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
    let key = corpus_key(&vae_dir, &data, teacher.card.context_frames)?;
    let corpus_dir = cfg.out_dir.join("latents");
    let corpus = match TeacherCorpus::load(&corpus_dir, &key)? {
        Some(c) => c,
        None => {
            let c = TeacherCorpus::encode(&teacher.vae, &data, teacher.card.context_frames, cfg.progress)?;
            c.save(&corpus_dir, &key)?;
            c
        }
    };
    let shots_per_story = corpus.shots_per_story();

    let g_vars = VarMap::new();
    let generator = trainable_dit(&student, &g_vars, &device)?;
    let c_vars = VarMap::new();
    let critic = trainable_dit(&teacher, &c_vars, &device)?;
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
    let mut g_trainer = Trainer::new(&g_vars, g_cfg)?;
    let mut c_trainer = Trainer::new(&c_vars, c_cfg)?;
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
    let table = FlowSchedule::new(1000, cfg.shift);
    let bar = Progress::new(cfg.steps, step, cfg.progress);
    let (mut g_recent, mut c_recent) = (Vec::new(), Vec::new());
    while step < cfg.steps {
        let draw = draw_dmd_sample(cfg, step, &shots_per_story, sampler.timesteps().len(), &table);
        let story = &corpus.stories[draw.story];
        let cond = conditioning(&teacher, story, &draw, cf, &device)?;
        let mut noise = SeededNoise::new(draw.noise_seed);
        let is_generator = step.is_multiple_of(cfg.generator_every);
        let report = if is_generator {
            g_trainer.step(|_| {
                let x_hat = rollout(&generator, &sampler, cf, &cond, draw.exit, &mut noise)?;
                let eps = score_noise(draw.noise_seed, x_hat.dims(), &device)?;
                let x_t = noised(&x_hat.detach(), &eps, draw.t)?;
                let inputs = ScoreInputs { cond: &cond, x_t: &x_t, t: draw.t };
                let real = real_x0(&teacher.dit, &inputs, cfg.real_guidance)?;
                let v_fake = critic_flow(&critic, &inputs)?.detach();
                let fake = (&x_t - (v_fake * (draw.t as f64 / 1000.0))?)?;
                let (loss, g_mean) = dmd_loss(&x_hat, &real, &fake)?;
                Ok((loss, vec![("dmd_grad".into(), g_mean), ("t".into(), draw.t as f64)]))
            })?
        } else {
            c_trainer.step(|_| {
                let x_hat = rollout(&generator, &sampler, cf, &cond, draw.exit, &mut noise)?.detach();
                let eps = score_noise(draw.noise_seed, x_hat.dims(), &device)?;
                let x_t = noised(&x_hat, &eps, draw.t)?;
                let inputs = ScoreInputs { cond: &cond, x_t: &x_t, t: draw.t };
                let v = critic_flow(&critic, &inputs)?;
                let loss = (v - (&eps - &x_hat)?)?.sqr()?.mean_all()?;
                Ok((loss, vec![("t".into(), draw.t as f64)]))
            })?
        };
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
        }
    }
    bar.finish();
    g_trainer.finish();
    c_trainer.finish();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let model_dir = cfg.out_dir.join("model");
    let description = format!(
        "toy causal student, DMD stage 3 (intra-shot self-forcing): {} steps ({} generator) from {}",
        cfg.steps,
        g_trainer.step_count(),
        cfg.student.display()
    );
    write_student_model(&student, &g_vars, sampling, &description, &model_dir)?;
    let report = DmdReport {
        steps: step,
        generator_steps: g_trainer.step_count(),
        generator_loss: mean(&g_recent),
        critic_loss: mean(&c_recent),
        wall_seconds: started.elapsed().as_secs_f64(),
        model_dir: model_dir.clone(),
    };
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    write_text(&model_dir.join("training.json"), &(text + "\n"))?;
    Ok(report)
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

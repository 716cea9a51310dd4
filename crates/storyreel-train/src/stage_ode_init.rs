//! Stage 2b of ShotStream (shotstream.md §5.3): ODE-regression initialisation of the causal
//! student.
//!
//! The student starts as a copy of the teacher (the parameter names are the same) and learns,
//! from the teacher's ODE pairs, to jump from a trajectory state straight to its end point. Each
//! sample is one pair: every chunk of the shot independently takes one of the saved states (or
//! the clean end point, t = 0) at its timestep, the context goes in front at t = 0, and one
//! block-causal pass (§3.3: each chunk sees the context, earlier chunks and itself) predicts
//! x0 = x − σ·v. The loss is the MSE to the teacher's x0 over the noisy chunks only. All DiT
//! weights train; the text encoder is the teacher's, frozen.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use storyreel_engine::shot_plan::ShotPlan;
use storyreel_engine::story_model::{self, ModelCard, ModelKind, StudentSampling};
use storyreel_engine::teacher_story::caption_embeddings;
use storyreel_engine::{FewStepSampler, StoryModel};
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::WanModel;
use storyreel_world::rng::{mix64, WorldRng};

use crate::error::{Result, TrainError};
use crate::model_files::{copy_model_parts, ema_note, save_dit, write_text};
use crate::ode_pairs::{check_pairs_teacher, load_ode_pair_folders, OdePair, OdePairsIndex};
use crate::stage_config::{learning_settings, read_over_defaults};
use crate::trainer::{TrainConfig, Trainer};

/// Variable-name prefix of the student's DiT inside the stage's variables.
pub const DIT_PREFIX: &str = "dit";

/// Settings of `storyreel train ode-init`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OdeInitConfig {
    /// The teacher's story model folder: the student's first weights, its text encoder and VAE.
    pub teacher: PathBuf,
    /// Folders of ODE pairs made from that teacher (`storyreel train ode-pairs`); one path or a
    /// list, so that runs made side by side on different story seeds train one student.
    #[serde(deserialize_with = "one_or_many_paths")]
    pub pairs: Vec<PathBuf>,
    /// Probability of zeroing every caption embedding of a sample (10% in ShotStream).
    pub caption_dropout: f64,
    /// The student's RoPE shot-phase indicator: `None` keeps the teacher's; `false` trains the
    /// no-phase ablation (the student and every stage after it run without the indicator).
    pub shot_phase: Option<bool>,
    /// Optimisation steps.
    pub steps: u64,
    /// Optimiser, schedule, checkpoints, output folder.
    pub train: TrainConfig,
}

impl Default for OdeInitConfig {
    fn default() -> Self {
        let train = TrainConfig {
            out_dir: PathBuf::from("runs/toy-ode-init"),
            checkpoint_every: 250,
            schedule: crate::schedule::LrSchedule::warmup_cosine(2e-4, 1e-5, 50),
            clip_norm: Some(1.0),
            ..Default::default()
        };
        Self {
            teacher: PathBuf::from("runs/toy-teacher/model"),
            pairs: vec![PathBuf::from("runs/ode-pairs")],
            caption_dropout: 0.1,
            shot_phase: None,
            steps: 2000,
            train,
        }
    }
}

impl OdeInitConfig {
    /// Reads a `.json` or `.toml` config over the defaults.
    pub fn read(path: &Path) -> Result<Self> {
        read_over_defaults(path, &Self::default())
    }

    /// Checks the settings (the trainer's own included).
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        if self.steps == 0 {
            return Err(TrainError::out_of_range("steps", 0, "at least 1"));
        }
        if self.pairs.is_empty() {
            return Err(TrainError::File("`pairs` lists no ODE pair folder".into()));
        }
        if !(0.0..=1.0).contains(&self.caption_dropout) {
            return Err(TrainError::out_of_range("caption_dropout", self.caption_dropout, "a probability in [0, 1]"));
        }
        Ok(())
    }
}

/// `pairs` as written in a config: one folder, or a list of them.
fn one_or_many_paths<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a pair folder path or a list of them")]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// The folders, comma-separated, for messages and the model card.
fn folder_list(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// One pair made ready for training: its caption embeddings computed once by the frozen encoder.
pub struct PreparedPair {
    /// The pair.
    pub pair: OdePair,
    /// Caption embeddings `[shot + 1, L, D]`.
    pub embeddings: Tensor,
}

/// What one sample uses of its pair: which state each chunk takes and whether captions drop.
#[derive(Debug, Clone, PartialEq)]
pub struct OdeDraw {
    /// Index of the pair.
    pub pair: usize,
    /// Per chunk, an index into the saved states; the number of states means the clean x0.
    pub states: Vec<usize>,
    /// Zero every caption embedding.
    pub caption_dropped: bool,
}

/// Draws sample `index` (pure in `(seed, index)`, so a resumed run sees the same data). At least
/// one chunk is noisy, so every sample has a loss.
pub fn draw_ode_sample(
    seed: u64,
    index: u64,
    pairs: &[PreparedPair],
    chunk_frames: usize,
    states: usize,
    caption_dropout: f64,
) -> OdeDraw {
    let mut rng = WorldRng::derived(mix64(seed ^ 0x0de1_417a), index);
    let pair = rng.range(0, pairs.len() - 1);
    let chunks = pairs[pair].pair.x0.dim(0).unwrap_or(chunk_frames) / chunk_frames;
    let mut picks: Vec<usize> = (0..chunks.max(1)).map(|_| rng.range(0, states)).collect();
    if picks.iter().all(|&s| s == states) {
        let chunk = rng.range(0, picks.len() - 1);
        picks[chunk] = rng.range(0, states - 1);
    }
    OdeDraw { pair, states: picks, caption_dropped: rng.chance(caption_dropout) }
}

/// The regression loss of one sample and its value.
pub fn ode_regression_loss(
    dit: &WanModel,
    prepared: &PreparedPair,
    draw: &OdeDraw,
    sampler: &FewStepSampler,
    chunk_frames: usize,
) -> Result<(Tensor, f64)> {
    let pair = &prepared.pair;
    let device = dit.device().clone();
    let steps = sampler.timesteps();
    let f = pair.x0.dim(0)?;
    if draw.states.len() * chunk_frames != f {
        return Err(TrainError::File(format!(
            "pair of {f} frames drawn with {} chunks of {chunk_frames}",
            draw.states.len()
        )));
    }
    let mut inputs = Vec::with_capacity(draw.states.len());
    let mut t_of_frame = Vec::with_capacity(f);
    for (chunk, &s) in draw.states.iter().enumerate() {
        let (latents, t) = if s == steps.len() {
            (pair.x0.narrow(0, chunk * chunk_frames, chunk_frames)?, 0.0)
        } else {
            (pair.states.get(s)?.narrow(0, chunk * chunk_frames, chunk_frames)?, steps[s])
        };
        inputs.push(latents);
        t_of_frame.extend(std::iter::repeat_n(t, chunk_frames));
    }
    let target = Tensor::cat(&inputs, 0)?;
    let n = pair.context.dim(0)?;
    let x = Tensor::cat(&[&pair.context, &target], 0)?.to_device(&device)?;
    let plan = ShotPlan::new(pair.shot, &pair.flags, pair.shot + 1)?;
    let mut frames = plan.context_frames();
    frames.extend(plan.shot_frames(0, f, 0.0));
    for (fr, &t) in frames[n..].iter_mut().zip(&t_of_frame) {
        fr.t = t;
    }
    let blocks: Vec<usize> = (0..n).map(|_| 0).chain((0..f).map(|i| 1 + i / chunk_frames)).collect();
    let embeddings = if draw.caption_dropped { prepared.embeddings.zeros_like()? } else { prepared.embeddings.clone() };
    let captions = dit.embed_captions(&embeddings.to_device(&device)?)?;
    let v = dit.forward_block_causal(&x, &frames, &blocks, &captions)?.narrow(0, n, f)?;
    let sigmas: Vec<f32> = t_of_frame.iter().map(|&t| if t > 0.0 { sampler.sigma(t) } else { 0.0 }).collect();
    let noisy: Vec<f32> = t_of_frame.iter().map(|&t| if t > 0.0 { 1.0 } else { 0.0 }).collect();
    let count = noisy.iter().sum::<f32>() as f64;
    let sigma = Tensor::from_vec(sigmas, (f, 1, 1, 1), &device)?;
    let mask = Tensor::from_vec(noisy, (f, 1, 1, 1), &device)?;
    let x0_hat = (target.to_device(&device)? - v.broadcast_mul(&sigma)?)?;
    let err = (x0_hat - pair.x0.to_device(&device)?)?.sqr()?.broadcast_mul(&mask)?;
    let per_frame = (pair.x0.elem_count() / f) as f64;
    let loss = (err.sum_all()? / (count * per_frame).max(1.0))?;
    let value = loss.to_scalar::<f32>()? as f64;
    Ok((loss, value))
}

/// What a finished ODE-init stage reports (also `OUT/model/training.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OdeInitReport {
    /// Steps trained.
    pub steps: u64,
    /// Mean loss over the last 100 steps.
    pub final_loss: f64,
    /// Wall time of this invocation.
    pub wall_seconds: f64,
    /// Pairs trained on.
    pub pairs: usize,
    /// The EMA decay when the model folder holds the EMA weights; none: the last step's weights.
    pub ema_decay: Option<f64>,
    /// The model folder written.
    pub model_dir: PathBuf,
}

/// Trains (or resumes) the student's ODE init and writes `train.out_dir/model`, a student
/// story model folder.
pub fn run_ode_init_stage(cfg: &OdeInitConfig) -> Result<OdeInitReport> {
    cfg.validate()?;
    let started = Instant::now();
    let device = Device::Cpu;
    let teacher = StoryModel::load(&cfg.teacher, &device)?;
    check_distillable(&teacher, &cfg.teacher)?;
    let (index, pairs) = load_ode_pair_folders(&cfg.pairs)?;
    if pairs.is_empty() {
        return Err(TrainError::File(format!("{}: the pair folders hold no pairs", folder_list(&cfg.pairs))));
    }
    check_pairs_teacher(&index, &cfg.teacher)?;
    check_pairs_fit(&teacher, &index, &pairs)?;
    let sampler = FewStepSampler::new(&index.student_steps, index.shift)?;
    let prepared = pairs
        .into_iter()
        .map(|pair| {
            let embeddings = caption_embeddings(&teacher.text, &pair.global, &pair.captions)?;
            Ok(PreparedPair { pair, embeddings })
        })
        .collect::<Result<Vec<_>>>()?;

    let shot_phase = cfg.shot_phase.unwrap_or(teacher.card.shot_phase);
    let varmap = VarMap::new();
    let student = trainable_dit(&teacher, shot_phase, &varmap, &device)?;
    let mut train = cfg.train.clone();
    train.schedule.total_steps = cfg.steps;
    train.schedule.warmup_steps = train.schedule.warmup_steps.min(cfg.steps);
    std::fs::create_dir_all(&train.out_dir)
        .map_err(|e| TrainError::File(format!("{}: {e}", train.out_dir.display())))?;
    let settings = learning_settings(cfg, &["train", "steps", "teacher", "pairs"])?;
    let mut trainer = Trainer::new(&varmap, train)?.with_stage_settings(settings);
    trainer.resume_latest(&cfg.train.out_dir)?;
    let accumulate = cfg.train.accumulate as u64;
    let states = index.timesteps.len();
    let mut recent: Vec<f64> = Vec::new();
    while trainer.step_count() < cfg.steps {
        let step = trainer.step_count();
        let report = trainer.step(|micro| {
            let i = step * accumulate + micro as u64;
            let draw = draw_ode_sample(cfg.train.seed, i, &prepared, index.chunk_frames, states, cfg.caption_dropout);
            let (loss, value) =
                ode_regression_loss(&student, &prepared[draw.pair], &draw, &sampler, index.chunk_frames)?;
            Ok((loss, vec![("mse".into(), value)]))
        })?;
        recent.push(report.loss);
        if recent.len() > 100 {
            recent.remove(0);
        }
    }
    trainer.finish();
    let final_loss = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
    let model_dir = cfg.train.out_dir.join("model");
    let student_sampling =
        StudentSampling { steps: index.student_steps.clone(), shift: index.shift, chunk_frames: index.chunk_frames };
    let ema_decay = trainer.load_export_weights(&varmap)?;
    let description = format!(
        "toy causal student, ODE init: {} steps on {} ODE pairs of the teacher {}{}{}",
        cfg.steps,
        prepared.len(),
        cfg.teacher.display(),
        if shot_phase { "" } else { ", without the RoPE shot phase (ablation)" },
        ema_note(ema_decay)
    );
    write_student_model(&teacher, &varmap, student_sampling, shot_phase, &description, &model_dir)?;
    let report = OdeInitReport {
        steps: trainer.step_count(),
        final_loss,
        wall_seconds: started.elapsed().as_secs_f64(),
        pairs: prepared.len(),
        ema_decay,
        model_dir: model_dir.clone(),
    };
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    write_text(&model_dir.join("training.json"), &(text + "\n"))?;
    Ok(report)
}

/// Refuses a teacher the causal student cannot learn from: one with context channels, which
/// the student's KV-cache path does not join yet, so it could not take over the teacher's
/// weights. `ode-pairs` and `ode-init` check it before any work.
pub fn check_distillable(teacher: &StoryModel, path: &Path) -> Result<()> {
    if teacher.card.context_channels {
        return Err(TrainError::File(format!(
            "{}: the teacher takes context channels (card `context_channels`), which the causal student \
             does not support yet; distil a teacher trained without them",
            path.display()
        )));
    }
    Ok(())
}

/// The pairs must fit the teacher: latent shape, context size and chunking.
fn check_pairs_fit(teacher: &StoryModel, index: &OdePairsIndex, pairs: &[OdePair]) -> Result<()> {
    let cfg = teacher.dit.config();
    let scale = teacher.vae.spatial_scale();
    let hw = (teacher.card.height as usize / scale, teacher.card.width as usize / scale);
    if index.timesteps.is_empty() || index.chunk_frames == 0 {
        return Err(TrainError::File("the pair index has no timesteps or no chunk size".into()));
    }
    for p in pairs {
        let d = p.x0.dims();
        if d[1] != cfg.out_dim || (d[2], d[3]) != hw || p.flags.len() != teacher.card.context_frames {
            return Err(TrainError::File(format!(
                "a pair of story {} shot {} has latents {d:?} and {} context frames; the teacher takes \
                 [F, {}, {}, {}] and {} (pairs of another teacher?)",
                p.story_seed,
                p.shot,
                p.flags.len(),
                cfg.out_dim,
                hw.0,
                hw.1,
                teacher.card.context_frames
            )));
        }
    }
    Ok(())
}

/// A trainable copy of a story model's DiT (the student's start from its teacher, the DMD
/// generator and critic), its weights held as variables in `varmap`, with the RoPE shot phase
/// on or off.
pub fn trainable_dit(teacher: &StoryModel, shot_phase: bool, varmap: &VarMap, device: &Device) -> Result<WanModel> {
    let cfg = teacher.dit.config().clone();
    let dit_dir = teacher.dir.join(story_model::DIT_DIR);
    let loaded = storyreel_nn::checkpoint::load_dit_checkpoint(&dit_dir, &cfg, DType::F32, device)?;
    {
        let data = varmap.data();
        let mut vars = data.lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
        for (name, t) in loaded.tensors {
            if let std::collections::hash_map::Entry::Vacant(slot) = vars.entry(format!("{DIT_PREFIX}.{name}")) {
                slot.insert(candle_core::Var::from_tensor(&t)?);
            }
        }
    }
    let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
    let rope = story_model::story_rope(shot_phase);
    Ok(WanModel::load(vb.pp(DIT_PREFIX), &cfg, rope)?)
}

/// Writes a student story model folder: the DiT from `varmap`, the text encoder and VAE of
/// `base` (the teacher, or the student a stage started from), and a card of kind student
/// that records whether the DiT was trained with the RoPE shot phase.
pub fn write_student_model(
    base: &StoryModel,
    varmap: &VarMap,
    student: StudentSampling,
    shot_phase: bool,
    description: &str,
    dir: &Path,
) -> Result<()> {
    save_dit(varmap, DIT_PREFIX, base.dit.config(), dir)?;
    copy_model_parts(&base.dir, dir)?;
    let card = ModelCard {
        kind: ModelKind::Student,
        student: Some(student),
        shot_phase,
        description: description.to_string(),
        ..base.card.clone()
    };
    Ok(card.write(dir)?)
}

//! Stage `vae`: trains the toy VAE (the Wan VAE code at a small width) on world clips, scores
//! held-out PSNR as it goes, and writes a model folder the rest of storyreel loads
//! (`vae.safetensors` + `vae_config.json` with measured latent statistics).
//!
//! Shape choices for 64×64 world frames: Wan's temporal compression is kept (4×, the first
//! frame alone), so every later stage runs the real pipeline; spatial compression is 4× (two
//! down-sampling levels, not Wan's three), giving 16×16 latents — 8×8 would leave a character in
//! a wide shot (15 px tall) about two latent pixels; 8 latent channels instead of 16 because
//! the world has far fewer textures than real video.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use storyreel_nn::vae::{VaeConfig, WanVae};

use crate::data::story_options;
use crate::data::{frames_to_tensor, ClipSource, DatasetClips, RenderedClips};
use crate::error::{Result, TrainError};
use crate::params::NamedParams;
use crate::stage_config::{learning_settings, read_over_defaults};
use crate::trainer::{TrainConfig, Trainer};
use crate::vae::{latent_statistics, psnr_from_mse, random_crop, trainable_vae, vae_loss};

/// Widths and depths of the toy VAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToyVaeShape {
    /// Latent channels.
    pub z_dim: usize,
    /// Width of the first level.
    pub base_dim: usize,
    /// Width multipliers per level (its length − 1 is the number of 2× spatial steps).
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level.
    pub num_res_blocks: usize,
    /// Per level transition, whether time is halved (two `true`s = Wan's 4×).
    pub temporal_downsample: Vec<bool>,
}

impl Default for ToyVaeShape {
    fn default() -> Self {
        Self {
            z_dim: 8,
            base_dim: 16,
            dim_mult: vec![1, 2, 4],
            num_res_blocks: 1,
            temporal_downsample: vec![true, true],
        }
    }
}

impl ToyVaeShape {
    /// The VAE config with identity latent statistics (training's).
    pub fn config(&self) -> VaeConfig {
        VaeConfig {
            z_dim: self.z_dim,
            base_dim: self.base_dim,
            dim_mult: self.dim_mult.clone(),
            num_res_blocks: self.num_res_blocks,
            temporal_downsample: self.temporal_downsample.clone(),
            latents_mean: vec![0.0; self.z_dim],
            latents_std: vec![1.0; self.z_dim],
        }
    }
}

/// Where the clips come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipData {
    /// A dataset folder from `storyreel world generate`; without one, clips are rendered.
    pub dataset: Option<PathBuf>,
    /// First story seed of rendered training clips.
    pub first_seed: u64,
    /// Number of story seeds to draw from.
    pub stories: u64,
    /// Frames per clip (1 + 4k).
    pub clip_frames: usize,
    /// Take each clip as a whole shot (17–33 frames on the world's defaults) instead of a
    /// `clip_frames` window, so a clip holds every position a shot has.
    pub whole_shots: bool,
    /// Frame width of rendered clips.
    pub width: u32,
    /// Frame height of rendered clips.
    pub height: u32,
    /// Train on a `crop` × `crop` window of each clip instead of whole frames (a multiple of
    /// the VAE's spatial scale; the window moves from clip to clip, held-out clips stay whole).
    /// The convolutions are translation-equivariant, so a whole shot's causal path through time
    /// is trained at a fraction of the pixels' cost.
    pub crop: Option<u32>,
}

impl Default for ClipData {
    fn default() -> Self {
        Self {
            dataset: None,
            first_seed: 0,
            stories: 1_000_000,
            clip_frames: 5,
            whole_shots: false,
            width: 64,
            height: 64,
            crop: None,
        }
    }
}

/// Held-out scoring during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeldOut {
    /// First story seed of the held-out clips (apart from training seeds and the benchmark).
    pub first_seed: u64,
    /// Held-out clips scored.
    pub clips: usize,
    /// Score every this many steps (and at the end).
    pub every: u64,
}

impl Default for HeldOut {
    fn default() -> Self {
        Self { first_seed: 8_000_000_000, clips: 16, every: 250 }
    }
}

/// Everything `storyreel train vae --config FILE` reads (JSON or TOML; unknown keys are errors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaeStageConfig {
    /// The VAE's shape.
    pub vae: ToyVaeShape,
    /// Training clips.
    pub data: ClipData,
    /// Held-out PSNR.
    pub held_out: HeldOut,
    /// Weight of the KL term.
    pub kl_weight: f64,
    /// Starting log-variance of the posterior (the bias of the encoder's last 1×1 conv); see
    /// `vae::trainable_vae`. Ignored when starting from `init_from` or a checkpoint.
    pub initial_logvar: f64,
    /// Optimisation steps.
    pub steps: u64,
    /// Seed of the initial weights.
    pub init_seed: u64,
    /// Start from this trained VAE (folder or file; same shape) instead of random weights, e.g.
    /// to continue a short-clip run on whole shots. A resumed run ignores it.
    pub init_from: Option<PathBuf>,
    /// With `init_from`: set the posterior's starting log-variance to this instead of keeping the
    /// trained one, e.g. to take the near-unit noise out of a VAE trained before
    /// `initial_logvar` existed (within [−30, 20]).
    pub reset_logvar: Option<f64>,
    /// Optimiser, schedule, accumulation, checkpoints, output folder.
    pub train: TrainConfig,
}

impl Default for VaeStageConfig {
    fn default() -> Self {
        let mut train = TrainConfig {
            out_dir: PathBuf::from("runs/toy-vae"),
            checkpoint_every: 250,
            schedule: crate::schedule::LrSchedule::warmup_cosine(1e-3, 1e-5, 100),
            clip_norm: Some(1.0),
            ..Default::default()
        };
        train.optimizer.weight_decay = 0.0;
        Self {
            vae: ToyVaeShape::default(),
            data: ClipData::default(),
            held_out: HeldOut::default(),
            kl_weight: 1e-6,
            initial_logvar: -10.0,
            steps: 3000,
            init_seed: 1,
            init_from: None,
            reset_logvar: None,
            train,
        }
    }
}

impl VaeStageConfig {
    /// Reads a `.json` or `.toml` config.
    pub fn read(path: &Path) -> Result<Self> {
        read_over_defaults(path, &Self::default())
    }

    /// Checks the settings (the trainer's own included).
    pub fn validate(&self) -> Result<()> {
        self.vae.config().validate()?;
        self.train.validate()?;
        if self.steps == 0 {
            return Err(TrainError::out_of_range("steps", 0, "at least 1"));
        }
        if !(self.kl_weight.is_finite() && self.kl_weight >= 0.0) {
            return Err(TrainError::out_of_range("kl_weight", self.kl_weight, "a finite weight >= 0"));
        }
        if !(self.initial_logvar.is_finite() && (-30.0..=20.0).contains(&self.initial_logvar)) {
            return Err(TrainError::out_of_range("initial_logvar", self.initial_logvar, "within [-30, 20]"));
        }
        if let Some(lv) = self.reset_logvar {
            if self.init_from.is_none() {
                return Err(TrainError::out_of_range("reset_logvar", lv, "unset without init_from"));
            }
            if !(lv.is_finite() && (-30.0..=20.0).contains(&lv)) {
                return Err(TrainError::out_of_range("reset_logvar", lv, "within [-30, 20]"));
            }
        }
        if let Some(crop) = self.data.crop {
            let scale = self.vae.config().spatial_scale() as u32;
            // A dataset's frame size is only known when its clips are read; `random_crop` checks it there.
            let frame = if self.data.dataset.is_some() { None } else { Some(self.data.width.min(self.data.height)) };
            if crop == 0 || !crop.is_multiple_of(scale) || frame.is_some_and(|f| crop > f) {
                let limit = frame.map(|f| format!(", at most the frame size {f}")).unwrap_or_default();
                let want = format!("a multiple of the VAE's spatial scale {scale}{limit}");
                return Err(TrainError::out_of_range("data.crop", crop, &want));
            }
        }
        if self.held_out.clips == 0 || self.held_out.every == 0 {
            return Err(TrainError::out_of_range("held_out", format!("{:?}", self.held_out), "clips and every >= 1"));
        }
        Ok(())
    }
}

/// How a VAE run ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VaeStageReport {
    /// Steps done in total (resumed ones included).
    pub steps: u64,
    /// Mean held-out PSNR at the end, dB.
    pub held_out_psnr: f64,
    /// Held-out PSNR after each scoring, `(step, dB)`.
    pub psnr_curve: Vec<(u64, f64)>,
    /// Seconds this invocation ran.
    pub wall_seconds: f64,
    /// Parameters of the VAE.
    pub parameters: usize,
    /// The EMA decay when the model holds the EMA weights (and `held_out_psnr` scores them).
    pub ema_decay: Option<f64>,
    /// Where the model folder was written.
    pub model_dir: PathBuf,
}

/// The clips `data` describes: read from its dataset folder, or rendered.
pub(crate) fn clip_source(data: &ClipData) -> Result<Box<dyn ClipSource>> {
    Ok(match &data.dataset {
        Some(dir) => {
            let clips = DatasetClips::open(dir, data.clip_frames)?;
            Box::new(if data.whole_shots { clips.whole_shots() } else { clips })
        }
        None => {
            let options = story_options(data.width, data.height);
            let clips = RenderedClips::new(options, data.first_seed, data.stories, data.clip_frames)?;
            Box::new(if data.whole_shots { clips.whole_shots() } else { clips })
        }
    })
}

/// Mean PSNR of mean-latent reconstructions of the held-out clips.
pub fn held_out_psnr(vae: &WanVae, clips: &[Tensor]) -> Result<f64> {
    let mut total = 0.0;
    for x in clips {
        let (mu, _) = vae.encode_moments(x)?;
        let recon = vae.decode_raw(&mu)?.clamp(-1f32, 1f32)?;
        let mse = (recon - x)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
        total += psnr_from_mse(mse);
    }
    Ok(total / clips.len().max(1) as f64)
}

/// Drops held-out scores after `step` (a resumed run scores those steps again).
fn keep_scores_up_to(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, kept).map_err(|e| TrainError::File(format!("{}: {e}", path.display())))
}

/// A stage's trainer over `varmap` for `steps` steps, resumed from the newest checkpoint in
/// `train.out_dir`, and that folder's `held_out.jsonl` open for appending (scores after the
/// resumed step dropped, since they are scored again).
pub(crate) fn trainer_with_held_out_log(
    varmap: &VarMap,
    train: &TrainConfig,
    steps: u64,
    settings: serde_json::Value,
) -> Result<(Trainer, std::fs::File)> {
    let mut train = train.clone();
    train.schedule.total_steps = steps;
    // A short run (a smoke test, `--steps 2`) keeps its warm-up inside the run.
    train.schedule.warmup_steps = train.schedule.warmup_steps.min(steps);
    let out_dir = train.out_dir.clone();
    let mut trainer = Trainer::new(varmap, train)?.with_stage_settings(settings);
    trainer.resume_latest(&out_dir)?;
    std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::File(format!("{}: {e}", out_dir.display())))?;
    let eval_path = out_dir.join("held_out.jsonl");
    keep_scores_up_to(&eval_path, trainer.step_count())?;
    let eval_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&eval_path)
        .map_err(|e| TrainError::File(format!("{}: {e}", eval_path.display())))?;
    Ok((trainer, eval_log))
}

/// Whether every encoder-side weight (the encoder and its posterior conv `conv1`) is frozen, as
/// in a decoder-only fine-tune: then the latent space, and so its statistics, stay as they were.
fn encoder_frozen(params: &NamedParams) -> bool {
    let mut encoder_side =
        params.all().iter().filter(|p| p.name.starts_with("encoder.") || p.name.starts_with("conv1.")).peekable();
    encoder_side.peek().is_some() && encoder_side.all(|p| !p.trainable)
}

/// Copies a trained VAE's weights into the stage's variables (every variable must be present
/// with the same shape).
fn load_initial_weights(varmap: &VarMap, from: &Path, device: &Device) -> Result<()> {
    let trained = WanVae::load(from, DType::F32, device)
        .map_err(|e| TrainError::File(format!("init_from {}: {e}", from.display())))?;
    let data = varmap.data().lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    for (name, var) in data.iter() {
        let t = trained.tensors().get(name).ok_or_else(|| {
            TrainError::File(format!("init_from {}: no tensor `{name}` (a VAE of another shape?)", from.display()))
        })?;
        if t.dims() != var.dims() {
            return Err(TrainError::File(format!(
                "init_from {}: `{name}` is {:?}, the stage's VAE needs {:?}",
                from.display(),
                t.dims(),
                var.dims()
            )));
        }
        var.set(t)?;
    }
    Ok(())
}

/// Sets the log-variance half of the posterior's bias (`conv1.bias[z..2z]`) to `logvar`.
fn reset_posterior_logvar(varmap: &VarMap, z_dim: usize, logvar: f32) -> Result<()> {
    let data = varmap.data().lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    let bias = data.get("conv1.bias").ok_or_else(|| TrainError::File("the VAE has no `conv1.bias`".into()))?;
    let mut values = bias.as_tensor().to_vec1::<f32>()?;
    if values.len() != 2 * z_dim {
        return Err(TrainError::File(format!("`conv1.bias` has {} values, not 2 × {z_dim}", values.len())));
    }
    values[z_dim..].fill(logvar);
    bias.set(&Tensor::from_vec(values, 2 * z_dim, bias.device())?)?;
    Ok(())
}

/// Trains (or resumes) the toy VAE and writes `train.out_dir/model`.
pub fn run_vae_stage(cfg: &VaeStageConfig) -> Result<VaeStageReport> {
    cfg.validate()?;
    let started = Instant::now();
    let device = Device::Cpu;
    let source = clip_source(&cfg.data)?;
    let eval_options = story_options(cfg.data.width, cfg.data.height);
    let eval_source = RenderedClips::new(eval_options, cfg.held_out.first_seed, 1_000, cfg.data.clip_frames)?;
    let eval_source = if cfg.data.whole_shots { eval_source.whole_shots() } else { eval_source };
    let eval_clips: Vec<Tensor> = (0..cfg.held_out.clips as u64)
        .map(|i| eval_source.clip(i).and_then(|c| frames_to_tensor(&c.frames, &device)))
        .collect::<Result<_>>()?;

    let varmap = VarMap::new();
    let vae = trainable_vae(&cfg.vae.config(), &varmap, cfg.init_seed, cfg.initial_logvar as f32, &device)?;
    if let Some(from) = &cfg.init_from {
        load_initial_weights(&varmap, from, &device)?;
        if let Some(lv) = cfg.reset_logvar {
            reset_posterior_logvar(&varmap, cfg.vae.z_dim, lv as f32)?;
        }
    }
    let parameters = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    // Initial weights, scoring and paths may change on a resume; the data and loss may not.
    let settings = learning_settings(
        cfg,
        &["train", "steps", "init_seed", "init_from", "reset_logvar", "held_out", "data.dataset"],
    )?;
    let (mut trainer, mut eval_log) = trainer_with_held_out_log(&varmap, &cfg.train, cfg.steps, settings)?;
    let out_dir = cfg.train.out_dir.clone();
    let accumulate = cfg.train.accumulate as u64;
    let train_encoder = !encoder_frozen(trainer.params());
    let scale = cfg.vae.config().spatial_scale();
    let mut curve = Vec::new();
    while trainer.step_count() < cfg.steps {
        let step = trainer.step_count();
        trainer.step(|micro| {
            let index = step * accumulate + micro as u64;
            let clip = source.clip(index)?;
            let x = frames_to_tensor(&clip.frames, &device)?;
            let x = match cfg.data.crop {
                Some(crop) => random_crop(&x, crop as usize, scale, index)?,
                None => x,
            };
            let loss = vae_loss(&vae, &x, cfg.kl_weight, index ^ 0x5eed, train_encoder)?;
            Ok((loss.total, vec![("l1".into(), loss.l1), ("kl".into(), loss.kl), ("psnr".into(), loss.psnr)]))
        })?;
        let done = trainer.step_count();
        if done % cfg.held_out.every == 0 || done == cfg.steps {
            let psnr = held_out_psnr(&vae, &eval_clips)?;
            curve.push((done, psnr));
            let line = serde_json::json!({ "step": done, "held_out_psnr": psnr });
            writeln!(eval_log, "{line}").map_err(|e| TrainError::File(format!("held_out.jsonl: {e}")))?;
        }
    }
    trainer.finish();
    let ema_decay = trainer.load_export_weights(&varmap)?;
    // The curve scored the step's own weights; an exported EMA is scored again.
    let held_out = match (curve.last(), ema_decay) {
        (Some(&(_, p)), None) => p,
        _ => held_out_psnr(&vae, &eval_clips)?,
    };

    // Measure the latent statistics, then write a VAE that normalises with them. A decoder-only
    // fine-tune keeps its starting model's, so latents encoded before it (a teacher's corpus)
    // stay valid: the same encoder measured on other clips would give slightly other numbers.
    let (mean, std) = match (&cfg.init_from, train_encoder) {
        (Some(from), false) => {
            let start = WanVae::load(from, DType::F32, &device)
                .map_err(|e| TrainError::File(format!("init_from {}: {e}", from.display())))?;
            (start.config().latents_mean.clone(), start.config().latents_std.clone())
        }
        _ => latent_statistics(&vae, &eval_clips)?,
    };
    let mut final_cfg = cfg.vae.config();
    final_cfg.latents_mean = mean;
    final_cfg.latents_std = std;
    let tensors = vae
        .tensors()
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.detach().copy()?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    let model = WanVae::from_tensors(final_cfg, tensors)?;
    let model_dir = out_dir.join("model");
    model.save(&model_dir)?;
    let report = VaeStageReport {
        steps: trainer.step_count(),
        held_out_psnr: held_out,
        psnr_curve: curve,
        wall_seconds: started.elapsed().as_secs_f64(),
        parameters,
        ema_decay,
        model_dir: model_dir.clone(),
    };
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    std::fs::write(model_dir.join("training.json"), text + "\n")
        .map_err(|e| TrainError::File(format!("{}: {e}", model_dir.join("training.json").display())))?;
    Ok(report)
}

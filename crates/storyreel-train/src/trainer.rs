//! The training loop's one step: accumulation, clipping, schedule, AdamW, EMA, logging and
//! periodic checkpoints, plus exact resume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::ema::{Ema, EmaConfig};
use crate::log::{JsonlLog, Progress, StepRecord, LOG_FILE};
use crate::optim::{clip_grad_norm, grad_norm, AdamW, AdamWConfig, GradAccumulator};
use crate::params::NamedParams;
use crate::schedule::LrSchedule;
use crate::state::{latest_checkpoint, load_checkpoint, save_checkpoint, TrainState};
use crate::{Result, TrainError};

/// The checkpoints' folder inside a run's output folder.
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// Everything a run is configured by. Every field has a default (below), and unknown keys are
/// errors so a typo in a JSON or TOML config cannot silently fall back to a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// AdamW's settings (default: PyTorch's, weight decay 0.01). `lr` must equal
    /// `schedule.base_lr`, since the schedule is what sets the rate of each step.
    pub optimizer: AdamWConfig,
    /// The learning-rate schedule (default: constant 1e-4 over 10 000 steps); its `total_steps`
    /// is also the progress bar's length.
    pub schedule: LrSchedule,
    /// Global gradient-norm clip (default: none).
    pub clip_norm: Option<f64>,
    /// Micro-batches averaged into each step (default 1).
    pub accumulate: usize,
    /// Parameter-name patterns to freeze: globs with `*` or plain substrings (default: none).
    pub freeze: Vec<String>,
    /// The EMA of the trainable weights (default: none, as in ShotStream).
    pub ema: Option<EmaConfig>,
    /// Save a checkpoint every this many steps; 0 never does (default 1000).
    pub checkpoint_every: u64,
    /// Checkpoints kept, newest first; 0 keeps all (default 3).
    pub keep_checkpoints: usize,
    /// Where `train.jsonl` and `checkpoints/step-<N>/` go (default `runs/train`).
    pub out_dir: PathBuf,
    /// The seed for the caller's data and noise RNGs (default 0); the trainer itself draws nothing.
    pub seed: u64,
    /// Samples in one micro-batch, for the samples/s figure (default 1).
    pub samples_per_micro_batch: usize,
    /// Whether to draw a progress bar on a terminal (default true).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            optimizer: AdamWConfig::default(),
            schedule: LrSchedule::default(),
            clip_norm: None,
            accumulate: 1,
            freeze: Vec::new(),
            ema: None,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            out_dir: PathBuf::from("runs/train"),
            seed: 0,
            samples_per_micro_batch: 1,
            progress: true,
        }
    }
}

impl TrainConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.optimizer.validate()?;
        self.schedule.validate()?;
        if let Some(clip) = self.clip_norm {
            if !(clip.is_finite() && clip > 0.0) {
                return Err(TrainError::out_of_range("clip_norm", clip, "a finite norm > 0"));
            }
        }
        if self.accumulate == 0 {
            return Err(TrainError::out_of_range("accumulate", 0, "at least 1 micro-batch"));
        }
        if self.samples_per_micro_batch == 0 {
            return Err(TrainError::out_of_range("samples_per_micro_batch", 0, "at least 1"));
        }
        if let Some(ema) = &self.ema {
            ema.validate()?;
        }
        if self.out_dir.as_os_str().is_empty() {
            return Err(TrainError::out_of_range("out_dir", "\"\"", "a folder path"));
        }
        Ok(())
    }

    /// A stable hash (FNV-1a of the JSON) of the settings that change the maths, so resuming
    /// under different ones is caught; paths, checkpoint cadence and display settings are left out.
    pub fn hash(&self) -> String {
        let key = serde_json::json!({
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "clip_norm": self.clip_norm,
            "accumulate": self.accumulate,
            "freeze": self.freeze,
            "ema": self.ema,
            "seed": self.seed,
        });
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.to_string().bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// What one [`Trainer::step`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Steps completed, counting this one.
    pub step: u64,
    /// The mean loss over the micro-batches.
    pub loss: f64,
    /// The caller's extra metrics, averaged over the micro-batches, in first-seen order.
    pub metrics: Vec<(String, f64)>,
    /// The learning rate used.
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether clipping scaled the gradients down.
    pub clipped: bool,
    /// Whether the update was skipped because the gradient norm was not finite.
    pub skipped: bool,
    /// Seconds the step took.
    pub step_time_s: f64,
    /// Samples per second in this step.
    pub samples_per_s: f64,
    /// The checkpoint written after this step, if one was due.
    pub checkpoint: Option<PathBuf>,
}

/// A training run over one [`VarMap`]: owns the optimiser, EMA, log and checkpoints.
#[derive(Debug)]
pub struct Trainer {
    config: TrainConfig,
    params: NamedParams,
    optimizer: AdamW,
    ema: Option<Ema>,
    accumulator: GradAccumulator,
    step: u64,
    skipped_steps: u64,
    rng: Vec<u64>,
    log: Option<JsonlLog>,
    progress: Option<Progress>,
    stage_settings: Option<serde_json::Value>,
}

impl Trainer {
    /// A trainer over `varmap`'s variables (freezing those `config.freeze` matches), starting at
    /// step 0. Nothing is written until the first step, so a [`Trainer::resume_from`] right after
    /// does not lose an existing log.
    pub fn new(varmap: &VarMap, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let mut params = NamedParams::from_varmap(varmap);
        if params.all().is_empty() {
            return Err(TrainError::out_of_range("model parameters", 0, "at least one variable in the VarMap"));
        }
        params.freeze(&config.freeze)?;
        if params.trainable().is_empty() {
            return Err(TrainError::out_of_range("trainable parameters", 0, "at least one left after freezing"));
        }
        let optimizer = AdamW::new(&params, config.optimizer.clone())?;
        let ema = config.ema.clone().map(|c| Ema::new(&params, c)).transpose()?;
        let accumulator = GradAccumulator::new(optimizer.vars().to_vec());
        Ok(Self {
            config,
            params,
            optimizer,
            ema,
            accumulator,
            step: 0,
            skipped_steps: 0,
            rng: Vec::new(),
            log: None,
            progress: None,
            stage_settings: None,
        })
    }

    /// Records the stage's own learning settings ([`crate::stage_config::learning_settings`]) in
    /// every checkpoint, and makes a resume refuse a checkpoint saved under other ones. Call it
    /// before resuming.
    pub fn with_stage_settings(mut self, settings: serde_json::Value) -> Self {
        self.stage_settings = Some(settings);
        self
    }

    /// The run's settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The parameters, with which are frozen.
    pub fn params(&self) -> &NamedParams {
        &self.params
    }

    /// The optimiser.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// The EMA, if the run keeps one.
    pub fn ema(&self) -> Option<&Ema> {
        self.ema.as_ref()
    }

    /// Makes `varmap` (the one this trainer was built over) hold the weights a finished run
    /// exports. With an EMA, its averages replace the trainable weights, after a last checkpoint
    /// keeps the step's own weights for a later resume (when checkpoints are on and the last
    /// step did not write one); without one, nothing changes. Returns the EMA's decay when the
    /// average was loaded, for the model card.
    pub fn load_export_weights(&self, varmap: &VarMap) -> Result<Option<f64>> {
        let Some(ema) = &self.ema else { return Ok(None) };
        let every = self.config.checkpoint_every;
        if every > 0 && self.step > 0 && !self.step.is_multiple_of(every) {
            self.save_checkpoint()?;
        }
        ema.copy_into(varmap)?;
        Ok(Some(ema.config().decay))
    }

    /// Steps completed.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Steps whose update was skipped for a non-finite gradient norm.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// The caller's RNG state as last set or restored.
    pub fn rng_state(&self) -> &[u64] {
        &self.rng
    }

    /// Records the caller's RNG state, saved with every later checkpoint; set it before each step
    /// so a checkpoint taken inside [`Trainer::step`] holds the state the next step starts from.
    pub fn set_rng_state(&mut self, state: Vec<u64>) {
        self.rng = state;
    }

    /// `out_dir/checkpoints`.
    pub fn checkpoint_root(&self) -> PathBuf {
        self.config.out_dir.join(CHECKPOINT_DIR)
    }

    /// `out_dir/train.jsonl`.
    pub fn log_path(&self) -> PathBuf {
        self.config.out_dir.join(LOG_FILE)
    }

    fn open_log(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.config.out_dir)
            .map_err(|e| TrainError::File(format!("{}: {e}", self.config.out_dir.display())))?;
        self.log = Some(JsonlLog::open(&self.log_path(), self.step)?);
        Ok(())
    }

    /// One optimisation step. `micro_batch` is called `accumulate` times with the micro-batch
    /// index and returns a scalar loss (mean over its samples) and named extra metrics; the
    /// gradients are averaged, clipped, and applied at the schedule's rate for this step. A
    /// non-finite gradient norm skips the update (and the EMA) but still counts as a step, so
    /// data indexed by step moves on; see [`Trainer::skipped_steps`].
    pub fn step<F>(&mut self, mut micro_batch: F) -> Result<StepReport>
    where
        F: FnMut(usize) -> Result<(Tensor, Vec<(String, f64)>)>,
    {
        let started = Instant::now();
        if self.log.is_none() {
            self.open_log()?;
        }
        let lr = self.config.schedule.lr_at(self.step);
        let k = self.config.accumulate;
        let mut loss_sum = 0.0;
        let mut metrics: Vec<(String, f64)> = Vec::new();
        for i in 0..k {
            let (loss, extra) = micro_batch(i)?;
            if loss.elem_count() != 1 {
                return Err(TrainError::out_of_range("loss shape", format!("{:?}", loss.dims()), "a scalar"));
            }
            loss_sum += loss.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
            let grads = loss.backward()?;
            self.accumulator.add(&grads)?;
            for (name, value) in extra {
                match metrics.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, sum)) => *sum += value,
                    None => metrics.push((name, value)),
                }
            }
        }
        let mut grads = self.accumulator.finish()?;
        let loss = loss_sum / k as f64;
        for (_, sum) in &mut metrics {
            *sum /= k as f64;
        }

        let vars = self.optimizer.vars().to_vec();
        let norm = match self.config.clip_norm {
            Some(max) => clip_grad_norm(&mut grads, &vars, max)?,
            None => grad_norm(&grads, &vars)?,
        };
        let skipped = !norm.is_finite();
        let clipped = !skipped && self.config.clip_norm.is_some_and(|max| norm > max);
        if skipped {
            self.skipped_steps += 1;
        } else {
            self.optimizer.step(&grads, lr)?;
        }
        self.step += 1;
        if let (Some(ema), false) = (&mut self.ema, skipped) {
            ema.update(&self.params, self.step)?;
        }

        let step_time_s = started.elapsed().as_secs_f64();
        let samples = (k * self.config.samples_per_micro_batch) as f64;
        let samples_per_s = if step_time_s > 0.0 { samples / step_time_s } else { 0.0 };
        let wall_time_s = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let record = StepRecord {
            step: self.step,
            loss,
            losses: metrics.iter().cloned().collect(),
            lr,
            grad_norm: norm,
            skipped,
            step_time_s,
            samples_per_s,
            wall_time_s,
        };
        if let Some(log) = &mut self.log {
            log.append(&record)?;
        }
        let progress = self.progress.get_or_insert_with(|| {
            Progress::new(self.config.schedule.total_steps, self.step - 1, self.config.progress)
        });
        progress.update(self.step, loss);

        let every = self.config.checkpoint_every;
        let checkpoint =
            if every > 0 && self.step.is_multiple_of(every) { Some(self.save_checkpoint()?) } else { None };
        Ok(StepReport {
            step: self.step,
            loss,
            metrics,
            lr,
            grad_norm: norm,
            clipped,
            skipped,
            step_time_s,
            samples_per_s,
            checkpoint,
        })
    }

    /// Writes `checkpoints/step-<N>/` for the current step now (keeping the newest
    /// `keep_checkpoints`) and returns its path.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let state = TrainState {
            step: self.step,
            optimizer_steps: self.optimizer.steps(),
            skipped_steps: self.skipped_steps,
            rng: self.rng.clone(),
            schedule: self.config.schedule.clone(),
            config_hash: self.config.hash(),
            has_ema: self.ema.is_some(),
            stage_settings: self.stage_settings.clone(),
        };
        save_checkpoint(
            &self.checkpoint_root(),
            &self.params,
            &self.optimizer,
            self.ema.as_ref(),
            &state,
            self.config.keep_checkpoints,
        )
    }

    /// Restores the checkpoint folder `dir` (weights, moments, EMA, counters, RNG state) and cuts
    /// `train.jsonl` back to its step. The run's maths-relevant settings must hash the same as
    /// the checkpoint's.
    pub fn resume_from(&mut self, dir: &Path) -> Result<()> {
        let state = crate::state::read_state(dir)?;
        let hash = self.config.hash();
        if state.config_hash != hash {
            return Err(TrainError::File(format!(
                "{}: saved with config hash {} but this run's is {hash}; the optimiser, schedule, clipping, \
                 accumulation, freezing, EMA or seed changed",
                dir.display(),
                state.config_hash
            )));
        }
        if let (Some(saved), Some(now)) = (&state.stage_settings, &self.stage_settings) {
            let changes = crate::stage_config::changed_settings(saved, now);
            if !changes.is_empty() {
                return Err(TrainError::File(format!(
                    "{}: saved under other stage settings ({}); resume with the checkpoint's settings or \
                     give the run a new out_dir",
                    dir.display(),
                    changes.join("; ")
                )));
            }
        }
        let state = load_checkpoint(dir, &self.params, &mut self.optimizer, self.ema.as_mut())?;
        self.step = state.step;
        self.skipped_steps = state.skipped_steps;
        self.rng = state.rng;
        self.progress = None;
        self.open_log()
    }

    /// Resumes from the newest checkpoint under `out_dir/checkpoints` and returns its path, or
    /// `None` (a fresh start) when there is none.
    pub fn resume_latest(&mut self, out_dir: &Path) -> Result<Option<PathBuf>> {
        match latest_checkpoint(&out_dir.join(CHECKPOINT_DIR))? {
            Some(dir) => {
                self.resume_from(&dir)?;
                Ok(Some(dir))
            }
            None => Ok(None),
        }
    }

    /// The EMA weights by name (empty without an EMA), e.g. to save them as their own model.
    pub fn ema_tensors(&self) -> HashMap<String, Tensor> {
        self.ema.as_ref().map(|e| e.tensors().into_iter().collect()).unwrap_or_default()
    }

    /// Clears the progress bar.
    pub fn finish(&self) {
        if let Some(progress) = &self.progress {
            progress.finish();
        }
    }
}

//! Stage 1 of ShotStream (shotstream.md §5.1): the bidirectional next-shot teacher, trained on
//! the story world with the toy text encoder alongside it.
//!
//! Each sample is one target shot k of a story: its latents are noised at a timestep drawn
//! uniformly from the shifted 1000-entry table, the 6 context latents (dynamic sampling over
//! shots 0..k, each frame encoded on its own) go in front, every frame cross-attends to its own
//! shot's prompt, and the loss is the flow-matching MSE on the target frames (uniform over the
//! table by default, ShotStream's w(t) on request: [`TimestepWeighting`]). Captions are dropped (all zero) and context is dropped (zero latents,
//! flags 0) with 10% probability each.
//!
//! Every step also trains on `image_samples` single frames (Wan's text-to-image pretraining,
//! interleaved): frames encoded alone, each under its own shot's prompt, with no context. They
//! cost a fraction of a shot sample and teach the caption–picture mapping from many more pairs.
//!
//! The training stories are rendered and encoded once, before the first step, into
//! `OUT/latents/` (reused on resume when the VAE and data settings are unchanged).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use storyreel_engine::context::{policy_by_name, ContextMemory, ContextQuery, POLICY_NAMES};
use storyreel_engine::context_channels::join_zeros;
use storyreel_engine::sampler::add_noise;
use storyreel_engine::shot_plan::ShotPlan;
use storyreel_engine::story_model::{self, ModelCard, ModelKind, TeacherSampling};
use storyreel_engine::teacher::{teacher_flow, teacher_frames, teacher_input, TeacherInputs};
use storyreel_engine::teacher_story::{caption_embeddings, encode_context};
use storyreel_engine::{FlowBranch, FlowSchedule, NoiseSource, SeededNoise};
use storyreel_nn::checkpoint::save_safetensors;
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::text::toy::{ToyTextConfig, ToyTextEncoder, ToyTokenizer};
use storyreel_nn::vae::WanVae;
use storyreel_nn::{WanConfig, WanModel};
use storyreel_world::rng::{mix64, WorldRng};
use storyreel_world::{caption_vocabulary, generate_story, render_story, Story};

use crate::data::frames_to_tensor;
use crate::data::story_options;
use crate::error::{Result, TrainError};
use crate::log::Progress;
use crate::model_files::{ema_note, fold_bytes, save_dit, write_text};
use crate::stage_config::{learning_settings, read_over_defaults};
use crate::trainer::{TrainConfig, Trainer};

/// Variable-name prefix of the DiT inside the stage's variables.
pub const DIT_PREFIX: &str = "dit";
/// Variable-name prefix of the text encoder inside the stage's variables.
pub const TEXT_PREFIX: &str = "text";

/// Shape of the toy DiT (the Wan2.1 DiT at a small width; latent channels and text width come
/// from the VAE and the text encoder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToyDitShape {
    /// Hidden width.
    pub dim: usize,
    /// FFN width.
    pub ffn_dim: usize,
    /// Sinusoidal timestep features.
    pub freq_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Latent pixels per token along height and width (Wan's 2; 1 gives a small character
    /// in a wide shot tokens of its own, at about 6× the step time on the toy latent).
    pub patch: usize,
    /// Give every token a fixed embedding of its (row, column) (`WanConfig::spatial_position`;
    /// not in Wan). Written to the DiT's config, so every later stage and `generate` use it.
    pub spatial_position: bool,
}

impl Default for ToyDitShape {
    fn default() -> Self {
        Self { dim: 128, ffn_dim: 384, freq_dim: 64, num_heads: 4, num_layers: 4, patch: 2, spatial_position: false }
    }
}

impl ToyDitShape {
    /// The full Wan config for latents of `z` channels and text `[text_len, text_dim]`.
    pub fn config(&self, z: usize, text: &ToyTextConfig) -> WanConfig {
        WanConfig {
            dim: self.dim,
            ffn_dim: self.ffn_dim,
            freq_dim: self.freq_dim,
            in_dim: z,
            out_dim: z,
            num_heads: self.num_heads,
            num_layers: self.num_layers,
            text_len: text.text_len,
            text_dim: text.dim,
            patch_size: [1, self.patch, self.patch],
            eps: 1e-6,
            model_type: "t2v".into(),
            spatial_position: self.spatial_position,
        }
    }
}

/// Where the training stories come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherData {
    /// Seed of the first training story (the held-out benchmark's seeds are refused).
    pub first_seed: u64,
    /// Stories rendered and encoded before training.
    pub stories: u64,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
}

impl Default for TeacherData {
    fn default() -> Self {
        Self { first_seed: 0, stories: 1000, width: 64, height: 64 }
    }
}

/// The loss weight over the timestep table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepWeighting {
    /// ShotStream's w(t) ∝ exp(−2((t−500)/1000)²), minus its minimum, mean 1 ([`timestep_weights`]).
    Shotstream,
    /// Every timestep alike.
    Uniform,
}

impl TimestepWeighting {
    /// The weight of each entry of `timesteps`.
    pub fn weights(self, timesteps: &[f32]) -> Vec<f32> {
        match self {
            Self::Shotstream => timestep_weights(timesteps),
            Self::Uniform => vec![1.0; timesteps.len()],
        }
    }
}

/// Everything `storyreel train teacher --config FILE` reads (JSON or TOML; unknown keys are errors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherStageConfig {
    /// The trained toy VAE's folder (`vae.safetensors` + `vae_config.json`; default: the `vae`
    /// stage's default output).
    pub vae: PathBuf,
    /// The DiT's shape.
    pub dit: ToyDitShape,
    /// The toy text encoder's shape (trained jointly; vocabulary from the world's captions).
    pub text: ToyTextConfig,
    /// Training stories.
    pub data: TeacherData,
    /// Context latents in front of the target (6 in ShotStream).
    pub context_frames: usize,
    /// Train with context at all (false: the no-context ablation, context always zero).
    pub use_context: bool,
    /// How each shot's context frames are picked from its story's earlier shots: "dynamic"
    /// (ShotStream's spread over all of them) or "caption" (the shots whose captions match
    /// best). Written to the card, so `generate` picks the same way.
    pub context_policy: String,
    /// The RoPE shot-phase indicator (θ = 1/6 per shot flag).
    pub shot_phase: bool,
    /// Embed the context frames at t = 0 instead of the target's t. ShotStream's teacher (false)
    /// gives its clean context the target's noise level, so at the top of the schedule the
    /// context tokens get the modulation learned for pure noise; true marks them clean, as
    /// the causal student sees them. Written to the card, which every later use reads.
    pub clean_context: bool,
    /// Join the mean context latent to every target frame's channels, as Wan's I2V model joins
    /// its image (`storyreel_engine::context_channels`): a direct path for the looks, which
    /// attention alone barely learns to copy at this scale. Off by default (ShotStream's
    /// teacher has only the concatenated context frames). With `init_from` a teacher without
    /// them, the new input channels start at zero weight, so training starts from its function.
    /// Written to the card; the causal student does not support it yet.
    #[serde(default)]
    pub context_channels: bool,
    /// Probability of zeroing every caption embedding of a sample.
    pub caption_dropout: f64,
    /// Probability of zeroing the context latents and flags of a sample.
    pub context_dropout: f64,
    /// Shift of the training timestep table. 24 by default, not ShotStream's 8: trained from
    /// scratch, the model must learn to read its caption at the top of the schedule, and shift
    /// 24 puts 19% of the samples above t = 990 (shift 8: 7.5%); a 1,000-step run then reads
    /// its text (caption gain 52%) where shift 8 does not (0%; docs/BENCHMARKS.md).
    pub shift: f32,
    /// A second, lower shift for a share of the samples (`low_noise_share`): the shift-24 table
    /// puts only 4% of samples below t = 500, where details are drawn. `None`: every sample
    /// from `shift`'s table.
    pub low_noise_shift: Option<f32>,
    /// Share of the samples drawn from `low_noise_shift`'s table.
    pub low_noise_share: f64,
    /// Single-frame samples added to every step, Wan's text-to-image pretraining interleaved
    /// with the shots: each is one frame encoded alone (a shot's first latent or a context
    /// latent) under its own shot's prompt, with no context and no other frame. One costs
    /// about 1/14 of a shot sample (64 tokens against about 960), so a step sees many more
    /// caption–picture pairs for little time; 0 turns them off.
    pub image_samples: usize,
    /// Shift of the image samples' timestep table. Lower than the shots' because one frame has
    /// about 1/15 of a shot's tokens, so the same σ hides less of it (SD3's resolution argument), and
    /// because the images are where the low-noise details get most of their samples.
    pub image_shift: f32,
    /// Weight of the image samples' mean loss against the shot sample's.
    pub image_weight: f64,
    /// Context samples added to every step: the first `context_sample_frames` latent frames of
    /// a target shot past the first, with its context in front and never dropped. The looks of
    /// a story's characters and places are in its context and nowhere in its captions, so these
    /// are the samples that teach copying; cropped to the shot's start they cost about a third
    /// of a full shot sample (6 + 2 frames against 6 + ≈ 15). 0 turns them off.
    pub context_samples: usize,
    /// Latent frames of the target kept in a context sample (from the shot's first).
    pub context_sample_frames: usize,
    /// Weight of the context samples' mean loss against the shot sample's.
    pub context_sample_weight: f64,
    /// How the loss is weighted over timesteps. Uniform by default: ShotStream's weighting
    /// fine-tunes a base that already follows text, and from scratch it starves the high-noise
    /// steps where only the caption can tell what to draw (docs/BENCHMARKS.md, "the teacher").
    pub timestep_weighting: TimestepWeighting,
    /// Sampling defaults written to the model card.
    pub sampler: TeacherSampling,
    /// Optimisation steps.
    pub steps: u64,
    /// Seed of the initial weights.
    pub init_seed: u64,
    /// Start from this trained teacher (a model folder written by this stage, same DiT and text
    /// shapes, same vocabulary, trained on latents of the same VAE) instead of random weights,
    /// e.g. to fine-tune on a changed world. The optimiser and schedule start fresh; a resumed
    /// run ignores it.
    pub init_from: Option<PathBuf>,
    /// Optimiser, schedule, accumulation, checkpoints, output folder.
    pub train: TrainConfig,
}

impl Default for TeacherStageConfig {
    fn default() -> Self {
        let mut train = TrainConfig {
            out_dir: PathBuf::from("runs/toy-teacher"),
            checkpoint_every: 500,
            schedule: crate::schedule::LrSchedule::warmup_cosine(1e-3, 2e-5, 200),
            clip_norm: Some(1.0),
            ..Default::default()
        };
        train.optimizer.weight_decay = 0.01;
        Self {
            // Where `storyreel train vae` with its defaults writes its model.
            vae: PathBuf::from("runs/toy-vae/model"),
            dit: ToyDitShape::default(),
            text: ToyTextConfig { text_len: 64, ..ToyTextConfig::default() },
            data: TeacherData::default(),
            context_frames: 6,
            use_context: true,
            context_policy: "dynamic".into(),
            shot_phase: true,
            clean_context: false,
            context_channels: false,
            caption_dropout: 0.1,
            context_dropout: 0.1,
            shift: 24.0,
            low_noise_shift: None,
            low_noise_share: 0.5,
            image_samples: 8,
            image_shift: 8.0,
            image_weight: 1.0,
            context_samples: 0,
            context_sample_frames: 2,
            context_sample_weight: 1.0,
            timestep_weighting: TimestepWeighting::Uniform,
            sampler: TeacherSampling { steps: 20, shift: 8.0, guidance: 3.0, context_guidance: 0.0 },
            steps: 4000,
            init_seed: 1,
            init_from: None,
            train,
        }
    }
}

impl TeacherStageConfig {
    /// Reads a `.json` or `.toml` config.
    pub fn read(path: &Path) -> Result<Self> {
        read_over_defaults(path, &Self::default())
    }

    /// Checks the settings (the trainer's own included).
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        self.text.validate()?;
        if self.steps == 0 {
            return Err(TrainError::out_of_range("steps", 0, "at least 1"));
        }
        for (name, p) in [("caption_dropout", self.caption_dropout), ("context_dropout", self.context_dropout)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(TrainError::out_of_range(name, p, "a probability in [0, 1]"));
            }
        }
        if self.context_frames == 0 || self.context_frames > 32 {
            return Err(TrainError::out_of_range("context_frames", self.context_frames, "1..=32"));
        }
        if !matches!(self.context_policy.as_str(), "dynamic" | "caption") {
            return Err(TrainError::out_of_range("context_policy", &self.context_policy, "\"dynamic\" or \"caption\""));
        }
        if !(self.shift > 0.0 && self.shift.is_finite()) {
            return Err(TrainError::out_of_range("shift", self.shift, "a positive number"));
        }
        if let Some(low) = self.low_noise_shift.filter(|s| !(*s > 0.0 && s.is_finite())) {
            return Err(TrainError::out_of_range("low_noise_shift", low, "a positive number"));
        }
        if !(self.image_shift > 0.0 && self.image_shift.is_finite()) {
            return Err(TrainError::out_of_range("image_shift", self.image_shift, "a positive number"));
        }
        if self.image_samples > 256 {
            return Err(TrainError::out_of_range("image_samples", self.image_samples, "at most 256"));
        }
        if !(self.image_weight >= 0.0 && self.image_weight.is_finite()) {
            return Err(TrainError::out_of_range("image_weight", self.image_weight, "a finite weight ≥ 0"));
        }
        if self.context_samples > 64 {
            return Err(TrainError::out_of_range("context_samples", self.context_samples, "at most 64"));
        }
        if self.context_channels && !self.use_context {
            return Err(TrainError::out_of_range(
                "context_channels",
                true,
                "false when use_context is false (there is no context to join)",
            ));
        }
        if self.context_samples > 0 && !self.use_context {
            return Err(TrainError::out_of_range(
                "context_samples",
                self.context_samples,
                "0 when use_context is false (the samples exist to teach reading the context)",
            ));
        }
        if self.context_sample_frames == 0 || self.context_sample_frames > 64 {
            return Err(TrainError::out_of_range("context_sample_frames", self.context_sample_frames, "1..=64"));
        }
        if !(self.context_sample_weight >= 0.0 && self.context_sample_weight.is_finite()) {
            return Err(TrainError::out_of_range(
                "context_sample_weight",
                self.context_sample_weight,
                "a finite weight ≥ 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.low_noise_share) {
            return Err(TrainError::out_of_range("low_noise_share", self.low_noise_share, "a share in [0, 1]"));
        }
        if self.data.stories > 1_000_000 {
            return Err(TrainError::out_of_range("data.stories", self.data.stories, "at most 1000000"));
        }
        crate::data::check_training_seeds(self.data.first_seed, self.data.stories)?;
        if !(1..=4).contains(&self.dit.patch) {
            return Err(TrainError::out_of_range("dit.patch", self.dit.patch, "1, 2, 3 or 4 latent pixels"));
        }
        let cfg = self.dit.config(8, &self.text);
        cfg.validate()?;
        if self.dit.dim / self.dit.num_heads.max(1) < 8 {
            return Err(TrainError::out_of_range(
                "dit head width",
                self.dit.dim / self.dit.num_heads.max(1),
                "at least 8",
            ));
        }
        Ok(())
    }
}

/// ShotStream's timestep weights over the table: exp(−2((t−500)/1000)²), minus the table's
/// minimum, normalised to mean 1.
pub fn timestep_weights(timesteps: &[f32]) -> Vec<f32> {
    let raw: Vec<f64> = timesteps.iter().map(|&t| (-2.0 * ((t as f64 - 500.0) / 1000.0).powi(2)).exp()).collect();
    let min = raw.iter().cloned().fold(f64::INFINITY, f64::min);
    let shifted: Vec<f64> = raw.iter().map(|w| w - min).collect();
    let mean = shifted.iter().sum::<f64>() / shifted.len().max(1) as f64;
    shifted.iter().map(|w| (w / mean.max(1e-12)) as f32).collect()
}

/// One training story, rendered and encoded.
pub struct EncodedStory {
    /// Global caption.
    pub global: String,
    /// Per-shot captions.
    pub captions: Vec<String>,
    /// Latents of every shot `[f, C, h, w]`.
    pub shots: Vec<Tensor>,
    /// Context latents and flags for target shot k (index k; `None` for shot 0).
    pub contexts: Vec<Option<(Tensor, Vec<i64>)>>,
}

/// The training stories of a run, encoded with the stage's VAE.
pub struct TeacherCorpus {
    /// The stories.
    pub stories: Vec<EncodedStory>,
}

/// A single-frame latent of the corpus and the shot whose prompt describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageRef {
    /// Story index.
    pub story: usize,
    /// The shot the frame belongs to (its prompt is the caption).
    pub shot: usize,
    /// Where the latent is kept.
    pub source: ImageSource,
}

/// Where an image latent is kept in the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// Latent frame 0 of the shot.
    FirstFrame,
    /// Context latent `index` of target shot `target`.
    Context {
        /// The shot whose context holds it.
        target: usize,
        /// Its place among that shot's context latents.
        index: usize,
    },
}

/// Draws the image samples of micro-batch `index`: (image, table index, caption dropped) each.
/// Pure in `(seed, index)`, and apart from [`draw_sample`] so the shot samples stay the same.
pub fn draw_images(
    seed: u64,
    index: u64,
    count: usize,
    images: usize,
    table: usize,
    caption_dropout: f64,
) -> Vec<(usize, usize, bool)> {
    let mut rng = WorldRng::derived(mix64(seed ^ 0x1a6e_5a3b), index);
    (0..count)
        .map(|_| {
            let image = rng.range(0, images.saturating_sub(1));
            let t = rng.range(0, table - 1);
            (image, t, rng.chance(caption_dropout))
        })
        .collect()
}

/// One image sample.
#[derive(Clone, Copy)]
pub struct ImageSample<'a> {
    /// The latent `[1, C, h, w]`.
    pub latent: &'a Tensor,
    /// Its story (for the prompt).
    pub story: &'a EncodedStory,
    /// The shot it belongs to.
    pub shot: usize,
    /// Zero the caption embedding.
    pub caption_dropped: bool,
    /// Index into the image timestep table.
    pub table_index: usize,
    /// Noise seed.
    pub noise_seed: u64,
}

/// Mean flow-matching loss of a batch of image samples, run as one forward in which each
/// frame sees only itself under its own shot's prompt and timestep (a single frame attends
/// only to itself, so its RoPE position and shot phase cancel out). Returns the loss and its
/// value.
pub fn image_loss(
    nets: &TeacherNetworks,
    samples: &[ImageSample<'_>],
    schedule: &FlowSchedule,
) -> Result<(Tensor, f64)> {
    if samples.is_empty() {
        return Err(TrainError::out_of_range("image samples", 0, "at least 1"));
    }
    let device = nets.dit.device().clone();
    let (mut noisy, mut targets, mut embeddings, mut frames) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, s) in samples.iter().enumerate() {
        let sigma = schedule.sigmas()[s.table_index];
        let t = schedule.timesteps()[s.table_index];
        let eps = SeededNoise::new(s.noise_seed).noise(s.shot, 0, 0, s.latent.dims(), &device)?;
        noisy.push(add_noise(s.latent, &eps, sigma)?);
        targets.push((&eps - s.latent)?);
        let prompt = storyreel_engine::prompt::shot_prompt(&s.story.global, s.shot, &s.story.captions[s.shot]);
        let e = nets.text.encode_one(&prompt)?.embeddings;
        embeddings.push(if s.caption_dropped { e.zeros_like()? } else { e });
        let mut frame = ShotPlan::new(0, &[], 1)?.shot_frames(0, 1, t);
        frame[0].caption = i;
        frames.extend(frame);
    }
    let captions = nets.dit.embed_captions(&Tensor::stack(&embeddings, 0)?)?;
    let mut noisy = Tensor::cat(&noisy, 0)?;
    if nets.context_channels {
        // An image sample has no context: its context channels are zero, as on a first shot.
        noisy = join_zeros(&noisy)?;
    }
    let v = nets.dit.forward_separate_frames(&noisy, &frames, &captions)?;
    let mse = (v - Tensor::cat(&targets, 0)?)?.sqr()?.mean_all()?;
    let value = mse.to_scalar::<f32>()? as f64;
    Ok((mse, value))
}

/// Draws the training sample of micro-batch `index`: (story, target shot, table index, caption
/// dropped, context dropped). Pure in `(seed, index)` so that a resumed run sees the same data.
pub fn draw_sample(
    seed: u64,
    index: u64,
    shots_per_story: &[usize],
    table: usize,
    caption_dropout: f64,
    context_dropout: f64,
) -> (usize, usize, usize, bool, bool) {
    let mut rng = WorldRng::derived(mix64(seed ^ 0x7eac_4e12), index);
    // `range` is inclusive at both ends.
    let story = rng.range(0, shots_per_story.len() - 1);
    let shot = rng.range(0, shots_per_story[story].saturating_sub(1));
    let t = rng.range(0, table - 1);
    let caption_dropped = rng.chance(caption_dropout);
    let context_dropped = rng.chance(context_dropout);
    (story, shot, t, caption_dropped, context_dropped)
}

/// Draws the context samples of micro-batch `index`: (story, target shot ≥ 1, table index,
/// caption dropped) each. Pure in `(seed, index)`, and apart from [`draw_sample`] and
/// [`draw_images`] so that runs without context samples see the same data as before.
/// Stories with a single shot have no context and are never drawn; `None` when no story has two.
pub fn draw_context_samples(
    seed: u64,
    index: u64,
    count: usize,
    shots_per_story: &[usize],
    table: usize,
    caption_dropout: f64,
) -> Option<Vec<(usize, usize, usize, bool)>> {
    let eligible: Vec<usize> = (0..shots_per_story.len()).filter(|&s| shots_per_story[s] >= 2).collect();
    if eligible.is_empty() {
        return None;
    }
    let mut rng = WorldRng::derived(mix64(seed ^ 0xc0_7e47), index);
    Some(
        (0..count)
            .map(|_| {
                let story = eligible[rng.range(0, eligible.len() - 1)];
                let shot = rng.range(1, shots_per_story[story] - 1);
                let t = rng.range(0, table - 1);
                (story, shot, t, rng.chance(caption_dropout))
            })
            .collect(),
    )
}

impl TeacherCorpus {
    /// Renders and encodes `data`'s stories with `vae`, `context_frames` context frames per
    /// shot picked by `policy` (a name of [`policy_by_name`]).
    pub fn encode(
        vae: &WanVae,
        data: &TeacherData,
        context_frames: usize,
        policy: &str,
        progress: bool,
    ) -> Result<Self> {
        let device = Device::Cpu;
        let options = story_options(data.width, data.height);
        let scale = vae.spatial_scale();
        let hw = (data.height as usize / scale, data.width as usize / scale);
        let memory = context_memory(policy, context_frames)?;
        let memory = memory.as_ref();
        let bar = Progress::new(data.stories, 0, progress);
        let mut stories = Vec::with_capacity(data.stories as usize);
        for i in 0..data.stories {
            let story = generate_story(data.first_seed + i, &options)?;
            stories.push(encode_story(vae, &story, memory, context_frames, hw, &device)?);
            bar.update(i + 1, f64::NAN);
        }
        bar.finish();
        Ok(Self { stories })
    }

    /// Every single-frame latent of the corpus: each shot's first latent (the causal VAE encodes
    /// the first frame alone) and each context latent that is not padding. A frame picked as
    /// context for several later shots appears once per pick.
    pub fn images(&self) -> Result<Vec<ImageRef>> {
        let mut out = Vec::new();
        for (story, s) in self.stories.iter().enumerate() {
            for shot in 0..s.shots.len() {
                out.push(ImageRef { story, shot, source: ImageSource::FirstFrame });
            }
            for (target, context) in s.contexts.iter().enumerate() {
                let Some((z, flags)) = context else { continue };
                for (index, &flag) in flags.iter().enumerate() {
                    let padding = z.get(index)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
                    if !padding && (flag as usize) < s.captions.len() {
                        out.push(ImageRef {
                            story,
                            shot: flag as usize,
                            source: ImageSource::Context { target, index },
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// The latent `[1, C, h, w]` of `image`.
    pub fn image_latent(&self, image: &ImageRef) -> Result<Tensor> {
        let s = &self.stories[image.story];
        let z = match image.source {
            ImageSource::FirstFrame => s.shots[image.shot].narrow(0, 0, 1)?,
            ImageSource::Context { target, index } => match &s.contexts[target] {
                Some((z, _)) => z.narrow(0, index, 1)?,
                None => return Err(TrainError::File(format!("story {} shot {target} has no context", image.story))),
            },
        };
        Ok(z)
    }

    /// Shots of each story.
    pub fn shots_per_story(&self) -> Vec<usize> {
        self.stories.iter().map(|s| s.shots.len()).collect()
    }

    /// Writes the corpus as one safetensors file plus captions (JSON).
    pub fn save(&self, dir: &Path, key: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::File(format!("{}: {e}", dir.display())))?;
        let mut tensors = HashMap::new();
        let mut meta = Vec::new();
        for (i, s) in self.stories.iter().enumerate() {
            for (k, z) in s.shots.iter().enumerate() {
                tensors.insert(format!("{i}.shot.{k}"), z.clone());
            }
            let mut flags = Vec::new();
            for (k, c) in s.contexts.iter().enumerate() {
                if let Some((z, f)) = c {
                    tensors.insert(format!("{i}.context.{k}"), z.clone());
                    flags.push(f.clone());
                } else {
                    flags.push(Vec::new());
                }
            }
            meta.push(serde_json::json!({ "global": s.global, "captions": s.captions, "flags": flags }));
        }
        save_safetensors(&dir.join("latents.safetensors"), &tensors)?;
        let index = serde_json::json!({ "key": key, "stories": meta });
        write_text(&dir.join("latents.json"), &index.to_string())
    }

    /// Reads a corpus written by [`TeacherCorpus::save`] if its key matches.
    pub fn load(dir: &Path, key: &str) -> Result<Option<Self>> {
        let index_path = dir.join("latents.json");
        let Ok(text) = std::fs::read_to_string(&index_path) else { return Ok(None) };
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| TrainError::File(format!("{}: {e}", index_path.display())))?;
        if index.get("key").and_then(|k| k.as_str()) != Some(key) {
            return Ok(None);
        }
        let tensors = candle_core::safetensors::load(dir.join("latents.safetensors"), &Device::Cpu)?;
        let bad = |what: &str| TrainError::File(format!("{}: {what}", index_path.display()));
        let metas = index.get("stories").and_then(|s| s.as_array()).ok_or_else(|| bad("no stories"))?;
        let mut stories = Vec::with_capacity(metas.len());
        for (i, m) in metas.iter().enumerate() {
            let global =
                m.get("global").and_then(|g| g.as_str()).ok_or_else(|| bad("story without a global caption"))?;
            let captions: Vec<String> = serde_json::from_value(m.get("captions").cloned().unwrap_or_default())
                .map_err(|e| bad(&e.to_string()))?;
            let flags: Vec<Vec<i64>> =
                serde_json::from_value(m.get("flags").cloned().unwrap_or_default()).map_err(|e| bad(&e.to_string()))?;
            let mut shots = Vec::new();
            let mut contexts = Vec::new();
            for (k, f) in flags.into_iter().enumerate().take(captions.len()) {
                let z = tensors.get(&format!("{i}.shot.{k}")).ok_or_else(|| bad("missing shot latents"))?;
                shots.push(z.clone());
                contexts.push(tensors.get(&format!("{i}.context.{k}")).map(|c| (c.clone(), f)));
            }
            stories.push(EncodedStory { global: global.to_string(), captions, shots, contexts });
        }
        Ok(Some(Self { stories }))
    }
}

pub(crate) fn encode_story(
    vae: &WanVae,
    story: &Story,
    memory: &dyn ContextMemory,
    context_frames: usize,
    hw: (usize, usize),
    device: &Device,
) -> Result<EncodedStory> {
    let rendered = render_story(story)?;
    let mut shot_pixels = Vec::with_capacity(story.shots.len());
    for (start, end) in story.shot_ranges() {
        shot_pixels.push(frames_to_tensor(&rendered.frames[start..end], device)?);
    }
    let mut shots = Vec::with_capacity(shot_pixels.len());
    let mut contexts = Vec::with_capacity(shot_pixels.len());
    for (k, pixels) in shot_pixels.iter().enumerate() {
        shots.push(vae.encode(pixels)?);
        if k == 0 {
            contexts.push(None);
            continue;
        }
        let lens: Vec<usize> = story.shots[..k].iter().map(|s| s.frames).collect();
        let captions: Vec<String> = story.shots[..=k].iter().map(|s| s.caption.clone()).collect();
        let picks = memory.select(&ContextQuery::with_captions(&lens, &captions).with_global(&story.global_caption));
        let (z, flags) = encode_context(vae, &shot_pixels[..k], &picks, context_frames, hw, device)
            .map_err(|e| TrainError::File(format!("encoding the context of story {} shot {k}: {e}", story.seed)))?;
        contexts.push(Some((z, flags)));
    }
    Ok(EncodedStory {
        global: story.global_caption.clone(),
        captions: story.shots.iter().map(|s| s.caption.clone()).collect(),
        shots,
        contexts,
    })
}

/// The teacher and its text encoder, built on one set of trainable variables.
pub struct TeacherNetworks {
    /// The DiT.
    pub dit: WanModel,
    /// The text encoder.
    pub text: ToyTextEncoder,
    /// Whether the context frames are embedded at t = 0 (the config's `clean_context`).
    pub clean_context: bool,
    /// Whether the DiT takes context channels (the config's `context_channels`).
    pub context_channels: bool,
}

impl TeacherNetworks {
    /// Builds (or, for variables already in `varmap`, reuses) the networks for `cfg` and a VAE
    /// with `z` latent channels; fresh weights come from `cfg.init_seed`.
    pub fn trainable(cfg: &TeacherStageConfig, z: usize, varmap: &VarMap, device: &Device) -> Result<Self> {
        let mut wan = cfg.dit.config(z, &cfg.text);
        if cfg.context_channels {
            wan.in_dim = 2 * z;
        }
        let words =
            storyreel_nn::text::toy::SPECIALS.iter().map(|s| s.to_string()).chain(caption_vocabulary()).collect();
        let tokenizer = ToyTokenizer::new(words)?;
        init_variables(varmap, &wan, &cfg.text, &tokenizer, cfg.init_seed, device)?;
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let text = ToyTextEncoder::trainable_in(cfg.text.clone(), tokenizer, &vb.pp(TEXT_PREFIX))?;
        let rope = story_model::story_rope(cfg.shot_phase);
        let dit = WanModel::load(vb.pp(DIT_PREFIX), &wan, rope)?;
        Ok(Self { dit, text, clean_context: cfg.clean_context, context_channels: cfg.context_channels })
    }
}

/// Seeded initial weights (candle's own initialisers draw from an unseeded generator):
/// linear and conv weights N(0, 1/fan_in), biases 0, norm gains 1, modulation tables
/// N(0, 0.02²), and the output head zero so that training starts from a zero flow. Variables
/// already present (a resumed run) are left alone.
fn init_variables(
    varmap: &VarMap,
    wan: &WanConfig,
    text: &ToyTextConfig,
    tokenizer: &ToyTokenizer,
    seed: u64,
    device: &Device,
) -> Result<()> {
    let mut rng = WorldRng::new(seed);
    let mut normal = move |std: f64| -> f32 {
        let u1 = rng.uniform().max(1e-12);
        let u2 = rng.uniform();
        (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    };
    let mut fresh: Vec<(String, Tensor)> = Vec::new();
    for (name, shape) in storyreel_nn::checkpoint::dit_tensor_shapes(wan) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.starts_with("head.head.") || name.ends_with(".bias") {
            vec![0.0; n]
        } else if name.contains("norm") && name.ends_with(".weight") {
            vec![1.0; n]
        } else if name.ends_with("modulation") {
            (0..n).map(|_| normal(0.02)).collect()
        } else {
            let fan_in: usize = if shape.len() > 1 { shape[1..].iter().product() } else { shape[0] };
            let std = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| normal(std)).collect()
        };
        fresh.push((format!("{DIT_PREFIX}.{name}"), Tensor::from_vec(values, shape, device)?));
    }
    let text_init = ToyTextEncoder::random(text.clone(), tokenizer.clone(), mix64(seed ^ 0x7e47), device)?;
    for (name, t) in text_init.tensors() {
        fresh.push((format!("{TEXT_PREFIX}.{name}"), t));
    }
    let data = varmap.data();
    let mut vars = data.lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    for (name, t) in fresh {
        if let std::collections::hash_map::Entry::Vacant(slot) = vars.entry(name) {
            slot.insert(candle_core::Var::from_tensor(&t)?);
        }
    }
    Ok(())
}

/// Loss terms of one sample.
pub struct TeacherLoss {
    /// Weighted flow-matching loss (what is optimised).
    pub total: Tensor,
    /// Unweighted MSE.
    pub mse: f64,
    /// The timestep.
    pub t: f32,
}

/// Everything a sample needs besides the networks.
pub struct TeacherSample<'a> {
    /// The story.
    pub story: &'a EncodedStory,
    /// Target shot.
    pub shot: usize,
    /// Index into the timestep table.
    pub table_index: usize,
    /// Zero every caption embedding.
    pub caption_dropped: bool,
    /// Zero the context latents and flags.
    pub context_dropped: bool,
    /// Keep only the target's first latent frames (`None`: the whole shot).
    pub target_frames: Option<usize>,
    /// Noise seed.
    pub noise_seed: u64,
}

/// One sample made ready for a forward: noisy target, flow target, context and captions.
struct PreparedSample {
    x_t: Tensor,
    target: Tensor,
    context: Tensor,
    embeddings: Tensor,
    plan: ShotPlan,
    t: f32,
}

fn prepare_sample(
    nets: &TeacherNetworks,
    sample: &TeacherSample<'_>,
    schedule: &FlowSchedule,
    context_frames: usize,
) -> Result<PreparedSample> {
    let device = nets.dit.device().clone();
    let whole = &sample.story.shots[sample.shot];
    let x0 = &match sample.target_frames {
        Some(n) => whole.narrow(0, 0, n.min(whole.dim(0)?))?,
        None => whole.clone(),
    };
    let (_, c, h, w) = x0.dims4()?;
    let sigma = schedule.sigmas()[sample.table_index];
    let t = schedule.timesteps()[sample.table_index];
    let eps = SeededNoise::new(sample.noise_seed).noise(sample.shot, 0, 0, x0.dims(), &device)?;
    let x_t = add_noise(x0, &eps, sigma)?;
    let target = (&eps - x0)?;
    let (context, flags) = match (&sample.story.contexts[sample.shot], sample.context_dropped) {
        (Some((z, f)), false) => (z.clone(), f.clone()),
        _ => (Tensor::zeros((context_frames, c, h, w), DType::F32, &device)?, vec![0; context_frames]),
    };
    let mut embeddings = caption_embeddings(&nets.text, &sample.story.global, &sample.story.captions[..=sample.shot])?;
    if sample.caption_dropped {
        embeddings = embeddings.zeros_like()?;
    }
    let plan = ShotPlan::new(sample.shot, &flags, sample.shot + 1)?;
    Ok(PreparedSample { x_t, target, context, embeddings, plan, t })
}

/// The flow-matching loss of one sample (shotstream.md §5.1).
pub fn teacher_loss(
    nets: &TeacherNetworks,
    sample: &TeacherSample<'_>,
    schedule: &FlowSchedule,
    weights: &[f32],
    context_frames: usize,
) -> Result<TeacherLoss> {
    let p = prepare_sample(nets, sample, schedule, context_frames)?;
    let captions = nets.dit.embed_captions(&p.embeddings)?;
    let inputs = TeacherInputs {
        plan: &p.plan,
        captions: &captions,
        uncond: None,
        context: &p.context,
        clean_context: nets.clean_context,
        context_channels: nets.context_channels,
    };
    let v = teacher_flow(&nets.dit, &inputs, &p.x_t, p.t, FlowBranch::Conditional)?;
    let mse = (v - &p.target)?.sqr()?.mean_all()?;
    let mse_value = mse.to_scalar::<f32>()? as f64;
    let total = (mse * weights[sample.table_index] as f64)?;
    Ok(TeacherLoss { total, mse: mse_value, t: p.t })
}

/// The mean weighted flow-matching loss of several samples in one batched forward (each sample
/// attends only to its own context and target). Equal to the mean of [`teacher_loss`] over the
/// samples, with one DiT forward for all of them (the text encoder still runs once per prompt).
/// Returns the loss and the mean unweighted MSE.
pub fn batched_teacher_loss(
    nets: &TeacherNetworks,
    samples: &[TeacherSample<'_>],
    schedule: &FlowSchedule,
    weights: &[f32],
    context_frames: usize,
) -> Result<(Tensor, f64)> {
    if samples.is_empty() {
        return Err(TrainError::out_of_range("teacher samples", 0, "at least 1"));
    }
    let prepared =
        samples.iter().map(|s| prepare_sample(nets, s, schedule, context_frames)).collect::<Result<Vec<_>>>()?;
    let (mut inputs, mut frames, mut sizes, mut embeddings) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut caption_base = 0;
    for p in &prepared {
        let target_frames = p.x_t.dim(0)?;
        inputs.push(teacher_input(&p.context, &p.x_t, nets.context_channels)?);
        frames.extend(teacher_frames(&p.plan, target_frames, p.t, nets.clean_context).into_iter().map(|mut f| {
            f.caption += caption_base;
            f
        }));
        sizes.push(p.context.dim(0)? + target_frames);
        caption_base += p.embeddings.dim(0)?;
        embeddings.push(p.embeddings.clone());
    }
    let captions = nets.dit.embed_captions(&Tensor::cat(&embeddings, 0)?)?;
    let v = nets.dit.forward_separate_samples(&Tensor::cat(&inputs, 0)?, &frames, &sizes, &captions)?;
    let (mut total, mut value, mut start) = (None::<Tensor>, 0.0, 0);
    for ((p, s), size) in prepared.iter().zip(samples).zip(&sizes) {
        let n = p.x_t.dim(0)?;
        let mse = (v.narrow(0, start + size - n, n)? - &p.target)?.sqr()?.mean_all()?;
        start += size;
        value += mse.to_scalar::<f32>()? as f64 / samples.len() as f64;
        let weighted = (mse * (weights[s.table_index] as f64 / samples.len() as f64))?;
        total = Some(match total {
            Some(acc) => (acc + weighted)?,
            None => weighted,
        });
    }
    let total = total.ok_or_else(|| TrainError::out_of_range("teacher samples", 0, "at least 1"))?;
    Ok((total, value))
}

/// What a finished teacher stage reports (also `OUT/model/training.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TeacherStageReport {
    /// Steps trained.
    pub steps: u64,
    /// Mean weighted loss over the last 100 steps.
    pub final_loss: f64,
    /// Wall time of this invocation (encoding included).
    pub wall_seconds: f64,
    /// Seconds spent rendering and encoding the training stories.
    pub encode_seconds: f64,
    /// Trainable parameters (DiT + text encoder).
    pub parameters: usize,
    /// Training stories.
    pub stories: u64,
    /// The EMA decay when the model folder holds the EMA weights; none: the last step's weights.
    pub ema_decay: Option<f64>,
    /// The model folder written.
    pub model_dir: PathBuf,
}

/// Trains (or resumes) the teacher and writes `train.out_dir/model`, a story model folder.
pub fn run_teacher_stage(cfg: &TeacherStageConfig) -> Result<TeacherStageReport> {
    cfg.validate()?;
    let started = Instant::now();
    let device = Device::Cpu;
    let vae = WanVae::load(&cfg.vae, DType::F32, &device)
        .map_err(|e| TrainError::File(format!("loading the toy VAE from {}: {e}", cfg.vae.display())))?;
    if !vae.has_encoder() {
        return Err(TrainError::File(format!("{}: the VAE has no encoder", cfg.vae.display())));
    }
    let z = vae.latent_channels();
    let scale = vae.spatial_scale() * cfg.dit.patch;
    if !(cfg.data.width as usize).is_multiple_of(scale) || !(cfg.data.height as usize).is_multiple_of(scale) {
        return Err(TrainError::out_of_range(
            "data size",
            format!("{}x{}", cfg.data.width, cfg.data.height),
            format!("multiples of {scale} (VAE scale x patch)"),
        ));
    }
    let out_dir = cfg.train.out_dir.clone();
    std::fs::create_dir_all(&out_dir).map_err(|e| TrainError::File(format!("{}: {e}", out_dir.display())))?;

    // Encode once; reuse on resume when nothing that shapes the latents changed.
    let encode_started = Instant::now();
    let key = corpus_key(&cfg.vae, &cfg.data, cfg.context_frames, &cfg.context_policy)?;
    let corpus_dir = out_dir.join("latents");
    let corpus = match TeacherCorpus::load(&corpus_dir, &key)? {
        Some(c) => c,
        None => {
            if cfg.train.progress {
                eprintln!("rendering and encoding {} training stories", cfg.data.stories);
            }
            let c =
                TeacherCorpus::encode(&vae, &cfg.data, cfg.context_frames, &cfg.context_policy, cfg.train.progress)?;
            c.save(&corpus_dir, &key)?;
            c
        }
    };
    let encode_seconds = encode_started.elapsed().as_secs_f64();
    let shots_per_story = corpus.shots_per_story();

    let varmap = VarMap::new();
    let nets = TeacherNetworks::trainable(cfg, z, &varmap, &device)?;
    if let Some(from) = &cfg.init_from {
        load_initial_teacher(&varmap, from, &cfg.vae, &nets.text, &device)?;
    }
    let parameters = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let mut train = cfg.train.clone();
    train.schedule.total_steps = cfg.steps;
    // A short run (a smoke test, `--steps 5`) keeps its warm-up inside the run.
    train.schedule.warmup_steps = train.schedule.warmup_steps.min(cfg.steps);
    // Initial weights, paths and the card's sampler may change on a resume; the data and loss may not.
    let settings = learning_settings(cfg, &["train", "steps", "vae", "init_seed", "init_from", "sampler"])?;
    let mut trainer = Trainer::new(&varmap, train)?.with_stage_settings(settings);
    trainer.resume_latest(&out_dir)?;
    let schedule = FlowSchedule::new(1000, cfg.shift);
    let weights = cfg.timestep_weighting.weights(schedule.timesteps());
    let low_noise = cfg.low_noise_shift.map(|s| {
        let table = FlowSchedule::new(1000, s);
        let w = cfg.timestep_weighting.weights(table.timesteps());
        (table, w)
    });
    let images = if cfg.image_samples > 0 { corpus.images()? } else { Vec::new() };
    let image_table = FlowSchedule::new(1000, cfg.image_shift);
    let accumulate = cfg.train.accumulate as u64;
    let mut recent: Vec<f64> = Vec::new();
    while trainer.step_count() < cfg.steps {
        let step = trainer.step_count();
        let report = trainer.step(|micro| {
            let index = step * accumulate + micro as u64;
            let (story, shot, table_index, caption_dropped, context_dropped) = draw_sample(
                cfg.train.seed,
                index,
                &shots_per_story,
                weights.len(),
                cfg.caption_dropout,
                cfg.context_dropout,
            );
            let sample = TeacherSample {
                story: &corpus.stories[story],
                shot,
                table_index,
                caption_dropped,
                context_dropped: context_dropped || !cfg.use_context,
                target_frames: None,
                noise_seed: mix64(cfg.train.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            };
            // Drawn apart from `draw_sample` so that runs without the second table see the
            // same data as before it existed.
            let (table, table_weights) = match &low_noise {
                Some((t, w))
                    if WorldRng::derived(mix64(cfg.train.seed ^ 0x10e5), index).chance(cfg.low_noise_share) =>
                {
                    (t, w)
                }
                _ => (&schedule, &weights),
            };
            let loss = teacher_loss(&nets, &sample, table, table_weights, cfg.context_frames)?;
            let mut metrics = vec![("mse".into(), loss.mse), ("t".into(), loss.t as f64)];
            let mut total = loss.total;
            if !images.is_empty() {
                let draws = draw_images(
                    cfg.train.seed,
                    index,
                    cfg.image_samples,
                    images.len(),
                    image_table.sigmas().len(),
                    cfg.caption_dropout,
                );
                let latents = draws
                    .iter()
                    .map(|&(image, _, _)| corpus.image_latent(&images[image]))
                    .collect::<Result<Vec<_>>>()?;
                let samples: Vec<ImageSample<'_>> = draws
                    .iter()
                    .zip(&latents)
                    .enumerate()
                    .map(|(j, (&(image, table_index, caption_dropped), latent))| ImageSample {
                        latent,
                        story: &corpus.stories[images[image].story],
                        shot: images[image].shot,
                        caption_dropped,
                        table_index,
                        noise_seed: mix64(cfg.train.seed ^ 0x1a6e ^ (index.wrapping_mul(257) + j as u64)),
                    })
                    .collect();
                let (loss, value) = image_loss(&nets, &samples, &image_table)?;
                total = (total + (loss * cfg.image_weight)?)?;
                metrics.push(("image_mse".into(), value));
            }
            let draws = draw_context_samples(
                cfg.train.seed,
                index,
                cfg.context_samples,
                &shots_per_story,
                schedule.sigmas().len(),
                cfg.caption_dropout,
            );
            if let Some(draws) = draws.filter(|d| !d.is_empty()) {
                let samples: Vec<TeacherSample<'_>> = draws
                    .iter()
                    .enumerate()
                    .map(|(j, &(story, shot, table_index, caption_dropped))| TeacherSample {
                        story: &corpus.stories[story],
                        shot,
                        table_index,
                        caption_dropped,
                        context_dropped: false,
                        target_frames: Some(cfg.context_sample_frames),
                        noise_seed: mix64(cfg.train.seed ^ 0xc07e ^ (index.wrapping_mul(263) + j as u64)),
                    })
                    .collect();
                let (loss, value) = batched_teacher_loss(&nets, &samples, &schedule, &weights, cfg.context_frames)?;
                total = (total + (loss * cfg.context_sample_weight)?)?;
                metrics.push(("context_mse".into(), value));
            }
            Ok((total, metrics))
        })?;
        recent.push(report.loss);
        if recent.len() > 100 {
            recent.remove(0);
        }
    }
    trainer.finish();
    let final_loss = recent.iter().sum::<f64>() / recent.len().max(1) as f64;

    let model_dir = out_dir.join("model");
    let ema_decay = trainer.load_export_weights(&varmap)?;
    write_model(cfg, &nets, &vae, &varmap, ema_decay, &model_dir)?;
    let report = TeacherStageReport {
        steps: trainer.step_count(),
        final_loss,
        wall_seconds: started.elapsed().as_secs_f64(),
        encode_seconds,
        parameters,
        stories: cfg.data.stories,
        ema_decay,
        model_dir: model_dir.clone(),
    };
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    write_text(&model_dir.join("training.json"), &(text + "\n"))?;
    Ok(report)
}

/// Copies a trained teacher's DiT and text-encoder weights into the stage's variables. Every
/// variable must be present with its shape, the vocabularies must match word for word (a
/// reordered vocabulary would silently scramble the embeddings), and the teacher must have been
/// trained on the stage's VAE (its latents mean nothing under another one).
pub fn load_initial_teacher(
    varmap: &VarMap,
    from: &Path,
    vae_dir: &Path,
    text: &ToyTextEncoder,
    device: &Device,
) -> Result<()> {
    let bad = |what: String| TrainError::File(format!("init_from {}: {what}", from.display()));
    let same_vae =
        vae_fingerprint(&from.join(story_model::VAE_DIR)).map_err(|e| bad(e.to_string()))? == vae_fingerprint(vae_dir)?;
    if !same_vae {
        return Err(bad(format!(
            "it was trained on another VAE than the stage's {} (its latents would mean nothing)",
            vae_dir.display()
        )));
    }
    let trained_text =
        ToyTextEncoder::load(&from.join(story_model::TEXT_DIR), device).map_err(|e| bad(e.to_string()))?;
    if trained_text.tokenizer().words() != text.tokenizer().words() {
        return Err(bad("its text encoder has another vocabulary than the world's captions".into()));
    }
    let dit_path = from.join(story_model::DIT_DIR).join(story_model::DIT_WEIGHTS);
    let dit = candle_core::safetensors::load(&dit_path, device).map_err(|e| bad(e.to_string()))?;
    let text_tensors = trained_text.tensors();
    let data = varmap.data().lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    for (name, var) in data.iter() {
        let found = if let Some(n) = name.strip_prefix(&format!("{DIT_PREFIX}.")) {
            dit.get(n)
        } else if let Some(n) = name.strip_prefix(&format!("{TEXT_PREFIX}.")) {
            text_tensors.get(n)
        } else {
            None
        };
        let t = found.ok_or_else(|| bad(format!("no tensor for `{name}` (a teacher of another shape?)")))?;
        let t = &widen_for_context_channels(name, t, var.dims())?;
        if t.dims() != var.dims() {
            return Err(bad(format!("`{name}` is {:?}, the stage's teacher needs {:?}", t.dims(), var.dims())));
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// A teacher without context channels starting one with them: its patch embedding gains the
/// new input channels with zero weight, so the wider model computes exactly what it did.
/// Every other tensor, and one already of the wanted shape, is returned as it is.
fn widen_for_context_channels(name: &str, t: &Tensor, want: &[usize]) -> Result<Tensor> {
    let is_patch = name == format!("{DIT_PREFIX}.patch_embedding.weight");
    let dims = t.dims();
    if !is_patch
        || dims.len() != 5
        || want.len() != 5
        || want[1] != 2 * dims[1]
        || dims[0] != want[0]
        || dims[2..] != want[2..]
    {
        return Ok(t.clone());
    }
    Ok(Tensor::cat(&[t.clone(), t.zeros_like()?], 1)?)
}

/// Hash of a VAE folder's weights and config.
fn vae_fingerprint(vae_dir: &Path) -> Result<u64> {
    let file = storyreel_nn::vae::find_vae_file(vae_dir)?;
    let mut h = 0u64;
    for path in [file.clone(), file.with_file_name("vae_config.json")] {
        if let Ok(bytes) = std::fs::read(&path) {
            h = fold_bytes(h, &bytes);
        }
    }
    Ok(h)
}

/// Identifies the encoded corpus: the VAE's weights and config, the data settings, the
/// context size and policy (named only when not "dynamic", so older corpora keep their keys;
/// with its revision past the first, so a policy that now picks otherwise re-encodes).
pub(crate) fn corpus_key(vae_dir: &Path, data: &TeacherData, context_frames: usize, policy: &str) -> Result<String> {
    let h = vae_fingerprint(vae_dir)?;
    let revision = context_memory(policy, context_frames)?.revision();
    let policy = match (policy, revision) {
        ("dynamic", 1) => String::new(),
        (_, 1) => format!(" policy:{policy}"),
        (_, r) => format!(" policy:{policy} r{r}"),
    };
    Ok(format!(
        "vae:{h:016x} data:{} context:{context_frames}{policy}",
        serde_json::to_string(data).unwrap_or_default()
    ))
}

/// The context policy called `name`, or an error naming the choices.
pub(crate) fn context_memory(name: &str, max_frames: usize) -> Result<Box<dyn ContextMemory>> {
    policy_by_name(name, max_frames)
        .ok_or_else(|| TrainError::out_of_range("context policy", name, format!("one of {}", POLICY_NAMES.join(", "))))
}

/// Writes the story model folder: card, DiT, VAE and text encoder (`ema_decay`: the variables
/// hold that EMA's weights, which the card names).
fn write_model(
    cfg: &TeacherStageConfig,
    nets: &TeacherNetworks,
    vae: &WanVae,
    varmap: &VarMap,
    ema_decay: Option<f64>,
    dir: &Path,
) -> Result<()> {
    save_dit(varmap, DIT_PREFIX, nets.dit.config(), dir)?;
    nets.text.save(&dir.join(story_model::TEXT_DIR))?;
    vae.save(&dir.join(story_model::VAE_DIR))?;
    let card = ModelCard {
        kind: ModelKind::Teacher,
        width: cfg.data.width,
        height: cfg.data.height,
        fps: 16.0,
        context_frames: cfg.context_frames,
        shot_phase: cfg.shot_phase,
        uses_context: cfg.use_context,
        context_policy: cfg.context_policy.clone(),
        clean_context: cfg.clean_context,
        context_channels: cfg.context_channels,
        sampler: cfg.sampler,
        student: None,
        decoder: None,
        description: format!(
            "toy next-shot teacher trained {} steps on {} world stories ({}){}",
            cfg.steps,
            cfg.data.stories,
            if cfg.use_context { "with context" } else { "without context: ablation" },
            ema_note(ema_decay)
        ),
    };
    Ok(card.write(dir)?)
}

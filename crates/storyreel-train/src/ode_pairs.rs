//! Stage 2a of ShotStream (shotstream.md §5.2): ODE pairs from the teacher.
//!
//! Every shot of every training story is sampled by the teacher from seeded noise, with the
//! ground-truth context the teacher trained on, by multi-step Euler with CFG. The states the
//! trajectory passes at the student's timesteps are kept with its end point x0: the ODE-init
//! stage teaches the causal student to jump from each state straight to x0.
//!
//! Pairs are written in shards as they are made (`OUT/shard-NNNNN.safetensors` + `.json`, listed
//! in `OUT/ode_pairs.json`), so a stopped run keeps every finished shard and resumes after it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use storyreel_engine::shot_plan::ShotPlan;
use storyreel_engine::teacher::{sample_shot, TeacherInputs};
use storyreel_engine::teacher_story::{caption_embeddings, unconditional_caption};
use storyreel_engine::{EulerSampler, FlowSchedule, NoiseSource, SeededNoise, StoryModel};
use storyreel_nn::checkpoint::save_safetensors;
use storyreel_nn::codec::VideoCodec;
use storyreel_world::generate_story;
use storyreel_world::rng::mix64;

use crate::data::story_options;
use crate::error::{Result, TrainError};
use crate::log::Progress;
use crate::model_files::{fold_bytes, write_text};
use crate::stage_teacher::{encode_story, TeacherData};

/// Name of the index file inside the output folder.
pub const INDEX_FILE: &str = "ode_pairs.json";

/// Settings of `storyreel train ode-pairs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OdePairsConfig {
    /// The teacher's story model folder.
    pub teacher: PathBuf,
    /// Which training stories (every shot of each becomes one pair).
    pub data: TeacherData,
    /// Euler steps of the teacher's trajectory (50 in ShotStream).
    pub steps: usize,
    /// Shift of the trajectory's schedule (8).
    pub shift: f32,
    /// CFG scale; `None` takes the teacher card's (ShotStream uses 6 with its pretrained base).
    pub guidance: Option<f32>,
    /// Context guidance scale (see `EulerSampler`); `None` takes the teacher card's.
    pub context_guidance: Option<f32>,
    /// The student's denoising steps before warping ([1000, 740, 500, 260]); the trajectory must
    /// pass each of them.
    pub student_steps: Vec<u32>,
    /// The student's latent frames per chunk: each shot's trajectory is sampled at its length
    /// rounded up to whole chunks (the student generates whole chunks and trims the last).
    pub chunk_frames: usize,
    /// Stories per shard file.
    pub shard_stories: u64,
    /// Seed of the trajectories' noise.
    pub seed: u64,
    /// Output folder.
    pub out_dir: PathBuf,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for OdePairsConfig {
    fn default() -> Self {
        Self {
            teacher: PathBuf::from("runs/teacher/model"),
            data: TeacherData { first_seed: 0, stories: 200, ..TeacherData::default() },
            steps: 50,
            shift: 8.0,
            guidance: None,
            context_guidance: None,
            student_steps: vec![1000, 740, 500, 260],
            chunk_frames: 3,
            shard_stories: 16,
            seed: 0,
            out_dir: PathBuf::from("runs/ode-pairs"),
            progress: true,
        }
    }
}

impl OdePairsConfig {
    /// Reads a `.json` or `.toml` config over the defaults.
    pub fn read(path: &Path) -> Result<Self> {
        crate::stage_config::read_over_defaults(path, &Self::default())
    }

    /// Checks the settings that do not need the teacher.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > 1000 {
            return Err(TrainError::out_of_range("steps", self.steps, "1..=1000"));
        }
        if !(self.shift > 0.0 && self.shift.is_finite()) {
            return Err(TrainError::out_of_range("shift", self.shift, "a positive number"));
        }
        if let Some(g) = self.guidance.filter(|g| !g.is_finite()) {
            return Err(TrainError::out_of_range("guidance", g, "a finite number"));
        }
        if let Some(g) = self.context_guidance.filter(|g| !(*g >= 0.0 && g.is_finite())) {
            return Err(TrainError::out_of_range("context_guidance", g, "a finite number ≥ 0"));
        }
        if self.student_steps.is_empty() || self.student_steps.iter().any(|&s| s == 0 || s > 1000) {
            return Err(TrainError::out_of_range(
                "student_steps",
                format!("{:?}", self.student_steps),
                "at least one step, each in 1..=1000",
            ));
        }
        if self.student_steps.windows(2).any(|w| w[1] >= w[0]) {
            return Err(TrainError::out_of_range(
                "student_steps",
                format!("{:?}", self.student_steps),
                "strictly decreasing (from noise towards data)",
            ));
        }
        if self.chunk_frames == 0 || self.chunk_frames > 64 {
            return Err(TrainError::out_of_range("chunk_frames", self.chunk_frames, "1..=64"));
        }
        if self.shard_stories == 0 {
            return Err(TrainError::out_of_range("shard_stories", 0, "at least 1"));
        }
        if self.data.stories == 0 || self.data.stories > 1_000_000 {
            return Err(TrainError::out_of_range("data.stories", self.data.stories, "1..=1000000"));
        }
        crate::data::check_training_seeds(self.data.first_seed, self.data.stories)?;
        self.saved_steps().map(|_| ())
    }

    /// Indices into the Euler grid whose inputs are saved, one per student timestep, with the
    /// student's timesteps; an error when the grid does not pass one of them.
    pub fn saved_steps(&self) -> Result<(Vec<usize>, Vec<f32>)> {
        let grid = FlowSchedule::new(self.steps, self.shift);
        let student = FlowSchedule::new(1000, self.shift).warp(&self.student_steps).map_err(TrainError::File)?;
        let mut indices = Vec::with_capacity(student.len());
        for &t in &student {
            let (i, &g) = grid
                .timesteps()
                .iter()
                .enumerate()
                .min_by(|a, b| (a.1 - t).abs().total_cmp(&(b.1 - t).abs()))
                .ok_or_else(|| TrainError::out_of_range("steps", self.steps, "at least 1"))?;
            if (g - t).abs() > 0.5 {
                return Err(TrainError::out_of_range(
                    "student_steps",
                    format!("{:?}", self.student_steps),
                    format!(
                        "timesteps the {}-step Euler grid (shift {}) visits; student t = {t:.1} is nearest {g:.1}",
                        self.steps, self.shift
                    ),
                ));
            }
            indices.push(i);
        }
        Ok((indices, student))
    }

    /// What the pairs depend on: the teacher's weights and every setting but the folder and the
    /// progress bar. A resumed run only reuses shards of the same key.
    fn key(&self) -> Result<String> {
        let teacher = teacher_fingerprint(&self.teacher)?;
        let mut settings = serde_json::json!({
            "data": self.data, "steps": self.steps, "shift": self.shift, "guidance": self.guidance,
            "student_steps": self.student_steps, "chunk_frames": self.chunk_frames, "shard_stories": self.shard_stories, "seed": self.seed,
        });
        // Only when set, so that pairs made before the setting existed still resume.
        if let Some(g) = self.context_guidance {
            settings["context_guidance"] = serde_json::json!(g);
        }
        Ok(format!("{teacher} {settings}"))
    }
}

/// The part of a pair folder's key that names its teacher: `teacher:` and a hash of the
/// teacher's DiT, text encoder and VAE weights.
pub fn teacher_fingerprint(teacher: &Path) -> Result<String> {
    let mut h = 0u64;
    for part in ["dit/model.safetensors", "text/toy_text.safetensors", "vae/vae.safetensors"] {
        let path = teacher.join(part);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::File(format!("{}: {e}", path.display())))?;
        h = fold_bytes(h, &bytes);
    }
    Ok(format!("teacher:{h:016x}"))
}

/// The teacher part of an index's key (everything before the settings).
fn key_teacher(key: &str) -> &str {
    key.split_once(' ').map_or(key, |(teacher, _)| teacher)
}

/// One pair: a shot's conditioning, the trajectory's states at the student's timesteps and x0.
#[derive(Debug, Clone)]
pub struct OdePair {
    /// Seed of the story.
    pub story_seed: u64,
    /// Index of the shot.
    pub shot: usize,
    /// The story's global caption.
    pub global: String,
    /// Captions of shots 0..=shot.
    pub captions: Vec<String>,
    /// Context latents `[n, C, h, w]` (zeros with flag 0 for the first shot).
    pub context: Tensor,
    /// Shot flag of each context frame.
    pub flags: Vec<i64>,
    /// States `[S, F, C, h, w]`: the trajectory's input at each student timestep (F is the
    /// shot's latent length rounded up to whole chunks).
    pub states: Tensor,
    /// The trajectory's end point `[F, C, h, w]`.
    pub x0: Tensor,
}

/// The index of a pair folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OdePairsIndex {
    /// What the pairs were made from (see [`OdePairsConfig`]).
    pub key: String,
    /// The student's timesteps the states sit at.
    pub timesteps: Vec<f32>,
    /// The student's denoising steps before warping, and the shift they are warped with.
    pub student_steps: Vec<u32>,
    /// Shift of the student's table.
    pub shift: f32,
    /// Latent frames per chunk; every pair's length is a multiple of it.
    pub chunk_frames: usize,
    /// Finished shard files (relative to the folder), in order.
    pub shards: Vec<String>,
    /// Pairs in the finished shards.
    pub pairs: usize,
    /// Seconds spent sampling, over every invocation.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PairMeta {
    story_seed: u64,
    shot: usize,
    global: String,
    captions: Vec<String>,
    flags: Vec<i64>,
}

/// What `ode-pairs` reports.
#[derive(Debug, Clone, Serialize)]
pub struct OdePairsReport {
    /// Pairs in the folder.
    pub pairs: usize,
    /// Pairs made by this invocation.
    pub new_pairs: usize,
    /// Seconds this invocation spent.
    pub seconds: f64,
    /// The folder.
    pub out_dir: PathBuf,
}

/// Makes (or finishes) the ODE pairs of `cfg`.
pub fn make_ode_pairs(cfg: &OdePairsConfig) -> Result<OdePairsReport> {
    cfg.validate()?;
    let started = Instant::now();
    let device = Device::Cpu;
    let model = StoryModel::load(&cfg.teacher, &device)?;
    crate::stage_ode_init::check_distillable(&model, &cfg.teacher)?;
    let (saved, timesteps) = cfg.saved_steps()?;
    let guidance = cfg.guidance.unwrap_or(model.card.sampler.guidance);
    let sampler = EulerSampler::new(cfg.steps, cfg.shift, guidance)?
        .with_context_guidance(cfg.context_guidance.unwrap_or(model.card.sampler.context_guidance))?;
    let key = cfg.key()?;
    std::fs::create_dir_all(&cfg.out_dir).map_err(|e| TrainError::File(format!("{}: {e}", cfg.out_dir.display())))?;
    let index_path = cfg.out_dir.join(INDEX_FILE);
    let mut index = match read_index(&cfg.out_dir)? {
        Some(i) if i.key == key => i,
        Some(_) => {
            return Err(TrainError::File(format!(
                "{} holds pairs of another teacher or other settings; choose an empty out_dir",
                index_path.display()
            )))
        }
        None => OdePairsIndex {
            key,
            timesteps: timesteps.clone(),
            student_steps: cfg.student_steps.clone(),
            shift: cfg.shift,
            chunk_frames: cfg.chunk_frames,
            shards: Vec::new(),
            pairs: 0,
            seconds: 0.0,
        },
    };
    let card = model.card.clone();
    let options = story_options(card.width, card.height);
    let scale = model.vae.spatial_scale();
    let hw = (card.height as usize / scale, card.width as usize / scale);
    let memory = crate::stage_teacher::context_memory(&card.context_policy, card.context_frames)?;
    let uncond = unconditional_caption(&model.dit, &device)?;
    let shards = cfg.data.stories.div_ceil(cfg.shard_stories);
    let done_stories = (index.shards.len() as u64 * cfg.shard_stories).min(cfg.data.stories);
    let bar = Progress::new(cfg.data.stories, done_stories, cfg.progress);
    let mut new_pairs = 0;
    for shard in index.shards.len() as u64..shards {
        let shard_started = Instant::now();
        let first = shard * cfg.shard_stories;
        let last = (first + cfg.shard_stories).min(cfg.data.stories);
        let mut pairs = Vec::new();
        for i in first..last {
            let seed = cfg.data.first_seed + i;
            let story = generate_story(seed, &options)?;
            let encoded = encode_story(&model.vae, &story, memory.as_ref(), card.context_frames, hw, &device)?;
            for (k, shot) in encoded.shots.iter().enumerate() {
                let (f, c, h, w) = shot.dims4()?;
                let f = f.div_ceil(cfg.chunk_frames) * cfg.chunk_frames;
                let (context, flags) = match (&encoded.contexts[k], card.uses_context) {
                    (Some((z, fl)), true) => (z.clone(), fl.clone()),
                    _ => (
                        Tensor::zeros((card.context_frames, c, h, w), DType::F32, &device)?,
                        vec![0; card.context_frames],
                    ),
                };
                let embeddings = caption_embeddings(&model.text, &encoded.global, &encoded.captions[..=k])?;
                let captions = model.dit.embed_captions(&embeddings)?;
                let plan = ShotPlan::new(k, &flags, k + 1)?;
                let inputs = TeacherInputs {
                    plan: &plan,
                    captions: &captions,
                    uncond: Some(&uncond),
                    context: &context,
                    clean_context: card.clean_context,
                    context_channels: card.context_channels,
                };
                let noise = SeededNoise::new(mix64(cfg.seed ^ seed)).noise(k, 0, 0, &[f, c, h, w], &device)?;
                let mut states = Vec::with_capacity(saved.len());
                let mut keep = |step: usize, x: &Tensor| -> storyreel_engine::Result<()> {
                    if saved.contains(&step) {
                        states.push(x.clone());
                    }
                    Ok(())
                };
                let x0 = sample_shot(&model.dit, &inputs, &sampler, noise, &mut keep, &|| false)?;
                pairs.push(OdePair {
                    story_seed: seed,
                    shot: k,
                    global: encoded.global.clone(),
                    captions: encoded.captions[..=k].to_vec(),
                    context,
                    flags,
                    states: Tensor::stack(&states, 0)?,
                    x0,
                });
            }
            bar.update(i + 1, f64::NAN);
        }
        let name = format!("shard-{shard:05}");
        write_shard(&cfg.out_dir, &name, &pairs)?;
        new_pairs += pairs.len();
        index.shards.push(name);
        index.pairs += pairs.len();
        index.seconds += shard_started.elapsed().as_secs_f64();
        write_index(&cfg.out_dir, &index)?;
    }
    bar.finish();
    Ok(OdePairsReport {
        pairs: index.pairs,
        new_pairs,
        seconds: started.elapsed().as_secs_f64(),
        out_dir: cfg.out_dir.clone(),
    })
}

fn write_shard(dir: &Path, name: &str, pairs: &[OdePair]) -> Result<()> {
    let mut tensors = std::collections::HashMap::new();
    let mut metas = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        tensors.insert(format!("{i}.context"), p.context.clone());
        tensors.insert(format!("{i}.states"), p.states.clone());
        tensors.insert(format!("{i}.x0"), p.x0.clone());
        metas.push(PairMeta {
            story_seed: p.story_seed,
            shot: p.shot,
            global: p.global.clone(),
            captions: p.captions.clone(),
            flags: p.flags.clone(),
        });
    }
    // Tensors first: a shard counts only once its metadata (written last, atomically) exists.
    save_safetensors(&dir.join(format!("{name}.safetensors")), &tensors)?;
    let text = serde_json::to_string(&metas).map_err(|e| TrainError::File(e.to_string()))?;
    write_text(&dir.join(format!("{name}.json")), &text)
}

fn write_index(dir: &Path, index: &OdePairsIndex) -> Result<()> {
    let text = serde_json::to_string_pretty(index).map_err(|e| TrainError::File(e.to_string()))?;
    write_text(&dir.join(INDEX_FILE), &(text + "\n"))
}

/// Reads `dir/ode_pairs.json`; `None` when the folder has none yet.
pub fn read_index(dir: &Path) -> Result<Option<OdePairsIndex>> {
    let path = dir.join(INDEX_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::File(format!("{}: {e}", path.display()))),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| TrainError::File(format!("{}: {e}", path.display())))
}

/// Loads every pair of a folder written by [`make_ode_pairs`], checking each against the index.
pub fn load_ode_pairs(dir: &Path) -> Result<(OdePairsIndex, Vec<OdePair>)> {
    let index = read_index(dir)?.ok_or_else(|| {
        TrainError::File(format!("{}: no {INDEX_FILE} (make pairs with `storyreel train ode-pairs`)", dir.display()))
    })?;
    let mut pairs = Vec::with_capacity(index.pairs);
    for name in &index.shards {
        let meta_path = dir.join(format!("{name}.json"));
        let bad = |what: String| TrainError::File(format!("{}: {what}", meta_path.display()));
        let text = std::fs::read_to_string(&meta_path).map_err(|e| bad(e.to_string()))?;
        let metas: Vec<PairMeta> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let tensor_path = dir.join(format!("{name}.safetensors"));
        let tensors = candle_core::safetensors::load(&tensor_path, &Device::Cpu)
            .map_err(|e| TrainError::File(format!("{}: {e}", tensor_path.display())))?;
        for (i, m) in metas.into_iter().enumerate() {
            let get = |part: &str| {
                tensors.get(&format!("{i}.{part}")).cloned().ok_or_else(|| bad(format!("pair {i} has no {part}")))
            };
            let (context, states, x0) = (get("context")?, get("states")?, get("x0")?);
            if states.rank() != 5 || states.dim(0)? != index.timesteps.len() || states.dims()[1..] != *x0.dims() {
                return Err(bad(format!(
                    "pair {i}: states {:?} do not match x0 {:?} and {} timesteps",
                    states.dims(),
                    x0.dims(),
                    index.timesteps.len()
                )));
            }
            if context.rank() != 4 || context.dim(0)? != m.flags.len() || context.dims()[1..] != x0.dims()[1..] {
                return Err(bad(format!(
                    "pair {i}: context {:?} does not match {} flags and x0 {:?}",
                    context.dims(),
                    m.flags.len(),
                    x0.dims()
                )));
            }
            if x0.dim(0)? % index.chunk_frames.max(1) != 0 {
                return Err(bad(format!(
                    "pair {i}: {} frames are not whole {}-frame chunks",
                    x0.dim(0)?,
                    index.chunk_frames
                )));
            }
            if m.captions.len() != m.shot + 1 {
                return Err(bad(format!("pair {i}: shot {} with {} captions", m.shot, m.captions.len())));
            }
            pairs.push(OdePair {
                story_seed: m.story_seed,
                shot: m.shot,
                global: m.global,
                captions: m.captions,
                context,
                flags: m.flags,
                states,
                x0,
            });
        }
    }
    if pairs.len() != index.pairs {
        return Err(TrainError::File(format!(
            "{}: the index counts {} pairs but the shards hold {}",
            dir.join(INDEX_FILE).display(),
            index.pairs,
            pairs.len()
        )));
    }
    Ok((index, pairs))
}

/// Loads the pairs of several folders as one set: the folders must come from one teacher and
/// share the student's timesteps and chunking, and no shot may appear in two of them (it would
/// count twice). Returns the first folder's index, which every other one matches in all that
/// training reads, and every pair in folder order.
pub fn load_ode_pair_folders(dirs: &[PathBuf]) -> Result<(OdePairsIndex, Vec<OdePair>)> {
    let Some((first_dir, rest)) = dirs.split_first() else {
        return Err(TrainError::File("no ODE pair folder given (set `pairs`)".into()));
    };
    let (first, mut pairs) = load_ode_pairs(first_dir)?;
    let mut seen: std::collections::HashMap<(u64, usize), &Path> =
        pairs.iter().map(|p| ((p.story_seed, p.shot), first_dir.as_path())).collect();
    for dir in rest {
        let (index, more) = load_ode_pairs(dir)?;
        let differs = |what: &str, a: String, b: String| {
            TrainError::File(format!(
                "{} and {} hold pairs of different {what} ({a} against {b}); they cannot train one student",
                first_dir.display(),
                dir.display()
            ))
        };
        if key_teacher(&index.key) != key_teacher(&first.key) {
            return Err(differs("teachers", key_teacher(&first.key).into(), key_teacher(&index.key).into()));
        }
        if index.timesteps != first.timesteps
            || index.student_steps != first.student_steps
            || index.shift != first.shift
        {
            return Err(differs(
                "student timesteps",
                format!("{:?}", first.timesteps),
                format!("{:?}", index.timesteps),
            ));
        }
        if index.chunk_frames != first.chunk_frames {
            return Err(differs("chunk sizes", first.chunk_frames.to_string(), index.chunk_frames.to_string()));
        }
        for p in &more {
            if let Some(other) = seen.insert((p.story_seed, p.shot), dir.as_path()) {
                return Err(TrainError::File(format!(
                    "story seed {} shot {} has pairs in both {} and {} (overlapping `data.first_seed` ranges?)",
                    p.story_seed,
                    p.shot,
                    other.display(),
                    dir.display()
                )));
            }
        }
        pairs.extend(more);
    }
    Ok((first, pairs))
}

/// Refuses pairs whose index names another teacher than `teacher` (same shapes, other weights:
/// the student would regress to trajectories it is not initialised from).
pub fn check_pairs_teacher(index: &OdePairsIndex, teacher: &Path) -> Result<()> {
    let want = teacher_fingerprint(teacher)?;
    let have = key_teacher(&index.key);
    if have != want {
        return Err(TrainError::File(format!(
            "the ODE pairs were made from {have}, but the teacher {} is {want}; make pairs from this teacher \
             with `storyreel train ode-pairs`",
            teacher.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fifty_step_grid_passes_the_student_timesteps() {
        let cfg = OdePairsConfig::default();
        let (indices, t) = cfg.saved_steps().unwrap();
        assert_eq!(indices, vec![0, 13, 25, 37]);
        let want = [1000.0, 957.929, 888.889, 737.589];
        for (a, b) in t.iter().zip(want) {
            assert!((a - b).abs() < 0.01, "{t:?}");
        }
    }

    #[test]
    fn a_grid_that_misses_a_student_timestep_is_refused() {
        let cfg = OdePairsConfig { steps: 7, ..OdePairsConfig::default() };
        let err = cfg.saved_steps().unwrap_err().to_string();
        assert!(err.contains("student_steps"), "{err}");
        let cfg = OdePairsConfig { student_steps: vec![], ..OdePairsConfig::default() };
        assert!(cfg.validate().is_err());
        let cfg = OdePairsConfig { shard_stories: 0, ..OdePairsConfig::default() };
        assert!(cfg.validate().is_err());
    }
}

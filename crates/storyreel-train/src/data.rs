//! Training clips from the story world: rendered on the fly from seeded stories, or read from a
//! dataset folder that `storyreel world generate` wrote. Both give the same [`Clip`], chosen
//! by index alone, so a run (and a resumed run) sees exactly the same data.

use std::path::Path;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use storyreel_media::RgbFrame;
use storyreel_world::rng::{mix64, WorldRng};
use storyreel_world::{generate_story, is_benchmark_seed, render_shot, FrameTruth, StoryOptions, WorldDataset};

use crate::error::{Result, TrainError};

/// The world's default story options at a `width` × `height` frame size: how every stage and
/// check draws its stories.
pub fn story_options(width: u32, height: u32) -> StoryOptions {
    let mut options = StoryOptions::default();
    options.format.width = width;
    options.format.height = height;
    options
}

/// A run of frames from one shot, with its ground truth and caption.
#[derive(Debug, Clone)]
pub struct Clip {
    /// The story it comes from.
    pub story: String,
    /// 0-based shot index in that story.
    pub shot: usize,
    /// The shot's caption.
    pub caption: String,
    /// The frames, 1 + 4k of them.
    pub frames: Vec<RgbFrame>,
    /// Ground truth per frame.
    pub truth: Vec<FrameTruth>,
}

/// Where training clips come from.
pub trait ClipSource: Send + Sync {
    /// The clip for `index`; the same index always gives the same clip.
    fn clip(&self, index: u64) -> Result<Clip>;

    /// One line saying what the source is, for logs and model cards.
    fn describe(&self) -> String;
}

/// Clips of `batch` consecutive indices starting at `step * batch`, rendered in parallel.
pub fn batch(source: &dyn ClipSource, step: u64, batch: usize) -> Result<Vec<Clip>> {
    let first =
        step.checked_mul(batch as u64).ok_or_else(|| TrainError::out_of_range("step", step, "a smaller step"))?;
    (0..batch as u64).into_par_iter().map(|i| source.clip(first + i)).collect()
}

fn check_clip_frames(clip_frames: usize) -> Result<()> {
    if clip_frames == 0 || clip_frames % 4 != 1 {
        return Err(TrainError::out_of_range("clip frames", clip_frames, "1 + 4k frames (1, 5, 9, 13, 17, ...)"));
    }
    Ok(())
}

/// How long a source's clips are, for its description.
fn clip_length(whole_shots: bool, clip_frames: usize) -> String {
    if whole_shots {
        "whole shots".into()
    } else {
        format!("clips of {clip_frames} frames")
    }
}

/// The start of a `len`-frame window inside a `total`-frame shot, drawn from `rng`.
fn window_start(total: usize, len: usize, rng: &mut WorldRng) -> usize {
    rng.range(0, total.saturating_sub(len))
}

/// Clips rendered on the fly from stories with seeds `first_seed .. first_seed + stories`.
#[derive(Debug, Clone)]
pub struct RenderedClips {
    options: StoryOptions,
    first_seed: u64,
    stories: u64,
    clip_frames: usize,
    whole_shots: bool,
}

/// Refuses an empty seed range, one that overflows, and one that touches the held-out
/// benchmark's seeds (which are never trained on).
pub fn check_training_seeds(first_seed: u64, stories: u64) -> Result<()> {
    if stories == 0 {
        return Err(TrainError::out_of_range("stories", 0, "at least 1"));
    }
    let last = first_seed
        .checked_add(stories - 1)
        .ok_or_else(|| TrainError::out_of_range("seed range", first_seed, "a range that fits in u64"))?;
    let bench = storyreel_world::BENCHMARK_SEED_BASE;
    let bench_last = bench + storyreel_world::BENCHMARK_STORIES as u64 - 1;
    if is_benchmark_seed(first_seed) || is_benchmark_seed(last) || (first_seed < bench && last > bench_last) {
        return Err(TrainError::out_of_range(
            "seed range",
            format!("{first_seed}..={last}"),
            format!("seeds outside the held-out benchmark's {bench}..={bench_last}"),
        ));
    }
    Ok(())
}

impl RenderedClips {
    /// A source over `stories` seeds; refuses seed ranges that touch the held-out benchmark and
    /// clips longer than the shortest shot.
    pub fn new(options: StoryOptions, first_seed: u64, stories: u64, clip_frames: usize) -> Result<Self> {
        options.validate()?;
        check_clip_frames(clip_frames)?;
        check_training_seeds(first_seed, stories)?;
        if clip_frames > options.min_shot_frames {
            return Err(TrainError::out_of_range(
                "clip frames",
                clip_frames,
                format!("at most the shortest shot ({} frames)", options.min_shot_frames),
            ));
        }
        Ok(Self { options, first_seed, stories, clip_frames, whole_shots: false })
    }

    /// The same source giving whole shots (each as long as its shot) instead of windows.
    pub fn whole_shots(mut self) -> Self {
        self.whole_shots = true;
        self
    }
}

impl ClipSource for RenderedClips {
    fn clip(&self, index: u64) -> Result<Clip> {
        let mut rng = WorldRng::derived(self.first_seed ^ 0x636c_6970, index);
        let seed = self.first_seed + mix64(index) % self.stories;
        let story = generate_story(seed, &self.options)?;
        let shot = rng.range(0, story.shots.len() - 1);
        let spec = &story.shots[shot];
        let (frames, truth) = render_shot(&spec.world, shot, spec.frames, story.format)?;
        let (start, end) = if self.whole_shots {
            (0, frames.len())
        } else {
            let start = window_start(frames.len(), self.clip_frames, &mut rng);
            (start, start + self.clip_frames)
        };
        Ok(Clip {
            story: story.id.clone(),
            shot,
            caption: spec.caption.clone(),
            frames: frames[start..end].to_vec(),
            truth: truth[start..end].to_vec(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "rendered world stories, seeds {}..={}, {}x{} at {} fps, {}",
            self.first_seed,
            self.first_seed + self.stories - 1,
            self.options.format.width,
            self.options.format.height,
            self.options.format.fps,
            clip_length(self.whole_shots, self.clip_frames)
        )
    }
}

/// Clips read from a dataset folder written by `storyreel world generate`.
pub struct DatasetClips {
    dataset: WorldDataset,
    clip_frames: usize,
    whole_shots: bool,
}

impl DatasetClips {
    /// Opens `dir`; refuses the held-out benchmark, which is never trained on.
    pub fn open(dir: &Path, clip_frames: usize) -> Result<Self> {
        check_clip_frames(clip_frames)?;
        let dataset = WorldDataset::open(dir)?;
        if dataset.manifest().benchmark {
            return Err(TrainError::File(format!(
                "{} is the held-out benchmark; it is never used for training",
                dir.display()
            )));
        }
        if dataset.is_empty() {
            return Err(TrainError::File(format!("{}: the dataset has no stories", dir.display())));
        }
        Ok(Self { dataset, clip_frames, whole_shots: false })
    }

    /// The same source giving whole shots (each as long as its shot) instead of windows.
    pub fn whole_shots(mut self) -> Self {
        self.whole_shots = true;
        self
    }
}

impl ClipSource for DatasetClips {
    fn clip(&self, index: u64) -> Result<Clip> {
        let mut rng = WorldRng::derived(0x6461_7461, index);
        let i = (mix64(index) % self.dataset.len() as u64) as usize;
        let story = self.dataset.story(i)?;
        let shot = rng.range(0, story.shots.len() - 1);
        let (a, b) = story.shot_ranges()[shot];
        if !self.whole_shots && b - a < self.clip_frames {
            return Err(TrainError::out_of_range(
                format!("clip frames (story {}, shot {} has {} frames)", story.id, shot + 1, b - a),
                self.clip_frames,
                "at most the shot's length",
            ));
        }
        let frames = self.dataset.frames(i)?;
        let truth = self.dataset.truth(i)?;
        if frames.len() != story.total_frames() || truth.len() != frames.len() {
            return Err(TrainError::File(format!(
                "{}: story {} has {} frames but its video has {} and its truth {}",
                self.dataset.dir().display(),
                story.id,
                story.total_frames(),
                frames.len(),
                truth.len()
            )));
        }
        let (start, end) = if self.whole_shots {
            (a, b)
        } else {
            let start = a + window_start(b - a, self.clip_frames, &mut rng);
            (start, start + self.clip_frames)
        };
        Ok(Clip {
            story: story.id.clone(),
            shot,
            caption: story.shots[shot].caption.clone(),
            frames: frames[start..end].to_vec(),
            truth: truth[start..end].to_vec(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "dataset {} ({} stories), {}",
            self.dataset.dir().display(),
            self.dataset.len(),
            clip_length(self.whole_shots, self.clip_frames)
        )
    }
}

/// Frames as the VAE takes them: `[F, 3, H, W]` in [−1, 1].
pub fn frames_to_tensor(frames: &[RgbFrame], device: &Device) -> Result<Tensor> {
    if frames.is_empty() {
        return Err(TrainError::out_of_range("frames", 0, "at least 1"));
    }
    Ok(storyreel_engine::pixels::from_rgb_frames(frames, device)?)
}

/// `[F, 3, H, W]` values in [−1, 1] back to frames (clamped), for previews and evaluation.
pub fn tensor_to_frames(t: &Tensor) -> Result<Vec<RgbFrame>> {
    let (f, c, h, w) = t.dims4()?;
    if c != 3 {
        return Err(TrainError::out_of_range("channels", c, "3 (RGB)"));
    }
    let values = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w;
    (0..f)
        .map(|i| {
            let base = i * 3 * plane;
            let mut data = vec![0u8; plane * 3];
            for p in 0..plane {
                for k in 0..3 {
                    let v = values[base + k * plane + p];
                    data[p * 3 + k] = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                }
            }
            RgbFrame::new(w as u32, h as u32, data).map_err(|e| TrainError::File(e.to_string()))
        })
        .collect()
}

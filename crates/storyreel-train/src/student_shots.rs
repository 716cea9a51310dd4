//! Shots a student generates, kept as the latents it made and the frames its VAE decodes them
//! to: the data a decoder for that student learns from. A decoder trained only on encoder
//! latents meets the student's latents as something new; these pairs show it what it will
//! actually decode.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use storyreel_engine::context::policy_by_name;
use storyreel_engine::{generate_story, ModelKind, ShotRequest, StoryEvents, StoryModel, StoryOptions};
use storyreel_nn::codec::{DecodeStream, VideoCodec};

use crate::data::{check_training_seeds, story_options};
use crate::error::{Result, TrainError};
use crate::log::Progress;

/// Which student's shots to generate, and how many (`student` in a tiny-decoder config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudentShots {
    /// The student's model folder; its VAE decodes the targets, so it should be the VAE the
    /// decoder is trained for.
    pub model: PathBuf,
    /// Training stories it generates (every shot of each joins the pool).
    pub stories: u64,
    /// Seed of the first story (the held-out ones follow the training ones).
    pub first_seed: u64,
    /// Stories after the training ones, generated for held-out scoring only.
    pub held_out_stories: u64,
}

impl Default for StudentShots {
    fn default() -> Self {
        Self {
            model: PathBuf::from("assets/models/toy-student"),
            stories: 60,
            first_seed: 500_000,
            held_out_stories: 4,
        }
    }
}

/// One generated shot: the student's latents `[T, z, h, w]` and its VAE's frames
/// `[4T − 3, 3, H, W]` in [−1, 1].
pub struct StudentShot {
    /// The latents as the student made them (normalised).
    pub latents: Tensor,
    /// The VAE decoder's frames for them, clamped to [−1, 1].
    pub frames: Tensor,
}

/// A codec that decodes with an inner one and keeps every latent chunk it is given, one list
/// per stream (one stream per shot).
struct RecordingCodec {
    inner: Arc<dyn VideoCodec>,
    streams: Arc<Mutex<Vec<Vec<Tensor>>>>,
}

struct RecordingStream {
    inner: Box<dyn DecodeStream>,
    index: usize,
    streams: Arc<Mutex<Vec<Vec<Tensor>>>>,
}

impl DecodeStream for RecordingStream {
    fn push(&mut self, latents: &Tensor) -> storyreel_nn::error::Result<Tensor> {
        if let Ok(mut s) = self.streams.lock() {
            s[self.index].push(latents.clone());
        }
        self.inner.push(latents)
    }

    fn latents_seen(&self) -> usize {
        self.inner.latents_seen()
    }

    fn cache_bytes(&self) -> usize {
        self.inner.cache_bytes()
    }
}

impl VideoCodec for RecordingCodec {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn latent_channels(&self) -> usize {
        self.inner.latent_channels()
    }

    fn spatial_scale(&self) -> usize {
        self.inner.spatial_scale()
    }

    fn decode_stream(self: Arc<Self>) -> Box<dyn DecodeStream> {
        let index = match self.streams.lock() {
            Ok(mut s) => {
                s.push(Vec::new());
                s.len() - 1
            }
            Err(_) => 0,
        };
        Box::new(RecordingStream { inner: self.inner.clone().decode_stream(), index, streams: self.streams.clone() })
    }

    fn encode(&self, frames: &Tensor) -> storyreel_nn::error::Result<Tensor> {
        self.inner.encode(frames)
    }
}

/// Generates every shot of the stories with seeds `first .. first + count` with `model` (its
/// card's sampling and context policy, as `storyreel generate` runs it) and returns each shot's
/// latents and VAE frames.
pub fn generate_student_shots(model: &StoryModel, first: u64, count: u64, progress: bool) -> Result<Vec<StudentShot>> {
    if model.card.kind != ModelKind::Student {
        return Err(TrainError::File(format!("student {}: the card is not a student's", model.dir.display())));
    }
    check_training_seeds(first, count)?;
    let card = &model.card;
    let options = story_options(card.width, card.height);
    let policy = card.default_context_policy();
    let bar = Progress::new(count, 0, progress);
    let mut shots = Vec::new();
    for i in 0..count {
        let seed = first + i;
        let story = storyreel_world::generate_story(seed, &options)?;
        let requests: Vec<ShotRequest> =
            story.shots.iter().map(|s| ShotRequest { caption: s.caption.clone(), frames: s.frames }).collect();
        let memory = policy_by_name(policy, card.context_frames)
            .ok_or_else(|| TrainError::File(format!("no context policy named {policy}")))?;
        let streams = Arc::new(Mutex::new(Vec::new()));
        let vae: Arc<dyn VideoCodec> = model.vae.clone();
        let recorder: Arc<dyn VideoCodec> = Arc::new(RecordingCodec { inner: vae, streams: streams.clone() });
        let sampler = card.sampler.sampler()?;
        let story_options = StoryOptions { seed, memory, sampler, decoder: Some(recorder) };
        let mut frames = Vec::new();
        let events = StoryEvents {
            on_frames: &mut |_, _| Ok(()),
            on_shot: &mut |shot| {
                frames.push(shot.frames.clone());
                Ok(())
            },
            on_progress: &mut |_, _, _| {},
            cancelled: &|| false,
        };
        generate_story(model, &story.global_caption, &requests, story_options, events)?;
        let recorded = std::mem::take(
            &mut *streams.lock().map_err(|_| TrainError::File("the recorded latents' lock is poisoned".into()))?,
        );
        if recorded.len() != frames.len() {
            return Err(TrainError::File(format!(
                "story {seed}: {} shots decoded but {} finished",
                recorded.len(),
                frames.len()
            )));
        }
        for (chunks, frames) in recorded.into_iter().zip(frames) {
            let latents = Tensor::cat(&chunks, 0)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let (t, f) = (latents.dim(0)?, frames.dim(0)?);
            if f != 4 * t - 3 {
                return Err(TrainError::File(format!(
                    "story {seed}: a shot of {f} frames was recorded with {t} latent frames"
                )));
            }
            shots.push(StudentShot { latents, frames: frames.to_dtype(DType::F32)? });
        }
        bar.update(i + 1, f64::NAN);
    }
    bar.finish();
    Ok(shots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped_student() -> StoryModel {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/toy-student");
        StoryModel::load(&dir, &Device::Cpu).unwrap()
    }

    /// Each kept shot's latents are what the student made: the VAE decodes them, afresh, to the
    /// frames the story showed; a story gives one pair per shot.
    #[test]
    fn recorded_latents_decode_to_the_shown_frames() {
        let model = shipped_student();
        let shots = generate_student_shots(&model, 700_000, 1, false).unwrap();
        let story = storyreel_world::generate_story(700_000, &story_options(64, 64)).unwrap();
        assert_eq!(shots.len(), story.shots.len());
        for (shot, spec) in shots.iter().zip(&story.shots) {
            assert_eq!(shot.frames.dim(0).unwrap(), spec.frames);
            assert_eq!(shot.latents.dim(0).unwrap(), (spec.frames - 1) / 4 + 1);
            let again = model.vae.clone().decode(&shot.latents).unwrap().clamp(-1f32, 1f32).unwrap();
            let d = (again - &shot.frames).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "decoded again, the frames differ by {d}");
        }
        // Different shots, different latents.
        let d = (shots[0].latents.narrow(0, 0, 1).unwrap() - shots[1].latents.narrow(0, 0, 1).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d > 1e-3);
    }

    #[test]
    fn a_teacher_and_benchmark_seeds_are_refused() {
        let model = shipped_student();
        let e = generate_student_shots(&model, storyreel_world::BENCHMARK_SEED_BASE, 2, false).err().unwrap();
        assert!(e.to_string().contains("benchmark"), "{e}");
        let teacher = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/toy-teacher");
        let teacher = StoryModel::load(&teacher, &Device::Cpu).unwrap();
        let e = generate_student_shots(&teacher, 0, 1, false).err().unwrap();
        assert!(e.to_string().contains("not a student"), "{e}");
    }
}

//! storyreel-engine: flow-matching schedules and samplers, context-memory policies and the
//! streaming multi-shot [`Session`] that turns per-shot caption embeddings into latent chunks.

pub mod context;
pub mod context_channels;
pub mod error;
pub mod noise;
pub mod pixels;
pub mod prompt;
pub mod sampler;
pub mod schedule;
pub mod session;
pub mod shot_plan;
pub mod story_model;
pub mod story_stream;
pub mod teacher;
pub mod teacher_story;

pub use context::{CaptionMatch, ContextMemory, ContextPick, ContextQuery, DynamicSampling, NoContext};
pub use error::{EngineError, Result};
pub use noise::{GivenNoise, NoiseSource, SeededNoise};
pub use pixels::PixelHistory;
pub use sampler::{EulerSampler, FewStepSampler, FlowBranch};
pub use schedule::FlowSchedule;
pub use session::{ContextCodec, GivenContext, LatentChunk, LatentHistory, Session, SessionConfig, ShotRun};
pub use shot_plan::ShotPlan;
pub use story_model::{ModelCard, ModelKind, StoryModel, StudentSampling, TeacherSampling};
pub use story_stream::{generate_story, shot_progress_units, ShotEvents, StoryEvents, StoryOptions, StoryStream};
pub use teacher_story::{GeneratedShot, ShotRequest, StoryTimes};

//! The synthetic story world (ARCHITECTURE.md §5): a seeded procedural renderer of multi-shot
//! stories with captions that refer back and exact per-frame ground truth, the dataset layer
//! (ours and ShotStream's CSV + caption JSON), and shot-boundary detection.

pub mod benchmark;
pub mod caption;
pub mod catalog;
pub mod dataset;
pub mod error;
pub mod render;
pub mod rng;
pub mod story;

pub use error::{Result, WorldError};
pub mod detect;
pub mod shotstream;

pub use benchmark::{
    benchmark_options, benchmark_spec, benchmark_stories, is_benchmark_seed, BENCHMARK_SEED_BASE, BENCHMARK_STORIES,
};
pub use caption::{caption_vocabulary, parse_caption, CaptionFacts};
pub use catalog::{CharacterId, Framing, Lighting, Motion, Place, CHARACTERS};
pub use dataset::{generate_dataset, DatasetSpec, Manifest, ManifestEntry, ManifestTotals, WorldDataset};
pub use render::{render_shot, render_story, CharacterTruth, FrameTruth, RenderedStory};
pub use story::{generate_story, ShotSpec, Story, StoryOptions, StoryPattern, StoryShot, VideoFormat};

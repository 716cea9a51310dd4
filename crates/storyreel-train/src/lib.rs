//! The training stack (ARCHITECTURE.md §2): optimisation with everything the ShotStream recipe
//! needs (AdamW, clipping, warm-up and schedules, EMA, accumulation, freezing by name), exact
//! checkpoint/resume, JSONL logs, and batches drawn from the story world.

pub mod data;
pub mod error;
pub mod vae;

pub use error::{Result, TrainError};

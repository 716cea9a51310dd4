//! The synthetic story world (ARCHITECTURE.md §5): a seeded procedural renderer of multi-shot
//! stories with captions that refer back and exact per-frame ground truth, the dataset layer
//! (ours and ShotStream's CSV + caption JSON), and shot-boundary detection.

pub mod error;

pub use error::{Result, WorldError};
pub mod detect;
pub mod shotstream;

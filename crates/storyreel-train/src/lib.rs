//! The training stack (ARCHITECTURE.md §2): optimisation with everything the ShotStream recipe
//! needs (AdamW, clipping, warm-up and schedules, EMA, accumulation, freezing by name), exact
//! checkpoint/resume, JSONL logs, and batches drawn from the story world.

pub mod caption_check;
pub mod context_check;
pub mod data;
pub mod denoise_check;
pub mod ema;
pub mod error;
pub mod held_out;
pub mod log;
pub mod look_ceiling;
pub mod lora;
pub mod model_files;
pub mod ode_pairs;
pub mod optim;
pub mod params;
pub mod schedule;
pub mod stage_config;
pub mod stage_dmd;
pub mod stage_ode_init;
pub mod stage_teacher;
pub mod stage_tiny_decoder;
pub mod stage_vae;
pub mod state;
pub mod student_shots;
pub mod trainer;
pub mod vae;

pub use ema::{Ema, EmaConfig};
pub use error::{Result, TrainError};
pub use log::{JsonlLog, Progress, StepRecord};
pub use optim::{clip_grad_norm, grad_norm, AdamW, AdamWConfig, GradAccumulator};
pub use params::{NamedParams, Param};
pub use schedule::{LrSchedule, ScheduleKind};
pub use state::{latest_checkpoint, TrainState};
pub use trainer::{StepReport, TrainConfig, Trainer};

//! Metrics for a generated multi-shot video judged against its story: shot-cut accuracy,
//! intra- and inter-shot consistency, prompt adherence, dynamic degree and a distribution-level
//! quality score, plus the reports `storyreel eval` writes.

pub mod error;

pub use error::{EvalError, Result};
pub mod consistency;
pub mod corrupt;
pub mod evaluate;
pub mod features;
pub mod fidelity;
pub mod frechet;
pub mod look_agreement;
pub mod motion;
pub mod paired;
pub mod probe;
pub mod report;
pub mod sca;

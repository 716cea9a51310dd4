//! The crate's one error type.

/// Everything that can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting is outside what the trainer supports.
    #[error("{what} = {value} is out of range: expected {expected}")]
    OutOfRange {
        /// The setting's name.
        what: String,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A checkpoint, config or log file is missing or malformed; the message names it.
    #[error("{0}")]
    File(String),
    /// Tensor maths failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The story world failed.
    #[error(transparent)]
    World(#[from] storyreel_world::WorldError),
    /// Model code failed.
    #[error(transparent)]
    Nn(#[from] storyreel_nn::NnError),
    /// Sampling or conditioning code shared with inference failed.
    #[error(transparent)]
    Engine(#[from] storyreel_engine::EngineError),
}

impl TrainError {
    /// An [`TrainError::OutOfRange`] from anything printable.
    pub fn out_of_range(what: impl Into<String>, value: impl ToString, expected: impl Into<String>) -> Self {
        Self::OutOfRange { what: what.into(), value: value.to_string(), expected: expected.into() }
    }
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, TrainError>;

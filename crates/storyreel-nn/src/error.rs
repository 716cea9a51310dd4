//! Typed errors of the neural-network layer.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model configuration is malformed or inconsistent.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A checkpoint tensor has a different shape than the config requires.
    #[error("tensor `{name}` has shape {found:?} in the checkpoint but the model expects {expected:?}")]
    ShapeMismatch {
        /// Canonical (Wan-layout) tensor name.
        name: String,
        /// Shape the model config requires.
        expected: Vec<usize>,
        /// Shape found in the checkpoint.
        found: Vec<usize>,
    },
    /// A tensor the model needs is absent from the checkpoint.
    #[error("tensor `{name}` (shape {expected:?}) is missing from the checkpoint")]
    MissingTensor {
        /// Canonical (Wan-layout) tensor name.
        name: String,
        /// Shape the model config requires.
        expected: Vec<usize>,
    },
    /// The checkpoint holds tensors the model does not know.
    #[error("the checkpoint has {count} unexpected tensor(s), e.g. `{first}` (shape {shape:?})")]
    UnexpectedTensors {
        /// How many unexpected tensors there are.
        count: usize,
        /// One of them, for the message.
        first: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A checkpoint file is malformed (truncated, wrong format, bad header...).
    #[error("cannot read checkpoint {path}: {reason}")]
    BadCheckpoint {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Inputs to a forward pass have inconsistent shapes or values.
    #[error("invalid input: {0}")]
    Input(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, NnError>;

impl NnError {
    /// Wraps an io error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NnError::Io { path: path.into(), source }
    }
}

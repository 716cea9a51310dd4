//! Typed errors of the engine.

use storyreel_nn::NnError;

/// Everything that can go wrong while sampling or running a session.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model layer failed.
    #[error(transparent)]
    Nn(#[from] NnError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The caller gave inconsistent inputs.
    #[error("invalid input: {0}")]
    Input(String),
    /// The session configuration is inconsistent.
    #[error("invalid session config: {0}")]
    Config(String),
    /// Writing generated frames out failed (file, stream or sink).
    #[error("output failed: {0}")]
    Output(String),
    /// Generation was cancelled.
    #[error("generation cancelled")]
    Cancelled,
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, EngineError>;

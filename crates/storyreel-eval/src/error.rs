//! The crate's one error type.

/// Everything that can go wrong evaluating a generated story.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The inputs do not fit together (frame counts, sizes, shot counts).
    #[error("{0}")]
    Mismatch(String),
    /// A setting or input is outside what a metric accepts.
    #[error("{what} = {value} is out of range: expected {expected}")]
    OutOfRange {
        /// The setting's name.
        what: String,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// The story world failed (reading stories, rendering references).
    #[error(transparent)]
    World(#[from] storyreel_world::WorldError),
    /// Reading or writing frames failed.
    #[error(transparent)]
    Media(#[from] storyreel_media::MediaError),
}

impl EvalError {
    /// An [`EvalError::OutOfRange`] from anything printable.
    pub fn out_of_range(what: impl Into<String>, value: impl ToString, expected: impl Into<String>) -> Self {
        Self::OutOfRange { what: what.into(), value: value.to_string(), expected: expected.into() }
    }
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, EvalError>;

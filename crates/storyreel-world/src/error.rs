//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong rendering stories, writing datasets and reading them back.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// A setting is outside what the world supports.
    #[error("{what} = {value} is out of range: expected {expected}")]
    OutOfRange {
        /// The setting's name.
        what: String,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// A dataset file is malformed; `location` names the file and line or field.
    #[error("{location}: {message}")]
    Malformed {
        /// File and line, or file and field.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// Encoding or decoding video failed.
    #[error(transparent)]
    Media(#[from] storyreel_media::MediaError),
}

impl WorldError {
    /// An [`WorldError::OutOfRange`] from anything printable.
    pub fn out_of_range(what: impl Into<String>, value: impl ToString, expected: impl Into<String>) -> Self {
        Self::OutOfRange { what: what.into(), value: value.to_string(), expected: expected.into() }
    }

    /// A [`WorldError::Malformed`] at `location`.
    pub fn malformed(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Malformed { location: location.into(), message: message.into() }
    }

    /// An [`WorldError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, WorldError>;

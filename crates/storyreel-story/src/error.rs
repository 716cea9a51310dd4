//! The crate's one error type: every message names the input (a file or `<stdin>`), where in it
//! the fault is (a line, a line and column, or a field path such as `shots[2].caption`), and what
//! is wrong, because the person reading it has to fix a hand-written file.

use std::fmt;

/// Where in an input a fault lies; any part may be unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column (characters for text formats, bytes for JSON, as serde_json counts).
    pub column: Option<usize>,
    /// Field path in the document, e.g. `shots[2].caption`.
    pub field: Option<String>,
}

impl Location {
    /// Nowhere in particular (the whole input).
    pub fn whole() -> Self {
        Self::default()
    }

    /// A 1-based line.
    pub fn line(line: usize) -> Self {
        Self { line: Some(line), ..Self::default() }
    }

    /// A field path.
    pub fn field(path: impl Into<String>) -> Self {
        Self { field: Some(path.into()), ..Self::default() }
    }

    /// A 1-based line and column.
    pub fn position(line: usize, column: usize) -> Self {
        Self { line: Some(line), column: Some(column), field: None }
    }

    /// The same place with a field path added.
    pub fn with_field(mut self, path: impl Into<String>) -> Self {
        self.field = Some(path.into());
        self
    }

    fn is_empty(&self) -> bool {
        self.line.is_none() && self.field.is_none()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match (self.line, self.column) {
            (Some(l), Some(c)) => parts.push(format!("line {l}, column {c}")),
            (Some(l), None) => parts.push(format!("line {l}")),
            _ => {}
        }
        if let Some(field) = &self.field {
            parts.push(field.clone());
        }
        f.write_str(&parts.join(": "))
    }
}

/// Why a story could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoryError {
    /// The input could not be read at all.
    #[error("{origin}: cannot read: {source}")]
    Read {
        /// The file.
        origin: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The input was read but is not a valid story.
    #[error("{origin}: {}{message}", located(.location))]
    Invalid {
        /// The file, or `<stdin>`.
        origin: String,
        /// Where in it.
        location: Location,
        /// What is wrong.
        message: String,
    },
    /// A row of an index file names a caption file that is not a valid story.
    #[error("{origin}: line {line} (row {row}): {inner}")]
    Row {
        /// The index file.
        origin: String,
        /// 1-based line of the row in the index file.
        line: usize,
        /// 1-based row number, not counting the header.
        row: usize,
        /// What is wrong with the file the row names (its own origin included).
        inner: Box<StoryError>,
    },
}

fn located(location: &Location) -> String {
    if location.is_empty() {
        String::new()
    } else {
        format!("{location}: ")
    }
}

impl StoryError {
    /// A [`StoryError::Invalid`].
    pub fn invalid(origin: &str, location: Location, message: impl Into<String>) -> Self {
        Self::Invalid { origin: origin.to_string(), location, message: message.into() }
    }

    /// A [`StoryError::Invalid`] at a 1-based line.
    pub fn at_line(origin: &str, line: usize, message: impl Into<String>) -> Self {
        Self::invalid(origin, Location::line(line), message)
    }

    /// A [`StoryError::Invalid`] at a field path.
    pub fn at_field(origin: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid(origin, Location::field(field), message)
    }

    /// The input the error is about (file name or `<stdin>`).
    pub fn origin(&self) -> &str {
        match self {
            Self::Read { origin, .. } | Self::Invalid { origin, .. } | Self::Row { origin, .. } => origin,
        }
    }

    /// The 1-based line at fault, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } => None,
            Self::Invalid { location, .. } => location.line,
            Self::Row { line, .. } => Some(*line),
        }
    }

    /// The field path at fault, when known (for a row error, the field in the file the row names).
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Read { .. } => None,
            Self::Invalid { location, .. } => location.field.as_deref(),
            Self::Row { inner, .. } => inner.field(),
        }
    }
}

/// Turns a serde_json error seen through serde_path_to_error into a located [`StoryError`];
/// `first_line` is the file line the JSON document starts on (1 unless it is one JSONL line).
pub(crate) fn from_json(
    origin: &str,
    first_line: usize,
    err: serde_path_to_error::Error<serde_json::Error>,
) -> StoryError {
    let full = err.path().to_string();
    // "?" marks a segment serde_path_to_error could not name (e.g. a syntax error after a
    // value); the known prefix is still worth showing.
    let path = match full.find('?') {
        Some(at) => full[..at].trim_end_matches('.'),
        None => full.as_str(),
    };
    let inner = err.into_inner();
    let mut location = json_position(first_line, &inner);
    // "." is serde_path_to_error's name for the document root, which says nothing useful.
    if path != "." && !path.is_empty() {
        location.field = Some(path.to_string());
    }
    StoryError::invalid(origin, location, json_message(&inner))
}

/// A serde_json error without a field path (e.g. from parsing into a `Value`).
pub(crate) fn from_plain_json(origin: &str, first_line: usize, err: &serde_json::Error) -> StoryError {
    StoryError::invalid(origin, json_position(first_line, err), json_message(err))
}

fn json_position(first_line: usize, err: &serde_json::Error) -> Location {
    // serde_json reports line 0 for errors that are not about a position (e.g. from a Value).
    if err.line() == 0 {
        return Location::whole();
    }
    Location::position(first_line.saturating_add(err.line() - 1), err.column())
}

/// serde_json's message without its trailing " at line L column C", which the location already says.
fn json_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    match text.strip_suffix(&suffix) {
        Some(message) => message.to_string(),
        None => text,
    }
}

/// A value quoted for a message, cut short so that a megabyte of bad input does not become a
/// megabyte of error text.
pub(crate) fn preview(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_some() {
        format!("{:?}…", head)
    } else {
        format!("{head:?}")
    }
}

//! storyreel-story: the story a person writes, in our native JSON or in the prompt formats of
//! peer systems (ShotStream, LongLive, HoloCine, StoryMem, plain text), parsed into one
//! [`Story`] type with errors that name the line or field at fault.
//!
//! This crate has no tensor dependencies so that its parsers can be fuzzed on their own
//! (`fuzz/` at the repository root). `docs/STORY_FORMATS.md` describes every format.
//!
//! Parsing checks structure only; [`validate`] checks a story against [`Limits`], so that every
//! format meets the same rules.

mod error;
mod format;
mod frames;
pub mod holocine;
mod json;
pub mod longlive;
pub mod native;
mod read;
pub mod shotstream_csv;
pub mod shotstream_json;
pub mod storymem;
pub mod text;
mod validate;

pub use error::{Location, StoryError};
pub use format::{detect_format, StoryFormat};
pub use native::NATIVE_VERSION;
pub use read::{read_stories, MAX_FILE_BYTES};
pub use shotstream_csv::CaptionLoader;
pub use validate::{validate, Limits};

/// One story: a global caption and its shots, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Story {
    /// An identifier (the file stem, a dataset id), when the input names one.
    pub id: Option<String>,
    /// The seed of the story's noise, when the input gives one.
    pub seed: Option<u64>,
    /// The caption every shot shares (may be empty).
    pub global_caption: String,
    /// The shots, in order (never empty after parsing).
    pub shots: Vec<Shot>,
}

/// One shot of a story.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Shot {
    /// What happens in the shot.
    pub caption: String,
    /// Pixel frames (4k+1), when the input gives a length.
    pub frames: Option<usize>,
}

/// Parses every story in `text`, read from `origin` (a file name or `<stdin>`, used in errors).
///
/// Most formats hold one story; LongLive JSONL holds one per line and a ShotStream index one per
/// row, whose caption files are opened relative to the current directory ([`read_stories`]
/// resolves them against the index's folder instead). A leading byte-order mark is ignored.
pub fn parse_stories(text: &str, format: StoryFormat, origin: &str) -> Result<Vec<Story>, StoryError> {
    parse_stories_with(text, format, origin, &mut read::load_from_cwd)
}

/// [`parse_stories`] with the ShotStream index's caption files read by `load` (the other
/// formats never call it); the fuzzer passes one that never touches the disk.
pub fn parse_stories_with(
    text: &str,
    format: StoryFormat,
    origin: &str,
    load: &mut CaptionLoader<'_>,
) -> Result<Vec<Story>, StoryError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match format {
        StoryFormat::Native => native::parse(text, origin).map(|s| vec![s]),
        StoryFormat::ShotStreamJson => shotstream_json::parse(text, origin).map(|s| vec![s]),
        StoryFormat::ShotStreamCsv => shotstream_csv::parse_index(text, origin, load),
        StoryFormat::LongLiveJsonl => longlive::parse(text, origin),
        StoryFormat::HoloCine => holocine::parse(text, origin).map(|s| vec![s]),
        StoryFormat::StoryMem => storymem::parse(text, origin).map(|s| vec![s]),
        StoryFormat::PlainText => text::parse(text, origin).map(|s| vec![s]),
    }
}

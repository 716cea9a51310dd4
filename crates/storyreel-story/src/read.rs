//! Story files on disk: bounded reading, UTF-8 checking with the line at fault, the ShotStream
//! index's caption files, and ids for stories that do not name their own.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::StoryError;
use crate::format::{detect_format, StoryFormat};
use crate::{parse_stories_with, Story};

/// Largest story file read; far beyond any real script, small enough that a wrong path (a disk
/// image, a device) fails fast instead of filling memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Reads every story in the file at `path`, in `format` or the one [`detect_format`] picks.
///
/// A ShotStream index's `json_path` is looked up relative to the index's folder first, then
/// relative to the current directory (ShotStream's own demo index names its files relative to the
/// repository root it is run from). Stories without an id get the file stem, or `stem-N` (N from 1)
/// when the file holds several.
pub fn read_stories(path: &Path, format: Option<StoryFormat>) -> Result<Vec<Story>, StoryError> {
    let origin = path.display().to_string();
    let text = read_text(path)?;
    let format = format.unwrap_or_else(|| detect_format(&origin, &text));
    let base = path.parent().map(Path::to_path_buf);
    let mut load = move |json_path: &str| load_caption_file(base.as_deref(), json_path);
    let mut stories = parse_stories_with(&text, format, &origin, &mut load)?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "story".to_string());
    let several = stories.len() > 1;
    for (i, story) in stories.iter_mut().enumerate() {
        if story.id.is_none() {
            story.id = Some(if several { format!("{stem}-{}", i + 1) } else { stem.clone() });
        }
    }
    Ok(stories)
}

/// The whole file as UTF-8 text, refusing files over [`MAX_FILE_BYTES`] and naming the line of
/// the first byte that is not UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String, StoryError> {
    let origin = path.display().to_string();
    let read_err = |source| StoryError::Read { origin: origin.clone(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(StoryError::invalid(
            &origin,
            crate::error::Location::whole(),
            format!("the file is larger than {} MiB; a story script is text", MAX_FILE_BYTES >> 20),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..valid].iter().filter(|&&b| b == b'\n').count() + 1;
        let column = bytes[..valid].iter().rposition(|&b| b == b'\n').map_or(valid, |nl| valid - nl - 1) + 1;
        StoryError::invalid(
            &origin,
            crate::error::Location::position(line, column),
            format!("byte {valid} is not UTF-8 text; save the file as UTF-8"),
        )
    })
}

/// Finds and reads the caption JSON a ShotStream index row names.
fn load_caption_file(base: Option<&Path>, json_path: &str) -> Result<(String, String), StoryError> {
    let given = Path::new(json_path);
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(base) = base.filter(|_| given.is_relative()) {
        candidates.push(base.join(given));
    }
    if !candidates.iter().any(|c| c == given) {
        candidates.push(given.to_path_buf());
    }
    // Only regular files: a row naming a FIFO or a device must not block or stream forever.
    match candidates.iter().find(|c| c.is_file()) {
        Some(found) => Ok((found.display().to_string(), read_text(found)?)),
        None => {
            let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
            Err(StoryError::Read {
                origin: json_path.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no such caption file (looked for {})", tried.join(" and ")),
                ),
            })
        }
    }
}

/// The loader [`crate::parse_stories`] uses: `json_path` as given, relative to the current directory.
pub(crate) fn load_from_cwd(json_path: &str) -> Result<(String, String), StoryError> {
    load_caption_file(None, json_path)
}

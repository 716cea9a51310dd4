//! JSON decoding shared by the JSON formats: one document into a typed struct, with errors that
//! carry both the line and column and the field path, and trailing text rejected.

use serde::Deserialize;

use crate::error::{from_json, from_plain_json, Location, StoryError};

/// Decodes `text` (which starts on line `first_line` of `origin`), a JSON object, into `T`.
///
/// serde_json also fills a struct from an array, positionally; a story written as an array is a
/// mistake, not a shorthand, so the document must open with `{`.
pub(crate) fn decode<'de, T: Deserialize<'de>>(
    text: &'de str,
    origin: &str,
    first_line: usize,
) -> Result<T, StoryError> {
    let body = text.trim_start();
    if !body.starts_with('{') {
        let skipped = &text[..text.len() - body.len()];
        let line = first_line.saturating_add(skipped.matches('\n').count());
        let column = skipped.rsplit('\n').next().map_or(0, |tail| tail.chars().count()) + 1;
        let found = match body.chars().next() {
            Some(c) => format!("found {c:?}"),
            None => "found nothing".to_string(),
        };
        return Err(StoryError::invalid(
            origin,
            Location::position(line, column),
            format!("expected a JSON object ({{ … }}), {found}"),
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| from_json(origin, first_line, e))?;
    de.end().map_err(|e| from_plain_json(origin, first_line, &e))?;
    Ok(value)
}

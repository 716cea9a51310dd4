//! ShotStream's per-video caption JSON (`demo/testdata/json/01.json`): a flat object with
//! `global_caption` and `shot1` … `shotN`, 1-based and contiguous, every value a string.
//!
//! Any other key is an error: the format is flat, so a misspelt `shto3` would otherwise drop a
//! shot without a word. The file carries no lengths; the index CSV (`shotstream_csv`) supplies them.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{preview, StoryError};
use crate::format::is_shot_key;
use crate::json::decode;
use crate::{Shot, Story};

/// Parses one caption JSON into a story whose shots have no lengths.
pub fn parse(text: &str, origin: &str) -> Result<Story, StoryError> {
    let Entries(entries) = decode(text, origin, 1)?;
    let mut numbered: Vec<(u64, &str, &str)> = Vec::new();
    let mut global_caption = None;
    for (key, value) in &entries {
        if key == "global_caption" {
            let caption = value.as_str().ok_or_else(|| {
                StoryError::at_field(origin, key.clone(), format!("expected a caption string, found {}", kind(value)))
            })?;
            global_caption = Some(caption.to_string());
            continue;
        }
        let number = shot_number(key).ok_or_else(|| {
            StoryError::at_field(
                origin,
                key.clone(),
                format!(
                    "unknown key {}: a ShotStream caption file holds \"global_caption\" and \"shot1\", \"shot2\", …",
                    preview(key)
                ),
            )
        })?;
        let caption = value.as_str().ok_or_else(|| {
            StoryError::at_field(origin, key.clone(), format!("expected a caption string, found {}", kind(value)))
        })?;
        numbered.push((number, key, caption));
    }
    let global_caption = global_caption
        .ok_or_else(|| StoryError::at_field(origin, "global_caption", "missing: the caption every shot shares"))?;
    if numbered.is_empty() {
        return Err(StoryError::at_field(origin, "shot1", "missing: the file has no shot captions"));
    }
    numbered.sort_by_key(|(n, _, _)| *n);
    let mut shots = Vec::with_capacity(numbered.len());
    for (i, (number, key, caption)) in numbered.into_iter().enumerate() {
        let expected = i as u64 + 1;
        if number != expected {
            return Err(StoryError::at_field(
                origin,
                format!("shot{expected}"),
                format!("missing: shot keys must run shot1, shot2, … without a gap, but the next one is {key}"),
            ));
        }
        if caption.trim().is_empty() {
            return Err(StoryError::at_field(origin, key, "the caption is empty"));
        }
        shots.push(Shot { caption: caption.to_string(), frames: None });
    }
    Ok(Story { id: None, seed: None, global_caption, shots })
}

/// A JSON object's entries in file order, with a repeated key an error: serde_json's own map
/// keeps the last of two `shot2` keys and so would lose a caption without a word.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object with \"global_caption\" and \"shot1\", \"shot2\", …")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {}", preview(&key))));
            }
            let value: Value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Entries(entries))
    }
}

/// The N of a canonical `shotN` key (no sign, no leading zero, N ≥ 1).
fn shot_number(key: &str) -> Option<u64> {
    if !is_shot_key(key) {
        return None;
    }
    let digits = &key[4..];
    if digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// A JSON value's kind, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

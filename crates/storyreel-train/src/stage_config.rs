//! Reading a stage config: the file's keys are laid over the stage's own defaults, at every
//! depth, so a file that sets only `train.progress` keeps the stage's learning rate and schedule
//! (serde's per-struct defaults would reset the whole `train` table to the generic trainer's).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Result, TrainError};

/// Reads a `.toml` or `.json` stage config over `defaults`; unknown keys are errors naming the file.
pub fn read_over_defaults<T: Serialize + DeserializeOwned>(path: &Path, defaults: &T) -> Result<T> {
    let file_error = |e: &dyn std::fmt::Display| TrainError::File(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| file_error(&e))?;
    let given: Value = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| file_error(&e))?
    } else {
        serde_json::from_str(&text).map_err(|e| file_error(&e))?
    };
    if !given.is_object() {
        return Err(file_error(&"a stage config is a table of settings"));
    }
    let mut merged = serde_json::to_value(defaults).map_err(|e| file_error(&e))?;
    overlay(&mut merged, given);
    serde_json::from_value(merged).map_err(|e| file_error(&e))
}

/// Lays `top` over `base`: tables merge key by key, anything else replaces.
fn overlay(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => overlay(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, t) => *b = t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_tables_keep_the_defaults_they_do_not_set() {
        let mut base = serde_json::json!({"a": 1, "train": {"lr": 0.5, "progress": true}, "list": [1, 2]});
        overlay(&mut base, serde_json::json!({"train": {"progress": false}, "list": [3], "b": 2}));
        assert_eq!(base, serde_json::json!({"a": 1, "train": {"lr": 0.5, "progress": false}, "list": [3], "b": 2}));
    }
}

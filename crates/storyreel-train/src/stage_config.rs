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

/// The settings of a stage config that change what a run learns, as JSON: all of it but the
/// `ignored` keys (dotted paths such as `data.dataset`), which are the paths, cadences and card
/// defaults a resumed run may change, and the trainer's own table, which
/// [`crate::trainer::TrainConfig::hash`] covers. Kept in every checkpoint so that a resume under
/// other settings (say `data.crop`) is refused instead of silently training another recipe.
pub fn learning_settings<T: Serialize>(config: &T, ignored: &[&str]) -> Result<Value> {
    let mut value = serde_json::to_value(config).map_err(|e| TrainError::File(format!("stage settings: {e}")))?;
    for path in ignored {
        remove_path(&mut value, path);
    }
    Ok(value)
}

fn remove_path(value: &mut Value, path: &str) {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let Value::Object(map) = value else { return };
    match rest {
        None => {
            map.remove(head);
        }
        Some(rest) => {
            if let Some(inner) = map.get_mut(head) {
                remove_path(inner, rest);
            }
        }
    }
}

/// The settings that differ between `saved` and `now`, each as `path: saved → now` (a missing
/// one as `absent`), in key order.
pub fn changed_settings(saved: &Value, now: &Value) -> Vec<String> {
    let mut changes = Vec::new();
    diff_into("", Some(saved), Some(now), &mut changes);
    changes
}

fn diff_into(path: &str, saved: Option<&Value>, now: Option<&Value>, changes: &mut Vec<String>) {
    if let (Some(Value::Object(a)), Some(Value::Object(b))) = (saved, now) {
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for key in keys {
            let inner = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            diff_into(&inner, a.get(key), b.get(key), changes);
        }
        return;
    }
    if saved != now {
        let show = |v: Option<&Value>| v.map_or_else(|| "absent".to_string(), Value::to_string);
        let name = if path.is_empty() { "settings" } else { path };
        changes.push(format!("{name}: {} → {}", show(saved), show(now)));
    }
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

    #[test]
    fn learning_settings_drop_the_ignored_paths_only() {
        let config = serde_json::json!({"vae": "a/b", "data": {"dataset": "d", "crop": 32}, "steps": 5, "train": {}});
        let kept = learning_settings(&config, &["vae", "data.dataset", "train", "data.missing", "nothing"]).unwrap();
        assert_eq!(kept, serde_json::json!({"data": {"crop": 32}, "steps": 5}));
    }

    #[test]
    fn changed_settings_name_every_difference_by_path() {
        let saved = serde_json::json!({"data": {"crop": 32, "whole_shots": true}, "kl": 1e-6, "old": 1});
        let now = serde_json::json!({"data": {"crop": 48, "whole_shots": true}, "kl": 1e-6, "new": [1, 2]});
        assert_eq!(
            changed_settings(&saved, &now),
            vec!["data.crop: 32 → 48".to_string(), "new: absent → [1,2]".into(), "old: 1 → absent".into()]
        );
        assert!(changed_settings(&saved, &saved).is_empty());
    }
}

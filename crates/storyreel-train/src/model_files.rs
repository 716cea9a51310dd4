//! Writing the files of a trained model folder, shared by every stage.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use candle_nn::VarMap;
use storyreel_engine::story_model;
use storyreel_nn::checkpoint::save_safetensors;
use storyreel_nn::WanConfig;
use storyreel_world::rng::mix64;

use crate::error::{Result, TrainError};

/// Writes `text` to `path` atomically (a reader never sees half a file).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    storyreel_media::write_atomic(path, text.as_bytes())
        .map_err(|e| TrainError::File(format!("{}: {e}", path.display())))
}

/// Folds `bytes` into the running hash `h` (identifies weight files in resume keys).
pub fn fold_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    for chunk in bytes.chunks(8) {
        let mut v = [0u8; 8];
        v[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(v));
    }
    h
}

/// The model card's note on exported weights: which EMA they are, or nothing for the last step's.
pub fn ema_note(decay: Option<f64>) -> String {
    decay.map(|d| format!(", EMA weights (decay {d})")).unwrap_or_default()
}

/// Writes `dir/dit/` (model.safetensors + config.json) from the variables named `prefix.*`.
pub fn save_dit(varmap: &VarMap, prefix: &str, config: &WanConfig, dir: &Path) -> Result<()> {
    let prefix = format!("{prefix}.");
    let data = varmap.data().lock().map_err(|_| TrainError::File("variable map lock poisoned".into()))?;
    let tensors: HashMap<String, Tensor> = data
        .iter()
        .filter_map(|(name, var)| name.strip_prefix(&prefix).map(|n| (n.to_string(), var.as_tensor().detach())))
        .collect();
    drop(data);
    save_dit_tensors(&tensors, config, dir)
}

/// Writes `dir/dit/` (model.safetensors + config.json) from canonical DiT tensors.
pub fn save_dit_tensors(tensors: &HashMap<String, Tensor>, config: &WanConfig, dir: &Path) -> Result<()> {
    let dit_dir = dir.join(story_model::DIT_DIR);
    std::fs::create_dir_all(&dit_dir).map_err(|e| TrainError::File(format!("{}: {e}", dit_dir.display())))?;
    save_safetensors(&dit_dir.join(story_model::DIT_WEIGHTS), tensors)?;
    let config = serde_json::to_string_pretty(config).map_err(|e| TrainError::File(e.to_string()))?;
    write_text(&dit_dir.join("config.json"), &(config + "\n"))
}

/// Copies a story model folder's parts other than the DiT (text encoder, VAE, and the tiny
/// decoder when there is one) from `base` into `out`.
pub fn copy_model_parts(base: &Path, out: &Path) -> Result<()> {
    for part in [story_model::TEXT_DIR, story_model::VAE_DIR] {
        copy_folder(&base.join(part), &out.join(part))?;
    }
    let tiny = base.join(story_model::TINY_DIR);
    if tiny.is_dir() {
        copy_folder(&tiny, &out.join(story_model::TINY_DIR))?;
    }
    Ok(())
}

/// Copies the plain files of folder `from` into `to` (created if needed).
pub fn copy_folder(from: &Path, to: &Path) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| TrainError::File(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let entry = entry.map_err(|e| io(from, e))?;
        if entry.file_type().map_err(|e| io(&entry.path(), e))?.is_file() {
            let dest = to.join(entry.file_name());
            std::fs::copy(entry.path(), &dest).map_err(|e| io(&dest, e))?;
        }
    }
    Ok(())
}

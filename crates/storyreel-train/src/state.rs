//! Checkpoints that resume exactly: every parameter, the optimiser's moments and step count, the
//! EMA, the caller's RNG state and the schedule, written atomically to `step-<N>/`.
//!
//! A checkpoint folder holds `model.safetensors` (all parameters, frozen ones too, so a folder is
//! a usable model on its own), `optimizer.safetensors` (`m.<name>`, `v.<name>`), `ema.safetensors`
//! when an EMA is kept, and `state.json` ([`TrainState`]), which is written last.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::ema::Ema;
use crate::optim::AdamW;
use crate::params::NamedParams;
use crate::schedule::LrSchedule;
use crate::{Result, TrainError};

/// The parameters' file in a checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimiser moments' file in a checkpoint folder.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The EMA weights' file in a checkpoint folder.
pub const EMA_FILE: &str = "ema.safetensors";
/// The counters' file in a checkpoint folder.
pub const STATE_FILE: &str = "state.json";

/// Everything besides tensors that an exact resume needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Training steps completed (the `N` of `step-<N>`).
    pub step: u64,
    /// Updates the optimiser applied (fewer than `step` when non-finite steps were skipped).
    pub optimizer_steps: u64,
    /// Steps skipped for a non-finite gradient norm.
    pub skipped_steps: u64,
    /// The caller's RNG state(s), restored verbatim.
    pub rng: Vec<u64>,
    /// The schedule the run used.
    pub schedule: LrSchedule,
    /// A hash of the settings that affect the maths, so a resume with different ones is caught.
    pub config_hash: String,
    /// Whether `ema.safetensors` was written.
    pub has_ema: bool,
    /// The stage's own settings that change what the run learns (data, model, loss), so a resume
    /// with other ones is refused by name; absent in checkpoints written before they were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_settings: Option<serde_json::Value>,
}

/// `root/step-<step>`.
pub fn checkpoint_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step}"))
}

fn file_error(path: &Path, err: impl std::fmt::Display) -> TrainError {
    TrainError::File(format!("{}: {err}", path.display()))
}

/// Every complete checkpoint (one with a `state.json`) under `root`, oldest first; none if `root`
/// does not exist.
pub fn list_checkpoints(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_error(root, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| file_error(root, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(|n| n.strip_prefix("step-")).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if entry.path().join(STATE_FILE).is_file() {
            found.push((step, entry.path()));
        }
    }
    found.sort_by_key(|(step, _)| *step);
    Ok(found)
}

/// The newest complete checkpoint under `root`, if any.
pub fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(root)?.pop().map(|(_, path)| path))
}

fn save_tensors(tensors: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, path).map_err(|e| file_error(path, e))
}

/// Writes a checkpoint for `state.step` under `root` and then deletes all but the newest `keep`
/// (0 keeps all). The folder is written under a temporary name and renamed, so a crash never
/// leaves a half-written `step-<N>` behind.
pub fn save_checkpoint(
    root: &Path,
    params: &NamedParams,
    optimizer: &AdamW,
    ema: Option<&Ema>,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(|e| file_error(root, e))?;
    let tmp = root.join(format!(".tmp-step-{}-{}", state.step, std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| file_error(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| file_error(&tmp, e))?;

    let model = params.all().iter().map(|p| (p.name.clone(), p.var.as_tensor().detach())).collect();
    save_tensors(model, &tmp.join(MODEL_FILE))?;
    save_tensors(optimizer.state_tensors(), &tmp.join(OPTIMIZER_FILE))?;
    if let Some(ema) = ema {
        save_tensors(ema.tensors(), &tmp.join(EMA_FILE))?;
    }
    let state = TrainState { has_ema: ema.is_some(), ..state.clone() };
    let json = serde_json::to_string_pretty(&state).map_err(|e| TrainError::File(format!("state.json: {e}")))?;
    let state_path = tmp.join(STATE_FILE);
    let mut file = fs::File::create(&state_path).map_err(|e| file_error(&state_path, e))?;
    file.write_all(json.as_bytes()).and_then(|_| file.sync_all()).map_err(|e| file_error(&state_path, e))?;

    let dir = checkpoint_dir(root, state.step);
    if dir.exists() {
        // A rerun after resuming from an earlier step overwrites the stale checkpoint.
        fs::remove_dir_all(&dir).map_err(|e| file_error(&dir, e))?;
    }
    fs::rename(&tmp, &dir).map_err(|e| file_error(&dir, e))?;

    if keep > 0 {
        let all = list_checkpoints(root)?;
        let excess = all.len().saturating_sub(keep);
        for (_, old) in all.into_iter().take(excess) {
            fs::remove_dir_all(&old).map_err(|e| file_error(&old, e))?;
        }
    }
    Ok(dir)
}

/// Reads a checkpoint's `state.json`.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    serde_json::from_str(&text).map_err(|e| file_error(&path, e))
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| file_error(path, e))
}

/// Checks `found` holds exactly the `expected` names with the expected shapes, naming the first
/// missing, misshapen or unexpected tensor and the file (`source`) it came from.
pub(crate) fn check_tensors(
    expected: &[(String, Vec<usize>)],
    found: &HashMap<String, Tensor>,
    source: &str,
) -> Result<()> {
    for (name, shape) in expected {
        match found.get(name) {
            None => return Err(TrainError::File(format!("{source}: tensor {name} is missing"))),
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(TrainError::File(format!(
                    "{source}: tensor {name} has shape {:?} but the model expects {shape:?}",
                    t.dims()
                )))
            }
            Some(_) => {}
        }
    }
    if found.len() != expected.len() {
        let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&String> = found.keys().filter(|n| !known.contains(n.as_str())).collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(TrainError::File(format!("{source}: tensor {name} is not in the model")));
        }
    }
    Ok(())
}

/// Restores a checkpoint folder into the parameters, optimiser and EMA, after checking every
/// tensor's name and shape against them (nothing is changed when a check fails), and returns its
/// [`TrainState`].
pub fn load_checkpoint(
    dir: &Path,
    params: &NamedParams,
    optimizer: &mut AdamW,
    ema: Option<&mut Ema>,
) -> Result<TrainState> {
    let state = read_state(dir)?;
    let model_path = dir.join(MODEL_FILE);
    let model = load_tensors(&model_path)?;
    let expected: Vec<(String, Vec<usize>)> =
        params.all().iter().map(|p| (p.name.clone(), p.var.dims().to_vec())).collect();
    let model_source = model_path.display().to_string();
    check_tensors(&expected, &model, &model_source)?;

    let opt_path = dir.join(OPTIMIZER_FILE);
    let moments = load_tensors(&opt_path)?;
    let opt_source = opt_path.display().to_string();
    let opt_expected: Vec<(String, Vec<usize>)> =
        optimizer.state_tensors().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
    check_tensors(&opt_expected, &moments, &opt_source)?;

    let ema_tensors = match (&ema, state.has_ema) {
        (Some(ema), true) => {
            let path = dir.join(EMA_FILE);
            let tensors = load_tensors(&path)?;
            let expected: Vec<(String, Vec<usize>)> =
                ema.tensors().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
            check_tensors(&expected, &tensors, &path.display().to_string())?;
            Some((tensors, path.display().to_string()))
        }
        (Some(_), false) => {
            return Err(TrainError::File(format!(
                "{}: the run keeps an EMA but this checkpoint has none",
                dir.display()
            )))
        }
        (None, true) => {
            return Err(TrainError::File(format!(
                "{}: this checkpoint has an EMA but the run keeps none",
                dir.display()
            )))
        }
        (None, false) => None,
    };

    for p in params.all() {
        let t = model[&p.name].to_dtype(p.var.dtype())?.to_device(p.var.device())?;
        p.var.set(&t)?;
    }
    optimizer.load_state(&moments, state.optimizer_steps, &opt_source)?;
    if let (Some(ema), Some((tensors, source))) = (ema, ema_tensors) {
        ema.load(&tensors, &source)?;
    }
    Ok(state)
}

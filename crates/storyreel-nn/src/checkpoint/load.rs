//! Loading a DiT checkpoint into canonical (original Wan) names, validated against a config.

use super::files::TensorFiles;
use super::names::{detect_layout, dit_tensor_shapes, from_canonical, to_canonical, CheckpointLayout};
use super::pth::StateChoice;
use super::util::bad;
use crate::config::WanConfig;
use crate::error::{NnError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A DiT checkpoint loaded under canonical names.
#[derive(Debug, Clone)]
pub struct LoadedCheckpoint {
    /// Naming scheme found in the files.
    pub layout: CheckpointLayout,
    /// Tensors under canonical (original Wan, unprefixed) names, in the requested dtype and device.
    pub tensors: HashMap<String, Tensor>,
    /// Stored dtype name → number of tensors stored with it.
    pub stored_dtypes: BTreeMap<String, usize>,
    /// The weight files read.
    pub files: Vec<PathBuf>,
    /// Dict of a PyTorch archive the weights came from (`generator`, `generator_ema`, ...), if any.
    pub state_key: Option<String>,
}

/// Maps the stored names of `files` to canonical names: (layout, canonical name → header index).
pub(crate) fn canonical_index(files: &TensorFiles) -> Result<(CheckpointLayout, BTreeMap<String, usize>)> {
    let layout = detect_layout(files.headers().iter().map(|h| h.name.as_str()));
    let mut map: BTreeMap<String, usize> = BTreeMap::new();
    for (i, h) in files.headers().iter().enumerate() {
        let canon = to_canonical(&h.name, layout);
        if let Some(prev) = map.insert(canon.clone(), i) {
            let path = &files.files()[h.file];
            return Err(bad(
                path,
                format!("`{}` and `{}` both map to canonical tensor `{canon}`", files.headers()[prev].name, h.name),
            ));
        }
    }
    Ok((layout, map))
}

/// Checks canonical names and shapes against the tensors a config requires: the first shape
/// mismatch, then the first missing tensor, then unexpected extra tensors are reported.
pub fn check_dit_shapes(found: &BTreeMap<String, Vec<usize>>, cfg: &WanConfig) -> Result<()> {
    check_tensor_shapes(&dit_tensor_shapes(cfg), found)
}

/// Every `expected` tensor present with its shape, and nothing else: reports the first shape
/// mismatch, then the first missing tensor, then the unexpected extras (shared by every model).
pub fn check_tensor_shapes(expected: &[(String, Vec<usize>)], found: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    check_expected_tensors(expected, found)?;
    check_no_unexpected_tensors(expected, found)
}

/// The first shape mismatch, then the first missing tensor, among `expected`.
pub fn check_expected_tensors(expected: &[(String, Vec<usize>)], found: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    for (name, shape) in expected {
        if let Some(f) = found.get(name) {
            if f != shape {
                return Err(NnError::ShapeMismatch { name: name.clone(), expected: shape.clone(), found: f.clone() });
            }
        }
    }
    match expected.iter().find(|(n, _)| !found.contains_key(n)) {
        Some((name, shape)) => Err(NnError::MissingTensor { name: name.clone(), expected: shape.clone() }),
        None => Ok(()),
    }
}

/// Tensors in `found` that `expected` does not list, reported as [`NnError::UnexpectedTensors`].
pub fn check_no_unexpected_tensors(
    expected: &[(String, Vec<usize>)],
    found: &BTreeMap<String, Vec<usize>>,
) -> Result<()> {
    let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let extra: Vec<(&String, &Vec<usize>)> = found.iter().filter(|(n, _)| !known.contains(n.as_str())).collect();
    match extra.first() {
        Some((first, shape)) => {
            Err(NnError::UnexpectedTensors { count: extra.len(), first: (*first).clone(), shape: (*shape).clone() })
        }
        None => Ok(()),
    }
}

/// Loads a DiT checkpoint (weights file, shard index, or model folder) in any supported layout,
/// validates it against `cfg` from the headers alone, then reads every tensor as `dtype` on `device`.
pub fn load_dit_checkpoint(path: &Path, cfg: &WanConfig, dtype: DType, device: &Device) -> Result<LoadedCheckpoint> {
    load_from(TensorFiles::open_choice(path, &StateChoice::Model)?, cfg, dtype, device)
}

/// Like [`load_dit_checkpoint`], taking the state dict of a PyTorch archive from `state_key`
/// (for example `generator` when `generator_ema` is also present).
pub fn load_dit_checkpoint_from_key(
    path: &Path,
    state_key: &str,
    cfg: &WanConfig,
    dtype: DType,
    device: &Device,
) -> Result<LoadedCheckpoint> {
    load_from(TensorFiles::open_with_key(path, state_key)?, cfg, dtype, device)
}

fn load_from(files: TensorFiles, cfg: &WanConfig, dtype: DType, device: &Device) -> Result<LoadedCheckpoint> {
    let (layout, index) = canonical_index(&files)?;
    let found: BTreeMap<String, Vec<usize>> =
        index.iter().map(|(n, &i)| (n.clone(), files.headers()[i].shape.clone())).collect();
    check_dit_shapes(&found, cfg).map_err(|e| match e {
        // Report unexpected tensors under the name they are stored with.
        NnError::UnexpectedTensors { count, first, shape } => {
            let first = index.get(&first).map(|&i| files.headers()[i].name.clone()).unwrap_or(first);
            NnError::UnexpectedTensors { count, first, shape }
        }
        other => other,
    })?;
    let mut tensors = HashMap::with_capacity(index.len());
    let mut stored_dtypes = BTreeMap::new();
    for (name, &i) in &index {
        let t = files.load_index(i, dtype, device)?;
        *stored_dtypes.entry(files.headers()[i].dtype.clone()).or_insert(0) += 1;
        tensors.insert(name.clone(), t);
    }
    Ok(LoadedCheckpoint {
        layout,
        tensors,
        stored_dtypes,
        files: files.files().to_vec(),
        state_key: files.state_key().map(str::to_string),
    })
}

/// Renames canonical tensors to the names of `layout`, sorted by name.
pub fn rename_to_layout(tensors: &HashMap<String, Tensor>, layout: CheckpointLayout) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (from_canonical(n, layout), t.clone())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Saves canonical tensors in `layout`; the format follows the extension (`.safetensors`, or
/// `.pt`/`.pth`/`.bin` for a `torch.save` archive, wrapped as `{'generator': ...}` for ShotStream).
pub fn save_checkpoint(path: &Path, tensors: &HashMap<String, Tensor>, layout: CheckpointLayout) -> Result<()> {
    let renamed = rename_to_layout(tensors, layout);
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "safetensors" => super::files::save_safetensors(path, &renamed.into_iter().collect()),
        "pt" | "pth" | "bin" => {
            let wrap = (layout == CheckpointLayout::ShotStream).then_some("generator");
            super::pickle::save_pth(path, &renamed, wrap)
        }
        _ => Err(bad(path, "unknown extension: use .safetensors, .pt, .pth or .bin")),
    }
}

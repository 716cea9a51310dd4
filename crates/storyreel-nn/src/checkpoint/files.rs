//! Raw tensor files: safetensors (single, sharded with an index, or several files) and PyTorch
//! zip archives, behind one reader that lists headers without touching tensor data.

use super::pth::{PthArchive, StateChoice};
use super::util::{bad, checked_numel, dtype_name, tensor_le_bytes};
use crate::error::{NnError, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Storage format of weight files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// `.safetensors` file(s).
    Safetensors,
    /// PyTorch `torch.save` zip archive(s) (`.pt`, `.pth`, `.bin`).
    Pth,
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightFormat::Safetensors => "safetensors",
            WeightFormat::Pth => "PyTorch zip (torch.save)",
        })
    }
}

/// The files of a model folder, as found by [`find_model_files`].
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    /// Folder holding the weights (a `transformer/` sub-folder of a diffusers pipeline if used).
    pub dir: PathBuf,
    /// `config.json` next to the weights, if present.
    pub config: Option<PathBuf>,
    /// Weight files, sorted (shards in order).
    pub weights: Vec<PathBuf>,
    /// The `*.index.json` shard index, if the weights came from one.
    pub index: Option<PathBuf>,
    /// Format of the weight files.
    pub format: WeightFormat,
}

/// File names (lower-case substrings) of non-DiT files that live in model folders.
const AUX_MARKERS: &[&str] = &[
    "umt5",
    "models_t5",
    "vae",
    "clip",
    "taew",
    "taehv",
    "image_encoder",
    "text_encoder",
    "tokenizer",
    "optimizer",
    "training_args",
    "rng_state",
];

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn is_aux(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    AUX_MARKERS.iter().any(|m| l.contains(m))
}

fn is_adapter(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("adapter_model")
}

fn has_ext(name: &str, exts: &[&str]) -> bool {
    let l = name.to_ascii_lowercase();
    exts.iter().any(|e| l.ends_with(e))
}

fn list_names(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// Finds the DiT weights (and `config.json`) in a model folder.
///
/// Weights are `*.safetensors` (all of them, as shards, or those listed by one
/// `*.safetensors.index.json`) or a single `*.pt` / `*.pth` / `*.bin`. Text-encoder, VAE,
/// tokenizer and optimizer files are ignored by name, as are LoRA adapters (`adapter_model.*`).
/// A diffusers pipeline folder is followed into its `transformer/` sub-folder. Errors when no
/// weights are found or when the choice is ambiguous (PyTorch and safetensors weights side by side,
/// several PyTorch files, or several index files).
pub fn find_model_files(dir: &Path) -> Result<ModelFiles> {
    let entries = std::fs::read_dir(dir).map_err(|e| NnError::io(dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| NnError::io(dir, e))?;
        let path = entry.path();
        if std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false) {
            names.push(file_name(&path));
        }
    }
    names.sort();
    let config = dir.join("config.json");
    let config = config.is_file().then_some(config);
    let indexes: Vec<String> = names.iter().filter(|n| n.ends_with(".index.json") && !is_aux(n)).cloned().collect();
    if indexes.len() > 1 {
        return Err(bad(dir, format!("ambiguous: several shard index files ({})", list_names(&indexes))));
    }
    if let Some(index) = indexes.first() {
        let index = dir.join(index);
        let (weights, _) = read_index(&index)?;
        let format = if weights.iter().all(|w| has_ext(&file_name(w), &[".safetensors"])) {
            WeightFormat::Safetensors
        } else {
            WeightFormat::Pth
        };
        return Ok(ModelFiles { dir: dir.to_path_buf(), config, weights, index: Some(index), format });
    }
    let st: Vec<String> =
        names.iter().filter(|n| has_ext(n, &[".safetensors"]) && !is_aux(n) && !is_adapter(n)).cloned().collect();
    let pt: Vec<String> = names
        .iter()
        .filter(|n| has_ext(n, &[".pt", ".pth", ".bin"]) && !is_aux(n) && !is_adapter(n))
        .cloned()
        .collect();
    let files = |v: &[String]| v.iter().map(|n| dir.join(n)).collect::<Vec<_>>();
    match (st.is_empty(), pt.len()) {
        (false, 0) => Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            weights: files(&st),
            index: None,
            format: WeightFormat::Safetensors,
        }),
        (true, 1) => Ok(ModelFiles {
            dir: dir.to_path_buf(),
            config,
            weights: files(&pt),
            index: None,
            format: WeightFormat::Pth,
        }),
        (false, _) => Err(bad(
            dir,
            format!(
                "ambiguous: both safetensors ({}) and PyTorch ({}) weights; pass the file you mean",
                list_names(&st),
                list_names(&pt)
            ),
        )),
        (true, n) if n > 1 => Err(bad(
            dir,
            format!("ambiguous: several PyTorch weight files ({}); pass the file you mean", list_names(&pt)),
        )),
        _ => {
            let transformer = dir.join("transformer");
            if transformer.is_dir() {
                return find_model_files(&transformer);
            }
            let adapters: Vec<String> = names.iter().filter(|n| is_adapter(n)).cloned().collect();
            if !adapters.is_empty() {
                return Err(bad(
                    dir,
                    format!(
                        "this is a LoRA adapter folder ({}), not a model; read it as a LoRA",
                        list_names(&adapters)
                    ),
                ));
            }
            let ignored: Vec<String> = names
                .iter()
                .filter(|n| has_ext(n, &[".safetensors", ".pt", ".pth", ".bin"]) && is_aux(n))
                .cloned()
                .collect();
            let mut reason = "no DiT weights found (looked for *.safetensors, *.pt, *.pth, *.bin)".to_string();
            if !ignored.is_empty() {
                reason.push_str(&format!("; ignored non-DiT files {}", list_names(&ignored)));
            }
            Err(bad(dir, reason))
        }
    }
}

/// Reads a `*.index.json` shard index: (shard files in order, tensor name → shard file).
pub(crate) fn read_index(index: &Path) -> Result<(Vec<PathBuf>, BTreeMap<String, PathBuf>)> {
    let text = std::fs::read_to_string(index).map_err(|e| NnError::io(index, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(index, format!("the shard index is not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad(index, "the shard index has no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    let mut by_name = BTreeMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| bad(index, format!("`weight_map[{name}]` is not a file name")))?;
        if file.contains("..") || Path::new(file).is_absolute() {
            return Err(bad(index, format!("shard name `{file}` escapes the folder")));
        }
        let path = dir.join(file);
        if !shards.contains(&path) {
            if !path.is_file() {
                return Err(bad(index, format!("shard `{file}` listed in weight_map is missing")));
            }
            shards.push(path.clone());
        }
        by_name.insert(name.clone(), path);
    }
    if shards.is_empty() {
        return Err(bad(index, "the shard index lists no tensors"));
    }
    shards.sort();
    Ok((shards, by_name))
}

/// Name, stored dtype and shape of one tensor, read from file headers only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    /// Name as stored in the file.
    pub name: String,
    /// Stored dtype (`f32`, `bf16`, `f16`, ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Index into [`TensorFiles::files`] of the file holding it.
    pub file: usize,
}

impl TensorHeader {
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        checked_numel(&self.shape).unwrap_or(usize::MAX)
    }
}

enum Backend {
    Safetensors(Vec<MmapedSafetensors>),
    Pth(Vec<PthArchive>),
}

/// An open set of weight files: tensor headers plus lazy, per-tensor loading with dtype conversion.
pub struct TensorFiles {
    files: Vec<PathBuf>,
    format: WeightFormat,
    headers: Vec<TensorHeader>,
    /// Per header: index of the record inside its PyTorch archive (unused for safetensors).
    slots: Vec<usize>,
    lookup: HashMap<String, usize>,
    backend: Backend,
    state_key: Option<String>,
    top_level_keys: Vec<String>,
    index: Option<PathBuf>,
}

impl fmt::Debug for TensorFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorFiles")
            .field("files", &self.files)
            .field("format", &self.format)
            .field("tensors", &self.headers.len())
            .field("state_key", &self.state_key)
            .finish()
    }
}

/// Format of a single file, from its extension or (failing that) its first bytes.
fn sniff_format(path: &Path) -> Result<WeightFormat> {
    let name = file_name(path);
    if has_ext(&name, &[".safetensors"]) {
        return Ok(WeightFormat::Safetensors);
    }
    if has_ext(&name, &[".pt", ".pth", ".bin", ".ckpt"]) {
        return Ok(WeightFormat::Pth);
    }
    let mut f = std::fs::File::open(path).map_err(|e| NnError::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| NnError::io(path, e))?;
    Ok(if n == 4 && &magic == b"PK\x03\x04" { WeightFormat::Pth } else { WeightFormat::Safetensors })
}

impl TensorFiles {
    /// Opens a weights file, a `*.index.json` shard index, or a model folder (see [`find_model_files`]).
    /// In a PyTorch archive the state dict is detected (`generator_ema`, `generator`, `state_dict`,
    /// `model`, `module`, or the top level).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_choice(path, &StateChoice::Model)
    }

    /// Like [`TensorFiles::open`], but takes the state dict of a PyTorch archive from `key`
    /// (safetensors files have no keys; it is ignored for them).
    pub fn open_with_key(path: &Path, key: &str) -> Result<Self> {
        Self::open_choice(path, &StateChoice::Key(key.to_string()))
    }

    pub(crate) fn open_choice(path: &Path, choice: &StateChoice) -> Result<Self> {
        if !path.exists() {
            return Err(NnError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
        }
        if path.is_dir() {
            let mf = find_model_files(path)?;
            let mut files = Self::open_files(&mf.weights, mf.format, choice)?;
            if let Some(index) = &mf.index {
                files.check_index(index)?;
            }
            return Ok(files);
        }
        if file_name(path).ends_with(".index.json") {
            let (shards, _) = read_index(path)?;
            let format = sniff_format(&shards[0])?;
            let mut files = Self::open_files(&shards, format, choice)?;
            files.check_index(path)?;
            return Ok(files);
        }
        let format = sniff_format(path)?;
        Self::open_files(&[path.to_path_buf()], format, choice)
    }

    /// Opens an explicit list of files of one format.
    pub(crate) fn open_files(paths: &[PathBuf], format: WeightFormat, choice: &StateChoice) -> Result<Self> {
        let mut headers = Vec::new();
        let mut slots = Vec::new();
        let mut state_key = None;
        let mut top_level_keys = Vec::new();
        let backend = match format {
            WeightFormat::Safetensors => {
                let mut sts = Vec::with_capacity(paths.len());
                for (fi, p) in paths.iter().enumerate() {
                    // SAFETY: the file is mapped read-only; like every mmap-based reader we rely on
                    // it not being truncated by another process while it is open.
                    let st = unsafe { MmapedSafetensors::new(p) }.map_err(|e| safetensors_error(p, e))?;
                    let mut list: Vec<TensorHeader> = st
                        .tensors()
                        .into_iter()
                        .map(|(name, view)| TensorHeader {
                            name,
                            dtype: st_dtype_name(view.dtype()),
                            shape: view.shape().to_vec(),
                            file: fi,
                        })
                        .collect();
                    list.sort_by(|a, b| a.name.cmp(&b.name));
                    slots.extend(std::iter::repeat_n(0, list.len()));
                    headers.extend(list);
                    sts.push(st);
                }
                Backend::Safetensors(sts)
            }
            WeightFormat::Pth => {
                let mut archives = Vec::with_capacity(paths.len());
                for (fi, p) in paths.iter().enumerate() {
                    let ar = PthArchive::open(p, choice)?;
                    for (slot, t) in ar.tensors.iter().enumerate() {
                        headers.push(TensorHeader {
                            name: t.name.clone(),
                            dtype: t.kind.name.to_string(),
                            shape: t.shape.clone(),
                            file: fi,
                        });
                        slots.push(slot);
                    }
                    if fi == 0 {
                        state_key = ar.state_key.clone();
                        top_level_keys = ar.top_keys.clone();
                    }
                    archives.push(ar);
                }
                Backend::Pth(archives)
            }
        };
        let mut lookup = HashMap::with_capacity(headers.len());
        for (i, h) in headers.iter().enumerate() {
            if let Some(prev) = lookup.insert(h.name.clone(), i) {
                let pf = &paths[headers[prev].file];
                let reason = if headers[prev].file == h.file {
                    format!("tensor `{}` appears twice", h.name)
                } else {
                    format!("tensor `{}` appears both in {} and here", h.name, pf.display())
                };
                return Err(bad(&paths[h.file], reason));
            }
        }
        Ok(TensorFiles {
            files: paths.to_vec(),
            format,
            headers,
            slots,
            lookup,
            backend,
            state_key,
            top_level_keys,
            index: None,
        })
    }

    /// Checks that every tensor of a shard index is in the shard it is listed in.
    fn check_index(&mut self, index: &Path) -> Result<()> {
        let (_, by_name) = read_index(index)?;
        for (name, file) in &by_name {
            let found = self.lookup.get(name).map(|&i| &self.files[self.headers[i].file]);
            if found != Some(file) {
                return Err(bad(index, format!("`{name}` is listed in shard `{}` but is not there", file_name(file))));
            }
        }
        self.index = Some(index.to_path_buf());
        Ok(())
    }

    /// The weight files, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Format of the files.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// The shard index used, if any.
    pub fn index_file(&self) -> Option<&Path> {
        self.index.as_deref()
    }

    /// Headers of all tensors (names as stored).
    pub fn headers(&self) -> &[TensorHeader] {
        &self.headers
    }

    /// Header of one tensor by stored name.
    pub fn header(&self, name: &str) -> Option<&TensorHeader> {
        self.lookup.get(name).map(|&i| &self.headers[i])
    }

    /// Key of the dict the tensors came from in a PyTorch archive (`generator`, ...), if any.
    pub fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    /// Top-level keys of a PyTorch archive that wraps its state dict (empty otherwise).
    pub fn top_level_keys(&self) -> &[String] {
        &self.top_level_keys
    }

    /// Loads one tensor by stored name, converted to `dtype` on `device`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let i = *self.lookup.get(name).ok_or_else(|| {
            bad(self.files.first().map(PathBuf::as_path).unwrap_or(Path::new("")), format!("no tensor `{name}`"))
        })?;
        self.load_index(i, dtype, device)
    }

    /// Loads the tensor of header `i`.
    pub(crate) fn load_index(&self, i: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let h = &self.headers[i];
        let path = &self.files[h.file];
        match &self.backend {
            Backend::Safetensors(sts) => {
                let t =
                    sts[h.file].load(&h.name, device).map_err(|e| bad(path, format!("tensor `{}`: {e}", h.name)))?;
                Ok(if t.dtype() == dtype { t } else { t.to_dtype(dtype)? })
            }
            Backend::Pth(archives) => {
                let ar = &archives[h.file];
                ar.load(&ar.tensors[self.slots[i]], dtype, device)
            }
        }
    }

    /// Loads every tensor (stored names), converted to `dtype` on `device`.
    pub fn load_all(&self, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::with_capacity(self.headers.len());
        for (i, h) in self.headers.iter().enumerate() {
            out.insert(h.name.clone(), self.load_index(i, dtype, device)?);
        }
        Ok(out)
    }
}

fn safetensors_error(path: &Path, e: candle_core::Error) -> NnError {
    let msg = e.to_string();
    // candle prefixes the path, which the error already names.
    let prefix = format!("path: {path:?} ");
    let msg = msg.strip_prefix(&prefix).unwrap_or(&msg);
    let hint = if msg.contains("incomplete") || msg.contains("offset") || msg.contains("too small") {
        " (the file is probably truncated)"
    } else {
        ""
    };
    bad(path, format!("not a valid safetensors file: {msg}{hint}"))
}

fn st_dtype_name(d: safetensors::Dtype) -> String {
    match DType::try_from(d) {
        Ok(dt) => dtype_name(dt).to_string(),
        Err(_) => format!("{d:?}").to_ascii_lowercase(),
    }
}

fn st_dtype_str(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::U8 => "U8",
        DType::U32 => "U32",
        DType::I16 => "I16",
        DType::I32 => "I32",
        DType::I64 => "I64",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F32 => "F32",
        DType::F64 => "F64",
        _ => return None,
    })
}

/// Writes tensors to a `.safetensors` file (names sorted; `{"format": "pt"}` metadata), streaming
/// one tensor at a time.
pub fn save_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for name in &names {
        let t = &tensors[*name];
        let dt = st_dtype_str(t.dtype())
            .ok_or_else(|| bad(path, format!("tensor `{name}`: dtype {:?} cannot be saved", t.dtype())))?;
        let len = t.elem_count() * t.dtype().size_in_bytes();
        header.insert(
            (*name).clone(),
            serde_json::json!({ "dtype": dt, "shape": t.dims(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| bad(path, format!("encoding the header: {e}")))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let file = std::fs::File::create(path).map_err(|e| NnError::io(path, e))?;
    let mut w = BufWriter::new(file);
    let io = |e| NnError::io(path, e);
    w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&json).map_err(io)?;
    for name in &names {
        w.write_all(&tensor_le_bytes(&tensors[*name])?).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

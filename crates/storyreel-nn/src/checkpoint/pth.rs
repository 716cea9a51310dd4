//! Reading PyTorch `torch.save` zip archives (`.pt`, `.pth`, `.bin`).
//!
//! The pickle (`<archive>/data.pkl`) is parsed with candle's `pickle::Stack`; the object tree is
//! then walked here (not with `read_pth_tensor_info`) so that wrapping dicts such as
//! `{'generator': state_dict}` can be detected, malformed tensor records become errors instead of
//! panics, and every storage is read straight from the archive with one open file.

use super::util::{bad, checked_numel};
use crate::error::Result;
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zip::ZipArchive;

/// Largest `data.pkl` we are willing to parse (the pickle holds metadata only).
const MAX_PICKLE_BYTES: u64 = 1 << 30;

/// Which dict of a `torch.save` archive holds the wanted tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateChoice {
    /// This top-level key, exactly.
    Key(String),
    /// A DiT state dict: `generator_ema`, `generator`, `state_dict`, `model`, `module`, or the top level.
    Model,
    /// A LoRA state dict: `generator_lora`, `lora`, `state_dict`, `model`, `module`, or the top level.
    Lora,
    /// Model keys first, then LoRA keys (used by `inspect`).
    Any,
}

/// Top-level keys tried, in order, for a model state dict.
pub(crate) const MODEL_KEYS: &[&str] = &["generator_ema", "generator", "state_dict", "model", "module"];
/// Top-level keys tried, in order, for a LoRA state dict.
pub(crate) const LORA_KEYS: &[&str] = &["generator_lora", "lora", "state_dict", "model", "module"];

/// Element type of a PyTorch storage class.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StorageKind {
    /// Short name (`f32`, `bf16`, `bool`, ...).
    pub name: &'static str,
    /// The candle dtype, when candle has one.
    pub dtype: Option<DType>,
    /// Bytes per element.
    pub size: usize,
}

fn storage_kind(class: &str) -> Option<StorageKind> {
    let k = |name, dtype, size| Some(StorageKind { name, dtype, size });
    match class {
        "FloatStorage" => k("f32", Some(DType::F32), 4),
        "DoubleStorage" => k("f64", Some(DType::F64), 8),
        "HalfStorage" => k("f16", Some(DType::F16), 2),
        "BFloat16Storage" => k("bf16", Some(DType::BF16), 2),
        "ByteStorage" => k("u8", Some(DType::U8), 1),
        "BoolStorage" => k("bool", Some(DType::U8), 1),
        "CharStorage" => k("i8", None, 1),
        "ShortStorage" => k("i16", Some(DType::I16), 2),
        "IntStorage" => k("i32", Some(DType::I32), 4),
        "LongStorage" => k("i64", Some(DType::I64), 8),
        "ComplexFloatStorage" => k("c64", None, 8),
        "ComplexDoubleStorage" => k("c128", None, 16),
        "Float8_e4m3fnStorage" => k("f8e4m3", Some(DType::F8E4M3), 1),
        "Float8_e5m2Storage" => k("f8e5m2", None, 1),
        _ => None,
    }
}

/// One tensor record of the pickle: a strided view into a storage of the archive.
#[derive(Debug, Clone)]
pub(crate) struct PthTensor {
    /// Key in the state dict.
    pub name: String,
    /// Storage element type.
    pub kind: StorageKind,
    /// Storage file name under `<archive>/data/`.
    pub storage_key: String,
    /// Elements in the storage.
    pub storage_numel: usize,
    /// View offset in elements.
    pub offset: usize,
    /// View shape.
    pub shape: Vec<usize>,
    /// View strides in elements.
    pub stride: Vec<usize>,
}

/// A parsed `torch.save` archive: the chosen state dict's tensor records and an open zip reader.
pub(crate) struct PthArchive {
    path: PathBuf,
    prefix: String,
    /// Top-level keys of the pickled dict (empty when the top level is the state dict itself).
    pub top_keys: Vec<String>,
    /// The top-level key whose dict was chosen, `None` for the top level itself.
    pub state_key: Option<String>,
    /// Tensor records in pickle order.
    pub tensors: Vec<PthTensor>,
    zip: Mutex<ZipArchive<BufReader<File>>>,
}

impl std::fmt::Debug for PthArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PthArchive")
            .field("path", &self.path)
            .field("state_key", &self.state_key)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn as_str(o: &Object) -> Option<&str> {
    match o {
        Object::Unicode(s) => Some(s),
        _ => None,
    }
}

fn as_int(o: &Object) -> Option<i64> {
    match o {
        Object::Int(i) => Some(*i as i64),
        Object::Long(i) => Some(*i),
        _ => None,
    }
}

fn as_usize(o: &Object) -> Option<usize> {
    as_int(o).and_then(|i| usize::try_from(i).ok())
}

fn as_seq(o: &Object) -> Option<&[Object]> {
    match o {
        Object::Tuple(v) | Object::List(v) => Some(v),
        _ => None,
    }
}

fn as_usize_seq(o: &Object) -> Option<Vec<usize>> {
    as_seq(o)?.iter().map(as_usize).collect()
}

/// The entries of a pickled dict (`dict`, `OrderedDict`, possibly with BUILD state).
fn as_dict(o: &Object) -> Option<&[(Object, Object)]> {
    match o {
        Object::Dict(v) => Some(v),
        Object::Build { callable, .. } => as_dict(callable),
        _ => None,
    }
}

/// Parses an object as a tensor record: `None` when it is not a tensor at all, `Some(Err)` when it
/// is one that cannot be read.
fn parse_tensor(o: &Object) -> Option<std::result::Result<PthTensor, String>> {
    match o {
        Object::Reduce { callable, args } => parse_call(callable, args),
        _ => None,
    }
}

fn parse_call(callable: &Object, args: &Object) -> Option<std::result::Result<PthTensor, String>> {
    let Object::Class { module_name, class_name } = callable else {
        return None;
    };
    let args = as_seq(args);
    match (module_name.as_str(), class_name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            Some(args.ok_or_else(|| "rebuild arguments are not a tuple".to_string()).and_then(rebuild))
        }
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => match args
            .and_then(|a| a.first())
        {
            Some(inner) => parse_tensor(inner).or_else(|| Some(Err("parameter does not wrap a tensor".to_string()))),
            None => Some(Err("parameter without arguments".to_string())),
        },
        ("torch._tensor", "_rebuild_from_type_v2") => match args {
            Some([func, _ty, inner_args, ..]) => {
                parse_call(func, inner_args).or_else(|| Some(Err("unsupported tensor subclass".to_string())))
            }
            _ => Some(Err("malformed _rebuild_from_type_v2 arguments".to_string())),
        },
        ("torch._utils", other) if other.starts_with("_rebuild") => {
            Some(Err(format!("unsupported tensor encoding torch._utils.{other}")))
        }
        _ => None,
    }
}

/// Arguments of `_rebuild_tensor_v2`: (storage, storage_offset, size, stride, requires_grad, hooks).
fn rebuild(a: &[Object]) -> std::result::Result<PthTensor, String> {
    if a.len() < 4 {
        return Err(format!("_rebuild_tensor_v2 has {} arguments, expected at least 4", a.len()));
    }
    let Object::PersistentLoad(pid) = &a[0] else {
        return Err("the storage is not a persistent id".into());
    };
    let pid = as_seq(pid).ok_or("the storage id is not a tuple")?;
    if pid.len() < 5 || as_str(&pid[0]) != Some("storage") {
        return Err("the storage id is not ('storage', type, key, location, numel)".into());
    }
    let class = match &pid[1] {
        Object::Class { class_name, .. } => class_name.as_str(),
        _ => return Err("the storage type is not a class".into()),
    };
    let kind = storage_kind(class).ok_or_else(|| format!("unsupported storage type {class}"))?;
    let storage_key = match &pid[2] {
        Object::Unicode(s) => s.clone(),
        o => as_int(o).map(|i| i.to_string()).ok_or("the storage key is not a string")?,
    };
    if storage_key.is_empty() || storage_key.contains('/') || storage_key.contains("..") {
        return Err(format!("invalid storage key `{storage_key}`"));
    }
    let storage_numel = as_usize(&pid[4]).ok_or("the storage size is not a non-negative integer")?;
    let offset = as_usize(&a[1]).ok_or("the storage offset is not a non-negative integer")?;
    let shape = as_usize_seq(&a[2]).ok_or("the size is not a tuple of non-negative integers")?;
    let stride = as_usize_seq(&a[3]).ok_or("the stride is not a tuple of non-negative integers")?;
    if shape.len() != stride.len() {
        return Err(format!("size {shape:?} and stride {stride:?} have different ranks"));
    }
    let numel = checked_numel(&shape).ok_or("the element count overflows")?;
    if numel > 0 {
        let mut last = offset;
        for (&d, &s) in shape.iter().zip(&stride) {
            last = (d - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or("the view extent overflows")?;
        }
        if last >= storage_numel {
            return Err(format!(
                "view (offset {offset}, size {shape:?}, stride {stride:?}) exceeds its storage of {storage_numel} elements"
            ));
        }
    }
    Ok(PthTensor { name: String::new(), kind, storage_key, storage_numel, offset, shape, stride })
}

/// Parses a pickle, turning candle panics on malformed input into errors.
fn parse_pickle(bytes: &[u8]) -> std::result::Result<Object, String> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut stack = Stack::empty();
        let mut reader = std::io::BufReader::new(bytes);
        stack.read_loop(&mut reader)?;
        stack.finalize()
    }));
    match result {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(e)) => Err(format!("malformed pickle: {e}")),
        Err(_) => Err("malformed pickle (the parser panicked)".into()),
    }
}

/// Counts the tensor records of a dict.
fn tensor_count(entries: &[(Object, Object)]) -> usize {
    entries.iter().filter(|(k, v)| as_str(k).is_some() && parse_tensor(v).is_some()).count()
}

impl PthArchive {
    /// Opens a `torch.save` zip archive and selects the state dict according to `choice`.
    pub(crate) fn open(path: &Path, choice: &StateChoice) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| crate::error::NnError::io(path, e))?;
        let mut magic = [0u8; 4];
        let n = read_up_to(&mut file, &mut magic).map_err(|e| crate::error::NnError::io(path, e))?;
        if n < 4 || &magic != b"PK\x03\x04" {
            let reason = if n >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
                "legacy (pre-1.6, non-zip) PyTorch serialization is not supported; re-save it with a recent torch.save"
            } else if n < 4 {
                "the file is empty or truncated (not a PyTorch zip archive)"
            } else {
                "not a PyTorch zip archive (no zip signature)"
            };
            return Err(bad(path, reason));
        }
        file.seek(SeekFrom::Start(0)).map_err(|e| crate::error::NnError::io(path, e))?;
        let mut zip = ZipArchive::new(BufReader::new(file))
            .map_err(|e| bad(path, format!("not a readable zip archive, probably truncated ({e})")))?;
        let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
        let pkl = names
            .iter()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.matches('/').count())
            .cloned()
            .ok_or_else(|| bad(path, "zip archive without data.pkl (not a torch.save file)"))?;
        let prefix = pkl.strip_suffix("data.pkl").unwrap_or("").to_string();
        if names.iter().any(|n| *n == format!("{prefix}constants.pkl")) {
            return Err(bad(path, "TorchScript archives are not supported; save a state_dict with torch.save"));
        }
        if let Some(bo) = read_small_entry(&mut zip, &format!("{prefix}byteorder")) {
            if bo.trim() != "little" {
                return Err(bad(path, format!("byte order `{}` is not supported", bo.trim())));
            }
        }
        let pkl_bytes = {
            let mut entry = zip.by_name(&pkl).map_err(|e| bad(path, format!("cannot open {pkl}: {e}")))?;
            if entry.size() > MAX_PICKLE_BYTES {
                return Err(bad(path, format!("{pkl} is {} bytes, too large for a state dict pickle", entry.size())));
            }
            let mut buf = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut buf).map_err(|e| bad(path, format!("cannot read {pkl}: {e}")))?;
            buf
        };
        let root = parse_pickle(&pkl_bytes).map_err(|r| bad(path, format!("{pkl}: {r}")))?;
        let root_entries = match as_dict(&root) {
            Some(e) => e,
            None => {
                let what = if parse_tensor(&root).is_some() { "a single tensor" } else { "not a dict" };
                return Err(bad(path, format!("the pickled object is {what}, not a state dict")));
            }
        };
        let (top_keys, state_key, entries) = select_state(path, root_entries, choice)?;
        let mut tensors = Vec::new();
        for (k, v) in entries {
            let Some(name) = as_str(k) else { continue };
            match parse_tensor(v) {
                None => {}
                Some(Ok(mut t)) => {
                    t.name = name.to_string();
                    tensors.push(t);
                }
                Some(Err(reason)) => return Err(bad(path, format!("tensor `{name}`: {reason}"))),
            }
        }
        // Check that every storage exists and is large enough, so that later loads only fail on I/O.
        for t in &tensors {
            let entry = format!("{prefix}data/{}", t.storage_key);
            let size = match zip.index_for_name(&entry) {
                Some(i) => zip.by_index_data(i).map(|e| e.size()).unwrap_or(0),
                None => return Err(bad(path, format!("tensor `{}`: storage {entry} is missing", t.name))),
            };
            let need = (t.storage_numel as u64).saturating_mul(t.kind.size as u64);
            if size < need {
                return Err(bad(
                    path,
                    format!("tensor `{}`: storage {entry} holds {size} bytes, {need} expected (truncated?)", t.name),
                ));
            }
        }
        Ok(PthArchive { path: path.to_path_buf(), prefix, top_keys, state_key, tensors, zip: Mutex::new(zip) })
    }

    /// Reads one tensor record, converting it to `dtype` on `device`.
    pub(crate) fn load(&self, t: &PthTensor, dtype: DType, device: &Device) -> Result<Tensor> {
        let path = &self.path;
        let stored = t.kind.dtype.ok_or_else(|| {
            bad(path, format!("tensor `{}` has dtype {}, which candle cannot hold", t.name, t.kind.name))
        })?;
        let numel = checked_numel(&t.shape).unwrap_or(0);
        if numel == 0 {
            return Ok(Tensor::zeros(t.shape.as_slice(), dtype, device)?);
        }
        let es = t.kind.size;
        // Element span touched by the view, relative to the view offset.
        let span = t.shape.iter().zip(&t.stride).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1;
        let mut raw = vec![0u8; span * es];
        {
            let entry = format!("{}data/{}", self.prefix, t.storage_key);
            let mut zip = self.zip.lock().map_err(|_| bad(path, "zip reader poisoned by an earlier panic"))?;
            let io_err = |e: &dyn std::fmt::Display| bad(path, format!("tensor `{}`: reading {entry}: {e}", t.name));
            let stored_method = {
                let f = zip.by_name(&entry).map_err(|e| io_err(&e))?;
                f.compression() == zip::CompressionMethod::Stored
            };
            if stored_method {
                let mut f = zip.by_name_seek(&entry).map_err(|e| io_err(&e))?;
                f.seek(SeekFrom::Start((t.offset * es) as u64)).map_err(|e| io_err(&e))?;
                f.read_exact(&mut raw).map_err(|e| io_err(&e))?;
            } else {
                let mut f = zip.by_name(&entry).map_err(|e| io_err(&e))?;
                std::io::copy(&mut (&mut f).take((t.offset * es) as u64), &mut std::io::sink())
                    .map_err(|e| io_err(&e))?;
                f.read_exact(&mut raw).map_err(|e| io_err(&e))?;
            }
        }
        let bytes = if is_contiguous(&t.shape, &t.stride) { raw } else { gather(&raw, &t.shape, &t.stride, es) };
        let tensor = Tensor::from_raw_buffer(&bytes, stored, &t.shape, device)?;
        Ok(if tensor.dtype() == dtype { tensor } else { tensor.to_dtype(dtype)? })
    }
}

/// Entries of a pickled dict.
type Entries<'a> = &'a [(Object, Object)];

/// Picks the dict holding the tensors. Returns (top-level keys, chosen key, entries).
fn select_state<'a>(
    path: &Path,
    root: Entries<'a>,
    choice: &StateChoice,
) -> Result<(Vec<String>, Option<String>, Entries<'a>)> {
    let direct = tensor_count(root);
    let top_keys: Vec<String> = root.iter().filter_map(|(k, _)| as_str(k).map(str::to_string)).collect();
    let sub = |key: &str| -> Option<Entries<'a>> {
        root.iter().find(|(k, _)| as_str(k) == Some(key)).and_then(|(_, v)| as_dict(v))
    };
    let candidates: Vec<(&str, Entries<'a>)> =
        root.iter().filter_map(|(k, v)| Some((as_str(k)?, as_dict(v)?))).filter(|(_, d)| tensor_count(d) > 0).collect();
    let keys_listing = || {
        if top_keys.is_empty() {
            "none".to_string()
        } else {
            top_keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        }
    };
    if let StateChoice::Key(key) = choice {
        return match sub(key) {
            Some(d) => Ok((top_keys.clone(), Some(key.clone()), d)),
            None => Err(bad(path, format!("no dict under key `{key}`; top-level keys: {}", keys_listing()))),
        };
    }
    if candidates.is_empty() {
        return if direct > 0 {
            // The top level is itself the state dict.
            Ok((Vec::new(), None, root))
        } else {
            Err(bad(path, format!("no tensors found; top-level keys: {}", keys_listing())))
        };
    }
    let preferred: Vec<&str> = match choice {
        StateChoice::Model => MODEL_KEYS.to_vec(),
        StateChoice::Lora => LORA_KEYS.to_vec(),
        _ => MODEL_KEYS.iter().chain(LORA_KEYS).copied().collect(),
    };
    for key in preferred {
        if let Some((k, d)) = candidates.iter().find(|(k, _)| *k == key) {
            return Ok((top_keys.clone(), Some(k.to_string()), d));
        }
    }
    match candidates.as_slice() {
        [(k, d)] => Ok((top_keys.clone(), Some(k.to_string()), d)),
        many => Err(bad(
            path,
            format!(
                "several tensor dicts ({}); choose one explicitly",
                many.iter().map(|(k, _)| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_small_entry(zip: &mut ZipArchive<BufReader<File>>, name: &str) -> Option<String> {
    let mut f = zip.by_name(name).ok()?;
    if f.size() > 64 {
        return None;
    }
    let mut s = String::new();
    f.read_to_string(&mut s).ok()?;
    Some(s)
}

/// True when `stride` is the row-major stride of `shape` (dimensions of size 1 are ignored).
pub(crate) fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

/// Copies a strided view (relative to its first element) into row-major order.
fn gather(raw: &[u8], shape: &[usize], stride: &[usize], es: usize) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..numel {
        let off: usize = idx.iter().zip(stride).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&raw[off * es..(off + 1) * es]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::pickle::{write_archive, Group, StorageMeta, TensorRecord};

    #[test]
    fn strided_views_and_shared_storages_are_read_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.pt");
        // One storage of 12 f32 values 0..12; three views into it.
        let data: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let storages = vec![StorageMeta { key: "0".into(), class: "FloatStorage", numel: 12 }];
        let records = vec![
            // [3,4] row-major.
            TensorRecord {
                name: "full".into(),
                storage_key: "0".into(),
                offset: 0,
                shape: vec![3, 4],
                stride: vec![4, 1],
            },
            // Transpose: [4,3] with stride [1,4].
            TensorRecord {
                name: "t".into(),
                storage_key: "0".into(),
                offset: 0,
                shape: vec![4, 3],
                stride: vec![1, 4],
            },
            // Row 1 (offset 4), 4 elements.
            TensorRecord { name: "row1".into(), storage_key: "0".into(), offset: 4, shape: vec![4], stride: vec![1] },
        ];
        write_archive(&path, &storages, &[Group { key: None, records: &records }], |_| Ok(data.clone())).unwrap();
        let ar = PthArchive::open(&path, &StateChoice::Model).unwrap();
        let get = |n: &str| {
            let t = ar.tensors.iter().find(|t| t.name == n).unwrap();
            ar.load(t, DType::F32, &Device::Cpu).unwrap()
        };
        let full = get("full");
        assert_eq!(get("t").to_vec2::<f32>().unwrap(), full.t().unwrap().to_vec2::<f32>().unwrap());
        assert_eq!(get("row1").to_vec1::<f32>().unwrap(), vec![4.0, 5.0, 6.0, 7.0]);
    }

    #[test]
    fn views_beyond_their_storage_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pt");
        let data: Vec<u8> = (0..4).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let storages = vec![StorageMeta { key: "0".into(), class: "FloatStorage", numel: 4 }];
        let records = vec![TensorRecord {
            name: "x".into(),
            storage_key: "0".into(),
            offset: 2,
            shape: vec![4],
            stride: vec![1],
        }];
        write_archive(&path, &storages, &[Group { key: None, records: &records }], |_| Ok(data.clone())).unwrap();
        let err = PthArchive::open(&path, &StateChoice::Model).unwrap_err().to_string();
        assert!(err.contains("exceeds its storage") && err.contains("`x`"), "{err}");
    }

    #[test]
    fn readers_can_move_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<PthArchive>();
        check::<crate::checkpoint::TensorFiles>();
    }

    #[test]
    fn garbage_pickles_are_errors_not_panics() {
        for pkl in [
            vec![0x80, 0x02, 0x8a, 0xff, 1, 2, 3], // LONG1 with 255 bytes (overflows in candle)
            vec![0x80, 0x02, b'X', 0xff, 0xff, 0xff, 0x7f], // huge BINUNICODE
            vec![0x80, 0x02, b'.'],                // STOP on empty stack
            vec![b'u'],                            // SETITEMS without a mark
        ] {
            assert!(parse_pickle(&pkl).is_err());
        }
    }
}

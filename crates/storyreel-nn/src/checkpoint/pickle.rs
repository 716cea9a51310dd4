//! Writing PyTorch `torch.save` zip archives: a small protocol-2 pickle encoder of our own plus
//! the archive layout PyTorch expects (`archive/data.pkl`, `archive/data/<key>`, `archive/version`).

use super::util::{bad, tensor_le_bytes};
use crate::error::{NnError, Result};
use candle_core::{DType, Tensor};
use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::Path;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// Top-level folder name inside the zip archive.
const ARCHIVE: &str = "archive";
/// Pairs per SETITEMS batch (as CPython's pickler does).
const BATCH: usize = 1000;

/// A storage of the archive: `archive/data/<key>` holding `numel` elements of `class`.
#[derive(Debug, Clone)]
pub(crate) struct StorageMeta {
    /// File name under `archive/data/`.
    pub key: String,
    /// PyTorch legacy storage class (`FloatStorage`, `BFloat16Storage`, ...).
    pub class: &'static str,
    /// Elements in the storage.
    pub numel: usize,
}

/// A tensor of the pickled state dict: a strided view into one storage.
#[derive(Debug, Clone)]
pub(crate) struct TensorRecord {
    /// State-dict key.
    pub name: String,
    /// Key of the storage it views.
    pub storage_key: String,
    /// Offset in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// The PyTorch storage class for a candle dtype.
pub(crate) fn storage_class(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "FloatStorage",
        DType::F64 => "DoubleStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::U8 => "ByteStorage",
        DType::I16 => "ShortStorage",
        DType::I32 => "IntStorage",
        DType::I64 => "LongStorage",
        _ => return None,
    })
}

/// Minimal protocol-2 pickle encoder for nested dicts of tensors.
struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn new() -> Self {
        Pickler { out: vec![0x80, 2] } // PROTO 2
    }

    fn op(&mut self, op: u8) {
        self.out.push(op);
    }

    /// A non-negative integer: BININT1 / BININT2 / BININT, or LONG1 beyond i32.
    fn int(&mut self, v: u64) {
        if v <= 0xff {
            self.out.extend_from_slice(&[b'K', v as u8]);
        } else if v <= 0xffff {
            self.op(b'M');
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as u64 {
            self.op(b'J');
            self.out.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // Minimal little-endian two's complement, with a sign byte when the top bit is set.
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] & 0x80 == 0 {
                bytes.pop();
            }
            if bytes[bytes.len() - 1] & 0x80 != 0 {
                bytes.push(0);
            }
            self.out.extend_from_slice(&[0x8a, bytes.len() as u8]);
            self.out.extend_from_slice(&bytes);
        }
    }

    /// BINUNICODE.
    fn unicode(&mut self, s: &str) {
        self.op(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    /// GLOBAL `module.name`.
    fn global(&mut self, module: &str, name: &str) {
        self.op(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.op(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.op(b'\n');
    }

    /// A tuple of non-negative integers.
    fn int_tuple(&mut self, v: &[usize]) {
        if v.is_empty() {
            self.op(b')'); // EMPTY_TUPLE
            return;
        }
        self.op(b'('); // MARK
        for &x in v {
            self.int(x as u64);
        }
        self.op(b't'); // TUPLE
    }

    /// `collections.OrderedDict()`.
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R'); // REDUCE
    }

    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, r: &TensorRecord, storage: &StorageMeta) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        // Persistent id: ('storage', torch.<Class>, key, 'cpu', numel).
        self.op(b'(');
        self.unicode("storage");
        self.global("torch", storage.class);
        self.unicode(&storage.key);
        self.unicode("cpu");
        self.int(storage.numel as u64);
        self.op(b't');
        self.op(b'Q'); // BINPERSID
        self.int(r.offset as u64);
        self.int_tuple(&r.shape);
        self.int_tuple(&r.stride);
        self.op(0x89); // NEWFALSE: requires_grad
        self.empty_ordered_dict(); // backward_hooks
        self.op(b't');
        self.op(b'R');
    }

    /// An `OrderedDict` of tensors.
    fn state_dict(&mut self, records: &[TensorRecord], storages: &[StorageMeta]) -> std::result::Result<(), String> {
        self.empty_ordered_dict();
        for chunk in records.chunks(BATCH) {
            self.op(b'(');
            for r in chunk {
                let storage = storages
                    .iter()
                    .find(|s| s.key == r.storage_key)
                    .ok_or_else(|| format!("tensor `{}` refers to unknown storage `{}`", r.name, r.storage_key))?;
                self.unicode(&r.name);
                self.tensor(r, storage);
            }
            self.op(b'u'); // SETITEMS
        }
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.op(b'.'); // STOP
        self.out
    }
}

/// A group of tensor records pickled as one state dict; `key` nests it in a top-level dict.
pub(crate) struct Group<'a> {
    /// Top-level key, or `None` for a bare state dict (only valid as the single group).
    pub key: Option<&'a str>,
    /// The tensors of the state dict.
    pub records: &'a [TensorRecord],
}

/// Encodes the `data.pkl` pickle: a bare state dict, or `{key: state_dict, ...}`.
pub(crate) fn encode_pickle(groups: &[Group<'_>], storages: &[StorageMeta]) -> std::result::Result<Vec<u8>, String> {
    let mut p = Pickler::new();
    match groups {
        [Group { key: None, records }] => p.state_dict(records, storages)?,
        _ => {
            p.op(b'}'); // EMPTY_DICT
            p.op(b'(');
            for g in groups {
                let key = g.key.ok_or("a bare state dict cannot be nested with others")?;
                p.unicode(key);
                p.state_dict(g.records, storages)?;
            }
            p.op(b'u');
        }
    }
    Ok(p.finish())
}

/// Writes a complete `torch.save` archive; `data(i)` returns the little-endian bytes of storage `i`.
pub(crate) fn write_archive(
    path: &Path,
    storages: &[StorageMeta],
    groups: &[Group<'_>],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    let pkl = encode_pickle(groups, storages).map_err(|r| bad(path, r))?;
    let partial = path.with_file_name(format!(
        ".{}.partial",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&partial).map_err(|e| NnError::io(&partial, e))?;
        let mut zip = ZipWriter::new(BufWriter::new(file));
        let zerr = |e: zip::result::ZipError| bad(path, format!("writing the zip archive: {e}"));
        let ioerr = |e: std::io::Error| NnError::io(path, e);
        let opts = |len: usize| {
            SimpleFileOptions::default()
                .compression_method(CompressionMethod::Stored)
                .with_alignment(64)
                .large_file(len as u64 >= 0xFFFF_FFFF)
        };
        zip.start_file(format!("{ARCHIVE}/data.pkl"), opts(pkl.len())).map_err(zerr)?;
        zip.write_all(&pkl).map_err(ioerr)?;
        zip.start_file(format!("{ARCHIVE}/byteorder"), opts(6)).map_err(zerr)?;
        zip.write_all(b"little").map_err(ioerr)?;
        for (i, s) in storages.iter().enumerate() {
            let bytes = data(i)?;
            zip.start_file(format!("{ARCHIVE}/data/{}", s.key), opts(bytes.len())).map_err(zerr)?;
            zip.write_all(&bytes).map_err(ioerr)?;
        }
        zip.start_file(format!("{ARCHIVE}/version"), opts(2)).map_err(zerr)?;
        zip.write_all(b"3\n").map_err(ioerr)?;
        let mut inner = zip.finish().map_err(zerr)?;
        inner.flush().map_err(ioerr)?;
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&partial, path).map_err(|e| NnError::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Storage and record for each tensor (one storage per tensor, keys numbered from `first_key`).
fn plan(path: &Path, tensors: &[(String, Tensor)], first_key: usize) -> Result<(Vec<StorageMeta>, Vec<TensorRecord>)> {
    let mut seen = HashSet::new();
    let mut storages = Vec::with_capacity(tensors.len());
    let mut records = Vec::with_capacity(tensors.len());
    for (i, (name, t)) in tensors.iter().enumerate() {
        if !seen.insert(name.as_str()) {
            return Err(bad(path, format!("duplicate tensor name `{name}`")));
        }
        let class = storage_class(t.dtype())
            .ok_or_else(|| bad(path, format!("tensor `{name}`: dtype {:?} has no PyTorch storage type", t.dtype())))?;
        let shape = t.dims().to_vec();
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        let key = (first_key + i).to_string();
        storages.push(StorageMeta { key: key.clone(), class, numel: t.elem_count() });
        records.push(TensorRecord { name: name.clone(), storage_key: key, offset: 0, shape, stride });
    }
    Ok((storages, records))
}

/// Writes tensors as a PyTorch `torch.save` zip archive readable by `torch.load` (also with
/// `weights_only=True`), optionally nested one level as `{wrap_key: state_dict}`.
///
/// Supported dtypes: f32, f64, f16, bf16, u8, i16, i32, i64. Each tensor gets its own storage.
pub fn save_pth(path: &Path, tensors: &[(String, Tensor)], wrap_key: Option<&str>) -> Result<()> {
    let (storages, records) = plan(path, tensors, 0)?;
    let groups = [Group { key: wrap_key, records: &records }];
    write_archive(path, &storages, &groups, |i| Ok(tensor_le_bytes(&tensors[i].1)?))
}

/// Writes several state dicts into one `torch.save` archive as `{key: state_dict, ...}` (for
/// example ShotStream's `{'generator_lora': ..., 'critic_lora': ...}`).
pub fn save_pth_dicts(path: &Path, dicts: &[(&str, &[(String, Tensor)])]) -> Result<()> {
    let mut storages = Vec::new();
    let mut all_records = Vec::new();
    let mut flat: Vec<&Tensor> = Vec::new();
    let mut keys = HashSet::new();
    for (key, tensors) in dicts {
        if !keys.insert(*key) {
            return Err(bad(path, format!("duplicate top-level key `{key}`")));
        }
        let (s, r) = plan(path, tensors, storages.len())?;
        storages.extend(s);
        all_records.push(r);
        flat.extend(tensors.iter().map(|(_, t)| t));
    }
    let groups: Vec<Group<'_>> =
        dicts.iter().zip(&all_records).map(|((k, _), r)| Group { key: Some(k), records: r }).collect();
    write_archive(path, &storages, &groups, |i| Ok(tensor_le_bytes(flat[i])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_use_the_smallest_opcode() {
        let mut p = Pickler::new();
        p.int(7);
        p.int(300);
        p.int(70_000);
        p.int(3_000_000_000);
        p.int(0x80_0000_0000);
        let expected: Vec<u8> = [
            vec![0x80, 2],
            vec![b'K', 7],
            vec![b'M', 0x2c, 0x01],
            vec![b'J', 0x70, 0x11, 0x01, 0x00],
            // 3e9 = 0xB2D05E00: top bit set, so a zero sign byte is appended.
            vec![0x8a, 5, 0x00, 0x5e, 0xd0, 0xb2, 0x00],
            vec![0x8a, 6, 0, 0, 0, 0, 0x80, 0x00],
        ]
        .concat();
        assert_eq!(p.out, expected);
    }
}

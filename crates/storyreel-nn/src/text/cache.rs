//! A cache of caption embeddings keyed by (encoder identity, exact caption text): an in-memory
//! LRU bounded by bytes, optionally backed by a folder with one safetensors file per entry.
//!
//! A file is named by the SHA-256 of identity and text and holds `embeddings` f32
//! `[text_len, dim]`, `length` i64 `[1]` and `truncated` u8 `[1]`, with the identity and the text
//! in its metadata. An entry whose metadata, shapes or dtypes do not match what is asked for (a
//! hash collision, a changed encoder, a foreign file) is ignored and overwritten; a file that
//! cannot be read or parsed is a miss plus a warning, never an error. Files are written to a
//! temporary name and renamed into place, so readers never see half a file.
//!
//! Embeddings come back as f32 tensors on the CPU whether they were just encoded, found in memory
//! or read from disk, so all three are bit-identical.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

use crate::error::{NnError, Result};
use crate::text::{TextEmbedding, TextEncoder};

const FORMAT: &str = "storyreel-text-embedding/1";

/// Counters of what the cache did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Captions found in memory.
    pub memory_hits: u64,
    /// Captions read from the folder.
    pub disk_hits: u64,
    /// Captions the encoder had to encode.
    pub misses: u64,
    /// Calls made to the encoder (one per batch of misses).
    pub encoder_calls: u64,
    /// Files written to the folder.
    pub disk_writes: u64,
}

type Key = (String, String);

struct Entry {
    embedding: TextEmbedding,
    bytes: usize,
    tick: u64,
}

struct Inner {
    entries: HashMap<Key, Entry>,
    /// tick → key, oldest first.
    order: BTreeMap<u64, Key>,
    bytes: usize,
    tick: u64,
    stats: CacheStats,
    warnings: Vec<String>,
}

/// Caption embeddings cached in memory and, optionally, on disk. Safe to share between threads.
pub struct EmbeddingCache {
    dir: Option<PathBuf>,
    max_memory_bytes: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for EmbeddingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingCache")
            .field("dir", &self.dir)
            .field("max_memory_bytes", &self.max_memory_bytes)
            .finish_non_exhaustive()
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl EmbeddingCache {
    /// A cache in memory only, holding at most `max_memory_bytes` of embeddings.
    pub fn in_memory(max_memory_bytes: usize) -> Self {
        Self {
            dir: None,
            max_memory_bytes,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                bytes: 0,
                tick: 0,
                stats: CacheStats::default(),
                warnings: Vec::new(),
            }),
        }
    }

    /// A cache in memory backed by the folder `dir` (created if missing).
    pub fn with_dir(dir: impl Into<PathBuf>, max_memory_bytes: usize) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| NnError::io(&dir, e))?;
        let mut cache = Self::in_memory(max_memory_bytes);
        cache.dir = Some(dir);
        Ok(cache)
    }

    /// The backing folder, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The file an entry lives in (whether or not it exists); `None` without a folder.
    pub fn entry_path(&self, identity: &str, text: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{}.safetensors", entry_hash(identity, text))))
    }

    /// Embeddings of `texts` (in order) from `encoder`, encoding only what is neither in memory
    /// nor on disk, in one batch. Repeated texts are encoded once.
    pub fn get_or_encode(&self, encoder: &dyn TextEncoder, texts: &[&str]) -> Result<Vec<TextEmbedding>> {
        let identity = encoder.identity().to_string();
        let mut out: Vec<Option<TextEmbedding>> = vec![None; texts.len()];
        // Memory.
        let mut pending: Vec<usize> = Vec::new();
        {
            let mut inner = self.lock();
            for (i, text) in texts.iter().enumerate() {
                let key = (identity.clone(), text.to_string());
                if let Some(e) = inner.touch(&key) {
                    out[i] = Some(e);
                    inner.stats.memory_hits += 1;
                } else {
                    pending.push(i);
                }
            }
        }
        // Disk, outside the lock.
        let mut misses: Vec<usize> = Vec::new();
        for &i in &pending {
            match self.load(encoder, &identity, texts[i]) {
                Some(e) => {
                    let mut inner = self.lock();
                    inner.stats.disk_hits += 1;
                    self.insert(&mut inner, (identity.clone(), texts[i].to_string()), e.clone());
                    out[i] = Some(e);
                }
                None => misses.push(i),
            }
        }
        // Encoder, outside the lock, each distinct text once.
        if !misses.is_empty() {
            let mut unique: Vec<&str> = Vec::new();
            for &i in &misses {
                if !unique.contains(&texts[i]) {
                    unique.push(texts[i]);
                }
            }
            let encoded = encoder.encode(&unique)?;
            if encoded.len() != unique.len() {
                return Err(NnError::Input(format!(
                    "text encoder `{identity}` returned {} embeddings for {} captions",
                    encoded.len(),
                    unique.len()
                )));
            }
            let mut fresh: HashMap<&str, TextEmbedding> = HashMap::new();
            for (text, emb) in unique.iter().zip(encoded) {
                let emb = canonical(emb, encoder)?;
                self.store(&identity, text, &emb);
                fresh.insert(text, emb);
            }
            let mut inner = self.lock();
            inner.stats.encoder_calls += 1;
            inner.stats.misses += unique.len() as u64;
            for (text, emb) in &fresh {
                self.insert(&mut inner, (identity.clone(), text.to_string()), emb.clone());
            }
            drop(inner);
            for &i in &misses {
                out[i] = fresh.get(texts[i]).cloned();
            }
        }
        Ok(out.into_iter().map(|e| e.expect("every caption was resolved")).collect())
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// Warnings about unreadable or mismatched cache files since the last call (oldest first).
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().warnings)
    }

    /// Entries held in memory.
    pub fn memory_len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Bytes held in memory (embedding data plus key text).
    pub fn memory_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Drops every in-memory entry (the folder is left alone).
    pub fn clear_memory(&self) {
        let mut inner = self.lock();
        inner.entries.clear();
        inner.order.clear();
        inner.bytes = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is a few plain
        // field writes), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn warn(&self, msg: String) {
        self.lock().warnings.push(msg);
    }

    fn insert(&self, inner: &mut Inner, key: Key, embedding: TextEmbedding) {
        let bytes = embedding.embeddings.elem_count() * 4 + key.0.len() + key.1.len();
        if let Some(old) = inner.entries.remove(&key) {
            inner.order.remove(&old.tick);
            inner.bytes -= old.bytes;
        }
        if bytes > self.max_memory_bytes {
            return;
        }
        while inner.bytes + bytes > self.max_memory_bytes {
            let Some((_, oldest)) = inner.order.pop_first() else { break };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.bytes;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.order.insert(tick, key.clone());
        inner.bytes += bytes;
        inner.entries.insert(key, Entry { embedding, bytes, tick });
    }

    /// Reads an entry from the folder; `None` (with a warning where something is wrong) on a miss.
    fn load(&self, encoder: &dyn TextEncoder, identity: &str, text: &str) -> Option<TextEmbedding> {
        let path = self.entry_path(identity, text)?;
        let buf = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                self.warn(format!("embedding cache: cannot read {}: {e}; re-encoding", path.display()));
                return None;
            }
        };
        match parse_entry(&buf, identity, text, encoder.text_len(), encoder.dim()) {
            Ok(e) => Some(e),
            Err(why) => {
                self.warn(format!("embedding cache: ignoring {}: {why}; re-encoding", path.display()));
                None
            }
        }
    }

    /// Writes an entry to the folder atomically; failures are warnings.
    fn store(&self, identity: &str, text: &str, emb: &TextEmbedding) {
        let Some(path) = self.entry_path(identity, text) else { return };
        let result = serialize_entry(identity, text, emb).and_then(|bytes| write_atomic(&path, &bytes));
        match result {
            Ok(()) => self.lock().stats.disk_writes += 1,
            Err(why) => self.warn(format!("embedding cache: cannot write {}: {why}", path.display())),
        }
    }
}

impl Inner {
    /// The entry for `key`, marked most recently used.
    fn touch(&mut self, key: &Key) -> Option<TextEmbedding> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        self.order.remove(&entry.tick);
        entry.tick = tick;
        self.order.insert(tick, key.clone());
        Some(entry.embedding.clone())
    }
}

/// SHA-256 over the length-prefixed identity and the text, in hex.
fn entry_hash(identity: &str, text: &str) -> String {
    let mut h = Sha256::new();
    h.update((identity.len() as u64).to_le_bytes());
    h.update(identity.as_bytes());
    h.update(text.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The embedding as the cache keeps it: f32 on the CPU, checked against the encoder's geometry.
fn canonical(emb: TextEmbedding, encoder: &dyn TextEncoder) -> Result<TextEmbedding> {
    let want = [encoder.text_len(), encoder.dim()];
    if emb.embeddings.dims() != want {
        return Err(NnError::Input(format!(
            "text encoder `{}` returned embeddings of shape {:?}, expected {want:?}",
            encoder.identity(),
            emb.embeddings.dims()
        )));
    }
    let embeddings = emb.embeddings.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?;
    Ok(TextEmbedding { embeddings, ..emb })
}

fn serialize_entry(identity: &str, text: &str, emb: &TextEmbedding) -> std::result::Result<Vec<u8>, String> {
    let values = emb.embeddings.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())?;
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let length = (emb.length as i64).to_le_bytes();
    let truncated = [emb.truncated as u8];
    let shape = emb.embeddings.dims().to_vec();
    let views = vec![
        ("embeddings", TensorView::new(StDtype::F32, shape, &data).map_err(|e| e.to_string())?),
        ("length", TensorView::new(StDtype::I64, vec![1], &length).map_err(|e| e.to_string())?),
        ("truncated", TensorView::new(StDtype::U8, vec![1], &truncated).map_err(|e| e.to_string())?),
    ];
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("identity".to_string(), identity.to_string()),
        ("text".to_string(), text.to_string()),
    ]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())
}

fn parse_entry(
    buf: &[u8],
    identity: &str,
    text: &str,
    text_len: usize,
    dim: usize,
) -> std::result::Result<TextEmbedding, String> {
    let st = SafeTensors::deserialize(buf).map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let (_, meta) = SafeTensors::read_metadata(buf).map_err(|e| e.to_string())?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err("not a storyreel embedding-cache entry".into());
    }
    if meta.get("identity").map(String::as_str) != Some(identity) {
        return Err("written by a different text encoder".into());
    }
    if meta.get("text").map(String::as_str) != Some(text) {
        return Err("holds a different caption (hash collision)".into());
    }
    let tensor = |name: &str, dtype: StDtype, shape: &[usize]| {
        let view = st.tensor(name).map_err(|e| format!("`{name}`: {e}"))?;
        if view.dtype() != dtype || view.shape() != shape {
            return Err(format!("`{name}` is {:?} {:?}, expected {dtype:?} {shape:?}", view.dtype(), view.shape()));
        }
        Ok(view.data().to_vec())
    };
    let data = tensor("embeddings", StDtype::F32, &[text_len, dim])?;
    let length = i64::from_le_bytes(tensor("length", StDtype::I64, &[1])?.try_into().expect("8 bytes"));
    let truncated = tensor("truncated", StDtype::U8, &[1])?[0];
    if length < 1 || length as usize > text_len || truncated > 1 {
        return Err(format!("bad length {length} or truncated flag {truncated}"));
    }
    let values: Vec<f32> = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let embeddings = Tensor::from_vec(values, (text_len, dim), &Device::Cpu).map_err(|e| e.to_string())?;
    Ok(TextEmbedding { embeddings, length: length as usize, truncated: truncated == 1 })
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::result::Result<(), String> {
    use std::io::Write;
    let dir = path.parent().ok_or("no parent folder")?;
    let name = path.file_name().ok_or("no file name")?.to_string_lossy();
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

//! UMT5 as a [`TextEncoder`]: a model folder's `tokenizer.json` (google/umt5-xxl format) and
//! encoder weights, caption in, `[512, 4096]` embedding out (zero rows after the real length).

use candle_core::{DType, Device};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::tokenize::Umt5Tokenizer;
use super::umt5::{Umt5Config, Umt5Encoder};
use super::{TextEmbedding, TextEncoder};
use crate::error::{NnError, Result};

/// Weight files a text-encoder folder may hold, in order of preference.
const WEIGHT_FILES: [&str; 4] =
    ["models_t5_umt5-xxl-enc-bf16.pth", "model.safetensors", "model.safetensors.index.json", "umt5.safetensors"];

/// Tokenizer + UMT5 encoder.
pub struct Umt5TextEncoder {
    tokenizer: Umt5Tokenizer,
    model: Umt5Encoder,
    identity: String,
}

impl Umt5TextEncoder {
    /// Pairs a tokenizer with an encoder; `identity` keys embedding caches.
    pub fn new(tokenizer: Umt5Tokenizer, model: Umt5Encoder, identity: String) -> Result<Self> {
        let tl = model.config().text_len;
        let tokenizer = if tokenizer.max_len() != tl { tokenizer.with_max_len(tl)? } else { tokenizer };
        Ok(Self { tokenizer, model, identity })
    }

    /// Loads `dir`: `tokenizer.json`, optional `config.json` (Hugging Face `UMT5Config`; else the
    /// sizes come from the tensor shapes) and the weights (Wan's `.pth` or HF safetensors).
    pub fn load(dir: &Path, weight_dtype: DType, compute_dtype: DType, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(NnError::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder")));
        }
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Umt5Tokenizer::from_file(&tok_path)?;
        let cfg_path = dir.join("config.json");
        let cfg = if cfg_path.is_file() { Some(Umt5Config::from_hf_json(&cfg_path)?) } else { None };
        let weights =
            WEIGHT_FILES.iter().map(|n| dir.join(n)).find(|p| p.is_file()).ok_or_else(|| NnError::BadCheckpoint {
                path: dir.to_path_buf(),
                reason: format!("no text-encoder weights (looked for {})", WEIGHT_FILES.join(", ")),
            })?;
        let model = Umt5Encoder::load(&weights, cfg.as_ref(), weight_dtype, compute_dtype, device)?;
        let mut files = vec![tok_path, weights];
        if cfg_path.is_file() {
            files.push(cfg_path);
        }
        let identity = files_identity(&files, compute_dtype)?;
        Self::new(tokenizer, model, identity)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Umt5Tokenizer {
        &self.tokenizer
    }

    /// The encoder.
    pub fn model(&self) -> &Umt5Encoder {
        &self.model
    }
}

impl TextEncoder for Umt5TextEncoder {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn text_len(&self) -> usize {
        self.model.config().text_len
    }

    fn dim(&self) -> usize {
        self.model.config().dim
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<TextEmbedding>> {
        let tokens = self.tokenizer.encode_batch(texts)?;
        let ids: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
        let embeddings = self.model.encode_ids_batch(&ids)?;
        Ok(tokens
            .iter()
            .zip(embeddings)
            .map(|(t, e)| TextEmbedding { embeddings: e, length: t.ids.len(), truncated: t.truncated })
            .collect())
    }
}

/// Identity of a set of files without reading gigabytes: names, sizes, and a hash of the first
/// and last MiB of each (weights files differ there whenever their contents differ in practice),
/// plus the compute dtype (it changes the numbers).
fn files_identity(files: &[PathBuf], compute: DType) -> Result<String> {
    const EDGE: u64 = 1 << 20;
    let mut h = Sha256::new();
    h.update(format!("{compute:?}"));
    for p in files {
        let mut f = std::fs::File::open(p).map_err(|e| NnError::io(p, e))?;
        let len = f.metadata().map_err(|e| NnError::io(p, e))?.len();
        h.update(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        h.update(len.to_le_bytes());
        let mut buf = vec![0u8; EDGE.min(len) as usize];
        f.read_exact(&mut buf).map_err(|e| NnError::io(p, e))?;
        h.update(&buf);
        if len > EDGE {
            let tail = EDGE.min(len - EDGE);
            f.seek(SeekFrom::End(-(tail as i64))).map_err(|e| NnError::io(p, e))?;
            let mut buf = vec![0u8; tail as usize];
            f.read_exact(&mut buf).map_err(|e| NnError::io(p, e))?;
            h.update(&buf);
        }
    }
    let d = h.finalize();
    Ok(format!("umt5:{}", d.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>()))
}

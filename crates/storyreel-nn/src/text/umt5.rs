//! The UMT5 encoder as Wan2.1 uses it (UMT5-XXL: 24 layers, width 4096, 64 heads of 64, gated-GELU
//! FFN of 10240, a relative-position table in every layer, no biases, no attention scaling).
//!
//! * Weights: Wan's `models_t5_umt5-xxl-enc-bf16.pth` names (`token_embedding.weight`,
//!   `blocks.i.…`, `norm.weight`) or Hugging Face `UMT5EncoderModel` names (`shared.weight`,
//!   `encoder.block.i.layer.…`, `encoder.final_layer_norm.weight`), in one or several files of any
//!   stored float dtype. Tensors are held in a chosen *weight* dtype (bf16 keeps UMT5-XXL at ≈11 GB)
//!   and converted to the *compute* dtype one matrix at a time, just before use.
//! * Forward: RMS norms and softmax in f32 as the reference; with f32 compute everything is f32.
//! * Output: [`Umt5Encoder::encode_ids`] runs the real tokens only (the reference masks padded
//!   keys, so its real rows do not depend on padding) and zero-pads to `text_len` rows.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::checkpoint::{save_pth, save_safetensors, TensorFiles};
use crate::error::{NnError, Result};
use crate::fused::gelu_tanh;

/// Shape of a UMT5 encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Umt5Config {
    /// Rows of the token embedding.
    pub vocab: usize,
    /// Model width (`d_model`).
    pub dim: usize,
    /// Attention inner width (`num_heads · d_kv`).
    pub dim_attn: usize,
    /// FFN hidden width (`d_ff`).
    pub dim_ffn: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Relative-position buckets (both directions together).
    pub num_buckets: usize,
    /// Distance from which all positions share the last bucket.
    pub max_distance: usize,
    /// RMS norm epsilon.
    pub eps: f64,
    /// Rows of every output (tokens after padding).
    pub text_len: usize,
}

impl Umt5Config {
    /// UMT5-XXL as Wan2.1 uses it.
    pub fn umt5_xxl() -> Self {
        Self {
            vocab: 256_384,
            dim: 4096,
            dim_attn: 4096,
            dim_ffn: 10_240,
            num_heads: 64,
            num_layers: 24,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
            text_len: 512,
        }
    }

    /// A small model for tests.
    pub fn tiny() -> Self {
        Self {
            vocab: 100,
            dim: 32,
            dim_attn: 32,
            dim_ffn: 48,
            num_heads: 4,
            num_layers: 2,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
            text_len: 16,
        }
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.dim_attn / self.num_heads.max(1)
    }

    /// Checks that the sizes are usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NnError::Config(m));
        if self.vocab == 0 || self.dim == 0 || self.dim_ffn == 0 || self.num_heads == 0 || self.text_len == 0 {
            return bad(format!("UMT5 sizes must be positive: {self:?}"));
        }
        if self.dim_attn == 0 || !self.dim_attn.is_multiple_of(self.num_heads) {
            return bad(format!("attention width {} is not a multiple of {} heads", self.dim_attn, self.num_heads));
        }
        if self.num_buckets < 4 || !self.num_buckets.is_multiple_of(2) {
            return bad(format!("relative-position buckets must be even and ≥ 4, got {}", self.num_buckets));
        }
        if self.max_distance <= self.num_buckets / 4 {
            return bad(format!("max_distance {} must exceed {}", self.max_distance, self.num_buckets / 4));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return bad(format!("eps must be positive, got {}", self.eps));
        }
        Ok(())
    }

    /// Reads a Hugging Face `UMT5Config` / `T5Config` JSON text (`vocab_size`, `d_model`, `d_kv`,
    /// `d_ff`, `num_heads`, `num_layers`, `relative_attention_num_buckets`,
    /// `relative_attention_max_distance`, `layer_norm_epsilon`). `text_len` is 512.
    pub fn from_hf_json_str(text: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| NnError::Config(format!("UMT5 config.json: {e}")))?;
        let int = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| NnError::Config(format!("UMT5 config.json: `{k}` is missing or not an integer")))
        };
        let int_or = |k: &str, d: usize| -> Result<usize> {
            if v.get(k).is_some() {
                int(k)
            } else {
                Ok(d)
            }
        };
        let num_heads = int("num_heads")?;
        let cfg = Self {
            vocab: int("vocab_size")?,
            dim: int("d_model")?,
            dim_attn: num_heads * int("d_kv")?,
            dim_ffn: int("d_ff")?,
            num_heads,
            num_layers: int("num_layers")?,
            num_buckets: int_or("relative_attention_num_buckets", 32)?,
            max_distance: int_or("relative_attention_max_distance", 128)?,
            eps: v.get("layer_norm_epsilon").and_then(serde_json::Value::as_f64).unwrap_or(1e-6),
            text_len: 512,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` file (see [`Umt5Config::from_hf_json_str`]).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))?;
        Self::from_hf_json_str(&text)
    }

    /// Infers the sizes from tensor shapes under Wan names (`max_distance` 128, `eps` 1e-6 and
    /// `text_len` 512 cannot be inferred and take Wan's values).
    pub fn infer(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let get2 = |n: &str| -> Result<(usize, usize)> {
            match shapes.get(n).map(Vec::as_slice) {
                Some(&[a, b]) => Ok((a, b)),
                Some(s) => Err(NnError::Config(format!("tensor `{n}` has shape {s:?}, expected a matrix"))),
                None => Err(NnError::MissingTensor { name: n.to_string(), expected: vec![] }),
            }
        };
        let (vocab, dim) = get2("token_embedding.weight")?;
        let mut num_layers = 0;
        while shapes.contains_key(&format!("blocks.{num_layers}.attn.q.weight")) {
            num_layers += 1;
        }
        if num_layers == 0 {
            return Err(NnError::MissingTensor { name: "blocks.0.attn.q.weight".into(), expected: vec![] });
        }
        let (dim_attn, _) = get2("blocks.0.attn.q.weight")?;
        let (dim_ffn, _) = get2("blocks.0.ffn.fc1.weight")?;
        let (num_buckets, num_heads) = get2("blocks.0.pos_embedding.embedding.weight")?;
        let cfg = Self {
            vocab,
            dim,
            dim_attn,
            dim_ffn,
            num_heads,
            num_layers,
            num_buckets,
            max_distance: 128,
            eps: 1e-6,
            text_len: 512,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every tensor of the encoder under Wan names, with its shape, in load order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, a, f) = (self.dim, self.dim_attn, self.dim_ffn);
        let mut out = vec![("token_embedding.weight".to_string(), vec![self.vocab, d])];
        for i in 0..self.num_layers {
            let p = format!("blocks.{i}.");
            out.push((format!("{p}norm1.weight"), vec![d]));
            for m in ["q", "k", "v"] {
                out.push((format!("{p}attn.{m}.weight"), vec![a, d]));
            }
            out.push((format!("{p}attn.o.weight"), vec![d, a]));
            out.push((format!("{p}pos_embedding.embedding.weight"), vec![self.num_buckets, self.num_heads]));
            out.push((format!("{p}norm2.weight"), vec![d]));
            out.push((format!("{p}ffn.gate.0.weight"), vec![f, d]));
            out.push((format!("{p}ffn.fc1.weight"), vec![f, d]));
            out.push((format!("{p}ffn.fc2.weight"), vec![d, f]));
        }
        out.push(("norm.weight".to_string(), vec![d]));
        out
    }
}

/// The bidirectional T5 bucket of a relative position `rel = key − query`: the upper half of the
/// buckets is for keys after the query; within a half, distances below a quarter of `num_buckets`
/// have their own bucket and larger ones are binned logarithmically up to `max_distance`.
/// Computed in f32 as the reference (and Hugging Face) do.
pub fn relative_position_bucket(rel: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let base = if rel > 0 { half } else { 0 };
    let a = rel.unsigned_abs() as usize;
    let max_exact = half / 2;
    if a < max_exact {
        return base + a;
    }
    let scale = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let large = ((a as f32 / max_exact as f32).ln() / scale * (half - max_exact) as f32) as usize;
    base + (max_exact + large).min(half - 1)
}

/// Naming scheme of a UMT5 checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Umt5Layout {
    /// Wan's `models_t5_umt5-xxl-enc-bf16.pth`: `token_embedding.weight`, `blocks.i.…`, `norm.weight`.
    Wan,
    /// Hugging Face `UMT5EncoderModel`: `shared.weight`, `encoder.block.i.layer.…`, `encoder.final_layer_norm.weight`.
    HuggingFace,
}

/// The Wan name of a Hugging Face `UMT5EncoderModel` tensor name (`None` when it is not one).
pub fn hf_to_wan_name(name: &str) -> Option<String> {
    match name {
        "shared.weight" | "encoder.embed_tokens.weight" => return Some("token_embedding.weight".into()),
        "encoder.final_layer_norm.weight" => return Some("norm.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("encoder.block.")?;
    let (i, rest) = rest.split_once('.')?;
    i.parse::<usize>().ok()?;
    let tail = match rest {
        "layer.0.layer_norm.weight" => "norm1.weight",
        "layer.0.SelfAttention.q.weight" => "attn.q.weight",
        "layer.0.SelfAttention.k.weight" => "attn.k.weight",
        "layer.0.SelfAttention.v.weight" => "attn.v.weight",
        "layer.0.SelfAttention.o.weight" => "attn.o.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight" => "pos_embedding.embedding.weight",
        "layer.1.layer_norm.weight" => "norm2.weight",
        "layer.1.DenseReluDense.wi_0.weight" => "ffn.gate.0.weight",
        "layer.1.DenseReluDense.wi_1.weight" => "ffn.fc1.weight",
        "layer.1.DenseReluDense.wo.weight" => "ffn.fc2.weight",
        _ => return None,
    };
    Some(format!("blocks.{i}.{tail}"))
}

/// The Hugging Face `UMT5EncoderModel` name of a Wan tensor name (`None` when it is not one).
pub fn wan_to_hf_name(name: &str) -> Option<String> {
    match name {
        "token_embedding.weight" => return Some("shared.weight".into()),
        "norm.weight" => return Some("encoder.final_layer_norm.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blocks.")?;
    let (i, rest) = rest.split_once('.')?;
    i.parse::<usize>().ok()?;
    let tail = match rest {
        "norm1.weight" => "layer.0.layer_norm.weight",
        "attn.q.weight" => "layer.0.SelfAttention.q.weight",
        "attn.k.weight" => "layer.0.SelfAttention.k.weight",
        "attn.v.weight" => "layer.0.SelfAttention.v.weight",
        "attn.o.weight" => "layer.0.SelfAttention.o.weight",
        "pos_embedding.embedding.weight" => "layer.0.SelfAttention.relative_attention_bias.weight",
        "norm2.weight" => "layer.1.layer_norm.weight",
        "ffn.gate.0.weight" => "layer.1.DenseReluDense.wi_0.weight",
        "ffn.fc1.weight" => "layer.1.DenseReluDense.wi_1.weight",
        "ffn.fc2.weight" => "layer.1.DenseReluDense.wo.weight",
        _ => return None,
    };
    Some(format!("encoder.block.{i}.{tail}"))
}

/// One encoder layer. Matrices are held in the weight dtype; norms and position tables in f32.
#[derive(Debug, Clone)]
struct Layer {
    norm1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    /// `[num_buckets, num_heads]`.
    pos: Tensor,
    norm2: Tensor,
    gate: Tensor,
    fc1: Tensor,
    fc2: Tensor,
}

/// The UMT5 encoder (see the module docs).
#[derive(Debug, Clone)]
pub struct Umt5Encoder {
    cfg: Umt5Config,
    /// `[vocab, dim]` in the weight dtype; rows are gathered, the table is never converted whole.
    embedding: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    weight_dtype: DType,
    compute_dtype: DType,
    device: Device,
    /// Largest temporary in elements (see [`BLOCK_ELEMS`]); smaller in unit tests.
    block_elems: usize,
}

fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::BF16 | DType::F16 | DType::F64)
}

/// Weight files of a path: a file, a `*.index.json`, or a folder (its shard index, else its
/// `*.safetensors` files, else its single `*.pth`/`*.pt`/`*.bin`).
fn open_path(path: &Path) -> Result<Vec<TensorFiles>> {
    if !path.is_dir() {
        return Ok(vec![TensorFiles::open(path)?]);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| NnError::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let ends = |p: &PathBuf, s: &str| p.file_name().map(|n| n.to_string_lossy().ends_with(s)).unwrap_or(false);
    if let Some(index) = names.iter().find(|p| ends(p, ".safetensors.index.json")) {
        return Ok(vec![TensorFiles::open(index)?]);
    }
    let st: Vec<&PathBuf> = names.iter().filter(|p| ends(p, ".safetensors")).collect();
    if !st.is_empty() {
        return st.into_iter().map(|p| TensorFiles::open(p)).collect();
    }
    let pt: Vec<&PathBuf> = names.iter().filter(|p| ends(p, ".pth") || ends(p, ".pt") || ends(p, ".bin")).collect();
    match pt.as_slice() {
        [one] => Ok(vec![TensorFiles::open(one)?]),
        [] => Err(NnError::BadCheckpoint { path: path.into(), reason: "no UMT5 weights in this folder".into() }),
        _ => Err(NnError::BadCheckpoint {
            path: path.into(),
            reason: "several PyTorch files in this folder: pass the UMT5 one".into(),
        }),
    }
}

/// Converts a bf16/f16 CPU tensor to f32 on all cores (candle's conversion is single-threaded).
fn to_f32(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        return Ok(t.clone());
    }
    if !matches!(t.device(), Device::Cpu) || !matches!(t.dtype(), DType::BF16 | DType::F16) {
        return Ok(t.to_dtype(DType::F32)?);
    }
    let t = t.contiguous()?;
    let n = t.elem_count();
    let mut out = vec![0f32; n];
    {
        let (storage, layout) = t.storage_and_layout();
        let start = layout.start_offset();
        const CHUNK: usize = 1 << 16;
        match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::BF16(v)) => {
                out.par_chunks_mut(CHUNK).zip(v[start..start + n].par_chunks(CHUNK)).for_each(|(o, s)| {
                    for (a, b) in o.iter_mut().zip(s) {
                        *a = b.to_f32();
                    }
                })
            }
            candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)) => {
                out.par_chunks_mut(CHUNK).zip(v[start..start + n].par_chunks(CHUNK)).for_each(|(o, s)| {
                    for (a, b) in o.iter_mut().zip(s) {
                        *a = b.to_f32();
                    }
                })
            }
            _ => return Ok(t.to_dtype(DType::F32)?),
        }
    }
    Ok(Tensor::from_vec(out, t.shape(), t.device())?)
}

impl Umt5Encoder {
    /// Loads weights from a file, a shard index or a folder (Wan or Hugging Face names; see
    /// [`Umt5Encoder::load_files`]).
    pub fn load(
        path: &Path,
        cfg: Option<&Umt5Config>,
        weight_dtype: DType,
        compute_dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::from_tensor_files(open_path(path)?, cfg, weight_dtype, compute_dtype, device)
    }

    /// Loads weights spread over several files. With `cfg` `None` the sizes are inferred from the
    /// tensor shapes. Tensors are held in `weight_dtype` and computed in `compute_dtype` (f32 or
    /// bf16). Errors name the first mismatched, missing or unexpected tensor (Wan names for
    /// mismatched and missing ones, stored names for unexpected ones). In a Hugging Face file,
    /// `decoder.*` and `lm_head.*` tensors (a full UMT5 model) are skipped.
    pub fn load_files(
        paths: &[PathBuf],
        cfg: Option<&Umt5Config>,
        weight_dtype: DType,
        compute_dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let files = paths.iter().map(|p| TensorFiles::open(p)).collect::<Result<Vec<_>>>()?;
        Self::from_tensor_files(files, cfg, weight_dtype, compute_dtype, device)
    }

    fn from_tensor_files(
        files: Vec<TensorFiles>,
        cfg: Option<&Umt5Config>,
        weight_dtype: DType,
        compute_dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        check_dtypes(weight_dtype, compute_dtype)?;
        let hf =
            files.iter().flat_map(|f| f.headers()).any(|h| h.name.starts_with("encoder.") || h.name == "shared.weight");
        // Wan name → (file, stored name, shape).
        let mut index: BTreeMap<String, (usize, String, Vec<usize>)> = BTreeMap::new();
        let mut unexpected: Vec<(String, Vec<usize>)> = Vec::new();
        for (fi, f) in files.iter().enumerate() {
            for h in f.headers() {
                let canon = if hf {
                    if h.name.starts_with("decoder.") || h.name.starts_with("lm_head.") {
                        continue;
                    }
                    hf_to_wan_name(&h.name)
                } else {
                    Some(h.name.clone())
                };
                let Some(canon) = canon else {
                    unexpected.push((h.name.clone(), h.shape.clone()));
                    continue;
                };
                if let Some((_, prev, prev_shape)) = index.get(&canon) {
                    // HF files may store the tied embedding twice (`shared` and `encoder.embed_tokens`).
                    if canon == "token_embedding.weight" && *prev_shape == h.shape {
                        continue;
                    }
                    return Err(NnError::BadCheckpoint {
                        path: f.files()[h.file].clone(),
                        reason: format!("`{prev}` and `{}` both map to UMT5 tensor `{canon}`", h.name),
                    });
                }
                index.insert(canon, (fi, h.name.clone(), h.shape.clone()));
            }
        }
        let shapes: BTreeMap<String, Vec<usize>> = index.iter().map(|(n, (_, _, s))| (n.clone(), s.clone())).collect();
        let cfg = match cfg {
            Some(c) => {
                c.validate()?;
                c.clone()
            }
            None => Umt5Config::infer(&shapes)?,
        };
        let expected = cfg.tensor_shapes();
        crate::checkpoint::check_expected_tensors(&expected, &shapes)?;
        let known: std::collections::HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        for (canon, (_, stored, shape)) in &index {
            if !known.contains(canon.as_str()) {
                unexpected.push((stored.clone(), shape.clone()));
            }
        }
        if let Some((first, shape)) = unexpected.first() {
            return Err(NnError::UnexpectedTensors {
                count: unexpected.len(),
                first: first.clone(),
                shape: shape.clone(),
            });
        }
        for (name, (fi, stored, _)) in &index {
            let dt = files[*fi].header(stored).map(|h| h.dtype.clone()).unwrap_or_default();
            if !["f32", "bf16", "f16", "f64"].contains(&dt.as_str()) {
                return Err(NnError::BadCheckpoint {
                    path: files[*fi].files()[0].clone(),
                    reason: format!("tensor `{name}` is stored as {dt}, not a float type"),
                });
            }
        }
        let mut tensors: HashMap<String, Tensor> = HashMap::with_capacity(index.len());
        for (name, (fi, stored, _)) in &index {
            let small = name.ends_with("norm1.weight")
                || name.ends_with("norm2.weight")
                || name == "norm.weight"
                || name.ends_with("pos_embedding.embedding.weight");
            let dt = if small { DType::F32 } else { weight_dtype };
            tensors.insert(name.clone(), files[*fi].load(stored, dt, device)?);
        }
        Self::from_tensors(cfg, tensors, weight_dtype, compute_dtype, device)
    }

    /// Builds an encoder from tensors under Wan names (shapes must match `cfg`).
    pub fn from_tensors(
        cfg: Umt5Config,
        mut tensors: HashMap<String, Tensor>,
        weight_dtype: DType,
        compute_dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        check_dtypes(weight_dtype, compute_dtype)?;
        let found: BTreeMap<String, Vec<usize>> = tensors.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
        crate::checkpoint::check_tensor_shapes(&cfg.tensor_shapes(), &found)?;
        let mut take = |name: String, small: bool| -> Result<Tensor> {
            let t = tensors.remove(&name).expect("checked above");
            let dt = if small { DType::F32 } else { weight_dtype };
            Ok(t.to_device(device)?.to_dtype(dt)?)
        };
        let embedding = take("token_embedding.weight".into(), false)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("blocks.{i}.");
            layers.push(Layer {
                norm1: take(format!("{p}norm1.weight"), true)?,
                q: take(format!("{p}attn.q.weight"), false)?,
                k: take(format!("{p}attn.k.weight"), false)?,
                v: take(format!("{p}attn.v.weight"), false)?,
                o: take(format!("{p}attn.o.weight"), false)?,
                pos: take(format!("{p}pos_embedding.embedding.weight"), true)?,
                norm2: take(format!("{p}norm2.weight"), true)?,
                gate: take(format!("{p}ffn.gate.0.weight"), false)?,
                fc1: take(format!("{p}ffn.fc1.weight"), false)?,
                fc2: take(format!("{p}ffn.fc2.weight"), false)?,
            });
        }
        let norm = take("norm.weight".into(), true)?;
        Ok(Self {
            cfg,
            embedding,
            layers,
            norm,
            weight_dtype,
            compute_dtype,
            device: device.clone(),
            block_elems: BLOCK_ELEMS,
        })
    }

    /// A randomly initialised encoder (the reference's init scales; norms near 1), deterministic in
    /// `seed`. Weights are held in `weight_dtype`, computed in `compute_dtype`.
    pub fn random(
        cfg: &Umt5Config,
        seed: u64,
        weight_dtype: DType,
        compute_dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        cfg.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (d, a, f) = (cfg.dim as f64, cfg.dim_attn as f64, cfg.dim_ffn as f64);
        let mut tensors = HashMap::new();
        for (name, shape) in cfg.tensor_shapes() {
            let (mean, std) = if name.contains("norm") {
                (1.0, 0.1)
            } else if name == "token_embedding.weight" {
                (0.0, 1.0)
            } else if name.ends_with("attn.q.weight") {
                (0.0, (d * a).powf(-0.5))
            } else if name.ends_with("attn.o.weight") {
                (0.0, a.powf(-0.5))
            } else if name.ends_with("ffn.fc2.weight") {
                (0.0, f.powf(-0.5))
            } else if name.contains("pos_embedding") {
                (0.0, 0.5)
            } else {
                (0.0, d.powf(-0.5))
            };
            // A per-tensor seed keeps generation cheap (uniform with the normal's std) and reproducible.
            let sub: u64 = rng.random();
            let t = random_tensor(&shape, mean, std, sub, weight_dtype, device)?;
            tensors.insert(name, t);
        }
        Self::from_tensors(cfg.clone(), tensors, weight_dtype, compute_dtype, device)
    }

    /// Saves the weights (in the weight dtype) under `layout`'s names; `.safetensors` or
    /// `.pth`/`.pt`/`.bin` (a `torch.save` state dict) by extension.
    pub fn save(&self, path: &Path, layout: Umt5Layout) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::new();
        named.push(("token_embedding.weight".into(), self.embedding.clone()));
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("blocks.{i}.");
            for (n, t) in [
                ("norm1.weight", &l.norm1),
                ("attn.q.weight", &l.q),
                ("attn.k.weight", &l.k),
                ("attn.v.weight", &l.v),
                ("attn.o.weight", &l.o),
                ("pos_embedding.embedding.weight", &l.pos),
                ("norm2.weight", &l.norm2),
                ("ffn.gate.0.weight", &l.gate),
                ("ffn.fc1.weight", &l.fc1),
                ("ffn.fc2.weight", &l.fc2),
            ] {
                named.push((format!("{p}{n}"), t.clone()));
            }
        }
        named.push(("norm.weight".into(), self.norm.clone()));
        if layout == Umt5Layout::HuggingFace {
            for (n, _) in named.iter_mut() {
                *n = wan_to_hf_name(n).expect("every Wan name has a Hugging Face name");
            }
        }
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "safetensors" => save_safetensors(path, &named.into_iter().collect()),
            "pth" | "pt" | "bin" => save_pth(path, &named, None),
            _ => Err(NnError::BadCheckpoint {
                path: path.into(),
                reason: "unknown extension: use .safetensors, .pth, .pt or .bin".into(),
            }),
        }
    }

    /// The sizes.
    pub fn config(&self) -> &Umt5Config {
        &self.cfg
    }

    /// Dtype the weights are held in.
    pub fn weight_dtype(&self) -> DType {
        self.weight_dtype
    }

    /// Dtype the matrix products run in.
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// Device of the weights and of the computation.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes one tokenised caption (EOS included, no padding): `[text_len, dim]` f32 whose rows
    /// from `ids.len()` on are exactly zero. Errors on empty input, more than `text_len` ids, or ids
    /// outside the vocabulary.
    pub fn encode_ids(&self, ids: &[u32]) -> Result<Tensor> {
        self.check_ids(ids)?;
        let h = self.forward_padded(&[ids], ids.len())?;
        self.zero_pad(&h.squeeze(0)?)
    }

    /// Encodes several captions in one pass (padded to the longest, padded keys masked, so each
    /// result equals [`Umt5Encoder::encode_ids`] of its caption up to rounding); one `[text_len, dim]`
    /// tensor each. Weights are converted once per pass instead of once per caption.
    pub fn encode_ids_batch(&self, batch: &[&[u32]]) -> Result<Vec<Tensor>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for ids in batch {
            self.check_ids(ids)?;
        }
        let len = batch.iter().map(|b| b.len()).max().unwrap_or(0);
        let h = self.forward_padded(batch, len)?;
        batch.iter().enumerate().map(|(b, ids)| self.zero_pad(&h.get(b)?.narrow(0, 0, ids.len())?)).collect()
    }

    /// The reference's padded forward: each sequence padded with id 0 to `len` tokens, keys past its
    /// length masked; returns `[B, len, dim]` f32 for every position (padded rows included, as the
    /// reference computes them).
    pub fn forward_padded(&self, batch: &[&[u32]], len: usize) -> Result<Tensor> {
        let cfg = &self.cfg;
        if batch.is_empty() {
            return Err(NnError::Input("UMT5: nothing to encode".into()));
        }
        for ids in batch {
            if ids.is_empty() {
                return Err(NnError::Input("UMT5: empty token sequence (it should at least hold EOS)".into()));
            }
            if ids.len() > len {
                return Err(NnError::Input(format!("UMT5: {} ids do not fit {len} positions", ids.len())));
            }
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= cfg.vocab) {
                return Err(NnError::Input(format!("UMT5: token id {bad} is outside the vocabulary of {}", cfg.vocab)));
            }
        }
        let b = batch.len();
        let mut flat = Vec::with_capacity(b * len);
        for ids in batch {
            flat.extend_from_slice(ids);
            flat.extend(std::iter::repeat_n(0u32, len - ids.len()));
        }
        let cd = self.compute_dtype;
        let idx = Tensor::from_vec(flat, b * len, &self.device)?;
        let mut x = self.embedding.index_select(&idx, 0)?.to_dtype(cd)?; // [B·L, dim]
                                                                         // Additive mask over keys: 0 for real tokens, the dtype's minimum for padding (as the reference).
        let masked = batch.iter().any(|ids| ids.len() < len);
        let mask = if masked {
            let mut m = vec![0f32; b * len];
            for (bi, ids) in batch.iter().enumerate() {
                for v in &mut m[bi * len + ids.len()..(bi + 1) * len] {
                    *v = f32::MIN;
                }
            }
            Some(Tensor::from_vec(m, (b, 1, 1, len), &self.device)?)
        } else {
            None
        };
        let buckets: Vec<u32> = (0..len)
            .flat_map(|i| {
                (0..len).map(move |j| {
                    relative_position_bucket(j as i64 - i as i64, cfg.num_buckets, cfg.max_distance) as u32
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, len * len, &self.device)?;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, b, len, &buckets, mask.as_ref())?;
        }
        let x = crate::norm::rms_norm(&x, &self.norm, cfg.eps)?;
        Ok(x.reshape((b, len, cfg.dim))?)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.len() > self.cfg.text_len {
            return Err(NnError::Input(format!(
                "UMT5: {} ids exceed text_len {} (truncate when tokenising)",
                ids.len(),
                self.cfg.text_len
            )));
        }
        Ok(())
    }

    fn zero_pad(&self, h: &Tensor) -> Result<Tensor> {
        let (n, d) = h.dims2()?;
        let h = h.to_dtype(DType::F32)?;
        if n == self.cfg.text_len {
            return Ok(h);
        }
        let z = Tensor::zeros((self.cfg.text_len - n, d), DType::F32, h.device())?;
        Ok(Tensor::cat(&[&h, &z], 0)?)
    }

    /// x `[N, in]` (compute dtype) times `w` `[out, in]` transposed, in the compute dtype. A weight
    /// held in another dtype is converted in blocks of rows of at most [`BLOCK_ELEMS`] elements, so
    /// the converted copies are small, short-lived allocations the allocator reuses (whole-matrix
    /// copies of UMT5-XXL's 40–170 MB would be fresh pages, faulted in and zeroed every time).
    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let cd = self.compute_dtype;
        if w.dtype() == cd {
            return Ok(x.matmul(&w.t()?)?);
        }
        let convert = |w: &Tensor| -> Result<Tensor> {
            if cd == DType::F32 {
                to_f32(w)
            } else {
                Ok(w.to_dtype(cd)?)
            }
        };
        let (out, inp) = w.dims2()?;
        let rows = (self.block_elems / inp.max(1)).max(1);
        if rows >= out {
            return Ok(x.matmul(&convert(w)?.t()?)?);
        }
        let mut parts = Vec::with_capacity(out.div_ceil(rows));
        for start in (0..out).step_by(rows) {
            let wb = convert(&w.narrow(0, start, rows.min(out - start))?)?;
            parts.push(x.matmul(&wb.t()?)?);
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// RMS(x)·w: normalised in f32, cast to the compute dtype, then scaled by w (the reference's order).
    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        if self.compute_dtype == DType::F32 {
            return crate::norm::rms_norm(x, w, self.cfg.eps);
        }
        let ones = Tensor::ones(w.dims1()?, DType::F32, x.device())?;
        let n = crate::norm::rms_norm(x, &ones, self.cfg.eps)?.to_dtype(self.compute_dtype)?;
        Ok(n.broadcast_mul(&w.to_dtype(self.compute_dtype)?)?)
    }

    fn layer_forward(
        &self,
        l: &Layer,
        x: &Tensor,
        b: usize,
        len: usize,
        buckets: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let cd = self.compute_dtype;
        let (h, hd) = (cfg.num_heads, cfg.head_dim());
        // Attention.
        let n = self.rms(x, &l.norm1)?;
        let heads = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((b, len, h, hd))?.transpose(1, 2)?.contiguous()?) };
        let q = heads(self.matmul(&n, &l.q)?)?;
        let k = heads(self.matmul(&n, &l.k)?)?;
        let v = heads(self.matmul(&n, &l.v)?)?;
        drop(n);
        // Heads run in groups whose score tensors stay within BLOCK_ELEMS elements (see `matmul`).
        let group = (self.block_elems / (b * len * len).max(1)).clamp(1, h);
        // The transposed table [H, buckets]: gathering from it writes the bias head-major.
        let table = l.pos.t()?.contiguous()?;
        let mut outs = Vec::with_capacity(h.div_ceil(group));
        for h0 in (0..h).step_by(group) {
            let hs = group.min(h - h0);
            // Position bias [1, hs, L, L] (+ the key mask), in the compute dtype.
            let bias = table.narrow(0, h0, hs)?.index_select(buckets, 1)?.reshape((1, hs, len, len))?;
            let bias = match mask {
                Some(m) => bias.broadcast_add(m)?, // f32: the minimum stays finite or -inf; exp gives 0
                None => bias,
            }
            .to_dtype(cd)?;
            let (qg, kg, vg) = (q.narrow(1, h0, hs)?, k.narrow(1, h0, hs)?, v.narrow(1, h0, hs)?);
            let scores = qg.matmul(&kg.t()?)?.broadcast_add(&bias)?; // no 1/√d scaling in T5
            drop(bias);
            let p = crate::attention::softmax_last_dim(&scores.to_dtype(DType::F32)?.contiguous()?)?.to_dtype(cd)?;
            drop(scores);
            outs.push(p.matmul(&vg)?);
        }
        let att = Tensor::cat(&outs, 1)?.transpose(1, 2)?.reshape((b * len, cfg.dim_attn))?;
        let x = (x + self.matmul(&att, &l.o)?)?;
        // Gated-GELU FFN.
        let n = self.rms(&x, &l.norm2)?;
        let g = self.matmul(&n, &l.gate)?;
        let g = if cd == DType::F32 { gelu_tanh(&g)? } else { g.gelu()? };
        let u = (self.matmul(&n, &l.fc1)? * g)?;
        drop(n);
        Ok((x + self.matmul(&u, &l.fc2)?)?)
    }
}

/// Largest temporary (converted weight block, attention scores of a head group), in elements.
const BLOCK_ELEMS: usize = 4 << 20;

fn check_dtypes(weight: DType, compute: DType) -> Result<()> {
    if !is_float(weight) {
        return Err(NnError::Config(format!("UMT5 weights must be a float dtype, not {weight:?}")));
    }
    if !matches!(compute, DType::F32 | DType::BF16) {
        return Err(NnError::Config(format!("UMT5 computes in f32 or bf16, not {compute:?}")));
    }
    Ok(())
}

/// A tensor of uniform noise with the given mean and standard deviation, generated on all cores
/// in blocks seeded from `seed` (fast enough for UMT5-XXL-sized random models).
fn random_tensor(shape: &[usize], mean: f64, std: f64, seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let n: usize = shape.iter().product();
    let half_width = (std * 3f64.sqrt()) as f32;
    let mean = mean as f32;
    const BLOCK: usize = 1 << 16;
    let fill = |blk: usize, out: &mut dyn FnMut(usize, f32)| {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ (blk as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in 0..BLOCK.min(n - blk * BLOCK) {
            out(i, mean + half_width * (2.0 * r.random::<f32>() - 1.0));
        }
    };
    let t = if dtype == DType::BF16 {
        let mut v = vec![half::bf16::ZERO; n];
        v.par_chunks_mut(BLOCK).enumerate().for_each(|(blk, c)| fill(blk, &mut |i, x| c[i] = half::bf16::from_f32(x)));
        Tensor::from_vec(v, shape, &Device::Cpu)?
    } else {
        let mut v = vec![0f32; n];
        v.par_chunks_mut(BLOCK).enumerate().for_each(|(blk, c)| fill(blk, &mut |i, x| c[i] = x));
        Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?
    };
    Ok(t.to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn blocked_weights_and_head_groups_match_whole_tensors() {
        let cfg = Umt5Config::tiny();
        let ids: Vec<u32> = (0..13).map(|i| 3 + 7 * i).collect();
        let short = [5u32, 6, 1];
        for (wd, cd) in [(DType::BF16, DType::F32), (DType::F32, DType::F32), (DType::F32, DType::BF16)] {
            let whole = Umt5Encoder::random(&cfg, 9, wd, cd, &Device::Cpu).unwrap();
            // Blocks of 2 weight rows (32 inputs); one head per group at 13 tokens.
            let blocked = Umt5Encoder { block_elems: 64, ..whole.clone() };
            let a = whole.encode_ids_batch(&[&ids, &short]).unwrap();
            let c = blocked.encode_ids_batch(&[&ids, &short]).unwrap();
            let tol = if cd == DType::BF16 { 0.1 } else { 1e-5 };
            for (x, y) in a.iter().zip(&c) {
                assert!(max_diff(x, y) <= tol, "{wd:?}/{cd:?}: {}", max_diff(x, y));
            }
        }
    }
}

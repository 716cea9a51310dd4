//! `storyreel inspect`: what a checkpoint holds, from file headers only.

use super::files::{find_model_files, TensorFiles, WeightFormat};
use super::load::{canonical_index, check_dit_shapes};
use super::lora::{is_lora_key, parse_lora_key, strip_module_prefixes, LoraPart};
use super::names::{detect_layout, to_canonical, CheckpointLayout};
use super::pth::StateChoice;
use crate::config::WanConfig;
use crate::error::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// DiT dimensions read off the tensor shapes (num_heads cannot be: it does not change any shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferredShape {
    /// Hidden width (patch_embedding.weight rows).
    pub dim: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// FFN width (blocks.0.ffn.0.weight rows).
    pub ffn_dim: usize,
    /// Latent channels in.
    pub in_dim: usize,
    /// Latent channels out.
    pub out_dim: usize,
    /// Text-encoder width.
    pub text_dim: usize,
    /// Sinusoidal time feature width.
    pub freq_dim: usize,
    /// Patch size (t, h, w).
    pub patch_size: [usize; 3],
}

/// Summary of a LoRA checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSummary {
    /// Distinct ranks found (normally one).
    pub ranks: Vec<usize>,
    /// Number of adapted linear layers.
    pub targets: usize,
    /// Number of distinct blocks touched.
    pub blocks: usize,
    /// Adapted layer kinds within a block (`self_attn.q`, `ffn.0`, ...).
    pub kinds: Vec<String>,
    /// How the scale is decided.
    pub scale: String,
}

/// Details of a full-model checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// Naming scheme.
    pub layout: CheckpointLayout,
    /// Config from `config.json`, when present and valid.
    pub config: Option<WanConfig>,
    /// The `config.json` used or tried.
    pub config_file: Option<PathBuf>,
    /// Why `config.json` could not be used.
    pub config_error: Option<String>,
    /// Dimensions read off the shapes.
    pub inferred: Option<InferredShape>,
    /// Result of checking names and shapes against the config (or the inferred shape).
    pub check: std::result::Result<(), String>,
}

/// What the checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub enum InspectContent {
    /// A full DiT (or something laid out like one).
    Model(Box<ModelSummary>),
    /// A LoRA adapter, not a full model.
    Lora(LoraSummary),
}

/// Report of `inspect`: layout, files, config, parameter count, dtypes, LoRA or not.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectReport {
    /// The path inspected.
    pub path: PathBuf,
    /// Weight files with their sizes in bytes.
    pub files: Vec<(PathBuf, u64)>,
    /// Storage format.
    pub format: WeightFormat,
    /// Dict of a PyTorch archive the tensors came from, if any.
    pub state_key: Option<String>,
    /// Top-level keys of a wrapping PyTorch dict.
    pub top_level_keys: Vec<String>,
    /// Number of tensors.
    pub tensor_count: usize,
    /// Total number of elements.
    pub parameter_count: usize,
    /// Stored dtype → tensor count.
    pub dtypes: BTreeMap<String, usize>,
    /// Model or LoRA details.
    pub content: InspectContent,
}

fn sep(n: usize) -> String {
    let digits: Vec<char> = n.to_string().chars().collect();
    let groups: Vec<String> = digits.rchunks(3).rev().map(|g| g.iter().collect()).collect();
    groups.join(",")
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

/// Reads DiT dimensions from canonical shapes.
fn infer_shape(shapes: &BTreeMap<String, Vec<usize>>) -> Option<InferredShape> {
    let pe = shapes.get("patch_embedding.weight").filter(|s| s.len() == 5)?;
    let text = shapes.get("text_embedding.0.weight").filter(|s| s.len() == 2)?;
    let time = shapes.get("time_embedding.0.weight").filter(|s| s.len() == 2)?;
    let ffn = shapes.get("blocks.0.ffn.0.weight").filter(|s| s.len() == 2)?;
    let head = shapes.get("head.head.weight").filter(|s| s.len() == 2)?;
    let patch_size = [pe[2], pe[3], pe[4]];
    let pv: usize = patch_size.iter().product();
    let num_layers = shapes
        .keys()
        .filter_map(|n| n.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    Some(InferredShape {
        dim: pe[0],
        num_layers,
        ffn_dim: ffn[0],
        in_dim: pe[1],
        out_dim: head[0].checked_div(pv).unwrap_or(0),
        text_dim: text[1],
        freq_dim: time[1],
        patch_size,
    })
}

/// A config with the inferred shapes (num_heads is a placeholder: it changes no shape).
fn config_from_inferred(s: &InferredShape) -> WanConfig {
    WanConfig {
        dim: s.dim,
        ffn_dim: s.ffn_dim,
        freq_dim: s.freq_dim,
        in_dim: s.in_dim,
        out_dim: s.out_dim,
        num_heads: if s.dim >= 128 && (s.dim / 128) * 128 == s.dim { s.dim / 128 } else { 1 },
        num_layers: s.num_layers,
        text_len: 512,
        text_dim: s.text_dim,
        patch_size: s.patch_size,
        eps: 1e-6,
        model_type: "t2v".into(),
        spatial_position: false,
    }
}

/// Inspects a weights file, shard index, model folder or LoRA (file or PEFT folder) from headers only.
pub fn inspect(path: &Path) -> Result<InspectReport> {
    let mut config_file = None;
    let mut lora_config = None;
    let weights_path: PathBuf = if path.is_dir() {
        let adapter = ["adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt", "adapter_model.pth"]
            .iter()
            .map(|n| path.join(n))
            .find(|p| p.is_file());
        match adapter {
            Some(a) => {
                lora_config = Some(path.join("adapter_config.json")).filter(|c| c.is_file());
                a
            }
            None => {
                let mf = find_model_files(path)?;
                config_file = mf.config.clone();
                path.to_path_buf()
            }
        }
    } else {
        let parent = path.parent().unwrap_or(Path::new("."));
        config_file = Some(parent.join("config.json")).filter(|c| c.is_file());
        lora_config = Some(parent.join("adapter_config.json")).filter(|c| c.is_file());
        path.to_path_buf()
    };
    let files = TensorFiles::open_choice(&weights_path, &StateChoice::Any)?;
    let headers = files.headers();
    let mut dtypes = BTreeMap::new();
    let mut parameter_count = 0usize;
    for h in headers {
        *dtypes.entry(h.dtype.clone()).or_insert(0) += 1;
        parameter_count = parameter_count.saturating_add(h.elem_count());
    }
    let file_sizes =
        files.files().iter().map(|f| (f.clone(), std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))).collect();
    let lora_count = headers.iter().filter(|h| is_lora_key(&h.name)).count();
    let content = if lora_count > 0 && lora_count * 2 >= headers.len() {
        InspectContent::Lora(lora_summary(&files, lora_config.as_deref()))
    } else {
        let (layout, index) = canonical_index(&files)?;
        let shapes: BTreeMap<String, Vec<usize>> =
            index.iter().map(|(n, &i)| (n.clone(), headers[i].shape.clone())).collect();
        let inferred = infer_shape(&shapes);
        let (config, config_error) = match &config_file {
            Some(c) => match WanConfig::from_json_file(c) {
                Ok(cfg) => (Some(cfg), None),
                Err(e) => (None, Some(e.to_string())),
            },
            None => (None, None),
        };
        let check = match (&config, &inferred) {
            (Some(cfg), _) => check_dit_shapes(&shapes, cfg).map_err(|e| e.to_string()),
            (None, Some(s)) => check_dit_shapes(&shapes, &config_from_inferred(s)).map_err(|e| e.to_string()),
            (None, None) => Err("not a Wan DiT: patch/text/time embeddings, blocks.0.ffn.0 or head not found".into()),
        };
        InspectContent::Model(Box::new(ModelSummary { layout, config, config_file, config_error, inferred, check }))
    };
    Ok(InspectReport {
        path: path.to_path_buf(),
        files: file_sizes,
        format: files.format(),
        state_key: files.state_key().map(str::to_string),
        top_level_keys: files.top_level_keys().to_vec(),
        tensor_count: headers.len(),
        parameter_count,
        dtypes,
        content,
    })
}

fn lora_summary(files: &TensorFiles, config: Option<&Path>) -> LoraSummary {
    let mut ranks = BTreeSet::new();
    let mut modules = BTreeSet::new();
    let mut has_alpha = false;
    let stripped: Vec<(String, LoraPart, usize)> = files
        .headers()
        .iter()
        .filter_map(|h| {
            let (m, p) = parse_lora_key(&h.name)?;
            Some((strip_module_prefixes(&m), p, h.shape.first().copied().unwrap_or(0)))
        })
        .collect();
    let layout = match detect_layout(stripped.iter().map(|(m, _, _)| m.as_str())) {
        CheckpointLayout::Diffusers => CheckpointLayout::Diffusers,
        _ => CheckpointLayout::Wan,
    };
    for (m, part, rows) in &stripped {
        match part {
            LoraPart::A => {
                ranks.insert(*rows);
                let w = to_canonical(&format!("{m}.weight"), layout);
                modules.insert(w.strip_suffix(".weight").unwrap_or(&w).to_string());
            }
            LoraPart::Alpha => has_alpha = true,
            LoraPart::B => {}
        }
    }
    let mut blocks = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for m in &modules {
        match m.strip_prefix("blocks.").and_then(|r| r.split_once('.')) {
            Some((b, kind)) => {
                blocks.insert(b.to_string());
                kinds.insert(kind.to_string());
            }
            None => {
                kinds.insert(m.clone());
            }
        }
    }
    let scale = if has_alpha {
        "alpha / r with per-layer alpha tensors".to_string()
    } else if let Some(c) = config {
        let v: Option<serde_json::Value> = std::fs::read_to_string(c).ok().and_then(|t| serde_json::from_str(&t).ok());
        let r = v.as_ref().and_then(|v| v.get("r")).and_then(|x| x.as_f64());
        let a = v.as_ref().and_then(|v| v.get("lora_alpha")).and_then(|x| x.as_f64());
        match (r, a) {
            (Some(r), Some(a)) if r > 0.0 => {
                format!("lora_alpha {a} / r {r} = {} (adapter_config.json)", a / r)
            }
            _ => "1.0 (adapter_config.json has no r / lora_alpha)".to_string(),
        }
    } else {
        "1.0 (no adapter_config.json; alpha = r assumed, as in ShotStream)".to_string()
    };
    LoraSummary {
        ranks: ranks.into_iter().collect(),
        targets: modules.len(),
        blocks: blocks.len(),
        kinds: kinds.into_iter().collect(),
        scale,
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "checkpoint   {}", self.path.display())?;
        for (i, (file, size)) in self.files.iter().enumerate() {
            let label = if i == 0 { "files" } else { "" };
            writeln!(f, "{label:<12} {} ({})", file.display(), human_bytes(*size))?;
        }
        writeln!(f, "format       {}", self.format)?;
        if let Some(k) = &self.state_key {
            writeln!(f, "state dict   `{k}` (top-level keys: {})", self.top_level_keys.join(", "))?;
        }
        match &self.content {
            InspectContent::Lora(l) => {
                writeln!(f, "contents     LoRA adapter (not a full model)")?;
                let ranks: Vec<String> = l.ranks.iter().map(|r| r.to_string()).collect();
                writeln!(f, "rank         {}", ranks.join(", "))?;
                writeln!(f, "targets      {} linear layers in {} blocks", l.targets, l.blocks)?;
                writeln!(f, "layers       {}", l.kinds.join(", "))?;
                writeln!(f, "scale        {}", l.scale)?;
            }
            InspectContent::Model(m) => {
                if m.inferred.is_some() {
                    writeln!(f, "contents     full DiT model")?;
                } else {
                    writeln!(f, "contents     tensors, but not a recognisable Wan DiT")?;
                }
                writeln!(f, "layout       {}", m.layout)?;
            }
        }
        writeln!(f, "tensors      {} ({} parameters)", self.tensor_count, sep(self.parameter_count))?;
        let dt: Vec<String> = self.dtypes.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
        writeln!(f, "dtypes       {}", dt.join(", "))?;
        if let InspectContent::Model(m) = &self.content {
            let ModelSummary { config, config_file, config_error, inferred, check, .. } = m.as_ref();
            if let Some(s) = inferred {
                writeln!(
                    f,
                    "shapes       dim {}, num_layers {}, ffn_dim {}, in_dim {}, out_dim {}, text_dim {}, freq_dim {}, patch {:?}",
                    s.dim, s.num_layers, s.ffn_dim, s.in_dim, s.out_dim, s.text_dim, s.freq_dim, s.patch_size
                )?;
            }
            match (config, config_file) {
                (Some(c), Some(p)) => writeln!(
                    f,
                    "config       {}: num_heads {} (head_dim {}), text_len {}, eps {}",
                    p.display(),
                    c.num_heads,
                    c.head_dim(),
                    c.text_len,
                    c.eps
                )?,
                _ => {
                    if let Some(e) = config_error {
                        writeln!(f, "config       unusable: {e}")?;
                    } else {
                        writeln!(f, "config       none (no config.json)")?;
                    }
                    if inferred.is_some() {
                        writeln!(
                            f,
                            "num_heads    cannot be inferred from shapes; Wan2.1 uses head_dim 128 (12 heads for dim 1536)"
                        )?;
                    }
                }
            }
            match check {
                Ok(()) if config.is_some() => writeln!(f, "check        names and shapes match the config")?,
                Ok(()) => writeln!(f, "check        a complete DiT of the inferred shape")?,
                Err(e) => writeln!(f, "check        {e}")?,
            }
        }
        Ok(())
    }
}

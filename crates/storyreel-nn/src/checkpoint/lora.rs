//! LoRA adapters: reading PEFT / ShotStream / kohya-style LoRA weights keyed by canonical linear
//! path, and merging them into base weights (W ← W + scale·B·A).

use super::files::{find_model_files, TensorFiles};
use super::names::{detect_layout, strip_wrappers, to_canonical, CheckpointLayout};
use super::pth::StateChoice;
use super::util::bad;
use crate::error::{NnError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One low-rank adapter of a linear layer: ΔW = scale · B · A.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// Down projection A, shape [r, in].
    pub a: Tensor,
    /// Up projection B, shape [out, r].
    pub b: Tensor,
    /// Scale (lora_alpha / r for PEFT, 1.0 for ShotStream where alpha = r).
    pub scale: f64,
}

impl LoraWeights {
    /// The adapter rank r.
    pub fn rank(&self) -> usize {
        self.a.dims().first().copied().unwrap_or(0)
    }
}

/// Which half of an adapter a stored tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoraPart {
    /// `lora_A` / `lora_down`.
    A,
    /// `lora_B` / `lora_up`.
    B,
    /// kohya-style per-module `alpha` scalar.
    Alpha,
}

/// Splits a stored LoRA tensor name into (module path as stored, part).
pub(crate) fn parse_lora_key(name: &str) -> Option<(String, LoraPart)> {
    const SUFFIXES: &[(&str, LoraPart)] = &[
        (".lora_A.weight", LoraPart::A),
        (".lora_B.weight", LoraPart::B),
        (".lora_down.weight", LoraPart::A),
        (".lora_up.weight", LoraPart::B),
        (".alpha", LoraPart::Alpha),
    ];
    for (suffix, part) in SUFFIXES {
        if let Some(m) = name.strip_suffix(suffix) {
            return Some((m.to_string(), *part));
        }
    }
    // PEFT state dicts taken from a live model carry the adapter name: `<m>.lora_A.<adapter>.weight`.
    let rest = name.strip_suffix(".weight")?;
    for (marker, part) in [(".lora_A.", LoraPart::A), (".lora_B.", LoraPart::B)] {
        if let Some(pos) = rest.rfind(marker) {
            let adapter = &rest[pos + marker.len()..];
            if !adapter.is_empty() && !adapter.contains('.') {
                return Some((rest[..pos].to_string(), part));
            }
        }
    }
    None
}

/// True when a stored name belongs to a LoRA adapter.
pub(crate) fn is_lora_key(name: &str) -> bool {
    matches!(parse_lora_key(name), Some((_, LoraPart::A | LoraPart::B)))
}

/// Removes PEFT / wrapper / pipeline prefixes from a module path.
pub(crate) fn strip_module_prefixes(path: &str) -> String {
    let mut s = strip_wrappers(path);
    loop {
        let before = s.len();
        for p in ["base_model.model.", "model.", "transformer.", "diffusion_model.", "module."] {
            if let Some(r) = s.strip_prefix(p) {
                s = r.to_string();
            }
        }
        if s.len() == before {
            return s;
        }
    }
}

/// PEFT `adapter_config.json` fields that decide the scale.
#[derive(Debug, Clone, Default)]
struct AdapterConfig {
    r: Option<f64>,
    alpha: Option<f64>,
    rslora: bool,
    rank_pattern: Vec<(String, f64)>,
    alpha_pattern: Vec<(String, f64)>,
}

impl AdapterConfig {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(path, format!("adapter config is not valid JSON: {e}")))?;
        let pattern = |key: &str| -> Vec<(String, f64)> {
            v.get(key)
                .and_then(|m| m.as_object())
                .map(|m| m.iter().filter_map(|(k, x)| Some((k.clone(), x.as_f64()?))).collect())
                .unwrap_or_default()
        };
        Ok(AdapterConfig {
            r: v.get("r").and_then(|x| x.as_f64()),
            alpha: v.get("lora_alpha").and_then(|x| x.as_f64()),
            rslora: v.get("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false),
            rank_pattern: pattern("rank_pattern"),
            alpha_pattern: pattern("alpha_pattern"),
        })
    }

    /// PEFT's scale for a module (path relative to the base model): alpha / r, or alpha / √r with rsLoRA.
    fn scale(&self, module: &str, actual_rank: usize) -> f64 {
        let matches = |k: &str| module == k || module.ends_with(&format!(".{k}"));
        let r = self
            .rank_pattern
            .iter()
            .find(|(k, _)| matches(k))
            .map(|(_, r)| *r)
            .or(self.r)
            .unwrap_or(actual_rank as f64);
        let alpha = self.alpha_pattern.iter().find(|(k, _)| matches(k)).map(|(_, a)| *a).or(self.alpha);
        match alpha {
            Some(a) if r > 0.0 => {
                if self.rslora {
                    a / r.sqrt()
                } else {
                    a / r
                }
            }
            _ => 1.0,
        }
    }
}

/// Resolves a LoRA path to (weights path, optional adapter_config.json).
fn resolve_lora_path(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    if path.is_dir() {
        let config = path.join("adapter_config.json");
        let config = config.is_file().then_some(config);
        for name in ["adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt", "adapter_model.pth"] {
            let p = path.join(name);
            if p.is_file() {
                return Ok((p, config));
            }
        }
        let mf = find_model_files(path)?;
        if mf.weights.len() != 1 {
            return Err(bad(path, "a LoRA folder must hold one adapter_model.* or a single weights file"));
        }
        return Ok((mf.weights[0].clone(), config));
    }
    let config = path.parent().map(|d| d.join("adapter_config.json")).filter(|c| {
        c.is_file() && path.file_name().map(|n| n.to_string_lossy().starts_with("adapter_model")).unwrap_or(false)
    });
    Ok((path.to_path_buf(), config))
}

/// Reads LoRA adapters keyed by canonical linear path (`blocks.0.self_attn.q`, `blocks.3.ffn.2`).
///
/// Accepts a ShotStream LoRA `.pt` (`generator_lora` dict of PEFT keys
/// `base_model.model.<path>.lora_A/B.weight`, `<path>` in Wan or diffusers naming, possibly with a
/// `model.` prefix), a PEFT folder (`adapter_model.safetensors` + `adapter_config.json`, scale =
/// lora_alpha / r), a plain safetensors of PEFT keys (scale 1.0), or kohya-style
/// `lora_down`/`lora_up`/`alpha` keys (scale = alpha / r).
pub fn read_lora(path: &Path, dtype: DType, device: &Device) -> Result<HashMap<String, LoraWeights>> {
    let (weights, config_path) = resolve_lora_path(path)?;
    let config = match &config_path {
        Some(c) => AdapterConfig::read(c)?,
        None => AdapterConfig::default(),
    };
    let files = TensorFiles::open_choice(&weights, &StateChoice::Lora)?;
    let file = files.files().first().cloned().unwrap_or_else(|| weights.clone());

    // Group the stored tensors by module.
    let mut modules: BTreeMap<String, [Option<usize>; 3]> = BTreeMap::new();
    for (i, h) in files.headers().iter().enumerate() {
        match parse_lora_key(&h.name) {
            Some((m, part)) => {
                let slot = &mut modules.entry(strip_module_prefixes(&m)).or_default()[part as usize];
                if slot.is_some() {
                    return Err(bad(&file, format!("LoRA module `{m}` has two {part:?} tensors")));
                }
                *slot = Some(i);
            }
            None => {
                return Err(bad(
                    &file,
                    format!(
                        "tensor `{}` is not a LoRA weight (lora_A/lora_B); full-weight modules are not supported",
                        h.name
                    ),
                ))
            }
        }
    }
    if modules.is_empty() {
        return Err(bad(&file, "no LoRA weights (lora_A / lora_B tensors) found"));
    }
    let layout = match detect_layout(modules.keys().map(|m| m.as_str())) {
        CheckpointLayout::Diffusers => CheckpointLayout::Diffusers,
        _ => CheckpointLayout::Wan,
    };
    let mut out = HashMap::with_capacity(modules.len());
    for (module, [a, b, alpha]) in &modules {
        let (Some(a), Some(b)) = (a, b) else {
            let missing = if a.is_none() { "lora_A" } else { "lora_B" };
            return Err(bad(&file, format!("LoRA module `{module}` has no {missing} weight")));
        };
        let (ha, hb) = (&files.headers()[*a], &files.headers()[*b]);
        if ha.shape.len() != 2 || hb.shape.len() != 2 || ha.shape[0] != hb.shape[1] {
            return Err(bad(
                &file,
                format!(
                    "LoRA module `{module}`: A `{}` {:?} and B `{}` {:?} are not [r, in] and [out, r]",
                    ha.name, ha.shape, hb.name, hb.shape
                ),
            ));
        }
        let rank = ha.shape[0];
        let scale = match alpha {
            Some(i) => {
                let t = files.load_index(*i, DType::F64, &Device::Cpu)?;
                let v = t.flatten_all()?.to_vec1::<f64>()?;
                match v.as_slice() {
                    [alpha] if rank > 0 => alpha / rank as f64,
                    _ => return Err(bad(&file, format!("LoRA module `{module}`: alpha is not a scalar"))),
                }
            }
            None => config.scale(module, rank),
        };
        let canonical = {
            let w = to_canonical(&format!("{module}.weight"), layout);
            w.strip_suffix(".weight").unwrap_or(&w).to_string()
        };
        let lw =
            LoraWeights { a: files.load_index(*a, dtype, device)?, b: files.load_index(*b, dtype, device)?, scale };
        if out.insert(canonical.clone(), lw).is_some() {
            return Err(bad(&file, format!("two LoRA modules map to `{canonical}`")));
        }
    }
    Ok(out)
}

/// Merges LoRA adapters into canonical weights: W ← W + scale·(B·A), computed in f32 and stored
/// back in W's dtype. Everything is checked before any weight changes; returns the number merged.
pub fn merge_lora(tensors: &mut HashMap<String, Tensor>, loras: &HashMap<String, LoraWeights>) -> Result<usize> {
    let mut paths: Vec<&String> = loras.keys().collect();
    paths.sort();
    for path in &paths {
        let l = &loras[*path];
        let name = format!("{path}.weight");
        let (a, b) = (l.a.dims(), l.b.dims());
        if a.len() != 2 || b.len() != 2 || a[0] != b[1] {
            return Err(NnError::Input(format!(
                "LoRA `{path}`: A {a:?} and B {b:?} are not [r, in] and [out, r] with the same r"
            )));
        }
        let update = vec![b[0], a[1]];
        match tensors.get(&name) {
            None => return Err(NnError::MissingTensor { name, expected: update }),
            Some(w) if w.dims() != update.as_slice() => {
                return Err(NnError::ShapeMismatch { name, expected: w.dims().to_vec(), found: update })
            }
            Some(_) => {}
        }
    }
    for path in &paths {
        let l = &loras[*path];
        let name = format!("{path}.weight");
        let w = &tensors[&name];
        let dev = w.device();
        let b = l.b.to_device(dev)?.to_dtype(DType::F32)?;
        let a = l.a.to_device(dev)?.to_dtype(DType::F32)?;
        let delta = (b.matmul(&a)? * l.scale)?;
        let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
        tensors.insert(name, merged);
    }
    Ok(paths.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_keys_are_parsed_in_all_spellings() {
        let cases = [
            ("base_model.model.blocks.0.self_attn.q.lora_A.weight", "blocks.0.self_attn.q", LoraPart::A),
            ("base_model.model.model.blocks.0.ffn.2.lora_B.weight", "blocks.0.ffn.2", LoraPart::B),
            ("blocks.1.attn1.to_out.0.lora_A.default.weight", "blocks.1.attn1.to_out.0", LoraPart::A),
            ("diffusion_model.blocks.2.cross_attn.k.lora_up.weight", "blocks.2.cross_attn.k", LoraPart::B),
            ("diffusion_model.blocks.2.cross_attn.k.alpha", "blocks.2.cross_attn.k", LoraPart::Alpha),
        ];
        for (key, module, part) in cases {
            let (m, p) = parse_lora_key(key).unwrap();
            assert_eq!((strip_module_prefixes(&m).as_str(), p), (module, part), "{key}");
        }
        assert!(parse_lora_key("blocks.0.self_attn.q.weight").is_none());
    }

    #[test]
    fn peft_scale_follows_the_config() {
        let c = AdapterConfig { r: Some(8.0), alpha: Some(16.0), ..Default::default() };
        assert_eq!(c.scale("blocks.0.self_attn.q", 8), 2.0);
        let c = AdapterConfig { r: Some(16.0), alpha: Some(16.0), rslora: true, ..Default::default() };
        assert_eq!(c.scale("x", 16), 4.0);
        let c = AdapterConfig {
            r: Some(8.0),
            alpha: Some(8.0),
            alpha_pattern: vec![("self_attn.q".into(), 32.0)],
            ..Default::default()
        };
        assert_eq!(c.scale("blocks.0.self_attn.q", 8), 4.0);
        assert_eq!(c.scale("blocks.0.self_attn.k", 8), 1.0);
        assert_eq!(AdapterConfig::default().scale("x", 4), 1.0);
    }
}

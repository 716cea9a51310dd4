//! LoRA adapters for training (shotstream.md §5.5): the base DiT stays frozen and a rank-r
//! A/B pair on every attention and FFN linear is the only thing trained. Adapters are saved as
//! a PEFT folder (`adapter_model.safetensors` + `adapter_config.json`, the layout
//! `storyreel_nn::checkpoint::read_lora` reads) and folded into a model folder by
//! [`merge_lora_model`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use storyreel_engine::story_model::{self, ModelCard, StoryModel};
use storyreel_nn::checkpoint::{load_dit_checkpoint, merge_lora, read_lora, save_safetensors};
use storyreel_nn::linear::LoraAdapter;
use storyreel_nn::WanModel;
use storyreel_world::rng::{mix64, WorldRng};

use crate::error::{Result, TrainError};
use crate::model_files::{copy_model_parts, save_dit_tensors, write_text};

/// Variable-name prefix of the adapters in a stage's `VarMap` (`lora.<linear>.a` / `.b`).
pub const LORA_PREFIX: &str = "lora";

/// File names of a PEFT adapter folder.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The adapter folder's config (rank and alpha).
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// Rank and scale of the adapters (ShotStream: rank 256, alpha 256, so scale 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSpec {
    /// Rank r of every adapter.
    pub rank: usize,
    /// lora_alpha; the update is scaled by alpha / r.
    pub alpha: f64,
}

impl Default for LoraSpec {
    fn default() -> Self {
        // The toy DiT's linears are 128–384 wide; rank 16 keeps the adapter a small share of
        // the layer, as rank 256 is of Wan's 1536–8960.
        Self { rank: 16, alpha: 16.0 }
    }
}

impl LoraSpec {
    /// Checks rank and alpha (the rank against the layers is checked when adapters are made).
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(TrainError::out_of_range("lora.rank", self.rank, "at least 1"));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(TrainError::out_of_range("lora.alpha", self.alpha, "a positive number"));
        }
        Ok(())
    }

    /// alpha / r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// `model`'s DiT with its weights frozen and a fresh adapter on every adaptable linear: A
/// uniform in ±1/√in (PEFT's Kaiming default), B zero, so the adapted model starts equal to the
/// base. The base weights are shared with `model`, not copied; the adapters' A and B are the
/// only variables put in `varmap`.
pub fn lora_dit(model: &StoryModel, spec: &LoraSpec, seed: u64, varmap: &VarMap, device: &Device) -> Result<WanModel> {
    let mut dit = model.dit.clone();
    let targets = dit.lora_target_shapes()?;
    spec.validate()?;
    let narrowest = targets.iter().map(|(_, [o, i])| *o.min(i)).min().unwrap_or(0);
    if spec.rank > narrowest {
        return Err(TrainError::out_of_range(
            "lora.rank",
            spec.rank,
            format!("at most {narrowest} (the narrowest linear)"),
        ));
    }

    let mut rng = WorldRng::new(mix64(seed ^ 0x10a));
    let mut adapters = HashMap::new();
    let data = varmap.data();
    let mut vars = data.lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    for (name, [out_dim, in_dim]) in targets {
        let a = var_for(&mut vars, &format!("{LORA_PREFIX}.{name}.a"), || {
            let bound = 1.0 / (in_dim as f64).sqrt();
            let v: Vec<f32> = (0..spec.rank * in_dim).map(|_| rng.range_f(-bound, bound) as f32).collect();
            Tensor::from_vec(v, (spec.rank, in_dim), device)
        })?;
        let b = var_for(&mut vars, &format!("{LORA_PREFIX}.{name}.b"), || {
            Tensor::zeros((out_dim, spec.rank), DType::F32, device)
        })?;
        adapters.insert(name, LoraAdapter { a, b, scale: spec.scale() });
    }
    drop(vars);
    dit.set_lora(adapters)?;
    Ok(dit)
}

/// The variable `name`, created from `init` unless the map already has it (a resumed run).
fn var_for(
    vars: &mut HashMap<String, Var>,
    name: &str,
    init: impl FnOnce() -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    if let Some(v) = vars.get(name) {
        return Ok(v.as_tensor().clone());
    }
    let var = Var::from_tensor(&init()?)?;
    let t = var.as_tensor().clone();
    vars.insert(name.to_string(), var);
    Ok(t)
}

/// Writes the adapters held in `varmap` as a PEFT folder `dir` (keys
/// `base_model.model.<linear>.lora_A/B.weight`, rank and alpha in the config).
pub fn save_lora_folder(varmap: &VarMap, spec: &LoraSpec, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::File(format!("{}: {e}", dir.display())))?;
    let prefix = format!("{LORA_PREFIX}.");
    let data = varmap.data().lock().map_err(|_| TrainError::File("the variable map's lock is poisoned".into()))?;
    let mut tensors = HashMap::new();
    let mut modules = Vec::new();
    for (name, var) in data.iter() {
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let (module, part) = match (rest.strip_suffix(".a"), rest.strip_suffix(".b")) {
            (Some(m), _) => (m, "lora_A"),
            (_, Some(m)) => (m, "lora_B"),
            _ => continue,
        };
        tensors.insert(format!("base_model.model.{module}.{part}.weight"), var.as_tensor().detach());
        if part == "lora_A" {
            modules.push(module.to_string());
        }
    }
    drop(data);
    if tensors.is_empty() {
        return Err(TrainError::File("no LoRA adapters to save (the stage trained full weights)".into()));
    }
    modules.sort();
    save_safetensors(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "target_modules": modules,
    });
    write_text(&dir.join(ADAPTER_CONFIG), &(serde_json::to_string_pretty(&config).unwrap_or_default() + "\n"))
}

/// What [`merge_lora_model`] did.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    /// Linear layers updated.
    pub merged: usize,
    /// The model folder written.
    pub model_dir: PathBuf,
}

/// Folds the adapters of `lora` (a PEFT folder or file) into the DiT of the model folder `base`
/// (W ← W + scale·B·A) and writes a complete model folder `out` with the same card, text
/// encoder and VAE; `description` replaces the card's when given.
pub fn merge_lora_model(base: &Path, lora: &Path, out: &Path, description: Option<&str>) -> Result<MergeReport> {
    if out.exists() && out.canonicalize().ok() == base.canonicalize().ok() {
        return Err(TrainError::File(format!(
            "{}: the merged model must go to another folder than its base",
            out.display()
        )));
    }
    let device = Device::Cpu;
    let card = ModelCard::read(base)?;
    let dit_dir = base.join(story_model::DIT_DIR);
    let config = storyreel_nn::WanConfig::from_json_file(&dit_dir.join("config.json"))?;
    let mut tensors = load_dit_checkpoint(&dit_dir, &config, DType::F32, &device)?.tensors;
    let adapters =
        read_lora(lora, DType::F32, &device).map_err(|e| TrainError::File(format!("LoRA {}: {e}", lora.display())))?;
    if adapters.is_empty() {
        return Err(TrainError::File(format!("LoRA {}: no adapters in it", lora.display())));
    }
    let merged = merge_lora(&mut tensors, &adapters)
        .map_err(|e| TrainError::File(format!("merging {} into {}: {e}", lora.display(), base.display())))?;
    save_dit_tensors(&tensors, &config, out)?;
    copy_model_parts(base, out)?;
    let card = ModelCard { description: description.map(str::to_string).unwrap_or(card.description.clone()), ..card };
    card.write(out)?;
    Ok(MergeReport { merged, model_dir: out.to_path_buf() })
}

//! The Wan DiT configuration, read from Wan's `config.json` (or diffusers' variant).

use crate::error::{NnError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Shape of a Wan2.1-style DiT; the field names are those of Wan's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanConfig {
    /// Hidden width D.
    pub dim: usize,
    /// FFN hidden width.
    pub ffn_dim: usize,
    /// Width of the sinusoidal timestep features.
    #[serde(default = "default_freq_dim")]
    pub freq_dim: usize,
    /// Latent channels in.
    #[serde(default = "default_channels")]
    pub in_dim: usize,
    /// Latent channels out.
    #[serde(default = "default_channels")]
    pub out_dim: usize,
    /// Attention heads (head_dim = dim / num_heads).
    pub num_heads: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Caption tokens per prompt (rows of the padded text embedding).
    #[serde(default = "default_text_len")]
    pub text_len: usize,
    /// Width of the text-encoder output (4096 for UMT5-XXL).
    #[serde(default = "default_text_dim")]
    pub text_dim: usize,
    /// Patch size (t, h, w); Wan uses (1, 2, 2).
    #[serde(default = "default_patch")]
    pub patch_size: [usize; 3],
    /// Epsilon of every norm.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Wan's model type; only "t2v" is supported.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Add a fixed 2-D sinusoidal embedding of each token's (row, column) after the patch
    /// embedding. Not in Wan, whose tokens know where they are only through RoPE's relative
    /// angles: a small DiT trained briefly learns absolute layout (a horizon, a character's
    /// place) from those slowly. Absent from Wan's configs, so off for real checkpoints.
    #[serde(default, skip_serializing_if = "is_false")]
    pub spatial_position: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_freq_dim() -> usize {
    256
}
fn default_channels() -> usize {
    16
}
fn default_text_len() -> usize {
    512
}
fn default_text_dim() -> usize {
    4096
}
fn default_patch() -> [usize; 3] {
    [1, 2, 2]
}
fn default_eps() -> f64 {
    1e-6
}
fn default_model_type() -> String {
    "t2v".into()
}

/// diffusers' `WanTransformer3DModel` config keys, mapped onto [`WanConfig`].
#[derive(Deserialize)]
struct DiffusersConfig {
    num_attention_heads: usize,
    attention_head_dim: usize,
    #[serde(default = "default_channels")]
    in_channels: usize,
    #[serde(default = "default_channels")]
    out_channels: usize,
    #[serde(default = "default_text_dim")]
    text_dim: usize,
    #[serde(default = "default_freq_dim")]
    freq_dim: usize,
    ffn_dim: usize,
    num_layers: usize,
    #[serde(default = "default_patch")]
    patch_size: [usize; 3],
    #[serde(default = "default_eps")]
    eps: f64,
}

impl WanConfig {
    /// Wan2.1-T2V-1.3B (also the shape of Self-Forcing and ShotStream checkpoints).
    pub fn wan_1_3b() -> Self {
        Self {
            dim: 1536,
            ffn_dim: 8960,
            freq_dim: 256,
            in_dim: 16,
            out_dim: 16,
            num_heads: 12,
            num_layers: 30,
            text_len: 512,
            text_dim: 4096,
            patch_size: [1, 2, 2],
            eps: 1e-6,
            model_type: "t2v".into(),
            spatial_position: false,
        }
    }

    /// A tiny shape for unit tests: random weights that run in milliseconds.
    pub fn tiny() -> Self {
        Self {
            dim: 64,
            ffn_dim: 128,
            freq_dim: 32,
            in_dim: 4,
            out_dim: 4,
            num_heads: 2,
            num_layers: 2,
            text_len: 8,
            text_dim: 24,
            patch_size: [1, 2, 2],
            eps: 1e-6,
            model_type: "t2v".into(),
            spatial_position: false,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// Values per token at the head output (patch volume × out channels).
    pub fn patch_out(&self) -> usize {
        self.patch_size.iter().product::<usize>() * self.out_dim
    }

    /// Checks the invariants every other module relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NnError::Config(m));
        if self.dim == 0 || self.num_heads == 0 || self.num_layers == 0 || self.ffn_dim == 0 {
            return bad("dim, num_heads, num_layers and ffn_dim must be positive".into());
        }
        if !self.dim.is_multiple_of(self.num_heads) {
            return bad(format!("dim {} is not divisible by num_heads {}", self.dim, self.num_heads));
        }
        let hd = self.head_dim();
        if !hd.is_multiple_of(2) || hd < 6 {
            return bad(format!("head_dim {hd} must be even and at least 6 (3D RoPE)"));
        }
        if !self.freq_dim.is_multiple_of(2) || self.freq_dim == 0 {
            return bad(format!("freq_dim {} must be even and positive", self.freq_dim));
        }
        if self.patch_size[0] != 1 {
            return bad(format!("temporal patch size {} is not supported (Wan uses 1)", self.patch_size[0]));
        }
        if self.patch_size.contains(&0) {
            return bad("patch sizes must be positive".into());
        }
        if self.text_len == 0 || self.text_dim == 0 || self.in_dim == 0 || self.out_dim == 0 {
            return bad("text_len, text_dim, in_dim and out_dim must be positive".into());
        }
        if self.spatial_position && !self.dim.is_multiple_of(4) {
            return bad(format!("spatial_position needs dim divisible by 4, not {}", self.dim));
        }
        if self.model_type != "t2v" {
            return bad(format!("model_type `{}` is not supported (only t2v)", self.model_type));
        }
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return bad(format!("eps {} must be in (0, 1)", self.eps));
        }
        Ok(())
    }

    /// Parses Wan's `config.json` text; diffusers' `WanTransformer3DModel` keys are accepted too.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| NnError::Config(format!("config.json is not valid JSON: {e}")))?;
        let cfg = if value.get("num_attention_heads").is_some() {
            let d: DiffusersConfig =
                serde_json::from_value(value).map_err(|e| NnError::Config(format!("diffusers config: {e}")))?;
            WanConfig {
                dim: d.num_attention_heads * d.attention_head_dim,
                ffn_dim: d.ffn_dim,
                freq_dim: d.freq_dim,
                in_dim: d.in_channels,
                out_dim: d.out_channels,
                num_heads: d.num_attention_heads,
                num_layers: d.num_layers,
                text_len: 512,
                text_dim: d.text_dim,
                patch_size: d.patch_size,
                eps: d.eps,
                model_type: "t2v".into(),
                spatial_position: false,
            }
        } else {
            serde_json::from_value(value).map_err(|e| NnError::Config(format!("config.json: {e}")))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a `config.json` file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))?;
        Self::from_json_str(&text).map_err(|e| match e {
            NnError::Config(m) => NnError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Serialises to Wan's `config.json` form.
    pub fn to_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("_class_name".into(), "WanModel".into());
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// Parameter count implied by the shapes (matches wan.md §2.1 for the 1.3B config).
    pub fn parameter_count(&self) -> usize {
        let d = self.dim;
        let p = self.patch_size.iter().product::<usize>();
        let block = 4 * (d * d + d) * 2 + 4 * d + 2 * d + 2 * (d * self.ffn_dim) + self.ffn_dim + d + 6 * d;
        let text = self.text_dim * d + d + d * d + d;
        let time = self.freq_dim * d + d + d * d + d;
        let proj = d * 6 * d + 6 * d;
        let patch = d * self.in_dim * p + d;
        let head = self.patch_out() * d + self.patch_out() + 2 * d;
        self.num_layers * block + text + time + proj + patch + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_1_3b_parameter_count_matches_spec() {
        assert_eq!(WanConfig::wan_1_3b().parameter_count(), 1_418_996_800);
    }

    #[test]
    fn parses_wan_config_json() {
        let text = r#"{"_class_name":"WanModel","dim":1536,"eps":1e-06,"ffn_dim":8960,"freq_dim":256,"in_dim":16,"model_type":"t2v","num_heads":12,"num_layers":30,"out_dim":16,"text_len":512}"#;
        assert_eq!(WanConfig::from_json_str(text).unwrap(), WanConfig::wan_1_3b());
    }

    #[test]
    fn parses_diffusers_config_json() {
        let text = r#"{"_class_name":"WanTransformer3DModel","patch_size":[1,2,2],"num_attention_heads":12,"attention_head_dim":128,"in_channels":16,"out_channels":16,"text_dim":4096,"freq_dim":256,"ffn_dim":8960,"num_layers":30,"cross_attn_norm":true,"qk_norm":"rms_norm_across_heads","eps":1e-6,"rope_max_seq_len":1024}"#;
        assert_eq!(WanConfig::from_json_str(text).unwrap(), WanConfig::wan_1_3b());
    }

    #[test]
    fn rejects_inconsistent_config() {
        let text = r#"{"dim":100,"ffn_dim":8,"num_heads":3,"num_layers":1}"#;
        let err = WanConfig::from_json_str(text).unwrap_err().to_string();
        assert!(err.contains("not divisible"), "{err}");
        assert!(WanConfig::from_json_str("{not json").is_err());
        assert!(WanConfig::from_json_str(r#"{"dim":64}"#).unwrap_err().to_string().contains("ffn_dim"));
    }

    #[test]
    fn round_trips_through_json() {
        let cfg = WanConfig::tiny();
        assert_eq!(WanConfig::from_json_str(&cfg.to_json()).unwrap(), cfg);
    }
}

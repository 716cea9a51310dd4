//! The Wan VAE's shape parameters, the tensor names and shapes they imply (Wan layout), and
//! reading them back from a checkpoint's shapes so that smaller VAEs load the same way.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::{NnError, Result};

/// Wan2.1's per-channel latent mean (wan.md §5.1).
pub const WAN21_LATENT_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
    -0.9497, 0.2503, -0.2921,
];
/// Wan2.1's per-channel latent standard deviation (wan.md §5.1).
pub const WAN21_LATENT_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
    2.8251, 1.9160,
];

/// Widths and depths of a Wan-architecture VAE, plus its latent normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Latent channels (16 for Wan2.1).
    pub z_dim: usize,
    /// Width of the first encoder level (96 for Wan2.1).
    pub base_dim: usize,
    /// Width multipliers per level ([1, 2, 4, 4]).
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Per encoder level transition, whether time is halved ([false, true, true]).
    pub temporal_downsample: Vec<bool>,
    /// Per-channel latent mean.
    pub latents_mean: Vec<f32>,
    /// Per-channel latent standard deviation.
    pub latents_std: Vec<f32>,
}

impl VaeConfig {
    /// The Wan2.1 VAE (`Wan2.1_VAE.pth`).
    pub fn wan21() -> Self {
        Self {
            z_dim: 16,
            base_dim: 96,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temporal_downsample: vec![false, true, true],
            latents_mean: WAN21_LATENT_MEAN.to_vec(),
            latents_std: WAN21_LATENT_STD.to_vec(),
        }
    }

    /// A small VAE with Wan's structure (for tests and quick benches).
    pub fn tiny() -> Self {
        Self { base_dim: 8, ..Self::wan21() }
    }

    /// Checks internal consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(NnError::Config(m));
        if self.z_dim == 0 || self.base_dim == 0 || self.num_res_blocks == 0 {
            return bad("VAE z_dim, base_dim and num_res_blocks must be positive".into());
        }
        if self.dim_mult.len() < 2 || self.dim_mult.contains(&0) {
            return bad(format!("VAE dim_mult needs at least 2 positive entries; got {:?}", self.dim_mult));
        }
        if self.temporal_downsample.len() != self.dim_mult.len() - 1 {
            return bad(format!(
                "VAE temporal_downsample needs {} entries (one per level transition); got {}",
                self.dim_mult.len() - 1,
                self.temporal_downsample.len()
            ));
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return bad(format!(
                "VAE latent mean/std need {} entries; got {} and {}",
                self.z_dim,
                self.latents_mean.len(),
                self.latents_std.len()
            ));
        }
        if self.latents_std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return bad("VAE latent std entries must be positive and finite".into());
        }
        for w in self.decoder_level_widths().windows(2) {
            if w[0] % 2 != 0 {
                return bad(format!("VAE decoder width {} must be even (upsampling halves it)", w[0]));
            }
        }
        Ok(())
    }

    /// Spatial downscale factor (2 per level transition).
    pub fn spatial_scale(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }

    /// Temporal downscale factor (4 for Wan2.1).
    pub fn temporal_scale(&self) -> usize {
        1 << self.temporal_downsample.iter().filter(|&&t| t).count()
    }

    fn encoder_widths(&self) -> Vec<usize> {
        std::iter::once(1).chain(self.dim_mult.iter().copied()).map(|m| m * self.base_dim).collect()
    }

    /// Output width of the decoder's conv_in followed by each level's output width.
    fn decoder_level_widths(&self) -> Vec<usize> {
        let last = *self.dim_mult.last().unwrap_or(&1);
        std::iter::once(last).chain(self.dim_mult.iter().rev().copied()).map(|m| m * self.base_dim).collect()
    }

    /// Decoder temporal upsampling per level transition (the encoder's flags reversed).
    pub fn temporal_upsample(&self) -> Vec<bool> {
        self.temporal_downsample.iter().rev().copied().collect()
    }

    /// Every tensor name (Wan layout) and shape, encoder and quant convs included when `encoder`.
    pub fn tensor_shapes(&self, encoder: bool) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let z = self.z_dim;
        let conv = |out: &mut Vec<(String, Vec<usize>)>, name: &str, co: usize, ci: usize, k: &[usize]| {
            let mut s = vec![co, ci];
            s.extend_from_slice(k);
            out.push((format!("{name}.weight"), s));
            out.push((format!("{name}.bias"), vec![co]));
        };
        let res = |out: &mut Vec<(String, Vec<usize>)>, p: &str, ci: usize, co: usize| {
            out.push((format!("{p}.residual.0.gamma"), vec![ci, 1, 1, 1]));
            conv(out, &format!("{p}.residual.2"), co, ci, &[3, 3, 3]);
            out.push((format!("{p}.residual.3.gamma"), vec![co, 1, 1, 1]));
            conv(out, &format!("{p}.residual.6"), co, co, &[3, 3, 3]);
            if ci != co {
                conv(out, &format!("{p}.shortcut"), co, ci, &[1, 1, 1]);
            }
        };
        let attn = |out: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
            out.push((format!("{p}.norm.gamma"), vec![c, 1, 1]));
            conv(out, &format!("{p}.to_qkv"), 3 * c, c, &[1, 1]);
            conv(out, &format!("{p}.proj"), c, c, &[1, 1]);
        };
        let levels = self.dim_mult.len();
        if encoder {
            let dims = self.encoder_widths();
            conv(&mut out, "encoder.conv1", dims[0], 3, &[3, 3, 3]);
            let mut idx = 0;
            for i in 0..levels {
                let mut ci = dims[i];
                for _ in 0..self.num_res_blocks {
                    res(&mut out, &format!("encoder.downsamples.{idx}"), ci, dims[i + 1]);
                    ci = dims[i + 1];
                    idx += 1;
                }
                if i != levels - 1 {
                    let c = dims[i + 1];
                    conv(&mut out, &format!("encoder.downsamples.{idx}.resample.1"), c, c, &[3, 3]);
                    if self.temporal_downsample[i] {
                        conv(&mut out, &format!("encoder.downsamples.{idx}.time_conv"), c, c, &[3, 1, 1]);
                    }
                    idx += 1;
                }
            }
            let c = dims[levels];
            res(&mut out, "encoder.middle.0", c, c);
            attn(&mut out, "encoder.middle.1", c);
            res(&mut out, "encoder.middle.2", c, c);
            out.push(("encoder.head.0.gamma".into(), vec![c, 1, 1, 1]));
            conv(&mut out, "encoder.head.2", 2 * z, c, &[3, 3, 3]);
            conv(&mut out, "conv1", 2 * z, 2 * z, &[1, 1, 1]);
        }
        conv(&mut out, "conv2", z, z, &[1, 1, 1]);
        let dims = self.decoder_level_widths();
        let up = self.temporal_upsample();
        conv(&mut out, "decoder.conv1", dims[0], z, &[3, 3, 3]);
        let c = dims[0];
        res(&mut out, "decoder.middle.0", c, c);
        attn(&mut out, "decoder.middle.1", c);
        res(&mut out, "decoder.middle.2", c, c);
        let mut idx = 0;
        for i in 0..levels {
            let mut ci = if i > 0 { dims[i] / 2 } else { dims[i] };
            for _ in 0..=self.num_res_blocks {
                res(&mut out, &format!("decoder.upsamples.{idx}"), ci, dims[i + 1]);
                ci = dims[i + 1];
                idx += 1;
            }
            if i != levels - 1 {
                let c = dims[i + 1];
                conv(&mut out, &format!("decoder.upsamples.{idx}.resample.1"), c / 2, c, &[3, 3]);
                if up[i] {
                    conv(&mut out, &format!("decoder.upsamples.{idx}.time_conv"), 2 * c, c, &[3, 1, 1]);
                }
                idx += 1;
            }
        }
        let c = dims[levels];
        out.push(("decoder.head.0.gamma".into(), vec![c, 1, 1, 1]));
        conv(&mut out, "decoder.head.2", 3, c, &[3, 3, 3]);
        out
    }

    /// Parameter count (decoder and post-quant conv; plus encoder and quant conv when `encoder`).
    pub fn parameter_count(&self, encoder: bool) -> usize {
        self.tensor_shapes(encoder).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// FLOPs (2 per multiply-add) of decoding one latent frame at latent size `h`×`w`: the
    /// clip's first latent (1 output frame) when `first`, else a later one (4 output frames).
    pub fn decoder_flops(&self, h: usize, w: usize, first: bool) -> f64 {
        let cfg = self;
        let levels = cfg.dim_mult.len();
        let last = cfg.dim_mult[levels - 1] * cfg.base_dim;
        let dims: Vec<usize> =
            std::iter::once(last).chain(cfg.dim_mult.iter().rev().map(|m| m * cfg.base_dim)).collect();
        let up = cfg.temporal_upsample();
        let (mut f, mut px) = (1.0f64, (h * w) as f64);
        let conv = |co: usize, ci: usize, taps: usize, f: f64, px: f64| 2.0 * (co * ci * taps) as f64 * f * px;
        let res = |ci: usize, co: usize, f: f64, px: f64| {
            conv(co, ci, 27, f, px) + conv(co, co, 27, f, px) + if ci != co { conv(co, ci, 1, f, px) } else { 0.0 }
        };
        let c0 = dims[0];
        let mut total = conv(cfg.z_dim, cfg.z_dim, 1, f, px) + conv(c0, cfg.z_dim, 27, f, px);
        total += 2.0 * res(c0, c0, f, px);
        total += conv(3 * c0, c0, 1, f, px) + conv(c0, c0, 1, f, px) + 4.0 * px * px * c0 as f64 * f;
        for i in 0..levels {
            let mut ci = if i > 0 { dims[i] / 2 } else { dims[i] };
            for _ in 0..=cfg.num_res_blocks {
                total += res(ci, dims[i + 1], f, px);
                ci = dims[i + 1];
            }
            if i != levels - 1 {
                let c = dims[i + 1];
                if up[i] && !first {
                    total += conv(2 * c, c, 3, f, px);
                    f *= 2.0;
                }
                px *= 4.0;
                total += conv(c / 2, c, 9, f, px);
            }
        }
        total + conv(3, dims[levels], 27, f, px)
    }

    /// Reads the shape parameters from Wan-layout tensor shapes; mean and std are Wan2.1's when
    /// `z_dim` is 16 (callers override them from a config file when they have one).
    pub fn infer(shapes: &BTreeMap<String, Vec<usize>>) -> Result<Self> {
        let get = |name: &str| {
            shapes.get(name).ok_or_else(|| NnError::MissingTensor { name: name.to_string(), expected: vec![] })
        };
        let z_dim = get("conv2.weight")?[0];
        // Decoder module indices: residual blocks carry `residual.2.weight`, resamplers `resample.1.weight`.
        let mut res_out: BTreeMap<usize, usize> = BTreeMap::new();
        let mut resamplers: BTreeMap<usize, bool> = BTreeMap::new();
        for (name, shape) in shapes {
            let Some(rest) = name.strip_prefix("decoder.upsamples.") else { continue };
            let Some((idx, tail)) = rest.split_once('.') else { continue };
            let Ok(idx) = idx.parse::<usize>() else { continue };
            if tail == "residual.2.weight" {
                res_out.insert(idx, shape[0]);
            } else if tail == "resample.1.weight" {
                resamplers.entry(idx).or_insert(false);
            } else if tail == "time_conv.weight" {
                resamplers.insert(idx, true);
            }
        }
        let first_resample = resamplers.keys().next().copied().unwrap_or(res_out.len());
        if first_resample == 0 {
            return Err(NnError::Config("decoder.upsamples.0 is a resampler; expected a residual block".into()));
        }
        let num_res_blocks = first_resample - 1;
        let levels = resamplers.len() + 1;
        let per_level = num_res_blocks + 2;
        let level_widths: Vec<usize> = (0..levels)
            .map(|l| {
                let idx = l * per_level;
                res_out.get(&idx).copied().ok_or_else(|| NnError::MissingTensor {
                    name: format!("decoder.upsamples.{idx}.residual.2.weight"),
                    expected: vec![],
                })
            })
            .collect::<Result<_>>()?;
        let base_dim = match shapes.get("encoder.conv1.weight") {
            Some(s) => s[0],
            None => *level_widths.last().unwrap_or(&1),
        };
        let mut dim_mult: Vec<usize> = Vec::with_capacity(levels);
        for &w in level_widths.iter().rev() {
            if base_dim == 0 || w % base_dim != 0 {
                return Err(NnError::Config(format!(
                    "decoder width {w} is not a multiple of the base width {base_dim}"
                )));
            }
            dim_mult.push(w / base_dim);
        }
        let temporal_downsample: Vec<bool> = resamplers.values().rev().copied().collect();
        let (latents_mean, latents_std) = if z_dim == 16 {
            (WAN21_LATENT_MEAN.to_vec(), WAN21_LATENT_STD.to_vec())
        } else {
            (vec![0.0; z_dim], vec![1.0; z_dim])
        };
        let cfg = Self { z_dim, base_dim, dim_mult, num_res_blocks, temporal_downsample, latents_mean, latents_std };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan21_parameter_counts_match_the_spec() {
        let cfg = VaeConfig::wan21();
        let dec = cfg.parameter_count(false);
        let all = cfg.parameter_count(true);
        assert_eq!(dec, 73_295_331 + 272);
        assert_eq!(all, 126_892_531);
    }

    #[test]
    fn decoder_flops_match_the_spec() {
        // wan.md §7.4: 13.55 TFLOP per later latent frame and 4.35 for the first, at 60×104.
        let cfg = VaeConfig::wan21();
        let steady = cfg.decoder_flops(60, 104, false) / 1e12;
        let first = cfg.decoder_flops(60, 104, true) / 1e12;
        assert!((steady - 13.55).abs() < 0.01, "{steady}");
        assert!((first - 4.35).abs() < 0.01, "{first}");
    }

    #[test]
    fn infer_round_trips() {
        for cfg in [VaeConfig::wan21(), VaeConfig::tiny()] {
            for enc in [true, false] {
                let shapes: BTreeMap<_, _> = cfg.tensor_shapes(enc).into_iter().collect();
                assert_eq!(VaeConfig::infer(&shapes).unwrap(), cfg);
            }
        }
        let odd = VaeConfig {
            base_dim: 4,
            dim_mult: vec![1, 3, 2],
            num_res_blocks: 1,
            temporal_downsample: vec![true, false],
            ..VaeConfig::wan21()
        };
        let shapes: BTreeMap<_, _> = odd.tensor_shapes(true).into_iter().collect();
        assert_eq!(VaeConfig::infer(&shapes).unwrap(), odd);
    }
}

//! The Wan VAE encoder and decoder (wan.md §5.4, §5.7) built from Wan-layout tensors.

use candle_core::Tensor;
use std::collections::HashMap;

use super::config::VaeConfig;
use super::layers::{AttentionBlock, CausalConv3d, FeatureCache, Resample, ResampleMode, ResidualBlock};
use super::ops;
use crate::error::{NnError, Result};

/// Takes named tensors out of a map, reporting the first missing one by name.
pub(crate) struct Weights<'a> {
    map: &'a HashMap<String, Tensor>,
}

impl<'a> Weights<'a> {
    pub(crate) fn new(map: &'a HashMap<String, Tensor>) -> Self {
        Self { map }
    }

    fn get(&self, name: &str) -> Result<Tensor> {
        self.map.get(name).cloned().ok_or_else(|| NnError::MissingTensor { name: name.to_string(), expected: vec![] })
    }

    /// A norm gain stored as `[C, 1, 1(, 1)]`, kept flat.
    fn gamma(&self, name: &str) -> Result<Tensor> {
        Ok(self.get(name)?.flatten_all()?)
    }

    fn conv(&self, p: &str, pad_t: usize, pad_hw: usize) -> Result<CausalConv3d> {
        Ok(CausalConv3d {
            weight: self.get(&format!("{p}.weight"))?,
            bias: self.get(&format!("{p}.bias"))?,
            pad_t,
            pad_hw,
            stride_t: 1,
        })
    }

    fn residual(&self, p: &str, ci: usize, co: usize) -> Result<ResidualBlock> {
        Ok(ResidualBlock {
            norm1: self.gamma(&format!("{p}.residual.0.gamma"))?,
            conv1: self.conv(&format!("{p}.residual.2"), 2, 1)?,
            norm2: self.gamma(&format!("{p}.residual.3.gamma"))?,
            conv2: self.conv(&format!("{p}.residual.6"), 2, 1)?,
            shortcut: if ci != co { Some(self.conv(&format!("{p}.shortcut"), 0, 0)?) } else { None },
        })
    }

    fn attention(&self, p: &str) -> Result<AttentionBlock> {
        Ok(AttentionBlock {
            norm: self.gamma(&format!("{p}.norm.gamma"))?,
            qkv_weight: self.get(&format!("{p}.to_qkv.weight"))?,
            qkv_bias: self.get(&format!("{p}.to_qkv.bias"))?,
            proj_weight: self.get(&format!("{p}.proj.weight"))?,
            proj_bias: self.get(&format!("{p}.proj.bias"))?,
        })
    }

    fn resample(&self, p: &str, mode: ResampleMode) -> Result<Resample> {
        let time_conv = match mode {
            ResampleMode::Upsample3d => Some(self.conv(&format!("{p}.time_conv"), 2, 0)?),
            ResampleMode::Downsample3d => {
                Some(CausalConv3d { stride_t: 2, ..self.conv(&format!("{p}.time_conv"), 0, 0)? })
            }
            _ => None,
        };
        Ok(Resample {
            mode,
            weight: self.get(&format!("{p}.resample.1.weight"))?,
            bias: self.get(&format!("{p}.resample.1.bias"))?,
            time_conv,
        })
    }
}

/// One step of the encoder's or decoder's main path.
#[derive(Debug, Clone)]
enum Stage {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Resample(Resample),
}

impl Stage {
    fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        match self {
            Stage::Residual(r) => r.forward(x, cache),
            Stage::Attention(a) => a.forward(x),
            Stage::Resample(r) => r.forward(x, cache),
        }
    }
}

/// conv_in → stages → RMS norm, SiLU, conv_out; shared shape of encoder and decoder.
#[derive(Debug, Clone)]
pub struct Tower {
    conv_in: CausalConv3d,
    stages: Vec<Stage>,
    head_norm: Tensor,
    head_conv: CausalConv3d,
}

impl Tower {
    /// Runs one pass over `x` `[T, C, H, W]`, reading and refreshing `cache`.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        cache.begin_pass();
        let mut x = self.conv_in.forward_cached(x, cache.next_slot())?;
        for stage in &self.stages {
            x = stage.forward(&x, cache)?;
        }
        let x = ops::rms_norm_channels(&x, &self.head_norm, true)?;
        self.head_conv.forward_cached(&x, cache.next_slot())
    }

    /// The decoder of `cfg` from Wan-layout weights.
    pub(crate) fn decoder(cfg: &VaeConfig, w: &Weights<'_>) -> Result<Self> {
        let levels = cfg.dim_mult.len();
        let last = cfg.dim_mult[levels - 1] * cfg.base_dim;
        let dims: Vec<usize> =
            std::iter::once(last).chain(cfg.dim_mult.iter().rev().map(|m| m * cfg.base_dim)).collect();
        let up = cfg.temporal_upsample();
        let mut stages = vec![
            Stage::Residual(w.residual("decoder.middle.0", dims[0], dims[0])?),
            Stage::Attention(w.attention("decoder.middle.1")?),
            Stage::Residual(w.residual("decoder.middle.2", dims[0], dims[0])?),
        ];
        let mut idx = 0;
        for i in 0..levels {
            let mut ci = if i > 0 { dims[i] / 2 } else { dims[i] };
            for _ in 0..=cfg.num_res_blocks {
                stages.push(Stage::Residual(w.residual(&format!("decoder.upsamples.{idx}"), ci, dims[i + 1])?));
                ci = dims[i + 1];
                idx += 1;
            }
            if i != levels - 1 {
                let mode = if up[i] { ResampleMode::Upsample3d } else { ResampleMode::Upsample2d };
                stages.push(Stage::Resample(w.resample(&format!("decoder.upsamples.{idx}"), mode)?));
                idx += 1;
            }
        }
        Ok(Self {
            conv_in: w.conv("decoder.conv1", 2, 1)?,
            stages,
            head_norm: w.gamma("decoder.head.0.gamma")?,
            head_conv: w.conv("decoder.head.2", 2, 1)?,
        })
    }

    /// The encoder of `cfg` from Wan-layout weights.
    pub(crate) fn encoder(cfg: &VaeConfig, w: &Weights<'_>) -> Result<Self> {
        let levels = cfg.dim_mult.len();
        let dims: Vec<usize> =
            std::iter::once(1).chain(cfg.dim_mult.iter().copied()).map(|m| m * cfg.base_dim).collect();
        let mut stages = Vec::new();
        let mut idx = 0;
        for i in 0..levels {
            let mut ci = dims[i];
            for _ in 0..cfg.num_res_blocks {
                stages.push(Stage::Residual(w.residual(&format!("encoder.downsamples.{idx}"), ci, dims[i + 1])?));
                ci = dims[i + 1];
                idx += 1;
            }
            if i != levels - 1 {
                let mode =
                    if cfg.temporal_downsample[i] { ResampleMode::Downsample3d } else { ResampleMode::Downsample2d };
                stages.push(Stage::Resample(w.resample(&format!("encoder.downsamples.{idx}"), mode)?));
                idx += 1;
            }
        }
        let c = dims[levels];
        stages.push(Stage::Residual(w.residual("encoder.middle.0", c, c)?));
        stages.push(Stage::Attention(w.attention("encoder.middle.1")?));
        stages.push(Stage::Residual(w.residual("encoder.middle.2", c, c)?));
        Ok(Self {
            conv_in: w.conv("encoder.conv1", 2, 1)?,
            stages,
            head_norm: w.gamma("encoder.head.0.gamma")?,
            head_conv: w.conv("encoder.head.2", 2, 1)?,
        })
    }

    /// Pointwise conv taken by name (the quant / post-quant convs).
    pub(crate) fn pointwise(w: &Weights<'_>, name: &str) -> Result<CausalConv3d> {
        w.conv(name, 0, 0)
    }
}

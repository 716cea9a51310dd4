//! Input and output maps of the DiT: patch embedding, time and text embeddings, head.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::config::WanConfig;
use crate::error::{NnError, Result};
use crate::linear::Linear;

/// Sinusoidal features of timesteps on the 0–1000 scale, cosines first (computed in f64).
pub fn sinusoid(t: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(t.len() * dim);
    for &ti in t {
        let ti = ti as f64;
        let angles: Vec<f64> = (0..half).map(|i| ti * 10000f64.powf(-(i as f64) / half as f64)).collect();
        out.extend(angles.iter().map(|a| a.cos() as f32));
        out.extend(angles.iter().map(|a| a.sin() as f32));
    }
    out
}

/// Fixed 2-D sinusoidal position of every token of an `hp`×`wp` grid, `[hp·wp, dim]` in (h, w)
/// order: the first half of the channels encodes the row, the second the column, each as sines
/// then cosines over `dim / 4` frequencies from 1 down to 1/10000 per token.
pub fn spatial_position(hp: usize, wp: usize, dim: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter).map(|i| 10000f64.powf(-(i as f64) / quarter.max(1) as f64)).collect();
    let mut out = vec![0f32; hp * wp * dim];
    for r in 0..hp {
        for c in 0..wp {
            let row = &mut out[(r * wp + c) * dim..(r * wp + c + 1) * dim];
            for (half, pos) in [(0, r as f64), (1, c as f64)] {
                let base = half * 2 * quarter;
                for (i, w) in omega.iter().enumerate() {
                    row[base + i] = (pos * w).sin() as f32;
                    row[base + quarter + i] = (pos * w).cos() as f32;
                }
            }
        }
    }
    out
}

/// Conv3d with kernel = stride, as a linear map over flattened patches.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    patch: [usize; 3],
}

impl PatchEmbed {
    /// Loads `patch_embedding.{weight,bias}`.
    pub fn load(vb: &VarBuilder, cfg: &WanConfig) -> Result<Self> {
        let [pt, ph, pw] = cfg.patch_size;
        let fan_in = cfg.in_dim * pt * ph * pw;
        let w =
            vb.get_with_hints((cfg.dim, cfg.in_dim, pt, ph, pw), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let bias = vb.get_with_hints(cfg.dim, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight: w.reshape((cfg.dim, fan_in))?, bias, patch: cfg.patch_size })
    }

    /// Latents `[F, C, H, W]` → tokens `[F·hp·wp, D]` in (f, h, w) order.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (f, c, h, w) = x.dims4()?;
        let [_, ph, pw] = self.patch;
        if h % ph != 0 || w % pw != 0 {
            return Err(NnError::Input(format!("latent size {h}×{w} is not a multiple of the {ph}×{pw} patch")));
        }
        let (hp, wp) = (h / ph, w / pw);
        let patches = x
            .reshape((f, c, hp, ph, wp, pw))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((f * hp * wp, c * ph * pw))?;
        let wd = self.weight.dtype();
        let y = patches.to_dtype(wd)?.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
        Ok(y.to_dtype(DType::F32)?)
    }
}

/// `time_embedding` (Linear, SiLU, Linear) and `time_projection` (SiLU, Linear → 6·D).
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    fc1: Linear,
    fc2: Linear,
    proj: Linear,
    freq_dim: usize,
    dim: usize,
}

impl TimeEmbedding {
    /// Loads `time_embedding.{0,2}` and `time_projection.1` from the model root.
    pub fn load(vb: &VarBuilder, cfg: &WanConfig) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(&vb.pp("time_embedding.0"), cfg.freq_dim, cfg.dim, true)?,
            fc2: Linear::load(&vb.pp("time_embedding.2"), cfg.dim, cfg.dim, true)?,
            proj: Linear::load(&vb.pp("time_projection.1"), cfg.dim, 6 * cfg.dim, true)?,
            freq_dim: cfg.freq_dim,
            dim: cfg.dim,
        })
    }

    /// Per-frame timesteps → (e `[F, D]`, e0 `[F, 6, D]`), in f32.
    pub fn forward(&self, t: &[f32], device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let feats = Tensor::from_vec(sinusoid(t, self.freq_dim), (t.len(), self.freq_dim), device)?;
        let e = self.fc2.forward(&candle_nn::ops::silu(&self.fc1.forward(&feats)?)?)?;
        let e0 = self.proj.forward(&candle_nn::ops::silu(&e)?)?.reshape((t.len(), 6, self.dim))?;
        Ok((e, e0))
    }

    /// Linear layers by their canonical names (for LoRA and inspection).
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        vec![
            ("time_embedding.0", &mut self.fc1),
            ("time_embedding.2", &mut self.fc2),
            ("time_projection.1", &mut self.proj),
        ]
    }
}

/// `text_embedding`: Linear(text_dim → D), GELU(tanh), Linear(D → D).
#[derive(Debug, Clone)]
pub struct TextEmbedding {
    fc1: Linear,
    fc2: Linear,
    text_len: usize,
    text_dim: usize,
}

impl TextEmbedding {
    /// Loads `text_embedding.{0,2}`.
    pub fn load(vb: &VarBuilder, cfg: &WanConfig) -> Result<Self> {
        Ok(Self {
            fc1: Linear::load(&vb.pp("text_embedding.0"), cfg.text_dim, cfg.dim, true)?,
            fc2: Linear::load(&vb.pp("text_embedding.2"), cfg.dim, cfg.dim, true)?,
            text_len: cfg.text_len,
            text_dim: cfg.text_dim,
        })
    }

    /// Caption embeddings `[N, L ≤ text_len, text_dim]`, zero-padded to text_len → `[N, text_len, D]`.
    pub fn forward(&self, captions: &Tensor) -> Result<Tensor> {
        let (n, l, d) = captions.dims3()?;
        if d != self.text_dim {
            return Err(NnError::Input(format!(
                "caption embeddings have width {d}; the model expects {}",
                self.text_dim
            )));
        }
        if l > self.text_len {
            return Err(NnError::Input(format!(
                "caption embeddings have {l} tokens; the model takes at most {}",
                self.text_len
            )));
        }
        if n == 0 {
            return Err(NnError::Input("no caption embeddings given".into()));
        }
        let x = captions.to_dtype(DType::F32)?;
        let x = if l < self.text_len { x.pad_with_zeros(1, 0, self.text_len - l)? } else { x };
        let h = crate::fused::gelu_tanh(&self.fc1.forward(&x)?)?;
        self.fc2.forward(&h)
    }
}

/// The output head: modulated LayerNorm, Linear(D → patch·C).
#[derive(Debug, Clone)]
pub struct Head {
    modulation: Tensor,
    linear: Linear,
    eps: f64,
}

impl Head {
    /// Loads `head.modulation` and `head.head`.
    pub fn load(vb: &VarBuilder, cfg: &WanConfig) -> Result<Self> {
        let modulation = vb
            .get_with_hints(
                (1, 2, cfg.dim),
                "modulation",
                candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 / (cfg.dim as f64).sqrt() },
            )?
            .to_dtype(DType::F32)?;
        Ok(Self { modulation, linear: Linear::load(&vb.pp("head"), cfg.dim, cfg.patch_out(), true)?, eps: cfg.eps })
    }

    /// Tokens `[F, P, D]` and time embedding e `[F, D]` → `[F·P, patch·C]`; no SiLU on e.
    pub fn forward(&self, x: &Tensor, e: &Tensor) -> Result<Tensor> {
        let (f, p, d) = x.dims3()?;
        let m = self.modulation.broadcast_add(&e.unsqueeze(1)?)?; // [F, 2, D]
        let shift = m.narrow(1, 0, 1)?;
        let scale = m.narrow(1, 1, 1)?;
        let h = crate::fused::modulated_layer_norm(x, &scale.contiguous()?, &shift.contiguous()?, self.eps)?;
        self.linear.forward(&h.reshape((f * p, d))?)
    }

    /// The head's linear layer.
    pub fn linear_mut(&mut self) -> &mut Linear {
        &mut self.linear
    }
}

/// Head output `[F·hp·wp, ph·pw·C]` (c fastest) → latents `[F, C, hp·ph, wp·pw]`.
pub fn unpatchify(y: &Tensor, f: usize, hp: usize, wp: usize, patch: [usize; 3], c: usize) -> Result<Tensor> {
    let [_, ph, pw] = patch;
    Ok(y.reshape((f, hp, wp, ph, pw, c))?.permute((0, 5, 1, 3, 2, 4))?.contiguous()?.reshape((
        f,
        c,
        hp * ph,
        wp * pw,
    ))?)
}

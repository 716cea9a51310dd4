//! The Wan2.1 causal 3-D VAE (wan.md §5): streaming decode one or more latent frames at a time
//! with feature caches, chunked encode, and loading from the Wan and diffusers layouts with the
//! widths read from the checkpoint's shapes.

mod config;
mod layers;
mod model;
mod names;
pub mod ops;

pub use config::{VaeConfig, WAN21_LATENT_MEAN, WAN21_LATENT_STD};
pub use layers::{CacheSlot, FeatureCache};
pub use names::{detect_layout, diffusers_to_wan, wan_to_diffusers, VaeLayout};

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{check_tensor_shapes, save_safetensors, TensorFiles};
use crate::codec::{DecodeStream, VideoCodec};
use crate::error::{NnError, Result};
use layers::CausalConv3d;
use model::{Tower, Weights};

/// Elements of the largest activation one decoder or encoder pass may hold (≈ 256 MiB in f32);
/// longer inputs are split into several passes, which give the same frames.
const PASS_BUDGET: usize = 1 << 26;

/// File names a VAE is looked for under, in a model folder.
const VAE_FILES: [&str; 6] = [
    "vae.safetensors",
    "Wan2.1_VAE.pth",
    "Wan2.1_VAE.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/vae.safetensors",
    "diffusion_pytorch_model.safetensors",
];

/// The Wan VAE: encoder (optional), decoder and latent normalisation.
#[derive(Debug)]
pub struct WanVae {
    cfg: VaeConfig,
    encoder: Option<Tower>,
    quant: Option<CausalConv3d>,
    decoder: Tower,
    post_quant: CausalConv3d,
    /// Wan-layout tensors as loaded (kept for saving and inspection).
    tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: Device,
}

impl WanVae {
    /// Builds the VAE from Wan-layout tensors; the encoder is built when its tensors are present.
    pub fn from_tensors(cfg: VaeConfig, tensors: HashMap<String, Tensor>) -> Result<Self> {
        cfg.validate()?;
        let has_encoder = tensors.keys().any(|k| k.starts_with("encoder.") || k.starts_with("conv1."));
        check_shapes(&cfg, &tensors, has_encoder)?;
        let first = tensors.get("conv2.weight").ok_or_else(|| NnError::MissingTensor {
            name: "conv2.weight".into(),
            expected: vec![cfg.z_dim, cfg.z_dim, 1, 1, 1],
        })?;
        let (dtype, device) = (first.dtype(), first.device().clone());
        let w = Weights::new(&tensors);
        let decoder = Tower::decoder(&cfg, &w)?;
        let post_quant = Tower::pointwise(&w, "conv2")?;
        let (encoder, quant) = if has_encoder {
            (Some(Tower::encoder(&cfg, &w)?), Some(Tower::pointwise(&w, "conv1")?))
        } else {
            (None, None)
        };
        Ok(Self { cfg, encoder, quant, decoder, post_quant, tensors, dtype, device })
    }

    /// Random weights (for benches and tests): convs ~ U(±1/√fan_in), gains near 1.
    pub fn random(cfg: &VaeConfig, encoder: bool, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in cfg.tensor_shapes(encoder) {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if name.ends_with(".gamma") {
                (0..n).map(|_| 1.0 + rng.random_range(-0.2f32..0.2)).collect()
            } else {
                let fan_in: usize = if shape.len() > 1 { shape[1..].iter().product() } else { shape[0] };
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            let t = Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?;
            tensors.insert(name, t);
        }
        Self::from_tensors(cfg.clone(), tensors)
    }

    /// Loads a VAE from a weights file (`Wan2.1_VAE.pth`, a diffusers `AutoencoderKLWan`
    /// safetensors file, our `vae.safetensors`) or a folder holding one. Latent mean and std come
    /// from a `vae_config.json` / `config.json` beside the weights when present (`latents_mean`,
    /// `latents_std`), else from Wan2.1's constants.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let file = find_vae_file(path)?;
        let files = TensorFiles::open(&file)?;
        let names: Vec<&str> = files.headers().iter().map(|h| h.name.as_str()).collect();
        let layout = detect_layout(names.iter().copied());
        let blocks = names::diffusers_decoder_blocks(names.iter().copied());
        let to_wan = |n: &str| match layout {
            VaeLayout::Wan => n.to_string(),
            VaeLayout::Diffusers => diffusers_to_wan(n, blocks),
        };
        let shapes: BTreeMap<String, Vec<usize>> =
            files.headers().iter().map(|h| (to_wan(&h.name), h.shape.clone())).collect();
        let mut cfg = VaeConfig::infer(&shapes)
            .map_err(|e| NnError::BadCheckpoint { path: file.clone(), reason: format!("not a Wan VAE: {e}") })?;
        if let Some((mean, std)) = read_latent_stats(&file)? {
            cfg.latents_mean = mean;
            cfg.latents_std = std;
        }
        let has_encoder = shapes.keys().any(|k| k.starts_with("encoder."));
        check_names(&cfg, &shapes, has_encoder)?;
        let mut tensors = HashMap::new();
        for h in files.headers() {
            tensors.insert(to_wan(&h.name), files.load(&h.name, dtype, device)?);
        }
        Self::from_tensors(cfg, tensors)
    }

    /// Writes `dir/vae.safetensors` (Wan layout) and `dir/vae_config.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
        save_safetensors(&dir.join("vae.safetensors"), &self.tensors)?;
        let json = serde_json::to_string_pretty(&self.cfg).map_err(|e| NnError::Config(e.to_string()))?;
        std::fs::write(dir.join("vae_config.json"), json).map_err(|e| NnError::io(dir.join("vae_config.json"), e))
    }

    /// The tensors in `layout` naming (for writing checkpoints in either layout).
    pub fn tensors_in_layout(&self, layout: VaeLayout) -> HashMap<String, Tensor> {
        let blocks = self.cfg.num_res_blocks + 1;
        self.tensors
            .iter()
            .map(|(k, v)| match layout {
                VaeLayout::Wan => (k.clone(), v.clone()),
                VaeLayout::Diffusers => (wan_to_diffusers(k, blocks), v.clone()),
            })
            .collect()
    }

    /// Shape parameters and latent normalisation.
    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Whether the encoder weights were loaded.
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// Dtype of the weights (and of the computation).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn stats(&self) -> Result<(Tensor, Tensor)> {
        let z = self.cfg.z_dim;
        let mean = Tensor::from_vec(self.cfg.latents_mean.clone(), (1, z, 1, 1), &self.device)?;
        // The reference holds 1/std in f32 and divides by it; doing the same keeps parity to the ulp.
        let inv: Vec<f32> = self.cfg.latents_std.iter().map(|s| 1.0 / s).collect();
        let inv = Tensor::from_vec(inv, (1, z, 1, 1), &self.device)?;
        Ok((mean.to_dtype(self.dtype)?, inv.to_dtype(self.dtype)?))
    }

    /// Normalised latents → the decoder's input (un-normalised, then the post-quant conv).
    fn decoder_input(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, inv) = self.stats()?;
        let z = latents.to_dtype(self.dtype)?.broadcast_div(&inv)?.broadcast_add(&mean)?;
        self.post_quant.run(&z, None)
    }

    /// Latent frames per decoder pass at latent size `h`×`w`.
    fn decode_pass_len(&self, h: usize, w: usize) -> usize {
        let s = self.cfg.spatial_scale();
        let frame = self.cfg.base_dim * self.cfg.dim_mult[0] * self.cfg.temporal_scale() * h * s * w * s;
        (PASS_BUDGET / frame.max(1)).max(1)
    }

    fn check_latents(&self, latents: &Tensor) -> Result<()> {
        let dims = latents.dims();
        if dims.len() != 4 || dims[1] != self.cfg.z_dim {
            return Err(NnError::Input(format!(
                "latents must be [frames, {}, height, width]; got {dims:?}",
                self.cfg.z_dim
            )));
        }
        if dims[0] == 0 || dims[2] == 0 || dims[3] == 0 {
            return Err(NnError::Input(format!("latents {dims:?} hold no frames or pixels")));
        }
        Ok(())
    }

    fn check_frames(&self, frames: &Tensor) -> Result<()> {
        let dims = frames.dims();
        let s = self.cfg.spatial_scale();
        if dims.len() != 4 || dims[1] != 3 {
            return Err(NnError::Input(format!("frames must be [frames, 3, height, width] RGB; got {dims:?}")));
        }
        if dims[0] == 0 {
            return Err(NnError::Input("no frames to encode".into()));
        }
        if dims[2] == 0 || dims[3] == 0 || !dims[2].is_multiple_of(s) || !dims[3].is_multiple_of(s) {
            return Err(NnError::Input(format!(
                "frame size {}×{} (H×W) is not a multiple of {s} in both directions",
                dims[2], dims[3]
            )));
        }
        if !(dims[0] - 1).is_multiple_of(self.cfg.temporal_scale()) {
            return Err(NnError::Input(format!(
                "a clip to encode needs 1 + {}k frames; got {}",
                self.cfg.temporal_scale(),
                dims[0]
            )));
        }
        Ok(())
    }

    /// Encodes `[F, 3, H, W]` pixels in [−1, 1] (F = 1 + 4k) to normalised latents `[1 + k, z, h, w]`.
    pub fn encode_clip(&self, frames: &Tensor) -> Result<Tensor> {
        let (mu, _) = self.encode_moments(frames)?;
        let (mean, inv) = self.stats()?;
        Ok(mu.broadcast_sub(&mean)?.broadcast_mul(&inv)?)
    }

    /// The encoder's raw posterior of `[F, 3, H, W]` pixels: mean and log-variance
    /// `[1 + k, z, h, w]` each, before latent normalisation (what VAE training needs).
    pub fn encode_moments(&self, frames: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check_frames(frames)?;
        let (encoder, quant) = match (&self.encoder, &self.quant) {
            (Some(e), Some(q)) => (e, q),
            _ => return Err(NnError::Input("this VAE checkpoint has no encoder weights".into())),
        };
        let (f, _, h, w) = frames.dims4()?;
        let ts = self.cfg.temporal_scale();
        let per_frame = self.cfg.base_dim * h * w;
        let groups = (PASS_BUDGET / (per_frame * ts).max(1)).max(1);
        let frames = frames.to_dtype(self.dtype)?;
        let mut cache = FeatureCache::default();
        let mut outs = Vec::new();
        // First pass: frame 0 plus whole groups, like the reference's 1, 4, 4, … chunks.
        let mut start = 0usize;
        while start < f {
            let len = if start == 0 { 1 + ts * (groups - 1).min((f - 1) / ts) } else { (ts * groups).min(f - start) };
            outs.push(encoder.forward(&frames.narrow(0, start, len)?, &mut cache)?);
            start += len;
        }
        let out = if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 0)? };
        let out = quant.run(&out, None)?;
        Ok((out.narrow(1, 0, self.cfg.z_dim)?, out.narrow(1, self.cfg.z_dim, self.cfg.z_dim)?))
    }

    /// Decodes raw (un-normalised) latents `[T, z, h, w]` of a whole clip to `[1 + 4(T−1), 3, H, W]`
    /// without the output clamp, so that training gradients reach every pixel.
    pub fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        self.check_latents(z)?;
        let (t, _, h, w) = z.dims4()?;
        let x = self.post_quant.run(&z.to_dtype(self.dtype)?, None)?;
        let pass = self.decode_pass_len(h, w);
        let mut cache = FeatureCache::default();
        let mut outs = Vec::new();
        let mut start = 0;
        while start < t {
            let len = pass.min(t - start);
            outs.push(self.decoder.forward(&x.narrow(0, start, len)?, &mut cache)?);
            start += len;
        }
        Ok(if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 0)? })
    }

    /// Every weight by its Wan-layout name (the tensors the VAE computes with).
    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }
}

impl VideoCodec for WanVae {
    fn name(&self) -> &str {
        "wan"
    }

    fn latent_channels(&self) -> usize {
        self.cfg.z_dim
    }

    fn spatial_scale(&self) -> usize {
        self.cfg.spatial_scale()
    }

    fn decode_stream(self: Arc<Self>) -> Box<dyn DecodeStream> {
        Box::new(WanDecodeStream { vae: self, cache: FeatureCache::default(), seen: 0 })
    }

    fn encode(&self, frames: &Tensor) -> Result<Tensor> {
        self.encode_clip(frames)
    }
}

/// Streaming decode state of one clip: the 32 feature-cache slots (for Wan2.1) and a count.
pub struct WanDecodeStream {
    vae: Arc<WanVae>,
    cache: FeatureCache,
    seen: usize,
}

impl DecodeStream for WanDecodeStream {
    fn push(&mut self, latents: &Tensor) -> Result<Tensor> {
        self.vae.check_latents(latents)?;
        let (t, _, h, w) = latents.dims4()?;
        let x = self.vae.decoder_input(latents)?;
        let pass = self.vae.decode_pass_len(h, w);
        let mut outs = Vec::new();
        let mut start = 0;
        while start < t {
            let len = pass.min(t - start);
            let y = self.vae.decoder.forward(&x.narrow(0, start, len)?, &mut self.cache)?;
            outs.push(ops::clamp(&y, -1.0, 1.0)?);
            start += len;
        }
        self.seen += t;
        let out = if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 0)? };
        Ok(out.to_dtype(DType::F32)?)
    }

    fn latents_seen(&self) -> usize {
        self.seen
    }

    fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
}

/// Every expected tensor present with the right shape (names are Wan layout).
fn check_shapes(cfg: &VaeConfig, tensors: &HashMap<String, Tensor>, encoder: bool) -> Result<()> {
    let shapes: BTreeMap<String, Vec<usize>> = tensors.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    check_names(cfg, &shapes, encoder)
}

fn check_names(cfg: &VaeConfig, found: &BTreeMap<String, Vec<usize>>, encoder: bool) -> Result<()> {
    check_tensor_shapes(&cfg.tensor_shapes(encoder), found)
}

/// The VAE weights file at `path`, or inside the folder `path`.
pub fn find_vae_file(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(NnError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
    }
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    for name in VAE_FILES {
        let p = path.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(NnError::BadCheckpoint {
        path: path.to_path_buf(),
        reason: format!("no VAE weights in this folder (looked for {})", VAE_FILES.join(", ")),
    })
}

/// `latents_mean` / `latents_std` from `vae_config.json` or `config.json` beside `file`.
fn read_latent_stats(file: &Path) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let dir = file.parent().unwrap_or(Path::new("."));
    for name in ["vae_config.json", "config.json"] {
        let p = dir.join(name);
        if !p.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| NnError::io(&p, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| NnError::Config(format!("{}: {e}", p.display())))?;
        let read = |key: &str| -> Option<Vec<f32>> {
            v.get(key)?.as_array()?.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
        };
        if let (Some(m), Some(s)) = (read("latents_mean"), read("latents_std")) {
            return Ok(Some((m, s)));
        }
    }
    Ok(None)
}

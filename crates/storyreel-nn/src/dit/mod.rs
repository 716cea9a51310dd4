//! The Wan2.1 DiT (wan.md §1) with the two modes ShotStream needs from one set of weights:
//! bidirectional over [context ‖ target] (teacher, critic) and causal chunked with the dual KV
//! cache (student). A block-causal one-pass forward gives the training-time mask of §3.3.

pub mod block;
pub mod embed;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::attention::KvSpan;
use crate::config::WanConfig;
use crate::error::{NnError, Result};
use crate::kv_cache::{CacheGeometry, CaptionCache, ChunkSlot, ContextCache, LayerKv, LocalCache};
use crate::linear::{Linear, LoraAdapter};
use crate::rope::{FramePhase, Rope, RopeConfig};
use block::{CachedKeys, SelfKeys, WanBlock};
use embed::{Head, PatchEmbed, TextEmbedding, TimeEmbedding};

/// What the model needs to know about one input latent frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameInfo {
    /// Timestep on the 0–1000 scale (0 for clean context frames).
    pub t: f32,
    /// Temporal RoPE position and shot flag.
    pub phase: FramePhase,
    /// Index of the caption this frame cross-attends to.
    pub caption: usize,
}

/// The Wan2.1 DiT.
#[derive(Debug, Clone)]
pub struct WanModel {
    cfg: WanConfig,
    patch: PatchEmbed,
    text: TextEmbedding,
    time: TimeEmbedding,
    blocks: Vec<WanBlock>,
    head: Head,
    rope: Rope,
    kv_dtype: DType,
    device: Device,
}

impl WanModel {
    /// Builds the model from a var builder holding canonical (Wan-layout) names.
    pub fn load(vb: VarBuilder, cfg: &WanConfig, rope: RopeConfig) -> Result<Self> {
        cfg.validate()?;
        let blocks = (0..cfg.num_layers)
            .map(|i| WanBlock::load(&vb.pp(format!("blocks.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        // Keys and values use the weights' dtype: bf16 weights keep bf16 caches.
        let kv_dtype = vb.dtype();
        Ok(Self {
            patch: PatchEmbed::load(&vb.pp("patch_embedding"), cfg)?,
            text: TextEmbedding::load(&vb, cfg)?,
            time: TimeEmbedding::load(&vb, cfg)?,
            head: Head::load(&vb.pp("head"), cfg)?,
            blocks,
            rope: Rope::new(cfg.head_dim(), rope)?,
            kv_dtype,
            device: vb.device().clone(),
            cfg: cfg.clone(),
        })
    }

    /// Builds the model from canonical tensors, converting them to `dtype` on `device`.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        cfg: &WanConfig,
        rope: RopeConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load(VarBuilder::from_tensors(tensors, dtype, device), cfg, rope)
    }

    /// A model whose weights are trainable variables in `varmap` (missing ones are initialised).
    pub fn trainable(
        varmap: &VarMap,
        cfg: &WanConfig,
        rope: RopeConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load(VarBuilder::from_varmap(varmap, dtype, device), cfg, rope)
    }

    /// The shape config.
    pub fn config(&self) -> &WanConfig {
        &self.cfg
    }

    /// The RoPE tables in use.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Storage dtype of the weights and KV caches.
    pub fn dtype(&self) -> DType {
        self.kv_dtype
    }

    /// Token grid (hp, wp) of a latent of size h×w.
    pub fn token_grid(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let [_, ph, pw] = self.cfg.patch_size;
        if h == 0 || w == 0 || !h.is_multiple_of(ph) || !w.is_multiple_of(pw) {
            return Err(NnError::Input(format!(
                "latent size {h}×{w} is not a positive multiple of the {ph}×{pw} patch"
            )));
        }
        Ok((h / ph, w / pw))
    }

    /// Cache geometry for latents of size h×w.
    pub fn cache_geometry(&self, h: usize, w: usize) -> Result<CacheGeometry> {
        let (hp, wp) = self.token_grid(h, w)?;
        Ok(CacheGeometry {
            layers: self.cfg.num_layers,
            heads: self.cfg.num_heads,
            head_dim: self.cfg.head_dim(),
            tokens_per_frame: hp * wp,
            dtype: self.kv_dtype,
        })
    }

    /// Embeds captions `[N, L, text_dim]` and computes every layer's cross-attention K/V.
    pub fn embed_captions(&self, captions: &Tensor) -> Result<CaptionCache> {
        let text = self.text.forward(&captions.to_device(&self.device)?)?;
        let n = text.dim(0)?;
        let layers = self.blocks.iter().map(|b| b.caption_kv(&text, self.kv_dtype)).collect::<Result<Vec<_>>>()?;
        Ok(CaptionCache::new(layers, n))
    }

    /// Bidirectional forward: every frame attends to every frame. Returns the flow `[F, C, H, W]`.
    pub fn forward_bidirectional(&self, x: &Tensor, frames: &[FrameInfo], captions: &CaptionCache) -> Result<Tensor> {
        self.run(x, frames, captions, &mut SelfKeys::All)
    }

    /// Every frame attends only to its own tokens: a batch of independent single-frame samples
    /// (images) in one forward, each with its own timestep and caption. Same result as one
    /// [`WanModel::forward_bidirectional`] per frame, with the linear layers batched.
    pub fn forward_separate_frames(&self, x: &Tensor, frames: &[FrameInfo], captions: &CaptionCache) -> Result<Tensor> {
        self.forward_separate_samples(x, frames, &vec![1; frames.len()], captions)
    }

    /// A batch of independent bidirectional samples in one forward: the frames are split into
    /// consecutive samples of `sample_frames[i]` frames, and each frame attends to the frames of
    /// its own sample only. Same result as one [`WanModel::forward_bidirectional`] per sample.
    pub fn forward_separate_samples(
        &self,
        x: &Tensor,
        frames: &[FrameInfo],
        sample_frames: &[usize],
        captions: &CaptionCache,
    ) -> Result<Tensor> {
        if sample_frames.contains(&0) || sample_frames.iter().sum::<usize>() != frames.len() {
            return Err(NnError::Input(format!(
                "samples of {sample_frames:?} frames do not split {} frames",
                frames.len()
            )));
        }
        let (_, _, h, w) = x.dims4()?;
        let (hp, wp) = self.token_grid(h, w)?;
        let p = hp * wp;
        let mut start = 0;
        let ranges: Vec<_> = sample_frames
            .iter()
            .map(|&n| {
                let range = start * p..(start + n) * p;
                start += n;
                range
            })
            .collect();
        self.run(x, frames, captions, &mut SelfKeys::Separate(&ranges))
    }

    /// One-pass block-causal forward: frame f sees frames g with `block[g] ≤ block[f]`.
    ///
    /// Blocks must be non-decreasing along the frames (context = block 0, then the chunks).
    pub fn forward_block_causal(
        &self,
        x: &Tensor,
        frames: &[FrameInfo],
        block_of_frame: &[usize],
        captions: &CaptionCache,
    ) -> Result<Tensor> {
        if block_of_frame.len() != frames.len() {
            return Err(NnError::Input(format!("{} block ids for {} frames", block_of_frame.len(), frames.len())));
        }
        if block_of_frame.windows(2).any(|w| w[1] < w[0]) {
            return Err(NnError::Input("block ids must not decrease along the frames".into()));
        }
        let (_, _, h, w) = x.dims4()?;
        let (hp, wp) = self.token_grid(h, w)?;
        let p = hp * wp;
        let mut prefixes = Vec::new();
        let mut start = 0;
        while start < frames.len() {
            let mut end = start + 1;
            while end < frames.len() && block_of_frame[end] == block_of_frame[start] {
                end += 1;
            }
            prefixes.push((start * p..end * p, end * p));
            start = end;
        }
        self.run(x, frames, captions, &mut SelfKeys::Prefix(&prefixes))
    }

    /// Context fill: one forward over the context latents (at t = 0) that writes their K/V into
    /// `cache`; the context frames attend only to each other. The flow output is discarded.
    pub fn fill_context(
        &self,
        x: &Tensor,
        frames: &[FrameInfo],
        captions: &CaptionCache,
        cache: &mut ContextCache,
    ) -> Result<()> {
        if frames.len() != cache.frames() {
            return Err(NnError::Input(format!("{} context frames for a cache of {}", frames.len(), cache.frames())));
        }
        let mut keys = FillKeys { cache };
        self.run(x, frames, captions, &mut SelfKeys::Cached(&mut keys))?;
        keys.cache.mark_filled();
        Ok(())
    }

    /// Causal chunk forward: the chunk's keys go into its local-cache slot, and its queries see
    /// [context cache ‖ local cache up to and including the chunk]. Returns the chunk's flow.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_chunk(
        &self,
        x: &Tensor,
        frames: &[FrameInfo],
        captions: &CaptionCache,
        context: &ContextCache,
        local: &mut LocalCache,
        start_frame: usize,
    ) -> Result<Tensor> {
        let slot = local.slot_for(start_frame)?;
        let geometry = local.geometry();
        if context.geometry() != geometry {
            return Err(NnError::Input("context and local caches have different geometries".into()));
        }
        if !context.is_filled() && context.frames() > 0 {
            return Err(NnError::Input("the context cache has not been filled (run fill_context first)".into()));
        }
        let mut keys = ChunkKeys { context, local, slot, own: vec![None; self.blocks.len()] };
        let out = self.run(x, frames, captions, &mut SelfKeys::Cached(&mut keys))?;
        keys.local.commit(slot);
        Ok(out)
    }

    fn run(
        &self,
        x: &Tensor,
        frames: &[FrameInfo],
        captions: &CaptionCache,
        keys: &mut SelfKeys<'_>,
    ) -> Result<Tensor> {
        let (f, c, h, w) = x.dims4()?;
        if c != self.cfg.in_dim {
            return Err(NnError::Input(format!("latents have {c} channels; the model expects {}", self.cfg.in_dim)));
        }
        if frames.len() != f {
            return Err(NnError::Input(format!("{} frame descriptions for {f} latent frames", frames.len())));
        }
        if let Some(bad) = frames.iter().find(|fr| fr.caption >= captions.captions()) {
            return Err(NnError::Input(format!(
                "a frame is routed to caption {} but only {} caption(s) were given",
                bad.caption,
                captions.captions()
            )));
        }
        if let Some(bad) = frames.iter().find(|fr| !fr.t.is_finite()) {
            return Err(NnError::Input(format!("timestep {} is not finite", bad.t)));
        }
        let (hp, wp) = self.token_grid(h, w)?;
        let p = hp * wp;
        let mut tokens = self.patch.forward(&x.to_device(&self.device)?)?.reshape((f, p, self.cfg.dim))?;
        if self.cfg.spatial_position {
            let table = embed::spatial_position(hp, wp, self.cfg.dim);
            let table = Tensor::from_vec(table, (1, p, self.cfg.dim), &self.device)?;
            tokens = tokens.broadcast_add(&table)?;
        }
        let ts: Vec<f32> = frames.iter().map(|fr| fr.t).collect();
        let (e, e0) = self.time.forward(&ts, &self.device)?;
        let phases: Vec<FramePhase> = frames.iter().map(|fr| fr.phase).collect();
        let (cos, sin) = self.rope.tables(&phases, hp, wp, &self.device)?;
        let routing: Vec<usize> = frames.iter().map(|fr| fr.caption).collect();
        let mut xs = tokens;
        for (i, block) in self.blocks.iter().enumerate() {
            xs = block.forward(i, &xs, &e0, (&cos, &sin), keys, &captions.layers[i], &routing, self.kv_dtype)?;
        }
        let y = self.head.forward(&xs, &e)?;
        embed::unpatchify(&y, f, hp, wp, self.cfg.patch_size, self.cfg.out_dim)
    }

    /// Canonical names of the linear layers LoRA may adapt (attention q/k/v/o and FFN).
    pub fn lora_targets(&mut self) -> Vec<String> {
        self.linears_mut().into_iter().map(|(n, _)| n).collect()
    }

    /// The linear layers LoRA may adapt, with their weight shapes `[out, in]`.
    pub fn lora_target_shapes(&mut self) -> Result<Vec<(String, [usize; 2])>> {
        self.linears_mut()
            .into_iter()
            .map(|(n, l)| {
                let (out, inp) = l.weight().dims2()?;
                Ok((n, [out, inp]))
            })
            .collect()
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (n, l) in b.linears_mut() {
                out.push((format!("blocks.{i}.{n}"), l));
            }
        }
        out
    }

    /// Attaches LoRA adapters by canonical linear name (e.g. `blocks.0.self_attn.q`).
    pub fn set_lora(&mut self, adapters: HashMap<String, LoraAdapter>) -> Result<usize> {
        let mut adapters = adapters;
        let mut n = 0;
        for (name, lin) in self.linears_mut() {
            if let Some(a) = adapters.remove(&name) {
                lin.set_lora(&name, Some(a))?;
                n += 1;
            }
        }
        if let Some(name) = adapters.keys().next() {
            return Err(NnError::Input(format!(
                "LoRA adapter targets `{name}`, which is not an adaptable linear layer"
            )));
        }
        Ok(n)
    }
}

/// Keys of a context fill: written to the context cache, read back as its only span.
struct FillKeys<'a> {
    cache: &'a mut ContextCache,
}

impl CachedKeys for FillKeys<'_> {
    fn store(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        self.cache.write_layer(layer, k, v)
    }
    fn spans(&self, layer: usize) -> Vec<KvSpan<'_>> {
        let kv = self.cache.layer(layer);
        vec![span_of(kv, 0..kv.k.dims()[1])]
    }
}

/// Keys of a chunk: written to the local cache slot, read as [context ‖ local visible].
struct ChunkKeys<'a> {
    context: &'a ContextCache,
    local: &'a mut LocalCache,
    slot: ChunkSlot,
    /// The chunk's own keys and values per layer, when its slot ends the visible window: the
    /// queries then read them directly rather than from the cache, so that gradients reach the
    /// chunk's key and value projections (cache writes are storage copies) with the same keys
    /// in the same order.
    own: Vec<Option<(Tensor, Tensor)>>,
}

impl CachedKeys for ChunkKeys<'_> {
    fn store(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        self.local.write_layer(layer, self.slot, k, v)?;
        let p = self.local.geometry().tokens_per_frame;
        let frames = k.dims()[1] / p.max(1);
        if self.slot.slot_frame + frames == self.slot.visible_frames && k.dtype() == self.local.geometry().dtype {
            self.own[layer] = Some((k.contiguous()?, v.contiguous()?));
        }
        Ok(())
    }
    fn spans(&self, layer: usize) -> Vec<KvSpan<'_>> {
        let p = self.local.geometry().tokens_per_frame;
        let mut spans = Vec::with_capacity(3);
        let ctx = self.context.layer(layer);
        let ctx_rows = ctx.k.dims()[1];
        if ctx_rows > 0 {
            spans.push(span_of(ctx, 0..ctx_rows));
        }
        match &self.own[layer] {
            Some((k, v)) => {
                if self.slot.slot_frame > 0 {
                    spans.push(span_of(self.local.layer(layer), 0..self.slot.slot_frame * p));
                }
                spans.push(KvSpan { k, v, rows: 0..k.dims()[1] });
            }
            None => spans.push(span_of(self.local.layer(layer), 0..self.slot.visible_frames * p)),
        }
        spans
    }
}

fn span_of(kv: &LayerKv, rows: std::ops::Range<usize>) -> KvSpan<'_> {
    KvSpan { k: &kv.k, v: &kv.v, rows }
}

/// Deterministic random weights (canonical names) for tests and benchmarks.
///
/// Linear weights are N(0, 1/fan_in), biases and modulation tables N(0, 0.1²), norm weights
/// 1 + N(0, 0.1²), so that every parameter influences the output.
pub fn random_weights(cfg: &WanConfig, seed: u64, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    use rand::{Rng, SeedableRng};
    cfg.validate()?;
    let mut names = crate::checkpoint::dit_tensor_shapes(cfg);
    names.sort();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (name, shape) in names {
        let n: usize = shape.iter().product();
        let std = if name.ends_with(".weight") && shape.len() >= 2 {
            1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt()
        } else {
            0.1
        };
        let base = if name.contains("norm") && name.ends_with(".weight") { 1.0 } else { 0.0 };
        let data: Vec<f32> = (0..n)
            .map(|_| {
                // Box–Muller from two uniforms keeps this independent of rand_distr.
                let u1: f32 = rng.random_range(1e-7f32..1.0);
                let u2: f32 = rng.random::<f32>();
                base + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        out.insert(name, Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?);
    }
    Ok(out)
}

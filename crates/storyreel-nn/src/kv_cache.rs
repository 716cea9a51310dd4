//! The dual KV cache of the causal student (context + local) and the cross-attention cache.
//!
//! Keys are stored after RoPE, `[H, capacity, hd]` per layer. The context cache holds the sparse
//! frames of earlier shots, filled by one forward at t = 0; the local cache holds the current
//! shot and is dropped at each shot's end. With a sliding window, chunks past the capacity reuse
//! the slots after the sink frames in ring order: attention is order-free over keys that already
//! carry their positions, so nothing is ever shifted or copied.

use candle_core::{DType, Device, Tensor};

use crate::error::{NnError, Result};

/// Keys and values of one layer, `[H, capacity, hd]` each.
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// Post-RoPE keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

impl LayerKv {
    fn zeros(heads: usize, rows: usize, head_dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            k: Tensor::zeros((heads, rows, head_dim), dtype, device)?,
            v: Tensor::zeros((heads, rows, head_dim), dtype, device)?,
        })
    }

    fn write(&self, k: &Tensor, v: &Tensor, row: usize) -> Result<()> {
        self.k.slice_set(&k.to_dtype(self.k.dtype())?.contiguous()?, 1, row)?;
        self.v.slice_set(&v.to_dtype(self.v.dtype())?.contiguous()?, 1, row)?;
        Ok(())
    }

    fn bytes(&self) -> usize {
        2 * self.k.elem_count() * self.k.dtype().size_in_bytes()
    }
}

/// Geometry shared by the caches of one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheGeometry {
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Tokens per latent frame (hp·wp).
    pub tokens_per_frame: usize,
    /// Storage dtype of keys and values.
    pub dtype: DType,
}

/// The global cache: K/V of the context frames sampled from earlier shots.
#[derive(Debug)]
pub struct ContextCache {
    geometry: CacheGeometry,
    layers: Vec<LayerKv>,
    frames: usize,
    filled: bool,
}

impl ContextCache {
    /// Allocates an empty cache for `frames` context frames.
    pub fn new(geometry: CacheGeometry, frames: usize, device: &Device) -> Result<Self> {
        let rows = frames * geometry.tokens_per_frame;
        let layers = (0..geometry.layers)
            .map(|_| LayerKv::zeros(geometry.heads, rows, geometry.head_dim, geometry.dtype, device))
            .collect::<Result<_>>()?;
        Ok(Self { geometry, layers, frames, filled: false })
    }

    /// Context frames the cache holds.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Whether the context-fill forward has run.
    pub fn is_filled(&self) -> bool {
        self.filled
    }

    /// Geometry of the cache.
    pub fn geometry(&self) -> CacheGeometry {
        self.geometry
    }

    /// K/V of one layer.
    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }

    pub(crate) fn write_layer(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        self.layers[layer].write(k, v, 0)
    }

    pub(crate) fn mark_filled(&mut self) {
        self.filled = true;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerKv::bytes).sum()
    }
}

/// Sliding-window settings of the local cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalWindow {
    /// Frames the local cache holds (21 = one ShotStream shot).
    pub capacity_frames: usize,
    /// Leading frames that are never evicted once the window slides.
    pub sink_frames: usize,
}

impl LocalWindow {
    /// Checks that the window holds whole chunks and leaves room after the sinks.
    pub fn check(&self, chunk_frames: usize) -> Result<()> {
        let LocalWindow { capacity_frames, sink_frames } = *self;
        if chunk_frames == 0
            || capacity_frames == 0
            || capacity_frames % chunk_frames != 0
            || sink_frames % chunk_frames != 0
        {
            return Err(NnError::Config(format!(
                "local cache of {capacity_frames} frames with {sink_frames} sink frames must be whole chunks of {chunk_frames}"
            )));
        }
        if sink_frames >= capacity_frames {
            return Err(NnError::Config(format!(
                "{sink_frames} sink frames leave no room in a {capacity_frames}-frame local cache"
            )));
        }
        Ok(())
    }
}

impl Default for LocalWindow {
    fn default() -> Self {
        Self { capacity_frames: 21, sink_frames: 0 }
    }
}

/// The local cache: K/V of the current shot's chunks.
#[derive(Debug)]
pub struct LocalCache {
    geometry: CacheGeometry,
    window: LocalWindow,
    chunk_frames: usize,
    layers: Vec<LayerKv>,
    /// Frames of the cache that hold keys (a prefix of the slots).
    valid_frames: usize,
}

/// Where a chunk's keys go in the local cache and which cached rows it may see.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkSlot {
    /// First cache frame the chunk writes.
    pub slot_frame: usize,
    /// Cache frames (a prefix) the chunk attends to, itself included.
    pub visible_frames: usize,
}

impl LocalCache {
    /// Allocates an empty local cache; the window must hold whole chunks.
    pub fn new(geometry: CacheGeometry, window: LocalWindow, chunk_frames: usize, device: &Device) -> Result<Self> {
        window.check(chunk_frames)?;
        let capacity_frames = window.capacity_frames;
        let rows = capacity_frames * geometry.tokens_per_frame;
        let layers = (0..geometry.layers)
            .map(|_| LayerKv::zeros(geometry.heads, rows, geometry.head_dim, geometry.dtype, device))
            .collect::<Result<_>>()?;
        Ok(Self { geometry, window, chunk_frames, layers, valid_frames: 0 })
    }

    /// The window settings.
    pub fn window(&self) -> LocalWindow {
        self.window
    }

    /// Slot for the chunk starting at frame `start_frame` of the shot.
    pub fn slot_for(&self, start_frame: usize) -> Result<ChunkSlot> {
        if !start_frame.is_multiple_of(self.chunk_frames) {
            return Err(NnError::Input(format!(
                "chunk start frame {start_frame} is not a multiple of {}",
                self.chunk_frames
            )));
        }
        let LocalWindow { capacity_frames: cap, sink_frames: sink } = self.window;
        let end = start_frame + self.chunk_frames;
        if end <= cap {
            return Ok(ChunkSlot { slot_frame: start_frame, visible_frames: end });
        }
        let ring = cap - sink;
        let slot_frame = sink + (start_frame - sink) % ring;
        Ok(ChunkSlot { slot_frame, visible_frames: cap })
    }

    /// Frames of the cache holding keys.
    pub fn valid_frames(&self) -> usize {
        self.valid_frames
    }

    /// Geometry of the cache.
    pub fn geometry(&self) -> CacheGeometry {
        self.geometry
    }

    /// K/V of one layer.
    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }

    pub(crate) fn write_layer(&mut self, layer: usize, slot: ChunkSlot, k: &Tensor, v: &Tensor) -> Result<()> {
        self.layers[layer].write(k, v, slot.slot_frame * self.geometry.tokens_per_frame)
    }

    pub(crate) fn commit(&mut self, slot: ChunkSlot) {
        self.valid_frames = self.valid_frames.max(slot.slot_frame + self.chunk_frames);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerKv::bytes).sum()
    }
}

/// Cross-attention K/V of every caption, per layer (`[H, text_len, hd]` per caption).
#[derive(Debug)]
pub struct CaptionCache {
    pub(crate) layers: Vec<Vec<LayerKv>>,
    captions: usize,
}

impl CaptionCache {
    pub(crate) fn new(layers: Vec<Vec<LayerKv>>, captions: usize) -> Self {
        Self { layers, captions }
    }

    /// Number of captions (shots) held.
    pub fn captions(&self) -> usize {
        self.captions
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(LayerKv::bytes).sum()
    }
}

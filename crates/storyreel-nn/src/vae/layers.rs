//! The Wan VAE's building blocks (wan.md §5.3): causal 3-D convolution with a frame cache,
//! residual blocks, the middle attention block and the four resampling modes.
//!
//! Every block takes any number of frames per call and a [`FeatureCache`] whose slots are used
//! in execution order, exactly like the reference's `feat_cache` list; so decoding a clip in one
//! call, or one latent frame per call, gives the same frames.

use candle_core::Tensor;

use super::ops;
use crate::conv::{self, ConvGeometry, FrameSource, Padding2d};
use crate::error::{NnError, Result};

/// One cache slot: nothing yet, the upsample marker for "first frame seen", or stored frames.
#[derive(Debug, Clone, Default)]
pub enum CacheSlot {
    /// No call has reached this slot yet.
    #[default]
    Empty,
    /// The temporal upsampler has passed its first frame through (the reference's `"Rep"`).
    FirstFramePassed,
    /// The last input frames of this convolution, `[≤2, C, H, W]`.
    Frames(Tensor),
}

/// The feature caches of one clip, one slot per temporally extended convolution.
#[derive(Debug, Default)]
pub struct FeatureCache {
    slots: Vec<CacheSlot>,
    cursor: usize,
}

impl FeatureCache {
    /// Starts a pass over the network: slots are handed out from the first again.
    pub fn begin_pass(&mut self) {
        self.cursor = 0;
    }

    /// The next slot in execution order (created on first use).
    pub fn next_slot(&mut self) -> &mut CacheSlot {
        if self.cursor == self.slots.len() {
            self.slots.push(CacheSlot::Empty);
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }

    /// Slots in use.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no slot has been used.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes held by the cached frames.
    pub fn bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match s {
                CacheSlot::Frames(t) => t.elem_count() * t.dtype().size_in_bytes(),
                _ => 0,
            })
            .sum()
    }
}

/// The cache a convolution keeps after seeing `x`: its last two input frames, or, when `x` has a
/// single frame, the last stored frame followed by it (wan.md §5.5).
fn next_cache(x: &Tensor, prev: Option<&Tensor>) -> Result<Tensor> {
    let n = x.dim(0)?;
    // `copy` detaches the frames from `x`, which may be a large activation we want freed.
    Ok(match (n, prev) {
        (1, Some(p)) => Tensor::cat(&[&p.narrow(0, p.dim(0)? - 1, 1)?, x], 0)?,
        (1, None) => x.copy()?,
        _ => x.narrow(0, n - 2, 2)?.copy()?,
    })
}

/// CausalConv3d: zero padding in space on both sides, in time only in front (2·pt frames).
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// `[Cout, Cin, kt, kh, kw]`.
    pub weight: Tensor,
    /// `[Cout]`.
    pub bias: Tensor,
    /// Leading frames of causal padding (2·pt).
    pub pad_t: usize,
    /// Spatial padding on each side.
    pub pad_hw: usize,
    /// Stride along time (2 for the encoder's temporal downsampling).
    pub stride_t: usize,
}

impl CausalConv3d {
    /// Convolution with `prev` (earlier input frames) in front of `x` instead of zeros.
    pub fn run(&self, x: &Tensor, prev: Option<&Tensor>) -> Result<Tensor> {
        let cache = if self.pad_t > 0 { prev } else { None };
        let clen = match cache {
            Some(c) => c.dim(0)?,
            None => 0,
        };
        let src = FrameSource { lead_zeros: self.pad_t.saturating_sub(clen), cache, x };
        let geo = ConvGeometry { stride_t: self.stride_t, stride_hw: 1, pad: Padding2d::same(self.pad_hw) };
        conv::conv3d(&src, &self.weight, Some(&self.bias), geo)
    }

    /// Convolution that reads and refreshes its cache slot.
    pub fn forward_cached(&self, x: &Tensor, slot: &mut CacheSlot) -> Result<Tensor> {
        let prev = match slot {
            CacheSlot::Frames(t) => Some(t.clone()),
            _ => None,
        };
        let new_cache = next_cache(x, prev.as_ref())?;
        let y = self.run(x, prev.as_ref())?;
        *slot = CacheSlot::Frames(new_cache);
        Ok(y)
    }
}

/// RMS norm → SiLU → conv → RMS norm → SiLU → conv, plus a (1×1×1 conv) shortcut.
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    /// `residual.0.gamma`, `[Cin]`.
    pub norm1: Tensor,
    /// `residual.2`.
    pub conv1: CausalConv3d,
    /// `residual.3.gamma`, `[Cout]`.
    pub norm2: Tensor,
    /// `residual.6`.
    pub conv2: CausalConv3d,
    /// `shortcut` when the widths differ.
    pub shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    /// Applies the block to `x` `[T, Cin, H, W]`.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(s) => s.run(x, None)?,
            None => x.clone(),
        };
        let r = ops::rms_norm_channels(x, &self.norm1, true)?;
        let r = self.conv1.forward_cached(&r, cache.next_slot())?;
        let r = ops::rms_norm_channels(&r, &self.norm2, true)?;
        let r = self.conv2.forward_cached(&r, cache.next_slot())?;
        Ok((r + h)?)
    }
}

/// Per-frame single-head spatial self-attention with a residual connection.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    /// `norm.gamma`, `[C]`.
    pub norm: Tensor,
    /// `to_qkv.weight` `[3C, C, 1, 1]`.
    pub qkv_weight: Tensor,
    /// `to_qkv.bias` `[3C]`.
    pub qkv_bias: Tensor,
    /// `proj.weight` `[C, C, 1, 1]`.
    pub proj_weight: Tensor,
    /// `proj.bias` `[C]`.
    pub proj_bias: Tensor,
}

impl AttentionBlock {
    /// Applies the block to each frame of `x` `[T, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = ops::rms_norm_channels(x, &self.norm, false)?;
        let qkv = conv::conv2d(&h, &self.qkv_weight, Some(&self.qkv_bias), 1, Padding2d::default())?;
        let a = ops::frame_attention(&qkv)?;
        let y = conv::conv2d(&a, &self.proj_weight, Some(&self.proj_bias), 1, Padding2d::default())?;
        Ok((y + x)?)
    }
}

/// Which way a resampling block goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleMode {
    /// Nearest ×2 in space, then a 3×3 conv halving the channels.
    Upsample2d,
    /// Time ×2 (time_conv to 2C channels, interleaved), then as `Upsample2d`.
    Upsample3d,
    /// Zero-pad right/bottom, 3×3 conv with stride 2.
    Downsample2d,
    /// As `Downsample2d`, then a stride-2 (3,1,1) time conv over [last frame ‖ new frames].
    Downsample3d,
}

/// A resampling block: `resample.1` (2-D conv) and, for 3-D modes, `time_conv`.
#[derive(Debug, Clone)]
pub struct Resample {
    /// Direction and whether time is resampled.
    pub mode: ResampleMode,
    /// `resample.1.weight` `[Cout, C, 3, 3]`.
    pub weight: Tensor,
    /// `resample.1.bias`.
    pub bias: Tensor,
    /// `time_conv`, for the 3-D modes.
    pub time_conv: Option<CausalConv3d>,
}

impl Resample {
    fn time_conv(&self) -> Result<&CausalConv3d> {
        self.time_conv.as_ref().ok_or_else(|| NnError::Config("3-D resample without a time_conv".into()))
    }

    /// Applies the block to `x` `[T, C, H, W]`.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        match self.mode {
            ResampleMode::Upsample2d => self.spatial_up(x),
            ResampleMode::Upsample3d => {
                let x = self.temporal_up(x, cache.next_slot())?;
                self.spatial_up(&x)
            }
            ResampleMode::Downsample2d => self.spatial_down(x),
            ResampleMode::Downsample3d => {
                let x = self.spatial_down(x)?;
                self.temporal_down(&x, cache.next_slot())
            }
        }
    }

    fn spatial_up(&self, x: &Tensor) -> Result<Tensor> {
        let up = ops::upsample_nearest2x(x)?;
        conv::conv2d(&up, &self.weight, Some(&self.bias), 1, Padding2d::same(1))
    }

    fn spatial_down(&self, x: &Tensor) -> Result<Tensor> {
        let pad = Padding2d { top: 0, bottom: 1, left: 0, right: 1 };
        conv::conv2d(x, &self.weight, Some(&self.bias), 2, pad)
    }

    /// wan.md §5.6: the clip's first frame skips the time conv; the frames after it start the
    /// time conv from zero padding; later calls continue from the cache.
    fn temporal_up(&self, x: &Tensor, slot: &mut CacheSlot) -> Result<Tensor> {
        let tc = self.time_conv()?;
        let n = x.dim(0)?;
        match slot {
            CacheSlot::Empty => {
                *slot = CacheSlot::FirstFramePassed;
                if n == 1 {
                    return Ok(x.clone());
                }
                let first = x.narrow(0, 0, 1)?;
                let rest = self.temporal_up(&x.narrow(0, 1, n - 1)?, slot)?;
                Ok(Tensor::cat(&[&first, &rest], 0)?)
            }
            CacheSlot::FirstFramePassed => {
                let new_cache = if n == 1 { Tensor::cat(&[&x.zeros_like()?, x], 0)? } else { next_cache(x, None)? };
                let y = tc.run(x, None)?;
                *slot = CacheSlot::Frames(new_cache);
                interleave_time(&y)
            }
            CacheSlot::Frames(_) => {
                let y = tc.forward_cached(x, slot)?;
                interleave_time(&y)
            }
        }
    }

    /// wan.md §5.7: the first frame is stored and passed through; later frames are convolved with
    /// the last stored frame in front, stride 2.
    fn temporal_down(&self, x: &Tensor, slot: &mut CacheSlot) -> Result<Tensor> {
        let tc = self.time_conv()?;
        let n = x.dim(0)?;
        match slot {
            CacheSlot::Frames(prev) => {
                if n % 2 != 0 {
                    return Err(NnError::Input(format!(
                        "temporal downsampling needs an even number of frames after the first; got {n}"
                    )));
                }
                let last = prev.narrow(0, prev.dim(0)? - 1, 1)?;
                let src = FrameSource { lead_zeros: 0, cache: Some(&last), x };
                let geo = ConvGeometry { stride_t: 2, stride_hw: 1, pad: Padding2d::default() };
                let y = conv::conv3d(&src, &tc.weight, Some(&tc.bias), geo)?;
                *slot = CacheSlot::Frames(x.narrow(0, n - 1, 1)?.copy()?);
                Ok(y)
            }
            _ => {
                let first = x.narrow(0, 0, 1)?;
                *slot = CacheSlot::Frames(first.copy()?);
                if n == 1 {
                    return Ok(first);
                }
                let rest = self.temporal_down(&x.narrow(0, 1, n - 1)?, slot)?;
                Ok(Tensor::cat(&[&first, &rest], 0)?)
            }
        }
    }
}

/// `[T, 2C, H, W]` → `[2T, C, H, W]`: channels [0:C] become frame 2t and [C:2C] frame 2t+1,
/// which in frame-major storage is just a reshape.
fn interleave_time(y: &Tensor) -> Result<Tensor> {
    let (t, c2, h, w) = y.dims4()?;
    Ok(y.reshape((2 * t, c2 / 2, h, w))?)
}

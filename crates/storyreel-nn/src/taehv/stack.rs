//! A TAEHV layer stack prepared for running: weights rearranged for the frame-major
//! convolutions, cheap neighbours fused, and the per-layer stream state.
//!
//! Everything is per frame except three layers, which is what makes chunked streaming exact:
//! - MemBlock reads [x_t, x_{t−1}]. Its first conv (`2n → n`) runs as a 3-D convolution with two
//!   temporal taps over the frame sequence, so the previous frame is read in place from the
//!   chunk (or from the one-frame memory kept from the last chunk, or a zero frame at the start)
//!   and nothing is concatenated.
//! - TPool(n, s) stacks s consecutive frames along channels, earlier first, which in
//!   frame-major memory `[s·g, n, H, W]` already is `[g, s·n, H, W]`: a reshape, then a 1×1
//!   conv. Frames short of a full group wait for the next call (copied only in that case).
//! - TGrow(n, s) is a 1×1 conv to s·n channels; in frame-major memory `[T, s·n, H, W]` already
//!   is `[T·s, n, H, W]` with the earlier frame first, so the split is a reshape.
//!
//! The decoder's nearest upsampling is always followed by a TGrow and a 3×3 conv without bias;
//! the three run as one step:
//! - a 1×1 convolution commutes with nearest upsampling (each output pixel is the same dot
//!   product of the same input pixel), so TGrow can run before the upsampling;
//! - a 3×3 conv over a nearest-upsampled image is, for each of the 4 output phases (row and
//!   column parity), a 2×2 conv over the low-resolution image whose taps are sums of the 3×3
//!   taps. Four 2×2 convs at low resolution do 16 taps where the 3×3 conv at high resolution
//!   does 36, and the upsampled image is never built;
//! - TGrow is linear and nothing separates it from the conv, so each phase kernel is multiplied
//!   by TGrow's weight once at load time: per phase, one conv from the TGrow's input straight
//!   to s frames' worth of output channels, and TGrow costs nothing at run time.
//!
//! The phases are interleaved into the output in one pass, with the following ReLU applied
//! there; `[T, s·C, 2H, 2W]` then is `[T·s, C, 2H, 2W]`.

use candle_core::Tensor;

use super::arch::LayerSpec;
use super::kernels::{add_relu_owned, copy_frames, interleave_phases, relu_owned, upsample2x};
use crate::conv::{conv2d, conv3d, ConvGeometry, FrameSource, Padding2d};
use crate::error::{NnError, Result};

/// One MemBlock's three convolutions.
pub(crate) struct MemBlock {
    /// `[n, n, 2, 3, 3]`: tap 0 reads x_{t−1}, tap 1 reads x_t.
    w0: Tensor,
    b0: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

/// One executable step; `idx` is the `nn.Sequential` index its weights are named after.
pub(crate) enum Op {
    Clamp,
    /// 3×3 conv, pad 1; `relu` when the next layer is a ReLU (fused, applied in place).
    Conv {
        idx: usize,
        w: Tensor,
        b: Option<Tensor>,
        stride: usize,
        relu: bool,
    },
    Relu,
    Mem {
        idx: usize,
        block: MemBlock,
    },
    /// `w` `[n, s·n, 1, 1]` as stored: input channels `k·n..(k+1)·n` read the group's k-th frame.
    TPool {
        idx: usize,
        w: Tensor,
        s: usize,
    },
    /// `w` `[s·n, n, 1, 1]`.
    TGrow {
        idx: usize,
        w: Tensor,
        s: usize,
    },
    Up,
    /// Nearest ×2 upsampling, the TGrow `tgrow` (`idx`, weight) if any, with `s` output frames,
    /// then the 3×3 conv `w`: four 2×2 phase convs `[s·C, Cin, 2, 2]` (`w` and `tgrow` are kept
    /// for saving).
    UpConv {
        idx: usize,
        w: Tensor,
        tgrow: Option<(usize, Tensor)>,
        s: usize,
        phases: [Tensor; 4],
        relu: bool,
    },
}

/// Stream state of one step.
#[derive(Default)]
pub(crate) enum OpState {
    #[default]
    None,
    /// MemBlock: the last input frame seen `[1, n, H, W]` (absent before the first frame).
    Memory(Option<Tensor>),
    /// TPool: input frames waiting for their group to fill `[k < s, n, H, W]`.
    Pending(Option<Tensor>),
}

impl OpState {
    fn bytes(&self) -> usize {
        match self {
            OpState::Memory(Some(t)) | OpState::Pending(Some(t)) => t.elem_count() * t.dtype().size_in_bytes(),
            _ => 0,
        }
    }
}

/// A prepared layer stack (`decoder` or `encoder`).
pub(crate) struct Stack {
    prefix: &'static str,
    ops: Vec<Op>,
}

/// The per-step states of one stream through a [`Stack`].
pub(crate) struct StackState {
    states: Vec<OpState>,
}

impl StackState {
    /// Bytes held by memories and pending frames.
    pub(crate) fn bytes(&self) -> usize {
        self.states.iter().map(OpState::bytes).sum()
    }
}

fn pad1() -> Padding2d {
    Padding2d::same(1)
}

impl Stack {
    /// Builds the stack from reference-layout tensors `prefix.idx...` (shapes already checked).
    pub(crate) fn build(
        prefix: &'static str,
        specs: &[LayerSpec],
        get: &mut dyn FnMut(&str) -> Result<Tensor>,
    ) -> Result<Self> {
        let mut ops = Vec::with_capacity(specs.len());
        let mut i = 0;
        while i < specs.len() {
            let p = format!("{prefix}.{i}");
            let next = specs.get(i + 1).copied();
            match specs[i] {
                LayerSpec::Clamp => ops.push(Op::Clamp),
                LayerSpec::Relu => ops.push(Op::Relu),
                LayerSpec::Conv { stride, bias, .. } => {
                    let w = get(&format!("{p}.weight"))?;
                    let b = if bias { Some(get(&format!("{p}.bias"))?) } else { None };
                    let relu = next == Some(LayerSpec::Relu);
                    ops.push(Op::Conv { idx: i, w, b, stride, relu });
                    if relu {
                        i += 1;
                    }
                }
                LayerSpec::Mem(n) => {
                    let w = get(&format!("{p}.conv.0.weight"))?;
                    // torch.cat([x, past], 1): input channels [0, n) see x_t, [n, 2n) see x_{t−1}.
                    let w0 = Tensor::stack(&[w.narrow(1, n, n)?, w.narrow(1, 0, n)?], 2)?.contiguous()?;
                    let block = MemBlock {
                        w0,
                        b0: get(&format!("{p}.conv.0.bias"))?,
                        w1: get(&format!("{p}.conv.2.weight"))?,
                        b1: get(&format!("{p}.conv.2.bias"))?,
                        w2: get(&format!("{p}.conv.4.weight"))?,
                        b2: get(&format!("{p}.conv.4.bias"))?,
                    };
                    ops.push(Op::Mem { idx: i, block });
                }
                LayerSpec::TPool(_, s) => {
                    ops.push(Op::TPool { idx: i, w: get(&format!("{p}.conv.weight"))?, s });
                }
                LayerSpec::TGrow(_, s) => {
                    ops.push(Op::TGrow { idx: i, w: get(&format!("{p}.conv.weight"))?, s });
                }
                LayerSpec::Up => {
                    // Up, [TGrow,] Conv(stride 1, no bias) [, ReLU] → UpConv.
                    let mut j = i + 1;
                    let mut tgrow = None;
                    if let Some(LayerSpec::TGrow(_, s)) = specs.get(j) {
                        tgrow = Some((j, get(&format!("{prefix}.{j}.conv.weight"))?, *s));
                        j += 1;
                    }
                    match (specs.get(j), tgrow) {
                        (Some(LayerSpec::Conv { stride: 1, bias: false, .. }), tgrow) => {
                            let w = get(&format!("{prefix}.{j}.weight"))?;
                            let relu = specs.get(j + 1) == Some(&LayerSpec::Relu);
                            let mut phases = phase_weights(&w)?;
                            let s = tgrow.as_ref().map_or(1, |t| t.2);
                            if let Some((_, g, s)) = &tgrow {
                                for p in phases.iter_mut() {
                                    *p = fold_tgrow(p, g, *s)?;
                                }
                            }
                            let tgrow = tgrow.map(|(k, g, _)| (k, g));
                            ops.push(Op::UpConv { idx: j, w, tgrow, s, phases, relu });
                            i = if relu { j + 1 } else { j };
                        }
                        (_, Some((k, w, s))) => {
                            // Upsampling after the (pointwise) TGrow gives the same values.
                            ops.push(Op::TGrow { idx: k, w, s });
                            ops.push(Op::Up);
                            i = j - 1;
                        }
                        (_, None) => ops.push(Op::Up),
                    }
                }
            }
            i += 1;
        }
        Ok(Self { prefix, ops })
    }

    /// A fresh stream state (empty memories).
    pub(crate) fn new_state(&self) -> StackState {
        let states = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Mem { .. } => OpState::Memory(None),
                Op::TPool { .. } => OpState::Pending(None),
                _ => OpState::None,
            })
            .collect();
        StackState { states }
    }

    /// Runs the next frames `x` `[T, C, H, W]` of a stream through every step; `None` when a
    /// TPool is still waiting for frames to complete its group.
    pub(crate) fn run(&self, state: &mut StackState, mut x: Tensor) -> Result<Option<Tensor>> {
        if state.states.len() != self.ops.len() {
            return Err(mismatched_state());
        }
        for (op, st) in self.ops.iter().zip(state.states.iter_mut()) {
            x = match op {
                Op::Clamp => ((x / 3.0)?.tanh()? * 3.0)?,
                Op::Relu => x.relu()?,
                Op::Up => upsample2x(&x)?,
                Op::Conv { w, b, stride, relu, .. } => {
                    let y = conv2d(&x, w, b.as_ref(), *stride, pad1())?;
                    if *relu {
                        relu_owned(y)?
                    } else {
                        y
                    }
                }
                Op::Mem { block, .. } => {
                    let OpState::Memory(mem) = st else { return Err(mismatched_state()) };
                    let y = block.forward(&x, mem.as_ref())?;
                    let t = x.dim(0)?;
                    // A one-frame input is its own memory; otherwise copy the frame out so the
                    // chunk's activation can be freed.
                    *mem = Some(if t == 1 { x.clone() } else { copy_frames(&x, t - 1, 1)? });
                    y
                }
                Op::TPool { w, s, .. } => {
                    let OpState::Pending(pending) = st else { return Err(mismatched_state()) };
                    match tpool(w, *s, pending, x)? {
                        Some(y) => y,
                        None => return Ok(None),
                    }
                }
                Op::TGrow { w, s, .. } => {
                    let (t, _, h, wd) = x.dims4()?;
                    let n = w.dim(1)?;
                    conv2d(&x, w, None, 1, Padding2d::default())?.reshape((t * s, n, h, wd))?
                }
                Op::UpConv { phases, s, relu, .. } => {
                    let mut out = Vec::with_capacity(4);
                    for (k, wp) in phases.iter().enumerate() {
                        let (a, b) = (k / 2, k % 2);
                        let pad = Padding2d { top: 1 - a, bottom: a, left: 1 - b, right: b };
                        out.push(conv2d(&x, wp, None, 1, pad)?);
                    }
                    let y = interleave_phases(&out, *relu)?;
                    let (t, c, h, w) = y.dims4()?;
                    y.reshape((t * s, c / s, h, w))?
                }
            };
        }
        Ok(Some(x))
    }

    /// The weights in the reference layout (`prefix.idx...`), for saving.
    pub(crate) fn reference_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let p = self.prefix;
        let mut out = Vec::new();
        for op in &self.ops {
            match op {
                Op::Conv { idx, w, b, .. } => {
                    out.push((format!("{p}.{idx}.weight"), w.clone()));
                    if let Some(b) = b {
                        out.push((format!("{p}.{idx}.bias"), b.clone()));
                    }
                }
                Op::Mem { idx, block } => {
                    let past = block.w0.narrow(2, 0, 1)?.squeeze(2)?;
                    let cur = block.w0.narrow(2, 1, 1)?.squeeze(2)?;
                    let q = format!("{p}.{idx}.conv");
                    out.push((format!("{q}.0.weight"), Tensor::cat(&[cur, past], 1)?.contiguous()?));
                    out.push((format!("{q}.0.bias"), block.b0.clone()));
                    out.push((format!("{q}.2.weight"), block.w1.clone()));
                    out.push((format!("{q}.2.bias"), block.b1.clone()));
                    out.push((format!("{q}.4.weight"), block.w2.clone()));
                    out.push((format!("{q}.4.bias"), block.b2.clone()));
                }
                Op::TPool { idx, w, .. } => out.push((format!("{p}.{idx}.conv.weight"), w.clone())),
                Op::TGrow { idx, w, .. } => out.push((format!("{p}.{idx}.conv.weight"), w.clone())),
                Op::UpConv { idx, w, tgrow, .. } => {
                    if let Some((k, g)) = tgrow {
                        out.push((format!("{p}.{k}.conv.weight"), g.clone()));
                    }
                    out.push((format!("{p}.{idx}.weight"), w.clone()));
                }
                Op::Clamp | Op::Relu | Op::Up => {}
            }
        }
        Ok(out)
    }
}

impl MemBlock {
    /// relu(conv4(relu(conv2(relu(conv0([x_t, x_{t−1}]))))) + x_t) for every frame of `x`, with
    /// x_{−1} = `memory` (or zero at the start of a stream).
    fn forward(&self, x: &Tensor, memory: Option<&Tensor>) -> Result<Tensor> {
        let src = FrameSource { lead_zeros: usize::from(memory.is_none()), cache: memory, x };
        let h = relu_owned(conv3d(&src, &self.w0, Some(&self.b0), ConvGeometry::padded(1))?)?;
        let h = relu_owned(conv2d(&h, &self.w1, Some(&self.b1), 1, pad1())?)?;
        let h = conv2d(&h, &self.w2, Some(&self.b2), 1, pad1())?;
        add_relu_owned(h, x)
    }
}

fn mismatched_state() -> NnError {
    NnError::Input("TAEHV stream state does not belong to this layer stack".into())
}

/// TPool over the held-over frames followed by `x`: returns the completed groups, keeps the rest.
fn tpool(w: &Tensor, s: usize, pending: &mut Option<Tensor>, x: Tensor) -> Result<Option<Tensor>> {
    let held = pending.as_ref().map(|p| p.dim(0)).transpose()?.unwrap_or(0);
    let t = x.dim(0)?;
    let groups = (held + t) / s;
    let used = groups * s - held.min(groups * s);
    let rest = t - used;
    let y = if groups == 0 {
        None
    } else {
        let xs = if rest == 0 { x.clone() } else { x.narrow(0, 0, used)? };
        let frames = match pending.as_ref() {
            Some(p) => Tensor::cat(&[p, &xs], 0)?,
            None => xs,
        };
        let (_, n, h, wd) = frames.dims4()?;
        Some(conv2d(&frames.reshape((groups, s * n, h, wd))?, w, None, 1, Padding2d::default())?)
    };
    *pending = match (groups, rest) {
        (0, _) => Some(match pending.take() {
            Some(p) => Tensor::cat(&[p, x], 0)?,
            None => x,
        }),
        (_, 0) => None,
        _ => Some(copy_frames(&x, used, rest)?),
    };
    if let Some(p) = pending.as_ref() {
        if p.dim(0)? >= s {
            return Err(NnError::Input(format!("TPool holds {} frames for a stride of {s}", p.dim(0)?)));
        }
    }
    Ok(y)
}

/// The four 2×2 kernels equivalent to the 3×3 kernel `w` `[co, ci, 3, 3]` applied after nearest
/// ×2 upsampling, in phase order (row parity a, column parity b) = (0,0), (0,1), (1,0), (1,1).
///
/// Output row 2i + a reads upsampled rows 2i + a − 1 ..= 2i + a + 1, i.e. low rows (i−1, i, i)
/// for a = 0 and (i, i, i+1) for a = 1: taps reading the same low row are summed. The 2×2
/// kernel covers low rows i−1..=i (a = 0, padded above) or i..=i+1 (a = 1, padded below).
fn phase_weights(w: &Tensor) -> Result<[Tensor; 4]> {
    // Per parity: the 3×3 tap indices summed into 2×2 tap 0 and tap 1.
    let fold = |t: &Tensor, dim: usize, parity: usize| -> Result<Tensor> {
        let tap = |k: usize| t.narrow(dim, k, 1);
        let (first, second) =
            if parity == 0 { (tap(0)?, (tap(1)? + tap(2)?)?) } else { ((tap(0)? + tap(1)?)?, tap(2)?) };
        Ok(Tensor::cat(&[first, second], dim)?)
    };
    let mut out = Vec::with_capacity(4);
    for a in 0..2 {
        let rows = fold(w, 2, a)?;
        for b in 0..2 {
            out.push(fold(&rows, 3, b)?.contiguous()?);
        }
    }
    out.try_into().map_err(|_| NnError::Input("four phase kernels expected".into()))
}

/// A phase kernel `p` `[C, n, 2, 2]` applied after TGrow `g` `[s·n, m, 1, 1]`, as one kernel
/// `[s·C, m, 2, 2]` on TGrow's input: output channels `f·C..(f+1)·C` are output frame f's.
/// Multiplied out in f32 whatever the model's dtype.
fn fold_tgrow(p: &Tensor, g: &Tensor, s: usize) -> Result<Tensor> {
    let (c, n, kh, kw) = p.dims4()?;
    let m = g.dim(1)?;
    let dtype = p.dtype();
    let p = p.to_dtype(candle_core::DType::F32)?.permute((0, 2, 3, 1))?.reshape((c * kh * kw, n))?;
    let g = g.to_dtype(candle_core::DType::F32)?.reshape((s * n, m))?;
    let mut frames = Vec::with_capacity(s);
    for f in 0..s {
        let k = p.matmul(&g.narrow(0, f * n, n)?)?.reshape((c, kh, kw, m))?.permute((0, 3, 1, 2))?;
        frames.push(k);
    }
    Ok(Tensor::cat(&frames, 0)?.contiguous()?.to_dtype(dtype)?)
}

//! One Wan transformer block: modulated self-attention with 3D RoPE, cross-attention to the
//! frame's own caption, modulated GELU-tanh FFN (wan.md §1.6).

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::attention::{attention, KvSpan, QuerySegment};
use crate::config::WanConfig;
use crate::error::Result;
use crate::fused;
use crate::kv_cache::LayerKv;
use crate::linear::Linear;
use crate::norm;

/// q/k/v/o projections with full-width RMSNorm on q and k.
#[derive(Debug, Clone)]
pub struct AttentionProj {
    /// Query projection.
    pub q: Linear,
    /// Key projection.
    pub k: Linear,
    /// Value projection.
    pub v: Linear,
    /// Output projection.
    pub o: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
}

impl AttentionProj {
    fn load(vb: &VarBuilder, dim: usize) -> Result<Self> {
        let ones = candle_nn::Init::Const(1.0);
        Ok(Self {
            q: Linear::load(&vb.pp("q"), dim, dim, true)?,
            k: Linear::load(&vb.pp("k"), dim, dim, true)?,
            v: Linear::load(&vb.pp("v"), dim, dim, true)?,
            o: Linear::load(&vb.pp("o"), dim, dim, true)?,
            norm_q: vb.get_with_hints(dim, "norm_q.weight", ones)?.to_dtype(DType::F32)?,
            norm_k: vb.get_with_hints(dim, "norm_k.weight", ones)?.to_dtype(DType::F32)?,
        })
    }

    fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 4] {
        [("q", &mut self.q), ("k", &mut self.k), ("v", &mut self.v), ("o", &mut self.o)]
    }
}

/// Splits `[L, H·hd]` into heads `[H, L, hd]` in `dtype`.
pub fn to_heads(x: &Tensor, heads: usize, dtype: DType) -> Result<Tensor> {
    let (l, d) = x.dims2()?;
    Ok(x.reshape((l, heads, d / heads))?.transpose(0, 1)?.to_dtype(dtype)?.contiguous()?)
}

/// How the self-attention of one forward finds its keys.
pub enum SelfKeys<'a> {
    /// Every query attends to every token of the forward (bidirectional).
    All,
    /// Query rows attend to a prefix of the forward's own tokens (block-causal mask).
    Prefix(&'a [(std::ops::Range<usize>, usize)]),
    /// Each range of rows attends only to itself (independent samples in one forward).
    Separate(&'a [std::ops::Range<usize>]),
    /// Keys come from caches: `write` receives this forward's keys (to store them) and
    /// `spans` returns the cached spans to attend to once they are stored.
    Cached(&'a mut dyn CachedKeys),
}

/// A cache the self-attention writes its keys into and then reads from.
pub trait CachedKeys {
    /// Stores layer `layer`'s keys and values `[H, L, hd]` of the tokens being run.
    fn store(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()>;
    /// Spans of cached keys that this forward's queries see at layer `layer` (after `store`).
    fn spans(&self, layer: usize) -> Vec<KvSpan<'_>>;
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct WanBlock {
    modulation: Tensor,
    self_attn: AttentionProj,
    cross_attn: AttentionProj,
    norm3_w: Tensor,
    norm3_b: Tensor,
    ffn1: Linear,
    ffn2: Linear,
    heads: usize,
    eps: f64,
}

impl WanBlock {
    /// Loads `blocks.{i}.*`.
    pub fn load(vb: &VarBuilder, cfg: &WanConfig) -> Result<Self> {
        let d = cfg.dim;
        let modulation = vb
            .get_with_hints(
                (1, 6, d),
                "modulation",
                candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 / (d as f64).sqrt() },
            )?
            .to_dtype(DType::F32)?;
        Ok(Self {
            modulation,
            self_attn: AttentionProj::load(&vb.pp("self_attn"), d)?,
            cross_attn: AttentionProj::load(&vb.pp("cross_attn"), d)?,
            norm3_w: vb.get_with_hints(d, "norm3.weight", candle_nn::Init::Const(1.0))?.to_dtype(DType::F32)?,
            norm3_b: vb.get_with_hints(d, "norm3.bias", candle_nn::Init::Const(0.0))?.to_dtype(DType::F32)?,
            ffn1: Linear::load(&vb.pp("ffn.0"), d, cfg.ffn_dim, true)?,
            ffn2: Linear::load(&vb.pp("ffn.2"), cfg.ffn_dim, d, true)?,
            heads: cfg.num_heads,
            eps: cfg.eps,
        })
    }

    /// Cross-attention keys and values of embedded captions `[N, T, D]` → per caption `[H, T, hd]`.
    pub fn caption_kv(&self, text: &Tensor, dtype: DType) -> Result<Vec<LayerKv>> {
        let (n, t, d) = text.dims3()?;
        let flat = text.reshape((n * t, d))?;
        let k = norm::rms_norm(&self.cross_attn.k.forward(&flat)?, &self.cross_attn.norm_k, self.eps)?;
        let v = self.cross_attn.v.forward(&flat)?;
        (0..n)
            .map(|i| {
                Ok(LayerKv {
                    k: to_heads(&k.narrow(0, i * t, t)?, self.heads, dtype)?,
                    v: to_heads(&v.narrow(0, i * t, t)?, self.heads, dtype)?,
                })
            })
            .collect()
    }

    /// Runs the block on tokens `x` `[F, P, D]` (f32).
    ///
    /// `e0` is the per-frame modulation `[F, 6, D]`, `(cos, sin)` the RoPE tables `[F·P, hd/2]`,
    /// `captions` the cross-attention K/V of each caption, `caption_of_frame` the routing.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        e0: &Tensor,
        rope: (&Tensor, &Tensor),
        keys: &mut SelfKeys<'_>,
        captions: &[LayerKv],
        caption_of_frame: &[usize],
        kv_dtype: DType,
    ) -> Result<Tensor> {
        let (f, p, d) = x.dims3()?;
        let l = f * p;
        let hd = d / self.heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let m = self.modulation.broadcast_add(e0)?; // [F, 6, D]
        let s = |i: usize| m.narrow(1, i, 1)?.contiguous();
        let (shift1, scale1, gate1) = (s(0)?, s(1)?, s(2)?);
        let (shift2, scale2, gate2) = (s(3)?, s(4)?, s(5)?);

        // Self-attention.
        let h = fused::modulated_layer_norm(x, &scale1, &shift1, self.eps)?;
        let h = h.reshape((l, d))?;
        let sa = &self.self_attn;
        let q = norm::rms_norm(&sa.q.forward(&h)?, &sa.norm_q, self.eps)?;
        let k = norm::rms_norm(&sa.k.forward(&h)?, &sa.norm_k, self.eps)?;
        let v = sa.v.forward(&h)?;
        let q = crate::rope::apply(&to_heads(&q, self.heads, kv_dtype)?, rope.0, rope.1)?;
        let k = crate::rope::apply(&to_heads(&k, self.heads, kv_dtype)?, rope.0, rope.1)?;
        let v = to_heads(&v, self.heads, kv_dtype)?;
        let y = match keys {
            SelfKeys::All => {
                let seg = [QuerySegment { rows: 0..l, spans: vec![KvSpan { k: &k, v: &v, rows: 0..l }] }];
                attention(&q, &seg, scale)?
            }
            SelfKeys::Prefix(prefixes) => {
                let segs: Vec<_> = prefixes
                    .iter()
                    .map(|(rows, n)| QuerySegment {
                        rows: rows.clone(),
                        spans: vec![KvSpan { k: &k, v: &v, rows: 0..*n }],
                    })
                    .collect();
                attention(&q, &segs, scale)?
            }
            SelfKeys::Separate(ranges) => {
                let segs: Vec<_> = ranges
                    .iter()
                    .map(|rows| QuerySegment {
                        rows: rows.clone(),
                        spans: vec![KvSpan { k: &k, v: &v, rows: rows.clone() }],
                    })
                    .collect();
                attention(&q, &segs, scale)?
            }
            SelfKeys::Cached(cache) => {
                cache.store(layer, &k, &v)?;
                let seg = [QuerySegment { rows: 0..l, spans: cache.spans(layer) }];
                attention(&q, &seg, scale)?
            }
        };
        let y = sa.o.forward(&y)?.reshape((f, p, d))?;
        let x = fused::gated_add(x, &y, &gate1)?;

        // Cross-attention: each frame sees only its own caption's tokens; no gate, no modulation.
        let hx = norm::layer_norm_affine(&x, &self.norm3_w, &self.norm3_b, self.eps)?.reshape((l, d))?;
        let ca = &self.cross_attn;
        let q = norm::rms_norm(&ca.q.forward(&hx)?, &ca.norm_q, self.eps)?;
        let q = to_heads(&q, self.heads, kv_dtype)?;
        let mut segs = Vec::new();
        let mut start = 0;
        while start < f {
            let c = caption_of_frame[start];
            let mut end = start + 1;
            while end < f && caption_of_frame[end] == c {
                end += 1;
            }
            let kv = &captions[c];
            let t = kv.k.dims()[1];
            segs.push(QuerySegment {
                rows: start * p..end * p,
                spans: vec![KvSpan { k: &kv.k, v: &kv.v, rows: 0..t }],
            });
            start = end;
        }
        let y = ca.o.forward(&attention(&q, &segs, scale)?)?.reshape((f, p, d))?;
        let x = (x + y)?;

        // FFN.
        let h = fused::modulated_layer_norm(&x, &scale2, &shift2, self.eps)?;
        let y = self.ffn2.forward(&fused::gelu_tanh(&self.ffn1.forward(&h.reshape((l, d))?)?)?)?.reshape((f, p, d))?;
        fused::gated_add(&x, &y, &gate2)
    }

    /// Linear layers by their names inside the block (for LoRA).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (n, l) in self.self_attn.linears_mut() {
            out.push((format!("self_attn.{n}"), l));
        }
        for (n, l) in self.cross_attn.linears_mut() {
            out.push((format!("cross_attn.{n}"), l));
        }
        out.push(("ffn.0".into(), &mut self.ffn1));
        out.push(("ffn.2".into(), &mut self.ffn2));
        out
    }
}

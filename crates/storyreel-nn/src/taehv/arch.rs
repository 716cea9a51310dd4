//! The taew2_1 layer stacks as `nn.Sequential` index lists (wan.md §6.4, §6.5), and everything
//! derived from them alone: tensor names and shapes, parameter counts, FLOP counts.

/// One entry of a TAEHV `nn.Sequential`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LayerSpec {
    /// 3·tanh(x/3).
    Clamp,
    /// 3×3 convolution, zero padding 1.
    Conv { cin: usize, cout: usize, stride: usize, bias: bool },
    /// max(x, 0).
    Relu,
    /// MemBlock(n): three 3×3 convs over [x_t, x_{t−1}] with an identity skip.
    Mem(usize),
    /// TPool(n, s): s consecutive frames → one, 1×1 conv over their stacked channels.
    TPool(usize, usize),
    /// TGrow(n, s): one frame → s, 1×1 conv to s·n channels.
    TGrow(usize, usize),
    /// Nearest ×2 spatial upsampling.
    Up,
}

use LayerSpec::*;

const fn conv(cin: usize, cout: usize, bias: bool) -> LayerSpec {
    Conv { cin, cout, stride: 1, bias }
}

/// Frames per latent (the decoder's time upscale, the encoder's time downscale): Wan's 4×,
/// which every TAEHV-style model here keeps so its frame counts match the Wan VAE's.
pub(crate) const TIME_SCALE: usize = 4;

/// The shape of a TAEHV-style autoencoder: taew2_1 (the default) or a smaller one trained for
/// another latent space, such as the toy VAE's.
///
/// The decoder is `Clamp, conv(latent → w₀), ReLU`, then per level i: `Mem(wᵢ) × mem_blocks,
/// Up, TGrow(wᵢ, sᵢ), conv(wᵢ → wᵢ₊₁)`, then `ReLU, conv(w_last → 3)`. The encoder mirrors it
/// at one width: `conv(3 → e), ReLU`, per level `TPool(e, s), stride-2 conv, Mem(e) ×
/// mem_blocks`, then `conv(e → latent)`, with the levels' time strides in reverse order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyVaeConfig {
    /// Channels of a latent frame.
    pub latent_channels: usize,
    /// Decoder widths: one per level plus the width after the last upsampling.
    pub decoder_widths: Vec<usize>,
    /// Per decoder level (latent end first), whether it doubles the frame count; two `true`s
    /// make Wan's 4×.
    pub time_upscale: Vec<bool>,
    /// MemBlocks per level, in both stacks.
    pub mem_blocks: usize,
    /// Width of the encoder.
    pub encoder_width: usize,
}

impl Default for TinyVaeConfig {
    fn default() -> Self {
        Self::taew2_1()
    }
}

/// Largest width accepted (taew2_1's widest is 256).
const MAX_WIDTH: usize = 1024;

impl TinyVaeConfig {
    /// TAEHV's `taew2_1` for Wan2.1 latents: 16 channels, ×8 space, ×4 time.
    pub fn taew2_1() -> Self {
        Self {
            latent_channels: 16,
            decoder_widths: vec![256, 128, 64, 64],
            time_upscale: vec![false, true, true],
            mem_blocks: 3,
            encoder_width: 64,
        }
    }

    /// Whether this is taew2_1's shape (the one a checkpoint without a config file has).
    pub fn is_taew2_1(&self) -> bool {
        *self == Self::taew2_1()
    }

    /// Pixels per latent along height and width (2 per level).
    pub fn space_scale(&self) -> usize {
        1 << self.time_upscale.len()
    }

    /// Checks that the shape is buildable and keeps Wan's 4× time compression.
    pub fn validate(&self) -> Result<(), String> {
        let levels = self.time_upscale.len();
        if !(1..=4).contains(&levels) {
            return Err(format!("time_upscale has {levels} levels; 1 to 4 are supported"));
        }
        if self.decoder_widths.len() != levels + 1 {
            return Err(format!(
                "decoder_widths has {} entries; {levels} levels need {}",
                self.decoder_widths.len(),
                levels + 1
            ));
        }
        let scale: usize = self.time_upscale.iter().map(|&t| if t { 2 } else { 1 }).product();
        if scale != TIME_SCALE {
            return Err(format!("time_upscale makes {scale}× in time; the latent frame rule needs {TIME_SCALE}×"));
        }
        let widths = self.decoder_widths.iter().chain([&self.encoder_width, &self.latent_channels]);
        if let Some(w) = widths.into_iter().find(|&&w| w == 0 || w > MAX_WIDTH) {
            return Err(format!("width {w} is outside 1..={MAX_WIDTH}"));
        }
        if self.mem_blocks > 8 {
            return Err(format!("mem_blocks {} is more than 8", self.mem_blocks));
        }
        Ok(())
    }

    fn strides(&self) -> impl DoubleEndedIterator<Item = usize> + '_ {
        self.time_upscale.iter().map(|&t| if t { 2 } else { 1 })
    }

    /// The decoder's `nn.Sequential` (`decoder.<idx>`).
    pub(crate) fn decoder(&self) -> Vec<LayerSpec> {
        let w = &self.decoder_widths;
        let mut v = vec![Clamp, conv(self.latent_channels, w[0], true), Relu];
        for (i, s) in self.strides().enumerate() {
            v.extend(std::iter::repeat_n(Mem(w[i]), self.mem_blocks));
            v.extend([Up, TGrow(w[i], s), conv(w[i], w[i + 1], false)]);
        }
        let last = w[w.len() - 1];
        v.extend([Relu, conv(last, 3, true)]);
        v
    }

    /// The encoder's `nn.Sequential` (`encoder.<idx>`).
    pub(crate) fn encoder(&self) -> Vec<LayerSpec> {
        let e = self.encoder_width;
        let mut v = vec![conv(3, e, true), Relu];
        for s in self.strides().rev() {
            v.extend([TPool(e, s), Conv { cin: e, cout: e, stride: 2, bias: false }]);
            v.extend(std::iter::repeat_n(Mem(e), self.mem_blocks));
        }
        v.push(conv(e, self.latent_channels, true));
        v
    }
}

/// Parameter names and shapes of one layer (`prefix.idx...`), in the reference layout.
pub(crate) fn layer_tensors(prefix: &str, idx: usize, spec: LayerSpec) -> Vec<(String, Vec<usize>)> {
    let p = format!("{prefix}.{idx}");
    match spec {
        Conv { cin, cout, bias, .. } => {
            let mut v = vec![(format!("{p}.weight"), vec![cout, cin, 3, 3])];
            if bias {
                v.push((format!("{p}.bias"), vec![cout]));
            }
            v
        }
        Mem(n) => vec![
            (format!("{p}.conv.0.weight"), vec![n, 2 * n, 3, 3]),
            (format!("{p}.conv.0.bias"), vec![n]),
            (format!("{p}.conv.2.weight"), vec![n, n, 3, 3]),
            (format!("{p}.conv.2.bias"), vec![n]),
            (format!("{p}.conv.4.weight"), vec![n, n, 3, 3]),
            (format!("{p}.conv.4.bias"), vec![n]),
        ],
        TPool(n, s) => vec![(format!("{p}.conv.weight"), vec![n, n * s, 1, 1])],
        TGrow(n, s) => vec![(format!("{p}.conv.weight"), vec![n * s, n, 1, 1])],
        Clamp | Relu | Up => Vec::new(),
    }
}

/// Names and shapes of a whole stack.
pub(crate) fn stack_tensors(prefix: &str, specs: &[LayerSpec]) -> Vec<(String, Vec<usize>)> {
    specs.iter().enumerate().flat_map(|(i, &s)| layer_tensors(prefix, i, s)).collect()
}

/// Whether `name` is the weight of a TGrow of `decoder` (the only tensors that may be oversized).
pub(crate) fn tgrow_weight(decoder: &[LayerSpec], name: &str) -> Option<(usize, usize)> {
    decoder.iter().enumerate().find_map(|(i, &s)| match s {
        TGrow(n, st) if name == format!("decoder.{i}.conv.weight") => Some((n, st)),
        _ => None,
    })
}

/// Multiply-accumulates ×2 of running `specs` on `frames` input frames of `h`×`w`, in steady
/// state (every MemBlock conv at full cost).
pub(crate) fn stack_flops(specs: &[LayerSpec], mut frames: f64, mut h: usize, mut w: usize) -> f64 {
    let mut flops = 0.0;
    for &s in specs {
        let px = (h * w) as f64;
        match s {
            Conv { cin, cout, stride, .. } => {
                h = h.div_ceil(stride);
                w = w.div_ceil(stride);
                flops += 2.0 * frames * (h * w) as f64 * (cout * cin * 9) as f64;
            }
            Mem(n) => flops += 2.0 * frames * px * (n * n * 9 * 4) as f64,
            TPool(n, st) => {
                frames /= st as f64;
                flops += 2.0 * frames * px * (n * n * st) as f64;
            }
            TGrow(n, st) => {
                flops += 2.0 * frames * px * (n * n * st) as f64;
                frames *= st as f64;
            }
            Up => {
                h *= 2;
                w *= 2;
            }
            Clamp | Relu => {}
        }
    }
    flops
}

#[cfg(test)]
mod tests {
    use super::*;

    const S2: LayerSpec = Conv { cin: 64, cout: 64, stride: 2, bias: false };

    fn count(prefix: &str, specs: &[LayerSpec]) -> usize {
        stack_tensors(prefix, specs).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    #[test]
    fn parameter_counts_match_the_spec() {
        let c = TinyVaeConfig::taew2_1();
        assert_eq!(count("decoder", &c.decoder()), 9_844_611);
        assert_eq!(count("encoder", &c.encoder()), 1_470_928);
        assert_eq!(c.space_scale(), 8);
    }

    #[test]
    fn taew2_1_layers_are_the_reference_lists() {
        let c = TinyVaeConfig::taew2_1();
        let d = c.decoder();
        assert_eq!(d.len(), 23);
        assert_eq!(&d[..4], &[Clamp, conv(16, 256, true), Relu, Mem(256)]);
        assert_eq!(&d[6..9], &[Up, TGrow(256, 1), conv(256, 128, false)]);
        assert_eq!(&d[18..], &[Up, TGrow(64, 2), conv(64, 64, false), Relu, conv(64, 3, true)]);
        let e = c.encoder();
        assert_eq!(e.len(), 18);
        assert_eq!(&e[..4], &[conv(3, 64, true), Relu, TPool(64, 2), S2]);
        assert_eq!(&e[12..14], &[TPool(64, 1), S2]);
        assert_eq!(e[17], conv(64, 16, true));
    }

    #[test]
    fn tgrow_names() {
        let d = TinyVaeConfig::taew2_1().decoder();
        assert_eq!(tgrow_weight(&d, "decoder.7.conv.weight"), Some((256, 1)));
        assert_eq!(tgrow_weight(&d, "decoder.13.conv.weight"), Some((128, 2)));
        assert_eq!(tgrow_weight(&d, "decoder.8.weight"), None);
        assert_eq!(tgrow_weight(&d, "encoder.2.conv.weight"), None);
    }

    #[test]
    fn a_toy_shape_builds_and_bad_shapes_are_named() {
        let toy = TinyVaeConfig {
            latent_channels: 8,
            decoder_widths: vec![64, 32, 32],
            time_upscale: vec![true, true],
            mem_blocks: 2,
            encoder_width: 32,
        };
        assert!(toy.validate().is_ok());
        assert_eq!(toy.space_scale(), 4);
        let d = toy.decoder();
        assert_eq!(d[1], conv(8, 64, true));
        assert_eq!(d.iter().filter(|l| matches!(l, TGrow(_, 2))).count(), 2);
        assert_eq!(*toy.encoder().last().unwrap(), conv(32, 8, true));
        let mut bad = toy.clone();
        bad.time_upscale = vec![true, false];
        assert!(bad.validate().unwrap_err().contains("2×"));
        let mut bad = toy.clone();
        bad.decoder_widths.pop();
        assert!(bad.validate().unwrap_err().contains("decoder_widths"));
        let mut bad = toy;
        bad.decoder_widths[0] = 0;
        assert!(bad.validate().unwrap_err().contains("width 0"));
    }
}

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

/// Latent channels of taew2_1 (Wan2.1's z_dim).
pub(crate) const LATENT_CHANNELS: usize = 16;
/// Frames per latent (the decoder's time upscale, the encoder's time downscale).
pub(crate) const TIME_SCALE: usize = 4;
/// Pixels per latent along height and width.
pub(crate) const SPACE_SCALE: usize = 8;

/// `decoder.<idx>`: decoder_time_upscale (False, True, True), space upscale ×8.
pub(crate) const DECODER: [LayerSpec; 23] = [
    Clamp,
    conv(16, 256, true),
    Relu,
    Mem(256),
    Mem(256),
    Mem(256),
    Up,
    TGrow(256, 1),
    conv(256, 128, false),
    Mem(128),
    Mem(128),
    Mem(128),
    Up,
    TGrow(128, 2),
    conv(128, 64, false),
    Mem(64),
    Mem(64),
    Mem(64),
    Up,
    TGrow(64, 2),
    conv(64, 64, false),
    Relu,
    conv(64, 3, true),
];

const S2: LayerSpec = Conv { cin: 64, cout: 64, stride: 2, bias: false };

/// `encoder.<idx>`: encoder_time_downscale (True, True, False), space downscale ×8.
pub(crate) const ENCODER: [LayerSpec; 18] = [
    conv(3, 64, true),
    Relu,
    TPool(64, 2),
    S2,
    Mem(64),
    Mem(64),
    Mem(64),
    TPool(64, 2),
    S2,
    Mem(64),
    Mem(64),
    Mem(64),
    TPool(64, 1),
    S2,
    Mem(64),
    Mem(64),
    Mem(64),
    conv(64, 16, true),
];

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

/// Whether `name` is the weight of a decoder TGrow (the only tensors that may be oversized).
pub(crate) fn tgrow_weight(name: &str) -> Option<(usize, usize)> {
    DECODER.iter().enumerate().find_map(|(i, &s)| match s {
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

    fn count(prefix: &str, specs: &[LayerSpec]) -> usize {
        stack_tensors(prefix, specs).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    #[test]
    fn parameter_counts_match_the_spec() {
        assert_eq!(count("decoder", &DECODER), 9_844_611);
        assert_eq!(count("encoder", &ENCODER), 1_470_928);
    }

    #[test]
    fn tgrow_names() {
        assert_eq!(tgrow_weight("decoder.7.conv.weight"), Some((256, 1)));
        assert_eq!(tgrow_weight("decoder.13.conv.weight"), Some((128, 2)));
        assert_eq!(tgrow_weight("decoder.8.weight"), None);
        assert_eq!(tgrow_weight("encoder.2.conv.weight"), None);
    }
}

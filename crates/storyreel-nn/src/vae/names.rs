//! Wan (`Wan2.1_VAE.pth`) ↔ diffusers (`AutoencoderKLWan`) tensor names (wan.md §2.4).

/// Residual-block member renames, Wan → diffusers.
const RESIDUAL: [(&str, &str); 5] = [
    ("residual.0.gamma", "norm1.gamma"),
    ("residual.2.", "conv1."),
    ("residual.3.gamma", "norm2.gamma"),
    ("residual.6.", "conv2."),
    ("shortcut.", "conv_shortcut."),
];

/// Which checkpoint naming a VAE file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeLayout {
    /// `Wan2.1_VAE.pth` names (`decoder.upsamples.N.residual.2.weight`).
    Wan,
    /// diffusers `AutoencoderKLWan` names (`decoder.up_blocks.L.resnets.J.conv1.weight`).
    Diffusers,
}

/// Detects the layout from tensor names.
pub fn detect_layout<'a>(names: impl IntoIterator<Item = &'a str>) -> VaeLayout {
    for n in names {
        if n.starts_with("post_quant_conv.")
            || n.starts_with("quant_conv.")
            || n.contains(".conv_in.")
            || n.contains(".mid_block.")
            || n.contains(".up_blocks.")
            || n.contains(".down_blocks.")
        {
            return VaeLayout::Diffusers;
        }
    }
    VaeLayout::Wan
}

/// Residual blocks per decoder level in diffusers names (`decoder.up_blocks.0.resnets.J`).
pub fn diffusers_decoder_blocks<'a>(names: impl IntoIterator<Item = &'a str>) -> usize {
    names
        .into_iter()
        .filter_map(|n| n.strip_prefix("decoder.up_blocks.0.resnets."))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .map(|j| j + 1)
        .max()
        .unwrap_or(0)
}

fn rename_member(rest: &str, to_diffusers: bool) -> String {
    for (wan, diff) in RESIDUAL {
        let (from, to) = if to_diffusers { (wan, diff) } else { (diff, wan) };
        if let Some(tail) = rest.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    rest.to_string()
}

/// diffusers name → Wan name; `blocks_per_level` is the decoder's residual blocks per level.
pub fn diffusers_to_wan(name: &str, blocks_per_level: usize) -> String {
    let simple = [
        ("post_quant_conv.", "conv2."),
        ("quant_conv.", "conv1."),
        ("encoder.conv_in.", "encoder.conv1."),
        ("decoder.conv_in.", "decoder.conv1."),
        ("encoder.conv_out.", "encoder.head.2."),
        ("decoder.conv_out.", "decoder.head.2."),
        ("encoder.norm_out.", "encoder.head.0."),
        ("decoder.norm_out.", "decoder.head.0."),
    ];
    for (from, to) in simple {
        if let Some(tail) = name.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    for side in ["encoder", "decoder"] {
        if let Some(rest) = name.strip_prefix(&format!("{side}.mid_block.")) {
            if let Some(r) = rest.strip_prefix("attentions.0.") {
                return format!("{side}.middle.1.{r}");
            }
            if let Some(r) = rest.strip_prefix("resnets.") {
                if let Some((j, tail)) = r.split_once('.') {
                    if let Ok(j) = j.parse::<usize>() {
                        return format!("{side}.middle.{}.{}", 2 * j, rename_member(tail, false));
                    }
                }
            }
        }
    }
    if let Some(rest) = name.strip_prefix("encoder.down_blocks.") {
        if let Some((i, tail)) = rest.split_once('.') {
            return format!("encoder.downsamples.{i}.{}", rename_member(tail, false));
        }
    }
    if let Some(rest) = name.strip_prefix("decoder.up_blocks.") {
        let per_level = blocks_per_level + 1;
        let parts: Vec<&str> = rest.splitn(4, '.').collect();
        if let [level, kind, j, tail] = parts[..] {
            if let (Ok(level), Ok(j)) = (level.parse::<usize>(), j.parse::<usize>()) {
                match kind {
                    "resnets" => {
                        return format!("decoder.upsamples.{}.{}", level * per_level + j, rename_member(tail, false))
                    }
                    "upsamplers" => {
                        return format!("decoder.upsamples.{}.{tail}", level * per_level + blocks_per_level)
                    }
                    _ => {}
                }
            }
        }
    }
    name.to_string()
}

/// Wan name → diffusers name; `blocks_per_level` is the decoder's residual blocks per level.
pub fn wan_to_diffusers(name: &str, blocks_per_level: usize) -> String {
    let simple = [
        ("conv2.", "post_quant_conv."),
        ("conv1.", "quant_conv."),
        ("encoder.conv1.", "encoder.conv_in."),
        ("decoder.conv1.", "decoder.conv_in."),
        ("encoder.head.2.", "encoder.conv_out."),
        ("decoder.head.2.", "decoder.conv_out."),
        ("encoder.head.0.", "encoder.norm_out."),
        ("decoder.head.0.", "decoder.norm_out."),
    ];
    for (from, to) in simple {
        if let Some(tail) = name.strip_prefix(from) {
            return format!("{to}{tail}");
        }
    }
    for side in ["encoder", "decoder"] {
        if let Some(rest) = name.strip_prefix(&format!("{side}.middle.")) {
            if let Some((i, tail)) = rest.split_once('.') {
                return match i {
                    "1" => format!("{side}.mid_block.attentions.0.{tail}"),
                    _ => format!(
                        "{side}.mid_block.resnets.{}.{}",
                        i.parse::<usize>().unwrap_or(0) / 2,
                        rename_member(tail, true)
                    ),
                };
            }
        }
    }
    if let Some(rest) = name.strip_prefix("encoder.downsamples.") {
        if let Some((i, tail)) = rest.split_once('.') {
            return format!("encoder.down_blocks.{i}.{}", rename_member(tail, true));
        }
    }
    if let Some(rest) = name.strip_prefix("decoder.upsamples.") {
        if let Some((i, tail)) = rest.split_once('.') {
            if let Ok(i) = i.parse::<usize>() {
                let per_level = blocks_per_level + 1;
                let (level, j) = (i / per_level, i % per_level);
                return if j == blocks_per_level {
                    format!("decoder.up_blocks.{level}.upsamplers.0.{tail}")
                } else {
                    format!("decoder.up_blocks.{level}.resnets.{j}.{}", rename_member(tail, true))
                };
            }
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        let cases = [
            ("conv2.weight", "post_quant_conv.weight"),
            ("decoder.conv1.bias", "decoder.conv_in.bias"),
            ("decoder.middle.0.residual.0.gamma", "decoder.mid_block.resnets.0.norm1.gamma"),
            ("decoder.middle.2.residual.6.weight", "decoder.mid_block.resnets.1.conv2.weight"),
            ("decoder.middle.1.to_qkv.weight", "decoder.mid_block.attentions.0.to_qkv.weight"),
            ("decoder.upsamples.3.time_conv.weight", "decoder.up_blocks.0.upsamplers.0.time_conv.weight"),
            ("decoder.upsamples.4.shortcut.bias", "decoder.up_blocks.1.resnets.0.conv_shortcut.bias"),
            ("decoder.upsamples.11.resample.1.weight", "decoder.up_blocks.2.upsamplers.0.resample.1.weight"),
            ("decoder.upsamples.14.residual.3.gamma", "decoder.up_blocks.3.resnets.2.norm2.gamma"),
            ("decoder.head.0.gamma", "decoder.norm_out.gamma"),
            ("encoder.downsamples.5.time_conv.bias", "encoder.down_blocks.5.time_conv.bias"),
            ("encoder.downsamples.2.resample.1.weight", "encoder.down_blocks.2.resample.1.weight"),
            ("encoder.head.2.weight", "encoder.conv_out.weight"),
            ("conv1.weight", "quant_conv.weight"),
        ];
        for (wan, diff) in cases {
            assert_eq!(wan_to_diffusers(wan, 3), diff);
            assert_eq!(diffusers_to_wan(diff, 3), wan);
        }
        assert_eq!(detect_layout(["decoder.conv_in.weight"]), VaeLayout::Diffusers);
        assert_eq!(detect_layout(["decoder.conv1.weight"]), VaeLayout::Wan);
    }
}

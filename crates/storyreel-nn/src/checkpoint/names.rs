//! Canonical DiT tensor names and shapes, layout detection and renaming between the original Wan,
//! ShotStream/Self-Forcing (`model.` prefix) and diffusers (`WanTransformer3DModel`) layouts.

use crate::config::WanConfig;
use std::fmt;

/// Naming scheme of the tensors in a DiT checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointLayout {
    /// Original Wan names without prefix (`blocks.0.self_attn.q.weight`).
    Wan,
    /// ShotStream / Self-Forcing: Wan names under a `model.` prefix (often inside a `generator` dict).
    ShotStream,
    /// diffusers `WanTransformer3DModel` names (`blocks.0.attn1.to_q.weight`).
    Diffusers,
}

impl fmt::Display for CheckpointLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointLayout::Wan => "Wan (original names)",
            CheckpointLayout::ShotStream => "ShotStream/Self-Forcing (`model.` prefix)",
            CheckpointLayout::Diffusers => "diffusers WanTransformer3DModel",
        })
    }
}

/// Canonical (original Wan, unprefixed) names and shapes of every DiT tensor, in Wan's order.
pub fn dit_tensor_shapes(cfg: &WanConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.dim;
    let f = cfg.ffn_dim;
    let [pt, ph, pw] = cfg.patch_size;
    let mut out: Vec<(String, Vec<usize>)> = Vec::with_capacity(15 + 27 * cfg.num_layers);
    let mut push = |name: String, shape: Vec<usize>| out.push((name, shape));
    push("patch_embedding.weight".into(), vec![d, cfg.in_dim, pt, ph, pw]);
    push("patch_embedding.bias".into(), vec![d]);
    push("text_embedding.0.weight".into(), vec![d, cfg.text_dim]);
    push("text_embedding.0.bias".into(), vec![d]);
    push("text_embedding.2.weight".into(), vec![d, d]);
    push("text_embedding.2.bias".into(), vec![d]);
    push("time_embedding.0.weight".into(), vec![d, cfg.freq_dim]);
    push("time_embedding.0.bias".into(), vec![d]);
    push("time_embedding.2.weight".into(), vec![d, d]);
    push("time_embedding.2.bias".into(), vec![d]);
    push("time_projection.1.weight".into(), vec![6 * d, d]);
    push("time_projection.1.bias".into(), vec![6 * d]);
    for i in 0..cfg.num_layers {
        let b = format!("blocks.{i}");
        push(format!("{b}.modulation"), vec![1, 6, d]);
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                push(format!("{b}.{attn}.{p}.weight"), vec![d, d]);
                push(format!("{b}.{attn}.{p}.bias"), vec![d]);
            }
            push(format!("{b}.{attn}.norm_q.weight"), vec![d]);
            push(format!("{b}.{attn}.norm_k.weight"), vec![d]);
        }
        push(format!("{b}.norm3.weight"), vec![d]);
        push(format!("{b}.norm3.bias"), vec![d]);
        push(format!("{b}.ffn.0.weight"), vec![f, d]);
        push(format!("{b}.ffn.0.bias"), vec![f]);
        push(format!("{b}.ffn.2.weight"), vec![d, f]);
        push(format!("{b}.ffn.2.bias"), vec![d]);
    }
    push("head.head.weight".into(), vec![cfg.patch_out(), d]);
    push("head.head.bias".into(), vec![cfg.patch_out()]);
    push("head.modulation".into(), vec![1, 2, d]);
    out
}

/// Canonical paths (without `.weight`) of the linear layers ShotStream trains LoRA adapters on.
pub fn lora_target_paths(num_layers: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(10 * num_layers);
    for i in 0..num_layers {
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                out.push(format!("blocks.{i}.{attn}.{p}"));
            }
        }
        out.push(format!("blocks.{i}.ffn.0"));
        out.push(format!("blocks.{i}.ffn.2"));
    }
    out
}

/// Removes wrapper prefixes and segments added by `torch.compile`, DDP, FSDP and activation
/// checkpointing (`_orig_mod.`, `module.`, `_fsdp_wrapped_module.`, `_checkpoint_wrapped_module.`).
pub fn strip_wrappers(name: &str) -> String {
    let mut s = name.to_string();
    for seg in ["_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module."] {
        while let Some(pos) = find_segment(&s, seg) {
            s.replace_range(pos..pos + seg.len(), "");
        }
    }
    while let Some(rest) = s.strip_prefix("module.") {
        s = rest.to_string();
    }
    s
}

/// Finds `seg` at the start of `s` or right after a dot.
fn find_segment(s: &str, seg: &str) -> Option<usize> {
    if s.starts_with(seg) {
        return Some(0);
    }
    s.find(&format!(".{seg}")).map(|p| p + 1)
}

/// True when a (wrapper-stripped, unprefixed) name is in diffusers' naming.
fn is_diffusers_name(name: &str) -> bool {
    name.starts_with("condition_embedder.")
        || name.starts_with("proj_out.")
        || name == "scale_shift_table"
        || name.contains(".attn1.")
        || name.contains(".attn2.")
        || name.contains(".ffn.net.")
        || name.ends_with(".scale_shift_table")
}

/// Detects the layout of a set of raw tensor names (wrapper prefixes are ignored).
///
/// Diffusers wins when any diffusers-only name is present; otherwise `model.`-prefixed names
/// (the majority) mean ShotStream; otherwise Wan.
pub fn detect_layout<'a>(names: impl IntoIterator<Item = &'a str>) -> CheckpointLayout {
    let mut total = 0usize;
    let mut prefixed = 0usize;
    let mut diffusers = false;
    for raw in names {
        let n = strip_wrappers(raw);
        total += 1;
        let unprefixed = match n.strip_prefix("model.") {
            Some(rest) => {
                prefixed += 1;
                rest
            }
            None => n.as_str(),
        };
        if is_diffusers_name(unprefixed) {
            diffusers = true;
        }
    }
    if diffusers {
        CheckpointLayout::Diffusers
    } else if total > 0 && prefixed * 2 > total {
        CheckpointLayout::ShotStream
    } else {
        CheckpointLayout::Wan
    }
}

/// Maps a raw tensor name of the given layout to its canonical (original Wan) name.
///
/// Wrapper prefixes are removed; a `model.` prefix is removed for ShotStream and diffusers
/// layouts. Names that have no counterpart are returned unchanged (after stripping), so that the
/// validation step can report them as unexpected.
pub fn to_canonical(raw: &str, layout: CheckpointLayout) -> String {
    let n = strip_wrappers(raw);
    match layout {
        CheckpointLayout::Wan => n,
        CheckpointLayout::ShotStream => match n.strip_prefix("model.") {
            Some(rest) => rest.to_string(),
            None => n,
        },
        CheckpointLayout::Diffusers => {
            let unprefixed = n.strip_prefix("model.").unwrap_or(&n);
            diffusers_to_wan(unprefixed)
        }
    }
}

/// Maps a canonical (original Wan) name to its name in the given layout.
pub fn from_canonical(name: &str, layout: CheckpointLayout) -> String {
    match layout {
        CheckpointLayout::Wan => name.to_string(),
        CheckpointLayout::ShotStream => format!("model.{name}"),
        CheckpointLayout::Diffusers => wan_to_diffusers(name),
    }
}

/// Splits `blocks.<i>.<rest>` into (`i`, `rest`).
fn split_block(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("blocks.")?;
    let dot = rest.find('.')?;
    let (idx, tail) = rest.split_at(dot);
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((idx, &tail[1..]))
}

/// Replaces a leading `from` by `to` when present.
fn swap_prefix(name: &str, from: &str, to: &str) -> Option<String> {
    name.strip_prefix(from).map(|rest| format!("{to}{rest}"))
}

/// Prefix renames for the top-level (non-block) tensors: (diffusers, wan).
const TOP_LEVEL: &[(&str, &str)] = &[
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("proj_out.", "head.head."),
];

/// Prefix renames inside a block: (diffusers, wan). `norm2` (diffusers) is Wan's `norm3`.
const IN_BLOCK: &[(&str, &str)] = &[
    ("attn1.to_q.", "self_attn.q."),
    ("attn1.to_k.", "self_attn.k."),
    ("attn1.to_v.", "self_attn.v."),
    ("attn1.to_out.0.", "self_attn.o."),
    ("attn1.norm_q.", "self_attn.norm_q."),
    ("attn1.norm_k.", "self_attn.norm_k."),
    ("attn2.to_q.", "cross_attn.q."),
    ("attn2.to_k.", "cross_attn.k."),
    ("attn2.to_v.", "cross_attn.v."),
    ("attn2.to_out.0.", "cross_attn.o."),
    ("attn2.norm_q.", "cross_attn.norm_q."),
    ("attn2.norm_k.", "cross_attn.norm_k."),
    ("norm2.", "norm3."),
    ("norm3.", "norm2."),
    ("ffn.net.0.proj.", "ffn.0."),
    ("ffn.net.2.", "ffn.2."),
];

/// diffusers name → Wan name (unknown names are returned unchanged).
fn diffusers_to_wan(name: &str) -> String {
    if name == "scale_shift_table" {
        return "head.modulation".into();
    }
    for (dif, wan) in TOP_LEVEL {
        if let Some(s) = swap_prefix(name, dif, wan) {
            return s;
        }
    }
    if let Some((i, rest)) = split_block(name) {
        if rest == "scale_shift_table" {
            return format!("blocks.{i}.modulation");
        }
        for (dif, wan) in IN_BLOCK {
            if let Some(s) = swap_prefix(rest, dif, wan) {
                return format!("blocks.{i}.{s}");
            }
        }
    }
    name.to_string()
}

/// Wan name → diffusers name (unknown names are returned unchanged).
fn wan_to_diffusers(name: &str) -> String {
    if name == "head.modulation" {
        return "scale_shift_table".into();
    }
    for (dif, wan) in TOP_LEVEL {
        if let Some(s) = swap_prefix(name, wan, dif) {
            return s;
        }
    }
    if let Some((i, rest)) = split_block(name) {
        if rest == "modulation" {
            return format!("blocks.{i}.scale_shift_table");
        }
        for (dif, wan) in IN_BLOCK {
            if let Some(s) = swap_prefix(rest, wan, dif) {
                return format!("blocks.{i}.{s}");
            }
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_canonical_name_round_trips_through_each_layout() {
        let cfg = WanConfig::tiny();
        for (name, _) in dit_tensor_shapes(&cfg) {
            for layout in [CheckpointLayout::Wan, CheckpointLayout::ShotStream, CheckpointLayout::Diffusers] {
                let raw = from_canonical(&name, layout);
                assert_eq!(to_canonical(&raw, layout), name, "{layout:?} {raw}");
            }
        }
    }

    #[test]
    fn diffusers_names_follow_the_spec_table() {
        let cases = [
            ("blocks.3.norm3.weight", "blocks.3.norm2.weight"),
            ("blocks.0.self_attn.o.bias", "blocks.0.attn1.to_out.0.bias"),
            ("blocks.1.cross_attn.norm_k.weight", "blocks.1.attn2.norm_k.weight"),
            ("blocks.2.ffn.0.weight", "blocks.2.ffn.net.0.proj.weight"),
            ("blocks.2.ffn.2.bias", "blocks.2.ffn.net.2.bias"),
            ("blocks.2.modulation", "blocks.2.scale_shift_table"),
            ("head.modulation", "scale_shift_table"),
            ("head.head.weight", "proj_out.weight"),
            ("time_projection.1.bias", "condition_embedder.time_proj.bias"),
            ("text_embedding.2.weight", "condition_embedder.text_embedder.linear_2.weight"),
            ("patch_embedding.weight", "patch_embedding.weight"),
        ];
        for (wan, dif) in cases {
            assert_eq!(from_canonical(wan, CheckpointLayout::Diffusers), dif);
        }
    }

    #[test]
    fn wrappers_are_stripped_and_layouts_detected() {
        assert_eq!(strip_wrappers("_orig_mod.module.blocks.0.ffn.0.weight"), "blocks.0.ffn.0.weight");
        assert_eq!(strip_wrappers("model.blocks.0._fsdp_wrapped_module.ffn.0.weight"), "model.blocks.0.ffn.0.weight");
        assert_eq!(detect_layout(["model.head.modulation", "model.blocks.0.modulation"]), CheckpointLayout::ShotStream);
        assert_eq!(detect_layout(["head.modulation"]), CheckpointLayout::Wan);
        assert_eq!(detect_layout(["proj_out.weight", "patch_embedding.weight"]), CheckpointLayout::Diffusers);
        assert_eq!(
            to_canonical("_orig_mod.model.blocks.1.norm3.bias", CheckpointLayout::ShotStream),
            "blocks.1.norm3.bias"
        );
    }
}

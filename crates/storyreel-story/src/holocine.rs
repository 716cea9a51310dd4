//! HoloCine's hierarchical prompt, in either of the two forms its README gives:
//!
//! * structured JSON (the keyword arguments of HoloCine's `run_inference`):
//!   `{"global_caption", "shot_captions": [...], "num_frames"?, "shot_cut_frames"?}`, or the same
//!   object with `"prompt"` (a raw string, below) in place of the two caption fields;
//! * the raw string `[global caption] … [per shot caption] … [shot cut] … [shot cut] …`, alone in a
//!   text file (lines starting with `#` before it are comments; line breaks inside it are spaces).
//!
//! Lengths: with `shot_cut_frames`, shot i spans from cut i−1 (0 for the first) to cut i
//! (`num_frames`, default 241, for the last); each cut is first rounded to 4k+1 as HoloCine does.
//! With `num_frames` alone the cuts fall evenly, at `i · num_frames / shots` rounded to 4k+1,
//! again as HoloCine computes them. Each span is then rounded to the nearest 4k+1. With neither,
//! and always for the raw text file, shots have no length.
//!
//! `[characterN]` tags are kept as written. HoloCine defines characters in free prose inside the
//! global caption (`"[character1] is a mysterious woman …"`, but also
//! `"a young painter, [character1], with …"`), so there is no unambiguous span to substitute into each shot; the global caption,
//! which every shot is conditioned on, keeps the definitions.

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::error::StoryError;
use crate::frames::{lengths_from_cuts, nearest_4k1};
use crate::json::decode;
use crate::{Shot, Story};

/// HoloCine's default video length (its training sequence length).
const DEFAULT_NUM_FRAMES: u64 = 241;

const GLOBAL: &str = "[global caption]";
const PER_SHOT: &str = "[per shot caption]";
const CUT: &str = "[shot cut]";

/// The keyword arguments of HoloCine's `run_inference`; those that do not change the story are
/// accepted and ignored so that a typo in one that does is still caught.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a HoloCine prompt object")]
#[allow(dead_code)]
struct Structured {
    #[serde(default)]
    global_caption: Option<String>,
    #[serde(default)]
    shot_captions: Option<Vec<String>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    num_frames: Option<u64>,
    #[serde(default)]
    shot_cut_frames: Option<Vec<u64>>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    negative_prompt: Option<IgnoredAny>,
    #[serde(default)]
    output_path: Option<IgnoredAny>,
    #[serde(default)]
    height: Option<IgnoredAny>,
    #[serde(default)]
    width: Option<IgnoredAny>,
    #[serde(default)]
    num_inference_steps: Option<IgnoredAny>,
    #[serde(default)]
    fps: Option<IgnoredAny>,
    #[serde(default)]
    quality: Option<IgnoredAny>,
    #[serde(default)]
    tiled: Option<IgnoredAny>,
}

/// Whether `text` is a raw HoloCine prompt: its first line that is neither blank nor a `#`
/// comment starts with `[global caption]`.
pub(crate) fn looks_raw(text: &str) -> bool {
    text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).is_some_and(|l| l.starts_with(GLOBAL))
}

/// Parses either form: JSON when the text starts with `{`, the raw string otherwise.
pub fn parse(text: &str, origin: &str) -> Result<Story, StoryError> {
    if text.trim_start().starts_with('{') {
        parse_json(text, origin)
    } else {
        parse_text(text, origin)
    }
}

fn parse_json(text: &str, origin: &str) -> Result<Story, StoryError> {
    let s: Structured = decode(text, origin, 1)?;
    let (global_caption, captions) = match (s.prompt, s.shot_captions) {
        (Some(_), Some(_)) => {
            return Err(StoryError::at_field(
                origin,
                "prompt",
                "give either \"prompt\" (the raw string) or \"global_caption\" with \"shot_captions\", not both",
            ))
        }
        (Some(_), None) if s.global_caption.is_some() => {
            return Err(StoryError::at_field(
                origin,
                "global_caption",
                "\"prompt\" already holds the global caption; drop one of them",
            ))
        }
        (Some(prompt), None) => {
            let raw = split_raw(&prompt).map_err(|e| StoryError::at_field(origin, "prompt", e.message))?;
            (raw.global, raw.shots)
        }
        (None, Some(captions)) => {
            for (i, c) in captions.iter().enumerate() {
                if c.trim().is_empty() {
                    return Err(StoryError::at_field(origin, format!("shot_captions[{i}]"), "the caption is empty"));
                }
            }
            (s.global_caption.unwrap_or_default(), captions)
        }
        (None, None) => {
            return Err(StoryError::at_field(
                origin,
                "shot_captions",
                "missing: give \"global_caption\" with \"shot_captions\", or \"prompt\"",
            ))
        }
    };
    if captions.is_empty() {
        return Err(StoryError::at_field(origin, "shot_captions", "the list is empty; a story has at least one shot"));
    }
    let frames = lengths(s.num_frames, s.shot_cut_frames.as_deref(), captions.len(), origin)?;
    let shots = captions
        .into_iter()
        .enumerate()
        .map(|(i, caption)| Shot { caption, frames: frames.as_ref().and_then(|f| f.get(i).copied()) })
        .collect();
    Ok(Story { id: None, seed: s.seed, global_caption, shots })
}

/// Per-shot lengths from HoloCine's frame arguments (see the module docs for the rule).
fn lengths(
    num_frames: Option<u64>,
    cuts: Option<&[u64]>,
    shots: usize,
    origin: &str,
) -> Result<Option<Vec<usize>>, StoryError> {
    if num_frames.is_none() && cuts.is_none() {
        return Ok(None);
    }
    if num_frames == Some(0) {
        return Err(StoryError::at_field(origin, "num_frames", "num_frames is 0"));
    }
    let total = nearest_4k1(num_frames.unwrap_or(DEFAULT_NUM_FRAMES));
    let rounded: Vec<u64> = match cuts {
        Some(cuts) => {
            if cuts.len() + 1 != shots {
                return Err(StoryError::at_field(
                    origin,
                    "shot_cut_frames",
                    format!("{} cuts for {shots} shots; give one cut fewer than there are shots", cuts.len()),
                ));
            }
            cuts.iter().map(|&c| nearest_4k1(c)).collect()
        }
        None => (1..shots as u64)
            .map(|i| {
                // u128 because i · total overflows u64 for absurd (later rejected) totals.
                let at = (u128::from(i) * u128::from(total) + shots as u128 / 2) / shots as u128;
                nearest_4k1(u64::try_from(at).unwrap_or(u64::MAX))
            })
            .collect(),
    };
    let field = if cuts.is_some() { "shot_cut_frames" } else { "num_frames" };
    let mut previous = 0;
    for (i, &cut) in rounded.iter().enumerate() {
        if cut <= previous || cut >= total {
            let message = if cuts.is_some() {
                format!(
                    "cut {} at frame {cut} (rounded to 4k+1) must come after the previous cut ({previous}) and before \
                     the end of the video ({total} frames)",
                    i + 1
                )
            } else {
                format!("{total} frames are too few for {shots} shots")
            };
            let at = if cuts.is_some() { format!("{field}[{i}]") } else { field.to_string() };
            return Err(StoryError::at_field(origin, at, message));
        }
        previous = cut;
    }
    Ok(Some(lengths_from_cuts(&rounded, total)))
}

fn parse_text(text: &str, origin: &str) -> Result<Story, StoryError> {
    // Comment lines may only precede the prompt; find where it starts.
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            start += line.len();
        } else {
            break;
        }
    }
    let prompt = &text[start..];
    let raw = split_raw(prompt).map_err(|e| {
        let line = line_of(text, start + e.offset);
        StoryError::at_line(origin, line, e.message)
    })?;
    Ok(Story {
        id: None,
        seed: None,
        global_caption: raw.global,
        shots: raw.shots.into_iter().map(|caption| Shot { caption, frames: None }).collect(),
    })
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// A raw prompt taken apart: the global caption and each shot's caption.
struct Raw {
    global: String,
    shots: Vec<String>,
}

/// What is wrong with a raw prompt, and the byte offset in it where.
struct RawError {
    offset: usize,
    message: String,
}

fn split_raw(prompt: &str) -> Result<Raw, RawError> {
    let lead = prompt.len() - prompt.trim_start().len();
    let body = &prompt[lead..];
    let Some(after_global) = body.strip_prefix(GLOBAL) else {
        return Err(RawError { offset: lead, message: format!("a HoloCine prompt starts with {GLOBAL}") });
    };
    let global_start = lead + GLOBAL.len();
    let per_shot = after_global.find(PER_SHOT);
    let global = &after_global[..per_shot.unwrap_or(after_global.len())];
    if let Some(at) = global.find(CUT) {
        return Err(RawError { offset: global_start + at, message: format!("{CUT} before {PER_SHOT}") });
    }
    let Some(per_shot) = per_shot else {
        return Err(RawError {
            offset: prompt.len(),
            message: format!("{PER_SHOT} is missing: the prompt is {GLOBAL} … {PER_SHOT} … {CUT} …"),
        });
    };
    let shots_start = global_start + per_shot + PER_SHOT.len();
    let mut shots = Vec::new();
    let mut at = shots_start;
    for piece in prompt[shots_start..].split(CUT) {
        for marker in [GLOBAL, PER_SHOT] {
            if let Some(k) = piece.find(marker) {
                return Err(RawError {
                    offset: at + k,
                    message: format!("a second {marker}; a prompt holds one story"),
                });
            }
        }
        let caption = collapse(piece);
        if caption.is_empty() {
            return Err(RawError {
                offset: at,
                message: format!("shot {} is empty (nothing between two markers)", shots.len() + 1),
            });
        }
        shots.push(caption);
        at += piece.len() + CUT.len();
    }
    Ok(Raw { global: collapse(global), shots })
}

/// Trims and joins the lines of a caption, so that a prompt wrapped across lines reads as one.
fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

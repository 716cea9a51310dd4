//! ShotStream's per-shot prompts and a check that truncation does not eat a shot's caption.
//!
//! The prompt for shot `i` is the global caption, then `shot{i}:`, then the shot's caption, with
//! no separator anywhere (`utils/dataset.py` builds `f'shot{i}:' + caption_content[f'shot{i+1}']`
//! and the pipelines prepend `global_captions[0][0]`). The JSON keys are 1-based, the prefix is
//! 0-based. The demo global captions end in a full stop with no trailing space, so prompts read
//! `"...in his hands.shot0:An underwater view..."`.
//!
//! UMT5 keeps 512 tokens (EOS included) and truncation drops the end, so a long global caption
//! (the demos' are about 1.9k characters) can push the shot's own caption out of the window.
//! [`check_truncation`] says when that happens and how much of the caption survives.

use std::fmt;

use storyreel_nn::text::tokenize::Umt5Tokenizer;

use crate::error::Result;

/// The label ShotStream puts before shot `shot_index`'s caption: `shot{i}:`.
pub fn shot_label(shot_index: usize) -> String {
    format!("shot{shot_index}:")
}

/// The prompt for one shot: `global + "shot{i}:" + shot_caption`, plain concatenation.
pub fn shot_prompt(global: &str, shot_index: usize, shot_caption: &str) -> String {
    format!("{global}shot{shot_index}:{shot_caption}")
}

/// The prompts of every shot of a story, shot 0 first.
pub fn story_prompts<S: AsRef<str>>(global: &str, shot_captions: &[S]) -> Vec<String> {
    shot_captions.iter().enumerate().map(|(i, c)| shot_prompt(global, i, c.as_ref())).collect()
}

/// How a prompt fits the text encoder's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFit {
    /// The prompt after the tokenizer's cleaning.
    pub cleaned: String,
    /// Tokens without truncation, EOS included.
    pub total_tokens: usize,
    /// Bytes of `cleaned` that survive truncation (`cleaned.len()` when it fits).
    pub kept_bytes: usize,
}

impl PromptFit {
    /// Whether truncation drops anything.
    pub fn truncated(&self) -> bool {
        self.kept_bytes < self.cleaned.len()
    }
}

/// What the truncation check needs from a tokenizer.
pub trait PromptTokenizer {
    /// Tokens kept per prompt, EOS included (512 for UMT5 as Wan uses it).
    fn max_len(&self) -> usize;
    /// Cleans and tokenises `text`, and says where truncation cuts it.
    fn fit(&self, text: &str) -> Result<PromptFit>;
}

impl PromptTokenizer for Umt5Tokenizer {
    fn max_len(&self) -> usize {
        Umt5Tokenizer::max_len(self)
    }

    fn fit(&self, text: &str) -> Result<PromptFit> {
        let enc = self.encode(text)?;
        Ok(PromptFit { total_tokens: enc.total_tokens, kept_bytes: enc.kept_bytes, cleaned: enc.cleaned })
    }
}

/// Where truncation cut a shot's prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptCut {
    /// The end of the shot's caption is dropped; its beginning survives.
    ShotCaptionCut {
        /// Words of the (cleaned) caption kept whole.
        kept_words: usize,
        /// Words of the (cleaned) caption.
        total_words: usize,
        /// Caption tokens kept (estimated from token counts; may be off by one at the
        /// global/caption boundary, where pieces can merge).
        kept_tokens: usize,
        /// Caption tokens (same estimate).
        total_tokens: usize,
    },
    /// None of the shot's caption survives; the global caption fits whole (the `shot{i}:` label
    /// may be partly kept).
    ShotCaptionLost,
    /// The global caption itself is cut, so neither the label nor the shot's caption survives.
    GlobalCaptionCut {
        /// Words of the (cleaned) global caption kept whole.
        kept_words: usize,
        /// Words of the (cleaned) global caption.
        total_words: usize,
    },
}

/// A shot whose prompt loses text to truncation in a way that matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptWarning {
    /// 0-based shot index.
    pub shot: usize,
    /// Tokens the whole prompt would take, EOS included.
    pub prompt_tokens: usize,
    /// Tokens kept, EOS included.
    pub max_len: usize,
    /// What was cut.
    pub cut: PromptCut,
}

impl fmt::Display for PromptWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (shot, n, max) = (self.shot, self.prompt_tokens, self.max_len);
        write!(f, "shot {shot}: the prompt takes {n} tokens and the text encoder keeps {max}; ")?;
        match &self.cut {
            PromptCut::ShotCaptionCut { kept_words, total_words, kept_tokens, total_tokens } => write!(
                f,
                "the shot's own caption is cut: {kept_words} of its {total_words} words \
                 (about {kept_tokens} of {total_tokens} tokens) survive. Shorten the global caption."
            ),
            PromptCut::ShotCaptionLost => write!(
                f,
                "none of the shot's own caption survives; only the global caption reaches the model. \
                 Shorten the global caption."
            ),
            PromptCut::GlobalCaptionCut { kept_words, total_words } => write!(
                f,
                "the global caption alone overflows ({kept_words} of its {total_words} words survive), \
                 so none of the shot's own caption reaches the model. Shorten the global caption."
            ),
        }
    }
}

/// Words of `text` and how many of them end at or before byte `kept`.
fn word_counts(text: &str, kept: usize) -> (usize, usize) {
    let mut total = 0;
    let mut kept_words = 0;
    let mut offset = 0;
    for piece in text.split(' ') {
        let end = offset + piece.len();
        if !piece.is_empty() {
            total += 1;
            if end <= kept {
                kept_words += 1;
            }
        }
        offset = end + 1;
    }
    (total, kept_words)
}

/// Checks the prompt of shot `shot_index` (built with [`shot_prompt`]); `None` when the shot's
/// caption reaches the encoder whole.
///
/// Positions are found on the cleaned texts: the cleaned global caption and the cleaned
/// `global + "shot{i}:"` are prefixes of the cleaned prompt for any ordinary caption. Should
/// cleaning ever merge across the boundary, the last `shot{i}:` in the cleaned prompt is used.
pub fn check_truncation(
    tokenizer: &dyn PromptTokenizer,
    global: &str,
    shot_index: usize,
    shot_caption: &str,
) -> Result<Option<PromptWarning>> {
    let prompt = shot_prompt(global, shot_index, shot_caption);
    let full = tokenizer.fit(&prompt)?;
    if !full.truncated() {
        return Ok(None);
    }
    let label = shot_label(shot_index);
    let head = tokenizer.fit(&format!("{global}{label}"))?;
    let global_fit = tokenizer.fit(global)?;
    let cleaned = &full.cleaned;
    let caption_start = if cleaned.starts_with(&head.cleaned) {
        head.cleaned.len()
    } else {
        cleaned.rfind(&label).map_or(0, |p| p + label.len())
    };
    let global_end = if cleaned.starts_with(&global_fit.cleaned) {
        global_fit.cleaned.len()
    } else {
        caption_start.saturating_sub(label.len())
    };
    let kept = full.kept_bytes;
    let max_len = tokenizer.max_len();
    let cut = if kept < global_end {
        let (total_words, kept_words) = word_counts(&cleaned[..global_end], kept);
        PromptCut::GlobalCaptionCut { kept_words, total_words }
    } else if kept <= caption_start {
        PromptCut::ShotCaptionLost
    } else {
        let caption = cleaned[caption_start..].trim_start();
        let caption_offset = cleaned.len() - caption.len();
        let (total_words, kept_words) = word_counts(caption, kept - caption_offset.min(kept));
        // Token counts include EOS on both sides, so the difference is the caption's tokens.
        let total_tokens = full.total_tokens.saturating_sub(head.total_tokens);
        let kept_tokens = max_len.saturating_sub(head.total_tokens).min(total_tokens);
        PromptCut::ShotCaptionCut { kept_words, total_words, kept_tokens, total_tokens }
    };
    Ok(Some(PromptWarning { shot: shot_index, prompt_tokens: full.total_tokens, max_len, cut }))
}

/// [`check_truncation`] for every shot of a story; the warnings in shot order.
pub fn check_story<S: AsRef<str>>(
    tokenizer: &dyn PromptTokenizer,
    global: &str,
    shot_captions: &[S],
) -> Result<Vec<PromptWarning>> {
    let mut warnings = Vec::new();
    for (i, caption) in shot_captions.iter().enumerate() {
        if let Some(w) = check_truncation(tokenizer, global, i, caption.as_ref())? {
            warnings.push(w);
        }
    }
    Ok(warnings)
}

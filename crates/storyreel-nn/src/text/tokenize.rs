//! The UMT5 tokenizer as Wan uses it: a `tokenizer.json` in the `google/umt5-xxl` format (pad 0,
//! EOS `</s>` 1, unk 2), Wan's cleaning first ([`clean_text`]), EOS appended, no BOS, and
//! truncation to 512 tokens keeping EOS as the last id. Ids are returned at their real length;
//! padding to `text_len` happens on the embeddings.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{NnError, Result};
use crate::text::clean::clean_text;

/// Id of `<pad>`.
pub const PAD_ID: u32 = 0;
/// Id of `</s>`, appended to every caption.
pub const EOS_ID: u32 = 1;
/// Id of `<unk>`.
pub const UNK_ID: u32 = 2;
/// Tokens per caption as Wan uses UMT5, EOS included.
pub const TEXT_LEN: usize = 512;

/// One caption, tokenised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    /// Token ids, EOS last; at most the tokenizer's `max_len` of them.
    pub ids: Vec<u32>,
    /// Whether tokens were dropped to fit `max_len`.
    pub truncated: bool,
    /// Tokens the caption takes without truncation, EOS included.
    pub total_tokens: usize,
    /// The caption after Wan's cleaning: the text that was tokenised.
    pub cleaned: String,
    /// Bytes of `cleaned` covered by the kept tokens: `cleaned.len()` unless truncated, else the
    /// start of the first dropped token (so `&cleaned[..kept_bytes]` is what the encoder sees).
    pub kept_bytes: usize,
}

impl TokenIds {
    /// Real tokens, EOS included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Never true: EOS is always there.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The part of the cleaned caption that survived truncation.
    pub fn kept_text(&self) -> &str {
        &self.cleaned[..self.kept_bytes]
    }

    /// The part of the cleaned caption that truncation dropped (empty when not truncated).
    pub fn dropped_text(&self) -> &str {
        &self.cleaned[self.kept_bytes..]
    }
}

/// The UMT5 tokenizer with Wan's cleaning and truncation.
#[derive(Clone)]
pub struct Umt5Tokenizer {
    inner: Tokenizer,
    max_len: usize,
}

impl std::fmt::Debug for Umt5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Umt5Tokenizer").field("vocab_size", &self.vocab_size()).field("max_len", &self.max_len).finish()
    }
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> NnError {
    NnError::Config(format!("{context}: {e}"))
}

impl Umt5Tokenizer {
    /// Loads a `tokenizer.json` and checks its special tokens; `max_len` is [`TEXT_LEN`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(NnError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such tokenizer file")));
        }
        let inner =
            Tokenizer::from_file(path).map_err(|e| tok_err(&format!("cannot load tokenizer {}", path.display()), e))?;
        Self::from_tokenizer(inner).map_err(|e| match e {
            NnError::Config(msg) => NnError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Wraps a loaded tokenizer, checking that `<pad>`, `</s>` and `<unk>` have ids 0, 1 and 2.
    /// Any truncation or padding configured in it is switched off: this type does both itself.
    pub fn from_tokenizer(mut inner: Tokenizer) -> Result<Self> {
        for (token, want) in [("<pad>", PAD_ID), ("</s>", EOS_ID), ("<unk>", UNK_ID)] {
            match inner.token_to_id(token) {
                Some(id) if id == want => {}
                Some(id) => {
                    return Err(NnError::Config(format!(
                        "tokenizer has `{token}` at id {id}, UMT5 expects {want} (pad 0, eos 1, unk 2)"
                    )))
                }
                None => {
                    return Err(NnError::Config(format!(
                        "tokenizer has no `{token}` token (UMT5 expects pad 0, eos 1, unk 2)"
                    )))
                }
            }
        }
        inner.with_truncation(None).map_err(|e| tok_err("cannot disable truncation", e))?;
        inner.with_padding(None);
        Ok(Self { inner, max_len: TEXT_LEN })
    }

    /// The same tokenizer truncating at `max_len` tokens (EOS included; at least 1).
    pub fn with_max_len(mut self, max_len: usize) -> Result<Self> {
        if max_len == 0 {
            return Err(NnError::Config("max_len must leave room for EOS (>= 1)".into()));
        }
        self.max_len = max_len;
        Ok(self)
    }

    /// Tokens per caption at most, EOS included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Cleans, tokenises, truncates to `max_len` keeping EOS last.
    pub fn encode(&self, text: &str) -> Result<TokenIds> {
        let cleaned = clean_text(text);
        // The post-processor (if any) would append EOS; do it here so that truncation can keep
        // it whatever the file says.
        let enc = self.inner.encode(cleaned.as_str(), false).map_err(|e| tok_err("tokenization failed", e))?;
        let body = enc.get_ids();
        let total_tokens = body.len() + 1;
        let keep = body.len().min(self.max_len - 1);
        let truncated = keep < body.len();
        let mut ids = Vec::with_capacity(keep + 1);
        ids.extend_from_slice(&body[..keep]);
        ids.push(EOS_ID);
        let kept_bytes = if truncated {
            // Everything before the first dropped token survives. (The end of the last kept
            // token can overshoot: a lone `▁` piece is aligned with the character after it.)
            let end = enc.get_offsets()[keep..].iter().map(|&(s, _)| s).min().unwrap_or(cleaned.len());
            // Offsets are byte offsets into `cleaned`; keep on a char boundary regardless.
            let mut end = end.min(cleaned.len());
            while !cleaned.is_char_boundary(end) {
                end -= 1;
            }
            end
        } else {
            cleaned.len()
        };
        Ok(TokenIds { ids, truncated, total_tokens, cleaned, kept_bytes })
    }

    /// [`encode`](Self::encode) for each caption.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<TokenIds>> {
        texts.iter().map(|t| self.encode(t)).collect()
    }

    /// Ids back to text, special tokens (pad, EOS, unk) skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| tok_err("detokenization failed", e))
    }
}

//! Captions to the embeddings the DiT cross-attends to: the UMT5-XXL encoder Wan uses, its
//! tokenizer and text cleaning, and the toy text encoder, all behind [`TextEncoder`].

pub mod cache;
pub mod clean;
pub mod tokenize;
pub mod toy;

pub mod umt5;
pub mod umt5_text;

use candle_core::Tensor;

use crate::error::Result;

/// One caption's embedding, in the form the DiT takes it.
#[derive(Debug, Clone)]
pub struct TextEmbedding {
    /// `[text_len, dim]` f32; rows from `length` on are exactly zero.
    pub embeddings: Tensor,
    /// Real tokens, EOS included.
    pub length: usize,
    /// Whether the caption was cut to fit `text_len` tokens.
    pub truncated: bool,
}

/// Turns caption text into embeddings.
pub trait TextEncoder: Send + Sync {
    /// Identifies the weights and tokenizer (e.g. a content hash); embedding caches key on it.
    fn identity(&self) -> &str;
    /// Rows of every embedding (512 for UMT5 as Wan uses it).
    fn text_len(&self) -> usize;
    /// Width of every row (4096 for UMT5-XXL).
    fn dim(&self) -> usize;
    /// Encodes each caption on its own.
    fn encode(&self, texts: &[&str]) -> Result<Vec<TextEmbedding>>;
}

//! The toy text encoder: a word-level tokenizer over a fixed vocabulary (the story world's),
//! learned token and position embeddings, and a few small pre-norm transformer blocks so that a
//! word's embedding depends on its neighbours ("red fox" ≠ "red house"). Small enough to train
//! with the toy models on a CPU; behind the same [`TextEncoder`] trait as UMT5.
//!
//! Files: `vocab.txt` (one word per line; lines 0–2 must be `<pad>`, `</s>`, `<unk>`),
//! `toy_text_config.json`, `toy_text.safetensors`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

use super::{TextEmbedding, TextEncoder};
use crate::checkpoint::{check_tensor_shapes, save_safetensors, TensorFiles};
use crate::error::{NnError, Result};
use crate::norm::rms_norm;

/// Special tokens at fixed ids, as in UMT5 (pad 0, end 1, unknown 2).
pub const SPECIALS: [&str; 3] = ["<pad>", "</s>", "<unk>"];
const EOS: u32 = 1;
const UNK: u32 = 2;

/// Shape of the toy text encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyTextConfig {
    /// Width of the embeddings.
    pub dim: usize,
    /// Rows of every output (tokens kept, EOS included).
    pub text_len: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP width.
    pub ffn_dim: usize,
}

impl Default for ToyTextConfig {
    fn default() -> Self {
        Self { dim: 64, text_len: 48, layers: 2, heads: 4, ffn_dim: 128 }
    }
}

impl ToyTextConfig {
    /// Checks the shape for consistency.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(NnError::Config(format!(
                "toy text dim {} must be a positive multiple of heads {}",
                self.dim, self.heads
            )));
        }
        if self.text_len < 2 || self.text_len > 4096 || self.ffn_dim == 0 {
            return Err(NnError::Config(format!(
                "toy text length {} must be in 2..=4096 and ffn_dim positive",
                self.text_len
            )));
        }
        Ok(())
    }
}

/// What to do with words outside the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownWords {
    /// Fail, naming the words (the default: a caption the model cannot read is a user error).
    #[default]
    Reject,
    /// Encode them as `<unk>`; [`ToyTokenizer::tokenize`] still lists them.
    MapToUnk,
}

/// A tokenized caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToyTokens {
    /// Token ids, EOS last.
    pub ids: Vec<u32>,
    /// Words not in the vocabulary, in order of appearance.
    pub unknown: Vec<String>,
    /// Whether words were dropped to fit the length.
    pub truncated: bool,
}

/// Word-level tokenizer: lower-cases, splits letters and digits from everything else, and maps
/// each word to its vocabulary id. Numbers glued to words (`shot3:`) split into `shot`, `3`.
#[derive(Debug, Clone)]
pub struct ToyTokenizer {
    words: Vec<String>,
    ids: HashMap<String, u32>,
}

impl ToyTokenizer {
    /// Builds the tokenizer from a word list whose first entries are [`SPECIALS`].
    pub fn new(words: Vec<String>) -> Result<Self> {
        if words.len() < SPECIALS.len() || words[..3] != SPECIALS {
            return Err(NnError::Config(format!("a toy vocabulary must start with {SPECIALS:?}")));
        }
        let mut ids = HashMap::new();
        for (i, w) in words.iter().enumerate() {
            if w.is_empty() || w.chars().any(char::is_whitespace) {
                return Err(NnError::Config(format!("vocabulary entry {i} ({w:?}) is empty or has spaces")));
            }
            if ids.insert(w.clone(), i as u32).is_some() {
                return Err(NnError::Config(format!("vocabulary word {w:?} appears twice")));
            }
        }
        Ok(Self { words, ids })
    }

    /// Reads `vocab.txt` (one word per line).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| NnError::io(path, e))?;
        Self::new(text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
            .map_err(|e| NnError::Config(format!("{}: {e}", path.display())))
    }

    /// Builds a vocabulary from example texts: the specials, then every word in first-seen order.
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut words: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        let mut seen: std::collections::HashSet<String> = words.iter().cloned().collect();
        for t in texts {
            for w in split_words(t) {
                if seen.insert(w.clone()) {
                    words.push(w);
                }
            }
        }
        Self::new(words)
    }

    /// Writes `vocab.txt`.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.words.join("\n") + "\n").map_err(|e| NnError::io(path, e))
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the vocabulary holds only the specials.
    pub fn is_empty(&self) -> bool {
        self.words.len() <= SPECIALS.len()
    }

    /// The vocabulary, id order.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Tokenizes `text` into at most `max_len` ids (EOS kept last).
    pub fn tokenize(&self, text: &str, max_len: usize) -> ToyTokens {
        let mut ids = Vec::new();
        let mut unknown = Vec::new();
        for w in split_words(text) {
            match self.ids.get(&w) {
                Some(&id) => ids.push(id),
                None => {
                    ids.push(UNK);
                    unknown.push(w);
                }
            }
        }
        let keep = max_len.saturating_sub(1);
        let truncated = ids.len() > keep;
        ids.truncate(keep);
        ids.push(EOS);
        ToyTokens { ids, unknown, truncated }
    }
}

/// Lower-cased runs of letters, and runs of digits, in order.
fn split_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut cur_digit = false;
    for c in text.chars().flat_map(char::to_lowercase) {
        let (word_char, digit) = (c.is_alphanumeric() || c == '\'', c.is_ascii_digit());
        if (!word_char || digit != cur_digit) && !cur.is_empty() {
            out.push(std::mem::take(&mut cur).trim_matches('\'').to_string());
        }
        if word_char {
            cur.push(c);
            cur_digit = digit;
        }
    }
    if !cur.is_empty() {
        out.push(cur.trim_matches('\'').to_string());
    }
    out.retain(|w| !w.is_empty());
    out
}

/// One pre-norm transformer block (self-attention over the caption's tokens, then an MLP).
struct Block {
    norm1: Tensor,
    qkv: candle_nn::Linear,
    out: candle_nn::Linear,
    norm2: Tensor,
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
}

/// The toy text encoder.
pub struct ToyTextEncoder {
    cfg: ToyTextConfig,
    tokenizer: ToyTokenizer,
    token_embedding: Tensor,
    pos_embedding: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    unknown: UnknownWords,
    identity: String,
}

fn linear(vb: &VarBuilder, i: usize, o: usize, name: &str) -> Result<candle_nn::Linear> {
    Ok(candle_nn::linear(i, o, vb.pp(name))?)
}

impl ToyTextEncoder {
    fn build(cfg: ToyTextConfig, tokenizer: ToyTokenizer, vb: &VarBuilder, identity: String) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.dim;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        let token_embedding = vb.get_with_hints((tokenizer.len(), d), "token_embedding.weight", init)?;
        let pos_embedding = vb.get_with_hints((cfg.text_len, d), "pos_embedding.weight", init)?;
        let ones = candle_nn::Init::Const(1.0);
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let b = vb.pp(format!("blocks.{i}"));
            blocks.push(Block {
                norm1: b.get_with_hints(d, "norm1.weight", ones)?,
                qkv: linear(&b, d, 3 * d, "attn.qkv")?,
                out: linear(&b, d, d, "attn.out")?,
                norm2: b.get_with_hints(d, "norm2.weight", ones)?,
                fc1: linear(&b, d, cfg.ffn_dim, "mlp.fc1")?,
                fc2: linear(&b, cfg.ffn_dim, d, "mlp.fc2")?,
            });
        }
        let norm = vb.get_with_hints(d, "norm.weight", ones)?;
        Ok(Self {
            cfg,
            tokenizer,
            token_embedding,
            pos_embedding,
            blocks,
            norm,
            unknown: UnknownWords::default(),
            identity,
        })
    }

    /// A trainable encoder whose weights live under `vb` (e.g. a prefix of a larger model's
    /// variables, so that it trains jointly with the DiT).
    pub fn trainable_in(cfg: ToyTextConfig, tokenizer: ToyTokenizer, vb: &VarBuilder) -> Result<Self> {
        Self::build(cfg, tokenizer, vb, "toy-text:trainable".into())
    }

    /// A trainable encoder whose weights live in `varmap` (fresh ones are initialised there).
    pub fn trainable(cfg: ToyTextConfig, tokenizer: ToyTokenizer, varmap: &VarMap, device: &Device) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        Self::build(cfg, tokenizer, &vb, "toy-text:trainable".into())
    }

    /// Random weights (seeded) for tests and benches.
    pub fn random(cfg: ToyTextConfig, tokenizer: ToyTokenizer, seed: u64, device: &Device) -> Result<Self> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let normal = Normal::new(0f32, 0.02).map_err(|e| NnError::Config(e.to_string()))?;
        let mut tensors = HashMap::new();
        for (name, shape) in tensor_shapes(&cfg, tokenizer.len()) {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if name.contains("norm") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            };
            tensors.insert(name, Tensor::from_vec(v, shape, device)?);
        }
        Self::from_tensors(cfg, tokenizer, tensors)
    }

    /// Builds the encoder from named tensors, checking every name and shape.
    pub fn from_tensors(cfg: ToyTextConfig, tokenizer: ToyTokenizer, tensors: HashMap<String, Tensor>) -> Result<Self> {
        cfg.validate()?;
        let found: std::collections::BTreeMap<String, Vec<usize>> =
            tensors.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
        check_tensor_shapes(&tensor_shapes(&cfg, tokenizer.len()), &found)?;
        let identity = identity_of(&cfg, &tokenizer, &tensors)?;
        let device = tensors.values().next().map(|t| t.device().clone()).unwrap_or(Device::Cpu);
        let tensors = tensors.into_iter().map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?))).collect::<Result<_>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        Self::build(cfg, tokenizer, &vb, identity)
    }

    /// Loads `vocab.txt`, `toy_text_config.json` and `toy_text.safetensors` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let tokenizer = ToyTokenizer::from_file(&dir.join("vocab.txt"))?;
        let cfg_path = dir.join("toy_text_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| NnError::io(&cfg_path, e))?;
        let cfg: ToyTextConfig =
            serde_json::from_str(&text).map_err(|e| NnError::Config(format!("{}: {e}", cfg_path.display())))?;
        let files = TensorFiles::open(&dir.join("toy_text.safetensors"))?;
        let tensors = files.load_all(DType::F32, device)?;
        Self::from_tensors(cfg, tokenizer, tensors)
    }

    /// Writes the three files into `dir` (weights from `varmap` when trained there).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| NnError::io(dir, e))?;
        self.tokenizer.save(&dir.join("vocab.txt"))?;
        let json = serde_json::to_string_pretty(&self.cfg).map_err(|e| NnError::Config(e.to_string()))?;
        let p = dir.join("toy_text_config.json");
        std::fs::write(&p, json).map_err(|e| NnError::io(&p, e))?;
        save_safetensors(&dir.join("toy_text.safetensors"), &self.tensors())
    }

    /// Every weight by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        m.insert("token_embedding.weight".into(), self.token_embedding.clone());
        m.insert("pos_embedding.weight".into(), self.pos_embedding.clone());
        m.insert("norm.weight".into(), self.norm.clone());
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("blocks.{i}");
            m.insert(format!("{p}.norm1.weight"), b.norm1.clone());
            m.insert(format!("{p}.norm2.weight"), b.norm2.clone());
            for (name, l) in [("attn.qkv", &b.qkv), ("attn.out", &b.out), ("mlp.fc1", &b.fc1), ("mlp.fc2", &b.fc2)] {
                m.insert(format!("{p}.{name}.weight"), l.weight().clone());
                if let Some(bias) = l.bias() {
                    m.insert(format!("{p}.{name}.bias"), bias.clone());
                }
            }
        }
        m
    }

    /// Chooses what happens to words outside the vocabulary.
    pub fn with_unknown_words(mut self, policy: UnknownWords) -> Self {
        self.unknown = policy;
        self
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ToyTokenizer {
        &self.tokenizer
    }

    /// The shape.
    pub fn config(&self) -> &ToyTextConfig {
        &self.cfg
    }

    /// Embeddings `[text_len, dim]` of token ids (differentiable when the weights are trainable);
    /// rows from `ids.len()` on are zero.
    pub fn forward_ids(&self, ids: &[u32]) -> Result<Tensor> {
        let n = ids.len();
        if n == 0 || n > self.cfg.text_len {
            return Err(NnError::Input(format!("{n} tokens; the toy text encoder takes 1..={}", self.cfg.text_len)));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.tokenizer.len()) {
            return Err(NnError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.tokenizer.len()
            )));
        }
        let device = self.token_embedding.device();
        let idx = Tensor::from_vec(ids.to_vec(), n, device)?;
        let mut x = self.token_embedding.embedding(&idx)?.add(&self.pos_embedding.narrow(0, 0, n)?)?;
        let (d, h) = (self.cfg.dim, self.cfg.heads);
        let hd = d / h;
        for b in &self.blocks {
            let y = rms_norm(&x, &b.norm1, 1e-6)?;
            let qkv = y.apply(&b.qkv)?.reshape((n, 3, h, hd))?.permute((1, 2, 0, 3))?; // [3, H, n, hd]
            let (q, k, v) = (qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?);
            let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
            let attn = crate::attention::softmax_last_dim(&scores)?.matmul(&v)?; // [H, n, hd]
            let attn = attn.transpose(0, 1)?.reshape((n, d))?;
            x = (x + attn.apply(&b.out)?)?;
            let y = rms_norm(&x, &b.norm2, 1e-6)?;
            x = (&x + y.apply(&b.fc1)?.gelu()?.apply(&b.fc2)?)?;
        }
        let x = rms_norm(&x, &self.norm, 1e-6)?;
        Ok(x.pad_with_zeros(0, 0, self.cfg.text_len - n)?)
    }

    /// Tokenizes and encodes one caption, applying the unknown-word policy.
    pub fn encode_one(&self, text: &str) -> Result<TextEmbedding> {
        let tokens = self.tokenizer.tokenize(text, self.cfg.text_len);
        if self.unknown == UnknownWords::Reject && !tokens.unknown.is_empty() {
            return Err(NnError::Input(format!(
                "the toy text encoder does not know the word(s) {} (its vocabulary has {} words)",
                tokens.unknown.iter().map(|w| format!("{w:?}")).collect::<Vec<_>>().join(", "),
                self.tokenizer.len()
            )));
        }
        let embeddings = self.forward_ids(&tokens.ids)?;
        Ok(TextEmbedding { embeddings, length: tokens.ids.len(), truncated: tokens.truncated })
    }
}

impl TextEncoder for ToyTextEncoder {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn text_len(&self) -> usize {
        self.cfg.text_len
    }

    fn dim(&self) -> usize {
        self.cfg.dim
    }

    fn encode(&self, texts: &[&str]) -> Result<Vec<TextEmbedding>> {
        texts.iter().map(|t| self.encode_one(t)).collect()
    }
}

/// Every weight name and shape for `cfg` and a vocabulary of `vocab` words.
pub fn tensor_shapes(cfg: &ToyTextConfig, vocab: usize) -> Vec<(String, Vec<usize>)> {
    let d = cfg.dim;
    let mut out = vec![
        ("token_embedding.weight".to_string(), vec![vocab, d]),
        ("pos_embedding.weight".to_string(), vec![cfg.text_len, d]),
        ("norm.weight".to_string(), vec![d]),
    ];
    for i in 0..cfg.layers {
        let p = format!("blocks.{i}");
        out.push((format!("{p}.norm1.weight"), vec![d]));
        out.push((format!("{p}.norm2.weight"), vec![d]));
        for (name, o, inp) in
            [("attn.qkv", 3 * d, d), ("attn.out", d, d), ("mlp.fc1", cfg.ffn_dim, d), ("mlp.fc2", d, cfg.ffn_dim)]
        {
            out.push((format!("{p}.{name}.weight"), vec![o, inp]));
            out.push((format!("{p}.{name}.bias"), vec![o]));
        }
    }
    out
}

/// A content hash of config, vocabulary and weights: equal encoders share cache entries.
fn identity_of(cfg: &ToyTextConfig, tok: &ToyTokenizer, tensors: &HashMap<String, Tensor>) -> Result<String> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(cfg).map_err(|e| NnError::Config(e.to_string()))?);
    for w in tok.words() {
        h.update(w.as_bytes());
        h.update([0]);
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for n in names {
        h.update(n.as_bytes());
        let v = tensors[n].to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        for x in v {
            h.update(x.to_le_bytes());
        }
    }
    let digest = h.finalize();
    Ok(format!("toy-text:{}", digest.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>()))
}

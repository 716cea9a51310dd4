//! storyreel-nn: tensors and weights. The Wan2.1 DiT in its two modes (bidirectional and causal
//! chunked with a dual KV cache), 3D RoPE with the ShotStream shot phase, per-frame caption
//! routing, LoRA adapters and checkpoint loading (safetensors, PyTorch pickle; Wan, ShotStream and
//! diffusers layouts); the Wan VAE and the tiny TAEHV-style autoencoder with streaming decode; the
//! UMT5 text encoder, its tokenizer and the toy text encoder.

pub mod attention;
pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod conv;
pub mod dit;
pub mod error;
pub mod fused;
pub mod fused_grad;
pub mod kv_cache;
pub mod linear;
pub mod norm;
pub mod rope;
pub mod taehv;
pub mod text;
pub mod vae;

pub use config::WanConfig;
pub use dit::{FrameInfo, WanModel};
pub use error::{NnError, Result};
pub use rope::{FramePhase, RopeConfig};

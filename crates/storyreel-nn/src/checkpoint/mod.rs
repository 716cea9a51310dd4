//! Checkpoint I/O for the Wan DiT.
//!
//! * Reading: safetensors (single file, sharded with a `*.index.json`, or several files; memory
//!   mapped) and PyTorch `torch.save` zip archives (`.pt`/`.pth`/`.bin`, parsed with candle's
//!   pickle module), including state dicts wrapped as `{'generator': ...}` and similar.
//! * Layouts: original Wan names, ShotStream/Self-Forcing (`model.` prefix) and diffusers
//!   `WanTransformer3DModel`, all normalised to canonical (original Wan) names.
//! * Validation against [`crate::WanConfig`], LoRA reading and merging, writing safetensors and
//!   PyTorch archives, and a header-only [`inspect`] report.

#![warn(missing_docs)]

mod files;
mod inspect;
mod load;
mod lora;
mod names;
mod pickle;
mod pth;
mod util;

pub use files::{find_model_files, save_safetensors, ModelFiles, TensorFiles, TensorHeader, WeightFormat};
pub use inspect::{inspect, InferredShape, InspectContent, InspectReport, LoraSummary, ModelSummary};
pub use load::{
    check_dit_shapes, check_expected_tensors, check_no_unexpected_tensors, check_tensor_shapes, load_dit_checkpoint,
    load_dit_checkpoint_from_key, rename_to_layout, save_checkpoint, LoadedCheckpoint,
};
pub use lora::{merge_lora, read_lora, LoraWeights};
pub use names::{
    detect_layout, dit_tensor_shapes, from_canonical, lora_target_paths, strip_wrappers, to_canonical, CheckpointLayout,
};
pub use pickle::{save_pth, save_pth_dicts};

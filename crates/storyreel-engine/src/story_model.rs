//! A story model folder: the DiT, its VAE and its text encoder in one place, with a card saying
//! what the model is and how to sample it.
//!
//! Layout (every part is also loadable on its own by the lower-level commands):
//! ```text
//! MODEL/storyreel_model.json   the card (kind, format, sampler defaults)
//! MODEL/dit/config.json        Wan's DiT config
//! MODEL/dit/model.safetensors  DiT weights (canonical Wan names)
//! MODEL/vae/                   vae.safetensors + vae_config.json (latent statistics)
//! MODEL/text/                  toy_text.safetensors + toy_text_config.json + vocab.txt
//! MODEL/tiny_vae/              optional: a tiny decoder for the VAE's latents
//!                              (tiny_vae.safetensors + tiny_vae_config.json)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::taehv::TinyVae;
use storyreel_nn::text::toy::{ToyTextEncoder, UnknownWords};
use storyreel_nn::vae::WanVae;
use storyreel_nn::{RopeConfig, WanConfig, WanModel};

use crate::error::{EngineError, Result};
use crate::sampler::EulerSampler;

/// File name of the card inside a model folder.
pub const CARD_FILE: &str = "storyreel_model.json";
/// Sub-folder of the DiT.
pub const DIT_DIR: &str = "dit";
/// Sub-folder of the VAE.
pub const VAE_DIR: &str = "vae";
/// Sub-folder of the text encoder.
pub const TEXT_DIR: &str = "text";
/// File name of the DiT weights inside [`DIT_DIR`].
pub const DIT_WEIGHTS: &str = "model.safetensors";
/// Sub-folder of the optional tiny decoder.
pub const TINY_DIR: &str = "tiny_vae";
/// File name of the tiny decoder's weights inside [`TINY_DIR`].
pub const TINY_WEIGHTS: &str = "tiny_vae.safetensors";

/// Which decoder turns a model's latents into the frames it shows by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardDecoder {
    /// The VAE's own decoder.
    Full,
    /// The tiny decoder in [`TINY_DIR`] (several times faster; the VAE still encodes context).
    Tiny,
}

/// Which sampling procedure a model was trained for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Bidirectional next-shot teacher: multi-step Euler with CFG over [context ‖ shot].
    Teacher,
    /// Causal few-step student: chunk by chunk through the context and local KV caches.
    Student,
}

/// Few-step causal sampling of a student (shotstream.md §4.2–4.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSampling {
    /// Denoising steps before warping ([1000, 740, 500, 260]).
    pub steps: Vec<u32>,
    /// Shift of the table the steps are warped on.
    pub shift: f32,
    /// Latent frames per chunk (3).
    pub chunk_frames: usize,
}

/// Multi-step Euler sampling defaults of a teacher.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSampling {
    /// Euler steps.
    pub steps: usize,
    /// Schedule shift.
    pub shift: f32,
    /// Classifier-free guidance scale (1 = off).
    pub guidance: f32,
    /// Context guidance scale (0 = off; see [`EulerSampler`]). Cards written before it read 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub context_guidance: f32,
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

impl TeacherSampling {
    /// The Euler sampler these defaults describe.
    pub fn sampler(&self) -> Result<EulerSampler> {
        EulerSampler::new(self.steps, self.shift, self.guidance)?.with_context_guidance(self.context_guidance)
    }
}

/// What a model folder holds and how to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// The sampling procedure.
    pub kind: ModelKind,
    /// Frame width the model was trained at.
    pub width: u32,
    /// Frame height the model was trained at.
    pub height: u32,
    /// Frames per second of its training videos.
    pub fps: f64,
    /// Context latents in front of every shot (6 in ShotStream).
    pub context_frames: usize,
    /// Whether the RoPE shot-phase indicator was on in training.
    pub shot_phase: bool,
    /// Whether the model was trained with context (false for the no-context ablation).
    pub uses_context: bool,
    /// The context policy it was trained with and runs with by default (absent: "dynamic").
    #[serde(default = "default_context_policy", skip_serializing_if = "is_dynamic_policy")]
    pub context_policy: String,
    /// Whether a teacher embeds its context frames at t = 0 rather than at the target's t
    /// (absent: false, ShotStream's teacher). Students always see context at t = 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean_context: bool,
    /// Whether a teacher takes the mean context latent joined to each target frame's channels
    /// (absent: false; [`crate::context_channels`]). Its DiT then reads twice the VAE's channels.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub context_channels: bool,
    /// Sampling defaults (of the multi-step teacher: for a student, of the teacher it learned from).
    pub sampler: TeacherSampling,
    /// The few-step sampler of a student (absent for a teacher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student: Option<StudentSampling>,
    /// The decoder frames are shown with unless the caller picks one (absent: the VAE's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<CardDecoder>,
    /// One line on where the model comes from.
    pub description: String,
}

fn default_context_policy() -> String {
    "dynamic".into()
}

fn is_dynamic_policy(name: &String) -> bool {
    name == "dynamic"
}

impl ModelCard {
    /// The context policy `generate` uses unless told otherwise: the trained one, or none for
    /// a model trained without context.
    pub fn default_context_policy(&self) -> &str {
        if self.uses_context {
            &self.context_policy
        } else {
            "none"
        }
    }

    /// Reads `dir/storyreel_model.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CARD_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            EngineError::Config(format!(
                "{}: {e} (a story model folder needs its card {CARD_FILE}; see README, Models)",
                path.display()
            ))
        })?;
        // Through serde_path_to_error, so a wrong value names its field ("clean_context: …").
        let card: Self = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
            .map_err(|e| EngineError::Config(format!("{}: {e}", path.display())))?;
        card.validate().map_err(|e| EngineError::Config(format!("{}: {e}", path.display())))?;
        Ok(card)
    }

    /// Writes `dir/storyreel_model.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.validate().map_err(EngineError::Config)?;
        std::fs::create_dir_all(dir).map_err(|e| EngineError::Config(format!("{}: {e}", dir.display())))?;
        let path = dir.join(CARD_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| EngineError::Config(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| EngineError::Config(format!("{}: {e}", path.display())))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.width == 0 || self.height == 0 || self.width > 4096 || self.height > 4096 {
            return Err(format!("frame size {}×{} must be within 1..=4096", self.width, self.height));
        }
        if !(self.fps > 0.0 && self.fps <= 240.0) {
            return Err(format!("fps {} must be in (0, 240]", self.fps));
        }
        if self.context_frames == 0 || self.context_frames > 64 {
            return Err(format!("context_frames {} must be in 1..=64", self.context_frames));
        }
        if crate::context::policy_by_name(&self.context_policy, self.context_frames).is_none() {
            return Err(format!(
                "context_policy {:?} is not one of {}",
                self.context_policy,
                crate::context::POLICY_NAMES.join(", ")
            ));
        }
        let s = &self.sampler;
        if s.steps == 0 || s.steps > 1000 || !(s.shift > 0.0 && s.shift.is_finite()) || !s.guidance.is_finite() {
            return Err(format!("sampler {s:?}: steps must be 1..=1000, shift positive, guidance finite"));
        }
        if !(s.context_guidance >= 0.0 && s.context_guidance.is_finite()) {
            return Err(format!("sampler {s:?}: context_guidance must be a finite number ≥ 0"));
        }
        match (self.kind, &self.student) {
            (ModelKind::Student, None) => return Err("a student's card needs its `student` sampler".into()),
            (ModelKind::Teacher, Some(_)) => return Err("a teacher's card has no `student` sampler".into()),
            (_, Some(st)) => {
                if st.chunk_frames == 0 || st.chunk_frames > 64 {
                    return Err(format!("student chunk_frames {} must be in 1..=64", st.chunk_frames));
                }
                if !(st.shift > 0.0 && st.shift.is_finite()) {
                    return Err(format!("student shift {} must be positive", st.shift));
                }
                crate::sampler::FewStepSampler::new(&st.steps, st.shift)
                    .map_err(|e| format!("student steps {:?}: {e}", st.steps))?;
            }
            (ModelKind::Teacher, None) => {}
        }
        Ok(())
    }
}

/// The RoPE of a story model's DiT: the shot phase indicator (ShotStream's 1/6 per shot) when
/// the model was trained with it.
pub fn story_rope(shot_phase: bool) -> RopeConfig {
    RopeConfig { shot_phase: shot_phase.then_some(1.0 / 6.0), ..RopeConfig::default() }
}

/// A loaded story model.
pub struct StoryModel {
    /// The card.
    pub card: ModelCard,
    /// The DiT.
    pub dit: WanModel,
    /// The VAE (encoder and decoder).
    pub vae: Arc<WanVae>,
    /// What decodes the frames shown by default: the VAE, or the tiny decoder the card names.
    pub decoder: Arc<dyn VideoCodec>,
    /// The text encoder.
    pub text: ToyTextEncoder,
    /// Where it was loaded from.
    pub dir: PathBuf,
}

impl StoryModel {
    /// Loads every part of a model folder onto `device` in f32.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(EngineError::Config(format!(
                "model folder {} does not exist or is not a folder",
                dir.display()
            )));
        }
        let card = ModelCard::read(dir)?;
        let dit_dir = dir.join(DIT_DIR);
        let cfg = WanConfig::from_json_file(&dit_dir.join("config.json"))?;
        let loaded = storyreel_nn::checkpoint::load_dit_checkpoint(&dit_dir, &cfg, DType::F32, device)?;
        let rope = story_rope(card.shot_phase);
        let dit = WanModel::from_tensors(loaded.tensors, &cfg, rope, DType::F32, device)?;
        let vae = WanVae::load(&dir.join(VAE_DIR), DType::F32, device)?;
        if !vae.has_encoder() {
            return Err(EngineError::Config(format!(
                "{}: the VAE has no encoder, which the context round trip needs",
                dir.join(VAE_DIR).display()
            )));
        }
        let text = ToyTextEncoder::load(&dir.join(TEXT_DIR), device)?.with_unknown_words(UnknownWords::Reject);
        check_parts(&card, &cfg, &vae, &text)?;
        let vae = Arc::new(vae);
        let decoder: Arc<dyn VideoCodec> = match card.decoder {
            None | Some(CardDecoder::Full) => vae.clone(),
            Some(CardDecoder::Tiny) => Arc::new(load_tiny_decoder(dir, &vae, device)?),
        };
        Ok(Self { card, dit, vae, decoder, text, dir: dir.to_path_buf() })
    }
}

/// Loads `dir/tiny_vae/tiny_vae.safetensors` and checks it reads the VAE's latents.
pub fn load_tiny_decoder(dir: &Path, vae: &WanVae, device: &Device) -> Result<TinyVae> {
    let path = dir.join(TINY_DIR).join(TINY_WEIGHTS);
    if !path.is_file() {
        return Err(EngineError::Config(format!(
            "{}: the card asks for the tiny decoder but {} does not exist",
            dir.join(CARD_FILE).display(),
            path.display()
        )));
    }
    let tiny = TinyVae::load(&path, DType::F32, device)?;
    if tiny.latent_channels() != vae.latent_channels() || tiny.spatial_scale() != vae.spatial_scale() {
        return Err(EngineError::Config(format!(
            "{}: the tiny decoder reads {} channels at ×{}, the VAE has {} at ×{}",
            path.display(),
            tiny.latent_channels(),
            tiny.spatial_scale(),
            vae.latent_channels(),
            vae.spatial_scale()
        )));
    }
    Ok(tiny)
}

/// The parts must agree on latent channels, spatial scale and text width.
fn check_parts(card: &ModelCard, cfg: &WanConfig, vae: &WanVae, text: &ToyTextEncoder) -> Result<()> {
    let z = vae.latent_channels();
    let takes = if card.context_channels { 2 * z } else { z };
    if cfg.in_dim != takes || cfg.out_dim != z {
        return Err(EngineError::Config(format!(
            "the DiT takes {} / gives {} latent channels but the VAE has {z}{}",
            cfg.in_dim,
            cfg.out_dim,
            if card.context_channels { " (and context channels double its input)" } else { "" }
        )));
    }
    if card.context_channels && card.kind != ModelKind::Teacher {
        return Err(EngineError::Config(
            "only a teacher takes context channels (`context_channels` on a student card)".into(),
        ));
    }
    let scale = vae.spatial_scale() as u32 * cfg.patch_size[1] as u32;
    if !card.width.is_multiple_of(scale) || !card.height.is_multiple_of(scale) {
        return Err(EngineError::Config(format!(
            "frames {}×{} are not a multiple of {scale} (VAE scale × patch)",
            card.width, card.height
        )));
    }
    if cfg.text_dim != text.config().dim || cfg.text_len != text.config().text_len {
        return Err(EngineError::Config(format!(
            "the DiT expects text [{}, {}] but the text encoder gives [{}, {}]",
            cfg.text_len,
            cfg.text_dim,
            text.config().text_len,
            text.config().dim
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEACHER_CARD: &str = r#"{"kind": "teacher", "width": 64, "height": 64, "fps": 16.0,
        "context_frames": 6, "shot_phase": true, "uses_context": true,
        "sampler": {"steps": 20, "shift": 8.0, "guidance": 3.0}, "description": "t"}"#;

    #[test]
    fn context_guidance_is_read_checked_and_written_only_when_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CARD_FILE), TEACHER_CARD).unwrap();
        let card = ModelCard::read(dir.path()).unwrap();
        assert_eq!(card.sampler.context_guidance, 0.0, "a card from before the setting reads 0");
        assert_eq!(card.sampler.sampler().unwrap().calls_per_step(), 2);
        card.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(CARD_FILE)).unwrap();
        assert!(!text.contains("context_guidance"), "{text}");

        let mut guided = card.clone();
        guided.sampler.context_guidance = 1.5;
        guided.write(dir.path()).unwrap();
        let back = ModelCard::read(dir.path()).unwrap();
        assert_eq!(back.sampler.context_guidance, 1.5);
        assert_eq!(back.sampler.sampler().unwrap().context_guidance(), 1.5);

        let bad = TEACHER_CARD.replace(r#""guidance": 3.0"#, r#""guidance": 3.0, "context_guidance": -1.0"#);
        std::fs::write(dir.path().join(CARD_FILE), bad).unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("context_guidance"), "{err}");
    }

    #[test]
    fn clean_context_defaults_to_off_and_is_written_only_when_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CARD_FILE), TEACHER_CARD).unwrap();
        let card = ModelCard::read(dir.path()).unwrap();
        assert!(!card.clean_context, "a card from before the setting is ShotStream's teacher");
        card.write(dir.path()).unwrap();
        assert!(!std::fs::read_to_string(dir.path().join(CARD_FILE)).unwrap().contains("clean_context"));
        ModelCard { clean_context: true, ..card }.write(dir.path()).unwrap();
        assert!(ModelCard::read(dir.path()).unwrap().clean_context);
        let bad = TEACHER_CARD.replace(r#""uses_context": true"#, r#""uses_context": true, "clean_context": "yes""#);
        std::fs::write(dir.path().join(CARD_FILE), bad).unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("storyreel_model.json") && err.contains("clean_context"), "{err}");
    }

    #[test]
    fn context_policy_defaults_to_dynamic_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CARD_FILE), TEACHER_CARD).unwrap();
        let card = ModelCard::read(dir.path()).unwrap();
        assert_eq!(card.default_context_policy(), "dynamic", "a card from before the setting");
        card.write(dir.path()).unwrap();
        assert!(!std::fs::read_to_string(dir.path().join(CARD_FILE)).unwrap().contains("context_policy"));
        let by_caption = ModelCard { context_policy: "caption".into(), ..card.clone() };
        by_caption.write(dir.path()).unwrap();
        assert_eq!(ModelCard::read(dir.path()).unwrap().default_context_policy(), "caption");
        let ablation = ModelCard { uses_context: false, ..by_caption };
        assert_eq!(ablation.default_context_policy(), "none");
        let bad =
            TEACHER_CARD.replace(r#""uses_context": true"#, r#""uses_context": true, "context_policy": "nearest""#);
        std::fs::write(dir.path().join(CARD_FILE), bad).unwrap();
        let err = ModelCard::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("context_policy") && err.contains("nearest"), "{err}");
    }
}

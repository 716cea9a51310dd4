//! A model card that names the tiny decoder: the model loads it from `tiny_vae/`, shows its
//! frames by default, and a missing or mismatched tiny decoder is a clear error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use storyreel_engine::context::DynamicSampling;
use storyreel_engine::story_model::{CardDecoder, ModelCard, TINY_DIR, TINY_WEIGHTS};
use storyreel_engine::{EulerSampler, ShotEvents, ShotRequest, StoryModel, StoryOptions, StoryStream};
use storyreel_nn::codec::VideoCodec;
use storyreel_nn::taehv::{TinyVae, TinyVaeConfig};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/toy-student")
}

/// A copy of the shipped student whose card names the tiny decoder (and no tiny_vae/ yet).
fn copy_with_tiny_card(to: &Path) {
    for part in ["dit", "vae", "text"] {
        std::fs::create_dir_all(to.join(part)).unwrap();
        for entry in std::fs::read_dir(shipped().join(part)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(part).join(entry.file_name())).unwrap();
        }
    }
    let mut card = ModelCard::read(&shipped()).unwrap();
    card.decoder = Some(CardDecoder::Tiny);
    card.write(to).unwrap();
}

fn shape(latent_channels: usize) -> TinyVaeConfig {
    TinyVaeConfig {
        latent_channels,
        decoder_widths: vec![16, 8, 8],
        time_upscale: vec![true, true],
        mem_blocks: 1,
        encoder_width: 8,
    }
}

fn write_tiny(dir: &Path, latent_channels: usize) -> TinyVae {
    let tiny = TinyVae::random_with(&shape(latent_channels), 5, DType::F32, &Device::Cpu).unwrap().without_encoder();
    std::fs::create_dir_all(dir.join(TINY_DIR)).unwrap();
    tiny.save(&dir.join(TINY_DIR).join(TINY_WEIGHTS)).unwrap();
    tiny
}

fn first_shot(model: &StoryModel, decoder: Option<Arc<dyn VideoCodec>>) -> Tensor {
    let options = StoryOptions {
        seed: 3,
        memory: Box::new(DynamicSampling { max_frames: 6 }),
        sampler: EulerSampler::new(2, 8.0, 1.0).unwrap(),
        decoder,
    };
    let mut stream = StoryStream::new(model, "A story.", options).unwrap();
    let request =
        ShotRequest { caption: "A pink rabbit walks right in a meadow in daylight, wide shot.".into(), frames: 5 };
    let events = ShotEvents {
        on_start: &mut |_, _| Ok(()),
        on_frames: &mut |_, _| Ok(()),
        on_progress: &mut |_, _, _| {},
        cancelled: &|| false,
    };
    stream.generate_shot(&request, events).unwrap().frames
}

#[test]
fn a_card_naming_the_tiny_decoder_decodes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    copy_with_tiny_card(dir.path());
    let e = StoryModel::load(dir.path(), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("tiny decoder") && e.contains(TINY_WEIGHTS), "{e}");

    // A tiny decoder for another latent space is named.
    write_tiny(dir.path(), 16);
    let e = StoryModel::load(dir.path(), &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("16 channels") && e.contains("has 8"), "{e}");

    let tiny = Arc::new(write_tiny(dir.path(), 8));
    let model = StoryModel::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(model.decoder.name(), "tiny");
    let by_default = first_shot(&model, None);
    let explicit = first_shot(&model, Some(tiny));
    assert_eq!(by_default.dims(), [5, 3, 64, 64]);
    let d = (&by_default - &explicit).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0);
    // The VAE, asked for explicitly, gives other frames from the same latents.
    let full = first_shot(&model, Some(model.vae.clone()));
    let d = (&by_default - &full).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d > 0.01, "{d}");
}

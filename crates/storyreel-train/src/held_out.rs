//! The held-out stories that the model checks (`check-captions`, `check-context`) measure on:
//! rendered from the world at the model's size and encoded with its own VAE, with the context
//! each shot gets at inference (dynamic sampling over the earlier shots).

use candle_core::Device;
use storyreel_engine::StoryModel;
use storyreel_nn::codec::VideoCodec;
use storyreel_world::generate_story;

use crate::data::story_options;
use crate::error::{Result, TrainError};
use crate::log::Progress;
use crate::stage_teacher::{encode_story, EncodedStory};

/// Checks a check's common options: at least two stories (each is also its neighbour's "other"),
/// timesteps in (0, 1000], and a seed range that fits in u64.
pub fn validate_check_options(first_seed: u64, stories: u64, timesteps: &[f32]) -> Result<()> {
    if stories < 2 {
        return Err(TrainError::out_of_range("stories", stories, "at least 2"));
    }
    if let Some(bad) = timesteps.iter().find(|t| !(**t > 0.0 && **t <= 1000.0)) {
        return Err(TrainError::out_of_range("timestep", bad, "in (0, 1000]"));
    }
    if timesteps.is_empty() {
        return Err(TrainError::out_of_range("timesteps", "none", "at least one"));
    }
    first_seed
        .checked_add(stories)
        .ok_or_else(|| TrainError::out_of_range("seed range", first_seed, "a range that fits in u64"))?;
    Ok(())
}

/// Renders and encodes stories `first_seed..first_seed + stories` for `model`, advancing `bar`
/// by one per story.
pub fn encode_held_out(model: &StoryModel, first_seed: u64, stories: u64, bar: &Progress) -> Result<Vec<EncodedStory>> {
    let device = Device::Cpu;
    let card = &model.card;
    let options = story_options(card.width, card.height);
    let scale = model.vae.spatial_scale();
    let hw = (card.height as usize / scale, card.width as usize / scale);
    // Context is picked the way the model runs (a no-context model gets it anyway: the checks
    // measure what it does with context it was never trained on).
    let memory = crate::stage_teacher::context_memory(&card.context_policy, card.context_frames)?;
    let mut out = Vec::with_capacity(stories as usize);
    for i in 0..stories {
        let story = generate_story(first_seed + i, &options)?;
        out.push(encode_story(&model.vae, &story, memory.as_ref(), card.context_frames, hw, &device)?);
        bar.update(i + 1, f64::NAN);
    }
    Ok(out)
}

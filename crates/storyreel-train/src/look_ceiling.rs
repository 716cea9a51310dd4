//! What a place's look is worth to the teacher's loss, and how much of it a reader of earlier
//! shots could recover. At the top of the noise schedule the best flow prediction is the
//! conditional mean of the clean latent, so the squared error left after predicting each shot's
//! first latent frame by the mean of its group (every shot, its place, its place and look) is the
//! loss a model with that knowledge cannot go below. Captions name the place, never the look, so
//! the gap between the place and the (place, look) rows is the most context can give there; the
//! "read look" row is a simple copier that picks the look whose mean is nearest to the story's
//! earlier frames of the same place. This bounds `check-context`'s context gain.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use storyreel_world::generate_story;

use crate::data::story_options;
use crate::error::{Result, TrainError};
use crate::stage_teacher::{corpus_key, TeacherCorpus, TeacherStageConfig};

/// A shot's place and place look, as the world drew them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShotLabel {
    /// The place, as an index.
    pub place: usize,
    /// The place's look within the story.
    pub look: u8,
}

/// Squared errors of predicting each shot's first latent frame by group means (leave one story
/// out: a story's shots never count in the means used on it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookCeiling {
    /// Shots measured.
    pub shots: usize,
    /// Error with the mean of every shot.
    pub mse_overall_mean: f64,
    /// Error with the mean of the shot's place (what the caption tells).
    pub mse_place_mean: f64,
    /// Error with the mean of the shot's place and look (caption plus the look).
    pub mse_look_mean: f64,
    /// Later shots whose place appeared in an earlier shot of their story.
    pub later_shots: usize,
    /// On those: the place mean.
    pub later_mse_place_mean: f64,
    /// On those: the place-and-look mean.
    pub later_mse_look_mean: f64,
    /// On those: the mean of the look read from the story's earlier frames of the place.
    pub later_mse_read_look: f64,
    /// How often the look read from earlier frames is the shot's look.
    pub read_look_accuracy: f64,
    /// The place and place-and-look errors of each place's shots, by place index.
    pub per_place: Vec<PlaceLooks>,
}

/// What the looks of one place are worth.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceLooks {
    /// The place, as an index.
    pub place: usize,
    /// Shots of the place measured.
    pub shots: usize,
    /// Error with the place mean.
    pub mse_place_mean: f64,
    /// Error with the place-and-look mean.
    pub mse_look_mean: f64,
}

impl LookCeiling {
    /// Share of the place-mean error that knowing the look removes on later shots whose place
    /// appeared before: the most a perfect reader of context could gain there.
    pub fn later_look_gain(&self) -> f64 {
        1.0 - self.later_mse_look_mean / self.later_mse_place_mean
    }

    /// The same share for the simple copier.
    pub fn later_read_gain(&self) -> f64 {
        1.0 - self.later_mse_read_look / self.later_mse_place_mean
    }
}

/// Running sums of a group's frames, so that a member can be left out of its own mean.
struct GroupSum {
    sum: Tensor,
    count: usize,
}

impl GroupSum {
    /// The group's mean without the frames of `part` (one story's members), if any remain.
    fn mean_without(&self, part: Option<&GroupSum>) -> Result<Option<Tensor>> {
        let (sum, count) = match part {
            Some(p) => ((&self.sum - &p.sum)?, self.count - p.count),
            None => (self.sum.clone(), self.count),
        };
        Ok((count > 0).then(|| sum / count as f64).transpose()?)
    }
}

fn sums<'a, K: Eq + std::hash::Hash + Clone + 'a>(
    items: impl IntoIterator<Item = (&'a Tensor, K)>,
) -> Result<HashMap<K, GroupSum>> {
    let mut groups: HashMap<K, GroupSum> = HashMap::new();
    for (x, key) in items {
        match groups.get_mut(&key) {
            Some(g) => {
                g.sum = (&g.sum + x)?;
                g.count += 1;
            }
            None => {
                groups.insert(key, GroupSum { sum: x.clone(), count: 1 });
            }
        }
    }
    Ok(groups)
}

fn mse(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a - b)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
}

/// The ceiling over stories given as each shot's first latent frame `[C, h, w]` and its label.
pub fn look_ceiling(first_frames: &[Vec<Tensor>], labels: &[Vec<ShotLabel>]) -> Result<LookCeiling> {
    if first_frames.len() != labels.len() || first_frames.iter().zip(labels).any(|(f, l)| f.len() != l.len()) {
        return Err(TrainError::out_of_range("look labels", labels.len(), "one per story and shot of the corpus"));
    }
    let items: Vec<(&Tensor, ShotLabel)> =
        first_frames.iter().zip(labels).flat_map(|(f, l)| f.iter().zip(l.iter().copied())).collect();
    if items.len() < 2 {
        return Err(TrainError::out_of_range("shots", items.len(), "at least 2"));
    }
    let all = sums(items.iter().map(|&(x, _)| (x, ())))?;
    let places = sums(items.iter().map(|&(x, l)| (x, l.place)))?;
    let looks = sums(items.iter().map(|&(x, l)| (x, l)))?;

    let (mut overall, mut place, mut look, mut n) = (0.0, 0.0, 0.0, 0usize);
    let mut by_place: HashMap<usize, PlaceLooks> = HashMap::new();
    let (mut later, mut later_place, mut later_look, mut later_read, mut read_right) = (0usize, 0.0, 0.0, 0.0, 0usize);
    for (frames, shot_labels) in first_frames.iter().zip(labels) {
        // Leave the whole story out of every mean used on it: its other shots of the same place
        // and look would otherwise leak the answer into the means (and into the reading).
        let own_all = sums(frames.iter().map(|x| (x, ())))?;
        let own_places = sums(frames.iter().zip(shot_labels).map(|(x, l)| (x, l.place)))?;
        let own_looks = sums(frames.iter().zip(shot_labels).map(|(x, l)| (x, *l)))?;
        for (shot, (x, label)) in frames.iter().zip(shot_labels).enumerate() {
            // A place or look no other story has gives no mean: skip the shot.
            let (Some(m_all), Some(m_place), Some(m_look)) = (
                all[&()].mean_without(own_all.get(&()))?,
                places[&label.place].mean_without(own_places.get(&label.place))?,
                looks[label].mean_without(own_looks.get(label))?,
            ) else {
                continue;
            };
            let (e_place, e_look) = (mse(x, &m_place)?, mse(x, &m_look)?);
            n += 1;
            overall += mse(x, &m_all)?;
            place += e_place;
            look += e_look;
            let row = by_place.entry(label.place).or_insert(PlaceLooks {
                place: label.place,
                shots: 0,
                mse_place_mean: 0.0,
                mse_look_mean: 0.0,
            });
            row.shots += 1;
            row.mse_place_mean += e_place;
            row.mse_look_mean += e_look;

            let earlier: Vec<&Tensor> = frames[..shot]
                .iter()
                .zip(&shot_labels[..shot])
                .filter(|(_, l)| l.place == label.place)
                .map(|(f, _)| f)
                .collect();
            if earlier.is_empty() {
                continue;
            }
            let seen = (Tensor::stack(&earlier, 0)?.sum(0)? / earlier.len() as f64)?;
            let mut best: Option<(f64, u8, Tensor)> = None;
            for (candidate, group) in looks.iter().filter(|(l, _)| l.place == label.place) {
                let Some(mean) = group.mean_without(own_looks.get(candidate))? else { continue };
                let d = mse(&seen, &mean)?;
                if best.as_ref().is_none_or(|b| d < b.0) {
                    best = Some((d, candidate.look, mean));
                }
            }
            let Some((_, read, read_mean)) = best else { continue };
            later += 1;
            later_place += e_place;
            later_look += e_look;
            later_read += mse(x, &read_mean)?;
            read_right += usize::from(read == label.look);
        }
    }
    if n == 0 {
        return Err(TrainError::out_of_range("shots with a group mean", 0, "at least 1"));
    }
    let per = |s: f64, k: usize| if k == 0 { f64::NAN } else { s / k as f64 };
    let mut per_place: Vec<PlaceLooks> = by_place
        .into_values()
        .map(|r| PlaceLooks {
            mse_place_mean: per(r.mse_place_mean, r.shots),
            mse_look_mean: per(r.mse_look_mean, r.shots),
            ..r
        })
        .collect();
    per_place.sort_by_key(|r| r.place);
    Ok(LookCeiling {
        shots: n,
        mse_overall_mean: per(overall, n),
        mse_place_mean: per(place, n),
        mse_look_mean: per(look, n),
        later_shots: later,
        later_mse_place_mean: per(later_place, later),
        later_mse_look_mean: per(later_look, later),
        later_mse_read_look: per(later_read, later),
        read_look_accuracy: per(read_right as f64, later),
        per_place,
    })
}

/// The ceiling on a teacher run's encoded training corpus (`train.out_dir/latents`, written by
/// the first run of the stage), with labels from regenerating the same stories.
pub fn corpus_look_ceiling(cfg: &TeacherStageConfig) -> Result<LookCeiling> {
    let dir = cfg.train.out_dir.join("latents");
    let key = corpus_key(&cfg.vae, &cfg.data, cfg.context_frames, &cfg.context_policy)?;
    let corpus = TeacherCorpus::load(&dir, &key)?.ok_or_else(|| {
        TrainError::File(format!(
            "{}: no encoded corpus for this config's VAE, data and context; run `storyreel train teacher` with it first",
            dir.display()
        ))
    })?;
    let options = story_options(cfg.data.width, cfg.data.height);
    let mut frames = Vec::with_capacity(corpus.stories.len());
    let mut labels = Vec::with_capacity(corpus.stories.len());
    for (i, encoded) in corpus.stories.iter().enumerate() {
        let story = generate_story(cfg.data.first_seed + i as u64, &options)?;
        if story.shots.len() != encoded.shots.len() {
            return Err(TrainError::File(format!(
                "{}: story {i} has {} shots in the corpus and {} regenerated",
                dir.display(),
                encoded.shots.len(),
                story.shots.len()
            )));
        }
        labels.push(
            story.shots.iter().map(|s| ShotLabel { place: s.world.place.index(), look: s.world.place_look }).collect(),
        );
        frames.push(encoded.shots.iter().map(|z| z.get(0)).collect::<candle_core::Result<Vec<_>>>()?);
    }
    look_ceiling(&frames, &labels)
}

//! Scoring one generated video against its story, and a batch of them.
//!
//! Metric names (the keys of [`Metrics`], also documented in README):
//! - `shot_cut_accuracy`: HoloCine's exp(−NSD) between the cuts the detector finds in the video
//!   and the story's cuts ([`crate::sca`] documents matching and penalty).
//! - `intra_shot_consistency`: VBench's subject-consistency formula over the probe embedding of
//!   each frame, within each of the story's shots, averaged over shots.
//! - `inter_shot_character_consistency`: for each pair of shots with the same cast, the cosine
//!   of the probe's mean character readings in the two shots, over (character, look) pairs: the
//!   ten characters times their looks (a scarf the captions never mention). OneStory's C-Cons
//!   compares DINOv2 features of segmented characters, which see such details; the probe's
//!   look-aware identity head plays DINOv2's part here, so a fox that loses its scarf between
//!   shots scores lower, as it would with DINOv2. Colour statistics of the foreground were
//!   tried first and rejected: noise makes every region's colours alike, so noisy videos scored
//!   as the most consistent.
//! - `inter_shot_place_consistency`: the same for pairs of shots set in the same place
//!   (OneStory's E-Cons), over (place, look) pairs: the product of the probe's place and
//!   place-look readings, so a city whose brick turns to glass between shots scores lower.
//! - `prompt_adherence`: per shot, the mean of three checks against the caption's facts: the
//!   probe's place is the captioned place, its framing is the captioned framing, and the Jaccard
//!   overlap of the characters it sees with the captioned characters.
//! - `dynamic_degree`: the fraction of shots whose motion passes VBench's dynamic test
//!   ([`crate::motion`], block matching in place of RAFT).
//! - `quality_fd` (batches, and single stories with a reference): Fréchet distance between the
//!   probe embeddings of the video's frames and of the story world's rendering of the same
//!   stories (lower is better).

use serde::{Deserialize, Serialize};
use storyreel_media::RgbFrame;
use storyreel_world::catalog::{Framing, Place, LOOKS};
use storyreel_world::detect::{detect_cuts, DetectorConfig};
use storyreel_world::Story;

use crate::consistency::{cosine, vbench_consistency};
use crate::error::{EvalError, Result};
use crate::frechet::{frechet_distance_eps, Gaussian};
use crate::look_agreement::story_look_agreement;
use crate::motion::{clip_motion, dynamic_degree, MotionConfig};
use crate::probe::{Probe, ProbeReading, N_CHARACTERS, N_CHARACTER_LOOKS};
use crate::sca::{shot_cut_accuracy, ScaReport};

/// The headline numbers of a report (higher is better except `quality_fd`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// exp(−NSD) of detected vs story cuts, in (0, 1].
    pub shot_cut_accuracy: f64,
    /// Frame-to-frame and frame-to-first similarity within shots, in [0, 1].
    pub intra_shot_consistency: f64,
    /// Character identity agreement across shots with the same cast, in [0, 1]; `None` when
    /// no two shots share a cast.
    pub inter_shot_character_consistency: Option<f64>,
    /// Place agreement across shots in the same place, in [0, 1]; `None` when no two shots
    /// share a place.
    pub inter_shot_place_consistency: Option<f64>,
    /// Character consistency beyond what the batch's other stories share: see
    /// [`fill_story_specific_consistency`]. Batches only.
    #[serde(default)]
    pub story_specific_character_consistency: Option<f64>,
    /// Place consistency beyond what the batch's other stories share. Batches only.
    #[serde(default)]
    pub story_specific_place_consistency: Option<f64>,
    /// Share of same-cast shot pairs whose characters the probe reads in the same look, in
    /// [0, 1] ([`crate::look_agreement`]); `None` when no two shots share a cast.
    #[serde(default)]
    pub character_look_agreement: Option<f64>,
    /// Share of same-place shot pairs whose place the probe reads in the same look.
    #[serde(default)]
    pub place_look_agreement: Option<f64>,
    /// Mean of the three adherence checks below, in [0, 1].
    pub prompt_adherence: f64,
    /// Fraction of shots whose place is the captioned one.
    pub adherence_place: f64,
    /// Fraction of shots whose framing is the captioned one.
    pub adherence_framing: f64,
    /// Mean Jaccard overlap of seen and captioned characters.
    pub adherence_characters: f64,
    /// Fraction of shots that move enough to count as dynamic.
    pub dynamic_degree: f64,
    /// Mean of the top 5% block-flow magnitudes, pixels per sampled frame pair.
    pub mean_motion: f64,
    /// Fréchet distance to the rendered reference in probe-embedding space, when computed.
    pub quality_fd: Option<f64>,
}

/// What one shot was asked for and what the probe saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShotReport {
    /// 0-based shot index.
    pub index: usize,
    /// The shot's caption.
    pub caption: String,
    /// `[start, end)` frames in the video.
    pub frames: (usize, usize),
    /// Captioned place.
    pub expected_place: Option<Place>,
    /// Captioned framing.
    pub expected_framing: Option<Framing>,
    /// Captioned characters (ids).
    pub expected_characters: Vec<usize>,
    /// Place the probe read most often.
    pub seen_place: Place,
    /// Framing the probe read most often.
    pub seen_framing: Framing,
    /// Characters the probe saw (mean probability above one half).
    pub seen_characters: Vec<usize>,
    /// Mean of this shot's three adherence checks.
    pub adherence: f64,
    /// VBench consistency within the shot.
    pub intra_consistency: f64,
    /// Mean of the top block-flow magnitudes.
    pub motion: f64,
    /// Whether the shot counts as dynamic.
    pub dynamic: bool,
    /// The probe's mean (character, look) readings over the shot, which character consistency
    /// compares (empty in reports written before they were kept).
    #[serde(default)]
    pub character_looks: Vec<f32>,
    /// The probe's mean (place, look) readings over the shot, which place consistency compares.
    #[serde(default)]
    pub place_looks: Vec<f32>,
}

/// The full evaluation of one video.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoryReport {
    /// The story's id.
    pub story: String,
    /// Frames in the video.
    pub frames: usize,
    /// Frames per second used for motion sampling.
    pub fps: f64,
    /// Headline numbers.
    pub metrics: Metrics,
    /// The story's cut frames.
    pub cuts_expected: Vec<usize>,
    /// The cut frames the detector found.
    pub cuts_detected: Vec<usize>,
    /// How the cuts matched.
    pub cut_matching: ScaReport,
    /// Per-shot details.
    pub shots: Vec<ShotReport>,
    /// Per-pair consistency details: `(shot a, shot b, what, similarity)`.
    pub pairs: Vec<PairScore>,
}

/// One inter-shot comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairScore {
    /// Earlier shot.
    pub a: usize,
    /// Later shot.
    pub b: usize,
    /// `"character"` or `"place"`.
    pub kind: String,
    /// Similarity in [0, 1].
    pub similarity: f64,
    /// `similarity` less the mean similarity of its two shots to the shots of the batch's
    /// other stories with the same cast (or place); `None` outside a batch.
    #[serde(default)]
    pub specific: Option<f64>,
}

/// Settings of an evaluation.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Cut detector settings.
    pub detector: DetectorConfig,
    /// Motion estimation settings.
    pub motion: MotionConfig,
}

/// The facts a shot's caption asks for. World stories carry them exactly; the caption states
/// the same facts (the world's tests check that), so nothing is lost by not parsing it here.
fn expectations(story: &Story, i: usize) -> (Option<Place>, Option<Framing>, Vec<usize>) {
    let w = &story.shots[i].world;
    (Some(w.place), Some(w.framing), w.characters.clone())
}

/// A shot's mean probe readings.
struct ShotReading {
    /// Place probabilities.
    place: [f32; 6],
    /// Framing probabilities.
    framing: [f32; 3],
    /// Character presence.
    characters: [f32; N_CHARACTERS],
    /// (character, look) presence.
    character_looks: [f32; N_CHARACTER_LOOKS],
    /// (place, look) probabilities: per frame the product of the place and place-look readings.
    place_looks: [f32; PLACE_LOOKS],
}

/// Number of (place, look) pairs.
const PLACE_LOOKS: usize = 6 * LOOKS;

/// Mean readings over a shot's frames.
fn mean_reading(readings: &[ProbeReading]) -> ShotReading {
    let n = readings.len().max(1) as f32;
    let mut m = ShotReading {
        place: [0.0; 6],
        framing: [0.0; 3],
        characters: [0.0; N_CHARACTERS],
        character_looks: [0.0; N_CHARACTER_LOOKS],
        place_looks: [0.0; PLACE_LOOKS],
    };
    let accumulate = |acc: &mut [f32], v: &[f32]| acc.iter_mut().zip(v).for_each(|(a, x)| *a += x / n);
    for r in readings {
        accumulate(&mut m.place, &r.place);
        accumulate(&mut m.framing, &r.framing);
        accumulate(&mut m.characters, &r.characters);
        accumulate(&mut m.character_looks, &r.character_looks);
        for (p, &pp) in r.place.iter().enumerate() {
            for (l, &pl) in r.place_look.iter().enumerate() {
                m.place_looks[p * LOOKS + l] += pp * pl / n;
            }
        }
    }
    m
}

fn jaccard(a: &[usize], b: &[usize]) -> f64 {
    let inter = a.iter().filter(|x| b.contains(x)).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Evaluates `frames` (the whole generated video) against `story`.
pub fn evaluate_story(
    probe: &Probe,
    story: &Story,
    frames: &[RgbFrame],
    fps: f64,
    options: &EvalOptions,
) -> Result<(StoryReport, Vec<Vec<f32>>)> {
    let expected_frames = story.total_frames();
    if frames.len() != expected_frames {
        return Err(EvalError::Mismatch(format!(
            "the video has {} frames but story {} has {} ({} shots); evaluate the video made from this story",
            frames.len(),
            story.id,
            expected_frames,
            story.shots.len()
        )));
    }
    if let Some((i, f)) = frames.iter().enumerate().find(|(_, f)| f.size() != frames[0].size()) {
        return Err(EvalError::Mismatch(format!(
            "frame {i} is {}x{} but frame 0 is {}x{}",
            f.width, f.height, frames[0].width, frames[0].height
        )));
    }
    let readings = probe.read_frames(frames)?;
    let cuts_expected = story.cut_frames();
    let cuts_detected = detect_cuts(frames, &options.detector)?;
    let cut_matching = shot_cut_accuracy(&cuts_detected, &cuts_expected, frames.len())?;

    let mut shots = Vec::with_capacity(story.shots.len());
    let mut readings_per_shot = Vec::with_capacity(story.shots.len());
    let mut clips = Vec::with_capacity(story.shots.len());
    for (i, (start, end)) in story.shot_ranges().into_iter().enumerate() {
        let r = &readings[start..end];
        let reading = mean_reading(r);
        let (place_p, framing_p, chars_p) = (reading.place, reading.framing, reading.characters);
        let (expected_place, expected_framing, expected_characters) = expectations(story, i);
        let seen_place = Place::ALL[crate::probe::argmax(&place_p)];
        let seen_framing = Framing::ALL[crate::probe::argmax(&framing_p)];
        let seen_characters: Vec<usize> = (0..N_CHARACTERS).filter(|&c| chars_p[c] > 0.5).collect();
        let place_ok = expected_place.map_or(1.0, |p| (p == seen_place) as u8 as f64);
        let framing_ok = expected_framing.map_or(1.0, |f| (f == seen_framing) as u8 as f64);
        let chars_ok = jaccard(&expected_characters, &seen_characters);
        let embeddings: Vec<Vec<f32>> = r.iter().map(|x| x.embedding.clone()).collect();
        let clip = clip_motion(&frames[start..end], fps, &options.motion)?;
        let (character_looks, place_looks) = (reading.character_looks.to_vec(), reading.place_looks.to_vec());
        readings_per_shot.push(reading);
        shots.push(ShotReport {
            character_looks,
            place_looks,
            index: i,
            caption: story.shots[i].caption.clone(),
            frames: (start, end),
            expected_place,
            expected_framing,
            expected_characters,
            seen_place,
            seen_framing,
            seen_characters,
            adherence: (place_ok + framing_ok + chars_ok) / 3.0,
            intra_consistency: vbench_consistency(&embeddings).unwrap_or(1.0),
            motion: clip.mean_top_flow,
            dynamic: clip.dynamic,
        });
        clips.push(clip);
    }

    let mut pairs = Vec::new();
    for a in 0..story.shots.len() {
        for b in a + 1..story.shots.len() {
            let (sa, sb) = (&story.shots[a].world, &story.shots[b].world);
            let (mut ca, mut cb) = (sa.characters.clone(), sb.characters.clone());
            ca.sort();
            cb.sort();
            if ca == cb {
                let similarity =
                    cosine(&readings_per_shot[a].character_looks, &readings_per_shot[b].character_looks).max(0.0);
                pairs.push(PairScore { a, b, kind: "character".into(), similarity, specific: None });
            }
            if sa.place == sb.place {
                let similarity = cosine(&readings_per_shot[a].place_looks, &readings_per_shot[b].place_looks).max(0.0);
                pairs.push(PairScore { a, b, kind: "place".into(), similarity, specific: None });
            }
        }
    }
    let mean_of = |kind: &str| {
        let v: Vec<f64> = pairs.iter().filter(|p| p.kind == kind).map(|p| p.similarity).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };

    let n = shots.len() as f64;
    let place_hits = shots.iter().filter(|s| s.expected_place.is_none_or(|p| p == s.seen_place)).count() as f64;
    let framing_hits = shots.iter().filter(|s| s.expected_framing.is_none_or(|f| f == s.seen_framing)).count() as f64;
    let metrics = Metrics {
        shot_cut_accuracy: cut_matching.score,
        intra_shot_consistency: shots.iter().map(|s| s.intra_consistency).sum::<f64>() / n,
        inter_shot_character_consistency: mean_of("character"),
        inter_shot_place_consistency: mean_of("place"),
        story_specific_character_consistency: None,
        story_specific_place_consistency: None,
        character_look_agreement: None,
        place_look_agreement: None,
        prompt_adherence: shots.iter().map(|s| s.adherence).sum::<f64>() / n,
        adherence_place: place_hits / n,
        adherence_framing: framing_hits / n,
        adherence_characters: shots.iter().map(|s| jaccard(&s.expected_characters, &s.seen_characters)).sum::<f64>()
            / n,
        dynamic_degree: dynamic_degree(&clips),
        mean_motion: clips.iter().map(|c| c.mean_top_flow).sum::<f64>() / n,
        quality_fd: None,
    };
    let embeddings = readings.into_iter().map(|r| r.embedding).collect();
    let mut report = StoryReport {
        story: story.id.clone(),
        frames: frames.len(),
        fps,
        metrics,
        cuts_expected,
        cuts_detected,
        cut_matching,
        shots,
        pairs,
    };
    report.metrics.character_look_agreement = story_look_agreement(&report, "character", 0);
    report.metrics.place_look_agreement = story_look_agreement(&report, "place", 0);
    Ok((report, embeddings))
}

/// Fréchet distance between two sets of probe embeddings (a small ridge keeps it defined when
/// there are fewer frames than dimensions).
pub fn embedding_distance(generated: &[Vec<f32>], reference: &[Vec<f32>]) -> Result<f64> {
    let a = Gaussian::fit(generated)?;
    let b = Gaussian::fit(reference)?;
    frechet_distance_eps(&a, &b, 1e-6)
}

/// Reports of many videos and their means.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchReport {
    /// Stories evaluated.
    pub stories: usize,
    /// Shots evaluated.
    pub shots: usize,
    /// Mean of each metric over stories (`quality_fd` over all frames at once).
    pub metrics: Metrics,
    /// The per-shot numbers grouped by shot index: does quality drift later in a story?
    #[serde(default)]
    pub by_shot_index: Vec<ShotIndexRow>,
    /// Per-story reports.
    pub reports: Vec<StoryReport>,
}

/// Means over every story's shot number `index` (0-based).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShotIndexRow {
    /// 0-based shot index.
    pub index: usize,
    /// Shots at this index (stories at least this long).
    pub shots: usize,
    /// Mean adherence of those shots.
    pub adherence: f64,
    /// Mean consistency within those shots.
    pub intra_consistency: f64,
    /// Mean character similarity of those shots to the earlier shots with the same character.
    pub character_consistency: Option<f64>,
    /// Mean place similarity of those shots to the earlier shots in the same place.
    pub place_consistency: Option<f64>,
}

/// Groups the stories' shots by index (see [`ShotIndexRow`]).
pub fn shot_index_curves(reports: &[StoryReport]) -> Vec<ShotIndexRow> {
    let longest = reports.iter().map(|r| r.shots.len()).max().unwrap_or(0);
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    (0..longest)
        .map(|index| {
            let shots: Vec<&ShotReport> = reports.iter().filter_map(|r| r.shots.get(index)).collect();
            let pairs = |kind: &str| -> Vec<f64> {
                reports
                    .iter()
                    .flat_map(|r| r.pairs.iter())
                    .filter(|p| p.b == index && p.kind == kind)
                    .map(|p| p.similarity)
                    .collect()
            };
            let adherence: Vec<f64> = shots.iter().map(|s| s.adherence).collect();
            let intra: Vec<f64> = shots.iter().map(|s| s.intra_consistency).collect();
            ShotIndexRow {
                index,
                shots: shots.len(),
                adherence: mean(&adherence).unwrap_or(0.0),
                intra_consistency: mean(&intra).unwrap_or(0.0),
                character_consistency: mean(&pairs("character")),
                place_consistency: mean(&pairs("place")),
            }
        })
        .collect()
}

/// The key a shot is compared across stories by: its sorted cast, or its place.
fn entity_key(shot: &ShotReport, kind: &str) -> Option<Vec<usize>> {
    match kind {
        "character" => {
            let mut cast = shot.expected_characters.clone();
            cast.sort_unstable();
            Some(cast)
        }
        _ => shot.expected_place.map(|p| vec![p as usize]),
    }
}

/// Fills every pair's `specific` and every story's story-specific consistencies. The plain
/// consistencies reward drawing each character and place in one fixed look in every story;
/// but a story's looks are drawn per story and never captioned, so its shots should be more
/// alike than the same cast's (or place's) shots in other stories. Each pair's similarity is
/// measured against the mean similarity of its two shots to those other stories' shots: a
/// model that draws one look everywhere scores about 0, one that keeps each story's own look
/// scores above 0. Shots of reports without readings take no part.
pub fn fill_story_specific_consistency(reports: &mut [StoryReport]) {
    fn looks<'a>(shot: &'a ShotReport, kind: &str) -> &'a [f32] {
        if kind == "character" {
            &shot.character_looks
        } else {
            &shot.place_looks
        }
    }
    for kind in ["character", "place"] {
        // Mean similarity of every shot to the same entity's shots in the other stories.
        let mut baseline: Vec<Vec<Option<f64>>> = Vec::with_capacity(reports.len());
        for (i, r) in reports.iter().enumerate() {
            let row = r
                .shots
                .iter()
                .map(|s| {
                    let (key, mine) = (entity_key(s, kind)?, looks(s, kind));
                    if mine.is_empty() {
                        return None;
                    }
                    let sims: Vec<f64> = reports
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .flat_map(|(_, other)| other.shots.iter())
                        .filter(|o| entity_key(o, kind).as_ref() == Some(&key))
                        .map(|o| looks(o, kind))
                        .filter(|theirs| theirs.len() == mine.len())
                        .map(|theirs| cosine(mine, theirs).max(0.0))
                        .collect();
                    (!sims.is_empty()).then(|| sims.iter().sum::<f64>() / sims.len() as f64)
                })
                .collect();
            baseline.push(row);
        }
        for (r, base) in reports.iter_mut().zip(&baseline) {
            let mut specific = Vec::new();
            for p in r.pairs.iter_mut().filter(|p| p.kind == kind) {
                p.specific = match (base.get(p.a).copied().flatten(), base.get(p.b).copied().flatten()) {
                    (Some(x), Some(y)) => Some(p.similarity - (x + y) / 2.0),
                    _ => None,
                };
                specific.extend(p.specific);
            }
            let mean = (!specific.is_empty()).then(|| specific.iter().sum::<f64>() / specific.len() as f64);
            if kind == "character" {
                r.metrics.story_specific_character_consistency = mean;
            } else {
                r.metrics.story_specific_place_consistency = mean;
            }
        }
    }
}

/// Means over stories; optional metrics average over the stories that have them. Fills the
/// story-specific consistencies first ([`fill_story_specific_consistency`]).
pub fn summarise(mut reports: Vec<StoryReport>, quality_fd: Option<f64>) -> BatchReport {
    fill_story_specific_consistency(&mut reports);
    for r in reports.iter_mut() {
        r.metrics.character_look_agreement = story_look_agreement(r, "character", 0);
        r.metrics.place_look_agreement = story_look_agreement(r, "place", 0);
    }
    let n = reports.len().max(1) as f64;
    let mean = |f: &dyn Fn(&Metrics) -> f64| reports.iter().map(|r| f(&r.metrics)).sum::<f64>() / n;
    let mean_opt = |f: &dyn Fn(&Metrics) -> Option<f64>| {
        let v: Vec<f64> = reports.iter().filter_map(|r| f(&r.metrics)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let metrics = Metrics {
        shot_cut_accuracy: mean(&|m| m.shot_cut_accuracy),
        intra_shot_consistency: mean(&|m| m.intra_shot_consistency),
        inter_shot_character_consistency: mean_opt(&|m| m.inter_shot_character_consistency),
        inter_shot_place_consistency: mean_opt(&|m| m.inter_shot_place_consistency),
        story_specific_character_consistency: mean_opt(&|m| m.story_specific_character_consistency),
        story_specific_place_consistency: mean_opt(&|m| m.story_specific_place_consistency),
        character_look_agreement: mean_opt(&|m| m.character_look_agreement),
        place_look_agreement: mean_opt(&|m| m.place_look_agreement),
        prompt_adherence: mean(&|m| m.prompt_adherence),
        adherence_place: mean(&|m| m.adherence_place),
        adherence_framing: mean(&|m| m.adherence_framing),
        adherence_characters: mean(&|m| m.adherence_characters),
        dynamic_degree: mean(&|m| m.dynamic_degree),
        mean_motion: mean(&|m| m.mean_motion),
        quality_fd,
    };
    let by_shot_index = shot_index_curves(&reports);
    BatchReport {
        stories: reports.len(),
        shots: reports.iter().map(|r| r.shots.len()).sum(),
        metrics,
        by_shot_index,
        reports,
    }
}

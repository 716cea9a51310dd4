//! Context memory: which frames of earlier shots the next shot is conditioned on.

use crate::schedule::linspace_f32;

/// One chosen context frame: pixel frame `frame` of finished shot `shot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextPick {
    /// Index of the earlier shot.
    pub shot: usize,
    /// Pixel-frame index within that shot.
    pub frame: usize,
}

/// What a policy may look at when it picks context for the next shot.
#[derive(Debug, Clone, Copy)]
pub struct ContextQuery<'a> {
    /// Length in pixel frames of each finished shot.
    pub shot_frames: &'a [usize],
    /// Captions of the finished shots followed by the next shot's; empty when unknown.
    pub captions: &'a [String],
    /// The story's global caption, which names its characters and places; empty when unknown.
    pub global_caption: &'a str,
}

impl<'a> ContextQuery<'a> {
    /// A query that knows only the finished shots' lengths.
    pub fn lengths(shot_frames: &'a [usize]) -> Self {
        Self { shot_frames, captions: &[], global_caption: "" }
    }

    /// A query with the captions of the finished shots and then of the next shot.
    pub fn with_captions(shot_frames: &'a [usize], captions: &'a [String]) -> Self {
        Self { shot_frames, captions, global_caption: "" }
    }

    /// The same query, knowing the story's global caption as well.
    pub fn with_global(self, global_caption: &'a str) -> Self {
        Self { global_caption, ..self }
    }

    /// The captions split into (finished shots', next shot's), if they line up with the shots.
    fn caption_split(&self) -> Option<(&'a [String], &'a str)> {
        if self.captions.len() != self.shot_frames.len() + 1 {
            return None;
        }
        let (next, earlier) = self.captions.split_last()?;
        Some((earlier, next.as_str()))
    }
}

/// A policy choosing context frames for the next shot.
pub trait ContextMemory: Send {
    /// Short name for logs and CLI flags.
    fn name(&self) -> &'static str;
    /// Picks context frames; an empty pick means "no context" (zero latents, flags 0).
    fn select(&self, query: &ContextQuery) -> Vec<ContextPick>;
    /// Bumped whenever the same query gets other picks, so caches keyed by it (a teacher's
    /// encoded corpus) are rebuilt rather than trusted.
    fn revision(&self) -> u32 {
        1
    }
}

/// Frames per previous shot under ShotStream's dynamic sampling (§2.2): ⌊M/P⌋ each, and the
/// last M mod P shots one more, so newer shots are favoured; for P > M the oldest get 0.
pub fn dynamic_counts(max_frames: usize, previous_shots: usize) -> Vec<usize> {
    if previous_shots == 0 {
        return Vec::new();
    }
    let base = max_frames / previous_shots;
    let rem = max_frames % previous_shots;
    let mut counts = vec![base; previous_shots];
    for c in counts.iter_mut().rev().take(rem) {
        *c += 1;
    }
    counts
}

/// Rounds half to even, like torch.round.
fn round_half_even(x: f32) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 { r - x.signum() } else { r };
    r.max(0.0) as usize
}

/// ShotStream's dynamic sampling: `max_frames` frames spread over the earlier shots, evenly
/// spaced within each shot (round(linspace(first, last, count))).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamicSampling {
    /// Context frames in total (6 in ShotStream).
    pub max_frames: usize,
}

impl Default for DynamicSampling {
    fn default() -> Self {
        Self { max_frames: 6 }
    }
}

impl ContextMemory for DynamicSampling {
    fn name(&self) -> &'static str {
        "dynamic"
    }

    fn select(&self, query: &ContextQuery) -> Vec<ContextPick> {
        let counts = dynamic_counts(self.max_frames, query.shot_frames.len());
        spread_picks(query.shot_frames, &counts)
    }
}

/// `counts[s]` frames of each shot `s`, evenly spaced within it, in shot order.
fn spread_picks(shot_frames: &[usize], counts: &[usize]) -> Vec<ContextPick> {
    let mut picks = Vec::new();
    for (shot, (&len, &count)) in shot_frames.iter().zip(counts).enumerate() {
        if len == 0 {
            continue;
        }
        for v in linspace_f32(0.0, (len - 1) as f32, count) {
            picks.push(ContextPick { shot, frame: round_half_even(v).min(len - 1) });
        }
    }
    picks
}

/// No context at all: every shot is generated as if it were the first (ablation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoContext;

impl ContextMemory for NoContext {
    fn name(&self) -> &'static str {
        "none"
    }

    fn select(&self, _query: &ContextQuery) -> Vec<ContextPick> {
        Vec::new()
    }
}

/// Only the first frame of each earlier shot, newest shots first up to `max_frames` (the
/// first-frame-only ablation: one establishing frame per shot, nothing of how it went on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstFrames {
    /// Context frames at most.
    pub max_frames: usize,
}

impl ContextMemory for FirstFrames {
    fn name(&self) -> &'static str {
        "first-frame"
    }

    fn select(&self, query: &ContextQuery) -> Vec<ContextPick> {
        let mut picks: Vec<ContextPick> = query
            .shot_frames
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, &len)| len > 0)
            .take(self.max_frames)
            .map(|(shot, _)| ContextPick { shot, frame: 0 })
            .collect();
        picks.reverse();
        picks
    }
}

/// Frame selection by caption (OneStory's idea without learned weights): the earlier shots
/// whose captions name what the next caption names get the context frames, so a shot that
/// returns to a place or a character sees that place or character rather than whatever came
/// just before.
///
/// What counts is the story's entities: the phrases of its global caption ("the spotted blue
/// owl", "the desert"), each matched only when all its words are in a caption, so "the pink
/// rabbit" is not "the spotted white rabbit". Entities, and then single words at a twentieth
/// of the weight (to break ties, and to carry stories without a global caption), count by
/// their inverse frequency over the story's captions, so the main character every shot shows
/// says nothing and lighting, framing and motion words barely count. Shots scoring under half
/// the best are left out and the frames are shared in proportion to score. With captions
/// unknown or nothing shared it falls back to [`DynamicSampling`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptionMatch {
    /// Context frames in total.
    pub max_frames: usize,
}

/// Function words and the story boilerplate ("the same … from before") that say nothing about
/// what a shot shows.
const STOP_WORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "before", "by", "for", "from", "in", "into", "is", "it", "its",
    "now", "of", "on", "same", "shot", "the", "then", "to", "with",
];

/// The words of a text, lower-cased, with `None` where a stop word or punctuation breaks a
/// phrase.
fn word_stream(text: &str) -> impl Iterator<Item = Option<String>> + '_ {
    text.split(|c: char| !c.is_alphanumeric() && c != '-' && c != ' ').flat_map(|piece| {
        piece
            .split(' ')
            .map(|w| w.trim_matches('-').to_lowercase())
            .filter(|w| !w.is_empty())
            .map(|w| if STOP_WORDS.contains(&w.as_str()) { None } else { Some(w) })
            .chain(std::iter::once(None))
    })
}

/// The distinct content words of a caption, lower-cased and sorted.
fn content_words(caption: &str) -> Vec<String> {
    let mut words: Vec<String> = word_stream(caption).flatten().collect();
    words.sort();
    words.dedup();
    words
}

/// The entities a global caption names: its runs of content words between stop words and
/// punctuation ("the spotted blue owl, on the snowfield" → {spotted, blue, owl}, {snowfield}),
/// bare numbers left out, each as sorted distinct words.
fn entities(global_caption: &str) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut run: Vec<String> = Vec::new();
    for word in word_stream(global_caption) {
        match word {
            Some(w) if !w.chars().all(|c| c.is_ascii_digit()) => run.push(w),
            Some(_) => {}
            None if run.is_empty() => {}
            None => {
                run.sort();
                run.dedup();
                let entity = std::mem::take(&mut run);
                if !found.contains(&entity) {
                    found.push(entity);
                }
            }
        }
    }
    found
}

/// Weight of a single shared word against a shared entity.
const WORD_WEIGHT: f64 = 0.05;

impl CaptionMatch {
    /// How well each earlier caption matches the next one (0 for nothing shared), given the
    /// story's global caption (empty: single words alone).
    pub fn scores(earlier: &[String], next: &str, global_caption: &str) -> Vec<f64> {
        let next_words = content_words(next);
        let earlier_words: Vec<Vec<String>> = earlier.iter().map(|c| content_words(c)).collect();
        let n = (earlier.len() + 1) as f64;
        let has = |words: &[String], w: &String| words.binary_search(w).is_ok();
        // Inverse frequency over the story so far of a word set present in the next caption.
        let idf = |set: &[String]| {
            let df = 1 + earlier_words.iter().filter(|ws| set.iter().all(|w| has(ws, w))).count();
            (n / df as f64).ln()
        };
        let named: Vec<(Vec<String>, f64)> = entities(global_caption)
            .into_iter()
            .filter(|e| e.iter().all(|w| has(&next_words, w)))
            .map(|e| {
                let weight = idf(&e);
                (e, weight)
            })
            .collect();
        earlier_words
            .iter()
            .map(|ws| {
                let by_entity: f64 = named.iter().filter(|(e, _)| e.iter().all(|w| has(ws, w))).map(|(_, v)| v).sum();
                let by_word: f64 = next_words.iter().filter(|w| has(ws, w)).map(|w| idf(std::slice::from_ref(w))).sum();
                by_entity + WORD_WEIGHT * by_word
            })
            .collect()
    }

    /// Frames per earlier shot: shots under half the best score get none, the rest share
    /// `max_frames` in proportion to score (largest remainder; ties go to the newer shot).
    fn counts(&self, scores: &[f64], shot_frames: &[usize]) -> Option<Vec<usize>> {
        let usable = |s: usize| shot_frames[s] > 0 && scores[s] > 1e-9;
        let best = (0..scores.len()).filter(|&s| usable(s)).map(|s| scores[s]).fold(0.0, f64::max);
        if best <= 0.0 {
            return None;
        }
        let kept: Vec<usize> = (0..scores.len()).filter(|&s| usable(s) && scores[s] >= 0.5 * best).collect();
        let total: f64 = kept.iter().map(|&s| scores[s]).sum();
        let mut counts = vec![0usize; scores.len()];
        let mut remainders = Vec::with_capacity(kept.len());
        for &s in &kept {
            let share = self.max_frames as f64 * scores[s] / total;
            counts[s] = share.floor() as usize;
            remainders.push((share - share.floor(), s));
        }
        let left = self.max_frames - counts.iter().sum::<usize>();
        remainders.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        for &(_, s) in remainders.iter().take(left) {
            counts[s] += 1;
        }
        Some(counts)
    }
}

impl ContextMemory for CaptionMatch {
    fn name(&self) -> &'static str {
        "caption"
    }

    fn select(&self, query: &ContextQuery) -> Vec<ContextPick> {
        let matched = query.caption_split().and_then(|(earlier, next)| {
            let scores = Self::scores(earlier, next, query.global_caption);
            self.counts(&scores, query.shot_frames)
        });
        match matched {
            Some(counts) => spread_picks(query.shot_frames, &counts),
            None => DynamicSampling { max_frames: self.max_frames }.select(query),
        }
    }

    fn revision(&self) -> u32 {
        // 2: entities of the global caption, word weight a twentieth.
        2
    }
}

/// The names [`policy_by_name`] knows, for help and error messages.
pub const POLICY_NAMES: &[&str] = &["dynamic", "caption", "first-frame", "none"];

/// Builds a policy from its CLI name.
pub fn policy_by_name(name: &str, max_frames: usize) -> Option<Box<dyn ContextMemory>> {
    match name {
        "dynamic" => Some(Box::new(DynamicSampling { max_frames })),
        "caption" => Some(Box::new(CaptionMatch { max_frames })),
        "none" => Some(Box::new(NoContext)),
        "first-frame" => Some(Box::new(FirstFrames { max_frames })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frames_takes_one_frame_per_shot_newest_first() {
        let p = FirstFrames { max_frames: 2 };
        assert!(p.select(&ContextQuery::lengths(&[])).is_empty());
        assert_eq!(p.select(&ContextQuery::lengths(&[17])), vec![ContextPick { shot: 0, frame: 0 }]);
        assert_eq!(
            p.select(&ContextQuery::lengths(&[17, 0, 9, 25])),
            vec![ContextPick { shot: 2, frame: 0 }, ContextPick { shot: 3, frame: 0 }]
        );
        assert_eq!(policy_by_name("first-frame", 6).unwrap().name(), "first-frame");
    }

    #[test]
    fn counts_match_the_spec_table() {
        let table: [&[usize]; 7] =
            [&[6], &[3, 3], &[2, 2, 2], &[1, 1, 2, 2], &[1, 1, 1, 1, 2], &[1, 1, 1, 1, 1, 1], &[0, 1, 1, 1, 1, 1, 1]];
        for (p, want) in table.iter().enumerate() {
            assert_eq!(dynamic_counts(6, p + 1), want.to_vec(), "P = {}", p + 1);
            assert_eq!(dynamic_counts(6, p + 1).iter().sum::<usize>(), 6);
        }
        assert!(dynamic_counts(6, 0).is_empty());
        assert_eq!(dynamic_counts(6, 9)[..3], [0, 0, 0]);
    }

    #[test]
    fn frames_are_spread_like_the_reference() {
        let frames = |shots: &[usize]| -> Vec<(usize, usize)> {
            DynamicSampling::default().select(&ContextQuery::lengths(shots)).iter().map(|p| (p.shot, p.frame)).collect()
        };
        assert_eq!(frames(&[81]), vec![(0, 0), (0, 16), (0, 32), (0, 48), (0, 64), (0, 80)]);
        assert_eq!(frames(&[81, 81]), vec![(0, 0), (0, 40), (0, 80), (1, 0), (1, 40), (1, 80)]);
        assert_eq!(frames(&[81, 81, 81]), vec![(0, 0), (0, 80), (1, 0), (1, 80), (2, 0), (2, 80)]);
        assert_eq!(frames(&[81; 4])[..3], [(0, 0), (1, 0), (2, 0)]);
        // count 4 over 81 frames: linspace 0, 26.67, 53.33, 80.
        let four: Vec<usize> = linspace_f32(0.0, 80.0, 4).into_iter().map(round_half_even).collect();
        assert_eq!(four, vec![0, 27, 53, 80]);
        assert_eq!(frames(&[81; 7]).len(), 6);
        assert!(frames(&[81; 7]).iter().all(|&(s, _)| s >= 1));
        assert!(NoContext.select(&ContextQuery::lengths(&[81, 81])).is_empty());
    }

    fn caps(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    const RABBIT_AND_FOX: [&str; 4] = [
        "A pink rabbit walks right in a meadow in daylight, wide shot.",
        "A red fox jumps in a city in daylight, medium shot.",
        "The same pink rabbit, now at dusk, turns around in the same meadow, close-up.",
        "The same red fox walks left in the same city at night, wide shot.",
    ];

    #[test]
    fn caption_match_sends_every_frame_to_the_shot_a_caption_returns_to() {
        let policy = CaptionMatch { max_frames: 6 };
        let captions = caps(&RABBIT_AND_FOX[..3]);
        let picks = policy.select(&ContextQuery::with_captions(&[25, 25], &captions));
        assert_eq!(picks.len(), 6);
        assert!(picks.iter().all(|p| p.shot == 0), "{picks:?}");
        assert_eq!(picks.first().map(|p| p.frame), Some(0));
        assert_eq!(picks.last().map(|p| p.frame), Some(24));
        // Dynamic sampling would have split them over both shots.
        let dynamic = DynamicSampling::default().select(&ContextQuery::with_captions(&[25, 25], &captions));
        assert_eq!(dynamic.iter().filter(|p| p.shot == 0).count(), 3);
    }

    #[test]
    fn caption_match_weights_the_fox_and_its_city_over_a_shared_motion() {
        let captions = caps(&RABBIT_AND_FOX);
        let scores = CaptionMatch::scores(&captions[..3], &captions[3], "");
        assert!(scores[1] > scores[0] && scores[0] > 0.0, "{scores:?}");
        assert_eq!(scores[2], 0.0, "\"the same\" is boilerplate: {scores:?}");
        let picks = CaptionMatch { max_frames: 6 }.select(&ContextQuery::with_captions(&[25, 25, 25], &captions));
        let per_shot: Vec<usize> = (0..3).map(|s| picks.iter().filter(|p| p.shot == s).count()).collect();
        assert_eq!(per_shot, vec![2, 4, 0]);
        assert!(picks.windows(2).all(|w| (w[0].shot, w[0].frame) < (w[1].shot, w[1].frame)), "{picks:?}");
    }

    #[test]
    fn caption_match_falls_back_to_dynamic_sampling() {
        let policy = CaptionMatch { max_frames: 6 };
        let lens = [17, 21, 33];
        let dynamic = DynamicSampling::default().select(&ContextQuery::lengths(&lens));
        // Captions unknown, or not lined up with the shots.
        assert_eq!(policy.select(&ContextQuery::lengths(&lens)), dynamic);
        let short = caps(&RABBIT_AND_FOX[..2]);
        assert_eq!(policy.select(&ContextQuery::with_captions(&lens, &short)), dynamic);
        // Nothing shared but function words.
        let unrelated = caps(&["A cat.", "The dog.", "A bird in the sky.", "The same tree."]);
        assert_eq!(policy.select(&ContextQuery::with_captions(&lens, &unrelated)), dynamic);
        // An empty matching shot cannot take frames.
        let captions = caps(&RABBIT_AND_FOX[..3]);
        let picks = policy.select(&ContextQuery::with_captions(&[0, 25], &captions));
        assert_eq!(picks, DynamicSampling::default().select(&ContextQuery::lengths(&[0, 25])));
        assert!(policy_by_name("caption", 6).is_some_and(|p| p.name() == "caption"));
        assert!(POLICY_NAMES.iter().all(|n| policy_by_name(n, 6).is_some()));
    }

    #[test]
    fn caption_match_gives_frames_to_both_the_character_and_the_place_the_global_caption_names() {
        let global = "A story in 4 shots about the red fox and the spotted blue owl, on the snowfield, in the city \
                      and in the desert.";
        let captions = caps(&[
            "A red fox walks left on a snowfield in daylight turning to dusk, medium shot.",
            "The same red fox grows bigger in a city at dusk, wide shot.",
            "A spotted blue owl, now in daylight, grows bigger in a desert, medium shot.",
            "The same spotted blue owl turns around in the same city in daylight, close-up.",
        ]);
        let per_shot = |picks: Vec<ContextPick>| (0..3).map(|s| picks.iter().filter(|p| p.shot == s).count()).collect();
        let policy = CaptionMatch { max_frames: 6 };
        let query = ContextQuery::with_captions(&[25, 25, 25], &captions);
        // Word by word the owl's three words outweigh the one word "city".
        let by_words: Vec<usize> = per_shot(policy.select(&query));
        assert_eq!(by_words, vec![0, 0, 6]);
        // As entities the owl and the city weigh the same, so the city's shot gets its share.
        let by_entities: Vec<usize> = per_shot(policy.select(&query.with_global(global)));
        assert_eq!(by_entities, vec![0, 3, 3]);
        let scores = CaptionMatch::scores(&captions[..3], &captions[3], global);
        assert!(scores[0] < 0.1 * scores[1], "{scores:?}");
    }

    #[test]
    fn entities_are_the_global_captions_phrases_and_match_whole() {
        let found = entities("A story in 5 shots about the spotted white rabbit and the pink rabbit, in the forest.");
        let words = |e: &[&str]| e.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(
            found,
            vec![
                words(&["story"]),
                words(&["shots"]),
                words(&["rabbit", "spotted", "white"]),
                words(&["pink", "rabbit"]),
                words(&["forest"])
            ]
        );
        // "The same pink rabbit" names the pink rabbit, not the spotted white one.
        let global = "About the spotted white rabbit and the pink rabbit.";
        let earlier = caps(&["A spotted white rabbit jumps.", "A pink rabbit jumps."]);
        let scores = CaptionMatch::scores(&earlier, "The same pink rabbit sits.", global);
        assert!(scores[1] > 10.0 * scores[0], "{scores:?}");
        assert!(entities("").is_empty());
    }

    #[test]
    fn content_words_drop_function_words_and_case() {
        assert_eq!(
            content_words("The same Pink rabbit, now at dusk, close-up."),
            ["close-up", "dusk", "pink", "rabbit"]
        );
    }

    #[test]
    fn rounding_is_half_to_even() {
        assert_eq!(round_half_even(4.5), 4);
        assert_eq!(round_half_even(5.5), 6);
        assert_eq!(round_half_even(2.4), 2);
        assert_eq!(round_half_even(2.6), 3);
    }
}

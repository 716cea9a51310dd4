//! `storyreel world context-relevance`: how often a context policy's frames show what the next
//! shot shows, read from the world's own labels. It needs no model and no video, so a change to
//! a policy can be judged in a second before any story is generated with it.

use serde::Serialize;
use storyreel_engine::context::{ContextMemory, ContextQuery};
use storyreel_world::Story;

/// Share of a policy's context frames that show the next shot's place and characters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Relevance {
    /// The policy's name.
    pub policy: String,
    /// Mean share of context frames from earlier shots at the next shot's place, over the shots
    /// whose place was shown before.
    pub place: f64,
    /// Shots that count towards `place`.
    pub place_shots: usize,
    /// Mean share of context frames from earlier shots showing one of the next shot's
    /// characters, over the shots with a character shown before.
    pub character: f64,
    /// Shots that count towards `character`.
    pub character_shots: usize,
    /// Context frames picked over all shots after the first.
    pub frames: usize,
}

/// Picks context for every shot after the first of every story, as generation would (captions
/// so far, the global caption, the shots' lengths), and scores the picks against the labels.
pub fn relevance(stories: &[Story], memory: &dyn ContextMemory) -> Relevance {
    let (mut place_sum, mut place_shots, mut character_sum, mut character_shots, mut frames) = (0.0, 0, 0.0, 0, 0);
    for story in stories {
        let captions: Vec<String> = story.shots.iter().map(|s| s.caption.clone()).collect();
        for (k, next) in story.shots.iter().enumerate().skip(1) {
            let lens: Vec<usize> = story.shots[..k].iter().map(|s| s.frames).collect();
            let query = ContextQuery::with_captions(&lens, &captions[..=k]).with_global(&story.global_caption);
            let picks = memory.select(&query);
            frames += picks.len();
            let earlier = &story.shots[..k];
            let same_place = |s: usize| earlier[s].world.place == next.world.place;
            let shares_character =
                |s: usize| earlier[s].world.characters.iter().any(|c| next.world.characters.contains(c));
            let share = |hit: &dyn Fn(usize) -> bool| {
                if picks.is_empty() {
                    0.0
                } else {
                    picks.iter().filter(|p| hit(p.shot)).count() as f64 / picks.len() as f64
                }
            };
            if (0..k).any(same_place) {
                place_sum += share(&same_place);
                place_shots += 1;
            }
            if (0..k).any(shares_character) {
                character_sum += share(&shares_character);
                character_shots += 1;
            }
        }
    }
    let mean = |sum: f64, n: usize| if n == 0 { 0.0 } else { sum / n as f64 };
    Relevance {
        policy: memory.name().to_string(),
        place: mean(place_sum, place_shots),
        place_shots,
        character: mean(character_sum, character_shots),
        character_shots,
        frames,
    }
}

/// The table `context-relevance` prints.
pub fn relevance_table(rows: &[Relevance], stories: usize) -> String {
    let mut out =
        format!("context relevance over {stories} stories (share of context frames showing the next shot's)\n");
    out.push_str(&format!("{:<12} {:>8} {:>7} {:>10} {:>7}\n", "policy", "place", "shots", "character", "shots"));
    for r in rows {
        out.push_str(&format!(
            "{:<12} {:>8.3} {:>7} {:>10.3} {:>7}\n",
            r.policy, r.place, r.place_shots, r.character, r.character_shots
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use storyreel_engine::context::{policy_by_name, NoContext};
    use storyreel_world::{generate_story, StoryOptions};

    fn stories() -> Vec<Story> {
        (0..12).map(|seed| generate_story(seed, &StoryOptions::default()).unwrap()).collect()
    }

    #[test]
    fn caption_matching_finds_the_next_shots_place_and_cast_more_often_than_dynamic_sampling() {
        let stories = stories();
        let dynamic = relevance(&stories, policy_by_name("dynamic", 6).unwrap().as_ref());
        let caption = relevance(&stories, policy_by_name("caption", 6).unwrap().as_ref());
        assert!(dynamic.place_shots > 0 && dynamic.character_shots > 0, "{dynamic:?}");
        assert_eq!((caption.place_shots, caption.character_shots), (dynamic.place_shots, dynamic.character_shots));
        assert!(caption.place > dynamic.place, "{caption:?} vs {dynamic:?}");
        assert!(caption.character >= dynamic.character, "{caption:?} vs {dynamic:?}");
        assert!((0.0..=1.0).contains(&caption.place) && (0.0..=1.0).contains(&caption.character));
        let none = relevance(&stories, &NoContext);
        assert_eq!((none.place, none.character, none.frames), (0.0, 0.0, 0));
        let table = relevance_table(&[dynamic, caption], stories.len());
        assert!(table.contains("over 12 stories") && table.contains("caption"), "{table}");
    }

    #[test]
    fn a_shot_at_a_place_seen_once_before_counts_the_frames_from_there() {
        let mut story = generate_story(3, &StoryOptions::default()).unwrap();
        story.shots.truncate(2);
        let place = story.shots[0].world.place;
        story.shots[1].world.place = place;
        // Every frame comes from shot 0, the only earlier shot.
        let r = relevance(&[story], policy_by_name("dynamic", 6).unwrap().as_ref());
        assert_eq!((r.place, r.place_shots, r.frames), (1.0, 1, 6));
    }
}

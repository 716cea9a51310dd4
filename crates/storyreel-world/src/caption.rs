//! Captions written from a shot's facts, and read back into facts.
//!
//! Shot captions refer back the way OneStory's rewritten captions do: a character already
//! seen is "the same red fox" ("… from before" when it skipped the previous shot), a place
//! already seen is "the same meadow", and a change of light is "now at night". Every caption
//! names each character by its unique phrase, the place, the light, the motion and the framing,
//! so [`parse_caption`] recovers exactly the facts it was written from.

use serde::{Deserialize, Serialize};

use crate::catalog::{CharacterId, Framing, Lighting, Motion, Place, CHARACTERS};
use crate::story::{ShotSpec, Story};

/// What earlier shots have shown, for referring back.
#[derive(Debug, Clone, Default)]
pub struct CaptionHistory {
    seen_characters: Vec<CharacterId>,
    previous_characters: Vec<CharacterId>,
    seen_places: Vec<Place>,
    previous_lighting: Option<Lighting>,
}

/// The caption of the next shot, updating `history`.
pub fn shot_caption(spec: &ShotSpec, history: &mut CaptionHistory) -> String {
    let subjects: Vec<String> = spec
        .characters
        .iter()
        .map(|&c| {
            let phrase = CHARACTERS[c].phrase();
            if !history.seen_characters.contains(&c) {
                format!("a {phrase}")
            } else if history.previous_characters.contains(&c) {
                format!("the same {phrase}")
            } else {
                format!("the same {phrase} from before")
            }
        })
        .collect();
    let mut text = subjects.join(" and ");
    let lighting_phrase = match spec.lighting_end {
        Some(end) => format!("{} turning to {}", spec.lighting.phrase(), end.noun()),
        None => spec.lighting.phrase().to_string(),
    };
    let light_changed = history.previous_lighting.is_some_and(|l| l != spec.lighting);
    if light_changed {
        text.push_str(&format!(", now {lighting_phrase},"));
    }
    text.push(' ');
    text.push_str(spec.motion.verb(spec.characters.len() > 1, spec.fast));
    let article = if history.seen_places.contains(&spec.place) { "the same" } else { "a" };
    text.push_str(&format!(" {} {article} {}", spec.place.preposition(), spec.place.noun()));
    if !light_changed {
        text.push(' ');
        text.push_str(&lighting_phrase);
    }
    text.push_str(&format!(", {}.", spec.framing.phrase()));

    for &c in &spec.characters {
        if !history.seen_characters.contains(&c) {
            history.seen_characters.push(c);
        }
    }
    history.previous_characters = spec.characters.clone();
    if !history.seen_places.contains(&spec.place) {
        history.seen_places.push(spec.place);
    }
    history.previous_lighting = Some(spec.final_lighting());
    capitalise(&text)
}

/// One sentence naming the whole cast and every place, in order of appearance.
pub fn global_caption(story: &Story) -> String {
    let cast: Vec<String> = story.cast().iter().map(|&c| format!("the {}", CHARACTERS[c].phrase())).collect();
    let mut places: Vec<Place> = Vec::new();
    for s in &story.shots {
        if !places.contains(&s.world.place) {
            places.push(s.world.place);
        }
    }
    let places: Vec<String> = places.iter().map(|p| format!("{} the {}", p.preposition(), p.noun())).collect();
    format!("A story in {} shots about {}, {}.", story.shots.len(), join_and(&cast), join_and(&places))
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The facts a caption states; `None` where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptionFacts {
    /// Characters named, in order of mention.
    pub characters: Vec<CharacterId>,
    /// The place named.
    pub place: Option<Place>,
    /// The framing named.
    pub framing: Option<Framing>,
    /// The first light named.
    pub lighting: Option<Lighting>,
    /// The light after "turning to", if the caption names a change during the shot.
    pub lighting_end: Option<Lighting>,
    /// The motion named.
    pub motion: Option<Motion>,
    /// Whether the motion is a run.
    pub fast: bool,
}

/// Reads the world's facts back out of a caption (any caption using the world's words).
pub fn parse_caption(caption: &str) -> CaptionFacts {
    let mut text: Vec<char> = caption.to_lowercase().chars().collect();
    let mut facts = CaptionFacts::default();

    // Longest phrases first, blanking each match, so "blue owl" never matches inside
    // "spotted blue owl".
    let mut phrases: Vec<(CharacterId, String)> = CHARACTERS.iter().enumerate().map(|(i, c)| (i, c.phrase())).collect();
    phrases.sort_by_key(|(_, p)| std::cmp::Reverse(p.len()));
    let mut found: Vec<(usize, CharacterId)> = Vec::new();
    for (id, phrase) in &phrases {
        let needle: Vec<char> = phrase.chars().collect();
        while let Some(at) = find_word(&text, &needle) {
            if !found.iter().any(|&(_, c)| c == *id) {
                found.push((at, *id));
            }
            for ch in &mut text[at..at + needle.len()] {
                *ch = '#';
            }
        }
    }
    found.sort();
    facts.characters = found.into_iter().map(|(_, c)| c).collect();

    facts.place = first_of(&text, Place::ALL.iter().map(|&p| (p.noun(), p)));
    facts.framing = first_of(&text, Framing::ALL.iter().map(|&f| (f.phrase(), f)));
    facts.lighting = first_of(
        &text,
        [("daylight", Lighting::Day), ("dusk", Lighting::Dusk), ("night", Lighting::Night)].into_iter(),
    );
    facts.lighting_end = first_of(
        &text,
        [
            ("turning to daylight", Lighting::Day),
            ("turning to dusk", Lighting::Dusk),
            ("turning to night", Lighting::Night),
        ]
        .into_iter(),
    );
    let motions = Motion::ALL.iter().flat_map(|&m| {
        [
            (m.verb(false, false), m, false),
            (m.verb(true, false), m, false),
            (m.verb(false, true), m, true),
            (m.verb(true, true), m, true),
        ]
    });
    let mut best: Option<(usize, Motion, bool)> = None;
    for (verb, m, fast) in motions {
        let needle: Vec<char> = verb.chars().collect();
        if let Some(at) = find_word(&text, &needle) {
            if best.is_none_or(|(b, _, _)| at < b) {
                best = Some((at, m, fast));
            }
        }
    }
    if let Some((_, m, fast)) = best {
        facts.motion = Some(m);
        facts.fast = fast;
    }
    facts
}

/// The earliest item whose phrase occurs as whole words.
fn first_of<T: Copy>(text: &[char], items: impl Iterator<Item = (&'static str, T)>) -> Option<T> {
    let mut best: Option<(usize, T)> = None;
    for (phrase, value) in items {
        let needle: Vec<char> = phrase.chars().collect();
        if let Some(at) = find_word(text, &needle) {
            if best.as_ref().is_none_or(|(b, _)| at < *b) {
                best = Some((at, value));
            }
        }
    }
    best.map(|(_, v)| v)
}

/// Position of `needle` in `text` as whole words (not inside a longer word).
fn find_word(text: &[char], needle: &[char]) -> Option<usize> {
    if needle.is_empty() || needle.len() > text.len() {
        return None;
    }
    let is_word = |c: char| c.is_alphanumeric() || c == '-';
    (0..=text.len() - needle.len()).find(|&i| {
        text[i..i + needle.len()] == *needle
            && (i == 0 || !is_word(text[i - 1]))
            && text.get(i + needle.len()).is_none_or(|&c| !is_word(c))
    })
}

/// Every word a world caption, a global caption or a ShotStream prompt (`shot3:`) can contain,
/// lower-case, in a fixed order: the toy text encoder's vocabulary.
pub fn caption_vocabulary() -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut add = |text: &str| {
        for w in text.split(|c: char| !(c.is_alphanumeric() || c == '\'')) {
            let w = w.to_lowercase();
            if !w.is_empty() && !words.contains(&w) {
                words.push(w);
            }
        }
    };
    add("a the same from before and now turning to in on a story shots about shot");
    for c in &CHARACTERS {
        add(&c.phrase());
    }
    for p in Place::ALL {
        add(p.preposition());
        add(p.noun());
    }
    for f in Framing::ALL {
        add(f.phrase());
    }
    for l in Lighting::ALL {
        add(l.phrase());
        add(l.noun());
    }
    for m in Motion::ALL {
        for (plural, fast) in [(false, false), (true, false), (false, true), (true, true)] {
            add(m.verb(plural, fast));
        }
    }
    // Shot counts in global captions and ShotStream's 0-based `shot{i}:` labels.
    for n in 0..=crate::story::MAX_SHOTS {
        add(&n.to_string());
    }
    words
}

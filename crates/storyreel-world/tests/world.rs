//! The renderer and story generator: determinism, captions that agree with the ground truth,
//! ground truth that agrees with the pixels, and clear errors for bad settings.

use storyreel_world::caption::CaptionHistory;
use storyreel_world::story::{look_alike, MAX_SHOTS};
use storyreel_world::*;

fn options(size: u32) -> StoryOptions {
    StoryOptions { format: VideoFormat { width: size, height: size, fps: 16 }, ..StoryOptions::default() }
}

#[test]
fn same_seed_same_story_and_pixels() {
    for seed in [0u64, 7, 123_456] {
        let a = generate_story(seed, &options(64)).unwrap();
        let b = generate_story(seed, &options(64)).unwrap();
        assert_eq!(a, b);
        let ra = render_story(&a).unwrap();
        let rb = render_story(&b).unwrap();
        assert_eq!(ra.frames, rb.frames, "seed {seed}: frames differ between runs");
        assert_eq!(ra.truth, rb.truth);
    }
    let a = generate_story(1, &options(64)).unwrap();
    let b = generate_story(2, &options(64)).unwrap();
    assert_ne!(a, b, "different seeds should give different stories");
}

#[test]
fn pixels_do_not_depend_on_thread_count() {
    let story = generate_story(42, &options(64)).unwrap();
    let many = render_story(&story).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let one = pool.install(|| render_story(&story).unwrap());
    assert_eq!(many.frames, one.frames);
}

#[test]
fn stories_follow_their_pattern() {
    for seed in 0..300u64 {
        let story = generate_story(seed, &options(32)).unwrap();
        let n = story.shots.len();
        assert!((story.pattern.min_shots()..=8).contains(&n), "seed {seed}: {n} shots");
        let casts: Vec<&Vec<usize>> = story.shots.iter().map(|s| &s.world.characters).collect();
        let a = casts[0][0];
        match story.pattern {
            StoryPattern::MainSubject => assert!(casts.iter().all(|c| c.as_slice() == [a])),
            StoryPattern::InsertRecall => {
                // A, then a run of B without A, then A again.
                let b_shots: Vec<usize> = (0..n).filter(|&i| !casts[i].contains(&a)).collect();
                assert!(!b_shots.is_empty(), "seed {seed}: nobody was inserted");
                assert!(b_shots.windows(2).all(|w| w[1] == w[0] + 1), "seed {seed}: insert is not one run");
                assert!(*b_shots.last().unwrap() < n - 1, "seed {seed}: A never returns");
                assert!(b_shots[0] > 0);
            }
            StoryPattern::Composable => {
                let b = casts[1][0];
                assert_ne!(a, b);
                assert_eq!(casts[2].as_slice(), [a, b], "seed {seed}: shot 3 must bring A and B together");
            }
        }
        for s in &story.shots {
            assert_eq!(s.frames % 4, 1);
            assert!((17..=33).contains(&s.frames));
        }
        // Consecutive shots in the same place must differ in framing so the cut is visible.
        for w in story.shots.windows(2) {
            if w[0].world.place == w[1].world.place {
                assert_ne!(w[0].world.framing, w[1].world.framing, "seed {seed}");
            }
        }
    }
}

#[test]
fn every_pattern_and_hard_case_occurs() {
    let stories: Vec<Story> = (0..200u64).map(|s| generate_story(s, &options(32)).unwrap()).collect();
    for p in StoryPattern::ALL {
        assert!(stories.iter().any(|s| s.pattern == p), "{p:?} never drawn");
    }
    let shots: Vec<&StoryShot> = stories.iter().flat_map(|s| &s.shots).collect();
    assert!(shots.iter().any(|s| s.world.fast));
    assert!(shots.iter().any(|s| s.world.lighting_end.is_some()));
    for l in Lighting::ALL {
        assert!(shots.iter().any(|s| s.world.lighting == l));
    }
    for m in Motion::ALL {
        assert!(shots.iter().any(|s| s.world.motion == m));
    }
    for f in Framing::ALL {
        assert!(shots.iter().any(|s| s.world.framing == f));
    }
    for p in Place::ALL {
        assert!(shots.iter().any(|s| s.world.place == p));
    }
    let same_place_cuts = stories
        .iter()
        .map(|s| s.shots.windows(2).filter(|w| w[0].world.place == w[1].world.place).count())
        .sum::<usize>();
    assert!(same_place_cuts > 50, "only {same_place_cuts} cuts stay in one place");
    let similar = stories
        .iter()
        .filter(|s| {
            let cast = s.cast();
            cast.len() == 2 && look_alike(cast[0]) == Some(cast[1])
        })
        .count();
    assert!(similar > 10, "only {similar} stories pair look-alikes");
}

#[test]
fn captions_agree_with_ground_truth() {
    for seed in 0..150u64 {
        let story = generate_story(seed, &options(48)).unwrap();
        let rendered = render_story(&story).unwrap();
        for (i, ((start, end), shot)) in story.shot_ranges().into_iter().zip(&story.shots).enumerate() {
            let facts = parse_caption(&shot.caption);
            let w = &shot.world;
            let ctx = format!("seed {seed} shot {i}: {:?}", shot.caption);
            assert_eq!(facts.characters, w.characters, "{ctx}");
            assert_eq!(facts.place, Some(w.place), "{ctx}");
            assert_eq!(facts.framing, Some(w.framing), "{ctx}");
            assert_eq!(facts.lighting, Some(w.lighting), "{ctx}");
            assert_eq!(facts.lighting_end, w.lighting_end, "{ctx}");
            assert_eq!(facts.motion, Some(w.motion), "{ctx}");
            assert_eq!(facts.fast, w.fast, "{ctx}");
            for truth in &rendered.truth[start..end] {
                assert_eq!(truth.shot, i);
                assert_eq!(truth.place, w.place);
                assert_eq!(truth.framing, w.framing);
                let ids: Vec<usize> = truth.characters.iter().map(|c| c.character).collect();
                assert_eq!(ids, facts.characters, "{ctx}: frame {}", truth.frame_in_shot);
            }
        }
        // The global caption names the whole cast.
        let global = parse_caption(&story.global_caption);
        let mut cast = story.cast();
        let mut named = global.characters.clone();
        cast.sort();
        named.sort();
        assert_eq!(named, cast, "seed {seed}: {:?}", story.global_caption);
    }
}

#[test]
fn captions_refer_back() {
    let mut history = CaptionHistory::default();
    let spec = |chars: Vec<usize>, place, lighting| ShotSpec {
        place,
        framing: Framing::Wide,
        lighting,
        lighting_end: None,
        motion: Motion::Jump,
        fast: false,
        characters: chars,
        layout_seed: 1,
        place_look: 0,
        character_looks: Vec::new(),
    };
    let first = caption::shot_caption(&spec(vec![0], Place::Meadow, Lighting::Day), &mut history);
    assert_eq!(first, "A red fox jumps in a meadow in daylight, wide shot.");
    let second = caption::shot_caption(&spec(vec![0], Place::Forest, Lighting::Night), &mut history);
    assert_eq!(second, "The same red fox, now at night, jumps in a forest, wide shot.");
    let third = caption::shot_caption(&spec(vec![2], Place::Forest, Lighting::Night), &mut history);
    assert_eq!(third, "A blue owl jumps in the same forest at night, wide shot.");
    let fourth = caption::shot_caption(&spec(vec![0, 2], Place::Meadow, Lighting::Night), &mut history);
    assert_eq!(
        fourth,
        "The same red fox from before and the same blue owl jump in the same meadow at night, wide shot."
    );
}

#[test]
fn parser_tells_look_alikes_apart() {
    let f = parse_caption("The same spotted blue owl meets a blue owl on the beach at dusk, close-up.");
    assert_eq!(f.characters, vec![3, 2]);
    assert_eq!(f.place, Some(Place::Beach));
    assert_eq!(f.lighting, Some(Lighting::Dusk));
    assert_eq!(f.framing, Some(Framing::CloseUp));
    let none = parse_caption("a cat in a kitchen");
    assert!(none.characters.is_empty() && none.place.is_none() && none.motion.is_none());
}

#[test]
fn ground_truth_boxes_stay_in_view() {
    for seed in 0..40u64 {
        let story = generate_story(seed, &options(64)).unwrap();
        let rendered = render_story(&story).unwrap();
        for truth in rendered.truth.iter().step_by(3) {
            for c in &truth.characters {
                let [x0, y0, x1, y1] = c.bbox;
                assert!(x0 >= 0.0 && y0 >= 0.0 && x1 <= 64.0 && y1 <= 64.0);
                // Characters stay in view: no box is clipped to a sliver.
                assert!(x1 - x0 >= 1.0 && y1 - y0 >= 8.0, "seed {seed}: box {:?}", c.bbox);
            }
        }
    }
}

#[test]
fn the_box_holds_the_characters_colour() {
    let spec = ShotSpec {
        place: Place::Meadow,
        framing: Framing::Medium,
        lighting: Lighting::Day,
        lighting_end: None,
        motion: Motion::Jump,
        fast: false,
        characters: vec![0],
        layout_seed: 5,
        place_look: 0,
        character_looks: Vec::new(),
    };
    let format = VideoFormat::default();
    let (frames, truth) = render_shot(&spec, 0, 5, format).unwrap();
    let [x0, y0, x1, y1] = truth[0].characters[0].bbox;
    // Below the eyes, on the body.
    let centre = frames[0].pixel(((x0 + x1) / 2.0) as u32, (y0 + 0.75 * (y1 - y0)) as u32).unwrap();
    let red = storyreel_world::CHARACTERS[0].rgb;
    let expected = [red[0] * 255.0, red[1] * 255.0, red[2] * 255.0];
    let dist: f32 = centre.iter().zip(expected).map(|(&a, b)| (a as f32 - b).abs()).sum();
    assert!(dist < 90.0, "centre pixel {centre:?} is not the fox's red {expected:?}");
}

#[test]
fn bad_options_are_rejected_with_the_setting_named() {
    let cases: Vec<(StoryOptions, &str)> = vec![
        (StoryOptions { min_shot_frames: 16, ..StoryOptions::default() }, "min shot frames"),
        (StoryOptions { max_shots: 0, ..StoryOptions::default() }, "shots"),
        (StoryOptions { max_shots: MAX_SHOTS + 1, ..StoryOptions::default() }, "shots"),
        (options(63), "width"),
        (StoryOptions { same_place: 1.5, ..StoryOptions::default() }, "same place"),
        (
            StoryOptions { pattern: Some(StoryPattern::Composable), max_shots: 2, ..StoryOptions::default() },
            "composable",
        ),
    ];
    for (opts, needle) in cases {
        let err = generate_story(1, &opts).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
}

#[test]
fn story_json_round_trips_and_bad_files_are_named() {
    let story = generate_story(9, &options(64)).unwrap();
    let back = Story::from_json(&story.to_json(), "x.json").unwrap();
    assert_eq!(back, story);
    let mut bad = story.clone();
    bad.shots[1].frames = 20;
    let err = Story::from_json(&bad.to_json(), "bad.json").unwrap_err().to_string();
    assert!(err.contains("bad.json") && err.contains("shots[1].frames"), "{err}");
    let mut bad = story.clone();
    bad.shots[0].world.characters = vec![99];
    let err = Story::from_json(&bad.to_json(), "bad.json").unwrap_err().to_string();
    assert!(err.contains("characters"), "{err}");
    let err = Story::from_json("{\"version\": 1, ", "cut.json").unwrap_err().to_string();
    assert!(err.contains("cut.json:1:"), "{err}");
}

#[test]
fn vocabulary_covers_every_caption_and_prompt() {
    let vocab = caption_vocabulary();
    let known = |text: &str| {
        text.to_lowercase()
            .split(|c: char| !(c.is_alphanumeric() || c == '\''))
            .filter(|w| !w.is_empty())
            .flat_map(|w| {
                // Digits glued to letters ("shot3") are separate words, as the toy tokenizer splits them.
                let mut parts = Vec::new();
                let mut cur = String::new();
                for ch in w.chars() {
                    if !cur.is_empty() && ch.is_ascii_digit() != cur.chars().last().unwrap().is_ascii_digit() {
                        parts.push(std::mem::take(&mut cur));
                    }
                    cur.push(ch);
                }
                parts.push(cur);
                parts
            })
            .filter(|w| !vocab.contains(w))
            .collect::<Vec<_>>()
    };
    for seed in 0..300u64 {
        let story = generate_story(seed, &options(32)).unwrap();
        assert!(known(&story.global_caption).is_empty(), "{:?}", known(&story.global_caption));
        for (i, s) in story.shots.iter().enumerate() {
            let prompt = format!("{}shot{i}:{}", story.global_caption, s.caption);
            assert!(known(&prompt).is_empty(), "unknown words {:?} in {prompt:?}", known(&prompt));
        }
    }
}

#[test]
fn each_story_keeps_one_look_per_character_and_place_and_captions_never_name_it() {
    let plain = StoryOptions { varied_looks: false, ..options(64) };
    let mut seen_looks = std::collections::HashSet::new();
    for seed in 0..60u64 {
        let story = generate_story(seed, &options(64)).unwrap();
        let without = generate_story(seed, &plain).unwrap();
        // Looks come from their own stream: the cast, places, layout and captions are those of
        // the same seed without looks.
        assert_eq!(story.global_caption, without.global_caption);
        let mut character_look = std::collections::HashMap::new();
        let mut place_look = std::collections::HashMap::new();
        for (a, b) in story.shots.iter().zip(&without.shots) {
            assert_eq!(a.caption, b.caption, "seed {seed}");
            assert_eq!((a.frames, a.world.layout_seed), (b.frames, b.world.layout_seed));
            assert_eq!(a.world.characters, b.world.characters);
            assert!(b.world.place_look == 0 && b.world.character_looks.is_empty());
            assert_eq!(a.world.character_looks.len(), a.world.characters.len());
            for (k, &c) in a.world.characters.iter().enumerate() {
                let look = a.world.character_look(k);
                assert_eq!(*character_look.entry(c).or_insert(look), look, "seed {seed}: character {c} changed look");
                seen_looks.insert(("character", look));
            }
            let look = a.world.place_look;
            assert_eq!(*place_look.entry(a.world.place).or_insert(look), look, "seed {seed}: place changed look");
            seen_looks.insert(("place", look));
        }
    }
    assert_eq!(seen_looks.len(), 2 * storyreel_world::catalog::LOOKS, "{seen_looks:?}");
}

#[test]
fn looks_change_the_pixels_and_the_truth_but_not_the_boxes() {
    let spec = |look: u8| ShotSpec {
        place: Place::City,
        framing: Framing::Medium,
        lighting: Lighting::Day,
        lighting_end: None,
        motion: Motion::Jump,
        fast: false,
        characters: vec![0, 7],
        layout_seed: 5,
        place_look: look,
        character_looks: vec![look, look],
    };
    let format = VideoFormat::default();
    let (base, base_truth) = render_shot(&spec(0), 0, 5, format).unwrap();
    let (no_looks, _) = render_shot(&ShotSpec { character_looks: Vec::new(), ..spec(0) }, 0, 5, format).unwrap();
    assert_eq!(base, no_looks, "look 0 is the catalogue's appearance");
    for look in 1..storyreel_world::catalog::LOOKS as u8 {
        let (frames, truth) = render_shot(&spec(look), 0, 5, format).unwrap();
        let changed = frames[0].data.iter().zip(&base[0].data).filter(|(a, b)| a.abs_diff(**b) > 20).count();
        assert!(changed > frames[0].data.len() / 4, "look {look} changed only {changed} samples");
        assert_eq!(truth[0].place_look, look);
        for (c, b) in truth[0].characters.iter().zip(&base_truth[0].characters) {
            assert_eq!((c.look, c.bbox), (look, b.bbox));
        }
    }
}

#[test]
fn bad_looks_in_a_story_file_are_named() {
    let story = generate_story(9, &options(64)).unwrap();
    let mut bad = story.clone();
    bad.shots[0].world.place_look = 7;
    let err = Story::from_json(&bad.to_json(), "bad.json").unwrap_err().to_string();
    assert!(err.contains("bad.json") && err.contains("shots[0].world.place_look"), "{err}");
    let mut bad = story.clone();
    bad.shots[1].world.character_looks = vec![0; bad.shots[1].world.characters.len() + 1];
    let err = Story::from_json(&bad.to_json(), "bad.json").unwrap_err().to_string();
    assert!(err.contains("shots[1].world.character_looks") && err.contains("one per character"), "{err}");
    let mut bad = story;
    bad.shots[0].world.character_looks = vec![3; bad.shots[0].world.characters.len()];
    let err = Story::from_json(&bad.to_json(), "bad.json").unwrap_err().to_string();
    assert!(err.contains("shots[0].world.character_looks") && err.contains("below 3"), "{err}");
}

/// Every pair of a place's looks must differ by at least this much: the RMS difference (0–255)
/// of the frame's 8×8-pixel block means, a latent's view of the frame. Subtle looks (a
/// snowfield whose looks changed only its peaks) were worth 1–6% of the top-noise error for four
/// of the six places (`storyreel train check-looks`), too little for context to matter.
const BOLD_LOOK_DISTANCE: f64 = 40.0;

#[test]
fn every_place_has_bold_looks() {
    let format = VideoFormat::default();
    let block = 8usize;
    for place in Place::ALL {
        let block_means = |look: u8| {
            let spec = ShotSpec {
                place,
                framing: Framing::Wide,
                lighting: Lighting::Day,
                lighting_end: None,
                motion: Motion::WalkRight,
                fast: false,
                characters: vec![1],
                layout_seed: 11,
                place_look: look,
                character_looks: vec![0],
            };
            let (frames, _) = render_shot(&spec, 0, 1, format).unwrap();
            let (w, h) = (format.width as usize, format.height as usize);
            let mut means = vec![0.0f64; (w / block) * (h / block) * 3];
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let at = ((y / block) * (w / block) + x / block) * 3 + c;
                        means[at] += frames[0].data[(y * w + x) * 3 + c] as f64 / (block * block) as f64;
                    }
                }
            }
            means
        };
        let looks: Vec<Vec<f64>> = (0..storyreel_world::catalog::LOOKS as u8).map(block_means).collect();
        let mut weakest = f64::INFINITY;
        for a in 0..looks.len() {
            for b in a + 1..looks.len() {
                let sq = looks[a].iter().zip(&looks[b]).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
                let d = (sq / looks[a].len() as f64).sqrt();
                eprintln!("{place:?} looks {a}/{b}: {d:.1}");
                weakest = weakest.min(d);
            }
        }
        assert!(weakest >= BOLD_LOOK_DISTANCE, "{place:?}: two looks differ by only {weakest:.1}");
    }
}

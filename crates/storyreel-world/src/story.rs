//! Stories: the three benchmark patterns of OneStory (main subject, insert-and-recall,
//! composable), drawn from a seed, with captions and everything the renderer needs.

use serde::{Deserialize, Serialize};

use crate::caption::{global_caption, shot_caption, CaptionHistory};
use crate::catalog::{CharacterId, Framing, Lighting, Motion, Place, CHARACTERS, LOOKS};
use crate::error::{Result, WorldError};
use crate::rng::WorldRng;

/// Version of the story JSON layout written by [`Story::to_json`].
pub const STORY_VERSION: u32 = 1;

/// How the characters of a story recur (OneStory's benchmark patterns, peers.md §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoryPattern {
    /// One character in every shot, through changing places, framings and light.
    MainSubject,
    /// A, then B without A, then A again: the model must recall A after it was away.
    InsertRecall,
    /// A alone, B alone, then A and B together.
    Composable,
}

impl StoryPattern {
    /// Every pattern, in a fixed order.
    pub const ALL: [StoryPattern; 3] =
        [StoryPattern::MainSubject, StoryPattern::InsertRecall, StoryPattern::Composable];

    /// The fewest shots the pattern needs.
    pub fn min_shots(self) -> usize {
        match self {
            StoryPattern::MainSubject => 2,
            StoryPattern::InsertRecall | StoryPattern::Composable => 3,
        }
    }

    /// The snake_case name used in JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StoryPattern::MainSubject => "main_subject",
            StoryPattern::InsertRecall => "insert_recall",
            StoryPattern::Composable => "composable",
        }
    }

    /// Parses [`StoryPattern::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What one shot shows: the renderer's whole input for it, and the ground truth captions follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShotSpec {
    /// Background.
    pub place: Place,
    /// Camera distance.
    pub framing: Framing,
    /// Light at the start of the shot.
    pub lighting: Lighting,
    /// Light at the end when it changes during the shot (a ramp, not a cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lighting_end: Option<Lighting>,
    /// What the characters do.
    pub motion: Motion,
    /// Walks at twice the speed (captioned as "runs").
    #[serde(default)]
    pub fast: bool,
    /// Who is in the shot, left to right.
    pub characters: Vec<CharacterId>,
    /// Seed of the layout (positions, facing, camera focus).
    pub layout_seed: u64,
    /// Which of the place's [`LOOKS`] looks (palette and layout) the shot shows; captions never
    /// name it, so it is what context frames carry from shot to shot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub place_look: u8,
    /// The look of each character in `characters`, in the same order (empty: all look 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub character_looks: Vec<u8>,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl ShotSpec {
    /// The look of the `i`-th character of the shot (0 when the shot gives none).
    pub fn character_look(&self, i: usize) -> u8 {
        self.character_looks.get(i).copied().unwrap_or(0)
    }

    /// The light shown at the end of the shot.
    pub fn final_lighting(&self) -> Lighting {
        self.lighting_end.unwrap_or(self.lighting)
    }
}

/// One shot of a story file: the caption and length every story has, plus the world's facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoryShot {
    /// The shot's own caption (refers back to earlier shots).
    pub caption: String,
    /// Pixel frames, 4k+1.
    pub frames: usize,
    /// Exact content of the shot.
    pub world: ShotSpec,
}

/// Size and rate of a story's video.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VideoFormat {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
}

impl Default for VideoFormat {
    fn default() -> Self {
        Self { width: 64, height: 64, fps: 16 }
    }
}

impl VideoFormat {
    /// Rejects sizes the renderer or H.264 cannot handle.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [("width", self.width), ("height", self.height)] {
            if !(16..=4096).contains(&v) || v % 2 != 0 {
                return Err(WorldError::out_of_range(what, v, "an even number of pixels in 16..=4096"));
            }
        }
        if !(1..=120).contains(&self.fps) {
            return Err(WorldError::out_of_range("fps", self.fps, "1..=120"));
        }
        Ok(())
    }
}

/// A whole multi-shot story of the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Story {
    /// Layout version ([`STORY_VERSION`]).
    pub version: u32,
    /// A stable name, e.g. `world-000042`.
    pub id: String,
    /// The seed the story was drawn from.
    pub seed: u64,
    /// Recurrence pattern.
    pub pattern: StoryPattern,
    /// Video size and rate.
    pub format: VideoFormat,
    /// One sentence naming the cast and places.
    pub global_caption: String,
    /// The shots, in order.
    pub shots: Vec<StoryShot>,
}

impl Story {
    /// Total pixel frames.
    pub fn total_frames(&self) -> usize {
        self.shots.iter().map(|s| s.frames).sum()
    }

    /// Frame index at which each shot after the first starts.
    pub fn cut_frames(&self) -> Vec<usize> {
        let mut at = 0;
        let mut cuts = Vec::new();
        for (i, s) in self.shots.iter().enumerate() {
            if i > 0 {
                cuts.push(at);
            }
            at += s.frames;
        }
        cuts
    }

    /// `[start, end)` pixel-frame range of each shot.
    pub fn shot_ranges(&self) -> Vec<(usize, usize)> {
        let mut at = 0;
        self.shots
            .iter()
            .map(|s| {
                at += s.frames;
                (at - s.frames, at)
            })
            .collect()
    }

    /// Every character that appears, in order of first appearance.
    pub fn cast(&self) -> Vec<CharacterId> {
        let mut cast = Vec::new();
        for c in self.shots.iter().flat_map(|s| &s.world.characters) {
            if !cast.contains(c) {
                cast.push(*c);
            }
        }
        cast
    }

    /// Checks everything a hand-edited story file could get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.version != STORY_VERSION {
            return Err(WorldError::out_of_range("story version", self.version, format!("{STORY_VERSION}")));
        }
        self.format.validate()?;
        if self.shots.is_empty() || self.shots.len() > MAX_SHOTS {
            return Err(WorldError::out_of_range("number of shots", self.shots.len(), format!("1..={MAX_SHOTS}")));
        }
        for (i, s) in self.shots.iter().enumerate() {
            let at = format!("shots[{i}]");
            if s.frames == 0 || s.frames % 4 != 1 || s.frames > MAX_SHOT_FRAMES {
                return Err(WorldError::out_of_range(
                    format!("{at}.frames"),
                    s.frames,
                    format!("4k+1 frames, at most {MAX_SHOT_FRAMES}"),
                ));
            }
            if s.world.characters.is_empty() || s.world.characters.len() > 2 {
                return Err(WorldError::out_of_range(
                    format!("{at}.world.characters"),
                    s.world.characters.len(),
                    "1 or 2 characters",
                ));
            }
            for &c in &s.world.characters {
                if c >= CHARACTERS.len() {
                    return Err(WorldError::out_of_range(
                        format!("{at}.world.characters"),
                        c,
                        format!("a character id below {}", CHARACTERS.len()),
                    ));
                }
            }
            if s.world.characters.len() == 2 && s.world.characters[0] == s.world.characters[1] {
                return Err(WorldError::malformed(at, "the same character appears twice in one shot"));
            }
            if s.world.place_look as usize >= LOOKS {
                return Err(WorldError::out_of_range(
                    format!("{at}.world.place_look"),
                    s.world.place_look,
                    format!("a look below {LOOKS}"),
                ));
            }
            if !s.world.character_looks.is_empty() && s.world.character_looks.len() != s.world.characters.len() {
                return Err(WorldError::malformed(
                    format!("{at}.world.character_looks"),
                    format!(
                        "{} looks for {} characters (give one per character, or none)",
                        s.world.character_looks.len(),
                        s.world.characters.len()
                    ),
                ));
            }
            if let Some(&look) = s.world.character_looks.iter().find(|&&l| l as usize >= LOOKS) {
                return Err(WorldError::out_of_range(
                    format!("{at}.world.character_looks"),
                    look,
                    format!("a look below {LOOKS}"),
                ));
            }
        }
        Ok(())
    }

    /// The story as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses and validates a story JSON.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let story: Story = serde_json::from_str(text).map_err(|e| {
            WorldError::malformed(format!("{origin}:{}:{}", e.line(), e.column()), format!("not a world story: {e}"))
        })?;
        story.validate().map_err(|e| WorldError::malformed(origin, e.to_string()))?;
        Ok(story)
    }

    /// Reads and validates a story JSON file.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| WorldError::io(path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }
}

/// Most shots a story may have.
pub const MAX_SHOTS: usize = 64;
/// Most frames one shot may have (about a minute at 16 fps).
pub const MAX_SHOT_FRAMES: usize = 4 * 256 + 1;

/// How stories are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoryOptions {
    /// Video size and rate.
    pub format: VideoFormat,
    /// Fewest shots (raised to the pattern's minimum).
    pub min_shots: usize,
    /// Most shots.
    pub max_shots: usize,
    /// Shortest shot in frames (4k+1).
    pub min_shot_frames: usize,
    /// Longest shot in frames (4k+1).
    pub max_shot_frames: usize,
    /// Only this pattern, or any.
    pub pattern: Option<StoryPattern>,
    /// Chance that a shot stays in the previous shot's place (a cut detectors find hard).
    pub same_place: f64,
    /// Chance that a walk is a run (fast motion).
    pub fast_motion: f64,
    /// Chance that the light changes during a shot.
    pub lighting_ramp: f64,
    /// Chance that the second character is one that looks like the first.
    pub similar_pair: f64,
    /// Draw each character's and place's look per story (kept across its shots); off, every
    /// story uses look 0, the catalogue's plain appearance.
    #[serde(default = "varied_looks_default")]
    pub varied_looks: bool,
}

fn varied_looks_default() -> bool {
    true
}

impl Default for StoryOptions {
    fn default() -> Self {
        Self {
            format: VideoFormat::default(),
            min_shots: 2,
            max_shots: 8,
            min_shot_frames: 17,
            max_shot_frames: 33,
            pattern: None,
            same_place: 0.35,
            fast_motion: 0.2,
            lighting_ramp: 0.15,
            similar_pair: 0.3,
            varied_looks: true,
        }
    }
}

impl StoryOptions {
    /// Rejects settings that cannot produce a story.
    pub fn validate(&self) -> Result<()> {
        self.format.validate()?;
        if self.min_shots == 0 || self.max_shots < self.min_shots || self.max_shots > MAX_SHOTS {
            return Err(WorldError::out_of_range(
                "shots",
                format!("{}..={}", self.min_shots, self.max_shots),
                format!("a range within 1..={MAX_SHOTS}"),
            ));
        }
        if let Some(p) = self.pattern {
            if self.max_shots < p.min_shots() {
                return Err(WorldError::out_of_range(
                    "max shots",
                    self.max_shots,
                    format!("at least {} for the {} pattern", p.min_shots(), p.name()),
                ));
            }
        }
        for (what, f) in [("min shot frames", self.min_shot_frames), ("max shot frames", self.max_shot_frames)] {
            if f % 4 != 1 || !(5..=MAX_SHOT_FRAMES).contains(&f) {
                return Err(WorldError::out_of_range(what, f, format!("4k+1 frames in 5..={MAX_SHOT_FRAMES}")));
            }
        }
        if self.max_shot_frames < self.min_shot_frames {
            return Err(WorldError::out_of_range(
                "shot frames",
                format!("{}..={}", self.min_shot_frames, self.max_shot_frames),
                "min <= max",
            ));
        }
        for (what, p) in [
            ("same place chance", self.same_place),
            ("fast motion chance", self.fast_motion),
            ("lighting ramp chance", self.lighting_ramp),
            ("similar pair chance", self.similar_pair),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(WorldError::out_of_range(what, p, "a probability in 0..=1"));
            }
        }
        Ok(())
    }
}

/// The character that looks most like `c` (same shape or same colour), if any.
pub fn look_alike(c: CharacterId) -> Option<CharacterId> {
    match c {
        0 => Some(1),
        1 => Some(0),
        2 => Some(3),
        3 => Some(2),
        4 => Some(9),
        9 => Some(4),
        5 => Some(4),
        7 => Some(8),
        8 => Some(7),
        _ => None,
    }
}

/// Draws the story for `seed`. The same seed and options always give the same story.
pub fn generate_story(seed: u64, options: &StoryOptions) -> Result<Story> {
    options.validate()?;
    let mut rng = WorldRng::new(seed);
    let pattern = match options.pattern {
        Some(p) => p,
        None => {
            let fitting: Vec<StoryPattern> =
                StoryPattern::ALL.into_iter().filter(|p| p.min_shots() <= options.max_shots).collect();
            rng.pick(&fitting)
        }
    };
    let n = rng.range(options.min_shots.max(pattern.min_shots()), options.max_shots);
    let a = rng.range(0, CHARACTERS.len() - 1);
    let b = match look_alike(a) {
        Some(b) if rng.chance(options.similar_pair) => b,
        _ => loop {
            let b = rng.range(0, CHARACTERS.len() - 1);
            if b != a {
                break b;
            }
        },
    };
    let casts = casts(pattern, n, a, b, &mut rng);

    let mut specs: Vec<ShotSpec> = Vec::with_capacity(n);
    let mut visited: Vec<Place> = Vec::new();
    for cast in casts {
        let prev = specs.last();
        let place = match prev {
            Some(p) if rng.chance(options.same_place) => p.place,
            Some(p) if visited.len() > 1 && rng.chance(0.3) => {
                let others: Vec<Place> = visited.iter().copied().filter(|&v| v != p.place).collect();
                rng.pick(&others)
            }
            _ => loop {
                let candidate = rng.pick(&Place::ALL);
                if prev.is_none_or(|p| p.place != candidate) {
                    break candidate;
                }
            },
        };
        if !visited.contains(&place) {
            visited.push(place);
        }
        let allowed: &[Framing] = if cast.len() > 1 { &[Framing::Wide, Framing::Medium] } else { &Framing::ALL };
        let framing = loop {
            let f = rng.pick(allowed);
            // A cut inside one place must change the camera, or it would not be a visible cut.
            if prev.is_none_or(|p| p.place != place || p.framing != f) {
                break f;
            }
        };
        let lighting = match prev {
            None => *[Lighting::Day, Lighting::Day, Lighting::Day, Lighting::Dusk, Lighting::Night]
                .get(rng.range(0, 4))
                .unwrap_or(&Lighting::Day),
            Some(p) if rng.chance(0.6) => p.final_lighting(),
            Some(_) => rng.pick(&Lighting::ALL),
        };
        let lighting_end = match lighting {
            Lighting::Day if rng.chance(options.lighting_ramp) => Some(Lighting::Dusk),
            Lighting::Dusk if rng.chance(options.lighting_ramp) => Some(Lighting::Night),
            _ => None,
        };
        let motion = rng.pick(&Motion::ALL);
        let fast = matches!(motion, Motion::WalkLeft | Motion::WalkRight) && rng.chance(options.fast_motion);
        specs.push(ShotSpec {
            place,
            framing,
            lighting,
            lighting_end,
            motion,
            fast,
            characters: cast,
            layout_seed: rng.next_u64(),
            place_look: 0,
            character_looks: Vec::new(),
        });
    }
    if options.varied_looks {
        assign_looks(seed, &mut specs);
    }

    let k_lo = (options.min_shot_frames - 1) / 4;
    let k_hi = (options.max_shot_frames - 1) / 4;
    let mut history = CaptionHistory::default();
    let shots = specs
        .into_iter()
        .map(|spec| {
            let frames = 4 * rng.range(k_lo, k_hi) + 1;
            let caption = shot_caption(&spec, &mut history);
            StoryShot { caption, frames, world: spec }
        })
        .collect::<Vec<_>>();
    let mut story = Story {
        version: STORY_VERSION,
        id: format!("world-{seed:06}"),
        seed,
        pattern,
        format: options.format,
        global_caption: String::new(),
        shots,
    };
    story.global_caption = global_caption(&story);
    Ok(story)
}

/// Gives every character and place of a story one look, the same in each of its shots. The
/// looks come from their own generator so a story's cast, places and layout are those of the
/// same seed without looks.
fn assign_looks(seed: u64, specs: &mut [ShotSpec]) {
    let mut rng = WorldRng::derived(seed, LOOK_SALT);
    let character_looks: Vec<u8> = (0..CHARACTERS.len()).map(|_| rng.range(0, LOOKS - 1) as u8).collect();
    let place_looks: Vec<u8> = (0..Place::ALL.len()).map(|_| rng.range(0, LOOKS - 1) as u8).collect();
    for spec in specs {
        spec.place_look = place_looks[spec.place.index()];
        spec.character_looks = spec.characters.iter().map(|&c| character_looks[c]).collect();
    }
}

/// Salt of the looks' random stream.
const LOOK_SALT: u64 = 0x4c4f_4f4b_5321;

/// Who appears in each shot.
fn casts(pattern: StoryPattern, n: usize, a: CharacterId, b: CharacterId, rng: &mut WorldRng) -> Vec<Vec<CharacterId>> {
    match pattern {
        StoryPattern::MainSubject => vec![vec![a]; n],
        StoryPattern::InsertRecall => {
            let first = rng.range(1, n - 2);
            let inserted = rng.range(1, n - 1 - first);
            (0..n).map(|i| if i >= first && i < first + inserted { vec![b] } else { vec![a] }).collect()
        }
        StoryPattern::Composable => (0..n)
            .map(|i| match i {
                0 => vec![a],
                1 => vec![b],
                2 => vec![a, b],
                _ => match rng.range(0, 3) {
                    0 => vec![a],
                    1 => vec![b],
                    _ => vec![a, b],
                },
            })
            .collect(),
    }
}

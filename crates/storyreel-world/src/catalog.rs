//! Everything a story can be made of: characters (shape × colour × pattern), places, framings,
//! motions and lighting, with the words captions use for each.

use serde::{Deserialize, Serialize};

/// A character's body outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// Pointed top, like ears: foxes.
    Triangle,
    /// Round: owls.
    Circle,
    /// Rounded square: bears.
    Square,
    /// Wide rhombus: fish.
    Diamond,
    /// Tall ellipse: rabbits.
    Ellipse,
}

/// The fill drawn inside a character's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// One colour.
    Plain,
    /// Dark horizontal bands.
    Striped,
    /// Dark dots.
    Spotted,
    /// Alternating light and dark squares.
    Checkered,
}

impl Pattern {
    /// The adjective captions put before the colour (`None` for plain).
    pub fn adjective(self) -> Option<&'static str> {
        match self {
            Pattern::Plain => None,
            Pattern::Striped => Some("striped"),
            Pattern::Spotted => Some("spotted"),
            Pattern::Checkered => Some("checkered"),
        }
    }
}

/// One recurring character of the world.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Character {
    /// Outline.
    pub shape: Shape,
    /// Colour name used in captions.
    pub colour: &'static str,
    /// Body colour, linear-ish sRGB in [0, 1].
    pub rgb: [f32; 3],
    /// Fill pattern.
    pub pattern: Pattern,
    /// The animal word captions use.
    pub noun: &'static str,
}

impl Character {
    /// The phrase that names this character uniquely: `[pattern] colour noun`, e.g. "striped orange fox".
    pub fn phrase(&self) -> String {
        match self.pattern.adjective() {
            Some(adj) => format!("{adj} {} {}", self.colour, self.noun),
            None => format!("{} {}", self.colour, self.noun),
        }
    }
}

/// The world's characters. Pairs 0/1 (red vs orange fox), 2/3 (blue owl, plain vs spotted) and
/// 4/9 (green vs brown bear) are deliberately similar, so consistency metrics have to look closely.
pub const CHARACTERS: [Character; 10] = [
    Character { shape: Shape::Triangle, colour: "red", rgb: [0.86, 0.16, 0.14], pattern: Pattern::Plain, noun: "fox" },
    Character {
        shape: Shape::Triangle,
        colour: "orange",
        rgb: [0.95, 0.50, 0.10],
        pattern: Pattern::Striped,
        noun: "fox",
    },
    Character { shape: Shape::Circle, colour: "blue", rgb: [0.16, 0.32, 0.90], pattern: Pattern::Plain, noun: "owl" },
    Character { shape: Shape::Circle, colour: "blue", rgb: [0.16, 0.32, 0.90], pattern: Pattern::Spotted, noun: "owl" },
    Character { shape: Shape::Square, colour: "green", rgb: [0.15, 0.62, 0.22], pattern: Pattern::Plain, noun: "bear" },
    Character {
        shape: Shape::Square,
        colour: "yellow",
        rgb: [0.96, 0.84, 0.15],
        pattern: Pattern::Checkered,
        noun: "bear",
    },
    Character {
        shape: Shape::Diamond,
        colour: "purple",
        rgb: [0.55, 0.22, 0.75],
        pattern: Pattern::Striped,
        noun: "fish",
    },
    Character {
        shape: Shape::Ellipse,
        colour: "pink",
        rgb: [0.96, 0.52, 0.72],
        pattern: Pattern::Plain,
        noun: "rabbit",
    },
    Character {
        shape: Shape::Ellipse,
        colour: "white",
        rgb: [0.95, 0.95, 0.93],
        pattern: Pattern::Spotted,
        noun: "rabbit",
    },
    Character {
        shape: Shape::Square,
        colour: "brown",
        rgb: [0.50, 0.32, 0.16],
        pattern: Pattern::Striped,
        noun: "bear",
    },
];

/// Index into [`CHARACTERS`].
pub type CharacterId = usize;

/// A textured background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// Green grass under a blue sky.
    Meadow,
    /// Sand, sea and sky.
    Beach,
    /// Dark trunks on a green floor.
    Forest,
    /// Grey buildings with windows.
    City,
    /// Orange dunes.
    Desert,
    /// White snow under a pale sky.
    Snowfield,
}

impl Place {
    /// Every place, in a fixed order (the probe's class order).
    pub const ALL: [Place; 6] =
        [Place::Meadow, Place::Beach, Place::Forest, Place::City, Place::Desert, Place::Snowfield];

    /// The noun captions use.
    pub fn noun(self) -> &'static str {
        match self {
            Place::Meadow => "meadow",
            Place::Beach => "beach",
            Place::Forest => "forest",
            Place::City => "city",
            Place::Desert => "desert",
            Place::Snowfield => "snowfield",
        }
    }

    /// The preposition captions use ("in the meadow", "on the beach").
    pub fn preposition(self) -> &'static str {
        match self {
            Place::Beach | Place::Snowfield => "on",
            _ => "in",
        }
    }

    /// Position in [`Place::ALL`].
    pub fn index(self) -> usize {
        Place::ALL.iter().position(|&p| p == self).unwrap_or(0)
    }
}

/// How close the camera is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// The whole place, small characters.
    Wide,
    /// Characters at about half the frame height.
    Medium,
    /// One character filling most of the frame.
    CloseUp,
}

impl Framing {
    /// Every framing, in a fixed order (the probe's class order).
    pub const ALL: [Framing; 3] = [Framing::Wide, Framing::Medium, Framing::CloseUp];

    /// The phrase captions use.
    pub fn phrase(self) -> &'static str {
        match self {
            Framing::Wide => "wide shot",
            Framing::Medium => "medium shot",
            Framing::CloseUp => "close-up",
        }
    }

    /// A character's height as a fraction of the frame height.
    pub fn character_height(self) -> f32 {
        match self {
            Framing::Wide => 0.24,
            Framing::Medium => 0.46,
            Framing::CloseUp => 0.74,
        }
    }

    /// How much the background is magnified relative to the wide shot.
    pub fn zoom(self) -> f32 {
        match self {
            Framing::Wide => 1.0,
            Framing::Medium => 1.8,
            Framing::CloseUp => 3.2,
        }
    }

    /// Position in [`Framing::ALL`].
    pub fn index(self) -> usize {
        Framing::ALL.iter().position(|&f| f == self).unwrap_or(0)
    }
}

/// What the characters of a shot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Motion {
    /// Move towards the left edge.
    WalkLeft,
    /// Move towards the right edge.
    WalkRight,
    /// Hop up and down.
    Jump,
    /// Turn to face the other way.
    Turn,
    /// Get bigger.
    Grow,
}

impl Motion {
    /// Every motion, in a fixed order.
    pub const ALL: [Motion; 5] = [Motion::WalkLeft, Motion::WalkRight, Motion::Jump, Motion::Turn, Motion::Grow];

    /// The verb phrase for one subject (`fast` walks become runs).
    pub fn verb(self, plural: bool, fast: bool) -> &'static str {
        match (self, plural, fast) {
            (Motion::WalkLeft, false, false) => "walks left",
            (Motion::WalkLeft, false, true) => "runs left",
            (Motion::WalkLeft, true, false) => "walk left",
            (Motion::WalkLeft, true, true) => "run left",
            (Motion::WalkRight, false, false) => "walks right",
            (Motion::WalkRight, false, true) => "runs right",
            (Motion::WalkRight, true, false) => "walk right",
            (Motion::WalkRight, true, true) => "run right",
            (Motion::Jump, false, _) => "jumps",
            (Motion::Jump, true, _) => "jump",
            (Motion::Turn, false, _) => "turns around",
            (Motion::Turn, true, _) => "turn around",
            (Motion::Grow, false, _) => "grows bigger",
            (Motion::Grow, true, _) => "grow bigger",
        }
    }
}

/// The light of a shot: a colour tint over the whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lighting {
    /// No tint.
    Day,
    /// Warm and dimmer.
    Dusk,
    /// Blue and dark.
    Night,
}

impl Lighting {
    /// Every lighting, in a fixed order.
    pub const ALL: [Lighting; 3] = [Lighting::Day, Lighting::Dusk, Lighting::Night];

    /// The phrase captions use ("in daylight", "at dusk", "at night").
    pub fn phrase(self) -> &'static str {
        match self {
            Lighting::Day => "in daylight",
            Lighting::Dusk => "at dusk",
            Lighting::Night => "at night",
        }
    }

    /// The word naming this light after "turning to".
    pub fn noun(self) -> &'static str {
        match self {
            Lighting::Day => "daylight",
            Lighting::Dusk => "dusk",
            Lighting::Night => "night",
        }
    }

    /// Per-channel gain and lift applied as `c * gain + lift`.
    pub fn tint(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Lighting::Day => ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]),
            Lighting::Dusk => ([0.92, 0.62, 0.48], [0.06, 0.02, 0.03]),
            Lighting::Night => ([0.30, 0.36, 0.62], [0.01, 0.02, 0.06]),
        }
    }
}

/// How many looks each character and each place comes in. Captions never name a look, so only
/// a story's earlier frames tell a model which one this story uses (what context is for).
pub const LOOKS: usize = 3;

/// The scarf a character wears in `look`: none in look 0 (the catalogue's plain character), a
/// cyan one in look 1, a white one in look 2 (black on the white rabbit, where white would vanish).
pub fn scarf_colour(character: CharacterId, look: u8) -> Option<[f32; 3]> {
    match look {
        1 => Some([0.05, 0.80, 0.85]),
        2 if CHARACTERS.get(character).is_some_and(|c| c.colour == "white") => Some([0.08, 0.08, 0.10]),
        2 => Some([0.97, 0.97, 0.95]),
        _ => None,
    }
}

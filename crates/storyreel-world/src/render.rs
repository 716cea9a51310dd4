//! The procedural renderer: a shot's background is drawn once (the camera is still within a
//! shot), then each frame composites the characters at their positions, applies the light and
//! adds a little film grain. Everything is a pure function of the story, so frames and ground
//! truth are identical on every run and machine.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use storyreel_media::RgbFrame;

use crate::catalog::{
    scarf_colour, Character, CharacterId, Framing, Lighting, Motion, Pattern, Place, Shape, CHARACTERS, LOOKS,
};
use crate::error::Result;
use crate::rng::{fbm, hash01, value_noise, WorldRng};
use crate::story::{ShotSpec, Story, VideoFormat};

/// Where one character is in one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CharacterTruth {
    /// Which character.
    pub character: CharacterId,
    /// Bounding box `[x0, y0, x1, y1]` in pixels, clipped to the frame.
    pub bbox: [f32; 4],
    /// +1 facing right, −1 facing left.
    pub facing: i8,
    /// The character's look in this story ([`crate::catalog::LOOKS`]).
    #[serde(default)]
    pub look: u8,
}

/// Exact ground truth of one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameTruth {
    /// 0-based shot index.
    pub shot: usize,
    /// Frame index within the shot.
    pub frame_in_shot: usize,
    /// Background.
    pub place: Place,
    /// The place's look in this story.
    #[serde(default)]
    pub place_look: u8,
    /// Camera distance.
    pub framing: Framing,
    /// The light this frame is closest to.
    pub lighting: Lighting,
    /// What the characters do.
    pub motion: Motion,
    /// Characters in view, left to right as laid out.
    pub characters: Vec<CharacterTruth>,
}

/// A rendered story: its frames, their ground truth and where the cuts are.
#[derive(Debug, Clone)]
pub struct RenderedStory {
    /// Every frame, shots back to back.
    pub frames: Vec<RgbFrame>,
    /// Ground truth per frame.
    pub truth: Vec<FrameTruth>,
    /// Frame index at which each shot after the first starts.
    pub cuts: Vec<usize>,
}

/// Renders every shot of `story`.
pub fn render_story(story: &Story) -> Result<RenderedStory> {
    story.validate()?;
    let mut frames = Vec::with_capacity(story.total_frames());
    let mut truth = Vec::with_capacity(story.total_frames());
    for (i, shot) in story.shots.iter().enumerate() {
        let (f, t) = render_shot(&shot.world, i, shot.frames, story.format)?;
        frames.extend(f);
        truth.extend(t);
    }
    Ok(RenderedStory { frames, truth, cuts: story.cut_frames() })
}

/// Renders one shot of `frames` frames.
pub fn render_shot(
    spec: &ShotSpec,
    shot_index: usize,
    frames: usize,
    format: VideoFormat,
) -> Result<(Vec<RgbFrame>, Vec<FrameTruth>)> {
    format.validate()?;
    let layout = ShotLayout::new(spec, format);
    let background = render_background(spec, &layout, format);
    let rendered: Vec<(RgbFrame, FrameTruth)> = (0..frames)
        .into_par_iter()
        .map(|f| {
            let t = if frames > 1 { f as f32 / (frames - 1) as f32 } else { 0.0 };
            let poses = layout.poses(spec, t);
            let frame = compose_frame(spec, &background, &poses, t, f, shot_index, format)?;
            let truth = FrameTruth {
                shot: shot_index,
                frame_in_shot: f,
                place: spec.place,
                place_look: spec.place_look,
                framing: spec.framing,
                lighting: if t < 0.5 { spec.lighting } else { spec.final_lighting() },
                motion: spec.motion,
                characters: poses.iter().map(|p| p.truth(format)).collect(),
            };
            Ok((frame, truth))
        })
        .collect::<Result<_>>()?;
    Ok(rendered.into_iter().unzip())
}

/// Width over height of each outline.
fn aspect(shape: Shape) -> f32 {
    match shape {
        Shape::Triangle => 0.9,
        Shape::Circle => 1.0,
        Shape::Square => 0.9,
        Shape::Diamond => 1.4,
        Shape::Ellipse => 0.62,
    }
}

/// The fixed parts of a shot's staging.
struct ShotLayout {
    /// Character height in pixels at scale 1.
    height_px: f32,
    /// Horizontal offsets of each character from the group centre, in pixels.
    offsets: Vec<f32>,
    /// Group centre x at t = 0 and t = 1, in pixels.
    x_start: f32,
    x_end: f32,
    /// Feet line (or centre line for close-ups), in pixels.
    anchor_y: f32,
    /// Whether `anchor_y` is the feet (true) or the centre (false).
    feet_anchor: bool,
    /// Initial facing of each character.
    facing: Vec<i8>,
    /// Camera focus in scene units.
    focus: (f32, f32),
}

impl ShotLayout {
    fn new(spec: &ShotSpec, format: VideoFormat) -> Self {
        let mut rng = WorldRng::new(spec.layout_seed);
        let (w, h) = (format.width as f32, format.height as f32);
        let pair = spec.characters.len() > 1;
        let height_px = h * spec.framing.character_height() * if pair { 0.8 } else { 1.0 };
        let widths: Vec<f32> = spec.characters.iter().map(|&c| height_px * aspect(CHARACTERS[c].shape)).collect();
        let gap = 0.25 * height_px;
        let group_width: f32 = widths.iter().sum::<f32>() + gap * (widths.len() as f32 - 1.0);
        let mut offsets = Vec::new();
        let mut left = -group_width / 2.0;
        for cw in &widths {
            offsets.push(left + cw / 2.0);
            left += cw + gap;
        }
        // Growing and turning change the extent; keep the largest extent inside the frame.
        let max_scale = if spec.motion == Motion::Grow { grow_scale(spec.framing, 1.0) } else { 1.0 };
        let half = group_width * max_scale / 2.0 + 0.03 * w;
        let (lo, hi) = (half.min(w / 2.0), (w - half).max(w / 2.0));
        let span = hi - lo;
        let desired = match spec.motion {
            Motion::WalkLeft | Motion::WalkRight => {
                let base = match spec.framing {
                    Framing::Wide => 0.45,
                    Framing::Medium => 0.3,
                    Framing::CloseUp => 0.18,
                } * w;
                (if spec.fast { base * 2.0 } else { base }).min(span)
            }
            _ => 0.0,
        };
        let start_offset = rng.range_f(0.0, (span - desired).max(0.0) as f64) as f32;
        let (x_start, x_end) = match spec.motion {
            Motion::WalkRight => (lo + start_offset, lo + start_offset + desired),
            Motion::WalkLeft => (hi - start_offset, hi - start_offset - desired),
            _ => {
                let x = lo + start_offset;
                (x, x)
            }
        };
        let (anchor_y, feet_anchor) = match spec.framing {
            Framing::Wide => (h * 0.86, true),
            Framing::Medium => (h * 0.93, true),
            Framing::CloseUp => (h * 0.52, false),
        };
        let facing = spec
            .characters
            .iter()
            .map(|_| match spec.motion {
                Motion::WalkLeft => -1,
                Motion::WalkRight => 1,
                _ => {
                    if rng.chance(0.5) {
                        1
                    } else {
                        -1
                    }
                }
            })
            .collect();
        let focus = (0.5 + rng.range_f(-0.15, 0.15) as f32, 0.62 + rng.range_f(-0.05, 0.05) as f32);
        Self { height_px, offsets, x_start, x_end, anchor_y, feet_anchor, facing, focus }
    }

    fn poses(&self, spec: &ShotSpec, t: f32) -> Vec<Pose> {
        let cx = self.x_start + (self.x_end - self.x_start) * t;
        spec.characters
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let ch = &CHARACTERS[c];
                let scale = if spec.motion == Motion::Grow { grow_scale(spec.framing, t) } else { 1.0 };
                let hh = self.height_px * scale / 2.0;
                let hw = hh * aspect(ch.shape);
                let (mut squash, mut facing) = (1.0, self.facing[i]);
                if spec.motion == Motion::Turn {
                    squash = (std::f32::consts::PI * t).cos().abs().max(0.15);
                    if t >= 0.5 {
                        facing = -facing;
                    }
                }
                let lift = if spec.motion == Motion::Jump {
                    let jumps = if spec.fast { 2.0 } else { 1.0 };
                    let height = match spec.framing {
                        Framing::Wide => 0.5,
                        Framing::Medium => 0.35,
                        Framing::CloseUp => 0.18,
                    } * self.height_px;
                    height * (std::f32::consts::PI * jumps * t).sin().abs()
                } else {
                    0.0
                };
                let cy = if self.feet_anchor { self.anchor_y - hh } else { self.anchor_y } - lift;
                // Walkers bob a little with each step.
                let bob = if matches!(spec.motion, Motion::WalkLeft | Motion::WalkRight) {
                    (t * 12.0 * std::f32::consts::PI).sin().abs() * 0.04 * hh
                } else {
                    0.0
                };
                Pose {
                    character: c,
                    look: spec.character_look(i),
                    cx: cx + self.offsets[i] * scale,
                    cy: cy - bob,
                    half_w: hw * squash,
                    half_h: hh,
                    facing,
                    ground_y: if self.feet_anchor { Some(self.anchor_y) } else { None },
                }
            })
            .collect()
    }
}

/// Scale of a growing character at `t`; close-ups grow less so they stay in frame.
fn grow_scale(framing: Framing, t: f32) -> f32 {
    let (from, to) = match framing {
        Framing::CloseUp => (0.75, 1.2),
        _ => (0.7, 1.35),
    };
    from + (to - from) * t
}

/// A character's placement in one frame.
struct Pose {
    character: CharacterId,
    look: u8,
    cx: f32,
    cy: f32,
    half_w: f32,
    half_h: f32,
    facing: i8,
    ground_y: Option<f32>,
}

impl Pose {
    fn truth(&self, format: VideoFormat) -> CharacterTruth {
        let (w, h) = (format.width as f32, format.height as f32);
        CharacterTruth {
            character: self.character,
            bbox: [
                (self.cx - self.half_w).clamp(0.0, w),
                (self.cy - self.half_h).clamp(0.0, h),
                (self.cx + self.half_w).clamp(0.0, w),
                (self.cy + self.half_h).clamp(0.0, h),
            ],
            facing: self.facing,
            look: self.look,
        }
    }
}

/// The still background of a shot, RGB in [0, 1], row-major.
fn render_background(spec: &ShotSpec, layout: &ShotLayout, format: VideoFormat) -> Vec<[f32; 3]> {
    let (w, h) = (format.width as usize, format.height as usize);
    let zoom = spec.framing.zoom();
    let aspect_ratio = w as f32 / h as f32;
    let mut out = vec![[0.0f32; 3]; w * h];
    out.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        for (x, px) in row.iter_mut().enumerate() {
            // Scene coordinates: the wide shot spans x in [0, aspect], y in [0, 1].
            let u = ((x as f32 + 0.5) / w as f32 - 0.5) * aspect_ratio / zoom + layout.focus.0 * aspect_ratio;
            let v = ((y as f32 + 0.5) / h as f32 - 0.5) / zoom + layout.focus.1;
            *px = place_colour(spec.place, spec.place_look, u, v);
        }
    });
    out
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

fn scale(c: [f32; 3], s: f32) -> [f32; 3] {
    [c[0] * s, c[1] * s, c[2] * s]
}

fn sky(v: f32, top: [f32; 3], bottom: [f32; 3], u: f32, clouds: bool) -> [f32; 3] {
    let base = mix(top, bottom, (v / 0.5).clamp(0.0, 1.0));
    if clouds {
        let c = fbm(11, u * 4.0, v * 9.0);
        let amount = ((c - 0.6) * 3.0).clamp(0.0, 0.7);
        mix(base, [0.97, 0.97, 0.98], amount)
    } else {
        base
    }
}

/// The colour of `place` in `look` at scene point (u, v). Look 0 is the catalogue's place; the
/// others change its palette, its sky and the seeds of its texture (where buildings stand, how
/// dense the trees are), as two meadows or two cities differ, without changing what kind of place
/// it is. The looks are bold on purpose: a look only a few percent of the frame's error can tell
/// apart gives a model little reason to read it from context (`storyreel train check-looks`
/// measures this per place).
fn place_colour(place: Place, look: u8, u: f32, v: f32) -> [f32; 3] {
    let l = (look as usize).min(LOOKS - 1);
    // Texture seeds move with the look; look 0 keeps the original seeds.
    let s = |base: u64| base + 100 * l as u64;
    match place {
        Place::Meadow => {
            // Green under a blue sky, golden under a hazy one, blue-green under a storm.
            const GRASS: [[f32; 3]; LOOKS] = [[0.30, 0.64, 0.24], [0.80, 0.70, 0.26], [0.08, 0.40, 0.42]];
            const FLOWER: [[f32; 3]; LOOKS] = [[0.98, 0.9, 0.3], [0.97, 0.97, 0.97], [0.92, 0.18, 0.26]];
            const DENSITY: [f32; LOOKS] = [0.985, 0.975, 0.97];
            const SKY: [[[f32; 3]; 2]; LOOKS] = [
                [[0.36, 0.60, 0.92], [0.68, 0.84, 0.98]],
                [[0.80, 0.62, 0.40], [0.98, 0.86, 0.62]],
                [[0.30, 0.32, 0.42], [0.56, 0.58, 0.66]],
            ];
            if v < 0.45 {
                sky(v, SKY[l][0], SKY[l][1], u, true)
            } else {
                let n = fbm(s(21), u * 18.0, v * 30.0);
                let blade = ((u * 140.0 + value_noise(s(22), u * 8.0, v * 8.0) * 6.0).sin() * 0.5 + 0.5) * 0.12;
                let base = scale(GRASS[l], 0.8 + 0.35 * n - blade);
                let flower = hash01(s(23), (u * 60.0) as i64, (v * 60.0) as i64);
                if flower > DENSITY[l] {
                    FLOWER[l]
                } else {
                    base
                }
            }
        }
        Place::Beach => {
            // Golden sand under a blue sky, white sand by a lagoon at sunset, black sand under cloud.
            const SEA: [[f32; 3]; LOOKS] = [[0.08, 0.40, 0.70], [0.10, 0.72, 0.66], [0.06, 0.14, 0.30]];
            const SAND: [[f32; 3]; LOOKS] = [[0.94, 0.84, 0.60], [0.99, 0.97, 0.94], [0.30, 0.27, 0.26]];
            const SKY: [[[f32; 3]; 2]; LOOKS] = [
                [[0.30, 0.62, 0.95], [0.72, 0.88, 1.0]],
                [[0.62, 0.40, 0.62], [0.98, 0.70, 0.55]],
                [[0.45, 0.48, 0.52], [0.70, 0.72, 0.74]],
            ];
            if v < 0.40 {
                sky(v, SKY[l][0], SKY[l][1], u, true)
            } else if v < 0.56 {
                let wave = ((u * 40.0 + (v * 90.0).sin() * 2.0).sin() * 0.5 + 0.5) * 0.15;
                scale(SEA[l], 0.9 + wave + 0.2 * fbm(s(31), u * 10.0, v * 25.0))
            } else {
                let n = fbm(s(32), u * 40.0, v * 40.0);
                scale(SAND[l], 0.88 + 0.18 * n)
            }
        }
        Place::Forest => {
            // Summer green, autumn brown, spring blossom.
            const LEAVES: [[f32; 3]; LOOKS] = [[0.10, 0.34, 0.14], [0.80, 0.42, 0.08], [0.86, 0.52, 0.64]];
            const FLOOR: [[f32; 3]; LOOKS] = [[0.28, 0.36, 0.14], [0.58, 0.36, 0.12], [0.56, 0.46, 0.42]];
            const TRUNKS: [f32; LOOKS] = [5.5, 3.8, 8.0];
            let trunk_phase = (u * TRUNKS[l] + value_noise(s(41), v * 2.0, 0.0) * 0.15).fract();
            let trunk_id = (u * TRUNKS[l]).floor() as i64;
            let trunk_width = 0.16 + 0.12 * hash01(s(42), trunk_id, 0);
            if v > 0.72 {
                let n = fbm(s(43), u * 25.0, v * 25.0);
                scale(FLOOR[l], 0.8 + 0.4 * n)
            } else if trunk_phase < trunk_width {
                let bark = ((v * 80.0 + u * 10.0).sin() * 0.5 + 0.5) * 0.2;
                scale([0.36, 0.23, 0.12], 0.85 + bark)
            } else {
                let n = fbm(s(44), u * 12.0, v * 12.0);
                scale(LEAVES[l], 0.6 + 0.8 * n)
            }
        }
        Place::City => {
            // Grey concrete under a pale sky, red brick under smog, blue glass under a night sky.
            const SKY: [[[f32; 3]; 2]; LOOKS] = [
                [[0.55, 0.66, 0.80], [0.78, 0.82, 0.88]],
                [[0.80, 0.52, 0.32], [0.96, 0.76, 0.52]],
                [[0.06, 0.08, 0.22], [0.18, 0.20, 0.40]],
            ];
            const WALL: [[f32; 3]; LOOKS] = [[1.0, 0.98, 1.05], [1.45, 0.72, 0.52], [0.72, 0.92, 1.40]];
            const COLUMNS: [f32; LOOKS] = [7.0, 5.0, 9.0];
            const WINDOW_COLUMNS: [f32; LOOKS] = [28.0, 20.0, 36.0];
            let cols = COLUMNS[l];
            let col = (u * cols).floor() as i64;
            let top = 0.12 + 0.35 * hash01(s(51), col, 1);
            if v > 0.80 {
                let stripe = if ((u * 12.0).fract() < 0.5) && v > 0.88 && v < 0.90 { 0.4 } else { 0.0 };
                mix(scale([0.30, 0.30, 0.33], 0.9 + 0.2 * fbm(s(52), u * 30.0, v * 30.0)), [0.95, 0.95, 0.9], stripe)
            } else if v < top {
                sky(v, SKY[l][0], SKY[l][1], u, false)
            } else {
                let tone = 0.35 + 0.35 * hash01(s(53), col, 2);
                let wall = [tone * WALL[l][0], tone * WALL[l][1], tone * WALL[l][2]];
                let (wx, wy) = ((u * cols).fract(), v * 22.0);
                let window = wx > 0.15 && wx < 0.85 && ((wx * 4.0).fract() < 0.55) && (wy.fract() < 0.55);
                if window {
                    let lit = hash01(s(54), (u * WINDOW_COLUMNS[l]) as i64, wy as i64) > 0.45;
                    if lit {
                        [0.92, 0.85, 0.50]
                    } else {
                        [0.15, 0.17, 0.22]
                    }
                } else {
                    wall
                }
            }
        }
        Place::Desert => {
            const DUNES: [[f32; 3]; LOOKS] = [[0.90, 0.58, 0.28], [0.95, 0.84, 0.60], [0.72, 0.30, 0.18]];
            const PHASE: [f32; LOOKS] = [0.0, 1.3, 2.6];
            let horizon = 0.42 + 0.05 * (u * 3.0 + PHASE[l]).sin();
            if v < horizon {
                sky(v, [0.92, 0.72, 0.45], [0.99, 0.90, 0.70], u, false)
            } else {
                let dune = ((u * 6.0 + v * 18.0 + (u * 2.0 + PHASE[l]).sin() * 2.0).sin() * 0.5 + 0.5) * 0.22;
                let n = fbm(s(61), u * 35.0, v * 35.0);
                scale(DUNES[l], 0.8 + dune + 0.12 * n)
            }
        }
        Place::Snowfield => {
            // Blue-grey peaks over white snow; dark rock over deep blue-shadowed snow under an
            // overcast sky; pine-covered slopes over rock-strewn snow lit pink by alpenglow.
            const PEAKS: [[f32; 3]; LOOKS] = [[0.55, 0.62, 0.75], [0.30, 0.31, 0.34], [0.18, 0.40, 0.28]];
            const SNOW: [[f32; 3]; LOOKS] = [[0.93, 0.95, 0.99], [0.62, 0.74, 0.96], [0.98, 0.86, 0.80]];
            // A snow cell is a rock when its hash exceeds this (never at 1.0).
            const ROCKS: [f32; LOOKS] = [1.0, 1.0, 0.95];
            const SKY: [[[f32; 3]; 2]; LOOKS] = [
                [[0.66, 0.78, 0.93], [0.85, 0.90, 0.97]],
                [[0.50, 0.52, 0.56], [0.72, 0.73, 0.76]],
                [[0.70, 0.50, 0.70], [0.98, 0.76, 0.70]],
            ];
            let ridge = 0.40 - 0.10 * (1.0 - ((u * 3.3).fract() * 2.0 - 1.0).abs()) - 0.04 * fbm(s(71), u * 6.0, 0.0);
            if v < ridge {
                sky(v, SKY[l][0], SKY[l][1], u, true)
            } else if v < 0.46 {
                scale(PEAKS[l], 0.9 + 0.2 * fbm(s(72), u * 20.0, v * 20.0))
            } else {
                let n = fbm(s(73), u * 30.0, v * 30.0);
                if ROCKS[l] < 1.0 && hash01(s(74), (u * 40.0) as i64, (v * 40.0) as i64) > ROCKS[l] {
                    [0.32, 0.30, 0.30]
                } else {
                    scale(SNOW[l], 0.9 + 0.1 * n)
                }
            }
        }
    }
}

/// Coverage in [0, 1] of a pixel at body coordinates (bu, bv) in [-1, 1]², given the pixel size
/// in body units; signed distances are approximate but monotone, which is all anti-aliasing needs.
fn coverage(shape: Shape, bu: f32, bv: f32, pixel: f32) -> f32 {
    let d = match shape {
        Shape::Circle | Shape::Ellipse => (bu * bu + bv * bv).sqrt() - 1.0,
        Shape::Square => (bu.powi(4) + bv.powi(4)).powf(0.25) - 1.0,
        Shape::Diamond => (bu.abs() + bv.abs() - 1.0) / std::f32::consts::SQRT_2,
        Shape::Triangle => (bv - 1.0).max((2.0 * bu.abs() - (bv + 1.0)) / 5.0f32.sqrt()),
    };
    (0.5 - d / pixel).clamp(0.0, 1.0)
}

/// The body colour at body coordinates, pattern, scarf and shading included.
fn body_colour(ch: &Character, look: u8, id: CharacterId, bu: f32, bv: f32, facing: i8) -> [f32; 3] {
    let dark = scale(ch.rgb, 0.42);
    let mut c = match ch.pattern {
        Pattern::Plain => ch.rgb,
        Pattern::Striped => {
            if (bv * 3.0 + 10.0).fract() < 0.38 {
                dark
            } else {
                ch.rgb
            }
        }
        Pattern::Spotted => {
            let (gu, gv) = ((bu * 2.2 + 10.5).fract() - 0.5, (bv * 2.2 + 10.5).fract() - 0.5);
            if gu * gu + gv * gv < 0.07 {
                dark
            } else {
                ch.rgb
            }
        }
        Pattern::Checkered => {
            let parity = ((bu * 2.5 + 10.0).floor() as i64 + (bv * 2.5 + 10.0).floor() as i64) & 1;
            if parity == 0 {
                scale(ch.rgb, 0.6)
            } else {
                ch.rgb
            }
        }
    };
    // The scarf sits just below the eyes: low on the pointed outline, mid-body on the others.
    let scarf_band = match ch.shape {
        Shape::Triangle => (0.38, 0.68),
        _ => (0.0, 0.34),
    };
    if let Some(scarf) = scarf_colour(id, look) {
        if bv > scarf_band.0 && bv < scarf_band.1 {
            c = scarf;
        }
    }
    c = scale(c, 1.06 - 0.12 * (bv + 1.0) / 2.0);
    // Eyes: two dark dots high on the body, shifted towards the facing side.
    let eye_v = match ch.shape {
        Shape::Triangle => 0.1,
        _ => -0.35,
    };
    let shift = 0.22 * facing as f32;
    for ex in [-0.26, 0.26] {
        let (du, dv) = (bu - (ex + shift), bv - eye_v);
        if du * du + dv * dv < 0.018 {
            return [0.06, 0.05, 0.07];
        }
    }
    c
}

/// One frame: background, shadows, characters, light, grain, quantised to 8 bits.
fn compose_frame(
    spec: &ShotSpec,
    background: &[[f32; 3]],
    poses: &[Pose],
    t: f32,
    frame_index: usize,
    shot_index: usize,
    format: VideoFormat,
) -> Result<RgbFrame> {
    let (w, h) = (format.width as usize, format.height as usize);
    let (gain, lift) = light_at(spec, t);
    let grain_seed = spec.layout_seed ^ ((shot_index as u64) << 32) ^ frame_index as u64;
    let mut data = vec![0u8; w * h * 3];
    data.par_chunks_mut(w * 3).enumerate().for_each(|(y, row)| {
        let py = y as f32 + 0.5;
        for x in 0..w {
            let px = x as f32 + 0.5;
            let mut c = background[y * w + x];
            for pose in poses {
                if let Some(ground) = pose.ground_y {
                    let (du, dv) =
                        ((px - pose.cx) / (pose.half_w.max(1.0) * 1.1), (py - ground) / (0.12 * pose.half_h + 0.8));
                    let r = du * du + dv * dv;
                    if r < 1.0 {
                        c = scale(c, 1.0 - 0.35 * (1.0 - r));
                    }
                }
            }
            for pose in poses {
                let ch = &CHARACTERS[pose.character];
                let (bu, bv) = ((px - pose.cx) / pose.half_w, (py - pose.cy) / pose.half_h);
                if bu.abs() > 1.2 || bv.abs() > 1.2 {
                    continue;
                }
                let a = coverage(ch.shape, bu, bv, 1.0 / pose.half_w.min(pose.half_h).max(0.5));
                if a > 0.0 {
                    c = mix(c, body_colour(ch, pose.look, pose.character, bu, bv, pose.facing), a);
                }
            }
            let grain = (hash01(grain_seed, x as i64, y as i64) - 0.5) * 0.025;
            for k in 0..3 {
                let v = c[k] * gain[k] + lift[k] + grain;
                row[x * 3 + k] = (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
            }
        }
    });
    Ok(RgbFrame::new(format.width, format.height, data)?)
}

/// The light's gain and lift at shot time `t`, blending across a ramp.
fn light_at(spec: &ShotSpec, t: f32) -> ([f32; 3], [f32; 3]) {
    let (g0, l0) = spec.lighting.tint();
    match spec.lighting_end {
        None => (g0, l0),
        Some(end) => {
            let (g1, l1) = end.tint();
            let s = t * t * (3.0 - 2.0 * t);
            (mix(g0, g1, s), mix(l0, l1, s))
        }
    }
}

//! Shot-boundary detector on synthetic 64×64 clips: cuts it must find, in-shot changes it must
//! ignore, the streaming path, configuration errors and the cut-scoring helper.

use storyreel_media::RgbFrame;
use storyreel_world::detect::{
    cuts_from_scores, cuts_to_ranges, detect_cuts, frame_scores, score_cuts, CutScore, DetectorConfig, ShotDetector,
};
use storyreel_world::WorldError;

const SIZE: u32 = 64;

/// Deterministic 0..1 hash of integer coordinates.
fn hash(x: i64, y: i64, seed: u64) -> f32 {
    let mut h = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ seed.wrapping_mul(0x1656_67B1_9E37_79F9);
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Smooth value noise: bilinear interpolation of the lattice hash.
fn value_noise(u: f32, v: f32, seed: u64) -> f32 {
    let (x0, y0) = (u.floor(), v.floor());
    let (fx, fy) = (u - x0, v - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let top = hash(x0, y0, seed) * (1.0 - fx) + hash(x0 + 1, y0, seed) * fx;
    let bottom = hash(x0, y0 + 1, seed) * (1.0 - fx) + hash(x0 + 1, y0 + 1, seed) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// A textured backdrop: two colours mixed by noise, plus an optional stripe pattern.
#[derive(Clone, Copy)]
struct Backdrop {
    a: [f32; 3],
    b: [f32; 3],
    cell: f32,
    stripes: bool,
    seed: u64,
}

const MEADOW: Backdrop =
    Backdrop { a: [60.0, 150.0, 50.0], b: [140.0, 200.0, 70.0], cell: 5.0, stripes: false, seed: 1 };
const BEACH: Backdrop =
    Backdrop { a: [225.0, 205.0, 150.0], b: [40.0, 110.0, 200.0], cell: 9.0, stripes: false, seed: 2 };
const FOREST: Backdrop = Backdrop { a: [25.0, 70.0, 30.0], b: [90.0, 60.0, 30.0], cell: 4.0, stripes: true, seed: 3 };
const CITY: Backdrop = Backdrop { a: [90.0, 95.0, 105.0], b: [170.0, 175.0, 185.0], cell: 3.0, stripes: true, seed: 4 };
const DESERT: Backdrop =
    Backdrop { a: [215.0, 150.0, 70.0], b: [180.0, 110.0, 50.0], cell: 8.0, stripes: false, seed: 5 };
const SNOW: Backdrop =
    Backdrop { a: [235.0, 238.0, 245.0], b: [190.0, 205.0, 230.0], cell: 6.0, stripes: false, seed: 6 };

impl Backdrop {
    fn colour(&self, u: f32, v: f32) -> [f32; 3] {
        let mut t = value_noise(u / self.cell, v / self.cell, self.seed);
        if self.stripes && (u / (2.5 * self.cell)).sin() > 0.6 {
            t = 1.0 - t * 0.3;
        }
        [0, 1, 2].map(|k| self.a[k] + (self.b[k] - self.a[k]) * t)
    }
}

/// A striped square in screen pixels; `cx` wraps around the frame so it can move forever.
#[derive(Clone, Copy)]
struct Square {
    cx: f32,
    cy: f32,
    half: f32,
    rgb: [f32; 3],
}

/// How one frame is drawn: backdrop seen through a camera, squares, light and grain.
#[derive(Clone, Copy)]
struct View {
    backdrop: Backdrop,
    /// Scene point at the frame centre and magnification.
    centre: (f32, f32),
    zoom: f32,
    squares: [Option<Square>; 2],
    /// Per-channel gain (lighting and tint).
    gain: [f32; 3],
    /// Amplitude and seed of fresh per-pixel noise.
    noise: Option<(f32, u64)>,
}

impl View {
    fn new(backdrop: Backdrop) -> Self {
        Self { backdrop, centre: (100.0, 100.0), zoom: 1.0, squares: [None, None], gain: [1.0; 3], noise: None }
    }

    fn with_square(mut self, square: Square) -> Self {
        self.squares[0] = Some(square);
        self
    }

    fn render(&self) -> RgbFrame {
        let half = SIZE as f32 / 2.0;
        RgbFrame::from_fn(SIZE, SIZE, |x, y| {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let u = self.centre.0 + (px - half) / self.zoom;
            let v = self.centre.1 + (py - half) / self.zoom;
            let mut c = self.backdrop.colour(u, v);
            for sq in self.squares.iter().flatten() {
                // 4×4 supersampling: like a real renderer's anti-aliasing, it lets a growing or
                // slowly moving square change the image a little every frame instead of
                // snapping a whole row of pixels at once.
                let mut sum = [0.0f32; 3];
                let mut hits = 0.0f32;
                for sy in 0..4 {
                    for sx in 0..4 {
                        let (qx, qy) = (x as f32 + (sx as f32 + 0.5) / 4.0, y as f32 + (sy as f32 + 0.5) / 4.0);
                        let dx = (qx - sq.cx).rem_euclid(SIZE as f32);
                        let dx = dx.min(SIZE as f32 - dx);
                        let dy = qy - sq.cy;
                        if dx < sq.half && dy.abs() < sq.half {
                            // Four bands whatever the size, so the pattern scales with the square.
                            let band = ((dy + sq.half) / sq.half * 2.0).floor() as i64 % 2 == 0;
                            let col = if band { sq.rgb } else { sq.rgb.map(|v| v * 0.6) };
                            for k in 0..3 {
                                sum[k] += col[k];
                            }
                            hits += 1.0;
                        }
                    }
                }
                let a = hits / 16.0;
                if a > 0.0 {
                    c = [0, 1, 2].map(|k| c[k] * (1.0 - a) + sum[k] / 16.0);
                }
            }
            [0, 1, 2].map(|k| {
                let grain = match self.noise {
                    Some((amp, seed)) => (hash(i64::from(x) * 3 + k as i64, i64::from(y), seed) - 0.5) * 2.0 * amp,
                    None => 0.0,
                };
                (c[k] * self.gain[k] + grain).round().clamp(0.0, 255.0) as u8
            })
        })
        .expect("64x64 is a valid frame size")
    }
}

fn square(cx: f32, cy: f32, half: f32, rgb: [f32; 3]) -> Square {
    Square { cx, cy, half, rgb }
}

/// `len` frames of one shot; `frame(t)` gives the view at frame `t` of the shot.
fn shot(len: usize, frame: impl Fn(usize) -> View) -> Vec<RgbFrame> {
    (0..len).map(|t| frame(t).render()).collect()
}

/// Concatenates shots, returning the frames and the frame index where each later shot starts.
fn clip(shots: Vec<Vec<RgbFrame>>) -> (Vec<RgbFrame>, Vec<usize>) {
    let mut frames = Vec::new();
    let mut cuts = Vec::new();
    for s in shots {
        if !frames.is_empty() {
            cuts.push(frames.len());
        }
        frames.extend(s);
    }
    (frames, cuts)
}

fn detect(frames: &[RgbFrame]) -> Vec<usize> {
    detect_cuts(frames, &DetectorConfig::default()).expect("detection succeeds")
}

/// Runs the streaming detector over `frames`, checking that no cut is reported before its frame.
fn detect_streaming(frames: &[RgbFrame], cfg: &DetectorConfig) -> Vec<usize> {
    let mut det = ShotDetector::new(cfg.clone()).expect("valid config");
    let mut cuts = Vec::new();
    for f in frames {
        if let Some(c) = det.push(f).expect("push succeeds") {
            assert!(c < det.frames_seen(), "cut {c} reported after only {} frames", det.frames_seen());
            cuts.push(c);
        }
    }
    cuts.extend(det.finish());
    cuts
}

const RED: [f32; 3] = [220.0, 40.0, 40.0];
const BLUE: [f32; 3] = [40.0, 60.0, 220.0];
const YELLOW: [f32; 3] = [240.0, 200.0, 30.0];
const PURPLE: [f32; 3] = [150.0, 40.0, 200.0];

#[test]
fn hard_cuts_between_different_scenes_are_found_exactly() {
    let (frames, truth) = clip(vec![
        shot(17, |t| View::new(MEADOW).with_square(square(20.0 + t as f32, 40.0, 6.0, RED))),
        shot(21, |_| View::new(BEACH).with_square(square(32.0, 36.0, 10.0, BLUE))),
        shot(25, |t| View::new(FOREST).with_square(square(50.0 - t as f32, 44.0, 8.0, YELLOW))),
        shot(19, |_| View { zoom: 1.8, ..View::new(CITY) }),
        shot(17, |t| View::new(DESERT).with_square(square(10.0 + 2.0 * t as f32, 30.0, 12.0, PURPLE))),
        shot(20, |_| View::new(SNOW).with_square(square(32.0, 32.0, 7.0, RED))),
    ]);
    assert_eq!(truth, [17, 38, 63, 82, 99]);
    assert_eq!(detect(&frames), truth);
}

#[test]
fn cuts_between_night_and_dusk_shots_are_found() {
    let night = [0.30, 0.36, 0.62];
    let dusk = [0.92, 0.62, 0.48];
    let (frames, truth) = clip(vec![
        shot(20, |_| View { gain: night, ..View::new(FOREST) }.with_square(square(30.0, 40.0, 6.0, YELLOW))),
        shot(20, |_| View { gain: night, ..View::new(MEADOW) }.with_square(square(30.0, 40.0, 6.0, YELLOW))),
        shot(20, |_| View { gain: dusk, ..View::new(MEADOW) }.with_square(square(30.0, 40.0, 6.0, YELLOW))),
    ]);
    assert_eq!(detect(&frames), truth);
}

#[test]
fn brightness_ramp_within_a_shot_is_not_a_cut() {
    // 100 % down to 40 % over 17 frames, then the same scene cut to another place.
    let ramp = |t: usize| 1.0 - 0.6 * t as f32 / 16.0;
    let (frames, truth) = clip(vec![
        shot(17, |t| View { gain: [ramp(t); 3], ..View::new(MEADOW) }.with_square(square(30.0, 40.0, 8.0, RED))),
        shot(17, |t| View { gain: [ramp(t); 3], ..View::new(DESERT) }.with_square(square(30.0, 40.0, 8.0, BLUE))),
        shot(20, |_| View::new(SNOW)),
    ]);
    assert_eq!(detect(&frames), truth);
    // A single long shot fading the whole way has no cut at all.
    let fade = shot(40, |t| View { gain: [1.0 - 0.6 * t as f32 / 39.0; 3], ..View::new(CITY) });
    assert_eq!(detect(&fade), Vec::<usize>::new());
}

#[test]
fn tint_ramp_within_a_shot_is_not_a_cut() {
    // Daylight to night blue over 17 frames.
    let tint = |t: usize| {
        let s = t as f32 / 16.0;
        [1.0 - 0.7 * s, 1.0 - 0.64 * s, 1.0 - 0.38 * s]
    };
    let frames = shot(17, |t| View { gain: tint(t), ..View::new(BEACH) }.with_square(square(32.0, 40.0, 8.0, YELLOW)));
    assert_eq!(detect(&frames), Vec::<usize>::new());
    let (frames, truth) = clip(vec![
        frames,
        shot(20, |t| {
            View { gain: tint(16 - t.min(16)), ..View::new(FOREST) }.with_square(square(20.0, 30.0, 9.0, RED))
        }),
    ]);
    assert_eq!(detect(&frames), truth);
}

#[test]
fn fast_motion_is_not_a_cut() {
    // A 24-pixel square crossing a textured backdrop at 7 px per frame, and a camera pan at 6.
    let moving = shot(40, |t| View::new(FOREST).with_square(square(7.0 * t as f32, 34.0, 12.0, RED)));
    assert_eq!(detect(&moving), Vec::<usize>::new());
    let pan = shot(40, |t| View { centre: (100.0 + 6.0 * t as f32, 100.0), ..View::new(CITY) });
    assert_eq!(detect(&pan), Vec::<usize>::new());
    // Motion on both sides of a cut does not hide it.
    let (frames, truth) =
        clip(vec![moving, shot(30, |t| View::new(BEACH).with_square(square(8.0 * t as f32, 40.0, 10.0, BLUE)))]);
    assert_eq!(detect(&frames), truth);
}

#[test]
fn camera_zoom_is_not_a_cut() {
    let zoom = |t: usize| 1.0 + 0.8 * t as f32 / 29.0;
    let frames = shot(30, |t| {
        let z = zoom(t);
        View { zoom: z, ..View::new(MEADOW) }.with_square(square(32.0, 36.0, 6.0 * z, PURPLE))
    });
    assert_eq!(detect(&frames), Vec::<usize>::new());
}

#[test]
fn mild_noise_is_not_a_cut() {
    let frames = shot(48, |t| {
        View { noise: Some((10.0, t as u64)), ..View::new(DESERT) }.with_square(square(30.0, 30.0, 7.0, BLUE))
    });
    assert_eq!(detect(&frames), Vec::<usize>::new());
    // A static, noiseless clip scores exactly zero everywhere.
    let still = shot(5, |_| View::new(SNOW));
    assert_eq!(frame_scores(&still, &DetectorConfig::default()).expect("scores"), vec![0.0; 4]);
}

#[test]
fn reframing_the_same_subject_on_the_same_backdrop_is_a_cut() {
    // The hard case: the backdrop stays the same and only the subject's size (framing) changes,
    // under grain and a slow drift so the neighbours are not perfectly still.
    let view = |half: f32, t: usize, seed: u64| {
        View { noise: Some((6.0, seed * 1000 + t as u64)), ..View::new(MEADOW) }.with_square(square(
            30.0 + 0.5 * t as f32,
            34.0,
            half,
            RED,
        ))
    };
    let (frames, truth) = clip(vec![
        shot(20, |t| view(6.0, t, 1)),  // wide
        shot(20, |t| view(20.0, t, 2)), // close-up
        shot(20, |t| view(11.0, t, 3)), // medium
        shot(20, |t| view(6.0, t, 4)),  // wide again
    ]);
    assert_eq!(detect(&frames), truth);
}

#[test]
fn changing_the_subject_on_the_same_backdrop_is_a_cut() {
    let (frames, truth) = clip(vec![
        shot(20, |t| View::new(SNOW).with_square(square(30.0 + t as f32 * 0.5, 36.0, 8.0, RED))),
        shot(20, |t| View::new(SNOW).with_square(square(30.0 + t as f32 * 0.5, 36.0, 8.0, BLUE))),
    ]);
    assert_eq!(detect(&frames), truth);
}

#[test]
fn min_shot_len_keeps_the_stronger_of_two_close_cuts() {
    // [0,10) meadow + red, [10,14) meadow + yellow (a weak cut), [14,34) snow (a strong cut).
    let (frames, truth) = clip(vec![
        shot(10, |_| View::new(MEADOW).with_square(square(30.0, 36.0, 8.0, RED))),
        shot(4, |_| View::new(MEADOW).with_square(square(30.0, 36.0, 8.0, YELLOW))),
        shot(20, |_| View::new(SNOW).with_square(square(30.0, 36.0, 8.0, BLUE))),
    ]);
    assert_eq!(truth, [10, 14]);
    let cfg = DetectorConfig::default();
    assert_eq!(detect_cuts(&frames, &cfg).expect("detect"), [14]);
    let loose = DetectorConfig { min_shot_len: 3, ..cfg.clone() };
    assert_eq!(detect_cuts(&frames, &loose).expect("detect"), [10, 14]);
    // The first shot must be long enough too.
    let (early, _) = clip(vec![shot(5, |_| View::new(BEACH)), shot(20, |_| View::new(CITY))]);
    assert_eq!(detect_cuts(&early, &cfg).expect("detect"), Vec::<usize>::new());
    assert_eq!(detect_cuts(&early, &DetectorConfig { min_shot_len: 1, ..cfg }).expect("detect"), [5]);
}

#[test]
fn streaming_gives_the_batch_cuts() {
    let (frames, truth) = clip(vec![
        shot(17, |t| {
            View { gain: [1.0 - 0.03 * t as f32; 3], ..View::new(MEADOW) }.with_square(square(
                7.0 * t as f32,
                30.0,
                10.0,
                RED,
            ))
        }),
        shot(18, |t| {
            View { zoom: 1.0 + 0.04 * t as f32, ..View::new(MEADOW) }.with_square(square(30.0, 30.0, 18.0, RED))
        }),
        shot(6, |_| View::new(CITY)),
        shot(20, |t| View { noise: Some((5.0, t as u64)), ..View::new(BEACH) }),
        shot(3, |_| View::new(DESERT)),
    ]);
    let base = DetectorConfig::default();
    for cfg in [
        base.clone(),
        DetectorConfig { window: 1, ..base.clone() },
        DetectorConfig { window: 4, min_shot_len: 2, ..base.clone() },
        DetectorConfig { min_shot_len: 0, adaptive_ratio: 1.5, ..base.clone() },
        DetectorConfig { min_shot_len: 30, ..base.clone() },
    ] {
        let batch = detect_cuts(&frames, &cfg).expect("detect");
        assert_eq!(detect_streaming(&frames, &cfg), batch, "window {} min_shot_len {}", cfg.window, cfg.min_shot_len);
        // And from precomputed scores.
        let scores = frame_scores(&frames, &cfg).expect("scores");
        assert_eq!(cuts_from_scores(&scores, &cfg).expect("cuts"), batch);
    }
    // The default finds the two long-shot cuts; the 6-frame city shot folds into one cut and
    // the 3-frame desert shot at the end is too short to count.
    let found = detect(&frames);
    assert_eq!(found.len(), 2, "{found:?} vs {truth:?}");
    assert_eq!(&found[..2], &truth[..2]);
    // Short clips stream too.
    for n in 0..4 {
        assert_eq!(detect_streaming(&frames[..n], &base), detect_cuts(&frames[..n], &base).expect("detect"));
    }
}

#[test]
fn empty_and_single_frame_clips_have_no_cuts() {
    let cfg = DetectorConfig::default();
    assert_eq!(frame_scores(&[], &cfg).expect("scores"), Vec::<f32>::new());
    assert_eq!(detect_cuts(&[], &cfg).expect("detect"), Vec::<usize>::new());
    let one = [View::new(MEADOW).render()];
    assert_eq!(frame_scores(&one, &cfg).expect("scores"), Vec::<f32>::new());
    assert_eq!(detect_cuts(&one, &cfg).expect("detect"), Vec::<usize>::new());
    let two = [View::new(MEADOW).render(), View::new(SNOW).render()];
    assert_eq!(frame_scores(&two, &cfg).expect("scores").len(), 1);
    assert_eq!(ShotDetector::new(cfg).expect("new").finish(), Vec::<usize>::new());
}

#[test]
fn large_frames_are_downscaled_and_still_cut() {
    let big = |rgb: [f32; 3], shift: u32| {
        RgbFrame::from_fn(320, 180, |x, y| {
            let t = value_noise((x + shift) as f32 / 20.0, y as f32 / 20.0, 9);
            [0, 1, 2].map(|k| (rgb[k] * (0.6 + 0.4 * t)) as u8)
        })
        .expect("valid size")
    };
    let mut frames: Vec<RgbFrame> = (0..12).map(|t| big([200.0, 120.0, 60.0], t)).collect();
    frames.extend((0..12).map(|t| big([60.0, 120.0, 220.0], t)));
    assert_eq!(detect(&frames), [12]);
}

#[test]
fn mismatched_frame_sizes_are_an_error() {
    let a = View::new(MEADOW).render();
    let b = RgbFrame::filled(32, 64, [10, 20, 30]).expect("valid size");
    let err = detect_cuts(&[a.clone(), a.clone(), b.clone()], &DetectorConfig::default()).expect_err("sizes differ");
    let msg = err.to_string();
    assert!(matches!(err, WorldError::OutOfRange { .. }), "{err:?}");
    assert!(msg.contains("frame 2") && msg.contains("32x64") && msg.contains("64x64"), "{msg}");

    let mut det = ShotDetector::new(DetectorConfig::default()).expect("new");
    det.push(&a).expect("first frame");
    let msg = det.push(&b).expect_err("sizes differ").to_string();
    assert!(msg.contains("frame 1") && msg.contains("32x64"), "{msg}");

    // A frame whose bytes do not match its size is refused, not read out of bounds.
    let mut broken = a.clone();
    broken.data.truncate(100);
    assert!(frame_scores(&[a, broken], &DetectorConfig::default()).is_err());
}

#[test]
fn config_validation_names_the_bad_field() {
    assert!(DetectorConfig::default().validate().is_ok());
    let base = DetectorConfig::default();
    let cases = [
        (DetectorConfig { adaptive_ratio: f32::NAN, ..base.clone() }, "adaptive_ratio"),
        (DetectorConfig { adaptive_ratio: 0.0, ..base.clone() }, "adaptive_ratio"),
        (DetectorConfig { min_content: -1.0, ..base.clone() }, "min_content"),
        (DetectorConfig { min_content: f32::INFINITY, ..base.clone() }, "min_content"),
        (DetectorConfig { content_weight: -0.5, ..base.clone() }, "content_weight"),
        (DetectorConfig { histogram_weight: f32::NAN, ..base.clone() }, "histogram_weight"),
        (DetectorConfig { content_weight: 0.0, histogram_weight: 0.0, luma_weight: 0.0, ..base.clone() }, "weights"),
        (DetectorConfig { window: 0, ..base.clone() }, "window"),
        (DetectorConfig { analysis_size: 0, ..base.clone() }, "analysis_size"),
        (DetectorConfig { luma_size: 0, ..base.clone() }, "luma_size"),
        (DetectorConfig { luma_size: 100, ..base.clone() }, "luma_size"),
        (DetectorConfig { hue_bins: 0, ..base.clone() }, "hue_bins"),
        (DetectorConfig { hue_bins: 64, saturation_bins: 64, value_bins: 64, ..base.clone() }, "histogram bins"),
    ];
    for (cfg, field) in cases {
        let err = cfg.validate().expect_err(field).to_string();
        assert!(err.contains(field), "{field}: {err}");
        // Every entry point validates.
        assert!(ShotDetector::new(cfg.clone()).is_err());
        assert!(detect_cuts(&[], &cfg).is_err());
        assert!(cuts_from_scores(&[1.0, 2.0], &cfg).is_err());
    }
    // One zero weight is fine: it switches that component off.
    let cfg = DetectorConfig { histogram_weight: 0.0, luma_weight: 0.0, ..base };
    assert!(cfg.validate().is_ok());
}

#[test]
fn cuts_to_ranges_covers_the_clip() {
    assert_eq!(cuts_to_ranges(&[17], 34), [(0, 17), (17, 34)]);
    assert_eq!(cuts_to_ranges(&[], 5), [(0, 5)]);
    assert_eq!(cuts_to_ranges(&[20, 0, 10, 10, 40], 30), [(0, 10), (10, 20), (20, 30)]);
    assert_eq!(cuts_to_ranges(&[3], 0), Vec::<(usize, usize)>::new());
}

#[test]
fn score_cuts_matches_one_to_one_within_tolerance() {
    let exact = score_cuts(&[17, 40], &[17, 40], 0);
    assert_eq!((exact.true_positives, exact.false_positives, exact.false_negatives), (2, 0, 0));
    assert_eq!((exact.precision, exact.recall, exact.f1), (1.0, 1.0, 1.0));

    // Off by one: a match with tolerance 1, a miss plus an extra with tolerance 0.
    let near = score_cuts(&[18], &[17], 1);
    assert_eq!((near.true_positives, near.false_positives, near.false_negatives), (1, 0, 0));
    let strict = score_cuts(&[18], &[17], 0);
    assert_eq!((strict.true_positives, strict.false_positives, strict.false_negatives), (0, 1, 1));
    assert_eq!(strict.f1, 0.0);

    let missed = score_cuts(&[17], &[17, 40], 1);
    assert_eq!((missed.true_positives, missed.false_negatives), (1, 1));
    assert_eq!((missed.precision, missed.recall), (1.0, 0.5));
    assert!((missed.f1 - 2.0 / 3.0).abs() < 1e-12);

    let extra = score_cuts(&[17, 30], &[17], 1);
    assert_eq!((extra.true_positives, extra.false_positives), (1, 1));
    assert_eq!((extra.precision, extra.recall), (0.5, 1.0));

    // Two predictions near one true cut: only one may match it.
    let double = score_cuts(&[16, 18], &[17], 1);
    assert_eq!((double.true_positives, double.false_positives), (1, 1));
    // Greedy by distance still pairs everything when it can.
    let chain = score_cuts(&[11, 13], &[10, 12], 1);
    assert_eq!(chain.true_positives, 2);

    // Empty cases.
    let none = score_cuts(&[], &[], 2);
    assert_eq!((none.precision, none.recall, none.f1), (1.0, 1.0, 1.0));
    let nothing_found = score_cuts(&[], &[17], 2);
    assert_eq!((nothing_found.precision, nothing_found.recall, nothing_found.f1), (1.0, 0.0, 0.0));
    let nothing_there = score_cuts(&[17], &[], 2);
    assert_eq!((nothing_there.precision, nothing_there.recall, nothing_there.f1), (0.0, 1.0, 0.0));
}

#[test]
fn cut_scores_add_up_over_videos() {
    let videos = [score_cuts(&[17, 40], &[17, 40], 0), score_cuts(&[10], &[12], 0), score_cuts(&[], &[], 0)];
    let total = CutScore::total(&videos);
    assert_eq!((total.true_positives, total.false_positives, total.false_negatives), (2, 1, 1));
    assert!((total.precision - 2.0 / 3.0).abs() < 1e-12);
    assert!((total.f1 - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(videos[0].merge(&videos[1]), total);
    assert_eq!(CutScore::total(&[]), CutScore::from_counts(0, 0, 0));
    let json = serde_json::to_value(total).expect("serialises");
    assert_eq!(json["true_positives"], 2);
    assert!(json["f1"].as_f64().is_some());
}

#[test]
fn a_jolt_in_the_last_frames_is_not_a_cut() {
    // H.264 often changes quality on the last frames; a "shot" shorter than min_shot_len at the
    // very end is not a cut, in batch and streaming alike.
    let (frames, _) = clip(vec![
        shot(20, |_| View::new(MEADOW).with_square(square(20.0, 40.0, 6.0, RED))),
        shot(3, |_| View::new(CITY)),
    ]);
    assert!(detect(&frames).is_empty(), "{:?}", detect(&frames));
    assert!(detect_streaming(&frames, &DetectorConfig::default()).is_empty());
    let (frames, truth) = clip(vec![
        shot(20, |_| View::new(MEADOW).with_square(square(20.0, 40.0, 6.0, RED))),
        shot(8, |_| View::new(CITY)),
    ]);
    assert_eq!(detect(&frames), truth);
}

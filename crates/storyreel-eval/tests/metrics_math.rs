//! The metric math of storyreel-eval against closed forms and hand-checked cases.

use storyreel_eval::consistency::{centroid_cosine, cosine, mean_pairwise_cosine, vbench_consistency};
use storyreel_eval::frechet::{frechet_distance, frechet_distance_eps, symmetric_eigen, Gaussian};
use storyreel_eval::motion::{block_flow, clip_motion, dynamic_degree, ClipMotion, MotionConfig};
use storyreel_eval::sca::shot_cut_accuracy;
use storyreel_eval::EvalError;
use storyreel_media::RgbFrame;

/// Deterministic pseudo-random numbers (64-bit LCG, top bits), so tests never depend on a seed source.
struct Lcg(u64);

impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        f64::from(self.next_u32()) / f64::from(1u32 << 30) - 1.0
    }
    /// Roughly normal (Irwin–Hall with 12 terms), enough for covariance tests.
    fn gauss(&mut self) -> f64 {
        (0..12).map(|_| (self.unit() + 1.0) / 2.0).sum::<f64>() - 6.0
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

// ---------------------------------------------------------------- shot cut accuracy

#[test]
fn sca_identical_cuts_score_one() {
    let r = shot_cut_accuracy(&[40, 80, 120], &[40, 80, 120], 160).unwrap();
    assert_eq!(r.score, 1.0);
    assert_eq!(r.nsd, 0.0);
    assert_eq!(r.matched.len(), 3);
    assert!(r.missed.is_empty() && r.extra.is_empty());
    assert_eq!(r.penalty_per_cut, 40.0);
}

#[test]
fn sca_no_cuts_anywhere_scores_one() {
    let r = shot_cut_accuracy(&[], &[], 81).unwrap();
    assert_eq!(r.score, 1.0);
    assert_eq!(r.penalty_per_cut, 81.0);
}

#[test]
fn sca_one_frame_shift_is_slightly_below_one() {
    let r = shot_cut_accuracy(&[41], &[40], 81).unwrap();
    assert!(r.score < 1.0 && r.score > 0.98, "{}", r.score);
    assert!(close(r.nsd, 1.0 / 81.0, 1e-12));
    assert_eq!(r.matched[0].deviation, 1);
    let early = shot_cut_accuracy(&[39], &[40], 81).unwrap();
    assert_eq!(early.matched[0].deviation, -1);
    assert_eq!(early.score, r.score);
}

#[test]
fn sca_missed_and_extra_cuts_cost_a_shot_each() {
    let perfect = shot_cut_accuracy(&[30, 60], &[30, 60], 90).unwrap();
    let missed = shot_cut_accuracy(&[30], &[30, 60], 90).unwrap();
    let extra = shot_cut_accuracy(&[30, 45, 60], &[30, 60], 90).unwrap();
    assert_eq!(missed.missed, vec![60]);
    assert_eq!(extra.extra, vec![45]);
    assert!(missed.score < perfect.score && extra.score < perfect.score);
    // P = 90 / 3 = 30 frames; NSD = 30 / 90.
    assert!(close(missed.nsd, 1.0 / 3.0, 1e-12) && close(extra.nsd, 1.0 / 3.0, 1e-12));
    assert!(close(missed.score, (-1.0f64 / 3.0).exp(), 1e-12));
    // Predicting nothing costs every truth cut; predicting cuts for a one-shot video costs each.
    let none = shot_cut_accuracy(&[], &[30, 60], 90).unwrap();
    assert!(close(none.nsd, 2.0 / 3.0, 1e-12));
    let spurious = shot_cut_accuracy(&[10, 20], &[], 50).unwrap();
    assert_eq!(spurious.extra, vec![10, 20]);
    assert!(close(spurious.nsd, 2.0, 1e-12));
}

#[test]
fn sca_shift_beyond_a_shot_is_a_miss_plus_an_extra() {
    // One truth cut in 100 frames: P = 50.
    let within = shot_cut_accuracy(&[50 + 50], &[50], 101).unwrap();
    assert_eq!(within.penalty_per_cut, 50.5);
    assert_eq!(within.matched.len(), 1);
    let beyond = shot_cut_accuracy(&[40], &[95], 100).unwrap();
    assert!(beyond.matched.is_empty());
    assert_eq!(beyond.missed, vec![95]);
    assert_eq!(beyond.extra, vec![40]);
    assert!(close(beyond.nsd, 1.0, 1e-12));
}

#[test]
fn sca_score_falls_monotonically_with_the_shift() {
    // Three cuts in 400 frames, P = 100. Shifting all cuts by s costs 3s until, near s = 80,
    // pairing each prediction with the next truth cut (cost 2(100 − s) + 2P) becomes cheaper:
    // the optimal matching rightly sees predictions that line up with other cuts.
    let truth = [100, 200, 300];
    let mut last = f64::INFINITY;
    for shift in 0..80 {
        let pred: Vec<usize> = truth.iter().map(|t| t + shift).collect();
        let r = shot_cut_accuracy(&pred, &truth, 400).unwrap();
        assert!(r.score < last, "shift {shift}: {} after {last}", r.score);
        last = r.score;
    }
    // Across the gate (P = 50 here) the score keeps falling, then stays at miss + extra.
    let mut last = f64::INFINITY;
    for shift in 0..70 {
        let r = shot_cut_accuracy(&[30 + shift], &[30], 100).unwrap();
        if shift <= 51 {
            assert!(r.score < last, "shift {shift}: {} after {last}", r.score);
        } else {
            assert_eq!(r.score, last, "shift {shift}");
        }
        assert_eq!(r.matched.len(), usize::from(shift <= 50), "shift {shift}");
        last = r.score;
    }
}

#[test]
fn sca_matching_is_optimal_and_order_preserving() {
    // Greedy nearest matching would give 52 to truth 50 and leave 48 as an extra; the optimal
    // order-preserving matching pairs 48-50 and 52-55.
    let r = shot_cut_accuracy(&[48, 52], &[50, 55], 120).unwrap();
    assert_eq!(r.matched.len(), 2);
    assert_eq!((r.matched[0].truth, r.matched[0].predicted), (50, 48));
    assert_eq!((r.matched[1].truth, r.matched[1].predicted), (55, 52));
    assert!(close(r.nsd, 5.0 / 120.0, 1e-12));
    // Unsorted input is fine.
    let s = shot_cut_accuracy(&[52, 48], &[55, 50], 120).unwrap();
    assert_eq!(s, r);
}

#[test]
fn sca_rejects_bad_inputs() {
    assert!(matches!(shot_cut_accuracy(&[], &[], 0), Err(EvalError::OutOfRange { .. })));
    assert!(matches!(shot_cut_accuracy(&[0], &[10], 50), Err(EvalError::OutOfRange { .. })));
    let err = shot_cut_accuracy(&[10], &[50], 50).unwrap_err();
    assert!(err.to_string().contains("ground-truth cut frame = 50"), "{err}");
    assert!(matches!(shot_cut_accuracy(&[10, 10], &[10], 50), Err(EvalError::Mismatch(_))));
}

// ---------------------------------------------------------------- eigen decomposition

fn random_symmetric(rng: &mut Lcg, n: usize) -> Vec<f64> {
    let mut a = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = rng.unit();
            a[i * n + j] = v;
            a[j * n + i] = v;
        }
    }
    a
}

fn check_eigen(a: &[f64], n: usize) {
    let (values, vectors) = symmetric_eigen(a, n);
    assert_eq!(values.len(), n);
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "eigenvalues not ascending");
    let norm = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(1.0);
    for i in 0..n {
        for j in 0..n {
            let recon: f64 = (0..n).map(|k| vectors[i * n + k] * values[k] * vectors[j * n + k]).sum();
            assert!(close(recon, a[i * n + j], 1e-10 * norm), "n={n} A[{i}][{j}]: {recon} vs {}", a[i * n + j]);
            let dot: f64 = (0..n).map(|k| vectors[k * n + i] * vectors[k * n + j]).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            assert!(close(dot, want, 1e-10), "n={n} VᵀV[{i}][{j}] = {dot}");
        }
    }
}

#[test]
fn eigen_reconstructs_random_symmetric_matrices() {
    let mut rng = Lcg(7);
    for n in [1, 2, 3, 5, 8, 17, 32, 64] {
        let a = random_symmetric(&mut rng, n);
        check_eigen(&a, n);
    }
}

#[test]
fn eigen_handles_degenerate_matrices() {
    check_eigen(&[], 0);
    check_eigen(&[0.0; 16], 4);
    // Repeated eigenvalues and a rank-one matrix.
    let identity: Vec<f64> = (0..25).map(|i| if i % 6 == 0 { 3.0 } else { 0.0 }).collect();
    check_eigen(&identity, 5);
    let u = [1.0, -2.0, 0.5, 3.0];
    let rank_one: Vec<f64> = (0..16).map(|i| u[i / 4] * u[i % 4]).collect();
    check_eigen(&rank_one, 4);
    let (values, _) = symmetric_eigen(&rank_one, 4);
    assert!(close(values[3], u.iter().map(|x| x * x).sum(), 1e-12));
    assert!(values[..3].iter().all(|v| v.abs() < 1e-12));
    // Known spectrum: [[2, 1], [1, 2]] has eigenvalues 1 and 3.
    let (values, _) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
    assert!(close(values[0], 1.0, 1e-14) && close(values[1], 3.0, 1e-14));
    // Non-finite input gives NaN, not a hang.
    let (values, _) = symmetric_eigen(&[f64::NAN, 0.0, 0.0, 1.0], 2);
    assert!(values.iter().all(|v| v.is_nan()));
}

// ---------------------------------------------------------------- Fréchet distance

fn gaussian(mean: Vec<f64>, cov: Vec<f64>) -> Gaussian {
    let dim = mean.len();
    Gaussian { mean, cov, dim, count: 100 }
}

fn random_features(rng: &mut Lcg, n: usize, dim: usize) -> Vec<Vec<f32>> {
    (0..n).map(|_| (0..dim).map(|k| (rng.gauss() * (1.0 + k as f64 * 0.1) + 5.0) as f32).collect()).collect()
}

#[test]
fn gaussian_fit_matches_hand_computation() {
    let g = Gaussian::fit(&[vec![1.0, 2.0], vec![3.0, 2.0], vec![5.0, 8.0]]).unwrap();
    assert_eq!((g.dim, g.count), (2, 3));
    assert!(close(g.mean[0], 3.0, 1e-12) && close(g.mean[1], 4.0, 1e-12));
    // Unbiased: x deviations (-2, 0, 2), y deviations (-2, -2, 4).
    let want = [4.0, 6.0, 6.0, 12.0];
    for (c, w) in g.cov.iter().zip(want) {
        assert!(close(*c, w, 1e-12), "{:?}", g.cov);
    }
}

#[test]
fn gaussian_fit_rejects_bad_features() {
    assert!(matches!(Gaussian::fit(&[vec![1.0]]), Err(EvalError::OutOfRange { .. })));
    assert!(matches!(Gaussian::fit(&[]), Err(EvalError::OutOfRange { .. })));
    assert!(matches!(Gaussian::fit(&[vec![1.0, 2.0], vec![1.0]]), Err(EvalError::Mismatch(_))));
    assert!(matches!(Gaussian::fit(&[vec![], vec![]]), Err(EvalError::Mismatch(_))));
    assert!(matches!(Gaussian::fit(&[vec![1.0], vec![f32::NAN]]), Err(EvalError::OutOfRange { .. })));
    assert!(matches!(Gaussian::fit(&[vec![1.0], vec![f32::INFINITY]]), Err(EvalError::OutOfRange { .. })));
}

#[test]
fn frechet_of_a_set_to_itself_is_zero() {
    let mut rng = Lcg(11);
    // Fewer samples than dimensions too: the covariance is singular there.
    for (n, dim) in [(200, 16), (20, 48)] {
        let g = Gaussian::fit(&random_features(&mut rng, n, dim)).unwrap();
        let d = frechet_distance(&g, &g).unwrap();
        let scale = g.cov.iter().step_by(dim + 1).sum::<f64>();
        assert!(d >= 0.0 && d < 1e-9 * scale, "n={n} dim={dim}: {d}");
    }
}

#[test]
fn frechet_one_dimensional_closed_form() {
    let (m1, s1, m2, s2) = (1.5, 2.0, -0.5, 0.5);
    let d = frechet_distance(&gaussian(vec![m1], vec![s1 * s1]), &gaussian(vec![m2], vec![s2 * s2])).unwrap();
    let want = (m1 - m2) * (m1 - m2) + (s1 - s2) * (s1 - s2);
    assert!(close(d, want, 1e-12), "{d} vs {want}");
}

#[test]
fn frechet_commuting_covariances_closed_form() {
    // Diagonal covariances, and the same spectra rotated by a random orthogonal matrix: either
    // way the distance is Σ(Δμ)² + Σ(√a − √b)².
    let mut rng = Lcg(3);
    let n = 40;
    let a: Vec<f64> = (0..n).map(|i| 0.1 + i as f64 * 0.3).collect();
    let b: Vec<f64> = (0..n).map(|i| if i % 7 == 0 { 0.0 } else { 2.0 + (i as f64).sin() }).collect();
    let ma: Vec<f64> = (0..n).map(|_| rng.unit()).collect();
    let mb: Vec<f64> = (0..n).map(|_| rng.unit()).collect();
    let want: f64 = ma.iter().zip(&mb).map(|(x, y)| (x - y) * (x - y)).sum::<f64>()
        + a.iter().zip(&b).map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2)).sum::<f64>();

    let diag = |v: &[f64]| (0..n * n).map(|i| if i % (n + 1) == 0 { v[i / n] } else { 0.0 }).collect::<Vec<_>>();
    let d = frechet_distance(&gaussian(ma.clone(), diag(&a)), &gaussian(mb.clone(), diag(&b))).unwrap();
    assert!(close(d, want, 1e-9 * want), "diagonal: {d} vs {want}");

    let (_, q) = symmetric_eigen(&random_symmetric(&mut rng, n), n);
    let rotate = |v: &[f64]| {
        (0..n * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                (0..n).map(|k| q[i * n + k] * v[k] * q[j * n + k]).sum::<f64>()
            })
            .collect::<Vec<_>>()
    };
    let d = frechet_distance(&gaussian(ma, rotate(&a)), &gaussian(mb, rotate(&b))).unwrap();
    assert!(close(d, want, 1e-8 * want), "rotated: {d} vs {want}");
}

#[test]
fn frechet_two_dimensional_non_commuting_closed_form() {
    // For 2×2 PSD matrices Tr(√M) = √(Tr M + 2√det M), and Σa Σb is similar to a PSD matrix.
    let sa: [f64; 4] = [2.0, 0.8, 0.8, 1.0];
    let sb: [f64; 4] = [0.5, -0.3, -0.3, 3.0];
    let prod = [
        sa[0] * sb[0] + sa[1] * sb[2],
        sa[0] * sb[1] + sa[1] * sb[3],
        sa[2] * sb[0] + sa[3] * sb[2],
        sa[2] * sb[1] + sa[3] * sb[3],
    ];
    let det = (sa[0] * sa[3] - sa[1] * sa[2]) * (sb[0] * sb[3] - sb[1] * sb[2]);
    let tr_sqrt = (prod[0] + prod[3] + 2.0 * det.sqrt()).sqrt();
    let want = 1.0 + 4.0 + (sa[0] + sa[3]) + (sb[0] + sb[3]) - 2.0 * tr_sqrt;
    let d = frechet_distance(&gaussian(vec![0.0, 0.0], sa.to_vec()), &gaussian(vec![1.0, -2.0], sb.to_vec())).unwrap();
    assert!(close(d, want, 1e-12), "{d} vs {want}");
}

#[test]
fn frechet_grows_with_mean_shift() {
    let mut rng = Lcg(5);
    let base = random_features(&mut rng, 100, 8);
    let g = Gaussian::fit(&base).unwrap();
    let mut last = frechet_distance(&g, &g).unwrap();
    for shift in [0.5f32, 1.0, 2.0, 4.0] {
        let moved: Vec<Vec<f32>> = base.iter().map(|v| v.iter().map(|x| x + shift).collect()).collect();
        let d = frechet_distance(&g, &Gaussian::fit(&moved).unwrap()).unwrap();
        // A pure shift leaves the covariance alone: the distance is exactly ||Δμ||².
        assert!(close(d, 8.0 * f64::from(shift * shift), 1e-6), "shift {shift}: {d}");
        assert!(d > last);
        last = d;
    }
}

#[test]
fn frechet_eps_ridge_and_validation() {
    let a = gaussian(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 0.0]);
    let b = gaussian(vec![0.0, 0.0], vec![0.0, 0.0, 0.0, 2.0]);
    // Orthogonal singular covariances: the cross term is 0.
    assert!(close(frechet_distance(&a, &b).unwrap(), 3.0, 1e-12));
    let ridged = frechet_distance_eps(&a, &b, 1e-6).unwrap();
    assert!(ridged < 3.0 && ridged > 3.0 - 1e-2, "{ridged}");
    assert!(frechet_distance_eps(&a, &b, -1.0).is_err());
    assert!(frechet_distance_eps(&a, &b, f64::NAN).is_err());

    let c = gaussian(vec![0.0], vec![1.0]);
    assert!(matches!(frechet_distance(&a, &c), Err(EvalError::Mismatch(_))));
    let broken = Gaussian { mean: vec![0.0, 0.0], cov: vec![1.0], dim: 2, count: 2 };
    assert!(matches!(frechet_distance(&a, &broken), Err(EvalError::Mismatch(_))));
}

// ---------------------------------------------------------------- motion

/// Hash noise in 0..=255, a texture block matching cannot confuse with a shifted copy of itself.
fn noise(x: i64, y: i64, salt: u64) -> u8 {
    let mut h = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ salt;
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    (h & 0xFF) as u8
}

/// A `size`² frame: static noise background, and a `side`² noise square at `(sx, sy)` whose
/// texture moves with it.
fn scene(size: u32, sx: i64, sy: i64, side: i64) -> RgbFrame {
    RgbFrame::from_fn(size, size, |x, y| {
        let (x, y) = (i64::from(x), i64::from(y));
        let v = if x >= sx && x < sx + side && y >= sy && y < sy + side {
            noise(x - sx, y - sy, 1)
        } else {
            noise(x, y, 2)
        };
        [v, v, v]
    })
    .unwrap()
}

#[test]
fn block_flow_tracks_a_translated_square() {
    let cfg = MotionConfig::default();
    let (sx, sy, side) = (16, 24, 24);
    let flow = block_flow(&scene(64, sx, sy, side), &scene(64, sx + 3, sy, side), &cfg).unwrap();
    assert_eq!((flow.blocks_x, flow.blocks_y), (8, 8));
    let block = 8i64;
    let (mut square, mut background) = (0, 0);
    for by in 0..8 {
        for bx in 0..8 {
            let (x0, y0) = (bx as i64 * block, by as i64 * block);
            let inside = x0 >= sx && x0 + block <= sx + side && y0 >= sy && y0 + block <= sy + side;
            // Background blocks the square covers in neither frame.
            let clear = x0 + block <= sx || x0 >= sx + side + 3 || y0 + block <= sy || y0 >= sy + side;
            let v = flow.at(bx, by).expect("noise is textured everywhere");
            if inside {
                assert!((v[0] - 3.0).abs() <= 1.0 && v[1].abs() <= 1.0, "square block ({bx},{by}): {v:?}");
                square += 1;
            } else if clear {
                assert_eq!(v, [0.0, 0.0], "background block ({bx},{by})");
                background += 1;
            }
        }
    }
    assert!(square >= 4 && background >= 30, "{square} square, {background} background blocks");
}

#[test]
fn block_flow_rescales_to_original_pixels_and_skips_flat_blocks() {
    // 256×256 is downscaled 2× to 128: a 6 px shift becomes 3 working pixels, reported as 6.
    let cfg = MotionConfig::default();
    let flow = block_flow(&scene(256, 64, 64, 96), &scene(256, 70, 64, 96), &cfg).unwrap();
    assert_eq!(flow.scale, [2.0, 2.0]);
    let v = flow.at(6, 6).unwrap();
    assert!((v[0] - 6.0).abs() <= 2.0 && v[1].abs() <= 2.0, "{v:?}");

    let flat = RgbFrame::filled(64, 64, [90, 90, 90]).unwrap();
    let flow = block_flow(&flat, &flat, &cfg).unwrap();
    assert!(flow.vectors.iter().all(Option::is_none) && flow.known_magnitudes().is_empty());
    let clip = clip_motion(&[flat.clone(), flat], 8.0, &cfg).unwrap();
    assert_eq!(clip.pair_scores, vec![0.0]);
}

#[test]
fn frozen_clip_is_not_dynamic() {
    let frame = scene(64, 10, 10, 20);
    let clip = clip_motion(&vec![frame; 9], 8.0, &MotionConfig::default()).unwrap();
    assert_eq!(clip.pair_scores.len(), 8);
    assert_eq!(clip.mean_top_flow, 0.0);
    assert_eq!(clip.threshold, 1.5);
    assert_eq!(clip.required_pairs, 2);
    assert!(!clip.dynamic);
}

#[test]
fn fast_object_is_dynamic() {
    let frames: Vec<RgbFrame> = (0..6).map(|t| scene(64, 4 + 6 * t, 16, 24)).collect();
    let clip = clip_motion(&frames, 8.0, &MotionConfig::default()).unwrap();
    assert_eq!(clip.pair_scores.len(), 5);
    assert!(clip.pair_scores.iter().all(|&s| s >= 5.0), "{:?}", clip.pair_scores);
    assert!(clip.dynamic);
    let frozen = clip_motion(&frames[..1], 8.0, &MotionConfig::default()).unwrap();
    assert!((dynamic_degree(&[clip.clone(), frozen.clone()]) - 0.5).abs() < 1e-12);
    assert_eq!(dynamic_degree(&[clip]), 1.0);
    assert_eq!(dynamic_degree(&[]), 0.0);
}

#[test]
fn clip_sampling_follows_fps() {
    // At 24 fps every third frame is used: 10 frames give samples 0, 3, 6, 9 and 3 pairs.
    let frames: Vec<RgbFrame> = (0..10).map(|t| scene(64, 4 + 2 * t, 16, 24)).collect();
    let clip = clip_motion(&frames, 24.0, &MotionConfig::default()).unwrap();
    assert_eq!(clip.interval, 3);
    assert_eq!(clip.pair_scores.len(), 3);
    assert_eq!(clip.required_pairs, 1);
    // 6 px per sampled pair; occlusion edges may add a stray larger vector to the top 5 %.
    assert!(clip.pair_scores.iter().all(|&s| (5.0..12.0).contains(&s)), "{:?}", clip.pair_scores);
    // Python-style rounding: 20 / 8 = 2.5 rounds to 2.
    assert_eq!(clip_motion(&frames, 20.0, &MotionConfig::default()).unwrap().interval, 2);
}

#[test]
fn short_clips_have_no_pairs() {
    let cfg = MotionConfig::default();
    for frames in [vec![], vec![scene(64, 0, 0, 8)]] {
        let clip = clip_motion(&frames, 8.0, &cfg).unwrap();
        assert!(clip.pair_scores.is_empty() && !clip.dynamic);
        assert_eq!((clip.mean_top_flow, clip.required_pairs), (0.0, 0));
    }
    // Two frames at 60 fps sample only the first.
    let two = vec![scene(64, 0, 0, 8), scene(64, 8, 0, 8)];
    let clip = clip_motion(&two, 60.0, &cfg).unwrap();
    assert!(clip.pair_scores.is_empty() && !clip.dynamic);
}

#[test]
fn motion_rejects_bad_inputs() {
    let cfg = MotionConfig::default();
    let (a, b) = (scene(64, 0, 0, 8), scene(48, 0, 0, 8));
    assert!(matches!(block_flow(&a, &b, &cfg), Err(EvalError::Mismatch(_))));
    assert!(matches!(clip_motion(&[a.clone(), b], 8.0, &cfg), Err(EvalError::Mismatch(_))));
    assert!(clip_motion(&[a.clone(), a.clone()], 0.0, &cfg).is_err());
    assert!(clip_motion(&[a.clone(), a.clone()], f64::NAN, &cfg).is_err());
    let mut broken = a.clone();
    broken.data.pop();
    assert!(block_flow(&a, &broken, &cfg).is_err());
    let bad = MotionConfig { block: 1, ..MotionConfig::default() };
    assert!(block_flow(&a, &a, &bad).is_err());
    let bad = MotionConfig { top_fraction: 0.0, ..MotionConfig::default() };
    assert!(clip_motion(&[a.clone(), a], 8.0, &bad).is_err());
}

#[test]
fn dynamic_degree_counts_flags() {
    let clip = |dynamic| ClipMotion {
        pair_scores: vec![],
        mean_top_flow: 0.0,
        threshold: 1.0,
        interval: 1,
        required_pairs: 0,
        dynamic,
    };
    assert!((dynamic_degree(&[clip(true), clip(false), clip(false), clip(true)]) - 0.5).abs() < 1e-12);
}

// ---------------------------------------------------------------- consistency

#[test]
fn cosine_basics() {
    assert!(close(cosine(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]), 1.0, 1e-12));
    assert_eq!(cosine(&[1.0, 0.0], &[0.0, 5.0]), 0.0);
    assert!(close(cosine(&[1.0, 1.0], &[-1.0, -1.0]), -1.0, 1e-12));
    assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    assert!(cosine(&[1.0], &[1.0, 2.0]).is_nan());
}

#[test]
fn vbench_consistency_formula() {
    assert_eq!(vbench_consistency(&[]), None);
    assert_eq!(vbench_consistency(&[vec![1.0, 0.0]]), None);
    let same = vec![vec![0.3, 0.4, 0.5]; 5];
    assert!(close(vbench_consistency(&same).unwrap(), 1.0, 1e-12));
    // f0 = x, f1 = y, f2 = y: t=1 gives (0 + 0)/2, t=2 gives (1 + 0)/2, mean 0.25.
    let drift = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![0.0, 1.0]];
    assert!(close(vbench_consistency(&drift).unwrap(), 0.25, 1e-12));
    // Negative cosines clamp to 0 rather than dragging the mean below it.
    let flip = vec![vec![1.0, 0.0], vec![-1.0, 0.0]];
    assert_eq!(vbench_consistency(&flip).unwrap(), 0.0);
    assert!(vbench_consistency(&[vec![1.0], vec![1.0, 0.0]]).unwrap().is_nan());
}

#[test]
fn shot_to_shot_cosines() {
    let a = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
    let b = vec![vec![1.0, 0.0]];
    // Pairs: (a0,b0) = 1, (a1,b0) = 0.
    assert!(close(mean_pairwise_cosine(&a, &b).unwrap(), 0.5, 1e-12));
    assert!(close(mean_pairwise_cosine(&a, &a).unwrap(), 0.5, 1e-12));
    assert!(close(mean_pairwise_cosine(&b, &b).unwrap(), 1.0, 1e-12));
    assert_eq!(mean_pairwise_cosine(&a, &[]), None);
    assert_eq!(mean_pairwise_cosine(&[], &b), None);
    // Centroid of a is (0.5, 0.5): 45° from b.
    assert!(close(centroid_cosine(&a, &b).unwrap(), std::f64::consts::FRAC_1_SQRT_2, 1e-7));
    assert!(close(centroid_cosine(&a, &a).unwrap(), 1.0, 1e-12));
    let orth = vec![vec![0.0, 3.0], vec![0.0, 1.0]];
    assert_eq!(centroid_cosine(&b, &orth).unwrap(), 0.0);
    let opposite = vec![vec![-2.0, 0.0]];
    assert!(close(centroid_cosine(&b, &opposite).unwrap(), -1.0, 1e-12));
    assert_eq!(centroid_cosine(&[], &b), None);
    assert!(centroid_cosine(&[vec![1.0], vec![1.0, 2.0]], &b).unwrap().is_nan());
}

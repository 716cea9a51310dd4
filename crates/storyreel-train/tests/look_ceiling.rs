//! The look ceiling: group means, leave-one-out, and the copier that reads earlier shots.

use candle_core::{Device, Tensor};
use storyreel_train::look_ceiling::{look_ceiling, ShotLabel};

/// Stories of 4 shots over 3 places with 2 looks each; a shot's frame is its place's base,
/// plus `look_size` times its look's offset, plus small per-shot noise.
fn stories(look_size: f64) -> (Vec<Vec<Tensor>>, Vec<Vec<ShotLabel>>) {
    let dev = Device::Cpu;
    let base = |p: usize| Tensor::full(p as f32, (2, 3, 3), &dev).unwrap();
    let offset = |l: u8| Tensor::full(if l == 0 { -1f32 } else { 1.0 }, (2, 3, 3), &dev).unwrap();
    let (mut frames, mut labels) = (Vec::new(), Vec::new());
    let mut state = 0x5eed_u64;
    for s in 0..40u64 {
        let look = |p: usize| ((s as usize + p) % 2) as u8;
        let places = [s as usize % 3, (s as usize + 1) % 3, s as usize % 3, (s as usize + 2) % 3];
        let mut f = Vec::new();
        let mut l = Vec::new();
        for &p in &places {
            let noise = Tensor::from_vec(normals(&mut state, 18), (2, 3, 3), &dev).unwrap();
            f.push(((base(p) + (offset(look(p)) * look_size).unwrap()).unwrap() + noise).unwrap());
            l.push(ShotLabel { place: p, look: look(p) });
        }
        frames.push(f);
        labels.push(l);
    }
    (frames, labels)
}

/// Deterministic noise of standard deviation 0.1 (sums of uniforms).
fn normals(state: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mut sum = 0.0;
            for _ in 0..12 {
                *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                sum += (*state >> 11) as f64 / (1u64 << 53) as f64;
            }
            ((sum - 6.0) * 0.1) as f32
        })
        .collect()
}

#[test]
fn knowing_the_look_helps_exactly_as_much_as_the_looks_differ() {
    let (frames, labels) = stories(0.5);
    let c = look_ceiling(&frames, &labels).unwrap();
    assert_eq!(c.shots, 160);
    // Shot 2 returns to shot 0's place in every story.
    assert_eq!(c.later_shots, 40);
    assert!(c.mse_overall_mean > c.mse_place_mean && c.mse_place_mean > c.mse_look_mean);
    // Place mean leaves the look offset (0.25) plus the noise (0.01); the look mean the noise.
    assert!((c.mse_place_mean - 0.26).abs() < 0.03, "{c:?}");
    assert!(c.mse_look_mean < 0.02, "{c:?}");
    // The copier reads the right look from shot 0 every time and matches the look mean.
    assert_eq!(c.read_look_accuracy, 1.0);
    assert!((c.later_mse_read_look - c.later_mse_look_mean).abs() < 1e-9);
    assert!(c.later_look_gain() > 0.9);
    assert_eq!(c.per_place.iter().map(|r| r.place).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(c.per_place.iter().map(|r| r.shots).sum::<usize>(), 160);
    assert!(c.per_place.iter().all(|r| r.mse_look_mean < 0.1 * r.mse_place_mean), "{c:?}");

    // Looks that change nothing are worth nothing, and the copier guesses.
    let (frames, labels) = stories(0.0);
    let c = look_ceiling(&frames, &labels).unwrap();
    assert!(c.later_look_gain().abs() < 0.1, "{c:?}");
    assert!(c.read_look_accuracy < 0.8, "{c:?}");
}

#[test]
fn mismatched_labels_and_empty_corpora_are_errors() {
    let (frames, mut labels) = stories(0.5);
    labels[3].pop();
    assert!(look_ceiling(&frames, &labels).unwrap_err().to_string().contains("look labels"));
    assert!(look_ceiling(&[], &[]).unwrap_err().to_string().contains("shots"));
}

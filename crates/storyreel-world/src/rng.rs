//! The world's own seeded generator. Stories and pixels must not change when a dependency
//! changes its algorithm, so the world does not use `rand`: SplitMix64 for streams and a
//! stateless hash for textures and grain.

/// A SplitMix64 stream: tiny, fast, and stable forever.
#[derive(Debug, Clone)]
pub struct WorldRng {
    state: u64,
}

impl WorldRng {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed ^ 0x9e37_79b9_7f4a_7c15 }
    }

    /// A stream derived from `seed` and a label, independent of other labels' streams.
    pub fn derived(seed: u64, label: u64) -> Self {
        Self::new(mix64(seed ^ mix64(label.wrapping_add(0x632b_e59b_d9b4_e019))))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range_f(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in `lo..=hi` (`hi >= lo`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        let span = (hi - lo + 1) as u64;
        lo + (self.next_u64() % span) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i);
            items.swap(i, j);
        }
    }
}

/// SplitMix64's finaliser: a strong 64-bit mix.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stateless hash of a lattice point to [0, 1): the basis of value-noise textures and grain.
pub fn hash01(seed: u64, x: i64, y: i64) -> f32 {
    let h = mix64(seed ^ mix64((x as u64).wrapping_mul(0x9e37_79b9) ^ (y as u64).wrapping_mul(0x85eb_ca6b) << 1));
    (h >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Smooth value noise in [0, 1) at continuous coordinates (one octave).
pub fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    let (xf, yf) = (x.floor(), y.floor());
    let (xi, yi) = (xf as i64, yf as i64);
    let (tx, ty) = (x - xf, y - yf);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let a = hash01(seed, xi, yi);
    let b = hash01(seed, xi + 1, yi);
    let c = hash01(seed, xi, yi + 1);
    let d = hash01(seed, xi + 1, yi + 1);
    let top = a + (b - a) * sx;
    let bottom = c + (d - c) * sx;
    top + (bottom - top) * sy
}

/// Two octaves of value noise, in [0, 1).
pub fn fbm(seed: u64, x: f32, y: f32) -> f32 {
    (value_noise(seed, x, y) * 0.65 + value_noise(seed ^ 0x51, x * 2.13, y * 2.13) * 0.35).min(0.999_999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_labels_independent() {
        let a: Vec<u64> = (0..4).map(|_| WorldRng::new(7).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = WorldRng::derived(7, 1);
        let mut y = WorldRng::derived(7, 2);
        assert_ne!(x.next_u64(), y.next_u64());
        let mut r = WorldRng::new(3);
        for _ in 0..1000 {
            let v = r.range(2, 5);
            assert!((2..=5).contains(&v));
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn noise_is_in_range() {
        for i in 0..500 {
            let v = fbm(9, i as f32 * 0.37, i as f32 * 0.11);
            assert!((0.0..1.0).contains(&v));
        }
    }
}

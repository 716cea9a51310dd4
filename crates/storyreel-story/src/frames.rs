//! Shot lengths from peers' frame counts. Our shots are 4k+1 pixel frames (the Wan VAE packs
//! 1 + 4·(L−1) pixel frames into L latent frames), while peers give totals, cut positions or
//! `[start, end)` ranges; every importer turns those into per-shot lengths through these helpers
//! so that the rounding rule is one rule.

/// The 4k+1 length nearest to `n` (at least 1); a tie rounds up. All arithmetic saturates, so an
/// absurd input gives an absurd (and later rejected) length rather than a panic.
pub(crate) fn nearest_4k1(n: u64) -> u64 {
    if n <= 1 {
        return 1;
    }
    let below = (n - 1) / 4;
    let k = if (n - 1) % 4 >= 2 { below.saturating_add(1) } else { below };
    k.saturating_mul(4).saturating_add(1)
}

/// A frame count as `usize`, saturating on targets where `usize` is narrower than `u64`; the
/// validator rejects anything that large anyway.
pub(crate) fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Per-shot lengths from cut positions: shot i spans `bounds[i]..bounds[i + 1]` where `bounds`
/// is `0, cuts…, total`; each span is rounded to 4k+1. Callers have checked that the cuts rise
/// strictly inside `(0, total)`.
pub(crate) fn lengths_from_cuts(cuts: &[u64], total: u64) -> Vec<usize> {
    let mut bounds = Vec::with_capacity(cuts.len() + 2);
    bounds.push(0);
    bounds.extend_from_slice(cuts);
    bounds.push(total);
    bounds.windows(2).map(|w| to_usize(nearest_4k1(w[1].saturating_sub(w[0])))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_4k1() {
        let cases = [(0, 1), (1, 1), (2, 1), (3, 5), (4, 5), (5, 5), (36, 37), (48, 49), (56, 57), (81, 81), (83, 85)];
        for (n, want) in cases {
            assert_eq!(nearest_4k1(n), want, "n = {n}");
        }
        assert!(nearest_4k1(u64::MAX) > 1001);
    }

    #[test]
    fn lengths_follow_cuts() {
        assert_eq!(lengths_from_cuts(&[37, 73, 113, 169, 205], 241), vec![37, 37, 41, 57, 37, 37]);
        assert_eq!(lengths_from_cuts(&[], 81), vec![81]);
    }
}

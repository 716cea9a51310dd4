//! Shot Cut Accuracy (SCA), HoloCine's transition-control metric (peers.md §3.3).
//!
//! A cut is the index of the first frame of a new shot, so valid cuts lie in `1..total_frames`
//! (frame 0 always starts a shot and is never a cut). The score is
//!
//! ```text
//! SCA = exp(-NSD),   NSD = (E_matched + E_penalty) / F_total
//! ```
//!
//! HoloCine leaves the matching and the penalty unspecified; our choices:
//!
//! * **Penalty.** Each missed ground-truth cut and each extra predicted cut costs
//!   `P = F_total / (n_gt + 1)` frames, the expected shot length. A missed cut is as bad as
//!   being off by a whole shot: either way the viewer sees a shot boundary a shot's length away
//!   from where the story put it.
//! * **Gate.** A prediction may only stand for a ground-truth cut when it is at most `P` frames
//!   away. Without the gate, cost minimisation alone would pair cuts up to `2P` apart (leaving a
//!   pair unmatched costs `2P`), which would credit a detection in the neighbouring shot as a hit.
//!   With it, a shift beyond one shot length reads as one missed plus one extra cut, and the
//!   score of an isolated cut still falls monotonically with its shift.
//! * **Matching.** Cuts are matched one-to-one and in order (a later prediction never stands for
//!   an earlier truth cut: shots do not swap), by dynamic programming over the two sorted lists
//!   minimising `sum |pred - gt| + P * unmatched`. It is optimal, unlike greedy nearest matching,
//!   and order-preserving, unlike plain Hungarian matching. Ties prefer matching.

use crate::error::{EvalError, Result};
use serde::{Deserialize, Serialize};

/// One predicted cut standing for one ground-truth cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutMatch {
    /// Ground-truth cut frame.
    pub truth: usize,
    /// Predicted cut frame.
    pub predicted: usize,
    /// `predicted - truth` in frames (negative: the cut came early).
    pub deviation: i64,
}

/// SCA with the matching that produced it, so a report can show where cuts went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaReport {
    /// `exp(-nsd)`, in (0, 1]; 1 when every cut is exactly right.
    pub score: f64,
    /// Normalised shot deviation: total cost over the frame count.
    pub nsd: f64,
    /// Matched pairs in frame order.
    pub matched: Vec<CutMatch>,
    /// Ground-truth cuts with no prediction standing for them, ascending.
    pub missed: Vec<usize>,
    /// Predicted cuts matching no ground-truth cut, ascending.
    pub extra: Vec<usize>,
    /// `P = total_frames / (n_gt + 1)`: the cost of one missed or extra cut, in frames.
    pub penalty_per_cut: f64,
}

/// HoloCine's Shot Cut Accuracy of `predicted` cuts against `truth` in a video of `total_frames`.
///
/// Both lists may come in any order; duplicates and cuts outside `1..total_frames` are errors
/// (they mean the detector or the story parser is broken, and silently fixing them would hide it).
pub fn shot_cut_accuracy(predicted: &[usize], truth: &[usize], total_frames: usize) -> Result<ScaReport> {
    if total_frames == 0 {
        return Err(EvalError::out_of_range("total_frames", 0, "at least 1"));
    }
    let pred = sorted_cuts(predicted, total_frames, "predicted")?;
    let gt = sorted_cuts(truth, total_frames, "ground-truth")?;
    let penalty = total_frames as f64 / (gt.len() + 1) as f64;

    let (n, m) = (gt.len(), pred.len());
    let width = m + 1;
    // cost[i * width + j]: best cost of the first i truth cuts against the first j predictions.
    let mut cost = vec![0.0f64; (n + 1) * width];
    for (j, c) in cost[..width].iter_mut().enumerate() {
        *c = j as f64 * penalty;
    }
    for i in 1..=n {
        cost[i * width] = i as f64 * penalty;
        for j in 1..=m {
            let skip_truth = cost[(i - 1) * width + j] + penalty;
            let skip_pred = cost[i * width + j - 1] + penalty;
            let mut best = skip_truth.min(skip_pred);
            let dev = gt[i - 1].abs_diff(pred[j - 1]) as f64;
            if dev <= penalty {
                best = best.min(cost[(i - 1) * width + j - 1] + dev);
            }
            cost[i * width + j] = best;
        }
    }

    // Walk back, re-deriving each step from the table so ties resolve the same way every time.
    let (mut i, mut j) = (n, m);
    let (mut matched, mut missed, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    while i > 0 || j > 0 {
        let here = cost[i * width + j];
        if i > 0 && j > 0 {
            let dev = gt[i - 1].abs_diff(pred[j - 1]) as f64;
            if dev <= penalty && same(here, cost[(i - 1) * width + j - 1] + dev) {
                matched.push(CutMatch {
                    truth: gt[i - 1],
                    predicted: pred[j - 1],
                    deviation: pred[j - 1] as i64 - gt[i - 1] as i64,
                });
                i -= 1;
                j -= 1;
                continue;
            }
        }
        if i > 0 && (j == 0 || same(here, cost[(i - 1) * width + j] + penalty)) {
            missed.push(gt[i - 1]);
            i -= 1;
        } else {
            extra.push(pred[j - 1]);
            j -= 1;
        }
    }
    matched.reverse();
    missed.reverse();
    extra.reverse();

    // Recompute from the matching rather than reading the table, so the report adds up exactly.
    let e_matched: f64 = matched.iter().map(|c| c.deviation.unsigned_abs() as f64).sum();
    let e_penalty = (missed.len() + extra.len()) as f64 * penalty;
    let nsd = (e_matched + e_penalty) / total_frames as f64;
    Ok(ScaReport { score: (-nsd).exp(), nsd, matched, missed, extra, penalty_per_cut: penalty })
}

/// Equal up to rounding in the sums of the DP table.
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The cuts sorted, after checking each lies in `1..total_frames` and none repeats.
fn sorted_cuts(cuts: &[usize], total_frames: usize, which: &str) -> Result<Vec<usize>> {
    let mut sorted = cuts.to_vec();
    sorted.sort_unstable();
    if let Some(&bad) = sorted.iter().find(|&&c| c == 0 || c >= total_frames) {
        return Err(EvalError::out_of_range(
            format!("{which} cut frame"),
            bad,
            format!("1..{total_frames} (frame 0 always starts a shot; cuts index the first frame of a new shot)"),
        ));
    }
    if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(EvalError::Mismatch(format!("{which} cuts list frame {} twice", pair[0])));
    }
    Ok(sorted)
}

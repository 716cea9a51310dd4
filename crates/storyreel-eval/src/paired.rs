//! Paired comparison of two benchmark runs: both generated the same stories with the same
//! seeds, so the per-story differences (B − A) cancel most of what makes one story harder than
//! another, and their mean ± standard error says whether a change is more than noise.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::evaluate::{BatchReport, StoryReport};

/// The per-story numbers a paired comparison looks at.
pub const PAIRED_METRICS: [&str; 5] =
    ["character_consistency", "place_consistency", "adherence", "story_specific_character", "story_specific_place"];

/// Mean ± standard error of one metric's per-story differences.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedDifference {
    /// Which metric (one of [`PAIRED_METRICS`]).
    pub metric: &'static str,
    /// Stories where both runs have the metric.
    pub stories: usize,
    /// Mean of B − A over those stories.
    pub mean: f64,
    /// Standard error of that mean (sample standard deviation / √n; 0 for one story).
    pub standard_error: f64,
}

impl PairedDifference {
    /// The mean in standard errors (0 when the error is 0).
    pub fn z(&self) -> f64 {
        if self.standard_error > 0.0 {
            self.mean / self.standard_error
        } else {
            0.0
        }
    }
}

/// One story's value of `metric`, counting only shots `from_shot` and later (0-based; for
/// consistency, the pairs whose later shot is one of them). `None` when nothing counts.
pub fn story_value(report: &StoryReport, metric: &str, from_shot: usize) -> Option<f64> {
    let values: Vec<f64> = match metric {
        "adherence" => report.shots.iter().filter(|s| s.index >= from_shot).map(|s| s.adherence).collect(),
        "character_consistency" | "place_consistency" => {
            let kind = metric.trim_end_matches("_consistency");
            report.pairs.iter().filter(|p| p.kind == kind && p.b >= from_shot).map(|p| p.similarity).collect()
        }
        "story_specific_character" | "story_specific_place" => {
            let kind = metric.trim_start_matches("story_specific_");
            report.pairs.iter().filter(|p| p.kind == kind && p.b >= from_shot).filter_map(|p| p.specific).collect()
        }
        _ => return None,
    };
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// B − A per story for each of [`PAIRED_METRICS`], over the stories both runs scored (matched
/// by id). Errors when the runs share no story.
pub fn paired_differences(a: &BatchReport, b: &BatchReport, from_shot: usize) -> Result<Vec<PairedDifference>> {
    let by_id: HashMap<&str, &StoryReport> = a.reports.iter().map(|r| (r.story.as_str(), r)).collect();
    let matched: Vec<(&StoryReport, &StoryReport)> =
        b.reports.iter().filter_map(|rb| by_id.get(rb.story.as_str()).map(|ra| (*ra, rb))).collect();
    if matched.is_empty() {
        return Err(EvalError::Mismatch(
            "the two runs share no story id; a paired comparison needs the same stories in both".into(),
        ));
    }
    Ok(PAIRED_METRICS
        .iter()
        .map(|&metric| {
            let diffs: Vec<f64> = matched
                .iter()
                .filter_map(|(ra, rb)| Some(story_value(rb, metric, from_shot)? - story_value(ra, metric, from_shot)?))
                .collect();
            let (mean, standard_error) = mean_and_standard_error(&diffs);
            PairedDifference { metric, stories: diffs.len(), mean, standard_error }
        })
        .collect())
}

/// Mean and standard error of the mean (0, 0 for no values).
fn mean_and_standard_error(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

/// The paired differences as a Markdown table.
pub fn paired_markdown(rows: &[PairedDifference], from_shot: usize) -> String {
    let mut s = String::new();
    let shots = if from_shot == 0 { "all shots".to_string() } else { format!("shots {} and later", from_shot + 1) };
    let _ = writeln!(s, "\nPaired per-story differences, B − A ({shots}):\n");
    let _ = writeln!(s, "| metric | stories | B − A (mean ± SE) | in SE |\n|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| `{}` | {} | {:+.3} ± {:.3} | {:+.1} |",
            r.metric,
            r.stories,
            r.mean,
            r.standard_error,
            r.z()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{Metrics, PairScore, ShotReport};
    use crate::sca::ScaReport;
    use storyreel_world::catalog::{Framing, Place};

    /// A story report with these shot adherences and (earlier, later, kind, similarity) pairs.
    fn story(id: &str, adherence: &[f64], pairs: &[(usize, usize, &str, f64)]) -> StoryReport {
        let shots = adherence
            .iter()
            .enumerate()
            .map(|(index, &adherence)| ShotReport {
                index,
                caption: String::new(),
                frames: (index * 17, index * 17 + 17),
                expected_place: None,
                expected_framing: None,
                expected_characters: Vec::new(),
                seen_place: Place::Meadow,
                seen_framing: Framing::Wide,
                seen_characters: Vec::new(),
                adherence,
                intra_consistency: 0.9,
                motion: 0.0,
                dynamic: false,
                character_looks: Vec::new(),
                place_looks: Vec::new(),
            })
            .collect();
        let pairs = pairs
            .iter()
            .map(|&(a, b, kind, similarity)| PairScore { a, b, kind: kind.into(), similarity, specific: None })
            .collect();
        StoryReport {
            story: id.into(),
            frames: adherence.len() * 17,
            fps: 16.0,
            metrics: Metrics::default(),
            cuts_expected: Vec::new(),
            cuts_detected: Vec::new(),
            cut_matching: ScaReport {
                score: 1.0,
                nsd: 0.0,
                matched: Vec::new(),
                missed: Vec::new(),
                extra: Vec::new(),
                penalty_per_cut: 17.0,
            },
            shots,
            pairs,
        }
    }

    fn batch(reports: Vec<StoryReport>) -> BatchReport {
        BatchReport {
            stories: reports.len(),
            shots: 0,
            metrics: Metrics::default(),
            by_shot_index: Vec::new(),
            reports,
        }
    }

    #[test]
    fn differences_pair_stories_by_id_and_count_only_later_shots_when_asked() {
        let a = batch(vec![
            story("s1", &[0.2, 0.4, 0.6], &[(0, 1, "character", 0.5), (0, 2, "place", 0.3)]),
            story("s2", &[0.1, 0.1], &[(0, 1, "character", 0.2)]),
            story("only-a", &[0.9], &[]),
        ]);
        // B lists its stories in another order; a story only one run has is left out.
        let b = batch(vec![
            story("s2", &[0.3, 0.2], &[(0, 1, "character", 0.6)]),
            story("s1", &[0.2, 0.4, 0.9], &[(0, 1, "character", 0.7), (0, 2, "place", 0.2)]),
        ]);
        let all = paired_differences(&a, &b, 0).unwrap();
        let get = |rows: &[PairedDifference], m: &str| rows.iter().find(|r| r.metric == m).cloned().unwrap();
        let adherence = get(&all, "adherence");
        assert_eq!(adherence.stories, 2);
        // s1: 0.5 − 0.4 = 0.1; s2: 0.25 − 0.1 = 0.15.
        assert!((adherence.mean - 0.125).abs() < 1e-12, "{adherence:?}");
        assert!((adherence.standard_error - 0.025).abs() < 1e-12, "{adherence:?}");
        let character = get(&all, "character_consistency");
        assert!((character.mean - 0.3).abs() < 1e-12, "s1 +0.2, s2 +0.4: {character:?}");
        let place = get(&all, "place_consistency");
        assert_eq!((place.stories, place.standard_error), (1, 0.0), "only s1 has a place pair");
        assert!((place.mean + 0.1).abs() < 1e-12);
        // From the third shot on: only s1 has one, and only its place pair ends there.
        let later = paired_differences(&a, &b, 2).unwrap();
        assert_eq!(get(&later, "adherence").stories, 1);
        assert!((get(&later, "adherence").mean - 0.3).abs() < 1e-12);
        assert_eq!(get(&later, "character_consistency").stories, 0);
        assert!(paired_markdown(&later, 2).contains("shots 3 and later"));
        let disjoint = batch(vec![story("other", &[0.5], &[])]);
        assert!(paired_differences(&a, &disjoint, 0).unwrap_err().to_string().contains("no story id"));
    }

    /// Three two-shot stories of the same cast in the same place; shot looks from `look(story)`.
    fn same_place_stories(look: impl Fn(usize) -> Vec<f32>) -> BatchReport {
        let reports = (0..3)
            .map(|i| {
                let sim = 1.0;
                let mut r = story(&format!("s{i}"), &[0.5, 0.5], &[(0, 1, "character", sim), (0, 1, "place", sim)]);
                r.metrics.inter_shot_place_consistency = Some(sim);
                for s in r.shots.iter_mut() {
                    s.expected_place = Some(Place::Meadow);
                    s.expected_characters = vec![2];
                    s.place_looks = look(i);
                    s.character_looks = look(i);
                }
                r
            })
            .collect();
        crate::evaluate::summarise(reports, None)
    }

    #[test]
    fn story_specific_consistency_tells_one_look_everywhere_from_each_storys_own() {
        let one_hot = |k: usize| (0..4).map(|j| f32::from(u8::from(j == k))).collect::<Vec<f32>>();
        // Every story draws the meadow and the character in the same look: as consistent as can
        // be, and nothing specific to any story.
        let fixed = same_place_stories(|_| one_hot(0));
        assert_eq!(fixed.metrics.inter_shot_place_consistency, Some(1.0));
        assert_eq!(fixed.metrics.story_specific_place_consistency, Some(0.0));
        assert_eq!(fixed.metrics.story_specific_character_consistency, Some(0.0));
        // Each story keeps its own look: same plain consistency, all of it specific.
        let own = same_place_stories(one_hot);
        assert_eq!(own.metrics.inter_shot_place_consistency, Some(1.0));
        assert_eq!(own.metrics.story_specific_place_consistency, Some(1.0));
        assert!(own.reports.iter().all(|r| r.pairs.iter().all(|p| p.specific == Some(1.0))));
        let rows = paired_differences(&fixed, &own, 0).unwrap();
        let place = rows.iter().find(|r| r.metric == "story_specific_place").unwrap();
        assert_eq!((place.stories, place.mean), (3, 1.0));
        // A lone story, or reports without readings, have nothing to compare against.
        let lone = crate::evaluate::summarise(vec![own.reports[0].clone()], None);
        assert_eq!(lone.metrics.story_specific_place_consistency, None);
        let old = crate::evaluate::summarise(vec![story("a", &[0.5, 0.5], &[(0, 1, "place", 1.0)]); 2], None);
        assert_eq!(old.metrics.story_specific_place_consistency, None);
    }

    #[test]
    fn mean_and_standard_error_match_a_hand_computation() {
        let (m, se) = mean_and_standard_error(&[1.0, 2.0, 3.0, 6.0]);
        assert!((m - 3.0).abs() < 1e-12);
        // sample variance (4 + 1 + 0 + 9) / 3 = 14/3; SE = sqrt(14/3 / 4).
        assert!((se - (14.0f64 / 12.0).sqrt()).abs() < 1e-12, "{se}");
        assert_eq!(mean_and_standard_error(&[]), (0.0, 0.0));
        assert_eq!(mean_and_standard_error(&[0.5]), (0.5, 0.0));
    }
}

//! Paired comparison of two benchmark runs: both generated the same stories with the same
//! seeds, so the per-story differences (B − A) cancel most of what makes one story harder than
//! another, and their mean ± standard error says whether a change is more than noise.
//!
//! That standard error covers the stories, not the training: two twins trained with another
//! seed can differ by more than a recipe change does. [`pooled_differences`] therefore takes
//! several (A, B) pairs, e.g. a twin pair per training seed, averages each story's difference
//! over the pairs and keeps every pair's own mean, so the spread between seeds is visible.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::evaluate::{BatchReport, StoryReport};
use crate::look_agreement::story_look_agreement;

/// The per-story numbers a paired comparison looks at.
pub const PAIRED_METRICS: [&str; 7] = [
    "character_consistency",
    "place_consistency",
    "adherence",
    "story_specific_character",
    "story_specific_place",
    "character_look_agreement",
    "place_look_agreement",
];

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
        "character_look_agreement" | "place_look_agreement" => {
            return story_look_agreement(report, metric.trim_end_matches("_look_agreement"), from_shot);
        }
        _ => return None,
    };
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Per-story differences B − A of every paired metric, counting shots from index `from_shot`
/// (0-based) on, over the stories both runs hold.
pub fn paired_differences(a: &BatchReport, b: &BatchReport, from_shot: usize) -> Result<Vec<PairedDifference>> {
    Ok(pooled_differences(&[(a, b)], from_shot)?
        .into_iter()
        .map(|p| PairedDifference {
            metric: p.metric,
            stories: p.stories,
            mean: p.mean,
            standard_error: p.standard_error,
        })
        .collect())
}

/// One paired metric pooled over several (A, B) pairs of runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PooledDifference {
    /// Metric name (one of [`PAIRED_METRICS`]).
    pub metric: &'static str,
    /// Stories with a value in every run of every pair.
    pub stories: usize,
    /// Mean over those stories of the story's B − A averaged over the pairs.
    pub mean: f64,
    /// Standard error of that mean over the stories.
    pub standard_error: f64,
    /// Each pair's own mean B − A over the same stories.
    pub per_pair: Vec<f64>,
}

/// A run's story reports by story id.
type StoryIndex<'a> = HashMap<&'a str, &'a StoryReport>;

fn story_index(run: &BatchReport) -> StoryIndex<'_> {
    run.reports.iter().map(|s| (s.story.as_str(), s)).collect()
}

/// Paired differences pooled over `pairs` of runs of the same stories (e.g. one twin pair per
/// training seed): each story's B − A is averaged over the pairs; stories missing a value in
/// any run are left out of that metric.
pub fn pooled_differences(pairs: &[(&BatchReport, &BatchReport)], from_shot: usize) -> Result<Vec<PooledDifference>> {
    let Some((first_a, _)) = pairs.first() else {
        return Err(EvalError::Mismatch("a paired comparison needs at least one pair of runs".into()));
    };
    let indexed: Vec<(StoryIndex<'_>, StoryIndex<'_>)> =
        pairs.iter().map(|&(a, b)| (story_index(a), story_index(b))).collect();
    let shared: Vec<&str> = first_a
        .reports
        .iter()
        .map(|r| r.story.as_str())
        .filter(|id| indexed.iter().all(|(a, b)| a.contains_key(id) && b.contains_key(id)))
        .collect();
    if shared.is_empty() {
        return Err(EvalError::Mismatch(
            "the runs share no story id; a paired comparison needs the same stories in every run".into(),
        ));
    }
    Ok(PAIRED_METRICS
        .iter()
        .map(|&metric| {
            // Rows: stories with a value in every run; columns: the pairs.
            let rows: Vec<Vec<f64>> = shared
                .iter()
                .filter_map(|id| {
                    indexed
                        .iter()
                        .map(|(a, b)| {
                            Some(story_value(b[id], metric, from_shot)? - story_value(a[id], metric, from_shot)?)
                        })
                        .collect::<Option<Vec<f64>>>()
                })
                .collect();
            let story_means: Vec<f64> = rows.iter().map(|r| r.iter().sum::<f64>() / r.len() as f64).collect();
            let (mean, standard_error) = mean_and_standard_error(&story_means);
            let per_pair = (0..pairs.len())
                .map(|k| mean_and_standard_error(&rows.iter().map(|r| r[k]).collect::<Vec<_>>()).0)
                .collect();
            PooledDifference { metric, stories: rows.len(), mean, standard_error, per_pair }
        })
        .collect())
}

/// Pooled differences as a Markdown table, with each pair's own mean.
pub fn pooled_markdown(rows: &[PooledDifference], from_shot: usize) -> String {
    let mut s = String::new();
    let shots = if from_shot == 0 { "all shots".to_string() } else { format!("shots {} and later", from_shot + 1) };
    let pairs = rows.first().map_or(0, |r| r.per_pair.len());
    let _ = writeln!(s, "\nPaired per-story differences, B − A, pooled over {pairs} pairs ({shots}):\n");
    let _ = writeln!(
        s,
        "| metric | stories | each pair | pooled (mean ± SE over stories) | in SE |\n|---|---|---|---|---|"
    );
    for r in rows {
        let each: Vec<String> = r.per_pair.iter().map(|v| format!("{v:+.3}")).collect();
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {:+.3} ± {:.3} | {:+.1} |",
            r.metric,
            r.stories,
            each.join(" / "),
            r.mean,
            r.standard_error,
            if r.standard_error > 0.0 { r.mean / r.standard_error } else { 0.0 }
        );
    }
    let _ = writeln!(s, "\nThe standard error is over stories; the spread of the pairs' means shows what seeds add.");
    s
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

    #[test]
    fn pooled_differences_average_each_story_over_the_pairs_and_keep_each_pairs_mean() {
        let run = |values: &[(&str, f64)]| {
            batch(values.iter().map(|&(id, v)| story(id, &[v, v], &[(0, 1, "character", v)])).collect())
        };
        // Seed 1: s1 +0.2, s2 +0.4. Seed 2: s1 0.0, s2 +0.2, and s3 exists only here.
        let (a1, b1) = (run(&[("s1", 0.1), ("s2", 0.1)]), run(&[("s1", 0.3), ("s2", 0.5)]));
        let (a2, b2) = (run(&[("s1", 0.5), ("s2", 0.2), ("s3", 0.0)]), run(&[("s1", 0.5), ("s2", 0.4), ("s3", 0.9)]));
        let rows = pooled_differences(&[(&a1, &b1), (&a2, &b2)], 0).unwrap();
        let adherence = rows.iter().find(|r| r.metric == "adherence").unwrap();
        assert_eq!(adherence.stories, 2, "s3 is not in every run");
        // Story means over the seeds: s1 +0.1, s2 +0.3; the seeds' own means: +0.3 and +0.1.
        assert!((adherence.mean - 0.2).abs() < 1e-12, "{adherence:?}");
        assert!((adherence.standard_error - 0.1).abs() < 1e-12, "{adherence:?}");
        assert!((adherence.per_pair[0] - 0.3).abs() < 1e-12 && (adherence.per_pair[1] - 0.1).abs() < 1e-12);
        // One pair gives the plain paired differences.
        let single = pooled_differences(&[(&a1, &b1)], 0).unwrap();
        let plain = paired_differences(&a1, &b1, 0).unwrap();
        assert!(single.iter().zip(&plain).all(|(p, q)| p.mean == q.mean && p.standard_error == q.standard_error));
        let table = pooled_markdown(&rows, 0);
        assert!(table.contains("pooled over 2 pairs") && table.contains("+0.300 / +0.100"), "{table}");
        assert!(pooled_differences(&[], 0).is_err());
        let elsewhere = run(&[("x", 0.1)]);
        assert!(pooled_differences(&[(&a1, &b1), (&elsewhere, &elsewhere)], 0)
            .unwrap_err()
            .to_string()
            .contains("no story id"));
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
    fn look_agreement_counts_the_pairs_read_in_the_same_look() {
        // The meadow's looks are place readings 0–2; character 2's looks are readings 6–8.
        let place = |l: usize| (0..18).map(|j| if j == l { 0.9 } else { 0.05 }).collect::<Vec<f32>>();
        let cast = |l: usize| (0..30).map(|j| if j == 6 + l { 0.9 } else { 0.05 }).collect::<Vec<f32>>();
        let pairs = [(0, 1, "place", 0.9), (0, 2, "place", 0.9), (1, 2, "place", 0.9), (0, 2, "character", 0.9)];
        let mut r = story("s", &[0.5, 0.5, 0.5], &pairs);
        for (s, (p, c)) in r.shots.iter_mut().zip([(1, 0), (1, 1), (2, 0)]) {
            s.expected_place = Some(Place::Meadow);
            s.expected_characters = vec![2];
            s.place_looks = place(p);
            s.character_looks = cast(c);
        }
        // Place pairs: (0, 1) agree, (0, 2) and (1, 2) do not; the character pair (0, 2) agrees.
        let third = |v: Option<f64>| v.map(|v| (v - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(third(story_look_agreement(&r, "place", 0)), Some(true));
        assert_eq!(story_look_agreement(&r, "place", 2), Some(0.0));
        assert_eq!(story_look_agreement(&r, "character", 0), Some(1.0));
        assert_eq!(story_look_agreement(&r, "character", 3), None);
        let summary = crate::evaluate::summarise(vec![r.clone()], None);
        assert_eq!(third(summary.metrics.place_look_agreement), Some(true));
        assert_eq!(summary.metrics.character_look_agreement, Some(1.0));
        // Paired: B draws the third shot in the first shots' look.
        let mut b = r.clone();
        b.shots[2].place_looks = place(1);
        let rows = paired_differences(&batch(vec![r]), &batch(vec![b]), 0).unwrap();
        let agreement = rows.iter().find(|d| d.metric == "place_look_agreement").unwrap();
        assert!((agreement.mean - 2.0 / 3.0).abs() < 1e-12, "{agreement:?}");
        // Reports without readings have no agreement.
        let bare = story("b", &[0.5, 0.5], &[(0, 1, "place", 1.0)]);
        assert_eq!(story_look_agreement(&bare, "place", 0), None);
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

//! Look agreement: do two shots of a story draw the same character or place in the same look?
//!
//! A story's looks (a place's palette, a character's scarf) are drawn per story and never
//! captioned, so only context can carry them from shot to shot. For each consistency pair the
//! probe's reading of the entity's look is taken in both shots (the most likely of its looks)
//! and the pair scores 1 when they agree. A model that ignores its context agrees only as often
//! as its own look preferences make it; one that copies its earlier shots agrees more. Unlike
//! the consistencies, which are cosines over all readings, this counts the look alone.

use storyreel_world::catalog::{Place, LOOKS};

use crate::evaluate::{PairScore, ShotReport, StoryReport};

/// The look the readings favour for the entity whose looks start at `start`.
fn read_look(readings: &[f32], start: usize) -> Option<usize> {
    let looks = readings.get(start..start + LOOKS)?;
    (0..LOOKS).max_by(|&a, &b| looks[a].total_cmp(&looks[b]))
}

/// Whether the pair's two shots show its entity in the same look: 1 or 0 for a place, the
/// share of the cast in the same look for characters. `None` without readings.
pub fn pair_agreement(pair: &PairScore, shots: &[ShotReport]) -> Option<f64> {
    let (a, b) = (shots.iter().find(|s| s.index == pair.a)?, shots.iter().find(|s| s.index == pair.b)?);
    match pair.kind.as_str() {
        "place" => {
            let place = a.expected_place?;
            let start = Place::ALL.iter().position(|&p| p == place)? * LOOKS;
            let same = read_look(&a.place_looks, start)? == read_look(&b.place_looks, start)?;
            Some(f64::from(u8::from(same)))
        }
        "character" => {
            let cast = &a.expected_characters;
            let same: Vec<f64> = cast
                .iter()
                .map(|&c| {
                    let same = read_look(&a.character_looks, c * LOOKS)? == read_look(&b.character_looks, c * LOOKS)?;
                    Some(f64::from(u8::from(same)))
                })
                .collect::<Option<_>>()?;
            (!same.is_empty()).then(|| same.iter().sum::<f64>() / same.len() as f64)
        }
        _ => None,
    }
}

/// Mean agreement of a story's `kind` pairs ("character" or "place") whose later shot is
/// `from_shot` or later; `None` when no pair counts.
pub fn story_look_agreement(report: &StoryReport, kind: &str, from_shot: usize) -> Option<f64> {
    let v: Vec<f64> = report
        .pairs
        .iter()
        .filter(|p| p.kind == kind && p.b >= from_shot)
        .filter_map(|p| pair_agreement(p, &report.shots))
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

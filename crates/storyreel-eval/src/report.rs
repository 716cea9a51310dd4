//! The files `storyreel eval` writes: a JSON report, a Markdown summary and a contact sheet,
//! and side-by-side comparisons of two runs.

use std::fmt::Write as _;
use std::path::Path;

use storyreel_media::{ContactSheet, ContactSheetOptions, RgbFrame};
use storyreel_world::CHARACTERS;

use crate::error::{EvalError, Result};
use crate::evaluate::{BatchReport, Metrics, StoryReport};

/// Every metric of [`Metrics`] with its JSON key, in table order; `None` when not computed.
pub fn metric_rows(m: &Metrics) -> Vec<(&'static str, Option<f64>)> {
    vec![
        ("shot_cut_accuracy", Some(m.shot_cut_accuracy)),
        ("intra_shot_consistency", Some(m.intra_shot_consistency)),
        ("inter_shot_character_consistency", m.inter_shot_character_consistency),
        ("inter_shot_place_consistency", m.inter_shot_place_consistency),
        ("story_specific_character_consistency", m.story_specific_character_consistency),
        ("story_specific_place_consistency", m.story_specific_place_consistency),
        ("character_look_agreement", m.character_look_agreement),
        ("place_look_agreement", m.place_look_agreement),
        ("prompt_adherence", Some(m.prompt_adherence)),
        ("adherence_place", Some(m.adherence_place)),
        ("adherence_framing", Some(m.adherence_framing)),
        ("adherence_characters", Some(m.adherence_characters)),
        ("dynamic_degree", Some(m.dynamic_degree)),
        ("mean_motion", Some(m.mean_motion)),
        ("quality_fd", m.quality_fd),
    ]
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.4}"))
}

fn names(ids: &[usize]) -> String {
    if ids.is_empty() {
        return "nobody".into();
    }
    ids.iter()
        .map(|&c| CHARACTERS.get(c).map_or_else(|| format!("#{c}"), |ch| ch.phrase()))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// A Markdown summary of one story's evaluation.
pub fn story_markdown(r: &StoryReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation of story `{}`\n", r.story);
    let _ = writeln!(s, "{} frames at {} fps, {} shots.\n", r.frames, r.fps, r.shots.len());
    let _ = writeln!(s, "| metric | value |\n|---|---|");
    for (k, v) in metric_rows(&r.metrics) {
        let _ = writeln!(s, "| `{k}` | {} |", fmt(v));
    }
    let _ = writeln!(
        s,
        "\nCuts: expected {:?}, detected {:?} ({} matched, {} missed, {} extra).\n",
        r.cuts_expected,
        r.cuts_detected,
        r.cut_matching.matched.len(),
        r.cut_matching.missed.len(),
        r.cut_matching.extra.len()
    );
    let _ = writeln!(s, "| shot | frames | asked | seen | adherence | intra | motion |\n|---|---|---|---|---|---|---|");
    for sh in &r.shots {
        let asked = format!(
            "{}, {}, {}",
            names(&sh.expected_characters),
            sh.expected_place.map_or("?", |p| p.noun()),
            sh.expected_framing.map_or("?", |f| f.phrase())
        );
        let seen = format!("{}, {}, {}", names(&sh.seen_characters), sh.seen_place.noun(), sh.seen_framing.phrase());
        let _ = writeln!(
            s,
            "| {} | {}–{} | {} | {} | {:.2} | {:.3} | {:.2}{} |",
            sh.index + 1,
            sh.frames.0,
            sh.frames.1,
            asked,
            seen,
            sh.adherence,
            sh.intra_consistency,
            sh.motion,
            if sh.dynamic { " (dynamic)" } else { "" }
        );
    }
    s
}

/// A Markdown summary of a batch: the means, then one line per story.
pub fn batch_markdown(b: &BatchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation of {} stories ({} shots)\n", b.stories, b.shots);
    let _ = writeln!(s, "| metric | mean |\n|---|---|");
    for (k, v) in metric_rows(&b.metrics) {
        let _ = writeln!(s, "| `{k}` | {} |", fmt(v));
    }
    if !b.by_shot_index.is_empty() {
        let _ = writeln!(s, "\n## By shot index\n");
        let _ = writeln!(s, "| shot | stories | adherence | intra | char. vs earlier | place vs earlier |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in &b.by_shot_index {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {:.3} | {} | {} |",
                r.index + 1,
                r.shots,
                r.adherence,
                r.intra_consistency,
                fmt(r.character_consistency),
                fmt(r.place_consistency)
            );
        }
    }
    let _ = writeln!(s, "\n| story | shots | cut acc. | intra | inter char. | inter place | adherence | dynamic |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in &b.reports {
        let m = &r.metrics;
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {} | {} | {:.3} | {:.2} |",
            r.story,
            r.shots.len(),
            m.shot_cut_accuracy,
            m.intra_shot_consistency,
            fmt(m.inter_shot_character_consistency),
            fmt(m.inter_shot_place_consistency),
            m.prompt_adherence,
            m.dynamic_degree
        );
    }
    s
}

/// Two runs' metrics side by side with the difference (B − A).
pub fn compare_markdown(name_a: &str, a: &Metrics, name_b: &str, b: &Metrics) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| metric | {name_a} | {name_b} | B − A |\n|---|---|---|---|");
    for ((k, va), (_, vb)) in metric_rows(a).into_iter().zip(metric_rows(b)) {
        let delta = match (va, vb) {
            (Some(x), Some(y)) => format!("{:+.4}", y - x),
            _ => "–".into(),
        };
        let _ = writeln!(s, "| `{k}` | {} | {} | {delta} |", fmt(va), fmt(vb));
    }
    s
}

/// Many runs' metrics as one table, one column per run (the benchmark's corruption table).
pub fn table_markdown(runs: &[(String, Metrics)]) -> String {
    let mut s = String::new();
    let _ = write!(s, "| metric |");
    for (name, _) in runs {
        let _ = write!(s, " {name} |");
    }
    let _ = write!(s, "\n|---|");
    for _ in runs {
        let _ = write!(s, "---|");
    }
    s.push('\n');
    let rows: Vec<Vec<(&str, Option<f64>)>> = runs.iter().map(|(_, m)| metric_rows(m)).collect();
    if let Some(first) = rows.first() {
        for (i, (k, _)) in first.iter().enumerate() {
            let _ = write!(s, "| `{k}` |");
            for r in &rows {
                let _ = write!(s, " {} |", fmt(r[i].1));
            }
            s.push('\n');
        }
    }
    s
}

/// A contact sheet: one row per shot, titled with the caption and what the probe saw.
pub fn contact_sheet(report: &StoryReport, frames: &[RgbFrame]) -> Result<ContactSheet> {
    let mut sheet = ContactSheet::new(ContactSheetOptions {
        title: Some(format!(
            "{}: cut accuracy {:.3}, adherence {:.3}",
            report.story, report.metrics.shot_cut_accuracy, report.metrics.prompt_adherence
        )),
        frames_per_row: 5,
        ..ContactSheetOptions::default()
    })?;
    for sh in &report.shots {
        let (a, b) = sh.frames;
        if b > frames.len() || a >= b {
            return Err(EvalError::Mismatch(format!("shot {} frames {a}..{b} are outside the video", sh.index + 1)));
        }
        // The sheet numbers its rows itself ("Shot N: ").
        let label = format!(
            "{} | seen: {}, {}, {} ({:.2})",
            sh.caption,
            names(&sh.seen_characters),
            sh.seen_place.noun(),
            sh.seen_framing.phrase(),
            sh.adherence
        );
        sheet.add_shot(&label, &frames[a..b])?;
    }
    Ok(sheet)
}

/// Writes `report.json`, `report.md` and `contact.png` into `dir`.
pub fn write_story_report(dir: &Path, report: &StoryReport, frames: &[RgbFrame]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::Mismatch(format!("{}: {e}", dir.display())))?;
    write_text(&dir.join("report.json"), &(to_json(report)? + "\n"))?;
    write_text(&dir.join("report.md"), &story_markdown(report))?;
    contact_sheet(report, frames)?.save(dir.join("contact.png"))?;
    Ok(())
}

/// Pretty JSON of any report.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| EvalError::Mismatch(format!("cannot write the report as JSON: {e}")))
}

/// Writes a text file through a temporary name, so a reader never sees half a report.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    Ok(storyreel_media::write_atomic(path, text.as_bytes())?)
}

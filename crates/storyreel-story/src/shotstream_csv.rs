//! ShotStream's index CSV (`demo/testdata/testset.csv`): a header naming
//! `shot_num_from_caption`, `json_path` and `frame_number` (other columns, such as the training
//! sets' `video_path`, are ignored), then one story per row whose captions are in the caption JSON
//! the row names (`shotstream_json`).
//!
//! `frame_number` may be ShotStream's own cell, a list of `[start, end)` ranges such as
//! `"[[0, 81], [81, 162]]"` (each shot is `end - start` frames), or one whole number, the total
//! frame count of the video, split evenly (`total / shots`, rounded down); either way each shot's
//! length is then rounded to the nearest 4k+1. An empty or absent cell leaves lengths unset.
//!
//! ShotStream's loader takes the first `len(frame_number)` captions of a file and ignores the rest
//! (its demo `01.json` holds six captions under a row of five), so a caption file with more shots
//! than `shot_num_from_caption` is cut to that many; one with fewer is an error.

use csv::{ErrorKind, ReaderBuilder, StringRecord, Trim};
use serde_json::Value;

use crate::error::{preview, StoryError};
use crate::frames::{nearest_4k1, to_usize};
use crate::{shotstream_json, Story};

/// Reads the caption JSON a row names: given the `json_path` cell, returns the name to report it
/// by and its text. The file system loader lives in `read`; tests and the fuzzer pass their own.
pub type CaptionLoader<'a> = dyn FnMut(&str) -> Result<(String, String), StoryError> + 'a;

/// The columns a ShotStream index must have.
const REQUIRED: [&str; 2] = ["shot_num_from_caption", "json_path"];

/// Parses an index CSV into one story per row, loading each row's captions with `load`.
pub fn parse_index(text: &str, origin: &str, load: &mut CaptionLoader<'_>) -> Result<Vec<Story>, StoryError> {
    let mut reader = ReaderBuilder::new().has_headers(true).trim(Trim::All).from_reader(text.as_bytes());
    let header = reader.headers().map_err(|e| csv_error(origin, &e))?.clone();
    let column = |name: &str| header.iter().position(|h| h == name);
    let mut required = [0usize; 2];
    for (slot, name) in required.iter_mut().zip(REQUIRED) {
        *slot = column(name).ok_or_else(|| {
            StoryError::at_line(
                origin,
                1,
                format!(
                    "the header has no {name} column; a ShotStream index starts with \
                     shot_num_from_caption,json_path,frame_number"
                ),
            )
        })?;
    }
    let [num_col, path_col] = required;
    let frames_col = column("frame_number");
    let mut stories = Vec::new();
    let mut record = StringRecord::new();
    let mut row = 0usize;
    while reader.read_record(&mut record).map_err(|e| csv_error(origin, &e))? {
        row += 1;
        let line = record.position().map_or(row + 1, |p| to_usize(p.line()));
        let cell = |col: usize| record.get(col).unwrap_or("");
        let at = |message: String| StoryError::at_line(origin, line, format!("row {row}: {message}"));
        let shot_num = parse_shot_num(cell(num_col)).map_err(at)?;
        let lengths = match frames_col {
            Some(col) => parse_frame_number(cell(col)).map_err(at)?,
            None => Lengths::Unset,
        };
        let json_path = cell(path_col);
        if json_path.is_empty() {
            return Err(at("json_path is empty".to_string()));
        }
        let in_row =
            |inner: StoryError| StoryError::Row { origin: origin.to_string(), line, row, inner: Box::new(inner) };
        let (json_origin, json_text) = load(json_path).map_err(in_row)?;
        let mut story = shotstream_json::parse(&json_text, &json_origin).map_err(in_row)?;
        if story.shots.len() < shot_num {
            return Err(at(format!(
                "shot_num_from_caption is {shot_num} but {json_origin} holds only {} shot captions",
                story.shots.len()
            )));
        }
        story.shots.truncate(shot_num);
        let frames = lengths.per_shot(shot_num).map_err(at)?;
        if let Some(frames) = frames {
            for (shot, f) in story.shots.iter_mut().zip(frames) {
                shot.frames = Some(f);
            }
        }
        stories.push(story);
    }
    if stories.is_empty() {
        return Err(StoryError::at_line(origin, 1, "the index has a header but no rows"));
    }
    Ok(stories)
}

fn parse_shot_num(cell: &str) -> Result<usize, String> {
    match cell.parse::<u64>() {
        Ok(0) => Err("shot_num_from_caption is 0; a story has at least one shot".to_string()),
        Ok(n) => Ok(to_usize(n)),
        Err(_) => Err(format!("shot_num_from_caption must be a whole number, found {}", preview(cell))),
    }
}

/// What a `frame_number` cell says about lengths.
enum Lengths {
    Unset,
    Total(u64),
    Ranges(Vec<(u64, u64)>),
}

impl Lengths {
    /// Per-shot lengths (4k+1) for `shots` shots, `None` when the cell gave none.
    fn per_shot(&self, shots: usize) -> Result<Option<Vec<usize>>, String> {
        match self {
            Lengths::Unset => Ok(None),
            Lengths::Total(total) => {
                let each = total / shots as u64;
                if each == 0 {
                    return Err(format!("frame_number {total} is less than one frame for each of {shots} shots"));
                }
                Ok(Some(vec![to_usize(nearest_4k1(each)); shots]))
            }
            Lengths::Ranges(ranges) => {
                if ranges.len() != shots {
                    return Err(format!(
                        "frame_number has {} ranges but shot_num_from_caption is {shots}; give one [start, end] per shot",
                        ranges.len()
                    ));
                }
                let mut frames = Vec::with_capacity(ranges.len());
                for (i, &(start, end)) in ranges.iter().enumerate() {
                    if end <= start {
                        return Err(format!("frame_number range {} is [{start}, {end}), which holds no frame", i + 1));
                    }
                    frames.push(to_usize(nearest_4k1(end - start)));
                }
                Ok(Some(frames))
            }
        }
    }
}

fn parse_frame_number(cell: &str) -> Result<Lengths, String> {
    if cell.is_empty() {
        return Ok(Lengths::Unset);
    }
    let bad = || {
        format!(
            "frame_number must be a total frame count such as 405 or [start, end] ranges such as \
             \"[[0, 81], [81, 162]]\", found {}",
            preview(cell)
        )
    };
    match serde_json::from_str::<Value>(cell).map_err(|_| bad())? {
        Value::Number(n) => n.as_u64().map(Lengths::Total).ok_or_else(bad),
        Value::Array(items) => {
            let mut ranges = Vec::with_capacity(items.len());
            for item in &items {
                match item.as_array().map(Vec::as_slice) {
                    Some([start, end]) => match (start.as_u64(), end.as_u64()) {
                        (Some(s), Some(e)) => ranges.push((s, e)),
                        _ => return Err(bad()),
                    },
                    _ => return Err(bad()),
                }
            }
            Ok(Lengths::Ranges(ranges))
        }
        _ => Err(bad()),
    }
}

fn csv_error(origin: &str, err: &csv::Error) -> StoryError {
    let line = err.position().map(|p| to_usize(p.line()));
    let message = match err.kind() {
        ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("the row has {len} fields but the header has {expected_len}")
        }
        _ => err.to_string(),
    };
    match line {
        Some(line) => StoryError::at_line(origin, line, message),
        None => StoryError::invalid(origin, crate::error::Location::whole(), message),
    }
}

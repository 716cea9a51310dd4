//! ShotStream's dataset layout (spec §6): an index CSV with one story per row
//! (`shot_num_from_caption`, `json_path`, optional `video_path`, `frame_number`) and one caption
//! JSON per story (`global_caption`, `shot1` … `shotN`). Reading is strict about frame ranges
//! because ShotStream builds shot flags from range lengths only, so a gap or overlap that its own
//! loader accepts silently misaligns every later shot; writing produces files its loader reads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use storyreel_media::{Mp4VideoReader, RgbFrame};

use crate::error::{Result, WorldError};

/// Column names of the index CSV, in the order ShotStream's files and our writer use.
pub const CSV_COLUMNS: [&str; 4] = ["shot_num_from_caption", "json_path", "video_path", "frame_number"];

/// A shot's `[start, end)` range of pixel frames in its story's video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShotRange {
    /// First frame of the shot.
    pub start: usize,
    /// One past the last frame of the shot.
    pub end: usize,
}

impl ShotRange {
    /// A range from its bounds; not checked, so that bad input can still be reported.
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// Frame count, zero for an empty or reversed range.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no frame (`end <= start`).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

impl fmt::Display for ShotRange {
    // Half-open notation so that messages say exactly which frames are meant.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Parses a `frame_number` cell, a Python list literal such as `"[[0, 81], [81, 162]]"`.
pub fn parse_frame_number(text: &str) -> Result<Vec<ShotRange>> {
    parse_ranges(text).map_err(|message| WorldError::malformed("frame_number", message))
}

/// Formats ranges the way Python prints a list of lists, which is what ShotStream's CSVs hold.
pub fn format_frame_number(ranges: &[ShotRange]) -> String {
    let inner: Vec<String> = ranges.iter().map(|r| format!("[{}, {}]", r.start, r.end)).collect();
    format!("[{}]", inner.join(", "))
}

/// A tiny cursor over a `frame_number` literal; errors are plain messages so callers add the location.
struct RangeParser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl RangeParser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    fn fail(&self, expected: &str) -> String {
        let found = match self.text[self.pos..].chars().next() {
            Some(c) => format!("'{c}' at character {}", self.text[..self.pos].chars().count() + 1),
            None => "the end of the text".to_string(),
        };
        format!(
            "frame_number must be a list of [start, end] pairs like \"[[0, 81], [81, 162]]\": expected {expected} \
             but found {found} in {:?}",
            self.text
        )
    }

    fn expect(&mut self, byte: u8, what: &str) -> std::result::Result<(), String> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.fail(what))
        }
    }

    fn number(&mut self) -> std::result::Result<usize, String> {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.bytes.len() && self.bytes[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.fail("a non-negative whole number"));
        }
        let digits = &self.text[start..self.pos];
        digits.parse::<usize>().map_err(|_| format!("frame number {digits} is too large in {:?}", self.text))
    }

    /// Whether a list continues after an element; Python allows one trailing comma.
    fn more(&mut self, close: &str) -> std::result::Result<bool, String> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(self.peek() != Some(b']'))
            }
            Some(b']') => Ok(false),
            _ => Err(self.fail(&format!("',' or '{close}'"))),
        }
    }
}

fn parse_ranges(text: &str) -> std::result::Result<Vec<ShotRange>, String> {
    let mut p = RangeParser { text, bytes: text.as_bytes(), pos: 0 };
    p.expect(b'[', "'[' opening the list of ranges")?;
    let mut ranges = Vec::new();
    if p.peek() != Some(b']') {
        loop {
            p.expect(b'[', "'[' opening a [start, end] pair")?;
            let start = p.number()?;
            p.expect(b',', "',' between start and end")?;
            let end = p.number()?;
            if p.peek() == Some(b',') {
                p.pos += 1;
            }
            p.expect(b']', "']' closing a [start, end] pair (exactly two numbers)")?;
            ranges.push(ShotRange { start, end });
            if !p.more("]' closing the list")? {
                break;
            }
        }
    }
    p.expect(b']', "']' closing the list of ranges")?;
    if p.peek().is_some() {
        return Err(p.fail("nothing after the closing ']'"));
    }
    Ok(ranges)
}

/// How strictly frame ranges are checked; strict is the default because ShotStream cannot cope with gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RangePolicy {
    /// Every problem is an error.
    #[default]
    Strict,
    /// Gaps (including a first shot that starts after frame 0) are warnings: our reader takes
    /// frames from the actual ranges and skips the gaps. Overlaps, disorder, empty ranges and
    /// count mismatches are still errors.
    AllowGaps,
}

/// One thing wrong with a story's frame ranges; shots are numbered from 1 like the JSON keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeProblem {
    /// The row has no range at all.
    NoShots,
    /// A range holds no frame.
    Empty {
        /// 1-based shot number.
        shot: usize,
        /// The range.
        range: ShotRange,
    },
    /// The first shot does not start at frame 0.
    NotFromZero {
        /// The first range.
        first: ShotRange,
    },
    /// Frames between two consecutive shots belong to neither.
    Gap {
        /// 1-based number of the earlier shot.
        shot: usize,
        /// The earlier range.
        prev: ShotRange,
        /// The later range.
        next: ShotRange,
    },
    /// Two consecutive shots share frames.
    Overlap {
        /// 1-based number of the earlier shot.
        shot: usize,
        /// The earlier range.
        prev: ShotRange,
        /// The later range.
        next: ShotRange,
    },
    /// A shot starts before the shot listed ahead of it.
    Unsorted {
        /// 1-based number of the earlier-listed shot.
        shot: usize,
        /// The earlier-listed range.
        prev: ShotRange,
        /// The later-listed range.
        next: ShotRange,
    },
    /// The number of ranges differs from `shot_num_from_caption`.
    CountMismatch {
        /// Ranges in `frame_number`.
        ranges: usize,
        /// `shot_num_from_caption`.
        expected: usize,
    },
    /// A range ends after the video's last frame.
    PastEnd {
        /// 1-based shot number.
        shot: usize,
        /// The range.
        range: ShotRange,
        /// Frames in the video.
        frame_count: usize,
    },
}

impl RangeProblem {
    /// Whether [`RangePolicy::AllowGaps`] tolerates this problem.
    pub fn is_gap(&self) -> bool {
        matches!(self, Self::Gap { .. } | Self::NotFromZero { .. })
    }
}

impl fmt::Display for RangeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoShots => write!(f, "frame_number lists no shot ranges"),
            Self::Empty { shot, range } => {
                write!(f, "shot {shot} {range} is empty: its end must be greater than its start")
            }
            Self::NotFromZero { first } => write!(
                f,
                "shot 1 {first} starts at {} instead of 0: ShotStream builds shot flags from range lengths \
                 counted from frame 0, so every shot would be misaligned by {} frames",
                first.start, first.start
            ),
            Self::Gap { shot, prev, next } => write!(
                f,
                "shot {shot} {prev} ends at {} but shot {} {next} starts at {}: ShotStream builds shot flags from \
                 range lengths, so gaps misalign every later shot",
                prev.end,
                shot + 1,
                next.start
            ),
            Self::Overlap { shot, prev, next } => write!(
                f,
                "shot {shot} {prev} overlaps shot {} {next}: frames {}..{} would belong to both shots",
                shot + 1,
                next.start,
                prev.end.min(next.end)
            ),
            Self::Unsorted { shot, prev, next } => write!(
                f,
                "shot {} {next} starts before shot {shot} {prev}: ranges must be listed in frame order",
                shot + 1
            ),
            Self::CountMismatch { ranges, expected } => write!(
                f,
                "frame_number has {ranges} shot range(s) but shot_num_from_caption is {expected}: ShotStream \
                 counts shots from the ranges, so captions and shots would be paired wrongly"
            ),
            Self::PastEnd { shot, range, frame_count } => {
                write!(f, "shot {shot} {range} ends past the video's last frame (the video has {frame_count} frames)")
            }
        }
    }
}

/// Every problem with a story's ranges, in shot order; `frame_count` adds the past-the-end check.
pub fn range_problems(
    ranges: &[ShotRange],
    shot_num_from_caption: usize,
    frame_count: Option<usize>,
) -> Vec<RangeProblem> {
    let mut problems = Vec::new();
    if ranges.is_empty() {
        problems.push(RangeProblem::NoShots);
    }
    if ranges.len() != shot_num_from_caption {
        problems.push(RangeProblem::CountMismatch { ranges: ranges.len(), expected: shot_num_from_caption });
    }
    for (i, &range) in ranges.iter().enumerate() {
        if range.is_empty() {
            problems.push(RangeProblem::Empty { shot: i + 1, range });
        }
    }
    // Disorder and overlaps come before gaps: a shuffled list would otherwise be reported as a
    // late start or a gap, which points at the wrong fix.
    let mut gaps = Vec::new();
    for (i, pair) in ranges.windows(2).enumerate() {
        let (prev, next, shot) = (pair[0], pair[1], i + 1);
        if next.start < prev.start {
            problems.push(RangeProblem::Unsorted { shot, prev, next });
        } else if next.start < prev.end {
            problems.push(RangeProblem::Overlap { shot, prev, next });
        } else if next.start > prev.end {
            gaps.push(RangeProblem::Gap { shot, prev, next });
        }
    }
    if let Some(&first) = ranges.first() {
        if first.start != 0 {
            problems.push(RangeProblem::NotFromZero { first });
        }
    }
    problems.extend(gaps);
    if let Some(frame_count) = frame_count {
        for (i, &range) in ranges.iter().enumerate() {
            if range.end > frame_count {
                problems.push(RangeProblem::PastEnd { shot: i + 1, range, frame_count });
            }
        }
    }
    problems
}

/// Checks a story's ranges under `policy`: the first intolerable problem is the error, the
/// tolerated ones (gaps under [`RangePolicy::AllowGaps`]) are returned as warnings.
pub fn validate_ranges(
    ranges: &[ShotRange],
    shot_num_from_caption: usize,
    policy: RangePolicy,
    frame_count: Option<usize>,
) -> std::result::Result<Vec<RangeProblem>, RangeProblem> {
    let mut tolerated = Vec::new();
    for problem in range_problems(ranges, shot_num_from_caption, frame_count) {
        if policy == RangePolicy::AllowGaps && problem.is_gap() {
            tolerated.push(problem);
        } else {
            return Err(problem);
        }
    }
    Ok(tolerated)
}

/// One story of a ShotStream index CSV, paths as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShotStreamRow {
    /// Number of shots the captions describe.
    pub shot_num_from_caption: usize,
    /// The caption JSON.
    pub json_path: String,
    /// The story's video; absent in ShotStream's caption-only test set.
    pub video_path: Option<String>,
    /// One `[start, end)` range per shot.
    pub frame_number: Vec<ShotRange>,
}

/// A parsed index CSV with where each row came from, for messages and lenient reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexCsv {
    /// The rows in file order.
    pub rows: Vec<ShotStreamRow>,
    /// The 1-based line on which each row starts.
    pub lines: Vec<usize>,
    /// Range problems tolerated by the policy, each naming the file and line.
    pub warnings: Vec<String>,
}

/// Reads an index CSV and rejects any range problem ([`RangePolicy::Strict`]).
pub fn read_index_csv(path: impl AsRef<Path>) -> Result<Vec<ShotStreamRow>> {
    Ok(read_index_csv_with(path, RangePolicy::Strict)?.rows)
}

/// Reads an index CSV, checking ranges under `policy` and keeping line numbers and warnings.
pub fn read_index_csv_with(path: impl AsRef<Path>, policy: RangePolicy) -> Result<IndexCsv> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| WorldError::io(path, e))?;
    parse_index_csv(&text, &path.display().to_string(), policy)
}

/// A CSV record and the line it starts on.
struct Record {
    line: usize,
    fields: Vec<String>,
}

/// RFC 4180 records: quoted fields may hold commas, newlines and `""`; blank lines are skipped.
fn parse_csv_records(text: &str, file: &str) -> Result<Vec<Record>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let (mut line, mut record_line, mut quote_line) = (1usize, 1usize, 1usize);
    let (mut in_quotes, mut quoted, mut after_quote) = (false, false, false);
    let mut chars = text.chars().peekable();
    let mut end_record = |fields: &mut Vec<String>, field: &mut String, quoted: bool, record_line: usize| {
        let blank = fields.is_empty() && field.trim().is_empty() && !quoted;
        fields.push(std::mem::take(field));
        let fields = std::mem::take(fields);
        if !blank {
            records.push(Record { line: record_line, fields });
        }
    };
    loop {
        let Some(c) = chars.next() else {
            if in_quotes {
                return Err(WorldError::malformed(
                    format!("{file}: line {quote_line}"),
                    "a quoted field is never closed (missing '\"')",
                ));
            }
            end_record(&mut fields, &mut field, quoted, record_line);
            break;
        };
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    after_quote = true;
                }
                _ => {
                    if c == '\n' {
                        line += 1;
                    }
                    field.push(c);
                }
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                quoted = false;
                after_quote = false;
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                end_record(&mut fields, &mut field, quoted, record_line);
                quoted = false;
                after_quote = false;
                line += 1;
                record_line = line;
            }
            '"' if !after_quote && field.trim().is_empty() => {
                field.clear();
                in_quotes = true;
                quoted = true;
                quote_line = line;
            }
            ' ' | '\t' if after_quote => {}
            _ if after_quote => {
                return Err(WorldError::malformed(
                    format!("{file}: line {line}"),
                    format!("unexpected {c:?} after a closing quote: expected ',' or the end of the line"),
                ));
            }
            '"' => {
                return Err(WorldError::malformed(
                    format!("{file}: line {line}"),
                    format!(
                        "stray '\"' inside the unquoted field {field:?}: quote the whole field and double inner quotes"
                    ),
                ));
            }
            _ => field.push(c),
        }
    }
    Ok(records)
}

fn parse_index_csv(text: &str, file: &str, policy: RangePolicy) -> Result<IndexCsv> {
    let records = parse_csv_records(text, file)?;
    let mut records = records.into_iter();
    let header = records
        .next()
        .ok_or_else(|| WorldError::malformed(file, "the file is empty: expected a header naming the columns"))?;
    let mut columns: [Option<usize>; 4] = [None; 4];
    for (i, name) in header.fields.iter().enumerate() {
        if let Some(k) = CSV_COLUMNS.iter().position(|c| *c == name.trim()) {
            if columns[k].is_some() {
                return Err(WorldError::malformed(
                    format!("{file}: line {}", header.line),
                    format!("column {} appears twice in the header", CSV_COLUMNS[k]),
                ));
            }
            columns[k] = Some(i);
        }
    }
    for (k, name) in CSV_COLUMNS.iter().enumerate() {
        if columns[k].is_none() && *name != "video_path" {
            return Err(WorldError::malformed(
                format!("{file}: line {}", header.line),
                format!(
                    "the header has no {name} column (found {:?}; expected shot_num_from_caption, json_path, \
                     frame_number and optionally video_path)",
                    header.fields
                ),
            ));
        }
    }
    let [shots_col, json_col, video_col, ranges_col] = columns;
    let (shots_col, json_col, ranges_col) = (shots_col.unwrap_or(0), json_col.unwrap_or(0), ranges_col.unwrap_or(0));

    let mut out = IndexCsv { rows: Vec::new(), lines: Vec::new(), warnings: Vec::new() };
    for record in records {
        let line = record.line;
        if record.fields.len() != header.fields.len() {
            return Err(WorldError::malformed(
                format!("{file}: line {line}"),
                format!("{} field(s) but the header has {} columns", record.fields.len(), header.fields.len()),
            ));
        }
        let at = |col: &str| format!("{file}: line {line}, column {col}");
        let shots_text = record.fields[shots_col].trim();
        let shot_num_from_caption = shots_text.parse::<usize>().map_err(|_| {
            WorldError::malformed(at("shot_num_from_caption"), format!("expected a whole number, found {shots_text:?}"))
        })?;
        let json_path = record.fields[json_col].trim().to_string();
        if json_path.is_empty() {
            return Err(WorldError::malformed(at("json_path"), "the caption JSON path is empty"));
        }
        let video_path = video_col.map(|c| record.fields[c].trim().to_string()).filter(|v| !v.is_empty());
        let frame_number =
            parse_ranges(&record.fields[ranges_col]).map_err(|m| WorldError::malformed(at("frame_number"), m))?;
        let tolerated = validate_ranges(&frame_number, shot_num_from_caption, policy, None)
            .map_err(|p| WorldError::malformed(format!("{file}: line {line}"), p.to_string()))?;
        out.warnings.extend(tolerated.iter().map(|p| gap_warning(&format!("{file}: line {line}"), p)));
        out.rows.push(ShotStreamRow { shot_num_from_caption, json_path, video_path, frame_number });
        out.lines.push(line);
    }
    Ok(out)
}

/// Says what a tolerated gap means for us and for ShotStream's own loader.
fn gap_warning(location: &str, problem: &RangeProblem) -> String {
    format!("{location}: {problem} (allowed by RangePolicy::AllowGaps: storyreel takes frames from the ranges and skips the gap)")
}

/// Quotes a CSV field when it needs it, doubling inner quotes.
fn csv_field(value: &str, force_quotes: bool) -> String {
    let needs = force_quotes
        || value.contains([',', '"', '\n', '\r'])
        || value.starts_with(char::is_whitespace)
        || value.ends_with(char::is_whitespace);
    if needs {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// Writes an index CSV ShotStream's loader reads; rows with any range problem are refused.
pub fn write_index_csv(path: impl AsRef<Path>, rows: &[ShotStreamRow]) -> Result<()> {
    let path = path.as_ref();
    let mut text = CSV_COLUMNS.join(",");
    text.push('\n');
    for (i, row) in rows.iter().enumerate() {
        let location = format!("{}: row {} (line {})", path.display(), i + 1, i + 2);
        validate_ranges(&row.frame_number, row.shot_num_from_caption, RangePolicy::Strict, None)
            .map_err(|p| WorldError::malformed(&location, p.to_string()))?;
        if row.json_path.is_empty() {
            return Err(WorldError::malformed(location, "json_path is empty"));
        }
        let fields = [
            row.shot_num_from_caption.to_string(),
            csv_field(&row.json_path, false),
            csv_field(row.video_path.as_deref().unwrap_or(""), false),
            csv_field(&format_frame_number(&row.frame_number), true),
        ];
        text.push_str(&fields.join(","));
        text.push('\n');
    }
    Ok(storyreel_media::write_atomic(path, text.as_bytes())?)
}

/// A story's captions as ShotStream's JSON holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionFile {
    /// Caption shared by every shot.
    pub global_caption: String,
    /// `shot1` … `shotN`, in order.
    pub shots: Vec<String>,
    /// Informational video path carried by ShotStream's training JSONs.
    pub video_path: Option<String>,
}

impl CaptionFile {
    /// Shot `i`'s (0-based) prompt exactly as ShotStream builds it (spec §2.4): plain
    /// concatenation, 0-based `shot{i}:` prefix, no separators.
    pub fn prompt(&self, i: usize) -> Option<String> {
        self.shots.get(i).map(|shot| format!("{}shot{i}:{shot}", self.global_caption))
    }
}

/// Parses a JSON key as a shot number if it looks like `shot<digits>`.
fn shot_key_number(key: &str) -> Option<&str> {
    key.strip_prefix("shot").filter(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads a caption JSON; `shot1` … `shotN` must be present without holes.
pub fn read_caption_json(path: impl AsRef<Path>) -> Result<CaptionFile> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| WorldError::io(path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| WorldError::Json { path: path.to_path_buf(), source })?;
    let file = path.display().to_string();
    let serde_json::Value::Object(map) = value else {
        return Err(WorldError::malformed(file, "expected a JSON object with global_caption and shot1 … shotN"));
    };
    let string_at = |key: &str, value: &serde_json::Value| -> Result<String> {
        value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| WorldError::malformed(format!("{file}: {key}"), format!("expected a string, found {value}")))
    };
    let global_caption = match map.get("global_caption") {
        Some(v) => string_at("global_caption", v)?,
        None => return Err(WorldError::malformed(&file, "no global_caption key")),
    };
    let video_path = map.get("video_path").map(|v| string_at("video_path", v)).transpose()?;
    let mut shots = BTreeMap::new();
    for (key, value) in &map {
        let Some(digits) = shot_key_number(key) else { continue };
        let number = match digits.parse::<usize>() {
            Ok(n) if n >= 1 && !digits.starts_with('0') => n,
            _ => {
                return Err(WorldError::malformed(
                    format!("{file}: {key}"),
                    format!("unexpected key {key}: shot keys are shot1, shot2, … (1-based, no leading zeros)"),
                ))
            }
        };
        shots.insert(number, string_at(key, value)?);
    }
    let count = shots.len();
    if count == 0 {
        return Err(WorldError::malformed(file, "no shot captions: expected keys shot1 … shotN"));
    }
    if let Some(missing) = (1..=count).find(|k| !shots.contains_key(k)) {
        let present: Vec<String> = shots.keys().map(|k| format!("shot{k}")).collect();
        return Err(WorldError::malformed(
            file,
            format!(
                "missing shot{missing}: shot keys must run shot1 … shotN without holes (found {})",
                present.join(", ")
            ),
        ));
    }
    Ok(CaptionFile { global_caption, shots: shots.into_values().collect(), video_path })
}

/// Writes a caption JSON with keys in ShotStream's order: `global_caption`, `shot1` … `shotN`, `video_path`.
pub fn write_caption_json(path: impl AsRef<Path>, captions: &CaptionFile) -> Result<()> {
    let path = path.as_ref();
    if captions.shots.is_empty() {
        return Err(WorldError::malformed(path.display().to_string(), "a caption file needs at least one shot"));
    }
    // serde_json here is built without `preserve_order`, so the object is assembled by hand.
    let quote =
        |s: &str| serde_json::to_string(s).map_err(|source| WorldError::Json { path: path.to_path_buf(), source });
    let mut entries = vec![format!("  \"global_caption\": {}", quote(&captions.global_caption)?)];
    for (i, shot) in captions.shots.iter().enumerate() {
        entries.push(format!("  \"shot{}\": {}", i + 1, quote(shot)?));
    }
    if let Some(video) = &captions.video_path {
        entries.push(format!("  \"video_path\": {}", quote(video)?));
    }
    let text = format!("{{\n{}\n}}\n", entries.join(",\n"));
    Ok(storyreel_media::write_atomic(path, text.as_bytes())?)
}

/// One story of an opened dataset: resolved paths, captions and checked ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetStory {
    /// The CSV line the story comes from.
    pub line: usize,
    /// The caption JSON, resolved.
    pub json_path: PathBuf,
    /// The video, resolved; `None` for caption-only sets.
    pub video_path: Option<PathBuf>,
    /// The captions.
    pub captions: CaptionFile,
    /// One range per shot, checked against the captions.
    pub ranges: Vec<ShotRange>,
}

/// A ShotStream-layout dataset: the index CSV with every caption JSON read and checked up front.
#[derive(Debug, Clone)]
pub struct ShotStreamDataset {
    csv_path: PathBuf,
    policy: RangePolicy,
    stories: Vec<DatasetStory>,
    warnings: Vec<String>,
}

/// Resolves a path from the CSV against `root` unless it is absolute.
fn resolve(root: &Path, relative: &str) -> PathBuf {
    let p = Path::new(relative);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

impl ShotStreamDataset {
    /// Opens a dataset whose relative paths are relative to the CSV's folder.
    pub fn open(csv_path: impl AsRef<Path>, policy: RangePolicy) -> Result<Self> {
        let csv_path = csv_path.as_ref();
        let root = match csv_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::open_with_root(csv_path, root, policy)
    }

    /// Opens a dataset whose relative paths are relative to `root` (ShotStream's own CSVs name
    /// files relative to its repository root).
    pub fn open_with_root(csv_path: impl AsRef<Path>, root: impl AsRef<Path>, policy: RangePolicy) -> Result<Self> {
        let csv_path = csv_path.as_ref();
        let root = root.as_ref();
        let index = read_index_csv_with(csv_path, policy)?;
        let mut stories = Vec::with_capacity(index.rows.len());
        for (row, &line) in index.rows.into_iter().zip(&index.lines) {
            let json_path = resolve(root, &row.json_path);
            let captions = read_caption_json(&json_path)?;
            if captions.shots.len() != row.shot_num_from_caption {
                return Err(WorldError::malformed(
                    format!("{}: line {line}", csv_path.display()),
                    format!(
                        "{} has {} shot caption(s) (shot1 … shot{}) but shot_num_from_caption is {} and \
                         frame_number has {} range(s)",
                        json_path.display(),
                        captions.shots.len(),
                        captions.shots.len(),
                        row.shot_num_from_caption,
                        row.frame_number.len()
                    ),
                ));
            }
            stories.push(DatasetStory {
                line,
                json_path,
                video_path: row.video_path.as_deref().map(|v| resolve(root, v)),
                captions,
                ranges: row.frame_number,
            });
        }
        Ok(Self { csv_path: csv_path.to_path_buf(), policy, stories, warnings: index.warnings })
    }

    /// Number of stories.
    pub fn len(&self) -> usize {
        self.stories.len()
    }

    /// Whether the CSV lists no story.
    pub fn is_empty(&self) -> bool {
        self.stories.is_empty()
    }

    /// The index CSV the dataset was opened from.
    pub fn csv_path(&self) -> &Path {
        &self.csv_path
    }

    /// Problems the policy tolerated, each naming the CSV line.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Story `i` (0-based, CSV order).
    pub fn story(&self, i: usize) -> Result<&DatasetStory> {
        self.stories.get(i).ok_or_else(|| {
            WorldError::out_of_range(
                "story index",
                i,
                format!("less than {} (stories in {})", self.len(), self.csv_path.display()),
            )
        })
    }

    /// All stories in CSV order.
    pub fn stories(&self) -> &[DatasetStory] {
        &self.stories
    }

    /// Decodes story `i`'s video and splits it into one frame list per shot by its ranges
    /// (gap frames, when the policy allows gaps, are dropped).
    pub fn read_shots(&self, i: usize) -> Result<Vec<Vec<RgbFrame>>> {
        let story = self.story(i)?;
        let location = format!("{}: line {}", self.csv_path.display(), story.line);
        let video = story.video_path.as_ref().ok_or_else(|| {
            WorldError::malformed(
                &location,
                "the row has no video_path, so there are no frames to read (caption-only set)",
            )
        })?;
        let check = |frame_count: usize| -> Result<()> {
            validate_ranges(&story.ranges, story.ranges.len(), self.policy, Some(frame_count))
                .map(|_| ())
                .map_err(|p| WorldError::malformed(format!("{} ({location})", video.display()), p.to_string()))
        };
        if !video.is_file() {
            return Err(WorldError::io(
                video,
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("video for {location} not found")),
            ));
        }
        let reader = Mp4VideoReader::open(video)?;
        // The sample count is known before decoding, so bad ranges fail without decoding anything.
        check(usize::try_from(reader.info().frame_count).unwrap_or(usize::MAX))?;
        let mut frames = reader.read_all()?;
        check(frames.len())?;
        let mut shots = Vec::with_capacity(story.ranges.len());
        for range in story.ranges.iter().rev() {
            frames.truncate(range.end);
            shots.push(frames.split_off(range.start));
        }
        shots.reverse();
        Ok(shots)
    }
}

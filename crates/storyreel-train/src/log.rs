//! The per-step JSONL log (`train.jsonl`) and the terminal progress bar.
//!
//! The log is appended and flushed one line per step so a crash loses at most the step in
//! flight; on resume, lines after the checkpoint's step are cut so the file describes exactly one
//! history.

use std::collections::BTreeMap;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Result, TrainError};

/// The log's file name inside a run's output folder.
pub const LOG_FILE: &str = "train.jsonl";

// serde_json writes NaN and infinities as `null`; read them back as NaN so a skipped step's line
// still parses.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nan_if_null_map<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<String, f64>, D::Error> {
    let map = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect())
}

/// One line of `train.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed, counting this one (1-based).
    pub step: u64,
    /// The mean loss over the step's micro-batches.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// The caller's extra metrics, each averaged over the micro-batches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "nan_if_null_map")]
    pub losses: BTreeMap<String, f64>,
    /// The learning rate used.
    pub lr: f64,
    /// The global gradient norm before clipping.
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Whether the update was skipped for a non-finite gradient norm.
    #[serde(default)]
    pub skipped: bool,
    /// Seconds the step took.
    pub step_time_s: f64,
    /// Training samples per second in this step.
    pub samples_per_s: f64,
    /// Seconds since the Unix epoch when the step ended.
    pub wall_time_s: f64,
}

/// Cuts `path` after the last line with `step <= step` (and at any torn or unreadable line) and
/// returns how many lines were dropped; a missing file is left missing.
pub fn truncate_after(path: &Path, step: u64) -> Result<usize> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(TrainError::File(format!("{}: {e}", path.display()))),
    };
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines
        .iter()
        .position(|line| serde_json::from_str::<StepRecord>(line).map_or(true, |r| r.step > step))
        .unwrap_or(lines.len());
    if keep == lines.len() && (text.is_empty() || text.ends_with('\n')) {
        return Ok(0);
    }
    let mut kept = String::new();
    for line in &lines[..keep] {
        kept.push_str(line);
        kept.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    fs::write(&tmp, kept).map_err(|e| TrainError::File(format!("{}: {e}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| TrainError::File(format!("{}: {e}", path.display())))?;
    Ok(lines.len() - keep)
}

/// Every record in a log file, in order.
pub fn read_log(path: &Path) -> Result<Vec<StepRecord>> {
    let text = fs::read_to_string(path).map_err(|e| TrainError::File(format!("{}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| TrainError::File(format!("{} line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// An append-only JSONL log, flushed after every line.
#[derive(Debug)]
pub struct JsonlLog {
    path: PathBuf,
    file: fs::File,
}

impl JsonlLog {
    /// Opens `path` for appending after cutting every line past `step` (0 for a fresh run, which
    /// empties it).
    pub fn open(path: &Path, step: u64) -> Result<Self> {
        truncate_after(path, step)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::File(format!("{}: {e}", path.display())))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line and flushes it.
    pub fn append(&mut self, record: &StepRecord) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| TrainError::File(format!("log record: {e}")))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::File(format!("{}: {e}", self.path.display())))
    }
}

/// A progress bar with the loss, step rate and ETA; hidden when stderr is not a terminal so logs
/// and CI output stay clean.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for a run of `total` steps, starting at `position`; `enabled = false` hides it.
    pub fn new(total: u64, position: u64, enabled: bool) -> Self {
        let bar = if enabled && std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) =
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} {per_sec} [{elapsed_precise} < {eta_precise}]")
        {
            bar.set_style(style);
        }
        bar.set_position(position);
        bar.reset_eta();
        Self { bar }
    }

    /// Moves the bar to `step` and shows `loss`.
    pub fn update(&self, step: u64, loss: f64) {
        self.bar.set_message(format!("loss {loss:.4}"));
        self.bar.set_position(step);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

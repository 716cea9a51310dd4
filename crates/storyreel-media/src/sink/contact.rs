//! The contact-sheet sink: keeps small thumbnails of the current shot only, picks the
//! evenly spaced ones when the shot ends, and renders the sheet on `finish`.

use std::path::{Path, PathBuf};

use super::{FrameSink, ShotCounter, SinkReport};
use crate::contact_sheet::{even_indices, ContactSheet, ContactSheetOptions};
use crate::error::{MediaError, Result};
use crate::frame::RgbFrame;

/// Memory for one shot's thumbnails before they are thinned out (about 590 thumbnails of
/// 256x148, or 54 full 832x480 frames when thumbnails are not scaled).
const KEEP_BUDGET_BYTES: usize = 64 << 20;
/// Thumbnails always allowed per shot, however large they are.
const MIN_KEPT: usize = 16;

/// Thumbnails of the shot being received.
///
/// Which frames the row shows depends on the shot's final length, unknown until it ends,
/// so every frame is kept as a thumbnail; past `KEEP_BUDGET_BYTES` every other one is
/// dropped and only every `stride`-th frame is kept from then on (the last frame is always
/// available), so memory stays bounded for any shot length and picks land within
/// `stride / 2` frames.
struct ShotThumbs {
    caption: String,
    kept: Vec<RgbFrame>,
    stride: usize,
    seen: usize,
    last: Option<RgbFrame>,
}

impl ShotThumbs {
    /// An empty shot.
    fn new(caption: &str) -> Self {
        Self { caption: caption.to_string(), kept: Vec::new(), stride: 1, seen: 0, last: None }
    }

    /// Takes in the next frame.
    fn push(&mut self, sheet: &ContactSheet, frame: &RgbFrame) -> Result<()> {
        let i = self.seen;
        self.seen += 1;
        if i.is_multiple_of(self.stride) {
            let thumb = sheet.thumbnail(frame)?;
            let max_kept = (KEEP_BUDGET_BYTES / thumb.data.len().max(1)).max(MIN_KEPT);
            self.kept.push(thumb);
            self.last = None;
            if self.kept.len() > max_kept {
                let mut k = 0;
                self.kept.retain(|_| {
                    k += 1;
                    (k - 1) % 2 == 0
                });
                self.stride *= 2;
            }
        } else {
            frame.validate()?;
            self.last = Some(frame.clone());
        }
        Ok(())
    }

    /// The thumbnails for the row: `n` evenly spaced picks.
    fn pick(self, sheet: &ContactSheet, n: usize) -> Result<(String, Vec<RgbFrame>)> {
        let len = self.seen;
        let last_thumb = self.last.as_ref().map(|f| sheet.thumbnail(f)).transpose()?;
        let mut row = Vec::with_capacity(n);
        for i in even_indices(len, n) {
            if i == len - 1 {
                if let Some(t) = &last_thumb {
                    row.push(t.clone());
                    continue;
                }
            }
            let k = ((i + self.stride / 2) / self.stride).min(self.kept.len().saturating_sub(1));
            if let Some(t) = self.kept.get(k) {
                row.push(t.clone());
            }
        }
        Ok((self.caption, row))
    }
}

/// Builds a contact sheet PNG of the story: one row per shot with its caption.
pub struct ContactSheetSink {
    path: PathBuf,
    sheet: ContactSheet,
    shot: Option<ShotThumbs>,
    counter: ShotCounter,
}

impl ContactSheetSink {
    /// A sink that saves the sheet to `path` on `finish`.
    pub fn create(path: impl AsRef<Path>, options: ContactSheetOptions) -> Result<Self> {
        Ok(Self {
            path: path.as_ref().to_path_buf(),
            sheet: ContactSheet::new(options)?,
            shot: None,
            counter: ShotCounter::default(),
        })
    }

    /// Turns the open shot (if any) into a row.
    fn close_shot(&mut self) -> Result<()> {
        if let Some(shot) = self.shot.take() {
            let (caption, thumbs) = shot.pick(&self.sheet, self.sheet.options().frames_per_row)?;
            // Thumbnails are already scaled, so add_row only copies them.
            self.sheet.add_row(&caption, &thumbs)?;
        }
        Ok(())
    }
}

impl FrameSink for ContactSheetSink {
    fn begin_shot(&mut self, _index: usize, caption: &str) -> Result<()> {
        self.counter.begin()?;
        self.close_shot()?;
        self.shot = Some(ShotThumbs::new(caption));
        Ok(())
    }

    fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()> {
        self.counter.push(frames.len())?;
        let shot = self.shot.get_or_insert_with(|| ShotThumbs::new(""));
        frames.iter().try_for_each(|f| shot.push(&self.sheet, f))
    }

    fn end_shot(&mut self) -> Result<()> {
        self.counter.end()?;
        self.close_shot()
    }

    fn finish(&mut self) -> Result<SinkReport> {
        self.counter.finish()?;
        self.close_shot()?;
        if self.counter.frames == 0 {
            return Err(MediaError::NoFrames { path: Some(self.path.clone()) });
        }
        self.sheet.save(&self.path)?;
        Ok(self.counter.report(vec![self.path.clone()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4x4 frame whose colour encodes its index.
    fn numbered(i: usize) -> RgbFrame {
        RgbFrame::filled(4, 4, [(i % 256) as u8, (i / 256) as u8, 7]).unwrap()
    }

    /// The index encoded in a frame by `numbered`.
    fn number_of(f: &RgbFrame) -> usize {
        let [lo, hi, _] = f.pixel(0, 0).unwrap();
        usize::from(lo) + 256 * usize::from(hi)
    }

    #[test]
    fn short_shots_pick_exact_frames() {
        let sheet = ContactSheet::new(ContactSheetOptions::default()).unwrap();
        let mut shot = ShotThumbs::new("c");
        (0..81).for_each(|i| shot.push(&sheet, &numbered(i)).unwrap());
        let (caption, row) = shot.pick(&sheet, 6).unwrap();
        assert_eq!(caption, "c");
        assert_eq!(row.iter().map(number_of).collect::<Vec<_>>(), vec![0, 16, 32, 48, 64, 80]);
    }

    #[test]
    fn long_shots_stay_bounded_and_pick_nearby_frames() {
        let sheet = ContactSheet::new(ContactSheetOptions::default()).unwrap();
        let mut shot = ShotThumbs::new("long");
        // 256x256 thumbnails: the budget holds 341 of them.
        let frame = |i: usize| RgbFrame::filled(256, 256, [(i % 256) as u8, (i / 256) as u8, 7]).unwrap();
        let len = 1001;
        for i in 0..len {
            shot.push(&sheet, &frame(i)).unwrap();
            assert!(shot.kept.len() * 256 * 256 * 3 <= KEEP_BUDGET_BYTES + 256 * 256 * 3);
        }
        let stride = shot.stride;
        assert!(stride > 1);
        let (_, row) = shot.pick(&sheet, 6).unwrap();
        let got: Vec<usize> = row.iter().map(number_of).collect();
        for (g, want) in got.iter().zip(even_indices(len, 6)) {
            assert!(g.abs_diff(want) <= stride / 2, "picked {g} for {want} (stride {stride})");
        }
        assert_eq!(got.first(), Some(&0));
        assert_eq!(got.last(), Some(&(len - 1)), "the last frame is always exact");
    }
}

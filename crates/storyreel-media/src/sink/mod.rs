//! `FrameSink`: where a generation session sends its frames, shot by shot. One trait,
//! one plain struct per output; [`TeeSink`] feeds several at once.

mod contact;
mod files;
mod stream;

use std::path::PathBuf;

use crate::error::{MediaError, Result};
use crate::frame::RgbFrame;

pub use contact::ContactSheetSink;
pub use files::{GifSink, Mp4FileSink, PngDirSink};
pub use stream::{Fmp4StreamSink, Segment, SegmentKind};

/// What a sink produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkReport {
    /// Frames received.
    pub frames: u64,
    /// Shots received.
    pub shots: usize,
    /// Files or directories written (empty for streams and callbacks).
    pub outputs: Vec<PathBuf>,
}

/// Receives a story's frames as they are decoded.
///
/// Call order: for each shot `begin_shot`, then any mix of `push_frames` and `flush`, then
/// `end_shot`; finally `finish` once. Frames pushed outside a shot are accepted as part of
/// an unnamed shot. Every frame of a stream must have the size of the first one.
pub trait FrameSink {
    /// A new shot starts (`index` counts from 0; `caption` is its text).
    fn begin_shot(&mut self, index: usize, caption: &str) -> Result<()> {
        let _ = (index, caption);
        Ok(())
    }

    /// The next frames of the current shot, in display order.
    fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()>;

    /// A decoded chunk is complete: streaming sinks emit a segment now. Files ignore it.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    /// The current shot is complete.
    fn end_shot(&mut self) -> Result<()> {
        Ok(())
    }

    /// No more frames: write trailers, move files into place. A second call fails with
    /// [`MediaError::AlreadyFinished`].
    fn finish(&mut self) -> Result<SinkReport>;
}

/// Counts frames and shots for a [`SinkReport`], including implicit shots.
#[derive(Debug, Default, Clone)]
pub(crate) struct ShotCounter {
    pub frames: u64,
    pub shots: usize,
    pub in_shot: bool,
    pub finished: bool,
}

impl ShotCounter {
    /// Records a shot start.
    pub fn begin(&mut self) -> Result<()> {
        self.check_open()?;
        self.shots += 1;
        self.in_shot = true;
        Ok(())
    }

    /// Records frames, opening an implicit shot if needed; returns true if it did.
    pub fn push(&mut self, n: usize) -> Result<bool> {
        self.check_open()?;
        let implicit = !self.in_shot;
        if implicit {
            self.shots += 1;
            self.in_shot = true;
        }
        self.frames += n as u64;
        Ok(implicit)
    }

    /// Records a shot end.
    pub fn end(&mut self) -> Result<()> {
        self.check_open()?;
        self.in_shot = false;
        Ok(())
    }

    /// Marks the sink finished; errors if it already was.
    pub fn finish(&mut self) -> Result<()> {
        self.check_open()?;
        self.finished = true;
        self.in_shot = false;
        Ok(())
    }

    /// Errors once the sink is finished.
    pub fn check_open(&self) -> Result<()> {
        if self.finished {
            Err(MediaError::AlreadyFinished)
        } else {
            Ok(())
        }
    }

    /// The report for these counts.
    pub fn report(&self, outputs: Vec<PathBuf>) -> SinkReport {
        SinkReport { frames: self.frames, shots: self.shots, outputs }
    }
}

/// The error type callbacks may return.
pub type CallbackError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed frame callback: `(shot index, frames)`.
type FrameCallback = Box<dyn FnMut(usize, &[RgbFrame]) -> std::result::Result<(), CallbackError> + Send>;

/// Calls a closure with `(shot index, frames)` for every batch (e.g. to preview frames in a UI).
pub struct CallbackSink {
    callback: FrameCallback,
    counter: ShotCounter,
    shot: usize,
}

impl CallbackSink {
    /// Wraps `callback`; its errors stop the session as [`MediaError::Consumer`].
    pub fn new(
        callback: impl FnMut(usize, &[RgbFrame]) -> std::result::Result<(), CallbackError> + Send + 'static,
    ) -> Self {
        Self { callback: Box::new(callback), counter: ShotCounter::default(), shot: 0 }
    }
}

impl FrameSink for CallbackSink {
    fn begin_shot(&mut self, index: usize, _caption: &str) -> Result<()> {
        self.counter.begin()?;
        self.shot = index;
        Ok(())
    }

    fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()> {
        if self.counter.push(frames.len())? {
            self.shot = self.counter.shots - 1;
        }
        (self.callback)(self.shot, frames).map_err(|e| MediaError::Consumer(e.to_string()))
    }

    fn end_shot(&mut self) -> Result<()> {
        self.counter.end()
    }

    fn finish(&mut self) -> Result<SinkReport> {
        self.counter.finish()?;
        Ok(self.counter.report(Vec::new()))
    }
}

/// Sends every call to several sinks, in order.
///
/// `finish` finishes all of them even if one fails (so one bad output does not lose the
/// others) and returns the first error, or the merged reports.
#[derive(Default)]
pub struct TeeSink {
    sinks: Vec<Box<dyn FrameSink + Send>>,
}

impl TeeSink {
    /// A tee over `sinks`.
    pub fn new(sinks: Vec<Box<dyn FrameSink + Send>>) -> Self {
        Self { sinks }
    }

    /// Adds one more sink.
    pub fn push(&mut self, sink: Box<dyn FrameSink + Send>) {
        self.sinks.push(sink);
    }

    /// Number of sinks.
    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    /// Whether there are no sinks.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

impl FrameSink for TeeSink {
    fn begin_shot(&mut self, index: usize, caption: &str) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.begin_shot(index, caption))
    }

    fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.push_frames(frames))
    }

    fn flush(&mut self) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.flush())
    }

    fn end_shot(&mut self) -> Result<()> {
        self.sinks.iter_mut().try_for_each(|s| s.end_shot())
    }

    fn finish(&mut self) -> Result<SinkReport> {
        let mut first_error = None;
        let mut merged = SinkReport::default();
        for sink in &mut self.sinks {
            match sink.finish() {
                Ok(r) => {
                    merged.frames = merged.frames.max(r.frames);
                    merged.shots = merged.shots.max(r.shots);
                    merged.outputs.extend(r.outputs);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(merged),
        }
    }
}

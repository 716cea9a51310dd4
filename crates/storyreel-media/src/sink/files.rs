//! Sinks that write files: MP4, numbered PNGs, GIF.

use std::path::{Path, PathBuf};

use super::{FrameSink, ShotCounter, SinkReport};
use crate::error::{MediaError, Result};
use crate::frame::RgbFrame;
use crate::gif_writer::{GifOptions, GifWriter};
use crate::h264::EncodeOptions;
use crate::mp4_writer::Mp4Writer;
use crate::png::PngSequenceWriter;

/// Writes the whole story into one MP4; every shot starts on a keyframe so players can
/// seek straight to it.
pub struct Mp4FileSink {
    writer: Mp4Writer,
    counter: ShotCounter,
}

impl Mp4FileSink {
    /// A sink writing `path` (created on `finish`, see [`Mp4Writer`]).
    pub fn create(path: impl AsRef<Path>, options: EncodeOptions) -> Result<Self> {
        Ok(Self { writer: Mp4Writer::create(path, options)?, counter: ShotCounter::default() })
    }
}

impl FrameSink for Mp4FileSink {
    fn begin_shot(&mut self, _index: usize, _caption: &str) -> Result<()> {
        self.counter.begin()?;
        self.writer.force_keyframe();
        Ok(())
    }

    fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()> {
        self.counter.push(frames.len())?;
        self.writer.push_frames(frames)
    }

    fn end_shot(&mut self) -> Result<()> {
        self.counter.end()
    }

    fn finish(&mut self) -> Result<SinkReport> {
        self.counter.finish()?;
        let summary = self.writer.finish()?;
        Ok(self.counter.report(vec![summary.path]))
    }
}

/// Writes every frame as `frame_00000.png`, ... into one directory, numbered across shots.
pub struct PngDirSink {
    writer: PngSequenceWriter,
    counter: ShotCounter,
}

impl PngDirSink {
    /// Creates `dir` if needed.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self { writer: PngSequenceWriter::create(dir)?, counter: ShotCounter::default() })
    }
}

impl FrameSink for PngDirSink {
    fn begin_shot(&mut self, _index: usize, _caption: &str) -> Result<()> {
        self.counter.begin()
    }

    fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()> {
        self.counter.push(frames.len())?;
        frames.iter().try_for_each(|f| self.writer.push_frame(f).map(drop))
    }

    fn end_shot(&mut self) -> Result<()> {
        self.counter.end()
    }

    fn finish(&mut self) -> Result<SinkReport> {
        self.counter.finish()?;
        if self.writer.frames() == 0 {
            return Err(MediaError::NoFrames { path: Some(self.writer.dir().to_path_buf()) });
        }
        Ok(self.counter.report(vec![self.writer.dir().to_path_buf()]))
    }
}

/// Writes a looping GIF preview of the whole story.
pub struct GifSink {
    writer: GifWriter,
    counter: ShotCounter,
}

impl GifSink {
    /// A sink writing `path` (created on `finish`).
    pub fn create(path: impl AsRef<Path>, options: GifOptions) -> Result<Self> {
        Ok(Self { writer: GifWriter::create(path, options)?, counter: ShotCounter::default() })
    }
}

impl FrameSink for GifSink {
    fn begin_shot(&mut self, _index: usize, _caption: &str) -> Result<()> {
        self.counter.begin()
    }

    fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()> {
        self.counter.push(frames.len())?;
        frames.iter().try_for_each(|f| self.writer.push_frame(f))
    }

    fn end_shot(&mut self) -> Result<()> {
        self.counter.end()
    }

    fn finish(&mut self) -> Result<SinkReport> {
        self.counter.finish()?;
        let path: PathBuf = self.writer.finish()?;
        Ok(self.counter.report(vec![path]))
    }
}

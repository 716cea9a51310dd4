//! Looping GIF previews: frames are downscaled to a maximum width, quantised per frame
//! (NeuQuant) and written as they arrive.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use gif::{Encoder, Frame, Repeat};
use tempfile::NamedTempFile;

use crate::error::{MediaError, Result};
use crate::frame::RgbFrame;
use crate::staging::staged_file;

/// GIF output settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GifOptions {
    /// Frames per second, 1..=50 (GIF delays are whole hundredths of a second).
    pub fps: u32,
    /// Frames wider than this are scaled down (aspect kept); `None` keeps full size.
    pub max_width: Option<u32>,
    /// Loop forever (true) or play once.
    pub looping: bool,
    /// NeuQuant speed 1..=30: 1 is best colours, 30 fastest; default 10.
    pub quantizer_speed: i32,
}

impl Default for GifOptions {
    fn default() -> Self {
        Self { fps: 16, max_width: Some(320), looping: true, quantizer_speed: 10 }
    }
}

impl GifOptions {
    /// Rejects settings outside the supported ranges.
    pub fn validate(&self) -> Result<()> {
        if !(1..=50).contains(&self.fps) {
            return Err(MediaError::out_of_range("gif fps", self.fps, "1..=50"));
        }
        if let Some(w) = self.max_width {
            if !(2..=u32::from(u16::MAX)).contains(&w) {
                return Err(MediaError::out_of_range("gif max_width", w, "2..=65535"));
            }
        }
        if !(1..=30).contains(&self.quantizer_speed) {
            return Err(MediaError::out_of_range("gif quantizer_speed", self.quantizer_speed, "1..=30"));
        }
        Ok(())
    }
}

/// Writes an animated GIF frame by frame; like [`crate::Mp4Writer`] it writes to a
/// temporary file and renames it into place on [`GifWriter::finish`].
pub struct GifWriter {
    path: PathBuf,
    tmp: Option<NamedTempFile>,
    options: GifOptions,
    encoder: Option<Encoder<BufWriter<File>>>,
    source_size: Option<(u32, u32)>,
    frames: u64,
}

impl GifWriter {
    /// Prepares to write `path`; the size comes from the first frame.
    pub fn create(path: impl AsRef<Path>, options: GifOptions) -> Result<Self> {
        options.validate()?;
        let path = path.as_ref().to_path_buf();
        let tmp = staged_file(&path)?;
        Ok(Self { path, tmp: Some(tmp), options, encoder: None, source_size: None, frames: 0 })
    }

    /// Scales, quantises and writes one frame.
    pub fn push_frame(&mut self, frame: &RgbFrame) -> Result<()> {
        let Some(tmp) = self.tmp.as_ref() else {
            return Err(MediaError::AlreadyFinished);
        };
        frame.validate()?;
        match self.source_size {
            Some((w, h)) if (w, h) != frame.size() => {
                return Err(MediaError::FrameSizeChanged {
                    index: self.frames,
                    width: w,
                    height: h,
                    got_width: frame.width,
                    got_height: frame.height,
                });
            }
            _ => {}
        }
        let small = match self.options.max_width {
            Some(w) => frame.fit_width(w)?,
            None => frame.clone(),
        };
        let (w, h) = match (u16::try_from(small.width), u16::try_from(small.height)) {
            (Ok(w), Ok(h)) => (w, h),
            _ => {
                return Err(MediaError::out_of_range(
                    "gif frame size",
                    format!("{}x{}", small.width, small.height),
                    "at most 65535x65535",
                ))
            }
        };
        if self.encoder.is_none() {
            let file = tmp.reopen().map_err(|e| MediaError::io(tmp.path(), e))?;
            let mut encoder = Encoder::new(BufWriter::new(file), w, h, &[]).map_err(|e| self.gif_err(e))?;
            if self.options.looping {
                encoder.set_repeat(Repeat::Infinite).map_err(|e| self.gif_err(e))?;
            }
            self.encoder = Some(encoder);
            self.source_size = Some(frame.size());
        }
        let mut gif_frame = Frame::from_rgb_speed(w, h, &small.data, self.options.quantizer_speed);
        gif_frame.delay = self.delay(self.frames);
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(MediaError::AlreadyFinished);
        };
        let result = encoder.write_frame(&gif_frame);
        result.map_err(|e| self.gif_err(e))?;
        self.frames += 1;
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Writes the trailer and moves the file into place; fails with
    /// [`MediaError::NoFrames`] (leaving nothing) if no frame was pushed.
    pub fn finish(&mut self) -> Result<PathBuf> {
        let Some(tmp) = self.tmp.take() else {
            return Err(MediaError::AlreadyFinished);
        };
        let Some(encoder) = self.encoder.take() else {
            return Err(MediaError::NoFrames { path: Some(self.path.clone()) });
        };
        let mut out = encoder.into_inner().map_err(|e| self.gif_err(e))?;
        out.flush().map_err(|e| MediaError::io(tmp.path(), e))?;
        drop(out);
        tmp.persist(&self.path).map_err(|e| MediaError::io(&self.path, e.error))?;
        Ok(self.path.clone())
    }

    /// Delay of frame `i` in hundredths of a second; rounding each frame's start time
    /// keeps the average rate exact (16 fps alternates 6 and 7).
    fn delay(&self, i: u64) -> u16 {
        let fps = u64::from(self.options.fps);
        let start = (i * 100 + fps / 2) / fps;
        let end = ((i + 1) * 100 + fps / 2) / fps;
        (end - start) as u16
    }

    /// Wraps a `gif` error with the output path.
    fn gif_err(&self, e: impl std::fmt::Display) -> MediaError {
        MediaError::Gif { path: self.path.clone(), message: e.to_string() }
    }
}

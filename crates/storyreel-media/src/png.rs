//! PNG stills and numbered PNG frame directories.

use std::fs;
use std::path::{Path, PathBuf};

use image::{ExtendedColorType, ImageFormat};

use crate::error::{MediaError, Result};
use crate::frame::RgbFrame;

/// Saves one frame as an RGB PNG.
pub fn save_png(path: impl AsRef<Path>, frame: &RgbFrame) -> Result<()> {
    let path = path.as_ref();
    frame.validate()?;
    image::save_buffer_with_format(
        path,
        &frame.data,
        frame.width,
        frame.height,
        ExtendedColorType::Rgb8,
        ImageFormat::Png,
    )
    .map_err(|source| MediaError::Image { path: path.to_path_buf(), source })
}

/// Loads a PNG or JPEG as an RGB frame (alpha is dropped).
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbFrame> {
    let path = path.as_ref();
    let img = image::open(path).map_err(|source| MediaError::Image { path: path.to_path_buf(), source })?.to_rgb8();
    let (w, h) = img.dimensions();
    RgbFrame::new(w, h, img.into_raw())
}

/// Writes frames as `frame_00000.png`, `frame_00001.png`, ... into a directory.
#[derive(Debug)]
pub struct PngSequenceWriter {
    dir: PathBuf,
    prefix: String,
    next: u64,
}

impl PngSequenceWriter {
    /// Creates `dir` (and its parents) if needed; numbering starts at 0.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| MediaError::io(&dir, e))?;
        Ok(Self { dir, prefix: "frame_".into(), next: 0 })
    }

    /// Uses `prefix` instead of `frame_` in file names.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The path the next frame will be written to.
    pub fn next_path(&self) -> PathBuf {
        self.dir.join(format!("{}{:05}.png", self.prefix, self.next))
    }

    /// Writes one frame and returns its path.
    pub fn push_frame(&mut self, frame: &RgbFrame) -> Result<PathBuf> {
        let path = self.next_path();
        save_png(&path, frame)?;
        self.next += 1;
        Ok(path)
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.next
    }

    /// The output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

//! Where decoded frames go, chosen by the output path: an MP4, a PNG folder, a contact sheet,
//! a GIF, or a safetensors tensor for comparisons with the reference.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use std::path::{Path, PathBuf};

use storyreel_media::{
    ContactSheetOptions, ContactSheetSink, EncodeOptions, FrameSink, GifOptions, GifSink, Mp4FileSink, PngDirSink,
};

use crate::decode::write_tensor;

/// The media sink an output path asks for (`None` for a `.safetensors` tensor output).
pub fn sink_for(path: &Path, fps: u32) -> Result<Option<Box<dyn FrameSink + Send>>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let sink: Box<dyn FrameSink + Send> = match ext.as_str() {
        "safetensors" => return Ok(None),
        "mp4" => Box::new(
            Mp4FileSink::create(path, EncodeOptions::default().with_fps(fps))
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        "png" => Box::new(
            ContactSheetSink::create(path, ContactSheetOptions::default())
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        "gif" => Box::new(
            GifSink::create(path, GifOptions { fps, ..GifOptions::default() })
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        "" => Box::new(PngDirSink::create(path).with_context(|| format!("creating folder {}", path.display()))?),
        other => bail!(
            "cannot write `.{other}` ({}): use .mp4, .png (contact sheet), .gif, .safetensors or a folder for PNG frames",
            path.display()
        ),
    };
    Ok(Some(sink))
}

/// An open output that decoded frames `[F, 3, H, W]` in [−1, 1] are pushed into.
pub enum FrameOutput {
    /// `frames` f32 [F, 3, H, W], written at the end.
    Tensor {
        /// Output file.
        path: PathBuf,
        /// Frames so far.
        frames: Vec<Tensor>,
    },
    /// A media file or folder, written as frames arrive.
    Media(Box<dyn FrameSink + Send>),
}

impl FrameOutput {
    /// Opens the output at `path`, writing video at `fps`.
    pub fn create(path: &Path, fps: f64) -> Result<Self> {
        let range = storyreel_media::FPS_RANGE;
        if !(fps.is_finite() && fps.fract() == 0.0 && fps >= 0.0 && range.contains(&(fps as u32))) {
            bail!("--fps {fps} must be a whole number from {} to {}", range.start(), range.end());
        }
        Ok(match sink_for(path, fps as u32)? {
            Some(mut sink) => {
                sink.begin_shot(0, "")?;
                Self::Media(sink)
            }
            None => Self::Tensor { path: path.to_path_buf(), frames: Vec::new() },
        })
    }

    /// Adds decoded frames.
    pub fn push(&mut self, frames: &Tensor) -> Result<()> {
        match self {
            Self::Tensor { frames: all, .. } => all.push(frames.to_device(&candle_core::Device::Cpu)?),
            Self::Media(sink) => {
                let rgb = storyreel_engine::pixels::to_rgb_frames(frames)?;
                sink.push_frames(&rgb)?;
                sink.flush()?;
            }
        }
        Ok(())
    }

    /// Finishes the output; returns a description of what was written.
    pub fn finish(self) -> Result<String> {
        match self {
            Self::Tensor { path, frames } => {
                let all = Tensor::cat(&frames, 0)?;
                write_tensor(&path, "frames", &all)?;
                Ok(format!("{} ({:?})", path.display(), all.dims()))
            }
            Self::Media(mut sink) => {
                sink.end_shot()?;
                let report = sink.finish()?;
                let outs: Vec<String> = report.outputs.iter().map(|p| p.display().to_string()).collect();
                Ok(format!("{} ({} frames)", outs.join(", "), report.frames))
            }
        }
    }
}

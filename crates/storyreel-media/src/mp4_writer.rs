//! Progressive ("fast start") MP4 files: frames are H.264-encoded as they are pushed and
//! muxed by muxide with `moov` before `mdat`, so browsers can play the file while it downloads.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use muxide::api::{Muxer, MuxerBuilder, VideoCodec};
use tempfile::NamedTempFile;

use crate::error::{MediaError, Result};
use crate::frame::RgbFrame;
use crate::h264::{EncodeOptions, H264Encoder};
use crate::nal::{codec_string, AccessUnit};
use crate::staging::staged_file;

/// What a finished MP4 file contains.
#[derive(Debug, Clone, PartialEq)]
pub struct Mp4Summary {
    /// Where the file was written.
    pub path: PathBuf,
    /// Number of frames.
    pub frames: u64,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// File size in bytes.
    pub bytes: u64,
    /// RFC 6381 codec string, e.g. `avc1.42C01E`.
    pub codec: String,
}

/// The parts that exist once the first frame has fixed the size.
struct Started {
    encoder: H264Encoder,
    muxer: Muxer<BufWriter<File>>,
    codec: String,
}

/// Streams frames into an H.264 MP4 file.
///
/// Each frame is encoded when pushed, so no RGB frames are kept; the encoded samples
/// (about 0.1 bit per pixel) stay in memory until [`Mp4Writer::finish`], because the
/// fast-start layout needs every sample size before the first media byte is written.
/// Output goes to a temporary file next to `path` that is renamed into place only when
/// `finish` succeeds: an error, a panic or a crash never leaves a half-written file at `path`.
pub struct Mp4Writer {
    path: PathBuf,
    tmp: Option<NamedTempFile>,
    options: EncodeOptions,
    started: Option<Started>,
    frames: u64,
    force_keyframe: bool,
}

impl Mp4Writer {
    /// Prepares to write `path`; the frame size is taken from the first frame pushed.
    pub fn create(path: impl AsRef<Path>, options: EncodeOptions) -> Result<Self> {
        options.validate()?;
        let path = path.as_ref().to_path_buf();
        let tmp = staged_file(&path)?;
        Ok(Self { path, tmp: Some(tmp), options, started: None, frames: 0, force_keyframe: false })
    }

    /// Encodes and queues one frame.
    pub fn push_frame(&mut self, frame: &RgbFrame) -> Result<()> {
        let Some(tmp) = self.tmp.as_ref() else {
            return Err(MediaError::AlreadyFinished);
        };
        if self.started.is_none() {
            frame.validate()?;
            let encoder = H264Encoder::new(frame.width, frame.height, &self.options)?;
            let file = tmp.reopen().map_err(|e| MediaError::io(tmp.path(), e))?;
            let muxer = MuxerBuilder::new(BufWriter::new(file))
                .video(VideoCodec::H264, frame.width, frame.height, f64::from(self.options.fps))
                .with_fast_start(true)
                .build()
                .map_err(|e| MediaError::Mux(e.to_string()))?;
            self.started = Some(Started { encoder, muxer, codec: String::new() });
        }
        let Some(started) = self.started.as_mut() else {
            return Err(MediaError::AlreadyFinished);
        };
        let picture = started.encoder.encode(frame, std::mem::take(&mut self.force_keyframe))?;
        if started.codec.is_empty() {
            let au = AccessUnit::from_annexb(&picture.annexb);
            started.codec = au.sps.as_deref().and_then(codec_string).unwrap_or_default();
        }
        let pts = self.frames as f64 / f64::from(self.options.fps);
        started
            .muxer
            .write_video(pts, &picture.annexb, picture.is_idr)
            .map_err(|e| MediaError::Mux(format!("frame {}: {e}", self.frames)))?;
        self.frames += 1;
        Ok(())
    }

    /// Encodes and queues several frames.
    pub fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()> {
        frames.iter().try_for_each(|f| self.push_frame(f))
    }

    /// Makes the next frame an IDR keyframe (a clean seek point, e.g. at a shot start).
    pub fn force_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the file and moves it into place. With no frames pushed it fails with
    /// [`MediaError::NoFrames`] and leaves nothing behind.
    pub fn finish(&mut self) -> Result<Mp4Summary> {
        let Some(tmp) = self.tmp.take() else {
            return Err(MediaError::AlreadyFinished);
        };
        let Some(mut started) = self.started.take() else {
            // Dropping `tmp` deletes the temporary file.
            return Err(MediaError::NoFrames { path: Some(self.path.clone()) });
        };
        let (width, height) = started.encoder.size();
        started.muxer.finish_in_place().map_err(|e| MediaError::Mux(e.to_string()))?;
        let mut out = started.muxer.into_writer();
        out.flush().map_err(|e| MediaError::io(tmp.path(), e))?;
        let file = out.into_inner().map_err(|e| MediaError::io(tmp.path(), e.into_error()))?;
        // The data must be on disk before the rename makes it visible under the final name.
        file.sync_all().map_err(|e| MediaError::io(tmp.path(), e))?;
        drop(file);
        let bytes = tmp.as_file().metadata().map_err(|e| MediaError::io(tmp.path(), e))?.len();
        tmp.persist(&self.path).map_err(|e| MediaError::io(&self.path, e.error))?;
        Ok(Mp4Summary {
            path: self.path.clone(),
            frames: self.frames,
            width,
            height,
            fps: self.options.fps,
            bytes,
            codec: started.codec,
        })
    }
}

/// Writes a whole clip to `path` in one call.
pub fn write_mp4(path: impl AsRef<Path>, frames: &[RgbFrame], options: EncodeOptions) -> Result<Mp4Summary> {
    let mut writer = Mp4Writer::create(path, options)?;
    writer.push_frames(frames)?;
    writer.finish()
}

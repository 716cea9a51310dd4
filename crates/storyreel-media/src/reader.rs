//! Reads H.264 MP4 files (progressive or fragmented) back into `RgbFrame`s with OpenH264's
//! decoder, one frame at a time.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;
use openh264::OpenH264API;

use crate::demux::{find_video_track, VideoTrack};
use crate::error::{MediaError, Result};
use crate::frame::RgbFrame;
use crate::nal::{avcc_to_annexb, codec_string};

/// What an MP4's video track holds, known before decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Width in pixels (from the track's sample entry).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Average frames per second (frame count over total duration).
    pub fps: f64,
    /// Number of video samples (frames).
    pub frame_count: u64,
    /// Total duration in seconds.
    pub duration_secs: f64,
    /// RFC 6381 codec string, e.g. `avc1.42C01E`.
    pub codec: String,
}

/// Decodes an MP4's H.264 video track frame by frame.
pub struct Mp4VideoReader {
    path: PathBuf,
    file: BufReader<File>,
    track: VideoTrack,
    info: VideoInfo,
    decoder: Decoder,
    next_sample: usize,
    ready: VecDeque<RgbFrame>,
    flushed: bool,
    sample_buf: Vec<u8>,
    annexb: Vec<u8>,
}

impl Mp4VideoReader {
    /// Opens `path` and finds its video track; errors name the file and say what is wrong
    /// (not an MP4, no video track, not H.264).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| MediaError::io(&path, e))?;
        let len = file.metadata().map_err(|e| MediaError::io(&path, e))?.len();
        let mut file = BufReader::new(file);
        let track = find_video_track(&mut file, len, &path)?;
        let total: u64 = track.samples.iter().map(|s| u64::from(s.duration)).sum();
        let duration_secs = total as f64 / f64::from(track.timescale);
        let frame_count = track.samples.len() as u64;
        let info = VideoInfo {
            width: track.width,
            height: track.height,
            fps: if total > 0 { frame_count as f64 / duration_secs } else { 0.0 },
            frame_count,
            duration_secs,
            codec: track.sps.first().and_then(|s| codec_string(s)).unwrap_or_else(|| "avc1".into()),
        };
        // Decode in stream order and drain at the end, so reordered (B-frame) streams work too.
        let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| MediaError::Decoder { path: Some(path.clone()), message: e.to_string() })?;
        Ok(Self {
            path,
            file,
            track,
            info,
            decoder,
            next_sample: 0,
            ready: VecDeque::new(),
            flushed: false,
            sample_buf: Vec::new(),
            annexb: Vec::new(),
        })
    }

    /// Size, frame rate, frame count and codec of the video track.
    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    /// The track id of the video track being decoded.
    pub fn track_id(&self) -> u32 {
        self.track.track_id
    }

    /// The next decoded frame, or `None` after the last one.
    pub fn next_frame(&mut self) -> Result<Option<RgbFrame>> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(Some(frame));
            }
            if self.next_sample < self.track.samples.len() {
                self.decode_next_sample()?;
            } else if !self.flushed {
                self.flushed = true;
                let remaining = self.decoder.flush_remaining().map_err(|e| decoder_err(&self.path, e))?;
                for yuv in &remaining {
                    self.ready.push_back(to_rgb(yuv)?);
                }
            } else {
                return Ok(None);
            }
        }
    }

    /// Decodes every remaining frame.
    pub fn read_all(mut self) -> Result<Vec<RgbFrame>> {
        let mut frames = Vec::with_capacity(self.track.samples.len().saturating_sub(self.next_sample));
        while let Some(f) = self.next_frame()? {
            frames.push(f);
        }
        Ok(frames)
    }

    /// Feeds one sample (with the parameter sets before the first) to the decoder.
    fn decode_next_sample(&mut self) -> Result<()> {
        let sample = self.track.samples[self.next_sample];
        self.annexb.clear();
        if self.next_sample == 0 {
            for ps in self.track.sps.iter().chain(&self.track.pps) {
                self.annexb.extend_from_slice(&[0, 0, 0, 1]);
                self.annexb.extend_from_slice(ps);
            }
        }
        self.sample_buf.resize(sample.size as usize, 0);
        self.file.seek(SeekFrom::Start(sample.offset)).map_err(|e| MediaError::io(&self.path, e))?;
        self.file.read_exact(&mut self.sample_buf).map_err(|e| MediaError::io(&self.path, e))?;
        if !avcc_to_annexb(&self.sample_buf, self.track.length_size, &mut self.annexb) {
            return Err(MediaError::Demux {
                path: self.path.clone(),
                reason: format!("sample {} has a NAL length past its end", self.next_sample + 1),
            });
        }
        self.next_sample += 1;
        let decoded = self.decoder.decode(&self.annexb).map_err(|e| decoder_err(&self.path, e))?;
        if let Some(yuv) = decoded {
            let frame = to_rgb(&yuv)?;
            self.ready.push_back(frame);
        }
        Ok(())
    }
}

impl Iterator for Mp4VideoReader {
    type Item = Result<RgbFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

/// Opens and fully decodes an MP4: its info and all frames.
pub fn read_mp4(path: impl AsRef<Path>) -> Result<(VideoInfo, Vec<RgbFrame>)> {
    let reader = Mp4VideoReader::open(path)?;
    let info = reader.info().clone();
    Ok((info, reader.read_all()?))
}

/// Converts a decoded picture (BT.601 limited range, like the encoder) to RGB8.
fn to_rgb(yuv: &DecodedYUV<'_>) -> Result<RgbFrame> {
    let (w, h) = yuv.dimensions();
    let mut data = vec![0u8; w * h * 3];
    yuv.write_rgb8(&mut data);
    RgbFrame::new(w as u32, h as u32, data)
}

/// Wraps an OpenH264 decoder error with the file it came from.
fn decoder_err(path: &Path, e: openh264::Error) -> MediaError {
    MediaError::Decoder { path: Some(path.to_path_buf()), message: e.to_string() }
}

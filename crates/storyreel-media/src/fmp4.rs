//! Fragmented MP4 for live streaming: one init segment (`ftyp` + `moov`, from muxide) and
//! media segments (`moof` + `mdat`) cut whenever the caller flushes. Every media segment
//! starts with an IDR picture, so a viewer can join at any segment, and decode times run
//! on without gaps, so `init + segments...` is also a valid file.

use muxide::fragmented::{FragmentConfig, FragmentedMuxer};

use crate::error::{MediaError, Result};
use crate::fmp4_segment::{media_segment, SampleInfo};
use crate::frame::RgbFrame;
use crate::h264::{EncodeOptions, H264Encoder};
use crate::nal::{codec_string, AccessUnit};

/// Track timescale (ticks per second): the usual 90 kHz video clock.
pub const FMP4_TIMESCALE: u32 = 90_000;

/// Decode time of frame `index` in timescale ticks; rounding each frame's own start
/// (instead of adding a rounded duration) keeps rates like 7 fps from drifting.
fn decode_time(index: u64, fps: u32) -> u64 {
    (index * u64::from(FMP4_TIMESCALE) + u64::from(fps) / 2) / u64::from(fps)
}

/// Encodes frames into fragmented-MP4 segments.
pub struct Fmp4Writer {
    options: EncodeOptions,
    encoder: Option<H264Encoder>,
    init: Option<Vec<u8>>,
    codec: Option<String>,
    samples: Vec<SampleInfo>,
    data: Vec<u8>,
    segment_first_frame: u64,
    frames: u64,
    sequence: u32,
}

impl Fmp4Writer {
    /// A writer whose frame size is fixed by the first frame pushed.
    pub fn new(options: EncodeOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self {
            options,
            encoder: None,
            init: None,
            codec: None,
            samples: Vec::new(),
            data: Vec::new(),
            segment_first_frame: 0,
            frames: 0,
            sequence: 1,
        })
    }

    /// Encodes one frame into the current segment.
    pub fn push_frame(&mut self, frame: &RgbFrame) -> Result<()> {
        if self.encoder.is_none() {
            frame.validate()?;
            self.encoder = Some(H264Encoder::new(frame.width, frame.height, &self.options)?);
        }
        let Some(encoder) = self.encoder.as_mut() else {
            return Err(MediaError::Encoder("encoder missing".into()));
        };
        let picture = encoder.encode(frame, self.samples.is_empty())?;
        let au = AccessUnit::from_annexb(&picture.annexb);
        if self.init.is_none() {
            let (Some(sps), Some(pps)) = (au.sps.clone(), au.pps.clone()) else {
                return Err(MediaError::Encoder("first picture has no SPS/PPS".into()));
            };
            let (width, height) = encoder.size();
            let mut config = FragmentConfig::new(width, height, FMP4_TIMESCALE);
            self.codec = codec_string(&sps);
            config.sps = sps;
            config.pps = pps;
            let mut muxer = FragmentedMuxer::new(config).map_err(|e| MediaError::Mux(e.to_string()))?;
            self.init = Some(muxer.init_segment());
        }
        let index = self.frames;
        let duration = decode_time(index + 1, self.options.fps) - decode_time(index, self.options.fps);
        self.samples.push(SampleInfo { duration: duration as u32, size: au.avcc.len() as u32, is_sync: au.is_idr });
        self.data.extend_from_slice(&au.avcc);
        self.frames += 1;
        Ok(())
    }

    /// Encodes several frames into the current segment.
    pub fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()> {
        frames.iter().try_for_each(|f| self.push_frame(f))
    }

    /// The init segment (`ftyp` + `moov`); available once the first frame has been pushed,
    /// because it carries the encoder's SPS/PPS.
    pub fn init_segment(&self) -> Option<&[u8]> {
        self.init.as_deref()
    }

    /// RFC 6381 codec string for `MediaSource` (e.g. `avc1.42C01E`), once known.
    pub fn codec_string(&self) -> Option<&str> {
        self.codec.as_deref()
    }

    /// The MIME type to pass to `MediaSource.addSourceBuffer`, once known.
    pub fn mime_type(&self) -> Option<String> {
        self.codec.as_ref().map(|c| format!("video/mp4; codecs=\"{c}\""))
    }

    /// Closes the current segment: `moof` + `mdat` for the frames pushed since the last
    /// flush, or `None` if there were none. The next frame starts a new segment with an IDR.
    pub fn flush_segment(&mut self) -> Option<Vec<u8>> {
        if self.samples.is_empty() {
            return None;
        }
        let base = decode_time(self.segment_first_frame, self.options.fps);
        let segment = media_segment(self.sequence, base, &self.samples, &self.data);
        self.sequence += 1;
        self.segment_first_frame = self.frames;
        self.samples.clear();
        self.data.clear();
        Some(segment)
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Frames waiting in the current (unflushed) segment.
    pub fn pending_frames(&self) -> usize {
        self.samples.len()
    }

    /// Frame size, once the first frame has fixed it.
    pub fn size(&self) -> Option<(u32, u32)> {
        self.encoder.as_ref().map(H264Encoder::size)
    }

    /// Frames per second.
    pub fn fps(&self) -> u32 {
        self.options.fps
    }
}

/// Reads the RFC 6381 codec string (`avc1.PPCCLL`) from an init segment's `avcC` box,
/// for a server that only has the bytes.
pub fn codec_string_from_init(init: &[u8]) -> Option<String> {
    let at = init.windows(4).position(|w| w == b"avcC")?;
    let cfg = init.get(at + 4..at + 8)?;
    Some(format!("avc1.{:02X}{:02X}{:02X}", cfg[1], cfg[2], cfg[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_times_do_not_drift() {
        assert_eq!(decode_time(16, 16), 90_000);
        assert_eq!(decode_time(7, 7), 90_000);
        assert_eq!(decode_time(1, 7), 12_857);
        assert_eq!(decode_time(700, 7), 9_000_000);
    }
}

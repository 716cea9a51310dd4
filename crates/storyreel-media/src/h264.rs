//! RGB frames to H.264 access units with OpenH264 (built from source, Constrained Baseline,
//! yuv420p, BT.601 limited range, which is what OpenH264's RGB converter produces).

use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use openh264::OpenH264API;

use crate::error::{MediaError, Result};
use crate::frame::RgbFrame;

/// Frame rates the writers accept.
pub const FPS_RANGE: std::ops::RangeInclusive<u32> = 1..=120;
/// Bit rates (bits per second) the writers accept.
pub const BITRATE_RANGE: std::ops::RangeInclusive<u32> = 10_000..=200_000_000;
/// OpenH264's resolution limit (level 5.2), as (longer side, shorter side).
const MAX_DIMS: (u32, u32) = (3840, 2160);

/// How the encoder spends bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateControl {
    /// Aim for this many bits per second with OpenH264's quality-first rate control.
    Bitrate(u32),
    /// No rate control: every frame at OpenH264's base quantiser (QP 26, clean on
    /// generated video); the file size follows the content.
    ConstantQuality,
}

/// Bits per pixel per frame for the default bitrate (1.28 Mbit/s at 832x480, 16 fps).
/// Measured at 832x480: smooth synthetic video reaches the ~41 dB PSNR ceiling of the
/// yuv420p round trip at 0.12 already, and grain-heavy content gets ~34 dB at 0.2.
const DEFAULT_BITS_PER_PIXEL: f64 = 0.2;
/// Floor for the default bitrate so tiny previews do not starve.
const MIN_DEFAULT_BITRATE: u32 = 256_000;

/// Encoder settings shared by the MP4 and fragmented-MP4 writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Frames per second (default 16, the Wan 2.1 frame rate).
    pub fps: u32,
    /// Rate control; `None` picks a bitrate from the frame size and fps.
    pub rate: Option<RateControl>,
    /// Frames between periodic IDR frames (seek points); 0 disables them (the first
    /// frame and forced keyframes are still IDR). Default: two seconds' worth.
    pub keyframe_interval: Option<u32>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self { fps: 16, rate: None, keyframe_interval: None }
    }
}

impl EncodeOptions {
    /// Defaults with a different frame rate.
    pub fn with_fps(mut self, fps: u32) -> Self {
        self.fps = fps;
        self
    }

    /// Defaults with an explicit rate control.
    pub fn with_rate(mut self, rate: RateControl) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Defaults with an explicit keyframe interval in frames (0 = none besides forced ones).
    pub fn with_keyframe_interval(mut self, frames: u32) -> Self {
        self.keyframe_interval = Some(frames);
        self
    }

    /// Rejects settings outside the supported ranges.
    pub fn validate(&self) -> Result<()> {
        if !FPS_RANGE.contains(&self.fps) {
            return Err(MediaError::out_of_range("fps", self.fps, "1..=120"));
        }
        if let Some(RateControl::Bitrate(bps)) = self.rate {
            if !BITRATE_RANGE.contains(&bps) {
                return Err(MediaError::out_of_range("bitrate (bit/s)", bps, "10000..=200000000"));
            }
        }
        Ok(())
    }

    /// The rate control used for `width x height` frames.
    pub fn rate_for(&self, width: u32, height: u32) -> RateControl {
        self.rate.unwrap_or_else(|| RateControl::Bitrate(default_bitrate(width, height, self.fps)))
    }

    /// The IDR period in frames.
    fn keyframe_period(&self) -> u32 {
        self.keyframe_interval.unwrap_or(self.fps * 2)
    }
}

/// The bitrate used when none is given: `DEFAULT_BITS_PER_PIXEL` per pixel per frame.
pub fn default_bitrate(width: u32, height: u32, fps: u32) -> u32 {
    let bps = f64::from(width) * f64::from(height) * f64::from(fps) * DEFAULT_BITS_PER_PIXEL;
    (bps as u32).clamp(MIN_DEFAULT_BITRATE, *BITRATE_RANGE.end())
}

/// Checks that a frame size can go through yuv420p H.264.
pub fn check_encodable_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(MediaError::EmptyFrame { width, height });
    }
    if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err(MediaError::OddFrameSize { width, height });
    }
    if width.max(height) > MAX_DIMS.0 || width.min(height) > MAX_DIMS.1 {
        return Err(MediaError::FrameTooLarge { width, height });
    }
    Ok(())
}

/// One encoded picture in Annex-B form.
pub(crate) struct EncodedPicture {
    /// Start-code-prefixed NAL units, including SPS/PPS before IDR pictures.
    pub annexb: Vec<u8>,
    /// Whether the picture is an IDR (a point where decoding can start).
    pub is_idr: bool,
}

/// A fixed-size OpenH264 encoder that takes RGB frames.
pub(crate) struct H264Encoder {
    encoder: Encoder,
    yuv: YUVBuffer,
    width: u32,
    height: u32,
    frames: u64,
}

impl H264Encoder {
    /// An encoder for `width x height` frames; the size is checked here, once.
    pub fn new(width: u32, height: u32, options: &EncodeOptions) -> Result<Self> {
        options.validate()?;
        check_encodable_size(width, height)?;
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .max_frame_rate(FrameRate::from_hz(options.fps as f32))
            // A skipped frame would leave a hole in the frame count and the timeline.
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(options.keyframe_period()))
            .vui(VuiConfig::bt601());
        let config = match options.rate_for(width, height) {
            RateControl::Bitrate(bps) => {
                config.rate_control_mode(RateControlMode::Quality).bitrate(BitRate::from_bps(bps))
            }
            RateControl::ConstantQuality => config.rate_control_mode(RateControlMode::Off),
        };
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| MediaError::Encoder(e.to_string()))?;
        silence_encoder_log(&mut encoder);
        Ok(Self { encoder, yuv: YUVBuffer::new(width as usize, height as usize), width, height, frames: 0 })
    }

    /// `(width, height)` of the stream.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Encodes one frame; `force_idr` makes it a keyframe (segment and shot starts).
    pub fn encode(&mut self, frame: &RgbFrame, force_idr: bool) -> Result<EncodedPicture> {
        frame.validate()?;
        if frame.size() != (self.width, self.height) {
            return Err(MediaError::FrameSizeChanged {
                index: self.frames,
                width: self.width,
                height: self.height,
                got_width: frame.width,
                got_height: frame.height,
            });
        }
        self.yuv.read_rgb8(RgbSliceU8::new(&frame.data, (self.width as usize, self.height as usize)));
        if force_idr {
            self.encoder.force_intra_frame();
        }
        let bitstream = self.encoder.encode(&self.yuv).map_err(|e| MediaError::Encoder(e.to_string()))?;
        let frame_type = bitstream.frame_type();
        let annexb = bitstream.to_vec();
        if annexb.is_empty() || matches!(frame_type, FrameType::Skip | FrameType::Invalid) {
            return Err(MediaError::Encoder(format!(
                "frame {} produced no picture (frame type {frame_type:?})",
                self.frames
            )));
        }
        self.frames += 1;
        Ok(EncodedPicture { annexb, is_idr: frame_type == FrameType::IDR })
    }
}

/// Stops OpenH264 from printing to stderr while it initialises.
///
/// The wrapper only lowers the log level after `InitializeExt`, which already warns that
/// the bitrate "can't be controlled" when frame skipping is off (we keep it off so no frame
/// is ever dropped). The warning would appear on every run of the CLI.
fn silence_encoder_log(encoder: &mut Encoder) {
    let mut level: i32 = openh264_sys2::WELS_LOG_QUIET;
    // SAFETY: the encoder object exists (created by `with_api_config`) and its trace object
    // is built in its constructor; TRACE_LEVEL is one of the options OpenH264 accepts before
    // initialisation (welsEncoderExt.cpp, SetOption). The pointer is to a live i32 that
    // OpenH264 only reads during the call.
    unsafe {
        encoder.raw_api().set_option(openh264_sys2::ENCODER_OPTION_TRACE_LEVEL, (&raw mut level).cast());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        assert!(EncodeOptions::default().validate().is_ok());
        assert!(EncodeOptions::default().with_fps(0).validate().is_err());
        assert!(EncodeOptions::default().with_fps(121).validate().is_err());
        assert!(EncodeOptions::default().with_rate(RateControl::Bitrate(5)).validate().is_err());
        assert!(matches!(check_encodable_size(63, 48), Err(MediaError::OddFrameSize { width: 63, height: 48 })));
        assert!(matches!(check_encodable_size(4096, 2160), Err(MediaError::FrameTooLarge { .. })));
        assert!(check_encodable_size(2160, 3840).is_ok());
        assert_eq!(default_bitrate(832, 480, 16), 1_277_952);
        assert_eq!(default_bitrate(64, 48, 16), MIN_DEFAULT_BITRATE);
    }
}

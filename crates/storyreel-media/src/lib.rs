//! storyreel-media: RGB frames in, video files and live-stream segments out.
//!
//! * [`RgbFrame`]: the pixel format every writer takes (and [`RgbFrame::from_f32_chw`] for
//!   decoder output in [-1, 1]).
//! * [`Mp4Writer`]: H.264 (OpenH264) in a fast-start MP4 (muxide), encoded as frames arrive.
//! * [`Fmp4Writer`]: fragmented MP4 (init segment + one media segment per flush) for
//!   `MediaSource` streaming.
//! * [`Mp4VideoReader`]: H.264 MP4 back to frames.
//! * PNG frames and stills, GIF previews, contact sheets with captions.
//! * [`FrameSink`]: one trait the generation session pushes shots into, with a sink per output.
//!
//! This crate knows nothing about tensors: callers hand it plain byte or `f32` slices.

#![warn(missing_docs)]

mod contact_sheet;
mod demux;
mod error;
mod fmp4;
mod fmp4_segment;
mod font;
mod frame;
mod gif_writer;
mod h264;
mod mp4_writer;
mod nal;
mod png;
mod reader;
mod sink;
mod staging;

pub use contact_sheet::{even_indices, ContactSheet, ContactSheetOptions};
pub use error::{MediaError, Result};
pub use fmp4::{codec_string_from_init, Fmp4Writer, FMP4_TIMESCALE};
pub use frame::RgbFrame;
pub use gif_writer::{GifOptions, GifWriter};
pub use h264::{check_encodable_size, default_bitrate, EncodeOptions, RateControl, BITRATE_RANGE, FPS_RANGE};
pub use mp4_writer::{write_mp4, Mp4Summary, Mp4Writer};
pub use png::{load_image, save_png, PngSequenceWriter};
pub use reader::{read_mp4, Mp4VideoReader, VideoInfo};
pub use sink::{
    CallbackError, CallbackSink, ContactSheetSink, Fmp4StreamSink, FrameSink, GifSink, Mp4FileSink, PngDirSink,
    Segment, SegmentKind, SinkReport, TeeSink,
};
pub use staging::write_atomic;

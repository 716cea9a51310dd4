//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong turning frames into files and streams (and back).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Width or height is zero.
    #[error("frame size {width}x{height} is empty: width and height must be at least 1")]
    EmptyFrame {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The pixel buffer does not match the stated size.
    #[error("frame data has {actual} values but {what} for {width}x{height} needs {expected}")]
    FrameDataSize {
        /// Which layout was expected, e.g. "RGB8 (H*W*3 bytes)".
        what: &'static str,
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// Values the size implies.
        expected: usize,
        /// Values actually given.
        actual: usize,
    },
    /// H.264 yuv420p halves both dimensions for chroma, so they must be even.
    #[error(
        "frame size {width}x{height} cannot be encoded as H.264 yuv420p: width and height \
         must both be even (crop or pad the frames by one pixel)"
    )]
    OddFrameSize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Larger than OpenH264 can encode (level 5.2).
    #[error("frame size {width}x{height} is larger than the H.264 encoder's 3840x2160 limit")]
    FrameTooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// A frame in the middle of a stream has a different size than the first one.
    #[error("frame {index} is {got_width}x{got_height} but the stream started at {width}x{height}")]
    FrameSizeChanged {
        /// Zero-based index of the offending frame in the stream.
        index: u64,
        /// The stream's size (from its first frame).
        width: u32,
        /// The stream's size (from its first frame).
        height: u32,
        /// The offending frame's width.
        got_width: u32,
        /// The offending frame's height.
        got_height: u32,
    },
    /// A setting is outside the range the writer supports.
    #[error("{name} = {value} is out of range: expected {range}")]
    OutOfRange {
        /// Setting name, e.g. "fps".
        name: &'static str,
        /// The rejected value, formatted.
        value: String,
        /// The accepted range, formatted.
        range: &'static str,
    },
    /// `finish` was called before any frame arrived.
    #[error("no frames were written{}; nothing was saved", at_path(.path))]
    NoFrames {
        /// The output that was not created, if it is a file.
        path: Option<PathBuf>,
    },
    /// A writer or sink was used after `finish`.
    #[error("this writer was already finished")]
    AlreadyFinished,
    /// The OpenH264 encoder reported an error.
    #[error("H.264 encoder: {0}")]
    Encoder(String),
    /// The OpenH264 decoder reported an error.
    #[error("H.264 decoder{}: {message}", at_path(.path))]
    Decoder {
        /// The file being decoded, if any.
        path: Option<PathBuf>,
        /// OpenH264's message.
        message: String,
    },
    /// The MP4 muxer rejected a sample or failed to write.
    #[error("MP4 muxer: {0}")]
    Mux(String),
    /// The file is not an MP4 this crate can read.
    #[error("{path}: not a readable MP4: {reason}")]
    Demux {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The MP4 has no video track at all.
    #[error("{path}: the MP4 has no video track")]
    NoVideoTrack {
        /// The file.
        path: PathBuf,
    },
    /// The MP4's video track is not H.264.
    #[error("{path}: video track {track} is {codec}; only H.264 (avc1) can be decoded")]
    UnsupportedCodec {
        /// The file.
        path: PathBuf,
        /// Track id.
        track: u32,
        /// Codec description, e.g. "H.265 (hev1)".
        codec: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// PNG/JPEG encoding or decoding failed.
    #[error("image {path}: {source}")]
    Image {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
    /// GIF encoding failed.
    #[error("GIF {path}: {message}")]
    Gif {
        /// The file involved.
        path: PathBuf,
        /// The underlying error, formatted.
        message: String,
    },
    /// A stream consumer (callback or channel) is gone or refused data.
    #[error("stream consumer: {0}")]
    Consumer(String),
}

/// Formats " at <path>" when a path is known, so messages read naturally either way.
fn at_path(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" at {}", p.display()),
        None => String::new(),
    }
}

impl MediaError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        MediaError::Io { path: path.into(), source }
    }

    /// Builds an [`MediaError::OutOfRange`] for a rejected setting.
    pub fn out_of_range(name: &'static str, value: impl ToString, range: &'static str) -> Self {
        MediaError::OutOfRange { name, value: value.to_string(), range }
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = MediaError> = std::result::Result<T, E>;

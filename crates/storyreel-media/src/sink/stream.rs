//! The live-streaming sink: fragmented-MP4 segments handed to a callback or a channel,
//! init segment first, then one media segment per flush (and at every shot end).

use std::sync::mpsc::Sender;

use super::{CallbackError, FrameSink, ShotCounter, SinkReport};
use crate::error::{MediaError, Result};
use crate::fmp4::Fmp4Writer;
use crate::frame::RgbFrame;
use crate::h264::EncodeOptions;

/// Which part of a fragmented-MP4 stream a [`Segment`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// `ftyp` + `moov`: sent once, before any media.
    Init,
    /// `moof` + `mdat`: starts with an IDR picture.
    Media,
}

/// One piece of the stream, with what a web client needs to place it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Init or media.
    pub kind: SegmentKind,
    /// The bytes to append to the `SourceBuffer`.
    pub data: Vec<u8>,
    /// RFC 6381 codec string, e.g. `avc1.42C01E` (for `video/mp4; codecs="..."`).
    pub codec: String,
    /// Shot the media belongs to (`None` for the init segment).
    pub shot: Option<usize>,
    /// Index of the segment's first frame in the whole stream (0 for init).
    pub first_frame: u64,
    /// Frames in the segment (0 for init).
    pub frames: u32,
}

/// Encodes frames to fMP4 and hands each segment to a consumer.
pub struct Fmp4StreamSink {
    writer: Fmp4Writer,
    consumer: Box<dyn FnMut(Segment) -> std::result::Result<(), CallbackError> + Send>,
    counter: ShotCounter,
    shot: usize,
    init_sent: bool,
}

impl Fmp4StreamSink {
    /// Segments go to `consumer`; its errors stop the session as [`MediaError::Consumer`].
    pub fn with_callback(
        options: EncodeOptions,
        consumer: impl FnMut(Segment) -> std::result::Result<(), CallbackError> + Send + 'static,
    ) -> Result<Self> {
        Ok(Self {
            writer: Fmp4Writer::new(options)?,
            consumer: Box::new(consumer),
            counter: ShotCounter::default(),
            shot: 0,
            init_sent: false,
        })
    }

    /// Segment bytes go down `sender` (init first); a dropped receiver is an error.
    pub fn with_sender(options: EncodeOptions, sender: Sender<Vec<u8>>) -> Result<Self> {
        Self::with_callback(options, move |segment| {
            sender.send(segment.data).map_err(|_| CallbackError::from("stream receiver was dropped"))
        })
    }

    /// Emits the pending frames as a media segment (after the init segment, the first time).
    fn emit(&mut self) -> Result<()> {
        let pending = self.writer.pending_frames() as u32;
        let first_frame = self.writer.frames() - u64::from(pending);
        let Some(data) = self.writer.flush_segment() else {
            return Ok(());
        };
        let codec = self.writer.codec_string().unwrap_or_default().to_string();
        if !self.init_sent {
            let init = self.writer.init_segment().unwrap_or_default().to_vec();
            self.send(Segment {
                kind: SegmentKind::Init,
                data: init,
                codec: codec.clone(),
                shot: None,
                first_frame: 0,
                frames: 0,
            })?;
            self.init_sent = true;
        }
        self.send(Segment {
            kind: SegmentKind::Media,
            data,
            codec,
            shot: Some(self.shot),
            first_frame,
            frames: pending,
        })
    }

    /// Hands one segment to the consumer.
    fn send(&mut self, segment: Segment) -> Result<()> {
        (self.consumer)(segment).map_err(|e| MediaError::Consumer(e.to_string()))
    }
}

impl FrameSink for Fmp4StreamSink {
    fn begin_shot(&mut self, index: usize, _caption: &str) -> Result<()> {
        self.counter.begin()?;
        // A segment never spans two shots, so a client can tell where each shot starts.
        self.emit()?;
        self.shot = index;
        Ok(())
    }

    fn push_frames(&mut self, frames: &[RgbFrame]) -> Result<()> {
        if self.counter.push(frames.len())? {
            self.shot = self.counter.shots - 1;
        }
        self.writer.push_frames(frames)
    }

    fn flush(&mut self) -> Result<()> {
        self.counter.check_open()?;
        self.emit()
    }

    fn end_shot(&mut self) -> Result<()> {
        self.counter.end()?;
        self.emit()
    }

    fn finish(&mut self) -> Result<SinkReport> {
        self.counter.finish()?;
        self.emit()?;
        if self.writer.frames() == 0 {
            return Err(MediaError::NoFrames { path: None });
        }
        Ok(self.counter.report(Vec::new()))
    }
}

//! Finds the H.264 video track of an MP4 (progressive or fragmented) and lists where each
//! sample's bytes are. Box contents are parsed with the `mp4` crate; the top-level walk and
//! the sample offsets are computed here because `mp4` 0.14 gives every fragmented sample
//! the same offset.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use mp4::{BoxType, MoofBox, MoovBox, ReadBox};

use crate::error::{MediaError, Result};

/// `tfhd` flags (ISO/IEC 14496-12 §8.8.7).
const TFHD_BASE_DATA_OFFSET: u32 = 0x01;
/// Sample flag bit that marks a non-sync sample.
const SAMPLE_IS_NON_SYNC: u32 = 0x0001_0000;
/// Largest `moov`/`moof` read into memory; real ones are a few MB at most.
const MAX_HEADER_BOX: u64 = 256 << 20;

/// Where one sample lives and when it plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SampleRef {
    /// Byte offset in the file.
    pub offset: u64,
    /// Size in bytes.
    pub size: u32,
    /// Duration in track timescale units.
    pub duration: u32,
    /// Whether decoding can start here.
    pub is_sync: bool,
}

/// The video track's decoder setup and sample list.
#[derive(Debug, Clone)]
pub(crate) struct VideoTrack {
    /// Track id.
    pub track_id: u32,
    /// Width from the sample entry.
    pub width: u32,
    /// Height from the sample entry.
    pub height: u32,
    /// Ticks per second of sample durations.
    pub timescale: u32,
    /// SPS NAL units from `avcC`.
    pub sps: Vec<Vec<u8>>,
    /// PPS NAL units from `avcC`.
    pub pps: Vec<Vec<u8>>,
    /// Bytes in each NAL length prefix (1, 2 or 4).
    pub length_size: usize,
    /// All samples in decode order.
    pub samples: Vec<SampleRef>,
}

/// A top-level box: type, where its payload starts, and its total size.
struct TopBox {
    kind: BoxType,
    start: u64,
    size: u64,
}

/// Reads a top-level box header at `pos`; `None` at end of file.
fn read_top_box<R: Read + Seek>(r: &mut R, pos: u64, file_len: u64) -> std::io::Result<Option<(TopBox, u64)>> {
    if pos + 8 > file_len {
        return Ok(None);
    }
    r.seek(SeekFrom::Start(pos))?;
    let mut h = [0u8; 8];
    r.read_exact(&mut h)?;
    let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let kind = BoxType::from(u32::from_be_bytes([h[4], h[5], h[6], h[7]]));
    let (size, header) = match size32 {
        // Size 0: the box runs to the end of the file.
        0 => (file_len - pos, 8),
        1 => {
            let mut l = [0u8; 8];
            r.read_exact(&mut l)?;
            (u64::from_be_bytes(l), 16)
        }
        s => (u64::from(s), 8),
    };
    Ok(Some((TopBox { kind, start: pos, size }, header)))
}

/// Parses a `moov` or `moof` by reading it into memory and handing it to `mp4`.
fn parse_box<R: Read + Seek, T>(r: &mut R, b: &TopBox, path: &Path) -> Result<T>
where
    T: for<'a> ReadBox<&'a mut Cursor<Vec<u8>>>,
{
    if b.size > MAX_HEADER_BOX {
        return Err(demux_err(path, format!("{} box of {} bytes is implausibly large", b.kind, b.size)));
    }
    let mut buf = vec![0u8; b.size as usize];
    r.seek(SeekFrom::Start(b.start)).map_err(|e| MediaError::io(path, e))?;
    r.read_exact(&mut buf).map_err(|e| MediaError::io(path, e))?;
    let mut cursor = Cursor::new(buf);
    cursor.set_position(8);
    T::read_box(&mut cursor, b.size).map_err(|e| demux_err(path, format!("bad {} box: {e}", b.kind)))
}

/// A [`MediaError::Demux`] for `path`.
fn demux_err(path: &Path, reason: impl Into<String>) -> MediaError {
    MediaError::Demux { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads the box structure of an MP4 and returns its first video track.
pub(crate) fn find_video_track<R: Read + Seek>(r: &mut R, file_len: u64, path: &Path) -> Result<VideoTrack> {
    let mut moov: Option<MoovBox> = None;
    let mut moofs: Vec<(u64, MoofBox)> = Vec::new();
    let mut pos = 0u64;
    let mut first = true;
    while let Some((b, header)) = read_top_box(r, pos, file_len).map_err(|e| MediaError::io(path, e))? {
        if b.size < header || b.start + b.size > file_len {
            if first {
                return Err(demux_err(path, "does not start with an MP4 box"));
            }
            // A truncated tail (e.g. an interrupted download) still leaves earlier samples usable.
            break;
        }
        first = false;
        match b.kind {
            BoxType::MoovBox => moov = Some(parse_box(r, &b, path)?),
            BoxType::MoofBox => moofs.push((b.start, parse_box(r, &b, path)?)),
            _ => {}
        }
        pos = b.start + b.size;
    }
    let moov = moov.ok_or_else(|| demux_err(path, "no moov box"))?;
    let trak = moov
        .traks
        .iter()
        .find(|t| t.mdia.hdlr.handler_type.value == *b"vide")
        .ok_or_else(|| MediaError::NoVideoTrack { path: path.to_path_buf() })?;
    let track_id = trak.tkhd.track_id;
    let stsd = &trak.mdia.minf.stbl.stsd;
    let Some(avc1) = stsd.avc1.as_ref() else {
        let codec = if stsd.hev1.is_some() {
            "H.265 (hev1)"
        } else if stsd.vp09.is_some() {
            "VP9 (vp09)"
        } else {
            "not avc1 (H.264)"
        };
        return Err(MediaError::UnsupportedCodec { path: path.to_path_buf(), track: track_id, codec: codec.into() });
    };
    let timescale = trak.mdia.mdhd.timescale;
    if timescale == 0 {
        return Err(demux_err(path, "video track timescale is 0"));
    }
    let avcc = &avc1.avcc;
    let stbl = &trak.mdia.minf.stbl;
    let table = SampleTable {
        count: stbl.stsz.sample_count as usize,
        uniform_size: stbl.stsz.sample_size,
        sizes: &stbl.stsz.sample_sizes,
        chunk_offsets: match (&stbl.stco, &stbl.co64) {
            (Some(stco), _) => stco.entries.iter().map(|&o| u64::from(o)).collect(),
            (None, Some(co64)) => co64.entries.clone(),
            (None, None) => Vec::new(),
        },
        chunks: stbl.stsc.entries.iter().map(|e| (e.first_chunk, e.samples_per_chunk)).collect(),
        durations: stbl.stts.entries.iter().map(|e| (e.sample_count, e.sample_delta)).collect(),
        sync: stbl.stss.as_ref().map(|s| s.entries.as_slice()),
    };
    let mut samples = table.samples(path)?;
    let defaults = moov
        .mvex
        .as_ref()
        .filter(|m| m.trex.track_id == track_id)
        .map(|m| Defaults {
            size: m.trex.default_sample_size,
            duration: m.trex.default_sample_duration,
            flags: m.trex.default_sample_flags,
        })
        .unwrap_or_default();
    for (moof_start, moof) in &moofs {
        fragment_samples(*moof_start, moof, track_id, defaults, &mut samples, path)?;
    }
    for s in &samples {
        if s.offset.checked_add(u64::from(s.size)).is_none_or(|end| end > file_len) {
            return Err(demux_err(path, "a sample lies beyond the end of the file (truncated?)"));
        }
    }
    Ok(VideoTrack {
        track_id,
        width: u32::from(avc1.width),
        height: u32::from(avc1.height),
        timescale,
        sps: avcc.sequence_parameter_sets.iter().map(|n| n.bytes.clone()).collect(),
        pps: avcc.picture_parameter_sets.iter().map(|n| n.bytes.clone()).collect(),
        length_size: usize::from(avcc.length_size_minus_one & 3) + 1,
        samples,
    })
}

/// A track's own sample table (`stbl`), copied out of the `mp4` boxes.
struct SampleTable<'a> {
    count: usize,
    uniform_size: u32,
    sizes: &'a [u32],
    chunk_offsets: Vec<u64>,
    /// `stsc` entries: (first chunk, samples per chunk).
    chunks: Vec<(u32, u32)>,
    /// `stts` entries: (sample count, duration).
    durations: Vec<(u32, u32)>,
    /// `stss`: 1-based sync sample numbers; absent means every sample is a sync sample.
    sync: Option<&'a [u32]>,
}

impl SampleTable<'_> {
    /// Every sample's position, in decode order (none in a fragmented file's `moov`).
    fn samples(&self, path: &Path) -> Result<Vec<SampleRef>> {
        if self.count == 0 {
            return Ok(Vec::new());
        }
        if self.chunk_offsets.is_empty() {
            return Err(demux_err(path, "sample table has no chunk offsets"));
        }
        let mut durations = self.durations.iter().flat_map(|&(n, d)| std::iter::repeat_n(d, n as usize));
        let mut samples = Vec::with_capacity(self.count);
        for (k, &(first_chunk, per_chunk)) in self.chunks.iter().enumerate() {
            let first_chunk = first_chunk.max(1) as usize;
            let last_chunk =
                self.chunks.get(k + 1).map_or(self.chunk_offsets.len(), |n| (n.0 as usize).saturating_sub(1));
            for chunk in first_chunk..=last_chunk {
                let Some(&chunk_offset) = self.chunk_offsets.get(chunk - 1) else {
                    return Err(demux_err(path, "sample-to-chunk table points past the chunk offsets"));
                };
                let mut offset = chunk_offset;
                for _ in 0..per_chunk {
                    let i = samples.len();
                    if i == self.count {
                        break;
                    }
                    let size =
                        if self.uniform_size != 0 { Some(self.uniform_size) } else { self.sizes.get(i).copied() };
                    let size = size.ok_or_else(|| demux_err(path, "sample size table is short"))?;
                    let number = i as u32 + 1;
                    samples.push(SampleRef {
                        offset,
                        size,
                        duration: durations.next().unwrap_or(0),
                        is_sync: self.sync.is_none_or(|s| s.binary_search(&number).is_ok()),
                    });
                    offset += u64::from(size);
                }
            }
        }
        if samples.len() != self.count {
            return Err(demux_err(path, format!("sample table describes {} of {} samples", samples.len(), self.count)));
        }
        Ok(samples)
    }
}

/// Per-sample defaults from `trex` (overridden by `tfhd` and `trun`).
#[derive(Debug, Clone, Copy, Default)]
struct Defaults {
    size: u32,
    duration: u32,
    flags: u32,
}

/// Appends the samples of one `moof` for `track_id`.
fn fragment_samples(
    moof_start: u64,
    moof: &MoofBox,
    track_id: u32,
    defaults: Defaults,
    out: &mut Vec<SampleRef>,
    path: &Path,
) -> Result<()> {
    for traf in moof.trafs.iter().filter(|t| t.tfhd.track_id == track_id) {
        let tfhd = &traf.tfhd;
        let Some(trun) = traf.trun.as_ref() else { continue };
        // Without an explicit base offset this writer family (and default-base-is-moof) uses the moof start.
        let base = if tfhd.flags & TFHD_BASE_DATA_OFFSET != 0 {
            tfhd.base_data_offset.unwrap_or(moof_start)
        } else {
            moof_start
        };
        let start = i128::from(base) + i128::from(trun.data_offset.unwrap_or(0));
        let mut offset = u64::try_from(start).map_err(|_| demux_err(path, "negative sample data offset"))?;
        let default_size = tfhd.default_sample_size.unwrap_or(defaults.size);
        let default_duration = tfhd.default_sample_duration.unwrap_or(defaults.duration);
        let default_flags = tfhd.default_sample_flags.unwrap_or(defaults.flags);
        for i in 0..trun.sample_count as usize {
            let size = trun.sample_sizes.get(i).copied().unwrap_or(default_size);
            let flags = match (i, trun.first_sample_flags) {
                (0, Some(f)) => f,
                _ => trun.sample_flags.get(i).copied().unwrap_or(default_flags),
            };
            out.push(SampleRef {
                offset,
                size,
                duration: trun.sample_durations.get(i).copied().unwrap_or(default_duration),
                is_sync: flags & SAMPLE_IS_NON_SYNC == 0,
            });
            offset += u64::from(size);
        }
    }
    Ok(())
}

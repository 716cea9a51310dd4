//! Bytes of one fMP4 media segment (`moof` + `mdat`) for a single video track.
//!
//! muxide builds the init segment, but its `flush_segment` gives a lone sample a 1/30 s
//! duration and advances the next `tfdt` by that guess, which breaks the timeline at any
//! other frame rate when a chunk holds one frame. The segment layout is small, so it is
//! written here with exact per-sample durations and decode times.

/// Track id of the video track in muxide's init segment.
const TRACK_ID: u32 = 1;
/// `tfhd` flag: sample data offsets are relative to the start of this `moof`.
const DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;
/// `trun` flags: data offset, and per-sample duration, size and flags present.
const TRUN_FLAGS: u32 = 0x000001 | 0x000100 | 0x000200 | 0x000400;
/// Sample flags of an IDR picture: depends on nothing, sync sample.
const SYNC_SAMPLE: u32 = 0x0200_0000;
/// Sample flags of a P picture: depends on others, not a sync sample.
const NON_SYNC_SAMPLE: u32 = 0x0101_0000;

/// One sample's timing and size; its bytes go into the `mdat` in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SampleInfo {
    /// Duration in track timescale units.
    pub duration: u32,
    /// Size of the AVCC sample in bytes.
    pub size: u32,
    /// Whether it is an IDR picture.
    pub is_sync: bool,
}

/// Appends an ISO-BMFF box: 32-bit size, four-character type, payload.
fn push_box(out: &mut Vec<u8>, kind: &[u8; 4], payload: &[u8]) {
    out.extend_from_slice(&((payload.len() + 8) as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
}

/// A full-box payload header: version and 24-bit flags.
fn full_box_header(version: u8, flags: u32) -> Vec<u8> {
    let mut v = ((u32::from(version) << 24) | flags).to_be_bytes().to_vec();
    v.reserve(64);
    v
}

/// The `moof` box for `samples`, given the offset of the first sample byte from the moof start.
fn moof(sequence: u32, base_decode_time: u64, samples: &[SampleInfo], data_offset: u32) -> Vec<u8> {
    let mut mfhd = full_box_header(0, 0);
    mfhd.extend_from_slice(&sequence.to_be_bytes());

    let mut tfhd = full_box_header(0, DEFAULT_BASE_IS_MOOF);
    tfhd.extend_from_slice(&TRACK_ID.to_be_bytes());

    let mut tfdt = full_box_header(1, 0);
    tfdt.extend_from_slice(&base_decode_time.to_be_bytes());

    let mut trun = full_box_header(0, TRUN_FLAGS);
    trun.extend_from_slice(&(samples.len() as u32).to_be_bytes());
    trun.extend_from_slice(&data_offset.to_be_bytes());
    for s in samples {
        trun.extend_from_slice(&s.duration.to_be_bytes());
        trun.extend_from_slice(&s.size.to_be_bytes());
        trun.extend_from_slice(&(if s.is_sync { SYNC_SAMPLE } else { NON_SYNC_SAMPLE }).to_be_bytes());
    }

    let mut traf = Vec::new();
    push_box(&mut traf, b"tfhd", &tfhd);
    push_box(&mut traf, b"tfdt", &tfdt);
    push_box(&mut traf, b"trun", &trun);

    let mut payload = Vec::new();
    push_box(&mut payload, b"mfhd", &mfhd);
    push_box(&mut payload, b"traf", &traf);
    let mut out = Vec::new();
    push_box(&mut out, b"moof", &payload);
    out
}

/// A complete media segment: `moof` then `mdat` holding `data` (the samples back to back).
pub(crate) fn media_segment(sequence: u32, base_decode_time: u64, samples: &[SampleInfo], data: &[u8]) -> Vec<u8> {
    // The moof's size does not depend on the offset value, so measure it with a placeholder.
    let moof_len = moof(sequence, base_decode_time, samples, 0).len();
    let data_offset = (moof_len + 8) as u32;
    let mut out = moof(sequence, base_decode_time, samples, data_offset);
    out.reserve(data.len() + 8);
    push_box(&mut out, b"mdat", data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_point_into_mdat() {
        let samples = [
            SampleInfo { duration: 5625, size: 3, is_sync: true },
            SampleInfo { duration: 5625, size: 2, is_sync: false },
        ];
        let seg = media_segment(7, 11250, &samples, &[1, 2, 3, 4, 5]);
        let moof_len = u32::from_be_bytes([seg[0], seg[1], seg[2], seg[3]]) as usize;
        assert_eq!(&seg[4..8], b"moof");
        assert_eq!(&seg[moof_len + 4..moof_len + 8], b"mdat");
        assert_eq!(&seg[moof_len + 8..], &[1, 2, 3, 4, 5]);
        let trun = seg.windows(4).position(|w| w == b"trun").unwrap();
        let offset = u32::from_be_bytes(seg[trun + 12..trun + 16].try_into().unwrap()) as usize;
        assert_eq!(offset, moof_len + 8);
    }
}

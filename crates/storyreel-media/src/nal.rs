//! H.264 NAL unit plumbing: Annex-B (start codes, what the encoder emits) versus AVCC
//! (length prefixes, what MP4 samples hold), parameter sets and the RFC 6381 codec string.

/// NAL unit type of an IDR slice.
pub(crate) const NAL_IDR: u8 = 5;
/// NAL unit type of a sequence parameter set.
pub(crate) const NAL_SPS: u8 = 7;
/// NAL unit type of a picture parameter set.
pub(crate) const NAL_PPS: u8 = 8;

/// The NAL units of an Annex-B byte stream, without their start codes.
pub(crate) fn split_annexb(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&next| next - 3);
        // A 4-byte start code leaves its leading zero at the end of the previous unit;
        // NAL units never end in a zero byte (rbsp trailing bits), so trimming is safe.
        while end > s && data[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            nals.push(&data[s..end]);
        }
    }
    nals
}

/// The type field (low five bits of the header byte) of a NAL unit.
pub(crate) fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}

/// One encoded picture split for an MP4 sample: slice data in AVCC form, with the
/// parameter sets set aside (they belong in the `avcC` box).
#[derive(Debug, Default)]
pub(crate) struct AccessUnit {
    /// Length-prefixed (4 bytes, big endian) NAL units, parameter sets removed.
    pub avcc: Vec<u8>,
    /// The SPS, if this access unit carried one.
    pub sps: Option<Vec<u8>>,
    /// The PPS, if this access unit carried one.
    pub pps: Option<Vec<u8>>,
    /// Whether it contains an IDR slice (a sync sample).
    pub is_idr: bool,
}

impl AccessUnit {
    /// Splits an Annex-B access unit.
    pub fn from_annexb(data: &[u8]) -> Self {
        let mut au = AccessUnit::default();
        for nal in split_annexb(data) {
            match nal_type(nal) {
                NAL_SPS => au.sps = Some(nal.to_vec()),
                NAL_PPS => au.pps = Some(nal.to_vec()),
                t => {
                    au.is_idr |= t == NAL_IDR;
                    au.avcc.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                    au.avcc.extend_from_slice(nal);
                }
            }
        }
        au
    }
}

/// Appends the NAL units of a length-prefixed MP4 sample to `out` as Annex-B.
/// Returns false if a length runs past the end of the sample (a corrupt file).
pub(crate) fn avcc_to_annexb(sample: &[u8], length_size: usize, out: &mut Vec<u8>) -> bool {
    let mut i = 0;
    while i < sample.len() {
        if i + length_size > sample.len() {
            return false;
        }
        let len = sample[i..i + length_size].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        i += length_size;
        if len > sample.len() - i {
            return false;
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(&sample[i..i + len]);
        i += len;
    }
    true
}

/// The RFC 6381 codec string (`avc1.PPCCLL`) that `MediaSource.isTypeSupported` and
/// `addSourceBuffer` expect, read from the SPS's profile, constraint and level bytes.
pub(crate) fn codec_string(sps: &[u8]) -> Option<String> {
    if sps.len() < 4 || nal_type(sps) != NAL_SPS {
        return None;
    }
    Some(format!("avc1.{:02X}{:02X}{:02X}", sps[1], sps[2], sps[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_round_trip() {
        let stream = [0, 0, 0, 1, 0x67, 0x42, 0xC0, 0x1E, 0, 0, 1, 0x68, 0xCE, 0, 0, 0, 1, 0x65, 0x88, 0x80];
        let nals = split_annexb(&stream);
        assert_eq!(nals, vec![&[0x67, 0x42, 0xC0, 0x1E][..], &[0x68, 0xCE][..], &[0x65, 0x88, 0x80][..]]);
        let au = AccessUnit::from_annexb(&stream);
        assert!(au.is_idr);
        assert_eq!(au.sps.as_deref(), Some(&[0x67, 0x42, 0xC0, 0x1E][..]));
        assert_eq!(au.avcc, vec![0, 0, 0, 3, 0x65, 0x88, 0x80]);
        let mut back = Vec::new();
        assert!(avcc_to_annexb(&au.avcc, 4, &mut back));
        assert_eq!(back, vec![0, 0, 0, 1, 0x65, 0x88, 0x80]);
        assert!(!avcc_to_annexb(&[0, 0, 0, 9, 1], 4, &mut back));
        assert_eq!(codec_string(&[0x67, 0x42, 0xC0, 0x1E]).as_deref(), Some("avc1.42C01E"));
        assert_eq!(codec_string(&[0x68, 0x42]), None);
    }
}

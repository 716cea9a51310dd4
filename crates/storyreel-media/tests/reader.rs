//! The MP4 reader's errors: every one names the file and says what is wrong.

mod common;

use common::*;
use muxide::api::{AacProfile, AudioCodec, MuxerBuilder, VideoCodec};
use storyreel_media::*;

/// One ADTS frame (AAC-LC, 44.1 kHz, stereo) around a few payload bytes.
fn adts_frame() -> Vec<u8> {
    let payload = [0x21u8, 0x10, 0x04, 0x60, 0x8c, 0x1c];
    let len = 7 + payload.len();
    let header = [
        0xFF,
        0xF1,                                 // MPEG-4, no CRC
        (1 << 6) | (4 << 2),                  // AAC-LC, 44.1 kHz, channel bit 2 = 0
        (2 << 6) | ((len >> 11) & 0x3) as u8, // 2 channels, length high bits
        ((len >> 3) & 0xFF) as u8,
        (((len & 0x7) << 5) as u8) | 0x1F, // length low bits, buffer fullness high
        0xFC,                              // buffer fullness low, one raw block
    ];
    [&header[..], &payload[..]].concat()
}

#[test]
fn missing_and_non_mp4_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.mp4");
    let err = Mp4VideoReader::open(&missing).err().unwrap();
    assert!(matches!(err, MediaError::Io { .. }) && err.to_string().contains("nope.mp4"), "{err}");

    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "this is not a video file at all").unwrap();
    let err = Mp4VideoReader::open(&text).err().unwrap();
    assert!(matches!(err, MediaError::Demux { .. }), "{err:?}");
    assert!(err.to_string().contains("notes.mp4"), "{err}");

    let png = dir.path().join("frame.png");
    save_png(&png, &RgbFrame::filled(4, 4, [1, 2, 3]).unwrap()).unwrap();
    assert!(matches!(Mp4VideoReader::open(&png), Err(MediaError::Demux { .. })));
}

#[test]
fn audio_only_mp4_has_no_video_track() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audio.m4a");
    let file = std::fs::File::create(&path).unwrap();
    let mut muxer = MuxerBuilder::new(file).audio(AudioCodec::Aac(AacProfile::Lc), 44_100, 2).build().unwrap();
    for i in 0..4 {
        muxer.write_audio(f64::from(i) * 1024.0 / 44_100.0, &adts_frame()).unwrap();
    }
    muxer.finish().unwrap();
    let err = Mp4VideoReader::open(&path).err().unwrap();
    assert!(matches!(err, MediaError::NoVideoTrack { .. }), "{err:?}");
    assert!(err.to_string().contains("no video track"), "{err}");
}

#[test]
fn hevc_track_is_reported_as_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hevc.mp4");
    // Minimal VPS / SPS / PPS / IDR NAL units: enough for the muxer, never decoded.
    let vps = [0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03];
    let sps = [0x42, 0x01, 0x01, 0x01, 0x60, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00, 0x5d, 0xa0];
    let pps = [0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40];
    let idr = [0x26, 0x01, 0xaf, 0x06, 0xb8];
    let mut au = Vec::new();
    for nal in [&vps[..], &sps[..], &pps[..], &idr[..]] {
        au.extend_from_slice(&[0, 0, 0, 1]);
        au.extend_from_slice(nal);
    }
    let file = std::fs::File::create(&path).unwrap();
    let mut muxer = MuxerBuilder::new(file).video(VideoCodec::H265, 64, 48, 16.0).build().unwrap();
    muxer.write_video(0.0, &au, true).unwrap();
    muxer.finish().unwrap();
    let err = Mp4VideoReader::open(&path).err().unwrap();
    assert!(matches!(err, MediaError::UnsupportedCodec { .. }), "{err:?}");
    assert!(err.to_string().contains("only H.264"), "{err}");
}

#[test]
fn reader_iterates_frame_by_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("it.mp4");
    write_mp4(&path, &moving_clip(32, 32, 5), EncodeOptions::default()).unwrap();
    let reader = Mp4VideoReader::open(&path).unwrap();
    assert_eq!(reader.info().frame_count, 5);
    let frames: Vec<RgbFrame> = reader.collect::<Result<_>>().unwrap();
    assert_eq!(frames.len(), 5);
    assert!(frames.iter().all(|f| f.size() == (32, 32)));

    // A truncated file is reported, not decoded into garbage or a panic.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
    let err = Mp4VideoReader::open(&cut).err().unwrap();
    assert!(matches!(err, MediaError::Demux { .. }), "{err:?}");
}

#[test]
fn reads_ffmpeg_x264_files_with_b_frames_in_display_order() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let encode = |name: &str, extra: &[&str]| {
        let path = dir.path().join(name);
        let status = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=25", "-frames:v", "20"])
            .args(["-c:v", "libx264", "-profile:v", "high", "-bf", "2", "-pix_fmt", "yuv420p"])
            .args(extra)
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        path
    };
    let progressive = encode("x264.mp4", &[]);
    let fragmented = encode("x264_frag.mp4", &["-movflags", "frag_keyframe+empty_moov+default_base_moof"]);

    // ffmpeg's own decode of the same file, as RGB.
    let out = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(&progressive)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    let reference: Vec<RgbFrame> =
        out.stdout.chunks(96 * 64 * 3).map(|c| RgbFrame::new(96, 64, c.to_vec()).unwrap()).collect();
    assert_eq!(reference.len(), 20);

    for path in [&progressive, &fragmented] {
        let (info, frames) = read_mp4(path).unwrap();
        assert_eq!((info.width, info.height, info.frame_count, frames.len()), (96, 64, 20, 20));
        assert!((info.fps - 25.0).abs() < 1e-9);
        assert!(info.codec.starts_with("avc1.64"), "High profile: {}", info.codec);
        // Same pictures in the same order (only the YUV->RGB rounding differs), frame by frame.
        for (i, (r, f)) in reference.iter().zip(&frames).enumerate() {
            let quality = psnr(std::slice::from_ref(r), std::slice::from_ref(f));
            assert!(quality > 35.0, "{} frame {i}: PSNR vs ffmpeg {quality:.1} dB", path.display());
        }
    }
}

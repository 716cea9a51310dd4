//! Progressive MP4: round trip through OpenH264's decoder, fast-start layout, ffprobe, errors.

mod common;

use common::*;
use storyreel_media::*;

#[test]
fn moving_clip_round_trips_with_count_size_fps_and_quality() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let clip = moving_clip(64, 48, 17);

    let mut writer = Mp4Writer::create(&path, EncodeOptions::default()).unwrap();
    for frame in &clip {
        writer.push_frame(frame).unwrap();
        // Nothing is visible at the final path until finish.
        assert!(!path.exists());
    }
    let summary = writer.finish().unwrap();
    assert_eq!((summary.frames, summary.width, summary.height, summary.fps), (17, 64, 48, 16));
    assert!(summary.codec.starts_with("avc1.42"), "{}", summary.codec);
    assert_eq!(dir_entries(dir.path()), vec!["clip.mp4"], "the staging file is gone");

    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(summary.bytes, bytes.len() as u64);
    let boxes = top_level_boxes(&bytes);
    let moov = boxes.iter().position(|b| b == "moov").unwrap();
    let mdat = boxes.iter().position(|b| b == "mdat").unwrap();
    assert!(boxes[0] == "ftyp" && moov < mdat, "fast start needs moov before mdat: {boxes:?}");

    let (info, decoded) = read_mp4(&path).unwrap();
    assert_eq!((info.width, info.height, info.frame_count), (64, 48, 17));
    assert!((info.fps - 16.0).abs() < 1e-9, "fps {}", info.fps);
    assert!((info.duration_secs - 17.0 / 16.0).abs() < 1e-9);
    assert_eq!(info.codec, summary.codec);
    assert_eq!(decoded.len(), 17);
    let quality = psnr(&clip, &decoded);
    assert!(quality >= 30.0, "PSNR {quality:.2} dB");

    if have_ffmpeg() {
        let p = ffprobe(&path);
        assert_eq!(p.codec_name, "h264");
        assert_eq!((p.width, p.height, p.nb_read_frames), (64, 48, 17));
        assert_eq!(p.r_frame_rate, "16/1");
        ffmpeg_decodes_cleanly(&path);
    }
}

#[test]
fn fps_bitrate_and_constant_quality_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let clip = moving_clip(48, 32, 12);
    let fast = dir.path().join("fast.mp4");
    write_mp4(&fast, &clip, EncodeOptions::default().with_fps(24).with_rate(RateControl::Bitrate(400_000))).unwrap();
    let info = Mp4VideoReader::open(&fast).unwrap().info().clone();
    assert!((info.fps - 24.0).abs() < 1e-9, "fps {}", info.fps);

    let cq = dir.path().join("cq.mp4");
    write_mp4(&cq, &clip, EncodeOptions::default().with_rate(RateControl::ConstantQuality)).unwrap();
    let (_, decoded) = read_mp4(&cq).unwrap();
    assert!(psnr(&clip, &decoded) >= 30.0);

    if have_ffmpeg() {
        assert_eq!(ffprobe(&fast).r_frame_rate, "24/1");
        assert_eq!(ffprobe(&cq).nb_read_frames, 12);
    }
}

#[test]
fn frames_from_f32_decoder_output_encode() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (32u32, 16u32);
    let plane = (w * h) as usize;
    let frames: Vec<RgbFrame> = (0..4)
        .map(|t| {
            let values: Vec<f32> =
                (0..3 * plane).map(|i| ((i % plane) as f32 / plane as f32) * 2.0 - 1.0 + t as f32 * 0.01).collect();
            RgbFrame::from_f32_chw(&values, w, h).unwrap()
        })
        .collect();
    let path = dir.path().join("f32.mp4");
    assert_eq!(write_mp4(&path, &frames, EncodeOptions::default()).unwrap().frames, 4);
    assert_eq!(read_mp4(&path).unwrap().1.len(), 4);
}

#[test]
fn odd_size_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.mp4");
    let mut writer = Mp4Writer::create(&path, EncodeOptions::default()).unwrap();
    let err = writer.push_frame(&RgbFrame::filled(63, 48, [0, 0, 0]).unwrap()).unwrap_err();
    assert!(matches!(err, MediaError::OddFrameSize { width: 63, height: 48 }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("63x48") && msg.contains("even"), "{msg}");
    drop(writer);
    assert!(dir_entries(dir.path()).is_empty(), "no file or staging file left");
}

#[test]
fn zero_frames_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.mp4");
    let mut writer = Mp4Writer::create(&path, EncodeOptions::default()).unwrap();
    let err = writer.finish().unwrap_err();
    assert!(matches!(err, MediaError::NoFrames { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.mp4"), "{err}");
    assert!(dir_entries(dir.path()).is_empty(), "no file or staging file left");
    assert!(matches!(writer.finish(), Err(MediaError::AlreadyFinished)));
}

#[test]
fn frame_size_change_mid_stream_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Mp4Writer::create(dir.path().join("c.mp4"), EncodeOptions::default()).unwrap();
    writer.push_frames(&moving_clip(32, 32, 3)).unwrap();
    let err = writer.push_frame(&RgbFrame::filled(64, 32, [1, 2, 3]).unwrap()).unwrap_err();
    assert!(
        matches!(err, MediaError::FrameSizeChanged { index: 3, width: 32, height: 32, got_width: 64, got_height: 32 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("64x32"), "{err}");
    // The stream is still usable with frames of the right size.
    writer.push_frame(&moving_frame(32, 32, 3)).unwrap();
    assert_eq!(writer.finish().unwrap().frames, 4);
}

#[test]
fn bad_settings_are_rejected_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.mp4");
    for fps in [0, 121, 1000] {
        let err = Mp4Writer::create(&path, EncodeOptions::default().with_fps(fps)).err().unwrap();
        assert!(matches!(err, MediaError::OutOfRange { name: "fps", .. }), "{err:?}");
        assert!(err.to_string().contains(&fps.to_string()));
    }
    let err = Fmp4Writer::new(EncodeOptions::default().with_rate(RateControl::Bitrate(1))).err().unwrap();
    assert!(matches!(err, MediaError::OutOfRange { .. }), "{err:?}");
    assert!(dir_entries(dir.path()).is_empty());
    let err = Mp4Writer::create(dir.path().join("missing/dir/x.mp4"), EncodeOptions::default()).err().unwrap();
    assert!(matches!(err, MediaError::Io { .. }), "{err:?}");
}

#[test]
fn broken_frame_buffer_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = Mp4Writer::create(dir.path().join("b.mp4"), EncodeOptions::default()).unwrap();
    let bad = RgbFrame { width: 16, height: 16, data: vec![0; 10] };
    assert!(matches!(writer.push_frame(&bad), Err(MediaError::FrameDataSize { .. })));
}

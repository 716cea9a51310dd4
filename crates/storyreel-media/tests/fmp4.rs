//! Fragmented MP4: init + segments concatenate into a playable file with a continuous
//! timeline; every segment starts with an IDR, so init + any one segment decodes alone.

mod common;

use common::*;
use storyreel_media::*;

/// Pushes `clip` in chunks of the given sizes, flushing after each; returns init and segments.
fn stream(clip: &[RgbFrame], chunks: &[usize], options: EncodeOptions) -> (Vec<u8>, Vec<Vec<u8>>, String) {
    let mut writer = Fmp4Writer::new(options).unwrap();
    assert!(writer.init_segment().is_none(), "no init before the first frame fixes the size");
    let mut segments = Vec::new();
    let mut at = 0;
    for &n in chunks {
        writer.push_frames(&clip[at..at + n]).unwrap();
        at += n;
        assert_eq!(writer.pending_frames(), n);
        segments.push(writer.flush_segment().unwrap());
        assert!(writer.flush_segment().is_none(), "nothing pending after a flush");
    }
    assert_eq!(at, clip.len());
    let codec = writer.codec_string().unwrap().to_string();
    assert_eq!(writer.mime_type().unwrap(), format!("video/mp4; codecs=\"{codec}\""));
    (writer.init_segment().unwrap().to_vec(), segments, codec)
}

#[test]
fn init_plus_segments_is_a_playable_file() {
    let dir = tempfile::tempdir().unwrap();
    let clip = moving_clip(64, 48, 17);
    // A one-frame chunk first (the first latent of a Wan clip decodes to one frame).
    let (init, segments, codec) = stream(&clip, &[1, 4, 4, 8], EncodeOptions::default());

    assert_eq!(top_level_boxes(&init), vec!["ftyp", "moov"]);
    assert!(codec.starts_with("avc1.42") && codec.len() == 11, "{codec}");
    assert_eq!(codec_string_from_init(&init).as_deref(), Some(codec.as_str()));
    for s in &segments {
        assert_eq!(top_level_boxes(s), vec!["moof", "mdat"]);
    }

    let path = dir.path().join("live.mp4");
    let mut file = init.clone();
    segments.iter().for_each(|s| file.extend_from_slice(s));
    std::fs::write(&path, &file).unwrap();

    let (info, decoded) = read_mp4(&path).unwrap();
    assert_eq!((info.width, info.height, info.frame_count), (64, 48, 17));
    assert!((info.fps - 16.0).abs() < 1e-9, "fps {}", info.fps);
    assert_eq!(decoded.len(), 17);
    let quality = psnr(&clip, &decoded);
    assert!(quality >= 30.0, "PSNR {quality:.2} dB");

    if have_ffmpeg() {
        let p = ffprobe(&path);
        assert_eq!(p.codec_name, "h264");
        assert_eq!((p.width, p.height, p.nb_read_frames), (64, 48, 17));
        assert_eq!(p.r_frame_rate, "16/1");
        // Continuous timeline: frame i at i/16 s in a 90 kHz time base, no gaps at segment joins.
        let pts = ffprobe_packet_pts(&path);
        assert_eq!(pts, (0..17).map(|i| i * 5625).collect::<Vec<i64>>());
        ffmpeg_decodes_cleanly(&path);
    }
}

#[test]
fn a_late_joiner_can_start_at_any_segment() {
    let dir = tempfile::tempdir().unwrap();
    let clip = moving_clip(48, 32, 12);
    let (init, segments, _) = stream(&clip, &[4, 4, 4], EncodeOptions::default().with_keyframe_interval(0));
    let path = dir.path().join("join.mp4");
    let mut file = init;
    file.extend_from_slice(&segments[2]);
    std::fs::write(&path, &file).unwrap();
    let (info, decoded) = read_mp4(&path).unwrap();
    assert_eq!((info.frame_count, decoded.len()), (4, 4));
    assert!(psnr(&clip[8..], &decoded) >= 30.0);
}

#[test]
fn odd_frame_rates_keep_an_exact_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let clip = moving_clip(32, 32, 7);
    let (init, segments, _) = stream(&clip, &[1, 3, 3], EncodeOptions::default().with_fps(7));
    let path = dir.path().join("seven.mp4");
    let mut file = init;
    segments.iter().for_each(|s| file.extend_from_slice(s));
    std::fs::write(&path, &file).unwrap();
    let info = Mp4VideoReader::open(&path).unwrap().info().clone();
    assert!((info.duration_secs - 1.0).abs() < 1e-9, "7 frames at 7 fps last 1 s: {}", info.duration_secs);
    if have_ffmpeg() {
        assert_eq!(ffprobe(&path).nb_read_frames, 7);
        ffmpeg_decodes_cleanly(&path);
    }
}

#[test]
fn fmp4_errors_match_the_file_writer() {
    let mut writer = Fmp4Writer::new(EncodeOptions::default()).unwrap();
    assert!(matches!(
        writer.push_frame(&RgbFrame::filled(31, 20, [0, 0, 0]).unwrap()),
        Err(MediaError::OddFrameSize { width: 31, height: 20 })
    ));
    writer.push_frame(&RgbFrame::filled(32, 20, [0, 0, 0]).unwrap()).unwrap();
    assert!(matches!(
        writer.push_frame(&RgbFrame::filled(32, 22, [0, 0, 0]).unwrap()),
        Err(MediaError::FrameSizeChanged { index: 1, .. })
    ));
    assert!(Fmp4Writer::new(EncodeOptions::default().with_fps(0)).is_err());
}

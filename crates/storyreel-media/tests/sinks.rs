//! The `FrameSink` implementations, alone and together, the way a session drives them.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::*;
use storyreel_media::*;

/// Drives `sink` like a session: shots of `lens` frames, pushed and flushed in chunks of `chunk`.
fn run_story(sink: &mut dyn FrameSink, lens: &[usize], chunk: usize) -> Vec<RgbFrame> {
    let mut all = Vec::new();
    for (shot, &len) in lens.iter().enumerate() {
        sink.begin_shot(shot, &format!("shot number {}", shot + 1)).unwrap();
        let frames: Vec<RgbFrame> = (0..len).map(|t| moving_frame(48, 32, all.len() + t)).collect();
        for c in frames.chunks(chunk) {
            sink.push_frames(c).unwrap();
            sink.flush().unwrap();
        }
        sink.end_shot().unwrap();
        all.extend(frames);
    }
    all
}

#[test]
fn sinks_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Mp4FileSink>();
    assert_send::<Fmp4StreamSink>();
    assert_send::<PngDirSink>();
    assert_send::<ContactSheetSink>();
    assert_send::<GifSink>();
    assert_send::<CallbackSink>();
    assert_send::<TeeSink>();
}

#[test]
fn one_story_into_every_sink() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tx, rx) = mpsc::channel();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&batches);
    let mut tee = TeeSink::new(vec![
        Box::new(Mp4FileSink::create(d.join("story.mp4"), EncodeOptions::default()).unwrap()),
        Box::new(Fmp4StreamSink::with_sender(EncodeOptions::default(), tx).unwrap()),
        Box::new(PngDirSink::create(d.join("frames")).unwrap()),
        Box::new(ContactSheetSink::create(d.join("sheet.png"), ContactSheetOptions::default()).unwrap()),
        Box::new(GifSink::create(d.join("story.gif"), GifOptions::default()).unwrap()),
        Box::new(CallbackSink::new(move |shot, frames| {
            seen.lock().unwrap().push((shot, frames.len()));
            Ok(())
        })),
    ]);
    assert_eq!(tee.len(), 6);
    let frames = run_story(&mut tee, &[9, 5], 4);
    let report = tee.finish().unwrap();
    assert_eq!((report.frames, report.shots), (14, 2));
    assert_eq!(report.outputs.len(), 4, "{:?}", report.outputs);

    let (info, decoded) = read_mp4(d.join("story.mp4")).unwrap();
    assert_eq!((info.frame_count, decoded.len()), (14, 14));
    assert!(psnr(&frames, &decoded) >= 30.0);
    assert_eq!(dir_entries(&d.join("frames")).len(), 14);
    let sheet = load_image(d.join("sheet.png")).unwrap();
    assert!(sheet.height > 2 * 32);
    assert_eq!(*batches.lock().unwrap(), vec![(0, 4), (0, 4), (0, 1), (1, 4), (1, 1)]);

    // Stream: init first, then one media segment per non-empty flush; shots never share one.
    let segments: Vec<Vec<u8>> = rx.try_iter().collect();
    assert_eq!(top_level_boxes(&segments[0]), vec!["ftyp", "moov"]);
    assert_eq!(segments.len(), 1 + 5);
    let path = d.join("live.mp4");
    std::fs::write(&path, segments.concat()).unwrap();
    let (info, decoded) = read_mp4(&path).unwrap();
    assert_eq!((info.frame_count, decoded.len()), (14, 14));
    if have_ffmpeg() {
        assert_eq!(ffprobe(&path).nb_read_frames, 14);
        assert_eq!(ffprobe(&d.join("story.mp4")).nb_read_frames, 14);
        ffmpeg_decodes_cleanly(&path);
    }
}

#[test]
fn stream_callback_sees_init_then_media_with_positions() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink_got = Arc::clone(&got);
    let mut sink = Fmp4StreamSink::with_callback(EncodeOptions::default(), move |s: Segment| {
        sink_got.lock().unwrap().push((s.kind, s.shot, s.first_frame, s.frames, s.codec));
        Ok(())
    })
    .unwrap();
    // Frames pushed without flushes are emitted at the shot end.
    run_story(&mut sink, &[3], 10);
    sink.begin_shot(1, "second").unwrap();
    sink.push_frames(&[moving_frame(48, 32, 0), moving_frame(48, 32, 1)]).unwrap();
    sink.finish().unwrap();
    let got = got.lock().unwrap();
    let kinds: Vec<_> = got.iter().map(|g| (g.0, g.1, g.2, g.3)).collect();
    assert_eq!(
        kinds,
        vec![(SegmentKind::Init, None, 0, 0), (SegmentKind::Media, Some(0), 0, 3), (SegmentKind::Media, Some(1), 3, 2),]
    );
    assert!(got.iter().all(|g| g.4.starts_with("avc1.")));
}

#[test]
fn sink_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    // No frames: an error, and no file.
    let mut mp4 = Mp4FileSink::create(dir.path().join("none.mp4"), EncodeOptions::default()).unwrap();
    mp4.begin_shot(0, "empty").unwrap();
    mp4.end_shot().unwrap();
    assert!(matches!(mp4.finish(), Err(MediaError::NoFrames { .. })));
    assert!(matches!(mp4.finish(), Err(MediaError::AlreadyFinished)));
    assert!(dir_entries(dir.path()).is_empty());

    // A dropped receiver stops the stream.
    let (tx, rx) = mpsc::channel();
    drop(rx);
    let mut stream = Fmp4StreamSink::with_sender(EncodeOptions::default(), tx).unwrap();
    stream.push_frames(&[moving_frame(16, 16, 0)]).unwrap();
    let err = stream.flush().unwrap_err();
    assert!(matches!(err, MediaError::Consumer(_)), "{err:?}");

    // A failing callback surfaces its message.
    let mut cb = CallbackSink::new(|_, _| Err("preview window closed".into()));
    let err = cb.push_frames(&[moving_frame(16, 16, 0)]).unwrap_err();
    assert!(err.to_string().contains("preview window closed"));

    // Tee: every sink is finished even if one fails; the first error is returned.
    let mut tee = TeeSink::new(vec![
        Box::new(Mp4FileSink::create(dir.path().join("a.mp4"), EncodeOptions::default()).unwrap()),
        Box::new(GifSink::create(dir.path().join("a.gif"), GifOptions::default()).unwrap()),
    ]);
    tee.push_frames(&[RgbFrame::filled(15, 16, [0, 0, 0]).unwrap()]).unwrap_err();
    assert!(matches!(tee.finish(), Err(MediaError::NoFrames { .. })));
    assert!(dir_entries(dir.path()).is_empty());
}

//! PNG stills and directories, GIF previews, contact sheets.

mod common;

use common::*;
use storyreel_media::*;

const GREEN: [u8; 3] = [0, 200, 0];
const BLUE: [u8; 3] = [0, 0, 200];

/// Rows (y) of `img` that contain at least one pixel of `color`.
fn rows_with(img: &RgbFrame, color: [u8; 3]) -> Vec<u32> {
    (0..img.height).filter(|&y| (0..img.width).any(|x| img.pixel(x, y) == Some(color))).collect()
}

/// Number of separate horizontal runs of `color` on row `y` (one per thumbnail).
fn runs_on_row(img: &RgbFrame, y: u32, color: [u8; 3]) -> usize {
    let mut runs = 0;
    let mut inside = false;
    for x in 0..img.width {
        let hit = img.pixel(x, y) == Some(color);
        if hit && !inside {
            runs += 1;
        }
        inside = hit;
    }
    runs
}

/// Whether any pixel in rows `y0..y1` is neither background nor a thumbnail colour: caption text.
fn has_text(img: &RgbFrame, y0: u32, y1: u32, text: [u8; 3]) -> bool {
    (y0..y1).any(|y| (0..img.width).any(|x| img.pixel(x, y) == Some(text)))
}

#[test]
fn contact_sheet_has_a_row_and_a_caption_per_shot() {
    let dir = tempfile::tempdir().unwrap();
    let options = ContactSheetOptions { title: Some("The lighthouse keeper".into()), ..Default::default() };
    let text = options.text_color;
    let mut sheet = ContactSheet::new(options).unwrap();
    let green: Vec<RgbFrame> = (0..9).map(|_| RgbFrame::filled(64, 48, GREEN).unwrap()).collect();
    let blue: Vec<RgbFrame> = (0..4).map(|_| RgbFrame::filled(64, 48, BLUE).unwrap()).collect();
    sheet.add_shot("A keeper climbs the stairs at dusk, lamp in hand.", &green).unwrap();
    sheet.add_shot("Le phare s'allume — non-ASCII becomes '?'", &blue).unwrap();
    let path = dir.path().join("sheet.png");
    let img = sheet.save(&path).unwrap();
    assert_eq!(load_image(&path).unwrap(), img, "the PNG holds exactly the rendered sheet");

    // Tiny frames still leave room for 40 characters of caption per line.
    assert!(img.width >= 40 * 16, "width {}", img.width);
    let g = rows_with(&img, GREEN);
    let b = rows_with(&img, BLUE);
    assert_eq!(g.len(), 48, "one row of full-size green thumbnails");
    assert_eq!(b.len(), 48);
    assert_eq!(runs_on_row(&img, g[0], GREEN), 6);
    assert_eq!(runs_on_row(&img, b[0], BLUE), 6, "a 4-frame shot still fills six cells");
    let (g_end, b_start, b_end) = (g[g.len() - 1] + 1, b[0], b[b.len() - 1] + 1);
    assert!(has_text(&img, 0, g[0], text), "title above the first row");
    assert!(has_text(&img, g_end, b_start, text), "caption under shot 1");
    assert!(has_text(&img, b_end, img.height, text), "caption under shot 2");
}

#[test]
fn contact_sheet_scales_large_frames_to_thumbnails() {
    let mut sheet = ContactSheet::new(ContactSheetOptions { thumb_width: Some(104), ..Default::default() }).unwrap();
    let frames: Vec<RgbFrame> = (0..81).map(|_| RgbFrame::filled(832, 480, GREEN).unwrap()).collect();
    sheet.add_shot("wide", &frames).unwrap();
    let img = sheet.render().unwrap();
    let g = rows_with(&img, GREEN);
    assert_eq!(g.len(), 60, "832x480 scaled to 104x60");
    assert!(img.width < 6 * 832);
    assert!(ContactSheet::new(ContactSheetOptions { frames_per_row: 0, ..Default::default() }).is_err());
}

#[test]
fn png_directory_numbers_frames_and_is_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let clip = moving_clip(20, 10, 3);
    let mut writer = PngSequenceWriter::create(dir.path().join("frames")).unwrap();
    for f in &clip {
        writer.push_frame(f).unwrap();
    }
    let out = dir.path().join("frames");
    assert_eq!(dir_entries(&out), vec!["frame_00000.png", "frame_00001.png", "frame_00002.png"]);
    for (i, f) in clip.iter().enumerate() {
        assert_eq!(&load_image(out.join(format!("frame_{i:05}.png"))).unwrap(), f);
    }
    save_png(dir.path().join("one.png"), &clip[0]).unwrap();
    assert_eq!(load_image(dir.path().join("one.png")).unwrap(), clip[0]);
}

#[test]
fn gif_loops_with_the_right_frames_size_and_timing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preview.gif");
    let clip = moving_clip(64, 48, 10);
    let mut writer = GifWriter::create(&path, GifOptions { max_width: Some(32), ..Default::default() }).unwrap();
    for f in &clip {
        writer.push_frame(f).unwrap();
    }
    assert!(!path.exists(), "staged until finish");
    writer.finish().unwrap();
    assert_eq!(dir_entries(dir.path()), vec!["preview.gif"]);

    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::RGBA);
    let mut decoder = options.read_info(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!((decoder.width(), decoder.height()), (32, 24));
    assert_eq!(decoder.repeat(), gif::Repeat::Infinite);
    let mut delays = Vec::new();
    while let Some(frame) = decoder.read_next_frame().unwrap() {
        delays.push(frame.delay);
    }
    assert_eq!(delays.len(), 10);
    // 16 fps in hundredths of a second: 6 and 7 alternate, 10 frames last 0.62-0.63 s.
    assert!(delays.iter().all(|&d| d == 6 || d == 7), "{delays:?}");
    assert_eq!(delays.iter().map(|&d| u32::from(d)).sum::<u32>(), 63);
}

#[test]
fn gif_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.gif");
    assert!(GifWriter::create(&path, GifOptions { fps: 0, ..Default::default() }).is_err());
    let mut writer = GifWriter::create(&path, GifOptions::default()).unwrap();
    assert!(matches!(writer.finish(), Err(MediaError::NoFrames { .. })));
    assert!(dir_entries(dir.path()).is_empty());
    let mut writer = GifWriter::create(&path, GifOptions::default()).unwrap();
    writer.push_frame(&RgbFrame::filled(10, 10, GREEN).unwrap()).unwrap();
    assert!(matches!(
        writer.push_frame(&RgbFrame::filled(12, 10, GREEN).unwrap()),
        Err(MediaError::FrameSizeChanged { .. })
    ));
}

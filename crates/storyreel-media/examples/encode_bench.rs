//! H.264 encode throughput of the MP4 and fragmented-MP4 writers.
//!
//! `cargo run --release -p storyreel-media --example encode_bench [-- REPEATS]`
//!
//! Frames are generated before timing starts; the timed part is RGB->YUV conversion,
//! OpenH264 encoding and muxing (for MP4 also writing the file). OpenH264 uses its assembly
//! paths only if `nasm` was on PATH when `openh264-sys2` was built (or not at all with
//! `OPENH264_NO_ASM=1`).

use std::time::Instant;

use storyreel_media::{EncodeOptions, Fmp4Writer, Mp4Writer, RgbFrame};

/// A moving gradient with a square, like the tests' clip but at any size.
fn clip(width: u32, height: u32, frames: usize) -> Vec<RgbFrame> {
    (0..frames)
        .map(|t| {
            let side = width.min(height) / 4;
            let (sx, sy) = ((t as u32 * 5) % (width - side), (t as u32 * 3) % (height - side));
            RgbFrame::from_fn(width, height, |x, y| {
                if x >= sx && x < sx + side && y >= sy && y < sy + side {
                    [220, 50, 40]
                } else {
                    let b = 128.0 + 60.0 * ((x as f32) * 0.03 + t as f32 * 0.2).sin();
                    [(x * 255 / width) as u8, (y * 255 / height) as u8, b as u8]
                }
            })
            .expect("valid size")
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(3);
    let dir = tempfile::tempdir()?;
    for &(width, height, frames) in &[(832u32, 480u32, 81usize), (64, 64, 81)] {
        let input = clip(width, height, frames);
        let mut mp4_runs = Vec::new();
        let mut fmp4_runs = Vec::new();
        let mut bytes = 0;
        for _ in 0..repeats {
            let path = dir.path().join("bench.mp4");
            let start = Instant::now();
            let mut writer = Mp4Writer::create(&path, EncodeOptions::default())?;
            writer.push_frames(&input)?;
            bytes = writer.finish()?.bytes;
            mp4_runs.push(start.elapsed().as_secs_f64());

            let start = Instant::now();
            let mut writer = Fmp4Writer::new(EncodeOptions::default())?;
            for chunk in input.chunks(12) {
                writer.push_frames(chunk)?;
                writer.flush_segment();
            }
            fmp4_runs.push(start.elapsed().as_secs_f64());
        }
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (mp4, fmp4) = (best(&mp4_runs), best(&fmp4_runs));
        println!(
            "{width}x{height} x {frames} frames: MP4 {:.1} fps ({:.2} ms/frame, {:.0} KiB, {:.0} kbit/s at 16 fps); \
             fMP4 (12-frame segments) {:.1} fps  [best of {repeats}]",
            frames as f64 / mp4,
            mp4 * 1000.0 / frames as f64,
            bytes as f64 / 1024.0,
            bytes as f64 * 8.0 / (frames as f64 / 16.0) / 1000.0,
            frames as f64 / fmp4,
        );
    }
    Ok(())
}

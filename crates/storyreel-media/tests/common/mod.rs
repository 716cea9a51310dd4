//! Shared helpers for the integration tests: synthetic clips, PSNR, ffprobe/ffmpeg checks.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use storyreel_media::RgbFrame;

/// A moving test clip: RGB gradients plus a red square moving diagonally, and a slow
/// horizontal sine in blue so consecutive frames differ everywhere.
pub fn moving_clip(width: u32, height: u32, frames: usize) -> Vec<RgbFrame> {
    (0..frames).map(|t| moving_frame(width, height, t)).collect()
}

/// Frame `t` of [`moving_clip`].
pub fn moving_frame(width: u32, height: u32, t: usize) -> RgbFrame {
    let side = (width.min(height) / 4).max(2);
    let sx = (t as u32 * 2) % (width - side);
    let sy = (t as u32) % (height - side);
    RgbFrame::from_fn(width, height, |x, y| {
        if x >= sx && x < sx + side && y >= sy && y < sy + side {
            [220, 50, 40]
        } else {
            let blue = 128.0 + 60.0 * ((x as f32) * 0.08 + t as f32 * 0.3).sin();
            [(x * 255 / width) as u8, (y * 255 / height) as u8, blue as u8]
        }
    })
    .expect("valid size")
}

/// PSNR in dB over all channels of two equally long clips.
pub fn psnr(a: &[RgbFrame], b: &[RgbFrame]) -> f64 {
    assert_eq!(a.len(), b.len(), "clip lengths differ");
    let (mut se, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.size(), y.size());
        for (p, q) in x.data.iter().zip(&y.data) {
            let d = f64::from(*p) - f64::from(*q);
            se += d * d;
            n += 1.0;
        }
    }
    if se == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / (se / n)).log10()
}

/// Whether ffprobe and ffmpeg can be run. Without them the caller skips its external checks,
/// unless STORYREEL_REQUIRE_FFPROBE=1 (CI), where their absence is a failure.
pub fn have_ffmpeg() -> bool {
    let ok = |tool: &str| Command::new(tool).arg("-version").output().is_ok_and(|o| o.status.success());
    if ok("ffprobe") && ok("ffmpeg") {
        return true;
    }
    if std::env::var("STORYREEL_REQUIRE_FFPROBE").is_ok_and(|v| v == "1") {
        panic!("ffprobe/ffmpeg not found on PATH but STORYREEL_REQUIRE_FFPROBE=1");
    }
    eprintln!("note: ffprobe/ffmpeg not on PATH; skipping the external decoder checks");
    false
}

/// What ffprobe reports about the first video stream.
#[derive(Debug, Default)]
pub struct Probe {
    pub codec_name: String,
    pub width: u32,
    pub height: u32,
    pub r_frame_rate: String,
    pub avg_frame_rate: String,
    pub nb_read_frames: u64,
}

/// Runs `ffprobe -v error -count_frames` on `path`; panics on any stderr output.
pub fn ffprobe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries"])
        .arg("stream=codec_name,width,height,r_frame_rate,avg_frame_rate,nb_read_frames")
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "ffprobe {}: {stderr}", path.display());
    let mut p = Probe::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        match k {
            "codec_name" => p.codec_name = v.to_string(),
            "width" => p.width = v.parse().unwrap_or(0),
            "height" => p.height = v.parse().unwrap_or(0),
            "r_frame_rate" => p.r_frame_rate = v.to_string(),
            "avg_frame_rate" => p.avg_frame_rate = v.to_string(),
            "nb_read_frames" => p.nb_read_frames = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    p
}

/// Packet presentation timestamps (in stream time base units) as ffprobe sees them.
pub fn ffprobe_packet_pts(path: &Path) -> Vec<i64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.stderr.is_empty(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().trim_end_matches(',').parse().ok()).collect()
}

/// Decodes the whole file with `ffmpeg -v error ... -f null -`; panics if it prints anything.
pub fn ffmpeg_decodes_cleanly(path: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && all.trim().is_empty(), "ffmpeg {}: {all}", path.display());
}

/// The four-character types of the top-level boxes of an MP4 file, in order.
pub fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut i = 0usize;
    while i + 8 <= bytes.len() {
        let size = u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize;
        kinds.push(String::from_utf8_lossy(&bytes[i + 4..i + 8]).into_owned());
        if size < 8 {
            break;
        }
        i += size;
    }
    kinds
}

/// Entries of a directory (names), sorted.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

//! The finished story as files: the MP4 of every done shot and the captioned contact sheet.

use std::path::Path;
use storyreel_media::{ContactSheet, ContactSheetOptions, EncodeOptions};

use crate::error::ServerError;
use crate::hub::FinishedShot;

/// The MP4 (H.264, fast-start) of `shots` in order at `fps`, built in `scratch` (a folder the
/// caller owns).
pub fn story_mp4(shots: &[FinishedShot], fps: u32, scratch: &Path) -> Result<Vec<u8>, ServerError> {
    let path = scratch.join(format!("video-{}.mp4", unique()));
    let mut writer = storyreel_media::Mp4Writer::create(&path, EncodeOptions::default().with_fps(fps))?;
    for (_, frames) in shots {
        // Each shot starts on a keyframe, so a player can seek to any cut.
        writer.force_keyframe();
        writer.push_frames(frames)?;
    }
    writer.finish()?;
    let bytes = std::fs::read(&path).map_err(|e| ServerError::journal(&path, e));
    let _ = std::fs::remove_file(&path);
    bytes
}

/// A PNG contact sheet: one captioned row of evenly spaced frames per shot.
pub fn story_contact_sheet(shots: &[FinishedShot], scratch: &Path) -> Result<Vec<u8>, ServerError> {
    let mut sheet = ContactSheet::new(ContactSheetOptions::default())?;
    for (caption, frames) in shots {
        sheet.add_shot(caption, frames)?;
    }
    let path = scratch.join(format!("sheet-{}.png", unique()));
    sheet.save(&path)?;
    let bytes = std::fs::read(&path).map_err(|e| ServerError::journal(&path, e));
    let _ = std::fs::remove_file(&path);
    bytes
}

/// A name part no other download running at the same time uses.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

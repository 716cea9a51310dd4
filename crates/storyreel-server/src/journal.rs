//! The journal: every session's settings and shots in `DIR/<id>/session.json`, and each
//! finished shot's 8-bit frames in `DIR/<id>/shot-<index>.safetensors`. Every file is written
//! to a temporary name and renamed into place, and a shot's frames are on disk before the
//! session file calls it done, so a crash at any moment leaves a journal that loads with every
//! finished shot intact.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use storyreel_media::{write_atomic, RgbFrame};

use crate::error::ServerError;
use crate::views::ShotStatus;

/// Version of the session file.
pub const JOURNAL_VERSION: u32 = 1;
/// Name of a session's settings-and-shots file.
pub const SESSION_FILE: &str = "session.json";

/// A session as the journal keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalSession {
    /// Version of this layout.
    pub version: u32,
    /// The session id.
    pub id: String,
    /// The caption every shot shares.
    pub global_caption: String,
    /// The noise seed.
    pub seed: u64,
    /// Default frames per shot.
    pub frames: usize,
    /// The context policy.
    pub context: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Every shot appended, in order.
    pub shots: Vec<JournalShot>,
}

/// A shot as the journal keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalShot {
    /// The caption.
    pub caption: String,
    /// Frames (4k+1).
    pub frames: usize,
    /// Where it was.
    pub status: ShotStatus,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Its context picks, [shot index, frame].
    #[serde(default)]
    pub context: Vec<[usize; 2]>,
    /// Generation time.
    #[serde(default)]
    pub seconds: Option<f64>,
    /// Time to its first frame.
    #[serde(default)]
    pub first_frame_seconds: Option<f64>,
}

/// A session id that is safe as a folder name: `s-` and lowercase hex only.
pub fn valid_id(id: &str) -> bool {
    id.len() <= 40 && id.starts_with("s-") && id.len() > 2 && id[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// The folder of session `id`.
pub fn session_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// The frames file of shot `index`.
pub fn shot_file(root: &Path, id: &str, index: usize) -> PathBuf {
    session_dir(root, id).join(format!("shot-{index:03}.safetensors"))
}

/// Writes the session file.
pub fn write_session(root: &Path, session: &JournalSession) -> Result<(), ServerError> {
    let dir = session_dir(root, &session.id);
    std::fs::create_dir_all(&dir).map_err(|e| ServerError::journal(&dir, e))?;
    let path = dir.join(SESSION_FILE);
    let json = serde_json::to_vec_pretty(session).map_err(|e| ServerError::journal(&path, e))?;
    write_atomic(&path, &json).map_err(|e| ServerError::journal(&path, e))
}

/// Writes a finished shot's frames (all the same size) as one `[F, H, W, 3]` u8 tensor.
pub fn write_shot_frames(root: &Path, id: &str, index: usize, frames: &[RgbFrame]) -> Result<(), ServerError> {
    let path = shot_file(root, id, index);
    let first = frames.first().ok_or_else(|| ServerError::journal(&path, "a shot has no frames"))?;
    let mut data = Vec::with_capacity(frames.len() * first.data.len());
    for f in frames {
        data.extend_from_slice(&f.data);
    }
    let shape = vec![frames.len(), first.height as usize, first.width as usize, 3];
    let view = TensorView::new(Dtype::U8, shape, &data).map_err(|e| ServerError::journal(&path, e))?;
    let bytes = safetensors::serialize([("frames", view)], None).map_err(|e| ServerError::journal(&path, e))?;
    write_atomic(&path, &bytes).map_err(|e| ServerError::journal(&path, e))
}

/// Reads a shot's frames back.
pub fn read_shot_frames(root: &Path, id: &str, index: usize) -> Result<Vec<RgbFrame>, ServerError> {
    let path = shot_file(root, id, index);
    let bytes = std::fs::read(&path).map_err(|e| ServerError::journal(&path, e))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| ServerError::journal(&path, e))?;
    let t = tensors.tensor("frames").map_err(|e| ServerError::journal(&path, e))?;
    let shape = t.shape();
    if t.dtype() != Dtype::U8 || shape.len() != 4 || shape[3] != 3 || shape[0] == 0 {
        return Err(ServerError::journal(
            &path,
            format!("frames are {:?} {:?}; expected u8 [F, H, W, 3]", t.dtype(), shape),
        ));
    }
    let (h, w) = (shape[1], shape[2]);
    let plane = h * w * 3;
    t.data()
        .chunks_exact(plane)
        .map(|c| RgbFrame::new(w as u32, h as u32, c.to_vec()).map_err(|e| ServerError::journal(&path, e)))
        .collect()
}

/// A session read back from the journal, with the frames of its finished shots.
pub struct LoadedSession {
    /// The session file, with shots that were running or whose frames are unreadable queued again.
    pub session: JournalSession,
    /// Frames of each shot (Some for done shots).
    pub frames: Vec<Option<Arc<Vec<RgbFrame>>>>,
    /// What had to be repaired, for the log.
    pub repairs: Vec<String>,
}

/// Reads session `id` from the journal.
pub fn read_session(root: &Path, id: &str) -> Result<LoadedSession, ServerError> {
    let path = session_dir(root, id).join(SESSION_FILE);
    let text = std::fs::read(&path).map_err(|e| ServerError::journal(&path, e))?;
    let mut session: JournalSession = serde_json::from_slice(&text).map_err(|e| ServerError::journal(&path, e))?;
    if session.version != JOURNAL_VERSION || session.id != id {
        return Err(ServerError::journal(
            &path,
            format!("version {} / id {:?} not readable", session.version, session.id),
        ));
    }
    let mut frames = Vec::with_capacity(session.shots.len());
    let mut repairs = Vec::new();
    for (i, shot) in session.shots.iter_mut().enumerate() {
        match shot.status {
            ShotStatus::Done => match read_shot_frames(root, id, i) {
                Ok(f) => frames.push(Some(Arc::new(f))),
                Err(e) => {
                    repairs.push(format!("shot {i} is queued again: {e}"));
                    shot.status = ShotStatus::Queued;
                    frames.push(None);
                }
            },
            ShotStatus::Generating => {
                repairs.push(format!("shot {i} was being generated when the server stopped; it is queued again"));
                shot.status = ShotStatus::Queued;
                frames.push(None);
            }
            _ => frames.push(None),
        }
        // A shot generated again starts from nothing.
        if shot.status == ShotStatus::Queued {
            shot.context.clear();
            shot.seconds = None;
            shot.first_frame_seconds = None;
        }
    }
    Ok(LoadedSession { session, frames, repairs })
}

/// Ids of every session in the journal.
pub fn list_sessions(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join(SESSION_FILE).is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|id| valid_id(id))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Removes a session's folder.
pub fn remove_session(root: &Path, id: &str) -> Result<(), ServerError> {
    let dir = session_dir(root, id);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| ServerError::journal(&dir, e))?;
    }
    Ok(())
}

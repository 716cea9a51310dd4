//! What the API shows of sessions and shots (the JSON of docs/openapi.json).

use serde::{Deserialize, Serialize};

/// Where a shot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShotStatus {
    /// Waiting for the engine.
    Queued,
    /// Being generated.
    Generating,
    /// Finished; part of the story.
    Done,
    /// Stopped by a cancel (or never started); not part of the story.
    Cancelled,
    /// The engine failed on it; not part of the story.
    Failed,
}

impl ShotStatus {
    /// Still waiting or running.
    pub fn is_pending(self) -> bool {
        matches!(self, Self::Queued | Self::Generating)
    }

    /// Counts toward the story's length limit.
    pub fn counts(self) -> bool {
        matches!(self, Self::Queued | Self::Generating | Self::Done)
    }
}

/// One shot as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShotView {
    /// Position in the session's list of shots (cancelled and failed ones included).
    pub index: usize,
    /// The caption.
    pub caption: String,
    /// Frames (4k+1).
    pub frames: usize,
    /// Where it is.
    pub status: ShotStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// The earlier frames it was conditioned on, as [shot index, frame].
    pub context: Vec<[usize; 2]>,
    /// Index of its first frame in the story video (done shots only).
    pub first_frame: Option<usize>,
    /// Generation time in seconds.
    pub seconds: Option<f64>,
    /// Seconds from the start of its generation to its first decoded frame.
    pub first_frame_seconds: Option<f64>,
}

/// Whether a session has work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Nothing waiting.
    Idle,
    /// Shots waiting, none running.
    Queued,
    /// A shot running.
    Generating,
}

/// One session as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
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
    /// Whether it has work.
    pub state: SessionState,
    /// Frames of the finished story so far.
    pub frames_done: usize,
    /// Frames per second of the video.
    pub fps: u32,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// The shots.
    pub shots: Vec<ShotView>,
}

/// The body of `POST /api/sessions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The caption every shot shares.
    #[serde(default)]
    pub global_caption: String,
    /// The noise seed (default: random).
    pub seed: Option<u64>,
    /// Default frames per shot.
    pub frames: Option<usize>,
    /// dynamic, caption, first-frame or none.
    pub context: Option<String>,
    /// Shots to queue at once.
    #[serde(default)]
    pub shots: Vec<AppendShot>,
}

/// The body of `POST /api/sessions/{id}/shots`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendShot {
    /// The caption.
    pub caption: String,
    /// Frames (default: the session's).
    pub frames: Option<usize>,
}

//! What a server accepts: its limits, timeouts and journal folder.

use std::path::PathBuf;
use std::time::Duration;

/// Limits that keep one person (or a flood of them) from exhausting the engine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServeLimits {
    /// Sessions held in memory at once; creating (or reopening) one more is refused with 503.
    pub max_sessions: usize,
    /// Shots waiting for the engine across all sessions; one more is refused with 503.
    pub queue_capacity: usize,
    /// Shots waiting in one session; one more is refused with 429.
    pub max_pending_per_session: usize,
    /// Shots in a story (cancelled and failed ones not counted).
    pub max_shots: usize,
    /// Characters in a caption (the global caption included).
    pub max_caption_chars: usize,
    /// Frames in a shot (4k+1).
    pub max_frames: usize,
    /// Seconds without a request or a running shot after which a session leaves memory (its
    /// journal stays; the next request for it reopens it).
    pub idle_timeout_s: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_sessions: 16,
            queue_capacity: 32,
            max_pending_per_session: 8,
            max_shots: 64,
            max_caption_chars: 1000,
            max_frames: 201,
            idle_timeout_s: 600,
        }
    }
}

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where sessions and finished shots are journaled (created if missing).
    pub journal_dir: PathBuf,
    /// The limits.
    pub limits: ServeLimits,
    /// Frames of a shot whose request gives none (4k+1).
    pub default_frames: usize,
    /// Largest request body in bytes (larger ones get 413).
    pub max_body_bytes: usize,
}

impl ServeConfig {
    /// A configuration journaling to `journal_dir`, with the default limits.
    pub fn new(journal_dir: PathBuf) -> Self {
        Self { journal_dir, limits: ServeLimits::default(), default_frames: 25, max_body_bytes: 64 * 1024 }
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_timeout_s)
    }
}

//! storyreel-server: the HTTP + WebSocket API over interactive story sessions. One engine
//! worker generates shots for every session through a bounded round-robin queue; each decoded
//! chunk streams to the session's WebSocket clients as JPEG frames, and every appended and
//! finished shot is journaled so a restart loses nothing finished. The web page is served by
//! the same binary.

pub mod config;
pub mod downloads;
pub mod error;
pub mod hub;
pub mod journal;
pub mod routes;
pub mod server;
pub mod stream;
pub mod views;
pub mod worker;

pub use config::{ServeConfig, ServeLimits};
pub use error::{ApiError, ServerError};
pub use hub::{Event, Hub, ModelInfo};
pub use routes::{router, INDEX_HTML, ROUTES, STREAM_ROUTE};
pub use server::{model_info, start, RunningServer};
pub use views::{AppendShot, CreateSession, SessionState, SessionView, ShotStatus, ShotView};

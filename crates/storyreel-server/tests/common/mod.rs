//! A server over the shipped toy student with a fresh journal, and small clients for it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use storyreel_engine::StoryModel;
use storyreel_server::{RunningServer, ServeConfig};
use tokio_tungstenite::tungstenite::Message;

/// The toy student shipped in the repository (loaded once per test binary).
pub fn model() -> Arc<StoryModel> {
    static MODEL: OnceLock<Arc<StoryModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/toy-student");
            Arc::new(StoryModel::load(&dir, &candle_core::Device::Cpu).expect("loading the toy student"))
        })
        .clone()
}

/// A running server and its journal.
pub struct TestServer {
    pub server: RunningServer,
    pub base: String,
    pub journal: PathBuf,
}

/// Starts a server journaling to `journal`, with `tweak` applied to the default config.
pub async fn start_in(journal: &Path, tweak: impl FnOnce(&mut ServeConfig)) -> TestServer {
    let mut config = ServeConfig::new(journal.to_path_buf());
    config.default_frames = 5;
    tweak(&mut config);
    let server = storyreel_server::start(config, model(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", server.addr);
    TestServer { server, base, journal: journal.to_path_buf() }
}

/// A caption the toy vocabulary covers.
pub const CAPTIONS: [&str; 3] = [
    "A pink rabbit walks right in a meadow in daylight, wide shot.",
    "A red fox jumps in a city in daylight, medium shot.",
    "The same pink rabbit, now at dusk, turns around in the same meadow, close-up.",
];

pub async fn post(base: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new().post(format!("{base}{path}")).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

pub async fn get_json(base: &str, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Creates a session; returns its id.
pub async fn create(base: &str, body: serde_json::Value) -> String {
    let (status, view) = post(base, "/api/sessions", body).await;
    assert_eq!(status, 201, "{view}");
    view["id"].as_str().unwrap().to_string()
}

/// Polls the session until no shot is queued or generating; returns its view.
pub async fn wait_idle(base: &str, id: &str) -> serde_json::Value {
    for _ in 0..1200 {
        let (status, view) = get_json(base, &format!("/api/sessions/{id}")).await;
        assert_eq!(status, 200, "{view}");
        if view["state"] == "idle" {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("session {id} did not finish in 120 s");
}

/// A frame message's header and JPEG bytes.
pub fn split_frame(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[4..4 + len]).unwrap(), &bytes[4 + len..])
}

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the session's WebSocket and reads its hello.
pub async fn connect(base: &str, id: &str) -> (Socket, serde_json::Value) {
    let url = format!("{}/api/sessions/{id}/stream", base.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let hello = next_text(&mut socket).await;
    assert_eq!(hello["type"], "session");
    (socket, hello)
}

/// The next message, with a generous timeout.
pub async fn next(socket: &mut Socket) -> Message {
    tokio::time::timeout(Duration::from_secs(120), socket.next()).await.expect("no message in 120 s").unwrap().unwrap()
}

/// The next text message as JSON (frames before it are skipped).
pub async fn next_text(socket: &mut Socket) -> serde_json::Value {
    loop {
        if let Message::Text(t) = next(socket).await {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Downloads the session's MP4 and returns its frame count.
pub async fn video_frames(base: &str, id: &str) -> usize {
    let r = reqwest::get(format!("{base}/api/sessions/{id}/video.mp4")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "video/mp4");
    let bytes = r.bytes().await.unwrap();
    let file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    let (info, frames) = storyreel_media::read_mp4(file.path()).unwrap();
    assert_eq!(info.frame_count as usize, frames.len());
    frames.len()
}

//! `storyreel bench serve`: what a person at the web page gets. Several sessions each write a
//! story one shot at a time over the real HTTP + WebSocket API; for every shot it measures the
//! time from "append shot" to its first frame arriving on the socket, and the rate its frames
//! stream at; at the end every story's MP4 is downloaded and its frames counted, so a lost
//! shot cannot go unnoticed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// Flags of `bench serve`.
#[derive(clap::Args)]
pub struct ServeBenchArgs {
    /// Story model folder for the in-process server (default: the embedded student).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Measure a running server at this URL (e.g. http://127.0.0.1:8080) instead of starting one.
    #[arg(long)]
    pub url: Option<String>,
    /// Sessions writing stories at the same time.
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// Shots per story.
    #[arg(long, default_value_t = 4)]
    pub shots: usize,
    /// Frames per shot (4k+1).
    #[arg(long, default_value_t = 25)]
    pub frames: usize,
    /// Device of the in-process server.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Captions the toy model's vocabulary covers, cycled over the shots.
const CAPTIONS: [&str; 4] = [
    "A pink rabbit walks right in a meadow in daylight, wide shot.",
    "A red fox jumps in a city in daylight, medium shot.",
    "The same pink rabbit, now at dusk, turns around in the same meadow, close-up.",
    "The same red fox walks left in the same city at night, wide shot.",
];

/// One shot's timing as the client saw it.
#[derive(Debug, Clone, serde::Serialize)]
struct ShotTiming {
    session: usize,
    shot: usize,
    /// Seconds from the append request to the first frame on the socket.
    first_frame_s: f64,
    /// Frames received.
    frames: usize,
    /// Frames per second from the first to the last frame of the shot.
    stream_fps: f64,
}

#[derive(Debug, serde::Serialize)]
struct SessionResult {
    shots: Vec<ShotTiming>,
    video_frames: usize,
    expected_frames: usize,
}

/// Runs `storyreel bench serve`.
pub fn run(args: &ServeBenchArgs) -> Result<()> {
    if args.sessions == 0 || args.shots == 0 {
        bail!("--sessions and --shots must be at least 1");
    }
    if args.frames == 0 || !(args.frames - 1).is_multiple_of(4) {
        bail!("--frames {} must be 4k+1", args.frames);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let journal = tempfile::tempdir().context("creating a journal folder")?;
        let (base, server) = match &args.url {
            Some(url) => (url.trim_end_matches('/').to_string(), None),
            None => {
                let model = crate::serve_cmd::load_model(&args.model, &args.device)?;
                let mut config = storyreel_server::ServeConfig::new(journal.path().to_path_buf());
                config.limits.max_sessions = config.limits.max_sessions.max(args.sessions);
                config.limits.queue_capacity = config.limits.queue_capacity.max(args.sessions);
                config.limits.max_frames = config.limits.max_frames.max(args.frames);
                let server = storyreel_server::start(config, model, "127.0.0.1:0".parse()?).await?;
                (format!("http://{}", server.addr), Some(server))
            }
        };
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.sessions)
            .map(|i| {
                let base = base.clone();
                let (shots, frames) = (args.shots, args.frames);
                tokio::spawn(async move { run_session(&base, i, shots, frames).await })
            })
            .collect();
        let mut results = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            results.push(t.await.context("session task")?.with_context(|| format!("session {i}"))?);
        }
        let wall = started.elapsed().as_secs_f64();
        if let Some(server) = server {
            server.shutdown().await?;
        }
        report(args, &results, wall);
        Ok(())
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(args: &ServeBenchArgs, results: &[SessionResult], wall: f64) {
    let shots: Vec<&ShotTiming> = results.iter().flat_map(|r| &r.shots).collect();
    let mut ttff: Vec<f64> = shots.iter().map(|s| s.first_frame_s).collect();
    ttff.sort_by(f64::total_cmp);
    let mut fps: Vec<f64> = shots.iter().map(|s| s.stream_fps).filter(|f| f.is_finite()).collect();
    fps.sort_by(f64::total_cmp);
    let frames: usize = shots.iter().map(|s| s.frames).sum();
    let lost: usize = results.iter().filter(|r| r.video_frames != r.expected_frames).count();
    let line = serde_json::json!({
        "event": "bench_serve", "sessions": args.sessions, "shots_per_session": args.shots, "frames_per_shot": args.frames,
        "wall_seconds": wall, "frames": frames, "aggregate_fps": frames as f64 / wall.max(1e-9),
        "first_frame_seconds": {"median": percentile(&ttff, 0.5), "p90": percentile(&ttff, 0.9), "max": percentile(&ttff, 1.0)},
        "stream_fps": {"median": percentile(&fps, 0.5), "min": percentile(&fps, 0.0)},
        "stories_with_missing_frames": lost,
        "shots": shots,
    });
    println!("{line}");
    eprintln!(
        "{} sessions × {} shots × {} frames: {frames} frames in {wall:.1} s ({:.1} frames/s in all); \
         append → first frame median {:.2} s, p90 {:.2} s, max {:.2} s; per-shot stream median {:.1} frames/s; \
         {lost} stories with missing frames",
        args.sessions,
        args.shots,
        args.frames,
        frames as f64 / wall.max(1e-9),
        percentile(&ttff, 0.5),
        percentile(&ttff, 0.9),
        percentile(&ttff, 1.0),
        percentile(&fps, 0.5),
    );
}

/// JSON from a response, or an error with the server's message.
async fn json_ok(response: reqwest::Response, what: &str) -> Result<serde_json::Value> {
    let status = response.status();
    let body: serde_json::Value = response.json().await.with_context(|| format!("{what}: reading the response"))?;
    if !status.is_success() {
        bail!("{what}: {status}: {}", body["error"]["message"].as_str().unwrap_or("(no message)"));
    }
    Ok(body)
}

/// Writes one story shot by shot, each shot appended once the previous one is done.
async fn run_session(base: &str, session: usize, shots: usize, frames: usize) -> Result<SessionResult> {
    let http = reqwest::Client::new();
    let created = json_ok(
        http.post(format!("{base}/api/sessions"))
            .json(&serde_json::json!({
                "global_caption": "A story about the pink rabbit and the red fox.",
                "seed": session as u64, "frames": frames,
            }))
            .send()
            .await?,
        "creating a session",
    )
    .await?;
    let id = created["id"].as_str().context("no session id")?.to_string();
    let ws_url = format!("{}/api/sessions/{id}/stream", base.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url).await.context("opening the WebSocket")?;
    let mut timings = Vec::new();
    for shot in 0..shots {
        let appended = Instant::now();
        let view = json_ok(
            http.post(format!("{base}/api/sessions/{id}/shots"))
                .json(&serde_json::json!({"caption": CAPTIONS[shot % CAPTIONS.len()]}))
                .send()
                .await?,
            "appending a shot",
        )
        .await?;
        let index = view["index"].as_u64().context("no shot index")?;
        let (mut first, mut last, mut count) = (None::<Instant>, None::<Instant>, 0usize);
        loop {
            let message = tokio::time::timeout(Duration::from_secs(600), socket.next())
                .await
                .context("no message for 10 minutes")?
                .context("the server closed the WebSocket")??;
            match message {
                Message::Binary(bytes) => {
                    let now = Instant::now();
                    let len = bytes.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
                    let header: serde_json::Value = len
                        .and_then(|l| bytes.get(4..4 + l))
                        .and_then(|h| serde_json::from_slice(h).ok())
                        .context("a frame message without a readable header")?;
                    if header["shot"].as_u64() == Some(index) {
                        first.get_or_insert(now);
                        last = Some(now);
                        count += 1;
                    }
                }
                Message::Text(text) => {
                    let event: serde_json::Value = serde_json::from_str(&text)?;
                    let this_shot = event["shot"]["index"].as_u64() == Some(index);
                    match event["type"].as_str() {
                        Some("shot_done") if this_shot => break,
                        Some("shot_failed") | Some("shot_cancelled") if this_shot => {
                            bail!("shot {index}: {}", event["shot"]["error"].as_str().unwrap_or("cancelled"))
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        let first = first.context("the shot finished without streaming a frame")?;
        let span = last.map(|l| l.duration_since(first).as_secs_f64()).unwrap_or(0.0);
        timings.push(ShotTiming {
            session,
            shot,
            first_frame_s: first.duration_since(appended).as_secs_f64(),
            frames: count,
            stream_fps: if span > 0.0 { (count.saturating_sub(1)) as f64 / span } else { f64::NAN },
        });
    }
    let _ = socket.close(None).await;
    let video = http.get(format!("{base}/api/sessions/{id}/video.mp4")).send().await?;
    if !video.status().is_success() {
        bail!("downloading the video: {}", video.status());
    }
    let bytes = video.bytes().await?;
    let file = tempfile::Builder::new().suffix(".mp4").tempfile()?;
    std::fs::write(file.path(), &bytes)?;
    let (info, _) = storyreel_media::read_mp4(file.path()).context("reading the downloaded MP4")?;
    Ok(SessionResult { shots: timings, video_frames: info.frame_count as usize, expected_frames: shots * frames })
}

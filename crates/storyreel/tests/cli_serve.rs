//! `storyreel serve` as a process: a server killed with SIGKILL in the middle of a story
//! restarts with every finished shot intact and generates the rest.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

/// Kills the server when the test ends, pass or fail.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(journal: &Path, cache: &Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_storyreel"))
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--journal",
            journal.to_str().unwrap(),
            "--frames",
            "49",
        ])
        .env("STORYREEL_CACHE", cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting storyreel serve");
    Server(child)
}

async fn get(base: &str, path: &str) -> Option<serde_json::Value> {
    reqwest::get(format!("{base}{path}")).await.ok()?.json().await.ok()
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    base: &str,
    path: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(v) = get(base, path).await {
            if ok(&v) {
                return v;
            }
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn done(view: &serde_json::Value) -> usize {
    view["shots"].as_array().map(|s| s.iter().filter(|x| x["status"] == "done").count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_story_restarts_with_every_finished_shot() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, cache) = (dir.path().join("journal"), dir.path().join("cache"));
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(&journal, &cache, port);
    wait_until("the server", Duration::from_secs(60), &base, "/api/info", |_| true).await;
    let captions = [
        "A pink rabbit walks right in a meadow in daylight, wide shot.",
        "A red fox jumps in a city in daylight, medium shot.",
        "The same pink rabbit, now at dusk, turns around in the same meadow, close-up.",
        "The same red fox walks left in the same city at night, wide shot.",
    ];
    let shots: Vec<_> = captions.iter().map(|c| json!({"caption": c})).collect();
    let r = reqwest::Client::new()
        .post(format!("{base}/api/sessions"))
        .json(&json!({"global_caption": "A story about the pink rabbit and the red fox.", "seed": 11, "shots": shots}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let path = format!("/api/sessions/{id}");
    wait_until("the first finished shot", Duration::from_secs(120), &base, &path, |v| done(v) >= 1).await;
    server.0.kill().unwrap(); // SIGKILL: no chance to clean up
    server.0.wait().unwrap();
    let journal_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(journal.join(&id).join("session.json")).unwrap()).unwrap();
    let finished: Vec<usize> = (0..4).filter(|&i| journal_file["shots"][i]["status"] == "done").collect();
    assert!(!finished.is_empty());
    let before: Vec<Vec<u8>> = finished
        .iter()
        .map(|i| std::fs::read(journal.join(&id).join(format!("shot-{i:03}.safetensors"))).unwrap())
        .collect();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = serve(&journal, &cache, port);
    let view = wait_until("the rest of the story", Duration::from_secs(300), &base, &path, |v| done(v) == 4).await;
    assert_eq!(view["frames_done"], 4 * 49);
    for (i, bytes) in finished.iter().zip(&before) {
        let after = std::fs::read(journal.join(&id).join(format!("shot-{i:03}.safetensors"))).unwrap();
        assert!(after == *bytes, "finished shot {i} changed across the restart");
    }
    let video = reqwest::get(format!("{base}{path}/video.mp4")).await.unwrap().bytes().await.unwrap();
    let file = dir.path().join("story.mp4");
    std::fs::write(&file, &video).unwrap();
    let (info, _) = storyreel_media::read_mp4(&file).unwrap();
    assert_eq!(info.frame_count, 4 * 49);
}

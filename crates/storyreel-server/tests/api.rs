//! The API end to end over real sockets, on the shipped toy student.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_story_streams_shot_by_shot_and_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_in(dir.path(), |_| {}).await;
    let id =
        create(&t.base, json!({"global_caption": "A story about the pink rabbit and the red fox.", "seed": 5})).await;
    let (mut socket, hello) = connect(&t.base, &id).await;
    assert_eq!(hello["session"]["id"], id.as_str());
    assert_eq!(hello["session"]["frames"], 5);
    // The second shot is appended while the first is being generated.
    let (status, first) =
        post(&t.base, &format!("/api/sessions/{id}/shots"), json!({"caption": CAPTIONS[0], "frames": 9})).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["index"], 0);
    assert_eq!(first["status"], "queued");
    let (status, second) = post(&t.base, &format!("/api/sessions/{id}/shots"), json!({"caption": CAPTIONS[1]})).await;
    assert_eq!(status, 202, "{second}");
    assert_eq!(second["frames"], 5);
    let mut frames = Vec::new();
    let mut events = Vec::new();
    while events.iter().filter(|e: &&String| e.starts_with("shot_done")).count() < 2 {
        match next(&mut socket).await {
            Message::Binary(bytes) => {
                let (header, jpeg) = split_frame(&bytes);
                assert_eq!(&jpeg[..2], [0xff, 0xd8], "a JPEG");
                let img = image::load_from_memory(jpeg).unwrap();
                assert_eq!((img.width(), img.height()), (64, 64));
                frames.push(header);
            }
            Message::Text(text) => {
                let e: serde_json::Value = serde_json::from_str(&text).unwrap();
                let shot = if e["shot"].is_object() { e["shot"]["index"].clone() } else { e["shot"].clone() };
                events.push(format!("{} {}", e["type"].as_str().unwrap(), shot));
                if e["type"] == "shot_done" {
                    assert_eq!(e["shot"]["status"], "done");
                    assert!(e["shot"]["seconds"].as_f64().unwrap() > 0.0);
                }
            }
            _ => {}
        }
    }
    // Each shot goes queued → started → its chunk → done, and shot 1 starts after shot 0 ends
    // (shot 1 may be queued before or after shot 0 starts).
    for k in 0..2 {
        let mine: Vec<&str> =
            events.iter().filter(|e| e.ends_with(&format!(" {k}"))).map(|e| e.split(' ').next().unwrap()).collect();
        assert_eq!(mine, ["shot_queued", "shot_started", "chunk", "shot_done"], "{events:?}");
    }
    let at = |e: &str| events.iter().position(|x| x == e).unwrap();
    assert!(at("shot_done 0") < at("shot_started 1"), "{events:?}");
    // Every frame arrives once, in story order, with its timestamp.
    assert_eq!(frames.len(), 14);
    for (j, h) in frames.iter().enumerate() {
        assert_eq!(h["story_frame"], j);
        assert!((h["pts"].as_f64().unwrap() - j as f64 / 16.0).abs() < 1e-9);
        assert_eq!(h["shot"], if j < 9 { 0 } else { 1 });
    }
    let view = wait_idle(&t.base, &id).await;
    assert_eq!(view["frames_done"], 14);
    assert_eq!(view["shots"][1]["first_frame"], 9);
    // The second shot was conditioned on frames of the first.
    let context = view["shots"][1]["context"].as_array().unwrap();
    assert!(!context.is_empty() && context.iter().all(|c| c[0] == 0), "{context:?}");
    assert_eq!(video_frames(&t.base, &id).await, 14);
    let sheet = reqwest::get(format!("{}/api/sessions/{id}/contact-sheet.png", t.base)).await.unwrap();
    assert_eq!(sheet.status().as_u16(), 200);
    assert!(sheet.headers()["content-disposition"].to_str().unwrap().contains("contact-sheet.png"));
    assert_eq!(&sheet.bytes().await.unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    // The page is served by the binary itself.
    let page = reqwest::get(format!("{}/", t.base)).await.unwrap().text().await.unwrap();
    assert!(page.contains("id=\"next-shot\""));
    // Deleting removes the session and its journal.
    let r = reqwest::Client::new().delete(format!("{}/api/sessions/{id}", t.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(get_json(&t.base, &format!("/api/sessions/{id}")).await.0, 404);
    assert!(!dir.path().join(&id).exists());
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_with_named_problems() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_in(dir.path(), |c| {
        c.limits.max_caption_chars = 100;
        c.limits.max_shots = 2;
        c.limits.max_pending_per_session = 2;
    })
    .await;
    let client = reqwest::Client::new();
    let raw = |path: &str, body: &'static str| {
        client.post(format!("{}{path}", t.base)).header("content-type", "application/json").body(body).send()
    };
    let r = raw("/api/sessions", "{\"global_caption\": ").await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "malformed_json");
    let (status, e) = post(&t.base, "/api/sessions", json!({"global_caption": 3})).await;
    assert_eq!(status, 400);
    assert!(e["error"]["message"].as_str().unwrap().contains("global_caption"), "{e}");
    let (status, e) = post(&t.base, "/api/sessions", json!({"global_captoin": "x"})).await;
    assert_eq!(status, 400);
    assert!(e["error"]["message"].as_str().unwrap().contains("global_captoin"), "{e}");
    let (status, e) = post(&t.base, "/api/sessions", json!({"context": "everything"})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (422, Some("invalid_story")), "{e}");
    let (status, e) = post(&t.base, "/api/sessions", json!({"frames": 6})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (422, Some("invalid_frames")), "{e}");

    let id = create(&t.base, json!({"seed": 1})).await;
    let shots = format!("/api/sessions/{id}/shots");
    let (status, e) = post(&t.base, &shots, json!({"frames": 5})).await;
    assert_eq!(status, 400);
    assert!(e["error"]["message"].as_str().unwrap().contains("caption"), "{e}");
    let (status, e) = post(&t.base, &shots, json!({"caption": "a ".repeat(80)})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (422, Some("caption_too_long")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("160 characters"), "{e}");
    let (status, e) = post(&t.base, &shots, json!({"caption": "   "})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (422, Some("invalid_story")), "{e}");
    let (status, e) = post(&t.base, &shots, json!({"caption": "A purple dragon flies"})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (422, Some("unknown_words")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("\"dragon\""), "{e}");
    // A body far over the limit is refused before it is parsed.
    let big = format!("{{\"caption\": \"{}\"}}", "a".repeat(100_000));
    let r = client
        .post(format!("{}{shots}", t.base))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "body_too_large");
    // Unknown sessions and routes.
    let (status, e) = post(&t.base, "/api/sessions/s-0123/shots", json!({"caption": CAPTIONS[0]})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, _) = get_json(&t.base, "/api/nothing").await;
    assert_eq!(status, 404);
    let (status, e) = get_json(&t.base, &format!("/api/sessions/{id}/video.mp4")).await;
    assert_eq!((status, e["error"]["code"].as_str()), (409, Some("nothing_to_download")));

    // Limits: two waiting shots per session, two shots per story.
    for caption in &CAPTIONS[..2] {
        let (status, e) = post(&t.base, &shots, json!({"caption": caption})).await;
        assert_eq!(status, 202, "{e}");
    }
    let r = client.post(format!("{}{shots}", t.base)).json(&json!({"caption": CAPTIONS[2]})).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let e: serde_json::Value = r.json().await.unwrap();
    // Either still waiting (429) or, if both are already done, over the story's length (422).
    match status {
        429 => {
            assert_eq!(e["error"]["code"], "too_many_pending");
            assert!(retry.is_some());
        }
        422 => assert_eq!(e["error"]["code"], "too_many_shots"),
        other => panic!("{other}: {e}"),
    }
    wait_idle(&t.base, &id).await;
    let (status, e) = post(&t.base, &shots, json!({"caption": CAPTIONS[2]})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (422, Some("too_many_shots")), "{e}");
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_stream_keeps_finished_shots_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_in(dir.path(), |_| {}).await;
    let id = create(&t.base, json!({"seed": 2, "shots": [{"caption": CAPTIONS[0]}]})).await;
    wait_idle(&t.base, &id).await;
    let (mut socket, _) = connect(&t.base, &id).await;
    let shots = format!("/api/sessions/{id}/shots");
    // A long shot (17 chunks) and one queued behind it.
    assert_eq!(post(&t.base, &shots, json!({"caption": CAPTIONS[1], "frames": 201})).await.0, 202);
    assert_eq!(post(&t.base, &shots, json!({"caption": CAPTIONS[2]})).await.0, 202);
    loop {
        let e = next_text(&mut socket).await;
        if e["type"] == "chunk" {
            assert_eq!(e["shot"], 1);
            break;
        }
    }
    let (status, view) = post(&t.base, &format!("/api/sessions/{id}/cancel"), json!({})).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["shots"][2]["status"], "cancelled");
    loop {
        let e = next_text(&mut socket).await;
        if e["type"] == "shot_cancelled" && e["shot"]["index"] == 1 {
            break;
        }
        assert_ne!(e["type"], "shot_done", "{e}");
    }
    let view = wait_idle(&t.base, &id).await;
    let statuses: Vec<&str> = view["shots"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["done", "cancelled", "cancelled"]);
    assert_eq!(video_frames(&t.base, &id).await, 5);
    // The story goes on after a cancel: the next shot is the story's second.
    assert_eq!(post(&t.base, &shots, json!({"caption": CAPTIONS[2]})).await.0, 202);
    let view = wait_idle(&t.base, &id).await;
    assert_eq!(view["shots"][3]["status"], "done");
    assert_eq!(view["shots"][3]["first_frame"], 5);
    assert_eq!(video_frames(&t.base, &id).await, 10);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_in(dir.path(), |_| {}).await;
    let id = create(&t.base, json!({"seed": 3})).await;
    let (mut socket, _) = connect(&t.base, &id).await;
    assert_eq!(
        post(&t.base, &format!("/api/sessions/{id}/shots"), json!({"caption": CAPTIONS[0], "frames": 49})).await.0,
        202
    );
    loop {
        if let Message::Binary(_) = next(&mut socket).await {
            break;
        }
    }
    // Gone without a close handshake, in the middle of the shot.
    drop(socket);
    assert_eq!(post(&t.base, &format!("/api/sessions/{id}/shots"), json!({"caption": CAPTIONS[1]})).await.0, 202);
    let view = wait_idle(&t.base, &id).await;
    assert_eq!(view["frames_done"], 54);
    assert_eq!(video_frames(&t.base, &id).await, 54);
    // A new client gets the session's state on connect.
    let (_socket, hello) = connect(&t.base, &id).await;
    assert_eq!(hello["session"]["frames_done"], 54);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_and_the_session_count_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_in(dir.path(), |c| {
        c.limits.queue_capacity = 3;
        c.limits.max_sessions = 2;
    })
    .await;
    // Long shots so that nothing finishes while the queue fills.
    let long = json!({"caption": CAPTIONS[0], "frames": 201});
    let a = create(&t.base, json!({"shots": [long.clone(), long.clone()]})).await;
    let b = create(&t.base, json!({"shots": [long.clone()]})).await;
    let r = reqwest::Client::new().post(format!("{}/api/sessions/{b}/shots", t.base)).json(&long).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "queue_full");
    let (status, e) = post(&t.base, "/api/sessions", json!({})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (503, Some("too_many_sessions")), "{e}");
    let (_, info) = get_json(&t.base, "/api/info").await;
    assert_eq!(info["queue"]["pending"], 3);
    for id in [&a, &b] {
        post(&t.base, &format!("/api/sessions/{id}/cancel"), json!({})).await;
    }
    wait_idle(&t.base, &a).await;
    wait_idle(&t.base, &b).await;
    let (_, info) = get_json(&t.base, "/api/info").await;
    assert_eq!(info["queue"]["pending"], 0);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_resumes_journaled_stories_exactly() {
    // The same two-shot story, once without a stop and once with the server restarted between
    // the shots: the second shot is the same, byte for byte.
    let straight = tempfile::tempdir().unwrap();
    let t = start_in(straight.path(), |_| {}).await;
    let id = create(&t.base, json!({"seed": 9, "shots": [{"caption": CAPTIONS[0]}, {"caption": CAPTIONS[2]}]})).await;
    wait_idle(&t.base, &id).await;
    t.server.shutdown().await.unwrap();
    let want = std::fs::read(straight.path().join(&id).join("shot-001.safetensors")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let t = start_in(dir.path(), |_| {}).await;
    let id2 = create(&t.base, json!({"seed": 9, "shots": [{"caption": CAPTIONS[0]}]})).await;
    wait_idle(&t.base, &id2).await;
    t.server.shutdown().await.unwrap();
    let first = std::fs::read(dir.path().join(&id2).join("shot-000.safetensors")).unwrap();

    let t = start_in(dir.path(), |_| {}).await;
    let (status, list) = get_json(&t.base, "/api/sessions").await;
    assert_eq!(status, 200);
    assert!(list["sessions"].as_array().unwrap().iter().any(|s| s["id"] == id2.as_str()), "{list}");
    assert_eq!(video_frames(&t.base, &id2).await, 5);
    assert_eq!(post(&t.base, &format!("/api/sessions/{id2}/shots"), json!({"caption": CAPTIONS[2]})).await.0, 202);
    wait_idle(&t.base, &id2).await;
    t.server.shutdown().await.unwrap();
    assert_eq!(std::fs::read(dir.path().join(&id2).join("shot-000.safetensors")).unwrap(), first);
    assert_eq!(std::fs::read(dir.path().join(&id2).join("shot-001.safetensors")).unwrap(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shot_stopped_by_shutdown_is_generated_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_in(dir.path(), |_| {}).await;
    let id = create(&t.base, json!({"seed": 4, "shots": [{"caption": CAPTIONS[0], "frames": 201}]})).await;
    let (mut socket, _) = connect(&t.base, &id).await;
    loop {
        if next_text(&mut socket).await["type"] == "chunk" {
            break;
        }
    }
    t.server.shutdown().await.unwrap();
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(&id).join("session.json")).unwrap()).unwrap();
    assert_eq!(journal["shots"][0]["status"], "queued");
    let t = start_in(dir.path(), |_| {}).await;
    let view = wait_idle(&t.base, &id).await;
    assert_eq!(view["shots"][0]["status"], "done");
    assert_eq!(view["frames_done"], 201);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_leave_memory_and_come_back_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_in(dir.path(), |c| c.limits.idle_timeout_s = 1).await;
    let id = create(&t.base, json!({"seed": 6, "shots": [{"caption": CAPTIONS[0]}]})).await;
    wait_idle(&t.base, &id).await;
    let mut gone = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t.server.hub.load().1 == 0 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the idle session stayed in memory");
    let (status, view) = get_json(&t.base, &format!("/api/sessions/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(view["shots"][0]["status"], "done");
    assert_eq!(video_frames(&t.base, &id).await, 5);
    t.server.shutdown().await.unwrap();
}

#[test]
fn the_openapi_document_lists_every_route() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for (method, route) in storyreel_server::ROUTES {
        if route == "/" {
            continue;
        }
        assert!(paths.get(route).and_then(|p| p.get(method)).is_some(), "{method} {route} is not in docs/openapi.json");
    }
    assert!(paths.get(storyreel_server::STREAM_ROUTE).is_some());
    let methods = ["get", "post", "put", "patch", "delete"];
    let documented: usize =
        paths.values().map(|p| p.as_object().unwrap().keys().filter(|k| methods.contains(&k.as_str())).count()).sum();
    assert!(documented <= storyreel_server::ROUTES.len() + 1, "docs/openapi.json documents routes the server lacks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_sessions_complete_with_no_lost_shot() {
    let dir = tempfile::tempdir().unwrap();
    let t = start_in(dir.path(), |_| {}).await;
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let base = t.base.clone();
            tokio::spawn(async move {
                let id = create(&base, json!({"seed": i})).await;
                let (mut socket, _) = connect(&base, &id).await;
                let mut frames = 0;
                for caption in &CAPTIONS[..2] {
                    let (status, e) =
                        post(&base, &format!("/api/sessions/{id}/shots"), json!({"caption": caption})).await;
                    assert_eq!(status, 202, "{e}");
                }
                let mut done = 0;
                while done < 2 {
                    match next(&mut socket).await {
                        Message::Binary(_) => frames += 1,
                        Message::Text(text) => {
                            let e: serde_json::Value = serde_json::from_str(&text).unwrap();
                            assert_ne!(e["type"], "shot_failed", "{e}");
                            if e["type"] == "shot_done" {
                                done += 1;
                            }
                        }
                        _ => {}
                    }
                }
                (id, frames)
            })
        })
        .collect();
    for task in tasks {
        let (id, frames) = task.await.unwrap();
        assert_eq!(frames, 10, "session {id} streamed {frames} frames");
        assert_eq!(video_frames(&t.base, &id).await, 10);
    }
    t.server.shutdown().await.unwrap();
}

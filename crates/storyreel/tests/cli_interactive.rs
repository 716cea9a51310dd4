//! `storyreel generate --interactive`: shots typed on stdin while the previous one is being
//! generated, a caption the model cannot read refused without ending the story, and Ctrl-D
//! finishing a playable video.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

#[test]
fn shots_typed_while_the_story_streams_join_the_video() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("story.mp4");
    let mut child = Command::new(env!("CARGO_BIN_EXE_storyreel"))
        .args(["generate", "--interactive", "--json", "--frames", "9", "-o", video.to_str().unwrap()])
        .args(["--global", "A story about the pink rabbit and the red fox."])
        .env("STORYREEL_CACHE", dir.path().join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "A pink rabbit walks right in a meadow in daylight, wide shot.").unwrap();
    let mut events = Vec::new();
    let mut stdin = Some(stdin);
    for line in stdout.lines() {
        let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let kind = e["event"].as_str().unwrap().to_string();
        // The next shots are typed while the first one is still being generated.
        if kind == "shot_started" && e["shot"] == 0 {
            let input = stdin.as_mut().unwrap();
            writeln!(input, "A purple dragon flies over the meadow.").unwrap();
            writeln!(input).unwrap();
            writeln!(input, "The same red fox walks left in the same city at night, wide shot.").unwrap();
            // Ctrl-D: the story ends after the shots typed so far.
            drop(stdin.take());
        }
        if kind != "progress" {
            events.push(kind);
        }
        if events.last().is_some_and(|k| k == "story_done") {
            let shots = e["shots"].as_u64().unwrap();
            assert_eq!(shots, 2, "{e}");
            assert_eq!(e["frames"], 18);
            assert!(e["first_frame_seconds"].as_f64().unwrap() > 0.0);
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(events, ["shot_started", "shot_done", "shot_refused", "shot_started", "shot_done", "story_done"]);
    let (info, _) = storyreel_media::read_mp4(&video).unwrap();
    assert_eq!(info.frame_count, 18);
}

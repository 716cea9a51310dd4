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

/// Runs the binary with `stdin` as its input; returns success and stderr.
fn run_with_input(args: &[&str], stdin: &str, cache: &std::path::Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storyreel"))
        .args(args)
        .env("STORYREEL_CACHE", cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn bad_story_input_and_flags_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let video = dir.path().join("v.mp4");
    let v = video.to_str().unwrap();
    let story = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/stories/rabbit-and-fox.json");
    let several = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/stories/formats/longlive.jsonl");
    let teacher = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/models/toy-teacher");
    // A story on stdin: plain text works, a broken JSON names its line and column.
    let (ok, err) =
        run_with_input(&["generate", "--story", "-", "--frames", "5", "-o", v], "A red fox jumps in a city.\n", &cache);
    assert!(ok, "{err}");
    let (ok, err) = run_with_input(&["generate", "--story", "-", "-o", v], "{\"shots\": [{\"caption\": 3}]}", &cache);
    assert!(!ok && err.contains("<stdin>") && err.contains("shots[0].caption"), "{err}");
    for (args, expect) in [
        (vec!["generate", "--story", story, "-o", v, "--format", "bogus"], "choose one of native"),
        (vec!["generate", "--story", story, "-o", v, "--fps", "0", "--frames", "5"], "fps = 0"),
        (
            vec!["generate", "--model", teacher, "--story", story, "-o", v, "--decoder", "tiny"],
            "no tiny decoder weights",
        ),
        (vec!["generate", "-o", v], "give --story"),
        (vec!["generate", "--interactive", "--story", several, "-o", v], "continues one story"),
        (vec!["serve", "--max-sessions", "0", "--journal", "j"], "--max-sessions must be at least 1"),
        (vec!["serve", "--frames", "6", "--journal", "j"], "--frames 6 must be 4k+1"),
    ] {
        let (ok, err) = run_with_input(&args, "", &cache);
        assert!(!ok && err.contains(expect), "{args:?}: {err}");
    }
}

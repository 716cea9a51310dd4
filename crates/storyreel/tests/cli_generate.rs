//! The teacher path from the command line, at a tiny size (the CI smoke run of issue 6): a VAE
//! and a teacher are trained for a few steps, `storyreel generate` writes a story video from the
//! model folder (one story and a folder of them), and bad stories and models are clear errors.

use std::path::Path;
use std::process::Command;

fn storyreel(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_storyreel")).args(args).output().expect("runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn train_tiny_models(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let vae_cfg = dir.join("vae.toml");
    std::fs::write(
        &vae_cfg,
        "[vae]\nz_dim = 4\nbase_dim = 4\n[data]\nwidth = 32\nheight = 32\n[held_out]\nclips = 1\nevery = 2\n\
         [train]\nprogress = false\ncheckpoint_every = 0\n",
    )
    .unwrap();
    let vae_run = dir.join("vae-run");
    let (ok, _, err) = storyreel(&["train", "vae", "--config", p(&vae_cfg), "--steps", "2", "--out", p(&vae_run)]);
    assert!(ok, "{err}");
    let teacher_cfg = dir.join("teacher.json");
    std::fs::write(
        &teacher_cfg,
        r#"{"dit": {"dim": 32, "ffn_dim": 64, "freq_dim": 32, "num_heads": 2, "num_layers": 1},
            "text": {"dim": 16, "text_len": 64, "layers": 1, "heads": 2, "ffn_dim": 32},
            "data": {"first_seed": 5, "stories": 2, "width": 32, "height": 32},
            "sampler": {"steps": 2, "shift": 8.0, "guidance": 2.0},
            "train": {"progress": false, "checkpoint_every": 0}}"#,
    )
    .unwrap();
    let run = dir.join("teacher-run");
    let (ok, stdout, err) = storyreel(&[
        "train",
        "teacher",
        "--config",
        p(&teacher_cfg),
        "--vae",
        p(&vae_run.join("model")),
        "--steps",
        "3",
        "--out",
        p(&run),
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["steps"], 3);
    (run.join("model"), vae_run.join("model"))
}

#[test]
fn teacher_smoke_run_generates_stories_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (model, vae) = train_tiny_models(dir.path());
    for part in
        ["storyreel_model.json", "dit/config.json", "dit/model.safetensors", "vae/vae.safetensors", "text/vocab.txt"]
    {
        assert!(model.join(part).is_file(), "{part} missing");
    }

    let story = dir.path().join("story.json");
    std::fs::write(
        &story,
        r#"{"global_caption": "a red fox in a meadow.", "seed": 4,
            "shots": [{"caption": "a red fox walks", "frames": 5}, {"caption": "the same red fox jumps", "frames": 9}]}"#,
    )
    .unwrap();
    let video = dir.path().join("story.mp4");
    let (ok, stdout, err) =
        storyreel(&["generate", "--model", p(&model), "--story", p(&story), "-o", p(&video), "--json"]);
    assert!(ok, "{err}");
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.iter().filter(|e| e["event"] == "shot_done").count(), 2, "{stdout}");
    let started: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "shot_started").collect();
    assert_eq!(started.len(), 2, "{stdout}");
    assert!(started[0]["context"].as_array().unwrap().is_empty(), "shot 0 has no earlier frames");
    assert_eq!(started[1]["context"].as_array().unwrap().len(), 6, "shot 1 is conditioned on 6 frames of shot 0");
    let done = events.last().unwrap();
    assert_eq!((done["event"].as_str(), done["frames"].as_u64()), (Some("story_done"), Some(14)));
    let (_, frames) = storyreel_media::read_mp4(&video).unwrap();
    assert_eq!((frames.len(), frames[0].width, frames[0].height), (14, 32, 32));

    // The same story with the same seed gives the same video; a folder of stories gives the
    // layout `storyreel eval --dir` reads.
    let again = dir.path().join("again.mp4");
    assert!(storyreel(&["generate", "--model", p(&model), "--story", p(&story), "-o", p(&again)]).0);
    assert_eq!(std::fs::read(&video).unwrap(), std::fs::read(&again).unwrap());
    // Context guidance changes the shot that has context; a negative scale is refused by name.
    let guided = dir.path().join("guided.mp4");
    let args = ["generate", "--model", p(&model), "--story", p(&story), "-o", p(&guided), "--context-guidance"];
    let (ok, _, err) = storyreel(&[&args[..], &["1.5"]].concat());
    assert!(ok, "{err}");
    let (plain, with) = (storyreel_media::read_mp4(&video).unwrap().1, storyreel_media::read_mp4(&guided).unwrap().1);
    assert_eq!(plain.len(), with.len());
    assert!(plain[..5] == with[..5] && plain[5..] != with[5..], "only shot 1 has context to guide on");
    let (ok, _, err) = storyreel(&[&args[..args.len() - 1], &["--context-guidance=-1"]].concat());
    assert!(!ok && err.contains("context guidance"), "{err}");
    let stories = dir.path().join("stories");
    std::fs::create_dir_all(&stories).unwrap();
    std::fs::copy(&story, stories.join("a.json")).unwrap();
    std::fs::copy(&story, stories.join("b.json")).unwrap();
    let batch = dir.path().join("batch");
    let (ok, stdout, err) = storyreel(&["generate", "--model", p(&model), "--story", p(&stories), "-o", p(&batch)]);
    assert!(ok, "{err}");
    assert!(stdout.contains("batch_done"), "{stdout}");
    for id in ["a", "b"] {
        assert!(batch.join(format!("videos/{id}.mp4")).is_file() && batch.join(format!("stories/{id}.json")).is_file());
    }

    // A world story's ground truth through the VAE, shot by shot (the reference row).
    let world = dir.path().join("world");
    assert!(storyreel(&["world", "generate", "--stories", "1", "--out", p(&world), "--no-videos"]).0);
    let world_story = std::fs::read_dir(world.join("stories")).unwrap().next().unwrap().unwrap().path();
    let through = dir.path().join("through.mp4");
    let (ok, _, err) =
        storyreel(&["world", "render", "--story", p(&world_story), "--out", p(&through), "--vae", p(&vae)]);
    assert!(ok, "{err}");
    let frames: usize = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&world_story).unwrap())
        .unwrap()["shots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["frames"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(storyreel_media::read_mp4(&through).unwrap().1.len(), frames);
    // Its fidelity against the story's exact frames, whole and per shot; against itself, exact.
    let (ok, out, err) = storyreel(&["eval", "psnr", "--video", p(&through), "--story", p(&world_story), "--json"]);
    assert!(ok, "{err}");
    let score: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(score["whole"]["frames"].as_u64(), Some(frames as u64));
    let db = score["whole"]["psnr_db"].as_f64().unwrap();
    assert!(db > 3.0 && db < 60.0, "{db}");
    let shot_frames: u64 = score["shots"].as_array().unwrap().iter().map(|s| s["frames"].as_u64().unwrap()).sum();
    assert_eq!(shot_frames, frames as u64);
    let (ok, out, err) = storyreel(&["eval", "psnr", "--video", p(&through), "--reference", p(&through)]);
    assert!(ok && out.contains("PSNR inf dB"), "{out}{err}");
    let (ok, _, err) = storyreel(&["eval", "psnr", "--video", p(&through)]);
    assert!(!ok && err.contains("--story"), "{err}");
    // A folder of stories and videos, pooled, with the figures by position inside a shot.
    let pool = dir.path().join("pool");
    std::fs::create_dir_all(pool.join("stories")).unwrap();
    std::fs::create_dir_all(pool.join("videos")).unwrap();
    std::fs::copy(&world_story, pool.join("stories/s.json")).unwrap();
    std::fs::copy(&through, pool.join("videos/s.mp4")).unwrap();
    let (ok, out, err) = storyreel(&["eval", "psnr", "--dir", p(&pool), "--json"]);
    assert!(ok, "{err}");
    let pooled: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!((pooled["psnr_db"].as_f64().unwrap() - db).abs() < 1e-9, "{out}");
    let positions = pooled["by_position"].as_array().unwrap();
    assert_eq!(positions[0]["position"], "frame 0");
    assert_eq!(positions.iter().map(|r| r["frames"].as_u64().unwrap()).sum::<u64>(), frames as u64);
    let not_a_vae = model.join("text");
    let (ok, _, err) =
        storyreel(&["world", "render", "--story", p(&world_story), "--out", p(&through), "--vae", p(&not_a_vae)]);
    assert!(!ok && err.contains("VAE") && err.contains("text"), "{err}");

    // Bad stories, flags and models are errors that name the problem.
    let bad = |json: &str| {
        std::fs::write(&story, json).unwrap();
        let (ok, _, err) = storyreel(&["generate", "--model", p(&model), "--story", p(&story), "-o", p(&video)]);
        assert!(!ok);
        err
    };
    assert!(bad(r#"{"shots": []}"#).contains("no shots"));
    assert!(bad(r#"{"shots": [{"caption": "a fox", "frames": 6}]}"#).contains("4k+1"));
    assert!(bad(r#"{"shots": [{"caption": "a zorblax"}]}"#).contains("zorblax"));
    let err = bad(r#"{"shots": [{"caption": "#);
    assert!(err.contains("line 1, column 23") && err.contains("shots[0].caption"), "{err}");
    std::fs::write(&story, r#"{"shots": [{"caption": "a red fox"}]}"#).unwrap();
    let (ok, _, err) =
        storyreel(&["generate", "--model", p(&model), "--story", p(&story), "-o", p(&video), "--context", "magic"]);
    assert!(!ok && err.contains("magic"), "{err}");
    let (ok, _, err) =
        storyreel(&["generate", "--model", p(&model), "--story", p(&story), "-o", p(&video), "--frames", "8"]);
    assert!(!ok && err.contains("--frames 8"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, _, err) = storyreel(&["generate", "--model", p(&model), "--story", p(&empty), "-o", p(&batch)]);
    assert!(!ok && err.contains("no story files"), "{err}");
    // check-captions: one JSON report; bad counts and missing models are named errors.
    let (ok, stdout, err) = storyreel(&["train", "check-captions", "--model", p(&model), "--stories", "2", "--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["stories"], 2);
    assert_eq!(report["rows"].as_array().map(|r| r.len()), Some(5));
    assert!(report["caption_gain"].as_f64().is_some_and(f64::is_finite));
    let (ok, _, err) = storyreel(&["train", "check-captions", "--model", p(&model), "--stories", "1"]);
    assert!(!ok && err.contains("stories"), "{err}");
    let (ok, _, err) = storyreel(&["train", "check-captions", "--model", p(&dir.path().join("nowhere"))]);
    assert!(!ok && err.contains("nowhere"), "{err}");
    std::fs::remove_file(model.join("storyreel_model.json")).unwrap();
    let (ok, _, err) = storyreel(&["generate", "--model", p(&model), "--story", p(&story), "-o", p(&video)]);
    assert!(!ok && err.contains("storyreel_model.json"), "{err}");
    let (ok, _, err) =
        storyreel(&["generate", "--model", p(&dir.path().join("nowhere")), "--story", p(&story), "-o", p(&video)]);
    assert!(!ok && err.contains("nowhere"), "{err}");
}

#[test]
fn distillation_smoke_run_streams_a_story_from_the_student() {
    let dir = tempfile::tempdir().unwrap();
    let (teacher, _) = train_tiny_models(dir.path());
    let pairs_cfg = dir.path().join("pairs.json");
    std::fs::write(
        &pairs_cfg,
        r#"{"data": {"first_seed": 30, "stories": 1, "width": 32, "height": 32}, "progress": false}"#,
    )
    .unwrap();
    let pairs = dir.path().join("pairs");
    let (ok, stdout, err) =
        storyreel(&["train", "ode-pairs", "--config", p(&pairs_cfg), "--teacher", p(&teacher), "--out", p(&pairs)]);
    assert!(ok, "{err}");
    let made: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(made["pairs"].as_u64().unwrap() >= 2, "{stdout}");

    let quiet = dir.path().join("quiet.json");
    std::fs::write(&quiet, r#"{"train": {"progress": false}}"#).unwrap();
    let init = dir.path().join("ode-init");
    let (ok, _, err) = storyreel(&[
        "train",
        "ode-init",
        "--config",
        p(&quiet),
        "--teacher",
        p(&teacher),
        "--pairs",
        p(&pairs),
        "--steps",
        "2",
        "--out",
        p(&init),
    ]);
    assert!(ok, "{err}");
    let dmd_cfg = dir.path().join("dmd.json");
    std::fs::write(&dmd_cfg, r#"{"data": {"first_seed": 30, "stories": 1}, "generator_every": 2, "progress": false}"#)
        .unwrap();
    let dmd = dir.path().join("dmd");
    let (ok, stdout, err) = storyreel(&[
        "train",
        "dmd",
        "--config",
        p(&dmd_cfg),
        "--teacher",
        p(&teacher),
        "--student",
        p(&init.join("model")),
        "--steps",
        "2",
        "--out",
        p(&dmd),
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((report["steps"].as_u64(), report["generator_steps"].as_u64()), (Some(2), Some(1)));

    // Stage 4 on the stage-3 student: whole stories on its own history, LoRA merged at the end;
    // its adapters merge again by hand into the same weights.
    let long_cfg = dir.path().join("long.json");
    std::fs::write(
        &long_cfg,
        r#"{"data": {"first_seed": 30, "stories": 1}, "generator_every": 2, "lora": {"rank": 2, "alpha": 2.0},
            "progress": false}"#,
    )
    .unwrap();
    let long = dir.path().join("long");
    let (ok, stdout, err) = storyreel(&[
        "train",
        "dmd-long",
        "--config",
        p(&long_cfg),
        "--teacher",
        p(&teacher),
        "--student",
        p(&dmd.join("model")),
        "--steps",
        "3",
        "--out",
        p(&long),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("stage 4"), "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["steps"].as_u64(), Some(3));
    let merged = dir.path().join("merged");
    let (ok, stdout, err) = storyreel(&[
        "train",
        "merge-lora",
        "--model",
        p(&dmd.join("model")),
        "--lora",
        p(&long.join("generator-lora")),
        "--out",
        p(&merged),
    ]);
    assert!(ok, "{err}");
    assert!(serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["merged"].as_u64().unwrap() > 0);
    assert_eq!(
        std::fs::read(merged.join("dit/model.safetensors")).unwrap(),
        std::fs::read(long.join("model/dit/model.safetensors")).unwrap()
    );
    let (ok, _, err) = storyreel(&[
        "train",
        "merge-lora",
        "--model",
        p(&dmd.join("model")),
        "--lora",
        p(&dir.path().join("nowhere")),
        "--out",
        p(&dir.path().join("m2")),
    ]);
    assert!(!ok && err.contains("nowhere"), "{err}");

    // The distilled student generates a story chunk by chunk; teacher-only flags are refused.
    let story = dir.path().join("story.json");
    std::fs::write(
        &story,
        r#"{"global_caption": "a red fox in a meadow.", "seed": 4,
            "shots": [{"caption": "a red fox walks", "frames": 17}, {"caption": "the same red fox jumps", "frames": 9}]}"#,
    )
    .unwrap();
    let video = dir.path().join("student.mp4");
    let student = dmd.join("model");
    let (ok, stdout, err) =
        storyreel(&["generate", "--model", p(&student), "--story", p(&story), "-o", p(&video), "--json"]);
    assert!(ok, "{err}");
    let done: serde_json::Value =
        serde_json::from_str(stdout.lines().find(|l| l.contains("story_done")).unwrap()).unwrap();
    let first = done["first_frame_seconds"].as_f64().unwrap();
    assert!(first > 0.0 && first <= done["seconds"].as_f64().unwrap(), "{done}");
    let part = |k: &str| done["times"][k].as_f64().unwrap();
    assert!(part("denoise_s") > 0.0 && part("decode_s") > 0.0, "{done}");
    assert!(part("denoise_s") + part("decode_s") + part("context_s") <= done["seconds"].as_f64().unwrap(), "{done}");
    assert_eq!(storyreel_media::read_mp4(&video).unwrap().1.len(), 26);
    let (ok, _, err) =
        storyreel(&["generate", "--model", p(&student), "--story", p(&story), "-o", p(&video), "--steps", "4"]);
    assert!(!ok && err.contains("few-step student"), "{err}");
    let (ok, _, err) = storyreel(&[
        "generate",
        "--model",
        p(&student),
        "--story",
        p(&story),
        "-o",
        p(&video),
        "--context-guidance",
        "1",
    ]);
    assert!(!ok && err.contains("few-step student"), "{err}");
    for stage in ["ode-pairs", "ode-init", "dmd", "dmd-long"] {
        let (ok, stdout, _) = storyreel(&["train", "default-config", stage]);
        assert!(ok && serde_json::from_str::<serde_json::Value>(&stdout).is_ok(), "{stage}");
    }
}

#[test]
fn generate_without_a_model_flag_uses_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let story = dir.path().join("story.json");
    std::fs::write(
        &story,
        r#"{"global_caption": "a story about the pink rabbit.", "seed": 2,
            "shots": [{"caption": "A pink rabbit walks right in a meadow in daylight, wide shot.", "frames": 9}]}"#,
    )
    .unwrap();
    let video = dir.path().join("default.mp4");
    let out = Command::new(env!("CARGO_BIN_EXE_storyreel"))
        .args(["generate", "--story", p(&story), "-o", p(&video), "--json"])
        .env("STORYREEL_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/toy-student/storyreel_model.json");
    if shipped.is_file() {
        assert!(out.status.success(), "{err}");
        assert_eq!(storyreel_media::read_mp4(&video).unwrap().1.len(), 9);
        // Unpacked once into the cache, reused after; its tiny decoder and its VAE both decode.
        for (decoder, name) in [("tiny", "tiny.mp4"), ("full", "full.mp4")] {
            let out = Command::new(env!("CARGO_BIN_EXE_storyreel"))
                .args(["generate", "--story", p(&story), "-o", p(&dir.path().join(name)), "--decoder", decoder])
                .env("STORYREEL_CACHE", dir.path().join("cache"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(storyreel_media::read_mp4(dir.path().join(name)).unwrap().1.len(), 9);
        }
        assert_eq!(std::fs::read_dir(dir.path().join("cache")).unwrap().count(), 1);
        // A cache that cannot be written is named in the error.
        let blocked = dir.path().join("not-a-folder");
        std::fs::write(&blocked, "x").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_storyreel"))
            .args(["generate", "--story", p(&story), "-o", p(&dir.path().join("b.mp4"))])
            .env("STORYREEL_CACHE", &blocked)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("unpacking the default model") && err.contains("not-a-folder"),
            "{err}"
        );
    } else {
        assert!(!out.status.success());
        assert!(err.contains("without the default model") && err.contains("--model"), "{err}");
    }
}

#[test]
fn the_shipped_teacher_generates_a_story_from_its_own_context() {
    let teacher = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/toy-teacher");
    let dir = tempfile::tempdir().unwrap();
    let story = dir.path().join("story.json");
    std::fs::write(
        &story,
        r#"{"global_caption": "a story about the pink rabbit.", "seed": 3, "shots": [
            {"caption": "A pink rabbit walks right in a meadow in daylight, wide shot.", "frames": 5},
            {"caption": "The same pink rabbit jumps in the same meadow at dusk, close-up.", "frames": 5}]}"#,
    )
    .unwrap();
    let video = dir.path().join("teacher.mp4");
    let (ok, stdout, err) = storyreel(&[
        "generate",
        "--model",
        p(&teacher),
        "--story",
        p(&story),
        "-o",
        p(&video),
        "--steps",
        "2",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert_eq!(storyreel_media::read_mp4(&video).unwrap().1.len(), 10);
    // The second shot's context was picked from the first shot's decoded frames.
    let second = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "shot_started" && e["shot"] == 1)
        .expect("a shot_started event for shot 1");
    assert!(second["context"].as_array().is_some_and(|c| !c.is_empty()), "{second}");
}

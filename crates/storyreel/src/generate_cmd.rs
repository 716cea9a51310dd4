//! `storyreel generate`: a whole story from a story model folder, shot by shot, each shot
//! conditioned on frames picked from the story's own earlier output and written to the video as
//! soon as it is decoded.
//!
//! Story input: our native story JSON (`global_caption`, `shots[].caption`, optional
//! `shots[].frames` and `seed`; a `storyreel world` story is one). `--story` may also be a folder
//! (a world dataset or a folder of story JSON files); then `-o` is a folder that receives
//! `stories/<id>.json` and `videos/<id>.mp4`, the layout `storyreel eval --dir` reads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use storyreel_engine::context::policy_by_name;
use storyreel_engine::{
    generate_student_story, generate_teacher_story, EulerSampler, ModelKind, ShotRequest, StoryModel, StoryTimes,
    StudentStoryEvents, StudentStoryOptions, TeacherStoryOptions,
};

use crate::device::parse_device;
use crate::frames_out::sink_for;

/// Flags of `generate`.
#[derive(clap::Args)]
pub struct Args {
    /// Story model folder (storyreel_model.json + dit/ + vae/ + text/), e.g. assets/models/toy-teacher
    /// (default: the streaming student built into this binary, assets/models/toy-student).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Story JSON file, or a folder of stories (a world dataset, or *.json files).
    #[arg(long)]
    pub story: PathBuf,
    /// Output: an .mp4 / .png contact sheet / .gif / PNG folder for one story; a folder for many.
    #[arg(short = 'o', long)]
    pub out: PathBuf,
    /// Seed of the noise (default: the story's own seed, else 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Euler steps of a teacher (default: the model card's; a student always uses its own few steps).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale of a teacher (default: the model card's; 1 turns CFG off).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Context memory: dynamic (ShotStream's sampling), first-frame (the first frame of each earlier shot) or none (default: the card's).
    #[arg(long)]
    pub context: Option<String>,
    /// Frames of shots whose story gives none (4k+1).
    #[arg(long, default_value_t = 25)]
    pub frames: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON event per line on stdout (shot done, story done) instead of progress bars.
    #[arg(long)]
    pub json: bool,
}

/// A story as `generate` reads it.
#[derive(Debug, Deserialize)]
struct StoryScript {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    global_caption: String,
    shots: Vec<ScriptShot>,
}

#[derive(Debug, Deserialize)]
struct ScriptShot {
    caption: String,
    #[serde(default)]
    frames: Option<usize>,
}

/// Longest story and shot `generate` accepts (a guard against absurd inputs).
const MAX_SHOTS: usize = 64;
const MAX_SHOT_FRAMES: usize = 1001;

fn read_script(path: &Path) -> Result<StoryScript> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading story {}", path.display()))?;
    let script: StoryScript =
        serde_json::from_str(&text).with_context(|| format!("{}: not a story JSON", path.display()))?;
    if script.shots.is_empty() {
        bail!("{}: the story has no shots", path.display());
    }
    if script.shots.len() > MAX_SHOTS {
        bail!("{}: {} shots; at most {MAX_SHOTS} are supported", path.display(), script.shots.len());
    }
    for (i, s) in script.shots.iter().enumerate() {
        if s.caption.trim().is_empty() {
            bail!("{}: shot {i} has an empty caption", path.display());
        }
        if let Some(f) = s.frames {
            if f == 0 || !(f - 1).is_multiple_of(4) || f > MAX_SHOT_FRAMES {
                bail!("{}: shot {i} has {f} frames; shots are 4k+1 frames, at most {MAX_SHOT_FRAMES}", path.display());
            }
        }
    }
    Ok(script)
}

/// Story files under a folder: a dataset's `stories/`, else the folder's own `*.json`.
fn story_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let stories = if dir.join("stories").is_dir() { dir.join("stories") } else { dir.to_path_buf() };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&stories)
        .with_context(|| format!("listing {}", stories.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no story JSON files found", stories.display());
    }
    Ok(files)
}

/// Runs `storyreel generate`.
pub fn run(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => crate::default_model::folder()?,
    };
    let model = StoryModel::load(&model_dir, &device)
        .with_context(|| format!("loading the story model {}", model_dir.display()))?;
    if args.frames == 0 || !(args.frames - 1).is_multiple_of(4) || args.frames > MAX_SHOT_FRAMES {
        bail!("--frames {} must be 4k+1 and at most {MAX_SHOT_FRAMES}", args.frames);
    }
    if args.story.is_dir() {
        let files = story_files(&args.story)?;
        std::fs::create_dir_all(args.out.join("videos"))
            .with_context(|| format!("creating {}", args.out.join("videos").display()))?;
        std::fs::create_dir_all(args.out.join("stories"))
            .with_context(|| format!("creating {}", args.out.join("stories").display()))?;
        let started = Instant::now();
        let mut frames = 0usize;
        let mut times = StoryTimes::default();
        for (i, file) in files.iter().enumerate() {
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("story").to_string();
            let video = args.out.join("videos").join(format!("{stem}.mp4"));
            if !args.json {
                eprintln!("[{}/{}] {stem}", i + 1, files.len());
            }
            let (written, t) = generate_one(&model, args, file, &video)?;
            frames += written;
            times += t;
            std::fs::copy(file, args.out.join("stories").join(format!("{stem}.json")))
                .with_context(|| format!("copying {}", file.display()))?;
        }
        let secs = started.elapsed().as_secs_f64();
        let line = serde_json::json!({
            "event": "batch_done", "stories": files.len(), "frames": frames,
            "seconds": secs, "frames_per_second": frames as f64 / secs.max(1e-9), "times": times,
            "out": args.out.display().to_string(),
        });
        println!("{line}");
        Ok(())
    } else {
        generate_one(&model, args, &args.story, &args.out)?;
        Ok(())
    }
}

/// The output side of one story while it is generated.
struct StreamState {
    sink: Box<dyn storyreel_media::FrameSink + Send>,
    /// The shot whose frames are being written (begun, not yet ended).
    open_shot: Option<usize>,
    written: usize,
    /// Seconds from the start until the first frame reached the sink.
    first_frame_s: Option<f64>,
}

/// Generates one story into `out`; returns the frames written and where the time went.
fn generate_one(model: &StoryModel, args: &Args, story_path: &Path, out: &Path) -> Result<(usize, StoryTimes)> {
    let script = read_script(story_path)?;
    let card = &model.card;
    let memory_name = args.context.clone().unwrap_or_else(|| if card.uses_context { "dynamic" } else { "none" }.into());
    let memory = policy_by_name(&memory_name, card.context_frames)
        .with_context(|| format!("--context {memory_name:?}: choose dynamic, first-frame or none"))?;
    if card.kind == ModelKind::Student && (args.steps.is_some() || args.guidance.is_some()) {
        bail!("--steps and --guidance set a teacher's sampler; {} is a few-step student", model.dir.display());
    }
    let sampler = EulerSampler::new(
        args.steps.unwrap_or(card.sampler.steps),
        card.sampler.shift,
        args.guidance.unwrap_or(card.sampler.guidance),
    )?;
    let seed = args.seed.or(script.seed).unwrap_or(0);
    let shots: Vec<ShotRequest> = script
        .shots
        .iter()
        .map(|s| ShotRequest { caption: s.caption.clone(), frames: s.frames.unwrap_or(args.frames) })
        .collect();
    let total_steps = match (&card.kind, &card.student) {
        (ModelKind::Student, Some(st)) => {
            shots.iter().map(|s| ((s.frames.saturating_sub(1) / 4 + 1).div_ceil(st.chunk_frames.max(1))) as u64).sum()
        }
        _ => (shots.len() * sampler.timesteps().len()) as u64,
    };
    let unit = if card.kind == ModelKind::Student { "chunks" } else { "steps" };
    let fps = card.fps.round().max(1.0) as u32;
    let sink = sink_for(out, fps)?
        .with_context(|| format!("{}: use .mp4, .png, .gif or a folder for a story's frames", out.display()))?;
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total_steps);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let started = Instant::now();
    let id = script.id.clone().unwrap_or_else(|| story_path.display().to_string());
    // Both callbacks write to the sink: a student's frames arrive chunk by chunk, the shot's
    // end after its last chunk; a teacher's whole shot arrives at once.
    let state = std::cell::RefCell::new(StreamState { sink, open_shot: None, written: 0, first_frame_s: None });
    let media = |e: storyreel_media::MediaError| {
        storyreel_engine::EngineError::Output(format!("writing {}: {e}", out.display()))
    };
    let on_frames = |shot: usize, frames: &candle_core::Tensor| -> storyreel_engine::Result<()> {
        let rgb = storyreel_engine::pixels::to_rgb_frames(frames)?;
        let mut st = state.borrow_mut();
        if st.open_shot != Some(shot) {
            st.sink.begin_shot(shot, &script.shots[shot].caption).map_err(media)?;
            st.open_shot = Some(shot);
        }
        st.sink.push_frames(&rgb).map_err(media)?;
        st.sink.flush().map_err(media)?;
        st.written += rgb.len();
        if st.first_frame_s.is_none() {
            st.first_frame_s = Some(started.elapsed().as_secs_f64());
        }
        Ok(())
    };
    let mut on_shot = |shot: &storyreel_engine::GeneratedShot| -> storyreel_engine::Result<()> {
        if state.borrow().open_shot != Some(shot.shot) {
            on_frames(shot.shot, &shot.frames)?;
        }
        let mut st = state.borrow_mut();
        st.sink.end_shot().map_err(media)?;
        st.sink.flush().map_err(media)?;
        st.open_shot = None;
        if args.json {
            let picks: Vec<[usize; 2]> = shot.context.iter().map(|p| [p.shot, p.frame]).collect();
            let line = serde_json::json!({
                "event": "shot_done", "story": id, "shot": shot.shot, "frames": shot.frames.dim(0)?,
                "context": picks, "seconds": started.elapsed().as_secs_f64(),
            });
            println!("{line}");
        }
        Ok(())
    };
    let mut on_step = |shot: usize, _step: usize| {
        bar.set_message(format!("shot {}/{}", shot + 1, script.shots.len()));
        bar.inc(1);
    };
    let times = match card.kind {
        ModelKind::Teacher => {
            let options = TeacherStoryOptions { seed, sampler, memory };
            generate_teacher_story(model, &script.global_caption, &shots, &options, &mut on_shot, &mut on_step, &|| {
                false
            })
        }
        ModelKind::Student => {
            let options = StudentStoryOptions { seed, memory };
            let mut on_chunk = |shot: usize, chunk: usize, _chunks: usize| on_step(shot, chunk);
            let mut on_chunk_frames = |shot: usize, frames: &candle_core::Tensor| on_frames(shot, frames);
            let events = StudentStoryEvents {
                on_frames: &mut on_chunk_frames,
                on_shot: &mut on_shot,
                on_chunk: &mut on_chunk,
                cancelled: &|| false,
            };
            generate_student_story(model, &script.global_caption, &shots, &options, events)
        }
    }
    .with_context(|| format!("generating {}", story_path.display()))?;
    bar.finish_and_clear();
    let StreamState { mut sink, written, first_frame_s, .. } = state.into_inner();
    let report = sink.finish().with_context(|| format!("finishing {}", out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let first = first_frame_s.unwrap_or(secs);
    let line = serde_json::json!({
        "event": "story_done", "story": id, "shots": shots.len(), "frames": report.frames,
        "seconds": secs, "frames_per_second": report.frames as f64 / secs.max(1e-9),
        "first_frame_seconds": first, "times": times, "out": out.display().to_string(),
    });
    if args.json {
        println!("{line}");
    } else {
        eprintln!(
            "wrote {} ({} shots, {} frames, {:.1} s, {:.1} frames/s, first frame after {:.2} s; \
             denoising {:.1} s, decoding {:.1} s, context {:.1} s)",
            out.display(),
            shots.len(),
            report.frames,
            secs,
            report.frames as f64 / secs.max(1e-9),
            first,
            times.denoise_s,
            times.decode_s,
            times.context_s
        );
    }
    Ok((written, times))
}

//! `storyreel generate`: a whole story from a story model folder, shot by shot, each shot
//! conditioned on frames picked from the story's own earlier output and written to the video as
//! soon as it is decoded.
//!
//! Story input: any format `storyreel-story` reads (our native JSON, ShotStream's caption JSON
//! and CSV index, LongLive JSONL, HoloCine, StoryMem, plain text; see docs/STORY_FORMATS.md).
//! A file with several stories, or a folder of them, makes `-o` a folder that receives
//! `stories/<id>.json` and `videos/<id>.mp4`, the layout `storyreel eval --dir` reads.
//! `--interactive` reads the next shot's caption from stdin while the current one is generated.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use storyreel_engine::context::{policy_by_name, POLICY_NAMES};
use storyreel_engine::{
    shot_progress_units, EngineError, EulerSampler, ModelKind, ShotEvents, ShotRequest, StoryModel, StoryOptions,
    StoryStream, StoryTimes,
};
use storyreel_nn::codec::VideoCodec;
use storyreel_story::{Limits, Story, StoryFormat};

use crate::codec::{load_codec, DecoderChoice};
use crate::device::parse_device;
use crate::frames_out::sink_for;

/// Flags of `generate`.
#[derive(clap::Args)]
pub struct Args {
    /// Story model folder (storyreel_model.json + dit/ + vae/ + text/), e.g. assets/models/toy-teacher
    /// (default: the streaming student built into this binary, assets/models/toy-student).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Story file (any supported format), a folder of stories, or `-` for stdin. Optional with
    /// --interactive, whose shots then all come from stdin.
    #[arg(long)]
    pub story: Option<PathBuf>,
    /// Story format: native, shotstream-json, shotstream-csv, longlive-jsonl, holocine, storymem
    /// or text (default: detected from the file name and content).
    #[arg(long)]
    pub format: Option<String>,
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
    /// Context guidance scale of a teacher: how much further to push each shot from what the
    /// teacher draws with the context dropped, toward what it draws with it (default: the
    /// model card's, 0 = off; each step then costs one more model call).
    #[arg(long)]
    pub context_guidance: Option<f32>,
    /// Context memory: dynamic (ShotStream's sampling), caption (the earlier shots whose captions match best), first-frame (the first frame of each earlier shot) or none (default: the card's).
    #[arg(long)]
    pub context: Option<String>,
    /// Frames of shots whose story gives none (4k+1).
    #[arg(long, default_value_t = 25)]
    pub frames: usize,
    /// Frame rate of the output video (default: the model card's).
    #[arg(long)]
    pub fps: Option<u32>,
    /// Decoder of the frames: full (the model's VAE) or tiny (a TAEHV-style decoder in the
    /// model folder). Default: the model card's (the VAE unless the card names its tiny decoder).
    #[arg(long, value_enum)]
    pub decoder: Option<DecoderChoice>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Read the next shot's caption from stdin (one line per shot) while the current shot is
    /// generated; an empty input line is skipped, end of input (Ctrl-D) ends the story.
    #[arg(long)]
    pub interactive: bool,
    /// The global caption of an interactive story that has no --story.
    #[arg(long)]
    pub global: Option<String>,
    /// Print one JSON event per line on stdout (shot started, chunk, shot done, story done) instead of progress bars.
    #[arg(long)]
    pub json: bool,
}

/// Longest story and shot `generate` accepts (a guard against absurd inputs).
const MAX_SHOT_FRAMES: usize = 1001;

/// Set by Ctrl-C: the running shot stops and the output is finished with what was made.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // A second Ctrl-C ends the process at once.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// The first Ctrl-C stops generation cleanly (the video so far is finished and playable); a
/// second one exits at once.
fn stop_cleanly_on_interrupt() {
    #[cfg(unix)]
    // SAFETY: installs an async-signal-safe handler that only touches an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t);
    }
}

fn story_format(args: &Args) -> Result<Option<StoryFormat>> {
    args.format
        .as_deref()
        .map(|name| {
            StoryFormat::from_name(name).with_context(|| {
                let names: Vec<&str> = StoryFormat::ALL.iter().map(|f| f.name()).collect();
                format!("--format {name:?}: choose one of {}", names.join(", "))
            })
        })
        .transpose()
}

/// A story to generate and the file it came from when the file holds only it (a folder run
/// copies that file next to the video, world annotations and all).
struct LoadedStory {
    story: Story,
    sole_file: Option<PathBuf>,
}

/// Stories at `path`: one file (maybe holding several), stdin (`-`), or a folder of files
/// (a world dataset's `stories/`, else the folder's own story files).
fn load_stories(path: &Path, format: Option<StoryFormat>, limits: &Limits) -> Result<Vec<LoadedStory>> {
    let stories = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading the story from stdin")?;
        let format = format.unwrap_or_else(|| storyreel_story::detect_format("<stdin>", &text));
        storyreel_story::parse_stories(&text, format, "<stdin>")?
            .into_iter()
            .map(|story| LoadedStory { story, sole_file: None })
            .collect()
    } else if path.is_dir() {
        let dir = if path.join("stories").is_dir() { path.join("stories") } else { path.to_path_buf() };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "json" | "jsonl" | "txt" | "csv"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{}: no story files found (.json, .jsonl, .txt, .csv)", dir.display());
        }
        let mut all = Vec::new();
        for file in files {
            all.extend(read_file_stories(&file, format)?);
        }
        all
    } else {
        read_file_stories(path, format)?
    };
    for (i, LoadedStory { story, .. }) in stories.iter().enumerate() {
        let origin = story.id.clone().unwrap_or_else(|| format!("{} story {}", path.display(), i + 1));
        storyreel_story::validate(story, limits, &origin)?;
    }
    Ok(stories)
}

fn read_file_stories(file: &Path, format: Option<StoryFormat>) -> Result<Vec<LoadedStory>> {
    let stories = storyreel_story::read_stories(file, format)?;
    // Only a native story is copied verbatim: `eval` reads the copies as native JSON.
    let native = format.unwrap_or_else(|| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        storyreel_story::detect_format(&file.display().to_string(), &text)
    }) == StoryFormat::Native;
    let sole = stories.len() == 1 && native;
    Ok(stories.into_iter().map(|story| LoadedStory { story, sole_file: sole.then(|| file.to_path_buf()) }).collect())
}

/// A story as our native JSON (version 1), for a folder run's `stories/`.
fn native_json(story: &Story) -> String {
    let shots: Vec<serde_json::Value> =
        story.shots.iter().map(|s| serde_json::json!({"caption": s.caption, "frames": s.frames})).collect();
    let json = serde_json::json!({
        "version": 1, "id": story.id, "seed": story.seed, "global_caption": story.global_caption, "shots": shots,
    });
    serde_json::to_string_pretty(&json).unwrap_or_default()
}

/// Runs `storyreel generate`.
pub fn run(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    if args.frames == 0 || !(args.frames - 1).is_multiple_of(4) || args.frames > MAX_SHOT_FRAMES {
        bail!("--frames {} must be 4k+1 and at most {MAX_SHOT_FRAMES}", args.frames);
    }
    if args.story.is_none() && !args.interactive {
        bail!("give --story FILE (or --interactive to type the shots)");
    }
    let limits = Limits { max_shot_frames: MAX_SHOT_FRAMES, ..Limits::default() };
    let format = story_format(args)?;
    let stories = match &args.story {
        Some(path) => load_stories(path, format, &limits)?,
        None => Vec::new(),
    };
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => crate::default_model::folder()?,
    };
    let model = StoryModel::load(&model_dir, &device)
        .with_context(|| format!("loading the story model {}", model_dir.display()))?;
    if model.card.kind == ModelKind::Student
        && (args.steps.is_some() || args.guidance.is_some() || args.context_guidance.is_some())
    {
        bail!(
            "--steps, --guidance and --context-guidance set a teacher's sampler; {} is a few-step student",
            model.dir.display()
        );
    }
    let decoder: Option<Arc<dyn VideoCodec>> = match args.decoder {
        None => None,
        Some(DecoderChoice::Wan) => Some(model.vae.clone()),
        Some(DecoderChoice::Tiny) => {
            Some(load_codec(&model_dir, DecoderChoice::Tiny, candle_core::DType::F32, &device)?)
        }
    };
    for (i, LoadedStory { story, .. }) in stories.iter().enumerate() {
        check_words(&model, story)
            .with_context(|| format!("story {}", story.id.clone().unwrap_or_else(|| (i + 1).to_string())))?;
    }
    stop_cleanly_on_interrupt();
    if args.interactive {
        let story = match stories.len() {
            0 => Story { global_caption: args.global.clone().unwrap_or_default(), ..Story::default() },
            1 => stories.into_iter().next().map(|l| l.story).unwrap_or_default(),
            n => bail!("--interactive continues one story; the input holds {n}"),
        };
        if args.out.is_dir() {
            bail!("{} is a folder; --interactive writes one video (.mp4, .png, .gif)", args.out.display());
        }
        let shots = interactive_shots(story.shots.clone(), args.json);
        generate_one(&model, args, &decoder, &story, shots, &args.out, true)?;
        return Ok(());
    }
    let batch = stories.len() > 1 || args.story.as_ref().is_some_and(|p| p.is_dir());
    if !batch {
        let story = stories.into_iter().next().context("the input holds no story")?.story;
        let shots = story.shots.clone().into_iter().map(Some).collect::<Vec<_>>().into_iter();
        generate_one(&model, args, &decoder, &story, shots, &args.out, false)?;
        return Ok(());
    }
    std::fs::create_dir_all(args.out.join("videos"))
        .with_context(|| format!("creating {}", args.out.join("videos").display()))?;
    std::fs::create_dir_all(args.out.join("stories"))
        .with_context(|| format!("creating {}", args.out.join("stories").display()))?;
    let started = Instant::now();
    let mut frames = 0usize;
    let mut times = StoryTimes::default();
    for (i, LoadedStory { story, sole_file }) in stories.iter().enumerate() {
        let stem = safe_stem(story.id.as_deref(), i);
        let video = args.out.join("videos").join(format!("{stem}.mp4"));
        if !args.json {
            eprintln!("[{}/{}] {stem}", i + 1, stories.len());
        }
        let shots = story.shots.clone().into_iter().map(Some).collect::<Vec<_>>().into_iter();
        let (written, t) = generate_one(&model, args, &decoder, story, shots, &video, false)?;
        frames += written;
        times += t;
        let copy = args.out.join("stories").join(format!("{stem}.json"));
        match sole_file {
            Some(file) => std::fs::copy(file, &copy).map(|_| ()),
            None => std::fs::write(&copy, native_json(story)),
        }
        .with_context(|| format!("writing {}", copy.display()))?;
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "event": "batch_done", "stories": stories.len(), "frames": frames,
        "seconds": secs, "frames_per_second": frames as f64 / secs.max(1e-9), "times": times,
        "out": args.out.display().to_string(),
    });
    println!("{line}");
    Ok(())
}

/// Checks, before anything is generated, that the model's text encoder reads every caption of
/// `story`, naming the first caption that has unknown words.
fn check_words(model: &StoryModel, story: &Story) -> Result<()> {
    let tokenizer = model.text.tokenizer();
    let fields = std::iter::once(("the global caption".to_string(), &story.global_caption))
        .chain(story.shots.iter().enumerate().map(|(k, s)| (format!("shot {}", k + 1), &s.caption)));
    for (what, caption) in fields {
        let unknown = tokenizer.tokenize(caption, usize::MAX).unknown;
        if !unknown.is_empty() {
            let words: Vec<String> = unknown.iter().map(|w| format!("{w:?}")).collect();
            bail!(
                "{what} uses word(s) the model's text encoder does not know: {} (its vocabulary has {} words: {})",
                words.join(", "),
                tokenizer.len(),
                model.dir.join("text/vocab.txt").display()
            );
        }
    }
    Ok(())
}

/// A file name for the `i`-th story: its id with anything but letters, digits, `-` and `_`
/// replaced, so an id can never name a path outside the output folder.
fn safe_stem(id: Option<&str>, i: usize) -> String {
    let stem: String = id
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(80)
        .collect();
    if stem.trim_matches('_').is_empty() {
        format!("story-{:03}", i + 1)
    } else {
        stem
    }
}

/// The shots of an interactive story: the given ones first, then one per line of stdin, read
/// on a thread so that typing goes on while a shot is generated. `None` asks the generator to
/// wait for the next line; the iterator ends at end of input.
fn interactive_shots(
    given: Vec<storyreel_story::Shot>,
    json: bool,
) -> impl Iterator<Item = Option<storyreel_story::Shot>> {
    let (tx, rx) = mpsc::channel::<storyreel_story::Shot>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            let caption = line.trim();
            if caption.is_empty() || caption.starts_with('#') {
                continue;
            }
            if tx.send(storyreel_story::Shot { caption: caption.to_string(), frames: None }).is_err() {
                break;
            }
        }
    });
    let mut given = given.into_iter();
    let prompt = !json && std::io::stdin().is_terminal();
    let mut asked = false;
    std::iter::from_fn(move || {
        if let Some(shot) = given.next() {
            return Some(Some(shot));
        }
        match rx.try_recv() {
            Ok(shot) => {
                asked = false;
                Some(Some(shot))
            }
            Err(mpsc::TryRecvError::Disconnected) => None,
            Err(mpsc::TryRecvError::Empty) if !asked => {
                asked = true;
                Some(None)
            }
            Err(mpsc::TryRecvError::Empty) => {
                if prompt {
                    eprint!("next shot> ");
                }
                // Blocks until the person types the next shot or ends the input.
                let next = rx.recv().ok().map(Some);
                asked = false;
                next
            }
        }
    })
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

/// Progress bars: one line per shot, counting its chunks (a student) or steps (a teacher);
/// finished shots keep their line.
struct ShotBars {
    multi: MultiProgress,
    current: Option<ProgressBar>,
    unit: &'static str,
}

impl ShotBars {
    fn new(hidden: bool, unit: &'static str) -> Self {
        let target = if hidden { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        Self { multi: MultiProgress::with_draw_target(target), current: None, unit }
    }

    fn start(&mut self, label: String, units: usize) {
        let bar = self.multi.add(ProgressBar::new(units as u64));
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{msg:40}} [{{bar:24}}] {{pos}}/{{len}} {} {{elapsed_precise}}",
                self.unit
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(label);
        self.current = Some(bar);
    }

    fn set(&self, done: usize) {
        if let Some(bar) = &self.current {
            bar.set_position(done as u64);
        }
    }

    fn finish(&mut self, note: &str) {
        if let Some(bar) = self.current.take() {
            if !note.is_empty() {
                bar.set_message(format!("{} {note}", bar.message()));
            }
            bar.finish();
        }
    }

    /// Prints a line above the bars without tearing them.
    fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }
}

/// Shortens a caption for a progress line.
fn short(caption: &str, max: usize) -> String {
    if caption.chars().count() <= max {
        caption.to_string()
    } else {
        format!("{}…", caption.chars().take(max.saturating_sub(1)).collect::<String>())
    }
}

/// Generates one story into `out` from `shots` (`None` from it means the next shot is not
/// ready yet; it is asked again); returns the frames written and where the time went.
fn generate_one(
    model: &StoryModel,
    args: &Args,
    decoder: &Option<Arc<dyn VideoCodec>>,
    story: &Story,
    shots: impl Iterator<Item = Option<storyreel_story::Shot>>,
    out: &Path,
    interactive: bool,
) -> Result<(usize, StoryTimes)> {
    let card = &model.card;
    let memory_name = args.context.clone().unwrap_or_else(|| card.default_context_policy().to_string());
    let memory = policy_by_name(&memory_name, card.context_frames)
        .with_context(|| format!("--context {memory_name:?}: choose one of {}", POLICY_NAMES.join(", ")))?;
    let sampler = EulerSampler::new(
        args.steps.unwrap_or(card.sampler.steps),
        card.sampler.shift,
        args.guidance.unwrap_or(card.sampler.guidance),
    )?
    .with_context_guidance(args.context_guidance.unwrap_or(card.sampler.context_guidance))?;
    let seed = args.seed.or(story.seed).unwrap_or(0);
    let fps = args.fps.unwrap_or_else(|| card.fps.round().max(1.0) as u32);
    let sink = sink_for(out, fps)?
        .with_context(|| format!("{}: use .mp4, .png, .gif or a folder for a story's frames", out.display()))?;
    let options = StoryOptions { seed, memory, sampler: sampler.clone(), decoder: decoder.clone() };
    let mut stream = StoryStream::new(model, &story.global_caption, options)?;
    let given_shots = if interactive { None } else { Some(story.shots.len()) };
    let unit = if card.kind == ModelKind::Student { "chunks" } else { "steps" };
    let mut bars = ShotBars::new(args.json, unit);
    let id = story.id.clone().unwrap_or_else(|| out.display().to_string());
    let started = Instant::now();
    let mut state = StreamState { sink, open_shot: None, written: 0, first_frame_s: None };
    let mut captions: Vec<String> = Vec::new();
    let mut stopped = None;
    for next in shots {
        let Some(shot) = next else {
            if !args.json {
                bars.println(&format!(
                    "waiting for shot {} (type its caption; Ctrl-D ends the story)",
                    captions.len() + 1
                ));
            }
            continue;
        };
        let k = stream.shots_done();
        if interactive {
            // A typed caption the model cannot read is refused on its own; the story goes on.
            let unknown = model.text.tokenizer().tokenize(&shot.caption, usize::MAX).unknown;
            if !unknown.is_empty() {
                let words: Vec<String> = unknown.iter().map(|w| format!("{w:?}")).collect();
                let message = format!(
                    "shot {} refused: the model's text encoder does not know the word(s) {}; type it again",
                    k + 1,
                    words.join(", ")
                );
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"event": "shot_refused", "story": id, "shot": k, "error": message})
                    );
                } else {
                    bars.println(&message);
                }
                continue;
            }
        }
        let request = ShotRequest { caption: shot.caption.clone(), frames: shot.frames.unwrap_or(args.frames) };
        if request.frames == 0 || !(request.frames - 1).is_multiple_of(4) || request.frames > MAX_SHOT_FRAMES {
            bail!("shot {}: {} frames; shots are 4k+1 frames, at most {MAX_SHOT_FRAMES}", k + 1, request.frames);
        }
        let units = shot_progress_units(model, &sampler, request.frames)?;
        let of = given_shots.map(|n| format!("/{n}")).unwrap_or_default();
        bars.start(format!("shot {}{of} {}", k + 1, short(&request.caption, 24)), units);
        captions.push(request.caption.clone());
        let shot_clock = Instant::now();
        let result = generate_shot(&mut stream, &request, &mut state, &bars, args.json, &id, started, out);
        match result {
            Ok(frames) => {
                bars.finish(&format!("{:.1} s", shot_clock.elapsed().as_secs_f64()));
                if args.json {
                    let line = serde_json::json!({
                        "event": "shot_done", "story": id, "shot": k, "frames": frames,
                        "seconds": started.elapsed().as_secs_f64(),
                    });
                    println!("{line}");
                }
            }
            Err(e)
                if INTERRUPTED.load(Ordering::SeqCst) || matches!(e.downcast_ref(), Some(EngineError::Cancelled)) =>
            {
                bars.finish("stopped");
                stopped = Some(k);
                break;
            }
            Err(e) => {
                bars.finish("failed");
                // The frames written so far stay playable.
                let _ = finish_sink(state, out);
                return Err(e.context(format!("generating shot {} of {id}", k + 1)));
            }
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            stopped = Some(k + 1);
            break;
        }
    }
    if captions.is_empty() {
        bail!("the story ended before its first shot: nothing was generated");
    }
    let written = state.written;
    let first = state.first_frame_s;
    let report = finish_sink(state, out)?;
    let times = stream.times();
    let secs = started.elapsed().as_secs_f64();
    let first = first.unwrap_or(secs);
    let shots_done = stream.shots_done();
    let line = serde_json::json!({
        "event": "story_done", "story": id, "shots": shots_done, "frames": report.frames,
        "seconds": secs, "frames_per_second": report.frames as f64 / secs.max(1e-9),
        "first_frame_seconds": first, "times": times, "out": out.display().to_string(),
        "stopped_at_shot": stopped,
    });
    if args.json {
        println!("{line}");
    } else {
        if let Some(k) = stopped {
            eprintln!("stopped by Ctrl-C during shot {}: the video holds what was made until then", k + 1);
        }
        eprintln!(
            "wrote {} ({} shots, {} frames, {:.1} s, {:.1} frames/s, first frame after {:.2} s; \
             denoising {:.1} s, decoding {:.1} s, context {:.1} s)",
            out.display(),
            shots_done,
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

fn finish_sink(state: StreamState, out: &Path) -> Result<storyreel_media::SinkReport> {
    let StreamState { mut sink, open_shot, .. } = state;
    if open_shot.is_some() {
        sink.end_shot().with_context(|| format!("finishing {}", out.display()))?;
    }
    sink.finish().with_context(|| format!("finishing {}", out.display()))
}

/// Generates one shot, streaming its frames into the sink; returns its frame count.
#[allow(clippy::too_many_arguments)]
fn generate_shot(
    stream: &mut StoryStream<'_>,
    request: &ShotRequest,
    state: &mut StreamState,
    bars: &ShotBars,
    json: bool,
    id: &str,
    started: Instant,
    out: &Path,
) -> Result<usize> {
    let media = |e: storyreel_media::MediaError| EngineError::Output(format!("writing {}: {e}", out.display()));
    let state = std::cell::RefCell::new(state);
    let mut on_start = |shot: usize, picks: &[storyreel_engine::ContextPick]| -> storyreel_engine::Result<()> {
        if json {
            let picks: Vec<[usize; 2]> = picks.iter().map(|p| [p.shot, p.frame]).collect();
            let line = serde_json::json!({
                "event": "shot_started", "story": id, "shot": shot, "caption": request.caption,
                "frames": request.frames, "context": picks,
            });
            println!("{line}");
        }
        Ok(())
    };
    let mut on_frames = |shot: usize, frames: &candle_core::Tensor| -> storyreel_engine::Result<()> {
        let rgb = storyreel_engine::pixels::to_rgb_frames(frames)?;
        let mut st = state.borrow_mut();
        if st.open_shot != Some(shot) {
            if st.open_shot.is_some() {
                st.sink.end_shot().map_err(media)?;
            }
            st.sink.begin_shot(shot, &request.caption).map_err(media)?;
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
    let mut on_progress = |shot: usize, done: usize, total: usize| {
        bars.set(done);
        if json {
            let line =
                serde_json::json!({"event": "progress", "story": id, "shot": shot, "done": done, "total": total});
            println!("{line}");
        }
    };
    let cancelled = || INTERRUPTED.load(Ordering::SeqCst);
    let events = ShotEvents {
        on_start: &mut on_start,
        on_frames: &mut on_frames,
        on_progress: &mut on_progress,
        cancelled: &cancelled,
    };
    let shot = stream.generate_shot(request, events)?;
    let mut st = state.borrow_mut();
    st.sink.end_shot().map_err(media)?;
    st.sink.flush().map_err(media)?;
    st.open_shot = None;
    Ok(shot.frames.dim(0)?)
}

//! `storyreel world`: the synthetic story world from the command line: datasets, the held-out
//! benchmark, single-story renders, the caption vocabulary and the shot-cut detector.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use storyreel_media::{read_mp4, write_mp4, ContactSheet, ContactSheetOptions, EncodeOptions, RgbFrame};
use storyreel_world::dataset::{write_vocabulary, Manifest};
use storyreel_world::detect::{detect_cuts, match_cuts, score_cuts, CutScore, DetectorConfig};
use storyreel_world::{
    benchmark_spec, generate_dataset, render_story, DatasetSpec, Story, StoryOptions, StoryPattern, VideoFormat,
};

/// Tolerance, in frames, when detected cuts are matched to true ones.
const CUT_TOLERANCE: usize = 1;

/// What `storyreel world` does.
#[derive(Subcommand)]
pub enum WorldCommand {
    /// Render a dataset of seeded stories: story JSON, H.264 video, per-frame truth, ShotStream CSV + captions.
    Generate(GenerateArgs),
    /// Write the fixed 64-story held-out benchmark (same layout, manifest marked `benchmark: true`).
    Benchmark {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Write even into a non-empty folder that holds no previous dataset.
        #[arg(long)]
        force: bool,
    },
    /// Render one story file to an MP4, or to a captioned contact sheet when OUT ends in .png.
    Render {
        /// Story JSON (as in a dataset's stories/ folder).
        #[arg(long)]
        story: PathBuf,
        /// Output .mp4 or .png.
        #[arg(long)]
        out: PathBuf,
        /// Round-trip every shot through this VAE (folder or file) before writing: the best a
        /// generator decoding through that VAE can show (a reference row for `storyreel eval`).
        #[arg(long)]
        vae: Option<PathBuf>,
        /// With --vae, decode the round trip with this tiny decoder (weights file, or a folder
        /// holding one) instead of the VAE's decoder.
        #[arg(long, requires = "vae")]
        tiny_decoder: Option<PathBuf>,
    },
    /// Write the toy text encoder's vocabulary (<pad>, </s>, <unk>, then every caption word).
    Vocab {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Detect shot cuts in a video; with its story, score them against the true cuts.
    Detect {
        /// H.264 MP4 to analyse.
        #[arg(long)]
        video: PathBuf,
        /// The story the video was rendered from, for precision / recall / F1.
        #[arg(long)]
        story: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure the shot detector on freshly rendered training-seed stories.
    DetectBench(DetectBenchArgs),
    /// How often each context policy's frames show the next shot's place and characters, from
    /// the stories' world labels (no model, no video).
    ContextRelevance {
        /// A folder of story JSON files, or a dataset folder holding `stories/`.
        #[arg(long)]
        stories: PathBuf,
        /// Policies to compare (repeatable; default dynamic, caption and first-frame).
        #[arg(long = "context")]
        policies: Vec<String>,
        /// Context frames per shot.
        #[arg(long, default_value_t = 6)]
        frames: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Flags of `world generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Number of stories.
    #[arg(long)]
    stories: usize,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the first story; story i uses seed + i (the benchmark's seeds are refused).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frame width in pixels (even).
    #[arg(long, default_value_t = 64)]
    width: u32,
    /// Frame height in pixels (even).
    #[arg(long, default_value_t = 64)]
    height: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 16)]
    fps: u32,
    /// Fewest shots per story (raised to the pattern's minimum).
    #[arg(long, default_value_t = 2)]
    min_shots: usize,
    /// Most shots per story.
    #[arg(long, default_value_t = 8)]
    max_shots: usize,
    /// Shortest shot in frames (4k+1).
    #[arg(long, default_value_t = 17)]
    min_frames: usize,
    /// Longest shot in frames (4k+1).
    #[arg(long, default_value_t = 33)]
    max_frames: usize,
    /// Only this pattern: main_subject, insert_recall or composable (default: drawn per story).
    #[arg(long, value_parser = parse_pattern)]
    pattern: Option<StoryPattern>,
    /// Draw every character and place in look 0 (no per-story looks; the world before looks).
    #[arg(long)]
    plain_looks: bool,
    /// Skip the H.264 videos (captions, truth and the CSV are still written).
    #[arg(long)]
    no_videos: bool,
    /// Write even into a non-empty folder that holds no previous dataset.
    #[arg(long)]
    force: bool,
}

/// Flags of `world detect-bench`.
#[derive(clap::Args)]
pub struct DetectBenchArgs {
    /// Number of stories.
    #[arg(long, default_value_t = 200)]
    stories: usize,
    /// Seed of the first story (training seeds; the benchmark's are refused).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Detect on frames after an H.264 encode/decode round trip instead of the rendered ones.
    #[arg(long)]
    h264: bool,
    /// How many of the slowest and the worst stories to list.
    #[arg(long, default_value_t = 5)]
    show: usize,
}

/// A library error as one message: their `Display` already includes the underlying cause, which
/// anyhow's `{:#}` would otherwise print a second time.
fn flat(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Parses a `--pattern` value.
fn parse_pattern(name: &str) -> std::result::Result<StoryPattern, String> {
    StoryPattern::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = StoryPattern::ALL.iter().map(|p| p.name()).collect();
        format!("unknown pattern `{name}` (expected one of {})", names.join(", "))
    })
}

/// Runs a `world` subcommand.
pub fn run(command: &WorldCommand) -> Result<()> {
    match command {
        WorldCommand::Generate(args) => generate(args),
        WorldCommand::Benchmark { out, force } => {
            let spec = DatasetSpec { overwrite: *force, ..benchmark_spec() };
            write_dataset(out, &spec)
        }
        WorldCommand::Render { story, out, vae, tiny_decoder } => {
            render(story, out, vae.as_deref(), tiny_decoder.as_deref())
        }
        WorldCommand::Vocab { out } => {
            write_vocabulary(out)
                .map_err(flat)
                .with_context(|| format!("writing the vocabulary to {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        WorldCommand::Detect { video, story, json } => detect(video, story.as_deref(), *json),
        WorldCommand::DetectBench(args) => detect_bench(args),
        WorldCommand::ContextRelevance { stories, policies, frames, json } => {
            context_relevance(stories, policies, *frames, *json)
        }
    }
}

fn context_relevance(folder: &Path, policies: &[String], frames: usize, json: bool) -> Result<()> {
    use storyreel_engine::context::{policy_by_name, POLICY_NAMES};
    if frames == 0 || frames > 64 {
        bail!("--frames {frames}: context frames must be 1..=64");
    }
    let dir = if folder.join("stories").is_dir() { folder.join("stories") } else { folder.to_path_buf() };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading the story folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("{} holds no story JSON files", dir.display());
    }
    let stories = paths.iter().map(|p| read_story(p)).collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = if policies.is_empty() {
        ["dynamic", "caption", "first-frame"].iter().map(|s| s.to_string()).collect()
    } else {
        policies.to_vec()
    };
    let mut rows = Vec::with_capacity(names.len());
    for name in &names {
        let memory = policy_by_name(name, frames)
            .with_context(|| format!("unknown context policy {name:?}: one of {}", POLICY_NAMES.join(", ")))?;
        rows.push(crate::context_relevance::relevance(&stories, memory.as_ref()));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "stories": stories.len(), "policies": rows }))?
        );
    } else {
        print!("{}", crate::context_relevance::relevance_table(&rows, stories.len()));
    }
    Ok(())
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let options = StoryOptions {
        format: VideoFormat { width: args.width, height: args.height, fps: args.fps },
        min_shots: args.min_shots,
        max_shots: args.max_shots,
        min_shot_frames: args.min_frames,
        max_shot_frames: args.max_frames,
        pattern: args.pattern,
        varied_looks: !args.plain_looks,
        ..StoryOptions::default()
    };
    let spec = DatasetSpec {
        first_seed: args.seed,
        stories: args.stories,
        options,
        write_videos: !args.no_videos,
        cycle_patterns: false,
        benchmark: false,
        overwrite: args.force,
    };
    write_dataset(&args.out, &spec)
}

/// Generates `spec` into `out` with a progress bar, then prints a summary and the layout.
fn write_dataset(out: &Path, spec: &DatasetSpec) -> Result<()> {
    let bar = ProgressBar::new(spec.stories as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} stories, {elapsed} elapsed, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(if spec.benchmark { "benchmark" } else { "generate" });
    let start = Instant::now();
    let result = generate_dataset(out, spec, &mut |done, _| bar.set_position(done as u64));
    bar.finish_and_clear();
    let manifest = result.map_err(flat).with_context(|| format!("writing the dataset into {}", out.display()))?;
    print_summary(out, &manifest, start.elapsed().as_secs_f64());
    Ok(())
}

fn print_summary(out: &Path, manifest: &Manifest, secs: f64) {
    let t = &manifest.totals;
    let kind = if manifest.benchmark { "benchmark" } else { "dataset" };
    println!(
        "{kind}: {} stories, {} shots, {} frames in {secs:.1} s → {}",
        t.stories,
        t.shots,
        t.frames,
        out.display()
    );
    let patterns: Vec<String> = t.patterns.iter().map(|(name, n)| format!("{name} {n}")).collect();
    println!("patterns: {}", patterns.join(", "));
    let f = &manifest.options.format;
    println!("video: {}x{} at {} fps{}", f.width, f.height, f.fps, if manifest.videos { "" } else { " (not written)" });
    println!("layout:");
    println!("  manifest.json        stories, options and totals");
    println!("  shotstream.csv       ShotStream index (paths relative to the folder)");
    println!("  vocab.txt            toy text encoder vocabulary");
    println!("  stories/<id>.json    story JSON (`storyreel world render --story`)");
    if manifest.videos {
        println!("  videos/<id>.mp4      H.264 video");
    }
    println!("  truth/<id>.jsonl     per-frame ground truth");
    println!("  captions/<id>.json   ShotStream caption JSON");
    if let Some(first) = manifest.stories.first() {
        println!(
            "e.g. {}: {} ({} shots, {} frames)",
            first.id,
            out.join(&first.story).display(),
            first.shots,
            first.frames
        );
    }
}

fn read_story(path: &Path) -> Result<Story> {
    Story::read(path).map_err(flat).with_context(|| format!("reading the story file {}", path.display()))
}

/// Encodes every shot of `frames` with the VAE at `path` and decodes it again, with the VAE
/// or with the tiny decoder at `tiny`.
fn through_vae(path: &Path, tiny: Option<&Path>, story: &Story, frames: &[RgbFrame]) -> Result<Vec<RgbFrame>> {
    use std::sync::Arc;
    use storyreel_nn::codec::VideoCodec;
    let device = candle_core::Device::Cpu;
    let vae = Arc::new(
        storyreel_nn::vae::WanVae::load(path, candle_core::DType::F32, &device)
            .with_context(|| format!("loading the VAE {}", path.display()))?,
    );
    let decoder: Arc<dyn VideoCodec> = match tiny {
        Some(t) => crate::codec::load_codec(t, crate::codec::DecoderChoice::Tiny, candle_core::DType::F32, &device)?,
        None => vae.clone(),
    };
    if decoder.latent_channels() != vae.latent_channels() || decoder.spatial_scale() != vae.spatial_scale() {
        bail!(
            "the tiny decoder reads {} channels at ×{}, the VAE {} makes {} at ×{}",
            decoder.latent_channels(),
            decoder.spatial_scale(),
            path.display(),
            vae.latent_channels(),
            vae.spatial_scale()
        );
    }
    let mut out = Vec::with_capacity(frames.len());
    for (start, end) in story.shot_ranges() {
        let x = storyreel_train::data::frames_to_tensor(&frames[start..end], &device)?;
        let z = vae.encode(&x).with_context(|| format!("encoding frames {start}..{end}"))?;
        let y = decoder.clone().decode(&z)?.clamp(-1f32, 1f32)?;
        out.extend(storyreel_engine::pixels::to_rgb_frames(&y)?);
    }
    Ok(out)
}

fn render(story_path: &Path, out: &Path, vae: Option<&Path>, tiny: Option<&Path>) -> Result<()> {
    let story = read_story(story_path)?;
    let ext = out.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ext != "mp4" && ext != "png" {
        bail!("{}: the output must end in .mp4 or .png", out.display());
    }
    let mut rendered =
        render_story(&story).map_err(flat).with_context(|| format!("rendering {}", story_path.display()))?;
    if let Some(vae) = vae {
        rendered.frames = through_vae(vae, tiny, &story, &rendered.frames)?;
    }
    if ext == "mp4" {
        write_mp4(out, &rendered.frames, EncodeOptions::default().with_fps(story.format.fps))
            .map_err(flat)
            .with_context(|| format!("writing {}", out.display()))?;
    } else {
        let options =
            ContactSheetOptions { title: Some(story.global_caption.clone()), ..ContactSheetOptions::default() };
        let mut sheet = ContactSheet::new(options).map_err(flat)?;
        for ((start, end), shot) in story.shot_ranges().into_iter().zip(&story.shots) {
            sheet.add_shot(&shot.caption, &rendered.frames[start..end]).map_err(flat)?;
        }
        sheet.save(out).map_err(flat).with_context(|| format!("writing {}", out.display()))?;
    }
    println!(
        "{}: {} shots, {} frames ({}x{} at {} fps) → {}",
        story.id,
        story.shots.len(),
        story.total_frames(),
        story.format.width,
        story.format.height,
        story.format.fps,
        out.display()
    );
    Ok(())
}

fn detect(video: &Path, story_path: Option<&Path>, json: bool) -> Result<()> {
    let story = story_path.map(read_story).transpose()?;
    let (_, frames) =
        read_mp4(video).map_err(flat).with_context(|| format!("reading the video {}", video.display()))?;
    let start = Instant::now();
    let cuts = detect_cuts(&frames, &DetectorConfig::default())
        .map_err(flat)
        .with_context(|| format!("detecting cuts in {}", video.display()))?;
    let secs = start.elapsed().as_secs_f64();
    let scored = story.as_ref().map(|s| (s.cut_frames(), score_cuts(&cuts, &s.cut_frames(), CUT_TOLERANCE)));
    let mismatch = story.as_ref().filter(|s| s.total_frames() != frames.len()).map(|s| {
        format!(
            "{} has {} frames but the story has {}: the video may not come from this story",
            video.display(),
            frames.len(),
            s.total_frames()
        )
    });
    if json {
        let mut value = serde_json::json!({
            "video": video.display().to_string(),
            "frames": frames.len(),
            "cuts": cuts,
            "seconds": secs,
        });
        if let Some((truth, score)) = &scored {
            value["truth_cuts"] = serde_json::json!(truth);
            value["tolerance"] = serde_json::json!(CUT_TOLERANCE);
            value["score"] = serde_json::to_value(score)?;
        }
        if let Some(warning) = &mismatch {
            value["warning"] = serde_json::json!(warning);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{}: {} frames, {} cut(s) at {:?} ({:.3} s)", video.display(), frames.len(), cuts.len(), cuts, secs);
        if let Some((truth, score)) = &scored {
            println!("true cuts: {truth:?}");
            println!(
                "precision {:.3}, recall {:.3}, F1 {:.3} (tolerance {CUT_TOLERANCE} frame; {} tp, {} fp, {} fn)",
                score.precision,
                score.recall,
                score.f1,
                score.true_positives,
                score.false_positives,
                score.false_negatives
            );
        }
    }
    if let Some(warning) = mismatch {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// One story of the detector benchmark.
struct BenchStory {
    story: Story,
    frames: usize,
    truth: Vec<usize>,
    predicted: Vec<usize>,
    score: CutScore,
    detect_secs: f64,
}

/// Selects shot `k` of a story for a hard-case subset.
type ShotPicker = fn(&Story, usize) -> bool;

/// A hard-case subset: its true cuts and the frame ranges where a false cut is blamed on it.
#[derive(Default)]
struct Subset {
    cuts: Vec<usize>,
    regions: Vec<(usize, usize)>,
}

fn detect_bench(args: &DetectBenchArgs) -> Result<()> {
    if args.stories == 0 {
        bail!("--stories must be at least 1");
    }
    let spec =
        DatasetSpec { first_seed: args.seed, stories: args.stories, write_videos: false, ..DatasetSpec::default() };
    spec.validate().map_err(flat).context("choosing the detector benchmark's seeds")?;
    let tmp = std::env::temp_dir().join(format!("storyreel-detect-bench-{}", std::process::id()));
    if args.h264 {
        std::fs::create_dir_all(&tmp).map_err(flat).with_context(|| format!("creating {}", tmp.display()))?;
    }
    let bar = ProgressBar::new(args.stories as u64).with_style(
        ProgressStyle::with_template("detect-bench [{bar:30}] {pos}/{len} stories, {elapsed} elapsed, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cfg = DetectorConfig::default();
    let start = Instant::now();
    let mut results = Vec::with_capacity(args.stories);
    let mut render_secs = 0.0;
    // Batches bound memory; rendering (and the H.264 round trip) runs in parallel within a batch,
    // detection one story at a time so its per-story time is not shared with other stories.
    const BATCH: usize = 32;
    for batch_start in (0..args.stories).step_by(BATCH) {
        let t = Instant::now();
        let batch: Vec<(Story, Vec<RgbFrame>)> = (batch_start..(batch_start + BATCH).min(args.stories))
            .into_par_iter()
            .map(|i| -> Result<(Story, Vec<RgbFrame>)> {
                let story = spec.story(i).map_err(flat)?;
                let mut frames = render_story(&story).map_err(flat)?.frames;
                if args.h264 {
                    frames = round_trip(&tmp, &story, &frames)?;
                }
                Ok((story, frames))
            })
            .collect::<Result<_>>()?;
        render_secs += t.elapsed().as_secs_f64();
        for (story, frames) in batch {
            let t = Instant::now();
            let predicted =
                detect_cuts(&frames, &cfg).map_err(flat).with_context(|| format!("detecting cuts in {}", story.id))?;
            let detect_secs = t.elapsed().as_secs_f64();
            let truth = story.cut_frames();
            let score = score_cuts(&predicted, &truth, CUT_TOLERANCE);
            results.push(BenchStory { frames: frames.len(), story, truth, predicted, score, detect_secs });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if args.h264 {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let wall = start.elapsed().as_secs_f64();
    print_bench(args, &results, wall, render_secs);
    Ok(())
}

/// The frames after an encode to H.264 MP4 and a decode back.
fn round_trip(tmp: &Path, story: &Story, frames: &[RgbFrame]) -> Result<Vec<RgbFrame>> {
    let path = tmp.join(format!("{}.mp4", story.id));
    write_mp4(&path, frames, EncodeOptions::default().with_fps(story.format.fps))
        .map_err(flat)
        .with_context(|| format!("encoding {}", path.display()))?;
    let (_, decoded) = read_mp4(&path).map_err(flat).with_context(|| format!("decoding {}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    Ok(decoded)
}

fn print_bench(args: &DetectBenchArgs, results: &[BenchStory], wall: f64, render_secs: f64) {
    let frames: usize = results.iter().map(|r| r.frames).sum();
    let detect_secs: f64 = results.iter().map(|r| r.detect_secs).sum();
    let total = CutScore::total(results.iter().map(|r| &r.score));
    let last = args.seed + args.stories as u64 - 1;
    println!(
        "detect-bench: {} stories (seeds {}..={last}), {frames} frames, {} frames{}",
        results.len(),
        args.seed,
        if args.h264 { "H.264 round-trip" } else { "rendered" },
        if args.h264 { " (encode + decode)" } else { "" }
    );
    println!(
        "time: {wall:.1} s wall; render{} {render_secs:.1} s; detect {detect_secs:.2} s ({:.0} frames/s)",
        if args.h264 { " + H.264" } else { "" },
        frames as f64 / detect_secs.max(1e-9)
    );
    let true_cuts: usize = results.iter().map(|r| r.truth.len()).sum();
    let found: usize = results.iter().map(|r| r.predicted.len()).sum();
    println!("cuts: {true_cuts} true, {found} detected (tolerance {CUT_TOLERANCE} frame)");
    println!(
        "total: precision {:.4}, recall {:.4}, F1 {:.4} ({} tp, {} fp, {} fn)",
        total.precision, total.recall, total.f1, total.true_positives, total.false_positives, total.false_negatives
    );

    println!("hard cases:");
    let subsets: [(&str, ShotPicker, bool); 3] = [
        (
            "same place (cut keeps the background)",
            |s, k| k > 0 && s.shots[k].world.place == s.shots[k - 1].world.place,
            true,
        ),
        ("fast motion (shots with runs)", |s, k| s.shots[k].world.fast, false),
        ("lighting ramp (light changes in the shot)", |s, k| s.shots[k].world.lighting_end.is_some(), false),
    ];
    for (name, pick, cut_based) in subsets {
        let mut score = CutScore::from_counts(0, 0, 0);
        let mut count = 0;
        for r in results {
            let subset = subset_of(&r.story, |k| pick(&r.story, k), cut_based);
            count += if cut_based { subset.cuts.len() } else { subset.regions.len() };
            score = score.merge(&subset_score(r, &subset));
        }
        let unit = if cut_based { "cuts" } else { "shots" };
        println!(
            "  {name}: {count} {unit}: precision {:.4}, recall {:.4}, F1 {:.4} ({} tp, {} fp, {} fn)",
            score.precision, score.recall, score.f1, score.true_positives, score.false_positives, score.false_negatives
        );
    }

    let mut slowest: Vec<&BenchStory> = results.iter().collect();
    slowest.sort_by(|a, b| b.detect_secs.total_cmp(&a.detect_secs));
    println!("slowest {}:", args.show.min(slowest.len()));
    for r in slowest.iter().take(args.show) {
        println!("  {} (seed {}): {:.1} ms for {} frames", r.story.id, r.story.seed, r.detect_secs * 1e3, r.frames);
    }
    let mut worst: Vec<&BenchStory> = results.iter().filter(|r| r.score.f1 < 1.0).collect();
    worst.sort_by(|a, b| a.score.f1.total_cmp(&b.score.f1).then(a.story.seed.cmp(&b.story.seed)));
    println!("worst {} (of {} stories with an error):", args.show.min(worst.len()), worst.len());
    for r in worst.iter().take(args.show) {
        println!(
            "  {} (seed {}, {}): F1 {:.3}, true {:?}, detected {:?}",
            r.story.id,
            r.story.seed,
            r.story.pattern.name(),
            r.score.f1,
            r.truth,
            r.predicted
        );
        let (truth_matched, pred_matched) = match_cuts(&r.predicted, &r.truth, CUT_TOLERANCE);
        for (t, _) in r.truth.iter().zip(&truth_matched).filter(|(_, m)| !**m) {
            println!("    missed cut at {t}: {}", describe_cut(&r.story, *t));
        }
        for (p, _) in r.predicted.iter().zip(&pred_matched).filter(|(_, m)| !**m) {
            println!("    false cut at {p}: {}", describe_frame(&r.story, *p));
        }
    }
}

/// The true cuts and blame regions of the shots `pick` selects. Cut-based subsets take the cut
/// at the start of each picked shot and blame false cuts in the shots on both sides; shot-based
/// ones take both cuts around each picked shot and blame false cuts inside it.
fn subset_of(story: &Story, pick: impl Fn(usize) -> bool, cut_based: bool) -> Subset {
    let ranges = story.shot_ranges();
    let mut subset = Subset::default();
    for (k, &(start, end)) in ranges.iter().enumerate() {
        if !pick(k) {
            continue;
        }
        if cut_based {
            if k == 0 {
                continue;
            }
            subset.cuts.push(start);
            subset.regions.push((ranges[k - 1].0, end));
        } else {
            if k > 0 {
                subset.cuts.push(start);
            }
            if k + 1 < ranges.len() {
                subset.cuts.push(end);
            }
            subset.regions.push((start, end));
        }
    }
    subset.cuts.sort_unstable();
    subset.cuts.dedup();
    subset
}

/// Counts of one story restricted to a subset, with the same matching as `score_cuts`.
fn subset_score(r: &BenchStory, subset: &Subset) -> CutScore {
    let (truth_matched, pred_matched) = match_cuts(&r.predicted, &r.truth, CUT_TOLERANCE);
    let mut tp = 0;
    let mut fn_ = 0;
    for (t, matched) in r.truth.iter().zip(&truth_matched) {
        if subset.cuts.contains(t) {
            if *matched {
                tp += 1;
            } else {
                fn_ += 1;
            }
        }
    }
    let fp = r
        .predicted
        .iter()
        .zip(&pred_matched)
        .filter(|(p, matched)| !**matched && subset.regions.iter().any(|&(s, e)| (s..e).contains(*p)))
        .count();
    CutScore::from_counts(tp, fp, fn_)
}

/// What changes at the cut starting at frame `at`.
fn describe_cut(story: &Story, at: usize) -> String {
    let Some(k) = story.shot_ranges().iter().position(|&(s, _)| s == at) else { return String::new() };
    let (a, b) = (&story.shots[k - 1].world, &story.shots[k].world);
    let place = if a.place == b.place {
        format!("same place ({:?})", a.place)
    } else {
        format!("{:?} → {:?}", a.place, b.place)
    };
    format!(
        "shot {k} → {}: {place}, {:?} → {:?}, {:?} → {:?}, characters {:?} → {:?}",
        k + 1,
        a.framing,
        b.framing,
        a.final_lighting(),
        b.lighting,
        a.characters,
        b.characters
    )
}

/// What happens in the shot containing frame `at`.
fn describe_frame(story: &Story, at: usize) -> String {
    let ranges = story.shot_ranges();
    let Some(k) = ranges.iter().position(|&(s, e)| (s..e).contains(&at)) else { return "past the end".into() };
    let w = &story.shots[k].world;
    let ramp = w.lighting_end.map(|e| format!(", light {:?} → {e:?}", w.lighting)).unwrap_or_default();
    format!(
        "inside shot {} (frames {}..{}): {:?}, {:?}{}{ramp}, characters {:?}",
        k + 1,
        ranges[k].0,
        ranges[k].1,
        w.framing,
        w.motion,
        if w.fast { " fast" } else { "" },
        w.characters
    )
}

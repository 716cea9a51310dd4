//! `storyreel eval`: scores generated videos against their stories (one, a folder, or two runs
//! side by side), fits the world probe, and builds the ground-truth-vs-corruptions table.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use storyreel_eval::corrupt::{corrupt, Corruption};
use storyreel_eval::evaluate::{
    embedding_distance, evaluate_story, summarise, BatchReport, EvalOptions, Metrics, StoryReport,
};
use storyreel_eval::fidelity::{fidelity, PositionFidelity};
use storyreel_eval::paired::{paired_differences, paired_markdown, pooled_differences, pooled_markdown};
use storyreel_eval::probe::{render_samples, Probe, ProbeCard, ProbeFitOptions, PROBE_TEST_SEED_BASE};
use storyreel_eval::report::{
    batch_markdown, compare_markdown, story_markdown, table_markdown, to_json, write_story_report, write_text,
};
use storyreel_media::{read_mp4, RgbFrame};
use storyreel_world::dataset::{WorldDataset, MANIFEST_FILE};
use storyreel_world::{render_story, Story};

/// `storyreel eval` arguments.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    action: Option<EvalAction>,
    /// The generated video (.mp4).
    #[arg(long, requires = "story", conflicts_with_all = ["dir", "compare"])]
    video: Option<PathBuf>,
    /// The story the video was made from (world story JSON).
    #[arg(long, requires = "video")]
    story: Option<PathBuf>,
    /// A folder of videos and stories: a `storyreel world generate` dataset (manifest.json), or
    /// any folder with `stories/<id>.json` and `videos/<id>.mp4`.
    #[arg(long, conflicts_with = "compare")]
    dir: Option<PathBuf>,
    /// Two earlier reports (report.json files or the folders holding them), side by side; for
    /// two batch reports of the same stories, also the paired per-story differences (B − A,
    /// mean ± standard error) of consistency and adherence. Give it again for more pairs (e.g.
    /// one twin pair per training seed): the differences are then pooled over the pairs, with
    /// each pair's own mean beside them.
    #[arg(long, num_args = 2, value_names = ["A", "B"], action = clap::ArgAction::Append)]
    compare: Option<Vec<PathBuf>>,
    /// With --compare: count only shots N and later (1-based) in the paired differences, e.g.
    /// 4 for the later shots of a story, where context has the most to carry.
    #[arg(long, requires = "compare", value_parser = clap::value_parser!(u32).range(1..=1000))]
    from_shot: Option<u32>,
    /// Where report.json, report.md and contact.png go (default: next to the video, `<name>.eval/`;
    /// for --dir, `<dir>/eval/`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as one JSON object on stdout instead of a summary.
    #[arg(long)]
    json: bool,
    /// A probe folder from `storyreel eval fit-probe` (default: the probe built into the binary).
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Frames per second for motion sampling (default: the video's own rate).
    #[arg(long)]
    fps: Option<f64>,
}

/// Extra `storyreel eval` tools.
#[derive(Subcommand)]
pub enum EvalAction {
    /// Fit the world probe on rendered stories and report its accuracy on held-out frames.
    FitProbe(FitProbeArgs),
    /// Score a dataset's ground truth and each corruption of it (shuffled shots, swapped
    /// characters, frozen frames, shifted cuts, noise) as one table.
    Table(TableArgs),
    /// Pixel fidelity (PSNR) of a video against its story's exact frames or a reference video:
    /// a VAE round trip (`world render --vae`), a memorised story.
    Psnr(PsnrArgs),
}

/// `storyreel eval psnr` arguments.
#[derive(Args)]
pub struct PsnrArgs {
    /// The video scored (.mp4).
    #[arg(long, required_unless_present = "dir")]
    video: Option<PathBuf>,
    /// The story it shows: its frames are rendered exactly (no codec) as the reference, and
    /// figures are given per shot and by position inside a shot.
    #[arg(long, conflicts_with = "dir")]
    story: Option<PathBuf>,
    /// A reference video instead of a story's rendered frames.
    #[arg(long, conflicts_with_all = ["story", "dir"])]
    reference: Option<PathBuf>,
    /// A folder of stories and videos (as for `storyreel eval --dir`): every video against its
    /// story's frames, pooled, with the figures by position inside a shot.
    #[arg(long, conflicts_with = "video")]
    dir: Option<PathBuf>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `storyreel eval fit-probe` arguments.
#[derive(Args)]
pub struct FitProbeArgs {
    /// Output folder (probe.safetensors + probe.json).
    #[arg(long)]
    out: PathBuf,
    /// Stories rendered for fitting.
    #[arg(long, default_value_t = ProbeFitOptions::default().stories)]
    stories: usize,
    /// Passes over the fitting frames.
    #[arg(long, default_value_t = ProbeFitOptions::default().epochs)]
    epochs: usize,
    /// Held-out stories for the accuracy report.
    #[arg(long, default_value_t = 60)]
    test_stories: usize,
}

/// `storyreel eval table` arguments.
#[derive(Args)]
pub struct TableArgs {
    /// A world dataset (e.g. from `storyreel world benchmark`).
    #[arg(long)]
    dir: PathBuf,
    /// Write the Markdown table here (and the JSON beside it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A probe folder (default: the built-in probe).
    #[arg(long)]
    probe: Option<PathBuf>,
}

/// Runs `storyreel eval`.
pub fn run(args: &EvalArgs) -> Result<()> {
    match &args.action {
        Some(EvalAction::FitProbe(a)) => return fit_probe(a),
        Some(EvalAction::Table(a)) => return table(a),
        Some(EvalAction::Psnr(a)) => return psnr(a),
        None => {}
    }
    if let Some(files) = &args.compare {
        let from_shot = args.from_shot.map_or(0, |n| n as usize - 1);
        return match files.as_slice() {
            [a, b] => compare(a, b, from_shot, args.json),
            _ => compare_pooled(files, from_shot, args.json),
        };
    }
    let probe = load_probe(args.probe.as_deref())?;
    match (&args.video, &args.story, &args.dir) {
        (Some(video), Some(story), None) => eval_one(&probe, video, story, args),
        (None, None, Some(dir)) => eval_dir(&probe, dir, args),
        _ => {
            bail!("say what to evaluate: --video V --story S, --dir D, or --compare A B (see `storyreel eval --help`)")
        }
    }
}

fn load_probe(dir: Option<&Path>) -> Result<Probe> {
    match dir {
        Some(d) => Probe::load(d).with_context(|| format!("loading the probe from {}", d.display())),
        None => Probe::embedded().context("loading the built-in world probe"),
    }
}

fn read_story(path: &Path) -> Result<Story> {
    Story::read(path).with_context(|| format!("reading story {}", path.display()))
}

fn read_video(path: &Path) -> Result<(Vec<RgbFrame>, f64)> {
    if !path.exists() {
        bail!("{}: no such video", path.display());
    }
    let (info, frames) = read_mp4(path).with_context(|| format!("decoding {}", path.display()))?;
    Ok((frames, info.fps))
}

/// Probe embeddings of the story world's own rendering of `story`: the reference distribution.
fn reference_embeddings(probe: &Probe, story: &Story) -> Result<Vec<Vec<f32>>> {
    let rendered = render_story(story).with_context(|| format!("rendering the reference of {}", story.id))?;
    Ok(probe.read_frames(&rendered.frames)?.into_iter().map(|r| r.embedding).collect())
}

fn eval_one(probe: &Probe, video: &Path, story_path: &Path, args: &EvalArgs) -> Result<()> {
    let story = read_story(story_path)?;
    let (frames, video_fps) = read_video(video)?;
    let fps = args.fps.unwrap_or(if video_fps > 0.0 { video_fps } else { story.format.fps as f64 });
    let (mut report, embeddings) = evaluate_story(probe, &story, &frames, fps, &EvalOptions::default())
        .with_context(|| format!("evaluating {} against {}", video.display(), story_path.display()))?;
    report.metrics.quality_fd = Some(embedding_distance(&embeddings, &reference_embeddings(probe, &story)?)?);
    let out = args.out.clone().unwrap_or_else(|| video.with_extension("eval"));
    write_story_report(&out, &report, &frames).with_context(|| format!("writing the report to {}", out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", story_markdown(&report));
        eprintln!("report: {}", out.display());
    }
    Ok(())
}

/// The (story, video) pairs of a folder.
fn dir_items(dir: &Path) -> Result<Vec<(Story, PathBuf)>> {
    if dir.join(MANIFEST_FILE).exists() {
        let ds = WorldDataset::open(dir).with_context(|| format!("opening dataset {}", dir.display()))?;
        let mut items = Vec::with_capacity(ds.len());
        for i in 0..ds.len() {
            let entry = ds.entry(i)?;
            let video = entry.video.as_ref().map(|v| dir.join(v)).with_context(|| {
                format!("{}: story {} has no video (generated with --no-videos?)", dir.display(), entry.id)
            })?;
            items.push((ds.story(i)?, video));
        }
        return Ok(items);
    }
    let stories = dir.join("stories");
    let listing = std::fs::read_dir(&stories).with_context(|| {
        format!("{}: neither a dataset (no {MANIFEST_FILE}) nor a folder with stories/", dir.display())
    })?;
    let mut paths: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut items = Vec::new();
    for p in paths {
        let story = read_story(&p)?;
        let stem = p.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let video = dir.join("videos").join(format!("{stem}.mp4"));
        if !video.exists() {
            bail!("{}: story {} has no video at {}", dir.display(), stem, video.display());
        }
        items.push((story, video));
    }
    if items.is_empty() {
        bail!("{}: no stories found in {}", dir.display(), stories.display());
    }
    Ok(items)
}

fn progress(len: usize, what: &str) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(&format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {what}, {{elapsed}}, ETA {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

fn eval_dir(probe: &Probe, dir: &Path, args: &EvalArgs) -> Result<()> {
    let items = dir_items(dir)?;
    let out = args.out.clone().unwrap_or_else(|| dir.join("eval"));
    let bar = progress(items.len(), "stories");
    bar.set_message("evaluating");
    let (mut reports, mut generated, mut reference) = (Vec::new(), Vec::new(), Vec::new());
    for (story, video) in &items {
        let (frames, video_fps) = read_video(video)?;
        let fps = args.fps.unwrap_or(if video_fps > 0.0 { video_fps } else { story.format.fps as f64 });
        let (report, embeddings) = evaluate_story(probe, story, &frames, fps, &EvalOptions::default())
            .with_context(|| format!("evaluating {}", video.display()))?;
        write_story_report(&out.join(&story.id), &report, &frames)?;
        generated.extend(embeddings);
        reference.extend(reference_embeddings(probe, story)?);
        reports.push(report);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let batch = summarise(reports, Some(embedding_distance(&generated, &reference)?));
    write_text(&out.join("report.json"), &(to_json(&batch)? + "\n"))?;
    write_text(&out.join("report.md"), &batch_markdown(&batch))?;
    if args.json {
        println!("{}", serde_json::to_string(&batch)?);
    } else {
        print!("{}", batch_markdown(&batch).lines().take(16).collect::<Vec<_>>().join("\n"));
        println!();
        eprintln!("reports: {} (one folder per story, report.json/report.md for the batch)", out.display());
    }
    Ok(())
}

/// A report file as JSON (or the report.json of a folder), with the file's path.
fn read_report(path: &Path) -> Result<(PathBuf, serde_json::Value)> {
    let file = if path.is_dir() { path.join("report.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
    Ok((file, value))
}

/// The batch report in `value`, if it is one (it lists per-story `reports`).
fn as_batch(file: &Path, value: &serde_json::Value) -> Result<Option<BatchReport>> {
    if value.get("reports").is_none() {
        return Ok(None);
    }
    let batch =
        serde_json::from_value(value.clone()).with_context(|| format!("{}: malformed batch report", file.display()))?;
    Ok(Some(batch))
}

/// The `metrics` object of a story or batch report.
fn metrics_of(file: &Path, value: &serde_json::Value) -> Result<Metrics> {
    let metrics = value
        .get("metrics")
        .with_context(|| format!("{}: no \"metrics\" object; is it a storyreel eval report?", file.display()))?;
    serde_json::from_value(metrics.clone()).with_context(|| format!("{}: malformed \"metrics\"", file.display()))
}

fn compare(a: &Path, b: &Path, from_shot: usize, json: bool) -> Result<()> {
    let ((file_a, va), (file_b, vb)) = (read_report(a)?, read_report(b)?);
    let (ma, mb) = (metrics_of(&file_a, &va)?, metrics_of(&file_b, &vb)?);
    let paired = match (as_batch(&file_a, &va)?, as_batch(&file_b, &vb)?) {
        (Some(ba), Some(bb)) => Some(
            paired_differences(&ba, &bb, from_shot)
                .with_context(|| format!("pairing {} with {}", file_a.display(), file_b.display()))?,
        ),
        _ if from_shot > 0 => bail!("--from-shot needs two batch reports (from `storyreel eval --dir`)"),
        _ => None,
    };
    if json {
        let delta = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| y - x);
        let rows: serde_json::Map<String, serde_json::Value> = storyreel_eval::report::metric_rows(&ma)
            .into_iter()
            .zip(storyreel_eval::report::metric_rows(&mb))
            .map(|((k, x), (_, y))| (k.to_string(), serde_json::json!({ "a": x, "b": y, "delta": delta(x, y) })))
            .collect();
        let mut out =
            serde_json::json!({ "a": a.display().to_string(), "b": b.display().to_string(), "metrics": rows });
        if let Some(rows) = &paired {
            out["paired"] = serde_json::json!({ "from_shot": from_shot + 1, "differences": rows });
        }
        println!("{out}");
    } else {
        print!("{}", compare_markdown(&a.display().to_string(), &ma, &b.display().to_string(), &mb));
        if let Some(rows) = &paired {
            print!("{}", paired_markdown(rows, from_shot));
        }
    }
    Ok(())
}

/// Paired differences pooled over several `--compare A B` pairs of batch reports.
fn compare_pooled(files: &[PathBuf], from_shot: usize, json: bool) -> Result<()> {
    let mut batches = Vec::with_capacity(files.len());
    for path in files {
        let (file, value) = read_report(path)?;
        let batch = as_batch(&file, &value)?.with_context(|| {
            format!(
                "{}: pooling several --compare pairs needs batch reports (from `storyreel eval --dir`)",
                file.display()
            )
        })?;
        batches.push(batch);
    }
    let pairs: Vec<(&BatchReport, &BatchReport)> = batches.chunks_exact(2).map(|p| (&p[0], &p[1])).collect();
    let rows = pooled_differences(&pairs, from_shot).context("pooling the --compare pairs")?;
    if json {
        let names: Vec<[String; 2]> =
            files.chunks_exact(2).map(|p| [p[0].display().to_string(), p[1].display().to_string()]).collect();
        println!("{}", serde_json::json!({ "pairs": names, "from_shot": from_shot + 1, "pooled": rows }));
    } else {
        print!("{}", pooled_markdown(&rows, from_shot));
    }
    Ok(())
}

fn fit_probe(args: &FitProbeArgs) -> Result<()> {
    let options = ProbeFitOptions { stories: args.stories, epochs: args.epochs, ..ProbeFitOptions::default() };
    let start = Instant::now();
    eprintln!("rendering {} stories for fitting...", options.stories);
    let samples = render_samples(options.first_seed, options.stories, options.frame_stride, Some(options.seed))?;
    let bar = progress(options.epochs, "epochs");
    bar.set_message(format!("fitting on {} frames", samples.len()));
    let probe = Probe::fit_samples(&samples, &options, &mut |epoch, _, loss| {
        bar.set_position(epoch as u64);
        bar.set_message(format!("fitting on {} frames, loss {loss:.4}", samples.len()));
    })?;
    bar.finish_and_clear();
    let fit_seconds = start.elapsed().as_secs_f64();
    eprintln!("scoring on {} held-out stories...", args.test_stories);
    let test = render_samples(PROBE_TEST_SEED_BASE, args.test_stories, 2, None)?;
    let blurred: Vec<_> =
        render_samples(PROBE_TEST_SEED_BASE, args.test_stories, 2, Some(99))?.into_iter().skip(1).step_by(2).collect();
    let card = ProbeCard {
        fit: options,
        fit_frames: samples.len(),
        test_rendered: probe.accuracy(&test)?,
        test_blurred: probe.accuracy(&blurred)?,
        fit_seconds,
    };
    probe.save(&args.out, &card).with_context(|| format!("saving the probe to {}", args.out.display()))?;
    println!("{}", serde_json::to_string_pretty(&card)?);
    Ok(())
}

fn table(args: &TableArgs) -> Result<()> {
    let probe = load_probe(args.probe.as_deref())?;
    let items = dir_items(&args.dir)?;
    let start = Instant::now();
    // Corruptions are applied to the rendered frames, so no row mixes in codec artefacts; the
    // dataset's own H.264 videos get a row of their own.
    let mut names: Vec<String> = vec!["ground truth".into(), "ground truth, H.264".into()];
    names.extend(Corruption::TABLE.iter().map(|c| c.name()));
    let mut runs: Vec<(Vec<StoryReport>, Vec<Vec<f32>>)> = names.iter().map(|_| (Vec::new(), Vec::new())).collect();
    let mut reference = Vec::new();
    let bar = progress(items.len(), "stories");
    bar.set_message(format!("ground truth + {} corruptions", Corruption::TABLE.len()));
    for (story, video) in &items {
        let rendered = render_story(story).with_context(|| format!("rendering {}", story.id))?.frames;
        let (decoded, _) = read_video(video)?;
        let fps = story.format.fps as f64;
        let mut videos = vec![rendered.clone(), decoded];
        for c in Corruption::TABLE {
            videos.push(corrupt(story, &rendered, c, story.seed)?);
        }
        for (k, frames) in videos.iter().enumerate() {
            let (report, emb) = evaluate_story(&probe, story, frames, fps, &EvalOptions::default())
                .with_context(|| format!("evaluating {} ({})", story.id, names[k]))?;
            if k == 0 {
                reference.extend(emb.iter().cloned());
            }
            runs[k].0.push(report);
            runs[k].1.extend(emb);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut columns = Vec::new();
    for (name, (reports, emb)) in names.into_iter().zip(runs) {
        let fd = embedding_distance(&emb, &reference)?;
        columns.push((name, summarise(reports, Some(fd)).metrics));
    }
    let md = format!(
        "{} stories from {}, {:.1} s.\n\n{}",
        items.len(),
        args.dir.display(),
        start.elapsed().as_secs_f64(),
        table_markdown(&columns)
    );
    print!("{md}");
    if let Some(out) = &args.out {
        write_text(out, &md)?;
        let json: serde_json::Map<String, serde_json::Value> =
            columns.iter().map(|(n, m)| (n.clone(), serde_json::to_value(m).unwrap_or_default())).collect();
        write_text(&out.with_extension("json"), &(serde_json::to_string_pretty(&json)? + "\n"))?;
    }
    Ok(())
}

fn psnr(args: &PsnrArgs) -> Result<()> {
    if let Some(dir) = &args.dir {
        return psnr_dir(dir, args.json);
    }
    let Some(video_path) = &args.video else { bail!("give --video V.mp4 (or --dir D)") };
    let (video, _) = read_video(video_path)?;
    let (reference, shots) = match (&args.story, &args.reference) {
        (Some(path), _) => {
            let story = read_story(path)?;
            let frames = render_story(&story).with_context(|| format!("rendering {}", story.id))?.frames;
            let shots: Vec<usize> = story.shots.iter().map(|s| s.frames).collect();
            (frames, shots)
        }
        (None, Some(path)) => {
            let (frames, _) = read_video(path)?;
            let n = frames.len();
            (frames, vec![n])
        }
        (None, None) => bail!("give --story S or --reference R.mp4 to compare against"),
    };
    let whole = fidelity(&reference, &video)
        .with_context(|| format!("comparing {} with its reference", video_path.display()))?;
    let mut per_shot = Vec::new();
    let mut start = 0;
    for &n in &shots {
        let range = start..start + n;
        let (Some(r), Some(v)) = (reference.get(range.clone()), video.get(range)) else {
            bail!(
                "the story's shots ({} frames in all) do not cover its {} rendered frames",
                shots.iter().sum::<usize>(),
                reference.len()
            );
        };
        per_shot.push(fidelity(r, v)?);
        start += n;
    }
    let mut positions = PositionFidelity::default();
    positions.add(&reference, &video, &shots)?;
    if args.json {
        let out = serde_json::json!({ "video": video_path, "whole": whole, "shots": per_shot, "by_position": positions_json(&positions) });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{}: {} frames, PSNR {:.2} dB (per-frame mean {:.2} dB; worst frame {} at {:.2} dB)",
        video_path.display(),
        whole.frames,
        whole.psnr_db,
        whole.mean_frame_psnr_db,
        whole.min_frame,
        whole.min_frame_psnr_db
    );
    if per_shot.len() > 1 {
        for (i, f) in per_shot.iter().enumerate() {
            println!("  shot {}: {} frames, PSNR {:.2} dB", i + 1, f.frames, f.psnr_db);
        }
        print_positions(&positions);
    }
    Ok(())
}

/// Every video of a folder against its story's exact frames, pooled.
fn psnr_dir(dir: &Path, json: bool) -> Result<()> {
    let items = dir_items(dir)?;
    let bar = progress(items.len(), "stories");
    let mut positions = PositionFidelity::default();
    let mut stories = Vec::new();
    for (story, video_path) in &items {
        let (video, _) = read_video(video_path)?;
        let reference = render_story(story).with_context(|| format!("rendering {}", story.id))?.frames;
        let f = fidelity(&reference, &video).with_context(|| format!("comparing {}", video_path.display()))?;
        let shots: Vec<usize> = story.shots.iter().map(|s| s.frames).collect();
        positions.add(&reference, &video, &shots).with_context(|| format!("story {}", story.id))?;
        stories.push(serde_json::json!({ "story": story.id, "frames": f.frames, "psnr_db": f.psnr_db }));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (total_frames, pooled) = positions.pooled_psnr_db();
    if json {
        let out = serde_json::json!({ "dir": dir, "stories": stories, "frames": total_frames, "psnr_db": pooled, "by_position": positions_json(&positions) });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{}: {} stories, {total_frames} frames, pooled PSNR {pooled:.2} dB", dir.display(), items.len());
    print_positions(&positions);
    Ok(())
}

fn positions_json(p: &PositionFidelity) -> serde_json::Value {
    let rows: Vec<_> = p
        .psnr_db()
        .iter()
        .enumerate()
        .map(|(c, (n, db))| serde_json::json!({ "position": PositionFidelity::label(c), "frames": n, "psnr_db": db }))
        .collect();
    serde_json::Value::Array(rows)
}

fn print_positions(p: &PositionFidelity) {
    println!("  by position inside a shot (the VAE's chunks):");
    for (c, (n, db)) in p.psnr_db().iter().enumerate() {
        println!("    {:<12} {db:6.2} dB ({n} frames)", PositionFidelity::label(c));
    }
}

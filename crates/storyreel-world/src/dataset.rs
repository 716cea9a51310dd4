//! World datasets on disk: many rendered stories with their story JSON, H.264 video, per-frame
//! ground truth and ShotStream's index CSV + caption JSONs, described by a `manifest.json`.
//!
//! Layout of a dataset folder (paths in the manifest and the CSV are relative to it):
//!
//! ```text
//! manifest.json          what was generated, per-story entries and totals (written last)
//! shotstream.csv         ShotStream's index: shot_num_from_caption, json_path, video_path, frame_number
//! vocab.txt              the toy text encoder's vocabulary (<pad>, </s>, <unk>, then every caption word)
//! stories/<id>.json      our story JSON (Story::to_json)
//! videos/<id>.mp4        H.264 at the story's fps, keyframes at the cuts (absent with write_videos = false)
//! truth/<id>.jsonl       one FrameTruth JSON per frame
//! captions/<id>.json     ShotStream's caption JSON: global_caption, shot1 … shotN, video_path
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use storyreel_media::{read_mp4, EncodeOptions, Mp4Writer, RgbFrame};

use crate::benchmark::{BENCHMARK_SEED_BASE, BENCHMARK_STORIES};
use crate::caption::caption_vocabulary;
use crate::error::{Result, WorldError};
use crate::render::{render_story, FrameTruth};
use crate::shotstream::{
    write_caption_json, write_index_csv, CaptionFile, RangePolicy, ShotRange, ShotStreamDataset, ShotStreamRow,
};
use crate::story::{generate_story, Story, StoryOptions, StoryPattern};

/// Version of the `manifest.json` layout.
pub const MANIFEST_VERSION: u32 = 1;
/// The `generator` field of every manifest this module writes.
pub const GENERATOR: &str = "storyreel-world";
/// File name of the manifest inside a dataset folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the ShotStream index CSV inside a dataset folder.
pub const SHOTSTREAM_CSV: &str = "shotstream.csv";
/// File name of the vocabulary inside a dataset folder.
pub const VOCAB_FILE: &str = "vocab.txt";
/// Marker written before anything else, so an interrupted dataset is still recognised as ours.
const MARKER_FILE: &str = ".storyreel-world";
/// The folders a dataset owns; an overwrite empties them first so no stale story survives.
const SUBDIRS: [&str; 4] = ["stories", "videos", "truth", "captions"];
/// The special tokens the toy text encoder expects on lines 0–2 of its vocabulary.
pub const VOCAB_SPECIALS: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// What [`generate_dataset`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    /// Seed of story 0; story `i` is drawn from `first_seed + i`.
    pub first_seed: u64,
    /// Number of stories.
    pub stories: usize,
    /// How stories are drawn.
    pub options: StoryOptions,
    /// Encode each story to `videos/<id>.mp4` (the slow part); without videos the CSV's
    /// `video_path` is empty.
    pub write_videos: bool,
    /// Story `i` uses pattern `StoryPattern::ALL[i % 3]` instead of drawing one (balanced sets).
    pub cycle_patterns: bool,
    /// This is the held-out benchmark: only then may seeds fall in the benchmark's range.
    pub benchmark: bool,
    /// Write even into a non-empty folder that is not a previous dataset.
    pub overwrite: bool,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            first_seed: 0,
            stories: 1,
            options: StoryOptions::default(),
            write_videos: true,
            cycle_patterns: false,
            benchmark: false,
            overwrite: false,
        }
    }
}

impl DatasetSpec {
    /// Rejects specs that cannot be generated, or that would leak benchmark stories into training data.
    pub fn validate(&self) -> Result<()> {
        self.options.validate()?;
        if self.stories == 0 {
            return Err(WorldError::out_of_range("stories", 0, "at least 1"));
        }
        let last = self.last_seed()?;
        if !self.benchmark {
            let bench_last = BENCHMARK_SEED_BASE + BENCHMARK_STORIES as u64 - 1;
            if self.first_seed <= bench_last && last >= BENCHMARK_SEED_BASE {
                return Err(WorldError::out_of_range(
                    "seeds",
                    format!("{}..={last}", self.first_seed),
                    format!(
                        "a range that avoids the held-out benchmark's seeds {BENCHMARK_SEED_BASE}..={bench_last} \
                         (only the benchmark itself may use them)"
                    ),
                ));
            }
        }
        if self.cycle_patterns {
            let need = StoryPattern::ALL.iter().map(|p| p.min_shots()).max().unwrap_or(1);
            if self.options.max_shots < need {
                return Err(WorldError::out_of_range(
                    "max shots",
                    self.options.max_shots,
                    format!("at least {need} when every pattern is used"),
                ));
            }
        }
        Ok(())
    }

    /// Seed of the last story.
    fn last_seed(&self) -> Result<u64> {
        (self.stories as u64)
            .checked_sub(1)
            .and_then(|n| self.first_seed.checked_add(n))
            .ok_or_else(|| WorldError::out_of_range("first seed", self.first_seed, "a range that fits in u64"))
    }

    /// Seed of story `i`.
    pub fn seed(&self, i: usize) -> u64 {
        self.first_seed.wrapping_add(i as u64)
    }

    /// The options story `i` is drawn with (its pattern fixed when patterns are cycled).
    pub fn options_for(&self, i: usize) -> StoryOptions {
        let mut options = self.options.clone();
        if self.cycle_patterns {
            options.pattern = Some(StoryPattern::ALL[i % StoryPattern::ALL.len()]);
        }
        options
    }

    /// Draws story `i` (deterministic: the same spec and index always give the same story).
    pub fn story(&self, i: usize) -> Result<Story> {
        generate_story(self.seed(i), &self.options_for(i))
    }
}

/// One story of a manifest; paths are relative to the dataset folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The story's id (also the stem of its files).
    pub id: String,
    /// The seed it was drawn from.
    pub seed: u64,
    /// Its recurrence pattern.
    pub pattern: StoryPattern,
    /// Number of shots.
    pub shots: usize,
    /// Number of pixel frames.
    pub frames: usize,
    /// Our story JSON.
    pub story: String,
    /// The H.264 video; `None` when the dataset was written without videos.
    pub video: Option<String>,
    /// Per-frame ground truth, one JSON per line.
    pub truth: String,
    /// ShotStream's caption JSON.
    pub captions: String,
}

/// Totals over a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestTotals {
    /// Stories.
    pub stories: usize,
    /// Shots over all stories.
    pub shots: usize,
    /// Pixel frames over all stories.
    pub frames: usize,
    /// Stories per pattern name (every pattern listed, zeros included).
    pub patterns: BTreeMap<String, usize>,
}

/// `manifest.json`: what a dataset holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// Always [`GENERATOR`].
    pub generator: String,
    /// Whether this is the held-out benchmark.
    pub benchmark: bool,
    /// How the stories were drawn.
    pub options: StoryOptions,
    /// Seed of story 0.
    pub first_seed: u64,
    /// Whether patterns were cycled instead of drawn.
    pub cycle_patterns: bool,
    /// Whether videos were written.
    pub videos: bool,
    /// The ShotStream index CSV.
    pub shotstream_csv: String,
    /// The vocabulary file.
    pub vocab: String,
    /// One entry per story, in seed order.
    pub stories: Vec<ManifestEntry>,
    /// Totals.
    pub totals: ManifestTotals,
}

impl Manifest {
    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a manifest, naming `origin` in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| {
            WorldError::malformed(format!("{origin}:{}:{}", e.line(), e.column()), format!("not a world manifest: {e}"))
        })?;
        if manifest.generator != GENERATOR {
            return Err(WorldError::malformed(
                origin,
                format!("generator is {:?}, expected {GENERATOR:?}", manifest.generator),
            ));
        }
        if manifest.version != MANIFEST_VERSION {
            return Err(WorldError::out_of_range(
                format!("{origin}: version"),
                manifest.version,
                format!("{MANIFEST_VERSION}"),
            ));
        }
        Ok(manifest)
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| WorldError::io(path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }
}

/// The text of `vocab.txt`: the three specials, then [`caption_vocabulary`], one word per line.
pub fn vocabulary_text() -> String {
    let mut text = String::new();
    for word in VOCAB_SPECIALS.iter().map(|s| s.to_string()).chain(caption_vocabulary()) {
        text.push_str(&word);
        text.push('\n');
    }
    text
}

/// Writes [`vocabulary_text`] to `path` atomically.
pub fn write_vocabulary(path: &Path) -> Result<()> {
    Ok(storyreel_media::write_atomic(path, vocabulary_text().as_bytes())?)
}

/// Renders `spec`'s stories into `out_dir` in parallel and writes the manifest last.
///
/// Output is byte-identical whatever the thread count: each story's files depend only on its
/// seed, and the CSV and manifest list stories in seed order. `progress(done, total)` is called
/// on the calling thread after each finished story. On error the finished stories stay on disk
/// but no manifest is written.
pub fn generate_dataset(
    out_dir: &Path,
    spec: &DatasetSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Manifest> {
    spec.validate()?;
    prepare_dir(out_dir, spec.overwrite)?;
    for sub in SUBDIRS {
        if sub == "videos" && !spec.write_videos {
            continue;
        }
        let dir = out_dir.join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| WorldError::io(&dir, e))?;
    }

    let total = spec.stories;
    let failed = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<()>();
    // `None` marks a story skipped because another one had already failed.
    let results: Vec<Option<Result<(ManifestEntry, ShotStreamRow)>>> = std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            (0..total)
                .into_par_iter()
                .map_with(tx, |tx, i| {
                    if failed.load(Ordering::Relaxed) {
                        return None;
                    }
                    let result = write_story(out_dir, spec, i);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    // The receiver only goes away once every worker is done, so a failed send cannot happen.
                    let _ = tx.send(());
                    Some(result)
                })
                .collect()
        });
        let mut done = 0;
        while rx.recv().is_ok() {
            done += 1;
            progress(done, total);
        }
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });

    let mut entries = Vec::with_capacity(total);
    let mut rows = Vec::with_capacity(total);
    for result in results.into_iter().flatten() {
        let (entry, row) = result?;
        entries.push(entry);
        rows.push(row);
    }

    write_index_csv(out_dir.join(SHOTSTREAM_CSV), &rows)?;
    write_vocabulary(&out_dir.join(VOCAB_FILE))?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        generator: GENERATOR.to_string(),
        benchmark: spec.benchmark,
        options: spec.options.clone(),
        first_seed: spec.first_seed,
        cycle_patterns: spec.cycle_patterns,
        videos: spec.write_videos,
        shotstream_csv: SHOTSTREAM_CSV.to_string(),
        vocab: VOCAB_FILE.to_string(),
        totals: totals(&entries),
        stories: entries,
    };
    storyreel_media::write_atomic(&out_dir.join(MANIFEST_FILE), format!("{}\n", manifest.to_json()).as_bytes())?;
    Ok(manifest)
}

/// Totals of `entries`.
fn totals(entries: &[ManifestEntry]) -> ManifestTotals {
    let mut patterns: BTreeMap<String, usize> = StoryPattern::ALL.iter().map(|p| (p.name().to_string(), 0)).collect();
    for e in entries {
        *patterns.entry(e.pattern.name().to_string()).or_default() += 1;
    }
    ManifestTotals {
        stories: entries.len(),
        shots: entries.iter().map(|e| e.shots).sum(),
        frames: entries.iter().map(|e| e.frames).sum(),
        patterns,
    }
}

/// Whether `dir` holds a dataset of ours, finished (manifest) or interrupted (marker).
fn is_world_dataset(dir: &Path) -> bool {
    dir.join(MARKER_FILE).is_file() || Manifest::read(&dir.join(MANIFEST_FILE)).is_ok()
}

/// Makes `dir` ready for a new dataset: created if missing; refused if it holds anything else
/// (unless `overwrite`); emptied of a previous dataset's files so none outlives the new one.
fn prepare_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(WorldError::malformed(dir.display().to_string(), "exists and is not a directory"));
    }
    std::fs::create_dir_all(dir).map_err(|e| WorldError::io(dir, e))?;
    let non_empty = std::fs::read_dir(dir).map_err(|e| WorldError::io(dir, e))?.next().is_some();
    let ours = is_world_dataset(dir);
    if non_empty && !ours && !overwrite {
        return Err(WorldError::malformed(
            dir.display().to_string(),
            "the directory is not empty and holds no storyreel-world dataset; choose an empty directory \
             or overwrite anyway (--force)",
        ));
    }
    // The manifest goes first: an interrupted overwrite must not look like a finished dataset.
    for file in [MANIFEST_FILE, SHOTSTREAM_CSV, VOCAB_FILE] {
        let path = dir.join(file);
        if ours && path.is_file() {
            std::fs::remove_file(&path).map_err(|e| WorldError::io(&path, e))?;
        }
    }
    if ours {
        for sub in SUBDIRS {
            let path = dir.join(sub);
            if path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(|e| WorldError::io(&path, e))?;
            }
        }
    }
    Ok(storyreel_media::write_atomic(&dir.join(MARKER_FILE), format!("{GENERATOR}\n").as_bytes())?)
}

/// Paths of story `id`'s files relative to the dataset folder.
fn story_paths(id: &str, videos: bool) -> (String, Option<String>, String, String) {
    (
        format!("stories/{id}.json"),
        videos.then(|| format!("videos/{id}.mp4")),
        format!("truth/{id}.jsonl"),
        format!("captions/{id}.json"),
    )
}

/// Draws, renders and writes story `i`; returns its manifest entry and CSV row.
fn write_story(out_dir: &Path, spec: &DatasetSpec, i: usize) -> Result<(ManifestEntry, ShotStreamRow)> {
    let story = spec.story(i)?;
    let rendered = render_story(&story)?;
    let (story_path, video_path, truth_path, captions_path) = story_paths(&story.id, spec.write_videos);

    storyreel_media::write_atomic(&out_dir.join(&story_path), format!("{}\n", story.to_json()).as_bytes())?;
    if let Some(video) = &video_path {
        write_video_atomic(&out_dir.join(video), &rendered.frames, &rendered.cuts, story.format.fps)?;
    }
    let mut truth = String::with_capacity(rendered.truth.len() * 160);
    for t in &rendered.truth {
        let line =
            serde_json::to_string(t).map_err(|source| WorldError::Json { path: out_dir.join(&truth_path), source })?;
        truth.push_str(&line);
        truth.push('\n');
    }
    storyreel_media::write_atomic(&out_dir.join(&truth_path), truth.as_bytes())?;
    let captions = CaptionFile {
        global_caption: story.global_caption.clone(),
        shots: story.shots.iter().map(|s| s.caption.clone()).collect(),
        video_path: video_path.clone(),
    };
    write_caption_json(out_dir.join(&captions_path), &captions)?;

    let row = ShotStreamRow {
        shot_num_from_caption: story.shots.len(),
        json_path: captions_path.clone(),
        video_path: video_path.clone(),
        frame_number: story.shot_ranges().into_iter().map(|(s, e)| ShotRange::new(s, e)).collect(),
    };
    let entry = ManifestEntry {
        id: story.id.clone(),
        seed: story.seed,
        pattern: story.pattern,
        shots: story.shots.len(),
        frames: story.total_frames(),
        story: story_path,
        video: video_path,
        truth: truth_path,
        captions: captions_path,
    };
    Ok((entry, row))
}

/// Encodes `frames` to a temporary MP4 beside `path` and renames it into place. Keyframes go
/// exactly at the cuts: a periodic keyframe inside a shot makes the quality jump there, which
/// a shot detector can mistake for a cut.
fn write_video_atomic(path: &Path, frames: &[RgbFrame], cuts: &[usize], fps: u32) -> Result<()> {
    let tmp = partial_path(path);
    let result = (|| -> Result<()> {
        let mut writer = Mp4Writer::create(&tmp, EncodeOptions::default().with_fps(fps).with_keyframe_interval(0))?;
        for (i, frame) in frames.iter().enumerate() {
            if cuts.contains(&i) {
                writer.force_keyframe();
            }
            writer.push_frame(frame)?;
        }
        writer.finish()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| WorldError::io(path, e))
}

/// `dir/.name.partial.ext`: hidden, and keeping the extension for writers that look at it.
fn partial_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|s| format!(".{}", s.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!(".{stem}.partial{ext}"))
}

/// A dataset written by [`generate_dataset`], opened for reading.
#[derive(Debug, Clone)]
pub struct WorldDataset {
    dir: PathBuf,
    manifest: Manifest,
}

impl WorldDataset {
    /// Reads `dir/manifest.json` and checks that every file it lists exists.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir.join(MANIFEST_FILE))?;
        let dataset = Self { dir, manifest };
        let missing = |path: PathBuf, what: &str| {
            WorldError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, format!("{what} listed in the manifest is missing")),
            )
        };
        for file in [&dataset.manifest.shotstream_csv, &dataset.manifest.vocab] {
            let path = dataset.dir.join(file);
            if !path.is_file() {
                return Err(missing(path, "file"));
            }
        }
        for entry in &dataset.manifest.stories {
            let files = [("story", Some(&entry.story)), ("video", entry.video.as_ref()), ("truth", Some(&entry.truth))];
            for (what, file) in files.into_iter().chain([("captions", Some(&entry.captions))]) {
                let Some(file) = file else { continue };
                let path = dataset.dir.join(file);
                if !path.is_file() {
                    return Err(missing(path, &format!("{what} of {}", entry.id)));
                }
            }
        }
        Ok(dataset)
    }

    /// The dataset folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Number of stories.
    pub fn len(&self) -> usize {
        self.manifest.stories.len()
    }

    /// Whether the dataset holds no story.
    pub fn is_empty(&self) -> bool {
        self.manifest.stories.is_empty()
    }

    /// Manifest entry of story `i`.
    pub fn entry(&self, i: usize) -> Result<&ManifestEntry> {
        self.manifest.stories.get(i).ok_or_else(|| {
            WorldError::out_of_range(
                "story index",
                i,
                format!("less than {} (stories in {})", self.len(), self.dir.join(MANIFEST_FILE).display()),
            )
        })
    }

    /// Story `i`, read from its JSON and checked against the manifest.
    pub fn story(&self, i: usize) -> Result<Story> {
        let entry = self.entry(i)?;
        let path = self.dir.join(&entry.story);
        let story = Story::read(&path)?;
        if story.id != entry.id || story.shots.len() != entry.shots || story.total_frames() != entry.frames {
            return Err(WorldError::malformed(
                path.display().to_string(),
                format!(
                    "story {} with {} shots and {} frames does not match the manifest's {} ({} shots, {} frames)",
                    story.id,
                    story.shots.len(),
                    story.total_frames(),
                    entry.id,
                    entry.shots,
                    entry.frames
                ),
            ));
        }
        Ok(story)
    }

    /// Story `i`'s frames, decoded from its MP4.
    pub fn frames(&self, i: usize) -> Result<Vec<RgbFrame>> {
        let entry = self.entry(i)?;
        let Some(video) = &entry.video else {
            return Err(WorldError::malformed(
                self.dir.join(MANIFEST_FILE).display().to_string(),
                format!("{} has no video: the dataset was written without videos", entry.id),
            ));
        };
        let path = self.dir.join(video);
        let (_, frames) =
            read_mp4(&path).map_err(|e| WorldError::malformed(path.display().to_string(), e.to_string()))?;
        if frames.len() != entry.frames {
            return Err(WorldError::malformed(
                path.display().to_string(),
                format!("{} frames decoded, the manifest lists {}", frames.len(), entry.frames),
            ));
        }
        Ok(frames)
    }

    /// Story `i`'s per-frame ground truth.
    pub fn truth(&self, i: usize) -> Result<Vec<FrameTruth>> {
        let entry = self.entry(i)?;
        let path = self.dir.join(&entry.truth);
        let text = std::fs::read_to_string(&path).map_err(|e| WorldError::io(&path, e))?;
        let truth = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str::<FrameTruth>(line).map_err(|e| {
                    WorldError::malformed(format!("{}:{}", path.display(), n + 1), format!("not a frame truth: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if truth.len() != entry.frames {
            return Err(WorldError::malformed(
                path.display().to_string(),
                format!("{} frame truths, the manifest lists {} frames", truth.len(), entry.frames),
            ));
        }
        Ok(truth)
    }

    /// The ShotStream view of the same stories (index CSV + caption JSONs), strictly checked.
    pub fn shotstream(&self) -> Result<ShotStreamDataset> {
        ShotStreamDataset::open(self.dir.join(&self.manifest.shotstream_csv), RangePolicy::Strict)
    }
}

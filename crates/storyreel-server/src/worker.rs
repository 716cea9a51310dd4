//! The engine worker: one thread that owns the story model and generates one shot at a time,
//! taking shots round robin from the sessions that have them, and streams each decoded chunk
//! to the session's clients as JPEG frames.

use std::cell::{Cell, RefCell};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use storyreel_engine::context::policy_by_name;
use storyreel_engine::pixels::{from_rgb_frames, to_rgb_frames};
use storyreel_engine::{EngineError, ShotEvents, ShotRequest, StoryModel, StoryOptions, StoryStream};
use storyreel_media::RgbFrame;

use crate::hub::{Event, Hub, Job, JobOutcome};

/// JPEG quality of streamed frames.
const JPEG_QUALITY: u8 = 85;

/// Runs until the hub shuts down.
pub fn run_worker(hub: Arc<Hub>, model: Arc<StoryModel>) {
    while let Some(job) = hub.next_job() {
        let outcome = match run_job(&hub, &model, &job) {
            Ok(outcome) => outcome,
            Err(EngineError::Cancelled) => JobOutcome::Cancelled,
            Err(e) => JobOutcome::Failed(e.to_string()),
        };
        hub.finish_job(&job, outcome);
    }
}

/// One frame as a WebSocket message: header length (u32, big-endian), JSON header, JPEG.
pub fn frame_message(header: &serde_json::Value, frame: &RgbFrame) -> Result<Vec<u8>, image::ImageError> {
    let header = header.to_string();
    let mut out = Vec::with_capacity(4 + header.len() + frame.data.len() / 4);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header.as_bytes());
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY).encode(
        &frame.data,
        frame.width,
        frame.height,
        image::ExtendedColorType::Rgb8,
    )?;
    out.extend_from_slice(&jpeg.into_inner());
    Ok(out)
}

fn run_job(hub: &Hub, model: &StoryModel, job: &Job) -> storyreel_engine::Result<JobOutcome> {
    let card = &model.card;
    let memory = policy_by_name(&job.context, card.context_frames)
        .ok_or_else(|| EngineError::Config(format!("unknown context policy {:?}", job.context)))?;
    let sampler = card.sampler.sampler()?;
    let options = StoryOptions { seed: job.seed, memory, sampler, decoder: None };
    let mut stream = StoryStream::new(model, &job.global_caption, options)?;
    // The story's earlier shots come back as the 8-bit frames that were shown and journaled,
    // so a story resumed after a restart continues exactly as it would have.
    for (caption, frames) in &job.done {
        stream.push_finished(caption, from_rgb_frames(frames, model.dit.device())?)?;
    }
    let started = Instant::now();
    let first_frame_s = Cell::new(None);
    let progress = Cell::new((0usize, 0usize));
    let frames: RefCell<Vec<RgbFrame>> = RefCell::new(Vec::new());
    let fps = card.fps.max(1.0);
    let mut on_start = |_: usize, picks: &[storyreel_engine::ContextPick]| -> storyreel_engine::Result<()> {
        let context = picks.iter().filter_map(|p| job.done_indices.get(p.shot).map(|&i| [i, p.frame])).collect();
        hub.shot_started(job, context);
        Ok(())
    };
    let mut on_frames = |_: usize, pixels: &Tensor| -> storyreel_engine::Result<()> {
        let rgb = to_rgb_frames(pixels)?;
        if first_frame_s.get().is_none() {
            first_frame_s.set(Some(started.elapsed().as_secs_f64()));
        }
        let mut all = frames.borrow_mut();
        // JPEG encoding is skipped when nobody watches; the shot is journaled either way.
        if job.events.receiver_count() > 0 {
            for (i, f) in rgb.iter().enumerate() {
                let frame = all.len() + i;
                let story_frame = job.first_frame + frame;
                let header = serde_json::json!({
                    "shot": job.index, "frame": frame, "story_frame": story_frame,
                    "pts": story_frame as f64 / fps, "width": f.width, "height": f.height,
                });
                let bytes = frame_message(&header, f).map_err(|e| EngineError::Output(format!("JPEG: {e}")))?;
                let _ = job.events.send(Event::Frame(bytes.into()));
            }
        }
        let (done, total) = progress.get();
        let event = serde_json::json!({
            "type": "chunk", "shot": job.index, "chunk": done.saturating_sub(1), "chunks": total, "frames": rgb.len(),
        });
        let _ = job.events.send(Event::Text(event.to_string()));
        all.extend(rgb);
        Ok(())
    };
    let mut on_progress = |_: usize, done: usize, total: usize| progress.set((done, total));
    let cancelled = || job.cancel.load(Ordering::SeqCst);
    let request = ShotRequest { caption: job.caption.clone(), frames: job.frames };
    let events = ShotEvents {
        on_start: &mut on_start,
        on_frames: &mut on_frames,
        on_progress: &mut on_progress,
        cancelled: &cancelled,
    };
    stream.generate_shot(&request, events)?;
    Ok(JobOutcome::Done {
        frames: frames.into_inner(),
        seconds: started.elapsed().as_secs_f64(),
        first_frame_seconds: first_frame_s.get(),
    })
}

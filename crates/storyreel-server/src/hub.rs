//! The sessions every request and the engine worker share: their shots, limits, the round-robin
//! queue of shots waiting for the engine, event channels, and the journal writes that keep
//! finished shots safe.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use storyreel_media::RgbFrame;
use tokio::sync::broadcast;

use crate::config::ServeConfig;
use crate::error::{ApiError, ServerError};
use crate::journal::{self, JournalSession, JournalShot};
use crate::views::{AppendShot, CreateSession, SessionState, SessionView, ShotStatus, ShotView};

/// Context policies a session may ask for.
pub const CONTEXT_POLICIES: &[&str] = storyreel_engine::context::POLICY_NAMES;
/// Messages a slow WebSocket client may fall behind by before it is told it lagged.
const EVENT_BUFFER: usize = 4096;

/// What the model makes, as the API reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// student or teacher.
    pub kind: String,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// The model card's description.
    pub description: String,
    /// The context policy a session gets by default.
    #[serde(skip)]
    pub default_context: String,
    /// Words the text encoder knows, when it has a closed vocabulary (the toy encoder).
    pub vocabulary: Option<Vec<String>>,
    /// Tokenizes captions to check them before they are queued.
    #[serde(skip)]
    pub tokenizer: Option<storyreel_nn::text::toy::ToyTokenizer>,
}

/// A message to a session's WebSocket clients.
#[derive(Debug, Clone)]
pub enum Event {
    /// A JSON event.
    Text(String),
    /// One frame: header length, JSON header, JPEG bytes.
    Frame(axum::body::Bytes),
}

/// A finished shot's caption and frames.
pub type FinishedShot = (String, Arc<Vec<RgbFrame>>);

/// A session in memory: its record exactly as journaled, and the frames of its done shots.
pub(crate) struct Session {
    pub record: JournalSession,
    /// Decoded frames of each shot of `record.shots` (Some once done).
    pub rgb: Vec<Option<Arc<Vec<RgbFrame>>>>,
    pub events: broadcast::Sender<Event>,
    /// Set to stop the running shot.
    pub cancel: Arc<AtomicBool>,
    pub last_active: Instant,
}

/// Whether shots are waiting or running.
fn state_of(shots: &[JournalShot]) -> SessionState {
    if shots.iter().any(|s| s.status == ShotStatus::Generating) {
        SessionState::Generating
    } else if shots.iter().any(|s| s.status.is_pending()) {
        SessionState::Queued
    } else {
        SessionState::Idle
    }
}

/// Shot `index` of `record` as the API shows it.
fn shot_view(record: &JournalSession, index: usize) -> ShotView {
    let s = &record.shots[index];
    let first_frame = (s.status == ShotStatus::Done)
        .then(|| record.shots[..index].iter().filter(|p| p.status == ShotStatus::Done).map(|p| p.frames).sum());
    ShotView {
        index,
        caption: s.caption.clone(),
        frames: s.frames,
        status: s.status,
        error: s.error.clone(),
        context: s.context.clone(),
        first_frame,
        seconds: s.seconds,
        first_frame_seconds: s.first_frame_seconds,
    }
}

/// A session's record as the API shows it.
fn session_view(record: &JournalSession, info: &ModelInfo) -> SessionView {
    SessionView {
        id: record.id.clone(),
        global_caption: record.global_caption.clone(),
        seed: record.seed,
        frames: record.frames,
        context: record.context.clone(),
        created_unix: record.created_unix,
        state: state_of(&record.shots),
        frames_done: record.shots.iter().filter(|s| s.status == ShotStatus::Done).map(|s| s.frames).sum(),
        fps: info.fps,
        width: info.width,
        height: info.height,
        shots: (0..record.shots.len()).map(|i| shot_view(record, i)).collect(),
    }
}

/// A new shot waiting for the engine.
fn queued_shot(caption: String, frames: usize) -> JournalShot {
    JournalShot {
        caption,
        frames,
        status: ShotStatus::Queued,
        error: None,
        context: Vec::new(),
        seconds: None,
        first_frame_seconds: None,
    }
}

impl Session {
    fn new(record: JournalSession, rgb: Vec<Option<Arc<Vec<RgbFrame>>>>) -> Self {
        Self {
            record,
            rgb,
            events: broadcast::channel(EVENT_BUFFER).0,
            cancel: Arc::new(AtomicBool::new(false)),
            last_active: Instant::now(),
        }
    }

    fn pending(&self) -> usize {
        self.record.shots.iter().filter(|s| s.status.is_pending()).count()
    }

    fn generating(&self) -> bool {
        self.record.shots.iter().any(|s| s.status == ShotStatus::Generating)
    }

    pub fn shot_view(&self, index: usize) -> ShotView {
        shot_view(&self.record, index)
    }

    pub fn view(&self, info: &ModelInfo) -> SessionView {
        session_view(&self.record, info)
    }

    /// Sends an event to the session's clients (none listening is fine).
    pub fn send(&self, event: serde_json::Value) {
        let _ = self.events.send(Event::Text(event.to_string()));
    }
}

/// One shot handed to the engine worker, with everything it needs so that no lock is held
/// while it runs.
pub(crate) struct Job {
    pub id: String,
    pub index: usize,
    pub caption: String,
    pub frames: usize,
    pub global_caption: String,
    pub seed: u64,
    pub context: String,
    /// Captions and frames of the story's finished shots, in order.
    pub done: Vec<FinishedShot>,
    /// Their indices in the session's list of shots.
    pub done_indices: Vec<usize>,
    /// The shot's first frame in the story video.
    pub first_frame: usize,
    pub cancel: Arc<AtomicBool>,
    pub events: broadcast::Sender<Event>,
}

/// How a job ended.
pub(crate) enum JobOutcome {
    Done { frames: Vec<RgbFrame>, seconds: f64, first_frame_seconds: Option<f64> },
    Cancelled,
    Failed(String),
}

struct HubState {
    sessions: HashMap<String, Session>,
    /// Session ids in the order the worker visits them (round robin).
    rotation: VecDeque<String>,
    shutdown: bool,
}

/// The shared sessions and the engine queue.
pub struct Hub {
    config: ServeConfig,
    info: ModelInfo,
    state: Mutex<HubState>,
    wake: Condvar,
    ids: AtomicU64,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn too_busy(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(5)
}

impl Hub {
    /// A hub journaling under `config.journal_dir`; journaled sessions with shots still to
    /// generate are reopened (and their shots queued) at once, the others when first asked for.
    pub fn new(config: ServeConfig, info: ModelInfo) -> Result<Arc<Self>, ServerError> {
        std::fs::create_dir_all(&config.journal_dir).map_err(|e| ServerError::journal(&config.journal_dir, e))?;
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
            ^ (std::process::id() as u64).rotate_left(32);
        let hub = Arc::new(Self {
            config,
            info,
            state: Mutex::new(HubState { sessions: HashMap::new(), rotation: VecDeque::new(), shutdown: false }),
            wake: Condvar::new(),
            ids: AtomicU64::new(seed),
        });
        {
            let mut st = hub.lock();
            for id in journal::list_sessions(&hub.config.journal_dir) {
                match journal::read_session(&hub.config.journal_dir, &id) {
                    Ok(loaded) if loaded.session.shots.iter().any(|s| s.status.is_pending()) => {
                        hub.open_loaded(&mut st, loaded);
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("storyreel serve: skipping journaled session {id}: {e}"),
                }
            }
        }
        hub.wake.notify_all();
        Ok(hub)
    }

    /// The configuration.
    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    /// What the model makes.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock cannot leave the sessions half-updated in a way later
        // requests would trip on (every update is a few field writes), so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn random(&self) -> u64 {
        mix(self.ids.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
    }

    fn open_loaded(&self, st: &mut HubState, loaded: journal::LoadedSession) {
        let journal::LoadedSession { session, frames, repairs } = loaded;
        for r in &repairs {
            eprintln!("storyreel serve: session {}: {r}", session.id);
        }
        let id = session.id.clone();
        st.sessions.insert(id.clone(), Session::new(session, frames));
        st.rotation.push_back(id);
    }

    /// The session `id`, reopened from the journal when it is not in memory.
    fn session<'a>(&self, st: &'a mut HubState, id: &str) -> Result<&'a mut Session, ApiError> {
        if !st.sessions.contains_key(id) {
            if !journal::valid_id(id) || !journal::session_dir(&self.config.journal_dir, id).is_dir() {
                return Err(ApiError::no_session(id));
            }
            if st.sessions.len() >= self.config.limits.max_sessions {
                return Err(too_busy(
                    "too_many_sessions",
                    format!("{} sessions are open; try again when one ends", st.sessions.len()),
                ));
            }
            let loaded = journal::read_session(&self.config.journal_dir, id).map_err(ApiError::from)?;
            self.open_loaded(st, loaded);
        }
        let s = st.sessions.get_mut(id).ok_or_else(|| ApiError::no_session(id))?;
        s.last_active = Instant::now();
        Ok(s)
    }

    fn check_caption(&self, what: &str, caption: &str, allow_empty: bool) -> Result<(), ApiError> {
        let max = self.config.limits.max_caption_chars;
        let n = caption.chars().count();
        if n > max {
            return Err(ApiError::invalid(
                "caption_too_long",
                format!("{what} has {n} characters; the limit is {max}"),
            ));
        }
        if !allow_empty && caption.trim().is_empty() {
            return Err(ApiError::invalid("invalid_story", format!("{what} is empty")));
        }
        // A caption the model cannot read would only fail later in the queue; refuse it now.
        if let Some(tokenizer) = &self.info.tokenizer {
            let unknown = tokenizer.tokenize(caption, usize::MAX).unknown;
            if !unknown.is_empty() {
                let words: Vec<String> = unknown.iter().map(|w| format!("{w:?}")).collect();
                return Err(ApiError::invalid(
                    "unknown_words",
                    format!(
                        "{what} uses word(s) the model's text encoder does not know: {} (GET /api/info lists its vocabulary)",
                        words.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_frames(&self, what: &str, frames: usize) -> Result<(), ApiError> {
        let max = self.config.limits.max_frames;
        if frames == 0 || !(frames - 1).is_multiple_of(4) || frames > max {
            return Err(ApiError::invalid(
                "invalid_frames",
                format!("{what}: {frames} frames; a shot is 4k+1 frames (5, 9, …, {max})"),
            ));
        }
        Ok(())
    }

    fn queued_total(st: &HubState) -> usize {
        st.sessions.values().map(Session::pending).sum()
    }

    /// Checks that `session` may take `n` more shots and the queue has room for them.
    fn check_room(&self, st: &HubState, session: Option<&Session>, n: usize) -> Result<(), ApiError> {
        let limits = &self.config.limits;
        if let Some(s) = session {
            let counted = s.record.shots.iter().filter(|x| x.status.counts()).count();
            if counted + n > limits.max_shots {
                return Err(ApiError::invalid(
                    "too_many_shots",
                    format!("the story has {counted} shots; the limit is {}", limits.max_shots),
                ));
            }
            let pending = s.pending();
            if pending + n > limits.max_pending_per_session {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_pending",
                    format!(
                        "this session already has {pending} shots waiting (at most {}); append more when one is done",
                        limits.max_pending_per_session
                    ),
                )
                .retry_after(2));
            }
        } else if n > limits.max_shots {
            return Err(ApiError::invalid(
                "too_many_shots",
                format!("{n} shots given; the limit is {}", limits.max_shots),
            ));
        } else if n > limits.max_pending_per_session {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_pending",
                format!("{n} shots given at once; at most {} may wait", limits.max_pending_per_session),
            )
            .retry_after(2));
        }
        let total = Self::queued_total(st);
        if total + n > limits.queue_capacity {
            return Err(too_busy(
                "queue_full",
                format!("the engine has {total} shots waiting (capacity {}); try again shortly", limits.queue_capacity),
            ));
        }
        Ok(())
    }

    fn write_journal(&self, s: &Session) -> Result<(), ApiError> {
        journal::write_session(&self.config.journal_dir, &s.record).map_err(ApiError::from)
    }

    /// Creates a session (queuing the shots its request gives).
    pub fn create(&self, body: CreateSession) -> Result<SessionView, ApiError> {
        self.check_caption("the global caption", &body.global_caption, true)?;
        let frames = body.frames.unwrap_or(self.config.default_frames);
        self.check_frames("frames", frames)?;
        let context = body.context.unwrap_or_else(|| self.info.default_context.clone());
        if !CONTEXT_POLICIES.contains(&context.as_str()) {
            return Err(ApiError::invalid(
                "invalid_story",
                format!("context {context:?}: choose one of {}", CONTEXT_POLICIES.join(", ")),
            ));
        }
        for (i, shot) in body.shots.iter().enumerate() {
            self.check_caption(&format!("shots[{i}].caption"), &shot.caption, false)?;
            self.check_frames(&format!("shots[{i}].frames"), shot.frames.unwrap_or(frames))?;
        }
        let mut st = self.lock();
        if st.sessions.len() >= self.config.limits.max_sessions {
            return Err(too_busy(
                "too_many_sessions",
                format!(
                    "{} sessions are open (at most {}); try again when one ends",
                    st.sessions.len(),
                    self.config.limits.max_sessions
                ),
            ));
        }
        self.check_room(&st, None, body.shots.len())?;
        let id = format!("s-{:012x}", self.random() >> 16);
        let record = JournalSession {
            version: journal::JOURNAL_VERSION,
            id: id.clone(),
            global_caption: body.global_caption,
            seed: body.seed.unwrap_or_else(|| self.random() >> 1),
            frames,
            context,
            created_unix: now_unix(),
            shots: body.shots.into_iter().map(|s| queued_shot(s.caption, s.frames.unwrap_or(frames))).collect(),
        };
        let session = Session::new(record.clone(), vec![None; record.shots.len()]);
        self.write_journal(&session)?;
        let view = session.view(&self.info);
        st.sessions.insert(id.clone(), session);
        st.rotation.push_back(id);
        drop(st);
        self.wake.notify_all();
        Ok(view)
    }

    /// The session `id`.
    pub fn get(&self, id: &str) -> Result<SessionView, ApiError> {
        let mut st = self.lock();
        Ok(self.session(&mut st, id)?.view(&self.info))
    }

    /// Every session: those in memory and those only in the journal (shown as read from it).
    pub fn list(&self) -> Vec<SessionView> {
        let mut views: Vec<SessionView> = self.lock().sessions.values().map(|s| s.view(&self.info)).collect();
        // The journal is read without the lock, so requests and the worker do not wait on it.
        for id in journal::list_sessions(&self.config.journal_dir) {
            if views.iter().any(|v| v.id == id) {
                continue;
            }
            if let Ok(loaded) = journal::read_session(&self.config.journal_dir, &id) {
                views.push(session_view(&loaded.session, &self.info));
            }
        }
        views.sort_by(|a, b| b.created_unix.cmp(&a.created_unix).then(a.id.cmp(&b.id)));
        views
    }

    /// Appends a shot to session `id` (also while another of its shots is generating).
    pub fn append(&self, id: &str, body: AppendShot) -> Result<ShotView, ApiError> {
        self.check_caption("caption", &body.caption, false)?;
        let mut st = self.lock();
        let frames = {
            let s = self.session(&mut st, id)?;
            body.frames.unwrap_or(s.record.frames)
        };
        self.check_frames("frames", frames)?;
        {
            let s = st.sessions.get(id).ok_or_else(|| ApiError::no_session(id))?;
            self.check_room(&st, Some(s), 1)?;
        }
        let s = st.sessions.get_mut(id).ok_or_else(|| ApiError::no_session(id))?;
        s.record.shots.push(queued_shot(body.caption, frames));
        s.rgb.push(None);
        let index = s.record.shots.len() - 1;
        if let Err(e) = self.write_journal(s) {
            s.record.shots.pop();
            s.rgb.pop();
            return Err(e);
        }
        let view = s.shot_view(index);
        s.send(serde_json::json!({"type": "shot_queued", "shot": view}));
        drop(st);
        self.wake.notify_all();
        Ok(view)
    }

    /// Stops the running shot of session `id` and cancels its queued ones.
    pub fn cancel(&self, id: &str) -> Result<SessionView, ApiError> {
        let mut st = self.lock();
        let s = self.session(&mut st, id)?;
        let mut cancelled = Vec::new();
        for (i, shot) in s.record.shots.iter_mut().enumerate() {
            match shot.status {
                ShotStatus::Generating => s.cancel.store(true, Ordering::SeqCst),
                ShotStatus::Queued => {
                    shot.status = ShotStatus::Cancelled;
                    cancelled.push(i);
                }
                _ => {}
            }
        }
        for i in cancelled {
            let view = s.shot_view(i);
            s.send(serde_json::json!({"type": "shot_cancelled", "shot": view}));
        }
        self.write_journal(s)?;
        Ok(s.view(&self.info))
    }

    /// Removes session `id` and its journal (a running shot is stopped).
    pub fn delete(&self, id: &str) -> Result<(), ApiError> {
        let mut st = self.lock();
        if let Some(s) = st.sessions.remove(id) {
            s.cancel.store(true, Ordering::SeqCst);
            st.rotation.retain(|x| x != id);
        } else if !journal::valid_id(id) || !journal::session_dir(&self.config.journal_dir, id).is_dir() {
            return Err(ApiError::no_session(id));
        }
        journal::remove_session(&self.config.journal_dir, id).map_err(ApiError::from)
    }

    /// The session's view and a receiver of its events from now on.
    pub fn subscribe(&self, id: &str) -> Result<(SessionView, broadcast::Receiver<Event>), ApiError> {
        let mut st = self.lock();
        let s = self.session(&mut st, id)?;
        Ok((s.view(&self.info), s.events.subscribe()))
    }

    /// Captions and frames of the session's finished shots, in story order.
    pub fn finished_shots(&self, id: &str) -> Result<Vec<FinishedShot>, ApiError> {
        let mut st = self.lock();
        let s = self.session(&mut st, id)?;
        let shots: Vec<_> = s
            .record
            .shots
            .iter()
            .zip(&s.rgb)
            .filter(|(x, _)| x.status == ShotStatus::Done)
            .filter_map(|(x, rgb)| rgb.clone().map(|f| (x.caption.clone(), f)))
            .collect();
        if shots.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "nothing_to_download",
                format!("session {id} has no finished shot yet"),
            ));
        }
        Ok(shots)
    }

    /// Shots waiting across sessions, and sessions in memory.
    pub fn load(&self) -> (usize, usize) {
        let st = self.lock();
        (Self::queued_total(&st), st.sessions.len())
    }

    /// Lets sessions idle for longer than the timeout leave memory (their journal stays).
    pub fn expire_idle(&self) {
        let timeout = self.config.idle_timeout();
        let mut st = self.lock();
        let idle: Vec<String> = st
            .sessions
            .values()
            // A session someone is watching stays, however quiet.
            .filter(|s| s.pending() == 0 && s.events.receiver_count() == 0 && s.last_active.elapsed() >= timeout)
            .map(|s| s.record.id.clone())
            .collect();
        for id in idle {
            st.sessions.remove(&id);
            st.rotation.retain(|x| *x != id);
        }
    }

    /// Stops the worker after its current shot (which is cancelled).
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutdown = true;
        for s in st.sessions.values() {
            if s.generating() {
                s.cancel.store(true, Ordering::SeqCst);
            }
        }
        drop(st);
        self.wake.notify_all();
    }

    /// True once [`Hub::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutdown
    }

    /// The next shot for the engine, round robin over sessions; blocks until there is one.
    /// `None` once the hub shuts down.
    pub(crate) fn next_job(&self) -> Option<Job> {
        let mut st = self.lock();
        loop {
            if st.shutdown {
                return None;
            }
            for _ in 0..st.rotation.len() {
                let Some(id) = st.rotation.pop_front() else { break };
                st.rotation.push_back(id.clone());
                let Some(s) = st.sessions.get_mut(&id) else { continue };
                if s.generating() {
                    continue;
                }
                let Some(index) = s.record.shots.iter().position(|x| x.status == ShotStatus::Queued) else {
                    continue;
                };
                s.cancel.store(false, Ordering::SeqCst);
                s.record.shots[index].status = ShotStatus::Generating;
                s.last_active = Instant::now();
                let mut done = Vec::new();
                let mut done_indices = Vec::new();
                for (i, (x, rgb)) in s.record.shots[..index].iter().zip(&s.rgb).enumerate() {
                    if let (ShotStatus::Done, Some(rgb)) = (x.status, rgb) {
                        done.push((x.caption.clone(), rgb.clone()));
                        done_indices.push(i);
                    }
                }
                let first_frame = done.iter().map(|(_, f)| f.len()).sum();
                let r = &s.record;
                return Some(Job {
                    id: r.id.clone(),
                    index,
                    caption: r.shots[index].caption.clone(),
                    frames: r.shots[index].frames,
                    global_caption: r.global_caption.clone(),
                    seed: r.seed,
                    context: r.context.clone(),
                    done,
                    done_indices,
                    first_frame,
                    cancel: s.cancel.clone(),
                    events: s.events.clone(),
                });
            }
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Records the context the running shot of `job` was given and tells its clients it started.
    pub(crate) fn shot_started(&self, job: &Job, context: Vec<[usize; 2]>) {
        let mut st = self.lock();
        if let Some(s) = st.sessions.get_mut(&job.id) {
            if let Some(shot) = s.record.shots.get_mut(job.index) {
                shot.context = context;
            }
            let view = s.shot_view(job.index);
            s.send(serde_json::json!({"type": "shot_started", "shot": view}));
        }
    }

    /// Records how `job` ended: a finished shot's frames go to the journal before the session
    /// file calls it done.
    pub(crate) fn finish_job(&self, job: &Job, outcome: JobOutcome) {
        let root = &self.config.journal_dir;
        // A session deleted while its shot ran gets nothing written back into its folder.
        if !self.lock().sessions.contains_key(&job.id) {
            return;
        }
        let outcome = match outcome {
            JobOutcome::Done { frames, seconds, first_frame_seconds } => {
                match journal::write_shot_frames(root, &job.id, job.index, &frames) {
                    Ok(()) => JobOutcome::Done { frames, seconds, first_frame_seconds },
                    Err(e) => JobOutcome::Failed(format!("the finished shot could not be saved: {e}")),
                }
            }
            other => other,
        };
        let mut st = self.lock();
        let st_shutdown = st.shutdown;
        // A session deleted (or expired) meanwhile keeps nothing of the shot.
        let Some(s) = st.sessions.get_mut(&job.id) else { return };
        let Some(shot) = s.record.shots.get_mut(job.index) else { return };
        let event = match outcome {
            JobOutcome::Done { frames, seconds, first_frame_seconds } => {
                shot.status = ShotStatus::Done;
                if let Some(rgb) = s.rgb.get_mut(job.index) {
                    *rgb = Some(Arc::new(frames));
                }
                shot.seconds = Some(seconds);
                shot.first_frame_seconds = first_frame_seconds;
                "shot_done"
            }
            // A shot stopped because the server is shutting down is queued again, so the
            // restarted server generates it.
            JobOutcome::Cancelled if st_shutdown => {
                shot.status = ShotStatus::Queued;
                "shot_queued"
            }
            JobOutcome::Cancelled => {
                shot.status = ShotStatus::Cancelled;
                "shot_cancelled"
            }
            JobOutcome::Failed(message) => {
                shot.status = ShotStatus::Failed;
                shot.error = Some(message);
                "shot_failed"
            }
        };
        s.last_active = Instant::now();
        if let Err(e) = self.write_journal(s) {
            eprintln!("storyreel serve: session {}: {e}", job.id);
        }
        let view = s.shot_view(job.index);
        s.send(serde_json::json!({"type": event, "shot": view}));
        drop(st);
        self.wake.notify_all();
    }
}

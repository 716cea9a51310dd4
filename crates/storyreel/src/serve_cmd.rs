//! `storyreel serve`: the HTTP + WebSocket API and the web page over one story model.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use storyreel_engine::StoryModel;
use storyreel_server::{ServeConfig, ServeLimits};

use crate::device::parse_device;

/// Flags of `serve`.
#[derive(clap::Args)]
pub struct Args {
    /// Story model folder (default: the streaming student built into this binary).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Address to listen on (use 0.0.0.0:PORT to accept other machines).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Folder of the session journal (default: $XDG_DATA_HOME/storyreel/journal, else ~/.local/share/storyreel/journal).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Frames of a shot whose request gives none (4k+1).
    #[arg(long, default_value_t = 25)]
    pub frames: usize,
    /// Sessions held in memory at once.
    #[arg(long, default_value_t = ServeLimits::default().max_sessions)]
    pub max_sessions: usize,
    /// Shots waiting for the engine across all sessions.
    #[arg(long, default_value_t = ServeLimits::default().queue_capacity)]
    pub queue_capacity: usize,
    /// Shots waiting in one session.
    #[arg(long, default_value_t = ServeLimits::default().max_pending_per_session)]
    pub max_pending: usize,
    /// Shots in one story.
    #[arg(long, default_value_t = ServeLimits::default().max_shots)]
    pub max_shots: usize,
    /// Characters in one caption.
    #[arg(long, default_value_t = ServeLimits::default().max_caption_chars)]
    pub max_caption_chars: usize,
    /// Frames in one shot.
    #[arg(long, default_value_t = ServeLimits::default().max_frames)]
    pub max_frames: usize,
    /// Seconds a session stays in memory without requests (its journal stays on disk).
    #[arg(long, default_value_t = ServeLimits::default().idle_timeout_s)]
    pub idle_timeout: u64,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The journal folder when none is given.
fn default_journal() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(d).join("storyreel/journal"));
    }
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).context("no --journal given and HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share/storyreel/journal"))
}

/// The server's configuration from the flags.
pub fn config(args: &Args) -> Result<ServeConfig> {
    let limits = ServeLimits {
        max_sessions: args.max_sessions,
        queue_capacity: args.queue_capacity,
        max_pending_per_session: args.max_pending,
        max_shots: args.max_shots,
        max_caption_chars: args.max_caption_chars,
        max_frames: args.max_frames,
        idle_timeout_s: args.idle_timeout,
    };
    for (name, v) in [
        ("--max-sessions", limits.max_sessions),
        ("--queue-capacity", limits.queue_capacity),
        ("--max-pending", limits.max_pending_per_session),
        ("--max-shots", limits.max_shots),
        ("--max-caption-chars", limits.max_caption_chars),
    ] {
        if v == 0 {
            bail!("{name} must be at least 1");
        }
    }
    if args.frames == 0 || !(args.frames - 1).is_multiple_of(4) || args.frames > limits.max_frames {
        bail!("--frames {} must be 4k+1 and at most --max-frames {}", args.frames, limits.max_frames);
    }
    let journal = match &args.journal {
        Some(j) => j.clone(),
        None => default_journal()?,
    };
    let mut config = ServeConfig::new(journal);
    config.limits = limits;
    config.default_frames = args.frames;
    Ok(config)
}

/// Loads the model named by `--model` (or the embedded default).
pub fn load_model(model: &Option<PathBuf>, device: &str) -> Result<Arc<StoryModel>> {
    let device = parse_device(device)?;
    let dir = match model {
        Some(dir) => dir.clone(),
        None => crate::default_model::folder()?,
    };
    let model =
        StoryModel::load(&dir, &device).with_context(|| format!("loading the story model {}", dir.display()))?;
    Ok(Arc::new(model))
}

/// Runs `storyreel serve` until Ctrl-C or SIGTERM.
pub fn run(args: &Args) -> Result<()> {
    let config = config(args)?;
    let model = load_model(&args.model, &args.device)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let journal = config.journal_dir.clone();
        let server = storyreel_server::start(config, model, args.addr)
            .await
            .with_context(|| format!("serving on {}", args.addr))?;
        let (pending, sessions) = server.hub.load();
        eprintln!(
            "storyreel serving http://{} (journal {}; {sessions} sessions reopened with {pending} shots to generate)",
            server.addr,
            journal.display()
        );
        wait_for_stop().await;
        eprintln!("storyreel: stopping (the running shot will be generated again at the next start)");
        server.shutdown().await.context("stopping the server")?;
        Ok(())
    })
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_stop() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

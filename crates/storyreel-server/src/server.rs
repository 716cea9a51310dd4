//! Starting and stopping a server: the engine worker thread, the HTTP listener, the idle sweep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use storyreel_engine::{ModelKind, StoryModel};

use crate::config::ServeConfig;
use crate::error::ServerError;
use crate::hub::{Hub, ModelInfo};
use crate::routes::router;
use crate::worker::run_worker;

/// A running server.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its sessions.
    pub hub: Arc<Hub>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    worker: std::thread::JoinHandle<()>,
}

/// What `model` makes, for the API.
pub fn model_info(model: &StoryModel) -> ModelInfo {
    let card = &model.card;
    ModelInfo {
        kind: match card.kind {
            ModelKind::Student => "student".into(),
            ModelKind::Teacher => "teacher".into(),
        },
        width: card.width,
        height: card.height,
        fps: card.fps.round().max(1.0) as u32,
        description: card.description.clone(),
        default_context: card.default_context_policy().to_string(),
        vocabulary: Some(model.text.tokenizer().words().iter().filter(|w| !w.starts_with('<')).cloned().collect()),
        tokenizer: Some(model.text.tokenizer().clone()),
    }
}

/// Starts serving `model` on `addr` (port 0 picks a free port): the engine worker on its own
/// thread, the API on the current tokio runtime.
pub async fn start(
    config: ServeConfig,
    model: Arc<StoryModel>,
    addr: SocketAddr,
) -> Result<RunningServer, ServerError> {
    let hub = Hub::new(config, model_info(&model))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let worker = {
        let hub = hub.clone();
        std::thread::Builder::new().name("storyreel-engine".into()).spawn(move || run_worker(hub, model))?
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let app = router(hub.clone());
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    let sweeper = hub.clone();
    let every = Duration::from_secs((sweeper.config().limits.idle_timeout_s / 4).clamp(1, 30));
    let mut stop_sweep = stop.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => sweeper.expire_idle(),
                _ = stop_sweep.wait_for(|s| *s) => break,
            }
        }
    });
    Ok(RunningServer { addr, hub, http, stop, worker })
}

impl RunningServer {
    /// Stops accepting requests, cancels the running shot (it is queued again for the next
    /// start) and waits for the worker.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        self.hub.shutdown();
        let worker = self.worker;
        tokio::task::spawn_blocking(move || worker.join()).await.ok();
        match self.http.await {
            Ok(r) => r.map_err(ServerError::from),
            Err(e) => Err(ServerError::Io(std::io::Error::other(e))),
        }
    }
}

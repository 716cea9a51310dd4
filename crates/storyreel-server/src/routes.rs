//! The HTTP routes (docs/openapi.json describes them) and the web page.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::downloads::{story_contact_sheet, story_mp4};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::stream::serve_socket;
use crate::views::{AppendShot, CreateSession};

/// The web page (all inline).
pub const INDEX_HTML: &str = include_str!("../web/index.html");

/// Every route of the API, as (method, path) pairs, for documentation checks.
pub const ROUTES: [(&str, &str); 10] = [
    ("get", "/"),
    ("get", "/api/info"),
    ("get", "/api/sessions"),
    ("post", "/api/sessions"),
    ("get", "/api/sessions/{id}"),
    ("delete", "/api/sessions/{id}"),
    ("post", "/api/sessions/{id}/shots"),
    ("post", "/api/sessions/{id}/cancel"),
    ("get", "/api/sessions/{id}/video.mp4"),
    ("get", "/api/sessions/{id}/contact-sheet.png"),
];

/// The WebSocket route.
pub const STREAM_ROUTE: &str = "/api/sessions/{id}/stream";

/// The router over `hub`.
pub fn router(hub: Arc<Hub>) -> Router {
    let limit = hub.config().max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/api/info", get(info))
        .route("/api/sessions", get(list_sessions).post(create_session))
        .route("/api/sessions/{id}", get(get_session).delete(delete_session))
        .route("/api/sessions/{id}/shots", post(append_shot))
        .route("/api/sessions/{id}/cancel", post(cancel))
        .route("/api/sessions/{id}/video.mp4", get(video))
        .route("/api/sessions/{id}/contact-sheet.png", get(contact_sheet))
        .route(STREAM_ROUTE, get(stream))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(hub)
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {}", uri.path()))
}

/// A JSON body, or the API's 400/413 naming what is wrong with it.
fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match payload {
        Ok(Json(v)) => Ok(v),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the server accepts".to_string(),
        )),
        Err(rejection) => Err(ApiError::malformed(rejection.body_text())),
    }
}

async fn info(State(hub): State<Arc<Hub>>) -> Json<serde_json::Value> {
    let (pending, sessions) = hub.load();
    Json(serde_json::json!({
        "model": hub.info(),
        "defaults": {"frames": hub.config().default_frames, "context": hub.info().default_context},
        "limits": hub.config().limits,
        "queue": {"pending": pending, "sessions": sessions},
    }))
}

async fn list_sessions(State(hub): State<Arc<Hub>>) -> Response {
    let hub2 = hub.clone();
    match tokio::task::spawn_blocking(move || hub2.list()).await {
        Ok(sessions) => Json(serde_json::json!({"sessions": sessions})).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn create_session(
    State(hub): State<Arc<Hub>>,
    payload: Result<Json<CreateSession>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = body(payload)?;
    let view = hub.create(request)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn get_session(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(hub.get(&id)?).into_response())
}

async fn delete_session(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    hub.delete(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn append_shot(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    payload: Result<Json<AppendShot>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = body(payload)?;
    let view = hub.append(&id, request)?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

async fn cancel(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(hub.cancel(&id)?).into_response())
}

/// Builds a download off the async threads (encoding takes a while for long stories).
async fn download(
    hub: Arc<Hub>,
    id: String,
    content_type: &'static str,
    file_name: String,
    build: fn(&Hub, &str) -> Result<Vec<u8>, ApiError>,
) -> Result<Response, ApiError> {
    let bytes = tokio::task::spawn_blocking(move || build(&hub, &id)).await.map_err(ApiError::internal)??;
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{file_name}\"")),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        bytes,
    )
        .into_response())
}

async fn video(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let name = format!("{id}.mp4");
    download(hub, id, "video/mp4", name, |hub, id| {
        let shots = hub.finished_shots(id)?;
        Ok(story_mp4(&shots, hub.info().fps, &hub.config().journal_dir)?)
    })
    .await
}

async fn contact_sheet(State(hub): State<Arc<Hub>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let name = format!("{id}-contact-sheet.png");
    download(hub, id, "image/png", name, |hub, id| {
        let shots = hub.finished_shots(id)?;
        Ok(story_contact_sheet(&shots, &hub.config().journal_dir)?)
    })
    .await
}

async fn stream(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let (view, events) = hub.subscribe(&id)?;
    Ok(upgrade.on_upgrade(move |socket| serve_socket(socket, hub, view, events)))
}

//! Errors: the library's typed [`ServerError`] and the API's JSON [`ApiError`] responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What can go wrong inside the server (journal, engine, media).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Reading or writing the journal failed.
    #[error("journal {path}: {message}")]
    Journal {
        /// The file or folder.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] storyreel_engine::EngineError),
    /// Encoding media failed.
    #[error(transparent)]
    Media(#[from] storyreel_media::MediaError),
    /// Binding or serving the socket failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

impl ServerError {
    /// A journal error at `path`.
    pub fn journal(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        Self::Journal { path: path.display().to_string(), message: message.to_string() }
    }
}

/// An API error: an HTTP status and a JSON body `{"error": {"code", "message"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case code clients can branch on.
    pub code: &'static str,
    /// A sentence naming the problem.
    pub message: String,
    /// Seconds after which a retry may succeed (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    /// 400: the request body is not what the route takes.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    /// 404: no such session.
    pub fn no_session(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no session {id:?}"))
    }

    /// 422: the story breaks a rule.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 500: the server failed.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message.to_string())
    }

    /// Adds a Retry-After of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        Self::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

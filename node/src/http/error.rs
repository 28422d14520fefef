//! The one HTTP error type: a status and a safe message; details go to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::dicom::export::ExportError;
use crate::net::NetError;
use crate::store::StoreError;

/// An error answered as `{"error": "..."}` with a status. Messages name the resource and the
/// reason, never patient data or secrets.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
    pub fn bad_request(what: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, what)
    }
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {what}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (see the node's log)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchStudy(_) => ApiError::not_found("no such study"),
            StoreError::NoSuchContact(_) => ApiError::not_found(e.to_string()),
            StoreError::AmbiguousStudy { .. } | StoreError::AmbiguousContact { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

/// Network errors carry names and PeerIds (never PHI), and say what to do, so they are shown as
/// they are. A peer that cannot be reached or misbehaves is the upstream's failure (502); a bad,
/// expired or refused ticket is the request's (400).
impl From<NetError> for ApiError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Store(s) => s.into(),
            NetError::Ticket(_) | NetError::Invalid(_) | NetError::Refused { .. } => {
                ApiError::bad_request(e.to_string())
            }
            NetError::Unreachable { .. } | NetError::Protocol { .. } => {
                tracing::warn!("{e}");
                ApiError::new(StatusCode::BAD_GATEWAY, e.to_string())
            }
            NetError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl From<ExportError> for ApiError {
    fn from(e: ExportError) -> Self {
        match e {
            ExportError::Corrupt { .. } | ExportError::MissingBlob { .. } => {
                tracing::error!("{e}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            ExportError::OutputExists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

//! The web viewer, embedded in the binary at build time (no files to deploy, nothing to serve
//! from disk that could be swapped).

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every file of `web/`, by its path relative to `web/`.
static FILES: &[(&str, &[u8])] = &include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" | "webmanifest" => "application/json",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn file(path: &str) -> Response {
    match FILES.iter().find(|(p, _)| *p == path) {
        Some((p, body)) => (
            [
                (header::CONTENT_TYPE, content_type(p)),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

pub(super) async fn index() -> Response {
    file("index.html")
}

pub(super) async fn asset(Path(path): Path<String>) -> Response {
    file(&path)
}

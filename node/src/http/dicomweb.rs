//! DICOMweb (PS3.18) under `/dicomweb`: search (QIDO-RS), retrieve (WADO-RS) and store (STOW-RS).
//!
//! Everything is answered from the index and the sealed blobs: QIDO from the study, series and
//! instance records; `/metadata` from the DICOM JSON precomputed at import (so a 600-slice
//! series is 600 small record reads, no parsing); retrieval streams each instance's original
//! bytes, decrypted and verified chunk by chunk, into a `multipart/related` body.

mod multipart;
mod qido;
mod stow;
mod wado;

use axum::routing::{get, post};
use axum::Router;

use super::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/studies", get(qido::studies).post(stow::store))
        .route("/series", get(qido::all_series))
        .route("/instances", get(qido::all_instances))
        .route(
            "/studies/{study}",
            get(wado::study).post(stow::store_in_study),
        )
        .route("/studies/{study}/metadata", get(wado::study_metadata))
        .route("/studies/{study}/series", get(qido::study_series))
        .route("/studies/{study}/instances", get(qido::study_instances))
        .route("/studies/{study}/thumbnail", get(wado::study_thumbnail))
        .route("/studies/{study}/series/{series}", get(wado::series))
        .route(
            "/studies/{study}/series/{series}/metadata",
            get(wado::series_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances",
            get(qido::series_instances),
        )
        .route(
            "/studies/{study}/series/{series}/thumbnail",
            get(wado::series_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}",
            get(wado::instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/metadata",
            get(wado::instance_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/rendered",
            get(wado::instance_rendered),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/thumbnail",
            get(wado::instance_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
            get(wado::frames),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}/rendered",
            get(wado::frame_rendered),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}",
            get(wado::bulkdata),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/frames",
            post(not_allowed),
        )
}

/// The DICOMweb base URL as the client addressed us (for RetrieveURL and BulkDataURI values).
fn base_url(headers: &axum::http::HeaderMap) -> String {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/dicomweb")
}

async fn not_allowed() -> super::ApiError {
    super::ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
    )
}

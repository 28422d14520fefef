//! STOW-RS: storing instances sent as `multipart/related; type="application/dicom"`.
//!
//! Each part is spooled to a temporary file in the home (sealed storage never sees a partial
//! part), then the spooled files go through the same import as `discless import`: parsing,
//! dedupe, sealing, one atomic commit, audit. The answer is the PS3.18 response data set:
//! ReferencedSOPSequence for what is stored, FailedSOPSequence with a reason for what is not.
//! Spooled parts are plaintext for as long as the request lasts, inside the node's own `tmp/`
//! (emptied again whenever the store opens).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::super::api::blocking;
use super::super::{ApiError, ApiResult, AppState};
use crate::dicom::import::{self, Source};

/// Largest STOW request accepted, against a client filling the disk by mistake or malice.
const MAX_STOW_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Failure reasons (PS3.4 Annex GG / PS3.18 Table 10.5.3-2).
const PROCESSING_FAILURE: u16 = 0x0110;
const CANNOT_UNDERSTAND: u16 = 0xC000;
const STUDY_MISMATCH: u16 = 0xA900;

fn boundary(headers: &HeaderMap) -> ApiResult<String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("multipart/related") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "STOW-RS takes multipart/related; type=\"application/dicom\"",
        ));
    }
    ct.split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .ok_or_else(|| ApiError::bad_request("multipart/related without a boundary"))
}

pub(super) async fn store(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    stow(state, headers, None, body).await
}

pub(super) async fn store_in_study(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(study): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    stow(state, headers, Some(study), body).await
}

async fn stow(
    state: AppState,
    headers: HeaderMap,
    study: Option<String>,
    body: Body,
) -> ApiResult<Response> {
    let boundary = boundary(&headers)?;
    let base = super::base_url(&headers);
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut spooled: Vec<tempfile::TempPath> = Vec::new();
    let mut failed: Vec<Value> = Vec::new();
    let mut total = 0u64;
    while let Some(mut field) = parts
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?
    {
        let ct = field
            .content_type()
            .map(|m| m.essence_str().to_owned())
            .unwrap_or_default();
        if !ct.is_empty() && ct != "application/dicom" {
            failed.push(json!({ "00081197": { "vr": "US", "Value": [CANNOT_UNDERSTAND] } }));
            continue;
        }
        let tmp = state.store.blobs().temp().map_err(ApiError::internal)?;
        let (file, path) = tmp.into_parts();
        let mut f = tokio::fs::File::from_std(file);
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?
        {
            total += chunk.len() as u64;
            if total > MAX_STOW_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "STOW request larger than 16 GiB",
                ));
            }
            f.write_all(&chunk).await.map_err(ApiError::internal)?;
        }
        f.flush().await.map_err(ApiError::internal)?;
        spooled.push(path);
    }
    let sources: Vec<Source> = spooled
        .iter()
        .map(|p| Source::File(p.to_path_buf()))
        .collect();
    let expected_study = study.clone();
    let report = blocking(&state, move |store| {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .min(4);
        // With a study in the URL, parts of other studies are refused before anything is stored.
        let (keep, mismatched): (Vec<Source>, Vec<Source>) = match &expected_study {
            None => (sources, Vec::new()),
            Some(want) => sources.into_iter().partition(|s| match s {
                Source::File(p) => std::fs::read(p)
                    .ok()
                    .and_then(|b| crate::dicom::parse::parse_bytes(&b).ok())
                    .is_none_or(|parsed| parsed.instance.study_instance_uid == *want),
                Source::ZipEntry { .. } => false,
            }),
        };
        let r =
            import::run(store, &keep, Vec::new(), workers, &|_| {}).map_err(ApiError::internal)?;
        Ok((r, mismatched.len()))
    })
    .await?;
    drop(spooled);
    let (report, mismatched) = report;
    for _ in 0..mismatched {
        failed.push(json!({ "00081197": { "vr": "US", "Value": [STUDY_MISMATCH] } }));
    }
    for r in &report.rejected {
        tracing::info!("STOW part refused: {}", r.reason);
        failed.push(json!({
            "00081197": { "vr": "US", "Value": [if r.reason.contains("DICOM") { CANNOT_UNDERSTAND } else { PROCESSING_FAILURE }] },
        }));
    }
    let referenced: Vec<Value> = report
        .accepted
        .iter()
        .map(|a| {
            json!({
                "00081150": { "vr": "UI", "Value": [a.sop_class_uid] },
                "00081155": { "vr": "UI", "Value": [a.sop_instance_uid] },
                "00081190": { "vr": "UR", "Value": [format!("{base}/studies/{}/series/{}/instances/{}", a.study_instance_uid, a.series_instance_uid, a.sop_instance_uid)] },
            })
        })
        .collect();
    let mut ds = serde_json::Map::new();
    if let Some(st) = &study {
        ds.insert(
            "00081190".into(),
            json!({ "vr": "UR", "Value": [format!("{base}/studies/{st}")] }),
        );
    }
    if !referenced.is_empty() {
        ds.insert(
            "00081199".into(),
            json!({ "vr": "SQ", "Value": referenced }),
        );
    }
    if !failed.is_empty() {
        ds.insert("00081198".into(), json!({ "vr": "SQ", "Value": failed }));
    }
    let status = match (referenced.is_empty(), failed.is_empty()) {
        (_, true) => StatusCode::OK,
        (false, false) => StatusCode::ACCEPTED,
        (true, false) => StatusCode::CONFLICT,
    };
    Ok((
        status,
        [(header::CONTENT_TYPE, "application/dicom+json")],
        Value::Object(ds).to_string(),
    )
        .into_response())
}

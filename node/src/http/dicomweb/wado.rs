//! WADO-RS: retrieving instances, metadata, frames, rendered images and bulk data.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::super::api::{blocking, blocking_with_state, instance_bytes};
use super::super::cache::Plaintext;
use super::super::{ApiError, ApiResult, AppState};
use super::base_url;
use super::multipart::{self, BodyWriter};
use crate::crypto::SecretKey;
use crate::dicom::export;
use crate::render;
use crate::store::{InstanceRecord, Store};

fn accept(headers: &HeaderMap) -> String {
    headers
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The instances selected by a retrieve URL, in viewing order; 404 when there are none.
fn select(
    store: &Store,
    study: &str,
    series: Option<&str>,
    sop: Option<&str>,
) -> ApiResult<Vec<InstanceRecord>> {
    if store.study(study)?.is_none() {
        return Err(ApiError::not_found("no such study"));
    }
    let v: Vec<InstanceRecord> = store
        .instances(study)?
        .into_iter()
        .filter(|i| series.is_none_or(|s| s == i.series_instance_uid))
        .filter(|i| sop.is_none_or(|s| s == i.sop_instance_uid))
        .collect();
    if v.is_empty() {
        return Err(ApiError::not_found(if sop.is_some() {
            "no such instance"
        } else {
            "no such series"
        }));
    }
    Ok(v)
}

/// Instances up to this size are decrypted whole and sent as one piece of the body.
const WHOLE_INSTANCE_MAX: u64 = 8 << 20;

/// One instance's original bytes into the body: up to [`WHOLE_INSTANCE_MAX`] decrypted in
/// place and handed over as they are (a CT slice goes through no reader's, chunk's or body's
/// buffer), larger ones streamed chunk by chunk. Not through the plaintext cache: a whole
/// study would flush what a viewer is looking at.
fn send_instance(
    store: &Store,
    key: &SecretKey,
    inst: &InstanceRecord,
    w: &mut BodyWriter,
) -> Result<(), String> {
    if inst.size <= WHOLE_INSTANCE_MAX {
        let (buf, start) = export::decrypt_in_place(store, key, inst)
            .map_err(|e| e.to_string())?
            .into_parts();
        w.send(Bytes::from(buf).slice(start..))
            .map_err(|e| e.to_string())
    } else {
        export::decrypt_into(store, key, inst, w).map_err(|e| e.to_string())
    }
}

/// Streams the original bytes of `instances` as `multipart/related; type="application/dicom"`.
async fn retrieve(
    state: AppState,
    headers: HeaderMap,
    study: String,
    series: Option<String>,
    sop: Option<String>,
) -> ApiResult<Response> {
    let acc = accept(&headers);
    if !(acc.is_empty()
        || acc.contains("*/*")
        || acc.contains("application/dicom")
        || acc.contains("multipart/related"))
    {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "this node returns instances as multipart/related; type=\"application/dicom\"",
        ));
    }
    let (instances, key) = {
        let (st, se, so) = (study.clone(), series.clone(), sop.clone());
        blocking(&state, move |store| {
            let v = select(store, &st, se.as_deref(), so.as_deref())?;
            let key = store
                .study_key(&st, false)?
                .ok_or_else(|| ApiError::internal("study key missing"))?;
            Ok((v, key))
        })
        .await?
    };
    let boundary = multipart::boundary();
    let (mut w, body) = BodyWriter::new();
    let store = state.store.clone();
    let b = boundary.clone();
    tokio::task::spawn_blocking(move || {
        let n = instances.len();
        for (idx, inst) in instances.iter().enumerate() {
            let r = multipart::part_header(&mut w, &b, "application/dicom", None)
                .map_err(|e| e.to_string())
                .and_then(|()| send_instance(&store, &key, inst, &mut w))
                .and_then(|()| {
                    multipart::part_end(&mut w, &b, idx + 1 == n).map_err(|e| e.to_string())
                });
            if let Err(e) = r {
                tracing::error!(sop = %inst.sop_instance_uid, "retrieve stopped: {e}");
                w.fail(std::io::Error::other(e));
                return;
            }
        }
    });
    Ok((
        [(
            header::CONTENT_TYPE,
            format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
        )],
        body,
    )
        .into_response())
}

pub(super) async fn study(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(study): Path<String>,
) -> ApiResult<Response> {
    retrieve(s, h, study, None, None).await
}

pub(super) async fn series(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((study, series)): Path<(String, String)>,
) -> ApiResult<Response> {
    retrieve(s, h, study, Some(series), None).await
}

pub(super) async fn instance(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    retrieve(s, h, study, Some(series), Some(sop)).await
}

/// Metadata: the precomputed DICOM JSON of each selected instance, as one JSON array.
async fn metadata(
    state: AppState,
    headers: HeaderMap,
    study: String,
    series: Option<String>,
    sop: Option<String>,
) -> ApiResult<Response> {
    let base = format!("{}/", base_url(&headers));
    blocking(&state, move |store| {
        let v = select(store, &study, series.as_deref(), sop.as_deref())?;
        let mut out = String::with_capacity(v.len() * 4096 + 2);
        out.push('[');
        for (n, i) in v.iter().enumerate() {
            let meta = store
                .metadata(&i.study_instance_uid, &i.sop_instance_uid)?
                .unwrap_or_else(|| "{}".into());
            if n > 0 {
                out.push(',');
            }
            out.push_str(&meta.replace(crate::dicom::json::BULK_PREFIX, &base));
        }
        out.push(']');
        Ok(([(header::CONTENT_TYPE, "application/dicom+json")], out).into_response())
    })
    .await
}

pub(super) async fn study_metadata(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(study): Path<String>,
) -> ApiResult<Response> {
    metadata(s, h, study, None, None).await
}

pub(super) async fn series_metadata(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((study, series)): Path<(String, String)>,
) -> ApiResult<Response> {
    metadata(s, h, study, Some(series), None).await
}

pub(super) async fn instance_metadata(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    metadata(s, h, study, Some(series), Some(sop)).await
}

/// Parses a frame list `1,3,5` (1-based).
fn frame_list(s: &str) -> ApiResult<Vec<u32>> {
    let v: Result<Vec<u32>, _> = s.split(',').map(|f| f.trim().parse::<u32>()).collect();
    match v {
        Ok(v) if !v.is_empty() && v.iter().all(|&f| f >= 1) => Ok(v),
        _ => Err(ApiError::bad_request(
            "frame numbers are a comma-separated list of integers from 1",
        )),
    }
}

fn render_error(e: render::RenderError) -> ApiError {
    match e {
        render::RenderError::FrameOutOfRange { .. } => ApiError::not_found(e.to_string()),
        render::RenderError::NoPixelData => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        render::RenderError::Unsupported { .. } => {
            ApiError::new(StatusCode::NOT_IMPLEMENTED, e.to_string())
        }
        other => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
    }
}

/// One instance's plaintext, by its full WADO path, through the server's cache.
fn load(state: &AppState, study: &str, series: &str, sop: &str) -> ApiResult<Plaintext> {
    let inst = state
        .store
        .instance(sop)?
        .filter(|i| i.study_instance_uid == study && i.series_instance_uid == series)
        .ok_or_else(|| ApiError::not_found("no such instance"))?;
    instance_bytes(state, &inst)
}

/// Frames as uncompressed pixel data: multipart of `application/octet-stream` parts, or a bare
/// octet stream when exactly that single type is asked for one frame.
pub(super) async fn frames(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((study, series, sop, list)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    let frames = frame_list(&list)?;
    let acc = accept(&headers);
    let bare = frames.len() == 1 && acc.starts_with("application/octet-stream");
    blocking_with_state(&state, move |state| {
        let bytes = load(state, &study, &series, &sop)?;
        let zero_based: Vec<u32> = frames.iter().map(|f| f - 1).collect();
        let mut parts = render::raw_frames(&bytes, &zero_based).map_err(render_error)?;
        if bare {
            let body = parts.pop().unwrap_or_default();
            return Ok(([(header::CONTENT_TYPE, "application/octet-stream".to_owned())], body).into_response());
        }
        let boundary = multipart::boundary();
        let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum::<usize>() + 256 * parts.len());
        let n = parts.len();
        for (i, p) in parts.iter().enumerate() {
            let _ = multipart::part_header(&mut out, &boundary, "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", None);
            out.extend_from_slice(p);
            let _ = multipart::part_end(&mut out, &boundary, i + 1 == n);
        }
        Ok((
            [(
                header::CONTENT_TYPE,
                format!("multipart/related; type=\"application/octet-stream\"; transfer-syntax=1.2.840.10008.1.2.1; boundary={boundary}"),
            )],
            out,
        )
            .into_response())
    })
    .await
}

/// Query parameters of `/rendered` and `/thumbnail` (PS3.18 8.3.5).
#[derive(Debug, Deserialize, Default)]
pub(super) struct RenderQuery {
    window: Option<String>,
    viewport: Option<String>,
    quality: Option<u8>,
}

fn options(
    q: &RenderQuery,
    headers: &HeaderMap,
    default_jpeg: bool,
) -> ApiResult<render::RenderOptions> {
    let acc = accept(headers);
    let jpeg = if acc.contains("image/png") {
        false
    } else if acc.contains("image/jpeg") {
        true
    } else {
        default_jpeg
    };
    let window = match &q.window {
        None => None,
        Some(w) => {
            let parts: Vec<&str> = w.split(',').collect();
            let c = parts.first().and_then(|v| v.trim().parse::<f64>().ok());
            let wd = parts.get(1).and_then(|v| v.trim().parse::<f64>().ok());
            match (c, wd) {
                (Some(center), Some(width)) if width >= 1.0 => {
                    Some(render::Window { center, width })
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "window is center,width[,function] with width >= 1",
                    ))
                }
            }
        }
    };
    let viewport = match &q.viewport {
        None => None,
        Some(v) => {
            let p: Vec<Option<u32>> = v.split(',').map(|x| x.trim().parse().ok()).collect();
            match p.as_slice() {
                [Some(w), Some(h), ..] if *w > 0 && *h > 0 => Some((*w, *h)),
                _ => return Err(ApiError::bad_request("viewport is width,height")),
            }
        }
    };
    Ok(render::RenderOptions {
        window,
        format: if jpeg {
            render::Format::Jpeg {
                quality: q.quality.unwrap_or(90).clamp(1, 100),
            }
        } else {
            render::Format::Png
        },
        viewport,
    })
}

fn image_response(bytes: Vec<u8>, opts: &render::RenderOptions) -> Response {
    let ct = match opts.format {
        render::Format::Png => "image/png",
        render::Format::Jpeg { .. } => "image/jpeg",
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response()
}

async fn rendered(
    state: AppState,
    headers: HeaderMap,
    study: String,
    series: String,
    sop: String,
    frame: u32,
    q: RenderQuery,
) -> ApiResult<Response> {
    let opts = options(&q, &headers, false)?;
    blocking_with_state(&state, move |state| {
        let bytes = load(state, &study, &series, &sop)?;
        let img = render::render(&bytes, frame, &opts).map_err(render_error)?;
        Ok(image_response(img, &opts))
    })
    .await
}

pub(super) async fn instance_rendered(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
    Query(q): Query<RenderQuery>,
) -> ApiResult<Response> {
    rendered(s, h, study, series, sop, 0, q).await
}

pub(super) async fn frame_rendered(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((study, series, sop, list)): Path<(String, String, String, String)>,
    Query(q): Query<RenderQuery>,
) -> ApiResult<Response> {
    let frames = frame_list(&list)?;
    if frames.len() != 1 {
        return Err(ApiError::bad_request(
            "rendered frames are fetched one at a time",
        ));
    }
    rendered(s, h, study, series, sop, frames[0] - 1, q).await
}

/// A thumbnail of the middle instance of a series (the most representative slice of a stack).
async fn thumbnail(
    state: AppState,
    headers: HeaderMap,
    study: String,
    series: Option<String>,
    sop: Option<String>,
    q: RenderQuery,
) -> ApiResult<Response> {
    let mut opts = options(&q, &headers, true)?;
    if opts.viewport.is_none() {
        opts.viewport = Some((128, 128));
    }
    blocking_with_state(&state, move |state| {
        let v = select(&state.store, &study, series.as_deref(), sop.as_deref())?;
        let images: Vec<&InstanceRecord> = v.iter().filter(|i| i.rows.is_some()).collect();
        let inst = images
            .get(images.len() / 2)
            .ok_or_else(|| ApiError::not_found("no image in this selection"))?;
        let bytes = instance_bytes(state, inst)?;
        let img = render::render(&bytes, 0, &opts).map_err(render_error)?;
        Ok(image_response(img, &opts))
    })
    .await
}

pub(super) async fn study_thumbnail(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(study): Path<String>,
    Query(q): Query<RenderQuery>,
) -> ApiResult<Response> {
    thumbnail(s, h, study, None, None, q).await
}

pub(super) async fn series_thumbnail(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((study, series)): Path<(String, String)>,
    Query(q): Query<RenderQuery>,
) -> ApiResult<Response> {
    thumbnail(s, h, study, Some(series), None, q).await
}

pub(super) async fn instance_thumbnail(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((study, series, sop)): Path<(String, String, String)>,
    Query(q): Query<RenderQuery>,
) -> ApiResult<Response> {
    thumbnail(s, h, study, Some(series), Some(sop), q).await
}

/// Bulk data: Pixel Data as its frames (uncompressed), other binary elements as their bytes.
pub(super) async fn bulkdata(
    State(state): State<AppState>,
    Path((study, series, sop, tag)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    let t =
        u32::from_str_radix(&tag, 16).map_err(|_| ApiError::bad_request("tag is 8 hex digits"))?;
    let tag = dicom_core::Tag((t >> 16) as u16, (t & 0xffff) as u16);
    blocking_with_state(&state, move |state| {
        let bytes = load(state, &study, &series, &sop)?;
        let body = if tag == dicom_dictionary_std::tags::PIXEL_DATA {
            let info = render::info(&bytes).map_err(render_error)?;
            let all: Vec<u32> = (0..info.frames.max(1)).collect();
            render::raw_frames(&bytes, &all)
                .map_err(render_error)?
                .concat()
        } else {
            let obj = dicom_object::OpenFileOptions::new()
                .from_reader(&bytes[..])
                .map_err(|e| ApiError::internal(format!("re-parsing a stored instance: {e}")))?;
            let e = obj
                .element_opt(tag)
                .ok()
                .flatten()
                .ok_or_else(|| ApiError::not_found("no such element"))?;
            e.to_bytes().map(|b| b.into_owned()).unwrap_or_default()
        };
        let boundary = multipart::boundary();
        let mut out = Vec::with_capacity(body.len() + 256);
        let _ = multipart::part_header(&mut out, &boundary, "application/octet-stream", None);
        out.extend_from_slice(&body);
        let _ = multipart::part_end(&mut out, &boundary, true);
        Ok((
            [(
                header::CONTENT_TYPE,
                format!(
                    "multipart/related; type=\"application/octet-stream\"; boundary={boundary}"
                ),
            )],
            out,
        )
            .into_response())
    })
    .await
}

//! The JSON API used by the web viewer and by the CLI.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use dicom_core::dictionary::DataDictionary;
use dicom_core::header::{HasLength, Header};
use dicom_dictionary_std::StandardDataDictionary;
use serde::Serialize;

use super::cache::Plaintext;
use super::{ApiError, ApiResult, AppState};
use crate::dicom::export;
use crate::store::{InstanceRecord, Store, StudySummary};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/node", get(node))
        .route("/studies", get(studies))
        .route("/studies/{study}", get(study))
        .route("/instances/{sop}/tags", get(tags))
        .route("/audit", get(audit))
        .route("/control/run", post(super::control::run))
}

/// Runs blocking store work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Store) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    blocking_with_state(state, move |state| f(&state.store)).await
}

/// [`blocking`] for work that needs more of the state than the store.
pub(super) async fn blocking_with_state<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&AppState) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state)).await?
}

/// The plaintext of one stored instance, verified (authenticated chunks, plaintext hash),
/// through the server's cache of recently used instances.
pub(super) fn instance_bytes(state: &AppState, inst: &InstanceRecord) -> ApiResult<Plaintext> {
    state.plaintexts().get_or_load(&inst.blob_id, || {
        let store = &state.store;
        let key = store
            .study_key(&inst.study_instance_uid, false)?
            .ok_or_else(|| ApiError::internal("study key missing"))?;
        Ok(export::decrypt_in_place(store, &key, inst)?)
    })
}

#[derive(Serialize)]
struct NodeInfo {
    peer_id: String,
    name: String,
    role: String,
    studies: usize,
    instances: u64,
    bytes: u64,
    pending_instances: usize,
}

async fn node(State(state): State<AppState>) -> ApiResult<Json<NodeInfo>> {
    blocking(&state, |store| {
        let studies = store.studies()?;
        Ok(Json(NodeInfo {
            peer_id: store.keys().peer_id().to_string(),
            name: store.keys().name.clone(),
            role: store.keys().role.to_string(),
            studies: studies.len(),
            instances: studies.iter().map(|s| s.instance_count).sum(),
            bytes: studies.iter().map(|s| s.bytes).sum(),
            pending_instances: store.pending_count(),
        }))
    })
    .await
}

async fn studies(State(state): State<AppState>) -> ApiResult<Json<Vec<StudySummary>>> {
    blocking(&state, |store| {
        Ok(Json(
            store.studies()?.iter().map(StudySummary::from).collect(),
        ))
    })
    .await
}

/// An instance as the viewer needs it.
#[derive(Serialize)]
struct InstanceView {
    sop_instance_uid: String,
    sop_class_uid: String,
    instance_number: Option<i64>,
    rows: Option<u32>,
    columns: Option<u32>,
    number_of_frames: Option<u32>,
    transfer_syntax_uid: String,
    size: u64,
    image_position_patient: Option<Vec<f64>>,
    slice_location: Option<f64>,
    pixel_spacing: Option<Vec<f64>>,
    window_center: Option<f64>,
    window_width: Option<f64>,
    rescale_slope: f64,
    rescale_intercept: f64,
    photometric_interpretation: String,
    samples_per_pixel: u16,
    bits_allocated: u16,
    bits_stored: u16,
    pixel_representation: u16,
}

impl From<&InstanceRecord> for InstanceView {
    fn from(i: &InstanceRecord) -> Self {
        let im = &i.image;
        Self {
            sop_instance_uid: i.sop_instance_uid.clone(),
            sop_class_uid: i.sop_class_uid.clone(),
            instance_number: i.instance_number,
            rows: i.rows,
            columns: i.columns,
            number_of_frames: i.number_of_frames,
            transfer_syntax_uid: i.transfer_syntax_uid.clone(),
            size: i.size,
            image_position_patient: im.image_position_patient.clone(),
            slice_location: im.slice_location,
            pixel_spacing: im.pixel_spacing.clone(),
            window_center: im.window_center,
            window_width: im.window_width,
            rescale_slope: im.rescale_slope.unwrap_or(1.0),
            rescale_intercept: im.rescale_intercept.unwrap_or(0.0),
            photometric_interpretation: im.photometric_interpretation.clone(),
            samples_per_pixel: im.samples_per_pixel.unwrap_or(1),
            bits_allocated: im.bits_allocated.unwrap_or(16),
            bits_stored: im.bits_stored.or(im.bits_allocated).unwrap_or(16),
            pixel_representation: im.pixel_representation.unwrap_or(0),
        }
    }
}

#[derive(Serialize)]
struct SeriesView {
    #[serde(flatten)]
    summary: crate::store::SeriesSummary,
    instances: Vec<InstanceView>,
}

#[derive(Serialize)]
struct StudyView {
    #[serde(flatten)]
    study: StudySummary,
    series: Vec<SeriesView>,
}

async fn study(
    State(state): State<AppState>,
    Path(uid): Path<String>,
) -> ApiResult<Json<StudyView>> {
    blocking(&state, move |store| {
        let s = store
            .study(&uid)?
            .ok_or_else(|| ApiError::not_found("no such study"))?;
        let instances = store.instances(&uid)?;
        let series = s
            .series
            .iter()
            .map(|summary| SeriesView {
                summary: summary.clone(),
                instances: instances
                    .iter()
                    .filter(|i| i.series_instance_uid == summary.series_instance_uid)
                    .map(InstanceView::from)
                    .collect(),
            })
            .collect();
        Ok(Json(StudyView {
            study: StudySummary::from(&s),
            series,
        }))
    })
    .await
}

#[derive(Serialize)]
struct TagView {
    tag: String,
    keyword: String,
    vr: String,
    value: String,
}

async fn tags(
    State(state): State<AppState>,
    Path(sop): Path<String>,
) -> ApiResult<Json<Vec<TagView>>> {
    blocking_with_state(&state, move |state| {
        let inst = state
            .store
            .instance(&sop)?
            .ok_or_else(|| ApiError::not_found("no such instance"))?;
        let bytes = instance_bytes(state, &inst)?;
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .from_reader(&bytes[..])
            .map_err(|e| ApiError::internal(format!("re-parsing a stored instance: {e}")))?;
        let mut out = Vec::new();
        let meta_and_data = obj.meta().to_element_iter().map(|e| {
            (
                e.tag(),
                e.vr(),
                e.to_str().map(|s| s.into_owned()).unwrap_or_default(),
            )
        });
        let data = obj.iter().map(|e| {
            let v = match e.vr() {
                dicom_core::VR::OB
                | dicom_core::VR::OW
                | dicom_core::VR::OF
                | dicom_core::VR::OD
                | dicom_core::VR::OL
                | dicom_core::VR::OV
                | dicom_core::VR::UN => {
                    format!("<{} bytes>", e.length().0)
                }
                dicom_core::VR::SQ => format!(
                    "<sequence of {} item(s)>",
                    e.value().items().map(|i| i.len()).unwrap_or(0)
                ),
                _ => e.to_str().map(|s| s.into_owned()).unwrap_or_default(),
            };
            (e.tag(), e.vr(), v)
        });
        for (tag, vr, value) in meta_and_data.chain(data) {
            let keyword = StandardDataDictionary
                .by_tag(tag)
                .map(|d| d.alias.to_owned())
                .unwrap_or_default();
            let value: String = value
                .trim_end_matches(['\0', ' '])
                .chars()
                .take(512)
                .collect();
            out.push(TagView {
                tag: format!("{:04X}{:04X}", tag.group(), tag.element()),
                keyword,
                vr: vr.to_string().to_owned(),
                value,
            });
        }
        Ok(Json(out))
    })
    .await
}

async fn audit(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    blocking(&state, |store| {
        let verified = store.audit().verify();
        let entries = store.audit().entries().unwrap_or_default();
        Ok(Json(serde_json::json!({
            "entries": entries,
            "verified": verified.is_ok(),
            "error": verified.err().map(|e| e.to_string()),
        })))
    })
    .await
}

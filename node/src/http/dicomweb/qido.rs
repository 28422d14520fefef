//! QIDO-RS: searching studies, series and instances.
//!
//! Matching follows PS3.4 C.2.2.2: single value (case-sensitive, except PN which is matched
//! case-insensitively as most PACS do), wildcards `*` and `?`, date ranges `A-B`, `-B`, `A-`,
//! and UID lists (`,` or `\`). Attributes are named by keyword or tag (`PatientName` or
//! `00100010`). Unknown query keys are ignored rather than refused, since clients add their own
//! (`fuzzymatching`, `_`), and that matches what PACS do.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::super::api::blocking;
use super::super::{ApiError, ApiResult, AppState};
use super::base_url;
use crate::store::{InstanceRecord, SeriesSummary, StudyRecord};

type Params = Vec<(String, String)>;

/// Query keys we match on, by keyword and tag.
const KEYS: &[(&str, &str)] = &[
    ("PatientName", "00100010"),
    ("PatientID", "00100020"),
    ("PatientBirthDate", "00100030"),
    ("StudyDate", "00080020"),
    ("StudyTime", "00080030"),
    ("AccessionNumber", "00080050"),
    ("ModalitiesInStudy", "00080061"),
    ("ReferringPhysicianName", "00080090"),
    ("StudyDescription", "00081030"),
    ("StudyInstanceUID", "0020000D"),
    ("StudyID", "00200010"),
    ("Modality", "00080060"),
    ("SeriesInstanceUID", "0020000E"),
    ("SeriesNumber", "00200011"),
    ("SeriesDescription", "0008103E"),
    ("SOPClassUID", "00080016"),
    ("SOPInstanceUID", "00080018"),
    ("InstanceNumber", "00200013"),
];

fn tag_of(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .find(|(k, t)| k.eq_ignore_ascii_case(key) || t.eq_ignore_ascii_case(key))
        .map(|(_, t)| *t)
}

/// The parsed query: attribute filters, paging, extra fields.
#[derive(Debug, Default)]
struct Query_ {
    filters: Vec<(&'static str, String)>,
    limit: Option<usize>,
    offset: usize,
    include_all: bool,
}

fn parse(params: &Params) -> ApiResult<Query_> {
    let mut q = Query_::default();
    for (k, v) in params {
        match k.as_str() {
            "limit" => {
                q.limit = Some(
                    v.parse()
                        .map_err(|_| ApiError::bad_request("limit must be a number"))?,
                )
            }
            "offset" => {
                q.offset = v
                    .parse()
                    .map_err(|_| ApiError::bad_request("offset must be a number"))?
            }
            "includefield" => {
                if v.split(',').any(|f| f.trim() == "all") {
                    q.include_all = true;
                }
            }
            _ => {
                if let Some(tag) = tag_of(k) {
                    if !v.is_empty() {
                        q.filters.push((tag, v.clone()));
                    }
                }
            }
        }
    }
    Ok(q)
}

/// `*` and `?` wildcard matching, optionally case-insensitive.
pub(crate) fn wildcard(pattern: &str, value: &str, fold_case: bool) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = if fold_case {
        (
            pattern.to_lowercase().chars().collect(),
            value.to_lowercase().chars().collect(),
        )
    } else {
        (pattern.chars().collect(), value.chars().collect())
    };
    // Iterative matcher with backtracking on the last `*`.
    let (mut pi, mut vi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn date_matches(filter: &str, value: &str) -> bool {
    let f = filter.replace(['-'], "-");
    match f.split_once('-') {
        Some((from, to)) => {
            let v = value.trim();
            !v.is_empty() && (from.is_empty() || v >= from) && (to.is_empty() || v <= to)
        }
        None => value.trim() == f.trim(),
    }
}

/// Whether a single attribute value (or list, for ModalitiesInStudy) matches a filter.
fn matches(tag: &str, filter: &str, values: &[String]) -> bool {
    match tag {
        "00080020" | "00100030" => values.iter().any(|v| date_matches(filter, v)),
        "0020000D" | "0020000E" | "00080018" | "00080016" => {
            let wanted: Vec<&str> = filter.split([',', '\\']).map(str::trim).collect();
            values.iter().any(|v| wanted.contains(&v.as_str()))
        }
        "00080061" | "00080060" => {
            let wanted: Vec<&str> = filter.split([',', '\\']).map(str::trim).collect();
            values
                .iter()
                .any(|v| wanted.iter().any(|w| wildcard(w, v, false)))
        }
        "00100010" | "00080090" => values.iter().any(|v| {
            wildcard(filter, v, true)
                // Many clients search "DOE" meaning the family name starts with it.
                || (!filter.contains(['*', '?', '^']) && wildcard(&format!("{filter}*"), v, true))
        }),
        _ => values.iter().any(|v| wildcard(filter, v, false)),
    }
}

fn s(vr: &str, v: &str) -> Value {
    if v.is_empty() {
        json!({ "vr": vr })
    } else if vr == "PN" {
        json!({ "vr": vr, "Value": [{ "Alphabetic": v }] })
    } else {
        json!({ "vr": vr, "Value": [v] })
    }
}

fn n(vr: &str, v: Option<i64>) -> Value {
    match v {
        Some(x) => json!({ "vr": vr, "Value": [x] }),
        None => json!({ "vr": vr }),
    }
}

fn study_json(st: &StudyRecord, base: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "00080005".into(),
        json!({"vr": "CS", "Value": ["ISO_IR 192"]}),
    );
    m.insert("00080020".into(), s("DA", &st.study_date));
    m.insert("00080030".into(), s("TM", &st.study_time));
    m.insert("00080050".into(), s("SH", &st.accession_number));
    m.insert(
        "00080061".into(),
        json!({"vr": "CS", "Value": st.modalities}),
    );
    m.insert("00080090".into(), s("PN", &st.referring_physician_name));
    m.insert("00081030".into(), s("LO", &st.study_description));
    m.insert("00100010".into(), s("PN", &st.patient_name));
    m.insert("00100020".into(), s("LO", &st.patient_id));
    m.insert("00100030".into(), s("DA", &st.patient_birth_date));
    m.insert("00100040".into(), s("CS", &st.patient_sex));
    m.insert("0020000D".into(), s("UI", &st.study_instance_uid));
    m.insert("00200010".into(), s("SH", &st.study_id));
    m.insert("00201206".into(), n("IS", Some(st.series.len() as i64)));
    m.insert("00201208".into(), n("IS", Some(st.instance_count as i64)));
    m.insert(
        "00081190".into(),
        s("UR", &format!("{base}/studies/{}", st.study_instance_uid)),
    );
    m
}

fn series_json(st: &StudyRecord, se: &SeriesSummary, base: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("00080060".into(), s("CS", &se.modality));
    m.insert("0008103E".into(), s("LO", &se.series_description));
    m.insert("00180015".into(), s("CS", &se.body_part_examined));
    m.insert("0020000D".into(), s("UI", &st.study_instance_uid));
    m.insert("0020000E".into(), s("UI", &se.series_instance_uid));
    m.insert("00200011".into(), n("IS", se.series_number));
    m.insert("00201209".into(), n("IS", Some(se.instance_count as i64)));
    m.insert(
        "00081190".into(),
        s(
            "UR",
            &format!(
                "{base}/studies/{}/series/{}",
                st.study_instance_uid, se.series_instance_uid
            ),
        ),
    );
    m
}

fn instance_json(i: &InstanceRecord, base: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("00080016".into(), s("UI", &i.sop_class_uid));
    m.insert("00080018".into(), s("UI", &i.sop_instance_uid));
    m.insert("00080060".into(), s("CS", &i.modality));
    m.insert("0020000D".into(), s("UI", &i.study_instance_uid));
    m.insert("0020000E".into(), s("UI", &i.series_instance_uid));
    m.insert("00200011".into(), n("IS", i.series_number));
    m.insert("00200013".into(), n("IS", i.instance_number));
    m.insert("00280010".into(), n("US", i.rows.map(i64::from)));
    m.insert("00280011".into(), n("US", i.columns.map(i64::from)));
    m.insert(
        "00280008".into(),
        n("IS", i.number_of_frames.map(i64::from)),
    );
    m.insert("00083002".into(), s("UI", &i.transfer_syntax_uid));
    m.insert(
        "00081190".into(),
        s(
            "UR",
            &format!(
                "{base}/studies/{}/series/{}/instances/{}",
                i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid
            ),
        ),
    );
    m
}

/// The values an object has for a tag, from its JSON form (strings, PN alphabetic, numbers).
fn values_of(m: &Map<String, Value>, tag: &str) -> Vec<String> {
    m.get(tag)
        .and_then(|e| e.get("Value"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => o
                        .get("Alphabetic")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn keep(m: &Map<String, Value>, q: &Query_) -> bool {
    q.filters.iter().all(|(tag, f)| {
        // A filter on an attribute this level does not carry is not applied (it belongs to
        // another level), as PS3.18 allows.
        if !m.contains_key(*tag) {
            return true;
        }
        matches(tag, f, &values_of(m, tag))
    })
}

fn page(mut v: Vec<Map<String, Value>>, q: &Query_) -> Response {
    let v: Vec<Value> = v
        .drain(..)
        .skip(q.offset)
        .take(q.limit.unwrap_or(usize::MAX))
        .map(Value::Object)
        .collect();
    (
        [(header::CONTENT_TYPE, "application/dicom+json")],
        serde_json::to_vec(&v).unwrap_or_default(),
    )
        .into_response()
}

/// Adds the precomputed DICOM JSON of an instance to its QIDO result (`includefield=all`).
fn include_all(
    store: &crate::store::Store,
    m: &mut Map<String, Value>,
    i: &InstanceRecord,
    base: &str,
) {
    if let Ok(Some(meta)) = store.metadata(&i.study_instance_uid, &i.sop_instance_uid) {
        let meta = meta.replace(crate::dicom::json::BULK_PREFIX, &format!("{base}/"));
        if let Ok(Value::Object(full)) = serde_json::from_str::<Value>(&meta) {
            for (k, v) in full {
                if v.get("BulkDataURI").is_none() {
                    m.entry(k).or_insert(v);
                }
            }
        }
    }
}

/// The shape shared by every QIDO handler: parse the query, search off the async threads, page.
async fn answer(
    state: AppState,
    headers: &HeaderMap,
    params: &Params,
    search: impl FnOnce(&crate::store::Store, &Query_, &str) -> ApiResult<Vec<Map<String, Value>>>
        + Send
        + 'static,
) -> ApiResult<Response> {
    let q = parse(params)?;
    let base = base_url(headers);
    blocking(&state, move |store| Ok(page(search(store, &q, &base)?, &q))).await
}

fn series_of(studies: &[StudyRecord], q: &Query_, base: &str) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for st in studies {
        let sm = study_json(st, base);
        for se in &st.series {
            let mut m = series_json(st, se, base);
            if keep(&m, q) && keep(&sm, q) {
                for k in ["00100010", "00100020", "00080020"] {
                    if let Some(v) = sm.get(k) {
                        m.insert(k.into(), v.clone());
                    }
                }
                out.push(m);
            }
        }
    }
    out
}

fn study_or_404(store: &crate::store::Store, uid: &str) -> ApiResult<StudyRecord> {
    store
        .study(uid)?
        .ok_or_else(|| ApiError::not_found("no such study"))
}

fn instances_of(
    store: &crate::store::Store,
    studies: &[StudyRecord],
    series: Option<&str>,
    q: &Query_,
    base: &str,
) -> ApiResult<Vec<Map<String, Value>>> {
    let mut out = Vec::new();
    for st in studies {
        let sm = study_json(st, base);
        if !keep(&sm, q) {
            continue;
        }
        for i in store.instances(&st.study_instance_uid)? {
            if series.is_some_and(|s| s != i.series_instance_uid) {
                continue;
            }
            let mut m = instance_json(&i, base);
            if !keep(&m, q) {
                continue;
            }
            if q.include_all {
                include_all(store, &mut m, &i, base);
            }
            out.push(m);
        }
    }
    Ok(out)
}

pub(super) async fn studies(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult<Response> {
    answer(state, &headers, &params, |store, q, base| {
        Ok(store
            .studies()?
            .iter()
            .map(|st| study_json(st, base))
            .filter(|m| keep(m, q))
            .collect())
    })
    .await
}

pub(super) async fn all_series(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult<Response> {
    answer(state, &headers, &params, |store, q, base| {
        Ok(series_of(&store.studies()?, q, base))
    })
    .await
}

pub(super) async fn study_series(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult<Response> {
    answer(state, &headers, &params, move |store, q, base| {
        Ok(series_of(&[study_or_404(store, &study)?], q, base))
    })
    .await
}

pub(super) async fn all_instances(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult<Response> {
    answer(state, &headers, &params, |store, q, base| {
        instances_of(store, &store.studies()?, None, q, base)
    })
    .await
}

pub(super) async fn study_instances(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult<Response> {
    answer(state, &headers, &params, move |store, q, base| {
        instances_of(store, &[study_or_404(store, &study)?], None, q, base)
    })
    .await
}

pub(super) async fn series_instances(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((study, series)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> ApiResult<Response> {
    answer(state, &headers, &params, move |store, q, base| {
        let st = study_or_404(store, &study)?;
        if !st.series.iter().any(|s| s.series_instance_uid == series) {
            return Err(ApiError::not_found("no such series"));
        }
        instances_of(store, &[st], Some(&series), q, base)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("doe*", "DOE^JANE", true));
        assert!(wildcard("D?E^*", "DOE^JANE", true));
        assert!(!wildcard("doe*", "DOE^JANE", false));
        assert!(wildcard("*JANE", "DOE^JANE", false));
        assert!(wildcard("*", "", false));
        assert!(!wildcard("?", "", false));
        assert!(wildcard("a*b*c", "aXXbYYc", false));
    }

    #[test]
    fn dates_and_lists() {
        assert!(date_matches("20240101-20241231", "20240115"));
        assert!(!date_matches("20240101-20241231", "20250115"));
        assert!(date_matches("-20240101", "20231231"));
        assert!(date_matches("20240101-", "20240101"));
        assert!(date_matches("20240115", "20240115"));
        assert!(matches("0020000D", "1.2,1.3", &["1.3".into()]));
        assert!(matches("0020000D", "1.2\\1.3", &["1.2".into()]));
        assert!(!matches("0020000D", "1.2", &["1.20".into()]));
        assert!(matches("00080061", "CT", &["CR".into(), "CT".into()]));
        assert!(matches("00100010", "doe", &["DOE^JANE".into()]));
    }
}

//! The peer-to-peer part of the JSON API, for the web UI's Pair, Contacts, Share and Transfers
//! pages. It does what `discless pair / contacts / share / revoke / transfers` do (see
//! `cli/network.rs`), through the same [`net::Handle`] calls, with the same messages.
//!
//! ```text
//! GET    /api/p2p                    PeerId, listen and external addresses, contacts online
//! POST   /api/pair                   {for_patient?, expires?: "15m"} → ticket, expiry, QR as SVG
//! POST   /api/pair/status            {ticket, wait?: secs} → {state: waiting|paired|expired, paired?}
//! POST   /api/pair/accept            {ticket} → the new contact and the 6-digit code
//! GET    /api/contacts               contacts with role and online state
//! DELETE /api/contacts/{contact}     removes a contact (and revokes its shares)
//! GET    /api/studies/{study}/shares who this study is shared with
//! POST   /api/share                  {study, to, expires?: "30d"}
//! POST   /api/revoke                 {study, from}
//! GET    /api/transfers              both directions, live progress
//! ```
//!
//! The issuer learns that its ticket was used by long-polling `/api/pair/status` with the ticket
//! itself: the page already holds it, so nothing new is revealed, no server-side session is needed,
//! and the one-time token never appears in a URL (where it would reach logs and history).
//!
//! Pairing needs the network, which runs in `discless serve`; without it those routes answer 503.
//! Recording a decision (share, revoke, remove a contact) works without it, as on the CLI: the
//! server acts on it when the network next runs.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::api::blocking;
use super::{ApiError, ApiResult, AppState};
use crate::keystore::Role;
use crate::net::{self, ticket, Paired, ShareOutcome, TransferView};
use crate::store::{now_unix, GrantState};

/// How long a ticket lives unless the page asks otherwise (as `discless pair new`).
const DEFAULT_TICKET_TTL: &str = "15m";
/// How long a share lasts unless the page asks otherwise (as `discless share`).
const DEFAULT_SHARE_TTL: &str = "30d";
/// The longest a status request waits for the ticket to be used: below the usual 30–60 s idle
/// timeouts of proxies, so a waiting page is not cut off.
const MAX_STATUS_WAIT: Duration = Duration::from_secs(25);

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/p2p", get(info))
        .route("/pair", post(pair_new))
        .route("/pair/status", post(pair_status))
        .route("/pair/accept", post(pair_accept))
        .route("/contacts", get(contacts))
        .route("/contacts/{contact}", delete(remove_contact))
        .route("/studies/{study}/shares", get(shares))
        .route("/share", post(share))
        .route("/revoke", post(revoke))
        .route("/transfers", get(transfers))
}

/// The network, or a 503 that says where it runs.
fn online<'a>(state: &'a AppState, what: &str) -> ApiResult<&'a net::Handle> {
    state.net().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} needs the node's network, which runs in `discless serve`"),
        )
    })
}

fn duration(field: &str, given: Option<&str>, default: &str) -> ApiResult<Duration> {
    let text = given
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(default);
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(ApiError::bad_request(format!(
            "{field} must be longer than 0"
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "{field} {text:?} is not a duration like 15m, 2h or 30d: {e}"
        ))),
    }
}

#[derive(Serialize)]
struct Info {
    peer_id: String,
    listen: Vec<String>,
    external: Vec<String>,
    /// Contacts connected right now.
    contacts_online: Vec<ContactRef>,
}

#[derive(Serialize)]
struct ContactRef {
    peer_id: String,
    name: String,
}

async fn info(State(state): State<AppState>) -> ApiResult<Json<Info>> {
    let net = online(&state, "the network view")?;
    let snap = net.snapshot().await?;
    let connected: Vec<String> = snap.connected.iter().map(ToString::to_string).collect();
    let contacts = blocking(&state, |s| Ok(s.contacts()?)).await?;
    Ok(Json(Info {
        peer_id: net.peer_id().to_string(),
        listen: snap.listen.iter().map(ToString::to_string).collect(),
        external: snap.external.iter().map(ToString::to_string).collect(),
        contacts_online: contacts
            .into_iter()
            .filter(|c| connected.contains(&c.peer_id))
            .map(|c| ContactRef {
                peer_id: c.peer_id,
                name: c.name,
            })
            .collect(),
    }))
}

#[derive(Deserialize)]
struct NewTicket {
    for_patient: Option<String>,
    expires: Option<String>,
}

#[derive(Serialize)]
struct Issued {
    #[serde(flatten)]
    issued: net::Issued,
    /// The ticket's QR code, a standalone SVG document.
    svg: String,
}

async fn pair_new(
    State(state): State<AppState>,
    Json(req): Json<NewTicket>,
) -> ApiResult<Json<Issued>> {
    let net = online(&state, "pairing")?;
    let ttl = duration("expires", req.expires.as_deref(), DEFAULT_TICKET_TTL)?;
    let for_patient = req
        .for_patient
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty());
    let issued = net.issue_ticket(ttl, for_patient).await?;
    let svg = ticket::qr::svg(&issued.ticket).map_err(ApiError::internal)?;
    Ok(Json(Issued { issued, svg }))
}

#[derive(Deserialize)]
struct StatusRequest {
    ticket: String,
    /// Seconds to wait for the ticket to be used before answering `waiting` (at most 25).
    #[serde(default)]
    wait: u64,
}

#[derive(Serialize)]
struct PairStatus {
    /// `waiting`, `paired` or `expired`.
    state: &'static str,
    paired: Option<Paired>,
}

/// Where a ticket this node issued stands: used (by whom, with which code), expired, or waiting.
async fn pair_status(
    State(state): State<AppState>,
    Json(req): Json<StatusRequest>,
) -> ApiResult<Json<PairStatus>> {
    let net = online(&state, "pairing")?;
    let t = ticket::Ticket::decode(&req.ticket).map_err(net::NetError::from)?;
    if t.peer_id != net.peer_id() {
        return Err(ApiError::bad_request(
            "this ticket was not issued by this node",
        ));
    }
    let token = hex::encode(t.token);
    // Subscribe before looking, so that a pairing between the look and the wait is not missed.
    let mut events = net.paired_events();
    let now = lookup(&state, &token).await?;
    if now.state != "waiting" || req.wait == 0 {
        return Ok(Json(now));
    }
    let wait = Duration::from_secs(req.wait)
        .min(MAX_STATUS_WAIT)
        .min(Duration::from_secs(
            t.expires_unix.saturating_sub(now_unix()),
        ));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(p)) if p.token.as_deref() == Some(token.as_str()) => {
                return Ok(Json(PairStatus {
                    state: "paired",
                    paired: Some(p),
                }))
            }
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => break,
        }
    }
    Ok(Json(lookup(&state, &token).await?))
}

async fn lookup(state: &AppState, token: &str) -> ApiResult<PairStatus> {
    let token = token.to_owned();
    blocking(state, move |s| {
        let t = s
            .ticket(&token)?
            .ok_or_else(|| ApiError::not_found("this node has no record of that ticket"))?;
        if let Some(peer) = &t.used_by {
            let paired = s
                .contacts()?
                .into_iter()
                .find(|c| &c.peer_id == peer)
                .map(|c| Paired::of(&c));
            return Ok(PairStatus {
                state: "paired",
                paired,
            });
        }
        let state = if now_unix() >= t.expires_unix {
            "expired"
        } else {
            "waiting"
        };
        Ok(PairStatus {
            state,
            paired: None,
        })
    })
    .await
}

#[derive(Deserialize)]
struct AcceptTicket {
    ticket: String,
}

async fn pair_accept(
    State(state): State<AppState>,
    Json(req): Json<AcceptTicket>,
) -> ApiResult<Json<Paired>> {
    let net = online(&state, "pairing")?;
    Ok(Json(net.accept_ticket(&req.ticket).await?))
}

#[derive(Serialize)]
struct ContactRow {
    peer_id: String,
    name: String,
    role: Role,
    paired_unix: u64,
    sas: String,
    /// Unknown (null) when the network is not running here.
    online: Option<bool>,
    /// `direct` or `relayed` while online.
    route: Option<&'static str>,
    for_patient: Option<String>,
    /// The relay where our pairing request waits for this (offline) issuer.
    awaiting: Option<String>,
}

async fn contacts(State(state): State<AppState>) -> ApiResult<Json<Vec<ContactRow>>> {
    let snap = match state.net() {
        Some(n) => Some(n.snapshot().await?),
        None => None,
    };
    let all = blocking(&state, |s| Ok(s.contacts()?)).await?;
    Ok(Json(
        all.into_iter()
            .map(|c| ContactRow {
                online: snap.as_ref().map(|s| s.route(&c.peer_id).is_some()),
                route: snap.as_ref().and_then(|s| s.route(&c.peer_id)),
                peer_id: c.peer_id,
                name: c.name,
                role: c.role,
                paired_unix: c.paired_unix,
                sas: c.sas,
                for_patient: c.patient_id,
                awaiting: c.awaiting,
            })
            .collect(),
    ))
}

#[derive(Serialize)]
struct Removed {
    removed: String,
    name: String,
    grants_revoked: usize,
}

async fn remove_contact(
    State(state): State<AppState>,
    Path(query): Path<String>,
) -> ApiResult<Json<Removed>> {
    let c = blocking(&state, move |s| Ok(s.resolve_contact(&query)?)).await?;
    let grants_revoked = match state.net() {
        Some(n) => n.remove_contact(&c).await?,
        None => {
            let c = c.clone();
            blocking(&state, move |s| {
                Ok(net::share::record_remove_contact(s, &c)?)
            })
            .await?
        }
    };
    Ok(Json(Removed {
        removed: c.peer_id,
        name: c.name,
        grants_revoked,
    }))
}

#[derive(Serialize)]
struct ShareRow {
    peer_id: String,
    /// The contact's name, or empty when the contact was removed since.
    name: String,
    state: GrantState,
    /// Still in force: not revoked and not expired.
    active: bool,
    created_unix: u64,
    expires_unix: u64,
    delivered_unix: Option<u64>,
}

async fn shares(
    State(state): State<AppState>,
    Path(study): Path<String>,
) -> ApiResult<Json<Vec<ShareRow>>> {
    blocking(&state, move |s| {
        let uid = s.resolve_study(&study)?.study_instance_uid;
        let contacts = s.contacts()?;
        let now = now_unix();
        let mut rows: Vec<ShareRow> = s
            .grants()?
            .into_iter()
            .filter(|g| g.study_uid == uid)
            .map(|g| ShareRow {
                name: contacts
                    .iter()
                    .find(|c| c.peer_id == g.peer_id)
                    .map(|c| c.name.clone())
                    .unwrap_or_default(),
                active: g.active(now),
                peer_id: g.peer_id,
                state: g.state,
                created_unix: g.created_unix,
                expires_unix: g.expires_unix,
                delivered_unix: g.delivered_unix,
            })
            .collect();
        rows.sort_by(|a, b| (&a.name, &a.peer_id).cmp(&(&b.name, &b.peer_id)));
        Ok(Json(rows))
    })
    .await
}

#[derive(Deserialize)]
struct ShareRequest {
    study: String,
    to: String,
    expires: Option<String>,
}

async fn share(
    State(state): State<AppState>,
    Json(req): Json<ShareRequest>,
) -> ApiResult<Json<ShareOutcome>> {
    let ttl = duration("expires", req.expires.as_deref(), DEFAULT_SHARE_TTL)?;
    let (study, to) = (req.study, req.to);
    let (uid, c) = blocking(&state, move |s| {
        Ok((
            s.resolve_study(&study)?.study_instance_uid,
            s.resolve_contact(&to)?,
        ))
    })
    .await?;
    let expires_unix = now_unix().saturating_add(ttl.as_secs());
    let outcome = match state.net() {
        Some(n) => n.share(uid, c, expires_unix).await?,
        None => {
            let (u, k) = (uid.clone(), c.clone());
            blocking(&state, move |s| {
                Ok(net::share::record_grant(s, &u, &k, expires_unix)?)
            })
            .await?;
            ShareOutcome {
                study_uid: uid,
                peer_id: c.peer_id,
                name: c.name,
                state: GrantState::Pending,
                expires_unix,
                queued: None,
                note: Some(
                    "recorded; it is offered when `discless serve` runs on this node".into(),
                ),
            }
        }
    };
    Ok(Json(outcome))
}

#[derive(Deserialize)]
struct RevokeRequest {
    study: String,
    from: String,
}

#[derive(Serialize)]
struct Revoked {
    study_uid: String,
    peer_id: String,
    revoked: bool,
    /// Whether the contact heard now; if not, its requests are refused from now on anyway.
    notified: bool,
}

async fn revoke(
    State(state): State<AppState>,
    Json(req): Json<RevokeRequest>,
) -> ApiResult<Json<Revoked>> {
    let (study, from) = (req.study, req.from);
    let (s, c) = blocking(&state, move |s| {
        let study = s.resolve_study(&study)?;
        let c = s.resolve_contact(&from)?;
        let active = s
            .grant(&study.study_instance_uid, &c.peer_id)?
            .is_some_and(|g| g.state != GrantState::Revoked);
        if !active {
            return Err(ApiError::not_found(format!(
                "study {} is not shared with {}",
                study.short_id(),
                c.name
            )));
        }
        Ok((study, c))
    })
    .await?;
    let uid = s.study_instance_uid.clone();
    let notified = match state.net() {
        Some(n) => n.revoke(&uid, &c).await?,
        None => {
            let (u, k) = (uid.clone(), c.clone());
            blocking(&state, move |s| Ok(net::share::record_revoke(s, &u, &k)?)).await?;
            false
        }
    };
    Ok(Json(Revoked {
        study_uid: uid,
        peer_id: c.peer_id,
        revoked: true,
        notified,
    }))
}

async fn transfers(State(state): State<AppState>) -> ApiResult<Json<Vec<TransferView>>> {
    let list = match state.net() {
        Some(n) => n.transfers().await?,
        None => {
            blocking(&state, |s| {
                Ok(net::transfers::list(s, &Default::default())?)
            })
            .await?
        }
    };
    Ok(Json(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{self, Role};
    use crate::store::Store;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn store(role: Role, name: &str) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::new(dir.path().join("home"));
        let keys = keystore::create(&home.keystore(), b"pw", name, role).unwrap();
        (dir, Store::open(&home, keys).unwrap())
    }

    async fn node(role: Role, name: &str) -> (tempfile::TempDir, Router, net::Handle) {
        let (dir, s) = store(role, name);
        let config = net::Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            mdns: false,
            relays: Vec::new(),
        };
        let n = net::start(s.clone(), config).await.unwrap();
        let app = super::super::router(
            AppState::new(s, "t".into(), false).with_net(Some(n.clone())),
            &[],
        );
        (dir, app, n)
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = app.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn without_the_network_pairing_is_503_and_lists_still_work() {
        let (_d, s) = store(Role::Doctor, "Dr Lee");
        let app = super::super::router(AppState::new(s, "t".into(), false), &[]);
        for (method, uri) in [
            ("POST", "/api/pair"),
            ("POST", "/api/pair/accept"),
            ("GET", "/api/p2p"),
        ] {
            let body = serde_json::json!({ "ticket": "discless:pair/AAAA" });
            let (status, v) = call(&app, method, uri, body).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            assert!(
                v["error"].as_str().unwrap().contains("discless serve"),
                "{v}"
            );
        }
        let (status, v) = call(&app, "GET", "/api/contacts", serde_json::Value::Null).await;
        assert_eq!((status, v), (StatusCode::OK, serde_json::json!([])));
        let (status, v) = call(&app, "GET", "/api/transfers", serde_json::Value::Null).await;
        assert_eq!((status, v), (StatusCode::OK, serde_json::json!([])));
        let (status, v) = call(
            &app,
            "DELETE",
            "/api/contacts/nobody",
            serde_json::Value::Null,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_pair_through_the_api_and_both_see_the_same_code() {
        let (_da, clinic, na) = node(Role::Clinic, "Riverside Clinic").await;
        let (_db, phone, nb) = node(Role::Patient, "Ann's phone").await;

        let (status, v) = call(
            &clinic,
            "POST",
            "/api/pair",
            serde_json::json!({ "expires": "2 parsecs" }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let (status, issued) = call(
            &clinic,
            "POST",
            "/api/pair",
            serde_json::json!({ "expires": "5m" }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{issued}");
        let ticket = issued["ticket"].as_str().unwrap().to_owned();
        assert!(
            issued["svg"].as_str().unwrap().starts_with("<?xml")
                || issued["svg"].as_str().unwrap().contains("<svg")
        );
        let expires = issued["expires_unix"].as_u64().unwrap();
        assert!(expires > now_unix() + 200 && expires <= now_unix() + 300);

        let (status, v) = call(
            &clinic,
            "POST",
            "/api/pair/status",
            serde_json::json!({ "ticket": ticket }),
        )
        .await;
        assert_eq!(
            (status, v["state"].as_str()),
            (StatusCode::OK, Some("waiting"))
        );

        // The issuer waits while the phone scans.
        let waiting = {
            let clinic = clinic.clone();
            let ticket = ticket.clone();
            tokio::spawn(async move {
                call(
                    &clinic,
                    "POST",
                    "/api/pair/status",
                    serde_json::json!({ "ticket": ticket, "wait": 20 }),
                )
                .await
            })
        };
        let (status, paired) = call(
            &phone,
            "POST",
            "/api/pair/accept",
            serde_json::json!({ "ticket": ticket }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{paired}");
        assert_eq!(paired["name"], "Riverside Clinic");
        let sas = paired["sas"].as_str().unwrap();
        assert_eq!(sas.len(), 6);
        let (status, seen) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(seen["state"], "paired", "{seen}");
        assert_eq!(seen["paired"]["sas"], sas);
        assert_eq!(seen["paired"]["name"], "Ann's phone");
        // Later looks say the same, from the store.
        let (_, again) = call(
            &clinic,
            "POST",
            "/api/pair/status",
            serde_json::json!({ "ticket": ticket }),
        )
        .await;
        assert_eq!(again["paired"]["sas"], sas);

        // Refusals: a reused ticket, a malformed one, somebody else's ticket to look up.
        let (status, v) = call(
            &phone,
            "POST",
            "/api/pair/accept",
            serde_json::json!({ "ticket": ticket }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let (status, v) = call(
            &phone,
            "POST",
            "/api/pair/accept",
            serde_json::json!({ "ticket": "hello" }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("not a Discless pairing ticket"),
            "{v}"
        );
        let (status, _) = call(
            &phone,
            "POST",
            "/api/pair/status",
            serde_json::json!({ "ticket": ticket }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, list) = call(&phone, "GET", "/api/contacts", serde_json::Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list[0]["name"], "Riverside Clinic");
        assert_eq!(list[0]["role"], "clinic");
        assert_eq!(list[0]["online"], true);
        let (status, info) = call(&phone, "GET", "/api/p2p", serde_json::Value::Null).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(info["contacts_online"][0]["name"], "Riverside Clinic");

        let (status, v) = call(
            &clinic,
            "POST",
            "/api/share",
            serde_json::json!({ "study": "1.2.3", "to": "Ann" }),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
        let (status, v) = call(
            &phone,
            "DELETE",
            "/api/contacts/Riverside",
            serde_json::Value::Null,
        )
        .await;
        assert_eq!(
            (status, v["name"].as_str()),
            (StatusCode::OK, Some("Riverside Clinic"))
        );
        let (_, list) = call(&phone, "GET", "/api/contacts", serde_json::Value::Null).await;
        assert_eq!(list, serde_json::json!([]));
        na.shutdown().await;
        nb.shutdown().await;
    }
}

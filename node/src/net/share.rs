//! Sharing: grants and offers on the sending side, and the `/discless/rpc/1` handler that
//! receives offers, delivery receipts and revocations.

use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::PeerId;
use serde::Serialize;

use super::offer::{self, OfferError};
use super::proto::{Reply, Request, NOT_PAIRED, RPC};
use super::{fetch, swarm, who, wire, Handle, NetError};
use crate::crypto::envelope::GrantTerms;
use crate::store::{
    now_unix, Contact, Grant, GrantState, Inbound, InboundState, Store, StoreError,
};

/// What a clinic grants a subscribed phone: a study stays shared until revoked.
const SUBSCRIPTION_GRANT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const PERMISSIONS: [&str; 2] = ["view", "export"];
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// How often pending offers and unfinished downloads are retried without another trigger.
const RETRY_EVERY: Duration = Duration::from_secs(15);

/// The outcome of `share`, for the CLI and the API.
#[derive(Debug, Clone, Serialize)]
pub struct Shared {
    pub study_uid: String,
    pub peer_id: String,
    pub name: String,
    pub state: GrantState,
    pub expires_unix: u64,
    /// Why the offer is still pending, when it is.
    pub note: Option<String>,
    /// Where the study waits for an offline contact.
    pub queued: Option<crate::store::Queued>,
}

/// Records (or renews) a grant of `study_uid` to `peer`; it is offered when the network runs.
pub fn record_grant(
    store: &Store,
    study_uid: &str,
    c: &Contact,
    expires_unix: u64,
) -> Result<Grant, StoreError> {
    let g = store.update_grant(study_uid, &c.peer_id, |g| {
        let bytes_sent = g.as_ref().map(|g| g.bytes_sent).unwrap_or(0);
        let grant = Grant {
            study_uid: study_uid.to_owned(),
            peer_id: c.peer_id.clone(),
            permissions: PERMISSIONS.iter().map(|p| (*p).to_owned()).collect(),
            created_unix: now_unix(),
            expires_unix,
            state: GrantState::Pending,
            offered_instances: 0,
            delivered_unix: None,
            bytes_sent,
            queued: None,
        };
        *g = Some(grant.clone());
        grant
    })?;
    store.audit().append(
        "shared",
        serde_json::json!({ "study": study_uid, "to": c.peer_id, "name": c.name, "expires_unix": expires_unix }),
    )?;
    Ok(g)
}

/// Marks a grant revoked. Returns false when there was no such grant.
pub fn record_revoke(store: &Store, study_uid: &str, c: &Contact) -> Result<bool, StoreError> {
    let found = store.update_grant(study_uid, &c.peer_id, |g| match g {
        Some(g) => {
            g.state = GrantState::Revoked;
            true
        }
        None => false,
    })?;
    if found {
        store.audit().append(
            "revoked",
            serde_json::json!({ "study": study_uid, "from": c.peer_id, "name": c.name }),
        )?;
    }
    Ok(found)
}

/// Forgets a contact and revokes everything granted to it.
pub fn record_remove_contact(store: &Store, c: &Contact) -> Result<usize, StoreError> {
    let mut revoked = 0;
    for g in store.grants()? {
        if g.peer_id == c.peer_id && g.state != GrantState::Revoked {
            record_revoke(store, &g.study_uid, c)?;
            revoked += 1;
        }
    }
    store.remove_contact(&c.peer_id)?;
    store.audit().append(
        "contact removed",
        serde_json::json!({ "peer_id": c.peer_id, "name": c.name, "grants_revoked": revoked }),
    )?;
    Ok(revoked)
}

impl Handle {
    /// Shares a study with a contact until `expires_unix` and offers it right away if the
    /// contact is reachable; otherwise the offer waits until it is.
    pub async fn share(
        &self,
        study_uid: String,
        contact: Contact,
        expires_unix: u64,
    ) -> Result<Shared, NetError> {
        let (s, c) = (study_uid.clone(), contact.clone());
        self.blocking(move |store| record_grant(store, &s, &c, expires_unix))
            .await??;
        let note = match self.offer(&study_uid, &contact).await {
            Ok(()) => None,
            Err(e) => Some(format!(
                "not offered yet ({e}); it will be offered when {} is online",
                contact.name
            )),
        };
        let grant = self
            .blocking({
                let (s, p) = (study_uid.clone(), contact.peer_id.clone());
                move |store| store.grant(&s, &p)
            })
            .await??;
        let state = grant
            .as_ref()
            .map(|g| g.state)
            .unwrap_or(GrantState::Pending);
        Ok(Shared {
            study_uid,
            peer_id: contact.peer_id.clone(),
            name: contact.name,
            state,
            expires_unix,
            note: if state == GrantState::Queued {
                None
            } else {
                note
            },
            queued: grant.and_then(|g| g.queued),
        })
    }

    /// Revokes a grant and tells the contact (best effort). Returns whether the contact heard.
    pub async fn revoke(&self, study_uid: &str, contact: &Contact) -> Result<bool, NetError> {
        let (s, c) = (study_uid.to_owned(), contact.clone());
        let found = self
            .blocking(move |store| record_revoke(store, &s, &c))
            .await??;
        if !found {
            return Err(NetError::Invalid(format!(
                "study {study_uid} is not shared with {}",
                who(contact)
            )));
        }
        Ok(self
            .rpc(
                contact,
                &Request::Revoke {
                    study_uid: study_uid.to_owned(),
                },
            )
            .await
            .is_ok())
    }

    /// Sends one request to a contact and reads its reply.
    async fn rpc(&self, c: &Contact, req: &Request) -> Result<(), NetError> {
        let who = who(c);
        let peer: PeerId = c
            .peer_id
            .parse()
            .map_err(|_| NetError::Invalid(format!("bad PeerId {}", c.peer_id)))?;
        let mut stream = self.open(peer, RPC, &who).await?;
        let proto = |e: wire::WireError| NetError::Protocol {
            who: who.clone(),
            reason: e.to_string(),
        };
        wire::write(&mut stream, req).await.map_err(proto)?;
        let reply: Reply = tokio::time::timeout(RPC_TIMEOUT, wire::read(&mut stream))
            .await
            .map_err(|_| NetError::Protocol {
                who: who.clone(),
                reason: "no answer".into(),
            })?
            .map_err(proto)?;
        let _ = stream.close().await;
        match reply {
            Reply::Ok => {
                // Only a node that paired with us answers Ok.
                if c.awaiting.is_some() {
                    self.confirm_contact(&c.peer_id).await;
                }
                Ok(())
            }
            Reply::Refused { reason } => Err(NetError::Refused { who, reason }),
        }
    }

    /// Offers what this node holds of a study to a contact holding an active grant.
    pub(crate) async fn offer(&self, study_uid: &str, c: &Contact) -> Result<(), NetError> {
        let _one_at_a_time = self.inner().offering.lock().await;
        let (s, p) = (study_uid.to_owned(), c.peer_id.clone());
        let contact = c.clone();
        let built = self
            .blocking(
                move |store| -> Result<Option<(offer::Offer, u64)>, OfferError> {
                    let Some(g) = store.grant(&s, &p)? else {
                        return Ok(None);
                    };
                    if !g.active(now_unix()) {
                        return Ok(None);
                    }
                    let study = store
                        .study(&s)?
                        .ok_or_else(|| StoreError::NoSuchStudy(s.clone()))?;
                    let key = store
                        .study_key(&s, false)?
                        .ok_or_else(|| OfferError::NoKey(s.clone()))?;
                    let m = offer::manifest(store, &study)?;
                    let n = m.instances.len() as u64;
                    let terms = GrantTerms {
                        study_uid: s.clone(),
                        granter: store.keys().peer_id().to_string(),
                        recipient: p.clone(),
                        permissions: g.permissions.clone(),
                        issued_unix: g.created_unix,
                        expires_unix: g.expires_unix,
                    };
                    Ok(Some((
                        offer::build(store.keys(), &key, &m, &contact, &terms)?,
                        n,
                    )))
                },
            )
            .await?
            .map_err(|e| NetError::Invalid(e.to_string()))?;
        let Some((o, n)) = built else {
            return Err(NetError::Invalid(format!(
                "study {study_uid} has no active grant for {}",
                who(c)
            )));
        };
        if let Err(direct) = self.rpc(c, &Request::Offer(Box::new(o.clone()))).await {
            if matches!(direct, NetError::Refused { .. }) || self.relays().is_empty() {
                return Err(direct);
            }
            // The contact is offline: leave the study in a relay's mailbox.
            let mut last = direct;
            for relay in self.relays() {
                match self.deposit(&relay, c, &o).await {
                    Ok(expires_unix) => {
                        let (s, p) = (study_uid.to_owned(), c.peer_id.clone());
                        let r = relay.to_string();
                        let r2 = r.clone();
                        self.blocking(move |store| {
                            store.update_grant(&s, &p, |g| {
                                if let Some(g) = g {
                                    g.state = GrantState::Queued;
                                    g.offered_instances = n;
                                    g.queued = Some(crate::store::Queued {
                                        relay: r,
                                        expires_unix,
                                    });
                                }
                            })?;
                            store.audit().append(
                                "queued at relay",
                                serde_json::json!({ "study": s, "to": p, "relay": r2, "expires_unix": expires_unix }),
                            )
                            .map_err(StoreError::from)
                        })
                        .await??;
                        tracing::info!(study = study_uid, to = %who(c), %relay, "queued at relay");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(%relay, "deposit failed: {e}");
                        last = e;
                    }
                }
            }
            return Err(last);
        }
        let (s, p) = (study_uid.to_owned(), c.peer_id.clone());
        self.blocking(move |store| {
            store.update_grant(&s, &p, |g| {
                if let Some(g) = g {
                    if matches!(g.state, GrantState::Pending | GrantState::Queued)
                        || (g.state == GrantState::Delivered && n > g.offered_instances)
                    {
                        g.state = GrantState::Offered;
                        g.queued = None;
                    }
                    g.offered_instances = n;
                }
            })
        })
        .await??;
        tracing::info!(study = study_uid, to = %who(c), instances = n, "offered");
        Ok(())
    }

    /// Forgets a contact, revoking its grants and telling it (best effort).
    pub async fn remove_contact(&self, c: &Contact) -> Result<usize, NetError> {
        let grants: Vec<String> = self
            .blocking({
                let p = c.peer_id.clone();
                move |s| {
                    s.grants().map(|g| {
                        g.into_iter()
                            .filter(|g| g.peer_id == p && g.state != GrantState::Revoked)
                            .map(|g| g.study_uid)
                            .collect()
                    })
                }
            })
            .await??;
        for study_uid in grants {
            let _ = self.rpc(c, &Request::Revoke { study_uid }).await;
        }
        let c2 = c.clone();
        Ok(self
            .blocking(move |s| record_remove_contact(s, &c2))
            .await??)
    }
}

/// The receiving side of `/discless/rpc/1`.
pub(super) async fn handle_inbound(net: Handle, peer: PeerId, mut stream: libp2p::Stream) {
    let req: Request = match tokio::time::timeout(RPC_TIMEOUT, wire::read(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "bad request: {e}");
            return;
        }
        Err(_) => return,
    };
    let reply = match answer(&net, peer, req).await {
        Ok(()) => Reply::Ok,
        Err(reason) => Reply::Refused { reason },
    };
    let _ = wire::write(&mut stream, &reply).await;
    let _ = stream.close().await;
}

async fn answer(net: &Handle, peer: PeerId, req: Request) -> Result<(), String> {
    let p = peer.to_string();
    let contact = net
        .blocking(move |s| s.contact(&p))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let Some(contact) = contact else {
        tracing::warn!(%peer, "request from a peer that is not a contact refused");
        return Err(NOT_PAIRED.into());
    };
    if contact.awaiting.is_some() {
        net.confirm_contact(&contact.peer_id).await;
    }
    match req {
        Request::Offer(o) => {
            let c = contact.clone();
            let study = o.study_uid.clone();
            net.blocking(move |s| accept_offer(s, &c, &o, None))
                .await
                .map_err(|e| e.to_string())??;
            fetch::start(net, study, contact.peer_id.clone());
            Ok(())
        }
        Request::Delivered { study_uid } => {
            let c = contact.clone();
            net.blocking(move |s| -> Result<(), StoreError> {
                let known = s.update_grant(&study_uid, &c.peer_id, |g| match g {
                    Some(g) => {
                        if g.state != GrantState::Revoked {
                            g.state = GrantState::Delivered;
                            g.delivered_unix = Some(now_unix());
                        }
                        true
                    }
                    None => false,
                })?;
                if known {
                    s.audit().append(
                        "delivered",
                        serde_json::json!({ "study": study_uid, "to": c.peer_id, "name": c.name }),
                    )?;
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        }
        Request::Revoke { study_uid } => {
            let c = contact.clone();
            net.blocking(move |s| -> Result<(), StoreError> {
                let changed = s.update_inbound(&study_uid, &c.peer_id, |i| match i {
                    Some(i) if i.state != InboundState::Complete => {
                        i.state = InboundState::Revoked;
                        true
                    }
                    _ => false,
                })?;
                s.audit().append(
                    "revoked by sender",
                    serde_json::json!({ "study": study_uid, "by": c.peer_id, "name": c.name, "stopped_transfer": changed }),
                )?;
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        }
    }
}

/// Verifies and records an offer (received directly, or drained from a relay's mailbox:
/// `via`); the download starts after.
pub(crate) fn accept_offer(
    store: &Store,
    from: &Contact,
    o: &offer::Offer,
    via: Option<crate::store::Via>,
) -> Result<(), String> {
    let opened = offer::open(store.keys(), from, o, now_unix()).map_err(|e| {
        let _ = store.audit().append(
            "offer refused",
            serde_json::json!({ "study": o.study_uid, "from": from.peer_id, "reason": e.to_string() }),
        );
        e.to_string()
    })?;
    store
        .adopt_study_key(&o.study_uid, &opened.key)
        .map_err(|e| e.to_string())?;
    let count = opened.manifest.instances.len();
    store
        .update_inbound(&o.study_uid, &from.peer_id, |i| {
            let created = i.as_ref().map(|i| i.created_unix).unwrap_or_else(now_unix);
            *i = Some(Inbound {
                study_uid: o.study_uid.clone(),
                peer_id: from.peer_id.clone(),
                key: hex::encode(opened.key.as_bytes()),
                manifest: opened.manifest,
                expires_unix: opened.terms.expires_unix,
                state: InboundState::Fetching,
                created_unix: created,
                completed_unix: None,
                error: None,
                acknowledged: false,
                via,
            });
        })
        .map_err(|e| e.to_string())?;
    store
        .audit()
        .append(
            "offer received",
            serde_json::json!({ "study": o.study_uid, "from": from.peer_id, "name": from.name, "instances": count }),
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Keeps grants offered and downloads going: after each import (new studies for subscribed
/// patients), after a pairing, when a contact connects, and every few seconds.
pub(super) async fn background(net: Handle) {
    let mut commits = net.store().subscribe_commits();
    let mut events = net.events();
    let mut paired = net.paired_events();
    let mut tick = tokio::time::interval(RETRY_EVERY);
    loop {
        let only = tokio::select! {
            r = commits.changed() => {
                if r.is_err() { break }
                None
            }
            // A new contact may be a subscribed phone with studies waiting for it.
            p = paired.recv() => match p {
                Ok(p) => p.peer_id.parse().ok(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                Err(_) => break,
            },
            ev = events.recv() => match ev {
                Ok(swarm::Event::Connected(p)) => Some(p),
                Ok(swarm::Event::Addresses(p, addrs)) => {
                    note_addresses(&net, p, addrs).await;
                    continue;
                }
                Ok(swarm::Event::RelayReady(relay)) => {
                    if let Err(e) = net.drain(relay).await {
                        tracing::warn!(%relay, "mailbox not drained: {e}");
                    }
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                Err(_) => break,
            },
            _ = tick.tick() => {
                let reserved = net.snapshot().await.map(|s| s.relays).unwrap_or_default();
                for relay in reserved {
                    if let Err(e) = net.drain(relay).await {
                        tracing::debug!(%relay, "mailbox not drained: {e}");
                    }
                }
                None
            }
        };
        if let Err(e) = reconcile(&net, only).await {
            tracing::warn!("background sharing work failed: {e}");
        }
    }
}

async fn note_addresses(net: &Handle, peer: PeerId, addrs: Vec<libp2p::Multiaddr>) {
    let p = peer.to_string();
    let addrs: Vec<String> = addrs
        .iter()
        .filter(|a| !super::is_unspecified(a))
        .map(ToString::to_string)
        .collect();
    net.note_seen(peer, addrs.clone());
    let _ = net
        .blocking(move |s| {
            s.update_contact(&p, |c| {
                if let Some(c) = c {
                    if !addrs.is_empty() && c.addrs != addrs {
                        c.addrs = addrs;
                    }
                }
            })
        })
        .await;
}

/// What needs doing now, computed from the store.
#[derive(Default)]
struct Work {
    offers: Vec<(String, Contact)>,
    acks: Vec<(String, Contact)>,
    fetches: Vec<(String, String)>,
}

fn plan(store: &Store, only: Option<&str>) -> Result<Work, StoreError> {
    let now = now_unix();
    let contacts = store.contacts()?;
    // Subscriptions: every study of a bound patient is granted to the paired phone.
    let subscribed: Vec<&Contact> = contacts.iter().filter(|c| c.patient_id.is_some()).collect();
    if !subscribed.is_empty() {
        for study in store.studies()? {
            for c in &subscribed {
                if c.patient_id.as_deref() != Some(study.patient_id.as_str())
                    || study.patient_id.is_empty()
                {
                    continue;
                }
                if store
                    .grant(&study.study_instance_uid, &c.peer_id)?
                    .is_none()
                {
                    record_grant(
                        store,
                        &study.study_instance_uid,
                        c,
                        now + SUBSCRIPTION_GRANT.as_secs(),
                    )?;
                }
            }
        }
    }
    let mut w = Work::default();
    let wanted = |peer: &str| only.is_none_or(|o| o == peer);
    for g in store.grants()? {
        if !g.active(now) || !wanted(&g.peer_id) {
            continue;
        }
        let Some(c) = contacts.iter().find(|c| c.peer_id == g.peer_id) else {
            continue;
        };
        let count = store
            .study(&g.study_uid)?
            .map(|s| s.instance_count)
            .unwrap_or(0);
        if g.state == GrantState::Pending || count > g.offered_instances {
            w.offers.push((g.study_uid.clone(), c.clone()));
        }
    }
    for i in store.inbound_all()? {
        if !wanted(&i.peer_id) {
            continue;
        }
        match i.state {
            InboundState::Complete if !i.acknowledged => {
                if let Some(c) = contacts.iter().find(|c| c.peer_id == i.peer_id) {
                    w.acks.push((i.study_uid.clone(), c.clone()));
                }
            }
            InboundState::Fetching => w.fetches.push((i.study_uid.clone(), i.peer_id.clone())),
            _ => {}
        }
    }
    Ok(w)
}

async fn reconcile(net: &Handle, only: Option<PeerId>) -> Result<(), NetError> {
    let only = only.map(|p| p.to_string());
    let work = net.blocking(move |s| plan(s, only.as_deref())).await??;
    for (study, c) in work.offers {
        if let Err(e) = net.offer(&study, &c).await {
            tracing::debug!(study, to = %who(&c), "offer not delivered yet: {e}");
        }
    }
    for (study, c) in work.acks {
        net.acknowledge(&study, &c).await;
    }
    for (study, peer) in work.fetches {
        fetch::start(net, study, peer);
    }
    Ok(())
}

impl Handle {
    /// Tells the sender a study arrived complete; remembered so it is told only once.
    pub(crate) async fn acknowledge(&self, study_uid: &str, c: &Contact) {
        let req = Request::Delivered {
            study_uid: study_uid.to_owned(),
        };
        if self.rpc(c, &req).await.is_ok() {
            let (s, p) = (study_uid.to_owned(), c.peer_id.clone());
            let _ = self
                .blocking(move |store| {
                    store.update_inbound(&s, &p, |i| {
                        if let Some(i) = i {
                            i.acknowledged = true;
                        }
                    })
                })
                .await;
        }
    }
}

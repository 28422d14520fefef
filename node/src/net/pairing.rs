//! Pairing by QR: the issuer checks the one-time token; both sides keep a contact and show the
//! same 6-digit code.

use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::{Multiaddr, PeerId};
use rand::RngCore;
use serde::Serialize;

use super::card::{self, DeviceCard};
use super::proto::{PairReply, PairRequest, QueuedPair, PAIR};
use super::ticket::Ticket as Wire;
use super::{wire, Handle, NetError};
use crate::crypto::envelope;
use crate::store::{now_unix, Contact, Ticket, Via};
use discless_relay::proto::ItemMeta;

/// How long the scanner waits for the issuer's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a ticket waits for a relay reservation of a node that just started.
const RESERVATION_WAIT: Duration = Duration::from_secs(10);

/// A ticket this node issued, ready to show.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub ticket: String,
    pub expires_unix: u64,
    pub for_patient: Option<String>,
    pub peer_id: String,
    pub addrs: Vec<String>,
    /// To recognise the pairing that used this ticket; never printed.
    #[serde(skip)]
    pub token: String,
}

/// A completed pairing.
#[derive(Debug, Clone, Serialize)]
pub struct Paired {
    pub peer_id: String,
    pub name: String,
    pub role: crate::keystore::Role,
    pub sas: String,
    pub paired_unix: u64,
    /// On the issuer: the Patient ID the ticket was bound to.
    pub for_patient: Option<String>,
    /// On the issuer: the ticket used, hex; never printed.
    #[serde(skip)]
    pub token: Option<String>,
    /// On a scanner whose issuer was offline: the relay where the pairing request waits until
    /// the issuer comes online and completes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<String>,
}

impl Paired {
    pub fn of(c: &Contact) -> Self {
        Self {
            peer_id: c.peer_id.clone(),
            name: c.name.clone(),
            role: c.role,
            sas: c.sas.clone(),
            paired_unix: c.paired_unix,
            for_patient: c.patient_id.clone(),
            token: None,
            queued_at: c.awaiting.clone(),
        }
    }
}

impl Handle {
    /// Issues a one-time ticket valid for `ttl`, optionally bound to a patient's studies.
    pub async fn issue_ticket(
        &self,
        ttl: Duration,
        patient_id: Option<String>,
    ) -> Result<Issued, NetError> {
        let mut token = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut token);
        let now = now_unix();
        let expires_unix = now + ttl.as_secs().max(1);
        let addrs = self.ticket_addrs().await?;
        let keys = self.store().keys();
        let wire = Wire {
            peer_id: self.peer_id(),
            addrs: addrs.clone(),
            token,
            expires_unix,
            role: keys.role,
            name: keys.name.clone(),
            card: self.card().compact(),
        };
        let t = Ticket {
            token: hex::encode(token),
            expires_unix,
            created_unix: now,
            patient_id: patient_id.clone(),
            used_by: None,
        };
        self.blocking(move |s| {
            s.put_ticket(&t)?;
            s.audit()
                .append(
                    "ticket issued",
                    serde_json::json!({ "expires_unix": expires_unix, "patient_bound": t.patient_id.is_some() }),
                )
                .map_err(crate::store::StoreError::from)
        })
        .await??;
        Ok(Issued {
            ticket: wire.encode(),
            expires_unix,
            for_patient: patient_id,
            peer_id: self.peer_id().to_string(),
            addrs: addrs.iter().map(ToString::to_string).collect(),
            token: hex::encode(token),
        })
    }

    /// Our dialable addresses for a ticket. With relays configured, waits a little for a
    /// reservation (a node that just started has none yet), so that the ticket carries a circuit
    /// address: the only way to reach this node through its firewall, or while it is offline.
    async fn ticket_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        let deadline = std::time::Instant::now() + RESERVATION_WAIT;
        loop {
            let addrs = self.dialable_addrs().await?;
            let circuit = addrs.iter().any(|a| {
                a.iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
            });
            if circuit || self.relays().is_empty() {
                return Ok(addrs);
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    "no relay reservation yet: this ticket carries direct addresses only"
                );
                return Ok(addrs);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Scans a ticket: dials its issuer, proves the token, and records the issuer as a contact.
    pub async fn accept_ticket(&self, text: &str) -> Result<Paired, NetError> {
        let t = Wire::decode(text)?;
        let who = format!("{} ({})", t.name, t.peer_id);
        let now = now_unix();
        if now >= t.expires_unix {
            return Err(NetError::Invalid(format!(
                "this pairing ticket from {who} expired {} ago; ask for a new one",
                humantime::format_duration(Duration::from_secs(now - t.expires_unix))
            )));
        }
        if t.peer_id == self.peer_id() {
            return Err(NetError::Invalid(
                "this ticket was issued by this node itself".into(),
            ));
        }
        if let Err(e) = self.connect(t.peer_id, t.addrs.clone(), &who).await {
            let relays: Vec<Multiaddr> = t
                .addrs
                .iter()
                .filter_map(super::swarm::relay_of_circuit)
                .collect();
            return match (&e, t.issuer_card()) {
                (NetError::Unreachable { .. }, Some(their)) if !relays.is_empty() => {
                    self.pair_via_relay(&t, their, relays, e).await
                }
                _ => Err(e),
            };
        }
        let mut stream = self.open(t.peer_id, PAIR, &who).await?;
        let proto = |e: wire::WireError| NetError::Protocol {
            who: who.clone(),
            reason: e.to_string(),
        };
        wire::write(
            &mut stream,
            &PairRequest {
                token: hex::encode(t.token),
                card: self.card().clone(),
            },
        )
        .await
        .map_err(proto)?;
        let reply: PairReply = tokio::time::timeout(ANSWER_TIMEOUT, wire::read(&mut stream))
            .await
            .map_err(|_| NetError::Protocol {
                who: who.clone(),
                reason: "no answer to the pairing request".into(),
            })?
            .map_err(proto)?;
        let _ = stream.close().await;
        let their = match reply {
            PairReply::Accepted { card } => card,
            PairReply::Refused { reason } => {
                let w = who.clone();
                let r = reason.clone();
                let _ = self
                    .blocking(move |s| {
                        s.audit().append(
                            "pairing refused",
                            serde_json::json!({ "by": w, "reason": r }),
                        )
                    })
                    .await;
                return Err(NetError::Refused { who, reason });
            }
        };
        their.verify(&t.peer_id).map_err(|e| NetError::Protocol {
            who: who.clone(),
            reason: e.to_string(),
        })?;
        let contact = self.issuer_contact(&t, their, None);
        // The issuer's relay (its ticket's circuit addresses) serves us too from now on: our
        // reservation there keeps us reachable to the issuer, and its mailbox takes our shares.
        for r in t.addrs.iter().filter_map(super::swarm::relay_of_circuit) {
            self.use_relay(r).await;
        }
        self.record_pairing(contact, "scanned", None).await
    }

    /// The scanner's record of a ticket's issuer, whose card checked out.
    fn issuer_contact(&self, t: &Wire, their: DeviceCard, awaiting: Option<String>) -> Contact {
        Contact {
            peer_id: t.peer_id.to_string(),
            name: their.name.clone(),
            role: their.role,
            sas: card::sas(&t.token, &their, self.card()),
            card: their,
            paired_unix: now_unix(),
            addrs: t.addrs.iter().map(ToString::to_string).collect(),
            patient_id: None,
            awaiting,
        }
    }

    /// The issuer is offline: seal the pairing request to the agreement key its ticket carries
    /// and leave it at the issuer's relay, which it drains when it comes online. The contact is
    /// recorded now (so a share can follow at once, queued the same way) and marked as awaiting
    /// the issuer. Both sides compute the same code from the same token and cards.
    async fn pair_via_relay(
        &self,
        t: &Wire,
        their: DeviceCard,
        relays: Vec<Multiaddr>,
        direct: NetError,
    ) -> Result<Paired, NetError> {
        let req = PairRequest {
            token: hex::encode(t.token),
            card: self.card().clone(),
        };
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(&req).map_err(|e| NetError::Invalid(e.to_string()))?,
        );
        let agreement = their
            .agreement_key()
            .map_err(|e| NetError::Invalid(e.to_string()))?;
        let sealed = envelope::seal_message(&plain, &pair_context(&t.peer_id), &agreement);
        let payload = serde_json::to_string(&QueuedPair {
            pair_request: sealed,
        })
        .map_err(|e| NetError::Invalid(e.to_string()))?;
        let item = pair_item_name(&t.token, &self.peer_id());
        for r in &relays {
            self.use_relay(r.clone()).await;
        }
        let mut last = direct;
        for relay in &relays {
            match self
                .deposit_item(
                    relay,
                    &t.peer_id.to_string(),
                    item.clone(),
                    payload.clone(),
                    Vec::new(),
                )
                .await
            {
                Ok(_) => {
                    let contact = self.issuer_contact(t, their, Some(relay.to_string()));
                    tracing::info!(issuer = %t.peer_id, %relay, "issuer offline: pairing request queued at relay");
                    return self
                        .record_pairing(contact, "scanned, queued at relay", None)
                        .await;
                }
                Err(e) => {
                    tracing::warn!(%relay, "pairing request not queued: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Completes a pairing request a scanner left at `relay` while this node was offline, then
    /// deletes it there whatever the outcome: a refused request does not become valid later.
    pub(super) async fn redeem_queued(&self, relay: PeerId, item: &ItemMeta, q: QueuedPair) {
        let outcome = async {
            let sender: PeerId = item
                .sender
                .parse()
                .map_err(|_| "the relay named no valid sender".to_owned())?;
            let plain = envelope::open_message(
                &q.pair_request,
                &self.store().keys().agreement,
                &pair_context(&self.peer_id()),
            )
            .map_err(|e| format!("pairing request: {e}"))?;
            let req: PairRequest = serde_json::from_slice(&plain)
                .map_err(|e| format!("pairing request is malformed: {e}"))?;
            // The scanner is reachable through the relay it used, at least.
            let addrs = self
                .relays()
                .into_iter()
                .filter(|r| super::swarm::relay_peer(r) == Some(relay))
                .map(|r| {
                    r.with(libp2p::multiaddr::Protocol::P2pCircuit)
                        .with(libp2p::multiaddr::Protocol::P2p(sender))
                        .to_string()
                })
                .collect();
            let scanned = Scanned {
                at_unix: item.deposited_unix,
                addrs,
            };
            issuer_side(self, sender, req, Some(scanned)).await
        }
        .await;
        if let Err(reason) = outcome {
            tracing::warn!(sender = %item.sender, %reason, "queued pairing request refused");
            let (r, p) = (reason, item.sender.clone());
            let _ = self
                .blocking(move |s| {
                    s.audit().append(
                        "pairing refused",
                        serde_json::json!({ "peer_id": p, "reason": r, "queued": true }),
                    )
                })
                .await;
        }
        self.ack_mailbox(&Via {
            relay: relay.to_string(),
            item: item.item.clone(),
        })
        .await;
    }

    /// A contact that was awaiting its issuer answered as a contact: the pairing is complete
    /// on both sides.
    pub(crate) async fn confirm_contact(&self, peer: &str) {
        let p = peer.to_owned();
        let r = self
            .blocking(move |s| -> Result<bool, crate::store::StoreError> {
                let Some(mut c) = s.contact(&p)? else {
                    return Ok(false);
                };
                if c.awaiting.take().is_none() {
                    return Ok(false);
                }
                s.put_contact(&c)?;
                s.audit().append(
                    "pairing confirmed",
                    serde_json::json!({ "peer_id": c.peer_id, "name": c.name }),
                )?;
                Ok(true)
            })
            .await;
        if let Ok(Ok(true)) = r {
            tracing::info!(%peer, "queued pairing confirmed by the issuer");
        }
    }

    async fn record_pairing(
        &self,
        c: Contact,
        how: &'static str,
        token: Option<String>,
    ) -> Result<Paired, NetError> {
        self.remember(&c).await;
        let mut paired = Paired::of(&c);
        paired.token = token;
        self.blocking(move |s| {
            s.put_contact(&c)?;
            s.audit()
                .append(
                    "paired",
                    serde_json::json!({
                        "peer_id": c.peer_id, "name": c.name, "role": c.role, "sas": c.sas,
                        "how": how, "patient_bound": c.patient_id.is_some(),
                    }),
                )
                .map_err(crate::store::StoreError::from)
        })
        .await??;
        tracing::info!(peer = %paired.peer_id, name = %paired.name, sas = %paired.sas, "paired");
        let _ = self.inner().paired.send(paired.clone());
        Ok(paired)
    }
}

/// Why a ticket cannot be used, checked and marked used in one step (single use even when two
/// phones scan the same QR at once). A request that waited at a relay counts from when it was
/// left there: the phone scanned in time, the issuer was offline.
fn redeem(
    store: &crate::store::Store,
    token: &str,
    peer: &PeerId,
    scanned_unix: Option<u64>,
) -> Result<Ticket, crate::store::StoreError> {
    let at = scanned_unix.unwrap_or_else(now_unix).min(now_unix());
    store
        .update_ticket(token, |t| match t {
            None => Err("unknown pairing ticket (forged, or issued by another node)".to_owned()),
            Some(t) if t.used_by.is_some() => {
                Err("this pairing ticket was already used; ask for a new one".to_owned())
            }
            Some(t) if at >= t.expires_unix => Err(format!(
                "this pairing ticket expired {} before it was used; ask for a new one",
                humantime::format_duration(Duration::from_secs(at - t.expires_unix))
            )),
            Some(t) => {
                t.used_by = Some(peer.to_string());
                Ok(t.clone())
            }
        })?
        .map_err(|reason| crate::store::StoreError::Malformed {
            slot: "ticket".into(),
            reason,
        })
}

/// The issuer's side of `/discless/pair/1`.
pub(super) async fn handle_inbound(net: Handle, peer: PeerId, mut stream: libp2p::Stream) {
    let req: PairRequest = match tokio::time::timeout(ANSWER_TIMEOUT, wire::read(&mut stream)).await
    {
        Ok(Ok(r)) => r,
        _ => return,
    };
    let reply = match issuer_side(&net, peer, req, None).await {
        Ok(_) => PairReply::Accepted {
            card: net.card().clone(),
        },
        Err(reason) => {
            tracing::warn!(%peer, %reason, "pairing refused");
            let r = reason.clone();
            let p = peer.to_string();
            let _ = net
                .blocking(move |s| {
                    s.audit().append(
                        "pairing refused",
                        serde_json::json!({ "peer_id": p, "reason": r }),
                    )
                })
                .await;
            PairReply::Refused { reason }
        }
    };
    let _ = wire::write(&mut stream, &reply).await;
    let _ = stream.close().await;
}

/// How the names of queued pairing requests start (offers' names are bare hex).
pub(super) const PAIR_ITEM_PREFIX: &str = "pair-";

/// A pairing request that waited at a relay: when the scanner left it (the relay's clock), and
/// where the scanner can be reached.
struct Scanned {
    at_unix: u64,
    addrs: Vec<String>,
}

/// What a queued pairing request is sealed under: it opens only as a request to this issuer.
fn pair_context(issuer: &PeerId) -> String {
    format!("pair request to {issuer}")
}

/// The mailbox item of a queued pairing request: a hash of the token (which the relay must not
/// learn) and of the scanner, so that two phones scanning one QR leave two requests, and the
/// issuer refuses the second as a used ticket.
fn pair_item_name(token: &[u8; 16], scanner: &PeerId) -> String {
    let mut h = blake3::Hasher::new_derive_key("discless 2026 mailbox pairing item v1");
    h.update(token);
    h.update(&scanner.to_bytes());
    format!("{PAIR_ITEM_PREFIX}{}", &h.finalize().to_hex()[..32])
}

async fn issuer_side(
    net: &Handle,
    peer: PeerId,
    req: PairRequest,
    scanned: Option<Scanned>,
) -> Result<Paired, String> {
    req.card
        .verify(&peer)
        .map_err(|e| format!("your device card was refused: {e}"))?;
    let token_bytes = hex::decode(&req.token).map_err(|_| "malformed token".to_owned())?;
    let token = req.token.clone();
    let scanned_unix = scanned.as_ref().map(|s| s.at_unix);
    let ticket = net
        .blocking(move |s| redeem(s, &token, &peer, scanned_unix))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| match e {
            crate::store::StoreError::Malformed { reason, .. } => reason,
            other => other.to_string(),
        })?;
    // The scanner's addresses came with identify when it connected (`share::note_addresses`).
    let mut addrs = net.seen(&peer);
    if let Some(s) = &scanned {
        addrs.extend(s.addrs.iter().cloned());
    }
    let contact = Contact {
        peer_id: peer.to_string(),
        name: req.card.name.clone(),
        role: req.card.role,
        sas: card::sas(&token_bytes, net.card(), &req.card),
        card: req.card,
        paired_unix: now_unix(),
        addrs,
        patient_id: ticket.patient_id,
        awaiting: None,
    };
    let how = if scanned.is_some() {
        "issued, queued at relay"
    } else {
        "issued"
    };
    net.record_pairing(contact, how, Some(req.token.clone()))
        .await
        .map_err(|e| e.to_string())
}
